"""microsoft/bitnet-embedding-270m: a ternary text-embedding model on a Gemma 3 backbone.

config.json: model_type `gemma3_text`. Gemma 3's layout: RMSNorms that compute (1 + w) x (written
as w + 1, so llama.cpp's plain RMSNorm gives the same), norms after attention and after the FFN,
per-head QK norms, GELU (tanh) FFN, token embeddings times sqrt(width) (llama.cpp's graph does
that), sliding-window layers with their own RoPE base. Plus an RMSNorm on the input of every
projection (`<proj>.norm.weight` -> `<gguf>_norm_in`), a plain one: no +1. Last-token pooling.
GGUF arch `gemma3` (llama.cpp's own graph; patch 0010 applies the input norms).
"""
from . import Family


def write_kv(cfg: dict, w) -> None:
    """Sliding-window attention as transformers runs it: which layers, how far, which RoPE base.
    (bitnet.cpp's converter writes none of this, so llama.cpp attends fully there.)"""
    kinds = cfg.get("layer_types")
    window = cfg.get("sliding_window")
    if isinstance(kinds, list) and "sliding_attention" in kinds and isinstance(window, int) and window > 0:
        w.add_sliding_window(window)
        w.add_sliding_window_pattern([k == "sliding_attention" for k in kinds])
    rope = cfg.get("rope_parameters") or {}
    local = (rope.get("sliding_attention") or {}).get("rope_theta", cfg.get("rope_local_base_freq"))
    if isinstance(local, (int, float)) and local > 0:
        w.add_rope_freq_base_swa(float(local))


FAMILY = Family(
    name="BitNet embedding (Gemma 3)",
    architectures=(),
    model_types=("gemma3_text",),
    gguf_arch="gemma3",
    scale_mode="multiply",
    float_weights="latent",
    norms={"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
           "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
           "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"},
    default_rope_theta=1000000.0,
    default_act="gelu_pytorch_tanh",
    supported_acts=("gelu_pytorch_tanh",),
    embedding=True,
    input_norms=True,
    norm_offset=1.0,
    extra_kv=write_kv,
)
