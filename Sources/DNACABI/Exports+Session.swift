import CDNATransport
import DNACrypto
import DNAWire
import Glibc

// dna_session.h: the handshake and sealed sessions, without I/O.

/// A handshake behind a C handle, with the lock that lets C callers share the handle between threads.
final class CHandshake {
    enum Side {
        case initiator(HandshakeInitiator)
        case responder(HandshakeResponder<String>)
    }

    let lock = PThreadLock()
    let side: Side
    /// Datagrams taken from the core and not yet handed out, with their destination.
    private var outbox: [(String, [UInt8])] = []
    private var sessions: [(String, SecureSession)] = []
    private var initiatorSessionTaken = false

    init(_ side: Side) { self.side = side }

    /// Moves what the core produced into the queues. Called with the lock held.
    func collect() {
        switch side {
        case .initiator(let initiator):
            outbox += initiator.takeDatagrams().map { ("", $0) }
            if !initiatorSessionTaken, let session = initiator.session {
                initiatorSessionTaken = true
                sessions.append(("", session))
            }
        case .responder(let responder):
            outbox += responder.takeDatagrams()
            sessions += responder.takeSessions()
        }
    }

    var nextDatagram: (String, [UInt8])? { outbox.first }
    func dropDatagram() { outbox.removeFirst() }
    var nextSession: (String, SecureSession)? { sessions.first }
    func dropSession() { sessions.removeFirst() }
}

/// A session behind a C handle; the lock serializes sealing and opening.
final class CSession {
    let lock = PThreadLock()
    let session: SecureSession

    init(_ session: SecureSession) { self.session = session }
}

@_cdecl("dna_max_datagram")
public func dna_max_datagram() -> Int { Pieces.maximumDatagramSize }

@_cdecl("dna_session_overhead")
public func dna_session_overhead() -> Int { RecordSealer.overhead }

/// The handshake of the session API: the application sends and opens one record per datagram, so it
/// neither offers nor accepts records sharing a datagram (docs/PROTOCOL.md §3, §4.2).
private let oneRecordPerDatagram: HandshakeConfiguration = {
    var configuration = HandshakeConfiguration()
    configuration.sharesDatagrams = false
    return configuration
}()

@_cdecl("dna_handshake_initiate")
public func dna_handshake_initiate(_ identity: OpaquePointer?, _ peerIdentity: UnsafePointer<CChar>?,
                                   _ peerPublicKey: UnsafePointer<UInt8>?, _ peerPublicKeyLength: Int,
                                   _ now: UInt64) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("dna_handshake_initiate") {
        let local = try Handle<Identity>.borrow(identity, "identity")
        let name = try CArg.identity(peerIdentity)
        let key = Array(try CArg.bytes(peerPublicKey, peerPublicKeyLength, "peer_public_key"))
        guard Identity.isValidPublicKey(key) else { throw InvalidArgument("peer_public_key is not an ML-DSA-65 public key") }
        let initiator = try HandshakeInitiator(identity: local, responderName: name, responderPublicKey: key, now: now,
                                               configuration: oneRecordPerDatagram)
        handle = Handle<CHandshake>.make(CHandshake(.initiator(initiator)))
    }
    return handle
}

@_cdecl("dna_handshake_respond")
public func dna_handshake_respond(_ identity: OpaquePointer?) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("dna_handshake_respond") {
        let local = try Handle<Identity>.borrow(identity, "identity")
        handle = Handle<CHandshake>.make(CHandshake(.responder(HandshakeResponder<String>(identity: local, configuration: oneRecordPerDatagram))))
    }
    return handle
}

@_cdecl("dna_handshake_receive")
public func dna_handshake_receive(_ handshake: OpaquePointer?, _ peer: UnsafePointer<CChar>?,
                                  _ datagram: UnsafePointer<UInt8>?, _ datagramLength: Int, _ now: UInt64) -> Int32 {
    cCall("dna_handshake_receive") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        let bytes = Array(try CArg.bytes(datagram, datagramLength, "datagram"))
        switch object.side {
        case .initiator(let initiator):
            try object.lock.withLock {
                defer { object.collect() }
                try initiator.receive(bytes, now: now)
            }
        case .responder(let responder):
            let address = try CArg.peer(peer)
            try object.lock.withLock {
                defer { object.collect() }
                try responder.receive(bytes, from: address, now: now)
            }
        }
    }
}

@_cdecl("dna_handshake_next_datagram")
public func dna_handshake_next_datagram(_ handshake: OpaquePointer?, _ out: UnsafeMutablePointer<UInt8>?,
                                        _ outCapacity: Int, _ lengthOut: UnsafeMutablePointer<Int>?,
                                        _ peerOut: UnsafeMutablePointer<CChar>?, _ peerCapacity: Int) -> Int32 {
    cCall("dna_handshake_next_datagram") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        let length = try CArg.required(lengthOut, "len_out")
        let buffer = try CArg.mutableBytes(out, outCapacity, "out")
        if case .responder = object.side, peerOut == nil { throw InvalidArgument("peer_out is NULL for a responder") }
        try object.lock.withLock {
            object.collect()
            guard let (peer, datagram) = object.nextDatagram else { throw NothingQueued() }
            length.pointee = datagram.count
            guard buffer.count >= datagram.count else { throw BufferTooSmall(needed: datagram.count) }
            if let peerOut { try CArg.copyString(peer, to: peerOut, peerCapacity) }
            buffer.copyBytes(from: datagram)
            object.dropDatagram()
        }
    }
}

@_cdecl("dna_handshake_handle_timeout")
public func dna_handshake_handle_timeout(_ handshake: OpaquePointer?, _ now: UInt64) -> Int32 {
    cCall("dna_handshake_handle_timeout") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        try object.lock.withLock {
            defer { object.collect() }
            switch object.side {
            case .initiator(let initiator): try initiator.handleTimeout(now: now)
            case .responder(let responder): responder.handleTimeout(now: now)
            }
        }
    }
}

@_cdecl("dna_handshake_next_deadline")
public func dna_handshake_next_deadline(_ handshake: OpaquePointer?, _ deadlineOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dna_handshake_next_deadline") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        let out = try CArg.required(deadlineOut, "deadline_ms_out")
        let deadline: UInt64? = object.lock.withLock {
            switch object.side {
            case .initiator(let initiator): initiator.nextDeadline
            case .responder(let responder): responder.nextDeadline
            }
        }
        guard let deadline else { throw NothingQueued() }
        out.pointee = deadline
    }
}

@_cdecl("dna_handshake_pending")
public func dna_handshake_pending(_ handshake: OpaquePointer?, _ countOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dna_handshake_pending") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        let out = try CArg.required(countOut, "count_out")
        out.pointee = object.lock.withLock {
            switch object.side {
            case .initiator(let initiator): initiator.isFinished || initiator.failure != nil ? 0 : 1
            case .responder(let responder): responder.pendingCount
            }
        }
    }
}

@_cdecl("dna_handshake_take_session")
public func dna_handshake_take_session(_ handshake: OpaquePointer?, _ sessionOut: UnsafeMutablePointer<OpaquePointer?>?,
                                       _ peerOut: UnsafeMutablePointer<CChar>?, _ peerCapacity: Int) -> Int32 {
    cCall("dna_handshake_take_session") {
        let object = try Handle<CHandshake>.borrow(handshake, "handshake")
        let out = try CArg.required(sessionOut, "session_out")
        try object.lock.withLock {
            object.collect()
            guard let (peer, session) = object.nextSession else { throw NothingQueued() }
            if let peerOut { try CArg.copyString(peer, to: peerOut, peerCapacity) }
            out.pointee = Handle<CSession>.make(CSession(session))
            object.dropSession()
        }
    }
}

@_cdecl("dna_handshake_free")
public func dna_handshake_free(_ handshake: OpaquePointer?) {
    Handle<CHandshake>.free(handshake)
}

@_cdecl("dna_session_peer")
public func dna_session_peer(_ session: OpaquePointer?, _ identityOut: UnsafeMutablePointer<CChar>?, _ identityCapacity: Int,
                             _ publicKeyOut: UnsafeMutablePointer<UInt8>?, _ publicKeyCapacity: Int) -> Int32 {
    cCall("dna_session_peer") {
        let object = try Handle<CSession>.borrow(session, "session")
        let key = try CArg.mutableBytes(publicKeyOut, publicKeyCapacity, "public_key_out")
        guard publicKeyOut != nil else { throw InvalidArgument("public_key_out is NULL") }
        guard key.count >= Identity.publicKeySize else { throw BufferTooSmall(needed: Identity.publicKeySize) }
        try CArg.copyString(object.session.peerName.description, to: identityOut, identityCapacity)
        key.copyBytes(from: object.session.peerPublicKey)
    }
}

@_cdecl("dna_session_seal")
public func dna_session_seal(_ session: OpaquePointer?, _ type: UInt16, _ plaintext: UnsafePointer<UInt8>?,
                             _ plaintextLength: Int, _ out: UnsafeMutablePointer<UInt8>?, _ outCapacity: Int,
                             _ lengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dna_session_seal") {
        let object = try Handle<CSession>.borrow(session, "session")
        let source = try CArg.bytes(plaintext, plaintextLength, "plaintext")
        let buffer = try CArg.mutableBytes(out, outCapacity, "out")
        let length = try CArg.required(lengthOut, "len_out")
        try CArg.disjoint(source, buffer)
        guard let messageType = MessageType(rawValue: type) else { throw FrameError.unknownType(type) }
        let needed = source.count + RecordSealer.overhead
        length.pointee = needed
        guard buffer.count >= needed else { throw BufferTooSmall(needed: needed) }
        let frame = try object.lock.withLock { try object.session.sealer.seal(type: messageType, plaintext: source) }
        buffer.copyBytes(from: frame)
    }
}

@_cdecl("dna_session_open")
public func dna_session_open(_ session: OpaquePointer?, _ frame: UnsafePointer<UInt8>?, _ frameLength: Int,
                             _ headerOut: UnsafeMutablePointer<dna_frame_header_t>?, _ out: UnsafeMutablePointer<UInt8>?,
                             _ outCapacity: Int, _ lengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dna_session_open") {
        let object = try Handle<CSession>.borrow(session, "session")
        let bytes = try CArg.bytes(frame, frameLength, "frame")
        let buffer = try CArg.mutableBytes(out, outCapacity, "out")
        let length = try CArg.required(lengthOut, "len_out")
        // Room is checked before opening, so that a frame is never consumed without being delivered.
        let needed = max(0, bytes.count - RecordSealer.overhead)
        length.pointee = needed
        guard buffer.count >= needed else { throw BufferTooSmall(needed: needed) }
        let (header, plaintext) = try object.lock.withLock { try object.session.opener.open(bytes) }
        length.pointee = plaintext.count
        buffer.copyBytes(from: plaintext)
        headerOut?.pointee = dna_frame_header_t(header)
    }
}

@_cdecl("dna_session_free")
public func dna_session_free(_ session: OpaquePointer?) {
    Handle<CSession>.free(session)
}

/// Nothing to hand out yet: DNA_ERR_NOT_FOUND.
struct NothingQueued: Error {}

extension CArg {
    /// A peer address string: 1 to 255 bytes of UTF-8.
    static func peer(_ string: UnsafePointer<CChar>?) throws -> String {
        guard let string else { throw InvalidArgument("peer is NULL") }
        let length = strnlen(string, 256)
        guard length >= 1, length <= 255 else { throw InvalidArgument("peer must be 1 to 255 bytes") }
        guard let value = String(validatingCString: string) else { throw InvalidArgument("peer is not UTF-8") }
        return value
    }
}
