import DNADHT
import DNANat

/// What the two sides of a connection tell each other through the DHT's signaling (docs/PROTOCOL.md
/// §7.5): their ICE credentials and candidates. The handshake itself runs over the ICE path, so this
/// needs no protection: a holder that changed it could only make the checks fail, as it could by
/// dropping it.
///
///     version (1) = 1 | kind (1) | connection token (16) | ufrag length (1) | ufrag | pwd length (1) |
///     pwd | count (1) | count × (type (1) | address (16, IPv4-mapped for IPv4) | port (2, big-endian))
struct ConnectOffer: Equatable {
    enum Kind: UInt8 {
        /// The connecting side's offer.
        case offer = 1
        /// The answer of the side that accepts.
        case answer = 2
        /// The answer of a side that will not take the connection (a RESUME for a connection it
        /// does not have).
        case refusal = 3
        /// The connecting side's offer of a new path for the connection that `token` names.
        case resume = 4
        /// The answer of a side that sets up `maximumPendingSetups` connections already: the offer
        /// is to be sent again shortly (the same signal; it is taken once a set-up ends).
        case busy = 5
    }

    static let tokenSize = 16

    static let version: UInt8 = 1

    var kind: Kind
    /// Chosen by the connecting side when the connection is made; names it in a resume.
    var token: [UInt8]
    var ufrag: String
    var password: String
    var candidates: [IceCandidate]

    var bytes: [UInt8] {
        var out: [UInt8] = [Self.version, kind.rawValue] + token
        for text in [ufrag, password] {
            let utf8 = Array(text.utf8.prefix(255))
            out.append(UInt8(utf8.count))
            out += utf8
        }
        let usable = candidates.compactMap { candidate -> (IceCandidate, Endpoint)? in
            Endpoint(host: candidate.ip, port: candidate.port).map { (candidate, $0) }
        }.prefix(IceAgent.maxCandidates)
        out.append(UInt8(usable.count))
        for (candidate, endpoint) in usable {
            out.append(UInt8(truncatingIfNeeded: candidate.kind.rawValue))
            out += endpoint.address
            out += [UInt8(endpoint.port >> 8), UInt8(endpoint.port & 0xFF)]
        }
        return out
    }

    init(kind: Kind, token: [UInt8], ufrag: String, password: String, candidates: [IceCandidate]) {
        self.kind = kind
        self.token = token.count == Self.tokenSize ? token : [UInt8](repeating: 0, count: Self.tokenSize)
        self.ufrag = ufrag
        self.password = password
        self.candidates = candidates
    }

    /// The candidates at which a node could really be reached, for an offer that came through
    /// `holder` (PROTOCOL.md §5.1, "Contacts"): ICE never sends its checks to 0.0.0.0, multicast,
    /// broadcast or, unless the offer came over loopback, a loopback address.
    func reachableCandidates(learnedFrom holder: Endpoint) -> [IceCandidate] {
        candidates.filter { Endpoint(host: $0.ip, port: $0.port)?.isReachable(learnedFrom: holder) ?? false }
    }

    struct Malformed: Error, CustomStringConvertible {
        var description: String
    }

    init(parsing bytes: [UInt8]) throws(Malformed) {
        var at = 0
        func take(_ count: Int, _ what: String) throws(Malformed) -> ArraySlice<UInt8> {
            guard count >= 0, bytes.count - at >= count else { throw Malformed(description: "truncated \(what)") }
            defer { at += count }
            return bytes[at..<at + count]
        }
        let header = try take(2, "header")
        guard header[header.startIndex] == Self.version else { throw Malformed(description: "version \(header[header.startIndex])") }
        guard let kind = Kind(rawValue: header[header.startIndex + 1]) else { throw Malformed(description: "kind \(header[header.startIndex + 1])") }
        self.kind = kind
        token = Array(try take(Self.tokenSize, "token"))
        var texts: [String] = []
        for what in ["ufrag", "pwd"] {
            let length = Int(try take(1, "\(what) length").first ?? 0)
            let raw = try take(length, what)
            guard let text = String(validating: raw, as: UTF8.self), text.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
                throw Malformed(description: "\(what) is not printable ASCII")
            }
            texts.append(text)
        }
        ufrag = texts[0]
        password = texts[1]
        let count = Int(try take(1, "candidate count").first ?? 0)
        guard count <= IceAgent.maxCandidates else { throw Malformed(description: "\(count) candidates") }
        var list: [IceCandidate] = []
        for _ in 0..<count {
            let item = Array(try take(19, "candidate"))
            guard let type = IceCandidate.Kind(rawValue: Int32(item[0])) else { throw Malformed(description: "candidate type \(item[0])") }
            let port = UInt16(item[17]) << 8 | UInt16(item[18])
            guard port != 0, let endpoint = Endpoint(address: Array(item[1..<17]), port: port) else {
                throw Malformed(description: "candidate address")
            }
            list.append(IceCandidate(ip: endpoint.host, port: port, kind: type))
        }
        guard at == bytes.count else { throw Malformed(description: "\(bytes.count - at) bytes after the candidates") }
        candidates = list
    }
}
