import DNACrypto

public typealias LookupID = Int

/// What a lookup found.
public struct LookupResult: Sendable {
    /// The closest nodes that answered, nearest first.
    public var closest: [Contact]
    /// FIND_VALUE: the freshest verified entry of the key most of them held (§5.2: a name's
    /// first-comer keeps it; a squatter's entry for the same name is outvoted).
    public var entry: PeerEntry?
    /// FIND_VALUE: how many other keys than `entry`'s holders answered with for the name.
    public var conflictingKeys = 0
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
    /// Announce: how many of the closest nodes refused it because a live entry of the name has
    /// another key (status 2: the name is taken).
    public var taken = 0
    /// Announce: more holders refused the entry as taken than stored it. Readers follow the key
    /// most holders answer with (§5.2), so they would not get this one: the name is another key's.
    /// (Holders that stored it are nodes that joined after the name's owner announced.)
    public var nameTaken: Bool { taken > stored }
    /// Announce: for each node that refused the entry for its time (status 6), its Unix clock minus
    /// this node's, in ms (§5.2).
    public var clockOffsets: [Int64] = []

    /// Announce: the median of `clockOffsets` in whole seconds (the holders' clocks minus this one's),
    /// nil when no holder refused the entry for its time. A holder chooses its time freely: an
    /// offset of -2^63 ms is possible, and this never overflows (negating the median in ms did:
    /// the announce's warning trapped).
    public var medianClockOffsetSeconds: Int64? {
        guard !clockOffsets.isEmpty else { return nil }
        return clockOffsets.sorted()[clockOffsets.count / 2] / 1000
    }
}

/// One iterative lookup (docs/PROTOCOL.md §5.4): the candidates nearest the target, α requests in
/// flight, until the k nearest that are alive have all answered. A request unanswered after the soft
/// timeout no longer counts against α, nor among the k nearest; candidates that failed recently come
/// last. It decides what to send next (`advance`) and keeps the result; the node sends, files the
/// requests under their transactions and hands the answers back (`answered`, `stalled`, `failed`).
/// Distances are XOR distances to `target`; it holds no times.
final class Lookup {
    enum Kind {
        case nodes
        case value
        case announce([UInt8])
        /// FIND_NODE, then MAIL_PUT of these inbox items to the k closest (a holder republishing).
        case republishMail([[UInt8]])
        /// FIND_VALUE that sends the signal to the first holders it meets.
        case signal(UInt64, [UInt8])
        /// FIND_NODE; then the node puts the signed value (`ValuePut`, §10.2) on the closest.
        case putValue([UInt8], id: [UInt8])
        /// FIND_NODE; then the node gets the values at the key from the closest (`ValueGet`, §10.3).
        case getValues(ValueQuery)
        /// FIND_NODE; then the node subscribes listener `UInt64` to the closest and gets the values (§10.5).
        case listen(UInt64)
    }

    enum Phase { case searching, storing, finished }

    /// `stalled`: asked, no answer within the soft timeout, the request still running (§5.4).
    enum State { case fresh, waiting, stalled, answered, failed }

    struct Candidate {
        var contact: Contact
        var state: State = .fresh
        var round: Int
        var token: UInt64 = 0
        /// FIND_VALUE: the last_seen of the entry it holds, which it sends only to a requester with a token.
        var held: UInt64?
        var askedAgain = false
        /// A request to it went unanswered recently (`DHTNode.failedRecently`): asked last.
        var suspect = false
    }

    let id: LookupID
    let target: NodeID
    let kind: Kind
    let k: Int
    var phase = Phase.searching
    var result = LookupResult(closest: [])
    var storesInFlight = 0
    /// Announce: the candidates sent a STORE, and how many of those left no place among the holders
    /// (no answer, a bad token or over quota): each such place goes to the next nearest candidate
    /// that answered, so that a node that answers lookups but drops STOREs (a Sybil near the key,
    /// or a path that loses the entry's pieces) costs the entry no holder (§5.2).
    private var storeSentTo = Set<NodeID>()
    private var storePlacesOpen = 0
    /// Announce: FIND_NODEs sent after the search to find nodes for those places (k at most), and
    /// the bit of the key whose subtree is asked for next when no candidate is left (`nextSubtreeOut`).
    private var replacementQueries = 0
    private var outwardBit: Int?
    /// Lookups that place or read records (`placesRecords`): FIND_NODEs sent to widen a search that
    /// ended knowing fewer than k nodes alive.
    private var widenings = 0
    /// Announce: the nodes that stored the entry.
    var holders: [Endpoint] = []
    /// Signal: SIGNALs in flight, the holders already sent one, and how many of those did not
    /// forward it (refused it or never answered: their places go to further holders).
    var signalsInFlight = 0
    var signalsFailed = 0
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

    func add(_ contact: Contact, round: Int, suspect: Bool = false) {
        guard candidates[contact.id] == nil else { return }
        candidates[contact.id] = Candidate(contact: contact, round: round, suspect: suspect)
    }

    /// What a request sent by `advance` is for: the node files its answer (or timeout) accordingly.
    enum Role {
        /// FIND_NODE or FIND_VALUE to a candidate.
        case query
        /// SIGNAL `id` to a holder of the key (§5.6).
        case signal(UInt64)
        /// STORE of the announced entry to one of the k closest (§5.2).
        case store
        /// MAIL_PUT of an inbox item to one of the k closest (a holder republishing, §8.3).
        case republish
    }

    /// Moves the lookup on: hands `send`, in this order, the next queries (at most α in flight), the
    /// SIGNALs to the next holders (signal), and once the search is done the STOREs (announce) or the
    /// MAIL_PUTs (republishing), each counted in `result.messages`. Returns true when the lookup has
    /// ended: the node then calls `finish` and reports it.
    func advance(alpha: Int, signalFanout: Int, tokens: [Endpoint: UInt64],
                 send: (Contact, DHTMessage.Body, Role) -> Void) -> Bool {
        switch phase {
        case .searching:
            for (contact, query) in next(alpha: alpha, tokens: tokens) {
                result.messages += 1
                send(contact, query, .query)
            }
            if case .signal(let signalID, let payload) = kind {
                for (contact, token) in signalTargets(limit: signalFanout) {
                    signalsInFlight += 1
                    result.messages += 1
                    send(contact, .signal(token: token, key: target, id: signalID, payload: payload), .signal(signalID))
                }
            }
            guard isDone else { return false }
            if widen(tokens: tokens, send) { return false }
            if case .announce(let wire) = kind {
                phase = .storing
                for (contact, token) in storeTargets() { sendStore(wire, to: contact, token: token, send) }
                if storesInFlight > 0 { return false }
            }
            if case .republishMail(let items) = kind {
                for (contact, token) in storeTargets() {
                    for item in items {
                        result.messages += 1
                        send(contact, .mailPut(token: token, item: item), .republish)
                    }
                }
            }
            return true
        case .storing:
            if case .announce(let wire) = kind, storePlacesOpen > 0 {
                for (contact, token) in replacementStoreTargets(limit: storePlacesOpen) {
                    storePlacesOpen -= 1
                    sendStore(wire, to: contact, token: token, send)
                }
                // No node that answered is left: the search goes on to the next nearest candidates
                // not asked yet (an answer brings the token a STORE needs, and further candidates).
                let asking = candidates.values.filter { $0.state == .waiting }.count
                var more = min(storePlacesOpen - asking, k - replacementQueries)
                if more > 0 {
                    let fresh = candidates.values.filter { $0.state == .fresh }.sorted(by: isAskedBefore).prefix(more)
                    for candidate in fresh {
                        replacementQueries += 1
                        more -= 1
                        result.messages += 1
                        send(candidate.contact, ask(candidate, tokens: tokens), .query)
                    }
                }
                // None left either: every node that answered lists the same nearest ones (all of
                // them within one subtree around the key). The lookup asks for the next subtree out.
                if more > 0, asking == 0, storesInFlight == 0, let (contact, subtree) = nextSubtreeOut(beyond: Array(storeSentTo)) {
                    replacementQueries += 1
                    result.messages += 1
                    candidates[contact.id]?.state = .waiting
                    candidates[contact.id]?.askedAgain = true
                    send(contact, .findNode(target: subtree, token: tokens[contact.endpoint] ?? 0), .query)
                }
            }
            return storesInFlight <= 0 && !candidates.values.contains { $0.state == .waiting }
        case .finished:
            return false
        }
    }

    /// Whether the lookup stores or reads records on the k nodes nearest the target, so that it
    /// needs k of them alive (announce, republishing, value put, get and listen).
    private var placesRecords: Bool {
        switch kind {
        case .announce, .republishMail, .putValue, .getValues, .listen: true
        case .nodes, .value, .signal: false
        }
    }

    /// A search that ended knowing fewer than k candidates alive, where the record needs k: every
    /// node that answered listed the same nearest nodes, dead ones among them (tables keep a dead
    /// node until a request to it fails), so the nodes just beyond were never named. Sends a
    /// FIND_NODE for the next subtree out from the key (`nextSubtreeOut`); its answer brings them,
    /// and the search goes on, one subtree farther out each time it still knows fewer than k alive:
    /// at most k such requests, and none past bit 0 (in a network of fewer than k + 1 nodes, as many
    /// as the farthest node's common prefix with the key has bits, plus one). Returns whether it
    /// sent one (§5.4).
    private func widen(tokens: [Endpoint: UInt64], _ send: (Contact, DHTMessage.Body, Role) -> Void) -> Bool {
        // b comes from the nodes that answers named (round > 1) when there are any: a contact of the
        // node's own table far from the key (a bootstrap node, right after joining) would start the
        // widening at a bit far outside the nodes found, past the subtrees between.
        let answered = candidates.values.filter { $0.state == .answered }
        let named = answered.filter { $0.round > 1 }
        guard placesRecords, nearest.count < k, widenings < k,
              let (contact, subtree) = nextSubtreeOut(beyond: (named.isEmpty ? answered : named).map(\.contact.id))
        else { return false }
        widenings += 1
        result.messages += 1
        candidates[contact.id]?.state = .waiting
        candidates[contact.id]?.askedAgain = true
        send(contact, .findNode(target: subtree, token: tokens[contact.endpoint] ?? 0), .query)
        return true
    }

    private func sendStore(_ wire: [UInt8], to contact: Contact, token: UInt64, _ send: (Contact, DHTMessage.Body, Role) -> Void) {
        storeSentTo.insert(contact.id)
        storesInFlight += 1
        result.messages += 1
        send(contact, .store(token: token, entry: wire), .store)
    }

    /// Ends the lookup: its result gets the nearest candidates that answered.
    func finish() {
        phase = .finished
        result.closest = answeredClosest()
    }

    /// The k nearest candidates that have neither failed nor stalled; those that failed recently
    /// and have not answered this lookup come after all others.
    private var nearest: [Candidate] {
        Array(candidates.values.filter { $0.state != .failed && $0.state != .stalled }.sorted(by: isAskedBefore).prefix(k))
    }

    /// The lookup's order: nearest first, except that candidates that failed recently and have not
    /// answered come after all others.
    private func isAskedBefore(_ a: Candidate, _ b: Candidate) -> Bool {
        let lastA = a.suspect && a.state != .answered, lastB = b.suspect && b.state != .answered
        return lastA != lastB ? lastB : (a.contact.id ^ target) < (b.contact.id ^ target)
    }

    var isDone: Bool {
        guard bootstrapPings <= 0, holdersToAsk.isEmpty else { return false }
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
        guard near.allSatisfy({ $0.state == .answered }), !candidates.values.contains(where: { $0.state == .waiting }) else {
            return false
        }
        // Stalled requests are not waited for once k candidates answered; with fewer (a small
        // network, or one that lost its answers) their retries may still bring the only answers,
        // unless they go to contacts that failed recently.
        return near.count >= k || !candidates.values.contains { $0.state == .stalled && !$0.suspect }
    }

    /// FIND_VALUE ends once this many of the nearest candidates answered and the entry is verified.
    static let quorum = 8

    /// FIND_VALUE: the answered candidates that said they hold an entry fresher than the best one
    /// received, not asked again yet (the freshest first); while holders answered with different
    /// keys for the name, every one that said it holds an entry, so that each holder's key counts.
    private var holdersToAsk: [Candidate] {
        guard case .value = kind else { return [] }
        let best = result.entry?.lastSeen ?? 0, contested = keys.count > 1
        return candidates.values.filter { $0.state == .answered && !$0.askedAgain && $0.held != nil && (contested || ($0.held ?? 0) > best) }
            .sorted { ($0.held ?? 0) != ($1.held ?? 0) ? ($0.held ?? 0) > ($1.held ?? 0) : isAskedBefore($0, $1) }
    }

    /// The next requests to send, keeping at most α in flight.
    func next(alpha: Int, tokens: [Endpoint: UInt64]) -> [(Contact, DHTMessage.Body)] {
        var inFlight = candidates.values.filter { $0.state == .waiting }.count
        var out: [(Contact, DHTMessage.Body)] = []
        var chosen = nearest.filter { $0.state == .fresh }
        // One second request at a time; α at a time while the name is contested.
        let again = candidates.values.filter { $0.state == .waiting && $0.askedAgain }.count
        chosen.insert(contentsOf: holdersToAsk.prefix(max(0, (keys.count > 1 ? alpha : 1) - again)), at: 0)
        for candidate in chosen where inFlight < alpha {
            inFlight += 1
            out.append((candidate.contact, ask(candidate, tokens: tokens)))
        }
        return out
    }

    /// Marks `candidate` asked and returns the request for it.
    private func ask(_ candidate: Candidate, tokens: [Endpoint: UInt64]) -> DHTMessage.Body {
        candidates[candidate.contact.id]?.state = .waiting
        if candidate.state == .answered { candidates[candidate.contact.id]?.askedAgain = true }
        let token = tokens[candidate.contact.endpoint] ?? 0
        candidates[candidate.contact.id]?.token = token
        switch kind {
        case .nodes, .announce, .republishMail, .putValue, .getValues, .listen: return .findNode(target: target, token: token)
        case .value, .signal: return .findValue(key: target, token: token)
        }
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
            for contact in contacts where contact.id != node.id {
                guard contact.endpoint.isReachable(learnedFrom: candidate.contact.endpoint) else {
                    node.refusedContact()
                    continue
                }
                add(contact, round: candidate.round + 1, suspect: node.failedRecently(contact.id, now: now))
            }
        case .value(let wire):
            if case .signal = kind {
                candidate.held = 1  // it holds the entry (and answered with it: the token it was sent is good)
                break
            }
            if let entry = node.acceptable(wire, key: target, now: now) { vote(entry, from: id) }
        default: break
        }
        candidates[id] = candidate
    }

    /// The request to `id` got no answer. A candidate asked again (a holder for a fresher entry, or
    /// for the nodes nearest itself) goes back to having answered: its first answer stands.
    func failed(_ id: NodeID) {
        guard let candidate = candidates[id] else { return }
        candidates[id]?.state = candidate.askedAgain ? .answered : .failed
    }

    /// Whether the request to `id`, unanswered at its timeout, is worth sending again (§5.4): the
    /// lookup asked it again for a fresher entry it said it holds, or it has no fresh candidate
    /// among its nearest and nothing else in flight (only stalled requests could still answer).
    func waitsFor(_ id: NodeID) -> Bool {
        guard phase == .searching, let candidate = candidates[id] else { return false }
        if candidate.askedAgain { return true }
        return !candidates.values.contains { $0.state == .waiting } && !nearest.contains { $0.state == .fresh }
    }

    /// The request to `id` passed its soft timeout (§5.4): it leaves the α in flight and the k nearest
    /// until it answers. A holder asked again goes back to having answered (its first answer stands).
    func stalled(_ id: NodeID) {
        guard let candidate = candidates[id], candidate.state == .waiting else { return }
        candidates[id]?.state = candidate.askedAgain ? .answered : .stalled
    }

    /// FIND_VALUE: the verified entries received, by public key: which candidates answered with an
    /// entry of that key, and the freshest one. Holders refuse a second key for a name while an
    /// entry lives (first come, first served, §5.2), so the key most holders answered with is the
    /// first-comer's; a squatter's entry is held only where it stores it itself.
    private var keys: [(publicKey: [UInt8], holders: Set<NodeID>, freshest: PeerEntry)] = []

    /// Counts `entry` from candidate `id` and makes the result the freshest entry of the key most
    /// candidates answered with (on a tie, the key received first).
    func vote(_ entry: PeerEntry, from id: NodeID) {
        if let index = keys.firstIndex(where: { $0.publicKey == entry.publicKey }) {
            keys[index].holders.insert(id)
            if entry.lastSeen > keys[index].freshest.lastSeen { keys[index].freshest = entry }
        } else {
            if keys.count >= Self.maximumKeys { return }
            keys.append((entry.publicKey, [id], entry))
        }
        var winner = keys[0]
        for candidate in keys.dropFirst() where candidate.holders.count > winner.holders.count { winner = candidate }
        if result.entry.map({ $0.publicKey != winner.freshest.publicKey || $0.lastSeen < winner.freshest.lastSeen }) ?? true {
            result.entry = winner.freshest
        }
        result.conflictingKeys = keys.count - 1
    }

    /// Distinct keys a lookup keeps count of (a lookup has at most a few dozen candidates).
    static let maximumKeys = 8

    func answeredClosest() -> [Contact] {
        nearest.filter { $0.state == .answered }.map(\.contact)
    }

    /// Signal: the next holders (answered, holding an entry for the key, with a token) to send the
    /// SIGNAL, nearest first: `limit` at most in flight or forwarded at once, and
    /// at most `k` in all (a holder that refused it, e.g. one that got a copy of the entry from
    /// elsewhere and so does not know the owner's address, makes room for the next).
    func signalTargets(limit: Int) -> [(Contact, UInt64)] {
        let room = min(limit - (signalled.count - signalsFailed), k - signalled.count)
        guard room > 0 else { return [] }
        let chosen = candidates.values.filter { $0.state == .answered && $0.held != nil && $0.token != 0 && !signalled.contains($0.contact.id) }
            .sorted { ($0.contact.id ^ target) < ($1.contact.id ^ target) }.prefix(room)
        for candidate in chosen { signalled.insert(candidate.contact.id) }
        return chosen.map { ($0.contact, $0.token) }
    }

    /// Every candidate that answered with a token, nearest first (the holders a value put or get
    /// starts from, and their replacements).
    func answeredWithTokens() -> [(Contact, UInt64)] {
        candidates.values.filter { $0.state == .answered && $0.token != 0 }.sorted(by: isAskedBefore).map { ($0.contact, $0.token) }
    }

    func storeTargets() -> [(Contact, UInt64)] {
        nearest.filter { $0.state == .answered && $0.token != 0 }.map { ($0.contact, $0.token) }
    }

    /// Announce: a STORE came back without the entry stored for a reason another node may not have
    /// (no answer, a bad token, over quota: not a taken name, an invalid entry or a clock the holder
    /// refuses, which every holder would answer alike). Its place goes to the next candidate.
    func storeLeftAPlace() {
        guard phase == .storing, storeSentTo.count < Self.maximumStores(k: k) else { return }
        storePlacesOpen += 1
    }

    /// When every candidate was asked (and, announcing, every one that answered was sent the entry):
    /// a FIND_NODE for the nodes just beyond `nodes` (those sent the entry, or those that answered),
    /// and the node to ask. They all share the key's first `b` bits (b: the common prefix of the
    /// farthest, taken the first time); the nearest nodes beyond
    /// them share exactly `b` bits (the subtree of the key with bit b flipped), then `b - 1`, and so
    /// on outwards. The target is the key with that bit flipped, asked of the answered candidate
    /// nearest it, whose table holds that subtree's nodes (Kademlia's buckets). (Asking the farthest
    /// holder for the nodes nearest itself brought none when the subtree around the key held more
    /// than k nodes: each of them lists the same ones.) Nil once every bit was asked.
    private func nextSubtreeOut(beyond nodes: [NodeID]) -> (Contact, NodeID)? {
        if outwardBit == nil {
            guard let farthest = nodes.map({ $0 ^ target }).max() else { return nil }
            outwardBit = min(farthest.leadingZeroBits, 159)
        }
        guard let bit = outwardBit, bit >= 0 else { return nil }
        outwardBit = bit - 1
        let subtree = target.flipping(bit: bit)
        guard let asked = candidates.values.filter({ $0.state == .answered })
            .min(by: { ($0.contact.id ^ subtree) < ($1.contact.id ^ subtree) }) else { return nil }
        return (asked.contact, subtree)
    }

    /// At most this many STOREs per announce: k, and as many again in place of those that failed.
    static func maximumStores(k: Int) -> Int { 2 * k }

    /// The nearest candidates that answered with a token and were not sent the entry yet, beyond
    /// the k nearest (`limit` at most, within `maximumStores` in all).
    private func replacementStoreTargets(limit: Int) -> [(Contact, UInt64)] {
        let room = min(limit, Self.maximumStores(k: k) - storeSentTo.count)
        guard room > 0 else { return [] }
        return candidates.values.filter { $0.state == .answered && $0.token != 0 && !storeSentTo.contains($0.contact.id) }
            .sorted { ($0.contact.id ^ target) < ($1.contact.id ^ target) }.prefix(room).map { ($0.contact, $0.token) }
    }
}
