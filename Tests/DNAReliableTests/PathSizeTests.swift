import DNAReliable
import DNAWire
import Testing

/// Fragments sized to the path (docs/PROTOCOL.md §7.1, §9): the size the handshake found, and a
/// step down when large packets vanish RTO after RTO while the connection runs.
@Suite(.serialized) struct ReliablePathSizeTests {
    static let sizes = [0, 1, 423, 424, 425, 823, 824, 825, 1099, 1100, 1101, 5000, 65_536, 1 << 20]

    static func payload(_ index: Int, _ size: Int) -> [UInt8] {
        (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
    }

    /// Sends every size of `sizes` each way; returns whether all arrived, in order, by when.
    static func exchange(_ path: SimulatedPath, limit: UInt64 = 60_000) -> (Bool, UInt64) {
        let start = path.now
        for (index, size) in sizes.enumerated() {
            try? path.a.send(payload(index, size), stream: UInt32(index % 3), now: path.now)
            try? path.b.send(payload(index, size), stream: UInt32(index % 3), now: path.now)
        }
        let done = path.run(limit: limit) { path.messageCount[true] == sizes.count && path.messageCount[false] == sizes.count }
        for atA in [true, false] {
            let got = path.messages(atA: atA)
            var expected: [UInt32: [[UInt8]]] = [:]
            for (index, size) in sizes.enumerated() { expected[UInt32(index % 3), default: []].append(payload(index, size)) }
            for stream in expected.keys {
                #expect(got.filter { $0.0 == stream }.map(\.1) == expected[stream], "stream \(stream) at \(atA ? "a" : "b")")
            }
        }
        return (done, path.now - start)
    }

    @Test(arguments: [(900, 824), (500, 424)])
    func fragmentsFitTheSizeTheHandshakeFound(datagramSize: Int, fragmentSize: Int) {
        var configuration = ReliableConfiguration()
        configuration.datagramSize = datagramSize
        let path = SimulatedPath(configuration: configuration)
        path.maximumDatagram = datagramSize
        #expect(path.a.fragmentSize == fragmentSize)
        let (done, took) = Self.exchange(path)
        #expect(done)
        #expect(path.blackHoled == 0 && path.largestDelivered == datagramSize)
        #expect(path.a.statistics.datagramSizeReductions == 0 && path.a.statistics.timeouts == 0)
        print("datagrams of \(datagramSize) B: exchange in \(took) ms, \(path.datagrams) datagrams")
    }

    // (largest datagram that passes, the size both sides end at)
    @Test(arguments: [(1122, 900), (972, 900), (548, 500)])
    func aConnectionThatMeetsABlackHoleStepsDownAndLosesNothing(limit: Int, expected: Int) {
        let path = SimulatedPath()
        path.maximumDatagram = limit
        let (done, took) = Self.exchange(path)
        #expect(done, "MTU \(limit + 28): \(path.messageCount) delivered")
        #expect(path.a.datagramSize == expected && path.b.datagramSize == expected)
        #expect(path.a.statistics.datagramSizeReductions == (expected == 900 ? 1 : 2))
        print("black hole at \(limit + 28): exchange in \(took) ms, \(path.blackHoled) datagrams lost, "
              + "\(path.a.statistics.timeouts) RTOs at a, size \(expected)")
    }

    @Test func randomLossAloneDoesNotShrinkTheFragments() {
        let path = SimulatedPath()
        path.loss = 0.10
        let (done, _) = Self.exchange(path)
        #expect(done)
        #expect(path.a.datagramSize == 1200 && path.b.datagramSize == 1200)
        #expect(path.a.statistics.datagramSizeReductions == 0 && path.b.statistics.datagramSizeReductions == 0)
    }

    @Test func theDefaultCutIsTheVersionOneWire() {
        // 1,100-byte fragments: reserved word 1 is the bare fragment index (§7.1), as before.
        let connection = ReliableConnection(now: 0)
        try? connection.send([UInt8](repeating: 7, count: 2500), stream: 4, now: 0)
        let data = connection.takeFrames().filter { $0.type == .data }
        #expect(data.map(\.word1) == [0, 1, 2] && data.map(\.word0) == [4, 4, 4])
        var configuration = ReliableConfiguration()
        configuration.datagramSize = 900
        let small = ReliableConnection(configuration: configuration, now: 0)
        try? small.send([UInt8](repeating: 7, count: 1700), stream: 4, now: 0)
        #expect(small.takeFrames().filter { $0.type == .data }.map(\.word1) == [824 << 16, 824 << 16 | 1, 824 << 16 | 2])
    }
}
