import DNACrypto
import DNADHT
import DNANet
import Glibc
import Testing

/// Fetching an inbox (PROTOCOL.md §8.3) with real sockets on loopback when one holder answers late.
@Suite(.serialized) struct MailRoundTests {
    /// An inbox of 10 pages (a key record and 48 messages, about 4.6 KB each, from two senders: 32
    /// per sender at most) on 12 nodes; one of
    /// them answers the reader 300 ms late (within its retries, so each answer counts). A round of
    /// pages waited for every holder, so the slow one set the pace of all of them (1.7-1.9 s more
    /// than the same fetch without it); now a round ends once half answered and the rest had as
    /// long again, and a holder that missed it is asked no further page (0.3 s more: the lookup
    /// and the first round).
    @Test func aHolderThatAnswersLateDoesNotSetThePaceOfEveryPage() throws {
        let services = try SignalingServiceTests.services(12)
        defer { for service in services { service.stop() } }
        let reader = services[1], slow = services[7], writer = services[4]
        let owner = try Identity(generating: try IdentityName("olga"))
        let senders = [try Identity(generating: try IdentityName("pia")), try Identity(generating: try IdentityName("rosa"))]
        let record = try InboxKeyRecord(identity: owner, keys: try InboxKeys(identity: owner), created: unixMilliseconds() / 1000)
        let key = try #require(NodeID(bytes: record.inboxKey))
        #expect((try #require(writer.putMail(record.bytes, key: key))) >= 10)
        let messages = try (0..<48).map { index in
            try OfflineMessage(sealing: Array("message \(index)".utf8), from: senders[index % 2], to: record,
                               now: unixMilliseconds() / 1000).bytes
        }
        let stored = try #require(writer.putMail(messages, key: key))
        #expect(stored.allSatisfy { $0 >= 10 }, "stored on \(stored)")

        func fetch() throws -> (items: Int, milliseconds: UInt64) {
            let started = monotonicMilliseconds()
            let items = try #require(reader.fetchMail(key: key))
            return (items.count, monotonicMilliseconds() - started)
        }
        let clean = try fetch()
        #expect(clean.items == 49)
        let readerPort = reader.port
        slow.delayOutgoing { _, to in to.port == readerPort ? 300 : 0 }
        let late = try fetch()
        #expect(late.items == 49)
        // The slow holder's answers to the lookup, and to the first page, once (300 ms each at most
        // twice: a request retried after 250 ms); not to each of the 10 pages.
        #expect(late.milliseconds < clean.milliseconds + 1_000,
                "the fetch took \(late.milliseconds) ms with the slow holder, \(clean.milliseconds) ms without")
    }
}
