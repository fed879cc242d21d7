import CNice
import DNADHT
import Glibc

/// Answers STUN Binding requests (RFC 8489) with the sender's address (XOR-MAPPED-ADDRESS), so that
/// every bootstrap node is also a STUN server on its DHT port.
public enum STUNServer {
    /// The response to `request` from `source`, or nil when it is not a valid Binding request.
    public static func answer(_ request: [UInt8], from source: Endpoint) -> [UInt8]? {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = source.port.bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { $0.copyBytes(from: source.address) }
        var v4 = sockaddr_in()
        v4.sin_family = sa_family_t(AF_INET)
        v4.sin_port = source.port.bigEndian
        withUnsafeMutableBytes(of: &v4.sin_addr) { $0.copyBytes(from: source.address[12..<16]) }
        var out = [UInt8](repeating: 0, count: 512)
        let length = request.withUnsafeBufferPointer { requestBytes in
            out.withUnsafeMutableBufferPointer { outBytes in
                // An IPv4 peer is reported as IPv4 (family 0x01), not as a mapped IPv6 address.
                if source.isIPv4 {
                    withUnsafePointer(to: &v4) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            dna_stun_answer_binding(requestBytes.baseAddress, requestBytes.count, $0,
                                                    socklen_t(MemoryLayout<sockaddr_in>.size), outBytes.baseAddress, outBytes.count)
                        }
                    }
                } else {
                    withUnsafePointer(to: &address) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                            dna_stun_answer_binding(requestBytes.baseAddress, requestBytes.count, $0,
                                                    socklen_t(MemoryLayout<sockaddr_in6>.size), outBytes.baseAddress, outBytes.count)
                        }
                    }
                }
            }
        }
        return length > 0 ? Array(out.prefix(length)) : nil
    }
}
