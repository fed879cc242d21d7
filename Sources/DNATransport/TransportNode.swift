import DNACrypto
import DNADHT
import DNANat
import DNANet
import DNAReliable
import DNAWire
import Glibc
import STUNServer

/// Settings of a transport context (network_transport.h's transport_config_t).
public struct TransportConfiguration: Sendable {
    /// Keys, node id, routing table (nil: $DNA_HOME or ~/.dna).
    public var dataDirectory: String?
    public var bootstrap: [Endpoint] = []
    /// "host:port"; nil: the first bootstrap node (every node answers STUN on its DHT port).
    public var stunServer: String?
    public var turnServer: String?
    public var turnUsername: String?
    public var turnPassword: String?
    public var bindHost: String?
    public var port: UInt16 = 0
    /// Milliseconds transport_connect may take: lookup, signaling, ICE and handshake.
    public var connectTimeout = 20_000
    /// Milliseconds transport_send waits while the send buffer is full.
    public var sendTimeout = 10_000
    public var reliable = ReliableConfiguration()
    /// Incoming connections being set up at once; further offers are refused.
    public var maximumPendingSetups = 8
    /// A connection whose peer went silent (missed pings) gets a new path within this time (ms):
    /// the connecting side looks the peer up again and offers one; messages wait meanwhile.
    public var resumeWindow: UInt64 = 60_000
    /// A connection that carried no message either way for this long is closed cleanly (CLOSE);
    /// 0: never (the keepalives hold it open).
    public var idleTimeout: UInt64 = 0
    /// The inbox (offline delivery) is fetched this often, besides at start and on request (ms).
    public var offlinePollInterval: UInt64 = 60_000

    public init() {}
}

/// One identity's transport (network_transport.h): a DHT node that announces the identity and
/// carries signaling, ICE per connection, the handshake over the ICE path, then a TransportConnection.
///
/// Connecting (docs/PROTOCOL.md §7.5): find the peer's signed entry (its public key), gather
/// candidates, send an offer through the DHT's signaling, take the answer, run the ICE checks as the
/// controlling agent, then the handshake as initiator over the ICE path (the peer proves the key of
/// its entry). Accepting: the mirror image; the initiator's claimed name is then checked against its
/// own signed entry in the DHT before the connection is offered to `accept`.
public final class TransportNode: @unchecked Sendable {
    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// No entry in the DHT, or no answer to the offer.
        case peerOffline(String)
        /// The peer answered, but no path or no handshake worked.
        case unreachable(String)
        case timeout
        case closed
        case unknownConnection(Int32)
        case tooLarge(Int)
        /// The caller's buffer cannot take the peer's name (this many bytes would).
        case nameTooLong(Int)
        /// The caller's buffer cannot take the next message (this many bytes would); it stays queued.
        case bufferTooSmall(Int)
        case invalid(String)
        case io(String)
        /// Holders refused this identity's entry: the name is held by another key (§5.2).
        case nameTaken(String)
        /// The peer completed the handshake, then refused the connection (§7.5), for this reason.
        case refused(String)

        public var description: String {
            switch self {
            case .peerOffline(let why): "peer offline: \(why)"
            case .unreachable(let why): "unreachable: \(why)"
            case .timeout: "timed out"
            case .closed: "closed"
            case .unknownConnection(let id): "no connection \(id)"
            case .tooLarge(let size): "message of \(size) bytes is too large"
            case .nameTooLong(let needed): "the peer's name needs \(needed) bytes"
            case .bufferTooSmall(let needed): "the next message needs a buffer of \(needed) bytes"
            case .invalid(let why): why
            case .io(let why): why
            case .nameTaken(let name): "\(name) is held in the DHT by another key"
            case .refused(let why): "refused: \(why)"
            }
        }
    }

    private struct Peer {
        let name: IdentityName
        let connection: TransportConnection
        var agent: IceAgent
        /// Names the connection when a new path is offered for it (§7.7).
        let token: [UInt8]
        let peerKey: [UInt8]
        /// This side connected (it is the one that resumes a lost path).
        let initiator: Bool
        /// The peer's entry and the holders that forwarded the last offer: a new path is offered
        /// through them first, without a lookup (§7.7).
        var known: Known?
    }

    struct Known {
        let entry: PeerEntry
        let holders: [Endpoint]
    }

    /// An ICE path with its session, before it belongs to a connection.
    private struct Path {
        let link: IcePath
        let session: SecureSession
        let agent: IceAgent
        /// The responder's handshake, still acknowledging late pieces of message 3.
        let responder: HandshakeResponder<Int>?
        /// The initiator's: the peer's entry and the holders that forwarded the offer.
        var known: Known? = nil
        /// The handshake's time (ms), an upper bound of the path's RTT: the connection's first sample.
        var handshakeMilliseconds: UInt64? = nil
    }

    /// How long `connect` waits for the answer to its offer (ms).
    static let answerWait = 5000
    /// How long a resume offered through the known holders waits for its answer before it looks the
    /// holders up again (ms): the peer answers once it gathered (milliseconds with nearby STUN and
    /// TURN servers; a late answer to the first offer still counts).
    static let knownHoldersWait: UInt64 = 1000

    public let identity: Identity
    public let dht: DHTService
    public let configuration: TransportConfiguration
    private let stun: String?
    /// The context's I/O thread: every ICE agent and every connection of this context runs on it.
    private let loop: GLibLoop
    private let log: @Sendable (String) -> Void
    private let monitor = Monitor()
    private var running = true
    private var peers: [Int32: Peer] = [:]
    /// The datagram size the last handshake with each peer found (§9): the next handshake to it
    /// starts there (for RFC 8899's PMTU_RAISE_TIMER, 600 s).
    private var pathSizes = PathSizes<IdentityName>(capacity: 1024)
    private var acceptQueue: [Int32] = []
    private var nextID: Int32 = 1
    /// Agents of connections being set up (closed by `close` so that their checks end at once).
    private var settingUp: [ObjectIdentifier: IceAgent] = [:]
    /// Connections made and not yet registered, with the box their callback reads their id from.
    private var idBoxes: [ObjectIdentifier: IDBox] = [:]
    private var setups = 0
    /// Connections whose lost path is being resumed (or awaited).
    private var resuming = Set<Int32>()
    /// Dead connections whose unacknowledged messages went (or go) to the peer's inbox.
    private var salvaged = Set<Int32>()
    /// Connections whose undelivered messages are being stored offline right now.
    private var salvaging = Set<Int32>()
    /// What ended connections did not deliver and could not store offline, by connection id, in
    /// order: the application takes them with `takeUndelivered` (kept until then, or until `close`).
    private var undelivered: [Int32: [(stream: UInt32, bytes: [UInt8])]] = [:]
    /// Held while a dead connection's messages are stored offline, and by sendOffline: the inbox
    /// keeps them in the order they were sent.
    private let offlineOrder = Monitor()
    /// Offers being answered or answered in the last 30 s, by signal id and origin, with the answer
    /// once sent: a repeated offer (its answer was lost) gets the same answer again.
    private var answered: [OfferKey: (answer: [UInt8]?, at: UInt64)] = [:]

    private struct OfferKey: Hashable {
        var id: UInt64
        var origin: Endpoint
    }
    private var presence = PresenceStatus.online
    /// A pipe whose read end is readable exactly while something is ready (one byte in it).
    private var ready: [Int32] = [-1, -1]
    private var readySignalled = false
    /// The application asked for the descriptor: only then is it kept up to date (a write and a
    /// read on it per message would otherwise cost every blocking receiver two system calls).
    private var readinessWanted = false
    private var listener = pthread_t()
    private var listenerStarted = false
    /// What this context announced in the DHT.
    public private(set) var announcedAddress: Endpoint?
    private var inbox: OfflineInbox?

    public init(identity: Identity, configuration: TransportConfiguration,
                log: @escaping @Sendable (String) -> Void = { _ in }) throws(Failure) {
        self.identity = identity
        self.configuration = configuration
        self.log = log
        do { loop = try GLibLoop() } catch { throw .io("\(error)") }
        // A loopback STUN server is left out: libnice's sockets are bound to the interfaces'
        // addresses, from which it cannot be reached (gathering would wait 2 s for nothing), and
        // it could not tell a reflexive address anyway.
        let stunServer = configuration.stunServer ?? configuration.bootstrap.first?.description
        stun = stunServer.flatMap { server in resolve(server).contains { !$0.isLoopback } ? server : nil }
        guard pipe(&ready) == 0 else { throw .io("pipe: \(String(cString: strerror(errno)))") }
        for end in ready {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        var dhtConfiguration = DHTServiceConfiguration()
        dhtConfiguration.bindHost = configuration.bindHost
        dhtConfiguration.port = configuration.port
        dhtConfiguration.dataDirectory = configuration.dataDirectory
        do { dht = try DHTService(configuration: dhtConfiguration, loop: loop, log: log) } catch {
            for end in ready { Glibc.close(end) }
            ready = [-1, -1]  // (deinit, which runs when a fully initialized object throws, must not close them again)
            throw .io("\(error)")
        }
        dht.otherProtocol = { request, source in STUNServer.answer(request, from: source) }
        if !configuration.bootstrap.isEmpty, dht.bootstrap(configuration.bootstrap) != true {
            log("no bootstrap node answered; the DHT retries at each refresh")
        }
        let host = Self.announcedHost(bind: configuration.bindHost, toward: configuration.bootstrap.first)
        announcedAddress = Endpoint(host: host, port: dht.port)
        do {
            // A STORE is 5 datagrams: on a lossy path with few nodes around, try again when no node took it.
            for attempt in 0..<3 {
                let result = try dht.announce(identity, ip: host, port: dht.port)
                let stored = result?.stored ?? 0
                if let result, result.nameTaken {
                    // First come, first served: another key holds the name while its entry lives.
                    log("warning: \(result.taken) holders refused the entry (\(result.stored) stored it): \(identity.name) is held by another key")
                    throw Failure.nameTaken("\(identity.name)")
                }
                if stored > 0 || configuration.bootstrap.isEmpty { break }
                let offsets = (result?.clockOffsets ?? []).sorted()
                log("warning: announce stored on no node (attempt \(attempt + 1) of 3)"
                    + (offsets.isEmpty ? "" : ": refused for its time, this clock is \(-(result?.medianClockOffsetSeconds ?? 0)) s off the holders'"))
            }
        } catch let taken as Failure {
            dht.stop()
            for end in ready { Glibc.close(end) }
            ready = [-1, -1]
            throw taken
        } catch {
            dht.stop()
            for end in ready { Glibc.close(end) }
            ready = [-1, -1]  // (deinit, which runs when a fully initialized object throws, must not close them again)
            throw .invalid("announce: \(error)")
        }
        do {
            let inbox = try OfflineInbox(identity: identity, dht: dht, interval: configuration.offlinePollInterval, log: log,
                                         onChange: { [weak self] in self?.updateReadiness() })
            self.inbox = inbox
            try inbox.start()
        } catch {
            inbox?.stop()
            dht.stop()
            for end in ready { Glibc.close(end) }
            ready = [-1, -1]  // (deinit, which runs when a fully initialized object throws, must not close them again)
            throw error
        }
        let started = pthread_create(&listener, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<TransportNode>.fromOpaque(argument).takeUnretainedValue().listen()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        guard started == 0 else {
            inbox?.stop()
            dht.stop()
            for end in ready { Glibc.close(end) }
            ready = [-1, -1]  // (deinit, which runs when a fully initialized object throws, must not close them again)
            throw .io("pthread_create: \(String(cString: strerror(started)))")
        }
        listenerStarted = true
    }

    deinit {
        close()
        for end in ready where end >= 0 { Glibc.close(end) }
    }

    /// The address to put in the entry: the bound one, else the one the kernel would use toward the
    /// bootstrap node (a connected UDP socket sends nothing), else loopback.
    static func announcedHost(bind: String?, toward bootstrap: Endpoint?) -> String {
        if let bind, let endpoint = Endpoint(host: bind, port: 1), !endpoint.address.allSatisfy({ $0 == 0 }),
           endpoint.address != [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF, 0, 0, 0, 0] {
            return endpoint.host
        }
        guard let bootstrap else { return "127.0.0.1" }
        let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "127.0.0.1" }
        defer { Glibc.close(fd) }
        var off: Int32 = 0
        _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = bootstrap.port.bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: bootstrap.address) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        guard connected == 0 else { return "127.0.0.1" }
        var local = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let named = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return "127.0.0.1" }
        let bytes = withUnsafeBytes(of: local.sin6_addr) { Array($0) }
        return Endpoint(address: bytes, port: 1)?.host ?? "127.0.0.1"
    }

    // MARK: Connections

    /// Connects to `peer` (see the type's comment). Blocks up to the configured connect timeout,
    /// until the peer accepted the connection (§7.5): `.refused` when it refused it after the
    /// handshake (its cause: this identity's entry was not found in the DHT, or carries another key).
    public func connect(_ peer: IdentityName) throws(Failure) -> Int32 {
        guard monitor.locked({ running }) else { throw .closed }
        guard peer != identity.name else { throw .invalid("cannot connect to oneself") }
        let token = Sodium.randomBytes(ConnectOffer.tokenSize)
        let deadline = monotonicMilliseconds() + UInt64(configuration.connectTimeout)
        func remaining() -> Int { max(0, Int(Int64(deadline) - Int64(monotonicMilliseconds()))) }
        // Under loss ICE can end with one side connected and the other failed, and the handshake
        // then times out: a path that failed that way is tried again while time remains. A peer
        // that found no entry of this identity is tried again once it has been announced again.
        var attempt = 0
        var reannounced = false
        while true {
            attempt += 1
            do throws(Failure) {
                let path = try openPath(to: peer, kind: .offer, token: token, deadline: deadline)
                let connection = makeConnection(path)
                switch connection.awaitPeer(timeout: remaining()) {
                case .accepted?:
                    return try register(peer: peer, connection: connection, path: path, token: token, initiator: true, accepted: false)
                case .refused(let reason)?:
                    discard(connection, path)
                    let why = "\(peer) refused the connection: \(reason.map { "\($0)" } ?? "no reason given")"
                    log("warning: \(why)")
                    // Holders dropped this identity's entry, or never took it: announce it again now
                    // (and wait for that), then offer again if a holder took it.
                    guard reason == .noEntry, !reannounced, remaining() > 2000,
                          (dht.reannounceOwned()[identity.name]??.stored ?? 0) > 0 else { throw Failure.refused(why) }
                    reannounced = true
                    attempt -= 1
                    continue
                case .gone?, nil:
                    discard(connection, path)
                    throw Failure.unreachable(monitor.locked({ running })
                        ? "\(peer) did not accept the connection after the handshake" : "closed")
                }
            } catch {
                guard case .unreachable(let why) = error, !mentions(why, "refused"), attempt < 3,
                      remaining() > 1000, monitor.locked({ running }) else { throw error }
                log("connecting to \(peer): \(why); trying again")
            }
        }
    }

    /// A new path to `peer`: lookup, gathering, offer through the DHT (resent while unanswered),
    /// ICE, the handshake as initiator. `kind` .resume asks the peer to attach it to connection `token`.
    private func openPath(to peer: IdentityName, kind: ConnectOffer.Kind, token: [UInt8],
                          deadline: UInt64, known: Known? = nil) throws(Failure) -> Path {
        func remaining() -> Int { max(0, Int(Int64(deadline) - Int64(monotonicMilliseconds()))) }
        var marks = [monotonicMilliseconds()]  // lookup, gathering, signaling, answer, ICE, handshake
        // A lookup or a signal can fail on a lost datagram in a small network: each is tried 3 times.
        var found = known?.entry
        for _ in 0..<3 where found == nil && remaining() > 0 && monitor.locked({ running }) {
            found = dht.find(peer, timeout: remaining())
        }
        guard let entry = found else {
            throw monitor.locked({ running }) ? .peerOffline("\(peer) has no entry in the DHT") : .closed
        }
        marks.append(monotonicMilliseconds())
        let agent = try makeAgent(controlling: true)
        defer { forget(agent) }
        // The peer announced a loopback address (it is on this host), or this host has no other
        // interface: libnice gathers on loopback only when told to.
        if Endpoint(host: entry.ipAddress, port: 1)?.isLoopback == true || !Self.hasNetworkInterface() {
            agent.localAddresses = ["127.0.0.1"]
        }
        let candidates: [IceCandidate]
        let credentials: (ufrag: String, password: String)
        do {
            candidates = try agent.gather()
            guard let local = agent.localCredentials else { throw NatError.invalid("closed") }
            credentials = local
        } catch {
            agent.close()
            throw .io("gathering candidates: \(error)")
        }
        marks.append(monotonicMilliseconds())
        let offer = ConnectOffer(kind: kind, token: token, ufrag: credentials.ufrag, password: credentials.password,
                                 candidates: candidates)
        var signalled: (id: UInt64, holders: [Endpoint])?
        // Through the holders that forwarded the last offer, without a lookup (a resume): if none of
        // them answers within `knownHoldersWait`, a lookup finds the holders again.
        var throughKnown = false
        if let known, !known.holders.isEmpty, let id = dht.signal(peer, payload: offer.bytes, through: known.holders) {
            signalled = (id, known.holders)
            throughKnown = true
        }
        for _ in 0..<3 where (signalled?.holders.isEmpty ?? true) && remaining() > 0 {
            guard let attempt = dht.signal(peer, payload: offer.bytes, timeout: remaining()) else {
                agent.close()
                throw .closed
            }
            signalled = attempt
        }
        guard let (firstID, firstHolders) = signalled, !firstHolders.isEmpty else {
            agent.close()
            throw .peerOffline("no node holding \(peer)'s entry could reach it")
        }
        marks.append(monotonicMilliseconds())
        // The peer answers once it gathered its candidates (at most 3 s): an entry whose owner says
        // nothing within 5 s belongs to a node that is gone (entries outlive their owners by up to
        // 30 minutes).
        // A peer that sets up too many connections at once answers BUSY: it is there, so the offer
        // is sent again (after 50 ms, doubling to 800 ms, with jitter) until the connect deadline.
        var answer: ConnectOffer?
        var answerHolder: Endpoint?
        var answerDeadline = monotonicMilliseconds() + UInt64(Self.answerWait)
        var resend = monotonicMilliseconds() + (throughKnown ? Self.knownHoldersWait : 500)
        var busy = 0
        var signalID = firstID, holders = firstHolders
        var earlierID: UInt64?
        while answer == nil, remaining() > 0, monotonicMilliseconds() < answerDeadline {
            // A late answer to the offer sent through the known holders.
            if let earlierID, let late = dht.nextDelivery(earlierID, timeout: 0),
               let parsed = try? ConnectOffer(parsing: late.payload), parsed.token == token,
               parsed.kind == .answer || parsed.kind == .refusal {
                answer = parsed
                answerHolder = late.holder
                break
            }
            if throughKnown && monotonicMilliseconds() >= resend {
                // The known holders did not forward it (their tokens expired, they left): a lookup.
                throughKnown = false
                log("no answer through \(peer)'s known holders: looking them up again")
                guard let fresh = dht.signal(peer, payload: offer.bytes, timeout: remaining()), !fresh.holders.isEmpty else {
                    if !monitor.locked({ running }) { break }
                    resend = monotonicMilliseconds() + 500
                    continue
                }
                earlierID = signalID
                (signalID, holders) = fresh
                resend = monotonicMilliseconds() + 500
            }
            if monotonicMilliseconds() >= resend {
                // The offer or the answer was lost (the holders' relaying is not acknowledged), or
                // the peer was busy.
                resend = monotonicMilliseconds() + 500
                dht.signal(peer, id: signalID, payload: offer.bytes, through: holders)
            }
            guard let delivery = dht.nextDelivery(signalID, timeout: max(1, min(remaining(), 250,
                                                                                Int(clamping: resend - min(resend, monotonicMilliseconds()))))) else {
                if !monitor.locked({ running }) { break }
                continue
            }
            guard let parsed = try? ConnectOffer(parsing: delivery.payload), parsed.token == token else { continue }
            throughKnown = false  // the holders forward it
            if parsed.kind == .busy {
                busy += 1
                answerDeadline = deadline
                let backoff = UInt64(50) << UInt64(min(busy - 1, 4))
                resend = monotonicMilliseconds() + backoff / 2 + UInt64(Sodium.randomBytes(2).reduce(0) { $0 << 8 | Int($1) }) % backoff
                continue
            }
            answer = parsed
            answerHolder = delivery.holder
        }
        guard let answer, let answerHolder, answer.kind == .answer || answer.kind == .refusal else {
            agent.close()
            guard monitor.locked({ running }) else { throw .closed }
            if busy > 0 { throw .unreachable("\(peer) was busy setting up other connections until the connect timeout (\(busy) busy answers)") }
            throw .peerOffline("\(peer) did not answer the offer")
        }
        guard answer.kind == .answer else {
            agent.close()
            throw .unreachable("\(peer) refused the connection (no such connection to resume)")
        }
        marks.append(monotonicMilliseconds())
        let link: IcePath
        do {
            try agent.setRemoteCredentials(ufrag: answer.ufrag, password: answer.password)
            for candidate in answer.reachableCandidates(learnedFrom: answerHolder) { try agent.addRemoteCandidate(candidate) }
            agent.timeoutMilliseconds = max(100, remaining())
            link = try agent.establishPath()
        } catch {
            agent.close()
            throw monitor.locked({ running }) ? .unreachable("ICE: \(error)") : .closed
        }
        marks.append(monotonicMilliseconds())
        let session: SecureSession, handshakeTime: UInt64
        do {
            let known = monitor.locked { pathSizes.size(for: peer, now: monotonicMilliseconds()) }
            (session, handshakeTime) = try HandshakeOverPath.initiate(path: link, identity: identity, peer: peer, publicKey: entry.publicKey,
                                                     timeout: remaining(), datagramSize: known)
            monitor.locked { pathSizes.handshakeFound(peer, started: known, found: session.datagramSize, now: monotonicMilliseconds()) }
        } catch {
            link.close()
            agent.close()
            throw .unreachable("handshake: \(error)")
        }
        marks.append(monotonicMilliseconds())
        let phases = zip(marks.dropFirst(), marks).map { String($0 - $1) }.joined(separator: "/")
        log("\(kind == .resume ? "new path" : "connected") to \(peer) in \(marks[marks.count - 1] - marks[0]) ms "
            + "(lookup/gathering/signal/answer/ICE/handshake \(phases) ms; \(session.suite))"
            + (session.datagramSize < Pieces.maximumDatagramSize ? "; the path carries datagrams of \(session.datagramSize) bytes" : ""))
        return Path(link: link, session: session, agent: agent, responder: nil, known: Known(entry: entry, holders: holders),
                    handshakeMilliseconds: handshakeTime)
    }

    /// The initiator's side of a lost path: new paths are tried until one works or the resume window
    /// passes; then the connection is dead.
    private func resume(_ id: Int32) {
        let end = monotonicMilliseconds() + configuration.resumeWindow
        var refusals = 0, attempts = 0
        while monotonicMilliseconds() < end, monitor.locked({ running }) {
            guard let peer = stillLost(id) else { return }
            attempts += 1
            do {
                // The first attempt offers through the holders the connection's last offer went
                // through, without a lookup; later ones look the peer up again.
                let path = try openPath(to: peer.name, kind: .resume, token: peer.token,
                                        deadline: min(end, monotonicMilliseconds() + UInt64(configuration.connectTimeout)),
                                        known: attempts == 1 ? peer.known : nil)
                guard path.session.peerPublicKey == peer.peerKey else {
                    path.link.close()
                    path.agent.close()
                    log("a new path to \(peer.name) ended at another key: refused")
                    continue
                }
                _ = attach(path, to: id)  // the loop's check ends the work (or goes on if lost again)
            } catch {
                log("new path to \(peer.name) failed: \(error)")
                // A peer that restarted has no such connection and refuses the new path: the
                // connection cannot come back (twice in a row, in case a refusal was not meant for
                // this offer; a busy peer answers BUSY, which openPath waits through).
                if case .unreachable(let why) = error, mentions(why, "refused") {
                    refusals += 1
                    if refusals >= 2 { break }
                } else {
                    refusals = 0
                }
                usleep(500_000)
            }
        }
        giveUp(id)
    }

    /// Moves connection `id` to `path`; the old path's agent goes.
    private func attach(_ path: Path, to id: Int32) -> Bool {
        guard let peer = monitor.locked({ peers[id] }) else {
            path.link.close()
            path.agent.close()
            return false
        }
        guard peer.connection.replacePath(path.link, sealer: path.session.sealer, opener: path.session.opener,
                                          sharesDatagrams: path.session.sharesDatagrams, unopened: Self.unopened(path.responder), datagramSize: path.session.datagramSize) else {
            path.agent.close()
            return false
        }
        monitor.locked {
            peers[id]?.agent = path.agent
            if let known = path.known { peers[id]?.known = known }
        }
        peer.agent.close()
        log("connection \(id) to \(peer.name) moved to a new path")
        return true
    }

    /// The responder's side of a lost path: the initiator resumes; if it has not within the window,
    /// the connection is dead.
    private func awaitResume(_ id: Int32) {
        let end = monotonicMilliseconds() + configuration.resumeWindow
        while monotonicMilliseconds() < end, monitor.locked({ running }) {
            guard stillLost(id) != nil else { return }
            usleep(200_000)
        }
        giveUp(id)
    }

    /// The resume window passed, the peer refused the new path (it restarted), or the context is
    /// closing: a connection whose path is still lost is dead, and what the peer's application did
    /// not take goes to its inbox or back to the application (`salvage`).
    private func giveUp(_ id: Int32) {
        // Holding the order lock from before the connection refuses sends: an application that
        // turns to transport_send_offline then stores after these.
        offlineOrder.locked {
            let peer = monitor.locked { () -> Peer? in
                guard let peer = peers[id], peer.connection.isPathLost else { return nil }
                salvaged.insert(id)
                salvaging.insert(id)
                return peer
            }
            let messages = peer?.connection.abandon() ?? []
            _ = monitor.locked { resuming.remove(id) }
            if let peer { salvage(messages, of: id, to: peer.name) }
        }
    }

    /// What a connection that ended did not deliver (§7.8): to the peer's inbox in the DHT (offline
    /// delivery, §8) when all of it fits there (at most `inboxQuota` messages, each of at most
    /// 4,096 B: a holder keeps no more from one sender), else, and whatever no holder stored, kept
    /// for the application in order (`takeUndelivered`). Called on a thread of its own (the puts block).
    private func salvage(_ messages: [(stream: UInt32, bytes: [UInt8])], of id: Int32, to peer: IdentityName) {
        defer {
            _ = monitor.locked { salvaging.remove(id) }
            monitor.broadcast()
            updateReadiness()
        }
        guard !messages.isEmpty else { return }
        let fits = messages.count <= Self.inboxQuota && messages.allSatisfy { $0.bytes.count <= Offline.maximumMessage }
        guard fits, monitor.locked({ running }) else {
            keep(messages, of: id, to: peer, because: fits ? "the context is closing"
                 : "more than the peer's inbox holds (\(Self.inboxQuota) messages of at most \(Offline.maximumMessage) B)")
            return
        }
        var outcomes: [Failure?] = []
        do { outcomes = try storeOffline(peer, messages.map(\.bytes)) } catch {
            outcomes = Array(repeating: error, count: messages.count)
        }
        var failed: [(stream: UInt32, bytes: [UInt8])] = []
        for (index, message) in messages.enumerated() where index >= outcomes.count || outcomes[index] != nil {
            failed.append(message)
        }
        log("connection \(id) to \(peer) ended: its \(messages.count) undelivered messages went to the peer's inbox "
            + "(offline delivery), \(failed.count) of them could not be stored"
            + (outcomes.compactMap { $0 }.first.map { " (\($0))" } ?? ""))
        if !failed.isEmpty { keep(failed, of: id, to: peer, because: "no holder stored them") }
    }

    /// A holder keeps at most this many inbox messages from one sender (DHTConfiguration.mailPerSender).
    static let inboxQuota = DHTConfiguration().mailPerSender

    private func keep(_ messages: [(stream: UInt32, bytes: [UInt8])], of id: Int32, to peer: IdentityName, because why: String) {
        monitor.locked { undelivered[id, default: []].append(contentsOf: messages) }
        log("warning: connection \(id) to \(peer) ended with \(messages.count) messages not delivered (\(why)): "
            + "the application takes them back with transport_take_undelivered")
    }

    /// The next message connection `id` did not deliver (it ended: §7.8), in the order sent on each
    /// stream; nil when there is none (more). Waits up to `timeout` ms (negative: forever) while the
    /// connection's messages are still being stored offline, then throws `.timeout`.
    public func takeUndelivered(_ id: Int32, timeout: Int) throws(Failure) -> (stream: UInt32, bytes: [UInt8])? {
        let outcome = monitor.wait(milliseconds: timeout < 0 ? Int(Int32.max) : timeout) { () -> (UInt32, [UInt8])?? in
            // Being stored offline, or closed by the peer a moment ago and not yet looked at.
            if salvaging.contains(id) || peers[id].map({ $0.connection.isClosedByPeer && !salvaged.contains(id) && running }) == true {
                return nil
            }
            guard var left = undelivered[id], !left.isEmpty else { return .some(nil) }
            let first = left.removeFirst()
            undelivered[id] = left.isEmpty ? nil : left
            return .some((first.stream, first.bytes))
        }
        guard let outcome else { throw .timeout }
        return outcome.map { (stream: $0.0, bytes: $0.1) }
    }

    /// The connection while its path is still lost; else nil, and it leaves `resuming` in the same
    /// step (so that a loss reported meanwhile starts a new resume instead of being missed).
    private func stillLost(_ id: Int32) -> Peer? {
        monitor.locked { () -> Peer? in
            guard let peer = peers[id], peer.connection.isPathLost else {
                resuming.remove(id)
                return nil
            }
            return peer
        }
    }

    /// A connection changed (messages, end, lost path): readiness, and resuming a lost path.
    private func connectionChanged(_ id: Int32) {
        updateReadiness()
        // The peer closed the connection (CLOSE) while its application had not taken everything.
        if let closed = monitor.locked({ () -> Peer? in
            guard running, let peer = peers[id], peer.connection.isClosedByPeer, salvaged.insert(id).inserted else { return nil }
            salvaging.insert(id)
            return peer
        }) {
            // Storing waits for the network, so it runs on a thread of its own, unless there is
            // nothing to store (the usual clean close): then the connection ends here.
            let left = closed.connection.isFullyDelivered ? closed.connection.abandon() : nil
            if left?.isEmpty == true {
                _ = monitor.locked { salvaging.remove(id) }
                monitor.broadcast()
                return
            }
            let started = spawn { [self] in offlineOrder.locked { salvage(left ?? closed.connection.abandon(), of: id, to: closed.name) } }
            if !started { salvage(left ?? closed.connection.abandon(), of: id, to: closed.name) }
            return
        }
        guard let peer = monitor.locked({ () -> Peer? in
            guard running, let peer = peers[id], peer.connection.isPathLost, resuming.insert(id).inserted else { return nil }
            return peer
        }) else { return }
        log("connection \(id) to \(peer.name): the path is lost; \(peer.initiator ? "resuming" : "waiting for the peer to resume")")
        let started = spawn { [self] in
            if peer.initiator { resume(id) } else { awaitResume(id) }
        }
        if !started {
            _ = monitor.locked { salvaging.insert(id) }
            let left = peer.connection.abandon()
            _ = monitor.locked { resuming.remove(id) }
            keep(left, of: id, to: peer.name, because: "no thread to resume the connection")
            _ = monitor.locked { salvaging.remove(id) }
            monitor.broadcast()
        }
    }

    /// The next incoming connection, waiting up to `timeout` ms (negative: forever). When `fits`
    /// refuses the peer's name, throws `.nameTooLong` and leaves the connection queued.
    public func accept(timeout: Int, fits: (IdentityName) -> Bool = { _ in true }) throws(Failure) -> (id: Int32, peer: IdentityName) {
        let outcome = monitor.wait(milliseconds: timeout < 0 ? Int(Int32.max) : timeout) { () -> Result<(Int32, IdentityName), Failure>? in
            if !running { return .failure(.closed) }
            guard let id = acceptQueue.first else { return nil }
            guard let peer = peers[id] else {
                acceptQueue.removeFirst()
                return nil
            }
            guard fits(peer.name) else { return .failure(.nameTooLong(peer.name.utf8.count + 1)) }
            acceptQueue.removeFirst()
            return .success((id, peer.name))
        }
        updateReadiness()
        guard let outcome else { throw .timeout }
        switch outcome {
        case .success(let (id, peer)): return (id, peer)
        case .failure(let failure): throw failure
        }
    }

    /// Queues `message` on `stream`; waits only while the send buffer is full (up to the send timeout).
    public func send(_ id: Int32, _ message: [UInt8], stream: UInt32 = 0) throws(Failure) {
        let peer = try lookup(id)
        do { try peer.connection.send(message, stream: stream, timeout: configuration.sendTimeout) } catch {
            throw Self.map(error)
        }
    }

    /// The next message of connection `id` (any stream), waiting up to `timeout` ms (negative: forever).
    public func receive(_ id: Int32, timeout: Int) throws(Failure) -> (stream: UInt32, bytes: [UInt8]) {
        let peer = try lookup(id)
        defer { updateReadiness() }
        do { return try peer.connection.receive(timeout: timeout < 0 ? Int(Int32.max) : timeout) } catch {
            throw Self.map(error)
        }
    }

    /// `receive`, copying the message into the caller's `buffer` (no allocation per message); its
    /// stream and length. A message longer than `buffer` stays queued: `.bufferTooSmall(its length)`.
    public func receive(_ id: Int32, into buffer: UnsafeMutableRawBufferPointer, timeout: Int) throws(Failure) -> (stream: UInt32, length: Int) {
        let peer = try lookup(id)
        defer { updateReadiness() }
        do { return try peer.connection.receive(into: buffer, timeout: timeout < 0 ? Int(Int32.max) : timeout) } catch {
            throw Self.map(error)
        }
    }

    /// Bytes connection `id` holds (see `TransportConnection.buffered`): `send`, queued or not
    /// acknowledged, at most `reliable.maximumQueuedBytes` (or one larger message); `receive`,
    /// arrived and not yet taken with `receive`, at most `reliable.receiveBuffer` (or one larger message).
    public func buffered(_ id: Int32) throws(Failure) -> (send: Int, receive: Int) {
        try lookup(id).connection.buffered
    }

    /// What became of this identity's announcements (`DHTService.announcement`): whether peers can
    /// find it, since when, on how many holders.
    public func announcement() throws(Failure) -> AnnouncementState {
        guard monitor.locked({ running }), let state = dht.announcement(of: identity.name) else { throw .closed }
        return state
    }

    /// The peer's last pushed status (online until it pushes another).
    public func peerPresence(_ id: Int32) throws(Failure) -> PresenceStatus {
        try lookup(id).connection.peerPresence ?? .online
    }

    /// Pushes `status` to every connected peer, and to those that connect later.
    public func setPresence(_ status: PresenceStatus) {
        let all = monitor.locked { () -> [Peer] in
            presence = status
            return Array(peers.values)
        }
        for peer in all { peer.connection.sendPresence(status) }
    }

    /// Tests: the path of connection `id` stops carrying anything (its ICE agent goes away), as when
    /// a NAT forgets the mapping or the network changes.
    func breakPath(_ id: Int32) {
        monitor.locked { peers[id] }?.agent.close()
    }

    /// Tests: the path of connection `id` silently carries nothing more (see `IceAgent.blackhole`).
    func silencePath(_ id: Int32) {
        monitor.locked { peers[id] }?.agent.blackhole()
    }

    /// Ends connection `id`: waits up to `linger` ms (nil: the send timeout) for queued messages to be
    /// acknowledged, tells the peer, releases the path. Throws `.timeout` when some were not
    /// acknowledged by then: the connection ended all the same, and those messages are the
    /// application's again (`takeUndelivered` with the same id).
    public func disconnect(_ id: Int32, linger: Int? = nil) throws(Failure) {
        guard let peer = monitor.locked({ () -> Peer? in
            acceptQueue.removeAll { $0 == id }
            salvaged.remove(id)
            return peers.removeValue(forKey: id)
        }) else { throw .unknownConnection(id) }
        if let statistics = peer.connection.statistics {
            log("connection \(id) to \(peer.name) closing: \(statistics.packetsSent) packets sent, "
                + "\(statistics.retransmissions) retransmitted, \(statistics.timeouts) RTOs, \(statistics.probes) probes; "
                + "\(statistics.packetsReceived) received, \(statistics.duplicates) duplicates, \(statistics.messagesDelivered) messages delivered, "
                + "\(statistics.acknowledgementsSent) ACKs sent, in \(peer.connection.datagramsSent ?? 0) datagrams")
        }
        let left = peer.connection.disconnect(linger: linger ?? configuration.sendTimeout)
        peer.agent.close()
        updateReadiness()
        if !left.isEmpty {
            keep(left, of: id, to: peer.name, because: "not acknowledged within the linger of transport_disconnect")
            throw .timeout
        }
    }

    public func statistics(_ id: Int32) throws(Failure) -> ReliableConnection.Statistics {
        guard let statistics = try lookup(id).connection.statistics else { throw .closed }
        return statistics
    }

    // MARK: Offline delivery (docs/PROTOCOL.md §8)

    /// Stores `message` (at most 4,096 bytes) in `peer`'s inbox in the DHT, sealed to the inbox's
    /// keys and signed by this identity, for 7 days or until `peer` takes it.
    public func sendOffline(_ peer: IdentityName, _ message: [UInt8]) throws(Failure) {
        // After what a dead connection to the peer had not delivered (§7.8), if that is being stored.
        try offlineOrder.locked { Result(catching: { () throws(Failure) in try storeOffline(peer, message) }) }.get()
    }

    private func storeOffline(_ peer: IdentityName, _ message: [UInt8]) throws(Failure) {
        if let failure = try storeOffline(peer, [message]).first ?? nil { throw failure }
    }

    private func storeOffline(_ peer: IdentityName, _ messages: [[UInt8]]) throws(Failure) -> [Failure?] {
        guard let inbox, monitor.locked({ running }) else { throw .closed }
        guard peer != identity.name else { throw .invalid("cannot send to oneself") }
        return try inbox.send(messages, to: peer)
    }

    /// The next message that waited in this identity's inbox, waiting up to `timeout` ms
    /// (negative: forever). Each is handed out once, also across restarts.
    public func receiveOffline(timeout: Int, fits: (IdentityName) -> Bool = { _ in true }) throws(Failure) -> OfflineDelivery {
        guard let inbox else { throw .closed }
        defer { updateReadiness() }
        return try inbox.take(timeout: timeout < 0 ? Int(Int32.max) : timeout, fits: fits)
    }

    /// Fetches the inbox now (it is also fetched at start and every `offlinePollInterval`); returns
    /// how many new messages wait.
    public func fetchOffline() throws(Failure) -> Int {
        guard let inbox, let count = inbox.fetchNow() else { throw .closed }
        return count
    }

    /// Readable while `accept` or `receive` on some connection would not block (level-triggered;
    /// kept up to date from the first time it is asked for).
    public var readinessDescriptor: Int32 {
        monitor.locked { readinessWanted = true }
        updateReadiness()
        return ready[0]
    }

    /// Ids of the live connections.
    public var connectionIDs: [Int32] { monitor.locked { peers.keys.sorted() } }

    /// Ends every connection, the listener and the DHT node. Idempotent.
    public func close() {
        let (wasRunning, agents) = monitor.locked { () -> (Bool, [IceAgent]) in
            defer { running = false }
            return (running, Array(settingUp.values))
        }
        monitor.broadcast()
        guard wasRunning else { return }
        for agent in agents { agent.close() }
        _ = monitor.wait(milliseconds: 5000) { setups == 0 ? true : nil }
        if listenerStarted { pthread_join(listener, nil) }
        let all = monitor.locked { () -> [Peer] in
            defer {
                peers.removeAll()
                acceptQueue.removeAll()
            }
            return Array(peers.values)
        }
        var dropped = monitor.locked { undelivered.values.reduce(0) { $0 + $1.count } }
        for peer in all {
            dropped += peer.connection.disconnect(linger: 200).count
            peer.agent.close()
        }
        if dropped > 0 {
            log("warning: closing with \(dropped) messages that were not delivered and not taken back (transport_take_undelivered): they are dropped")
        }
        monitor.locked { undelivered.removeAll() }
        inbox?.stop()
        dht.stop()
        // The agents' closes release their TURN allocations on the loop (IceAgent.close): up to 1 s
        // for the answers, then the loop stops (a close still waiting then never completes).
        loop.drain(milliseconds: 1000)
        loop.stop()
    }

    // MARK: Internals

    private func lookup(_ id: Int32) throws(Failure) -> Peer {
        guard let peer = monitor.locked({ peers[id] }) else {
            throw monitor.locked({ running }) ? .unknownConnection(id) : .closed
        }
        return peer
    }

    private static func map(_ error: TransportConnection.Failure) -> Failure {
        switch error {
        case .closed: .closed
        case .full, .timeout: .timeout
        case .tooLarge(let size): .tooLarge(size)
        case .bufferTooSmall(let needed): .bufferTooSmall(needed)
        }
    }

    private func makeAgent(controlling: Bool) throws(Failure) -> IceAgent {
        let agent: IceAgent
        do {
            // The transport watches the path itself (pings, §7.4) and replaces it (§7.7).
            agent = try IceAgent(stun: stun, consentFreshness: false, loop: loop)
            if let server = configuration.turnServer {
                try agent.setTurnServer(server, username: configuration.turnUsername ?? "", password: configuration.turnPassword ?? "")
            }
            try agent.setControlling(controlling)
        } catch { throw .io("ICE agent: \(error)") }
        let admitted = monitor.locked { () -> Bool in
            guard running else { return false }
            settingUp[ObjectIdentifier(agent)] = agent
            return true
        }
        guard admitted else {
            agent.close()
            throw .closed
        }
        return agent
    }

    private func forget(_ agent: IceAgent) {
        _ = monitor.locked { settingUp.removeValue(forKey: ObjectIdentifier(agent)) }
    }

    private static func unopened(_ responder: HandshakeResponder<Int>?) -> (([UInt8]) -> [[UInt8]])? {
        responder.map { responder in
            { datagram in
                try? responder.receive(datagram, from: 0, now: monotonicMilliseconds())
                return responder.takeDatagrams().map(\.1)
            }
        }
    }

    /// A connection over `path`, not yet known to the application (`register`): its changes reach
    /// `connectionChanged` once it is.
    private func makeConnection(_ path: Path) -> TransportConnection {
        let box = IDBox()
        var reliable = configuration.reliable
        reliable.datagramSize = path.session.datagramSize  // what the handshake found the path carries (§9)
        reliable.handshakeRTT = path.handshakeMilliseconds
        let connection = TransportConnection(
            path: path.link, sealer: path.session.sealer, opener: path.session.opener,
            sharesDatagrams: path.session.sharesDatagrams, configuration: reliable,
            unopened: Self.unopened(path.responder), resumable: true,
            onChange: { [weak self] in
                let id = box.id
                if id != 0 { self?.connectionChanged(id) }
            })
        monitor.locked { idBoxes[ObjectIdentifier(connection)] = box }
        return connection
    }

    private final class IDBox: @unchecked Sendable { var id: Int32 = 0 }

    /// Closes a connection that was never registered, and its path.
    private func discard(_ connection: TransportConnection, _ path: Path) {
        _ = monitor.locked { idBoxes.removeValue(forKey: ObjectIdentifier(connection)) }
        connection.close()
        path.agent.close()
    }

    /// Gives `connection` an id and hands it to the application. The accepting side announces its
    /// presence at once: that first record tells the initiator the connection was accepted (§7.5).
    private func register(peer: IdentityName, connection: TransportConnection, path: Path, token: [UInt8], initiator: Bool,
                          accepted: Bool) throws(Failure) -> Int32 {
        let (id, status) = monitor.locked { () -> (Int32?, PresenceStatus) in
            guard running, let box = idBoxes.removeValue(forKey: ObjectIdentifier(connection)) else { return (nil, presence) }
            let id = nextID
            nextID = nextID == Int32.max ? 1 : nextID + 1
            box.id = id
            peers[id] = Peer(name: peer, connection: connection, agent: path.agent, token: token,
                             peerKey: path.session.peerPublicKey, initiator: initiator, known: path.known)
            if accepted { acceptQueue.append(id) }
            return (id, presence)
        }
        guard let id else {
            connection.close()
            path.agent.close()
            throw .closed
        }
        if accepted || status != .online { connection.sendPresence(status) }
        monitor.broadcast()
        // Something may have happened before it had its id (the peer closed it already).
        connectionChanged(id)
        return id
    }

    /// Sets or clears the eventfd so that it is readable exactly while something is ready.
    private func updateReadiness() {
        monitor.locked {
            guard readinessWanted else { return }
            let isReady = !acceptQueue.isEmpty || peers.values.contains { $0.connection.isReadable } || inbox?.hasPending == true
            var byte: UInt8 = 1
            if isReady && !readySignalled {
                _ = write(ready[1], &byte, 1)
                readySignalled = true
            } else if !isReady && readySignalled {
                _ = read(ready[0], &byte, 1)
                readySignalled = false
            }
        }
    }

    /// Closes the connections idle for longer than `idleTimeout` (checked by the listener every 250 ms).
    private func closeIdleConnections() {
        guard configuration.idleTimeout > 0 else { return }
        let idle = monitor.locked { peers.filter {
            !$0.value.connection.isDead && !$0.value.connection.isClosed && $0.value.connection.idleFor > configuration.idleTimeout
        } }
        for (id, peer) in idle {
            log("connection \(id) to \(peer.name) idle for \(configuration.idleTimeout) ms: closing")
            let left = peer.connection.disconnect(linger: 0)
            peer.agent.close()
            if !left.isEmpty { keep(left, of: id, to: peer.name, because: "the connection was closed for being idle") }
            updateReadiness()
        }
    }

    /// The listener thread: takes offers from the DHT and sets each up on its own thread.
    private func listen() {
        while monitor.locked({ running }) {
            closeIdleConnections()
            guard let request = dht.nextSignal(timeout: 250) else { continue }
            guard let offer = try? ConnectOffer(parsing: request.payload), offer.kind == .offer || offer.kind == .resume else {
                log("ignored a signal that is not a connection offer")
                continue
            }
            let key = OfferKey(id: request.id, origin: request.origin)
            let now = monotonicMilliseconds()
            let repeated = monitor.locked { () -> (seen: Bool, answer: [UInt8]?) in
                answered = answered.filter { $0.value.at + 30_000 > now }
                guard let known = answered[key] else { return (false, nil) }
                return (true, known.answer)
            }
            if repeated.seen {
                if let answer = repeated.answer { dht.reply(to: request, payload: answer) }
                continue
            }
            let admitted = monitor.locked { () -> Bool in
                guard running, setups < configuration.maximumPendingSetups else { return false }
                setups += 1
                answered[key] = (nil, now)
                return true
            }
            guard admitted else {
                // Not refused: the offering side sends the same offer again shortly, and it is taken
                // once a set-up ends (it is not remembered as answered).
                dht.reply(to: request, payload: ConnectOffer(kind: .busy, token: offer.token, ufrag: "-", password: "-",
                                                             candidates: []).bytes)
                continue
            }
            let started = spawn { [self] in
                defer {
                    monitor.locked { setups -= 1 }
                    monitor.broadcast()
                }
                do { try self.answer(request, offer: offer, key: key) } catch { log("incoming connection failed: \(error)") }
            }
            if !started {
                monitor.locked { setups -= 1 }
                monitor.broadcast()
            }
        }
    }

    private func answer(_ request: SignalRequest, offer: ConnectOffer, key: OfferKey) throws(Failure) {
        let deadline = monotonicMilliseconds() + UInt64(configuration.connectTimeout)
        func remaining() -> Int { max(0, Int(Int64(deadline) - Int64(monotonicMilliseconds()))) }
        // A resume names a connection of this side that the offering side made.
        var resumed: (id: Int32, peer: Peer)?
        if offer.kind == .resume {
            resumed = monitor.locked { peers.first { !$0.value.initiator && $0.value.token == offer.token }.map { ($0.key, $0.value) } }
            guard resumed != nil else {
                dht.reply(to: request, payload: ConnectOffer(kind: .refusal, token: offer.token, ufrag: "-", password: "-",
                                                             candidates: []).bytes)
                // A connection of an earlier run of this identity: its peer gives up on it and stores
                // what it had not delivered in this identity's inbox (§7.8); fetch soon after.
                inbox?.fetchSoon(after: [3_000, 8_000, 20_000])
                throw .invalid("a new path was offered for a connection this side does not have")
            }
        }
        let agent = try makeAgent(controlling: false)
        defer { forget(agent) }
        // An initiator on this host offers loopback candidates only (see openPath): answer in kind.
        if !offer.candidates.isEmpty && offer.candidates.allSatisfy({ Endpoint(host: $0.ip, port: 1)?.isLoopback == true })
            || !Self.hasNetworkInterface() {
            agent.localAddresses = ["127.0.0.1"]
        }
        let link: IcePath
        do {
            try agent.setRemoteCredentials(ufrag: offer.ufrag, password: offer.password)
            let candidates = try agent.gather()
            guard let local = agent.localCredentials else { throw NatError.invalid("closed") }
            let answer = ConnectOffer(kind: .answer, token: offer.token, ufrag: local.ufrag, password: local.password,
                                      candidates: candidates).bytes
            monitor.locked { answered[key] = (answer, monotonicMilliseconds()) }
            dht.reply(to: request, payload: answer)
            for candidate in offer.reachableCandidates(learnedFrom: request.holder) { try agent.addRemoteCandidate(candidate) }
            agent.timeoutMilliseconds = max(100, remaining())
            link = try agent.establishPath()
        } catch {
            agent.close()
            throw .unreachable("ICE: \(error)")
        }
        let responder = HandshakeResponder<Int>(identity: identity, configuration: HandshakeOverPath.configuration)
        let session: SecureSession, handshakeTime: UInt64
        do { (session, handshakeTime) = try HandshakeOverPath.respond(path: link, responder: responder, timeout: remaining()) } catch {
            link.close()
            agent.close()
            throw .unreachable("handshake: \(error)")
        }
        let path = Path(link: link, session: session, agent: agent, responder: responder, handshakeMilliseconds: handshakeTime)
        if let (id, peer) = resumed {
            // The new path must end at the key that made the connection.
            guard session.peerPublicKey == peer.peerKey else {
                link.close()
                agent.close()
                throw .unreachable("a new path for connection \(id) was offered by another key")
            }
            _ = attach(path, to: id)
            return
        }
        // The name is the initiator's claim: its own signed entry must carry the key it proved.
        var found: PeerEntry?
        for _ in 0..<3 where found == nil && monitor.locked({ running }) {
            found = dht.find(session.peerName, timeout: max(1000, remaining()))
        }
        guard let entry = found, entry.publicKey == session.peerPublicKey else {
            let reason: CloseReason = found == nil ? .noEntry : .otherKey
            refuse(link, session: session, reason: reason)
            link.close()
            agent.close()
            throw .refused("\(session.peerName) \(found == nil ? "has no entry in the DHT" : "proved another key than its DHT entry's")")
        }
        let connection = makeConnection(path)
        _ = try register(peer: session.peerName, connection: connection, path: path, token: offer.token, initiator: false, accepted: true)
    }

    /// Tells the initiator why its connection is refused (§7.5): a sealed CLOSE with the reason,
    /// three times, then once for each record it sends within 2 s (its PINGs ask for the decision),
    /// at most 10 more.
    private func refuse(_ link: IcePath, session: SecureSession, reason: CloseReason) {
        let frame = ReliableConnection.closeFrame(reason: reason)
        func sendClose() {
            guard let sealed = try? session.sealer.seal(type: frame.type, word0: frame.word0, word1: frame.word1,
                                                         plaintext: frame.payload) else { return }
            _ = link.send(sealed)
        }
        for _ in 0..<3 { sendClose() }
        let end = monotonicMilliseconds() + 2000
        var answered = 0
        while answered < 10, monitor.locked({ running }), let datagram = link.receive(waitingUntil: end) {
            // A record (not a late handshake piece, which the initiator sent before it finished).
            guard datagram.count >= 8, datagram[6] != 0 || (datagram[7] != 0x10 && datagram[7] != 0x11) else { continue }
            sendClose()
            answered += 1
        }
    }
}

extension TransportNode {
    /// An interface that is up and has an address other than loopback and IPv6 link-local, on
    /// which libnice gathers by default (a host with none gets loopback candidates instead).
    static func hasNetworkInterface() -> Bool {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return true }  // unknown: libnice's default
        defer { freeifaddrs(list) }
        var item: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = item {
            defer { item = entry.pointee.ifa_next }
            let flags = Int32(bitPattern: entry.pointee.ifa_flags)
            guard flags & Int32(IFF_UP) != 0, flags & Int32(IFF_LOOPBACK) == 0,
                  let address = entry.pointee.ifa_addr else { continue }
            switch Int32(address.pointee.sa_family) {
            case AF_INET: return true
            case AF_INET6:
                let bytes = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) } }
                if !(bytes[0] == 0xFE && bytes[1] & 0xC0 == 0x80) { return true }
            default: continue
            }
        }
        return false
    }
}

/// Starts a detached thread running `body`; false if the system refused.
@discardableResult
func spawn(_ body: @escaping () -> Void) -> Bool {
    final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let started = pthread_create(&thread, nil, { argument in
        guard let argument else { return nil }
        let box = Unmanaged<Box>.fromOpaque(argument).takeRetainedValue()
        box.body()
        return nil
    }, box)
    guard started == 0 else {
        Unmanaged<Box>.fromOpaque(box).release()
        return false
    }
    pthread_detach(thread)
    return true
}

/// True when `word` occurs in `text`. `String.contains(_: String)` lives in _StringProcessing, whose
/// one object file brings the regex engine (1.3 MB) into the statically linked library.
func mentions(_ text: String, _ word: String) -> Bool {
    let haystack = Array(text.utf8), needle = Array(word.utf8)
    guard !needle.isEmpty else { return true }
    guard haystack.count >= needle.count else { return false }
    return (0...(haystack.count - needle.count)).contains { haystack[$0..<$0 + needle.count].elementsEqual(needle) }
}
