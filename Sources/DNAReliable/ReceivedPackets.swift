/// The packet numbers a receiver got (§7.1): every number below `cumulative`, and above it a sorted
/// list of disjoint, non-adjacent ranges (what an ACK carries). A set of numbers sorted for each
/// ACK cost the receiver a quarter of its CPU once a burst of losses left thousands of numbers above
/// the cumulative point (measured with perf, 256 MiB in 1 MiB messages on loopback), which slowed it
/// further and lost more: ranges grow only with the gaps, and the common cases (the next number,
/// the end of the last range) are O(1).
struct ReceivedPackets: Equatable {
    /// Every packet below it was received (or is no longer awaited).
    private(set) var cumulative: UInt64 = 0
    /// Received packets above `cumulative`, ascending; the first starts above `cumulative` + 0 (a
    /// range reaching `cumulative` is folded into it).
    private(set) var ranges: [ClosedRange<UInt64>] = []

    /// Nothing was received above the cumulative point (no gap).
    var hasGap: Bool { !ranges.isEmpty }

    func contains(_ packet: UInt64) -> Bool {
        if packet < cumulative { return true }
        guard let index = rangeIndex(atOrAfter: packet) else { return false }
        return ranges[index].contains(packet)
    }

    /// Records `packet`; false when it was there already.
    @discardableResult
    mutating func insert(_ packet: UInt64) -> Bool {
        if packet < cumulative { return false }
        if packet == cumulative {
            cumulative += 1
            foldFront()
            return true
        }
        // The usual cases first: after the last range, or extending it.
        if let last = ranges.last {
            if packet > last.upperBound {
                if packet == last.upperBound + 1 {
                    ranges[ranges.count - 1] = last.lowerBound...packet
                } else {
                    ranges.append(packet...packet)
                }
                return true
            }
        } else {
            ranges.append(packet...packet)
            return true
        }
        guard let index = rangeIndex(atOrAfter: packet) else { return false }  // unreachable: packet <= last
        let next = ranges[index]
        if next.contains(packet) { return false }
        // packet < next.lowerBound: joins the previous range, the next, both, or neither.
        let joinsNext = packet + 1 == next.lowerBound
        let joinsPrevious = index > 0 && ranges[index - 1].upperBound + 1 == packet
        switch (joinsPrevious, joinsNext) {
        case (true, true):
            ranges[index - 1] = ranges[index - 1].lowerBound...next.upperBound
            ranges.remove(at: index)
        case (true, false):
            ranges[index - 1] = ranges[index - 1].lowerBound...packet
        case (false, true):
            ranges[index] = packet...next.upperBound
        case (false, false):
            ranges.insert(packet...packet, at: index)
        }
        return true
    }

    /// The sender no longer awaits packets below `least`: the cumulative point moves up to it.
    mutating func advance(to least: UInt64) {
        guard least > cumulative else { return }
        cumulative = least
        let keep = ranges.firstIndex { $0.upperBound >= cumulative } ?? ranges.count
        ranges.removeFirst(keep)
        foldFront()
    }

    /// The first range whose upper bound is at or above `packet` (binary search), if any.
    private func rangeIndex(atOrAfter packet: UInt64) -> Int? {
        var low = 0, high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < packet { low = middle + 1 } else { high = middle }
        }
        return low < ranges.count ? low : nil
    }

    /// A first range that reaches the cumulative point joins it.
    private mutating func foldFront() {
        while let first = ranges.first, first.lowerBound <= cumulative {
            cumulative = max(cumulative, first.upperBound + 1)
            ranges.removeFirst()
        }
    }
}
