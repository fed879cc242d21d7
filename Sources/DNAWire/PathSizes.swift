/// What a sender knows of the datagram size each of its paths carries (docs/PROTOCOL.md §9): the
/// PLPMTU of RFC 8899 (§2, §4.3) per destination, a sans-I/O table. Every destination starts at
/// BASE_PLPMTU (`Pieces.maximumDatagramSize`, 1,200 bytes). A destination moves to a smaller size of
/// `Pieces.datagramSizes` when
/// - it said so (a peer that takes no larger datagrams, e.g. a DHT request's answer limit), or
/// - `confirmations` times without a success at the larger size in between, an exchange at the
///   smaller size succeeded right after one at the larger size got nothing at all back: datagrams of
///   the larger size are lost while smaller ones arrive (black hole detection, RFC 8899 §4.3: one
///   such exchange could be random loss; MAX_PROBES of §5.1.2 is 3 probes of one size, here the
///   attempts of two requests).
/// A smaller size is kept for `raiseInterval` (RFC 8899's PMTU_RAISE_TIMER, 600 s), then the
/// destination starts again at BASE_PLPMTU. At most `capacity` destinations are remembered; past
/// that the expired ones go, then everything (each starts again at BASE_PLPMTU, which costs one
/// lost attempt per black-holed destination). Times are ms of the caller's monotonic clock.
public struct PathSizes<Destination: Hashable & Sendable>: Sendable {
    private struct State: Sendable {
        var size = Pieces.maximumDatagramSize
        var until: UInt64 = 0
        /// Confirmations of a black hole above `size` seen so far, and the size they point to.
        var strikes = 0
        var strikeSize = Pieces.maximumDatagramSize
        var strikeAt: UInt64 = 0
    }

    /// RFC 8899 §5.1.1 PMTU_RAISE_TIMER: how long a smaller size is kept, in ms.
    public static var raiseInterval: UInt64 { 600_000 }
    /// Confirmations needed before a destination is remembered at a smaller size.
    public static var confirmations: Int { 2 }

    private var states: [Destination: State] = [:]
    public let capacity: Int

    public init(capacity: Int = 4096) { self.capacity = capacity }

    /// The largest datagram (UDP payload bytes) to send to `destination` now.
    public func size(for destination: Destination, now: UInt64) -> Int {
        guard let state = states[destination], now < state.until else { return Pieces.maximumDatagramSize }
        return state.size
    }

    /// Destinations remembered (for tests).
    public var count: Int { states.count }

    /// The destination takes datagrams of at most `size` bytes (it said so): remembered for
    /// `raiseInterval`. A size not below the current one changes nothing.
    public mutating func limit(_ destination: Destination, to size: Int, now: UInt64) {
        let size = Pieces.datagramSizes.first { $0 <= size } ?? Pieces.minimumDatagramSize
        guard size < self.size(for: destination, now: now) else { return }
        var state = fresh(destination, now: now)
        state.size = size
        state.until = now + Self.raiseInterval
        states[destination] = state
    }

    /// An exchange at `size` succeeded right after one at a larger size got nothing back. Returns
    /// true when this made the destination's size smaller.
    @discardableResult
    public mutating func smallerWorked(_ destination: Destination, size: Int, now: UInt64) -> Bool {
        guard size < self.size(for: destination, now: now) else { return false }
        var state = fresh(destination, now: now)
        state.strikes = state.strikeSize == size || state.strikes == 0 ? state.strikes + 1 : 1
        state.strikeSize = size
        state.strikeAt = now
        states[destination] = state
        guard state.strikes >= Self.confirmations else { return false }
        limit(destination, to: size, now: now)
        return true
    }

    /// A handshake with `destination` that started at `started` bytes ended with its messages going
    /// through at `found` (its session's size, §9). A step down counts as one confirmation (random
    /// loss can make one handshake step down: at 10% loss in the lab, about one connect in ten did,
    /// and remembering it at once left every later connect to that peer at 900, then 500 bytes for
    /// 600 s); a handshake that kept its starting size clears the evidence. Returns the size the
    /// next handshake with `destination` starts at.
    @discardableResult
    public mutating func handshakeFound(_ destination: Destination, started: Int, found: Int, now: UInt64) -> Int {
        if found < started {
            smallerWorked(destination, size: found, now: now)
        } else {
            largerWorked(destination, size: found)
        }
        return size(for: destination, now: now)
    }

    /// An exchange with datagrams of `size` bytes succeeded: the evidence against that size is gone.
    public mutating func largerWorked(_ destination: Destination, size: Int) {
        guard var state = states[destination], state.strikes > 0, size > state.strikeSize else { return }
        state.strikes = 0
        states[destination] = state
    }

    private mutating func fresh(_ destination: Destination, now: UInt64) -> State {
        if var state = states[destination] {
            if now >= state.until {
                state.size = Pieces.maximumDatagramSize
                state.until = 0
            }
            if state.strikes > 0, now >= state.strikeAt + Self.raiseInterval { state.strikes = 0 }
            return state
        }
        if states.count >= capacity {
            states = states.filter { now < $0.value.until || now < $0.value.strikeAt + Self.raiseInterval }
            if states.count >= capacity { states.removeAll() }
        }
        return State()
    }
}
