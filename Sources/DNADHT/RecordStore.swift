/// The clocks a record store judges by: monotonic ms (when a record was stored, for republishing)
/// and Unix ms (the times records carry: last_seen, creation, expiry).
struct RecordTime {
    var now: UInt64
    var unix: UInt64
}

/// A request for records, as the node received it: from which address, which node, and the
/// tokens it can check the presented one against (§5.5).
struct RecordRequester {
    var source: Endpoint
    var sender: NodeID
    var tokens: Tokens
}

/// A store's answer to a request of its kind.
enum RecordAnswer {
    /// This message.
    case body(DHTMessage.Body)
    /// NODES: the node answers with the k contacts closest to `key` it knows, and `held`, the
    /// last_seen of the record held here that the requester had no valid token for (§5.2).
    case closest(to: NodeID, held: UInt64?)
}

/// One kind of record a DHT node keeps for others and serves (docs/PROTOCOL.md §5.2: peer entries,
/// `PeerEntryStore`; §8.3: inbox items, `MailStore`). The node keeps one store per kind, hands it
/// the requests of its kind, and runs its expiry and its republishing; what the kind's records
/// are, and its rules, stay inside the store. A further kind (e.g. signed values at any key) adds
/// its request bodies to `DHTMessage.Body`, a store conforming to this, and a `Lookup.Kind` that
/// stores its records on the k closest nodes.
protocol RecordStore {
    /// Answers `request` when it is one of this kind's, else nil. A write is checked in this order:
    /// the presented token (`requester.tokens`), then the record (format, signature, times), then
    /// the kind's replacement rule against the record held under its key and its quotas; then it is
    /// stored. A read answers from what is held. Refusals are counted in `statistics`.
    mutating func answer(_ request: DHTMessage.Body, from requester: RecordRequester, at time: RecordTime,
                         statistics: inout DHTStatistics) -> RecordAnswer?

    /// Drops the records whose lifetime is over (the node calls it on the kind's schedule).
    mutating func expire(at time: RecordTime)

    /// The records due to be stored again on the k nodes now closest to their key (Kademlia's
    /// republishing), counted as stored now: the node starts one silent lookup for each, in order.
    mutating func republish(at time: RecordTime) -> [(key: NodeID, lookup: Lookup.Kind)]

    /// Records held.
    var count: Int { get }
}
