"""The transport end to end on loopback, beside raw UDP in the same process: two identities connect
by name through a local DHT node (signaling, ICE, handshake), then round trips and bulk transfer.
Prints ratios (transport / raw UDP); absolute times on shared machines are noise.

Raw UDP: two sockets on 127.0.0.1, one Python thread echoing (the same shape as the transport's
echo), so both sides pay the same Python costs.
"""
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

import dnatransport as dna


def udp_rtt(size, count):
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    stop = False

    def echo():
        b.settimeout(0.5)
        while not stop:
            try:
                b.send(b.recv(65536))
            except socket.timeout:
                continue

    thread = threading.Thread(target=echo)
    thread.start()
    payload = os.urandom(size)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        a.send(payload)
        a.recv(65536)
        samples.append(time.perf_counter() - started)
    stop = True
    thread.join()
    a.close()
    b.close()
    return statistics.median(samples)


def udp_throughput(size, total):
    """Bytes per second one way, datagrams of `size` (<= 60 KB), counted at the receiver. The
    sender waits for the receiver after each batch that fits the socket buffer (4 MiB), so that the
    kernel drops nothing; a datagram still lost ends the batch after 1 s and is not counted."""
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    b.settimeout(1.0)
    payload = os.urandom(size)
    count = total // size
    batch = max(1, min(64, (1 << 20) // size))
    received = 0
    started = time.perf_counter()
    sent = 0
    while sent < count:
        now = min(batch, count - sent)
        for _ in range(now):
            a.send(payload)
        sent += now
        for _ in range(now):
            try:
                received += len(b.recv(65536))
            except socket.timeout:
                break
    elapsed = time.perf_counter() - started
    a.close()
    b.close()
    return received / elapsed


def main():
    directory = tempfile.mkdtemp(prefix="dna-bench-")
    boot = dna.DHT(data_dir=directory + "/boot", bind_ip="127.0.0.1")
    bootstrap = [f"127.0.0.1:{boot.port}"]
    alice = dna.Transport("alice", data_dir=directory + "/alice", bootstrap=bootstrap, bind_ip="127.0.0.1")
    bob = dna.Transport("bob", data_dir=directory + "/bob", bootstrap=bootstrap, bind_ip="127.0.0.1")
    connects = []
    for _ in range(5):
        started = time.perf_counter()
        conn = alice.connect("bob")
        incoming, _ = bob.accept(timeout_ms=10000)
        connects.append(time.perf_counter() - started)
        alice.disconnect(conn)
        bob.disconnect(incoming)
    conn = alice.connect("bob")
    incoming, _ = bob.accept(timeout_ms=10000)

    def echo():
        try:
            while True:
                bob.send(incoming, bob.receive(incoming))
        except dna.DNAError:
            pass

    threading.Thread(target=echo, daemon=True).start()
    print(f"connect by name (lookup, signaling, ICE, handshake), loopback: median {statistics.median(connects) * 1000:.1f} ms of 5")
    for size in (64, 1024):
        samples = []
        payload = os.urandom(size)
        for _ in range(500):
            started = time.perf_counter()
            alice.send(conn, payload)
            alice.receive(conn, timeout_ms=10000)
            samples.append(time.perf_counter() - started)
        ours, raw = statistics.median(samples), udp_rtt(size, 500)
        print(f"RTT {size} B: transport p50 {ours * 1e6:.0f} us, raw UDP {raw * 1e6:.0f} us, ratio {ours / raw:.2f}x")
    for size, count in ((1024, 4000), (1 << 20, 32)):
        payload = os.urandom(size)
        started = time.perf_counter()
        received = [0]

        def sink():
            for _ in range(count):
                received[0] += len(alice.receive(conn, timeout_ms=60000))

        # One way: bob echoes, alice sends and drains the echoes on another thread.
        thread = threading.Thread(target=sink)
        thread.start()
        for _ in range(count):
            alice.send(conn, payload)
        thread.join()
        elapsed = time.perf_counter() - started
        ours = size * count / elapsed / 2  # every byte crossed twice (echo)
        raw = udp_throughput(min(size, 60000), size * count)
        print(f"throughput {size} B messages: transport {ours / 1e6:.1f} MB/s each way (echoed), "
              f"raw UDP {raw / 1e6:.1f} MB/s one way, ratio {ours / raw:.2f}x")
    # Idle connections: resident memory per connection end (both ends live in this process).
    def rss():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    before = rss()
    started = time.perf_counter()
    opened = []
    for _ in range(100):
        opened.append(alice.connect("bob"))
        bob.accept(timeout_ms=10000)
    elapsed = time.perf_counter() - started
    time.sleep(1)
    per_end = (rss() - before) / 200
    print(f"100 connections opened in {elapsed:.1f} s; resident memory per idle connection end {per_end / 1024:.0f} KiB "
          f"(ICE agent, its GLib thread, the connection's thread and state)")
    alice.close()
    bob.close()
    boot.close()


if __name__ == "__main__":
    sys.exit(main())
