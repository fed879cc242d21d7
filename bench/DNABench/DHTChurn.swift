import DNACrypto
import DNADHT
import DNANet
import Glibc

/// DHT lookups on loopback before and after 30% of the nodes are killed without warning (issue 15,
/// part 4; docs/PROTOCOL.md §5.4): 24 nodes (DHTService, each on its own GLib loop thread, in this
/// process), 30 identities announced, 30 FIND_VALUE lookups one at a time from random nodes; then 7
/// nodes stop at once (the DHT has no goodbye, so the others learn nothing) and 30 lookups more from
/// the survivors. Time: from the start of a lookup to its result. Requests: datagrams the
/// looking-up node sent meanwhile (as bench/dht_compare.py counts them).
enum DHTChurnBench {
    static let nodes = 24, killed = 7, identities = 30, lookups = 30

    struct Figures {
        var times: [Double] = []  // ms
        var requests: [Int] = []
        var found = 0

        func p(_ q: Double) -> Double {
            let sorted = times.sorted()
            return sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
        }

        var meanRequests: Double { requests.isEmpty ? 0 : Double(requests.reduce(0, +)) / Double(requests.count) }
    }

    /// SplitMix64, seeded: the same nodes look up the same names in every run.
    struct Random {
        var state: UInt64
        mutating func below(_ n: Int) -> Int {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Int((z ^ (z >> 31)) % UInt64(n))
        }
    }

    static func measure(_ services: [DHTService], _ names: [IdentityName], _ random: inout Random) -> Figures {
        var figures = Figures()
        for _ in 0..<lookups {
            let service = services[random.below(services.count)], index = random.below(names.count)
            let key = NodeID.key(of: names[index])
            let before = service.perform { node, _ in node.statistics.sent } ?? 0
            let start = monotonicNanoseconds()
            let result = service.lookup(timeout: 10_000) { node, now in node.findValue(key, now: now) }
            figures.times.append(Double(monotonicNanoseconds() - start) / 1e6)
            figures.requests.append((service.perform { node, _ in node.statistics.sent } ?? before) - before)
            if result?.entry?.identity == names[index], result?.entry?.port == UInt16(1000 + index) { figures.found += 1 }
        }
        return figures
    }

    static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(max(0, now.tv_sec)) * 1_000_000_000 + UInt64(max(0, now.tv_nsec))
    }

    static func run() {
        print("")
        print("DHT lookups on loopback, \(nodes) nodes in this process, \(lookups) FIND_VALUE lookups one at a time,")
        print("before and after \(killed) of the nodes (30%) are killed without warning:")
        print("")
        var template = Array("/tmp/dna-bench-dht-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) }.map { String(cString: $0) } }
        guard let root = made else {
            print("DHT churn bench: no temporary directory")
            return
        }
        var services: [DHTService] = []
        defer {
            for service in services { service.stop() }
            _ = system("rm -rf '\(root)'")
        }
        do {
            for index in 0..<nodes {
                var configuration = DHTServiceConfiguration()
                configuration.bindHost = "127.0.0.1"
                configuration.dataDirectory = "\(root)/\(index)"
                configuration.node.difficulty = 8  // cheap ids; the rule is the same
                services.append(try DHTService(configuration: configuration))
            }
            guard let seed = Endpoint(host: "127.0.0.1", port: services[0].port) else { return }
            for service in services.dropFirst() { _ = service.bootstrap([seed]) }
            var random = Random(state: 15)
            var names: [IdentityName] = []
            for index in 0..<identities {
                let identity = try Identity(generating: try IdentityName("churn\(index)"))
                _ = try services[random.below(nodes)].announce(identity, ip: "192.0.2.1", port: UInt16(1000 + index))
                names.append(identity.name)
            }
            let clean = measure(services, names, &random)
            var survivors = services
            for _ in 0..<killed { survivors.remove(at: random.below(survivors.count)).stop() }
            let churned = measure(survivors, names, &random)
            print("\(pad("network", 12)) \(pad("found", 7)) \(pad("p50 ms", 8)) \(pad("p99 ms", 8)) \(pad("requests", 9))")
            for (label, figures) in [("clean", clean), ("30% killed", churned)] {
                print("\(pad(label, 12)) \(pad("\(figures.found)/\(figures.times.count)", 7)) \(pad(fmt(figures.p(0.5), 1), 8)) \(pad(fmt(figures.p(0.99), 1), 8)) \(pad(fmt(figures.meanRequests, 1), 9))")
            }
            print("(requests: mean datagrams sent by the looking-up node.) goals (issue 15): after 30% killed, all found,")
            print("p50 <= 100 ms, p99 <= 1000 ms, requests <= 1.5x clean")
        } catch {
            print("DHT churn bench failed: \(error)")
        }
    }
}
