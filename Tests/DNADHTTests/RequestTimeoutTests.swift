@testable import DNADHT
import DNAWire
import Testing

/// Request timeouts per destination (docs/PROTOCOL.md §5.4: RFC 6298 §5.5 back-off, Karn's rule)
/// and what a late answer to a request sent again says of the path size (§9).
@Suite struct RequestTimeoutTests {
    let fast = Endpoint(host: "10.0.0.1", port: 4000)!
    let slow = Endpoint(host: "10.0.1.1", port: 4000)!
    let sender = NodeID(bytes: [UInt8](repeating: 7, count: 20))!

    /// A request layer with no sample yet, its randomness and statistics.
    static func fresh(seed: UInt64) -> (Transactions, SplitMixRandom, DHTStatistics) {
        (Transactions(salt: [UInt8](repeating: 1, count: 16), failureMemory: 300_000), SplitMixRandom(seed: seed), DHTStatistics())
    }

    /// A request to `endpoint`; returns its transaction and deadline.
    func ask(_ rpc: inout Transactions, _ endpoint: Endpoint, body: DHTMessage.Body = .ping, now: UInt64,
             random: inout SplitMixRandom, statistics: inout DHTStatistics) throws -> (UInt64, Transactions.Pending) {
        let before = Set(rpc.pending.keys)
        rpc.request(body, to: endpoint, expected: nil, purpose: .mail(1), now: now, random: &random, statistics: &statistics)
        let transaction = try #require(rpc.pending.keys.first { !before.contains($0) })
        return (transaction, try #require(rpc.pending[transaction]))
    }

    func answer(_ rpc: inout Transactions, _ transaction: UInt64, from endpoint: Endpoint, largestDatagram: Int = 100,
                length: Int = 60, now: UInt64, statistics: inout DHTStatistics) -> Transactions.Pending? {
        let message = DHTMessage(transaction: transaction, salt: [UInt8](repeating: 2, count: 16), body: .mailStored(.stored))
        return rpc.answered(message, sender: sender, from: endpoint, length: length, largestDatagram: largestDatagram, now: now,
                            statistics: &statistics)
    }

    /// Others answer in 2 ms (the shared timeout is its 250 ms floor); one holder always in 300 ms.
    /// Before, every request to it timed out and went twice, for good. Now the first times out (its
    /// retry is answered by the first attempt's late answer); the next request to it waits 500 ms
    /// (doubled; Karn: the late answer to a request sent twice gave no sample), is answered once in
    /// 300 ms and sets 900 ms (3R, its own estimate); the fast destinations keep the shared one,
    /// which its samples do not raise. Once it answers fast, its own timeout falls with its
    /// estimate and goes when no longer above the shared one.
    @Test func aDestinationSlowerThanTheSharedTimeoutGetsItsOwn() throws {
        var (rpc, random, statistics) = Self.fresh(seed: 3)
        var now: UInt64 = 10_000
        for _ in 0..<8 {
            let (transaction, _) = try ask(&rpc, fast, now: now, random: &random, statistics: &statistics)
            now += 2
            #expect(answer(&rpc, transaction, from: fast, now: now, statistics: &statistics) != nil)
        }
        #expect(rpc.requestTimeout == 250)

        let (first, request) = try ask(&rpc, slow, now: now, random: &random, statistics: &statistics)
        #expect(request.deadline == now + 250)
        now += 250
        let due = try #require(rpc.due(at: now).first { $0.transaction == first })
        rpc.remove(first)
        #expect(rpc.requestTimeout(for: slow) == 250, "a timeout alone changes nothing")
        rpc.retry(first, due.request, answering: false, now: now, statistics: &statistics)
        #expect(rpc.pending[first]?.deadline == now + 250, "the retry waits as long as the first attempt")
        now += 50  // 300 ms after the first attempt: its answer
        #expect(answer(&rpc, first, from: slow, now: now, statistics: &statistics) != nil)
        #expect(rpc.requestTimeout(for: slow) == 500 && rpc.requestTimeout(for: fast) == 250)

        let (second, again) = try ask(&rpc, slow, now: now, random: &random, statistics: &statistics)
        #expect(again.deadline == now + 500)
        now += 300
        #expect(rpc.due(at: now).isEmpty)
        #expect(answer(&rpc, second, from: slow, now: now, statistics: &statistics) != nil)
        #expect(rpc.requestTimeout(for: slow) == 900, "3 x the 300 ms sample")
        #expect(rpc.requestTimeout == 250 && rpc.softTimeout == 50, "the shared estimate took no slow sample")

        var fastAnswers = 0
        while rpc.slowPathCount > 0, fastAnswers < 30 {
            let (transaction, _) = try ask(&rpc, slow, now: now, random: &random, statistics: &statistics)
            now += 3
            #expect(answer(&rpc, transaction, from: slow, now: now, statistics: &statistics) != nil)
            fastAnswers += 1
        }
        #expect(rpc.slowPathCount == 0 && rpc.requestTimeout(for: slow) == 250, "still its own after \(fastAnswers) answers in 3 ms")
        #expect(fastAnswers > 1, "one fast sample does not undo a slow one (SRTT + 4 RTTVAR)")
    }

    /// A destination that never answers (a gone node) keeps the shared timeout: its lookups' and
    /// pings' waits do not grow (bootstrapping to a dead address still ends in time). Destinations
    /// with their own timeout are at most `slowPathLimit`; past it the oldest goes.
    @Test func goneDestinationsKeepTheSharedTimeoutAndTheTableIsBounded() throws {
        var (rpc, random, statistics) = Self.fresh(seed: 4)
        var now: UInt64 = 10_000
        for _ in 0..<4 {
            let (transaction, request) = try ask(&rpc, slow, now: now, random: &random, statistics: &statistics)
            #expect(request.deadline - now == 1000)
            now = request.deadline
            rpc.remove(transaction)
            rpc.retry(transaction, request, answering: false, now: now, statistics: &statistics)
            #expect(rpc.pending[transaction]?.deadline == now + 1000)
            now += 1000
            rpc.remove(transaction)
        }
        #expect(rpc.slowPathCount == 0)
        // Each answers a request only after it was sent again.
        func lateAnswer(_ endpoint: Endpoint) throws {
            let (transaction, request) = try ask(&rpc, endpoint, now: now, random: &random, statistics: &statistics)
            now = request.deadline
            rpc.remove(transaction)
            rpc.retry(transaction, request, answering: false, now: now, statistics: &statistics)
            now += 1
            #expect(answer(&rpc, transaction, from: endpoint, now: now, statistics: &statistics) != nil)
        }
        try lateAnswer(slow)
        #expect(rpc.requestTimeout(for: slow) == 2000)
        // A request to it unanswered after every attempt (the node went): back to the shared one.
        rpc.gaveUp(on: slow)
        #expect(rpc.requestTimeout(for: slow) == rpc.requestTimeout)
        try lateAnswer(slow)
        for index in 0..<(Transactions.slowPathLimit + 100) {
            try lateAnswer(try #require(Endpoint(host: "10.\(index / 250 % 250).\(index % 250).2", port: 5000)))
        }
        #expect(rpc.slowPathCount == Transactions.slowPathLimit)
        #expect(rpc.requestTimeout(for: slow) == rpc.requestTimeout, "the oldest went")
    }

    /// A request of 1,200-byte datagrams times out and goes again at 900 with an answer limit; the
    /// answer then comes in 1,200-byte datagrams: it answers the first attempt (a slow holder), so
    /// the path keeps 1,200. The same answer in 900-byte datagrams confirms the smaller size.
    @Test func aLateAnswerToTheLargerAttemptIsNotABlackHole() throws {
        for (largest, reduced) in [(1200, false), (900, true)] {
                var (rpc, random, statistics) = Self.fresh(seed: 5)
            var now: UInt64 = 10_000
            let fetch = DHTMessage.Body.mailFetch(token: 1, key: sender, skip: 0)
            // Two exchanges at the smaller size right after one at the larger got nothing: the path
            // is remembered smaller (§9), unless an answer shows the larger size worked.
            for _ in 0..<2 {
                let (transaction, request) = try ask(&rpc, slow, body: fetch, now: now, random: &random, statistics: &statistics)
                now = request.deadline
                rpc.remove(transaction)
                rpc.retry(transaction, request, answering: false, now: now, statistics: &statistics)
                #expect(rpc.pending[transaction]?.size == 900)
                now += 10
                #expect(answer(&rpc, transaction, from: slow, largestDatagram: largest, length: 10_000, now: now,
                               statistics: &statistics) != nil)
            }
            #expect((rpc.datagramSize(for: slow, now: now) == 900) == reduced,
                    "answers in \(largest)-byte datagrams: the path carries \(rpc.datagramSize(for: slow, now: now))")
            #expect((statistics.pathSizeReductions > 0) == reduced)
        }
    }
}
