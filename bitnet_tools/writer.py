"""Streaming GGUF output shared by the converter and the dummy-model generator.

Tensor infos are declared first (name, shape, type, byte size); then the data is written one
tensor at a time, so peak memory is about one tensor. The file is written under a temporary
name next to the target and renamed only when complete: an interrupted run leaves no file
that looks valid.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from . import engine, quants
from .gguf_adapter import close_streamed, data_stream

# output types a ternary weight can be written as, by the names users type: ours (the registry,
# quants.OURS) and llama.cpp's own
TERNARY_TYPES = {"f32": T.F32, "f16": T.F16, "bf16": T.BF16, "tq1_0": T.TQ1_0, "tq2_0": T.TQ2_0,
                 **{name: t.qtype for name, t in quants.OURS.items()}}
# general.file_type of a file whose ternary weights are of that type
FILE_TYPES = {
    T.F32: gguf.LlamaFileType.ALL_F32, T.F16: gguf.LlamaFileType.MOSTLY_F16,
    T.BF16: gguf.LlamaFileType.MOSTLY_BF16, T.TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0,
    T.TQ2_0: gguf.LlamaFileType.MOSTLY_TQ2_0,
    **{t.qtype: gguf.LlamaFileType(t.file_type) for t in quants.OURS.values()},
}
# types for the token embedding / output head
EMBEDDING_TYPES = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q6_k": T.Q6_K, "q4_0": T.Q4_0}
# types gguf-py (with our classes) encodes in numpy; the others go through ggml_quantize_chunk
NUMPY_QUANTS = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.TQ1_0, T.TQ2_0, *quants.BY_QTYPE}
ROW_CHUNK = 1 << 22  # elements encoded at a time for row-chunked types


def row_block(qtype: T) -> int:
    """Row widths of a `qtype` tensor must be a multiple of this: its block for llama.cpp's own
    types; ours take any width (I2_S rows padded to whole groups, TL rows to whole chunks)."""
    return 1 if qtype in quants.BY_QTYPE else GGML_QUANT_SIZES[qtype][0]


def fits(width: int, qtype: T) -> bool:
    """Whether rows of `width` values can be stored as `qtype`."""
    return width % row_block(qtype) == 0


def ternary_type_for(width: int, qtype: T) -> T:
    """The type a BitLinear weight with rows of `width` is written as in a `qtype` file: `qtype`
    where it holds the rows; else (llama.cpp's TQ1_0/TQ2_0, blocks of 256) I2_S, which holds any
    width -- still ternary and computed with int8 per-token activations, never f16."""
    return qtype if fits(width, qtype) else quants.OURS["i2_s"].qtype


def embedding_type(requested: str | None, width: int, preferred: str) -> tuple[T, str | None]:
    """(type, note) of a token embedding / output head with rows of `width`. A requested type
    must hold the rows (ValueError naming the ones that do); without one, `preferred`, or where
    its blocks cannot hold the rows the first of q8_0, f16 that can, with a note saying so."""
    if requested is not None:
        t = EMBEDDING_TYPES[requested]
        if not fits(width, t):
            ok = ", ".join(n for n, q in EMBEDDING_TYPES.items() if fits(width, q))
            raise ValueError(f"token embedding rows of {width} values are not a multiple of {requested}'s block of "
                             f"{row_block(t)}: choose one of {ok}")
        return t, None
    t = EMBEDDING_TYPES[preferred]
    if fits(width, t):
        return t, None
    alt = next(n for n in ("q8_0", "f16") if fits(width, EMBEDDING_TYPES[n]))
    return EMBEDDING_TYPES[alt], (f"{preferred} cannot hold token embedding rows of {width} values "
                                  f"(blocks of {row_block(t)}): writing it as {alt}")


def file_type(tensors: Iterable["PendingTensor"]) -> int:
    """general.file_type of a file: that of the type holding most of its matrix weights (the
    2-D tensors other than the token embedding and output head) -- I2_S, not TQ2_0, for a
    "TQ2_0" 3B file whose every row needed I2_S."""
    weights: dict[T, int] = {}
    for t in tensors:
        if len(t.shape) == 2 and t.name not in ("token_embd.weight", "output.weight"):
            weights[t.qtype] = weights.get(t.qtype, 0) + int(np.prod(t.shape))
    return int(FILE_TYPES[max(weights, key=weights.get)])


def tensor_nbytes(shape: tuple[int, ...], qtype: T) -> int:
    """Bytes of a tensor as ggml_nbytes computes them (shape in numpy order)."""
    if not fits(shape[-1], qtype):  # nothing is written that llama.cpp would refuse to load
        raise ValueError(f"rows of {shape[-1]} values are not a multiple of {qtype.name}'s block of {row_block(qtype)}")
    if qtype in quants.BY_QTYPE:
        return quants.BY_QTYPE[qtype].nbytes(shape)
    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) // block * size


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """float values (numpy order) -> the bytes of a `qtype` tensor. Our types hold one scale per
    tensor (and TL tiles span rows), so they are encoded whole, never in row chunks."""
    if qtype == T.F32:
        return values.astype(np.float32, copy=False)
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype in quants.BY_QTYPE:
        return quants.BY_QTYPE[qtype].quant.quantize(values)
    if qtype not in NUMPY_QUANTS:
        return ggml_quantize(values, qtype)
    return gguf.quants.quantize(values.astype(np.float32, copy=False), qtype)


def encode_rows(values: np.ndarray, qtype: T):
    """Encode a 2-D float tensor in row chunks (yields byte arrays); our types whole."""
    if qtype in quants.BY_QTYPE:
        yield encode(values, qtype)
        return
    rows, cols = values.shape
    per = max(1, ROW_CHUNK // max(cols, 1))
    for r0 in range(0, rows, per):
        yield encode(values[r0:r0 + per], qtype)


_GGML = None


def ggml_quantize(values: np.ndarray, qtype: T) -> np.ndarray:
    """float32 [rows, cols] -> the bytes of a `qtype` tensor, by the engine's ggml_quantize_chunk
    (stock k-quants: gguf-py has no numpy Q6_K quantizer)."""
    global _GGML
    if _GGML is None:
        try:
            lib = engine.ggml_base_library()
        except ImportError as e:
            raise engine.EngineError(f"quantizing to {qtype.name} needs the engine (import llama_cpp failed: {e}): "
                                     "run 'bitnet setup', or choose --embd-type f16/q8_0") from e
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        _GGML = lib
    src = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = src.shape
    dst = np.empty(_GGML.ggml_row_size(int(qtype), cols) * rows, dtype=np.uint8)
    n = _GGML.ggml_quantize_chunk(int(qtype), src.ctypes.data, dst.ctypes.data, 0, rows, cols, None)
    if n != dst.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {dst.nbytes}")
    return dst


@dataclass
class PendingTensor:
    name: str
    shape: tuple[int, ...]          # numpy order: (rows, row width)
    qtype: T
    # returns the encoded data: one array, or an iterator of arrays written one after another
    # (so a tensor larger than memory can be streamed)
    produce: Callable[[], np.ndarray | Iterable[np.ndarray]]


def write_gguf(path: Path, arch: str, kv: Callable[[gguf.GGUFWriter], None],
               tensors: Iterable[PendingTensor], progress: Callable[[str], None] | None = None) -> Path:
    """Write a GGUF file atomically. `kv` adds the metadata; tensors are produced one by one."""
    path = Path(path)
    tensors = list(tensors)
    if len({t.name for t in tensors}) != len(tensors):
        raise ValueError("duplicate tensor names")
    tmp = path.with_name(f".{path.name}.partial")
    try:
        w = gguf.GGUFWriter(tmp, arch, use_temp_file=False)
        kv(w)
        for t in tensors:
            try:
                nbytes = tensor_nbytes(t.shape, t.qtype)
            except ValueError as e:
                raise ValueError(f"{t.name}: {e}: choose another type (tl1 and tl2 take any row width)") from None
            # a non-uint8 dtype makes gguf-py keep our element shape as given
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = data_stream(w)
        for t in tensors:
            data = t.produce()
            chunks = [data] if isinstance(data, np.ndarray) else data
            w.write_padding(fout, fout.tell())
            written = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk)
                chunk.tofile(fout)
                written += chunk.nbytes
            expected = tensor_nbytes(t.shape, t.qtype)
            if written != expected:
                raise ValueError(f"{t.name}: produced {written} bytes, expected {expected}")
            w.write_padding(fout, written)
            if progress:
                progress(t.name)
        close_streamed(w)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
