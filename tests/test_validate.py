"""Damaged model files are refused with one line, before anything runs (issue: a hostile or broken
model file never takes the process down).

Each case is one signature that used to abort the process (GGML_ASSERT, SIGSEGV), spin forever or
run silently wrong: the same tiny model with one header value, tensor type or scale damaged. Every
entry point runs in its own process, so a case that still aborts fails its test instead of
taking pytest down: the Python API (bitnet_tools.load), `bitnet infer`, `bitnet serve` and
llama.cpp's own llama-completion (the engine's check is in the loader, so the tools get it too).
"""
from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from test_cli import _free_port

from bitnet_tools import dummy
from bitnet_tools.quants import OURS

ARCH = dummy.ARCH
BITNET = [sys.executable, "-m", "bitnet_tools.cli"]


def set_kv(src: Path, dst: Path, key: str, value) -> Path:
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    reader.data.flush()
    return dst


def set_token(src: Path, dst: Path, old: str, new: str) -> Path:
    """Rename a token in place (same length)."""
    assert len(old) == len(new)
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    part = next(field.parts[i] for i in field.data if field.parts[i].tobytes() == old.encode())
    part[:] = list(new.encode())
    reader.data.flush()
    return dst


def replace_bytes(src: Path, dst: Path, old: bytes, new: bytes) -> Path:
    assert len(old) == len(new)
    dst.write_bytes(src.read_bytes().replace(old, new, 1))
    return dst


def set_array_item_type(src: Path, dst: Path, key: str, type_id: int) -> Path:
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    reader.fields[key].parts[3][0] = type_id  # parts: name length, name, value type, item type, count, items
    reader.data.flush()
    return dst


def set_tensor_type(src: Path, dst: Path, name: str, type_id: int) -> Path:
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    tensor.field.parts[-2][0] = type_id  # tensor info: name, n_dims, dims, type, offset
    reader.data.flush()
    return dst


def set_scale(src: Path, dst: Path, name: str, value: float) -> Path:
    """The per-tensor scale of a ternary tensor: the first float of the 32-byte tail after its codes."""
    shutil.copy(src, dst)
    reader = gguf.GGUFReader(dst)
    tensor = next(t for t in reader.tensors if t.name == name)
    at = int(tensor.data_offset) + int(tensor.n_bytes) - 32
    with open(dst, "r+b") as f:
        f.seek(at)
        f.write(struct.pack("<f", value))
    return dst


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seeds")
    return {q: dummy.write(d / f"{q}.gguf", "tiny", q, n_layer=2, n_vocab=512) for q in ("i2_s", "tl2", "tq2_0")}


def _type_id(name: str) -> int:
    return int(OURS[name].qtype)


# (case, seed type, how to damage it, words the one-line error must hold)
CASES = [
    ("block_count_0", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.block_count", 0), "block_count = 0"),
    ("block_count_huge", "tq2_0", lambda s, d: set_kv(s, d, f"{ARCH}.block_count", 100000), "block_count = 100000"),
    ("rope_odd", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.rope.dimension_count", 63), "rope.dimension_count = 63"),
    ("rope_odd_stock", "tq2_0", lambda s, d: set_kv(s, d, f"{ARCH}.rope.dimension_count", 31), "rope.dimension_count = 31"),
    ("rope_beyond_head", "tl2", lambda s, d: set_kv(s, d, f"{ARCH}.rope.dimension_count", 128), "rope.dimension_count = 128"),
    ("rope_segv", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.rope.dimension_count", 4227858496), "4227858496"),
    ("rope_0_spins", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.rope.dimension_count", 0), "rope.dimension_count = 0"),
    ("eps_negative", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.attention.layer_norm_rms_epsilon", -1e-5), "layer_norm_rms_epsilon"),
    ("eps_nan", "tl2", lambda s, d: set_kv(s, d, f"{ARCH}.attention.layer_norm_rms_epsilon", math.nan), "layer_norm_rms_epsilon"),
    ("head_count_kv_flipped", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.attention.head_count_kv", 3), "head_count_kv = 3"),
    ("context_length_huge", "i2_s", lambda s, d: set_kv(s, d, f"{ARCH}.context_length", 1_800_000_000), "context_length = 1800000000"),
    ("norm_as_tl2", "tl2", lambda s, d: set_tensor_type(s, d, "output_norm.weight", _type_id("tl2")), "output_norm.weight"),
    ("i2_s_relabelled_tl1", "i2_s", lambda s, d: set_tensor_type(s, d, "blk.0.attn_q.weight", _type_id("tl1")), "blk.0.attn_q.weight"),
    ("scale_nan", "i2_s", lambda s, d: set_scale(s, d, "blk.0.attn_q.weight", math.nan), "blk.0.attn_q.weight"),
    ("scale_zero", "tl2", lambda s, d: set_scale(s, d, "blk.1.ffn_down.weight", 0.0), "blk.1.ffn_down.weight"),
    ("scale_inf", "i2_s", lambda s, d: set_scale(s, d, "blk.1.attn_v.weight", math.inf), "blk.1.attn_v.weight"),
    # overflows the activations: every logit reads 0
    ("scale_huge", "i2_s", lambda s, d: set_scale(s, d, "blk.0.ffn_down.weight", 3.4e38), "blk.0.ffn_down.weight"),
    # GGML_ASSERT(id_to_token.size() == token_to_id.size()) while loading the vocabulary
    ("token_twice", "tq2_0", lambda s, d: set_token(s, d, "<0x58>", "<0x86>"), "'<0x86>' twice"),
    # std::out_of_range from the tokenizer's byte fallback: terminate
    ("byte_token_missing", "i2_s", lambda s, d: set_token(s, d, "<0x65>", "<0xZZ>"), "byte <0x65>"),
    # gguf-py read it as nested arrays, looping for minutes (Python, before the engine)
    ("array_of_arrays", "i2_s", lambda s, d: set_array_item_type(s, d, "tokenizer.ggml.scores", 9), "array of arrays"),
    # a UnicodeDecodeError traceback from bitnet_tools' own header check (Python)
    ("architecture_not_utf8", "tq2_0", lambda s, d: replace_bytes(s, d, b"bitnet-b1.58", b"bitnet\xffb1.58"),
     "not a readable GGUF file"),
]


@pytest.fixture(scope="module")
def damaged(seeds, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("damaged")
    return {case: (damage(seeds[seed], d / f"{case}.gguf"), words) for case, seed, damage, words in CASES}


def _one_line_error(r: subprocess.CompletedProcess, words: str) -> None:
    said = (r.stdout + r.stderr).strip()
    assert r.returncode > 0, f"exit {r.returncode} (negative: killed by a signal): {said[-2000:]}"
    assert "Traceback" not in said, said[-2000:]
    assert words in said, said[-2000:]


LOAD = """
import sys
from bitnet_tools.runtime import ModelError, load
try:
    llm = load(sys.argv[1], n_ctx=64, n_threads=1)
    llm("hello", max_tokens=2)
except ModelError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_python_api_refuses_with_one_line(damaged, case):
    path, words = damaged[case]
    r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=60)
    _one_line_error(r, words)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "convert the checkpoint" in r.stderr  # the fix


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bitnet_infer_refuses_with_one_line(damaged, case):
    path, words = damaged[case]
    r = subprocess.run(BITNET + ["infer", "-m", str(path), "-p", "hi", "-n", "2"], capture_output=True, text=True,
                       timeout=60)
    _one_line_error(r, words)


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_bitnet_serve_refuses_to_start(damaged, case):
    path, words = damaged[case]
    r = subprocess.run(BITNET + ["serve", "-m", str(path), "--port", str(_free_port())], capture_output=True,
                       text=True, timeout=120)
    _one_line_error(r, words)


@pytest.mark.parametrize("case", ["block_count_huge", "rope_odd", "eps_negative", "head_count_kv_flipped", "scale_zero"])
def test_llama_tools_refuse_too(damaged, case, tools):
    """llama.cpp's own programs load through the same checked loader."""
    path, words = damaged[case]
    r = subprocess.run([str(tools / "llama-completion"), "-m", str(path), "-p", "hi", "-n", "2", "-no-cnv", "-c", "128"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode > 0 and words in r.stdout + r.stderr, (r.returncode, (r.stdout + r.stderr)[-2000:])


def test_context_larger_than_memory_is_refused_before_allocation(seeds):
    """A KV cache beyond physical memory used to be allocated and cleared page by page first."""
    # the tiny model's KV cache takes 1 KiB per token (2 layers x (128 K + 128 V values) x f16): twice
    # this machine's memory
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    code = LOAD.replace("n_ctx=64", f"n_ctx={min(2**32 - 1, 2 * memory // 1024)}")
    r = subprocess.run([sys.executable, "-c", code, str(seeds["i2_s"])], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "KV cache" in r.stderr and "smaller context" in r.stderr, r.stderr


def test_undamaged_seeds_still_run(seeds):
    """The checks refuse the damage, not the files our converter and dummies write."""
    for path in seeds.values():
        r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
