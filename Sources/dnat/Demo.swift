import ArgumentParser
import DNACrypto
import DNADHT
import DNANet
import DNATransport
import Glibc
import STUNServer

/// `dnat demo`: the main job on one machine, no outside server: a bootstrap node and two identities
/// that find each other through it, connect (signaling, ICE, handshake) and exchange messages.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a local bootstrap node and two peers (alice, bob) that find each other and exchange messages.",
        discussion: "Exits 0 when every message arrived intact and in order, 1 otherwise.")

    @Option(help: "Messages each way.") var messages: Int = 10
    @Option(help: "Size in bytes of the attachment alice sends on a second stream.") var attachment: Int = 1_000_000
    @Option(help: "Address the three nodes bind (loopback by default: no traffic leaves the machine).")
    var bind: String = "127.0.0.1"
    @Option(name: .customLong("data-dir"), help: "Where the nodes keep their keys (default: a new directory under /tmp, removed at the end).")
    var dataDir: String?
    @Option(name: .customLong("log-level"), help: "debug, info, warning or error.") var logLevel: String = "warning"

    func validate() throws {
        guard (1...100_000).contains(messages) else { throw ValidationError("--messages must be 1...100000") }
        guard (0...(16 << 20)).contains(attachment) else { throw ValidationError("--attachment must be 0...16777216") }
        guard Endpoint(host: bind, port: 1) != nil else { throw ValidationError("--bind is not an IPv4 or IPv6 address") }
        guard ["debug", "info", "warning", "error"].contains(logLevel) else {
            throw ValidationError("--log-level must be debug, info, warning or error")
        }
    }

    func run() throws {
        let log = Log(level: logLevel)
        let root: String
        var temporary = false
        if let dataDir {
            root = dataDir
        } else {
            var template = Array("/tmp/dnat-demo-XXXXXX".utf8CString)
            let made = template.withUnsafeMutableBufferPointer { buffer -> String? in
                guard let base = buffer.baseAddress, let path = mkdtemp(base) else { return nil }
                return String(cString: path)
            }
            guard let made else { throw ValidationError("cannot make a temporary directory") }
            root = made
            temporary = true
        }
        defer { if temporary { removeTree(root) } }
        let started = monotonicMilliseconds()
        func elapsed() -> String { "\(monotonicMilliseconds() - started) ms" }

        var nodeConfiguration = DHTServiceConfiguration()
        nodeConfiguration.bindHost = bind
        nodeConfiguration.dataDirectory = root + "/bootstrap"
        nodeConfiguration.node.storesMail = false  // a bootstrap node keeps no offline messages (seed)
        let bootstrap: DHTService
        do { bootstrap = try DHTService(configuration: nodeConfiguration) { log.debug("bootstrap: \($0)") } } catch {
            throw ValidationError("cannot start the bootstrap node: \(error)")
        }
        defer { bootstrap.stop() }
        bootstrap.otherProtocol = { request, source in STUNServer.answer(request, from: source) }
        guard let seed = Endpoint(host: bind, port: bootstrap.port) else { throw ValidationError("bad bind address") }
        print("[\(elapsed())] bootstrap node on \(seed) (DHT and STUN)")

        var configuration = TransportConfiguration()
        configuration.bindHost = bind
        configuration.bootstrap = [seed]
        func start(_ name: String) throws -> TransportNode {
            configuration.dataDirectory = root + "/" + name
            let identity = try IdentityStore(dataDirectory: configuration.dataDirectory).load(try IdentityName(name), create: true)
            let node = try TransportNode(identity: identity, configuration: configuration) { message in
                // The steps of a connection (lookup, gathering, signal, answer, ICE, handshake) with their times.
                if message.hasPrefix("connected to") { print("  \(name): \(message)") }
                log.info("\(name): \(message)")
            }
            print("[\(elapsed())] \(name) joined, announced \(node.announcedAddress?.description ?? "?"), key \(identity.fingerprint)")
            return node
        }
        let alice = try start("alice")
        defer { alice.close() }
        var bob = try start("bob")
        defer { bob.close() }

        let connectStart = monotonicMilliseconds()
        let toBob = try alice.connect(try IdentityName("bob"))
        let (fromAlice, peer) = try bob.accept(timeout: 10_000)
        print("[\(elapsed())] alice connected to bob in \(monotonicMilliseconds() - connectStart) ms; bob accepted \(peer)")

        let big = (0..<attachment).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
        if attachment > 0 { try alice.send(toBob, big, stream: 1) }
        var failures = 0
        var attachmentSeen = attachment == 0
        // Bob's next message on stream 0; the attachment arrives on stream 1 whenever it is complete.
        func nextText() throws -> [UInt8] {
            while true {
                let got = try bob.receive(fromAlice, timeout: 10_000)
                guard got.stream == 1 else { return got.bytes }
                attachmentSeen = true
                failures += got.bytes == big ? 0 : 1
                print("[\(elapsed())] bob got the \(got.bytes.count)-byte attachment on stream 1 \(got.bytes == big ? "intact" : "CORRUPT")")
            }
        }
        let exchangeStart = monotonicMilliseconds()
        for index in 0..<messages {
            let text = "message \(index + 1) from alice"
            try alice.send(toBob, Array(text.utf8))
            failures += check(try nextText(), text, "bob")
            let reply = "reply \(index + 1) from bob"
            try bob.send(fromAlice, Array(reply.utf8))
            failures += check(try alice.receive(toBob, timeout: 10_000).bytes, reply, "alice")
        }
        if !attachmentSeen {
            let got = try bob.receive(fromAlice, timeout: 30_000)
            let intact = got.stream == 1 && got.bytes == big
            failures += intact ? 0 : 1
            print("[\(elapsed())] bob got the \(got.bytes.count)-byte attachment on stream \(got.stream) \(intact ? "intact" : "CORRUPT")")
        }
        let round = Double(monotonicMilliseconds() - exchangeStart) / Double(messages)
        print("[\(elapsed())] \(messages) messages each way, \(String(format1(round))) ms per round trip")

        // Throughput: 8 messages of 1 MiB on stream 2, timed from the first send to the last delivery.
        let mebibyte = [UInt8](repeating: 0x5A, count: 1 << 20)
        let bulkStart = monotonicMilliseconds()
        for _ in 0..<8 { try alice.send(toBob, mebibyte, stream: 2) }
        var bulk = 0
        while bulk < 8 {
            let got = try bob.receive(fromAlice, timeout: 30_000)
            guard got.stream == 2, got.bytes == mebibyte else {
                failures += 1
                break
            }
            bulk += 1
        }
        let bulkMs = max(1, monotonicMilliseconds() - bulkStart)
        print("[\(elapsed())] throughput: 8 MiB in \(bulkMs) ms, \(format1(8.0 * 1.048576 * 1000 / Double(bulkMs))) MB/s")
        try alice.disconnect(toBob)
        let end = Result { () throws(TransportNode.Failure) in try bob.receive(fromAlice, timeout: 5000) }
        if case .failure(.closed) = end {
            print("[\(elapsed())] alice disconnected; bob saw the connection close")
        } else {
            failures += 1
            print("[\(elapsed())] bob did not see the connection close: \(end)")
        }

        // Offline delivery: bob leaves; alice stores a message for him in the DHT; bob comes back.
        bob.close()
        print("[\(elapsed())] bob went offline")
        let note = "left for you while you were offline"
        try alice.sendOffline(try IdentityName("bob"), Array(note.utf8))
        print("[\(elapsed())] alice stored a sealed, signed message in bob's inbox in the DHT")
        bob = try start("bob")
        let waiting = try bob.receiveOffline(timeout: 10_000)
        print("[\(elapsed())] bob, back online, got an offline message from \(waiting.sender)")
        failures += check(waiting.message, note, "bob")
        if waiting.sender != (try IdentityName("alice")) { failures += 1 }

        if failures > 0 {
            print("demo: FAILED (\(failures) problems)")
            throw ExitCode(1)
        }
        print("demo: ok")
    }

    private func check(_ got: [UInt8], _ expected: String, _ who: String) -> Int {
        let text = String(decoding: got, as: UTF8.self)
        print("  \(who) <- \(text)")
        return got == Array(expected.utf8) ? 0 : 1
    }

    private func format1(_ value: Double) -> String {
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// rm -r for the demo's own temporary directory.
func removeTree(_ path: String) {
    guard let directory = opendir(path) else {
        unlink(path)
        return
    }
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name == "." || name == ".." { continue }
        let child = path + "/" + name
        var info = stat()
        if lstat(child, &info) == 0, info.st_mode & S_IFMT == S_IFDIR { removeTree(child) } else { unlink(child) }
    }
    closedir(directory)
    rmdir(path)
}
