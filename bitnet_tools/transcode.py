"""GGUF -> GGUF between ternary types, losslessly, one tensor at a time.

    transcode(src, out, outtype, i2s_layout="x86", progress=None) -> Path

Every ternary tensor (I2_S, TL1, TL2, TQ1_0, TQ2_0) is read back to its codes q in {-1, 0, 1}
and its one scale, checked (codes canonical, scale finite and positive), and written in the
target type from exactly those codes and that scale: I2_S, TL1 and TL2 hold both exactly;
TQ1_0/TQ2_0 keep the codes and round the scale to fp16 (said when it changes it); F16/BF16/F32
hold q*scale. Every other tensor (embedding, norms) and every metadata key is copied
untouched, except general.file_type, which names the new type. Where TQ1_0/TQ2_0 cannot hold a
tensor's rows (256-blocks) it is written as I2_S, as the HF converter does.

bitnet.cpp's ARM builds (since Nov 2025) write I2_S codes in groups of 64 rather than 128,
with nothing in the file to say so; `i2s_layout="arm64"` reads such a file (docs/convert.md).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
import gguf
from gguf.constants import GGMLQuantizationType as T, GGUFValueType

from . import quants
from .convert import ConvertError
from .dummy import Shape
from .gguf_adapter import UnknownTensorTypes
from .quants import i2_s
from .writer import TERNARY_TYPES, PendingTensor, encode, file_type, ternary_type_for, write_gguf

log = logging.getLogger(__name__)

TQ_TYPES = (T.TQ1_0, T.TQ2_0)
TERNARY_SOURCES = (*quants.BY_QTYPE, *TQ_TYPES)
# the ternary types a GGUF can hold, best source for transcoding first (one scale, exact)
SOURCE_TYPE_NAMES = ("i2_s", "tl2", "tl1", "tq2_0", "tq1_0")
# architectures of BitNet b1.58 models the engine runs (our converters write these)
ARCHITECTURES = ("bitnet-b1.58", "bitnet-25", "bitnet", "llama")
I2S_LAYOUTS = ("x86", "arm64")
# keys GGUFWriter writes itself, and the one we change
_OWN_KEYS = {"general.architecture", "general.file_type"}


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A reader for a GGUF file, or ConvertError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} does not exist: check the path")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ConvertError(f"{path} is not a GGUF file: give a .gguf model or a checkpoint folder")
    try:
        reader = gguf.GGUFReader(path)
        for field in reader.fields.values():  # texts are decoded as they are read: damaged ones fail here
            field.contents()
        return reader
    except UnknownTensorTypes as e:
        raise ConvertError(f"{path} holds tensors of ggml types {e.type_ids}, which this version does not know "
                           "(made by a newer bitnet.cpp or llama.cpp?): convert the original checkpoint with "
                           "'bitnet convert MODEL_DIR'") from None
    except (ValueError, IndexError, OSError) as e:  # UnicodeDecodeError is a ValueError
        size = path.stat().st_size
        raise ConvertError(f"{path} ({size} bytes) is truncated or damaged ({str(e).splitlines()[0][:120]}): "
                           "download it again (huggingface_hub resumes) or re-convert it") from None


def architecture(reader: gguf.GGUFReader, path: Path) -> str:
    field = reader.fields.get("general.architecture")
    arch = str(field.contents()) if field is not None else None
    if arch not in ARCHITECTURES:
        raise ConvertError(f"{path} is a {arch or 'unnamed'} model, not a BitNet b1.58 architecture this engine runs "
                           f"({', '.join(ARCHITECTURES)}): use a BitNet b1.58 GGUF or checkpoint")
    return arch


def held_type(reader: gguf.GGUFReader) -> str | None:
    """The type (a name users type) holding most of a file's ternary weights, or None."""
    counts: dict[int, int] = {}
    for t in reader.tensors:
        if int(t.tensor_type) in TERNARY_SOURCES:
            counts[int(t.tensor_type)] = counts.get(int(t.tensor_type), 0) + int(t.n_elements)
    if not counts:
        return None
    return T(max(counts, key=counts.get)).name.lower()


def shape_of(reader: gguf.GGUFReader, path: Path) -> Shape:
    """The model's widths, from its header (what the fastest-type probe needs)."""
    arch = architecture(reader, path)

    def get(key: str, default=None):
        field = reader.fields.get(f"{arch}.{key}")
        if field is None:
            if default is None:
                raise ConvertError(f"{path} has no {arch}.{key} in its header: re-download or re-convert it")
            return default
        value = field.contents()
        return int(value[0] if isinstance(value, list) else value)

    n_head = get("attention.head_count")
    return Shape(n_embd=get("embedding_length"), n_layer=get("block_count"), n_ff=get("feed_forward_length"),
                 n_head=n_head, n_head_kv=get("attention.head_count_kv", n_head), n_vocab=get("vocab_size", 1))


def _numpy_shape(t) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(t.shape))


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    return (int(np.prod(shape[:-1])) if len(shape) > 1 else 1), int(shape[-1])


def ternary(t, i2s_layout: str = "x86") -> tuple[np.ndarray, np.float32]:
    """A ternary tensor of a GGUFReader -> (codes (rows, cols) int8 in {-1, 0, 1}, scale),
    or ConvertError naming the tensor when its bytes are not a ternary tensor of its type."""
    shape = _numpy_shape(t)
    m, n = _rows_cols(shape)
    data = np.asarray(t.data).reshape(-1).view(np.uint8)
    qtype = T(int(t.tensor_type))
    if qtype in quants.BY_QTYPE:
        quant = quants.BY_QTYPE[qtype].quant
        if qtype == T.I2_S and i2s_layout == "arm64":
            try:
                q, scale = i2_s.unpack_arm64(data, (m, n))
            except ValueError as e:
                raise ConvertError(f"{t.name}: {e}: drop --i2s-layout arm64") from None
            # the ARM layout is a permutation of the same codes: re-packing it as ARM must give the bytes back
            canonical = i2_s.pack_codes_arm64(q)
            held = data[: m * n // 4]
        else:
            q, scale = quant.unpack(data, (m, n))
            canonical = quant.pack_codes(q)
            held = data[: canonical.size]
        if np.abs(q).max(initial=0) > 1 or not np.array_equal(canonical, held):  # I2_S code 3; TL index > 3^g - 1
            raise ConvertError(f"{t.name} ({qtype.name}) holds codes that are not ternary weights of its type "
                               "(damaged file, or another layout): re-download or re-convert it")
    else:  # TQ1_0 / TQ2_0: per-256-block fp16 scales, one value in a ternary model
        with np.errstate(all="ignore"):  # a damaged scale (NaN, inf) fails the checks below, quietly
            x = gguf.quants.dequantize(data[: t.n_bytes], qtype).reshape(m, n)
            block, size = gguf.GGML_QUANT_SIZES[qtype]  # each block ends with its fp16 scale
            d_blocks = data[: t.n_bytes].reshape(-1, size)[:, -2:].copy().view(np.float16).reshape(-1).astype(np.float32)
            d = np.unique(d_blocks[np.abs(x.reshape(-1, block)).max(axis=1) > 0])
            if d.size > 1:
                raise ConvertError(f"{t.name} ({qtype.name}) has {d.size} different block scales, not the one scale "
                                   "of a BitNet b1.58 weight: it cannot be transcoded losslessly; convert the checkpoint")
            scale = np.float32(d[0]) if d.size else np.float32(0)
            q = np.rint(x / scale).astype(np.int8) if scale else np.zeros((m, n), np.int8)
        if np.abs(q).max(initial=0) > 1 or not np.array_equal(q.astype(np.float32) * scale, x):
            raise ConvertError(f"{t.name} ({qtype.name}) holds values that are not ternary weights "
                               "(damaged file): re-download or re-convert it")
    if not math.isfinite(float(scale)) or not scale > 0:
        raise ConvertError(f"{t.name} ({qtype.name}) has weight scale {float(scale)}, not a finite positive number "
                           "(damaged file): re-download or re-convert it")
    return q, np.float32(scale)


def _copy_metadata(reader: gguf.GGUFReader, new_file_type: int) -> Callable[[gguf.GGUFWriter], None]:
    def kv(w: gguf.GGUFWriter):
        if "general.file_type" not in reader.fields:
            w.add_file_type(new_file_type)
        for name, field in reader.fields.items():
            if name == "general.file_type":  # in its place: a round trip gives the same file
                w.add_file_type(new_file_type)
            if name.startswith("GGUF.") or name in _OWN_KEYS:
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == GGUFValueType.ARRAY and len(field.types) > 1 else None
            if name == "general.alignment":
                w.data_alignment = int(field.contents())
            w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    return kv


def transcode(src, out, outtype: str, i2s_layout: str = "x86", progress: Callable[[str], None] | None = None,
              note: Callable[[str], None] = log.warning) -> Path:
    """Write `src` (a ternary GGUF) as a GGUF of `outtype`; returns `out`."""
    src, out = Path(src), Path(out)
    if outtype not in TERNARY_TYPES:
        raise ConvertError(f"unknown output type {outtype!r}: choose one of {', '.join(TERNARY_TYPES)}")
    if i2s_layout not in I2S_LAYOUTS:
        raise ConvertError(f"unknown I2_S layout {i2s_layout!r}: choose one of {', '.join(I2S_LAYOUTS)}")
    if not out.parent.is_dir():
        raise ConvertError(f"output directory {out.parent} does not exist: create it first")
    if out.exists() and out.resolve() == src.resolve():
        raise ConvertError(f"{out} is the input file: write the output to another path")
    reader = open_gguf(src)
    arch = architecture(reader, src)
    target = TERNARY_TYPES[outtype]
    if not any(int(t.tensor_type) in TERNARY_SOURCES for t in reader.tensors):
        raise ConvertError(f"{src} holds no ternary tensors (I2_S, TL1, TL2, TQ1_0, TQ2_0): convert the checkpoint "
                           "with 'bitnet convert MODEL_DIR' instead")
    if i2s_layout == "arm64" and not any(int(t.tensor_type) == T.I2_S for t in reader.tensors):
        raise ConvertError(f"--i2s-layout arm64 was given but {src} holds no I2_S tensors: drop it")

    tensors, substituted, rounded = [], set(), []
    for t in reader.tensors:
        shape, qtype = _numpy_shape(t), T(int(t.tensor_type))
        if qtype not in TERNARY_SOURCES:
            raw = np.asarray(t.data).reshape(-1).view(np.uint8)[: t.n_bytes]
            tensors.append(PendingTensor(t.name, shape, qtype, lambda raw=raw: raw))
            continue
        to = ternary_type_for(shape[-1], target)
        if to != target:
            substituted.add(shape[-1])

        def produce(t=t, to=to):
            q, scale = ternary(t, i2s_layout)
            if to in quants.BY_QTYPE:
                return quants.BY_QTYPE[to].quant.pack(q, scale)
            if to in TQ_TYPES and np.float32(np.float16(scale)) != scale:
                rounded.append(t.name)
            return encode(q.astype(np.float32) * scale, to).reshape(-1).view(np.uint8)
        tensors.append(PendingTensor(t.name, shape, to, produce))
    for width in sorted(substituted):
        note(f"{outtype} cannot hold rows of {width} values (blocks of 256): those tensors are written as i2_s")

    try:
        write_gguf(out, arch, _copy_metadata(reader, file_type(tensors)), tensors, progress)
    except ConvertError:
        raise
    except OSError as e:
        raise ConvertError(f"writing {out} failed: {e.strerror or e} (nothing partial was left: "
                           "free disk space and run again)") from e
    except ValueError as e:
        raise ConvertError(f"writing {out} failed: {e}") from e
    if rounded:
        note(f"{outtype} stores the weight scale as fp16: the scales of {len(rounded)} tensors were rounded "
             "(the ternary codes are unchanged)")
    return out
