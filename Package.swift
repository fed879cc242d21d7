// swift-tools-version:6.2
//
// libdnatransport: a peer-to-peer transport with a C ABI. See README.md and docs/PROTOCOL.md.
// Layers (dependencies point one way): DNAWire -> ... -> DNACABI (the C shell). Only drivers do I/O.
import PackageDescription

/// Static archives that FoundationEssentials (from swift-crypto and ArgumentParser) needs beside the
/// Swift runtime, for -static-stdlib links; `-z defs` makes a missing one a link error. Builds with
/// -enable-testing (the test runs) keep internal symbols that reach CoreFoundation and ICU, so those
/// two are offered to the linker, except in the shipped build (`make build`/`install` set
/// DNATRANSPORT_SHIP=1): offered there, they are pulled in through weak references and the stripped
/// library grows from 17 to 59 MB (Tests/abi/test_size.py).
let shipping = Context.environment["DNATRANSPORT_SHIP"] == "1"
/// Builds with --sanitize (`make test-sanitized` sets DNATRANSPORT_SANITIZE=1): the library leaves the
/// sanitizer's runtime symbols to the process (its runtime is preloaded), so no `-z defs`.
let sanitized = Context.environment["DNATRANSPORT_SANITIZE"] == "1"
/// The libFuzzer harness (`make fuzz`, Fuzz/README.md) exists only when DNATRANSPORT_FUZZ=1: it is built
/// with -sanitize=fuzzer,address, which ordinary builds do not have.
let fuzzing = Context.environment["DNATRANSPORT_FUZZ"] == "1"
let staticFoundationArchives = [
    "-Xlinker", "-l_FoundationCollections", "-Xlinker", "-l_FoundationCShims", "-Xlinker", "-lswiftSynchronization",
] + (shipping ? [] : ["-Xlinker", "-lCoreFoundation", "-Xlinker", "-l_FoundationICU"]) + (sanitized ? [] : ["-Xlinker", "-z", "-Xlinker", "defs"])

let package = Package(
    name: "dnatransport",
    products: [
        // libdnatransport.so: exports exactly the C API of include/ (see Sources/DNACABI/dnatransport.map).
        .library(name: "dnatransport", type: .dynamic, targets: ["DNACABI"]),
        .executable(name: "dnat", targets: ["dnat"]),
        .executable(name: "dna-bench", targets: ["DNABench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.5.2"),
    ],
    targets: [
        // C libraries, as Debian ships them.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CDeflate", pkgConfig: "libdeflate", providers: [.apt(["libdeflate-dev"])]),
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "CNice", pkgConfig: "nice", providers: [.apt(["libnice-dev"])]),
        // The public C header, imported by the C shell so that each export is checked against it.
        .systemLibrary(name: "CDNATransport", path: "include"),

        // The DNA frame format: encode, decode, message types. No I/O, no clock.
        .target(name: "DNAWire", dependencies: ["CDeflate"]),
        // Identities (ML-DSA-65 keys and key files), signed peer entries. No sockets, no clock.
        .target(name: "DNACrypto", dependencies: ["DNAWire", "CSodium", .product(name: "Crypto", package: "swift-crypto")]),

        // Peer discovery: the Kademlia DHT as a sans-I/O state machine. No sockets, no clock.
        .target(name: "DNADHT", dependencies: ["DNAWire", "DNACrypto", "CSodium"]),

        // Message transport: reliability, streams, congestion and flow control as a sans-I/O state machine.
        .target(name: "DNAReliable", dependencies: ["DNAWire"]),

        // Drivers: sockets and the I/O thread that runs a core (the DHT's UDP socket).
        .target(name: "DNANet", dependencies: ["DNADHT", "DNACrypto", "DNAWire", "DNAReliable", "CNice"]),
        // NAT traversal: libnice's ICE agent on its own GLib loop thread.
        .target(name: "DNANat", dependencies: ["DNANet", "DNADHT", "CNice"]),
        // The STUN Binding server of `dnat node` (libnice's STUN agent).
        .target(name: "STUNServer", dependencies: ["CNice", "DNADHT"]),
        // The transport context: DHT signaling, ICE, the handshake over the path, reliable connections.
        .target(name: "DNATransport", dependencies: ["DNANet", "DNANat", "DNADHT", "DNACrypto", "DNAReliable", "STUNServer"]),

        // The C ABI: @_cdecl exports only (check arguments, convert, call Swift, map errors).
        .target(
            name: "DNACABI",
            dependencies: ["DNAWire", "DNACrypto", "DNADHT", "DNANet", "DNANat", "DNATransport", "DNAReliable", "STUNServer", "CDNATransport", .product(name: "Logging", package: "swift-log")],
            exclude: ["dnatransport.map"],
            linkerSettings: [
                .unsafeFlags([
                    "-static-stdlib", "-use-ld=lld",
                ] + staticFoundationArchives + [
                    "-Xlinker", "-soname=libdnatransport.so.1",
                    "-Xlinker", "--version-script=\(Context.packageDirectory)/Sources/DNACABI/dnatransport.map",
                ])
            ]
        ),

        .executableTarget(
            name: "dnat",
            dependencies: ["DNAWire", "DNADHT", "DNANet", "DNACrypto", "DNATransport", "STUNServer", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            linkerSettings: [
                // The Swift runtime inside (as in the library): `dnat` runs where the toolchain is not
                // installed (bootstrap servers). FoundationEssentials (swift-crypto, ArgumentParser) needs
                // the archives below as well; -z defs makes a missing one a link error.
                .unsafeFlags(["-static-stdlib", "-use-ld=lld"] + staticFoundationArchives)
            ]
        ),
        .executableTarget(
            name: "DNABench",
            dependencies: ["DNAWire", "DNACrypto", "DNADHT", "DNANet", "DNAReliable", "CZlib", "CDeflate", "CSodium", .product(name: "Crypto", package: "swift-crypto")],
            path: "bench/DNABench"
        ),

        .testTarget(name: "DNAWireTests", dependencies: ["DNAWire"]),
        .testTarget(name: "DNACryptoTests", dependencies: ["DNACrypto"]),
        .testTarget(name: "DNADHTTests", dependencies: ["DNADHT", "DNACrypto", "DNAWire"]),
        .testTarget(name: "DNANetTests", dependencies: ["DNANet", "DNADHT", "DNACrypto", "DNAReliable"]),
        .testTarget(name: "DNAReliableTests", dependencies: ["DNAReliable", "DNAWire"]),
        .testTarget(name: "DNATransportTests", dependencies: ["DNATransport", "DNANet", "DNADHT", "DNACrypto", "DNANat", "DNAReliable", "STUNServer"]),
    ]
)

if fuzzing {
    package.products.append(.executable(name: "dna-fuzz", targets: ["DNAFuzz"]))
    package.targets.append(.executableTarget(
        name: "DNAFuzz",
        dependencies: ["DNAWire", "DNACrypto", "DNADHT", "DNAReliable", "DNANat", "DNATransport"],
        path: "Fuzz/DNAFuzz",
        swiftSettings: [.swiftLanguageMode(.v5)]
    ))
}
