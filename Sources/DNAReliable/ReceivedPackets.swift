/// The packet numbers a receiver has seen (docs/PROTOCOL.md §7.1): everything below `cumulative`,
/// and disjoint ranges above it, kept sorted. This is what ACK frames report.
///
/// The state a sender can make the receiver keep is bounded by the number of ranges, not by the
/// span of packet numbers: a sender that spreads packets over a million numbers (every other one)
/// would otherwise cost a million entries and a sort of them on every ACK. A packet that would open
/// a range beyond `maximumRanges` is refused (`canRecord` is false): the receiver drops it
/// unacknowledged, and the sender retransmits it as lost, as it would any lost packet.
struct ReceivedPackets: Equatable {
    /// Every packet below it was received (or the sender no longer waits for it).
    private(set) var cumulative: UInt64 = 0
    /// Disjoint, non-adjacent inclusive ranges, ascending, each starting above `cumulative` (a range
    /// reaching it is folded into it).
    private(set) var ranges: [ClosedRange<UInt64>] = []
    let maximumRanges: Int

    init(maximumRanges: Int = 1024) { self.maximumRanges = max(1, maximumRanges) }

    /// Whether anything above `cumulative` was received (a gap is open).
    var hasGap: Bool { !ranges.isEmpty }

    /// The index of the first range whose upper bound is ≥ `packet`.
    private func index(of packet: UInt64) -> Int {
        var low = 0, high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < packet { low = middle + 1 } else { high = middle }
        }
        return low
    }

    func contains(_ packet: UInt64) -> Bool {
        if packet < cumulative { return true }
        let i = index(of: packet)
        return i < ranges.count && ranges[i].contains(packet)
    }

    /// Whether recording `packet` keeps the state within `maximumRanges` (it always does for a
    /// packet already recorded, for `cumulative`, and for one next to an existing range).
    func canRecord(_ packet: UInt64) -> Bool {
        guard ranges.count >= maximumRanges, packet > cumulative else { return true }
        let i = index(of: packet)
        if i < ranges.count && ranges[i].lowerBound <= packet + 1 { return true }  // inside, or just below range i
        if i > 0 && ranges[i - 1].upperBound + 1 == packet { return true }        // just above range i - 1
        return false
    }

    /// Records `packet`; returns false when it was recorded already. Call `canRecord` first: a
    /// packet that would open one range too many is not recorded (and false is returned).
    @discardableResult
    mutating func insert(_ packet: UInt64) -> Bool {
        if packet < cumulative { return false }
        if packet == cumulative {
            cumulative += 1
            absorbFirstRange()
            return true
        }
        let i = index(of: packet)
        if i < ranges.count && ranges[i].contains(packet) { return false }
        let joinsBelow = i > 0 && ranges[i - 1].upperBound + 1 == packet
        let joinsAbove = i < ranges.count && ranges[i].lowerBound == packet + 1
        switch (joinsBelow, joinsAbove) {
        case (true, true):
            ranges[i - 1] = ranges[i - 1].lowerBound...ranges[i].upperBound
            ranges.remove(at: i)
        case (true, false):
            ranges[i - 1] = ranges[i - 1].lowerBound...packet
        case (false, true):
            ranges[i] = packet...ranges[i].upperBound
        case (false, false):
            guard ranges.count < maximumRanges else { return false }
            ranges.insert(packet...packet, at: i)
        }
        return true
    }

    /// The sender no longer waits for packets below `least` (§7.1): they count as received.
    mutating func advance(to least: UInt64) {
        guard least > cumulative else { return }
        cumulative = least
        let i = index(of: least)
        ranges.removeFirst(i)
        if let first = ranges.first, first.lowerBound < least { ranges[0] = least...first.upperBound }
        absorbFirstRange()
    }

    private mutating func absorbFirstRange() {
        if let first = ranges.first, first.lowerBound == cumulative {
            cumulative = first.upperBound + 1
            ranges.removeFirst()
        }
    }
}
