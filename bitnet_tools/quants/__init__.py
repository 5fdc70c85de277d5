"""Our ternary types in gguf-py: type ids registered with the installed `gguf` package, and one
numpy class per type in the style of gguf-py's quants.py, bit-identical to the C reference.

Importing this module registers the ids (so `gguf.GGUFReader` accepts our files) and the classes
(so `gguf.quants.quantize(data, GGMLQuantizationType.I2_S)` works; TL1/TL2 likewise).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# id, (block size, bytes per block) -- must agree with patches/ (ggml.h, ggml.c) and docs/types.md
# TL1/TL2 interleave rows in tiles, so no (block, bytes) pair gives their size: quants.tl does,
# and the entry says 0 bytes so that gguf-py's own size arithmetic never reads past a tensor
TYPES = {
    "I2_S": (36, (128, 32)),
    "TL1": (64, (1, 0)),
    "TL2": (65, (1, 0)),
}
FILE_TYPES = {"MOSTLY_I2_S": 200, "MOSTLY_TL1": 201, "MOSTLY_TL2": 202}


def _add_member(enum_cls, name: str, value: int):
    """Add a member to an IntEnum that was not written with it (gguf-py's type and ftype enums)."""
    if name in enum_cls.__members__:
        return enum_cls[name]
    if value in enum_cls._value2member_map_:
        raise ValueError(f"{enum_cls.__name__} already has value {value} "
                         f"({enum_cls._value2member_map_[value].name}); cannot register {name}")
    member = int.__new__(enum_cls, value)
    member._name_, member._value_ = name, value
    member.__objclass__ = enum_cls
    member.__init__(value)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)
    type.__setattr__(enum_cls, name, member)
    return member


def register() -> None:
    for name, (value, sizes) in TYPES.items():
        qtype = _add_member(GGMLQuantizationType, name, value)
        GGML_QUANT_SIZES[qtype] = sizes
    for name, value in FILE_TYPES.items():
        _add_member(LlamaFileType, name, value)


register()

from . import i2_s  # noqa: E402  (needs the registered ids)
from .i2_s import I2_S  # noqa: E402
from .tl import TL1, TL2  # noqa: E402


@dataclass(frozen=True)
class Ternary:
    """One of our ternary types: everything the package needs to know of it, in one place."""
    name: str               # the name users type (-q, --outtype)
    quant: type             # numpy class, bit-identical to the C reference
    file_type: int          # llama ftype of a file whose ternary weights are of this type
    row_multiple: int       # row widths must be a multiple of this (TL rows are zero-padded: 1)
    kernels: tuple          # SIMD kernels beside the scalar reference: "avx512", "avx2", "neon"

    @property
    def qtype(self) -> GGMLQuantizationType:
        return self.quant.qtype

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of this type (shape in numpy order), as ggml_nbytes computes them."""
        return self.quant.nbytes(tuple(shape))


# the registry: writer, convert, dummy, bench, doctor and the tests read it
OURS = {t.name: t for t in (
    Ternary("i2_s", I2_S, FILE_TYPES["MOSTLY_I2_S"], i2_s.QK, ("avx512", "avx2", "neon")),
    Ternary("tl1", TL1, FILE_TYPES["MOSTLY_TL1"], 1, ("avx512", "neon")),
    Ternary("tl2", TL2, FILE_TYPES["MOSTLY_TL2"], 1, ("avx512", "avx2")),
)}
BY_QTYPE = {t.qtype: t for t in OURS.values()}


def _reader_sizes_tiles() -> None:
    """GGUFReader: give TL1/TL2 tensors their real bytes (gguf-py derives sizes from blocks)."""
    from gguf.gguf_reader import GGUFReader
    build = GGUFReader._build_tensors
    if getattr(build, "bitnet_tiles", False):
        return
    tiled = {GGMLQuantizationType.TL1: TL1, GGMLQuantizationType.TL2: TL2}

    def build_tensors(self, start_offs, fields):
        build(self, start_offs, fields)
        for i, t in enumerate(self.tensors):
            if t.tensor_type in tiled:
                n = tiled[t.tensor_type].nbytes(tuple(int(d) for d in reversed(t.shape)))
                self.tensors[i] = t._replace(n_bytes=n, data=self._get(t.data_offset, np.uint8, n))
    build_tensors.bitnet_tiles = True
    GGUFReader._build_tensors = build_tensors


_reader_sizes_tiles()

__all__ = ["I2_S", "TL1", "TL2", "OURS", "BY_QTYPE", "Ternary", "register", "TYPES"]
