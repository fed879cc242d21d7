import CDNATransport
import DNACrypto
import Glibc

// dna_identity.h: identities and fingerprints.

@_cdecl("dna_identity_max")
public func dna_identity_max() -> Int { IdentityName.maximumLength }

@_cdecl("dna_public_key_size")
public func dna_public_key_size() -> Int { Identity.publicKeySize }

@_cdecl("dna_signature_size")
public func dna_signature_size() -> Int { Identity.signatureSize }

@_cdecl("dna_identity_load")
public func dna_identity_load(_ dataDir: UnsafePointer<CChar>?, _ identity: UnsafePointer<CChar>?,
                              _ create: Int32) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("dna_identity_load") {
        let name = try CArg.identity(identity)
        let store = IdentityStore(dataDirectory: try CArg.optionalString(dataDir, "data_dir"))
        handle = Handle<Identity>.make(try store.load(name, create: create != 0))
    }
    return handle
}

@_cdecl("dna_identity_public_key")
public func dna_identity_public_key(_ identity: OpaquePointer?, _ out: UnsafeMutablePointer<UInt8>?,
                                    _ outCapacity: Int, _ lengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dna_identity_public_key") {
        let loaded = try Handle<Identity>.borrow(identity, "identity")
        try CArg.copy(loaded.publicKey, to: out, outCapacity, lengthOut)
    }
}

@_cdecl("dna_identity_fingerprint")
public func dna_identity_fingerprint(_ identity: OpaquePointer?, _ out: UnsafeMutablePointer<CChar>?,
                                     _ outCapacity: Int) -> Int32 {
    cCall("dna_identity_fingerprint") {
        try CArg.copyString(try Handle<Identity>.borrow(identity, "identity").fingerprint, to: out, outCapacity)
    }
}

@_cdecl("dna_fingerprint")
public func dna_fingerprint(_ publicKey: UnsafePointer<UInt8>?, _ publicKeyLength: Int,
                            _ out: UnsafeMutablePointer<CChar>?, _ outCapacity: Int) -> Int32 {
    cCall("dna_fingerprint") {
        let key = try CArg.bytes(publicKey, publicKeyLength, "public_key")
        guard key.count == Identity.publicKeySize else {
            throw InvalidArgument("public_key is \(key.count) bytes, not \(Identity.publicKeySize)")
        }
        try CArg.copyString(Fingerprint.of(publicKey: Array(key)), to: out, outCapacity)
    }
}

@_cdecl("dna_identity_free")
public func dna_identity_free(_ identity: OpaquePointer?) {
    Handle<Identity>.free(identity)
}

extension CArg {
    /// An identity name from a C string.
    static func identity(_ string: UnsafePointer<CChar>?) throws -> IdentityName {
        guard let string else { throw InvalidArgument("identity is NULL") }
        return try IdentityName(utf8: UnsafeRawBufferPointer(start: string, count: strnlen(string, 256)))
    }

    /// A C string that may be NULL; must be valid UTF-8 when given.
    static func optionalString(_ string: UnsafePointer<CChar>?, _ name: StaticString) throws -> String? {
        guard let string else { return nil }
        guard let value = String(validatingCString: string) else { throw InvalidArgument("\(name) is not UTF-8") }
        return value
    }

    /// Copies bytes to a caller's buffer; too small: DNA_ERR_BUFFER_TOO_SMALL with the needed size.
    static func copy(_ bytes: [UInt8], to out: UnsafeMutablePointer<UInt8>?, _ capacity: Int,
                     _ lengthOut: UnsafeMutablePointer<Int>?) throws {
        let length = try required(lengthOut, "len_out")
        let buffer = try mutableBytes(out, capacity, "out")
        length.pointee = bytes.count
        guard buffer.count >= bytes.count else { throw BufferTooSmall(needed: bytes.count) }
        buffer.copyBytes(from: bytes)
    }

    /// Copies a string and its NUL to a caller's buffer.
    static func copyString(_ string: String, to out: UnsafeMutablePointer<CChar>?, _ capacity: Int) throws {
        guard let out else { throw InvalidArgument("out is NULL") }
        guard capacity >= 0 else { throw InvalidArgument("out capacity is above SIZE_MAX/2") }
        let utf8 = Array(string.utf8)
        guard capacity > utf8.count else { throw BufferTooSmall(needed: utf8.count + 1) }
        UnsafeMutableRawPointer(out).copyMemory(from: utf8, byteCount: utf8.count)
        out[utf8.count] = 0
    }
}

/// The caller's buffer is too small; `needed` bytes would do.
struct BufferTooSmall: Error {
    var needed: Int
}
