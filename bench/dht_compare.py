#!/usr/bin/env python3
"""make bench: dnatransport's DHT beside OpenDHT (Debian's python3-opendht), same size, same machine,
same run, both on loopback: lookup latency and requests sent per lookup by the node that looks up.

Ours: N contexts of libdnatransport (dht_init on 127.0.0.1), one I/O thread each. OpenDHT: N DhtRunner
nodes on 127.0.0.1 in this process. Each network stores 50 values, then LOOKUPS lookups run one at a
time from random nodes. "requests" = datagrams the looking-up node sent during the lookup (ours: its
`sent` counter; OpenDHT: the sum of getNodeMessageStats(), its outgoing requests by type, which the
call also resets: one call before the lookup clears them, the one after gives the lookup's).
"""
import os
import random
import statistics
import sys
import tempfile
import threading
import time

N = int(os.environ.get("DHT_BENCH_NODES", "50"))
LOOKUPS = int(os.environ.get("DHT_BENCH_LOOKUPS", "200"))
LISTENS = int(os.environ.get("DHT_BENCH_LISTENS", "50"))


def summary(name, latencies, requests, found):
    lat = sorted(latencies)
    p = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000
    print(f"{name:12} {found:>5}/{len(latencies):<5} {p(0.5):9.1f} {p(0.99):9.1f} {statistics.median(requests):9.1f} "
          f"{statistics.mean(requests):9.1f}")
    return p(0.5), statistics.median(requests)


def ours(rng):
    import dnatransport as dna
    root = tempfile.mkdtemp(prefix="dht-bench-")
    nodes = [dna.DHT(data_dir=os.path.join(root, str(i)), bind_ip="127.0.0.1") for i in range(N)]
    seed = f"127.0.0.1:{nodes[0].port}"
    for node in nodes[1:]:
        node.bootstrap([seed])
    for node in nodes:
        node.refresh()
    names = [f"bench{i}" for i in range(50)]
    for i, name in enumerate(names):
        rng.choice(nodes).announce(name, "192.0.2.1", 1000 + i)
    time.sleep(1)
    latencies, requests, found = [], [], 0
    for _ in range(LOOKUPS):
        node, i = rng.choice(nodes), rng.randrange(len(names))
        before = node.stats["sent"]
        start = time.perf_counter()
        try:
            found += node.find_peer(names[i]) == ("192.0.2.1", 1000 + i)
        except dna.DNAError:
            pass
        latencies.append(time.perf_counter() - start)
        requests.append(node.stats["sent"] - before)
    values = value_gets(nodes, rng)
    pushes = listen_latency(nodes, rng)
    for node in nodes:
        node.close()
    return latencies, requests, found, (values, pushes)


def value_gets(nodes, rng):
    """Signed values (PROTOCOL.md §10): 20 keys, each with one 1 KiB value, got LOOKUPS times."""
    keys = [f"value-bench{i}" for i in range(20)]
    for key in keys:
        rng.choice(nodes).put("benchwriter", key, bytes(1024), lifetime=3600)
    latencies, found = [], 0
    for _ in range(LOOKUPS):
        node, key = rng.choice(nodes), rng.choice(keys)
        start = time.perf_counter()
        got = node.get(key)
        latencies.append(time.perf_counter() - start)
        found += len(got) == 1 and got[0].data == bytes(1024)
    return latencies, found


def listen_latency(nodes, rng):
    """Listen (PROTOCOL.md §10.5): one node listens at a key; another puts a new 1 KiB value there,
    LISTENS times one after another; the time from the put's start to the listener's callback with
    that value (the put's lookup, the holders storing it, their VALUE_NOTIFY, the listener's fetch
    and check of the signature)."""
    import dnatransport as dna
    listener_node, writer = rng.sample(nodes, 2)
    arrived, lock, wanted = {}, threading.Lock(), threading.Event()

    def pushed(kind, value):
        with lock:
            if kind == "changed" and value.data not in arrived:
                arrived[value.data] = time.perf_counter()
                wanted.set()

    listener = listener_node.listen("listen-bench", pushed)
    time.sleep(0.5)  # subscribed on the holders
    latencies = []
    try:
        for i in range(LISTENS):
            data = i.to_bytes(4, "big") + bytes(1020)
            wanted.clear()
            start = time.perf_counter()
            writer.put("benchlistener", "listen-bench", data, lifetime=3600)
            deadline = start + 10
            while data not in arrived and time.perf_counter() < deadline:
                wanted.wait(0.1)
                wanted.clear()
            latencies.append(arrived[data] - start if data in arrived else None)
    finally:
        listener.cancel()
    return latencies


def opendht_listen_latency(nodes, rng, dht):
    """The same for OpenDHT: listen on one node, put a new 1 KiB value from another."""
    listener_node, writer = rng.sample(nodes, 2)
    key = dht.InfoHash.get("listen-bench")
    arrived, lock, wanted = {}, threading.Lock(), threading.Event()

    def pushed(value, expired):
        with lock:
            data = bytes(value.data)
            if not expired and data not in arrived:
                arrived[data] = time.perf_counter()
                wanted.set()
        return True

    token = listener_node.listen(key, pushed)
    time.sleep(0.5)
    latencies = []
    for i in range(LISTENS):
        data = i.to_bytes(4, "big") + bytes(1020)
        wanted.clear()
        start = time.perf_counter()
        writer.put(key, dht.Value(data), lambda ok, n: None)
        deadline = start + 10
        while data not in arrived and time.perf_counter() < deadline:
            wanted.wait(0.1)
            wanted.clear()
        latencies.append(arrived[data] - start if data in arrived else None)
    listener_node.cancelListen(token)
    return latencies


def opendht(rng):
    import opendht as dht
    nodes = []
    for i in range(N):
        runner = dht.DhtRunner()
        runner.run(port=0)
        nodes.append(runner)
    port = str(nodes[0].getBound().getPort())
    for runner in nodes[1:]:
        runner.bootstrap("127.0.0.1", port)
    time.sleep(5)  # let the routing tables fill
    keys = [dht.InfoHash.get(f"bench{i}") for i in range(50)]
    for i, key in enumerate(keys):
        done = threading.Event()
        rng.choice(nodes).put(key, dht.Value(f"192.0.2.1:{1000 + i}".encode()), lambda ok, n, d=done: d.set())
        done.wait(30)
    time.sleep(1)
    latencies, requests, found = [], [], 0
    for _ in range(LOOKUPS):
        node, i = rng.choice(nodes), rng.randrange(len(keys))
        values, done = [], threading.Event()
        node.getNodeMessageStats()  # resets the counters (NetworkEngine::getNodeMessageStats)
        start = time.perf_counter()
        node.get(keys[i], lambda v, out=values: out.append(v) or True, lambda ok, n, d=done: d.set())
        done.wait(30)
        latencies.append(time.perf_counter() - start)
        requests.append(sum(node.getNodeMessageStats()))
        found += any(bytes(v.data) == f"192.0.2.1:{1000 + i}".encode() for v in values)
    values = opendht_value_gets(nodes, rng, dht)
    pushes = opendht_listen_latency(nodes, rng, dht)
    for runner in nodes:
        runner.join()
    return latencies, requests, found, (values, pushes)


def opendht_value_gets(nodes, rng, dht):
    """The same for OpenDHT: one 1 KiB value per key (unsigned: its putSigned needs an identity per node)."""
    keys = [dht.InfoHash.get(f"value-bench{i}") for i in range(20)]
    for key in keys:
        done = threading.Event()
        rng.choice(nodes).put(key, dht.Value(bytes(1024)), lambda ok, n, d=done: d.set())
        done.wait(30)
    latencies, found = [], 0
    for _ in range(LOOKUPS):
        node, key = rng.choice(nodes), rng.choice(keys)
        values, done = [], threading.Event()
        start = time.perf_counter()
        node.get(key, lambda v, out=values: out.append(v) or True, lambda ok, n, d=done: d.set())
        done.wait(30)
        latencies.append(time.perf_counter() - start)
        found += any(bytes(v.data) == bytes(1024) for v in values)
    return latencies, found


def main():
    print(f"DHT lookups on loopback, {N} nodes each, {LOOKUPS} lookups one at a time, the same run")
    print(f"{'network':12} {'found':>11} {'p50 ms':>9} {'p99 ms':>9} {'req p50':>9} {'req mean':>9}")
    rng = random.Random(1)
    *lookups, (my_values, my_pushes) = ours(rng)
    mine = summary("dnatransport", *lookups)
    try:
        *lookups, (their_values, their_pushes) = opendht(random.Random(1))
        theirs = summary("OpenDHT", *lookups)
    except ImportError:
        print("OpenDHT: python3-opendht is not installed (apt-get install python3-opendht)")
        return 0
    print(f"ratios (dnatransport / OpenDHT): p50 latency {mine[0] / theirs[0]:.2f}, requests per lookup {mine[1] / theirs[1]:.2f}")
    print("goal: requests per lookup < 1 and p50 latency <= 1")
    print(f"\nValue gets (1 KiB values at 20 keys, {LOOKUPS} gets one at a time; ours signed and verified, OpenDHT's plain)")
    print(f"{'network':12} {'found':>11} {'p50 ms':>9} {'p99 ms':>9}")
    gets = []
    for name, (latencies, found) in (("dnatransport", my_values), ("OpenDHT", their_values)):
        lat = sorted(latencies)
        p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        gets.append(p50)
        print(f"{name:12} {found:>5}/{len(latencies):<5} {p50:9.1f} {p99:9.1f}")
    print(f"ratio (dnatransport / OpenDHT): get p50 latency {gets[0] / gets[1]:.2f}")
    print(f"\nListen: a new 1 KiB value put at a key another node listens to, {LISTENS} times one after another;")
    print("from the put's start to the listener's callback with it (ours: signed, pushed, fetched and verified)")
    print(f"{'network':12} {'arrived':>11} {'p50 ms':>9} {'p99 ms':>9}")
    pushes = []
    for name, latencies in (("dnatransport", my_pushes), ("OpenDHT", their_pushes)):
        lat = sorted(t for t in latencies if t is not None)
        if not lat:
            print(f"{name:12} {0:>5}/{len(latencies):<5}")
            pushes.append(float("nan"))
            continue
        p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        pushes.append(p50)
        print(f"{name:12} {len(lat):>5}/{len(latencies):<5} {p50:9.1f} {p99:9.1f}")
    print(f"ratio (dnatransport / OpenDHT): listen p50 latency {pushes[0] / pushes[1]:.2f}; goal (issue 18): ours within 1 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
