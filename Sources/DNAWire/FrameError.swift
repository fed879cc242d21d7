/// Why a frame could not be decoded or encoded. Every decoder of network bytes in DNAWire throws
/// only this type; the C shell maps each case to its own `DNA_ERR_*` code.
public enum FrameError: Error, Equatable, Sendable {
    /// Fewer than 32 bytes: not even a header.
    case truncatedHeader(length: Int)
    /// The first four bytes are not "DNA ".
    case badMagic(UInt32)
    /// A version other than 0x0100.
    case unsupportedVersion(UInt16)
    /// A type value this implementation does not know.
    case unknownType(UInt16)
    /// The declared payload length does not match the bytes that follow the header.
    case lengthMismatch(declared: UInt32, actual: Int)
    /// The CRC-32 of the payload is not the one in the header.
    case checksumMismatch(declared: UInt32, computed: UInt32)
    /// The payload is above the decoder's (or the format's) maximum.
    case payloadTooLarge(length: Int, maximum: Int)
    /// The output buffer cannot hold the encoded frame.
    case bufferTooSmall(needed: Int)
}
