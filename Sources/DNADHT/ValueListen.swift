import DNACrypto

/// A holder's subscriptions (docs/PROTOCOL.md §10.5): who asked to hear of changes at which key, under
/// which listener id, until when (monotonic ms). Bounded per source address and in all; a source that
/// subscribes again with the same id refreshes its subscription.
struct ValueSubscriptions {
    struct Subscription {
        var source: Endpoint
        var listener: UInt64
        var signer: [UInt8]?
        var expires: UInt64
    }

    private var byKey: [NodeID: [Subscription]] = [:]
    /// Subscriptions by their source's share (`Endpoint.shareKey`).
    private var bySource = ShareCounts<[UInt8]>()
    private(set) var count = 0
    let perSource: Int
    let maximum: Int
    /// How long a subscription lasts, in ms.
    let lifetime: UInt64

    init(configuration: DHTConfiguration) {
        perSource = configuration.listenersPerSource
        maximum = configuration.maximumListeners
        lifetime = configuration.listenLifetime
    }

    /// VALUE_LISTEN from `source` (its token already checked).
    mutating func listen(key: NodeID, signer: [UInt8]?, listener: UInt64, from source: Endpoint, now: UInt64) -> ValueListenStatus {
        if let index = byKey[key]?.firstIndex(where: { $0.source == source && $0.listener == listener }) {
            byKey[key]?[index].expires = now + lifetime
            byKey[key]?[index].signer = signer
            return .listening
        }
        guard bySource[source.shareKey] < perSource, count < maximum else { return .busy }
        byKey[key, default: []].append(Subscription(source: source, listener: listener, signer: signer, expires: now + lifetime))
        bySource.add(source.shareKey)
        count += 1
        return .listening
    }

    /// The live subscriptions to changes of `signer`'s values at `key`.
    func subscribers(of key: NodeID, signer: [UInt8], now: UInt64) -> [Subscription] {
        (byKey[key] ?? []).filter { $0.expires > now && ($0.signer.map { $0 == signer } ?? true) }
    }

    /// Drops the subscriptions whose lifetime ended.
    mutating func expire(now: UInt64) {
        for (key, subscriptions) in byKey {
            let (live, ended) = (subscriptions.filter { $0.expires > now }, subscriptions.filter { $0.expires <= now })
            guard !ended.isEmpty else { continue }
            byKey[key] = live.isEmpty ? nil : live
            for subscription in ended {
                bySource.remove(subscription.source.shareKey)
                count -= 1
            }
        }
    }
}

/// A subscription this node keeps to a key's values (§10.5): the holders that accepted it, the
/// freshest value known per signer and slot, and when to subscribe again. The node reports each
/// value once, in sequence order per slot (`learn`), and each expiry (`expired`).
final class ValueListen {
    let id: UInt64
    let key: NodeID
    let query: ValueQuery
    /// Holders that accepted the subscription (their address and node id).
    var holders: [Endpoint: NodeID] = [:]
    /// The freshest value known per slot.
    private(set) var known: [ValueStore.Slot: SignedValue] = [:]
    /// When the node looks the key up again, subscribes to the holders then closest, and gets the
    /// values (monotonic ms); the backoff (ms) while lookups find no holder.
    var renewAt: UInt64
    var retry: UInt64 = 0
    /// Descriptors holders pushed that are news, by value id, with the holders that pushed each:
    /// fetched one sequence per slot at a time, lowest first (`nextFetches`), so that every write
    /// is reported, in order, although newer ones replace it at the holders meanwhile (they keep a
    /// replaced value 60 s for this, §10.5). At most `maximumPushed`, `maximumPushedPerHolder` of
    /// them first pushed by one holder (a holder pushing made-up ones fills only its own share).
    private var pushed: [[UInt8]: (descriptor: ValueDescriptor, holders: [(contact: Contact, token: UInt64)])] = [:]
    static let maximumPushed = 256
    static let maximumPushedPerHolder = 32

    init(id: UInt64, key: NodeID, query: ValueQuery, renewAt: UInt64) {
        self.id = id
        self.key = key
        self.query = query
        self.renewAt = renewAt
    }

    var knownValues: [SignedValue] { Array(known.values) }

    /// Values a get brought: those newer than what is known for their slot, in sequence order (the
    /// ones to report). A value seen before, or older, is not reported again.
    func learn(_ values: [SignedValue]) -> [SignedValue] {
        var fresh: [SignedValue] = []
        for value in values.sorted(by: { $0.sequence < $1.sequence }) {
            let slot = ValueStore.Slot(signer: value.signerID, slot: value.slot)
            if let held = known[slot], !value.supersedes(held) { continue }
            known[slot] = value
            fresh.append(value)
        }
        return fresh
    }

    /// A holder pushed `descriptor` (VALUE_NOTIFY): kept to fetch when it is news.
    func push(_ descriptor: ValueDescriptor, by holder: Contact, token: UInt64) {
        guard isNews(descriptor) else { return }
        if var entry = pushed[descriptor.id] {
            guard !entry.holders.contains(where: { $0.contact.id == holder.id }), entry.holders.count < 20 else { return }
            entry.holders.append((holder, token))
            pushed[descriptor.id] = entry
            return
        }
        guard pushed.count < Self.maximumPushed,
              pushed.values.filter({ $0.holders.first?.contact.id == holder.id }).count < Self.maximumPushedPerHolder else { return }
        pushed[descriptor.id] = (descriptor, [(holder, token)])
    }

    /// The pushed values to fetch next: per slot, the lowest sequence still news (on a tie, the
    /// lower id), with the holders that pushed it; taken from those kept (the ones no longer news
    /// are dropped). In slot order.
    func nextFetches() -> [(descriptor: ValueDescriptor, holders: [(contact: Contact, token: UInt64)])] {
        pushed = pushed.filter { isNews($0.value.descriptor) }
        var lowest: [ValueStore.Slot: (descriptor: ValueDescriptor, holders: [(contact: Contact, token: UInt64)])] = [:]
        for entry in pushed.values {
            let slot = ValueStore.Slot(signer: entry.descriptor.signerID, slot: entry.descriptor.slot)
            if let current = lowest[slot].map(\.descriptor), current.sequence < entry.descriptor.sequence
                || current.sequence == entry.descriptor.sequence && current.id.lexicographicallyPrecedes(entry.descriptor.id) {
                continue
            }
            lowest[slot] = entry
        }
        for entry in lowest.values { pushed[entry.descriptor.id] = nil }
        return lowest.sorted { $0.key < $1.key }.map(\.value)
    }

    /// Whether a descriptor a holder pushed names a value newer than the one known for its slot.
    func isNews(_ descriptor: ValueDescriptor) -> Bool {
        guard query.signer.map({ $0 == descriptor.signerID }) ?? true, descriptor.sequence > query.since else { return false }
        guard let held = known[ValueStore.Slot(signer: descriptor.signerID, slot: descriptor.slot)] else { return true }
        return descriptor.supersedesValue(held)
    }

    /// The known values whose lifetime ended by `unix` (ms), forgotten now.
    func expired(unix: UInt64) -> [SignedValue] {
        let ended = known.filter { $0.value.expires <= unix / 1000 }
        for slot in ended.keys { known[slot] = nil }
        return ended.values.sorted { $0.sequence < $1.sequence }
    }

    /// The earliest end of a known value, in Unix ms.
    var nextExpiry: UInt64? { known.values.map { $0.expires &* 1000 }.min() }
}
