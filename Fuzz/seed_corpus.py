#!/usr/bin/env python3
"""Builds the committed seed corpus, Fuzz/corpus/<target>/: the test vectors (Tests/Vectors: every
valid and invalid frame of PROTOCOL.md §1.5-1.6, every DHT datagram of §5.1) and the valid messages
the state machines produce (`dna-fuzz seeds DIR`: DHT exchanges, a handshake, sealed records, a
reliable connection's frames, offers of each kind, a signed peer entry, inbox records, a saved DHT
state, a key file). Usage: seed_corpus.py DNA_FUZZ_BINARY"""
import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "Fuzz" / "corpus"


def put(target, data):
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)


def record(control, data):
    """One record of a multi-datagram input (Fuzz/DNAFuzz/Fuzz.swift, `records`)."""
    return bytes([control, len(data) >> 8, len(data) & 0xFF]) + data


def main():
    import shutil
    shutil.rmtree(CORPUS, ignore_errors=True)  # signatures are randomized: a rebuild replaces every seed
    frames = json.loads((ROOT / "Tests/Vectors/frames.json").read_text())
    for vector in frames["valid"] + frames["invalid"]:
        put("frame", bytes.fromhex(vector["frame"]))
    dht = json.loads((ROOT / "Tests/Vectors/dht.json").read_text())
    for vector in dht["messages"]:
        put("dht", record(5, bytes.fromhex(vector["datagram"])))
        put("dht", record(8 | 5, bytes.fromhex(vector["message"])))  # as pieces (bit 3)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.argv[1], "seeds", tmp], check=True, env={"ASAN_OPTIONS": "detect_leaks=0"})
        for directory in pathlib.Path(tmp).iterdir():
            for file in directory.iterdir():
                put(directory.name, file.read_bytes())


if __name__ == "__main__":
    main()
