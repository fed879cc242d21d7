"""The Debian packages (make deb, issue 17): built from the shipped build, installed with apt on this
machine (CI runs as root on a fresh machine), then used as a user would: `dnat version` and
`dnat demo` from /usr/bin, a C program built with pkg-config against the installed headers and
linked with the installed library, the bootstrap node's unit checked and its unprivileged user
running the node; purged at the end. Lintian, when present, reports no error."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = ROOT / ".build" / "release"
PACKAGES = ["dnat", "libdnatransport-dev", "libdnatransport1"]

PROGRAM = r"""
#include <dnatransport.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    dht_config_t config;
    memset(&config, 0, sizeof config);
    config.bind_ip = "127.0.0.1";
    config.data_dir = DATA_DIR;
    dht_context_t *dht = dht_init(&config);
    if (!dht) {
        fprintf(stderr, "dht_init: %s\n", dna_strerror(dna_last_error()));
        return 1;
    }
    int port = dht_get_port(dht);
    dht_free(dht);
    printf("%s %d\n", dna_version_string(), port > 0);
    return 0;
}
"""


def run(command, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(command, **kw)


def purge():
    run(["apt-get", "purge", "-y", *PACKAGES], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("installing the packages needs root (CI runs as root)")
    out = tmp_path_factory.mktemp("debs")
    built = run([sys.executable, str(ROOT / "packaging" / "make_deb.py"), str(RELEASE), str(out)])
    assert built.returncode == 0, built.stderr[-3000:]
    paths = [pathlib.Path(line) for line in built.stdout.split()]
    assert sorted(p.name.split("_")[0] for p in paths) == sorted(PACKAGES), paths
    purge()  # what an earlier run may have left
    installed = run(["apt-get", "install", "-y", "--no-install-recommends", *[str(p) for p in paths]],
                    env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    yield paths
    purge()
    assert not pathlib.Path("/usr/bin/dnat").exists()
    assert run(["getent", "passwd", "dnat"]).returncode != 0, "the dnat user outlived the purge"


def test_lintian_finds_no_error(debs):
    if shutil.which("lintian") is None:
        pytest.fail("lintian is missing: make deps installs it")
    report = run(["lintian", "--tag-display-limit", "0", *[str(p) for p in debs]])
    print(report.stdout)
    errors = [line for line in report.stdout.splitlines() if line.startswith("E:")]
    assert not errors, errors


def test_installed_dnat_runs_the_demo(debs, tmp_path):
    version = run(["/usr/bin/dnat", "version"])
    assert version.returncode == 0 and "1.0.0" in version.stdout, version
    demo = run(["/usr/bin/dnat", "demo"], timeout=120, env=dict(os.environ, HOME=str(tmp_path), DNA_HOME=str(tmp_path)))
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]


def test_a_c_program_builds_with_pkg_config_against_the_installed_files(debs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PKG_CONFIG_PATH", "LD_LIBRARY_PATH", "DNATRANSPORT_LIBRARY")}
    flags = run(["pkg-config", "--cflags", "--libs", "dnatransport"], env=env)
    assert flags.returncode == 0 and "-ldnatransport" in flags.stdout, flags
    assert "/stage" not in flags.stdout, flags.stdout
    source = tmp_path / "program.c"
    source.write_text(PROGRAM)
    exe = tmp_path / "program"
    built = run(["cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f'-DDATA_DIR="{tmp_path}/dht"',
                 "-o", str(exe), str(source), *flags.stdout.split()], env=env)
    assert built.returncode == 0, built.stderr
    ran = run([str(exe)], env=env)
    assert ran.returncode == 0 and ran.stdout.strip() == "1.0.0 1", (ran.stdout, ran.stderr)
    linked = run(["ldd", str(exe)], env=env).stdout
    line = next(line for line in linked.splitlines() if "libdnatransport" in line)
    path = os.path.realpath(line.split("=>")[1].split("(")[0].strip())
    assert path.startswith("/usr/lib/") and path.endswith("libdnatransport.so.1.0.0"), line


def test_the_node_unit_runs_as_an_unprivileged_user(debs):
    unit = pathlib.Path("/usr/lib/systemd/system/dnat-node.service")
    assert unit.is_file()
    text = unit.read_text()
    assert "User=dnat" in text and "/var/lib/dnat" in text
    if shutil.which("systemd-analyze"):
        verified = run(["systemd-analyze", "verify", str(unit)])
        assert verified.returncode == 0, verified.stderr
    account = run(["getent", "passwd", "dnat"]).stdout.split(":")
    assert account[5] == "/var/lib/dnat" and int(account[2]) != 0, account
    state = pathlib.Path("/var/lib/dnat").stat()
    assert state.st_uid == int(account[2]) and (state.st_mode & 0o777) == 0o700
    # What ExecStart runs, as that user: the node starts, keeps its state there, and ends cleanly.
    node = subprocess.Popen(["setpriv", "--reuid=dnat", "--regid=dnat", "--init-groups", "/usr/bin/dnat", "node", "--port", "0", "--bind", "127.0.0.1",
                             "--data-dir", "/var/lib/dnat", "--stats-interval", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    node.send_signal(signal.SIGTERM)
    output, _ = node.communicate(timeout=20)
    assert node.returncode == 0, output
    assert any(path.is_file() for path in pathlib.Path("/var/lib/dnat").rglob("*")), "the node saved nothing"
