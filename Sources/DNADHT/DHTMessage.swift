import DNACrypto
import DNAWire

/// Why a DHT datagram was dropped.
public enum DHTError: Error, Equatable, Sendable {
    case frame(FrameError)
    case malformed(String)
    /// The sender's salt does not meet the network's work difficulty.
    case badCredential
    case piece(PieceError)
}

/// A contact: a node's id and where it answers.
public struct Contact: Hashable, Sendable {
    public var id: NodeID
    public var endpoint: Endpoint

    public init(id: NodeID, endpoint: Endpoint) {
        self.id = id
        self.endpoint = endpoint
    }

    static let wireSize = NodeID.size + Endpoint.wireSize
}

/// Answers to STORE.
public enum StoreStatus: UInt8, Sendable {
    case stored = 0
    case older = 1       // an entry at least as fresh is held
    case taken = 2       // a live entry of this identity has another key (first come, first served)
    case badToken = 3
    case invalid = 4     // signature or field rules
    case quota = 5       // the sender stored too many entries here
    /// The entry's last_seen is outside the holder's window (expired, or more than 600 s ahead of
    /// its clock). On the wire the holder's Unix time follows (`Body.storedOutOfTime`), so that the
    /// announcer learns how far its clock is off (§5.2).
    case outOfTime = 6
}

/// The answer to VALUE_LISTEN (§10.5).
public enum ValueListenStatus: UInt8, Sendable {
    case listening = 0
    /// This holder keeps no more subscriptions (of this source, or in all).
    case busy = 1
    case badToken = 2
}

/// Why VALUE_PART carries no part.
public enum ValueFetchStatus: UInt8, Sendable {
    case part = 0
    /// No value of that id at that key here (replaced, expired, or never held).
    case notHeld = 1
    case badToken = 2
}

/// Answers to SIGNAL.
public enum SignalStatus: UInt8, Sendable {
    case forwarded = 0   // sent on to the owner of the key
    case unknown = 1     // no live entry for the key here, or its owner's address is not known
    case badToken = 2
    case busy = 3        // too many relays in flight here
}

/// The answer to MAIL_PUT (docs/PROTOCOL.md §8.3).
public enum MailStatus: UInt8, Sendable {
    case stored = 0
    case duplicate = 1   // already held (or an older key record than the one held)
    case notHolder = 2   // this node keeps no inboxes (a bootstrap node)
    case badToken = 3
    case invalid = 4     // structure, signature or times
    case quota = 5       // the sender's share of the inbox, the inbox or the node is full
    case taken = 6       // the inbox belongs to another key (first come, first served)
}

/// The answer to VALUE_PUT (docs/PROTOCOL.md §10.2).
public enum ValueStatus: UInt8, Sendable, CaseIterable {
    case stored = 0
    /// A value of the signer's slot that supersedes this one is held (§10.1).
    case older = 1
    /// The part is kept; the value is not whole yet.
    case more = 2
    case badToken = 3
    /// Structure, signature, key, or the bytes do not hash to the value id.
    case invalid = 4
    /// The signer's, the source's, the key's or the holder's share is full.
    case quota = 5
    /// Created more than 600 s after the holder's clock, or expired by it. On the wire the holder's
    /// Unix time in ms follows, as with STORED (§5.2).
    case outOfTime = 6
    /// Too many values are being uploaded here (by this source, or in all).
    case busy = 7
}

/// One part of a signed value's wire bytes (§10.2): values are up to 71,120 bytes, and a DHT message
/// carries at most 32 pieces, so a value travels in parts of `size` bytes (every part but the last),
/// each its own request. `id` is the value id (SHA-256 of the whole wire bytes).
public struct ValuePart: Equatable, Sendable {
    public var id: [UInt8]
    public var index: Int
    public var count: Int
    /// The whole value's length in bytes.
    public var length: Int
    public var bytes: [UInt8]

    /// Bytes of every part but the last: a VALUE_PUT of one fits 32 pieces of the smallest datagram
    /// size (500 bytes, §9).
    public static let size = 14_000

    /// The parts of `wire` (whose id is `id`).
    static func split(_ wire: [UInt8], id: [UInt8]) -> [ValuePart] {
        let count = Pieces.count(length: wire.count, pieceSize: size)
        return (0..<count).map { index in
            ValuePart(id: id, index: index, count: count, length: wire.count,
                      bytes: Array(wire[Pieces.range(of: index, length: wire.count, pieceSize: size)]))
        }
    }

    /// Whether the numbering is the one `split` makes for a value of `length` bytes.
    var isConsistent: Bool {
        id.count == 32 && length >= 1 && length <= SignedValue.maximumWireSize && count == Pieces.count(length: length, pieceSize: Self.size)
            && index >= 0 && index < count && bytes.count == Pieces.range(of: index, length: length, pieceSize: Self.size).count
    }
}

/// What a holder lists of a value it holds (VALUE_LIST, §10.3): enough for a reader to choose the
/// freshest per signer and slot before fetching any.
public struct ValueDescriptor: Equatable, Sendable {
    /// SHA-256 of the value's wire bytes.
    public var id: [UInt8]
    /// SHA-256 of the signer's public key.
    public var signerID: [UInt8]
    public var slot: UInt32
    public var sequence: UInt64
    public var created: UInt64
    public var lifetime: UInt32
    public var type: UInt16
    public var flags: UInt8
    /// Wire bytes.
    public var length: Int

    static let wireSize = 32 + 32 + 4 + 8 + 8 + 4 + 2 + 1 + 4

    public init(_ value: SignedValue, id: [UInt8], length: Int) {
        self.id = id
        signerID = value.signerID
        slot = value.slot
        sequence = value.sequence
        created = value.created
        lifetime = value.lifetime
        type = value.type
        flags = value.flags
        self.length = length
    }

    init(id: [UInt8], signerID: [UInt8], slot: UInt32, sequence: UInt64, created: UInt64, lifetime: UInt32, type: UInt16,
         flags: UInt8, length: Int) {
        self.id = id
        self.signerID = signerID
        self.slot = slot
        self.sequence = sequence
        self.created = created
        self.lifetime = lifetime
        self.type = type
        self.flags = flags
        self.length = length
    }

    /// The reader's order among descriptors of one signer and slot: higher sequence, then greater id
    /// (`SignedValue.supersedes`).
    func supersedes(_ other: ValueDescriptor) -> Bool {
        sequence != other.sequence ? sequence > other.sequence : other.id.lexicographicallyPrecedes(id)
    }
}

/// One DHT message (docs/PROTOCOL.md §5.1, signaling §5.6).
struct DHTMessage: Equatable {
    enum Body: Equatable {
        case ping
        case pong(observed: Endpoint, token: UInt64)
        case findNode(target: NodeID, token: UInt64)
        case nodes(observed: Endpoint, token: UInt64, held: UInt64?, contacts: [Contact])
        case findValue(key: NodeID, token: UInt64)
        case value(entry: [UInt8])
        case store(token: UInt64, entry: [UInt8])
        case stored(StoreStatus)
        /// STORED with status 6 (`StoreStatus.outOfTime`) and the holder's Unix time in ms.
        case storedOutOfTime(holderTime: UInt64)
        /// Signaling (§5.6): to a holder of `key`, forward `payload` to the key's owner.
        case signal(token: UInt64, key: NodeID, id: UInt64, payload: [UInt8])
        case signalAck(SignalStatus)
        /// Holder to owner (a notice: no answer): a signal from `origin`; answers go back with `relay`.
        case forward(relay: UInt64, origin: Endpoint, key: NodeID, id: UInt64, payload: [UInt8])
        /// Owner to holder (a notice): an answer to the signal the holder forwarded with `relay`.
        case reply(relay: UInt64, payload: [UInt8])
        /// Holder to signaller (a notice): the owner's answer to signal `id`; `from` is the owner's address.
        case deliver(id: UInt64, from: Endpoint, payload: [UInt8])
        /// Offline delivery (§8): store an inbox item (a key record or a sealed message).
        case mailPut(token: UInt64, item: [UInt8])
        case mailStored(MailStatus)
        /// The items of inbox `key` from the `skip`-th on (the key record first).
        case mailFetch(token: UInt64, key: NodeID, skip: Int)
        case mailItems(total: Int, items: [[UInt8]])
        /// The owner's signed request to remove delivered messages.
        case mailDelete(token: UInt64, request: [UInt8])
        case mailDeleted(count: Int)
        /// Signed values (§10): one part of a value to store at `key`.
        case valuePut(token: UInt64, key: NodeID, part: ValuePart)
        /// `holderTime` (Unix ms) is carried with `.outOfTime` only (0 otherwise).
        case valueStored(ValueStatus, holderTime: UInt64)
        /// The values held at `key` (of one signer when `signer` is given; with a sequence above
        /// `since`), from the `skip`-th on.
        case valueGet(token: UInt64, key: NodeID, signer: [UInt8]?, since: UInt64, skip: Int)
        case valueList(total: Int, descriptors: [ValueDescriptor])
        case valueFetch(token: UInt64, key: NodeID, id: [UInt8], index: Int)
        /// A part of the value asked for, or nil with why not (`ValueFetchStatus`).
        case valuePart(ValueFetchStatus, ValuePart?)
        /// Subscribe (§10.5): push what changes at `key` (of one signer when given) to the requester
        /// under `listener`, for the lifetime the answer gives.
        case valueListen(token: UInt64, key: NodeID, signer: [UInt8]?, listener: UInt64)
        /// `lifetime`: seconds the subscription lasts (0 when refused).
        case valueListening(ValueListenStatus, lifetime: Int)
        /// Holder to subscriber (a notice): values stored or replaced at `key`.
        case valueNotify(listener: UInt64, key: NodeID, descriptors: [ValueDescriptor])

        var kind: UInt8 {
            switch self {
            case .ping: 1
            case .pong: 2
            case .findNode: 3
            case .nodes: 4
            case .findValue: 5
            case .value: 6
            case .store: 7
            case .stored, .storedOutOfTime: 8
            case .signal: 9
            case .signalAck: 10
            case .forward: 11
            case .reply: 12
            case .deliver: 13
            case .mailPut: 14
            case .mailStored: 15
            case .mailFetch: 16
            case .mailItems: 17
            case .mailDelete: 18
            case .mailDeleted: 19
            case .valuePut: 20
            case .valueStored: 21
            case .valueGet: 22
            case .valueList: 23
            case .valueFetch: 24
            case .valuePart: 25
            case .valueListen: 26
            case .valueListening: 27
            case .valueNotify: 28
            }
        }

        var isRequest: Bool {
            switch self {
            case .ping, .findNode, .findValue, .store, .signal, .mailPut, .mailFetch, .mailDelete, .valuePut, .valueGet, .valueFetch,
                 .valueListen: true
            case .pong, .nodes, .value, .stored, .storedOutOfTime, .signalAck, .forward, .reply, .deliver, .mailStored, .mailItems, .mailDeleted,
                 .valueStored, .valueList, .valuePart, .valueListening, .valueNotify: false
            }
        }

        /// One-way messages: neither a request nor the answer to one.
        var isNotice: Bool {
            switch self {
            case .forward, .reply, .deliver, .valueNotify: true
            default: false
            }
        }
    }

    var transaction: UInt64
    var salt: [UInt8]
    var body: Body

    /// Requests that can draw a large answer are padded to this size, so that an answer without a
    /// valid token stays within 3x the request (anti-reflection).
    static let paddedRequestSize = 300
    static let maximumContacts = 20
    /// The largest signal payload (a handshake message with ICE candidates fits).
    public static let maximumSignalPayload = 7000
    /// The largest message: a FORWARD of the largest signal payload (a STORE of the largest entry,
    /// 2 + 16 + 8 + 2 + 5700 bytes, is smaller).
    /// The largest inbox item (a sealed offline message; a key record is smaller).
    static let maximumMailItem = OfflineMessage.maximumSize
    /// MAIL_ITEMS carries items up to this many bytes in all (and always at least one).
    static let mailItemsBudget = 24_000

    /// The items' bytes a MAIL_ITEMS answer sent in datagrams of at most `datagramSize` bytes may
    /// carry: at most `mailItemsBudget`, and few enough that the answer is at most 32 pieces (§5.1,
    /// §9): 14,443 bytes at 500-byte datagrams (the largest item, a sealed message of 10,807
    /// bytes, fits alone).
    static func mailItemsBudget(datagramSize: Int) -> Int {
        let message = Pieces.maximumCount * (min(datagramSize, Pieces.maximumDatagramSize) - DHTDatagram.overhead)
        // kind, flags, salt, total (2), count (1), and a 4-byte length before each item
        let framing = 2 + NodeCredential.saltSize + 3 + 4 * maximumMailItems
        return min(mailItemsBudget, message - framing)
    }
    /// The largest message: MAIL_ITEMS (a FORWARD of the largest signal payload and a STORE of the
    /// largest entry are smaller).
    static let maximumSize = 2 + NodeCredential.saltSize + 2 + 1 + mailItemsBudget + 4 * 32 + maximumMailItem
    static let maximumMailItems = 32
    /// VALUE_LIST carries at most this many descriptors (a reader asks again with `skip` for more).
    static let maximumDescriptors = 64

    /// kind (1) | flags (1) | sender salt (16) | body.
    var bytes: [UInt8] {
        var out: [UInt8] = [body.kind, 0] + salt
        func u64(_ v: UInt64) { out += (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
        func u32(_ v: Int) { out += (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
        /// count (1) | descriptors: id (32) | signer id (32) | slot (4) | sequence (8) | created (8)
        /// | lifetime (4) | type (2) | flags (1) | length (4).
        func valueDescriptors(_ descriptors: [ValueDescriptor]) {
            out.append(UInt8(descriptors.count))
            for descriptor in descriptors {
                out += descriptor.id + descriptor.signerID
                u32(Int(descriptor.slot))
                u64(descriptor.sequence)
                u64(descriptor.created)
                u32(Int(descriptor.lifetime))
                out += [UInt8(descriptor.type >> 8), UInt8(descriptor.type & 0xFF), descriptor.flags]
                u32(descriptor.length)
            }
        }
        /// id (32) | index (1) | count (1) | value length (4) | part length (2) | part.
        func valuePart(_ part: ValuePart) {
            out += part.id + [UInt8(part.index), UInt8(part.count)]
            u32(part.length)
            out += [UInt8(part.bytes.count >> 8), UInt8(part.bytes.count & 0xFF)] + part.bytes
        }
        switch body {
        case .ping: break
        case .pong(let observed, let token):
            out += observed.wire
            u64(token)
        case .findNode(let target, let token), .findValue(let target, let token):
            out += target.bytes
            u64(token)
        case .nodes(let observed, let token, let held, let contacts):
            out[1] = held == nil ? 0 : 1
            out += observed.wire
            u64(token)
            if let held { u64(held) }
            out.append(UInt8(contacts.count))
            for contact in contacts { out += contact.id.bytes + contact.endpoint.wire }
        case .value(let entry):
            out += [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry
        case .store(let token, let entry):
            u64(token)
            out += [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry
        case .stored(let status):
            out.append(status.rawValue)
            if status == .outOfTime { u64(0) }  // (the time is given with .storedOutOfTime)
        case .storedOutOfTime(let holderTime):
            out.append(StoreStatus.outOfTime.rawValue)
            u64(holderTime)
        case .signal(let token, let key, let id, let payload):
            u64(token)
            out += key.bytes
            u64(id)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
        case .signalAck(let status):
            out.append(status.rawValue)
        case .forward(let relay, let origin, let key, let id, let payload):
            u64(relay)
            out += origin.wire + key.bytes
            u64(id)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
        case .reply(let relay, let payload):
            u64(relay)
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
        case .deliver(let id, let from, let payload):
            u64(id)
            out += from.wire
            out += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload
        case .mailPut(let token, let item):
            u64(token)
            u32(item.count)
            out += item
        case .mailStored(let status):
            out.append(status.rawValue)
        case .mailFetch(let token, let key, let skip):
            u64(token)
            out += key.bytes + [UInt8(skip >> 8 & 0xFF), UInt8(skip & 0xFF)]
        case .mailItems(let total, let items):
            out += [UInt8(total >> 8 & 0xFF), UInt8(total & 0xFF), UInt8(items.count)]
            for item in items {
                u32(item.count)
                out += item
            }
        case .mailDelete(let token, let request):
            u64(token)
            u32(request.count)
            out += request
        case .mailDeleted(let count):
            out += [UInt8(count >> 8 & 0xFF), UInt8(count & 0xFF)]
        case .valuePut(let token, let key, let part):
            u64(token)
            out += key.bytes
            valuePart(part)
        case .valueStored(let status, let holderTime):
            out.append(status.rawValue)
            if status == .outOfTime { u64(holderTime) }
        case .valueGet(let token, let key, let signer, let since, let skip):
            u64(token)
            out += key.bytes + (signer ?? [UInt8](repeating: 0, count: 32))
            u64(since)
            out += [UInt8(skip >> 8 & 0xFF), UInt8(skip & 0xFF)]
        case .valueList(let total, let descriptors):
            out += [UInt8(total >> 8 & 0xFF), UInt8(total & 0xFF)]
            valueDescriptors(descriptors)
        case .valueListen(let token, let key, let signer, let listener):
            u64(token)
            out += key.bytes + (signer ?? [UInt8](repeating: 0, count: 32))
            u64(listener)
        case .valueListening(let status, let lifetime):
            out += [status.rawValue, UInt8(lifetime >> 8 & 0xFF), UInt8(lifetime & 0xFF)]
        case .valueNotify(let listener, let key, let descriptors):
            u64(listener)
            out += key.bytes
            valueDescriptors(descriptors)
        case .valueFetch(let token, let key, let id, let index):
            u64(token)
            out += key.bytes + id + [UInt8(index)]
        case .valuePart(let status, let part):
            out.append(status.rawValue)
            if let part { valuePart(part) }
        }
        if case .findNode = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        if case .findValue = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        if case .mailFetch = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        if case .valueGet = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        if case .valueFetch = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        if case .valueListen = body, out.count < Self.paddedRequestSize { out += [UInt8](repeating: 0, count: Self.paddedRequestSize - out.count) }
        return out
    }

    init(transaction: UInt64, salt: [UInt8], body: Body) {
        self.transaction = transaction
        self.salt = salt
        self.body = body
    }

    init(parsing bytes: [UInt8], transaction: UInt64) throws(DHTError) {
        var offset = 0
        func take(_ n: Int) throws(DHTError) -> ArraySlice<UInt8> {
            guard n >= 0, bytes.count - offset >= n else { throw .malformed("truncated") }
            defer { offset += n }
            return bytes[offset..<offset + n]
        }
        func u64() throws(DHTError) -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
        func u16() throws(DHTError) -> Int { Int(try take(2).reduce(UInt16(0)) { $0 << 8 | UInt16($1) }) }
        func id() throws(DHTError) -> NodeID {
            guard let id = NodeID(bytes: try take(NodeID.size)) else { throw .malformed("id") }
            return id
        }
        func endpoint() throws(DHTError) -> Endpoint {
            let address = Array(try take(16))
            guard let endpoint = Endpoint(address: address, port: UInt16(try u16())), endpoint.port != 0 else {
                throw .malformed("endpoint")
            }
            return endpoint
        }
        func u32() throws(DHTError) -> Int { Int(try take(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }) }
        func item() throws(DHTError) -> [UInt8] {
            let length = try u32()
            guard length >= 2, length <= Self.maximumMailItem else { throw .malformed("inbox item of \(length) bytes") }
            return Array(try take(length))
        }
        func payload() throws(DHTError) -> [UInt8] {
            let length = try u16()
            guard length <= Self.maximumSignalPayload else { throw .malformed("signal payload of \(length) bytes") }
            return Array(try take(length))
        }
        func valueDescriptors() throws(DHTError) -> [ValueDescriptor] {
            let count = Int(try take(1).first ?? 0)
            guard count <= Self.maximumDescriptors else { throw .malformed("\(count) values") }
            var descriptors: [ValueDescriptor] = []
            for _ in 0..<count {
                let valueID = Array(try take(32)), signer = Array(try take(32))
                let slot = UInt32(try u32()), sequence = try u64(), created = try u64(), lifetime = UInt32(try u32())
                let type = UInt16(try u16()), flags = try take(1).first ?? 0, length = try u32()
                guard length >= 1, length <= SignedValue.maximumWireSize else { throw .malformed("value of \(length) bytes") }
                descriptors.append(ValueDescriptor(id: valueID, signerID: signer, slot: slot, sequence: sequence, created: created,
                                                   lifetime: lifetime, type: type, flags: flags, length: length))
            }
            return descriptors
        }
        func valuePart() throws(DHTError) -> ValuePart {
            let valueID = Array(try take(32))
            let index = Int(try take(1).first ?? 0), count = Int(try take(1).first ?? 0), length = try u32()
            let part = ValuePart(id: valueID, index: index, count: count, length: length, bytes: Array(try take(try u16())))
            guard part.isConsistent else { throw .malformed("value part \(index) of \(count), \(length) bytes") }
            return part
        }
        let kind = try take(1).first ?? 0
        let flags = try take(1).first ?? 0
        salt = Array(try take(NodeCredential.saltSize))
        self.transaction = transaction
        switch kind {
        case 1: body = .ping
        case 2: body = .pong(observed: try endpoint(), token: try u64())
        case 3: body = .findNode(target: try id(), token: try u64())
        case 4:
            let observed = try endpoint(), token = try u64()
            let held = flags & 1 != 0 ? try u64() : nil
            let count = Int(try take(1).first ?? 0)
            guard count <= Self.maximumContacts else { throw .malformed("\(count) contacts") }
            var contacts: [Contact] = []
            for _ in 0..<count { contacts.append(Contact(id: try id(), endpoint: try endpoint())) }
            body = .nodes(observed: observed, token: token, held: held, contacts: contacts)
        case 5: body = .findValue(key: try id(), token: try u64())
        case 6: body = .value(entry: Array(try take(try u16())))
        case 7:
            let token = try u64()
            body = .store(token: token, entry: Array(try take(try u16())))
        case 8:
            guard let status = StoreStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = status == .outOfTime ? .storedOutOfTime(holderTime: try u64()) : .stored(status)
        case 9:
            let token = try u64(), key = try id(), signalID = try u64()
            body = .signal(token: token, key: key, id: signalID, payload: try payload())
        case 10:
            guard let status = SignalStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = .signalAck(status)
        case 11:
            let relay = try u64(), origin = try endpoint(), key = try id(), signalID = try u64()
            body = .forward(relay: relay, origin: origin, key: key, id: signalID, payload: try payload())
        case 12:
            let relay = try u64()
            body = .reply(relay: relay, payload: try payload())
        case 13:
            let signalID = try u64(), from = try endpoint()
            body = .deliver(id: signalID, from: from, payload: try payload())
        case 14:
            let token = try u64()
            body = .mailPut(token: token, item: try item())
        case 15:
            guard let status = MailStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = .mailStored(status)
        case 16:
            let token = try u64(), key = try id()
            body = .mailFetch(token: token, key: key, skip: try u16())
        case 17:
            let total = try u16()
            let count = Int(try take(1).first ?? 0)
            guard count <= Self.maximumMailItems, count <= total else { throw .malformed("\(count) of \(total) items") }
            var items: [[UInt8]] = []
            for _ in 0..<count { items.append(try item()) }
            body = .mailItems(total: total, items: items)
        case 18:
            let token = try u64()
            body = .mailDelete(token: token, request: try item())
        case 19:
            body = .mailDeleted(count: try u16())
        case 20:
            let token = try u64(), key = try id()
            body = .valuePut(token: token, key: key, part: try valuePart())
        case 21:
            guard let status = ValueStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = .valueStored(status, holderTime: status == .outOfTime ? try u64() : 0)
        case 22:
            let token = try u64(), key = try id(), signer = Array(try take(32)), since = try u64()
            body = .valueGet(token: token, key: key, signer: signer.allSatisfy { $0 == 0 } ? nil : signer, since: since, skip: try u16())
        case 23:
            let total = try u16()
            let descriptors = try valueDescriptors()
            guard descriptors.count <= total else { throw .malformed("\(descriptors.count) of \(total) values") }
            body = .valueList(total: total, descriptors: descriptors)
        case 24:
            let token = try u64(), key = try id(), valueID = Array(try take(32))
            body = .valueFetch(token: token, key: key, id: valueID, index: Int(try take(1).first ?? 0))
        case 25:
            guard let status = ValueFetchStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = .valuePart(status, status == .part ? try valuePart() : nil)
        case 26:
            let token = try u64(), key = try id(), signer = Array(try take(32))
            body = .valueListen(token: token, key: key, signer: signer.allSatisfy { $0 == 0 } ? nil : signer, listener: try u64())
        case 27:
            guard let status = ValueListenStatus(rawValue: try take(1).first ?? 0xFF) else { throw .malformed("status") }
            body = .valueListening(status, lifetime: try u16())
        case 28:
            let listener = try u64(), key = try id()
            body = .valueNotify(listener: listener, key: key, descriptors: try valueDescriptors())
        default: throw .malformed("kind \(kind)")
        }
        guard flags & ~(kind == 4 ? 1 : 0) == 0 else { throw .malformed("flags") }
        // Only zero padding may follow (requests are padded).
        guard bytes[offset...].allSatisfy({ $0 == 0 }) else { throw .malformed("trailing bytes") }
    }
}

/// DHT datagrams (frame type 0x0020): payload = transaction id (8) | piece index (1) | piece count (1)
/// | message length (2) | the piece. Header sequence and reserved words 1 and 2 are zero; reserved
/// word 0 is zero, or, in a request, the largest datagram (UDP payload bytes, one of
/// `Pieces.datagramSizes` below the first) the sender takes in answer (docs/PROTOCOL.md §5.1, §9).
/// Every piece but the last has the same size, at most `pieceSize`; a receiver takes any such cut.
enum DHTDatagram {
    static let pieceHeaderSize = 12
    /// The largest piece: a 1,200-byte datagram less the frame header and the piece header.
    static let pieceSize = Pieces.maximumDatagramSize - FrameHeader.size - pieceHeaderSize
    static let decoder = FrameDecoder(maximumPayloadLength: Pieces.maximumDatagramSize - FrameHeader.size)
    /// Bytes of a datagram that are not the message: frame header and piece header.
    static let overhead = FrameHeader.size + pieceHeaderSize

    /// The datagrams of `message`, none longer than `datagramSize` bytes (a size of
    /// `Pieces.datagramSizes`); `answerLimit`, when below `Pieces.maximumDatagramSize`, goes in
    /// reserved word 0 (requests only).
    static func encode(_ message: DHTMessage, datagramSize: Int = Pieces.maximumDatagramSize,
                       answerLimit: Int? = nil) -> [[UInt8]] {
        let bytes = message.bytes
        let pieceSize = max(1, min(datagramSize, Pieces.maximumDatagramSize) - overhead)
        let count = Pieces.count(length: bytes.count, pieceSize: pieceSize)
        let reserved = FrameReserved(word0: answerLimit.map { UInt32($0 < Pieces.maximumDatagramSize ? $0 : 0) } ?? 0)
        return (0..<count).map { index in
            var payload = (0..<8).map { UInt8(truncatingIfNeeded: message.transaction >> (56 - 8 * UInt64($0))) }
            payload += [UInt8(index), UInt8(count), UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)]
            payload += bytes[Pieces.range(of: index, length: bytes.count, pieceSize: pieceSize)]
            return (try? FrameEncoder.encode(type: .dht, sequence: 0, reserved: reserved, payload: payload)) ?? []
        }
    }

    /// Bytes on the wire of a `length`-byte message sent in datagrams of at most `datagramSize`.
    static func wireSize(length: Int, datagramSize: Int) -> Int {
        let pieceSize = max(1, min(datagramSize, Pieces.maximumDatagramSize) - overhead)
        return length + overhead * Pieces.count(length: length, pieceSize: pieceSize)
    }

    struct Piece {
        var transaction: UInt64
        var index: Int
        var count: Int
        var length: Int
        var bytes: ArraySlice<UInt8>
        /// The largest datagram the sender takes in answer, when it said (reserved word 0).
        var answerLimit: Int?
    }

    static func parse(_ datagram: [UInt8]) throws(DHTError) -> Piece {
        let frame: FrameDecoder.Frame
        do { frame = try decoder.decode(datagram) } catch { throw .frame(error) }
        let reserved = frame.header.reserved
        guard frame.header.type == .dht, frame.header.sequence == 0, reserved.word1 == 0, reserved.word2 == 0 else {
            throw .malformed("not a DHT frame")
        }
        let limit = Int(reserved.word0)
        guard limit == 0 || Pieces.datagramSizes.dropFirst().contains(limit) else { throw .malformed("answer limit \(limit)") }
        let payload = Array(frame.payload)
        guard payload.count >= pieceHeaderSize else { throw .malformed("short piece") }
        let transaction = payload[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let index = Int(payload[8]), count = Int(payload[9])
        let length = Int(payload[10]) << 8 | Int(payload[11])
        guard length <= DHTMessage.maximumSize else { throw .piece(.tooLarge(length: length, maximum: DHTMessage.maximumSize)) }
        if case .failure(let error) = Pieces.place(index: index, count: count, length: length, bytes: payload.count - pieceHeaderSize) {
            throw .piece(error)
        }
        return Piece(transaction: transaction, index: index, count: count, length: length, bytes: payload[pieceHeaderSize...],
                     answerLimit: limit == 0 ? nil : limit)
    }
}
