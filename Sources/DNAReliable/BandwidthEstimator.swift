/// The sender's estimate of the path's bandwidth-delay product, for telling random loss from
/// congestion: TCP Westwood+ (Mascolo, Casetti, Gerla, Sanadidi, Wang, "TCP Westwood: Bandwidth
/// Estimation for Enhanced Transport over Wireless Links", MobiCom 2001; Grieco and Mascolo, "Performance
/// evaluation and comparison of Westwood+, New Reno, and Vegas TCP congestion control", CCR 2004;
/// Linux's tcp_westwood). Bytes acknowledged are counted over intervals of one smoothed RTT (at least
/// 1 ms, the clock's unit) and each interval's rate goes through a low-pass filter (7/8 old, 1/8
/// new); the path's round-trip time is the smallest sample since the path began (`reset` starts
/// a new path).
///
/// After a loss the window falls to half, or to `floor` (the estimate times the minimum RTT) when
/// that is larger; `seesQueue` tells a loss behind a queue from a random one. Units: bytes and
/// milliseconds. Sans-I/O: times come in with the calls.
struct BandwidthEstimator {
    /// Bytes per ms (the filtered rate of acknowledged bytes); 0 before the first interval ends.
    private(set) var rate = 0.0
    /// The smallest RTT sample (ms) since the path began; nil before the first sample. It never
    /// expires: a minimum that rose after a while (BBR's 10 s RTprop window) rose to a queued sample
    /// under a standing queue (a buffer larger than the window's halving drains), and losses then
    /// looked random; one that stays too low after a route change makes every loss congestion
    /// (NewReno's behaviour), the safe side. A new path (`reset`) measures it anew.
    private(set) var minimumRTT: Double?
    /// The latest RTT sample (ms).
    private(set) var latestRTT: Double?
    /// The smallest sample of the round under way and of the last whole round (HyStart++'s
    /// per-round minimum, RFC 9406 §4.2): a round lasts at least the minimum RTT (1 ms at least)
    /// and 8 samples. One late sample (a thread that was not scheduled) is no queue.
    private var roundMinimum = Double.infinity
    private var roundSamples = 0
    private var roundStart: UInt64 = 0
    private(set) var lastRoundMinimum: Double?
    private var intervalStart: UInt64?
    private var intervalBytes = 0

    /// `bytes` newly acknowledged at `now`; `smoothedRTT`: the connection's SRTT (ms), if measured.
    mutating func acknowledged(_ bytes: Int, now: UInt64, smoothedRTT: Double?) {
        guard let start = intervalStart else {
            intervalStart = now
            intervalBytes = 0
            return
        }
        intervalBytes += bytes
        let elapsed = now &- start
        guard elapsed >= UInt64(max(1, (smoothedRTT ?? 1).rounded(.up))) else { return }
        let sample = Double(intervalBytes) / Double(elapsed)
        rate = rate == 0 ? sample : 0.875 * rate + 0.125 * sample
        intervalStart = now
        intervalBytes = 0
    }

    /// An RTT sample (ms) at `now`.
    mutating func measured(rtt sample: Double, now: UInt64) {
        latestRTT = sample
        roundMinimum = min(roundMinimum, sample)
        roundSamples += 1
        if roundSamples >= Self.samplesPerRound, now &- roundStart >= UInt64(max(1, (minimumRTT ?? 1).rounded(.up))) {
            lastRoundMinimum = roundMinimum
            roundMinimum = .infinity
            roundSamples = 0
            roundStart = now
        }
        minimumRTT = min(minimumRTT ?? sample, sample)
    }

    /// Westwood+'s ssthresh after a loss, in bytes: the estimated rate times the minimum RTT (taken
    /// as at least 1 ms, the clock's unit); 0 before anything was measured.
    var floor: Int {
        guard let minimum = minimumRTT, rate > 0 else { return 0 }
        let bytes = rate * max(1, minimum)
        return bytes < Double(Int.max / 2) ? Int(bytes) : Int.max / 2
    }

    /// Whether the RTT shows a queue on the path: the smallest sample of the last round (of the
    /// round under way once it has `samplesPerRound`, or before any round ended) above the minimum
    /// by an eighth of it, at least 4 ms and at most 16 ms (HyStart++'s delay threshold, RFC 9406
    /// §4.2; the clock's unit and a path's usual jitter stay below 4 ms). Loss with no queue behind
    /// it is taken as random (§7.3). True before any sample.
    var seesQueue: Bool {
        guard let minimum = minimumRTT else { return true }
        let current = roundSamples > 0 ? roundMinimum : nil
        guard let recent = roundSamples >= Self.samplesPerRound ? current : lastRoundMinimum ?? current else { return true }
        return recent - minimum >= min(max(minimum / 8, 4), 16)
    }

    /// RTT samples a round takes at least (HyStart++'s N_RTT_SAMPLE).
    static let samplesPerRound = 8

    /// Forgets everything (a new path).
    mutating func reset() { self = BandwidthEstimator() }
}
