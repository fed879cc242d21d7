"""NatTraversal (nat_traversal.h) on this host's own addresses: two agents, no servers. The NAT
matrix behind real NATs and a real TURN server is Tests/lab/test_nat_lab.py."""
import socket
import threading
import time

import pytest

import dnatransport as dna


def connected_pair():
    a, b = dna.NatTraversal(), dna.NatTraversal()
    a.set_controlling(True)
    for agent in (a, b):
        agent.set_timeout(5000)
    ca, cb = a.gather(), b.gather()
    a.set_remote_credentials(*b.local_credentials)
    b.set_remote_credentials(*a.local_credentials)
    for c in cb:
        a.add_remote_candidate(c)
    for c in ca:
        b.add_remote_candidate(c)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("b", b.establish()))
    thread.start()
    sa = a.establish()
    thread.join()
    return a, b, sa, out["b"]


def exchange(sender, receiver, payload):
    receiver.settimeout(0.1)
    for _ in range(50):
        sender.send(payload)
        try:
            return receiver.recv(70000)
        except socket.timeout:
            continue
    return None


def test_two_agents_connect_and_carry_datagrams_both_ways():
    a, b, sa, sb = connected_pair()
    with a, b, sa, sb:
        assert sa.type == socket.SOCK_DGRAM
        assert exchange(sa, sb, b"hello") == b"hello"
        assert exchange(sb, sa, b"world") == b"world"
        big = bytes(range(256)) * 200  # 51,200 bytes: one datagram, whole
        assert exchange(sa, sb, big) == big
        local, remote = a.selected_pair
        assert local.type == dna.CandidateType.LOCAL and remote.port > 0


def test_a_burst_arrives_whole():
    a, b, sa, sb = connected_pair()
    with a, b, sa, sb:
        for i in range(2000):
            sa.send(b"%06d" % i + b"." * 994)
        sb.settimeout(1)
        got = []
        try:
            while len(got) < 2000:
                got.append(sb.recv(2000))
        except socket.timeout:
            pass
        assert len(got) == 2000 and all(len(d) == 1000 for d in got)


def test_candidates_and_credentials():
    with dna.NatTraversal() as agent:
        candidates = agent.gather()
        assert candidates and all(c.type == dna.CandidateType.LOCAL and c.port > 0 for c in candidates)
        assert not any(c.ip.lower().startswith("fe80:") for c in candidates)  # no scope in the seed's struct
        assert agent.gather() == candidates  # gathering happens once
        ufrag, pwd = agent.local_credentials
        assert len(ufrag) >= 4 and len(pwd) >= 22


def test_unreachable_peer_fails_within_the_timeout():
    with dna.NatTraversal() as a:
        a.set_controlling(True)
        a.set_timeout(1000)
        a.gather()
        a.set_remote_credentials("abcd", "0123456789012345678901")
        a.add_remote_candidate(("192.0.2.1", 9, dna.CandidateType.LOCAL))  # TEST-NET: nobody there
        start = time.monotonic()
        with pytest.raises(dna.DNAError) as error:
            a.establish()
        assert error.value.code == dna.ErrorCode.UNREACHABLE
        assert time.monotonic() - start < 2.5


def test_bad_arguments():
    with pytest.raises(dna.DNAError) as error:
        dna.NatTraversal("no-port")
    assert error.value.code == dna.ErrorCode.INVALID_ARGUMENT
    with dna.NatTraversal() as agent:
        with pytest.raises(dna.DNAError):
            agent.establish()  # nothing gathered
        for bad in (("192.0.2.1", 0, 0), ("not an ip", 1, 0)):
            with pytest.raises(dna.DNAError) as error:
                agent.add_remote_candidate(bad)
            assert error.value.code == dna.ErrorCode.INVALID_ARGUMENT
        with pytest.raises(dna.DNAError):
            agent.set_remote_credentials("ab", "short")
        with pytest.raises(dna.DNAError):
            agent.set_timeout(5)
        with pytest.raises(dna.DNAError) as error:
            agent.selected_pair
        assert error.value.code == dna.ErrorCode.NOT_FOUND
        agent.gather()
        with pytest.raises(dna.DNAError):
            agent.set_turn_server("192.0.2.1:3478", "user", "password")  # after gathering
    with pytest.raises(dna.DNAError):
        agent.gather()  # closed
