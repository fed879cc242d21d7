"""The network lab: Linux network namespaces as hosts and NAT routers (nftables), coturn as the
STUN/TURN server, a `dnat node` as bootstrap node. Needs root, ip(8), nft(8) and turnserver(1).

    with Lab(a="port-restricted", b="symmetric", loss=0) as lab:
        lab.popen("a", ["python3", "peer.py", ...])

Topology (all addresses are TEST-NET or private; nothing is routed to the root namespace):

    inet:  a bridge, the 'internet' 203.0.113.0/24; its core .1 is everyone's default route and drops
    srv:   203.0.113.10 and .11: coturn on both (UDP and TCP 3478), `dnat node` on .10:4567
    ra/rb: NAT routers, WAN 203.0.113.21/.22, LAN 10.0.1.1/10.0.2.1 (a 'same' router holds both hosts)
    a/b:   hosts: 10.0.1.2/10.0.2.2 behind their router, or 203.0.113.31/.32 when public
    dl:    with delay: a delay line (delayline.py) in the link from a's side (ra, or a when public) to
           the internet: every frame that crosses that link, either way, arrives `delay` ms later

NAT kinds (postrouting on the router's WAN; forward policy drop, replies accepted; unsolicited packets
to the router itself are dropped too, or they leave a conntrack entry that makes the host's own
outbound packet get another port):
    public           no router, the host is on the internet
    port-restricted  masquerade (endpoint-independent mapping, address-and-port-dependent filtering)
    symmetric        masquerade fully-random (a new external port per destination)
    full-cone        masquerade + DNAT of inbound UDP to the one host behind it
    udp-blocked      only TCP to the TURN server's port leaves the LAN
    same             (b only) b sits behind a's port-restricted router, on the same LAN

Every namespace the lab made is deleted when it ends, also after an exception or SIGTERM; the
`cleanup` command removes those of dead lab processes.
"""
import atexit
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

KINDS = ("public", "port-restricted", "symmetric", "full-cone", "udp-blocked")
SERVER = ("203.0.113.10", "203.0.113.11")
TURN_PORT = 3478
NODE_PORT = 4567
TURN_USER, TURN_PASSWORD, TURN_REALM = "dna", "lab-secret", "lab.dna"
PREFIX = "dnalab"


RELAY = 2

# (a, b) -> expected path. 'same': both hosts behind one port-restricted router.
MATRIX = {
    ("public", "public"): "direct",
    ("public", "port-restricted"): "direct",
    ("public", "symmetric"): "direct",
    ("public", "full-cone"): "direct",
    ("public", "udp-blocked"): "relay",
    ("port-restricted", "port-restricted"): "direct",
    ("port-restricted", "symmetric"): "relay",
    ("port-restricted", "full-cone"): "direct",
    ("port-restricted", "udp-blocked"): "relay",
    ("symmetric", "symmetric"): "relay",
    ("symmetric", "full-cone"): "direct",
    ("symmetric", "udp-blocked"): "relay",
    ("full-cone", "full-cone"): "direct",
    ("full-cone", "udp-blocked"): "relay",
    ("udp-blocked", "udp-blocked"): "relay",
    ("port-restricted", "same"): "direct",
}


def path_of(event):
    return "relay" if RELAY in (event["local"][2], event["remote"][2]) else "direct"


class LabError(Exception):
    pass


def sh(*args, ns=None, check=True, input=None):
    command = (["ip", "netns", "exec", ns] if ns else []) + [str(a) for a in args]
    done = subprocess.run(command, input=input, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def stun_mapping(sock, server, timeout=1.0, tries=3):
    """The (ip, port) a STUN server (RFC 8489 Binding) sees for sock, or None after `tries` requests
    of `timeout` seconds each."""
    tid = os.urandom(12)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout * tries
    while time.monotonic() < deadline:
        sock.sendto(struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid, server)
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            continue
        if len(data) < 20 or data[8:20] != tid:
            continue
        at = 20
        while at + 4 <= len(data):
            kind, length = struct.unpack_from("!HH", data, at)
            value = data[at + 4:at + 4 + length]
            if kind == 0x0020 and length >= 8 and value[1] == 1:  # XOR-MAPPED-ADDRESS, IPv4
                port = struct.unpack_from("!H", value, 2)[0] ^ 0x2112
                ip = bytes(b ^ m for b, m in zip(value[4:8], struct.pack("!I", 0x2112A442)))
                return socket.inet_ntoa(ip), port
            at += 4 + ((length + 3) & ~3)
    return None


class Lab:
    def __init__(self, a="public", b="public", loss=0, turn=True, node=None, workdir=None, loss_only="", mtu=None,
                 segment=None, delay=0):
        """loss: percent of the datagrams each router forwards that it drops; loss_only: an nftables
        match that limits the loss to the packets it matches (e.g. "udp sport != 4567"); mtu: see below;
        segment: cut UDP GSO runs into datagrams as they leave each host (default: with loss; see
        _segment_before_routers); delay: milliseconds added to every frame each way on a's link to
        the internet (`tc netem` stands in no kernel here: see delayline.py), so a path from a to b
        or to the servers has a round trip 2 x delay longer; b's own link is not delayed."""
        if a not in KINDS or (b not in KINDS and b != "same"):
            raise LabError(f"unknown NAT kind {a!r} or {b!r}")
        if b == "same" and a != "port-restricted":
            raise LabError("'same' puts b behind a's port-restricted router")
        self.kinds = {"a": a, "b": b}
        self.loss = int(loss)
        self.loss_only = loss_only
        self.segment = bool(self.loss) if segment is None else bool(segment)
        # A small MTU on a's router's WAN link (both ends of the veth), with the router's ICMP
        # "fragmentation needed" dropped: a path MTU black hole as VPNs and tunnels make them.
        if mtu is not None and a == "public":
            raise LabError("mtu needs a behind a router")
        self.mtu = None if mtu is None else int(mtu)
        self.delay = float(delay)
        if self.delay < 0:
            raise LabError("delay must be >= 0")
        self.turn = turn
        self.node = node  # path of the dnat executable, or None for no bootstrap node
        self.tag = f"{PREFIX}{os.getpid()}x{random.randrange(1000)}"
        self.namespaces = []
        self.processes = []
        self.owned_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="dnalab-")
        self.address = {}
        self._closed = False

    # names
    def ns(self, role):
        return f"{self.tag}-{role}"

    def __enter__(self):
        atexit.register(self.close)
        self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _on_term(self, *_):
        self.close()
        sys.exit(143)

    # topology
    def _add_ns(self, role, router=False):
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        for key, value in (("net.ipv4.ip_forward", 1 if router else 0), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0), ("net.ipv6.conf.all.disable_ipv6", 1),
                           ("net.ipv6.conf.default.disable_ipv6", 1)):
            sh("sysctl", "-qw", f"{key}={value}", ns=name)
        return name

    def _plug(self, role, ip, ifname="eth0"):
        """A veth from role's namespace to the internet bridge; with a delay, a's side's link runs
        through the delay line's namespace."""
        peer = f"p{len(self.namespaces)}{role}"[:15]
        self._wan_peer = getattr(self, "_wan_peer", {})
        self._wan_peer[role] = peer
        if self.delay and role in ("a", "ra"):
            self._delay_line(role, ifname, peer)
        else:
            sh("ip", "-n", self.ns(role), "link", "add", ifname, "type", "veth", "peer", "name", peer, "netns", self.ns("inet"))
        sh("ip", "-n", self.ns("inet"), "link", "set", peer, "master", "br0", "up")
        sh("ip", "-n", self.ns(role), "link", "set", ifname, "up")
        self._segment_before_routers(self.ns(role), ifname)
        if ip:
            sh("ip", "-n", self.ns(role), "addr", "add", f"{ip}/24", "dev", ifname)
            sh("ip", "-n", self.ns(role), "route", "add", "default", "via", "203.0.113.1")

    def _delay_line(self, role, ifname, peer):
        """role's ifname and the bridge's port `peer` as the two ends of delayline.py's namespace,
        which forwards every frame between them `delay` ms late; returns once it runs."""
        line = self._add_ns("dl")
        sh("ip", "-n", self.ns(role), "link", "add", ifname, "type", "veth", "peer", "name", "dl0", "netns", line)
        sh("ip", "-n", line, "link", "add", "dl1", "type", "veth", "peer", "name", peer, "netns", self.ns("inet"))
        for end in ("dl0", "dl1"):
            sh("ip", "-n", line, "link", "set", "dev", end, "up")
        self.delay_process = self.popen("dl", [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                               "delayline.py"),
                                               "--delay-ms", self.delay, "--stats", "dl0", "dl1"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.delay_process.stdout.readline().strip() != "ready":
            raise LabError(f"the delay line did not start (exit {self.delay_process.wait(5)})")

    def _build(self):
        for tool in ("ip", "nft", "turnserver"):
            if subprocess.run(["which", tool], capture_output=True).returncode != 0:
                raise LabError(f"{tool} is not installed (make deps)")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces)")
        inet = self._add_ns("inet")
        sh("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", inet, "link", "set", "br0", "up")
        # The internet's core: every other namespace routes by default to 203.0.113.1, which does not
        # forward, so a packet to a private address vanishes as on the real internet (an immediate
        # ENETUNREACH instead makes coturn give up on a relay).
        sh("ip", "-n", inet, "addr", "add", "203.0.113.1/24", "dev", "br0")
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", ns=inet, check=False)
        self._add_ns("srv")
        self._plug("srv", SERVER[0])
        sh("ip", "-n", self.ns("srv"), "addr", "add", f"{SERVER[1]}/24", "dev", "eth0")

        if self.kinds["b"] == "same":
            self._router("ra", 1, "port-restricted", hosts=("a", "b"))
        else:
            for index, role in enumerate(("a", "b"), start=1):
                kind = self.kinds[role]
                if kind == "public":
                    self._add_ns(role)
                    ip = f"203.0.113.{30 + index}"
                    self._plug(role, ip)
                    self.address[role] = ip
                else:
                    self._router(f"r{role}", index, kind, hosts=(role,))
        if self.turn:
            self.start_turn()
        if self.node:
            self.start_node()
        self.verify()

    def _segment_before_routers(self, ns, ifname):
        """With loss: datagrams a host sends with UDP GSO (the transport sends runs of up to 64 in one
        call) are cut into datagrams as they leave the host, as a real NIC cuts them before the wire.
        A veth passes the run on whole, and a router's random drop then dropped up to 64 datagrams at
        once: "5% loss" was 5% of runs (measured: a sender's recent loss rate swung between 3% and
        27%), not 5% of datagrams."""
        if not self.segment:
            return
        done = subprocess.run(["ip", "-n", ns, "link", "set", "dev", ifname, "gso_max_segs", "1"], capture_output=True)
        if done.returncode != 0:
            print(f"natlab: {ns} {ifname}: gso_max_segs cannot be set here; a router's drop may take a whole GSO run",
                  file=sys.stderr)

    def _router(self, router, index, kind, hosts):
        name = self._add_ns(router, router=True)
        self._plug(router, f"203.0.113.{20 + index}", ifname="wan")
        lan = f"10.0.{index}"
        if len(hosts) == 1:
            host = self._add_ns(hosts[0])
            sh("ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", "lan", "netns", name)
            sh("ip", "-n", name, "addr", "add", f"{lan}.1/24", "dev", "lan")
            sh("ip", "-n", name, "link", "set", "lan", "up")
        else:
            sh("ip", "-n", name, "link", "add", "lan", "type", "bridge")
            sh("ip", "-n", name, "addr", "add", f"{lan}.1/24", "dev", "lan")
            sh("ip", "-n", name, "link", "set", "lan", "up")
            sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", ns=name, check=False)
        for offset, role in enumerate(hosts, start=2):
            host = self.ns(role) if len(hosts) == 1 else self._add_ns(role)
            if len(hosts) > 1:
                sh("ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", f"l{role}", "netns", name)
                sh("ip", "-n", name, "link", "set", f"l{role}", "master", "lan", "up")
            sh("ip", "-n", host, "addr", "add", f"{lan}.{offset}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
            self._segment_before_routers(host, "eth0")
            sh("ip", "-n", host, "route", "add", "default", "via", f"{lan}.1")
            self.address[role] = f"{lan}.{offset}"
        self.address[router] = f"203.0.113.{20 + index}"
        small = self.mtu is not None and router == "ra"
        if small:
            sh("ip", "-n", name, "link", "set", "wan", "mtu", self.mtu)
            sh("ip", "-n", self.ns("inet"), "link", "set", self._wan_peer[router], "mtu", self.mtu)
        sh("nft", "-f", "-", ns=name, input=self._rules(kind, f"{lan}.2", black_hole=small))

    def _rules(self, kind, host, black_hole=False):
        masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"
        prerouting = (f'iifname "wan" udp dport 1024-65535 dnat to {host}' if kind == "full-cone" else "")
        if kind == "udp-blocked":
            outbound = f'iifname != "wan" oifname "wan" ip daddr {{ {SERVER[0]}, {SERVER[1]} }} tcp dport {TURN_PORT} accept'
        else:
            outbound = 'iifname != "wan" oifname "wan" accept'
        loss = f"{self.loss_only} numgen random mod 100 < {self.loss} counter drop" if self.loss else ""
        # The router's own ICMP errors (hook output) for datagrams too large for the WAN link.
        icmp = "icmp type destination-unreachable icmp code frag-needed counter drop" if black_hole else ""
        return f"""
table ip nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        {prerouting}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" {masquerade}
    }}
}}
table ip filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state established,related accept
        iifname "wan" drop
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        {icmp}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        {loss}
        ct state established,related accept
        {"ct status dnat accept" if kind == "full-cone" else ""}
        {outbound}
    }}
}}
"""

    # servers
    def start_turn(self):
        """Starts coturn in srv on both server addresses; waits until it answers STUN."""
        pidfile = os.path.join(self.dir, "turnserver.pid")
        log = open(os.path.join(self.dir, "turnserver.log"), "ab")
        args = ["turnserver", "-n", "--no-cli", "--no-tls", "--no-dtls", "--log-file=stdout", "--simple-log",
                "--listening-port", str(TURN_PORT), "--relay-ip", SERVER[0], "--min-port", "49152", "--max-port", "65535",
                "--lt-cred-mech", f"--user={TURN_USER}:{TURN_PASSWORD}", f"--realm={TURN_REALM}", "--fingerprint",
                "--pidfile", pidfile, "--userdb", os.path.join(self.dir, "turndb")]
        for ip in SERVER:
            args += ["--listening-ip", ip]
        self.turn_process = self.popen("srv", args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.turn_process.poll() is not None:
                raise LabError("turnserver exited; see " + log.name)
            out = self.run_python("srv", f"import natlab, socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                         f"print(natlab.stun_mapping(s, ('{SERVER[0]}', {TURN_PORT}), 0.2))")
            if out.strip() != "None":
                return
        raise LabError("turnserver does not answer STUN")

    def stop_turn(self):
        if getattr(self, "turn_process", None) and self.turn_process.poll() is None:
            self.turn_process.terminate()
            self.turn_process.wait(5)

    def start_node(self):
        data = os.path.join(self.dir, "node")
        log = open(os.path.join(self.dir, "node.log"), "ab")
        self.node_process = self.popen("srv", [self.node, "node", "--port", str(NODE_PORT), "--bind", SERVER[0],
                                               "--data-dir", data], stdout=log, stderr=subprocess.STDOUT)

    # checks
    def verify(self):
        """Checks each host's NAT with STUN from two server addresses before any test trusts it."""
        if not self.turn:
            return
        # With loss on the routers a request or its answer may vanish: ask up to 15 times (a blocked
        # host is asked 3 times: it must get no answer at all).
        for role in ("a", "b"):
            kind = self.kinds[role]
            tries = 3 if kind == "udp-blocked" else 15
            out = self.run_python(role, "import natlab, socket, json; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                        "s.bind(('0.0.0.0', 0)); "
                                        f"print(json.dumps([s.getsockname()[1], natlab.stun_mapping(s, ('{SERVER[0]}', {TURN_PORT}), 0.2, {tries}), "
                                        f"natlab.stun_mapping(s, ('{SERVER[1]}', {TURN_PORT}), 0.2, {tries})]))")
            local_port, first, second = json.loads(out)
            host = self.address[role]
            if kind == "udp-blocked":
                ok = first is None and second is None
            elif kind == "public":
                ok = first == second == [host, local_port]
            elif kind == "symmetric":
                ok = first and second and first[0] == second[0] != host and first[1] != second[1]
            else:  # cone kinds and same
                ok = first and second and first == second and first[0] != host
            if not ok:
                raise LabError(f"{role} behind {kind}: STUN saw {first} and {second} (local port {local_port})")
        if self.mtu is not None:
            self.verify_black_hole()

    def verify_black_hole(self):
        """a's datagrams over the MTU vanish (no ICMP reaches a), smaller ones pass: both ways."""
        code = ("import socket, json, time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3); "
                "out={}\n"
                f"for size in ({self.mtu - 28}, {self.mtu - 27}):\n"
                "    got=None\n"
                "    for _ in range(5):\n"
                f"        s.sendto(b'x'*size, ('{SERVER[0]}', 7))\n"
                "        try: got=len(s.recv(4096)); break\n"
                "        except OSError as e: got=str(e) if not isinstance(e, socket.timeout) else None\n"
                "    out[size]=got\n"
                "print(json.dumps(out))")
        echo = self.popen("srv", [sys.executable, "-c",
                                  "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                                  f"s.bind(('{SERVER[0]}', 7)); "
                                  "exec('while True:\\n d,a=s.recvfrom(4096); s.sendto(d,a)')"])
        try:
            time.sleep(0.3)
            result = json.loads(self.run_python("a", code))
        finally:
            echo.kill()
            echo.wait(5)
        fits, over = result[str(self.mtu - 28)], result[str(self.mtu - 27)]
        if fits != self.mtu - 28 or over is not None:
            raise LabError(f"MTU {self.mtu} black hole: a {self.mtu - 28}-byte datagram echoed {fits}, "
                           f"a {self.mtu - 27}-byte one {over} (expected the first back, the second lost silently)")
        # No ICMP "fragmentation needed" reached a: its kernel learnt no path MTU.
        route = sh("ip", "route", "get", SERVER[0], ns=self.ns("a"))
        if " mtu " in route:
            raise LabError(f"a learnt a path MTU (the ICMP error was not dropped): {route.strip()}")

    def stop_delay_line(self):
        """Stops the delay line (the link goes down) and returns its account: frames each way and how
        late they left beyond the delay (p50, p99, max)."""
        process = getattr(self, "delay_process", None)
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            return None
        lines = [line for line in err.splitlines() if line.startswith("delayline ")]
        return lines[-1][len("delayline "):] if lines else None

    def count_forwarded(self, router, address):
        """Starts counting the datagrams `router` forwards to `address` (from now on); returns a
        function that reads the count (e.g. to see that a path went direct: ra to rb's WAN)."""
        name = f"to_{address.replace('.', '_')}"
        sh("nft", "add", "counter", "ip", "filter", name, ns=self.ns(router))
        sh("nft", "insert", "rule", "ip", "filter", "forward", "ip", "daddr", address, "counter", "name", name,
           ns=self.ns(router))

        def read():
            listing = sh("nft", "list", "counter", "ip", "filter", name, ns=self.ns(router))
            words = listing.split()
            return int(words[words.index("packets") + 1])
        return read

    # processes
    def popen(self, role, args, **kwargs):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.abspath(__file__))] +
                                            [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        process = subprocess.Popen(["ip", "netns", "exec", self.ns(role)] + [str(a) for a in args], env=env, **kwargs)
        self.processes.append(process)
        return process

    def run_python(self, role, code, timeout=30):
        process = self.popen(role, [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = process.communicate(timeout=timeout)
        if process.returncode != 0:
            raise LabError(f"in {role}: {err.strip()}")
        return out

    def close(self):
        if self._closed:
            return
        self._closed = True
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for name in reversed(self.namespaces):
            delete_namespace(name)
        self.namespaces = []
        if self.owned_dir:
            subprocess.run(["rm", "-rf", self.dir])
        try:
            atexit.unregister(self.close)
            signal.signal(signal.SIGTERM, self._old_term)
        except (AttributeError, ValueError, TypeError):
            pass


def run_pair(lab, impl="dnatransport", stun=True, turn=True, timeout=10000, pings=20, kill_b=False,
             stop_turn=False, python=None):
    """Runs ice_peer.py in a (controlling) and b, relays their candidates and credentials, and returns
    {"a": [events...], "b": [events...]}. kill_b: b is killed once its candidates were sent (the peer
    disappears mid-check). stop_turn: coturn is stopped once both gathered."""
    python = python or sys.executable
    here = os.path.dirname(os.path.abspath(__file__))
    peers = {}
    for role in ("a", "b"):
        args = [python, os.path.join(here, "ice_peer.py"), "--impl", impl, "--timeout", str(timeout), "--pings", str(pings)]
        if stun:
            args += ["--stun", f"{SERVER[1]}:{TURN_PORT}"]
        if turn:
            args += ["--turn", f"{SERVER[0]}:{TURN_PORT}", "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD]
        if role == "a":
            args.append("--controlling")
        peers[role] = lab.popen(role, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    events = {"a": [], "b": []}

    def next_event(role, limit=60):
        line = peers[role].stdout.readline()
        if not line:
            raise LabError(f"peer {role} ended without output (exit {peers[role].wait(limit)})")
        event = json.loads(line)
        events[role].append(event)
        return event

    local = {role: next_event(role) for role in ("a", "b")}
    if stop_turn:
        lab.stop_turn()
    for role, other in (("a", "b"), ("b", "a")):
        peers[role].stdin.write(json.dumps(local[other]) + "\n")
        peers[role].stdin.flush()
    if kill_b:
        peers["b"].kill()
        peers["b"].wait()
    roles = ("a",) if kill_b else ("a", "b")
    for role in roles:
        if next_event(role)["event"] == "established":
            next_event(role)
    for role in roles:
        try:
            peers[role].stdin.write("bye\n")
            peers[role].stdin.flush()
        except (BrokenPipeError, OSError):
            pass
    for role in roles:
        peers[role].wait(30)
    return events


def delete_namespace(name):
    """Kills every process left in the namespace, then deletes it."""
    for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def cleanup():
    """Deletes the namespaces of lab processes that are gone."""
    removed = []
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("x")[0]
        if pid.isdigit() and os.path.exists(f"/proc/{pid}"):
            continue
        delete_namespace(name)
        removed.append(name)
    return removed


if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        print("\n".join(cleanup()))
    elif len(sys.argv) >= 3 and sys.argv[1] == "check":
        with Lab(a=sys.argv[2], b=sys.argv[3] if len(sys.argv) > 3 else "public") as lab:
            print(f"ok: a={lab.kinds['a']} b={lab.kinds['b']} addresses={lab.address}")
    else:
        print("usage: natlab.py cleanup | check A_KIND [B_KIND]", file=sys.stderr)
        sys.exit(2)
