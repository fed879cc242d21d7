internal import CSodium

/// Tokens (docs/PROTOCOL.md §5.5): the tokens this node gives requesters (8 bytes of keyed BLAKE2b
/// of the requester's endpoint, under a secret that rotates every `rotation` ms; the previous
/// secret stays valid one more period), and the tokens other nodes gave it, by endpoint. A token
/// proves the requester receives at the address it sends from: STORE, SIGNAL, the mail requests
/// and a FIND_VALUE answered with the entry need one.
struct Tokens {
    private var secret: [UInt8]
    private var previousSecret: [UInt8]
    private var rotatedAt: UInt64
    /// How often the secret changes, in ms.
    let rotation: UInt64
    /// Tokens other nodes gave this one, by their endpoint.
    var received: [Endpoint: UInt64] = [:]

    /// Draws both secrets from `random` (the current one first).
    init(rotation: UInt64, now: UInt64, random: inout SplitMixRandom) {
        self.rotation = rotation
        secret = Self.randomSecret(&random)
        previousSecret = Self.randomSecret(&random)
        rotatedAt = now
    }

    /// The token this node gives `endpoint` now.
    func token(for endpoint: Endpoint) -> UInt64 { Self.token(endpoint, secret: secret) }

    /// Whether `token` is one this node gave `endpoint` in this period or the one before.
    func isValid(_ token: UInt64, for endpoint: Endpoint) -> Bool {
        token == Self.token(endpoint, secret: secret) || token == Self.token(endpoint, secret: previousSecret)
    }

    /// A new secret when the period is over.
    mutating func rotate(now: UInt64, random: inout SplitMixRandom) {
        guard now >= rotatedAt + rotation else { return }
        previousSecret = secret
        secret = Self.randomSecret(&random)
        rotatedAt = now
    }

    /// Forgets the tokens received when they grow past 10,000 endpoints (at each refresh).
    mutating func trim() {
        if received.count > 10_000 { received.removeAll() }
    }

    private static func randomSecret(_ random: inout SplitMixRandom) -> [UInt8] {
        (0..<4).flatMap { _ in
            let value = random.next()
            return (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        }
    }

    private static func token(_ endpoint: Endpoint, secret: [UInt8]) -> UInt64 {
        var out = [UInt8](repeating: 0, count: 16)
        let input = endpoint.wire
        _ = crypto_generichash(&out, 16, input, UInt64(input.count), secret, secret.count)
        return out.prefix(8).reduce(0) { $0 << 8 | UInt64($1) } | 1  // never 0 (0 means "no token")
    }
}

/// The per-source rate limit (docs/PROTOCOL.md §5.5): a token bucket per source endpoint, filled
/// at `rate` requests per second up to twice that (a burst). Times are monotonic ms.
struct RateLimiter {
    /// Requests per second one source address may make.
    let rate: Double
    private var buckets: [Endpoint: (tokens: Double, at: UInt64)] = [:]
    /// Buckets kept at once; past it, buckets idle for 2 s (full again) are dropped.
    static let bucketLimit = 10_000

    init(rate: Double) { self.rate = rate }

    /// Takes one request's token from `source`'s bucket; false (nothing taken) when it is empty.
    mutating func allow(_ source: Endpoint, now: UInt64) -> Bool {
        if buckets[source] == nil, buckets.count >= Self.bucketLimit {
            // Buckets idle for 2 s are full again: forgetting them changes nothing.
            buckets = buckets.filter { now - min(now, $0.value.at) < 2000 }
            if buckets.count >= Self.bucketLimit { buckets.removeAll() }
        }
        var bucket = buckets[source] ?? (2 * rate, now)
        bucket.tokens = min(2 * rate, bucket.tokens + Double(now - min(now, bucket.at)) / 1000 * rate)
        bucket.at = now
        guard bucket.tokens >= 1 else {
            buckets[source] = bucket
            return false
        }
        bucket.tokens -= 1
        buckets[source] = bucket
        return true
    }

    /// Forgets every bucket when they grow past 10,000 (at each refresh).
    mutating func trim() {
        if buckets.count > 10_000 { buckets.removeAll() }
    }
}
