@testable import DNADHT
import DNACrypto
import DNAWire
import Testing

/// A node behind a link that silently drops datagrams over its MTU (docs/PROTOCOL.md §9): its
/// 5.3 KB STOREs and the 5.3 KB VALUEs it asks for go through in smaller pieces after one lost
/// attempt, and nodes remember the size.
@Suite(.serialized) struct DHTPathSizeTests {
    // (largest datagram that passes: an IPv4 MTU less 28 bytes of IPv4 and UDP headers)
    @Test(arguments: [1122, 972, 548])
    func aNodeBehindABlackHoleStoresItsEntryAndFindsOthers(limit: Int) throws {
        let network = SimulationTests.network(20, seed: 19)
        let small = network.address(network.order.count)
        network.maximumDatagram[small] = limit
        network.addNode(bootstrap: [network.order[0]])
        network.run(for: 10_000)
        let identities = Array(Announced.identities.prefix(2))
        // Its own entry, stored on the closest nodes through the black hole.
        let started = network.now, before = network.blackHoled
        let own = SimulationTests.announce([identities[0]], in: network, from: [small])
        let announced = network.now - started, lostAnnouncing = network.blackHoled - before
        // Another node's entry, found through it (the VALUE answers come in smaller pieces).
        let other = SimulationTests.announce([identities[1]], in: network, from: [network.order[1]])
        let lookupStart = network.now
        let lookup = network.start(small) { $0.findValue(NodeID.key(of: other[0].identity), now: network.now) }
        let found = network.runUntilFinished(small, lookup)
        #expect(found?.entry?.publicKey == other[0].publicKey, "MTU \(limit + 28): \(other[0].identity) not found")
        // And the others find its entry.
        let back = network.start(network.order[2]) { $0.findValue(NodeID.key(of: own[0].identity), now: network.now) }
        #expect(network.runUntilFinished(network.order[2], back)?.entry?.publicKey == own[0].publicKey)
        #expect(network.crossedSmallLinks.allSatisfy { $0 <= limit })
        // The holders it asked with an answer limit remember it: a second announcement loses less.
        let again = network.now, lostBefore = network.blackHoled
        _ = SimulationTests.announce([identities[0]], in: network, from: [small])
        print("MTU \(limit + 28): announce \(announced) ms of virtual time (\(lostAnnouncing) datagrams lost), "
              + "lookup \(network.now - lookupStart) ms; again \(network.now - again) ms, \(network.blackHoled - lostBefore) lost")
    }

    @Test func theAnswerLimitTravelsInReservedWordZero() throws {
        let message = DHTMessage(transaction: 0x0102_0304_0506_0708, salt: [UInt8](repeating: 1, count: 16),
                                 body: .findValue(key: NodeID(bytes: [UInt8](repeating: 2, count: 20))!, token: 0))
        for limit in [900, 500] {
            let datagrams = DHTDatagram.encode(message, datagramSize: limit, answerLimit: limit)
            #expect(datagrams.count == 1)
            let piece = try DHTDatagram.parse(datagrams[0])
            #expect(piece.answerLimit == limit)
        }
        // 1,200 (the default) is written as 0, as in version 1.0; other values are refused.
        let plain = DHTDatagram.encode(message, answerLimit: 1200)
        #expect(plain == DHTDatagram.encode(message))
        #expect(try DHTDatagram.parse(plain[0]).answerLimit == nil)
        for word in [1, 499, 501, 1000, 1200, 0xFFFF_FFFF] as [UInt32] {
            var bytes = plain[0]
            for i in 0..<4 { bytes[20 + i] = UInt8(truncatingIfNeeded: word >> (24 - 8 * UInt32(i))) }
            #expect(throws: DHTError.self) { try DHTDatagram.parse(bytes) }
        }
    }

    @Test func aMessageCutSmallerIsTakenAndStillBoundedBy32Pieces() throws {
        let entry = [UInt8](repeating: 9, count: 5300)
        let message = DHTMessage(transaction: 7, salt: [UInt8](repeating: 1, count: 16), body: .store(token: 3, entry: entry))
        for (size, count) in [(1200, 5), (900, 7), (500, 12)] {
            let datagrams = DHTDatagram.encode(message, datagramSize: size)
            #expect(datagrams.count == count && datagrams.allSatisfy { $0.count <= size })
            var reassembly: Reassembly?
            for datagram in datagrams.reversed() {  // the last (short) piece first: its size is inferred
                let piece = try DHTDatagram.parse(datagram)
                if reassembly == nil {
                    reassembly = try Reassembly(length: piece.length, count: piece.count, index: piece.index, bytes: piece.bytes.count,
                                                maximumLength: DHTMessage.maximumSize)
                }
                _ = try reassembly?.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)
            }
            #expect(try DHTMessage(parsing: try #require(reassembly?.message), transaction: 7) == message)
        }
    }

    /// A reader behind a link of 548-byte packets (500-byte datagrams) fetches an inbox of six
    /// 4.6 KB messages. A holder cut its MAIL_ITEMS page of up to 24,000 bytes into 500-byte
    /// datagrams: 43 pieces, above the 32 a message may have, so the reader refused every piece and
    /// no holder's page ever reached it (on loopback, a holder that had once been asked with an
    /// answer limit of 500 did the same). A page now holds what fits 32 pieces of the requester's
    /// size.
    @Test func anInboxPageFitsIn32PiecesOfTheRequestersDatagrams() throws {
        #expect(DHTMessage.mailItemsBudget(datagramSize: 500) >= DHTMessage.maximumMailItem)
        #expect(DHTMessage.mailItemsBudget(datagramSize: 1200) == DHTMessage.mailItemsBudget)
        let network = SimulationTests.network(20, seed: 23)
        let small = network.address(network.order.count)
        network.maximumDatagram[small] = 548
        network.addNode(bootstrap: [network.order[0]])
        network.run(for: 10_000)
        let owner = try Identity(generating: try IdentityName("ulla"))
        let sender = try Identity(generating: try IdentityName("vera"))
        let record = try InboxKeyRecord(identity: owner, keys: try InboxKeys(identity: owner), created: network.now / 1000)
        let key = try #require(NodeID(bytes: record.inboxKey))
        let messages = try (0..<6).map { index in
            try OfflineMessage(sealing: Array("message \(index)".utf8), from: sender, to: record, now: network.now / 1000).bytes
        }
        #expect(messages.allSatisfy { $0.count > 4000 })

        /// Each holder's answers to `requests` sent from `node` after a lookup of the key (which
        /// brings the holders' tokens), by holder.
        func mail(from node: Endpoint, _ requests: (Contact) -> [MailRequest], operation: UInt64) throws -> [Endpoint: [MailAnswer?]] {
            let lookup = network.start(node) { $0.lookup(key, now: network.now) }
            let holders = try #require(network.runUntilFinished(node, lookup)?.closest)
            var answers: [Endpoint: [MailAnswer?]] = [:]
            for holder in holders {
                for request in requests(holder) {
                    _ = network.start(node) { $0.mail(request, to: holder, operation: operation, now: network.now); return 0 }
                    network.run(for: 8_000)
                    for case .mailAnswered(operation, let from, let answer) in network.events[node] ?? [] where from == holder.endpoint {
                        answers[from, default: []].append(answer)
                    }
                    network.clearEvents()
                }
            }
            return answers
        }
        let stored = try mail(from: network.order[1], { _ in [.put(record.bytes)] + messages.map { .put($0) } }, operation: 1)
        let storing = stored.filter { $0.key != small && $0.value.allSatisfy { $0 == .status(.stored) } }
        #expect(storing.count >= 10, "\(storing.count) holders stored the inbox")

        // The reader pages each holder that stored it to the end.
        let before = network.blackHoled
        var pages: [Endpoint: [MailAnswer?]] = [:]
        for holder in storing.keys.sorted(by: { $0.wire.lexicographicallyPrecedes($1.wire) }) {  // the same order every run
            var skip = 0
            for _ in 0..<8 {
                let answers = try mail(from: small, { $0.endpoint == holder ? [.fetch(key: key, skip: skip)] : [] }, operation: 2)
                let answer = answers[holder]?.first ?? nil
                pages[holder, default: []].append(answer)
                guard case .items(let total, let items)? = answer, !items.isEmpty else { break }
                skip += items.count
                if skip >= total { break }
            }
        }
        for (holder, answers) in pages {
            let items = answers.flatMap { answer -> [[UInt8]] in
                if case .items(_, let items)? = answer { return items } else { return [] }
            }
            let whole = items == [record.bytes] + messages
            #expect(whole,
                    "\(holder): \(answers.count) pages, \(items.count) items; unanswered: \(answers.filter { $0 == nil }.count)")
        }
        #expect(network.crossedSmallLinks.allSatisfy { $0 <= 548 })
        print("inbox over 500-byte datagrams: \(pages.count) holders paged, \(network.blackHoled - before) datagrams black-holed")
    }
}
