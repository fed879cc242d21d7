import DNAWire
import Testing

/// Pieces of any cut (docs/PROTOCOL.md §4.1, §5.1, §9) and the per-destination datagram size table.
@Suite struct PathSizeTests {
    /// Splits `message` at `pieceSize` as a sender would: (index, count, bytes) per piece.
    static func cut(_ message: [UInt8], pieceSize: Int) -> [(Int, Int, ArraySlice<UInt8>)] {
        let count = Pieces.count(length: message.count, pieceSize: pieceSize)
        return (0..<count).map { ($0, count, message[Pieces.range(of: $0, length: message.count, pieceSize: pieceSize)]) }
    }

    @Test func everyPieceOfEveryCutTellsWhereItBelongs() {
        for length in [1, 2, 100, 1156, 1157, 1284, 4465, 5533, 7074] {
            for pieceSize in [1156, 856, 456, 300] where Pieces.count(length: length, pieceSize: pieceSize) <= Pieces.maximumCount {
                let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 7) }
                for (index, count, bytes) in Self.cut(message, pieceSize: pieceSize) {
                    guard case .success(let place) = Pieces.place(index: index, count: count, length: length, bytes: bytes.count) else {
                        Issue.record("length \(length), piece size \(pieceSize), piece \(index): refused")
                        continue
                    }
                    #expect(place.range == Pieces.range(of: index, length: length, pieceSize: pieceSize))
                    #expect(count == 1 || place.pieceSize == pieceSize, "length \(length) piece \(index)")
                }
            }
        }
    }

    @Test func piecesThatFitNoCutAreRefused() {
        // Not the last piece, but shorter than the last: no piece size gives this count.
        #expect(throws: PieceError.self) { try Pieces.place(index: 0, count: 3, length: 1000, bytes: 100).get() }
        // The last piece longer than the others would be.
        #expect(throws: PieceError.self) { try Pieces.place(index: 2, count: 3, length: 1000, bytes: 500).get() }
        // (length - last) not a multiple of count - 1.
        #expect(throws: PieceError.self) { try Pieces.place(index: 2, count: 3, length: 1001, bytes: 300).get() }
        #expect(throws: PieceError.self) { try Pieces.place(index: 3, count: 3, length: 1000, bytes: 334).get() }
        #expect(throws: PieceError.self) { try Pieces.place(index: 0, count: 33, length: 7000, bytes: 200).get() }
        #expect(throws: PieceError.self) { try Pieces.place(index: 0, count: 2, length: 1, bytes: 1).get() }
        #expect(throws: PieceError.self) { try Pieces.place(index: 0, count: 1, length: 10, bytes: 9).get() }
        #expect(throws: PieceError.self) { try Pieces.place(index: 1, count: 2, length: 10, bytes: 0).get() }
    }

    @Test func aMessageReassemblesFromPiecesOfTwoCuts() throws {
        let message = (0..<5533).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let large = Self.cut(message, pieceSize: 1156), small = Self.cut(message, pieceSize: 456)
        // The last (short) piece of the large cut came; the large ones were lost; the sender cut again.
        let (index, count, bytes) = large[large.count - 1]
        var reassembly = try Reassembly(length: message.count, count: count, index: index, bytes: bytes.count, maximumLength: 6000)
        #expect(try reassembly.add(index: index, length: message.count, count: count, bytes: bytes))
        #expect(reassembly.received(pieceSize: 1156) == 1 << 4)
        // The large last piece holds bytes 4624..<5533: small pieces 11 (5016..<5472) and 12 wholly.
        #expect(reassembly.received(pieceSize: 456) == 1 << 11 | 1 << 12)
        for (index, count, bytes) in small.prefix(10) {
            #expect(try reassembly.add(index: index, length: message.count, count: count, bytes: bytes))
        }
        #expect(reassembly.message == nil)  // 4560..<4624 is missing
        #expect(reassembly.received(pieceSize: 456) == Pieces.all(13) & ~(1 << 10))
        let (next, nextCount, nextBytes) = small[10]
        #expect(try reassembly.add(index: next, length: message.count, count: nextCount, bytes: nextBytes))
        #expect(reassembly.message == message)
        #expect(try !reassembly.add(index: 11, length: message.count, count: 13, bytes: small[11].2))
        #expect(reassembly.smallestPieceSize == 456 && reassembly.firstPieceSize == 1156)
        // A repeat changes nothing; a repeat with other bytes is refused.
        #expect(try !reassembly.add(index: 0, length: message.count, count: 13, bytes: small[0].2))
        var changed = Array(small[3].2)
        changed[7] ^= 1
        #expect(throws: PieceError.conflicting(index: 3)) { try reassembly.add(index: 3, length: message.count, count: 13, bytes: changed) }
        #expect(throws: PieceError.inconsistent) { try reassembly.add(index: 0, length: 5532, count: 13, bytes: small[0].2) }
    }

    /// Reassembly works on runs of bytes (a bitmap word, a memcmp or a memcpy at a time): checked
    /// against a model that takes a byte at a time, over pieces of several cuts arriving in any
    /// order, repeated, and some with a byte changed, for messages whose lengths fall on and off
    /// the bitmap's 64-byte words.
    @Test func runsOfPiecesAgreeWithAByteAtATimeModel() throws {
        var random = SplitMix64(seed: 16)
        for round in 0..<300 {
            let length = [1, 63, 64, 65, 127, 128, 1000, 1156, 4465, 7074][round % 10] + Int(random.next() % 3)
            let message = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            let sizes = [1156, 856, 456, 300, 64, 37].filter { Pieces.count(length: length, pieceSize: $0) <= Pieces.maximumCount }
            var arrivals: [(Int, Int, [UInt8])] = []
            for _ in 0..<12 {
                guard let size = sizes.randomElement(using: &random) else { break }
                let cut = Self.cut(message, pieceSize: size)
                let (index, count, bytes) = cut[Int(random.next() % UInt64(cut.count))]
                var piece = Array(bytes)
                if random.next() % 8 == 0, !piece.isEmpty { piece[Int(random.next() % UInt64(piece.count))] ^= 0x5A }
                arrivals.append((index, count, piece))
            }
            guard let (firstIndex, firstCount, firstBytes) = arrivals.first else { continue }
            var reassembly = try Reassembly(length: length, count: firstCount, index: firstIndex, bytes: firstBytes.count,
                                            maximumLength: 8000)
            var model = [UInt8?](repeating: nil, count: length)
            for (index, count, piece) in arrivals {
                let range = try Pieces.place(index: index, count: count, length: length, bytes: piece.count).get().range
                let conflict = zip(range, piece).contains { offset, byte in model[offset].map { $0 != byte } ?? false }
                let fresh = range.contains { model[$0] == nil }
                if conflict {
                    #expect(throws: PieceError.conflicting(index: index)) {
                        try reassembly.add(index: index, length: length, count: count, bytes: piece)
                    }
                    continue
                }
                #expect(try reassembly.add(index: index, length: length, count: count, bytes: piece) == fresh)
                for (offset, byte) in zip(range, piece) where model[offset] == nil { model[offset] = byte }
                let complete = model.allSatisfy { $0 != nil }
                #expect(reassembly.isComplete == complete)
                #expect(reassembly.message == (complete ? model.compactMap { $0 } : nil))
                for size in sizes {
                    let count = Pieces.count(length: length, pieceSize: size)
                    let expected = (0..<count).reduce(UInt32(0)) { bits, index in
                        Pieces.range(of: index, length: length, pieceSize: size).allSatisfy { model[$0] != nil }
                            ? bits | 1 << UInt32(index) : bits
                    }
                    #expect(reassembly.received(pieceSize: size) == expected, "length \(length), piece size \(size)")
                }
            }
        }
    }

    @Test func aReassemblyNeverTakesMoreThanItsMaximum() {
        #expect(throws: PieceError.tooLarge(length: 7075, maximum: 7074)) {
            try Reassembly(length: 7075, count: 7, index: 0, bytes: 1156, maximumLength: 7074)
        }
    }

    @Test func theSizeStepsAreBasePLPMTUThenSmaller() {
        #expect(Pieces.datagramSizes == [1200, 900, 500])
        #expect(Pieces.stepBelow(1200) == 900 && Pieces.stepBelow(900) == 500 && Pieces.stepBelow(500) == nil)
        #expect(Pieces.stepBelow(1000) == 900)
    }

    @Test func aDestinationGoesSmallerOnlyAfterTwoConfirmationsWithoutALargeSuccessBetween() {
        var sizes = PathSizes<String>()
        #expect(sizes.size(for: "a", now: 0) == 1200)
        var moved = [sizes.smallerWorked("a", size: 900, now: 10)]
        #expect(sizes.size(for: "a", now: 10) == 1200)
        // A large exchange that worked clears the first confirmation (it was random loss).
        sizes.largerWorked("a", size: 1200)
        moved.append(sizes.smallerWorked("a", size: 900, now: 20))
        moved.append(sizes.smallerWorked("a", size: 900, now: 30))
        #expect(sizes.size(for: "a", now: 30) == 900)
        #expect(sizes.size(for: "b", now: 30) == 1200)
        // One more step down needs two more confirmations at that size.
        moved.append(sizes.smallerWorked("a", size: 500, now: 40))
        moved.append(sizes.smallerWorked("a", size: 500, now: 50))
        #expect(moved == [false, false, true, false, true])
        #expect(sizes.size(for: "a", now: 50) == 500)
        // RFC 8899's PMTU_RAISE_TIMER: after 600 s the destination starts again at BASE_PLPMTU.
        #expect(sizes.size(for: "a", now: 50 + PathSizes<String>.raiseInterval) == 1200)
    }

    /// Random loss made one handshake step down: the next still starts at 1,200 bytes. Two in a row
    /// (a black hole) are remembered; a handshake that kept its size between them resets the count.
    @Test func oneHandshakeThatSteppedDownIsNotRememberedTwoInARowAre() {
        var sizes = PathSizes<String>()
        #expect(sizes.handshakeFound("bob", started: 1200, found: 900, now: 0) == 1200)
        #expect(sizes.handshakeFound("bob", started: 1200, found: 1200, now: 10) == 1200)
        #expect(sizes.handshakeFound("bob", started: 1200, found: 900, now: 20) == 1200)
        #expect(sizes.handshakeFound("bob", started: 1200, found: 900, now: 30) == 900)
        // Remembered: the next starts at 900 and keeps it; another peer is not affected.
        #expect(sizes.handshakeFound("bob", started: 900, found: 900, now: 40) == 900)
        #expect(sizes.size(for: "carol", now: 40) == 1200)
        #expect(sizes.size(for: "bob", now: 40 + PathSizes<String>.raiseInterval) == 1200)
    }

    @Test func aDestinationThatSaysItTakesLessIsBelieved() {
        var sizes = PathSizes<String>()
        sizes.limit("a", to: 900, now: 0)
        #expect(sizes.size(for: "a", now: 1) == 900)
        sizes.limit("a", to: 1000, now: 2)  // not smaller: no change
        #expect(sizes.size(for: "a", now: 3) == 900)
        sizes.limit("a", to: 600, now: 4)  // rounded down to a step
        #expect(sizes.size(for: "a", now: 5) == 500)
    }

    @Test func theTableStaysBounded() {
        var sizes = PathSizes<Int>(capacity: 100)
        for destination in 0..<1000 { sizes.limit(destination, to: 900, now: UInt64(destination)) }
        #expect(sizes.count <= 100)
        #expect(sizes.size(for: 999, now: 1000) == 900)
    }
}
