"""TL1 and TL2: ternary lookup-table types, 16-row tiles, one float32 scale per tensor.

Layout (patches/files/ggml/src/ggml-bitnet.h, docs/tl.md): each row is cut into groups of g
weights (TL1 g = 2, TL2 g = 3), zero-padded to chunks of 4 groups; a group's code is its trits
as a base-3 number, most significant first (TL1: 3*(t0+1) + (t1+1), 4 bits; TL2: 5 bits).
Rows are stored in tiles of 16 (the last tile holds the rest, h < 16). A chunk of a tile is
4h lanes, lane 4*i + j = row i, group j: 2h bytes of low nibbles (byte b: lane b, lane b + 2h
in the high half), then for TL2 bit 4 of every lane, packed little-endian (ceil(h/2) bytes).
After all tiles: a 32-byte tail with the float32 scale.

Mirrors quantize_tl / dequantize_tl in ggml-bitnet.c bit for bit (the ternarization is I2_S's).
"""
from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType

from ..gguf_adapter import Quant as _Quant

from .i2_s import TAIL, tail, ternarize

TILE = 16   # rows per tile
CHUNK = 4   # groups per chunk



class _TL:
    """What TL1 and TL2 share; the subclasses register with gguf-py."""
    group: int       # weights per group
    high_bit: bool   # codes have a fifth bit, stored apart from the nibbles

    @classmethod
    def chunks(cls, n_per_row: int) -> int:
        return -(-n_per_row // (cls.group * CHUNK))

    @classmethod
    def chunk_bytes(cls, h: int) -> int:
        return 2 * h + ((h + 1) // 2 if cls.high_bit else 0)

    @classmethod
    def nbytes(cls, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor (numpy order shape) as ggml_nbytes computes them, tail included."""
        k = shape[-1]
        m = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        nc = cls.chunks(k)
        return (m // TILE) * nc * cls.chunk_bytes(TILE) + nc * cls.chunk_bytes(m % TILE) + TAIL

    @classmethod
    def codes(cls, q: np.ndarray) -> np.ndarray:
        """Trits (m, k) in {-1, 0, 1} -> codes (m, groups) of the zero-padded groups."""
        m, k = q.shape
        digits = np.ones((m, cls.chunks(k) * CHUNK * cls.group), dtype=np.uint8)  # padding: zero weights
        digits[:, :k] = q.astype(np.uint8) + 1
        digits = digits.reshape(m, -1, cls.group)
        codes = digits[..., 0].copy()
        for p in range(1, cls.group):  # base 3, most significant first (codes < 27 fit a byte)
            codes *= 3
            codes += digits[..., p]
        return codes

    @classmethod
    def _pack_tiles(cls, codes: np.ndarray, h: int) -> np.ndarray:
        """Codes of t tiles of h rows, (t*h, groups) -> their bytes, tile after tile."""
        t = codes.shape[0] // h
        nc = codes.shape[1] // CHUNK
        lanes = codes.reshape(t, h, nc, CHUNK).transpose(0, 2, 1, 3).reshape(t, nc, CHUNK * h)
        nib = (lanes[..., : 2 * h] & 0x0F) | ((lanes[..., 2 * h:] & 0x0F) << 4)
        parts = [nib]
        if cls.high_bit:
            parts.append(np.packbits((lanes >> 4) & 1, axis=-1, bitorder="little"))
        return np.concatenate(parts, axis=-1).reshape(-1)

    @classmethod
    def pack_codes(cls, q: np.ndarray) -> np.ndarray:
        """Trits (m, k) -> their tiles' bytes, no tail. Tiles are independent, so a tensor may be
        packed in slices of whole tiles (multiples of 16 rows) and the bytes concatenated."""
        c = cls.codes(q)
        full = c.shape[0] // TILE * TILE
        parts = [cls._pack_tiles(c[:full], TILE)]
        if full < c.shape[0]:
            parts.append(cls._pack_tiles(c[full:], c.shape[0] - full))
        return np.concatenate(parts)

    @classmethod
    def pack(cls, q: np.ndarray, scale: float) -> np.ndarray:
        """Trits (m, k) and the scale -> the whole tensor's bytes."""
        return np.concatenate([cls.pack_codes(q), tail(scale)])

    @classmethod
    def unpack(cls, data: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.float32]:
        """Bytes of an (m, k) tensor -> (trits (m, k) as int8, scale)."""
        m, k = shape
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        nc = cls.chunks(k)
        rows = []
        pos = 0
        for h in [TILE] * (m // TILE) + ([m % TILE] if m % TILE else []):
            size = nc * cls.chunk_bytes(h)
            chunk = data[pos: pos + size].reshape(nc, cls.chunk_bytes(h))
            pos += size
            nib = chunk[:, : 2 * h]
            lanes = np.concatenate([nib & 0x0F, nib >> 4], axis=-1)
            if cls.high_bit:
                bits = np.unpackbits(chunk[:, 2 * h:], axis=-1, bitorder="little")[:, : CHUNK * h]
                lanes = lanes | (bits << 4)
            rows.append(lanes.reshape(nc, h, CHUNK).transpose(1, 0, 2).reshape(h, nc * CHUNK))
        codes = np.concatenate(rows).astype(np.int16)
        digits = [(codes // 3 ** (cls.group - 1 - p)) % 3 for p in range(cls.group)]
        q = (np.stack(digits, axis=-1).reshape(m, -1)[:, :k] - 1).astype(np.int8)
        scale = data[pos: pos + 4].view(np.float32)[0]
        return q, scale

    @classmethod
    def quantize(cls, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data, dtype=np.float32)
        m = int(np.prod(data.shape[:-1])) if data.ndim > 1 else 1
        q, scale = ternarize(data)
        return cls.pack(q.reshape(m, data.shape[-1]), scale)

    @classmethod
    def dequantize_tensor(cls, data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        q, scale = cls.unpack(data, shape)
        return q.astype(np.float32) * scale

    @classmethod
    def dequantize(cls, data: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{cls.__name__} tiles interleave rows: use dequantize_tensor(data, shape)")

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{cls.__name__} has one scale per tensor: use quantize on the whole tensor")

    @classmethod
    def dequantize_blocks(cls, blocks: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{cls.__name__} has one scale per tensor: use dequantize_tensor")


class TL1(_TL, _Quant, qtype=GGMLQuantizationType.TL1):
    group = 2
    high_bit = False


class TL2(_TL, _Quant, qtype=GGMLQuantizationType.TL2):
    group = 3
    high_bit = True
