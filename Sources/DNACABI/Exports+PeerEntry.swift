import CDNATransport
import DNACrypto
import Glibc

// dht_discovery.h: signed peer entries.

@_cdecl("dht_peer_entry_signed_max")
public func dht_peer_entry_signed_max() -> Int {
    Int(DHT_PEER_ENTRY_SIGNED_MAX)
}

@_cdecl("dht_peer_entry_sign")
public func dht_peer_entry_sign(_ entry: UnsafeMutablePointer<dht_peer_entry_t>?,
                                _ dataDir: UnsafePointer<CChar>?) -> Int32 {
    cCall("dht_peer_entry_sign") {
        let target = try CArg.required(entry, "entry")
        var value = try PeerEntry(UnsafePointer(target))
        let store = IdentityStore(dataDirectory: try CArg.optionalString(dataDir, "data_dir"))
        let identity = try store.load(value.identity, create: true)
        try value.sign(with: identity, now: unixTime())
        try PeerEntryLayout.write(value.publicKey, into: target, at: \.pubkey)
        try PeerEntryLayout.write(value.signature, into: target, at: \.signature)
    }
}

@_cdecl("dht_peer_entry_verify")
public func dht_peer_entry_verify(_ entry: UnsafePointer<dht_peer_entry_t>?) -> Int32 {
    cCall("dht_peer_entry_verify") {
        guard let entry else { throw InvalidArgument("entry is NULL") }
        try PeerEntry(entry).verify(now: unixTime())
    }
}

@_cdecl("dht_peer_entry_signed_bytes")
public func dht_peer_entry_signed_bytes(_ entry: UnsafePointer<dht_peer_entry_t>?, _ out: UnsafeMutablePointer<UInt8>?,
                                        _ outCapacity: Int, _ lengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dht_peer_entry_signed_bytes") {
        guard let entry else { throw InvalidArgument("entry is NULL") }
        try CArg.copy(try PeerEntry(entry).signedBytes, to: out, outCapacity, lengthOut)
    }
}

/// Seconds since the Unix epoch, from this machine's clock.
func unixTime() -> UInt64 {
    UInt64(max(0, time(nil)))
}

/// Reads and writes the fixed arrays of dht_peer_entry_t by their offsets in the C layout.
enum PeerEntryLayout {
    static func field<T>(_ entry: UnsafePointer<dht_peer_entry_t>, _ key: KeyPath<dht_peer_entry_t, T>) throws -> UnsafeRawBufferPointer {
        guard let offset = MemoryLayout<dht_peer_entry_t>.offset(of: key) else { throw InvalidArgument("layout") }
        return UnsafeRawBufferPointer(start: UnsafeRawPointer(entry) + offset, count: MemoryLayout<T>.size)
    }

    static func write<T>(_ bytes: [UInt8], into entry: UnsafeMutablePointer<dht_peer_entry_t>,
                         at key: KeyPath<dht_peer_entry_t, T>) throws {
        let target = try field(UnsafePointer(entry), key)
        guard bytes.count == target.count, let base = target.baseAddress else { throw InvalidArgument("field size") }
        UnsafeMutableRawPointer(mutating: base).copyMemory(from: bytes, byteCount: bytes.count)
    }

    /// The bytes of a NUL-terminated string field, or nil when it has no NUL.
    static func string<T>(_ entry: UnsafePointer<dht_peer_entry_t>, _ key: KeyPath<dht_peer_entry_t, T>) throws -> [UInt8]? {
        let bytes = try field(entry, key)
        guard let end = bytes.firstIndex(of: 0) else { return nil }
        return Array(bytes[..<end])
    }
}

extension PeerEntry {
    /// The entry in a C struct; malformed strings are PeerEntryError (DNA_ERR_BAD_ENTRY).
    init(_ entry: UnsafePointer<dht_peer_entry_t>) throws {
        guard let name = try PeerEntryLayout.string(entry, \.identity) else {
            throw PeerEntryError.invalidIdentity(.invalidName("identity is not NUL-terminated"))
        }
        let identity: IdentityName
        do { identity = try IdentityName(utf8: name) } catch { throw PeerEntryError.invalidIdentity(error) }
        guard let address = try PeerEntryLayout.string(entry, \.ip_address),
              let text = String(validating: address, as: UTF8.self) else {
            throw PeerEntryError.invalidAddress("ip_address is not a NUL-terminated string")
        }
        self.init(identity: identity,
                  nodeID: Array(try PeerEntryLayout.field(entry, \.node_id)),
                  ipAddress: text,
                  port: entry.pointee.port,
                  lastSeen: entry.pointee.last_seen,
                  publicKey: Array(try PeerEntryLayout.field(entry, \.pubkey)),
                  signature: Array(try PeerEntryLayout.field(entry, \.signature)))
    }
}
