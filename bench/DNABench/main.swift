// make bench: the frame codec beside its CRC-32 (libdeflate) and zlib's crc32 over the same bytes, in the same run.
// Absolute times on shared machines are noise; the ratios are the result.
import CSodium
import Crypto
import CDeflate
import CZlib
import DNACrypto
import DNAWire
import Glibc

/// Runs `body` (which does `batch` operations) repeatedly for about `seconds`; returns operations per second.
func rate(seconds: Double = 0.6, batch: Int, _ body: () -> Void) -> Double {
    let clock = ContinuousClock()
    body()  // warm up
    var operations = 0
    let start = clock.now
    var elapsed = Duration.zero
    while elapsed < .milliseconds(Int(seconds * 1000)) {
        body()
        operations += batch
        elapsed = clock.now - start
    }
    let (s, attoseconds) = elapsed.components
    return Double(operations) / (Double(s) + Double(attoseconds) / 1e18)
}

/// Best of `rounds` measurements, so that a busy moment on the machine does not decide.
func best(_ rounds: Int = 3, _ measure: () -> Double) -> Double {
    (0..<rounds).map { _ in measure() }.max() ?? 0
}

var sink: UInt64 = 0
let decoder = FrameDecoder()

func pad(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - s.count)) + s }
func fmt(_ x: Double, _ digits: Int = 2) -> String {
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let rounded = (x * scale).rounded() / scale
    return digits == 0 ? "\(Int(rounded))" : "\(rounded)"
}

if CommandLine.arguments.dropFirst().first == "connection-rtt" {
    // For profiling: only the connection's round trips.
    let times = (try? ConnectionBench.connectionRTT(count: 20_000, sharing: getenv("DNA_BENCH_ONE_RECORD_PER_DATAGRAM") == nil)) ?? []
    print("connection RTT p50 \(times.isEmpty ? 0 : times[times.count / 2]) us")
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "connection-bulk" {
    // For profiling: 1 MiB messages one way.
    let rate = (try? ConnectionBench.connectionRate(size: 1 << 20, count: 64)) ?? 0
    print("connection 1 MiB messages: \(rate) msg/s")
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "dht-churn" {
    // Only the DHT lookups before and after 30% of the nodes are killed.
    DHTChurnBench.run()
    exit(0)
}
print("DNA frame codec vs the CRC-32 it computes (libdeflate_crc32; zlib 1.2.13's crc32_z beside it), release build,")
print("best of 3 runs of 0.6 s each.")
print("crc32 alone: one pass over the payload. A frame encode computes the checksum once and copies the")
print("payload; a decode checks it once. An encode+decode pair therefore needs two crc32 passes: its")
print("baseline is crc32 at half rate.")
print("")
print("\(pad("payload", 8)) \(pad("zlib MB/s", 10)) \(pad("crc32 MB/s", 11)) \(pad("encode MB/s", 12)) \(pad("ratio", 6)) \(pad("decode MB/s", 12)) \(pad("ratio", 6)) \(pad("pairs/s", 12)) \(pad("pair MB/s", 10)) \(pad("ratio", 6))")
for size in [64, 1024, 65536] {
    let payload = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    var frame = [UInt8](repeating: 0, count: FrameEncoder.frameSize(payloadLength: size))
    let batch = max(1, 4_000_000 / (size + 64))
    payload.withUnsafeBytes { p in
        frame.withUnsafeMutableBytes { f in
            let fr = UnsafeRawBufferPointer(f)
            let base = p.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let zlibRate = best { rate(batch: batch) {
                for _ in 0..<batch { sink &+= UInt64(crc32_z(0, base, size)) }
            } }
            let crcRate = best { rate(batch: batch) {
                for _ in 0..<batch { sink &+= UInt64(libdeflate_crc32(0, base, size)) }
            } }
            let encodeRate = best { rate(batch: batch) {
                for i in 0..<batch {
                    sink &+= UInt64((try? FrameEncoder.encode(type: .data, sequence: UInt32(truncatingIfNeeded: i),
                                                              payload: p, into: f)) ?? 0)
                }
            } }
            let decodeRate = best { rate(batch: batch) {
                for _ in 0..<batch { sink &+= UInt64((try? decoder.decode(fr))?.checksum ?? 0) }
            } }
            let pairRate = best { rate(batch: batch) {
                for i in 0..<batch {
                    _ = try? FrameEncoder.encode(type: .data, sequence: UInt32(truncatingIfNeeded: i), payload: p, into: f)
                    sink &+= UInt64((try? decoder.decode(fr))?.sequence ?? 0)
                }
            } }
            let mb = Double(size) / 1e6
            print("\(pad("\(size)", 8)) \(pad(fmt(zlibRate * mb, 0), 10)) \(pad(fmt(crcRate * mb, 0), 11)) \(pad(fmt(encodeRate * mb, 0), 12)) \(pad(fmt(encodeRate / crcRate), 6)) \(pad(fmt(decodeRate * mb, 0), 12)) \(pad(fmt(decodeRate / crcRate), 6)) \(pad(fmt(pairRate, 0), 12)) \(pad(fmt(pairRate * mb, 0), 10)) \(pad(fmt(pairRate / (crcRate / 2)), 6))")
        }
    }
}
print("")
print("goals: at 65536 B each ratio >= 0.8; at 64 B >= 5000000 encode+decode pairs/s. The ratios were set against")
print("zlib's crc32_z; against libdeflate's (3-14x faster) an encode is its CRC pass plus one copy of the payload.")

print("")
print("Record protection (seal + open of one frame) vs the suite's libsodium AEAD encrypt + decrypt alone on")
print("the same buffers (ChaCha20-Poly1305-IETF; AES-256-GCM with its precomputed key schedule). The record")
print("layer adds the header, CRC-32, anti-replay window and frame checks. The handshake picks AES-256-GCM")
print("where both CPUs have AES instructions (PROTOCOL.md §4).")
print("")
print("Second baseline: the same AEAD pair plus the two CRC-32 passes (libdeflate) over the ciphertext that the frame")
print("format requires (the sender fills the checksum, the receiver checks it).")
print("")
print("\(pad("suite", 17)) \(pad("payload", 8)) \(pad("aead pairs/s", 13)) \(pad("aead MB/s", 10)) \(pad("record pairs/s", 15)) \(pad("record MB/s", 12)) \(pad("ratio", 6)) \(pad("aead+2crc/s", 12)) \(pad("ratio", 6))")
_ = sodium_init()
let key = [UInt8](repeating: 7, count: 32)
let nonce = [UInt8](repeating: 1, count: 12)
let ad = [UInt8](repeating: 2, count: 32)
let aesState = UnsafeMutableRawPointer.allocate(byteCount: crypto_aead_aes256gcm_statebytes(), alignment: 16)
    .assumingMemoryBound(to: crypto_aead_aes256gcm_state.self)
if CipherSuite.aes256GCM.isAvailable { _ = crypto_aead_aes256gcm_beforenm(aesState, key) }
var recordRates: [CipherSuite: [Int: Double]] = [:]
for suite in CipherSuite.allCases.filter(\.isAvailable).sorted(by: { $0.rawValue < $1.rawValue }) {
    for size in [64, 1024, 16384] {
        let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0) }
        var cipher = [UInt8](repeating: 0, count: size + 16)
        var opened = [UInt8](repeating: 0, count: size)
        let batch = max(1, 2_000_000 / (size + 64))
        func aead(crc: Bool) {
            var clen: UInt64 = 0, mlen: UInt64 = 0
            switch suite {
            case .chacha20Poly1305:
                _ = crypto_aead_chacha20poly1305_ietf_encrypt(&cipher, &clen, plaintext, UInt64(size), ad, 32, nil, nonce, key)
            case .aes256GCM:
                _ = crypto_aead_aes256gcm_encrypt_afternm(&cipher, &clen, plaintext, UInt64(size), ad, 32, nil, nonce, aesState)
            }
            if crc {
                sink &+= UInt64(libdeflate_crc32(0, cipher, Int(clen)))
                sink &+= UInt64(libdeflate_crc32(0, cipher, Int(clen)))
            }
            switch suite {
            case .chacha20Poly1305:
                sink &+= UInt64(crypto_aead_chacha20poly1305_ietf_decrypt(&opened, &mlen, nil, cipher, clen, ad, 32, nonce, key) + 1)
            case .aes256GCM:
                sink &+= UInt64(crypto_aead_aes256gcm_decrypt_afternm(&opened, &mlen, nil, cipher, clen, ad, 32, nonce, aesState) + 1)
            }
        }
        let aeadRate = best { rate(batch: batch) { for _ in 0..<batch { aead(crc: false) } } }
        let aeadCRCRate = best { rate(batch: batch) { for _ in 0..<batch { aead(crc: true) } } }
        // A fresh sealer/opener per measurement: sequence numbers never repeat inside one.
        let recordRate = best {
            guard let sealer = try? RecordSealer(trafficSecret: key, direction: .initiatorToResponder, suite: suite),
                  let opener = try? RecordOpener(trafficSecret: key, direction: .initiatorToResponder, suite: suite) else { return 0 }
            return rate(batch: batch) {
                for _ in 0..<batch {
                    if let frame = try? sealer.seal(type: .data, plaintext: plaintext), let result = try? opener.open(frame) {
                        sink &+= UInt64(result.plaintext.count)
                    }
                }
            }
        }
        recordRates[suite, default: [:]][size] = recordRate
        let mb = Double(size) / 1e6
        print("\(pad(suite.description, 17)) \(pad("\(size)", 8)) \(pad(fmt(aeadRate, 0), 13)) \(pad(fmt(aeadRate * mb, 0), 10)) \(pad(fmt(recordRate, 0), 15)) \(pad(fmt(recordRate * mb, 0), 12)) \(pad(fmt(recordRate / aeadRate), 6)) \(pad(fmt(aeadCRCRate, 0), 12)) \(pad(fmt(recordRate / aeadCRCRate), 6))")
    }
}
if let aes = recordRates[.aes256GCM], let chacha = recordRates[.chacha20Poly1305] {
    print("AES-256-GCM records / ChaCha20-Poly1305 records, pairs per second: "
          + [64, 1024, 16384].map { "\($0) B \(fmt((aes[$0] ?? 0) / (chacha[$0] ?? 1)))x" }.joined(separator: ", "))
} else {
    print("AES-256-GCM: not available on this CPU (no AES-NI/PCLMULQDQ); records use ChaCha20-Poly1305")
}
print("")
print("goal: record ratio >= 0.85 at 1024 B")

// The handshake: CPU time per side against the sum of its primitive operations, timed alone here.
func cpuSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
}

/// Median thread CPU time of `body` over `rounds` runs.
func timed(_ rounds: Int, _ body: () throws -> Void) rethrows -> Double {
    var samples: [Double] = []
    for _ in 0..<rounds {
        let start = cpuSeconds()
        try body()
        samples.append(cpuSeconds() - start)
    }
    return median(samples)
}

do {
    let rounds = 300
    let alice = try Identity(generating: try IdentityName("alice"))
    let bob = try Identity(generating: try IdentityName("bob"))
    let responder = HandshakeResponder<Int>(identity: bob)
    var initiatorTimes: [Double] = [], responderTimes: [Double] = []
    for round in 0..<rounds + 10 {
        var start = cpuSeconds()
        let initiator = try HandshakeInitiator(identity: alice, responderName: bob.name, responderPublicKey: bob.publicKey, now: 0)
        let first = initiator.takeDatagrams()
        var initiatorTime = cpuSeconds() - start
        start = cpuSeconds()
        for datagram in first { try responder.receive(datagram, from: round, now: 0) }
        let second = responder.takeDatagrams()
        var responderTime = cpuSeconds() - start
        start = cpuSeconds()
        for (_, datagram) in second { try initiator.receive(datagram, now: 0) }
        let third = initiator.takeDatagrams()
        initiatorTime += cpuSeconds() - start
        start = cpuSeconds()
        for datagram in third { try responder.receive(datagram, from: round, now: 0) }
        let sessions = responder.takeSessions()
        _ = responder.takeDatagrams()
        responderTime += cpuSeconds() - start
        guard sessions.count == 1, initiator.session != nil else { print("handshake failed"); exit(1) }
        if round >= 10 {  // the first ones warm up caches and the allocator
            initiatorTimes.append(initiatorTime)
            responderTimes.append(responderTime)
        }
    }
    let message = [UInt8](repeating: 3, count: 70)
    let signature = try alice.sign(message)
    let x25519Pair = timed(rounds) {
        var secret = [UInt8](repeating: 0, count: 32), publicKey = [UInt8](repeating: 0, count: 32)
        randombytes_buf(&secret, 32)
        sink &+= UInt64(crypto_scalarmult_base(&publicKey, secret) + 1)
    }
    var peer = [UInt8](repeating: 0, count: 32), mine = [UInt8](repeating: 9, count: 32)
    _ = crypto_scalarmult_base(&peer, [UInt8](repeating: 5, count: 32))
    let x25519Shared = timed(rounds) { sink &+= UInt64(crypto_scalarmult(&mine, mine, peer) + 1) }
    let kemKey = try MLKEM768.PrivateKey()
    let encapsulated = try kemKey.publicKey.encapsulate()
    let kemGenerate = try timed(rounds) { sink &+= UInt64(try MLKEM768.PrivateKey().publicKey.rawRepresentation.count) }
    let kemEncapsulate = try timed(rounds) {
        // As the handshake does: the peer's key arrives as bytes.
        let key = try MLKEM768.PublicKey(rawRepresentation: kemKey.publicKey.rawRepresentation)
        sink &+= UInt64(try key.encapsulate().encapsulated.count)
    }
    let kemDecapsulate = try timed(rounds) {
        sink &+= UInt64(try kemKey.decapsulate(encapsulated.encapsulated).bitCount)
    }
    let sign = try timed(rounds) { sink &+= UInt64(try alice.sign(message).count) }
    let verify = timed(rounds) {
        sink &+= Identity.isValidSignature(signature, of: message, publicKey: alice.publicKey) ? 1 : 0
    }
    let initiatorSum = x25519Pair + x25519Shared + kemGenerate + kemDecapsulate + verify + sign
    let responderSum = x25519Pair + x25519Shared + kemEncapsulate + sign + verify
    let us = { (seconds: Double) in fmt(seconds * 1e6, 0) }
    print("")
    print("Handshake CPU time per side (median of \(rounds), thread CPU time) vs the sum of its primitive")
    print("operations, each timed alone here (median of \(rounds)):")
    print("  X25519 key pair \(us(x25519Pair)) us, X25519 shared \(us(x25519Shared)) us, ML-KEM-768 key pair \(us(kemGenerate)) us,")
    print("  encapsulate \(us(kemEncapsulate)) us, decapsulate \(us(kemDecapsulate)) us, ML-DSA-65 sign \(us(sign)) us, verify \(us(verify)) us")
    print("  initiator: key pairs + shared + ML-KEM decapsulate + verify + sign; responder: key pair + shared + encapsulate + sign + verify")
    print("")
    print("\(pad("side", 10)) \(pad("handshake us", 13)) \(pad("primitives us", 14)) \(pad("ratio", 6))")
    let initiatorMedian = median(initiatorTimes), responderMedian = median(responderTimes)
    print("\(pad("initiator", 10)) \(pad(us(initiatorMedian), 13)) \(pad(us(initiatorSum), 14)) \(pad(fmt(initiatorMedian / initiatorSum), 6))")
    print("\(pad("responder", 10)) \(pad(us(responderMedian), 13)) \(pad(us(responderSum), 14)) \(pad(fmt(responderMedian / responderSum), 6))")
    print("")
    print("goal: ratio <= 1.2 on each side")
} catch {
    print("handshake bench failed: \(error)")
    exit(1)
}
ConnectionBench.run()
DHTChurnBench.run()
if sink == 42 { print("") }  // keep the work observable
