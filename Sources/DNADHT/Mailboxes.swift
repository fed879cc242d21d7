import DNACrypto

/// What a driver asks an inbox holder (§8.3).
public enum MailRequest: Sendable {
    case put([UInt8])
    case fetch(key: NodeID, skip: Int)
    case delete([UInt8])
}

/// A holder's answer to a MailRequest.
public enum MailAnswer: Sendable, Equatable {
    case status(MailStatus)
    case items(total: Int, items: [[UInt8]])
    case deleted(Int)
}

/// A holder's inboxes (docs/PROTOCOL.md §8.3): per inbox key, the owner's key record and the sealed
/// messages waiting for it, with the quotas that keep one sender, one inbox or the whole store bounded.
struct Mailboxes {
    struct Message {
        var id: [UInt8]
        var sender: [UInt8]   // SHA-256 of the sender's public key (the quota's unit)
        var expires: UInt64   // Unix s
        var wire: [UInt8]
        /// When a MAIL_PUT of it last came (or this holder republished it), Unix ms.
        var storedAt: UInt64
    }

    struct Inbox {
        var record: InboxKeyRecord?
        var recordWire: [UInt8]?
        var recordStoredAt: UInt64 = 0
        var messages: [Message] = []
        /// Ids the owner deleted, until the longest lifetime has passed (Unix s): a copy coming back
        /// (a holder that missed the deletion republishing it) is not stored again.
        var deleted: [[UInt8]: UInt64] = [:]
        var isEmpty: Bool { record == nil && messages.isEmpty && deleted.isEmpty }
    }

    /// Deleted ids kept per inbox; each counts this many bytes against `maximumBytes`.
    static let maximumDeleted = 4096
    static let deletedIDCost = 32

    var perSender: Int
    var perInbox: Int
    var maximumBytes: Int
    private(set) var inboxes: [NodeID: Inbox] = [:]
    private(set) var bytes = 0

    init(perSender: Int, perInbox: Int, maximumBytes: Int) {
        self.perSender = perSender
        self.perInbox = perInbox
        self.maximumBytes = maximumBytes
    }

    var messageCount: Int { inboxes.values.reduce(0) { $0 + $1.messages.count } }

    /// A MAIL_PUT's item that passed `validate`, with its inbox key.
    enum Item {
        case record(InboxKeyRecord, key: NodeID)
        case message(OfflineMessage, key: NodeID)

        /// The inbox key the item belongs to.
        var key: NodeID {
            switch self {
            case .record(_, let key), .message(_, let key): key
            }
        }
    }

    /// MAIL_PUT: a key record (only its owner's key may replace it, and only with a newer one) or a
    /// sealed message (checked: structure, signature, times; deduplicated by id).
    /// `now`: monotonic ms (when it was stored, for republishing); `unix`: Unix ms (lifetimes).
    /// The node's own put: an item held already counts as republished now.
    mutating func put(_ item: [UInt8], now: UInt64, unix: UInt64) -> MailStatus {
        guard let checked = Self.validate(item, unix: unix) else { return .invalid }
        return store(checked, wire: item, postponesRepublish: true, now: now)
    }

    /// A MAIL_PUT's item checked on its own: a key record (structure, not created in the future)
    /// or a sealed message (structure, signature, times); nil when invalid. `unix`: Unix ms.
    static func validate(_ item: [UInt8], unix: UInt64) -> Item? {
        let seconds = unix / 1000
        guard item.count >= 2 else { return nil }
        if item[1] == InboxKeyRecord.kind {
            guard let record = try? InboxKeyRecord(parsing: item), record.created <= seconds + Offline.skew,
                  let key = NodeID(bytes: record.inboxKey[...]) else { return nil }
            return .record(record, key: key)
        }
        guard let message = try? OfflineMessage(parsing: item, now: seconds),
              let key = NodeID(bytes: message.inboxKey[...]) else { return nil }
        return .message(message, key: key)
    }

    /// Stores a valid item (`wire`) against what its inbox holds: a key record replaces the held one
    /// only with the same owner key and a newer creation time; a message is deduplicated by id (and
    /// refused once deleted); quotas per inbox, per sender and in bytes. `now`: monotonic ms.
    /// `postponesRepublish`: whether an item held already, put again, counts as republished now
    /// (`RecordRequester.isFellowHolder`).
    mutating func store(_ checked: Item, wire item: [UInt8], postponesRepublish: @autoclosure () -> Bool, now: UInt64) -> MailStatus {
        switch checked {
        case .record(let record, let key):
            var inbox = inboxes[key] ?? Inbox()
            if let held = inbox.record {
                guard held.ownerKey == record.ownerKey else { return .taken }
                guard record.created > held.created else {
                    if record.created == held.created, postponesRepublish() {  // the same record again: another holder has it fresh
                        inbox.recordStoredAt = now
                        inboxes[key] = inbox
                    }
                    return .duplicate
                }
            }
            guard bytes + item.count - (inbox.recordWire?.count ?? 0) <= maximumBytes else { return .quota }
            bytes += item.count - (inbox.recordWire?.count ?? 0)
            inbox.record = record
            inbox.recordWire = item
            inbox.recordStoredAt = now
            inboxes[key] = inbox
            return .stored
        case .message(let message, let key):
            var inbox = inboxes[key] ?? Inbox()
            if inbox.deleted[message.id] != nil { return .duplicate }
            if let index = inbox.messages.firstIndex(where: { $0.id == message.id }) {
                if postponesRepublish() { inbox.messages[index].storedAt = now }
                inboxes[key] = inbox
                return .duplicate
            }
            let sender = Sodium.sha256(message.senderKey)
            guard inbox.messages.count < perInbox, inbox.messages.filter({ $0.sender == sender }).count < perSender,
                  bytes + item.count <= maximumBytes else { return .quota }
            inbox.messages.append(Message(id: message.id, sender: sender, expires: message.expires, wire: item, storedAt: now))
            bytes += item.count
            inboxes[key] = inbox
            return .stored
        }
    }

    /// MAIL_FETCH: the items from the `skip`-th (record first, then messages in arrival order), as
    /// many as fit `budget` bytes (at least one), and how many there are in all.
    func items(of key: NodeID, skip: Int, budget: Int, unix: UInt64) -> (total: Int, items: [[UInt8]]) {
        guard let inbox = inboxes[key] else { return (0, []) }
        let all = (inbox.recordWire.map { [$0] } ?? []) + inbox.messages.filter { $0.expires > unix / 1000 }.map(\.wire)
        var out: [[UInt8]] = []
        var used = 0
        for item in all.dropFirst(skip) {
            guard out.isEmpty || used + item.count <= budget, out.count < DHTMessage.maximumMailItems else { break }
            out.append(item)
            used += item.count
        }
        return (min(all.count, 0xFFFF), out)
    }

    /// MAIL_DELETE: removes the listed messages when the request is signed by the inbox's owner (the
    /// key of the record held). Returns how many went, nil when refused.
    mutating func delete(_ request: [UInt8], unix now: UInt64) -> Int? {
        guard let deletion = try? InboxDeletion(parsing: request), let key = NodeID(bytes: deletion.inboxKey[...]),
              var inbox = inboxes[key], let owner = inbox.record?.ownerKey,
              (try? deletion.verify(ownerKey: owner, now: now / 1000)) != nil else { return nil }
        let before = inbox.messages.count
        inbox.messages.removeAll { message in
            guard deletion.ids.contains(message.id) else { return false }
            bytes -= message.wire.count
            return true
        }
        let until = now / 1000 + Offline.maximumLifetime + Offline.skew
        for id in deletion.ids where inbox.deleted[id] == nil && inbox.deleted.count < Self.maximumDeleted
            && bytes + Self.deletedIDCost <= maximumBytes {
            inbox.deleted[id] = until
            bytes += Self.deletedIDCost
        }
        inboxes[key] = inbox
        return before - inbox.messages.count
    }

    /// What this holder should store again on the nodes now closest to each inbox key (Kademlia's
    /// republishing, §2.5 of the paper): the items no MAIL_PUT brought for `interval` ms (a put
    /// from another holder means that one republished them), at most `limit` per inbox, the record
    /// first. They count as stored now.
    mutating func dueForRepublishing(now: UInt64, unix: UInt64, interval: UInt64, limit: Int) -> [(key: NodeID, items: [[UInt8]])] {
        var due: [(key: NodeID, items: [[UInt8]])] = []
        for (key, var inbox) in inboxes {
            var items: [[UInt8]] = []
            if let wire = inbox.recordWire, inbox.recordStoredAt + interval <= now {
                items.append(wire)
                inbox.recordStoredAt = now
            }
            for index in inbox.messages.indices where items.count < limit {
                let message = inbox.messages[index]
                guard message.storedAt + interval <= now, message.expires > unix / 1000 else { continue }
                items.append(message.wire)
                inbox.messages[index].storedAt = now
            }
            guard !items.isEmpty else { continue }
            inboxes[key] = inbox
            due.append((key, items))
        }
        // Keys in order: the lookups start alike in every process (a dictionary's order follows its hash seed).
        return due.sorted { $0.key < $1.key }
    }

    /// Drops expired messages, and key records not renewed within the longest message lifetime.
    mutating func sweep(unix: UInt64) {
        let seconds = unix / 1000
        for (key, var inbox) in inboxes {
            inbox.messages.removeAll { message in
                guard message.expires <= seconds else { return false }
                bytes -= message.wire.count
                return true
            }
            let kept = inbox.deleted.filter { $0.value > seconds }
            bytes -= (inbox.deleted.count - kept.count) * Self.deletedIDCost
            inbox.deleted = kept
            if let record = inbox.record, record.created + Offline.maximumLifetime + Offline.skew < seconds {
                bytes -= inbox.recordWire?.count ?? 0
                inbox.record = nil
                inbox.recordWire = nil
            }
            inboxes[key] = inbox.isEmpty ? nil : inbox
        }
    }
}

/// A holder's inboxes as a record kind (docs/PROTOCOL.md §8.3): MAIL_PUT, MAIL_FETCH and
/// MAIL_DELETE from other nodes, the driver's own requests (`local`), expiry and hourly
/// republishing. `mailboxes` keeps the items and their rules; this adds the token check and
/// whether this node keeps inboxes at all (bootstrap nodes do not). Republishing is monotonic ms,
/// lifetimes Unix ms.
struct MailStore: RecordStore {
    private(set) var mailboxes: Mailboxes
    /// Whether this node keeps inboxes for others (`DHTConfiguration.storesMail`).
    let isHolder: Bool
    /// Items no MAIL_PUT brought for this long (ms) are stored again, at most `republishLimit` per inbox.
    let republishInterval: UInt64
    let republishLimit: Int

    init(configuration: DHTConfiguration) {
        mailboxes = Mailboxes(perSender: configuration.mailPerSender, perInbox: configuration.mailPerInbox,
                              maximumBytes: configuration.mailBytes)
        isHolder = configuration.storesMail
        republishInterval = configuration.mailRepublishInterval
        republishLimit = configuration.mailRepublishLimit
    }

    /// Inbox items held here (key records and messages).
    var count: Int { mailboxes.messageCount }

    /// A request of the driver's, answered from this node's own inboxes.
    mutating func local(_ request: MailRequest, at time: RecordTime) -> MailAnswer {
        switch request {
        case .put(let item): return .status(mailboxes.put(item, now: time.now, unix: time.unix))
        case .fetch(let key, let skip):
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: DHTMessage.mailItemsBudget, unix: time.unix)
            return .items(total: total, items: items)
        case .delete(let deletion): return mailboxes.delete(deletion, unix: time.unix).map { .deleted($0) } ?? .status(.invalid)
        }
    }

    /// A key record or a sealed message, checked on its own (`Mailboxes.validate`).
    func validate(_ wire: [UInt8], at time: RecordTime) -> Validated<Mailboxes.Item, MailStatus> {
        guard let checked = Mailboxes.validate(wire, unix: time.unix) else { return .refused(.invalid) }
        return .valid(checked)
    }

    /// Stores it in its inbox by the inbox's rules (`Mailboxes.store`).
    mutating func store(_ checked: Mailboxes.Item, wire: [UInt8], from requester: RecordRequester, at time: RecordTime,
                        statistics: inout DHTStatistics) -> MailStatus {
        mailboxes.store(checked, wire: wire, postponesRepublish: requester.isFellowHolder(checked.key), now: time.now)
    }

    /// MAIL_PUT (token, then `validate`, then `store`), MAIL_FETCH, MAIL_DELETE.
    mutating func answer(_ request: DHTMessage.Body, from requester: RecordRequester, at time: RecordTime,
                         statistics: inout DHTStatistics) -> RecordAnswer? {
        switch request {
        case .mailPut(let presented, let item):
            guard isHolder else { return .body(.mailStored(.notHolder)) }
            guard requester.tokens.isValid(presented, for: requester.source) else { return .body(.mailStored(.badToken)) }
            switch validate(item, at: time) {
            case .refused(let status): return .body(.mailStored(status))
            case .valid(let checked):
                return .body(.mailStored(store(checked, wire: item, from: requester, at: time, statistics: &statistics)))
            }
        case .mailFetch(let presented, let key, let skip):
            guard isHolder else { return .body(.mailStored(.notHolder)) }
            guard requester.tokens.isValid(presented, for: requester.source) else { return .body(.mailStored(.badToken)) }
            let budget = DHTMessage.mailItemsBudget(datagramSize: requester.datagramSize)
            let (total, items) = mailboxes.items(of: key, skip: skip, budget: budget, unix: time.unix)
            return .body(.mailItems(total: total, items: items))
        case .mailDelete(let presented, let request):
            guard isHolder else { return .body(.mailStored(.notHolder)) }
            guard requester.tokens.isValid(presented, for: requester.source) else { return .body(.mailStored(.badToken)) }
            guard let count = mailboxes.delete(request, unix: time.unix) else { return .body(.mailStored(.invalid)) }
            return .body(.mailDeleted(count: count))
        default:
            return nil
        }
    }

    /// Expired messages and stale key records go (every 5 s).
    mutating func expire(at time: RecordTime) { mailboxes.sweep(unix: time.unix) }

    /// Inbox items likewise, hourly: to the k nodes now closest to the inbox key (§8.3).
    mutating func republish(at time: RecordTime) -> [(key: NodeID, lookup: Lookup.Kind)] {
        guard isHolder else { return [] }
        return mailboxes.dueForRepublishing(now: time.now, unix: time.unix, interval: republishInterval, limit: republishLimit)
            .map { ($0.key, .republishMail($0.items)) }
    }
}
