@testable import DNACrypto
import DNAWire
import Testing

/// The handshake across a path that silently drops datagrams over a size (a path MTU black hole:
/// docs/PROTOCOL.md §9): each side steps down through `Pieces.datagramSizes` and tells its session
/// the size that went through.
@Suite struct HandshakePathSizeTests {
    /// Runs a handshake whose datagrams larger than `toResponder` / `toInitiator` bytes vanish.
    static func run(toResponder: Int, toInitiator: Int, configuration: HandshakeConfiguration = HandshakeConfiguration())
        throws -> (link: HandshakeLink, finishedAt: UInt64) {
        var link = try HandshakeTests.link(configuration: configuration)
        var finishedAt: UInt64 = .max
        link.run(limit: 20_000) { direction, datagram in
            datagram.count > (direction == .toResponder ? toResponder : toInitiator) ? nil : datagram
        }
        if link.initiator.isFinished { finishedAt = link.now }
        return (link, finishedAt)
    }

    // (largest datagram that passes: an IPv4 MTU less 28 bytes of IPv4 and UDP headers, the size
    // both sides end at)
    @Test(arguments: [(1122, 900), (972, 900), (548, 500)])
    func aHandshakeCrossesABlackHoleAndBothSidesKnowTheSize(limit: Int, expected: Int) throws {
        let (link, finishedAt) = try Self.run(toResponder: limit, toInitiator: limit)
        #expect(link.initiator.isFinished, "MTU \(limit + 28): \(link.initiatorErrors) \(link.responderErrors)")
        let client = try #require(link.initiator.session)
        let server = try #require(link.responderSessions.first)
        #expect(client.datagramSize == expected && server.datagramSize == expected)
        // The first retransmission (500 ms) carries probes of the next size; their acknowledgement
        // with no large piece acknowledged moves the sender down: one timer per step.
        #expect(finishedAt <= (expected == 900 ? 600 : 1_600), "finished at \(finishedAt) ms")
        let message = (0..<3000).map { UInt8(truncatingIfNeeded: $0) }
        #expect(try server.opener.open(try client.sealer.seal(type: .data, plaintext: message)).plaintext == message)
        print("MTU \(limit + 28): handshake in \(finishedAt) ms of virtual time, \(link.sent.count) datagrams, size \(expected)")
    }

    @Test func onlyTheDirectionThatLosesLargeDatagramsStepsDownAndTheOtherFollows() throws {
        // The initiator's large datagrams pass; the responder's do not.
        let (link, _) = try Self.run(toResponder: 1200, toInitiator: 972)
        #expect(link.initiator.isFinished)
        // Message 3 starts no larger than message 2 came: the initiator follows the responder.
        #expect(link.initiator.session?.datagramSize == 900 && link.responderSessions.first?.datagramSize == 900)
        let toInitiator = link.sent.filter { $0.0 == .toInitiator }.map(\.1.count)
        #expect(toInitiator.contains(1200) && toInitiator.contains { $0 > 500 && $0 <= 900 })
    }

    @Test func aPathThatCarriesFullDatagramsKeepsThemThroughLoss() throws {
        // The first copy of every piece of 1,200 bytes is lost (loss, not a black hole: the copies
        // sent again arrive): the size stays 1,200.
        var link = try HandshakeTests.link()
        var seen = Set<[UInt8]>()
        link.run(limit: 20_000) { _, datagram in
            datagram.count == 1200 && seen.insert(datagram).inserted ? nil : datagram
        }
        #expect(link.initiator.isFinished)
        #expect(link.initiator.session?.datagramSize == 1200 && link.responderSessions.first?.datagramSize == 1200)
        #expect(link.sent.allSatisfy { $0.1.count <= 1200 })
    }

    @Test func noStepBelowTheSmallestSize() throws {
        // Nothing above 400 bytes passes: the handshake fails in its time, never cut below 500 bytes.
        let (link, _) = try Self.run(toResponder: 400, toInitiator: 400)
        #expect(!link.initiator.isFinished)
        #expect(link.initiatorErrors.contains { if case .timeout = $0 { true } else { false } })
        let pieceSizes = link.sent.compactMap { try? HandshakeDatagram(parsing: $0.1) }.compactMap { datagram -> Int? in
            guard case .piece(_, _, _, let count, _, _) = datagram, count > 1 else { return nil }
            return datagram.pieceSize
        }
        #expect(Set(pieceSizes) == [1156, 856, 456])
    }

    @Test func acknowledgementsNameTheirPieceSize() throws {
        let base = HandshakeDatagram.ack(session: 7, kind: .response, count: 4, received: 0b1011)
        #expect(base.count == 32 + 12)
        #expect(try HandshakeDatagram(parsing: base) == .ack(session: 7, kind: .response, count: 4,
                                                              pieceSize: HandshakeDatagram.pieceSize, received: 0b1011))
        let small: [UInt8] = HandshakeDatagram.ack(session: 7, kind: .response, count: 10, pieceSize: 456, received: 0b11)
        #expect(small.count == 32 + 14)
        #expect(try HandshakeDatagram(parsing: small) == .ack(session: 7, kind: .response, count: 10, pieceSize: 456, received: 0b11))
        // A piece size of 1,156 or more is never written out, so it is refused; so is 0.
        for size in [0, 1156, 1157, 65535] {
            var payload = Array(small[32...])
            payload[12] = UInt8(size >> 8)
            payload[13] = UInt8(size & 0xFF)
            let frame = try FrameEncoder.encode(type: .handshakeAck, sequence: 0, payload: payload)
            #expect(throws: HandshakeError.self) { try HandshakeDatagram(parsing: frame) }
        }
    }
}
