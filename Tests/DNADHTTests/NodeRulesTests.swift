@testable import DNADHT
import DNACrypto
import DNAWire
import Testing

/// The storing rules, anti-reflection, and what a node does with bad input.
@Suite struct NodeRulesTests {
    static let alice = Announced.identities[0]
    static let bob = Announced.identities[1]

    /// A small network, settled.
    static func network(_ count: Int = 30) -> SimulatedNetwork {
        SimulationTests.network(count, seed: 3)
    }

    static func entry(_ identity: Identity, key: Identity? = nil, lastSeen: UInt64, address: String = "192.0.2.1") -> PeerEntry {
        var entry = PeerEntry(identity: identity.name, nodeID: [UInt8](repeating: 7, count: 20), ipAddress: address,
                              port: 4567, lastSeen: lastSeen)
        entry.publicKey = (key ?? identity).publicKey
        entry.signature = (try? (key ?? identity).sign(entry.signedBytes)) ?? []
        return entry
    }

    /// A raw STORE from a client endpoint to `target`, with a token obtained by a PING first.
    static func store(_ wire: [UInt8], at target: Endpoint, in network: SimulatedNetwork, from client: Endpoint) -> StoreStatus? {
        let salt = NodeCredential.generate(difficulty: 4).salt
        guard let node = network.node(target) else { return nil }
        node.receive(DHTDatagram.encode(DHTMessage(transaction: 1, salt: salt, body: .ping))[0], from: client, now: network.now)
        let pong = node.takeDatagrams().compactMap { (to, datagram) -> DHTMessage? in
            guard to == client, let piece = try? DHTDatagram.parse(datagram) else { return nil }
            return try? DHTMessage(parsing: Array(piece.bytes), transaction: piece.transaction)
        }.first
        guard case .pong(_, let token)? = pong?.body else { return nil }
        for datagram in DHTDatagram.encode(DHTMessage(transaction: 2, salt: salt, body: .store(token: token, entry: wire))) {
            node.receive(datagram, from: client, now: network.now)
        }
        for (to, datagram) in node.takeDatagrams() where to == client {
            guard let piece = try? DHTDatagram.parse(datagram),
                  let message = try? DHTMessage(parsing: Array(piece.bytes), transaction: piece.transaction)
                  else { continue }
            if case .storedOutOfTime = message.body { return .outOfTime }
            guard case .stored(let status) = message.body else { continue }
            return status
        }
        return nil
    }

    @Test func storingNodesEnforceTheEntryRules() throws {
        let network = Self.network()
        let target = network.order[5]
        let client = Endpoint(host: "198.51.100.9", port: 999)!
        let now = network.now / 1000
        let node = try #require(network.node(target))
        let good = Self.entry(Self.alice, lastSeen: now)
        #expect(Self.store(good.wireBytes, at: target, in: network, from: client) == .stored)
        #expect(node.localEntry(NodeID.key(of: Self.alice.name), now: network.now)?.lastSeen == now)
        // Older never replaces newer; a newer one does.
        #expect(Self.store(Self.entry(Self.alice, lastSeen: now - 10).wireBytes, at: target, in: network, from: client) == .older)
        #expect(Self.store(Self.entry(Self.alice, lastSeen: now + 5).wireBytes, at: target, in: network, from: client) == .stored)
        // Another key for a taken identity (first come, first served).
        // (validly signed by bob's key, naming alice)
        let impostor = Self.entry(Self.alice, key: Self.bob, lastSeen: now + 6)
        #expect(Self.store(impostor.wireBytes, at: target, in: network, from: client) == .taken)
        // A bad signature, last_seen in the future, malformed bytes.
        var forged = Self.entry(Self.bob, lastSeen: now)
        forged.signature[100] ^= 1
        #expect(Self.store(forged.wireBytes, at: target, in: network, from: client) == .invalid)
        #expect(Self.store(Self.entry(Self.bob, lastSeen: now + 3600).wireBytes, at: target, in: network, from: client) == .outOfTime)
        #expect(Self.store(Array(good.wireBytes.dropLast()), at: target, in: network, from: client) == .invalid)
        #expect(Self.store(good.wireBytes + [0], at: target, in: network, from: client) == .invalid)
        #expect(node.statistics.refusedEntries >= 5)
        #expect(node.localEntry(NodeID.key(of: Self.alice.name), now: network.now)?.publicKey == Self.alice.publicKey)
        #expect(node.localEntry(NodeID.key(of: Self.bob.name), now: network.now) == nil)
    }

    @Test func storeWithoutAValidTokenIsRefused() throws {
        let network = Self.network()
        let node = try #require(network.node(network.order[3]))
        let salt = NodeCredential.generate(difficulty: 4).salt
        let entry = Self.entry(Self.alice, lastSeen: network.now / 1000)
        for datagram in DHTDatagram.encode(DHTMessage(transaction: 9, salt: salt, body: .store(token: 12345, entry: entry.wireBytes))) {
            node.receive(datagram, from: Endpoint(host: "198.51.100.1", port: 1)!, now: network.now)
        }
        let client = Endpoint(host: "198.51.100.1", port: 1)!
        let replies = node.takeDatagrams().filter { $0.0 == client }  // (a full bucket may also ping its oldest contact)
        let status = replies.compactMap { try? DHTDatagram.parse($0.1) }
            .compactMap { try? DHTMessage(parsing: Array($0.bytes), transaction: $0.transaction) }.first?.body
        #expect(status == .stored(.badToken))
        #expect(node.storedCount == 0)
    }

    @Test func noAnswerIsLargerThanThreeTimesAnUnpaddedRequest() throws {
        let network = Self.network()
        let node = try #require(network.node(network.order[4]))
        let salt = NodeCredential.generate(difficulty: 4).salt
        // A FIND_NODE cut to its fields (no padding), from an address that never proved anything.
        var request = DHTMessage(transaction: 5, salt: salt, body: .findNode(target: node.id, token: 0)).bytes
        request = Array(request.prefix(2 + 16 + 20 + 8))
        let datagram = try FrameEncoder.encode(type: .dht, sequence: 0,
                                               payload: [0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, UInt8(request.count)] + request)
        let victim = Endpoint(host: "203.0.113.5", port: 53)!
        node.receive(datagram, from: victim, now: network.now)
        let replies = node.takeDatagrams().filter { $0.0 == victim }
        #expect(replies.count == 1)
        #expect(replies.allSatisfy { $0.1.count <= 3 * datagram.count })
        // The padded request gets all the contacts, still within 3x.
        let padded = DHTDatagram.encode(DHTMessage(transaction: 6, salt: salt, body: .findNode(target: node.id, token: 0)))[0]
        node.receive(padded, from: victim, now: network.now)
        let full = node.takeDatagrams().filter { $0.0 == victim }
        #expect(full.count == 1 && full[0].1.count <= 3 * padded.count)
        let message = try DHTMessage(parsing: Array(try DHTDatagram.parse(full[0].1).bytes), transaction: 6)
        guard case .nodes(_, _, _, let contacts) = message.body else { Issue.record("not nodes"); return }
        #expect(contacts.count == 20)
    }

    @Test func garbageAndForeignResponsesAreCountedAndDropped() throws {
        let network = Self.network()
        let node = try #require(network.node(network.order[2]))
        let before = node.statistics
        var random = SimRandom(seed: 5)
        let source = Endpoint(host: "198.51.100.77", port: 7)!
        for _ in 0..<500 {
            let noise = (0..<Int(random.next() % 1300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            node.receive(noise, from: source, now: network.now)
            // Valid frames carrying garbage DHT messages.
            let framed = try FrameEncoder.encode(type: .dht, sequence: 0, payload: [0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, UInt8(noise.count % 200)]
                                                 + noise.prefix(noise.count % 200))
            node.receive(framed, from: source, now: network.now)
        }
        // A response nobody asked for, and a bad credential.
        let salt = NodeCredential.generate(difficulty: 4).salt
        node.receive(DHTDatagram.encode(DHTMessage(transaction: 77, salt: salt, body: .pong(observed: source, token: 1)))[0],
                     from: source, now: network.now)
        let weak = (0..<1000).lazy.map { _ in (0..<16).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            .first { NodeCredential.work($0) < 4 } ?? []
        node.receive(DHTDatagram.encode(DHTMessage(transaction: 78, salt: weak, body: .ping))[0], from: source, now: network.now)
        #expect(node.statistics.dropped - before.dropped >= 1000)
        #expect(node.statistics.unexpectedResponses == before.unexpectedResponses + 1)
        #expect(node.statistics.requestsAnswered == before.requestsAnswered)  // nothing was answered
        // And it keeps serving.
        node.receive(DHTDatagram.encode(DHTMessage(transaction: 79, salt: salt, body: .ping))[0], from: source, now: network.now)
        #expect(node.takeDatagrams().count == 1)
    }

    @Test func aFloodFromOneSourceIsRateLimited() throws {
        let network = Self.network()
        let node = try #require(network.node(network.order[6]))
        let salt = NodeCredential.generate(difficulty: 4).salt
        let source = Endpoint(host: "198.51.100.3", port: 3)!
        for transaction in 0..<1000 {
            node.receive(DHTDatagram.encode(DHTMessage(transaction: UInt64(transaction), salt: salt, body: .ping))[0],
                         from: source, now: network.now)
        }
        #expect(node.takeDatagrams().count <= 210)  // a burst of twice the rate, then the rate
        #expect(node.statistics.rateLimited >= 790)
    }
}
