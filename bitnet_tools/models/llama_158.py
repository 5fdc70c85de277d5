"""Llama-shaped 1.58-bit models: HF1BitLLM/Llama3-8B-1.58-100B-tokens, tiiuae Falcon3-*-1.58bit,
Falcon-E: `LlamaForCausalLM` with a `quantization_config` of quant_method "bitnet".

Same uint8 packing as 2B-4T, but `weight_scale` is a DIVISOR (transformers `bitlinear`:
y = x_q . w / (s_x * weight_scale)); the converter folds it into the weights. SiLU FFN, no
sub-norms, untied output head. GGUF arch `llama` (Q/K rows permuted for its interleaved RoPE).
"""
from . import Family

FAMILY = Family(
    name="Llama 1.58-bit (Llama3-8B-1.58, Falcon3-1.58bit, Falcon-E)",
    architectures=("LlamaForCausalLM",),
    gguf_arch="llama",
    scale_mode="divide",
    float_weights="ternary",
    sub_norms={},
    permute_qk=True,
    tied_output=False,
    default_rope_theta=10000.0,
    default_act="silu",
    supported_acts=("silu",),
)
