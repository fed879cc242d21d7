@testable import DNACrypto
import Testing

/// Offline messages (docs/PROTOCOL.md §8): sealed to the inbox keys, signed by the sender; only the
/// owner opens them; every change or truncation is refused.
@Suite struct OfflineTests {
    static let alice = try! Identity(generating: try! IdentityName("alice"))
    static let bob = try! Identity(generating: try! IdentityName("bob"))
    static let now: UInt64 = 1_800_000_000

    @Test func aSealedMessageOpensOnlyWithTheOwnersKeys() throws {
        let keys = try InboxKeys(identity: Self.bob)
        // The keys derive from the identity: the same on every start.
        #expect(try InboxKeys(identity: Self.bob).kemPublic == keys.kemPublic)
        #expect(try InboxKeys(identity: Self.bob).x25519Public == keys.x25519Public)
        let record = try InboxKeyRecord(identity: Self.bob, keys: keys, created: Self.now)
        let parsedRecord = try InboxKeyRecord(parsing: record.bytes)
        #expect(parsedRecord == record && parsedRecord.inboxKey == Offline.inboxKey(Self.bob.name))

        let sealed = try OfflineMessage(sealing: Array("see you".utf8), from: Self.alice, to: parsedRecord, now: Self.now)
        let parsed = try OfflineMessage(parsing: sealed.bytes, now: Self.now + 10)
        #expect(parsed.senderKey == Self.alice.publicKey && parsed.inboxKey == Offline.inboxKey(Self.bob.name))
        let opened = try parsed.open(with: keys)
        #expect(opened.sender == Self.alice.name && opened.message == Array("see you".utf8))
        // Alice's own inbox keys cannot open it.
        #expect(throws: OfflineError.authenticationFailed) { try parsed.open(with: try InboxKeys(identity: Self.alice)) }
    }

    @Test func changesTruncationsAndTimesAreRefused() throws {
        let keys = try InboxKeys(identity: Self.bob)
        let record = try InboxKeyRecord(identity: Self.bob, keys: keys, created: Self.now)
        let bytes = try OfflineMessage(sealing: [1, 2, 3], from: Self.alice, to: record, now: Self.now, lifetime: 3600).bytes
        for position in stride(from: 0, to: bytes.count, by: 97) {
            var changed = bytes
            changed[position] ^= 0x01
            #expect(throws: OfflineError.self) { try OfflineMessage(parsing: changed, now: Self.now) }
        }
        for length in stride(from: 0, to: bytes.count, by: 53) {
            #expect(throws: OfflineError.self) { try OfflineMessage(parsing: Array(bytes.prefix(length)), now: Self.now) }
        }
        #expect(throws: OfflineError.expired) { try OfflineMessage(parsing: bytes, now: Self.now + 3600) }
        #expect(throws: OfflineError.badTimes) { try OfflineMessage(parsing: bytes, now: Self.now - 700) }
        #expect(throws: OfflineError.tooLarge(4097)) {
            try OfflineMessage(sealing: [UInt8](repeating: 0, count: 4097), from: Self.alice, to: record, now: Self.now)
        }
        #expect(throws: OfflineError.badTimes) {
            try OfflineMessage(sealing: [1], from: Self.alice, to: record, now: Self.now, lifetime: Offline.maximumLifetime + 1)
        }
        var badRecord = record.bytes
        badRecord[20] ^= 1
        #expect(throws: OfflineError.self) { try InboxKeyRecord(parsing: badRecord) }
    }

    @Test func randomInboxItemsAreRefusedWithoutACrash() throws {
        // Holders parse items from anyone: random bytes and random changes to valid items give a
        // typed error (or, for an untouched signed part, parse), never a crash.
        let keys = try InboxKeys(identity: Self.bob)
        let record = try InboxKeyRecord(identity: Self.bob, keys: keys, created: Self.now).bytes
        let message = try OfflineMessage(sealing: [7], from: Self.alice, to: try InboxKeyRecord(parsing: record), now: Self.now).bytes
        let deletion = try InboxDeletion(owner: Self.bob, ids: [[UInt8](repeating: 3, count: 16)], now: Self.now).bytes
        var x: UInt64 = 0xB0B
        func next() -> UInt64 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            return x >> 17
        }
        for round in 0..<600 {
            let base = [record, message, deletion][round % 3]
            var bytes = round % 2 == 0 ? base : (0..<Int(next() % 64)).map { _ in UInt8(truncatingIfNeeded: next()) }
            if round % 2 == 0 { bytes[Int(next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: next() | 1) }
            #expect(throws: OfflineError.self) { try InboxKeyRecord(parsing: bytes) }
            #expect(throws: OfflineError.self) { try OfflineMessage(parsing: bytes, now: Self.now) }
            if let parsed = try? InboxDeletion(parsing: bytes) {
                // Only the ids or the signature bytes changed: the signature check refuses it.
                #expect(throws: OfflineError.self) { try parsed.verify(ownerKey: Self.bob.publicKey, now: Self.now) }
            }
        }
    }

    @Test func deletionsVerifyOnlyWithTheOwnersKey() throws {
        let ids = [[UInt8](repeating: 1, count: 16), [UInt8](repeating: 2, count: 16)]
        let deletion = try InboxDeletion(owner: Self.bob, ids: ids, now: Self.now)
        let parsed = try InboxDeletion(parsing: deletion.bytes)
        #expect(parsed.ids == ids && parsed.inboxKey == Offline.inboxKey(Self.bob.name))
        try parsed.verify(ownerKey: Self.bob.publicKey, now: Self.now)
        #expect(throws: OfflineError.badSignature) { try parsed.verify(ownerKey: Self.alice.publicKey, now: Self.now) }
        #expect(throws: OfflineError.badTimes) { try parsed.verify(ownerKey: Self.bob.publicKey, now: Self.now + 3600) }
        #expect(throws: OfflineError.self) { try InboxDeletion(owner: Self.bob, ids: [], now: Self.now) }
        #expect(throws: OfflineError.self) { try InboxDeletion(parsing: Array(deletion.bytes.dropLast())) }
    }

    /// Found while writing the fuzz targets (Fuzz/regressions/offline): `created` is any 64-bit value from the network;
    /// within 600 s of 2^64 the time check overflowed and trapped (a holder crashed on MAIL_DELETE).
    @Test func deletionsFromAnyTimeAreRefusedWithoutAnOverflow() throws {
        let ids = [[UInt8](repeating: 1, count: 16)]
        for created in [UInt64.max, UInt64.max - Offline.skew + 1, UInt64.max - Offline.skew, Self.now + Offline.skew + 1] {
            let deletion = try InboxDeletion(parsing: try InboxDeletion(owner: Self.bob, ids: ids, now: created).bytes)
            #expect(throws: OfflineError.badTimes) { try deletion.verify(ownerKey: Self.bob.publicKey, now: Self.now) }
        }
        let early = try InboxDeletion(owner: Self.bob, ids: ids, now: 0)
        #expect(throws: OfflineError.badTimes) { try early.verify(ownerKey: Self.bob.publicKey, now: Self.now) }
        try early.verify(ownerKey: Self.bob.publicKey, now: Offline.skew)
        try InboxDeletion(owner: Self.bob, ids: ids, now: Offline.skew).verify(ownerKey: Self.bob.publicKey, now: 0)
        try InboxDeletion(owner: Self.bob, ids: ids, now: Self.now + Offline.skew).verify(ownerKey: Self.bob.publicKey, now: Self.now)
    }
}
