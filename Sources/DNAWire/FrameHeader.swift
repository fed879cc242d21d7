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

    /// The frames of a datagram that holds several laid end to end (docs/PROTOCOL.md §3: records
    /// sharing a datagram), as byte ranges in order, together covering the datagram: each frame as
    /// long as its header says (32 + payload length). The rest, from a point that does not start
    /// with the magic or whose length runs past the end, is one range; so is a datagram whose first
    /// frame is not whole, or is an empty frame followed by more bytes (no sealed record is). A
    /// datagram of one frame is one range. Nothing is checked beyond magic and length: each range
    /// is then decoded (or opened) on its own.
    public static func frames(in datagram: UnsafeRawBufferPointer) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        var offset = 0
        while offset < datagram.count {
            var end = datagram.count
            if datagram.count - offset >= size,
               datagram.loadUnaligned(fromByteOffset: offset, as: UInt32.self).bigEndian == magic {
                let length = Int(datagram.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self).bigEndian)
                if length <= datagram.count - offset - size { end = offset + size + length }
            }
            if offset == 0, end < datagram.count, end == size { return [0..<datagram.count] }
            ranges.append(offset..<end)
            offset = end
        }
        return ranges
    }
}
