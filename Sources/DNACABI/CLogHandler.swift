import CDNATransport
import Glibc
import Logging

/// The process-wide log destination set by dna_set_log_handler. A read-write lock is held while the
/// handler runs, so that once dna_set_log_handler returns no call of the old handler is in progress.
final class LogSink: @unchecked Sendable {
    static let shared = LogSink()

    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    private var handler: dna_log_fn?
    private var userData: UnsafeMutableRawPointer?
    private var minimumLevel = Logger.Level.critical

    private init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        _ = pthread_rwlock_init(lock, nil)
    }

    func set(_ handler: dna_log_fn?, minimumLevel: Int32, userData: UnsafeMutableRawPointer?) {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        self.handler = handler
        self.userData = userData
        self.minimumLevel = LogSink.level(minimumLevel)
    }

    /// The least severe level worth building a message for (critical when no handler is set).
    var level: Logger.Level {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return handler == nil ? .critical : minimumLevel
    }

    func emit(_ level: Logger.Level, _ text: String) {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        guard let handler, level >= minimumLevel else { return }
        let userData = self.userData
        text.withCString { handler(LogSink.code(level), $0, userData) }
    }

    /// DNA_LOG_* (clamped) to swift-log's level.
    static func level(_ code: Int32) -> Logger.Level {
        let all = Logger.Level.allCases
        return all[Int(min(max(code, 0), Int32(all.count - 1)))]
    }

    /// swift-log's level to DNA_LOG_*.
    static func code(_ level: Logger.Level) -> Int32 {
        Int32(Logger.Level.allCases.firstIndex(of: level) ?? Int(DNA_LOG_CRITICAL))
    }
}

/// A swift-log handler that forwards to the C log handler.
struct CLogHandler: LogHandler {
    let label: String
    var metadata: Logger.Metadata = [:]

    init(label: String) { self.label = label }

    var logLevel: Logger.Level {
        get { LogSink.shared.level }
        set {}  // the C handler's min_level is the one setting
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var text = "[\(label)] \(event.message)"
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in all.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        LogSink.shared.emit(event.level, text)
    }
}
