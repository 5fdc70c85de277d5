"""Streaming GGUF output shared by the converter and the dummy-model generator.

Tensor infos are declared first (name, shape, type, byte size); then the data is written one
tensor at a time, so peak memory is about one tensor. The file is written under a temporary
name next to the target and renamed only when complete: an interrupted run leaves no file
that looks valid.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from . import quants
from .quants import i2_s

# output types a ternary weight can be written as, by the names users type
TERNARY_TYPES = {
    "f32": T.F32, "f16": T.F16, "bf16": T.BF16,
    "tq1_0": T.TQ1_0, "tq2_0": T.TQ2_0, "i2_s": T.I2_S, "tl1": T.TL1, "tl2": T.TL2,
}
# general.file_type of a file whose ternary weights are of that type
FILE_TYPES = {
    T.F32: gguf.LlamaFileType.ALL_F32, T.F16: gguf.LlamaFileType.MOSTLY_F16,
    T.BF16: gguf.LlamaFileType.MOSTLY_BF16, T.TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0,
    T.TQ2_0: gguf.LlamaFileType.MOSTLY_TQ2_0, T.I2_S: gguf.LlamaFileType.MOSTLY_I2_S,
    T.TL1: gguf.LlamaFileType.MOSTLY_TL1, T.TL2: gguf.LlamaFileType.MOSTLY_TL2,
}
# whole-tensor types whose encoder is ours (one scale per tensor)
_OWN = {T.I2_S: quants.I2_S, T.TL1: quants.TL1, T.TL2: quants.TL2}
# types for the token embedding / output head
EMBEDDING_TYPES = {"f32": T.F32, "f16": T.F16, "q8_0": T.Q8_0, "q6_k": T.Q6_K, "q4_0": T.Q4_0}


def tensor_nbytes(shape: tuple[int, ...], qtype: T) -> int:
    """Bytes of a tensor as ggml_nbytes computes them (shape in numpy order)."""
    n = int(np.prod(shape))
    if qtype == T.I2_S:
        return i2_s.nbytes(n)
    if qtype in (T.TL1, T.TL2):
        return _OWN[qtype].nbytes(shape)
    block, size = GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise ValueError(f"rows of {shape[-1]} values are not a multiple of {qtype.name}'s block of {block}")
    return n // block * size


def encode(values: np.ndarray, qtype: T) -> np.ndarray:
    """float values (numpy order) -> the bytes of a `qtype` tensor."""
    if qtype == T.F32:
        return values.astype(np.float32, copy=False)
    if qtype == T.F16:
        return values.astype(np.float16)
    if qtype in _OWN:
        return _OWN[qtype].quantize(values)
    return gguf.quants.quantize(values.astype(np.float32, copy=False), qtype)


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
            # a non-uint8 dtype makes gguf-py keep our element shape as given
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), tensor_nbytes(t.shape, t.qtype), raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
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
        w.tensors = [{}]  # all data written by hand above
        w.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
