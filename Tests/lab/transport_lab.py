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
