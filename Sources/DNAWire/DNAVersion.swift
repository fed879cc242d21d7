/// The library's version; include/dnatransport/dna_common.h carries the same numbers and the tests
/// check that they agree.
public enum DNAVersion {
    public static let major = 1
    public static let minor = 0
    public static let patch = 0
    /// "major.minor.patch" as a static, NUL-terminated string (what dna_version_string returns).
    public static let staticString: StaticString = "1.0.0"
    /// "major.minor.patch"
    public static var string: String { staticString.description }
    /// major×10000 + minor×100 + patch, as SQLite does.
    public static let number = major * 10000 + minor * 100 + patch
}
