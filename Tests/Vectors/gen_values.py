#!/usr/bin/env python3
"""Writes Tests/Vectors/values.json: a signed value (docs/PROTOCOL.md §10.1) and the value messages of
§10.2-10.3, byte for byte, from this independent encoder (written from PROTOCOL.md alone, not from
the Swift code). The value is signed by dilithium-py (an ML-DSA-65 implementation nobody here wrote),
deterministically, with a key derived from a fixed seed; ValueVectorTests checks that the library
reads it, verifies the signature and encodes the same bytes.

    build/venv/bin/python Tests/Vectors/gen_values.py > Tests/Vectors/values.json
"""
import hashlib
import json
import struct
import sys

from dilithium_py.ml_dsa import ML_DSA_65

SEED = bytes(range(32))
KEY = hashlib.sha256(b"group:friends").digest()[:20]
SALT = bytes([3] * 16)
TRANSACTION = 0x0102030405060708
PART_SIZE = 14_000


def signed_bytes(v):
    name = v["signer"].encode()
    return (b"DNA-DHT-VALUE-01" + v["key"] + bytes([len(name)]) + name + v["public_key"]
            + struct.pack(">IQQIHB", v["slot"], v["sequence"], v["created"], v["lifetime"], v["type"], v["flags"])
            + struct.pack(">I", len(v["data"])) + v["data"])


def message(kind, body):
    """kind (1) | flags (1) | salt (16) | body, padded to 300 bytes for VALUE_GET, VALUE_FETCH, VALUE_LISTEN."""
    out = bytes([kind, 0]) + SALT + body
    if kind in (22, 24, 26) and len(out) < 300:
        out += bytes(300 - len(out))
    return out


def part(wire, value_id, index):
    count = (len(wire) + PART_SIZE - 1) // PART_SIZE
    piece = wire[index * PART_SIZE:(index + 1) * PART_SIZE]
    return value_id + bytes([index, count]) + struct.pack(">IH", len(wire), len(piece)) + piece


def main():
    public_key, secret_key = ML_DSA_65.key_derive(SEED)
    value = {"key": KEY, "signer": "alice", "public_key": public_key, "slot": 3, "sequence": 0x0102030405060708,
             "created": 1_800_000_000, "lifetime": 86_400, "type": 0x0A0B, "flags": 0, "data": b"hello, group"}
    signed = signed_bytes(value)
    signature = ML_DSA_65.sign(secret_key, signed, deterministic=True)
    wire = signed + signature
    value_id = hashlib.sha256(wire).digest()
    signer_id = hashlib.sha256(public_key).digest()
    token = struct.pack(">Q", 0x1122334455667789)
    descriptor = (value_id + signer_id + struct.pack(">IQQIHBI", value["slot"], value["sequence"], value["created"],
                                                      value["lifetime"], value["type"], value["flags"], len(wire)))
    messages = {
        "value_put": message(20, token + KEY + part(wire, value_id, 0)),
        "value_stored": message(21, bytes([2])),
        "value_stored_out_of_time": message(21, bytes([6]) + struct.pack(">Q", 1_800_000_000_123)),
        "value_get": message(22, token + KEY + bytes(32) + struct.pack(">QH", 0, 0)),
        "value_get_signer_since": message(22, token + KEY + signer_id + struct.pack(">QH", 7, 64)),
        "value_list": message(23, struct.pack(">HB", 1, 1) + descriptor),
        "value_fetch": message(24, token + KEY + value_id + bytes([0])),
        "value_part": message(25, bytes([0]) + part(wire, value_id, 0)),
        "value_part_not_held": message(25, bytes([1])),
        "value_listen": message(26, token + KEY + signer_id + struct.pack(">Q", 0x0A0B0C0D0E0F1011)),
        "value_listening": message(27, bytes([0]) + struct.pack(">H", 600)),
        "value_notify": message(28, struct.pack(">Q", 0x0A0B0C0D0E0F1011) + KEY + bytes([1]) + descriptor),
    }
    out = {
        "seed": SEED.hex(), "key": KEY.hex(), "salt": SALT.hex(), "transaction": f"{TRANSACTION:016x}",
        "value": {"signer": value["signer"], "slot": value["slot"], "sequence": value["sequence"],
                  "created": value["created"], "lifetime": value["lifetime"], "type": value["type"],
                  "flags": value["flags"], "data": value["data"].hex()},
        "public_key_sha256": signer_id.hex(),
        "signed_bytes_sha256": hashlib.sha256(signed).hexdigest(),
        "wire": wire.hex(), "id": value_id.hex(),
        "messages": [{"name": name, "message": msg.hex()} for name, msg in messages.items()],
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
