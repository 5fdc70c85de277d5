"""`bitnet convert FILE.gguf --outtype T`: lossless transcoding between ternary types, the ARM
I2_S layout, and one-line refusals of files that are not what they claim."""
from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import gguf
import pytest
from gguf.constants import GGMLQuantizationType as T

from bitnet_tools import dummy, quants  # noqa: F401  (quants registers our type ids)
from bitnet_tools.convert import ConvertError
from bitnet_tools.transcode import ternary, transcode
from bitnet_tools.writer import PendingTensor, write_gguf

TOKENS = [1, 100, 7, 250, 31, 5, 299, 42]
SHAPE = dummy.Shape(256, 2, 768, 4, 2, 300)


@pytest.fixture(scope="module")
def i2_s_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "tiny-i2_s.gguf"
    dummy.SHAPES["_transcode_test"] = SHAPE
    try:
        return dummy.write(path, "_transcode_test", "i2_s", embd_type_name="q8_0", seed=5)
    finally:
        del dummy.SHAPES["_transcode_test"]


def _tensors(path) -> dict:
    r = gguf.GGUFReader(path)
    return {t.name: t for t in r.tensors}


def _codes(path) -> dict:
    """name -> (codes, scale) of every ternary tensor."""
    return {n: ternary(t) for n, t in _tensors(path).items() if int(t.tensor_type) in
            (*quants.BY_QTYPE, T.TQ1_0, T.TQ2_0)}


def _fields(path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: (f.types, f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")}


def _logits(tools, path, out) -> np.ndarray:
    r = subprocess.run([str(tools / "bitnet-logits"), "-m", str(path), "-t", "2", "-o", str(out),
                        *map(str, TOKENS)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return np.fromfile(out, dtype=np.float32).reshape(len(TOKENS), -1)


def test_round_trip_through_every_type_of_ours_is_byte_identical_with_identical_logits(i2_s_file, tmp_path, tools):
    """I2_S -> TL2 -> TL1 -> I2_S gives back the very same file; every step keeps the codes and the
    scale of every ternary tensor, the other tensors' bytes and all metadata but general.file_type;
    and the engine's logits of all four files are identical (exact integer dots in every kernel)."""
    chain = [i2_s_file]
    for t in ("tl2", "tl1", "i2_s"):
        chain.append(transcode(chain[-1], tmp_path / f"{len(chain)}-{t}.gguf", t))
    assert chain[-1].read_bytes() == i2_s_file.read_bytes()
    codes0, fields0, tensors0 = _codes(i2_s_file), _fields(i2_s_file), _tensors(i2_s_file)
    for path, qtype in zip(chain[1:], (T.TL2, T.TL1, T.I2_S)):
        codes = _codes(path)
        assert codes.keys() == codes0.keys() and len(codes0) == 7 * SHAPE.n_layer
        for name, (q, s) in codes.items():
            assert np.array_equal(q, codes0[name][0]) and s == codes0[name][1], name
            assert _tensors(path)[name].tensor_type == qtype
        for name, t in _tensors(path).items():
            if name not in codes:
                assert t.tensor_type == tensors0[name].tensor_type
                assert np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(tensors0[name].data).view(np.uint8))
        fields = _fields(path)
        assert fields.keys() == fields0.keys()
        assert {k for k in fields if fields[k] != fields0[k]} <= {"general.file_type"}
        assert fields["general.file_type"][1] == {T.I2_S: 200, T.TL1: 201, T.TL2: 202}[qtype]
    logits = [_logits(tools, p, tmp_path / f"{i}.bin") for i, p in enumerate(chain)]
    assert np.isfinite(logits[0]).all() and logits[0].std() > 0
    for other in logits[1:]:
        assert np.array_equal(other, logits[0])


@pytest.mark.parametrize("tq", ["tq2_0", "tq1_0"])
def test_tq_types_keep_the_codes_and_round_the_scale_to_fp16(i2_s_file, tmp_path, tq, caplog):
    out = transcode(i2_s_file, tmp_path / f"m-{tq}.gguf", tq)
    assert "fp16" in caplog.text and "codes are unchanged" in caplog.text
    back = transcode(out, tmp_path / "back-i2_s.gguf", "i2_s")
    codes0 = _codes(i2_s_file)
    for name, (q, s) in _codes(back).items():
        assert np.array_equal(q, codes0[name][0])
        assert s == np.float32(np.float16(codes0[name][1])) and s != codes0[name][1]
    assert {t.tensor_type for n, t in _tensors(out).items() if n in codes0} == {T[tq.upper()]}


def test_widths_tq_cannot_hold_are_written_as_i2_s_and_said(tmp_path, caplog):
    """bitnet_b1_58-3B-like widths: 640-wide rows are 2.5 blocks of 256."""
    shape = dummy.Shape(640, 1, 1728, 8, 8, 300)
    dummy.SHAPES["_w"] = shape
    try:
        src = dummy.write(tmp_path / "w-tl2.gguf", "_w", "tl2", embd_type_name="q8_0")
    finally:
        del dummy.SHAPES["_w"]
    out = transcode(src, tmp_path / "w-tq2_0.gguf", "tq2_0")
    assert "cannot hold rows of 640 values" in caplog.text and "1728" in caplog.text
    types = {n: t.tensor_type for n, t in _tensors(out).items() if n.startswith("blk.")}
    assert {types[f"blk.0.{n}.weight"] for n in ("attn_q", "ffn_up", "ffn_down")} == {T.I2_S}
    codes0 = _codes(src)
    for name, (q, s) in _codes(out).items():
        assert np.array_equal(q, codes0[name][0]) and s == codes0[name][1]


@pytest.mark.parametrize("outtype, dtype", [("f16", np.float16), ("f32", np.float32)])
def test_to_float_types_hold_codes_times_scale(i2_s_file, tmp_path, outtype, dtype):
    out = transcode(i2_s_file, tmp_path / f"m-{outtype}.gguf", outtype)
    tensors = _tensors(out)
    for name, (q, s) in _codes(i2_s_file).items():
        got = np.asarray(tensors[name].data).reshape(q.shape)
        assert got.dtype == dtype and np.array_equal(got, (q.astype(np.float32) * s).astype(dtype))


# ---------------------------------------------------------------- bitnet.cpp's ARM I2_S layout

def _pack_arm64_by_the_description(q: np.ndarray) -> bytes:
    """bitnet.cpp's ARM layout, from its description (flat tensor, groups of 64 elements in 16
    bytes, element j of a group in byte j % 16 at shift 6 - 2 * (j // 16)), element by element."""
    flat = q.reshape(-1).astype(np.int64) + 1
    out = np.zeros(flat.size // 4, dtype=np.uint8)
    k = np.arange(flat.size)
    j = k % 64
    np.bitwise_or.at(out, 16 * (k // 64) + j % 16, (flat << (6 - 2 * (j // 16))).astype(np.uint8))
    return out.tobytes()


def test_arm_layout_files_transcode_back_to_the_original_with_the_flag(i2_s_file, tmp_path):
    """A file as bitnet.cpp's ARM builds write it (same size and header, codes permuted within
    each 128 elements): with --i2s-layout arm64 it becomes the x86-layout file byte for byte.
    Without the flag it reads as valid ternary codes in the wrong places -- nothing in the file
    tells the layouts apart, which is why the flag exists (docs/convert.md)."""
    data = bytearray(i2_s_file.read_bytes())
    for name, t in _tensors(i2_s_file).items():
        if t.tensor_type == T.I2_S:
            q, _ = ternary(t)
            arm = _pack_arm64_by_the_description(q)
            off = int(t.data_offset)
            data[off: off + len(arm)] = arm
    arm_file = tmp_path / "arm-i2_s.gguf"
    arm_file.write_bytes(bytes(data))
    assert arm_file.stat().st_size == i2_s_file.stat().st_size and data != i2_s_file.read_bytes()
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "convert", str(arm_file), "-o", str(tmp_path / "x86.gguf"),
                        "--outtype", "i2_s", "--i2s-layout", "arm64"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x86.gguf").read_bytes() == i2_s_file.read_bytes()
    wrong = transcode(arm_file, tmp_path / "wrong.gguf", "i2_s")
    assert wrong.read_bytes() != i2_s_file.read_bytes()


# ---------------------------------------------------------------- bad input

def _patch_tensor(path, name: str, fn) -> None:
    t = _tensors(path)[name]
    data = bytearray(path.read_bytes())
    off = int(t.data_offset)
    data[off: off + int(t.n_bytes)] = fn(bytes(data[off: off + int(t.n_bytes)]))
    path.write_bytes(bytes(data))


def _with_type(path, name: str, type_id: int) -> None:
    """Rewrite the ggml type of tensor `name` in the tensor infos."""
    t = _tensors(path)[name]
    info = struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(t.shape)) + \
        b"".join(struct.pack("<Q", int(d)) for d in t.shape)
    data = path.read_bytes()
    assert data.count(info) == 1
    i = data.index(info) + len(info)
    path.write_bytes(data[:i] + struct.pack("<I", type_id) + data[i + 4:])


def _nan_scale(b: bytes) -> bytes:
    n = len(b) - 32
    return b[:n] + struct.pack("<f", float("nan")) + b[n + 4:]


BAD = {
    "i2_s code 3": ("i2_s", lambda p: _patch_tensor(p, "blk.0.attn_q.weight", lambda b: b"\xff" + b[1:]),
                    "blk.0.attn_q.weight (I2_S) holds codes that are not ternary"),
    "tl2 index 31": ("tl2", lambda p: _patch_tensor(p, "blk.1.ffn_up.weight", lambda b: b"\xff" * 8 + b[8:]),
                     "blk.1.ffn_up.weight (TL2) holds codes that are not ternary"),
    "tq2_0 code 3": ("tq2_0", lambda p: _patch_tensor(p, "blk.0.ffn_down.weight", lambda b: b"\xff" + b[1:]),
                     "blk.0.ffn_down.weight (TQ2_0) holds values that are not ternary"),
    "nan scale": ("i2_s", lambda p: _patch_tensor(p, "blk.0.attn_k.weight", _nan_scale),
                  "blk.0.attn_k.weight (I2_S) has weight scale nan"),
    "unknown type id": ("i2_s", lambda p: _with_type(p, "blk.0.attn_v.weight", 77),
                        r"ggml types \[77\].*newer bitnet.cpp"),
    "truncated": ("i2_s", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]),
                  "truncated or damaged"),
    "not gguf": ("i2_s", lambda p: p.write_bytes(b"PK\x03\x04" + p.read_bytes()[4:]), "is not a GGUF file"),
    # found by tests/gguf_fuzz.py: numpy warnings on stderr before the error line, and a traceback
    "tq2_0 nan block scale": ("tq2_0", lambda p: _patch_tensor(p, "blk.0.attn_q.weight", lambda b: b[:64] + b"\x00\x7e" + b[66:]),
                              "blk.0.attn_q.weight (TQ2_0) holds values that are not ternary"),
    "architecture not utf-8": ("i2_s", lambda p: p.write_bytes(p.read_bytes().replace(b"bitnet-b1.58", b"bitnet\xffb1.58", 1)),
                               "truncated or damaged"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_one_line_errors_and_nothing_is_written(i2_s_file, tmp_path, case):
    src_type, damage, message = BAD[case]
    src = tmp_path / f"bad-{src_type}.gguf"
    if src_type == "i2_s":
        src.write_bytes(i2_s_file.read_bytes())
    else:
        transcode(i2_s_file, src, src_type)
    damage(src)
    out = tmp_path / "out" / "x.gguf"
    out.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "convert", str(src), "-o", str(out), "--outtype", "tl1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    import re
    assert re.search(message if case == "unknown type id" else re.escape(message), lines[0]), lines[0]
    assert not any(out.parent.iterdir())


def test_a_gguf_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "qwen.gguf"
    write_gguf(path, "qwen3", lambda w: None,
               [PendingTensor("blk.0.attn_q.weight", (256, 256), T.I2_S,
                              lambda: quants.I2_S.quantize(np.ones((256, 256), np.float32)))])
    with pytest.raises(ConvertError, match="is a qwen3 model, not a BitNet b1.58 architecture"):
        transcode(path, tmp_path / "out.gguf", "tl2")
    assert not (tmp_path / "out.gguf").exists()
