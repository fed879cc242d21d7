import DNAWire

/// How the handshake behaves in time; times are milliseconds of the caller's monotonic clock.
public struct HandshakeConfiguration: Sendable {
    /// First retransmission of unacknowledged pieces after this long; it doubles each time.
    public var initialRetransmitTimeout: UInt64 = 500
    /// The retransmission timeout stops doubling here.
    public var maximumRetransmitTimeout: UInt64 = 4000
    /// A handshake not finished this long after it began fails with `.timeout` (and its state goes).
    public var timeout: UInt64 = 15_000
    /// Responder: at most this many handshakes in progress; a new one evicts the oldest.
    public var maximumPending: Int = 128
    /// Responder: how many answered initiations it remembers to refuse their replays.
    public var replayMemory: Int = 4096

    public init() {}
}

/// A handshake datagram: a piece of a message, or the acknowledgement of pieces (docs/PROTOCOL.md §4.1).
/// Everything is in the payload, under the frame's CRC-32; the header's sequence and reserved bytes
/// are zero, so that any change to any byte is detected.
///
/// Piece (type 0x0010): session id (4) | kind (1) | index (1) | count (1) | 0 (1) | message length (4) |
/// the piece's bytes. Acknowledgement (type 0x0011): session id (4) | kind (1) | 0 (1) | count (1) |
/// 0 (1) | bitmap of the pieces received (4). Integers big-endian.
enum HandshakeDatagram: Equatable {
    case piece(session: UInt32, kind: HandshakeKind, index: Int, count: Int, length: Int, bytes: ArraySlice<UInt8>)
    case ack(session: UInt32, kind: HandshakeKind, count: Int, received: UInt32)

    /// Bytes before the piece in a piece's payload.
    static let pieceHeaderSize = 12
    /// Message bytes per piece (fixed by the protocol): a 1,200-byte datagram less the frame header
    /// and the piece header. Every piece but the last of a message is this long.
    static let pieceSize = Pieces.maximumDatagramSize - FrameHeader.size - pieceHeaderSize

    static let decoder = FrameDecoder(maximumPayloadLength: Pieces.maximumDatagramSize - FrameHeader.size)

    var session: UInt32 {
        switch self {
        case .piece(let session, _, _, _, _, _), .ack(let session, _, _, _): session
        }
    }

    private static func prefix(session: UInt32, kind: HandshakeKind, index: Int, count: Int, last: UInt32) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(pieceHeaderSize)
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: session >> UInt32(shift))) }
        bytes += [kind.rawValue, UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: count), 0]
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: last >> UInt32(shift))) }
        return bytes
    }

    /// The datagrams carrying `message`, one per piece.
    static func pieces(of message: [UInt8], session: UInt32, kind: HandshakeKind) -> [[UInt8]] {
        let count = Pieces.count(length: message.count, pieceSize: pieceSize)
        return (0..<count).map { index in
            let range = Pieces.range(of: index, length: message.count, pieceSize: pieceSize)
            let payload = prefix(session: session, kind: kind, index: index, count: count, last: UInt32(message.count))
                + message[range]
            // Cannot fail: a piece is far below the format's 4 GiB limit.
            return (try? FrameEncoder.encode(type: .handshake, sequence: 0, payload: payload)) ?? []
        }
    }

    static func ack(session: UInt32, kind: HandshakeKind, count: Int, received: UInt32) -> [UInt8] {
        let payload = prefix(session: session, kind: kind, index: 0, count: count, last: received)
        return (try? FrameEncoder.encode(type: .handshakeAck, sequence: 0, payload: payload)) ?? []
    }

    init(parsing datagram: [UInt8]) throws(HandshakeError) {
        let frame: FrameDecoder.Frame
        do { frame = try Self.decoder.decode(datagram) } catch { throw .frame(error) }
        let header = frame.header
        guard header.type == .handshake || header.type == .handshakeAck else {
            throw .unexpected("frame type \(header.type) is not a handshake frame")
        }
        guard header.sequence == 0, header.reserved == .zero else {
            throw .unexpected("sequence or reserved bytes of a handshake frame are not zero")
        }
        let payload = Array(frame.payload)
        guard payload.count >= Self.pieceHeaderSize else { throw .malformed("handshake frame of \(payload.count) bytes") }
        let session = payload[0..<4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let last = payload[8..<12].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard let kind = HandshakeKind(rawValue: payload[4]) else { throw .unexpected("handshake message kind \(payload[4])") }
        let index = Int(payload[5]), count = Int(payload[6])
        guard payload[7] == 0 else { throw .unexpected("unused bits of a handshake frame are set") }
        guard count >= 1, count <= Pieces.maximumCount else { throw .piece(.badCount(count: count, length: Int(last))) }
        if header.type == .handshake {
            let length = Int(last), bytes = payload.count - Self.pieceHeaderSize
            guard count == Pieces.count(length: length, pieceSize: Self.pieceSize) else {
                throw .piece(.badCount(count: count, length: length))
            }
            guard index < count else { throw .piece(.badIndex(index: index, count: count)) }
            let expected = Pieces.range(of: index, length: length, pieceSize: Self.pieceSize).count
            guard bytes == expected else { throw .piece(.badLength(index: index, expected: expected, actual: bytes)) }
            self = .piece(session: session, kind: kind, index: index, count: count, length: Int(last),
                          bytes: payload[Self.pieceHeaderSize...])
        } else {
            guard index == 0, payload.count == Self.pieceHeaderSize else { throw .unexpected("malformed acknowledgement") }
            guard last & ~Pieces.all(count) == 0 else { throw .piece(.badIndex(index: 31 - last.leadingZeroBitCount, count: count)) }
            self = .ack(session: session, kind: kind, count: count, received: last)
        }
    }
}

/// One handshake message being sent: its pieces, which the peer has acknowledged, and the
/// retransmission timer. Only unacknowledged pieces are sent again.
struct OutgoingMessage {
    let kind: HandshakeKind
    let frames: [[UInt8]]
    private(set) var acknowledged: UInt32 = 0
    private var timeout: UInt64
    private var timer: UInt64

    /// When unacknowledged pieces are next sent again; nil once every piece is acknowledged.
    var deadline: UInt64? { isDelivered ? nil : timer }

    init(_ message: [UInt8], session: UInt32, kind: HandshakeKind, now: UInt64, configuration: HandshakeConfiguration) {
        self.kind = kind
        frames = HandshakeDatagram.pieces(of: message, session: session, kind: kind)
        timeout = configuration.initialRetransmitTimeout
        timer = now + timeout
    }

    var isDelivered: Bool { acknowledged == Pieces.all(frames.count) }

    /// Records an acknowledgement; one that names another count is ignored.
    mutating func acknowledge(count: Int, received: UInt32) {
        guard count == frames.count else { return }
        acknowledged |= received & Pieces.all(frames.count)
    }

    /// Everything was received: the peer's next message shows it.
    mutating func acknowledgeAll() { acknowledged = Pieces.all(frames.count) }

    /// The pieces not yet acknowledged.
    var unacknowledged: [[UInt8]] {
        frames.indices.filter { acknowledged & (UInt32(1) << UInt32($0)) == 0 }.map { frames[$0] }
    }

    /// When the timer has fired: the pieces to send again, and the timer rearmed with a doubled timeout.
    mutating func retransmit(now: UInt64, configuration: HandshakeConfiguration) -> [[UInt8]] {
        guard now >= timer, !isDelivered else { return [] }
        timeout = min(timeout * 2, configuration.maximumRetransmitTimeout)
        timer = now + timeout
        return unacknowledged
    }
}
