import CNice
import Glibc

/// One thread running a private GLib main context: libnice does all its work, and calls back, there.
/// Other threads hand it closures with `post` or `sync`.
public final class GLibLoop: @unchecked Sendable {
    public let context: OpaquePointer
    private let loop: OpaquePointer
    private var thread = pthread_t()
    private let monitor = Monitor()
    private var running = false
    private var holds = 0

    public init() throws(NetError) {
        guard let context = g_main_context_new() else { throw NetError("g_main_context_new", ENOMEM) }
        guard let loop = g_main_loop_new(context, 0) else {
            g_main_context_unref(context)
            throw NetError("g_main_loop_new", ENOMEM)
        }
        self.context = context
        self.loop = loop
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let me = Unmanaged<GLibLoop>.fromOpaque(argument).takeUnretainedValue()
            g_main_context_push_thread_default(me.context)
            g_main_loop_run(me.loop)
            g_main_context_pop_thread_default(me.context)
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        guard started == 0 else {
            g_main_loop_unref(loop)
            g_main_context_unref(context)
            throw NetError("pthread_create", started)
        }
        monitor.locked { running = true }
    }

    deinit {
        stop()
        g_main_loop_unref(loop)
        g_main_context_unref(context)
    }

    /// True on the loop's own thread.
    public var isCurrent: Bool { monitor.locked { running } && pthread_equal(pthread_self(), thread) != 0 }

    /// Runs `work` on the loop thread, later.
    public func post(_ work: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Work(work)).toOpaque()
        dna_main_context_post(context, { data in
            guard let data else { return 0 }
            Unmanaged<Work>.fromOpaque(data).takeRetainedValue().run()
            return 0  // G_SOURCE_REMOVE
        }, box)
    }

    /// Runs `work` on the loop thread and waits for its result (inline when already on it); nil when
    /// the loop stopped before it ran (a call racing with the context's free).
    @discardableResult
    public func sync<T>(_ work: @escaping () -> T) -> T? {
        if isCurrent { return work() }
        guard monitor.locked({ running }) else { return nil }
        let box = ResultBox<T>()
        // The closure goes before the caller is woken: `work` may hold an object whose deinit called
        // this (close from deinit), and must not release it after that deinit returned (a reference
        // released after the object was freed, or "deallocated with non-zero retain count").
        let job = Job(work)
        post {
            let value = job.run()
            self.monitor.locked {
                box.value = value
                box.done = true
            }
            self.monitor.broadcast()
        }
        while true {
            let outcome = monitor.wait(milliseconds: 100) { () -> T?? in
                if box.done { return .some(box.value) }
                return running ? nil : .some(nil)
            }
            if let outcome {
                // Stopped before it ran: the thread is gone (joined), so the closure goes here.
                if !box.done { job.discard() }
                return outcome
            }
        }
    }

    /// Work in progress on the loop that must finish before the loop stops (an ICE agent's close
    /// waiting for its TURN deallocations): `hold` when it starts, `release` when it is done (any
    /// thread); `drain` waits for them.
    public func hold() { monitor.locked { holds += 1 } }

    public func release() {
        monitor.locked { holds -= 1 }
        monitor.broadcast()
    }

    /// Waits up to `milliseconds` until nothing holds the loop (`hold`); true when nothing does.
    /// Not from the loop thread.
    @discardableResult
    public func drain(milliseconds: Int) -> Bool {
        guard !isCurrent else { return monitor.locked { holds == 0 } }
        return monitor.wait(milliseconds: milliseconds) { holds <= 0 || !running ? true : nil } ?? false
    }

    /// Quits the loop and joins its thread. Idempotent; not from the loop thread.
    public func stop() {
        guard monitor.locked({ running }), !isCurrent else { return }
        g_main_loop_quit(loop)
        g_main_context_wakeup(context)
        pthread_join(thread, nil)
        monitor.locked { running = false }
        monitor.broadcast()
    }

    /// A closure run once and released right after it ran.
    private final class Job<T>: @unchecked Sendable {
        private var work: (() -> T)?
        init(_ work: @escaping () -> T) { self.work = work }
        func run() -> T? {
            let value = work?()
            work = nil
            return value
        }
        func discard() { work = nil }
    }

    private final class Work {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}
