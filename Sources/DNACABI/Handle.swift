import DNAWire
import Glibc

/// Opaque C handles for Swift objects. Every live handle is registered, so a NULL, freed or foreign
/// pointer is refused with DNA_ERR_INVALID_ARGUMENT instead of being dereferenced.
enum Handle<Object: AnyObject> {
    /// A new retained handle.
    static func make(_ object: Object) -> OpaquePointer {
        let pointer = OpaquePointer(Unmanaged.passRetained(object).toOpaque())
        HandleRegistry.shared.insert(pointer)
        return pointer
    }

    /// The object behind a live handle.
    static func borrow(_ pointer: OpaquePointer?, _ name: StaticString = "handle") throws -> Object {
        guard let pointer else { throw InvalidArgument("\(name) is NULL") }
        guard let object = HandleRegistry.shared.withLive(pointer, {
            Unmanaged<AnyObject>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue() as? Object
        }) ?? nil else { throw InvalidArgument("\(name) is not a live handle of this kind") }
        return object
    }

    /// Releases a handle; NULL or an unknown pointer does nothing.
    static func free(_ pointer: OpaquePointer?) {
        guard let pointer, HandleRegistry.shared.remove(pointer) else { return }
        Unmanaged<AnyObject>.fromOpaque(UnsafeRawPointer(pointer)).release()
    }
}

/// The set of live handles, behind a mutex.
final class HandleRegistry: @unchecked Sendable {
    static let shared = HandleRegistry()
    private let lock = PThreadLock()
    private var live = Set<UInt>()

    private static func key(_ pointer: OpaquePointer) -> UInt {
        UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(pointer)))
    }

    func insert(_ pointer: OpaquePointer) {
        _ = lock.withLock { live.insert(Self.key(pointer)) }
    }

    func remove(_ pointer: OpaquePointer) -> Bool {
        lock.withLock { live.remove(Self.key(pointer)) != nil }
    }

    /// Runs body while holding the lock if the pointer is live (so it cannot be freed meanwhile).
    func withLive<T>(_ pointer: OpaquePointer, _ body: () -> T) -> T? {
        lock.withLock { live.contains(Self.key(pointer)) ? body() : nil }
    }
}
