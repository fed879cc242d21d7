"""The transport behind real NATs: identities join the DHT through a `dnat node` on the lab's
internet, connect by name (signaling through the DHT, ICE with coturn for STUN/TURN, the handshake)
and exchange messages; with 10% loss on the routers every message still arrives, in order; offline
messages wait in the DHT. Needs root and the installed dnat (DNA_TEST_PREFIX), as test_nat_lab.py.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import natlab
from natlab import NODE_PORT, SERVER, TURN_PASSWORD, TURN_PORT, TURN_USER

DNAT = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", "/usr/local")) / "bin" / "dnat"
HERE = os.path.dirname(os.path.abspath(__file__))


def peer(lab, role, *args):
    command = [sys.executable, os.path.join(HERE, "transport_peer.py"), "--data-dir", os.path.join(lab.dir, role),
               "--bootstrap", f"{SERVER[0]}:{NODE_PORT}", "--turn", f"{SERVER[1]}:{TURN_PORT}",
               "--turn-user", TURN_USER, "--turn-password", TURN_PASSWORD, *args]
    return lab.popen(role, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


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


CELLS = [("port-restricted", "port-restricted"), ("port-restricted", "symmetric"), ("symmetric", "symmetric"),
         ("public", "full-cone"), ("port-restricted", "same")]


@pytest.mark.parametrize("a,b", CELLS, ids=[f"{a}:{b}" for a, b in CELLS])
def test_connect_by_name_through_nats(a, b):
    with natlab.Lab(a=a, b=b, node=str(DNAT)) as lab:
        events = converse(lab)
    assert [e["event"] for e in events] == ["connected", "done"], events
    assert events[1]["echoed"] == 20 and events[1]["in_order"], events
    print(f"{a}:{b}: connected in {events[0]['ms']} ms, RTT p50 {events[1]['rtt_ms']} ms")


@pytest.mark.parametrize("a,b", [("port-restricted", "port-restricted"), ("port-restricted", "symmetric")])
def test_every_message_arrives_through_ten_percent_loss(a, b):
    with natlab.Lab(a=a, b=b, node=str(DNAT), loss=10) as lab:
        events = converse(lab, messages=200, size=3000)  # 3 fragments each
        if [e["event"] for e in events] != ["connected", "done"]:
            # Known (issue 5's note): under loss ICE can end connected on one side and failed on the
            # other; connect tries 3 paths within its 20 s, and a run of bad luck can exhaust them.
            # A second conversation must work; the first failure is printed.
            print(f"10% loss, {a}:{b}: first conversation failed: {events}")
            events = converse(lab, messages=200, size=3000)
    assert [e["event"] for e in events] == ["connected", "done"], events
    assert events[1]["echoed"] == 200 and events[1]["in_order"], events
    print(f"10% loss {a}:{b}: connected in {events[0]['ms']} ms, RTT p50 {events[1]['rtt_ms']} ms")


def test_offline_messages_wait_behind_nats():
    """bob (behind a NAT) publishes his inbox and leaves; alice stores 3 messages; bob returns."""
    with natlab.Lab(a="port-restricted", b="symmetric", node=str(DNAT)) as lab:
        # carol, on the public side, stays online: a holder of inboxes (the bootstrap node keeps none).
        carol = peer(lab, "srv", "--as", "carol", "--listen")
        assert events_of(carol, {"ready"})[-1]["event"] == "ready"
        bob = peer(lab, "b", "--as", "bob", "--listen")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        bob.stdin.close()
        bob.wait(30)
        alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--offline", "--messages", "3")
        assert events_of(alice, {"stored"})[-1]["event"] == "stored"
        alice.wait(30)
        bob = peer(lab, "b", "--as", "bob", "--inbox", "--messages", "3")
        inbox = events_of(bob, {"inbox"})[-1]
        bob.wait(30)
        carol.stdin.close()
        carol.wait(30)
    assert inbox["messages"] == [["alice", f"offline {i}"] for i in range(3)], inbox


def test_a_peer_that_left_is_offline_quickly():
    """bob's entry outlives him in the DHT; a connection attempt says PEER_OFFLINE within seconds."""
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(DNAT)) as lab:
        bob = peer(lab, "b", "--as", "bob", "--listen")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        bob.kill()
        bob.wait(10)
        alice = peer(lab, "a", "--as", "alice", "--to", "bob")
        events = events_of(alice, {"done", "error"})
        alice.wait(30)
    assert events[-1]["event"] == "error" and events[-1]["name"] == "PEER_OFFLINE", events
    assert events[-1]["ms"] < 8000, events
