import Crypto

/// An identity: a name and its ML-DSA-65 key pair (FIPS 204, pure mode, empty context).
public final class Identity: Sendable {
    /// ML-DSA-65 public key size (FIPS 204, Table 2).
    public static let publicKeySize = 1952
    /// ML-DSA-65 signature size (FIPS 204, Table 2).
    public static let signatureSize = 3309
    /// ML-DSA-65 private key seed size (FIPS 204, ξ).
    public static let seedSize = 32

    public let name: IdentityName
    public let publicKey: [UInt8]
    private let privateKey: MLDSA65.PrivateKey

    /// A new identity with a fresh key pair.
    public convenience init(generating name: IdentityName) throws(IdentityError) {
        let key: MLDSA65.PrivateKey
        do { key = try MLDSA65.PrivateKey() } catch { throw .crypto("key generation: \(error)") }
        self.init(name: name, privateKey: key)
    }

    /// The identity whose key pair derives from `seed` (32 bytes).
    public convenience init(name: IdentityName, seed: [UInt8]) throws(IdentityError) {
        guard seed.count == Self.seedSize else { throw .crypto("seed of \(seed.count) bytes") }
        let key: MLDSA65.PrivateKey
        do { key = try MLDSA65.PrivateKey(seedRepresentation: seed, publicKey: nil) } catch {
            throw .crypto("key from seed: \(error)")
        }
        self.init(name: name, privateKey: key)
    }

    private init(name: IdentityName, privateKey: MLDSA65.PrivateKey) {
        self.name = name
        self.privateKey = privateKey
        self.publicKey = Array(privateKey.publicKey.rawRepresentation)
    }

    /// The 32-byte seed the key pair derives from (secret: the caller wipes its copy).
    var seed: [UInt8] { Array(privateKey.seedRepresentation) }

    /// An ML-DSA-65 signature (3309 bytes) of `message`, empty context.
    public func sign(_ message: [UInt8]) throws(IdentityError) -> [UInt8] {
        do { return Array(try privateKey.signature(for: message)) } catch { throw .crypto("sign: \(error)") }
    }

    /// The short fingerprint of this identity's public key.
    public var fingerprint: String { Fingerprint.of(publicKey: publicKey) }

    /// True when `signature` is a valid ML-DSA-65 signature of `message` (empty context) by `publicKey`.
    public static func isValidSignature(_ signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard publicKey.count == publicKeySize, signature.count == signatureSize,
              let key = try? MLDSA65.PublicKey(rawRepresentation: publicKey) else { return false }
        return key.isValidSignature(signature, for: message)
    }

    /// True when `publicKey` is a well-formed ML-DSA-65 public key.
    public static func isValidPublicKey(_ publicKey: [UInt8]) -> Bool {
        publicKey.count == publicKeySize && (try? MLDSA65.PublicKey(rawRepresentation: publicKey)) != nil
    }
}

/// A short, human-comparable fingerprint of a public key: the first 16 bytes of SHA-256(public key)
/// in lowercase hex, in 8 groups of 4 joined by ':' (39 characters).
public enum Fingerprint {
    public static let length = 39

    public static func of(publicKey: [UInt8]) -> String {
        let hex = Array(Hex.encode(Sodium.sha256(publicKey).prefix(16)))
        return stride(from: 0, to: hex.count, by: 4).map { String(hex[$0..<$0 + 4]) }.joined(separator: ":")
    }
}
