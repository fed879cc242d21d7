"""The installed `dnat` runs on a machine without the Swift toolchain (issue 17): it needs no shared
library of the toolchain, and `dnat version` and `dnat demo` work with the toolchain's directory
hidden behind an empty tmpfs in a private mount namespace."""
import os
import pathlib
import re
import subprocess

from conftest import toolchain

DNAT = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", "/usr/local")) / "bin" / "dnat"


def test_dnat_needs_no_toolchain_library():
    readelf = subprocess.run(["readelf", "-d", str(DNAT)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"Shared library: \[([^\]]+)\]", readelf)
    assert needed and not [n for n in needed if "swift" in n.lower() or "Foundation" in n
                           or "dispatch" in n.lower() or "BlocksRuntime" in n], needed
    paths = re.findall(r"(?:RUNPATH|RPATH).*\[([^\]]*)\]", readelf)
    assert not [p for p in paths if str(toolchain()) in p or "swift" in p.lower()], paths


def test_dnat_version_and_demo_run_with_the_toolchain_hidden(without_toolchain):
    version = without_toolchain(str(DNAT), "version")
    assert version.returncode == 0, version.stderr
    assert re.search(r"\d+\.\d+\.\d+", version.stdout), version.stdout
    demo = without_toolchain(str(DNAT), "demo", "--messages", "5", "--attachment", "100000", timeout=180)
    assert demo.returncode == 0, demo.stdout + demo.stderr
