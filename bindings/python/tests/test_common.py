import ctypes
import ctypes.util
import gc
import os
import subprocess
import sys
import threading
import tracemalloc

import pytest

import dnatransport as dna
from dnatransport import DNAError, ErrorCode, LogLevel, _native


def test_version_agrees_with_the_package():
    assert dna.version() == "1.0.0"
    assert dna.version_number() == 10000


def test_every_code_has_its_own_message():
    messages = [dna.strerror(code) for code in ErrorCode]
    assert len(set(messages)) == len(messages)
    assert "unknown error" not in messages
    assert dna.strerror(-999) == "unknown error"


def test_last_error_is_per_thread():
    with pytest.raises(DNAError):
        dna.decode_frame(b"short")
    assert dna.last_error() == ErrorCode.TRUNCATED
    seen = []
    thread = threading.Thread(target=lambda: seen.append(dna.last_error()))
    thread.start()
    thread.join()
    assert seen == [ErrorCode.OK]


def test_log_handler_receives_debug_messages_and_can_be_removed():
    received = []
    dna.set_log_handler(lambda level, message: received.append((level, message)), LogLevel.DEBUG)
    try:
        with pytest.raises(DNAError):
            dna.decode_frame(b"XNA " + bytes(28))
        assert len(received) == 1
        level, message = received[0]
        assert level == LogLevel.DEBUG
        assert "p2p_frame_decode" in message and "bad frame magic" in message
        dna.set_log_handler(lambda level, message: received.append((level, message)), LogLevel.WARNING)
        with pytest.raises(DNAError):
            dna.decode_frame(b"XNA " + bytes(28))
        assert len(received) == 1
    finally:
        dna.set_log_handler(None)
    with pytest.raises(DNAError):
        dna.decode_frame(b"XNA " + bytes(28))
    assert len(received) == 1


def test_take_buffer_copies_and_frees_library_buffers():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    pointer = libc.malloc(5)
    ctypes.memmove(pointer, b"hello", 5)
    assert dna.take_buffer(pointer, 5) == b"hello"
    assert dna.take_buffer(None, 0) == b""


def test_byte_arguments_are_freed_without_the_cycle_collector():
    # Each send's copy used to sit in a reference cycle until the cyclic collector ran, which a loop
    # of sends rarely triggers: 268 MB resident after 256 sends of 1 MiB (issue 16).
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4):
            keep, pointer = dna._bytes_arg(b"x" * (1 << 20))
            assert pointer[0] == ord("x") and pointer[(1 << 20) - 1] == ord("x")
            del keep, pointer
        assert tracemalloc.get_traced_memory()[0] - before < 256 << 10
    finally:
        tracemalloc.stop()
        gc.enable()


def test_library_location_order(tmp_path):
    fake = tmp_path / "lib" / _native.SONAME
    fake.parent.mkdir()
    fake.write_bytes(b"")
    empty = tmp_path / "package"
    empty.mkdir()
    # A copy inside the package (as a wheel carries it) wins over everything else.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / _native.SONAME).write_bytes(b"")
    path, _ = _native.locate({"DNATRANSPORT_LIBRARY": "/x/lib.so", "PATH": os.environ["PATH"]}, package_dir=str(bundle))
    assert path == str(bundle / _native.SONAME)
    # Then the environment variable.
    path, _ = _native.locate({"DNATRANSPORT_LIBRARY": "/x/lib.so", "PATH": os.environ["PATH"]}, package_dir=str(empty))
    assert path == "/x/lib.so"
    # Then pkg-config (the test run points PKG_CONFIG_PATH at the staged install).
    path, tried = _native.locate({"PATH": os.environ["PATH"], "PKG_CONFIG_PATH": os.environ["PKG_CONFIG_PATH"]},
                                 default_prefix=str(tmp_path), package_dir=str(empty))
    assert path == os.path.join(os.environ["DNA_TEST_PREFIX"], "lib", _native.SONAME), tried
    # Then the default prefix.
    path, tried = _native.locate({"PATH": os.environ["PATH"], "PKG_CONFIG_PATH": str(tmp_path)},
                                 default_prefix=str(tmp_path), package_dir=str(empty))
    assert path == str(fake), tried
    # Nothing anywhere: None, with every place tried.
    path, tried = _native.locate({"PATH": os.environ["PATH"], "PKG_CONFIG_PATH": str(tmp_path)},
                                 default_prefix=str(tmp_path / "none"), package_dir=str(empty))
    assert path is None and len(tried) == 3


def test_environment_variable_selects_the_library_and_a_bad_one_is_a_clear_error():
    code = "import dnatransport as d; print(d.library_path, d.version())"
    env = dict(os.environ, DNATRANSPORT_LIBRARY=dna.library_path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.split() == [dna.library_path, "1.0.0"], out.stderr
    env["DNATRANSPORT_LIBRARY"] = "/nonexistent/libdnatransport.so.1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/")
    assert out.returncode != 0 and "cannot load libdnatransport from /nonexistent" in out.stderr
