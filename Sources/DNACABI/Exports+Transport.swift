import CDNATransport
import DNACrypto
import DNADHT
import DNANet
import DNAReliable
import DNATransport
import Glibc

// network_transport.h: the transport context.

extension DNAErrorCode {
    init(_ error: TransportNode.Failure) {
        switch error {
        case .peerOffline: self = .peerOffline
        case .unreachable: self = .unreachable
        case .timeout: self = .timeout
        case .closed: self = .closed
        case .unknownConnection: self = .notFound
        case .tooLarge: self = .tooLarge
        case .nameTooLong, .bufferTooSmall: self = .bufferTooSmall
        case .invalid: self = .invalidArgument
        case .io: self = .io
        case .nameTaken: self = .nameTaken
        case .refused: self = .refused
        }
    }
}

/// malloc failed.
struct OutOfMemory: Error {}

/// transport_config_t plus the DNA_* environment -> TransportConfiguration.
enum TransportSettings {
    static func environment(_ name: String) throws -> String? {
        guard let value = getenv(name) else { return nil }
        guard let text = String(validatingCString: value) else { throw InvalidArgument("$\(name) is not UTF-8") }
        return text.isEmpty ? nil : text
    }

    static func endpoints(_ list: [String], _ what: String) throws -> [Endpoint] {
        var out: [Endpoint] = []
        for item in list {
            let resolved = resolve(String(item.filter { $0 != " " }))
            guard let first = resolved.first else { throw InvalidArgument("\(what): \(item) is not a resolvable host:port") }
            out.append(first)
        }
        return out
    }

    static func make(_ config: UnsafePointer<transport_config_t>?) throws -> TransportConfiguration {
        var configuration = TransportConfiguration()
        let c = config?.pointee
        configuration.dataDirectory = try CArg.optionalString(c?.data_dir, "data_dir") ?? environment("DNA_HOME")
        if let nodes = c?.bootstrap_nodes {
            var list: [String] = []
            var index = 0
            while let node = nodes[index] {
                guard index < 1024 else { throw InvalidArgument("bootstrap_nodes has no NULL within 1024 entries") }
                guard let text = String(validatingCString: node) else { throw InvalidArgument("a bootstrap node is not UTF-8") }
                list.append(text)
                index += 1
            }
            configuration.bootstrap = try endpoints(list, "bootstrap_nodes")
        } else if let text = try environment("DNA_BOOTSTRAP") {
            configuration.bootstrap = try endpoints(text.split(separator: ",").map(String.init), "$DNA_BOOTSTRAP")
        }
        configuration.stunServer = try CArg.optionalString(c?.stun_server, "stun_server") ?? environment("DNA_STUN_SERVER")
        configuration.turnServer = try CArg.optionalString(c?.turn_server, "turn_server") ?? environment("DNA_TURN_SERVER")
        configuration.turnUsername = try CArg.optionalString(c?.turn_username, "turn_username") ?? environment("DNA_TURN_USER")
        configuration.turnPassword = try CArg.optionalString(c?.turn_password, "turn_password") ?? environment("DNA_TURN_PASSWORD")
        for (server, what) in [(configuration.stunServer, "STUN server"), (configuration.turnServer, "TURN server")] {
            if let server, resolve(server).isEmpty { throw InvalidArgument("\(what) \(server) is not a resolvable host:port") }
        }
        if configuration.turnServer != nil, configuration.turnUsername == nil || configuration.turnPassword == nil {
            throw InvalidArgument("a TURN server needs a username and a password")
        }
        configuration.bindHost = try CArg.optionalString(c?.bind_ip, "bind_ip") ?? environment("DNA_BIND")
        if let host = configuration.bindHost, Endpoint(host: host, port: 1) == nil {
            throw InvalidArgument("bind address \(host) is not an IPv4 or IPv6 address")
        }
        if let port = c?.port, port != 0 {
            configuration.port = port
        } else if let text = try environment("DNA_PORT") {
            guard let port = UInt16(text) else { throw InvalidArgument("$DNA_PORT is not a port number") }
            configuration.port = port
        }
        if let c {
            guard c.connect_timeout_ms >= 0, c.send_timeout_ms >= 0, c.idle_timeout_ms >= 0, c.resume_window_ms >= 0 else {
                throw InvalidArgument("a timeout is negative")
            }
            configuration.idleTimeout = UInt64(c.idle_timeout_ms)
            if c.resume_window_ms > 0 { configuration.resumeWindow = UInt64(c.resume_window_ms) }
            if c.connect_timeout_ms > 0 { configuration.connectTimeout = Int(c.connect_timeout_ms) }
            if c.send_timeout_ms > 0 { configuration.sendTimeout = Int(c.send_timeout_ms) }
            if c.max_message_size > 0 {
                guard c.max_message_size <= 1 << 30 else { throw InvalidArgument("max_message_size is above 1 GiB") }
                configuration.reliable.maximumMessageSize = Int(c.max_message_size)
                configuration.reliable.receiveBuffer = max(configuration.reliable.receiveBuffer, 2 * Int(c.max_message_size))
                configuration.reliable.maximumQueuedBytes = max(configuration.reliable.maximumQueuedBytes, 2 * Int(c.max_message_size))
            }
        }
        return configuration
    }
}

private func startTransport(_ function: StaticString, _ identity: UnsafePointer<CChar>?,
                            _ config: UnsafePointer<transport_config_t>?) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall(function) {
        let name = try CArg.identity(identity)
        let configuration = try TransportSettings.make(config)
        let key = try IdentityStore(dataDirectory: configuration.dataDirectory).load(name, create: true)
        let node = try TransportNode(identity: key, configuration: configuration, log: logLine)
        handle = Handle<TransportNode>.make(node)
    }
    return handle
}

@_cdecl("transport_init")
public func transport_init(_ identity: UnsafePointer<CChar>?) -> OpaquePointer? {
    startTransport("transport_init", identity, nil)
}

@_cdecl("transport_init_with_config")
public func transport_init_with_config(_ identity: UnsafePointer<CChar>?, _ config: UnsafePointer<transport_config_t>?) -> OpaquePointer? {
    startTransport("transport_init_with_config", identity, config)
}

@_cdecl("transport_connect")
public func transport_connect(_ context: OpaquePointer?, _ peerIdentity: UnsafePointer<CChar>?,
                              _ connectionIDOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    cCall("transport_connect") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let peer = try CArg.identity(peerIdentity)
        let out = try CArg.required(connectionIDOut, "connection_id_out")
        out.pointee = try node.connect(peer)
    }
}

@_cdecl("transport_accept")
public func transport_accept(_ context: OpaquePointer?, _ connectionIDOut: UnsafeMutablePointer<Int32>?,
                             _ peerIdentityOut: UnsafeMutablePointer<CChar>?, _ peerIdentityCapacity: Int,
                             _ timeoutMilliseconds: Int32) -> Int32 {
    cCall("transport_accept") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let out = try CArg.required(connectionIDOut, "connection_id_out")
        let name = try CArg.required(peerIdentityOut, "peer_identity_out")
        guard peerIdentityCapacity > 0 else { throw InvalidArgument("peer_identity_cap is 0 or above SIZE_MAX/2") }
        let (id, peer) = try node.accept(timeout: Int(timeoutMilliseconds)) { $0.utf8.count < peerIdentityCapacity }
        try CArg.copyString(peer.description, to: name, capacity: peerIdentityCapacity)
        out.pointee = id
    }
}

@_cdecl("transport_send")
public func transport_send(_ context: OpaquePointer?, _ connectionID: Int32, _ ciphertext: UnsafePointer<UInt8>?,
                           _ length: Int) -> Int32 {
    sendOn("transport_send", context, connectionID, 0, ciphertext, length)
}

@_cdecl("transport_send_stream")
public func transport_send_stream(_ context: OpaquePointer?, _ connectionID: Int32, _ stream: UInt32,
                                  _ data: UnsafePointer<UInt8>?, _ length: Int) -> Int32 {
    sendOn("transport_send_stream", context, connectionID, stream, data, length)
}

private func sendOn(_ function: StaticString, _ context: OpaquePointer?, _ connectionID: Int32, _ stream: UInt32,
                    _ data: UnsafePointer<UInt8>?, _ length: Int) -> Int32 {
    cCall(function) {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let bytes = try CArg.bytes(data, length, "ciphertext")
        guard length <= node.configuration.reliable.maximumMessageSize else { throw TransportNode.Failure.tooLarge(length) }
        try node.send(connectionID, Array(bytes), stream: stream)
    }
}

@_cdecl("transport_receive")
public func transport_receive(_ context: OpaquePointer?, _ connectionID: Int32,
                              _ ciphertextOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                              _ lengthOut: UnsafeMutablePointer<Int>?, _ timeoutMilliseconds: Int32) -> Int32 {
    receiveOn("transport_receive", context, connectionID, nil, ciphertextOut, lengthOut, timeoutMilliseconds)
}

@_cdecl("transport_receive_stream")
public func transport_receive_stream(_ context: OpaquePointer?, _ connectionID: Int32, _ streamOut: UnsafeMutablePointer<UInt32>?,
                                     _ dataOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                                     _ lengthOut: UnsafeMutablePointer<Int>?, _ timeoutMilliseconds: Int32) -> Int32 {
    receiveOn("transport_receive_stream", context, connectionID, streamOut, dataOut, lengthOut, timeoutMilliseconds)
}

private func receiveOn(_ function: StaticString, _ context: OpaquePointer?, _ connectionID: Int32,
                       _ streamOut: UnsafeMutablePointer<UInt32>?,
                       _ dataOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                       _ lengthOut: UnsafeMutablePointer<Int>?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall(function) {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let data = try CArg.required(dataOut, "ciphertext_out")
        let length = try CArg.required(lengthOut, "ciphertext_len_out")
        let message = try node.receive(connectionID, timeout: Int(timeoutMilliseconds))
        data.pointee = try mallocCopy(message.bytes)
        length.pointee = message.bytes.count
        streamOut?.pointee = message.stream
    }
}

@_cdecl("transport_receive_into")
public func transport_receive_into(_ context: OpaquePointer?, _ connectionID: Int32, _ streamOut: UnsafeMutablePointer<UInt32>?,
                                   _ buffer: UnsafeMutablePointer<UInt8>?, _ capacity: Int,
                                   _ lengthOut: UnsafeMutablePointer<Int>?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall("transport_receive_into") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let into = try CArg.mutableBytes(buffer, capacity, "buffer")
        let length = try CArg.required(lengthOut, "len_out")
        do {
            let message = try node.receive(connectionID, into: into, timeout: Int(timeoutMilliseconds))
            length.pointee = message.length
            streamOut?.pointee = message.stream
        } catch TransportNode.Failure.bufferTooSmall(let needed) {
            length.pointee = needed
            throw TransportNode.Failure.bufferTooSmall(needed)
        }
    }
}

@_cdecl("transport_take_undelivered")
public func transport_take_undelivered(_ context: OpaquePointer?, _ connectionID: Int32, _ streamOut: UnsafeMutablePointer<UInt32>?,
                                       _ dataOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                                       _ lengthOut: UnsafeMutablePointer<Int>?, _ timeoutMilliseconds: Int32) -> Int32 {
    cCall("transport_take_undelivered") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let data = try CArg.required(dataOut, "data_out")
        let length = try CArg.required(lengthOut, "data_len_out")
        guard let message = try node.takeUndelivered(connectionID, timeout: Int(timeoutMilliseconds)) else {
            throw TransportNode.Failure.unknownConnection(connectionID)
        }
        data.pointee = try mallocCopy(message.bytes)
        length.pointee = message.bytes.count
        streamOut?.pointee = message.stream
    }
}

@_cdecl("transport_send_offline")
public func transport_send_offline(_ context: OpaquePointer?, _ peerIdentity: UnsafePointer<CChar>?,
                                   _ ciphertext: UnsafePointer<UInt8>?, _ length: Int) -> Int32 {
    cCall("transport_send_offline") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let peer = try CArg.identity(peerIdentity)
        let bytes = try CArg.bytes(ciphertext, length, "ciphertext")
        guard length <= Offline.maximumMessage else { throw TransportNode.Failure.tooLarge(length) }
        try node.sendOffline(peer, Array(bytes))
    }
}

@_cdecl("transport_receive_offline")
public func transport_receive_offline(_ context: OpaquePointer?, _ senderOut: UnsafeMutablePointer<CChar>?, _ senderCapacity: Int,
                                      _ dataOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                                      _ lengthOut: UnsafeMutablePointer<Int>?, _ sentAtOut: UnsafeMutablePointer<UInt64>?,
                                      _ timeoutMilliseconds: Int32) -> Int32 {
    cCall("transport_receive_offline") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let sender = try CArg.required(senderOut, "sender_out")
        guard senderCapacity > 0 else { throw InvalidArgument("sender_cap is 0 or above SIZE_MAX/2") }
        let data = try CArg.required(dataOut, "data_out")
        let length = try CArg.required(lengthOut, "data_len_out")
        let delivery = try node.receiveOffline(timeout: Int(timeoutMilliseconds)) { $0.utf8.count < senderCapacity }
        try CArg.copyString(delivery.sender.description, to: sender, capacity: senderCapacity)
        data.pointee = try mallocCopy(delivery.message)
        length.pointee = delivery.message.count
        sentAtOut?.pointee = delivery.sentAt
    }
}

@_cdecl("transport_fetch_offline")
public func transport_fetch_offline(_ context: OpaquePointer?) -> Int32 {
    var count: Int32 = 0
    let code = cCall("transport_fetch_offline") {
        count = Int32(clamping: try Handle<TransportNode>.borrow(context, "ctx").fetchOffline())
    }
    return code == 0 ? count : code
}

/// A malloc'd copy for the caller to free with dna_buffer_free; nil for no bytes.
func mallocCopy(_ bytes: [UInt8]) throws -> UnsafeMutablePointer<UInt8>? {
    guard !bytes.isEmpty else { return nil }
    guard let allocated = malloc(bytes.count)?.assumingMemoryBound(to: UInt8.self) else { throw OutOfMemory() }
    bytes.withUnsafeBufferPointer { buffer in
        if let base = buffer.baseAddress { allocated.update(from: base, count: buffer.count) }
    }
    return allocated
}

@_cdecl("transport_get_fd")
public func transport_get_fd(_ context: OpaquePointer?) -> Int32 {
    var fd: Int32 = -1
    let code = cCall("transport_get_fd") { fd = try Handle<TransportNode>.borrow(context, "ctx").readinessDescriptor }
    return code == 0 ? fd : code
}

@_cdecl("transport_set_presence")
public func transport_set_presence(_ context: OpaquePointer?, _ status: Int32) -> Int32 {
    cCall("transport_set_presence") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        guard let value = UInt8(exactly: status), let presence = PresenceStatus(rawValue: value) else {
            throw InvalidArgument("status is not a transport_presence_t")
        }
        node.setPresence(presence)
    }
}

@_cdecl("transport_get_presence")
public func transport_get_presence(_ context: OpaquePointer?, _ connectionID: Int32, _ statusOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    cCall("transport_get_presence") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let out = try CArg.required(statusOut, "status_out")
        out.pointee = Int32(try node.peerPresence(connectionID).rawValue)
    }
}

@_cdecl("transport_get_announce_state")
public func transport_get_announce_state(_ context: OpaquePointer?,
                                         _ stateOut: UnsafeMutablePointer<transport_announce_state_t>?) -> Int32 {
    cCall("transport_get_announce_state") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let out = try CArg.required(stateOut, "state_out")
        let state = try node.announcement()
        out.pointee = transport_announce_state_t(
            announced: state.isAnnounced() ? 1 : 0, holders: Int32(clamping: state.holders),
            stored_ms_ago: state.storedAgo ?? UInt64.max, failed_attempts: Int32(clamping: state.failedAttempts))
    }
}

@_cdecl("transport_disconnect")
public func transport_disconnect(_ context: OpaquePointer?, _ connectionID: Int32) -> Int32 {
    cCall("transport_disconnect") {
        try Handle<TransportNode>.borrow(context, "ctx").disconnect(connectionID)
    }
}

@_cdecl("transport_free")
public func transport_free(_ context: OpaquePointer?) {
    guard let node = try? Handle<TransportNode>.borrow(context, "ctx") else { return }
    Handle<TransportNode>.free(context)
    TransportDHTs.shared.release(node)
    node.close()
}
