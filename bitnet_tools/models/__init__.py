"""Model families the converter knows: one small module per family, each defining `FAMILY`.

A family says which Hugging Face architectures it takes, which GGUF architecture it writes, how
its BitLinear weights are stored (latent full-precision weights, or 2-bit packed codes with a
`weight_scale` that multiplies or divides) and what its norms are called.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# the norms every family has: HF leaf -> GGUF name
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]      # config.json "architectures" values
    gguf_arch: str                      # general.architecture written
    # packed uint8 weights: does weight_scale multiply (autobitlinear) or divide (bitlinear)?
    scale_mode: str                     # "multiply" | "divide"
    # float (unpacked) BitLinear weights: "latent" = full-precision master weights, ternarize with
    # absmean; "ternary" = must already be ternary (after a per-tensor scale), else refuse
    float_weights: str                  # "latent" | "ternary"
    sub_norms: dict[str, str] = field(default_factory=dict)   # HF leaf name -> GGUF name
    norms: dict[str, str] = field(default_factory=lambda: dict(NORMS))   # per-layer norms, HF leaf -> GGUF
    permute_qk: bool = False            # llama.cpp's "llama" graph uses interleaved RoPE
    tied_output: bool = True            # graph always uses token_embd as the output head
    default_rope_theta: float = 10000.0
    default_act: str = "silu"
    supported_acts: tuple[str, ...] = ("silu",)
    # embedding models (bitnet-embedding-*): matched by config.json's model_type, since their
    # architectures entry is the backbone's; they pool the last token and write no output head
    model_types: tuple[str, ...] = ()
    embedding: bool = False
    input_norms: bool = False           # every projection has an RMSNorm on its input ("<proj>.norm")
    norm_offset: float = 0.0            # Gemma's own RMSNorms compute (1 + w) x: write w + offset
    extra_kv: Callable | None = None    # (cfg, GGUFWriter) -> None: keys only this backbone has

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.architectures or self.model_types)} -> {self.gguf_arch})"


def families() -> list[Family]:
    from . import bitnet_1bitllm, bitnet_2b4t, gemma3_embedding, llama_158, qwen3_embedding
    return [bitnet_1bitllm.FAMILY, bitnet_2b4t.FAMILY, llama_158.FAMILY, qwen3_embedding.FAMILY,
            gemma3_embedding.FAMILY]


def for_architecture(arch: str) -> Family | None:
    for fam in families():
        if arch in fam.architectures:
            return fam
    return None


def for_model_type(model_type: str) -> Family | None:
    for fam in families():
        if model_type in fam.model_types:
            return fam
    return None


__all__ = ["Family", "NORMS", "families", "for_architecture", "for_model_type"]
