"""BitNet embedding models end to end: tiny Qwen3 and Gemma 3 embedding checkpoints (made here
with transformers' configs) converted to every type, run by the patched engine (llama_cpp,
`bitnet embed`, `/v1/embeddings` of `bitnet serve`) and held against the PyTorch reference
(bitnet_tools/embedding_reference.py, itself checked against transformers' modules in
test_embedding_reference.py).

Bounds: the int8 activation rounding makes two correct implementations differ by more than
float rounding (a value on a rounding edge flips). The floor is measured here: the spread that
multiplying every 1-D weight of the reference by (1 + 1e-6) causes. Each text is short and the
KV cache is f32, and the median over texts is bounded (a flip moves one text, an error all)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bitnet_tools.cli import app
from bitnet_tools.convert import ConvertError, convert
from bitnet_tools.embedding_reference import EmbeddingReference
from tiny_checkpoints import build_embedding

runner = CliRunner()
TEXTS = ["the quick brown fox", "hello world, this is a tiny model", "a bit of arithmetic",
         "once upon a time there was a little model", "ternary weights make small models run fast",
         "the lazy dog"]
# GGUF type -> the reference's emulation of how the engine computes with it (activations, scale)
TYPES = {"i2_s": "model", "tl1": "model", "tl2": "model", "tq2_0": "tq2_0", "tq1_0": "tq1_0", "f16": "f16",
         "bf16": "bf16", "f32": "f32"}
# llama.cpp's TQ types hold rows of whole 256-blocks: only the Qwen3 checkpoint's widths are
CASES = [(b, t) for b in ("qwen3", "gemma3") for t in TYPES if not (b == "gemma3" and t.startswith("tq"))]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedding-ckpt")
    return {b: build_embedding(b, root / b) for b in ("qwen3", "gemma3")}


@pytest.fixture(scope="module")
def converted(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-gguf")
    cache: dict[tuple[str, str], Path] = {}

    def get(backbone: str, qtype: str) -> Path:
        if (backbone, qtype) not in cache:
            cache[backbone, qtype] = convert(checkpoints[backbone], root / f"{backbone}-{qtype}.gguf", outtype=qtype)
        return cache[backbone, qtype]
    return get


def _engine(path: Path):
    from bitnet_tools import load
    # f32 KV cache: the near-exact check (an f16 cache adds its own rounding)
    return load(path, n_ctx=512, embedding=True, type_k=0, type_v=0)


def _engine_vectors(llm, texts):
    from bitnet_tools.embed import embed
    return embed(llm, texts), [llm.tokenize(t.encode()) for t in texts]


def _errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=1)   # unit vectors: relative L2


def _floor(ref, tokens, want, **kw) -> float:
    """The chaos floor: the largest move of any text when every 1-D weight of the reference is
    scaled by 1 -/+ 1e-6 (a flip is all or nothing, so the largest, not the median)."""
    return max(float(_errors(want, ref.perturbed(f).embed_many(tokens, **kw)).max()) for f in (1 - 1e-6, 1 + 1e-6))


@pytest.mark.parametrize("backbone,qtype", CASES)
def test_every_type_matches_the_reference(converted, checkpoints, backbone, qtype):
    path = converted(backbone, qtype)
    llm = _engine(path)
    got, tokens = _engine_vectors(llm, TEXTS)
    if backbone == "qwen3":   # the pooled token: <|endoftext|>, appended by the engine as the tokenizer does
        assert all(t[-1] == llm.token_eos() for t in tokens)
        assert llm.detokenize([llm.token_eos()], special=True) == b"<|endoftext|>"
    ref = EmbeddingReference(checkpoints[backbone])
    mode = TYPES[qtype]
    want = ref.embed_many(tokens, mode=mode, embd="f16")
    floor = _floor(ref, tokens, want, mode=mode, embd="f16")
    err = _errors(got, want)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    bound = max(2 * floor, 2e-3)
    assert float(np.median(err)) <= bound, (qtype, err, floor)
    assert float(err.max()) < 0.1, (qtype, err, floor)   # no text far off, flips included
    # and the check can fail: another model's vectors (the norms before the projections dropped) are far
    broken = ref.with_vectors(lambda name, w: torch.ones_like(w) if name.endswith("_in") else w)
    assert float(np.median(_errors(got, broken.embed_many(tokens, mode=mode, embd="f16")))) > 10 * bound


def test_gguf_says_how_the_model_pools_and_what_it_appends(converted, checkpoints, tmp_path):
    from safetensors import safe_open
    from bitnet_tools import dummy
    from bitnet_tools.embed import pooling_type
    for backbone in ("qwen3", "gemma3"):
        r = gguf.GGUFReader(converted(backbone, "i2_s"))
        arch = r.fields["general.architecture"].contents()
        assert arch == backbone
        assert r.fields[f"{arch}.pooling_type"].contents() == int(gguf.PoolingType.LAST)
        assert pooling_type(converted(backbone, "i2_s")) == int(gguf.PoolingType.LAST)   # as serve and bench read it
        names = {t.name for t in r.tensors}
        assert "output.weight" not in names   # an embedding model has no output head
        assert {f"blk.0.{p}_norm_in.weight" for p in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                       "ffn_up", "ffn_down")} <= names
        # Gemma's own norms compute (1 + w) x and are written w + 1; the input norms are plain
        with safe_open(str(next(checkpoints[backbone].glob("*00001*.safetensors"))), "pt") as a, \
                safe_open(str(next(checkpoints[backbone].glob("*00002*.safetensors"))), "pt") as b:
            ck = {k: f.get_tensor(k).float().numpy() for f in (a, b) for k in f.keys()}
        by_name = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors if t.name.endswith("norm.weight")
                   or t.name.endswith("norm_in.weight")}
        offset = 1.0 if backbone == "gemma3" else 0.0
        assert np.allclose(by_name["blk.0.attn_norm.weight"], ck["model.layers.0.input_layernorm.weight"] + offset)
        assert np.allclose(by_name["blk.0.attn_q_norm.weight"], ck["model.layers.0.self_attn.q_norm.weight"] + offset)
        assert np.allclose(by_name["blk.0.ffn_down_norm_in.weight"], ck["model.layers.0.mlp.down_proj.norm.weight"])
    r = gguf.GGUFReader(converted("qwen3", "i2_s"))
    assert r.fields["tokenizer.ggml.add_eos_token"].contents() is True
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()] == "<|endoftext|>"
    r = gguf.GGUFReader(converted("gemma3", "i2_s"))
    cfg = json.loads((checkpoints["gemma3"] / "config.json").read_text())
    assert r.fields["gemma3.attention.sliding_window"].contents() == cfg["sliding_window"]
    assert r.fields["gemma3.attention.sliding_window_pattern"].contents() == [
        k == "sliding_attention" for k in cfg["layer_types"]]
    assert pooling_type(dummy.write(tmp_path / "tiny.gguf", "tiny", "i2_s")) is None        # a text model
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "tiny.gguf").read_bytes()[:4096])
    assert pooling_type(tmp_path / "cut.gguf") is None                                      # unreadable: the load says why


def test_a_plain_backbone_checkpoint_is_refused(checkpoints, tmp_path):
    """A Qwen3 without the input norms is not a BitNet model: refused by name, nothing written."""
    import shutil
    from safetensors.torch import load_file, save_file
    src = tmp_path / "plain"
    shutil.copytree(checkpoints["qwen3"], src)
    for f in src.glob("*.safetensors"):
        t = load_file(str(f))
        save_file({k: v for k, v in t.items() if not k.endswith("_proj.norm.weight")}, str(f))
    with pytest.raises(ConvertError, match=r"q_proj\.norm\.weight is missing: not a BitNet embedding checkpoint"):
        convert(src, tmp_path / "x.gguf", outtype="i2_s")
    assert not list(tmp_path.glob("*.gguf"))


def test_bitnet_embed_writes_the_vectors(converted, checkpoints, tmp_path):
    path = converted("gemma3", "i2_s")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[1:4]) + "\n\n")
    out = tmp_path / "vectors.npy"
    r = runner.invoke(app, ["embed", "-m", str(path), "-p", TEXTS[0], "-f", str(texts), "--out", str(out), "-t", "2"])
    assert r.exit_code == 0, r.output
    got = np.load(out)
    assert got.shape == (4, 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    llm = _engine(path)
    tokens = [llm.tokenize(t.encode()) for t in TEXTS[:4]]
    ref = EmbeddingReference(checkpoints["gemma3"])
    want = ref.embed_many(tokens, embd="f16")
    # the CLI's batch of four texts and an f16 cache: a looser bound than the f32-cache check
    assert float(np.median(_errors(got, want))) <= max(3 * _floor(ref, tokens, want, embd="f16"), 1e-2)
    js = tmp_path / "vectors.json"
    r = runner.invoke(app, ["embed", "-m", str(path), "-p", TEXTS[0], "--out", str(js)])
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())
    assert rows[0]["text"] == TEXTS[0] and np.allclose(rows[0]["embedding"], got[0], atol=2e-2)


def test_bitnet_embed_refuses_bad_input(converted, tmp_path):
    path = converted("qwen3", "i2_s")
    cases = [
        (["embed", "-m", str(path)], "no text to embed"),
        (["embed", "-m", str(path), "-p", "x", "--out", str(tmp_path / "v.txt")], "name a .npy or .json file"),
        (["embed", "-m", str(path), "-p", "x", "--out", str(tmp_path / "no" / "v.npy")], "does not exist"),
        (["embed", "-m", str(path), "-p", "word " * 200, "-c", "64"], "more than the 64 one batch holds"),
        (["embed", "-m", str(path), "-f", str(tmp_path / "absent.txt")], "cannot read"),
    ]
    for args, words in cases:
        r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 1 and words in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "v.txt").exists()


def test_bitnet_embed_refuses_a_text_model(tmp_path):
    from bitnet_tools import dummy
    text_model = dummy.write(tmp_path / "tiny.gguf", "tiny", "i2_s")
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "embed", "-m", str(text_model), "-p", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "is a text model" in r.stderr, r.stderr


def _head_products(path: Path, embeddings: bool) -> int:
    """How many matmuls named "result_output" (the output head, vocab x width) one decode of a
    short text runs, seen through the engine's eval callback."""
    import ctypes

    import llama_cpp
    from bitnet_tools import engine
    ggml = engine.ggml_base_library()
    for fn in ("ggml_get_name", "ggml_op_desc"):
        getattr(ggml, fn).restype, getattr(ggml, fn).argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    seen = []

    @llama_cpp.ggml_backend_sched_eval_callback
    def observe(t, ask, _):
        if ask and ggml.ggml_get_name(t) == b"result_output" and ggml.ggml_op_desc(t) == b"MUL_MAT":
            seen.append(1)
        return False   # observe nothing further: every node is asked once

    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx, cparams.embeddings, cparams.cb_eval = 64, embeddings, observe
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    try:
        tokens = (llama_cpp.llama_token * 4)(1, 2, 3, 4)
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(tokens, 4)) == 0
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return len(seen)


@pytest.mark.parametrize("backbone", ["qwen3", "gemma3"])
def test_a_pooled_context_leaves_the_unread_output_head_out(converted, backbone):
    """Nothing reads logits when the context pools embeddings, so the vocab x width head (a third
    of the 0.6b model's work per token, more than the 270m's whole body) is not computed; a text
    context of the same file still computes it (the control: the callback does see the head)."""
    path = converted(backbone, "i2_s")
    assert _head_products(path, embeddings=False) == 1
    assert _head_products(path, embeddings=True) == 0


def test_text_commands_refuse_an_embedding_model(converted):
    path = converted("qwen3", "i2_s")
    for args in (["infer", "-m", str(path), "-p", "hi", "-n", "4"], ["chat", "-m", str(path)],
                 ["ppl", "-m", str(path), "-f", str(path)]):
        r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", *args], capture_output=True, text=True,
                           timeout=120, input="")
        assert r.returncode == 1 and "is an embedding model" in r.stderr and "bitnet embed" in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_answers_v1_embeddings(converted, checkpoints, tmp_path):
    """/v1/embeddings through the openai client: unit vectors, several texts per call, matching the
    reference; the server keeps serving after a bad request."""
    import openai
    from test_serve import ALIAS, Served
    path = converted("qwen3", "tl2")
    served = Served(path, tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="none", max_retries=0, timeout=60)
        resp = client.embeddings.create(model=ALIAS, input=TEXTS)
        got = np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)
        assert got.shape == (len(TEXTS), 256)
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-4)
        llm = _engine(path)
        tokens = [llm.tokenize(t.encode()) for t in TEXTS]
        ref = EmbeddingReference(checkpoints["qwen3"])
        want = ref.embed_many(tokens, embd="f16")
        assert float(np.median(_errors(got, want))) <= max(3 * _floor(ref, tokens, want, embd="f16"), 1e-2)
        bad = urllib.request.Request(f"{served.url}/v1/embeddings", data=b'{"model": "%s"}' % ALIAS.encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as no_input:   # no "input": a 4xx, and the server goes on
            urllib.request.urlopen(bad, timeout=30)
        assert 400 <= no_input.value.code < 500
        # an embedding model generates no text: completions and chat are refused, not answered
        for refused in (lambda: client.completions.create(model=ALIAS, prompt="hi", max_tokens=4),
                        lambda: client.chat.completions.create(model=ALIAS, max_tokens=4,
                                                               messages=[{"role": "user", "content": "hi"}])):
            with pytest.raises(openai.BadRequestError, match="use /v1/embeddings"):
                refused()
        again = client.embeddings.create(model=ALIAS, input=TEXTS[0])
        assert np.allclose(again.data[0].embedding, got[0], atol=1e-3)
    finally:
        served.stop()
