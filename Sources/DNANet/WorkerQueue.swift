import Glibc

/// Work that waits for the network through the blocking calls of a service, kept off the threads
/// that must not wait (the loop thread, an application's thread calling an asynchronous form): jobs
/// start in the order queued, on at most `limit` threads; a thread starts when a job comes and
/// fewer than `limit` run, and ends once the queue is empty. A job that cannot get a thread
/// (pthread_create failed with none running) runs on the caller's thread.
final class WorkerQueue: @unchecked Sendable {
    private let limit: Int
    private let monitor = Monitor()
    private var jobs: [() -> Void] = []
    private var head = 0
    private var threads = 0

    init(limit: Int) { self.limit = max(1, limit) }

    /// Queues `job`.
    func run(_ job: @escaping () -> Void) {
        let start = monitor.locked { () -> Bool in
            jobs.append(job)
            guard threads < limit else { return false }
            threads += 1
            return true
        }
        guard start else { return }
        let box = Unmanaged.passRetained(Box(self))
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Box>.fromOpaque(argument).takeRetainedValue().queue.work()
            return nil
        }, box.toOpaque())
        if started == 0 {
            pthread_detach(thread)
            return
        }
        box.release()
        // No thread: when none runs the queue the caller does (keeping the count `work` ends).
        let alone = monitor.locked { () -> Bool in
            guard threads > 1 else { return true }
            threads -= 1
            return false
        }
        if alone { work() }
    }

    /// A thread's life: jobs until none is left (a job queued while it finishes one is taken too).
    private func work() {
        while true {
            let job = monitor.locked { () -> (() -> Void)? in
                guard head < jobs.count else {
                    threads -= 1
                    jobs.removeAll()
                    head = 0
                    return nil
                }
                defer {
                    jobs[head] = {}  // released once taken
                    head += 1
                }
                return jobs[head]
            }
            guard let job else { return }
            job()
        }
    }

    private final class Box {
        let queue: WorkerQueue
        init(_ queue: WorkerQueue) { self.queue = queue }
    }
}
