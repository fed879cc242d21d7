@testable import DNADHT
import DNACrypto
import Testing

/// Identities and their signed entries, made once (ML-DSA-65 key generation and signing).
enum Announced {
    static let identities: [Identity] = (0..<100).compactMap { try? seeded("user\($0)") }

    /// An identity whose key derives from its name: a simulation orders values by their signer's key
    /// and so runs alike in every process only with the same keys (ML-DSA signatures still differ).
    static func seeded(_ name: String) throws -> Identity {
        try Identity(name: try IdentityName(name), seed: Sodium.sha256(Array("simulated \(name)".utf8)))
    }
}

struct LookupStats: CustomStringConvertible {
    var rounds: [Int] = []
    var messages: [Int] = []
    var found = 0
    var total = 0

    mutating func add(_ result: LookupResult?, expected: PeerEntry) {
        total += 1
        guard let result else { return }
        rounds.append(result.rounds)
        messages.append(result.messages)
        if result.entry?.identity == expected.identity && result.entry?.publicKey == expected.publicKey { found += 1 }
    }

    var successRate: Double { total == 0 ? 0 : Double(found) / Double(total) }

    static func percentile(_ values: [Int], _ p: Double) -> Int {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    var description: String {
        "\(found)/\(total) found (\(successRate * 100)%), rounds median \(Self.percentile(rounds, 0.5)) p99 \(Self.percentile(rounds, 0.99)), "
            + "messages median \(Self.percentile(messages, 0.5)) p99 \(Self.percentile(messages, 0.99))"
    }
}

@Suite(.serialized) struct SimulationTests {
    static func configuration() -> DHTConfiguration {
        var configuration = DHTConfiguration()
        configuration.difficulty = 4  // cheap ids for thousands of simulated nodes; the rule is the same
        return configuration
    }

    /// Builds a network of `count` nodes that join one after the other through node 0.
    static func network(_ count: Int, seed: UInt64, configuration: DHTConfiguration = configuration()) -> SimulatedNetwork {
        let network = SimulatedNetwork(seed: seed, configuration: configuration)
        let first = network.addNode(bootstrap: [])
        network.grow(by: count - 1, through: first)
        network.run(for: 10_000)
        return network
    }

    /// Announces `identities` from random nodes; returns the entries.
    /// `strict`: each is stored on at least `holders` nodes, and the honest nodes among the 20 it
    /// finds closest to its key are the nearest honest nodes, but for at most 5. `adversaries`: the
    /// ids of nodes played by a test's adversary (when n of them are among the 20 found, the honest
    /// 20 − n found are compared with the nearest 20 − n honest ones).
    static func announce(_ identities: [Identity], in network: SimulatedNetwork, from nodes: [Endpoint]? = nil,
                         strict: Bool = true, holders: Int = 15, adversaries: Set<NodeID> = []) -> [PeerEntry] {
        let nodes = nodes ?? network.order
        var entries: [PeerEntry] = []
        var started: [(Endpoint, LookupID)] = []
        for identity in identities {
            let endpoint = nodes[Int(network.random.next() % UInt64(nodes.count))]
            guard let node = network.node(endpoint) else { continue }
            var entry = PeerEntry(identity: identity.name, nodeID: node.id.bytes, ipAddress: endpoint.host,
                                  port: endpoint.port, lastSeen: network.now / 1000)
            guard (try? entry.sign(with: identity, now: network.now / 1000)) != nil else { continue }
            entries.append(entry)
            started.append((endpoint, network.start(endpoint) { $0.announce(entry, now: network.now) }))
        }
        for ((endpoint, lookup), entry) in zip(started, entries) {
            let result = network.runUntilFinished(endpoint, lookup)
            #expect((result?.stored ?? 0) >= (strict ? holders : 1), "announce stored on \(result?.stored ?? 0) nodes")
            // The nodes it found are the true closest of the live network (computed here from outside).
            let key = NodeID.key(of: entry.identity)
            let live = network.order.filter { !network.dead.contains($0) }.compactMap { network.node($0)?.id }
            let found = (result?.closest ?? []).prefix(20)
            let honest = 20 - found.filter { adversaries.contains($0.id) }.count
            let closest = Set(live.sorted { ($0 ^ key) < ($1 ^ key) }.prefix(honest))
            let overlap = found.filter { closest.contains($0.id) }.count
            if strict { #expect(overlap >= honest - 5, "\(entry.identity): \(overlap) of the \(honest) closest honest nodes found") }
        }
        return entries
    }

    /// Every live node looks up a random announced entry; all lookups run at once.
    static func lookups(_ entries: [PeerEntry], in network: SimulatedNetwork, count: Int, from nodes: [Endpoint]? = nil) -> LookupStats {
        var started: [(Endpoint, LookupID, PeerEntry)] = []
        let alive = (nodes ?? network.order).filter { !network.dead.contains($0) }
        for i in 0..<count {
            let endpoint = alive[i % alive.count]
            let entry = entries[Int(network.random.next() % UInt64(entries.count))]
            started.append((endpoint, network.start(endpoint) { $0.findValue(NodeID.key(of: entry.identity), now: network.now) }, entry))
            if i % 50 == 0 { network.run(for: 20) }
        }
        var stats = LookupStats()
        var missed: [String: Int] = [:]
        for (endpoint, lookup, entry) in started {
            let result = network.runUntilFinished(endpoint, lookup)
            let before = stats.found
            stats.add(result, expected: entry)
            if stats.found == before { missed["\(entry.identity)", default: 0] += 1 }
        }
        if !missed.isEmpty {
            let holders = missed.keys.map { name -> String in
                guard let identity = try? IdentityName(name) else { return name }
                let key = NodeID.key(of: identity)
                let live = network.order.filter { !network.dead.contains($0) }
                let held = Set(live.filter { network.node($0)?.localEntry(key, now: network.now) != nil })
                let closest = live.sorted { ((network.node($0)?.id ?? key) ^ key) < ((network.node($1)?.id ?? key) ^ key) }.prefix(20)
                let overlap = closest.filter { held.contains($0) }.count
                return "\(name): missed \(missed[name] ?? 0), held by \(held.count) live nodes, \(overlap) of them among the 20 closest"
            }
            print("DHT simulation misses: \(holders.sorted())")
        }
        network.clearEvents()
        return stats
    }

    @Test func twoHundredNodesFindEveryEntry() throws {
        let network = Self.network(200, seed: 7)
        let entries = Self.announce(Array(Announced.identities.prefix(20)), in: network)
        let stats = Self.lookups(entries, in: network, count: 200)
        print("DHT simulation, 200 nodes: \(stats)")
        #expect(stats.successRate == 1, "\(stats)")
    }

    @Test func twoThousandNodesThenLossAndChurn() throws {
        let network = Self.network(2000, seed: 1)
        let tableSizes = network.order.compactMap { network.node($0)?.routingTableSize }
        let sortedSizes = tableSizes.sorted()
        print("DHT simulation, 2,000 nodes: routing table sizes min \(sortedSizes.first ?? 0), median \(sortedSizes[sortedSizes.count / 2]), max \(sortedSizes.last ?? 0)")
        #expect(sortedSizes[sortedSizes.count / 100] >= 20, "1% of the tables hold fewer than \(sortedSizes[sortedSizes.count / 100])")
        let entries = Self.announce(Announced.identities, in: network)
        #expect(entries.count == 100)

        let clean = Self.lookups(entries, in: network, count: 2000)
        print("DHT simulation, 2,000 nodes, no loss: \(clean)")
        #expect(clean.successRate >= 0.995, "\(clean)")

        // 10% loss on every datagram, and 30% of the nodes killed after the announcements.
        network.loss = 0.10
        for endpoint in network.order.dropFirst() where network.random.next() % 10 < 3 { network.dead.insert(endpoint) }
        #expect(network.dead.count > 500)
        let churned = Self.lookups(entries, in: network, count: 2000)
        print("DHT simulation, 2,000 nodes, 10% loss, \(network.dead.count) killed: \(churned)")
        #expect(churned.successRate >= 0.999, "\(churned)")  // issue 15's bar (100% before and after the soft timeouts)
    }
}

@Suite(.serialized) struct AdversarySimulationTests {
    /// 300 Sybils aimed at one key: each answers every lookup with 20 invented contacts right next
    /// to the key (other Sybils' addresses) and leaves STOREs unanswered (an entry takes 5 datagrams;
    /// a Sybil answers only single ones), so it holds nothing. Ids cannot be chosen
    /// (they must come from a salt with work, §5.3), so the invented ids do not match what those
    /// addresses prove when asked: the lookup drops them and finds the honest holders.
    @Test func sybilsAimedAtAKeyDoNotHideItsEntry() throws {
        let network = SimulationTests.network(500, seed: 11)
        let victim = Announced.identities[5]
        let key = NodeID.key(of: victim.name)
        var random = SimRandom(seed: 99)
        let sybils = (0..<300).map { Endpoint(host: "172.16.\($0 / 250).\($0 % 250 + 1)", port: 6666)! }
        var sybilIDs = Set<NodeID>()
        for sybil in sybils {
            let credential = NodeCredential.generate(difficulty: 4) { (0..<16).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            sybilIDs.insert(credential.id)
            network.adversaries[sybil] = { from, datagram in
                guard let piece = try? DHTDatagram.parse(datagram), piece.count == 1,
                      let message = try? DHTMessage(parsing: Array(piece.bytes), transaction: piece.transaction) else { return [] }
                var fake: [Contact] = []
                for i in 0..<20 {
                    var bytes = key.bytes
                    bytes[19] ^= UInt8(i + 1)
                    bytes[18] ^= UInt8(truncatingIfNeeded: random.next())
                    fake.append(Contact(id: NodeID(bytes: bytes)!, endpoint: sybils[Int(random.next() % 300)]))
                }
                let body: DHTMessage.Body
                switch message.body {
                case .ping: body = .pong(observed: from, token: 1)
                case .findNode, .findValue: body = .nodes(observed: from, token: 1, held: nil, contacts: fake)
                case .store: body = .stored(.stored)
                default: return []
                }
                return DHTDatagram.encode(DHTMessage(transaction: message.transaction, salt: credential.salt, body: body))
                    .map { (from, $0) }
            }
            // Each Sybil introduces itself to a few honest nodes, which then list it in their answers.
            for _ in 0..<3 {
                let honest = network.order[Int(random.next() % 500)]
                network.node(honest)?.receive(DHTDatagram.encode(DHTMessage(transaction: random.next(), salt: credential.salt,
                                                                             body: .ping))[0], from: sybil, now: network.now)
                network.flush(honest)
            }
        }
        network.run(for: 5_000)
        // Sybils whose own ids are among the key's closest answer the lookup, and are among the
        // closest it finds, but drop the STORE: the announce gives their places to the next nodes.
        let entries = SimulationTests.announce([victim], in: network, adversaries: sybilIDs)
        let stats = SimulationTests.lookups(entries, in: network, count: 500)
        print("DHT simulation, 500 honest nodes and 300 Sybils aimed at one key: \(stats)")
        #expect(stats.successRate >= 0.99, "\(stats)")
    }

    /// The 5 nodes nearest a key answer lookups but lose every request that takes more than one
    /// datagram (a STORE takes 5): a path that drops fragments, or a node that keeps nothing. The
    /// announce gives each of their places to the next nearest node that answered, so the entry
    /// keeps k holders (§5.2); without the rule 15. When no node that answered is left, the lookup
    /// asks for the next subtree out from the key: asking the farthest holder for the nodes nearest
    /// itself instead left 4 places empty in 1 run of 30 (the 21 nodes the lookup knew were all the
    /// farthest holder's nearest; which run depended on the process's hash seed until the node
    /// handled its due timers in a fixed order).
    @Test func nodesNearestTheKeyThatDropStoresCostTheEntryNoHolder() throws {
        let network = SimulationTests.network(300, seed: 31)
        let owner = Announced.identities[7]
        let key = NodeID.key(of: owner.name)
        let nearest = network.order.compactMap { endpoint in network.node(endpoint).map { (endpoint, $0.id ^ key) } }
            .sorted { $0.1 < $1.1 }.prefix(5).map(\.0)
        for endpoint in nearest {
            network.adversaries[endpoint] = { from, datagram in
                guard let piece = try? DHTDatagram.parse(datagram), piece.count == 1, let node = network.node(endpoint) else { return [] }
                node.receive(datagram, from: from, now: network.now)
                network.flush(endpoint)
                return []
            }
        }
        let others = network.order.filter { !nearest.contains($0) }
        _ = SimulationTests.announce([owner], in: network, from: others, holders: 20)
        #expect(nearest.allSatisfy { network.node($0)?.storedCount == 0 }, "the nearest 5 hold no entry")
    }

    /// The network splits into two halves; entries announced in one half during the split are not
    /// found from the other. After the split heals, within two refresh periods, they are.
    @Test func aPartitionHeals() throws {
        let network = SimulationTests.network(300, seed: 21)
        let half = Dictionary(uniqueKeysWithValues: network.order.enumerated().map { ($0.element, $0.offset % 2) })
        network.group = { half[$0] ?? 0 }
        // While split, nodes keep looking up, so they notice that the other half is gone.
        let warmup = SimulationTests.announce(Array(Announced.identities.prefix(5)), in: network, strict: false)
        for _ in 0..<2 {
            _ = SimulationTests.lookups(warmup, in: network, count: 300)
            network.run(for: 150_000)
        }
        let east = network.order.filter { half[$0] == 0 }, west = network.order.filter { half[$0] == 1 }
        let entries = SimulationTests.announce(Array(Announced.identities[20..<40]), in: network, from: east, strict: false)
        let split = SimulationTests.lookups(entries, in: network, count: 150, from: west)
        print("DHT simulation, 300 nodes split in two, west looks up what east announced: \(split)")
        #expect(split.successRate < 0.5)
        network.group = nil
        network.run(for: 2 * 300_000)
        let healed = SimulationTests.lookups(entries, in: network, count: 300, from: west)
        print("DHT simulation, 300 nodes, two refresh periods after the split healed: \(healed)")
        #expect(healed.successRate >= 0.99, "\(healed)")
    }
}

/// Issue 19 §1: announcing through a lossy access link. A signed entry is 5.3 KB, five datagrams:
/// with 10% loss each, one STORE's pieces and its answer all arrive in only 53% of tries, so a
/// holder is reached by retries that fill the gaps of the first (reassembly keeps pieces 5 s, §5.1).
@Suite(.serialized) struct LossyAnnounceTests {
    /// 10% loss on every datagram of a 300-node network (both directions of every link, harsher
    /// than one lossy access router): 200 announces from random nodes; 99% of them stored on at
    /// least k/2 holders within 5 s of their start (virtual time).
    @Test func announcesAtTenPercentLossReachHalfTheHoldersWithinFiveSeconds() throws {
        let network = SimulationTests.network(300, seed: 31)
        network.loss = 0.10
        let identities = (0..<200).compactMap { try? Announced.seeded("lossy\($0)") }
        #expect(identities.count == 200)
        let half = network.configuration.k / 2
        var durations: [Int] = [], failures: [String] = []
        // Twenty at a time, as nodes start at different moments.
        for batch in stride(from: 0, to: identities.count, by: 20) {
            var started: [(Endpoint, LookupID, UInt64, IdentityName)] = []
            for identity in identities[batch..<min(batch + 20, identities.count)] {
                let endpoint = network.order[Int(network.random.next() % UInt64(network.order.count))]
                guard let node = network.node(endpoint) else { continue }
                var entry = PeerEntry(identity: identity.name, nodeID: node.id.bytes, ipAddress: endpoint.host,
                                      port: endpoint.port, lastSeen: network.now / 1000)
                try entry.sign(with: identity, now: network.now / 1000)
                let begun = network.now
                started.append((endpoint, network.start(endpoint) { $0.announce(entry, now: network.now) }, begun, identity.name))
                network.run(for: 10)
            }
            for (endpoint, lookup, begun, name) in started {
                let result = network.runUntilFinished(endpoint, lookup)
                let finished = network.finishedAt[endpoint]?[lookup] ?? UInt64.max
                let stored = result?.stored ?? 0
                if stored >= half && finished - begun <= 5_000 {
                    durations.append(Int(finished - begun))
                } else {
                    failures.append("\(name): stored on \(stored) after \(finished == UInt64.max ? "never" : "\(finished - begun) ms")")
                }
            }
            network.clearEvents()
        }
        let p50 = LookupStats.percentile(durations, 0.5), p99 = LookupStats.percentile(durations, 0.99)
        print("DHT simulation, 300 nodes, 10% loss: \(durations.count)/200 announces on ≥ \(half) holders within 5 s, p50 \(p50) ms, p99 \(p99) ms; \(failures)")
        #expect(durations.count >= 198, "only \(durations.count) of 200 announces reached \(half) holders within 5 s: \(failures)")
    }
}
