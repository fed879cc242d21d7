import DNACrypto
import DNAWire

/// Entries whose signature was already checked in this process, by SHA-256 of their wire bytes:
/// a lookup and a storing node need not check the same 3.3 KB signature twice.
final class VerifiedEntries: @unchecked Sendable {
    static let shared = VerifiedEntries()
    private var known = Set<[UInt8]>()
    private var order: [[UInt8]] = []
    private let lock = PThreadLock()

    func check(_ entry: PeerEntry, wire: [UInt8], now: UInt64) -> Bool {
        let digest = Sodium.sha256(wire)
        if lock.withLock({ known.contains(digest) }) {
            return (try? entry.validateFields(now: now)) != nil
        }
        guard (try? entry.verify(now: now)) != nil else { return false }
        lock.withLock {
            if known.insert(digest).inserted { order.append(digest) }
            if order.count > 10_000 { known.remove(order.removeFirst()) }
        }
        return true
    }
}
