@testable import DNADHT
import DNACrypto
import Testing

/// Holders republish inbox items (docs/PROTOCOL.md §8.3): what no MAIL_PUT brought for the interval
/// goes again to the nodes then closest to the inbox key, so a message reaches nodes that joined
/// after it was stored and outlives the holders that stored it first.
@Suite(.serialized) struct MailRepublishTests {
    static let alice = Announced.identities[0]
    static let bob = Announced.identities[1]

    @Test func aHolderRepublishesWhatNoPutRefreshedAndForgetsNothingTheOwnerDeleted() throws {
        var boxes = Mailboxes(perSender: 8, perInbox: 8, maximumBytes: 1 << 20)
        let start = MailboxTests.now
        let record = try MailboxTests.record(Self.bob)
        let key = try #require(NodeID(bytes: record.inboxKey))
        let first = try OfflineMessage(sealing: [1], from: Self.alice, to: record, now: start / 1000).bytes
        let second = try OfflineMessage(sealing: [2], from: Self.alice, to: record, now: start / 1000).bytes
        #expect(boxes.put(record.bytes, now: start) == .stored)
        #expect(boxes.put(first, now: start) == .stored)
        #expect(boxes.put(second, now: start + 30_000) == .stored)
        #expect(boxes.dueForRepublishing(now: start + 59_000, interval: 60_000, limit: 10).isEmpty)
        // Another holder's copy of the first message came meanwhile: only the record is due at 60 s.
        #expect(boxes.put(first, now: start + 50_000) == .duplicate)
        let due = boxes.dueForRepublishing(now: start + 60_000, interval: 60_000, limit: 10)
        #expect(due.count == 1 && due.first?.key == key && due.first?.items == [record.bytes])
        #expect(boxes.dueForRepublishing(now: start + 60_000, interval: 60_000, limit: 10).isEmpty)  // stored now
        let later = boxes.dueForRepublishing(now: start + 110_000, interval: 60_000, limit: 1)
        #expect(later.first?.items == [first])  // the limit: the second waits for the next round
        #expect(boxes.dueForRepublishing(now: start + 110_000, interval: 60_000, limit: 1).first?.items == [second])
        // The owner deleted the first: a copy that comes back (a holder that missed the deletion
        // republishing it) is not stored again, until the longest lifetime has passed.
        let id = try OfflineMessage(parsing: first, now: start / 1000).id
        #expect(boxes.delete(try InboxDeletion(owner: Self.bob, ids: [id], now: start / 1000).bytes, now: start + 120_000) == 1)
        #expect(boxes.put(first, now: start + 130_000) == .duplicate)
        #expect(boxes.items(of: key, skip: 0, budget: 100_000, now: start + 130_000).total == 2)
        boxes.sweep(now: start + (Offline.maximumLifetime + Offline.skew + 200) * 1000)
        #expect(boxes.inboxes.isEmpty && boxes.bytes == 0)
    }

    /// Anyone may fetch an inbox's items and put them again; only a fellow holder's duplicate (a
    /// contact among the k closest to the inbox key) counts as its republishing (§8.3, §10.4), else
    /// one node repeating them would keep every holder from ever republishing the inbox.
    @Test func onlyAFellowHoldersDuplicatePostponesRepublishing() throws {
        var boxes = Mailboxes(perSender: 8, perInbox: 8, maximumBytes: 1 << 20)
        let start = MailboxTests.now
        let record = try MailboxTests.record(Self.bob)
        let message = try OfflineMessage(sealing: [1], from: Self.alice, to: record, now: start / 1000).bytes
        #expect(boxes.put(record.bytes, now: start) == .stored)
        #expect(boxes.put(message, now: start) == .stored)
        let checkedRecord = try #require(Mailboxes.validate(record.bytes, unix: start))
        let checkedMessage = try #require(Mailboxes.validate(message, unix: start))
        #expect(boxes.store(checkedRecord, wire: record.bytes, postponesRepublish: false, now: start + 50_000) == .duplicate)
        #expect(boxes.store(checkedMessage, wire: message, postponesRepublish: false, now: start + 50_000) == .duplicate)
        #expect(boxes.dueForRepublishing(now: start + 60_000, interval: 60_000, limit: 10).first?.items == [record.bytes, message])
        #expect(boxes.store(checkedMessage, wire: message, postponesRepublish: true, now: start + 100_000) == .duplicate)
        #expect(boxes.dueForRepublishing(now: start + 120_000, interval: 60_000, limit: 10).first?.items == [record.bytes])
    }

    @Test func inboxItemsReachNodesThatJoinLaterAndOutliveTheHoldersThatStoredThem() throws {
        var configuration = SimulationTests.configuration()
        configuration.k = 5
        configuration.refreshInterval = 60_000
        configuration.mailRepublishInterval = 120_000
        let network = SimulationTests.network(30, seed: 21, configuration: configuration)
        let record = try InboxKeyRecord(identity: Self.bob, keys: try InboxKeys(identity: Self.bob), created: network.now / 1000)
        let key = try #require(NodeID(bytes: record.inboxKey))
        let message = try OfflineMessage(sealing: Array("hello".utf8), from: Self.alice, to: record, now: network.now / 1000).bytes

        /// The `count` live nodes closest to the inbox key, as an outside observer sees them.
        func closest(_ count: Int) -> [Endpoint] {
            let live = network.order.filter { !network.dead.contains($0) }
            let distances = live.compactMap { endpoint in network.node(endpoint).map { (endpoint, $0.id ^ key) } }
            return distances.sorted { $0.1 < $1.1 }.prefix(count).map(\.0)
        }
        func held(_ endpoint: Endpoint) -> Int {
            guard case .items(let total, _)? = network.node(endpoint)?.localMail(.fetch(key: key, skip: 0), key: key, closest: [],
                                                                                 now: network.now) else { return -1 }
            return total
        }
        let holders = closest(5)
        for endpoint in holders {
            let node = try #require(network.node(endpoint))
            #expect(node.localMail(.put(record.bytes), key: key, closest: [], now: network.now) == .status(.stored))
            #expect(node.localMail(.put(message), key: key, closest: [], now: network.now) == .status(.stored))
        }
        // 60 nodes join; some of them are now among the 5 closest, and hold nothing yet.
        network.grow(by: 60, through: network.order[0])
        let newcomers = closest(5).filter { !holders.contains($0) }
        #expect(!newcomers.isEmpty)
        #expect(newcomers.allSatisfy { held($0) == 0 })
        // Within the interval plus two refreshes the holders stored both items on them; the first
        // holders then leave, and the inbox is still whole on the 5 closest live nodes.
        network.run(for: 120_000 + 2 * 60_000)
        #expect(newcomers.allSatisfy { held($0) == 2 }, "\(newcomers.map(held))")
        let republished = network.order.compactMap { network.node($0)?.statistics.mailRepublished }.reduce(0, +)
        #expect(republished >= newcomers.count * 2)
        // The first holders leave: the newcomers still hold the inbox, and at their next
        // republishing it reaches the nodes that are now among the 5 closest.
        for endpoint in holders { network.dead.insert(endpoint) }
        network.run(for: 10_000)
        #expect(newcomers.allSatisfy { held($0) == 2 })
        network.run(for: 120_000 + 2 * 60_000)
        #expect(closest(5).allSatisfy { held($0) == 2 }, "\(closest(5).map(held))")
    }
}
