"""The transport in the network lab (root): over a connection through the lab's routers, RTT p50/p99
at 64 B (Python on both ends) and the throughput of 10,000 mixed messages each way at once (0 to
1,499 B on 3 streams, five of 1 MiB), beside a raw UDP echo between the same namespaces in the same
run (the limit). Bare libnice's RTT through the fd on the same paths is in nat_bench.py's output.
Then 64 MiB of 1 MiB messages one way without loss and with 5% and 10% random loss on each router
(9.75% and 19% on the path; issue 16 goal 6), with each side's CPU per MiB; RTT through a path with 10 and 40 ms added each way (the lab's delay
line, natlab's `delay`: this kernel has no netem) beside raw UDP between the same NATed hosts over the
same routers, taken in turn in one run (issue 16 (c)); and connects under loss (issue 19): 20 connects one after the other, each trickling messages for 2 s,
with 10% and 30% random loss on both routers for every datagram (the DHT's included): how many
connected, their times, the errors of the others, and the messages echoed.

    sudo python3 bench/transport_lab_bench.py [paths | delayed-rtt | bulk-loss | connects] ...   (default: all)

Needs the installed dnat and binding (DNA_TEST_PREFIX, PYTHONPATH), as Tests/lab.
"""
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "lab"))

import natlab  # noqa: E402
import transport_lab as lab_tests  # noqa: E402
from nat_bench import raw_udp_rtt  # noqa: E402


def main():
    print("Transport in the lab (no loss), beside a raw UDP echo between the same namespaces:")
    for a, b in (("public", "public"), ("port-restricted", "port-restricted"), ("port-restricted", "symmetric")):
        with natlab.Lab(a=a, b=b, node=str(lab_tests.DNAT)) as lab:
            events = lab_tests.converse(lab, messages=400, size=64)
            assert [e["event"] for e in events] == ["connected", "done"], events
            done = events[1]
            bob = lab_tests.peer(lab, "b", "--as", "bob", "--listen", "--exchange", "10000")
            lab_tests.events_of(bob, {"ready"})
            alice = lab_tests.peer(lab, "a", "--as", "alice", "--to", "bob", "--exchange", "10000")
            exchanged = lab_tests.events_of(alice, {"exchanged", "error"})[-1]
            alice.wait(60)
            bob.stdin.close()
            bob.wait(30)
            raw = raw_udp_rtt(lab, "a", "b", lab.address["b"]) if b == "public" else None
        rate = exchanged["bytes"] / 1e6 / exchanged["seconds"] if exchanged.get("seconds") else 0
        print(f"  {a}:{b}: connect {events[0]['ms']:.0f} ms; RTT 64 B p50 {done['rtt_ms']:.3f} ms, "
              f"p99 {done['rtt_p99_ms']:.3f} ms" + (f" (raw UDP p50 {raw:.3f} ms, {done['rtt_ms'] / raw:.1f}x)" if raw else "")
              + f"; 10,000 messages each way at once: {exchanged['bytes'] / 1e6:.1f} MB in {exchanged['seconds']} s "
              f"= {rate:.1f} MB/s each way")



def rtt_on_a_delayed_path(delays=(10, 40), rounds=5, count=50, sizes=(64, 1024), pause=0.01):
    """Issue 16 (c): RTT p50 over a path with `delay` ms added each way (a's link; both hosts behind
    port-restricted NATs, the connection direct) against raw UDP between the same two hosts through
    the same routers (udp_peer.py, hole punched), in one lab: `rounds` rounds, each with `count`
    one-at-a-time round trips per size of both, in turn (which goes first alternates)."""
    print(f"RTT through a delayed path (issue 16 (c)), port-restricted:port-restricted, direct; the lab's delay "
          f"line adds the delay each way on a's link; p50 of {count} round trips per round, {rounds} rounds, "
          f"transport and raw UDP in turn:")
    for delay in delays:
        p50s = {}
        with natlab.Lab(a="port-restricted", b="port-restricted", node=str(lab_tests.DNAT), delay=delay) as lab:
            to_b = lab.count_forwarded("ra", lab.address["rb"])
            try:
                raw = lab_tests.raw_udp_probe(lab)
                transport, connected = lab_tests.transport_probe(lab)
            except RuntimeError as error:
                print(f"  {delay} ms: {error}")
                continue
            with raw, transport:
                for probe in (raw, transport):
                    probe.rtt(64, 5, pause)  # warm-up
                before = to_b()
                for index in range(rounds):
                    for size in sizes:
                        order = [("raw", raw), ("transport", transport)]
                        for name, probe in order[::-1] if index % 2 else order:
                            p50s.setdefault((name, size), []).append(statistics.median(probe.rtt(size, count, pause)))
                direct = to_b() - before
            line = lab.stop_delay_line()
        for size in sizes:
            ours, raw_udp = p50s[("transport", size)], p50s[("raw", size)]
            ratios = sorted(a / b for a, b in zip(ours, raw_udp))
            added = sorted(1000 * (a - b) for a, b in zip(ours, raw_udp))
            print(f"  {delay} ms each way, {size} B: transport p50 {statistics.median(ours):.3f} ms "
                  f"(rounds {min(ours):.3f}-{max(ours):.3f}), raw UDP {statistics.median(raw_udp):.3f} ms "
                  f"({min(raw_udp):.3f}-{max(raw_udp):.3f}): {statistics.median(ratios):.4f}x "
                  f"({ratios[0]:.4f}-{ratios[-1]:.4f}), +{statistics.median(added):.0f} us ({added[0]:.0f}-{added[-1]:.0f})")
        print(f"  ({delay} ms: connected in {connected['ms']:.0f} ms; {direct} datagrams from a's router to b's during "
              f"the rounds: the path is direct; the delay line: {line})")
    print("  (goal (c): <= 1.02x raw UDP)")
    # Where the added time comes from: the same path without delay, round trips back to back (caches
    # and CPUs warm) against round trips 1, 5 and 20 ms apart (each side's threads idle in between).
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(lab_tests.DNAT)) as lab:
        try:
            raw = lab_tests.raw_udp_probe(lab)
            transport, _ = lab_tests.transport_probe(lab)
        except RuntimeError as error:
            print(f"  no delay: {error}")
            return
        with raw, transport:
            for probe in (raw, transport):
                probe.rtt(64, 5)
            added = []
            for idle in (0, 0.001, 0.005, 0.02):
                ours, raw_udp = [], []
                for _ in range(2):
                    ours.append(statistics.median(transport.rtt(64, count, idle)))
                    raw_udp.append(statistics.median(raw.rtt(64, count, idle)))
                added.append(f"{idle * 1000:.0f} ms apart {1000 * statistics.median(ours):.0f} us vs "
                             f"{1000 * statistics.median(raw_udp):.0f} (+{1000 * (statistics.median(ours) - statistics.median(raw_udp)):.0f})")
    print("  the same path without delay, 64 B, transport vs raw UDP p50 by time between round trips: " + "; ".join(added))


def connect_outcomes(loss, rounds=20):
    """`rounds` connects from alice (port-restricted) to bob (symmetric) with `loss`% on both routers."""
    with natlab.Lab(a="port-restricted", b="symmetric", node=str(lab_tests.DNAT), loss=loss) as lab:
        bob = lab_tests.peer(lab, "b", "--as", "bob", "--listen")
        ready = lab_tests.events_of(bob, {"ready", "error"})[-1]
        if ready["event"] != "ready":
            return f"bob did not start: {ready}"
        alice = lab_tests.peer(lab, "a", "--as", "alice", "--to", "bob", "--rounds", str(rounds), "--seconds", "2",
                               "--interval", "0.1", "--wait", "30")
        events = [json.loads(line) for line in alice.stdout]
        alice.wait(60)
        bob.stdin.close()
        bob.wait(30)
    played = [e for e in events if e["event"] == "round"]
    connected = [e for e in played if e["connected"]]
    times = sorted(e["ms"] for e in connected)
    errors = {}
    for e in played:
        if not e["connected"]:
            errors[e["error"]] = errors.get(e["error"], 0) + 1
    return (f"{len(connected)} of {len(played)} connected"
            + (f" (p50 {statistics.median(times):.0f} ms, max {times[-1]:.0f} ms)" if times else "")
            + (f", failed: {errors}" if errors else "")
            + f"; {sum(e['echoed'] for e in connected)} of {sum(e['sent'] for e in connected)} messages echoed")


def bulk_rate(loss, megabytes=64):
    """(MiB/s, sender CPU ms per MiB, receiver CPU ms per MiB) of `megabytes` 1 MiB messages one way,
    alice to bob, both port-restricted, with `loss`% on both routers for every datagram; None when the
    connect failed (after 3 tries)."""
    # GSO runs are cut into datagrams at each host in both runs (without loss too), so that a router
    # drops datagrams, not runs, and the two runs differ only in the loss.
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(lab_tests.DNAT), loss=loss, segment=True) as lab:
        bob = lab_tests.peer(lab, "b", "--as", "bob", "--listen", "--bulk", str(megabytes))
        lab_tests.events_of(bob, {"ready"})
        result = None
        for _ in range(3):
            alice = lab_tests.peer(lab, "a", "--as", "alice", "--to", "bob", "--bulk", str(megabytes))
            events = [json.loads(line) for line in alice.stdout]
            alice.wait(60)
            bulk = [e for e in events if e["event"] == "bulk"]
            if bulk:
                received = lab_tests.events_of(bob, {"received"})[-1]
                result = (megabytes / bulk[0]["seconds"], 1000 * bulk[0]["cpu_seconds"] / megabytes,
                          1000 * received["cpu_seconds"] / megabytes)
                break
        bob.stdin.close()
        bob.wait(30)
    return result


def bulk_under_loss(rounds=3, losses=(5, 10)):
    """Issue 16 goal 6: throughput under random loss beside the same run's without loss. `losses`: per
    router; a datagram crosses both routers, so 5% on each is 9.75% on the path, 10% is 19%."""
    print("1 MiB messages one way, 64 MiB, port-restricted:port-restricted, random loss on both routers:")
    rates = {loss: [] for loss in (0,) + tuple(losses)}
    for _ in range(rounds):
        for loss in rates:
            rates[loss].append(bulk_rate(loss))
    clean = [v[0] for v in rates[0] if v]
    for loss, values in rates.items():
        done = sorted(v[0] for v in values if v)
        path = 100 * (1 - (1 - loss / 100) ** 2)
        cpu = [v[1:] for v in values if v]
        print(f"  {loss}% loss per router ({path:.1f}% per path): "
              + (f"median {statistics.median(done):.1f} MiB/s (min {done[0]:.1f}, max {done[-1]:.1f}), CPU per MiB "
                 f"sender {statistics.median(c[0] for c in cpu):.1f} ms, receiver {statistics.median(c[1] for c in cpu):.1f} ms"
                 if done else "no connection")
              + f", {len(done)} of {len(values)} connected"
              + (f"; {statistics.median(done) / statistics.median(clean):.2f}x the lossless run" if loss and done and clean else ""))
    print("  (goal 6: >= 0.5x at 10% random loss)")


def connects_under_loss():
    print("Connects under random loss on both routers (port-restricted:symmetric, every datagram):")
    for loss in (10, 30):
        print(f"  {loss}% loss: {connect_outcomes(loss)}")


PARTS = {"paths": main, "delayed-rtt": rtt_on_a_delayed_path, "bulk-loss": bulk_under_loss, "connects": connects_under_loss}

if __name__ == "__main__":
    chosen = sys.argv[1:] or list(PARTS)
    unknown = [part for part in chosen if part not in PARTS]
    if unknown:
        sys.exit(f"usage: transport_lab_bench.py [{' | '.join(PARTS)}] ... (default: all)")
    for part in chosen:
        PARTS[part]()
