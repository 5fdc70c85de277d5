"""The roofline of `bitnet bench`: the bitnet-roofline probe (read bandwidth, int8 dot peak) and
the per-token costs its ceilings divide by.

- the probe runs and gives plausible figures, and its results are the sums of its documented
  data, recomputed here with numpy (so the SIMD loops really ran over that data);
- its self-check fires: changed dot data after the scalar reference makes it exit 3;
- bytes read and MACs per token of a GGUF, against numbers computed here from the tensor shapes
  and the types' block sizes (tied and untied output head);
- the same probe in the AVX2-only build and the aarch64 build (under qemu), so every dot
  instruction path this project builds is run by a test.
"""
from __future__ import annotations

import json
import math
import platform
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from bitnet_tools import bench, dummy, engine

K = 0x9E3779B97F4A7C15  # word i of every read buffer holds i * K (bitnet-roofline.c)


def _probe(bindir: Path, *args, flavor: str = "native", timeout: float = 300) -> subprocess.CompletedProcess:
    return engine.run_program(flavor, bindir / "bitnet-roofline", *args, timeout=timeout)


def _dot_sum(vec: int, reps: int, block: int = 4096) -> int:
    """The probe's dot sum from its documented data: a[i] = (37 i + 11) mod 3 (u8), b[i] =
    (91 i + 5) mod 256 as s8; chunk j pairs a-vector 4j+q with b-vector 4j+p for all p, q < 4;
    one pass summed, times reps, mod 2^32."""
    i = np.arange(block, dtype=np.int64)
    a = ((37 * i + 11) % 3).reshape(-1, vec)
    b = ((91 * i + 5) % 256).astype(np.uint8).view(np.int8).astype(np.int64).reshape(-1, vec)
    total = 0
    for j in range(block // (4 * vec)):
        for p in range(4):
            for q in range(4):
                total += int(a[4 * j + q] @ b[4 * j + p])
    return (total * reps) % 2**32


def _read_sum(nbytes: int) -> int:
    n = nbytes // 8
    return (n * (n - 1) // 2 * K) % 2**64


def _check_figures(d: dict, threads: int) -> None:
    assert d["check"] == "ok" and d["threads"] == threads
    assert d["dot_sum"] == d["dot_scalar"] == _dot_sum(d["vec_bytes"], d["dot_reps"]), d
    assert d["read_sum"] == _read_sum(d["read_bytes_per_thread"]), d
    assert d["dot_macs_per_thread"] == d["dot_reps"] * d["dot_block_bytes"] * 4, d   # 16 products of V per 4V bytes


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[-1].split())


def test_probe_measures_plausible_ceilings(tools):
    """1 and 2 threads: positive, physically plausible figures; the work checked by value."""
    figures = {}
    for threads in (1, 2):
        r = _probe(tools, "-t", threads, "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        _check_figures(d, threads)
        # far more than any L3 is read: 256 MiB in all
        assert d["read_bytes_per_thread"] * threads >= 255 * 2**20
        # a DDR channel gives several GB/s, nothing gives 2 TB/s to two cores
        assert 1.0 < d["read_gb_s"] < 2000, d
        # int8: from a slow scalar loop (a few GMAC/s) to wide SIMD, never more than 1024 MACs a cycle at 5 GHz
        assert 0.5 < d["int8_gmac_s"] < 5000 * threads, d
        figures[threads] = d
    if engine.installed_build()[0] == "native" and platform.machine() in ("x86_64", "AMD64"):
        flags = _cpu_flags()
        want = "avx512-vnni" if {"avx512_vnni", "avx512bw"} <= flags else "avx-vnni" if "avx_vnni" in flags else \
            "avx2" if "avx2" in flags else "scalar"
        assert figures[1]["isa"] == want
        if want == "avx512-vnni":   # a vpdpbusd loop is far beyond the scalar loop's few GMAC/s
            assert figures[1]["int8_gmac_s"] > 50
    print({t: (d["read_gb_s"], d["int8_gmac_s"], d["isa"]) for t, d in figures.items()})


def test_probe_self_check_fails_on_wrong_dot_results(tools):
    """--corrupt-dot-data changes the SIMD loop's data after the scalar reference was taken:
    the probe must notice and exit 3 without printing figures."""
    r = _probe(tools, "-t", 2, "--json", "--quick", "--corrupt-dot-data")
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "int8 dot check failed" in r.stderr and r.stdout == ""
    good = _probe(tools, "-t", 2, "--json", "--quick")
    assert good.returncode == 0, good.stderr
    _check_figures(json.loads(good.stdout), 2)


def test_bench_stops_on_a_failing_probe(tmp_path):
    fake = tmp_path / "bitnet-roofline"
    fake.write_text("#!/bin/sh\necho 'bitnet-roofline: int8 dot check failed on thread 0 (x): 1, scalar 2' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(bench.BenchError, match="int8 dot check failed"):
        bench.measure_ceilings(tmp_path, 1)
    with pytest.raises(bench.BenchError, match="setup --engine-only"):
        bench.measure_ceilings(tmp_path / "absent", 1)


# ---------------------------------------------------------------- costs per token

def _i2_s_bytes(rows: int, cols: int) -> int:
    return rows * math.ceil(cols / 128) * 32 + 32      # whole 128-groups of 32 bytes per row, the scale after


def test_cost_of_a_tied_model_from_its_shapes(tmp_path):
    """The dummy tiny model (bitnet-b1.58: no output.weight, the Q6_K token embedding is the
    head): a token reads every tensor whole, the embedding included, and multiplies every
    BitLinear and the embedding as head."""
    path = dummy.write(tmp_path / "tiny.gguf", "tiny", "i2_s")
    s = dummy.SHAPES["tiny"]
    e, f, v, hd = s.n_embd, s.n_ff, s.n_vocab, s.n_embd // s.n_head
    q, kv = hd * s.n_head, hd * s.n_head_kv
    mats = [(q, e), (kv, e), (kv, e), (e, q), (f, e), (f, e), (e, f)]    # q k v o gate up down
    norms = [e, e, e, f]                                                  # attn, attn_sub, ffn, ffn_sub
    embd_bytes = v * e // 256 * 210                                       # Q6_K: 210 bytes per 256
    want_bytes = embd_bytes + s.n_layer * (sum(_i2_s_bytes(r, c) for r, c in mats) + 4 * sum(norms)) + 4 * e
    want_macs = s.n_layer * sum(r * c for r, c in mats) + v * e

    # the reader agrees that this is the whole tensor data (alignment padding aside)
    reader = gguf.GGUFReader(path)
    assert "output.weight" not in {t.name for t in reader.tensors}
    assert sum(int(t.n_bytes) for t in reader.tensors) == want_bytes

    cost = bench.model_cost(path)
    assert cost.tied
    assert cost.bytes_per_token == want_bytes
    assert cost.macs_per_token == want_macs
    assert cost.head_macs == v * e


def test_tl2_held_as_i2_s_costs_what_i2_s_does(tmp_path):
    """Where the engine holds TL2 as I2_S, a TL2 token reads I2_S's bytes: the same model shape
    then costs what the I2_S file does; as stored, less (1.67 bits per weight, not 2)."""
    tl2 = bench.model_cost(dummy.write(tmp_path / "tiny-tl2.gguf", "tiny", "tl2"), tl2_as_i2_s=True)
    i2s = bench.model_cost(dummy.write(tmp_path / "tiny-i2_s.gguf", "tiny", "i2_s"))
    assert tl2 == i2s
    stored = bench.model_cost(tmp_path / "tiny-tl2.gguf")
    assert stored.bytes_per_token < i2s.bytes_per_token and stored.macs_per_token == i2s.macs_per_token


def test_cost_of_an_untied_model_reads_one_embedding_row(tmp_path):
    """With an output.weight, the token embedding is only looked up: one row per token, no MACs."""
    e, v, f = 64, 300, 128
    path = tmp_path / "untied.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((v, e), dtype=np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(e, dtype=np.float32))
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((f, e), dtype=np.float32))
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((e, f), dtype=np.float16))
    w.add_tensor("output.weight", np.zeros((v, e), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    cost = bench.model_cost(path)
    assert not cost.tied
    assert cost.bytes_per_token == 2 * e + 4 * e + 4 * f * e + 2 * e * f + 4 * v * e
    assert cost.macs_per_token == f * e + e * f + v * e
    assert cost.head_macs == v * e


def test_a_type_gguf_py_does_not_know_raises_what_the_bench_skips(tmp_path):
    """Another engine's own type ids (ik_llama.cpp's IQ2_BN_R4 ...) cannot be sized: model_cost
    raises ValueError, the one error `bitnet bench` turns into "no ceiling" for such a file."""
    path = tmp_path / "theirs.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((8, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    name = b"blk.0.ffn_up.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8   # after the name: n_dims (u32), two dims (u64)
    assert int.from_bytes(data[at:at + 4], "little") == int(gguf.GGMLQuantizationType.F32)
    data[at:at + 4] = (250).to_bytes(4, "little")     # an id no gguf-py type has
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        bench.model_cost(path)


def test_ceilings_and_shares():
    cost = bench.ModelCost(bytes_per_token=500_000_000, macs_per_token=2_000_000_000, head_macs=300_000_000, tied=True)
    c = bench.Ceilings(threads=2, read_gb_s=40.0, int8_gmac_s=400.0, isa="x")
    assert bench.ceiling("tg128", cost, c) == pytest.approx(80.0)            # 40e9 / 0.5e9
    # the head (0.3 GMAC) runs for the prompt's last token only: 1.7e9 + 0.3e9/512 per token
    assert bench.ceiling("pp512", cost, c) == pytest.approx(400e9 / (1.7e9 + 0.3e9 / 512))
    assert bench.ceiling("embd128", cost, c) == pytest.approx(400e9 / 1.7e9)  # no head for a pooled text
    rows = [bench.Result("m.gguf", "i2_s", 2, test, 1, tps, 0.0, 1, 1, 2.0, 1.0, 1.0, 1.0, "estimated", True)
            for test, tps in (("tg128", 20.0), ("pp512", 50.0))]
    rows.append(bench.Result("m.gguf", "i2_s", 1, "tg128", 1, 10.0, 0.0, 1, 1, 2.0, 1.0, 1.0, 1.0, "estimated", True))
    bench.add_ceilings(rows, {2: c}, {"m.gguf": cost})
    assert rows[0].ceiling_share == pytest.approx(0.25) and rows[0].ceiling_bound == "read bandwidth"
    assert rows[1].ceiling_share == pytest.approx(50.0 / bench.ceiling("pp512", cost, c)) and rows[1].ceiling_bound == "int8 peak"
    assert rows[2].ceiling_tps is None and rows[2].ceiling_share is None   # 1 thread not measured
    assert bench.roofline_summary(rows) == [{"threads": 2, "read_gb_s": 40.0, "int8_gmac_s": 400.0, "isa": "x",
                                             "probe": "bitnet-roofline"}]


# ---------------------------------------------------------------- the other builds' paths

_arm_missing = [t for t in ({**engine.CROSS_AARCH64, **engine.QEMU_AARCH64} if engine.is_cross("armv8") else {})
                if shutil.which(t) is None]
_no_avx2 = platform.machine() not in ("x86_64", "AMD64") or "avx2" not in _cpu_flags()


@pytest.mark.slow
@pytest.mark.parametrize("flavor, isa, vec", [
    # the AVX2 build (no AVX-512, no VNNI) uses maddubs, int16 sums of four, madd
    pytest.param("avx2", "avx2", 32, marks=pytest.mark.skipif(_no_avx2, reason="needs an x86-64 CPU with AVX2")),
    # the armv8 build (ARMv8.2-A + dot product, under qemu on x86-64) uses sdot (vdotq_s32)
    pytest.param("armv8", "neon-dotprod", 16, marks=pytest.mark.skipif(
        bool(_arm_missing), reason=f"no {', '.join(_arm_missing)} (apt-get install gcc-aarch64-linux-gnu "
                                   "g++-aarch64-linux-gnu qemu-user)")),
])
def test_probe_in_the_other_builds(flavor, isa, vec):
    """Each build's probe uses its own dot instruction; its sums must be the same data's."""
    bindir = engine.build_test_programs(flavor)
    r = _probe(bindir, "-t", 2, "--json", "--quick", flavor=flavor)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["isa"] == isa and d["vec_bytes"] == vec
    _check_figures(d, 2)
    bad = _probe(bindir, "--quick", "--corrupt-dot-data", flavor=flavor)
    assert bad.returncode == 3 and "check failed" in bad.stderr


# every dot path of the source, compiled here directly (cheap): the builds reach only their own
SOURCE = engine.PATCHES / "files" / "tools" / "bitnet-roofline" / "bitnet-roofline.c"
PATHS = [  # (isa the probe must report, compiler, flags, CPU flags needed to run it here, runs under qemu)
    ("scalar", "gcc", ["-mno-avx", "-mno-avx2"], set(), False),
    ("avx2", "gcc", ["-mavx2", "-mfma"], {"avx2"}, False),
    ("avx-vnni", "gcc", ["-mavx2", "-mavxvnni"], {"avx2", "avx_vnni"}, False),
    ("avx512-vnni", "gcc", ["-mavx512f", "-mavx512bw", "-mavx512vnni"], {"avx512bw", "avx512_vnni"}, False),
    ("neon", "aarch64-linux-gnu-gcc", ["-march=armv8-a"], set(), True),
    ("neon-dotprod", "aarch64-linux-gnu-gcc", ["-march=armv8.2-a+dotprod"], set(), True),
]


@pytest.mark.parametrize("isa,cc,flags,needs,qemu", PATHS, ids=[p[0] for p in PATHS])
def test_every_dot_path_of_the_source(tmp_path, isa, cc, flags, needs, qemu):
    x86 = platform.machine() in ("x86_64", "AMD64")
    if qemu and not x86 and not engine.host_is_aarch64():
        pytest.skip("neither x86-64 nor aarch64")
    if not qemu and not x86:
        pytest.skip("an x86-64 path")
    if qemu and engine.host_is_aarch64():
        cc = "gcc"
    missing = [t for t in [cc] + (["qemu-aarch64"] if qemu and x86 else []) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}")
    if not needs <= _cpu_flags():
        pytest.skip(f"this CPU lacks {', '.join(sorted(needs - _cpu_flags()))}")
    exe = tmp_path / f"roofline-{isa}"
    r = subprocess.run([cc, "-O2", *flags, "-pthread", *(["-static"] if qemu else []), str(SOURCE), "-o", str(exe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = (["qemu-aarch64"] if qemu and x86 else []) + [str(exe)]
    r = subprocess.run(cmd + ["-t", "2", "--json", "--quick"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["isa"] == isa
    _check_figures(d, 2)
    bad = subprocess.run(cmd + ["--quick", "--corrupt-dot-data"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3 and f"int8 dot check failed on thread 0 ({isa})" in bad.stderr
