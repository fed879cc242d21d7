import ArgumentParser
import DNADHT
import DNANet
import Glibc
import STUNServer

/// `dnat node`: a long-running DHT node, also a STUN server on the same UDP port.
struct Node: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a DHT node (a bootstrap node for others); it also answers STUN Binding requests on its port. It keeps no offline messages.",
        discussion: "SIGINT or SIGTERM saves the state and exits 0; SIGUSR1 prints the statistics.")

    @Option(help: "UDP port (0: any free port).") var port: UInt16 = 4567
    @Option(help: "Address to bind (default: every interface).") var bind: String?
    @Option(help: "Nodes to join through, comma-separated host:port.") var bootstrap: String?
    @Option(name: .customLong("data-dir"), help: "Node id, routing table and entries (default: $DNA_HOME or ~/.dna).")
    var dataDir: String?
    @Option(name: .customLong("log-level"), help: "debug, info, warning or error.") var logLevel: String = "info"
    @Option(name: .customLong("stats-interval"), help: "Seconds between statistics lines (0: only on SIGUSR1).")
    var statsInterval: Int = 60

    func validate() throws {
        guard ["debug", "info", "warning", "error"].contains(logLevel) else {
            throw ValidationError("--log-level must be debug, info, warning or error")
        }
        if let bind, Endpoint(host: bind, port: 1) == nil { throw ValidationError("--bind is not an IPv4 or IPv6 address") }
    }

    func run() throws {
        let log = Log(level: logLevel)
        // The service's thread inherits this mask: the signals are taken here, with sigtimedwait.
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGINT, SIGTERM, SIGUSR1] { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        var configuration = DHTServiceConfiguration()
        configuration.bindHost = bind
        configuration.port = port
        configuration.dataDirectory = dataDir
        configuration.node.storesMail = false  // bootstrap nodes keep no offline messages (seed)
        let service: DHTService
        do {
            service = try DHTService(configuration: configuration) { line in
                if line.hasPrefix("warning: ") { log.warning(String(line.dropFirst(9))) } else { log.info(line) }
            }
        } catch {
            throw ValidationError("cannot start the node: \(error)")
        }
        service.otherProtocol = { request, source in
            let answer = STUNServer.answer(request, from: source)
            if answer != nil { log.debug("STUN Binding from \(source)") }
            return answer
        }
        log.info("listening on UDP port \(service.port) (DHT and STUN)")
        if let bootstrap {
            let endpoints = bootstrap.split(separator: ",").flatMap { resolve(String($0).trimmed) }
            if endpoints.isEmpty { throw ValidationError("no --bootstrap node resolves to an address") }
            switch service.bootstrap(endpoints) {
            case true?: log.info("joined through \(endpoints.map(\.description).joined(separator: ", ")): \(service.routingTableSize ?? 0) contacts")
            case false?: log.warning("no bootstrap node answered; serving alone, retrying at each refresh")
            case nil: return
            }
        }
        func seconds() -> Int { Int(monotonicMilliseconds() / 1000) }
        var nextStats = statsInterval > 0 ? seconds() + statsInterval : Int.max
        var timeout = timespec(tv_sec: 1, tv_nsec: 0)
        while true {
            var info = siginfo_t()
            let signal = sigtimedwait(&signals, &info, &timeout)
            if signal == SIGUSR1 || seconds() >= nextStats {
                log.info(statistics(service))
                if statsInterval > 0 { nextStats = seconds() + statsInterval }
            }
            if signal == SIGINT || signal == SIGTERM {
                log.info("signal \(signal): saving state and stopping")
                log.info(statistics(service))
                service.stop()
                return
            }
        }
    }

    func statistics(_ service: DHTService) -> String {
        guard let s = service.statistics else { return "stopped" }
        return "stats: routing table \(service.routingTableSize ?? 0), entries stored \(service.storedCount ?? 0), "
            + "received \(s.received), sent \(s.sent), requests answered \(s.requestsAnswered), dropped \(s.dropped), "
            + "rate limited \(s.rateLimited), refused entries \(s.refusedEntries), refused contacts \(s.refusedContacts), "
            + "refused pieces \(s.refusedPieces), timeouts \(s.timeouts)"
    }
}

/// Log lines on standard error: time, level, message.
struct Log: Sendable {
    let minimum: Int
    static let levels = ["debug", "info", "warning", "error"]

    init(level: String) { minimum = Self.levels.firstIndex(of: level) ?? 1 }

    func write(_ level: Int, _ message: String) {
        guard level >= minimum else { return }
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        let stamp = String(format4(Int(parts.tm_year) + 1900)) + "-" + two(parts.tm_mon + 1) + "-" + two(parts.tm_mday) + "T"
            + two(parts.tm_hour) + ":" + two(parts.tm_min) + ":" + two(parts.tm_sec) + "Z"
        let line = Array("\(stamp) \(Self.levels[level]) \(message)\n".utf8)
        _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }

    private func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
    private func format4(_ value: Int) -> String { "\(value)" }

    func debug(_ message: String) { write(0, message) }
    func info(_ message: String) { write(1, message) }
    func warning(_ message: String) { write(2, message) }
}

extension String {
    var trimmed: String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}
