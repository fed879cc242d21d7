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
    /// 2^64 frames were sealed with one traffic secret; the connection must be re-established.
    case exhausted
    /// The traffic secret is not 32 bytes.
    case invalidKey
}

/// The direction a traffic key protects; part of every nonce so that the two directions of a
/// connection can never share a (key, nonce) pair.
public enum RecordDirection: UInt8, Sendable {
    case initiatorToResponder = 0
    case responderToInitiator = 1
}

/// Record protection (docs/PROTOCOL.md §3): each frame's payload sealed with ChaCha20-Poly1305-IETF
/// (libsodium). Nonce = direction (1) | 0 (3) | key epoch (4, big-endian) | sequence (4, big-endian).
/// Associated data = the 32-byte header with its checksum field zeroed. The header's reserved word2
/// carries the key epoch. After sequence 2^32-1 the sender moves to the next epoch, whose key is
/// derived from the previous one (BLAKE2b KDF, then the old key is wiped), so no nonce repeats.
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

/// Seals outgoing frames for one direction. A class, so that the key and counter are never copied.
public final class RecordSealer {
    private var key: [UInt8]
    private let direction: RecordDirection
    public private(set) var epoch: UInt32 = 0
    private var nextSequence: UInt64 = 0  // up to 2^32: then the epoch advances

    public init(trafficSecret: [UInt8], direction: RecordDirection) throws(RecordError) {
        guard trafficSecret.count == TrafficKey.size else { throw .invalidKey }
        _ = Sodium.ready
        key = trafficSecret
        self.direction = direction
    }

    deinit { Sodium.wipe(&key) }

    /// Bytes a sealed frame adds to the plaintext: header and tag.
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
        if nextSequence > UInt64(UInt32.max) {
            guard epoch < UInt32.max else { throw .exhausted }
            let next = TrafficKey.next(key)
            Sodium.wipe(&key)
            key = next
            epoch += 1
            nextSequence = 0
        }
        let sequence = UInt32(nextSequence)
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
            var written: UInt64 = 0
            TrafficKey.withNonce(direction, epoch: epoch, sequence: sequence) { nonce in
                _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                    base + FrameHeader.size, &written, plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self),
                    UInt64(plaintext.count), base, UInt64(FrameHeader.size), nil, nonce, key)
            }
            let checksum = CRC32.checksum(UnsafeRawBufferPointer(start: base + FrameHeader.size, count: sealedLength))
            UnsafeMutableRawPointer(base).storeBytes(of: checksum.bigEndian, toByteOffset: 16, as: UInt32.self)
        }
        nextSequence += 1
        return length
    }

    public func seal(type: MessageType, word0: UInt32 = 0, word1: UInt32 = 0, plaintext: [UInt8]) throws(RecordError) -> [UInt8] {
        let result = plaintext.withUnsafeBytes { bytes in
            Result { () throws(RecordError) in try seal(type: type, word0: word0, word1: word1, plaintext: bytes) }
        }
        return try result.get()
    }

    /// Test hook: continue as if `count` frames had been sealed in this epoch.
    func skip(to sequence: UInt64) { nextSequence = sequence }
}

/// Opens incoming sealed frames for one direction, dropping replays.
public final class RecordOpener {
    private struct Epoch {
        var number: UInt32
        var key: [UInt8]
        var window = ReplayWindow()
    }

    private let direction: RecordDirection
    private let decoder: FrameDecoder
    private var current: Epoch
    private var previous: Epoch?

    public init(trafficSecret: [UInt8], direction: RecordDirection,
                maximumPayloadLength: Int = FrameDecoder.defaultMaximumPayloadLength) throws(RecordError) {
        guard trafficSecret.count == TrafficKey.size else { throw .invalidKey }
        _ = Sodium.ready
        self.direction = direction
        // The CRC-32 is checked too: the checksum field is outside the associated data (it is computed
        // over the ciphertext), so without the check a modified checksum would go unnoticed.
        decoder = FrameDecoder(maximumPayloadLength: maximumPayloadLength + TrafficKey.tagSize)
        current = Epoch(number: 0, key: trafficSecret)
    }

    deinit {
        Sodium.wipe(&current.key)
        if var old = previous { Sodium.wipe(&old.key) }
    }

    /// The header and plaintext of a sealed frame. Nothing changes unless the frame authenticates.
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
        } else if current.number < UInt32.max, epoch == current.number + 1 {
            slot = .next
            next = Epoch(number: epoch, key: TrafficKey.next(current.key))
            verdict = .fresh
        } else {
            throw .unknownEpoch(epoch)
        }
        switch verdict {
        case .fresh: break
        case .replayed: throw .replayed(epoch: epoch, sequence: sequence)
        case .tooOld: throw .tooOld(epoch: epoch, sequence: sequence)
        }
        let sealedLength = Int(header.payloadLength)
        guard let frameBase = frame.baseAddress?.assumingMemoryBound(to: UInt8.self) else { throw .authenticationFailed }
        var status: Int32 = -1
        func decrypt(_ key: [UInt8]) -> [UInt8] {
            [UInt8](unsafeUninitializedCapacity: sealedLength - TrafficKey.tagSize) { out, initialized in
                withUnsafeTemporaryAllocation(of: UInt8.self, capacity: FrameHeader.size) { ad in
                    guard let adBase = ad.baseAddress else { return }
                    adBase.update(from: frameBase, count: FrameHeader.size)
                    (adBase + 16).update(repeating: 0, count: 4)  // the checksum is not part of the associated data
                    var length: UInt64 = 0
                    status = TrafficKey.withNonce(direction, epoch: epoch, sequence: sequence) { nonce in
                        crypto_aead_chacha20poly1305_ietf_decrypt(
                            out.baseAddress, &length, nil, frameBase + FrameHeader.size, UInt64(sealedLength),
                            adBase, UInt64(FrameHeader.size), nonce, key)
                    }
                }
                initialized = status == 0 ? out.count : 0
            }
        }
        let key: [UInt8]
        switch slot {
        case .current: key = current.key
        case .previous:
            guard let previous else { throw .unknownEpoch(epoch) }
            key = previous.key
        case .next:
            guard let next else { throw .unknownEpoch(epoch) }
            key = next.key
        }
        guard key.count == TrafficKey.size else { throw .authenticationFailed }
        let plaintext = decrypt(key)
        guard status == 0 else {
            if var candidate = next { Sodium.wipe(&candidate.key) }
            throw .authenticationFailed
        }
        switch slot {
        case .current: current.window.accept(sequence)
        case .previous: previous?.window.accept(sequence)
        case .next:
            guard var candidate = next else { throw .authenticationFailed }
            candidate.window.accept(sequence)
            if var old = previous { Sodium.wipe(&old.key) }
            previous = current
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
