import Glibc

/// Identity key files in `<data_dir>/identities/<name>.key` (issue 3): directory 0700, files 0600,
/// created atomically (temporary file, fsync, link into place, fsync of the directory), never replaced.
/// A key file that others can read, that is not a regular file, or that another user owns is refused.
public struct IdentityStore: Sendable {
    /// `<data_dir>/identities`
    public let directory: String

    /// `dataDirectory` nil: `$DNA_HOME`, else `$HOME/.dna`.
    public init(dataDirectory: String?) {
        directory = Self.dataDirectory(dataDirectory) + "/identities"
    }

    /// The data directory a NULL `data_dir` means: `$DNA_HOME`, else `$HOME/.dna`, else `./.dna`.
    public static func dataDirectory(_ given: String?) -> String {
        if let given, !given.isEmpty { return given }
        if let home = getenv("DNA_HOME"), home.pointee != 0 { return String(cString: home) }
        if let home = getenv("HOME"), home.pointee != 0 { return String(cString: home) + "/.dna" }
        return ".dna"
    }

    public func path(of name: IdentityName) -> String { directory + "/" + name.keyFileName }

    /// Loads the identity; with `create`, makes a new key pair when there is no key file yet.
    public func load(_ name: IdentityName, create: Bool) throws(IdentityError) -> Identity {
        let path = path(of: name)
        if let bytes = try readKeyFile(path) { return try KeyFile.decode(bytes, name: name, path: path) }
        guard create else { throw .notFound(path: path) }
        try makeDirectory()
        let identity = try Identity(generating: name)
        var bytes = KeyFile.encode(identity)
        defer { Sodium.wipe(&bytes) }
        if try writeNew(path, bytes) { return identity }
        // Another process created it first: use that one.
        guard let existing = try readKeyFile(path) else { throw .notFound(path: path) }
        return try KeyFile.decode(existing, name: name, path: path)
    }

    /// The file's bytes, or nil if it does not exist.
    private func readKeyFile(_ path: String) throws(IdentityError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP { throw .keyFileInsecure(path: path, reason: "a symbolic link") }
            throw .io(path: path, operation: "open", errno: errno)
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io(path: path, operation: "fstat", errno: errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .keyFileInsecure(path: path, reason: "not a regular file") }
        guard info.st_uid == geteuid() else { throw .keyFileInsecure(path: path, reason: "owned by another user") }
        guard info.st_mode & 0o077 == 0 else {
            throw .keyFileInsecure(path: path, reason: "mode \(String(info.st_mode & 0o777, radix: 8)), others may read it (need 0600)")
        }
        guard info.st_size <= KeyFile.maximumSize else {
            throw .keyFileCorrupt(path: path, reason: "\(info.st_size) bytes, above \(KeyFile.maximumSize)")
        }
        var bytes = [UInt8](repeating: 0, count: KeyFile.maximumSize + 1)
        var total = 0
        while total < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + total, $0.count - total) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            total += n
        }
        let content = Array(bytes[0..<total])
        Sodium.wipe(&bytes)
        return content
    }

    /// Creates `<data_dir>` and `<data_dir>/identities` (0700) as needed; refuses an identities
    /// directory that others can enter.
    private func makeDirectory() throws(IdentityError) {
        var prefix = directory.hasPrefix("/") ? "/" : ""
        for component in directory.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw .io(path: prefix, operation: "mkdir", errno: errno) }
            prefix += "/"
        }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw .io(path: directory, operation: "stat", errno: errno) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .keyFileInsecure(path: directory, reason: "not a directory") }
        guard info.st_mode & 0o077 == 0 else {
            throw .keyFileInsecure(path: directory, reason: "mode \(String(info.st_mode & 0o777, radix: 8)), need 0700")
        }
    }

    /// Writes `bytes` to a new file at `path` atomically. Returns false when `path` already exists.
    private func writeNew(_ path: String, _ bytes: [UInt8]) throws(IdentityError) -> Bool {
        let suffix = Hex.encode(Sodium.randomBytes(8))
        let temporary = directory + "/.tmp-" + suffix
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(path: temporary, operation: "open", errno: errno) }
        defer { unlink(temporary) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                let error = errno
                close(fd)
                throw .io(path: temporary, operation: "write", errno: error)
            }
            written += n
        }
        guard fsync(fd) == 0 else {
            let error = errno
            close(fd)
            throw .io(path: temporary, operation: "fsync", errno: error)
        }
        close(fd)
        // link() never replaces an existing file: the first key of an identity stays its key.
        if link(temporary, path) != 0 {
            if errno == EEXIST { return false }
            throw .io(path: path, operation: "link", errno: errno)
        }
        let dirfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            fsync(dirfd)
            close(dirfd)
        }
        return true
    }
}
