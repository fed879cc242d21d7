"""The wheel (`make wheel`, issue 17): a platform-tagged wheel that carries the library, installed
into a fresh venv, runs a two-peer exchange with nothing else telling it where a library is and
the Swift toolchain hidden."""
import os
import pathlib
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[3]
STAGE = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", REPO / "build" / "stage"))
LIBRARY = STAGE / "lib" / "libdnatransport.so.1"

EXCHANGE = """
import os, sys, tempfile
import dnatransport as dna
from dnatransport import _native
print(dna.library_path)
assert os.path.dirname(dna.library_path) == os.path.dirname(_native.__file__), dna.library_path
with tempfile.TemporaryDirectory() as home:
    boot = dna.DHT(data_dir=os.path.join(home, "boot"), bind_ip="127.0.0.1")
    bootstrap = [f"127.0.0.1:{boot.port}"]
    alice = dna.Transport("alice", data_dir=os.path.join(home, "alice"), bootstrap=bootstrap, bind_ip="127.0.0.1")
    bob = dna.Transport("bob", data_dir=os.path.join(home, "bob"), bootstrap=bootstrap, bind_ip="127.0.0.1")
    conn = alice.connect("bob")
    incoming, peer = bob.accept(timeout_ms=20000)
    assert peer == "alice", peer
    alice.send(conn, b"from the wheel")
    assert bob.receive(incoming, timeout_ms=10000) == b"from the wheel"
    bob.send(incoming, b"and back")
    assert alice.receive(conn, timeout_ms=10000) == b"and back"
    alice.close(); bob.close(); boot.close()
print("exchanged")
"""


def test_wheel_installs_into_a_fresh_venv_and_two_peers_exchange(tmp_path, without_toolchain):
    sys.path.insert(0, str(REPO / "bindings" / "python"))
    try:
        import make_wheel
    finally:
        sys.path.pop(0)
    wheel = make_wheel.build(LIBRARY, tmp_path / "dist")
    # Platform-tagged (not "any"), with the library beside the module.
    assert wheel.name.startswith("dnatransport-1.0.0-py3-none-linux_"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        assert "dnatransport/libdnatransport.so.1" in archive.namelist()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    # No hint of another library: no variable, no pkg-config path.
    env = {k: v for k, v in os.environ.items()
           if k not in ("DNATRANSPORT_LIBRARY", "PKG_CONFIG_PATH", "PYTHONPATH", "DNA_TEST_PREFIX")}
    # ... and no Swift toolchain: the wheel is all a machine with Debian's runtime libraries needs.
    run = without_toolchain(python, "-c", EXCHANGE, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.split()[0].startswith(str(venv)) and run.stdout.split()[-1] == "exchanged", run.stdout
