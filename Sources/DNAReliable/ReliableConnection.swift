import DNAWire

/// A frame for the record layer to seal and send: type, reserved words 0 and 1, plaintext payload.
public struct OutgoingFrame: Equatable, Sendable {
    public var type: MessageType
    public var word0: UInt32
    public var word1: UInt32
    public var payload: [UInt8]

    /// The frame unsealed (sequence 0, word 2 zero), for tests and plaintext paths.
    public var bytes: [UInt8] {
        (try? FrameEncoder.encode(type: type, sequence: 0, reserved: FrameReserved(word0: word0, word1: word1), payload: payload)) ?? []
    }
}

/// What a connection tells its driver.
public enum ReliableEvent: Equatable, Sendable {
    /// A whole message, in order on its stream, exactly once.
    case message(stream: UInt32, bytes: [UInt8])
    /// The peer answered none of 3 keepalive pings: the path is gone.
    case dead
    /// The peer closed the connection (a CLOSE frame); nothing more will arrive. Its reason, if it
    /// gave one, is `ReliableConnection.closeReason`.
    case closed
    /// The peer's presence (DNA_MSG_PRESENCE).
    case presence(PresenceStatus)
}

public enum PresenceStatus: UInt8, Sendable {
    case online = 0, away = 1, busy = 2, offline = 3
}

/// Why a side refused a connection it had completed the handshake for: the one byte a CLOSE may
/// carry (docs/PROTOCOL.md §7.5, §7.6). An empty CLOSE is a clean end.
public enum CloseReason: UInt8, Sendable, CustomStringConvertible {
    /// The accepting side found no signed entry of the initiator's name in the DHT.
    case noEntry = 1
    /// The initiator's entry in the DHT carries another key than the one it proved.
    case otherKey = 2

    public var description: String {
        switch self {
        case .noEntry: "it found no entry of this identity in the DHT (its announcement is stored nowhere)"
        case .otherKey: "this identity's entry in the DHT carries another key than the one this side proved"
        }
    }
}

public enum ReliableError: Error, Equatable, Sendable {
    /// The message is larger than `maximumMessageSize`.
    case tooLarge(Int)
    /// The send buffer holds `maximumQueuedBytes` already: wait for acknowledgements.
    case full
    case closed
}

/// Settings of a connection. Times in milliseconds, sizes in bytes.
public struct ReliableConfiguration: Sendable {
    /// Plaintext bytes of message per DATA frame: with the frame header, the packet header, the AEAD
    /// tag and TURN's overhead a datagram stays under 1,200 bytes.
    public var fragmentSize = 1100
    /// The largest datagram (UDP payload bytes) the path carries, as the handshake found it
    /// (docs/PROTOCOL.md §9): fragments are at most this less the frame header, the DATA header and
    /// the AEAD tag (76 bytes), and at most `fragmentSize`. 1,200 (BASE_PLPMTU) gives `fragmentSize`.
    public var datagramSize = Pieces.maximumDatagramSize
    public var maximumMessageSize = 16 * 1024 * 1024
    /// Bytes the receiver holds for messages its application has not taken (partly reassembled,
    /// waiting for an earlier one, or delivered and not yet `taken`), each charged its length plus
    /// `ReliableConnection.messageCharge`; advertised in every ACK (§7.2). Its last eighth is kept
    /// for a stream's next message to be taken, so that one stream cannot hold up the others.
    public var receiveBuffer = 32 * 1024 * 1024
    /// Bytes of messages the sender holds (queued, or sent and not wholly acknowledged) before `send`
    /// says `.full` (backpressure); the last eighth only for a stream that holds nothing (§7.2).
    public var maximumQueuedBytes = 32 * 1024 * 1024
    public var initialWindowPackets = 10
    /// The congestion window's ceiling (bytes of fragments in flight), as TCP's is the receiver's
    /// socket buffer: what is in flight may all sit in the peer's UDP receive buffer at once, and a
    /// datagram that does not fit there is lost at the receiver. 2 MiB is about 1,900 datagrams,
    /// 4.4 MB of kernel memory on Linux (about 2.3 KB each), within the 8 MiB a direct path's socket
    /// gets (4 MiB asked, doubled by the kernel). Measured on loopback (bench/iroh_compare.py, 256 MiB
    /// in 1 MiB messages): without it the window grew until the receiving socket overflowed (19,100
    /// datagrams dropped in one run). 2 MiB per round trip still allows 20 MB/s at 100 ms.
    public var maximumWindow = 2 * 1024 * 1024
    /// RFC 6298 bounds, with a floor of 50 ms instead of 1 s (RFC 9002's PTO has none; the receiver's
    /// delayed ACK waits at most `acknowledgementDelay`, 1 ms): on a LAN or in the lab, under 10%
    /// loss, 200 ms made RTOs take most of the time (2,000 messages: 19.4 s at 200 ms, 8.5 s at 50 ms).
    public var minimumRTO: UInt64 = 50
    public var maximumRTO: UInt64 = 60_000
    public var initialRTO: UInt64 = 1000
    /// A first RTT sample (ms), taken at most as `initialRTO` / 3: the handshake's time, an upper
    /// bound (RFC 9002 §6.2.2 likewise takes the handshake's round trips). Without it the first RTO
    /// is `initialRTO` and no tail loss probe goes out before a sample: in the lab at 10% loss a
    /// first flight whose acknowledgements were lost waited 1 s, 40% of a 32 MiB transfer.
    public var handshakeRTT: UInt64?
    /// A PING after this long without anything received; 3 unanswered pings mean the peer is gone.
    public var keepaliveInterval: UInt64 = 25_000
    public var missedPingsForDead = 3
    /// The shortest wait for a PONG (ms); it is otherwise 3 RTOs. With 1 s a NAT rebinding on an
    /// active connection stalled it 3.8 s before the path was found lost (issue 19); with 250 ms,
    /// about 1 s on a path of a few ms.
    public var minimumPingWait: UInt64 = 250
    /// The sender sends at most this many datagrams per call.
    public var burst = 64
    /// Delayed acknowledgement (as TCP's and QUIC's): an ACK goes out once this many packets arrived
    /// unacknowledged, with the next DATA this side sends, at once on a gap or a duplicate, and
    /// otherwise `acknowledgementDelay` ms after the first unacknowledged packet. One ACK per
    /// packet made half the datagrams of a one-way stream ACKs. The ACK is built when the frames
    /// are taken, so the packets handed in between two `takeFrames` share one.
    public var acknowledgeEvery = 2
    public var acknowledgementDelay: UInt64 = 1
    /// Ranges of packets received above the cumulative number that a receiver keeps (16 bytes
    /// each). A packet that would open one more is dropped unacknowledged (the sender resends it as
    /// lost), so that a peer spreading packet numbers cannot make the receiver keep or sort more
    /// (issue 15). 1,024 ranges cover a window of 3,500 packets in flight at 30% loss.
    public var maximumReceivedRanges = 1024

    public init() {}
}

/// One side of a reliable, multiplexed message connection as a sans-I/O state machine
/// (docs/PROTOCOL.md §7): messages and received frames go in with the time; frames to send (to be
/// sealed by the record layer), timers and delivered messages come out.
///
/// DATA frames carry one fragment each and a fresh packet number (a retransmission is a new packet,
/// so RTT samples are never ambiguous); ACK frames carry the cumulative packet number, up to 32
/// ranges received above it, and the receive window. Loss: 3 later packets acknowledged, or 9/8 RTT
/// later ones, or the RTO (RFC 6298). Congestion: NewReno (slow start, congestion avoidance, one
/// window reduction per round trip, a one-packet window after an RTO), reduced to no less than the
/// Westwood+ estimate, and not at all for a loss that looks random (no queue in the RTT, §7.3).
public final class ReliableConnection {
    public let configuration: ReliableConfiguration

    // MARK: Sender

    private final class Outgoing {
        let number: UInt64
        let bytes: [UInt8]
        /// The message's cut: fragments of `fragmentSize` bytes (the last shorter).
        private(set) var fragmentSize: Int
        private(set) var fragmentCount: Int
        var nextFragment = 0
        var acknowledged: [Bool]
        var acknowledgedCount = 0

        init(number: UInt64, bytes: [UInt8], fragmentSize: Int) {
            self.number = number
            self.bytes = bytes
            self.fragmentSize = fragmentSize
            fragmentCount = max(1, (bytes.count + fragmentSize - 1) / fragmentSize)
            acknowledged = [Bool](repeating: false, count: fragmentCount)
        }

        /// Cuts the message again into fragments of `size` bytes (§9): nothing of it counts as
        /// acknowledged any more. Returns the new fragments that hold only bytes already sent (to
        /// be sent again); `nextFragment` goes on after them.
        func recut(to size: Int) -> Range<Int> {
            let sentBytes = min(bytes.count, nextFragment * fragmentSize)
            let wasWhollySent = nextFragment >= fragmentCount
            fragmentSize = size
            fragmentCount = max(1, (bytes.count + size - 1) / size)
            acknowledged = [Bool](repeating: false, count: fragmentCount)
            acknowledgedCount = 0
            nextFragment = wasWhollySent ? fragmentCount : nextFragment == 0 ? 0 : max(1, sentBytes / size)
            return 0..<nextFragment
        }
    }

    /// A stream's messages: those with fragments never sent (FIFO from `head`; a slot is emptied as
    /// soon as its message's last fragment is sent, so a message is held only while it is queued or
    /// not wholly acknowledged), and every message not wholly acknowledged yet, by number.
    private final class SendStream {
        var unsent: [Outgoing?] = []
        var head = 0
        var live: [UInt64: Outgoing] = [:]
        /// Messages wholly acknowledged that the peer's application has not taken yet (as its ACKs
        /// last said): what a connection that dies now did not deliver (§7.8), by number.
        var untaken: [UInt64: [UInt8]] = [:]
        var nextNumber: UInt64 = 0
        /// Messages the peer's application took on this stream (its ACKs say; 0 until they do).
        var takenByPeer: UInt64 = 0

        /// The next never-sent fragment, in message order; a message's first only if `admit` lets it start.
        func takeFragment(admit: (Outgoing) -> Bool) -> (Outgoing, Int)? {
            guard head < unsent.count, let message = unsent[head] else { return nil }
            if message.nextFragment == 0 && !admit(message) { return nil }
            message.nextFragment += 1
            if message.nextFragment >= message.fragmentCount {
                unsent[head] = nil
                head += 1
                if head >= 64 && 2 * head >= unsent.count {
                    unsent.removeFirst(head)
                    head = 0
                }
            }
            return (message, message.nextFragment - 1)
        }
    }

    private struct Sent {
        var stream: UInt32
        var message: UInt64
        var fragment: Int
        /// The cut the fragment belongs to.
        var fragmentSize: Int
        var size: Int
        var sentAt: UInt64
    }

    private var streams: [UInt32: SendStream] = [:]
    private var streamOrder: [UInt32] = []
    private var roundRobin = 0
    private var retransmit: [(stream: UInt32, message: UInt64, fragment: Int, fragmentSize: Int)] = []
    private var retransmitHead = 0
    /// Packets in flight, by number: entry i is packet `sentBase + i` (nil once acknowledged or lost).
    private var sentPackets: [Sent?] = []
    private var sentHead = 0
    private var sentBase: UInt64 = 0
    private var inFlightCount = 0
    private var nextPacket: UInt64 = 0
    private var largestAcked: UInt64?
    /// Bytes of the messages held: queued, in flight, or acknowledged and not yet taken by the
    /// peer's application (the send buffer, `maximumQueuedBytes`).
    public private(set) var queuedBytes = 0
    /// Streams with a message queued, not wholly acknowledged or not taken (the send buffer's last
    /// eighth is for the others).
    public private(set) var streamsWithMessages = Set<UInt32>()
    /// Charges of every message started (its first fragment sent), since the connection began, and
    /// of every message the peer's application took (as its latest ACK says): the difference is
    /// what the peer may hold for this connection (§7.2).
    private var startedCharges: UInt64 = 0
    private var peerTakenCharges: UInt64 = 0
    /// Flow control blocked a new message with nothing in flight: PINGs (which the peer answers
    /// with an ACK carrying its window) go out at `persistDeadline` until the window opens, in
    /// case the ACK that opened it was lost (TCP's persist timer, RFC 9293 §3.8.6.1).
    private var flowBlocked = false
    private var persistDeadline: UInt64?
    private var persistBackoff: UInt64 = 1
    public private(set) var bytesInFlight = 0
    /// The last pass sent `burst` packets and the window had room for more (`nextDeadline` is now).
    private var burstLimited = false
    public private(set) var congestionWindow: Int
    private var slowStartThreshold = Int.max
    private var recoveryStart: UInt64 = 0
    /// Westwood+'s estimate of what the path carries: a loss takes the window down to it, not to
    /// half (§7.3).
    private var bandwidth = BandwidthEstimator()
    /// Packets acknowledged and declared lost lately: both halve when they reach
    /// `lossHistory` together, so their ratio follows the last few hundred packets (a small window
    /// loses one packet of three at random; one round trip's count says nothing).
    private var recentAcknowledged = 0
    private var recentLost = 0
    /// The receive buffer the peer advertises (this side's own until its first ACK).
    private var peerWindow: Int
    private var rtt = RTTEstimator()
    private var rto: UInt64
    private var rtoDeadline: UInt64?
    /// Tail loss probe (RFC 8985's TLP, QUIC's PTO): when nothing is acknowledged for 2 SRTT after
    /// the last send, the newest packet in flight is sent again (at most 4 times before the RTO), so
    /// that a lost last fragment is found in about 2 RTT instead of the RTO (at least 50 ms), and
    /// without collapsing the window.
    private var probeDeadline: UInt64?
    private var probesSent = 0
    private var backoff: UInt64 = 1
    /// Path size (§9): the datagram size the path carries, the fragment size new messages get, and
    /// the evidence for a black hole: RTOs in a row with large packets in flight and none of them
    /// acknowledged (RFC 8899 §4.3).
    public private(set) var datagramSize: Int
    public private(set) var fragmentSize: Int
    private var largeAcknowledged = false
    /// A small packet of this side was acknowledged, or a PONG came, since the last RTO.
    private var smallPassed = false
    private var silentLargeTimeouts = 0
    /// An RTO lost large packets while none was acknowledged: a PING goes with the retransmission,
    /// so that the next RTO can tell a path that drops large datagrams from one that drops all.
    private var sizeProbeDue = false
    /// RTOs in a row that lost large packets while none was acknowledged but small ones went
    /// through (RFC 8899's MAX_PROBES, 3) before the fragment size steps down to the next datagram
    /// size of `Pieces.datagramSizes`.
    public static let silentTimeoutsBeforeStepDown = 3
    /// Bytes of a DATA datagram that are not fragment: frame header, DATA header, AEAD tag.
    public static let datagramOverhead = FrameHeader.size + 28 + 16

    // MARK: Receiver

    private struct Partial {
        var length: Int
        var count: Int
        /// The sender's cut of the message (it may cut it smaller while it is in flight, §9).
        var fragmentSize: Int
        /// Which fragments arrived (one flag each; a set hashed every fragment: measured with perf,
        /// a tenth of the receiver's time on 1 MiB messages), and how many.
        var received: [Bool] = []
        var receivedCount = 0

        func has(_ fragment: Int) -> Bool { fragment < received.count && received[fragment] }

        mutating func mark(_ fragment: Int) {
            if received.count < count { received += repeatElement(false, count: count - received.count) }
            guard !received[fragment] else { return }
            received[fragment] = true
            receivedCount += 1
        }
        var buffer: [UInt8]
    }

    private struct Incoming {
        var nextToDeliver: UInt64 = 0
        /// Messages the application took (`taken`), in order: those from here to `nextToDeliver`
        /// are delivered and still held.
        var taken: UInt64 = 0
        var partial: [UInt64: Partial] = [:]
        var complete: [UInt64: [UInt8]] = [:]
    }

    private var incoming: [UInt32: Incoming] = [:]
    /// Packets received: all below a cumulative number, and up to `maximumReceivedRanges` ranges above.
    private var received: ReceivedPackets
    /// Packets received since the last ACK; when the ACK is due at the latest; whether it is due now
    /// (also set without a packet: a presence, a new path).
    private var arrivalsUnacknowledged = 0
    private var ackDeadline: UInt64?
    private var ackNow = false
    /// The application took a message since the last ACK: an ACK with the new window is due.
    private var windowUpdate = false
    private var ackNeeded: Bool { arrivalsUnacknowledged > 0 || ackNow || windowUpdate }
    /// Charges (length + `messageCharge`) of the messages held for the application: partly
    /// reassembled, complete and waiting for an earlier one, or delivered and not yet `taken`.
    /// At most `receiveBuffer`, or one larger message alone.
    public private(set) var bufferedBytes = 0
    /// Charges of every message the application took, since the connection began (sent in ACKs).
    private var takenCharges: UInt64 = 0
    /// The streams the application last took from (the newest last, at most 16): their counts of
    /// messages taken go in every ACK.
    private var recentlyTaken: [UInt32] = []
    /// Streams whose count of messages taken changed since an ACK last carried it, the oldest first:
    /// they go first in the next ACK, and ACKs follow until none is left, so that every count reaches
    /// the sender (which holds a message until its count says it was taken, §7.8) however many
    /// streams the application took from between two ACKs.
    private var unreportedTakes: [UInt32] = []
    private var unreported = Set<UInt32>()

    // MARK: Liveness

    private var lastReceived: UInt64
    private var pingSentAt: UInt64?
    private var missedPings = 0
    /// RTOs since anything was last received: from the second, the peer is probed with pings
    /// (dead after 3 missed ones), so a peer that vanishes mid-transfer is noticed in seconds, not
    /// only after the keepalive interval.
    private var silentTimeouts = 0
    private var pingNonce: UInt64 = 0
    private var pongsOwed: [UInt64] = []
    private var presenceToSend: PresenceStatus?
    public private(set) var isDead = false
    /// The reason the peer's CLOSE gave (nil: a clean end, or no CLOSE).
    public private(set) var closeReason: CloseReason?

    private var outbox: [OutgoingFrame] = []
    /// An ACK is due: it is built when the frames are taken (`takeFrames`), so that one ACK covers
    /// every packet that arrived before, however many the driver handed in at once (a batch of
    /// datagrams read in one wake-up gets one ACK, not one per two packets).
    private var ackQueued = false
    private var events: [ReliableEvent] = []
    public private(set) var statistics = Statistics()

    public struct Statistics: Equatable, Sendable {
        public var packetsSent = 0
        public var retransmissions = 0
        public var packetsReceived = 0
        public var duplicates = 0
        public var dropped = 0   // malformed frames, fragments beyond the window
        public var messagesDelivered = 0
        /// RTO expiries and tail loss probes sent.
        public var timeouts = 0
        /// Times the fragment size stepped down because large packets were lost (§9).
        public var datagramSizeReductions = 0
        public var probes = 0
        /// ACK frames sent (delayed: see `ReliableConfiguration.acknowledgeEvery`).
        public var acknowledgementsSent = 0
        /// Packets declared lost while the path showed no queue (random loss: the window stayed, §7.3).
        public var randomLosses = 0
    }

    public init(configuration: ReliableConfiguration = ReliableConfiguration(), now: UInt64) {
        self.configuration = configuration
        congestionWindow = configuration.initialWindowPackets * configuration.fragmentSize
        datagramSize = Pieces.datagramSizes.first { $0 <= configuration.datagramSize } ?? Pieces.minimumDatagramSize
        fragmentSize = Self.fragmentSize(datagramSize: datagramSize, configuration: configuration)
        peerWindow = configuration.receiveBuffer
        rto = configuration.initialRTO
        lastReceived = now
        received = ReceivedPackets(maximumRanges: configuration.maximumReceivedRanges)
        if let sample = configuration.handshakeRTT { updateRTT(sample: Double(min(sample, configuration.initialRTO / 3))) }
    }

    // MARK: Input from the application

    /// Queues a message on `stream` (streams are independent and ordered). Throws `.full` while the
    /// send buffer is full (nothing is queued then), `.tooLarge` beyond the maximum message size.
    public func send(_ message: [UInt8], stream: UInt32, now: UInt64) throws(ReliableError) {
        guard !isDead else { throw .closed }
        guard message.count <= configuration.maximumMessageSize else { throw .tooLarge(message.count) }
        let limit = configuration.maximumQueuedBytes
        guard queuedBytes == 0 || queuedBytes + message.count <= limit - limit / 8
                || (streams[stream].map { $0.live.isEmpty && $0.untaken.isEmpty } ?? true) && queuedBytes + message.count <= limit else { throw .full }
        let sendStream: SendStream
        if let existing = streams[stream] {
            sendStream = existing
        } else {
            sendStream = SendStream()
            streams[stream] = sendStream
            streamOrder.append(stream)
        }
        let number = sendStream.nextNumber
        sendStream.nextNumber += 1
        let outgoing = Outgoing(number: number, bytes: message, fragmentSize: fragmentSize)
        sendStream.unsent.append(outgoing)
        sendStream.live[number] = outgoing
        streamsWithMessages.insert(stream)
        queuedBytes += message.count
        pump(now: now)
    }

    /// Pushes a presence status to the peer (sent reliably enough: repeated until acknowledged).
    public func sendPresence(_ status: PresenceStatus, now: UInt64) {
        presenceToSend = status
        pump(now: now)
    }

    /// The path was replaced (a new ICE path and session after this side or the peer went silent):
    /// liveness starts over, everything in flight is sent again at once with a one-packet window,
    /// as after an RTO; queued messages and the receive state carry over, so nothing is lost or
    /// delivered twice.
    public func revive(now: UInt64) {
        guard isDead else { return }
        isDead = false
        missedPings = 0
        silentTimeouts = 0
        pingSentAt = nil
        lastReceived = now
        bandwidth.reset()
        recentAcknowledged = 0
        recentLost = 0
        loseEverythingInFlight(now: now)
        backoff = 1
        ackNow = true
        pump(now: now)
    }

    /// The driver learnt that the path is gone (its socket failed): as after missed pings, the
    /// connection is dead (event `dead`) until `revive`.
    public func pathFailed(now: UInt64) {
        guard !isDead else { return }
        isDead = true
        events.append(.dead)
    }

    /// Ends the connection from this side: a CLOSE frame goes out (the driver sends it a few times,
    /// since nothing acknowledges it) and the state machine stops. Unacknowledged data is abandoned:
    /// a driver that wants it delivered waits for `isIdle` first. `reason` refuses a connection
    /// the peer has not seen accepted (§7.5); a clean end gives none.
    public func close(now: UInt64, reason: CloseReason? = nil) {
        guard !isDead else { return }
        isDead = true
        // An acknowledgement still due goes first: it tells the peer what this side's application
        // took, so that the peer does not count those messages undelivered (§7.8).
        if ackNeeded {
            ackNow = true
            acknowledgeIfDue(now: now, sendingData: false)
        }
        appendQueuedAcknowledgement()
        outbox.append(Self.closeFrame(reason: reason))
    }

    /// A CLOSE: empty, or the one byte of a refusal's reason (§7.6).
    public static func closeFrame(reason: CloseReason?) -> OutgoingFrame {
        frame(.close, reserved: .zero, payload: reason.map { [$0.rawValue] } ?? [])
    }

    /// Sends a PING now, outside the keepalive's count (a missing PONG makes nothing dead): the
    /// initiator asks with it whether the peer accepted the connection (§7.5), and the peer's
    /// answer, any frame, says it did.
    public func solicit(now: UInt64) {
        guard !isDead else { return }
        pingNonce &+= 1
        outbox.append(Self.frame(.ping, reserved: .zero, payload: Self.be(pingNonce, 8)))
        pump(now: now)
    }

    // MARK: Input from the network

    /// One frame from the peer, already opened by the record layer. Malformed frames are counted and dropped.
    public func receive(_ header: FrameHeader, payload: ArraySlice<UInt8>, now: UInt64) {
        guard !isDead else { return }
        lastReceived = now
        missedPings = 0
        silentTimeouts = 0
        pingSentAt = nil
        switch header.type {
        case .data: receiveData(header, payload: payload, now: now)
        case .ack: receiveAck(payload, now: now)
        case .ping:
            guard payload.count == 8 else { return drop() }
            pongsOwed.append(Self.u64(payload, at: payload.startIndex))
            // A flow-blocked sender probes with PINGs: the answer carries the window (once the
            // application took anything; until then the first ACK's window stands).
            if takenCharges > 0 { ackNow = true }
        case .pong:
            // A PING (small) went through: evidence for the path size check (§9).
            smallPassed = true
        case .close:
            guard payload.count <= 1 else { return drop() }
            // A reason this version does not know still ends the connection.
            closeReason = payload.first.flatMap(CloseReason.init(rawValue:))
            isDead = true
            events.append(.closed)
            return
        case .presence:
            guard payload.count == 1, let status = PresenceStatus(rawValue: payload[payload.startIndex]) else { return drop() }
            events.append(.presence(status))
            ackNow = true
        default:
            drop()
        }
        pump(now: now)
    }

    private func drop() { statistics.dropped += 1 }

    private func receiveData(_ header: FrameHeader, payload: ArraySlice<UInt8>, now: UInt64) {
        // payload: packet (8) | least unacknowledged (8) | message (8) | message length (4) | fragment bytes
        guard payload.count >= Self.dataHeaderSize else { return drop() }
        let base = payload.startIndex
        let packet = Self.u64(payload, at: base), leastUnacked = Self.u64(payload, at: base + 8)
        let message = Self.u64(payload, at: base + 16)
        let length = Int(Self.u32(payload, at: base + 24))
        let stream = header.reserved.word0
        guard let (fragment, size) = Self.fragmentPlace(header.reserved.word1, configuration: configuration) else { return drop() }
        let data = payload[(base + Self.dataHeaderSize)...]
        let count = max(1, (length + size - 1) / size)
        guard length <= configuration.maximumMessageSize, fragment < count,
              data.count == min(size, length - fragment * size) else { return drop() }
        guard packet <= leastUnacked &+ 1_000_000, leastUnacked <= packet else { return drop() }
        // The sender no longer waits for packets below leastUnacked (it resent their data in new
        // packets or had them acknowledged): forget them, so that this state stays bounded.
        received.advance(to: leastUnacked)
        // A packet that would open one range too many is dropped unacknowledged (the sender
        // retransmits it as lost): the ranges are what a sender can make this side keep.
        guard received.canRecord(packet) else { return drop() }
        // In order: the ACK may wait. A gap (loss, reordering) or a duplicate (the ACK was lost)
        // is acknowledged at once, for the sender's loss detection.
        arrivalsUnacknowledged += 1
        if packet != received.cumulative || received.hasGap { ackNow = true }
        if ackDeadline == nil { ackDeadline = now + configuration.acknowledgementDelay }
        // Taken out of the table while it changes, and the message's partial state out of it: the
        // buffer then has one owner and is written in place (a copy left in the table made every
        // fragment copy the whole message: 1 MiB messages ran at a fifth of the rate of small ones).
        let known = incoming[stream] != nil
        var state = incoming.removeValue(forKey: stream) ?? Incoming()
        defer {
            // Back unless it holds nothing (a fragment dropped on a stream not seen before).
            if known || !state.partial.isEmpty || !state.complete.isEmpty || state.nextToDeliver > 0 { incoming[stream] = state }
        }
        if message < state.nextToDeliver || state.complete[message] != nil
            || state.partial[message].map({ $0.fragmentSize < size || $0.fragmentSize == size && $0.has(fragment) }) == true {
            // (A fragment of a larger cut than the one held is stale: the sender cut the message
            // smaller and sends it again that way.)
            markReceived(packet)
            statistics.duplicates += 1
            return
        }
        if state.partial[message] == nil {
            // Flow control: a new message must fit the receive buffer (when nothing is held any
            // message may, so that one larger than the buffer still gets through). A sender that keeps
            // the rule (see nextFragment) never meets this; one that does not has its fragment dropped
            // unacknowledged.
            guard bufferedBytes + Self.charge(length) <= configuration.receiveBuffer || bufferedBytes == 0 else {
                statistics.dropped += 1
                return
            }
            state.partial[message] = Partial(length: length, count: count, fragmentSize: size, buffer: [UInt8](repeating: 0, count: length))
            bufferedBytes += Self.charge(length)
        }
        guard var partial = state.partial.removeValue(forKey: message) else { return drop() }
        guard partial.length == length else {
            state.partial[message] = partial
            return drop()
        }
        if partial.fragmentSize > size {
            // The sender cut the message smaller (§9): it sends all of it again in the new cut.
            partial.fragmentSize = size
            partial.count = count
            partial.received = []
            partial.receivedCount = 0
        }
        markReceived(packet)
        statistics.packetsReceived += 1
        let start = fragment * size
        partial.buffer.replaceSubrange(start..<start + data.count, with: data)
        partial.mark(fragment)
        if partial.receivedCount == partial.count {
            state.complete[message] = partial.buffer
        } else {
            state.partial[message] = partial
        }
        while let next = state.complete.removeValue(forKey: state.nextToDeliver) {
            events.append(.message(stream: stream, bytes: next))
            statistics.messagesDelivered += 1
            state.nextToDeliver += 1
        }
    }

    private func markReceived(_ packet: UInt64) { received.insert(packet) }

    private func receiveAck(_ payload: ArraySlice<UInt8>, now: UInt64) {
        // payload: cumulative (8) | window (4) | taken (8) | range count (1) | (first (8) | last (8))*
        //          | stream count (1) | (stream (4) | messages taken (8))*
        guard payload.count >= 22 else { return drop() }
        let base = payload.startIndex
        let acked = Self.u64(payload, at: base)
        let window = Int(Self.u32(payload, at: base + 8))
        let taken = Self.u64(payload, at: base + 12)
        let count = Int(payload[base + 20])
        let streamsAt = base + 21 + 16 * count
        guard payload.count >= 21 + 16 * count + 1, acked <= nextPacket else { return drop() }
        let streamCount = Int(payload[streamsAt])
        guard streamCount <= 16, payload.count == 21 + 16 * count + 1 + 12 * streamCount else { return drop() }
        var ranges: [ClosedRange<UInt64>] = []
        for index in 0..<count {
            let first = Self.u64(payload, at: base + 21 + 16 * index), last = Self.u64(payload, at: base + 29 + 16 * index)
            guard first <= last, last < nextPacket else { return drop() }
            ranges.append(first...last)
        }
        // The window: counts only grow (an older ACK arriving late changes nothing). A peer that
        // claims more than was sent only hurts itself (its buffer may overflow: it drops).
        let before = (peerWindow, peerTakenCharges)
        peerWindow = window
        peerTakenCharges = max(peerTakenCharges, min(taken, startedCharges))
        for index in 0..<streamCount {
            let at = streamsAt + 1 + 12 * index
            guard let stream = streams[Self.u32(payload, at: at)] else { continue }
            let messages = min(Self.u64(payload, at: at + 4), stream.nextNumber)
            if messages > stream.takenByPeer {
                stream.takenByPeer = messages
                persistBackoff = 1
                release(stream, streamID: Self.u32(payload, at: at))
            }
        }
        if (peerWindow, peerTakenCharges) != before { persistBackoff = 1 }
        var newlyAcked: [(UInt64, Sent)] = []
        var packet = lowestInFlight
        while packet < acked {
            if let sent = removeSent(packet) { newlyAcked.append((packet, sent)) }
            packet = max(packet + 1, lowestInFlight)
        }
        for range in ranges where range.upperBound >= lowestInFlight {
            for packet in max(range.lowerBound, lowestInFlight)...range.upperBound {
                if let sent = removeSent(packet) { newlyAcked.append((packet, sent)) }
            }
        }
        guard !newlyAcked.isEmpty else { return }
        newlyAcked.sort { $0.0 < $1.0 }
        let largest = newlyAcked[newlyAcked.count - 1]
        if largestAcked.map({ largest.0 > $0 }) ?? true {
            largestAcked = largest.0
            updateRTT(sample: Double(now - largest.1.sentAt))
            bandwidth.measured(rtt: Double(now - largest.1.sentAt), now: now)
        }
        bandwidth.acknowledged(newlyAcked.reduce(0) { $0 + $1.1.size }, now: now, smoothedRTT: rtt.smoothed)
        countRecent(acknowledged: newlyAcked.count, lost: 0)
        for (_, sent) in newlyAcked {
            acknowledge(sent)
            // NewReno growth, none while recovering from a loss sent after the recovery started.
            if sent.sentAt > recoveryStart || recoveryStart == 0 {
                if congestionWindow < slowStartThreshold {
                    congestionWindow += sent.size
                } else {
                    congestionWindow += max(1, configuration.fragmentSize * sent.size / congestionWindow)
                }
                congestionWindow = min(congestionWindow, max(configuration.maximumWindow, 2 * configuration.fragmentSize))
            }
        }
        backoff = 1
        probesSent = 0
        detectLosses(now: now)
        rtoDeadline = inFlightCount == 0 ? nil : now + currentRTO
        armProbe(now: now)
    }

    /// 2 SRTT (at least 10 ms) after now, while something is in flight and the RTO is later.
    private func armProbe(now: UInt64) {
        guard inFlightCount > 0, probesSent < 4, let srtt = rtt.smoothed else {
            probeDeadline = nil
            return
        }
        let when = now + UInt64(max(10, 2 * srtt))
        probeDeadline = when < (rtoDeadline ?? UInt64.max) ? when : nil
    }

    /// The packet in flight with this number, if any.
    private func sentPacket(_ packet: UInt64) -> Sent? {
        guard packet >= sentBase + UInt64(sentHead), packet < nextPacket else { return nil }
        return sentPackets[Int(packet - sentBase)]
    }

    private func removeSent(_ packet: UInt64) -> Sent? {
        guard let sent = sentPacket(packet) else { return nil }
        sentPackets[Int(packet - sentBase)] = nil
        inFlightCount -= 1
        bytesInFlight -= sent.size
        // Skip acknowledged and lost packets at the front; drop them from the array now and then.
        while sentHead < sentPackets.count, sentPackets[sentHead] == nil { sentHead += 1 }
        if sentHead > 4096 {
            sentPackets.removeFirst(sentHead)
            sentBase += UInt64(sentHead)
            sentHead = 0
        }
        return sent
    }

    /// The lowest packet number still in flight (nextPacket when none).
    private var lowestInFlight: UInt64 { sentHead < sentPackets.count ? sentBase + UInt64(sentHead) : nextPacket }

    private func acknowledge(_ sent: Sent) {
        if sent.size + FrameHeader.size + 16 > (Pieces.stepBelow(datagramSize) ?? 0) {
            largeAcknowledged = true
            silentLargeTimeouts = 0
        } else {
            smallPassed = true
        }
        guard let stream = streams[sent.stream], let message = stream.live[sent.message], message.fragmentSize == sent.fragmentSize,
              sent.fragment < message.fragmentCount, !message.acknowledged[sent.fragment] else { return }
        message.acknowledged[sent.fragment] = true
        message.acknowledgedCount += 1
        if message.acknowledgedCount == message.fragmentCount {
            stream.live[sent.message] = nil
            // Held until the peer's application took it (its ACKs count what it took per stream).
            if sent.message >= stream.takenByPeer {
                stream.untaken[sent.message] = message.bytes
            } else {
                queuedBytes -= message.bytes.count
            }
            if stream.live.isEmpty && stream.untaken.isEmpty { streamsWithMessages.remove(sent.stream) }
        }
    }

    /// Forgets the acknowledged messages of `stream` its peer's application took.
    private func release(_ stream: SendStream, streamID: UInt32) {
        guard !stream.untaken.isEmpty else { return }
        for (number, bytes) in stream.untaken where number < stream.takenByPeer {
            queuedBytes -= bytes.count
            stream.untaken[number] = nil
        }
        if stream.live.isEmpty && stream.untaken.isEmpty { streamsWithMessages.remove(streamID) }
    }

    private func updateRTT(sample: Double) {
        rtt.add(sample: sample)
        let estimate = (rtt.smoothed ?? 0) + max(1, 4 * rtt.variation)
        rto = UInt64(min(Double(configuration.maximumRTO), max(Double(configuration.minimumRTO), estimate)))
    }

    private var currentRTO: UInt64 { min(configuration.maximumRTO, rto * backoff) }
    /// How long a ping waits for its pong: 3 RTOs without the backoff (a path that lost everything
    /// has backed the data's RTO off to tens of seconds; its pings must not wait as long), at least
    /// `minimumPingWait`.
    private var pingWait: UInt64 { max(configuration.minimumPingWait, 3 * min(configuration.maximumRTO, rto)) }

    /// Packet threshold 3 and time threshold 9/8 RTT (RFC 9002's rules, over this protocol's packets).
    private func detectLosses(now: UInt64) {
        guard let largest = largestAcked else { return }
        let delay = UInt64(1.125 * max(rtt.smoothed ?? Double(rto), 1))
        // Every packet 3 or more below the largest acknowledged is lost; of the 2 below it, those sent
        // more than 9/8 RTT ago. Packets are scanned from the lowest in flight, which stays low.
        var lost: [UInt64] = []
        var packet = lowestInFlight
        while packet < largest {
            if let sent = sentPacket(packet), largest - packet >= 3 || now >= sent.sentAt + delay { lost.append(packet) }
            packet += 1
        }
        guard !lost.isEmpty else { return }
        var newestLostSentAt: UInt64 = 0
        for packet in lost {
            guard let sent = removeSent(packet) else { continue }
            newestLostSentAt = max(newestLostSentAt, sent.sentAt)
            requeue(sent)
        }
        countRecent(acknowledged: 0, lost: lost.count)
        // Loss differentiation (§7.3): a loss while the RTT shows no queue, with no more than
        // `randomLossLimit` of the recent packets lost, is taken as random (a lossy link, not a full
        // queue): the window stays. NewReno halved it at every such loss: under 10% random loss
        // the window stayed at a few packets and the RTOs of lost tails took most of the time.
        let lossRate = Double(recentLost) / Double(max(1, recentLost + recentAcknowledged))
        if !bandwidth.seesQueue, lossRate <= Self.randomLossLimit {
            statistics.randomLosses += lost.count
            return
        }
        if newestLostSentAt > recoveryStart || recoveryStart == 0 {
            recoveryStart = now
            slowStartThreshold = thresholdAfterLoss
            congestionWindow = min(congestionWindow, slowStartThreshold)
        }
    }

    /// The largest share of the recent packets lost that may be taken as random loss.
    static let randomLossLimit = 0.2
    /// Packets (acknowledged and lost) the recent loss rate looks back over, about.
    static let lossHistory = 512

    private func countRecent(acknowledged: Int, lost: Int) {
        recentAcknowledged += acknowledged
        recentLost += lost
        if recentAcknowledged + recentLost >= Self.lossHistory {
            recentAcknowledged /= 2
            recentLost /= 2
        }
    }

    /// ssthresh after a loss (bytes): half the window (NewReno), or the Westwood+ estimate
    /// (`BandwidthEstimator.floor`) when larger; at least 2 packets.
    private var thresholdAfterLoss: Int {
        let floor = bandwidth.floor
        return max(floor, congestionWindow / 2, 2 * configuration.fragmentSize)
    }

    /// Every packet in flight is queued again, the window falls to one packet and ssthresh to half
    /// the window (after an RTO, and on a new path).
    private func loseEverythingInFlight(now: UInt64) {
        var packet = lowestInFlight, lost = 0
        while packet < nextPacket {
            if let sent = removeSent(packet) {
                requeue(sent)
                lost += 1
            }
            packet += 1
        }
        countRecent(acknowledged: 0, lost: lost)
        slowStartThreshold = thresholdAfterLoss
        congestionWindow = configuration.fragmentSize
        recoveryStart = now
        rtoDeadline = nil
        probeDeadline = nil
    }

    private func requeue(_ sent: Sent) {
        retransmit.append((sent.stream, sent.message, sent.fragment, sent.fragmentSize))
        statistics.retransmissions += 1
    }

    // MARK: Path size (§9)

    /// The fragment size for datagrams of `datagramSize` bytes: at most `configuration.fragmentSize`.
    public static func fragmentSize(datagramSize: Int, configuration: ReliableConfiguration) -> Int {
        max(minimumFragmentSize, min(configuration.fragmentSize, datagramSize - datagramOverhead))
    }

    /// The smallest fragment a receiver takes: 16 MiB in 65,536 fragments.
    public static let minimumFragmentSize = 256

    /// Reserved word 1 of a DATA frame: the fragment index, and when the fragment size is not the
    /// configured one (1,100 bytes), that size in the upper 16 bits (§7.1, §9).
    static func fragmentWord(_ index: Int, size: Int, configuration: ReliableConfiguration) -> UInt32 {
        size == configuration.fragmentSize ? UInt32(index) : UInt32(size) << 16 | UInt32(index & 0xFFFF)
    }

    /// The fragment index and fragment size reserved word 1 says; nil for a size out of range.
    static func fragmentPlace(_ word: UInt32, configuration: ReliableConfiguration) -> (index: Int, size: Int)? {
        let size = Int(word >> 16)
        guard size != 0 else { return (Int(word), configuration.fragmentSize) }
        guard size >= minimumFragmentSize, size < configuration.fragmentSize else { return nil }
        return (Int(word & 0xFFFF), size)
    }

    /// The path carries datagrams of at most `size` bytes (a new path's handshake found it, or the
    /// RTOs above did): new messages are cut for it; when it is smaller than before, every message
    /// not wholly acknowledged is cut again and sent again in the new cut.
    public func setDatagramSize(_ size: Int, now: UInt64) { setDatagramSize(size, now: now, pumping: true) }

    private func setDatagramSize(_ size: Int, now: UInt64, pumping: Bool) {
        let size = Pieces.datagramSizes.first { $0 <= size } ?? Pieces.minimumDatagramSize
        let newFragmentSize = Self.fragmentSize(datagramSize: size, configuration: configuration)
        datagramSize = size
        largeAcknowledged = false
        smallPassed = false
        silentLargeTimeouts = 0
        guard newFragmentSize < fragmentSize else {
            fragmentSize = newFragmentSize
            return
        }
        fragmentSize = newFragmentSize
        for stream in streamOrder {
            guard let sendStream = streams[stream] else { continue }
            for number in sendStream.live.keys.sorted() {
                guard let message = sendStream.live[number], message.fragmentSize > newFragmentSize,
                      message.nextFragment > 0 else { continue }
                for fragment in message.recut(to: newFragmentSize) {
                    retransmit.append((stream, number, fragment, newFragmentSize))
                }
            }
            // Messages not started yet are simply cut again.
            for case let message? in sendStream.unsent[sendStream.head...] where message.nextFragment == 0
                && message.fragmentSize > newFragmentSize {
                _ = message.recut(to: newFragmentSize)
            }
        }
        if pumping { pump(now: now) }
    }

    // MARK: Timers

    public var nextDeadline: UInt64? {
        guard !isDead else { return nil }
        if burstLimited { return 0 }
        let keepalive = pingSentAt.map { $0 + pingWait } ?? lastReceived + configuration.keepaliveInterval
        let ack = ackNeeded ? ackDeadline ?? keepalive : keepalive
        return min(probeDeadline ?? keepalive, rtoDeadline ?? keepalive, keepalive, ack, persistDeadline ?? keepalive)
    }

    public func handleTimeout(now: UInt64) {
        guard !isDead else { return }
        if let deadline = probeDeadline, now >= deadline, inFlightCount > 0 {
            // The newest packet in flight is taken as lost and sent again (no window reduction);
            // its acknowledgement, or the next, reveals what else is missing.
            probeDeadline = nil
            probesSent += 1
            statistics.probes += 1
            var packet = nextPacket
            while packet > lowestInFlight {
                packet -= 1
                if let sent = removeSent(packet) {
                    requeue(sent)
                    break
                }
            }
        }
        if let deadline = rtoDeadline, now >= deadline, inFlightCount > 0 {
            // Path size (§9): large packets lost RTO after RTO while none was acknowledged: datagrams
            // of this size do not pass; new fragments, and what is in flight, are cut smaller.
            let large = Pieces.stepBelow(datagramSize).map { limit in
                sentPackets[sentHead...].contains { ($0?.size ?? 0) + FrameHeader.size + 16 > limit }
            } ?? false
            if large, !largeAcknowledged {
                if smallPassed { silentLargeTimeouts += 1 }
                sizeProbeDue = true
            }
            largeAcknowledged = false
            smallPassed = false
            if silentLargeTimeouts >= Self.silentTimeoutsBeforeStepDown, let smaller = Pieces.stepBelow(datagramSize) {
                silentLargeTimeouts = 0
                statistics.datagramSizeReductions += 1
                setDatagramSize(smaller, now: now, pumping: false)
            }
            // RTO: everything in flight is lost; one packet's window; the timer backs off.
            loseEverythingInFlight(now: now)
            backoff = min(backoff * 2, 64)
            silentTimeouts += 1
            statistics.timeouts += 1
        }
        if let sent = pingSentAt, now >= sent + pingWait {
            missedPings += 1
            pingSentAt = nil
            if missedPings >= configuration.missedPingsForDead {
                isDead = true
                events.append(.dead)
                return
            }
        }
        var persist = false
        if let deadline = persistDeadline, now >= deadline {
            persistDeadline = nil
            persistBackoff = min(persistBackoff * 2, 16)
            persist = true
        }
        // (A PING already out serves as the size probe too.)
        if pingSentAt == nil,
           now >= lastReceived + configuration.keepaliveInterval || missedPings > 0 || silentTimeouts >= 2 || persist || sizeProbeDue {
            pingNonce &+= 1
            pingSentAt = now
            outbox.append(Self.frame(.ping, reserved: .zero, payload: Self.be(pingNonce, 8)))
        }
        sizeProbeDue = false
        pump(now: now)
    }

    // MARK: Output

    /// Frames to seal and send, in order.
    public func takeFrames() -> [OutgoingFrame] {
        appendQueuedAcknowledgement()
        defer { outbox.removeAll() }
        return outbox
    }

    /// The ACK that is due, built now: it covers everything received so far, so what arrived since
    /// it was queued needs no other. While more streams' counts wait than one ACK carries, others
    /// follow at once.
    private func appendQueuedAcknowledgement() {
        guard ackQueued else { return }
        ackQueued = false
        ackNow = false
        windowUpdate = false
        arrivalsUnacknowledged = 0
        ackDeadline = nil
        repeat {
            statistics.acknowledgementsSent += 1
            outbox.append(ackFrame())
        } while !unreportedTakes.isEmpty
    }

    /// Appends the ACK when it is due (see `acknowledgeEvery`): one covers every packet received
    /// since the last.
    private func acknowledgeIfDue(now: UInt64, sendingData: Bool) {
        guard ackNeeded else { return }
        guard ackNow || sendingData || arrivalsUnacknowledged >= configuration.acknowledgeEvery
                || now >= (ackDeadline ?? now) else { return }
        ackNow = false
        windowUpdate = false
        arrivalsUnacknowledged = 0
        ackDeadline = nil
        ackQueued = true
    }

    public func takeEvents() -> [ReliableEvent] {
        defer { events.removeAll() }
        return events
    }

    /// Every message not wholly acknowledged yet (sent in part, or not at all), by stream in the
    /// order streams were first used and by message order within each: what the peer's transport
    /// does not have (after a clean CLOSE the peer's application can still take the rest).
    /// Partly acknowledged messages are included whole.
    public var unacknowledged: [(stream: UInt32, bytes: [UInt8])] {
        streamOrder.flatMap { stream -> [(stream: UInt32, bytes: [UInt8])] in
            guard let sendStream = streams[stream] else { return [] }
            return sendStream.live.keys.sorted().compactMap { number in sendStream.live[number].map { (stream, $0.bytes) } }
        }
    }

    /// Every message the peer's application has not taken, as far as its ACKs said: those not wholly
    /// acknowledged, and those acknowledged but not yet taken (§7.8), in the order of
    /// `unacknowledged`. What a connection whose peer died did not deliver: a message taken just
    /// before the peer died, whose report was lost with it, is among them (at least once).
    public var undelivered: [(stream: UInt32, bytes: [UInt8])] {
        streamOrder.flatMap { stream -> [(stream: UInt32, bytes: [UInt8])] in
            guard let sendStream = streams[stream] else { return [] }
            let numbers = (Array(sendStream.live.keys) + Array(sendStream.untaken.keys)).sorted()
            return numbers.compactMap { number in
                (sendStream.live[number]?.bytes ?? sendStream.untaken[number]).map { (stream, $0) }
            }
        }
    }

    /// Messages whose contents the sender still holds (queued, not yet wholly acknowledged, or not
    /// yet taken by the peer's application): never more than `undelivered.count`, so memory held for
    /// sent data is bounded by the send buffer (`maximumQueuedBytes`, or one larger message).
    public var retainedMessages: Int {
        streams.values.reduce(0) { total, stream in
            total + stream.live.count + stream.untaken.count
                + stream.unsent.filter { $0.map { stream.live[$0.number] !== $0 } ?? false }.count
        }
    }

    /// The application took the next delivered message of `stream` (`length` bytes): its charge
    /// leaves the receive buffer and the peer hears of the larger window in an ACK within
    /// `acknowledgementDelay` ms (§7.2). Messages are taken in each stream's order; a call for a
    /// stream with nothing delivered is ignored.
    public func taken(stream: UInt32, length: Int, now: UInt64) {
        guard var state = incoming[stream], state.taken < state.nextToDeliver else { return }
        state.taken += 1
        incoming[stream] = state
        let charge = Self.charge(length)
        bufferedBytes = max(0, bufferedBytes - charge)
        takenCharges &+= UInt64(charge)
        if let index = recentlyTaken.lastIndex(of: stream) { recentlyTaken.remove(at: index) }
        recentlyTaken.append(stream)
        if recentlyTaken.count > 16 { recentlyTaken.removeFirst() }
        if unreported.insert(stream).inserted { unreportedTakes.append(stream) }
        windowUpdate = true
        if ackDeadline == nil { ackDeadline = now + configuration.acknowledgementDelay }
        pump(now: now)
    }

    /// Nothing queued, nothing in flight, nothing unacknowledged (what the peer's application has
    /// not taken yet may remain: see `isDelivered`).
    public var isIdle: Bool { inFlightCount == 0 && streams.values.allSatisfy { $0.live.isEmpty } }

    /// Every message sent was taken by the peer's application, as far as its ACKs said.
    public var isDelivered: Bool { queuedBytes == 0 && inFlightCount == 0 }

    private func pump(now: UInt64) {
        for nonce in pongsOwed { outbox.append(Self.frame(.pong, reserved: .zero, payload: Self.be(nonce, 8))) }
        pongsOwed.removeAll()
        if let status = presenceToSend {
            outbox.append(Self.frame(.presence, reserved: .zero, payload: [status.rawValue]))
            presenceToSend = nil
        }
        var sent = 0
        flowBlocked = false
        while sent < configuration.burst, bytesInFlight + configuration.fragmentSize <= congestionWindow,
              let (stream, outgoing, fragment) = nextFragment() {
            let message = outgoing.number
            let size = outgoing.fragmentSize
            let start = fragment * size
            let chunk = outgoing.bytes[start..<min(start + size, outgoing.bytes.count)]
            let packet = nextPacket
            nextPacket += 1
            let leastUnacked = min(lowestInFlight, packet)
            // One allocation per DATA frame (its header's fields appended in place).
            var payload = [UInt8]()
            payload.reserveCapacity(Self.dataHeaderSize + chunk.count)
            Self.append(packet, 8, to: &payload)
            Self.append(leastUnacked, 8, to: &payload)
            Self.append(message, 8, to: &payload)
            Self.append(UInt64(outgoing.bytes.count), 4, to: &payload)
            payload += chunk
            outbox.append(Self.frame(.data, reserved: FrameReserved(word0: stream, word1: Self.fragmentWord(fragment, size: size, configuration: configuration)),
                                     payload: payload))
            let packetSize = chunk.count + Self.dataHeaderSize
            if sentHead == sentPackets.count {  // nothing in flight: restart the array at this packet
                sentPackets.removeAll(keepingCapacity: true)
                sentHead = 0
                sentBase = packet
            }
            sentPackets.append(Sent(stream: stream, message: message, fragment: fragment, fragmentSize: size, size: packetSize, sentAt: now))
            inFlightCount += 1
            bytesInFlight += packetSize
            statistics.packetsSent += 1
            sent += 1
            if rtoDeadline == nil { rtoDeadline = now + currentRTO }
        }
        if sent > 0 { armProbe(now: now) }
        // The burst ended the pass with room in the window: the driver comes back at once (after
        // what else it has to do), not at the next acknowledgement. Without this the sender waited
        // for an ACK after each burst of 64 (in the lab under loss, 64 packets in flight with a
        // window of 100 KB).
        burstLimited = sent > 0 && sent >= configuration.burst && bytesInFlight + configuration.fragmentSize <= congestionWindow
        if flowBlocked && inFlightCount == 0 && !isDead {
            if persistDeadline == nil {
                persistDeadline = now + min(configuration.maximumRTO, max(configuration.minimumRTO, rto) * persistBackoff)
            }
        } else {
            persistDeadline = nil
        }
        acknowledgeIfDue(now: now, sendingData: sent > 0)
    }

    /// Retransmissions first; then new fragments, one per stream in turn (a long message on one
    /// stream does not hold up another stream).
    private func nextFragment() -> (UInt32, Outgoing, Int)? {
        while retransmitHead < retransmit.count {
            let next = retransmit[retransmitHead]
            retransmitHead += 1
            if let message = streams[next.stream]?.live[next.message], message.fragmentSize == next.fragmentSize,
               next.fragment < message.fragmentCount, !message.acknowledged[next.fragment] {
                return (next.stream, message, next.fragment)
            }
        }
        if retransmitHead > 0 {
            retransmit.removeAll(keepingCapacity: true)
            retransmitHead = 0
        }
        guard !streamOrder.isEmpty else { return nil }
        for offset in 0..<streamOrder.count {
            let index = (roundRobin + offset) % streamOrder.count
            let stream = streamOrder[index]
            // Flow control (§7.2): the receiver holds a message from its first fragment until its
            // application takes it, so the sender starts one only while the messages it started and
            // the peer did not report taken fit the peer's buffer: its first seven eighths for any
            // message, the whole for the stream's next message to be taken (all earlier ones on the
            // stream were taken), anything when nothing is outstanding.
            guard let sendStream = streams[stream], let (message, fragment) = sendStream.takeFragment(admit: { message in
                let outstanding = self.startedCharges - self.peerTakenCharges
                let charge = UInt64(Self.charge(message.bytes.count)), window = UInt64(max(0, self.peerWindow))
                guard outstanding == 0 || outstanding + charge <= window - window / 8
                        || sendStream.takenByPeer >= message.number && outstanding + charge <= window else {
                    self.flowBlocked = true
                    return false
                }
                self.startedCharges += charge
                return true
            }) else { continue }
            roundRobin = index + 1
            return (stream, message, fragment)
        }
        return nil
    }

    private func ackFrame() -> OutgoingFrame {
        let window = UInt64(configuration.receiveBuffer)  // the buffer's size: the sender keeps its use within it
        // The newest ranges matter most for loss detection: the last 32.
        let ranges = received.ranges.suffix(32)
        var payload = [UInt8]()
        payload.reserveCapacity(22 + 16 * ranges.count + 12 * 16)
        Self.append(received.cumulative, 8, to: &payload)
        Self.append(min(window, UInt64(UInt32.max)), 4, to: &payload)
        Self.append(takenCharges, 8, to: &payload)
        payload.append(UInt8(ranges.count))
        for range in ranges {
            Self.append(range.lowerBound, 8, to: &payload)
            Self.append(range.upperBound, 8, to: &payload)
        }
        // Up to 16 streams: those not reported since their count changed (the oldest first), then the
        // most recently taken from (the newest last), so that a lost ACK is made up for.
        var listed = Array(unreportedTakes.prefix(16))
        unreportedTakes.removeFirst(listed.count)
        for stream in listed { unreported.remove(stream) }
        let reported = Set(listed)
        listed += recentlyTaken.filter { !reported.contains($0) }.suffix(16 - listed.count)
        payload.append(UInt8(listed.count))
        for stream in listed {
            Self.append(UInt64(stream), 4, to: &payload)
            Self.append(incoming[stream]?.taken ?? 0, 8, to: &payload)
        }
        return Self.frame(.ack, reserved: .zero, payload: payload)
    }

    // MARK: Bytes

    static let dataHeaderSize = 28

    /// What a message costs in a receive buffer besides its bytes (its bookkeeping), so that empty
    /// messages are bounded too: a message of n bytes is charged n + 64 (§7.2).
    public static let messageCharge = 64
    /// What a message of `length` bytes costs in a receive buffer (§7.2).
    public static func charge(_ length: Int) -> Int { length + messageCharge }

    static func frame(_ type: MessageType, reserved: FrameReserved, payload: [UInt8]) -> OutgoingFrame {
        OutgoingFrame(type: type, word0: reserved.word0, word1: reserved.word1, payload: payload)
    }

    static func be(_ value: UInt64, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - $0))) }
    }

    /// Appends the low `count` bytes of `value`, big-endian.
    static func append(_ value: UInt64, _ count: Int, to out: inout [UInt8]) {
        for index in 0..<count { out.append(UInt8(truncatingIfNeeded: value >> UInt64(8 * (count - 1 - index)))) }
    }

    static func u64(_ bytes: ArraySlice<UInt8>, at index: Int) -> UInt64 {
        bytes[index..<index + 8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func u32(_ bytes: ArraySlice<UInt8>, at index: Int) -> UInt32 {
        bytes[index..<index + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }
}
