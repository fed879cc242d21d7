@testable import DNAReliable
import Testing

/// The receiver's record of packet numbers (§7.1): a cumulative point and ranges above it, checked
/// against a plain set of numbers under random arrivals, duplicates and advances.
@Suite struct ReceivedPacketsTests {
    /// What `ReceivedPackets` must equal: the numbers below `cumulative` and the set above it.
    struct Model {
        var cumulative: UInt64 = 0
        var above = Set<UInt64>()

        mutating func insert(_ packet: UInt64) -> Bool {
            if packet < cumulative || above.contains(packet) { return false }
            above.insert(packet)
            while above.remove(cumulative) != nil { cumulative += 1 }
            return true
        }

        mutating func advance(to least: UInt64) {
            guard least > cumulative else { return }
            cumulative = least
            above = above.filter { $0 >= cumulative }
            while above.remove(cumulative) != nil { cumulative += 1 }
        }

        var ranges: [ClosedRange<UInt64>] {
            var out: [ClosedRange<UInt64>] = []
            for packet in above.sorted() {
                if let last = out.last, last.upperBound + 1 == packet {
                    out[out.count - 1] = last.lowerBound...packet
                } else {
                    out.append(packet...packet)
                }
            }
            return out
        }
    }

    @Test func matchesASetOfNumbersUnderRandomArrivals() {
        var generator = SplitMix(seed: 7)
        for round in 0..<200 {
            var packets = ReceivedPackets(), model = Model()
            let span = UInt64(8 + round % 120)
            for step in 0..<400 {
                if generator.next() % 23 == 0 {
                    let least = model.cumulative + generator.next() % 6
                    packets.advance(to: least)
                    model.advance(to: least)
                } else {
                    let packet = model.cumulative + generator.next() % span - min(model.cumulative, generator.next() % 3)
                    let inserted = packets.insert(packet), expected = model.insert(packet)
                    #expect(inserted == expected, "round \(round) step \(step) packet \(packet)")
                }
                #expect(packets.cumulative == model.cumulative)
                #expect(packets.ranges == model.ranges)
                #expect(packets.hasGap == !model.above.isEmpty)
            }
            for packet in 0..<(model.cumulative + span) {
                #expect(packets.contains(packet) == (packet < model.cumulative || model.above.contains(packet)))
            }
        }
    }

    @Test func joinsRangesThatMeetAndFoldsThemIntoTheCumulativePoint() {
        var packets = ReceivedPackets()
        for packet: UInt64 in [2, 3, 7, 5, 9] { packets.insert(packet) }
        #expect(packets.ranges == [2...3, 5...5, 7...7, 9...9])
        packets.insert(6)
        packets.insert(4)
        #expect(packets.ranges == [2...7, 9...9])
        let again = packets.insert(4)
        #expect(!again)
        packets.insert(1)
        #expect(packets.ranges == [1...7, 9...9] && packets.cumulative == 0)
        packets.insert(0)
        #expect(packets.cumulative == 8 && packets.ranges == [9...9])
        packets.advance(to: 12)
        #expect(packets.cumulative == 12 && !packets.hasGap)
    }
}

/// A small deterministic generator (SplitMix64), so that a failure repeats.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
