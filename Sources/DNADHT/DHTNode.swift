import DNACrypto
import DNAWire
import Glibc
internal import CSodium

/// How a DHT node behaves. Times are milliseconds.
public struct DHTConfiguration: Sendable {
    public var k = 20
    public var alpha = 3
    /// Work bits a node id must carry (docs/PROTOCOL.md §5.3). All nodes of a network use the same.
    public var difficulty = 16
    /// At most this many contacts per /24 (/64) in a bucket; 0 turns the limit off. Loopback is exempt.
    public var networkCap = 2
    /// Idle buckets are refreshed, and dormant contacts pinged, this often (seed: 5 minutes).
    public var refreshInterval: UInt64 = 300_000
    /// Entries expire this long after their last_seen (owners re-announce every 5 minutes).
    public var entryLifetime: UInt64 = 1_800_000
    /// Requests per second one source address may make (bursts of twice as many); more are dropped.
    public var requestsPerSecond = 100.0
    /// Entries one source address may have stored here.
    public var entriesPerSource = 32
    public var maximumEntries = 100_000
    /// Tokens rotate this often; the previous token stays valid for one more period.
    public var tokenRotation: UInt64 = 300_000
    /// Owners ping the nodes that hold their entries this often, so that their NAT keeps the
    /// mapping the holders forward signals to (mappings last about 30 s before a reply, 120 s after).
    public var keepaliveInterval: UInt64 = 25_000
    /// A holder relays answers to a signal this long after forwarding it.
    public var relayLifetime: UInt64 = 30_000
    /// Signals in flight a holder keeps relays for; more are refused (busy).
    public var maximumRelays = 10_000
    /// A signal goes to at most this many holders of the key (redundancy against loss and Sybils).
    public var signalFanout = 3
    /// Whether this node keeps inboxes for offline delivery (§8). Bootstrap nodes do not (seed).
    public var storesMail = true
    /// Messages one sender may leave in one inbox here, messages per inbox, bytes of all inboxes.
    public var mailPerSender = 32
    public var mailPerInbox = 1000
    public var mailBytes = 64 << 20
    /// A holder stores the inbox items no MAIL_PUT brought for this long again on the nodes then
    /// closest to the inbox key (checked at each refresh), so that they reach nodes that joined
    /// since and outlive the holders that leave (Kademlia republishes hourly). At most
    /// `mailRepublishLimit` items per inbox per refresh.
    public var mailRepublishInterval: UInt64 = 3_600_000
    public var mailRepublishLimit = 64

    public init() {}
}

public typealias LookupID = Int

/// What a lookup found.
public struct LookupResult: Sendable {
    /// The closest nodes that answered, nearest first.
    public var closest: [Contact]
    /// FIND_VALUE: the freshest verified entry any of them held.
    public var entry: PeerEntry?
    /// Announce: how many of the closest nodes stored the entry.
    public var stored = 0
    /// Depth of the lookup (the longest chain of answers it followed).
    public var rounds = 0
    /// Requests sent.
    public var messages = 0
    /// Signal: its id, and the holders that forwarded it to the key's owner.
    public var signalID: UInt64 = 0
    public var forwardedBy: [Endpoint] = []
    /// Announce: how many of them already held an entry for the key as new as this one or newer
    /// (counted in `stored` too). Signed by the same key (another key is refused outright): this
    /// identity's own earlier announcement, or one a previous process made within the same second.
    public var notNewer = 0
}

/// A signal for a key this node owns, forwarded by one of the key's holders (§5.6).
public struct SignalRequest: Sendable, Equatable {
    /// The holder that forwarded it; answers go back through it (`DHTNode.reply`).
    public var holder: Endpoint
    public var relay: UInt64
    /// The signaller's address as the holder saw it.
    public var origin: Endpoint
    public var key: NodeID
    /// The signaller's id for the conversation (the same through every holder: deduplicate by it).
    public var id: UInt64
    public var payload: [UInt8]
}

/// An answer from the owner of a key to a signal this node sent.
public struct SignalDelivery: Sendable, Equatable {
    public var id: UInt64
    /// The holder that relayed it.
    public var holder: Endpoint
    /// The owner's address as the holder saw it.
    public var from: Endpoint
    public var payload: [UInt8]
}

public enum DHTEvent: Sendable {
    case lookupFinished(LookupID, LookupResult)
    case signalled(SignalRequest)
    case delivered(SignalDelivery)
    /// The answer of `from` to mail request `operation` (§8), or nil when it did not answer in time.
    case mailAnswered(operation: UInt64, from: Endpoint, answer: MailAnswer?)
}

/// Counters for logs, statistics and tests.
public struct DHTStatistics: Equatable, Sendable {
    public var received = 0
    public var sent = 0
    public var requestsAnswered = 0
    public var dropped = 0          // garbage, truncated, oversized datagrams and bad credentials
    public var rateLimited = 0
    public var unexpectedResponses = 0  // unknown transaction or from another address
    public var refusedEntries = 0
    public var storedEntries = 0
    public var timeouts = 0
    /// Inbox items this holder's republishing stored on a node that did not have them (§8.3).
    public var mailRepublished = 0
}

/// A Kademlia node as a sans-I/O state machine (docs/PROTOCOL.md §5): datagrams with their source and
/// the time go in; datagrams to endpoints, timers and lookup results come out.
public final class DHTNode {
    public let credential: NodeCredential
    public let configuration: DHTConfiguration
    public private(set) var statistics = DHTStatistics()
    private(set) var table: RoutingTable
    private var outbox: [(Endpoint, [UInt8])] = []
    private var events: [DHTEvent] = []
    private var random: SplitMixRandom

    // Requests in flight, by transaction id.
    private enum Purpose {
        case lookup(LookupID, NodeID)
        case ping(NodeID?)
        /// A ping to a bootstrap node; the lookup of the own id waits for the first answer.
        case bootstrap(LookupID)
        case store(LookupID)
        /// A SIGNAL sent by a lookup (nil: a follow-up through known holders).
        case signal(LookupID?)
        /// A request of offline delivery (§8) made by the driver.
        case mail(UInt64)
        /// A holder republishing inbox items: answers change nothing.
        case republished
    }

    private struct Pending {
        var endpoint: Endpoint
        var expected: NodeID?
        var sentAt: UInt64
        var deadline: UInt64
        var purpose: Purpose
        var body: DHTMessage.Body
        var attempt = 0

        var isPing: Bool {
            if case .ping = purpose { return true }
            return false
        }
    }

    private var pending: [UInt64: Pending] = [:]
    private var reassembly: [Key: (started: UInt64, buffer: Reassembly)] = [:]
    private struct Key: Hashable {
        var endpoint: Endpoint
        var transaction: UInt64
    }

    // Round-trip estimate (RFC 6298), for request timeouts.
    private var rtt = RTTEstimator()
    var requestTimeout: UInt64 {
        guard let srtt = rtt.smoothed else { return 1000 }
        return UInt64(min(5000, max(250, srtt + 4 * rtt.variation)))
    }

    // Storage.
    private struct Stored {
        var entry: PeerEntry
        var wire: [UInt8]
        var from: Endpoint
        /// When a STORE of it last arrived (or this node republished it).
        var storedAt: UInt64
        /// Where the owner's node stored it from: signals for the key are forwarded there.
        var owner: Endpoint?
    }

    private var store: [NodeID: Stored] = [:]
    private var storedBy: [Endpoint: Int] = [:]
    private var mailboxes: Mailboxes

    // Tokens: keyed BLAKE2b of the requester's endpoint.
    private var tokenSecret: [UInt8]
    private var previousTokenSecret: [UInt8]
    private var tokenRotatedAt: UInt64
    /// Tokens other nodes gave us, by their endpoint.
    private var tokens: [Endpoint: UInt64] = [:]

    // Rate limits: a token bucket per source.
    private var buckets: [Endpoint: (tokens: Double, at: UInt64)] = [:]

    private var lookups: [LookupID: Lookup] = [:]
    private var nextLookupID: LookupID = 1
    private var bootstrapNodes: [Endpoint] = []
    private var nextRefresh: UInt64

    // Signaling (§5.6). Holder: relays of forwarded signals. Owner: who holds each own entry.
    // Signaller: the signals sent, and which holders may deliver answers to them.
    private struct Relay {
        var origin: Endpoint
        var owner: Endpoint
        var id: UInt64
        var expires: UInt64
    }

    private var relays: [UInt64: Relay] = [:]
    private var holders: [NodeID: [Endpoint]] = [:]
    private var nextKeepalive: UInt64?
    private var outstanding: [UInt64: (holders: Set<Endpoint>, expires: UInt64)] = [:]
    private var nextSweep: UInt64 = 0

    public init(credential: NodeCredential, configuration: DHTConfiguration = DHTConfiguration(), now: UInt64,
                seed: UInt64? = nil) {
        self.credential = credential
        self.configuration = configuration
        let entropy = seed ?? Sodium.randomBytes(8).reduce(0) { $0 << 8 | UInt64($1) }
        random = SplitMixRandom(seed: entropy)
        table = RoutingTable(own: credential.id, k: configuration.k, networkCap: configuration.networkCap, now: now)
        tokenSecret = Self.randomSecret(&random)
        previousTokenSecret = Self.randomSecret(&random)
        tokenRotatedAt = now
        nextRefresh = now + configuration.refreshInterval
        mailboxes = Mailboxes(perSender: configuration.mailPerSender, perInbox: configuration.mailPerInbox,
                              maximumBytes: configuration.mailBytes)
    }

    // MARK: Offline delivery (§8)

    /// Inbox items held here (key records and messages).
    public var mailCount: Int { mailboxes.messageCount }

    /// Sends a mail request to `contact` (found by a lookup of the inbox key, which also brought its
    /// token); its answer comes as a `mailAnswered` event with `operation`.
    public func mail(_ request: MailRequest, to contact: Contact, operation: UInt64, now: UInt64) {
        let token = tokens[contact.endpoint] ?? 0
        let body: DHTMessage.Body
        switch request {
        case .put(let item): body = .mailPut(token: token, item: item)
        case .fetch(let key, let skip): body = .mailFetch(token: token, key: key, skip: skip)
        case .delete(let deletion): body = .mailDelete(token: token, request: deletion)
        }
        self.request(body, to: contact.endpoint, expected: contact.id, purpose: .mail(operation), now: now)
    }

    /// The same request answered by this node's own inboxes, when it keeps inboxes and is among the
    /// k nodes closest to `key` that `closest` lists (a node never sends itself a request).
    public func localMail(_ request: MailRequest, key: NodeID, closest: [Contact], now: UInt64) -> MailAnswer? {
        guard configuration.storesMail else { return nil }
        if closest.count >= configuration.k, let farthest = closest.map({ $0.id ^ key }).max(), !((id ^ key) < farthest) {
            return nil
        }
        switch request {
        case .put(let item): return .status(mailboxes.put(item, now: now))
        case .fetch(let key, let skip):
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: DHTMessage.mailItemsBudget, now: now)
            return .items(total: total, items: items)
        case .delete(let deletion): return mailboxes.delete(deletion, now: now).map { .deleted($0) } ?? .status(.invalid)
        }
    }

    private func answerMail(_ body: DHTMessage.Body, from source: Endpoint, now: UInt64) -> DHTMessage.Body? {
        switch body {
        case .mailPut(let presented, let item):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            return .mailStored(mailboxes.put(item, now: now))
        case .mailFetch(let presented, let key, let skip):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: DHTMessage.mailItemsBudget, now: now)
            return .mailItems(total: total, items: items)
        case .mailDelete(let presented, let request):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            guard let count = mailboxes.delete(request, now: now) else { return .mailStored(.invalid) }
            return .mailDeleted(count: count)
        default:
            return nil
        }
    }

    private static func randomSecret(_ random: inout SplitMixRandom) -> [UInt8] {
        (0..<4).flatMap { _ in
            let value = random.next()
            return (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        }
    }

    public var id: NodeID { credential.id }
    public var routingTableSize: Int { table.count }
    public var storedCount: Int { store.count }
    public var knownContacts: [Contact] { table.contacts }

    public func takeDatagrams() -> [(Endpoint, [UInt8])] {
        defer { outbox.removeAll() }
        return outbox
    }

    public func takeEvents() -> [DHTEvent] {
        defer { events.removeAll() }
        return events
    }

    // MARK: Operations

    /// Contacts the bootstrap nodes and looks up the own id to fill the table. Retried at each
    /// refresh while the table is short.
    @discardableResult
    public func bootstrap(_ endpoints: [Endpoint], now: UInt64) -> LookupID {
        bootstrapNodes = endpoints
        let lookupID = nextLookupID
        nextLookupID += 1
        let lookup = Lookup(id: lookupID, target: id, kind: .nodes, k: configuration.k)
        for contact in table.closest(to: id, count: configuration.k) { lookup.add(contact, round: 1) }
        lookups[lookupID] = lookup
        lookup.bootstrapPings = endpoints.count
        lookup.isJoin = true
        for endpoint in endpoints {
            request(.ping, to: endpoint, expected: nil, purpose: .bootstrap(lookupID), now: now)
        }
        if endpoints.isEmpty { advance(lookup, now: now) }
        return lookupID
    }

    /// Finds the node closest to `target` (FIND_NODE).
    @discardableResult
    public func lookup(_ target: NodeID, now: UInt64) -> LookupID {
        startLookup(target: target, kind: .nodes, now: now)
    }

    /// Finds the freshest valid entry stored under `key` (FIND_VALUE, asking all of the k closest).
    @discardableResult
    public func findValue(_ key: NodeID, now: UInt64) -> LookupID {
        startLookup(target: key, kind: .value, now: now)
    }

    /// Stores a signed entry on the k nodes closest to its key.
    @discardableResult
    public func announce(_ entry: PeerEntry, now: UInt64) -> LookupID {
        startLookup(target: NodeID.key(of: entry.identity), kind: .announce(entry.wireBytes), now: now)
    }

    /// Sends `payload` to the owner of `key` through up to `signalFanout` of the nodes holding its
    /// entry, met on a FIND_VALUE lookup (§5.6). The lookup's result names the holders that
    /// forwarded it; the owner's answers arrive as `.delivered` events with the same signal id.
    @discardableResult
    public func signal(_ key: NodeID, payload: [UInt8], now: UInt64) -> (lookup: LookupID, signal: UInt64) {
        let signalID = random.next() | 1
        let lookupID = startLookup(target: key, kind: .signal(signalID, payload), now: now)
        return (lookupID, signalID)
    }

    /// A further message of the conversation `signalID` through holders that forwarded its first one.
    public func signal(_ key: NodeID, id signalID: UInt64, payload: [UInt8], through holders: [Endpoint], now: UInt64) {
        for holder in holders {
            guard let token = tokens[holder] else { continue }
            outstanding[signalID, default: ([], now + 60_000)].holders.insert(holder)
            request(.signal(token: token, key: key, id: signalID, payload: payload), to: holder, expected: nil,
                    purpose: .signal(nil), now: now)
        }
    }

    /// Answers a signal this node received for one of its keys, through the holder that forwarded it.
    public func reply(to request: SignalRequest, payload: [UInt8]) {
        send(DHTMessage(transaction: random.next(), salt: credential.salt, body: .reply(relay: request.relay, payload: payload)),
             to: request.holder)
    }

    /// Holder: forwards a signal to the owner of `key` when the entry is alive and its owner known.
    private func relay(key: NodeID, id signalID: UInt64, payload: [UInt8], token: UInt64, from source: Endpoint,
                       now: UInt64) -> SignalStatus {
        guard validToken(token, for: source) else { return .badToken }
        guard let held = store[key], alive(held.entry, now: now), let owner = held.owner else { return .unknown }
        if relays.count >= configuration.maximumRelays {
            relays = relays.filter { $0.value.expires > now }
            guard relays.count < configuration.maximumRelays else { return .busy }
        }
        let relayID = random.next() | 1
        relays[relayID] = Relay(origin: source, owner: owner, id: signalID, expires: now + configuration.relayLifetime)
        send(DHTMessage(transaction: random.next(), salt: credential.salt,
                        body: .forward(relay: relayID, origin: source, key: key, id: signalID, payload: payload)), to: owner)
        return .forwarded
    }

    /// FORWARD (at an owner), REPLY (at a holder), DELIVER (at a signaller): each accepted only from
    /// the node it can come from, else counted as unexpected and dropped.
    private func notice(_ body: DHTMessage.Body, from source: Endpoint, now: UInt64) {
        switch body {
        case .forward(let relay, let origin, let key, let signalID, let payload):
            guard holders[key]?.contains(source) == true else {
                statistics.unexpectedResponses += 1
                return
            }
            events.append(.signalled(SignalRequest(holder: source, relay: relay, origin: origin, key: key, id: signalID, payload: payload)))
        case .reply(let relayID, let payload):
            guard let relay = relays[relayID], relay.expires > now, relay.owner == source else {
                statistics.unexpectedResponses += 1
                return
            }
            send(DHTMessage(transaction: random.next(), salt: credential.salt,
                            body: .deliver(id: relay.id, from: source, payload: payload)), to: relay.origin)
        case .deliver(let signalID, let from, let payload):
            guard let sent = outstanding[signalID], sent.expires > now, sent.holders.contains(source) else {
                statistics.unexpectedResponses += 1
                return
            }
            events.append(.delivered(SignalDelivery(id: signalID, holder: source, from: from, payload: payload)))
        default:
            return
        }
    }

    /// The entry held here for `key`, if any and still alive.
    public func localEntry(_ key: NodeID, now: UInt64) -> PeerEntry? {
        guard let stored = store[key], alive(stored.entry, now: now) else { return nil }
        return stored.entry
    }

    // MARK: Input

    /// One datagram from `source`. Anything invalid is counted and dropped; nothing throws.
    public func receive(_ datagram: [UInt8], from source: Endpoint, now: UInt64) {
        statistics.received += 1
        let piece: DHTDatagram.Piece
        do { piece = try DHTDatagram.parse(datagram) } catch {
            statistics.dropped += 1
            return
        }
        let bytes: [UInt8]
        if piece.count == 1 {
            bytes = Array(piece.bytes)
        } else {
            let key = Key(endpoint: source, transaction: piece.transaction)
            var entry = reassembly[key]
            if entry == nil {
                if reassembly.count >= 64, let oldest = reassembly.min(by: { $0.value.started < $1.value.started }) {
                    reassembly[oldest.key] = nil
                }
                guard let buffer = try? Reassembly(length: piece.length, count: piece.count,
                                                   maximumLength: DHTMessage.maximumSize, pieceSize: DHTDatagram.pieceSize) else {
                    statistics.dropped += 1
                    return
                }
                entry = (now, buffer)
            }
            guard var (started, buffer) = entry,
                  (try? buffer.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)) != nil else {
                reassembly[key] = nil
                statistics.dropped += 1
                return
            }
            guard let message = buffer.message else {
                reassembly[key] = (started, buffer)
                return
            }
            started = 0
            reassembly[key] = nil
            bytes = message
        }
        let message: DHTMessage
        do { message = try DHTMessage(parsing: bytes, transaction: piece.transaction) } catch {
            statistics.dropped += 1
            return
        }
        guard let sender = NodeCredential(salt: message.salt, difficulty: configuration.difficulty) else {
            statistics.dropped += 1
            return
        }
        if message.body.isNotice {
            guard allow(source, now: now) else {
                statistics.rateLimited += 1
                return
            }
            notice(message.body, from: source, now: now)
        } else if message.body.isRequest {
            guard allow(source, now: now) else {
                statistics.rateLimited += 1
                return
            }
            if let oldest = table.seen(Contact(id: sender.id, endpoint: source), now: now) {
                ping(oldest.endpoint, expected: oldest.id, now: now)
            }
            answer(message, sender: sender.id, from: source, requestSize: datagram.count, now: now)
        } else {
            handleResponse(message, sender: sender.id, from: source, now: now)
        }
    }

    // MARK: Answers

    private func answer(_ request: DHTMessage, sender: NodeID, from source: Endpoint, requestSize: Int, now: UInt64) {
        statistics.requestsAnswered += 1
        let token = self.token(for: source)
        var body: DHTMessage.Body
        switch request.body {
        case .ping:
            body = .pong(observed: source, token: token)
        case .findNode(let target, _):
            body = .nodes(observed: source, token: token, held: nil,
                          contacts: table.closest(to: target, count: configuration.k, excluding: sender))
        case .findValue(let key, let presented):
            let held = store[key].flatMap { alive($0.entry, now: now) ? $0 : nil }
            if let held, validToken(presented, for: source) {
                body = .value(entry: held.wire)
            } else {
                body = .nodes(observed: source, token: token, held: held?.entry.lastSeen,
                              contacts: table.closest(to: key, count: configuration.k, excluding: sender))
            }
        case .store(let presented, let wire):
            body = .stored(accept(wire, token: presented, from: source, sender: sender, now: now))
        case .signal(let presented, let key, let signalID, let payload):
            body = .signalAck(relay(key: key, id: signalID, payload: payload, token: presented, from: source, now: now))
        case .mailPut, .mailFetch, .mailDelete:
            guard let answer = answerMail(request.body, from: source, now: now) else { return }
            body = answer
        default:
            return
        }
        // No reflection: without a valid token, an answer is at most 3x the request's bytes.
        var response = DHTMessage(transaction: request.transaction, salt: credential.salt, body: body)
        while case .nodes(let observed, let token, let held, var contacts) = response.body,
              !contacts.isEmpty, response.bytes.count + FrameHeader.size + DHTDatagram.pieceHeaderSize > 3 * requestSize {
            contacts.removeLast()
            response.body = .nodes(observed: observed, token: token, held: held, contacts: contacts)
        }
        send(response, to: source)
    }

    private func accept(_ wire: [UInt8], token: UInt64, from source: Endpoint, sender: NodeID, now: UInt64) -> StoreStatus {
        guard validToken(token, for: source) else { return .badToken }
        guard let entry = try? PeerEntry(wire: wire), verified(entry, wire: wire, now: now) else {
            statistics.refusedEntries += 1
            return .invalid
        }
        let key = NodeID.key(of: entry.identity)
        if let existing = store[key], alive(existing.entry, now: now) {
            if existing.entry.publicKey != entry.publicKey {
                statistics.refusedEntries += 1
                return .taken
            }
            if existing.entry.lastSeen >= entry.lastSeen {
                guard existing.wire == wire else { return .older }
                store[key]?.storedAt = now
                return .stored
            }
        } else {
            guard storedBy[source, default: 0] < configuration.entriesPerSource, store.count < configuration.maximumEntries else {
                statistics.refusedEntries += 1
                return .quota
            }
        }
        if let previous = store[key] { storedBy[previous.from, default: 1] -= 1 }
        // The owner's address is learnt only from a fresher entry stored by the node the entry names
        // (a copy replayed from elsewhere, or a holder's republishing, does not move it).
        let owner = sender.bytes == entry.nodeID ? source : (store[key]?.entry.publicKey == entry.publicKey ? store[key]?.owner : nil)
        store[key] = Stored(entry: entry, wire: wire, from: source, storedAt: now, owner: owner)
        storedBy[source, default: 0] += 1
        statistics.storedEntries += 1
        return .stored
    }

    /// Fields, signature (through the process-wide cache), and not expired.
    private func verified(_ entry: PeerEntry, wire: [UInt8], now: UInt64) -> Bool {
        guard alive(entry, now: now) else { return false }
        return VerifiedEntries.shared.check(entry, wire: wire, now: now / 1000)
    }

    private func alive(_ entry: PeerEntry, now: UInt64) -> Bool {
        entry.lastSeen &* 1000 &+ configuration.entryLifetime > now
    }

    // MARK: Responses

    private func handleResponse(_ message: DHTMessage, sender: NodeID, from source: Endpoint, now: UInt64) {
        // Accepted only from the address that was asked, and only from the node we meant to ask.
        guard let request = pending[message.transaction], request.endpoint == source,
              request.expected == nil || request.expected == sender else {
            statistics.unexpectedResponses += 1
            return
        }
        pending[message.transaction] = nil
        rtt.add(sample: Double(now - request.sentAt))
        if let oldest = table.seen(Contact(id: sender, endpoint: source), now: now) {
            ping(oldest.endpoint, expected: oldest.id, now: now)
        }
        switch message.body {
        case .pong(_, let token), .nodes(_, let token, _, _): tokens[source] = token
        default: break
        }
        switch request.purpose {
        case .ping: break
        case .bootstrap(let lookupID):
            guard let lookup = lookups[lookupID] else { return }
            lookup.bootstrapPings -= 1
            lookup.add(Contact(id: sender, endpoint: source), round: 1)
            advance(lookup, now: now)
        case .lookup(let lookupID, let candidate):
            guard let lookup = lookups[lookupID] else { return }
            lookup.answered(candidate, with: message.body, now: now, node: self)
            advance(lookup, now: now)
        case .store(let lookupID):
            guard let lookup = lookups[lookupID] else { return }
            if case .stored(let status) = message.body, status == .stored || status == .older {
                lookup.result.stored += 1
                if status == .older { lookup.result.notNewer += 1 }
                if !lookup.isSilent { lookup.holders.append(source) }
            }
            lookup.storesInFlight -= 1
            advance(lookup, now: now)
        case .signal(let lookupID):
            guard let lookupID, let lookup = lookups[lookupID] else { return }
            lookup.signalsInFlight -= 1
            if case .signalAck(.forwarded) = message.body { lookup.result.forwardedBy.append(source) }
            advance(lookup, now: now)
        case .mail(let operation):
            let answer: MailAnswer?
            switch message.body {
            case .mailStored(let status): answer = .status(status)
            case .mailItems(let total, let items): answer = .items(total: total, items: items)
            case .mailDeleted(let count): answer = .deleted(count)
            default: answer = nil
            }
            events.append(.mailAnswered(operation: operation, from: source, answer: answer))
        case .republished:
            if case .mailStored(.stored) = message.body { statistics.mailRepublished += 1 }
        }
    }

    // MARK: Timers

    /// When `handleTimeout` must next run.
    public var nextDeadline: UInt64? {
        let requests = min(pending.values.map(\.deadline).min() ?? nextRefresh, nextRefresh)
        return nextKeepalive.map { min($0, requests) } ?? requests
    }

    public func handleTimeout(now: UInt64) {
        for (transaction, request) in pending where request.deadline <= now {
            pending[transaction] = nil
            statistics.timeouts += 1
            // A contact fails once per request that got no answer, not once per lost attempt, and
            // not when pieces of its answer came (it is alive; the path lost one piece).
            let answering = reassembly[Key(endpoint: request.endpoint, transaction: transaction)] != nil
            if let expected = request.expected, request.isPing || request.attempt >= 2, !answering { table.failed(expected) }
            // A request (or a piece of its answer: a VALUE is 5 datagrams) that was lost is sent
            // again, up to twice (a small network has no other node to ask); pings are not: they
            // test liveness. A node that is gone thus costs 3 request timeouts.
            if request.attempt < 2, !request.isPing {
                var again = request
                again.attempt += 1
                again.sentAt = now
                again.deadline = now + requestTimeout
                let retry = newTransaction()
                pending[retry] = again
                send(DHTMessage(transaction: retry, salt: credential.salt, body: request.body), to: request.endpoint)
                continue
            }
            switch request.purpose {
            case .ping: break
            case .bootstrap(let lookupID):
                if let lookup = lookups[lookupID] {
                    lookup.bootstrapPings -= 1
                    advance(lookup, now: now)
                }
            case .lookup(let lookupID, let candidate):
                if let lookup = lookups[lookupID] {
                    lookup.failed(candidate)
                    advance(lookup, now: now)
                }
            case .store(let lookupID):
                if let lookup = lookups[lookupID] {
                    lookup.storesInFlight -= 1
                    advance(lookup, now: now)
                }
            case .signal(let lookupID):
                if let lookupID, let lookup = lookups[lookupID] {
                    lookup.signalsInFlight -= 1
                    advance(lookup, now: now)
                }
            case .mail(let operation):
                events.append(.mailAnswered(operation: operation, from: request.endpoint, answer: nil))
            case .republished: break
            }
        }
        if let keepalive = nextKeepalive, now >= keepalive {
            // Owners: keep the NAT mapping toward every holder of an own entry open.
            for endpoint in Set(holders.values.joined()) { ping(endpoint, expected: nil, now: now) }
            nextKeepalive = holders.isEmpty ? nil : now + configuration.keepaliveInterval
        }
        // Expired relays and signals go every 5 s (each is also checked for expiry where it is used).
        if now >= nextSweep {
            nextSweep = now + 5000
            if !relays.isEmpty { relays = relays.filter { $0.value.expires > now } }
            if !outstanding.isEmpty { outstanding = outstanding.filter { $0.value.expires > now } }
            mailboxes.sweep(now: now)
        }
        for (key, partial) in reassembly where partial.started + 5000 <= now { reassembly[key] = nil }
        if now >= tokenRotatedAt + configuration.tokenRotation {
            previousTokenSecret = tokenSecret
            tokenSecret = Self.randomSecret(&random)
            tokenRotatedAt = now
        }
        if now >= nextRefresh {
            nextRefresh = now + configuration.refreshInterval
            refresh(now: now)
        }
    }

    /// Seed's periodic refresh: look up a random id in every idle bucket, ping dormant contacts (so a
    /// split network heals), re-contact the bootstrap nodes when the table is short, drop expired entries.
    public func refresh(now: UInt64) {
        for index in table.staleBuckets(before: now - min(now, configuration.refreshInterval)).prefix(8) {
            table.touch(bucket: index, now: now)
            let bytes = (0..<20).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            startLookup(target: id.random(sharingPrefix: index, random: bytes), kind: .nodes, now: now, silent: true)
        }
        for contact in table.takeDormant(8) { ping(contact.endpoint, expected: contact.id, now: now) }
        if table.count < configuration.k { for endpoint in bootstrapNodes { ping(endpoint, expected: nil, now: now) } }
        for (key, stored) in store where !alive(stored.entry, now: now) {
            store[key] = nil
            storedBy[stored.from, default: 1] -= 1
        }
        // Holders republish (Kademlia, §2.5 of the paper) what no STORE refreshed during the last
        // period, so that an entry reaches the nodes that became its closest; when the owner
        // re-announces every period, nobody needs to.
        for (key, stored) in store where now >= stored.storedAt + configuration.refreshInterval {
            store[key]?.storedAt = now
            startLookup(target: key, kind: .announce(stored.wire), now: now, silent: true)
        }
        // Inbox items likewise, hourly: to the k nodes now closest to the inbox key (§8.3).
        if configuration.storesMail {
            for (key, items) in mailboxes.dueForRepublishing(now: now, interval: configuration.mailRepublishInterval,
                                                             limit: configuration.mailRepublishLimit) {
                startLookup(target: key, kind: .republishMail(items), now: now, silent: true)
            }
        }
        if storedBy.count > 10_000 { storedBy = storedBy.filter { $0.value > 0 } }
        if buckets.count > 10_000 { buckets.removeAll() }
        if tokens.count > 10_000 { tokens.removeAll() }
    }

    // MARK: Sending

    private func newTransaction() -> UInt64 {
        var transaction = random.next()
        while pending[transaction] != nil { transaction = random.next() }
        return transaction
    }

    private func send(_ message: DHTMessage, to endpoint: Endpoint) {
        for datagram in DHTDatagram.encode(message) {
            outbox.append((endpoint, datagram))
            statistics.sent += 1
        }
    }

    private func request(_ body: DHTMessage.Body, to endpoint: Endpoint, expected: NodeID?, purpose: Purpose, now: UInt64) {
        let transaction = newTransaction()
        pending[transaction] = Pending(endpoint: endpoint, expected: expected, sentAt: now,
                                       deadline: now + requestTimeout, purpose: purpose, body: body)
        send(DHTMessage(transaction: transaction, salt: credential.salt, body: body), to: endpoint)
    }

    private func ping(_ endpoint: Endpoint, expected: NodeID?, now: UInt64) {
        request(.ping, to: endpoint, expected: expected, purpose: .ping(expected), now: now)
    }

    private func token(for endpoint: Endpoint) -> UInt64 { Self.token(endpoint, secret: tokenSecret) }

    private func validToken(_ token: UInt64, for endpoint: Endpoint) -> Bool {
        token == Self.token(endpoint, secret: tokenSecret) || token == Self.token(endpoint, secret: previousTokenSecret)
    }

    private static func token(_ endpoint: Endpoint, secret: [UInt8]) -> UInt64 {
        var out = [UInt8](repeating: 0, count: 16)
        let input = endpoint.wire
        _ = crypto_generichash(&out, 16, input, UInt64(input.count), secret, secret.count)
        return out.prefix(8).reduce(0) { $0 << 8 | UInt64($1) } | 1  // never 0 (0 means "no token")
    }

    private func allow(_ source: Endpoint, now: UInt64) -> Bool {
        let rate = configuration.requestsPerSecond
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

    // MARK: Lookups

    @discardableResult
    private func startLookup(target: NodeID, kind: Lookup.Kind, now: UInt64, silent: Bool = false) -> LookupID {
        let lookupID = nextLookupID
        nextLookupID += 1
        let lookup = Lookup(id: lookupID, target: target, kind: kind, k: configuration.k)
        lookup.isSilent = silent
        let initial = table.closest(to: target, count: configuration.k)
        for contact in initial { lookup.add(contact, round: 1) }
        // Every contact was lost (a lossy path, a network that went away and came back): the
        // bootstrap nodes are pinged again now rather than at the next refresh.
        if initial.isEmpty, !silent {
            for endpoint in bootstrapNodes { ping(endpoint, expected: nil, now: now) }
        }
        lookups[lookupID] = lookup
        advance(lookup, now: now)
        return lookupID
    }

    private func advance(_ lookup: Lookup, now: UInt64) {
        switch lookup.phase {
        case .searching:
            for (contact, query) in lookup.next(alpha: configuration.alpha, tokens: tokens) {
                lookup.result.messages += 1
                request(query, to: contact.endpoint, expected: contact.id, purpose: .lookup(lookup.id, contact.id), now: now)
            }
            if case .signal(let signalID, let payload) = lookup.kind {
                for (contact, token) in lookup.signalTargets(limit: configuration.signalFanout) {
                    lookup.signalsInFlight += 1
                    lookup.result.messages += 1
                    outstanding[signalID, default: ([], now + 60_000)].holders.insert(contact.endpoint)
                    request(.signal(token: token, key: lookup.target, id: signalID, payload: payload), to: contact.endpoint,
                            expected: contact.id, purpose: .signal(lookup.id), now: now)
                }
            }
            guard lookup.isDone else { return }
            if case .announce(let wire) = lookup.kind {
                lookup.phase = .storing
                for (contact, token) in lookup.storeTargets() {
                    lookup.storesInFlight += 1
                    lookup.result.messages += 1
                    request(.store(token: token, entry: wire), to: contact.endpoint, expected: contact.id,
                            purpose: .store(lookup.id), now: now)
                }
                if lookup.storesInFlight > 0 { return }
            }
            if case .republishMail(let items) = lookup.kind {
                for (contact, token) in lookup.storeTargets() {
                    for item in items {
                        lookup.result.messages += 1
                        request(.mailPut(token: token, item: item), to: contact.endpoint, expected: contact.id,
                                purpose: .republished, now: now)
                    }
                }
            }
            finish(lookup, now: now)
        case .storing:
            if lookup.storesInFlight <= 0 { finish(lookup, now: now) }
        case .finished:
            return
        }
    }

    private func finish(_ lookup: Lookup, now: UInt64) {
        lookup.phase = .finished
        lookup.result.closest = lookup.answeredClosest()
        lookups[lookup.id] = nil
        if case .announce = lookup.kind, !lookup.isSilent {
            holders[lookup.target] = Array(lookup.holders.prefix(configuration.k))
            if nextKeepalive == nil { nextKeepalive = now + configuration.keepaliveInterval }
        }
        if !lookup.isSilent { events.append(.lookupFinished(lookup.id, lookup.result)) }
        if lookup.isJoin { refreshFartherBuckets(now: now) }
    }

    /// After joining, as in the Kademlia paper: look up a random id in every bucket farther than the
    /// nearest neighbour that is not full, so that this node knows some node in each part of the
    /// id space (and those nodes learn of it).
    private func refreshFartherBuckets(now: UInt64) {
        guard let nearest = table.closest(to: id, count: 1).first else { return }
        for index in 0..<table.index(of: nearest.id) where table.buckets[index].entries.count < configuration.k {
            table.touch(bucket: index, now: now)
            let bytes = (0..<20).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            startLookup(target: id.random(sharingPrefix: index, random: bytes), kind: .nodes, now: now, silent: true)
        }
    }

    /// Checks an entry a lookup received (the process-wide cache spares repeated signature checks).
    func acceptable(_ wire: [UInt8], key: NodeID, now: UInt64) -> PeerEntry? {
        guard let entry = try? PeerEntry(wire: wire), NodeID.key(of: entry.identity) == key,
              verified(entry, wire: wire, now: now) else {
            statistics.refusedEntries += 1
            return nil
        }
        return entry
    }
}

/// One iterative lookup: the candidates nearest the target, α requests in flight, until the k
/// nearest that are alive have all answered.
final class Lookup {
    enum Kind {
        case nodes
        case value
        case announce([UInt8])
        /// FIND_NODE, then MAIL_PUT of these inbox items to the k closest (a holder republishing).
        case republishMail([[UInt8]])
        /// FIND_VALUE that sends the signal to the first holders it meets.
        case signal(UInt64, [UInt8])
    }

    enum Phase { case searching, storing, finished }

    enum State { case fresh, waiting, answered, failed }

    struct Candidate {
        var contact: Contact
        var state: State = .fresh
        var round: Int
        var token: UInt64 = 0
        /// FIND_VALUE: the last_seen of the entry it holds, which it sends only to a requester with a token.
        var held: UInt64?
        var askedAgain = false
    }

    let id: LookupID
    let target: NodeID
    let kind: Kind
    let k: Int
    var phase = Phase.searching
    var result = LookupResult(closest: [])
    var storesInFlight = 0
    /// Announce: the nodes that stored the entry.
    var holders: [Endpoint] = []
    /// Signal: SIGNALs in flight, and the holders already sent one.
    var signalsInFlight = 0
    private var signalled = Set<NodeID>()
    /// Bootstrap: pings still unanswered (the lookup waits for them before it can end empty).
    var bootstrapPings = 0
    /// The lookup of the own id when joining: when it ends, the farther buckets are refreshed.
    var isJoin = false
    /// Internal (refresh): no event when it ends.
    var isSilent = false
    private var candidates: [NodeID: Candidate] = [:]

    init(id: LookupID, target: NodeID, kind: Kind, k: Int) {
        self.id = id
        self.target = target
        self.kind = kind
        self.k = k
    }

    func add(_ contact: Contact, round: Int) {
        guard candidates[contact.id] == nil else { return }
        candidates[contact.id] = Candidate(contact: contact, round: round)
    }

    /// The k nearest candidates that have not failed.
    private var nearest: [Candidate] {
        Array(candidates.values.filter { $0.state != .failed }.sorted { ($0.contact.id ^ target) < ($1.contact.id ^ target) }.prefix(k))
    }

    var isDone: Bool {
        guard bootstrapPings <= 0, holderToAsk == nil else { return false }
        if case .signal = kind {
            // Done once a holder forwarded it (or the search ran out), with no SIGNAL in flight.
            guard signalsInFlight == 0 else { return false }
            if !result.forwardedBy.isEmpty { return true }
        }
        let near = nearest
        // FIND_VALUE: a verified entry, and the nearest `quorum` candidates all answered without
        // any of them holding a fresher one (a Sybil would have to be all of them to hide it).
        if case .value = kind, result.entry != nil, near.count >= Self.quorum,
           near.prefix(Self.quorum).allSatisfy({ $0.state == .answered }) { return true }
        return near.allSatisfy { $0.state == .answered } && !candidates.values.contains { $0.state == .waiting }
    }

    /// FIND_VALUE ends once this many of the nearest candidates answered and the entry is verified.
    static let quorum = 8

    /// FIND_VALUE: the answered candidate that said it holds an entry fresher than the best one
    /// received, not asked again yet (the freshest first). Only it gets a second request.
    private var holderToAsk: Candidate? {
        guard case .value = kind else { return nil }
        let best = result.entry?.lastSeen ?? 0
        return candidates.values.filter { $0.state == .answered && !$0.askedAgain && ($0.held ?? 0) > best }
            .max { ($0.held ?? 0) < ($1.held ?? 0) }
    }

    /// The next requests to send, keeping at most α in flight.
    func next(alpha: Int, tokens: [Endpoint: UInt64]) -> [(Contact, DHTMessage.Body)] {
        var inFlight = candidates.values.filter { $0.state == .waiting }.count
        var out: [(Contact, DHTMessage.Body)] = []
        var chosen = nearest.filter { $0.state == .fresh }
        if let holder = holderToAsk, !candidates.values.contains(where: { $0.state == .waiting && $0.askedAgain }) {
            chosen.insert(holder, at: 0)
        }
        for candidate in chosen where inFlight < alpha {
            candidates[candidate.contact.id]?.state = .waiting
            if candidate.state == .answered { candidates[candidate.contact.id]?.askedAgain = true }
            inFlight += 1
            let token = tokens[candidate.contact.endpoint] ?? 0
            candidates[candidate.contact.id]?.token = token
            switch kind {
            case .nodes, .announce, .republishMail: out.append((candidate.contact, .findNode(target: target, token: token)))
            case .value, .signal: out.append((candidate.contact, .findValue(key: target, token: token)))
            }
        }
        return out
    }

    func answered(_ id: NodeID, with body: DHTMessage.Body, now: UInt64, node: DHTNode) {
        guard var candidate = candidates[id] else { return }
        candidate.state = .answered
        result.rounds = max(result.rounds, candidate.round)
        switch body {
        case .nodes(_, let token, let held, let contacts):
            candidate.token = token
            switch kind {
            case .value, .signal: candidate.held = held
            default: break
            }
            for contact in contacts where contact.id != node.id { add(contact, round: candidate.round + 1) }
        case .value(let wire):
            if case .signal = kind {
                candidate.held = 1  // it holds the entry (and answered with it: the token it was sent is good)
                break
            }
            if let entry = node.acceptable(wire, key: target, now: now),
               result.entry.map({ entry.lastSeen > $0.lastSeen }) ?? true {
                result.entry = entry
            }
        default: break
        }
        candidates[id] = candidate
    }

    func failed(_ id: NodeID) { candidates[id]?.state = .failed }

    func answeredClosest() -> [Contact] {
        nearest.filter { $0.state == .answered }.map(\.contact)
    }

    /// Signal: holders (answered, holding an entry for the key, with a token) not sent the signal yet,
    /// nearest first, up to `limit` in all.
    func signalTargets(limit: Int) -> [(Contact, UInt64)] {
        let room = limit - signalled.count
        guard room > 0 else { return [] }
        let chosen = candidates.values.filter { $0.state == .answered && $0.held != nil && $0.token != 0 && !signalled.contains($0.contact.id) }
            .sorted { ($0.contact.id ^ target) < ($1.contact.id ^ target) }.prefix(room)
        for candidate in chosen { signalled.insert(candidate.contact.id) }
        return chosen.map { ($0.contact, $0.token) }
    }

    func storeTargets() -> [(Contact, UInt64)] {
        nearest.filter { $0.state == .answered && $0.token != 0 }.map { ($0.contact, $0.token) }
    }
}

/// SplitMix64: the node's cheap randomness for transaction ids and refresh targets (seeded from
/// libsodium, or from the simulation's seed so that runs repeat).
struct SplitMixRandom {
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

extension DHTNode {
    /// What survives a restart: the routing table's contacts and the entries held (the node's
    /// credential is saved by the driver next to it).
    public struct SavedState: Equatable, Sendable {
        public var contacts: [Contact]
        public var entries: [[UInt8]]

        public init(contacts: [Contact], entries: [[UInt8]]) {
            self.contacts = contacts
            self.entries = entries
        }

        static let magic = Array("DNADHT1\n".utf8)

        /// "DNADHT1\n" | contact count (4) | (id (20) | endpoint (18))* | entry count (4) | (length (2) | entry)*.
        public var bytes: [UInt8] {
            func u32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
            var out = Self.magic + u32(contacts.count)
            for contact in contacts { out += contact.id.bytes + contact.endpoint.wire }
            out += u32(entries.count)
            for entry in entries { out += [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry }
            return out
        }

        public init(bytes: [UInt8]) throws(DHTError) {
            var offset = 0
            func take(_ n: Int) throws(DHTError) -> ArraySlice<UInt8> {
                guard n >= 0, bytes.count - offset >= n else { throw .malformed("saved state truncated") }
                defer { offset += n }
                return bytes[offset..<offset + n]
            }
            func u32() throws(DHTError) -> Int { Int(try take(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }) }
            guard try take(8).elementsEqual(Self.magic) else { throw .malformed("not a saved DHT state") }
            contacts = []
            for _ in 0..<min(try u32(), 100_000) {
                guard let id = NodeID(bytes: try take(20)) else { throw .malformed("contact id") }
                let address = Array(try take(16)), port = try take(2).reduce(UInt16(0)) { $0 << 8 | UInt16($1) }
                guard let endpoint = Endpoint(address: address, port: port) else { throw .malformed("contact endpoint") }
                contacts.append(Contact(id: id, endpoint: endpoint))
            }
            entries = []
            for _ in 0..<min(try u32(), 1_000_000) {
                let length = try take(2).reduce(0) { $0 << 8 | Int($1) }
                entries.append(Array(try take(length)))
            }
            guard offset == bytes.count else { throw .malformed("saved state has trailing bytes") }
        }
    }

    public func savedState(now: UInt64) -> SavedState {
        SavedState(contacts: table.contacts, entries: store.values.filter { alive($0.entry, now: now) }.map(\.wire))
    }

    /// Loads a saved state: the contacts go into the table, the entries that still verify into the store.
    public func restore(_ state: SavedState, now: UInt64) {
        for contact in state.contacts { _ = table.seen(contact, now: now) }
        let local = Endpoint(address: [UInt8](repeating: 0, count: 16), port: 0)
        for wire in state.entries {
            guard let entry = try? PeerEntry(wire: wire), verified(entry, wire: wire, now: now), let local else { continue }
            let key = NodeID.key(of: entry.identity)
            if let held = store[key], held.entry.lastSeen >= entry.lastSeen { continue }
            store[key] = Stored(entry: entry, wire: wire, from: local, storedAt: now)
        }
    }
}
