"""Paths with a small MTU and no ICMP (issue 19, part 3; docs/PROTOCOL.md §9): a's router has a WAN
link of MTU 1,150 or 1,000 and drops its ICMP "fragmentation needed" errors, so every datagram over
the MTU vanishes silently, both ways (natlab.Lab(mtu=...) checks it). alice behind that link must
still store her signed entry (a 5.3 KB STORE), find bob's (a 5.3 KB VALUE), connect to bob and be
connected to (signaling, ICE, the handshake) and exchange messages larger than a fragment.
Needs root and the installed dnat (DNA_TEST_PREFIX), as test_transport_lab.py.
"""
import pytest

import natlab
from transport_lab import DNAT, events_of, peer

CELLS = [(1150, "port-restricted", "port-restricted"), (1000, "port-restricted", "port-restricted"),
         (1000, "port-restricted", "symmetric")]


def connect(lab, listener, listener_role, caller, caller_role, size):
    """`listener` waits behind its role's router, `caller` connects to it by name and exchanges
    10 messages of `size` bytes (round trips, then a burst); returns the caller's events."""
    waiting = peer(lab, listener_role, "--as", listener, "--listen")
    assert events_of(waiting, {"ready"})[-1]["event"] == "ready"
    calling = peer(lab, caller_role, "--as", caller, "--to", listener, "--messages", "10", "--size", str(size))
    events = events_of(calling, {"done", "error"})
    calling.wait(60)
    waiting.stdin.close()
    waiting.wait(30)
    return events


@pytest.mark.parametrize("mtu,a,b", CELLS, ids=[f"mtu{m}-{a}:{b}" for m, a, b in CELLS])
def test_peers_behind_a_small_mtu_without_icmp_connect_both_ways(mtu, a, b):
    with natlab.Lab(a=a, b=b, node=str(DNAT), mtu=mtu) as lab:
        # alice (behind the small MTU) finds bob and connects: her lookups get his 5.3 KB entry.
        outgoing = connect(lab, "bob", "b", "alice", "a", 3000)
        # bob connects to alice: her entry was stored through the small MTU, the signal reaches her.
        incoming = connect(lab, "alice", "a", "bob", "b", 3000)
    for direction, events in (("alice -> bob", outgoing), ("bob -> alice", incoming)):
        assert [e["event"] for e in events] == ["connected", "done"], (direction, events)
        assert events[1]["echoed"] == 10 and events[1]["in_order"], (direction, events)
        print(f"MTU {mtu} {a}:{b} {direction}: connected in {events[0]['ms']} ms, RTT p50 {events[1]['rtt_ms']} ms")
