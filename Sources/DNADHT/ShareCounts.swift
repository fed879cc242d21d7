/// How many records each share holds, for a store's quotas (docs/PROTOCOL.md §5.5): counts by key
/// (a source's `Endpoint.shareKey`, or its network). A key whose count falls to zero is forgotten,
/// so that the table holds only the shares that hold something now: stores that kept the zeros
/// grew by one key for every address that had ever stored a record since replaced or expired.
struct ShareCounts<Key: Hashable> {
    private var counts: [Key: Int] = [:]

    /// What `key` holds (0 when nothing).
    subscript(key: Key) -> Int { counts[key, default: 0] }

    mutating func add(_ key: Key) { counts[key, default: 0] += 1 }

    /// One record of `key` less (nothing when it held none).
    mutating func remove(_ key: Key) {
        guard let count = counts[key] else { return }
        counts[key] = count > 1 ? count - 1 : nil
    }

    /// Keys that hold something.
    var keys: Int { counts.count }

    /// The key that holds the most, with its count; among equals, the one `precedes` orders first.
    func largest(breakingTiesBy precedes: (Key, Key) -> Bool) -> (key: Key, count: Int)? {
        counts.max { a, b in a.value != b.value ? a.value < b.value : precedes(b.key, a.key) }.map { ($0.key, $0.value) }
    }
}
