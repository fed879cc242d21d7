import DNACrypto
import DNANet
import DNAReliable
import Glibc

/// A connection (record protection + the reliable layer on its GLib loop thread) over two connected
/// UDP sockets on loopback, beside raw datagrams on the same kind of pair: messages per second at 64 B and
/// 1 KiB, MB/s with 1 MiB messages, RTT p50/p99 at 64 B.
enum ConnectionBench {
    /// Two UDP sockets on 127.0.0.1 connected to each other, 4 MB buffers each way (what the ICE
    /// path's socket gets): the same kind of path the transport runs over.
    static func socketPair() -> [Int32] {
        var fds: [Int32] = []
        var addresses: [sockaddr_in] = []
        for _ in 0..<2 {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            var size: Int32 = 4 << 20
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            fds.append(fd)
            addresses.append(address)
        }
        for (fd, other) in zip(fds, addresses.reversed()) {
            var address = other
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        return fds
    }

    /// `sharing`: records share datagrams (PROTOCOL.md §3), as on a session of two current peers.
    static func connections(sharing: Bool = true) throws -> (TransportConnection, TransportConnection) {
        let fds = socketPair()
        let forward = Sodium.randomBytesForBench(32), backward = Sodium.randomBytesForBench(32)
        // One loop per end, as two transport contexts have.
        let a = TransportConnection(fd: fds[0], loop: try GLibLoop(), sealer: try RecordSealer(trafficSecret: forward, direction: .initiatorToResponder),
                                        opener: try RecordOpener(trafficSecret: backward, direction: .responderToInitiator),
                                        sharesDatagrams: sharing)
        let b = TransportConnection(fd: fds[1], loop: try GLibLoop(), sealer: try RecordSealer(trafficSecret: backward, direction: .responderToInitiator),
                                        opener: try RecordOpener(trafficSecret: forward, direction: .initiatorToResponder),
                                        sharesDatagrams: sharing)
        return (a, b)
    }

    static func seconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Raw: a sender thread writes `count` datagrams, the caller reads them, each in batches that fit
    /// the receive buffer (the sender waits for the reader after each batch, so the kernel drops
    /// nothing; a datagram lost anyway ends its batch after 1 s, and is not counted). Messages per second.
    static func rawRate(size: Int, count: Int) -> Double {
        let fds = socketPair()
        defer { fds.forEach { Glibc.close($0) } }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        _ = setsockopt(fds[1], SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let batch = max(1, min(256, (1 << 20) / size))
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var message = [UInt8](repeating: 1, count: size)
        var received = 0
        let start = seconds()
        var sent = 0
        while sent < count {
            let now = min(batch, count - sent)
            for _ in 0..<now { _ = send(fds[0], &message, size, 0) }
            sent += now
            for _ in 0..<now {
                guard recv(fds[1], &buffer, buffer.count, 0) >= 0 else { break }
                received += 1
            }
        }
        return Double(received) / (seconds() - start)
    }

    static func connectionRate(size: Int, count: Int) throws -> Double {
        let (a, b) = try connections()
        defer {
            a.close()
            b.close()
        }
        let message = [UInt8](repeating: 1, count: size)
        let start = seconds()
        let writer = Thread { for _ in 0..<count { try? a.send(message, timeout: 60_000) } }
        for _ in 0..<count { _ = try b.receive(timeout: 60_000) }
        writer.join()
        return Double(count) / (seconds() - start)
    }

    static func rawRTT(count: Int) -> [Double] {
        let fds = socketPair()
        defer { fds.forEach { Glibc.close($0) } }
        let echo = Thread {
            var buffer = [UInt8](repeating: 0, count: 2048)
            for _ in 0..<count {
                let n = recv(fds[1], &buffer, buffer.count, 0)
                _ = send(fds[1], &buffer, n, 0)
            }
        }
        var times: [Double] = []
        var message = [UInt8](repeating: 1, count: 64), buffer = [UInt8](repeating: 0, count: 2048)
        for _ in 0..<count {
            let start = seconds()
            _ = send(fds[0], &message, 64, 0)
            _ = recv(fds[0], &buffer, buffer.count, 0)
            times.append((seconds() - start) * 1e6)
        }
        echo.join()
        return times.sorted()
    }

    static func connectionRTT(count: Int, sharing: Bool = true) throws -> [Double] {
        let (a, b) = try connections(sharing: sharing)
        defer {
            a.close()
            b.close()
        }
        let echo = Thread {
            for _ in 0..<count {
                guard let message = try? b.receive(timeout: 10_000) else { return }
                try? b.send(message.bytes)
            }
        }
        var times: [Double] = []
        let message = [UInt8](repeating: 1, count: 64)
        for _ in 0..<count {
            let start = seconds()
            try a.send(message)
            _ = try a.receive(timeout: 10_000)
            times.append((seconds() - start) * 1e6)
        }
        echo.join()
        return times.sorted()
    }

    static func run() {
        print("")
        print("A connection (sealed frames + reliable layer, on one GLib loop thread per side) over two connected")
        print("UDP sockets on loopback, beside raw datagrams on the same kind of pair, in this process:")
        print("")
        print("\(pad("message", 9)) \(pad("raw msg/s", 11)) \(pad("conn msg/s", 11)) \(pad("conn MB/s", 10)) \(pad("ratio", 6))")
        do {
            for (size, count) in [(64, 50_000), (1024, 50_000), (1 << 20, 40)] {
                let raw = size > 65_000 ? rawRate(size: 60_000, count: count * 18) / 18 : rawRate(size: size, count: count)
                let ours = try connectionRate(size: size, count: count)
                print("\(pad("\(size)", 9)) \(pad(fmt(raw, 0), 11)) \(pad(fmt(ours, 0), 11)) \(pad(fmt(ours * Double(size) / 1e6, 1), 10)) \(pad(fmt(ours / raw), 6))")
            }
            let raw = rawRTT(count: 2000), ours = try connectionRTT(count: 2000)
            let p = { (v: [Double], q: Double) in v[min(v.count - 1, Int(Double(v.count) * q))] }
            print("")
            print("RTT at 64 B (us): raw p50 \(fmt(p(raw, 0.5), 1)) p99 \(fmt(p(raw, 0.99), 1)); connection p50 \(fmt(p(ours, 0.5), 1)) p99 \(fmt(p(ours, 0.99), 1)); p50 ratio \(fmt(p(ours, 0.5) / p(raw, 0.5)))")
            // Records sharing datagrams (PROTOCOL.md §3) against one record per datagram, in turn.
            var shared: [Double] = [], alone: [Double] = []
            for _ in 0..<3 {
                shared.append(p(try connectionRTT(count: 2000, sharing: true), 0.5))
                alone.append(p(try connectionRTT(count: 2000, sharing: false), 0.5))
            }
            shared.sort()
            alone.sort()
            print("RTT p50 at 64 B (us), 3 rounds in turn: records sharing datagrams \(shared.map { fmt($0, 1) }.joined(separator: ", ")); "
                  + "one record per datagram \(alone.map { fmt($0, 1) }.joined(separator: ", ")); median ratio \(fmt(shared[1] / alone[1]))")
            print("(1 MiB raw: 60,000-byte datagrams, 18 per MiB.) goals (issue 6, against raw UDP): >= 0.5x at 1 KiB, p50 RTT <= 1.5x")
        } catch {
            print("connection bench failed: \(error)")
        }
    }
}

/// A pthread running a closure.
final class Thread {
    private var thread = pthread_t()
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    init(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        _ = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            Unmanaged<Box>.fromOpaque(argument).takeRetainedValue().body()
            return nil
        }, box)
    }

    func join() { pthread_join(thread, nil) }
}

extension Sodium {
    static func randomBytesForBench(_ count: Int) -> [UInt8] { randomBytes(count) }
}
