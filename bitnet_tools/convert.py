"""Hugging Face BitNet b1.58 checkpoints -> GGUF, streaming one tensor at a time.

    convert(model_dir, outfile, outtype="i2_s", embd_type=None, force=False, progress=None) -> Path

Families (bitnet_tools/models/): 1bitLLM bitnet_b1_58 (`bitnet`), BitNet-b1.58-2B-4T and its
-bf16 master weights (`bitnet-b1.58`), Llama-shaped 1.58-bit models (`llama`).

Every BitLinear weight is written as exactly q*s (q in {-1, 0, 1}, one scale per tensor), so
each output type holds the model's own weights: f32/i2_s/tl1/tl2 exactly, f16/tq1_0/tq2_0 with
the scale rounded to fp16, bf16 with the scale rounded to bf16. Our types take any row width
(bitnet_b1_58-3B's 8640 included). llama.cpp's TQ1_0/TQ2_0 need rows of whole 256-blocks: a
BitLinear they cannot hold is written as I2_S, with a warning -- never silently as f16. A token
embedding type that cannot hold the rows is refused if asked for, and replaced by one that can
(with a warning) if it was only the default.

Malformed input raises ConvertError (one line: cause and fix) and leaves no output file: the
writer works on a temporary name and renames only a complete file.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Callable

import numpy as np
import gguf
from gguf.constants import GGMLQuantizationType as T

from . import quants  # noqa: F401  (registers our types with gguf-py)
from .engine import EngineError
from .models import Family, families, for_architecture
from .writer import (EMBEDDING_TYPES, TERNARY_TYPES, PendingTensor, embedding_type, encode_rows, file_type,
                     row_block, ternary_type_for, write_gguf)

log = logging.getLogger(__name__)


class ConvertError(Exception):
    """A checkpoint the converter cannot (or will not) convert; the message says why and what to do."""


LINEARS = {  # HF leaf -> GGUF name
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")

# llama.cpp's convert_hf_to_gguf.py pre-tokenizer detection: sha256 of the token ids of CHKTXT
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
          '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B, BitNet 2B-4T
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",    # Falcon3-7B-Base
}
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---------------------------------------------------------------------------------------------
# reading the checkpoint

class Checkpoint:
    """Index of a model directory's safetensors: name -> (file, shape, dtype), headers only.
    Tensors are read one at a time with a fresh safe_open."""

    def __init__(self, model_dir: Path):
        try:
            from safetensors import safe_open
        except ImportError as e:  # pragma: no cover - a dependency
            raise ConvertError("safetensors is not installed: pip install safetensors") from e
        self._safe_open = safe_open
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"no *.safetensors files in {model_dir}: download the model's weights "
                               "(pytorch .bin checkpoints are not supported; re-save with safetensors)")
        self.index: dict[str, tuple[Path, tuple[int, ...], str]] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for k in sf.keys():
                        sl = sf.get_slice(k)
                        self.index[k] = (f, tuple(sl.get_shape()), str(sl.get_dtype()))
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise ConvertError(f"cannot read {f.name}: {_one_line(e)} (truncated or corrupt download? "
                                   "fetch the file again)") from e

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def shape(self, name: str) -> tuple[int, ...]:
        return self.index[name][1]

    def dtype(self, name: str) -> str:
        return self.index[name][2]

    def get(self, name: str) -> np.ndarray:
        """One tensor as numpy: uint8 stays uint8, floating types become float32."""
        import torch
        f = self.index[name][0]
        try:
            with self._safe_open(str(f), framework="pt") as sf:
                t = sf.get_tensor(name)
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"cannot read tensor {name} from {f.name}: {_one_line(e)} "
                               "(truncated or corrupt download? fetch the file again)") from e
        if t.dtype == torch.uint8:
            return t.numpy()
        if not t.is_floating_point():
            raise ConvertError(f"tensor {name} has dtype {t.dtype}: expected floating point or packed uint8")
        return t.to(torch.float32).numpy()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir} is not a directory: pass the directory of a Hugging Face model")
    if not path.is_file():
        raise ConvertError(f"no config.json in {model_dir}: pass the directory of a Hugging Face model "
                           "(with config.json, *.safetensors and tokenizer files)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"config.json in {model_dir} is not valid JSON ({_one_line(e)}): fetch it again") from e
    if not isinstance(cfg, dict):
        raise ConvertError(f"config.json in {model_dir} is not a JSON object: fetch it again")
    return cfg


# ---------------------------------------------------------------------------------------------
# hyperparameters

@dataclass
class HParams:
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx: int
    eps: float
    rope_theta: float
    rope_scaling: dict | None
    act: str
    tied: bool


def _rope(cfg: dict, default_theta: float) -> tuple[float, dict | None]:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or None
    theta = cfg.get("rope_theta", params.get("rope_theta", default_theta))
    rtype = (scaling or params).get("rope_type", (scaling or params).get("type", "default"))
    if rtype in (None, "default"):
        return float(theta), None
    if rtype == "linear":
        return float(theta), {"type": "linear", "factor": float((scaling or params).get("factor", 1.0))}
    raise ConvertError(f"RoPE scaling type {rtype!r} is not supported by this converter: "
                       "only default and linear RoPE are (remove rope_scaling only if the model was trained without it)")


def hparams(cfg: dict, fam: Family) -> HParams:
    try:
        n_embd, n_layer = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        n_ff, n_head, n_vocab = int(cfg["intermediate_size"]), int(cfg["num_attention_heads"]), int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"config.json lacks {e} (hidden_size, num_hidden_layers, intermediate_size, "
                           "num_attention_heads, vocab_size are needed): fetch the model's own config.json") from e
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    act = cfg.get("hidden_act", fam.default_act)
    if act not in fam.supported_acts:
        raise ConvertError(f"hidden_act {act!r} is not what GGUF arch {fam.gguf_arch!r} computes "
                           f"({', '.join(fam.supported_acts)}): this checkpoint is not a {fam.name} model")
    theta, scaling = _rope(cfg, fam.default_rope_theta)
    return HParams(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
                   head_dim=head_dim, n_ctx=int(cfg.get("max_position_embeddings") or 4096),
                   eps=float(cfg.get("rms_norm_eps", 1e-5)), rope_theta=theta, rope_scaling=scaling, act=act,
                   tied=bool(cfg.get("tie_word_embeddings", False)))


def pick_family(cfg: dict) -> Family:
    archs = cfg.get("architectures") or []
    for a in archs:
        fam = for_architecture(a)
        if fam is not None:
            return fam
    known = ", ".join(a for f in families() for a in f.architectures)
    raise ConvertError(f"unknown architecture {archs or cfg.get('model_type')!r} in config.json: "
                       f"this converter handles {known}")


def scale_mode(cfg: dict, fam: Family) -> str:
    """How a packed weight's weight_scale applies: transformers' linear_class decides when given."""
    qc = cfg.get("quantization_config") or {}
    if qc.get("use_rms_norm"):
        raise ConvertError("quantization_config.use_rms_norm (an RMSNorm inside every BitLinear) has no "
                           "GGUF equivalent in these architectures: not supported")
    lc = qc.get("linear_class")
    if lc == "autobitlinear":
        return "multiply"
    if lc == "bitlinear":
        return "divide"
    return fam.scale_mode


# ---------------------------------------------------------------------------------------------
# weights

def unpack_ternary(packed: np.ndarray) -> np.ndarray:
    """uint8 [out/4, in] -> int8 [out, in] in {-1, 0, 1}: code i (bits 2i) of byte (r, c) is row i*(out/4)+r."""
    rows = packed.shape[0]
    out = np.empty((4 * rows, *packed.shape[1:]), dtype=np.int8)
    for i in range(4):
        codes = (packed >> np.uint8(2 * i)) & np.uint8(3)
        out[i * rows:(i + 1) * rows] = codes.astype(np.int8) - np.int8(1)
    if (out > 1).any():
        raise ConvertError("packed weights hold the code 3, which is not a ternary value: corrupt checkpoint")
    return out


def absmean_ternary(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """BitNet b1.58 weight quantization (as its BitLinear does at run time): s = mean|W| (>= 1e-5),
    q = clamp(round(W / s), -1, 1)."""
    import torch
    t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    iscale = 1.0 / t.abs().mean().clamp(min=1e-5)
    q = (t * iscale).round().clamp(-1, 1).to(torch.int8).numpy()
    return q, np.float32(1.0 / iscale.item())


def as_ternary(w: np.ndarray, rtol: float = 1e-3) -> tuple[np.ndarray, np.float32] | None:
    """Already-ternary float weights (one magnitude per tensor, or zero) -> (q, s); else None."""
    a = np.abs(w)
    s = float(a.max()) if a.size else 0.0
    if s == 0.0:
        return np.zeros(w.shape, dtype=np.int8), np.float32(0)
    nz = a > s * 0.5
    if not np.allclose(a[nz], s, rtol=rtol, atol=0) or (a[~nz] > s * rtol).any():
        return None
    return (np.sign(w) * nz).astype(np.int8), np.float32(a[nz].mean())


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate-half) rows -> llama.cpp's interleaved RoPE rows, as convert_hf_to_gguf.py does."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class Source:
    ckpt: Checkpoint
    fam: Family
    scale_mode: str
    force: bool

    def ternary(self, name: str) -> tuple[np.ndarray, np.float32]:
        """(q int8 [out, in], per-tensor scale) of a BitLinear weight: effective weight q * s."""
        w = self.ckpt.get(name)
        sname = name[: -len("weight")] + "weight_scale"
        ws = None
        if sname in self.ckpt:
            wsv = self.ckpt.get(sname).reshape(-1)
            if wsv.size != 1:
                raise ConvertError(f"{sname} has {wsv.size} values: only one scale per tensor is supported")
            ws = np.float32(wsv[0])
        if w.dtype == np.uint8:
            q = unpack_ternary(w)
            if ws is None:
                s = np.float32(1)
            elif self.scale_mode == "multiply":
                s = ws
            else:
                if ws == 0:
                    raise ConvertError(f"{sname} is zero, but it divides the weights: corrupt checkpoint")
                s = np.float32(np.float32(1) / ws)
            return q, s
        if ws is not None:  # float weights with a scale: apply it the same way before anything else
            w = w * ws if self.scale_mode == "multiply" else w / ws
        if self.fam.float_weights == "latent":
            return absmean_ternary(w)
        got = as_ternary(w)
        if got is not None:
            return got
        if self.force:
            log.warning("%s is not ternary: quantizing it with absmean (force)", name)
            return absmean_ternary(w)
        raise ConvertError(f"{name} is not ternary after scaling: this is not a BitNet b1.58 checkpoint "
                           "(pass force=True / --force to ternarize it anyway, at a large loss of quality)")


# ---------------------------------------------------------------------------------------------
# tokenizer

def _vocab_bpe(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], str]:
    """Byte-level BPE (Llama-3 style) as convert_hf_to_gguf.py's get_vocab_base does."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ConvertError(f"the tokenizer has token id {max(vocab.values())} but config.json's vocab_size is "
                           f"{n_vocab}: tokenizer and weights do not belong together")
    chkhsh = sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()
    pre = PRE_BY_HASH.get(chkhsh)
    if pre is None:
        pre = _pre_from_json(model_dir)
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            special = decoder[i].special if i in decoder else False
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    return tokens, [int(t) for t in types], pre


def _pre_from_json(model_dir: Path) -> str:
    """Unknown hash: recognise the Llama-3 split regex in tokenizer.json, else llama.cpp's default."""
    try:
        text = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
        pre_tok = json.loads(text).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        pre_tok = {}
    if LLAMA3_REGEX in json.dumps(pre_tok, ensure_ascii=False).replace("\\\\", "\\"):
        return "llama-bpe"
    log.warning("unrecognised BPE pre-tokenizer: writing tokenizer.ggml.pre = 'default' "
                "(tokenization in llama.cpp may differ from transformers)")
    return "default"


def add_vocab(w: gguf.GGUFWriter, model_dir: Path, n_vocab: int) -> None:
    tj = model_dir / "tokenizer.json"
    spm = model_dir / "tokenizer.model"
    try:
        if tj.is_file():
            model = json.loads(tj.read_text(encoding="utf-8")).get("model", {})
            if model.get("type") == "BPE" and model.get("byte_fallback"):
                _add_vocab_spm(w, gguf.LlamaHfVocab(model_dir), n_vocab)
                gguf.SpecialVocab(model_dir, n_vocab=n_vocab).add_to_gguf(w)
            elif model.get("type") == "BPE":
                tokens, types, pre = _vocab_bpe(model_dir, n_vocab)
                w.add_tokenizer_model("gpt2")
                w.add_tokenizer_pre(pre)
                w.add_token_list(tokens)
                w.add_token_types(types)
                gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab).add_to_gguf(w)
            else:
                raise ConvertError(f"tokenizer.json model type {model.get('type')!r} is not supported "
                                   "(byte-level BPE and SentencePiece-style BPE are)")
        elif spm.is_file():
            try:
                import sentencepiece  # noqa: F401
            except ImportError as e:
                raise ConvertError("tokenizer.model needs the sentencepiece package: pip install sentencepiece "
                                   "(or provide the model's tokenizer.json)") from e
            _add_vocab_spm(w, gguf.SentencePieceVocab(model_dir), n_vocab)
            gguf.SpecialVocab(model_dir, n_vocab=n_vocab).add_to_gguf(w)
        else:
            raise ConvertError(f"no tokenizer.json or tokenizer.model in {model_dir}: copy the tokenizer files "
                               "from the original model repository")
    except ConvertError:
        raise
    except Exception as e:  # noqa: BLE001 - tokenizer libraries raise many kinds
        raise ConvertError(f"cannot read the tokenizer in {model_dir}: {_one_line(e)}") from e


def _add_vocab_spm(w: gguf.GGUFWriter, vocab, n_vocab: int) -> None:
    tokens, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(ttype))
    if len(tokens) > n_vocab:
        raise ConvertError(f"the tokenizer has {len(tokens)} tokens but config.json's vocab_size is {n_vocab}: "
                           "tokenizer and weights do not belong together")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)


# ---------------------------------------------------------------------------------------------
# the plan: which GGUF tensors, from what

def _plan(ckpt: Checkpoint, fam: Family, hp: HParams, src: Source, qtype: T, embd_qtype: T,
          force: bool) -> list[PendingTensor]:
    e = hp.n_embd
    kv = hp.head_dim * hp.n_head_kv
    q_dim = hp.head_dim * hp.n_head
    expect_linear = {
        "attn_q": (q_dim, e), "attn_k": (kv, e), "attn_v": (kv, e), "attn_output": (e, q_dim),
        "ffn_gate": (hp.n_ff, e), "ffn_up": (hp.n_ff, e), "ffn_down": (e, hp.n_ff),
    }
    expect_norm = {"attn_norm": e, "ffn_norm": e, "attn_sub_norm": q_dim, "ffn_sub_norm": hp.n_ff}
    sub_norms = fam.sub_norms
    seen: set[str] = set()
    out: list[PendingTensor] = []
    substituted: dict[str, int] = {}

    def norm(name: str, gname: str, n: int):
        shape = ckpt.shape(name)
        if shape != (n,):
            raise ConvertError(f"{name} has shape {shape}, expected ({n},) from config.json: "
                               "weights and config.json do not belong together")
        out.append(PendingTensor(gname, (n,), T.F32, lambda: ckpt.get(name).astype(np.float32).reshape(-1)))

    def linear(name: str, gname: str, role: str, il: int):
        rows, cols = expect_linear[role]
        shape, packed = ckpt.shape(name), ckpt.dtype(name) == "U8"
        want = (rows // 4, cols) if packed else (rows, cols)
        if shape != want:
            raise ConvertError(f"{name} has shape {shape}, expected {want} from config.json: "
                               "weights and config.json do not belong together")
        t = ternary_type_for(cols, qtype)
        if t != qtype:
            substituted[role] = cols
        n_head = hp.n_head if role == "attn_q" else hp.n_head_kv

        def produce():
            q, s = src.ternary(name)
            if fam.permute_qk and role in ("attn_q", "attn_k"):
                q = permute_qk(q, n_head)
            values = q.astype(np.float32) * s   # exactly q*s: lossless in every type
            return encode_rows(values, t)
        out.append(PendingTensor(gname, (rows, cols), t, produce))

    def embedding(name: str, gname: str):
        shape = ckpt.shape(name)
        if shape != (hp.n_vocab, e):
            raise ConvertError(f"{name} has shape {shape}, expected {(hp.n_vocab, e)} from config.json: "
                               "weights and config.json do not belong together")
        t = embd_qtype
        out.append(PendingTensor(gname, (hp.n_vocab, e), t, lambda: encode_rows(ckpt.get(name), t)))

    if "model.embed_tokens.weight" not in ckpt:
        raise ConvertError("model.embed_tokens.weight is missing: incomplete checkpoint (fetch all *.safetensors files)")
    embedding("model.embed_tokens.weight", "token_embd.weight")
    seen.add("model.embed_tokens.weight")

    for il in range(hp.n_layer):
        base = f"model.layers.{il}."
        for leaf, gname in {**NORMS, **sub_norms}.items():
            nm = base + leaf + ".weight"
            if nm not in ckpt:
                why = (f"not a {fam.name} checkpoint, or incomplete" if leaf in sub_norms
                       else "incomplete checkpoint (fetch all *.safetensors files)")
                raise ConvertError(f"{nm} is missing: {why}")
            norm(nm, f"blk.{il}.{gname}.weight", expect_norm[gname])
            seen.add(nm)
        for leaf, role in LINEARS.items():
            nm = base + leaf + ".weight"
            if nm not in ckpt:
                raise ConvertError(f"{nm} is missing: incomplete checkpoint (fetch all *.safetensors files)")
            linear(nm, f"blk.{il}.{role}.weight", role, il)
            seen.add(nm)
            seen.add(base + leaf + ".weight_scale")

    if "model.norm.weight" not in ckpt:
        raise ConvertError("model.norm.weight is missing: incomplete checkpoint (fetch all *.safetensors files)")
    norm("model.norm.weight", "output_norm.weight", e)
    seen.add("model.norm.weight")

    if "lm_head.weight" in ckpt:
        seen.add("lm_head.weight")
        if fam.tied_output:
            if not hp.tied and not _same(ckpt, "lm_head.weight", "model.embed_tokens.weight"):
                if not force:
                    raise ConvertError(f"lm_head.weight differs from the token embedding, but GGUF arch "
                                       f"{fam.gguf_arch!r} always uses token_embd as the output head "
                                       "(pass force=True / --force to drop lm_head)")
                log.warning("dropping lm_head.weight (arch %s ties the output head to token_embd)", fam.gguf_arch)
        elif not hp.tied:
            embedding("lm_head.weight", "output.weight")

    for name in ckpt.index:
        if name in seen or name.endswith("rotary_emb.inv_freq"):
            continue
        raise ConvertError(f"unexpected tensor {name} for {fam.name}: not a supported checkpoint "
                           "(biases, extra norms and adapters are not converted)")
    if hp.n_layer and any(f"model.layers.{hp.n_layer}." in n for n in ckpt.index):
        raise ConvertError("more layers in the weights than num_hidden_layers in config.json")
    for role, cols in substituted.items():
        log.warning("%s: %s cannot hold rows of %d values (blocks of %d): writing those tensors as i2_s",
                    role, qtype.name.lower(), cols, row_block(qtype))
    return out


def _same(ckpt: Checkpoint, a: str, b: str) -> bool:
    if ckpt.shape(a) != ckpt.shape(b):
        return False
    return bool(np.array_equal(ckpt.get(a), ckpt.get(b)))


# ---------------------------------------------------------------------------------------------

def convert(model_dir, outfile, outtype: str = "i2_s", embd_type: str | None = None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Path:
    """Convert a Hugging Face BitNet b1.58 model directory to a GGUF file; returns its path."""
    model_dir, outfile = Path(model_dir), Path(outfile)
    if outtype not in TERNARY_TYPES:
        raise ConvertError(f"unknown output type {outtype!r}: choose one of {', '.join(TERNARY_TYPES)}")
    if embd_type is not None and embd_type not in EMBEDDING_TYPES:
        raise ConvertError(f"unknown embedding type {embd_type!r}: choose one of {', '.join(EMBEDDING_TYPES)}")
    cfg = read_config(model_dir)
    if not outfile.parent.is_dir():
        raise ConvertError(f"output directory {outfile.parent} does not exist: create it first")
    fam = pick_family(cfg)
    hp = hparams(cfg, fam)
    qtype = TERNARY_TYPES[outtype]
    try:
        embd_qtype, note = embedding_type(embd_type, hp.n_embd, "q6_k" if hp.n_vocab >= 65536 else "f16")
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if note:
        log.warning("%s", note)
    ckpt = Checkpoint(model_dir)
    src = Source(ckpt, fam, scale_mode(cfg, fam), force)
    tensors = _plan(ckpt, fam, hp, src, qtype, embd_qtype, force)
    # refuse a non-BitNet checkpoint before writing anything: check one BitLinear weight now
    if hp.n_layer:
        src.ternary(f"model.layers.0.{next(iter(LINEARS))}.weight")

    def kv(w: gguf.GGUFWriter):
        arch = fam.gguf_arch
        w.add_name(cfg.get("_name_or_path") and Path(str(cfg["_name_or_path"])).name or model_dir.name)
        w.add_file_type(file_type(tensors))
        w.add_context_length(hp.n_ctx)
        w.add_embedding_length(hp.n_embd)
        w.add_block_count(hp.n_layer)
        w.add_feed_forward_length(hp.n_ff)
        w.add_head_count(hp.n_head)
        w.add_head_count_kv(hp.n_head_kv)
        if hp.head_dim * hp.n_head != hp.n_embd:
            w.add_key_length(hp.head_dim)
            w.add_value_length(hp.head_dim)
        w.add_rope_dimension_count(hp.head_dim)
        w.add_rope_freq_base(hp.rope_theta)
        if hp.rope_scaling:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(hp.rope_scaling["factor"])
        w.add_layer_norm_rms_eps(hp.eps)
        w.add_vocab_size(hp.n_vocab)
        add_vocab(w, model_dir, hp.n_vocab)

    try:
        return write_gguf(outfile, fam.gguf_arch, kv, tensors, progress)
    except ConvertError:
        raise
    except EngineError as e:
        raise ConvertError(str(e)) from e
    except OSError as e:
        raise ConvertError(f"writing {outfile} failed: {_one_line(e)} (nothing partial was left: "
                           "free disk space and run again)") from e
    except ValueError as e:
        raise ConvertError(f"writing {outfile} failed: {_one_line(e)}") from e
