extension DHTNode {
    /// What survives a restart (docs/PROTOCOL.md §5.4, "Restart"): the routing table's contacts and
    /// the entries held (the node's credential is saved by the driver next to it).
    public struct SavedState: Equatable, Sendable {
        public var contacts: [Contact]
        public var entries: [[UInt8]]

        public init(contacts: [Contact], entries: [[UInt8]]) {
            self.contacts = contacts
            self.entries = entries
        }

        static let magic = Array("DNADHT1\n".utf8)

        /// "DNADHT1\n" | contact count (4) | (id (20) | endpoint (18))* | entry count (4) | (length (2) | entry)*.
        public var bytes: [UInt8] {
            func u32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
            var out = Self.magic + u32(contacts.count)
            for contact in contacts { out += contact.id.bytes + contact.endpoint.wire }
            out += u32(entries.count)
            for entry in entries { out += [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry }
            return out
        }

        public init(bytes: [UInt8]) throws(DHTError) {
            var offset = 0
            func take(_ n: Int) throws(DHTError) -> ArraySlice<UInt8> {
                guard n >= 0, bytes.count - offset >= n else { throw .malformed("saved state truncated") }
                defer { offset += n }
                return bytes[offset..<offset + n]
            }
            func u32() throws(DHTError) -> Int { Int(try take(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }) }
            guard try take(8).elementsEqual(Self.magic) else { throw .malformed("not a saved DHT state") }
            contacts = []
            for _ in 0..<min(try u32(), 100_000) {
                guard let id = NodeID(bytes: try take(20)) else { throw .malformed("contact id") }
                let address = Array(try take(16)), port = try take(2).reduce(UInt16(0)) { $0 << 8 | UInt16($1) }
                guard let endpoint = Endpoint(address: address, port: port) else { throw .malformed("contact endpoint") }
                contacts.append(Contact(id: id, endpoint: endpoint))
            }
            entries = []
            for _ in 0..<min(try u32(), 1_000_000) {
                let length = try take(2).reduce(0) { $0 << 8 | Int($1) }
                entries.append(Array(try take(length)))
            }
            guard offset == bytes.count else { throw .malformed("saved state has trailing bytes") }
        }
    }
}
