import DNACrypto
import DNAWire
import Glibc
internal import CSodium

public enum DHTEvent: Sendable {
    case lookupFinished(LookupID, LookupResult)
    case signalled(SignalRequest)
    case delivered(SignalDelivery)
    /// The answer of `from` to mail request `operation` (§8), or nil when it did not answer in time.
    case mailAnswered(operation: UInt64, from: Endpoint, answer: MailAnswer?)
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
        /// A PING for a fresh token, to send a follow-up SIGNAL (`body`) again that its holder refused
        /// for its token: this node's public address changed (a NAT rebinding), and the token it
        /// held was for the old one (§5.6).
        case retoken(DHTMessage.Body)
        /// That SIGNAL sent again with the fresh token (not retried for its token a second time).
        case resignal
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
        /// A lookup's request: when the lookup stops waiting for it (§5.4, soft timeout); nil after.
        var softDeadline: UInt64?
        var purpose: Purpose
        var body: DHTMessage.Body
        var attempt = 0
        /// The largest datagram of this attempt and of the answer it asks for (§9).
        var size = Pieces.maximumDatagramSize
        /// The attempt before this one was at a larger size and got nothing back (§9).
        var steppedDown = false

        var isPing: Bool {
            switch purpose {
            case .ping, .retoken: return true
            default: return false
            }
        }
    }

    private var pending: [UInt64: Pending] = [:]
    /// The datagram size each endpoint's path carries (§9, RFC 8899's PLPMTU per destination).
    private(set) var pathSizes = PathSizes<Endpoint>()
    /// The same for this node's own link (one key): confirmed by two different endpoints, a black
    /// hole is taken to be near this node, and every endpoint gets the smaller size (§9).
    private(set) var ownLink = PathSizes<Int>()
    private var lastConfirmedBy: Endpoint?

    /// The largest datagram to send to `endpoint` now (§9).
    func datagramSize(for endpoint: Endpoint, now: UInt64) -> Int {
        min(pathSizes.size(for: endpoint, now: now), ownLink.size(for: 0, now: now))
    }
    /// The latest `now` the node was given (ms), for sends that are not given one.
    private var clock: UInt64 = 0
    /// Partial multi-datagram messages (§5.1), and how many each source and each network holds.
    private var reassembly: [Key: (started: UInt64, buffer: Reassembly)] = [:]
    /// Unix time minus the monotonic `now`, in ms (setUnixTime).
    private var unixOffset: Int64 = 0
    private var partialsBySource: [Endpoint: Int] = [:]
    private var partialsByNetwork: [[UInt8]: Int] = [:]
    /// Answers to multi-datagram requests this node completed, kept for the reassembly lifetime
    /// (§5.1): a retry of such a request (same transaction) whose answer was lost gets the answer
    /// again from any one of its pieces, instead of needing every piece again in one attempt. The
    /// request is kept too: a piece that does not match it starts a new message.
    /// At most `reassemblyPerSource` per source and `reassemblyLimit` in all (the oldest go).
    private var answered: [Key: (at: UInt64, repeatedAt: UInt64, request: Reassembly, datagrams: [[UInt8]])] = [:]
    private var answeredBySource: [Endpoint: Int] = [:]
    /// An answer is repeated at most once per this many ms (a retry's pieces arrive together).
    static let repeatInterval: UInt64 = 100
    /// How long a partial message is kept, in ms (§5.1).
    static let reassemblyLifetime: UInt64 = 5000
    /// Partial messages kept at once: in all, per source endpoint, per network (/24 or /64) (§5.1).
    static let reassemblyLimit = 256
    static let reassemblyPerSource = 4
    static let reassemblyPerNetwork = 16
    /// Rate-limit buckets kept at once; past it, buckets idle for 2 s (full again) are dropped.
    static let rateBucketLimit = 10_000
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

    /// How long a lookup waits for a request's answer before it asks the next candidate too, in ms
    /// (docs/PROTOCOL.md §5.4; the "short timeout" of libtorrent's and OpenDHT's lookups): SRTT +
    /// 4 RTTVAR (RFC 6298) without the request timeout's 250 ms floor, at least `softTimeoutFloor`,
    /// at most the request timeout; half the request timeout (500 ms) before any sample. The request
    /// itself still runs to its (hard) timeout and retries, and a late answer still counts.
    var softTimeout: UInt64 {
        guard let srtt = rtt.smoothed else { return requestTimeout / 2 }
        return min(requestTimeout, UInt64(max(Double(Self.softTimeoutFloor), srtt + 4 * rtt.variation)))
    }

    /// The soft timeout's floor, in ms: above a loaded machine's scheduling delays on loopback.
    static let softTimeoutFloor: UInt64 = 50

    /// Contacts left unanswered (a ping, every attempt of a request, or a lookup's request it went on
    /// without), with when (ms): a lookup asks them only after every other candidate (§5.4). Forgotten when they answer, after `refreshInterval`, and
    /// all at once past `recentlyFailedLimit` (after the expired ones).
    private var recentlyFailed: [NodeID: UInt64] = [:]
    static let recentlyFailedLimit = 4096

    /// Whether a request to `id` went unanswered within the last refresh interval.
    func failedRecently(_ id: NodeID, now: UInt64) -> Bool {
        guard let at = recentlyFailed[id] else { return false }
        return now < at + configuration.refreshInterval
    }

    private func rememberFailure(_ id: NodeID, now: UInt64) {
        if recentlyFailed[id] == nil, recentlyFailed.count >= Self.recentlyFailedLimit {
            recentlyFailed = recentlyFailed.filter { now < $0.value + configuration.refreshInterval }
            if recentlyFailed.count >= Self.recentlyFailedLimit { recentlyFailed.removeAll() }
        }
        recentlyFailed[id] = now
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
        case .put(let item): return .status(mailboxes.put(item, now: now, unix: unix(now)))
        case .fetch(let key, let skip):
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: DHTMessage.mailItemsBudget, unix: unix(now))
            return .items(total: total, items: items)
        case .delete(let deletion): return mailboxes.delete(deletion, unix: unix(now)).map { .deleted($0) } ?? .status(.invalid)
        }
    }

    private func answerMail(_ body: DHTMessage.Body, from source: Endpoint, now: UInt64) -> DHTMessage.Body? {
        switch body {
        case .mailPut(let presented, let item):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            return .mailStored(mailboxes.put(item, now: now, unix: unix(now)))
        case .mailFetch(let presented, let key, let skip):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: DHTMessage.mailItemsBudget, unix: unix(now))
            return .mailItems(total: total, items: items)
        case .mailDelete(let presented, let request):
            guard configuration.storesMail else { return .mailStored(.notHolder) }
            guard validToken(presented, for: source) else { return .mailStored(.badToken) }
            guard let count = mailboxes.delete(request, unix: unix(now)) else { return .mailStored(.invalid) }
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

    /// Drops the entry held at `key`, as a holder that restarted with empty storage would have
    /// none (tests, operators).
    public func forget(_ key: NodeID) {
        guard let held = store.removeValue(forKey: key) else { return }
        storedBy[held.from, default: 1] -= 1
        if storedBy[held.from] == 0 { storedBy[held.from] = nil }
    }
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
    public func bootstrap(_ given: [Endpoint], now: UInt64) -> LookupID {
        let endpoints = given.filter { $0.isReachable(learnedFrom: nil) }
        statistics.refusedContacts += given.count - endpoints.count
        bootstrapNodes = endpoints
        let lookupID = nextLookupID
        nextLookupID += 1
        let lookup = Lookup(id: lookupID, target: id, kind: .nodes, k: configuration.k)
        for contact in table.closest(to: id, count: configuration.k) {
            lookup.add(contact, round: 1, suspect: failedRecently(contact.id, now: now))
        }
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
    /// An entry this node holds itself (not its own) counts as one holder's answer (§5.2).
    public func findValue(_ key: NodeID, now: UInt64) -> LookupID {
        let held = store[key].flatMap { alive($0.entry, now: now) && !isOwn($0) ? $0.entry : nil }
        return startLookup(target: key, kind: .value, now: now, held: held)
    }

    /// Stores a signed entry on the k nodes closest to its key.
    @discardableResult
    public func announce(_ entry: PeerEntry, now: UInt64) -> LookupID {
        let key = NodeID.key(of: entry.identity), wire = entry.wireBytes
        // The owner's node holds its own entry as well (§5.2): it is a node like the others, often
        // among the closest to the key, and must refuse another key for the name as they do. (A
        // node that holds a live entry of the name with another key keeps it: this announce is the
        // squatter's, and its lookup reports the name taken.)
        let local = Self.localSource
        if verified(entry, wire: wire, now: now),
           store[key].map({ !alive($0.entry, now: now) || ($0.entry.publicKey == entry.publicKey && $0.entry.lastSeen < entry.lastSeen) }) ?? true {
            if let previous = store[key] { storedBy[previous.from, default: 1] -= 1 }
            store[key] = Stored(entry: entry, wire: wire, from: local, storedAt: now, owner: nil)
            storedBy[local, default: 0] += 1
        }
        return startLookup(target: key, kind: .announce(wire), now: now)
    }

    /// This node's own entry, held by its announce.
    private func isOwn(_ stored: Stored) -> Bool { stored.from == Self.localSource && stored.entry.nodeID == id.bytes }

    /// The source recorded for entries this node holds of its own accord (its own, restored ones).
    static let localSource = Endpoint(address: [UInt8](repeating: 0, count: 16), port: 0)!

    /// Sends `payload` to the owner of `key` through up to `signalFanout` of the nodes holding its
    /// entry, met on a FIND_VALUE lookup (§5.6). The lookup's result names the holders that
    /// forwarded it; the owner's answers arrive as `.delivered` events with the same signal id.
    @discardableResult
    public func signal(_ key: NodeID, payload: [UInt8], now: UInt64) -> (lookup: LookupID, signal: UInt64) {
        let signalID = random.next() | 1
        let lookupID = startLookup(target: key, kind: .signal(signalID, payload), now: now)
        return (lookupID, signalID)
    }

    /// A fresh signal id, for a conversation started through holders known from an earlier one.
    public func newSignalID() -> UInt64 { random.next() | 1 }

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
        clock = max(clock, now)
        let piece: DHTDatagram.Piece
        do { piece = try DHTDatagram.parse(datagram) } catch {
            statistics.dropped += 1
            return
        }
        let bytes: [UInt8]
        var completed: (key: Key, request: Reassembly)?
        if piece.count == 1 {
            bytes = Array(piece.bytes)
        } else {
            let key = Key(endpoint: source, transaction: piece.transaction)
            // A piece of an answer to a request of ours is expected; every other piece counts
            // against its source's rate (§5.5), so that pieces cannot flood where requests cannot.
            if pending[piece.transaction]?.endpoint != source, !allow(source, now: now) {
                statistics.rateLimited += 1
                statistics.refusedPieces += 1
                return
            }
            if var done = answered[key] {
                // A piece of the request answered (bytes it already holds, with the same values):
                // the answer again. Anything else (expired, another message under the transaction)
                // starts a new message.
                let same = (try? done.request.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)) == false
                if same, done.at + Self.reassemblyLifetime > now {
                    if done.repeatedAt + Self.repeatInterval <= now {
                        answered[key]?.repeatedAt = now
                        emit(done.datagrams, to: source)
                        statistics.answersRepeated += 1
                    }
                    return
                }
                forgetAnswer(key)
            }
            var entry = reassembly[key]
            if let partial = entry, partial.started + Self.reassemblyLifetime <= now {
                removePartial(key)
                entry = nil
            }
            if entry == nil {
                guard let buffer = try? Reassembly(length: piece.length, count: piece.count, index: piece.index,
                                                   bytes: piece.bytes.count, maximumLength: DHTMessage.maximumSize) else {
                    statistics.dropped += 1
                    return
                }
                makeRoomForPartial(from: source)
                entry = (now, buffer)
                partialsBySource[source, default: 0] += 1
                partialsByNetwork[source.network, default: 0] += 1
            }
            guard var (started, buffer) = entry,
                  (try? buffer.add(index: piece.index, length: piece.length, count: piece.count, bytes: piece.bytes)) != nil else {
                removePartial(key)
                statistics.dropped += 1
                return
            }
            guard let message = buffer.message else {
                reassembly[key] = (started, buffer)
                return
            }
            started = 0
            removePartial(key)
            completed = (key, buffer)
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
            // A requester that takes only smaller datagrams (§9) gets its answers, and later
            // messages, in pieces of that size.
            if let limit = piece.answerLimit { pathSizes.limit(source, to: limit, now: now) }
            let sent = answer(message, sender: sender.id, from: source, requestSize: datagram.count, now: now)
            if let completed, !sent.isEmpty { rememberAnswer(sent, to: completed.request, for: completed.key, now: now) }
        } else {
            handleResponse(message, sender: sender.id, from: source, length: bytes.count, now: now)
        }
    }

    /// Before a new partial message from `source` is kept: each source and each network gets a
    /// bounded share of the reassembly state (§5.1). Over its share, the source's (or its network's)
    /// oldest partial goes; when the whole table is full, the oldest partial of the network that
    /// holds the most. A flood thus only ever displaces its own partial messages.
    private func makeRoomForPartial(from source: Endpoint) {
        func evictOldest(where belongs: (Key) -> Bool) {
            guard let oldest = reassembly.filter({ belongs($0.key) }).min(by: { $0.value.started < $1.value.started }) else { return }
            removePartial(oldest.key)
            statistics.refusedPieces += 1
        }
        let network = source.network
        if partialsBySource[source, default: 0] >= Self.reassemblyPerSource {
            evictOldest { $0.endpoint == source }
        } else if partialsByNetwork[network, default: 0] >= Self.reassemblyPerNetwork {
            evictOldest { $0.endpoint.network == network }
        }
        if reassembly.count >= Self.reassemblyLimit, let busiest = partialsByNetwork.max(by: { $0.value < $1.value })?.key {
            evictOldest { $0.endpoint.network == busiest }
        }
    }

    private func removePartial(_ key: Key) {
        guard reassembly.removeValue(forKey: key) != nil else { return }
        let network = key.endpoint.network
        let fromSource = partialsBySource[key.endpoint, default: 1] - 1, fromNetwork = partialsByNetwork[network, default: 1] - 1
        partialsBySource[key.endpoint] = fromSource > 0 ? fromSource : nil
        partialsByNetwork[network] = fromNetwork > 0 ? fromNetwork : nil
    }

    /// Partial messages held now (for tests and statistics).
    var partialMessages: Int { reassembly.count }

    private func rememberAnswer(_ datagrams: [[UInt8]], to request: Reassembly, for key: Key, now: UInt64) {
        func forgetOldest(where belongs: (Key) -> Bool) {
            if let oldest = answered.filter({ belongs($0.key) }).min(by: { $0.value.at < $1.value.at }) { forgetAnswer(oldest.key) }
        }
        if answeredBySource[key.endpoint, default: 0] >= Self.reassemblyPerSource { forgetOldest { $0.endpoint == key.endpoint } }
        if answered.count >= Self.reassemblyLimit { forgetOldest { _ in true } }
        forgetAnswer(key)
        // The answer just sent counts as the latest: a duplicate of the request's pieces arriving
        // right behind it is no retry.
        answered[key] = (now, now, request, datagrams)
        answeredBySource[key.endpoint, default: 0] += 1
    }

    private func forgetAnswer(_ key: Key) {
        guard answered.removeValue(forKey: key) != nil else { return }
        let left = answeredBySource[key.endpoint, default: 1] - 1
        answeredBySource[key.endpoint] = left > 0 ? left : nil
    }

    // MARK: Answers

    /// Answers a request; returns the datagrams sent (none when it is not answered).
    @discardableResult
    private func answer(_ request: DHTMessage, sender: NodeID, from source: Endpoint, requestSize: Int, now: UInt64) -> [[UInt8]] {
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
            // The owner's own copy of its entry is not offered (others hold it; it is kept only to
            // refuse another key for the name, §5.2).
            let held = store[key].flatMap { alive($0.entry, now: now) && !isOwn($0) ? $0 : nil }
            if let held, validToken(presented, for: source) {
                body = .value(entry: held.wire)
            } else {
                body = .nodes(observed: source, token: token, held: held?.entry.lastSeen,
                              contacts: table.closest(to: key, count: configuration.k, excluding: sender))
            }
        case .store(let presented, let wire):
            let status = accept(wire, token: presented, from: source, sender: sender, now: now)
            body = status == .outOfTime ? .storedOutOfTime(holderTime: unix(now)) : .stored(status)
        case .signal(let presented, let key, let signalID, let payload):
            body = .signalAck(relay(key: key, id: signalID, payload: payload, token: presented, from: source, now: now))
        case .mailPut, .mailFetch, .mailDelete:
            guard let answer = answerMail(request.body, from: source, now: now) else { return [] }
            body = answer
        default:
            return []
        }
        // No reflection: without a valid token, an answer is at most 3x the request's bytes.
        var response = DHTMessage(transaction: request.transaction, salt: credential.salt, body: body)
        let size = datagramSize(for: source, now: now)
        while case .nodes(let observed, let token, let held, var contacts) = response.body,
              !contacts.isEmpty, DHTDatagram.wireSize(length: response.bytes.count, datagramSize: size) > 3 * requestSize {
            contacts.removeLast()
            response.body = .nodes(observed: observed, token: token, held: held, contacts: contacts)
        }
        return send(response, to: source)
    }

    private func accept(_ wire: [UInt8], token: UInt64, from source: Endpoint, sender: NodeID, now: UInt64) -> StoreStatus {
        guard validToken(token, for: source) else { return .badToken }
        // An entry outside this holder's window is refused for its time, with this holder's time in
        // the answer, so that an owner whose clock is off learns by how much (§5.2).
        if let entry = try? PeerEntry(wire: wire), !alive(entry, now: now) || entry.lastSeen > unix(now) / 1000 + PeerEntry.maximumClockSkew {
            statistics.refusedEntries += 1
            return .outOfTime
        }
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
        return VerifiedEntries.shared.check(entry, wire: wire, now: unix(now) / 1000)
    }

    /// Entries carry Unix seconds (§5.2): their lifetime is judged on the Unix clock.
    private func alive(_ entry: PeerEntry, now: UInt64) -> Bool {
        entry.lastSeen &* 1000 &+ configuration.entryLifetime > unix(now)
    }

    // MARK: Clocks

    /// Sets the Unix time (ms) that corresponds to `now`. Every `now` this node is given is a
    /// monotonic time in ms, for its timers and elapsed times; Unix time is used only where the
    /// protocol carries it (entries' last_seen, mail lifetimes). The driver reads both clocks and
    /// calls this before it hands the node anything; until then they are taken to agree (as in
    /// simulations, whose one virtual clock is both).
    public func setUnixTime(_ unixMilliseconds: UInt64, at now: UInt64) {
        unixOffset = Int64(bitPattern: unixMilliseconds &- now)
    }

    /// The Unix time (ms) at monotonic time `now`, corrected by `clockCorrection`.
    public func unix(_ now: UInt64) -> UInt64 { now &+ UInt64(bitPattern: unixOffset &+ clockCorrection) }

    /// What this node adds to its Unix clock, in ms: set by the driver when the holders of its own
    /// entry all refused it for its time and showed its clock to be off by that much (§5.2). It
    /// applies to the entries this node signs and to its judgement of others' entries.
    public var clockCorrection: Int64 = 0

    // MARK: Responses

    /// `length`: the answer's bytes (the message, without datagram headers).
    private func handleResponse(_ message: DHTMessage, sender: NodeID, from source: Endpoint, length: Int, now: UInt64) {
        // Accepted only from the address that was asked, and only from the node we meant to ask.
        guard let request = pending[message.transaction], request.endpoint == source,
              request.expected == nil || request.expected == sender else {
            statistics.unexpectedResponses += 1
            return
        }
        pending[message.transaction] = nil
        // Path size (§9): the largest datagram this exchange needed at the attempt's size, or would
        // have needed at the larger size of the attempt before.
        let needed = DHTDatagram.overhead + max(length, DHTMessage(transaction: 0, salt: credential.salt, body: request.body).bytes.count)
        if request.steppedDown {
            if needed > request.size {
                if pathSizes.smallerWorked(source, size: request.size, now: now) { statistics.pathSizeReductions += 1 }
                if lastConfirmedBy != source {
                    lastConfirmedBy = source
                    if ownLink.smallerWorked(0, size: request.size, now: now) { statistics.pathSizeReductions += 1 }
                }
            }
        } else {
            pathSizes.largerWorked(source, size: min(needed, request.size))
            ownLink.largerWorked(0, size: min(needed, request.size))
        }
        // Karn's rule (RFC 6298 §3): an answer to a request sent more than once may answer any of
        // its attempts (they share the transaction), so it gives no sample.
        if request.attempt == 0 { rtt.add(sample: Double(now - request.sentAt)) }
        if !recentlyFailed.isEmpty { recentlyFailed[sender] = nil }
        if let oldest = table.seen(Contact(id: sender, endpoint: source), now: now) {
            ping(oldest.endpoint, expected: oldest.id, now: now)
        }
        switch message.body {
        case .pong(_, let token), .nodes(_, let token, _, _): tokens[source] = token
        default: break
        }
        switch request.purpose {
        case .ping, .resignal: break
        case .retoken(let body):
            guard case .signal(_, let key, let signalID, let payload) = body, let token = tokens[source] else { return }
            self.request(.signal(token: token, key: key, id: signalID, payload: payload), to: source,
                         expected: request.expected, purpose: .resignal, now: now)
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
            if case .stored(.taken) = message.body { lookup.result.taken += 1 }
            if case .storedOutOfTime(let holderTime) = message.body {
                lookup.result.clockOffsets.append(Int64(bitPattern: holderTime &- unix(now)))
            }
            lookup.storesInFlight -= 1
            advance(lookup, now: now)
        case .signal(let lookupID):
            if lookupID == nil, case .signalAck(.badToken) = message.body {
                // A follow-up through a known holder, refused for its token: ask for a fresh one
                // and send it again (one round trip, instead of a lookup of the peer).
                self.request(.ping, to: source, expected: request.expected, purpose: .retoken(request.body), now: now)
                return
            }
            guard let lookupID, let lookup = lookups[lookupID] else { return }
            lookup.signalsInFlight -= 1
            if case .signalAck(.forwarded) = message.body {
                lookup.result.forwardedBy.append(source)
            } else {
                lookup.signalsFailed += 1
            }
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
        var next = min(pending.values.map { min($0.deadline, $0.softDeadline ?? .max) }.min() ?? nextRefresh, nextRefresh)
        if let keepalive = nextKeepalive { next = min(next, keepalive) }
        // Partial messages expire on time even on an idle node (§5.1).
        if let oldest = reassembly.values.map(\.started).min() { next = min(next, oldest + Self.reassemblyLifetime) }
        if let oldest = answered.values.map(\.at).min() { next = min(next, oldest + Self.reassemblyLifetime) }
        return next
    }

    public func handleTimeout(now: UInt64) {
        clock = max(clock, now)
        for (transaction, request) in pending where request.deadline <= now || (request.softDeadline ?? .max) <= now {
            // Soft timeout (§5.4): the lookup stops counting the request against its α and asks the
            // next candidate; the request keeps its deadline and retries, and an answer still counts.
            if let soft = request.softDeadline, soft <= now {
                pending[transaction]?.softDeadline = nil
                if case .lookup(let lookupID, let candidate) = request.purpose, let lookup = lookups[lookupID] {
                    lookup.stalled(candidate)
                    advance(lookup, now: now)
                }
            }
            guard request.deadline <= now else { continue }
            pending[transaction] = nil
            statistics.timeouts += 1
            // A contact fails once per request that got no answer, not once per lost attempt, and
            // not when pieces of its answer came (it is alive; the path lost one piece).
            let answering = reassembly[Key(endpoint: request.endpoint, transaction: transaction)] != nil
            // A request (or a piece of its answer: a VALUE is 5 datagrams) that was lost is sent
            // again, up to twice (a small network has no other node to ask); pings are not: they
            // test liveness. A lookup's request only while the lookup waits for it (§5.4): pieces of
            // the answer came, it asked a holder again for its entry, or it has no other candidate
            // to ask and nothing else in flight. Otherwise it asks others, and a node that is gone
            // costs it one request and one soft timeout.
            var again = request.attempt < 2 && !request.isPing
            if again, case .lookup(let lookupID, let candidate) = request.purpose {
                // (Also when this node learnt meanwhile that its link loses datagrams of the size the
                // request or its answer used: the lookup would otherwise lose every such contact, §9.)
                let shrunk = request.size > datagramSize(for: request.endpoint, now: now)
                again = lookups[lookupID].map { answering || shrunk || $0.waitsFor(candidate) } ?? false
            }
            // Every attempt unanswered (or a ping): one failure. A lookup's request left after one
            // attempt only makes the contact asked last: on a lossy path a live contact loses one
            // request in five, and its routing table entry should not go for that.
            if let expected = request.expected, !again, !answering {
                if request.isPing || request.attempt >= 2 { table.failed(expected) }
                rememberFailure(expected, now: now)
            }
            if again {
                var again = request
                again.attempt += 1
                again.sentAt = now
                again.deadline = now + requestTimeout
                again.softDeadline = nil
                // Nothing came back: the next attempt, and the answer it asks for, go in smaller
                // datagrams (§9): a path MTU black hole loses every large datagram and no small one.
                // (Or at once in the size this node now knows its link carries.)
                let known = datagramSize(for: request.endpoint, now: now)
                if !answering, let smaller = Pieces.stepBelow(min(request.size, known + 1)) {
                    again.size = smaller
                    again.steppedDown = true
                } else {
                    again.size = min(request.size, known)
                    again.steppedDown = false
                }
                // The same transaction (§5.1): the receiver's reassembly of the request, and this
                // node's of the answer, keep the pieces earlier attempts delivered, so an attempt
                // only has to bring what they lost. A 5-piece STORE at 10% loss arrives whole in
                // 59% of single tries; in 99.5% when each piece has three.
                let retry = transaction
                pending[retry] = again
                if case .lookup(let lookupID, _) = request.purpose { lookups[lookupID]?.result.messages += 1 }
                send(DHTMessage(transaction: retry, salt: credential.salt, body: request.body), to: request.endpoint,
                     size: again.size, answerLimit: Self.asksForLimit(request.body) ? again.size : nil)
                continue
            }
            switch request.purpose {
            case .ping, .retoken, .resignal: break
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
                    lookup.signalsFailed += 1
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
            mailboxes.sweep(unix: unix(now))
        }
        for (key, partial) in reassembly where partial.started + Self.reassemblyLifetime <= now { removePartial(key) }
        for (key, done) in answered where done.at + Self.reassemblyLifetime <= now { forgetAnswer(key) }
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
            for (key, items) in mailboxes.dueForRepublishing(now: now, unix: unix(now), interval: configuration.mailRepublishInterval,
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

    /// Sends `message` in datagrams of at most `size` bytes (by default what the endpoint's path
    /// carries, §9); `answerLimit` asks the receiver to answer in datagrams of at most that size.
    @discardableResult
    private func send(_ message: DHTMessage, to endpoint: Endpoint, size: Int? = nil, answerLimit: Int? = nil) -> [[UInt8]] {
        let size = size ?? datagramSize(for: endpoint, now: clock)
        let datagrams = DHTDatagram.encode(message, datagramSize: size, answerLimit: answerLimit)
        emit(datagrams, to: endpoint)
        return datagrams
    }

    private func emit(_ datagrams: [[UInt8]], to endpoint: Endpoint) {
        for datagram in datagrams { outbox.append((endpoint, datagram)) }
        statistics.sent += datagrams.count
    }

    /// Requests whose answer may take more than one datagram of a smaller size: they carry the
    /// answer limit when sent below 1,200 bytes (§9). (A node of an earlier version drops a frame
    /// with the limit; it gets one only after a full-size attempt got nothing back.)
    static func asksForLimit(_ body: DHTMessage.Body) -> Bool {
        switch body {
        case .findNode, .findValue, .mailFetch: true
        default: false
        }
    }

    private func request(_ body: DHTMessage.Body, to endpoint: Endpoint, expected: NodeID?, purpose: Purpose, now: UInt64) {
        clock = max(clock, now)
        let transaction = newTransaction()
        var soft: UInt64?
        if case .lookup = purpose { soft = now + softTimeout }
        let size = datagramSize(for: endpoint, now: now)
        pending[transaction] = Pending(endpoint: endpoint, expected: expected, sentAt: now, deadline: now + requestTimeout,
                                       softDeadline: soft, purpose: purpose, body: body, size: size)
        send(DHTMessage(transaction: transaction, salt: credential.salt, body: body), to: endpoint, size: size,
             answerLimit: Self.asksForLimit(body) && size < Pieces.maximumDatagramSize ? size : nil)
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
        if buckets[source] == nil, buckets.count >= Self.rateBucketLimit {
            // Buckets idle for 2 s are full again: forgetting them changes nothing.
            buckets = buckets.filter { now - min(now, $0.value.at) < 2000 }
            if buckets.count >= Self.rateBucketLimit { buckets.removeAll() }
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

    // MARK: Lookups

    @discardableResult
    private func startLookup(target: NodeID, kind: Lookup.Kind, now: UInt64, silent: Bool = false,
                             held: PeerEntry? = nil) -> LookupID {
        let lookupID = nextLookupID
        nextLookupID += 1
        let lookup = Lookup(id: lookupID, target: target, kind: kind, k: configuration.k)
        switch kind {
        case .value, .signal: statistics.valueLookups += 1
        default: break
        }
        lookup.isSilent = silent
        if let held { lookup.vote(held, from: id) }
        let initial = table.closest(to: target, count: configuration.k)
        for contact in initial { lookup.add(contact, round: 1, suspect: failedRecently(contact.id, now: now)) }
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

    /// A contact in an answer had an address no node can have (§5.1, "Contacts").
    func refusedContact() { statistics.refusedContacts += 1 }

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

extension DHTNode {
    public func savedState(now: UInt64) -> SavedState {
        SavedState(contacts: table.contacts, entries: store.values.filter { alive($0.entry, now: now) }.map(\.wire))
    }

    /// Loads a saved state: the contacts go into the table, the entries that still verify into the store.
    public func restore(_ state: SavedState, now: UInt64) {
        for contact in state.contacts {
            guard contact.endpoint.isReachable(learnedFrom: nil) else {
                statistics.refusedContacts += 1
                continue
            }
            _ = table.seen(contact, now: now)
        }
        let local = Self.localSource
        for wire in state.entries {
            guard let entry = try? PeerEntry(wire: wire), verified(entry, wire: wire, now: now) else { continue }
            let key = NodeID.key(of: entry.identity)
            if let held = store[key], held.entry.lastSeen >= entry.lastSeen { continue }
            store[key] = Stored(entry: entry, wire: wire, from: local, storedAt: now)
        }
    }
}
