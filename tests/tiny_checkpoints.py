"""Tiny Hugging Face checkpoints of each BitNet family, built in-process (no hub):
transformers configs, random weights packed the way each family packs them, local tokenizers.

Shapes are chosen to hit the awkward cases: row widths of 384 (not a multiple of 256: TQ types
cannot hold it), 704 and 1728 (not multiples of 128: I2_S pads them), GQA, vocab sizes that are
not multiples of 32, untied and tied output heads, sharded safetensors. `1bitllm-3b` has
bitnet_b1_58-3B's awkward widths at a small scale: hidden 640 (2.5 blocks of 256), FFN 1728
(13.5 groups of 128).

`build_embedding` writes the two BitNet embedding backbones (Qwen3, Gemma 3), whose every
projection has its own input RMSNorm; the Gemma one has a sliding window short enough to matter.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "ternary weights make small models run fast on ordinary processors",
    "a bit of arithmetic with minus one zero and plus one",
    "hello world, this is a tiny language model for testing the converter",
    "once upon a time there was a little model that could count to three",
] * 4
TEXT = "the quick brown fox jumps over the lazy dog and the tiny model counts"
CHAT_TEMPLATE = ("{% for m in messages %}<|start|>{{ m['role'] }}: {{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start|>assistant: {% endif %}")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

# family -> shape
SHAPES = {
    #            n_embd n_ff n_layer n_head n_kv vocab
    "1bitllm": (384, 768, 2, 6, 6, 1001),
    "1bitllm-3b": (640, 1728, 2, 10, 10, 1000),
    "2b4t": (384, 1024, 2, 6, 2, 997),
    "2b4t-bf16": (384, 1024, 2, 6, 2, 997),
    "llama": (256, 704, 2, 4, 2, 1003),
}


def bpe_tokenizer(out: Path, vocab_size: int, specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start|>", "<|end|>"),
                  bos: str | None = "<|begin_of_text|>", eos: str = "<|end_of_text|>", append_eos: bool = False):
    """A byte-level BPE with Llama-3's split regex (GGUF: gpt2 / llama-bpe). `append_eos` adds
    `eos` after every encoded text, as Qwen3 embedding tokenizers do (last-token pooling pools it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(list(specials))
    if append_eos:
        eos_id = tok.token_to_id(eos)
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                           special_tokens=[(eos, eos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def spm_tokenizer(out: Path, n_words: int = 60):
    """A SentencePiece-style BPE (byte fallback, '▁' word marks) as Llama-2 tokenizer.json files
    look (GGUF: llama)."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    words = sorted({w for line in CORPUS for w in line.replace(",", "").split()})[:n_words]
    for ch in sorted({c for w in words for c in "\u2581" + w}):
        vocab.setdefault(ch, len(vocab))
    merges = []
    for w in words:
        w = "\u2581" + w
        cur = w[0]
        for c in w[1:]:
            if cur + c not in vocab:
                merges.append((cur, c))
                vocab[cur + c] = len(vocab)
            cur += c
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def pack(q: torch.Tensor) -> torch.Tensor:
    """int8 [out, in] in {-1,0,1} -> uint8 [out/4, in]: row i*(out/4)+r goes to bits 2i of byte r."""
    rows = q.shape[0] // 4
    codes = (q + 1).to(torch.uint8)
    packed = torch.zeros((rows, q.shape[1]), dtype=torch.uint8)
    for i in range(4):
        packed |= codes[i * rows:(i + 1) * rows] << (2 * i)
    return packed


def _norm(g: torch.Generator, n: int) -> torch.Tensor:
    return (1.0 + 0.2 * torch.randn(n, generator=g)).to(torch.bfloat16)


def _save_sharded(t: dict[str, torch.Tensor], out: Path):
    """Two safetensors files and their index, like real checkpoints."""
    names = sorted(t)
    half = len(names) // 2
    save_file({k: t[k].contiguous() for k in names[:half]}, str(out / "model-00001-of-00002.safetensors"))
    save_file({k: t[k].contiguous() for k in names[half:]}, str(out / "model-00002-of-00002.safetensors"))
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        k: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors")
        for i, k in enumerate(names)}}))


def build(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint of `family` (1bitllm, 2b4t, 2b4t-bf16, llama) into `out`."""
    from transformers import BitNetConfig, LlamaConfig
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e, f, n_layer, n_head, n_kv, n_vocab = SHAPES[family]
    hd = e // n_head
    g = torch.Generator().manual_seed(seed)
    if family.startswith("1bitllm"):
        cfg = {"architectures": ["BitnetForCausalLM"], "model_type": "llama", "hidden_size": e,
               "intermediate_size": f, "num_hidden_layers": n_layer, "num_attention_heads": n_head,
               "num_key_value_heads": n_kv, "vocab_size": n_vocab, "hidden_act": "silu",
               "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
               "tie_word_embeddings": True, "torch_dtype": "float16",
               "weight_bits": 1, "input_bits": 8, "bos_token_id": 1, "eos_token_id": 2}
        (out / "config.json").write_text(json.dumps(cfg, indent=2))
    elif family in ("2b4t", "2b4t-bf16"):
        c = BitNetConfig(vocab_size=n_vocab, hidden_size=e, intermediate_size=f, num_hidden_layers=n_layer,
                         num_attention_heads=n_head, num_key_value_heads=n_kv, tie_word_embeddings=True,
                         bos_token_id=n_vocab - 4, eos_token_id=n_vocab - 3, max_position_embeddings=4096)
        c.architectures = ["BitNetForCausalLM"]
        if family == "2b4t":
            c.quantization_config = {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                     "quantization_mode": "offline"}
        c.save_pretrained(str(out))
    else:
        c = LlamaConfig(vocab_size=n_vocab, hidden_size=e, intermediate_size=f, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, num_key_value_heads=n_kv, tie_word_embeddings=False,
                        rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=4096,
                        bos_token_id=n_vocab - 4, eos_token_id=n_vocab - 3)
        c.architectures = ["LlamaForCausalLM"]
        c.quantization_config = {"quant_method": "bitnet", "linear_class": "bitlinear",
                                 "modules_to_not_convert": ["lm_head"]}
        c.save_pretrained(str(out))

    sub = {"1bitllm": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
           "1bitllm-3b": ("self_attn.inner_attn_ln", "mlp.ffn_layernorm"),
           "2b4t": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"),
           "2b4t-bf16": ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm"), "llama": ()}[family]
    t: dict[str, torch.Tensor] = {}
    t["model.embed_tokens.weight"] = (0.5 * torch.randn(n_vocab, e, generator=g)).to(torch.bfloat16)
    shapes = {"self_attn.q_proj": (n_head * hd, e), "self_attn.k_proj": (n_kv * hd, e),
              "self_attn.v_proj": (n_kv * hd, e), "self_attn.o_proj": (e, n_head * hd),
              "mlp.gate_proj": (f, e), "mlp.up_proj": (f, e), "mlp.down_proj": (e, f)}
    for il in range(n_layer):
        p = f"model.layers.{il}."
        t[p + "input_layernorm.weight"] = _norm(g, e)
        t[p + "post_attention_layernorm.weight"] = _norm(g, e)
        if sub:
            t[p + sub[0] + ".weight"] = _norm(g, n_head * hd)
            t[p + sub[1] + ".weight"] = _norm(g, f)
        for leaf in LINEARS:
            rows, cols = shapes[leaf]
            if family in ("1bitllm", "1bitllm-3b", "2b4t-bf16"):   # latent full-precision weights
                t[p + leaf + ".weight"] = (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(torch.bfloat16)
            else:
                q = torch.randint(-1, 2, (rows, cols), generator=g, dtype=torch.int8)
                t[p + leaf + ".weight"] = pack(q)
                s = float(torch.empty(1).uniform_(0.5, 1.5, generator=g)) / cols ** 0.5
                ws = s if family == "2b4t" else 1.0 / s   # multiplier vs divisor
                t[p + leaf + ".weight_scale"] = torch.tensor([ws], dtype=torch.bfloat16)
    t["model.norm.weight"] = _norm(g, e)
    if family == "llama":
        t["lm_head.weight"] = (0.5 * torch.randn(n_vocab, e, generator=g)).to(torch.bfloat16)
    _save_sharded(t, out)
    if family.startswith("1bitllm"):
        spm_tokenizer(out)
    else:
        bpe_tokenizer(out, vocab_size=n_vocab - 40)
    return out


def build_plain_llama(out: Path, seed: int = 0) -> Path:
    """A non-BitNet Llama checkpoint (float weights, no quantization_config): must be refused."""
    from transformers import LlamaConfig
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e, f, n_layer, n_head, n_kv, n_vocab = SHAPES["llama"]
    c = LlamaConfig(vocab_size=n_vocab, hidden_size=e, intermediate_size=f, num_hidden_layers=n_layer,
                    num_attention_heads=n_head, num_key_value_heads=n_kv, tie_word_embeddings=True)
    c.architectures = ["LlamaForCausalLM"]
    c.save_pretrained(str(out))
    g = torch.Generator().manual_seed(seed)
    hd = e // n_head
    t = {"model.embed_tokens.weight": torch.randn(n_vocab, e, generator=g), "model.norm.weight": torch.ones(e)}
    shapes = {"self_attn.q_proj": (n_head * hd, e), "self_attn.k_proj": (n_kv * hd, e),
              "self_attn.v_proj": (n_kv * hd, e), "self_attn.o_proj": (e, n_head * hd),
              "mlp.gate_proj": (f, e), "mlp.up_proj": (f, e), "mlp.down_proj": (e, f)}
    for il in range(n_layer):
        p = f"model.layers.{il}."
        t[p + "input_layernorm.weight"] = torch.ones(e)
        t[p + "post_attention_layernorm.weight"] = torch.ones(e)
        for leaf, shp in shapes.items():
            t[p + leaf + ".weight"] = torch.randn(*shp, generator=g) * 0.02
    save_file(t, str(out / "model.safetensors"))
    bpe_tokenizer(out, vocab_size=n_vocab - 40)
    return out


# backbone -> shape of the tiny BitNet embedding models (decoder-only, last-token pooled)
EMBEDDING_SHAPES = {
    #          n_embd n_ff n_layer n_head n_kv head_dim
    "qwen3": (256, 768, 2, 4, 2, 128),     # head_dim != 256 / 4, as in the 0.6b (128 != 64)
    "gemma3": (384, 1024, 3, 2, 1, 256),   # head_dim != 384 / 2, as in the 270m (256 != 160)
}
GEMMA3_LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention"]
GEMMA3_SLIDING_WINDOW = 8   # small, so sequences of more than 8 tokens exercise it


def _gemma_norm(g: torch.Generator, n: int) -> torch.Tensor:
    """Gemma's norms compute (1 + w) * x: their weights sit near 0."""
    return (0.2 * torch.randn(n, generator=g)).to(torch.bfloat16)


def _sentence_transformers_files(out: Path, n_embd: int):
    """modules.json and a last-token Pooling config, as the embedding checkpoints ship them."""
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": n_embd, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}, indent=2))


def build_embedding(backbone: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny BitNet embedding checkpoint (backbone "qwen3" or "gemma3") into `out`: the stock
    transformers config, latent bf16 weights with a plain RMSNorm (`<proj>.norm.weight`, near 1)
    before every projection, a tokenizer, and sentence-transformers files (last-token pooling)."""
    from transformers import Gemma3TextConfig, Qwen3Config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    e, f, n_layer, n_head, n_kv, hd = EMBEDDING_SHAPES[backbone]
    g = torch.Generator().manual_seed(seed)
    if backbone == "qwen3":
        n_vocab = 1000
        tok = bpe_tokenizer(out, vocab_size=n_vocab - 40, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
                            bos=None, eos="<|endoftext|>", append_eos=True)
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        c = Qwen3Config(vocab_size=n_vocab, hidden_size=e, intermediate_size=f, num_hidden_layers=n_layer,
                        num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=hd,
                        max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1e6,
                        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos)
        c.architectures = ["Qwen3Model"]
        # Qwen3 norms are w * x
        native = ["input_layernorm", "post_attention_layernorm"]
        native_norm = _norm
        embed_std = 0.5
    elif backbone == "gemma3":
        tok = spm_tokenizer(out)
        n_vocab = len(tok) + 13   # the config's vocabulary is larger than the tokenizer's, as in Gemma
        c = Gemma3TextConfig(vocab_size=n_vocab, hidden_size=e, intermediate_size=f, num_hidden_layers=n_layer,
                             num_attention_heads=n_head, num_key_value_heads=n_kv, head_dim=hd,
                             query_pre_attn_scalar=256, layer_types=GEMMA3_LAYER_TYPES,
                             sliding_window=GEMMA3_SLIDING_WINDOW,
                             rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                              "full_attention": {"rope_type": "default", "rope_theta": 1e6}},
                             max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=True,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
        c.architectures = ["Gemma3TextModel"]
        native = ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"]
        native_norm = _gemma_norm
        embed_std = e ** -0.5   # times sqrt(n_embd) in the forward: about 1, like the other residuals
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    assert n_vocab % 32, "the vocabulary should not be a multiple of 32"
    c.save_pretrained(str(out))
    _sentence_transformers_files(out, e)

    t: dict[str, torch.Tensor] = {}
    t["model.embed_tokens.weight"] = (embed_std * torch.randn(n_vocab, e, generator=g)).to(torch.bfloat16)
    shapes = {"self_attn.q_proj": (n_head * hd, e), "self_attn.k_proj": (n_kv * hd, e),
              "self_attn.v_proj": (n_kv * hd, e), "self_attn.o_proj": (e, n_head * hd),
              "mlp.gate_proj": (f, e), "mlp.up_proj": (f, e), "mlp.down_proj": (e, f)}
    for il in range(n_layer):
        p = f"model.layers.{il}."
        for name in native:
            t[p + name + ".weight"] = native_norm(g, e)
        t[p + "self_attn.q_norm.weight"] = native_norm(g, hd)
        t[p + "self_attn.k_norm.weight"] = native_norm(g, hd)
        for leaf in LINEARS:
            rows, cols = shapes[leaf]
            t[p + leaf + ".weight"] = (torch.randn(rows, cols, generator=g) / cols ** 0.5).to(torch.bfloat16)
            t[p + leaf + ".norm.weight"] = _norm(g, cols)   # plain RMSNorm on the projection's input
    t["model.norm.weight"] = native_norm(g, e)
    _save_sharded(t, out)
    return out
