internal import CZlib

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`) of a byte range: the frame checksum.
public enum CRC32 {
    /// The checksum of `bytes`; 0 for an empty range.
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        return UInt32(truncatingIfNeeded: crc32_z(0, base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    /// The checksum of `bytes`.
    public static func checksum(_ bytes: some Collection<UInt8>) -> UInt32 {
        if let sum = bytes.withContiguousStorageIfAvailable({ checksum(UnsafeRawBufferPointer($0)) }) {
            return sum
        }
        return Array(bytes).withUnsafeBytes { checksum($0) }
    }
}
