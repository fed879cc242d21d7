"""dnatransport: Python binding for libdnatransport (peer-to-peer transport with a C ABI).

Every C function is reached through a Pythonic call here; failures raise DNAError carrying the
library's code and its dna_strerror text.
"""
import collections
import concurrent.futures
import ctypes
import enum
import os
import select
import threading
from dataclasses import dataclass

from . import _native
from ._native import lib

__all__ = ["DNAError", "ErrorCode", "MessageType", "LogLevel", "FrameHeader", "version", "version_number",
           "strerror", "last_error", "set_log_handler", "encode_frame", "decode_frame", "HEADER_SIZE",
           "MAX_PAYLOAD", "library_path", "Identity", "PeerEntry", "fingerprint", "IDENTITY_MAX",
           "PUBLIC_KEY_SIZE", "SIGNATURE_SIZE", "Initiator", "Responder", "Session", "MAX_DATAGRAM",
           "SESSION_OVERHEAD", "DHT", "CandidateType", "Candidate", "NatTraversal",
           "NAT_MAX_CANDIDATES", "NAT_MAX_DATAGRAM", "Value", "value_key", "VALUE_MAX_DATA", "VALUE_MAX_SEALED_DATA", "VALUE_MAX_LIFETIME",
           "VALUE_FLAG_TOMBSTONE", "VALUE_FLAG_SEALED", "Listener"]


class ErrorCode(enum.IntEnum):
    """DNA_OK and the DNA_ERR_* codes of dna_common.h."""
    OK = 0
    INVALID_ARGUMENT = -1
    NOT_FOUND = -2
    TIMEOUT = -3
    IO = -4
    PROTOCOL = -5
    CHECKSUM = -6
    BAD_SIGNATURE = -7
    BUFFER_TOO_SMALL = -8
    CLOSED = -9
    UNREACHABLE = -10
    PEER_OFFLINE = -11
    TOO_LARGE = -12
    NO_MEMORY = -13
    TRUNCATED = -14
    BAD_MAGIC = -15
    BAD_VERSION = -16
    UNKNOWN_TYPE = -17
    LENGTH_MISMATCH = -18
    INTERNAL = -19
    KEY_FILE = -20
    KEY_PERMISSIONS = -21
    BAD_ENTRY = -22
    REPLAYED = -23
    AUTHENTICATION = -24
    MISDIRECTED = -25
    NAME_TAKEN = -26
    CLOCK_SKEW = -27
    REFUSED = -28
    SUPERSEDED = -29


class MessageType(enum.IntEnum):
    """dna_message_type_t"""
    DATA = 0x0001
    ACK = 0x0002
    PING = 0x0003
    PONG = 0x0004
    PRESENCE = 0x0005
    HANDSHAKE = 0x0010      # extension: a piece of a handshake message (docs/PROTOCOL.md §4)
    HANDSHAKE_ACK = 0x0011  # extension: which pieces of a handshake message arrived
    DHT = 0x0020            # extension: a piece of a DHT message (docs/PROTOCOL.md §5)
    CLOSE = 0x0030          # extension: the sender closed the connection (docs/PROTOCOL.md §7.6)


class LogLevel(enum.IntEnum):
    """DNA_LOG_*"""
    TRACE = 0
    DEBUG = 1
    INFO = 2
    NOTICE = 3
    WARNING = 4
    ERROR = 5
    CRITICAL = 6


class DNAError(Exception):
    """A libdnatransport call failed. .code is the C code (ErrorCode when known), .message its text."""

    def __init__(self, code, context=""):
        try:
            self.code = ErrorCode(code)
        except ValueError:
            self.code = code
        self.message = strerror(code)
        self.context = context
        super().__init__(f"{context}: {self.message} ({int(code)})" if context else f"{self.message} ({int(code)})")


def _check(code, context):
    if code < 0:
        raise DNAError(code, context)
    return code


def strerror(code):
    """The library's static message for a code."""
    return lib.dna_strerror(int(code)).decode()


def last_error():
    """The code of the last failed call on this thread (ErrorCode.OK if none)."""
    code = lib.dna_last_error()
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def version():
    """The library's version string, e.g. "1.0.0"."""
    return lib.dna_version_string().decode()


def version_number():
    """major*10000 + minor*100 + patch."""
    return lib.dna_version_number()


library_path = _native.path
HEADER_SIZE = lib.p2p_frame_header_size()
MAX_PAYLOAD = lib.p2p_frame_max_payload()

_log_lock = threading.Lock()
_log_callback = None  # keeps the ctypes trampoline alive while the library may call it


def set_log_handler(handler, min_level=LogLevel.INFO):
    """Routes the library's log messages of level >= min_level to handler(level, message).
    handler=None unregisters. The handler runs on the thread that logs."""
    global _log_callback
    with _log_lock:
        if handler is None:
            lib.dna_set_log_handler(_native.LOG_FN(), int(min_level), None)
            _log_callback = None
            return

        def trampoline(level, message, _user_data):
            try:
                level = LogLevel(level)
            except ValueError:
                pass
            handler(level, message.decode("utf-8", "replace"))

        callback = _native.LOG_FN(trampoline)
        lib.dna_set_log_handler(callback, int(min_level), None)
        _log_callback = callback


def take_buffer(pointer, length):
    """Copies a buffer the library returned and frees it with dna_buffer_free, even on error."""
    try:
        return ctypes.string_at(pointer, length) if length else b""
    finally:
        lib.dna_buffer_free(pointer)


@dataclass(frozen=True)
class FrameHeader:
    """A decoded dna_frame_header_t."""
    magic: int
    version: int
    type: int
    sequence: int
    payload_length: int
    checksum: int
    reserved: bytes


def _bytes_arg(data):
    """(buffer, pointer) for bytes-like input; the buffer must stay alive while the pointer is used.
    The pointer is the array itself (ctypes passes it where a uint8_t * is declared): ctypes.cast
    made each copy part of a reference cycle (the array's _objects held the array), freed only when
    the cyclic collector ran, which a loop of sends rarely triggers (issue 16: 268 MB resident after
    256 sends of 1 MiB)."""
    data = bytes(data)
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data) if data else None
    return buffer, buffer


def encode_frame(type, sequence, payload=b""):
    """A DNA frame (header + payload) as bytes. type: MessageType or its value; sequence: 0..2^32-1."""
    if not 0 <= int(sequence) <= 0xFFFFFFFF:
        raise DNAError(ErrorCode.INVALID_ARGUMENT, "encode_frame: sequence out of range")
    if not 0 <= int(type) <= 0xFFFF:
        raise DNAError(ErrorCode.UNKNOWN_TYPE, "encode_frame: type out of range")
    keep, pointer = _bytes_arg(payload)
    size = HEADER_SIZE + (len(keep) if keep is not None else 0)
    out = (ctypes.c_uint8 * size)()
    written = ctypes.c_size_t(0)
    _check(lib.p2p_frame_encode(int(type), int(sequence), pointer, len(keep) if keep is not None else 0,
                                ctypes.cast(out, _native.u8p), size, ctypes.byref(written)), "encode_frame")
    return bytes(out[:written.value])


def decode_frame(frame, max_payload=None):
    """(FrameHeader, payload) of one frame that fills `frame` exactly. max_payload: the decoder's limit
    (default MAX_PAYLOAD, 16 MiB). Raises DNAError (TRUNCATED, BAD_MAGIC, BAD_VERSION, UNKNOWN_TYPE,
    TOO_LARGE, LENGTH_MISMATCH, CHECKSUM)."""
    data = bytes(frame)
    buffer = (ctypes.c_uint8 * max(1, len(data))).from_buffer_copy(data.ljust(1, b"\0"))
    header = _native.FrameHeaderC()
    body = _native.u8p()
    pointer = ctypes.cast(buffer, _native.u8p)
    if max_payload is None:
        code = lib.p2p_frame_decode(pointer, len(data), ctypes.byref(header), ctypes.byref(body))
    else:
        if max_payload < 0:
            raise DNAError(ErrorCode.INVALID_ARGUMENT, "decode_frame: max_payload is negative")
        code = lib.p2p_frame_decode_with_limit(pointer, len(data), int(max_payload), ctypes.byref(header),
                                               ctypes.byref(body))
    _check(code, "decode_frame")
    payload = data[HEADER_SIZE:HEADER_SIZE + header.payload_length]
    try:
        type_ = MessageType(header.type)
    except ValueError:
        type_ = header.type
    return FrameHeader(header.magic, header.version, type_, header.sequence, header.payload_length,
                       header.checksum, bytes(header.reserved)), payload


IDENTITY_MAX = lib.dna_identity_max()
PUBLIC_KEY_SIZE = lib.dna_public_key_size()
SIGNATURE_SIZE = lib.dna_signature_size()
_FINGERPRINT_SIZE = 40


def _path_arg(path):
    return None if path is None else os.fsencode(path)


def _name_arg(name):
    return name.encode("utf-8") if isinstance(name, str) else bytes(name)


class _Handle:
    """A library handle owned by a Python object. close() frees it (so do leaving a `with` block and
    garbage collection); a call after close() raises DNAError INVALID_ARGUMENT."""

    _handle = None
    _free_name = None  # the library's function that frees this kind of handle

    def _live(self):
        if not self._handle:
            raise DNAError(ErrorCode.INVALID_ARGUMENT, f"{type(self).__name__} is closed")
        return self._handle

    def close(self):
        if self._handle:
            for listener in [l for l in list(_live_listeners) if l._owner is self]:
                listener.cancel()  # its iterator ends; no event comes after the handle is freed
            getattr(lib, self._free_name)(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


class Identity(_Handle):
    """An identity's ML-DSA-65 key pair, loaded from (or created in) data_dir/identities.
    Use as a context manager or call close(); the key stays in the library."""

    _free_name = "dna_identity_free"

    def __init__(self, name, data_dir=None, create=True):
        self.name = name
        self._handle = lib.dna_identity_load(_path_arg(data_dir), _name_arg(name), 1 if create else 0)
        if not self._handle:
            raise DNAError(lib.dna_last_error(), f"Identity({name!r})")

    @property
    def public_key(self):
        """The 1952-byte ML-DSA-65 public key."""
        out = (ctypes.c_uint8 * PUBLIC_KEY_SIZE)()
        length = ctypes.c_size_t(0)
        _check(lib.dna_identity_public_key(self._live(), ctypes.cast(out, _native.u8p), PUBLIC_KEY_SIZE,
                                           ctypes.byref(length)), "public_key")
        return bytes(out[:length.value])

    @property
    def fingerprint(self):
        """The short fingerprint of the public key ("xxxx:...:xxxx")."""
        out = ctypes.create_string_buffer(_FINGERPRINT_SIZE)
        _check(lib.dna_identity_fingerprint(self._live(), out, _FINGERPRINT_SIZE), "fingerprint")
        return out.value.decode()



def fingerprint(public_key):
    """The short fingerprint of any ML-DSA-65 public key."""
    keep, pointer = _bytes_arg(public_key)
    out = ctypes.create_string_buffer(_FINGERPRINT_SIZE)
    _check(lib.dna_fingerprint(pointer, len(keep) if keep is not None else 0, out, _FINGERPRINT_SIZE), "fingerprint")
    return out.value.decode()


@dataclass
class PeerEntry:
    """The seed's dht_peer_entry_t. sign() fills public_key and signature with the identity's key."""
    identity: str
    node_id: bytes
    ip_address: str
    port: int
    last_seen: int
    public_key: bytes = b""
    signature: bytes = b""

    def _to_c(self):
        entry = _native.PeerEntryC()
        name, address = _name_arg(self.identity), self.ip_address.encode()
        if len(name) > 255 or len(address) > 45 or len(self.node_id) != 20 or len(self.public_key) > PUBLIC_KEY_SIZE \
                or len(self.signature) > SIGNATURE_SIZE or not 0 <= self.port <= 0xFFFF or not 0 <= self.last_seen < 1 << 64:
            raise DNAError(ErrorCode.BAD_ENTRY, "PeerEntry: a field does not fit dht_peer_entry_t")
        entry.identity = name
        entry.ip_address = address
        ctypes.memmove(entry.node_id, self.node_id, 20)
        entry.port = self.port
        entry.last_seen = self.last_seen
        ctypes.memmove(entry.pubkey, self.public_key, len(self.public_key))
        ctypes.memmove(entry.signature, self.signature, len(self.signature))
        return entry

    def sign(self, data_dir=None):
        """Signs with the identity's key from data_dir (created on first use)."""
        entry = self._to_c()
        _check(lib.dht_peer_entry_sign(ctypes.byref(entry), _path_arg(data_dir)), "PeerEntry.sign")
        self.public_key = bytes(entry.pubkey)
        self.signature = bytes(entry.signature)
        return self

    def verify(self):
        """Raises DNAError (BAD_SIGNATURE, BAD_ENTRY) unless the entry is valid and correctly signed."""
        _check(lib.dht_peer_entry_verify(ctypes.byref(self._to_c())), "PeerEntry.verify")

    def signed_bytes(self):
        """The canonical bytes the signature covers (docs/PROTOCOL.md)."""
        entry = self._to_c()
        capacity = lib.dht_peer_entry_signed_max()
        out = (ctypes.c_uint8 * capacity)()
        length = ctypes.c_size_t(0)
        _check(lib.dht_peer_entry_signed_bytes(ctypes.byref(entry), ctypes.cast(out, _native.u8p), capacity,
                                               ctypes.byref(length)), "PeerEntry.signed_bytes")
        return bytes(out[:length.value])


MAX_DATAGRAM = lib.dna_max_datagram()
SESSION_OVERHEAD = lib.dna_session_overhead()
_PEER_CAPACITY = 256


class _Handshake(_Handle):
    """What initiators and responders share (dna_handshake_*). Times are milliseconds of a monotonic
    clock of your choice (e.g. int(time.monotonic() * 1000)). Nothing is sent: move the datagrams."""

    _free_name = "dna_handshake_free"

    _handle = None

    def receive(self, datagram, now_ms, peer=None):
        """Feeds one datagram from the peer (peer: the sender's address string; required by a responder)."""
        keep, pointer = _bytes_arg(datagram)
        _check(lib.dna_handshake_receive(self._live(), None if peer is None else _name_arg(peer), pointer,
                                         len(keep) if keep is not None else 0, int(now_ms)), "receive")

    def datagrams(self):
        """Every datagram ready to send, as (peer, bytes); peer is "" for an initiator."""
        out = (ctypes.c_uint8 * MAX_DATAGRAM)()
        length = ctypes.c_size_t(0)
        peer = ctypes.create_string_buffer(_PEER_CAPACITY)
        ready = []
        while True:
            code = lib.dna_handshake_next_datagram(self._live(), ctypes.cast(out, _native.u8p), MAX_DATAGRAM,
                                                   ctypes.byref(length), peer, _PEER_CAPACITY)
            if code == ErrorCode.NOT_FOUND:
                return ready
            _check(code, "datagrams")
            ready.append((peer.value.decode(), bytes(out[:length.value])))

    def handle_timeout(self, now_ms):
        """Runs the timers due at now_ms (raises DNAError TIMEOUT when an initiator gives up)."""
        _check(lib.dna_handshake_handle_timeout(self._live(), int(now_ms)), "handle_timeout")

    @property
    def next_deadline(self):
        """When handle_timeout must next run (ms), or None when nothing is in progress."""
        deadline = ctypes.c_uint64(0)
        code = lib.dna_handshake_next_deadline(self._live(), ctypes.byref(deadline))
        if code == ErrorCode.NOT_FOUND:
            return None
        _check(code, "next_deadline")
        return deadline.value

    @property
    def pending(self):
        """Handshakes in progress (an initiator: 1 until its last message is delivered or it failed)."""
        count = ctypes.c_size_t(0)
        _check(lib.dna_handshake_pending(self._live(), ctypes.byref(count)), "pending")
        return count.value

    def take_session(self):
        """(peer, Session) of the next established session, or None."""
        handle = ctypes.c_void_p()
        peer = ctypes.create_string_buffer(_PEER_CAPACITY)
        code = lib.dna_handshake_take_session(self._live(), ctypes.byref(handle), peer, _PEER_CAPACITY)
        if code == ErrorCode.NOT_FOUND:
            return None
        _check(code, "take_session")
        return peer.value.decode(), Session(handle.value)



class Initiator(_Handshake):
    """A handshake to the peer whose name and ML-DSA-65 public key you know (from its DHT entry)."""

    def __init__(self, identity, peer_identity, peer_public_key, now_ms):
        keep, pointer = _bytes_arg(peer_public_key)
        self._handle = lib.dna_handshake_initiate(identity._live(), _name_arg(peer_identity), pointer,
                                                  len(keep) if keep is not None else 0, int(now_ms))
        if not self._handle:
            raise DNAError(lib.dna_last_error(), "Initiator")


class Responder(_Handshake):
    """Answers handshakes addressed to identity's key, from any number of peers (at most 128 at once)."""

    def __init__(self, identity):
        self._handle = lib.dna_handshake_respond(identity._live())
        if not self._handle:
            raise DNAError(lib.dna_last_error(), "Responder")


class Session(_Handle):
    """An established session: seal() frames for the peer, open() the peer's frames."""

    _free_name = "dna_session_free"

    def __init__(self, handle):
        self._handle = handle

    @property
    def peer(self):
        """(name, public_key) of the authenticated peer; the name is its claim (check it in the DHT)."""
        name = ctypes.create_string_buffer(IDENTITY_MAX + 1)
        key = (ctypes.c_uint8 * PUBLIC_KEY_SIZE)()
        _check(lib.dna_session_peer(self._live(), name, IDENTITY_MAX + 1, ctypes.cast(key, _native.u8p),
                                    PUBLIC_KEY_SIZE), "peer")
        return name.value.decode(), bytes(key)

    def seal(self, plaintext, type=MessageType.DATA):
        """One sealed DNA frame carrying plaintext."""
        keep, pointer = _bytes_arg(plaintext)
        size = (len(keep) if keep is not None else 0) + SESSION_OVERHEAD
        out = (ctypes.c_uint8 * size)()
        length = ctypes.c_size_t(0)
        _check(lib.dna_session_seal(self._live(), int(type), pointer, len(keep) if keep is not None else 0,
                                    ctypes.cast(out, _native.u8p), size, ctypes.byref(length)), "seal")
        return bytes(out[:length.value])

    def open(self, frame):
        """(FrameHeader, plaintext) of a frame the peer sealed. Raises DNAError AUTHENTICATION,
        REPLAYED, CHECKSUM, ..."""
        keep, pointer = _bytes_arg(frame)
        size = max(1, len(frame) - SESSION_OVERHEAD)
        out = (ctypes.c_uint8 * size)()
        length = ctypes.c_size_t(0)
        header = _native.FrameHeaderC()
        _check(lib.dna_session_open(self._live(), pointer, len(keep) if keep is not None else 0, ctypes.byref(header),
                                    ctypes.cast(out, _native.u8p), size, ctypes.byref(length)), "open")
        try:
            type_ = MessageType(header.type)
        except ValueError:
            type_ = header.type
        return FrameHeader(header.magic, header.version, type_, header.sequence, header.payload_length,
                           header.checksum, bytes(header.reserved)), bytes(out[:length.value])



VALUE_MAX_DATA = 65536
VALUE_MAX_SEALED_DATA = 64399
VALUE_MAX_LIFETIME = 30 * 24 * 3600
VALUE_FLAG_TOMBSTONE = 1
VALUE_FLAG_SEALED = 2


class Value(collections.namedtuple("Value", "key signer signer_id slot sequence created lifetime type flags data")):
    """A verified signed value (dht_value_t, docs/PROTOCOL.md §10): key (20 bytes), signer (the writer's
    name), signer_id (SHA-256 of its public key, 32 bytes), slot, sequence, created (Unix s),
    lifetime (s), type, flags (VALUE_FLAG_*), data (bytes)."""

    @property
    def is_tombstone(self):
        """The writer deleted the slot."""
        return bool(self.flags & VALUE_FLAG_TOMBSTONE)

    @property
    def is_sealed(self):
        """The data is sealed to one reader (put_sealed): open it with DHT.open / Transport.dht.open."""
        return bool(self.flags & VALUE_FLAG_SEALED)


def _value_from_c(v):
    return Value(bytes(v.key), v.signer.decode("utf-8", "replace"), bytes(v.signer_id), v.slot, v.sequence, v.created,
                 v.lifetime, v.type, v.flags, ctypes.string_at(v.data, v.data_len) if v.data_len else b"")


class Listener:
    """A subscription to the values at a key (dht_listen, docs/PROTOCOL.md §10.5). Iterating yields
    ("changed", Value) and ("expired", Value) as they come (blocking); fileno() is readable while an
    event waits, so a Listener works with select/selectors; poll() returns the waiting events without
    blocking. With a callback, each event also goes to callback(kind, value) on the library's I/O
    thread (it must return soon and not wait for the network). cancel() (or close()) stops it, as
    does closing its DHT or Transport: iteration then ends after the events already waiting."""

    def __init__(self, dht, key, callback=None, signer_id=None, since=0):
        self._dht_calls = dht
        self._owner = getattr(dht, "_transport", dht)  # the DHT or Transport whose close() ends it
        self._events = collections.deque()
        self._lock = threading.Lock()
        self._readable, self._writable = os.pipe()
        os.set_blocking(self._writable, False)
        self._callback = callback
        self._c_callback = _native.VALUE_FN(self._on_event)
        listen_id = ctypes.c_uint64(0)
        signer = None if signer_id is None else (ctypes.c_uint8 * 32).from_buffer_copy(_signer_arg(signer_id))
        try:
            _check(lib.dht_listen(dht._dht(), _key_arg(key), signer, _u(since, 64, "since"), self._c_callback, None,
                                  ctypes.byref(listen_id)), "listen")
        except BaseException:
            os.close(self._readable)
            os.close(self._writable)
            raise
        self.id = listen_id.value
        _live_listeners.add(self)  # the C callback must outlive every call the library may make

    def _on_event(self, listen_id, event, value, user_data):
        kind = "changed" if event == 0 else "expired"
        item = (kind, _value_from_c(value.contents))
        if self._callback is not None:  # first: whoever takes the event from the queue sees its callback done
            try:
                self._callback(*item)
            except Exception:  # an exception cannot cross into C: the event is still queued
                pass
        with self._lock:  # the byte and the event together: readable exactly while an event waits
            if self._writable < 0:
                return  # cancelled (from the callback itself)
            self._events.append(item)
            try:
                os.write(self._writable, b"x")
            except (BlockingIOError, OSError):
                pass

    def fileno(self):
        return self._readable

    def _drain(self):
        """Empties the pipe (under the lock, once the queue is empty)."""
        if self._readable < 0:
            return
        try:
            while select.select([self._readable], [], [], 0)[0] and os.read(self._readable, 65536):
                pass
        except OSError:
            pass

    def poll(self):
        """The events that arrived, without blocking (a list of (kind, Value))."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
            self._drain()
        return events

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            with self._lock:
                if self._events:
                    item = self._events.popleft()
                    if not self._events:
                        self._drain()
                    return item
                if self.id is None:
                    raise StopIteration
                readable = self._readable
            try:
                select.select([readable], [], [], 0.5)
            except (OSError, ValueError):
                raise StopIteration

    def cancel(self):
        """Stops the listener; no event is added after this returns."""
        with self._lock:
            listen_id, self.id = self.id, None
        if listen_id is None:
            return
        try:
            code = lib.dht_listen_cancel(self._dht_calls._dht(), listen_id)
        except DNAError:
            code = ErrorCode.OK  # the DHT (or Transport) is closed: no call comes any more
        if code not in (ErrorCode.OK, ErrorCode.NOT_FOUND, ErrorCode.CLOSED):
            with self._lock:
                self.id = listen_id  # still registered: the callback must stay alive
            raise DNAError(code, "cancel")
        with self._lock:  # no call of _on_event after dht_listen_cancel returned (or from it, now)
            readable, writable = self._readable, self._writable
            self._readable = self._writable = -1
        os.close(writable)
        os.close(readable)
        _live_listeners.discard(self)

    close = cancel

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cancel()


_live_listeners = set()

# Asynchronous operations' C callbacks: each kept until its one call has returned. A thunk cannot be
# freed inside its own call, so the last one finished on each I/O thread waits for that thread's next.
_async_lock = threading.Lock()
_async_pending = {}  # id(thunk) -> thunk
_async_retired = {}


def _start_async(kind, start):
    """Starts an asynchronous value operation: start(fn, op_id_out, sequence_out) calls the library."""
    future = concurrent.futures.Future()
    future.set_running_or_notify_cancel()
    thunk = None

    def done(op_id, result, holders, sequence, values, count, user_data):
        try:
            if result != ErrorCode.OK:
                future.set_exception(DNAError(result, kind))
            elif kind == "get":
                future.set_result([_value_from_c(values[i]) for i in range(count)])
            elif kind == "delete":
                future.set_result(holders)
            else:
                future.set_result((holders, sequence))
        finally:
            with _async_lock:
                _async_pending.pop(id(thunk), None)
                _async_retired[threading.get_ident()] = thunk

    thunk = _native.DONE_FN(done)
    op_id, sequence = ctypes.c_uint64(0), ctypes.c_uint64(0)
    with _async_lock:
        _async_pending[id(thunk)] = thunk
    try:
        _check(start(thunk, ctypes.byref(op_id), ctypes.byref(sequence)), kind)
    except BaseException:
        with _async_lock:
            _async_pending.pop(id(thunk), None)
        raise
    future.op_id, future.sequence = op_id.value, sequence.value
    return future


def _signer_arg(signer_id):
    signer_id = bytes(signer_id)
    if len(signer_id) != 32:
        raise DNAError(ErrorCode.INVALID_ARGUMENT, "signer_id is 32 bytes")
    return signer_id


def value_key(text):
    """The 20-byte key of an application's key text (str or bytes): SHA-256 truncated (dht_value_key)."""
    out = (ctypes.c_uint8 * 20)()
    if b"\0" in _name_arg(text):
        raise DNAError(ErrorCode.INVALID_ARGUMENT, "key text with a NUL byte (C text ends there)")
    _check(lib.dht_value_key(_name_arg(text), out), "value_key")
    return bytes(out)


def _u(value, bits, name):
    """value as an unsigned integer of `bits` bits, or DNAError INVALID_ARGUMENT (ctypes would mask it)."""
    value = int(value)
    if not 0 <= value < 1 << bits:
        raise DNAError(ErrorCode.INVALID_ARGUMENT, f"{name} is not a {bits}-bit unsigned integer")
    return value


def _key_arg(key):
    """A key: 20 bytes as they are, or key text (str) hashed with value_key."""
    if isinstance(key, str):
        key = value_key(key)
    key = bytes(key)
    if len(key) != 20:
        raise DNAError(ErrorCode.INVALID_ARGUMENT, "a key is 20 bytes (or key text)")
    return (ctypes.c_uint8 * 20).from_buffer_copy(key)


class _ValueCalls:
    """Signed values at any DHT key (dht_values.h), on a DHT or a Transport's DHT. Keys are 20 bytes
    or key text (hashed with value_key). Calls block for at most timeout_ms (0: 30 s)."""

    def put(self, identity, key, data, slot=0, type=0, lifetime=24 * 3600, timeout_ms=0):
        """Signs data as identity (its key made on first use) and stores it at key in identity's slot,
        replacing its older value there. Returns (holders, sequence). Raises DNAError: UNREACHABLE
        (no node answered), REFUSED (the holders answered and none stored it: the writer's quota
        there, busy, invalid to them), SUPERSEDED, CLOCK_SKEW, TOO_LARGE (over VALUE_MAX_DATA), TIMEOUT."""
        keep, pointer = _bytes_arg(data)
        holders, sequence = ctypes.c_int(0), ctypes.c_uint64(0)
        _check(lib.dht_value_put(self._dht(), _name_arg(identity), _key_arg(key), _u(slot, 32, "slot"), pointer,
                                 len(keep) if keep is not None else 0, _u(type, 16, "type"), _u(lifetime, 32, "lifetime"),
                                 _u(timeout_ms, 31, "timeout_ms"),
                                 ctypes.byref(holders), ctypes.byref(sequence)), "put")
        return holders.value, sequence.value

    def put_sealed(self, identity, recipient, key, data, slot=0, type=0, lifetime=24 * 3600, timeout_ms=0):
        """put, with data (at most VALUE_MAX_SEALED_DATA bytes) sealed so that only recipient can read
        it (dht_value_put_sealed, docs/PROTOCOL.md §10.6): to identity itself without the network, to
        another identity through the inbox keys it published (publish_keys; a Transport publishes its
        own). Returns (holders, sequence). Raises DNAError as put, and PEER_OFFLINE when recipient
        has published no keys that can be used."""
        keep, pointer = _bytes_arg(data)
        holders, sequence = ctypes.c_int(0), ctypes.c_uint64(0)
        _check(lib.dht_value_put_sealed(self._dht(), _name_arg(identity), _name_arg(recipient), _key_arg(key),
                                        _u(slot, 32, "slot"), pointer, len(keep) if keep is not None else 0,
                                        _u(type, 16, "type"), _u(lifetime, 32, "lifetime"), _u(timeout_ms, 31, "timeout_ms"),
                                        ctypes.byref(holders), ctypes.byref(sequence)), "put_sealed")
        return holders.value, sequence.value

    def open(self, identity, value):
        """The plaintext (bytes) of a sealed Value (is_sealed) for its reader identity
        (dht_value_open). Raises DNAError AUTHENTICATION (sealed to another identity, or a field
        changed), INVALID_ARGUMENT (not sealed)."""
        if not isinstance(value, Value):
            raise DNAError(ErrorCode.INVALID_ARGUMENT, "value is a Value (from get or listen)")
        data = bytes(value.data)
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data) if data else None
        c_value = _native.DHTValueC()
        c_value.key[:] = _key_arg(value.key)[:]
        c_value.signer = value.signer.encode()[:255]
        c_value.signer_id[:] = _signer_arg(value.signer_id)
        c_value.slot, c_value.sequence, c_value.created = _u(value.slot, 32, "slot"), value.sequence, value.created
        c_value.lifetime, c_value.type, c_value.flags = value.lifetime, _u(value.type, 16, "type"), _u(value.flags, 8, "flags")
        c_value.data_len = len(data)
        c_value.data = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_uint8)) if buffer is not None else None
        out = ctypes.POINTER(ctypes.c_uint8)()
        length = ctypes.c_size_t(0)
        _check(lib.dht_value_open(self._dht(), _name_arg(identity), ctypes.byref(c_value), ctypes.byref(out),
                                  ctypes.byref(length)), "open")
        try:
            return ctypes.string_at(out, length.value) if length.value else b""
        finally:
            if out:
                lib.dna_buffer_free(out)

    def publish_keys(self, identity, timeout_ms=0):
        """Publishes identity's inbox keys so that others can seal values (put_sealed) and offline
        mail to it (dht_value_publish_keys); holders keep them 7 days: call again within that.
        Returns how many nodes stored them. Raises DNAError NAME_TAKEN (holders keep the name's keys
        signed by another key: first come), UNREACHABLE (no node stored them)."""
        holders = ctypes.c_int(0)
        _check(lib.dht_value_publish_keys(self._dht(), _name_arg(identity), _u(timeout_ms, 31, "timeout_ms"),
                                          ctypes.byref(holders)), "publish_keys")
        return holders.value

    def delete(self, identity, key, slot=0, lifetime=0, timeout_ms=0):
        """Deletes identity's value of the slot (a tombstone kept lifetime s; 0: 30 days). Returns holders."""
        holders = ctypes.c_int(0)
        _check(lib.dht_value_delete(self._dht(), _name_arg(identity), _key_arg(key), _u(slot, 32, "slot"),
                                    _u(lifetime, 32, "lifetime"), _u(timeout_ms, 31, "timeout_ms"), ctypes.byref(holders)),
               "delete")
        return holders.value

    def put_async(self, identity, key, data, slot=0, type=0, lifetime=24 * 3600, timeout_ms=0):
        """put without waiting (dht_value_put_async): signs now and returns a concurrent.futures.Future
        of (holders, sequence), or of the DNAError put would raise. The Future is completed on the
        library's I/O thread (its done-callbacks run there); its op_id and sequence are set at once."""
        keep, pointer = _bytes_arg(data)
        return _start_async("put", lambda fn, op, sequence: lib.dht_value_put_async(
            self._dht(), _name_arg(identity), _key_arg(key), _u(slot, 32, "slot"), pointer, len(keep) if keep is not None else 0,
            _u(type, 16, "type"), _u(lifetime, 32, "lifetime"), _u(timeout_ms, 31, "timeout_ms"), fn, None, op, sequence))

    def put_sealed_async(self, identity, recipient, key, data, slot=0, type=0, lifetime=24 * 3600, timeout_ms=0):
        """put_sealed without waiting (dht_value_put_sealed_async): a Future of (holders, sequence), as
        put_async; another recipient's keys are looked up on a worker thread of the library, and the
        Future's exception is the DNAError put_sealed would raise (PEER_OFFLINE...)."""
        keep, pointer = _bytes_arg(data)
        return _start_async("put_sealed", lambda fn, op, sequence: lib.dht_value_put_sealed_async(
            self._dht(), _name_arg(identity), _name_arg(recipient), _key_arg(key), _u(slot, 32, "slot"), pointer,
            len(keep) if keep is not None else 0, _u(type, 16, "type"), _u(lifetime, 32, "lifetime"),
            _u(timeout_ms, 31, "timeout_ms"), fn, None, op, sequence))

    def delete_async(self, identity, key, slot=0, lifetime=0, timeout_ms=0):
        """delete without waiting (dht_value_delete_async): a Future of holders, as put_async."""
        return _start_async("delete", lambda fn, op, sequence: lib.dht_value_delete_async(
            self._dht(), _name_arg(identity), _key_arg(key), _u(slot, 32, "slot"), _u(lifetime, 32, "lifetime"),
            _u(timeout_ms, 31, "timeout_ms"), fn, None, op))

    def get_async(self, key, signer_id=None, since=0, timeout_ms=0):
        """get without waiting (dht_value_get_async): a Future of the Values, as put_async."""
        signer = None if signer_id is None else (ctypes.c_uint8 * 32).from_buffer_copy(_signer_arg(signer_id))
        return _start_async("get", lambda fn, op, sequence: lib.dht_value_get_async(
            self._dht(), _key_arg(key), signer, _u(since, 64, "since"), _u(timeout_ms, 31, "timeout_ms"), fn, None, op))

    def listen(self, key, callback=None, signer_id=None, since=0):
        """A Listener of the values at key: an iterator of ("changed" | "expired", Value), pollable
        (fileno), and callback(kind, value) on the I/O thread when given. Cancel it when done."""
        return Listener(self, key, callback, signer_id, since)

    def get(self, key, signer_id=None, since=0, timeout_ms=0):
        """The freshest verified Value per writer and slot at key (tombstones included), ordered by
        signer_id then slot; signer_id (32 bytes) keeps one writer's, since those with a higher sequence."""
        signer = None if signer_id is None else (ctypes.c_uint8 * 32).from_buffer_copy(_signer_arg(signer_id))
        values = ctypes.POINTER(_native.DHTValueC)()
        count = ctypes.c_size_t(0)
        _check(lib.dht_value_get(self._dht(), _key_arg(key), signer, _u(since, 64, "since"), _u(timeout_ms, 31, "timeout_ms"),
                                 ctypes.byref(values),
                                 ctypes.byref(count)), "get")
        try:
            return [_value_from_c(values[i]) for i in range(count.value)]
        finally:
            if values:
                lib.dna_buffer_free(values)


class DHT(_Handle, _ValueCalls):
    """A DHT node (dht_init): one UDP socket and one I/O thread. data_dir holds its node id, routing
    table, entries and the identities it announces. Calls block until the network answers."""

    _free_name = "dht_free"

    def __init__(self, data_dir=None, port=0, bind_ip=None):
        self._keep = (None if bind_ip is None else bind_ip.encode(), _path_arg(data_dir))
        config = _native.DHTConfigC(self._keep[0], int(port), self._keep[1])
        self._handle = lib.dht_init(ctypes.byref(config))
        if not self._handle:
            raise DNAError(lib.dna_last_error(), "DHT")

    @property
    def port(self):
        """The bound UDP port."""
        return _check(lib.dht_get_port(self._live()), "port")

    def bootstrap(self, nodes):
        """Joins through nodes, a list of "host:port" strings."""
        array = (ctypes.c_char_p * (len(nodes) + 1))(*[n.encode() for n in nodes], None)
        _check(lib.dht_bootstrap(self._live(), array), "bootstrap")

    def announce(self, identity, ip, port):
        """Signs (with the identity's key in data_dir, made on first use) and stores identity -> ip:port."""
        _check(lib.dht_announce(self._live(), _name_arg(identity), ip.encode(), int(port)), "announce")

    def _dht(self):
        return self._live()

    def find_peer(self, identity):
        """(ip, port) of identity's freshest verified entry; raises DNAError NOT_FOUND."""
        ip = ctypes.create_string_buffer(46)
        port = ctypes.c_uint16(0)
        _check(lib.dht_find_peer(self._live(), _name_arg(identity), ip, ctypes.byref(port)), "find_peer")
        return ip.value.decode(), port.value

    def find_peer_entry(self, identity):
        """The whole verified PeerEntry; raises DNAError NOT_FOUND."""
        entry = _native.PeerEntryC()
        _check(lib.dht_find_peer_entry(self._live(), _name_arg(identity), ctypes.byref(entry)), "find_peer_entry")
        return PeerEntry(entry.identity.decode(), bytes(entry.node_id), entry.ip_address.decode(), entry.port,
                         entry.last_seen, bytes(entry.pubkey), bytes(entry.signature))

    def refresh(self):
        """Re-announces this node's identities and refreshes idle buckets (seed: every 5 minutes)."""
        _check(lib.dht_refresh(self._live()), "refresh")

    @property
    def stats(self):
        """The node's counters (dht_stats_t) as a dict."""
        out = _native.DHTStatsC()
        _check(lib.dht_get_stats(self._live(), ctypes.byref(out)), "stats")
        return {name: getattr(out, name) for name, _ in out._fields_}



NAT_MAX_CANDIDATES = 32
NAT_CREDENTIAL_MAX = 257
NAT_MAX_DATAGRAM = 65000


class CandidateType(enum.IntEnum):
    """The seed's candidate types (ice_candidate_t.type)."""
    LOCAL = 0       # host
    REFLEXIVE = 1   # server-reflexive (or peer-reflexive, in a selected pair)
    RELAY = 2       # allocated on the TURN server


@dataclass(frozen=True)
class Candidate:
    """An ICE candidate as the seed's ice_candidate_t: address, port, type."""
    ip: str
    port: int
    type: CandidateType

    def _c(self):
        return _native.IceCandidateC(self.ip.encode(), int(self.port), int(self.type))

    @staticmethod
    def _from_c(c):
        return Candidate(c.ip.decode(), c.port, CandidateType(c.type))


class NatTraversal(_Handle):
    """An ICE agent (nat_traversal_init) over libnice, with its own I/O thread. See nat_traversal.h
    for the flow: gather, exchange candidates and credentials with the peer, establish. establish()
    returns a connected datagram socket.socket to the peer (direct or through TURN)."""

    _free_name = "nat_traversal_free"

    def __init__(self, stun_server=None):
        self._handle = lib.nat_traversal_init(None if stun_server is None else stun_server.encode())
        if not self._handle:
            raise DNAError(lib.dna_last_error(), "NatTraversal")

    def set_turn_server(self, server, username, password):
        """TURN "host:port" with long-term credentials; before gather()."""
        _check(lib.nat_set_turn_server(self._live(), server.encode(), username.encode(), password.encode()), "set_turn_server")

    def set_controlling(self, controlling):
        """Exactly one of the two peers is controlling."""
        _check(lib.nat_set_controlling(self._live(), 1 if controlling else 0), "set_controlling")

    def set_timeout(self, timeout_ms):
        """Bounds establish() (default 10,000 ms)."""
        _check(lib.nat_set_timeout(self._live(), int(timeout_ms)), "set_timeout")

    @property
    def local_credentials(self):
        """(ufrag, password) to send to the peer."""
        ufrag = ctypes.create_string_buffer(NAT_CREDENTIAL_MAX)
        pwd = ctypes.create_string_buffer(NAT_CREDENTIAL_MAX)
        _check(lib.nat_get_local_credentials(self._live(), ufrag, len(ufrag), pwd, len(pwd)), "local_credentials")
        return ufrag.value.decode(), pwd.value.decode()

    def set_remote_credentials(self, ufrag, password):
        _check(lib.nat_set_remote_credentials(self._live(), ufrag.encode(), password.encode()), "set_remote_credentials")

    def gather(self):
        """The local candidates (list of Candidate), highest priority first."""
        array = (_native.IceCandidateC * NAT_MAX_CANDIDATES)()
        count = ctypes.c_size_t(NAT_MAX_CANDIDATES)
        _check(lib.nat_gather_candidates(self._live(), array, ctypes.byref(count)), "gather")
        return [Candidate._from_c(array[i]) for i in range(count.value)]

    def add_remote_candidate(self, candidate):
        """One of the peer's candidates (a Candidate or an (ip, port, type) tuple), in the peer's order."""
        if not isinstance(candidate, Candidate):
            candidate = Candidate(*candidate)
        c = candidate._c()
        _check(lib.nat_add_remote_candidate(self._live(), ctypes.byref(c)), "add_remote_candidate")

    def establish(self):
        """Runs the checks; a connected datagram socket.socket to the peer, owned by the caller."""
        import socket
        fd = ctypes.c_int(-1)
        _check(lib.nat_establish_connection(self._live(), ctypes.byref(fd)), "establish")
        return socket.socket(fileno=fd.value)

    @property
    def selected_pair(self):
        """(local, remote) Candidates of the path in use; raises DNAError NOT_FOUND before one is selected."""
        local, remote = _native.IceCandidateC(), _native.IceCandidateC()
        _check(lib.nat_get_selected_pair(self._live(), ctypes.byref(local), ctypes.byref(remote)), "selected_pair")
        return Candidate._from_c(local), Candidate._from_c(remote)



TRANSPORT_IDENTITY_MAX = 255
TRANSPORT_DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
TRANSPORT_OFFLINE_MAX = 4096


class Presence(enum.IntEnum):
    """transport_presence_t"""
    ONLINE = 0
    AWAY = 1
    BUSY = 2
    OFFLINE = 3


def _timeout_arg(timeout_ms):
    return -1 if timeout_ms is None else int(timeout_ms)


class _TransportDHT(_ValueCalls):
    """A Transport's own DHT node (transport_get_dht): put, get and delete with the transport's
    identities and data_dir. Valid while the Transport is open."""

    def __init__(self, transport):
        self._transport = transport

    def _dht(self):
        handle = lib.transport_get_dht(self._transport._live())
        if not handle:
            raise DNAError(lib.dna_last_error(), "dht")
        return handle


class Transport(_Handle):
    """One identity on the network (transport_init): a DHT node that announces the identity, and its
    connections. Connections are ints; messages are bytes. Blocking calls release the GIL.

    With no argument but the identity, everything comes from the DNA_* environment variables (see
    network_transport.h); any argument given switches to transport_init_with_config, where the
    arguments left out still fall back to the environment. fileno() is readable while accept() or
    receive() on some connection would not block, so a Transport works with select/selectors."""

    _free_name = "transport_free"

    @property
    def dht(self):
        """This transport's DHT node, for signed values: put, get, delete (see DHT)."""
        return _TransportDHT(self)

    def __init__(self, identity, data_dir=None, bootstrap=None, stun_server=None, turn_server=None,
                 turn_username=None, turn_password=None, bind_ip=None, port=0, connect_timeout_ms=0,
                 send_timeout_ms=0, max_message_size=0, idle_timeout_ms=0, resume_window_ms=0):
        explicit = (data_dir, bootstrap, stun_server, turn_server, turn_username, turn_password, bind_ip)
        if all(value is None for value in explicit) and not (port or connect_timeout_ms or send_timeout_ms
                                                              or max_message_size or idle_timeout_ms
                                                              or resume_window_ms):
            self._handle = lib.transport_init(_name_arg(identity))
        else:
            def text(value):
                return None if value is None else value.encode()
            nodes = None
            if bootstrap is not None:
                nodes = (ctypes.c_char_p * (len(bootstrap) + 1))(*[n.encode() for n in bootstrap], None)
            self._keep = nodes
            config = _native.TransportConfigC(_path_arg(data_dir), nodes, text(stun_server), text(turn_server),
                                              text(turn_username), text(turn_password), text(bind_ip), int(port),
                                              int(connect_timeout_ms), int(send_timeout_ms), int(max_message_size),
                                              int(idle_timeout_ms), int(resume_window_ms))
            self._handle = lib.transport_init_with_config(_name_arg(identity), ctypes.byref(config))
        if not self._handle:
            raise DNAError(lib.dna_last_error(), "Transport")

    def connect(self, peer):
        """Connects to peer (an identity name): DHT lookup, signaling, ICE, handshake. Returns the
        connection id. Raises DNAError PEER_OFFLINE, UNREACHABLE, ..."""
        out = ctypes.c_int(0)
        _check(lib.transport_connect(self._live(), _name_arg(peer), ctypes.byref(out)), "connect")
        return out.value

    def accept(self, timeout_ms=None):
        """(connection id, peer identity) of the next incoming connection; timeout_ms None waits
        forever. Raises DNAError TIMEOUT."""
        out = ctypes.c_int(0)
        name = ctypes.create_string_buffer(TRANSPORT_IDENTITY_MAX + 1)
        _check(lib.transport_accept(self._live(), ctypes.byref(out), name, len(name), _timeout_arg(timeout_ms)),
               "accept")
        return out.value, name.value.decode("utf-8")

    def send(self, connection, data, stream=0):
        """Queues data (bytes-like) on stream; returns once queued (waits only while the send buffer
        is full: DNAError TIMEOUT after send_timeout_ms)."""
        buffer, pointer = _bytes_arg(data)
        if stream == 0:
            code = lib.transport_send(self._live(), int(connection), pointer, len(buffer) if buffer else 0)
        else:
            code = lib.transport_send_stream(self._live(), int(connection), int(stream), pointer,
                                             len(buffer) if buffer else 0)
        _check(code, "send")

    def receive_stream(self, connection, timeout_ms=None):
        """(stream, bytes) of the next message; raises DNAError TIMEOUT, or CLOSED once the connection
        ended and every message was read."""
        pointer = _native.u8p()
        length = ctypes.c_size_t(0)
        stream = ctypes.c_uint32(0)
        _check(lib.transport_receive_stream(self._live(), int(connection), ctypes.byref(stream), ctypes.byref(pointer),
                                            ctypes.byref(length), _timeout_arg(timeout_ms)), "receive")
        return stream.value, take_buffer(pointer, length.value)

    def receive_into(self, connection, buffer, timeout_ms=None):
        """Copies the next message into `buffer` (a writable bytes-like object, e.g. a bytearray the
        caller reuses: nothing is allocated per message) and returns (stream, length). A message
        longer than the buffer stays queued: DNAError BUFFER_TOO_SMALL, whose `needed` says its length.
        Raises TIMEOUT and CLOSED as receive_stream."""
        view = memoryview(buffer)
        if view.readonly:
            raise TypeError("receive_into needs a writable buffer")
        view = view.cast("B")
        capacity = view.nbytes
        holder = (ctypes.c_char * capacity).from_buffer(view) if capacity else None
        length = ctypes.c_size_t(0)
        stream = ctypes.c_uint32(0)
        code = lib.transport_receive_into(self._live(), int(connection), ctypes.byref(stream), holder, capacity,
                                          ctypes.byref(length), _timeout_arg(timeout_ms))
        del holder
        if code == ErrorCode.BUFFER_TOO_SMALL:
            error = DNAError(code, "receive_into")
            error.needed = length.value
            raise error
        _check(code, "receive_into")
        return stream.value, length.value

    def receive(self, connection, timeout_ms=None):
        """The next message's bytes (any stream); see receive_stream."""
        pointer = _native.u8p()
        length = ctypes.c_size_t(0)
        _check(lib.transport_receive(self._live(), int(connection), ctypes.byref(pointer), ctypes.byref(length),
                                     _timeout_arg(timeout_ms)), "receive")
        return take_buffer(pointer, length.value)

    def send_offline(self, peer, data):
        """Stores data (at most TRANSPORT_OFFLINE_MAX bytes) in peer's inbox in the DHT, sealed to the
        peer and signed by this identity, for 7 days. Raises DNAError PEER_OFFLINE (no inbox),
        UNREACHABLE (no node stored it), TOO_LARGE."""
        buffer, pointer = _bytes_arg(data)
        _check(lib.transport_send_offline(self._live(), _name_arg(peer), pointer, len(buffer) if buffer else 0),
               "send_offline")

    def receive_offline(self, timeout_ms=None):
        """(sender, bytes, sent_at) of the next message that waited in this identity's inbox; each is
        handed out once, also across restarts. Raises DNAError TIMEOUT."""
        sender = ctypes.create_string_buffer(TRANSPORT_IDENTITY_MAX + 1)
        pointer = _native.u8p()
        length = ctypes.c_size_t(0)
        sent_at = ctypes.c_uint64(0)
        _check(lib.transport_receive_offline(self._live(), sender, len(sender), ctypes.byref(pointer),
                                             ctypes.byref(length), ctypes.byref(sent_at), _timeout_arg(timeout_ms)),
               "receive_offline")
        return sender.value.decode("utf-8"), take_buffer(pointer, length.value), sent_at.value

    def fetch_offline(self):
        """Fetches the inbox now; the number of new messages waiting."""
        return _check(lib.transport_fetch_offline(self._live()), "fetch_offline")

    def fileno(self):
        """The readiness descriptor (owned by the Transport)."""
        return _check(lib.transport_get_fd(self._live()), "fileno")

    def set_presence(self, status):
        """Pushes a Presence to every connected peer and to later ones."""
        _check(lib.transport_set_presence(self._live(), int(status)), "set_presence")

    def presence(self, connection):
        """The peer's last pushed Presence (ONLINE until it pushes one)."""
        out = ctypes.c_int(0)
        _check(lib.transport_get_presence(self._live(), int(connection), ctypes.byref(out)), "presence")
        return Presence(out.value)

    def announce_state(self):
        """What became of this identity's announcements (transport_get_announce_state): a dict with
        announced (bool: a holder stored the entry within 30 minutes, so peers can find it), holders,
        stored_ms_ago (None: never) and failed_attempts."""
        out = _native.AnnounceStateC()
        _check(lib.transport_get_announce_state(self._live(), ctypes.byref(out)), "announce_state")
        return {"announced": bool(out.announced), "holders": out.holders,
                "stored_ms_ago": None if out.stored_ms_ago == 2**64 - 1 else out.stored_ms_ago,
                "failed_attempts": out.failed_attempts}

    def take_undelivered(self, connection, timeout_ms=10000):
        """Every message the ended connection did not deliver and could not store in the peer's inbox,
        as a list of (stream, bytes), each stream in the order sent (transport_take_undelivered);
        empty when there are none. Waits up to timeout_ms while they are still being stored offline
        (DNAError TIMEOUT)."""
        taken = []
        while True:
            pointer = _native.u8p()
            length = ctypes.c_size_t(0)
            stream = ctypes.c_uint32(0)
            code = lib.transport_take_undelivered(self._live(), int(connection), ctypes.byref(stream),
                                                  ctypes.byref(pointer), ctypes.byref(length), _timeout_arg(timeout_ms))
            if code == ErrorCode.NOT_FOUND:
                return taken
            _check(code, "take_undelivered")
            taken.append((stream.value, take_buffer(pointer, length.value)))

    def disconnect(self, connection):
        """Ends the connection cleanly (waits up to send_timeout_ms for queued messages to be
        acknowledged; DNAError TIMEOUT when some were not: take_undelivered returns them)."""
        _check(lib.transport_disconnect(self._live(), int(connection)), "disconnect")

