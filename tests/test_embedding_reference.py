"""bitnet_tools.embedding_reference against transformers' own Qwen3Model / Gemma3TextModel.

transformers' modules are used as they are (eager attention, float32), with only their seven
nn.Linear projections per layer swapped for a BitLinear: plain RMSNorm (the checkpoint's
`<proj>.norm.weight`) -> per-token int8 activations -> absmean-ternary weights. The checkpoint
is loaded strictly, so a tensor either side does not know fails the test.

Tolerances:
  Without activation quantization (reference mode "f32", transformers' BitLinear with int8 off)
  the two differ only in float summation order: TIGHT = 1e-5 relative L2, everywhere.
  With int8 activations the forward is chaotic: a value on a rounding boundary goes the other
  way after any tiny change, one step moves a matrix output by ~1e-3, and attention spreads it;
  on these tiny models a sequence's embedding then moves by ~1e-2 or not at all (a coin toss per
  sequence, likelier for longer ones). The chaos floor is measured, not guessed: the reference
  with every 1-D weight times (1 +- 1e-6), the largest error over the sequences (the size of one
  flip; a median of coin tosses would be no floor). transformers vs reference must agree within
  max(1e-4, 2 * floor) in median relative L2 error.
Broken references (norm_in weights dropped, Gemma's +1 missing, sliding window off by one, no
embedding scale, head size taken as width / heads) must fail both comparisons.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tiny_checkpoints as tc
from bitnet_tools.embedding_reference import NATIVE, EmbeddingReference
from bitnet_tools.reference import absmean, act_int8

BACKBONES = ["qwen3", "gemma3"]
LENGTHS = (5, 9, 13, 21, 29, 37)   # all but one longer than Gemma's sliding window of 8
PROJS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


class BitLinear(nn.Module):
    """The embedding models' projection, written from the facts: its own plain RMSNorm, int8
    activations, ternary weights (ternarized in the forward from the latent weights).
    `quantize = False` turns the int8 activations off, for the chaos-free comparison."""
    quantize = True

    def __init__(self, lin: nn.Linear, eps: float):
        from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm   # w * x, not Gemma's (1 + w) * x
        super().__init__()
        assert lin.bias is None
        self.weight = nn.Parameter(torch.empty_like(lin.weight))
        self.norm = Qwen3RMSNorm(lin.in_features, eps=eps)

    def forward(self, x):
        q, s = absmean(self.weight)
        x = self.norm(x)
        return F.linear(act_int8(x) if self.quantize else x, q.float() * s)


def hf_model(model_dir, backbone: str):
    """transformers' own model class, float32, eager attention, BitLinears put in, checkpoint
    loaded strictly."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, Gemma3TextModel, Qwen3Model
    cfg = AutoConfig.from_pretrained(str(model_dir))
    cfg._attn_implementation = "eager"
    model = {"qwen3": Qwen3Model, "gemma3": Gemma3TextModel}[backbone](cfg).float().eval()
    assert model.config._attn_implementation == "eager"
    for layer in model.layers:
        for block, names in PROJS.items():
            for name in names:
                mod = getattr(layer, block)
                setattr(mod, name, BitLinear(getattr(mod, name), cfg.rms_norm_eps))
    sd = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        sd.update({k.removeprefix("model."): v.float() for k, v in load_file(str(f)).items()})
    model.load_state_dict(sd, strict=True)
    return model


@torch.no_grad()
def hf_embed(model, tokens, quantize: bool = True) -> np.ndarray:
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.quantize = quantize
    seen = {}
    hook = model.norm.register_forward_hook(lambda m, i, o: seen.update(normed=o))
    try:
        h = model(input_ids=torch.tensor([tokens])).last_hidden_state[0]
    finally:
        hook.remove()
    # last_hidden_state is already the final norm's output (no second norm to apply)
    assert torch.equal(h, seen["normed"][0])
    e = h[-1]
    return (e / e.norm()).numpy()


def rel_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


TIGHT = 1e-5


@pytest.fixture(scope="module", params=BACKBONES)
def case(request, tmp_path_factory) -> dict:
    """One backbone's tiny checkpoint: the reference, token sequences, transformers' embeddings
    with int8 activations (`want`) and without (`want_f32`), and the chaos floor."""
    backbone = request.param
    d = tc.build_embedding(backbone, tmp_path_factory.mktemp(backbone))
    ref = EmbeddingReference(d)
    model = hf_model(d, backbone)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, ref.cfg["vocab_size"], (n,), generator=g).tolist() for n in LENGTHS]
    base = ref.embed_many(seqs)
    floor = max(float(rel_errors(ref.perturbed(f).embed_many(seqs), base).max()) for f in (1 + 1e-6, 1 - 1e-6))
    return {"backbone": backbone, "ref": ref, "seqs": seqs, "floor": floor, "bound": max(1e-4, 2 * floor),
            "want": np.stack([hf_embed(model, s) for s in seqs]),
            "want_f32": np.stack([hf_embed(model, s, quantize=False) for s in seqs])}


def test_reference_matches_transformers(case):
    ref, seqs = case["ref"], case["seqs"]
    assert ref.backbone == case["backbone"]
    got = ref.embed_many(seqs)
    assert got.shape == (len(seqs), ref.n_embd) and got.dtype == np.float32
    err = rel_errors(got, case["want"])
    print(f"{ref.backbone}: rel err {np.round(err, 7).tolist()} floor {case['floor']:.2e} bound {case['bound']:.2e}")
    assert np.median(err) < case["bound"], err
    assert np.min(np.sum(got * case["want"], axis=-1)) > 0.999


def test_reference_matches_transformers_without_int8(case):
    """No activation rounding, no chaos: everything but the int8 step is checked tightly."""
    err = rel_errors(case["ref"].embed_many(case["seqs"], mode="f32"), case["want_f32"])
    print(f"{case['backbone']} f32: rel err {err.tolist()}")
    assert err.max() < TIGHT, err


def test_embeddings_are_unit_length(case):
    ref, seqs = case["ref"], case["seqs"]
    for mode in ("model", "i2_s", "f16", "f32"):
        e = ref.embed_many(seqs, mode=mode)
        np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    raw = ref.embed(seqs[0], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-2   # normalising is not a no-op here
    np.testing.assert_allclose(raw / np.linalg.norm(raw), ref.embed(seqs[0]), atol=1e-6)


def broken_references(ref) -> dict:
    """Plausible mistakes, each of which the comparisons must catch."""
    out = {"norm_in weights dropped": ref.with_vectors(
        lambda name, w: torch.ones_like(w) if name.endswith("_in") else w)}
    if ref.backbone == "gemma3":
        native = set(NATIVE["gemma3"]) | {"norm"}
        out["Gemma's +1 missing"] = ref.with_vectors(lambda name, w: w - 1 if name in native else w)
        for window in (ref.sliding_window - 1, ref.sliding_window + 1, None):
            bad = copy.copy(ref)
            bad.sliding_window = window
            out[f"sliding window {window}"] = bad
        bad = copy.copy(ref)
        bad.embed_scale = 1.0
        out["no embedding scale"] = bad
    else:
        bad = copy.copy(ref)
        bad.q_scale = (ref.n_embd // ref.n_head) ** -0.5   # head size taken as width / heads
        out["head size from width"] = bad
    return out


def test_broken_reference_fails(case):
    """The comparisons can fail: each mistake is outside the int8 bound and far outside TIGHT."""
    for what, bad in broken_references(case["ref"]).items():
        err = rel_errors(bad.embed_many(case["seqs"]), case["want"])
        err_f32 = rel_errors(bad.embed_many(case["seqs"], mode="f32"), case["want_f32"])
        print(f"{case['backbone']}, {what}: rel err {np.round(err, 4).tolist()}, f32 {np.round(err_f32, 4).tolist()}")
        assert np.median(err) > case["bound"], (what, err)
        assert np.median(err_f32) > 1000 * TIGHT, (what, err_f32)


def test_layer_types_and_sliding_window(case):
    """Gemma: a sliding layer's token sees itself and the 7 tokens before it (window 8), no more,
    so sequences up to 8 tokens do not depend on the window and longer ones do. Qwen3: no
    sliding layers."""
    ref, seqs = case["ref"], case["seqs"]
    if ref.backbone == "qwen3":
        assert ref.layer_types == ["full_attention"] * 2 and ref.theta == {"full_attention": 1e6}
        return
    assert ref.sliding_window == tc.GEMMA3_SLIDING_WINDOW == 8
    assert ref.layer_types == tc.GEMMA3_LAYER_TYPES
    assert ref.theta == {"sliding_attention": 10000.0, "full_attention": 1e6}
    wide = copy.copy(ref)
    wide.sliding_window = None
    short = seqs[-1][:8]
    np.testing.assert_array_equal(wide.embed(short), ref.embed(short))
    assert rel_errors(wide.embed(seqs[-1]), ref.embed(seqs[-1])) > 1e-2
