"""Only the wheel's tag lives here (the metadata is in pyproject.toml): a tree that carries the C
library beside the module (as `make wheel` lays it out) gives a platform wheel, py3-none-<platform>,
since the library is machine code; the plain source tree gives a pure wheel that finds the library
installed on the system."""
import os

from setuptools import setup
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dnatransport", "libdnatransport.so.1")


class WithLibrary(Distribution):
    def has_ext_modules(self):
        # Makes the wheel platform-specific, with the package at its root (platlib).
        return os.path.exists(BUNDLED)


class BdistWheel(bdist_wheel):
    def get_tag(self):
        python, abi, platform = super().get_tag()
        # ctypes needs no particular Python ABI: any Python 3 on this platform.
        return (python, abi, platform) if self.root_is_pure else ("py3", "none", platform)


setup(distclass=WithLibrary, cmdclass={"bdist_wheel": BdistWheel})
