import CDNATransport
import DNANat
import Glibc

// nat_traversal.h: ICE over libnice.

@_cdecl("nat_traversal_init")
public func nat_traversal_init(_ stunServer: UnsafePointer<CChar>?) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("nat_traversal_init") {
        let stun = try CArg.optionalString(stunServer, "stun_server")
        handle = Handle<IceAgent>.make(try IceAgent(stun: stun))
    }
    return handle
}

@_cdecl("nat_set_turn_server")
public func nat_set_turn_server(_ context: OpaquePointer?, _ server: UnsafePointer<CChar>?, _ username: UnsafePointer<CChar>?,
                                _ password: UnsafePointer<CChar>?) -> Int32 {
    cCall("nat_set_turn_server") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        guard let server = try CArg.optionalString(server, "server") else { throw InvalidArgument("server is NULL") }
        let user = try CArg.credential(username, "username", minimum: 1)
        let secret = try CArg.credential(password, "password", minimum: 1)
        try agent.setTurnServer(server, username: user, password: secret)
    }
}

@_cdecl("nat_set_controlling")
public func nat_set_controlling(_ context: OpaquePointer?, _ controlling: Int32) -> Int32 {
    cCall("nat_set_controlling") {
        try Handle<IceAgent>.borrow(context, "ctx").setControlling(controlling != 0)
    }
}

@_cdecl("nat_set_timeout")
public func nat_set_timeout(_ context: OpaquePointer?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall("nat_set_timeout") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        guard (100...600_000).contains(timeoutMilliseconds) else { throw InvalidArgument("timeout_ms is not in 100..600000") }
        agent.timeoutMilliseconds = Int(timeoutMilliseconds)
    }
}

@_cdecl("nat_get_local_credentials")
public func nat_get_local_credentials(_ context: OpaquePointer?, _ ufragOut: UnsafeMutablePointer<CChar>?, _ ufragCapacity: Int,
                                      _ passwordOut: UnsafeMutablePointer<CChar>?, _ passwordCapacity: Int) -> Int32 {
    cCall("nat_get_local_credentials") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        let ufrag = try CArg.required(ufragOut, "ufrag_out")
        let password = try CArg.required(passwordOut, "pwd_out")
        guard let credentials = agent.localCredentials else { throw Closed() }
        try CArg.copyString(credentials.ufrag, to: ufrag, capacity: ufragCapacity)
        try CArg.copyString(credentials.password, to: password, capacity: passwordCapacity)
    }
}

@_cdecl("nat_set_remote_credentials")
public func nat_set_remote_credentials(_ context: OpaquePointer?, _ ufrag: UnsafePointer<CChar>?,
                                       _ password: UnsafePointer<CChar>?) -> Int32 {
    cCall("nat_set_remote_credentials") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        let user = try CArg.credential(ufrag, "ufrag", minimum: 4)
        let secret = try CArg.credential(password, "pwd", minimum: 4)
        try agent.setRemoteCredentials(ufrag: user, password: secret)
    }
}

@_cdecl("nat_gather_candidates")
public func nat_gather_candidates(_ context: OpaquePointer?, _ candidates: UnsafeMutablePointer<ice_candidate_t>?,
                                  _ count: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("nat_gather_candidates") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        let count = try CArg.required(count, "count")
        let capacity = count.pointee
        guard capacity >= 0 else { throw InvalidArgument("count is above SIZE_MAX/2") }
        guard capacity == 0 || candidates != nil else { throw InvalidArgument("candidates is NULL with count \(capacity)") }
        let list = try agent.gather()
        for (index, candidate) in list.prefix(capacity).enumerated() {
            if let candidates { try CandidateLayout.write(candidate, to: candidates + index) }
        }
        count.pointee = list.count
        guard list.count <= capacity else { throw BufferTooSmall(needed: list.count) }
    }
}

@_cdecl("nat_add_remote_candidate")
public func nat_add_remote_candidate(_ context: OpaquePointer?, _ candidate: UnsafePointer<ice_candidate_t>?) -> Int32 {
    cCall("nat_add_remote_candidate") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        guard let candidate else { throw InvalidArgument("candidate is NULL") }
        try agent.addRemoteCandidate(try CandidateLayout.read(candidate))
    }
}

@_cdecl("nat_establish_connection")
public func nat_establish_connection(_ context: OpaquePointer?, _ fdOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    cCall("nat_establish_connection") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        let out = try CArg.required(fdOut, "socket_fd_out")
        out.pointee = try agent.establish()
    }
}

@_cdecl("nat_get_selected_pair")
public func nat_get_selected_pair(_ context: OpaquePointer?, _ local: UnsafeMutablePointer<ice_candidate_t>?,
                                  _ remote: UnsafeMutablePointer<ice_candidate_t>?) -> Int32 {
    cCall("nat_get_selected_pair") {
        let agent = try Handle<IceAgent>.borrow(context, "ctx")
        let localOut = try CArg.required(local, "local")
        let remoteOut = try CArg.required(remote, "remote")
        guard let pair = agent.selectedPair else { throw NothingQueued() }
        try CandidateLayout.write(pair.local, to: localOut)
        try CandidateLayout.write(pair.remote, to: remoteOut)
    }
}

@_cdecl("nat_traversal_free")
public func nat_traversal_free(_ context: OpaquePointer?) {
    if let agent = try? Handle<IceAgent>.borrow(context, "ctx") { agent.close() }
    Handle<IceAgent>.free(context)
}

extension CArg {
    /// A NUL-terminated printable-ASCII string of minimum...256 bytes.
    static func credential(_ string: UnsafePointer<CChar>?, _ name: StaticString, minimum: Int) throws -> String {
        guard let string else { throw InvalidArgument("\(name) is NULL") }
        let length = strnlen(string, 257)
        guard length >= minimum, length <= 256 else { throw InvalidArgument("\(name) is not \(minimum)..256 bytes") }
        let bytes = UnsafeRawBufferPointer(start: string, count: length)
        guard bytes.allSatisfy({ (0x21...0x7E).contains($0) }) else { throw InvalidArgument("\(name) is not printable ASCII") }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Copies text and a NUL into capacity bytes at out.
    static func copyString(_ text: String, to out: UnsafeMutablePointer<CChar>, capacity: Int) throws {
        let bytes = Array(text.utf8)
        guard capacity > bytes.count else { throw BufferTooSmall(needed: bytes.count + 1) }
        for (index, byte) in bytes.enumerated() { out[index] = CChar(bitPattern: byte) }
        out[bytes.count] = 0
    }
}

/// ice_candidate_t <-> IceCandidate. The seed's anonymous enum field is read and written as the C int it is.
enum CandidateLayout {
    static let ipSize = 46

    static func read(_ pointer: UnsafePointer<ice_candidate_t>) throws -> IceCandidate {
        let raw = UnsafeRawPointer(pointer)
        let ipBytes = UnsafeRawBufferPointer(start: raw, count: ipSize)
        guard let end = ipBytes.firstIndex(of: 0) else { throw InvalidArgument("candidate ip is not NUL-terminated") }
        let ip = String(decoding: ipBytes[..<end], as: UTF8.self)
        guard let offset = MemoryLayout<ice_candidate_t>.offset(of: \ice_candidate_t.type) else { throw InvalidArgument("layout") }
        let typeValue = raw.load(fromByteOffset: offset, as: Int32.self)
        guard let kind = IceCandidate.Kind(rawValue: typeValue) else { throw InvalidArgument("candidate type \(typeValue) is unknown") }
        let port = pointer.pointee.port
        guard port != 0 else { throw InvalidArgument("candidate port is 0") }
        return IceCandidate(ip: ip, port: port, kind: kind)
    }

    static func write(_ candidate: IceCandidate, to pointer: UnsafeMutablePointer<ice_candidate_t>) throws {
        let raw = UnsafeMutableRawPointer(pointer)
        let bytes = Array(candidate.ip.utf8)
        guard bytes.count < ipSize else { throw InvalidArgument("address too long") }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: ipSize)
        raw.copyMemory(from: bytes, byteCount: bytes.count)
        pointer.pointee.port = candidate.port
        guard let offset = MemoryLayout<ice_candidate_t>.offset(of: \ice_candidate_t.type) else { throw InvalidArgument("layout") }
        raw.storeBytes(of: candidate.kind.rawValue, toByteOffset: offset, as: Int32.self)
    }
}
