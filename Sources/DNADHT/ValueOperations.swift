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
    /// Holders that answered with their list.
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
/// hash to the id, it is signed, at the key, and is what the descriptor said). A value that does
/// not verify, or that the holder no longer has, makes the get try the next holder that listed it,
/// then the next freshest descriptor: a holder that lists forged descriptors costs one fetch each,
/// and hides nothing another holder holds.
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
    /// Holders whose list is awaited, and the skip of the page asked.
    private var listing: [NodeID: Int] = [:]
    private var pages: [NodeID: Int] = [:]
    /// Per slot, the descriptors listed, freshest first; the slots still to fetch, in order.
    private var choices: [ValueStore.Slot: [Choice]] = [:]
    private var toFetch: [ValueStore.Slot] = []
    private var fetches: [ValueStore.Slot: Fetch] = [:]
    /// Per slot, the value already at hand (held here, or fetched and verified).
    private var found: [ValueStore.Slot: SignedValue] = [:]
    /// Every list came: the fetches began.
    private var fetching = false

    /// Slots one get follows, descriptors kept per slot, list pages asked per holder, fetches at once.
    static let maximumSlots = 4096
    static let maximumChoices = 8
    static let maximumPages = 64
    static let fetchesInFlight = 16

    init(id: LookupID, key: NodeID, query: ValueQuery, holders: [(Contact, UInt64)], local: [SignedValue], messages: Int) {
        self.id = id
        self.key = key
        self.query = query
        self.holders = holders.map { (contact: $0.0, token: $0.1) }
        for value in local { found[ValueStore.Slot(signer: value.signerID, slot: value.slot)] = value }
        result.messages = messages
    }

    /// Sends the first list requests, or the next fetches; true when the get has ended.
    func advance(send: (Contact, DHTMessage.Body) -> Void) -> Bool {
        if pages.isEmpty {
            for holder in holders {
                pages[holder.contact.id] = 1
                listing[holder.contact.id] = 0
                ask(holder, skip: 0, send)
            }
        }
        guard listing.isEmpty else { return false }
        if !fetching {
            fetching = true
            toFetch = choices.keys.sorted(by: Self.order)
        }
        while fetches.count < Self.fetchesInFlight, !toFetch.isEmpty {
            startFetch(toFetch.removeFirst(), send)
        }
        guard fetches.isEmpty, toFetch.isEmpty else { return false }
        result.values = found.sorted { Self.order($0.key, $1.key) }.map(\.value)
        return true
    }

    private static func order(_ a: ValueStore.Slot, _ b: ValueStore.Slot) -> Bool {
        a.signer != b.signer ? a.signer.lexicographicallyPrecedes(b.signer) : a.slot < b.slot
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
        if skip == 0 { result.listed += 1 }
        for descriptor in descriptors where query.signer.map({ $0 == descriptor.signerID }) ?? true && descriptor.sequence > query.since {
            add(descriptor, from: (holder, token))
        }
        let next = skip + descriptors.count
        if !descriptors.isEmpty, next < total, pages[holder.id, default: 0] < Self.maximumPages {
            pages[holder.id, default: 0] += 1
            listing[holder.id] = next
            ask((holder, token), skip: next, send)
        }
    }

    /// The holder's list did not come (after retries).
    func listFailed(_ holder: NodeID) { listing[holder] = nil }

    private func add(_ descriptor: ValueDescriptor, from holder: (contact: Contact, token: UInt64)) {
        let slot = ValueStore.Slot(signer: descriptor.signerID, slot: descriptor.slot)
        if let held = found[slot], !descriptor.supersedesValue(held) { return }  // what is at hand supersedes it (or is it)
        var list = choices[slot] ?? []
        if list.isEmpty, choices.count >= Self.maximumSlots { return }
        if let index = list.firstIndex(where: { $0.descriptor == descriptor }) {
            if !list[index].holders.contains(where: { $0.contact.id == holder.contact.id }) { list[index].holders.append(holder) }
        } else {
            list.append(Choice(descriptor: descriptor, holders: [holder]))
            list.sort { $0.descriptor.supersedes($1.descriptor) }
            if list.count > Self.maximumChoices { list.removeLast() }
        }
        choices[slot] = list
    }

    /// Fetches the freshest choice of `slot` not tried yet from the next holder that listed it (or
    /// settles the slot on what is at hand).
    private func startFetch(_ slot: ValueStore.Slot, _ send: (Contact, DHTMessage.Body) -> Void) {
        while var list = choices[slot], var choice = list.first {
            if let held = found[slot], held.id == choice.descriptor.id || !choice.descriptor.supersedesValue(held) {
                choices[slot] = nil
                return
            }
            guard !choice.holders.isEmpty else {
                list.removeFirst()
                choices[slot] = list.isEmpty ? nil : list
                result.undelivered += 1
                continue
            }
            let holder = choice.holders.removeFirst()
            list[0] = choice
            choices[slot] = list
            let count = Pieces.count(length: choice.descriptor.length, pieceSize: ValuePart.size)
            fetches[slot] = Fetch(choice: choice, holder: holder.contact, token: holder.token, parts: nil, inFlight: [], next: 0, count: count)
            for _ in 0..<ValuePut.partsInFlight { fetchNext(slot, send) }
            return
        }
        choices[slot] = nil
    }

    private func fetchNext(_ slot: ValueStore.Slot, _ send: (Contact, DHTMessage.Body) -> Void) {
        guard var fetch = fetches[slot], fetch.next < fetch.count else { return }
        fetch.inFlight.insert(fetch.next)
        result.messages += 1
        send(fetch.holder, .valueFetch(token: fetch.token, key: key, id: fetch.choice.descriptor.id, index: fetch.next))
        fetch.next += 1
        fetches[slot] = fetch
    }

    /// The slot whose fetch from `holder` asked for value `valueID`.
    private func fetchingSlot(_ holder: NodeID, _ valueID: [UInt8]) -> ValueStore.Slot? {
        fetches.first { $0.value.holder.id == holder && $0.value.choice.descriptor.id == valueID }?.key
    }

    /// A VALUE_PART from `holder` in answer to the fetch of part `index` of `valueID`; `verify`
    /// checks a whole value (structure, fields, signature).
    func fetched(from holder: Contact, valueID: [UInt8], index: Int, _ body: DHTMessage.Body, verify: ([UInt8]) -> SignedValue?,
                 send: (Contact, DHTMessage.Body) -> Void) {
        guard let slot = fetchingSlot(holder.id, valueID), var fetch = fetches[slot] else { return }
        let descriptor = fetch.choice.descriptor
        guard case .valuePart(.part, let part?) = body, part.id == descriptor.id, part.length == descriptor.length,
              part.index == index else {
            fetchFailed(from: holder.id, valueID: valueID, send: send)
            return
        }
        guard fetch.inFlight.contains(part.index) else { return }  // a part again
        fetch.inFlight.remove(part.index)
        if fetch.parts == nil {
            fetch.parts = try? Reassembly(length: part.length, count: part.count, index: part.index, bytes: part.bytes.count,
                                          maximumLength: SignedValue.maximumWireSize)
        }
        guard var parts = fetch.parts,
              (try? parts.add(index: part.index, length: part.length, count: part.count, bytes: part.bytes)) != nil else {
            fetchFailed(from: holder.id, valueID: valueID, send: send)
            return
        }
        fetch.parts = parts
        guard let wire = parts.message else {
            fetches[slot] = fetch
            fetchNext(slot, send)
            return
        }
        fetches[slot] = nil
        if Sodium.sha256(wire) == descriptor.id, let value = verify(wire), value.key == key.bytes,
           value.signerID == descriptor.signerID, value.slot == descriptor.slot, value.sequence == descriptor.sequence {
            found[slot] = value
            choices[slot] = nil
        } else {
            // Forged: no other holder is asked for these bytes; the next descriptor is.
            result.refused += 1
            if var list = choices[slot] {
                list.removeFirst()
                choices[slot] = list.isEmpty ? nil : list
            }
            if choices[slot] != nil { toFetch.insert(slot, at: 0) }
        }
    }

    /// A fetch from `holder` failed (no answer after retries, not held, a bad token, a bad part):
    /// the next holder of the same value is asked, or the next descriptor.
    func fetchFailed(from holder: NodeID, valueID: [UInt8], send: (Contact, DHTMessage.Body) -> Void) {
        guard let slot = fetchingSlot(holder, valueID) else { return }
        fetches[slot] = nil
        toFetch.insert(slot, at: 0)
    }
}

extension ValueDescriptor {
    /// Whether the value this describes would supersede `value` (same signer and slot assumed).
    func supersedesValue(_ value: SignedValue) -> Bool {
        sequence != value.sequence ? sequence > value.sequence : value.id.lexicographicallyPrecedes(id)
    }
}
