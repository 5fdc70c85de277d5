"""Our ternary types in gguf-py: type ids registered with the installed `gguf` package, and one
numpy class per type in the style of gguf-py's quants.py, bit-identical to the C reference.

Importing this module registers the ids (so `gguf.GGUFReader` accepts our files) and the classes
(so `gguf.quants.quantize(data, GGMLQuantizationType.I2_S)` works).
"""
from __future__ import annotations

import gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# id, (block size, bytes per block) -- must agree with patches/ (ggml.h, ggml.c) and docs/types.md
TYPES = {
    "I2_S": (36, (128, 32)),
}
FILE_TYPES = {"MOSTLY_I2_S": 200}


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

from .i2_s import I2_S  # noqa: E402  (needs the registered id)

__all__ = ["I2_S", "register", "TYPES"]
