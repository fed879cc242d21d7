@testable import DNADHT
import DNACrypto
import DNAWire
import Foundation
import Testing

/// Signed values at any key (docs/PROTOCOL.md §10): the format, the holder's rules, and put and get
/// through simulated networks with loss and lying holders.
@Suite(.serialized) struct ValueTests {
    static let alice = Announced.identities[0]
    static let bob = Announced.identities[1]
    static let key = Array(Sodium.sha256(Array("group:friends".utf8)).prefix(20))

    static func value(_ signer: Identity, key: [UInt8] = key, slot: UInt32 = 0, sequence: UInt64 = 1, created: UInt64,
                      lifetime: UInt32 = 3600, type: UInt16 = 7, flags: UInt8 = 0, data: [UInt8] = Array("hello".utf8)) -> SignedValue {
        var value = SignedValue(key: key, signer: signer.name, slot: slot, sequence: sequence, created: created, lifetime: lifetime,
                                type: type, flags: flags, data: data)
        value.publicKey = signer.publicKey
        value.signature = (try? signer.sign(value.signedBytes)) ?? []
        return value
    }

    // MARK: Format

    @Test func aValueRoundTripsVerifiesAndRefusesEveryBrokenField() throws {
        let now: UInt64 = 1_800_000_000
        var value = SignedValue(key: Self.key, signer: Self.alice.name, slot: 3, sequence: 9, created: now, lifetime: 600, type: 2,
                                data: [1, 2, 3])
        try value.sign(with: Self.alice, now: now)
        let parsed = try SignedValue(wire: value.wireBytes)
        #expect(parsed == value)
        try parsed.verify(now: now)
        #expect(value.wireBytes.count == SignedValue.fixedSize + 5 + 3)
        // The signature covers every field.
        var tampered = value
        tampered.data = [1, 2, 4]
        #expect(throws: SignedValueError.badSignature) { try tampered.verify(now: now) }
        tampered = value
        tampered.sequence = 10
        #expect(throws: SignedValueError.badSignature) { try tampered.verify(now: now) }
        // Times are judged on the verifier's clock: 600 s of skew ahead, nothing after the lifetime.
        #expect(throws: SignedValueError.createdInTheFuture(created: now, now: now - 601)) { try value.verify(now: now - 601) }
        try value.verify(now: now - 600)
        #expect(throws: SignedValueError.expired(expires: now + 600, now: now + 600)) { try value.verify(now: now + 600) }
        // Field rules.
        var broken = Self.value(Self.alice, created: now, lifetime: 0)
        #expect(throws: SignedValueError.invalidLifetime(0)) { try broken.verify(now: now) }
        broken = Self.value(Self.alice, created: now, lifetime: SignedValue.maximumLifetime + 1)
        #expect(throws: SignedValueError.invalidLifetime(SignedValue.maximumLifetime + 1)) { try broken.verify(now: now) }
        broken = Self.value(Self.alice, created: now, flags: SignedValue.tombstoneFlag, data: [1])
        #expect(throws: SignedValueError.invalidData(1)) { try broken.verify(now: now) }
        broken = Self.value(Self.alice, created: now, flags: 4)
        #expect(throws: SignedValueError.malformed("flags 4")) { try broken.verify(now: now) }
        // The largest value parses; one byte more of data does not.
        let largest = Self.value(Self.alice, created: now, data: [UInt8](repeating: 0xAB, count: SignedValue.maximumDataSize))
        #expect(try SignedValue(wire: largest.wireBytes) == largest)
        let tooLarge = Self.value(Self.alice, created: now, data: [UInt8](repeating: 0xAB, count: SignedValue.maximumDataSize + 1))
        #expect(throws: SignedValueError.invalidData(SignedValue.maximumDataSize + 1)) { try SignedValue(wire: tooLarge.wireBytes) }
        // Truncations and trailing bytes.
        let wire = value.wireBytes
        for cut in [0, 15, 16, 40, wire.count - 1] {
            #expect(throws: SignedValueError.self) { try SignedValue(wire: wire.prefix(cut)) }
        }
        #expect(throws: SignedValueError.malformed("1 trailing bytes")) { try SignedValue(wire: wire + [0]) }
        // Signing with another identity than the one named is refused.
        var other = SignedValue(key: Self.key, signer: Self.alice.name, slot: 0, sequence: 1, created: now, lifetime: 60, type: 0, data: [])
        #expect(throws: SignedValueError.self) { try other.sign(with: Self.bob, now: now) }
    }

    @Test func replacementIsByHigherSequenceThenGreaterIDWithinOneSignersSlot() {
        let now: UInt64 = 1_800_000_000
        let first = Self.value(Self.alice, sequence: 1, created: now)
        let second = Self.value(Self.alice, sequence: 2, created: now - 100, data: [9])
        #expect(second.supersedes(first) && !first.supersedes(second))
        // The same sequence with other data: the greater id wins, whichever a holder saw first.
        let a = Self.value(Self.alice, sequence: 5, created: now, data: [1]), b = Self.value(Self.alice, sequence: 5, created: now, data: [2])
        #expect(a.supersedes(b) != b.supersedes(a))
        #expect(a.supersedes(b) == b.id.lexicographicallyPrecedes(a.id))
        #expect(!a.supersedes(a))
        // Another slot, signer or key: no relation.
        #expect(!Self.value(Self.alice, slot: 1, sequence: 9, created: now).supersedes(first))
        #expect(!Self.value(Self.bob, sequence: 9, created: now).supersedes(first))
        #expect(!Self.value(Self.alice, key: [UInt8](repeating: 1, count: 20), sequence: 9, created: now).supersedes(first))
    }

    @Test func valueMessagesRoundTripAndPartsMustBeNumberedAsSplit() throws {
        let salt = [UInt8](repeating: 3, count: NodeCredential.saltSize)
        let key = try #require(NodeID(bytes: Self.key))
        let wire = Self.value(Self.alice, created: 1_800_000_000, data: [UInt8](repeating: 1, count: 30_000)).wireBytes
        let parts = ValuePart.split(wire, id: Sodium.sha256(wire))
        #expect(parts.count == 3 && parts.map(\.bytes.count) == [14_000, 14_000, wire.count - 28_000])
        #expect(parts.flatMap(\.bytes) == wire)
        let descriptor = ValueDescriptor(try SignedValue(wire: wire), id: Sodium.sha256(wire), length: wire.count)
        let bodies: [DHTMessage.Body] = [
            .valuePut(token: 5, key: key, part: parts[1]),
            .valueStored(.more, holderTime: 0), .valueStored(.outOfTime, holderTime: 1_800_000_000_123),
            .valueGet(token: 6, key: key, signer: nil, since: 0, skip: 0),
            .valueGet(token: 6, key: key, signer: Self.alice.publicKey.prefix(32).map { $0 | 1 }, since: 77, skip: 64),
            .valueList(total: 2, descriptors: [descriptor]), .valueList(total: 0, descriptors: []),
            .valueFetch(token: 7, key: key, id: descriptor.id, index: 2),
            .valuePart(.part, parts[2]), .valuePart(.notHeld, nil), .valuePart(.badToken, nil),
        ]
        for body in bodies {
            let message = DHTMessage(transaction: 9, salt: salt, body: body)
            #expect(try DHTMessage(parsing: message.bytes, transaction: 9) == message)
            // Every message of a value fits 32 pieces of the smallest datagram (§9).
            let pieces = DHTDatagram.encode(message, datagramSize: Pieces.minimumDatagramSize)
            #expect(pieces.count <= Pieces.maximumCount && pieces.allSatisfy { $0.count <= Pieces.minimumDatagramSize })
        }
        // A part cut otherwise than `split` cuts, or claiming more than the largest value, is malformed.
        var odd = parts[0]
        odd.bytes.removeLast()
        var bytes = DHTMessage(transaction: 9, salt: salt, body: .valuePut(token: 5, key: key, part: odd)).bytes
        #expect(throws: DHTError.self) { try DHTMessage(parsing: bytes, transaction: 9) }
        var huge = parts[0]
        huge.length = SignedValue.maximumWireSize + 1
        huge.count = Pieces.count(length: huge.length, pieceSize: ValuePart.size)
        bytes = DHTMessage(transaction: 9, salt: salt, body: .valuePut(token: 5, key: key, part: huge)).bytes
        #expect(throws: DHTError.self) { try DHTMessage(parsing: bytes, transaction: 9) }
    }

    /// Tests/Vectors/values.json, written by Tests/Vectors/gen_values.py: an independent encoder,
    /// and a signature by dilithium-py.
    struct Vectors: Decodable {
        struct Value: Decodable {
            var signer: String, slot: UInt32, sequence: UInt64, created: UInt64, lifetime: UInt32, type: UInt16, flags: UInt8, data: String
        }
        struct Message: Decodable { var name: String; var message: String }
        var seed: String, key: String, salt: String, transaction: String
        var value: Value
        var public_key_sha256: String, signed_bytes_sha256: String, wire: String, id: String
        var messages: [Message]
    }

    @Test func vectorsOfAnIndependentEncoderAndSignerReadAndEncodeByteExactly() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Vectors/values.json")
        let vectors = try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: url))
        let hex = MessageVectorTests.bytes
        let wire = hex(vectors.wire)
        let value = try SignedValue(wire: wire)
        let identity = try Identity(name: try IdentityName(vectors.value.signer), seed: hex(vectors.seed))
        #expect(value.publicKey == identity.publicKey)
        #expect(value.key == hex(vectors.key) && value.signer == identity.name && value.slot == vectors.value.slot)
        #expect(value.sequence == vectors.value.sequence && value.created == vectors.value.created)
        #expect(value.lifetime == vectors.value.lifetime && value.type == vectors.value.type && value.flags == vectors.value.flags)
        #expect(value.data == hex(vectors.value.data))
        #expect(Sodium.sha256(value.signedBytes) == hex(vectors.signed_bytes_sha256) && value.wireBytes == wire)
        #expect(value.id == hex(vectors.id) && value.signerID == hex(vectors.public_key_sha256))
        try value.verify(now: vectors.value.created)  // dilithium-py's signature
        let key = try #require(NodeID(bytes: hex(vectors.key)))
        let parts = ValuePart.split(wire, id: value.id)
        let descriptor = ValueDescriptor(value, id: value.id, length: wire.count)
        let bodies: [String: DHTMessage.Body] = [
            "value_put": .valuePut(token: 0x1122_3344_5566_7789, key: key, part: parts[0]),
            "value_stored": .valueStored(.more, holderTime: 0),
            "value_stored_out_of_time": .valueStored(.outOfTime, holderTime: 1_800_000_000_123),
            "value_get": .valueGet(token: 0x1122_3344_5566_7789, key: key, signer: nil, since: 0, skip: 0),
            "value_get_signer_since": .valueGet(token: 0x1122_3344_5566_7789, key: key, signer: value.signerID, since: 7, skip: 64),
            "value_list": .valueList(total: 1, descriptors: [descriptor]),
            "value_fetch": .valueFetch(token: 0x1122_3344_5566_7789, key: key, id: value.id, index: 0),
            "value_part": .valuePart(.part, parts[0]),
            "value_part_not_held": .valuePart(.notHeld, nil),
            "value_listen": .valueListen(token: 0x1122_3344_5566_7789, key: key, signer: value.signerID, listener: 0x0A0B_0C0D_0E0F_1011),
            "value_listening": .valueListening(.listening, lifetime: 600),
            "value_notify": .valueNotify(listener: 0x0A0B_0C0D_0E0F_1011, key: key, descriptors: [descriptor]),
        ]
        #expect(vectors.messages.count == bodies.count)
        let transaction = UInt64(vectors.transaction, radix: 16) ?? 0
        for vector in vectors.messages {
            let message = DHTMessage(transaction: transaction, salt: hex(vectors.salt), body: try #require(bodies[vector.name]))
            #expect(message.bytes == hex(vector.message), "\(vector.name)")
            #expect(try DHTMessage(parsing: hex(vector.message), transaction: transaction) == message, "\(vector.name)")
        }
    }

    // MARK: Holder rules

    /// A client that talks to one node with raw datagrams: a PING for the token, then requests.
    struct Client {
        let node: DHTNode
        let endpoint: Endpoint
        let network: SimulatedNetwork
        let salt: [UInt8]
        var transaction: UInt64 = 100
        var token: UInt64 = 0

        /// A client at `endpoint`, with the node id of `salt` (a new one when nil).
        init(_ node: DHTNode, in network: SimulatedNetwork, endpoint: Endpoint = Endpoint(host: "198.51.100.9", port: 999)!,
             salt: [UInt8]? = nil) {
            self.node = node
            self.network = network
            self.endpoint = endpoint
            self.salt = salt ?? NodeCredential.generate(difficulty: 4).salt
            if case .pong(_, let token)? = send(.ping).first { self.token = token }
        }

        @discardableResult
        func send(_ body: DHTMessage.Body, transaction: UInt64 = 1) -> [DHTMessage.Body] {
            for datagram in DHTDatagram.encode(DHTMessage(transaction: transaction, salt: salt, body: body)) {
                node.receive(datagram, from: endpoint, now: network.now)
            }
            var pieces = PieceCollector()
            var answers: [DHTMessage.Body] = []
            for (to, datagram) in node.takeDatagrams() where to == endpoint {
                guard let piece = try? DHTDatagram.parse(datagram) else { continue }
                guard let bytes = pieces.message(piece) else { continue }
                if let message = try? DHTMessage(parsing: bytes, transaction: piece.transaction) { answers.append(message.body) }
            }
            return answers
        }

        /// Every part of `value`, each its own request; the answers' statuses.
        mutating func put(_ value: SignedValue, key: [UInt8]? = nil, token: UInt64? = nil) -> [ValueStatus] {
            let wire = value.wireBytes
            guard let nodeKey = NodeID(bytes: key ?? value.key) else { return [] }
            return ValuePart.split(wire, id: Sodium.sha256(wire)).flatMap { part -> [ValueStatus] in
                transaction += 1
                return send(.valuePut(token: token ?? self.token, key: nodeKey, part: part), transaction: transaction).compactMap {
                    if case .valueStored(let status, _) = $0 { status } else { nil }
                }
            }
        }

        func list(signer: [UInt8]? = nil, since: UInt64 = 0, skip: Int = 0) -> (total: Int, descriptors: [ValueDescriptor])? {
            guard let key = NodeID(bytes: ValueTests.key),
                  case .valueList(let total, let descriptors)? = send(.valueGet(token: token, key: key, signer: signer, since: since, skip: skip)).first
            else { return nil }
            return (total, descriptors)
        }
    }

    @Test func holdersKeepTheFreshestValuePerSignerAndSlotWithinTheirQuotas() throws {
        var configuration = SimulationTests.configuration()
        configuration.valuesPerSigner = 3
        let network = SimulationTests.network(5, seed: 41, configuration: configuration)
        let node = try #require(network.node(network.order[2]))
        var client = Client(node, in: network)
        let now = network.now / 1000
        let second = Self.value(Self.alice, sequence: 2, created: now)
        #expect(client.put(second) == [.stored])
        #expect(client.put(second) == [.stored])  // the same again: refreshed
        #expect(client.put(Self.value(Self.alice, sequence: 1, created: now, data: [1])) == [.older])
        #expect(client.put(Self.value(Self.alice, sequence: 3, created: now, data: [3])) == [.stored])
        #expect(node.localValues(try #require(NodeID(bytes: Self.key)), now: network.now).map(\.data) == [[3]])
        // The same sequence twice with other data: every holder keeps the greater id, in either order.
        let x = Self.value(Self.alice, slot: 1, sequence: 4, created: now, data: [4]), y = Self.value(Self.alice, slot: 1, sequence: 4, created: now, data: [5])
        let winner = x.supersedes(y) ? x : y, loser = x.supersedes(y) ? y : x
        #expect(client.put(loser) == [.stored] && client.put(winner) == [.stored] && client.put(loser) == [.older])
        // Bob writes at the same key (multi-writer): both signers' slots are listed.
        #expect(client.put(Self.value(Self.bob, sequence: 1, created: now)) == [.stored])
        let listed = try #require(client.list())
        #expect(listed.total == 3 && listed.descriptors.count == 3)
        #expect(try #require(client.list(signer: Self.bob.publicKey.isEmpty ? nil : SignedValue.signerID(of: Self.bob.publicKey))).total == 1)
        #expect(try #require(client.list(since: 3)).descriptors.map(\.sequence) == [4])
        // A tombstone deletes the slot and is listed as such.
        #expect(client.put(Self.value(Self.alice, sequence: 5, created: now, flags: SignedValue.tombstoneFlag, data: [])) == [.stored])
        #expect(client.list()?.descriptors.contains { $0.slot == 0 && $0.flags & SignedValue.tombstoneFlag != 0 } == true)
        // Alice's share here is 3 values: a fourth slot is over quota; replacing one of hers is not.
        #expect(client.put(Self.value(Self.alice, slot: 2, created: now)) == [.stored])
        #expect(client.put(Self.value(Self.alice, slot: 3, created: now)) == [.quota])
        #expect(client.put(Self.value(Self.alice, slot: 2, sequence: 2, created: now)) == [.stored])
        // Refused: a bad token, another key than the value's, a forged signature, times off the holder's clock.
        #expect(client.put(Self.value(Self.bob, slot: 1, created: now), token: client.token ^ 1) == [.badToken])
        #expect(client.put(Self.value(Self.bob, slot: 1, created: now), key: [UInt8](repeating: 2, count: 20)) == [.invalid])
        var forged = Self.value(Self.bob, slot: 1, created: now)
        forged.data = [6]
        #expect(client.put(forged) == [.invalid])
        #expect(client.put(Self.value(Self.bob, slot: 1, created: now + 700)) == [.outOfTime])
        #expect(client.put(Self.value(Self.bob, slot: 1, created: now - 4000, lifetime: 3600)) == [.outOfTime])
        #expect(node.statistics.refusedValues >= 6)
        // Values end with their lifetime (carried in the value, so every holder agrees).
        network.run(for: 3_000_000)
        #expect(node.valueCount == 4)
        network.run(for: 1_000_000)  // (expired values go at the next refresh)
        #expect(node.valueCount == 0)
    }

    /// Replaced values are kept 60 s for listeners' fetches (§10.5), 256 at most: one source that
    /// rewrites its slot 300 times displaces its own replaced values, not another source's. (Before,
    /// the oldest went first whoever put it: bob's replaced value was gone, VALUE_FETCH "not held".)
    @Test func aSourceRewritingItsSlotFastDisplacesOnlyItsOwnReplacedValues() throws {
        let network = SimulationTests.network(5, seed: 43)
        let node = try #require(network.node(network.order[2]))
        var honest = Client(node, in: network, endpoint: try #require(Endpoint(host: "198.51.100.9", port: 999)))
        var flooder = Client(node, in: network, endpoint: try #require(Endpoint(host: "203.0.113.7", port: 999)))
        let now = network.now / 1000
        let first = Self.value(Self.bob, sequence: 1, created: now, data: [1])
        #expect(honest.put(first) == [.stored] && honest.put(Self.value(Self.bob, sequence: 2, created: now, data: [2])) == [.stored])
        var flood: [SignedValue] = []  // (signatures are randomized: each value is kept to be fetched by its id)
        for sequence in 1...300 {
            network.run(for: 80)  // a put is 5 pieces, each counted against the source's rate (§5.5): 12.5 puts a second
            flood.append(Self.value(Self.alice, sequence: UInt64(sequence), created: now, data: [UInt8(truncatingIfNeeded: sequence)]))
            let status = flooder.put(flood[sequence - 1])
            #expect(status == [.stored], "put \(sequence): \(status)")
            if status != [.stored] { break }
        }
        let key = try #require(NodeID(bytes: Self.key))
        func fetch(_ value: SignedValue, by client: Client) -> Bool {
            guard case .valuePart(.part, _)? = client.send(.valueFetch(token: client.token, key: key, id: value.id, index: 0)).first
            else { return false }
            return true
        }
        #expect(fetch(first, by: honest), "bob's replaced value was displaced by another source's rewrites")
        // The flooder's most recent replaced values are kept, its oldest are not; its held one is served.
        #expect(fetch(flood[298], by: flooder) && !fetch(flood[0], by: flooder) && fetch(flood[299], by: flooder))
    }

    @Test func aValueOfManyPartsIsStoredWhenItsLastPartComesAndUploadsAreBounded() throws {
        var configuration = SimulationTests.configuration()
        configuration.valueUploadsPerSource = 1
        let network = SimulationTests.network(5, seed: 42, configuration: configuration)
        let node = try #require(network.node(network.order[1]))
        var client = Client(node, in: network)
        let now = network.now / 1000
        let large = Self.value(Self.alice, created: now, data: [UInt8](repeating: 0x5A, count: SignedValue.maximumDataSize))
        #expect(client.put(large) == [.more, .more, .more, .more, .more, .stored])
        #expect(node.localValues(try #require(NodeID(bytes: Self.key)), now: network.now) == [large])
        // Held already: its first part answers at once.
        let wire = large.wireBytes, id = Sodium.sha256(wire)
        let first = ValuePart.split(wire, id: id)[0]
        #expect(client.send(.valuePut(token: client.token, key: try #require(NodeID(bytes: Self.key)), part: first)) == [.valueStored(.stored, holderTime: 0)])
        // A second upload from the same source while one is under way: busy (this holder's share is 1).
        let other = Self.value(Self.bob, created: now, data: [UInt8](repeating: 1, count: 20_000)).wireBytes
        let otherParts = ValuePart.split(other, id: Sodium.sha256(other))
        let third = Self.value(Self.bob, slot: 1, created: now, data: [UInt8](repeating: 2, count: 20_000)).wireBytes
        let key = try #require(NodeID(bytes: Self.key))
        #expect(client.send(.valuePut(token: client.token, key: key, part: otherParts[0]), transaction: 50) == [.valueStored(.more, holderTime: 0)])
        #expect(client.send(.valuePut(token: client.token, key: key, part: ValuePart.split(third, id: Sodium.sha256(third))[0]),
                            transaction: 51) == [.valueStored(.busy, holderTime: 0)])
        // Parts whose bytes do not hash to the id they claim: invalid once whole.
        var lying = otherParts[1]
        lying.bytes[0] ^= 1
        network.run(for: 11_000)  // the unfinished upload expires
        var liar = Client(node, in: network, endpoint: Endpoint(host: "198.51.100.10", port: 999)!)
        #expect(liar.send(.valuePut(token: liar.token, key: key, part: otherParts[0]), transaction: 60) == [.valueStored(.more, holderTime: 0)])
        #expect(liar.send(.valuePut(token: liar.token, key: key, part: lying), transaction: 61) == [.valueStored(.invalid, holderTime: 0)])
        liar.transaction += 1
        // Fetches serve exactly the parts of what is held, and only with a token.
        let fetched = (0..<6).compactMap { index -> ValuePart? in
            if case .valuePart(.part, let part)? = client.send(.valueFetch(token: client.token, key: key, id: id, index: index), transaction: 70 + UInt64(index)).first { part } else { nil }
        }
        #expect(fetched.flatMap(\.bytes) == wire)
        #expect(client.send(.valueFetch(token: client.token ^ 1, key: key, id: id, index: 0)) == [.valuePart(.badToken, nil)])
        #expect(client.send(.valueFetch(token: client.token, key: key, id: [UInt8](repeating: 0, count: 32), index: 0)) == [.valuePart(.notHeld, nil)])
    }

    // MARK: Put and get through a network

    static func putResult(_ network: SimulatedNetwork, _ endpoint: Endpoint, _ id: LookupID, limit: UInt64 = 120_000) -> ValuePutResult? {
        let end = network.now + limit
        while network.now < end {
            for case .valuePut(let done, let result) in network.events[endpoint] ?? [] where done == id { return result }
            network.run(for: 50)
        }
        return nil
    }

    static func getResult(_ network: SimulatedNetwork, _ endpoint: Endpoint, _ id: LookupID, limit: UInt64 = 120_000) -> ValueGetResult? {
        let end = network.now + limit
        while network.now < end {
            for case .valuesGot(let done, let result) in network.events[endpoint] ?? [] where done == id { return result }
            network.run(for: 50)
        }
        return nil
    }

    @Test func valuesOfEverySizeArePutAndGotThroughALossyNetwork() throws {
        let network = SimulationTests.network(120, seed: 43)
        network.loss = 0.1
        var random = SimRandom(seed: 5)
        let sizes = [0, 1, 100, 1_000, 8_000, 14_000, 30_000, 50_000, SignedValue.maximumDataSize]
        var stored: [Int] = []
        for (index, size) in sizes.enumerated() {
            let writer = network.order[Int(random.next() % 120)], reader = network.order[Int(random.next() % 120)]
            let key = Array(Sodium.sha256([UInt8(index)]).prefix(20))
            let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }
            let value = Self.value(Announced.identities[index], key: key, sequence: UInt64(index + 1), created: network.now / 1000, data: data)
            let node = try #require(network.node(writer))
            let putID = try node.putValue(value, now: network.now)
            network.flush(writer)
            let put = try #require(Self.putResult(network, writer, putID))
            stored.append(put.stored)
            let nodeKey = try #require(NodeID(bytes: key))
            let got = try #require(Self.getResult(network, reader, network.start(reader) { $0.getValues(nodeKey, now: network.now) }))
            #expect(got.values == [value], "a value of \(size) bytes: got \(got.values.map(\.data.count)) from \(got.listed) holders")
            #expect(got.refused == 0)
        }
        #expect(stored.allSatisfy { $0 >= 15 }, "holders per put: \(stored)")
    }
}


// MARK: Listening (§10.5)

extension ValueTests {
    static func changes(_ network: SimulatedNetwork, _ endpoint: Endpoint, _ listen: UInt64) -> [SignedValue] {
        (network.events[endpoint] ?? []).compactMap { if case .valueChanged(let id, let value) = $0, id == listen { value } else { nil } }
    }

    static func expiries(_ network: SimulatedNetwork, _ endpoint: Endpoint, _ listen: UInt64) -> [SignedValue] {
        (network.events[endpoint] ?? []).compactMap { if case .valueExpired(let id, let value) = $0, id == listen { value } else { nil } }
    }

    @Test func aListenerHearsEveryUpdateOnceInSequenceOrderAndTheExpiry() throws {
        let network = SimulationTests.network(100, seed: 44)
        network.loss = 0.1
        let key = try #require(NodeID(bytes: Self.key))
        let listener = network.order[17], writers = [network.order[40], network.order[71]]
        // A value written before the listener starts is reported by its first get.
        let before = Self.value(Self.bob, slot: 0, sequence: 1, created: network.now / 1000, lifetime: 600, data: [0])
        let first = try #require(network.node(writers[1])).putValue(before, now: network.now)
        network.flush(writers[1])
        #expect(Self.putResult(network, writers[1], first)?.stored ?? 0 >= 15)
        let node = try #require(network.node(listener))
        let listen = node.listen(key, now: network.now)
        network.flush(listener)
        network.run(for: 3_000)
        #expect(Self.changes(network, listener, listen) == [before])
        // Alice's slot 0 written five times, one write every 3 s, from two nodes in turn; bob's slot
        // deleted: each is pushed by the holders and reported once, in order.
        var written: [SignedValue] = []
        for sequence in 1...5 {
            let value = Self.value(Self.alice, sequence: UInt64(sequence), created: network.now / 1000, lifetime: 600, data: [UInt8(sequence)])
            let writer = writers[sequence % 2]
            let id = try #require(network.node(writer)).putValue(value, now: network.now)
            network.flush(writer)
            #expect(Self.putResult(network, writer, id) != nil)
            written.append(value)
            network.run(for: 3_000)
        }
        let tombstone = Self.value(Self.bob, sequence: 2, created: network.now / 1000, lifetime: 300, flags: SignedValue.tombstoneFlag, data: [])
        let deletion = try #require(network.node(writers[0])).putValue(tombstone, now: network.now)
        network.flush(writers[0])
        #expect(Self.putResult(network, writers[0], deletion) != nil)
        network.run(for: 3_000)
        let heard = Self.changes(network, listener, listen)
        #expect(heard == [before] + written + [tombstone], "heard sequences \(heard.map { ($0.signer.description, $0.sequence) })")
        // The values' lifetimes end (600 s after creation; the tombstone's 300 s): each expiry once.
        network.loss = 0
        network.run(for: 700_000)
        let ended = Self.expiries(network, listener, listen)
        #expect(Set(ended.map(\.id)) == Set([written[4].id, tombstone.id]) && ended.count == 2, "\(ended.map(\.sequence))")
        #expect(Self.changes(network, listener, listen).count == heard.count)  // renewals report nothing twice
        // Holders keep subscriptions bounded, and a cancelled listener hears nothing more.
        node.cancelListen(listen)
        let later = Self.value(Self.alice, sequence: 9, created: network.now / 1000, data: [9])
        let id = try #require(network.node(writers[0])).putValue(later, now: network.now)
        network.flush(writers[0])
        _ = Self.putResult(network, writers[0], id)
        network.run(for: 3_000)
        #expect(Self.changes(network, listener, listen).count == heard.count)
    }
}

extension ValueTests {
    @Test func aListenerOfOneSignerHearsThatSignersChangesOnly() throws {
        let network = SimulationTests.network(12, seed: 45)
        let key = try #require(NodeID(bytes: Self.key))
        let listener = network.order[5], writer = network.order[10]
        func put(_ value: SignedValue) throws {
            let id = try #require(network.node(writer)).putValue(value, now: network.now)
            network.flush(writer)
            #expect(Self.putResult(network, writer, id)?.stored ?? 0 >= 10)
        }
        let first = Self.value(Self.alice, sequence: 1, created: network.now / 1000, data: [1])
        try put(first)
        let node = try #require(network.node(listener))
        let everyone = try #require(network.node(network.order[6])).listen(key, now: network.now)
        network.flush(network.order[6])
        let listen = node.listen(key, query: ValueQuery(signer: first.signerID), now: network.now)
        network.flush(listener)
        network.run(for: 1_000)
        try put(Self.value(Self.bob, sequence: 1, created: network.now / 1000, data: [2]))
        network.run(for: 1_000)
        let tombstone = Self.value(Self.alice, sequence: 2, created: network.now / 1000, lifetime: 60, flags: SignedValue.tombstoneFlag, data: [])
        try put(tombstone)
        network.run(for: 1_000)
        #expect(Self.changes(network, listener, listen) == [first, tombstone])
        #expect(Self.changes(network, network.order[6], everyone).count == 3)
    }
}

extension ValueTests {
    /// Writes close together: holders push while the listener's get from them runs; the newest value
    /// still comes within seconds (each holder is asked again when its get ends), not at the renewal.
    @Test func writesInQuickSuccessionReachTheListenerWithoutWaitingForTheRenewal() throws {
        let network = SimulationTests.network(60, seed: 46)
        let key = try #require(NodeID(bytes: Self.key))
        let listener = network.order[8], writer = network.order[33]
        let listen = try #require(network.node(listener)).listen(key, now: network.now)
        network.flush(listener)
        network.run(for: 2_000)
        var last: SignedValue?
        for round in 0..<5 {
            // Two writes of one slot and one of another, all at once.
            let values = [Self.value(Self.alice, sequence: UInt64(2 * round + 1), created: network.now / 1000, data: [1]),
                          Self.value(Self.alice, sequence: UInt64(2 * round + 2), created: network.now / 1000, data: [2]),
                          Self.value(Self.bob, slot: 1, sequence: UInt64(round + 1), created: network.now / 1000, data: [3])]
            for value in values { _ = try #require(network.node(writer)).putValue(value, now: network.now) }
            network.flush(writer)
            network.run(for: 3_000)
            last = values[1]
            let heard = Self.changes(network, listener, listen)
            let newest = heard.filter { $0.signer == Self.alice.name }.last
            #expect(newest == last, "round \(round): heard alice's \(heard.filter { $0.signer == Self.alice.name }.map(\.sequence))")
            #expect(heard.filter { $0.signer == Self.bob.name }.last == values[2], "round \(round)")
            // Never an older value after a newer one, never one twice.
            let sequences = heard.filter { $0.signer == Self.alice.name }.map(\.sequence)
            #expect(sequences == sequences.sorted() && Set(sequences).count == sequences.count)
        }
    }
}

extension ValueTests {
    /// Listeners cancelled 0-975 ms after they started (some while the get that follows their
    /// lookup runs): their gets end without a `valuesGot` event, which no caller waits for (the
    /// driver kept each one; 7 of 40 came before).
    @Test func aCancelledListenersGetEndsWithoutAnEvent() throws {
        let network = SimulationTests.network(60, seed: 48)
        let node = try #require(network.node(network.order[8]))
        let writer = try #require(network.node(network.order[33]))
        for index in 0..<40 {
            let key = Array(Sodium.sha256(Array("cancelled \(index)".utf8)).prefix(20))
            _ = try writer.putValue(Self.value(Self.alice, key: key, sequence: 1, created: network.now / 1000, data: [1]), now: network.now)
        }
        network.flush(network.order[33])
        network.run(for: 3_000)
        for index in 0..<40 {
            let key = try #require(NodeID(bytes: Array(Sodium.sha256(Array("cancelled \(index)".utf8)).prefix(20))))
            let listen = node.listen(key, now: network.now)
            network.flush(network.order[8])
            network.run(for: UInt64(25 * index))
            node.cancelListen(listen)
        }
        network.run(for: 5_000)
        let unclaimed = (network.events[network.order[8]] ?? []).filter { if case .valuesGot = $0 { true } else { false } }
        #expect(unclaimed.isEmpty, "\(unclaimed.count) gets of cancelled listeners reported")
    }
}
