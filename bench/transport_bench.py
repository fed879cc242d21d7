"""The transport end to end on loopback, beside raw UDP in the same process: two identities connect
by name through a local DHT node (signaling, ICE, handshake), then round trips and bulk transfer.
Prints ratios (transport / raw UDP); absolute times on shared machines are noise.

Raw UDP: two sockets on 127.0.0.1; round trips with one Python thread echoing, throughput as batches
sent then received by one thread: the same shapes as the transport's, so both pay the same Python
costs per call.
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
    """Bytes per second one way, datagrams of `size`, counted at the receiver. The
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

    def receive():
        try:
            return len(b.recv(65536))
        except socket.timeout:
            return None

    rate = batched_rate(lambda: a.send(payload), receive, size, total // size)
    a.close()
    b.close()
    return rate


def batched_rate(send, receive, size, count):
    """Bytes per second one way: batches that fit 1 MiB (at most 64 messages) are sent, then received;
    a receive returning None (lost) ends its batch."""
    batch = max(1, min(64, (1 << 20) // size))
    received = 0
    started = time.perf_counter()
    sent = 0
    while sent < count:
        now = min(batch, count - sent)
        for _ in range(now):
            send()
        sent += now
        for _ in range(now):
            got = receive()
            if got is None:
                break
            received += got
    return received / (time.perf_counter() - started)


def transport_throughput(alice, bob, conn, incoming, size, total):
    """Bytes per second one way over the connection, in the same shape as udp_throughput."""
    payload = os.urandom(size)
    return batched_rate(lambda: alice.send(conn, payload), lambda: len(bob.receive(incoming, timeout_ms=60000)),
                        size, max(1, total // size))


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

    stop = threading.Event()

    def echo():
        while not stop.is_set():
            try:
                bob.send(incoming, bob.receive(incoming, timeout_ms=100))
            except dna.DNAError as error:
                if error.code != dna.ErrorCode.TIMEOUT:
                    return

    echoing = threading.Thread(target=echo, daemon=True)
    echoing.start()
    print(f"connect by name (lookup, signaling, ICE, handshake), loopback: median {statistics.median(connects) * 1000:.1f} ms of 5")
    for size in (64, 1024):
        samples = []
        payload = os.urandom(size)
        for _ in range(2000):
            started = time.perf_counter()
            alice.send(conn, payload)
            alice.receive(conn, timeout_ms=10000)
            samples.append(time.perf_counter() - started)
        samples.sort()
        raw = udp_rtt(size, 2000)
        ours, ours99 = statistics.median(samples), samples[int(len(samples) * 0.99)]
        print(f"RTT {size} B: transport p50 {ours * 1e6:.0f} us p99 {ours99 * 1e6:.0f} us, raw UDP p50 {raw * 1e6:.0f} us, "
              f"ratio {ours / raw:.2f}x")
    stop.set()
    echoing.join()
    for size, total in ((64, 1 << 20), (1024, 8 << 20), (1 << 20, 64 << 20)):
        ours = transport_throughput(alice, bob, conn, incoming, size, total)
        # A message larger than a datagram goes as 1,100-byte fragments (1,200 B on the wire with the
        # headers): raw UDP carries it in datagrams of that size too, not in 60 KB ones.
        datagram = min(size, 1200)
        raw = udp_throughput(datagram, total)
        print(f"throughput {size} B messages: transport {ours / 1e6:.1f} MB/s ({ours / size:.0f} msg/s), "
              f"raw UDP ({datagram} B datagrams) {raw / 1e6:.1f} MB/s, ratio {ours / raw:.2f}x")
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
          f"(ICE agent and the connection's state; no thread of its own)")
    alice.close()
    bob.close()
    boot.close()


if __name__ == "__main__":
    sys.exit(main())
