import DNACrypto
import DNADHT
import DNANet
import Glibc

/// A message that waited in the DHT (docs/PROTOCOL.md §8).
public struct OfflineDelivery: Sendable, Equatable {
    /// The sender's name as it signed it (checked against its live DHT entry when there is one).
    public var sender: IdentityName
    /// The sender's ML-DSA-65 public key, which signed the message.
    public var senderKey: [UInt8]
    public var message: [UInt8]
    /// When the sender stored it (Unix s, the sender's clock).
    public var sentAt: UInt64
    public var id: [UInt8]
}

/// Offline delivery for one identity: publishes the inbox's key record, fetches what waits in the
/// inbox (at start, then every `interval` ms, or when asked), opens and checks each message, hands
/// each out once (ids of handed-out messages are kept in `<data dir>/inbox/<name>.delivered` until
/// they expire, so a restart does not deliver them again), and asks the holders to delete them.
final class OfflineInbox: @unchecked Sendable {
    private let identity: Identity
    private let keys: InboxKeys
    private let dht: DHTService
    private let key: NodeID
    private let interval: UInt64
    private let path: String
    private let log: @Sendable (String) -> Void
    private let onChange: @Sendable () -> Void
    private let monitor = Monitor()
    private var running = true
    private var fetchRequested = true
    /// Extra fetches (Unix ms) besides the regular interval (`fetchSoon`).
    private var extraFetches: [UInt64] = []
    private var queue: [OfflineDelivery] = []
    /// Ids handed out (with their expiry, Unix s), persisted; and ids to delete from the holders.
    private var delivered: [[UInt8]: UInt64] = [:]
    private var toDelete: [[UInt8]] = []
    private var fetchesStarted = 0
    private var fetchesDone = 0
    private var thread = pthread_t()
    private var threadStarted = false

    init(identity: Identity, dht: DHTService, interval: UInt64, log: @escaping @Sendable (String) -> Void,
         onChange: @escaping @Sendable () -> Void) throws(TransportNode.Failure) {
        self.identity = identity
        self.dht = dht
        self.interval = interval
        self.log = log
        self.onChange = onChange
        do { keys = try InboxKeys(identity: identity) } catch { throw .invalid("inbox keys: \(error)") }
        guard let key = NodeID(bytes: Offline.inboxKey(identity.name)) else { throw .invalid("inbox key") }
        self.key = key
        let directory = dht.dataDirectory + "/inbox"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw .io("mkdir \(directory): \(String(cString: strerror(errno)))") }
        path = directory + "/" + identity.fingerprint.filter { $0 != ":" } + ".delivered"
        loadDelivered()
    }

    func start() throws(TransportNode.Failure) {
        let started = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<OfflineInbox>.fromOpaque(argument).takeUnretainedValue().loop()
            return nil
        }, Unmanaged.passUnretained(self).toOpaque())
        guard started == 0 else { throw .io("pthread_create: \(String(cString: strerror(started)))") }
        threadStarted = true
    }

    func stop() {
        let was = monitor.locked { () -> Bool in
            defer { running = false }
            return running
        }
        monitor.broadcast()
        if was, threadStarted { pthread_join(thread, nil) }
    }

    var hasPending: Bool { monitor.locked { !queue.isEmpty } }

    /// Fetches again after each of `delays` (ms), besides the regular interval: a peer that found this
    /// identity restarted stores what its connection had not delivered (§7.8) within seconds.
    func fetchSoon(after delays: [UInt64]) {
        let now = monotonicMilliseconds()
        monitor.locked { extraFetches += delays.map { now + $0 } }
        monitor.broadcast()
    }

    /// Fetches now and waits for it; returns how many new messages were queued (nil: stopping).
    func fetchNow(timeout: Int = 30_000) -> Int? {
        // A fetch already under way may have missed what was stored since it began: wait for the next.
        let (target, queued) = monitor.locked { () -> (Int, Int) in
            fetchRequested = true
            return (fetchesStarted + 1, queue.count)
        }
        monitor.broadcast()
        guard monitor.wait(milliseconds: timeout, until: { fetchesDone >= target || !running ? true : nil }) != nil,
              monitor.locked({ running }) else { return nil }
        return max(0, monitor.locked { queue.count } - queued)
    }

    /// The next message, waiting up to `timeout` ms. Taking it records its id (it is never handed
    /// out again) and schedules its deletion from the holders.
    func take(timeout: Int, fits: (IdentityName) -> Bool) throws(TransportNode.Failure) -> OfflineDelivery {
        var tooLong: Int?
        let outcome = monitor.wait(milliseconds: timeout) { () -> OfflineDelivery?? in
            if !running { return .some(nil) }
            guard let next = queue.first else { return nil }
            guard fits(next.sender) else {
                tooLong = next.sender.utf8.count + 1
                return .some(nil)
            }
            let first = queue.removeFirst()
            delivered[first.id] = first.sentAt + Offline.maximumLifetime + Offline.skew
            toDelete.append(first.id)
            return .some(first)
        }
        guard let outcome else { throw .timeout }
        if let tooLong { throw .nameTooLong(tooLong) }
        guard let delivery = outcome else { throw .closed }
        appendDelivered(delivery.id, expires: delivery.sentAt + Offline.maximumLifetime + Offline.skew)
        onChange()
        return delivery
    }

    /// Seals each message for `peer`'s inbox and stores them on the holders, in order, after one
    /// lookup of the inbox: the outcome of each (nil: stored). Throws what fails them all (no inbox,
    /// closing). The inbox's key record must be in the DHT (its owner published it when online),
    /// signed by the key of the owner's live entry when there is one.
    func send(_ messages: [[UInt8]], to peer: IdentityName) throws(TransportNode.Failure) -> [TransportNode.Failure?] {
        guard let peerKey = NodeID(bytes: Offline.inboxKey(peer)) else { throw .invalid("inbox key") }
        let record: InboxKeyRecord
        switch dht.inboxKeyRecord(of: peer) {
        case .found(let found): record = found
        case .stopped: throw .closed
        case .timedOut: throw .timeout
        case .none: throw .peerOffline("\(peer) has no inbox in the DHT (it never came online with this version, or its record expired)")
        }
        var outcomes = [TransportNode.Failure?](repeating: nil, count: messages.count)
        var sealed: [(index: Int, bytes: [UInt8])] = []
        for (index, message) in messages.enumerated() {
            guard message.count <= Offline.maximumMessage else {
                outcomes[index] = .tooLarge(message.count)
                continue
            }
            do { sealed.append((index, try OfflineMessage(sealing: message, from: identity, to: record, now: unixMilliseconds() / 1000).bytes)) } catch {
                outcomes[index] = .invalid("sealing: \(error)")
            }
        }
        guard let counts = dht.putMail(sealed.map(\.bytes), key: peerKey) else { throw .closed }
        for ((index, _), stored) in zip(sealed, counts) {
            if stored > 0 {
                log("stored a \(messages[index].count)-byte message for \(peer) on \(stored) nodes")
            } else {
                outcomes[index] = .unreachable("no node of \(peer)'s inbox stored the message")
            }
        }
        return outcomes
    }

    // MARK: The inbox thread

    private func loop() {
        var nextPublish: UInt64 = 0
        while monitor.locked({ running }) {
            monitor.locked {
                fetchRequested = false
                fetchesStarted += 1
                extraFetches.removeAll { $0 <= monotonicMilliseconds() }
            }
            let now = monotonicMilliseconds()
            if now >= nextPublish {
                // Every 5 minutes, so that nodes that joined near the inbox key get the record too;
                // every 5 s while no node took it (alone, or only bootstrap nodes around).
                nextPublish = now + (publish() > 0 ? 300_000 : 5_000)
            }
            fetch()
            flushDeletions()
            monitor.locked { fetchesDone += 1 }
            monitor.broadcast()
            let extra = monitor.locked { extraFetches.min() } ?? UInt64.max
            let wait = min(interval, nextPublish - min(nextPublish, monotonicMilliseconds()), extra - min(extra, monotonicMilliseconds()))
            _ = monitor.wait(milliseconds: Int(wait)) { () -> Bool? in
                if !running { return true }
                let soonest = extraFetches.min() ?? UInt64.max
                return fetchRequested || !toDelete.isEmpty || soonest <= monotonicMilliseconds() || soonest < extra ? true : nil
            }
        }
    }

    /// Stores a fresh key record; returns on how many nodes.
    private func publish() -> Int {
        do {
            let record = try InboxKeyRecord(identity: identity, keys: keys, created: unixMilliseconds() / 1000)
            let stored = dht.putMail(record.bytes, key: key) ?? 0
            log("inbox key record stored on \(stored) nodes")
            return stored
        } catch {
            log("inbox key record: \(error)")
            return 0
        }
    }

    /// Fetches the inbox (§8.4): the messages of each batch `fetchMail` delivers (those of half of
    /// the holders at once, then each later page's) are opened, checked and queued as they come.
    private func fetch() {
        var senders: [IdentityName: PeerEntry?] = [:]
        _ = dht.fetchMail(key: key) { items in
            accept(items, senders: &senders)
            return monitor.locked { running }
        }
    }

    /// Opens and checks `items` (inbox items of any kind; messages are kept) and queues the new
    /// messages, by the sending second, and within one as the holders keep them; `senders` caches
    /// the senders' live entries across the batches of one fetch.
    private func accept(_ items: [[UInt8]], senders: inout [IdentityName: PeerEntry?]) {
        let now = unixMilliseconds() / 1000
        var fresh: [OfflineDelivery] = []
        var stale: [[UInt8]] = []
        for item in items where item.count > 1 && item[1] == OfflineMessage.kind {
            guard let message = try? OfflineMessage(parsing: item, now: now), message.inboxKey == Offline.inboxKey(identity.name) else { continue }
            let known = monitor.locked { delivered[message.id] != nil || queue.contains { $0.id == message.id } }
            if known {
                stale.append(message.id)
                continue
            }
            guard let (sender, bytes) = try? message.open(with: keys) else {
                log("an inbox message does not open with this identity's keys: dropped")
                stale.append(message.id)
                continue
            }
            if senders[sender] == nil { senders[sender] = .some(dht.find(sender, timeout: 3000)) }
            if let entry = senders[sender] ?? nil, entry.publicKey != message.senderKey {
                log("an inbox message claims to be from \(sender) but is signed by another key: dropped")
                stale.append(message.id)
                continue
            }
            if !fresh.contains(where: { $0.id == message.id }) {
                fresh.append(OfflineDelivery(sender: sender, senderKey: message.senderKey, message: bytes,
                                             sentAt: message.created, id: message.id))
            }
        }
        // By the sending second; within one, as the holders keep them (in the order they came).
        fresh = fresh.enumerated().sorted { ($0.element.sentAt, $0.offset) < ($1.element.sentAt, $1.offset) }.map(\.element)
        monitor.locked {
            queue += fresh
            for id in stale where !toDelete.contains(id) { toDelete.append(id) }
        }
        monitor.broadcast()
        if !fresh.isEmpty {
            log("\(fresh.count) offline messages arrived")
            onChange()
        }
    }

    private func flushDeletions() {
        let ids = monitor.locked { () -> [[UInt8]] in
            defer { toDelete.removeAll() }
            return toDelete
        }
        var start = 0
        while start < ids.count {
            let chunk = Array(ids[start..<min(ids.count, start + InboxDeletion.maximumIDs)])
            start += chunk.count
            guard let deletion = try? InboxDeletion(owner: identity, ids: chunk, now: unixMilliseconds() / 1000) else { continue }
            _ = dht.deleteMail(deletion.bytes, key: key)
        }
    }

    // MARK: The delivered-ids file: id (16) | expires (8, Unix s) records

    private func loadDelivered() {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            bytes += chunk.prefix(n)
        }
        close(fd)
        let now = unixMilliseconds() / 1000
        var at = 0
        while bytes.count - at >= 24 {
            let id = Array(bytes[at..<at + 16])
            let expires = bytes[at + 16..<at + 24].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if expires > now { delivered[id] = expires }
            at += 24
        }
        // Rewrite without the expired ones.
        let kept = delivered.flatMap { $0.key + Self.be($0.value) }
        let temporary = path + ".tmp"
        let out = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { return }
        _ = kept.withUnsafeBytes { write(out, $0.baseAddress, $0.count) }
        fsync(out)
        close(out)
        rename(temporary, path)
    }

    private func appendDelivered(_ id: [UInt8], expires: UInt64) {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            log("cannot record a delivered id in \(path): \(String(cString: strerror(errno)))")
            return
        }
        let record = id + Self.be(expires)
        _ = record.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
    }

    private static func be(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * UInt64($0))) } }
}
