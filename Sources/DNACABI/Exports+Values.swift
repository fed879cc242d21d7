import CDNATransport
import DNACrypto
import DNADHT
import DNANet
import DNATransport
import DNAWire
import Glibc

// dht_values.h: signed values at any DHT key (docs/PROTOCOL.md §10).

/// Holders keep a newer value of the writer's slot.
struct Superseded: Error {}

/// Data above DHT_VALUE_MAX_DATA.
struct TooLarge: Error {}

/// Holders answered a put and refused it for reasons of their own (over the writer's quota, busy,
/// invalid to them), none storing it.
struct ValueRefused: Error, CustomStringConvertible { var description: String }

/// timeout_ms as the value calls take it: 0 means 30 s; negative is refused.
private func valueTimeout(_ milliseconds: Int32) throws -> Int {
    guard milliseconds >= 0 else { throw InvalidArgument("timeout_ms is negative") }
    return milliseconds == 0 ? 30_000 : Int(milliseconds)
}

/// The 20 key bytes at `key`.
private func valueKey(_ key: UnsafePointer<UInt8>?) throws -> [UInt8] {
    guard let key else { throw InvalidArgument("key is NULL") }
    return Array(UnsafeBufferPointer(start: key, count: SignedValue.keySize))
}

@_cdecl("dht_value_key")
public func dht_value_key(_ text: UnsafePointer<CChar>?, _ keyOut: UnsafeMutablePointer<UInt8>?) -> Int32 {
    cCall("dht_value_key") {
        guard let text else { throw InvalidArgument("text is NULL") }
        let out = try CArg.required(keyOut, "key_out")
        let digest = Sodium.sha256(UnsafeRawBufferPointer(start: text, count: strlen(text)))
        for index in 0..<SignedValue.keySize { out[index] = digest[index] }
    }
}

/// A write's arguments, checked: the service, the signer's identity, the key and the timeout (ms).
private struct Write {
    var service: DHTService
    var signer: Identity
    var key: [UInt8]
    var timeout: Int

    init(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, data: [UInt8], lifetime: UInt32,
         timeout: Int32, blocking: Bool) throws {
        service = try Handle<CDHT>.borrow(context, "ctx").service
        guard !blocking || !service.isLoopThread else {
            throw InvalidArgument("called on the context's I/O thread (a callback): it would wait for itself")
        }
        let name = try CArg.identity(identity)
        self.key = try valueKey(key)
        self.timeout = try valueTimeout(timeout)
        guard lifetime >= 1, lifetime <= SignedValue.maximumLifetime else {
            throw InvalidArgument("lifetime_s is \(lifetime): 1 to \(SignedValue.maximumLifetime)")
        }
        guard data.count <= SignedValue.maximumDataSize else { throw TooLarge() }
        signer = try IdentityStore(dataDirectory: service.dataDirectory).load(name, create: true)
        guard service.statistics != nil else { throw Closed() }
    }
}

/// Signs and puts a value or a tombstone for the C calls; the result's error as the header says.
private func write(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, slot: UInt32,
                   data: [UInt8], type: UInt16, lifetime: UInt32, flags: UInt8, timeout: Int32,
                   holdersOut: UnsafeMutablePointer<Int32>?, sequenceOut: UnsafeMutablePointer<UInt64>?) throws {
    let checked = try Write(context, identity, key, data: data, lifetime: lifetime, timeout: timeout, blocking: true)
    try write(checked, slot: slot, data: data, type: type, lifetime: lifetime, flags: flags, holdersOut: holdersOut,
              sequenceOut: sequenceOut)
}

/// Signs and puts a value with the checked arguments (its timeout what is left of the call's).
private func write(_ checked: Write, slot: UInt32, data: [UInt8], type: UInt16, lifetime: UInt32, flags: UInt8,
                   holdersOut: UnsafeMutablePointer<Int32>?, sequenceOut: UnsafeMutablePointer<UInt64>?) throws {
    let (service, signer, key, milliseconds) = (checked.service, checked.signer, checked.key, checked.timeout)
    guard let (result, sequence) = try service.writeValue(as: signer, key: key, slot: slot, data: data, type: type,
                                                          lifetime: lifetime, flags: flags, timeout: milliseconds) else {
        if service.statistics == nil { throw Closed() }
        if (service.routingTableSize ?? 0) == 0 { throw Unreachable() }
        throw Timeout()
    }
    holdersOut?.pointee = Int32(clamping: result.stored)
    sequenceOut?.pointee = sequence
    if let failure = putFailure(result) { throw failure }
}

/// Why a put failed, nil when a holder stored it: superseded, refused for its time, refused by
/// holders that answered (quota, busy, invalid), else no holder answered.
private func putFailure(_ result: ValuePutResult) -> (any Error)? {
    guard result.holders.isEmpty else { return nil }
    if result.superseded > 0 { return Superseded() }
    if !result.clockOffsets.isEmpty { return ClockSkew() }
    if result.quota + result.busy + result.invalid > 0 {
        return ValueRefused(description: "holders refused it: \(result.quota) over the writer's quota, \(result.busy) busy, "
                                         + "\(result.invalid) invalid")
    }
    return Unreachable()
}

/// Why a get failed, nil when it did (also with no value): no holder listed and none of the values
/// is this node's own, so the network did not answer (not "no value at this key").
private func getFailure(_ result: ValueGetResult) -> (any Error)? {
    result.listed == 0 && result.values.isEmpty && result.asked > 0 ? Unreachable() : nil
}

@_cdecl("dht_value_put")
public func dht_value_put(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, _ slot: UInt32,
                          _ data: UnsafePointer<UInt8>?, _ dataLength: Int, _ type: UInt16, _ lifetime: UInt32, _ timeout: Int32,
                          _ holdersOut: UnsafeMutablePointer<Int32>?, _ sequenceOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_put") {
        let bytes = try CArg.bytes(data, dataLength, "data")
        guard bytes.count <= SignedValue.maximumDataSize else { throw TooLarge() }
        try write(context, identity, key, slot: slot, data: Array(bytes), type: type, lifetime: lifetime, flags: 0, timeout: timeout,
                  holdersOut: holdersOut, sequenceOut: sequenceOut)
    }
}

/// The recipient has published no inbox keys (its inbox key record, §8.1) that can be sealed to.
struct NoSealingKeys: Error, CustomStringConvertible { var description: String }

@_cdecl("dht_value_put_sealed")
public func dht_value_put_sealed(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ recipient: UnsafePointer<CChar>?,
                                 _ key: UnsafePointer<UInt8>?, _ slot: UInt32, _ data: UnsafePointer<UInt8>?, _ dataLength: Int,
                                 _ type: UInt16, _ lifetime: UInt32, _ timeout: Int32, _ holdersOut: UnsafeMutablePointer<Int32>?,
                                 _ sequenceOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_put_sealed") {
        let started = monotonicMilliseconds()
        let plaintext = Array(try CArg.bytes(data, dataLength, "data"))
        guard plaintext.count <= SealedValueData.maximumPlaintext else { throw TooLarge() }
        let reader = try CArg.identity(recipient)
        var checked = try Write(context, identity, key, data: [], lifetime: lifetime, timeout: timeout, blocking: true)
        if reader != checked.signer.name, !checked.service.waitForContacts(timeout: checked.timeout) {
            if checked.service.statistics == nil { throw Closed() }
            throw Unreachable()
        }
        let sealed: [UInt8]
        do {
            sealed = try checked.service.seal(plaintext, to: reader, as: checked.signer, key: checked.key, slot: slot, type: type,
                                              timeout: checked.timeout - Int(monotonicMilliseconds() - started))
        } catch let error as DHTService.SealError {
            throw sealFailure(error)
        }
        checked.timeout -= Int(monotonicMilliseconds() - started)
        guard checked.timeout > 0 else { throw Timeout() }
        try write(checked, slot: slot, data: sealed, type: type, lifetime: lifetime, flags: SignedValue.sealedFlag,
                  holdersOut: holdersOut, sequenceOut: sequenceOut)
    }
}

/// The error a sealed put reports when its data was not sealed.
private func sealFailure(_ error: DHTService.SealError) -> any Error {
    switch error {
    case .noPublishedKeys(let name): NoSealingKeys(description: "\(name) has published no inbox keys to seal to")
    case .timedOut: Timeout()
    case .stopped: Closed()
    case .refused(let cause): cause
    }
}

@_cdecl("dht_value_open")
public func dht_value_open(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ value: UnsafePointer<dht_value_t>?,
                           _ dataOut: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?, _ lengthOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dht_value_open") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let name = try CArg.identity(identity)
        guard let value else { throw InvalidArgument("value is NULL") }
        let out = try CArg.required(dataOut, "data_out")
        let length = try CArg.required(lengthOut, "len_out")
        out.pointee = nil
        length.pointee = 0
        let fields = value.pointee
        guard fields.flags & UInt8(DHT_VALUE_FLAG_SEALED) != 0, fields.flags & UInt8(DHT_VALUE_FLAG_TOMBSTONE) == 0 else {
            throw InvalidArgument("the value is not sealed (flags \(fields.flags))")
        }
        guard fields.data_len <= SignedValue.maximumDataSize else { throw InvalidArgument("data_len \(fields.data_len)") }
        let sealed = Array(try CArg.bytes(fields.data, fields.data_len, "value->data"))
        let key = withUnsafeBytes(of: fields.key) { Array($0) }
        let signerID = withUnsafeBytes(of: fields.signer_id) { Array($0) }
        let reader = try IdentityStore(dataDirectory: service.dataDirectory).load(name, create: false)
        let plaintext = try SealedValueData.open(sealed, with: try InboxKeys(identity: reader), key: key, signerID: signerID,
                                                 slot: fields.slot, type: fields.type)
        out.pointee = try mallocCopy(plaintext)
        length.pointee = plaintext.count
    }
}

@_cdecl("dht_value_publish_keys")
public func dht_value_publish_keys(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ timeout: Int32,
                                   _ holdersOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    cCall("dht_value_publish_keys") {
        holdersOut?.pointee = 0
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard !service.isLoopThread else { throw InvalidArgument("called on the context's I/O thread (a callback): it would wait for itself") }
        let name = try CArg.identity(identity)
        let milliseconds = try valueTimeout(timeout)
        let owner = try IdentityStore(dataDirectory: service.dataDirectory).load(name, create: true)
        let started = monotonicMilliseconds()
        guard service.waitForContacts(timeout: milliseconds) else {
            if service.statistics == nil { throw Closed() }
            throw Unreachable()
        }
        let left = milliseconds - Int(monotonicMilliseconds() - started)
        guard left > 0, let (stored, taken) = try service.publishInboxKeys(of: owner, timeout: left) else {
            if service.statistics == nil { throw Closed() }
            throw Timeout()
        }
        holdersOut?.pointee = Int32(clamping: stored)
        // As for entries (§5.2): the name is the other key's where more holders keep that one.
        if taken > stored { throw NameTaken() }
        guard stored > 0 else { throw Unreachable() }
    }
}

@_cdecl("dht_value_delete")
public func dht_value_delete(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, _ slot: UInt32,
                             _ lifetime: UInt32, _ timeout: Int32, _ holdersOut: UnsafeMutablePointer<Int32>?) -> Int32 {
    cCall("dht_value_delete") {
        try write(context, identity, key, slot: slot, data: [], type: 0, lifetime: lifetime == 0 ? SignedValue.maximumLifetime : lifetime,
                  flags: SignedValue.tombstoneFlag, timeout: timeout, holdersOut: holdersOut, sequenceOut: nil)
    }
}

@_cdecl("dht_value_get")
public func dht_value_get(_ context: OpaquePointer?, _ key: UnsafePointer<UInt8>?, _ signerID: UnsafePointer<UInt8>?, _ since: UInt64,
                          _ timeout: Int32, _ valuesOut: UnsafeMutablePointer<UnsafeMutablePointer<dht_value_t>?>?,
                          _ countOut: UnsafeMutablePointer<Int>?) -> Int32 {
    cCall("dht_value_get") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        let values = try CArg.required(valuesOut, "values_out")
        let count = try CArg.required(countOut, "count_out")
        values.pointee = nil
        count.pointee = 0
        guard !service.isLoopThread else { throw InvalidArgument("called on the context's I/O thread (a callback): it would wait for itself") }
        let key = try valueKey(key)
        let signer = signerID.map { Array(UnsafeBufferPointer(start: $0, count: 32)) }
        let milliseconds = try valueTimeout(timeout)
        let started = monotonicMilliseconds()
        guard let nodeKey = NodeID(bytes: key) else { throw InvalidArgument("key") }
        guard service.waitForContacts(timeout: milliseconds) else {
            if service.statistics == nil { throw Closed() }
            throw Unreachable()
        }
        let left = milliseconds - Int(monotonicMilliseconds() - started)
        guard left > 0, let result = service.getValues(nodeKey, query: ValueQuery(signer: signer, since: since), timeout: left) else {
            if service.statistics == nil { throw Closed() }
            throw Timeout()
        }
        if let failure = getFailure(result) { throw failure }
        (values.pointee, count.pointee) = try ValueArray.make(result.values)
    }
}

/// An asynchronous operation's C callback and its user data (dht_value_done_fn), called once on the
/// loop thread.
private struct DoneCallback: @unchecked Sendable {
    let function: dht_value_done_fn
    let userData: UnsafeMutableRawPointer?
    /// The operation's id and the sequence it writes, set once the service gave them (the outcome
    /// can come before: then it waits).
    let started = OperationStart()

    /// Calls the function with the outcome's code and results, as the blocking form would return them.
    func finish(_ outcome: DHTService.ValueOutcome) {
        let (id, sequence) = started.wait()
        let code: Int32
        switch outcome {
        case .put(let result):
            code = putFailure(result).map { DNAErrorCode($0).rawValue } ?? DNAErrorCode.ok.rawValue
            function(id, code, Int32(clamping: result.stored), sequence, nil, 0, userData)
            return
        case .got(let result):
            if let failure = getFailure(result) {
                code = DNAErrorCode(failure).rawValue
            } else if let (array, count) = try? ValueArray.make(result.values) {
                function(id, DNAErrorCode.ok.rawValue, 0, 0, array, count, userData)
                free(array)
                return
            } else {
                code = DNAErrorCode.noMemory.rawValue
            }
        case .invalid(let error): code = DNAErrorCode(error).rawValue
        case .notSealed(let error): code = DNAErrorCode(sealFailure(error)).rawValue
        case .noContacts: code = DNAErrorCode.unreachable.rawValue
        case .timedOut: code = DNAErrorCode.timeout.rawValue
        case .stopped: code = DNAErrorCode.closed.rawValue
        }
        function(id, code, 0, 0, nil, 0, userData)
    }
}

/// An operation's id and sequence (0 for a get), given to the callback once known (the service may
/// end the operation on its loop thread before the call that started it has them).
private final class OperationStart: @unchecked Sendable {
    private let monitor = Monitor()
    private var value: (id: UInt64, sequence: UInt64)?

    func set(_ id: UInt64, sequence: UInt64 = 0) {
        monitor.locked { value = (id, sequence) }
        monitor.broadcast()
    }

    func wait() -> (id: UInt64, sequence: UInt64) { monitor.wait(milliseconds: Int(Int32.max)) { value } ?? (0, 0) }
}

/// Starts a write without waiting (dht_value_put_async, dht_value_delete_async).
private func writeAsync(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, slot: UInt32,
                        data: [UInt8], type: UInt16, lifetime: UInt32, flags: UInt8, timeout: Int32, function: dht_value_done_fn?,
                        userData: UnsafeMutableRawPointer?, opOut: UnsafeMutablePointer<UInt64>?,
                        sequenceOut: UnsafeMutablePointer<UInt64>?) throws {
    guard let function else { throw InvalidArgument("fn is NULL") }
    let checked = try Write(context, identity, key, data: data, lifetime: lifetime, timeout: timeout, blocking: false)
    let callback = DoneCallback(function: function, userData: userData)
    guard let (id, sequence) = try checked.service.startWriteValue(as: checked.signer, key: checked.key, slot: slot, data: data, type: type,
                                                                  lifetime: lifetime, flags: flags, timeout: checked.timeout,
                                                                  finish: { [callback] outcome in callback.finish(outcome) })
    else { throw Closed() }
    opOut?.pointee = id
    sequenceOut?.pointee = sequence
    callback.started.set(id, sequence: sequence)
}

@_cdecl("dht_value_put_async")
public func dht_value_put_async(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?, _ slot: UInt32,
                                _ data: UnsafePointer<UInt8>?, _ dataLength: Int, _ type: UInt16, _ lifetime: UInt32, _ timeout: Int32,
                                _ function: dht_value_done_fn?, _ userData: UnsafeMutableRawPointer?,
                                _ opOut: UnsafeMutablePointer<UInt64>?, _ sequenceOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_put_async") {
        let bytes = try CArg.bytes(data, dataLength, "data")
        guard bytes.count <= SignedValue.maximumDataSize else { throw TooLarge() }
        try writeAsync(context, identity, key, slot: slot, data: Array(bytes), type: type, lifetime: lifetime, flags: 0, timeout: timeout,
                       function: function, userData: userData, opOut: opOut, sequenceOut: sequenceOut)
    }
}

@_cdecl("dht_value_put_sealed_async")
public func dht_value_put_sealed_async(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ recipient: UnsafePointer<CChar>?,
                                       _ key: UnsafePointer<UInt8>?, _ slot: UInt32, _ data: UnsafePointer<UInt8>?, _ dataLength: Int,
                                       _ type: UInt16, _ lifetime: UInt32, _ timeout: Int32, _ function: dht_value_done_fn?,
                                       _ userData: UnsafeMutableRawPointer?, _ opOut: UnsafeMutablePointer<UInt64>?,
                                       _ sequenceOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_put_sealed_async") {
        let plaintext = Array(try CArg.bytes(data, dataLength, "data"))
        guard plaintext.count <= SealedValueData.maximumPlaintext else { throw TooLarge() }
        guard let function else { throw InvalidArgument("fn is NULL") }
        let reader = try CArg.identity(recipient)
        let checked = try Write(context, identity, key, data: [], lifetime: lifetime, timeout: timeout, blocking: false)
        let callback = DoneCallback(function: function, userData: userData)
        guard let (id, sequence) = try checked.service.startSealedWrite(
            as: checked.signer, to: reader, key: checked.key, slot: slot, data: plaintext, type: type, lifetime: lifetime,
            timeout: checked.timeout, finish: { [callback] outcome in callback.finish(outcome) })
        else { throw Closed() }
        opOut?.pointee = id
        sequenceOut?.pointee = sequence
        callback.started.set(id, sequence: sequence)
    }
}

@_cdecl("dht_value_delete_async")
public func dht_value_delete_async(_ context: OpaquePointer?, _ identity: UnsafePointer<CChar>?, _ key: UnsafePointer<UInt8>?,
                                   _ slot: UInt32, _ lifetime: UInt32, _ timeout: Int32, _ function: dht_value_done_fn?,
                                   _ userData: UnsafeMutableRawPointer?, _ opOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_delete_async") {
        try writeAsync(context, identity, key, slot: slot, data: [], type: 0,
                       lifetime: lifetime == 0 ? SignedValue.maximumLifetime : lifetime, flags: SignedValue.tombstoneFlag,
                       timeout: timeout, function: function, userData: userData, opOut: opOut, sequenceOut: nil)
    }
}

@_cdecl("dht_value_get_async")
public func dht_value_get_async(_ context: OpaquePointer?, _ key: UnsafePointer<UInt8>?, _ signerID: UnsafePointer<UInt8>?,
                                _ since: UInt64, _ timeout: Int32, _ function: dht_value_done_fn?, _ userData: UnsafeMutableRawPointer?,
                                _ opOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_value_get_async") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard let function else { throw InvalidArgument("fn is NULL") }
        guard let nodeKey = NodeID(bytes: try valueKey(key)) else { throw InvalidArgument("key") }
        let milliseconds = try valueTimeout(timeout)
        let signer = signerID.map { Array(UnsafeBufferPointer(start: $0, count: 32)) }
        let callback = DoneCallback(function: function, userData: userData)
        guard let id = service.startValueGet(nodeKey, query: ValueQuery(signer: signer, since: since), timeout: milliseconds,
                                             finish: { [callback] outcome in callback.finish(outcome) }) else { throw Closed() }
        opOut?.pointee = id
        callback.started.set(id)
    }
}

/// A C callback and its user data, called on the loop thread.
private struct ValueCallback: @unchecked Sendable {
    let function: dht_value_fn
    let userData: UnsafeMutableRawPointer?
}

@_cdecl("dht_listen")
public func dht_listen(_ context: OpaquePointer?, _ key: UnsafePointer<UInt8>?, _ signerID: UnsafePointer<UInt8>?, _ since: UInt64,
                       _ function: dht_value_fn?, _ userData: UnsafeMutableRawPointer?, _ listenIDOut: UnsafeMutablePointer<UInt64>?) -> Int32 {
    cCall("dht_listen") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard let nodeKey = NodeID(bytes: try valueKey(key)) else { throw InvalidArgument("key") }
        guard let function else { throw InvalidArgument("fn is NULL") }
        let out = try CArg.required(listenIDOut, "listen_id_out")
        let signer = signerID.map { Array(UnsafeBufferPointer(start: $0, count: 32)) }
        let callback = ValueCallback(function: function, userData: userData)
        let listenID = service.listen(nodeKey, query: ValueQuery(signer: signer, since: since)) { [callback] id, event in
            let (code, value): (Int32, SignedValue) = switch event {
            case .changed(let value): (DHT_VALUE_CHANGED, value)
            case .expired(let value): (DHT_VALUE_EXPIRED, value)
            }
            guard let (array, _) = try? ValueArray.make([value]), let array else { return }
            callback.function(id, code, array, callback.userData)
            free(array)
        }
        guard let listenID else { throw Closed() }
        out.pointee = listenID
    }
}

@_cdecl("dht_listen_cancel")
public func dht_listen_cancel(_ context: OpaquePointer?, _ listenID: UInt64) -> Int32 {
    cCall("dht_listen_cancel") {
        let service = try Handle<CDHT>.borrow(context, "ctx").service
        guard service.cancelListen(listenID) else { throw NothingQueued() }
    }
}

/// The array dht_value_get returns: the structs, then every value's data, in one malloc'd block the
/// caller frees with dna_buffer_free.
enum ValueArray {
    static func make(_ values: [SignedValue]) throws -> (UnsafeMutablePointer<dht_value_t>?, Int) {
        guard !values.isEmpty else { return (nil, 0) }
        let head = MemoryLayout<dht_value_t>.stride * values.count
        let total = head + values.reduce(0) { $0 + $1.data.count }
        guard let block = malloc(total) else { throw OutOfMemory() }
        let array = block.bindMemory(to: dht_value_t.self, capacity: values.count)
        var data = block.advanced(by: head).assumingMemoryBound(to: UInt8.self)
        for (index, value) in values.enumerated() {
            var out = dht_value_t()
            withUnsafeMutableBytes(of: &out.key) { $0.copyBytes(from: value.key.prefix(SignedValue.keySize)) }
            withUnsafeMutableBytes(of: &out.signer) { buffer in
                buffer.copyBytes(from: value.signer.utf8.prefix(buffer.count - 1))
                buffer[min(value.signer.utf8.count, buffer.count - 1)] = 0
            }
            withUnsafeMutableBytes(of: &out.signer_id) { $0.copyBytes(from: value.signerID) }
            out.slot = value.slot
            out.sequence = value.sequence
            out.created = value.created
            out.lifetime = value.lifetime
            out.type = value.type
            out.flags = value.flags
            out.data_len = value.data.count
            if value.data.isEmpty {
                out.data = nil
            } else {
                value.data.withUnsafeBufferPointer { source in
                    if let base = source.baseAddress { data.update(from: base, count: source.count) }
                }
                out.data = UnsafePointer(data)
                data = data.advanced(by: value.data.count)
            }
            (array + index).initialize(to: out)
        }
        return (array, values.count)
    }
}

/// The dht_context_t handles of transport contexts' DHTs (transport_get_dht): one per transport
/// context, freed by transport_free.
final class TransportDHTs: @unchecked Sendable {
    static let shared = TransportDHTs()
    private var handles: [ObjectIdentifier: OpaquePointer] = [:]
    private let lock = PThreadLock()

    func handle(for node: TransportNode) -> OpaquePointer {
        lock.withLock {
            if let handle = handles[ObjectIdentifier(node)] { return handle }
            let handle = Handle<CDHT>.make(CDHT(node.dht, owned: false))
            handles[ObjectIdentifier(node)] = handle
            return handle
        }
    }

    func release(_ node: TransportNode) {
        guard let handle = lock.withLock({ handles.removeValue(forKey: ObjectIdentifier(node)) }) else { return }
        Handle<CDHT>.free(handle)
    }
}

@_cdecl("transport_get_dht")
public func transport_get_dht(_ context: OpaquePointer?) -> OpaquePointer? {
    var handle: OpaquePointer?
    _ = cCall("transport_get_dht") {
        let node = try Handle<TransportNode>.borrow(context, "ctx")
        let made = TransportDHTs.shared.handle(for: node)
        // A transport_free between the borrow and the handle's making released nothing: the context
        // is gone now, so the handle goes too (transport_free makes the context unborrowable before
        // it releases the handle, so one of the two releases it).
        guard (try? Handle<TransportNode>.borrow(context, "ctx")) === node else {
            TransportDHTs.shared.release(node)
            throw Closed()
        }
        handle = made
    }
    return handle
}
