"""The transport in the network lab (root): over a connection through the lab's routers, RTT p50/p99
at 64 B (Python on both ends) and the throughput of 10,000 mixed messages each way at once (0 to
1,499 B on 3 streams, five of 1 MiB), beside a raw UDP echo between the same namespaces in the same
run (the limit). Bare libnice's RTT through the fd on the same paths is in nat_bench.py's output.

    sudo python3 bench/transport_lab_bench.py

Needs the installed dnat and binding (DNA_TEST_PREFIX, PYTHONPATH), as Tests/lab.
"""
import os
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


if __name__ == "__main__":
    main()
