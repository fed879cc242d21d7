internal import CSodium

/// The parts of libsodium this layer uses: SHA-256, random bytes, wiping secrets.
package enum Sodium {
    /// sodium_init() once per process; it is safe to call again and from several threads.
    package static let ready: Bool = sodium_init() >= 0

    package static func sha256(_ bytes: some Collection<UInt8>) -> [UInt8] {
        _ = ready
        let input = Array(bytes)
        var digest = [UInt8](repeating: 0, count: Int(crypto_hash_sha256_BYTES))
        input.withUnsafeBufferPointer { source in
            _ = crypto_hash_sha256(&digest, source.baseAddress, UInt64(source.count))
        }
        return digest
    }

    package static func randomBytes(_ count: Int) -> [UInt8] {
        _ = ready
        var bytes = [UInt8](repeating: 0, count: count)
        randombytes_buf(&bytes, count)
        return bytes
    }

    /// Overwrites the bytes with zeros in a way the compiler does not remove.
    package static func wipe(_ bytes: inout [UInt8]) {
        bytes.withUnsafeMutableBytes { buffer in
            if let base = buffer.baseAddress { sodium_memzero(base, buffer.count) }
        }
    }
}

/// Secret bytes with one owner: wiped when the last reference goes, so that copies of the array
/// (which would escape the wipe) are never made.
final class Secret {
    private(set) var bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    deinit { Sodium.wipe(&bytes) }
}
