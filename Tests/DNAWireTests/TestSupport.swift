import Foundation

/// A small deterministic generator (SplitMix64): the same seed gives the same inputs on every run.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Array where Element == UInt8 {
    init(hex: String) {
        var bytes: [UInt8] = []
        var iterator = hex.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            bytes.append(UInt8(String([high, low]), radix: 16) ?? 0)
        }
        self = bytes
    }

    var hex: String { map { String(format: "%02x", $0) }.joined() }
}

/// Tests/Vectors/frames.json, shared with the C and Python tests.
struct FrameVectors: Decodable {
    struct Valid: Decodable, CustomTestStringConvertible {
        var name: String
        var type: UInt16
        var sequence: UInt32
        var payload: String
        var reserved: String
        var checksum: UInt32
        var frame: String
        var testDescription: String { name }
    }

    struct Invalid: Decodable, CustomTestStringConvertible {
        var name: String
        var frame: String
        var error: String
        var testDescription: String { name }
    }

    var valid: [Valid]
    var invalid: [Invalid]

    static let url = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Vectors/frames.json")

    static let all: FrameVectors = {
        do {
            return try JSONDecoder().decode(FrameVectors.self, from: Data(contentsOf: url))
        } catch {
            return FrameVectors(valid: [], invalid: [])  // the vectorsArePresent test fails on this
        }
    }()
}

import Testing
