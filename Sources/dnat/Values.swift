import ArgumentParser
import DNACrypto
import DNADHT
import DNANet
import DNAWire
import Glibc

/// What `dnat put` and `dnat get` share: a DHT node of their own, joined through the bootstrap nodes.
struct ValueNode: ParsableArguments {
    @Option(help: "Nodes to join through, comma-separated host:port (default: $DNA_BOOTSTRAP).") var bootstrap: String?
    @Option(name: .customLong("data-dir"), help: "Keys and DHT state (default: $DNA_HOME or ~/.dna).") var dataDir: String?
    @Option(help: "Address to bind (default: every interface).") var bind: String?
    @Flag(help: "KEY is 40 hex digits (the 20 key bytes), not key text.") var hex = false
    @Option(help: "Seconds to wait for the network.") var timeout: Int = 30

    var directory: String? { dataDir ?? getenv("DNA_HOME").map { String(cString: $0) } }

    /// The key: SHA-256 of the text, truncated to 20 bytes (dht_value_key), or the hex bytes.
    func key(_ text: String) throws -> [UInt8] {
        guard hex else { return Array(Sodium.sha256(Array(text.utf8)).prefix(20)) }
        let digits = Array(text.utf8).map { byte -> UInt8? in
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        guard digits.count == 40, !digits.contains(nil) else { throw ValidationError("--hex: KEY must be 40 hex digits") }
        let values = digits.compactMap { $0 }
        return stride(from: 0, to: 40, by: 2).map { values[$0] << 4 | values[$0 + 1] }
    }

    /// A started node that joined the network (or a validation error saying why not).
    func start() throws -> DHTService {
        var configuration = DHTServiceConfiguration()
        configuration.bindHost = bind
        configuration.dataDirectory = directory
        let nodes = bootstrap ?? getenv("DNA_BOOTSTRAP").map { String(cString: $0) } ?? ""
        let endpoints = nodes.split(separator: ",").flatMap { resolve(String($0).trimmed) }
        if endpoints.isEmpty { throw ValidationError("no bootstrap node: give --bootstrap host:port or set DNA_BOOTSTRAP") }
        let service: DHTService
        do { service = try DHTService(configuration: configuration) { _ in } } catch {
            throw ValidationError("cannot start a DHT node: \(error)")
        }
        guard service.bootstrap(endpoints) == true else {
            service.stop()
            throw ValidationError("no bootstrap node answered (\(nodes))")
        }
        return service
    }
}

/// `dnat put`: sign a value and store it at a key.
struct Put: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Sign a value as an identity and store it at a key in the DHT (docs/PROTOCOL.md §10).",
        discussion: "Example: dnat put group:friends 'hello' --as alice --bootstrap 127.0.0.1:4567\n"
            + "The value replaces this identity's earlier value of the slot at the key. Exit status 1 when no node stored it.")

    @Argument(help: "The key text (or, with --hex, the 20 key bytes in hex).") var key: String
    @Argument(help: "The value (UTF-8 text; '-' reads the bytes from standard input).") var value: String
    @Option(name: .customLong("as"), help: "The identity that signs it.") var identity: String
    @Option(help: "The slot (one value per identity and slot at a key).") var slot: UInt32 = 0
    @Option(help: "Lifetime in seconds (at most 30 days).") var ttl: UInt32 = 86_400
    @Option(help: "The application's type number.") var type: UInt16 = 0
    @Flag(help: "Delete the slot instead (a tombstone kept --ttl seconds); VALUE is ignored.") var delete = false
    @Option(help: "Seal the value so that only this identity can read it (its published keys: dnat publish-keys; the --as identity itself needs none).")
    var to: String?
    @OptionGroup var node: ValueNode

    func run() throws {
        let name: IdentityName
        do { name = try IdentityName(identity) } catch { throw ValidationError("--as: \(error)") }
        let key = try node.key(self.key)
        var data = Array(value.utf8)
        if value == "-", !delete { data = readStandardInput() }
        if delete { data = [] }
        let reader: IdentityName?
        do { reader = try to.map { try IdentityName($0) } } catch { throw ValidationError("--to: \(error)") }
        if reader != nil, delete { throw ValidationError("--to and --delete: a deletion is not sealed") }
        let limit = reader == nil ? SignedValue.maximumDataSize : SealedValueData.maximumPlaintext
        guard data.count <= limit else { throw ValidationError("the value is over \(limit) bytes") }
        let signer = try IdentityStore(dataDirectory: node.directory).load(name, create: true)
        let service = try node.start()
        defer { service.stop() }
        if let reader {
            do { data = try service.seal(data, to: reader, as: signer, key: key, slot: slot, type: type, timeout: node.timeout * 1000) } catch {
                switch error {
                case .noPublishedKeys: print("\(reader) has published no keys to seal to (dnat publish-keys --as \(reader))")
                case .timedOut: print("\(reader)'s keys were not found within \(node.timeout) s")
                case .stopped: print("the node stopped")
                case .refused(let cause): print("cannot seal to \(reader): \(cause)")
                }
                throw ExitCode.failure
            }
        }
        let written: (result: ValuePutResult, sequence: UInt64)?
        do {
            written = try service.writeValue(as: signer, key: key, slot: slot, data: data, type: type, lifetime: ttl,
                                             flags: delete ? SignedValue.tombstoneFlag : reader != nil ? SignedValue.sealedFlag : 0,
                                             timeout: node.timeout * 1000)
        } catch { throw ValidationError("the value is refused: \(error)") }
        guard let written else {
            print("no answer within \(node.timeout) s")
            throw ExitCode.failure
        }
        let result = written.result
        print("\(delete ? "deleted" : reader != nil ? "sealed and stored" : "stored") at \(Hex.encode(key)) slot \(slot) sequence \(written.sequence): "
              + "\(result.stored) holders" + (result.superseded > 0 ? ", \(result.superseded) hold a newer value" : ""))
        if result.holders.isEmpty { throw ExitCode.failure }
    }

    private func readStandardInput() -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while bytes.count <= SignedValue.maximumDataSize {
            let count = read(0, &buffer, buffer.count)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return bytes
    }
}

/// `dnat get`: the values at a key.
struct Get: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the values stored at a key in the DHT: the freshest verified one per identity and slot.",
        discussion: "Each line: signer, slot, sequence, type, created (Unix s), lifetime (s), then the value "
            + "(text, or hex: when it is not UTF-8), or 'deleted'. A sealed value shows as 'sealed:' and its plaintext "
            + "when it opens for the --as identity, else as 'sealed (N bytes)'. Exit status 1 when the network did not answer.")

    @Argument(help: "The key text (or, with --hex, the 20 key bytes in hex).") var key: String
    @Option(help: "Only values with a sequence above this.") var since: UInt64 = 0
    @Option(name: .customLong("as"), help: "Open the values sealed to this identity (its key in --data-dir).") var identity: String?
    @OptionGroup var node: ValueNode

    func run() throws {
        let key = try node.key(self.key)
        let reader = try Self.reader(identity, node)
        let service = try node.start()
        defer { service.stop() }
        guard let nodeKey = NodeID(bytes: key), let result = service.getValues(nodeKey, query: ValueQuery(since: since),
                                                                               timeout: node.timeout * 1000) else {
            print("no answer within \(node.timeout) s")
            throw ExitCode.failure
        }
        for value in result.values { print(Self.line(value, reader: reader)) }
    }

    /// The inbox keys of the --as identity, which open the values sealed to it.
    static func reader(_ identity: String?, _ node: ValueNode) throws -> InboxKeys? {
        guard let identity else { return nil }
        let name: IdentityName
        do { name = try IdentityName(identity) } catch { throw ValidationError("--as: \(error)") }
        do { return try InboxKeys(identity: try IdentityStore(dataDirectory: node.directory).load(name, create: false)) } catch {
            throw ValidationError("--as \(name): \(error)")
        }
    }

    /// signer, slot, sequence, type, created, lifetime, then the value: text, "hex:..." when it is not
    /// one line of UTF-8, or "deleted"; a sealed value "sealed:" and its plaintext shown so when it
    /// opens with `reader`, else "sealed (N bytes)".
    static func line(_ value: SignedValue, reader: InboxKeys? = nil) -> String {
        let shown: String
        if value.isTombstone {
            shown = "deleted"
        } else if value.isSealed {
            if let reader, let plaintext = try? value.open(with: reader) {
                shown = "sealed:" + Self.shown(plaintext)
            } else {
                shown = "sealed (\(value.data.count) bytes)"
            }
        } else {
            shown = Self.shown(value.data)
        }
        return "\(value.signer) \(value.slot) \(value.sequence) \(value.type) \(value.created) \(value.lifetime) \(shown)"
    }

    /// Bytes as text when they are one line of UTF-8, else "hex:" and their hex digits.
    static func shown(_ bytes: [UInt8]) -> String {
        if let text = String(validating: bytes, as: UTF8.self), !text.contains(where: { $0.isNewline }) { return text }
        return "hex:" + Hex.encode(bytes)
    }
}

/// `dnat watch`: print each value pushed at a key as it arrives.
struct Watch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Listen to a key in the DHT: print its values, then each one stored or replaced there as the holders push it.",
        discussion: "Lines as dnat get prints them, after 'changed' or 'expired'. Runs until interrupted (SIGINT, SIGTERM).")

    @Argument(help: "The key text (or, with --hex, the 20 key bytes in hex).") var key: String
    @Option(help: "Only values with a sequence above this.") var since: UInt64 = 0
    @Option(name: .customLong("as"), help: "Open the values sealed to this identity (its key in --data-dir).") var identity: String?
    @OptionGroup var node: ValueNode

    func run() throws {
        let key = try node.key(self.key)
        let reader = try Get.reader(identity, node)
        var signals = sigset_t()
        sigemptyset(&signals)
        for signal in [SIGINT, SIGTERM] { sigaddset(&signals, signal) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let service = try node.start()
        defer { service.stop() }
        guard let nodeKey = NodeID(bytes: key),
              service.listen(nodeKey, query: ValueQuery(since: since), handler: { _, event in
                  switch event {
                  case .changed(let value): print("changed " + Get.line(value, reader: reader))
                  case .expired(let value): print("expired " + Get.line(value, reader: reader))
                  }
                  fflush(nil)
              }) != nil else { throw ExitCode.failure }
        var info = siginfo_t()
        _ = sigwaitinfo(&signals, &info)
    }
}

/// `dnat publish-keys`: publish an identity's inbox keys, so that others can seal values to it.
struct PublishKeys: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish-keys",
        abstract: "Publish an identity's inbox keys in the DHT, so that others can seal values (dnat put --to) and offline mail to it.",
        discussion: "Holders keep them 7 days: publish again within that (a transport, such as dnat listen or dnat chat, "
            + "publishes its own every 5 minutes). Exit status 1 when no node stored them.")

    @Option(name: .customLong("as"), help: "The identity whose keys are published (its key in --data-dir, made on first use).")
    var identity: String
    @OptionGroup var node: ValueNode

    func run() throws {
        let name: IdentityName
        do { name = try IdentityName(identity) } catch { throw ValidationError("--as: \(error)") }
        let owner = try IdentityStore(dataDirectory: node.directory).load(name, create: true)
        let service = try node.start()
        defer { service.stop() }
        let published: (stored: Int, taken: Int)?
        do { published = try service.publishInboxKeys(of: owner, timeout: node.timeout * 1000) } catch { throw ValidationError("the keys: \(error)") }
        let (stored, taken) = published ?? (0, 0)
        print("\(name)'s inbox keys stored on \(stored) nodes"
              + (taken > 0 ? "; \(taken) hold \(name)'s keys signed by another key (the name is taken)" : ""))
        if stored == 0 || taken > stored { throw ExitCode.failure }
    }
}
