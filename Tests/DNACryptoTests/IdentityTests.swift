@testable import DNACrypto
import Foundation
import Testing

/// A fresh data directory per test, removed afterwards.
final class TemporaryDirectory {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("dna-test-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

func mode(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? Int) ?? -1
}

/// Tests/Vectors/identity.json: computed with dilithium-py and hashlib, not with this library.
struct IdentityVector: Decodable {
    var seed: String, identity: String, node_id: String, ip_address: String
    var port: UInt16, last_seen: UInt64
    var public_key_sha256: String, fingerprint: String, signed_bytes_length: Int
    var signed_bytes_before_public_key: String, signed_bytes_sha256: String, dht_key_of_alice: String

    static func load() throws -> IdentityVector {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Vectors/identity.json")
        return try JSONDecoder().decode(IdentityVector.self, from: Data(contentsOf: url))
    }
}

func bytes(hex: String) -> [UInt8] {
    stride(from: 0, to: hex.count, by: 2).map {
        let start = hex.index(hex.startIndex, offsetBy: $0)
        return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16) ?? 0
    }
}

@Suite struct IdentityNameTests {
    @Test func acceptsUTF8NamesUpTo255Bytes() throws {
        #expect(try IdentityName("alice").description == "alice")
        #expect(try IdentityName("ålice-😀").utf8.count == 11)
        #expect(try IdentityName(String(repeating: "a", count: 255)).utf8.count == 255)
    }

    @Test func refusesEmptyLongNULAndInvalidUTF8() {
        #expect(throws: IdentityError.self) { try IdentityName("") }
        #expect(throws: IdentityError.self) { try IdentityName(String(repeating: "a", count: 256)) }
        #expect(throws: IdentityError.self) { try IdentityName(utf8: [0x61, 0x00, 0x62]) }
        #expect(throws: IdentityError.self) { try IdentityName(utf8: [0x61, 0xC3]) }
        #expect(throws: IdentityError.self) { try IdentityName(utf8: [0xFF]) }
    }

    @Test func keyFileNamesStayInsideTheDirectory() throws {
        #expect(try IdentityName("alice").keyFileName == "alice.key")
        for hostile in ["../etc/passwd", "a/b", ".hidden", "..", "x\ny", String(repeating: "b", count: 201)] {
            let file = try IdentityName(hostile).keyFileName
            #expect(file.hasPrefix("~") && !file.contains("/") && file.count == 1 + 32 + 4, "\(hostile)")
        }
    }

    @Test func dhtKeyIsTruncatedSHA256() throws {
        let vector = try IdentityVector.load()
        #expect(Hex.encode(try IdentityName("alice").dhtKey) == vector.dht_key_of_alice)
    }
}

@Suite struct IdentityStoreTests {
    @Test func createsOnFirstUseThenLoadsTheSameKey() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path + "/data")
        let name = try IdentityName("alice")
        let created = try store.load(name, create: true)
        let loaded = try store.load(name, create: false)
        #expect(created.publicKey == loaded.publicKey)
        #expect(created.publicKey.count == Identity.publicKeySize)
        #expect(mode(store.path(of: name)) == 0o600)
        #expect(mode(store.directory) == 0o700)
        #expect(created.fingerprint.count == Fingerprint.length)
    }

    @Test func missingKeyWithoutCreateIsNotFound() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path)
        #expect(throws: IdentityError.notFound(path: store.path(of: try IdentityName("bob")))) {
            try store.load(try IdentityName("bob"), create: false)
        }
    }

    @Test func refusesKeyFilesOthersCanRead() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path)
        let name = try IdentityName("alice")
        _ = try store.load(name, create: true)
        for permissions in [0o644, 0o640, 0o604] {
            chmod(store.path(of: name), mode_t(permissions))
            #expect { try store.load(name, create: true) } throws: {
                if case .keyFileInsecure = $0 as? IdentityError { true } else { false }
            }
        }
    }

    @Test func refusesCorruptKeyFilesAndNeverReplacesThem() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path)
        let name = try IdentityName("alice")
        _ = try store.load(name, create: true)
        let path = store.path(of: name)
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        var damaged: [(String, Data)] = [
            ("truncated", original.prefix(original.count - 1)),
            ("empty", Data()),
            ("extended", original + [0]),
        ]
        for offset in [0, 4, 5, 6, 12, 40, original.count - 1] {  // magic, version, length, name, seed, public key
            var copy = original
            copy[offset] ^= 0x01
            damaged.append(("bit flip at \(offset)", copy))
        }
        for (what, content) in damaged {
            try content.write(to: URL(fileURLWithPath: path))
            chmod(path, 0o600)
            #expect(throws: IdentityError.self, "\(what)") { try store.load(name, create: true) }
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == content, "\(what) was replaced")
        }
    }

    @Test func refusesTheKeyOfAnotherIdentity() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path)
        _ = try store.load(try IdentityName("alice"), create: true)
        try FileManager.default.copyItem(atPath: store.path(of: try IdentityName("alice")),
                                         toPath: store.path(of: try IdentityName("bob")))
        #expect(throws: IdentityError.keyFileCorrupt(path: store.path(of: try IdentityName("bob")),
                                                     reason: "the key of another identity")) {
            try store.load(try IdentityName("bob"), create: true)
        }
    }

    @Test func refusesSymbolicLinksAndWideDirectories() throws {
        let dir = TemporaryDirectory()
        let store = IdentityStore(dataDirectory: dir.path)
        _ = try store.load(try IdentityName("alice"), create: true)
        symlink(store.path(of: try IdentityName("alice")), store.path(of: try IdentityName("mallory")))
        #expect { try store.load(try IdentityName("mallory"), create: true) } throws: {
            if case .keyFileInsecure = $0 as? IdentityError { true } else { false }
        }
        chmod(store.directory, 0o755)
        #expect { try store.load(try IdentityName("carol"), create: true) } throws: {
            if case .keyFileInsecure = $0 as? IdentityError { true } else { false }
        }
    }

    @Test func publicKeyFromSeedMatchesAnIndependentImplementation() throws {
        let vector = try IdentityVector.load()
        let identity = try Identity(name: try IdentityName("alice"), seed: bytes(hex: vector.seed))
        #expect(Hex.encode(Sodium.sha256(identity.publicKey)) == vector.public_key_sha256)
        #expect(identity.fingerprint == vector.fingerprint)
    }
}

@Suite struct PeerEntryTests {
    static let now: UInt64 = 1_700_000_100

    static func signedEntry() throws -> (PeerEntry, Identity) {
        let identity = try Identity(generating: try IdentityName("alice"))
        var entry = PeerEntry(identity: identity.name, nodeID: Array(1...20), ipAddress: "192.0.2.1", port: 4567,
                              lastSeen: 1_700_000_000)
        try entry.sign(with: identity, now: now)
        return (entry, identity)
    }

    @Test func signedBytesMatchTheVector() throws {
        let vector = try IdentityVector.load()
        let identity = try Identity(name: try IdentityName(vector.identity), seed: bytes(hex: vector.seed))
        var entry = PeerEntry(identity: identity.name, nodeID: bytes(hex: vector.node_id), ipAddress: vector.ip_address,
                              port: vector.port, lastSeen: vector.last_seen)
        try entry.sign(with: identity, now: vector.last_seen)
        #expect(entry.signedBytes.count == vector.signed_bytes_length)
        #expect(Hex.encode(entry.signedBytes.prefix(entry.signedBytes.count - Identity.publicKeySize)) == vector.signed_bytes_before_public_key)
        #expect(Hex.encode(Sodium.sha256(entry.signedBytes)) == vector.signed_bytes_sha256)
        #expect(entry.signature.count == Identity.signatureSize)
        try entry.verify(now: vector.last_seen)
    }

    @Test func everyChangedFieldBreaksTheSignature() throws {
        let (entry, _) = try Self.signedEntry()
        try entry.verify(now: Self.now)
        var changed: [PeerEntry] = []
        var e = entry; e.identity = try IdentityName("alicf"); changed.append(e)
        e = entry; e.nodeID[19] ^= 1; changed.append(e)
        e = entry; e.ipAddress = "192.0.2.2"; changed.append(e)
        e = entry; e.port = 4568; changed.append(e)
        e = entry; e.lastSeen -= 1; changed.append(e)
        for item in changed { #expect(throws: PeerEntryError.badSignature) { try item.verify(now: Self.now) } }
    }

    @Test func everySingleBitFlipOfTheSignatureIsRejected() throws {
        let (entry, _) = try Self.signedEntry()
        for bit in stride(from: 0, to: Identity.signatureSize * 8, by: 7) {
            var e = entry
            e.signature[bit / 8] ^= UInt8(1) << UInt8(bit % 8)
            #expect(throws: PeerEntryError.badSignature) { try e.verify(now: Self.now) }
        }
    }

    @Test func aKeyOtherThanTheSignersIsRejected() throws {
        let (entry, _) = try Self.signedEntry()
        var e = entry
        e.publicKey = try Identity(generating: try IdentityName("alice")).publicKey
        #expect(throws: PeerEntryError.badSignature) { try e.verify(now: Self.now) }
    }

    @Test func refusesMalformedFields() throws {
        let (entry, _) = try Self.signedEntry()
        var e = entry; e.nodeID = [UInt8](repeating: 0, count: 20)
        #expect(throws: PeerEntryError.invalidNodeID) { try e.verify(now: Self.now) }
        e = entry; e.nodeID = Array(1...19)
        #expect(throws: PeerEntryError.invalidNodeID) { try e.verify(now: Self.now) }
        // An address with a NUL inside passed before (inet_pton reads up to the NUL): found while fuzzing peer entries.
        for bad in ["", "999.1.1.1", "host.example", "1.2.3", String(repeating: "1", count: 46), "192.0.2.1\u{0}", "192.0.2.1\u{0}evil", "2001:db8::1\u{0}x"] {
            e = entry; e.ipAddress = bad
            #expect(throws: PeerEntryError.invalidAddress(bad)) { try e.verify(now: Self.now) }
        }
        e = entry; e.ipAddress = "2001:db8::1"
        #expect(throws: PeerEntryError.badSignature) { try e.verify(now: Self.now) }  // valid form, not signed
        e = entry; e.port = 0
        #expect(throws: PeerEntryError.invalidPort) { try e.verify(now: Self.now) }
        e = entry; e.publicKey = Array(e.publicKey.dropLast())
        #expect(throws: PeerEntryError.invalidPublicKey) { try e.verify(now: Self.now) }
    }

    @Test func lastSeenMayRunAheadByTheClockSkewOnly() throws {
        let (entry, _) = try Self.signedEntry()
        try entry.verify(now: entry.lastSeen - PeerEntry.maximumClockSkew)
        #expect(throws: PeerEntryError.invalidLastSeen(lastSeen: entry.lastSeen, now: entry.lastSeen - PeerEntry.maximumClockSkew - 1)) {
            try entry.verify(now: entry.lastSeen - PeerEntry.maximumClockSkew - 1)
        }
    }

    @Test func signingWithAnotherIdentitysKeyIsRefused() throws {
        let bob = try Identity(generating: try IdentityName("bob"))
        var entry = PeerEntry(identity: try IdentityName("alice"), nodeID: Array(1...20), ipAddress: "192.0.2.1",
                              port: 1, lastSeen: 5)
        #expect(throws: PeerEntryError.self) { try entry.sign(with: bob, now: 5) }
        #expect(entry.signature.isEmpty)
    }
}
