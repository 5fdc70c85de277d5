"""The one place that reaches into gguf-py's private parts (pyproject pins gguf>=0.17,<0.20).

gguf-py has no public way to add quant types, to size tensors that are not made of
independent blocks, to stream a tensor's data in pieces, or to read a damaged file safely, so
these hooks use its internals. `check()` asserts that each internal is still what the hooks
expect; the test suite calls it, so a gguf release that moves one fails there, loudly, instead
of writing bad files.
"""
from __future__ import annotations

import enum

import numpy as np
import gguf
import gguf.quants
from gguf.gguf_reader import GGUFReader

# base class of gguf-py's numpy quant classes: subclassing it with qtype=... registers a type
Quant = getattr(gguf.quants, "__Quant")


def add_enum_member(enum_cls: type[enum.IntEnum], name: str, value: int):
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


class UnknownTensorTypes(ValueError):
    """GGUFReader met tensors of ggml types gguf-py (with our types added) does not know. The
    header's key/value fields were read before the tensors: `fields` holds them (name -> field),
    `type_ids` the unknown ids, so callers can say what the file is."""

    def __init__(self, type_ids: list[int], fields: dict):
        super().__init__(f"tensors of unknown ggml types {type_ids}")
        self.type_ids, self.fields = type_ids, fields


def size_tensors_by(nbytes_of: dict) -> None:
    """GGUFReader: give tensors of these types their real bytes, nbytes_of[type](numpy shape)
    (gguf-py derives every size from independent blocks), and raise UnknownTensorTypes for
    type ids it does not know (gguf-py raises a bare ValueError)."""
    build = GGUFReader._build_tensors
    if getattr(build, "bitnet_sizes", None) is not None:
        build.bitnet_sizes.update(nbytes_of)
        return
    sizes = dict(nbytes_of)

    def build_tensors(self, start_offs, fields):
        known = gguf.GGMLQuantizationType._value2member_map_
        unknown = sorted({int(f.parts[4][0]) for f in fields} - set(known))  # parts: name len, name, n_dims, dims, type, offset
        if unknown:
            raise UnknownTensorTypes(unknown, dict(self.fields))
        with np.errstate(over="ignore"):  # a damaged offset wraps around, then fails a bounded read
            build(self, start_offs, fields)
        for i, t in enumerate(self.tensors):
            if t.tensor_type in sizes:
                n = sizes[t.tensor_type](tuple(int(d) for d in reversed(t.shape)))
                self.tensors[i] = t._replace(n_bytes=n, data=self._get(t.data_offset, np.uint8, n))
    build_tensors.bitnet_sizes = sizes
    GGUFReader._build_tensors = build_tensors


def harden_reader() -> None:
    """GGUFReader on a damaged file: reads past the end and nested arrays raise ValueError.
    gguf-py slices its memory map and gets a short (often empty) array back, so an array whose
    length field was damaged makes it loop over that length reading nothing; and it parses
    arrays of arrays item by item in Python (llama.cpp's reader refuses them), which on a
    damaged type field means minutes over a large file."""
    get, field_parts = GGUFReader._get, GGUFReader._get_field_parts
    if getattr(get, "hardened", False):
        return

    def bounded_get(self, offset, dtype, count=1, override_order=None):
        arr = get(self, offset, dtype, count, override_order)
        if len(arr) != int(count):
            raise ValueError(f"a field at byte {offset} runs past the end of the file")
        return arr

    def flat_field_parts(self, orig_offs, raw_type):
        if raw_type == gguf.GGUFValueType.ARRAY and int(bounded_get(self, orig_offs, np.uint32)[0]) == gguf.GGUFValueType.ARRAY:
            raise ValueError(f"the field at byte {orig_offs} is an array of arrays, which GGUF readers do not take")
        return field_parts(self, orig_offs, raw_type)

    bounded_get.hardened = True
    GGUFReader._get, GGUFReader._get_field_parts = bounded_get, flat_field_parts


def data_stream(w: gguf.GGUFWriter):
    """The open file a GGUFWriter writes to, after write_ti_data_to_file(): tensor data is then
    streamed into it piece by piece (GGUFWriter.write_tensor_data takes whole arrays only)."""
    return w.fout[0]


def close_streamed(w: gguf.GGUFWriter) -> None:
    """Close a writer whose tensor data was streamed by hand (it holds no pending tensors)."""
    w.tensors = [{}]
    w.close()


def check() -> None:
    """Assert that every internal used above is still there in the installed gguf."""
    assert isinstance(Quant, type) and hasattr(Quant, "quantize_blocks"), "gguf.quants.__Quant changed"
    for enum_cls in (gguf.GGMLQuantizationType, gguf.LlamaFileType):
        for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
            assert isinstance(getattr(enum_cls, attr, None), (dict, list)), f"{enum_cls.__name__}.{attr} changed"
    assert all(callable(getattr(GGUFReader, f, None)) for f in ("_build_tensors", "_get", "_get_field_parts")), \
        "GGUFReader._build_tensors / _get / _get_field_parts changed"
    w = gguf.GGUFWriter(None, "check")
    assert w.fout is None and w.tensors == [{}], "GGUFWriter.fout / tensors changed"

