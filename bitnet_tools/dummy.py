"""Dummy BitNet b1.58 models of standard shapes, with random ternary weights.

Speed does not depend on weight values, so these serve benchmarks and the no-network demo.
Every tensor is produced in row chunks, so even a 100B-shape file is written without holding
it in memory. The architecture is BitNet b1.58 2B-4T's (`bitnet-b1.58`: squared-ReLU FFN,
sub-norms, GQA, tied embeddings), except for the embedding shapes (`embed-0.6b`, `embed-270m`):
bitnet-embedding-0.6b's Qwen3 and -270m's Gemma 3 layouts, with an RMSNorm before every
projection, last-token pooling and f16 token embeddings, as their conversions have.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import gguf
from gguf.constants import GGMLQuantizationType as T

from . import quants
from .quants import i2_s
from .writer import (EMBEDDING_TYPES, TERNARY_TYPES, PendingTensor, embedding_type, encode, file_type,
                     ternary_type_for, write_gguf)

ARCH = "bitnet-b1.58"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shape:
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    head_dim: int = 0          # 0: n_embd / n_head
    arch: str = ARCH           # "qwen3" / "gemma3": an embedding model of that backbone

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def embedding(self) -> bool:
        return self.arch != ARCH


SHAPES = {
    "tiny": Shape(256, 2, 768, 4, 2, 512),      # the demo: small enough to build in a second
    "125m": Shape(768, 12, 2048, 12, 12, 32000),
    "700m": Shape(1536, 24, 4096, 16, 16, 32000),
    "1.5b": Shape(2048, 24, 5632, 16, 16, 32000),
    "2b4t": Shape(2560, 30, 6912, 20, 5, 128256),  # microsoft/BitNet-b1.58-2B-4T
    "3b": Shape(3200, 26, 8640, 32, 32, 32000),    # 1bitLLM/bitnet_b1_58-3B
    "8b": Shape(4096, 32, 14336, 32, 8, 128256),   # Llama3-8B-1.58
    "13b": Shape(5120, 40, 13824, 40, 40, 32000),
    "30b": Shape(6656, 60, 17920, 52, 52, 32000),
    "70b": Shape(8192, 80, 28672, 64, 8, 32000),
    "100b": Shape(8192, 112, 28672, 64, 8, 128256),
    # the widths of tiiuae/Falcon3-*-1.58bit (head dim 256; those models are Llama-shaped, these
    # dummies keep the bitnet-b1.58 graph: only the matrix widths matter for speed)
    "falcon3-1b": Shape(2048, 18, 8192, 8, 4, 131072),
    "falcon3-3b": Shape(3072, 22, 9216, 12, 4, 131072),
    "falcon3-7b": Shape(3072, 28, 23040, 12, 4, 131072),
    "falcon3-10b": Shape(3072, 40, 23040, 12, 4, 131072),
    # the text-embedding models (head sizes 128 and 256, wider than width / heads)
    "embed-0.6b": Shape(1024, 28, 3072, 16, 8, 151936, head_dim=128, arch="qwen3"),   # bitnet-embedding-0.6b
    "embed-270m": Shape(640, 18, 2048, 4, 1, 262144, head_dim=256, arch="gemma3"),    # bitnet-embedding-270m
}

CHUNK = 1 << 22  # elements generated at a time
WEIGHT_SCALE = 0.02


def layer_matrices(shape: Shape) -> list[tuple[str, int, int]]:
    """(name, rows, row width) of one layer's BitLinear weights."""
    e, f = shape.n_embd, shape.n_ff
    q, kv = shape.hd * shape.n_head, shape.hd * shape.n_head_kv
    return [("attn_q", q, e), ("attn_k", kv, e), ("attn_v", kv, e), ("attn_output", e, q),
            ("ffn_gate", f, e), ("ffn_up", f, e), ("ffn_down", e, f)]


def layer_norms(shape: Shape) -> list[tuple[str, int]]:
    """(name, width) of one layer's norm weights (f32)."""
    e = shape.n_embd
    if not shape.embedding:
        return [("attn_norm", e), ("attn_sub_norm", e), ("ffn_norm", e), ("ffn_sub_norm", shape.n_ff)]
    own = [("attn_norm", e), ("ffn_norm", e), ("attn_q_norm", shape.hd), ("attn_k_norm", shape.hd)]
    if shape.arch == "gemma3":
        own += [("post_attention_norm", e), ("post_ffw_norm", e)]
    return own + [(name + "_norm_in", cols) for name, _, cols in layer_matrices(shape)]


def n_params(shape: Shape) -> int:
    per_layer = sum(rows * cols for _, rows, cols in layer_matrices(shape))
    return shape.n_layer * per_layer + shape.n_vocab * shape.n_embd


def _row_chunks(rows: int, cols: int) -> Iterator[int]:
    per = max(16, CHUNK // cols // 16 * 16)  # whole 16-row tiles for TL1/TL2
    for r0 in range(0, rows, per):
        yield min(per, rows - r0)


def _ternary(rng: np.random.Generator, rows: int, cols: int, qtype: T) -> Callable[[], Iterator[np.ndarray]]:
    def produce():
        for n in _row_chunks(rows, cols):
            q = rng.integers(-1, 2, size=(n, cols), dtype=np.int8)
            if qtype in quants.BY_QTYPE:  # one scale per tensor: codes packed here, the scale once after them
                yield quants.BY_QTYPE[qtype].quant.pack_codes(q)
            else:
                yield encode(q.astype(np.float32) * np.float32(WEIGHT_SCALE), qtype)
        if qtype in quants.BY_QTYPE:
            yield i2_s.tail(WEIGHT_SCALE)
    return produce


def _q6_k_random(rng: np.random.Generator, rows: int, cols: int) -> Iterator[np.ndarray]:
    """Random but valid Q6_K blocks (gguf-py has no numpy Q6_K quantizer): random 6-bit
    codes and sub-scales, a small fp16 super-scale."""
    d = np.frombuffer(np.float16(1e-4).tobytes(), dtype=np.uint8)
    for n in _row_chunks(rows, cols):
        nb = n * cols // 256
        blocks = rng.integers(0, 256, size=(nb, 210), dtype=np.uint8)
        blocks[:, 192:208] = rng.integers(1, 32, size=(nb, 16), dtype=np.uint8)  # int8 scales > 0
        blocks[:, 208:210] = d
        yield blocks.reshape(-1)


def _embedding(rng: np.random.Generator, rows: int, cols: int, qtype: T) -> Callable[[], Iterator[np.ndarray]]:
    def produce():
        if qtype == T.Q6_K:
            yield from _q6_k_random(rng, rows, cols)
            return
        for n in _row_chunks(rows, cols):
            yield encode(rng.standard_normal((n, cols), dtype=np.float32) * np.float32(0.02), qtype)
    return produce


def _ones(n: int) -> Callable[[], np.ndarray]:
    return lambda: np.ones(n, dtype=np.float32)


def vocab(n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    """A SentencePiece-style vocabulary: <unk> <s> </s>, the 256 byte tokens, then filler words."""
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    i = 0
    while len(tokens) < n_vocab:
        # "▁" marks a word start in SentencePiece vocabularies
        word, k = "", i
        while True:
            word += letters[k % 26]
            k //= 26
            if k == 0:
                break
        tokens.append(("\u2581" + word).encode())
        types.append(gguf.TokenType.NORMAL)
        i += 1
    scores = [0.0] * 3 + [0.0] * 256 + [-float(j) for j in range(len(tokens) - 259)]
    return tokens[:n_vocab], scores[:n_vocab], [int(t) for t in types[:n_vocab]]


def tensors(shape: Shape, qtype: T, embd_type: T, seed: int = 0) -> list[PendingTensor]:
    rng = np.random.default_rng(seed)
    e = shape.n_embd
    out = [PendingTensor("token_embd.weight", (shape.n_vocab, e), embd_type, _embedding(rng, shape.n_vocab, e, embd_type))]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        for name, n in layer_norms(shape):
            out.append(PendingTensor(b + name + ".weight", (n,), T.F32, _ones(n)))
        for name, rows, cols in layer_matrices(shape):
            t = ternary_type_for(cols, qtype)
            out.append(PendingTensor(b + name + ".weight", (rows, cols), t, _ternary(rng, rows, cols, t)))
    out.append(PendingTensor("output_norm.weight", (e,), T.F32, _ones(e)))
    return out


def metadata(shape: Shape, name: str, file_type: int) -> Callable[[gguf.GGUFWriter], None]:
    """The KV metadata of a bitnet-b1.58 model of this shape with the dummy vocabulary."""
    def kv(w: gguf.GGUFWriter):
        w.add_name(name)
        w.add_file_type(file_type)
        w.add_context_length(4096)
        w.add_embedding_length(shape.n_embd)
        w.add_block_count(shape.n_layer)
        w.add_feed_forward_length(shape.n_ff)
        w.add_head_count(shape.n_head)
        w.add_head_count_kv(shape.n_head_kv)
        if shape.hd * shape.n_head != shape.n_embd:
            w.add_key_length(shape.hd)
            w.add_value_length(shape.hd)
        w.add_rope_dimension_count(shape.hd)
        w.add_rope_freq_base(1e6 if shape.embedding else 500000.0)
        w.add_layer_norm_rms_eps(1e-6 if shape.embedding else 1e-5)
        if shape.embedding:
            w.add_pooling_type(gguf.PoolingType.LAST)
            w.add_add_eos_token(True)   # the pooled token
        w.add_vocab_size(shape.n_vocab)
        tokens, scores, types = vocab(shape.n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
    return kv


def unheld_widths(shape: Shape, qtype) -> list[int]:
    """The BitLinear row widths of `shape` that `qtype` cannot hold (`write` makes those I2_S)."""
    return sorted(w for w in {shape.n_embd, shape.n_ff} if ternary_type_for(w, qtype) != qtype)


def write(path: Path, shape_name: str, qtype_name: str, embd_type_name: str | None = None, seed: int = 0,
          progress: Callable[[str], None] | None = None, arch: str = ARCH,
          note: Callable[[str], None] = log.warning, n_layer: int | None = None, n_vocab: int | None = None) -> Path:
    """A random-weight model; `arch` may be any name the engine maps to BitNet b1.58 with a relu²
    FFN (bitnet-b1.58, or bitnet-25 as older bitnet.cpp converters wrote it). The embedding is
    q6_k unless asked otherwise or its blocks cannot hold the rows (then q8_0). Where a type
    cannot hold a BitLinear's rows (TQ1_0/TQ2_0) that tensor is I2_S; `note` is told of each
    such choice. n_layer / n_vocab shrink the model (test files with a shape's widths)."""
    if shape_name not in SHAPES:
        raise ValueError(f"unknown shape {shape_name!r}: choose one of {', '.join(SHAPES)}")
    if qtype_name not in TERNARY_TYPES:
        raise ValueError(f"unknown type {qtype_name!r}: choose one of {', '.join(TERNARY_TYPES)}")
    if embd_type_name is not None and embd_type_name not in EMBEDDING_TYPES:
        raise ValueError(f"unknown embedding type {embd_type_name!r}: choose one of {', '.join(EMBEDDING_TYPES)}")
    shape, qtype = SHAPES[shape_name], TERNARY_TYPES[qtype_name]
    if n_layer is not None or n_vocab is not None:
        if (n_layer is not None and n_layer < 1) or (n_vocab is not None and n_vocab < 260):
            raise ValueError("a dummy model needs at least 1 layer and 260 tokens (3 specials and 256 bytes)")
        shape = replace(shape, n_layer=n_layer or shape.n_layer, n_vocab=n_vocab or shape.n_vocab)
    embd_type, why = embedding_type(embd_type_name, shape.n_embd, "f16" if shape.embedding else "q6_k")
    if why:
        note(why)
    for width in unheld_widths(shape, qtype):
        note(f"{qtype_name} cannot hold rows of {width} values: those tensors are i2_s")
    ts = tensors(shape, qtype, embd_type, seed)

    arch = shape.arch if shape.embedding else arch
    return write_gguf(path, arch, metadata(shape, f"bitnet-dummy-{shape_name}", file_type(ts)), ts, progress)
