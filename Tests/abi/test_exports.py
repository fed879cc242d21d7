"""The .so exports exactly the C API of include/, each export is documented, checked at compile time
(Sources/DNACABI/ABICheck.swift) and wrapped by the Python binding; the library is self-contained."""
import os
import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
STAGE = pathlib.Path(os.environ.get("DNA_TEST_PREFIX", ROOT / "build" / "stage"))
LIBRARY = STAGE / "lib" / "libdnatransport.so.1"
HEADERS = [ROOT / "include" / "dnatransport.h"] + sorted((ROOT / "include" / "dnatransport").glob("*.h"))
DECLARATION = re.compile(r"^DNA_EXPORT\b[^;{]*?\b([a-z][a-z0-9_]*)\s*\(", re.S | re.M)


def declared():
    names = {}
    for header in HEADERS:
        text = header.read_text()
        for match in DECLARATION.finditer(text):
            names[match.group(1)] = (header, text[:match.start()])
    return names


def exported():
    out = subprocess.run(["nm", "-D", "-g", "--defined-only", str(LIBRARY)], capture_output=True, text=True, check=True)
    names = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] != "A":
            names.add(parts[2].split("@")[0])
    return names


def test_exports_are_exactly_the_declared_functions():
    assert len(declared()) >= 11
    assert exported() == set(declared())


def test_no_swift_or_foreign_symbol_is_exported():
    out = subprocess.run(["nm", "-D", "--defined-only", str(LIBRARY)], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        name = line.split()[-1]
        assert not name.startswith(("$s", "_$s", "CCryptoBoringSSL")), name


def test_every_declaration_has_a_doc_comment():
    for name, (header, before) in declared().items():
        assert before.rstrip().endswith("*/"), f"{name} in {header.name} has no doc comment"


def test_every_export_is_checked_against_its_prototype():
    check = (ROOT / "Sources" / "DNACABI" / "ABICheck.swift").read_text()
    for name in declared():
        assert f"sameType(CDNATransport.{name}, DNACABI.{name})" in check, name


def test_python_binding_declares_every_export():
    from dnatransport import _native
    assert set(_native.FUNCTIONS) == exported()


def test_library_is_self_contained():
    readelf = subprocess.run(["readelf", "-d", str(LIBRARY)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libdnatransport.so.1]" in readelf
    needed = re.findall(r"Shared library: \[([^\]]+)\]", readelf)
    assert needed and not [n for n in needed if "swift" in n.lower() or "Foundation" in n], needed
