@testable import DNADHT
import DNACrypto
import DNAWire
import Testing

/// Signed values (docs/PROTOCOL.md §10) through a hostile network: holders among the k closest that
/// lie in their lists and parts, concurrent writers, churn, deletions that a holder missed, and a
/// source that floods a holder with uploads.
@Suite(.serialized) struct ValueNetworkTests {
    static let key = Array(Sodium.sha256(Array("group:hostile".utf8)).prefix(20))
    static var nodeKey: NodeID { NodeID(bytes: key)! }

    static func value(_ signer: Identity, key: [UInt8] = key, slot: UInt32 = 0, sequence: UInt64, created: UInt64,
                      lifetime: UInt32 = 3600, flags: UInt8 = 0, data: [UInt8]) -> SignedValue {
        ValueTests.value(signer, key: key, slot: slot, sequence: sequence, created: created, lifetime: lifetime, flags: flags, data: data)
    }

    /// The nodes of `network` nearest `key` first.
    static func closest(to key: NodeID, in network: SimulatedNetwork) -> [Endpoint] {
        network.order.sorted { a, b in (network.node(a)!.id ^ key) < (network.node(b)!.id ^ key) }
    }

    /// Makes the node at `endpoint` a liar: it keeps running as itself (routing, lookups, storing),
    /// but each answer it sends to a request is first given to `rewrite` (the request, when it was
    /// one datagram, and the answer), which returns what goes instead (nil: nothing); `delay` (ms)
    /// holds back what it sends in answer to a request.
    static func wrap(_ endpoint: Endpoint, in network: SimulatedNetwork, delay: ((_ request: DHTMessage.Body?) -> UInt64)? = nil,
                     rewrite: @escaping (_ request: DHTMessage.Body?, _ answer: DHTMessage.Body) -> DHTMessage.Body?) {
        guard let node = network.node(endpoint) else { return }
        network.adversaries[endpoint] = { [unowned network] from, datagram in
            var request: DHTMessage.Body?
            if let piece = try? DHTDatagram.parse(datagram), piece.count == 1 {
                request = (try? DHTMessage(parsing: Array(piece.bytes), transaction: piece.transaction))?.body
            }
            node.receive(datagram, from: from, now: network.now)
            var out: [(Endpoint, [UInt8])] = []
            var pieces = PieceCollector()
            for (to, datagram) in node.takeDatagrams() {
                guard to == from, let piece = try? DHTDatagram.parse(datagram) else {
                    out.append((to, datagram))
                    continue
                }
                guard let bytes = pieces.message(piece) else { continue }
                guard let message = try? DHTMessage(parsing: bytes, transaction: piece.transaction) else { continue }
                guard let body = rewrite(request, message.body) else { continue }
                let answer = DHTMessage(transaction: message.transaction, salt: message.salt, body: body)
                out += DHTDatagram.encode(answer).map { (from, $0) }
            }
            network.flush(endpoint)  // its events and its next timer
            if let delay { network.adversaryDelay = delay(request) }
            return out
        }
    }

    static func randomBytes(_ count: Int, _ random: inout SimRandom) -> [UInt8] {
        (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
    }

    /// Runs until every put and get in `started` reported (or `limit` ms passed).
    struct Operation: Hashable {
        var endpoint: Endpoint
        var id: LookupID
    }

    static func waitAll(_ network: SimulatedNetwork, _ started: [(Endpoint, LookupID)], limit: UInt64 = 600_000)
        -> (puts: [Operation: ValuePutResult], gets: [Operation: ValueGetResult]) {
        let end = network.now + limit
        var puts: [Operation: ValuePutResult] = [:], gets: [Operation: ValueGetResult] = [:]
        let wanted = Dictionary(grouping: started, by: \.0).mapValues { Set($0.map(\.1)) }
        while true {
            puts = [:]
            gets = [:]
            var done = 0
            for (endpoint, ids) in wanted {
                for event in network.events[endpoint] ?? [] {
                    switch event {
                    case .valuePut(let id, let result) where ids.contains(id): puts[Operation(endpoint: endpoint, id: id)] = result; done += 1
                    case .valuesGot(let id, let result) where ids.contains(id): gets[Operation(endpoint: endpoint, id: id)] = result; done += 1
                    default: break
                    }
                }
            }
            if done >= started.count || network.now >= end { return (puts, gets) }
            network.run(for: 200)
        }
    }

    static func put(_ value: SignedValue, from endpoint: Endpoint, in network: SimulatedNetwork) throws -> ValuePutResult {
        let node = try #require(network.node(endpoint))
        let id = try node.putValue(value, now: network.now)
        network.flush(endpoint)
        return try #require(ValueTests.putResult(network, endpoint, id, limit: 300_000))
    }

    static func get(_ key: NodeID = nodeKey, from endpoint: Endpoint, in network: SimulatedNetwork,
                    limit: UInt64 = 300_000) -> ValueGetResult? {
        ValueTests.getResult(network, endpoint, network.start(endpoint) { $0.getValues(key, now: network.now) }, limit: limit)
    }

    // MARK: 1. Lying holders

    /// Alice's slot at the key: sequences 1, then 3 (data in two parts); Bob's slot: sequence 1.
    /// Put from a node far from the key; the readers are far from it too (they hold nothing).
    static func lyingHoldersNetwork(seed: UInt64) throws -> (network: SimulatedNetwork, closest: [Endpoint], far: [Endpoint],
                                                             values: [SignedValue]) {
        let network = SimulationTests.network(80, seed: seed)
        network.loss = 0.05
        let closest = Self.closest(to: nodeKey, in: network)
        let far = Array(closest.suffix(40))
        let now = network.now / 1000
        let alice = Announced.identities[30], bob = Announced.identities[31]
        let first = value(alice, sequence: 1, created: now, data: Array(repeating: 1, count: 20_000))
        let fresh = value(alice, sequence: 3, created: now, data: Array(repeating: 3, count: 20_000))
        let other = value(bob, sequence: 1, created: now, data: Array("bob".utf8))
        for item in [first, fresh, other] {
            let result = try put(item, from: far[0], in: network)
            #expect(result.stored >= 15, "stored on \(result.stored)")
        }
        let values = [fresh, other].sorted { $0.signerID.lexicographicallyPrecedes($1.signerID) }
        return (network, Array(closest.prefix(20)), Array(far.dropFirst()), values)
    }

    @Test func forgedDescriptorsCostAFetchEachAndHideNothing() throws {
        let (network, closest, far, values) = try Self.lyingHoldersNetwork(seed: 61)
        var random = SimRandom(seed: 0xF0)
        // 8 of the 20 closest list, for every value they hold, ten forged descriptors of the same
        // signer and slot with higher sequences and made-up ids (and one of a made-up signer); half
        // of them serve random bytes for those ids, the others say they do not hold them.
        var forgedLengths: [[UInt8]: Int] = [:]
        for (index, liar) in closest.prefix(16).enumerated() where index % 2 == 1 {
            let servesBytes = index % 4 == 1
            Self.wrap(liar, in: network) { request, answer in
                switch answer {
                case .valueList(_, let descriptors):
                    var forged: [ValueDescriptor] = []
                    for real in descriptors {
                        for step in 1...10 {
                            var fake = real
                            fake.sequence = real.sequence + UInt64(step)
                            fake.id = Self.randomBytes(32, &random)
                            forgedLengths[fake.id] = fake.length
                            forged.append(fake)
                        }
                    }
                    if var madeUp = descriptors.first {
                        madeUp.signerID = Self.randomBytes(32, &random)
                        madeUp.id = Self.randomBytes(32, &random)
                        forgedLengths[madeUp.id] = madeUp.length
                        forged.append(madeUp)
                    }
                    forged = Array(forged.prefix(DHTMessage.maximumDescriptors))
                    return .valueList(total: forged.count, descriptors: forged)
                case .valuePart(.notHeld, _):
                    guard servesBytes, case .valueFetch(_, _, let id, let index)? = request, let length = forgedLengths[id] else { return answer }
                    let count = Pieces.count(length: length, pieceSize: ValuePart.size)
                    let size = Pieces.range(of: index, length: length, pieceSize: ValuePart.size).count
                    return .valuePart(.part, ValuePart(id: id, index: index, count: count, length: length,
                                                       bytes: Self.randomBytes(size, &random)))
                default:
                    return answer
                }
            }
        }
        for reader in far.prefix(5) {
            let got = try #require(Self.get(from: reader, in: network))
            #expect(got.values == values, "got \(got.values.map { ($0.signer, $0.sequence) }); refused \(got.refused), undelivered \(got.undelivered)")
            // Each liar's forged descriptor of a slot is refused (bytes that are not its id) or
            // undelivered; the 4 that serve bytes are then asked for nothing more
            // (each is asked for at most its 3 forged slots at once before its first refusal comes).
            #expect(got.refused >= 1 && got.refused <= 12, "refused \(got.refused)")
            #expect(got.refused + got.undelivered >= 8, "refused \(got.refused), undelivered \(got.undelivered)")
        }
    }

    @Test func partsWithAlteredBytesOrValuesNotHeldMakeTheReaderAskAnotherHolder() throws {
        let (network, closest, far, values) = try Self.lyingHoldersNetwork(seed: 62)
        let alice = values.first { $0.sequence == 3 }!
        // 8 of the 20 closest list what they hold, then serve every part with a byte altered; 3 say
        // 4 others list, instead of Alice's value, a fourth sequence of it that they do not hold.
        for (index, liar) in closest.prefix(12).enumerated() {
            let corrupts = index < 8
            Self.wrap(liar, in: network) { _, answer in
                switch answer {
                case .valuePart(.part, var part?) where corrupts:
                    part.bytes[part.bytes.count / 2] ^= 0x40
                    return .valuePart(.part, part)
                case .valuePart(.part, let part?) where !corrupts && part.id == alice.id:
                    return .valuePart(.notHeld, nil)
                case .valueList(let total, var descriptors) where !corrupts:
                    if let real = descriptors.first(where: { $0.id == alice.id }) {
                        var claimed = real
                        claimed.sequence = 4
                        claimed.id = Sodium.sha256(real.id)
                        descriptors.removeAll { $0.id == alice.id }
                        descriptors.insert(claimed, at: 0)
                    }
                    return .valueList(total: max(total, descriptors.count), descriptors: descriptors)
                default:
                    return answer
                }
            }
        }
        var refused = 0, undelivered = 0
        for reader in far.prefix(10) {
            let got = try #require(Self.get(from: reader, in: network))
            #expect(got.values == values, "got \(got.values.map { ($0.signer, $0.sequence) }); refused \(got.refused), undelivered \(got.undelivered)")
            refused += got.refused
            undelivered += got.undelivered
            // A corrupted part costs one fetch from that holder, which is then asked for nothing
            // more: at most one refusal per liar and slot fetched at once.
            #expect(got.refused <= 16)
            // The fourth sequence is listed by the 4 liars only, and none delivers it.
            #expect(got.undelivered == 1, "undelivered \(got.undelivered)")
        }
        #expect(refused >= 1, "refused \(refused) in 10 gets")
    }

    @Test func aHolderThatListsWithoutEndCostsBoundedPagesAndFetches() throws {
        let (network, closest, far, values) = try Self.lyingHoldersNetwork(seed: 63)
        // One of the closest answers every VALUE_GET, whatever the skip, with a total of 65,535 and
        // 64 descriptors of made-up signers; it does not hold them.
        var pages = Set<Int>(), fetches = 0
        let liar = closest[1], created = network.now / 1000
        Self.wrap(liar, in: network) { request, answer in
            switch (request, answer) {
            case (.valueGet(_, _, _, _, let skip)?, _):
                pages.insert(skip)
                var random = SimRandom(seed: 0xAB ^ UInt64(skip))  // the same page again for a retry
                let descriptors = (0..<DHTMessage.maximumDescriptors).map { _ in
                    ValueDescriptor(id: Self.randomBytes(32, &random), signerID: Self.randomBytes(32, &random), slot: 0, sequence: 9,
                                    created: created, lifetime: 3600, type: 7, flags: 0, length: 5_400)
                }
                return .valueList(total: 0xFFFF, descriptors: descriptors)
            case (.valueFetch?, _):
                fetches += 1
                return answer
            default:
                return answer
            }
        }
        // A reader asks the k nearest nodes that answered its lookup; one whose lookup ended before
        // the liar answered (about 1 run in 12, by the order of simultaneous timers) never meets it.
        // Readers are tried until one asked the liar.
        var start = network.now
        var got = try #require(Self.get(from: far[0], in: network), "the get never ended")
        for reader in far.dropFirst().prefix(3) where pages.isEmpty {
            start = network.now
            got = try #require(Self.get(from: reader, in: network), "the get never ended")
        }
        #expect(!pages.isEmpty, "no reader's get asked the liar for its list")
        #expect(got.values == values)
        #expect(pages.count <= ValueGet.maximumPages, "\(pages.count) pages asked of the liar")
        // Its first made-up value it does not serve ends its fetches: the rest are undelivered
        // without a request each (only those in flight at that moment were sent).
        #expect(got.undelivered >= 1, "undelivered \(got.undelivered)")
        #expect(fetches <= 2 * ValueGet.fetchesInFlight, "\(fetches) fetches sent to the liar")
        #expect(network.now - start < 60_000, "the get took \(network.now - start) ms")
    }

    @Test func aHolderThatListsSlowlyWithoutEndDelaysAGetByOnePageAtMost() throws {
        let (network, closest, far, values) = try Self.lyingHoldersNetwork(seed: 65)
        // One of the closest answers every VALUE_GET with a total of 65,535 and 64 made-up
        // descriptors, each page 200 ms late (inside the readers' request timeout, so each counts
        // as an answer): 64 pages would hold a get for 13 s.
        // How long each reader's get takes without the liar.
        let readers = Array(far.prefix(4))
        var clean: [UInt64] = []
        for reader in readers {
            let start = network.now
            #expect(Self.get(from: reader, in: network)?.values == values)
            clean.append(network.now - start)
        }
        var pages = Set<Int>()  // skips asked (retries of a page count once)
        let liar = closest[2], created = network.now / 1000
        Self.wrap(liar, in: network, delay: { request in
            if case .valueGet? = request { return 200 }
            return 0
        }) { request, answer in
            guard case .valueGet(_, _, _, _, let skip)? = request else { return answer }
            pages.insert(skip)
            var random = SimRandom(seed: 0xEF ^ UInt64(skip))
            let descriptors = (0..<DHTMessage.maximumDescriptors).map { _ in
                ValueDescriptor(id: Self.randomBytes(32, &random), signerID: Self.randomBytes(32, &random), slot: 0, sequence: 9,
                                created: created, lifetime: 3600, type: 7, flags: 0, length: 100)
            }
            return .valueList(total: 0xFFFF, descriptors: descriptors)
        }
        var extra: [Int64] = []
        for (reader, cleanTime) in zip(readers, clean) {
            pages = []
            let start = network.now
            let got = try #require(Self.get(from: reader, in: network), "the get never ended")
            guard !pages.isEmpty else { continue }  // its lookup ended before the liar answered
            extra.append(Int64(network.now - start) - Int64(cleanTime))
            #expect(got.values == values)
            // The other holders' lists end within a round trip; then no holder is asked for another
            // page, and the page the liar still owes is the last waited for.
            #expect(pages.count <= 2, "pages \(pages.sorted()) asked of the liar")
        }
        #expect(!extra.isEmpty, "no reader's get asked the liar for its list")
        // The page it owes (200 ms late, perhaps asked again) and one fetch of its made-up values,
        // beside the retries 5% loss costs either get (18 to 32 s before the paging rule).
        #expect(extra.allSatisfy { $0 < 2_000 }, "the liar added \(extra) ms to gets of \(clean) ms")
    }

    @Test func aKeyOfManyPagesIsGotWholeWhenHalfOfItsHoldersHoldNothingYet() throws {
        let network = SimulationTests.network(60, seed: 66)
        let closest = Self.closest(to: Self.nodeKey, in: network)
        let now = network.now / 1000
        // 150 values at one key (3 writers, 50 slots each): three pages from each holder.
        var values: [SignedValue] = []
        for writer in 0..<3 {
            for slot in 0..<50 {
                values.append(Self.value(Announced.identities[40 + writer], slot: UInt32(slot), sequence: 1, created: now,
                                         data: Array("v\(writer).\(slot)".utf8)))
            }
        }
        for value in values {  // one after the other: a source's uploads at once are bounded
            let stored = try Self.put(value, from: closest.last!, in: network).stored
            #expect(stored >= 15, "stored on \(stored)")
        }
        // 10 of the 20 closest answer at once that they hold nothing (nodes that joined since, or
        // that lie): their lists end first, yet the holders of all three pages are asked to the end.
        for empty in closest.prefix(10) {
            Self.wrap(empty, in: network) { request, answer in
                if case .valueGet? = request { return .valueList(total: 0, descriptors: []) }
                return answer
            }
        }
        for reader in closest.suffix(3) {
            let got = try #require(Self.get(from: reader, in: network), "the get never ended")
            #expect(got.values.count == 150, "got \(got.values.count) of 150 values")
        }
    }

    @Test func aHolderListingOneValueUnderManySlotsDoesNotStallTheGet() throws {
        let network = SimulationTests.network(60, seed: 64)
        let closest = Self.closest(to: Self.nodeKey, in: network)
        let alice = Announced.identities[32]
        let large = Self.value(alice, sequence: 2, created: network.now / 1000, data: Array(repeating: 7, count: SignedValue.maximumDataSize))
        #expect(try Self.put(large, from: closest.last!, in: network).stored >= 15)
        // One holder lists, beside the real descriptor, the same value id under 30 made-up signers:
        // fetches of one id from one holder run side by side, and it serves each (the real bytes).
        for (index, liar) in closest.prefix(3).enumerated() {
            Self.wrap(liar, in: network) { _, answer in
                guard case .valueList(_, let descriptors) = answer, let real = descriptors.first else { return answer }
                var random = SimRandom(seed: 0xCD + UInt64(index))
                let copies = (0..<30).map { _ in
                    var copy = real
                    copy.signerID = Self.randomBytes(32, &random)
                    return copy
                }
                return .valueList(total: 31, descriptors: [real] + copies)
            }
        }
        for reader in closest.suffix(5) {
            let got = try #require(Self.get(from: reader, in: network), "the get never ended")
            #expect(got.values == [large])
            #expect(got.refused >= 1, "refused \(got.refused), undelivered \(got.undelivered)")
        }
    }

    // MARK: 2. Concurrent writers

    @Test func concurrentWritersEachEndAtTheirLastSequence() throws {
        let network = SimulationTests.network(100, seed: 71)
        network.loss = 0.1
        let writers = Array(Announced.identities[40..<50])
        let counts = (0..<10).map { 20 + 8 * $0 }  // 20 to 92 puts per writer
        var next = Array(repeating: 0, count: 10)
        var started: [(Endpoint, LookupID)] = []
        var last: [SignedValue] = []
        let nodes = Array(network.order.prefix(60))
        // Interleaved: each round, every writer with puts left starts its next sequence, from one of
        // two nodes of its own, 300 ms after the previous round (a put takes longer than that).
        while next.enumerated().contains(where: { $0.element < counts[$0.offset] }) {
            for index in 0..<10 where next[index] < counts[index] {
                next[index] += 1
                let endpoint = nodes[index * 2 + next[index] % 2]
                let item = Self.value(writers[index], slot: UInt32(index), sequence: UInt64(next[index]), created: network.now / 1000,
                                      data: Array("w\(index) s\(next[index])".utf8))
                if next[index] == counts[index] { last.append(item) }
                let node = try #require(network.node(endpoint))
                started.append((endpoint, try node.putValue(item, now: network.now)))
                network.flush(endpoint)
            }
            network.run(for: 300)
        }
        let (puts, _) = Self.waitAll(network, started)
        #expect(puts.count == started.count, "\(puts.count) of \(started.count) puts ended")
        let superseded = puts.values.map(\.superseded).reduce(0, +)
        for reader in network.order.suffix(3) {
            let got = try #require(Self.get(from: reader, in: network))
            let sequences = Dictionary(uniqueKeysWithValues: got.values.map { ($0.slot, $0.sequence) })
            #expect(sequences == Dictionary(uniqueKeysWithValues: last.map { ($0.slot, $0.sequence) }),
                    "slots at \(sequences.sorted { $0.key < $1.key }.map(\.value)), expected \(counts); holders that had a later one: \(superseded)")
            #expect(Set(got.values.map(\.id)) == Set(last.map(\.id)))
        }
    }

    @Test func oneSequenceWrittenTwiceFromTwoNodesConvergesOnTheGreaterID() throws {
        var configuration = SimulationTests.configuration()
        configuration.refreshInterval = 60_000
        configuration.valueRepublishInterval = 600_000
        let network = SimulationTests.network(80, seed: 72, configuration: configuration)
        network.loss = 0.1
        let signer = Announced.identities[50], now = network.now / 1000
        let a = Self.value(signer, sequence: 5, created: now, data: Array("from the phone".utf8))
        let b = Self.value(signer, sequence: 5, created: now, data: Array("from the laptop".utf8))
        let winner = a.supersedes(b) ? a : b
        let closest = Self.closest(to: Self.nodeKey, in: network)
        let writers = [closest[40], closest[60]]
        var started: [(Endpoint, LookupID)] = []
        for (endpoint, item) in zip(writers, [a, b]) {
            started.append((endpoint, try #require(network.node(endpoint)).putValue(item, now: network.now)))
            network.flush(endpoint)
        }
        let (puts, _) = Self.waitAll(network, started)
        #expect(puts.count == 2)
        for reader in [closest[30], closest[50], closest[70], closest[79], writers[0], writers[1]] {
            let got = try #require(Self.get(from: reader, in: network))
            #expect(got.values == [winner], "\(got.values.map { String(decoding: $0.data, as: UTF8.self) })")
        }
        // Holders that got only the other converge when the holders republish.
        network.run(for: configuration.valueRepublishInterval + 2 * configuration.refreshInterval)
        let holders = closest.prefix(20).compactMap { network.node($0)?.localValues(Self.nodeKey, now: network.now).first }
        #expect(holders.count >= 19 && holders.allSatisfy { $0 == winner },
                "\(holders.count) of the 20 closest hold it, \(holders.filter { $0 != winner }.count) the other")
    }

    // MARK: 3. Churn

    @Test func valuesOutliveThirtyPercentOfTheNodesThroughRepublishing() throws {
        var configuration = SimulationTests.configuration()
        configuration.refreshInterval = 60_000
        configuration.valueRepublishInterval = 300_000
        let network = SimulationTests.network(300, seed: 73, configuration: configuration)
        network.loss = 0.02
        var random = SimRandom(seed: 73)
        var items: [(key: NodeID, value: SignedValue)] = []
        var started: [(Endpoint, LookupID)] = []
        for index in 0..<50 {
            let key = Array(Sodium.sha256(Array("churn \(index)".utf8)).prefix(20))
            let item = Self.value(Announced.identities[index], key: key, sequence: 1, created: network.now / 1000, lifetime: 7200,
                                  data: Array(repeating: UInt8(index), count: 100 + 300 * index))
            let writer = network.order[Int(random.next() % 300)]
            started.append((writer, try #require(network.node(writer)).putValue(item, now: network.now)))
            network.flush(writer)
            items.append((try #require(NodeID(bytes: key)), item))
            network.run(for: 100)
        }
        let (puts, _) = Self.waitAll(network, started)
        #expect(puts.values.allSatisfy { $0.stored >= 15 }, "holders per put: \(puts.values.map(\.stored).sorted())")
        // 30% of the nodes go (never node 0, the bootstrap node), all at once.
        var killed = 0
        while killed < 90 {
            let endpoint = network.order[1 + Int(random.next() % 299)]
            if network.dead.insert(endpoint).inserted { killed += 1 }
        }
        let live = network.order.filter { !network.dead.contains($0) }
        network.run(for: configuration.valueRepublishInterval + 3 * configuration.refreshInterval)
        // Every value is again on (nearly) all of the 20 live nodes closest to its key.
        var copies: [Int] = []
        for (key, value) in items {
            let nearest = live.sorted { a, b in (network.node(a)!.id ^ key) < (network.node(b)!.id ^ key) }.prefix(20)
            copies.append(nearest.filter { network.node($0)?.localValues(key, now: network.now) == [value] }.count)
        }
        #expect(Double(copies.reduce(0, +)) / Double(copies.count) >= 17, "copies on the 20 nearest live nodes: \(copies)")
        var gets: [(Endpoint, LookupID)] = []
        var expected: [Operation: SignedValue] = [:]
        for (key, value) in items {
            for _ in 0..<2 {
                let reader = live[Int(random.next() % UInt64(live.count))]
                let id = network.start(reader) { $0.getValues(key, now: network.now) }
                gets.append((reader, id))
                expected[Operation(endpoint: reader, id: id)] = value
            }
        }
        let (_, results) = Self.waitAll(network, gets)
        let found = gets.filter { results[Operation(endpoint: $0.0, id: $0.1)]?.values == [expected[Operation(endpoint: $0.0, id: $0.1)]!] }.count
        #expect(found * 100 >= 99 * gets.count, "found \(found) of \(gets.count) after 30% of the nodes left")
        print("ValueNetworkTests churn: found \(found) of \(gets.count); copies on the 20 nearest live nodes: mean \(Double(copies.reduce(0, +)) / Double(copies.count)), min \(copies.min() ?? 0)")
    }

    // MARK: 4. Tombstones and expiry

    /// What a source makes a holder keep is counted by its share (§5.5): an IPv4 address whatever the
    /// port, an IPv6 /64. One host on many ports used to get a full share per port: values (and
    /// tombstones), subscriptions and entries. (`@_optimize(none)`: Swift 6.3.1's loop-invariant code
    /// motion crashes on this function.)
    @_optimize(none) @Test func oneHostOnManyPortsOrAddressesOfItsPrefixHasOneShare() throws {
        var configuration = SimulationTests.configuration()
        configuration.valuesPerSource = 3
        configuration.listenersPerSource = 2
        configuration.entriesPerSource = 2
        let network = SimulationTests.network(5, seed: 52, configuration: configuration)
        let target = network.order[2]
        let node = try #require(network.node(target))
        let now = network.now / 1000
        let signer = Announced.identities[30]
        func client(_ host: String, _ port: UInt16) throws -> ValueTests.Client {
            ValueTests.Client(node, in: network, endpoint: try #require(Endpoint(host: host, port: port)))
        }
        for (index, port) in [1000, 1001, 1002].enumerated() {
            var sender = try client("198.51.100.9", UInt16(port))
            #expect(sender.put(Self.value(signer, slot: UInt32(index), sequence: 1, created: now, data: [1])) == [.stored])
        }
        var fourth = try client("198.51.100.9", 1003)
        #expect(fourth.put(Self.value(signer, slot: 3, sequence: 1, created: now, data: [1])) == [.quota])
        var neighbour = try client("198.51.100.10", 1003)  // another host of the same /24
        #expect(neighbour.put(Self.value(signer, slot: 3, sequence: 1, created: now, data: [1])) == [.stored])
        for (index, host) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"].enumerated() {
            var sender = try client(host, 2000)
            #expect(sender.put(Self.value(signer, slot: 10 + UInt32(index), sequence: 1, created: now, data: [1])) == [.stored])
        }
        var sameSixtyFour = try client("2001:db8:1:2::7", 2001)
        #expect(sameSixtyFour.put(Self.value(signer, slot: 20, sequence: 1, created: now, data: [1])) == [.quota])
        var otherSixtyFour = try client("2001:db8:1:3::7", 2001)
        #expect(otherSixtyFour.put(Self.value(signer, slot: 20, sequence: 1, created: now, data: [1])) == [.stored])
        // Subscriptions: two per share.
        let statuses = try (0..<3).map { index -> DHTMessage.Body? in
            let listener = try client("203.0.113.5", 3000 + UInt16(index))
            return listener.send(.valueListen(token: listener.token, key: Self.nodeKey, signer: nil, listener: UInt64(index + 1)),
                                 transaction: 700 + UInt64(index)).first
        }
        #expect(statuses == [.valueListening(.listening, lifetime: 600), .valueListening(.listening, lifetime: 600),
                             .valueListening(.busy, lifetime: 0)])
        // Entries: two per share.
        let entries = (0..<3).map { index in
            NodeRulesTests.store(NodeRulesTests.entry(Announced.identities[40 + index], lastSeen: now).wireBytes, at: target,
                                 in: network, from: Endpoint(host: "203.0.113.6", port: 4000 + UInt16(index))!)
        }
        #expect(entries == [.stored, .stored, .quota])
    }

    /// A share counts only while it holds something: an entry stored again and again (fresher each
    /// time) from 60 addresses ends up counted for the last of them alone. The count table used to
    /// keep every address that had ever stored an entry since replaced or expired, one key each.
    @_optimize(none) @Test func sharesWhoseEntriesWereReplacedAreForgotten() throws {  // Swift 6.3.1 crashes optimizing it
        let network = SimulationTests.network(5, seed: 53)
        let target = network.order[2]
        let node = try #require(network.node(target))
        let identity = Announced.identities[41]
        let before = node.entryShares
        let now = network.now / 1000
        for index in 0..<60 {
            let from = try #require(Endpoint(host: "198.51.\(100 + index / 50).\(index % 50 + 1)", port: 4000))
            let wire = NodeRulesTests.entry(identity, lastSeen: now + UInt64(index)).wireBytes
            #expect(NodeRulesTests.store(wire, at: target, in: network, from: from) == .stored)
        }
        #expect(node.entryShares == before + 1)
        // Entries restored from a saved state count for this node's own share (they were not
        // counted, and their expiry or replacement then took from the share of the node's own entry).
        let fresh = DHTNode(credential: NodeCredential.generate(difficulty: 4), configuration: SimulationTests.configuration(),
                            now: network.now)
        fresh.restore(node.savedState(now: network.now), now: network.now)
        #expect(fresh.entryShares == 1)
    }

    /// A put of a value held already postpones the holder's republishing of it only when it comes
    /// from a fellow holder (a contact at that address among the k closest to the key, §10.4):
    /// anyone else repeating the value's first part more often than the republishing interval used to
    /// keep every holder from ever storing it on the nodes that join near the key.
    @Test func onlyAFellowHoldersPutPostponesRepublishing() throws {
        var configuration = SimulationTests.configuration()  // an hour's rules in 10 minutes
        configuration.refreshInterval = 60_000
        configuration.valueRepublishInterval = 600_000
        let network = SimulationTests.network(100, seed: 51, configuration: configuration)
        let closest = Self.closest(to: Self.nodeKey, in: network)
        // The outsider's id is as far from the key as can be (another first bit), as almost every
        // node's is in a large network: far from the k closest, though the holder's table learns it.
        var outsiderSalt = NodeCredential.generate(difficulty: 4)
        while (outsiderSalt.id ^ Self.nodeKey).leadingZeroBits > 0 { outsiderSalt = NodeCredential.generate(difficulty: 4) }
        let holder = try #require(network.node(closest[0])), fellow = try #require(network.node(closest[1]))
        #expect(holder.table.closest(to: Self.nodeKey, count: 20).contains { $0.id == fellow.id && $0.endpoint == closest[1] })
        let item = Self.value(Announced.identities[30], sequence: 1, created: network.now / 1000, lifetime: 3600, data: [1, 2, 3])
        let wire = item.wireBytes
        let first = ValuePart.split(wire, id: Sodium.sha256(wire))[0]
        var outsider = ValueTests.Client(holder, in: network, salt: outsiderSalt.salt)
        #expect(outsider.put(item) == [.stored])
        var republished = holder.statistics.valuesRepublished
        for round in 0..<6 {
            network.run(for: 200_000)
            let again = ValueTests.Client(holder, in: network, salt: outsiderSalt.salt)  // a token of the current period
            #expect(again.send(.valuePut(token: again.token, key: Self.nodeKey, part: first), transaction: 500 + UInt64(round))
                    == [.valueStored(.stored, holderTime: 0)])
        }
        #expect(holder.statistics.valuesRepublished > republished, "an outsider's puts every 200 s kept the value from being republished for 20 min")
        // The same first part from the fellow holder every 20 minutes: the holder leaves the value to it.
        republished = holder.statistics.valuesRepublished
        for round in 0..<6 {
            let peer = ValueTests.Client(holder, in: network, endpoint: closest[1], salt: fellow.credential.salt)
            #expect(peer.send(.valuePut(token: peer.token, key: Self.nodeKey, part: first), transaction: 600 + UInt64(round))
                    == [.valueStored(.stored, holderTime: 0)])
            network.run(for: 200_000)
        }
        #expect(holder.statistics.valuesRepublished == republished)
    }

    @Test func aDeletedValueStaysDeletedWhenAHolderThatMissedTheDeletionRepublishesIt() throws {
        var configuration = SimulationTests.configuration()
        configuration.refreshInterval = 60_000
        configuration.valueRepublishInterval = 600_000
        let network = SimulationTests.network(60, seed: 74, configuration: configuration)
        let closest = Self.closest(to: Self.nodeKey, in: network)
        let signer = Announced.identities[51], start = network.now / 1000
        let old = Self.value(signer, sequence: 1, created: start, lifetime: 1800, data: Array("my old profile".utf8))
        #expect(try Self.put(old, from: closest[50], in: network).stored >= 19)
        network.run(for: 60_000)
        // Two holders are away while the slot is deleted (their datagrams are lost); they come back.
        let missed = [closest[2], closest[7]]
        for endpoint in missed { network.dead.insert(endpoint) }
        let tombstone = Self.value(signer, sequence: 2, created: network.now / 1000,
                                   lifetime: UInt32(old.expires - network.now / 1000), flags: SignedValue.tombstoneFlag, data: [])
        let deleted = try Self.put(tombstone, from: closest[50], in: network)
        #expect(deleted.stored >= 18, "stored on \(deleted.stored)")
        for endpoint in missed { network.dead.remove(endpoint) }
        for endpoint in missed { #expect(network.node(endpoint)?.localValues(Self.nodeKey, now: network.now) == [old]) }
        // Whoever reads gets the tombstone, not the old value, from the holders that missed it too.
        for reader in [closest[40], closest[55], missed[0]] {
            let got = try #require(Self.get(from: reader, in: network))
            #expect(got.values == [tombstone], "\(got.values.map { ($0.sequence, $0.isTombstone) })")
        }
        // The old copy's holders republish it first (their copy is older): it is refused as older
        // everywhere, the tombstone reaches them, and the old value never comes back.
        var sawOld = 0
        for _ in 0..<12 {
            network.run(for: configuration.refreshInterval)
            sawOld = max(sawOld, closest.filter { network.node($0)?.localValues(Self.nodeKey, now: network.now) == [old] }.count)
            let got = try #require(Self.get(from: closest[45], in: network))
            #expect(got.values == [tombstone], "\(got.values.map { ($0.sequence, $0.isTombstone) })")
        }
        #expect(sawOld <= 2, "the old value was held by \(sawOld) nodes")
        #expect(closest.prefix(20).allSatisfy { network.node($0)?.localValues(Self.nodeKey, now: network.now) == [tombstone] })
        // Both end with the old value's lifetime: nothing is left, and a get finds nothing.
        network.run(for: (old.expires - network.now / 1000 + 1) * 1000 + configuration.refreshInterval)
        #expect(try #require(Self.get(from: closest[45], in: network)).values.isEmpty)
        #expect(closest.allSatisfy { network.node($0)?.valueCount == 0 })
    }

    @Test func anExpiredValueIsNotReturnedEvenBeforeItsHoldersDropIt() throws {
        var configuration = SimulationTests.configuration()
        configuration.refreshInterval = 600_000
        let network = SimulationTests.network(40, seed: 75, configuration: configuration)
        let closest = Self.closest(to: Self.nodeKey, in: network)
        let short = Self.value(Announced.identities[52], sequence: 1, created: network.now / 1000, lifetime: 30, data: [1])
        #expect(try Self.put(short, from: closest[30], in: network).stored >= 19)
        #expect(try #require(Self.get(from: closest[35], in: network)).values == [short])
        network.run(for: 31_000)
        #expect(closest.prefix(20).contains { network.node($0)?.valueCount == 1 })  // not swept yet
        #expect(try #require(Self.get(from: closest[35], in: network)).values.isEmpty)
    }

    // MARK: 5. Holder resource bounds

    /// A first part of a made-up value of three parts: a holder keeps it as an upload.
    static func firstPart(_ random: inout SimRandom) -> ValuePart {
        ValuePart(id: randomBytes(32, &random), index: 0, count: 3, length: 30_000, bytes: [UInt8](repeating: 0xEE, count: ValuePart.size))
    }

    static func statuses(_ answers: [DHTMessage.Body]) -> [ValueStatus] {
        answers.compactMap { if case .valueStored(let status, _) = $0 { status } else { nil } }
    }

    @_optimize(none) @Test func aFloodOfUploadsStaysBoundedAndLeavesOtherSourcesTheirShare() throws {
        let network = SimulationTests.network(5, seed: 76)
        let holder = try #require(network.node(network.order[1]))
        let key = Self.nodeKey
        var random = SimRandom(seed: 76)
        // One host, 40 ports, 6 uploads each.
        var flooders: [ValueTests.Client] = []
        for port in 2000..<2040 { flooders.append(ValueTests.Client(holder, in: network, endpoint: Endpoint(host: "203.0.113.7", port: UInt16(port))!)) }
        var accepted = 0, busy = 0, transaction: UInt64 = 1000
        for flooder in flooders {
            for _ in 0..<6 {
                transaction += 1
                let status = Self.statuses(flooder.send(.valuePut(token: flooder.token, key: key, part: Self.firstPart(&random)), transaction: transaction))
                if status == [.more] { accepted += 1 } else if status == [.busy] { busy += 1 }
            }
        }
        #expect(accepted == network.configuration.valueUploadsPerSource && holder.valueUploadCount == accepted,
                "\(accepted) uploads kept for one host on 40 ports")
        #expect(busy == 240 - accepted)
        // 40 hosts of that host's /24: the network's share.
        for host in 20..<60 {
            let flooder = ValueTests.Client(holder, in: network, endpoint: Endpoint(host: "203.0.113.\(host)", port: 2000)!)
            for _ in 0..<2 {
                transaction += 1
                _ = flooder.send(.valuePut(token: flooder.token, key: key, part: Self.firstPart(&random)), transaction: transaction)
            }
        }
        #expect(holder.valueUploadCount == ValueStore.uploadsPerNetwork, "\(holder.valueUploadCount) uploads kept for one /24")
        // Then 12 networks, 8 hosts each: every upload is taken, never more.
        for network24 in 1...12 {
            for port in 0..<8 {
                let flooder = ValueTests.Client(holder, in: network, endpoint: Endpoint(host: "203.0.\(network24).\(9 + port)", port: UInt16(3000 + port))!)
                for _ in 0..<4 {
                    transaction += 1
                    _ = flooder.send(.valuePut(token: flooder.token, key: key, part: Self.firstPart(&random)), transaction: transaction)
                    #expect(holder.valueUploadCount <= network.configuration.valueUploads)
                }
            }
        }
        #expect(holder.valueUploadCount == network.configuration.valueUploads)
        // Sources of other networks still store values of several parts, while the flood goes on.
        let now = network.now / 1000
        var honest: [SignedValue] = []
        for (index, host) in ["192.0.2.1", "198.51.100.20", "100.64.3.4", "172.16.5.6", "2001:db8::7"].enumerated() {
            var client = ValueTests.Client(holder, in: network, endpoint: Endpoint(host: host, port: 5000)!)
            let item = Self.value(Announced.identities[60 + index], sequence: 1, created: now, data: Array(repeating: UInt8(index), count: 40_000))
            honest.append(item)
            #expect(client.put(item) == [.more, .more, .more, .stored], "from \(host)")
            for flooder in flooders.prefix(8) {
                transaction += 1
                _ = flooder.send(.valuePut(token: flooder.token, key: key, part: Self.firstPart(&random)), transaction: transaction)
            }
            #expect(holder.valueUploadCount <= network.configuration.valueUploads)
        }
        #expect(Set(holder.localValues(key, now: network.now).map(\.id)) == Set(honest.map(\.id)))
        // Uploads end 10 s after their last part.
        network.run(for: network.configuration.valueUploadLifetime + 1_000)
        let late = ValueTests.Client(holder, in: network, endpoint: Endpoint(host: "192.0.2.99", port: 5000)!)
        #expect(Self.statuses(late.send(.valuePut(token: late.token, key: key, part: Self.firstPart(&random)), transaction: 7)) == [.more])
        #expect(holder.valueUploadCount == 1)
    }
}
