@testable import DNADHT
import DNACrypto
import Testing

/// A holder's inboxes (docs/PROTOCOL.md §8.3): key records first come first served, messages checked
/// and deduplicated, quotas per sender and inbox, deletions only by the owner, expiry.
@Suite struct MailboxTests {
    static let alice = Announced.identities[0]
    static let bob = Announced.identities[1]
    static let carol = Announced.identities[2]
    static let now: UInt64 = 1_800_000_000_000  // ms

    static func record(_ owner: Identity, signer: Identity? = nil, created: UInt64 = now / 1000) throws -> InboxKeyRecord {
        try InboxKeyRecord(identity: owner, keys: try InboxKeys(identity: owner), created: created)
    }

    @Test func recordsMessagesQuotasAndDeletions() throws {
        var boxes = Mailboxes(perSender: 2, perInbox: 3, maximumBytes: 1 << 20)
        let record = try Self.record(Self.bob)
        let key = try #require(NodeID(bytes: record.inboxKey))
        #expect(boxes.put(record.bytes, now: Self.now) == .stored)
        #expect(boxes.put(record.bytes, now: Self.now) == .duplicate)
        #expect(boxes.put(try Self.record(Self.bob, created: Self.now / 1000 + 5).bytes, now: Self.now) == .stored)
        // Another key cannot take bob's inbox (first come, first served), nor can a changed record.
        let impostor = try Identity(generating: Self.bob.name)
        #expect(boxes.put(try Self.record(impostor, created: Self.now / 1000 + 9).bytes, now: Self.now) == .taken)
        var stolen = try InboxKeyRecord(identity: Self.carol, keys: try InboxKeys(identity: Self.carol), created: Self.now / 1000 + 9)
        stolen.name = Self.bob.name
        #expect(boxes.put(stolen.bytes, now: Self.now) == .invalid)  // the signature covers the name

        func message(_ from: Identity, _ text: String) throws -> [UInt8] {
            try OfflineMessage(sealing: Array(text.utf8), from: from, to: record, now: Self.now / 1000).bytes
        }
        let first = try message(Self.alice, "1")
        #expect(boxes.put(first, now: Self.now) == .stored)
        #expect(boxes.put(first, now: Self.now) == .duplicate)
        #expect(boxes.put(try message(Self.alice, "2"), now: Self.now) == .stored)
        #expect(boxes.put(try message(Self.alice, "3"), now: Self.now) == .quota)   // 2 per sender
        #expect(boxes.put(try message(Self.carol, "4"), now: Self.now) == .stored)
        #expect(boxes.put(try message(Self.carol, "5"), now: Self.now) == .quota)   // 3 per inbox
        var garbage = first
        garbage[garbage.count - 1] ^= 1
        #expect(boxes.put(garbage, now: Self.now) == .invalid)
        #expect(boxes.put([1], now: Self.now) == .invalid)

        let all = boxes.items(of: key, skip: 0, budget: 100_000, now: Self.now)
        #expect(all.total == 4 && all.items.count == 4)
        #expect((try? InboxKeyRecord(parsing: all.items[0])) != nil)  // the record comes first
        let page = boxes.items(of: key, skip: 1, budget: 1, now: Self.now)
        #expect(page.total == 4 && page.items.count == 1)              // at least one item per page

        let id = try OfflineMessage(parsing: first, now: Self.now / 1000).id
        let byCarol = try InboxDeletion(owner: Self.carol, ids: [id], now: Self.now / 1000)
        var forged = try InboxDeletion(parsing: byCarol.bytes)
        forged.inboxKey = record.inboxKey
        #expect(boxes.delete(forged.bytes, now: Self.now) == nil)
        #expect(boxes.delete(try InboxDeletion(owner: Self.bob, ids: [id], now: Self.now / 1000).bytes, now: Self.now) == 1)
        #expect(boxes.items(of: key, skip: 0, budget: 100_000, now: Self.now).total == 3)
        // A deletion dated near 2^64 s is refused (it trapped on an overflow).
        #expect(boxes.delete(try InboxDeletion(owner: Self.bob, ids: [id], now: UInt64.max).bytes, now: Self.now) == nil)

        // Messages go when they expire, the record when it was not renewed for 7 days.
        boxes.sweep(now: Self.now + (Offline.maximumLifetime + 1) * 1000)
        #expect(boxes.items(of: key, skip: 0, budget: 100_000, now: Self.now).total == 1)
        boxes.sweep(now: Self.now + (Offline.maximumLifetime + Offline.skew + 10) * 1000)
        #expect(boxes.items(of: key, skip: 0, budget: 100_000, now: Self.now).total == 0 && boxes.bytes == 0)
    }

    @Test func mailMessagesRoundTripAndTruncationsAreRefused() throws {
        let salt = NodeCredential.generate(difficulty: 4).salt
        let key = try #require(NodeID(bytes: [UInt8](repeating: 9, count: 20)))
        let bodies: [DHTMessage.Body] = [
            .mailPut(token: 7, item: [1, 1, 5, 6]), .mailStored(.quota), .mailFetch(token: 8, key: key, skip: 3),
            .mailItems(total: 5, items: [[1, 2, 3], [4, 5]]), .mailDelete(token: 9, request: [1, 3, 0]), .mailDeleted(count: 2),
        ]
        for body in bodies {
            let message = DHTMessage(transaction: 42, salt: salt, body: body)
            let bytes = message.bytes
            #expect(try DHTMessage(parsing: bytes, transaction: 42) == message)
            let padded = body.kind == 16  // MAIL_FETCH is padded to 300 bytes: its shortest prefix is the unpadded one
            for length in 0..<(padded ? 2 + 16 + 8 + 20 + 2 : bytes.count) {
                #expect(throws: DHTError.self) { try DHTMessage(parsing: Array(bytes.prefix(length)), transaction: 42) }
            }
        }
    }
}
