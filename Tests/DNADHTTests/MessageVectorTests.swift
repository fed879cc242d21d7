@testable import DNADHT
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
        let contact = Contact(id: try #require(NodeID(bytes: Array(0x10...0x23))), endpoint: try #require(Endpoint(host: "198.51.100.7", port: 4000)))
        let bodies: [String: DHTMessage.Body] = [
            "ping": .ping,
            "pong": .pong(observed: peer, token: 0x1122_3344_5566_7789),
            "find_node": .findNode(target: try #require(NodeID(bytes: Array(0xA0...0xB3))), token: 0),
            "nodes": .nodes(observed: peer, token: 0x1122_3344_5566_7789, held: 1_800_000_000, contacts: [contact]),
            "stored": .stored(.taken),
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
