import Glibc

/// Why a peer entry is refused.
public enum PeerEntryError: Error, Equatable, Sendable {
    /// The identity name is not valid (see IdentityName).
    case invalidIdentity(IdentityError)
    /// node_id is all zero (unset).
    case invalidNodeID
    /// ip_address is not an IPv4 or IPv6 address in text form.
    case invalidAddress(String)
    /// port 0.
    case invalidPort
    /// last_seen is 0 or later than now + the allowed clock skew.
    case invalidLastSeen(lastSeen: UInt64, now: UInt64)
    /// The public key is not an ML-DSA-65 public key.
    case invalidPublicKey
    /// The signature does not verify under the entry's public key.
    case badSignature
    /// The wire encoding does not parse.
    case malformed(String)
}

/// The seed's `dht_peer_entry_t`, signed by the identity it names (docs/PROTOCOL.md, "Signed peer
/// entries"). What is signed is `signedBytes`: every field but the signature, in a canonical encoding.
public struct PeerEntry: Equatable, Sendable {
    public static let nodeIDSize = 20
    /// The longest address text (the seed's `char ip_address[46]` holds it with its NUL).
    public static let maximumAddressLength = 45
    /// How far in the future a verifier accepts last_seen: 10 minutes of clock skew.
    public static let maximumClockSkew: UInt64 = 600
    /// Domain separation: these bytes start every signed entry and appear in no other signed message.
    public static let domain: [UInt8] = Array("DNA-PEER-ENTRY-1".utf8)

    public var identity: IdentityName
    public var nodeID: [UInt8]
    public var ipAddress: String
    public var port: UInt16
    public var lastSeen: UInt64
    public var publicKey: [UInt8]
    public var signature: [UInt8]

    public init(identity: IdentityName, nodeID: [UInt8], ipAddress: String, port: UInt16, lastSeen: UInt64,
                publicKey: [UInt8] = [], signature: [UInt8] = []) {
        self.identity = identity
        self.nodeID = nodeID
        self.ipAddress = ipAddress
        self.port = port
        self.lastSeen = lastSeen
        self.publicKey = publicKey
        self.signature = signature
    }

    /// The canonical bytes the signature covers:
    ///
    ///     "DNA-PEER-ENTRY-1" (16) | L (1) | identity (L) | node_id (20) | A (1) | ip_address (A)
    ///     | port (2, big-endian) | last_seen (8, big-endian) | public key (1952)
    public var signedBytes: [UInt8] {
        var bytes = Self.domain
        bytes.reserveCapacity(16 + 1 + identity.utf8.count + 20 + 1 + 45 + 2 + 8 + Identity.publicKeySize)
        bytes.append(UInt8(identity.utf8.count))
        bytes += identity.utf8
        bytes += nodeID
        let address = Array(ipAddress.utf8)
        bytes.append(UInt8(truncatingIfNeeded: address.count))
        bytes += address
        bytes += [UInt8(port >> 8), UInt8(port & 0xFF)]
        bytes += (0..<8).map { UInt8(truncatingIfNeeded: lastSeen >> (56 - 8 * $0)) }
        bytes += publicKey
        return bytes
    }

    /// Checks every field but the signature; `now` is the verifier's Unix time in seconds.
    public func validateFields(now: UInt64) throws(PeerEntryError) {
        guard nodeID.count == Self.nodeIDSize, nodeID.contains(where: { $0 != 0 }) else { throw .invalidNodeID }
        guard Self.isAddress(ipAddress) else { throw .invalidAddress(ipAddress) }
        guard port != 0 else { throw .invalidPort }
        guard lastSeen != 0, lastSeen <= now &+ Self.maximumClockSkew else {
            throw .invalidLastSeen(lastSeen: lastSeen, now: now)
        }
        guard Identity.isValidPublicKey(publicKey) else { throw .invalidPublicKey }
    }

    /// Fills publicKey and signature with `identity`'s, which must be the identity the entry names.
    public mutating func sign(with identity: Identity, now: UInt64) throws(PeerEntryError) {
        guard identity.name == self.identity else {
            throw .invalidIdentity(.invalidName("the entry names \(self.identity), the key is \(identity.name)'s"))
        }
        publicKey = identity.publicKey
        try validateFields(now: now)
        do { signature = try identity.sign(signedBytes) } catch { throw .invalidIdentity(error) }
    }

    /// Verifies the fields and the signature.
    public func verify(now: UInt64) throws(PeerEntryError) {
        try validateFields(now: now)
        guard Identity.isValidSignature(signature, of: signedBytes, publicKey: publicKey) else { throw .badSignature }
    }

    /// True for IPv4 dotted-quad or IPv6 text that inet_pton accepts, at most 45 bytes, all of it:
    /// a NUL inside is refused (inet_pton would read only the text before it, so "192.0.2.1" + NUL +
    /// anything passed, and the C API's NUL-terminated copy showed another address than was signed).
    public static func isAddress(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= maximumAddressLength, !text.utf8.contains(0) else { return false }
        var buffer = [UInt8](repeating: 0, count: 16)
        return inet_pton(AF_INET, text, &buffer) == 1 || inet_pton(AF_INET6, text, &buffer) == 1
    }
}

extension PeerEntry {
    /// The entry on the wire (docs/PROTOCOL.md §5): its canonical signed bytes, then the signature.
    public var wireBytes: [UInt8] { signedBytes + signature }

    /// The largest wire encoding: a 255-byte name and a 45-byte address.
    public static let maximumWireSize = 16 + 1 + 255 + 20 + 1 + 45 + 2 + 8 + Identity.publicKeySize + Identity.signatureSize

    /// Parses `wireBytes`; checks the structure only (call `verify` for the rules and the signature).
    public init(wire bytes: [UInt8]) throws(PeerEntryError) {
        var offset = 0
        func take(_ count: Int) throws(PeerEntryError) -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count - offset >= count else { throw .malformed("truncated") }
            defer { offset += count }
            return bytes[offset..<offset + count]
        }
        guard try take(16).elementsEqual(Self.domain) else { throw .malformed("domain") }
        let nameLength = Int(try take(1).first ?? 0)
        let identity: IdentityName
        do { identity = try IdentityName(utf8: try take(nameLength)) } catch let error as PeerEntryError {
            throw error
        } catch let error as IdentityError { throw .invalidIdentity(error) } catch { throw .malformed("identity") }
        let nodeID = Array(try take(Self.nodeIDSize))
        let addressLength = Int(try take(1).first ?? 0)
        guard addressLength <= Self.maximumAddressLength,
              let address = String(validating: try take(addressLength), as: UTF8.self) else { throw .invalidAddress("?") }
        let port = try take(2).reduce(UInt16(0)) { $0 << 8 | UInt16($1) }
        let lastSeen = try take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let publicKey = Array(try take(Identity.publicKeySize))
        let signature = Array(try take(Identity.signatureSize))
        guard offset == bytes.count else { throw .malformed("\(bytes.count - offset) trailing bytes") }
        self.init(identity: identity, nodeID: nodeID, ipAddress: address, port: port, lastSeen: lastSeen,
                  publicKey: publicKey, signature: signature)
    }
}
