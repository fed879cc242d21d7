import CNice
import DNADHT
import DNANet
import Glibc

/// The seed's ice_candidate_t as a Swift value.
public struct IceCandidate: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Int32, Sendable {
        case local = 0, reflexive = 1, relay = 2

        /// RFC 8445 §5.1.2.2 type preferences (peer-reflexive is never signalled).
        var typePreference: UInt32 {
            switch self {
            case .local: 126
            case .reflexive: 100
            case .relay: 0
            }
        }
    }

    public var ip: String
    public var port: UInt16
    public var kind: Kind

    public init(ip: String, port: UInt16, kind: Kind) {
        self.ip = ip
        self.port = port
        self.kind = kind
    }

    public var description: String { "\(kind) \(ip.contains(":") ? "[\(ip)]" : ip):\(port)" }

    /// RFC 8445 §5.1.2.1 priority of the `index`-th candidate of its kind, component 1.
    public func priority(index: Int) -> UInt32 {
        let localPreference = UInt32(max(0, 65535 - index))
        return (kind.typePreference << 24) + (localPreference << 8) + 255
    }

    /// RFC 1918, RFC 6598 (carrier-grade NAT) or IPv6 unique-local: an address behind some NAT.
    public var isPrivate: Bool {
        let parts = ip.split(separator: ".").compactMap { UInt8($0) }
        if parts.count == 4 {
            return parts[0] == 10 || (parts[0] == 172 && (16...31).contains(parts[1])) || (parts[0] == 192 && parts[1] == 168)
                || (parts[0] == 100 && (64...127).contains(parts[1]))
        }
        let lower = ip.lowercased()
        return lower.hasPrefix("fc") || lower.hasPrefix("fd")
    }

    /// The foundation both sides derive: the kind and the address (RFC 8445 §5.1.1.3 groups candidates
    /// of one type, base and server; the address stands for both here).
    public var foundation: String {
        var hash: UInt32 = 2_166_136_261
        for byte in ip.utf8 {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return "\(kind.rawValue)\(String(hash, radix: 16))"
    }
}

/// Why an ICE call failed.
public enum NatError: Error, CustomStringConvertible, Sendable {
    case invalid(String)
    case unreachable(String)
    case notFound
    case io(String)

    public var description: String {
        switch self {
        case .invalid(let text): "invalid: \(text)"
        case .unreachable(let text): "unreachable: \(text)"
        case .notFound: "no pair selected"
        case .io(let text): text
        }
    }
}

/// Counters of an agent's datagram path.
public struct IceStats: Sendable {
    public var sent: UInt64 = 0
    public var received: UInt64 = 0
    /// Datagrams from the peer dropped because the application did not read the fd fast enough.
    public var dropped: UInt64 = 0
}

/// The ICE driver: one libnice agent (one stream, one component) on a GLib loop thread. Two ways to
/// carry the selected path's datagrams:
/// - on a loop of its own (the C API's nat_*), a datagram socket pair whose application end
///   `establish` returns;
/// - on a loop shared with other agents (a transport context's one I/O thread), an `IcePath` from
///   `establishPath`: sends go straight to nice_agent_send and datagrams straight from libnice's
///   receive callback to the connection, on that thread (no socket pair, no thread hand-off).
/// libnice state is touched on the loop thread only; the fields under `monitor` are shared.
public final class IceAgent: @unchecked Sendable {
    public static let maxCandidates = 32
    public static let maxDatagram = 65000
    /// Ta (RFC 8445 §14.2).
    public static let pacingMilliseconds: guint = 5
    /// How long libnice waits after the last pair failed before reporting FAILED.
    public static let idleMilliseconds: guint = 500

    let loop: GLibLoop
    /// The loop is this agent's own (stopped by close) rather than shared.
    private let ownsLoop: Bool
    private var agent: OpaquePointer?  // NiceAgent*, loop thread
    private var streamID: guint = 0
    private var stunServer: (ip: String, port: UInt16)?
    private var turnServer: (ip: String, port: UInt16, username: String, password: String)?
    /// Datagram socket pair: [0] the loop's end, [1] the application's.
    private var pair: [Int32] = [-1, -1]
    private var watch: UnsafeMutablePointer<GSource>?
    private var receiveBuffer: [UInt8] = []
    /// Path mode (loop thread): where datagrams go once the path is attached, and who hears of its end.
    fileprivate var pathReceiver: ((UnsafeRawBufferPointer) -> Void)?
    fileprivate var pathGone: (() -> Void)?
    fileprivate var pathEnded = false
    /// Loop thread: a direct selected pair's socket and the peer's address (nil: relayed, or none).
    fileprivate var direct: (fd: Int32, address: sockaddr_storage, length: socklen_t)?
    /// Loop thread: the kernel takes UDP_SEGMENT on `direct` (cleared when it refused it once).
    fileprivate var segmentation: Int32 = 1

    // Shared with callers, under monitor.
    private let monitor = Monitor()
    private var gatheringStarted = false
    private var gatheringDone = false
    private var haveRelay = false
    private var haveReflexive = false
    /// A host candidate has a private address: a reflexive one is worth waiting for.
    private var privateHost = false
    private var state = NICE_COMPONENT_STATE_DISCONNECTED.rawValue
    private var selected: (local: IceCandidate, remote: IceCandidate)?
    private var remoteCredentialsSet = false
    private var remoteCandidates: [IceCandidate] = []
    private var checking = false
    private var established = false
    private var closed = false
    private var counters = IceStats()
    /// Path mode: datagrams that came before the path was attached (the handshake reads them).
    fileprivate var early: [[UInt8]] = []
    /// Tests (loop thread): the path carries nothing either way, its agent alive (`blackhole`).
    fileprivate var blackholed = false
    static let maxEarly = 256
    public private(set) var controlling = false
    public var timeoutMilliseconds = 10_000
    /// Gather on these addresses only (set before `gather`); empty: every interface's address but
    /// loopback and link-local ones, libnice's default. Loopback is how two peers on a host with
    /// no other interface reach each other (a CI container, a network namespace with only `lo`).
    public var localAddresses: [String] {
        get { monitor.locked { restrictedAddresses } }
        set { monitor.locked { restrictedAddresses = newValue } }
    }
    private var restrictedAddresses: [String] = []

    /// Starts an agent. `stun`: "host:port" of a STUN server, or nil.
    /// Whether libnice checks the peer's consent (RFC 7675) and fails the path when it lapses.
    public let consentFreshness: Bool

    /// `consentFreshness` false: keepalives are STUN indications that cannot fail, and the path is
    /// never failed by libnice once selected; for users that watch the path themselves (the
    /// transport pings over it and replaces it, docs/PROTOCOL.md §7.7). Measured in the lab with 10%
    /// loss on both NAT routers: with consent checks libnice failed working paths about 30 s after
    /// selecting them (in both runs); without loss paths lasted (a 40 s run).
    ///
    /// `loop`: a loop shared with other agents (path mode, `establishPath`); nil: a loop of its own
    /// and a socket pair (`establish`).
    public init(stun: String?, consentFreshness: Bool = true, loop shared: GLibLoop? = nil) throws(NatError) {
        self.consentFreshness = consentFreshness
        if let stun {
            guard let endpoint = resolve(stun).sorted(by: { $0.isIPv4 && !$1.isIPv4 }).first else {
                throw .invalid("STUN server \(stun) does not resolve")
            }
            stunServer = (endpoint.host, endpoint.port)
        }
        if let shared {
            loop = shared
            ownsLoop = false
        } else {
            do { loop = try GLibLoop() } catch { throw .io("\(error)") }
            ownsLoop = true
            var fds: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw .io("socketpair: \(String(cString: strerror(errno)))")
            }
            var size: Int32 = 4 << 20
            for fd in fds {
                _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
                _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            pair = fds
            receiveBuffer = [UInt8](repeating: 0, count: 65536)
        }
        let made: Bool = loop.sync { self.makeAgent() } ?? false
        guard made else {
            close()
            throw .io("nice_agent_new_full failed")
        }
    }

    deinit { close() }

    // MARK: Calls from any thread

    public func setTurnServer(_ server: String, username: String, password: String) throws(NatError) {
        guard let endpoint = resolve(server).sorted(by: { $0.isIPv4 && !$1.isIPv4 }).first else {
            throw .invalid("TURN server \(server) does not resolve")
        }
        try locked { () throws(NatError) in
            guard !gatheringStarted else { throw .invalid("gathering already started") }
            turnServer = (endpoint.host, endpoint.port, username, password)
        }
    }

    /// Sets the role at once: a peer's first check may arrive before this side's own checks start.
    public func setControlling(_ value: Bool) throws(NatError) {
        try locked { () throws(NatError) in
            guard !checking else { throw .invalid("checks already started") }
            controlling = value
        }
        loop.sync {
            guard let agent = self.agent else { return }
            dna_nice_set_bool(agent, "controlling-mode", value ? 1 : 0)
        }
    }

    public var localCredentials: (ufrag: String, password: String)? {
        loop.sync { () -> (String, String)? in
            guard let agent = self.agent else { return nil }
            var ufrag: UnsafeMutablePointer<gchar>?
            var password: UnsafeMutablePointer<gchar>?
            guard nice_agent_get_local_credentials(agent, self.streamID, &ufrag, &password) != 0,
                  let ufrag, let password else { return nil }
            defer {
                g_free(ufrag)
                g_free(password)
            }
            return (String(cString: ufrag), String(cString: password))
        } ?? nil
    }

    public func setRemoteCredentials(ufrag: String, password: String) throws(NatError) {
        let ok = loop.sync { () -> Bool in
            guard let agent = self.agent else { return false }
            return nice_agent_set_remote_credentials(agent, self.streamID, ufrag, password) != 0
        } ?? false
        guard ok else { throw .invalid("libnice refused the credentials") }
        monitor.locked { remoteCredentialsSet = true }
    }

    /// Gathers once (later calls give the same list); waits up to `timeout` ms for the servers.
    public func gather(timeout: Int = 3000) throws(NatError) -> [IceCandidate] {
        let start = monitor.locked { () -> Bool in
            defer { gatheringStarted = true }
            return !gatheringStarted
        }
        if start {
            let ok = loop.sync { self.startGathering() } ?? false
            guard ok else { throw .io("libnice could not gather candidates (no usable local address)") }
        }
        // libnice drops a STUN server's answer on the socket that also holds a TURN-UDP allocation and
        // waits about 2 s for it (NATLAB-NOTES.md). The allocation's answer carries the reflexive
        // address too, so with a TURN server the candidates are complete once the relayed one is in
        // and, behind a NAT (a private host address), the reflexive one (when the UDP allocation's
        // answer was lost and the TCP one came first, only STUN can still bring it).
        let withTurn = monitor.locked { turnServer != nil }
        _ = monitor.wait(milliseconds: timeout) {
            gatheringDone || (withTurn && haveRelay && (haveReflexive || !privateHost)) ? true : nil
        }
        let list = loop.sync { self.localCandidates() } ?? []
        guard !list.isEmpty else { throw .io("no local candidate") }
        return list
    }

    public func addRemoteCandidate(_ candidate: IceCandidate) throws(NatError) {
        guard Endpoint(host: candidate.ip, port: candidate.port) != nil, candidate.port != 0 else {
            throw .invalid("candidate address \(candidate.ip):\(candidate.port)")
        }
        let pushNow = try locked { () throws(NatError) -> Bool in
            guard remoteCandidates.count < Self.maxCandidates else { throw .invalid("more than \(Self.maxCandidates) remote candidates") }
            remoteCandidates.append(candidate)
            return checking
        }
        if pushNow {
            let index = monitor.locked { remoteCandidates.count - 1 }
            loop.sync { self.pushRemote([(candidate, self.indexOfKind(index))]) }
        }
    }

    /// Runs the checks until a pair works (the application's end of the datagram pair is returned,
    /// owned by the caller from then on), the checks fail, or the timeout passes. An agent on a loop
    /// of its own only.
    public func establish() throws(NatError) -> Int32 {
        guard ownsLoop else { throw .invalid("an agent on a shared loop gives a path (establishPath)") }
        try runChecks()
        let fd = monitor.locked { () -> Int32 in
            let fd = pair[1]
            pair[1] = -1
            return fd
        }
        loop.sync { self.watchApplication() }
        return fd
    }

    /// Runs the checks until a pair works, then returns the path over it (on the shared loop); the
    /// agent must stay open while the path is used (closing it ends the path). An agent on a shared
    /// loop only.
    public func establishPath() throws(NatError) -> IcePath {
        guard !ownsLoop else { throw .invalid("an agent on its own loop gives a socket (establish)") }
        try runChecks()
        return IcePath(agent: self)
    }

    private func runChecks() throws(NatError) {
        let timeout = try locked { () throws(NatError) -> Int in
            guard !established else { throw .invalid("already established") }
            guard gatheringStarted else { throw .invalid("no candidates gathered") }
            guard remoteCredentialsSet else { throw .invalid("no remote credentials") }
            checking = true
            return timeoutMilliseconds
        }
        let list = monitor.locked { remoteCandidates.enumerated().map { ($0.element, indexOfKind($0.offset)) } }
        loop.sync {
            guard let agent = self.agent else { return }
            self.pushRemote(list)
            _ = nice_agent_peer_candidate_gathering_done(agent, self.streamID)
        }
        let outcome = monitor.wait(milliseconds: timeout) { () -> Bool? in
            if closed { return false }
            if state == NICE_COMPONENT_STATE_CONNECTED.rawValue || state == NICE_COMPONENT_STATE_READY.rawValue { return true }
            if state == NICE_COMPONENT_STATE_FAILED.rawValue { return false }
            return nil
        }
        guard outcome == true else {
            throw .unreachable(outcome == nil ? "no candidate pair worked within \(timeout) ms" : "every candidate pair failed")
        }
        monitor.locked { established = true }
    }

    public var selectedPair: (local: IceCandidate, remote: IceCandidate)? { monitor.locked { selected } }

    public var stats: IceStats { monitor.locked { counters } }

    /// Ends the agent. Idempotent, from any thread; returns without waiting on a shared loop.
    ///
    /// On the loop thread: the path ends, libnice stops calling this object (its signal handlers
    /// are disconnected and the receive callback detached, so nothing refers to `self` once this
    /// returns, even from deinit), the stream is removed and `nice_agent_close_async` started. In
    /// that order: removing the stream has libnice release its TURN allocations and free the
    /// stream's sockets only once the deallocations were answered or timed out (up to about 25 s
    /// without an answer), and closing waits for them; the last reference is dropped when the close
    /// completes. (The order used to be the reverse with a 1 s limit on the wait: when a TURN
    /// server had not answered the deallocation within 1 s, the stream's sockets were freed while
    /// libnice still retransmitted the deallocation on one of them, and the process aborted in
    /// `udp-bsd.c` (`sock->priv != NULL`) or crashed later, issue 19.)
    ///
    /// An agent on a loop of its own waits up to 1 s for the deallocations, then stops its loop (a
    /// close still pending then never completes: the libnice agent is not freed). On a shared loop
    /// the loop's owner waits for pending closes before it stops the loop (`GLibLoop.drain`).
    public func close() {
        let first = monitor.locked { () -> Bool in
            defer { closed = true }
            return !closed
        }
        monitor.broadcast()
        guard first else { return }
        let closing = loop.sync { () -> NiceTeardown? in
            // A path over this agent ends with it.
            let gone = self.pathGone
            self.pathReceiver = nil
            self.pathGone = nil
            self.monitor.locked { self.pathEnded = true }
            self.monitor.broadcast()
            gone?()
            if let watch = self.watch {
                g_source_destroy(watch)
                g_source_unref(watch)
                self.watch = nil
            }
            self.direct = nil
            guard let agent = self.agent else { return nil }
            self.agent = nil
            let me = Unmanaged.passUnretained(self).toOpaque()
            g_signal_handlers_disconnect_matched(UnsafeMutableRawPointer(agent), G_SIGNAL_MATCH_DATA, 0, 0, nil, nil, me)
            if self.streamID != 0 {
                _ = nice_agent_attach_recv(agent, self.streamID, 1, self.loop.context, nil, nil)
                nice_agent_remove_stream(agent, self.streamID)
            }
            return NiceTeardown(agent: agent, loop: self.loop)
        } ?? nil
        guard let closing else {
            if ownsLoop { loop.stop() }
            closePair()
            return
        }
        // (On the loop thread itself the close could not complete while this waits.)
        if ownsLoop {
            if !loop.isCurrent { closing.wait(milliseconds: 1000) }
            loop.stop()
        }
        closePair()
    }

    private func closePair() {
        for index in 0..<2 where pair[index] >= 0 {
            Glibc.close(pair[index])
            pair[index] = -1
        }
    }

    /// Runs body under the monitor's lock, keeping its typed error.
    private func locked<T>(_ body: () throws(NatError) -> T) throws(NatError) -> T {
        let result: Result<T, NatError> = monitor.locked {
            do throws(NatError) { return .success(try body()) } catch { return .failure(error) }
        }
        return try result.get()
    }

    // MARK: Loop thread

    private func makeAgent() -> Bool {
        let options = NICE_AGENT_OPTION_ICE_TRICKLE.rawValue | (consentFreshness ? NICE_AGENT_OPTION_CONSENT_FRESHNESS.rawValue : 0)
        guard let agent = nice_agent_new_full(loop.context, NICE_COMPATIBILITY_RFC5245, NiceAgentOption(rawValue: options)) else {
            return false
        }
        self.agent = agent
        dna_nice_set_bool(agent, "upnp", 0)
        dna_nice_set_bool(agent, "controlling-mode", 0)
        dna_nice_set_bool(agent, "ice-tcp", 0)
        dna_nice_set_bool(agent, "keepalive-conncheck", consentFreshness ? 1 : 0)
        // Ta, the pacing of STUN transactions (gathering and checks): libnice's 20 ms made gathering
        // take 25 ms and checks 60 ms on a lab path of 0.3 ms; RFC 8445 §14.2 allows down to 5 ms.
        dna_nice_set_uint(agent, "stun-pacing-timer", IceAgent.pacingMilliseconds)
        // After the last pair failed libnice waits this long for late checks from the peer before it
        // reports FAILED (5 s by default, which made a failure take about 7 s).
        dna_nice_set_uint(agent, "idle-timeout", IceAgent.idleMilliseconds)
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = dna_connect_gathering_done(agent, { _, _, data in
            guard let data else { return }
            let me = Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue()
            me.monitor.locked { me.gatheringDone = true }
            me.monitor.broadcast()
        }, me)
        _ = dna_connect_new_candidate(agent, { _, candidate, data in
            guard let data, let candidate else { return }
            let me = Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue()
            let type = candidate.pointee.type
            let isPrivate = type == NICE_CANDIDATE_TYPE_HOST && (IceCandidate(candidate.pointee)?.isPrivate ?? false)
            me.monitor.locked {
                if type == NICE_CANDIDATE_TYPE_RELAYED { me.haveRelay = true }
                if type == NICE_CANDIDATE_TYPE_SERVER_REFLEXIVE { me.haveReflexive = true }
                if isPrivate { me.privateHost = true }
            }
            me.monitor.broadcast()
        }, me)
        _ = dna_connect_state_changed(agent, { _, _, _, state, data in
            guard let data else { return }
            Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue().stateChanged(state)
        }, me)
        _ = dna_connect_selected_pair(agent, { _, _, _, local, remote, data in
            guard let data, let local, let remote else { return }
            let me = Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue()
            guard let l = IceCandidate(local.pointee), let r = IceCandidate(remote.pointee) else { return }
            me.monitor.locked { me.selected = (l, r) }
            me.enlargeSelectedSocket(remote: remote)
        }, me)
        streamID = nice_agent_add_stream(agent, 1)
        guard streamID != 0 else { return false }
        // Without a receiver attached libnice drops the checks' answers (SWIFT-C-NOTES.md).
        return nice_agent_attach_recv(agent, streamID, 1, loop.context, { _, _, _, length, buffer, data in
            guard let data, let buffer else { return }
            Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue().received(buffer, Int(length))
        }, me) != 0
    }

    private func stateChanged(_ newState: guint) {
        if newState != NICE_COMPONENT_STATE_READY.rawValue && newState != NICE_COMPONENT_STATE_CONNECTED.rawValue { direct = nil }
        let lostAfterEstablished = monitor.locked { () -> Bool in
            state = newState
            return established && newState == NICE_COMPONENT_STATE_FAILED.rawValue
        }
        monitor.broadcast()
        if lostAfterEstablished, !ownsLoop {
            let gone = pathGone
            pathReceiver = nil
            pathGone = nil
            monitor.locked { pathEnded = true }
            monitor.broadcast()
            gone?()
        } else if lostAfterEstablished {
            // The path is gone (consent lost): the application's send() now fails with ECONNREFUSED.
            if let watch {
                g_source_destroy(watch)
                g_source_unref(watch)
                self.watch = nil
            }
            if pair[0] >= 0 {
                Glibc.close(pair[0])
                pair[0] = -1
            }
        }
    }

    private func startGathering() -> Bool {
        guard let agent else { return false }
        let (stun, turn, addresses) = monitor.locked { (stunServer, turnServer, restrictedAddresses) }
        for address in addresses where dna_nice_add_local_address(agent, address) == 0 { return false }
        if let stun {
            dna_nice_set_string(agent, "stun-server", stun.ip)
            dna_nice_set_uint(agent, "stun-server-port", guint(stun.port))
        }
        if let turn {
            _ = nice_agent_set_relay_info(agent, streamID, 1, turn.ip, guint(turn.port), turn.username, turn.password,
                                          NICE_RELAY_TYPE_TURN_UDP)
            _ = nice_agent_set_relay_info(agent, streamID, 1, turn.ip, guint(turn.port), turn.username, turn.password,
                                          NICE_RELAY_TYPE_TURN_TCP)
        }
        return nice_agent_gather_candidates(agent, streamID) != 0
    }

    private func localCandidates() -> [IceCandidate] {
        guard let agent, let list = nice_agent_get_local_candidates(agent, streamID, 1) else { return [] }
        defer { dna_candidate_list_free(list) }
        var out: [(IceCandidate, UInt32)] = []
        var item: UnsafeMutablePointer<GSList>? = list
        while let node = item {
            if let raw = node.pointee.data {
                let candidate = raw.assumingMemoryBound(to: NiceCandidate.self).pointee
                // An IPv6 link-local address needs a scope the seed's candidate cannot carry.
                if candidate.transport == NICE_CANDIDATE_TRANSPORT_UDP, let converted = IceCandidate(candidate),
                   !converted.ip.lowercased().hasPrefix("fe80:"), !out.contains(where: { $0.0 == converted }) {
                    out.append((converted, candidate.priority))
                }
            }
            item = node.pointee.next
        }
        return Array(out.sorted { $0.1 > $1.1 }.prefix(Self.maxCandidates).map(\.0))
    }

    /// A burst from the peer overflows the kernel's default UDP buffer (about 200 KB) before the loop
    /// reads it: give a direct path's socket 4 MB each way (a relayed path's socket is libnice's own).
    /// The kernel caps SO_RCVBUF at net.core.rmem_max (often 208 KB); a process that may
    /// (CAP_NET_ADMIN) gets the size past that cap with SO_RCVBUFFORCE. The reliable layer keeps at
    /// most `ReliableConfiguration.maximumWindow` (2 MiB) in flight, which this buffer holds.
    ///
    /// It is also where a connection's batches go (`sendBatchOnLoop`): the socket and the peer's
    /// address of a direct pair are kept for sends past libnice (which has nothing to do with a
    /// selected pair's data: checks and keepalives it sends itself).
    private func enlargeSelectedSocket(remote: UnsafeMutablePointer<NiceCandidate>) {
        direct = nil
        guard let agent, let socket = nice_agent_get_selected_socket(agent, streamID, 1) else { return }
        defer { g_object_unref(UnsafeMutableRawPointer(socket)) }
        let fd = g_socket_get_fd(socket)
        var address = sockaddr_storage()
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { nice_address_copy_to_sockaddr(&remote.pointee.addr, $0) }
        }
        let family = Int32(address.ss_family)
        if remote.pointee.transport == NICE_CANDIDATE_TRANSPORT_UDP, family == Int32(g_socket_get_family(socket).rawValue),
           family == AF_INET || family == AF_INET6 {
            let length = family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size
            direct = (fd, address, socklen_t(length))
        }
        var size: Int32 = 4 << 20
        let length = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, length) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, length)
        }
        if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, length) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, length)
        }
    }

    /// The position of remote candidate `index` among those of its kind (its local preference).
    private func indexOfKind(_ index: Int) -> Int {
        let kind = remoteCandidates[index].kind
        return remoteCandidates[..<index].filter { $0.kind == kind }.count
    }

    private func pushRemote(_ candidates: [(IceCandidate, Int)]) {
        guard let agent, !candidates.isEmpty else { return }
        var list: UnsafeMutablePointer<GSList>?
        for (candidate, index) in candidates {
            let type: NiceCandidateType = switch candidate.kind {
            case .local: NICE_CANDIDATE_TYPE_HOST
            case .reflexive: NICE_CANDIDATE_TYPE_SERVER_REFLEXIVE
            case .relay: NICE_CANDIDATE_TYPE_RELAYED
            }
            guard let made = nice_candidate_new(type) else { continue }
            guard nice_address_set_from_string(&made.pointee.addr, candidate.ip) != 0 else {
                nice_candidate_free(made)
                continue
            }
            nice_address_set_port(&made.pointee.addr, guint(candidate.port))
            made.pointee.transport = NICE_CANDIDATE_TRANSPORT_UDP
            made.pointee.priority = candidate.priority(index: index)
            made.pointee.stream_id = streamID
            made.pointee.component_id = 1
            dna_candidate_set_foundation(made, candidate.foundation)
            list = g_slist_append(list, made)
        }
        guard let list else { return }
        _ = nice_agent_set_remote_candidates(agent, streamID, 1, list)
        dna_candidate_list_free(list)
    }

    /// A datagram from the peer: to the path's receiver (or its early queue), or to the
    /// application's end of the pair (dropped if it is full).
    private func received(_ buffer: UnsafeMutablePointer<gchar>, _ length: Int) {
        if blackholed { return }
        if !ownsLoop {
            if let pathReceiver {
                pathReceiver(UnsafeRawBufferPointer(start: buffer, count: length))
                return
            }
            let kept = monitor.locked { () -> Bool in
                guard !pathEnded, early.count < Self.maxEarly else { return false }
                early.append(Array(UnsafeRawBufferPointer(start: buffer, count: length)))
                return true
            }
            if kept { monitor.broadcast() }
            return
        }
        guard pair[0] >= 0 else { return }
        let sent = send(pair[0], buffer, length, Int32(MSG_DONTWAIT))
        monitor.locked {
            if sent == length { counters.received += 1 } else { counters.dropped += 1 }
        }
    }

    /// Forwards what the application sends on its end to the peer.
    private func watchApplication() {
        guard pair[0] >= 0, watch == nil else { return }
        watch = dna_fd_watch(loop.context, pair[0], { _, _, data in
            guard let data else { return 0 }
            return Unmanaged<IceAgent>.fromOpaque(data).takeUnretainedValue().forward() ? 1 : 0
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    private func forward() -> Bool {
        guard let agent, pair[0] >= 0 else { return false }
        var count: UInt64 = 0
        for _ in 0..<64 {
            let length = receiveBuffer.withUnsafeMutableBytes { recv(pair[0], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            guard length >= 0 else { break }
            guard length <= Self.maxDatagram else { continue }
            let sent = receiveBuffer.withUnsafeBytes {
                nice_agent_send(agent, streamID, 1, guint(length), $0.baseAddress?.assumingMemoryBound(to: gchar.self))
            }
            if sent == length { count += 1 }
        }
        monitor.locked { counters.sent += count }
        return true
    }
}

extension IceCandidate {
    /// A libnice candidate as the seed's (UDP only; peer-reflexive counts as reflexive).
    init?(_ candidate: NiceCandidate) {
        var address = candidate.addr
        var text = [CChar](repeating: 0, count: 64)
        dna_nice_address_text(&address, &text)
        let port = UInt16(truncatingIfNeeded: nice_address_get_port(&address))
        let kind: Kind
        switch candidate.type {
        case NICE_CANDIDATE_TYPE_HOST: kind = .local
        case NICE_CANDIDATE_TYPE_SERVER_REFLEXIVE, NICE_CANDIDATE_TYPE_PEER_REFLEXIVE: kind = .reflexive
        case NICE_CANDIDATE_TYPE_RELAYED: kind = .relay
        default: return nil
        }
        guard port != 0 else { return nil }
        self.init(ip: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), port: port, kind: kind)
    }
}

/// The selected pair of an agent on a shared loop, as a DatagramPath: sends call nice_agent_send,
/// datagrams come from libnice's receive callback, both on the loop thread (sends from another
/// thread, the handshake's, are run there too).
public final class IcePath: DatagramPath, @unchecked Sendable {
    private let agent: IceAgent
    public var loop: GLibLoop { agent.loop }

    fileprivate init(agent: IceAgent) { self.agent = agent }

    public func send(_ datagram: UnsafeRawBufferPointer) -> Bool {
        guard agent.loop.isCurrent else {
            let copy = Array(datagram)
            return agent.loop.sync { copy.withUnsafeBytes { self.agent.sendOnLoop($0) } } ?? false
        }
        return agent.sendOnLoop(datagram)
    }

    public func send(_ batch: DatagramBatch) -> Bool {
        guard agent.loop.isCurrent else { return agent.loop.sync { self.agent.sendBatchOnLoop(batch) } ?? false }
        return agent.sendBatchOnLoop(batch)
    }

    public func receive(waitingUntil deadline: UInt64) -> [UInt8]? { agent.takeEarly(until: deadline) }

    public func attach(receiver: @escaping (UnsafeRawBufferPointer) -> Void, gone: @escaping () -> Void) {
        agent.attachPath(receiver: receiver, gone: gone)
    }

    public func close() { agent.loop.sync { self.agent.detachPath() } }
}

extension IceAgent {
    /// Tests: from now on the path carries nothing either way while the agent lives, as when a NAT
    /// rebinds and the peer's filter drops the new port: only the silence tells.
    public func blackhole() {
        _ = loop.sync { self.blackholed = true }
    }

    /// Loop thread. False when the agent is closed.
    fileprivate func sendOnLoop(_ datagram: UnsafeRawBufferPointer) -> Bool {
        guard let agent, !pathEnded else { return false }
        if blackholed { return true }  // lost on the way, as UDP loses it
        let sent = nice_agent_send(agent, streamID, 1, guint(datagram.count), datagram.baseAddress?.assumingMemoryBound(to: gchar.self))
        return sent >= 0 || datagram.count == 0
    }

    /// Loop thread. A direct pair's batch goes to its socket in runs (UDP GSO, `dna_udp_send_batch`);
    /// a relayed one's through libnice (TURN wraps each datagram). False when the agent is closed.
    /// Measured on loopback (bench/iroh_compare.py, 1 MiB messages): nice_agent_send, one system
    /// call and one trip through the stack per datagram, was most of the sender's CPU.
    fileprivate func sendBatchOnLoop(_ batch: DatagramBatch) -> Bool {
        guard agent != nil, !pathEnded else { return false }
        if blackholed { return true }  // lost on the way, as UDP loses it
        guard let direct else {
            return batch.bytes.withUnsafeBytes { bytes in
                var offset = 0
                for length in batch.lengths {
                    guard sendOnLoop(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length])) else { return false }
                    offset += length
                }
                return true
            }
        }
        let (fd, length) = (direct.fd, direct.length)
        batch.bytes.withUnsafeBufferPointer { bytes in
            batch.lengths.withUnsafeBufferPointer { lengths in
                withUnsafePointer(to: direct.address) { address in
                    address.withMemoryRebound(to: sockaddr.self, capacity: 1) { to in
                        _ = dna_udp_send_batch(fd, to, length, bytes.baseAddress, lengths.baseAddress, Int32(lengths.count), &segmentation)
                    }
                }
            }
        }
        return true
    }

    fileprivate func takeEarly(until deadline: UInt64) -> [UInt8]? {
        let now = monotonicMilliseconds()
        return monitor.wait(milliseconds: Int(clamping: deadline > now ? deadline - now : 0)) { () -> [UInt8]?? in
            if !early.isEmpty { return .some(early.removeFirst()) }
            return closed || pathEnded ? .some(nil) : nil
        } ?? nil
    }

    /// Loop thread: from now on datagrams go to `receiver`; those that waited go first.
    fileprivate func attachPath(receiver: @escaping (UnsafeRawBufferPointer) -> Void, gone: @escaping () -> Void) {
        let (waiting, ended) = monitor.locked { () -> ([[UInt8]], Bool) in
            defer { early.removeAll() }
            return (early, pathEnded || closed)
        }
        guard !ended else {
            gone()
            return
        }
        pathReceiver = receiver
        pathGone = gone
        for datagram in waiting { datagram.withUnsafeBytes { receiver($0) } }
    }

    /// Loop thread: stops delivering (datagrams that come later are dropped).
    fileprivate func detachPath() {
        pathReceiver = nil
        pathGone = nil
        monitor.locked {
            pathEnded = true
            early.removeAll()
        }
        monitor.broadcast()
    }
}

/// The end of a libnice agent whose stream was removed: `nice_agent_close_async` (which completes
/// once the TURN deallocations were answered or timed out), then the last reference. Holds itself
/// (and a hold on the loop, `GLibLoop.hold`) until the close completes on the loop thread.
private final class NiceTeardown: @unchecked Sendable {
    private let agent: OpaquePointer  // NiceAgent*
    private let loop: GLibLoop
    private let monitor = Monitor()
    private var done = false

    /// Loop thread: starts the close.
    init(agent: OpaquePointer, loop: GLibLoop) {
        self.agent = agent
        self.loop = loop
        loop.hold()
        nice_agent_close_async(agent, { _, _, data in
            guard let data else { return }
            Unmanaged<NiceTeardown>.fromOpaque(data).takeRetainedValue().finish()
        }, Unmanaged.passRetained(self).toOpaque())
    }

    /// Loop thread, from libnice's completion callback.
    private func finish() {
        g_object_unref(UnsafeMutableRawPointer(agent))
        monitor.locked { done = true }
        monitor.broadcast()
        loop.release()
    }

    /// Waits up to `milliseconds` for the close to complete (not from the loop thread).
    func wait(milliseconds: Int) {
        _ = monitor.wait(milliseconds: milliseconds) { done ? true : nil }
    }
}
