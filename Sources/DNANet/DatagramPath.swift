import CNice
import Glibc

/// A path that carries datagrams to one peer: an ICE path (DNANat's IcePath, which sends with
/// nice_agent_send and hears libnice's receive callback) or a connected socket (SocketPath). Both
/// deliver on their GLib loop's thread, where the connection that uses them runs.
public protocol DatagramPath: AnyObject, Sendable {
    /// The loop whose thread delivers this path's datagrams.
    var loop: GLibLoop { get }

    /// Sends one datagram (any thread). False when the path is gone; a datagram the path drops
    /// (a full buffer) counts as sent, as UDP does.
    func send(_ datagram: UnsafeRawBufferPointer) -> Bool

    /// Sends datagrams laid end to end (loop thread); the same as sending each in turn, which is what
    /// a path without a faster way does. False when the path is gone.
    func send(_ batch: DatagramBatch) -> Bool

    /// Before `attach`: the next datagram, waiting until `deadline` (Unix ms); nil when none came.
    /// For the one thread that runs the handshake over the path.
    func receive(waitingUntil deadline: UInt64) -> [UInt8]?

    /// From now on (loop thread), datagrams go to `receiver` as they arrive (those that waited for
    /// `receive` first), and `gone` is called once when the path ends for good.
    func attach(receiver: @escaping (UnsafeRawBufferPointer) -> Void, gone: @escaping () -> Void)

    /// Stops delivering (loop thread) and releases what the path owns (a socket path's fd). Idempotent.
    func close()
}

extension DatagramPath {
    public func send(_ datagram: [UInt8]) -> Bool { datagram.withUnsafeBytes { send($0) } }

    public func send(_ batch: DatagramBatch) -> Bool {
        batch.bytes.withUnsafeBytes { bytes in
            var offset = 0
            for length in batch.lengths {
                guard send(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length])) else { return false }
                offset += length
            }
            return true
        }
    }
}

/// Datagrams laid end to end in one buffer, with their lengths: what a connection sends after one
/// wake-up, handed to its path at once (which may give the kernel all of them in one call).
public struct DatagramBatch: Sendable {
    /// The datagrams' bytes, one after the other.
    public var bytes: [UInt8] = []
    public private(set) var lengths: [Int] = []

    public init() {}

    public var isEmpty: Bool { lengths.isEmpty }
    public var count: Int { lengths.count }

    /// Counts the last `length` bytes of `bytes` (appended by the caller) as one datagram.
    public mutating func close(length: Int) { lengths.append(length) }
    /// The length of the last datagram so far (nil: none yet).
    public var lastLength: Int? { lengths.last }
    /// Counts the last `length` bytes of `bytes` (appended by the caller) into the last datagram
    /// (records sharing it); the first datagram when there is none yet.
    public mutating func extendLast(by length: Int) {
        if lengths.isEmpty { lengths.append(length) } else { lengths[lengths.count - 1] += length }
    }

    public mutating func append(_ datagram: [UInt8]) {
        bytes += datagram
        lengths.append(datagram.count)
    }

    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        lengths.removeAll(keepingCapacity: true)
    }
}

/// A GLib source on a loop that runs `fire` on the loop thread once the time set with `arm` comes.
/// `arm` may be called from any thread: the loop thread sets it without a wake-up (the loop reads
/// it before it next polls), another thread wakes the loop when it brings the time forward. A
/// connection's loop sets it (`arm(at:)`) under the connection's lock, re-arming at once when work
/// came meanwhile; other threads only bring it forward (`armNow`), so no later wake-up is lost.
public final class LoopAlarm: @unchecked Sendable {
    /// Set once by `init`, released by `deinit` only: an `arm` from another thread racing with
    /// `cancel` (a send during the connection's close) finds it destroyed, never freed.
    private var source: UnsafeMutablePointer<GSource>?
    private let fire: () -> Void

    /// Loop thread only.
    public init(loop: GLibLoop, fire: @escaping () -> Void) {
        self.fire = fire
        source = dna_alarm_new(loop.context, { data in
            guard let data else { return 0 }
            Unmanaged<LoopAlarm>.fromOpaque(data).takeUnretainedValue().fire()
            return 1
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        guard let source else { return }
        dna_alarm_destroy(source)
        g_source_unref(source)
    }

    /// Fires at `deadline` (monotonic ms, `monotonicMilliseconds`); at once when it has passed;
    /// nil: never.
    public func arm(at deadline: UInt64?) {
        guard let source else { return }
        guard let deadline else {
            dna_alarm_set(source, -1)
            return
        }
        let now = monotonicMilliseconds()
        dna_alarm_set(source, deadline <= now ? 0 : g_get_monotonic_time() + gint64(deadline - now) * 1000)
    }

    /// Fires as soon as the loop gets to it.
    public func armNow() {
        guard let source else { return }
        dna_alarm_set(source, 0)
    }

    /// Stops the alarm for good (loop thread, or once the loop stopped): it never fires again and
    /// `arm` does nothing. Idempotent.
    public func cancel() {
        guard let source else { return }
        dna_alarm_destroy(source)
    }
}

/// A connected datagram socket (UDP or AF_UNIX) as a path: received on the loop through an fd watch.
public final class SocketPath: DatagramPath, @unchecked Sendable {
    public let loop: GLibLoop
    private let fd: Int32
    private let monitor = Monitor()
    private var closed = false
    // Loop thread.
    private var watch: UnsafeMutablePointer<GSource>?
    private var receiver: ((UnsafeRawBufferPointer) -> Void)?
    private var gone: (() -> Void)?
    private var buffer: [UInt8] = []

    /// Takes `fd` (closed by `close`).
    public init(fd: Int32, loop: GLibLoop) {
        self.fd = fd
        self.loop = loop
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        guard !closed else { return }
        let watch = self.watch
        loop.sync {
            if let watch {
                g_source_destroy(watch)
                g_source_unref(watch)
            }
        }
        Glibc.close(fd)
    }

    public func send(_ datagram: UnsafeRawBufferPointer) -> Bool {
        guard !monitor.locked({ closed }) else { return false }
        let sent = Glibc.send(fd, datagram.baseAddress, datagram.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
        return sent >= 0 || !Self.isGone(errno)
    }

    public func receive(waitingUntil deadline: UInt64) -> [UInt8]? {
        let now = monotonicMilliseconds()
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, Int32(clamping: deadline > now ? deadline - now : 0)) > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: 65536)
        let length = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        guard length > 0 else { return nil }
        return Array(bytes.prefix(length))
    }

    public func attach(receiver: @escaping (UnsafeRawBufferPointer) -> Void, gone: @escaping () -> Void) {
        guard watch == nil, !monitor.locked({ closed }) else { return }
        self.receiver = receiver
        self.gone = gone
        buffer = [UInt8](repeating: 0, count: 65536)
        watch = dna_fd_watch(loop.context, fd, { _, _, data in
            guard let data else { return 0 }
            return Unmanaged<SocketPath>.fromOpaque(data).takeUnretainedValue().readable() ? 1 : 0
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    public func close() {
        let first = monitor.locked { () -> Bool in
            defer { closed = true }
            return !closed
        }
        guard first else { return }
        loop.sync {
            if let watch = self.watch {
                g_source_destroy(watch)
                g_source_unref(watch)
                self.watch = nil
            }
            self.receiver = nil
            self.gone = nil
        }
        Glibc.close(fd)
    }

    /// Errors of a connected datagram socket whose other end is gone.
    static func isGone(_ code: Int32) -> Bool {
        code == ECONNREFUSED || code == ECONNRESET || code == ENOTCONN || code == EPIPE || code == EBADF
    }

    private func readable() -> Bool {
        for _ in 0..<256 {
            guard let receiver else { return false }
            let length = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if length < 0, Self.isGone(errno) || errno == EBADF {
                let gone = self.gone
                self.gone = nil
                self.receiver = nil
                watch.map { g_source_unref($0) }
                watch = nil
                gone?()
                return false
            }
            guard length >= 0 else { break }
            buffer.withUnsafeBytes { receiver(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
        }
        return true
    }
}
