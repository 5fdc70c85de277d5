"""Our ternary types in gguf-py: type ids registered with the installed `gguf` package, and one
numpy class per type in the style of gguf-py's quants.py, bit-identical to the C reference.

Importing this module registers the ids (so `gguf.GGUFReader` accepts our files) and the classes
(so `gguf.quants.quantize(data, GGMLQuantizationType.I2_S)` works; TL1/TL2 likewise).
"""
from __future__ import annotations

from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from ..gguf_adapter import add_enum_member, harden_reader, size_tensors_by

# id, (block size, bytes per block) -- must agree with patches/ (ggml.h, ggml.c) and docs/types.md
# One scale per tensor after the codes, I2_S rows padded to whole groups, TL1/TL2 rows interleaved
# in tiles: no (block, bytes) pair gives their size, the numpy classes do. The entries say 0 bytes
# so that gguf-py's own size arithmetic never reads past a tensor.
TYPES = {
    "I2_S": (36, (1, 0)),
    "TL1": (64, (1, 0)),
    "TL2": (65, (1, 0)),
}
FILE_TYPES = {"MOSTLY_I2_S": 200, "MOSTLY_TL1": 201, "MOSTLY_TL2": 202}


def register() -> None:
    for name, (value, sizes) in TYPES.items():
        qtype = add_enum_member(GGMLQuantizationType, name, value)
        GGML_QUANT_SIZES[qtype] = sizes
    for name, value in FILE_TYPES.items():
        add_enum_member(LlamaFileType, name, value)


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
    kernels: tuple          # SIMD kernels beside the scalar reference: "avx512", "avx2", "neon"

    @property
    def qtype(self) -> GGMLQuantizationType:
        return self.quant.qtype

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of this type (shape in numpy order), as ggml_nbytes computes them."""
        return self.quant.nbytes(tuple(shape))


# the registry: writer, convert, dummy, bench, doctor and the tests read it
OURS = {t.name: t for t in (
    Ternary("i2_s", I2_S, FILE_TYPES["MOSTLY_I2_S"], ("avx512", "avx2", "neon")),
    Ternary("tl1", TL1, FILE_TYPES["MOSTLY_TL1"], ("avx512", "avx2", "neon")),
    Ternary("tl2", TL2, FILE_TYPES["MOSTLY_TL2"], ("avx512", "avx2")),
)}
BY_QTYPE = {t.qtype: t for t in OURS.values()}


# GGUFReader sizes tensors from blocks: it is told the real sizes of ours
size_tensors_by({t.qtype: t.nbytes for t in OURS.values()})
harden_reader()

__all__ = ["I2_S", "TL1", "TL2", "OURS", "BY_QTYPE", "Ternary", "register", "TYPES"]
