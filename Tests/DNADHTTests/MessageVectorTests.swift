@testable import DNADHT
import DNACrypto
import Foundation
import Testing

/// The DHT messages of docs/PROTOCOL.md §5.1, byte for byte (vectors written by an independent
/// Python encoder).
@Suite struct MessageVectorTests {
    struct Vectors: Decodable {
        struct Message: Decodable { var name: String; var message: String; var datagram: String }
        var transaction: String
        var salt: String
        var messages: [Message]
    }

    static func bytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex, let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) {
            out.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return out
    }

    static func load() throws -> Vectors {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Vectors/dht.json")
        return try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: url))
    }

    @Test func vectorsEncodeAndDecodeByteExactly() throws {
        let vectors = try Self.load()
        let salt = Self.bytes(vectors.salt)
        let transaction = UInt64(vectors.transaction, radix: 16) ?? 0
        let peer = try #require(Endpoint(host: "192.0.2.1", port: 4567))
        let bob = NodeID.key(of: try IdentityName("bob"))
        let contact = Contact(id: try #require(NodeID(bytes: Array(0x10...0x23))), endpoint: try #require(Endpoint(host: "198.51.100.7", port: 4000)))
        let bodies: [String: DHTMessage.Body] = [
            "ping": .ping,
            "pong": .pong(observed: peer, token: 0x1122_3344_5566_7789),
            "find_node": .findNode(target: try #require(NodeID(bytes: Array(0xA0...0xB3))), token: 0),
            "nodes": .nodes(observed: peer, token: 0x1122_3344_5566_7789, held: 1_800_000_000, contacts: [contact]),
            "stored": .stored(.taken),
            // Signaling (§5.6): the key is bob's, the signal id 0a0b...11, the relay id 2122...28.
            "signal": .signal(token: 0x1122_3344_5566_7789, key: bob, id: 0x0A0B_0C0D_0E0F_1011, payload: Array("offer".utf8)),
            "signal_ack": .signalAck(.forwarded),
            "forward": .forward(relay: 0x2122_2324_2526_2728, origin: peer, key: bob, id: 0x0A0B_0C0D_0E0F_1011, payload: Array("offer".utf8)),
            "reply": .reply(relay: 0x2122_2324_2526_2728, payload: Array("answer".utf8)),
            "deliver": .deliver(id: 0x0A0B_0C0D_0E0F_1011, from: contact.endpoint, payload: Array("answer".utf8)),
        ]
        #expect(vectors.messages.count == bodies.count)
        for vector in vectors.messages {
            let body = try #require(bodies[vector.name])
            let message = DHTMessage(transaction: transaction, salt: salt, body: body)
            #expect(message.bytes == Self.bytes(vector.message), "\(vector.name)")
            #expect(DHTDatagram.encode(message) == [Self.bytes(vector.datagram)], "\(vector.name)")
            let piece = try DHTDatagram.parse(Self.bytes(vector.datagram))
            #expect(try DHTMessage(parsing: Array(piece.bytes), transaction: piece.transaction) == message, "\(vector.name)")
        }
    }

    @Test func everyTruncationAndBitFlipOfAMessageIsRefusedOrReadsBackDifferently() throws {
        let vectors = try Self.load()
        for vector in vectors.messages {
            let datagram = Self.bytes(vector.datagram)
            for length in 0..<datagram.count {
                #expect(throws: DHTError.self) { try DHTDatagram.parse(Array(datagram.prefix(length))) }
            }
            for bit in 0..<datagram.count * 8 {
                var flipped = datagram
                flipped[bit / 8] ^= 1 << UInt8(bit % 8)
                #expect(throws: DHTError.self) { try DHTDatagram.parse(flipped) }  // the CRC and the zero fields catch it
            }
        }
    }
}
