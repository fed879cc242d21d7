"""`dnat node`: a DHT node and STUN server on one UDP port, stopped cleanly by signals."""
import os
import pathlib
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

import dnatransport as dna

DNAT = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", "/usr/local")) / "bin" / "dnat"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(lines, text, timeout=30):
    """Waits until one of `lines` (filled by a reader thread) contains `text`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in list(lines)):
            return True
        time.sleep(0.05)
    raise AssertionError(f"no '{text}' in {lines}")


class Node:
    def __init__(self, data_dir, *args):
        self.port = free_port()
        self.proc = subprocess.Popen([str(DNAT), "node", "--bind", "127.0.0.1", "--port", str(self.port),
                                      "--data-dir", str(data_dir), "--stats-interval", "0", *args],
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text, timeout=30):
        return wait_for_line(self.lines, text, timeout)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.reader.join(timeout=10)
        return code


def stun_binding(port, classic=False):
    """A STUN Binding request; returns the mapped address the answer carries and the socket's own.
    RFC 8489 (magic cookie): XOR-MAPPED-ADDRESS. classic: RFC 3489 (no cookie, as libnice's candidate
    gathering sends): MAPPED-ADDRESS in the clear."""
    cookie = b"" if classic else struct.pack(">I", 0x2112A442)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        transaction = cookie + os.urandom(16 - len(cookie))
        s.sendto(struct.pack(">HH", 0x0001, 0) + transaction, ("127.0.0.1", port))
        data, _ = s.recvfrom(2048)
        kind, length = struct.unpack(">HH", data[:4])
        assert (kind, data[4:20]) == (0x0101, transaction)
        wanted = 0x0001 if classic else 0x0020
        offset = 20
        while offset < 20 + length:
            attribute, size = struct.unpack(">HH", data[offset:offset + 4])
            value = data[offset + 4:offset + 4 + size]
            if attribute == wanted:
                family, mapped_port = struct.unpack(">xBH", value[:4])
                assert family == 0x01
                address = value[4:8]
                if not classic:
                    address = bytes(a ^ b for a, b in zip(address, cookie))
                    mapped_port ^= 0x2112
                return (socket.inet_ntoa(address), mapped_port), s.getsockname()
            offset += 4 + (size + 3) // 4 * 4
    raise AssertionError("no MAPPED-ADDRESS" if classic else "no XOR-MAPPED-ADDRESS")


def test_node_serves_dht_and_stun_and_stops_cleanly(tmp_path):
    first = Node(tmp_path / "a")
    try:
        first.wait_for("listening on UDP port")
        mapped, mine = stun_binding(first.port)
        assert mapped == mine
        mapped, mine = stun_binding(first.port, classic=True)
        assert mapped == mine
        second = Node(tmp_path / "b", "--bootstrap", f"127.0.0.1:{first.port}")
        second.wait_for("joined through")
        with dna.DHT(data_dir=tmp_path / "client", bind_ip="127.0.0.1") as client:
            client.bootstrap([f"127.0.0.1:{second.port}"])
            client.announce("alice", "192.0.2.44", 4444)
            assert client.find_peer("alice") == ("192.0.2.44", 4444)
        first.proc.send_signal(signal.SIGUSR1)
        first.wait_for("stats: routing table")
        assert second.stop() == 0
        assert first.stop() == 0
        assert any("saving state" in line for line in first.lines)
        assert (tmp_path / "a" / "dht" / "state").exists() and (tmp_path / "a" / "dht" / "node").exists()
        # Restarted, it comes back with its id and its contacts.
        again = Node(tmp_path / "a")
        again.wait_for("restored")
        assert again.stop() == 0
    finally:
        for node in (first,):
            if node.proc.poll() is None:
                node.proc.kill()


def test_node_refuses_bad_arguments(tmp_path):
    result = subprocess.run([str(DNAT), "node", "--log-level", "loud", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "--log-level" in result.stderr
    result = subprocess.run([str(DNAT), "node", "--bind", "nowhere", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "--bind" in result.stderr
