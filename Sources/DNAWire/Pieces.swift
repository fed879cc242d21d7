/// Messages larger than one datagram, split into numbered pieces and put back together with a bounded
/// buffer (docs/PROTOCOL.md §4.1). No datagram the library sends exceeds `Pieces.maximumDatagramSize`.
public enum Pieces {
    /// The largest datagram the library sends: the IPv6 minimum MTU (1,280) less the IPv6 and UDP
    /// headers (48) and room for a TURN ChannelData header, rounded down. IP fragments are dropped by
    /// many real networks, so nothing larger ever leaves.
    public static let maximumDatagramSize = 1200
    /// A message has at most 32 pieces, so that one 32-bit word says which have arrived.
    public static let maximumCount = 32

    /// Number of pieces of a `length`-byte message (an empty message is one empty piece).
    public static func count(length: Int, pieceSize: Int) -> Int {
        max(1, (length + pieceSize - 1) / pieceSize)
    }

    /// The byte range of piece `index` in a `length`-byte message.
    public static func range(of index: Int, length: Int, pieceSize: Int) -> Range<Int> {
        let start = min(index * pieceSize, length)
        return start..<min(start + pieceSize, length)
    }

    /// The bitmap with the first `count` bits set: every piece present.
    public static func all(_ count: Int) -> UInt32 {
        count >= 32 ? UInt32.max : (UInt32(1) << UInt32(count)) - 1
    }
}

/// Why a piece was refused.
public enum PieceError: Error, Equatable, Sendable {
    /// The message would be larger than the receiver accepts for its kind.
    case tooLarge(length: Int, maximum: Int)
    /// The piece count does not match the message length, or is zero or above `Pieces.maximumCount`.
    case badCount(count: Int, length: Int)
    /// The index is not below the count.
    case badIndex(index: Int, count: Int)
    /// The piece is not as long as its place in the message says.
    case badLength(index: Int, expected: Int, actual: Int)
    /// The piece says a different message length or count than the earlier pieces of the message.
    case inconsistent
    /// The piece repeats one already received with different bytes.
    case conflicting(index: Int)
}

/// One message being put back together. The buffer is allocated once, at the declared length, after
/// that length was checked against the maximum: a peer cannot make it grow.
public struct Reassembly: Sendable {
    public let length: Int
    public let count: Int
    public let pieceSize: Int
    /// Bit i is set when piece i has arrived.
    public private(set) var received: UInt32 = 0
    private var buffer: [UInt8]

    /// Checks the numbering before any memory is committed.
    public init(length: Int, count: Int, maximumLength: Int, pieceSize: Int) throws(PieceError) {
        guard length <= maximumLength else { throw .tooLarge(length: length, maximum: maximumLength) }
        guard count >= 1, count <= Pieces.maximumCount, count == Pieces.count(length: length, pieceSize: pieceSize) else {
            throw .badCount(count: count, length: length)
        }
        self.length = length
        self.count = count
        self.pieceSize = pieceSize
        buffer = [UInt8](repeating: 0, count: length)
    }

    public var isComplete: Bool { received == Pieces.all(count) }

    /// Adds piece `index`; returns false when it had already arrived (with the same bytes).
    /// A piece that disagrees with the message's numbering or with an earlier copy is refused.
    public mutating func add(index: Int, length: Int, count: Int, bytes: some Collection<UInt8>) throws(PieceError) -> Bool {
        guard length == self.length, count == self.count else { throw .inconsistent }
        guard index >= 0, index < count else { throw .badIndex(index: index, count: count) }
        let range = Pieces.range(of: index, length: length, pieceSize: pieceSize)
        guard bytes.count == range.count else {
            throw .badLength(index: index, expected: range.count, actual: bytes.count)
        }
        let bit = UInt32(1) << UInt32(index)
        if received & bit != 0 {
            guard buffer[range].elementsEqual(bytes) else { throw .conflicting(index: index) }
            return false
        }
        buffer.replaceSubrange(range, with: bytes)
        received |= bit
        return true
    }

    /// The whole message, once every piece has arrived.
    public var message: [UInt8]? { isComplete ? buffer : nil }

    /// Bytes this reassembly holds.
    public var retainedBytes: Int { buffer.capacity }
}
