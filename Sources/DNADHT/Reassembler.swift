import DNAWire

/// The multi-datagram messages a DHT node receives (docs/PROTOCOL.md §5.1; bounds §5.5): partial
/// messages by source endpoint and transaction, and the answers to the requests it completed, kept
/// so that a retry whose answer was lost gets the answer again from any one of its pieces. Each
/// source and each network (/24, /64) gets a bounded share; everything lives `lifetime` ms
/// (monotonic). Counts what it refuses in the node's statistics.
struct Reassembler {
    /// A message is put together per source endpoint and transaction id (§5.1).
    struct Key: Hashable {
        var endpoint: Endpoint
        var transaction: UInt64

        /// An order for ties in time: evictions choose alike in every process (a dictionary's
        /// order follows its hash seed).
        static func precedes(_ a: Key, _ b: Key) -> Bool {
            a.transaction != b.transaction ? a.transaction < b.transaction : a.endpoint.wire.lexicographicallyPrecedes(b.endpoint.wire)
        }
    }

    /// A request put back together: what the answer to it is remembered under.
    struct Completed {
        var key: Key
        var request: Reassembly
        /// The largest of its datagrams, in bytes (§9: the size the path carried).
        var largestDatagram: Int
    }

    enum Outcome {
        /// Kept for more pieces, or dropped (counted), or a repeat too soon after the last.
        case incomplete
        /// A piece of a request answered a moment ago: its answer, to send again.
        case answerAgain([[UInt8]])
        /// The whole message.
        case complete([UInt8], Completed)
    }

    /// An answer is repeated at most once per this many ms (a retry's pieces arrive together).
    static let repeatInterval: UInt64 = 100
    /// How long a partial message is kept, in ms (§5.1).
    static let lifetime: UInt64 = 5000
    /// Partial messages kept at once: in all, per source endpoint, per network (/24 or /64) (§5.1).
    static let limit = 256
    static let perSource = 4
    static let perNetwork = 16

    /// Partial multi-datagram messages (§5.1), and how many each source and each network holds.
    private var reassembly: [Key: (started: UInt64, buffer: Reassembly, largest: Int)] = [:]
    private var partialsBySource: [Endpoint: Int] = [:]
    private var partialsByNetwork: [[UInt8]: Int] = [:]
    /// Answers to multi-datagram requests this node completed, kept for the reassembly lifetime
    /// (§5.1): a retry of such a request (same transaction) whose answer was lost gets the answer
    /// again from any one of its pieces, instead of needing every piece again in one attempt. The
    /// request is kept too: a piece that does not match it starts a new message.
    /// At most `perSource` per source and `limit` in all (the oldest go).
    private var answered: [Key: (at: UInt64, repeatedAt: UInt64, request: Reassembly, datagrams: [[UInt8]])] = [:]
    private var answeredBySource: [Endpoint: Int] = [:]

    /// Partial messages held now.
    var partialCount: Int { reassembly.count }

    /// Whether pieces of a message from `endpoint` under `transaction` are being put together.
    func isReassembling(from endpoint: Endpoint, transaction: UInt64) -> Bool {
        reassembly[Key(endpoint: endpoint, transaction: transaction)] != nil
    }

    /// When the oldest partial message or remembered answer expires.
    var nextExpiry: UInt64? {
        let partial = reassembly.values.map(\.started).min().map { $0 + Self.lifetime }
        let answer = answered.values.map(\.at).min().map { $0 + Self.lifetime }
        switch (partial, answer) {
        case let (partial?, answer?): return min(partial, answer)
        default: return partial ?? answer
        }
    }

    /// One piece (of a message of more than one) from `source`, in a datagram of `size` bytes.
    mutating func add(_ piece: DHTDatagram.Piece, from source: Endpoint, size: Int, now: UInt64,
                      statistics: inout DHTStatistics) -> Outcome {
        let key = Key(endpoint: source, transaction: piece.transaction)
        if var done = answered[key] {
            // A piece of the request answered (bytes it already holds, with the same values):
            // the answer again. Anything else (expired, another message under the transaction)
            // starts a new message.
            let same = (try? done.request.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)) == false
            if same, done.at + Self.lifetime > now {
                if done.repeatedAt + Self.repeatInterval <= now {
                    answered[key]?.repeatedAt = now
                    return .answerAgain(done.datagrams)
                }
                return .incomplete
            }
            forgetAnswer(key)
        }
        var entry = reassembly[key]
        if let partial = entry, partial.started + Self.lifetime <= now {
            removePartial(key)
            entry = nil
        }
        if entry == nil {
            guard let buffer = try? Reassembly(length: piece.length, count: piece.count, index: piece.index,
                                               bytes: piece.bytes.count, maximumLength: DHTMessage.maximumSize) else {
                statistics.dropped += 1
                return .incomplete
            }
            makeRoomForPartial(from: source, statistics: &statistics)
            entry = (now, buffer, 0)
            partialsBySource[source, default: 0] += 1
            partialsByNetwork[source.network, default: 0] += 1
        }
        guard var (started, buffer, largest) = entry,
              (try? buffer.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)) != nil else {
            removePartial(key)
            statistics.dropped += 1
            return .incomplete
        }
        largest = max(largest, size)
        guard let message = buffer.message else {
            reassembly[key] = (started, buffer, largest)
            return .incomplete
        }
        started = 0
        removePartial(key)
        return .complete(message, Completed(key: key, request: buffer, largestDatagram: largest))
    }

    /// Before a new partial message from `source` is kept: each source and each network gets a
    /// bounded share of the reassembly state (§5.1). Over its share, the source's (or its network's)
    /// oldest partial goes; when the whole table is full, the oldest partial of the network that
    /// holds the most. A flood thus only ever displaces its own partial messages.
    private mutating func makeRoomForPartial(from source: Endpoint, statistics: inout DHTStatistics) {
        func evictOldest(where belongs: (Key) -> Bool) {
            guard let oldest = reassembly.filter({ belongs($0.key) }).min(by: { a, b in
                a.value.started != b.value.started ? a.value.started < b.value.started : Key.precedes(a.key, b.key)
            }) else { return }
            removePartial(oldest.key)
            statistics.refusedPieces += 1
        }
        let network = source.network
        if partialsBySource[source, default: 0] >= Self.perSource {
            evictOldest { $0.endpoint == source }
        } else if partialsByNetwork[network, default: 0] >= Self.perNetwork {
            evictOldest { $0.endpoint.network == network }
        }
        if reassembly.count >= Self.limit, let busiest = partialsByNetwork.max(by: { a, b in
            a.value != b.value ? a.value < b.value : b.key.lexicographicallyPrecedes(a.key)
        })?.key {
            evictOldest { $0.endpoint.network == busiest }
        }
    }

    private mutating func removePartial(_ key: Key) {
        guard reassembly.removeValue(forKey: key) != nil else { return }
        let network = key.endpoint.network
        let fromSource = partialsBySource[key.endpoint, default: 1] - 1, fromNetwork = partialsByNetwork[network, default: 1] - 1
        partialsBySource[key.endpoint] = fromSource > 0 ? fromSource : nil
        partialsByNetwork[network] = fromNetwork > 0 ? fromNetwork : nil
    }

    /// Keeps the answer (`datagrams`, just sent) to a request completed here, for its retries.
    mutating func remember(_ datagrams: [[UInt8]], answering completed: Completed, now: UInt64) {
        let key = completed.key
        func forgetOldest(where belongs: (Key) -> Bool) {
            if let oldest = answered.filter({ belongs($0.key) }).min(by: { a, b in
                a.value.at != b.value.at ? a.value.at < b.value.at : Key.precedes(a.key, b.key)
            }) { forgetAnswer(oldest.key) }
        }
        if answeredBySource[key.endpoint, default: 0] >= Self.perSource { forgetOldest { $0.endpoint == key.endpoint } }
        if answered.count >= Self.limit { forgetOldest { _ in true } }
        forgetAnswer(key)
        // The answer just sent counts as the latest: a duplicate of the request's pieces arriving
        // right behind it is no retry.
        answered[key] = (now, now, completed.request, datagrams)
        answeredBySource[key.endpoint, default: 0] += 1
    }

    private mutating func forgetAnswer(_ key: Key) {
        guard answered.removeValue(forKey: key) != nil else { return }
        let left = answeredBySource[key.endpoint, default: 1] - 1
        answeredBySource[key.endpoint] = left > 0 ? left : nil
    }

    /// Drops the partial messages and answers older than `lifetime`.
    mutating func expire(now: UInt64) {
        for (key, partial) in reassembly where partial.started + Self.lifetime <= now { removePartial(key) }
        for (key, done) in answered where done.at + Self.lifetime <= now { forgetAnswer(key) }
    }
}
