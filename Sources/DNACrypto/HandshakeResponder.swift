import DNAWire

/// The responder's side of the handshake for every peer that contacts one identity (docs/PROTOCOL.md
/// §4), a sans-I/O state machine: datagrams with their source `Address` and the time go in; datagrams
/// to addresses and finished sessions come out.
///
/// Memory is bounded whatever arrives: at most `maximumPending` handshakes in progress (a new one
/// evicts the oldest, preferring those whose first message is still incomplete), each holding at most
/// one message of each kind; `replayMemory` hashes of answered initiations; as many finished session
/// ids. A failed handshake leaves nothing but the hash of its initiation.
public final class HandshakeResponder<Address: Hashable> {
    /// What happened so far (for logs and tests).
    public struct Statistics: Equatable, Sendable {
        public var started = 0
        public var completed = 0
        public var failed = 0
        public var timedOut = 0
        public var evicted = 0
        public var replays = 0
    }

    private struct Key: Hashable {
        var address: Address
        var session: UInt32
    }

    private enum Stage {
        case receivingInitiation(Reassembly)
        case awaitingConfirmation(Answered)
    }

    /// A handshake whose message 2 was sent.
    private struct Answered {
        var outgoing: OutgoingMessage
        var transcript: Transcript
        let schedule: KeySchedule
        let suite: CipherSuite
        let sharedDatagrams: Bool
        var confirmation: Reassembly?
        let initiationCount: Int
    }

    private struct Pending {
        var stage: Stage
        let started: UInt64
        let order: UInt64
    }

    private let identity: Identity
    private let ownKeyHash: [UInt8]
    private let configuration: HandshakeConfiguration
    private var pending: [Key: Pending] = [:]
    private var arrivals: UInt64 = 0
    private var seen = BoundedSet<[UInt8]>(capacity: 1)
    private var finished = BoundedSet<Key>(capacity: 1)
    private var finishedCounts: [Key: Int] = [:]
    private var outbox: [(Address, [UInt8])] = []
    private var sessions: [(Address, SecureSession)] = []
    public private(set) var statistics = Statistics()

    public init(identity: Identity, configuration: HandshakeConfiguration = HandshakeConfiguration()) {
        self.identity = identity
        self.configuration = configuration
        ownKeyHash = Sodium.sha256(identity.publicKey)
        seen = BoundedSet(capacity: max(1, configuration.replayMemory))
        finished = BoundedSet(capacity: max(1, configuration.maximumPending))
    }

    /// Test hook: answer initiations meant for another key too (to test the initiator's check).
    var checksDestination = true

    /// A copy in the same state (tests feed one state many different datagrams).
    func snapshot() -> HandshakeResponder {
        let copy = HandshakeResponder(identity: identity, configuration: configuration)
        copy.pending = pending
        copy.arrivals = arrivals
        copy.seen = seen
        copy.finished = finished
        copy.finishedCounts = finishedCounts
        copy.statistics = statistics
        copy.checksDestination = checksDestination
        return copy
    }

    /// Handshakes in progress.
    public var pendingCount: Int { pending.count }

    /// Bytes held for handshakes in progress (buffers and pieces), for the memory bound's tests.
    public var retainedBytes: Int {
        pending.values.reduce(0) { total, entry in
            switch entry.stage {
            case .receivingInitiation(let reassembly): total + reassembly.retainedBytes
            case .awaitingConfirmation(let answered):
                total + answered.outgoing.frames.reduce(0) { $0 + $1.count } + (answered.confirmation?.retainedBytes ?? 0)
            }
        }
    }

    /// Datagrams to send, with their destinations.
    public func takeDatagrams() -> [(Address, [UInt8])] {
        defer { outbox.removeAll() }
        return outbox
    }

    /// Handshakes that finished since the last call: the initiator's address and the session.
    public func takeSessions() -> [(Address, SecureSession)] {
        defer { sessions.removeAll() }
        return sessions
    }

    /// When `handleTimeout` must next be called; nil when no handshake is in progress.
    public var nextDeadline: UInt64? {
        pending.values.map { entry in
            let end = entry.started + configuration.timeout
            if case .awaitingConfirmation(let answered) = entry.stage { return min(end, answered.outgoing.deadline ?? end) }
            return end
        }.min()
    }

    /// Drops handshakes past their time; retransmits unacknowledged pieces of message 2.
    public func handleTimeout(now: UInt64) {
        for (key, entry) in pending {
            if now >= entry.started + configuration.timeout {
                pending[key] = nil
                statistics.timedOut += 1
            } else if case .awaitingConfirmation(var answered) = entry.stage {
                let pieces = answered.outgoing.retransmit(now: now, configuration: configuration)
                guard !pieces.isEmpty else { continue }
                outbox += pieces.map { (key.address, $0) }
                pending[key]?.stage = .awaitingConfirmation(answered)
            }
        }
    }

    /// One datagram from `address`. An error about a handshake in progress ends that handshake (its
    /// state is dropped); other errors change nothing. Either way the responder goes on serving.
    public func receive(_ datagram: [UInt8], from address: Address, now: UInt64) throws(HandshakeError) {
        let parsed = try HandshakeDatagram(parsing: datagram)
        let key = Key(address: address, session: parsed.session)
        switch parsed {
        case .ack(_, .response, let count, let pieceSize, let received):
            guard var entry = pending[key], case .awaitingConfirmation(var answered) = entry.stage else {
                throw .unknownSession(key.session)
            }
            answered.outgoing.acknowledge(count: count, pieceSize: pieceSize, received: received)
            entry.stage = .awaitingConfirmation(answered)
            pending[key] = entry
        case .ack(_, let kind, _, _, _):
            throw .unexpected("an acknowledgement of a \(kind) message sent to the responder")
        case .piece(_, .initiation, let index, let count, let length, let bytes):
            try receiveInitiation(key: key, index: index, count: count, length: length, bytes: bytes,
                                  pieceSize: parsed.pieceSize ?? HandshakeDatagram.pieceSize, now: now)
        case .piece(_, .confirmation, let index, let count, let length, let bytes):
            try receiveConfirmation(key: key, index: index, count: count, length: length, bytes: bytes,
                                    pieceSize: parsed.pieceSize ?? HandshakeDatagram.pieceSize, now: now)
        case .piece(_, .response, _, _, _, _):
            throw .unexpected("a response piece sent to the responder")
        }
    }

    private func receiveInitiation(key: Key, index: Int, count: Int, length: Int, bytes: ArraySlice<UInt8>,
                                   pieceSize: Int, now: UInt64) throws(HandshakeError) {
        if finished.contains(key) { return }  // a late copy of a piece of a finished handshake
        var entry: Pending
        if let existing = pending[key] {
            entry = existing
        } else {
            let reassembly = try HandshakeInitiator.reassembly(length: length, count: count, index: index, bytes: bytes.count,
                                                               kind: .initiation)
            makeRoom()
            arrivals += 1
            statistics.started += 1
            entry = Pending(stage: .receivingInitiation(reassembly), started: now, order: arrivals)
        }
        switch entry.stage {
        case .awaitingConfirmation:
            // The initiator has not seen our answer yet and sends again (perhaps cut smaller):
            // acknowledge everything.
            outbox.append((key.address, HandshakeDatagram.ack(session: key.session, kind: .initiation, count: count,
                                                              pieceSize: pieceSize, received: Pieces.all(count))))
        case .receivingInitiation(var reassembly):
            do { _ = try reassembly.add(index: index, length: length, count: count, bytes: bytes) } catch {
                throw fail(key, .piece(error))
            }
            outbox.append((key.address, HandshakeDatagram.ack(session: key.session, kind: .initiation, count: count,
                                                              pieceSize: pieceSize, received: reassembly.received(pieceSize: pieceSize))))
            entry.stage = .receivingInitiation(reassembly)
            pending[key] = entry
            if let message = reassembly.message {
                // Message 2 starts no larger than the datagrams that carried message 1 (§9).
                let size = min(configuration.datagramSize, reassembly.smallestPieceSize + HandshakeDatagram.overhead)
                do { entry.stage = .awaitingConfirmation(try answer(message, count: count, datagramSize: size, key: key, now: now)) } catch {
                    throw fail(key, error)
                }
                pending[key] = entry
            }
        }
    }

    /// Message 1 is complete: check it, then build, sign and send message 2.
    private func answer(_ message: [UInt8], count: Int, datagramSize: Int, key: Key, now: UInt64) throws(HandshakeError) -> Answered {
        let initiation = try Initiation(parsing: message)
        guard initiation.responderKeyHash == ownKeyHash || !checksDestination else { throw .misdirected }
        let suite = try initiation.choose(from: configuration.suites.filter(\.isAvailable))
        guard seen.insert(Sodium.sha256(message)) else {
            statistics.replays += 1
            throw .replayed
        }
        let (secret, x25519Public) = X25519.keyPair()
        var dh = try X25519.shared(secret: secret, peer: initiation.x25519)
        var (kemSecret, ciphertext) = try KEM.encapsulate(to: initiation.kemPublicKey)
        var transcript = Transcript()
        transcript.absorb(message)
        let shared = initiation.offersSharedDatagrams && configuration.sharesDatagrams
        var unsigned = Response(suite: suite, sharedDatagrams: shared, random: Sodium.randomBytes(HandshakeProtocol.randomSize), x25519: x25519Public,
                                kemCiphertext: ciphertext, signature: [])
        var signed = transcript
        signed.absorb(unsigned.signedPart)
        do { unsigned.signature = try identity.sign(HandshakeProtocol.responderLabel + signed.hash) } catch {
            throw .crypto("sign: \(error)")
        }
        let response = unsigned.bytes
        transcript.absorb(response)
        let schedule = KeySchedule(x25519Secret: dh, kemSecret: kemSecret, transcriptHash: transcript.hash)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)
        let outgoing = OutgoingMessage(response, session: key.session, kind: .response, datagramSize: datagramSize, now: now,
                                       configuration: configuration)
        outbox += outgoing.frames.map { (key.address, $0) }
        return Answered(outgoing: outgoing, transcript: transcript, schedule: schedule, suite: suite, sharedDatagrams: shared, confirmation: nil,
                        initiationCount: count)
    }

    private func receiveConfirmation(key: Key, index: Int, count: Int, length: Int, bytes: ArraySlice<UInt8>,
                                     pieceSize: Int, now: UInt64) throws(HandshakeError) {
        if finishedCounts[key] != nil, finished.contains(key) {
            // Our last acknowledgement was lost: say again that everything arrived (in the cut of the
            // piece that came: the initiator may have cut message 3 smaller meanwhile).
            outbox.append((key.address, HandshakeDatagram.ack(session: key.session, kind: .confirmation,
                                                              count: count, pieceSize: pieceSize, received: Pieces.all(count))))
            return
        }
        guard var entry = pending[key] else { throw .unknownSession(key.session) }
        guard case .awaitingConfirmation(var answered) = entry.stage else {
            throw fail(key, .unexpected("a confirmation piece before the initiation was complete"))
        }
        answered.outgoing.acknowledgeAll()  // the initiator confirms only a complete response
        var reassembly: Reassembly
        do {
            reassembly = try answered.confirmation
                ?? HandshakeInitiator.reassembly(length: length, count: count, index: index, bytes: bytes.count, kind: .confirmation)
            _ = try reassembly.add(index: index, length: length, count: count, bytes: bytes)
        } catch let error as HandshakeError { throw fail(key, error) } catch let error as PieceError {
            throw fail(key, .piece(error))
        } catch { throw fail(key, .malformed("\(error)")) }
        outbox.append((key.address, HandshakeDatagram.ack(session: key.session, kind: .confirmation, count: count,
                                                          pieceSize: pieceSize, received: reassembly.received(pieceSize: pieceSize))))
        answered.confirmation = reassembly
        entry.stage = .awaitingConfirmation(answered)
        pending[key] = entry
        guard let sealed = reassembly.message else { return }
        do {
            let session = try complete(sealed, answered: answered, key: key)
            session.datagramSize = answered.outgoing.datagramSize
            pending[key] = nil
            if let gone = finished.insertEvicting(key) { finishedCounts[gone] = nil }
            finishedCounts[key] = count
            statistics.completed += 1
            sessions.append((key.address, session))
        } catch { throw fail(key, error) }
    }

    /// Message 3 is complete: open it, verify the initiator's signature, derive the traffic keys.
    private func complete(_ sealed: [UInt8], answered: Answered, key: Key) throws(HandshakeError) -> SecureSession {
        var transcript = answered.transcript
        var confirmationKey = answered.schedule.confirmationKey
        defer { Sodium.wipe(&confirmationKey) }
        var plaintext = try ConfirmationSeal.open(sealed, key: confirmationKey, associatedData: transcript.hash)
        defer { Sodium.wipe(&plaintext) }
        let confirmation = try Confirmation(parsing: plaintext)
        var signed = transcript
        signed.absorb(confirmation.signedPart)
        guard Identity.isValidSignature(confirmation.signature, of: HandshakeProtocol.initiatorLabel + signed.hash,
                                        publicKey: confirmation.publicKey) else { throw .badSignature }
        transcript.absorb(plaintext)
        return try SecureSession(sessionID: key.session, role: .responder, suite: answered.suite,
                                 sharesDatagrams: answered.sharedDatagrams, peerName: confirmation.name,
                                 peerPublicKey: confirmation.publicKey,
                                 secrets: answered.schedule.trafficSecrets(transcriptHash: transcript.hash))
    }

    /// Ends a handshake in progress: its state goes (the ephemeral secrets with it).
    private func fail(_ key: Key, _ error: HandshakeError) -> HandshakeError {
        if pending.removeValue(forKey: key) != nil { statistics.failed += 1 }
        return error
    }

    /// Keeps the table under its bound: evicts the oldest handshake whose first message is still
    /// incomplete, else the oldest of all.
    private func makeRoom() {
        guard pending.count >= max(1, configuration.maximumPending) else { return }
        let incomplete = pending.filter { if case .receivingInitiation = $0.value.stage { true } else { false } }
        let candidates = incomplete.isEmpty ? pending : incomplete
        if let oldest = candidates.min(by: { $0.value.order < $1.value.order }) {
            pending[oldest.key] = nil
            statistics.evicted += 1
        }
    }
}

/// A set that remembers at most `capacity` elements, forgetting the oldest first.
struct BoundedSet<Element: Hashable> {
    private var members = Set<Element>()
    private var order: [Element?]
    private var next = 0

    init(capacity: Int) { order = Array(repeating: nil, count: max(1, capacity)) }

    func contains(_ element: Element) -> Bool { members.contains(element) }

    /// Adds the element; false when it was already there.
    mutating func insert(_ element: Element) -> Bool {
        guard !members.contains(element) else { return false }
        _ = insertEvicting(element)
        return true
    }

    /// Adds the element (which is not in the set) and returns the one it pushed out, if any.
    mutating func insertEvicting(_ element: Element) -> Element? {
        let gone = order[next]
        if let gone { members.remove(gone) }
        order[next] = element
        next = (next + 1) % order.count
        members.insert(element)
        return gone
    }
}
