/// A validated identity name ("alice"): 1 to 255 bytes of UTF-8 with no NUL (issue 3).
public struct IdentityName: Hashable, Sendable, CustomStringConvertible {
    /// The longest name in bytes (the seed's `char identity[256]` holds it with its NUL).
    public static let maximumLength = 255

    /// The UTF-8 bytes of the name.
    public let utf8: [UInt8]

    public init(utf8 bytes: some Collection<UInt8>) throws(IdentityError) {
        let bytes = Array(bytes)
        guard !bytes.isEmpty else { throw .invalidName("empty") }
        guard bytes.count <= Self.maximumLength else { throw .invalidName("\(bytes.count) bytes, above 255") }
        guard !bytes.contains(0) else { throw .invalidName("contains NUL") }
        guard String(validating: bytes, as: UTF8.self) != nil else { throw .invalidName("not valid UTF-8") }
        utf8 = bytes
    }

    public init(_ string: String) throws(IdentityError) {
        try self.init(utf8: Array(string.utf8))
    }

    public var description: String { String(decoding: utf8, as: UTF8.self) }

    /// The DHT key of this identity: SHA-256 of the name, truncated to 160 bits (seed, §Peer Discovery).
    public var dhtKey: [UInt8] { Array(Sodium.sha256(utf8).prefix(20)) }

    /// The key file's name inside `<data_dir>/identities/`: `<name>.key` when the name is made of
    /// [A-Za-z0-9_-] and inner dots (at most 200 bytes); otherwise `~` + hex of the first 16 bytes of
    /// SHA-256(name) + `.key`, so no name can reach outside the directory. The file records the full name.
    public var keyFileName: String {
        let plain = utf8.count <= 200 && utf8.first != UInt8(ascii: ".") && utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
        }
        if plain { return description + ".key" }
        return "~" + Hex.encode(Sodium.sha256(utf8).prefix(16)) + ".key"
    }
}

/// Lowercase hexadecimal.
package enum Hex {
    package static func encode(_ bytes: some Collection<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
