/// A smoothed round-trip time and its variation (RFC 6298 §2: alpha 1/8, beta 1/4), in milliseconds.
/// Shared by the DHT's request timeouts and the transport's RTO.
package struct RTTEstimator: Sendable {
    /// SRTT; nil before the first sample.
    package private(set) var smoothed: Double?
    /// RTTVAR.
    package private(set) var variation = 0.0

    package init() {}

    package mutating func add(sample: Double) {
        if let estimate = smoothed {
            variation = 0.75 * variation + 0.25 * abs(estimate - sample)
            smoothed = 0.875 * estimate + 0.125 * sample
        } else {
            smoothed = sample
            variation = sample / 2
        }
    }
}
