import DNANet
import Glibc
import Testing

/// The DHT socket's receive buffer: answers come in bursts (a round of 24 KB inbox pages from each of
/// up to 20 holders, about 400 datagrams at once), and the default buffer (208 KB, about 90 such
/// datagrams) dropped most of a round on loopback: a 10-page inbox on 12 nodes took 3.8 s to fetch
/// in one run, 0.13-0.15 s with the larger buffer.
@Suite struct ReceiveBufferTests {
    @Test func theDHTSocketAsksForTwoMebibytesOfReceiveBuffer() throws {
        let socket = try UDPSocket(host: "127.0.0.1", port: 0)
        var size: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        #expect(getsockopt(socket.fd, SOL_SOCKET, SO_RCVBUF, &size, &length) == 0)
        // The kernel doubles what is asked for its bookkeeping. Past net.core.rmem_max only with
        // CAP_NET_ADMIN (SO_RCVBUFFORCE): otherwise capped there.
        let asked = Int(UDPSocket.receiveBuffer)
        let cap = geteuid() == 0 ? asked : min(asked, Self.rmemMax() ?? asked)
        #expect(Int(size) >= 2 * cap, "SO_RCVBUF is \(size) bytes, \(2 * cap) expected")
    }

    static func rmemMax() -> Int? {
        guard let file = fopen("/proc/sys/net/core/rmem_max", "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 64)
        guard fgets(&line, Int32(line.count), file) != nil else { return nil }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return text.split(separator: "\n").first.flatMap { Int($0) }
    }
}
