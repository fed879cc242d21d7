import CDNATransport
import DNAWire

// p2p_protocol.h: the DNA frame.

@_cdecl("p2p_frame_header_size")
public func p2p_frame_header_size() -> Int {
    FrameHeader.size
}

@_cdecl("p2p_frame_max_payload")
public func p2p_frame_max_payload() -> Int {
    FrameDecoder.defaultMaximumPayloadLength
}

@_cdecl("p2p_frame_encode")
public func p2p_frame_encode(_ type: UInt16, _ sequence: UInt32,
                             _ payload: UnsafePointer<UInt8>?, _ payloadLength: Int,
                             _ out: UnsafeMutablePointer<UInt8>?, _ outCapacity: Int,
                             _ frameLengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("p2p_frame_encode") {
        let source = try CArg.bytes(payload, payloadLength, "payload")
        let destination = try CArg.mutableBytes(out, outCapacity, "out")
        let lengthOut = try CArg.required(frameLengthOut, "frame_len_out")
        try CArg.disjoint(source, destination)
        guard let messageType = MessageType(rawValue: type) else { throw FrameError.unknownType(type) }
        do {
            lengthOut.pointee = try FrameEncoder.encode(type: messageType, sequence: sequence,
                                                        payload: source, into: destination)
        } catch FrameError.bufferTooSmall(let needed) {
            lengthOut.pointee = needed
            throw FrameError.bufferTooSmall(needed: needed)
        }
    }
}

@_cdecl("p2p_frame_decode")
public func p2p_frame_decode(_ frame: UnsafePointer<UInt8>?, _ frameLength: Int,
                             _ headerOut: UnsafeMutablePointer<dna_frame_header_t>?,
                             _ payloadOut: UnsafeMutablePointer<UnsafePointer<UInt8>?>?) -> Int32 {
    decodeFrame("p2p_frame_decode", frame, frameLength, FrameDecoder(), headerOut, payloadOut)
}

@_cdecl("p2p_frame_decode_with_limit")
public func p2p_frame_decode_with_limit(_ frame: UnsafePointer<UInt8>?, _ frameLength: Int, _ maxPayload: Int,
                                        _ headerOut: UnsafeMutablePointer<dna_frame_header_t>?,
                                        _ payloadOut: UnsafeMutablePointer<UnsafePointer<UInt8>?>?) -> Int32 {
    // A size_t above Int.max arrives negative: it is a limit above every frame, clamped like any other.
    let limit = maxPayload < 0 ? FrameEncoder.maximumPayloadLength : maxPayload
    return decodeFrame("p2p_frame_decode_with_limit", frame, frameLength,
                       FrameDecoder(maximumPayloadLength: limit), headerOut, payloadOut)
}

private func decodeFrame(_ function: StaticString, _ frame: UnsafePointer<UInt8>?, _ frameLength: Int,
                         _ decoder: FrameDecoder,
                         _ headerOut: UnsafeMutablePointer<dna_frame_header_t>?,
                         _ payloadOut: UnsafeMutablePointer<UnsafePointer<UInt8>?>?) -> Int32 {
    cCall(function) {
        guard let frame else { throw InvalidArgument("frame is NULL") }
        let bytes = try CArg.bytes(frame, frameLength, "frame")
        let out = try CArg.required(headerOut, "header_out")
        let header = try decoder.decode(bytes)
        out.pointee = dna_frame_header_t(header)
        payloadOut?.pointee = frame + FrameHeader.size
    }
}

extension dna_frame_header_t {
    init(_ header: FrameHeader) {
        self.init()
        magic = FrameHeader.magic
        version = FrameHeader.version
        type = header.type.rawValue
        sequence = header.sequence
        payload_length = header.payloadLength
        checksum = header.checksum
        withUnsafeMutableBytes(of: &reserved) { bytes in
            bytes.storeBytes(of: header.reserved.word0.bigEndian, toByteOffset: 0, as: UInt32.self)
            bytes.storeBytes(of: header.reserved.word1.bigEndian, toByteOffset: 4, as: UInt32.self)
            bytes.storeBytes(of: header.reserved.word2.bigEndian, toByteOffset: 8, as: UInt32.self)
        }
    }
}
