"""Shared test helpers: the built engine (bitnet setup must have run; the README's first command)."""
from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from bitnet_tools import engine


@pytest.fixture(scope="session")
def tools() -> Path:
    """bin/ of the current native build of llama.cpp's tools and tests."""
    pin = engine.read_pin()
    key = engine.build_key(pin, "native")
    assert engine.is_current(pin, "native", key), "the engine is not built or stale: run 'bitnet setup' first"
    return engine.tools_dir("native")


@pytest.fixture(scope="session")
def ggml_base():
    """libggml-base of the installed (patched) llama_cpp, for calling the C reference code."""
    import os
    import llama_cpp
    # the library llama_cpp itself loads: LLAMA_CPP_LIB_PATH if set, else its own lib/
    libdir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(llama_cpp.__file__).parent / "lib")
    lib = ctypes.CDLL(str(sorted(libdir.glob("libggml-base.*"))[0]))
    for fn in ("quantize_row_i2_s_ref", "dequantize_row_i2_s", "quantize_row_i8_s_ref"):
        getattr(lib, fn).restype = None
        getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def run(cmd: list, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
