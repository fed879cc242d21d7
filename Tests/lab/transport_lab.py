"""Helpers for the transport in the lab (tests and bench/transport_lab_bench.py): transport_peer.py
processes in the lab's namespaces, their JSON events, a conversation."""
import json
import os
import pathlib
import subprocess
import sys

from natlab import NODE_PORT, SERVER, TURN_PASSWORD, TURN_PORT, TURN_USER

DNAT = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", "/usr/local")) / "bin" / "dnat"
HERE = os.path.dirname(os.path.abspath(__file__))


def peer(lab, role, *args, home=None, **popen):
    """A transport_peer.py in role's namespace, its data in lab.dir/home (default: the role)."""
    command = [sys.executable, os.path.join(HERE, "transport_peer.py"), "--data-dir", os.path.join(lab.dir, home or role),
               "--bootstrap", f"{SERVER[0]}:{NODE_PORT}", "--turn", f"{SERVER[1]}:{TURN_PORT}",
               "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD, *args]
    return lab.popen(role, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, **popen)


def events_of(process, until, limit=120):
    out = []
    for line in process.stdout:
        out.append(json.loads(line))
        if out[-1]["event"] in until:
            break
    return out


def last_event(process, until):
    """The event of `until` that ended process's output, or {"event": "exited"} when it ended first."""
    events = events_of(process, until)
    return events[-1] if events and events[-1]["event"] in until else {"event": "exited", "before": events}


def converse(lab, messages=20, size=100):
    """bob listens behind b, alice behind a connects to him; returns alice's events."""
    bob = peer(lab, "b", "--as", "bob", "--listen")
    assert events_of(bob, {"ready"})[-1]["event"] == "ready"
    alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--messages", str(messages), "--size", str(size))
    events = events_of(alice, {"done", "error"})
    alice.wait(60)
    bob.stdin.close()
    bob.wait(30)
    return events


class Probe:
    """A process that answers {"size", "count", "pause"} on stdin with {"event": "rtt", "rtt_ms"}:
    transport_peer.py --probe over a connection, or udp_peer.py over raw UDP. Closing it ends the
    process and the ones it needs (the echoing side)."""

    def __init__(self, process, others=()):
        self.process, self.others = process, list(others)

    def rtt(self, size, count, pause=0.0):
        """The `count` round trip times in ms of `size` bytes, one at a time."""
        self.process.stdin.write(json.dumps({"size": size, "count": count, "pause": pause}) + "\n")
        self.process.stdin.flush()
        event = last_event(self.process, {"rtt", "error"})
        if event["event"] != "rtt":
            raise RuntimeError(f"probe failed: {event}")
        return event["rtt_ms"]

    def close(self):
        for process in [self.process] + self.others:
            try:
                process.stdin.close()
            except OSError:
                pass
        for process in [self.process] + self.others:
            process.wait(60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def transport_probe(lab):
    """alice (a) connected by name to bob (b), who echoes: a Probe, and the connect event."""
    bob = peer(lab, "b", "--as", "bob", "--listen")
    if last_event(bob, {"ready"})["event"] != "ready":
        raise RuntimeError("bob did not start")
    alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--probe")
    connected = last_event(alice, {"connected", "error"})
    if connected["event"] != "connected":
        bob.stdin.close()
        raise RuntimeError(f"alice did not connect: {connected}")
    return Probe(alice, [bob]), connected


def raw_udp_probe(lab):
    """Raw UDP from a to b through their routers (udp_peer.py; each learns the other's public
    address by STUN, b opens its NAT first): a Probe."""
    command = [sys.executable, os.path.join(HERE, "udp_peer.py")]
    echo = lab.popen("b", command + ["--echo"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    client = lab.popen("a", command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    mapped = {}
    for role, process in (("b", echo), ("a", client)):
        event = last_event(process, {"mapped", "error"})
        if event["event"] != "mapped":
            raise RuntimeError(f"udp_peer in {role}: {event}")
        mapped[role] = event["public"]
    echo.stdin.write(json.dumps({"peer": mapped["a"]}) + "\n")
    echo.stdin.flush()
    if last_event(echo, {"punched"})["event"] != "punched":
        raise RuntimeError("udp_peer in b did not punch")
    client.stdin.write(json.dumps({"peer": mapped["b"]}) + "\n")
    client.stdin.flush()
    opened = last_event(client, {"open", "error"})
    if opened["event"] != "open":
        raise RuntimeError(f"raw UDP from a to b: {opened}")
    return Probe(client, [echo])
