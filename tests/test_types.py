"""The type registry (bitnet_tools.quants.OURS) against the engine: one size rule in C
(ggml_ternary_nbytes, used by ggml.c and llama-quant.cpp) and in Python, and the architecture
names the engine accepts for BitNet b1.58 files."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from bitnet_tools import dummy, engine, quants
from bitnet_tools.writer import tensor_nbytes

SHAPES = [(1, 128), (16, 256), (17, 384), (40, 2560), (872, 640), (3, 8192), (7, 100), (5, 8640), (33, 1728)]


@pytest.fixture(scope="module")
def lib():
    lib = engine.ggml_base_library()
    lib.ggml_ternary_nbytes.restype = ctypes.c_size_t
    lib.ggml_ternary_nbytes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_is_ternary_whole.restype = ctypes.c_bool
    lib.ggml_is_ternary_whole.argtypes = [ctypes.c_int]
    return lib


@pytest.mark.parametrize("name", list(quants.OURS))
def test_one_size_rule_in_c_and_python(lib, name):
    t = quants.OURS[name]
    assert lib.ggml_is_ternary_whole(int(t.qtype))
    for rows, cols in SHAPES:
        c = lib.ggml_ternary_nbytes(int(t.qtype), cols, rows)
        assert c == t.nbytes((rows, cols)) == tensor_nbytes((rows, cols), t.qtype), (name, rows, cols)
        # and it is what the quantizer really writes
        q = np.random.default_rng(rows).integers(-1, 2, size=(rows, cols)).astype(np.float32)
        assert t.quant.quantize(q).nbytes == c


def test_stock_types_are_not_ternary_whole(lib):
    for qtype in (T.F32, T.F16, T.TQ1_0, T.TQ2_0, T.Q6_K):
        assert not lib.ggml_is_ternary_whole(int(qtype))
        assert lib.ggml_ternary_nbytes(int(qtype), 256, 4) == 0


def test_bitnet_25_files_run_as_bitnet_b158(tmp_path):
    """Older bitnet.cpp converters named the 2B-4T architecture `bitnet-25`: such a file loads
    and gives the same logits as the same weights named `bitnet-b1.58`."""
    from bitnet_tools import load
    logits = {}
    for arch in ("bitnet-b1.58", "bitnet-25"):
        path = dummy.write(tmp_path / f"{arch}.gguf", "tiny", "i2_s", embd_type_name="f16", seed=3, arch=arch)
        llm = load(path, n_ctx=64, logits_all=True)
        assert arch in llm.metadata.get("general.architecture", "")
        llm.eval([1, 20, 30, 40])
        logits[arch] = np.array(llm.scores[:4], dtype=np.float32)
        assert np.isfinite(logits[arch]).all() and np.abs(logits[arch]).max() > 0
        del llm
    np.testing.assert_array_equal(logits["bitnet-25"], logits["bitnet-b1.58"])
