"""The C API of libdnatransport: how the library is found, and one table declaring every export."""
import ctypes
import os
import subprocess
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_size_t, c_uint8, c_uint16,
                    c_uint32, c_uint64, c_void_p)

SONAME = "libdnatransport.so.1"
DEFAULT_PREFIX = "/usr/local"
# A wheel carries the library here, beside this module.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def locate(environ=None, default_prefix=DEFAULT_PREFIX, package_dir=PACKAGE_DIR):
    """The path of the library: the copy inside this package (a wheel bundles one), then
    $DNATRANSPORT_LIBRARY, then pkg-config's libdir, then the default prefix.
    Returns (path, tried) where tried lists every place looked at."""
    environ = os.environ if environ is None else environ
    tried = []
    bundled = os.path.join(package_dir, SONAME)
    if os.path.exists(bundled):
        return bundled, [f"bundled: {bundled}"]
    tried.append(f"bundled: {bundled}")
    explicit = environ.get("DNATRANSPORT_LIBRARY")
    if explicit:
        return explicit, tried + [f"DNATRANSPORT_LIBRARY={explicit}"]
    try:
        out = subprocess.run(["pkg-config", "--variable=libdir", "dnatransport"], capture_output=True,
                             text=True, env=dict(environ), timeout=10)
        libdir = out.stdout.strip()
        if out.returncode == 0 and libdir:
            candidate = os.path.join(libdir, SONAME)
            tried.append(f"pkg-config: {candidate}")
            if os.path.exists(candidate):
                return candidate, tried
        else:
            tried.append("pkg-config: dnatransport not found")
    except (OSError, subprocess.SubprocessError) as error:
        tried.append(f"pkg-config: {error}")
    candidate = os.path.join(default_prefix, "lib", SONAME)
    tried.append(f"default prefix: {candidate}")
    if os.path.exists(candidate):
        return candidate, tried
    return None, tried


def load():
    path, tried = locate()
    if path is None:
        raise ImportError("libdnatransport not found; tried " + "; ".join(tried) +
                          ". Install it (make install) or set DNATRANSPORT_LIBRARY to the .so path.")
    try:
        return ctypes.CDLL(path), path
    except OSError as error:
        raise ImportError(f"cannot load libdnatransport from {path}: {error}") from error


class FrameHeaderC(Structure):
    """dna_frame_header_t"""
    _fields_ = [("magic", c_uint32), ("version", c_uint16), ("type", c_uint16), ("sequence", c_uint32),
                ("payload_length", c_uint32), ("checksum", c_uint32), ("reserved", c_uint8 * 12)]


class PeerEntryC(Structure):
    """dht_peer_entry_t"""
    _fields_ = [("identity", ctypes.c_char * 256), ("node_id", c_uint8 * 20), ("ip_address", ctypes.c_char * 46),
                ("port", c_uint16), ("last_seen", ctypes.c_uint64), ("pubkey", c_uint8 * 1952),
                ("signature", c_uint8 * 3309)]


class DHTConfigC(Structure):
    """dht_config_t"""
    _fields_ = [("bind_ip", c_char_p), ("port", c_uint16), ("data_dir", c_char_p)]


class DHTStatsC(Structure):
    """dht_stats_t"""
    _fields_ = [(name, c_uint64) for name in ("routing_table_size", "stored_entries", "received", "sent",
                                              "requests_answered", "dropped", "rate_limited", "refused_entries",
                                              "timeouts", "refused_contacts", "refused_pieces")]


class AnnounceStateC(Structure):
    """transport_announce_state_t"""
    _fields_ = [("announced", c_int), ("holders", c_int), ("stored_ms_ago", ctypes.c_uint64),
                ("failed_attempts", c_int)]


class IceCandidateC(Structure):
    """ice_candidate_t (the seed's anonymous enum is a C int)"""
    _fields_ = [("ip", ctypes.c_char * 46), ("port", c_uint16), ("type", c_int)]


class TransportConfigC(Structure):
    """transport_config_t"""
    _fields_ = [("data_dir", c_char_p), ("bootstrap_nodes", POINTER(c_char_p)), ("stun_server", c_char_p),
                ("turn_server", c_char_p), ("turn_username", c_char_p), ("turn_password", c_char_p),
                ("bind_ip", c_char_p), ("port", c_uint16), ("connect_timeout_ms", c_int),
                ("send_timeout_ms", c_int), ("max_message_size", c_size_t), ("idle_timeout_ms", c_int),
                ("resume_window_ms", c_int)]


class DHTValueC(Structure):
    """dht_value_t"""
    _fields_ = [("key", c_uint8 * 20), ("signer", ctypes.c_char * 256), ("signer_id", c_uint8 * 32),
                ("slot", ctypes.c_uint32), ("sequence", ctypes.c_uint64), ("created", ctypes.c_uint64),
                ("lifetime", ctypes.c_uint32), ("type", c_uint16), ("flags", c_uint8), ("data_len", c_size_t),
                ("data", POINTER(c_uint8))]


LOG_FN = CFUNCTYPE(None, c_int, c_char_p, c_void_p)
VALUE_FN = CFUNCTYPE(None, ctypes.c_uint64, c_int, POINTER(DHTValueC), c_void_p)
# dht_value_done_fn(op_id, result, holders, sequence, values, count, user_data)
DONE_FN = CFUNCTYPE(None, ctypes.c_uint64, c_int, c_int, ctypes.c_uint64, POINTER(DHTValueC), c_size_t, c_void_p)
u8p = POINTER(c_uint8)

# Every export of libdnatransport: name -> (restype, argtypes). A test checks this against the .so.
FUNCTIONS = {
    # dna_common.h
    "dna_strerror": (c_char_p, [c_int]),
    "dna_last_error": (c_int, []),
    "dna_version_string": (c_char_p, []),
    "dna_version_number": (c_int, []),
    "dna_buffer_free": (None, [c_void_p]),
    "dna_set_log_handler": (None, [LOG_FN, c_int, c_void_p]),
    # p2p_protocol.h
    "p2p_frame_header_size": (c_size_t, []),
    "p2p_frame_max_payload": (c_size_t, []),
    "p2p_frame_encode": (c_int, [c_uint16, c_uint32, u8p, c_size_t, u8p, c_size_t, POINTER(c_size_t)]),
    "p2p_frame_decode": (c_int, [u8p, c_size_t, POINTER(FrameHeaderC), POINTER(u8p)]),
    "p2p_frame_decode_with_limit": (c_int, [u8p, c_size_t, c_size_t, POINTER(FrameHeaderC), POINTER(u8p)]),
    # dna_identity.h
    "dna_identity_max": (c_size_t, []),
    "dna_public_key_size": (c_size_t, []),
    "dna_signature_size": (c_size_t, []),
    "dna_identity_load": (c_void_p, [c_char_p, c_char_p, c_int]),
    "dna_identity_public_key": (c_int, [c_void_p, u8p, c_size_t, POINTER(c_size_t)]),
    "dna_identity_fingerprint": (c_int, [c_void_p, c_char_p, c_size_t]),
    "dna_fingerprint": (c_int, [u8p, c_size_t, c_char_p, c_size_t]),
    "dna_identity_free": (None, [c_void_p]),
    # dna_session.h
    "dna_max_datagram": (c_size_t, []),
    "dna_session_overhead": (c_size_t, []),
    "dna_handshake_initiate": (c_void_p, [c_void_p, c_char_p, u8p, c_size_t, c_uint64]),
    "dna_handshake_respond": (c_void_p, [c_void_p]),
    "dna_handshake_receive": (c_int, [c_void_p, c_char_p, u8p, c_size_t, c_uint64]),
    "dna_handshake_next_datagram": (c_int, [c_void_p, u8p, c_size_t, POINTER(c_size_t), c_char_p, c_size_t]),
    "dna_handshake_handle_timeout": (c_int, [c_void_p, c_uint64]),
    "dna_handshake_next_deadline": (c_int, [c_void_p, POINTER(c_uint64)]),
    "dna_handshake_pending": (c_int, [c_void_p, POINTER(c_size_t)]),
    "dna_handshake_take_session": (c_int, [c_void_p, POINTER(c_void_p), c_char_p, c_size_t]),
    "dna_handshake_free": (None, [c_void_p]),
    "dna_session_peer": (c_int, [c_void_p, c_char_p, c_size_t, u8p, c_size_t]),
    "dna_session_seal": (c_int, [c_void_p, c_uint16, u8p, c_size_t, u8p, c_size_t, POINTER(c_size_t)]),
    "dna_session_open": (c_int, [c_void_p, u8p, c_size_t, POINTER(FrameHeaderC), u8p, c_size_t, POINTER(c_size_t)]),
    "dna_session_free": (None, [c_void_p]),
    # dht_discovery.h
    "dht_init": (c_void_p, [POINTER(DHTConfigC)]),
    "dht_bootstrap": (c_int, [c_void_p, POINTER(c_char_p)]),
    "dht_announce": (c_int, [c_void_p, c_char_p, c_char_p, c_uint16]),
    "dht_find_peer": (c_int, [c_void_p, c_char_p, c_char_p, POINTER(c_uint16)]),
    "dht_find_peer_entry": (c_int, [c_void_p, c_char_p, POINTER(PeerEntryC)]),
    "dht_refresh": (c_int, [c_void_p]),
    "dht_get_port": (c_int, [c_void_p]),
    "dht_get_stats": (c_int, [c_void_p, POINTER(DHTStatsC)]),
    "dht_free": (None, [c_void_p]),
    "dht_peer_entry_signed_max": (c_size_t, []),
    "dht_peer_entry_sign": (c_int, [POINTER(PeerEntryC), c_char_p]),
    "dht_peer_entry_verify": (c_int, [POINTER(PeerEntryC)]),
    "dht_peer_entry_signed_bytes": (c_int, [POINTER(PeerEntryC), u8p, c_size_t, POINTER(c_size_t)]),
    # dht_values.h
    "transport_get_dht": (c_void_p, [c_void_p]),
    "dht_value_key": (c_int, [c_char_p, u8p]),
    "dht_value_put": (c_int, [c_void_p, c_char_p, u8p, ctypes.c_uint32, u8p, c_size_t, c_uint16, ctypes.c_uint32, c_int,
                              POINTER(c_int), POINTER(ctypes.c_uint64)]),
    "dht_value_delete": (c_int, [c_void_p, c_char_p, u8p, ctypes.c_uint32, ctypes.c_uint32, c_int, POINTER(c_int)]),
    "dht_value_put_sealed": (c_int, [c_void_p, c_char_p, c_char_p, u8p, ctypes.c_uint32, u8p, c_size_t, c_uint16,
                                     ctypes.c_uint32, c_int, POINTER(c_int), POINTER(ctypes.c_uint64)]),
    "dht_value_open": (c_int, [c_void_p, c_char_p, POINTER(DHTValueC), POINTER(POINTER(ctypes.c_uint8)), POINTER(c_size_t)]),
    "dht_value_publish_keys": (c_int, [c_void_p, c_char_p, c_int, POINTER(c_int)]),
    "dht_value_get": (c_int, [c_void_p, u8p, u8p, ctypes.c_uint64, c_int, POINTER(POINTER(DHTValueC)),
                              POINTER(c_size_t)]),
    "dht_listen": (c_int, [c_void_p, u8p, u8p, ctypes.c_uint64, VALUE_FN, c_void_p, POINTER(ctypes.c_uint64)]),
    "dht_value_put_async": (c_int, [c_void_p, c_char_p, u8p, ctypes.c_uint32, u8p, c_size_t, c_uint16, ctypes.c_uint32, c_int,
                                    DONE_FN, c_void_p, POINTER(ctypes.c_uint64), POINTER(ctypes.c_uint64)]),
    "dht_value_put_sealed_async": (c_int, [c_void_p, c_char_p, c_char_p, u8p, ctypes.c_uint32, u8p, c_size_t, c_uint16,
                                           ctypes.c_uint32, c_int, DONE_FN, c_void_p, POINTER(ctypes.c_uint64),
                                           POINTER(ctypes.c_uint64)]),
    "dht_value_delete_async": (c_int, [c_void_p, c_char_p, u8p, ctypes.c_uint32, ctypes.c_uint32, c_int, DONE_FN, c_void_p,
                                       POINTER(ctypes.c_uint64)]),
    "dht_value_get_async": (c_int, [c_void_p, u8p, u8p, ctypes.c_uint64, c_int, DONE_FN, c_void_p, POINTER(ctypes.c_uint64)]),
    "dht_listen_cancel": (c_int, [c_void_p, ctypes.c_uint64]),
    # nat_traversal.h
    "nat_traversal_init": (c_void_p, [c_char_p]),
    "nat_set_turn_server": (c_int, [c_void_p, c_char_p, c_char_p, c_char_p]),
    "nat_set_controlling": (c_int, [c_void_p, c_int]),
    "nat_set_timeout": (c_int, [c_void_p, c_int]),
    "nat_get_local_credentials": (c_int, [c_void_p, c_char_p, c_size_t, c_char_p, c_size_t]),
    "nat_set_remote_credentials": (c_int, [c_void_p, c_char_p, c_char_p]),
    "nat_gather_candidates": (c_int, [c_void_p, POINTER(IceCandidateC), POINTER(c_size_t)]),
    "nat_add_remote_candidate": (c_int, [c_void_p, POINTER(IceCandidateC)]),
    "nat_establish_connection": (c_int, [c_void_p, POINTER(c_int)]),
    "nat_get_selected_pair": (c_int, [c_void_p, POINTER(IceCandidateC), POINTER(IceCandidateC)]),
    "nat_traversal_free": (None, [c_void_p]),
    # network_transport.h
    "transport_init": (c_void_p, [c_char_p]),
    "transport_init_with_config": (c_void_p, [c_char_p, POINTER(TransportConfigC)]),
    "transport_connect": (c_int, [c_void_p, c_char_p, POINTER(c_int)]),
    "transport_accept": (c_int, [c_void_p, POINTER(c_int), c_char_p, c_size_t, c_int]),
    "transport_send": (c_int, [c_void_p, c_int, u8p, c_size_t]),
    "transport_send_stream": (c_int, [c_void_p, c_int, c_uint32, u8p, c_size_t]),
    "transport_receive": (c_int, [c_void_p, c_int, POINTER(u8p), POINTER(c_size_t), c_int]),
    "transport_receive_stream": (c_int, [c_void_p, c_int, POINTER(c_uint32), POINTER(u8p), POINTER(c_size_t), c_int]),
    "transport_receive_into": (c_int, [c_void_p, c_int, POINTER(c_uint32), c_void_p, c_size_t, POINTER(c_size_t), c_int]),
    "transport_send_offline": (c_int, [c_void_p, c_char_p, u8p, c_size_t]),
    "transport_receive_offline": (c_int, [c_void_p, c_char_p, c_size_t, POINTER(u8p), POINTER(c_size_t),
                                          POINTER(c_uint64), c_int]),
    "transport_fetch_offline": (c_int, [c_void_p]),
    "transport_get_fd": (c_int, [c_void_p]),
    "transport_set_presence": (c_int, [c_void_p, c_int]),
    "transport_get_presence": (c_int, [c_void_p, c_int, POINTER(c_int)]),
    "transport_get_announce_state": (c_int, [c_void_p, POINTER(AnnounceStateC)]),
    "transport_take_undelivered": (c_int, [c_void_p, c_int, POINTER(c_uint32), POINTER(u8p), POINTER(c_size_t), c_int]),
    "transport_disconnect": (c_int, [c_void_p, c_int]),
    "transport_free": (None, [c_void_p]),
}

lib, path = load()
for _name, (_restype, _argtypes) in FUNCTIONS.items():
    _function = getattr(lib, _name)
    _function.restype = _restype
    _function.argtypes = _argtypes
