"""microsoft/bitnet-embedding-0.6b: a ternary text-embedding model on a Qwen3 backbone.

config.json: model_type `qwen3`. Qwen3's own layout (head size from `head_dim`, per-head QK
RMSNorms, SiLU FFN, tied embeddings) plus an RMSNorm on the input of every projection
(`<proj>.norm.weight` -> `<gguf>_norm_in`). Latent full-precision weights, ternarized with absmean.
Last-token pooling: the tokenizer's EOS becomes `<|endoftext|>` and is appended to every text.
GGUF arch `qwen3` (llama.cpp's own graph; patch 0010 applies the input norms).
"""
from . import Family

FAMILY = Family(
    name="BitNet embedding (Qwen3)",
    architectures=(),
    model_types=("qwen3",),
    gguf_arch="qwen3",
    scale_mode="multiply",
    float_weights="latent",
    norms={"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
           "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"},
    default_rope_theta=1000000.0,
    embedding=True,
    input_norms=True,
)
