"""Signed values at any DHT key (dht_values.h, docs/PROTOCOL.md §10) through the C API on loopback:
30 real nodes in one process, values put by one node and got from others."""
import concurrent.futures
import hashlib
import threading
import time

import pytest

import dnatransport as dna
from dnatransport import DNAError, ErrorCode


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    root = tmp_path_factory.mktemp("values")
    nodes = [dna.DHT(data_dir=root / f"node{i}", bind_ip="127.0.0.1") for i in range(30)]
    seed = f"127.0.0.1:{nodes[0].port}"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda node: node.bootstrap([seed]), nodes[1:]))
    for node in nodes:
        node.refresh()
    yield nodes
    for node in nodes:
        node.close()


def test_value_key_is_sha256_of_the_text_truncated():
    assert dna.value_key("group:friends") == hashlib.sha256(b"group:friends").digest()[:20]
    with pytest.raises(DNAError):
        dna.value_key(b"\xff\x00")  # C text would end at the NUL


def test_values_of_every_size_are_put_on_one_node_and_got_from_others(network):
    for size in (0, 1, 1000, 14_000, 30_000, dna.VALUE_MAX_DATA):
        data = bytes((i * 7 + size) & 0xFF for i in range(size))
        key = f"profile:{size}"
        holders, sequence = network[3].put("alice", key, data, type=9, lifetime=3600)
        assert holders >= 15, f"{size} bytes stored on {holders} nodes"
        for reader in (network[11], network[27]):
            values = reader.get(key)
            assert len(values) == 1, f"{size} bytes: {values}"
            value = values[0]
            assert (value.data, value.signer, value.slot, value.sequence, value.type) == (data, "alice", 0, sequence, 9)
            assert value.key == dna.value_key(key) and not value.is_tombstone
            assert value.lifetime == 3600 and abs(value.created - time.time()) < 60
    with pytest.raises(DNAError) as caught:
        network[3].put("alice", "profile:big", bytes(dna.VALUE_MAX_DATA + 1))
    assert caught.value.code == ErrorCode.TOO_LARGE


def test_writers_hold_one_value_per_slot_and_a_write_replaces_only_their_own(network):
    key = "group:friends"
    network[1].put("alice", key, b"alice 1", slot=0)
    network[2].put("bob", key, b"bob 1", slot=0)
    network[2].put("bob", key, b"bob's second slot", slot=1)
    _, latest = network[1].put("alice", key, b"alice 2", slot=0)
    values = network[20].get(key)
    by_writer = {(v.signer, v.slot): v.data for v in values}
    assert by_writer == {("alice", 0): b"alice 2", ("bob", 0): b"bob 1", ("bob", 1): b"bob's second slot"}
    # Ordered by signer id, then slot; one writer's only; what changed since a sequence.
    assert [(v.signer_id, v.slot) for v in values] == sorted((v.signer_id, v.slot) for v in values)
    bob = next(v.signer_id for v in values if v.signer == "bob")
    assert {v.signer for v in network[21].get(key, signer_id=bob)} == {"bob"}
    assert [v.data for v in network[22].get(key, since=latest - 1)] == [b"alice 2"]
    # Deleting is a tombstone at a higher sequence: the slot reads as deleted, bob's stay.
    assert network[1].delete("alice", key, slot=0) >= 15
    after = {(v.signer, v.slot): v for v in network[23].get(key)}
    assert after[("alice", 0)].is_tombstone and after[("alice", 0)].data == b""
    assert after[("bob", 0)].data == b"bob 1"


def test_a_put_before_the_node_has_contacts_waits_and_then_fails(tmp_path):
    with dna.DHT(data_dir=tmp_path / "alone", bind_ip="127.0.0.1") as alone:
        start = time.monotonic()
        with pytest.raises(DNAError) as caught:
            alone.put("alice", "k", b"x", timeout_ms=300)
        assert caught.value.code == ErrorCode.UNREACHABLE
        assert 0.25 < time.monotonic() - start < 5
        with pytest.raises(DNAError) as caught:
            alone.get("k", timeout_ms=300)
        assert caught.value.code == ErrorCode.UNREACHABLE


def test_bad_arguments_are_refused(network):
    node = network[4]
    for bad in (lambda: node.put("alice", b"short", b"x"), lambda: node.get(b"\x00" * 19),
                lambda: node.get("k", signer_id=b"\x01" * 31), lambda: node.put("alice", "k", b"x", lifetime=0),
                lambda: node.put("alice", "k", b"x", lifetime=dna.VALUE_MAX_LIFETIME + 1),
                lambda: node.put("", "k", b"x")):
        with pytest.raises(DNAError) as caught:
            bad()
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def test_a_transports_dht_puts_with_its_own_node_and_identity(network, tmp_path):
    seed = f"127.0.0.1:{network[0].port}"
    with dna.Transport("carol", data_dir=tmp_path / "carol", bootstrap=[seed], bind_ip="127.0.0.1") as carol:
        holders, _ = carol.dht.put("carol", "carol:status", b"online")
        assert holders >= 15
        assert [(v.signer, v.data) for v in network[9].get("carol:status")] == [("carol", b"online")]
        assert carol.dht.get("carol:status")[0].data == b"online"
    with pytest.raises(DNAError):
        carol.dht.get("carol:status")  # the transport is closed


def test_a_sealed_value_opens_only_for_its_reader(network, tmp_path):
    """Sealed values (§10.6): alice seals a group key to ines, who published her inbox keys from
    her own node (another key publishing ines's is refused: first come); holders store it as any
    value, ines opens it, nobody else does, and a value whose slot, type or data changed does not
    open. Sealing to oneself needs no published keys."""
    seed = f"127.0.0.1:{network[0].port}"
    with dna.DHT(data_dir=tmp_path / "ines", bind_ip="127.0.0.1") as ines:
        ines.bootstrap([seed])
        assert ines.publish_keys("ines") >= 15
        with pytest.raises(DNAError) as caught:
            network[5].publish_keys("ines")  # another key called ines
        assert caught.value.code == ErrorCode.NAME_TAKEN
        secret = b"group key for ines " + bytes(range(256)) * 4
        holders, sequence = network[3].put_sealed("alice", "ines", "group:keys", secret, slot=7, type=12, lifetime=3600)
        assert holders >= 15
        (value,) = network[18].get("group:keys")
        assert value.is_sealed and not value.is_tombstone
        assert (value.signer, value.slot, value.type, value.sequence) == ("alice", 7, 12, sequence)
        assert secret not in value.data and len(value.data) == len(secret) + 1137
        assert ines.open("ines", value) == secret
        # The other key called ines (network[5]'s), the writer itself, a changed field: refused.
        with pytest.raises(DNAError) as caught:
            network[18].open("ines", value)  # no key of ines there: none is made
        assert caught.value.code == ErrorCode.NOT_FOUND
        for opener, who, changed in ((network[5], "ines", value), (network[3], "alice", value),
                                     (ines, "ines", value._replace(slot=8)), (ines, "ines", value._replace(type=13)),
                                     (ines, "ines", value._replace(data=value.data[:-1] + bytes([value.data[-1] ^ 1])))):
            with pytest.raises(DNAError) as caught:
                opener.open(who, changed)
            assert caught.value.code == ErrorCode.AUTHENTICATION, (who, changed.slot, changed.type)
        # A contact list for oneself, of the largest size.
        contacts = bytes(i * 13 & 0xFF for i in range(dna.VALUE_MAX_SEALED_DATA))
        assert ines.put_sealed("ines", "ines", "ines:contacts", contacts)[0] >= 15
        (own,) = network[25].get("ines:contacts")
        assert own.is_sealed and ines.open("ines", own) == contacts
    with pytest.raises(DNAError) as caught:
        network[3].put_sealed("alice", "alice", "k", bytes(dna.VALUE_MAX_SEALED_DATA + 1))
    assert caught.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(DNAError) as caught:
        network[3].put_sealed("alice", "nobody-published", "k", b"x", timeout_ms=20_000)
    assert caught.value.code == ErrorCode.PEER_OFFLINE
    network[3].put("alice", "plain", b"not sealed")
    with pytest.raises(DNAError) as caught:
        network[3].open("alice", network[3].get("plain")[0])
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def _inbox_secrets(key_file):
    """An inbox's secret keys (§8.1) from an identity key file, derived here with HKDF-SHA-256 from
    the seed: the X25519 secret and the ML-KEM-768 decapsulation key (kyber-py)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from kyber_py.ml_kem import ML_KEM_768
    data = key_file.read_bytes()
    assert data[:4] == b"DNAK"
    seed = data[6 + data[5]:6 + data[5] + 32]

    def derive(info, length):
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=b"DNA-INBOX-1", info=info).derive(seed)
    _, decapsulation_key = ML_KEM_768.key_derive(derive(b"ml-kem-768", 64))
    return derive(b"x25519", 32), decapsulation_key


def test_sealed_values_open_with_an_independent_implementation(network, tmp_path):
    """PROTOCOL.md §10.6 as written, checked by code that shares nothing with the library: the
    reader's keys derived from its key file, X25519 and ChaCha20-Poly1305 (cryptography),
    ML-KEM-768 (kyber-py), HKDF-SHA-256; the associated data binds key, signer id, slot and type."""
    import hashlib
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from kyber_py.ml_kem import ML_KEM_768
    plaintext = b"a message only erin reads"
    with dna.DHT(data_dir=tmp_path / "erin", bind_ip="127.0.0.1") as erin:
        erin.bootstrap([f"127.0.0.1:{network[0].port}"])
        erin.put_sealed("erin", "erin", "erin:notes", plaintext, slot=3, type=5)
        (value,) = network[7].get("erin:notes")
    x25519_secret, decapsulation_key = _inbox_secrets(tmp_path / "erin" / "identities" / "erin.key")
    data = value.data
    assert data[0] == 1 and len(data) == 1 + 32 + 1088 + len(plaintext) + 16
    ephemeral, kem_ciphertext, sealed = data[1:33], data[33:1121], data[1121:]
    dh = X25519PrivateKey.from_private_bytes(x25519_secret).exchange(X25519PublicKey.from_public_bytes(ephemeral))
    kem_secret = ML_KEM_768.decaps(decapsulation_key, kem_ciphertext)
    associated = (b"DNA-SEALED-VALUE-1" + value.key + value.signer_id + value.slot.to_bytes(4, "big")
                  + value.type.to_bytes(2, "big") + data[:1121])
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(associated).digest(),
               info=b"dna sealed value key").derive(b"DNA-SEALED-VALUE-1" + dh + kem_secret)
    assert ChaCha20Poly1305(key).decrypt(bytes(12), sealed, associated) == plaintext


def test_dnat_put_and_get_from_the_command_line(network, tmp_path):
    import subprocess
    from test_dnat_node import DNAT
    common = ["--bind", "127.0.0.1", "--bootstrap", f"127.0.0.1:{network[0].port}", "--timeout", "20"]

    def dnat(*args, data_dir):
        return subprocess.run([str(DNAT), *args, *common, "--data-dir", str(tmp_path / data_dir)],
                              capture_output=True, text=True, timeout=60)

    put = dnat("put", "cli:board", "first note", "--as", "dave", "--slot", "4", "--type", "3", data_dir="dave")
    assert put.returncode == 0, put.stdout + put.stderr
    assert "slot 4" in put.stdout and "holders" in put.stdout
    binary = subprocess.run([str(DNAT), "put", "cli:board", "-", "--as", "erin", *common, "--data-dir", str(tmp_path / "erin")],
                            input=b"\x00\xff", capture_output=True, timeout=60)
    assert binary.returncode == 0, binary.stderr
    got = dnat("get", "cli:board", data_dir="reader")
    assert got.returncode == 0, got.stderr
    lines = sorted(got.stdout.splitlines())
    assert len(lines) == 2, got.stdout
    dave = next(line.split(" ", 6) for line in lines if line.startswith("dave "))
    assert dave[1] == "4" and dave[3] == "3" and dave[5] == "86400" and dave[6] == "first note"
    assert any(line.startswith("erin 0 ") and line.endswith(" hex:00ff") for line in lines)
    # The same key given as its 20 bytes in hex; and a slot deleted.
    deleted = dnat("put", "cli:board", "", "--delete", "--as", "dave", "--slot", "4", data_dir="dave")
    assert deleted.returncode == 0 and deleted.stdout.startswith("deleted"), deleted.stdout + deleted.stderr
    by_hex = dnat("get", dna.value_key("cli:board").hex(), "--hex", data_dir="reader")
    assert any(line.startswith("dave 4 ") and line.endswith(" deleted") for line in by_hex.stdout.splitlines()), by_hex.stdout
    # No bootstrap node: a usage error, not a hang.
    alone = subprocess.run([str(DNAT), "get", "x", "--data-dir", str(tmp_path / "x")], capture_output=True, text=True,
                           timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert alone.returncode != 0 and "bootstrap" in alone.stderr


def test_dnat_seals_a_value_to_an_identity_that_published_its_keys(network, tmp_path):
    import subprocess
    from test_dnat_node import DNAT
    common = ["--bind", "127.0.0.1", "--bootstrap", f"127.0.0.1:{network[0].port}", "--timeout", "20"]

    def dnat(*args, data_dir):
        return subprocess.run([str(DNAT), *args, *common, "--data-dir", str(tmp_path / data_dir)],
                              capture_output=True, text=True, timeout=60)

    early = dnat("put", "cli:sealed", "too early", "--as", "gina", "--to", "frank", data_dir="gina")
    assert early.returncode == 1 and "frank has published no keys" in early.stdout, early.stdout + early.stderr
    published = dnat("publish-keys", "--as", "frank", data_dir="frank")
    assert published.returncode == 0 and "frank's inbox keys stored on" in published.stdout, published.stdout + published.stderr
    put = dnat("put", "cli:sealed", "for frank only", "--as", "gina", "--to", "frank", "--slot", "2", data_dir="gina")
    assert put.returncode == 0 and put.stdout.startswith("sealed and stored at"), put.stdout + put.stderr
    opened = dnat("get", "cli:sealed", "--as", "frank", data_dir="frank")
    assert opened.returncode == 0 and opened.stdout.startswith("gina 2 ") and opened.stdout.rstrip().endswith(" sealed:for frank only"), \
        opened.stdout + opened.stderr
    unread = dnat("get", "cli:sealed", data_dir="reader")
    assert unread.returncode == 0 and unread.stdout.rstrip().endswith(f" sealed ({len('for frank only') + 1137} bytes)"), unread.stdout


def test_a_listener_hears_each_put_pushed_and_reports_the_latency(network):
    import selectors
    key = "room:lobby"
    network[6].put("alice", key, b"before", slot=0)
    heard_on_thread = []
    listener = network[14].listen(key, callback=lambda kind, value: heard_on_thread.append((kind, value.data)))
    try:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        assert selector.select(timeout=10), "the listener's first get brought nothing"
        assert [(kind, v.data) for kind, v in listener.poll()] == [("changed", b"before")]
        latencies = []
        for i in range(20):
            writer = network[6]  # alice's key is in node 6's data dir (each data dir has its own "alice")
            start = time.monotonic()
            _, sequence = writer.put("alice", key, f"message {i}".encode(), slot=0)
            kind, value = next(listener)
            latencies.append(time.monotonic() - start)
            assert (kind, value.data, value.sequence) == ("changed", f"message {i}".encode(), sequence)
        latencies.sort()
        print(f"listen latency (put returned to event), 20 puts on 30 loopback nodes: "
              f"p50 {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        assert latencies[10] < 1.0
        assert [d for _, d in heard_on_thread] == [b"before"] + [f"message {i}".encode() for i in range(20)]
        # Another writer's slot, and a deletion: pushed too; a filter by signer keeps one writer's.
        alice_only = network[15].listen(key, signer_id=network[3].get(key)[0].signer_id)  # node 6's alice, the only writer yet
        assert selector.select(timeout=0) == []
        network[8].put("bob", key, b"bob's", slot=1)
        assert next(listener)[1].signer == "bob"
        network[6].delete("alice", key, slot=0, lifetime=60)
        kind, value = next(listener)
        assert kind == "changed" and value.is_tombstone and value.signer == "alice"
        seen, deadline = [], time.monotonic() + 10
        while not any(v.is_tombstone for v in seen) and time.monotonic() < deadline:
            select_ready = selectors.DefaultSelector()
            select_ready.register(alice_only, selectors.EVENT_READ)
            select_ready.select(timeout=1)
            seen += [v for _, v in alice_only.poll()]
        assert any(v.is_tombstone for v in seen) and {v.signer for v in seen} == {"alice"}, [(v.signer, v.sequence, v.flags) for v in seen]
        alice_only.cancel()
    finally:
        listener.cancel()
    assert dna.lib.dht_listen_cancel(network[14]._live(), 12345) == ErrorCode.NOT_FOUND


def test_dnat_watch_prints_each_value_pushed(network, tmp_path):
    import subprocess
    from test_dnat_node import DNAT
    watch = subprocess.Popen([str(DNAT), "watch", "cli:watched", "--bind", "127.0.0.1", "--bootstrap",
                              f"127.0.0.1:{network[0].port}", "--data-dir", str(tmp_path / "watcher")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # joined and subscribed
        lines = []
        for text in ("first", "second"):  # (a write replaced before the watcher fetched it would be skipped)
            network[12].put("frank", "cli:watched", text.encode())
            lines.append(watch.stdout.readline().strip())
        assert lines[0].startswith("changed frank 0 ") and lines[0].endswith(" first"), lines
        assert lines[1].startswith("changed frank 0 ") and lines[1].endswith(" second"), lines
    finally:
        watch.terminate()
        assert watch.wait(timeout=10) == 0


def test_a_listener_cancelled_from_its_own_callback_or_another_thread_hears_nothing_more(network):
    import threading
    key = "room:cancel"
    network[2].put("gina", key, b"one")
    calls = []

    def once(kind, value):
        calls.append(value.data)
        listener.cancel()  # from the I/O thread, inside the callback

    listener = network[9].listen(key, callback=once)
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.05)
    network[2].put("gina", key, b"two")
    time.sleep(0.5)
    assert calls == [b"one"] and listener.id is None
    assert list(listener) == []  # cancelled: the iterator ends
    # From another thread while events flow: cancel returns, and nothing is called after it.
    after = []
    other = network[10].listen(key, callback=lambda kind, value: after.append(time.monotonic()))
    time.sleep(0.3)
    stopper = threading.Thread(target=other.cancel)
    stopper.start()
    stopper.join(10)
    stopped = time.monotonic()
    network[2].put("gina", key, b"three")
    time.sleep(0.5)
    assert all(t <= stopped for t in after) and other.id is None
    other.cancel()  # twice: nothing
    with pytest.raises(DNAError) as caught:
        network[3].put("gina", key, b"x", slot=2**32)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


def test_closing_a_dht_or_transport_ends_its_listeners(network, tmp_path):
    import threading
    seed = f"127.0.0.1:{network[0].port}"
    network[5].put("hana", "room:closing", b"here")
    ended = {}

    def drain(name, listener):
        ended[name] = [value.data for _, value in listener]  # returns only when the iteration ends

    for name, make in (("dht", lambda: dna.DHT(data_dir=tmp_path / "dht", bind_ip="127.0.0.1")),
                       ("transport", lambda: dna.Transport("ivan", data_dir=tmp_path / "ivan", bootstrap=[seed],
                                                           bind_ip="127.0.0.1"))):
        owner = make()
        if name == "dht":
            owner.bootstrap([seed])
        heard = threading.Event()
        listener = (owner if name == "dht" else owner.dht).listen("room:closing", callback=lambda kind, value: heard.set())
        reader = threading.Thread(target=drain, args=(name, listener))
        reader.start()
        assert heard.wait(10), f"the {name}'s listener heard nothing"
        time.sleep(0.2)  # the reader takes the event and waits for the next
        owner.close()
        reader.join(5)
        assert not reader.is_alive(), f"closing the {name} left its listener's iterator waiting"
        assert ended[name] == [b"here"] and listener.id is None
        listener.cancel()  # after the close: nothing



def test_asynchronous_puts_gets_and_deletes_complete_once_without_blocking(network, tmp_path):
    writer, reader = network[17], network[18]
    puts = [writer.put_async("lena", f"async:{i}", f"value {i}".encode()) for i in range(20)]
    results = [f.result(timeout=30) for f in puts]
    assert all(holders >= 15 for holders, _ in results), results
    assert [sequence for _, sequence in results] == [f.sequence for f in puts] and len({f.op_id for f in puts}) == 20
    gets = [reader.get_async(f"async:{i}") for i in range(20)]
    assert [[v.data for v in g.result(timeout=30)] for g in gets] == [[f"value {i}".encode()] for i in range(20)]
    assert writer.delete_async("lena", "async:0", lifetime=60).result(timeout=30) >= 15
    assert reader.get("async:0")[0].is_tombstone
    # Started from a listener's callback, on the I/O thread (where put would fail INVALID_ARGUMENT).
    chained = concurrent.futures.Future()

    def answer(kind, value):
        if not chained.done():
            chained.set_result(network[19].put_async("lena", "async:reply", value.data))

    listener = network[19].listen("async:chain", callback=answer)
    try:
        writer.put("lena", "async:chain", b"ping")
        assert chained.result(timeout=10).result(timeout=30)[0] >= 15
        assert [v.data for v in network[20].get("async:reply")] == [b"ping"]
    finally:
        listener.cancel()
    # Started before the node has a contact: it waits for one (up to its timeout), then runs.
    late = dna.DHT(data_dir=tmp_path / "late", bind_ip="127.0.0.1")
    try:
        early = late.put_async("lena", "async:early", b"x", timeout_ms=20_000)
        time.sleep(0.3)
        assert not early.done()
        late.bootstrap([f"127.0.0.1:{network[0].port}"])
        assert early.result(timeout=30)[0] >= 15
    finally:
        late.close()
    # No contact within the timeout: UNREACHABLE; under way when the DHT closes: CLOSED.
    with dna.DHT(data_dir=tmp_path / "alone", bind_ip="127.0.0.1") as alone:
        lonely = alone.put_async("lena", "k", b"x", timeout_ms=300)
        with pytest.raises(DNAError) as caught:
            lonely.result(timeout=10)
        assert caught.value.code == ErrorCode.UNREACHABLE
        pending = alone.get_async("k", timeout_ms=60_000)
    with pytest.raises(DNAError) as caught:
        pending.result(timeout=10)
    assert caught.value.code == ErrorCode.CLOSED
    with pytest.raises(DNAError) as caught:
        alone.get_async("k")
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT  # closed handle


def test_asynchronous_sealed_puts_complete_once_on_the_io_thread(network, tmp_path):
    """dht_value_put_sealed_async: the reader's keys are looked up off the caller's thread, the
    result comes once on the context's I/O thread (the thread a listener's callback runs on), with
    the errors put_sealed would raise; it can be started from a callback, and closing the DHT ends
    one under way with CLOSED."""
    writer = network[21]
    seed = f"127.0.0.1:{network[0].port}"
    with dna.DHT(data_dir=tmp_path / "mira", bind_ip="127.0.0.1") as mira:
        mira.bootstrap([seed])
        assert mira.publish_keys("mira") >= 15
        # The I/O thread of the writer's context, as a listener's callback sees it.
        io_thread = concurrent.futures.Future()
        listener = writer.listen("sealed-async:probe", callback=lambda kind, value: io_thread.done()
                                 or io_thread.set_result(threading.get_ident()))
        try:
            network[2].put("lena", "sealed-async:probe", b"probe")
            io_ident = io_thread.result(timeout=10)
        finally:
            listener.cancel()
        finished_on = []
        all_finished = threading.Event()

        def finished(_):
            finished_on.append(threading.get_ident())
            if len(finished_on) == 5:
                all_finished.set()
        secrets = [f"group key {i}".encode() * 40 for i in range(5)]
        puts = [writer.put_sealed_async("lena", "mira", f"sealed-async:{i}", secret, slot=i, type=3)
                for i, secret in enumerate(secrets)]
        for put in puts:
            put.add_done_callback(finished)
        results = [put.result(timeout=30) for put in puts]
        # result() returns once the Future is set; its done-callbacks run right after, on the I/O thread.
        assert all_finished.wait(10), finished_on
        assert all(holders >= 15 for holders, _ in results), results
        assert [sequence for _, sequence in results] == [put.sequence for put in puts]
        assert len({put.op_id for put in puts}) == 5
        for i, secret in enumerate(secrets):
            (value,) = network[9].get(f"sealed-async:{i}")
            assert value.is_sealed and (value.slot, value.type, value.sequence) == (i, 3, puts[i].sequence)
            assert mira.open("mira", value) == secret
        # Exactly once each, on the I/O thread (a callback added after the end runs on this thread).
        assert finished_on.count(io_ident) + finished_on.count(threading.get_ident()) == 5, finished_on
        assert io_ident in finished_on
        # To oneself: sealed here, no lookup.
        own = writer.put_sealed_async("lena", "lena", "sealed-async:own", b"my contacts")
        assert own.result(timeout=30)[0] >= 15
        assert writer.open("lena", network[4].get("sealed-async:own")[0]) == b"my contacts"
        # Started from a listener's callback, on the I/O thread (put_sealed would fail there).
        chained = concurrent.futures.Future()

        def answer(kind, value):
            if not chained.done():
                chained.set_result(writer.put_sealed_async("lena", "mira", "sealed-async:reply", value.data))

        listener = writer.listen("sealed-async:chain", callback=answer)
        try:
            network[6].put("lena", "sealed-async:chain", b"reply to mira")
            assert chained.result(timeout=10).result(timeout=30)[0] >= 15
            assert mira.open("mira", network[8].get("sealed-async:reply")[0]) == b"reply to mira"
        finally:
            listener.cancel()
    # Errors as put_sealed's: nobody published keys; too large (at the call).
    with pytest.raises(DNAError) as caught:
        writer.put_sealed_async("lena", "nobody-published", "k", b"x", timeout_ms=20_000).result(timeout=30)
    assert caught.value.code == ErrorCode.PEER_OFFLINE
    with pytest.raises(DNAError) as caught:
        writer.put_sealed_async("lena", "lena", "k", bytes(dna.VALUE_MAX_SEALED_DATA + 1))
    assert caught.value.code == ErrorCode.TOO_LARGE
    # No contact within the timeout: UNREACHABLE; under way when the DHT closes: CLOSED, at once.
    with dna.DHT(data_dir=tmp_path / "alone", bind_ip="127.0.0.1") as alone:
        lonely = alone.put_sealed_async("lena", "mira", "k", b"x", timeout_ms=300)
        with pytest.raises(DNAError) as caught:
            lonely.result(timeout=10)
        assert caught.value.code == ErrorCode.UNREACHABLE
        pending = alone.put_sealed_async("lena", "mira", "k", b"x", timeout_ms=60_000)
        time.sleep(0.2)
        assert not pending.done()
    with pytest.raises(DNAError) as caught:
        pending.result(timeout=5)
    assert caught.value.code == ErrorCode.CLOSED
