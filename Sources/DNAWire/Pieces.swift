import Glibc

/// Messages larger than one datagram, split into numbered pieces and put back together with a bounded
/// buffer (docs/PROTOCOL.md §4.1, §5.1, §9). No datagram the library sends exceeds
/// `Pieces.maximumDatagramSize`; on a path that drops datagrams of that size (a path MTU black hole,
/// §9) senders step down through `Pieces.datagramSizes`.
public enum Pieces {
    /// The largest datagram the library sends, in bytes of UDP payload: the IPv6 minimum MTU (1,280)
    /// less the IPv6 and UDP headers (48) and room for a TURN ChannelData header, rounded down. IP
    /// fragments are dropped by many real networks, so nothing larger ever leaves. This is the
    /// BASE_PLPMTU of RFC 8899 §5.1.2 (which recommends 1,200 bytes for IPv4 too), the size every
    /// sender starts with.
    public static let maximumDatagramSize = 1200
    /// The datagram sizes (UDP payload bytes) a sender steps down through when datagrams of one size
    /// are lost while smaller ones arrive (RFC 8899 §4.3, black hole detection), largest first:
    /// 1,200 (BASE_PLPMTU); 900, which fits an IPv4 MTU of 1,000 with the IPv4 and UDP headers (28)
    /// and a TURN Send indication's (about 48) or ChannelData's (4) framing; 500, which fits the IPv4
    /// datagram every host must accept (576, RFC 791) the same way: this library's MIN_PLPMTU.
    public static let datagramSizes = [1200, 900, 500]
    /// The smallest step, 500 bytes.
    public static var minimumDatagramSize: Int { datagramSizes[datagramSizes.count - 1] }
    /// A message has at most 32 pieces, so that one 32-bit word says which have arrived.
    public static let maximumCount = 32

    /// The step below `size` in `datagramSizes`, or nil at the smallest.
    public static func stepBelow(_ size: Int) -> Int? { datagramSizes.first { $0 < size } }

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

    /// Where a received piece belongs, whatever piece size its sender cut the message with: every
    /// piece but the last is P bytes and the count is ceil(length / P), so one piece gives P (a
    /// piece before the last is P long; the last is length − (count − 1) P long). Returns the piece
    /// size and the piece's byte range, or the reason the numbering is inconsistent. A message of
    /// one piece has piece size `length` (at least 1).
    public static func place(index: Int, count: Int, length: Int, bytes: Int) -> Result<(pieceSize: Int, range: Range<Int>), PieceError> {
        guard count >= 1, count <= maximumCount, length >= 0, count <= max(1, length) else {
            return .failure(.badCount(count: count, length: length))
        }
        guard index >= 0, index < count else { return .failure(.badIndex(index: index, count: count)) }
        if count == 1 {
            guard bytes == length else { return .failure(.badLength(index: index, expected: length, actual: bytes)) }
            return .success((max(1, length), 0..<length))
        }
        let pieceSize: Int
        if index < count - 1 {
            pieceSize = bytes
        } else {
            // The last piece: length − L must be (count − 1) whole pieces of at least L bytes.
            let rest = length - bytes
            guard bytes >= 1, rest > 0, rest % (count - 1) == 0 else {
                return .failure(.badLength(index: index, expected: length - (count - 1) * max(1, bytes), actual: bytes))
            }
            pieceSize = rest / (count - 1)
        }
        guard pieceSize >= 1, count == Self.count(length: length, pieceSize: pieceSize) else {
            return .failure(.badCount(count: count, length: length))
        }
        let range = Self.range(of: index, length: length, pieceSize: pieceSize)
        guard range.count == bytes else { return .failure(.badLength(index: index, expected: range.count, actual: bytes)) }
        return .success((pieceSize, range))
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
    /// The piece says a different message length than the earlier pieces of the message.
    case inconsistent
    /// The piece repeats bytes already received with different values.
    case conflicting(index: Int)
}

/// One message being put back together. The buffer is allocated once, at the declared length, after
/// that length was checked against the maximum: a peer cannot make it grow. Arrival is kept per
/// byte, so pieces of one message cut with different piece sizes (a sender that stepped down to
/// smaller datagrams, §9) fill the same buffer; bytes that arrive twice must be equal.
public struct Reassembly: Sendable {
    public let length: Int
    /// The piece size of the first piece that arrived (for a receiver answering in kind).
    public let firstPieceSize: Int
    /// The smallest piece size seen so far.
    public private(set) var smallestPieceSize: Int
    /// Bit i of word i / 64: byte i has arrived.
    private var arrived: [UInt64]
    private var arrivedCount = 0
    private var buffer: [UInt8]

    /// Checks the first piece's numbering and the length before any memory is committed.
    public init(length: Int, count: Int, index: Int, bytes: Int, maximumLength: Int) throws(PieceError) {
        guard length <= maximumLength else { throw .tooLarge(length: length, maximum: maximumLength) }
        let place = Pieces.place(index: index, count: count, length: length, bytes: bytes)
        guard case .success(let (pieceSize, _)) = place else {
            if case .failure(let error) = place { throw error }
            throw .inconsistent
        }
        self.length = length
        firstPieceSize = pieceSize
        smallestPieceSize = pieceSize
        buffer = [UInt8](repeating: 0, count: length)
        arrived = [UInt64](repeating: 0, count: (length + 63) / 64)
    }

    public var isComplete: Bool { arrivedCount == length }

    private func has(_ byte: Int) -> Bool { arrived[byte >> 6] & (1 << UInt64(byte & 63)) != 0 }

    /// The end of the run of bytes from `start` (before `limit`) that all have arrived (`arrived`)
    /// or all have not: read a bitmap word at a time.
    private func runEnd(from start: Int, to limit: Int, arrived wanted: Bool) -> Int {
        var offset = start
        while offset < limit {
            let bit = offset & 63
            let word = arrived[offset >> 6] >> UInt64(bit)
            // Trailing zeros of `word` (or of its complement): the bytes from `offset` on like the
            // first; the bits shifted in past the word's end are cut off by `64 - bit`.
            let run = min((wanted ? ~word : word).trailingZeroBitCount, 64 - bit)
            offset += run
            if run < 64 - bit { break }
        }
        return min(offset, limit)
    }

    /// Marks every byte of `range` as arrived (none of them had).
    private mutating func markArrived(_ range: Range<Int>) {
        var offset = range.lowerBound
        while offset < range.upperBound {
            let bit = offset & 63
            let count = min(64 - bit, range.upperBound - offset)
            arrived[offset >> 6] |= (count == 64 ? ~0 : (1 << UInt64(count)) - 1) << UInt64(bit)
            offset += count
        }
        arrivedCount += range.count
    }

    /// Whether every byte of `range` has arrived.
    public func holds(_ range: Range<Int>) -> Bool {
        range.isEmpty || runEnd(from: range.lowerBound, to: range.upperBound, arrived: true) == range.upperBound
    }

    /// Adds piece `index` of a `count`-piece cut of the message; returns false when every byte of it
    /// had already arrived (with the same values). A piece that disagrees with the message's length
    /// or its own numbering, or with bytes already received, is refused.
    @discardableResult
    public mutating func add(index: Int, length: Int, count: Int, bytes: some Collection<UInt8>) throws(PieceError) -> Bool {
        // One copy into contiguous bytes, then only concrete code: a generic walk over the piece
        // byte by byte (unspecialized across modules) cost a runtime metadata lookup per byte and
        // took half the CPU of a busy DHT node.
        try add(index: index, length: length, count: count, piece: Array(bytes))
    }

    private mutating func add(index: Int, length: Int, count: Int, piece: [UInt8]) throws(PieceError) -> Bool {
        guard length == self.length else { throw .inconsistent }
        let place = Pieces.place(index: index, count: count, length: length, bytes: piece.count)
        guard case .success(let (pieceSize, range)) = place else {
            if case .failure(let error) = place { throw error }
            throw .inconsistent
        }
        // Runs of bytes that arrived before (compared) and runs that did not (copied), a bitmap
        // word and a memcmp/memcpy at a time: a byte at a time, this was 30% of the DHT fuzz
        // target's time (each byte's comparisons instrumented) and 2 x 1,200 steps per piece.
        let base = range.lowerBound
        var fresh = false
        var offset = base
        while offset < range.upperBound {
            let had = has(offset)
            let end = runEnd(from: offset, to: range.upperBound, arrived: had)
            if had {
                let same = buffer.withUnsafeBytes { held in
                    piece.withUnsafeBytes { new in
                        guard let held = held.baseAddress, let new = new.baseAddress else { return false }
                        return memcmp(held + offset, new + (offset - base), end - offset) == 0
                    }
                }
                guard same else { throw .conflicting(index: index) }
            } else {
                fresh = true
            }
            offset = end
        }
        guard fresh else { return false }
        offset = base
        while offset < range.upperBound {
            let had = has(offset)
            let end = runEnd(from: offset, to: range.upperBound, arrived: had)
            if !had {
                buffer.withUnsafeMutableBytes { held in
                    piece.withUnsafeBytes { new in
                        guard let held = held.baseAddress, let new = new.baseAddress else { return }
                        (held + offset).copyMemory(from: new + (offset - base), byteCount: end - offset)
                    }
                }
                markArrived(offset..<end)
            }
            offset = end
        }
        smallestPieceSize = min(smallestPieceSize, pieceSize)
        return true
    }

    /// Bit i set when piece i of the message cut into pieces of `pieceSize` bytes has wholly arrived.
    public func received(pieceSize: Int) -> UInt32 {
        let count = Pieces.count(length: length, pieceSize: pieceSize)
        guard count <= Pieces.maximumCount else { return 0 }
        var bitmap: UInt32 = 0
        for index in 0..<count where holds(Pieces.range(of: index, length: length, pieceSize: pieceSize)) {
            bitmap |= 1 << UInt32(index)
        }
        return bitmap
    }

    /// The whole message, once every byte has arrived.
    public var message: [UInt8]? { isComplete ? buffer : nil }

    /// Bytes this reassembly holds.
    public var retainedBytes: Int { buffer.capacity + arrived.capacity * 8 }
}
