import DNACrypto
import DNAWire

/// What a node reports to its driver (`DHTNode.takeEvents`).
public enum DHTEvent: Sendable {
    case lookupFinished(LookupID, LookupResult)
    case signalled(SignalRequest)
    case delivered(SignalDelivery)
    /// The answer of `from` to mail request `operation` (§8), or nil when it did not answer in time.
    case mailAnswered(operation: UInt64, from: Endpoint, answer: MailAnswer?)
    /// A put of a signed value ended (§10.2).
    case valuePut(LookupID, ValuePutResult)
    /// A get of the values at a key ended (§10.3).
    case valuesGot(LookupID, ValueGetResult)
    /// Listener `listen` (§10.5) learnt a value newer than any it knew for the value's signer and
    /// slot (each value once, in sequence order per slot; a tombstone is a deletion).
    case valueChanged(listen: UInt64, SignedValue)
    /// A value listener `listen` knew reached the end of its lifetime.
    case valueExpired(listen: UInt64, SignedValue)
}

/// A Kademlia node as a sans-I/O state machine (docs/PROTOCOL.md §5): datagrams with their source and
/// the time go in; datagrams to endpoints, timers and lookup results come out.
///
/// The node is the façade and the dispatcher: it takes each datagram apart, routes it to the part
/// that owns it, and ties their results together (what an answer or a timeout means for a lookup,
/// which events go out). The parts, each in its own file:
/// - `Transactions`: requests in flight, timeouts and retries, path sizes, sending (§5.1, §5.4, §9);
/// - `Reassembler`: multi-datagram messages and the answers repeated to retries (§5.1);
/// - `Tokens`, `RateLimiter`: who may write, and how often a source may ask (§5.5);
/// - `RoutingTable` (§5.4), `Lookup`: one iterative lookup each (§5.4);
/// - the record stores, one per kind (`RecordStore`): `PeerEntryStore` (§5.2), `MailStore` (§8.3);
/// - `Signaling`: relays, holders of own entries, signals sent (§5.6).
/// Times given to it (`now`) are monotonic ms; Unix time is derived with `setUnixTime`.
public final class DHTNode {
    public let credential: NodeCredential
    public let configuration: DHTConfiguration
    public private(set) var statistics = DHTStatistics()
    private(set) var table: RoutingTable
    private var events: [DHTEvent] = []
    /// Transaction ids, token secrets, relay and signal ids, refresh targets: one sequence, so that
    /// a seeded node repeats.
    private var random: SplitMixRandom
    private var rpc: Transactions
    private var reassembler = Reassembler()
    private var tokens: Tokens
    private var rateLimiter: RateLimiter
    private var entries: PeerEntryStore
    private var inboxes: MailStore
    private var values: ValueStore
    private var signaling: Signaling
    /// Value puts and gets past their lookup (§10), by the lookup's id; the silent ones (republishing)
    /// report nothing.
    private var valuePuts: [LookupID: ValuePut] = [:]
    private var valueGets: [LookupID: ValueGet] = [:]
    private var silentValueOperations = Set<LookupID>()
    /// Subscriptions this node keeps as a holder, and its own listeners (§10.5); the gets run for a
    /// listener (its renewal's, or a fetch of what holders pushed): by the get's id, the listener's.
    private var subscriptions: ValueSubscriptions
    private var listens: [UInt64: ValueListen] = [:]
    private var listenGets: [LookupID: UInt64] = [:]

    private var lookups: [LookupID: Lookup] = [:]
    private var nextLookupID: LookupID = 1
    private var bootstrapNodes: [Endpoint] = []
    private var nextRefresh: UInt64
    /// Unix time minus the monotonic `now`, in ms (setUnixTime).
    private var unixOffset: Int64 = 0

    public init(credential: NodeCredential, configuration: DHTConfiguration = DHTConfiguration(), now: UInt64,
                seed: UInt64? = nil) {
        self.credential = credential
        self.configuration = configuration
        let entropy = seed ?? Sodium.randomBytes(8).reduce(0) { $0 << 8 | UInt64($1) }
        random = SplitMixRandom(seed: entropy)
        table = RoutingTable(own: credential.id, k: configuration.k, networkCap: configuration.networkCap, now: now)
        tokens = Tokens(rotation: configuration.tokenRotation, now: now, random: &random)
        nextRefresh = now + configuration.refreshInterval
        rpc = Transactions(salt: credential.salt, failureMemory: configuration.refreshInterval)
        rateLimiter = RateLimiter(rate: configuration.requestsPerSecond)
        entries = PeerEntryStore(own: credential.id, configuration: configuration)
        inboxes = MailStore(configuration: configuration)
        values = ValueStore(configuration: configuration)
        subscriptions = ValueSubscriptions(configuration: configuration)
        signaling = Signaling(configuration: configuration)
    }

    // MARK: Parts' limits and state, for tests and lookups

    /// How long a partial message is kept, in ms (§5.1).
    static let reassemblyLifetime = Reassembler.lifetime
    /// Partial messages kept at once: in all, per source endpoint, per network (/24 or /64) (§5.1).
    static let reassemblyLimit = Reassembler.limit
    static let reassemblyPerSource = Reassembler.perSource
    static let reassemblyPerNetwork = Reassembler.perNetwork
    /// An answer is repeated at most once per this many ms (a retry's pieces arrive together).
    static let repeatInterval = Reassembler.repeatInterval
    /// Rate-limit buckets kept at once; past it, buckets idle for 2 s (full again) are dropped.
    static let rateBucketLimit = RateLimiter.bucketLimit
    static let softTimeoutFloor = Transactions.softTimeoutFloor
    static let recentlyFailedLimit = Transactions.recentlyFailedLimit
    /// The source recorded for entries this node holds of its own accord (its own, restored ones).
    static let localSource = PeerEntryStore.localSource

    /// Partial messages held now (for tests and statistics).
    var partialMessages: Int { reassembler.partialCount }
    /// Shares (§5.5) that hold an entry here (for tests).
    var entryShares: Int { entries.shares }
    var pathSizes: PathSizes<Endpoint> { rpc.pathSizes }
    var ownLink: PathSizes<Int> { rpc.ownLink }
    var requestTimeout: UInt64 { rpc.requestTimeout }
    var softTimeout: UInt64 { rpc.softTimeout }

    /// The largest datagram to send to `endpoint` now (§9).
    func datagramSize(for endpoint: Endpoint, now: UInt64) -> Int { rpc.datagramSize(for: endpoint, now: now) }

    /// Whether a request to `id` went unanswered within the last refresh interval.
    func failedRecently(_ id: NodeID, now: UInt64) -> Bool { rpc.failedRecently(id, now: now) }

    static func asksForLimit(_ body: DHTMessage.Body) -> Bool { Transactions.asksForLimit(body) }

    // MARK: Offline delivery (§8)

    /// Inbox items held here (key records and messages).
    public var mailCount: Int { inboxes.count }

    /// Sends a mail request to `contact` (found by a lookup of the inbox key, which also brought its
    /// token); its answer comes as a `mailAnswered` event with `operation`.
    public func mail(_ request: MailRequest, to contact: Contact, operation: UInt64, now: UInt64) {
        let token = tokens.received[contact.endpoint] ?? 0
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
        return inboxes.local(request, at: time(now))
    }

    public var id: NodeID { credential.id }
    public var routingTableSize: Int { table.count }
    public var storedCount: Int { entries.count }

    /// Signed values held here (for others, and this node's own while it is among the closest).
    public var valueCount: Int { values.count }
    /// Values arriving in parts that this node is putting together now (§10.2).
    var valueUploadCount: Int { values.uploadCount }

    /// The values held here at `key` (alive), ordered by signer id, then slot.
    public func localValues(_ key: NodeID, query: ValueQuery = ValueQuery(), now: UInt64) -> [SignedValue] {
        values.held(at: key, signer: query.signer, since: query.since, at: time(now)).map(\.value)
    }

    /// Stores a signed value on the k nodes closest to its key (§10.2), this node included when it
    /// is one of them; the result comes as a `.valuePut` event with the returned id. The value is
    /// verified first (fields, times on this node's clock, signature): one that every holder would
    /// refuse is refused here.
    public func putValue(_ value: SignedValue, now: UInt64) throws(SignedValueError) -> LookupID {
        try value.verify(now: unix(now) / 1000)
        guard let key = NodeID(bytes: value.key[...]) else { throw .malformed("key") }
        let wire = value.wireBytes
        return startLookup(target: key, kind: .putValue(wire, id: Sodium.sha256(wire)), now: now)
    }

    /// Gets the values at `key` from the k nodes closest to it (§10.3): the freshest verified one per
    /// signer and slot, as a `.valuesGot` event with the returned id.
    @discardableResult
    public func getValues(_ key: NodeID, query: ValueQuery = ValueQuery(), now: UInt64) -> LookupID {
        startLookup(target: key, kind: .getValues(query), now: now)
    }

    /// Listens to the values at `key` (§10.5): looks the key up, subscribes to the k closest holders,
    /// and gets what they hold; then every value stored or replaced there that `query` selects comes
    /// as a `.valueChanged` event (once per value, in sequence order per slot), and each known
    /// value's end as `.valueExpired`. The subscription is renewed every `listenRenewal` ms against
    /// the holders then closest. Returns the listener's id.
    public func listen(_ key: NodeID, query: ValueQuery = ValueQuery(), now: UInt64) -> UInt64 {
        let listenID = random.next() | 1
        listens[listenID] = ValueListen(id: listenID, key: key, query: query, renewAt: now + configuration.listenRenewal)
        startLookup(target: key, kind: .listen(listenID), now: now)
        return listenID
    }

    /// Stops listener `id` (the holders' subscriptions end with their lifetime).
    public func cancelListen(_ id: UInt64) {
        listens[id] = nil
        for (operation, listen) in listenGets where listen == id {
            listenGets[operation] = nil
            // Its get runs to its end, which reports nothing: no caller waits for it (the driver
            // kept every unclaimed `valuesGot`).
            silentValueOperations.insert(operation)
        }
    }

    /// Listeners this node runs, and subscriptions it keeps for others.
    public var listenCount: Int { listens.count }
    var subscriptionCount: Int { subscriptions.count }

    /// Drops the entry held at `key`, as a holder that restarted with empty storage would have
    /// none (tests, operators).
    public func forget(_ key: NodeID) { entries.forget(key) }
    public var knownContacts: [Contact] { table.contacts }

    public func takeDatagrams() -> [(Endpoint, [UInt8])] { rpc.takeDatagrams() }

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
        let held = entries.offered(key, at: time(now))?.entry
        return startLookup(target: key, kind: .value, now: now, held: held)
    }

    /// Stores a signed entry on the k nodes closest to its key (and holds it here, §5.2).
    @discardableResult
    public func announce(_ entry: PeerEntry, now: UInt64) -> LookupID {
        let key = NodeID.key(of: entry.identity), wire = entry.wireBytes
        entries.holdOwn(entry, wire: wire, key: key, at: time(now))
        return startLookup(target: key, kind: .announce(wire), now: now)
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

    /// A fresh signal id, for a conversation started through holders known from an earlier one.
    public func newSignalID() -> UInt64 { random.next() | 1 }

    /// A further message of the conversation `signalID` through holders that forwarded its first one.
    public func signal(_ key: NodeID, id signalID: UInt64, payload: [UInt8], through holders: [Endpoint], now: UInt64) {
        for holder in holders {
            guard let token = tokens.received[holder] else { continue }
            signaling.sent(signalID, to: holder, now: now)
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
        guard tokens.isValid(token, for: source) else { return .badToken }
        guard let owner = entries.owner(of: key, at: time(now)) else { return .unknown }
        guard let relayID = signaling.openRelay(origin: source, owner: owner, id: signalID, now: now, random: &random) else {
            return .busy
        }
        send(DHTMessage(transaction: random.next(), salt: credential.salt,
                        body: .forward(relay: relayID, origin: source, key: key, id: signalID, payload: payload)), to: owner)
        return .forwarded
    }

    /// FORWARD (at an owner), REPLY (at a holder), DELIVER (at a signaller): each accepted only from
    /// the node it can come from, else counted as unexpected and dropped.
    private func notice(_ body: DHTMessage.Body, from source: Endpoint, now: UInt64) {
        switch body {
        case .forward(let relay, let origin, let key, let signalID, let payload):
            guard signaling.acceptsForward(for: key, from: source) else {
                statistics.unexpectedResponses += 1
                return
            }
            events.append(.signalled(SignalRequest(holder: source, relay: relay, origin: origin, key: key, id: signalID, payload: payload)))
        case .reply(let relayID, let payload):
            guard let relay = signaling.relay(relayID, from: source, now: now) else {
                statistics.unexpectedResponses += 1
                return
            }
            send(DHTMessage(transaction: random.next(), salt: credential.salt,
                            body: .deliver(id: relay.id, from: source, payload: payload)), to: relay.origin)
        case .deliver(let signalID, let from, let payload):
            guard signaling.acceptsDelivery(of: signalID, from: source, now: now) else {
                statistics.unexpectedResponses += 1
                return
            }
            events.append(.delivered(SignalDelivery(id: signalID, holder: source, from: from, payload: payload)))
        case .valueNotify(let listenID, let key, let descriptors):
            // Only from a holder that accepted this listener's subscription; one get from it at a time.
            guard let listen = listens[listenID], listen.key == key, let holderID = listen.holders[source],
                  let token = tokens.received[source] else {
                statistics.unexpectedResponses += 1
                return
            }
            let holder = Contact(id: holderID, endpoint: source)
            for descriptor in descriptors { listen.push(descriptor, by: holder, token: token) }
            // One get per listener at a time, so that values are reported in sequence order; what
            // comes meanwhile is fetched when it ends.
            if !listenGets.values.contains(listenID) { fetchPushed(listen, now: now) }
        default:
            return
        }
    }

    /// The entry held here for `key`, if any and still alive.
    public func localEntry(_ key: NodeID, now: UInt64) -> PeerEntry? { entries.entry(key, at: time(now)) }

    // MARK: Input

    /// One datagram from `source`. Anything invalid is counted and dropped; nothing throws.
    public func receive(_ datagram: [UInt8], from source: Endpoint, now: UInt64) {
        statistics.received += 1
        rpc.advanceClock(to: now)
        let piece: DHTDatagram.Piece
        do { piece = try DHTDatagram.parse(datagram) } catch {
            statistics.dropped += 1
            return
        }
        let bytes: [UInt8]
        var completed: Reassembler.Completed?
        if piece.count == 1 {
            bytes = Array(piece.bytes)
        } else {
            // A piece of an answer to a request of ours is expected; every other piece counts
            // against its source's rate (§5.5), so that pieces cannot flood where requests cannot.
            if !rpc.awaits(piece.transaction, from: source), !rateLimiter.allow(source, now: now) {
                statistics.rateLimited += 1
                statistics.refusedPieces += 1
                return
            }
            switch reassembler.add(piece, from: source, size: datagram.count, now: now, statistics: &statistics) {
            case .incomplete:
                return
            case .answerAgain(let datagrams):
                emit(datagrams, to: source)
                statistics.answersRepeated += 1
                return
            case .complete(let message, let request):
                completed = request
                bytes = message
            }
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
            guard rateLimiter.allow(source, now: now) else {
                statistics.rateLimited += 1
                return
            }
            notice(message.body, from: source, now: now)
        } else if message.body.isRequest {
            guard rateLimiter.allow(source, now: now) else {
                statistics.rateLimited += 1
                return
            }
            if let oldest = table.seen(Contact(id: sender.id, endpoint: source), now: now) {
                ping(oldest.endpoint, expected: oldest.id, now: now)
            }
            // A requester that takes only smaller datagrams (§9) gets its answers, and later
            // messages, in pieces of that size.
            if let limit = piece.answerLimit { rpc.limit(source, to: limit, now: now) }
            let sent = answer(message, sender: sender.id, from: source, requestSize: datagram.count, now: now)
            if let completed, !sent.isEmpty { reassembler.remember(sent, answering: completed, now: now) }
        } else {
            handleResponse(message, sender: sender.id, from: source, length: bytes.count,
                           largestDatagram: completed?.largestDatagram ?? datagram.count, now: now)
        }
    }

    // MARK: Answers

    /// Answers a request; returns the datagrams sent (none when it is not answered).
    @discardableResult
    private func answer(_ request: DHTMessage, sender: NodeID, from source: Endpoint, requestSize: Int, now: UInt64) -> [[UInt8]] {
        statistics.requestsAnswered += 1
        let token = tokens.token(for: source)
        var body: DHTMessage.Body
        switch request.body {
        case .ping:
            body = .pong(observed: source, token: token)
        case .findNode(let target, _):
            body = .nodes(observed: source, token: token, held: nil,
                          contacts: table.closest(to: target, count: configuration.k, excluding: sender))
        case .signal(let presented, let key, let signalID, let payload):
            body = .signalAck(relay(key: key, id: signalID, payload: payload, token: presented, from: source, now: now))
        // Records: each kind's store answers its own requests.
        case .findValue, .store:
            let requester = self.requester(source, sender, now: now)
            guard let answer = entries.answer(request.body, from: requester, at: time(now), statistics: &statistics) else { return [] }
            body = recordBody(answer, source: source, sender: sender, token: token)
        case .valuePut, .valueGet, .valueFetch:
            let requester = self.requester(source, sender, now: now)
            let stored = statistics.storedValues
            guard let answer = values.answer(request.body, from: requester, at: time(now), statistics: &statistics) else { return [] }
            body = recordBody(answer, source: source, sender: sender, token: token)
            if statistics.storedValues > stored, case .valuePut(_, let key, let part) = request.body {
                notifySubscribers(key, valueID: part.id, now: now)
            }
        case .valueListen(let presented, let key, let signer, let listener):
            guard tokens.isValid(presented, for: source) else {
                body = .valueListening(.badToken, lifetime: 0)
                break
            }
            let status = subscriptions.listen(key: key, signer: signer, listener: listener, from: source, now: now)
            body = .valueListening(status, lifetime: status == .listening ? Int(subscriptions.lifetime / 1000) : 0)
        case .mailPut, .mailFetch, .mailDelete:
            let requester = self.requester(source, sender, now: now)
            guard let answer = inboxes.answer(request.body, from: requester, at: time(now), statistics: &statistics) else { return [] }
            body = recordBody(answer, source: source, sender: sender, token: token)
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

    /// Fetches the values holders pushed to `listen`, the lowest sequence of each slot (§10.5).
    private func fetchPushed(_ listen: ValueListen, now: UInt64) {
        let pushed = listen.nextFetches()
        guard !pushed.isEmpty else { return }
        let operation = nextLookupID
        nextLookupID += 1
        valueGets[operation] = ValueGet(id: operation, key: listen.key, query: listen.query, pushed: pushed, local: listen.knownValues)
        listenGets[operation] = listen.id
        advanceValue(operation, now: now)
    }

    /// Pushes a value stored or replaced at `key` to the subscribers of its key (and signer).
    private func notifySubscribers(_ key: NodeID, valueID: [UInt8], now: UInt64) {
        guard subscriptions.count > 0, let stored = values.held(at: key, at: time(now)).first(where: { $0.id == valueID }) else { return }
        let descriptor = ValueDescriptor(stored.value, id: stored.id, length: stored.wire.count)
        for subscriber in subscriptions.subscribers(of: key, signer: descriptor.signerID, now: now) {
            send(DHTMessage(transaction: random.next(), salt: credential.salt,
                            body: .valueNotify(listener: subscriber.listener, key: key, descriptors: [descriptor])), to: subscriber.source)
        }
    }

    /// A record request from `sender` at `source`, for the record stores; it is a fellow holder of a
    /// key when it is a contact of the routing table at that address among the k contacts closest to
    /// the key (`RecordRequester.isFellowHolder`).
    private func requester(_ source: Endpoint, _ sender: NodeID, now: UInt64) -> RecordRequester {
        RecordRequester(source: source, sender: sender, tokens: tokens, datagramSize: datagramSize(for: source, now: now)) {
            [unowned self] key in
            table.closest(to: key, count: configuration.k).contains { $0.id == sender && $0.endpoint == source }
        }
    }

    /// The message a record store's answer stands for.
    private func recordBody(_ answer: RecordAnswer, source: Endpoint, sender: NodeID, token: UInt64) -> DHTMessage.Body {
        switch answer {
        case .body(let body):
            return body
        case .closest(let key, let held):
            return .nodes(observed: source, token: token, held: held,
                          contacts: table.closest(to: key, count: configuration.k, excluding: sender))
        }
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

    /// Both clocks at monotonic time `now`, for the record stores.
    private func time(_ now: UInt64) -> RecordTime { RecordTime(now: now, unix: unix(now)) }

    // MARK: Responses

    /// `length`: the answer's bytes (the message, without datagram headers); `largestDatagram`: the
    /// largest datagram it came in.
    private func handleResponse(_ message: DHTMessage, sender: NodeID, from source: Endpoint, length: Int,
                                largestDatagram: Int, now: UInt64) {
        guard let request = rpc.answered(message, sender: sender, from: source, length: length,
                                         largestDatagram: largestDatagram, now: now,
                                         statistics: &statistics) else { return }
        if let oldest = table.seen(Contact(id: sender, endpoint: source), now: now) {
            ping(oldest.endpoint, expected: oldest.id, now: now)
        }
        switch message.body {
        case .pong(_, let token), .nodes(_, let token, _, _): tokens.received[source] = token
        default: break
        }
        switch request.purpose {
        case .ping, .resignal: break
        case .retoken(let body):
            guard case .signal(_, let key, let signalID, let payload) = body, let token = tokens.received[source] else { return }
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
                lookup.holders.append(source)
            }
            if case .stored(.taken) = message.body { lookup.result.taken += 1 }
            switch message.body {
            case .stored(.badToken), .stored(.quota): lookup.storeLeftAPlace()
            case .stored, .storedOutOfTime: break
            default: lookup.storeLeftAPlace()
            }
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
        case .value(let operation, let holderID):
            valueAnswered(operation, holder: Contact(id: holderID, endpoint: source), request: request.body, answer: message.body, now: now)
        case .listen(let listenID, let holderID):
            if case .valueListening(.listening, _) = message.body { listens[listenID]?.holders[source] = holderID }
        }
    }

    /// An answer to a request of a value put or get, or nil for none (after its retries).
    private func valueAnswered(_ operation: LookupID, holder: Contact, request: DHTMessage.Body, answer: DHTMessage.Body?, now: UInt64) {
        let send = valueSender(operation, now: now)
        switch request {
        case .valuePut(_, _, let part):
            guard let put = valuePuts[operation] else { return }
            if case .valueStored(let status, let holderTime)? = answer {
                put.answered(holder, part: part.index, status: status, offset: Int64(bitPattern: holderTime &- unix(now)), send: send)
            } else {
                put.failed(holder.id)
            }
        case .valueGet:
            guard let get = valueGets[operation] else { return }
            if let answer { get.listed(by: holder, answer, send: send) } else { get.listFailed(holder.id) }
        case .valueFetch(_, _, let valueID, let index):
            guard let get = valueGets[operation] else { return }
            if let answer {
                get.fetched(from: holder, valueID: valueID, index: index, answer, verify: { acceptableValue($0, now: now) }, send: send)
            } else {
                get.fetchFailed(from: holder.id, valueID: valueID, index: index, unanswered: true, send: send)
            }
        default:
            return
        }
        advanceValue(operation, now: now)
    }

    /// What value operation `operation` sends goes as a request filed under it.
    private func valueSender(_ operation: LookupID, now: UInt64) -> (Contact, DHTMessage.Body) -> Void {
        { [unowned self] contact, body in
            request(body, to: contact.endpoint, expected: contact.id, purpose: .value(operation, contact.id), now: now)
        }
    }

    /// Moves a value put or get on; reports it when it ends.
    private func advanceValue(_ operation: LookupID, now: UInt64) {
        let send = valueSender(operation, now: now)
        let silent = silentValueOperations.contains(operation)
        if let put = valuePuts[operation], put.advance(send: send) {
            valuePuts[operation] = nil
            silentValueOperations.remove(operation)
            if !silent { events.append(.valuePut(operation, put.result)) }
        }
        if let get = valueGets[operation], get.advance(send: send) {
            valueGets[operation] = nil
            silentValueOperations.remove(operation)
            if let listenID = listenGets.removeValue(forKey: operation) {
                if let listen = listens[listenID] {
                    for value in listen.learn(get.result.values) { events.append(.valueChanged(listen: listen.id, value)) }
                    // Holders pushed more meanwhile (or the next sequence of a slot waits).
                    if !listenGets.values.contains(listenID) { fetchPushed(listen, now: now) }
                }
            } else if !silent {
                events.append(.valuesGot(operation, get.result))
            }
        }
    }

    /// A value a get fetched, checked on its own (the process-wide cache spares repeated checks).
    private func acceptableValue(_ wire: [UInt8], now: UInt64) -> SignedValue? {
        guard case .valid(let value) = values.validate(wire, at: time(now)) else {
            statistics.refusedFetchedValues += 1
            return nil
        }
        return value
    }

    // MARK: Timers

    /// When `handleTimeout` must next run.
    public var nextDeadline: UInt64? {
        var next = min(rpc.nextDeadline ?? nextRefresh, nextRefresh)
        if let keepalive = signaling.nextKeepalive { next = min(next, keepalive) }
        // Partial messages expire on time even on an idle node (§5.1).
        if let expiry = reassembler.nextExpiry { next = min(next, expiry) }
        // Listeners: their renewal, and the end of a value they know (Unix ms, on the monotonic clock).
        for listen in listens.values {
            next = min(next, listen.renewAt)
            if let end = listen.nextExpiry { next = min(next, end &- UInt64(bitPattern: unixOffset &+ clockCorrection)) }
        }
        return next
    }

    public func handleTimeout(now: UInt64) {
        rpc.advanceClock(to: now)
        for (transaction, request) in rpc.due(at: now) {
            // Soft timeout (§5.4): the lookup stops counting the request against its α and asks the
            // next candidate; the request keeps its deadline and retries, and an answer still counts.
            if let soft = request.softDeadline, soft <= now {
                rpc.passedSoftDeadline(transaction)
                if case .lookup(let lookupID, let candidate) = request.purpose, let lookup = lookups[lookupID] {
                    lookup.stalled(candidate)
                    advance(lookup, now: now)
                }
            }
            guard request.deadline <= now else { continue }
            rpc.remove(transaction)
            statistics.timeouts += 1
            // A contact fails once per request that got no answer, not once per lost attempt, and
            // not when pieces of its answer came (it is alive; the path lost one piece).
            let answering = reassembler.isReassembling(from: request.endpoint, transaction: transaction)
            // A request (or a piece of its answer: a VALUE is 5 datagrams) that was lost is sent
            // again, up to twice (a small network has no other node to ask); pings are not: they
            // test liveness. A lookup's request only while the lookup waits for it (§5.4): pieces of
            // the answer came, it asked a holder again for its entry, or it has no other candidate
            // to ask and nothing else in flight. Otherwise it asks others, and a node that is gone
            // costs it one request and one soft timeout.
            var again = request.attempt < 2 && !request.isPing
            // A part of a value (13 datagrams, or 31 on a path of 500-byte datagrams, §9) is sent up
            // to five times: the holder keeps the pieces each attempt brought (§5.1), and a holder
            // given up costs the put a place or the get a source.
            if case .value = request.purpose { again = request.attempt < 4 }
            if again, case .lookup(let lookupID, let candidate) = request.purpose {
                // (Also when this node learnt meanwhile that its link loses datagrams of the size the
                // request or its answer used: the lookup would otherwise lose every such contact, §9.)
                let shrunk = request.size > datagramSize(for: request.endpoint, now: now)
                again = lookups[lookupID].map { answering || shrunk || $0.waitsFor(candidate) } ?? false
            }
            // Every attempt unanswered (or a ping): one failure. A lookup's request left after one
            // attempt only makes the contact asked last: on a lossy path a live contact loses one
            // request in five, and its routing table entry should not go for that.
            if !again, !answering { rpc.gaveUp(on: request.endpoint) }
            if let expected = request.expected, !again, !answering {
                if request.isPing || request.attempt >= 2 { table.failed(expected) }
                rpc.rememberFailure(expected, now: now)
            }
            if again {
                if case .lookup(let lookupID, _) = request.purpose { lookups[lookupID]?.result.messages += 1 }
                // A part's 13 pieces at 10% loss all arrive in a quarter of single tries: a first try
                // that got nothing back is mostly loss, not a black hole, and a smaller cut would send
                // the part again as 17 or 31 pieces against the holder's per-source rate (§9, §5.5).
                let perSize: Int = if case .value = request.purpose { 2 } else { 1 }
                rpc.retry(transaction, request, answering: answering, attemptsPerSize: perSize, now: now, statistics: &statistics)
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
                    lookup.storeLeftAPlace()
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
            case .value(let operation, let holderID):
                valueAnswered(operation, holder: Contact(id: holderID, endpoint: request.endpoint), request: request.body, answer: nil, now: now)
            case .listen: break
            }
        }
        // Listeners: report values that ended; renew subscriptions that are due (by id: alike in
        // every process, whatever its hash seed).
        for listen in listens.sorted(by: { $0.key < $1.key }).map(\.value) {
            for value in listen.expired(unix: unix(now)) { events.append(.valueExpired(listen: listen.id, value)) }
            if now >= listen.renewAt {
                listen.renewAt = now + configuration.listenRenewal
                startLookup(target: listen.key, kind: .listen(listen.id), now: now)
            }
        }
        // Owners: keep the NAT mapping toward every holder of an own entry open.
        if let endpoints = signaling.keepalive(now: now) {
            for endpoint in endpoints { ping(endpoint, expected: nil, now: now) }
        }
        // Expired relays and signals, and inbox items, go every 5 s.
        if signaling.sweep(now: now) {
            inboxes.expire(at: time(now))
            subscriptions.expire(now: now)
        }
        reassembler.expire(now: now)
        tokens.rotate(now: now, random: &random)
        if now >= nextRefresh {
            nextRefresh = now + configuration.refreshInterval
            refresh(now: now)
        }
    }

    /// Seed's periodic refresh: look up a random id in every idle bucket, ping dormant contacts (so a
    /// split network heals), re-contact the bootstrap nodes when the table is short, drop expired
    /// entries, and start the record stores' republishing.
    public func refresh(now: UInt64) {
        for index in table.staleBuckets(before: now - min(now, configuration.refreshInterval)).prefix(8) {
            table.touch(bucket: index, now: now)
            let bytes = (0..<20).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            startLookup(target: id.random(sharingPrefix: index, random: bytes), kind: .nodes, now: now, silent: true)
        }
        for contact in table.takeDormant(8) { ping(contact.endpoint, expected: contact.id, now: now) }
        if table.count < configuration.k { for endpoint in bootstrapNodes { ping(endpoint, expected: nil, now: now) } }
        let clocks = time(now)
        entries.expire(at: clocks)
        for (key, kind) in entries.republish(at: clocks) { startLookup(target: key, kind: kind, now: now, silent: true) }
        for (key, kind) in inboxes.republish(at: clocks) { startLookup(target: key, kind: kind, now: now, silent: true) }
        values.expire(at: clocks)
        for (key, kind) in values.republish(at: clocks) {
            statistics.valuesRepublished += 1
            startLookup(target: key, kind: kind, now: now, silent: true)
        }
        rateLimiter.trim()
        tokens.trim()
    }

    // MARK: Sending

    @discardableResult
    private func send(_ message: DHTMessage, to endpoint: Endpoint) -> [[UInt8]] {
        rpc.send(message, to: endpoint, statistics: &statistics)
    }

    private func emit(_ datagrams: [[UInt8]], to endpoint: Endpoint) {
        rpc.emit(datagrams, to: endpoint, statistics: &statistics)
    }

    private func request(_ body: DHTMessage.Body, to endpoint: Endpoint, expected: NodeID?, purpose: Transactions.Purpose,
                         now: UInt64) {
        rpc.request(body, to: endpoint, expected: expected, purpose: purpose, now: now, random: &random, statistics: &statistics)
    }

    private func ping(_ endpoint: Endpoint, expected: NodeID?, now: UInt64) {
        request(.ping, to: endpoint, expected: expected, purpose: .ping(expected), now: now)
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

    /// Sends what `lookup` asks for next, each request filed under the lookup; ends it when done.
    private func advance(_ lookup: Lookup, now: UInt64) {
        let ended = lookup.advance(alpha: configuration.alpha, signalFanout: configuration.signalFanout,
                                   tokens: tokens.received) { contact, body, role in
            let purpose: Transactions.Purpose
            switch role {
            case .query: purpose = .lookup(lookup.id, contact.id)
            case .signal(let signalID):
                signaling.sent(signalID, to: contact.endpoint, now: now)
                purpose = .signal(lookup.id)
            case .store: purpose = .store(lookup.id)
            case .republish: purpose = .republished
            }
            request(body, to: contact.endpoint, expected: contact.id, purpose: purpose, now: now)
        }
        if ended { finish(lookup, now: now) }
    }

    private func finish(_ lookup: Lookup, now: UInt64) {
        lookup.finish()
        lookups[lookup.id] = nil
        switch lookup.kind {
        case .putValue(let wire, let valueID):
            startValuePut(after: lookup, wire: wire, valueID: valueID, now: now)
            return
        case .listen(let listenID):
            guard let listen = listens[listenID] else { return }
            let holders = Array(lookup.answeredWithTokens().prefix(configuration.k))
            // Holders still among the closest keep being heard while they answer the new subscription;
            // with none found (no contact yet), the renewal comes soon, backing off to the period.
            let closest = Set(holders.map(\.0.endpoint))
            listen.holders = listen.holders.filter { closest.contains($0.key) }
            if holders.isEmpty {
                listen.retry = min(max(1_000, listen.retry * 2), configuration.listenRenewal)
                listen.renewAt = now + listen.retry
            } else {
                listen.retry = 0
            }
            for (contact, token) in holders {
                request(.valueListen(token: token, key: listen.key, signer: listen.query.signer, listener: listenID), to: contact.endpoint,
                        expected: contact.id, purpose: .listen(listenID, contact.id), now: now)
            }
            let local = values.held(at: listen.key, signer: listen.query.signer, since: listen.query.since, at: time(now)).map(\.value)
            valueGets[lookup.id] = ValueGet(id: lookup.id, key: listen.key, query: listen.query, holders: holders,
                                            local: local + listen.knownValues, messages: lookup.result.messages)
            listenGets[lookup.id] = listenID
            advanceValue(lookup.id, now: now)
            return
        case .getValues(let query):
            let holders = Array(lookup.answeredWithTokens().prefix(configuration.k))
            let local = values.held(at: lookup.target, signer: query.signer, since: query.since, at: time(now)).map(\.value)
            valueGets[lookup.id] = ValueGet(id: lookup.id, key: lookup.target, query: query, holders: holders, local: local,
                                            messages: lookup.result.messages)
            if lookup.isSilent { silentValueOperations.insert(lookup.id) }
            advanceValue(lookup.id, now: now)
            return
        default:
            break
        }
        if case .announce = lookup.kind, !lookup.isSilent {
            signaling.stored(lookup.target, on: Array(lookup.holders.prefix(configuration.k)), now: now)
        }
        if !lookup.isSilent { events.append(.lookupFinished(lookup.id, lookup.result)) }
        if lookup.isJoin { refreshFartherBuckets(now: now) }
    }

    /// The put after its lookup: this node holds the value too when it is among the k closest to the
    /// key (no node sends itself a request); the others get it from `ValuePut`.
    private func startValuePut(after lookup: Lookup, wire: [UInt8], valueID: [UInt8], now: UInt64) {
        let candidates = lookup.answeredWithTokens()
        let closest = candidates.prefix(configuration.k).map(\.0)
        var heldHere = false
        if closest.count < configuration.k || closest.contains(where: { (id ^ lookup.target) < ($0.id ^ lookup.target) }),
           case .valid(let value) = values.validate(wire, at: time(now)) {
            let stored = statistics.storedValues
            let status = values.hold(value, wire: wire, at: time(now), statistics: &statistics)
            heldHere = status == .stored
            if statistics.storedValues > stored, let key = NodeID(bytes: value.key[...]) { notifySubscribers(key, valueID: valueID, now: now) }
        }
        valuePuts[lookup.id] = ValuePut(id: lookup.id, key: lookup.target, wire: wire, valueID: valueID, candidates: candidates,
                                        k: configuration.k, heldHere: heldHere, messages: lookup.result.messages)
        if lookup.isSilent { silentValueOperations.insert(lookup.id) }
        advanceValue(lookup.id, now: now)
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
        entries.acceptable(wire, key: key, at: time(now), statistics: &statistics)
    }

    // MARK: Saved state

    public func savedState(now: UInt64) -> SavedState {
        SavedState(contacts: table.contacts, entries: entries.saved(at: time(now)))
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
        entries.restore(state.entries, at: time(now))
    }
}
