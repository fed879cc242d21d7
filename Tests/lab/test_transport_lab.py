"""The transport behind real NATs: identities join the DHT through a `dnat node` on the lab's
internet, connect by name (signaling through the DHT, ICE with coturn for STUN/TURN, the handshake)
and exchange messages; with 10% loss on the routers every message still arrives, in order; offline
messages wait in the DHT. Needs root and the installed dnat (DNA_TEST_PREFIX), as test_nat_lab.py.
"""
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import pytest

import natlab
from transport_lab import DNAT, converse, events_of, peer, raw_udp_probe, transport_probe

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


def test_a_delayed_path_delays_every_datagram_and_the_transport_goes_direct_over_it():
    """The delay line on a's link (natlab's `delay`, the stand-in for netem): raw UDP between the
    two NATed hosts never comes back sooner than 2 x the delay, and a connection by name (DHT,
    ICE, handshake all through the line) goes direct, router to router, with its echoes in order.
    Only lower bounds: how much later things come is the bench's (bench/transport_lab_bench.py)."""
    delay = 20
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(DNAT), delay=delay) as lab:
        to_b = lab.count_forwarded("ra", lab.address["rb"])
        with raw_udp_probe(lab) as raw:
            udp = raw.rtt(64, 20) + raw.rtt(1024, 20)
        probe, connected = transport_probe(lab)
        with probe:
            before = to_b()
            transport = probe.rtt(64, 20) + probe.rtt(1024, 20)
            direct = to_b() - before
    assert len(udp) == 40 and min(udp) >= 2 * delay, udp
    assert len(transport) == 40 and min(transport) >= 2 * delay, transport
    assert direct >= 40, f"{direct} datagrams from a's router to b's during 40 echoes: not direct"
    print(f"delay {delay} ms each way on a's link: raw UDP p50 {sorted(udp)[20]:.2f} ms, transport p50 "
          f"{sorted(transport)[20]:.2f} ms, connected in {connected['ms']} ms")


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


EXCHANGE_CELLS = [("port-restricted", "port-restricted"), ("port-restricted", "symmetric"), ("symmetric", "symmetric")]


@pytest.mark.parametrize("a,b", EXCHANGE_CELLS, ids=[f"{a}:{b}" for a, b in EXCHANGE_CELLS])
def test_ten_thousand_messages_each_way_through_ten_percent_loss(a, b):
    """Both sides send 10,000 messages at once (0 B to 1,499 B on 3 streams, five of 1 MiB) through
    routers that drop 10% of datagrams: every one arrives, in order per stream, exactly once."""
    count = 10_000
    with natlab.Lab(a=a, b=b, node=str(DNAT), loss=10) as lab:
        for attempt in range(2):
            bob = peer(lab, "b", "--as", "bob", "--listen", "--exchange", str(count))
            assert events_of(bob, {"ready"})[-1]["event"] == "ready"
            alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--exchange", str(count))
            events = events_of(alice, {"exchanged", "error"})
            if events[-1]["event"] == "exchanged":
                break
            # As above: under loss ICE can end connected on one side only; one more conversation.
            print(f"10% loss, {a}:{b}: connecting failed: {events}")
            alice.wait(60)
            bob.stdin.close()
            bob.wait(30)
        bobs = events_of(bob, {"exchanged"})
        alice.wait(120)
        bob.stdin.close()
        bob.wait(30)
    for side, event in (("alice", events[-1]), ("bob", bobs[-1])):
        assert event["event"] == "exchanged", (side, event)
        assert event["received"] == count and event["in_order"] and event["duplicates"] == 0, (side, event)
        assert not event["failure"], (side, event)
        print(f"10% loss {a}:{b}: {side} received {count} messages, {event['bytes'] / 1e6:.1f} MB "
              f"in {event['seconds']} s ({event['bytes'] / 1e6 / event['seconds']:.2f} MB/s)")


def test_a_killed_peer_gets_what_it_never_acknowledged_after_its_restart():
    """alice sends bob a message every 250 ms; bob's process is killed (SIGKILL) after 12 and starts
    again: what bob's transport never acknowledged, and what alice sends once the connection is
    dead, reaches his inbox; nothing is lost."""
    count = 30
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(DNAT)) as lab:
        carol = peer(lab, "srv", "--as", "carol", "--listen")  # holds inboxes (the bootstrap node keeps none)
        assert events_of(carol, {"ready"})[-1]["event"] == "ready"
        bob = peer(lab, "b", "--as", "bob", "--listen", "--record")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--trickle", str(count), "--interval", "0.25")
        assert events_of(alice, {"connected", "error"})[-1]["event"] == "connected"
        live = []
        while not live or live[-1] < 11:
            live.append(events_of(bob, {"got"})[-1]["index"])
        killed = time.monotonic()
        bob.kill()
        bob.wait(10)
        live += [event["index"] for event in events_of(bob, set()) if event["event"] == "got"]  # printed before it died
        time.sleep(1.5)  # entries carry last_seen in seconds: the new one must be newer
        bob = peer(lab, "b", "--as", "bob", "--collect")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        ended = events_of(alice, {"sent"})
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in bob.stdout], daemon=True).start()
        offline = []
        deadline = time.monotonic() + 90
        while len(set(live) | set(offline)) < count and time.monotonic() < deadline:
            try:
                event = json.loads(lines.get(timeout=1.0))
            except queue.Empty:
                continue
            assert event["event"] == "offline" and event["sender"] == "alice", event
            offline.append(int(event["text"].split()[-1]))
        took = time.monotonic() - killed
        bob.stdin.close()
        bob.wait(30)
        alice.stdin.close()
        alice.wait(30)
        carol.stdin.close()
        carol.wait(30)
    print(f"killed after {len(live)} live messages; {ended[-1]}; offline after the restart: {offline} "
          f"(all there {took:.1f} s after the kill)")
    assert live == list(range(len(live))), live
    assert len(offline) == len(set(offline)), offline  # each once from the inbox
    assert sorted(set(live) | set(offline)) == list(range(count)), (live, offline)
    # At the boundary at least once: only a message sent just before the kill may come both ways.
    assert all(index >= live[-1] - 1 for index in set(live) & set(offline)), (live, offline)


def blackouts(lab, router, stop, on, off, log):
    """Until `stop` is set: `off` seconds of normal forwarding, then `on` seconds in which `router`
    forwards nothing (every path through it breaks). Appends each blackout's start to `log`."""
    ns = lab.ns(router)
    natlab.sh("nft", "-f", "-", ns=ns, input="table ip blackout { chain forward { type filter hook forward priority -10; "
                                           "policy accept; }; }")
    while not stop.wait(off):
        natlab.sh("nft", "add", "rule", "ip", "blackout", "forward", "drop", ns=ns)
        log.append(time.monotonic())
        stop.wait(on)
        natlab.sh("nft", "flush", "chain", "ip", "blackout", "forward", ns=ns)


def tail(path, lines=25):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def test_connects_with_path_breaks_at_thirty_percent_loss_crash_nothing():
    """Issue 19: four client processes behind a port-restricted NAT that drops 30% of datagrams each
    way (but the bootstrap node's) connect to bob (public) one connection after another (20 connects; DNA_CRASH_ROUNDS per
    client, 5 here, 25 in `make soak`), each trickling messages that bob echoes for 14 s, while the
    router forwards nothing for 6 s every 14 s: paths break and are replaced (§7.7), set-ups fail
    and are retried, agents are closed while the TURN server cannot answer. No process may crash:
    every one exits 0. (Before: libnice aborted in udp-bsd.c, `sock->priv != NULL`, when an agent's
    stream was removed before its TURN deallocation was answered.)"""
    clients, rounds = 4, int(os.environ.get("DNA_CRASH_ROUNDS", "5"))
    # The DHT's datagrams (ports 4567-4599: the bootstrap node's and the peers' DHT nodes) are
    # spared: the DHT does not get through 30% loss yet (issue 19, part 1: an entry's 5 datagrams
    # must all arrive in one try; announces were "stored on no node" and 15 of 19 and 20 of 20
    # connects ended PEER_OFFLINE). Everything else, ICE, TURN and the connections, loses 30%.
    dht = f"{natlab.NODE_PORT}-{natlab.NODE_PORT + 32}"
    with natlab.Lab(a="port-restricted", b="public", loss=int(os.environ.get("DNA_CRASH_LOSS", "30")), node=str(DNAT),
                    loss_only=f"udp dport != {dht} udp sport != {dht}") as lab:
        logs = {name: os.path.join(lab.dir, f"{name}.log") for name in ["bob"] + [f"alice{i}" for i in range(clients)]}
        bob = peer(lab, "b", "--as", "bob", "--listen", "--port", str(natlab.NODE_PORT + 1), stderr=open(logs["bob"], "w"))
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        stop, started = threading.Event(), []
        breaker = threading.Thread(target=blackouts, args=(lab, "ra", stop, 6.0, 8.0, started), daemon=True)
        breaker.start()
        alices = [peer(lab, "a", "--as", f"alice{i}", "--to", "bob", "--rounds", str(rounds), "--seconds", "14",
                       "--interval", "0.1", "--wait", "75", "--port", str(natlab.NODE_PORT + 2 + i), home=f"alice{i}", stderr=open(logs[f"alice{i}"], "w"))
                  for i in range(clients)]
        events = {}
        for i, alice in enumerate(alices):
            events[i] = [json.loads(line) for line in alice.stdout]  # until it exits
        codes = {f"alice{i}": alice.wait(60) for i, alice in enumerate(alices)}
        stop.set()
        breaker.join(30)
        bob.stdin.close()
        codes["bob"] = bob.wait(60)
        crashed = {name: code for name, code in codes.items() if code != 0}
        report = {name: tail(logs[name]) for name in crashed}
        if os.environ.get("DNA_LAB_LOGS"):  # keep the processes' logs (the lab's directory goes)
            os.makedirs(os.environ["DNA_LAB_LOGS"], exist_ok=True)
            for path in list(logs.values()) + [os.path.join(lab.dir, "node.log")]:
                shutil.copy(path, os.environ["DNA_LAB_LOGS"])
    played = [e for i in events for e in events[i] if e["event"] == "round"]
    connected = [e for e in played if e["connected"]]
    print(f"30% loss, {len(started)} blackouts: {len(connected)} of {len(played)} connects succeeded "
          f"(failures: {[(e['error'], e['ms']) for e in played if not e['connected']]}), "
          f"{sum(e['resumes'] for e in connected)} paths replaced, "
          f"{sum(e['echoed'] for e in connected)} of {sum(e['sent'] for e in connected)} messages echoed; exit codes {codes}")
    assert not crashed, f"processes that did not exit 0: {crashed}; their last log lines: {report}"
    assert all(events[i] and events[i][-1]["event"] == "finished" for i in events), events
    assert len(played) == clients * rounds, played
    assert all(e["in_order"] for e in connected), [e for e in connected if not e["in_order"]]
    # The test is about paths that break: they did, and were replaced.
    assert sum(e["resumes"] for e in connected) >= 2, connected


def rebind(lab, router, host, ports):
    """NAT rebinding at `router`: its mappings are forgotten (conntrack entries of `host`'s UDP flows
    deleted) and new ones come from the port range `ports`, so that every flow of `host` continues
    from a new public port, which port-restricted peers' routers drop until they send to it."""
    ns = lab.ns(router)
    natlab.sh("nft", "flush", "chain", "ip", "nat", "postrouting", ns=ns)
    natlab.sh("nft", "add", "rule", "ip", "nat", "postrouting", "oifname", "wan", "meta", "l4proto", "udp", "masquerade", "to",
              f":{ports}", ns=ns)
    natlab.sh("nft", "add", "rule", "ip", "nat", "postrouting", "oifname", "wan", "masquerade", ns=ns)
    natlab.sh("conntrack", "-D", "-p", "udp", "--orig-src", host, ns=ns, check=False)  # exit 1: nothing deleted


def test_a_nat_rebinding_stalls_a_conversation_for_under_one_and_a_half_seconds():
    """Issue 19, part 4: alice (port-restricted) sends bob (port-restricted) a message every 50 ms,
    each echoed; 3 s in, her router rebinds (new public ports for all her flows), so bob's router
    drops everything she sends until a new path is made. Every message still comes back, in order,
    and the longest time between two echoes (the stall) must stay under the issue's 1.5 s. (The issue
    measured 4.6 s: 3.8 s before the loss was noticed, then a DHT lookup. With faster loss detection,
    2.0 s: the offer through the known holders was refused for alice's token, made for her old port,
    and a lookup followed 1 s later. Now 1.0 s: about 0.95 s to notice, 0.05 s for the new path.)"""
    with natlab.Lab(a="port-restricted", b="port-restricted", node=str(DNAT)) as lab:
        bob = peer(lab, "b", "--as", "bob", "--listen")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        log = os.path.join(lab.dir, "alice.log")
        alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--rounds", "1", "--seconds", "10",
                     "--interval", "0.05", "--wait", "20", stderr=open(log, "w"))
        first = json.loads(alice.stdout.readline())
        assert first["event"] == "connected", first
        time.sleep(3)
        rebind(lab, "ra", lab.address["a"], "20000-29999")
        events = [first] + [json.loads(line) for line in alice.stdout]
        alice.wait(60)
        bob.stdin.close()
        bob.wait(30)
        paths = [line.strip() for line in open(log, errors="replace") if "path" in line]
    played = [e for e in events if e["event"] == "round"]
    assert len(played) == 1 and played[0]["connected"], (events, paths)
    round_ = played[0]
    print(f"NAT rebinding: longest stall {round_['longest_gap_ms']} ms, {round_['resumes']} paths replaced, "
          f"{round_['echoed']} of {round_['sent']} echoed; alice's log of paths: {paths}")
    assert round_["echoed"] == round_["sent"] and round_["in_order"], round_
    assert round_["resumes"] >= 1, f"the rebinding did not break the path: {round_}"
    assert round_["longest_gap_ms"] < 1500, f"the conversation stalled {round_['longest_gap_ms']} ms: {round_}"


LOOPBACK_ONLY = r'''
import sys
import dnatransport as dna
home = sys.argv[1]
boot = dna.DHT(data_dir=home + "/boot", bind_ip="127.0.0.1")
nodes = [f"127.0.0.1:{boot.port}"]
alice = dna.Transport("alice", data_dir=home + "/alice", bootstrap=nodes)
bob = dna.Transport("bob", data_dir=home + "/bob", bootstrap=nodes)
conn = alice.connect("bob")
incoming, peer = bob.accept(timeout_ms=10000)
for i in range(50):
    alice.send(conn, bytes([i]) * 3000)
got = [bob.receive(incoming, timeout_ms=10000) for _ in range(50)]
assert got == [bytes([i]) * 3000 for i in range(50)], "messages differ"
bob.send(incoming, b"back")
assert alice.receive(conn, timeout_ms=10000) == b"back"
print("exchanged", peer, flush=True)
alice.disconnect(conn)
'''


def test_two_peers_on_a_host_with_only_loopback(tmp_path):
    """A network namespace with only `lo` up, as in many CI containers: a DHT node and two identities
    (not bound to an address) connect over loopback and exchange messages. Before, libnice gathered no
    candidate there and every transport_connect failed with DNA_ERR_IO (issue 19, part 5)."""
    command = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1" "$2"',
               sys.executable, LOOPBACK_ONLY, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "exchanged alice" in done.stdout, (done.stdout, done.stderr[-3000:])


def test_a_relayed_connection_holds_with_coturns_default_lifetimes():
    """symmetric:symmetric gives a relayed path (coturn's defaults: allocations of 600 s, refreshed
    by libnice before they end; permissions of 300 s, renewed every 240 s): a round trip every second
    for DNA_RELAY_SECONDS (30 in make test; make soak holds it 900 s, past the allocation's refresh
    and three permission renewals), every one echoed, in order."""
    seconds = int(os.environ.get("DNA_RELAY_SECONDS", "30"))
    with natlab.Lab(a="symmetric", b="symmetric", node=str(DNAT)) as lab:
        bob = peer(lab, "b", "--as", "bob", "--listen")
        assert events_of(bob, {"ready"})[-1]["event"] == "ready"
        # Half the messages are round trips a second apart (then a burst): 2 x seconds messages.
        alice = peer(lab, "a", "--as", "alice", "--to", "bob", "--messages", str(2 * seconds), "--pause", "1")
        events = events_of(alice, {"done", "error"})
        alice.wait(60)
        bob.stdin.close()
        bob.wait(30)
    assert [e["event"] for e in events] == ["connected", "done"], events
    assert events[1]["echoed"] == 2 * seconds and events[1]["in_order"], events
    print(f"relayed for {seconds} s: RTT p50 {events[1]['rtt_ms']} ms")
