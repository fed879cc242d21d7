@testable import DNACrypto
import DNAWire
import Testing

@Suite struct RecordProtectionTests {
    static let secret = [UInt8](repeating: 0x42, count: 32)

    static func pair(_ direction: RecordDirection = .initiatorToResponder) throws -> (RecordSealer, RecordOpener) {
        (try RecordSealer(trafficSecret: secret, direction: direction), try RecordOpener(trafficSecret: secret, direction: direction))
    }

    @Test func sealedFramesOpenWithTheirHeader() throws {
        let (sealer, opener) = try Self.pair()
        for size in [0, 1, 1000, 70_000] {
            let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7) }
            let frame = try sealer.seal(type: .data, word0: 9, word1: 3, plaintext: plaintext)
            #expect(frame.count == size + RecordSealer.overhead)
            #expect(try FrameDecoder().decode(frame).header.type == .data)  // a valid DNA frame on the wire
            let opened = try opener.open(frame)
            #expect(opened.plaintext == plaintext)
            #expect(opened.header.reserved == FrameReserved(word0: 9, word1: 3, word2: 0))
        }
    }

    @Test func everySingleBitFlipIsRejectedAndLeavesNoState() throws {
        let (sealer, opener) = try Self.pair()
        let frame = try sealer.seal(type: .data, plaintext: Array("attack at dawn".utf8))
        for bit in 0..<(frame.count * 8) {
            var flipped = frame
            flipped[bit / 8] ^= UInt8(1) << UInt8(bit % 8)
            #expect(throws: RecordError.self, "bit \(bit)") { try opener.open(flipped) }
        }
        #expect(try opener.open(frame).plaintext == Array("attack at dawn".utf8))
    }

    @Test func replaysAndDuplicatesAreDropped() throws {
        let (sealer, opener) = try Self.pair()
        let first = try sealer.seal(type: .data, plaintext: [1])
        _ = try opener.open(first)
        #expect(throws: RecordError.replayed(epoch: 0, sequence: 0)) { try opener.open(first) }
    }

    @Test func reorderingInsideTheWindowIsAcceptedOlderIsNot() throws {
        let (sealer, opener) = try Self.pair()
        let frames = try (0..<3000).map { i throws(RecordError) in try sealer.seal(type: .data, plaintext: [UInt8(i & 0xFF)]) }
        _ = try opener.open(frames[2999])
        _ = try opener.open(frames[2999 - 2047])  // the oldest the window holds
        #expect(throws: RecordError.tooOld(epoch: 0, sequence: 2999 - 2048)) { try opener.open(frames[2999 - 2048]) }
        for i in stride(from: 2998, through: 1000, by: -1) { _ = try opener.open(frames[i]) }
        #expect(throws: RecordError.replayed(epoch: 0, sequence: 1500)) { try opener.open(frames[1500]) }
    }

    @Test func theOtherDirectionsKeyCannotOpen() throws {
        let sealer = try RecordSealer(trafficSecret: Self.secret, direction: .initiatorToResponder)
        let opener = try RecordOpener(trafficSecret: Self.secret, direction: .responderToInitiator)
        #expect(throws: RecordError.authenticationFailed) { try opener.open(try sealer.seal(type: .data, plaintext: [1])) }
    }

    @Test func keysUpdateBeforeTheSequenceWraps() throws {
        let (sealer, opener) = try Self.pair()
        sealer.skip(to: UInt64(UInt32.max) - 1)
        let a = try sealer.seal(type: .data, plaintext: [1])  // epoch 0, sequence 2^32-2
        let b = try sealer.seal(type: .data, plaintext: [2])  // epoch 0, sequence 2^32-1
        let c = try sealer.seal(type: .data, plaintext: [3])  // epoch 1, sequence 0, new key
        #expect(try FrameDecoder().decode(c).header.sequence == 0)
        #expect(sealer.epoch == 1)
        #expect(try opener.open(a).plaintext == [1])
        #expect(try opener.open(c).plaintext == [3])
        #expect(try opener.open(b).plaintext == [2])  // late frame of the previous epoch
        // The same (epoch 1, sequence 0) under the old key would not authenticate: the key changed.
        let stale = try RecordSealer(trafficSecret: Self.secret, direction: .initiatorToResponder)
        var forged = try stale.seal(type: .data, plaintext: [3])
        forged.replaceSubrange(28..<32, with: [0, 0, 0, 1])
        let crc = CRC32.checksum(forged[32...])
        forged.replaceSubrange(16..<20, with: [UInt8(crc >> 24), UInt8((crc >> 16) & 0xFF), UInt8((crc >> 8) & 0xFF), UInt8(crc & 0xFF)])
        #expect(throws: RecordError.self) { try opener.open(forged) }
        // Epochs far ahead are unknown.
        forged.replaceSubrange(28..<32, with: [0, 0, 0, 9])
        #expect(throws: RecordError.self) { try opener.open(forged) }
    }

    @Test func randomAndMutatedInputNeverOpensAndLeavesTheOpenerWorking() throws {
        let (sealer, opener) = try Self.pair()
        var state: UInt64 = 0x5EED
        func next() -> UInt64 {  // SplitMix64
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let valid = try sealer.seal(type: .data, plaintext: Array("hello".utf8))
        var opened = 0
        for i in 0..<100_000 {
            var input: [UInt8]
            if i % 2 == 0 {
                input = (0..<Int(next() % 80)).map { _ in UInt8(truncatingIfNeeded: next()) }
            } else {
                input = valid
                for _ in 0..<(1 + Int(next() % 3)) { input[Int(next() % UInt64(input.count))] ^= UInt8(truncatingIfNeeded: next() | 1) }
            }
            if input == valid { continue }  // two flips of one byte can cancel out
            if (try? opener.open(input)) != nil { opened += 1 }
        }
        #expect(opened == 0)
        #expect(try opener.open(valid).plaintext == Array("hello".utf8))
    }

    /// Frames of both suites at epoch 1, sequence 5, from the responder, computed by an independent
    /// implementation (Python `cryptography`'s AESGCM and ChaCha20Poly1305 over OpenSSL, the epoch-1 key
    /// with hashlib's BLAKE2b as libsodium's crypto_kdf, docs/PROTOCOL.md §3).
    @Test(arguments: [
        (CipherSuite.aes256GCM, "444e412001000001000000050000001e092060030000000900000003000000018e676ced5f943a40d467962e61f227c6b3ba8e309bdb0f13cf233d5231ad"),
        (CipherSuite.chacha20Poly1305, "444e412001000001000000050000001e2ef55771000000090000000300000001fcccbce700b028a39ab628092d0d6611ace1e5ba73ce358625d36ab43260"),
    ])
    func eachSuiteSealsAsAnIndependentImplementationDoes(suite: CipherSuite, hex: String) throws {
        let expected = stride(from: 0, to: hex.count, by: 2).compactMap { offset -> UInt8? in
            let start = hex.index(hex.startIndex, offsetBy: offset)
            return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)
        }
        guard suite.isAvailable else {
            // Without AES instructions the suite is neither offered nor usable.
            #expect(throws: RecordError.unavailable(suite)) { try RecordSealer(trafficSecret: Self.secret, direction: .responderToInitiator, suite: suite) }
            #expect(!CipherSuite.preferred.contains(suite))
            return
        }
        let sealer = try RecordSealer(trafficSecret: Self.secret, direction: .responderToInitiator, suite: suite)
        #expect(sealer.suite == suite)
        sealer.skip(to: suite.recordsPerEpoch)
        let first = try sealer.seal(type: .data, plaintext: [0])  // moves to epoch 1
        #expect(sealer.epoch == 1)
        #expect(try FrameDecoder().decode(first).header.sequence == 0)
        sealer.skip(to: 5)
        let frame = try sealer.seal(type: .data, word0: 9, word1: 3, plaintext: Array("attack at dawn".utf8))
        #expect(frame == expected)
        let opener = try RecordOpener(trafficSecret: Self.secret, direction: .responderToInitiator, suite: suite)
        #expect(try opener.open(frame).plaintext == Array("attack at dawn".utf8))
        // Another suite's opener, with the same secret, cannot open it.
        let other = try RecordOpener(trafficSecret: Self.secret, direction: .responderToInitiator,
                                     suite: suite == .aes256GCM ? .chacha20Poly1305 : .aes256GCM)
        #expect(throws: RecordError.authenticationFailed) { try other.open(frame) }
    }

    /// AES-256-GCM changes keys every 2^23 records (its confidentiality limit, RFC 9001 §6.6), where
    /// ChaCha20-Poly1305 uses the whole 2^32 sequence space; the receiver follows either.
    @Test func aesGCMMovesToTheNextEpochAfter2To23Records() throws {
        let suite = CipherSuite.aes256GCM
        guard suite.isAvailable else {
            #expect(!CipherSuite.preferred.contains(suite))
            return
        }
        let sealer = try RecordSealer(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: suite)
        let opener = try RecordOpener(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: suite)
        sealer.skip(to: (1 << 23) - 1)
        let last = try sealer.seal(type: .data, plaintext: [1])
        let next = try sealer.seal(type: .data, plaintext: [2])
        #expect(try FrameDecoder().decode(last).header.reserved.word2 == 0)
        #expect(try FrameDecoder().decode(next).header.reserved.word2 == 1)
        #expect(try FrameDecoder().decode(next).header.sequence == 0)
        #expect(try opener.open(next).plaintext == [2])
        #expect(try opener.open(last).plaintext == [1])  // late, from the previous epoch
    }

    /// AES-256-GCM also moves to the next epoch after 2^34 blocks (RFC 9001 §6.6's product for records
    /// of any size): a 16 MiB record that would cross it goes under the next key.
    @Test func aesGCMMovesToTheNextEpochBeforeItsBlockBudget() throws {
        guard CipherSuite.aes256GCM.isAvailable else {
            #expect(CipherSuite.chacha20Poly1305.blocksPerEpoch == .max)
            return
        }
        let sealer = try RecordSealer(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: .aes256GCM)
        let opener = try RecordOpener(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: .aes256GCM)
        let large = [UInt8](repeating: 5, count: 1 << 20)  // 65,536 blocks + the tag's
        sealer.skip(to: 10, blocks: (1 << 34) - (1 << 16) - 2)
        let fits = try sealer.seal(type: .data, plaintext: large)
        #expect(try FrameDecoder(maximumPayloadLength: 2 << 20).decode(fits).header.reserved.word2 == 0)
        let next = try sealer.seal(type: .data, plaintext: [1])  // the budget is spent: a new key
        #expect(try FrameDecoder().decode(next).header.reserved.word2 == 1)
        #expect(try opener.open(next).plaintext == [1])
        // Empty records seal and open in both suites (no plaintext pointer at all).
        for suite in CipherSuite.preferred {
            let empty = try RecordSealer(trafficSecret: Self.secret, direction: .responderToInitiator, suite: suite)
            let reader = try RecordOpener(trafficSecret: Self.secret, direction: .responderToInitiator, suite: suite)
            #expect(try reader.open(try empty.seal(type: .data, plaintext: [])).plaintext == [])
        }
    }

    /// Past the suite's integrity limit of forged frames (RFC 9001 §6.6), the opener refuses everything,
    /// genuine frames too: the connection must be established again.
    @Test(arguments: CipherSuite.preferred)
    func pastTheIntegrityLimitNothingOpens(suite: CipherSuite) throws {
        let sealer = try RecordSealer(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: suite)
        let opener = try RecordOpener(trafficSecret: Self.secret, direction: .initiatorToResponder, suite: suite)
        let genuine = try sealer.seal(type: .data, plaintext: [7])
        var forged = try sealer.seal(type: .data, plaintext: [8])
        forged[forged.count - 1] ^= 1
        let crc = CRC32.checksum(forged[32...])
        forged.replaceSubrange(16..<20, with: [UInt8(crc >> 24), UInt8((crc >> 16) & 0xFF), UInt8((crc >> 8) & 0xFF), UInt8(crc & 0xFF)])
        opener.countForgeries(suite.forgeryLimit - 2)
        #expect(throws: RecordError.authenticationFailed) { try opener.open(forged) }
        // A forgery under the next epoch's key counts too (the count spans every key of the session).
        sealer.skip(to: suite.recordsPerEpoch)
        var nextEpoch = try sealer.seal(type: .data, plaintext: [9])
        nextEpoch[nextEpoch.count - 1] ^= 1
        let nextCRC = CRC32.checksum(nextEpoch[32...])
        nextEpoch.replaceSubrange(16..<20, with: [UInt8(nextCRC >> 24), UInt8((nextCRC >> 16) & 0xFF), UInt8((nextCRC >> 8) & 0xFF), UInt8(nextCRC & 0xFF)])
        #expect(throws: RecordError.authenticationFailed) { try opener.open(nextEpoch) }  // the last one the limit allows
        #expect(throws: RecordError.exhausted) { try opener.open(genuine) }
    }

    @Test func keysMustBe32Bytes() {
        #expect(throws: RecordError.invalidKey) { try RecordSealer(trafficSecret: [1, 2], direction: .initiatorToResponder) }
        #expect(throws: RecordError.invalidKey) { try RecordOpener(trafficSecret: [], direction: .initiatorToResponder) }
    }
}
