import json
import os
import pathlib
import shutil
import socket
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def vectors():
    return json.loads((REPO / "Tests" / "Vectors" / "frames.json").read_text())


def toolchain():
    """The root of the Swift toolchain (the directory holding usr/bin/swiftc), /opt/swift if none is found."""
    swiftc = shutil.which("swiftc")
    if swiftc:
        path = pathlib.Path(os.path.realpath(swiftc))
        if path.parent.name == "bin" and path.parent.parent.name == "usr":
            return path.parent.parent.parent
    return pathlib.Path("/opt/swift")


@pytest.fixture()
def without_toolchain():
    """run(*command, **kw): runs a command with the Swift toolchain's directory replaced by an empty
    tmpfs, in a private mount namespace (needs root: skips otherwise), as on a machine without it."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    root = toolchain()
    assert (root / "usr" / "lib" / "swift").is_dir(), "the test needs a toolchain to hide"
    script = ('mount -t tmpfs none "$0" && '
              'if ls "$0"/usr/lib/swift >/dev/null 2>&1; then echo "toolchain still visible" >&2; exit 97; fi && '
              'exec "$@"')

    def run(*command, timeout=120, **kw):
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root),
                               *command], capture_output=True, text=True, timeout=timeout, **kw)
    run.root = root
    return run


@pytest.fixture()
def silent_port():
    """A UDP port on 127.0.0.1 that nobody reads: datagrams sent to it vanish."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()
