#!/usr/bin/env python3
"""Runs every test of the project and ends with one line: "N passed, N failed".

1. Swift tests (swift test in a release build with testing enabled).
2. The release library installed into build/stage (make install PREFIX=build/stage).
3. C tests: each Tests/C/*.c (C99) and *.cpp (C++11) built with -Wall -Wextra -Werror -pedantic and
   `pkg-config --cflags --libs dnatransport` only, then run with a bare environment (no
   LD_LIBRARY_PATH, no Swift toolchain on PATH).
4. Python tests (pytest) against the staged library, through the binding installed with pip.
5. A short fuzzing pass (make fuzz-build, then Fuzz/run.py: each libFuzzer target's regression
   inputs and DNA_FUZZ_SECONDS, default 6, of fuzzing; one result per target).
"""
import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
STAGE = BUILD / "stage"
BARE_ENV = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}

results = []  # (suite, name, ok)


def run(cmd, **kw):
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(map(str, cmd))), flush=True)
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), **kw)


def junit(path, suite):
    """Adds each testcase of a JUnit XML file; returns how many there were."""
    if not path.exists():
        return 0
    count = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        results.append((suite, case.get("classname", "") + "." + case.get("name", ""), not failed and not skipped))
        count += 1
    return count


def swift_tests():
    """Every Swift suite in one optimized build with testing enabled, in the scratch path the shipped
    build uses (.build): the release library that `make install` builds next, and the fuzzing harness,
    then recompile only the Swift modules, not BoringSSL's C (issue: CI under 30 minutes on 2 cores;
    a debug build of everything beside it cost a third build of the whole package). The DHT's network
    simulations (thousands of nodes) and the transport's lossy-path simulations need optimization
    anyway: they run 13 times faster."""
    xml = BUILD / "swift.xml"
    for old in BUILD.glob("swift*.xml"):
        old.unlink()
    proc = run(["swift", "test", "-c", "release", "-Xswiftc", "-enable-testing", "--xunit-output", str(xml)])
    counted = sum(junit(p, "swift") for p in BUILD.glob("swift*.xml"))
    if proc.returncode != 0 and not any(not ok for s, _, ok in results if s == "swift"):
        results.append(("swift", "swift test exit status", False))
    if counted == 0:
        results.append(("swift", "swift test produced results", False))


def install():
    proc = run(["make", "install", f"PREFIX={STAGE}"])
    results.append(("build", "make install", proc.returncode == 0))
    return proc.returncode == 0


def pkg_config(*args):
    env = dict(os.environ, PKG_CONFIG_PATH=str(STAGE / "lib" / "pkgconfig"))
    out = subprocess.run(["pkg-config", *args, "dnatransport"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def c_tests():
    cdir = BUILD / "c"
    cdir.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "Tests/C/gen_vectors.py", "Tests/Vectors/frames.json", str(cdir / "vectors.h")], check=True)
    flags = pkg_config("--cflags", "--libs")
    strict = ["-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{cdir}", "-ITests/C"]
    sources = sorted((ROOT / "Tests" / "C").glob("test_*.c")) + sorted((ROOT / "Tests" / "C").glob("test_*.cpp"))
    for source in sources:
        exe = cdir / source.stem
        compiler = ["g++", "-std=c++11"] if source.suffix == ".cpp" else ["cc", "-std=c99"]
        built = run(compiler + strict + ["-o", str(exe), str(source)] + flags).returncode == 0
        ok = built and run([str(exe)], env=BARE_ENV).returncode == 0
        results.append(("c", source.name, ok))


def python_tests():
    venv = BUILD / "venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    installed = run([py, "-m", "pip", "install", "--quiet", "--no-deps",
                     "--force-reinstall", "./bindings/python"]).returncode == 0
    results.append(("python", "pip install ./bindings/python", installed))
    # Independent implementations to cross-check against (PyPI): ML-DSA-65 signatures (dilithium-py),
    # ML-KEM-768, X25519, HKDF and ChaCha20-Poly1305 for sealed values (kyber-py, cryptography).
    tools = run([py, "-m", "pip", "install", "--quiet", "dilithium-py==1.5.1", "kyber-py==1.2.0",
                 "cryptography==48.0.0"]).returncode == 0
    results.append(("python", "pip install dilithium-py kyber-py cryptography", tools))
    xml = BUILD / "pytest.xml"
    if xml.exists():
        xml.unlink()
    env = dict(os.environ, PKG_CONFIG_PATH=str(STAGE / "lib" / "pkgconfig"), DNA_TEST_PREFIX=str(STAGE))
    env.pop("DNATRANSPORT_LIBRARY", None)
    # Run from build/ so that `import dnatransport` finds the installed package, not the source tree.
    proc = run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                str(ROOT / "bindings" / "python" / "tests"), str(ROOT / "Tests" / "abi"),
                 # The network lab (root, nftables, coturn): NAT traversal behind real NATs.
                 str(ROOT / "Tests" / "lab")], cwd=BUILD, env=env)
    if junit(xml, "python") == 0 or (proc.returncode != 0 and all(ok for s, _, ok in results if s == "python")):
        results.append(("python", "pytest exit status", False))


def fuzz_tests():
    # In the shipped build's scratch path: BoringSSL's C objects are shared (only Swift is instrumented).
    built = run(["make", "fuzz-build", "FUZZ_SCRATCH=.build"]).returncode == 0
    results.append(("fuzz", "make fuzz-build", built))
    if not built:
        return
    xml = BUILD / "fuzz.xml"
    if xml.exists():
        xml.unlink()
    seconds = os.environ.get("DNA_FUZZ_SECONDS", "6")
    proc = run([sys.executable, "Fuzz/run.py", ".build/release/dna-fuzz", "--seconds", seconds, "--junit", str(xml)])
    if junit(xml, "fuzz") == 0 or (proc.returncode != 0 and all(ok for s, _, ok in results if s == "fuzz")):
        results.append(("fuzz", "Fuzz/run.py exit status", False))


def main():
    BUILD.mkdir(exist_ok=True)
    swift_tests()
    fuzz_tests()
    if install():
        c_tests()
        python_tests()
    failed = [(s, n) for s, n, ok in results if not ok]
    print()
    for suite in ("swift", "fuzz", "build", "c", "python"):
        mine = [ok for s, _, ok in results if s == suite]
        print(f"  {suite:7} {sum(mine)} passed, {len(mine) - sum(mine)} failed")
    for suite, name in failed:
        print(f"  FAILED {suite}: {name}")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
