"""A delay line in the wire (the lab's stand-in for `tc netem delay`, whose qdisc this kernel lacks):
every Ethernet frame that arrives on one of two interfaces leaves on the other `delay` milliseconds
after the kernel took it in (its SO_TIMESTAMPNS; the clock is CLOCK_REALTIME, as those stamps), in
the order it came (a FIFO per direction; every frame gets the same delay). It runs in a
namespace of its own that holds only the two interfaces (no address, no forwarding), so the link it
sits in stays one Ethernet link: addresses, ports and ARP pass unchanged, which NAT traversal needs.

    python3 delayline.py --delay-ms 10 IF_A IF_B     -> "ready" on stdout once both are bound

Frames are read and written with AF_PACKET sockets that carry a virtio_net_hdr (PACKET_VNET_HDR):
a frame whose UDP checksum is still to be computed (CHECKSUM_PARTIAL on a veth) or a GSO run leaves
with the same header, so the kernel finishes it on the way out as it would have without the line.
The process asks for SCHED_FIFO and a 1 µs timer slack so that a busy machine delays its wake-ups
as little as possible; `--stats` prints, at exit (SIGTERM), how many frames went each way and how
late the latest ones left (p50, p99, max of the lateness beyond the delay, µs).
"""
import argparse
import collections
import ctypes
import os
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS: when the frame arrived, CLOCK_REALTIME
FRAME_MAX = 65536 + 10 + 14
QUEUE_MAX = 100000  # frames per direction: 10 ms at ~10 Gbit/s of 1,200-byte datagrams


def open_port(ifname):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)  # not the frames this process sends
    sock.bind((ifname, ETH_P_ALL))
    index = socket.if_nametoindex(ifname)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    return sock


def sharpen():
    """Wake-ups as close to their time as the machine allows (best effort: both need root)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    except (OSError, AttributeError):
        pass


def arrived_ns(ancillary, fallback):
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            return seconds * 1_000_000_000 + nanoseconds
    return fallback


class Stopped(Exception):
    pass


def forward(ports, queues, counts, dropped, late, delay_ns):
    """The line: frames that are due leave, the next wait lasts until the next is due or a frame comes."""
    while True:
        now = time.clock_gettime_ns(time.CLOCK_REALTIME)
        for i in (0, 1):
            queue, out = queues[i], ports[1 - i]
            while queue and queue[0][0] <= now:
                due, frame = queue.popleft()
                try:
                    out.send(frame)
                    counts[i] += 1
                    late.append(now - due)
                except OSError:
                    dropped[i] += 1  # the interface's queue is full: the frame is lost, as on a wire
        heads = [q[0][0] for q in queues if q]
        timeout = max(0, min(heads) - time.clock_gettime_ns(time.CLOCK_REALTIME)) / 1e9 if heads else None
        readable, _, _ = select.select(ports, [], [], timeout)
        now = time.clock_gettime_ns(time.CLOCK_REALTIME)
        for sock in readable:
            i = ports.index(sock)
            while True:
                try:
                    frame, ancillary, _, _ = sock.recvmsg(FRAME_MAX, 64)
                except (BlockingIOError, InterruptedError):
                    break
                if len(queues[i]) >= QUEUE_MAX:
                    dropped[i] += 1
                    continue
                # Due `delay` after the kernel took it in, not after this process woke up for it.
                queues[i].append((min(now, arrived_ns(ancillary, now)) + delay_ns, frame))


def run(delay_ns, names, stats):
    ports = [open_port(name) for name in names]
    # queues[i]: frames that came in on ports[i], waiting to leave on the other port.
    queues = [collections.deque(), collections.deque()]
    counts, dropped, late = [0, 0], [0, 0], collections.deque(maxlen=100000)

    def stopped(*_):
        raise Stopped()

    # (A handler that only set a flag would not end a select() without a timeout: Python retries it.)
    signal.signal(signal.SIGTERM, stopped)
    print("ready", flush=True)
    try:
        forward(ports, queues, counts, dropped, late, delay_ns)
    except Stopped:
        pass
    if stats:
        ordered = sorted(late)
        pick = (lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))] // 1000) if ordered else (lambda q: 0)
        print(f"delayline {names[0]}->{names[1]} {counts[0]} frames ({dropped[0]} dropped), "
              f"{names[1]}->{names[0]} {counts[1]} ({dropped[1]} dropped); late p50 {pick(0.5)} us, "
              f"p99 {pick(0.99)} us, max {pick(1.0)} us", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--stats", action="store_true")
    parser.add_argument("interfaces", nargs=2)
    args = parser.parse_args()
    sharpen()
    run(int(args.delay_ms * 1e6), args.interfaces, args.stats)


if __name__ == "__main__":
    main()
