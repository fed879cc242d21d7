import pytest

import dnatransport as dna
from dnatransport import DNAError, ErrorCode, MessageType


def test_encodes_every_vector_byte_exactly(vectors):
    for v in vectors["valid"]:
        if v["reserved"] != "00" * 12:
            continue  # encode_frame writes zero reserved bytes; decoding of others is checked below
        assert dna.encode_frame(v["type"], v["sequence"], bytes.fromhex(v["payload"])).hex() == v["frame"], v["name"]


def test_decodes_every_vector(vectors):
    for v in vectors["valid"]:
        header, payload = dna.decode_frame(bytes.fromhex(v["frame"]))
        assert header.magic == 0x444E4120
        assert header.version == 0x0100
        assert header.type == v["type"]
        assert header.sequence == v["sequence"]
        assert header.checksum == v["checksum"]
        assert header.reserved.hex() == v["reserved"]
        assert payload.hex() == v["payload"]
        assert header.payload_length == len(payload)


def test_rejects_every_invalid_vector_with_its_code(vectors):
    for v in vectors["invalid"]:
        with pytest.raises(DNAError) as caught:
            dna.decode_frame(bytes.fromhex(v["frame"]))
        assert caught.value.code == ErrorCode[v["error"].removeprefix("DNA_ERR_")], v["name"]
        assert caught.value.message == dna.strerror(caught.value.code)
        assert caught.value.message in str(caught.value)


def test_accepts_bytes_like_payloads():
    for payload in (b"abc", bytearray(b"abc"), memoryview(b"abc")):
        header, body = dna.decode_frame(dna.encode_frame(MessageType.DATA, 5, payload))
        assert header.type is MessageType.DATA and body == b"abc"


def test_encode_refuses_unknown_type_and_bad_sequence():
    for bad_type in (0, 6, 0xFFFF):
        with pytest.raises(DNAError) as caught:
            dna.encode_frame(bad_type, 1, b"x")
        assert caught.value.code == ErrorCode.UNKNOWN_TYPE
    with pytest.raises(DNAError) as caught:
        dna.encode_frame(MessageType.DATA, 1 << 32, b"x")
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def test_payload_limit_is_configurable():
    frame = dna.encode_frame(MessageType.DATA, 1, b"\x01" * 100)
    with pytest.raises(DNAError) as caught:
        dna.decode_frame(frame, max_payload=99)
    assert caught.value.code == ErrorCode.TOO_LARGE
    assert dna.decode_frame(frame, max_payload=100)[1] == b"\x01" * 100
    with pytest.raises(DNAError):
        dna.decode_frame(frame, max_payload=-1)
    assert dna.MAX_PAYLOAD == 16 * 1024 * 1024
    assert dna.HEADER_SIZE == 32


def test_large_payload_round_trips():
    payload = bytes(range(256)) * 4096  # 1 MiB
    header, body = dna.decode_frame(dna.encode_frame(MessageType.DATA, 0xFFFFFFFF, payload))
    assert body == payload and header.sequence == 0xFFFFFFFF
