@testable import DNADHT
import DNACrypto
import DNAWire
import Glibc
import Testing

/// Signed values (docs/PROTOCOL.md §10) in a simulation with 10% loss on every datagram: values of
/// every size from 0 B to 64 KiB put and got, concurrent writers of one key heard by a listener,
/// then 30% of the nodes killed and the values got again after one republishing period.
/// `make test` runs 500 nodes, 100 values and 10 puts per writer; DNA_VALUE_SCALE=full (`make soak`)
/// runs issue 18's 2,000 nodes, 1,000 values and 100 puts per writer.
@Suite(.serialized) struct ValueScaleTests {
    static var full: Bool { getenv("DNA_VALUE_SCALE").map { String(cString: $0) == "full" } ?? false }

    @Test func nodesKeepValuesThroughLossConcurrentWritersAndChurn() throws {
        let nodeCount = Self.full ? 2000 : 500, valueCount = Self.full ? 1000 : 100, putsPerWriter = Self.full ? 100 : 10
        var configuration = SimulationTests.configuration()
        configuration.refreshInterval = 120_000
        configuration.valueRepublishInterval = 300_000
        let network = SimulationTests.network(nodeCount, seed: 91, configuration: configuration)
        network.loss = 0.10
        var random = SimRandom(seed: 91)
        let clock = ContinuousClock(), began = clock.now

        // 1. Values of 0 B to 64 KiB, each at its own key, put from random nodes 50 at a time.
        var items: [(key: NodeID, value: SignedValue)] = []
        var holders: [Int] = []
        for batch in stride(from: 0, to: valueCount, by: 50) {
            var started: [(Endpoint, LookupID)] = []
            var sizes: [ValueNetworkTests.Operation: Int] = [:]
            for index in batch..<min(valueCount, batch + 50) {
                let key = Array(Sodium.sha256(Array("scale \(index)".utf8)).prefix(20))
                let size = index * SignedValue.maximumDataSize / (valueCount - 1)
                let item = ValueNetworkTests.value(Announced.identities[index % 100], key: key, slot: UInt32(index), sequence: 1,
                                                   created: network.now / 1000, lifetime: 7200,
                                                   data: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) })
                let writer = network.order[Int(random.next() % UInt64(nodeCount))]
                started.append((writer, try #require(network.node(writer)).putValue(item, now: network.now)))
                sizes[ValueNetworkTests.Operation(endpoint: writer, id: started.last!.1)] = size
                network.flush(writer)
                items.append((try #require(NodeID(bytes: key)), item))
            }
            let (puts, _) = ValueNetworkTests.waitAll(network, started)
            #expect(puts.count == started.count, "\(puts.count) of \(started.count) puts ended")
            holders += puts.values.map(\.stored)
            for (operation, result) in puts where result.stored < 15 {
                print("ValueScaleTests: a put of \(sizes[operation] ?? -1) bytes from \(operation.endpoint) stored on \(result.stored): \(result)")
            }
        }
        holders.sort()
        // Every put stored; nearly all on the k closest (at the issue's scale, a few 57 to 65 KiB values
        // ended on 4 to 14 holders: their gets still succeeded; see the printed results).
        #expect(holders.first ?? 0 >= 3 && holders[holders.count / 2] >= 18 && holders.filter { $0 < 15 }.count * 50 <= holders.count,
                "holders per put: \(holders)")
        let got = try gets(items, in: network, readers: network.order, random: &random)
        #expect(got == items.count, "got \(got) of \(items.count) values")
        print("ValueScaleTests, \(nodeCount) nodes, 10% loss: \(items.count) values of 0 B to 64 KiB, holders per put min \(holders.first ?? 0) "
              + "median \(holders[holders.count / 2]); got \(got) of \(items.count) (\(clock.now - began))")

        // 2. Ten writers, one slot each at one key, written concurrently; a listener hears them.
        let key = try #require(NodeID(bytes: Array(Sodium.sha256(Array("scale group".utf8)).prefix(20))))
        let listener = network.order[nodeCount / 2 + 17]
        let listen = try #require(network.node(listener)).listen(key, now: network.now)
        network.flush(listener)
        network.run(for: 3_000)
        let writers = Array(Announced.identities[60..<70]), nodes = Array(network.order[100..<120])
        var started: [(Endpoint, LookupID)] = []
        var written: [ValueNetworkTests.Operation: SignedValue] = [:]
        var last: [SignedValue] = []
        for sequence in 1...putsPerWriter {
            for (index, writer) in writers.enumerated() {
                let endpoint = nodes[index * 2 + sequence % 2]
                let item = ValueNetworkTests.value(writer, key: key.bytes, slot: UInt32(index), sequence: UInt64(sequence),
                                                   created: network.now / 1000, lifetime: 7200, data: Array("w\(index) s\(sequence)".utf8))
                if sequence == putsPerWriter { last.append(item) }
                let operation = try #require(network.node(endpoint)).putValue(item, now: network.now)
                started.append((endpoint, operation))
                written[ValueNetworkTests.Operation(endpoint: endpoint, id: operation)] = item
                network.flush(endpoint)
            }
            network.run(for: 300)
        }
        let (puts, _) = ValueNetworkTests.waitAll(network, started)
        #expect(puts.count == started.count, "\(puts.count) of \(started.count) puts ended")
        network.run(for: 5_000)
        let expected = Dictionary(uniqueKeysWithValues: last.map { ($0.slot, $0.sequence) })
        for reader in network.order.suffix(3) {
            let result = try #require(ValueNetworkTests.get(key, from: reader, in: network))
            #expect(Dictionary(uniqueKeysWithValues: result.values.map { ($0.slot, $0.sequence) }) == expected)
        }
        // The listener: in sequence order per slot, never one twice, ending at each slot's last, and
        // (nearly) every write some holder stored. Holders keep a replaced value 60 s and the listener
        // fetches what each push named (§10.5): 99 of 100 here; getting the freshest from the holder
        // that pushed, 65. A write is skipped when a newer one of its slot was reported before it was
        // pushed: puts 300 ms apart overlap at 10% loss, and some holders store them out of order.
        // (Each writer awaiting its put before the next: 100 of 100 either way.)
        let heard = ValueTests.changes(network, listener, listen)
        var bySlot: [UInt32: [UInt64]] = [:]
        for value in heard { bySlot[value.slot, default: []].append(value.sequence) }
        #expect(bySlot.values.allSatisfy { $0 == $0.sorted() && Set($0).count == $0.count }, "\(bySlot)")
        #expect(bySlot.mapValues { $0.last ?? 0 } == expected, "last heard per slot: \(bySlot.mapValues { $0.last ?? 0 })")
        let storedWrites = puts.filter { $0.value.stored > 0 }.compactMap { written[$0.key] }
        let missed = storedWrites.filter { value in !heard.contains { $0.slot == value.slot && $0.sequence == value.sequence } }
        #expect(missed.count * 20 <= storedWrites.count,
                "the listener missed \(missed.map { "slot \($0.slot) #\($0.sequence)" }) of the \(storedWrites.count) writes stored")
        print("ValueScaleTests: \(writers.count) writers x \(putsPerWriter) puts at one key: every slot at its last sequence; "
              + "the listener heard \(heard.count) of \(started.count) writes, \(storedWrites.count) of them stored on a holder")

        // 3. 30% of the nodes killed (never node 0, the bootstrap node); one republishing period later.
        var killed = 0
        while killed < nodeCount * 3 / 10 {
            if network.dead.insert(network.order[1 + Int(random.next() % UInt64(nodeCount - 1))]).inserted { killed += 1 }
        }
        let live = network.order.filter { !network.dead.contains($0) }
        network.run(for: configuration.valueRepublishInterval + 2 * configuration.refreshInterval)
        let after = try gets(items, in: network, readers: live, random: &random)
        #expect(after * 1000 >= items.count * 999, "got \(after) of \(items.count) after 30% of the nodes left")
        print("ValueScaleTests, \(killed) of \(nodeCount) nodes killed, one republishing later: got \(after) of \(items.count) (\(clock.now - began) in all)")
    }

    /// Gets each item's key from a random reader (50 at a time); how many returned exactly the value.
    func gets(_ items: [(key: NodeID, value: SignedValue)], in network: SimulatedNetwork, readers: [Endpoint],
              random: inout SimRandom) throws -> Int {
        var found = 0
        for batch in stride(from: 0, to: items.count, by: 50) {
            var started: [(Endpoint, LookupID)] = []
            var expected: [ValueNetworkTests.Operation: SignedValue] = [:]
            for (key, value) in items[batch..<min(items.count, batch + 50)] {
                let reader = readers[Int(random.next() % UInt64(readers.count))]
                let id = network.start(reader) { $0.getValues(key, now: network.now) }
                started.append((reader, id))
                expected[ValueNetworkTests.Operation(endpoint: reader, id: id)] = value
            }
            let (_, results) = ValueNetworkTests.waitAll(network, started)
            found += expected.filter { operation, value in results[operation]?.values == [value] }.count
        }
        return found
    }
}
