import CNice
import DNADHT
import Glibc

/// Why a socket or file operation failed.
public struct NetError: Error, CustomStringConvertible, Sendable {
    public var operation: String
    public var code: Int32
    public init(_ operation: String, _ code: Int32 = errno) {
        self.operation = operation
        self.code = code
    }
    public var description: String { "\(operation): \(String(cString: strerror(code)))" }
}

/// A non-blocking dual-stack UDP socket (IPv6 with IPv4-mapped addresses, as `Endpoint` keeps them).
public final class UDPSocket {
    public let fd: Int32
    public let port: UInt16

    /// The receive buffer asked for, in bytes (the kernel doubles it for its bookkeeping).
    public static let receiveBuffer: Int32 = 2 << 20

    /// Binds to `host` (nil: every interface) and `port` (0: any free port).
    public init(host: String?, port: UInt16) throws(NetError) {
        let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NetError("socket") }
        var off: Int32 = 0
        _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &off, socklen_t(MemoryLayout<Int32>.size))
        // Answers come in bursts: a round of inbox pages is 24 KB from each of up to 20 holders
        // (about 400 datagrams at once), value parts 16 fetches at a time. The default buffer
        // (208 KB, about 90 such datagrams) dropped most of a round on loopback, and retries made
        // a 10-page inbox take 3.8 s (MailRoundTests). Past net.core.rmem_max only with
        // CAP_NET_ADMIN (SO_RCVBUFFORCE); otherwise the kernel caps SO_RCVBUF there.
        var size = Self.receiveBuffer
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        if let host {
            guard let endpoint = Endpoint(host: host, port: port) else {
                close(fd)
                throw NetError("bind address \(host)", EINVAL)
            }
            withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: endpoint.address) }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            close(fd)
            throw NetError("bind to port \(port)", error)
        }
        var actual = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        self.port = UInt16(bigEndian: actual.sin6_port)
    }

    deinit { close(fd) }

    public func send(_ datagram: [UInt8], to endpoint: Endpoint) {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = endpoint.port.bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: endpoint.address) }
        _ = datagram.withUnsafeBytes { bytes in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }

    /// The next datagram waiting, or nil (a datagram larger than 2,048 bytes is truncated, and then
    /// refused by the frame decoder).
    public func receive() -> ([UInt8], Endpoint)? {
        var buffer = [UInt8](repeating: 0, count: 2048)
        var address = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        let count = buffer.withUnsafeMutableBytes { bytes in
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    recvfrom(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT), $0, &length)
                }
            }
        }
        guard count >= 0 else { return nil }
        let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
        guard let endpoint = Endpoint(address: bytes, port: UInt16(bigEndian: address.sin6_port)) else { return nil }
        return (Array(buffer.prefix(count)), endpoint)
    }
}

/// Resolves "host:port" (names through getaddrinfo) to endpoints.
public func resolve(_ text: String) -> [Endpoint] {
    if let endpoint = Endpoint(text) { return [endpoint] }
    guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]), port != 0 else { return [] }
    let host = String(text[..<colon]).trimmingCharacters(in: "[]")
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, nil, &hints, &list) == 0 else { return [] }
    defer { freeaddrinfo(list) }
    var out: [Endpoint] = []
    var item = list
    while let current = item {
        if let address = current.pointee.ai_addr {
            if current.pointee.ai_family == AF_INET {
                let v4 = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin_addr) { Array($0) } }
                if let endpoint = Endpoint(address: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + v4, port: port) { out.append(endpoint) }
            } else if current.pointee.ai_family == AF_INET6 {
                let v6 = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) } }
                if let endpoint = Endpoint(address: v6, port: port) { out.append(endpoint) }
            }
        }
        item = current.pointee.ai_next
    }
    return Array(Set(out))
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
