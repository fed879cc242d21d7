"""`dnat demo` (the README's main job) and `dnat chat`: a listener, a one-shot sender, offline
delivery through the DHT when the listener is gone. Needs the installed dnat (DNA_TEST_PREFIX)."""
import subprocess
import threading
import time

from test_dnat_node import DNAT, Node, wait_for_line


class Chat:
    """A `dnat chat` process; its standard output lines are collected."""

    def __init__(self, data_dir, *args):
        self.proc = subprocess.Popen([str(DNAT), "chat", "--bind", "127.0.0.1", "--data-dir", str(data_dir), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text, timeout=30):
        return wait_for_line(self.lines, text, timeout)


def send(data_dir, bootstrap, *args):
    return subprocess.run([str(DNAT), "chat", "--bind", "127.0.0.1", "--data-dir", str(data_dir), "--bootstrap", bootstrap,
                           *args], capture_output=True, text=True, timeout=60)


def test_demo_runs_the_main_job():
    result = subprocess.run([str(DNAT), "demo", "--messages", "5"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alice connected to bob" in result.stdout
    assert "got an offline message from alice" in result.stdout
    assert result.stdout.rstrip().endswith("demo: ok")


def test_chat_live_and_offline(tmp_path):
    node = Node(tmp_path / "node")
    bob = None
    try:
        node.wait_for("listening on UDP port")
        bootstrap = f"127.0.0.1:{node.port}"
        # A peer that stays (it holds inboxes; the bootstrap node keeps none).
        carol = Chat(tmp_path / "carol", "--as", "carol", "--bootstrap", bootstrap)
        carol.wait_for("ready: carol")
        bob = Chat(tmp_path / "bob", "--as", "bob", "--bootstrap", bootstrap)
        bob.wait_for("ready: bob")
        result = send(tmp_path / "alice", bootstrap, "--as", "alice", "--to", "bob", "--send", "hello bob")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "connected to bob" in result.stdout
        bob.wait_for("<alice> hello bob")
        bob.wait_for("alice left")
        # Lines typed into bob's chat go to every connected peer.
        assert send(tmp_path / "dave", bootstrap, "--as", "dave", "--to", "bob", "--send", "hi").returncode == 0
        bob.wait_for("<dave> hi")

        bob.proc.kill()
        bob.proc.wait(10)
        started = time.monotonic()
        result = send(tmp_path / "alice", bootstrap, "--as", "alice", "--to", "bob", "--send", "while you were away")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "bob is offline: the message waits in its inbox" in result.stdout
        assert time.monotonic() - started < 30
        bob = Chat(tmp_path / "bob", "--as", "bob", "--bootstrap", bootstrap)
        bob.wait_for("<alice, offline> while you were away")
        carol.proc.kill()
    finally:
        for chat in (bob,):
            if chat and chat.proc.poll() is None:
                chat.proc.kill()
        node.stop()
