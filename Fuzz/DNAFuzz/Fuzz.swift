// libFuzzer targets for every decoder that reads bytes from the network or from disk (issue 15,
// part 6). One executable, the target named by its first argument:
//
//     dna-fuzz <target> [libFuzzer flags] [corpus dirs]     (targets: dna-fuzz list)
//     dna-fuzz seeds DIR                                    writes state-machine seeds to DIR/<target>/
//
// Built only with DNATRANSPORT_FUZZ=1 and -sanitize=fuzzer,address (see the Makefile's `fuzz`).
// A harness checks the product's own promises (typed errors, bounded state, datagrams within
// 1,200 bytes, round trips); any violation traps, which libFuzzer reports as a crash.
@testable import DNACrypto
@testable import DNADHT
@testable import DNAReliable
@testable import DNATransport
import DNANat
import DNAWire
import Glibc

// MARK: Input helpers

/// Splits a fuzz input into records: control byte, length (2 bytes, big-endian), that many bytes
/// (fewer at the end). The control byte's meaning is the target's.
func records(_ data: [UInt8]) -> [(control: UInt8, bytes: [UInt8])] {
    var out: [(UInt8, [UInt8])] = []
    var at = 0
    while at < data.count, out.count < 64 {
        let control = data[at]
        let length = at + 2 < data.count ? Int(data[at + 1]) << 8 | Int(data[at + 2]) : 0
        let start = min(at + 3, data.count), end = min(start + length, data.count)
        out.append((control, Array(data[start..<end])))
        at = end
    }
    return out
}

/// The inverse of `records`, for seeds.
func encodeRecords(_ list: [(UInt8, [UInt8])]) -> [UInt8] {
    list.flatMap { control, bytes in [control, UInt8(bytes.count >> 8 & 0xFF), UInt8(bytes.count & 0xFF)] + bytes }
}

func check(_ condition: @autoclosure () -> Bool, _ what: @autoclosure () -> String) {
    if !condition() {
        fputs("dna-fuzz: invariant broken: \(what())\n", stderr)
        abort()
    }
}

func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
    (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(at + $1 < bytes.count ? bytes[at + $1] : 0) }
}

// MARK: Fixtures (made once per process, deterministic)

enum Fixture {
    static let alice = try! Identity(name: IdentityName("alice"), seed: [UInt8](repeating: 1, count: 32))
    static let bob = try! Identity(name: IdentityName("bob"), seed: [UInt8](repeating: 2, count: 32))
    static let trafficSecret = [UInt8](repeating: 7, count: 32)
    static let now: UInt64 = 1_000_000
    /// Unix seconds the entry and inbox fixtures are made at.
    static let unix: UInt64 = 1_700_000_000

    /// An initiator waiting for bob's response; each input works on a snapshot of it.
    nonisolated(unsafe) static var initiator: HandshakeInitiator = {
        try! HandshakeInitiator(identity: alice, responderName: bob.name, responderPublicKey: bob.publicKey, now: now,
                                sessionID: 0x0102_0304)
    }()
    /// Bob's datagrams answering `initiator` (a valid message 2), computed once.
    nonisolated(unsafe) static var response: [[UInt8]] = {
        let responder = HandshakeResponder<Int>(identity: bob)
        for datagram in initiator.snapshot().takeDatagrams() { try? responder.receive(datagram, from: 1, now: now) }
        return responder.takeDatagrams().map(\.1)
    }()
    static let inboxKeys = try! InboxKeys(identity: bob)
    static let inboxRecord = try! InboxKeyRecord(identity: bob, keys: inboxKeys, created: unix)

    /// Eight sources: loopback, three of one /24, two other IPv4 networks, two IPv6.
    static let sources: [Endpoint] = [
        "127.0.0.1:4000", "10.1.2.3:5000", "10.1.2.4:5000", "10.1.2.5:6000",
        "192.0.2.9:7000", "198.51.100.1:4567", "[2001:db8::1]:4000", "[2001:db8:1::2]:4000",
    ].map { Endpoint($0)! }

    static func dhtConfiguration() -> DHTConfiguration {
        var configuration = DHTConfiguration()
        configuration.difficulty = 0    // any salt is an id: the fuzzer cannot mine proof of work
        configuration.k = 8
        return configuration
    }
    static let dhtCredential = NodeCredential(salt: [UInt8](repeating: 9, count: 16), difficulty: 0)!
    static let clientCredential = NodeCredential(salt: [UInt8](repeating: 3, count: 16), difficulty: 0)!
    /// Alice's signed entry (for the client's announce) and a sealed message for bob's inbox.
    static let entry: PeerEntry = {
        var entry = PeerEntry(identity: alice.name, nodeID: Array(clientCredential.id.bytes), ipAddress: "10.1.2.3", port: 5000,
                              lastSeen: unix)
        try! entry.sign(with: alice, now: unix)
        return entry
    }()
    static let offline = try! OfflineMessage(sealing: Array("hi bob".utf8), from: alice, to: inboxRecord, now: unix)
    static let server = Fixture.sources[5]

    /// The node each `dht` input talks to: it bootstraps from `server` (and sources[1]) and has an
    /// announce, a FIND_VALUE, a signal and a MAIL_PUT under way, so that answers match its
    /// transactions. The same every time (seeded), so the seeds' answers from `server` fit.
    static func client(now: UInt64) -> DHTNode {
        let node = DHTNode(credential: clientCredential, configuration: dhtConfiguration(), now: now, seed: 3)
        node.setUnixTime(unix * 1000, at: now)
        _ = node.bootstrap([server, sources[1]], now: now)
        _ = node.announce(entry, now: now)
        _ = node.findValue(NodeID.key(of: alice.name), now: now)
        _ = node.signal(NodeID.key(of: bob.name), payload: Array("offer".utf8), now: now)
        node.mail(.put(offline.bytes), to: Contact(id: dhtCredential.id, endpoint: server), operation: 1, now: now)
        return node
    }
}

// MARK: Targets

/// DNA frames: FrameDecoder on any bytes (as `p2p_frame_decode`, and with a limit from the last
/// byte as `p2p_frame_decode_with_limit`); a frame that decodes re-encodes to the same bytes.
func fuzzFrame(_ data: [UInt8]) {
    let limit = Int(data.last ?? 0) * 16
    if let limited = try? FrameDecoder(maximumPayloadLength: limit).decode(data) {
        check(limited.payload.count <= limit, "payload above the decoder's limit")
    }
    let decoder = FrameDecoder()
    guard let frame = try? decoder.decode(data) else { return }
    let again = try? FrameEncoder.encode(type: frame.header.type, sequence: frame.header.sequence,
                                         reserved: frame.header.reserved, payload: frame.payload)
    check(again == data, "frame round trip")
}

/// Wraps `bytes` as the pieces of one DHT message (transaction from `control`), so that mutations
/// reach the message parser past the frame checksum.
func dhtPieces(_ bytes: [UInt8], transaction: UInt64) -> [[UInt8]] {
    let message = Array(bytes.prefix(DHTMessage.maximumSize))
    let count = Pieces.count(length: message.count, pieceSize: DHTDatagram.pieceSize)
    return (0..<count).map { index in
        var payload = (0..<8).map { UInt8(truncatingIfNeeded: transaction >> (56 - 8 * UInt64($0))) }
        payload += [UInt8(index), UInt8(count), UInt8(message.count >> 8), UInt8(message.count & 0xFF)]
        payload += message[Pieces.range(of: index, length: message.count, pieceSize: DHTDatagram.pieceSize)]
        return try! FrameEncoder.encode(type: .dht, sequence: 0, payload: payload)
    }
}

/// `dht-long`: a node that lives across inputs (time moving forward), fed each input's datagrams
/// from 16,384 addresses: state that grows with traffic shows up as growth here (libFuzzer's
/// -rss_limit_mb) and in the checks. Its state outlives each input by design, so libFuzzer's leak
/// check (which then runs a full LeakSanitizer scan after every input) is off for it (Fuzz/run.py).
nonisolated(unsafe) var persistentNode = DHTNode(credential: Fixture.dhtCredential, configuration: Fixture.dhtConfiguration(),
                                                 now: Fixture.now, seed: 2)
nonisolated(unsafe) var persistentClock = Fixture.now
nonisolated(unsafe) var persistentInputs: UInt64 = 0

/// DHT datagram input: records of (control, datagram). Control bits 0-2: the source (of 8; on the
/// long-lived node, bits 0-7 and the input's number pick among 16,384 addresses of 64 networks);
/// bit 3: the bytes are a message, sent as its pieces (bits 4-5 choose which pieces go: all, all
/// but the last, the last only, all twice); bits 6-7: time moves 0, 1 s, 6 s or 31 min (1 min on
/// the long-lived node), and timers fire.
func fuzzDHT(_ data: [UInt8], longLived: Bool) {
    var now = Fixture.now
    let node = Fixture.client(now: now)
    _ = node.takeDatagrams()
    if longLived { persistentInputs += 1 }
    for (control, bytes) in records(data) {
        let step: UInt64 = [0, 1000, 6000, 1_860_000][Int(control >> 6)]
        now += step
        if step > 0 {
            if longLived {
                persistentClock += step == 1_860_000 ? 60_000 : step
                persistentNode.handleTimeout(now: persistentClock)
            } else {
                node.handleTimeout(now: now)
            }
        }
        var datagrams = [bytes]
        if control & 8 != 0 {
            let pieces = dhtPieces(bytes, transaction: UInt64(control) &* 0x9E37_79B9_7F4A_7C15)
            switch control >> 4 & 3 {
            case 0: datagrams = pieces
            case 1: datagrams = Array(pieces.dropLast())
            case 2: datagrams = [pieces.last!]
            default: datagrams = pieces + pieces
            }
        }
        let source = Fixture.sources[Int(control & 7)]
        let wide = Endpoint(address: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, UInt8(truncatingIfNeeded: persistentInputs & 63), control, 1],
                            port: 4000)!
        for datagram in datagrams {
            if longLived {
                persistentNode.receive(datagram, from: wide, now: persistentClock)
            } else {
                node.receive(datagram, from: source, now: now)
            }
        }
    }
    node.handleTimeout(now: now + 1)
    for checked in longLived ? [persistentNode] : [node] {
        for (_, datagram) in checked.takeDatagrams() {
            check(datagram.count <= Pieces.maximumDatagramSize, "DHT datagram of \(datagram.count) bytes")
        }
        _ = checked.takeEvents()
        check(checked.partialMessages <= DHTNode.reassemblyLimit, "\(checked.partialMessages) partial messages")
        check(checked.storedCount <= checked.configuration.maximumEntries, "stored \(checked.storedCount)")
        check(checked.routingTableSize <= 160 * checked.configuration.k, "routing table \(checked.routingTableSize)")
        check(checked.mailCount <= 1_000_000, "mail \(checked.mailCount)")
    }
}

/// The saved DHT state (a file the node reads at start): parse, restore into a node.
func fuzzDHTState(_ data: [UInt8]) {
    guard let state = try? DHTNode.SavedState(bytes: data) else { return }
    check((try? DHTNode.SavedState(bytes: state.bytes)) == state, "saved state round trip")
    let node = DHTNode(credential: Fixture.dhtCredential, configuration: Fixture.dhtConfiguration(), now: Fixture.now, seed: 1)
    node.setUnixTime(Fixture.unix * 1000, at: Fixture.now)
    node.restore(state, now: Fixture.now)
    check(node.storedCount <= state.entries.count, "restored more entries than given")
}

/// The datagrams a handshake record stands for. Control bits 2-3: 0 the bytes are a datagram as
/// they are; 1 a handshake piece's payload, 2 an acknowledgement's payload, framed here (the CRC
/// right, so mutations reach the piece parser); 3 session id (4) | kind (1) | a whole message, cut
/// into its pieces here (mutations reach the message parsers); bit 5 then drops the last piece.
func handshakeDatagrams(control: UInt8, bytes: [UInt8]) -> [[UInt8]] {
    switch control >> 2 & 3 {
    case 0: return [bytes]
    case 1: return [try! FrameEncoder.encode(type: .handshake, sequence: 0, payload: bytes.prefix(4096))]
    case 2: return [try! FrameEncoder.encode(type: .handshakeAck, sequence: 0, payload: bytes.prefix(4096))]
    default:
        guard bytes.count >= 5, let kind = HandshakeKind(rawValue: bytes[4]) else { return [] }
        let pieces = HandshakeDatagram.pieces(of: Array(bytes.dropFirst(5)), session: u32(bytes, 0), kind: kind)
        return control & 0x20 != 0 ? Array(pieces.dropLast()) : pieces
    }
}

/// The payload of a handshake message from its pieces (for seeds): session and kind, then the message.
func handshakeMessage(_ pieces: [[UInt8]]) -> [UInt8] {
    guard let first = pieces.first else { return [] }
    return Array(first[FrameHeader.size..<FrameHeader.size + 5])
        + pieces.flatMap { $0[(FrameHeader.size + HandshakeDatagram.pieceHeaderSize)...] }
}

/// The handshake responder: records of (control, datagram); control bits 0-1 the initiator's
/// address, bits 2-3 and 5 see `handshakeDatagrams`, bits 6-7 time moves 0, 100 ms, 1 s, 11 s and
/// timers fire.
func fuzzResponder(_ data: [UInt8]) {
    let responder = HandshakeResponder<Int>(identity: Fixture.bob)
    var now = Fixture.now
    for (control, bytes) in records(data) {
        let step: UInt64 = [0, 100, 1000, 11_000][Int(control >> 6)]
        if step > 0 {
            now += step
            responder.handleTimeout(now: now)
        }
        for datagram in handshakeDatagrams(control: control, bytes: bytes) {
            try? responder.receive(datagram, from: Int(control & 3), now: now)
        }
    }
    for (_, datagram) in responder.takeDatagrams() {
        check(datagram.count <= Pieces.maximumDatagramSize, "handshake datagram of \(datagram.count) bytes")
    }
    _ = responder.takeSessions()
}

/// The handshake initiator after its initiation went out: records of (control, datagram) from
/// the responder; control bits 2-3 and 5 see `handshakeDatagrams`, bits 6-7: time moves and timers fire.
func fuzzInitiator(_ data: [UInt8]) {
    let initiator = Fixture.initiator.snapshot()
    _ = initiator.takeDatagrams()
    var now = Fixture.now
    for (control, bytes) in records(data) {
        let step: UInt64 = [0, 100, 1000, 11_000][Int(control >> 6)]
        if step > 0 {
            now += step
            try? initiator.handleTimeout(now: now)
        }
        for datagram in handshakeDatagrams(control: control, bytes: bytes) {
            try? initiator.receive(datagram, now: now)
        }
    }
    for datagram in initiator.takeDatagrams() {
        check(datagram.count <= Pieces.maximumDatagramSize, "handshake datagram of \(datagram.count) bytes")
    }
}

/// Sealed records: records of (control, bytes). Control bit 0: the bytes are a frame for the
/// opener as they are; else they are sealed first (type from bits 1-3, sequence skipped ahead by
/// bits 4-7 << 28 when set) and must open to the same plaintext or be refused as a replay/too old.
func fuzzRecord(_ data: [UInt8]) {
    let sealer = try! RecordSealer(trafficSecret: Fixture.trafficSecret, direction: .initiatorToResponder)
    let opener = try! RecordOpener(trafficSecret: Fixture.trafficSecret, direction: .initiatorToResponder)
    for (control, bytes) in records(data) {
        if control & 1 == 1 {
            // A datagram of records sharing it (PROTOCOL.md §3): its ranges cover it, in order, none empty.
            let ranges = bytes.withUnsafeBytes { FrameHeader.frames(in: $0) }
            check(ranges.first?.lowerBound ?? 0 == 0 && ranges.last?.upperBound ?? 0 == bytes.count
                  && zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound } && ranges.allSatisfy { !$0.isEmpty },
                  "frames(in:) does not cover the datagram: \(ranges)")
            for range in ranges { _ = try? opener.open(Array(bytes[range])) }
            if ranges.count > 1 { _ = try? opener.open(bytes) }  // and whole, as a single frame with trailing bytes
            continue
        }
        let types: [MessageType] = [.data, .ack, .ping, .pong, .presence, .close, .dht, .handshake]
        if control >> 4 != 0 { sealer.skip(to: UInt64(control >> 4) << 28) }
        guard let sealed = try? sealer.seal(type: types[Int(control >> 1 & 7)], word0: u32(bytes, 0), plaintext: bytes) else { continue }
        do {
            let opened = try opener.open(sealed)
            check(opened.plaintext == bytes, "sealed record opened to other bytes")
        } catch .replayed {
        } catch .tooOld {
        } catch {
            check(false, "own sealed record refused: \(error)")
        }
    }
}

/// The reliable connection's input: records of (control, header words + payload): control bits
/// 0-3 the frame type (DATA, ACK, PING, PONG, PRESENCE, CLOSE, others), bits 4-5: time moves 0,
/// 10 ms, 300 ms, 5 s and timers fire; bit 6: the application takes what arrived; bit 7: the
/// connection sends a message. The bytes: sequence (4), word 0 (4), word 1 (4), payload.
func fuzzReliable(_ data: [UInt8]) {
    var now = Fixture.now
    let connection = ReliableConnection(now: now)
    // Something in flight, so that ACKs have messages to acknowledge.
    try? connection.send([UInt8](repeating: 0x41, count: 3000), stream: 0, now: now)
    try? connection.send([1, 2, 3], stream: 1, now: now)
    _ = connection.takeFrames()
    let types: [MessageType] = [.data, .ack, .ping, .pong, .presence, .close, .dht, .handshake]
    for (control, bytes) in records(data) {
        let step: UInt64 = [0, 10, 300, 5000][Int(control >> 4 & 3)]
        if step > 0 {
            now += step
            connection.handleTimeout(now: now)
        }
        if control & 0x80 != 0 { try? connection.send(Array(bytes.prefix(64)), stream: UInt32(control & 3), now: now) }
        let header = FrameHeader(type: types[Int(control & 7)], sequence: u32(bytes, 0), payloadLength: UInt32(max(0, bytes.count - 12)),
                                 checksum: 0, reserved: FrameReserved(word0: u32(bytes, 4), word1: u32(bytes, 8)))
        connection.receive(header, payload: bytes.count > 12 ? bytes[12...] : [], now: now)
        for event in connection.takeEvents() {
            if control & 0x40 != 0, case .message(let stream, let message) = event {
                connection.taken(stream: stream, length: message.count, now: now)
            }
        }
        for frame in connection.takeFrames() {
            check(frame.payload.count + RecordSealer.overhead <= Pieces.maximumDatagramSize,
                  "reliable frame of \(frame.payload.count) bytes")
        }
    }
}

/// Connect offers (§7.5): parse; an offer that parses encodes back to bytes that parse to it.
func fuzzOffer(_ data: [UInt8]) {
    guard let offer = try? ConnectOffer(parsing: data) else { return }
    let again = try? ConnectOffer(parsing: offer.bytes)
    check(again == offer, "connect offer round trip")
    _ = offer.reachableCandidates(learnedFrom: Fixture.sources[1])
}

/// Peer entries (§5): parse; an entry that parses has the same wire bytes; then the rules and the signature.
func fuzzPeerEntry(_ data: [UInt8]) {
    guard let entry = try? PeerEntry(wire: data) else { return }
    check(entry.wireBytes == data, "peer entry wire bytes")
    // Fields that pass are what C sees: the address's NUL-terminated copy is all of it.
    if (try? entry.validateFields(now: Fixture.unix)) != nil {
        check(!entry.ipAddress.utf8.contains(0), "an address with a NUL inside passes")
    }
    try? entry.verify(now: Fixture.unix)
}

/// Signed values (§10.1): a value that parses has the same wire bytes; its parts put back together
/// are its bytes; verification refuses or accepts without trapping.
func fuzzValue(_ data: [UInt8]) {
    guard let value = try? SignedValue(wire: data) else { return }
    check(value.wireBytes == data, "value wire bytes")
    let parts = ValuePart.split(data, id: value.id)
    check(parts.flatMap(\.bytes) == data && parts.allSatisfy(\.isConsistent), "value parts")
    try? value.verify(now: Fixture.unix)
}

/// Offline inbox records (§8): the first byte picks the kind: inbox key record, sealed message
/// (parsed, then opened with bob's inbox keys), deletion (verified against bob's key).
func fuzzOffline(_ data: [UInt8]) {
    guard let kind = data.first else { return }
    let bytes = Array(data.dropFirst())
    switch kind % 3 {
    case 0:
        if let record = try? InboxKeyRecord(parsing: bytes) { check(record.bytes == bytes, "inbox key record bytes") }
    case 1:
        if let message = try? OfflineMessage(parsing: bytes, now: Fixture.unix) {
            check(message.bytes == bytes, "offline message bytes")
            _ = try? message.open(with: Fixture.inboxKeys)
        }
    default:
        if let deletion = try? InboxDeletion(parsing: bytes) {
            check(deletion.bytes == bytes, "inbox deletion bytes")
            try? deletion.verify(ownerKey: Fixture.bob.publicKey, now: Fixture.unix)
        }
    }
}

/// Key files (read from disk): decode for "alice".
func fuzzKeyFile(_ data: [UInt8]) {
    _ = try? KeyFile.decode(data, name: Fixture.alice.name, path: "fuzz")
}

let targets: [(name: String, run: ([UInt8]) -> Void)] = [
    ("frame", fuzzFrame), ("dht", { fuzzDHT($0, longLived: false) }), ("dht-long", { fuzzDHT($0, longLived: true) }), ("dht-state", fuzzDHTState), ("handshake-responder", fuzzResponder),
    ("handshake-initiator", fuzzInitiator), ("record", fuzzRecord), ("reliable", fuzzReliable),
    ("offer", fuzzOffer), ("peer-entry", fuzzPeerEntry), ("offline", fuzzOffline), ("keyfile", fuzzKeyFile),
    ("value", fuzzValue),
]
nonisolated(unsafe) var selected: ([UInt8]) -> Void = fuzzFrame

// MARK: Seeds: valid messages the state machines produce

func seeds() -> [String: [[UInt8]]] {
    var out: [String: [[UInt8]]] = [:]
    let now = Fixture.now
    // Frames of every type.
    out["frame"] = MessageType.allCases.map { try! FrameEncoder.encode(type: $0, sequence: 7, payload: Array("hello".utf8)) }
    // The DHT: the client node's requests (as requests from a source) and the server's answers to them.
    let a = Fixture.client(now: now)
    let b = DHTNode(credential: Fixture.dhtCredential, configuration: Fixture.dhtConfiguration(), now: now, seed: 4)
    b.setUnixTime(Fixture.unix * 1000, at: now)
    var dht: [[UInt8]] = [], answers: [(UInt8, [UInt8])] = [], requests: [(UInt8, [UInt8])] = []
    for _ in 0..<4 {
        for (to, datagram) in a.takeDatagrams() where to == Fixture.server {
            requests.append((1, datagram))
            dht.append(encodeRecords([(1, datagram)]))
            b.receive(datagram, from: Fixture.sources[1], now: now)
        }
        for (_, datagram) in b.takeDatagrams() {
            answers.append((5, datagram))
            dht.append(encodeRecords([(5, datagram)]))
            a.receive(datagram, from: Fixture.server, now: now)
        }
    }
    dht.append(encodeRecords(answers))
    dht.append(encodeRecords(requests))
    // Signed values (§10): requests from source 1 and answers from the server, as whole messages
    // (control bit 3: cut into pieces here).
    var value = SignedValue(key: [UInt8](repeating: 0x42, count: 20), signer: Fixture.alice.name, slot: 1, sequence: 2,
                            created: Fixture.unix, lifetime: 600, type: 3, data: [UInt8](repeating: 0x61, count: 20_000))
    try! value.sign(with: Fixture.alice, now: Fixture.unix)
    let valueKey = NodeID(bytes: value.key)!, wire = value.wireBytes, parts = ValuePart.split(wire, id: value.id)
    let salt = a.credential.salt
    func message(_ body: DHTMessage.Body) -> [UInt8] { DHTMessage(transaction: 77, salt: salt, body: body).bytes }
    let valueRequests: [(UInt8, [UInt8])] = parts.map { (9, message(.valuePut(token: 1, key: valueKey, part: $0))) } + [
        (9, message(.valueGet(token: 1, key: valueKey, signer: value.signerID, since: 1, skip: 0))),
        (9, message(.valueFetch(token: 1, key: valueKey, id: value.id, index: 1))),
    ]
    let valueAnswers: [(UInt8, [UInt8])] = [
        (13, message(.valueStored(.more, holderTime: 0))), (13, message(.valueStored(.outOfTime, holderTime: 5))),
        (13, message(.valueList(total: 1, descriptors: [ValueDescriptor(value, id: value.id, length: wire.count)]))),
        (13, message(.valuePart(.part, parts[1]))), (13, message(.valuePart(.notHeld, nil))),
    ]
    dht.append(encodeRecords(valueRequests))
    dht.append(encodeRecords(valueAnswers))
    let entry = Fixture.entry, offline = Fixture.offline
    out["dht"] = dht
    out["dht-long"] = dht
    out["dht-state"] = [b.savedState(now: now).bytes, a.savedState(now: now).bytes]
    // The handshake: the initiation's pieces for the responder, the response for the initiator.
    let initiator = try! HandshakeInitiator(identity: Fixture.alice, responderName: Fixture.bob.name,
                                            responderPublicKey: Fixture.bob.publicKey, now: now, sessionID: 5)
    let initiation = initiator.takeDatagrams()
    let responder = HandshakeResponder<Int>(identity: Fixture.bob)
    for datagram in initiation { try? responder.receive(datagram, from: 0, now: now) }
    let response = responder.takeDatagrams().map(\.1)
    for datagram in response { try? initiator.receive(datagram, now: now) }
    let confirmation = initiator.takeDatagrams()
    out["handshake-responder"] = [
        encodeRecords(initiation.map { (0, $0) }),
        encodeRecords([(12, handshakeMessage(initiation))]),
        encodeRecords(initiation.map { (0, $0) } + confirmation.map { (0, $0) }),
        encodeRecords([(12, handshakeMessage(initiation))] + [(12, handshakeMessage(confirmation.filter { $0[7] == 0x10 }))]),
        encodeRecords(initiation.map { (4, Array($0[FrameHeader.size...])) }),
    ]
    out["handshake-initiator"] = [
        encodeRecords(Fixture.response.map { (0, $0) }),
        encodeRecords([(12, handshakeMessage(Fixture.response.filter { $0[7] == 0x10 }))]),
        encodeRecords(Fixture.response.map { (4, Array($0[FrameHeader.size...])) }),
    ]
    // Records: sealed frames (opened as they are) and plaintexts to seal.
    let sealer = try! RecordSealer(trafficSecret: Fixture.trafficSecret, direction: .initiatorToResponder)
    out["record"] = [
        encodeRecords([(1, try! sealer.seal(type: .data, plaintext: Array("hello".utf8))), (1, try! sealer.seal(type: .ack, plaintext: [1, 2]))]),
        encodeRecords([(0, Array("hello".utf8)), (2, []), (0x10, [9, 9])]),
    ]
    // Reliable: what a peer's connection sends (DATA, ACK, PING, PRESENCE, CLOSE).
    let peer = ReliableConnection(now: now), local = ReliableConnection(now: now)
    try! local.send([UInt8](repeating: 0x41, count: 3000), stream: 0, now: now)
    try! local.send([1, 2, 3], stream: 1, now: now)
    try! peer.send(Array("hello".utf8), stream: 0, now: now)
    try! peer.send([UInt8](repeating: 0x42, count: 2500), stream: 2, now: now)
    peer.sendPresence(.away, now: now)
    for frame in local.takeFrames() { peer.receive(FrameHeader(type: frame.type, sequence: 0, payloadLength: UInt32(frame.payload.count), checksum: 0, reserved: FrameReserved(word0: frame.word0, word1: frame.word1)), payload: frame.payload[...], now: now) }
    peer.solicit(now: now)
    var reliable: [(UInt8, [UInt8])] = []
    let codes: [MessageType: UInt8] = [.data: 0, .ack: 1, .ping: 2, .pong: 3, .presence: 4, .close: 5]
    for frame in peer.takeFrames() + [ReliableConnection.closeFrame(reason: .noEntry)] {
        let words = [UInt32(0), frame.word0, frame.word1].flatMap { w in (0..<4).map { UInt8(truncatingIfNeeded: w >> (24 - 8 * $0)) } }
        reliable.append((codes[frame.type] ?? 6 | 0x40, words + frame.payload))
    }
    out["reliable"] = [encodeRecords(reliable)]
    // Offers of each kind.
    let candidates = [IceCandidate(ip: "192.0.2.1", port: 4000, kind: .local), IceCandidate(ip: "2001:db8::7", port: 9, kind: .relay),
                      IceCandidate(ip: "198.51.100.3", port: 61000, kind: .reflexive)]
    out["offer"] = [ConnectOffer.Kind.offer, .answer, .refusal, .resume, .busy].map {
        ConnectOffer(kind: $0, token: [UInt8](repeating: 5, count: 16), ufrag: "abcd", password: "0123456789abcdefghijkl", candidates: candidates).bytes
    }
    out["peer-entry"] = [entry.wireBytes]
    out["value"] = [wire, { var small = value; small.data = []; small.flags = SignedValue.tombstoneFlag
                            try! small.sign(with: Fixture.alice, now: Fixture.unix); return small.wireBytes }()]
    let deletion = try! InboxDeletion(owner: Fixture.bob, ids: [[UInt8](repeating: 1, count: 16)], now: Fixture.unix)
    out["offline"] = [[0] + Fixture.inboxRecord.bytes, [1] + offline.bytes, [2] + deletion.bytes]
    out["keyfile"] = [KeyFile.encode(Fixture.alice)]
    return out
}

// MARK: Entry points

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selected(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// SwiftPM links executables with `main` = `<module>_main`: this is it. It takes the target name,
/// then hands the remaining arguments to libFuzzer's driver.
@_cdecl("DNAFuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> Int32 {
    let arguments = (0..<Int(argc)).map { String(cString: argv[$0]!) }
    let usage = "usage: dna-fuzz <target> [libFuzzer flags] [corpus dirs]; dna-fuzz seeds DIR\ntargets: "
        + targets.map(\.name).joined(separator: " ") + "\n"
    guard arguments.count >= 2 else { fputs(usage, stderr); return 2 }
    if arguments[1] == "list" {
        print(targets.map(\.name).joined(separator: "\n"))
        return 0
    }
    if arguments[1] == "seeds", arguments.count == 3 {
        for (name, files) in seeds() {
            let directory = arguments[2] + "/" + name
            mkdir(directory, 0o755)
            for (index, bytes) in files.enumerated() {
                guard let file = fopen(directory + "/seed-\(index)", "wb") else { fputs("cannot write \(directory)\n", stderr); return 1 }
                _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
                fclose(file)
            }
            print("\(name): \(files.count) seeds")
        }
        return 0
    }
    guard let target = targets.first(where: { $0.name == arguments[1] }) else { fputs(usage, stderr); return 2 }
    selected = target.run
    // libFuzzer sees argv without the target name.
    var rest: [UnsafeMutablePointer<CChar>?] = [argv[0]] + (2..<Int(argc)).map { argv[$0] } + [nil]
    var count = Int32(rest.count - 1)
    return rest.withUnsafeMutableBufferPointer { buffer in
        var pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
        return LLVMFuzzerRunDriver(&count, &pointer) { data, size in fuzzOne(data, size) }
    }
}
