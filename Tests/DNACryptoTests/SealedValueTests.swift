@testable import DNACrypto
import Testing

/// Sealed values (docs/PROTOCOL.md §10.6): data sealed to one reader's inbox keys inside a signed
/// value; only that reader opens it, and only inside the value (key, signer, slot, type) it was
/// sealed for.
@Suite struct SealedValueTests {
    static let alice = try! Identity(generating: try! IdentityName("alice"))
    static let bob = try! Identity(generating: try! IdentityName("bob"))
    static let now: UInt64 = 1_800_000_000
    static let key = [UInt8](repeating: 0x42, count: 20)

    /// A value by alice at `key`, slot 3, type 9, with `plaintext` sealed to bob's inbox keys.
    static func sealedValue(_ plaintext: [UInt8]) throws -> SignedValue {
        let record = try InboxKeyRecord(identity: bob, keys: try InboxKeys(identity: bob), created: now)
        let data = try SealedValueData.seal(plaintext, to: record, key: key, signerID: SignedValue.signerID(of: alice.publicKey),
                                            slot: 3, type: 9)
        var value = SignedValue(key: key, signer: alice.name, slot: 3, sequence: 1, created: now, lifetime: 3600, type: 9,
                                flags: SignedValue.sealedFlag, data: data)
        try value.sign(with: alice, now: now)
        return value
    }

    @Test func onlyTheReaderOpensItAndOnlyInsideItsValue() throws {
        let plaintext = Array("the group's key".utf8)
        let value = try SignedValue(wire: try Self.sealedValue(plaintext).wireBytes)
        try value.verify(now: Self.now)
        #expect(value.isSealed && value.data.count == plaintext.count + SealedValueData.overhead)
        #expect(try value.open(with: try InboxKeys(identity: Self.bob)) == plaintext)
        // The writer cannot open what it sealed to bob.
        #expect(throws: OfflineError.authenticationFailed) { try value.open(with: try InboxKeys(identity: Self.alice)) }
        // The same sealed bytes in another key, slot, type or signer's value do not open.
        let bob = try InboxKeys(identity: Self.bob)
        for changed in [{ (v: inout SignedValue) in v.key[0] ^= 1 }, { $0.slot = 4 }, { $0.type = 10 },
                        { $0.publicKey = Self.bob.publicKey }] {
            var moved = value
            changed(&moved)
            #expect(throws: OfflineError.authenticationFailed) { try moved.open(with: bob) }
        }
        // Every byte of the sealed data is covered: a flipped bit anywhere is refused.
        for index in [0, 1, 32, 33, 1120, 1121, value.data.count - 1] {
            var flipped = value
            flipped.data[index] ^= 0x01
            #expect(throws: (any Error).self, "byte \(index)") { try flipped.open(with: bob) }
        }
    }

    @Test func sizesVersionsAndFlagsAreChecked() throws {
        let bob = try InboxKeys(identity: Self.bob)
        let largest = try Self.sealedValue([UInt8](repeating: 7, count: SealedValueData.maximumPlaintext))
        #expect(largest.data.count == SignedValue.maximumDataSize)
        #expect(try largest.open(with: bob).count == 64_399)
        #expect(throws: OfflineError.tooLarge(64_400)) {
            try SealedValueData.seal([UInt8](repeating: 0, count: 64_400), x25519: bob.x25519Public, kem: bob.kemPublic,
                                     key: Self.key, signerID: [UInt8](repeating: 0, count: 32), slot: 0, type: 0)
        }
        // Empty plaintext seals and opens.
        #expect(try Self.sealedValue([]).open(with: bob) == [])
        var value = try Self.sealedValue([1, 2, 3])
        let whole = value.data
        for length in [0, 1, SealedValueData.overhead - 1] {
            value.data = Array(whole.prefix(length))
            #expect(throws: OfflineError.malformed("sealed data of \(length) bytes")) { try value.open(with: bob) }
        }
        value.data = whole
        value.data[0] = 2
        #expect(throws: OfflineError.malformed("sealed data version 2")) { try value.open(with: bob) }
        value.data = whole
        value.flags = 0
        #expect(throws: OfflineError.malformed("the value is not sealed")) { try value.open(with: bob) }
        // Keys that cannot be sealed to: a small-order X25519 point, a malformed ML-KEM key.
        #expect(throws: (any Error).self) {
            try SealedValueData.seal([1], x25519: [UInt8](repeating: 0, count: 32), kem: bob.kemPublic, key: Self.key,
                                     signerID: [UInt8](repeating: 0, count: 32), slot: 0, type: 0)
        }
        #expect(throws: (any Error).self) {
            try SealedValueData.seal([1], x25519: bob.x25519Public, kem: [UInt8](repeating: 0, count: 10), key: Self.key,
                                     signerID: [UInt8](repeating: 0, count: 32), slot: 0, type: 0)
        }
    }

    /// Sealed data comes from the network: random bytes of any length, and the real data with random
    /// bytes overwritten, are refused with an error, never a crash.
    @Test func randomAndMutatedSealedDataIsRefused() throws {
        let bob = try InboxKeys(identity: Self.bob)
        let whole = try Self.sealedValue(Array("contacts".utf8))
        var generator = SystemRandomNumberGenerator()
        for round in 0..<300 {
            var value = whole
            if round % 2 == 0 {
                let length = [0, 1, 1120, 1136, 1137, 1138, 2000][round / 2 % 7]
                value.data = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
                if length > 0 { value.data[0] = 1 }
            } else {
                for _ in 0..<(1 + round % 5) { value.data[Int.random(in: 0..<value.data.count, using: &generator)] ^= UInt8.random(in: 1...255, using: &generator) }
            }
            #expect(throws: (any Error).self, "round \(round)") { try value.open(with: bob) }
        }
    }
}
