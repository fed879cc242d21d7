import DNACrypto
import DNAWire

/// The signed peer entries a DHT node holds (docs/PROTOCOL.md §5.2), one per key (the hash of the
/// entry's identity): the entry, its wire bytes, who stored it, and where its owner's node is (for
/// signals, §5.6); per-source and total quotas. Lifetimes are judged on the Unix clock, since
/// entries carry Unix seconds; `storedAt` is monotonic ms. The node's own entry is held here too
/// (from `localSource`), only to refuse another key for its name: it is never offered.
struct PeerEntryStore: RecordStore {
    /// An entry held, as stored: its bytes, its source, and when (monotonic ms).
    struct Stored {
        var entry: PeerEntry
        var wire: [UInt8]
        var from: Endpoint
        /// When a STORE of it last arrived (or this node republished it).
        var storedAt: UInt64
        /// Where the owner's node stored it from: signals for the key are forwarded there.
        var owner: Endpoint?
    }

    /// The source recorded for entries this node holds of its own accord (its own, restored ones).
    static let localSource = Endpoint(address: [UInt8](repeating: 0, count: 16), port: 0)!

    private var entries: [NodeID: Stored] = [:]
    /// Entries by the share (`Endpoint.shareKey`) of the source that stored them last.
    private var storedBy = ShareCounts<[UInt8]>()
    /// This node's id (its own entry names it).
    let own: NodeID
    /// Entries expire this long after their last_seen, in ms.
    let lifetime: UInt64
    let perSource: Int
    let maximum: Int
    /// Entries no STORE refreshed for this long (ms) are republished.
    let republishInterval: UInt64

    init(own: NodeID, configuration: DHTConfiguration) {
        self.own = own
        lifetime = configuration.entryLifetime
        perSource = configuration.entriesPerSource
        maximum = configuration.maximumEntries
        republishInterval = configuration.refreshInterval
    }

    var count: Int { entries.count }

    /// Entries carry Unix seconds (§5.2): their lifetime is judged on the Unix clock.
    func alive(_ entry: PeerEntry, unix: UInt64) -> Bool {
        entry.lastSeen &* 1000 &+ lifetime > unix
    }

    /// Fields, signature (through the process-wide cache), and not expired.
    func verified(_ entry: PeerEntry, wire: [UInt8], unix: UInt64) -> Bool {
        guard alive(entry, unix: unix) else { return false }
        return VerifiedEntries.shared.check(entry, wire: wire, now: unix / 1000)
    }

    /// This node's own entry, held by its announce.
    private func isOwn(_ stored: Stored) -> Bool { stored.from == Self.localSource && stored.entry.nodeID == own.bytes }

    /// The entry held at `key` that this node offers others: alive, and not its own.
    func offered(_ key: NodeID, at time: RecordTime) -> Stored? {
        entries[key].flatMap { alive($0.entry, unix: time.unix) && !isOwn($0) ? $0 : nil }
    }

    /// The entry held here for `key`, if alive.
    func entry(_ key: NodeID, at time: RecordTime) -> PeerEntry? {
        guard let stored = entries[key], alive(stored.entry, unix: time.unix) else { return nil }
        return stored.entry
    }

    /// Where signals for `key` go: the owner's address, when the entry is alive and its owner known.
    func owner(of key: NodeID, at time: RecordTime) -> Endpoint? {
        guard let held = entries[key], alive(held.entry, unix: time.unix) else { return nil }
        return held.owner
    }

    /// The owner's node holds its own entry as well (§5.2): it is a node like the others, often
    /// among the closest to the key, and must refuse another key for the name as they do. (A node
    /// that holds a live entry of the name with another key keeps it: this announce is the
    /// squatter's, and its lookup reports the name taken.)
    mutating func holdOwn(_ entry: PeerEntry, wire: [UInt8], key: NodeID, at time: RecordTime) {
        let local = Self.localSource
        if verified(entry, wire: wire, unix: time.unix),
           entries[key].map({ !alive($0.entry, unix: time.unix) || ($0.entry.publicKey == entry.publicKey && $0.entry.lastSeen < entry.lastSeen) }) ?? true {
            hold(Stored(entry: entry, wire: wire, from: local, storedAt: time.now, owner: nil), at: key)
        }
    }

    /// Drops the entry held at `key`.
    mutating func forget(_ key: NodeID) {
        guard let held = entries.removeValue(forKey: key) else { return }
        storedBy.remove(held.from.shareKey)
    }

    /// Holds `stored` at `key` in place of what was there: every entry the store holds goes in
    /// here, so that the share counts follow the entries (restored ones were once left out).
    private mutating func hold(_ stored: Stored, at key: NodeID) {
        if let previous = entries.updateValue(stored, forKey: key) { storedBy.remove(previous.from.shareKey) }
        storedBy.add(stored.from.shareKey)
    }

    /// Checks an entry a lookup received for `key` (the process-wide cache spares repeated
    /// signature checks).
    func acceptable(_ wire: [UInt8], key: NodeID, at time: RecordTime, statistics: inout DHTStatistics) -> PeerEntry? {
        guard let entry = try? PeerEntry(wire: wire), NodeID.key(of: entry.identity) == key,
              verified(entry, wire: wire, unix: time.unix) else {
            statistics.refusedEntries += 1
            return nil
        }
        return entry
    }

    // MARK: RecordStore

    /// STORE (token, then `validate`, then `store`) and FIND_VALUE.
    mutating func answer(_ request: DHTMessage.Body, from requester: RecordRequester, at time: RecordTime,
                         statistics: inout DHTStatistics) -> RecordAnswer? {
        switch request {
        case .findValue(let key, let presented):
            // The owner's own copy of its entry is not offered (others hold it; it is kept only to
            // refuse another key for the name, §5.2).
            let held = offered(key, at: time)
            if let held, requester.tokens.isValid(presented, for: requester.source) { return .body(.value(entry: held.wire)) }
            return .closest(to: key, held: held?.entry.lastSeen)
        case .store(let presented, let wire):
            let status = accept(wire, token: presented, from: requester, at: time, statistics: &statistics)
            return .body(status == .outOfTime ? .storedOutOfTime(holderTime: time.unix) : .stored(status))
        default:
            return nil
        }
    }

    private mutating func accept(_ wire: [UInt8], token: UInt64, from requester: RecordRequester, at time: RecordTime,
                                 statistics: inout DHTStatistics) -> StoreStatus {
        guard requester.tokens.isValid(token, for: requester.source) else { return .badToken }
        switch validate(wire, at: time) {
        case .refused(let status):
            statistics.refusedEntries += 1
            return status
        case .valid(let entry):
            return store(entry, wire: wire, from: requester, at: time, statistics: &statistics)
        }
    }

    /// A signed entry checked on its own: structure, fields and signature, and within this holder's
    /// window. An entry outside the window is refused for its time (answered with this holder's
    /// time, so that an owner whose clock is off learns by how much, §5.2); any other fault: invalid.
    func validate(_ wire: [UInt8], at time: RecordTime) -> Validated<PeerEntry, StoreStatus> {
        if let entry = try? PeerEntry(wire: wire),
           !alive(entry, unix: time.unix) || entry.lastSeen > time.unix / 1000 + PeerEntry.maximumClockSkew {
            return .refused(.outOfTime)
        }
        guard let entry = try? PeerEntry(wire: wire), verified(entry, wire: wire, unix: time.unix) else { return .refused(.invalid) }
        return .valid(entry)
    }

    /// Stores a valid entry against the one held for its key (§5.2): a live entry of another key
    /// keeps the name (taken); one of the same key is replaced only by a fresher entry (the same
    /// bytes again count as stored, and refresh it); a new key needs room in the source's and the
    /// total quota. The owner's address is learnt from the node the entry names.
    mutating func store(_ entry: PeerEntry, wire: [UInt8], from requester: RecordRequester, at time: RecordTime,
                        statistics: inout DHTStatistics) -> StoreStatus {
        let source = requester.source
        let key = NodeID.key(of: entry.identity)
        if let existing = entries[key], alive(existing.entry, unix: time.unix) {
            if existing.entry.publicKey != entry.publicKey {
                statistics.refusedEntries += 1
                return .taken
            }
            if existing.entry.lastSeen >= entry.lastSeen {
                guard existing.wire == wire else { return .older }
                entries[key]?.storedAt = time.now
                return .stored
            }
        } else {
            guard storedBy[source.shareKey] < perSource, entries.count < maximum else {
                statistics.refusedEntries += 1
                return .quota
            }
        }
        // The owner's address is learnt only from a fresher entry stored by the node the entry names
        // (a copy replayed from elsewhere, or a holder's republishing, does not move it).
        let owner = requester.sender.bytes == entry.nodeID ? source : (entries[key]?.entry.publicKey == entry.publicKey ? entries[key]?.owner : nil)
        hold(Stored(entry: entry, wire: wire, from: source, storedAt: time.now, owner: owner), at: key)
        statistics.storedEntries += 1
        return .stored
    }

    /// Drops expired entries (at each refresh).
    mutating func expire(at time: RecordTime) {
        for (key, stored) in entries where !alive(stored.entry, unix: time.unix) { forget(key) }
    }

    /// Holders republish (Kademlia, §2.5 of the paper) what no STORE refreshed during the last
    /// period, so that an entry reaches the nodes that became its closest; when the owner
    /// re-announces every period, nobody needs to.
    mutating func republish(at time: RecordTime) -> [(key: NodeID, lookup: Lookup.Kind)] {
        var due: [(key: NodeID, lookup: Lookup.Kind)] = []
        for (key, stored) in entries where time.now >= stored.storedAt + republishInterval {
            entries[key]?.storedAt = time.now
            due.append((key, .announce(stored.wire)))
        }
        // Keys in order: the lookups start alike in every process (a dictionary's order follows its hash seed).
        return due.sorted { $0.key < $1.key }
    }

    /// Shares that hold an entry here (`ShareCounts`).
    var shares: Int { storedBy.keys }

    // MARK: Saved state

    /// The wire bytes of the live entries held.
    func saved(at time: RecordTime) -> [[UInt8]] {
        entries.values.filter { alive($0.entry, unix: time.unix) }.map(\.wire)
    }

    /// Holds the saved entries that still verify, unless a fresher one of the key is held.
    mutating func restore(_ wires: [[UInt8]], at time: RecordTime) {
        let local = Self.localSource
        for wire in wires {
            guard let entry = try? PeerEntry(wire: wire), verified(entry, wire: wire, unix: time.unix) else { continue }
            let key = NodeID.key(of: entry.identity)
            if let held = entries[key], held.entry.lastSeen >= entry.lastSeen { continue }
            hold(Stored(entry: entry, wire: wire, from: local, storedAt: time.now), at: key)
        }
    }
}

/// Entries and values whose signature was already checked in this process, by SHA-256 of their wire
/// bytes: a lookup and a storing node need not check the same 3.3 KB signature twice.
final class VerifiedEntries: @unchecked Sendable {
    static let shared = VerifiedEntries()
    private var known = Set<[UInt8]>()
    private var order: [[UInt8]] = []
    private let lock = PThreadLock()

    func check(_ entry: PeerEntry, wire: [UInt8], now: UInt64) -> Bool {
        check(wire, fields: { (try? entry.validateFields(now: now)) != nil }, signature: { (try? entry.verify(now: now)) != nil })
    }

    /// The same for a signed value (§10.1); `now` in Unix seconds.
    func check(_ value: SignedValue, wire: [UInt8], now: UInt64) -> Bool {
        check(wire, fields: { (try? value.validateFields(now: now)) != nil }, signature: { (try? value.verify(now: now)) != nil })
    }

    /// `fields` when `wire` verified before (its digest is known), else `signature` (which checks both).
    private func check(_ wire: [UInt8], fields: () -> Bool, signature: () -> Bool) -> Bool {
        let digest = Sodium.sha256(wire)
        if lock.withLock({ known.contains(digest) }) { return fields() }
        guard signature() else { return false }
        lock.withLock {
            if known.insert(digest).inserted { order.append(digest) }
            if order.count > 10_000 { known.remove(order.removeFirst()) }
        }
        return true
    }
}
