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
    /// Payload bytes per piece (at most `Pieces.maximumPieceSize`, which keeps datagrams at 1,200 bytes).
    public var pieceSize: Int = Pieces.maximumPieceSize

    public init() {}
}

/// A handshake datagram: a piece of a message, or the acknowledgement of pieces (docs/PROTOCOL.md §4.1).
///
/// Piece (type 0x0010): sequence = piece index; reserved word0 = session id; word1 = kind << 24 |
/// piece count << 16; word2 = message length; payload = the piece.
/// Acknowledgement (type 0x0011): sequence = 0; word0 = session id; word1 = kind << 24 | piece count
/// << 16; word2 = bitmap of the pieces received; no payload.
enum HandshakeDatagram: Equatable {
    case piece(session: UInt32, kind: HandshakeKind, index: Int, count: Int, length: Int, bytes: ArraySlice<UInt8>)
    case ack(session: UInt32, kind: HandshakeKind, count: Int, received: UInt32)

    static let decoder = FrameDecoder(maximumPayloadLength: Pieces.maximumPieceSize)

    var session: UInt32 {
        switch self {
        case .piece(let session, _, _, _, _, _), .ack(let session, _, _, _): session
        }
    }

    static func kindWord(_ kind: HandshakeKind, count: Int) -> UInt32 {
        UInt32(kind.rawValue) << 24 | UInt32(count) << 16
    }

    /// The datagrams carrying `message`, one per piece.
    static func pieces(of message: [UInt8], session: UInt32, kind: HandshakeKind, pieceSize: Int) -> [[UInt8]] {
        let count = Pieces.count(length: message.count, pieceSize: pieceSize)
        return (0..<count).map { index in
            let range = Pieces.range(of: index, length: message.count, pieceSize: pieceSize)
            let reserved = FrameReserved(word0: session, word1: kindWord(kind, count: count), word2: UInt32(message.count))
            // Cannot fail: a piece is far below the format's 4 GiB limit.
            return (try? FrameEncoder.encode(type: .handshake, sequence: UInt32(index), reserved: reserved,
                                             payload: message[range])) ?? []
        }
    }

    static func ack(session: UInt32, kind: HandshakeKind, count: Int, received: UInt32) -> [UInt8] {
        let reserved = FrameReserved(word0: session, word1: kindWord(kind, count: count), word2: received)
        return (try? FrameEncoder.encode(type: .handshakeAck, sequence: 0, reserved: reserved, payload: [])) ?? []
    }

    init(parsing datagram: [UInt8]) throws(HandshakeError) {
        let frame: FrameDecoder.Frame
        do { frame = try Self.decoder.decode(datagram) } catch { throw .frame(error) }
        let header = frame.header
        let word1 = header.reserved.word1
        guard word1 & 0xFFFF == 0 else { throw .unexpected("reserved bits of a handshake frame are set") }
        guard let kind = HandshakeKind(rawValue: UInt8(word1 >> 24)) else {
            throw .unexpected("handshake message kind \(word1 >> 24)")
        }
        let count = Int((word1 >> 16) & 0xFF)
        guard count >= 1, count <= Pieces.maximumCount else { throw .piece(.badCount(count: count, length: -1)) }
        switch header.type {
        case .handshake:
            self = .piece(session: header.reserved.word0, kind: kind, index: Int(header.sequence), count: count,
                          length: Int(header.reserved.word2), bytes: frame.payload)
        case .handshakeAck:
            guard header.sequence == 0, frame.payload.isEmpty else { throw .unexpected("acknowledgement with data") }
            guard header.reserved.word2 & ~Pieces.all(count) == 0 else { throw .piece(.badIndex(index: 31, count: count)) }
            self = .ack(session: header.reserved.word0, kind: kind, count: count, received: header.reserved.word2)
        default:
            throw .unexpected("frame type \(header.type) is not a handshake frame")
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
        frames = HandshakeDatagram.pieces(of: message, session: session, kind: kind, pieceSize: configuration.pieceSize)
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
