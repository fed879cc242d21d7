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
    /// The datagram size (UDP payload bytes) a side's first message starts with: 1,200
    /// (`Pieces.maximumDatagramSize`, BASE_PLPMTU), or a smaller size already known for the path
    /// (docs/PROTOCOL.md §9). A side steps down from it on its own when large datagrams are lost.
    public var datagramSize: Int = Pieces.maximumDatagramSize
    /// The cipher suites this side offers (initiator: a set, its order is not sent) and accepts
    /// (responder: in its order of preference, it picks its first that the initiator offered;
    /// docs/PROTOCOL.md §4.2).
    /// Suites this CPU lacks are left out. Default: AES-256-GCM where the CPU has AES instructions,
    /// then ChaCha20-Poly1305.
    public var suites: [CipherSuite] = CipherSuite.preferred
    /// Whether this side offers (initiator) or accepts (responder) records sharing a datagram
    /// (docs/PROTOCOL.md §3, §4.2): the session's `sharesDatagrams` is true when both do.
    public var sharesDatagrams = true

    public init() {}
}

/// A handshake datagram: a piece of a message, or the acknowledgement of pieces (docs/PROTOCOL.md §4.1).
/// Everything is in the payload, under the frame's CRC-32; the header's sequence and reserved bytes
/// are zero, so that any change to any byte is detected.
///
/// Piece (type 0x0010): session id (4) | kind (1) | index (1) | count (1) | 0 (1) | message length (4) |
/// the piece's bytes. Every piece but the last has the same size, at most `pieceSize` (a sender that
/// stepped down to smaller datagrams cuts the message again with smaller pieces, §9); the receiver
/// derives the size from the count and the length. Acknowledgement (type 0x0011): session id (4) |
/// kind (1) | 0 (1) | count (1) | 0 (1) | bitmap of the pieces received (4), and, when the pieces it
/// acknowledges are not of `pieceSize` bytes, their piece size (2). Integers big-endian.
enum HandshakeDatagram: Equatable {
    case piece(session: UInt32, kind: HandshakeKind, index: Int, count: Int, length: Int, bytes: ArraySlice<UInt8>)
    case ack(session: UInt32, kind: HandshakeKind, count: Int, pieceSize: Int, received: UInt32)

    /// Bytes before the piece in a piece's payload.
    static let pieceHeaderSize = 12
    /// Bytes of a datagram that are not the message: frame header and piece header.
    static let overhead = FrameHeader.size + pieceHeaderSize
    /// The largest piece: a 1,200-byte datagram less the frame header and the piece header. Every
    /// piece but the last of a message is this long unless the sender stepped down (§9).
    static let pieceSize = Pieces.maximumDatagramSize - overhead

    /// The piece size of datagrams of at most `datagramSize` bytes.
    static func pieceSize(datagramSize: Int) -> Int { max(1, min(datagramSize, Pieces.maximumDatagramSize) - overhead) }

    static let decoder = FrameDecoder(maximumPayloadLength: Pieces.maximumDatagramSize - FrameHeader.size)

    /// The piece size of a piece that `init(parsing:)` accepted (nil for an acknowledgement).
    var pieceSize: Int? {
        guard case .piece(_, _, let index, let count, let length, let bytes) = self,
              case .success(let (size, _)) = Pieces.place(index: index, count: count, length: length, bytes: bytes.count) else { return nil }
        return size
    }

    var session: UInt32 {
        switch self {
        case .piece(let session, _, _, _, _, _), .ack(let session, _, _, _, _): session
        }
    }

    private static func prefix(session: UInt32, kind: HandshakeKind, index: Int, count: Int, last: UInt32) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(pieceHeaderSize + 2)
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: session >> UInt32(shift))) }
        bytes += [kind.rawValue, UInt8(truncatingIfNeeded: index), UInt8(truncatingIfNeeded: count), 0]
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: last >> UInt32(shift))) }
        return bytes
    }

    /// The datagrams carrying `message`, one per piece of `pieceSize` bytes (the last shorter).
    static func pieces(of message: [UInt8], session: UInt32, kind: HandshakeKind, pieceSize: Int = pieceSize) -> [[UInt8]] {
        let count = Pieces.count(length: message.count, pieceSize: pieceSize)
        return (0..<count).map { index in
            let range = Pieces.range(of: index, length: message.count, pieceSize: pieceSize)
            let payload = prefix(session: session, kind: kind, index: index, count: count, last: UInt32(message.count))
                + message[range]
            // Cannot fail: a piece is far below the format's 4 GiB limit.
            return (try? FrameEncoder.encode(type: .handshake, sequence: 0, payload: payload)) ?? []
        }
    }

    /// An acknowledgement of the pieces `received` of a message cut into `count` pieces of `pieceSize`.
    static func ack(session: UInt32, kind: HandshakeKind, count: Int, pieceSize: Int = pieceSize, received: UInt32) -> [UInt8] {
        var payload = prefix(session: session, kind: kind, index: 0, count: count, last: received)
        if count > 1, pieceSize != Self.pieceSize {
            payload += [UInt8(truncatingIfNeeded: pieceSize >> 8), UInt8(truncatingIfNeeded: pieceSize)]
        }
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
            let length = Int(last)
            if case .failure(let error) = Pieces.place(index: index, count: count, length: length,
                                                       bytes: payload.count - Self.pieceHeaderSize) {
                throw .piece(error)
            }
            self = .piece(session: session, kind: kind, index: index, count: count, length: length,
                          bytes: payload[Self.pieceHeaderSize...])
        } else {
            guard index == 0, payload.count == Self.pieceHeaderSize || payload.count == Self.pieceHeaderSize + 2 && count > 1 else {
                throw .unexpected("malformed acknowledgement")
            }
            var pieceSize = Self.pieceSize
            if payload.count > Self.pieceHeaderSize {
                pieceSize = Int(payload[12]) << 8 | Int(payload[13])
                guard pieceSize >= 1, pieceSize < Self.pieceSize else { throw .unexpected("acknowledged piece size \(pieceSize)") }
            }
            guard last & ~Pieces.all(count) == 0 else { throw .piece(.badIndex(index: 31 - last.leadingZeroBitCount, count: count)) }
            self = .ack(session: session, kind: kind, count: count, pieceSize: pieceSize, received: last)
        }
    }
}

/// One handshake message being sent: its pieces, which bytes the peer has acknowledged, and the
/// retransmission timer. Only unacknowledged pieces are sent again.
///
/// Path size (docs/PROTOCOL.md §9, RFC 8899 §4.3 black hole detection): the message starts in
/// datagrams of `datagramSize` bytes. When the timer fires while no piece whose datagram is larger
/// than the next smaller size of `Pieces.datagramSizes` has been acknowledged, the large pieces go
/// again together with probes: the same bytes cut for the next smaller size. An acknowledgement of
/// a probe while no large piece was acknowledged shows datagrams of this size are lost on the path
/// and smaller ones are not: the message is cut smaller from then on. Without any acknowledgement,
/// the second such expiry cuts it smaller too (the timer then starts again from the initial
/// timeout). Acknowledgements name the piece size they count in, so bytes acknowledged in any cut
/// count.
struct OutgoingMessage {
    let kind: HandshakeKind
    let session: UInt32
    /// The message's length; its bytes are those of `frames` (not kept twice).
    let length: Int
    /// The datagram size of the current cut (UDP payload bytes).
    private(set) var datagramSize: Int
    /// The current cut: one datagram per piece.
    private(set) var frames: [[UInt8]]
    private var pieceSize: Int
    /// Bit i of word i / 64: byte i of the message has been acknowledged.
    private var acknowledgedBytes: [UInt64]
    private var acknowledgedCount = 0
    /// A piece of the current cut whose datagram is larger than the next smaller size was acknowledged.
    private var largeAcknowledged = false
    private var silentRounds = 0
    /// The datagram size of the probes sent with the last retransmission, if any.
    private var probeSize: Int?
    private var timeout: UInt64
    private var timer: UInt64

    /// Timer expiries in a row with no large piece acknowledged before a message is cut smaller.
    static let silentRoundsBeforeStepDown = 2

    /// When unacknowledged pieces are next sent again; nil once every piece is acknowledged.
    var deadline: UInt64? { isDelivered ? nil : timer }

    init(_ message: [UInt8], session: UInt32, kind: HandshakeKind, datagramSize: Int = Pieces.maximumDatagramSize,
         now: UInt64, configuration: HandshakeConfiguration) {
        self.kind = kind
        self.session = session
        length = message.count
        let size = Pieces.datagramSizes.first { $0 <= datagramSize } ?? Pieces.minimumDatagramSize
        self.datagramSize = size
        pieceSize = HandshakeDatagram.pieceSize(datagramSize: size)
        frames = HandshakeDatagram.pieces(of: message, session: session, kind: kind, pieceSize: pieceSize)
        acknowledgedBytes = [UInt64](repeating: 0, count: (message.count + 63) / 64)
        timeout = configuration.initialRetransmitTimeout
        timer = now + timeout
    }

    /// Every byte of the message was acknowledged.
    private(set) var isDelivered = false

    private func acknowledged(_ range: Range<Int>) -> Bool {
        range.allSatisfy { acknowledgedBytes[$0 >> 6] & (1 << UInt64($0 & 63)) != 0 }
    }

    /// Records an acknowledgement of pieces cut at `pieceSize`; one whose count does not match that
    /// cut of this message is ignored.
    mutating func acknowledge(count: Int, pieceSize: Int = HandshakeDatagram.pieceSize, received: UInt32) {
        guard pieceSize >= 1, count == Pieces.count(length: length, pieceSize: pieceSize) else { return }
        let probed = probeSize.map { pieceSize == HandshakeDatagram.pieceSize(datagramSize: $0) && received != 0 } ?? false
        let largeBytes = (Pieces.stepBelow(datagramSize) ?? 0) - HandshakeDatagram.overhead
        for index in 0..<count where received & (UInt32(1) << UInt32(index)) != 0 {
            let range = Pieces.range(of: index, length: length, pieceSize: pieceSize)
            if range.count > largeBytes { largeAcknowledged = true }
            for byte in range where acknowledgedBytes[byte >> 6] & (1 << UInt64(byte & 63)) == 0 {
                acknowledgedBytes[byte >> 6] |= 1 << UInt64(byte & 63)
                acknowledgedCount += 1
            }
        }
        if acknowledgedCount == length, received != 0 { isDelivered = true }
        // A probe came through and no large piece did: the path drops datagrams of this size.
        if probed, !largeAcknowledged, let size = probeSize { stepDown(to: size) }
    }

    /// Everything was received: the peer's next message shows it.
    mutating func acknowledgeAll() {
        for index in acknowledgedBytes.indices { acknowledgedBytes[index] = .max }
        acknowledgedCount = length
        isDelivered = true
    }

    /// The pieces of the current cut not yet acknowledged.
    var unacknowledged: [[UInt8]] {
        frames.indices.filter { !acknowledged(Pieces.range(of: $0, length: length, pieceSize: pieceSize)) }.map { frames[$0] }
    }

    /// When the timer has fired: the pieces to send again, and the timer rearmed with a doubled
    /// timeout; or, after `silentRoundsBeforeStepDown` silent expiries, the message cut for the next
    /// smaller datagram size with the timer rearmed at the initial timeout.
    mutating func retransmit(now: UInt64, configuration: HandshakeConfiguration) -> [[UInt8]] {
        guard now >= timer, !isDelivered else { return [] }
        let largeBytes = (Pieces.stepBelow(datagramSize) ?? 0) - HandshakeDatagram.overhead
        let waitingForLarge = frames.indices.contains { index in
            let range = Pieces.range(of: index, length: length, pieceSize: pieceSize)
            return range.count > largeBytes && !acknowledged(range)
        }
        var probes: [[UInt8]] = []
        if !largeAcknowledged, waitingForLarge, let smaller = Pieces.stepBelow(datagramSize) {
            silentRounds += 1
            if silentRounds >= Self.silentRoundsBeforeStepDown {
                stepDown(to: smaller)
                timeout = configuration.initialRetransmitTimeout
                timer = now + timeout
                return unacknowledged
            }
            // Probes: the unacknowledged bytes cut for the smaller size, beside the large pieces.
            let probeCut = HandshakeDatagram.pieceSize(datagramSize: smaller)
            let message = frames.flatMap { $0[HandshakeDatagram.overhead...] }
            let cut = HandshakeDatagram.pieces(of: message, session: session, kind: kind, pieceSize: probeCut)
            probes = cut.indices.filter { !acknowledged(Pieces.range(of: $0, length: length, pieceSize: probeCut)) }.map { cut[$0] }
            probeSize = smaller
        }
        timeout = min(timeout * 2, configuration.maximumRetransmitTimeout)
        timer = now + timeout
        return unacknowledged + probes
    }

    /// Cuts the message again for datagrams of `size` bytes (the peer's cut size, or a step down).
    mutating func stepDown(to size: Int) {
        guard size < datagramSize else { return }
        datagramSize = Pieces.datagramSizes.first { $0 <= size } ?? Pieces.minimumDatagramSize
        pieceSize = HandshakeDatagram.pieceSize(datagramSize: datagramSize)
        let message = frames.flatMap { $0[HandshakeDatagram.overhead...] }
        frames = HandshakeDatagram.pieces(of: message, session: session, kind: kind, pieceSize: pieceSize)
        largeAcknowledged = false
        silentRounds = 0
        probeSize = nil
    }
}
