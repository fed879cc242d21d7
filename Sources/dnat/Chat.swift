import ArgumentParser
import DNACrypto
import DNADHT
import DNANet
import DNAReliable
import DNATransport
import Glibc

/// `dnat chat`: one identity on the network. With --to it connects to that peer, otherwise it waits
/// for peers to connect. Lines typed on standard input go to every connected peer; messages from
/// peers are printed as "<peer> text". With --send it sends that one message and exits.
struct Chat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chat as an identity: connect to a peer (--to) or wait for peers; stdin lines are sent, messages printed (also those that waited offline).",
        discussion: "Examples: dnat chat --as bob --bootstrap 127.0.0.1:4567 --port 0\n"
            + "          dnat chat --as alice --to bob --bootstrap 127.0.0.1:4567 --send 'hello'\n"
            + "Settings left out come from DNA_HOME, DNA_BOOTSTRAP, DNA_STUN_SERVER, DNA_TURN_* (network_transport.h).")

    @Option(name: .customLong("as"), help: "The identity to act as (its key is made in the data directory on first use).")
    var identity: String
    @Option(help: "The peer to connect to (default: wait for peers).") var to: String?
    @Option(help: "Send this one message to --to (into its inbox in the DHT when it is offline), exit.") var send: String?
    @Option(help: "Nodes to join through, comma-separated host:port (default: $DNA_BOOTSTRAP).") var bootstrap: String?
    @Option(help: "UDP port of this identity's DHT node (0: any).") var port: UInt16 = 0
    @Option(help: "Address to bind (default: every interface).") var bind: String?
    @Option(name: .customLong("data-dir"), help: "Keys and DHT state (default: $DNA_HOME or ~/.dna).") var dataDir: String?
    @Option(name: .customLong("stun-server"), help: "host:port (default: the first bootstrap node).") var stunServer: String?
    @Option(name: .customLong("log-level"), help: "debug, info, warning or error.") var logLevel: String = "warning"

    func validate() throws {
        guard (try? IdentityName(identity)) != nil else { throw ValidationError("--as is not a valid identity name") }
        if let to, (try? IdentityName(to)) == nil { throw ValidationError("--to is not a valid identity name") }
        if send != nil, to == nil { throw ValidationError("--send needs --to") }
        if let bind, Endpoint(host: bind, port: 1) == nil { throw ValidationError("--bind is not an IPv4 or IPv6 address") }
        guard ["debug", "info", "warning", "error"].contains(logLevel) else {
            throw ValidationError("--log-level must be debug, info, warning or error")
        }
    }

    func run() throws {
        let log = Log(level: logLevel)
        var configuration = TransportConfiguration()
        configuration.dataDirectory = dataDir ?? getenv("DNA_HOME").map { String(cString: $0) }
        let nodes = bootstrap ?? getenv("DNA_BOOTSTRAP").map { String(cString: $0) } ?? ""
        configuration.bootstrap = nodes.split(separator: ",").flatMap { resolve(String($0).trimmed) }
        if !nodes.isEmpty, configuration.bootstrap.isEmpty { throw ValidationError("no bootstrap node resolves to an address") }
        configuration.stunServer = stunServer ?? getenv("DNA_STUN_SERVER").map { String(cString: $0) }
        if let turn = getenv("DNA_TURN_SERVER") {
            configuration.turnServer = String(cString: turn)
            configuration.turnUsername = getenv("DNA_TURN_USER").map { String(cString: $0) }
            configuration.turnPassword = getenv("DNA_TURN_PASSWORD").map { String(cString: $0) }
        }
        configuration.bindHost = bind
        configuration.port = port
        let name = try IdentityName(identity)
        let key = try IdentityStore(dataDirectory: configuration.dataDirectory).load(name, create: true)
        let node = try TransportNode(identity: key, configuration: configuration) { log.info($0) }
        defer { node.close() }
        log.info("\(identity) on UDP port \(node.dht.port), key \(key.fingerprint)")
        print("ready: \(identity) on port \(node.dht.port)")
        fflush(nil)

        var names: [Int32: String] = [:]
        if let to {
            let id: Int32
            let peer = try IdentityName(to)
            do throws(TransportNode.Failure) { id = try node.connect(peer) } catch {
                if case .peerOffline = error, let send {
                    // Offline: the message waits in the peer's inbox in the DHT.
                    do { try node.sendOffline(peer, Array(send.utf8)) } catch {
                        print("\(to) is offline and the message could not be stored: \(error)")
                        throw ExitCode(1)
                    }
                    print("\(to) is offline: the message waits in its inbox in the DHT")
                    return
                }
                print("cannot connect to \(to): \(error)")
                throw ExitCode(1)
            }
            names[id] = to
            print("connected to \(to)")
            fflush(nil)
            if let send {
                try node.send(id, Array(send.utf8))
                try node.disconnect(id, linger: 10_000)
                return
            }
        }

        var descriptors = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: node.readinessDescriptor, events: Int16(POLLIN), revents: 0)]
        var input: [UInt8] = []
        var inputOpen = true
        while inputOpen || !names.isEmpty || to == nil {
            descriptors[0].fd = inputOpen ? 0 : -1
            _ = poll(&descriptors, 2, 1000)
            if descriptors[1].revents != 0 {
                while let waiting = try? node.receiveOffline(timeout: 0) {
                    print("<\(waiting.sender), offline> \(String(decoding: waiting.message, as: UTF8.self))")
                }
                while let (id, peer) = try? node.accept(timeout: 0) {
                    names[id] = peer.description
                    print("\(peer) connected")
                }
                for (id, peer) in names {
                    while true {
                        do {
                            let message = try node.receive(id, timeout: 0)
                            print("<\(peer)> \(String(decoding: message.bytes, as: UTF8.self))")
                        } catch {
                            if error == .timeout { break }
                            print("\(peer) left")
                            try? node.disconnect(id, linger: 0)
                            names[id] = nil
                            break
                        }
                    }
                }
                fflush(nil)
            }
            if inputOpen, descriptors[0].revents != 0 {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let count = read(0, &chunk, chunk.count)
                if count <= 0 {
                    inputOpen = false
                    if to != nil {
                        for id in names.keys { try? node.disconnect(id) }
                        names.removeAll()
                    }
                    continue
                }
                input += chunk.prefix(count)
                while let newline = input.firstIndex(of: 10) {
                    let line = Array(input[..<newline])
                    input.removeFirst(newline + 1)
                    for id in names.keys { try? node.send(id, line) }
                }
            }
        }
    }
}

/// `dnat send`: one message to a peer (into its inbox in the DHT when it is offline), then exit.
struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message to a peer (stored in its inbox in the DHT when it is offline).",
        discussion: "Same as dnat chat --as NAME --to PEER --send TEXT. Exit status 1 when the peer cannot be reached and the message could not be stored.")

    @Option(name: .customLong("as"), help: "The identity to send as.") var identity: String
    @Option(help: "The peer.") var to: String
    @Argument(help: "The message.") var text: String
    @Option(help: "Nodes to join through, comma-separated host:port (default: $DNA_BOOTSTRAP).") var bootstrap: String?
    @Option(name: .customLong("data-dir"), help: "Keys and DHT state (default: $DNA_HOME or ~/.dna).") var dataDir: String?
    @Option(help: "Address to bind (default: every interface).") var bind: String?

    func run() throws {
        var chat = try Chat.parse(["--as", identity, "--to", to, "--send", text])
        chat.bootstrap = bootstrap
        chat.dataDir = dataDir
        chat.bind = bind
        try chat.validate()
        try chat.run()
    }
}

/// `dnat listen`: wait for peers and print what they send (and what waited offline).
struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait for peers as an identity; print their messages and those that waited in the inbox.",
        discussion: "Same as dnat chat --as NAME. Runs until interrupted.")

    @Option(name: .customLong("as"), help: "The identity to listen as.") var identity: String
    @Option(help: "Nodes to join through, comma-separated host:port (default: $DNA_BOOTSTRAP).") var bootstrap: String?
    @Option(name: .customLong("data-dir"), help: "Keys and DHT state (default: $DNA_HOME or ~/.dna).") var dataDir: String?
    @Option(help: "Address to bind (default: every interface).") var bind: String?
    @Option(help: "UDP port (0: any).") var port: UInt16 = 0

    func run() throws {
        var chat = try Chat.parse(["--as", identity])
        chat.bootstrap = bootstrap
        chat.dataDir = dataDir
        chat.bind = bind
        chat.port = port
        try chat.validate()
        try chat.run()
    }
}
