@testable import DNACrypto
import DNAWire
import Testing

/// Modified, replayed, misdirected and flooded handshakes.
@Suite struct HandshakeAdversaryTests {
    static let alice = HandshakeTests.alice
    static let bob = HandshakeTests.bob

    /// One handshake stopped at each step, and its three messages.
    struct Steps {
        /// The initiator after sending message 1.
        let initiator: HandshakeInitiator
        /// The responder after sending message 2.
        let responder: HandshakeResponder<String>
        let session: UInt32
        let datagrams: [[UInt8]]
        let messages: [HandshakeKind: [UInt8]]
    }

    static func steps() throws -> Steps {
        let initiator = try HandshakeInitiator(identity: alice, responderName: bob.name, responderPublicKey: bob.publicKey, now: 0)
        let beforeResponse = initiator.snapshot()
        let responder = HandshakeResponder<String>(identity: bob)
        let first = initiator.takeDatagrams()
        for datagram in first { try responder.receive(datagram, from: "a", now: 0) }
        let beforeConfirmation = responder.snapshot()
        let second = responder.takeDatagrams().map(\.1)
        for datagram in second { try initiator.receive(datagram, now: 0) }
        let third = initiator.takeDatagrams()
        var parts: [HandshakeKind: [Int: ArraySlice<UInt8>]] = [:]
        for datagram in first + second + third {
            if case .piece(_, let kind, let index, _, _, let bytes) = try HandshakeDatagram(parsing: datagram) {
                parts[kind, default: [:]][index] = bytes
            }
        }
        let messages = parts.mapValues { pieces in pieces.keys.sorted().flatMap { pieces[$0] ?? [] } }
        return Steps(initiator: beforeResponse, responder: beforeConfirmation, session: initiator.sessionID,
                     datagrams: first + second + third, messages: messages)
    }

    static func flip(_ bytes: [UInt8], bit: Int) -> [UInt8] {
        var copy = bytes
        copy[bit / 8] ^= 1 << UInt8(bit % 8)
        return copy
    }

    /// Every single-bit change of message 1, sent in valid pieces (an attacker recomputes the CRC):
    /// the responder refuses it, or answers and the initiator's signature check fails. Eight lanes
    /// run in parallel, each taking the bits of one position in the byte.
    @Test(arguments: 0..<8)
    func everyBitFlipInTheInitiationIsRejected(lane: Int) throws {
        let steps = try Self.steps()
        let initiation = try #require(steps.messages[.initiation])
        var outcomes: [String: Int] = [:]
        for bit in stride(from: lane, to: initiation.count * 8, by: 8) {
            let responder = HandshakeResponder<String>(identity: Self.bob)
            var error: HandshakeError?
            do {
                for piece in HandshakeDatagram.pieces(of: Self.flip(initiation, bit: bit), session: steps.session, kind: .initiation) {
                    try responder.receive(piece, from: "a", now: 0)
                }
            } catch let caught { error = caught }
            if error != nil {
                #expect(responder.pendingCount == 0, "bit \(bit): state left after \(String(describing: error))")
            } else {
                let initiator = steps.initiator.snapshot()
                do { for (_, datagram) in responder.takeDatagrams() { try initiator.receive(datagram, now: 0) } } catch let caught {
                    error = caught
                }
                #expect(initiator.session == nil && initiator.failure != nil, "bit \(bit)")
            }
            #expect(error != nil, "bit \(bit) of the initiation went through")
            #expect(responder.takeSessions().isEmpty)
            outcomes["\(error.map { "\($0)".prefix(while: { $0 != "(" }) } ?? "none")", default: 0] += 1
        }
        #expect(outcomes["none"] == nil, "\(outcomes)")
    }

    /// Every single-bit change of message 2 in valid pieces: the initiator refuses it, keeps no session.
    @Test(arguments: 0..<8)
    func everyBitFlipInTheResponseIsRejected(lane: Int) throws {
        let steps = try Self.steps()
        let response = try #require(steps.messages[.response])
        for bit in stride(from: lane, to: response.count * 8, by: 8) {
            let initiator = steps.initiator.snapshot()
            #expect(throws: HandshakeError.self, "bit \(bit)") {
                for piece in HandshakeDatagram.pieces(of: Self.flip(response, bit: bit), session: steps.session, kind: .response) {
                    try initiator.receive(piece, now: 0)
                }
            }
            #expect(initiator.session == nil && initiator.failure != nil, "bit \(bit)")
        }
    }

    /// Every single-bit change of message 3 in valid pieces: the responder refuses it and drops the handshake.
    @Test(arguments: 0..<8)
    func everyBitFlipInTheConfirmationIsRejected(lane: Int) throws {
        let steps = try Self.steps()
        let confirmation = try #require(steps.messages[.confirmation])
        for bit in stride(from: lane, to: confirmation.count * 8, by: 8) {
            let responder = steps.responder.snapshot()
            #expect(throws: HandshakeError.authenticationFailed, "bit \(bit)") {
                for piece in HandshakeDatagram.pieces(of: Self.flip(confirmation, bit: bit), session: steps.session,
                                                      kind: .confirmation) {
                    try responder.receive(piece, from: "a", now: 0)
                }
            }
            #expect(responder.pendingCount == 0 && responder.takeSessions().isEmpty, "bit \(bit)")
        }
    }

    /// Every single-bit change of every datagram as sent (pieces and acknowledgements alike) is
    /// refused when parsed: the CRC-32 covers the payload, and the header's other fields must be exact.
    @Test func everyBitFlipOfEveryDatagramIsRefused() throws {
        let steps = try Self.steps()
        #expect(steps.datagrams.count == 2 + 2 + 4 + 4 + 5)  // pieces and their acknowledgements
        var flips = 0, bits = 0
        for datagram in steps.datagrams {
            _ = try HandshakeDatagram(parsing: datagram)
            for bit in 0..<datagram.count * 8 {
                #expect(throws: HandshakeError.self) { try HandshakeDatagram(parsing: Self.flip(datagram, bit: bit)) }
                flips += 1
            }
            bits += datagram.count * 8
        }
        #expect(flips == bits && bits > 90_000)
    }

    /// A downgrade: an attacker strips AES-256-GCM from the offer (message 1 in valid pieces). The
    /// responder answers with ChaCha20-Poly1305, but it signed a transcript with the modified offer, so
    /// the initiator's check fails; a response rewritten to a suite not offered fails before it.
    @Test func aModifiedOfferOrChoiceIsCaughtByTheSignature() throws {
        let steps = try Self.steps()
        let initiation = try #require(steps.messages[.initiation])
        let offer = UInt16(initiation[2]) << 8 | UInt16(initiation[3])
        #expect(offer == CipherSuite.offer(CipherSuite.preferred) | 0x8000)  // records may share datagrams (§3)
        // A suite stripped (0x0003 -> 0x0001, or an added suite on a CPU without AES), and bit 15
        // stripped (the response then comes without it): either way the initiator's check fails.
        var downgraded = initiation, stripped = initiation
        downgraded[3] = 0x01 == downgraded[3] ? 0x03 : 0x01
        stripped[2] &= 0x7F
        for modified in [downgraded, stripped] {
            let responder = HandshakeResponder<String>(identity: Self.bob)
            for piece in HandshakeDatagram.pieces(of: modified, session: steps.session, kind: .initiation) {
                try responder.receive(piece, from: "a", now: 0)
            }
            let initiator = steps.initiator.snapshot()
            #expect(throws: HandshakeError.badSignature) {
                for (_, datagram) in responder.takeDatagrams() { try initiator.receive(datagram, now: 0) }
            }
            #expect(initiator.session == nil)
        }

        var response = try #require(steps.messages[.response])
        let chosen = response[3]
        let other = try #require(CipherSuite.allCases.first { $0.rawValue != UInt16(chosen) })
        response[3] = UInt8(other.rawValue)
        let fresh = steps.initiator.snapshot()
        let expected: HandshakeError = CipherSuite.preferred.contains(other) ? .badSignature : .unsupportedSuite(other.rawValue)
        #expect(throws: expected) {
            for piece in HandshakeDatagram.pieces(of: response, session: steps.session, kind: .response) { try fresh.receive(piece, now: 0) }
        }
        #expect(fresh.session == nil)

        // An initiator that offered ChaCha20-Poly1305 alone refuses a response naming AES-256-GCM (or,
        // on a CPU without AES, suite 3, unknown) before it checks any signature.
        var chachaOnly = HandshakeConfiguration()
        chachaOnly.suites = [.chacha20Poly1305]
        let initiator2 = try HandshakeInitiator(identity: Self.alice, responderName: Self.bob.name,
                                                responderPublicKey: Self.bob.publicKey, now: 0, configuration: chachaOnly)
        let responder2 = HandshakeResponder<String>(identity: Self.bob)
        var response2: [UInt8] = []
        for datagram in initiator2.takeDatagrams() { try responder2.receive(datagram, from: "a", now: 0) }
        var pieces: [Int: ArraySlice<UInt8>] = [:]
        for (_, datagram) in responder2.takeDatagrams() {
            if case .piece(_, .response, let index, _, _, let bytes) = try HandshakeDatagram(parsing: datagram) { pieces[index] = bytes }
        }
        response2 = pieces.keys.sorted().flatMap { pieces[$0] ?? [] }
        #expect(response2.count == Response.size && response2[3] == 1)
        let unoffered: UInt16 = CipherSuite.aes256GCM.isAvailable ? 2 : 3
        response2[3] = UInt8(unoffered)
        #expect(throws: HandshakeError.unsupportedSuite(unoffered)) {
            for piece in HandshakeDatagram.pieces(of: response2, session: initiator2.sessionID, kind: .response) {
                try initiator2.receive(piece, now: 0)
            }
        }
        #expect(initiator2.session == nil)
    }

    @Test func aReplayedInitiationIsRefusedAndLeavesNoState() throws {
        var link = try HandshakeTests.link()
        link.run()
        #expect(link.responderSessions.count == 1)
        let initiation = link.sent.filter { $0.0 == .toResponder }.prefix(2).map(\.1)
        // Late copies from the same address and session belong to the finished handshake: ignored.
        for datagram in initiation { try link.responder.receive(datagram, from: "alice:1", now: 100) }
        // The same initiation from elsewhere is a replay.
        #expect(throws: HandshakeError.replayed) {
            for datagram in initiation { try link.responder.receive(datagram, from: "mallory:9", now: 100) }
        }
        #expect(link.responder.pendingCount == 0)
        #expect(link.responder.takeSessions().isEmpty)
        #expect(link.responder.statistics.replays == 1)
    }

    @Test func aRecordedHandshakeReplayedToAFreshResponderFails() throws {
        var link = try HandshakeTests.link()
        link.run()
        let recorded = link.sent.filter { $0.0 == .toResponder }.map(\.1)
        // A responder that remembers nothing (restarted) answers the old initiation with new keys,
        // so the recorded confirmation cannot be opened.
        let fresh = HandshakeResponder<String>(identity: Self.bob)
        var errors: [HandshakeError] = []
        for datagram in recorded {
            do { try fresh.receive(datagram, from: "alice:1", now: 0) } catch { errors.append(error) }
        }
        #expect(errors.contains(.authenticationFailed))
        #expect(fresh.pendingCount == 0 && fresh.takeSessions().isEmpty)
    }

    @Test func lateAndDuplicateDatagramsAfterTheHandshakeChangeNothing() throws {
        var link = try HandshakeTests.link()
        link.run()
        let server = try #require(link.responderSessions.first)
        let client = try #require(link.initiator.session)
        for (direction, datagram) in link.sent {
            switch direction {
            case .toResponder: try? link.responder.receive(datagram, from: "alice:1", now: 1000)
            case .toInitiator: try? link.initiator.receive(datagram, now: 1000)
            }
        }
        #expect(link.responder.takeSessions().isEmpty && link.responder.pendingCount == 0)
        #expect(link.initiator.session === client && link.initiator.isFinished)
        #expect(try server.opener.open(try client.sealer.seal(type: .data, plaintext: [7])).plaintext == [7])
        // A response to another session id: refused, no change.
        let other = try HandshakeInitiator(identity: Self.alice, responderName: Self.bob.name,
                                           responderPublicKey: Self.bob.publicKey, now: 0)
        let response = link.sent.first { $0.0 == .toInitiator && $0.1.count > 100 }?.1 ?? []
        #expect(throws: HandshakeError.unknownSession(link.initiator.sessionID)) { try other.receive(response, now: 0) }
        #expect(other.failure == nil && other.session == nil)
    }

    @Test func garbageIsRefusedWithoutState() throws {
        let responder = HandshakeResponder<Int>(identity: Self.bob)
        var random = SplitMix(seed: 7)
        for i in 0..<2000 {
            let length = Int(random.next() % 1300)
            let noise = (0..<length).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            #expect(throws: HandshakeError.self) { try responder.receive(noise, from: i, now: 0) }
            // Valid frames of the wrong type, and handshake frames whose pieces make no sense.
            let data = try FrameEncoder.encode(type: .data, sequence: 0, payload: noise)
            #expect(throws: HandshakeError.self) { try responder.receive(data, from: i, now: 0) }
        }
        let tooLong = try FrameEncoder.encode(type: .handshake, sequence: 0,
                                              payload: [0, 0, 0, 1, 1, 0, 10, 0, 0, 0, 0x2A, 0] + [UInt8](repeating: 0, count: 1156))
        #expect(throws: HandshakeError.piece(.tooLarge(length: 10752, maximum: Initiation.size))) {
            try responder.receive(tooLong, from: 0, now: 0)
        }
        #expect(responder.pendingCount == 0)
    }

    /// A flood of bogus initiations from many addresses: the responder's state stays under its bound,
    /// and a genuine handshake still completes during the flood.
    @Test func aFloodOfInitiationsDoesNotGrowMemory() throws {
        var configuration = HandshakeConfiguration()
        configuration.maximumPending = 64
        let responder = HandshakeResponder<Int>(identity: Self.bob, configuration: configuration)
        var random = SplitMix(seed: 11)
        func randomBytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
        let kemKey = try KEM.keyPair().publicKey.rawRepresentation
        let x25519 = X25519.keyPair().publicKey
        var mostPending = 0, mostBytes = 0, bytesAtHalfTime = 0
        for i in 0..<20_000 {
            let complete = i % 100 == 0  // one in a hundred is a whole, well-formed initiation: full crypto work
            let initiation = Initiation(offering: CipherSuite.preferred, responderKeyHash: Sodium.sha256(Self.bob.publicKey), random: randomBytes(32),
                                        x25519: x25519, kemPublicKey: Array(kemKey)).bytes
            let pieces = HandshakeDatagram.pieces(of: initiation, session: UInt32(truncatingIfNeeded: random.next()),
                                                  kind: .initiation)
            for piece in complete ? pieces : [pieces[0]] { try responder.receive(piece, from: i, now: UInt64(i / 10)) }
            _ = responder.takeDatagrams()
            mostPending = max(mostPending, responder.pendingCount)
            mostBytes = max(mostBytes, responder.retainedBytes)
            if i == 9_999 { bytesAtHalfTime = mostBytes }
        }
        #expect(mostPending == 64)
        // The table fills (answered handshakes are evicted last), then memory stays flat.
        #expect(mostBytes == bytesAtHalfTime, "memory kept growing: \(bytesAtHalfTime) then \(mostBytes)")
        // Bound: 64 handshakes, each at most its message 2 in pieces and a message 3 buffer.
        #expect(mostBytes <= 64 * (Response.size + 5 * 44 + Confirmation.maximumSize))
        #expect(responder.statistics.evicted >= 20_000 - 64)

        // A genuine handshake in the middle of the flood.
        let initiator = try HandshakeInitiator(identity: Self.alice, responderName: Self.bob.name,
                                               responderPublicKey: Self.bob.publicKey, now: 2000)
        var sessions: [SecureSession] = []
        for _ in 0..<10 {
            for datagram in initiator.takeDatagrams() { try responder.receive(datagram, from: -1, now: 2000) }
            for (to, datagram) in responder.takeDatagrams() where to == -1 { try initiator.receive(datagram, now: 2000) }
            sessions += responder.takeSessions().map(\.1)
            // More bogus first pieces arrive meanwhile.
            let bogus = Initiation(offering: CipherSuite.preferred, responderKeyHash: randomBytes(32), random: randomBytes(32), x25519: x25519,
                                   kemPublicKey: Array(kemKey)).bytes
            try responder.receive(HandshakeDatagram.pieces(of: bogus, session: 5, kind: .initiation)[0],
                                  from: Int(random.next() % 1_000_000), now: 2000)
        }
        #expect(sessions.count == 1 && initiator.isFinished)
    }
}
