import Glibc
import Logging

/// A C caller passed an argument the function cannot take (NULL, negative length, overlap, ...).
struct InvalidArgument: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// dna_last_error(): the code of the last failed call on this thread.
enum LastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        // Cannot fail short of PTHREAD_KEYS_MAX keys in the process; then the error is simply not kept.
        _ = pthread_key_create(&key, nil)
        return key
    }()

    static func set(_ code: Int32) {
        _ = pthread_setspecific(key, UnsafeRawPointer(bitPattern: Int(code)))
    }

    static var current: Int32 {
        Int32(truncatingIfNeeded: Int(bitPattern: pthread_getspecific(key)))
    }
}

/// The library's logger: every message goes to the handler set with dna_set_log_handler.
let logger = Logger(label: "dnatransport", factory: { CLogHandler(label: $0) })

/// Runs the body of a C export: DNA_OK when it returns, else the error's code, recorded in
/// dna_last_error() and logged at debug level with `function`.
@inline(__always)
func cCall(_ function: StaticString, _ body: () throws -> Void) -> Int32 {
    do {
        try body()
        return DNAErrorCode.ok.rawValue
    } catch {
        return fail(function, error)
    }
}

/// Records and logs a failure; returns its C code.
func fail(_ function: StaticString, _ error: any Error) -> Int32 {
    let code = DNAErrorCode(error)
    LastError.set(code.rawValue)
    logger.debug("\(function): \(code.message) (\(error))")
    return code.rawValue
}

/// Checks of C arguments; each failure is an `InvalidArgument` naming what was wrong.
enum CArg {
    /// `pointer` must not be NULL.
    static func required<T>(_ pointer: UnsafeMutablePointer<T>?, _ name: StaticString) throws -> UnsafeMutablePointer<T> {
        guard let pointer else { throw InvalidArgument("\(name) is NULL") }
        return pointer
    }

    /// `length` bytes at `pointer`; NULL is allowed only with length 0. size_t above Int.max arrives
    /// as a negative Int and is refused.
    static func bytes(_ pointer: UnsafePointer<UInt8>?, _ length: Int, _ name: StaticString) throws -> UnsafeRawBufferPointer {
        guard length >= 0 else { throw InvalidArgument("\(name) length is above SIZE_MAX/2") }
        guard length == 0 || pointer != nil else { throw InvalidArgument("\(name) is NULL with length \(length)") }
        return UnsafeRawBufferPointer(start: pointer, count: length)
    }

    /// A writable buffer of `capacity` bytes at `pointer`; NULL only with capacity 0.
    static func mutableBytes(_ pointer: UnsafeMutablePointer<UInt8>?, _ capacity: Int, _ name: StaticString) throws -> UnsafeMutableRawBufferPointer {
        guard capacity >= 0 else { throw InvalidArgument("\(name) capacity is above SIZE_MAX/2") }
        guard capacity == 0 || pointer != nil else { throw InvalidArgument("\(name) is NULL with capacity \(capacity)") }
        return UnsafeMutableRawBufferPointer(start: pointer, count: capacity)
    }

    /// Input and output buffers must not overlap.
    static func disjoint(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer) throws {
        guard let a = input.baseAddress, let b = output.baseAddress, input.count > 0, output.count > 0 else { return }
        let aStart = UInt(bitPattern: a), bStart = UInt(bitPattern: b)
        if aStart < bStart + UInt(output.count) && bStart < aStart + UInt(input.count) {
            throw InvalidArgument("input and output buffers overlap")
        }
    }
}
