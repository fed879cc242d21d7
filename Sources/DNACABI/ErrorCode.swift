import DNATransport
import DNACrypto
import DNANat
import DNAWire

/// The C result codes of dna_common.h; rawValue is the C constant. The only place that turns Swift
/// errors into C codes.
enum DNAErrorCode: Int32, CaseIterable {
    case ok = 0
    case invalidArgument = -1
    case notFound = -2
    case timeout = -3
    case io = -4
    case protocolError = -5
    case checksum = -6
    case badSignature = -7
    case bufferTooSmall = -8
    case closed = -9
    case unreachable = -10
    case peerOffline = -11
    case tooLarge = -12
    case noMemory = -13
    case truncated = -14
    case badMagic = -15
    case badVersion = -16
    case unknownType = -17
    case lengthMismatch = -18
    case `internal` = -19
    case keyFile = -20
    case keyPermissions = -21
    case badEntry = -22
    case replayed = -23
    case authentication = -24
    case misdirected = -25
    case nameTaken = -26
    case clockSkew = -27
    case refused = -28
    case superseded = -29

    init(_ error: FrameError) {
        switch error {
        case .truncatedHeader: self = .truncated
        case .badMagic: self = .badMagic
        case .unsupportedVersion: self = .badVersion
        case .unknownType: self = .unknownType
        case .lengthMismatch: self = .lengthMismatch
        case .checksumMismatch: self = .checksum
        case .payloadTooLarge: self = .tooLarge
        case .bufferTooSmall: self = .bufferTooSmall
        }
    }

    init(_ error: SignedValueError) {
        switch error {
        case .invalidData: self = .tooLarge
        case .badSignature: self = .badSignature
        case .invalidSigner(let identity): self.init(identity)
        case .malformed, .invalidPublicKey, .invalidLifetime, .createdInTheFuture, .expired: self = .invalidArgument
        }
    }

    init(_ error: OfflineError) {
        switch error {
        case .malformed, .badTimes, .expired: self = .invalidArgument
        case .badSignature: self = .badSignature
        case .tooLarge: self = .tooLarge
        case .authenticationFailed: self = .authentication
        case .crypto: self = .protocolError
        }
    }

    init(_ error: IdentityError) {
        switch error {
        case .invalidName: self = .invalidArgument
        case .notFound: self = .notFound
        case .keyFileCorrupt: self = .keyFile
        case .keyFileInsecure: self = .keyPermissions
        case .io: self = .io
        case .crypto: self = .internal
        }
    }

    init(_ error: PeerEntryError) {
        switch error {
        case .badSignature: self = .badSignature
        case .invalidIdentity(let cause):
            if case .invalidName = cause { self = .badEntry } else { self.init(cause) }
        case .invalidNodeID, .invalidAddress, .invalidPort, .invalidLastSeen, .invalidPublicKey, .malformed: self = .badEntry
        }
    }

    init(_ error: HandshakeError) {
        switch error {
        case .frame(let cause): self.init(cause)
        case .unexpected, .piece, .malformed, .unsupportedSuite, .badKeyShare: self = .protocolError
        case .unsupportedVersion: self = .badVersion
        case .misdirected: self = .misdirected
        case .replayed: self = .replayed
        case .badSignature: self = .badSignature
        case .authenticationFailed: self = .authentication
        case .unknownSession: self = .notFound
        case .timeout: self = .timeout
        case .crypto: self = .internal
        }
    }

    init(_ error: RecordError) {
        switch error {
        case .frame(let cause): self.init(cause)
        case .replayed, .tooOld: self = .replayed
        case .unknownEpoch, .authenticationFailed: self = .authentication
        case .exhausted: self = .closed
        case .invalidKey, .unavailable: self = .internal
        }
    }

    init(_ error: NatError) {
        switch error {
        case .invalid: self = .invalidArgument
        case .unreachable: self = .unreachable
        case .notFound: self = .notFound
        case .io: self = .io
        }
    }

    init(_ error: any Error) {
        switch error {
        case let error as HandshakeError: self.init(error)
        case let error as RecordError: self.init(error)
        case let error as FrameError: self.init(error)
        case let error as IdentityError: self.init(error)
        case let error as PeerEntryError: self.init(error)
        case let error as NatError: self.init(error)
        case let error as TransportNode.Failure: self.init(error)
        case is InvalidArgument: self = .invalidArgument
        case is NothingQueued: self = .notFound
        case is Unreachable: self = .unreachable
        case is NameTaken: self = .nameTaken
        case is ClockSkew: self = .clockSkew
        case is Superseded: self = .superseded
        case is ValueRefused: self = .refused
        case is TooLarge: self = .tooLarge
        case let error as SignedValueError: self.init(error)
        case let error as OfflineError: self.init(error)
        case is NoSealingKeys: self = .peerOffline
        case is Timeout: self = .timeout
        case is Closed: self = .closed
        case is IOFailure: self = .io
        case is BufferTooSmall: self = .bufferTooSmall
        case is OutOfMemory: self = .noMemory
        default: self = .internal
        }
    }

    /// What dna_strerror returns: static, NUL-terminated.
    var message: StaticString {
        switch self {
        case .ok: "success"
        case .invalidArgument: "invalid argument"
        case .notFound: "not found"
        case .timeout: "timed out"
        case .io: "input/output error"
        case .protocolError: "protocol error"
        case .checksum: "checksum mismatch"
        case .badSignature: "bad signature"
        case .bufferTooSmall: "buffer too small"
        case .closed: "closed"
        case .unreachable: "peer unreachable"
        case .peerOffline: "peer offline"
        case .tooLarge: "too large"
        case .noMemory: "out of memory"
        case .truncated: "truncated frame header"
        case .badMagic: "bad frame magic"
        case .badVersion: "unsupported frame version"
        case .unknownType: "unknown message type"
        case .lengthMismatch: "frame length mismatch"
        case .internal: "internal error"
        case .keyFile: "corrupt or foreign key file"
        case .keyPermissions: "key file or directory readable by others"
        case .badEntry: "malformed peer entry"
        case .replayed: "replayed or duplicate message"
        case .authentication: "message does not authenticate"
        case .misdirected: "handshake meant for another key"
        case .nameTaken: "name held in the DHT by another key"
        case .clockSkew: "clock too far off the DHT's holders"
        case .refused: "refused by the peer or the DHT's holders"
        case .superseded: "a newer value of this writer's slot is held"
        }
    }
}
