@testable import DNADHT
import DNACrypto
import Testing

/// Identities and their signed entries, made once (ML-DSA-65 key generation and signing).
enum Announced {
    static let identities: [Identity] = (0..<100).compactMap { try? Identity(generating: try IdentityName("user\($0)")) }
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
    static func network(_ count: Int, seed: UInt64) -> SimulatedNetwork {
        let network = SimulatedNetwork(seed: seed, configuration: configuration())
        let first = network.addNode(bootstrap: [])
        for _ in 1..<count {
            network.addNode(bootstrap: [first])
            network.run(for: 100)
        }
        network.run(for: 10_000)
        return network
    }

    /// Announces `identities` from random nodes; returns the entries.
    static func announce(_ identities: [Identity], in network: SimulatedNetwork) -> [PeerEntry] {
        var entries: [PeerEntry] = []
        var started: [(Endpoint, LookupID)] = []
        for identity in identities {
            let endpoint = network.order[Int(network.random.next() % UInt64(network.order.count))]
            guard let node = network.node(endpoint) else { continue }
            var entry = PeerEntry(identity: identity.name, nodeID: node.id.bytes, ipAddress: endpoint.host,
                                  port: endpoint.port, lastSeen: network.now / 1000)
            guard (try? entry.sign(with: identity, now: network.now / 1000)) != nil else { continue }
            entries.append(entry)
            started.append((endpoint, network.start(endpoint) { $0.announce(entry, now: network.now) }))
        }
        for (endpoint, lookup) in started {
            let result = network.runUntilFinished(endpoint, lookup)
            #expect((result?.stored ?? 0) >= 15, "announce stored on \(result?.stored ?? 0) nodes")
        }
        return entries
    }

    /// Every live node looks up a random announced entry; all lookups run at once.
    static func lookups(_ entries: [PeerEntry], in network: SimulatedNetwork, count: Int) -> LookupStats {
        var started: [(Endpoint, LookupID, PeerEntry)] = []
        let alive = network.order.filter { !network.dead.contains($0) }
        for i in 0..<count {
            let endpoint = alive[i % alive.count]
            let entry = entries[Int(network.random.next() % UInt64(entries.count))]
            started.append((endpoint, network.start(endpoint) { $0.findValue(NodeID.key(of: entry.identity), now: network.now) }, entry))
            if i % 50 == 0 { network.run(for: 20) }
        }
        var stats = LookupStats()
        for (endpoint, lookup, entry) in started {
            stats.add(network.runUntilFinished(endpoint, lookup), expected: entry)
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
        #expect(tableSizes.allSatisfy { $0 >= 20 }, "smallest routing table \(tableSizes.min() ?? 0)")
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
        #expect(churned.successRate >= 0.99, "\(churned)")
    }
}
