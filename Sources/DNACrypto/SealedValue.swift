import Crypto

/// The data of a *sealed* signed value (`SignedValue.sealedFlag`, docs/PROTOCOL.md §10.6): bytes only
/// one identity can read, sealed to the inbox keys it publishes (§8: X25519 and ML-KEM-768, derived
/// from its seed), and bound to the value's key, signer, slot and type, so that the sealed bytes
/// open only inside the value they were sealed for. The reader is not named in it (a holder cannot
/// tell from a value whom it is for); the writer is the value's signer, authenticated by its signature.
///
///     version (1) = 1 | ephemeral X25519 public key (32) | ML-KEM-768 ciphertext (1,088)
///     | ChaCha20-Poly1305-IETF ciphertext of the plaintext, with its tag (P + 16)
///
/// Associated data: "DNA-SEALED-VALUE-1" | key (20) | signer id (32) | slot (4) | type (2) | the
/// 1,121 bytes above before the ciphertext. Key: HKDF-SHA-256(IKM "DNA-SEALED-VALUE-1" | X25519
/// shared secret | ML-KEM shared secret, salt SHA-256(associated data), info "dna sealed value key"),
/// 32 bytes; nonce zero (a fresh ephemeral key and encapsulation make each key used once).
public enum SealedValueData {
    public static let version: UInt8 = 1
    static let domain = Array("DNA-SEALED-VALUE-1".utf8)
    static let kemCiphertextSize = 1088
    static let tagSize = 16
    static let headerSize = 1 + 32 + kemCiphertextSize
    /// Bytes sealing adds: 1,137.
    public static let overhead = headerSize + tagSize
    /// The longest plaintext a sealed value carries: 64 KiB less the overhead (64,399 bytes).
    public static let maximumPlaintext = SignedValue.maximumDataSize - overhead

    /// Seals `plaintext` (at most `maximumPlaintext` bytes) to the inbox keys `x25519` (32 bytes)
    /// and `kem` (an ML-KEM-768 encapsulation key, 1,184 bytes) for the value at `key` that the
    /// signer `signerID` (SHA-256 of its ML-DSA-65 public key, 32 bytes) writes in `slot` with `type`. Throws
    /// `.tooLarge`, or `.crypto` for keys that are not valid keys.
    public static func seal(_ plaintext: [UInt8], x25519: [UInt8], kem: [UInt8], key: [UInt8], signerID: [UInt8], slot: UInt32,
                            type: UInt16) throws(OfflineError) -> [UInt8] {
        guard plaintext.count <= maximumPlaintext else { throw .tooLarge(plaintext.count) }
        let (secret, ephemeral) = X25519.keyPair()
        var dh: [UInt8]
        do { dh = try X25519.shared(secret: secret, peer: x25519) } catch { throw .crypto("X25519 with the reader's key: \(error)") }
        var kemSecret: [UInt8], kemCiphertext: [UInt8]
        do { (kemSecret, kemCiphertext) = try KEM.encapsulate(to: kem) } catch {
            Sodium.wipe(&dh)
            throw .crypto("ML-KEM-768 to the reader's key: \(error)")
        }
        let header = [version] + ephemeral + kemCiphertext
        let associated = associatedData(key: key, signerID: signerID, slot: slot, type: type, header: header)
        var aeadKey = derive(x25519: dh, kem: kemSecret, associated: associated)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)
        defer { Sodium.wipe(&aeadKey) }
        return header + ConfirmationSeal.seal(plaintext, key: aeadKey, associatedData: associated)
    }

    /// Seals to the keys an inbox key record publishes (`InboxKeyRecord`, §8.1).
    public static func seal(_ plaintext: [UInt8], to record: InboxKeyRecord, key: [UInt8], signerID: [UInt8], slot: UInt32,
                            type: UInt16) throws(OfflineError) -> [UInt8] {
        try seal(plaintext, x25519: record.x25519, kem: record.kem, key: key, signerID: signerID, slot: slot, type: type)
    }

    /// Opens `data` sealed by `seal` with the reader's inbox keys. Throws `.malformed` (shorter than
    /// the overhead, another version) or `.authenticationFailed` (sealed to other keys, for another
    /// key, signer, slot or type, or modified).
    public static func open(_ data: [UInt8], with keys: InboxKeys, key: [UInt8], signerID: [UInt8], slot: UInt32,
                            type: UInt16) throws(OfflineError) -> [UInt8] {
        guard data.count >= overhead else { throw .malformed("sealed data of \(data.count) bytes") }
        guard data[0] == version else { throw .malformed("sealed data version \(data[0])") }
        let header = Array(data[..<headerSize])
        let ephemeral = Array(data[1..<33])
        let kemCiphertext = Array(data[33..<headerSize])
        let associated = associatedData(key: key, signerID: signerID, slot: slot, type: type, header: header)
        var (dh, kemSecret) = try keys.shared(ephemeral: ephemeral, ciphertext: kemCiphertext)
        var aeadKey = derive(x25519: dh, kem: kemSecret, associated: associated)
        Sodium.wipe(&dh)
        Sodium.wipe(&kemSecret)
        defer { Sodium.wipe(&aeadKey) }
        do { return try ConfirmationSeal.open(Array(data[headerSize...]), key: aeadKey, associatedData: associated) } catch {
            throw .authenticationFailed
        }
    }

    static func associatedData(key: [UInt8], signerID: [UInt8], slot: UInt32, type: UInt16, header: [UInt8]) -> [UInt8] {
        domain + key + signerID + Offline.be(UInt64(slot), 4) + Offline.be(UInt64(type), 2) + header
    }

    static func derive(x25519: [UInt8], kem: [UInt8], associated: [UInt8]) -> [UInt8] {
        var material = domain + x25519 + kem
        defer { Sodium.wipe(&material) }
        let ikm = SymmetricKey(data: material)
        return HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: Sodium.sha256(associated),
                                      info: Array("dna sealed value key".utf8), outputByteCount: 32).withUnsafeBytes { Array($0) }
    }
}

extension SignedValue {
    /// The plaintext of a sealed value (`isSealed`) for the reader whose inbox keys are `keys`
    /// (`SealedValueData.open` with this value's key, signer id, slot and type). Throws `.malformed`
    /// for a value that is not sealed, else as `SealedValueData.open`.
    public func open(with keys: InboxKeys) throws(OfflineError) -> [UInt8] {
        guard isSealed, !isTombstone else { throw .malformed("the value is not sealed") }
        return try SealedValueData.open(data, with: keys, key: key, signerID: signerID, slot: slot, type: type)
    }
}
