import DNAWire

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
    /// The largest datagram the answer goes to it in (§9): an answer is at most 32 pieces of it.
    var datagramSize = Pieces.maximumDatagramSize
    /// Whether the requester is a fellow holder of a key: a contact of this node's routing table at
    /// this address, among the k nodes it knows closest to the key. Only such a node's put of a
    /// record held already counts as that record's republishing (Kademlia's "the others have it
    /// too", §2.5 of the paper); anyone else's would let one node stop a record's republishing by
    /// repeating it (docs/PROTOCOL.md §8.3, §10.4).
    var isFellowHolder: (NodeID) -> Bool = { _ in false }
}

/// A store's answer to a request of its kind.
enum RecordAnswer {
    /// This message.
    case body(DHTMessage.Body)
    /// NODES: the node answers with the k contacts closest to `key` it knows, and `held`, the
    /// last_seen of the record held here that the requester had no valid token for (§5.2).
    case closest(to: NodeID, held: UInt64?)
}

/// What validation made of a record: the record, or the status that refuses it.
enum Validated<Record, Status> {
    case valid(Record)
    case refused(Status)
}

/// One kind of record a DHT node keeps for others and serves (docs/PROTOCOL.md §5.2: peer entries,
/// `PeerEntryStore`; §8.3: inbox items, `MailStore`). The node keeps one store per kind, hands it
/// the requests of its kind (`answer`), and runs its expiry and its republishing; what the kind's
/// records are, and its rules, stay inside the store. A write goes: the presented token
/// (`RecordRequester.tokens`), then `validate`, then `store`. A further kind (e.g. signed values
/// at any key) adds its request bodies to `DHTMessage.Body`, a store conforming to this, a case in
/// `DHTNode.answer` and a `Lookup.Kind` that stores its records on the k closest nodes.
protocol RecordStore {
    /// A record of this kind that passed `validate`.
    associatedtype Record
    /// What a write is answered with (STORED's status, MAIL_STORED's).
    associatedtype Status

    /// Validation: the record `wire` holds, checked on its own (structure, signature, times at
    /// `time`), or the status that refuses it. Consults nothing held.
    func validate(_ wire: [UInt8], at time: RecordTime) -> Validated<Record, Status>

    /// Storage and replacement: stores a valid `record` (`wire`) unless the kind's replacement rule
    /// keeps the record held under its key, or a quota is full; returns the status to answer.
    mutating func store(_ record: Record, wire: [UInt8], from requester: RecordRequester, at time: RecordTime,
                        statistics: inout DHTStatistics) -> Status

    /// Answers `request` when it is one of this kind's, else nil: a write after its token,
    /// `validate` and `store`; a read from what is held. Refusals are counted in `statistics`.
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
