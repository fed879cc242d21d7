/// Why a signed value is refused.
public enum SignedValueError: Error, Equatable, Sendable {
    /// The wire encoding does not parse (truncated, trailing bytes, a wrong domain or flag).
    case malformed(String)
    /// The signer's name is not a valid identity name.
    case invalidSigner(IdentityError)
    /// The public key is not an ML-DSA-65 public key.
    case invalidPublicKey
    /// The lifetime is 0 or above `SignedValue.maximumLifetime`.
    case invalidLifetime(UInt32)
    /// The data is longer than `SignedValue.maximumDataSize`, or a tombstone carries data.
    case invalidData(Int)
    /// Created more than `SignedValue.maximumClockSkew` after the verifier's now.
    case createdInTheFuture(created: UInt64, now: UInt64)
    /// Its lifetime ended (`created + lifetime <= now`).
    case expired(expires: UInt64, now: UInt64)
    /// The signature does not verify under the value's public key.
    case badSignature
}

/// A value signed by its writer, stored at any 160-bit DHT key (docs/PROTOCOL.md §10.1). One signer
/// holds up to one value per slot at a key; a value replaces only one of the same key, signer and
/// slot with a lower sequence (or, at the same sequence, a lower value id: `supersedes`). It lives
/// `lifetime` seconds after `created` (both carried and signed, so that every holder agrees when it
/// ends). A tombstone (`isTombstone`, no data) deletes the slot's value. Sealed values carry data
/// only one identity can open (`isSealed`; the sealing is the application's or `OfflineMessage`'s).
///
/// Wire bytes (= the signed bytes, then the signature; integers big-endian):
///
///     "DNA-DHT-VALUE-01" (16) | key (20) | L (1) | signer name (L) | public key (1952)
///     | slot (4) | sequence (8) | created (8, Unix s) | lifetime (4, s) | type (2) | flags (1)
///     | D (4) | data (D) | signature (3309)
public struct SignedValue: Equatable, Sendable {
    public static let keySize = 20
    /// Domain separation: these bytes start every signed value and no other signed message.
    public static let domain: [UInt8] = Array("DNA-DHT-VALUE-01".utf8)
    /// The longest data: 64 KiB.
    public static let maximumDataSize = 65_536
    /// The longest lifetime: 30 days, in seconds.
    public static let maximumLifetime: UInt32 = 30 * 24 * 3600
    /// How far after the verifier's clock `created` may be: 10 minutes (as for entries, §5.2).
    public static let maximumClockSkew: UInt64 = 600
    /// Flag bits: bit 0 tombstone, bit 1 sealed; the others are zero.
    public static let tombstoneFlag: UInt8 = 1
    public static let sealedFlag: UInt8 = 2

    public var key: [UInt8]
    public var signer: IdentityName
    public var publicKey: [UInt8]
    public var slot: UInt32
    public var sequence: UInt64
    /// Unix seconds.
    public var created: UInt64
    /// Seconds after `created`.
    public var lifetime: UInt32
    /// The application's own number for what the data is.
    public var type: UInt16
    public var flags: UInt8
    public var data: [UInt8]
    public var signature: [UInt8]

    public init(key: [UInt8], signer: IdentityName, slot: UInt32, sequence: UInt64, created: UInt64, lifetime: UInt32,
                type: UInt16, flags: UInt8 = 0, data: [UInt8], publicKey: [UInt8] = [], signature: [UInt8] = []) {
        self.key = key
        self.signer = signer
        self.publicKey = publicKey
        self.slot = slot
        self.sequence = sequence
        self.created = created
        self.lifetime = lifetime
        self.type = type
        self.flags = flags
        self.data = data
        self.signature = signature
    }

    public var isTombstone: Bool { flags & Self.tombstoneFlag != 0 }
    public var isSealed: Bool { flags & Self.sealedFlag != 0 }
    /// Unix seconds at which the value's lifetime ends.
    public var expires: UInt64 { created &+ UInt64(lifetime) }
    /// Who wrote it: SHA-256 of the public key (32 bytes), the unit of holders' quotas and readers' filters.
    public var signerID: [UInt8] { Self.signerID(of: publicKey) }
    public static func signerID(of publicKey: [UInt8]) -> [UInt8] { Sodium.sha256(publicKey) }

    /// The canonical bytes the signature covers: every field but the signature, as above.
    public var signedBytes: [UInt8] {
        var bytes = Self.domain
        bytes.reserveCapacity(Self.fixedSize + signer.utf8.count + data.count)
        bytes += key
        bytes.append(UInt8(truncatingIfNeeded: signer.utf8.count))
        bytes += signer.utf8
        bytes += publicKey
        Self.append(UInt64(slot), bytes: 4, to: &bytes)
        Self.append(sequence, bytes: 8, to: &bytes)
        Self.append(created, bytes: 8, to: &bytes)
        Self.append(UInt64(lifetime), bytes: 4, to: &bytes)
        Self.append(UInt64(type), bytes: 2, to: &bytes)
        bytes.append(flags)
        Self.append(UInt64(data.count), bytes: 4, to: &bytes)
        bytes += data
        return bytes
    }

    /// The value on the wire: its signed bytes, then the signature.
    public var wireBytes: [UInt8] { signedBytes + signature }

    /// The value's id: SHA-256 of its wire bytes (32). Holders and readers name a value by it.
    public var id: [UInt8] { Sodium.sha256(wireBytes) }

    /// Bytes of every field but the name and the data (5,329).
    public static let fixedSize = 16 + keySize + 1 + Identity.publicKeySize + 4 + 8 + 8 + 4 + 2 + 1 + 4 + Identity.signatureSize
    /// The largest wire encoding: a 255-byte name and 64 KiB of data (71,120 bytes).
    public static let maximumWireSize = fixedSize + IdentityName.maximumLength + maximumDataSize

    private static func append(_ value: UInt64, bytes count: Int, to out: inout [UInt8]) {
        for index in 0..<count { out.append(UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - index)))) }
    }

    /// Checks every field but the signature; `now` is the verifier's Unix time in seconds.
    public func validateFields(now: UInt64) throws(SignedValueError) {
        guard key.count == Self.keySize else { throw .malformed("key of \(key.count) bytes") }
        guard flags & ~(Self.tombstoneFlag | Self.sealedFlag) == 0 else { throw .malformed("flags \(flags)") }
        guard lifetime >= 1, lifetime <= Self.maximumLifetime else { throw .invalidLifetime(lifetime) }
        guard data.count <= Self.maximumDataSize, !isTombstone || data.isEmpty else { throw .invalidData(data.count) }
        guard created <= now &+ Self.maximumClockSkew else { throw .createdInTheFuture(created: created, now: now) }
        guard expires > now else { throw .expired(expires: expires, now: now) }
        guard Identity.isValidPublicKey(publicKey) else { throw .invalidPublicKey }
    }

    /// Fills the public key and the signature with `identity`'s (which must be the signer named).
    public mutating func sign(with identity: Identity, now: UInt64) throws(SignedValueError) {
        guard identity.name == signer else {
            throw .invalidSigner(.invalidName("the value names \(signer), the key is \(identity.name)'s"))
        }
        publicKey = identity.publicKey
        try validateFields(now: now)
        do { signature = try identity.sign(signedBytes) } catch { throw .invalidSigner(error) }
    }

    /// Verifies the fields at `now` (Unix s) and the signature.
    public func verify(now: UInt64) throws(SignedValueError) {
        try validateFields(now: now)
        guard Identity.isValidSignature(signature, of: signedBytes, publicKey: publicKey) else { throw .badSignature }
    }

    /// Whether this value replaces `other` at a holder or in a reader's result: the same key, signer
    /// and slot, and a higher sequence; at the same sequence, a greater value id (bytewise), so that
    /// every holder and reader keeps the same one of two values a signer wrote with one sequence.
    public func supersedes(_ other: SignedValue) -> Bool {
        guard key == other.key, publicKey == other.publicKey, slot == other.slot else { return false }
        if sequence != other.sequence { return sequence > other.sequence }
        return other.id.lexicographicallyPrecedes(id)
    }

    /// Parses `wireBytes`; checks the structure only (`verify` checks the rules and the signature).
    public init(wire bytes: some Collection<UInt8>) throws(SignedValueError) {
        let bytes = Array(bytes)
        guard bytes.count <= Self.maximumWireSize else { throw .malformed("\(bytes.count) bytes") }
        var offset = 0
        func take(_ count: Int) throws(SignedValueError) -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count - offset >= count else { throw .malformed("truncated") }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }
        func integer(_ count: Int) throws(SignedValueError) -> UInt64 { try take(count).reduce(0) { $0 << 8 | UInt64($1) } }
        guard try take(16).elementsEqual(Self.domain) else { throw .malformed("domain") }
        let key = Array(try take(Self.keySize))
        let nameLength = Int(try integer(1))
        let nameBytes = try take(nameLength)
        let signer: IdentityName
        do { signer = try IdentityName(utf8: nameBytes) } catch { throw .invalidSigner(error) }
        let publicKey = Array(try take(Identity.publicKeySize))
        let slot = UInt32(try integer(4)), sequence = try integer(8), created = try integer(8)
        let lifetime = UInt32(try integer(4)), type = UInt16(try integer(2)), flags = UInt8(try integer(1))
        let dataLength = Int(try integer(4))
        guard dataLength <= Self.maximumDataSize else { throw .invalidData(dataLength) }
        let data = Array(try take(dataLength))
        let signature = Array(try take(Identity.signatureSize))
        guard offset == bytes.count else { throw .malformed("\(bytes.count - offset) trailing bytes") }
        self.init(key: key, signer: signer, slot: slot, sequence: sequence, created: created, lifetime: lifetime,
                  type: type, flags: flags, data: data, publicKey: publicKey, signature: signature)
    }
}
