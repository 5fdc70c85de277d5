"""A plain PyTorch forward pass of BitNet embedding models (Qwen3 and Gemma 3 backbones), read
straight from a Hugging Face model directory: the yardstick their GGUF files are checked against.

What it computes: the stock decoder (Qwen3: w*x norms, per-head QK norms, SiLU gated FFN;
Gemma 3: (1+w)*x norms, post-attention/post-FFN norms, embeddings times sqrt(width), GELU-tanh
gated FFN, query scaled by query_pre_attn_scalar^-0.5, sliding-window layers with their own rope
theta), except that every projection is a BitLinear:

    x -> RMSNorm(x, <proj>.norm.weight)  (plain w*x, even in Gemma)
      -> per-token int8 absmax activations -> absmean-ternary weights

then the last token's hidden state after the final norm, L2-normalised (last-token pooling).

Written from the model's arithmetic, not with transformers' model classes, so that a test can
hold transformers' own modules (with the BitLinears put in) against it. `mode` emulates the
storage type of the projections in a GGUF file, as in `reference.py`.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bitnet_tools.reference import _act_for, _round, _scale_for, absmean, rope

PROJ = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
# the backbone's own norms: reference name -> checkpoint name (within a layer)
NATIVE = {"qwen3": {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                    "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"},
          "gemma3": {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
                     "ffn_norm": "pre_feedforward_layernorm", "post_ffn_norm": "post_feedforward_layernorm",
                     "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}}
BACKBONES = {"qwen3": "qwen3", "gemma3_text": "gemma3", "gemma3": "gemma3"}


def _theta(cfg: dict, layer_type: str, backbone: str) -> float:
    """Rope theta of a layer type: transformers 5 `rope_parameters` (per layer type for Gemma 3,
    flat for Qwen3), or the older `rope_theta` / `rope_local_base_freq` keys."""
    rp = cfg.get("rope_parameters") or {}
    rp = rp.get(layer_type, rp) if backbone == "gemma3" else rp
    if rp.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        raise NotImplementedError(f"rope scaling is not implemented: {rp or cfg.get('rope_scaling')}")
    if "rope_theta" in rp:
        return float(rp["rope_theta"])
    if backbone == "gemma3" and layer_type == "sliding_attention":
        return float(cfg.get("rope_local_base_freq", 10000.0))
    return float(cfg.get("rope_theta", 1e6))


def _layer_types(cfg: dict, backbone: str) -> list[str]:
    """`layer_types` when the config has it, else what transformers derives from older keys."""
    n = cfg["num_hidden_layers"]
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])
    if backbone == "gemma3":
        pattern = cfg.get("sliding_window_pattern", 6)
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    sliding = cfg.get("use_sliding_window") and cfg.get("sliding_window")
    return ["sliding_attention" if sliding and i >= cfg.get("max_window_layers", n) else "full_attention"
            for i in range(n)]


class EmbeddingReference:
    """Load once (tiny models: everything in memory, float32), run `embed` many times.

    Every 1-D weight is kept in its effective form (Gemma's native norms as 1 + w), so `with_vectors`
    can perturb or round them uniformly."""

    def __init__(self, model_dir):
        from safetensors import safe_open
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        self.cfg = cfg
        if cfg.get("model_type") not in BACKBONES:
            raise ValueError(f"not a Qwen3 or Gemma 3 backbone: model_type {cfg.get('model_type')!r}")
        self.backbone = bb = BACKBONES[cfg["model_type"]]
        if cfg.get("use_bidirectional_attention"):
            raise NotImplementedError("bidirectional attention")
        if cfg.get("attn_logit_softcapping") is not None:
            raise NotImplementedError("attention logit softcapping")
        t: dict[str, torch.Tensor] = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    t[k.removeprefix("model.")] = sf.get_tensor(k).float()
        self.n_embd = cfg["hidden_size"]
        self.n_head = cfg["num_attention_heads"]
        self.n_head_kv = cfg.get("num_key_value_heads") or self.n_head
        self.head_dim = cfg.get("head_dim") or self.n_embd // self.n_head
        self.eps = cfg.get("rms_norm_eps", 1e-6)
        self.layer_types = _layer_types(cfg, bb)
        self.sliding_window = cfg.get("sliding_window")
        self.theta = {lt: _theta(cfg, lt, bb) for lt in set(self.layer_types)}
        if bb == "gemma3":
            self.q_scale = cfg.get("query_pre_attn_scalar", 256) ** -0.5
            # float32, like transformers in float32 and llama.cpp (in bf16 transformers rounds it)
            self.embed_scale = math.sqrt(self.n_embd)
        else:
            self.q_scale = self.head_dim ** -0.5
            self.embed_scale = 1.0
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
        if act not in ("silu", "gelu_pytorch_tanh"):
            raise NotImplementedError(f"activation {act!r}")
        self.act = act
        plus = 1.0 if bb == "gemma3" else 0.0   # Gemma's norms compute (1 + w) * x
        self.token_embd = t["embed_tokens.weight"]
        self.norm = t["norm.weight"] + plus
        self.layers = []
        for il in range(cfg["num_hidden_layers"]):
            p = f"layers.{il}."
            layer = {key: t[p + name + ".weight"] + plus for key, name in NATIVE[bb].items()}
            for role, name in PROJ.items():
                layer[role + "_in"] = t[p + name + ".norm.weight"]   # plain RMSNorm: no +1
                q, s = absmean(t[p + name + ".weight"])
                layer[role] = (q.float(), s)
            self.layers.append(layer)

    def with_vectors(self, fn) -> "EmbeddingReference":
        """A copy whose every 1-D weight w (effective form) is fn(name, w); name is e.g. "q_in",
        "attn_norm", "norm". Used to perturb the model, round its norms, or break it on purpose."""
        new = copy.copy(self)
        new.norm = fn("norm", self.norm)
        new.layers = [{k: (fn(k, v) if isinstance(v, torch.Tensor) else v) for k, v in layer.items()}
                      for layer in self.layers]
        return new

    def perturbed(self, factor: float = 1 + 1e-6) -> "EmbeddingReference":
        """Every 1-D weight times `factor`: the spread this causes is the chaos floor, what int8
        rounding flips alone do to the embedding."""
        return self.with_vectors(lambda name, w: w * factor)

    # ---------------------------------------------------------------------------------------
    def _rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _lin(self, layer, role, x, mode):
        """BitLinear: plain RMSNorm of the input, int8 activations, ternary weights."""
        q, s = layer[role]
        return (_act_for(self._rms(x, layer[role + "_in"]), mode) @ q.T) * _scale_for(s, mode)

    def _mask(self, T: int, layer_type: str) -> torch.Tensor:
        # causal; a sliding layer's token sees itself and the sliding_window - 1 before it
        # (transformers' sliding_window_overlay: kv > q - window; llama.cpp's standard SWA)
        d = torch.arange(T)[:, None] - torch.arange(T)[None, :]   # q - kv
        allowed = d >= 0
        if layer_type == "sliding_attention" and self.sliding_window:
            allowed &= d < self.sliding_window
        return torch.zeros(T, T).masked_fill(~allowed, float("-inf"))

    @torch.no_grad()
    def hidden(self, tokens, mode: str = "model", embd: str = "f32") -> torch.Tensor:
        """Hidden states after the final norm, [len(tokens), n_embd] float32.

        mode: storage of the projections ("model"/"i2_s"/"tl1"/"tl2": int8 activations; "f16":
        activations and scale rounded to fp16; "f32": none). embd: "f16" rounds the token
        embeddings to fp16, as a GGUF stores them."""
        tok = torch.as_tensor(list(tokens), dtype=torch.long)
        T = tok.shape[0]
        emb = _round(self.token_embd, torch.float16) if embd == "f16" else self.token_embd
        x = emb[tok] * self.embed_scale
        pos = torch.arange(T)
        masks = {lt: self._mask(T, lt) for lt in set(self.layer_types)}
        rep = self.n_head // self.n_head_kv
        gemma = self.backbone == "gemma3"
        for layer, lt in zip(self.layers, self.layer_types):
            h = self._rms(x, layer["attn_norm"])
            q = self._lin(layer, "q", h, mode).view(T, self.n_head, self.head_dim)
            k = self._lin(layer, "k", h, mode).view(T, self.n_head_kv, self.head_dim)
            v = self._lin(layer, "v", h, mode).view(T, self.n_head_kv, self.head_dim)
            q, k = self._rms(q, layer["q_norm"]), self._rms(k, layer["k_norm"])   # per head
            q, k = rope(q, pos, self.theta[lt]), rope(k, pos, self.theta[lt])
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            att = torch.einsum("thd,shd->hts", q, k) * self.q_scale + masks[lt]
            o = torch.einsum("hts,shd->thd", att.softmax(-1), v).reshape(T, self.n_head * self.head_dim)
            o = self._lin(layer, "o", o, mode)
            x = x + (self._rms(o, layer["post_attn_norm"]) if gemma else o)
            h = self._rms(x, layer["ffn_norm"])
            g = self._lin(layer, "gate", h, mode)
            g = F.gelu(g, approximate="tanh") if self.act == "gelu_pytorch_tanh" else F.silu(g)
            f = self._lin(layer, "down", g * self._lin(layer, "up", h, mode), mode)
            x = x + (self._rms(f, layer["post_ffn_norm"]) if gemma else f)
        return self._rms(x, self.norm)

    def embed(self, tokens, mode: str = "model", normalize: bool = True, embd: str = "f32") -> np.ndarray:
        """The embedding of one token sequence: last token's final hidden state, L2-normalised;
        float32 [n_embd]."""
        e = self.hidden(tokens, mode=mode, embd=embd)[-1]
        if normalize:
            e = e / e.norm().clamp(min=1e-12)
        return e.numpy()

    def embed_many(self, token_lists, **kw) -> np.ndarray:
        """[len(token_lists), n_embd]: `embed` of each sequence on its own (no padding)."""
        return np.stack([self.embed(toks, **kw) for toks in token_lists])
