@testable import DNACrypto
import DNAWire
import Testing

/// Two in-memory endpoints and the datagrams between them, in virtual time.
struct HandshakeLink {
    enum Direction { case toResponder, toInitiator }

    let initiator: HandshakeInitiator
    let responder: HandshakeResponder<String>
    var address = "alice:1"
    var now: UInt64 = 0
    /// Every datagram sent, in order, with its direction.
    var sent: [(Direction, [UInt8])] = []
    var initiatorErrors: [HandshakeError] = []
    var responderErrors: [HandshakeError] = []
    var responderSessions: [SecureSession] = []

    init(initiator: HandshakeInitiator, responder: HandshakeResponder<String>) {
        self.initiator = initiator
        self.responder = responder
    }

    /// Runs until the initiator has finished or failed and nothing is in flight, or `limit` ms pass.
    /// `deliver` decides what arrives of each datagram (nil: lost).
    mutating func run(limit: UInt64 = 60_000, deliver: (Direction, [UInt8]) -> [UInt8]? = { $1 }) {
        var timersRan = false
        while now <= limit {
            var moved = false
            for datagram in initiator.takeDatagrams() {
                moved = true
                sent.append((.toResponder, datagram))
                guard let arriving = deliver(.toResponder, datagram) else { continue }
                do { try responder.receive(arriving, from: address, now: now) } catch { responderErrors.append(error) }
            }
            responderSessions += responder.takeSessions().map(\.1)
            for (to, datagram) in responder.takeDatagrams() {
                moved = true
                #expect(to == address)
                sent.append((.toInitiator, datagram))
                guard let arriving = deliver(.toInitiator, datagram) else { continue }
                do { try initiator.receive(arriving, now: now) } catch { initiatorErrors.append(error) }
            }
            if moved {
                timersRan = false
                continue
            }
            let deadlines = [initiator.nextDeadline, responder.nextDeadline].compactMap { $0 }
            guard let next = deadlines.min() else { return }
            guard next > now || !timersRan else {
                Issue.record("a deadline at \(next) that handling the timers at \(now) did not move")
                return
            }
            timersRan = next <= now
            now = max(now, next)
            do { try initiator.handleTimeout(now: now) } catch { initiatorErrors.append(error) }
            responder.handleTimeout(now: now)
        }
    }
}

@Suite struct HandshakeTests {
    static let alice = try! Identity(generating: try! IdentityName("alice"))
    static let bob = try! Identity(generating: try! IdentityName("bob"))
    static let carol = try! Identity(generating: try! IdentityName("carol"))

    static func link(responderKey: [UInt8] = bob.publicKey, configuration: HandshakeConfiguration = HandshakeConfiguration())
        throws -> HandshakeLink {
        HandshakeLink(
            initiator: try HandshakeInitiator(identity: alice, responderName: bob.name, responderPublicKey: responderKey,
                                              now: 0, configuration: configuration),
            responder: HandshakeResponder(identity: bob, configuration: configuration))
    }

    /// The messages of one clean handshake, reassembled from its datagrams.
    static func messages(_ link: HandshakeLink) throws -> [HandshakeKind: [UInt8]] {
        var parts: [HandshakeKind: [Int: ArraySlice<UInt8>]] = [:]
        for (_, datagram) in link.sent {
            if case .piece(_, let kind, let index, _, _, let bytes) = try HandshakeDatagram(parsing: datagram) {
                parts[kind, default: [:]][index] = bytes
            }
        }
        return parts.mapValues { pieces in pieces.keys.sorted().flatMap { pieces[$0] ?? [] } }
    }

    @Test func bothSidesGetTheSameKeysAndEachOthersIdentity() throws {
        var link = try Self.link()
        link.run()
        #expect(link.initiatorErrors.isEmpty && link.responderErrors.isEmpty)
        #expect(link.initiator.isFinished)
        #expect(link.responder.pendingCount == 0)
        let client = try #require(link.initiator.session)
        let server = try #require(link.responderSessions.first)
        #expect(link.responderSessions.count == 1)
        #expect(client.peerName == Self.bob.name && client.peerPublicKey == Self.bob.publicKey)
        #expect(server.peerName == Self.alice.name && server.peerPublicKey == Self.alice.publicKey)
        #expect(server.peerFingerprint == Self.alice.fingerprint)
        #expect(client.sessionID == server.sessionID && client.role == .initiator && server.role == .responder)
        for size in [0, 100, 5000] {
            let message = (0..<size).map { UInt8(truncatingIfNeeded: $0) }
            #expect(try server.opener.open(try client.sealer.seal(type: .data, plaintext: message)).plaintext == message)
            #expect(try client.opener.open(try server.sealer.seal(type: .data, plaintext: message)).plaintext == message)
        }
        // The two directions have different keys: a frame cannot be reflected back to its sender.
        let reflected = try client.sealer.seal(type: .data, plaintext: [1, 2, 3])
        #expect(throws: RecordError.authenticationFailed) { try client.opener.open(reflected) }
    }

    static func link(offering offered: [CipherSuite], accepting accepted: [CipherSuite],
                     sharing: (initiator: Bool, responder: Bool) = (true, true)) throws -> HandshakeLink {
        var offer = HandshakeConfiguration(), accept = HandshakeConfiguration()
        offer.suites = offered
        accept.suites = accepted
        offer.sharesDatagrams = sharing.initiator
        accept.sharesDatagrams = sharing.responder
        return HandshakeLink(
            initiator: try HandshakeInitiator(identity: alice, responderName: bob.name, responderPublicKey: bob.publicKey,
                                              now: 0, configuration: offer),
            responder: HandshakeResponder(identity: bob, configuration: accept))
    }

    /// Suite negotiation (docs/PROTOCOL.md §4.2): message 1 carries the set offered, message 2 the
    /// responder's first accepted suite in that set, and both sides' records use it. An initiator of
    /// before AES-256-GCM (offer 0x0001) still gets ChaCha20-Poly1305. Suites the CPU lacks are never
    /// offered or accepted, so on a machine without AES instructions every case ends in ChaCha20-Poly1305.
    @Test func theResponderPicksTheFirstSuiteItAcceptsAmongThoseOffered() throws {
        let aes: CipherSuite = CipherSuite.aes256GCM.isAvailable ? .aes256GCM : .chacha20Poly1305
        #expect(CipherSuite.preferred.first == aes)
        let cases: [(offered: [CipherSuite], accepted: [CipherSuite], chosen: CipherSuite)] = [
            (CipherSuite.preferred, CipherSuite.preferred, aes),
            ([.chacha20Poly1305], CipherSuite.preferred, .chacha20Poly1305),
            (CipherSuite.preferred, [.chacha20Poly1305], .chacha20Poly1305),
            ([.chacha20Poly1305, .aes256GCM], [.aes256GCM, .chacha20Poly1305], aes),  // the responder's order decides
            ([.aes256GCM, .chacha20Poly1305], [.chacha20Poly1305, .aes256GCM], .chacha20Poly1305),
        ]
        for (offered, accepted, chosen) in cases {
            var link = try Self.link(offering: offered, accepting: accepted)
            link.run()
            #expect(link.initiatorErrors.isEmpty && link.responderErrors.isEmpty, "\(offered) to \(accepted)")
            let client = try #require(link.initiator.session)
            let server = try #require(link.responderSessions.first)
            #expect(client.suite == chosen && server.suite == chosen, "\(offered) to \(accepted)")
            #expect(client.sealer.suite == chosen && client.opener.suite == chosen && server.sealer.suite == chosen)
            let messages = try Self.messages(link)
            let offer = CipherSuite.offer(offered.filter(\.isAvailable)) | 0x8000  // and records may share datagrams
            #expect(messages[.initiation]?[2..<4] == [UInt8(offer >> 8), UInt8(offer & 0xFF)])
            #expect(messages[.response]?[2..<4] == [0x80, UInt8(chosen.rawValue)])
            #expect(client.sharesDatagrams && server.sharesDatagrams)
            let message = (0..<3000).map { UInt8(truncatingIfNeeded: $0) }
            #expect(try server.opener.open(try client.sealer.seal(type: .data, plaintext: message)).plaintext == message)
            #expect(try client.opener.open(try server.sealer.seal(type: .data, plaintext: message)).plaintext == message)
        }
        #expect(CipherSuite.offer([.chacha20Poly1305]) == 0x0001 && CipherSuite.offer([.aes256GCM, .chacha20Poly1305]) == 0x0003)
    }

    /// No suite in common: the responder refuses the initiation (`unsupportedSuite` with the offer) and
    /// keeps no state; the initiator times out. An initiator left with nothing to offer does not start.
    @Test func noSuiteInCommonEndsTheHandshake() throws {
        if CipherSuite.aes256GCM.isAvailable {
            var link = try Self.link(offering: [.aes256GCM], accepting: [.chacha20Poly1305])
            link.run()
            #expect(link.responderErrors.first == .unsupportedSuite(0x8002))  // the offer, bit 15 included (§4.2)
            #expect(link.responder.pendingCount == 0 && link.responderSessions.isEmpty)
            #expect(link.initiator.failure == .timeout && link.initiator.session == nil)
        } else {
            #expect(throws: HandshakeError.unsupportedSuite(0)) { try Self.link(offering: [.aes256GCM], accepting: [.chacha20Poly1305]) }
        }
        #expect(throws: HandshakeError.unsupportedSuite(0)) { try Self.link(offering: [], accepting: CipherSuite.preferred) }
        // Bits of suites unknown here are ignored; an offer of none known is refused.
        var initiation = Initiation(offering: [.chacha20Poly1305], responderKeyHash: [UInt8](repeating: 1, count: 32),
                                    random: [UInt8](repeating: 2, count: 32), x25519: [UInt8](repeating: 3, count: 32),
                                    kemPublicKey: [UInt8](repeating: 4, count: 1184))
        initiation.offeredSuites = 0x8001
        #expect(try Initiation(parsing: initiation.bytes).choose(from: CipherSuite.preferred) == .chacha20Poly1305)
        initiation.offeredSuites = 0xFFFC
        #expect(throws: HandshakeError.unsupportedSuite(0xFFFC)) {
            try Initiation(parsing: initiation.bytes).choose(from: [.aes256GCM, .chacha20Poly1305])
        }
    }

    /// Records sharing a datagram (docs/PROTOCOL.md §3, §4.2): bit 15 of the offer says the
    /// initiator takes them, bit 15 of the chosen suite that the responder does too; the session
    /// shares datagrams only when both did. An initiator of before (no bit) gets a response without
    /// it; a responder of before ignores the bit (unknown suites are ignored) and answers without it.
    /// A response that sets it when the initiator did not offer it is refused.
    @Test func recordsShareDatagramsOnlyWhenBothSidesTakeThem() throws {
        for (initiator, responder) in [(true, true), (true, false), (false, true), (false, false)] {
            var link = try Self.link(offering: [.chacha20Poly1305], accepting: [.chacha20Poly1305], sharing: (initiator, responder))
            link.run()
            let client = try #require(link.initiator.session)
            let server = try #require(link.responderSessions.first)
            let messages = try Self.messages(link)
            #expect(messages[.initiation]?[2..<4] == [initiator ? 0x80 : 0, 1], "offer \(initiator) \(responder)")
            #expect(messages[.response]?[2..<4] == [initiator && responder ? 0x80 : 0, 1], "chosen \(initiator) \(responder)")
            #expect(client.sharesDatagrams == (initiator && responder) && server.sharesDatagrams == (initiator && responder))
        }
        var response = Response(suite: .chacha20Poly1305, sharedDatagrams: true, random: [UInt8](repeating: 1, count: 32),
                                x25519: [UInt8](repeating: 2, count: 32), kemCiphertext: [UInt8](repeating: 3, count: 1088),
                                signature: [UInt8](repeating: 4, count: Identity.signatureSize))
        #expect(try Response(parsing: response.bytes) == response)
        #expect(response.bytes[2..<4] == [0x80, 1])
        response.sharedDatagrams = false
        #expect(try Response(parsing: response.bytes).sharedDatagrams == false)
        // An initiator that did not offer it refuses a response that claims it (before the signature):
        // bit 15 set in the first piece of message 2 (its byte 2, after the frame and piece headers).
        var link = try Self.link(offering: [.chacha20Poly1305], accepting: [.chacha20Poly1305], sharing: (false, true))
        link.run(limit: 2_000) { direction, datagram in
            guard direction == .toInitiator, case .piece(_, .response, 0, _, _, _)? = try? HandshakeDatagram(parsing: datagram) else {
                return datagram
            }
            var payload = Array(datagram[FrameHeader.size...])
            payload[12 + 2] |= 0x80
            return try? FrameEncoder.encode(type: .handshake, sequence: 0, payload: payload)
        }
        #expect(link.initiatorErrors.contains(.unsupportedSuite(0x8001)), "\(link.initiatorErrors)")
        #expect(link.initiator.session == nil)
    }

    @Test func noDatagramExceeds1200BytesAndMessagesHaveTheDocumentedSizes() throws {
        var link = try Self.link()
        link.run()
        #expect(link.sent.allSatisfy { $0.1.count <= Pieces.maximumDatagramSize })
        let messages = try Self.messages(link)
        #expect(messages[.initiation]?.count == Initiation.size)
        #expect(Initiation.size == 1284 && Response.size == 4465)
        #expect(messages[.response]?.count == Response.size)
        #expect(messages[.confirmation]?.count == 1 + 5 + Identity.publicKeySize + Identity.signatureSize + 16)
        // Datagrams: 2 + 4 + 5 pieces, each acknowledged once, nothing sent twice.
        let pieces = link.sent.filter { (try? FrameDecoder().decode($0.1).header.type) == .handshake }
        #expect(pieces.count == 11)
        #expect(link.sent.count == 22)
    }

    @Test func applicationDataFlowsFromTheInitiatorAfterOneRoundTrip() throws {
        var link = try Self.link()
        // Flight 1: initiation. Flight 2: response. The initiator has its session before anything else arrives.
        for datagram in link.initiator.takeDatagrams() { try link.responder.receive(datagram, from: "a", now: 0) }
        #expect(link.initiator.session == nil)
        for (_, datagram) in link.responder.takeDatagrams() { try link.initiator.receive(datagram, now: 10) }
        let session = try #require(link.initiator.session)
        let early = try session.sealer.seal(type: .data, plaintext: Array("hello bob".utf8))
        // Flight 3: confirmation pieces, then the data, together.
        for datagram in link.initiator.takeDatagrams() { try link.responder.receive(datagram, from: "a", now: 20) }
        let server = try #require(link.responder.takeSessions().first?.1)
        #expect(try server.opener.open(early).plaintext == Array("hello bob".utf8))
    }

    @Test func aWrongResponderKeyFailsAndLeavesNoState() throws {
        // The initiator believes bob's key is carol's: bob refuses the initiation as not meant for him.
        var link = try Self.link(responderKey: Self.carol.publicKey)
        link.run()
        #expect(link.responderErrors.first == .misdirected)
        #expect(link.responder.pendingCount == 0 && link.responderSessions.isEmpty)
        #expect(link.initiator.failure == .timeout && link.initiator.session == nil)

        // A responder that answers anyway (an impostor with its own key): the initiator's check fails.
        var impostor = try Self.link(responderKey: Self.carol.publicKey)
        impostor.responder.checksDestination = false
        impostor.run()
        #expect(impostor.initiatorErrors.first == .badSignature)
        #expect(impostor.initiator.failure == .badSignature && impostor.initiator.session == nil)
        #expect(impostor.initiator.nextDeadline == nil)  // nothing left to do, nothing to send
        #expect(impostor.responderSessions.isEmpty)
    }

    @Test func aLostPieceIsSentAgainAloneNotTheWholeMessage() throws {
        var link = try Self.link()
        var responsePieces = 0
        link.run { direction, datagram in
            guard direction == .toInitiator, (try? FrameDecoder().decode(datagram).header.type) == .handshake else { return datagram }
            responsePieces += 1
            return responsePieces == 3 ? nil : datagram  // the third response piece is lost once
        }
        #expect(link.initiator.isFinished && link.responderSessions.count == 1)
        #expect(responsePieces == 5)  // four pieces, then only the lost one again
        let resent = link.sent.filter { $0.0 == .toInitiator && (try? FrameDecoder().decode($0.1).header.type) == .handshake }
        #expect(resent.count == 5 && resent[4].1 == resent[2].1)
    }

    @Test(arguments: [1, 2, 3, 4, 5])
    func completesWithHeavyLossInBothDirections(seed: UInt64) throws {
        var link = try Self.link()
        var random = SplitMix(seed: seed)
        link.run { _, datagram in random.next() % 100 < 30 ? nil : datagram }
        #expect(link.initiator.isFinished, "seed \(seed): \(link.initiatorErrors)")
        #expect(link.responderSessions.count == 1)
        #expect(link.responder.pendingCount == 0)
    }

    @Test func timeoutsEndBothSides() throws {
        var link = try Self.link()
        link.run { direction, datagram in direction == .toInitiator ? nil : datagram }  // the responder is never heard
        #expect(link.initiator.failure == .timeout)
        #expect(link.responder.pendingCount == 0 && link.responder.statistics.timedOut == 1)
        #expect(link.now >= HandshakeConfiguration().timeout)
    }
}

/// A small deterministic random generator for tests (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
