"""A plain PyTorch forward pass of BitNet b1.58 models, read straight from a Hugging Face model
directory: the yardstick the converter's GGUF files are checked against.

BitLinear (the model's own arithmetic):
    weights      Wq = clamp(round(W / s), -1, 1) * s, one absmean scale s per tensor (latent
                 checkpoints), or packed codes times/over `weight_scale` (packed checkpoints)
    activations  per token: x_q = clamp(round(x * 127 / max(|x|.max(), 1e-5)), -128, 127)
    output       y = (x_q @ Wq^T) / (127 / max)

Families: 1bitLLM `BitnetForCausalLM` (SiLU, sub-norms `inner_attn_ln`/`ffn_layernorm`, latent
weights), `BitNetForCausalLM` 2B-4T (relu2, `attn_sub_norm`/`ffn_sub_norm`, packed weights times
weight_scale, or -bf16 latent weights), `LlamaForCausalLM` 1.58-bit (SiLU, no sub-norms, packed
weights over weight_scale).

`forward(tokens, types=...)` can also emulate what llama.cpp computes for a given storage type
of each matrix, so a GGUF file can be checked tightly whatever type it was written as:
    "model"/"i2_s"   the model's own per-token int8 activations, exact weight scale
    "tq1_0"/"tq2_0"  activations as Q8_K (one scale per 256 values), weight scale rounded to fp16
    "f16" / "bf16"   activations rounded to fp16 / bf16 (ggml's vec_dot type), scale likewise
    "f32"/"none"     full-precision activations
and `kv_f16=True` rounds Q, K, V and the attention probabilities to fp16 like llama.cpp's
default f16 KV cache (non-flash-attention path).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

ROLES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ATTN_SUB = ("self_attn.attn_sub_norm", "self_attn.inner_attn_ln")
FFN_SUB = ("mlp.ffn_sub_norm", "mlp.ffn_layernorm")


def unpack(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out/4, in] -> int8 [out, in]: bits 2i of byte (r, c) hold row i*(out/4)+r, value code-1."""
    rows = packed.shape[0]
    parts = [((packed >> (2 * i)) & 3).to(torch.int8) - 1 for i in range(4)]
    out = torch.cat(parts, dim=0)
    assert out.shape[0] == 4 * rows
    return out


def absmean(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    w = w.float()
    iscale = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * iscale).round().clamp(-1, 1).to(torch.int8), float(1.0 / iscale)


def act_int8(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8, dequantized (x_q / (127/max))."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


def act_q8_k(x: torch.Tensor) -> torch.Tensor:
    """ggml's quantize_row_q8_K_ref: per 256 values, iscale = -127/max (max = the signed value of
    largest magnitude), q = min(127, round(iscale * x)), dequantized as q / iscale."""
    shape = x.shape
    b = x.reshape(-1, 256)
    idx = b.abs().argmax(dim=-1, keepdim=True)
    mx = torch.gather(b, -1, idx)
    iscale = torch.where(mx != 0, -127.0 / torch.where(mx != 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    q = (iscale * b).round().clamp(max=127)
    d = torch.where(mx != 0, 1.0 / torch.where(iscale != 0, iscale, torch.ones_like(iscale)), torch.zeros_like(mx))
    return (q * d).reshape(shape)


def rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE in the rotate-half (HF) layout: x [T, heads, head size], angles in float64."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos[:, None].double() * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).to(torch.float32)


def _scale_for(s: float, mode: str) -> float:
    if mode in ("tq1_0", "tq2_0", "f16"):
        return float(torch.tensor(s, dtype=torch.float32).to(torch.float16))
    if mode == "bf16":
        return float(torch.tensor(s, dtype=torch.float32).to(torch.bfloat16))
    return s


def _act_for(x: torch.Tensor, mode: str) -> torch.Tensor:
    if mode in ("model", "i2_s", "tl1", "tl2", "int8"):
        return act_int8(x)
    if mode in ("tq1_0", "tq2_0"):
        return act_q8_k(x)
    if mode == "f16":
        return _round(x, torch.float16)
    if mode == "bf16":
        return _round(x, torch.bfloat16)
    if mode in ("f32", "none", None):
        return x
    raise ValueError(f"unknown mode {mode!r}")


class Reference:
    """Load once (tiny models: everything in memory), run `forward` many times."""

    def __init__(self, model_dir, force_ternary: bool = False):
        from safetensors import safe_open
        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text())
        self.cfg = cfg
        arch = (cfg.get("architectures") or ["?"])[0]
        self.arch = arch
        t: dict[str, torch.Tensor] = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    t[k] = sf.get_tensor(k)
        qc = cfg.get("quantization_config") or {}
        lc = qc.get("linear_class")
        multiply = lc == "autobitlinear" or (lc is None and arch != "LlamaForCausalLM")
        self.n_embd = cfg["hidden_size"]
        self.n_layer = cfg["num_hidden_layers"]
        self.n_head = cfg["num_attention_heads"]
        self.n_head_kv = cfg.get("num_key_value_heads") or self.n_head
        self.head_dim = cfg.get("head_dim") or self.n_embd // self.n_head
        self.eps = cfg.get("rms_norm_eps", 1e-5)
        default_theta = 500000.0 if arch == "BitNetForCausalLM" else 10000.0
        self.theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", default_theta))
        self.act = cfg.get("hidden_act", "relu2" if arch == "BitNetForCausalLM" else "silu")
        self.embed = t["model.embed_tokens.weight"].float()
        self.head = t["lm_head.weight"].float() if ("lm_head.weight" in t and not cfg.get("tie_word_embeddings")) else self.embed
        self.norm = t["model.norm.weight"].float()
        self.layers = []
        for il in range(self.n_layer):
            p = f"model.layers.{il}."
            layer = {"attn_norm": t[p + "input_layernorm.weight"].float(),
                     "ffn_norm": t[p + "post_attention_layernorm.weight"].float()}
            for names, key in ((ATTN_SUB, "attn_sub_norm"), (FFN_SUB, "ffn_sub_norm")):
                for n in names:
                    if p + n + ".weight" in t:
                        layer[key] = t[p + n + ".weight"].float()
            for leaf, role in ROLES.items():
                w = t[p + leaf + ".weight"]
                ws = t.get(p + leaf + ".weight_scale")
                if w.dtype == torch.uint8:
                    q = unpack(w)
                    s = 1.0 if ws is None else float(ws.float().reshape(-1)[0])
                    s = s if multiply else 1.0 / s
                else:
                    w = w.float()
                    if ws is not None:
                        w = w * float(ws.float()) if multiply else w / float(ws.float())
                    q, s = absmean(w)
                layer[role] = (q.float(), s)
            self.layers.append(layer)

    # ---------------------------------------------------------------------------------------
    def _rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def _lin(self, layer, role, x, types):
        q, s = layer[role]
        mode = types.get(role, "model") if isinstance(types, dict) else types
        return (_act_for(x, mode) @ q.T) * _scale_for(s, mode)

    @torch.no_grad()
    def forward(self, tokens, types="model", kv_f16: bool = False, embd: str = "f32") -> np.ndarray:
        """Logits [len(tokens), vocab] (float32 numpy).

        types: one mode for every BitLinear, or {role: mode} (role = GGUF name: attn_q, ffn_down...).
        embd: storage of token_embd (and of a separate output head): "f32" or "f16"; with "f16"
        the output matmul also rounds its input to fp16, as ggml does for f16 weights."""
        tok = torch.as_tensor(list(tokens), dtype=torch.long)
        T = tok.shape[0]
        emb = _round(self.embed, torch.float16) if embd == "f16" else self.embed
        head = emb if self.head is self.embed else (_round(self.head, torch.float16) if embd == "f16" else self.head)
        x = emb[tok]
        pos = torch.arange(T)
        mask = torch.full((T, T), float("-inf")).triu(1)
        rep = self.n_head // self.n_head_kv
        for layer in self.layers:
            h = self._rms(x, layer["attn_norm"])
            q = self._lin(layer, "attn_q", h, types).view(T, self.n_head, self.head_dim)
            k = self._lin(layer, "attn_k", h, types).view(T, self.n_head_kv, self.head_dim)
            v = self._lin(layer, "attn_v", h, types).view(T, self.n_head_kv, self.head_dim)
            q, k = rope(q, pos, self.theta), rope(k, pos, self.theta)
            if kv_f16:
                q, k, v = _round(q, torch.float16), _round(k, torch.float16), _round(v, torch.float16)
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            att = torch.einsum("thd,shd->hts", q, k) / math.sqrt(self.head_dim) + mask
            att = att.softmax(-1)
            if kv_f16:
                att = _round(att, torch.float16)
            o = torch.einsum("hts,shd->thd", att, v).reshape(T, self.n_head * self.head_dim)
            if "attn_sub_norm" in layer:
                o = self._rms(o, layer["attn_sub_norm"])
            x = x + self._lin(layer, "attn_output", o, types)
            h = self._rms(x, layer["ffn_norm"])
            g = self._lin(layer, "ffn_gate", h, types)
            g = torch.relu(g).square() if self.act == "relu2" else torch.nn.functional.silu(g)
            f = g * self._lin(layer, "ffn_up", h, types)
            if "ffn_sub_norm" in layer:
                f = self._rms(f, layer["ffn_sub_norm"])
            x = x + self._lin(layer, "ffn_down", f, types)
        x = self._rms(x, self.norm)
        if embd == "f16":
            x = _round(x, torch.float16)
        return (x @ head.T).numpy()

    def greedy(self, tokens, n: int, **kw) -> list[int]:
        toks = list(tokens)
        out = []
        for _ in range(n):
            nxt = int(np.argmax(self.forward(toks, **kw)[-1]))
            out.append(nxt)
            toks.append(nxt)
        return out
