import Crypto
import DNAWire

/// Which end of the handshake a side was.
public enum HandshakeRole: Sendable {
    case initiator
    case responder
}

/// The result of a handshake: who the peer is, and the record keys of both directions.
public final class SecureSession {
    /// The id the initiator chose; both sides use it to tell handshakes apart.
    public let sessionID: UInt32
    public let role: HandshakeRole
    /// The cipher suite the responder chose (docs/PROTOCOL.md §4.2): the records' AEAD.
    public let suite: CipherSuite
    /// Both sides take records that share a datagram (docs/PROTOCOL.md §3, §4.2): a sender may lay
    /// several records end to end in one datagram.
    public let sharesDatagrams: Bool
    /// Initiator: the responder name it was given (bound to the key by the peer's signed DHT entry).
    /// Responder: the name the initiator signed. A name is only a claim until the application checks
    /// it against the peer's DHT entry or a pinned key: see docs/PROTOCOL.md §4.4.
    public let peerName: IdentityName
    /// The peer's ML-DSA-65 public key, proven by its signature over the transcript.
    public let peerPublicKey: [UInt8]
    /// Seals this side's frames.
    public let sealer: RecordSealer
    /// Opens the peer's frames.
    public let opener: RecordOpener

    init(sessionID: UInt32, role: HandshakeRole, suite: CipherSuite, sharesDatagrams: Bool = false, peerName: IdentityName,
         peerPublicKey: [UInt8], secrets: (initiatorToResponder: [UInt8], responderToInitiator: [UInt8])) throws(HandshakeError) {
        self.sessionID = sessionID
        self.role = role
        self.suite = suite
        self.sharesDatagrams = sharesDatagrams
        self.peerName = peerName
        self.peerPublicKey = peerPublicKey
        var (i2r, r2i) = secrets
        defer {
            Sodium.wipe(&i2r)
            Sodium.wipe(&r2i)
        }
        do {
            switch role {
            case .initiator:
                sealer = try RecordSealer(trafficSecret: i2r, direction: .initiatorToResponder, suite: suite)
                opener = try RecordOpener(trafficSecret: r2i, direction: .responderToInitiator, suite: suite)
            case .responder:
                sealer = try RecordSealer(trafficSecret: r2i, direction: .responderToInitiator, suite: suite)
                opener = try RecordOpener(trafficSecret: i2r, direction: .initiatorToResponder, suite: suite)
            }
        } catch { throw .crypto("record keys: \(error)") }
    }

    /// The largest datagram (UDP payload bytes) this side's handshake messages went through in the
    /// end (docs/PROTOCOL.md §9): `Pieces.maximumDatagramSize`, or the size it stepped down to when
    /// larger datagrams were lost on the path. Records on this path are cut to fit it.
    public internal(set) var datagramSize = Pieces.maximumDatagramSize

    /// The peer's fingerprint (docs/PROTOCOL.md §2).
    public var peerFingerprint: String { Fingerprint.of(publicKey: peerPublicKey) }
}

/// The initiator's side of the handshake (docs/PROTOCOL.md §4), a sans-I/O state machine: datagrams
/// and the time go in, datagrams and the session come out. It never touches a socket or a clock.
///
/// After `init`, send what `takeDatagrams()` returns; feed every datagram from the responder to
/// `receive`; call `handleTimeout` when `nextDeadline` has passed. `session` is set after one round
/// trip; from then on application frames can be sealed, while this object keeps delivering
/// message 3 until the responder has acknowledged all its pieces (`isFinished`).
public final class HandshakeInitiator {
    private enum State {
        case awaitingResponse(x25519Secret: Secret, kem: MLKEM768.PrivateKey, response: Reassembly?)
        case confirming
        case finished
        case failed(HandshakeError)
    }

    public let sessionID: UInt32
    private let identity: Identity
    private let responderName: IdentityName
    private let responderPublicKey: [UInt8]
    private let configuration: HandshakeConfiguration
    private let deadline: UInt64
    private var state: State
    private var transcript = Transcript()
    private var outgoing: OutgoingMessage
    private var outbox: [[UInt8]] = []
    private var responseCount = 0

    /// The session, once the responder's message has been verified.
    public private(set) var session: SecureSession?

    /// Starts a handshake with the responder whose public key (from its signed DHT entry) is given.
    /// `sessionID` is random when nil.
    public init(identity: Identity, responderName: IdentityName, responderPublicKey: [UInt8], now: UInt64,
                sessionID: UInt32? = nil, configuration: HandshakeConfiguration = HandshakeConfiguration()) throws(HandshakeError) {
        guard Identity.isValidPublicKey(responderPublicKey) else { throw .malformed("responder public key") }
        self.identity = identity
        self.responderName = responderName
        self.responderPublicKey = responderPublicKey
        self.configuration = configuration
        self.sessionID = sessionID ?? Self.randomSessionID()
        deadline = now + configuration.timeout
        let (secret, x25519Public) = X25519.keyPair()
        let kem = try KEM.keyPair()
        let offer = configuration.suites.filter(\.isAvailable)
        guard !offer.isEmpty else { throw .unsupportedSuite(0) }
        let initiation = Initiation(offering: offer, sharedDatagrams: configuration.sharesDatagrams,
                                    responderKeyHash: Sodium.sha256(responderPublicKey),
                                    random: Sodium.randomBytes(HandshakeProtocol.randomSize),
                                    x25519: x25519Public, kemPublicKey: Array(kem.publicKey.rawRepresentation))
        let bytes = initiation.bytes
        transcript.absorb(bytes)
        outgoing = OutgoingMessage(bytes, session: self.sessionID, kind: .initiation, datagramSize: configuration.datagramSize,
                                   now: now, configuration: configuration)
        outbox = outgoing.frames
        state = .awaitingResponse(x25519Secret: secret, kem: kem, response: nil)
    }

    /// A copy in the same state (tests feed one state many different datagrams).
    func snapshot() -> HandshakeInitiator {
        HandshakeInitiator(copying: self)
    }

    private init(copying other: HandshakeInitiator) {
        sessionID = other.sessionID
        identity = other.identity
        responderName = other.responderName
        responderPublicKey = other.responderPublicKey
        configuration = other.configuration
        deadline = other.deadline
        state = other.state
        transcript = other.transcript
        outgoing = other.outgoing
        outbox = other.outbox
        responseCount = other.responseCount
        session = other.session
    }

    static func randomSessionID() -> UInt32 {
        var id: UInt32 = 0
        while id == 0 {
            let bytes = Sodium.randomBytes(4)
            id = bytes.reduce(0) { $0 << 8 | UInt32($1) }
        }
        return id
    }

    /// Datagrams to send to the responder now (each at most `Pieces.maximumDatagramSize` bytes).
    public func takeDatagrams() -> [[UInt8]] {
        defer { outbox.removeAll() }
        return outbox
    }

    /// True once the responder has every piece of message 3; the handshake object can then go.
    public var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    /// The error that ended the handshake, if it failed.
    public var failure: HandshakeError? {
        if case .failed(let error) = state { return error }
        return nil
    }

    /// When `handleTimeout` must next be called; nil when nothing is pending.
    public var nextDeadline: UInt64? {
        switch state {
        case .awaitingResponse, .confirming: min(outgoing.deadline ?? deadline, deadline)
        case .finished, .failed: nil
        }
    }

    /// Retransmits unacknowledged pieces whose timer fired; fails with `.timeout` after the handshake's time.
    public func handleTimeout(now: UInt64) throws(HandshakeError) {
        switch state {
        case .awaitingResponse, .confirming:
            if now >= deadline { try fail(.timeout) }
            outbox += outgoing.retransmit(now: now, configuration: configuration)
        case .finished: return
        case .failed(let error): throw error
        }
    }

    /// One datagram from the responder. Errors about this handshake end it (the ephemeral keys are
    /// erased); a datagram for another session is refused with `.unknownSession` and changes nothing.
    public func receive(_ datagram: [UInt8], now: UInt64) throws(HandshakeError) {
        if case .failed(let error) = state { throw error }
        let parsed = try HandshakeDatagram(parsing: datagram)
        guard parsed.session == sessionID else { throw .unknownSession(parsed.session) }
        guard case .awaitingResponse = state else {
            try handle(parsed, now: now)  // after message 2, nothing a datagram says can undo the session
            return
        }
        do { try handle(parsed, now: now) } catch { try fail(error) }
    }

    private func handle(_ datagram: HandshakeDatagram, now: UInt64) throws(HandshakeError) {
        switch (datagram, state) {
        case (.ack(_, let kind, let count, let pieceSize, let received), _):
            guard kind == outgoing.kind else { return }  // a late acknowledgement of an earlier message
            outgoing.acknowledge(count: count, pieceSize: pieceSize, received: received)
            if case .confirming = state, outgoing.isDelivered {
                session?.datagramSize = outgoing.datagramSize
                state = .finished
            }
        case (.piece(_, .response, let index, let count, let length, let bytes), .awaitingResponse(let secret, let kem, var response)):
            let initiationSize = outgoing.datagramSize
            outgoing.acknowledgeAll()  // the responder answers only a complete initiation
            if response == nil {
                response = try Self.reassembly(length: length, count: count, index: index, bytes: bytes.count, kind: .response)
            }
            guard var reassembly = response, let pieceSize = datagram.pieceSize else { return }
            do { _ = try reassembly.add(index: index, length: length, count: count, bytes: bytes) } catch { throw .piece(error) }
            outbox.append(HandshakeDatagram.ack(session: sessionID, kind: .response, count: count, pieceSize: pieceSize,
                                                received: reassembly.received(pieceSize: pieceSize)))
            state = .awaitingResponse(x25519Secret: secret, kem: kem, response: reassembly)
            if let message = reassembly.message {
                responseCount = count
                // Message 3 starts at the smaller of the sizes that carried message 1 and message 2 (§9).
                let size = min(initiationSize, reassembly.smallestPieceSize + HandshakeDatagram.overhead)
                try confirm(Response(parsing: message), x25519Secret: secret, kem: kem, datagramSize: size, now: now)
            }
        case (.piece(_, .response, _, let count, _, _), .confirming), (.piece(_, .response, _, let count, _, _), .finished):
            // Our acknowledgement was lost: the responder sends again (perhaps cut smaller). It has everything.
            guard let pieceSize = datagram.pieceSize else { return }
            outbox.append(HandshakeDatagram.ack(session: sessionID, kind: .response, count: count, pieceSize: pieceSize,
                                                received: Pieces.all(count)))
        case (.piece(_, let kind, _, _, _, _), _):
            throw .unexpected("a \(kind) piece sent to the initiator")
        }
    }

    static func reassembly(length: Int, count: Int, index: Int, bytes: Int, kind: HandshakeKind) throws(HandshakeError) -> Reassembly {
        do {
            return try Reassembly(length: length, count: count, index: index, bytes: bytes, maximumLength: kind.maximumLength)
        } catch { throw .piece(error) }
    }

    /// Message 2 is complete: verify the responder, derive the keys, send message 3.
    private func confirm(_ response: Response, x25519Secret: Secret, kem: MLKEM768.PrivateKey,
                         datagramSize: Int, now: UInt64) throws(HandshakeError) {
        guard configuration.suites.contains(response.suite), response.suite.isAvailable else {
            throw .unsupportedSuite(response.suite.rawValue)  // not offered (a modified response fails here)
        }
        guard !response.sharedDatagrams || configuration.sharesDatagrams else {
            throw .unsupportedSuite(response.suite.rawValue | HandshakeProtocol.sharedDatagrams)  // not offered either
        }
        var signed = transcript
        signed.absorb(response.signedPart)
        guard Identity.isValidSignature(response.signature, of: HandshakeProtocol.responderLabel + signed.hash,
                                        publicKey: responderPublicKey) else { throw .badSignature }
        transcript.absorb(response.bytes)
        var dh = try X25519.shared(secret: x25519Secret, peer: response.x25519)
        var kemSecret = try KEM.decapsulate(response.kemCiphertext, with: kem)
        let schedule = KeySchedule(x25519Secret: dh, kemSecret: kemSecret, transcriptHash: transcript.hash)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)

        let associatedData = transcript.hash
        var signedPart = transcript
        let unsigned = Confirmation(name: identity.name, publicKey: identity.publicKey, signature: [])
        signedPart.absorb(unsigned.signedPart)
        let signature: [UInt8]
        do { signature = try identity.sign(HandshakeProtocol.initiatorLabel + signedPart.hash) } catch {
            throw .crypto("sign: \(error)")
        }
        let confirmation = Confirmation(name: identity.name, publicKey: identity.publicKey, signature: signature)
        var plaintext = confirmation.plaintext
        var key = schedule.confirmationKey
        let sealed = ConfirmationSeal.seal(plaintext, key: key, associatedData: associatedData)
        Sodium.wipe(&key)
        transcript.absorb(plaintext)
        Sodium.wipe(&plaintext)
        session = try SecureSession(sessionID: sessionID, role: .initiator, suite: response.suite,
                                    sharesDatagrams: response.sharedDatagrams, peerName: responderName,
                                    peerPublicKey: responderPublicKey,
                                    secrets: schedule.trafficSecrets(transcriptHash: transcript.hash))
        outgoing = OutgoingMessage(sealed, session: sessionID, kind: .confirmation, datagramSize: datagramSize, now: now,
                                   configuration: configuration)
        session?.datagramSize = outgoing.datagramSize
        outbox += outgoing.frames
        state = .confirming
    }

    private func fail(_ error: HandshakeError) throws(HandshakeError) -> Never {
        state = .failed(error)  // the ephemeral secrets go with the old state
        session = nil
        outbox.removeAll()
        throw error
    }
}
