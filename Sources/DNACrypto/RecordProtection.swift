internal import CSodium
import DNAWire

/// Why a sealed frame was not opened, or a frame could not be sealed.
public enum RecordError: Error, Equatable, Sendable {
    /// The frame itself is malformed (see FrameError).
    case frame(FrameError)
    /// This sequence number was already accepted in this key epoch.
    case replayed(epoch: UInt32, sequence: UInt32)
    /// The sequence number is behind the anti-replay window.
    case tooOld(epoch: UInt32, sequence: UInt32)
    /// The frame's key epoch is neither the current, the previous nor the next one.
    case unknownEpoch(UInt32)
    /// The AEAD tag does not verify: modified, misdirected or forged.
    case authenticationFailed
    /// The traffic secret's limits are reached: the sealer used the last of its 2^32 key epochs, or
    /// the opener refused more forged frames (under any key of the session) than the suite's
    /// integrity limit (RFC 9001 §6.6). The connection must be established again.
    case exhausted
    /// The traffic secret is not 32 bytes.
    case invalidKey
    /// This CPU lacks the instructions the suite needs (AES-256-GCM without AES-NI and PCLMULQDQ).
    case unavailable(CipherSuite)
}

/// The direction a traffic key protects; part of every nonce so that the two directions of a
/// connection can never share a (key, nonce) pair.
public enum RecordDirection: UInt8, Sendable {
    case initiatorToResponder = 0
    case responderToInitiator = 1
}

/// The cipher suites of the handshake (docs/PROTOCOL.md §4): both agree keys with X25519 + ML-KEM-768,
/// sign with ML-DSA-65 and derive with HKDF-SHA-256; they differ in the AEAD that protects records (§3).
/// The initiator offers a set, the responder picks one (§4.2).
public enum CipherSuite: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    /// ChaCha20-Poly1305-IETF records (RFC 8439): every machine has it; the fallback.
    case chacha20Poly1305 = 1
    /// AES-256-GCM records (NIST SP 800-38D), libsodium's AES-NI + PCLMULQDQ code: offered and accepted
    /// only where the CPU has those instructions (`isAvailable`).
    case aes256GCM = 2

    /// Whether this process can use the suite (AES-256-GCM needs AES-NI and PCLMULQDQ).
    public var isAvailable: Bool {
        switch self {
        case .chacha20Poly1305: true
        case .aes256GCM: CipherSuite.hasAESInstructions
        }
    }

    private static let hasAESInstructions: Bool = Sodium.ready && crypto_aead_aes256gcm_is_available() == 1

    /// The suites this process offers and accepts by default, in its order of preference: AES-256-GCM
    /// first where the CPU has AES instructions (0.8 ns per byte against ChaCha20-Poly1305's 1.2 here).
    public static let preferred: [CipherSuite] = allCases.filter(\.isAvailable).sorted { $0.rawValue > $1.rawValue }

    /// The bit of this suite in an initiation's offer (§4.2): bit (number − 1).
    var offerBit: UInt16 { 1 << (rawValue - 1) }

    /// The offer field of an initiation that offers `suites`.
    static func offer(_ suites: [CipherSuite]) -> UInt16 { suites.reduce(0) { $0 | $1.offerBit } }

    /// Records sealed with one key before the sender moves to the next key epoch: 2^32 for
    /// ChaCha20-Poly1305 (the sequence field), 2^23 for AES-256-GCM (its confidentiality limit for
    /// records of up to 2^11 blocks, RFC 9001 §6.6).
    var recordsPerEpoch: UInt64 {
        switch self {
        case .chacha20Poly1305: 1 << 32
        case .aes256GCM: 1 << 23
        }
    }

    /// 16-byte blocks (plaintext plus one) sealed with one key before the sender moves to the next
    /// epoch however few the records: for AES-256-GCM the product behind RFC 9001 §6.6's 2^23
    /// (records × blocks per record, 2^23 × 2^11 = 2^34), so that records larger than 32 KiB (the C
    /// API seals up to 16 MiB) do not stretch it. ChaCha20-Poly1305 has no such limit here.
    var blocksPerEpoch: UInt64 {
        switch self {
        case .chacha20Poly1305: .max
        case .aes256GCM: 1 << 34
        }
    }

    /// Frames that fail to authenticate, under any key of a session, before its opener refuses
    /// everything (`RecordError.exhausted`): the integrity limits of RFC 9001 §6.6, 2^36 for
    /// ChaCha20-Poly1305 and 2^52 for AES-256-GCM.
    var forgeryLimit: UInt64 {
        switch self {
        case .chacha20Poly1305: 1 << 36
        case .aes256GCM: 1 << 52
        }
    }

    public var description: String {
        switch self {
        case .chacha20Poly1305: "ChaCha20-Poly1305"
        case .aes256GCM: "AES-256-GCM"
        }
    }
}

/// Record protection (docs/PROTOCOL.md §3): each frame's payload sealed with the session's AEAD
/// (`CipherSuite`, libsodium). Nonce = direction (1) | 0 (3) | key epoch (4, big-endian) | sequence (4,
/// big-endian). Associated data = the 32-byte header with its checksum field zeroed. The header's
/// reserved word2 carries the key epoch. After `recordsPerEpoch` records the sender moves to the next
/// epoch, whose key is derived from the previous one (BLAKE2b KDF, then the old key is wiped), so no
/// nonce repeats and no key outlives its AEAD's limits.
enum TrafficKey {
    static let size = Int(crypto_aead_chacha20poly1305_ietf_KEYBYTES)
    static let tagSize = Int(crypto_aead_chacha20poly1305_ietf_ABYTES)
    static let context: [CChar] = Array("DNAkeyup".utf8CString.dropLast())

    /// The key of the next epoch.
    static func next(_ key: [UInt8]) -> [UInt8] {
        var next = [UInt8](repeating: 0, count: size)
        key.withUnsafeBufferPointer { master in
            guard let base = master.baseAddress else { return }
            _ = crypto_kdf_derive_from_key(&next, size, 1, context, base)
        }
        return next
    }

    static let nonceSize = Int(crypto_aead_chacha20poly1305_ietf_NPUBBYTES)

    /// Runs body with the 12-byte nonce of (direction, epoch, sequence) on the stack.
    static func withNonce<T>(_ direction: RecordDirection, epoch: UInt32, sequence: UInt32,
                             _ body: (UnsafePointer<UInt8>) -> T) -> T {
        withUnsafeTemporaryAllocation(byteCount: nonceSize, alignment: 4) { nonce in
            nonce.storeBytes(of: (UInt32(direction.rawValue) << 24).bigEndian, toByteOffset: 0, as: UInt32.self)
            nonce.storeBytes(of: epoch.bigEndian, toByteOffset: 4, as: UInt32.self)
            nonce.storeBytes(of: sequence.bigEndian, toByteOffset: 8, as: UInt32.self)
            return body(nonce.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }
}

/// One key epoch's AEAD key for one suite. AES-256-GCM keeps libsodium's expanded key schedule
/// (`crypto_aead_aes256gcm_beforenm`, 512 bytes, 16-aligned) beside the key. Both are wiped when the
/// last reference goes.
final class RecordKey {
    let suite: CipherSuite
    private(set) var secret: [UInt8]
    private let schedule: UnsafeMutableRawPointer?
    private static let scheduleSize = crypto_aead_aes256gcm_statebytes()

    init(_ secret: [UInt8], suite: CipherSuite) throws(RecordError) {
        guard secret.count == TrafficKey.size else { throw .invalidKey }
        _ = Sodium.ready
        guard suite.isAvailable else { throw .unavailable(suite) }
        self.suite = suite
        self.secret = secret
        switch suite {
        case .chacha20Poly1305:
            schedule = nil
        case .aes256GCM:
            let state = UnsafeMutableRawPointer.allocate(byteCount: Self.scheduleSize, alignment: 16)
            secret.withUnsafeBufferPointer { key in
                guard let base = key.baseAddress else { return }  // 32 bytes: checked above
                _ = crypto_aead_aes256gcm_beforenm(state.assumingMemoryBound(to: crypto_aead_aes256gcm_state.self), base)
            }
            schedule = state
        }
    }

    deinit {
        Sodium.wipe(&secret)
        if let schedule {
            sodium_memzero(schedule, Self.scheduleSize)
            schedule.deallocate()
        }
    }

    /// The next epoch's key (same suite).
    func next() -> RecordKey? {
        var derived = TrafficKey.next(secret)
        defer { Sodium.wipe(&derived) }
        return try? RecordKey(derived, suite: suite)
    }

    /// Seals `count` bytes at `plaintext` into `out` (count + 16 bytes: ciphertext, then tag).
    func encrypt(_ out: UnsafeMutablePointer<UInt8>, _ plaintext: UnsafePointer<UInt8>?, count: Int,
                 associatedData: UnsafePointer<UInt8>, associatedCount: Int, nonce: UnsafePointer<UInt8>) {
        var written: UInt64 = 0
        if let schedule {
            _ = crypto_aead_aes256gcm_encrypt_afternm(
                out, &written, plaintext, UInt64(count), associatedData, UInt64(associatedCount), nil, nonce,
                schedule.assumingMemoryBound(to: crypto_aead_aes256gcm_state.self))
        } else {
            _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                out, &written, plaintext, UInt64(count), associatedData, UInt64(associatedCount), nil, nonce, secret)
        }
    }

    /// Opens `count` sealed bytes (ciphertext and tag) into `out` (count − 16 bytes); false when the
    /// tag does not verify (then `out` holds nothing of use).
    func decrypt(_ out: UnsafeMutablePointer<UInt8>?, _ sealed: UnsafePointer<UInt8>, count: Int,
                 associatedData: UnsafePointer<UInt8>, associatedCount: Int, nonce: UnsafePointer<UInt8>) -> Bool {
        var length: UInt64 = 0
        if let schedule {
            return crypto_aead_aes256gcm_decrypt_afternm(
                out, &length, nil, sealed, UInt64(count), associatedData, UInt64(associatedCount), nonce,
                schedule.assumingMemoryBound(to: crypto_aead_aes256gcm_state.self)) == 0
        }
        return crypto_aead_chacha20poly1305_ietf_decrypt(
            out, &length, nil, sealed, UInt64(count), associatedData, UInt64(associatedCount), nonce, secret) == 0
    }
}

/// Seals outgoing frames for one direction. A class, so that the key and counter are never copied.
public final class RecordSealer {
    private var key: RecordKey
    private let direction: RecordDirection
    public private(set) var epoch: UInt32 = 0
    private var nextSequence: UInt64 = 0  // up to the suite's records per epoch: then the epoch advances
    private var blocksSealed: UInt64 = 0  // in this epoch, up to the suite's blocks per epoch

    /// - Throws: `.invalidKey` unless `trafficSecret` is 32 bytes; `.unavailable` for a suite this CPU lacks.
    public init(trafficSecret: [UInt8], direction: RecordDirection,
                suite: CipherSuite = .chacha20Poly1305) throws(RecordError) {
        key = try RecordKey(trafficSecret, suite: suite)
        self.direction = direction
    }

    /// The AEAD this side seals with.
    public var suite: CipherSuite { key.suite }

    /// Bytes a sealed frame adds to the plaintext: header and tag (16 bytes in every suite).
    public static let overhead = FrameHeader.size + TrafficKey.tagSize

    /// A sealed frame of `type` carrying `plaintext`; reserved words 0 and 1 are the caller's.
    public func seal(type: MessageType, word0: UInt32 = 0, word1: UInt32 = 0,
                     plaintext: UnsafeRawBufferPointer) throws(RecordError) -> [UInt8] {
        var frame: [UInt8] = []
        try seal(type: type, word0: word0, word1: word1, plaintext: plaintext, appendingTo: &frame)
        return frame
    }

    /// Seals a frame as `seal` does and appends it to `out` (a batch of datagrams laid end to end,
    /// with no allocation of its own once `out` has room). Returns the frame's length.
    @discardableResult
    public func seal(type: MessageType, word0: UInt32 = 0, word1: UInt32 = 0,
                     plaintext: UnsafeRawBufferPointer, appendingTo out: inout [UInt8]) throws(RecordError) -> Int {
        let blocks = UInt64(plaintext.count / 16 + 2)  // the plaintext's blocks and the tag's
        if nextSequence >= key.suite.recordsPerEpoch || blocksSealed > key.suite.blocksPerEpoch - blocks {
            guard epoch < UInt32.max, let next = key.next() else { throw .exhausted }
            key = next  // the old key is wiped as it goes
            epoch += 1
            nextSequence = 0
            blocksSealed = 0
        }
        let sequence = UInt32(truncatingIfNeeded: nextSequence)
        let sealedLength = plaintext.count + TrafficKey.tagSize
        guard sealedLength <= FrameEncoder.maximumPayloadLength else {
            throw .frame(.payloadTooLarge(length: sealedLength, maximum: FrameEncoder.maximumPayloadLength))
        }
        let header = FrameHeader(type: type, sequence: sequence, payloadLength: UInt32(sealedLength), checksum: 0,
                                 reserved: FrameReserved(word0: word0, word1: word1, word2: epoch))
        let start = out.count, length = FrameHeader.size + sealedLength
        out.append(contentsOf: repeatElement(0, count: length))
        out.withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress.map({ $0 + start }) else { return }  // never empty: at least a header
            header.write(to: base)  // checksum 0: these 32 bytes are the associated data
            TrafficKey.withNonce(direction, epoch: epoch, sequence: sequence) { nonce in
                key.encrypt(base + FrameHeader.size, plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self),
                            count: plaintext.count, associatedData: base, associatedCount: FrameHeader.size, nonce: nonce)
            }
            let checksum = CRC32.checksum(UnsafeRawBufferPointer(start: base + FrameHeader.size, count: sealedLength))
            UnsafeMutableRawPointer(base).storeBytes(of: checksum.bigEndian, toByteOffset: 16, as: UInt32.self)
        }
        nextSequence += 1
        blocksSealed += blocks
        return length
    }

    public func seal(type: MessageType, word0: UInt32 = 0, word1: UInt32 = 0, plaintext: [UInt8]) throws(RecordError) -> [UInt8] {
        let result = plaintext.withUnsafeBytes { bytes in
            Result { () throws(RecordError) in try seal(type: type, word0: word0, word1: word1, plaintext: bytes) }
        }
        return try result.get()
    }

    /// Test hook: continue as if `sequence` frames (and `blocks` blocks) had been sealed in this epoch.
    func skip(to sequence: UInt64, blocks: UInt64 = 0) {
        nextSequence = sequence
        blocksSealed = blocks
    }
}

/// Opens incoming sealed frames for one direction, dropping replays.
public final class RecordOpener {
    private struct Epoch {
        var number: UInt32
        var key: RecordKey
        var window = ReplayWindow()
    }

    private let direction: RecordDirection
    private let decoder: FrameDecoder
    private var current: Epoch
    private var previous: Epoch?
    /// Frames that failed to authenticate, under any key: past the suite's integrity limit the opener
    /// refuses everything (RFC 9001 §6.6 counts across all keys of a connection).
    private var forgeries: UInt64 = 0

    /// - Throws: `.invalidKey` unless `trafficSecret` is 32 bytes; `.unavailable` for a suite this CPU lacks.
    public init(trafficSecret: [UInt8], direction: RecordDirection, suite: CipherSuite = .chacha20Poly1305,
                maximumPayloadLength: Int = FrameDecoder.defaultMaximumPayloadLength) throws(RecordError) {
        self.direction = direction
        // The CRC-32 is checked too: the checksum field is outside the associated data (it is computed
        // over the ciphertext), so without the check a modified checksum would go unnoticed.
        decoder = FrameDecoder(maximumPayloadLength: maximumPayloadLength + TrafficKey.tagSize)
        current = Epoch(number: 0, key: try RecordKey(trafficSecret, suite: suite))
    }

    /// The AEAD this side opens with.
    public var suite: CipherSuite { current.key.suite }

    /// Test hook: count `count` more forgeries.
    func countForgeries(_ count: UInt64) { forgeries += count }

    /// The header and plaintext of a sealed frame. Nothing changes unless the frame authenticates
    /// (but the count of forgeries).
    public func open(_ frame: UnsafeRawBufferPointer) throws(RecordError) -> (header: FrameHeader, plaintext: [UInt8]) {
        let header: FrameHeader
        do { header = try decoder.decode(frame) } catch { throw .frame(error) }
        guard header.payloadLength >= UInt32(TrafficKey.tagSize) else { throw .authenticationFailed }
        let epoch = header.reserved.word2
        let sequence = header.sequence
        enum Slot { case current, previous, next }
        let slot: Slot
        // The epoch's key and window are read in place (a copy of the epoch made its window's bitmap
        // be copied for every frame, copy-on-write); only a new epoch is built aside.
        var next: Epoch?
        let verdict: ReplayWindow.Verdict
        if epoch == current.number {
            slot = .current
            verdict = current.window.check(sequence)
        } else if let previous, epoch == previous.number {
            slot = .previous
            verdict = previous.window.check(sequence)
        } else if current.number < UInt32.max, epoch == current.number + 1, let key = current.key.next() {
            slot = .next
            next = Epoch(number: epoch, key: key)
            verdict = .fresh
        } else {
            throw .unknownEpoch(epoch)
        }
        switch verdict {
        case .fresh: break
        case .replayed: throw .replayed(epoch: epoch, sequence: sequence)
        case .tooOld: throw .tooOld(epoch: epoch, sequence: sequence)
        }
        let key: RecordKey
        switch slot {
        case .current: key = current.key
        case .previous:
            guard let previous else { throw .unknownEpoch(epoch) }
            key = previous.key
        case .next:
            guard let next else { throw .unknownEpoch(epoch) }
            key = next.key
        }
        guard forgeries < key.suite.forgeryLimit else { throw .exhausted }
        let sealedLength = Int(header.payloadLength)
        guard let frameBase = frame.baseAddress?.assumingMemoryBound(to: UInt8.self) else { throw .authenticationFailed }
        var authentic = false
        let plaintext = [UInt8](unsafeUninitializedCapacity: sealedLength - TrafficKey.tagSize) { out, initialized in
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: FrameHeader.size) { ad in
                guard let adBase = ad.baseAddress else { return }
                adBase.update(from: frameBase, count: FrameHeader.size)
                (adBase + 16).update(repeating: 0, count: 4)  // the checksum is not part of the associated data
                authentic = TrafficKey.withNonce(direction, epoch: epoch, sequence: sequence) { nonce in
                    key.decrypt(out.baseAddress, frameBase + FrameHeader.size, count: sealedLength,
                                associatedData: adBase, associatedCount: FrameHeader.size, nonce: nonce)
                }
            }
            initialized = authentic ? out.count : 0
        }
        guard authentic else {
            forgeries += 1
            throw .authenticationFailed
        }
        switch slot {
        case .current: current.window.accept(sequence)
        case .previous: previous?.window.accept(sequence)
        case .next:
            guard var candidate = next else { throw .authenticationFailed }
            candidate.window.accept(sequence)
            previous = current  // the epoch before it, and its key, go
            current = candidate
        }
        return (header, plaintext)
    }

    public func open(_ frame: [UInt8]) throws(RecordError) -> (header: FrameHeader, plaintext: [UInt8]) {
        let result = frame.withUnsafeBytes { bytes in
            Result { () throws(RecordError) in try open(bytes) }
        }
        return try result.get()
    }
}

/// A sliding anti-replay window of 2048 sequence numbers (RFC 6479's bitmap, 33 words of 64 bits,
/// so that advancing clears whole words).
struct ReplayWindow {
    static let size: UInt32 = 2048
    private static let words = 33
    private var bits = [UInt64](repeating: 0, count: ReplayWindow.words)
    private var highest: UInt32?

    enum Verdict { case fresh, replayed, tooOld }

    /// The word of the bitmap that holds `sequence`, and its bit in that word.
    private static func slot(_ sequence: UInt32) -> (word: Int, bit: UInt64) {
        (Int((sequence / 64) % UInt32(words)), 1 << UInt64(sequence % 64))
    }

    func check(_ sequence: UInt32) -> Verdict {
        guard let highest, sequence <= highest else { return .fresh }
        if highest - sequence >= Self.size { return .tooOld }
        let (word, bit) = Self.slot(sequence)
        return bits[word] & bit != 0 ? .replayed : .fresh
    }

    mutating func accept(_ sequence: UInt32) {
        if let highest, sequence > highest {
            // The window moves forward: clear the words it enters (all of them after a long jump).
            let from = Int(highest / 64) + 1, to = Int(sequence / 64)
            if to - from >= Self.words - 1 {
                for i in bits.indices { bits[i] = 0 }
            } else if from <= to {
                for block in from...to { bits[block % Self.words] = 0 }
            }
        }
        if highest.map({ sequence > $0 }) ?? true { highest = sequence }  // the bitmap starts clear
        let (word, bit) = Self.slot(sequence)
        bits[word] |= bit
    }
}
