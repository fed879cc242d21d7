import DNACrypto
import DNANet
import DNAWire
import Glibc

/// Runs the handshake (docs/PROTOCOL.md §4) over a datagram path (the ICE path), before a connection
/// takes the path over.
/// The state machines do the work; this only moves their datagrams and keeps their timers.
enum HandshakeOverPath {
    /// The handshake's timers for a path ICE just proved: its first retransmission after 200 ms
    /// rather than the 500 ms meant for a first contact (under 10% loss the handshake took 2 to 5 s
    /// of a connection's set-up in the lab).
    static let configuration: HandshakeConfiguration = {
        var configuration = HandshakeConfiguration()
        configuration.initialRetransmitTimeout = 200
        configuration.maximumRetransmitTimeout = 2000
        return configuration
    }()

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The initiator's side. Returns once the responder has every piece of message 3, so that the
    /// first record it receives finds its session ready, with the handshake's time in ms (two round
    /// trips and both sides' signatures: an upper bound of the path's RTT for the connection's first
    /// RTO, §7.3).
    /// `datagramSize`: where message 1 starts (a size an earlier handshake with the peer found, §9).
    static func initiate(path: DatagramPath, identity: Identity, peer: IdentityName, publicKey: [UInt8],
                         timeout: Int, datagramSize: Int = Pieces.maximumDatagramSize) throws(Failure)
        -> (session: SecureSession, milliseconds: UInt64) {
        let started = monotonicMilliseconds()
        let end = started + UInt64(max(0, timeout))
        let initiator: HandshakeInitiator
        var configuration = configuration
        configuration.datagramSize = datagramSize
        do {
            initiator = try HandshakeInitiator(identity: identity, responderName: peer, responderPublicKey: publicKey,
                                               now: monotonicMilliseconds(), configuration: configuration)
        } catch { throw Failure(description: "\(error)") }
        while true {
            for datagram in initiator.takeDatagrams() { _ = path.send(datagram) }
            if initiator.isFinished, let session = initiator.session { return (session, monotonicMilliseconds() - started) }
            if let failure = initiator.failure { throw Failure(description: "\(failure)") }
            let now = monotonicMilliseconds()
            guard now < end else { throw Failure(description: "no answer within \(timeout) ms") }
            let wake = min(initiator.nextDeadline ?? end, end)
            if let datagram = path.receive(waitingUntil: wake), isHandshake(datagram) {
                do { try initiator.receive(datagram, now: monotonicMilliseconds()) } catch {
                    if case .unknownSession = error { continue }  // a stray datagram: ignored
                    throw Failure(description: "\(error)")
                }
            } else if let deadline = initiator.nextDeadline, monotonicMilliseconds() >= deadline {
                do { try initiator.handleTimeout(now: monotonicMilliseconds()) } catch { throw Failure(description: "\(error)") }
            }
        }
    }

    /// The responder's side, for the one initiator at the other end of `fd`. The responder object
    /// goes on answering late pieces of message 3 once the connection runs (TransportConnection's
    /// `unopened`). Also returns the time in ms from the first handshake datagram to the session
    /// (a round trip and the initiator's signature: an upper bound of the path's RTT).
    static func respond(path: DatagramPath, responder: HandshakeResponder<Int>, timeout: Int) throws(Failure)
        -> (session: SecureSession, milliseconds: UInt64) {
        let end = monotonicMilliseconds() + UInt64(max(0, timeout))
        var lastError: HandshakeError?
        var firstArrival: UInt64?
        while true {
            for (_, datagram) in responder.takeDatagrams() { _ = path.send(datagram) }
            if let (_, session) = responder.takeSessions().first {
                let now = monotonicMilliseconds()
                return (session, now - min(firstArrival ?? now, now))
            }
            let now = monotonicMilliseconds()
            guard now < end else {
                throw Failure(description: lastError.map { "\($0)" } ?? "no complete handshake within \(timeout) ms")
            }
            if let datagram = path.receive(waitingUntil: min(responder.nextDeadline ?? end, end)), isHandshake(datagram) {
                if firstArrival == nil { firstArrival = monotonicMilliseconds() }
                do { try responder.receive(datagram, from: 0, now: monotonicMilliseconds()) } catch { lastError = error }
            }
            if let deadline = responder.nextDeadline, monotonicMilliseconds() >= deadline {
                responder.handleTimeout(now: monotonicMilliseconds())
            }
        }
    }

    /// A handshake frame (type 0x0010 or 0x0011 at bytes 6-7). Anything else on a new path is a
    /// record the peer sent as soon as its side of the handshake was done (a resumed connection
    /// retransmits at once): ignored here, its reliability layer sends it again.
    private static func isHandshake(_ datagram: [UInt8]) -> Bool {
        datagram.count >= 8 && datagram[6] == 0 && (datagram[7] == 0x10 || datagram[7] == 0x11)
    }
}
