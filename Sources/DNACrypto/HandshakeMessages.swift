import DNAWire

/// The three handshake messages and their byte layouts (docs/PROTOCOL.md §4.2). Every parser of
/// network bytes here returns a typed error; none traps.

/// Why a handshake failed or a handshake datagram was refused.
public enum HandshakeError: Error, Equatable, Sendable {
    /// The datagram is not a valid DNA frame.
    case frame(FrameError)
    /// The frame is valid but not one this side expects now (another type, kind or unused bits set).
    case unexpected(String)
    /// A piece's numbering is wrong (see PieceError).
    case piece(PieceError)
    /// A handshake message does not parse: `what` says which field.
    case malformed(String)
    /// The peer speaks another handshake version.
    case unsupportedVersion(UInt16)
    /// No cipher suite both sides have. At the responder: the initiation's offer (the bit set of §4.2,
    /// e.g. 0x0002 for AES-256-GCM alone) shares none with what it accepts. At the initiator: the
    /// response chose a suite it did not offer (the suite's number, e.g. 2).
    case unsupportedSuite(UInt16)
    /// The initiation names another responder key: it was sent to the wrong peer.
    case misdirected
    /// This initiation was already answered or refused.
    case replayed
    /// A signature over the transcript does not verify: modified in flight or a wrong key.
    case badSignature
    /// The initiator's confirmation does not decrypt: modified, or keys that do not match.
    case authenticationFailed
    /// A key share is invalid (an X25519 point of small order, an ML-KEM key or ciphertext that is refused).
    case badKeyShare
    /// A piece for a handshake this side does not have (unknown or already ended).
    case unknownSession(UInt32)
    /// No answer in time, after the retransmissions.
    case timeout
    /// A local cryptographic operation failed.
    case crypto(String)
}

/// Handshake constants.
public enum HandshakeProtocol {
    /// The handshake version this implementation speaks.
    public static let version: UInt16 = 1

    static let x25519Size = 32
    static let kemPublicKeySize = 1184
    static let kemCiphertextSize = 1088
    static let randomSize = 32
    static let hashSize = 32
    /// Bit 15 of message 1's offer and of message 2's chosen suite: records may share a datagram
    /// (docs/PROTOCOL.md §3). Suite numbers stay below 16.
    static let sharedDatagrams: UInt16 = 0x8000

    static let responderLabel = Array("DNA handshake v1 responder signature".utf8) + [0]
    static let initiatorLabel = Array("DNA handshake v1 initiator signature".utf8) + [0]
}

/// The kinds of handshake messages, as carried in each piece's header.
public enum HandshakeKind: UInt8, Sendable, CaseIterable {
    case initiation = 1
    case response = 2
    case confirmation = 3

    /// The largest message of this kind; a receiver allocates no more.
    var maximumLength: Int {
        switch self {
        case .initiation: Initiation.size
        case .response: Response.size
        case .confirmation: Confirmation.maximumSize
        }
    }
}

/// Reads fields from received bytes, each read checked.
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func take(_ count: Int, _ what: String) throws(HandshakeError) -> [UInt8] {
        guard count >= 0, bytes.count - offset >= count else { throw .malformed("\(what) truncated") }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func uint16(_ what: String) throws(HandshakeError) -> UInt16 {
        let two = try take(2, what)
        return UInt16(two[0]) << 8 | UInt16(two[1])
    }

    mutating func uint8(_ what: String) throws(HandshakeError) -> UInt8 {
        try take(1, what)[0]
    }

    func finish() throws(HandshakeError) {
        guard offset == bytes.count else { throw .malformed("\(bytes.count - offset) trailing bytes") }
    }
}

func bigEndianBytes(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }

/// Message 1, initiator to responder, in the clear:
/// version (2) | suites offered (2) | SHA-256 of the responder's public key (32) | initiator random (32) |
/// X25519 ephemeral public key (32) | ML-KEM-768 ephemeral encapsulation key (1184). The offer has bit
/// (n − 1) set for each suite n the initiator offers, and bit 15 (`HandshakeProtocol.sharedDatagrams`)
/// when it can take records that share a datagram (§3); bits of suites unknown here are ignored.
struct Initiation: Equatable {
    static let size = 4 + 32 + 32 + 32 + 1184

    var offeredSuites: UInt16
    var responderKeyHash: [UInt8]
    var random: [UInt8]
    var x25519: [UInt8]
    var kemPublicKey: [UInt8]

    var bytes: [UInt8] {
        bigEndianBytes(HandshakeProtocol.version) + bigEndianBytes(offeredSuites)
            + responderKeyHash + random + x25519 + kemPublicKey
    }

    init(offering suites: [CipherSuite], sharedDatagrams: Bool = false, responderKeyHash: [UInt8], random: [UInt8], x25519: [UInt8],
         kemPublicKey: [UInt8]) {
        offeredSuites = CipherSuite.offer(suites) | (sharedDatagrams ? HandshakeProtocol.sharedDatagrams : 0)
        self.responderKeyHash = responderKeyHash
        self.random = random
        self.x25519 = x25519
        self.kemPublicKey = kemPublicKey
    }

    init(parsing bytes: [UInt8]) throws(HandshakeError) {
        var reader = ByteReader(bytes)
        let version = try reader.uint16("version")
        guard version == HandshakeProtocol.version else { throw .unsupportedVersion(version) }
        offeredSuites = try reader.uint16("suites offered")
        responderKeyHash = try reader.take(HandshakeProtocol.hashSize, "responder key hash")
        random = try reader.take(HandshakeProtocol.randomSize, "initiator random")
        x25519 = try reader.take(HandshakeProtocol.x25519Size, "initiator X25519 key")
        kemPublicKey = try reader.take(HandshakeProtocol.kemPublicKeySize, "initiator ML-KEM key")
        try reader.finish()
    }

    /// Whether the initiator can take records that share a datagram (bit 15 of its offer).
    var offersSharedDatagrams: Bool { offeredSuites & HandshakeProtocol.sharedDatagrams != 0 }

    /// The responder's choice: the first of `accepted` (its order of preference) that this initiation offers.
    /// - Throws: `.unsupportedSuite(offer)` when there is none.
    func choose(from accepted: [CipherSuite]) throws(HandshakeError) -> CipherSuite {
        guard let suite = accepted.first(where: { offeredSuites & $0.offerBit != 0 }) else {
            throw .unsupportedSuite(offeredSuites)
        }
        return suite
    }
}

/// Message 2, responder to initiator, in the clear:
/// version (2) | suite chosen (2; bit 15 set when both sides' records may share a datagram, §3) |
/// responder random (32) | X25519 ephemeral public key (32) |
/// ML-KEM-768 ciphertext to the initiator's key (1088) | ML-DSA-65 signature (3309) over
/// label | SHA-256(initiation | response without the signature).
struct Response: Equatable {
    static let signedSize = 4 + 32 + 32 + 1088
    static let size = signedSize + Identity.signatureSize

    var suite: CipherSuite
    /// Records may share a datagram (the initiator offered it and the responder accepts).
    var sharedDatagrams: Bool
    var random: [UInt8]
    var x25519: [UInt8]
    var kemCiphertext: [UInt8]
    var signature: [UInt8]

    /// The part the signature covers (the transcript includes it).
    var signedPart: [UInt8] {
        bigEndianBytes(HandshakeProtocol.version) + bigEndianBytes(suite.rawValue | (sharedDatagrams ? HandshakeProtocol.sharedDatagrams : 0))
            + random + x25519 + kemCiphertext
    }

    var bytes: [UInt8] { signedPart + signature }

    init(suite: CipherSuite, sharedDatagrams: Bool = false, random: [UInt8], x25519: [UInt8], kemCiphertext: [UInt8], signature: [UInt8]) {
        self.suite = suite
        self.sharedDatagrams = sharedDatagrams
        self.random = random
        self.x25519 = x25519
        self.kemCiphertext = kemCiphertext
        self.signature = signature
    }

    init(parsing bytes: [UInt8]) throws(HandshakeError) {
        var reader = ByteReader(bytes)
        let version = try reader.uint16("version")
        guard version == HandshakeProtocol.version else { throw .unsupportedVersion(version) }
        let chosen = try reader.uint16("suite")
        guard let suite = CipherSuite(rawValue: chosen & ~HandshakeProtocol.sharedDatagrams) else {
            throw .unsupportedSuite(chosen & ~HandshakeProtocol.sharedDatagrams)
        }
        self.suite = suite
        sharedDatagrams = chosen & HandshakeProtocol.sharedDatagrams != 0
        random = try reader.take(HandshakeProtocol.randomSize, "responder random")
        x25519 = try reader.take(HandshakeProtocol.x25519Size, "responder X25519 key")
        kemCiphertext = try reader.take(HandshakeProtocol.kemCiphertextSize, "ML-KEM ciphertext")
        signature = try reader.take(Identity.signatureSize, "responder signature")
        try reader.finish()
    }
}

/// Message 3, initiator to responder, sealed with the confirmation key (ChaCha20-Poly1305-IETF, nonce
/// zero, the transcript hash through message 2 as associated data). Plaintext: name length (1) |
/// name (1..255) | initiator ML-DSA-65 public key (1952) | signature (3309) over
/// label | SHA-256(initiation | response | name length | name | public key).
struct Confirmation: Equatable {
    static let tagSize = 16
    static let maximumSize = 1 + IdentityName.maximumLength + Identity.publicKeySize + Identity.signatureSize + tagSize

    var name: IdentityName
    var publicKey: [UInt8]
    var signature: [UInt8]

    /// The part the signature covers, after the transcript.
    var signedPart: [UInt8] { [UInt8(name.utf8.count)] + name.utf8 + publicKey }

    var plaintext: [UInt8] { signedPart + signature }

    init(name: IdentityName, publicKey: [UInt8], signature: [UInt8]) {
        self.name = name
        self.publicKey = publicKey
        self.signature = signature
    }

    init(parsing bytes: [UInt8]) throws(HandshakeError) {
        var reader = ByteReader(bytes)
        let length = try reader.uint8("name length")
        let nameBytes = try reader.take(Int(length), "name")
        do { name = try IdentityName(utf8: nameBytes) } catch {
            guard case .invalidName(let why) = error else { throw .malformed("initiator name") }
            throw .malformed("initiator name: \(why)")
        }
        publicKey = try reader.take(Identity.publicKeySize, "initiator public key")
        signature = try reader.take(Identity.signatureSize, "initiator signature")
        try reader.finish()
    }
}
