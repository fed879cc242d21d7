import DNAWire

/// A DHT node's requests and sending (docs/PROTOCOL.md §5.1 transactions, §5.4 timers, §9 path
/// sizes): the requests in flight by transaction id and why each was sent, the round-trip estimate
/// their timeouts come from, the contacts that left requests unanswered, the datagram size each
/// path carries, and the datagrams waiting for the driver. Times are monotonic ms, sizes bytes.
/// What an answer or a timeout means is the node's to decide (`Purpose`); this layer matches
/// answers to requests, times them, sends attempts again and queues datagrams (no I/O).
struct Transactions {
    /// Why a request was sent: what its answer, or its timeout, goes to.
    enum Purpose {
        case lookup(LookupID, NodeID)
        case ping(NodeID?)
        /// A ping to a bootstrap node; the lookup of the own id waits for the first answer.
        case bootstrap(LookupID)
        case store(LookupID)
        /// A SIGNAL sent by a lookup (nil: a follow-up through known holders).
        case signal(LookupID?)
        /// A PING for a fresh token, to send a follow-up SIGNAL (`body`) again that its holder refused
        /// for its token: this node's public address changed (a NAT rebinding), and the token it
        /// held was for the old one (§5.6).
        case retoken(DHTMessage.Body)
        /// That SIGNAL sent again with the fresh token (not retried for its token a second time).
        case resignal
        /// A request of offline delivery (§8) made by the driver.
        case mail(UInt64)
        /// A holder republishing inbox items: answers change nothing.
        case republished
        /// A request of value put or get `LookupID` (§10) to node `NodeID`; the body says which.
        case value(LookupID, NodeID)
        /// VALUE_LISTEN of listener `UInt64` to node `NodeID` (§10.5).
        case listen(UInt64, NodeID)
    }

    /// A request in flight: where it went, which node should answer, its timers (ms) and attempts.
    struct Pending {
        var endpoint: Endpoint
        var expected: NodeID?
        var sentAt: UInt64
        var deadline: UInt64
        /// A lookup's request: when the lookup stops waiting for it (§5.4, soft timeout); nil after.
        var softDeadline: UInt64?
        var purpose: Purpose
        var body: DHTMessage.Body
        var attempt = 0
        /// The largest datagram of this attempt and of the answer it asks for (§9).
        var size = Pieces.maximumDatagramSize
        /// The attempt before this one was at a larger size and got nothing back (§9).
        var steppedDown = false
        /// Attempts in a row at this size that got nothing back.
        var unansweredAtSize = 0

        var isPing: Bool {
            switch purpose {
            case .ping, .retoken: return true
            default: return false
            }
        }
    }

    /// Requests in flight, by transaction id.
    private(set) var pending: [UInt64: Pending] = [:]
    /// The datagram size each endpoint's path carries (§9, RFC 8899's PLPMTU per destination).
    private(set) var pathSizes = PathSizes<Endpoint>()
    /// The same for this node's own link (one key): confirmed by two different endpoints, a black
    /// hole is taken to be near this node, and every endpoint gets the smaller size (§9).
    private(set) var ownLink = PathSizes<Int>()
    private var lastConfirmedBy: Endpoint?
    /// Datagrams to send, with their destination, until the driver takes them.
    private var outbox: [(Endpoint, [UInt8])] = []
    /// The latest `now` the node was given (ms), for sends that are not given one.
    private var clock: UInt64 = 0
    /// This node's salt, which every message carries (§5.3).
    let salt: [UInt8]

    init(salt: [UInt8], failureMemory: UInt64) {
        self.salt = salt
        self.failureMemory = failureMemory
    }

    /// The largest datagram to send to `endpoint` now (§9).
    func datagramSize(for endpoint: Endpoint, now: UInt64) -> Int {
        min(pathSizes.size(for: endpoint, now: now), ownLink.size(for: 0, now: now))
    }

    /// A requester that takes only smaller datagrams (§9) gets its answers, and later messages, in
    /// pieces of that size.
    mutating func limit(_ endpoint: Endpoint, to size: Int, now: UInt64) {
        pathSizes.limit(endpoint, to: size, now: now)
    }

    mutating func advanceClock(to now: UInt64) { clock = max(clock, now) }

    mutating func takeDatagrams() -> [(Endpoint, [UInt8])] {
        defer { outbox.removeAll() }
        return outbox
    }

    // MARK: Timers

    // Round-trip estimate (RFC 6298), for request timeouts.
    private var rtt = RTTEstimator()
    var requestTimeout: UInt64 {
        guard let srtt = rtt.smoothed else { return 1000 }
        return UInt64(min(Double(Self.maximumTimeout), max(250, srtt + 4 * rtt.variation)))
    }

    /// The longest request timeout, in ms.
    static let maximumTimeout: UInt64 = 5000

    /// Destinations slower than `requestTimeout` says (one estimate serves every node, and most
    /// answer sooner), with a round-trip estimate of their own (RFC 6298, per destination as the
    /// RFC keeps one per connection). One enters when it answers a request of one datagram only
    /// after it was sent again, nothing of the answer having come before (and not a path MTU black
    /// hole, §9): its next requests get twice that request's timeout (§5.5's back-off; a request's
    /// own attempts keep its first one's), kept by Karn's rule (§3) until an answer to a request
    /// sent once gives a sample; then SRTT + 4 RTTVAR of its own samples (3R after the first,
    /// §2.2). Its samples stay out of the shared estimate (a slow few would raise every request's
    /// timeout, and the lookups' soft one). It leaves when its timeout is no more than the shared
    /// one, and when a request to it went unanswered after every attempt (a gone node keeps
    /// nobody waiting longer). Without it, a holder that always answers in, say, 300 ms while the
    /// others answer in 2 (a far or loaded one) got every request twice, answered each twice
    /// (spending its rate for this node, §5.5), and made this node take its late answers for a
    /// black hole. At most `slowPathLimit`; past it the one set longest ago goes.
    private struct SlowPath {
        var estimate = RTTEstimator()
        /// The doubled timeout, until a sample (ms).
        var backedOff: UInt64?
        var at: UInt64

        var timeout: UInt64 {
            if let backedOff { return backedOff }
            guard let srtt = estimate.smoothed else { return 0 }
            return UInt64(min(Double(Transactions.maximumTimeout), srtt + 4 * estimate.variation))
        }
    }
    private var slowPaths: [Endpoint: SlowPath] = [:]
    static let slowPathLimit = 1024

    /// The timeout of a request to `endpoint`, in ms.
    func requestTimeout(for endpoint: Endpoint) -> UInt64 {
        max(requestTimeout, slowPaths[endpoint]?.timeout ?? 0)
    }

    /// Destinations with a timeout of their own (statistics, tests).
    var slowPathCount: Int { slowPaths.count }

    /// Sets `endpoint`'s own timeout to `timeout` ms (doubled, no sample yet), making room.
    private mutating func backOff(_ endpoint: Endpoint, to timeout: UInt64, now: UInt64) {
        if slowPaths[endpoint] == nil, slowPaths.count >= Self.slowPathLimit,
           let oldest = slowPaths.min(by: { a, b in
               a.value.at != b.value.at ? a.value.at < b.value.at : a.key.wire.lexicographicallyPrecedes(b.key.wire)
           }) {
            slowPaths[oldest.key] = nil
        }
        var path = slowPaths[endpoint] ?? SlowPath(at: now)
        path.backedOff = min(Self.maximumTimeout, timeout)
        path.at = now
        slowPaths[endpoint] = path
    }

    /// A request to `endpoint` got no answer after every attempt: it keeps no timeout of its own.
    mutating func gaveUp(on endpoint: Endpoint) { slowPaths[endpoint] = nil }

    /// How long a lookup waits for a request's answer before it asks the next candidate too, in ms
    /// (docs/PROTOCOL.md §5.4; the "short timeout" of libtorrent's and OpenDHT's lookups): SRTT +
    /// 4 RTTVAR (RFC 6298) without the request timeout's 250 ms floor, at least `softTimeoutFloor`,
    /// at most the request timeout; half the request timeout (500 ms) before any sample. The request
    /// itself still runs to its (hard) timeout and retries, and a late answer still counts.
    var softTimeout: UInt64 {
        guard let srtt = rtt.smoothed else { return requestTimeout / 2 }
        return min(requestTimeout, UInt64(max(Double(Self.softTimeoutFloor), srtt + 4 * rtt.variation)))
    }

    /// The soft timeout's floor, in ms: above a loaded machine's scheduling delays on loopback.
    static let softTimeoutFloor: UInt64 = 50

    /// The earliest deadline (hard or soft) of a request in flight.
    var nextDeadline: UInt64? { pending.values.map { min($0.deadline, $0.softDeadline ?? .max) }.min() }

    /// The requests whose deadline or soft deadline has come, earliest first (equal ones by
    /// transaction id): the same order in every process, so that a simulated network runs alike
    /// whatever the process's hash seed (a dictionary's order follows it).
    func due(at now: UInt64) -> [(transaction: UInt64, request: Pending)] {
        pending.filter { $0.value.deadline <= now || ($0.value.softDeadline ?? .max) <= now }
            .map { (transaction: $0.key, request: $0.value) }
            .sorted { (min($0.request.deadline, $0.request.softDeadline ?? .max), $0.transaction)
                < (min($1.request.deadline, $1.request.softDeadline ?? .max), $1.transaction) }
    }

    // MARK: Contacts that failed

    /// Contacts left unanswered (a ping, every attempt of a request, or a lookup's request it went on
    /// without), with when (ms): a lookup asks them only after every other candidate (§5.4). Forgotten
    /// when they answer, after `failureMemory` (the refresh interval), and all at once past
    /// `recentlyFailedLimit` (after the expired ones).
    private var recentlyFailed: [NodeID: UInt64] = [:]
    static let recentlyFailedLimit = 4096
    let failureMemory: UInt64

    /// Whether a request to `id` went unanswered within the last refresh interval.
    func failedRecently(_ id: NodeID, now: UInt64) -> Bool {
        guard let at = recentlyFailed[id] else { return false }
        return now < at + failureMemory
    }

    mutating func rememberFailure(_ id: NodeID, now: UInt64) {
        if recentlyFailed[id] == nil, recentlyFailed.count >= Self.recentlyFailedLimit {
            recentlyFailed = recentlyFailed.filter { now < $0.value + failureMemory }
            if recentlyFailed.count >= Self.recentlyFailedLimit { recentlyFailed.removeAll() }
        }
        recentlyFailed[id] = now
    }

    // MARK: Sending

    private mutating func newTransaction(_ random: inout SplitMixRandom) -> UInt64 {
        var transaction = random.next()
        while pending[transaction] != nil { transaction = random.next() }
        return transaction
    }

    /// Sends `message` in datagrams of at most `size` bytes (by default what the endpoint's path
    /// carries, §9); `answerLimit` asks the receiver to answer in datagrams of at most that size.
    @discardableResult
    mutating func send(_ message: DHTMessage, to endpoint: Endpoint, size: Int? = nil, answerLimit: Int? = nil,
                       statistics: inout DHTStatistics) -> [[UInt8]] {
        let size = size ?? datagramSize(for: endpoint, now: clock)
        let datagrams = DHTDatagram.encode(message, datagramSize: size, answerLimit: answerLimit)
        emit(datagrams, to: endpoint, statistics: &statistics)
        return datagrams
    }

    /// Queues datagrams already encoded (a message, or an answer sent again).
    mutating func emit(_ datagrams: [[UInt8]], to endpoint: Endpoint, statistics: inout DHTStatistics) {
        for datagram in datagrams { outbox.append((endpoint, datagram)) }
        statistics.sent += datagrams.count
    }

    /// Requests whose answer may take more than one datagram of a smaller size: they carry the
    /// answer limit when sent below 1,200 bytes (§9). (A node of an earlier version drops a frame
    /// with the limit; it gets one only after a full-size attempt got nothing back.)
    static func asksForLimit(_ body: DHTMessage.Body) -> Bool {
        switch body {
        case .findNode, .findValue, .mailFetch: true
        default: false
        }
    }

    /// Sends a request under a new transaction id (from `random`) and keeps it until its answer
    /// or its timeout; a lookup's request also gets a soft deadline (§5.4).
    mutating func request(_ body: DHTMessage.Body, to endpoint: Endpoint, expected: NodeID?, purpose: Purpose, now: UInt64,
                          random: inout SplitMixRandom, statistics: inout DHTStatistics) {
        clock = max(clock, now)
        let transaction = newTransaction(&random)
        var soft: UInt64?
        if case .lookup = purpose { soft = now + softTimeout }
        let size = datagramSize(for: endpoint, now: now)
        pending[transaction] = Pending(endpoint: endpoint, expected: expected, sentAt: now, deadline: now + requestTimeout(for: endpoint),
                                       softDeadline: soft, purpose: purpose, body: body, size: size)
        send(DHTMessage(transaction: transaction, salt: salt, body: body), to: endpoint, size: size,
             answerLimit: Self.asksForLimit(body) && size < Pieces.maximumDatagramSize ? size : nil, statistics: &statistics)
    }

    // MARK: Answers and timeouts

    /// Whether a request under `transaction` went to `source` (pieces of its answer are expected).
    func awaits(_ transaction: UInt64, from source: Endpoint) -> Bool { pending[transaction]?.endpoint == source }

    /// Takes the request an answer from `source` (node `sender`) answers, and learns from it: the path
    /// sizes (§9), a round-trip sample, that `sender` is alive. Nil, counted as unexpected, when no
    /// request under its transaction went to that address and that node. `length`: the answer's
    /// bytes (the message, without datagram headers); `largestDatagram`: the largest datagram it
    /// came in.
    mutating func answered(_ message: DHTMessage, sender: NodeID, from source: Endpoint, length: Int, largestDatagram: Int,
                           now: UInt64, statistics: inout DHTStatistics) -> Pending? {
        // Accepted only from the address that was asked, and only from the node we meant to ask.
        guard let request = pending[message.transaction], request.endpoint == source,
              request.expected == nil || request.expected == sender else {
            statistics.unexpectedResponses += 1
            return nil
        }
        pending[message.transaction] = nil
        // Path size (§9): the largest datagram this exchange needed at the attempt's size, or would
        // have needed at the larger size of the attempt before.
        let requestLength = DHTMessage(transaction: 0, salt: salt, body: request.body).bytes.count
        let needed = DHTDatagram.overhead + max(length, requestLength)
        // An answer in datagrams larger than the smaller attempt asked for answers an attempt
        // before it (a holder slower than the timeout, not a black hole): the larger size worked.
        let blackHole = request.steppedDown && largestDatagram <= request.size && needed > request.size
        if request.steppedDown, largestDatagram <= request.size {
            if blackHole {
                if pathSizes.smallerWorked(source, size: request.size, now: now) { statistics.pathSizeReductions += 1 }
                if lastConfirmedBy != source {
                    lastConfirmedBy = source
                    if ownLink.smallerWorked(0, size: request.size, now: now) { statistics.pathSizeReductions += 1 }
                }
            }
        } else {
            let carried = min(needed, max(request.size, largestDatagram))
            pathSizes.largerWorked(source, size: carried)
            ownLink.largerWorked(0, size: carried)
        }
        // Karn's rule (RFC 6298 §3): an answer to a request sent more than once may answer any of
        // its attempts (they share the transaction), so it gives no sample.
        if request.attempt == 0 {
            let sample = Double(now - min(now, request.sentAt))
            if var path = slowPaths[source] {
                path.estimate.add(sample: sample)
                path.backedOff = nil
                slowPaths[source] = path.timeout > requestTimeout ? path : nil
            } else {
                rtt.add(sample: sample)
            }
        } else if request.steppedDown || request.unansweredAtSize > 0, !blackHole,
                  requestLength + DHTDatagram.overhead <= request.size {
            // A request of one datagram answered only after it was sent again, nothing of the
            // answer having come before: slower than its timeout (or a datagram was lost). Its
            // next requests wait twice as long (RFC 6298 §5.5). (A request of many pieces, a part
            // of a value, is sent again for one lost piece of 13: that says nothing of the time.)
            backOff(source, to: 2 * max(requestTimeout, request.deadline - min(request.deadline, request.sentAt)), now: now)
        }
        if !recentlyFailed.isEmpty { recentlyFailed[sender] = nil }
        return request
    }

    /// A lookup's request passed its soft deadline (§5.4): it keeps only its hard one.
    mutating func passedSoftDeadline(_ transaction: UInt64) { pending[transaction]?.softDeadline = nil }

    /// A request that timed out; it may be sent again (`retry`).
    mutating func remove(_ transaction: UInt64) { pending[transaction] = nil }

    /// Sends a request that timed out again, under the same transaction (§5.1): the receiver's
    /// reassembly of the request, and this node's of the answer, keep the pieces earlier attempts
    /// delivered, so an attempt only has to bring what they lost. A 5-piece STORE at 10% loss
    /// arrives whole in 59% of single tries; in 99.5% when each piece has three. `answering`:
    /// pieces of its answer came. `attemptsPerSize`: attempts at one size that got nothing back
    /// before the next goes smaller (§9: 2 for a part of a value, whose many pieces lose one often).
    mutating func retry(_ transaction: UInt64, _ request: Pending, answering: Bool, attemptsPerSize: Int = 1, now: UInt64,
                        statistics: inout DHTStatistics) {
        var again = request
        again.attempt += 1
        again.sentAt = now
        // The timeout the first attempt had, not doubled along the attempts (a back-off is for the
        // destination's next requests): at 10% loss, doubling along a value part's five attempts
        // made it wait up to 7.75 s.
        again.deadline = now + max(requestTimeout, request.deadline - min(request.deadline, request.sentAt))
        again.softDeadline = nil
        again.unansweredAtSize = answering ? 0 : request.unansweredAtSize + 1
        // Nothing came back: the next attempt, and the answer it asks for, go in smaller
        // datagrams (§9): a path MTU black hole loses every large datagram and no small one.
        // (Or at once in the size this node now knows its link carries.)
        let known = datagramSize(for: request.endpoint, now: now)
        if !answering, again.unansweredAtSize >= attemptsPerSize || known < request.size,
           let smaller = Pieces.stepBelow(min(request.size, known + 1)) {
            again.size = smaller
            again.steppedDown = true
            again.unansweredAtSize = 0
        } else {
            again.size = min(request.size, known)
            again.steppedDown = false
        }
        pending[transaction] = again
        send(DHTMessage(transaction: transaction, salt: salt, body: request.body), to: request.endpoint,
             size: again.size, answerLimit: Self.asksForLimit(request.body) ? again.size : nil, statistics: &statistics)
    }
}
