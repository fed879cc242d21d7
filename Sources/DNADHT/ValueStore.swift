import DNACrypto
import DNAWire

/// The signed values a DHT node holds for others (docs/PROTOCOL.md §10): at each key, one value per
/// signer and slot, the freshest (`SignedValue.supersedes`); values put together from their parts
/// (VALUE_PUT) before they are checked; listed (VALUE_GET) and served part by part (VALUE_FETCH).
/// Quotas per signer, per key, per source address and in bytes; a bounded number of uploads in
/// progress per source and in all. Lifetimes are judged on the Unix clock (values carry Unix
/// seconds); `storedAt` and uploads' times are monotonic ms.
struct ValueStore: RecordStore {
    /// A value held: the value, its wire bytes and id, who put it last, and when (monotonic ms).
    struct Stored {
        var value: SignedValue
        var wire: [UInt8]
        var id: [UInt8]
        var from: Endpoint
        var storedAt: UInt64
    }

    /// Where a value lives at its key: one signer's slot.
    struct Slot: Hashable, Comparable {
        var signer: [UInt8]
        var slot: UInt32

        /// Signer id, then slot: the order values are listed, got and fetched in.
        static func < (a: Slot, b: Slot) -> Bool {
            a.signer != b.signer ? a.signer.lexicographicallyPrecedes(b.signer) : a.slot < b.slot
        }
    }

    /// A value arriving in parts, by source and value id.
    private struct UploadKey: Hashable {
        var source: Endpoint
        var id: [UInt8]
    }

    private struct Upload {
        var key: NodeID
        var parts: Reassembly
        var lastPart: UInt64
    }

    private var values: [NodeID: [Slot: Stored]] = [:]
    /// Value id → its key and slot, for fetches and for puts of a value held already.
    private var byID: [[UInt8]: (key: NodeID, slot: Slot)] = [:]
    /// Values by the share (`Endpoint.shareKey`) of the source whose put stored them last.
    private var bySource = ShareCounts<[UInt8]>()
    private var bySigner: [[UInt8]: (count: Int, bytes: Int)] = [:]
    private(set) var bytes = 0
    private var uploads: [UploadKey: Upload] = [:]
    /// Values replaced in their slot within the last `replacedRetention` ms, by id, oldest first in
    /// `replacedOrder`: still served to VALUE_FETCH, so that a listener told of a write fetches it
    /// although a newer one replaced it meanwhile (§10.5). At most `replacedLimit` of them and
    /// `replacedBytesLimit` bytes, counted by the share (`Endpoint.shareKey`) of the source whose put
    /// stored each: when full, the oldest of the share keeping the most goes, so that one source
    /// rewriting its slots fast displaces its own replaced values, not other writers'.
    private var replaced: [[UInt8]: (key: NodeID, value: SignedValue, wire: [UInt8], until: UInt64, share: [UInt8])] = [:]
    private var replacedOrder: [[UInt8]] = []
    private var replacedBytes = 0
    private var replacedByShare = ShareCounts<[UInt8]>()
    static let replacedRetention: UInt64 = 60_000
    static let replacedLimit = 256
    static let replacedBytesLimit = 4 << 20
    private var uploadsBySource = ShareCounts<[UInt8]>()
    private var uploadsByNetwork = ShareCounts<[UInt8]>()
    let configuration: DHTConfiguration

    init(configuration: DHTConfiguration) {
        self.configuration = configuration
    }

    var count: Int { byID.count }
    var uploadCount: Int { uploads.count }

    private func alive(_ value: SignedValue, unix: UInt64) -> Bool { value.expires > unix / 1000 }

    /// The values held at `key` (alive; of one signer when given; with a sequence above `since`),
    /// in a stable order: signer id, then slot.
    func held(at key: NodeID, signer: [UInt8]? = nil, since: UInt64 = 0, at time: RecordTime) -> [Stored] {
        guard let slots = values[key] else { return [] }
        return slots.filter { entry in
            alive(entry.value.value, unix: time.unix) && entry.value.value.sequence > since
                && (signer.map { $0 == entry.key.signer } ?? true)
        }.sorted { $0.key < $1.key }.map(\.value)
    }

    // MARK: RecordStore

    /// VALUE_PUT (token, the parts put together, then `validate` and `store`), VALUE_GET, VALUE_FETCH.
    mutating func answer(_ request: DHTMessage.Body, from requester: RecordRequester, at time: RecordTime,
                         statistics: inout DHTStatistics) -> RecordAnswer? {
        switch request {
        case .valuePut(let presented, let key, let part):
            let status = put(part, key: key, token: presented, from: requester, at: time, statistics: &statistics)
            return .body(.valueStored(status, holderTime: status == .outOfTime ? time.unix : 0))
        case .valueGet(let presented, let key, let signer, let since, let skip):
            let matching = held(at: key, signer: signer, since: since, at: time)
            guard requester.tokens.isValid(presented, for: requester.source) else {
                return .closest(to: key, held: matching.isEmpty ? nil : UInt64(matching.count))
            }
            let page = matching.dropFirst(skip).prefix(DHTMessage.maximumDescriptors)
            return .body(.valueList(total: min(matching.count, 0xFFFF),
                                    descriptors: page.map { ValueDescriptor($0.value, id: $0.id, length: $0.wire.count) }))
        case .valueFetch(let presented, let key, let id, let index):
            guard requester.tokens.isValid(presented, for: requester.source) else { return .body(.valuePart(.badToken, nil)) }
            let wire: [UInt8]
            if let place = byID[id], place.key == key, let stored = values[key]?[place.slot], alive(stored.value, unix: time.unix) {
                wire = stored.wire
            } else if let old = replaced[id], old.key == key, old.until > time.now, alive(old.value, unix: time.unix) {
                wire = old.wire
            } else {
                return .body(.valuePart(.notHeld, nil))
            }
            guard let part = ValuePart.split(wire, id: id).first(where: { $0.index == index }) else { return .body(.valuePart(.notHeld, nil)) }
            return .body(.valuePart(.part, part))
        default:
            return nil
        }
    }

    /// One part of a value: a value held already is stored at once (its other parts need not come;
    /// it postpones the value's republishing only when from a fellow holder);
    /// otherwise the part joins the source's upload of that value, and the last part makes the
    /// value, which must hash to its id.
    private mutating func put(_ part: ValuePart, key: NodeID, token: UInt64, from requester: RecordRequester, at time: RecordTime,
                              statistics: inout DHTStatistics) -> ValueStatus {
        guard requester.tokens.isValid(token, for: requester.source) else { return .badToken }
        if let place = byID[part.id], place.key == key, let stored = values[key]?[place.slot], alive(stored.value, unix: time.unix) {
            if requester.isFellowHolder(key) { values[key]?[place.slot]?.storedAt = time.now }
            return .stored
        }
        let wire: [UInt8]
        if part.count == 1 {
            wire = part.bytes
        } else {
            let uploadKey = UploadKey(source: requester.source, id: part.id)
            expireUploads(now: time.now)
            if uploads[uploadKey] == nil {
                guard uploadsBySource[requester.source.shareKey] < configuration.valueUploadsPerSource,
                      uploadsByNetwork[Self.network(of: requester.source)] < Self.uploadsPerNetwork,
                      makeRoomForUpload(from: requester.source),
                      let parts = try? Reassembly(length: part.length, count: part.count, index: part.index, bytes: part.bytes.count,
                                                  maximumLength: SignedValue.maximumWireSize) else {
                    statistics.refusedValues += 1
                    return .busy
                }
                uploads[uploadKey] = Upload(key: key, parts: parts, lastPart: time.now)
                uploadsBySource.add(requester.source.shareKey)
                uploadsByNetwork.add(Self.network(of: requester.source))
            }
            guard var upload = uploads[uploadKey], upload.key == key, upload.parts.length == part.length else {
                statistics.refusedValues += 1
                return .invalid
            }
            guard (try? upload.parts.add(index: part.index, length: part.length, count: part.count, bytes: part.bytes[...])) != nil else {
                statistics.refusedValues += 1
                return .invalid
            }
            upload.lastPart = time.now
            guard upload.parts.isComplete else {
                uploads[uploadKey] = upload
                return .more
            }
            removeUpload(uploadKey)
            guard let whole = upload.parts.message else { return .more }
            wire = whole
        }
        guard Sodium.sha256(wire) == part.id else {
            statistics.refusedValues += 1
            return .invalid
        }
        switch validate(wire, at: time) {
        case .refused(let status):
            statistics.refusedValues += 1
            return status
        case .valid(let value):
            guard value.key == key.bytes else {
                statistics.refusedValues += 1
                return .invalid
            }
            return store(value, wire: wire, from: requester, at: time, statistics: &statistics)
        }
    }

    private mutating func removeUpload(_ key: UploadKey) {
        guard uploads.removeValue(forKey: key) != nil else { return }
        uploadsBySource.remove(key.source.shareKey)
        uploadsByNetwork.remove(Self.network(of: key.source))
    }

    /// Uploads one network (/24, /64) may have under way at once: a quarter of the default total.
    static let uploadsPerNetwork = 16

    /// What uploads' shares count by: the source's network (/24, /64), as the reassembly of
    /// messages does (§5.1), so that one host cannot take every upload through many ports; a
    /// loopback source by itself (nodes on one machine).
    private static func network(of source: Endpoint) -> [UInt8] { source.isLoopback ? source.wire : source.network }

    /// Room for a new upload from `source`: when every upload is taken, the oldest of the network
    /// that has the most goes, if that network has more than the source's (so that sources of
    /// other networks still get their share however many networks a flood comes from).
    private mutating func makeRoomForUpload(from source: Endpoint) -> Bool {
        guard uploads.count >= configuration.valueUploads else { return true }
        let own = uploadsByNetwork[Self.network(of: source)]
        guard let busiest = uploadsByNetwork.largest(breakingTiesBy: { $0.lexicographicallyPrecedes($1) }),
              busiest.count > own + 1,
              let oldest = uploads.filter({ Self.network(of: $0.key.source) == busiest.key })
                  .min(by: { a, b in a.value.lastPart != b.value.lastPart ? a.value.lastPart < b.value.lastPart
                                                                       : a.key.id.lexicographicallyPrecedes(b.key.id) })
        else { return false }
        removeUpload(oldest.key)
        return true
    }

    /// Drops uploads whose last part came `valueUploadLifetime` ago.
    mutating func expireUploads(now: UInt64) {
        for (key, upload) in uploads where upload.lastPart + configuration.valueUploadLifetime <= now { removeUpload(key) }
    }

    /// A value checked on its own: structure, fields and signature, and within this holder's window
    /// (created at most 600 s ahead of its clock, not expired: else out of time, answered with the
    /// holder's time as for entries, §5.2).
    func validate(_ wire: [UInt8], at time: RecordTime) -> Validated<SignedValue, ValueStatus> {
        guard let value = try? SignedValue(wire: wire) else { return .refused(.invalid) }
        let seconds = time.unix / 1000
        if value.expires <= seconds || value.created > seconds + SignedValue.maximumClockSkew { return .refused(.outOfTime) }
        guard VerifiedEntries.shared.check(value, wire: wire, now: seconds) else { return .refused(.invalid) }
        return .valid(value)
    }

    /// Stores a valid value against what its slot holds (§10.4): it replaces only a value it
    /// supersedes (the same bytes again refresh it; a superseding one held answers older); a new
    /// value, or a larger one, needs room in the signer's, the key's, the source's and the total share.
    mutating func store(_ value: SignedValue, wire: [UInt8], from requester: RecordRequester, at time: RecordTime,
                        statistics: inout DHTStatistics) -> ValueStatus {
        guard let key = NodeID(bytes: value.key[...]) else { return .invalid }
        return insert(value, wire: wire, from: requester.source, postponesRepublish: requester.isFellowHolder(key), at: time,
                      statistics: &statistics)
    }

    /// `postponesRepublish`: whether the same bytes again count as this value's republishing
    /// (`RecordRequester.isFellowHolder`, the node's own writes); asked only then (it sorts the
    /// routing table).
    private mutating func insert(_ value: SignedValue, wire: [UInt8], from source: Endpoint, postponesRepublish: @autoclosure () -> Bool,
                                 at time: RecordTime,
                                 statistics: inout DHTStatistics) -> ValueStatus {
        guard let key = NodeID(bytes: value.key[...]) else { return .invalid }
        let signer = value.signerID, slot = Slot(signer: signer, slot: value.slot), id = Sodium.sha256(wire)
        let previous = values[key]?[slot].flatMap { alive($0.value, unix: time.unix) ? $0 : nil }
        if let previous {
            if previous.id == id {
                if postponesRepublish() { values[key]?[slot]?.storedAt = time.now }
                return .stored
            }
            guard value.supersedes(previous.value) else {
                statistics.refusedValues += 1
                return .older
            }
        }
        let held = bySigner[signer] ?? (0, 0)
        let added = wire.count - (previous?.wire.count ?? 0)
        let newSlot = previous == nil
        guard held.bytes + added <= configuration.valueBytesPerSigner, bytes + added <= configuration.valueBytes,
              !newSlot || (held.count < configuration.valuesPerSigner && (values[key]?.count ?? 0) < configuration.valuesPerKey
                           && bySource[source.shareKey] < configuration.valuesPerSource) else {
            statistics.refusedValues += 1
            return .quota
        }
        if let previous { keepReplaced(previous, at: key, now: time.now) }
        if values[key]?[slot] != nil { remove(key, slot) }
        values[key, default: [:]][slot] = Stored(value: value, wire: wire, id: id, from: source, storedAt: time.now)
        byID[id] = (key, slot)
        bySource.add(source.shareKey)
        bySigner[signer, default: (0, 0)].count += 1
        bySigner[signer, default: (0, 0)].bytes += wire.count
        bytes += wire.count
        statistics.storedValues += 1
        return .stored
    }

    /// Keeps `stored`, replaced now in its slot, for `replacedRetention` ms (within the limits).
    private mutating func keepReplaced(_ stored: Stored, at key: NodeID, now: UInt64) {
        guard replaced[stored.id] == nil, stored.wire.count <= Self.replacedBytesLimit else { return }
        expireReplaced(now: now)
        let share = stored.from.shareKey
        while replaced.count >= Self.replacedLimit || replacedBytes + stored.wire.count > Self.replacedBytesLimit, !replacedOrder.isEmpty {
            // The oldest of the share keeping the most (this one counted as if kept already; the
            // lowest share on a tie), else the oldest.
            var victim = replacedByShare.largest { $0.lexicographicallyPrecedes($1) }
            if replacedByShare[share] + 1 > victim?.count ?? 0 { victim = (share, replacedByShare[share] + 1) }
            dropReplaced(at: replacedOrder.firstIndex { replaced[$0]?.share == victim?.key } ?? 0)
        }
        replaced[stored.id] = (key, stored.value, stored.wire, now + Self.replacedRetention, share)
        replacedOrder.append(stored.id)
        replacedBytes += stored.wire.count
        replacedByShare.add(share)
    }

    private mutating func dropReplaced(at index: Int) {
        let id = replacedOrder.remove(at: index)
        guard let old = replaced.removeValue(forKey: id) else { return }
        replacedBytes -= old.wire.count
        replacedByShare.remove(old.share)
    }

    /// Drops replaced values whose retention ended (they were kept in order of replacement).
    private mutating func expireReplaced(now: UInt64) {
        while let first = replacedOrder.first, (replaced[first]?.until ?? 0) <= now { dropReplaced(at: 0) }
    }

    private mutating func remove(_ key: NodeID, _ slot: Slot) {
        guard let stored = values[key]?.removeValue(forKey: slot) else { return }
        if values[key]?.isEmpty == true { values[key] = nil }
        byID[stored.id] = nil
        bySource.remove(stored.from.shareKey)
        bySigner[slot.signer, default: (1, stored.wire.count)].count -= 1
        bySigner[slot.signer, default: (1, stored.wire.count)].bytes -= stored.wire.count
        if bySigner[slot.signer]?.count == 0 { bySigner[slot.signer] = nil }
        bytes -= stored.wire.count
    }

    /// Drops the values (and tombstones) whose lifetime ended, and stale uploads.
    mutating func expire(at time: RecordTime) {
        for (key, slots) in values {
            for (slot, stored) in slots where !alive(stored.value, unix: time.unix) { remove(key, slot) }
        }
        expireReplaced(now: time.now)
        expireUploads(now: time.now)
    }

    /// Values no put refreshed for `valueRepublishInterval`, oldest first, at most
    /// `valueRepublishLimit`: stored again on the k nodes now closest to their key.
    mutating func republish(at time: RecordTime) -> [(key: NodeID, lookup: Lookup.Kind)] {
        var due: [(key: NodeID, slot: Slot, storedAt: UInt64)] = []
        for (key, slots) in values {
            for (slot, stored) in slots where time.now >= stored.storedAt + configuration.valueRepublishInterval
                && alive(stored.value, unix: time.unix) {
                due.append((key, slot, stored.storedAt))
            }
        }
        // Equal times by key and slot: alike in every process (a dictionary's order follows its hash seed).
        due.sort { a, b in
            if a.storedAt != b.storedAt { return a.storedAt < b.storedAt }
            if a.key != b.key { return a.key < b.key }
            if a.slot.slot != b.slot.slot { return a.slot.slot < b.slot.slot }
            return a.slot.signer.lexicographicallyPrecedes(b.slot.signer)
        }
        return due.prefix(configuration.valueRepublishLimit).compactMap { item in
            guard let stored = values[item.key]?[item.slot] else { return nil }
            values[item.key]?[item.slot]?.storedAt = time.now
            return (item.key, .putValue(stored.wire, id: stored.id))
        }
    }

    /// Holds a value this node wrote or was given while it is among the k closest to its key (a node
    /// sends itself no requests), under the local source.
    mutating func hold(_ value: SignedValue, wire: [UInt8], at time: RecordTime, statistics: inout DHTStatistics) -> ValueStatus {
        insert(value, wire: wire, from: PeerEntryStore.localSource, postponesRepublish: true, at: time, statistics: &statistics)
    }
}
