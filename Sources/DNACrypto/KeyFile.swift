/// The bytes of a key file (docs/PROTOCOL.md, "Identity key files"):
///
///     offset     size  field
///          0        4  magic "DNAK"
///          4        1  format version, 1
///          5        1  L, the identity name's length in bytes
///          6        L  the identity name (UTF-8)
///      6 + L       32  ML-DSA-65 seed (FIPS 204 ξ)
///     38 + L     1952  ML-DSA-65 public key, checked against the one derived from the seed
enum KeyFile {
    static let magic: [UInt8] = Array("DNAK".utf8)
    static let version: UInt8 = 1
    static let maximumSize = 6 + IdentityName.maximumLength + Identity.seedSize + Identity.publicKeySize

    static func encode(_ identity: Identity) -> [UInt8] {
        var seed = identity.seed
        defer { Sodium.wipe(&seed) }
        var bytes = magic + [version, UInt8(identity.name.utf8.count)] + identity.name.utf8
        bytes += seed
        bytes += identity.publicKey
        return bytes
    }

    /// The identity in `bytes`, which must be the key file of `name`. Throws `.keyFileCorrupt`.
    static func decode(_ bytes: [UInt8], name: IdentityName, path: String) throws(IdentityError) -> Identity {
        func corrupt(_ reason: String) -> IdentityError { .keyFileCorrupt(path: path, reason: reason) }
        guard bytes.count >= 6 else { throw corrupt("truncated: \(bytes.count) bytes") }
        guard Array(bytes[0..<4]) == magic else { throw corrupt("not a dnatransport key file") }
        guard bytes[4] == version else { throw corrupt("unknown format version \(bytes[4])") }
        let nameLength = Int(bytes[5])
        let expected = 6 + nameLength + Identity.seedSize + Identity.publicKeySize
        guard bytes.count == expected else { throw corrupt("\(bytes.count) bytes, expected \(expected)") }
        guard Array(bytes[6..<6 + nameLength]) == name.utf8 else { throw corrupt("the key of another identity") }
        var seed = Array(bytes[(6 + nameLength)..<(6 + nameLength + Identity.seedSize)])
        defer { Sodium.wipe(&seed) }
        let stored = Array(bytes[(6 + nameLength + Identity.seedSize)...])
        let identity = try Identity(name: name, seed: seed)
        guard identity.publicKey == stored else { throw corrupt("the public key does not match the seed") }
        return identity
    }
}
