"""Model families the converter knows: one small module per family, each defining `FAMILY`.

A family says which Hugging Face architectures it takes, which GGUF architecture it writes, how
its BitLinear weights are stored (latent full-precision weights, or 2-bit packed codes with a
`weight_scale` that multiplies or divides) and what its sub-norms are called.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
    permute_qk: bool = False            # llama.cpp's "llama" graph uses interleaved RoPE
    tied_output: bool = True            # graph always uses token_embd as the output head
    default_rope_theta: float = 10000.0
    default_act: str = "silu"
    supported_acts: tuple[str, ...] = ("silu",)

    def describe(self) -> str:
        return f"{self.name} ({', '.join(self.architectures)} -> {self.gguf_arch})"


def families() -> list[Family]:
    from . import bitnet_1bitllm, bitnet_2b4t, llama_158
    return [bitnet_1bitllm.FAMILY, bitnet_2b4t.FAMILY, llama_158.FAMILY]


def for_architecture(arch: str) -> Family | None:
    for fam in families():
        if arch in fam.architectures:
            return fam
    return None


__all__ = ["Family", "families", "for_architecture"]
