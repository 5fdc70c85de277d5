"""Broken or hostile checkpoint folders never take the converter down (hypothesis).

Every example copies a tiny checkpoint (tests/tiny_checkpoints.py), breaks what the converter
reads -- config.json's values or text, a safetensors shard's header, layout or data -- and
converts it with the real convert(). Either the conversion succeeds and the file loads with
gguf.GGUFReader, or convert() raises ConvertError: one line naming the cause (the config key,
the tensor or the file) and the fix, with neither the output nor a temporary file left behind.
Any other exception (KeyError, TypeError, struct.error, json or numpy errors...) fails the test.

Examples are derandomized (CI sees the same ones on every run) and bounded: the module runs in
about a minute on 2 cores.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import gguf
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st
from hypothesis.control import currently_in_test_context

import tiny_checkpoints as tc
from bitnet_tools.convert import ConvertError, convert

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("2b4t", "llama", "2b4t-bf16", "1bitllm")
OUTTYPES = ("i2_s", "tl2", "tq2_0", "f16")
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
ARCHS = {"bitnet", "bitnet-b1.58", "llama"}
FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# a refusal says what to do about it
FIX = re.compile(r"\b(fix|fetch|pass|choose|create|remove|give|convert|download|re-save|install|copy)\b")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {fam: tc.build(fam, root / fam, seed=i) for i, fam in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("examples")


@contextmanager
def copy_of(ckpt: Path, scratch: Path):
    """(checkpoint copy to break, output path in an empty directory of its own) for one example."""
    with tempfile.TemporaryDirectory(dir=scratch) as d:
        d = Path(d)
        shutil.copytree(ckpt, d / "ckpt")
        (d / "out").mkdir()
        yield d / "ckpt", d / "out" / "model.gguf"


def outcome(model_dir: Path, out: Path, outtype: str, causes: list[str]) -> str:
    """Convert; assert it either gave a loadable GGUF or refused properly. Returns the message
    of a refusal ("" for a conversion)."""
    try:
        convert(model_dir, out, outtype)
    except ConvertError as e:
        msg = str(e)
        assert msg and msg == msg.strip() and len(msg.splitlines()) == 1, f"not one line: {msg!r}"
        assert any(c in msg or escaped(c) in msg for c in causes), f"{msg!r} names none of {causes}"
        assert FIX.search(msg), f"{msg!r} says nothing to do about it"
        assert list(out.parent.iterdir()) == [], f"a refused conversion left {list(out.parent.iterdir())}"
        _event("refused: " + re.sub(r"[0-9]+", "N", re.sub(r"/\S+", "PATH", msg))[:60])
        return msg
    r = gguf.GGUFReader(out)
    assert r.get_field("general.architecture").contents() in ARCHS
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"} <= names, names
    for f in r.fields.values():   # no NaN or inf hyperparameter reaches the file
        if f.types == [gguf.GGUFValueType.FLOAT32]:
            assert math.isfinite(f.contents()), (f.name, f.contents())
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    _event("converted")
    return ""


def escaped(text: str) -> str:
    """`text` as a message shows it: what is not printable escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _event(what: str) -> None:
    """Outcome counts for --hypothesis-show-statistics (only inside a hypothesis example)."""
    if currently_in_test_context():
        event(what)


# ---------------------------------------------------------------------------------------------
# config.json

CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "head_dim", "max_position_embeddings", "rms_norm_eps",
               "rope_theta", "rope_parameters", "rope_scaling", "hidden_act", "tie_word_embeddings",
               "architectures", "model_type", "quantization_config", "_name_or_path", "bos_token_id",
               "eos_token_id", "pad_token_id", "text_config", "torch_dtype", "initializer_range", "use_cache",
               "auto_map")
ARCH_NAMES = ["BitNetForCausalLM", "BitnetForCausalLM", "LlamaForCausalLM", "GPT2LMHeadModel", "[/x]"]
ODD_TEXT = ["", "384", "silu", "relu2", "gelu", "linear", "yarn", "default", "bitlinear", "[/x]", "a\nb", "\ud800"]
SPECIAL = [None, True, False, 0, -1, 1, 2, 3, 5, 7, 63, 2**31, 2**32, 2**40, -2**40, 2**64, math.nan, math.inf,
           -math.inf, 0.0, -0.0, 1e-300, 1e300, 0.5, 384.0, 1e-5, *ODD_TEXT]
SCALAR = st.one_of(st.sampled_from(SPECIAL), st.sampled_from(SPECIAL), st.integers(-8, 5000), st.floats(),
                   st.text(max_size=6))
NESTED_KEYS = ["type", "rope_type", "factor", "rope_theta", "linear_class", "use_rms_norm", "bos_token_id"]
JUNK = st.one_of(
    SCALAR, st.lists(st.one_of(st.sampled_from(ARCH_NAMES), st.integers(-2, 8)), max_size=3),
    st.dictionaries(st.sampled_from(NESTED_KEYS), SCALAR, max_size=3))
RELATED = {  # plausible values of the keys that hold no plain number
    "architectures": [["GPT2LMHeadModel"], ["BitNetForCausalLM"], ["LlamaForCausalLM"], ["BitnetForCausalLM"], [],
                      "BitNetForCausalLM", [None], {"a": 1}],
    "rope_scaling": [{"type": "linear", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0}, {"type": "linear"},
                     {"type": "linear", "factor": 0}, {"type": "linear", "factor": "x"}, [], "linear"],
    "rope_parameters": [{"rope_type": "default"}, {"rope_theta": math.nan}, {"rope_theta": "1e4"},
                        {"rope_type": "linear", "factor": -1.0}, {"rope_type": "llama3"}, []],
    "quantization_config": [{"linear_class": "bitlinear"}, {"linear_class": "autobitlinear"}, {"use_rms_norm": True},
                            {"linear_class": 5}, [], "bitnet"],
    "hidden_act": ["silu", "relu2", "gelu", "relu", ["silu"]],
    "text_config": [{"bos_token_id": -1}, {"eos_token_id": "x"}, [], "x"],
    "eos_token_id": [[1, 2], [-1], [10**6], "2"],
}


def near(key: str, cfg: dict) -> list:
    """Values close to the checkpoint's own: off by one, doubled, halved, another type."""
    v = cfg.get(key)
    if key == "head_dim" and v is None:
        v = cfg["hidden_size"] // cfg["num_attention_heads"]
    if isinstance(v, bool):
        values = [not v, int(v), str(v).lower()]
    elif isinstance(v, int):
        values = [v + 1, v - 1, 2 * v, v // 2, v // 3, v + 2, -v, float(v), str(v), [v]]
    elif isinstance(v, float):
        values = [v * 10, v / 10, -v, 0.0, math.nan, math.inf, str(v), int(v)]
    else:
        values = [None]
    return RELATED.get(key, []) + values


@st.composite
def config_edits(draw, cfg: dict) -> dict:
    """{key: new value, or ... to delete it} for one to three keys."""
    keys = draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3, unique=True))
    edits = {}
    for k in keys:
        how = draw(st.sampled_from(["delete", "near", "near", "junk"]))
        edits[k] = ... if how == "delete" else draw(st.sampled_from(near(k, cfg)) if how == "near" else JUNK)
    return edits


def edit_config(d: Path, edits: dict) -> None:
    cfg = json.loads((d / "config.json").read_text())
    for k, v in edits.items():
        if v is ...:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg, indent=2))


@settings(FUZZ, max_examples=170)
@given(data=st.data())
def test_broken_config_values(ckpts, scratch, data):
    family = data.draw(st.sampled_from(FAMILIES), "family")
    cfg = json.loads((ckpts[family] / "config.json").read_text())
    edits = data.draw(config_edits(cfg), "edits")
    outtype = data.draw(st.sampled_from(OUTTYPES), "outtype")
    with copy_of(ckpts[family], scratch) as (d, out):
        edit_config(d, edits)
        outcome(d, out, outtype, list(edits))


CONFIG_TEXTS = [b"", b" ", b"{", b"}", b"[]", b"null", b"1", b"NaN", b'"config"', b'{"a": 1', b"[" * 100_000,
                b'{"a":' * 50_000, "\ufeff{}".encode(), b"\xff\xfe{}", b"{}",
                b'{"architectures": ["BitNetForCausalLM"]}',
                b'{"architectures": ["BitNetForCausalLM"], "hidden_size": 1e999}']


@pytest.mark.parametrize("text", CONFIG_TEXTS, ids=lambda b: repr(b[:12]))
def test_config_json_that_is_no_object(ckpts, scratch, text):
    """Not JSON, not UTF-8, nested too deep, or JSON but not an object."""
    with copy_of(ckpts["2b4t"], scratch) as (d, out):
        (d / "config.json").write_bytes(text)
        assert outcome(d, out, "i2_s", ["config.json"])


@settings(FUZZ, max_examples=30)
@given(text=st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode), st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.lists(inner, max_size=3), max_leaves=6).map(lambda v: json.dumps(v).encode())))
def test_config_json_fuzzed_text(ckpts, scratch, text):
    with copy_of(ckpts["2b4t"], scratch) as (d, out):
        (d / "config.json").write_bytes(text)
        assert outcome(d, out, "i2_s", ["config.json"])


# the checks the issue names, each with the message it must give
CONFIG_CASES = [
    ("2b4t", {"num_key_value_heads": 4}, r"config\.json: num_key_value_heads=4 does not divide num_attention_heads=6"),
    ("2b4t", {"num_attention_heads": 5}, r"num_attention_heads=5"),
    ("2b4t", {"hidden_size": 385}, r"hidden_size=385 is not a multiple of num_attention_heads=6"),
    ("2b4t", {"num_attention_heads": 128, "num_key_value_heads": 2}, r"hidden_size/num_attention_heads=3 is odd"),
    ("llama", {"head_dim": 63}, r"head_dim=63 is odd"),
    ("llama", {"head_dim": 32}, r"q_proj\.weight has shape \(64, 256\), expected \(32, 256\) from config\.json's "
                                r"\(num_attention_heads\*head_dim/4, hidden_size\)"),
    ("2b4t", {"hidden_size": "384"}, r"hidden_size='384' is not a whole number"),
    ("2b4t", {"hidden_size": 384.5}, r"hidden_size=384.5 is not a whole number"),
    ("2b4t", {"vocab_size": None}, r"config\.json lacks vocab_size"),
    ("2b4t", {"num_hidden_layers": [2]}, r"num_hidden_layers=\[2\]"),
    ("2b4t", {"num_hidden_layers": True}, r"num_hidden_layers=True"),
    ("2b4t", {"intermediate_size": 0}, r"intermediate_size=0 is not a whole number in 1 \.\."),
    ("2b4t", {"num_attention_heads": -6}, r"num_attention_heads=-6"),
    ("2b4t", {"max_position_embeddings": 2**40}, r"max_position_embeddings=1099511627776"),
    ("2b4t", {"vocab_size": 2**40}, r"vocab_size=1099511627776"),
    ("2b4t", {"num_hidden_layers": 3}, r"num_hidden_layers=3, .*model\.layers\.2\..* is missing"),
    ("2b4t", {"num_hidden_layers": 1}, r"num_hidden_layers=1, .*model\.layers\.1\."),
    ("2b4t", {"vocab_size": 996},
     r"model\.embed_tokens\.weight has shape \(997, 384\), expected \(996, 384\) .*vocab_size"),
    ("2b4t", {"rms_norm_eps": math.nan}, r"rms_norm_eps=nan is not a number in"),
    ("2b4t", {"rms_norm_eps": -1e-5}, r"rms_norm_eps=-1e-05"),
    ("2b4t", {"rope_parameters": {"rope_theta": math.inf}}, r"rope_parameters\.rope_theta=inf"),
    ("1bitllm", {"rope_theta": 1e300}, r"rope_theta=1e\+300"),
    ("1bitllm", {"rope_theta": None}, None),   # the family's default
    ("llama", {"rope_scaling": {"type": "linear", "factor": math.nan}}, r"rope_scaling\.factor=nan"),
    ("llama", {"rope_scaling": {"type": "yarn", "factor": 4.0}}, r"rope_scaling.* 'yarn' is not supported"),
    ("llama", {"rope_scaling": "linear"}, r"rope_scaling='linear' is not a JSON object"),
    ("llama", {"quantization_config": ["bitnet"]}, r"quantization_config=\['bitnet'\] is not a JSON object"),
    ("llama", {"hidden_act": ["silu"]}, r"hidden_act=\['silu'\]"),
    ("llama", {"tie_word_embeddings": "false"}, r"tie_word_embeddings='false' is not true or false"),
    ("llama", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, r"unknown architecture.*GPT2LMHeadModel"),
    ("llama", {"architectures": "LlamaForCausalLM"}, r"architectures='LlamaForCausalLM' is not a list"),
    ("llama", {"architectures": 5}, r"architectures=5 is not a list"),
    ("llama", {"_name_or_path": 5}, r"_name_or_path=5 is not text"),
    ("llama", {"_name_or_path": "\ud800"}, r"_name_or_path='\\ud800' is not text"),
    ("llama", {"bos_token_id": -1}, r"bos_token_id=-1 is not a token id"),
    ("llama", {"eos_token_id": [1000, 2000]}, r"eos_token_id=\[1000, 2000\] is not a token id"),
    ("llama", {"text_config": []}, r"text_config=\[\] is not a JSON object"),
    ("1bitllm", {"torch_dtype": "float99"}, r"torch_dtype='float99' is not a torch dtype"),
    ("1bitllm", {"model_type": []}, r"model_type=\[\] is not a name"),
    ("1bitllm", {"auto_map": 5}, r"auto_map=5 is not a JSON object"),
    ("1bitllm", {"auto_map": None}, r"auto_map=None is not a JSON object"),
    ("2b4t", {"torch_dtype": None, "model_type": None, "initializer_range": "x"}, None),  # no tokenizer reads them
    ("llama", {"head_dim": None, "max_position_embeddings": 2048.0, "model_type": "nope"}, None),
]


@pytest.mark.parametrize("family,edits,match", CONFIG_CASES)
def test_config_checks(ckpts, scratch, family, edits, match):
    with copy_of(ckpts[family], scratch) as (d, out):
        edit_config(d, edits)
        msg = outcome(d, out, "i2_s", list(edits))
        if match is None:
            assert msg == ""
        else:
            assert re.search(match, msg), msg


# ---------------------------------------------------------------------------------------------
# safetensors shards

ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
ODD_DTYPES = ["F8_E8M0", "F4", "F6_E2M3", "C64", "bf16", "", "U8 ", "float32"]
EXTRA_NAMES = ["model.layers.0.self_attn.q_proj.bias", "model.norm.bias", "lm_head.weight",
               "model.layers.2.input_layernorm.weight", "model.layers.0.self_attn.rotary_emb.inv_freq",
               "model.layers.1.mlp.down_proj.weight_scale", "model.embed_tokens.weight", "__metadata__",
               "model.layers.-1.input_layernorm.weight", "[/x]\nboom", ""]


def read_shard(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def tensors_of(header: dict, data: bytes) -> dict[str, list]:
    """name -> [dtype, shape, bytes], in file order."""
    items = sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"])
    return {k: [v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]] for k, v in items}


def well_formed(tensors: dict[str, list]) -> bytes:
    """A valid safetensors file of `tensors` (offsets laid out afresh, header padded to 8)."""
    header, off = {}, 0
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[2] for t in tensors.values())


def as_file(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def shapes_of(nbytes: int) -> list:
    """(dtype, shape) pairs that hold exactly `nbytes`: a valid file whose shape or dtype is wrong."""
    out = []
    for dtype, size in ITEMSIZE.items():
        if nbytes % size:
            continue
        n = nbytes // size
        out += [(dtype, [n]), (dtype, [1, n]), (dtype, [n, 1])]
        out += [(dtype, [a, n // a]) for a in (2, 3, 4, 8, 16) if n % a == 0]
    return out


def names_in(path: Path) -> list[str]:
    """The tensor names of a (broken) shard whose header still parses: a changed header byte may
    have renamed one."""
    try:
        return list(read_shard(path)[0])
    except (ValueError, struct.error, TypeError, MemoryError, OverflowError):
        return []


def break_shard(path: Path, data, kind: str) -> list[str]:
    """Break one shard in the way `kind` says; returns the extra tensor name it adds, if any."""
    header, blob = read_shard(path)
    tensors = tensors_of(header, blob)
    names = list(tensors)
    name = data.draw(st.sampled_from(names), "tensor")
    raw = path.read_bytes()
    n_header = len(raw) - len(blob) - 8
    if kind == "dtype":              # header says another dtype, data not moved
        header[name]["dtype"] = data.draw(st.one_of(st.sampled_from([*ITEMSIZE, *ODD_DTYPES]), SCALAR))
        path.write_bytes(as_file(header, blob))
    elif kind == "shape":            # header says another shape, data not moved
        header[name]["shape"] = data.draw(st.one_of(
            st.lists(st.one_of(st.integers(-2, 2000), st.sampled_from([2**32, 2**40, 2**63, 2**64 + 1])), max_size=3),
            SCALAR))
        path.write_bytes(as_file(header, blob))
    elif kind == "retyped":          # a valid file: same bytes, another dtype and/or shape
        dtype, shape = data.draw(st.sampled_from(shapes_of(len(tensors[name][2]))), "dtype, shape")
        tensors[name][:2] = dtype, shape
        path.write_bytes(well_formed(tensors))
    elif kind == "offsets":
        s, e = header[name]["data_offsets"]
        k = data.draw(st.integers(1, 64), "k")
        other = header[data.draw(st.sampled_from(names), "other")]["data_offsets"]
        header[name]["data_offsets"] = data.draw(st.sampled_from([
            [e, s], [s, e + k], [s + k, e], [s - k, e], [s + k, e + k], [s, len(blob) + k], [0, e - s], list(other),
            [s, 2**64 - 1], [-1, e], [s], [s, e, e], None, [str(s), str(e)], [float(s), float(e)]]), "offsets")
        path.write_bytes(as_file(header, blob))
    elif kind == "length":           # the 8-byte header length
        n = data.draw(st.one_of(st.sampled_from([0, 1, 7, 8, n_header - 1, n_header + 1, len(raw), len(raw) + 1,
                                                 2**31, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)), "length")
        path.write_bytes(struct.pack("<Q", n) + raw[8:])
    elif kind == "header":           # header bytes that are no (or the wrong) JSON
        h = data.draw(st.one_of(
            st.sampled_from([b"", b"not json", b"[]", b"null", b"1", b'{"a": 1}', b"\xff" * 8, b"{" * 4096,
                             raw[8:8 + n_header // 2], json.dumps({name: header[name]}).encode()]),
            st.binary(max_size=32)), "header")
        path.write_bytes(struct.pack("<Q", len(h)) + h + blob)
    elif kind == "header_bytes":     # a few header bytes changed in place
        edits = data.draw(st.lists(st.tuples(st.integers(8, 8 + n_header - 1), st.integers(0, 255)), min_size=1,
                                   max_size=3), "edits")
        b = bytearray(raw)
        for i, v in edits:
            b[i] = v
        path.write_bytes(bytes(b))
    elif kind == "metadata":
        header["__metadata__"] = data.draw(st.one_of(JUNK, st.dictionaries(st.text(max_size=3), SCALAR, max_size=2)))
        path.write_bytes(as_file(header, blob))
    elif kind == "truncated":
        cut = data.draw(st.one_of(st.sampled_from([0, 4, 8, 8 + n_header - 1, 8 + n_header, len(raw) - 1]),
                                  st.integers(0, len(raw) - 1)), "cut")
        path.write_bytes(raw[:cut])
    elif kind == "missing":          # a valid file without one tensor
        del tensors[name]
        path.write_bytes(well_formed(tensors))
    elif kind == "extra":            # a valid file with one more tensor
        name = data.draw(st.one_of(st.sampled_from(EXTRA_NAMES), st.text(max_size=12)), "extra")
        dtype, shape = data.draw(st.sampled_from([("BF16", [4]), ("F32", [2, 3]), ("U8", [1, 384]), ("BF16", [384]),
                                                  ("BF16", [256]), ("I64", [3])]), "extra dtype, shape")
        tensors[name] = [dtype, shape, bytes(ITEMSIZE[dtype] * math.prod(shape))]
        path.write_bytes(well_formed(tensors))
        return [name]
    elif kind == "data":             # the tensor data itself: a few bytes changed
        s, e = header[name]["data_offsets"]
        edits = data.draw(st.lists(st.tuples(st.integers(s, e - 1), st.integers(0, 255)), min_size=1, max_size=4),
                          "data edits")
        b = bytearray(blob)
        for i, v in edits:
            b[i] = v
        path.write_bytes(as_file(header, bytes(b)))
    elif kind == "no_file":
        path.unlink()
    return []


KINDS = ("dtype", "shape", "retyped", "offsets", "length", "header", "header_bytes", "metadata", "truncated",
         "missing", "extra", "data", "no_file")


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_broken_safetensors(ckpts, scratch, data):
    family = data.draw(st.sampled_from(FAMILIES), "family")
    kind = data.draw(st.sampled_from(KINDS), "kind")
    outtype = data.draw(st.sampled_from(OUTTYPES), "outtype")
    with copy_of(ckpts[family], scratch) as (d, out):
        shard = d / data.draw(st.sampled_from(SHARDS), "shard")
        names = names_in(shard)
        extra = break_shard(shard, data, kind)
        # a refusal names the file, or a tensor of it (one a changed header byte renamed too)
        outcome(d, out, outtype, [shard.name, *names, *extra, *(names_in(shard) if shard.exists() else [])])


# the breakages the issue names, each with the message it must give (2b4t: packed, scales multiply)
EMBED, NORM = "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"
Q, QB = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias"
UNREADABLE = r"cannot read model-0000[12]-of-00002\.safetensors: .* \(truncated or corrupt download\? fetch the file again\)"


def _with(header: dict, name: str, **entry) -> dict:
    header[name] = {**header[name], **entry}
    return header


def _offsets(header: dict, name: str) -> list[int]:
    return header[name]["data_offsets"]


def _poked(header: dict, blob: bytes, name: str, value: bytes) -> bytes:
    """`blob` with the data of tensor `name` replaced by repetitions of `value`."""
    s, e = _offsets(header, name)
    return blob[:s] + (value * e)[:e - s] + blob[e:]


SHARD_CASES = {  # what -> (tensor whose shard is broken, how: (raw, header, data, tensors) -> file, message)
    "unknown dtype": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, dtype="Q4"), b), UNREADABLE),
    "dtype of another size": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, dtype="F32"), b), UNREADABLE),
    "integer dtype, valid file": (NORM, lambda r, h, b, t: well_formed({**t, NORM: ["I16", [384], t[NORM][2]]}),
                                  r"input_layernorm\.weight has dtype I16, not floating point: .*fetch"),
    "shape not the config's": (EMBED, lambda r, h, b, t: well_formed({**t, EMBED: ["BF16", [384, 997], t[EMBED][2]]}),
                               r"embed_tokens\.weight has shape \(384, 997\), expected \(997, 384\) from "
                               r"config\.json's \(vocab_size, hidden_size\)"),
    "shape not the data's": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, shape=[385]), b), UNREADABLE),
    "offsets past the end": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, data_offsets=[0, len(b) + 8]), b),
                             UNREADABLE),
    "offsets reversed": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, data_offsets=_offsets(h, NORM)[::-1]), b),
                         UNREADABLE),
    "offsets overlapping": (NORM, lambda r, h, b, t: as_file(_with(h, NORM, data_offsets=_offsets(h, EMBED)), b),
                            UNREADABLE),
    "header length past the end": (NORM, lambda r, h, b, t: struct.pack("<Q", len(r)) + r[8:], UNREADABLE),
    "header not JSON": (NORM, lambda r, h, b, t: struct.pack("<Q", 8) + b"not json" + b, UNREADABLE),
    "data truncated": (NORM, lambda r, h, b, t: r[:-100], UNREADABLE),
    "tensor missing": (NORM, lambda r, h, b, t: well_formed({k: v for k, v in t.items() if k != NORM}),
                       r"input_layernorm\.weight is missing: incomplete checkpoint \(fetch all"),
    "unknown tensor": (NORM, lambda r, h, b, t: well_formed({**t, QB: ["BF16", [384], bytes(768)]}),
                       r"unexpected tensor model\.layers\.0\.self_attn\.q_proj\.bias for BitNet"),
    "code 3 in packed weights": (Q, lambda r, h, b, t: as_file(h, _poked(h, b, Q, b"\xff")),
                                 r"q_proj\.weight holds the 2-bit code 3, which is not a ternary value"),
    "NaN weight scale": (Q, lambda r, h, b, t: as_file(h, _poked(h, b, Q + "_scale", b"\xc0\x7f")),
                         r"q_proj\.weight: its scale is nan"),
}


@pytest.mark.parametrize("what", SHARD_CASES)
def test_shard_checks(ckpts, scratch, what):
    name, how, match = SHARD_CASES[what]
    with copy_of(ckpts["2b4t"], scratch) as (d, out):
        shard = next(d / s for s in SHARDS if name in names_in(d / s))
        header, blob = read_shard(shard)
        shard.write_bytes(how(shard.read_bytes(), header, blob, tensors_of(header, blob)))
        msg = outcome(d, out, "i2_s", [shard.name, name, QB])
        assert re.search(match, msg), msg


def test_a_tensor_in_two_shards_is_refused(ckpts, scratch):
    """Two shards holding one name: which one is meant is unknowable."""
    with copy_of(ckpts["2b4t"], scratch) as (d, out):
        first, second = (d / s for s in SHARDS)
        t1 = tensors_of(*read_shard(first))
        t2 = tensors_of(*read_shard(second))
        name = next(iter(t1))
        t2[name] = t1[name]
        second.write_bytes(well_formed(t2))
        msg = outcome(d, out, "i2_s", [name])
        assert msg and SHARDS[0] in msg and SHARDS[1] in msg, msg


def test_missing_output_head_is_refused(ckpts, scratch):
    """An untied Llama without lm_head.weight: llama.cpp would silently use the token embedding."""
    with copy_of(ckpts["llama"], scratch) as (d, out):
        for shard in (d / s for s in SHARDS):
            t = tensors_of(*read_shard(shard))
            if t.pop("lm_head.weight", None) is not None:
                shard.write_bytes(well_formed(t))
        msg = outcome(d, out, "i2_s", ["lm_head.weight"])
        assert "tie_word_embeddings" in msg, msg


# ---------------------------------------------------------------------------------------------
# the command line

def test_cli_refuses_broken_checkpoints_in_one_line(ckpts, tmp_path):
    """`bitnet convert` on broken checkpoints: exit code 1, one line on stderr, no traceback,
    no output file -- also when the message quotes text that looks like rich markup."""
    cases = []
    d = tmp_path / "heads"
    shutil.copytree(ckpts["2b4t"], d)
    edit_config(d, {"num_key_value_heads": 4})
    cases.append((d, "num_key_value_heads=4 does not divide num_attention_heads=6"))
    d = tmp_path / "markup"
    shutil.copytree(ckpts["llama"], d)
    edit_config(d, {"architectures": ["[/x]"]})
    cases.append((d, "unknown architecture ['[/x]']"))
    d = tmp_path / "truncated"
    shutil.copytree(ckpts["llama"], d)
    shard = d / SHARDS[1]
    shard.write_bytes(shard.read_bytes()[:1000])
    cases.append((d, SHARDS[1]))
    for d, want in cases:
        out = tmp_path / "out" / f"{d.name}.gguf"
        r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "convert", str(d), "-o", str(out)], cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], r.stderr
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
