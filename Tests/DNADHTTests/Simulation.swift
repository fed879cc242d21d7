@testable import DNADHT
import DNACrypto
import DNAWire

/// A deterministic simulated network in one process: virtual time, per-datagram delay, loss,
/// dead nodes and partitions. Every node is a real DHTNode; only the wire is simulated.
final class SimulatedNetwork {
    enum Event {
        case deliver(from: Endpoint, to: Endpoint, datagram: [UInt8])
        case timer(Endpoint)
    }

    var now: UInt64 = 1_800_000_000_000  // virtual Unix time in ms (entries carry Unix seconds)
    private(set) var nodes: [Endpoint: DHTNode] = [:]
    private(set) var order: [Endpoint] = []
    var dead = Set<Endpoint>()
    var loss = 0.0
    /// Endpoints played by a test's adversary: it gets each datagram and returns what to send back.
    var adversaries: [Endpoint: (Endpoint, [UInt8]) -> [(Endpoint, [UInt8])]] = [:]
    /// Extra delay (ms) of what the adversary being called returns: it may set this during the
    /// call (a slow answer); back to 0 after each call.
    var adversaryDelay: UInt64 = 0
    /// Nodes behind a port-restricted NAT: a datagram reaches one only from an endpoint it sent to
    /// within `natTimeout` ms.
    var natted = Set<Endpoint>()
    var natTimeout: UInt64 = 30_000
    /// Endpoints behind a link with a small MTU and no ICMP (a path MTU black hole, PROTOCOL.md §9):
    /// datagrams to or from one larger than its limit (bytes of UDP payload) vanish.
    var maximumDatagram: [Endpoint: Int] = [:]
    /// Datagrams lost in those black holes, and the sizes of those that crossed such a link.
    private(set) var blackHoled = 0
    private(set) var crossedSmallLinks: [Int] = []
    private var mappings: [Endpoint: [Endpoint: UInt64]] = [:]
    /// Datagrams dropped by those NATs.
    private(set) var filtered = 0
    /// Datagrams between different groups are dropped while set.
    var group: ((Endpoint) -> Int)?
    var random: SimRandom
    private var heap = EventHeap()
    private(set) var delivered = 0
    /// Datagrams the nodes sent, by destination.
    private(set) var sent: [Endpoint: Int] = [:]
    private(set) var events: [Endpoint: [DHTEvent]] = [:]
    /// When each lookup finished (virtual ms), by the node that ran it.
    private(set) var finishedAt: [Endpoint: [LookupID: UInt64]] = [:]
    let configuration: DHTConfiguration

    init(seed: UInt64, configuration: DHTConfiguration) {
        random = SimRandom(seed: seed)
        self.configuration = configuration
    }

    func address(_ index: Int) -> Endpoint {
        // 10.x.y.1: every node in its own /24.
        Endpoint(host: "10.\(index / 250 % 250).\(index % 250).1", port: 4000)!
    }

    @discardableResult
    func addNode(bootstrap: [Endpoint]) -> Endpoint {
        let endpoint = address(nodes.count)
        let credential = NodeCredential.generate(difficulty: configuration.difficulty) {
            (0..<16).map { _ in UInt8(truncatingIfNeeded: self.random.next()) }
        }
        let node = DHTNode(credential: credential, configuration: configuration, now: now, seed: random.next())
        nodes[endpoint] = node
        order.append(endpoint)
        if !bootstrap.isEmpty { node.bootstrap(bootstrap, now: now) }
        flush(endpoint)
        return endpoint
    }

    /// Adds `count` nodes one after the other, each joining through `bootstrap`.
    func grow(by count: Int, through bootstrap: Endpoint) {
        for _ in 0..<count {
            addNode(bootstrap: [bootstrap])
            run(for: 100)
        }
    }

    func node(_ endpoint: Endpoint) -> DHTNode? { nodes[endpoint] }

    /// A NAT rebinding: the node at `old` is reached at, and sends from, `new` from now on (it is
    /// not told); datagrams to `old` are lost.
    func rebind(_ old: Endpoint, to new: Endpoint) {
        guard let node = nodes.removeValue(forKey: old) else { return }
        nodes[new] = node
        order = order.map { $0 == old ? new : $0 }
        if natted.remove(old) != nil { natted.insert(new) }
        if let deadline = node.nextDeadline { heap.push(max(deadline, now), .timer(new)) }
    }

    /// Sends what the node queued and schedules its next timer.
    func flush(_ endpoint: Endpoint) {
        guard let node = nodes[endpoint] else { return }
        for (to, datagram) in node.takeDatagrams() {
            sent[to, default: 0] += 1
            if natted.contains(endpoint) { mappings[endpoint, default: [:]][to] = now }
            let delay = 10 + random.next() % 50
            heap.push(now + delay, .deliver(from: endpoint, to: to, datagram: datagram))
        }
        let new = node.takeEvents()
        for case .lookupFinished(let id, _) in new { finishedAt[endpoint, default: [:]][id] = now }
        events[endpoint, default: []] += new
        if let deadline = node.nextDeadline { heap.push(max(deadline, now), .timer(endpoint)) }
    }

    /// Runs events until the queue is empty or `limit` is reached (timers keep the queue alive, so
    /// a limit is always given).
    func run(for duration: UInt64) {
        let limit = now + duration
        while let (time, event) = heap.peek(), time <= limit {
            _ = heap.pop()
            now = max(now, time)
            switch event {
            case .deliver(let from, let to, let datagram):
                if let group, group(from) != group(to) { continue }
                if loss > 0, Double(random.next() % 10_000) / 10_000 < loss { continue }
                if let limit = [maximumDatagram[from], maximumDatagram[to]].compactMap({ $0 }).min() {
                    guard datagram.count <= limit else {
                        blackHoled += 1
                        continue
                    }
                    crossedSmallLinks.append(datagram.count)
                }
                if let adversary = adversaries[to] {
                    adversaryDelay = 0
                    let answers = adversary(from, datagram)
                    for (destination, datagram) in answers {
                        heap.push(now + 10 + random.next() % 50 + adversaryDelay, .deliver(from: to, to: destination, datagram: datagram))
                    }
                    adversaryDelay = 0
                    continue
                }
                guard !dead.contains(to), !dead.contains(from), let node = nodes[to] else { continue }
                if natted.contains(to) {
                    guard let sent = mappings[to]?[from], sent + natTimeout >= now else {
                        filtered += 1
                        continue
                    }
                }
                delivered += 1
                node.receive(datagram, from: from, now: now)
                flush(to)
            case .timer(let endpoint):
                guard !dead.contains(endpoint), let node = nodes[endpoint] else { continue }
                guard let deadline = node.nextDeadline, deadline <= now else { continue }
                node.handleTimeout(now: now)
                flush(endpoint)
            }
        }
        now = max(now, limit)
    }

    /// Runs until `lookup` started at `endpoint` finished; returns its result.
    func runUntilFinished(_ endpoint: Endpoint, _ lookup: LookupID, limit: UInt64 = 120_000) -> LookupResult? {
        let end = now + limit
        while now < end {
            if let result = finished(endpoint, lookup) { return result }
            run(for: 50)
        }
        return finished(endpoint, lookup)
    }

    func finished(_ endpoint: Endpoint, _ lookup: LookupID) -> LookupResult? {
        for event in events[endpoint] ?? [] {
            if case .lookupFinished(let id, let result) = event, id == lookup { return result }
        }
        return nil
    }

    func start(_ endpoint: Endpoint, _ body: (DHTNode) -> LookupID) -> LookupID {
        guard let node = nodes[endpoint] else { return -1 }
        let id = body(node)
        flush(endpoint)
        return id
    }

    func clearEvents() {
        events.removeAll()
        finishedAt.removeAll()
    }
}

/// Deterministic randomness for the simulation (SplitMix64).
struct SimRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A binary min-heap of events by (time, insertion order), so equal times keep their order.
struct EventHeap {
    private var items: [(time: UInt64, sequence: UInt64, event: SimulatedNetwork.Event)] = []
    private var counter: UInt64 = 0

    private func less(_ a: Int, _ b: Int) -> Bool {
        (items[a].time, items[a].sequence) < (items[b].time, items[b].sequence)
    }

    mutating func push(_ time: UInt64, _ event: SimulatedNetwork.Event) {
        counter += 1
        items.append((time, counter, event))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard less(i, parent) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    func peek() -> (UInt64, SimulatedNetwork.Event)? { items.first.map { ($0.time, $0.event) } }

    mutating func pop() -> (UInt64, SimulatedNetwork.Event)? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let left = 2 * i + 1, right = left + 1
            var smallest = i
            if left < items.count, less(left, smallest) { smallest = left }
            if right < items.count, less(right, smallest) { smallest = right }
            guard smallest != i else { break }
            items.swapAt(i, smallest)
            i = smallest
        }
        return (top.time, top.event)
    }
}

/// Tests whose one clock is both the monotonic and the Unix one (as the simulation's is).
extension Mailboxes {
    mutating func put(_ item: [UInt8], now: UInt64) -> MailStatus { put(item, now: now, unix: now) }
    func items(of key: NodeID, skip: Int, budget: Int, now: UInt64) -> (total: Int, items: [[UInt8]]) {
        items(of: key, skip: skip, budget: budget, unix: now)
    }
    mutating func delete(_ request: [UInt8], now: UInt64) -> Int? { delete(request, unix: now) }
    mutating func dueForRepublishing(now: UInt64, interval: UInt64, limit: Int) -> [(key: NodeID, items: [[UInt8]])] {
        dueForRepublishing(now: now, unix: now, interval: interval, limit: limit)
    }
    mutating func sweep(now: UInt64) { sweep(unix: now) }
}

/// Puts the DHT pieces a test receives back together, by transaction: the whole message once every
/// piece came (a one-piece message at once), else nil.
struct PieceCollector {
    private var pieces: [UInt64: Reassembly] = [:]

    mutating func message(_ piece: DHTDatagram.Piece) -> [UInt8]? {
        guard piece.count > 1 else { return Array(piece.bytes) }
        if pieces[piece.transaction] == nil {
            pieces[piece.transaction] = try? Reassembly(length: piece.length, count: piece.count, index: piece.index,
                                                        bytes: piece.bytes.count, maximumLength: DHTMessage.maximumSize)
        }
        _ = try? pieces[piece.transaction]?.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)
        return pieces[piece.transaction]?.message
    }
}
