/// Why an identity could not be named, loaded, created or used.
public enum IdentityError: Error, Equatable, Sendable {
    /// The name is not 1 to 255 bytes of UTF-8 without NUL.
    case invalidName(String)
    /// No key file for the identity, and creating one was not asked for.
    case notFound(path: String)
    /// The key file is truncated, corrupt, or belongs to another identity. It is never replaced.
    case keyFileCorrupt(path: String, reason: String)
    /// The key file or its directory can be read by others, is not a regular file, or has another owner.
    case keyFileInsecure(path: String, reason: String)
    /// A system call failed.
    case io(path: String, operation: String, errno: Int32)
    /// The ML-DSA implementation refused an operation.
    case crypto(String)
}
