import DNACrypto
import DNAReliable
import DNAWire
import Glibc

/// The driver of one connection: a connected datagram socket (the fd of an ICE path, or any UDP or
/// AF_UNIX datagram socket), the record layer (§3) and a ReliableConnection (§7), run by one I/O
/// thread. Other threads send and receive messages through it.
public final class TransportConnection: @unchecked Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case closed
        case full
        case tooLarge(Int)
        case timeout
    }

    // The path: replaced by `replacePath` (on the I/O thread only).
    private var fd: Int32
    private var sealer: RecordSealer
    private var opener: RecordOpener
    private let connection: ReliableConnection
    private let monitor = Monitor()
    private var commands: [(ReliableConnection, UInt64) -> Void] = []
    private let configuration: ReliableConfiguration
    /// Messages handed over by `send` (under the monitor), and those the connection's own buffer
    /// could not take yet (I/O thread only).
    private var outgoing: [(UInt32, [UInt8])] = []
    private var backlog: [(UInt32, [UInt8])] = []
    private var backlogBytes = 0
    /// Bytes sent and not yet acknowledged, as the I/O thread last counted (plus what came since).
    private var queuedEstimate = 0
    private var inbox: [(stream: UInt32, bytes: [UInt8])] = []
    private var presence: PresenceStatus?
    private var running = true
    private var dead = false
    private var peerClosed = false
    private var idle = true
    /// With `resumable`, a silent peer makes the path lost (`isPathLost`) rather than the connection
    /// dead: messages wait until `replacePath` or `abandon`.
    private let resumable: Bool
    private var pathLost = false
    /// When a message was last sent or delivered (Unix ms).
    private var lastActivity = unixMilliseconds()
    /// The socket's other end is gone (I/O thread only).
    private var socketGone = false
    /// Called on the I/O thread for datagrams the record layer cannot open (a late handshake piece,
    /// say); what it returns is sent back.
    private var unopened: (([UInt8]) -> [[UInt8]])?
    /// Called on the I/O thread after messages arrived or the connection ended.
    private let onChange: (() -> Void)?
    private var wake: [Int32] = [-1, -1]
    private var thread = pthread_t()
    private var threadStarted = false
    /// Datagrams that failed to open (forged, replayed, garbage): counted and dropped.
    public private(set) var refused = 0

    /// Takes `fd` (closed by `close`). The sealer and opener are the session's two directions.
    /// `unopened` answers datagrams that are not records (the responder's handshake, still
    /// acknowledging pieces of message 3); `onChange` hears of arrivals and of the end.
    public init(fd: Int32, sealer: RecordSealer, opener: RecordOpener,
                configuration: ReliableConfiguration = ReliableConfiguration(),
                unopened: (([UInt8]) -> [[UInt8]])? = nil, resumable: Bool = false,
                onChange: (() -> Void)? = nil) throws(NetError) {
        self.fd = fd
        self.unopened = unopened
        self.resumable = resumable
        self.onChange = onChange
        self.sealer = sealer
        self.opener = opener
        self.configuration = configuration
        connection = ReliableConnection(configuration: configuration, now: unixMilliseconds())
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        guard pipe(&wake) == 0 else { throw NetError("pipe") }
        for end in wake { _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK) }
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<TransportConnection>.fromOpaque(argument).takeUnretainedValue().loop()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        guard started == 0 else { throw NetError("pthread_create", started) }
        threadStarted = true
    }

    deinit {
        close()
        for end in wake where end >= 0 { Glibc.close(end) }
    }

    /// Queues a message on `stream` and returns at once; waits up to `timeout` ms only while the send
    /// buffer (messages not yet acknowledged) is full. Messages from one thread keep their order.
    public func send(_ message: [UInt8], stream: UInt32 = 0, timeout: Int = 10_000) throws(Failure) {
        guard message.count <= configuration.maximumMessageSize else { throw .tooLarge(message.count) }
        let outcome = monitor.wait(milliseconds: max(0, timeout)) { () -> Failure?? in
            if !running || dead { return .some(.closed) }
            guard queuedEstimate == 0 || queuedEstimate + message.count <= configuration.maximumQueuedBytes else { return nil }
            outgoing.append((stream, message))
            queuedEstimate += message.count
            lastActivity = unixMilliseconds()
            return .some(nil)
        }
        guard let outcome else { throw .full }
        if let failure = outcome { throw failure }
        poke()
    }

    /// The next delivered message, waiting up to `timeout` ms.
    public func receive(timeout: Int) throws(Failure) -> (stream: UInt32, bytes: [UInt8]) {
        let got = monitor.wait(milliseconds: timeout) { () -> (UInt32, [UInt8])?? in
            if !inbox.isEmpty { return .some(inbox.removeFirst()) }
            if dead || !running { return .some(nil) }
            return nil
        }
        guard let got else { throw .timeout }
        guard let message = got else { throw .closed }
        return message
    }

    /// Messages waiting to be received.
    public var pending: Int { monitor.locked { inbox.count } }

    /// The peer stopped answering (missed pings) or closed the connection.
    public var isDead: Bool { monitor.locked { dead } }

    /// This side closed it (close, disconnect).
    public var isClosed: Bool { monitor.locked { !running } }

    /// Milliseconds since a message was last sent or delivered on this connection.
    public var idleFor: UInt64 { monitor.locked { unixMilliseconds() - min(unixMilliseconds(), lastActivity) } }

    /// The peer closed the connection with a CLOSE frame.
    public var isClosedByPeer: Bool { monitor.locked { peerClosed } }

    /// The peer went silent on a resumable connection: waiting for `replacePath` or `abandon`.
    public var isPathLost: Bool { monitor.locked { pathLost && !dead } }

    /// Moves the connection to a new path (a new socket and session): what was in flight is sent
    /// again over it, nothing queued is lost. The old socket is closed. False when the connection
    /// ended meanwhile (the new socket is then closed too).
    @discardableResult
    public func replacePath(fd newFD: Int32, sealer newSealer: RecordSealer, opener newOpener: RecordOpener,
                            unopened newUnopened: (([UInt8]) -> [[UInt8]])?) -> Bool {
        _ = fcntl(newFD, F_SETFL, fcntl(newFD, F_GETFL) | O_NONBLOCK)
        let done = perform { connection, now -> Bool in
            guard self.monitor.locked({ !self.dead && !self.peerClosed }) else { return false }
            Glibc.close(self.fd)
            self.fd = newFD
            self.socketGone = false
            self.sealer = newSealer
            self.opener = newOpener
            self.unopened = newUnopened
            connection.revive(now: now)
            self.monitor.locked { self.pathLost = false }
            return true
        } ?? false
        if !done { Glibc.close(newFD) }
        return done
    }

    /// Gives up on a lost path: the connection is dead (receive reports the end).
    public func abandon() {
        monitor.locked { dead = true }
        monitor.broadcast()
        onChange?()
    }

    /// receive() would not block: a message is waiting or the connection ended.
    public var isReadable: Bool { monitor.locked { !inbox.isEmpty || dead || !running } }

    public var peerPresence: PresenceStatus? { monitor.locked { presence } }

    public func sendPresence(_ status: PresenceStatus) {
        _ = perform { connection, now in connection.sendPresence(status, now: now) }
    }

    public var statistics: ReliableConnection.Statistics? { perform { connection, _ in connection.statistics } }

    /// A clean end: waits up to `linger` ms for every queued message to be acknowledged, then tells
    /// the peer (CLOSE) and closes. Returns whether everything queued was acknowledged.
    @discardableResult
    public func disconnect(linger: Int = 2000) -> Bool {
        let flushed = monitor.wait(milliseconds: max(0, linger)) { () -> Bool? in
            if dead || !running { return false }
            return idle && outgoing.isEmpty ? true : nil
        } ?? false
        _ = perform { connection, now in connection.close(now: now) }
        close()
        return flushed
    }

    /// Stops the I/O thread and closes the socket. Idempotent.
    public func close() {
        let wasRunning = monitor.locked { () -> Bool in
            defer { running = false }
            return running
        }
        monitor.broadcast()
        guard wasRunning, threadStarted else { return }
        poke()
        pthread_join(thread, nil)
        Glibc.close(fd)
    }

    // MARK: I/O thread

    /// Errors of a connected datagram socket whose other end (or path) is gone.
    private static func isGone(_ code: Int32) -> Bool {
        code == ECONNREFUSED || code == ECONNRESET || code == ENOTCONN || code == EPIPE
    }

    private func perform<T>(_ body: @escaping (ReliableConnection, UInt64) -> T) -> T? {
        monitor.perform(enqueue: { command in
            guard running else { return false }
            commands.append(command)
            return true
        }, wake: poke, body)
    }

    private func poke() {
        var byte: UInt8 = 1
        _ = write(wake[1], &byte, 1)
    }

    private func loop() {
        var descriptors = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wake[0], events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        while monitor.locked({ running }) {
            // A socket whose other end went (the ICE layer lost the path) is not polled: it would
            // report POLLHUP forever.
            descriptors[0].fd = socketGone ? -1 : fd
            let now = unixMilliseconds()
            let deadline = connection.nextDeadline ?? now + 1000
            _ = poll(&descriptors, 2, Int32(clamping: deadline > now ? min(deadline - now, 1000) : 0))
            var drain = [UInt8](repeating: 0, count: 64)
            while read(wake[0], &drain, 64) > 0 {}
            let pending = monitor.locked { () -> [(ReliableConnection, UInt64) -> Void] in
                defer { commands.removeAll() }
                return commands
            }
            for command in pending { command(connection, unixMilliseconds()) }
            let handed = monitor.locked { () -> [(UInt32, [UInt8])] in
                defer { outgoing.removeAll(keepingCapacity: true) }
                return outgoing
            }
            for item in handed { backlogBytes += item.1.count }
            backlog += handed
            var taken = 0
            let sendTime = unixMilliseconds()
            // While the path is lost the messages wait here (the connection takes none).
            for (stream, message) in backlog where !connection.isDead {
                do throws(ReliableError) { try connection.send(message, stream: stream, now: sendTime) } catch {
                    if error == .full { break }
                }
                backlogBytes -= message.count
                taken += 1
            }
            backlog.removeFirst(taken)
            for _ in 0..<256 where !socketGone {
                let length = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if length < 0, Self.isGone(errno) { socketGone = true }
                guard length > 0 else { break }
                let opened = buffer.withUnsafeBytes { bytes in
                    Result { () throws(RecordError) in try opener.open(UnsafeRawBufferPointer(rebasing: bytes[0..<length])) }
                }
                guard case .success(let (header, plaintext)) = opened else {
                    if let unopened {
                        for answer in unopened(Array(buffer[0..<length])) {
                            _ = answer.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                        }
                    } else {
                        refused += 1
                    }
                    continue
                }
                connection.receive(header, payload: plaintext[...], now: unixMilliseconds())
            }
            let current = unixMilliseconds()
            if let next = connection.nextDeadline, next <= current { connection.handleTimeout(now: current) }
            for frame in connection.takeFrames() {
                guard let sealed = try? sealer.seal(type: frame.type, word0: frame.word0, word1: frame.word1, plaintext: frame.payload) else { continue }
                // Nothing acknowledges a CLOSE: three copies make its loss unlikely.
                for _ in 0..<(frame.type == .close ? 3 : 1) where !socketGone {
                    let sent = sealed.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                    if sent < 0, Self.isGone(errno) { socketGone = true }
                }
            }
            // The path is gone now rather than after three missed pings.
            if socketGone { connection.pathFailed(now: unixMilliseconds()) }
            let events = connection.takeEvents()
            let queued = connection.queuedBytes + backlogBytes
            let nowIdle = connection.isIdle && backlog.isEmpty
            var changed = false
            monitor.locked {
                queuedEstimate = queued + outgoing.reduce(0) { $0 + $1.1.count }
                idle = nowIdle
                for event in events {
                    switch event {
                    case .message(let stream, let bytes):
                        inbox.append((stream, bytes))
                        lastActivity = unixMilliseconds()
                        changed = true
                    case .dead:
                        if resumable { pathLost = true } else { dead = true }
                        changed = true
                    case .closed:
                        dead = true
                        peerClosed = true
                        changed = true
                    case .presence(let status): presence = status
                    }
                }
            }
            monitor.broadcast()
            if changed { onChange?() }
        }
    }
}
