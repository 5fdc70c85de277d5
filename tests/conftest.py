"""Shared test helpers: the built engine (bitnet setup must have run; the README's first command)."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from bitnet_tools import engine


@pytest.fixture(scope="session")
def tools() -> Path:
    """bin/ of llama.cpp's tools and tests of the installed build (native or --portable)."""
    flavor, _ = engine.installed_build()
    return engine.tools_dir(flavor)


@pytest.fixture(scope="session")
def ggml_base():
    """libggml-base of the installed (patched) llama_cpp, for calling the C reference code."""
    lib = engine.ggml_base_library()
    for fn in ("quantize_row_i2_s_ref", "dequantize_row_i2_s", "quantize_row_i8_s_ref"):
        getattr(lib, fn).restype = None
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def run(cmd: list, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)


def mul_mat_columns(stdout: str, type_a: str) -> set[int]:
    """The activation column counts n of test-backend-ops MUL_MAT cases of type_a that passed.
    The kernels must see every n of a server's decode step (1 .. 32) and past it."""
    import re
    return {int(m.group(1)) for line in stdout.splitlines() if f"type_a={type_a}," in line and "OK" in line
            for m in [re.search(r",n=(\d+),", line)] if m}


ALL_COLUMNS = set(range(1, 34))
