"""The transport in the network lab (root): over a connection through the lab's routers, RTT p50/p99
at 64 B (Python on both ends) and the throughput of 10,000 mixed messages each way at once (0 to
1,499 B on 3 streams, five of 1 MiB), beside a raw UDP echo between the same namespaces in the same
run (the limit). Bare libnice's RTT through the fd on the same paths is in nat_bench.py's output.
Then connects under loss (issue 19): 20 connects one after the other, each trickling messages for 2 s,
with 10% and 30% random loss on both routers for every datagram (the DHT's included): how many
connected, their times, the errors of the others, and the messages echoed.

    sudo python3 bench/transport_lab_bench.py

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


if __name__ == "__main__":
    main()
    print("Connects under random loss on both routers (port-restricted:symmetric, every datagram):")
    for loss in (10, 30):
        print(f"  {loss}% loss: {connect_outcomes(loss)}")
