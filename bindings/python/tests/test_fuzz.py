"""Random and mutated bytes through ctypes: the library answers every input with a code, never a crash."""
import random
import struct
import zlib

import dnatransport as dna
from dnatransport import DNAError, ErrorCode

ITERATIONS = 60_000
KNOWN_TYPES = {1, 2, 3, 4, 5, 0x10, 0x11, 0x20, 0x30}  # the seed's five and the extensions


def expected_code(data):
    """The decoder's documented order of checks, written independently of the library."""
    if len(data) < 32:
        return ErrorCode.TRUNCATED
    magic, version, type_, _seq, length, crc = struct.unpack(">IHHIII", data[:20])
    if magic != 0x444E4120:
        return ErrorCode.BAD_MAGIC
    if version != 0x0100:
        return ErrorCode.BAD_VERSION
    if type_ not in KNOWN_TYPES:
        return ErrorCode.UNKNOWN_TYPE
    if length > dna.MAX_PAYLOAD:
        return ErrorCode.TOO_LARGE
    if length != len(data) - 32:
        return ErrorCode.LENGTH_MISMATCH
    if crc != zlib.crc32(data[32:]):
        return ErrorCode.CHECKSUM
    return ErrorCode.OK


def test_random_and_mutated_bytes_get_the_documented_answer():
    rng = random.Random(20261124)
    outcomes = {}
    for i in range(ITERATIONS):
        kind = i % 3
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 80))
        else:
            payload = rng.randbytes(rng.randrange(0, 40))
            data = bytearray(dna.encode_frame(rng.choice(sorted(KNOWN_TYPES)), rng.getrandbits(32), payload))
            if kind == 1:
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
            else:
                data = data[:rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data + rng.randbytes(3)
            data = bytes(data)
        try:
            header, payload = dna.decode_frame(data)
            code = ErrorCode.OK
            assert dna.encode_frame(header.type, header.sequence, payload)[:20] == data[:20]
        except DNAError as error:
            code = error.code
        assert code == expected_code(data), data.hex()
        outcomes[code] = outcomes.get(code, 0) + 1
    # The inputs reach every check, success included.
    for code in (ErrorCode.OK, ErrorCode.TRUNCATED, ErrorCode.BAD_MAGIC, ErrorCode.UNKNOWN_TYPE,
                 ErrorCode.LENGTH_MISMATCH, ErrorCode.CHECKSUM, ErrorCode.BAD_VERSION):
        assert outcomes.get(code, 0) > 0, (code, outcomes)
