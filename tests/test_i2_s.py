"""I2_S: numpy and C agree bit for bit, the kernels agree with the scalar reference, and a file
built byte by byte from the published layout description loads and runs like our own output."""
from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import numpy as np
import pytest

from bitnet_tools import dummy
from bitnet_tools.quants import I2_S, i2_s
from bitnet_tools.writer import PendingTensor, write_gguf
from gguf.constants import GGMLQuantizationType as T

from conftest import ALL_COLUMNS, mul_mat_columns, run


def _c_quantize_i2_s(lib, x: np.ndarray) -> np.ndarray:
    """ggml's quantize_i2_s on a (rows, n) tensor (a 1-D one is one row)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    m, n = (x.shape[0], x.shape[1]) if x.ndim == 2 else (1, x.size)
    out = np.full(i2_s.nbytes((m, n)) + 64, 0xAB, dtype=np.uint8)  # guard bytes after the tensor
    lib.quantize_i2_s.restype = ctypes.c_size_t
    lib.quantize_i2_s.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    assert lib.quantize_i2_s(x.ctypes.data, out.ctypes.data, m, n, None) == m * i2_s.row_bytes(n)
    assert (out[-64:] == 0xAB).all(), "wrote past the tensor"
    return out[:-64]


def _c_dequantize_i2_s(lib, data: np.ndarray, shape) -> np.ndarray:
    m, n = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    out = np.zeros(m * n, dtype=np.float32)
    lib.dequantize_i2_s.restype = None
    lib.dequantize_i2_s.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    lib.dequantize_i2_s(data.ctypes.data, out.ctypes.data, m, n)
    return out.reshape(shape)


def _cases(rng):
    yield rng.standard_normal(128 * 7).astype(np.float32)                        # odd number of groups
    yield (rng.standard_normal((64, 384)) * 3).astype(np.float32)
    yield rng.integers(-1, 2, size=(16, 2560)).astype(np.float32) * np.float32(0.0123)  # already ternary
    yield np.zeros(256, dtype=np.float32)
    yield np.linspace(-1, 1, 1280, dtype=np.float32) ** 3                       # many near-ties
    yield rng.standard_normal((7, 100)).astype(np.float32)                      # rows padded to one group
    yield rng.standard_normal((3, 8640)).astype(np.float32)                     # 3B's FFN: 67.5 groups
    yield rng.standard_normal(200).astype(np.float32)                           # one padded row


def test_numpy_i2_s_is_bit_identical_to_c(ggml_base):
    rng = np.random.default_rng(1)
    for x in _cases(rng):
        mine = I2_S.quantize(x)
        assert mine.tobytes() == _c_quantize_i2_s(ggml_base, x).tobytes(), x.shape
        assert I2_S.dequantize_tensor(mine, x.shape).tobytes() == _c_dequantize_i2_s(ggml_base, mine, x.shape).tobytes()


def test_already_ternary_weights_survive_exactly():
    rng = np.random.default_rng(2)
    for shape in ((8, 512), (5, 8640), (3, 100)):
        w = rng.integers(-1, 2, size=shape).astype(np.float32) * np.float32(0.0371)
        assert np.array_equal(I2_S.dequantize_tensor(I2_S.quantize(w), shape), w)


def test_padded_rows_are_whole_groups_of_zero_weights():
    """A row of 8640 takes 68 groups (68 * 32 bytes); the 64 padding weights are code 1 (zero),
    and each row starts on a group of its own."""
    q = np.ones((2, 8640), dtype=np.int8)
    data = i2_s.pack(q, 1.0)
    assert data.size == 2 * 68 * 32 + 32
    rows = data[:-32].reshape(2, 68, 32)
    last = rows[:, 67]  # elements 8576..8639 (j = 0..63: codes 2) then padding (j = 64..127: codes 1)
    assert (last == (2 << 6 | 2 << 4 | 1 << 2 | 1)).all()
    assert (rows[:, :67] == 0xAA).all()


def test_i2_s_layout_matches_the_description():
    """Element j of group g: byte 32g + j % 32, shift 6 - 2 (j // 32); codes 0/1/2 = -1/0/+1."""
    q = np.random.default_rng(3).integers(-1, 2, size=256).astype(np.int8)
    data = i2_s.pack(q, 0.5)
    for i in range(256):
        g, j = divmod(i, 128)
        assert (data[32 * g + j % 32] >> (6 - 2 * (j // 32))) & 3 == q[i] + 1
    assert data[64:68].view(np.float32)[0] == np.float32(0.5) and data.size == 256 // 4 + 32


def test_i8_s_activations_are_per_row_absmax_int8(ggml_base):
    """BitNet's activation quantization: q = round(x * 127 / max|x|), one scale per row."""
    x = np.random.default_rng(4).standard_normal(1000).astype(np.float32) * 5
    out = np.zeros(1000 + 8, dtype=np.uint8)
    ggml_base.quantize_row_i8_s_ref(x.ctypes.data, out.ctypes.data, x.size)
    iscale = np.float32(127) / np.float32(np.abs(x).max())
    expect = np.clip(np.rint(x * iscale), -128, 127).astype(np.int8)
    assert np.array_equal(out[:1000].view(np.int8), expect)
    assert out[1000:1004].view(np.float32)[0] == np.float32(1) / iscale
    assert out[1004:1008].view(np.int32)[0] == int(expect.astype(np.int32).sum())


@pytest.mark.slow
def test_backend_ops_mul_mat_i2_s(tools):
    """Our GEMV/GEMM kernels against the scalar reference (ggml's use_ref mode) on many shapes."""
    r = run([tools / "test-backend-ops", "test", "-b", "CPU", "-o", "MUL_MAT", "-p", "type_a=i2_s"])
    assert r.returncode == 0, r.stdout[-3000:]
    n_ok = sum(1 for line in r.stdout.splitlines() if "type_a=i2_s" in line and "OK" in line)
    assert n_ok >= 130 and "FAIL" not in r.stdout
    assert mul_mat_columns(r.stdout, "i2_s") >= ALL_COLUMNS


@pytest.mark.slow
def test_backend_ops_q6_k_head_few_columns(tools):
    """The Q6_K head of a batched decode step: where the CPU has AVX2 (AVX-512 VNNI: its own
    version), our kernel for 2..32 columns (it decodes each block once for all of them) against
    ggml's reference, every n (the AVX2 version on AVX-512 hosts: the AVX2-only build test)."""
    check_q6_k_head(tools)


def check_q6_k_head(bindir):
    """test-backend-ops of the Q6_K few-column kernel in the build at `bindir`, where x86 compiles it in."""
    lib = next(bindir.glob("libggml-cpu.so*"))
    flags = open("/proc/cpuinfo").read().split()
    if "avx2" in flags and "fma" in flags:  # compiled in: else ggml's own path runs
        assert "ggml_gemm_q6_k_q8_k" in run(["nm", "-D", lib]).stdout
    r = run([bindir / "test-backend-ops", "test", "-b", "CPU", "-o", "MUL_MAT", "-p", "type_a=q6_K,"])
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout[-3000:]
    assert mul_mat_columns(r.stdout, "q6_K") >= ALL_COLUMNS


@pytest.mark.slow
def test_backend_ops_attention(tools):
    """Attention over F16 caches: where the CPU has AVX-512, our kernels against ggml's reference.
    A decode step (the query heads of a KV head together, 16 cache rows a block): the 2B-4T heads
    in 16 sequences, 1 and 3 query positions. A prompt (16 positions a block, one per lane): 64,
    77 and 100 positions in one or two sequences, and short ones (11-33 positions) whose last
    block of fewer than 11 goes to the few-query kernel. All over the edges around them (partial
    blocks, a group of 4 heads and one of 1, no mask, permuted tensors)."""
    lib = next(tools.glob("libggml-cpu.so.*.*"))
    flags = open("/proc/cpuinfo").read().split()
    if all(f in flags for f in ("avx512f", "avx512dq", "avx512bw", "avx512vl")):  # compiled in: else ggml's own path runs
        symbols = run(["nm", "-D", lib]).stdout
        assert "ggml_bitnet_attn_f16" in symbols and "ggml_bitnet_attn_f16_prompt" in symbols
    r = run([tools / "test-backend-ops", "test", "-b", "CPU", "-o", "FLASH_ATTN_EXT", "-p", "nh=5,"])
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout[-3000:]
    passed = [line for line in r.stdout.splitlines() if "FLASH_ATTN_EXT(" in line and "OK" in line]
    assert sum(",nb=1," in line or ",nb=3," in line for line in passed) >= 49
    assert sum(any(f",nb={n}," in line for n in (64, 77, 100)) for line in passed) >= 50
    assert sum(any(f",nb={n}," in line for n in (11, 12, 20, 27, 33)) for line in passed) >= 20


# ---------------------------------------------------------------- a file made byte by byte

def _gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return _gguf_string(key) + struct.pack("<I", vtype) + payload


def _i2_s_bytes_by_hand(q: np.ndarray, scale: float) -> bytes:
    """Straight from the layout description in docs/i2_s.md, one element at a time."""
    flat = q.reshape(-1)
    codes = bytearray(flat.size // 4)
    for i, v in enumerate(flat):
        g, j = divmod(i, 128)
        codes[32 * g + j % 32] |= (int(v) + 1) << (6 - 2 * (j // 32))
    return bytes(codes) + struct.pack("<f", scale) + bytes(28)


def _write_by_hand(path: Path, shape: dummy.Shape, weights: dict, scale: float):
    """A minimal GGUF v3 writer (no gguf-py), laid out like Microsoft's 2B-4T file:
    arch bitnet-b1.58, bitnet.cpp's file type number for I2_S (40), no output.weight."""
    arch = "bitnet-b1.58"
    tokens, scores, types = dummy.vocab(shape.n_vocab)
    kvs = [
        _kv("general.architecture", 8, _gguf_string(arch)),
        _kv("general.file_type", 4, struct.pack("<I", 40)),
        _kv(f"{arch}.context_length", 4, struct.pack("<I", 512)),
        _kv(f"{arch}.embedding_length", 4, struct.pack("<I", shape.n_embd)),
        _kv(f"{arch}.block_count", 4, struct.pack("<I", shape.n_layer)),
        _kv(f"{arch}.feed_forward_length", 4, struct.pack("<I", shape.n_ff)),
        _kv(f"{arch}.attention.head_count", 4, struct.pack("<I", shape.n_head)),
        _kv(f"{arch}.attention.head_count_kv", 4, struct.pack("<I", shape.n_head_kv)),
        _kv(f"{arch}.rope.freq_base", 6, struct.pack("<f", 500000.0)),
        _kv(f"{arch}.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5)),
        _kv("tokenizer.ggml.model", 8, _gguf_string("llama")),
        _kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(_gguf_string(t) for t in tokens)),
        _kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, len(scores)) + struct.pack(f"<{len(scores)}f", *scores)),
        _kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(types)) + struct.pack(f"<{len(types)}i", *types)),
        _kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1)),
        _kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
    ]
    infos, blobs, offset = [], [], 0
    for name, (kind, value) in weights.items():
        if kind == "i2_s":
            data, gtype = _i2_s_bytes_by_hand(value, scale), 36
        else:
            data, gtype = value.astype("<f4").tobytes(), 0
        dims = value.shape[::-1]
        infos.append(_gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", gtype, offset))
        pad = (-len(data)) % 32
        blobs.append(data + bytes(pad))
        offset += len(data) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += bytes((-len(head)) % 32)
    path.write_bytes(head + b"".join(blobs))


def _tiny_weights(shape: dummy.Shape, seed: int = 5) -> dict:
    """name -> ("i2_s", codes in {-1,0,1}) or ("f32", values), numpy order (rows, width)."""
    rng = np.random.default_rng(seed)
    e, f = shape.n_embd, shape.n_ff
    kv = e // shape.n_head * shape.n_head_kv
    w = {"token_embd.weight": ("f32", rng.standard_normal((shape.n_vocab, e)).astype(np.float32))}
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        for name, n in (("attn_norm", e), ("attn_sub_norm", e), ("ffn_norm", e), ("ffn_sub_norm", f)):
            w[b + name + ".weight"] = ("f32", (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))
        for name, rows, cols in (("attn_q", e, e), ("attn_k", kv, e), ("attn_v", kv, e), ("attn_output", e, e),
                                 ("ffn_gate", f, e), ("ffn_up", f, e), ("ffn_down", e, f)):
            w[b + name + ".weight"] = ("i2_s", rng.integers(-1, 2, size=(rows, cols)).astype(np.int8))
    w["output_norm.weight"] = ("f32", np.ones(e, dtype=np.float32))
    return w


def _logits(path: Path, tokens: list[int]) -> np.ndarray:
    from bitnet_tools import load
    # f32 KV cache and no flash attention: the attention then adds only float32 rounding, so
    # what differs from the reference is the ternary matmul path we are testing
    llm = load(path, n_ctx=64, logits_all=True, type_k=0, type_v=0, flash_attn=False)
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def test_file_built_by_hand_loads_and_matches_our_writer(tmp_path):
    shape = dummy.Shape(256, 2, 512, 4, 2, 300)
    scale = 0.25
    weights = _tiny_weights(shape)
    by_hand = tmp_path / "by-hand-i2_s.gguf"
    _write_by_hand(by_hand, shape, weights, scale)

    def pending(name, kind, value):
        if kind == "i2_s":  # as the converter does: ternary values times the scale, quantized by our class
            return PendingTensor(name, value.shape, T.I2_S, lambda: I2_S.quantize(value.astype(np.float32) * np.float32(scale)))
        return PendingTensor(name, value.shape, T.F32, lambda: value)

    ours = write_gguf(tmp_path / "ours-i2_s.gguf", "bitnet-b1.58", dummy.metadata(shape, "ours", 200),
                      [pending(n, k, v) for n, (k, v) in weights.items()])

    from bitnet_tools import load
    # bitnet.cpp's file type 40 is Q1_0 upstream: the loader must name the type from the tensors
    llm = load(by_hand, n_ctx=64)  # keep the Llama alive while its model is used
    assert "I2_S" in llm._model.desc()

    # our own files carry our file type number: named exactly, not guessed
    llm = load(ours, n_ctx=64)
    desc = llm._model.desc()
    assert "I2_S" in desc and "guessed" not in desc

    tokens = [1, 100, 7, 250, 31, 5, 299, 42]
    a, b = _logits(by_hand, tokens), _logits(ours, tokens)
    assert np.isfinite(a).all() and a.std() > 0
    np.testing.assert_array_equal(a, b)

    # and the graph is the 2B-4T one with I2_S weights: compare with a float reference of the same
    # weights with per-row int8 activations (BitNet's arithmetic) -- computed independently below
    ref = _reference_logits(shape, weights, scale, tokens)
    # observed: max |diff| ~ 2e-7 of max |logit| (float32 vs float64 sums); int8 rounding is exact
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def _rms(x, w, eps=1e-5):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w


def _bitlinear(x, q, scale):
    """y = (q . x_q) * scale / s_x with x_q = round(x * s_x), s_x = 127 / max|x| per row."""
    s = np.float32(127) / np.maximum(np.abs(x).max(-1, keepdims=True), np.float32(1e-5)).astype(np.float32)
    xq = np.clip(np.rint(x.astype(np.float32) * s), -128, 127)
    return (xq.astype(np.float64) @ q.T.astype(np.float64)) / s * scale


def _rope(x, pos, theta=500000.0):
    # the bitnet archs use NEOX rope: element i pairs with i + d/2 (HF's rotate_half)
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def _reference_logits(shape, weights, scale, tokens):
    W = {n: v for n, (k, v) in weights.items()}
    e, nh, nkv = shape.n_embd, shape.n_head, shape.n_head_kv
    hd = e // nh
    T_ = len(tokens)
    pos = np.arange(T_, dtype=np.float64)
    h = W["token_embd.weight"][tokens].astype(np.float64)
    mask = np.triu(np.full((T_, T_), -np.inf), 1)
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        x = _rms(h, W[b + "attn_norm.weight"])
        q = _bitlinear(x, W[b + "attn_q.weight"], scale).reshape(T_, nh, hd)
        k = _bitlinear(x, W[b + "attn_k.weight"], scale).reshape(T_, nkv, hd)
        v = _bitlinear(x, W[b + "attn_v.weight"], scale).reshape(T_, nkv, hd)
        q, k = _rope(q, pos), _rope(k, pos)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(T_, e)
        o = _rms(o, W[b + "attn_sub_norm.weight"])
        h = h + _bitlinear(o, W[b + "attn_output.weight"], scale)
        x = _rms(h, W[b + "ffn_norm.weight"])
        g = _bitlinear(x, W[b + "ffn_gate.weight"], scale)
        u = _bitlinear(x, W[b + "ffn_up.weight"], scale)
        a = np.maximum(g, 0) ** 2 * u
        a = _rms(a, W[b + "ffn_sub_norm.weight"])
        h = h + _bitlinear(a, W[b + "ffn_down.weight"], scale)
    h = _rms(h, W["output_norm.weight"])
    return (h @ W["token_embd.weight"].T.astype(np.float64)).astype(np.float32)


@pytest.mark.slow
def test_llama_quantize_writes_what_our_numpy_writes(tools, tmp_path):
    """llama-quantize accepts I2_S; its tensors are byte-identical to gguf-py + our numpy class."""
    import gguf
    src = dummy.write(tmp_path / "tiny-f32.gguf", "tiny", "f32", embd_type_name="f32")
    dst = tmp_path / "tiny-i2_s.gguf"
    r = run([tools / "llama-quantize", src, dst, "I2_S"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(dst)
    n = 0
    for ta in a.tensors:
        tb = next(t for t in b.tensors if t.name == ta.name)
        if tb.tensor_type == T.I2_S:
            assert tb.n_bytes == i2_s.nbytes(tuple(int(d) for d in tb.shape[::-1]))
            assert np.asarray(tb.data).tobytes() == I2_S.quantize(np.asarray(ta.data, dtype=np.float32)).tobytes(), ta.name
            n += 1
    assert n == 7 * dummy.SHAPES["tiny"].n_layer
    from bitnet_tools import load
    llm = load(dst, n_ctx=64)
    assert "I2_S" in llm._model.desc() and "guessed" not in llm._model.desc()


@pytest.mark.slow
def test_avx2_only_build_passes_the_same_checks():
    """The AVX2 paths (no AVX-512) are compiled and run here too: a second build of the test
    programs with AVX-512 off. Skipped only on CPUs without AVX2, where it cannot run."""
    import platform
    from bitnet_tools import engine
    if platform.machine() not in ("x86_64", "AMD64") or "avx2" not in open("/proc/cpuinfo").read():
        pytest.skip("needs an x86-64 CPU with AVX2")
    bindir = engine.build_test_programs("avx2")
    r = run([bindir / "test-quantize-fns"])
    assert r.returncode == 0, r.stdout[-2000:]
    from bitnet_tools.quants import OURS
    avx2 = [name for name, t in OURS.items() if "avx2" in t.kernels]
    assert avx2, "no type has an AVX2 kernel: nothing here would be tested"
    for name in avx2:  # each AVX2 kernel against the scalar one (a type without one would compare scalar to scalar)
        r = run([bindir / "test-backend-ops", "test", "-b", "CPU", "-o", "MUL_MAT", "-p", f"type_a={name}"])
        assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout[-3000:]
        assert sum(f"type_a={name}," in line and "OK" in line for line in r.stdout.splitlines()) >= 130
        assert mul_mat_columns(r.stdout, name) >= ALL_COLUMNS
    check_q6_k_head(bindir)
    # and this build really has no AVX-512: no zmm register anywhere in its CPU backend
    lib = next(bindir.glob("libggml-cpu.so*"))
    asm = run(["objdump", "-d", "--no-show-raw-insn", lib]).stdout
    assert "%zmm" not in asm
