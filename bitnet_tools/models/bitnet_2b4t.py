"""microsoft/BitNet-b1.58-2B-4T: `BitNetForCausalLM` (transformers >= 4.52).

Packed checkpoint: uint8 `[out/4, in]` (code i of a byte, bits 2i, is row i*(out/4)+r; value =
code - 1) and a `weight_scale` that MULTIPLIES (transformers `autobitlinear`, offline mode).
The `-bf16` repo has master weights instead: ternarized with absmean at conversion.
Squared-ReLU FFN, `attn_sub_norm`/`ffn_sub_norm`, tied embeddings, GQA. GGUF arch `bitnet-b1.58`.
"""
from . import Family

FAMILY = Family(
    name="BitNet b1.58 2B-4T",
    architectures=("BitNetForCausalLM",),
    gguf_arch="bitnet-b1.58",
    scale_mode="multiply",
    float_weights="latent",
    sub_norms={"self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"},
    default_rope_theta=500000.0,
    default_act="relu2",
    supported_acts=("relu2",),
)
