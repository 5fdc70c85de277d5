"""I2_S: 2-bit ternary codes in bitnet.cpp's x86 layout with one float32 scale per tensor.

Layout (see patches/files/ggml/src/ggml-bitnet.h): each row is cut into groups of 128 elements,
32 bytes each; element j of a group sits in byte j % 32 at bit shift 6 - 2 * (j // 32); codes
0/1/2 mean -1/0/+1; after the code bytes, a 32-byte tail holding the float32 scale. A row whose
width is not a multiple of 128 is padded with zero weights to whole groups (our extension; for
multiples of 128, the layout of bitnet.cpp's files, nothing changes).

Mirrors quantize_i2_s / dequantize_i2_s in ggml-bitnet.c bit for bit: sums are sequential in
float64 (np.cumsum, like the C loop), the division x / s is float32, rounding is half-to-even
(np.rint, like nearbyintf).
"""
from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from ..gguf_adapter import Quant as _Quant

QK = 128          # elements per group
GROUP_B = 32      # bytes per group
TAIL = 32         # bytes after the codes
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 4, 1)


def row_bytes(n: int) -> int:
    """Bytes of one row of n weights: whole groups, the last one zero-padded."""
    return -(-n // QK) * GROUP_B


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, width) of a tensor in numpy order; a 1-D tensor is one row."""
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1, int(shape[-1])


def nbytes(shape: tuple[int, ...]) -> int:
    """Bytes of an I2_S tensor (codes + tail), as ggml_nbytes computes them."""
    m, n = _rows(shape)
    return m * row_bytes(n) + TAIL


def _sequential_sum(values: np.ndarray) -> float:
    return float(np.cumsum(values, dtype=np.float64)[-1]) if values.size else 0.0


def ternarize(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """float32 values -> (codes q in {-1, 0, 1} as int8, stored scale), as the C reference."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    ax = np.abs(x.astype(np.float64))
    s = np.float32(_sequential_sum(ax) / x.size) if x.size else np.float32(0)
    if s > 0:
        q = np.clip(np.rint(x / s), -1, 1).astype(np.int8)
    else:
        q = np.zeros(x.size, dtype=np.int8)
    nz = q != 0
    n_nz = int(nz.sum())
    scale = np.float32(_sequential_sum(np.where(nz, ax, 0.0)) / n_nz) if n_nz else np.float32(0)
    return q, scale


def pack_codes(q: np.ndarray) -> np.ndarray:
    """Codes in {-1, 0, 1}, (rows, n) or one row -> the code bytes (no tail). Rows are
    independent, so a tensor may be packed in slices of rows and the bytes concatenated."""
    q = np.asarray(q, dtype=np.int8)
    q = q.reshape(_rows(q.shape))
    pad = -q.shape[1] % QK
    if pad:
        q = np.pad(q, ((0, 0), (0, pad)))
    c = (q.reshape(-1, 4, 32) + 1).astype(np.uint8) << _SHIFTS
    return (c[:, 0] | c[:, 1] | c[:, 2] | c[:, 3]).reshape(-1)


def tail(scale: float) -> np.ndarray:
    """The 32 bytes after the codes: the float32 scale, then zeros."""
    t = np.zeros(TAIL, dtype=np.uint8)
    t[:4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return t


def pack(q: np.ndarray, scale: float) -> np.ndarray:
    """Codes in {-1, 0, 1} and a scale -> the whole I2_S tensor's bytes."""
    return np.concatenate([pack_codes(q), tail(scale)])


def unpack(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.float32]:
    """I2_S bytes of a tensor of this shape -> (codes in {-1, 0, 1} as int8, same shape; scale)."""
    m, n = _rows(shape)
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    codes = data[: m * row_bytes(n)].reshape(-1, 1, 32)
    q = ((codes >> _SHIFTS) & 3).astype(np.int8).reshape(m, -1)[:, :n] - np.int8(1)
    scale = data[m * row_bytes(n): m * row_bytes(n) + 4].view(np.float32)[0]
    return q.reshape(shape), scale


def unpack_arm64(data: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.float32]:
    """Like `unpack`, for files made by bitnet.cpp's ARM builds since Nov 2025: the flat tensor is
    cut into groups of 64 elements, 16 bytes each; element j of a group sits in byte j % 16 at
    shift 6 - 2 * (j // 16). Same size and tail as the x86 layout, and no marker in the file."""
    m, n = _rows(shape)
    if (m * n) % 64:
        raise ValueError(f"{m * n} elements are not whole groups of 64: not an ARM-layout I2_S tensor")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    codes = data[: m * n // 4].reshape(-1, 1, 16)
    q = ((codes >> _SHIFTS) & 3).astype(np.int8).reshape(m, n) - np.int8(1)
    scale = data[m * n // 4: m * n // 4 + 4].view(np.float32)[0]
    return q.reshape(shape), scale


def pack_codes_arm64(q: np.ndarray) -> np.ndarray:
    """The code bytes of `unpack_arm64`'s layout (to check a file read in it is canonical)."""
    c = (np.asarray(q, dtype=np.int8).reshape(-1, 4, 16) + 1).astype(np.uint8) << _SHIFTS
    return (c[:, 0] | c[:, 1] | c[:, 2] | c[:, 3]).reshape(-1)


class I2_S(_Quant, qtype=GGMLQuantizationType.I2_S):
    """Whole-tensor quantizer: the scale is per tensor, so there are no independent blocks."""

    pack_codes = staticmethod(pack_codes)  # codes alone, the per-tensor tail written after them
    pack = staticmethod(pack)
    unpack = staticmethod(unpack)

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        return nbytes(tuple(shape))

    @classmethod
    def quantize(cls, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data, dtype=np.float32)
        q, scale = ternarize(data)
        return pack(q.reshape(_rows(data.shape)), scale)

    @classmethod
    def dequantize_tensor(cls, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        q, scale = unpack(data, tuple(shape))
        return q.astype(np.float32) * scale

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        raise NotImplementedError("I2_S rows are padded to whole groups: use dequantize_tensor(data, shape)")

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError("I2_S has one scale per tensor: use I2_S.quantize on the whole tensor")

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError("I2_S has one scale per tensor: use I2_S.dequantize_tensor")
