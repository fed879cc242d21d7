"""One transport peer for the lab: an identity that joins the DHT through the lab's `dnat node` and
either waits for a connection and echoes (--listen) or connects by name and measures. Prints one
JSON line per event on stdout.

    --listen:  -> {"event": "ready"} ... echoes every message of every connection until stdin closes
    --to NAME: -> {"event": "connected", "ms"} -> {"event": "done", "echoed", "in_order", "rtt_ms"}
               or {"event": "error", "code", "name", "ms"}
               --offline: stores --messages messages for NAME in the DHT instead -> {"event": "stored"}
    --inbox:   -> {"event": "inbox", "messages": [[sender, text], ...]} (waits for --messages of them)

    --exchange N (with --listen or --to): both sides send N messages of exchange_message() at once on
               streams 0-2 and check the other's, stream by stream -> {"event": "exchanged", "received",
               "in_order", "duplicates", "bytes", "seconds"}
    --listen --record: -> {"event": "got", "index"} for each message as it is read (no echo)
    --to NAME --trickle N --interval S: sends message "trickle <i>" every S seconds; once the
               connection ends, the rest with send_offline -> {"event": "sent", "live": k} (k sent live)
    --bulk N (with --listen or --to): the connecting side sends N messages of 1 MiB on stream 0; the
               listener reads them into one buffer and answers "done" -> {"event": "bulk", "messages",
               "bytes", "seconds", "cpu_seconds"} at the sender (from the first send to the answer), and
               {"event": "received", "cpu_seconds"} at the listener
    --collect: -> {"event": "offline", "sender", "text"} for each inbox message until stdin closes
    --to NAME --probe: after "connected", for each command {"size": N, "count": K, "pause": S} on
               stdin: K round trips of an N-byte message echoed by NAME (--listen), one at a time, S
               seconds apart -> {"event": "rtt", "size", "rtt_ms": [...]}; disconnects at EOF
               (udp_peer.py does the same over raw UDP)
    --to NAME --rounds N --seconds S --interval I: N times: connect, send a numbered message every I
               seconds for S seconds, each echoed by NAME (--listen), wait until every one came back
               (up to --wait seconds), disconnect -> {"event": "round", "round", "connected", "error",
               "ms", "sent", "echoed", "in_order", "resumes", "longest_gap_ms" (the longest time between two
               echoes)} per round, after {"event": "connected", "round", "ms"} when its connect returned,
               then {"event": "finished"};
               the process exits 0 unless something raised (the crash test counts on it)
"""
import argparse
import json
import os
import select
import sys
import threading
import time

from jsonlines import emit  # noqa: E402 (redirects fd 1 first)


FIN_STREAM = 99


def exchange_message(side, index):
    """Message `index` of `side` ("a" or "b") and its stream: mostly small (0 to 1,499 bytes, some
    empty), and one of 1 MiB every 2,000 (indexes 1000, 3000, ...)."""
    if index % 2000 == 1000:
        size = 1 << 20
    elif index % 97 == 0:
        size = 0
    else:
        size = (index * 7919) % 1500
    unit = side.encode() + index.to_bytes(4, "big")
    return index % 3, (unit * (size // len(unit) + 1))[:size]


def exchange(transport, dna, conn, side, count):
    """Sends `count` messages of `side` while reading the other side's `count`, then a FIN on its own
    stream once everything arrived; ends when the other's FIN came. Returns the 'exchanged' event."""
    other = "b" if side == "a" else "a"
    expected = {}
    for index in range(count):
        stream, data = exchange_message(other, index)
        expected.setdefault(stream, []).append(data)
    failure = []

    def sender():
        for index in range(count):
            stream, data = exchange_message(side, index)
            while True:
                try:
                    transport.send(conn, data, stream=stream)
                    break
                except dna.DNAError as error:
                    if error.code != dna.ErrorCode.TIMEOUT:  # the send buffer full: try again
                        failure.append(f"send {index}: {error}")
                        return

    started = time.monotonic()
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    position = {stream: 0 for stream in expected}
    received, in_order, duplicates, total, fin = 0, True, 0, 0, False
    # The FIN travels on a stream of its own, so it may overtake the last messages of the others.
    while not fin or received < count:
        try:
            stream, data = transport.receive_stream(conn, timeout_ms=120000)
        except dna.DNAError as error:
            failure.append(f"receive after {received}: {error}")
            break
        if stream == FIN_STREAM:
            fin = True
            continue
        queue = expected.get(stream, [])
        at = position.get(stream, 0)
        if at < len(queue) and queue[at] == data:
            position[stream] = at + 1
        elif data in queue[:at]:
            duplicates += 1
        else:
            in_order = False
        received += 1
        total += len(data)
        if received == count:
            transport.send(conn, b"fin", stream=FIN_STREAM)
    thread.join()
    return dict(event="exchanged", received=received, in_order=in_order and all(
        position[s] == len(q) for s, q in expected.items()), duplicates=duplicates, bytes=total,
        seconds=round(time.monotonic() - started, 2), failure=failure)


def rounds(transport, dna, args, index, resumes):
    """One round of --rounds: connect, trickle numbered messages for --seconds while reading the
    echoes, wait for the rest, disconnect. Returns the 'round' event."""
    started = time.monotonic()
    before = resumes[0]
    event = dict(event="round", round=index, connected=False, error=None, ms=None, sent=0, echoed=0, in_order=True)
    try:
        conn = transport.connect(args.to)
    except dna.DNAError as error:
        event.update(error=dna.ErrorCode(error.code).name, ms=round((time.monotonic() - started) * 1000, 1))
        return event
    event.update(connected=True, ms=round((time.monotonic() - started) * 1000, 1))
    emit(event="connected", round=index, ms=event["ms"])
    echoed, arrivals = [], []

    def reader():
        deadline = None
        while True:
            if stop_sending.is_set():
                if len(echoed) >= event["sent"]:
                    return
                deadline = deadline or time.monotonic() + args.wait
                if time.monotonic() > deadline:
                    return
            try:
                echoed.append(int(transport.receive(conn, timeout_ms=250).split()[-1]))
                arrivals.append(time.monotonic())
            except dna.DNAError as error:
                if error.code != dna.ErrorCode.TIMEOUT:
                    event["error"] = f"receive: {dna.ErrorCode(error.code).name}"
                    return
    stop_sending = threading.Event()
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            transport.send(conn, f"round {index} message {event['sent']}".encode())
            event["sent"] += 1
            time.sleep(args.interval)
    except dna.DNAError as error:
        event["error"] = f"send: {dna.ErrorCode(error.code).name}"
    stop_sending.set()
    thread.join(args.wait + 10)
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    event.update(echoed=len(echoed), in_order=echoed == list(range(len(echoed))), resumes=resumes[0] - before,
                 longest_gap_ms=round(max(gaps, default=0) * 1000, 1))
    try:
        transport.disconnect(conn)
    except dna.DNAError as error:
        event["error"] = event["error"] or f"disconnect: {dna.ErrorCode(error.code).name}"
    return event


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
    parser.add_argument("--exchange", type=int, default=0)
    parser.add_argument("--bulk", type=int, default=0)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--trickle", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--port", type=int, default=0, help="the DHT node's UDP port (0: any)")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=90.0)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()

    import dnatransport as dna
    resumes = [0]  # connections moved to a new path (§7.7), as the library's log says

    def log(level, message):
        if "moved to a new path" in message:
            resumes[0] += 1
        print(f"{time.monotonic():.3f} {args.identity}: {message}", file=sys.stderr, flush=True)

    # The library's log on stderr, stamped (pytest shows it when a test fails).
    dna.set_log_handler(log, dna.LogLevel.INFO)
    transport = dna.Transport(args.identity, data_dir=args.data_dir, bootstrap=[args.bootstrap], turn_server=args.turn,
                              turn_username=args.turn_user, turn_password=args.turn_password,
                              connect_timeout_ms=20000, port=args.port)
    if args.listen:
        emit(event="ready")

        def echo(conn):
            if args.exchange:
                emit(**exchange(transport, dna, conn, "b", args.exchange))
                return
            if args.bulk:
                buffer = bytearray(1 << 20)
                cpu = time.process_time()
                try:
                    for _ in range(args.bulk):
                        transport.receive_into(conn, buffer, timeout_ms=120000)
                    transport.send(conn, b"done")
                except dna.DNAError:
                    return  # a connection that broke off reports nothing
                emit(event="received", messages=args.bulk, cpu_seconds=round(time.process_time() - cpu, 3))
                return
            try:
                while True:
                    data = transport.receive(conn)
                    if args.record:
                        emit(event="got", index=int(data.split()[-1]))
                    else:
                        transport.send(conn, data)
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
    if args.collect:
        emit(event="ready")
        while True:
            if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.read(1):
                break  # the test closed stdin
            try:
                sender, data, _ = transport.receive_offline(timeout_ms=200)
            except dna.DNAError:
                continue
            emit(event="offline", sender=sender, text=data.decode())
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
    if args.rounds:
        for index in range(args.rounds):
            emit(**rounds(transport, dna, args, index, resumes))
        emit(event="finished")
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
    if args.exchange:
        emit(**exchange(transport, dna, conn, "a", args.exchange))
        transport.disconnect(conn)
        transport.close()
        return
    if args.bulk:
        message = os.urandom(1 << 20)
        started, cpu = time.monotonic(), time.process_time()
        for _ in range(args.bulk):
            transport.send(conn, message)  # waits while the send buffer is full
        answer = transport.receive(conn, timeout_ms=120000)
        emit(event="bulk", messages=args.bulk, bytes=args.bulk << 20, answer=answer.decode(),
             seconds=round(time.monotonic() - started, 3), cpu_seconds=round(time.process_time() - cpu, 3))
        transport.disconnect(conn)
        transport.close()
        return
    if args.probe:
        sequence = 0
        for line in sys.stdin:
            if not line.strip():
                continue
            command, rtts = json.loads(line), []
            for _ in range(command["count"]):
                sequence += 1
                payload = sequence.to_bytes(8, "big") + os.urandom(max(0, command["size"] - 8))
                sent = time.monotonic()
                transport.send(conn, payload)
                reply = transport.receive(conn, timeout_ms=30000)
                rtts.append((time.monotonic() - sent) * 1000)
                if reply != payload:
                    emit(event="error", name="echo differs", ms=None)
                    break
                time.sleep(command.get("pause", 0))
            emit(event="rtt", size=command["size"], rtt_ms=[round(r, 4) for r in rtts])
        transport.disconnect(conn)
        transport.close()
        return
    if args.trickle:
        live = args.trickle
        for i in range(args.trickle):
            if live == args.trickle:
                try:
                    transport.send(conn, f"trickle {i}".encode())
                    time.sleep(args.interval)
                    continue
                except dna.DNAError as error:
                    live = i
                    emit(event="ended", index=i, name=dna.ErrorCode(error.code).name)
            transport.send_offline(args.to, f"trickle {i}".encode())
        emit(event="sent", live=live)
        sys.stdin.read()  # until the test closes stdin: the transport may still be storing
        transport.close()
        return
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
    emit(event="done", echoed=echoed, in_order=in_order, rtt_ms=round(rtts[len(rtts) // 2], 3) if rtts else None,
         rtt_p99_ms=round(rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)], 3) if rtts else None)
    transport.disconnect(conn)
    transport.close()


if __name__ == "__main__":
    main()
