import DNACrypto
import DNADHT
import DNANet
import Glibc
import Testing

/// Which inbox key record a writer seals to (offline mail, sealed values: PROTOCOL.md §10.6), with
/// real sockets on loopback: the first-come rule holders apply, not the newest record.
@Suite(.serialized) struct InboxKeyRecordTests {
    /// The owner of "ines" publishes its keys while 4 of the 12 nodes cannot be reached from it; a
    /// squatter then publishes a newer record of "ines" under another key: those 4 store it, the 8
    /// that keep the owner's refuse it (the squatter is told the name is taken). With no live entry
    /// for the name, a writer seals to the key most holders keep: the owner's. (Before, the newest
    /// record of any key: the squatter's.)
    @Test func aSquattersNewerRecordIsOutvotedByTheHoldersOfTheFirst() throws {
        let services = try SignalingServiceTests.services(12)
        defer { for service in services { service.stop() } }
        let name = try IdentityName("ines")
        let owner = try Identity(generating: name), squatter = try Identity(generating: name)
        let unreachable = Set(services[8...].map(\.port))
        services[3].filterOutgoing { _, to in !unreachable.contains(to.port) }
        let first = try #require(try services[3].publishInboxKeys(of: owner, timeout: 20_000))
        #expect(first.stored >= 7 && first.taken == 0, "the owner's record: \(first)")
        services[3].filterOutgoing(nil)
        sleep(1)  // the squatter's record is the newer (created counts seconds)
        let second = try #require(try services[5].publishInboxKeys(of: squatter, timeout: 20_000))
        #expect(second.stored >= 1 && second.taken > second.stored, "the squatter's record: \(second)")

        guard case .found(let record) = services[1].inboxKeyRecord(of: name, timeout: 20_000) else {
            Issue.record("no record found for \(name)")
            return
        }
        #expect(record.ownerKey == owner.publicKey, "sealed to the squatter's key")
        // Sealing to ines: the owner opens it, the squatter does not.
        let alice = try Identity(generating: try IdentityName("alice"))
        let key = [UInt8](repeating: 7, count: 20)
        let sealed = try services[1].seal(Array("group key".utf8), to: name, as: alice, key: key, slot: 0, type: 1, timeout: 20_000)
        let signer = SignedValue.signerID(of: alice.publicKey)
        #expect(try SealedValueData.open(sealed, with: try InboxKeys(identity: owner), key: key, signerID: signer, slot: 0, type: 1)
                == Array("group key".utf8))
        #expect(throws: OfflineError.authenticationFailed) {
            try SealedValueData.open(sealed, with: try InboxKeys(identity: squatter), key: key, signerID: signer, slot: 0, type: 1)
        }
    }
}
