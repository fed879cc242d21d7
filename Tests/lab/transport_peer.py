"""One transport peer for the lab: an identity that joins the DHT through the lab's `dnat node` and
either waits for a connection and echoes (--listen) or connects by name and measures. Prints one
JSON line per event on stdout.

    --listen:  -> {"event": "ready"} ... echoes every message of every connection until stdin closes
    --to NAME: -> {"event": "connected", "ms"} -> {"event": "done", "echoed", "in_order", "rtt_ms"}
               or {"event": "error", "code", "name", "ms"}
               --offline: stores --messages messages for NAME in the DHT instead -> {"event": "stored"}
    --inbox:   -> {"event": "inbox", "messages": [[sender, text], ...]} (waits for --messages of them)
"""
import argparse
import os
import sys
import threading
import time

from jsonlines import emit  # noqa: E402 (redirects fd 1 first)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--as", dest="identity", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--turn")
    parser.add_argument("--turn-user")
    parser.add_argument("--turn-password")
    parser.add_argument("--listen", action="store_true")
    parser.add_argument("--inbox", action="store_true")
    parser.add_argument("--to")
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between round trips")
    args = parser.parse_args()

    import dnatransport as dna
    # The library's log on stderr, stamped (pytest shows it when a test fails).
    dna.set_log_handler(lambda level, message: print(f"{time.monotonic():.3f} {args.identity}: {message}",
                                                     file=sys.stderr, flush=True), dna.LogLevel.INFO)
    transport = dna.Transport(args.identity, data_dir=args.data_dir, bootstrap=[args.bootstrap], turn_server=args.turn,
                              turn_username=args.turn_user, turn_password=args.turn_password,
                              connect_timeout_ms=20000)
    if args.listen:
        emit(event="ready")

        def echo(conn):
            try:
                while True:
                    transport.send(conn, transport.receive(conn))
            except dna.DNAError:
                pass

        def accept():
            while True:
                try:
                    conn, _ = transport.accept(timeout_ms=None)
                except dna.DNAError:
                    return
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        sys.stdin.read()  # until the test closes stdin
        transport.close()
        return
    if args.inbox:
        got = [transport.receive_offline(timeout_ms=30000)[:2] for _ in range(args.messages)]
        emit(event="inbox", messages=[[sender, data.decode()] for sender, data in got])
        transport.close()
        return
    if args.offline:
        for i in range(args.messages):
            transport.send_offline(args.to, f"offline {i}".encode())
        emit(event="stored")
        transport.close()
        return
    started = time.monotonic()
    try:
        conn = transport.connect(args.to)
    except dna.DNAError as error:
        emit(event="error", code=int(error.code), name=dna.ErrorCode(error.code).name,
             ms=round((time.monotonic() - started) * 1000, 1))
        transport.close()
        return
    emit(event="connected", ms=round((time.monotonic() - started) * 1000, 1))
    rtts, echoed, in_order = [], 0, True
    payload = os.urandom(max(0, args.size - 8))
    # Half the messages one at a time (round trips), half as a burst.
    half = args.messages // 2
    for i in range(half):
        sent = time.monotonic()
        transport.send(conn, i.to_bytes(8, "big") + payload)
        reply = transport.receive(conn, timeout_ms=30000)
        rtts.append((time.monotonic() - sent) * 1000)
        echoed += 1
        in_order &= reply == i.to_bytes(8, "big") + payload
        time.sleep(args.pause)
    for i in range(half, args.messages):
        transport.send(conn, i.to_bytes(8, "big") + payload)
    for i in range(half, args.messages):
        reply = transport.receive(conn, timeout_ms=30000)
        echoed += 1
        in_order &= reply == i.to_bytes(8, "big") + payload
    rtts.sort()
    emit(event="done", echoed=echoed, in_order=in_order, rtt_ms=round(rtts[len(rtts) // 2], 3) if rtts else None)
    transport.disconnect(conn)
    transport.close()


if __name__ == "__main__":
    main()
