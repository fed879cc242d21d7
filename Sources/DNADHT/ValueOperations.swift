import DNACrypto
import DNAWire

/// What a put of a signed value achieved (docs/PROTOCOL.md §10.2).
public struct ValuePutResult: Sendable, Equatable {
    /// Holders that stored it (or held it already), this node included when it is among the k
    /// closest to the key; and the addresses of the others.
    public var stored = 0
    public var holders: [Endpoint] = []
    /// Holders that hold a value of the signer's slot that supersedes this one (status older): a
    /// later write of the same slot won, or the sequence was reused.
    public var superseded = 0
    /// Holders that refused it as invalid (every holder would), over a quota, or busy.
    public var invalid = 0
    public var quota = 0
    public var busy = 0
    /// Holders that left a part unanswered after its retries, or lost parts before the last came.
    public var unanswered = 0
    /// Nodes the lookup found that could hold it (answered with a token), and holders sent the value.
    public var candidates = 0
    public var sentTo = 0
    /// For each holder that refused it for its time (status 6): its Unix clock minus this node's, ms.
    public var clockOffsets: [Int64] = []
    /// Requests sent (the lookup's and the parts').
    public var messages = 0
}

/// Which values a get asks for: every signer's or one (`signer`: SHA-256 of its public key), with a
/// sequence above `since` ("what changed since N").
public struct ValueQuery: Sendable, Equatable {
    public var signer: [UInt8]?
    public var since: UInt64

    public init(signer: [UInt8]? = nil, since: UInt64 = 0) {
        self.signer = signer
        self.since = since
    }
}

/// What a get found (§10.3).
public struct ValueGetResult: Sendable {
    /// The freshest verified value per signer and slot that any of the k closest holders listed
    /// (tombstones included: a slot deleted), ordered by signer id, then slot.
    public var values: [SignedValue] = []
    /// Holders asked for their list (the k closest that answered the lookup with a token), and those
    /// that answered with it.
    public var asked = 0
    public var listed = 0
    /// Values fetched that did not verify (a holder that lied about what it holds), and values
    /// that were listed but that no holder could deliver.
    public var refused = 0
    public var undelivered = 0
    public var messages = 0
}

/// A put (§10.2), after the lookup of the key: every part of the value to each of the k closest
/// nodes that answered with a token (this node counted when it holds the value itself). A holder
/// that does not store it for a reason another node may not share (no answer to a part, a bad
/// token, over a quota, busy, or parts it lost before the last came) gives its place to the next
/// nearest node that answered, at most 2k holders in all (as an announce does, §5.2).
final class ValuePut {
    let id: LookupID
    let key: NodeID
    let parts: [ValuePart]
    let k: Int
    var result = ValuePutResult()
    /// Candidates not sent the value yet, nearest first.
    private var waiting: [(contact: Contact, token: UInt64)]
    /// A holder sent the value and not finished: its token, the parts in flight, the next to send.
    private struct Upload {
        var token: UInt64
        var inFlight: Set<Int>
        var next: Int
    }
    private var inProgress: [NodeID: Upload] = [:]
    private var placesOpen: Int
    private var sent = 0

    /// Parts in flight to one holder at once: a holder puts together at most 4 messages of one
    /// source at a time (§5.1), and parts are 13 datagrams each.
    static let partsInFlight = 3

    init(id: LookupID, key: NodeID, wire: [UInt8], valueID: [UInt8], candidates: [(Contact, UInt64)], k: Int,
         heldHere: Bool, messages: Int) {
        self.id = id
        self.key = key
        parts = ValuePart.split(wire, id: valueID)
        self.k = k
        waiting = candidates.map { (contact: $0.0, token: $0.1) }
        result.candidates = candidates.count
        placesOpen = heldHere ? k - 1 : k
        if heldHere { result.stored = 1 }
        result.messages = messages
    }

    /// Sends the value to the next holders while places are open; true when the put has ended.
    func advance(send: (Contact, DHTMessage.Body) -> Void) -> Bool {
        while placesOpen > 0, sent < 2 * k, !waiting.isEmpty {
            let (contact, token) = waiting.removeFirst()
            placesOpen -= 1
            sent += 1
            result.sentTo = sent
            inProgress[contact.id] = Upload(token: token, inFlight: [], next: 0)
            for _ in 0..<Self.partsInFlight { sendNext(to: contact, send) }
        }
        return inProgress.isEmpty
    }

    private func sendNext(to holder: Contact, _ send: (Contact, DHTMessage.Body) -> Void) {
        guard var upload = inProgress[holder.id], upload.next < parts.count else { return }
        let part = parts[upload.next]
        upload.inFlight.insert(upload.next)
        upload.next += 1
        inProgress[holder.id] = upload
        result.messages += 1
        send(holder, .valuePut(token: upload.token, key: key, part: part))
    }

    /// `holder` answered part `index` with `status` (`offset`: its Unix clock minus this node's, ms,
    /// for out of time).
    func answered(_ holder: Contact, part index: Int, status: ValueStatus, offset: Int64, send: (Contact, DHTMessage.Body) -> Void) {
        guard var upload = inProgress[holder.id] else { return }
        upload.inFlight.remove(index)
        switch status {
        case .more:
            inProgress[holder.id] = upload
            sendNext(to: holder, send)
            if inProgress[holder.id].map({ $0.inFlight.isEmpty }) == true {
                // Every part answered, and none completed the value: the holder lost earlier ones.
                inProgress[holder.id] = nil
                result.unanswered += 1
                placesOpen += 1
            }
            return
        case .stored:
            result.stored += 1
            result.holders.append(holder.endpoint)
        case .older: result.superseded += 1
        case .invalid: result.invalid += 1
        case .outOfTime: result.clockOffsets.append(offset)
        case .badToken: placesOpen += 1
        case .quota:
            result.quota += 1
            placesOpen += 1
        case .busy:
            result.busy += 1
            placesOpen += 1
        }
        inProgress[holder.id] = nil
    }

    /// A part sent to `holder` got no answer after its retries: the holder cannot complete the value.
    func failed(_ holder: NodeID) {
        guard inProgress.removeValue(forKey: holder) != nil else { return }
        result.unanswered += 1
        placesOpen += 1
    }
}

/// A get (§10.3), after the lookup of the key: VALUE_GET to each of the k closest nodes that
/// answered with a token (pages of 64 descriptors), then, per signer and slot, the value of the
/// freshest descriptor fetched part by part from a holder that listed it, and verified (its bytes
/// hash to the id, it is signed, at the key, and is what the descriptor said). Bytes that do not
/// hash to the id, or a holder that no longer has them, make the get try the next holder that
/// listed it; a value that hashes to its id but is not what the descriptor said (or not valid)
/// makes it try the next freshest descriptor. A holder counts one descriptor per slot (an honest
/// one holds one value per signer and slot) and opens at most its share of the slots a get
/// follows; one that served bytes it did not list, or listed a descriptor its value belies, or
/// did not serve two values it listed (not held, a bad token), or left a fetch unanswered after
/// every attempt, is asked for nothing more (its fetches under way go to other holders). So a
/// holder that lists forged descriptors costs two fetches and those in flight when its lies show,
/// and hides nothing another holder holds.
/// Fetches start as lists come (a fresher descriptor listed later is fetched in turn), and once
/// half of the holders asked listed all they hold, a further page is asked only of a holder whose
/// list is shorter yet than the longest of those or than the median total first pages gave.
final class ValueGet {
    let id: LookupID
    let key: NodeID
    let query: ValueQuery
    var result = ValueGetResult()

    /// A descriptor some holders listed, and which of them.
    private struct Choice {
        var descriptor: ValueDescriptor
        var holders: [(contact: Contact, token: UInt64)]
    }

    /// The fetch of one slot's value under way.
    private struct Fetch {
        var choice: Choice
        var holder: Contact
        var token: UInt64
        var parts: Reassembly?
        var inFlight: Set<Int>
        var next: Int
        var count: Int
    }

    private let holders: [(contact: Contact, token: UInt64)]
    /// Slots each holder opened (listed first), and the holders asked for nothing more: they
    /// served bytes that belie what they listed, or left a fetch unanswered after its retries.
    private var opened: [NodeID: Int] = [:]
    private var excluded = Set<NodeID>()
    /// Parts asked of each holder and not answered yet, over every slot's fetch: at most
    /// `ValuePut.partsInFlight`, since this node puts together at most 4 messages of one source at
    /// once (§5.1) and a part is a message of many datagrams (16 slots fetched from the one holder
    /// that listed first would otherwise have their parts evicted before they were whole).
    private var partsAsked: [NodeID: Int] = [:]
    /// Holders whose list is awaited, and the skip of the page asked.
    private var listing: [NodeID: Int] = [:]
    private var pages: [NodeID: Int] = [:]
    /// Per slot, the descriptors listed, freshest first; the slots to fetch, in the order their
    /// first descriptors came (and those queued, a set of the same).
    private var choices: [ValueStore.Slot: [Choice]] = [:]
    private var toFetch: [ValueStore.Slot] = []
    private var queued = Set<ValueStore.Slot>()
    private var fetches: [ValueStore.Slot: Fetch] = [:]
    /// Per slot, the value already at hand (held here, or fetched and verified).
    private var found: [ValueStore.Slot: SignedValue] = [:]
    /// Holders whose list ended with its last page. Once half of those asked have (`quorum`), a
    /// holder is asked for a further page only while its list is shorter than the longest that
    /// ended or than the median first-page total: a holder that answers each page slowly, with a list that never ends, then holds a get
    /// up by about the pages honest lists have, not by `maximumPages` of them.
    private var listsComplete = 0
    /// Values listed that no holder delivered (their ids).
    private var undelivered = Set<[UInt8]>()
    /// Values each holder listed and did not serve ("not held", a bad token): at
    /// `strikesForExclusion` it is asked for nothing more.
    private var strikes: [NodeID: Int] = [:]
    static let strikesForExclusion = 2
    /// The largest `total` of the lists that ended: after the quorum, a holder whose list is shorter
    /// yet than that, or than the median of the totals first pages gave, is still asked for its
    /// next page (honest holders hold about the same values).
    private var longestComplete = 0
    /// The totals the holders' first pages gave: their median is how long an honest list is
    /// (fewer than half of the holders lying), whatever a few claim.
    private var firstTotals: [Int] = []
    private var medianTotal: Int { firstTotals.isEmpty ? 0 : firstTotals.sorted()[firstTotals.count / 2] }
    private var paging = true
    private var quorum: Int { (holders.count + 1) / 2 }

    /// Slots one get follows, list pages asked per holder, fetches at once. (Descriptors kept per
    /// slot: one per holder.)
    static let maximumSlots = 4096
    static let maximumPages = 64
    static let fetchesInFlight = 16

    init(id: LookupID, key: NodeID, query: ValueQuery, holders: [(Contact, UInt64)], local: [SignedValue], messages: Int) {
        self.id = id
        self.key = key
        self.query = query
        self.holders = holders.map { (contact: $0.0, token: $0.1) }
        for value in local { found[ValueStore.Slot(signer: value.signerID, slot: value.slot)] = value }
        result.messages = messages
        result.asked = holders.count
    }

    /// A listener's fetch of values holders pushed to it (§10.5): no VALUE_GET; each descriptor is
    /// fetched from the holders that pushed it, as if they had listed it.
    convenience init(id: LookupID, key: NodeID, query: ValueQuery, pushed: [(descriptor: ValueDescriptor, holders: [(contact: Contact, token: UInt64)])],
                     local: [SignedValue]) {
        var holders: [(Contact, UInt64)] = []
        for (_, pushers) in pushed {
            for holder in pushers where !holders.contains(where: { $0.0.id == holder.contact.id }) { holders.append((holder.contact, holder.token)) }
        }
        self.init(id: id, key: key, query: query, holders: holders, local: local, messages: 0)
        for holder in holders { pages[holder.0.id] = 0 }
        for (descriptor, pushers) in pushed {
            for holder in pushers { add(descriptor, from: holder) }
        }
    }

    /// Slots one holder may open: its share of `maximumSlots` (at least one page's worth), so that
    /// a holder listing made-up slots page after page neither crowds out the others' nor costs the
    /// get more than that many fetches.
    var slotsPerHolder: Int { max(DHTMessage.maximumDescriptors, Self.maximumSlots / max(1, holders.count)) }

    /// Sends the first list requests, or the next fetches; true when the get has ended.
    func advance(send: (Contact, DHTMessage.Body) -> Void) -> Bool {
        if pages.isEmpty {
            for holder in holders {
                pages[holder.contact.id] = 1
                listing[holder.contact.id] = 0
                ask(holder, skip: 0, send)
            }
        }
        // Fetches start as soon as a list names a slot (not once every list came): a fresher
        // descriptor listed later is fetched in turn.
        while fetches.count < Self.fetchesInFlight, !toFetch.isEmpty {
            let slot = toFetch.removeFirst()
            queued.remove(slot)
            startFetch(slot, send)
        }
        pump(send)
        guard listing.isEmpty, fetches.isEmpty, toFetch.isEmpty else { return false }
        result.values = found.sorted { $0.key < $1.key }.map(\.value)
        // A value another holder delivered after all is not undelivered.
        result.undelivered = undelivered.subtracting(found.values.map(\.id)).count
        return true
    }

    private func ask(_ holder: (contact: Contact, token: UInt64), skip: Int, _ send: (Contact, DHTMessage.Body) -> Void) {
        result.messages += 1
        send(holder.contact, .valueGet(token: holder.token, key: key, signer: query.signer, since: query.since, skip: skip))
    }

    /// A holder's VALUE_LIST (or anything else in answer to VALUE_GET: its list ends there).
    func listed(by holder: Contact, _ body: DHTMessage.Body, send: (Contact, DHTMessage.Body) -> Void) {
        guard let skip = listing.removeValue(forKey: holder.id),
              let token = holders.first(where: { $0.contact.id == holder.id })?.token else { return }
        guard case .valueList(let total, let descriptors) = body else { return }
        if skip == 0 {
            result.listed += 1
            firstTotals.append(total)
        }
        for descriptor in descriptors where query.signer.map({ $0 == descriptor.signerID }) ?? true && descriptor.sequence > query.since {
            add(descriptor, from: (holder, token))
        }
        let next = skip + descriptors.count
        guard !descriptors.isEmpty, next < total, pages[holder.id, default: 0] < Self.maximumPages else {
            listsComplete += 1
            longestComplete = max(longestComplete, min(total, next))
            if listsComplete >= quorum { paging = false }
            return
        }
        guard paging || next < max(longestComplete, medianTotal) else { return }
        pages[holder.id, default: 0] += 1
        listing[holder.id] = next
        ask((holder, token), skip: next, send)
    }

    /// The holder's list did not come (after retries).
    func listFailed(_ holder: NodeID) { listing[holder] = nil }

    private func add(_ descriptor: ValueDescriptor, from holder: (contact: Contact, token: UInt64)) {
        let slot = ValueStore.Slot(signer: descriptor.signerID, slot: descriptor.slot)
        if let held = found[slot], !descriptor.supersedesValue(held) { return }  // what is at hand supersedes it (or is it)
        var list = choices[slot] ?? []
        // One descriptor per holder and slot (the first it listed): a holder listing many for one
        // slot would otherwise push the one the others listed out.
        if list.contains(where: { $0.holders.contains { $0.contact.id == holder.contact.id } }) { return }
        if list.isEmpty {
            guard choices.count < Self.maximumSlots, opened[holder.contact.id, default: 0] < slotsPerHolder else { return }
            opened[holder.contact.id, default: 0] += 1
        }
        if let index = list.firstIndex(where: { $0.descriptor == descriptor }) {
            list[index].holders.append(holder)
        } else {
            list.append(Choice(descriptor: descriptor, holders: [holder]))
            list.sort { $0.descriptor.supersedes($1.descriptor) }
        }
        choices[slot] = list
        if fetches[slot] == nil { enqueue(slot) }
    }

    /// Asks `holder` for nothing more: its fetches under way go to the next holder that listed the
    /// same value (their answers, if any, are ignored).
    private func exclude(_ holder: NodeID) {
        guard excluded.insert(holder).inserted else { return }
        for (slot, fetch) in fetches where fetch.holder.id == holder { drop(slot) }
    }

    /// Queues `slot` for a fetch (at the front: again after a failed one), once.
    private func enqueue(_ slot: ValueStore.Slot, first: Bool = false) {
        guard queued.insert(slot).inserted else { return }
        if first { toFetch.insert(slot, at: 0) } else { toFetch.append(slot) }
    }

    /// Fetches the freshest choice of `slot` not tried yet from the next holder that listed it (or
    /// settles the slot on what is at hand).
    private func startFetch(_ slot: ValueStore.Slot, _ send: (Contact, DHTMessage.Body) -> Void) {
        while var list = choices[slot], var choice = list.first {
            if let held = found[slot], held.id == choice.descriptor.id || !choice.descriptor.supersedesValue(held) {
                choices[slot] = nil
                return
            }
            choice.holders.removeAll { excluded.contains($0.contact.id) }
            guard !choice.holders.isEmpty else {
                list.removeFirst()
                choices[slot] = list.isEmpty ? nil : list
                // Counted once per value, however many times holders list it again meanwhile.
                undelivered.insert(choice.descriptor.id)
                continue
            }
            // The holder that listed it with the fewest parts asked of it now (the first on a tie).
            let chosen = choice.holders.indices.min { partsAsked[choice.holders[$0].contact.id, default: 0]
                < partsAsked[choice.holders[$1].contact.id, default: 0] } ?? 0
            let holder = choice.holders.remove(at: chosen)
            list[0] = choice
            choices[slot] = list
            let count = Pieces.count(length: choice.descriptor.length, pieceSize: ValuePart.size)
            fetches[slot] = Fetch(choice: choice, holder: holder.contact, token: holder.token, parts: nil, inFlight: [], next: 0, count: count)
            return
        }
        choices[slot] = nil
    }

    /// Asks for the next parts of every fetch, in slot order, while their holders have room.
    private func pump(_ send: (Contact, DHTMessage.Body) -> Void) {
        for slot in fetches.keys.sorted() {
            while fetchNext(slot, send) {}
        }
    }

    @discardableResult
    private func fetchNext(_ slot: ValueStore.Slot, _ send: (Contact, DHTMessage.Body) -> Void) -> Bool {
        guard var fetch = fetches[slot], fetch.next < fetch.count,
              partsAsked[fetch.holder.id, default: 0] < ValuePut.partsInFlight else { return false }
        partsAsked[fetch.holder.id, default: 0] += 1
        fetch.inFlight.insert(fetch.next)
        result.messages += 1
        send(fetch.holder, .valueFetch(token: fetch.token, key: key, id: fetch.choice.descriptor.id, index: fetch.next))
        fetch.next += 1
        fetches[slot] = fetch
        return true
    }

    /// A part asked of `holder` was answered, or given up.
    private func partEnded(_ holder: NodeID) {
        partsAsked[holder, default: 1] -= 1
        if partsAsked[holder] == 0 { partsAsked[holder] = nil }
    }

    /// The slot whose fetch from `holder` asked for part `index` of value `valueID` (two slots may
    /// fetch the same id from one holder when it lists it twice: each answer goes to one of them).
    private func fetchingSlot(_ holder: NodeID, _ valueID: [UInt8], _ index: Int) -> ValueStore.Slot? {
        fetches.filter { $0.value.holder.id == holder && $0.value.choice.descriptor.id == valueID && $0.value.inFlight.contains(index) }
            .keys.min()
    }

    /// A VALUE_PART from `holder` in answer to the fetch of part `index` of `valueID`; `verify`
    /// checks a whole value (structure, fields, signature).
    func fetched(from holder: Contact, valueID: [UInt8], index: Int, _ body: DHTMessage.Body, verify: ([UInt8]) -> SignedValue?,
                 send: (Contact, DHTMessage.Body) -> Void) {
        partEnded(holder.id)
        guard let slot = fetchingSlot(holder.id, valueID, index), var fetch = fetches[slot] else { return }
        let descriptor = fetch.choice.descriptor
        guard case .valuePart(.part, let part?) = body, part.id == descriptor.id, part.length == descriptor.length,
              part.index == index else {
            // It listed the value and does not serve it (not held, a bad token, another part). An
            // honest holder serves what it listed, replaced or not, unless its lifetime ended or
            // the replaced copy was evicted meanwhile: the second such value ends its fetches (a
            // liar's made-up descriptors would otherwise cost a round trip each).
            strikes[holder.id, default: 0] += 1
            if strikes[holder.id, default: 0] >= Self.strikesForExclusion { exclude(holder.id) }
            drop(slot)
            return
        }
        fetch.inFlight.remove(part.index)
        if fetch.parts == nil {
            fetch.parts = try? Reassembly(length: part.length, count: part.count, index: part.index, bytes: part.bytes.count,
                                          maximumLength: SignedValue.maximumWireSize)
        }
        guard var parts = fetch.parts,
              (try? parts.add(index: part.index, length: part.length, count: part.count, bytes: part.bytes)) != nil else {
            drop(slot)
            return
        }
        fetch.parts = parts
        guard let wire = parts.message else {
            fetches[slot] = fetch
            return
        }
        fetches[slot] = nil
        if let value = Self.matches(wire, descriptor, key: key, verify: verify) {
            found[slot] = value
            // A fresher descriptor listed while this one was fetched is fetched next.
            let fresher = choices[slot]?.filter { $0.descriptor.supersedesValue(value) } ?? []
            choices[slot] = fresher.isEmpty ? nil : fresher
            if !fresher.isEmpty { enqueue(slot) }
            return
        }
        result.refused += 1
        if Sodium.sha256(wire) != descriptor.id {
            // Bytes other than the ones listed: this holder lied; the next holder of the same value
            // is asked (another may hold the real bytes).
            exclude(holder.id)
        } else if var list = choices[slot] {
            // The value is not what the descriptor said (or not valid): every holder that listed the
            // descriptor lied, and no holder can serve other bytes under its id. The next descriptor.
            // (Found by value: a fresher one listed during the fetch may be first now.)
            if let index = list.firstIndex(where: { $0.descriptor == descriptor }) {
                for liar in list[index].holders { exclude(liar.contact.id) }
                list.remove(at: index)
            }
            exclude(holder.id)
            choices[slot] = list.isEmpty ? nil : list
        } else {
            exclude(holder.id)
        }
        if choices[slot] != nil { enqueue(slot, first: true) }
    }

    /// The value `wire` is, when it is the one `descriptor` names: its bytes hash to the id, it is
    /// valid, at the key, and of the descriptor's signer, slot and sequence.
    private static func matches(_ wire: [UInt8], _ descriptor: ValueDescriptor, key: NodeID, verify: ([UInt8]) -> SignedValue?) -> SignedValue? {
        guard Sodium.sha256(wire) == descriptor.id, let value = verify(wire), value.key == key.bytes,
              value.signerID == descriptor.signerID, value.slot == descriptor.slot, value.sequence == descriptor.sequence else { return nil }
        return value
    }

    /// A fetch from `holder` of part `index` failed (`unanswered`: no answer after its retries; or
    /// not held, a bad token, a bad part): the next holder of the same value is asked, or the next
    /// descriptor. A holder that left a part unanswered is asked for nothing more.
    func fetchFailed(from holder: NodeID, valueID: [UInt8], index: Int, unanswered: Bool = false, send: (Contact, DHTMessage.Body) -> Void) {
        partEnded(holder)
        guard let slot = fetchingSlot(holder, valueID, index) else { return }
        drop(slot)
        if unanswered { exclude(holder) }
    }

    /// Gives up the fetch of `slot` from its holder: the slot is fetched again, from the next one.
    private func drop(_ slot: ValueStore.Slot) {
        fetches[slot] = nil
        enqueue(slot, first: true)
    }
}

extension ValueDescriptor {
    /// Whether the value this describes would supersede `value` (same signer and slot assumed).
    func supersedesValue(_ value: SignedValue) -> Bool {
        sequence != value.sequence ? sequence > value.sequence : value.id.lexicographicallyPrecedes(id)
    }
}
