/// Kademlia's routing table: 160 k-buckets by shared prefix with the own id, each with a replacement
/// cache; a full bucket keeps its long-lived contacts (ping-before-evict).
struct RoutingTable {
    struct Entry {
        var contact: Contact
        var lastSeen: UInt64
        var failures = 0
        var pingedAt: UInt64?
    }

    struct Bucket {
        /// Least recently seen first.
        var entries: [Entry] = []
        var replacements: [Contact] = []
        var lastChanged: UInt64 = 0
    }

    let own: NodeID
    let k: Int
    /// At most this many contacts of one /24 (IPv4) or /64 (IPv6) per bucket; 0: no limit.
    let networkCap: Int
    private(set) var buckets: [Bucket]
    /// Contacts that failed and were removed: pinged again now and then, so that a network that was
    /// split heals.
    private(set) var dormant: [Contact] = []
    static let dormantLimit = 64

    init(own: NodeID, k: Int, networkCap: Int, now: UInt64) {
        self.own = own
        self.k = k
        self.networkCap = networkCap
        var bucket = Bucket()
        bucket.lastChanged = now
        buckets = Array(repeating: bucket, count: NodeID.size * 8)
    }

    var count: Int { buckets.reduce(0) { $0 + $1.entries.count } }

    func index(of id: NodeID) -> Int { min(own.commonPrefix(with: id), buckets.count - 1) }

    func contains(_ id: NodeID) -> Bool { buckets[index(of: id)].entries.contains { $0.contact.id == id } }

    /// A verified message came from `contact`. Returns the least recently seen contact of a full
    /// bucket, to ping, when the newcomer had to wait in the replacement cache.
    mutating func seen(_ contact: Contact, now: UInt64) -> Contact? {
        guard contact.id != own else { return nil }
        let b = index(of: contact.id)
        if let i = buckets[b].entries.firstIndex(where: { $0.contact.id == contact.id }) {
            var entry = buckets[b].entries.remove(at: i)
            // A known id at a new address keeps the old one while the old one answers (no hijack).
            if entry.contact.endpoint != contact.endpoint, entry.failures > 0 { entry.contact = contact }
            if entry.contact.endpoint == contact.endpoint {
                entry.failures = 0
                entry.pingedAt = nil
            }
            entry.lastSeen = now
            buckets[b].entries.append(entry)
            buckets[b].lastChanged = now
            return nil
        }
        if networkCap > 0, !contact.endpoint.isLoopback {
            let same = buckets[b].entries.filter { $0.contact.endpoint.network == contact.endpoint.network }.count
            if same >= networkCap { return nil }
        }
        dormant.removeAll { $0.id == contact.id }
        if buckets[b].entries.count < k {
            buckets[b].entries.append(Entry(contact: contact, lastSeen: now))
            buckets[b].lastChanged = now
            return nil
        }
        buckets[b].replacements.removeAll { $0.id == contact.id }
        buckets[b].replacements.append(contact)
        if buckets[b].replacements.count > k { buckets[b].replacements.removeFirst() }
        guard var oldest = buckets[b].entries.first, oldest.pingedAt == nil else { return nil }
        oldest.pingedAt = now
        buckets[b].entries[0] = oldest
        return oldest.contact
    }

    /// A request to `id` went unanswered. A contact is removed after 2 failures in a row (or 1 when it
    /// was pinged to make room), and the newest replacement takes its place.
    mutating func failed(_ id: NodeID) {
        let b = index(of: id)
        guard let i = buckets[b].entries.firstIndex(where: { $0.contact.id == id }) else { return }
        buckets[b].entries[i].failures += 1
        let entry = buckets[b].entries[i]
        guard entry.failures >= 2 || (entry.pingedAt != nil && !buckets[b].replacements.isEmpty) else { return }
        buckets[b].entries.remove(at: i)
        dormant.append(entry.contact)
        if dormant.count > Self.dormantLimit { dormant.removeFirst() }
        if let replacement = buckets[b].replacements.popLast() {
            buckets[b].entries.append(Entry(contact: replacement, lastSeen: 0))
        }
    }

    /// Up to `count` contacts closest to `target`, nearest first.
    func closest(to target: NodeID, count: Int, excluding: NodeID? = nil) -> [Contact] {
        var all: [Contact] = []
        for bucket in buckets { for entry in bucket.entries where entry.contact.id != excluding { all.append(entry.contact) } }
        return Array(all.sorted { ($0.id ^ target) < ($1.id ^ target) }.prefix(count))
    }

    /// Buckets not changed since `before` that could hold contacts (up to the deepest non-empty one).
    func staleBuckets(before: UInt64) -> [Int] {
        let deepest = buckets.lastIndex { !$0.entries.isEmpty } ?? 0
        return (0...min(deepest + 1, buckets.count - 1)).filter { buckets[$0].lastChanged < before }
    }

    mutating func touch(bucket: Int, now: UInt64) { buckets[bucket].lastChanged = now }

    mutating func takeDormant(_ count: Int) -> [Contact] {
        let taken = Array(dormant.suffix(count))
        dormant.removeLast(taken.count)
        return taken
    }

    /// Every contact (for saving the table).
    var contacts: [Contact] { buckets.flatMap { $0.entries.map(\.contact) } }
}

extension NodeID {
    /// A random id that shares exactly `prefix` leading bits with `self` (for refreshing a bucket).
    func random(sharingPrefix prefix: Int, random: [UInt8]) -> NodeID {
        var bytes = random
        let own = self.bytes
        for bit in 0..<min(prefix + 1, 160) {
            let byte = bit / 8, mask = UInt8(0x80) >> UInt8(bit % 8)
            let ownBit = own[byte] & mask
            let wanted = bit < prefix ? ownBit : (ownBit ^ mask)
            bytes[byte] = (bytes[byte] & ~mask) | wanted
        }
        return NodeID(bytes: bytes) ?? self
    }
}
