import DNACrypto
import DNAReliable
import DNAWire
import Glibc

/// The driver of one connection: a datagram path (an ICE path, or a connected socket), the record
/// layer (§3) and a ReliableConnection (§7), run on the path's GLib loop thread, which a transport
/// context shares among all its connections (no thread of its own, no socket between it and libnice).
/// Other threads send and receive messages through it: they queue under its lock and wake the loop.
public final class TransportConnection: @unchecked Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case closed
        case full
        case tooLarge(Int)
        case timeout
        /// `receive(into:)`: the next message needs this many bytes; it stays queued.
        case bufferTooSmall(Int)
    }

    private let loop: GLibLoop
    // Loop thread only: the path (replaced by `replacePath`), the record layer, the reliable core.
    private var path: DatagramPath
    private var sealer: RecordSealer
    private var opener: RecordOpener
    /// The peer takes records that share a datagram (the session's `sharesDatagrams`, PROTOCOL.md §3):
    /// a record that fits after the one before it goes in the same datagram.
    private var sharesDatagrams: Bool
    private let connection: ReliableConnection
    private var alarm: LoopAlarm?
    private var backlog: [(UInt32, [UInt8])] = []
    /// What `service` sends, sealed (kept for its capacity).
    private var outgoingBatch = DatagramBatch()
    private var sentDatagrams = 0
    private var backlogBytes = 0
    /// `abandon` handed the undelivered messages over (loop thread): `disconnect` returns none again.
    private var handedOver = false
    /// The path's other end is gone.
    private var pathGone = false
    /// Called for datagrams the record layer cannot open (a late handshake piece, say); what it
    /// returns is sent back.
    private var unopened: (([UInt8]) -> [[UInt8]])?
    private let configuration: ReliableConfiguration

    // Shared, under the monitor.
    private let monitor = Monitor()
    private var commands: [(ReliableConnection, UInt64) -> Void] = []
    /// Messages handed over by `send`, not yet taken by the loop.
    private var outgoing: [(UInt32, [UInt8])] = []
    /// Bytes sent and not yet acknowledged, as the loop last counted (plus what came since).
    private var queuedEstimate = 0
    /// Streams with messages queued or not acknowledged, as the loop last counted (plus what came
    /// since): the last eighth of the send buffer is only for the others (§7.2).
    private var busyStreams = Set<UInt32>()
    /// Delivered messages not yet taken, by stream; `receive` takes the streams in turn.
    private var inbox = Inbox()
    /// Messages the application took, for the loop to tell the core (it frees the receive window).
    private var takes: [(UInt32, Int)] = []
    /// When the loop's alarm fires next (monotonic ms; nil: not armed), as the loop last set it.
    /// A take waits for it when it comes within `acknowledgementDelay`: the core then hears of the
    /// take within that time, and sends the new window within as long again (§7.2); an echo's
    /// reply usually wakes the loop first.
    private var alarmDeadline: UInt64?
    /// Bytes the core holds for the application (`ReliableConnection.bufferedBytes`), as the loop last counted.
    private var heldEstimate = 0
    private var presence: PresenceStatus?
    private var running = true
    private var dead = false
    private var peerClosed = false
    private var peerCloseReason: CloseReason?
    /// A record from the peer was opened (monitor); `heardLocally` is the loop thread's copy, so
    /// that only the first datagram takes the lock for it.
    private var heard = false
    private var heardLocally = false
    private var idle = true
    /// With `resumable`, a silent peer makes the path lost (`isPathLost`) rather than the connection
    /// dead: messages wait until `replacePath` or `abandon`.
    private let resumable: Bool
    private var pathLost = false
    /// When a message was last sent or delivered (Unix ms).
    private var lastActivity = monotonicMilliseconds()
    /// Datagrams that failed to open (forged, replayed, garbage): counted and dropped.
    private var refusedCount = 0
    /// Called on the loop thread after messages arrived or the connection ended.
    private let onChange: (() -> Void)?

    /// Takes `path` (closed by `close`). The sealer and opener are the session's two directions.
    /// `unopened` answers datagrams that are not records (the responder's handshake, still
    /// acknowledging pieces of message 3); `onChange` hears of arrivals and of the end.
    /// `sharesDatagrams`: the peer takes several records in one datagram (the session's, §3);
    /// such datagrams are taken from any peer.
    public init(path: DatagramPath, sealer: RecordSealer, opener: RecordOpener, sharesDatagrams: Bool = false,
                configuration: ReliableConfiguration = ReliableConfiguration(),
                unopened: (([UInt8]) -> [[UInt8]])? = nil, resumable: Bool = false,
                onChange: (() -> Void)? = nil) {
        self.path = path
        loop = path.loop
        self.unopened = unopened
        self.resumable = resumable
        self.onChange = onChange
        self.sealer = sealer
        self.opener = opener
        self.sharesDatagrams = sharesDatagrams
        self.configuration = configuration
        connection = ReliableConnection(configuration: configuration, now: monotonicMilliseconds())
        let started = loop.sync { () -> Bool in
            self.alarm = LoopAlarm(loop: self.loop) { [weak self] in self?.service() }
            self.attach(path)
            self.service()
            return true
        }
        if started == nil { monitor.locked { running = false } }
    }

    /// A connection over a connected datagram socket (taken, closed by `close`), run on `loop`.
    public convenience init(fd: Int32, loop: GLibLoop, sealer: RecordSealer, opener: RecordOpener, sharesDatagrams: Bool = false,
                            configuration: ReliableConfiguration = ReliableConfiguration(),
                            unopened: (([UInt8]) -> [[UInt8]])? = nil, resumable: Bool = false,
                            onChange: (() -> Void)? = nil) {
        self.init(path: SocketPath(fd: fd, loop: loop), sealer: sealer, opener: opener, sharesDatagrams: sharesDatagrams,
                  configuration: configuration,
                  unopened: unopened, resumable: resumable, onChange: onChange)
    }

    deinit {
        // Normally closed already. Otherwise the path and alarm go on the loop thread, without
        // `self` (it may not be retained while it deinitializes): both call back through weak or
        // cancelled references only.
        guard monitor.locked({ running }) else { return }
        let alarm = self.alarm, path = self.path
        let done = loop.sync { () -> Bool in
            alarm?.cancel()
            path.close()
            return true
        }
        if done == nil { path.close() }
    }

    /// Queues a message on `stream` and returns at once; waits up to `timeout` ms only while the send
    /// buffer (messages not yet acknowledged) is full: its first seven eighths take any message, the
    /// rest only one on a stream with nothing queued or unacknowledged (§7.2). Messages from one
    /// thread keep their order.
    public func send(_ message: [UInt8], stream: UInt32 = 0, timeout: Int = 10_000) throws(Failure) {
        guard message.count <= configuration.maximumMessageSize else { throw .tooLarge(message.count) }
        let limit = configuration.maximumQueuedBytes
        var wake: LoopAlarm?
        let outcome = monitor.wait(milliseconds: max(0, timeout)) { () -> Failure?? in
            if !running || dead { return .some(.closed) }
            guard queuedEstimate == 0 || queuedEstimate + message.count <= limit - limit / 8
                    || !busyStreams.contains(stream) && queuedEstimate + message.count <= limit else { return nil }
            outgoing.append((stream, message))
            // Not idle until the loop has counted it (a disconnect waiting meanwhile must not see
            // the loop's last, older verdict and close with this message unsent).
            idle = false
            queuedEstimate += message.count
            busyStreams.insert(stream)
            lastActivity = monotonicMilliseconds()
            // Only the first message of a batch wakes the loop; it takes them all. The alarm is
            // read here, while running (`close` clears it after `running`, on the loop thread).
            if outgoing.count == 1 { wake = alarm }
            return .some(nil)
        }
        // Out of the lock: the loop thread woken here wants the lock first thing, and on a busy
        // machine it would run while this thread still held it (two more context switches). The
        // loop's own arm at the end of a pass cannot undo this one: that pass either took the
        // message or saw it queued and armed the alarm again. An alarm cancelled meanwhile (the
        // connection closing) ignores it.
        wake?.armNow()
        guard let outcome else { throw .full }
        if let failure = outcome { throw failure }
    }

    /// The next delivered message, waiting up to `timeout` ms. Streams with messages waiting are
    /// taken in turn (one message each), so a stream's message waits behind at most one message of
    /// each other stream, however much those hold. Taking a message frees its room in the receive
    /// window (§7.2).
    public func receive(timeout: Int) throws(Failure) -> (stream: UInt32, bytes: [UInt8]) {
        try take(timeout: timeout, fitting: .max)
    }

    /// `receive`, with the message copied into `buffer` (the caller's: reused, so that no memory is
    /// allocated per message). Returns the message's stream and length. A message longer than
    /// `buffer` stays queued, the next in turn: `.bufferTooSmall(its length)`.
    public func receive(into buffer: UnsafeMutableRawBufferPointer, timeout: Int) throws(Failure) -> (stream: UInt32, length: Int) {
        let (stream, bytes) = try take(timeout: timeout, fitting: buffer.count)
        bytes.withUnsafeBytes { message in
            if let base = buffer.baseAddress, let source = message.baseAddress { base.copyMemory(from: source, byteCount: message.count) }
        }
        return (stream, bytes.count)
    }

    /// The next delivered message if it has at most `limit` bytes (else `.bufferTooSmall`, and it
    /// stays queued), waiting up to `timeout` ms; the loop hears that it was taken.
    private func take(timeout: Int, fitting limit: Int) throws(Failure) -> (stream: UInt32, bytes: [UInt8]) {
        var wake: LoopAlarm?
        let got = monitor.wait(milliseconds: timeout) { () -> Result<(UInt32, [UInt8]), Failure>? in
            if limit < .max, let (_, length) = inbox.peek(), length > limit { return .failure(.bufferTooSmall(length)) }
            if let message = inbox.next() {
                takes.append((message.0, message.1.count))
                heldEstimate = max(0, heldEstimate - ReliableConnection.charge(message.1.count))
                // The loop hears of the take within the delayed ACK's time (§7.2): at once only when
                // its alarm is not due by then. A wake-up per message taken cost each side of an
                // echo a third of its loop passes (bench/iroh_compare.py's RTT phase).
                if takes.count == 1, running {
                    let due = monotonicMilliseconds() + configuration.acknowledgementDelay
                    if alarmDeadline.map({ $0 > due }) ?? true { wake = alarm }
                }
                return .success(message)
            }
            if dead || !running { return .failure(.closed) }
            return nil
        }
        wake?.armNow()  // out of the lock, as in `send`
        guard let got else { throw .timeout }
        return try got.get()
    }

    /// Messages waiting to be received.
    public var pending: Int { monitor.locked { inbox.count } }

    /// Bytes held for this connection, as its loop thread last counted: `send`, messages queued or
    /// sent and not acknowledged (at most `maximumQueuedBytes`, or one larger message);
    /// `receive`, the charges (length + 64 B) of messages received and not yet taken with
    /// `receive`, partly reassembled ones included (at most `receiveBuffer`, or one larger message).
    public var buffered: (send: Int, receive: Int) { monitor.locked { (queuedEstimate, heldEstimate) } }

    /// Datagrams that failed to open (forged, replayed, garbage): counted and dropped.
    public var refused: Int { monitor.locked { refusedCount } }

    /// The peer stopped answering (missed pings) or closed the connection.
    public var isDead: Bool { monitor.locked { dead } }

    /// This side closed it (close, disconnect).
    public var isClosed: Bool { monitor.locked { !running } }

    /// Milliseconds since a message was last sent or delivered on this connection.
    public var idleFor: UInt64 { monitor.locked { monotonicMilliseconds() - min(monotonicMilliseconds(), lastActivity) } }

    /// The peer closed the connection with a CLOSE frame.
    public var isClosedByPeer: Bool { monitor.locked { peerClosed } }

    /// Why the peer closed the connection, if its CLOSE said (a refusal, §7.5).
    public var closeReason: CloseReason? { monitor.locked { peerCloseReason } }

    /// What the peer said of a connection this side just opened (§7.5): anything authenticated
    /// from it accepts it; a CLOSE refuses it.
    public enum PeerDecision: Equatable, Sendable {
        case accepted
        case refused(CloseReason?)
        /// The path failed, or this side closed the connection.
        case gone
    }

    /// Waits up to `timeout` ms for the peer's first record; PINGs the peer (`solicit`) at the start and
    /// every `interval` ms meanwhile (ms), since the peer may be busy deciding. nil: no word yet.
    public func awaitPeer(timeout: Int, interval: Int = 250) -> PeerDecision? {
        let end = monotonicMilliseconds() + UInt64(max(0, timeout))
        while true {
            _ = perform { connection, now in connection.solicit(now: now) }
            let left = Int(Int64(end) - Int64(monotonicMilliseconds()))
            let decision = monitor.wait(milliseconds: max(0, min(interval, left))) { () -> PeerDecision? in
                if peerClosed { return .refused(peerCloseReason) }
                if heard { return .accepted }
                if !running || dead || pathLost { return .gone }
                return nil
            }
            if let decision { return decision }
            if monotonicMilliseconds() >= end { return nil }
        }
    }

    /// The peer went silent on a resumable connection: waiting for `replacePath` or `abandon`.
    public var isPathLost: Bool { monitor.locked { pathLost && !dead } }

    /// Moves the connection to a new path (on the same loop) and session: what was in flight is sent
    /// again over it, nothing queued is lost. The old path is closed. False when the connection
    /// ended meanwhile (the new path is then closed too). `datagramSize`: what the new path's
    /// handshake found it carries (docs/PROTOCOL.md §9).
    @discardableResult
    public func replacePath(_ newPath: DatagramPath, sealer newSealer: RecordSealer, opener newOpener: RecordOpener,
                            sharesDatagrams newSharesDatagrams: Bool = false,
                            unopened newUnopened: (([UInt8]) -> [[UInt8]])?, datagramSize: Int? = nil) -> Bool {
        let done = perform { connection, now -> Bool in
            guard self.monitor.locked({ !self.dead && !self.peerClosed && self.running }) else { return false }
            self.path.close()
            self.path = newPath
            self.pathGone = false
            self.sealer = newSealer
            self.opener = newOpener
            self.sharesDatagrams = newSharesDatagrams
            self.unopened = newUnopened
            self.attach(newPath)
            if let datagramSize { connection.setDatagramSize(datagramSize, now: now) }
            connection.revive(now: now)
            self.monitor.locked { self.pathLost = false }
            return true
        } ?? false
        if !done { newPath.close() }
        return done
    }

    /// Gives up on a lost path: the connection is dead (receive reports the end, send refuses).
    /// Returns every message the peer's application did not take (as far as its ACKs said: those
    /// it did not acknowledge, and those it acknowledged and had not taken), by stream and in order,
    /// for the caller to carry another way (offline delivery) or hand back (§7.8).
    @discardableResult
    public func abandon() -> [(stream: UInt32, bytes: [UInt8])] {
        let handed = monitor.locked { () -> [(UInt32, [UInt8])] in
            dead = true
            defer { outgoing.removeAll() }
            return outgoing
        }
        monitor.broadcast()
        let left = perform { connection, _ -> [(stream: UInt32, bytes: [UInt8])] in
            defer {
                self.backlog.removeAll()
                self.backlogBytes = 0
                self.handedOver = true
            }
            if self.handedOver { return [] }
            return connection.undelivered + self.backlog.map { (stream: $0.0, bytes: $0.1) }
        } ?? []
        onChange?()
        return left + handed.map { (stream: $0.0, bytes: $0.1) }
    }

    /// Every message handed to `send` was taken by the peer's application, as far as its ACKs said.
    public var isFullyDelivered: Bool {
        guard monitor.locked({ outgoing.isEmpty }) else { return false }
        return perform { connection, _ in connection.isDelivered && self.backlog.isEmpty } ?? true
    }

    /// receive() would not block: a message is waiting or the connection ended.
    public var isReadable: Bool { monitor.locked { inbox.count > 0 || dead || !running } }

    public var peerPresence: PresenceStatus? { monitor.locked { presence } }

    public func sendPresence(_ status: PresenceStatus) {
        _ = perform { connection, now in connection.sendPresence(status, now: now) }
    }

    public var statistics: ReliableConnection.Statistics? { perform { connection, _ in connection.statistics } }

    /// Datagrams handed to the path since the start (records sharing one count once, §3).
    public var datagramsSent: Int? { perform { _, _ in self.sentDatagrams } }

    /// A clean end: waits up to `linger` ms for every queued message to be acknowledged, then tells
    /// the peer (CLOSE) and closes. Returns the messages the peer's transport did not acknowledge,
    /// by stream and in order (empty: it has everything; after the CLOSE its application can still
    /// take what it acknowledged). `reason` refuses a connection the peer has not seen accepted (§7.5).
    @discardableResult
    public func disconnect(linger: Int = 2000, reason: CloseReason? = nil) -> [(stream: UInt32, bytes: [UInt8])] {
        _ = monitor.wait(milliseconds: max(0, linger)) { () -> Bool? in
            if dead || !running { return false }
            return idle && outgoing.isEmpty ? true : nil
        }
        let handed = monitor.locked { () -> [(UInt32, [UInt8])] in
            defer { outgoing.removeAll() }
            return outgoing
        }
        let left = perform { connection, now -> [(stream: UInt32, bytes: [UInt8])] in
            // A dead connection (its peer gone) did not deliver what its peer's application had not taken.
            let left = self.handedOver ? []
                : (connection.isDead ? connection.undelivered : connection.unacknowledged) + self.backlog.map { (stream: $0.0, bytes: $0.1) }
            self.handedOver = true
            self.backlog.removeAll()
            self.backlogBytes = 0
            connection.close(now: now, reason: reason)
            return left
        } ?? []
        close()
        return left + handed.map { (stream: $0.0, bytes: $0.1) }
    }

    /// Stops the connection and closes its path. Idempotent.
    public func close() {
        let wasRunning = monitor.locked { () -> Bool in
            defer { running = false }
            return running
        }
        monitor.broadcast()
        guard wasRunning else { return }
        // The loop may have stopped already (the context went first): then nothing runs there.
        let stopped = loop.sync { () -> Bool in
            self.alarm?.cancel()
            self.alarm = nil
            self.path.close()
            return true
        }
        if stopped == nil {
            alarm = nil
            path.close()
        }
    }

    // MARK: Loop thread

    /// Runs `body` on the loop thread with the reliable core and waits for its result (inline on the
    /// loop thread); nil when the connection is closed.
    private func perform<T>(_ body: @escaping (ReliableConnection, UInt64) -> T) -> T? {
        if loop.isCurrent {
            guard monitor.locked({ running }) else { return nil }
            return body(connection, monotonicMilliseconds())
        }
        return monitor.perform(enqueue: { command in
            guard running else { return false }
            commands.append(command)
            if commands.count == 1 { alarm?.armNow() }
            return true
        }, wake: {}, body)
    }

    private func attach(_ path: DatagramPath) {
        path.attach(receiver: { [weak self] datagram in self?.datagram(datagram) },
                    gone: { [weak self] in
                        guard let self else { return }
                        self.pathGone = true
                        self.alarm?.armNow()
                    })
    }

    /// A datagram from the path: each record in it (PROTOCOL.md §3: records laid end to end, each
    /// as long as its header says), in order, opened and handed to the reliable core. What it
    /// answers goes out when the loop gets to the connection's alarm, after every datagram that came
    /// at once. A datagram that is not such a run, or is larger than any a sender shares
    /// (`Pieces.maximumDatagramSize`: a forger's 64 KiB datagram is not 1,300 records to open), is
    /// handled whole: refused, or, alone, a handshake piece for `unopened` (pieces never share a
    /// datagram, so one datagram gets at most one answer).
    private func datagram(_ whole: UnsafeRawBufferPointer) {
        // One record filling the datagram (the usual case): no split.
        if whole.count >= FrameHeader.size,
           Int(whole.loadUnaligned(fromByteOffset: 12, as: UInt32.self).bigEndian) == whole.count - FrameHeader.size {
            return record(whole, alone: true)
        }
        let ranges = whole.count <= Pieces.maximumDatagramSize ? FrameHeader.frames(in: whole) : []
        guard ranges.count > 1 else { return record(whole, alone: true) }
        for range in ranges { record(UnsafeRawBufferPointer(rebasing: whole[range]), alone: false) }
    }

    /// One record: opened and handed to the reliable core. One that does not open goes to
    /// `unopened` when it came `alone` in its datagram; otherwise it is refused.
    private func record(_ bytes: UnsafeRawBufferPointer, alone: Bool) {
        let opened = Result(catching: { () throws(RecordError) in try opener.open(bytes) })
        guard case .success(let (header, plaintext)) = opened else {
            if case .failure(.exhausted) = opened {
                // Past the suite's integrity limit nothing opens any more (RFC 9001 §6.6): the
                // connection ends now, with a CLOSE to the peer, rather than going silent.
                connection.close(now: monotonicMilliseconds())
                monitor.locked {
                    dead = true
                    refusedCount += 1
                }
                monitor.broadcast()
                alarm?.armNow()
                onChange?()
                return
            }
            if alone, let unopened {
                for answer in unopened(Array(bytes)) { _ = path.send(answer) }
            } else {
                monitor.locked { refusedCount += 1 }
            }
            return
        }
        connection.receive(header, payload: plaintext[...], now: monotonicMilliseconds())
        // A CLOSE is no acceptance: it refuses (§7.5), once the loop reported it.
        if !heardLocally && header.type != .close {
            heardLocally = true
            monitor.locked { heard = true }
            monitor.broadcast()
        }
        alarm?.armNow()
    }

    /// Takes what other threads queued, runs the timers, sends what the core has to send, hands
    /// events over, and sets the alarm for the core's next deadline.
    private func service() {
        guard monitor.locked({ running }) else { return }
        let (pending, handed, took) = monitor.locked { () -> ([(ReliableConnection, UInt64) -> Void], [(UInt32, [UInt8])], [(UInt32, Int)]) in
            defer {
                commands.removeAll()
                outgoing.removeAll(keepingCapacity: true)
                takes.removeAll(keepingCapacity: true)
            }
            return (commands, outgoing, takes)
        }
        // Takes first: a command that closes the connection then reports them with its CLOSE.
        var now = monotonicMilliseconds()
        for (stream, length) in took { connection.taken(stream: stream, length: length, now: now) }
        for command in pending { command(connection, monotonicMilliseconds()) }
        now = monotonicMilliseconds()
        for item in handed { backlogBytes += item.1.count }
        backlog += handed
        // While the path is lost the messages wait here (the connection takes none). A stream whose
        // message the core refused keeps its order; the others go on.
        if !backlog.isEmpty && !connection.isDead {
            var blocked = Set<UInt32>(), kept: [(UInt32, [UInt8])] = []
            for (stream, message) in backlog {
                if blocked.contains(stream) {
                    kept.append((stream, message))
                    continue
                }
                do throws(ReliableError) { try connection.send(message, stream: stream, now: now) } catch {
                    if error == .full {
                        blocked.insert(stream)
                        kept.append((stream, message))
                        continue
                    }
                }
                backlogBytes -= message.count
            }
            backlog = kept
        }
        if let next = connection.nextDeadline, next <= now { connection.handleTimeout(now: now) }
        // Sealed into one buffer and handed to the path at once (a direct path gives the kernel runs
        // of equal-sized datagrams in one call, UDP GSO; bench/iroh_compare.py).
        outgoingBatch.removeAll()
        var lastShareable = false
        // Shared datagrams stay within the size every path carries (§9: 500 bytes), so that the
        // path size's evidence holds: a small packet or a PONG that passes in one passed small, and
        // small messages do not go out in datagrams a narrowing path drops.
        let shareLimit = min(Pieces.minimumDatagramSize, connection.datagramSize)
        for frame in connection.takeFrames() {
            let sealed = frame.payload.withUnsafeBytes { plaintext in
                try? sealer.seal(type: frame.type, word0: frame.word0, word1: frame.word1, plaintext: plaintext,
                                 appendingTo: &outgoingBatch.bytes)
            }
            guard let sealed else { continue }
            // Records share a datagram while they fit `shareLimit` (§3, §9); a CLOSE goes alone.
            if sharesDatagrams, frame.type != .close, let last = outgoingBatch.lastLength, lastShareable,
               last + sealed <= shareLimit {
                outgoingBatch.extendLast(by: sealed)
                continue
            }
            lastShareable = frame.type != .close
            outgoingBatch.close(length: sealed)
            // Nothing acknowledges a CLOSE: three copies make its loss unlikely.
            if frame.type == .close {
                let copy = Array(outgoingBatch.bytes.suffix(sealed))
                outgoingBatch.append(copy)
                outgoingBatch.append(copy)
            }
        }
        if !outgoingBatch.isEmpty, !pathGone {
            sentDatagrams += outgoingBatch.count
            if !path.send(outgoingBatch) { pathGone = true }
        }
        // The path is gone now rather than after three missed pings.
        if pathGone { connection.pathFailed(now: monotonicMilliseconds()) }
        let events = connection.takeEvents()
        let queued = connection.queuedBytes + backlogBytes
        let held = connection.bufferedBytes
        var busy = connection.streamsWithMessages
        for (stream, _) in backlog { busy.insert(stream) }
        let nowIdle = connection.isIdle && backlog.isEmpty
        var changed = false
        var wake = false
        monitor.locked {
            let newQueued = queued + outgoing.reduce(0) { $0 + $1.1.count }
            for (stream, _) in outgoing { busy.insert(stream) }
            // Waiters (send for room, disconnect for idle) are woken only when that changed: a
            // wake-up of every waiter after every pass woke an echo's receiver for its own send.
            wake = newQueued < queuedEstimate || busy != busyStreams || nowIdle && !idle
            queuedEstimate = newQueued
            busyStreams = busy
            heldEstimate = held
            // A message queued after this pass took its batch is not counted in `nowIdle`: without
            // `outgoing` here, this verdict overwrote the one `send` had set, and a disconnect right
            // after the send found the connection idle and the message unacknowledged (the
            // environment test of bindings/python failed 1 run in 20 with DNA_ERR_TIMEOUT in 1 ms).
            idle = nowIdle && outgoing.isEmpty
            for event in events {
                switch event {
                case .message(let stream, let bytes):
                    inbox.append(stream, bytes)
                    lastActivity = monotonicMilliseconds()
                    changed = true
                case .dead:
                    if resumable { pathLost = true } else { dead = true }
                    changed = true
                case .closed:
                    dead = true
                    peerClosed = true
                    peerCloseReason = connection.closeReason
                    changed = true
                case .presence(let status): presence = status
                }
            }
            // Under the lock: a send that queued after the take above has armed it already, and
            // this must not push its wake-up back to the core's deadline.
            if outgoing.isEmpty, commands.isEmpty, takes.isEmpty {
                alarmDeadline = connection.nextDeadline
                alarm?.arm(at: alarmDeadline)
            } else {
                alarmDeadline = now
                alarm?.armNow()
            }
        }
        if changed || wake { monitor.broadcast() }
        if changed { onChange?() }
    }
}

/// Delivered messages by stream, taken in turn: each stream a FIFO, the streams with messages
/// waiting in a rotation (a stream goes to the back after each message it gives).
private struct Inbox {
    private var queues: [UInt32: (items: [[UInt8]], head: Int)] = [:]
    private var order: [UInt32] = []
    private var orderHead = 0
    private(set) var count = 0

    mutating func append(_ stream: UInt32, _ bytes: [UInt8]) {
        if queues[stream] == nil {
            queues[stream] = ([], 0)
            order.append(stream)
        }
        queues[stream]?.items.append(bytes)
        count += 1
    }

    /// The stream and length of the message `next` would return, leaving it queued.
    func peek() -> (UInt32, Int)? {
        for stream in order[orderHead...] {
            if let queue = queues[stream], queue.head < queue.items.count { return (stream, queue.items[queue.head].count) }
        }
        return nil
    }

    mutating func next() -> (UInt32, [UInt8])? {
        while orderHead < order.count {
            let stream = order[orderHead]
            orderHead += 1
            if orderHead >= 64 && 2 * orderHead >= order.count {
                order.removeFirst(orderHead)
                orderHead = 0
            }
            guard var queue = queues.removeValue(forKey: stream), queue.head < queue.items.count else { continue }
            let bytes = queue.items[queue.head]
            queue.items[queue.head] = []
            queue.head += 1
            count -= 1
            if queue.head < queue.items.count {
                if queue.head >= 64 && 2 * queue.head >= queue.items.count {
                    queue.items.removeFirst(queue.head)
                    queue.head = 0
                }
                queues[stream] = queue
                order.append(stream)
            }
            return (stream, bytes)
        }
        return nil
    }
}
