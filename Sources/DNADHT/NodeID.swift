import DNACrypto

/// A 160-bit Kademlia id (node ids and keys), compared by XOR distance.
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let size = 20
    // Big-endian words: comparing (high, middle, low) in order compares the ids as numbers.
    var high: UInt64
    var middle: UInt64
    var low: UInt32

    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == Self.size else { return nil }
        let array = Array(bytes)
        high = array[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        middle = array[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
        low = array[16..<20].reduce(0) { $0 << 8 | UInt32($1) }
    }

    init(high: UInt64, middle: UInt64, low: UInt32) {
        self.high = high
        self.middle = middle
        self.low = low
    }

    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: middle >> (56 - 8 * UInt64($0))) }
            + (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * UInt32($0))) }
    }

    /// The key of an identity: SHA-256 of its name, truncated to 160 bits (seed).
    public static func key(of identity: IdentityName) -> NodeID {
        NodeID(bytes: identity.dhtKey) ?? NodeID(high: 0, middle: 0, low: 0)
    }

    public static func ^ (a: NodeID, b: NodeID) -> NodeID {
        NodeID(high: a.high ^ b.high, middle: a.middle ^ b.middle, low: a.low ^ b.low)
    }

    public static func < (a: NodeID, b: NodeID) -> Bool {
        (a.high, a.middle, a.low) < (b.high, b.middle, b.low)
    }

    /// Number of leading zero bits (160 for zero).
    public var leadingZeroBits: Int {
        if high != 0 { return high.leadingZeroBitCount }
        if middle != 0 { return 64 + middle.leadingZeroBitCount }
        return 128 + (low == 0 ? 32 : low.leadingZeroBitCount)
    }

    /// Bits this id shares with `other` from the top.
    public func commonPrefix(with other: NodeID) -> Int { (self ^ other).leadingZeroBits }

    /// This id with bit `bit` (0 = the most significant, 159 the least) inverted: the ids that share
    /// exactly `bit` leading bits with this one are the ones nearest it (Kademlia's bucket `bit`).
    func flipping(bit: Int) -> NodeID {
        guard (0..<160).contains(bit) else { return self }
        if bit < 64 { return NodeID(high: high ^ (1 << UInt64(63 - bit)), middle: middle, low: low) }
        if bit < 128 { return NodeID(high: high, middle: middle ^ (1 << UInt64(127 - bit)), low: low) }
        return NodeID(high: high, middle: middle, low: low ^ (1 << UInt32(159 - bit)))
    }

    public var description: String { Hex.encode(bytes) }
}

/// A node's id and the proof that it was not chosen: id = the first 160 bits of SHA-256("dna-node-id" |
/// salt), valid only when SHA-256("dna-node-work" | salt) starts with `difficulty` zero bits. Finding a
/// valid salt costs about 2^difficulty hashes; an id within b bits of a chosen key costs 2^(b +
/// difficulty). Every DHT message carries the sender's salt, so receivers check the id for two hashes
/// (docs/PROTOCOL.md §5.3).
public struct NodeCredential: Hashable, Sendable {
    public static let saltSize = 16
    public let id: NodeID
    public let salt: [UInt8]

    static let idLabel = Array("dna-node-id".utf8)
    static let workLabel = Array("dna-node-work".utf8)

    /// The credential of `salt`, if it meets `difficulty`.
    public init?(salt: [UInt8], difficulty: Int) {
        guard salt.count == Self.saltSize, Self.work(salt) >= difficulty,
              let id = NodeID(bytes: Sodium.sha256(Self.idLabel + salt).prefix(NodeID.size)) else { return nil }
        self.id = id
        self.salt = salt
    }

    /// Leading zero bits of the work hash.
    static func work(_ salt: [UInt8]) -> Int {
        let hash = Sodium.sha256(workLabel + salt)
        var bits = 0
        for byte in hash {
            if byte == 0 { bits += 8; continue }
            bits += byte.leadingZeroBitCount
            break
        }
        return bits
    }

    /// Tries random salts (from `random`, else libsodium) until one meets `difficulty`.
    public static func generate(difficulty: Int, random: (() -> [UInt8])? = nil) -> NodeCredential {
        while true {
            let salt = random?() ?? Sodium.randomBytes(saltSize)
            if let credential = NodeCredential(salt: salt, difficulty: difficulty) { return credential }
        }
    }
}
