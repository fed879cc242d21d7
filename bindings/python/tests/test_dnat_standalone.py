"""The installed `dnat` runs on a machine without the Swift toolchain (issue 17): it needs no shared
library of the toolchain, and `dnat version` and `dnat demo` work with the toolchain's directory
hidden behind an empty tmpfs in a private mount namespace."""
import os
import pathlib
import re
import shutil
import subprocess

import pytest

DNAT = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", "/usr/local")) / "bin" / "dnat"


def toolchain():
    """The root of the Swift toolchain (the directory holding usr/bin/swiftc), /opt/swift if none is found."""
    swiftc = shutil.which("swiftc")
    if swiftc:
        path = pathlib.Path(os.path.realpath(swiftc))
        if path.parent.name == "bin" and path.parent.parent.name == "usr":
            return path.parent.parent.parent
    return pathlib.Path("/opt/swift")


def hidden(*command, timeout=120):
    """Runs `command` with the toolchain directory replaced by an empty tmpfs (root: unshare --mount)."""
    root = toolchain()
    script = ('mount -t tmpfs none "$1" && shift && '
              'if ls "$0"/usr/lib/swift 2>/dev/null; then echo "toolchain still visible" >&2; exit 97; fi && '
              'exec "$@"')
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root),
                           str(root), *command], capture_output=True, text=True, timeout=timeout)


def test_dnat_needs_no_toolchain_library():
    readelf = subprocess.run(["readelf", "-d", str(DNAT)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"Shared library: \[([^\]]+)\]", readelf)
    assert needed and not [n for n in needed if "swift" in n.lower() or "Foundation" in n
                           or "dispatch" in n.lower() or "BlocksRuntime" in n], needed
    paths = re.findall(r"(?:RUNPATH|RPATH).*\[([^\]]*)\]", readelf)
    assert not [p for p in paths if str(toolchain()) in p or "swift" in p.lower()], paths


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_dnat_version_and_demo_run_with_the_toolchain_hidden():
    assert (toolchain() / "usr" / "lib" / "swift").is_dir(), "the test needs a toolchain to hide"
    version = hidden(str(DNAT), "version")
    assert version.returncode == 0, version.stderr
    assert re.search(r"\d+\.\d+\.\d+", version.stdout), version.stdout
    demo = hidden(str(DNAT), "demo", "--messages", "5", "--attachment", "100000", timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
