import CDNATransport
import DNACrypto
import DNADHT
import DNANet
import Glibc
import STUNServer

// dht_discovery.h: the DHT context.

/// The service behind a dht_context_t handle.
final class CDHT {
    let service: DHTService
    /// False for a transport context's DHT (transport_get_dht): the transport owns the service, and
    /// dht_free leaves it running.
    let owned: Bool
    init(_ service: DHTService, owned: Bool = true) {
        self.service = service
        self.owned = owned
    }
}

/// The service refused the call because it is stopping.
struct Closed: Error {}

@_cdecl("dht_init")
public func dht_init(_ config: UnsafePointer<dht_config_t>?) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("dht_init") {
        var configuration = DHTServiceConfiguration()
        if let config {
            configuration.bindHost = try CArg.optionalString(config.pointee.bind_ip, "bind_ip")
            configuration.port = config.pointee.port
            configuration.dataDirectory = try CArg.optionalString(config.pointee.data_dir, "data_dir")
        }
        if let host = configuration.bindHost, Endpoint(host: host, port: 1) == nil {
            throw InvalidArgument("bind_ip is not an IPv4 or IPv6 address")
        }
        let service: DHTService
        do { service = try DHTService(configuration: configuration, log: logLine) } catch {
            throw IOFailure(description: "\(error)")
        }
        // Every node answers STUN Binding requests on its port, as `dnat node` does: any node can be
        // the bootstrap and STUN server of the transport contexts that join through it.
        service.otherProtocol = { request, source in STUNServer.answer(request, from: source) }
        handle = Handle<CDHT>.make(CDHT(service))
    }
    return handle
}

@_cdecl("dht_bootstrap")
public func dht_bootstrap(_ context: OpaquePointer?, _ nodes: UnsafeMutablePointer<UnsafePointer<CChar>?>?) -> Int32 {
    cCall("dht_bootstrap") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard let nodes else { throw InvalidArgument("nodes is NULL") }
        var endpoints: [Endpoint] = []
        var index = 0
        while let node = nodes[index], index < 1024 {
            guard let text = String(validatingCString: node) else { throw InvalidArgument("a node is not UTF-8") }
            endpoints += resolve(text).filter { $0.isReachable(learnedFrom: nil) }
            index += 1
        }
        guard !endpoints.isEmpty else {
            throw InvalidArgument("no node of the list resolves to an address a node can have (PROTOCOL.md §5.1)")
        }
        guard let joined = service.bootstrap(endpoints) else { throw Closed() }
        guard joined else { throw Unreachable() }
    }
}

@_cdecl("dht_announce")
public func dht_announce(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ ip: UnsafePointer<CChar>?,
                         _ port: UInt16) -> Int32 {
    cCall("dht_announce") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let name = try CArg.identity(identity)
        guard let ip, let address = String(validatingCString: ip), PeerEntry.isAddress(address) else {
            throw InvalidArgument("ip is not an IPv4 or IPv6 address")
        }
        guard port != 0 else { throw InvalidArgument("port is 0") }
        let key = try IdentityStore(dataDirectory: service.dataDirectory).load(name, create: true)
        guard let result = try service.announce(key, ip: address, port: port) else { throw Timeout() }
        if result.nameTaken { throw NameTaken() }
        guard result.stored > 0 else {
            if !result.clockOffsets.isEmpty { throw ClockSkew() }
            throw Unreachable()
        }
    }
}

@_cdecl("dht_find_peer")
public func dht_find_peer(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?,
                          _ ipOut: UnsafeMutablePointer<CChar>?, _ portOut: UnsafeMutablePointer<UInt16>?) -> Int32 {
    cCall("dht_find_peer") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let name = try CArg.identity(identity)
        let ip = try CArg.required(ipOut, "ip_out")
        let port = try CArg.required(portOut, "port_out")
        guard let entry = service.find(name) else { throw NothingQueued() }
        try CArg.copyString(entry.ipAddress, to: ip, 46)
        port.pointee = entry.port
    }
}

@_cdecl("dht_find_peer_entry")
public func dht_find_peer_entry(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?,
                                _ entryOut: UnsafeMutablePointer<dht_peer_entry_t>?) -> Int32 {
    cCall("dht_find_peer_entry") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let name = try CArg.identity(identity)
        let out = try CArg.required(entryOut, "entry_out")
        guard let entry = service.find(name) else { throw NothingQueued() }
        out.pointee = dht_peer_entry_t()
        try PeerEntryLayout.write(entry, into: out)
    }
}

@_cdecl("dht_refresh")
public func dht_refresh(_ context: OpaquePointer?) -> Int32 {
    cCall("dht_refresh") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard service.statistics != nil else { throw Closed() }
        service.refreshBuckets()
        // Each owned entry is announced again and waited for: one stored nowhere is an error.
        for result in service.reannounceOwned().values {
            guard let result else { throw Timeout() }
            if result.nameTaken { throw NameTaken() }
            if result.stored > 0 { continue }
            if !result.clockOffsets.isEmpty { throw ClockSkew() }
            throw Unreachable()
        }
    }
}

@_cdecl("dht_get_port")
public func dht_get_port(_ context: OpaquePointer?) -> Int32 {
    var port: Int32 = 0
    let code = cCall("dht_get_port") { port = Int32(try Handle<CDHT>.borrow(context, "ctx").service.port) }
    return code == 0 ? port : code
}

@_cdecl("dht_get_stats")
public func dht_get_stats(_ context: OpaquePointer?, _ statsOut: UnsafeMutablePointer<dht_stats_t>?) -> Int32 {
    cCall("dht_get_stats") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let out = try CArg.required(statsOut, "stats_out")
        guard let s = service.statistics, let table = service.routingTableSize, let stored = service.storedCount else { throw Closed() }
        out.pointee = dht_stats_t(routing_table_size: UInt64(table), stored_entries: UInt64(stored), received: UInt64(s.received),
                                  sent: UInt64(s.sent), requests_answered: UInt64(s.requestsAnswered), dropped: UInt64(s.dropped),
                                  rate_limited: UInt64(s.rateLimited), refused_entries: UInt64(s.refusedEntries),
                                  timeouts: UInt64(s.timeouts), refused_contacts: UInt64(s.refusedContacts),
                                  refused_pieces: UInt64(s.refusedPieces))
    }
}

@_cdecl("dht_free")
public func dht_free(_ context: OpaquePointer?) {
    guard let context, let object = try? Handle<CDHT>.borrow(context, "ctx"), object.owned else { return }
    Handle<CDHT>.free(context)
    object.service.stop()
}

/// A line from the DHT or the transport: "warning: ..." at warning level (the application should
/// hear of it: an entry stored nowhere, a clock off the network's), the rest at info.
@Sendable func logLine(_ line: String) {
    if line.hasPrefix("warning: ") { logger.warning("\(line.dropFirst(9))") } else { logger.info("\(line)") }
}

struct Unreachable: Error {}
/// Holders refused an announced entry: a live entry of the name has another key (§5.2).
struct NameTaken: Error {}
/// Holders refused an announced entry for its time, and correcting by their clocks did not help (§5.2).
struct ClockSkew: Error {}
struct Timeout: Error {}
struct IOFailure: Error, CustomStringConvertible { var description: String }

extension PeerEntryLayout {
    /// Fills every field of a C entry from a verified entry.
    static func write(_ entry: PeerEntry, into out: UnsafeMutablePointer<dht_peer_entry_t>) throws {
        try writeString(entry.identity.utf8, into: out, at: \.identity)
        try write(entry.nodeID, into: out, at: \.node_id)
        try writeString(Array(entry.ipAddress.utf8), into: out, at: \.ip_address)
        out.pointee.port = entry.port
        out.pointee.last_seen = entry.lastSeen
        try write(entry.publicKey, into: out, at: \.pubkey)
        try write(entry.signature, into: out, at: \.signature)
    }

    static func writeString<T>(_ bytes: [UInt8], into entry: UnsafeMutablePointer<dht_peer_entry_t>,
                               at key: KeyPath<dht_peer_entry_t, T>) throws {
        let target = try field(UnsafePointer(entry), key)
        guard bytes.count < target.count, let base = target.baseAddress else { throw InvalidArgument("field size") }
        UnsafeMutableRawPointer(mutating: base).copyMemory(from: bytes + [0], byteCount: bytes.count + 1)
    }
}
