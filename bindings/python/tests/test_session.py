"""The handshake and sealed sessions through the C API (dna_session.h), checked against the byte
layout of docs/PROTOCOL.md §4 written out independently here."""
import hashlib
import os
import struct
import zlib

import pytest

import dnatransport as dna
from dnatransport import DNAError, ErrorCode, MessageType


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    home = tmp_path_factory.mktemp("dna")
    alice, bob, carol = (dna.Identity(name, data_dir=home) for name in ("alice", "bob", "carol"))
    yield alice, bob, carol
    for identity in (alice, bob, carol):
        identity.close()


def pump(initiator, responder, address="192.0.2.7:4567", now=0, drop=lambda datagram: False, log=None):
    """Moves datagrams both ways until nothing is in flight; returns the responder's sessions."""
    sessions = []
    moved = True
    while moved:
        moved = False
        for _, datagram in initiator.datagrams():
            moved = True
            if log is not None:
                log.append(("i", datagram))
            if not drop(datagram):
                responder.receive(datagram, now, peer=address)
        for peer, datagram in responder.datagrams():
            moved = True
            assert peer == address
            if log is not None:
                log.append(("r", datagram))
            if not drop(datagram):
                initiator.receive(datagram, now)
        while (taken := responder.take_session()) is not None:
            sessions.append(taken)
    return sessions


def test_handshake_authenticates_both_sides_and_sessions_carry_data(identities):
    alice, bob, _ = identities
    log = []
    with dna.Initiator(alice, "bob", bob.public_key, now_ms=0) as initiator, dna.Responder(bob) as responder:
        sessions = pump(initiator, responder, log=log)
        assert len(sessions) == 1
        address, server = sessions[0]
        assert address == "192.0.2.7:4567"
        peer, client = initiator.take_session()
        assert peer == "" and initiator.take_session() is None
        assert initiator.pending == 0 and responder.pending == 0
        assert initiator.next_deadline is None
        assert client.peer == ("bob", bob.public_key)
        assert server.peer == ("alice", alice.public_key)
        assert dna.fingerprint(server.peer[1]) == alice.fingerprint
        for message in (b"", b"hello", os.urandom(5000)):
            header, plaintext = server.open(client.seal(message))
            assert plaintext == message and header.type == MessageType.DATA
            assert client.open(server.seal(message, MessageType.PRESENCE))[1] == message
        assert all(len(datagram) <= dna.MAX_DATAGRAM == 1200 for _, datagram in log)
        assert len(log) == 22  # 11 pieces (2 + 4 + 5), each acknowledged once
        client.close()
        server.close()


def cpu_has_aes():
    """libsodium offers AES-256-GCM only with AES-NI and PCLMULQDQ (crypto_aead_aes256gcm_is_available)."""
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    return "aes" in flags and "pclmulqdq" in flags


def test_wire_format_matches_the_protocol_document(identities):
    """The initiator's first datagram, parsed by hand from docs/PROTOCOL.md §4.1 and §4.2, and the
    suite the responder chose in message 2."""
    alice, bob, _ = identities
    log = []
    with dna.Initiator(alice, "bob", bob.public_key, now_ms=0) as initiator, dna.Responder(bob) as responder:
        pump(initiator, responder, log=log)
        datagrams = [d for side, d in log if side == "i"][:2]
        response = b"".join(d[44:] for side, d in log
                            if side == "r" and struct.unpack(">H", d[6:8])[0] == 0x0010 and d[36] == 2)
    assert len(datagrams) == 2
    message = b""
    for index, datagram in enumerate(datagrams):
        magic, version, type_, sequence, length, crc = struct.unpack(">IHHIII", datagram[:20])
        assert (magic, version, type_, sequence) == (0x444E4120, 0x0100, 0x0010, 0)
        assert datagram[20:32] == bytes(12) and length == len(datagram) - 32 and crc == zlib.crc32(datagram[32:])
        session, kind, piece, count, zero, total = struct.unpack(">IBBBBI", datagram[32:44])
        assert (kind, piece, count, zero, total) == (1, index, 2, 0, 1284)
        assert session != 0
        message += datagram[44:]
    assert len(datagrams[0]) == 1200 and len(message) == 1284
    # Suites offered: bit 0 ChaCha20-Poly1305 (suite 1), bit 1 AES-256-GCM (suite 2, with AES instructions).
    version, offer = struct.unpack(">HH", message[:4])
    assert (version, offer) == (1, 3 if cpu_has_aes() else 1)
    assert len(response) == 4465 and struct.unpack(">HH", response[:4]) == (1, 2 if cpu_has_aes() else 1)
    assert message[4:36] == hashlib.sha256(bob.public_key).digest()


def test_replayed_modified_and_foreign_frames_are_refused(identities):
    alice, bob, carol = identities
    with dna.Initiator(alice, "bob", bob.public_key, 0) as initiator, dna.Responder(bob) as responder:
        (_, server), = pump(initiator, responder)
        _, client = initiator.take_session()
        frame = client.seal(b"once")
        assert server.open(frame)[1] == b"once"
        with pytest.raises(DNAError) as caught:
            server.open(frame)
        assert caught.value.code == ErrorCode.REPLAYED
        second = client.seal(b"twice")
        for bit in range(len(second) * 8):
            flipped = bytearray(second)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(DNAError) as caught:
                server.open(bytes(flipped))
            assert caught.value.code != ErrorCode.OK
        assert server.open(second)[1] == b"twice"  # the flips left the session working
        # A frame sealed in another session does not open.
        with dna.Initiator(alice, "bob", bob.public_key, 0) as other, dna.Responder(bob) as responder2:
            pump(other, responder2)
            _, stranger = other.take_session()
            frames = [stranger.seal(b"x") for _ in range(3)]  # sequence 2: not yet seen by the server
            with pytest.raises(DNAError) as caught:
                server.open(frames[2])
            assert caught.value.code == ErrorCode.AUTHENTICATION


def test_wrong_responder_key_is_refused_without_state(identities):
    alice, bob, carol = identities
    with dna.Initiator(alice, "bob", carol.public_key, 0) as initiator, dna.Responder(bob) as responder:
        with pytest.raises(DNAError) as caught:
            pump(initiator, responder)
        assert caught.value.code == ErrorCode.MISDIRECTED
        assert responder.pending == 0 and responder.take_session() is None
        # The initiator gives up after its retransmissions: TIMEOUT, never a session.
        now = 0
        with pytest.raises(DNAError) as caught:
            while True:
                now = initiator.next_deadline
                initiator.handle_timeout(now)
                initiator.datagrams()
        assert caught.value.code == ErrorCode.TIMEOUT
        assert 15_000 <= now <= 16_000
        assert initiator.take_session() is None and initiator.pending == 0


def test_lost_pieces_are_retransmitted(identities):
    alice, bob, _ = identities
    seen = set()

    def drop_first_copy(datagram):  # every datagram is lost the first time it is sent
        key = bytes(datagram)
        if key in seen:
            return False
        seen.add(key)
        return True

    with dna.Initiator(alice, "bob", bob.public_key, 0) as initiator, dna.Responder(bob) as responder:
        now, sessions = 0, []
        for _ in range(40):
            sessions += pump(initiator, responder, now=now, drop=drop_first_copy)
            deadlines = [d for d in (initiator.next_deadline, responder.next_deadline) if d is not None]
            if not deadlines:
                break
            now = min(deadlines)
            initiator.handle_timeout(now)
            responder.handle_timeout(now)
        assert len(sessions) == 1 and initiator.pending == 0
        assert now < 15_000


def _bogus_first_piece(bob_key, session):
    """The first piece of a well-formed initiation to bob with random key shares (docs/PROTOCOL.md §4)."""
    message = struct.pack(">HH", 1, 1) + hashlib.sha256(bob_key).digest() + os.urandom(32 + 32 + 1184)
    payload = struct.pack(">IBBBBI", session, 1, 0, 2, 0, len(message)) + message[:1156]
    header = struct.pack(">IHHIII", 0x444E4120, 0x0100, 0x0010, 0, len(payload), zlib.crc32(payload)) + bytes(12)
    return header + payload


def _rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_flood_of_initiations_does_not_grow_memory(identities):
    """40,000 bogus initiations from 40,000 addresses: at most 128 are kept, and the process's
    resident memory stops growing once the table is full."""
    _, bob, _ = identities
    with dna.Responder(bob) as responder:
        def flood(start, count):
            for i in range(start, start + count):
                responder.receive(_bogus_first_piece(bob.public_key, i + 1), i // 10, peer=f"198.51.100.{i % 250}:{i}")
                responder.datagrams()
                assert responder.pending <= 128

        flood(0, 5000)  # fills the table and warms up the allocator
        before = _rss_kib()
        flood(5000, 40_000)
        grown = _rss_kib() - before
        assert responder.pending == 128
        # 40,000 pieces of 1,200 bytes went through (46 MiB); what stays is the bounded table.
        assert grown < 2048, f"resident memory grew by {grown} KiB"


def test_arguments_are_checked(identities):
    alice, bob, _ = identities
    for bad_key in (b"", bytes(100), bytes(dna.PUBLIC_KEY_SIZE + 1)):
        with pytest.raises(DNAError) as caught:
            dna.Initiator(alice, "bob", bad_key, 0)
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        dna.Initiator(alice, "", bob.public_key, 0)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    responder = dna.Responder(bob)
    with pytest.raises(DNAError) as caught:
        responder.receive(b"garbage", 0, peer=None)  # a responder needs the sender's address
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    with pytest.raises(DNAError) as caught:
        responder.receive(b"garbage" * 10, 0, peer="x")
    assert caught.value.code == ErrorCode.BAD_MAGIC
    with pytest.raises(DNAError) as caught:
        responder.receive(dna.encode_frame(MessageType.DATA, 0, b"x"), 0, peer="x")
    assert caught.value.code == ErrorCode.PROTOCOL
    assert responder.next_deadline is None and responder.take_session() is None
    responder.close()
    with pytest.raises(DNAError) as caught:
        responder.pending
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
