/// A signal for a key this node owns, forwarded by one of the key's holders (§5.6).
public struct SignalRequest: Sendable, Equatable {
    /// The holder that forwarded it; answers go back through it (`DHTNode.reply`).
    public var holder: Endpoint
    public var relay: UInt64
    /// The signaller's address as the holder saw it.
    public var origin: Endpoint
    public var key: NodeID
    /// The signaller's id for the conversation (the same through every holder: deduplicate by it).
    public var id: UInt64
    public var payload: [UInt8]
}

/// An answer from the owner of a key to a signal this node sent.
public struct SignalDelivery: Sendable, Equatable {
    public var id: UInt64
    /// The holder that relayed it.
    public var holder: Endpoint
    /// The owner's address as the holder saw it.
    public var from: Endpoint
    public var payload: [UInt8]
}

/// A DHT node's signaling state (docs/PROTOCOL.md §5.6) in its three roles. As a holder: the relays
/// of the signals it forwarded to owners, so that an owner's REPLY goes back to the signaller. As
/// an owner: the holders of each of its own entries, the only nodes a FORWARD is accepted from,
/// pinged every `keepaliveInterval` so that its NAT keeps their mappings. As a signaller: the
/// signals it sent and the holders that may deliver answers to them. Times are monotonic ms.
struct Signaling {
    /// Holder: a signal forwarded from `origin` to `owner` as signal `id`, until `expires` (ms).
    struct Relay {
        var origin: Endpoint
        var owner: Endpoint
        var id: UInt64
        var expires: UInt64
    }

    private var relays: [UInt64: Relay] = [:]
    /// Owner: the holders of each own entry (its announce's), by key.
    private var holders: [NodeID: [Endpoint]] = [:]
    private(set) var nextKeepalive: UInt64?
    private var outstanding: [UInt64: (holders: Set<Endpoint>, expires: UInt64)] = [:]
    private var nextSweep: UInt64 = 0
    let relayLifetime: UInt64
    let maximumRelays: Int
    let keepaliveInterval: UInt64
    /// How long answers to a signal sent are accepted, in ms.
    static let signalLifetime: UInt64 = 60_000
    /// Expired relays and signals go this often, in ms.
    static let sweepInterval: UInt64 = 5000

    init(configuration: DHTConfiguration) {
        relayLifetime = configuration.relayLifetime
        maximumRelays = configuration.maximumRelays
        keepaliveInterval = configuration.keepaliveInterval
    }

    // Signaller.

    /// Signal `id` went to `holder`: its DELIVERs are accepted for `signalLifetime` from the first.
    mutating func sent(_ id: UInt64, to holder: Endpoint, now: UInt64) {
        outstanding[id, default: ([], now + Self.signalLifetime)].holders.insert(holder)
    }

    /// Whether a DELIVER of signal `id` may come from `holder`.
    func acceptsDelivery(of id: UInt64, from holder: Endpoint, now: UInt64) -> Bool {
        guard let sent = outstanding[id], sent.expires > now else { return false }
        return sent.holders.contains(holder)
    }

    // Holder.

    /// A relay for a signal from `origin` forwarded to `owner`, under a fresh id from `random`;
    /// nil when `maximumRelays` live relays are held (busy).
    mutating func openRelay(origin: Endpoint, owner: Endpoint, id: UInt64, now: UInt64, random: inout SplitMixRandom) -> UInt64? {
        if relays.count >= maximumRelays {
            relays = relays.filter { $0.value.expires > now }
            guard relays.count < maximumRelays else { return nil }
        }
        let relayID = random.next() | 1
        relays[relayID] = Relay(origin: origin, owner: owner, id: id, expires: now + relayLifetime)
        return relayID
    }

    /// The live relay `id`, when `owner` is the node it forwarded to.
    func relay(_ id: UInt64, from owner: Endpoint, now: UInt64) -> Relay? {
        guard let relay = relays[id], relay.expires > now, relay.owner == owner else { return nil }
        return relay
    }

    // Owner.

    /// Whether a FORWARD for `key` may come from `holder` (one that stored this node's entry).
    func acceptsForward(for key: NodeID, from holder: Endpoint) -> Bool { holders[key]?.contains(holder) == true }

    /// The holders that stored an own entry of `key` (an announce ended); keepalives start.
    mutating func stored(_ key: NodeID, on endpoints: [Endpoint], now: UInt64) {
        holders[key] = endpoints
        if nextKeepalive == nil { nextKeepalive = now + keepaliveInterval }
    }

    /// When keepalives are due: every holder of an own entry, to ping (and the next time is set),
    /// each once, in the order of their wire bytes (alike in every process, whatever its hash seed).
    mutating func keepalive(now: UInt64) -> [Endpoint]? {
        guard let keepalive = nextKeepalive, now >= keepalive else { return nil }
        let endpoints = Set(holders.values.joined()).sorted { $0.wire.lexicographicallyPrecedes($1.wire) }
        nextKeepalive = holders.isEmpty ? nil : now + keepaliveInterval
        return endpoints
    }

    /// Drops expired relays and signals every `sweepInterval` (each is also checked for expiry
    /// where it is used); returns whether it swept.
    mutating func sweep(now: UInt64) -> Bool {
        guard now >= nextSweep else { return false }
        nextSweep = now + Self.sweepInterval
        if !relays.isEmpty { relays = relays.filter { $0.value.expires > now } }
        if !outstanding.isEmpty { outstanding = outstanding.filter { $0.value.expires > now } }
        return true
    }
}
