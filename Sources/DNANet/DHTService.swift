import CNice
import DNACrypto
import DNADHT
import DNAWire
import Glibc

/// A mutex and a condition variable.
package final class Monitor: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init() {
        mutex.initialize(to: pthread_mutex_t())
        condition.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        // Waits are timed on the monotonic clock: a step of the wall clock neither ends nor
        // stretches them.
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    package func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// With the lock held: waits until `ready` returns a value or `milliseconds` pass.
    package func wait<T>(milliseconds: Int, until ready: () -> T?) -> T? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let total = Int(deadline.tv_nsec) + (milliseconds % 1000) * 1_000_000
        deadline.tv_sec += milliseconds / 1000 + total / 1_000_000_000
        deadline.tv_nsec = total % 1_000_000_000
        while true {
            if let value = ready() { return value }
            if pthread_cond_timedwait(condition, mutex, &deadline) == ETIMEDOUT { return ready() }
        }
    }

    package func broadcast() { pthread_cond_broadcast(condition) }

    /// Runs `body` on an I/O thread and waits (up to 60 s) for its result: `enqueue`, called with
    /// the lock held, queues the command for that thread (false: the thread is stopping, nil is
    /// returned); `wake` then wakes the thread; nil also when `cancelled` (checked under the lock)
    /// turns true before it ran (its runner stopped). The DHT service and each connection use it.
    package func perform<State, T>(enqueue: (@escaping (State, UInt64) -> Void) -> Bool, wake: () -> Void,
                                   cancelled: () -> Bool = { false }, _ body: @escaping (State, UInt64) -> T) -> T? {
        let box = ResultBox<T>()
        let accepted = locked {
            enqueue { state, now in
                let value = body(state, now)
                self.locked {
                    box.value = value
                    box.done = true
                }
                self.broadcast()
            }
        }
        guard accepted else { return nil }
        wake()
        return wait(milliseconds: 60_000) { () -> T?? in
            if box.done { return .some(box.value) }
            return cancelled() ? .some(nil) : nil
        } ?? nil
    }
}

/// Milliseconds of Unix time: only for times the protocol carries (entries' last_seen, mail
/// lifetimes), never for timers or elapsed times (monotonicMilliseconds).
public func unixMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return UInt64(max(0, now.tv_sec)) * 1000 + UInt64(max(0, now.tv_nsec)) / 1_000_000
}

/// Milliseconds on the monotonic clock (CLOCK_BOOTTIME: it also counts time suspended, so that
/// timers due during a suspension fire on resume): every timer and elapsed time of the drivers.
/// A step of the wall clock does not move it.
public func monotonicMilliseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_BOOTTIME, &now)
    return UInt64(max(0, now.tv_sec)) * 1000 + UInt64(max(0, now.tv_nsec)) / 1_000_000
}

public struct DHTServiceConfiguration: Sendable {
    public var bindHost: String?
    public var port: UInt16 = 0
    /// nil: $DNA_HOME, else ~/.dna. The node's credential and saved state live in `<data_dir>/dht/`.
    public var dataDirectory: String?
    public var node = DHTConfiguration()
    /// Owners re-announce their entries this often (seed: every 5 minutes).
    public var announceInterval: UInt64 = 300_000
    /// Added to the system's Unix clock (ms): a machine whose clock is off, in tests.
    public var unixClockError: Int64 = 0

    public init() {}
}

/// What became of an identity's announcements (docs/PROTOCOL.md §5.2): peers find it while a holder
/// keeps an entry it stored, for the entry lifetime (30 minutes) after that STORE.
public struct AnnouncementState: Equatable, Sendable {
    /// Holders that stored the latest announcement any holder stored (0: none ever did).
    public var holders = 0
    /// When a holder last stored the entry (monotonic ms, `monotonicMilliseconds`); nil: never.
    public var storedAt: UInt64?
    /// Announcements in a row no holder stored since then (they are retried after 5 s, doubling up to
    /// the announce interval).
    public var failedAttempts = 0
    /// When this state was read (monotonic ms).
    public var now: UInt64 = 0

    /// A holder stored the entry within `lifetime` ms (the entry lifetime, 30 minutes): peers can find it.
    public func isAnnounced(lifetime: UInt64 = DHTConfiguration().entryLifetime) -> Bool {
        storedAt.map { now < $0 + lifetime } ?? false
    }

    /// Milliseconds since a holder last stored the entry; nil: never.
    public var storedAgo: UInt64? { storedAt.map { now >= $0 ? now - $0 : 0 } }
}

/// The DHT driver: one UDP socket watched on a GLib loop, whose thread alone runs the DHTNode state
/// machine. A transport context passes its own loop, so that the DHT, the ICE agents and the
/// connections share its one I/O thread; alone (a bootstrap node, the dht_* API) the service runs its
/// own. Calls from other threads hand work to the loop and wait for the answer.
public final class DHTService: @unchecked Sendable {
    public let port: UInt16
    public let credential: NodeCredential
    public let dataDirectory: String
    private let socket: UDPSocket
    private let node: DHTNode
    private let configuration: DHTServiceConfiguration
    private let monitor = Monitor()
    private var commands: [(DHTNode, UInt64) -> Void] = []
    private var results: [LookupID: LookupResult] = [:]
    /// Ended value puts and gets (§10), until their caller takes them.
    private var valuePutResults: [LookupID: ValuePutResult] = [:]
    private var valueGetResults: [LookupID: ValueGetResult] = [:]
    /// Asynchronous value operations (`startValuePut`, `startValueGet`; loop thread only), by their
    /// id; and the operation each lookup under way belongs to.
    private var operations: [UInt64: ValueOperation] = [:]
    private var operationLookups: [LookupID: UInt64] = [:]
    /// Operations started from other threads, for the loop thread to take (under the monitor).
    private var queuedOperations: [ValueOperation] = []
    /// Sealed puts whose reader's keys a worker is looking up (`startSealedWrite`), by id (under
    /// the monitor); and the workers.
    private var sealing: [UInt64: ValueOperation] = [:]
    private let sealers = WorkerQueue(limit: 4)
    private var nextOperation: UInt64 = 0
    /// Listeners (§10.5): the handler each one's events go to, on the loop thread.
    private var valueHandlers: [UInt64: @Sendable (UInt64, ValueEvent) -> Void] = [:]
    /// The listener whose handler the loop thread is calling now (under the monitor).
    private var dispatching: UInt64?
    /// Signaling: signals for this node's keys, and answers to the signals it sent (bounded queues).
    private var incomingSignals: [SignalRequest] = []
    /// The last signals queued (id, origin, payload), so that copies through other holders are dropped.
    private var recentSignals: [(request: SignalRequest, at: UInt64)] = []
    private var deliveries: [UInt64: [SignalDelivery]] = [:]
    private var mailAnswers: [UInt64: [(Endpoint, MailAnswer?)]] = [:]
    private var nextMailOperation: UInt64 = 1
    private var running = true
    /// Tests: datagrams it returns false for are not sent, as a firewall rule would drop them.
    private var outgoingFilter: (@Sendable (_ datagram: [UInt8], _ to: Endpoint) -> Bool)?
    /// Tests: how long each datagram is held back, in ms (`delayOutgoing`); those held (loop thread).
    private var outgoingDelay: (@Sendable (_ datagram: [UInt8], _ to: Endpoint) -> Int)?
    private var heldBack: [(due: UInt64, to: Endpoint, datagram: [UInt8])] = []
    /// The loop the node runs on, and whether this service made it (then it stops it).
    public let loop: GLibLoop
    private let ownsLoop: Bool
    // Loop thread only: the socket's watch, the alarm for the node's next deadline, the last save.
    private var watch: UnsafeMutablePointer<GSource>?
    private var alarm: LoopAlarm?
    private var lastSave: UInt64
    /// What became of each owned entry's announcements (loop thread only).
    private var announcements: [IdentityName: AnnouncementState] = [:]
    /// Entries this node re-announces (loop thread only).
    private var owned: [IdentityName: (identity: Identity, entry: PeerEntry)] = [:]
    private var nextAnnounce: UInt64
    /// Periodic re-announcements in flight (loop thread only), and the wait before the next try
    /// after one that no node stored (5 s, doubling up to the announce interval).
    private var reannouncing: [LookupID: IdentityName] = [:]
    private var reannounceBackoff: UInt64 = 0
    /// Answers other protocols' datagrams on the same socket (the STUN server of `dnat node`).
    public var otherProtocol: (([UInt8], Endpoint) -> [UInt8]?)?
    private let logger: (String) -> Void

    /// Binds the socket and starts the node on `loop` (nil: a loop of its own).
    public init(configuration: DHTServiceConfiguration, loop: GLibLoop? = nil,
                log: @escaping (String) -> Void = { _ in }) throws(NetError) {
        self.configuration = configuration
        if let loop {
            self.loop = loop
            ownsLoop = false
        } else {
            self.loop = try GLibLoop()
            ownsLoop = true
        }
        logger = log
        dataDirectory = IdentityStore.dataDirectory(configuration.dataDirectory)
        let directory = dataDirectory + "/dht"
        try Files.makeDirectory(directory)
        credential = try Self.loadCredential(directory + "/node", difficulty: configuration.node.difficulty)
        socket = try UDPSocket(host: configuration.bindHost, port: configuration.port)
        port = socket.port
        let now = monotonicMilliseconds()
        node = DHTNode(credential: credential, configuration: configuration.node, now: now)
        node.setUnixTime(unixMilliseconds() &+ UInt64(bitPattern: configuration.unixClockError), at: now)
        nextAnnounce = now + configuration.announceInterval
        lastSave = now
        if let saved = try? Files.read(directory + "/state"), let state = try? DHTNode.SavedState(bytes: saved) {
            node.restore(state, now: now)
            log("restored \(state.contacts.count) contacts and \(state.entries.count) entries")
        }
        let started = self.loop.sync { () -> Bool in
            self.alarm = LoopAlarm(loop: self.loop) { [weak self] in self?.service() }
            self.watch = dna_fd_watch(self.loop.context, self.socket.fd, { _, _, data in
                guard let data else { return 0 }
                Unmanaged<DHTService>.fromOpaque(data).takeUnretainedValue().readable()
                return 1
            }, Unmanaged.passUnretained(self).toOpaque())
            self.service()
            return true
        }
        guard started == true else { throw NetError("the loop stopped", ECANCELED) }
        log("DHT node \(credential.id) on UDP port \(port)")
    }

    deinit {
        // Normally stopped already. Otherwise the same, without `self` (it may not be retained
        // while it deinitializes): the alarm calls back through a weak reference, and a watch
        // callback running now ends before the detach runs on the loop.
        guard monitor.locked({ running }) else { return }
        Self.detach(alarm: alarm, watch: watch, node: node, file: dataDirectory + "/dht/state", loop: loop, ownsLoop: ownsLoop)
    }

    /// Saves the state and takes the node off the loop (stopping the loop when it is the service's
    /// own). Idempotent; not from the loop thread.
    public func stop() {
        let wasRunning = monitor.locked { () -> Bool in
            defer { running = false }
            return running
        }
        monitor.broadcast()
        guard wasRunning else { return }
        // Every asynchronous operation ends, on the loop thread (here when the loop stopped first).
        let end = { [self] in
            let queued = monitor.locked { () -> [ValueOperation] in
                defer {
                    queuedOperations.removeAll()
                    sealing.removeAll()
                }
                return queuedOperations + sealing.values
            }
            let ended = (Array(operations.values) + queued).sorted { $0.id < $1.id }
            operations.removeAll()
            operationLookups.removeAll()
            for operation in ended { operation.finish(.stopped) }
        }
        if loop.sync({ () -> Bool in
            end()
            return true
        }) == nil {
            end()
        }
        Self.detach(alarm: alarm, watch: watch, node: node, file: dataDirectory + "/dht/state", loop: loop, ownsLoop: ownsLoop)
    }

    /// Cancels the alarm, destroys the socket's watch and saves the state, on the loop (or here
    /// once the loop stopped: its owner went first, and nothing runs there), then stops the loop
    /// when it is the service's own. Nothing runs on the node afterwards: every entry point checks
    /// `running`, which the caller cleared or found cleared.
    private static func detach(alarm: LoopAlarm?, watch: UnsafeMutablePointer<GSource>?, node: DHTNode, file: String,
                               loop: GLibLoop, ownsLoop: Bool) {
        let work = {
            alarm?.cancel()
            if let watch {
                g_source_destroy(watch)
                g_source_unref(watch)
            }
            states.write(states.snapshot(node, file: file))
        }
        if loop.sync({ () -> Bool in
            work()
            return true
        }) == nil {
            work()
        }
        if ownsLoop { loop.stop() }
    }

    /// The periodic save: the state is taken on the loop thread, and written (with an fsync, which
    /// can take long on a busy disk) on a short-lived thread, so that the loop never waits for it.
    private func saveInBackground() {
        let snapshot = Self.states.snapshot(node, file: dataDirectory + "/dht/state")
        let write = Unmanaged.passRetained(Work { Self.states.write(snapshot) })
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Work>.fromOpaque(argument).takeRetainedValue().run()
            return nil
        }, write.toOpaque())
        if started == 0 {
            pthread_detach(thread)
        } else {
            write.takeRetainedValue().run()  // no thread: written here
        }
    }

    /// Writes of state files, one at a time; a snapshot older than the one last written to its
    /// file is dropped (a background write must not overwrite the final save at stop).
    private static let states = StateWriter()

    private struct Snapshot: Sendable {
        var file: String
        var bytes: [UInt8]
        var sequence: UInt64
    }

    private final class StateWriter: @unchecked Sendable {
        private let monitor = Monitor()
        private var taken: UInt64 = 0
        private var written: [String: UInt64] = [:]

        func snapshot(_ node: DHTNode, file: String) -> Snapshot {
            let bytes = node.savedState(now: monotonicMilliseconds()).bytes
            return monitor.locked {
                taken += 1
                return Snapshot(file: file, bytes: bytes, sequence: taken)
            }
        }

        func write(_ snapshot: Snapshot) {
            monitor.locked {
                guard (written[snapshot.file] ?? 0) < snapshot.sequence else { return }
                written[snapshot.file] = snapshot.sequence
                try? Files.writeAtomically(snapshot.file, snapshot.bytes)
            }
        }
    }

    private final class Work {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// The node's time now (monotonic ms), with the node told the Unix time that goes with it.
    /// Loop thread only (or before the loop runs the node).
    private func clock() -> UInt64 {
        let now = monotonicMilliseconds()
        node.setUnixTime(unixMilliseconds() &+ UInt64(bitPattern: configuration.unixClockError), at: now)
        return now
    }

    // MARK: Calls from any thread

    /// Runs `body` on the loop thread and waits for its result (inline on the loop thread); nil
    /// once stopped.
    public func perform<T>(_ body: @escaping (DHTNode, UInt64) -> T) -> T? {
        if loop.isCurrent {
            guard monitor.locked({ running }) else { return nil }
            let value = body(node, clock())
            alarm?.armNow()  // what the body queued goes out when the loop gets to the alarm
            return value
        }
        // A stop ends the wait: the loop no longer runs queued commands (a worker's sealed put
        // must not outlive the context by a minute).
        return monitor.perform(enqueue: { command in
            guard running else { return false }
            commands.append(command)
            if commands.count == 1 { alarm?.armNow() }
            return true
        }, wake: {}, cancelled: { !running }, body)
    }

    /// Queues `body` for the loop thread without waiting for it (runs it inline on the loop thread).
    private func enqueue(_ body: @escaping (DHTNode, UInt64) -> Void) {
        if loop.isCurrent {
            if monitor.locked({ running }) { body(node, clock()) }
            return
        }
        monitor.locked {
            guard running else { return }
            commands.append(body)
            if commands.count == 1 { alarm?.armNow() }
        }
    }

    /// Waiting for the network on the loop thread would stop the loop that brings the answer.
    private var mayWait: Bool {
        if loop.isCurrent {
            logger("a DHT request that waits for the network was made on the loop thread: refused")
            return false
        }
        return true
    }

    /// Starts a lookup on the loop thread and waits up to `timeout` ms for its result (nil at once
    /// when called on the loop thread).
    public func lookup(timeout: Int = 30_000, _ start: @escaping (DHTNode, UInt64) -> LookupID) -> LookupResult? {
        guard mayWait, let id = perform(start) else { return nil }
        // A stop ends the wait (a worker's sealed put must not outlive the context by its timeout).
        let result = monitor.wait(milliseconds: timeout) { () -> LookupResult?? in
            if let result = results[id] { return .some(result) }
            return running ? nil : .some(nil)
        } ?? nil
        _ = monitor.locked { results.removeValue(forKey: id) }
        return result
    }

    /// Puts a signed value on the k nodes closest to its key (§10.2) and waits up to `timeout` ms
    /// for the result: nil when it did not end in time, when the service stopped, or on the loop
    /// thread. Throws when the node refuses the value before sending it (fields, times, signature).
    public func putValue(_ value: SignedValue, timeout: Int = 30_000) throws(SignedValueError) -> ValuePutResult? {
        guard mayWait, let started = perform({ node, now in Result { () throws(SignedValueError) in try node.putValue(value, now: now) } })
        else { return nil }
        let id = try started.get()
        let result = monitor.wait(milliseconds: timeout) { valuePutResults[id] }
        _ = monitor.locked { valuePutResults.removeValue(forKey: id) }
        return result
    }

    /// What a listener hears (§10.5).
    public enum ValueEvent: Sendable, Equatable {
        /// A value newer than any known for its signer and slot (a tombstone: the slot was deleted).
        case changed(SignedValue)
        /// A known value's lifetime ended.
        case expired(SignedValue)
    }

    /// Listens to the values at `key` (§10.5): `handler` gets the listener's id and each change and
    /// expiry, on the loop thread (it must not wait for this service). Returns the listener's id,
    /// nil once stopped.
    public func listen(_ key: NodeID, query: ValueQuery = ValueQuery(),
                       handler: @escaping @Sendable (UInt64, ValueEvent) -> Void) -> UInt64? {
        perform { [self] node, now in
            let id = node.listen(key, query: query, now: now)
            monitor.locked { valueHandlers[id] = handler }
            return id
        }
    }

    /// Whether the caller is this service's loop thread (a handler or a log line): calls that wait
    /// for the network refuse it.
    public var isLoopThread: Bool { loop.isCurrent }

    /// Stops listener `id`: false when there is no such listener. Once this returns, its handler is
    /// not called again (called from that handler, the current call is the last): the handler goes
    /// at once, and a call of it under way on the loop thread is waited for.
    @discardableResult
    public func cancelListen(_ id: UInt64) -> Bool {
        let existed = monitor.locked { valueHandlers.removeValue(forKey: id) != nil }
        if !loop.isCurrent {
            _ = monitor.wait(milliseconds: Int(Int32.max)) { dispatching == id ? nil : true }
        }
        enqueue { node, _ in node.cancelListen(id) }
        return existed
    }

    /// The last sequence this service wrote per key and slot (`writeValue`).
    private var lastSequences: [[UInt8]: UInt64] = [:]

    /// Waits up to `timeout` ms for the routing table to hold a contact; false when it did not (or
    /// the service stopped). A put or get made before the node joined waits here rather than
    /// ending at once with no holder.
    public func waitForContacts(timeout: Int) -> Bool {
        guard mayWait else { return false }
        let end = monotonicMilliseconds() + UInt64(max(0, timeout))
        while true {
            guard let size = routingTableSize else { return false }
            if size > 0 { return true }
            if monotonicMilliseconds() >= end { return false }
            usleep(20_000)
        }
    }

    /// Signs a value as `identity` at `key` (20 bytes) and puts it (§10.2), waiting up to `timeout`
    /// ms in all (for contacts first). Its sequence: this clock's Unix ms, or one more than the last
    /// this service wrote for the key and slot when that is higher; created: the node's Unix time
    /// (with its clock correction, §5.2). Returns the put's result and the sequence, nil when no
    /// contact came, the put did not end in time, or the service stopped. Throws for a value the
    /// node refuses (fields, sizes).
    public func writeValue(as identity: Identity, key: [UInt8], slot: UInt32, data: [UInt8], type: UInt16, lifetime: UInt32,
                           flags: UInt8 = 0, timeout: Int) throws(SignedValueError) -> (result: ValuePutResult, sequence: UInt64)? {
        let started = monotonicMilliseconds()
        guard mayWait, waitForContacts(timeout: timeout), let unix = perform({ node, now in node.unix(now) }) else { return nil }
        let value = try signValue(as: identity, key: key, slot: slot, data: data, type: type, lifetime: lifetime, flags: flags, unix: unix)
        let left = timeout - Int(monotonicMilliseconds() - started)
        guard left > 0, let result = try putValue(value, timeout: left) else { return nil }
        return (result, value.sequence)
    }

    /// The value `writeValue` puts: its sequence is `unix` (ms), or one more than the last this
    /// service wrote for the key and slot when that is higher; created: `unix` in seconds.
    private func signValue(as identity: Identity, key: [UInt8], slot: UInt32, data: [UInt8], type: UInt16, lifetime: UInt32,
                           flags: UInt8, unix: UInt64, sequence reserved: UInt64? = nil) throws(SignedValueError) -> SignedValue {
        let sequence = reserved ?? reserveSequence(key: key, slot: slot, unix: unix)
        var value = SignedValue(key: key, signer: identity.name, slot: slot, sequence: sequence, created: unix / 1000,
                                lifetime: lifetime, type: type, flags: flags, data: data)
        try value.sign(with: identity, now: unix / 1000)
        return value
    }

    /// The sequence of the next value this service writes at `key` in `slot`: `unix` (ms), or one
    /// more than the last when that is higher.
    private func reserveSequence(key: [UInt8], slot: UInt32, unix: UInt64) -> UInt64 {
        let place = key + [UInt8(slot >> 24 & 0xFF), UInt8(slot >> 16 & 0xFF), UInt8(slot >> 8 & 0xFF), UInt8(slot & 0xFF)]
        return monitor.locked { () -> UInt64 in
            let next = max(unix, (lastSequences[place] ?? 0) &+ 1)
            lastSequences[place] = next
            return next
        }
    }

    /// Gets the values at `key` (§10.3) and waits up to `timeout` ms: nil as for `putValue`.
    public func getValues(_ key: NodeID, query: ValueQuery = ValueQuery(), timeout: Int = 30_000) -> ValueGetResult? {
        guard mayWait, let id = perform({ node, now in node.getValues(key, query: query, now: now) }) else { return nil }
        let result = monitor.wait(milliseconds: timeout) { valueGetResults[id] }
        _ = monitor.locked { valueGetResults.removeValue(forKey: id) }
        return result
    }

    // MARK: Asynchronous value operations

    /// How an asynchronous value operation ended (`startValuePut`, `startValueGet`).
    public enum ValueOutcome: Sendable {
        /// The put's result (holders, refusals).
        case put(ValuePutResult)
        /// The get's result.
        case got(ValueGetResult)
        /// The node refused the value before sending it (fields, times, signature).
        case invalid(SignedValueError)
        /// A sealed put's data was not sealed: the reader published no keys, or keys that cannot be
        /// sealed to, or the data is too large (`SealError.noPublishedKeys`, `.refused`; a lookup
        /// that did not end in time ends as `timedOut`, a stop as `stopped`).
        case notSealed(SealError)
        /// The routing table held no contact before the deadline.
        case noContacts
        /// The operation did not end before the deadline.
        case timedOut
        /// The service stopped first.
        case stopped
    }

    /// An operation waiting for a contact, then for its result (loop thread only).
    private final class ValueOperation {
        let id: UInt64
        let deadline: UInt64
        let start: (DHTNode, UInt64) -> Result<LookupID, SignedValueError>
        let finish: @Sendable (ValueOutcome) -> Void
        var lookup: LookupID?
        /// How it ended before it started (a sealed put whose sealing failed): ended at once.
        var failed: ValueOutcome?

        init(id: UInt64, deadline: UInt64, start: @escaping (DHTNode, UInt64) -> Result<LookupID, SignedValueError>,
             finish: @escaping @Sendable (ValueOutcome) -> Void) {
            self.id = id
            self.deadline = deadline
            self.start = start
            self.finish = finish
        }
    }

    /// Starts an operation on the loop thread without waiting for it: once the routing table holds
    /// a contact (within `timeout` ms), `start` starts it; `finish` is called exactly once with how
    /// it ended, on the loop thread (possibly before this returns; on the thread of `stop` when the
    /// loop ended before the service). Returns its id; nil (and `finish` is never called) once stopped.
    private func startOperation(timeout: Int, start: @escaping (DHTNode, UInt64) -> Result<LookupID, SignedValueError>,
                                finish: @escaping @Sendable (ValueOutcome) -> Void) -> UInt64? {
        let deadline = monotonicMilliseconds() + UInt64(max(0, timeout))
        return monitor.locked { () -> UInt64? in
            guard running else { return nil }
            nextOperation += 1
            return queueForLoop(ValueOperation(id: nextOperation, deadline: deadline, start: start, finish: finish))
                ? nextOperation : nil
        }
    }

    /// With the monitor held: queues `operation` for the loop thread (`advanceOperations` takes it)
    /// and wakes it. False once stopped (nothing queued).
    private func queueForLoop(_ operation: ValueOperation) -> Bool {
        guard running else { return false }
        queuedOperations.append(operation)
        alarm?.armNow()
        return true
    }

    /// Starts the operations waiting for a contact when the node has one, and ends those past
    /// their deadline (loop thread).
    private func advanceOperations(_ node: DHTNode, now: UInt64) {
        for operation in monitor.locked({ () -> [ValueOperation] in
            defer { queuedOperations.removeAll() }
            return queuedOperations
        }) {
            operations[operation.id] = operation
        }
        guard !operations.isEmpty else { return }
        var ended: [(ValueOperation, ValueOutcome)] = []
        let hasContacts = node.routingTableSize > 0
        for operation in operations.values.sorted(by: { $0.id < $1.id }) {
            if let failed = operation.failed {
                ended.append((operation, failed))
                continue
            }
            if operation.lookup == nil, hasContacts, now < operation.deadline {
                switch operation.start(node, now) {
                case .success(let lookup):
                    operation.lookup = lookup
                    operationLookups[lookup] = operation.id
                case .failure(let error):
                    ended.append((operation, .invalid(error)))
                }
                continue
            }
            if now >= operation.deadline { ended.append((operation, operation.lookup == nil ? .noContacts : .timedOut)) }
        }
        for (operation, outcome) in ended { end(operation, outcome) }
    }

    private func end(_ operation: ValueOperation, _ outcome: ValueOutcome) {
        operations[operation.id] = nil
        if let lookup = operation.lookup { operationLookups[lookup] = nil }
        operation.finish(outcome)
    }

    /// Puts `value` (§10.2) without waiting: `finish` gets its result (see `startOperation`).
    public func startValuePut(_ value: SignedValue, timeout: Int, finish: @escaping @Sendable (ValueOutcome) -> Void) -> UInt64? {
        startOperation(timeout: timeout, start: { node, now in Result { () throws(SignedValueError) in try node.putValue(value, now: now) } },
                       finish: finish)
    }

    /// Gets the values at `key` (§10.3) without waiting: `finish` gets its result (see `startOperation`).
    public func startValueGet(_ key: NodeID, query: ValueQuery = ValueQuery(), timeout: Int,
                              finish: @escaping @Sendable (ValueOutcome) -> Void) -> UInt64? {
        startOperation(timeout: timeout, start: { node, now in .success(node.getValues(key, query: query, now: now)) }, finish: finish)
    }

    /// Signs a value as `writeValue` does and puts it without waiting: returns the operation's id and
    /// the value's sequence; `finish` gets the result (see `startOperation`). Nil once stopped.
    /// Throws for a value the node refuses (fields, sizes).
    public func startWriteValue(as identity: Identity, key: [UInt8], slot: UInt32, data: [UInt8], type: UInt16, lifetime: UInt32,
                                flags: UInt8 = 0, timeout: Int,
                                finish: @escaping @Sendable (ValueOutcome) -> Void) throws(SignedValueError) -> (id: UInt64, sequence: UInt64)? {
        guard let unix = perform({ node, now in node.unix(now) }) else { return nil }
        let value = try signValue(as: identity, key: key, slot: slot, data: data, type: type, lifetime: lifetime, flags: flags, unix: unix)
        guard let id = startValuePut(value, timeout: timeout, finish: finish) else { return nil }
        return (id, value.sequence)
    }

    /// Seals `plaintext` to `reader` (as `seal`) and puts it as `identity`'s value at `key` in
    /// `slot`, with `SignedValue.sealedFlag`, without waiting: returns the operation's id and the
    /// value's sequence (chosen now, as `startWriteValue` chooses it); `finish` gets the result, as
    /// for `startOperation`, within `timeout` ms in all. Sealing to another identity looks up its
    /// inbox key record first, on a worker thread (at most 4 at once, the rest queued): the lookup
    /// waits for the network. Nil once stopped. Throws `.tooLarge` before anything starts.
    public func startSealedWrite(as identity: Identity, to reader: IdentityName, key: [UInt8], slot: UInt32, data plaintext: [UInt8],
                                 type: UInt16, lifetime: UInt32, timeout: Int,
                                 finish: @escaping @Sendable (ValueOutcome) -> Void) throws(OfflineError) -> (id: UInt64, sequence: UInt64)? {
        guard plaintext.count <= SealedValueData.maximumPlaintext else { throw .tooLarge(plaintext.count) }
        let began = monotonicMilliseconds()
        guard let unix = perform({ node, now in node.unix(now) }) else { return nil }
        let sequence = reserveSequence(key: key, slot: slot, unix: unix)
        let deadline = began + UInt64(max(0, timeout))
        // The value, once sealed and signed: written before the operation is queued, under the
        // monitor the loop thread takes it with (`advanceOperations` then starts the put).
        let signed = ResultBox<SignedValue>()
        let byWorker = reader != identity.name
        let operation = monitor.locked { () -> ValueOperation? in
            guard running else { return nil }
            nextOperation += 1
            let operation = ValueOperation(id: nextOperation, deadline: deadline, start: { node, now in
                guard let value = signed.value else { return .failure(.badSignature) }
                return Result { () throws(SignedValueError) in try node.putValue(value, now: now) }
            }, finish: finish)
            // Known to `stop` from now on: it ends the operation if the worker has not handed it over.
            if byWorker { sealing[operation.id] = operation }
            return operation
        }
        guard let operation else { return nil }
        let sign = { [self] (sealed: [UInt8]) -> ValueOutcome? in
            do throws(SignedValueError) {
                signed.value = try signValue(as: identity, key: key, slot: slot, data: sealed, type: type, lifetime: lifetime,
                                             flags: SignedValue.sealedFlag, unix: unix, sequence: sequence)
                return nil
            } catch {
                return .invalid(error)
            }
        }
        if !byWorker {
            // The writer's own keys: no network (`seal`), sealed and signed here.
            do throws(SealError) {
                operation.failed = sign(try seal(plaintext, to: reader, as: identity, key: key, slot: slot, type: type))
            } catch {
                if case .refused(let cause) = error { throw cause }
                return nil  // stopped
            }
            return monitor.locked { queueForLoop(operation) } ? (operation.id, sequence) : nil
        }
        sealers.run { [self] in
            let left = { Int(deadline) - Int(monotonicMilliseconds()) }
            var outcome: ValueOutcome?
            if !waitForContacts(timeout: max(0, left())) {
                outcome = routingTableSize == nil ? .stopped : .noContacts
            } else {
                do throws(SealError) {
                    let sealed = try seal(plaintext, to: reader, as: identity, key: key, slot: slot, type: type, timeout: max(0, left()))
                    outcome = sign(sealed)
                } catch {
                    switch error {
                    case .timedOut: outcome = .timedOut
                    case .stopped: outcome = .stopped
                    case .noPublishedKeys, .refused: outcome = .notSealed(error)
                    }
                }
            }
            // Sealed after its deadline: timed out, as the blocking form reports it.
            if outcome == nil, monotonicMilliseconds() >= deadline { outcome = .timedOut }
            // To the loop, unless a stop ended it meanwhile (then `finish` was called there).
            monitor.locked {
                guard running, sealing.removeValue(forKey: operation.id) != nil else { return }
                operation.failed = outcome
                _ = queueForLoop(operation)
            }
        }
        return (operation.id, sequence)
    }

    /// Joins through `endpoints`: pings them and looks up the own id, retrying with backoff (0.5, 1,
    /// 2, 4 s) until some node answered. Returns false when none did, nil when the service stopped.
    public func bootstrap(_ endpoints: [Endpoint]) -> Bool? {
        var backoff: UInt32 = 500_000
        for attempt in 0..<5 {
            guard lookup(timeout: 15_000, { node, now in node.bootstrap(endpoints, now: now) }) != nil else { return nil }
            if (routingTableSize ?? 0) > 0 { return true }
            if attempt < 4 {
                usleep(backoff)
                backoff *= 2
            }
        }
        return false
    }

    /// Signs and announces an entry for `identity` at ip:port, and keeps re-announcing it. When
    /// holders already have an entry as new (last_seen counts seconds: a process of this identity
    /// that ended within the same second, at another address), it is signed again a second later
    /// and announced again (up to 3 times), so that the new address replaces the old at once rather
    /// than at the next re-announcement.
    ///
    /// When no holder stored it and holders refused it for its time (status 6), their clocks tell
    /// how far this one is off: the node's clock correction is set to the median offset (up to
    /// ±24 h), the entry is signed again on the corrected clock and announced again; the correction
    /// is kept only if a holder then stores it (§5.2). A result with `stored` 0 and non-empty
    /// `clockOffsets` is a clock that could not be reconciled.
    /// An entry stored nowhere is announced again by the loop after 5 s, doubling up to the
    /// announce interval, until some node stores it.
    public func announce(_ identity: Identity, ip: String, port: UInt16) throws(PeerEntryError) -> LookupResult? {
        let result = try announceCorrectingClock(identity, ip: ip, port: port)
        if let result, result.stored == 0 { _ = perform { _, now in self.retryAnnouncementSoon(now: now) } }
        return result
    }

    private func announceCorrectingClock(_ identity: Identity, ip: String, port: UInt16) throws(PeerEntryError) -> LookupResult? {
        var result = try announceOnce(identity, ip: ip, port: port)
        guard let refused = result, refused.stored == 0, !refused.clockOffsets.isEmpty else { return result }
        let offsets = refused.clockOffsets.sorted()
        let median = offsets[offsets.count / 2]
        logger("warning: \(offsets.count) holders refused \(identity.name)'s entry for its time: this clock is \(-(refused.medianClockOffsetSeconds ?? 0)) s "
               + "off theirs (median)")
        guard median.magnitude <= Self.maximumClockCorrection,
              let previous = perform({ node, _ -> Int64 in
                  defer { node.clockCorrection &+= median }
                  return node.clockCorrection
              }) else { return result }
        result = try announceOnce(identity, ip: ip, port: port)
        if (result?.stored ?? 0) > 0 {
            logger("warning: \(identity.name)'s entry stored on \(result?.stored ?? 0) nodes with last_seen on the network's clock "
                   + "(\((previous &+ median) / 1000) s from this machine's): fix this machine's clock")
        } else {
            _ = perform { node, _ in node.clockCorrection = previous }
        }
        return result
    }

    /// The largest clock correction the holders' times may make (ms): 24 hours.
    public static let maximumClockCorrection: UInt64 = 86_400_000

    private func announceOnce(_ identity: Identity, ip: String, port: UInt16) throws(PeerEntryError) -> LookupResult? {
        guard let now = perform({ node, now in node.unix(now) }) else { return nil }
        var lastSeen = now / 1000
        var result: LookupResult?
        for attempt in 0..<3 {
            var entry = PeerEntry(identity: identity.name, nodeID: credential.id.bytes, ipAddress: ip, port: port,
                                  lastSeen: lastSeen)
            try entry.sign(with: identity, now: now / 1000)
            let signed = entry
            result = lookup { node, now in
                self.owned[identity.name] = (identity, signed)
                return node.announce(signed, now: now)
            }
            _ = perform { _, now in self.record(identity.name, result, now: now) }
            guard let notNewer = result?.notNewer, notNewer > 0, attempt < 2 else { break }
            logger("\(notNewer) holders of \(identity.name)'s entry have one as new: announcing again with last_seen + 1")
            lastSeen += 1
        }
        return result
    }

    /// Announces every owned entry again now and waits for each (not from the loop thread):
    /// what each announce gave (`LookupResult.stored` 0: stored nowhere), by name.
    public func reannounceOwned() -> [IdentityName: LookupResult?] {
        guard mayWait, let entries = perform({ _, _ in self.owned.values.map { $0 } }) else { return [:] }
        var results: [IdentityName: LookupResult?] = [:]
        for (identity, entry) in entries {
            results[identity.name] = (try? announce(identity, ip: entry.ipAddress, port: entry.port)) ?? nil
        }
        return results
    }

    /// The verified entry for `identity` a lookup finds: the freshest of the key most holders
    /// answered with, an entry this node holds counting as one of them (§5.2).
    public func find(_ identity: IdentityName, timeout: Int = 30_000) -> PeerEntry? {
        let key = NodeID.key(of: identity)
        return lookup(timeout: timeout) { node, now in node.findValue(key, now: now) }?.entry
    }

    /// Re-announces every owned entry with a fresh last_seen, and refreshes the buckets.
    public func refresh() {
        _ = perform { node, now in
            self.reannounce(node, now: now)
            node.refresh(now: now)
        }
    }

    /// Refreshes idle buckets (and what else the node does at its periodic refresh), without the
    /// re-announcement (`reannounceOwned`).
    public func refreshBuckets() {
        _ = perform { node, now in node.refresh(now: now) }
    }

    // MARK: Signaling (docs/PROTOCOL.md §5.6)

    /// Sends `payload` to the owner of `identity` through the holders of its entry. Returns the
    /// signal's id and the holders that forwarded it (empty: nobody could), nil when stopped.
    public func signal(_ identity: IdentityName, payload: [UInt8], timeout: Int = 30_000) -> (id: UInt64, holders: [Endpoint])? {
        let box = ResultBox<UInt64>()
        guard let result = lookup(timeout: timeout, { node, now in
            let started = node.signal(NodeID.key(of: identity), payload: payload, now: now)
            box.value = started.signal
            return started.lookup
        }), let id = monitor.locked({ box.value }) else { return nil }
        return (id, result.forwardedBy)
    }

    /// A new conversation with the owner of `identity` through `holders` that forwarded an earlier
    /// one (they hold its entry and gave this node tokens): no lookup. Its id; nil when stopped.
    public func signal(_ identity: IdentityName, payload: [UInt8], through holders: [Endpoint]) -> UInt64? {
        perform { node, now -> UInt64 in
            let id = node.newSignalID()
            node.signal(NodeID.key(of: identity), id: id, payload: payload, through: holders, now: now)
            return id
        }
    }

    /// A further message of conversation `id` through the holders that forwarded its first one.
    public func signal(_ identity: IdentityName, id: UInt64, payload: [UInt8], through holders: [Endpoint]) {
        _ = perform { node, now in node.signal(NodeID.key(of: identity), id: id, payload: payload, through: holders, now: now) }
    }

    /// The next answer to signal `id` (in arrival order), waiting up to `timeout` ms.
    public func nextDelivery(_ id: UInt64, timeout: Int) -> SignalDelivery? {
        guard mayWait else { return nil }
        return monitor.wait(milliseconds: timeout) { () -> SignalDelivery? in
            guard var queue = deliveries[id], !queue.isEmpty else { return nil }
            let first = queue.removeFirst()
            deliveries[id] = queue
            return first
        }
    }

    /// The next signal for one of this node's identities, waiting up to `timeout` ms.
    public func nextSignal(timeout: Int) -> SignalRequest? {
        guard mayWait else { return nil }
        return monitor.wait(milliseconds: timeout) { () -> SignalRequest? in
            incomingSignals.isEmpty ? nil : incomingSignals.removeFirst()
        }
    }

    /// Answers a signal through the holder that forwarded it.
    public func reply(to request: SignalRequest, payload: [UInt8]) {
        _ = perform { node, _ in node.reply(to: request, payload: payload) }
    }

    // MARK: Offline delivery (docs/PROTOCOL.md §8)

    /// The k nodes closest to `key` that answered a lookup.
    public func closest(to key: NodeID, timeout: Int = 30_000) -> [Contact]? {
        lookup(timeout: timeout) { node, now in node.lookup(key, now: now) }?.closest
    }

    /// The answers of one round of mail requests: this node's own (when it keeps inboxes and is one
    /// of the holders, i.e. among `key`'s k closest) and each remote holder's (nil: no answer, or
    /// none yet when the round ended early: those are also in `pending`).
    public struct MailRound: Sendable {
        public var local: MailAnswer?
        public var remote: [Endpoint: MailAnswer?]
        /// The holders whose answer had not come when the round ended early (`mailRound`'s
        /// `untilHalfStored`); their requests stay under way. Empty otherwise.
        public var pending: Set<Endpoint> = []

        /// Every answer, own first.
        public var all: [MailAnswer?] { (local.map { [$0] } ?? []) + Array(remote.values) }

        /// How many answers (own included) say the item is stored (or was held already).
        public var stored: Int { all.filter(Self.isStored).count }

        /// An answer saying the item is stored, or was held already.
        static func isStored(_ answer: MailAnswer?) -> Bool { answer == .status(.stored) || answer == .status(.duplicate) }
    }

    /// Sends each request (and `localRequest` to this node's own inboxes) and waits up to `timeout`
    /// ms for every answer, or, with `untilHalfStored`, until half of the holders asked (this node
    /// included when it is one) answered that they stored the item (or held it): the requests not
    /// answered by then stay under way (their holders store the item all the same) and are listed
    /// in `pending`. Nil when the service stopped.
    public func mailRound(_ requests: [(Contact, MailRequest)], local localRequest: MailRequest?, key: NodeID,
                          holders: [Contact], timeout: Int = 5000, untilHalfStored: Bool = false) -> MailRound? {
        guard mayWait else { return nil }
        let operation = monitor.locked { () -> UInt64 in
            defer { nextMailOperation += 1 }
            mailAnswers[nextMailOperation] = []
            return nextMailOperation
        }
        defer { _ = monitor.locked { mailAnswers.removeValue(forKey: operation) } }
        guard let local = perform({ node, now -> MailAnswer?? in
            for (contact, request) in requests { node.mail(request, to: contact, operation: operation, now: now) }
            guard let localRequest else { return .some(nil) }
            return .some(node.localMail(localRequest, key: key, closest: holders, now: now))
        }) else { return nil }
        let isStored = MailRound.isStored
        let storedHere = isStored(local ?? nil) ? 1 : 0
        let asked = requests.count + ((local ?? nil) == nil ? 0 : 1)
        let enoughStored = untilHalfStored ? (asked + 1) / 2 : nil
        let answers = requests.isEmpty ? [] : monitor.wait(milliseconds: timeout) { () -> [(Endpoint, MailAnswer?)]? in
            guard let got = mailAnswers[operation] else { return running ? nil : [] }
            if got.count >= requests.count || !running { return got }
            if let enoughStored, storedHere + got.filter({ isStored($0.1) }).count >= enoughStored { return got }
            return nil
        } ?? monitor.locked { mailAnswers[operation] ?? [] }
        var remote: [Endpoint: MailAnswer?] = [:]
        for (contact, _) in requests { remote[contact.endpoint] = .some(nil) }
        for (endpoint, answer) in answers { remote[endpoint] = .some(answer) }
        var pending: Set<Endpoint> = []
        if let enoughStored, storedHere + answers.filter({ isStored($0.1) }).count >= enoughStored {
            pending = Set(requests.map(\.0.endpoint)).subtracting(answers.map(\.0))
        }
        return MailRound(local: local ?? nil, remote: remote, pending: pending)
    }

    /// Stores an inbox item on the nodes closest to `key`; returns how many stored it (or held it),
    /// as `putMail(_:key:)` counts.
    public func putMail(_ item: [UInt8], key: NodeID) -> Int? {
        putMail([item], key: key)?.first
    }

    /// Stores several inbox items for one `key`, in order, after one lookup. Each item goes to every
    /// holder; the next one goes once every holder answered, or once half of them (this node
    /// included when it is one) stored it: a holder that answers late still gets and stores each
    /// item (its requests stay under way) but does not delay the sender by its delay for each
    /// (PROTOCOL.md §8.3). A holder seen to leave a request unanswered after its retries (while
    /// the round still waited) is not asked again. Returns for each item how many had stored (or held) it when the next one went: at
    /// least half of the holders, or all that answered.
    public func putMail(_ items: [[UInt8]], key: NodeID) -> [Int]? {
        guard var holders = closest(to: key) else { return nil }
        var counts: [Int] = []
        for item in items {
            guard let round = mailRound(holders.map { ($0, .put(item)) }, local: .put(item), key: key, holders: holders,
                                        untilHalfStored: true) else { return nil }
            counts.append(round.stored)
            holders = holders.filter { round.pending.contains($0.endpoint) || (round.remote[$0.endpoint] ?? nil) != nil }
        }
        return counts
    }

    /// Every item the nodes closest to `key` (this one included) hold for it, each once, in the order
    /// they came (§8.4). Each holder is paged on its own: its next MAIL_FETCH page is asked as soon
    /// as its answer comes, so a holder that answers late delays only its own pages. A holder ends
    /// when it gave all it holds (or `mailPagesPerHolder` pages), answered with nothing or a
    /// refusal, or left a request unanswered after its retries (or `timeout` ms). `deliver` (on the
    /// calling thread) gets the items not given before: once half of the holders that gave items
    /// ended, all so far (holders that answer at once with nothing, e.g. nodes that joined near the
    /// key since, do not count toward that half); then those of each later answer, as it comes; a
    /// holder slower than the rest is still paged to its end, or until `budget` ms after the start:
    /// then the holders not ended are left (what they hold beyond comes at a later fetch, after
    /// the deletions of what was taken), so that a holder answering each page just within its
    /// timeout, with a list that never ends, holds the caller (the inbox thread, its next fetch and
    /// its deletions) that long, not `mailPagesPerHolder` timeouts. `deliver` returning false stops
    /// the fetch (nil is returned). Returns every item when each holder ended or the budget ran
    /// out; nil when the lookup failed or the service stopped.
    public func fetchMail(key: NodeID, timeout: Int = 5000, budget: Int = DHTService.mailFetchBudget,
                          deliver: ([[UInt8]]) -> Bool = { _ in true }) -> [[UInt8]]? {
        let started = monotonicMilliseconds()
        guard let holders = closest(to: key) else { return nil }
        var seen = Set<[UInt8]>()
        var out: [[UInt8]] = []
        var undelivered: [[UInt8]] = []
        func take(_ items: [[UInt8]]) {
            for item in items where seen.insert(item).inserted {
                out.append(item)
                undelivered.append(item)
            }
        }
        // This node's own inboxes: every page at once (no network).
        guard let own = perform({ node, now -> [[UInt8]] in
            var items: [[UInt8]] = []
            for _ in 0..<Self.mailPagesPerHolder {
                guard case .items(let total, let page)? = node.localMail(.fetch(key: key, skip: items.count), key: key,
                                                                          closest: holders, now: now), !page.isEmpty else { break }
                items += page
                if items.count >= total { break }
            }
            return items
        }) else { return nil }
        take(own)
        let operation = monitor.locked { () -> UInt64 in
            defer { nextMailOperation += 1 }
            mailAnswers[nextMailOperation] = []
            return nextMailOperation
        }
        defer { _ = monitor.locked { mailAnswers.removeValue(forKey: operation) } }
        // Per holder: the next item to ask for, the pages asked, and when its request gives up.
        var contacts: [Endpoint: Contact] = [:]
        var offsets: [Endpoint: Int] = [:]
        var pages: [Endpoint: Int] = [:]
        var waiting: [Endpoint: UInt64] = [:]
        func ask(_ endpoints: [Endpoint]) -> Bool {
            let requests = endpoints.compactMap { endpoint in contacts[endpoint].map { ($0, offsets[endpoint] ?? 0) } }
            let limit = monotonicMilliseconds() + UInt64(max(0, timeout))
            for endpoint in endpoints {
                waiting[endpoint] = limit
                pages[endpoint, default: 0] += 1
            }
            return perform { node, now -> Bool in
                for (contact, skip) in requests { node.mail(.fetch(key: key, skip: skip), to: contact, operation: operation, now: now) }
                return true
            } != nil
        }
        for contact in holders where contacts[contact.endpoint] == nil { contacts[contact.endpoint] = contact }
        guard ask(Array(contacts.keys)) else { return nil }
        // Holders that may give items (not yet answered with nothing), and those of them that ended.
        var giving = contacts.count
        var ended = 0
        let end = started + UInt64(max(0, budget))
        while !waiting.isEmpty {
            let soonest = min(waiting.values.min() ?? 0, end)
            // The answers that came (taken out), nil while none; .some(nil) once stopped.
            let came = monitor.wait(milliseconds: Int(soonest - min(soonest, monotonicMilliseconds()))) {
                () -> [(Endpoint, MailAnswer?)]?? in
                guard running else { return .some(nil) }
                guard let answers = mailAnswers[operation], !answers.isEmpty else { return nil }
                mailAnswers[operation] = []
                return .some(answers)
            }
            if case .some(.none) = came { return nil }
            var next: [Endpoint] = []
            for (endpoint, answer) in (came ?? nil) ?? [] where waiting.removeValue(forKey: endpoint) != nil {
                guard case .items(let total, let items)? = answer, !items.isEmpty else {
                    // Nothing (or a refusal, or no answer): a holder that gave no item does not count.
                    if offsets[endpoint] == nil { giving -= 1 } else { ended += 1 }
                    continue
                }
                take(items)
                let offset = (offsets[endpoint] ?? 0) + items.count
                offsets[endpoint] = offset
                if offset < total, (pages[endpoint] ?? 0) < Self.mailPagesPerHolder { next.append(endpoint) } else { ended += 1 }
            }
            let now = monotonicMilliseconds()
            for (endpoint, limit) in waiting where limit <= now || now >= end {
                waiting[endpoint] = nil
                if offsets[endpoint] == nil { giving -= 1 } else { ended += 1 }
            }
            if now >= end { next.removeAll() }
            if !next.isEmpty, !ask(next) { return nil }
            if 2 * ended >= giving || waiting.isEmpty, !undelivered.isEmpty {
                let more = deliver(undelivered)
                undelivered.removeAll()
                if !more { return nil }
            }
        }
        if !undelivered.isEmpty, !deliver(undelivered) { return nil }
        return out
    }

    /// The most MAIL_FETCH pages `fetchMail` asks one holder for (a holder whose `total` never ends
    /// is not paged for ever; what is left comes at the next fetch, after deletions): a page is up to
    /// 32 items in 24,000 bytes, 14,443 on a path of 500-byte datagrams (§8.3).
    static let mailPagesPerHolder = 64

    /// How long `fetchMail` pages holders at most (ms): half the inbox's poll interval (§8.4).
    public static let mailFetchBudget = 30_000

    /// The first page of items each holder of `key` has (the key record comes first), each once.
    public func firstMailPage(key: NodeID) -> [[UInt8]]? {
        guard let holders = closest(to: key),
              let round = mailRound(holders.map { ($0, .fetch(key: key, skip: 0)) }, local: .fetch(key: key, skip: 0),
                                    key: key, holders: holders) else { return nil }
        var seen = Set<[UInt8]>()
        var out: [[UInt8]] = []
        for case .items(_, let items)? in round.all {
            for item in items where seen.insert(item).inserted { out.append(item) }
        }
        return out
    }

    /// What `inboxKeyRecord(of:)` found.
    public enum InboxKeyRecordLookup: Sendable {
        /// The record to seal to.
        case found(InboxKeyRecord)
        /// The holders of the name's inbox answered without a record the name's owner signed.
        case none
        /// The lookup or the holders did not answer in time.
        case timedOut
        /// The service stopped.
        case stopped
    }

    /// The inbox key record (§8.1) to seal to for `name` (offline mail, sealed values), by the
    /// first-come rule holders apply (§5.2, §8.3): of the records naming it that the holders of its
    /// inbox give (one per holder), those signed by the key of its live entry when a lookup finds
    /// one; otherwise those of the key the most holders keep (on a tie, the key of the earliest
    /// record): a holder refuses a second key for a name it keeps, so a squatter's key is kept only
    /// by holders that had none. Of those, the newest. Waits up to `timeout` ms in all (the lookup,
    /// the holders, up to 5 s for the entry). Not from the loop thread (`.stopped`).
    public func inboxKeyRecord(of name: IdentityName, timeout: Int = 30_000) -> InboxKeyRecordLookup {
        let started = monotonicMilliseconds()
        func left() -> Int { max(0, timeout - Int(monotonicMilliseconds() - started)) }
        guard mayWait, let key = NodeID(bytes: Offline.inboxKey(name)) else { return .stopped }
        guard let holders = closest(to: key, timeout: timeout) else { return mayWait ? .timedOut : .stopped }
        guard left() > 0 else { return .timedOut }
        guard let round = mailRound(holders.map { ($0, .fetch(key: key, skip: 0)) }, local: .fetch(key: key, skip: 0), key: key,
                                    holders: holders, timeout: min(5000, left())) else { return .stopped }
        // Each holder lists its record first (§8.3): one vote per holder.
        var records: [InboxKeyRecord] = []
        var votes: [[UInt8]: Int] = [:]
        for case .items(_, let items)? in round.all {
            guard let first = items.first, let record = try? InboxKeyRecord(parsing: first), record.name == name else { continue }
            votes[record.ownerKey, default: 0] += 1
            if !records.contains(record) { records.append(record) }
        }
        guard !records.isEmpty else { return .none }
        let ownerKey: [UInt8]
        if left() > 0, let entry = find(name, timeout: min(5000, left())) {
            ownerKey = entry.publicKey
        } else {
            func earliest(_ key: [UInt8]) -> UInt64 { records.filter { $0.ownerKey == key }.map(\.created).min() ?? .max }
            guard let chosen = votes.max(by: { a, b in
                a.value != b.value ? a.value < b.value : earliest(a.key) != earliest(b.key) ? earliest(a.key) > earliest(b.key)
                    : b.key.lexicographicallyPrecedes(a.key)
            }) else { return .none }
            ownerKey = chosen.key
        }
        guard let record = records.filter({ $0.ownerKey == ownerKey }).max(by: { $0.created < $1.created }) else { return .none }
        return .found(record)
    }

    /// Why `seal` did not seal.
    public enum SealError: Error, Sendable {
        /// The reader has published no inbox key record that can be used (`inboxKeyRecord(of:)`).
        case noPublishedKeys(IdentityName)
        /// Its record was not found in time.
        case timedOut
        /// The service stopped.
        case stopped
        /// Too large, or the reader's keys cannot be sealed to.
        case refused(OfflineError)
    }

    /// `plaintext` sealed to `reader` (§10.6) for the value `writer` writes at `key` in `slot` with
    /// `type`: to the writer's own keys when it is the reader (no network), else to the inbox key
    /// record `inboxKeyRecord(of:)` finds within `timeout` ms. Not from the loop thread.
    public func seal(_ plaintext: [UInt8], to reader: IdentityName, as writer: Identity, key: [UInt8], slot: UInt32,
                     type: UInt16, timeout: Int = 30_000) throws(SealError) -> [UInt8] {
        let signerID = SignedValue.signerID(of: writer.publicKey)
        do {
            guard plaintext.count <= SealedValueData.maximumPlaintext else { throw OfflineError.tooLarge(plaintext.count) }
            if reader == writer.name {
                let keys = try InboxKeys(identity: writer)
                return try SealedValueData.seal(plaintext, x25519: keys.x25519Public, kem: keys.kemPublic, key: key,
                                                signerID: signerID, slot: slot, type: type)
            }
            switch inboxKeyRecord(of: reader, timeout: timeout) {
            case .found(let record):
                return try SealedValueData.seal(plaintext, to: record, key: key, signerID: signerID, slot: slot, type: type)
            case .none: throw SealError.noPublishedKeys(reader)
            case .timedOut: throw SealError.timedOut
            case .stopped: throw SealError.stopped
            }
        } catch let error as SealError {
            throw error
        } catch let error as OfflineError {
            throw .refused(error)
        } catch {
            throw .stopped
        }
    }

    /// Publishes `identity`'s inbox keys (its inbox key record, §8.1, created now on this node's
    /// clock) on the nodes closest to its inbox key, so that others can seal mail and values to it:
    /// how many stored it (or held it), nil once stopped. Holders keep a record 7 days after its
    /// creation and republish it. Returns how many stored it (or held it already) and how many
    /// refused it because they hold a record of the name signed by another key (first come, §8.3);
    /// nil once stopped. Throws when the keys cannot be made from the identity.
    /// Waits up to `timeout` ms in all (nil when the lookup did not end in time).
    public func publishInboxKeys(of identity: Identity, timeout: Int = 30_000) throws(OfflineError) -> (stored: Int, taken: Int)? {
        let started = monotonicMilliseconds()
        guard let key = NodeID(bytes: Offline.inboxKey(identity.name)), let unix = perform({ node, now in node.unix(now) }),
              let holders = closest(to: key, timeout: timeout) else { return nil }
        let record = try InboxKeyRecord(identity: identity, keys: try InboxKeys(identity: identity), created: unix / 1000)
        let left = timeout - Int(monotonicMilliseconds() - started)
        guard left > 0, let round = mailRound(holders.map { ($0, .put(record.bytes)) }, local: .put(record.bytes), key: key,
                                              holders: holders, timeout: min(5000, left))
        else { return nil }
        return (round.stored, round.all.filter { $0 == .status(.taken) }.count)
    }

    /// Sends the owner's signed deletion to the nodes closest to `key`; returns how many took it.
    public func deleteMail(_ request: [UInt8], key: NodeID) -> Int? {
        guard let holders = closest(to: key),
              let round = mailRound(holders.map { ($0, .delete(request)) }, local: .delete(request), key: key, holders: holders) else { return nil }
        return round.all.filter { if case .deleted? = $0 { true } else { false } }.count
    }

    public var statistics: DHTStatistics? { perform { node, _ in node.statistics } }

    /// Tests: from now on only the datagrams `filter` returns true for leave this node (nil: all),
    /// as a firewall rule on the path would let them through.
    public func filterOutgoing(_ filter: (@Sendable (_ datagram: [UInt8], _ to: Endpoint) -> Bool)?) {
        monitor.locked { outgoingFilter = filter }
    }

    /// Tests: from now on each datagram this node sends leaves `delay` ms later (0: at once; nil:
    /// every one at once), as from a holder that answers late.
    public func delayOutgoing(_ delay: (@Sendable (_ datagram: [UInt8], _ to: Endpoint) -> Int)?) {
        monitor.locked { outgoingDelay = delay }
    }

    /// Drops the entry this node holds for `identity` (DHTNode.forget).
    public func forgetEntry(of identity: IdentityName) {
        _ = perform { node, _ in node.forget(NodeID.key(of: identity)) }
    }
    public var routingTableSize: Int? { perform { node, _ in node.routingTableSize } }
    public var storedCount: Int? { perform { node, _ in node.storedCount } }

    // MARK: The loop thread

    private func reannounce(_ node: DHTNode, now: UInt64) {
        nextAnnounce = now + configuration.announceInterval
        for (name, owned) in owned {
            var entry = owned.entry
            let seconds = node.unix(now) / 1000
            entry.lastSeen = max(seconds, owned.entry.lastSeen)  // never behind what `announce` signed
            guard (try? entry.sign(with: owned.identity, now: seconds)) != nil else { continue }
            self.owned[name] = (owned.identity, entry)
            reannouncing[node.announce(entry, now: now)] = name
            if reannouncing.count > 1000 { reannouncing.removeAll() }
        }
    }

    /// The socket is readable: every datagram waiting (up to 1,000) goes to the node, then the node
    /// is serviced.
    private func readable() {
        guard monitor.locked({ running }) else { return }
        var received = 0
        while received < 1000, let (datagram, from) = socket.receive() {
            received += 1
            if let other = otherProtocol, Self.isSTUN(datagram) {
                if let answer = other(datagram, from) { socket.send(answer, to: from) }
                continue
            }
            node.receive(datagram, from: from, now: clock())
        }
        service()
    }

    /// Runs what other threads queued and the timers, sends what the node has to send, hands its
    /// events over, and sets the alarm for the next deadline.
    private func service() {
        guard monitor.locked({ running }) else { return }
        let pending = monitor.locked { () -> [(DHTNode, UInt64) -> Void] in
            defer { commands.removeAll() }
            return commands
        }
        for command in pending { command(node, clock()) }
        let current = clock()
        if let next = node.nextDeadline, next <= current { node.handleTimeout(now: current) }
        advanceOperations(node, now: current)
        if current >= nextAnnounce { reannounce(node, now: current) }
        if current >= lastSave + configuration.node.refreshInterval {
            lastSave = current
            saveInBackground()
        }
        let (filter, delay) = monitor.locked { (outgoingFilter, outgoingDelay) }
        for (to, datagram) in node.takeDatagrams() where filter?(datagram, to) ?? true {
            let hold = delay?(datagram, to) ?? 0
            if hold > 0 { heldBack.append((current + UInt64(hold), to, datagram)) } else { socket.send(datagram, to: to) }
        }
        heldBack.removeAll { held in
            guard held.due <= current else { return false }
            socket.send(held.datagram, to: held.to)
            return true
        }
        var events = node.takeEvents()
        checkReannouncements(events, now: current)
        // Results of asynchronous operations go to their `finish` (below, outside the lock).
        var finished: [(ValueOperation, ValueOutcome)] = []
        events.removeAll { event in
            let (lookup, outcome): (LookupID, ValueOutcome)
            switch event {
            case .valuePut(let id, let result): (lookup, outcome) = (id, .put(result))
            case .valuesGot(let id, let result): (lookup, outcome) = (id, .got(result))
            default: return false
            }
            guard let id = operationLookups[lookup], let operation = operations[id] else { return false }
            finished.append((operation, outcome))
            return true
        }
        monitor.locked {
            for event in events {
                switch event {
                case .lookupFinished(let id, let result): results[id] = result
                case .valuePut(let id, let result): valuePutResults[id] = result
                case .valuesGot(let id, let result): valueGetResults[id] = result
                case .valueChanged, .valueExpired: break  // handed to the handlers below, outside the lock
                case .signalled(let request):
                    // The same signal arrives through several holders at once: keep the first.
                    // A copy a second later is the signaller sending again (its first, or the
                    // answer, was lost): it is passed on.
                    let now = monotonicMilliseconds()
                    recentSignals.removeAll { $0.at + 500 < now }
                    if !recentSignals.contains(where: { $0.request.id == request.id && $0.request.origin == request.origin
                        && $0.request.payload == request.payload }) {
                        incomingSignals.append(request)
                        recentSignals.append((request, now))
                    }
                    if incomingSignals.count > 256 { incomingSignals.removeFirst() }
                    if recentSignals.count > 256 { recentSignals.removeFirst() }
                case .mailAnswered(let operation, let from, let answer):
                    if mailAnswers[operation] != nil { mailAnswers[operation]?.append((from, answer)) }
                case .delivered(let delivery):
                    if deliveries[delivery.id]?.contains(where: { $0.payload == delivery.payload }) != true {
                        deliveries[delivery.id, default: []].append(delivery)
                    }
                    if deliveries.count > 1000 { deliveries.removeAll() }
                }
            }
            if results.count > 1000 { results.removeAll() }
            if valuePutResults.count > 1000 { valuePutResults.removeAll() }
            if valueGetResults.count > 1000 { valueGetResults.removeAll() }
            // Under the lock: a command queued after the take above armed the alarm already, and
            // this must not push its wake-up back.
            if commands.isEmpty, queuedOperations.isEmpty {
                let deadline = min(node.nextDeadline ?? UInt64.max, nextAnnounce, lastSave + configuration.node.refreshInterval,
                                   operations.values.map(\.deadline).min() ?? UInt64.max, heldBack.map(\.due).min() ?? UInt64.max)
                alarm?.arm(at: deadline)
            } else {
                alarm?.armNow()
            }
        }
        if !events.isEmpty { monitor.broadcast() }
        for (operation, outcome) in finished { end(operation, outcome) }
        for event in events {
            let (id, valueEvent): (UInt64, ValueEvent)
            switch event {
            case .valueChanged(let listen, let value): (id, valueEvent) = (listen, .changed(value))
            case .valueExpired(let listen, let value): (id, valueEvent) = (listen, .expired(value))
            default: continue
            }
            // Looked up and marked under the monitor: a cancel from another thread waits for this call.
            guard let handler = monitor.locked({ () -> (@Sendable (UInt64, ValueEvent) -> Void)? in
                let handler = valueHandlers[id]
                if handler != nil { dispatching = id }
                return handler
            }) else { continue }
            handler(id, valueEvent)
            monitor.locked {
                dispatching = nil
                monitor.broadcast()
            }
        }
    }

    /// A periodic re-announcement that no node stored is reported (warning) and tried again soon,
    /// with backoff, rather than at the next period: the identity would drop out of the DHT once
    /// its last stored entry expired.
    private func checkReannouncements(_ events: [DHTEvent], now: UInt64) {
        var failures: [String] = [], successes = 0
        for case .lookupFinished(let id, let result) in events {
            guard let name = reannouncing.removeValue(forKey: id) else { continue }
            record(name, result, now: now)
            if result.stored > 0, !result.nameTaken {
                successes += 1
                continue
            }
            let offsets = result.clockOffsets.sorted()
            let cause = result.nameTaken ? "the name is held by another key on \(result.taken) holders"
                : offsets.isEmpty ? "no holder took it"
                : "refused for its time: this clock is \(-(result.medianClockOffsetSeconds ?? 0)) s off the holders'"
            failures.append("\(name) (\(cause))")
        }
        if failures.isEmpty {
            if successes > 0 { reannounceBackoff = 0 }
            return
        }
        retryAnnouncementSoon(now: now)
        logger("warning: re-announce stored on no node: \(failures.joined(separator: ", ")); again in \(reannounceBackoff / 1000) s")
    }

    /// Counts an announcement of `name` (loop thread); nil: the node stopped.
    private func record(_ name: IdentityName, _ result: LookupResult?, now: UInt64) {
        guard let result else { return }
        var state = announcements[name] ?? AnnouncementState()
        if result.stored > 0 && !result.nameTaken {
            state.holders = result.stored
            state.storedAt = now
            state.failedAttempts = 0
        } else {
            state.failedAttempts += 1
        }
        announcements[name] = state
    }

    /// What became of the announcements of `identity`, an identity this node announced (nil: it
    /// announced none, or the node stopped).
    public func announcement(of identity: IdentityName) -> AnnouncementState? {
        perform { _, now -> AnnouncementState? in
            guard var state = self.announcements[identity] else { return nil }
            state.now = now
            return state
        } ?? nil
    }

    /// The owned entries are announced again after the backoff (loop thread).
    private func retryAnnouncementSoon(now: UInt64) {
        reannounceBackoff = min(max(5_000, reannounceBackoff * 2), configuration.announceInterval)
        nextAnnounce = min(nextAnnounce, now + reannounceBackoff)
        alarm?.armNow()
    }

    /// A STUN message: first two bits zero and either RFC 8489's magic cookie at bytes 4..7 or (an
    /// RFC 3489 request, as libnice's discovery sends) a length field that matches the datagram.
    static func isSTUN(_ datagram: [UInt8]) -> Bool {
        guard datagram.count >= 20, datagram[0] & 0xC0 == 0 else { return false }
        if datagram[4] == 0x21 && datagram[5] == 0x12 && datagram[6] == 0xA4 && datagram[7] == 0x42 { return true }
        return Int(datagram[2]) << 8 | Int(datagram[3]) == datagram.count - 20
    }

    /// The node's credential from `path`, made (work and all) and saved on first use.
    static func loadCredential(_ path: String, difficulty: Int) throws(NetError) -> NodeCredential {
        let magic = Array("DNANODE1".utf8)
        if let bytes = try Files.read(path) {
            guard bytes.count == magic.count + NodeCredential.saltSize, bytes.starts(with: magic),
                  let credential = NodeCredential(salt: Array(bytes.dropFirst(magic.count)), difficulty: difficulty) else {
                throw NetError("\(path) is not a node credential (delete it to make a new node id)", EINVAL)
            }
            return credential
        }
        let credential = NodeCredential.generate(difficulty: difficulty)
        try Files.writeAtomically(path, magic + credential.salt)
        return credential
    }
}

/// Small file helpers for the drivers: private directories, whole-file reads, atomic replacement.
enum Files {
    static func makeDirectory(_ path: String) throws(NetError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw NetError("mkdir \(prefix)") }
            prefix += "/"
        }
    }

    /// The file's bytes, or nil when it does not exist.
    static func read(_ path: String) throws(NetError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw NetError("open \(path)")
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &chunk, chunk.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw NetError("read \(path)")
            }
            if n == 0 { return out }
            out += chunk.prefix(n)
        }
    }

    /// Replaces the file atomically (temporary file, fsync, rename), mode 0600.
    static func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(NetError) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw NetError("open \(temporary)") }
        var written = 0
        while written < bytes.count {
            let n = bytes[written...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                let error = errno
                close(fd)
                throw NetError("write \(temporary)", error)
            }
            written += n
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else { throw NetError("rename \(path)") }
    }
}

/// A value handed from the I/O thread to a waiting caller (guarded by the service's monitor).
package final class ResultBox<T>: @unchecked Sendable {
    package var value: T?
    package var done = false
    package init() {}
}
