"""NAT traversal benchmark in the network lab (root): per NAT cell, the setup time from the start of
gathering to the first datagram through the fd, for this library and, in the same run with the same
servers, bare libnice used the plain way (bench/nice_plain.c) and aioice (PyPI). Then how fast a
failure is reported, and the RTT through the fd (direct, relayed) beside a raw UDP echo on the path.

    sudo python3 bench/nat_bench.py [--reps 3] [--cells a:b,...]

Needs $NICE_PLAIN (the built bench/nice_plain) and aioice importable; `make bench` sets both up.
"""
import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "lab"))

import natlab  # noqa: E402
from natlab import MATRIX, path_of  # noqa: E402

IMPLS = ("dnatransport", "aioice", "plain-libnice")


def setup_ms(events):
    """Both peers' time to their first datagram through the fd; None when either failed."""
    times = []
    for role in ("a", "b"):
        data = [e for e in events[role] if e["event"] == "data"]
        if not data or data[0]["first_datagram_ms"] is None or data[0]["replies"] == 0:
            return None, None
        times.append(data[0]["first_datagram_ms"])
    established = [e for e in events["a"] if e["event"] == "established"][0]
    return max(times), path_of(established)


def raw_udp_rtt(lab, client, server_role, server_ip, count=200):
    """Median RTT of a plain UDP echo between two namespaces (Python on both ends, as ice_peer)."""
    port = 47000
    echo = lab.popen(server_role, [sys.executable, "-c",
                                   "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                   f"s.bind(('0.0.0.0', {port}));\nwhile True:\n d,a=s.recvfrom(2048); s.sendto(d,a)"])
    try:
        out = lab.run_python(client, "import socket, time, statistics; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                     "s.settimeout(0.5); r=[]\n"
                                     f"for i in range({count}):\n t=time.monotonic(); s.sendto(b'x'*64, ('{server_ip}', {port}))\n"
                                     " try: s.recvfrom(2048); r.append((time.monotonic()-t)*1000)\n except OSError: pass\n"
                                     "print(statistics.median(r[1:]))")
        return float(out)
    finally:
        echo.kill()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cells")
    args = parser.parse_args()
    cells = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else list(MATRIX)

    print(f"NAT setup: ms from the start of gathering to the first datagram through the fd (slower peer), "
          f"median of {args.reps}")
    print(f"{'cell':34} {'path':7} " + " ".join(f"{i:>14}" for i in IMPLS) + "   ours/aioice")
    rtts = {}
    for a, b in cells:
        row = {}
        path = "-"
        with natlab.Lab(a=a, b=b) as lab:
            for impl in IMPLS:
                times = []
                for _ in range(args.reps):
                    env_transport = "tcp" if "udp-blocked" in (a, b) else "udp"
                    os.environ["AIOICE_TURN_TRANSPORT"] = env_transport
                    events = natlab.run_pair(lab, impl=impl, pings=50)
                    ms, taken = setup_ms(events)
                    if taken:
                        if impl == "dnatransport":
                            path = taken
                        data = [e for e in events["a"] if e["event"] == "data"][0]
                        rtts.setdefault((taken, impl), []).append(statistics.median(data["rtt_ms"][1:]))
                    if ms is not None:
                        times.append(ms)
                row[impl] = statistics.median(times) if times else None
        cells_text = " ".join(f"{row[i]:14.1f}" if row[i] is not None else f"{'failed':>14}" for i in IMPLS)
        ratio = (f"{row['dnatransport'] / row['aioice']:.2f}x" if row["dnatransport"] and row["aioice"] else "-")
        print(f"{a + ':' + b:34} {path:7} {cells_text}   {ratio}", flush=True)

    print("\nFailure report (port-restricted:symmetric with the TURN server down), ms from the checks' start:")
    for impl in IMPLS:
        with natlab.Lab(a="port-restricted", b="symmetric") as lab:
            events = natlab.run_pair(lab, impl=impl, stop_turn=True, timeout=10000)
        outcome = events["a"][1]
        print(f"  {impl:14} {outcome['event']:12} {outcome.get('ms', 0):8.0f}")

    print("\nRTT p50 through the fd (64 B, Python on both ends) beside a raw UDP echo on the same path:")
    with natlab.Lab(a="public", b="public") as lab:
        raw_direct = raw_udp_rtt(lab, "a", "b", lab.address["b"])
    with natlab.Lab(a="port-restricted", b="public") as lab:
        raw_relay_leg = raw_udp_rtt(lab, "a", "srv", natlab.SERVER[0])
    for (path, impl), values in sorted(rtts.items()):
        print(f"  {path:7} {impl:14} {statistics.median(values):.3f} ms (median over {len(values)} runs)")
    print(f"  raw UDP a->b (public:public) {raw_direct:.3f} ms; raw UDP a->TURN server (behind a NAT) {raw_relay_leg:.3f} ms")


if __name__ == "__main__":
    main()
