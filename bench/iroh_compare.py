"""dnatransport beside iroh (PyPI `iroh`, QUIC inside) and raw UDP, on loopback, in a network
namespace of its own with no route out (issue 16). Every peer is its own process, driven from
Python; the coordinator (this process) tells them what to do over pipes and reads the namespace's UDP
counters. Per round and per implementation, fresh processes:

  setup      the receiver binds (iroh: by address, relays and discovery off; ours: announces its
             name to a DHT node in the coordinator), the sender connects (ours: by name)
  rtt        64 B echoed, 1,000 round trips, p50
  small      1 KiB messages one way, 8 MiB
  bulk       1 MiB messages one way, 64 MiB: throughput (sender's first send to receiver's last
             receive), CPU of each process per MiB (getrusage), resident memory of the sender
             before, right after, and once it settled (polled for up to --settle seconds)
  drops      UDP datagrams dropped at a receiving socket during each phase: InErrors and
             RcvbufErrors of /proc/net/snmp and snmp6 (the namespace holds only this run)

Messages are framed the way each implementation carries them: ours natively (the receiver takes
them with transport_receive_into into one reused buffer); iroh on one QUIC
stream with a 4-byte length before each message (the framing runs in Python, as a
messenger on iroh's binding would do it: reads of up to 1 MiB, messages cut from them); raw UDP one datagram each (1 MiB messages as 1,200-byte
datagrams, with a credit per 64 datagrams so that the sender cannot overrun the receiver).

iroh's binding copies every buffer it hands to Rust byte by byte in Python
(_UniffiRustBufferBuilder.write); this process replaces that one function with ctypes.memmove in its
iroh peers (the benchmark only), as the issue allows.

Run as root (unshare -n); DNATRANSPORT_LIBRARY and PYTHONPATH as for transport_bench.py.
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

IMPLEMENTATIONS = ("iroh", "ours", "udp")
ALPN = b"dna-bench/1"
RTT_SIZE = 64


# ---------------------------------------------------------------------------------------------
# Peer side: one process per peer, commands as JSON lines on stdin, answers on stdout.

def usage():
    """CPU seconds (user + system, every thread), context switches (voluntary and not, every thread)
    and resident bytes of this process."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
    return {"cpu": used.ru_utime + used.ru_stime, "switches": used.ru_nvcsw + used.ru_nivcsw, "rss": rss,
            "t": time.monotonic()}


class Peer:
    """Reads commands, answers each with one JSON line."""

    def __init__(self):
        self.out = sys.stdout
        sys.stdout = sys.stderr  # libraries printing must not garble the answers

    def answer(self, **values):
        self.out.write(json.dumps(values) + "\n")
        self.out.flush()

    @staticmethod
    def command():
        line = sys.stdin.readline()
        return json.loads(line) if line else {"cmd": "exit"}


def run_ours(role, peer):
    import dnatransport as dna
    directory = tempfile.mkdtemp(prefix="dna-iroh-compare-")
    first = peer.command()
    # Names are new each round: a name stays with the key that first announced it (§5.2).
    name = first["names"][0 if role == "receiver" else 1]
    transport = dna.Transport(name, data_dir=f"{directory}/{name}", bootstrap=first["bootstrap"], bind_ip="127.0.0.1")
    conn = None
    if role == "receiver":
        peer.answer(ready=True)
    while True:
        command = peer.command()
        kind = command["cmd"]
        if kind == "exit":
            break
        if kind == "stats":
            peer.answer(**usage())
        elif kind == "connect":
            started = time.perf_counter()
            conn = transport.connect(first["names"][0])
            peer.answer(setup=time.perf_counter() - started)
        elif kind == "accept":
            conn, _ = transport.accept(timeout_ms=30000)
            peer.answer(ok=True)
        elif kind == "rtt":
            payload = os.urandom(RTT_SIZE)
            samples = []
            for _ in range(command["count"]):
                started = time.perf_counter()
                transport.send(conn, payload)
                transport.receive(conn, timeout_ms=10000)
                samples.append(time.perf_counter() - started)
            peer.answer(samples=samples)
        elif kind == "echo":
            for _ in range(command["count"]):
                transport.send(conn, transport.receive(conn, timeout_ms=10000))
            peer.answer(ok=True)
        elif kind == "send":
            payload = os.urandom(command["size"])
            started = time.monotonic()
            for _ in range(command["count"]):
                transport.send(conn, payload)
            peer.answer(start=started)
        elif kind == "receive":
            # Into one buffer the size of a message, reused (transport_receive_into): what a
            # receiver of bulk data does with this API, with no allocation per message.
            got, buffer = 0, bytearray(command.get("size", 1 << 20))
            for _ in range(command["count"]):
                got += transport.receive_into(conn, buffer, timeout_ms=30000)[1]
            peer.answer(end=time.monotonic(), bytes=got)
    transport.close()
    shutil.rmtree(directory, ignore_errors=True)


def patch_iroh_copy(iroh_ffi):
    """The binding's buffer builder copies byte by byte in Python: one memmove instead."""
    import ctypes
    builder = iroh_ffi._UniffiRustBufferBuilder

    def write(self, value):
        value = bytes(value)
        with self._reserve(len(value)):
            base = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
            ctypes.memmove(base + self.rbuf.len, value, len(value))

    builder.write = write


def run_iroh(role, peer):
    from iroh import iroh_ffi
    patch_iroh_copy(iroh_ffi)
    import iroh

    async def main():
        loop = asyncio.get_running_loop()

        async def command():
            return await loop.run_in_executor(None, peer.command)

        options = iroh.EndpointOptions(preset=iroh.preset_minimal(), relay_mode=iroh.RelayMode.disabled(),
                                       bind_addr="127.0.0.1:0", alpns=[ALPN])
        endpoint = await iroh.Endpoint.bind(options)
        send = recv = None
        if role == "receiver":
            address = endpoint.addr()
            peer.answer(id=endpoint.id().to_bytes().hex(),
                        addresses=[a for a in address.direct_addresses() if a.startswith("127.")] or
                        [s for s in endpoint.bound_sockets() if s.startswith("127.")])
        else:
            await command()  # the first command is only the bootstrap list, which iroh has no use for

        pending = bytearray()

        async def read_message():
            # Buffered: one read takes whatever the stream has (up to 1 MiB), frames are cut here.
            nonlocal pending
            while len(pending) < 4 or len(pending) < 4 + struct.unpack_from(">I", pending)[0]:
                chunk = await recv.read(1 << 20)
                if not chunk:
                    raise EOFError("stream ended")
                pending += chunk
            length = struct.unpack_from(">I", pending)[0]
            message = bytes(pending[4:4 + length])
            del pending[:4 + length]
            return message

        while True:
            c = await command()
            kind = c["cmd"]
            if kind == "exit":
                break
            if kind == "stats":
                peer.answer(**usage())
            elif kind == "connect":
                started = time.perf_counter()
                target = iroh.EndpointAddr(iroh.EndpointId.from_bytes(bytes.fromhex(c["id"])), None, c["addresses"])
                connection = await endpoint.connect(target, ALPN)
                stream = await connection.open_bi()
                send, recv = stream.send(), stream.recv()
                # A QUIC stream exists for the peer once it carries something: one 0-byte message.
                await send.write_all(struct.pack(">I", 0))
                peer.answer(setup=time.perf_counter() - started)
            elif kind == "accept":
                incoming = await endpoint.accept_next()
                connection = await (await incoming.accept()).connect()
                stream = await connection.accept_bi()
                send, recv = stream.send(), stream.recv()
                await read_message()
                peer.answer(ok=True)
            elif kind == "rtt":
                payload = os.urandom(RTT_SIZE)
                samples = []
                for _ in range(c["count"]):
                    started = time.perf_counter()
                    await send.write_all(payload)
                    await recv.read_exact(RTT_SIZE)
                    samples.append(time.perf_counter() - started)
                peer.answer(samples=samples)
            elif kind == "echo":
                for _ in range(c["count"]):
                    await send.write_all(await recv.read_exact(RTT_SIZE))
                peer.answer(ok=True)
            elif kind == "send":
                framed = struct.pack(">I", c["size"]) + os.urandom(c["size"])
                started = time.monotonic()
                for _ in range(c["count"]):
                    await send.write_all(framed)
                peer.answer(start=started)
            elif kind == "receive":
                got = 0
                for _ in range(c["count"]):
                    got += len(await read_message())
                peer.answer(end=time.monotonic(), bytes=got)
        await endpoint.close()

    asyncio.run(main())


UDP_DATAGRAM = 1200
UDP_CREDIT = 64
UDP_WINDOW = 1024


def run_udp(role, peer):
    """Raw UDP in Python: one datagram per message (1 MiB messages as 1,200-byte datagrams), the
    receiver returning a 1-byte credit per 64 datagrams and the sender keeping at most 1,024
    outstanding (1.2 MB, within the 4 MiB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    peer.command()
    if role == "receiver":
        peer.answer(port=sock.getsockname()[1])
    while True:
        c = peer.command()
        kind = c["cmd"]
        if kind == "exit":
            break
        if kind == "stats":
            peer.answer(**usage())
        elif kind == "connect":
            sock.connect(("127.0.0.1", c["port"]))
            sock.send(b"hello")
            peer.answer(setup=0.0)
        elif kind == "accept":
            _, address = sock.recvfrom(2048)
            sock.connect(address)
            peer.answer(ok=True)
        elif kind == "rtt":
            payload = os.urandom(RTT_SIZE)
            samples = []
            sock.settimeout(1.0)
            for _ in range(c["count"]):
                started = time.perf_counter()
                sock.send(payload)
                sock.recv(2048)
                samples.append(time.perf_counter() - started)
            peer.answer(samples=samples)
        elif kind == "echo":
            sock.settimeout(5.0)
            for _ in range(c["count"]):
                sock.send(sock.recv(2048))
            peer.answer(ok=True)
        elif kind == "send":
            size = min(c["size"], UDP_DATAGRAM)
            count = c["count"] * -(-c["size"] // size)
            payload = os.urandom(size)
            sock.settimeout(1.0)
            started = time.monotonic()
            credit = UDP_WINDOW
            for _ in range(count):
                while credit == 0:
                    try:
                        sock.recv(16)
                        credit += UDP_CREDIT
                    except socket.timeout:
                        credit = UDP_CREDIT  # a datagram was lost: go on, the receiver counts it
                sock.send(payload)
                credit -= 1
            peer.answer(start=started)
        elif kind == "receive":
            size = min(c["size"], UDP_DATAGRAM)
            count = c["count"] * -(-c["size"] // size)
            sock.settimeout(2.0)
            got = 0
            for index in range(1, count + 1):
                try:
                    got += len(sock.recv(2048))
                except socket.timeout:
                    break
                if index % UDP_CREDIT == 0:
                    sock.send(b"c")
            peer.answer(end=time.monotonic(), bytes=got)
    sock.close()


# ---------------------------------------------------------------------------------------------
# Coordinator.

def udp_drops():
    """InErrors + RcvbufErrors of UDP over IPv4 and IPv6 in this namespace."""
    total = 0
    with open("/proc/net/snmp") as snmp:
        lines = [line.split() for line in snmp if line.startswith("Udp:")]
    header, values = lines[0], lines[1]
    total += int(values[header.index("InErrors")]) + int(values[header.index("RcvbufErrors")])
    try:
        with open("/proc/net/snmp6") as snmp6:
            fields = dict(line.split() for line in snmp6 if line.strip())
        total += int(fields.get("Udp6InErrors", 0)) + int(fields.get("Udp6RcvbufErrors", 0))
    except FileNotFoundError:
        pass
    return total


def rss_of(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


class Process:
    def __init__(self, kind, role):
        self.child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--peer", kind, role],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def tell(self, **command):
        self.child.stdin.write(json.dumps(command) + "\n")
        self.child.stdin.flush()

    def hear(self):
        line = self.child.stdout.readline()
        if not line:
            raise RuntimeError(f"peer process {self.child.pid} ended (exit {self.child.wait()})")
        return json.loads(line)

    def ask(self, **command):
        self.tell(**command)
        return self.hear()

    def close(self):
        try:
            self.tell(cmd="exit")
            self.child.wait(timeout=20)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            self.child.kill()
            self.child.wait()


def one_round(kind, bootstrap, options, number):
    result = {}
    names = [f"bob{number}", f"alice{number}"]
    receiver, sender = Process(kind, "receiver"), Process(kind, "sender")
    try:
        receiver.tell(cmd="init", bootstrap=bootstrap, names=names)
        sender.tell(cmd="init", bootstrap=bootstrap, names=names)
        where = receiver.hear()
        receiver.tell(cmd="accept")
        result["setup"] = sender.ask(cmd="connect", **where)["setup"]
        receiver.hear()

        drops = udp_drops()
        before = (sender.ask(cmd="stats"), receiver.ask(cmd="stats"))
        receiver.tell(cmd="echo", count=options.rtt_count)
        samples = sender.ask(cmd="rtt", count=options.rtt_count)["samples"]
        receiver.hear()
        after = (sender.ask(cmd="stats"), receiver.ask(cmd="stats"))
        result["rtt"] = statistics.median(samples)
        result["drops_rtt"] = udp_drops() - drops
        # What a round trip costs both processes together: CPU, and the thread hand-offs (a raw UDP
        # echo has two, one per process; ours adds the I/O thread's on each side).
        result["rtt_cpu"] = sum(a["cpu"] - b["cpu"] for a, b in zip(after, before)) / options.rtt_count
        result["rtt_switches"] = sum(a["switches"] - b["switches"] for a, b in zip(after, before)) / options.rtt_count

        def phase(size, total):
            count = max(1, total // size)
            drops = udp_drops()
            before = (sender.ask(cmd="stats"), receiver.ask(cmd="stats"))
            receiver.tell(cmd="receive", size=size, count=count)
            start = sender.ask(cmd="send", size=size, count=count)["start"]
            done = receiver.hear()
            after = (sender.ask(cmd="stats"), receiver.ask(cmd="stats"))
            mib = done["bytes"] / (1 << 20)
            return {"rate": mib / (done["end"] - start), "lost": count * size - done["bytes"],
                    "cpu_send": (after[0]["cpu"] - before[0]["cpu"]) * 1000 / mib,
                    "cpu_receive": (after[1]["cpu"] - before[1]["cpu"]) * 1000 / mib,
                    "drops": udp_drops() - drops, "rss_before": before[0]["rss"], "rss_after": after[0]["rss"],
                    "rss_receiver_after": after[1]["rss"]}

        small = phase(1024, options.small_mib << 20)
        result.update({"small": small["rate"], "drops_small": small["drops"], "lost_small": small["lost"]})
        bulk = phase(1 << 20, options.bulk_mib << 20)
        result.update({"bulk": bulk["rate"], "cpu_send": bulk["cpu_send"], "cpu_receive": bulk["cpu_receive"],
                       "drops_bulk": bulk["drops"], "lost_bulk": bulk["lost"],
                       "rss_before": bulk["rss_before"], "rss_after": bulk["rss_after"],
                       "rss_receiver_after": bulk["rss_receiver_after"]})
        # Resident memory of the sender once it settled: polled until within 1.5x its size before
        # the bulk phase, for at most --settle seconds.
        started = time.monotonic()
        settled = rss_of(sender.child.pid)
        while settled > 1.5 * bulk["rss_before"] and time.monotonic() - started < options.settle:
            time.sleep(0.5)
            settled = rss_of(sender.child.pid)
        result["rss_settled"] = settled
        result["settle_s"] = time.monotonic() - started
    finally:
        sender.close()
        receiver.close()
    return result


ROWS = [
    # key, label, unit, scale, format, better ("high"/"low")
    ("bulk", "throughput, 1 MiB messages", "MiB/s", 1, "{:.0f}"),
    ("cpu_send", "sender CPU per MiB, 1 MiB messages", "ms", 1, "{:.1f}"),
    ("cpu_receive", "receiver CPU per MiB, 1 MiB messages", "ms", 1, "{:.1f}"),
    ("drops_bulk", "UDP drops at receiving sockets, 1 MiB phase", "", 1, "{:.0f}"),
    ("drops_small", "UDP drops at receiving sockets, 1 KiB phase", "", 1, "{:.0f}"),
    ("drops_rtt", "UDP drops at receiving sockets, RTT phase", "", 1, "{:.0f}"),
    ("rss_before", "sender resident memory before the bulk phase", "MiB", 1 / (1 << 20), "{:.0f}"),
    ("rss_after", "sender resident memory after the bulk phase", "MiB", 1 / (1 << 20), "{:.0f}"),
    ("rss_settled", "sender resident memory settled (see settle_s)", "MiB", 1 / (1 << 20), "{:.0f}"),
    ("rss_receiver_after", "receiver resident memory after the bulk phase", "MiB", 1 / (1 << 20), "{:.0f}"),
    ("rtt", "RTT p50, 64 B echo", "us", 1e6, "{:.0f}"),
    ("rtt_cpu", "CPU per round trip, both peers, 64 B echo", "us", 1e6, "{:.0f}"),
    ("rtt_switches", "context switches per round trip, both peers, 64 B echo", "", 1, "{:.1f}"),
    ("small", "throughput, 1 KiB messages", "MiB/s", 1, "{:.1f}"),
    ("setup", "connection setup (ours by name, iroh by address)", "ms", 1e3, "{:.1f}"),
]


def cell(values, scale, form):
    if not values:
        return "-"
    scaled = [v * scale for v in values]
    median = form.format(statistics.median(scaled))
    if len(scaled) == 1:
        return median
    return f"{median} ({form.format(min(scaled))}-{form.format(max(scaled))})"


def report(results, rounds):
    kinds = [k for k in IMPLEMENTATIONS if results.get(k)]
    header = "| | " + " | ".join(f"{k} (median, min-max of {rounds})" for k in kinds) + " | ours/iroh | ours/udp |"
    lines = [header, "|---|" + "---:|" * (len(kinds) + 2)]
    for key, label, unit, scale, form in ROWS:
        columns = [cell([r[key] for r in results[k]], scale, form) for k in kinds]

        def ratio(other):
            if not results.get("ours") or not results.get(other) or key.startswith("drops"):
                return "-"
            mine = statistics.median(r[key] for r in results["ours"])
            theirs = statistics.median(r[key] for r in results[other])
            return f"{mine / theirs:.2f}x" if theirs else "-"

        per_round = ""
        if key.startswith("drops"):
            per_round = "; ".join(f"{k}: " + ", ".join(str(r[key]) for r in results[k]) for k in kinds)
            columns = [", ".join(str(r[key]) for r in results[k]) for k in kinds]
        lines.append(f"| {label}{' (' + unit + ')' if unit else ''} | " + " | ".join(columns) +
                     f" | {ratio('iroh')} | {ratio('udp')} |")
    print("\n".join(lines))
    if results.get("ours"):
        print("ours: sender settled in " + ", ".join(f"{r['settle_s']:.1f} s" for r in results["ours"]) +
              "; bytes lost in the 1 MiB phase " + ", ".join(str(r["lost_bulk"]) for r in results["ours"]))
    if results.get("ours") and results.get("udp"):
        ours = statistics.median(r["rtt"] for r in results["ours"])
        udp = statistics.median(r["rtt"] for r in results["udp"])
        print(f"RTT p50 added over raw UDP: {(ours - udp) * 1e6:.0f} us")
    print("summary: " + json.dumps({k: {key: statistics.median(r[key] for r in results[k]) for key, *_ in ROWS}
                                    for k in kinds}))


def enter_namespace():
    """Re-runs this script in a new network namespace (root), with only `lo`, up, and no route out."""
    if os.environ.get("DNA_BENCH_NETNS") == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        routes = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True).stdout.strip()
        if routes:
            sys.exit(f"a default route in the benchmark's namespace: {routes}")
        return
    environment = dict(os.environ, DNA_BENCH_NETNS="1")
    try:
        completed = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__)] + sys.argv[1:],
                                   env=environment)
    except FileNotFoundError:
        sys.exit("unshare (util-linux) is missing: it keeps iroh and everything else off the network")
    sys.exit(completed.returncode)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", nargs=2, metavar=("KIND", "ROLE"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS), help="comma-separated: iroh,ours,udp")
    parser.add_argument("--bulk-mib", type=int, default=64)
    parser.add_argument("--small-mib", type=int, default=8)
    parser.add_argument("--rtt-count", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait for the sender's memory")
    options = parser.parse_args()
    if options.peer:
        kind, role = options.peer
        {"ours": run_ours, "iroh": run_iroh, "udp": run_udp}[kind](role, Peer())
        return
    enter_namespace()
    kinds = [k for k in options.only.split(",") if k]
    if "iroh" in kinds:
        try:
            import iroh  # noqa: F401
        except ImportError as error:
            print(f"iroh: cannot import ({error}); install it into this interpreter's environment "
                  f"(pip install iroh==1.2.0); measuring ours beside raw UDP only")
            kinds.remove("iroh")
    bootstrap = []
    node = None
    if "ours" in kinds:
        import dnatransport as dna
        directory = tempfile.mkdtemp(prefix="dna-iroh-compare-boot-")
        node = dna.DHT(data_dir=directory, bind_ip="127.0.0.1")
        bootstrap = [f"127.0.0.1:{node.port}"]
    results = {k: [] for k in kinds}
    for number in range(options.rounds):
        for kind in kinds:
            try:
                outcome = one_round(kind, bootstrap, options, number)
            except Exception as error:  # a failed round is reported, the others still count
                print(f"round {number + 1} {kind}: failed: {error!r}", flush=True)
                continue
            results[kind].append(outcome)
            print(f"round {number + 1} {kind}: bulk {outcome['bulk']:.0f} MiB/s, cpu {outcome['cpu_send']:.1f}/"
                  f"{outcome['cpu_receive']:.1f} ms/MiB, drops {outcome['drops_rtt']}/{outcome['drops_small']}/"
                  f"{outcome['drops_bulk']}, rtt {outcome['rtt'] * 1e6:.0f} us, 1 KiB {outcome['small']:.1f} MiB/s, "
                  f"rss {outcome['rss_before'] >> 20}->{outcome['rss_after'] >> 20}->{outcome['rss_settled'] >> 20} MiB",
                  flush=True)
    if node is not None:
        node.close()
    report(results, options.rounds)


if __name__ == "__main__":
    main()
