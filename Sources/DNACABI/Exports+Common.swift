import CDNATransport
import DNAWire
import Glibc

// dna_common.h: versions, errors, buffers, logging.

@_cdecl("dna_strerror")
public func dna_strerror(_ code: Int32) -> UnsafePointer<CChar>? {
    let message: StaticString = DNAErrorCode(rawValue: code)?.message ?? "unknown error"
    return UnsafeRawPointer(message.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("dna_last_error")
public func dna_last_error() -> Int32 {
    LastError.current
}

@_cdecl("dna_version_string")
public func dna_version_string() -> UnsafePointer<CChar>? {
    UnsafeRawPointer(DNAVersion.staticString.utf8Start).assumingMemoryBound(to: CChar.self)
}

@_cdecl("dna_version_number")
public func dna_version_number() -> Int32 {
    Int32(DNAVersion.number)
}

@_cdecl("dna_buffer_free")
public func dna_buffer_free(_ buffer: UnsafeMutableRawPointer?) {
    free(buffer)
}

@_cdecl("dna_set_log_handler")
public func dna_set_log_handler(_ fn: dna_log_fn?, _ minLevel: Int32, _ userData: UnsafeMutableRawPointer?) {
    LogSink.shared.set(fn, minimumLevel: minLevel, userData: userData)
}
