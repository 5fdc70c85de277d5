"""1bitLLM/bitnet_b1_58-large (0.7B) and -3B: `BitnetForCausalLM` (remote code).

Weights on disk are the full-precision latent weights; BitLinear quantizes them at run time
with absmean (per tensor), so the converter does the same once. SiLU FFN; the sub-norms are
called `inner_attn_ln` (before o_proj) and `ffn_layernorm` (before down_proj). GGUF arch `bitnet`.
"""
from . import Family

FAMILY = Family(
    name="1bitLLM bitnet_b1_58",
    architectures=("BitnetForCausalLM",),
    gguf_arch="bitnet",
    scale_mode="multiply",
    float_weights="latent",
    sub_norms={"self_attn.inner_attn_ln": "attn_sub_norm", "mlp.ffn_layernorm": "ffn_sub_norm"},
    default_rope_theta=10000.0,
    default_act="silu",
    supported_acts=("silu",),
)
