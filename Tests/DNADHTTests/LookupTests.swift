@testable import DNADHT
import DNACrypto
import Testing

/// The lookup state machine (Lookup.swift) driven by hand: every node's answer is scripted from a
/// made-up id layout (ids need no work here: the lookup takes what the node verified).
struct LookupTests {
    /// Ids that share `prefix` leading bits with `key` and then differ (bit `prefix` flipped), the
    /// rest of the bits from `fill`.
    static func id(near key: NodeID, sharing prefix: Int, fill: UInt64) -> NodeID {
        var bytes = key.bytes
        for bit in (prefix + 1)..<160 where (fill >> UInt64(bit % 64)) & 1 == 1 { bytes[bit / 8] ^= 0x80 >> UInt8(bit % 8) }
        bytes[prefix / 8] ^= 0x80 >> UInt8(prefix % 8)
        return NodeID(bytes: bytes) ?? key
    }

    /// 21 nodes sharing 12 to 32 bits with `key` (a subtree of their own: each lists the same 20
    /// nearest), and 60 sharing 0 to 6; each at its own address.
    struct SubtreeLayout {
        let key: NodeID
        let ids: [NodeID]
        let endpoints: [NodeID: Endpoint]

        init(key: NodeID, seed: UInt64) {
            self.key = key
            var random = SimRandom(seed: seed)
            var ids = (0..<21).map { LookupTests.id(near: key, sharing: 12 + $0, fill: random.next()) }
            ids += (0..<60).map { LookupTests.id(near: key, sharing: $0 % 7, fill: random.next()) }
            var endpoints: [NodeID: Endpoint] = [:]
            for (index, id) in ids.enumerated() { endpoints[id] = Endpoint(host: "10.9.\(index / 200).\(index % 200 + 1)", port: 4000) }
            self.ids = ids
            self.endpoints = endpoints
        }

        /// The 5 nodes nearest the key.
        var nearestFive: Set<NodeID> { Set(ids.sorted { ($0 ^ key) < ($1 ^ key) }.prefix(5)) }

        /// The 20 nodes nearest `target` (what a node's answer lists), but `excluding`.
        func nearest(_ target: NodeID, excluding: NodeID? = nil) -> [Contact] {
            ids.filter { $0 != excluding }.sorted { ($0 ^ target) < ($1 ^ target) }.prefix(20).compactMap { id in endpoints[id].map { Contact(id: id, endpoint: $0) } }
        }
    }

    /// An announce where the 21 nodes nearest the key form a subtree of their own (they share 12
    /// bits with it; every other node shares at most 6), so that each of them lists the same 20
    /// nearest, and the 5 nearest drop the STORE. The places go to nodes of the next subtree out
    /// (§5.2): 20 holders. Asking the farthest holder for the nodes nearest itself (before) found no
    /// further node: 16.
    @Test func placesLeftByNodesThatDropTheStoreGoToTheNextSubtreeOut() throws {
        let key = NodeID.key(of: try IdentityName("lookup-subtree"))
        let layout = SubtreeLayout(key: key, seed: 5)
        let (ids, dropping) = (layout.ids, layout.nearestFive)
        let node = DHTNode(credential: NodeCredential.generate(difficulty: 0), now: 0, seed: 1)
        let lookup = Lookup(id: 1, target: key, kind: .announce([1, 2, 3]), k: 20)
        // The announcing node knows the 20 nearest already (one of the subtree's neighbours).
        for contact in layout.nearest(key) { lookup.add(contact, round: 1) }

        var queue: [(Contact, DHTMessage.Body, Lookup.Role)] = []
        var storedOn = Set<NodeID>()
        func advance() -> Bool {
            lookup.advance(alpha: 3, signalFanout: 3, tokens: [:]) { queue.append(($0, $1, $2)) }
        }
        var ended = advance()
        var steps = 0
        while !ended, !queue.isEmpty, steps < 10_000 {
            steps += 1
            let (contact, body, role) = queue.removeFirst()
            switch (role, body) {
            case (.query, .findNode(let target, _)):
                let answer = DHTMessage.Body.nodes(observed: contact.endpoint, token: 7, held: nil, contacts: layout.nearest(target, excluding: contact.id))
                lookup.answered(contact.id, with: answer, now: 0, node: node)
            case (.store, _):
                lookup.storesInFlight -= 1
                if dropping.contains(contact.id) {
                    lookup.storeLeftAPlace()
                } else {
                    storedOn.insert(contact.id)
                    lookup.result.stored += 1
                    lookup.holders.append(contact.endpoint)
                }
            default:
                Issue.record("unexpected request \(body) as \(role)")
            }
            ended = advance()
        }
        #expect(ended, "the announce ended (\(steps) steps, \(queue.count) requests left)")
        #expect(storedOn.count == 20, "holders: \(storedOn.count)")
        #expect(storedOn.isDisjoint(with: dropping))
        // The holders are the 20 nearest that keep it: the 16 of the subtree, then the nearest 4 beyond.
        let keeping = ids.filter { !dropping.contains($0) }.sorted { ($0 ^ key) < ($1 ^ key) }.prefix(20)
        #expect(storedOn == Set(keeping), "\(Set(keeping).subtracting(storedOn).count) of the 20 nearest that keep it were not sent it")
    }

    /// A value put's search where 5 of the 21 nodes nearest the key are dead: every node that
    /// answers lists the same 20 nearest (tables keep a dead node until a request to it fails), so
    /// the nodes beyond them are never named. The search widens to the next subtree out (§5.4) and
    /// ends with the 20 nearest nodes alive answered: the value's holders. Before: 16 (reproduced on
    /// loopback: 30 live nodes and 6 dead, puts stored on 17-19).
    @Test func aSearchThatKnowsFewerThanKAliveWidensToTheNextSubtreeOut() throws {
        let key = try #require(NodeID(bytes: [UInt8](repeating: 0x5A, count: 20)))
        let layout = SubtreeLayout(key: key, seed: 9)
        let (ids, dead) = (layout.ids, layout.nearestFive)
        let node = DHTNode(credential: NodeCredential.generate(difficulty: 0), now: 0, seed: 1)
        for kind in [Lookup.Kind.putValue([1], id: [2]), .getValues(ValueQuery()), .listen(1), .announce([3])] {
            let lookup = Lookup(id: 1, target: key, kind: kind, k: 20)
            for contact in layout.nearest(key) { lookup.add(contact, round: 1) }
            var queue: [(Contact, DHTMessage.Body, Lookup.Role)] = []
            func advance() -> Bool { lookup.advance(alpha: 3, signalFanout: 3, tokens: [:]) { queue.append(($0, $1, $2)) } }
            var steps = 0
            var ended = advance()
            while !ended, !queue.isEmpty, steps < 10_000 {
                steps += 1
                let (contact, body, role) = queue.removeFirst()
                switch (role, body) {
                case (.query, .findNode(let target, _)):
                    if dead.contains(contact.id) {
                        lookup.failed(contact.id)
                    } else {
                        lookup.answered(contact.id, with: .nodes(observed: contact.endpoint, token: 7, held: nil,
                                                                 contacts: layout.nearest(target, excluding: contact.id)), now: 0, node: node)
                    }
                case (.store, _):
                    lookup.storesInFlight -= 1
                    lookup.result.stored += 1
                default:
                    Issue.record("unexpected request \(body) as \(role)")
                }
                ended = advance()
            }
            #expect(ended, "\(kind): the lookup ended (\(steps) steps)")
            let answered = Set(lookup.answeredWithTokens().prefix(20).map(\.0.id))
            let alive = Set(ids.filter { !dead.contains($0) }.sorted { ($0 ^ key) < ($1 ^ key) }.prefix(20))
            #expect(answered == alive, "\(kind): \(answered.intersection(alive).count) of the 20 nearest alive answered")
            if case .announce = kind { #expect(lookup.result.stored == 20, "announce: stored on \(lookup.result.stored)") }
        }
    }
}
