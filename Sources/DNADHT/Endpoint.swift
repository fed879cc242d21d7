import Glibc

/// A UDP endpoint: an IPv4 or IPv6 address (IPv4 kept as IPv4-mapped IPv6) and a port.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    /// 16 bytes: IPv6, or ::ffff:a.b.c.d for IPv4.
    public let address: [UInt8]
    public let port: UInt16

    public static let wireSize = 18

    public init?(address: [UInt8], port: UInt16) {
        guard address.count == 16 else { return nil }
        self.address = address
        self.port = port
    }

    /// From text: "192.0.2.1" or "2001:db8::1".
    public init?(host: String, port: UInt16) {
        var v4 = [UInt8](repeating: 0, count: 4), v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET, host, &v4) == 1 {
            self.init(address: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + v4, port: port)
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            self.init(address: v6, port: port)
        } else {
            return nil
        }
    }

    /// From "host:port" or "[v6]:port".
    public init?(_ text: String) {
        let host: Substring, portText: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText), port != 0 else { return nil }
        self.init(host: String(host), port: port)
    }

    public var isIPv4: Bool { address[0..<10].allSatisfy { $0 == 0 } && address[10] == 0xFF && address[11] == 0xFF }

    /// The address as text.
    public var host: String {
        var text = [CChar](repeating: 0, count: 64)
        if isIPv4 {
            _ = inet_ntop(AF_INET, Array(address[12..<16]), &text, 64)
        } else {
            _ = inet_ntop(AF_INET6, address, &text, 64)
        }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String { isIPv4 ? "\(host):\(port)" : "[\(host)]:\(port)" }

    /// The network a Sybil limit counts by: the /24 of an IPv4 address, the /64 of an IPv6 one.
    public var network: [UInt8] { isIPv4 ? Array(address[0..<15]) : Array(address[0..<8]) }

    /// What a source's share of the state it makes a node keep counts by (docs/PROTOCOL.md §5.5,
    /// "Shares"): an IPv4 address without its port, an IPv6 /64 (one subscriber's usual prefix, RFC
    /// 6177), so that one host sending from many ports or addresses has one share; on loopback the
    /// whole endpoint (each port is a node of this machine).
    public var shareKey: [UInt8] {
        if isLoopback { return wire }
        return isIPv4 ? Array(address) : Array(address[0..<8])
    }

    public var isLoopback: Bool {
        isIPv4 ? address[12] == 127 : address == [UInt8](repeating: 0, count: 15) + [1]
    }

    var wire: [UInt8] { address + [UInt8(port >> 8), UInt8(port & 0xFF)] }

    /// Whether a node could really be reached at this endpoint, for an address learnt from
    /// `source` (another node's answer, a signal) or, when `source` is nil, from this node's own
    /// configuration or saved state (PROTOCOL.md §5.1, "Contacts"). Refused: port 0; IPv4
    /// 0.0.0.0/8 (this host, RFC 1122 §3.2.1.3), 224.0.0.0/4 (multicast, RFC 5771) and 240.0.0.0/4
    /// (reserved, with the limited broadcast 255.255.255.255, RFC 919/RFC 1112 §4); IPv6 ::
    /// (unspecified), ff00::/8 (multicast, RFC 4291 §2.7), fe80::/10 (link-local: meaningless without
    /// a scope, which endpoints do not carry), ::/96 (IPv4-compatible, deprecated by RFC 4291
    /// §2.5.5.1); loopback (127.0.0.0/8, ::1) unless `source` is itself loopback or nil.
    public func isReachable(learnedFrom source: Endpoint?) -> Bool {
        guard port != 0 else { return false }
        if isLoopback { return source?.isLoopback ?? true }
        if isIPv4 {
            let first = address[12]
            return first != 0 && first < 224
        }
        if address[0] == 0xFF { return false }
        if address[0] == 0xFE, address[1] & 0xC0 == 0x80 { return false }
        if address[0..<12].allSatisfy({ $0 == 0 }) { return false }  // ::, ::/96
        return true
    }
}
