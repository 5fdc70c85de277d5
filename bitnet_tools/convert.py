"""Hugging Face BitNet b1.58 checkpoints -> GGUF, streaming one tensor at a time.

    convert(model_dir, outfile, outtype="i2_s", embd_type=None, force=False, progress=None) -> Path

Families (bitnet_tools/models/): 1bitLLM bitnet_b1_58 (`bitnet`), BitNet-b1.58-2B-4T and its
-bf16 master weights (`bitnet-b1.58`), Llama-shaped 1.58-bit models (`llama`), and the
bitnet-embedding models on Qwen3 (`qwen3`) and Gemma 3 (`gemma3`) backbones: text embeddings
(last-token pooling), an RMSNorm before every projection (`*_norm_in`), no output head.

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
import math
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
from .models import NORMS, Family, families, for_architecture, for_model_type
from .writer import (EMBEDDING_TYPES, TERNARY_TYPES, PendingTensor, embedding_type, encode_rows, file_type,
                     row_block, ternary_type_for, write_gguf)

log = logging.getLogger(__name__)


class ConvertError(Exception):
    """A checkpoint the converter cannot (or will not) convert; the message says why and what to do."""

    def __init__(self, message: str):
        # one printable line, whatever text of the checkpoint it quotes: a tensor name with a
        # newline or a lone surrogate is shown escaped
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message)))


LINEARS = {  # HF leaf -> GGUF name
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
INT32_MAX = 2**31 - 1   # sizes and counts: GGUF stores them as uint32, llama.cpp holds them in int32
# what the engine accepts when it loads a file (patches/files/src/llama-bitnet-validate.cpp):
# never write a file it would refuse
MAX_LAYERS, MAX_WIDTH, MAX_CONTEXT = 512, 2**20, 2**26
FLOAT32_MAX = float(np.finfo(np.float32).max)   # GGUF stores eps, RoPE theta and factor as float32
# safetensors dtypes torch reads as floating point; BitLinear weights may also be packed "U8"
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64", "F8_E4M3", "F8_E5M2")
SPECIAL_TOKENS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")   # gguf-py reads <typ>_token_id

# llama.cpp's convert_hf_to_gguf.py pre-tokenizer detection: sha256 of the token ids of CHKTXT
CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) '
          '✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
          '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
          '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')
PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B, BitNet 2B-4T
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",    # Falcon3-7B-Base
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",      # Qwen3-Embedding-0.6B
    "855d9fb74bb0b28ce2305e9cd037ff6d8c798f18d19381ddfc14bea3dc9c002f": "qwen2",      # bitnet-embedding-0.6b
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
            for name, shape, dtype in self._header(f):
                if name in self.index:   # which of the two is meant cannot be known
                    raise ConvertError(f"tensor {name} is in both {self.index[name][0].name} and {f.name}: keep "
                                       "only the *.safetensors files of one download of the model")
                self.index[name] = (f, shape, dtype)
        # a base model saved without its head (the embedding models: Qwen3Model, Gemma3TextModel) has
        # no "model." prefix; name its tensors as a full checkpoint does, reading them by their own names
        self.stored = {name: name for name in self.index}
        if "embed_tokens.weight" in self.index and not any(n.startswith("model.") for n in self.index):
            self.stored = {"model." + name: name for name in self.index}
            self.index = {"model." + name: v for name, v in self.index.items()}

    def _header(self, f: Path) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of each tensor in `f`. safetensors checks the header against the
        file (offsets, sizes, dtypes) when it opens it."""
        try:
            tensors = []
            with self._safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    tensors.append((k, tuple(sl.get_shape()), str(sl.get_dtype())))
            return tensors
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
                t = sf.get_tensor(self.stored[name])
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"cannot read tensor {name} from {f.name}: {_one_line(e)} "
                               "(truncated or corrupt download? fetch the file again)") from e
        if t.dtype == torch.uint8:
            return t.numpy()
        if not t.is_floating_point():
            raise ConvertError(f"tensor {name} has dtype {t.dtype}, not floating point or packed uint8: "
                               "corrupt checkpoint (fetch the file again)")
        return t.to(torch.float32).numpy()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _shown(v) -> str:
    """A value of the checkpoint as a message quotes it: repr, cut short."""
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir} is not a directory: pass the directory of a Hugging Face model")
    if not path.is_file():
        raise ConvertError(f"no config.json in {model_dir}: pass the directory of a Hugging Face model "
                           "(with config.json, *.safetensors and tokenizer files)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:   # RecursionError: nested too deep
        raise ConvertError(f"config.json in {model_dir} is not valid JSON ({_one_line(e)}): fetch it again") from e
    if not isinstance(cfg, dict):
        raise ConvertError(f"config.json in {model_dir} is not a JSON object: fetch it again")
    return cfg


# ---------------------------------------------------------------------------------------------
# hyperparameters: each value of config.json the converter uses is checked on its own, so a broken
# one is named with its key instead of surfacing later as a confusing shape error or a crash

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
    head_dim_key: str = "head_dim"   # where head_dim came from, for messages


def _fix(key: str, v, problem: str) -> ConvertError:
    return ConvertError(f"config.json: {key}={_shown(v)} {problem}: fix the checkpoint's config.json")


def _whole(key: str, v, default: int | None = None, most: int = INT32_MAX) -> int:
    """A size or count: a whole number in 1 .. most; absent or null gives `default`."""
    if v is None:
        if default is None:
            raise ConvertError(f"config.json lacks {key}: fetch the model's own config.json")
        return default
    n = int(v) if isinstance(v, float) and v.is_integer() else v   # 2048.0: JSON has one number type
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= most:
        raise _fix(key, v, f"is not a whole number in 1 .. {most}")
    return n


def _positive(key: str, v, default: float | None, below: float) -> float:
    """A finite number in (0, below); absent or null gives `default` (None: required)."""
    if v is None:
        if default is None:
            raise ConvertError(f"config.json lacks {key}: fix the checkpoint's config.json")
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < below:   # NaN fails too
        raise _fix(key, v, f"is not a number in (0, {below:g})")
    return float(v)


def _flag(key: str, v, default: bool) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _fix(key, v, "is not true or false")
    return v


def _object(cfg: dict, key: str) -> dict:
    """A nested object of config.json; absent or null gives {}."""
    v = cfg.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fix(key, v, "is not a JSON object")
    return v


def _rope(cfg: dict, default_theta: float) -> tuple[float, dict | None]:
    params, scaling = _object(cfg, "rope_parameters"), _object(cfg, "rope_scaling")
    if "full_attention" in params:   # per layer kind (Gemma 3): the full-attention layers' RoPE is the main one
        params = _object(params, "full_attention")
    if cfg.get("rope_theta") is not None:
        theta = _positive("rope_theta", cfg["rope_theta"], default_theta, FLOAT32_MAX)
    else:   # transformers >= 5 writes it here
        theta = _positive("rope_parameters.rope_theta", params.get("rope_theta"), default_theta, FLOAT32_MAX)
    key, rope = ("rope_scaling", scaling) if scaling else ("rope_parameters", params)
    rtype = rope.get("rope_type", rope.get("type", "default"))
    if rtype in (None, "default"):
        return theta, None
    if rtype == "linear":
        return theta, {"type": "linear", "factor": _positive(f"{key}.factor", rope.get("factor"), None, FLOAT32_MAX)}
    raise ConvertError(f"config.json: {key} type {_shown(rtype)} is not supported by this converter: only default "
                       f"and linear RoPE are (remove {key} only if the model was trained without it)")


def hparams(cfg: dict, fam: Family) -> HParams:
    n_embd = _whole("hidden_size", cfg.get("hidden_size"), most=MAX_WIDTH)
    n_layer = _whole("num_hidden_layers", cfg.get("num_hidden_layers"), most=MAX_LAYERS)
    n_ff = _whole("intermediate_size", cfg.get("intermediate_size"), most=MAX_WIDTH)
    n_head = _whole("num_attention_heads", cfg.get("num_attention_heads"), most=n_embd)
    n_vocab = _whole("vocab_size", cfg.get("vocab_size"))
    n_head_kv = _whole("num_key_value_heads", cfg.get("num_key_value_heads"), n_head)
    if n_head % n_head_kv:   # grouped-query attention shares each K/V head among whole groups
        raise ConvertError(f"config.json: num_key_value_heads={n_head_kv} does not divide num_attention_heads="
                           f"{n_head}: fix the checkpoint's config.json")
    if cfg.get("head_dim") is None:   # transformers' default
        if n_embd % n_head:
            raise ConvertError(f"config.json: hidden_size={n_embd} is not a multiple of num_attention_heads={n_head} "
                               "(and no head_dim is given): fix the checkpoint's config.json")
        head_dim, head_dim_key = n_embd // n_head, "hidden_size/num_attention_heads"
    else:
        head_dim, head_dim_key = _whole("head_dim", cfg["head_dim"], most=MAX_WIDTH), "head_dim"
    if head_dim % 2:
        raise ConvertError(f"config.json: {head_dim_key}={head_dim} is odd, but RoPE rotates pairs of values: "
                           "fix the checkpoint's config.json")
    act = cfg.get("hidden_act", cfg.get("hidden_activation"))   # Gemma names it hidden_activation
    act = fam.default_act if act is None else act
    if act not in fam.supported_acts:
        raise ConvertError(f"config.json: hidden_act={_shown(act)} is not what GGUF arch {fam.gguf_arch!r} computes "
                           f"({', '.join(fam.supported_acts)}): this checkpoint is not a {fam.name} model, as its "
                           "architectures say (or fix hidden_act or architectures in its config.json)")
    theta, scaling = _rope(cfg, fam.default_rope_theta)
    return HParams(n_vocab=n_vocab, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv,
                   head_dim=head_dim, n_ctx=_whole("max_position_embeddings", cfg.get("max_position_embeddings"), 4096,
                                                    most=MAX_CONTEXT),
                   eps=_positive("rms_norm_eps", cfg.get("rms_norm_eps"), 1e-5, 1.0), rope_theta=theta,
                   rope_scaling=scaling, act=act, head_dim_key=head_dim_key,
                   tied=_flag("tie_word_embeddings", cfg.get("tie_word_embeddings"), False))


def check_token_ids(cfg: dict, n_vocab: int) -> None:
    """gguf-py's SpecialVocab reads <typ>_token_id from config.json (from text_config when absent
    there): a negative id stops it with a bare ValueError, other junk it drops silently."""
    for prefix, obj in (("", cfg), ("text_config.", _object(cfg, "text_config"))):
        for typ in SPECIAL_TOKENS:
            v = obj.get(f"{typ}_token_id")
            ids = v if isinstance(v, list) else [v]   # eos may be a list
            if v is not None and not all(type(i) is int and 0 <= i < n_vocab for i in ids):
                raise _fix(f"{prefix}{typ}_token_id", v, f"is not a token id below vocab_size={n_vocab}")


def check_for_transformers(cfg: dict) -> None:
    """Keys no part of the conversion uses but transformers reads when it loads the tokenizer
    (gguf-py's LlamaHfVocab lets AutoTokenizer read config.json), and trips over without naming
    them ("module 'torch' has no attribute ''"). Its typed fields it reports by name itself."""
    import torch
    model_type = cfg.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise _fix("model_type", model_type, "is not a name")
    for key in ("torch_dtype", "dtype"):
        v = cfg.get(key)
        if v is not None and not (isinstance(v, str) and isinstance(getattr(torch, v, None), torch.dtype)):
            raise _fix(key, v, "is not a torch dtype (float32, float16, bfloat16...)")
    if "auto_map" in cfg and not isinstance(cfg["auto_map"], dict):   # null too
        raise _fix("auto_map", cfg["auto_map"], "is not a JSON object")


def model_name(cfg: dict, model_dir: Path) -> str:
    """general.name: the last part of _name_or_path (the repository), else the folder's name."""
    v = cfg.get("_name_or_path")
    if v is None or v == "":
        return model_dir.name
    try:
        v.encode("utf-8")   # a lone surrogate ("\ud800" in JSON) cannot be written
    except (AttributeError, UnicodeEncodeError):
        raise _fix("_name_or_path", v, "is not text") from None
    return Path(v).name or model_dir.name


def pick_family(cfg: dict) -> Family:
    model_type = cfg.get("model_type")
    by_type = for_model_type(model_type) if isinstance(model_type, str) else None
    archs = cfg.get("architectures")
    known = ", ".join([a for f in families() for a in f.architectures]
                      + [f"model_type {m}" for f in families() for m in f.model_types])
    if archs is None and by_type is None:
        raise ConvertError(f"config.json has no architectures (model_type {_shown(model_type)}): "
                           f"this converter handles {known}; fetch the model's own config.json")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise _fix("architectures", archs, "is not a list of names")
    for a in archs or []:
        fam = for_architecture(a)
        if fam is not None:
            return fam
    if by_type is not None:   # the embedding models carry their backbone's architectures
        return by_type
    raise ConvertError(f"unknown architecture {_shown(archs)} in config.json's architectures: this converter "
                       f"handles {known}; convert a checkpoint of one of those")


def scale_mode(cfg: dict, fam: Family) -> str:
    """How a packed weight's weight_scale applies: transformers' linear_class decides when given."""
    qc = _object(cfg, "quantization_config")
    if _flag("quantization_config.use_rms_norm", qc.get("use_rms_norm"), False):
        raise ConvertError("config.json: quantization_config.use_rms_norm (an RMSNorm inside every BitLinear) has no "
                           "GGUF equivalent in these architectures: not supported, convert a checkpoint without it")
    lc = qc.get("linear_class")
    if lc is None:
        return fam.scale_mode
    if lc not in ("autobitlinear", "bitlinear"):   # transformers refuses the model too
        raise _fix("quantization_config.linear_class", lc, "is neither autobitlinear nor bitlinear")
    return "multiply" if lc == "autobitlinear" else "divide"


# ---------------------------------------------------------------------------------------------
# weights

def unpack_ternary(packed: np.ndarray, name: str = "packed weights") -> np.ndarray:
    """uint8 [out/4, in] -> int8 [out, in] in {-1, 0, 1}: code i (bits 2i) of byte (r, c) is row i*(out/4)+r."""
    rows = packed.shape[0]
    out = np.empty((4 * rows, *packed.shape[1:]), dtype=np.int8)
    for i in range(4):
        codes = (packed >> np.uint8(2 * i)) & np.uint8(3)
        out[i * rows:(i + 1) * rows] = codes.astype(np.int8) - np.int8(1)
    if (out > 1).any():
        raise ConvertError(f"{name} holds the 2-bit code 3, which is not a ternary value: corrupt checkpoint "
                           "(fetch the file again)")
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
    if not math.isfinite(s):   # NaN or inf: Source.ternary refuses the tensor
        return None
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
        q, s = self._ternary(name)
        if not np.isfinite(s):
            raise ConvertError(f"{name}: its scale is {s} (NaN or inf in the weights or their weight_scale): corrupt "
                               "checkpoint (fetch the file again)")
        return q, s

    def _ternary(self, name: str) -> tuple[np.ndarray, np.float32]:
        w = self.ckpt.get(name)
        sname = name[: -len("weight")] + "weight_scale"
        ws = None
        if sname in self.ckpt:
            wsv = self.ckpt.get(sname).reshape(-1)
            if wsv.size != 1:
                raise ConvertError(f"{sname} has {wsv.size} values: only one scale per tensor is supported "
                                   "(convert a checkpoint with per-tensor scales)")
            ws = np.float32(wsv[0])
        if w.dtype == np.uint8:
            q = unpack_ternary(w, name)
            if ws is None:
                s = np.float32(1)
            elif self.scale_mode == "multiply":
                s = ws
            else:
                if ws == 0:
                    raise ConvertError(f"{sname} is zero, but it divides the weights: corrupt checkpoint "
                                       "(fetch the file again)")
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

def _vocab_bpe(model_dir: Path, n_vocab: int, cfg: dict) -> tuple[list[str], list[int], str]:
    """Byte-level BPE (Llama-3 style) as convert_hf_to_gguf.py's get_vocab_base does."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, config=_tokenizer_config(cfg))
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise ConvertError(f"the tokenizer has token id {max(vocab.values())} but config.json's vocab_size is "
                           f"{n_vocab}: tokenizer and weights do not belong together (fetch the model's own tokenizer)")
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


def _tokenizer_config(cfg: dict):
    """What AutoTokenizer takes from config.json to pick the tokenizer class: the model type, a
    declared tokenizer class, the repository name. Left to read the file itself, transformers
    validates every key (torch_dtype, rope settings...) and fails on ones no tokenizer uses."""
    from transformers import AutoConfig, PretrainedConfig
    try:
        config = AutoConfig.for_model(cfg["model_type"])   # that model's defaults
    except Exception:  # noqa: BLE001 - absent, not a string, unknown: no model type, as transformers falls back to
        config = PretrainedConfig()
    for key in ("tokenizer_class", "_name_or_path"):
        if isinstance(cfg.get(key), str):
            setattr(config, key, cfg[key])
    return config


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


def pooling(model_dir: Path) -> gguf.PoolingType:
    """How an embedding model pools: its sentence-transformers Pooling module when it has one
    (modules.json -> <path>/config.json), else the last token, as the bitnet-embedding models do."""
    modes = {"pooling_mode_lasttoken": gguf.PoolingType.LAST, "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
             "pooling_mode_cls_token": gguf.PoolingType.CLS}
    try:
        modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
        for m in modules:
            if str(m.get("type", "")).endswith(".Pooling"):
                pool = json.loads((model_dir / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                for key, kind in modes.items():
                    if pool.get(key) is True:
                        return kind
                raise ConvertError(f"{m.get('path')}/config.json sets none of {', '.join(modes)}: this pooling "
                                   "is not supported (last token, mean and CLS are)")
    except (OSError, ValueError, AttributeError, TypeError):   # absent or not sentence-transformers': the default
        pass
    return gguf.PoolingType.LAST


def add_vocab(w: gguf.GGUFWriter, model_dir: Path, n_vocab: int, cfg: dict, embedding: bool = False) -> None:
    tj = model_dir / "tokenizer.json"
    spm = model_dir / "tokenizer.model"
    try:
        if tj.is_file():
            model = json.loads(tj.read_text(encoding="utf-8")).get("model", {})
            if model.get("type") == "BPE" and model.get("byte_fallback"):
                _add_vocab_spm(w, gguf.LlamaHfVocab(model_dir), n_vocab)
                gguf.SpecialVocab(model_dir, n_vocab=n_vocab).add_to_gguf(w)
            elif model.get("type") == "BPE":
                tokens, types, pre = _vocab_bpe(model_dir, n_vocab, cfg)
                w.add_tokenizer_model("gpt2")
                w.add_tokenizer_pre(pre)
                w.add_token_list(tokens)
                w.add_token_types(types)
                special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
                if embedding and "<|endoftext|>" in tokens:
                    # Qwen3's tokenizer ends a text with <|endoftext|> (not the chat EOS <|im_end|>), and
                    # last-token pooling pools it: llama.cpp must append that same token
                    special.special_token_ids["eos"] = tokens.index("<|endoftext|>")
                    special.add_special_token["eos"] = True
                    special.add_special_token["bos"] = False   # and begins it with nothing
                special.add_to_gguf(w)
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
        # transformers also reads and validates config.json here: the file or field it names is the cause
        raise ConvertError(f"cannot read the tokenizer in {model_dir}: {_one_line(e)} (fix what it names, or fetch "
                           "the model's tokenizer files and config.json again)") from e


def _add_vocab_spm(w: gguf.GGUFWriter, vocab, n_vocab: int) -> None:
    tokens, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        tokens.append(text)
        scores.append(float(score))
        types.append(int(ttype))
    if len(tokens) > n_vocab:
        raise ConvertError(f"the tokenizer has {len(tokens)} tokens but config.json's vocab_size is {n_vocab}: "
                           "tokenizer and weights do not belong together (fetch the model's own tokenizer)")
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
    """The GGUF tensors, checked against config.json from the safetensors headers alone: names,
    dtypes and shapes are refused here, before anything is written."""
    hd = hp.head_dim_key
    # each expected size with the config.json keys it comes from, for the messages
    E, FF = (hp.n_embd, "hidden_size"), (hp.n_ff, "intermediate_size")
    Q = (hp.head_dim * hp.n_head, f"num_attention_heads*{hd}")
    KV = (hp.head_dim * hp.n_head_kv, f"num_key_value_heads*{hd}")
    expect_linear = {"attn_q": (Q, E), "attn_k": (KV, E), "attn_v": (KV, E), "attn_output": (E, Q),
                     "ffn_gate": (FF, E), "ffn_up": (FF, E), "ffn_down": (E, FF)}
    HD = (hp.head_dim, hd)
    expect_norm = {"attn_norm": E, "ffn_norm": E, "attn_sub_norm": Q, "ffn_sub_norm": FF, "attn_q_norm": HD,
                   "attn_k_norm": HD, "post_attention_norm": E, "post_ffw_norm": E}
    sub_norms = fam.sub_norms
    seen: set[str] = set()
    out: list[PendingTensor] = []
    substituted: dict[str, int] = {}

    def norm(name: str, gname: str, dim: tuple[int, str], offset: float = 0.0):
        n, key = dim
        _check_dtype(ckpt, name, FLOAT_DTYPES, "floating point")
        _check_shape(ckpt, name, (n,), (key,))
        out.append(PendingTensor(gname, (n,), T.F32,
                                 lambda: ckpt.get(name).astype(np.float32).reshape(-1) + np.float32(offset)))

    def linear(name: str, gname: str, role: str):
        (rows, rkey), (cols, ckey) = expect_linear[role]
        _check_dtype(ckpt, name, ("U8", *FLOAT_DTYPES), "floating point or packed U8")
        if ckpt.dtype(name) == "U8":   # 4 rows to a byte
            if rows % 4:
                raise ConvertError(f"{name} is packed 4 rows to a byte, but config.json's {rkey}={rows} is no "
                                   "multiple of 4: the weights and config.json do not belong together "
                                   "(fetch the model's own files)")
            _check_shape(ckpt, name, (rows // 4, cols), (f"{rkey}/4", ckey))
        else:
            _check_shape(ckpt, name, (rows, cols), (rkey, ckey))
        scale = name[: -len("weight")] + "weight_scale"
        if scale in ckpt:
            _check_dtype(ckpt, scale, FLOAT_DTYPES, "floating point")
            if math.prod(ckpt.shape(scale)) != 1:
                raise ConvertError(f"{scale} has shape {ckpt.shape(scale)}: only one scale per tensor is supported "
                                   "(convert a checkpoint with per-tensor scales)")
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
        _check_dtype(ckpt, name, FLOAT_DTYPES, "floating point")
        _check_shape(ckpt, name, (hp.n_vocab, hp.n_embd), ("vocab_size", "hidden_size"))
        t = embd_qtype
        out.append(PendingTensor(gname, (hp.n_vocab, hp.n_embd), t, lambda: encode_rows(ckpt.get(name), t)))

    _check_layers(ckpt, hp.n_layer)
    if "model.embed_tokens.weight" not in ckpt:
        raise ConvertError("model.embed_tokens.weight is missing: incomplete checkpoint (fetch all *.safetensors files)")
    embedding("model.embed_tokens.weight", "token_embd.weight")
    seen.add("model.embed_tokens.weight")

    for il in range(hp.n_layer):
        base = f"model.layers.{il}."
        for leaf, gname in {**fam.norms, **sub_norms}.items():
            nm = base + leaf + ".weight"
            if nm not in ckpt:
                why = ("incomplete checkpoint" if leaf in NORMS
                       else f"not a {fam.name} checkpoint (config.json's architectures or model_type), or incomplete")
                raise ConvertError(f"{nm} is missing: {why} (fetch all *.safetensors files)")
            norm(nm, f"blk.{il}.{gname}.weight", expect_norm[gname], fam.norm_offset)
            seen.add(nm)
        for leaf, role in LINEARS.items():
            nm = base + leaf + ".weight"
            if nm not in ckpt:
                raise ConvertError(f"{nm} is missing: incomplete checkpoint (fetch all *.safetensors files)")
            linear(nm, f"blk.{il}.{role}.weight", role)
            seen.add(nm)
            seen.add(base + leaf + ".weight_scale")
            if fam.input_norms:   # a plain RMSNorm of the projection's input: no Gemma offset
                nm = base + leaf + ".norm.weight"
                if nm not in ckpt:
                    raise ConvertError(f"{nm} is missing: not a BitNet embedding checkpoint (a plain {fam.gguf_arch} "
                                       "model is not ternary; convert a bitnet-embedding model), or incomplete")
                norm(nm, f"blk.{il}.{role}_norm_in.weight", expect_linear[role][1])
                seen.add(nm)

    if "model.norm.weight" not in ckpt:
        raise ConvertError("model.norm.weight is missing: incomplete checkpoint (fetch all *.safetensors files)")
    norm("model.norm.weight", "output_norm.weight", E, fam.norm_offset)
    seen.add("model.norm.weight")

    if fam.embedding:   # an embedding model generates no text: no output head is written
        seen.add("lm_head.weight")
    elif "lm_head.weight" in ckpt:
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
    elif not fam.tied_output and not hp.tied:   # llama.cpp would quietly use token_embd as the head
        raise ConvertError("lm_head.weight is missing, and config.json does not set tie_word_embeddings: "
                           "incomplete checkpoint (fetch all *.safetensors files)")

    for name in ckpt.index:
        if name in seen or name.endswith("rotary_emb.inv_freq"):
            continue
        raise ConvertError(f"unexpected tensor {name} for {fam.name} (config.json's architectures): not a supported "
                           "checkpoint (biases, extra norms and adapters are not converted; convert the model's own "
                           "weights)")
    for role, cols in substituted.items():
        log.warning("%s: %s cannot hold rows of %d values (blocks of %d): writing those tensors as i2_s",
                    role, qtype.name.lower(), cols, row_block(qtype))
    return out


def _check_dtype(ckpt: Checkpoint, name: str, dtypes: tuple[str, ...], what: str) -> None:
    if ckpt.dtype(name) not in dtypes:
        raise ConvertError(f"{name} has dtype {ckpt.dtype(name)}, not {what}: corrupt or not a BitNet b1.58 "
                           "checkpoint (fetch the file again)")


def _check_shape(ckpt: Checkpoint, name: str, want: tuple[int, ...], keys: tuple[str, ...]) -> None:
    if ckpt.shape(name) != want:
        raise ConvertError(f"{name} has shape {ckpt.shape(name)}, expected {want} from config.json's "
                           f"({', '.join(keys)}): the weights and config.json do not belong together "
                           "(fetch the model's own files)")


def _check_layers(ckpt: Checkpoint, n_layer: int) -> None:
    """The weights hold layers 0 .. num_hidden_layers-1: checked first, as a wrong count would
    otherwise show as some missing or unexpected tensor."""
    layer = {name: int(m.group(1)) for name in ckpt.index if (m := LAYER_RE.match(name))}
    beyond = next((name for name, il in layer.items() if il >= n_layer), None)
    if beyond is not None:
        raise ConvertError(f"config.json: num_hidden_layers={n_layer}, but the weights have {beyond}: fix "
                           "num_hidden_layers in config.json, or convert the model's own weights")
    have = set(layer.values())
    gap = next(il for il in range(n_layer + 1) if il not in have)
    if gap < n_layer:
        raise ConvertError(f"config.json: num_hidden_layers={n_layer}, but the weights have no layer {gap} "
                           f"(model.layers.{gap}.input_layernorm.weight is missing): fix num_hidden_layers in "
                           "config.json, or fetch all *.safetensors files")


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
    mode = scale_mode(cfg, fam)
    check_token_ids(cfg, hp.n_vocab)
    check_for_transformers(cfg)
    name = model_name(cfg, model_dir)
    qtype = TERNARY_TYPES[outtype]
    try:
        # an embedding model's token embeddings are only looked up, never a matmul: f16 keeps them exact
        default = "f16" if fam.embedding or hp.n_vocab < 65536 else "q6_k"
        embd_qtype, note = embedding_type(embd_type, hp.n_embd, default)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    if note:
        log.warning("%s", note)
    ckpt = Checkpoint(model_dir)
    src = Source(ckpt, fam, mode, force)
    tensors = _plan(ckpt, fam, hp, src, qtype, embd_qtype, force)
    # refuse a non-BitNet checkpoint before writing anything: check one BitLinear weight now
    src.ternary(f"model.layers.0.{next(iter(LINEARS))}.weight")

    def kv(w: gguf.GGUFWriter):
        arch = fam.gguf_arch
        w.add_name(name)
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
        if fam.embedding:
            w.add_pooling_type(pooling(model_dir))
        if fam.extra_kv is not None:
            fam.extra_kv(cfg, w)
        add_vocab(w, model_dir, hp.n_vocab, cfg, embedding=fam.embedding)

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
