"""Builds the Debian packages (`make deb`): libdnatransport1 (the library), libdnatransport-dev (headers,
pkg-config file, the .so link) and dnat (the command, and a systemd unit that runs a bootstrap node).

    python3 packaging/make_deb.py RELEASE_DIR OUTDIR

RELEASE_DIR holds the shipped build's libdnatransport.so and dnat (`make build`: .build/release). The
packages land in OUTDIR and their paths are printed. Files go where Debian puts them (the library in
/usr/lib/<multiarch>), stripped; each package's dependencies on other packages' shared libraries come
from dpkg-shlibdeps, as a Debian build would compute them; the library package carries a shlibs file
and an ldconfig trigger. Needs dpkg-dev (dpkg-deb, dpkg-shlibdeps, dpkg-architecture) and binutils."""
import gzip
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
VERSION = "1.0.0"
REVISION = "1"
SONAME = "libdnatransport.so.1"
MAINTAINER = "dnatransport developers <maintainers@dnatransport.org>"
HOMEPAGE = "https://github.com/dnatransport/dnatransport"

SERVICE = """[Unit]
Description=dnatransport bootstrap node (Kademlia DHT and STUN on UDP 4567)
Documentation=man:dnat(1) file:///usr/share/doc/dnat/README.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=dnat
Group=dnat
Environment=DNA_HOME=/var/lib/dnat
ExecStart=/usr/bin/dnat node --port 4567 --data-dir /var/lib/dnat
StateDirectory=dnat
StateDirectoryMode=0700
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
LockPersonality=yes

[Install]
WantedBy=multi-user.target
"""

# The node runs as an unprivileged system user whose home (and the node's data) is /var/lib/dnat.
DNAT_POSTINST = """#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd dnat >/dev/null; then
        adduser --system --group --home /var/lib/dnat --no-create-home --quiet dnat
    fi
    install -d -o dnat -g dnat -m 0700 /var/lib/dnat
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
    fi
fi
exit 0
"""

DNAT_POSTRM = """#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/dnat
    if getent passwd dnat >/dev/null; then
        deluser --quiet --system dnat >/dev/null || true
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
exit 0
"""

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dnatransport
Source: {homepage}

Files: *
Copyright: 2026 the dnatransport developers
License: see-upstream
 The licence of dnatransport is stated in its source repository.
"""


def run(command, **kw):
    return subprocess.run(command, check=True, capture_output=True, text=True, **kw).stdout


def multiarch():
    return run(["dpkg-architecture", "-qDEB_HOST_MULTIARCH"]).strip()


def architecture():
    return run(["dpkg-architecture", "-qDEB_HOST_ARCH"]).strip()


def shlib_depends(files):
    """dpkg-shlibdeps' Depends for the ELF `files` (it wants a debian/control in its directory)."""
    with tempfile.TemporaryDirectory(prefix="dnat-shlibdeps-") as scratch:
        control = pathlib.Path(scratch) / "debian" / "control"
        control.parent.mkdir()
        control.write_text("Source: dnatransport\n\nPackage: dnatransport\nArchitecture: any\n")
        out = run(["dpkg-shlibdeps", "-O", "--ignore-missing-info", *[str(f) for f in files]], cwd=scratch)
    for line in out.splitlines():
        if line.startswith("shlibs:Depends="):
            return line.split("=", 1)[1]
    return ""


SUBCOMMANDS = ["node", "demo", "chat", "send", "listen", "version"]


def manual(dnat):
    """dnat(1), gzipped: the command's own help (swift-argument-parser's) for it and each subcommand."""
    def roff(text):
        lines = []
        for line in text.rstrip().splitlines():
            line = line.replace("\\", "\\e").replace("-", "\\-")
            lines.append(("\\&" + line) if line.startswith((".", "'")) else line)
        return "\n".join(lines)
    page = [".TH DNAT 1 \"2026-11-30\" \"dnat " + VERSION + "\" \"User Commands\"",
            ".SH NAME", "dnat \\- peer\\-to\\-peer transport: demo, chat, DHT bootstrap node",
            ".SH DESCRIPTION", ".nf", roff(run([str(dnat), "--help"])), ".fi"]
    for command in SUBCOMMANDS:
        page += [".SH \"DNAT " + command.upper() + "\"", ".nf", roff(run([str(dnat), "help", command])), ".fi"]
    page += [".SH FILES", "/usr/lib/systemd/system/dnat\\-node.service: runs \\fBdnat node\\fR as user dnat, data in /var/lib/dnat."]
    return gzip.compress(("\n".join(page) + "\n").encode(), mtime=0)


def changelog(package):
    text = (f"{package} ({VERSION}-{REVISION}) unstable; urgency=medium\n\n"
            "  * Release 1.0.0.\n\n"
            f" -- {MAINTAINER}  Mon, 30 Nov 2026 00:00:00 +0000\n")
    return gzip.compress(text.encode(), mtime=0)


def documentation(tree, package):
    doc = tree / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(COPYRIGHT.format(homepage=HOMEPAGE))
    (doc / "changelog.Debian.gz").write_bytes(changelog(package))
    return doc


def finish(tree, package, control, outdir, scripts=None, extra=None):
    """Writes DEBIAN/ (control, md5sums, maintainer scripts, extra files) and builds the .deb."""
    debian = tree / "DEBIAN"
    debian.mkdir(exist_ok=True)
    size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file() and not f.is_symlink() and debian not in f.parents) // 1024
    control = control.replace("@SIZE@", str(max(1, size)))
    (debian / "control").write_text(control)
    sums = []
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink() and debian not in path.parents:
            sums.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {path.relative_to(tree)}")
    (debian / "md5sums").write_text("\n".join(sums) + "\n")
    for name, text in (scripts or {}).items():
        (debian / name).write_text(text)
        (debian / name).chmod(0o755)
    for name, text in (extra or {}).items():
        (debian / name).write_text(text)
        (debian / name).chmod(0o644)
    for path in tree.rglob("*"):  # the permissions Debian expects, whatever the umask
        if path.is_symlink():
            continue
        if path.is_dir():
            path.chmod(0o755)
        elif path.parent != debian:
            path.chmod(0o755 if os.access(path, os.X_OK) and "/bin/" in f"/{path.relative_to(tree)}" else 0o644)
    target = outdir / f"{package}_{VERSION}-{REVISION}_{architecture()}.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(target)])
    return target


def build(release, outdir):
    release, outdir = pathlib.Path(release).resolve(), pathlib.Path(outdir).resolve()
    library, dnat = release / "libdnatransport.so", release / "dnat"
    for path in (library, dnat):
        if not path.is_file():
            raise SystemExit(f"no {path}: run make build first")
    outdir.mkdir(parents=True, exist_ok=True)
    arch, triplet = architecture(), multiarch()
    libdir = pathlib.Path("usr") / "lib" / triplet
    built = []
    with tempfile.TemporaryDirectory(prefix="dnat-deb-") as scratch:
        scratch = pathlib.Path(scratch)

        # libdnatransport1: the library, stripped, with its SONAME link.
        tree = scratch / "libdnatransport1"
        (tree / libdir).mkdir(parents=True)
        real = tree / libdir / f"libdnatransport.so.{VERSION}"
        shutil.copy2(library, real)
        run(["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", str(real)])
        real.chmod(0o644)
        (tree / libdir / SONAME).symlink_to(real.name)
        documentation(tree, "libdnatransport1")
        depends = shlib_depends([real])
        built.append(finish(tree, "libdnatransport1", f"""Package: libdnatransport1
Version: {VERSION}-{REVISION}
Architecture: {arch}
Multi-Arch: same
Section: libs
Priority: optional
Maintainer: {MAINTAINER}
Installed-Size: @SIZE@
Depends: {depends}
Homepage: {HOMEPAGE}
Description: peer-to-peer transport for end-to-end encrypted messengers
 A C library (its core in Swift) that finds peers by name in a Kademlia DHT of
 self-signed ML-DSA-65 entries, crosses NATs with ICE (libnice: STUN, TURN),
 and carries encrypted, reliable, multiplexed messages, with an offline inbox
 in the DHT. This package holds the shared library.
""", outdir, extra={"shlibs": f"libdnatransport 1 libdnatransport1 (>= {VERSION})\n",
                    "triggers": "activate-noawait ldconfig\n"}))

        # libdnatransport-dev: headers, pkg-config file, the link for -ldnatransport.
        tree = scratch / "libdnatransport-dev"
        (tree / libdir / "pkgconfig").mkdir(parents=True)
        (tree / libdir / "libdnatransport.so").symlink_to(SONAME)
        include = tree / "usr" / "include"
        (include / "dnatransport").mkdir(parents=True)
        shutil.copy2(ROOT / "include" / "dnatransport.h", include / "dnatransport.h")
        for header in sorted((ROOT / "include" / "dnatransport").glob("*.h")):
            shutil.copy2(header, include / "dnatransport" / header.name)
        pc = (ROOT / "pkgconfig" / "dnatransport.pc.in").read_text()
        pc = pc.replace("@PREFIX@", "/usr").replace("@VERSION@", VERSION)
        pc = pc.replace("libdir=${exec_prefix}/lib", f"libdir=${{exec_prefix}}/lib/{triplet}")
        pc = pc.replace(" -Wl,-rpath,${libdir}", "")  # the system's library directory needs none
        (tree / libdir / "pkgconfig" / "dnatransport.pc").write_text(pc)
        doc = documentation(tree, "libdnatransport-dev")
        shutil.copy2(ROOT / "docs" / "PROTOCOL.md", doc / "PROTOCOL.md")
        built.append(finish(tree, "libdnatransport-dev", f"""Package: libdnatransport-dev
Version: {VERSION}-{REVISION}
Architecture: {arch}
Multi-Arch: same
Section: libdevel
Priority: optional
Maintainer: {MAINTAINER}
Installed-Size: @SIZE@
Depends: libdnatransport1 (= {VERSION}-{REVISION})
Homepage: {HOMEPAGE}
Description: peer-to-peer transport for end-to-end encrypted messengers (development files)
 Headers (dnatransport.h and the seed's p2p_protocol.h, dht_discovery.h,
 nat_traversal.h, network_transport.h) and the pkg-config file of
 libdnatransport, and its wire protocol (PROTOCOL.md).
""", outdir))

        # dnat: the command (the Swift runtime linked in) and the bootstrap node's systemd unit.
        tree = scratch / "dnat"
        (tree / "usr" / "bin").mkdir(parents=True)
        binary = tree / "usr" / "bin" / "dnat"
        shutil.copy2(dnat, binary)
        run(["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note", str(binary)])
        binary.chmod(0o755)
        man = tree / "usr" / "share" / "man" / "man1" / "dnat.1.gz"
        man.parent.mkdir(parents=True)
        man.write_bytes(manual(dnat))
        unit = tree / "usr" / "lib" / "systemd" / "system" / "dnat-node.service"
        unit.parent.mkdir(parents=True)
        unit.write_text(SERVICE)
        doc = documentation(tree, "dnat")
        shutil.copy2(ROOT / "README.md", doc / "README.md")
        depends = shlib_depends([binary])
        built.append(finish(tree, "dnat", f"""Package: dnat
Version: {VERSION}-{REVISION}
Architecture: {arch}
Section: net
Priority: optional
Maintainer: {MAINTAINER}
Installed-Size: @SIZE@
Depends: {depends}, adduser
Homepage: {HOMEPAGE}
Description: command line of dnatransport: demo, chat, bootstrap node
 dnat runs a two-peer demo, a chat, and a DHT bootstrap node (which also
 answers STUN). The unit dnat-node.service runs the node as the unprivileged
 user dnat, its data in /var/lib/dnat.
""", outdir, scripts={"postinst": DNAT_POSTINST, "postrm": DNAT_POSTRM}))
    return built


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    for path in build(sys.argv[1], sys.argv[2]):
        print(path)
