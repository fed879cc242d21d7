"""Transport (network_transport.h) on loopback: a DHT node as bootstrap, two or more identities that
connect by name and exchange messages; readiness through selectors; presence; clean ends."""
import os
import selectors
import subprocess
import sys
import threading
import time

import pytest

import dnatransport as dna


@pytest.fixture()
def network(tmp_path):
    boot = dna.DHT(data_dir=str(tmp_path / "boot"), bind_ip="127.0.0.1")
    bootstrap = [f"127.0.0.1:{boot.port}"]

    def make(name, **kw):
        return dna.Transport(name, data_dir=str(tmp_path / name), bootstrap=bootstrap, bind_ip="127.0.0.1", **kw)

    made = []

    def factory(name, **kw):
        transport = make(name, **kw)
        made.append(transport)
        return transport

    def child(name, script, **popen):
        """A child process running `script`, whose dna.Transport(name) takes everything from the DNA_*
        environment: this network's bootstrap node, loopback, its data in the directory `name`."""
        env = dict(os.environ, DNA_HOME=str(tmp_path / name), DNA_BOOTSTRAP=",".join(bootstrap), DNA_BIND="127.0.0.1")
        return subprocess.Popen([sys.executable, "-c", script], env=env, **popen)

    factory.bootstrap = bootstrap
    factory.child = child
    yield factory
    for transport in made:
        transport.close()
    boot.close()


def test_connect_send_receive_both_ways(network):
    alice, bob = network("alice"), network("bob")
    started = time.monotonic()
    conn = alice.connect("bob")
    incoming, peer = bob.accept(timeout_ms=10000)
    assert peer == "alice"
    assert time.monotonic() - started < 5
    alice.send(conn, b"hello")
    assert bob.receive(incoming, timeout_ms=5000) == b"hello"
    bob.send(incoming, b"hi back")
    assert alice.receive(conn, timeout_ms=5000) == b"hi back"
    with pytest.raises(dna.DNAError) as caught:
        alice.receive(conn, timeout_ms=0)
    assert caught.value.code == dna.ErrorCode.TIMEOUT


def test_the_announce_state_says_whether_peers_can_find_this_identity(network, tmp_path, silent_port):
    alice = network("alice")
    state = alice.announce_state()
    assert state["announced"] and state["holders"] >= 1 and state["failed_attempts"] == 0, state
    assert state["stored_ms_ago"] is not None and state["stored_ms_ago"] < 60000, state
    # Bootstrapped to a port where no node answers: stored nowhere, and it says so.
    lonely = dna.Transport("lonely", data_dir=str(tmp_path / "lonely"), bootstrap=[f"127.0.0.1:{silent_port}"],
                           bind_ip="127.0.0.1")
    try:
        state = lonely.announce_state()
        assert not state["announced"] and state["holders"] == 0 and state["stored_ms_ago"] is None, state
        assert state["failed_attempts"] >= 1, state
    finally:
        lonely.close()
    with pytest.raises(dna.DNAError) as caught:
        lonely.announce_state()
    assert caught.value.code == dna.ErrorCode.INVALID_ARGUMENT  # the binding refuses a closed Transport


def test_receive_into_reuses_the_callers_buffer(network):
    alice, bob = network("alice"), network("bob")
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    buffer = bytearray(1 << 16)
    for index, size in enumerate((0, 1, 1200, 5000, 1 << 16)):
        alice.send(conn, bytes([index]) * size, stream=index)
    sizes = {}
    for _ in range(5):
        stream, length = bob.receive_into(incoming, buffer, timeout_ms=5000)
        assert buffer[:length] == bytes([stream]) * length
        sizes[stream] = length
    assert sizes == dict(enumerate((0, 1, 1200, 5000, 1 << 16)))
    # Too small: the message stays queued, the error says its length.
    alice.send(conn, b"x" * 100)
    with pytest.raises(dna.DNAError) as caught:
        bob.receive_into(incoming, bytearray(10), timeout_ms=5000)
    assert caught.value.code == dna.ErrorCode.BUFFER_TOO_SMALL and caught.value.needed == 100
    view = memoryview(buffer)[100:300]
    assert bob.receive_into(incoming, view, timeout_ms=0) == (0, 100) and bytes(view[:100]) == b"x" * 100
    with pytest.raises(TypeError):
        bob.receive_into(incoming, b"read-only")
    with pytest.raises(dna.DNAError) as caught:
        bob.receive_into(incoming, buffer, timeout_ms=0)
    assert caught.value.code == dna.ErrorCode.TIMEOUT


def test_streams_do_not_block_each_other_and_order_holds(network):
    alice, bob = network("alice"), network("bob")
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    attachment = os.urandom(3 * 1024 * 1024)
    alice.send(conn, attachment, stream=7)
    for i in range(50):
        alice.send(conn, f"text {i}".encode(), stream=1)
    got = {1: [], 7: []}
    while len(got[1]) < 50 or not got[7]:
        stream, data = bob.receive_stream(incoming, timeout_ms=20000)
        got[stream].append(data)
    assert got[1] == [f"text {i}".encode() for i in range(50)]
    assert got[7] == [attachment]


def test_readiness_fd_with_selectors(network):
    alice, bob = network("alice"), network("bob")
    selector = selectors.DefaultSelector()
    selector.register(bob, selectors.EVENT_READ)
    assert selector.select(timeout=0) == []
    conn = alice.connect("bob")
    assert selector.select(timeout=10)
    incoming, _ = bob.accept(timeout_ms=0)
    assert selector.select(timeout=0) == []
    alice.send(conn, b"ping")
    assert selector.select(timeout=10)
    assert bob.receive(incoming, timeout_ms=0) == b"ping"
    assert selector.select(timeout=0) == []
    selector.close()


def test_presence_and_clean_disconnect(network):
    alice, bob = network("alice"), network("bob")
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    assert alice.presence(conn) == dna.Presence.ONLINE
    bob.set_presence(dna.Presence.AWAY)
    deadline = time.monotonic() + 5
    while alice.presence(conn) != dna.Presence.AWAY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alice.presence(conn) == dna.Presence.AWAY
    with pytest.raises(ValueError):
        dna.Presence(9)
    with pytest.raises(dna.DNAError) as caught:
        bob.set_presence(9)
    assert caught.value.code == dna.ErrorCode.INVALID_ARGUMENT

    for i in range(100):
        alice.send(conn, b"x" * 1000 + bytes([i]))
    alice.disconnect(conn)
    received = [bob.receive(incoming, timeout_ms=5000) for _ in range(100)]
    assert [r[-1] for r in received] == list(range(100))
    with pytest.raises(dna.DNAError) as caught:
        bob.receive(incoming, timeout_ms=5000)
    assert caught.value.code == dna.ErrorCode.CLOSED
    bob.disconnect(incoming)
    with pytest.raises(dna.DNAError) as caught:
        bob.disconnect(incoming)
    assert caught.value.code == dna.ErrorCode.NOT_FOUND


def test_offline_peer_and_errors(network):
    alice = network("alice")
    with pytest.raises(dna.DNAError) as caught:
        alice.connect("nobody")
    assert caught.value.code == dna.ErrorCode.PEER_OFFLINE
    with pytest.raises(dna.DNAError) as caught:
        alice.connect("alice")
    assert caught.value.code == dna.ErrorCode.INVALID_ARGUMENT
    with pytest.raises(dna.DNAError) as caught:
        alice.accept(timeout_ms=50)
    assert caught.value.code == dna.ErrorCode.TIMEOUT
    with pytest.raises(dna.DNAError) as caught:
        alice.send(12345, b"x")
    assert caught.value.code == dna.ErrorCode.NOT_FOUND
    alice.close()
    with pytest.raises(dna.DNAError):
        alice.connect("bob")


def test_message_size_limit(network):
    alice, bob = network("alice", max_message_size=4096), network("bob", max_message_size=4096)
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    alice.send(conn, b"y" * 4096)
    assert bob.receive(incoming, timeout_ms=5000) == b"y" * 4096
    with pytest.raises(dna.DNAError) as caught:
        alice.send(conn, b"y" * 4097)
    assert caught.value.code == dna.ErrorCode.TOO_LARGE


def test_many_threads_and_connections(network):
    """8 threads of one process each connect to bob and exchange 20 messages each way."""
    bob = network("bob")
    clients = [network(f"client{i}") for i in range(8)]
    errors = []

    def serve():
        try:
            for _ in range(8):
                incoming, peer = bob.accept(timeout_ms=20000)
                threading.Thread(target=echo, args=(incoming,)).start()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    def echo(incoming):
        try:
            for _ in range(20):
                bob.send(incoming, bob.receive(incoming, timeout_ms=20000))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    def client(transport, index):
        try:
            conn = transport.connect("bob")
            for i in range(20):
                message = f"{index}:{i}".encode()
                transport.send(conn, message)
                assert transport.receive(conn, timeout_ms=20000) == message
            transport.disconnect(conn)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    server = threading.Thread(target=serve)
    server.start()
    threads = [threading.Thread(target=client, args=(c, i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    server.join(60)
    assert errors == []


def test_hundred_connections_and_eight_threads_sending_on_one_context(network):
    """alice holds 100 connections to bob at once; 8 threads send on them at the same time, each on
    its own 12 or 13 connections and all on connection 0 too: every message arrives once, each
    thread's messages on a connection in the order it sent them."""
    alice, bob = network("alice"), network("bob")
    started = time.monotonic()
    conns = [alice.connect("bob") for _ in range(100)]
    incoming = {}
    for _ in range(100):
        conn, peer = bob.accept(timeout_ms=20000)
        assert peer == "alice"
        incoming[conn] = []
    connected = time.monotonic() - started
    assert len(set(conns)) == 100
    errors = []

    def sender(thread):
        try:
            mine = conns[thread::8]
            for i in range(50):
                for conn in mine:
                    alice.send(conn, f"{thread} {conns.index(conn)} {i}".encode())
                alice.send(conns[0], f"{thread} shared {i}".encode(), stream=1 + thread)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    # Each incoming connection gets 50 messages from its one thread, the first also 8 x 50 shared.
    total, deadline = 0, time.monotonic() + 60
    while total < 99 * 50 + 450 and time.monotonic() < deadline:
        before = total
        for conn, messages in incoming.items():
            while True:
                try:
                    messages.append(bob.receive_stream(conn, timeout_ms=0))
                except dna.DNAError as error:
                    assert error.code == dna.ErrorCode.TIMEOUT
                    break
                total += 1
        if total == before:
            time.sleep(0.01)
    counts = sorted(len(messages) for messages in incoming.values())
    assert counts == [50] * 99 + [450], counts
    for conn, messages in incoming.items():
        own = [m.decode().split() for s, m in messages if s == 0]
        assert len({(t, c) for t, c, _ in own}) == 1 and [int(i) for _, _, i in own] == list(range(50)), own[:5]
        shared = [m.decode().split() for s, m in messages if s != 0]
        for thread in range(8):
            assert [int(i) for t, _, i in shared if int(t) == thread] in ([], list(range(50)))
    with pytest.raises(dna.DNAError) as nothing:
        bob.receive(next(iter(incoming)), timeout_ms=100)
    assert nothing.value.code == dna.ErrorCode.TIMEOUT
    print(f"100 connections to one peer in {connected:.2f} s")
    for conn in conns:
        alice.disconnect(conn)


def test_transport_init_from_environment(network):
    """transport_init alone reads DNA_HOME, DNA_BOOTSTRAP and DNA_BIND (in a child process, so that
    this process's environment stays as it is)."""
    bob = network("bob")
    script = (
        "import dnatransport as dna\n"
        "t = dna.Transport('erin')\n"
        "c = t.connect('bob')\n"
        "t.send(c, b'from the environment')\n"
        "t.disconnect(c)\n"
        "t.close()\n"
    )
    child = network.child("erin", script)
    incoming, peer = bob.accept(timeout_ms=20000)
    assert peer == "erin"
    assert bob.receive(incoming, timeout_ms=10000) == b"from the environment"
    assert child.wait(30) == 0


def test_offline_messages_wait_for_the_peer(network):
    alice = network("alice")
    bob = network("bob")
    assert bob.fetch_offline() == 0
    bob.close()  # bob goes offline; his inbox keys stay in the DHT
    started = time.monotonic()
    alice.send_offline("bob", b"first")
    alice.send_offline("bob", b"second")
    stored = time.monotonic() - started
    with pytest.raises(dna.DNAError) as caught:
        alice.send_offline("bob", b"x" * (dna.TRANSPORT_OFFLINE_MAX + 1))
    assert caught.value.code == dna.ErrorCode.TOO_LARGE
    with pytest.raises(dna.DNAError) as caught:
        alice.send_offline("nobody", b"x")
    assert caught.value.code == dna.ErrorCode.PEER_OFFLINE

    bob = network("bob")  # the same data directory: the same identity
    selector = selectors.DefaultSelector()
    selector.register(bob, selectors.EVENT_READ)
    assert selector.select(timeout=10)
    got = [bob.receive_offline(timeout_ms=5000) for _ in range(2)]
    assert [(sender, data) for sender, data, _ in got] == [("alice", b"first"), ("alice", b"second")]
    assert all(abs(sent_at - time.time()) < 60 for _, _, sent_at in got)
    assert selector.select(timeout=0) == []
    with pytest.raises(dna.DNAError) as caught:
        bob.receive_offline(timeout_ms=0)
    assert caught.value.code == dna.ErrorCode.TIMEOUT
    assert bob.fetch_offline() == 0
    selector.close()
    # bob's node, one of the closest to his inbox, is gone: each store waits out its request timeouts.
    assert stored < 10, f"storing two messages took {stored:.1f} s"


def test_idle_connections_close(network):
    alice, bob = network("alice", idle_timeout_ms=500), network("bob")
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    alice.send(conn, b"one")
    assert bob.receive(incoming, timeout_ms=5000) == b"one"
    time.sleep(1.0)  # nothing either way for longer than alice's 500 ms: she closes it cleanly
    for transport, connection in ((alice, conn), (bob, incoming)):
        with pytest.raises(dna.DNAError) as caught:
            transport.receive(connection, timeout_ms=5000)
        assert caught.value.code == dna.ErrorCode.CLOSED


def test_a_silent_peer_ends_after_the_resume_window_and_its_messages_wait_in_its_inbox(network):
    """bob (a child process) is killed: alice notices within seconds (pings after silent RTOs), tries
    new paths for her resume_window_ms (1 s here, 60 s by default), then the connection ends and the
    message bob never acknowledged waits in his inbox, where he finds it when he comes back."""
    alice = network("alice", resume_window_ms=1000)
    script = (
        "import sys, dnatransport as dna\n"
        "t = dna.Transport('bob')\n"
        "print('ready', flush=True)\n"
        "c, _ = t.accept(timeout_ms=20000)\n"
        "print(t.receive(c, timeout_ms=10000).decode(), flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = network.child("bob", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        conn = alice.connect("bob")
        alice.send(conn, b"live")
        assert child.stdout.readline().strip() == "live"
        time.sleep(0.1)  # its acknowledgement (delayed at most 1 ms) reaches alice
        child.kill()
        child.wait(10)
        started = time.monotonic()
        alice.send(conn, b"never acknowledged")
        with pytest.raises(dna.DNAError) as caught:
            alice.receive(conn, timeout_ms=30000)
        assert caught.value.code == dna.ErrorCode.CLOSED
        ended = time.monotonic() - started
        # About 4 s to notice, 1 s of window, the store: far from the default window's 60 s.
        assert ended < 20, f"the connection ended {ended:.1f} s after the peer vanished"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    bob = network("bob")  # back, from the same directory
    # The store follows the end (transport_receive reports it first): bob asks until it is there.
    deadline, got = time.monotonic() + 20, None
    while got is None and time.monotonic() < deadline:
        bob.fetch_offline()
        try:
            got = bob.receive_offline(timeout_ms=500)
        except dna.DNAError as error:
            assert error.code == dna.ErrorCode.TIMEOUT
    assert got is not None and got[:2] == ("alice", b"never acknowledged")
    with pytest.raises(dna.DNAError) as caught:
        bob.receive_offline(timeout_ms=1000)
    assert caught.value.code == dna.ErrorCode.TIMEOUT


def test_a_negative_resume_window_is_refused(network):
    with pytest.raises(dna.DNAError) as caught:
        network("alice", resume_window_ms=-1)
    assert caught.value.code == dna.ErrorCode.INVALID_ARGUMENT


def test_a_second_key_claiming_a_live_name_is_refused_and_the_owner_stays_reachable(network, tmp_path):
    """Six nodes; alice (key K1) online. A second process claims "alice" with another key (K2): its
    transport_init and dht_announce report the name as taken, and bob still reaches the real alice
    every time (issue 15, case 5)."""
    extra = []
    try:
        for i in range(3):
            node = dna.DHT(data_dir=str(tmp_path / f"node{i}"), bind_ip="127.0.0.1")
            node.bootstrap(network.bootstrap)
            extra.append(node)
        alice, bob = network("alice"), network("bob")

        def exchange(round_):
            conn = bob.connect("alice")
            incoming, peer = alice.accept(timeout_ms=10000)
            assert peer == "bob"
            bob.send(conn, b"ping %d" % round_)
            assert alice.receive(incoming, timeout_ms=5000) == b"ping %d" % round_
            bob.disconnect(conn)
            alice.disconnect(incoming)

        for round_ in range(2):
            exchange(round_)
        with pytest.raises(dna.DNAError) as caught:
            dna.Transport("alice", data_dir=str(tmp_path / "squatter"), bootstrap=network.bootstrap, bind_ip="127.0.0.1")
        assert caught.value.code == dna.ErrorCode.NAME_TAKEN, caught.value
        # A squatter with a bare DHT node: its announce is refused, and the entry its own node now
        # holds is outvoted by the holders of alice's.
        squatter = dna.DHT(data_dir=str(tmp_path / "squatter-node"), bind_ip="127.0.0.1")
        extra.append(squatter)
        squatter.bootstrap(network.bootstrap)
        with pytest.raises(dna.DNAError) as caught:
            squatter.announce("alice", "127.0.0.1", squatter.port)
        assert caught.value.code == dna.ErrorCode.NAME_TAKEN, caught.value
        for round_ in range(2, 6):
            exchange(round_)
    finally:
        for node in extra:
            node.close()


def test_what_a_killed_peer_never_took_is_handed_back_exactly(network):
    """bob (a child process) takes 5 of alice's 100 messages of 5,000 B and is killed: his transport
    had acknowledged more than he took. The connection ends (resume window 1 s), the messages are too
    large for his inbox, and alice's application gets back exactly the 95 he never took, in order."""
    alice = network("alice", resume_window_ms=1000)
    script = (
        "import sys, dnatransport as dna\n"
        "t = dna.Transport('bob')\n"
        "print('ready', flush=True)\n"
        "c, _ = t.accept(timeout_ms=20000)\n"
        "for _ in range(5): t.receive(c, timeout_ms=10000)\n"
        "print('took 5', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = network.child("bob", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    messages = [i.to_bytes(2, "big") * 2500 for i in range(100)]
    try:
        assert child.stdout.readline().strip() == "ready"
        conn = alice.connect("bob")
        for message in messages:
            alice.send(conn, message, stream=3)
        assert child.stdout.readline().strip() == "took 5"
        time.sleep(0.2)  # the report of what he took (an ACK within 1 ms) reaches alice
        child.kill()
        child.wait(10)
        with pytest.raises(dna.DNAError) as caught:
            alice.receive(conn, timeout_ms=30000)
        assert caught.value.code == dna.ErrorCode.CLOSED
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    back = alice.take_undelivered(conn)
    assert [stream for stream, _ in back] == [3] * 95
    assert [data for _, data in back] == messages[5:]
    assert alice.take_undelivered(conn) == []
    alice.disconnect(conn)


def resident_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def test_a_reader_that_never_reads_bounds_the_processes_memory(network):
    """Issue 20: bob takes nothing; alice's sends time out once bob's receive buffer and her send
    buffer (32 MiB each by default) are full, and the process's resident memory grows by no more than
    those buffers and 32 MiB. Measured here, in a process of its own (pytest runs one test at a time):
    the Swift test of the same case shares its process with suites that run beside it."""
    alice, bob = network("alice", send_timeout_ms=300), network("bob")
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)
    message = b"m" * (1 << 20)
    before = peak = resident_bytes()
    sent, timed_out, started = 0, False, time.monotonic()
    while sent < 400 and time.monotonic() - started < 5 and not timed_out:
        try:
            alice.send(conn, message, stream=1)
            sent += 1
        except dna.DNAError as error:
            assert error.code == dna.ErrorCode.TIMEOUT
            timed_out = True
        peak = max(peak, resident_bytes())
    assert timed_out, f"{sent} MiB sent to a reader that reads nothing, and no timeout"
    assert sent <= 64 + 4, f"{sent} MiB accepted: more than the two buffers"
    assert peak - before <= (64 + 32) << 20, f"resident grew by {(peak - before) >> 20} MiB ({sent} MiB sent)"
    # A small message on another stream is among bob's first two reads, not behind 32 MiB of stream 1.
    alice.send(conn, b"small", stream=2)
    time.sleep(1)  # it reaches bob's transport within milliseconds: the window kept room for it
    reads = [bob.receive_stream(incoming, timeout_ms=5000) for _ in range(2)]
    assert (2, b"small") in reads, [stream for stream, _ in reads]
