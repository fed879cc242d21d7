"""Builds the platform wheel of the binding with the C library inside (`make wheel`).

    python3 bindings/python/make_wheel.py LIBRARY OUTDIR

LIBRARY is the built libdnatransport.so.1 (make install's stripped copy); the wheel lands in OUTDIR and
its path is printed. The binding's tree is copied to a scratch directory, the library is put beside
the module (where _native.locate looks first), and pip builds the wheel there; setup.py tags it
py3-none-<platform> because it carries machine code."""
import pathlib
import shutil
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
SONAME = "libdnatransport.so.1"


def build(library, outdir):
    library, outdir = pathlib.Path(library).resolve(), pathlib.Path(outdir).resolve()
    if not library.is_file():
        raise SystemExit(f"no library at {library}: run make install first")
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dnat-wheel-") as scratch:
        tree = pathlib.Path(scratch) / "src"
        shutil.copytree(HERE, tree, ignore=shutil.ignore_patterns(
            "tests", "build", "dist", "*.egg-info", "__pycache__", "make_wheel.py", "*.so*"))
        shutil.copy2(library, tree / "dnatransport" / SONAME)
        built = pathlib.Path(scratch) / "out"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(built), str(tree)],
                       check=True)
        wheels = list(built.glob("dnatransport-*.whl"))
        if len(wheels) != 1 or wheels[0].name.endswith("-none-any.whl"):
            raise SystemExit(f"expected one platform wheel, got {[w.name for w in wheels]}")
        target = outdir / wheels[0].name
        shutil.copy2(wheels[0], target)
        return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(build(sys.argv[1], sys.argv[2]))
