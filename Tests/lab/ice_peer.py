"""One ICE peer for the lab, driven over stdin/stdout with JSON lines (the test is the signaling channel).

    -> {"event": "local", "ufrag", "pwd", "candidates": [[ip, port, type]...], "gather_ms"}
    <- {"ufrag", "pwd", "candidates"}
    -> {"event": "established", "ms", "local", "remote"}  or  {"event": "error", "code", "name", "ms"}
    -> {"event": "data", "replies", "rtt_ms": [...], "first_datagram_ms", "received"}
    <- "bye"  (keeps echoing until then)

--impl dnatransport (default) uses the library's nat_* API; --impl aioice and --impl plain-libnice
are the benchmark's baselines (see bench/nat_bench.py).
"""
import argparse
import json
import os
import socket
import sys
import threading
import time


from jsonlines import emit  # noqa: E402 (redirects fd 1 first)


def read():
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("signaling closed")
    return line.strip()


def exercise(sock, start, pings, first):
    """Echoes the peer's pings and sends ours: data flows both ways through the fd."""
    lock = threading.Lock()
    replies = {}
    received = [0]
    stop = threading.Event()

    def receiver():
        sock.settimeout(0.05)
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with lock:
                received[0] += 1
                if first[0] is None:
                    first[0] = (time.monotonic() - start) * 1000
            if data.startswith(b"P"):
                try:
                    sock.send(b"E" + data[1:])
                except OSError:
                    pass
            elif data.startswith(b"E"):
                with lock:
                    replies.setdefault(int(data[1:9]), time.monotonic())

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    rtts = []
    for index in range(pings):
        for _attempt in range(20):
            sent = time.monotonic()
            try:
                sock.send(b"P%08d" % index + b"." * 56)
            except OSError:
                break
            deadline = sent + 0.25
            while time.monotonic() < deadline:
                with lock:
                    got = replies.get(index)
                if got:
                    break
                time.sleep(0.0002)
            if got:
                rtts.append((got - sent) * 1000)
                break
    return stop, thread, rtts, received


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stun")
    parser.add_argument("--turn")
    parser.add_argument("--turn-user", default="dna")
    parser.add_argument("--turn-password", default="lab-secret")
    parser.add_argument("--controlling", action="store_true")
    parser.add_argument("--timeout", type=int, default=10000)
    parser.add_argument("--pings", type=int, default=20)
    parser.add_argument("--impl", default="dnatransport")
    args = parser.parse_args()

    if args.impl != "dnatransport":
        import nat_baselines
        nat_baselines.run(args, emit, read, exercise)
        return

    import dnatransport as dna
    start = time.monotonic()
    agent = dna.NatTraversal(args.stun)
    if args.turn:
        agent.set_turn_server(args.turn, args.turn_user, args.turn_password)
    agent.set_controlling(args.controlling)
    agent.set_timeout(args.timeout)
    candidates = agent.gather()
    ufrag, pwd = agent.local_credentials
    emit(event="local", ufrag=ufrag, pwd=pwd, candidates=[[c.ip, c.port, int(c.type)] for c in candidates],
         gather_ms=(time.monotonic() - start) * 1000)
    remote = json.loads(read())
    agent.set_remote_credentials(remote["ufrag"], remote["pwd"])
    for ip, port, kind in remote["candidates"]:
        agent.add_remote_candidate((ip, port, dna.CandidateType(kind)))
    checks = time.monotonic()
    try:
        sock = agent.establish()
    except dna.DNAError as error:
        emit(event="error", code=int(error.code), name=getattr(error.code, "name", str(error.code)),
             ms=(time.monotonic() - checks) * 1000)
        read()
        agent.close()
        return
    local, remote_candidate = agent.selected_pair
    emit(event="established", ms=(time.monotonic() - start) * 1000, checks_ms=(time.monotonic() - checks) * 1000,
         local=[local.ip, local.port, int(local.type)], remote=[remote_candidate.ip, remote_candidate.port, int(remote_candidate.type)])
    first = [None]
    stop, thread, rtts, received = exercise(sock, start, args.pings, first)
    local, remote_candidate = agent.selected_pair
    emit(event="data", replies=len(rtts), rtt_ms=rtts, first_datagram_ms=first[0], received=received[0],
         local=[local.ip, local.port, int(local.type)], remote=[remote_candidate.ip, remote_candidate.port, int(remote_candidate.type)])
    read()
    stop.set()
    thread.join()
    sock.close()
    agent.close()


if __name__ == "__main__":
    main()
