import DNACrypto
import DNADHT
import DNANet
import Glibc
import Testing

/// Signaling through the DHT driver with real UDP sockets on loopback: a signal for bob reaches
/// bob's node through the holders of his entry, and his answer comes back.
@Suite(.serialized) struct SignalingServiceTests {
    static func temporaryDirectory() -> String {
        var template = Array("/tmp/dna-signal-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    }

    /// `count` services on loopback (difficulty 8, each in a new directory; on `loop` when given),
    /// the others bootstrapped through the first. The caller stops them.
    static func services(_ count: Int, loop: GLibLoop? = nil,
                         adjust: (inout DHTServiceConfiguration) -> Void = { _ in }) throws -> [DHTService] {
        var configuration = DHTServiceConfiguration()
        configuration.bindHost = "127.0.0.1"
        configuration.node.difficulty = 8
        adjust(&configuration)
        var services: [DHTService] = []
        do {
            for _ in 0..<count {
                configuration.dataDirectory = temporaryDirectory()
                services.append(try DHTService(configuration: configuration, loop: loop))
            }
        } catch {
            for service in services { service.stop() }
            throw error
        }
        let seed = try #require(Endpoint(host: "127.0.0.1", port: services[0].port))
        for service in services.dropFirst() { #expect(service.bootstrap([seed]) == true) }
        return services
    }

    @Test func aSignalAndItsAnswerCrossTheDHT() throws {
        let services = try Self.services(12)
        defer { for service in services { service.stop() } }
        let bob = services[5], alice = services[9]
        let name = try IdentityName("bob")
        let identity = try Identity(generating: name)
        let announced = try #require(try bob.announce(identity, ip: "127.0.0.1", port: 5000))
        #expect(announced.stored >= 5)

        let sent = try #require(alice.signal(name, payload: Array("offer".utf8), timeout: 10_000))
        #expect(!sent.holders.isEmpty)
        let request = try #require(bob.nextSignal(timeout: 5000))
        #expect(request.payload == Array("offer".utf8) && request.id == sent.id)
        bob.reply(to: request, payload: Array("answer".utf8))
        let delivery = try #require(alice.nextDelivery(sent.id, timeout: 5000))
        #expect(delivery.payload == Array("answer".utf8) && delivery.from.port == bob.port)

        // The conversation goes on through the same holders.
        alice.signal(name, id: sent.id, payload: Array("confirm".utf8), through: sent.holders)
        let second = try #require(bob.nextSignal(timeout: 5000))
        #expect(second.payload == Array("confirm".utf8) && second.id == sent.id)
        #expect(bob.nextSignal(timeout: 300) == nil)  // one copy, however many holders forwarded it
    }

    /// A process of an identity ends and another starts at a new address within the same second:
    /// its entry (same last_seen) replaces the old one at once, signed a second later.
    @Test func anEntryAnnouncedAgainWithinTheSameSecondReplacesTheOldAddress() throws {
        let services = try Self.services(6)
        defer { for service in services { service.stop() } }
        let identity = try Identity(generating: try IdentityName("carol"))
        // Both in one second: wait for the start of a second first.
        while unixMilliseconds() % 1000 > 200 { usleep(20_000) }
        let first = try #require(try services[1].announce(identity, ip: "127.0.0.1", port: 5000))
        let second = try #require(try services[2].announce(identity, ip: "127.0.0.1", port: 6000))
        #expect(first.notNewer == 0 && first.stored >= 4)
        #expect(second.notNewer == 0 && second.stored >= 4)  // after the re-signing, every holder took it
        for service in services.dropFirst(3) {
            let found = try #require(service.find(identity.name, timeout: 5000))
            #expect(found.port == 6000)
        }
    }

    /// Nodes whose Unix clock is an hour behind, an hour ahead, and 11 minutes ahead of the others':
    /// each announce is first refused for its time (no holder would store it), corrected by the
    /// holders' clocks and stored; each node then finds the others' entries. A clock off by more
    /// than a day cannot be corrected: its announce says so (clockOffsets, DNA_ERR_CLOCK_SKEW).
    @Test func nodesWhoseClocksAreOffAnnounceAndFindOnTheHoldersClock() throws {
        let honest = try Self.services(6)
        var skewed: [DHTService] = []
        defer { for service in honest + skewed { service.stop() } }
        let seed = try #require(Endpoint(host: "127.0.0.1", port: honest[0].port))
        for error: Int64 in [-3_600_000, 3_600_000, 660_000, -2 * 86_400_000] {
            var configuration = DHTServiceConfiguration()
            configuration.bindHost = "127.0.0.1"
            configuration.node.difficulty = 8
            configuration.dataDirectory = Self.temporaryDirectory()
            configuration.unixClockError = error
            let service = try DHTService(configuration: configuration)
            skewed.append(service)
            #expect(service.bootstrap([seed]) == true)
        }
        let owner = try Identity(generating: try IdentityName("dave"))
        #expect((try honest[1].announce(owner, ip: "127.0.0.1", port: 7000))?.stored ?? 0 >= 4)
        for (index, service) in skewed.prefix(3).enumerated() {
            let identity = try Identity(generating: try IdentityName("skewed\(index)"))
            let result = try #require(try service.announce(identity, ip: "127.0.0.1", port: 7001))
            #expect(result.stored >= 4, "clock \(index): stored on \(result.stored)")
            // (The skewed nodes that have not announced yet still refuse it for its time.)
            #expect(result.clockOffsets.count <= 3, "\(result.clockOffsets)")
            #expect(service.find(owner.name, timeout: 5000)?.port == 7000, "clock \(index) finds dave")
            #expect(honest[2].find(identity.name, timeout: 5000)?.port == 7001, "dave's side finds clock \(index)")
        }
        let hopeless = try #require(try skewed[3].announce(try Identity(generating: try IdentityName("erin")), ip: "127.0.0.1", port: 7002))
        #expect(hopeless.stored == 0 && !hopeless.clockOffsets.isEmpty)
    }

    /// The routing table is saved at each refresh while the node runs (written off the loop thread),
    /// not only when it stops.
    @Test func theStateIsSavedAtEachRefreshWhileRunning() throws {
        let services = try Self.services(2) { $0.node.refreshInterval = 300 }
        defer { for service in services { service.stop() } }
        func saved() -> DHTNode.SavedState? {
            let fd = open(services[1].dataDirectory + "/dht/state", O_RDONLY)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: 1 << 16)
            let count = read(fd, &bytes, bytes.count)
            guard count > 0 else { return nil }
            return try? DHTNode.SavedState(bytes: Array(bytes.prefix(count)))
        }
        let deadline = unixMilliseconds() + 5000
        while (saved()?.contacts.count ?? 0) < 1, unixMilliseconds() < deadline { usleep(50_000) }
        #expect((saved()?.contacts.count ?? 0) >= 1)
    }

    /// Services handed one loop run their nodes on its thread (a transport context's one I/O
    /// thread), find each other through it, and refuse to wait for the network on it.
    @Test func servicesSharingALoopRunOnItsThread() throws {
        let loop = try GLibLoop()
        defer { loop.stop() }
        let services = try Self.services(3, loop: loop)
        defer { for service in services { service.stop() } }
        for service in services {
            #expect(service.loop === loop)
            #expect(service.perform { _, _ in loop.isCurrent } == true)
        }
        #expect(services[2].routingTableSize == 2)
        // A lookup from the loop thread would wait for the loop itself: it is refused at once.
        let onLoop = loop.sync { () -> Bool in services[1].closest(to: services[0].credential.id, timeout: 5000) == nil }
        #expect(onLoop == true)
        #expect(services[1].closest(to: services[0].credential.id, timeout: 5000)?.isEmpty == false)
        // Stopping one leaves the loop to the others.
        services[2].stop()
        #expect(services[1].routingTableSize != nil && services[2].routingTableSize == nil)
    }

    @Test func aSignalForAnIdentityNobodyAnnouncedIsForwardedByNobody() throws {
        let services = try Self.services(4)
        defer { for service in services { service.stop() } }
        let sent = try #require(services[2].signal(try IdentityName("nobody"), payload: [1], timeout: 10_000))
        #expect(sent.holders.isEmpty)
    }
}
