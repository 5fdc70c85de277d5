"""bitnet bench: RAPL reading, energy labelling, and a tiny end-to-end run."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitnet_tools import bench


def _fake_powercap(root, packages):
    """A powercap tree like Linux's: intel-rapl:N package zones with sub-zones inside."""
    for i, (energy, max_range) in enumerate(packages):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True)
        (d / "name").write_text(f"package-{i}\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
        sub = root / f"intel-rapl:{i}:0"
        sub.mkdir()
        (sub / "name").write_text("core\n")
        (sub / "energy_uj").write_text("5\n")
    return root


def test_rapl_reads_package_zones_and_handles_wraparound(tmp_path):
    root = _fake_powercap(tmp_path / "powercap", [(4_000_000_000, 4_294_967_295), (10, 262_143_328_850)])
    domains = bench.rapl_domains(root)
    assert [d.name for d in domains] == ["intel-rapl:0", "intel-rapl:1"]
    before = bench.rapl_read(domains)
    (domains[0] / "energy_uj").write_text("1000000\n")      # wrapped past the range
    (domains[1] / "energy_uj").write_text("3000010\n")      # +3 J
    after = bench.rapl_read(domains)
    expect = ((1_000_000 - 4_000_000_000 + 4_294_967_295) + 3_000_000) / 1e6
    assert bench.rapl_joules(domains, before, after) == pytest.approx(expect)


def test_unreadable_or_missing_rapl_means_no_domains(tmp_path):
    assert bench.rapl_domains(tmp_path / "absent") == []
    root = tmp_path / "powercap"
    (root / "intel-rapl:0").mkdir(parents=True)  # no energy_uj: not readable
    assert bench.rapl_domains(root) == []


def test_energy_is_labelled_measured_or_estimated():
    m = bench.energy_per_token(tps=20.0, wall=10.0, cpu_seconds=20.0, joules=300.0, watts_per_core=7.0)
    assert m.measured and m.source.startswith("measured")
    assert m.watts == pytest.approx(30.0) and m.joules_per_token == pytest.approx(1.5)
    e = bench.energy_per_token(tps=20.0, wall=10.0, cpu_seconds=20.0, joules=None, watts_per_core=7.0)
    assert not e.measured and e.source.startswith("estimated")
    assert e.watts == pytest.approx(14.0) and e.joules_per_token == pytest.approx(0.7)


def test_parse_threads():
    assert bench.parse_threads("2") == [2]
    assert bench.parse_threads("1,2") == [1, 2]
    assert bench.parse_threads("1-3,2") == [1, 2, 3]
    with pytest.raises(bench.BenchError):
        bench.parse_threads("0")


@pytest.mark.slow
def test_tiny_bench_end_to_end(tmp_path, tools):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "bench", "-t", "1,2", "--shape", "tiny",
                        "--types", "i2_s,tq2_0,q4_0", "-p", "32", "-n", "8", "-r", "2",
                        "--outdir", str(out), "--models-dir", str(tmp_path / "models")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "bench-tiny.json").read_text())
    assert doc["schema"] == bench.SCHEMA_VERSION and doc["command"].startswith("bitnet bench")
    results = doc["results"]
    assert {(x["type"], x["threads"], x["test"]) for x in results} == {
        (t, th, test) for t in ("i2_s", "tq2_0", "q4_0") for th in (1, 2) for test in ("pp32", "tg8")}
    for x in results:
        for k in ("tps_mean", "size_bytes", "n_params", "bpw", "peak_rss_mib", "energy_j_per_token", "power_w"):
            assert x[k] > 0, (k, x)
        assert x["tps_sd"] >= 0 and len(x["samples"]) == 2
        measured = bool(bench.rapl_domains())
        assert x["energy_source"].startswith("measured" if measured else "estimated")
    # the roofline: this machine's ceilings per thread count, each row's ceiling and share of it
    from bitnet_tools import dummy
    assert [x["threads"] for x in doc["roofline"]] == [1, 2]
    assert all(x["read_gb_s"] > 0 and x["int8_gmac_s"] > 0 for x in doc["roofline"])
    s = dummy.SHAPES["tiny"]
    norms = s.n_layer * (3 * s.n_embd + s.n_ff) + s.n_embd
    for x in results:
        tg = x["test"].startswith("tg")
        # tied dummies: a token reads the whole file's tensors (llama.cpp's own model size) and
        # multiplies every weight but the norms (llama.cpp's parameter count)
        assert x["bytes_per_token"] == x["size_bytes"] and x["macs_per_token"] == x["n_params"] - norms, x
        # a prompt asks for its last token's logits only: the head (the tied embedding) once per prompt
        head = s.n_vocab * s.n_embd
        peak, work = ((x["read_gb_s"], x["bytes_per_token"]) if tg else
                      (x["int8_gmac_s"], x["macs_per_token"] - head + head / x["n_tokens"]))
        assert x["ceiling_tps"] == pytest.approx(peak * 1e9 / work)
        assert x["ceiling_share"] == pytest.approx(x["tps_mean"] / x["ceiling_tps"]) and x["ceiling_share"] > 0
        assert x["ceiling_bound"] == ("read bandwidth" if tg else "int8 peak")
    # our type against each stock type, per threads and test
    assert len(doc["speedups"]) == 2 * 2 * 2
    assert all(s["speedup"] > 0 for s in doc["speedups"])
    csv_lines = (out / "bench-tiny.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(results)
    header = csv_lines[0].split(",")
    assert {"ceiling_tps", "ceiling_share", "ceiling_bound", "read_gb_s", "int8_gmac_s", "bytes_per_token",
            "macs_per_token"} <= set(header)
    assert all(float(row.split(",")[header.index("ceiling_share")]) > 0 for row in csv_lines[1:])
    assert "ceilings (bitnet-roofline" in r.stdout and "GMAC/s" in r.stdout   # the table is squeezed at 80 columns
    png = (out / "bench-tiny.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    with Image.open(out / "bench-tiny.png") as im:
        im.verify()
    if not bench.rapl_domains():
        assert "ESTIMATED" in r.stdout


@pytest.mark.slow
def test_baseline_build_runs_the_stock_types_too(tmp_path, tools):
    """--baseline points at another llama-bench (a stock build); here our own binary stands in.
    Stock types then appear twice (our build and the baseline), ours once."""
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "bench", "-t", "1", "--shape", "tiny",
                        "--types", "i2_s,tq2_0", "-p", "16", "-n", "4", "-r", "1", "--baseline",
                        str(tools / "llama-bench"), "--outdir", str(out), "--models-dir", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "bench-tiny.json").read_text())
    engines = sorted((x["type"], x["engine"]) for x in doc["results"] if x["test"] == "tg4")
    assert engines == [("i2_s", "bitnet-tools"), ("tq2_0", "bitnet-tools"), ("tq2_0", "stock")]
    assert {s["stock_engine"] for s in doc["speedups"]} == {"bitnet-tools", "stock"}


@pytest.mark.slow
def test_another_engines_own_files_run_side_by_side(tmp_path, tools):
    """--baseline-model: files in the other engine's own types (ik_llama.cpp's IQ2_BN, bitnet.cpp's
    I2_S) run only through --baseline, named --baseline-name, and are compared with ours in the
    same run. Our own llama-bench stands in for the other engine here (as the issue allows: a
    second build of our tree); its "I2_S" file must count as theirs, not ours."""
    from bitnet_tools import dummy
    theirs = [dummy.write(tmp_path / f"other-{t}.gguf", "tiny", t) for t in ("tq2_0", "i2_s")]
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bitnet_tools.cli", "bench", "-t", "1", "--shape", "tiny", "--types", "i2_s",
            "-p", "16", "-n", "4", "-r", "1", "--baseline", str(tools / "llama-bench"), "--baseline-name", "other",
            "--outdir", str(out), "--models-dir", str(tmp_path / "m")]
    r = subprocess.run(args + [x for f in theirs for x in ("--baseline-model", str(f))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "bench-tiny.json").read_text())
    rows = sorted((x["type"], x["engine"], x["ours"], x["model"]) for x in doc["results"] if x["test"] == "tg4")
    assert rows == [("i2_s", "bitnet-tools", True, "tiny-i2_s.gguf"), ("i2_s", "other", False, "other-i2_s.gguf"),
                    ("tq2_0", "other", False, "other-tq2_0.gguf")]
    pairs = sorted((x["ours"], x["stock"], x["stock_engine"]) for x in doc["speedups"] if x["test"] == "pp16")
    assert pairs == [("i2_s", "i2_s", "other"), ("i2_s", "tq2_0", "other")]
    # the other engine's rows get this machine's ceilings too where gguf-py can size the file
    assert all(x["ceiling_tps"] > 0 for x in doc["results"])
    assert "i2_s (other)" in r.stdout

    # an engine that fails on a type (ik_llama.cpp has no TQ2_0) loses that row, not the run
    failing = tmp_path / "llama-bench-that-fails"
    failing.write_text("#!/bin/sh\necho 'Floating point exception' >&2\nexit 136\n")
    failing.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "bench", "-t", "1", "--shape", "tiny",
                        "--types", "i2_s,tq2_0", "-p", "16", "-n", "4", "-r", "1", "--baseline", str(failing),
                        "--baseline-name", "other", "--outdir", str(tmp_path / "o1"), "--models-dir", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "other skipped" in r.stdout + r.stderr and "Floating point exception" in r.stdout + r.stderr
    doc = json.loads((tmp_path / "o1" / "bench-tiny.json").read_text())
    assert sorted((x["type"], x["engine"]) for x in doc["results"] if x["test"] == "tg4") == [
        ("i2_s", "bitnet-tools"), ("tq2_0", "bitnet-tools")]

    for extra, words in ((["--baseline-model", str(theirs[0])], "--baseline-model needs --baseline"),
                         (["--baseline", str(tools / "llama-bench"), "--baseline-model", str(tmp_path / "no.gguf")],
                          "does not exist"),
                         (["--baseline", str(tools / "llama-bench"), "--baseline-model", str(out / "bench-tiny.csv")],
                          "is not a GGUF file")):
        r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "bench", "-t", "1", "--shape", "tiny",
                            "--types", "i2_s", "--outdir", str(tmp_path / "o2"), *extra],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, (extra, r.stderr)


@pytest.mark.slow
def test_stock_tq2_0_that_cannot_hold_the_rows_is_llama_quantizes_file_not_ours(tmp_path, tools, monkeypatch):
    """At widths TQ2_0's 256-blocks cannot hold (3B's 3200/8640; here 384), `bitnet dummy` writes
    I2_S; the bench's stock TQ2_0 must instead be what llama.cpp makes of it, or the speedup
    table compares I2_S with itself."""
    import gguf

    from bitnet_tools import dummy
    from bitnet_tools.quants import BY_QTYPE
    monkeypatch.setitem(dummy.SHAPES, "odd", dummy.Shape(384, 1, 768, 4, 2, 512))
    notes = []
    path = bench.bench_model("odd", "tq2_0", tmp_path, tools, note=notes.append)
    assert notes and "tq2_0 cannot hold rows of 384 values" in notes[0]
    by_width = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            by_width.setdefault(int(t.shape[0]), set()).add(t.tensor_type)   # shape[0]: row width
    assert set(by_width) == {384, 768}
    assert not (by_width[384] | by_width[768]) & set(BY_QTYPE), by_width     # none of ours
    assert gguf.GGMLQuantizationType.TQ2_0 not in by_width[384]              # llama.cpp's fallback
    assert by_width[768] == {gguf.GGMLQuantizationType.TQ2_0}                # ffn_down's rows fit
    # where the rows fit, the stock type is written directly
    assert bench.bench_model("tiny", "tq2_0", tmp_path, tools, note=notes.append).exists() and len(notes) == 1
