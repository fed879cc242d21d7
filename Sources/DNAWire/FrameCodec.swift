/// Encodes DNA frames: header plus payload, with magic, version, length and checksum filled in.
public enum FrameEncoder {
    /// The largest payload the format can describe (the length field is 32 bits).
    public static let maximumPayloadLength = Int(UInt32.max)

    /// Bytes needed for a frame carrying `payloadLength` bytes.
    public static func frameSize(payloadLength: Int) -> Int {
        FrameHeader.size + payloadLength
    }

    /// Writes the frame into `out` and returns its length.
    /// Throws `.payloadTooLarge` above 2^32-1 bytes and `.bufferTooSmall(needed:)` when `out` is short.
    /// `payload` and `out` must not overlap.
    public static func encode(type: MessageType, sequence: UInt32, reserved: FrameReserved = .zero,
                              payload: UnsafeRawBufferPointer,
                              into out: UnsafeMutableRawBufferPointer) throws(FrameError) -> Int {
        guard payload.count <= maximumPayloadLength else {
            throw .payloadTooLarge(length: payload.count, maximum: maximumPayloadLength)
        }
        let total = FrameHeader.size + payload.count
        guard out.count >= total, let base = out.baseAddress else { throw .bufferTooSmall(needed: total) }
        let header = FrameHeader(type: type, sequence: sequence, payloadLength: UInt32(payload.count),
                                 checksum: CRC32.checksum(payload), reserved: reserved)
        header.write(to: base)
        if let source = payload.baseAddress, payload.count > 0 {
            (base + FrameHeader.size).copyMemory(from: source, byteCount: payload.count)
        }
        return total
    }

    /// The frame as a new array.
    public static func encode(type: MessageType, sequence: UInt32, reserved: FrameReserved = .zero,
                              payload: some Collection<UInt8>) throws(FrameError) -> [UInt8] {
        let contiguous = payload.withContiguousStorageIfAvailable { Array($0) } ?? Array(payload)
        guard contiguous.count <= maximumPayloadLength else {
            throw .payloadTooLarge(length: contiguous.count, maximum: maximumPayloadLength)
        }
        let total = FrameHeader.size + contiguous.count
        return contiguous.withUnsafeBytes { source in
            [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
                // Cannot fail: the capacity is exactly the frame size and the length was checked above.
                initialized = (try? encode(type: type, sequence: sequence, reserved: reserved, payload: source,
                                           into: UnsafeMutableRawBufferPointer(buffer))) ?? 0
            }
        }
    }
}

/// Decodes one DNA frame from one datagram. Every check of the format is made, in this order:
/// header length, magic, version, type, payload length against the maximum, declared against actual
/// length, checksum. The decoder never reads outside the bytes it is given.
public struct FrameDecoder: Sendable {
    /// Payloads above this are refused by default: 16 MiB (API.md; configurable per decoder).
    public static let defaultMaximumPayloadLength = 16 * 1024 * 1024

    /// The largest payload this decoder accepts.
    public let maximumPayloadLength: Int

    public init(maximumPayloadLength: Int = FrameDecoder.defaultMaximumPayloadLength) {
        self.maximumPayloadLength = min(max(0, maximumPayloadLength), FrameEncoder.maximumPayloadLength)
    }

    /// Decodes a frame that fills `datagram` exactly. The payload is
    /// `datagram[FrameHeader.size ..< FrameHeader.size + Int(header.payloadLength)]`.
    public func decode(_ datagram: UnsafeRawBufferPointer) throws(FrameError) -> FrameHeader {
        guard datagram.count >= FrameHeader.size else { throw .truncatedHeader(length: datagram.count) }
        let magic = datagram.loadBigEndian(at: 0, as: UInt32.self)
        guard magic == FrameHeader.magic else { throw .badMagic(magic) }
        let version = datagram.loadBigEndian(at: 4, as: UInt16.self)
        guard version == FrameHeader.version else { throw .unsupportedVersion(version) }
        let rawType = datagram.loadBigEndian(at: 6, as: UInt16.self)
        guard let type = MessageType(rawValue: rawType) else { throw .unknownType(rawType) }
        let length = datagram.loadBigEndian(at: 12, as: UInt32.self)
        guard Int(length) <= maximumPayloadLength else {
            throw .payloadTooLarge(length: Int(length), maximum: maximumPayloadLength)
        }
        let actual = datagram.count - FrameHeader.size
        guard Int(length) == actual else { throw .lengthMismatch(declared: length, actual: actual) }
        let declared = datagram.loadBigEndian(at: 16, as: UInt32.self)
        let computed = CRC32.checksum(UnsafeRawBufferPointer(rebasing: datagram[FrameHeader.size...]))
        guard declared == computed else { throw .checksumMismatch(declared: declared, computed: computed) }
        return FrameHeader(
            type: type,
            sequence: datagram.loadBigEndian(at: 8, as: UInt32.self),
            payloadLength: length,
            checksum: declared,
            reserved: FrameReserved(word0: datagram.loadBigEndian(at: 20, as: UInt32.self),
                                    word1: datagram.loadBigEndian(at: 24, as: UInt32.self),
                                    word2: datagram.loadBigEndian(at: 28, as: UInt32.self))
        )
    }

    /// A decoded frame whose payload is a slice of the input.
    public struct Frame: Equatable, Sendable {
        public var header: FrameHeader
        public var payload: ArraySlice<UInt8>
    }

    /// Decodes a frame that fills `datagram` exactly.
    public func decode(_ datagram: [UInt8]) throws(FrameError) -> Frame {
        let result = datagram.withUnsafeBytes { bytes in Result { () throws(FrameError) in try decode(bytes) } }
        return Frame(header: try result.get(), payload: datagram[FrameHeader.size...])
    }
}

extension FrameHeader {
    /// Writes the 32 header bytes at `base`.
    package func write(to base: UnsafeMutableRawPointer) {
        base.storeBytes(of: FrameHeader.magic.bigEndian, toByteOffset: 0, as: UInt32.self)
        base.storeBytes(of: FrameHeader.version.bigEndian, toByteOffset: 4, as: UInt16.self)
        base.storeBytes(of: type.rawValue.bigEndian, toByteOffset: 6, as: UInt16.self)
        base.storeBytes(of: sequence.bigEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: payloadLength.bigEndian, toByteOffset: 12, as: UInt32.self)
        base.storeBytes(of: checksum.bigEndian, toByteOffset: 16, as: UInt32.self)
        base.storeBytes(of: reserved.word0.bigEndian, toByteOffset: 20, as: UInt32.self)
        base.storeBytes(of: reserved.word1.bigEndian, toByteOffset: 24, as: UInt32.self)
        base.storeBytes(of: reserved.word2.bigEndian, toByteOffset: 28, as: UInt32.self)
    }
}

extension UnsafeRawBufferPointer {
    /// A big-endian integer at `offset`; the caller has checked that it lies inside the buffer.
    @inline(__always)
    func loadBigEndian<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
