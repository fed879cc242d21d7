"""The NAT benchmark's baselines, behind ice_peer.py's JSON-lines protocol:

- plain-libnice: bench/nice_plain.c (bare libnice, the plain way: gather everything, check, wait
  for READY), path in $NICE_PLAIN;
- aioice: an independent RFC 8445 implementation in Python (PyPI).

Both hand their datagrams to a socket pair so that ice_peer.exercise measures them as it measures
the library's fd.
"""
import asyncio
import json
import os
import socket
import subprocess
import threading
import time

TYPES = {"host": 0, "srflx": 1, "prflx": 1, "reflexive": 1, "relay": 2}


def run(args, emit, read, exercise):
    {"plain-libnice": plain_libnice, "aioice": aioice_peer}[args.impl](args, emit, read, exercise)


def finish(sock, start, args, emit, read, exercise, established):
    emit(**established)
    first = [None]
    stop, thread, rtts, received = exercise(sock, start, args.pings, first)
    emit(event="data", replies=len(rtts), rtt_ms=rtts, first_datagram_ms=first[0], received=received[0],
         local=established["local"], remote=established["remote"])
    read()
    stop.set()
    thread.join()


def plain_libnice(args, emit, read, exercise):
    start = time.monotonic()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    command = [os.environ.get("NICE_PLAIN", "nice_plain"), str(theirs.fileno())]
    if args.stun:
        command += ["--stun", args.stun]
    if args.turn:
        command += ["--turn", args.turn, args.turn_user, args.turn_password]
    if args.controlling:
        command.append("--controlling")
    helper = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                              pass_fds=[theirs.fileno()])
    theirs.close()
    line = helper.stdout.readline().split()
    ufrag, pwd = line[1], line[2]
    candidates = []
    while True:
        line = helper.stdout.readline().rstrip("\n")
        if line == "END" or not line:
            break
        candidates.append(line[5:])
    emit(event="local", ufrag=ufrag, pwd=pwd, candidates=candidates, gather_ms=(time.monotonic() - start) * 1000)
    remote = json.loads(read())
    helper.stdin.write(f"REMOTE {remote['ufrag']} {remote['pwd']}\n")
    for sdp in remote["candidates"]:
        helper.stdin.write(f"CAND {sdp}\n")
    helper.stdin.write("END\n")
    helper.stdin.flush()
    checks = time.monotonic()
    outcome = helper.stdout.readline().split()
    if not outcome or outcome[0] != "READY":
        emit(event="error", code=-10, name="UNREACHABLE", ms=(time.monotonic() - checks) * 1000)
        read()
        helper.kill()
        return
    finish(mine, start, args, emit, read, exercise,
           dict(event="established", ms=(time.monotonic() - start) * 1000, checks_ms=(time.monotonic() - checks) * 1000,
                local=["", 0, TYPES[outcome[1]]], remote=["", 0, TYPES[outcome[2]]]))
    helper.stdin.close()
    helper.wait(10)


def aioice_peer(args, emit, read, exercise):
    import aioice

    start = time.monotonic()
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def call(coroutine, timeout=None):
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    def split(address):
        host, port = address.rsplit(":", 1)
        return host, int(port)

    options = {}
    if args.stun:
        options["stun_server"] = split(args.stun)
    if args.turn:
        options.update(turn_server=split(args.turn), turn_username=args.turn_user, turn_password=args.turn_password,
                       turn_transport=os.environ.get("AIOICE_TURN_TRANSPORT", "udp"))

    async def make():
        return aioice.Connection(ice_controlling=args.controlling, **options)

    connection = call(make())
    call(connection.gather_candidates())
    emit(event="local", ufrag=connection.local_username, pwd=connection.local_password,
         candidates=[c.to_sdp() for c in connection.local_candidates], gather_ms=(time.monotonic() - start) * 1000)
    remote = json.loads(read())
    connection.remote_username = remote["ufrag"]
    connection.remote_password = remote["pwd"]

    async def add_all():
        for sdp in remote["candidates"]:
            await connection.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
        await connection.add_remote_candidate(None)

    call(add_all())
    checks = time.monotonic()
    try:
        call(asyncio.wait_for(connection.connect(), args.timeout / 1000))
    except Exception:
        emit(event="error", code=-10, name="UNREACHABLE", ms=(time.monotonic() - checks) * 1000)
        read()
        return
    pair = connection._nominated.get(1)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)

    async def pump_in():
        while True:
            data = await connection.recv()
            try:
                theirs.send(data)
            except BlockingIOError:
                pass

    def readable():
        while True:
            try:
                data = theirs.recv(65536)
            except BlockingIOError:
                return
            asyncio.ensure_future(connection.send(data))

    async def pump_out():
        loop.add_reader(theirs.fileno(), readable)

    asyncio.run_coroutine_threadsafe(pump_in(), loop)
    call(pump_out())
    kind = lambda c: TYPES.get(c.type, 1)
    finish(mine, start, args, emit, read, exercise,
           dict(event="established", ms=(time.monotonic() - start) * 1000, checks_ms=(time.monotonic() - checks) * 1000,
                local=[pair.local_candidate.host, pair.local_candidate.port, kind(pair.local_candidate)],
                remote=[pair.remote_candidate.host, pair.remote_candidate.port, kind(pair.remote_candidate)]))
