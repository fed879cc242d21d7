import DNAWire
import Testing

/// A million random and mutated frames through the decoder: it never crashes or reads out of bounds
/// (the arrays are exact-size, so an overread traps), every success re-encodes to the same bytes, and
/// every single-bit flip gives exactly the error its position predicts.
@Suite struct FrameFuzzTests {
    static let iterations = 1_000_000

    /// Re-encodes a decoded frame: must give back the exact input.
    static func reencode(_ frame: FrameDecoder.Frame) -> [UInt8]? {
        try? FrameEncoder.encode(type: frame.header.type, sequence: frame.header.sequence,
                                 reserved: frame.header.reserved, payload: frame.payload)
    }

    static func randomValidFrame(_ rng: inout SplitMix64) -> [UInt8] {
        let type = MessageType.allCases.randomElement(using: &rng) ?? .data
        let payload = (0..<Int.random(in: 0...48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let reserved = FrameReserved(word0: .random(in: 0...3, using: &rng), word1: 0, word2: .random(in: 0 ... .max, using: &rng))
        return (try? FrameEncoder.encode(type: type, sequence: .random(in: 0 ... .max, using: &rng),
                                         reserved: reserved, payload: payload)) ?? []
    }

    @Test func millionRandomAndMutatedFramesNeverBreakTheDecoder() {
        var rng = SplitMix64(seed: 0xD_4A_2026)
        let decoder = FrameDecoder(maximumPayloadLength: 4096)
        var accepted = 0, rejected = 0, mismatches = 0
        for i in 0..<Self.iterations {
            var bytes: [UInt8]
            switch i % 4 {
            case 0:  // pure noise
                bytes = (0..<Int.random(in: 0...72, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 1:  // a valid prefix ("DNA " v1.0) followed by noise, to reach the deeper checks
                bytes = [0x44, 0x4E, 0x41, 0x20, 0x01, 0x00, 0x00, UInt8.random(in: 0...6, using: &rng)]
                bytes += (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            case 2:  // a valid frame, truncated or extended
                bytes = Self.randomValidFrame(&rng)
                if Bool.random(using: &rng) {
                    bytes.removeLast(Int.random(in: 0...bytes.count, using: &rng))
                } else {
                    bytes += (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                }
            default:  // a valid frame with random bytes overwritten
                bytes = Self.randomValidFrame(&rng)
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = .random(in: 0...255, using: &rng)
                }
            }
            do {
                let frame = try decoder.decode(bytes)
                accepted += 1
                if Self.reencode(frame) != bytes { mismatches += 1 }
            } catch {
                rejected += 1
                if !Self.consistent(error, with: bytes, limit: 4096) { mismatches += 1 }
            }
        }
        #expect(mismatches == 0)
        #expect(accepted + rejected == Self.iterations)
        #expect(accepted > 10_000)  // the generator reaches the success path, not only early rejections
    }

    /// The error names a real property of the input.
    static func consistent(_ error: FrameError, with bytes: [UInt8], limit: Int) -> Bool {
        func be32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        switch error {
        case .truncatedHeader(let length): return length == bytes.count && bytes.count < 32
        case .badMagic(let magic): return magic == be32(0) && magic != 0x444E_4120
        case .unsupportedVersion(let v): return v == UInt16(bytes[4]) << 8 | UInt16(bytes[5]) && v != 0x0100
        case .unknownType(let t): return t == UInt16(bytes[6]) << 8 | UInt16(bytes[7]) && MessageType(rawValue: t) == nil
        case .payloadTooLarge(let length, let maximum): return length == Int(be32(12)) && length > maximum && maximum == limit
        case .lengthMismatch(let declared, let actual): return declared == be32(12) && actual == bytes.count - 32 && Int(declared) != actual
        case .checksumMismatch(let declared, let computed):
            return declared == be32(16) && computed == CRC32.checksum(bytes[32...]) && declared != computed
        case .bufferTooSmall: return false
        }
    }

    @Test func everySingleBitFlipGivesTheErrorItsPositionPredicts() throws {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<200 {
            let frame = Self.randomValidFrame(&rng)
            for bit in 0..<(frame.count * 8) {
                var flipped = frame
                flipped[bit / 8] ^= UInt8(1) << UInt8(bit % 8)
                let byte = bit / 8
                let result = Result { () throws(FrameError) in try FrameDecoder().decode(flipped) }
                let outcome: String
                switch result {
                case .success(let decoded): outcome = Self.reencode(decoded) == flipped ? "DNA_OK" : "re-encoded differently"
                case .failure(let error): outcome = FrameCodecTests.cName(error)
                }
                switch byte {
                case 0..<4: #expect(outcome == "DNA_ERR_BAD_MAGIC")
                case 4..<6: #expect(outcome == "DNA_ERR_BAD_VERSION")
                case 6..<8:
                    // Flipping a type bit may land on another known type; then the frame is valid as that type.
                    let type = UInt16(flipped[6]) << 8 | UInt16(flipped[7])
                    #expect(outcome == (MessageType(rawValue: type) != nil ? "DNA_OK" : "DNA_ERR_UNKNOWN_TYPE"))
                case 8..<12, 20..<32:  // sequence and reserved are not covered by the checksum (seed)
                    #expect(outcome == "DNA_OK")
                case 12..<16:
                    #expect(outcome == "DNA_ERR_LENGTH_MISMATCH" || outcome == "DNA_ERR_TOO_LARGE")
                default:  // checksum field or payload: CRC-32 detects every single-bit error
                    #expect(outcome == "DNA_ERR_CHECKSUM")
                }
            }
        }
    }
}
