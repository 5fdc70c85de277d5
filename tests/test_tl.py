"""TL1/TL2: numpy and C agree bit for bit, the layout is the documented one, the SIMD kernels
agree with the scalar reference, and one build runs TL models of any shape."""
from __future__ import annotations

import ctypes
import struct
import subprocess
import sys

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as T

from bitnet_tools import dummy
from bitnet_tools.quants import I2_S, TL1, TL2, i2_s
from bitnet_tools.writer import PendingTensor, write_gguf

from conftest import ALL_COLUMNS, mul_mat_columns, run
from test_i2_s import _logits, _reference_logits, _tiny_weights

CLASSES = {"tl1": (TL1, T.TL1), "tl2": (TL2, T.TL2)}


@pytest.fixture(scope="module")
def tl_lib(ggml_base):
    for fn in ("quantize_tl1", "quantize_tl2"):
        f = getattr(ggml_base, fn)
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    ggml_base.dequantize_tl.restype = None
    ggml_base.dequantize_tl.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    return ggml_base


def _cases(rng):
    yield rng.standard_normal((1, 4096)).astype(np.float32)                    # test-quantize-fns' shape
    yield (rng.standard_normal((37, 100)) * 3).astype(np.float32)              # partial tile and chunk
    yield rng.integers(-1, 2, size=(80, 2560)).astype(np.float32) * np.float32(0.0123)  # 2B-4T width
    yield rng.standard_normal((3, 7)).astype(np.float32)                       # less than one chunk
    yield np.zeros((16, 24), dtype=np.float32)
    yield (np.linspace(-1, 1, 33 * 257, dtype=np.float32) ** 3).reshape(33, 257)  # near-ties


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_numpy_tl_is_bit_identical_to_c(tl_lib, name):
    cls, qtype = CLASSES[name]
    quantize = getattr(tl_lib, f"quantize_{name}")
    for x in _cases(np.random.default_rng(11)):
        m, k = x.shape
        mine = cls.quantize(x)
        assert mine.size == cls.nbytes(x.shape)
        c = np.zeros(mine.size + 64, dtype=np.uint8)
        assert quantize(x.ctypes.data, c.ctypes.data, m, k, None) == mine.size - i2_s.TAIL
        assert c[: mine.size].tobytes() == mine.tobytes(), (name, x.shape)
        back = np.zeros((m, k), dtype=np.float32)
        tl_lib.dequantize_tl(int(qtype), mine.ctypes.data, back.ctypes.data, m, k)
        assert back.tobytes() == cls.dequantize_tensor(mine, (m, k)).tobytes()


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_to_i2_s_gives_what_i2_s_writes_for_the_same_weights(tl_lib, name):
    """ggml_tl_to_i2_s (what a CPU without a fast TL2 kernel holds in memory instead of the
    file's codes) against our numpy I2_S writer: byte for byte, the tail's scale included."""
    cls, qtype = CLASSES[name]
    tl_lib.ggml_tl_to_i2_s.restype = None
    tl_lib.ggml_tl_to_i2_s.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int64] * 4

    def converted(tl: np.ndarray, shape, split: int = 0) -> bytes:
        out = np.full(i2_s.nbytes(shape), 0xA5, dtype=np.uint8)  # every byte must be written
        for r0, r1 in ((0, split), (split, shape[0])):  # two row ranges, as the loader's threads
            tl_lib.ggml_tl_to_i2_s(int(qtype), tl.ctypes.data, out.ctypes.data, shape[1], shape[0], r0, r1)
        return out.tobytes()

    for x in _cases(np.random.default_rng(12)):
        want = I2_S.quantize(x).tobytes()
        assert converted(cls.quantize(x), x.shape) == want, (name, x.shape)
        if x.shape[0] > 16:
            assert converted(cls.quantize(x), x.shape, split=16) == want, (name, x.shape, "split")
    # a code no writer produces (TL1 9-15, TL2 27-31) is zero weights, as in the reference kernel
    zeros = np.zeros((16, 24), dtype=np.float32)
    tl = cls.quantize(zeros)
    tl[0] |= 0x0F   # lane 0: nibble 15
    if name == "tl2":
        tl[32] |= 1  # and bit 4: code 31
    assert converted(tl, zeros.shape) == I2_S.quantize(zeros).tobytes()


@pytest.mark.slow
def test_tl2_is_held_as_i2_s_where_its_kernel_is_slower(tmp_path):
    """Where TL2 has no fast kernel (no AVX-512 VBMI: the AVX2-only build here), the loader holds
    TL2 weights as I2_S in the CPU_TL2_AS_I2_S buffer; the logits are those of the TL2 kernels
    (--no-repack) bit for bit, in one batch (GEMM) and token by token (GEMV). The native build
    does the same only on a CPU without VBMI."""
    import platform
    from bitnet_tools import engine
    flags = open("/proc/cpuinfo").read() if platform.machine() in ("x86_64", "AMD64") else ""
    if " avx2" not in flags:
        pytest.skip("needs an x86-64 CPU with AVX2")
    shape = dummy.Shape(320, 2, 872, 5, 1, 301)  # partial chunk and partial tile, as above
    weights = _tiny_weights(shape, seed=23)
    path = _write_tl(tmp_path / "tiny-tl2.gguf", shape, weights, 0.25, T.TL2)
    tokens = [1, 100, 7, 250, 31, 5, 299, 42]
    ref = _reference_logits(shape, weights, 0.25, tokens)

    def logits(prog, *opts):
        out = tmp_path / "logits.bin"
        r = run([prog, "-m", path, "-t", 2, "-o", out, "-v", *opts, *map(str, tokens)])
        assert r.returncode == 0, r.stderr[-3000:]
        return np.fromfile(out, dtype=np.float32).reshape(len(tokens), -1), "CPU_TL2_AS_I2_S model buffer" in r.stderr

    avx2 = engine.build_test_programs("avx2") / "bitnet-logits"
    for batch in (len(tokens), 1):
        held, used = logits(avx2, "-b", batch)
        as_stored, used_without = logits(avx2, "-b", batch, "--no-repack")
        assert used and not used_without
        assert held.tobytes() == as_stored.tobytes(), f"batch {batch}: max diff {np.abs(held - as_stored).max()}"
        np.testing.assert_allclose(held, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # the native build holds TL2 as I2_S exactly where the CPU lacks the vpermb kernel's
    # instructions, and its library says so when asked (bitnet doctor, bench's roofline)
    native = engine.tools_dir(engine.installed_build()[0])
    _, native_used = logits(native / "bitnet-logits")
    assert native_used == (not all(f" {f}" in flags for f in ("avx512vbmi", "avx512_vnni", "avx512bw")))
    assert engine.tl2_held_as_i2_s(native) == native_used


@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_tl_layout_matches_the_description(name):
    """Read codes back from the bytes with the rules of docs/tl.md, written out independently."""
    cls, _ = CLASSES[name]
    g = 2 if name == "tl1" else 3
    m, k = 37, 50                       # tiles of 16, 16, 5 rows; 50 weights = 7 chunks (TL2: 5)
    q = np.random.default_rng(12).integers(-1, 2, size=(m, k)).astype(np.int8)
    data = cls.pack(q, 0.5)
    chunks = -(-k // (4 * g))
    per_chunk = {h: 2 * h + ((h + 1) // 2 if g == 3 else 0) for h in (16, 5)}
    for r in range(m):
        tile, i = divmod(r, 16)
        h = 16 if tile < 2 else 5
        for grp in range(chunks * 4):
            c, j = divmod(grp, 4)
            base = tile * chunks * per_chunk[16] + c * per_chunk[h]
            lane = 4 * i + j
            code = data[base + lane] & 15 if lane < 2 * h else data[base + lane - 2 * h] >> 4
            if g == 3:
                code |= ((data[base + 2 * h + lane // 8] >> (lane % 8)) & 1) << 4
            trits = [(int(code) // 3 ** (g - 1 - p)) % 3 - 1 for p in range(g)]
            want = [int(q[r, grp * g + p]) if grp * g + p < k else 0 for p in range(g)]
            assert trits == want, (r, grp)
    end = 2 * chunks * per_chunk[16] + chunks * per_chunk[5]
    assert data.size == end + 32 and data[end:end + 4].view(np.float32)[0] == np.float32(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_backend_ops_mul_mat_tl(tools, name):
    """Our TL kernels against the scalar reference (use_ref), GEMV and GEMM, partial tiles; with
    AVX-512 several columns take the decoded kernels, also past what they split at once (165
    columns) and over more than one of their row blocks (520 rows)."""
    r = run([tools / "test-backend-ops", "test", "-b", "CPU", "-o", "MUL_MAT", "-p", f"type_a={name}"])
    assert r.returncode == 0, r.stdout[-3000:]
    n_ok = sum(1 for line in r.stdout.splitlines() if f"type_a={name}," in line and "OK" in line)
    assert n_ok >= 160 and "FAIL" not in r.stdout
    assert mul_mat_columns(r.stdout, name) >= ALL_COLUMNS | {165}


def _write_tl(path, shape, weights, scale, qtype):
    cls = {T.TL1: TL1, T.TL2: TL2}[qtype]

    def pending(name, kind, value):
        if kind == "i2_s":  # ternary codes: values q * scale, quantized by our class
            return PendingTensor(name, value.shape, qtype, lambda: cls.quantize(value.astype(np.float32) * np.float32(scale)))
        return PendingTensor(name, value.shape, T.F32, lambda: value)

    file_type = 201 if qtype == T.TL1 else 202
    return write_gguf(path, "bitnet-b1.58", dummy.metadata(shape, path.stem, file_type),
                      [pending(n, k, v) for n, (k, v) in weights.items()])


def test_one_build_runs_tl_models_of_different_shapes(tmp_path):
    """Unlike kernels generated per model, ours take any shape: two TL2 models (and a TL1 one)
    of different widths, in one process, each matching the float reference."""
    from bitnet_tools import load
    shapes = [dummy.Shape(256, 2, 512, 4, 2, 300),
              # 320 wide (not a multiple of 12: a partial chunk), 872-row FFN (a partial tile), 1 KV head
              dummy.Shape(320, 2, 872, 5, 1, 301)]
    scale = 0.25
    tokens = [1, 100, 7, 250, 31, 5, 299, 42]
    models = []
    for n, shape in enumerate(shapes):
        weights = _tiny_weights(shape, seed=20 + n)
        for qtype in (T.TL2, T.TL1) if n == 1 else (T.TL2,):
            path = _write_tl(tmp_path / f"shape{n}-{qtype.name.lower()}.gguf", shape, weights, scale, qtype)
            models.append((path, load(path, n_ctx=64), shape, weights))  # all loaded at once
    assert sum(p.name.endswith("tl2.gguf") for p, *_ in models) == 2
    for path, llm, shape, weights in models:
        assert ("TL1" if path.name.endswith("tl1.gguf") else "TL2") in llm._model.desc()
        got = _logits(path, tokens)
        ref = _reference_logits(shape, weights, scale, tokens)
        assert np.isfinite(got).all() and got.std() > 0
        # as tight as I2_S (test_i2_s): exact integer dots, float32 vs float64 elsewhere
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tl1", "tl2"])
def test_llama_quantize_writes_what_our_numpy_writes(tools, tmp_path, name):
    """llama-quantize accepts TL1/TL2; its tensors are byte-identical to our numpy class."""
    import gguf
    cls, qtype = CLASSES[name]
    src = dummy.write(tmp_path / "tiny-f32.gguf", "tiny", "f32", embd_type_name="f32")
    dst = tmp_path / f"tiny-{name}.gguf"
    r = run([tools / "llama-quantize", src, dst, name.upper()])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    n = 0
    for ta in a.tensors:
        tb = next(t for t in b.tensors if t.name == ta.name)
        if tb.tensor_type == qtype:
            assert np.asarray(tb.data).tobytes() == cls.quantize(np.asarray(ta.data, dtype=np.float32)).tobytes(), ta.name
            n += 1
    assert n == 7 * dummy.SHAPES["tiny"].n_layer
    from bitnet_tools import load
    llm = load(dst, n_ctx=64)
    assert name.upper() in llm._model.desc() and "guessed" not in llm._model.desc()


def test_bitnet_cpp_tl_files_are_refused_with_a_clear_error(tools, tmp_path):
    """bitnet.cpp's TL2 files say file type 39 (and use ggml type 39, MXFP4 here): the engine
    refuses them in its own words (a whole model, so that nothing else stops the load first), and
    load() passes them on: gguf-py reads such a file as valid, so diagnose_model_file has nothing
    to add."""
    from bitnet_tools.runtime import diagnose_model_file
    path = tmp_path / "bitnet-cpp-tl2.gguf"
    dummy.write(path, "tiny", "i2_s")
    data = bytearray(path.read_bytes())
    key = b"general.file_type"
    at = data.index(key) + len(key) + 4          # after the key: the value type (u32), then the value
    assert int.from_bytes(data[at - 4:at], "little") == 4    # GGUF u32
    data[at:at + 4] = (39).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert diagnose_model_file(path) is None
    r = subprocess.run([sys.executable, "-c", f"from bitnet_tools import load; load({str(path)!r}, n_ctx=64)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "bitnet.cpp TL2 file" in r.stderr and "--outtype tl2" in r.stderr, r.stderr[-2000:]
    r = run([tools / "llama-completion", "-m", path, "-p", "a", "-n", "1", "-no-cnv"], timeout=120)
    said = r.stdout + r.stderr
    assert r.returncode != 0 and "bitnet.cpp TL2 file" in said and "--outtype tl2" in said, said[-2000:]


def _with_tensor_type(path, name: str, n: int, type_id: int) -> None:
    """Rewrite the type of the 1-D F32 tensor `name` (n values) in the tensor infos of a file."""
    info = struct.pack("<Q", len(name)) + name.encode() + struct.pack("<IQI", 1, n, 0)
    data = path.read_bytes()
    assert data.count(info) == 1
    path.write_bytes(data.replace(info, info[:-4] + struct.pack("<I", type_id)))


@pytest.mark.parametrize("ftype,type_id,match", [
    (38, 38, "bitnet.cpp TL1 file.*--outtype tl1"),               # bitnet.cpp's TL1: its own tensor type 38
    (1, 38, "bitnet.cpp TL1 file.*--outtype tl1"),                # ... even when the header says otherwise
    (1, 250, r"tensors of ggml types \[250\].*bitnet convert"),   # a type nobody knows
])
def test_files_with_unknown_tensor_types_are_refused_by_cause(tmp_path, ftype, type_id, match):
    """The refusal comes from the type ids gguf-py could not read (gguf_adapter.UnknownTensorTypes),
    not from the wording of gguf-py's exception."""
    from bitnet_tools.runtime import ModelError, diagnose_model_file
    shape = dummy.Shape(256, 1, 512, 4, 2, 300)
    path = tmp_path / "unknown-type.gguf"
    write_gguf(path, "bitnet-b1.58", dummy.metadata(shape, "x", ftype),
               [PendingTensor("output_norm.weight", (256,), T.F32, lambda: np.ones(256, np.float32))])
    _with_tensor_type(path, "output_norm.weight", 256, type_id)
    with pytest.raises(ModelError, match=match):
        diagnose_model_file(path)
