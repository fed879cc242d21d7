"""Identities and signed peer entries, cross-checked with an independent ML-DSA-65 (dilithium-py)."""
import hashlib
import json
import os
import stat
import struct
import time

import pytest
from dilithium_py.ml_dsa import ML_DSA_65

import dnatransport as dna
from dnatransport import DNAError, ErrorCode
from conftest import REPO


def entry(name="alice", **changes):
    fields = dict(identity=name, node_id=bytes(range(1, 21)), ip_address="192.0.2.1", port=4567,
                  last_seen=int(time.time()))
    fields.update(changes)
    return dna.PeerEntry(**fields)


def canonical(e):
    """The signed bytes, written independently of the library (docs/PROTOCOL.md)."""
    name, ip = e.identity.encode(), e.ip_address.encode()
    return (b"DNA-PEER-ENTRY-1" + bytes([len(name)]) + name + e.node_id + bytes([len(ip)]) + ip
            + struct.pack(">HQ", e.port, e.last_seen) + e.public_key)


def test_identity_is_created_once_with_private_permissions(tmp_path):
    with dna.Identity("alice", tmp_path) as first:
        key, fp = first.public_key, first.fingerprint
    assert len(key) == dna.PUBLIC_KEY_SIZE == 1952
    assert fp == dna.fingerprint(key) and len(fp) == 39
    assert fp.replace(":", "") == hashlib.sha256(key).hexdigest()[:32]
    with dna.Identity("alice", tmp_path, create=False) as again:
        assert again.public_key == key
    assert stat.S_IMODE(os.stat(tmp_path / "identities" / "alice.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "identities").st_mode) == 0o700


def test_identity_errors_carry_their_codes(tmp_path):
    for name, code in [("", ErrorCode.INVALID_ARGUMENT), ("x" * 256, ErrorCode.INVALID_ARGUMENT)]:
        with pytest.raises(DNAError) as caught:
            dna.Identity(name, tmp_path)
        assert caught.value.code == code
    with pytest.raises(DNAError) as caught:
        dna.Identity("bob", tmp_path, create=False)
    assert caught.value.code == ErrorCode.NOT_FOUND
    dna.Identity("carol", tmp_path).close()
    path = tmp_path / "identities" / "carol.key"
    path.chmod(0o644)
    with pytest.raises(DNAError) as caught:
        dna.Identity("carol", tmp_path)
    assert caught.value.code == ErrorCode.KEY_PERMISSIONS
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[50] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DNAError) as caught:
        dna.Identity("carol", tmp_path)
    assert caught.value.code == ErrorCode.KEY_FILE
    assert path.read_bytes() == bytes(data)  # never replaced
    closed = dna.Identity("dave", tmp_path)
    closed.close()
    with pytest.raises(DNAError):
        closed.public_key
    with pytest.raises(DNAError) as caught:
        dna.fingerprint(b"short")
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def test_library_signatures_verify_with_dilithium_py(tmp_path):
    e = entry().sign(tmp_path)
    assert len(e.signature) == dna.SIGNATURE_SIZE == 3309
    assert e.signed_bytes() == canonical(e)
    assert ML_DSA_65.verify(e.public_key, canonical(e), e.signature)
    assert not ML_DSA_65.verify(e.public_key, canonical(e) + b"x", e.signature)
    e.verify()


def test_library_verifies_signatures_made_by_dilithium_py():
    public_key, secret_key = ML_DSA_65.keygen()
    e = entry("zoe", public_key=public_key)
    e.signature = ML_DSA_65.sign(secret_key, canonical(e))
    e.verify()
    e.port += 1
    with pytest.raises(DNAError) as caught:
        e.verify()
    assert caught.value.code == ErrorCode.BAD_SIGNATURE


def test_public_key_from_seed_vector_matches_dilithium_py():
    vector = json.loads((REPO / "Tests" / "Vectors" / "identity.json").read_text())
    public_key, _ = ML_DSA_65._keygen_internal(bytes.fromhex(vector["seed"]))
    assert hashlib.sha256(public_key).hexdigest() == vector["public_key_sha256"]
    assert dna.fingerprint(public_key) == vector["fingerprint"]
    e = dna.PeerEntry(vector["identity"], bytes.fromhex(vector["node_id"]), vector["ip_address"], vector["port"],
                      vector["last_seen"], public_key)
    signed = e.signed_bytes()
    assert len(signed) == vector["signed_bytes_length"]
    assert signed.hex().startswith(vector["signed_bytes_before_public_key"])
    assert hashlib.sha256(signed).hexdigest() == vector["signed_bytes_sha256"]


def test_forged_and_malformed_entries_are_refused(tmp_path):
    good = entry().sign(tmp_path)
    cases = [
        (dict(last_seen=int(time.time()) + 3600), ErrorCode.BAD_ENTRY),
        (dict(last_seen=0), ErrorCode.BAD_ENTRY),
        (dict(node_id=bytes(20)), ErrorCode.BAD_ENTRY),
        (dict(ip_address="example.org"), ErrorCode.BAD_ENTRY),
        (dict(port=0), ErrorCode.BAD_ENTRY),
        (dict(public_key=ML_DSA_65.keygen()[0]), ErrorCode.BAD_SIGNATURE),
        (dict(signature=bytes(3309)), ErrorCode.BAD_SIGNATURE),
    ]
    for changes, code in cases:
        forged = dna.PeerEntry(**{**good.__dict__, **changes})
        with pytest.raises(DNAError) as caught:
            forged.verify()
        assert caught.value.code == code, changes
