/// The 12 reserved header bytes (offsets 20 to 31), read as three big-endian words.
/// Version 1.0 of the seed leaves them for future use; the transport's extensions that use them are
/// documented in docs/PROTOCOL.md. The codec carries them unchanged.
public struct FrameReserved: Equatable, Hashable, Sendable {
    public var word0: UInt32
    public var word1: UInt32
    public var word2: UInt32

    public init(word0: UInt32 = 0, word1: UInt32 = 0, word2: UInt32 = 0) {
        self.word0 = word0
        self.word1 = word1
        self.word2 = word2
    }

    public static let zero = FrameReserved()
}

/// The 32-byte header of a DNA frame (seed, §Message Frame Format), all fields in network byte order:
///
///     offset  size  field
///          0     4  magic           0x444E4120 ("DNA ")
///          4     2  version         0x0100
///          6     2  type            MessageType
///          8     4  sequence
///         12     4  payload length  bytes after the header
///         16     4  checksum        CRC-32 (IEEE, as zlib's crc32) of the payload
///         20    12  reserved
public struct FrameHeader: Equatable, Sendable {
    /// Header size in bytes (seed, §Message Frame Format).
    public static let size = 32
    /// "DNA " (seed, §Message Frame Format).
    public static let magic: UInt32 = 0x444E_4120
    /// Version 1.0 (seed, §Message Frame Format).
    public static let version: UInt16 = 0x0100

    public var type: MessageType
    public var sequence: UInt32
    public var payloadLength: UInt32
    public var checksum: UInt32
    public var reserved: FrameReserved

    public init(type: MessageType, sequence: UInt32, payloadLength: UInt32, checksum: UInt32,
                reserved: FrameReserved = .zero) {
        self.type = type
        self.sequence = sequence
        self.payloadLength = payloadLength
        self.checksum = checksum
        self.reserved = reserved
    }
}
