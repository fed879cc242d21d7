"""Raw UDP between two hosts of the lab, through their NATs: the baseline a transport's RTT is
measured against on the same path. JSON lines on stdout, commands as JSON lines on stdin.

Both sides: -> {"event": "mapped", "local": [ip, port], "public": [ip, port]} (STUN Binding to the
lab's coturn), then wait for {"peer": [ip, port]}, the other side's public address.
    --echo: sends 3 datagrams to the peer (they open this side's NAT for the peer's, and die at
            the peer's router) -> {"event": "punched"}, then echoes every datagram from the peer
            until stdin closes
    client: sends to the peer until an answer comes -> {"event": "open", "ms"}, then for each
            command {"size": N, "count": K, "pause": S}: K round trips of N bytes, one at a time,
            S seconds apart -> {"event": "rtt", "size", "rtt_ms": [...], "lost"}; ends at EOF

The echo side must have punched before the client sends its first datagram (the controller waits
for "punched"); the client's own datagrams then pass the echo side's router as replies.
"""
import argparse
import json
import os
import socket
import sys
import threading
import time

from jsonlines import emit  # noqa: E402 (redirects fd 1 first)
import natlab  # noqa: E402


def read_command():
    line = sys.stdin.readline()
    return json.loads(line) if line.strip() else None


def echo(sock, peer):
    for _ in range(3):
        sock.sendto(b"punch", peer)
    emit(event="punched")
    sock.settimeout(None)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(65536)
            except OSError:
                return
            if source == peer and data != b"punch":
                sock.sendto(data, source)

    threading.Thread(target=serve, daemon=True).start()
    sys.stdin.read()  # until the controller closes stdin
    stop.set()


def client(sock, peer):
    started = time.monotonic()
    sock.settimeout(0.2)
    while True:
        if time.monotonic() - started > 10:
            emit(event="error", reason="no answer from the peer in 10 s")
            return
        sock.sendto(b"open", peer)
        try:
            data, source = sock.recvfrom(65536)
        except socket.timeout:
            continue
        if source == peer and data == b"open":
            break
    emit(event="open", ms=round((time.monotonic() - started) * 1000, 1))
    sock.settimeout(2.0)
    sequence = 0
    while True:
        command = read_command()
        if command is None:
            return
        rtts, lost = [], 0
        for _ in range(command["count"]):
            sequence += 1
            payload = sequence.to_bytes(8, "big") + os.urandom(max(0, command["size"] - 8))
            sent = time.monotonic()
            sock.sendto(payload, peer)
            while True:
                try:
                    data, source = sock.recvfrom(65536)
                except socket.timeout:
                    lost += 1
                    break
                if source == peer and data == payload:
                    rtts.append((time.monotonic() - sent) * 1000)
                    break  # anything else is a late answer to an earlier datagram
            time.sleep(command.get("pause", 0))
        emit(event="rtt", size=command["size"], rtt_ms=[round(r, 4) for r in rtts], lost=lost)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", args.port))
    public = natlab.stun_mapping(sock, (natlab.SERVER[0], natlab.TURN_PORT), 0.5, 10)
    if public is None:
        emit(event="error", reason="no STUN answer")
        return
    emit(event="mapped", local=list(sock.getsockname()), public=list(public))
    command = read_command()
    if command is None:
        return
    peer = tuple(command["peer"])
    (echo if args.echo else client)(sock, peer)


if __name__ == "__main__":
    main()
