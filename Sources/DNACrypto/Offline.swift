import Crypto
internal import CSodium

// Offline delivery (docs/PROTOCOL.md §8): messages for an identity that cannot be reached wait in
// its inbox in the DHT, sealed to the inbox's keys (X25519 + ML-KEM-768) and signed by the sender.
// Pure values: bytes and times in and out.

public enum OfflineError: Error, Equatable, Sendable {
    case malformed(String)
    case badSignature
    case expired
    /// The times are not acceptable (created in the future, a lifetime above 7 days).
    case badTimes
    case tooLarge(Int)
    /// The message is not for these inbox keys, or was modified.
    case authenticationFailed
    case crypto(String)
}

public enum Offline {
    public static let version: UInt8 = 1
    /// The largest message an inbox takes (the application's bytes).
    public static let maximumMessage = 4096
    /// How long a message may wait.
    public static let maximumLifetime: UInt64 = 7 * 24 * 3600
    /// Clock skew tolerated on `created`.
    public static let skew: UInt64 = 600
    public static let idSize = 16
    public static let inboxKeySize = 20

    /// The DHT key of `name`'s inbox: the first 20 bytes of SHA-256("DNA-INBOX-1" | name).
    public static func inboxKey(_ name: IdentityName) -> [UInt8] {
        Array(Sodium.sha256(Array("DNA-INBOX-1".utf8) + name.utf8).prefix(inboxKeySize))
    }

    static func be(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - $0))) }
    }
}

/// Reads fields off a byte array; every shortfall is `.malformed`.
struct OfflineReader {
    let bytes: [UInt8]
    var at = 0

    mutating func take(_ count: Int, _ what: String) throws(OfflineError) -> [UInt8] {
        guard count >= 0, bytes.count - at >= count else { throw .malformed("truncated \(what)") }
        defer { at += count }
        return Array(bytes[at..<at + count])
    }

    mutating func u64(_ what: String) throws(OfflineError) -> UInt64 {
        try take(8, what).reduce(0) { $0 << 8 | UInt64($1) }
    }

    mutating func name() throws(OfflineError) -> IdentityName {
        let length = Int(try take(1, "name length")[0])
        do { return try IdentityName(utf8: try take(length, "name")) } catch { throw .malformed("name") }
    }

    func end() throws(OfflineError) {
        guard at == bytes.count else { throw .malformed("\(bytes.count - at) bytes after the end") }
    }
}

/// An inbox's decryption keys, derived from the owner's identity seed (nothing more to keep):
/// HKDF-SHA-256(seed, salt "DNA-INBOX-1", info "x25519" / "ml-kem-768").
public final class InboxKeys: @unchecked Sendable {
    public let x25519Public: [UInt8]
    public let kemPublic: [UInt8]
    private let x25519Secret: Secret
    private let kem: MLKEM768.PrivateKey

    public init(identity: Identity) throws(OfflineError) {
        var seed = identity.seed
        defer { Sodium.wipe(&seed) }
        let key = SymmetricKey(data: seed)
        let salt = Array("DNA-INBOX-1".utf8)
        let x = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: salt, info: Array("x25519".utf8), outputByteCount: 32)
        let k = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: salt, info: Array("ml-kem-768".utf8), outputByteCount: 64)
        x25519Secret = Secret(x.withUnsafeBytes { Array($0) })
        var publicKey = [UInt8](repeating: 0, count: X25519.size)
        _ = crypto_scalarmult_base(&publicKey, x25519Secret.bytes)
        x25519Public = publicKey
        do { kem = try MLKEM768.PrivateKey(seedRepresentation: k.withUnsafeBytes { Array($0) }, publicKey: nil) } catch {
            throw .crypto("ML-KEM key from seed: \(error)")
        }
        kemPublic = Array(kem.publicKey.rawRepresentation)
    }

    func shared(ephemeral: [UInt8], ciphertext: [UInt8]) throws(OfflineError) -> (x25519: [UInt8], kem: [UInt8]) {
        do {
            return (try X25519.shared(secret: x25519Secret, peer: ephemeral), try KEM.decapsulate(ciphertext, with: kem))
        } catch { throw .authenticationFailed }
    }
}

/// The record that tells senders how to seal for an inbox, signed by its owner:
///
///     version (1) = 1 | kind (1) = 1 | created (8) | name length (1) | name | X25519 public key (32) |
///     ML-KEM-768 encapsulation key (1184) | owner's ML-DSA-65 public key (1952) |
///     signature (3309) over "DNA-INBOX-KEYS-1" | everything before it
public struct InboxKeyRecord: Equatable, Sendable {
    public static let kind: UInt8 = 1
    static let domain = Array("DNA-INBOX-KEYS-1".utf8)

    public var created: UInt64
    public var name: IdentityName
    public var x25519: [UInt8]
    public var kem: [UInt8]
    public var ownerKey: [UInt8]
    public var signature: [UInt8]

    public var inboxKey: [UInt8] { Offline.inboxKey(name) }

    public init(identity: Identity, keys: InboxKeys, created: UInt64) throws(OfflineError) {
        self.created = created
        name = identity.name
        x25519 = keys.x25519Public
        kem = keys.kemPublic
        ownerKey = identity.publicKey
        signature = []
        do { signature = try identity.sign(Self.domain + signedPart) } catch { throw .crypto("sign: \(error)") }
    }

    var signedPart: [UInt8] {
        [Offline.version, Self.kind] + Offline.be(created, 8) + [UInt8(name.utf8.count)] + name.utf8 + x25519 + kem + ownerKey
    }

    public var bytes: [UInt8] { signedPart + signature }

    /// Parses and checks the signature.
    public init(parsing bytes: [UInt8]) throws(OfflineError) {
        var reader = OfflineReader(bytes: bytes)
        let header = try reader.take(2, "header")
        guard header == [Offline.version, Self.kind] else { throw .malformed("not an inbox key record") }
        created = try reader.u64("created")
        name = try reader.name()
        x25519 = try reader.take(X25519.size, "X25519 key")
        kem = try reader.take(1184, "ML-KEM key")
        ownerKey = try reader.take(Identity.publicKeySize, "owner key")
        signature = try reader.take(Identity.signatureSize, "signature")
        try reader.end()
        guard (try? MLKEM768.PublicKey(rawRepresentation: kem)) != nil else { throw .malformed("ML-KEM key") }
        guard Identity.isValidSignature(signature, of: Self.domain + signedPart, publicKey: ownerKey) else { throw .badSignature }
    }
}

/// A message waiting in an inbox:
///
///     version (1) = 1 | kind (1) = 2 | inbox key (20) | message id (16) | created (8) | expires (8) |
///     sender's ML-DSA-65 public key (1952) | ephemeral X25519 key (32) | ML-KEM-768 ciphertext (1088) |
///     sealed length (4) | sealed | signature (3309) over "DNA-OFFLINE-1" | everything before it
///
/// sealed = ChaCha20-Poly1305 (zero nonce: the key is used once) of
/// sender name length (1) | sender name | message, with everything before `sealed length` as
/// associated data; key = HKDF-SHA-256(IKM "DNA-OFFLINE-1" | X25519 secret | ML-KEM secret,
/// salt SHA-256(associated data), info "dna offline key").
public struct OfflineMessage: Equatable, Sendable {
    public static let kind: UInt8 = 2
    static let domain = Array("DNA-OFFLINE-1".utf8)
    static let kemCiphertextSize = 1088
    static let tagSize = 16
    public static let maximumSize = 2 + 20 + 16 + 16 + Identity.publicKeySize + 32 + kemCiphertextSize + 4
        + 1 + IdentityName.maximumLength + Offline.maximumMessage + tagSize + Identity.signatureSize

    public var inboxKey: [UInt8]
    public var id: [UInt8]
    public var created: UInt64
    public var expires: UInt64
    public var senderKey: [UInt8]
    var ephemeral: [UInt8]
    var kemCiphertext: [UInt8]
    var sealed: [UInt8]
    var signature: [UInt8]

    var header: [UInt8] {
        [Offline.version, Self.kind] + inboxKey + id + Offline.be(created, 8) + Offline.be(expires, 8) + senderKey
            + ephemeral + kemCiphertext
    }

    var signedPart: [UInt8] { header + Offline.be(UInt64(sealed.count), 4) + sealed }

    public var bytes: [UInt8] { signedPart + signature }

    /// Seals `message` from `sender` for the inbox that `record` describes, to wait until `expires`.
    public init(sealing message: [UInt8], from sender: Identity, to record: InboxKeyRecord, now: UInt64,
                lifetime: UInt64 = Offline.maximumLifetime) throws(OfflineError) {
        guard message.count <= Offline.maximumMessage else { throw .tooLarge(message.count) }
        guard lifetime > 0, lifetime <= Offline.maximumLifetime else { throw .badTimes }
        inboxKey = record.inboxKey
        id = Sodium.randomBytes(Offline.idSize)
        created = now
        expires = now + lifetime
        senderKey = sender.publicKey
        let (secret, ephemeralPublic) = X25519.keyPair()
        ephemeral = ephemeralPublic
        var dh: [UInt8], kemSecret: [UInt8]
        do {
            dh = try X25519.shared(secret: secret, peer: record.x25519)
            (kemSecret, kemCiphertext) = try KEM.encapsulate(to: record.kem)
        } catch { throw .crypto("key agreement with the inbox keys: \(error)") }
        sealed = []
        signature = []
        let associated = header
        var key = Self.key(x25519: dh, kem: kemSecret, associated: associated)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)
        defer { Sodium.wipe(&key) }
        sealed = ConfirmationSeal.seal([UInt8(sender.name.utf8.count)] + sender.name.utf8 + message, key: key,
                                       associatedData: associated)
        do { signature = try sender.sign(Self.domain + signedPart) } catch { throw .crypto("sign: \(error)") }
    }

    static func key(x25519: [UInt8], kem: [UInt8], associated: [UInt8]) -> [UInt8] {
        let ikm = SymmetricKey(data: domain + x25519 + kem)
        return HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: Sodium.sha256(associated),
                                      info: Array("dna offline key".utf8), outputByteCount: 32).withUnsafeBytes { Array($0) }
    }

    /// Parses and checks what a holder can check: structure, signature, times at `now` (Unix s).
    public init(parsing bytes: [UInt8], now: UInt64) throws(OfflineError) {
        guard bytes.count <= Self.maximumSize else { throw .tooLarge(bytes.count) }
        var reader = OfflineReader(bytes: bytes)
        let head = try reader.take(2, "header")
        guard head == [Offline.version, Self.kind] else { throw .malformed("not an offline message") }
        inboxKey = try reader.take(Offline.inboxKeySize, "inbox key")
        id = try reader.take(Offline.idSize, "id")
        created = try reader.u64("created")
        expires = try reader.u64("expires")
        senderKey = try reader.take(Identity.publicKeySize, "sender key")
        ephemeral = try reader.take(X25519.size, "ephemeral key")
        kemCiphertext = try reader.take(Self.kemCiphertextSize, "ML-KEM ciphertext")
        let length = Int(try reader.take(4, "sealed length").reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        guard length >= 1 + 1 + Self.tagSize, length <= 1 + IdentityName.maximumLength + Offline.maximumMessage + Self.tagSize else {
            throw .malformed("sealed length \(length)")
        }
        sealed = try reader.take(length, "sealed")
        signature = try reader.take(Identity.signatureSize, "signature")
        try reader.end()
        guard created <= now + Offline.skew, expires > created, expires - created <= Offline.maximumLifetime else { throw .badTimes }
        guard expires > now else { throw .expired }
        guard Identity.isValidSignature(signature, of: Self.domain + signedPart, publicKey: senderKey) else { throw .badSignature }
    }

    /// The inbox owner's side: the sender's name (as the sender signed it) and the message.
    public func open(with keys: InboxKeys) throws(OfflineError) -> (sender: IdentityName, message: [UInt8]) {
        var (dh, kemSecret) = try keys.shared(ephemeral: ephemeral, ciphertext: kemCiphertext)
        var key = Self.key(x25519: dh, kem: kemSecret, associated: header)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)
        defer { Sodium.wipe(&key) }
        let plaintext: [UInt8]
        do { plaintext = try ConfirmationSeal.open(sealed, key: key, associatedData: header) } catch { throw .authenticationFailed }
        var reader = OfflineReader(bytes: plaintext)
        let sender = try reader.name()
        let message = Array(plaintext[reader.at...])
        return (sender, message)
    }
}

/// The owner's request to remove delivered messages from its inbox:
///
///     version (1) = 1 | kind (1) = 3 | inbox key (20) | created (8) | count (1, 1..64) | ids (16 each) |
///     signature (3309) over "DNA-INBOX-DELETE-1" | everything before it
public struct InboxDeletion: Equatable, Sendable {
    public static let kind: UInt8 = 3
    public static let maximumIDs = 64
    static let domain = Array("DNA-INBOX-DELETE-1".utf8)

    public var inboxKey: [UInt8]
    public var created: UInt64
    public var ids: [[UInt8]]
    var signature: [UInt8]

    var signedPart: [UInt8] {
        [Offline.version, Self.kind] + inboxKey + Offline.be(created, 8) + [UInt8(ids.count)] + ids.flatMap { $0 }
    }

    public var bytes: [UInt8] { signedPart + signature }

    public init(owner: Identity, ids: [[UInt8]], now: UInt64) throws(OfflineError) {
        guard (1...Self.maximumIDs).contains(ids.count), ids.allSatisfy({ $0.count == Offline.idSize }) else {
            throw .malformed("\(ids.count) ids")
        }
        inboxKey = Offline.inboxKey(owner.name)
        created = now
        self.ids = ids
        signature = []
        do { signature = try owner.sign(Self.domain + signedPart) } catch { throw .crypto("sign: \(error)") }
    }

    /// Parses; `verify` checks the signature against the inbox owner's key.
    public init(parsing bytes: [UInt8]) throws(OfflineError) {
        var reader = OfflineReader(bytes: bytes)
        guard try reader.take(2, "header") == [Offline.version, Self.kind] else { throw .malformed("not a deletion") }
        inboxKey = try reader.take(Offline.inboxKeySize, "inbox key")
        created = try reader.u64("created")
        let count = Int(try reader.take(1, "count")[0])
        guard (1...Self.maximumIDs).contains(count) else { throw .malformed("\(count) ids") }
        ids = []
        for _ in 0..<count { ids.append(try reader.take(Offline.idSize, "id")) }
        signature = try reader.take(Identity.signatureSize, "signature")
        try reader.end()
    }

    /// Checks the time (`created` within `Offline.skew` seconds of `now`, the holder's Unix time in
    /// seconds) and the signature against `ownerKey`. `created` comes from the network: any value,
    /// up to 2^64 - 1, is refused with `.badTimes`, never an overflow.
    public func verify(ownerKey: [UInt8], now: UInt64) throws(OfflineError) {
        guard created >= now - min(now, Offline.skew), created - min(created, Offline.skew) <= now else { throw .badTimes }
        guard Identity.isValidSignature(signature, of: Self.domain + signedPart, publicKey: ownerKey) else { throw .badSignature }
    }
}
