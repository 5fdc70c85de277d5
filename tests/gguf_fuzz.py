"""A structured GGUF fuzzer for the patched engine: mutate tiny seed models, load each mutant in
a forked child and classify what happened.

    python tests/gguf_fuzz.py --files 20000 --seed 1 --jobs 2 --out fuzz.json --keep DIR
    python tests/gguf_fuzz.py --seed 1 --first 712 --files 1 --write DIR   # rebuild file 712 only
    python tests/gguf_fuzz.py ... --target engine   # llama_cpp.Llama without runtime.load's checks

Seeds are dummy models (one layer, 260 tokens) of I2_S, TL1, TL2 and llama.cpp's TQ2_0. Each
file gets one mutation of one class (CLASSES), picked by a random.Random seeded with
(--seed, file index), so any file can be rebuilt alone from its index (`case`, or --first N
--files 1). A child loads the file with bitnet_tools.runtime.load, evaluates a prompt and one
generated token and checks the logits; the parent waits with a timeout and classifies:

    ok     loaded, ran, logits finite
    error  a Python exception (a refused file: what we want from a broken one)
    wrong  loaded and ran, but the logits were not finite (or all equal: see _check_logits)
    crash  killed by a signal, or exited outside the protocol (no report on the pipe)
    hang   still running at the timeout (its process group is SIGKILLed)

A crash's message is the signal and the engine's last words on stderr (GGML_ASSERT lines,
uncaught C++ exceptions), so crashes can be grouped by signature.
"""
from __future__ import annotations

import faulthandler
import json
import math
import os
import re
import resource
import select
import signal
import struct
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from random import Random
from typing import Callable, Iterable, Iterator

import numpy as np

if __name__ == "__main__":  # run as a script: this checkout's bitnet_tools, not another install's
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFValueType as V

from bitnet_tools import dummy, quants, runtime

# ---------------------------------------------------------------------------------------------
# Seeds

SEED_TYPES = ("i2_s", "tl1", "tl2", "tq2_0")
SEED_LAYERS = 1
SEED_VOCAB = 260  # dummy.write's minimum: 3 specials and the 256 byte tokens


def make_seeds(directory: Path, types: Iterable[str] = SEED_TYPES) -> dict[str, bytes]:
    """The seed files' bytes by type name; written once into `directory` and reused."""
    seeds = {}
    for name in types:
        if name not in dummy.TERNARY_TYPES:
            raise ValueError(f"unknown seed type {name!r}: choose from {', '.join(dummy.TERNARY_TYPES)}")
        path = Path(directory) / f"seed-{name}.gguf"
        if not path.exists():
            dummy.write(path, "tiny", name, n_layer=SEED_LAYERS, n_vocab=SEED_VOCAB, note=lambda _: None)
        seeds[name] = path.read_bytes()
    return seeds


# ---------------------------------------------------------------------------------------------
# Parser: every field with its offset, so that mutations can be written as bytes

# struct formats of the scalar value types; bool is read as a byte so that any value shows
SCALAR = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
          V.FLOAT32: "f", V.BOOL: "B", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
TYPE_NAMES = {V.UINT8: "u8", V.INT8: "i8", V.UINT16: "u16", V.INT16: "i16", V.UINT32: "u32", V.INT32: "i32",
              V.FLOAT32: "f32", V.BOOL: "bool", V.STRING: "str", V.ARRAY: "arr", V.UINT64: "u64", V.INT64: "i64",
              V.FLOAT64: "f64"}
DEFAULT_ALIGNMENT = 32


@dataclass
class Str:
    off: int          # of the u64 length; the bytes follow
    text: bytes


@dataclass
class KV:
    key: Str
    type_off: int     # of the u32 value type
    vtype: int
    value_off: int    # of the value; for an array, of its u32 element type
    value: object     # int / float / bytes (a string) / list (an array's items)
    end: int
    # arrays only
    elem_type: int | None = None
    count_off: int | None = None
    items: list = field(default_factory=list)   # offsets: of each element, or each string's Str


@dataclass
class TensorInfo:
    name: Str
    n_dims_off: int
    dims_off: list[int]
    dims: list[int]   # ggml order: dims[0] is the row width
    type_off: int
    type: int
    offset_off: int
    offset: int       # relative to the data start
    end: int

    def nbytes(self) -> int | None:
        """Bytes of the data as ggml_nbytes computes them; None for a type we cannot size."""
        shape = tuple(reversed(self.dims))
        try:
            qtype = T(self.type)
        except ValueError:
            return None
        if qtype in quants.BY_QTYPE:
            return quants.BY_QTYPE[qtype].nbytes(shape)
        block, size = GGML_QUANT_SIZES[qtype]
        return int(np.prod(shape)) // block * size


@dataclass
class Layout:
    version: int
    n_tensors: int
    n_kv: int
    kvs: list[KV]
    tensors: list[TensorInfo]
    alignment: int
    info_end: int     # end of the tensor infos
    data_start: int   # info_end aligned up

    def kv(self, key: str) -> KV | None:
        return next((kv for kv in self.kvs if kv.key.text.decode() == key), None)


class _Cursor:
    def __init__(self, data: bytes, off: int = 0):
        self.data, self.off = data, off

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.off + size > len(self.data):
            raise ValueError(f"GGUF ends inside a field at {self.off}")
        (value,) = struct.unpack_from("<" + fmt, self.data, self.off)
        self.off += size
        return value

    def string(self) -> Str:
        off = self.off
        n = self.take("Q")
        if self.off + n > len(self.data):
            raise ValueError(f"string at {off} of {n} bytes runs past the end")
        self.off += n
        return Str(off, bytes(self.data[off + 8: self.off]))


def parse(data: bytes) -> Layout:
    """The structure of a well-formed GGUF (v2/v3); ValueError if it is not one."""
    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    c = _Cursor(data, 4)
    version, n_tensors, n_kv = c.take("I"), c.take("Q"), c.take("Q")
    kvs = []
    for _ in range(n_kv):
        key = c.string()
        type_off, vtype = c.off, c.take("I")
        value_off = c.off
        if vtype == V.ARRAY:
            elem_type = c.take("I")
            count_off, count = c.off, c.take("Q")
            items, values = [], []
            for _ in range(count):
                if elem_type == V.STRING:
                    s = c.string()
                    items.append(s)
                    values.append(s.text)
                elif elem_type in SCALAR:
                    items.append(c.off)
                    values.append(c.take(SCALAR[elem_type]))
                else:
                    raise ValueError(f"array {key.text!r} of element type {elem_type}")
            kvs.append(KV(key, type_off, vtype, value_off, values, c.off, elem_type, count_off, items))
        elif vtype == V.STRING:
            kvs.append(KV(key, type_off, vtype, value_off, c.string().text, c.off))
        elif vtype in SCALAR:
            kvs.append(KV(key, type_off, vtype, value_off, c.take(SCALAR[vtype]), c.off))
        else:
            raise ValueError(f"key {key.text!r} of value type {vtype}")
    tensors = []
    for _ in range(n_tensors):
        name = c.string()
        n_dims_off, n_dims = c.off, c.take("I")
        dims_off, dims = [], []
        for _ in range(n_dims):
            dims_off.append(c.off)
            dims.append(c.take("Q"))
        type_off, qtype = c.off, c.take("I")
        offset_off, offset = c.off, c.take("Q")
        tensors.append(TensorInfo(name, n_dims_off, dims_off, dims, type_off, qtype, offset_off, offset, c.off))
    align_kv = next((kv for kv in kvs if kv.key.text == b"general.alignment"), None)
    alignment = int(align_kv.value) if align_kv is not None else DEFAULT_ALIGNMENT
    data_start = -(-c.off // alignment) * alignment
    return Layout(version, n_tensors, n_kv, kvs, tensors, alignment, c.off, data_start)


def serialize(layout: Layout, data: bytes) -> bytes:
    """The file rebuilt from the parsed values (header, KVs, tensor infos, zero padding) with
    `data`'s tensor data: equal to the original if the parser missed nothing."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", layout.version, layout.n_tensors, layout.n_kv))

    def string(b: bytes):
        out.extend(struct.pack("<Q", len(b)) + b)

    for kv in layout.kvs:
        string(kv.key.text)
        out.extend(struct.pack("<I", kv.vtype))
        if kv.vtype == V.ARRAY:
            out.extend(struct.pack("<IQ", kv.elem_type, len(kv.value)))
            for v in kv.value:
                string(v) if kv.elem_type == V.STRING else out.extend(struct.pack("<" + SCALAR[kv.elem_type], v))
        elif kv.vtype == V.STRING:
            string(kv.value)
        else:
            out.extend(struct.pack("<" + SCALAR[kv.vtype], kv.value))
    for t in layout.tensors:
        string(t.name.text)
        out.extend(struct.pack("<I", len(t.dims)) + struct.pack(f"<{len(t.dims)}Q", *t.dims))
        out.extend(struct.pack("<IQ", t.type, t.offset))
    out.extend(bytes(layout.data_start - len(out)))
    return bytes(out + data[layout.data_start:])


def region(layout: Layout, off: int) -> str:
    """What a byte offset of the file belongs to, for descriptions."""
    if off < 24:
        return "header"
    for kv in layout.kvs:
        if off < kv.end:
            return f"kv {kv.key.text.decode(errors='replace')}"
    for t in layout.tensors:
        if off < t.end:
            return f"info {t.name.text.decode(errors='replace')}"
    if off < layout.data_start:
        return "padding"
    rel = off - layout.data_start
    for t in sorted(layout.tensors, key=lambda t: t.offset, reverse=True):
        if rel >= t.offset:
            return f"data {t.name.text.decode(errors='replace')}"
    return "data"


# ---------------------------------------------------------------------------------------------
# Mutator

CLASSES = ("kv_value", "kv_struct", "tensor_info", "truncate", "byte_flip", "scale")

# hparams and tokenizer keys the loader trusts most; kv_value aims at them more than half the time
HOT_KEYS = ("block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
            "attention.head_count_kv", "rope.dimension_count", "attention.layer_norm_rms_epsilon",
            "rope.freq_base", "vocab_size", "general.file_type", "bos_token_id", "eos_token_id",
            "unk_token_id", "add_bos_token")
# the ternary types with a per-tensor float32 scale in a 32-byte tail after the codes
TAIL_TYPES = {int(q) for q in quants.BY_QTYPE}
TAIL = 32
HUGE = (2**31, 2**32 - 1, 4227858496)


def _type_name(qtype: int) -> str:
    try:
        return T(qtype).name
    except ValueError:
        return str(qtype)


def _fmt(v) -> str:
    return f"{v:.7g}" if isinstance(v, float) else str(v)


def _wrap(v: int, fmt: str) -> int:
    """v stored in an integer field of struct format `fmt` (two's complement wrap-around)."""
    bits = struct.calcsize(fmt) * 8
    v &= (1 << bits) - 1
    return v - (1 << bits) if fmt.islower() and v >= 1 << (bits - 1) else v


def _new_int(old: int, fmt: str, rng: Random) -> int:
    bits = struct.calcsize(fmt) * 8
    pick = rng.choice(["0", "1", "-1", "flip", "+1", "-1d", "x2", "huge", "bits"])
    v = {"0": 0, "1": 1, "-1": -1, "flip": old ^ 1, "+1": old + 1, "-1d": old - 1, "x2": old * 2,
         "huge": rng.choice(HUGE + ((2**63, 2**64 - 1) if bits == 64 else ())),
         "bits": rng.getrandbits(bits)}[pick]
    return _wrap(v, fmt)


def _new_float(old: float, rng: Random, fmt: str = "f") -> float:
    v = rng.choice([math.nan, math.inf, -math.inf, -abs(old) if old else -1.0, 0.0, 1e30, 1e-40, "bits"])
    if v == "bits":
        v = struct.unpack("<" + fmt, rng.randbytes(struct.calcsize(fmt)))[0]
    return v


def _new_value(old, fmt: str, rng: Random):
    return _new_float(old, rng, fmt) if fmt in "fd" else _new_int(old, fmt, rng)


def _new_length(old: int, rng: Random) -> int:
    return _wrap(rng.choice([0, 1, old - 1, old + 1, old * 2, old + 4096, *HUGE, 2**63, 2**64 - 1,
                             rng.getrandbits(64)]), "Q")


def _put(buf: bytearray, off: int, fmt: str, value) -> None:
    struct.pack_into("<" + fmt, buf, off, value)


def _key(kv: KV) -> str:
    return kv.key.text.decode(errors="replace")


def mutate_kv_value(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(a) a numeric KV value, mostly of the hparams and token ids the loader trusts."""
    buf = bytearray(data)
    numeric = [kv for kv in L.kvs if kv.vtype in SCALAR]
    hot = [kv for kv in numeric if _key(kv).endswith(HOT_KEYS)]
    arrays = [kv for kv in L.kvs if kv.vtype == V.ARRAY and kv.elem_type in SCALAR and kv.items]
    roll = rng.random()
    if arrays and roll < 0.15:  # an element of tokenizer.ggml.scores / token_type
        kv = rng.choice(arrays)
        i = rng.randrange(len(kv.items))
        fmt = SCALAR[kv.elem_type]
        new = _new_value(kv.value[i], fmt, rng)
        _put(buf, kv.items[i], fmt, new)
        return bytes(buf), f"{_key(kv)}[{i}] {TYPE_NAMES[kv.elem_type]} {_fmt(kv.value[i])} -> {_fmt(new)}"
    kv = rng.choice(hot if hot and roll < 0.7 else numeric)
    fmt = SCALAR[kv.vtype]
    new = _new_value(kv.value, fmt, rng)
    _put(buf, kv.value_off, fmt, new)
    return bytes(buf), f"{_key(kv)} {TYPE_NAMES[kv.vtype]} {_fmt(kv.value)} -> {_fmt(new)}"


def mutate_kv_struct(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(b) the structure of the metadata: string lengths, array lengths and element types,
    value type ids, the header's KV count and version."""
    buf = bytearray(data)
    what = rng.choice(["string_len", "array_len", "elem_type", "value_type", "header"])
    arrays = [kv for kv in L.kvs if kv.vtype == V.ARRAY]
    if what == "string_len":
        # array items are many (the vocabulary): pick the kind of string first, then one of it
        kinds = {"key": [(f"key {_key(kv)}", kv.key) for kv in L.kvs],
                 "value": [(f"value of {_key(kv)}", Str(kv.value_off, kv.value))
                           for kv in L.kvs if kv.vtype == V.STRING],
                 "item": [(f"{_key(kv)}[{i}]", s) for kv in arrays if kv.elem_type == V.STRING
                          for i, s in enumerate(kv.items)]}
        label, s = rng.choice(kinds[rng.choice([k for k in kinds if kinds[k]])])
        new = _new_length(len(s.text), rng)
        _put(buf, s.off, "Q", new)
        return bytes(buf), f"string length of {label} {len(s.text)} -> {new}"
    if what == "array_len":
        kv = rng.choice(arrays)
        new = _new_length(len(kv.value), rng)
        _put(buf, kv.count_off, "Q", new)
        return bytes(buf), f"array length of {_key(kv)} {len(kv.value)} -> {new}"
    if what == "elem_type":
        kv = rng.choice(arrays)
        new = rng.choice([t for t in range(14) if t != kv.elem_type] + [2**31, 2**32 - 1])
        _put(buf, kv.value_off, "I", new)
        return bytes(buf), f"array element type of {_key(kv)} {kv.elem_type} -> {new}"
    if what == "value_type":
        kv = rng.choice(L.kvs)
        new = rng.choice([t for t in range(14) if t != kv.vtype] + [2**31, 2**32 - 1])
        _put(buf, kv.type_off, "I", new)
        return bytes(buf), f"value type of {_key(kv)} {kv.vtype} -> {new}"
    if rng.random() < 0.7:
        new = _new_length(L.n_kv, rng)
        _put(buf, 16, "Q", new)
        return bytes(buf), f"header n_kv {L.n_kv} -> {new}"
    new = rng.choice([0, 1, 2, 4, 2**31, 2**32 - 1])
    _put(buf, 4, "I", new)
    return bytes(buf), f"header version {L.version} -> {new}"


def _relabels(t: TensorInfo) -> list[int]:
    """Type ids worth trying for this tensor: same-size swaps (I2_S and TL1 are both 2 bits a
    weight), a ternary tensor as plain floats, a norm vector as a ternary type."""
    name = t.name.text.decode(errors="replace")
    out = []
    if t.type == T.I2_S:
        out.append(int(T.TL1))
    if t.type == T.TL1:
        out.append(int(T.I2_S))
    if t.type in TAIL_TYPES or t.type in (T.TQ1_0, T.TQ2_0):
        out += [int(T.F32), int(T.F16)]
    if "_norm" in name:
        out += [int(T.TL2), int(T.I2_S)]
    return out


def mutate_tensor_info(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(c) a tensor info: n_dims, a dim, the type id, the data offset, the name; or the header's
    tensor count."""
    buf = bytearray(data)
    t = rng.choice(L.tensors)
    name = t.name.text.decode(errors="replace")
    what = rng.choice(["n_dims", "dim", "type", "offset", "name", "n_tensors"])
    if what == "n_dims":
        new = rng.choice([0, 1, 2, 3, 4, 5, 2**31, 2**32 - 1])
        _put(buf, t.n_dims_off, "I", new)
        return bytes(buf), f"tensor {name} n_dims {len(t.dims)} -> {new}"
    if what == "dim":
        i = rng.randrange(len(t.dims))
        old = t.dims[i]
        new = _wrap(rng.choice([0, 1, old - 1, old + 1, old * 2, old // 2, old + 128, 2**31, 2**32, 2**63,
                                2**64 - 1, rng.getrandbits(64)]), "Q")
        _put(buf, t.dims_off[i], "Q", new)
        return bytes(buf), f"tensor {name} dim {i} {old} -> {new}"
    if what == "type":
        relabels = _relabels(t)
        if relabels and rng.random() < 0.5:
            new = rng.choice(relabels)
        else:  # any id, the unknown ones and bitnet.cpp's TL1/TL2 (38, 39) included
            new = rng.choice([i for i in range(72) if i != t.type] + [2**31, 2**32 - 1])
        _put(buf, t.type_off, "I", new)
        return bytes(buf), f"tensor {name} type {_type_name(t.type)} -> {_type_name(new)}"
    if what == "offset":
        others = [o.offset for o in L.tensors if o.offset != t.offset]
        file_rel = len(data) - L.data_start
        new = _wrap(rng.choice([0, t.offset + 1, t.offset - 1, t.offset + L.alignment, t.offset - L.alignment,
                                rng.choice(others) if others else 0, file_rel, file_rel - L.alignment,
                                2**63, 2**64 - L.alignment, rng.getrandbits(64)]), "Q")
        _put(buf, t.offset_off, "Q", new)
        return bytes(buf), f"tensor {name} offset {t.offset} -> {new}"
    if what == "name":
        # the same length as another tensor's name (blk.0.attn_k / attn_v): a duplicate name;
        # else a length that no longer matches the bytes
        same = [o for o in L.tensors if o is not t and len(o.name.text) == len(t.name.text)]
        if same and rng.random() < 0.5:
            other = rng.choice(same)
            buf[t.name.off + 8: t.name.off + 8 + len(t.name.text)] = other.name.text
            return bytes(buf), f"tensor {name} renamed to {other.name.text.decode()} (duplicate)"
        new = _new_length(len(t.name.text), rng)
        _put(buf, t.name.off, "Q", new)
        return bytes(buf), f"tensor {name} name length {len(t.name.text)} -> {new}"
    new = _new_length(L.n_tensors, rng)
    _put(buf, 8, "Q", new)
    return bytes(buf), f"header n_tensors {L.n_tensors} -> {new}"


def mutate_truncate(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(d) the file cut short: half the time inside the metadata (most of the file is data)."""
    end = rng.randrange(0, L.data_start) if rng.random() < 0.5 else rng.randrange(L.data_start, len(data))
    return data[:end], f"truncate at {end} of {len(data)} ({region(L, end)})"


def mutate_byte_flip(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(e) 1 to 8 random bytes: a flipped bit or a random value, half of them in the metadata."""
    buf = bytearray(data)
    parts = []
    for _ in range(rng.randint(1, 8)):
        off = rng.randrange(L.data_start if rng.random() < 0.5 else len(data))
        old = buf[off]
        buf[off] = old ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
        parts.append(f"{off:#x} ({region(L, off)}) {old:#04x}->{buf[off]:#04x}")
    return bytes(buf), f"{len(parts)} bytes: " + ", ".join(parts)


def mutate_scale(data: bytes, L: Layout, rng: Random) -> tuple[bytes, str]:
    """(f) a ternary tensor's scale: the float32 tail of I2_S/TL1/TL2 (first 4 bytes of the 32
    after the codes), or the fp16 d of a TQ2_0/TQ1_0 block (its last 2 bytes)."""
    buf = bytearray(data)
    candidates = [t for t in L.tensors if t.type in TAIL_TYPES or t.type in (T.TQ1_0, T.TQ2_0)]
    t = rng.choice(candidates)
    name = t.name.text.decode()
    if t.type in TAIL_TYPES:
        off, fmt, where = L.data_start + t.offset + t.nbytes() - TAIL, "f", "tail"
        special = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e38, 1e-40, 3.4028234663852886e38]
    else:
        size = GGML_QUANT_SIZES[T(t.type)][1]
        b = rng.randrange(t.nbytes() // size)
        off, fmt, where = L.data_start + t.offset + b * size + size - 2, "e", f"block {b} d"
        special = [math.nan, math.inf, -math.inf, 0.0, -0.0, 65504.0, 6e-8]
    (old,) = struct.unpack_from("<" + fmt, data, off)
    new = rng.choice(special + [-abs(old) if old else -1.0])
    _put(buf, off, fmt, new)
    return bytes(buf), f"{name} {_type_name(t.type)} {where} {_fmt(old)} -> {_fmt(new)}"


MUTATORS = {"kv_value": mutate_kv_value, "kv_struct": mutate_kv_struct, "tensor_info": mutate_tensor_info,
            "truncate": mutate_truncate, "byte_flip": mutate_byte_flip, "scale": mutate_scale}


def mutate(data: bytes, rng: Random, cls: str | None = None) -> tuple[bytes, str]:
    """One mutation of a GGUF -> (mutated bytes, one-line description starting with the class).
    The class is uniform over CLASSES unless given. Deterministic for a given rng state; a draw
    that happens to leave the bytes as they were (a value set to what it was) is drawn again."""
    layout = parse(data)
    cls = cls or rng.choice(CLASSES)
    for _ in range(50):
        out, desc = MUTATORS[cls](data, layout, rng)
        if out != data:
            return out, f"{cls} {desc}"
    raise RuntimeError(f"{cls}: no mutation changed the file")


def mutation_class(description: str) -> str:
    return description.split(" ", 1)[0]


# ---------------------------------------------------------------------------------------------
# Cases: file i of a run is a pure function of (seeds, run seed, i)

@dataclass
class Case:
    index: int
    seed_type: str
    cls: str
    description: str
    data: bytes


def case(seeds: dict[str, bytes], run_seed: int, index: int) -> Case:
    """File `index` of the run `run_seed`: seed types in turn, the mutation from its own rng."""
    names = sorted(seeds, key=lambda n: SEED_TYPES.index(n) if n in SEED_TYPES else len(SEED_TYPES))
    seed_type = names[index % len(names)]
    data, desc = mutate(seeds[seed_type], Random(f"{run_seed}/{index}"))
    return Case(index, seed_type, mutation_class(desc), desc, data)


# ---------------------------------------------------------------------------------------------
# Runner: one forked child per file

OUTCOMES = ("ok", "error", "wrong", "crash", "hang")
MEMORY_LIMIT = 8 << 30  # address space of a child: a mutant that asks for more fails, not the machine


class Wrong(Exception):
    """Raised by a target: the model loaded and ran but computed garbage (logits not finite, or
    all equal)."""


def _check_logits(logits: np.ndarray, step: int) -> None:
    bad = ~np.isfinite(logits)
    if bad.any():
        n_nan = int(np.isnan(logits).sum())
        raise Wrong(f"token {step}: {n_nan} NaN and {int(bad.sum()) - n_nan} inf logits of {logits.size}")
    # a NaN inside the model does not always reach the logits: the int8 quantization of the
    # activations before each matrix (I8_S, Q8_K) turns an all-NaN row into zeros, and the head
    # then gives exactly equal logits, which no model with random weights produces
    if logits.min() == logits.max():
        raise Wrong(f"token {step}: all {logits.size} logits equal {float(logits[0]):g}")


def _generate(llm) -> None:
    """Evaluate a prompt, then one generated token; the logits before each of the two
    generated tokens must be finite and not all equal."""
    llm.eval(llm.tokenize(b"hello"))
    generated = []
    for step in range(2):
        logits = llm.scores[llm.n_tokens - 1]
        _check_logits(logits, step)
        generated.append(int(np.argmax(logits)))
        if step == 0:
            llm.eval(generated[-1:])
    llm.detokenize(generated)  # reads the (possibly mutated) vocabulary


def generate(path: str) -> None:
    """The real target, as users load models: bitnet_tools.runtime.load (its Python checks of the
    file first, then the engine). Verbose, so the engine's words reach the child's stderr file
    (verbose=False sends them to /dev/null)."""
    _generate(runtime.load(path, n_ctx=64, n_threads=1, verbose=True, logits_all=True))


def generate_engine(path: str) -> None:
    """The engine alone: llama_cpp.Llama without runtime.load's Python pre-check, so that the C
    parser sees every file (runtime.load reads it with gguf-py first)."""
    import llama_cpp

    _generate(llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=1, n_threads_batch=1, verbose=True,
                              logits_all=True))


# what each target raises for a file it refuses cleanly; any other exception would reach the
# user as a traceback, and counts as a crash ("uncaught ...")
generate.refusals = (runtime.ModelError,)
generate_engine.refusals = (ValueError,)  # llama_cpp: "Failed to load model from file"
TARGETS = {"runtime": generate, "engine": generate_engine}


@dataclass
class Result:
    outcome: str      # one of OUTCOMES
    message: str      # first line: "Type: message", "SIGABRT", "exit code 3", "timeout after 20 s"
    detail: str = ""  # the engine's last relevant stderr line (the assert of a crash)
    seconds: float = 0.0


def _child(path: str, target: Callable[[str], None], w: int, stderr_path: str, timeout: float) -> None:
    """Runs in the forked child; never returns."""
    code = 0
    try:
        os.setpgid(0, 0)  # its own group: a timeout kills whatever it started too
        faulthandler.disable()  # pytest's would print a Python traceback of a crash to the terminal
        fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # llama_cpp logs through sys.stderr, which may not be fd 2 (pytest's capture file): rebind
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        # a hang's Python stack, written just before the parent's kill: which call never returned
        faulthandler.dump_traceback_later(max(0.1, timeout - 0.5), file=sys.stderr)
        # ggml_abort would otherwise attach gdb to print a backtrace: slow, and a process of its own
        os.environ["GGML_NO_BACKTRACE"] = "1"
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        try:
            target(path)
            report = {"outcome": "ok", "message": ""}
        except Wrong as e:
            report = {"outcome": "wrong", "message": str(e)}
        except getattr(target, "refusals", (Exception,)) as e:
            report = {"outcome": "error", "message": f"{type(e).__name__}: {e}"}
        except BaseException as e:  # noqa: BLE001
            report = {"outcome": "crash", "message": f"uncaught {type(e).__name__}: {e}"}
        # the scratch path differs per file: without it equal messages group
        report["message"] = report["message"].replace(path, "FILE")[:2000]
        os.write(w, json.dumps(report).encode())
    except BaseException:  # noqa: BLE001
        code = 70  # outside the protocol: the parent calls it a crash
    finally:
        os._exit(code)  # never back into the parent's code (pytest, the run loop)


# ggml_abort prints "file.cpp:123: message" (GGML_ASSERT's message names the condition)
_ASSERT_LINE = re.compile(r"^\S+\.(c|cc|cpp|h):\d+: |GGML_ASSERT|Assertion .* failed|terminate called|what\(\):"
                          r"|fatal error|Segmentation|double free|corrupted|malloc\(\)")
_ERROR_LINE = re.compile(r"error|failed|invalid", re.IGNORECASE)


def _short_paths(line: str) -> str:
    return re.sub(r"(?<![\w.])/\S*/([^/\s]+)", r"\1", line).strip()


def stderr_signature(text: str, crash: bool) -> str:
    """The engine's relevant words. For a crash or hang its assert / terminate lines, or where
    it was by the last line it wrote (a segfault has no message of its own); for a refusal why
    (the "error loading model: ..." line, else the first error-looking line: the gguf reader's
    own words come before the loader's summary)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if crash:
        hits = [ln for ln in lines if _ASSERT_LINE.search(ln)]
        if hits:
            return _short_paths(" ".join(hits[-2:]) if hits[-1].startswith("what():") else hits[-1])
        return "after: " + _short_paths(lines[-1]) if lines else ""
    said = [ln for ln in lines if _ERROR_LINE.search(ln) and "failed to load model" not in ln]
    loading = [ln for ln in said if "error loading model:" in ln]
    return _short_paths(loading[-1] if loading else said[0]) if said else ""


_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def hang_signature(text: str) -> str:
    """Where a hung child was: the innermost Python frames of the stack faulthandler wrote
    shortly before the timeout (the engine call that never returned, or Python code looping),
    and the engine's last line before it."""
    head, _, stack = text.partition("most recent call first):")
    frames = re.findall(r'File "([^"]+)", line \d+ in (\S+)', stack.split("\n\n")[0])
    frames = [(f, fn) for f, fn in frames  # without the standard library's: enum.py says nothing
              if not f.startswith(_STDLIB) or "site-packages" in f]
    where = " <- ".join(f"{Path(f).name}:{fn}" for f, fn in frames[:3])
    before = [ln.strip() for ln in head.splitlines()
              if ln.strip() and not ln.startswith(("Timeout", "Thread", "Current thread"))]
    last = f" after: {_short_paths(before[-1])}" if before else ""
    return f"in {where}{last}" if where else last.strip()


@dataclass
class _Running:
    key: object
    pid: int
    r: int
    stderr_path: str
    start: float
    report: bytes = b""


def _finish(c: _Running, status: int, hung: bool, timeout: float) -> Result:
    seconds = time.monotonic() - c.start
    try:
        text = Path(c.stderr_path).read_text(errors="replace")
    except OSError:
        text = ""
    Path(c.stderr_path).unlink(missing_ok=True)
    if hung:
        return Result("hang", f"timeout after {timeout:g} s", hang_signature(text), seconds)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return Result("crash", sig, stderr_signature(text, True), seconds)
    code = os.WEXITSTATUS(status)
    try:
        report = json.loads(c.report) if code == 0 else None
    except ValueError:
        report = None
    if report is None:
        return Result("crash", f"exit code {code}" + ("" if code else " without a report"),
                      stderr_signature(text, True), seconds)
    detail = stderr_signature(text, False) if report["outcome"] == "error" else ""
    return Result(report["outcome"], report["message"].splitlines()[0] if report["message"] else "", detail, seconds)


def run_many(items: Iterable[tuple[object, str]], target: Callable[[str], None] = generate, jobs: int = 1,
             timeout: float = 20.0, scratch: str | None = None) -> Iterator[tuple[object, Result]]:
    """Run `target(path)` in a forked child for each (key, path), `jobs` at a time; yields
    (key, Result) as the children finish. The parent must hold no threads (fork)."""
    scratch = scratch or tempfile.gettempdir()
    pending = iter(items)
    running: dict[int, _Running] = {}  # by the pipe's read end
    exhausted = False
    try:
        while running or not exhausted:
            while not exhausted and len(running) < jobs:
                try:
                    key, path = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                r, w = os.pipe()
                stderr_path = os.path.join(scratch, f"child-{os.getpid()}-{len(running)}-{time.monotonic_ns()}.err")
                pid = os.fork()
                if pid == 0:
                    os.close(r)
                    _child(path, target, w, stderr_path, timeout)
                os.close(w)
                try:
                    os.setpgid(pid, pid)  # also here: no window where a kill would miss it
                except OSError:
                    pass
                running[r] = _Running(key, pid, r, stderr_path, time.monotonic())
            if not running:
                break
            now = time.monotonic()
            wait = max(0.0, min(c.start + timeout for c in running.values()) - now)
            readable, _, _ = select.select(list(running), [], [], wait)
            for r in readable:
                c = running[r]
                chunk = os.read(r, 65536)
                if chunk:
                    c.report += chunk
                    continue
                # end of file: the child has exited (or is exiting)
                del running[r]
                os.close(r)
                _, status = os.waitpid(c.pid, 0)
                yield c.key, _finish(c, status, False, timeout)
            now = time.monotonic()
            for r, c in list(running.items()):
                if now - c.start >= timeout:
                    del running[r]
                    os.close(r)
                    _kill(c.pid)
                    _, status = os.waitpid(c.pid, 0)
                    yield c.key, _finish(c, status, True, timeout)
    finally:
        for c in running.values():  # interrupted: no child outlives the run
            _kill(c.pid)
            os.waitpid(c.pid, 0)
            os.close(c.r)
            Path(c.stderr_path).unlink(missing_ok=True)


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# A fuzzing run

@dataclass
class Record:
    index: int
    seed_type: str
    cls: str
    description: str
    outcome: str
    message: str
    detail: str
    seconds: float


def fuzz(seeds: dict[str, bytes], files: int, run_seed: int = 0, jobs: int = 1, timeout: float = 20.0,
         first: int = 0, keep: Path | None = None, target: Callable[[str], None] = generate,
         on_record: Callable[[Record], None] | None = None) -> list[Record]:
    """Files first .. first+files-1 of run `run_seed`, each mutated, written to a scratch
    directory and run; crash and hang reproducers are copied into `keep` with a line in its
    README.txt. Records are returned in index order."""
    import llama_cpp  # noqa: F401  (imported once here, inherited by every child)

    records = []
    with tempfile.TemporaryDirectory(prefix="gguf-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        cases: dict[int, Case] = {}

        def items():
            for i in range(first, first + files):
                c = case(seeds, run_seed, i)
                path = os.path.join(d, f"{i:07d}.gguf")
                Path(path).write_bytes(c.data)
                cases[i] = c
                yield i, path

        for i, res in run_many(items(), target, jobs, timeout, scratch=d):
            c = cases.pop(i)
            path = Path(d) / f"{i:07d}.gguf"
            if keep is not None and res.outcome in ("crash", "hang"):
                keep.mkdir(parents=True, exist_ok=True)
                name = f"{res.outcome}-{run_seed}-{i:07d}-{c.seed_type}.gguf"
                (keep / name).write_bytes(c.data)
                with open(keep / "README.txt", "a") as f:
                    f.write(f"{name}\t{res.message}\t{res.detail}\t{c.description}\n")
            path.unlink(missing_ok=True)
            rec = Record(i, c.seed_type, c.cls, c.description, res.outcome, res.message, res.detail,
                         round(res.seconds, 3))
            records.append(rec)
            if on_record:
                on_record(rec)
    return sorted(records, key=lambda r: r.index)


def signature(rec: Record) -> str:
    """What groups crashes and hangs: the outcome, signal and the engine's message without
    numbers that vary from file to file."""
    detail = re.sub(r"\b\d+\b", "N", rec.detail)
    return f"{rec.outcome} {rec.message}: {detail}" if detail else f"{rec.outcome} {rec.message}"


def summary_tables(records: list[Record]):
    from rich.table import Table

    counts = Counter((r.seed_type, r.cls, r.outcome) for r in records)
    table = Table(title=f"{len(records)} files")
    table.add_column("seed")
    table.add_column("mutation")
    for o in OUTCOMES:
        table.add_column(o, justify="right", style="red" if o in ("crash", "hang") else None)
    seeds = [s for s in SEED_TYPES if any(r.seed_type == s for r in records)]
    seeds += sorted({r.seed_type for r in records} - set(seeds))
    for s in seeds:
        for cls in CLASSES:
            row = [counts[(s, cls, o)] for o in OUTCOMES]
            if any(row):
                table.add_row(s, cls, *[str(n) if n else "" for n in row])
    total = Counter(r.outcome for r in records)
    table.add_row("all", "", *[str(total[o]) for o in OUTCOMES], style="bold")

    bad = [r for r in records if r.outcome in ("crash", "hang", "wrong")]
    groups: dict[str, list[Record]] = {}
    for r in bad:
        groups.setdefault(signature(r), []).append(r)
    sig_table = Table(title="crash / hang / wrong signatures")
    for col in ("n", "signature", "seeds", "example"):
        sig_table.add_column(col, overflow="fold")
    for sig, rs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        sig_table.add_row(str(len(rs)), sig, ",".join(sorted({r.seed_type for r in rs})),
                          f"#{rs[0].index} {rs[0].description}")
    return table, sig_table


def main(argv: list[str] | None = None) -> int:
    import argparse

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=1000, help="number of mutated files")
    p.add_argument("--seed", type=int, default=0, help="run seed: file i is the same for the same seed")
    p.add_argument("--first", type=int, default=0, help="index of the first file (reproduce one: --first I --files 1)")
    p.add_argument("--jobs", type=int, default=1, help="children at once")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before a child counts as hung")
    p.add_argument("--target", choices=TARGETS, default="runtime",
                   help="runtime: bitnet_tools.runtime.load (as users load); engine: llama_cpp.Llama alone")
    p.add_argument("--types", default=",".join(SEED_TYPES), help="seed types, comma-separated")
    p.add_argument("--seed-dir", type=Path, default=None, help="where the seed files are kept (default: a temp dir)")
    p.add_argument("--out", type=Path, help="JSON with one record per file")
    p.add_argument("--csv", type=Path, help="CSV of the counts: seed type, mutation class, outcome, files")
    p.add_argument("--keep", type=Path, help="copy crash/hang reproducers here, with README.txt")
    p.add_argument("--write", type=Path, help="only write the mutated files into this directory, run nothing")
    args = p.parse_args(argv)

    console = Console()
    with tempfile.TemporaryDirectory(prefix="gguf-fuzz-seeds-") as tmp:
        seeds = make_seeds(args.seed_dir or Path(tmp), [t.strip() for t in args.types.split(",") if t.strip()])
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for i in range(args.first, args.first + args.files):
            c = case(seeds, args.seed, i)
            (args.write / f"{i:07d}-{c.seed_type}.gguf").write_bytes(c.data)
            console.print(f"{i:07d}-{c.seed_type}.gguf  {c.description}", markup=False, highlight=False)
        return 0

    started = time.monotonic()
    # no auto refresh: that is a thread, and the parent forks
    with Progress(TextColumn("fuzz"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, auto_refresh=False) as progress:
        task = progress.add_task("fuzz", total=args.files, status="")
        tally: Counter = Counter()
        last = [0.0]

        def on_record(rec: Record) -> None:
            tally[rec.outcome] += 1
            progress.update(task, advance=1, status=" ".join(f"{o} {tally[o]}" for o in OUTCOMES if tally[o]))
            if rec.outcome in ("crash", "hang"):
                progress.console.print(f"[red]{rec.outcome}[/] #{rec.index} {rec.seed_type}: "
                                       f"{rec.message} {rec.detail}  <- {rec.description}", markup=True,
                                       highlight=False)
            now = time.monotonic()
            if now - last[0] > 0.2:
                last[0] = now
                progress.refresh()

        records = fuzz(seeds, args.files, args.seed, args.jobs, args.timeout, args.first, args.keep,
                       target=TARGETS[args.target], on_record=on_record)
        progress.refresh()
    elapsed = time.monotonic() - started
    table, sig_table = summary_tables(records)
    console.print(table)
    console.print(sig_table)
    console.print(f"{len(records)} files in {elapsed:.1f} s ({len(records) / elapsed:.1f}/s)")
    if args.out:
        args.out.write_text(json.dumps({"seed": args.seed, "first": args.first, "files": args.files,
                                        "target": args.target,
                                        "timeout": args.timeout, "seconds": round(elapsed, 1),
                                        "records": [asdict(r) for r in records]}, indent=1))
    if args.csv:
        counts = Counter((r.seed_type, r.cls, r.outcome) for r in records)
        lines = ["seed_type,mutation,outcome,files"] + [f"{s},{c},{o},{n}" for (s, c, o), n in sorted(counts.items())]
        args.csv.write_text("\n".join(lines) + "\n")
    return 1 if any(r.outcome in ("crash", "hang") for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
