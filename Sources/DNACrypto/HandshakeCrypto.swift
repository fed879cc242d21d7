import Crypto
internal import CSodium

/// X25519 from libsodium.
enum X25519 {
    static let size = Int(crypto_scalarmult_BYTES)

    /// A fresh ephemeral key pair; the secret is wiped when its last reference goes.
    static func keyPair() -> (secret: Secret, publicKey: [UInt8]) {
        let secret = Secret(Sodium.randomBytes(size))
        var publicKey = [UInt8](repeating: 0, count: size)
        _ = crypto_scalarmult_base(&publicKey, secret.bytes)
        return (secret, publicKey)
    }

    /// The shared secret with `peer`; a small-order peer point (all-zero result) is refused.
    static func shared(secret: Secret, peer: [UInt8]) throws(HandshakeError) -> [UInt8] {
        guard secret.bytes.count == size, peer.count == size else { throw .badKeyShare }
        var shared = [UInt8](repeating: 0, count: size)
        guard crypto_scalarmult(&shared, secret.bytes, peer) == 0 else { throw .badKeyShare }
        return shared
    }
}

/// ML-KEM-768 from swift-crypto.
enum KEM {
    static func keyPair() throws(HandshakeError) -> MLKEM768.PrivateKey {
        do { return try MLKEM768.PrivateKey() } catch { throw .crypto("ML-KEM key generation: \(error)") }
    }

    /// A shared secret and its ciphertext for `publicKey` (1184 bytes); a malformed key is refused.
    static func encapsulate(to publicKey: [UInt8]) throws(HandshakeError) -> (secret: [UInt8], ciphertext: [UInt8]) {
        let key: MLKEM768.PublicKey
        do { key = try MLKEM768.PublicKey(rawRepresentation: publicKey) } catch { throw .badKeyShare }
        do {
            let result = try key.encapsulate()
            return (result.sharedSecret.withUnsafeBytes { Array($0) }, Array(result.encapsulated))
        } catch { throw .crypto("ML-KEM encapsulation: \(error)") }
    }

    static func decapsulate(_ ciphertext: [UInt8], with key: MLKEM768.PrivateKey) throws(HandshakeError) -> [UInt8] {
        do { return try key.decapsulate(ciphertext).withUnsafeBytes { Array($0) } } catch { throw .badKeyShare }
    }
}

/// The running SHA-256 of the handshake messages (libsodium's incremental SHA-256).
struct Transcript {
    private var state = crypto_hash_sha256_state()

    init() {
        _ = Sodium.ready
        _ = crypto_hash_sha256_init(&state)
    }

    mutating func absorb(_ bytes: [UInt8]) {
        _ = crypto_hash_sha256_update(&state, bytes, UInt64(bytes.count))
    }

    /// The hash of everything absorbed so far; the transcript can go on.
    var hash: [UInt8] {
        var copy = state
        var digest = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_BYTES))
        _ = crypto_hash_sha256_final(&copy, &digest)
        return digest
    }
}

/// The key schedule (docs/PROTOCOL.md §4.3): both shared secrets and the transcript go into one
/// HKDF-SHA-256 extraction, so that the keys stay secret while either X25519 or ML-KEM-768 holds.
final class KeySchedule {
    private var prk: [UInt8]

    /// PRK = HKDF-Extract(salt: transcript hash through message 2, IKM: "DNA-HS-1" | X25519 secret | ML-KEM secret).
    init(x25519Secret: [UInt8], kemSecret: [UInt8], transcriptHash: [UInt8]) {
        var ikm = Array("DNA-HS-1".utf8) + x25519Secret + kemSecret
        let code = HKDF<SHA256>.extract(inputKeyMaterial: SymmetricKey(data: ikm), salt: transcriptHash)
        prk = code.withUnsafeBytes { Array($0) }
        Sodium.wipe(&ikm)
    }

    /// HKDF-Expand(PRK, label | context, 32).
    func expand(_ label: String, _ context: [UInt8] = []) -> [UInt8] {
        HKDF<SHA256>.expand(pseudoRandomKey: prk, info: Array(label.utf8) + context, outputByteCount: 32)
            .withUnsafeBytes { Array($0) }
    }

    /// The key that seals message 3.
    var confirmationKey: [UInt8] { expand("dna hs1 confirm") }

    /// The traffic secrets of both directions, bound to the whole transcript.
    func trafficSecrets(transcriptHash: [UInt8]) -> (initiatorToResponder: [UInt8], responderToInitiator: [UInt8]) {
        (expand("dna hs1 i2r", transcriptHash), expand("dna hs1 r2i", transcriptHash))
    }

    deinit { Sodium.wipe(&prk) }
}

/// ChaCha20-Poly1305-IETF with a zero nonce, for message 3 (its key is used exactly once).
enum ConfirmationSeal {
    static func seal(_ plaintext: [UInt8], key: [UInt8], associatedData: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + Confirmation.tagSize)
        var length: UInt64 = 0
        let nonce = [UInt8](repeating: 0, count: TrafficKey.nonceSize)
        _ = crypto_aead_chacha20poly1305_ietf_encrypt(&out, &length, plaintext, UInt64(plaintext.count),
                                                      associatedData, UInt64(associatedData.count), nil, nonce, key)
        return out
    }

    static func open(_ sealed: [UInt8], key: [UInt8], associatedData: [UInt8]) throws(HandshakeError) -> [UInt8] {
        guard sealed.count >= Confirmation.tagSize else { throw .authenticationFailed }
        var out = [UInt8](repeating: 0, count: sealed.count - Confirmation.tagSize)
        var length: UInt64 = 0
        let nonce = [UInt8](repeating: 0, count: TrafficKey.nonceSize)
        guard crypto_aead_chacha20poly1305_ietf_decrypt(&out, &length, nil, sealed, UInt64(sealed.count),
                                                        associatedData, UInt64(associatedData.count), nonce, key) == 0
        else { throw .authenticationFailed }
        return out
    }
}
