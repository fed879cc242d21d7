import DNAWire
import Foundation
import Testing

@Suite struct FrameCodecTests {
    @Test func vectorsArePresent() {
        #expect(FrameVectors.all.valid.count >= 6)
        #expect(FrameVectors.all.invalid.count >= 10)
    }

    @Test(arguments: FrameVectors.all.valid)
    func encodesVectorByteExactly(_ vector: FrameVectors.Valid) throws {
        let reserved = [UInt8](hex: vector.reserved)
        func word(_ i: Int) -> UInt32 { reserved[i..<i + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        let frame = try FrameEncoder.encode(
            type: try #require(MessageType(rawValue: vector.type)), sequence: vector.sequence,
            reserved: FrameReserved(word0: word(0), word1: word(4), word2: word(8)),
            payload: [UInt8](hex: vector.payload))
        #expect(frame.hex == vector.frame)
    }

    @Test(arguments: FrameVectors.all.valid)
    func decodesVector(_ vector: FrameVectors.Valid) throws {
        let decoded = try FrameDecoder().decode([UInt8](hex: vector.frame))
        #expect(decoded.header.type.rawValue == vector.type)
        #expect(decoded.header.sequence == vector.sequence)
        #expect(decoded.header.checksum == vector.checksum)
        #expect(Array(decoded.payload).hex == vector.payload)
        #expect(Int(decoded.header.payloadLength) == decoded.payload.count)
    }

    @Test(arguments: FrameVectors.all.invalid)
    func rejectsInvalidVectorWithItsError(_ vector: FrameVectors.Invalid) {
        let expected: String
        do {
            _ = try FrameDecoder().decode([UInt8](hex: vector.frame))
            expected = "DNA_OK"
        } catch {
            expected = Self.cName(error)
        }
        #expect(expected == vector.error)
    }

    static func cName(_ error: FrameError) -> String {
        switch error {
        case .truncatedHeader: "DNA_ERR_TRUNCATED"
        case .badMagic: "DNA_ERR_BAD_MAGIC"
        case .unsupportedVersion: "DNA_ERR_BAD_VERSION"
        case .unknownType: "DNA_ERR_UNKNOWN_TYPE"
        case .lengthMismatch: "DNA_ERR_LENGTH_MISMATCH"
        case .checksumMismatch: "DNA_ERR_CHECKSUM"
        case .payloadTooLarge: "DNA_ERR_TOO_LARGE"
        case .bufferTooSmall: "DNA_ERR_BUFFER_TOO_SMALL"
        }
    }

    @Test func rejectsFrameWithBadChecksumNamingBothValues() throws {
        var frame = try FrameEncoder.encode(type: .data, sequence: 9, payload: Array("abc".utf8))
        frame[frame.count - 1] ^= 0x01
        #expect(throws: FrameError.checksumMismatch(declared: CRC32.checksum(Array("abc".utf8)),
                                                    computed: CRC32.checksum(Array("abb".utf8)))) {
            try FrameDecoder().decode(frame)
        }
    }

    @Test func encodeIntoShortBufferReportsNeededSize() {
        let payload = [UInt8](repeating: 7, count: 10)
        var out = [UInt8](repeating: 0, count: 41)
        #expect(throws: FrameError.bufferTooSmall(needed: 42)) {
            try payload.withUnsafeBytes { p in
                try out.withUnsafeMutableBytes { o in _ = try FrameEncoder.encode(type: .data, sequence: 0, payload: p, into: o) }
            }
        }
        out.append(0)
        let written = payload.withUnsafeBytes { p in
            out.withUnsafeMutableBytes { o in try? FrameEncoder.encode(type: .data, sequence: 0, payload: p, into: o) }
        }
        #expect(written == 42)
    }

    @Test func payloadLimitIsConfigurable() throws {
        let frame = try FrameEncoder.encode(type: .data, sequence: 1, payload: [UInt8](repeating: 1, count: 100))
        #expect(throws: FrameError.payloadTooLarge(length: 100, maximum: 99)) {
            try FrameDecoder(maximumPayloadLength: 99).decode(frame)
        }
        #expect(try FrameDecoder(maximumPayloadLength: 100).decode(frame).payload.count == 100)
        #expect(FrameDecoder(maximumPayloadLength: -5).maximumPayloadLength == 0)
        #expect(FrameDecoder(maximumPayloadLength: .max).maximumPayloadLength == Int(UInt32.max))
    }

    @Test func defaultLimitIsSixteenMebibytes() throws {
        #expect(FrameDecoder().maximumPayloadLength == 16 * 1024 * 1024)
        let atLimit = try FrameEncoder.encode(type: .data, sequence: 0, payload: [UInt8](repeating: 0xAB, count: 16 * 1024 * 1024))
        #expect(try FrameDecoder().decode(atLimit).payload.count == 16 * 1024 * 1024)
    }

    @Test func tooLargeIsReportedBeforeLengthMismatch() throws {
        var header = try FrameEncoder.encode(type: .data, sequence: 0, payload: [UInt8]())
        header.replaceSubrange(12..<16, with: [0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: FrameError.payloadTooLarge(length: Int(UInt32.max), maximum: 16 * 1024 * 1024)) {
            try FrameDecoder().decode(header)
        }
    }

    @Test func versionAgreesWithItsParts() {
        #expect(DNAVersion.string == "\(DNAVersion.major).\(DNAVersion.minor).\(DNAVersion.patch)")
        #expect(DNAVersion.number == DNAVersion.major * 10000 + DNAVersion.minor * 100 + DNAVersion.patch)
    }

    @Test func checksumIsZlibCRC32() {
        // The check value of CRC-32/ISO-HDLC for "123456789".
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum([UInt8]()) == 0)
    }

    /// Frames laid end to end in one datagram (PROTOCOL.md §3): each as long as its header says;
    /// what follows the last whole frame is one range, and so is anything that is not such a run.
    @Test func framesSharingADatagramAreSplitByTheirLengths() throws {
        let one = try FrameEncoder.encode(type: .ping, sequence: 1, payload: [1, 2, 3])
        let two = try FrameEncoder.encode(type: .data, sequence: 2, payload: [UInt8](repeating: 7, count: 100))
        let empty = try FrameEncoder.encode(type: .ack, sequence: 3, payload: [])
        func split(_ datagram: [UInt8]) -> [Range<Int>] { datagram.withUnsafeBytes { FrameHeader.frames(in: $0) } }
        #expect(split(one) == [0..<35])
        #expect(split(one + two) == [0..<35, 35..<167])
        #expect(split(one + two + one) == [0..<35, 35..<167, 167..<202])
        #expect(split(one + Array("junk".utf8)) == [0..<35, 35..<39])
        let junk = Array("more than 32 bytes, without the magic".utf8)
        #expect(split(junk) == [0..<junk.count])
        var long = one + two
        long[35 + 12 + 3] = 200  // the second frame's length runs past the end
        #expect(split(long) == [0..<35, 35..<167])
        #expect(split(Array(one.prefix(20))) == [0..<20])
        #expect(split(empty) == [0..<32])
        #expect(split(empty + one) == [0..<67])  // an empty first frame and more: one unit (no record is empty)
        #expect(split([]) == [])
    }
}
