"""`bitnet setup` with the GGUF files users already have: a repo like Microsoft's GGUF repo served
by a loopback hub (tests/local_hub.py) and then used offline from the cache huggingface_hub
filled, local folders with a GGUF (and a checkpoint), transcoding on the way, and the type
measured fastest when none is asked for."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from typer.testing import CliRunner

import tiny_checkpoints
from bitnet_tools import dummy, fastest
from bitnet_tools.cli import app
from bitnet_tools.transcode import ternary, transcode
from local_hub import LocalHub

REPO = "microsoft/bitnet-b1.58-2B-4T-gguf"
runner = CliRunner()


@pytest.fixture(scope="module")
def gguf_repo(tmp_path_factory) -> Path:
    """What such a repo carries: the I2_S GGUF, a model card, .gitattributes -- and here a second
    GGUF (TQ2_0) that setup must not download when it needs the I2_S one."""
    repo = tmp_path_factory.mktemp("hub") / "bitnet-b1.58-2B-4T-gguf"
    repo.mkdir()
    dummy.write(repo / "ggml-model-i2_s.gguf", "tiny", "i2_s", seed=3)
    transcode(repo / "ggml-model-i2_s.gguf", repo / "ggml-model-tq2_0.gguf", "tq2_0")
    (repo / "README.md").write_text("---\nlicense: mit\n---\n# BitNet b1.58 2B4T gguf\n")
    (repo / ".gitattributes").write_text("*.gguf filter=lfs diff=lfs merge=lfs -text\n")
    return repo


def _setup(args: list[str], hf_home: Path, out: Path, endpoint: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(hf_home))
    env.pop("HF_HUB_CACHE", None)
    env.update({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"} if endpoint else {"HF_HUB_OFFLINE": "1"})
    return subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "setup", *args, "--outdir", str(out), "-t", "1"],
                          capture_output=True, text=True, env=env, timeout=600)


def _held(path: Path) -> set:
    return {gguf.GGMLQuantizationType(int(t.tensor_type)).name for t in gguf.GGUFReader(path).tensors
            if t.name.startswith("blk.") and len(t.shape) == 2}


def _same_codes(a: Path, b: Path) -> bool:
    ta = {t.name: t for t in gguf.GGUFReader(a).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    tb = {t.name: t for t in gguf.GGUFReader(b).tensors if t.name.startswith("blk.") and len(t.shape) == 2}
    return ta.keys() == tb.keys() and all(
        np.array_equal(ternary(ta[n])[0], ternary(tb[n])[0]) and ternary(ta[n])[1] == ternary(tb[n])[1] for n in ta)


def test_microsofts_gguf_repo_online_then_offline_and_transcoded(gguf_repo, tmp_path):
    hf_home, out = tmp_path / "hf", tmp_path / "models"
    with LocalHub({REPO: gguf_repo}) as hub:
        r = _setup(["--hf-repo", REPO, "-q", "i2_s"], hf_home, out, hub.url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hub.downloads == [(REPO, "ggml-model-i2_s.gguf")]  # the one file it needs, nothing else
    assert "not a repo we know" not in r.stderr and "as it is" in r.stdout and "verification" in r.stdout
    assert not out.exists() or not list(out.rglob("*.gguf"))   # used from the hub cache, not copied

    r = _setup(["--hf-repo", REPO, "-q", "tl2"], hf_home, out)   # offline: the cache only
    assert r.returncode == 0, r.stdout + r.stderr
    tl2 = out / "bitnet-b1.58-2B-4T-gguf" / "ggml-model-tl2.gguf"
    assert "transcoding ggml-model-i2_s.gguf (i2_s) to tl2" in r.stdout and "verification" in r.stdout
    assert _held(tl2) == {"TL2"} and _same_codes(tl2, gguf_repo / "ggml-model-i2_s.gguf")

    r = _setup(["--hf-repo", REPO, "-q", "tq2_0"], hf_home, out)  # offline, and its GGUF was never downloaded
    assert r.returncode == 0, r.stdout + r.stderr
    assert _held(out / "bitnet-b1.58-2B-4T-gguf" / "ggml-model-tq2_0.gguf") == {"TQ2_0"}

    r = _setup(["--hf-repo", "someone/absent-gguf", "-q", "i2_s"], hf_home, out)
    assert r.returncode != 0 and "not in the local hub cache" in r.stderr and "Traceback" not in r.stderr


def test_a_local_folder_with_a_gguf_is_used_or_transcoded(gguf_repo, tmp_path):
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "ggml-model-i2_s.gguf").write_bytes((gguf_repo / "ggml-model-i2_s.gguf").read_bytes())
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-q", "i2_s", "-o", str(tmp_path / "m"), "-t", "1"])
    assert r.exit_code == 0, r.output
    assert "as it is" in r.output and "verification" in r.output
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-q", "tl1", "-o", str(tmp_path / "m"), "-t", "1"])
    assert r.exit_code == 0, r.output
    assert _held(tmp_path / "m" / "dl" / "ggml-model-tl1.gguf") == {"TL1"}


def test_a_folder_with_both_prefers_the_gguf_of_the_asked_type_else_converts(tmp_path):
    folder = tiny_checkpoints.build("2b4t", tmp_path / "both")
    src = tmp_path / "from-ckpt-i2_s.gguf"
    r = runner.invoke(app, ["convert", str(folder), "-o", str(src), "--outtype", "i2_s"])
    assert r.exit_code == 0, r.output
    (folder / "ggml-model-i2_s.gguf").write_bytes(src.read_bytes())
    out = tmp_path / "m"
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-q", "i2_s", "-o", str(out), "-t", "1"])
    assert r.exit_code == 0 and "as it is" in r.output, r.output
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-q", "tl2", "-o", str(out), "-t", "1"])
    assert r.exit_code == 0 and "converted:" in r.output and "transcod" not in r.output, r.output
    assert _held(out / "both" / "ggml-model-tl2.gguf") == {"TL2"}


@pytest.mark.parametrize("damage, message", [
    ("arch", "is a qwen3 model, not a BitNet b1.58 architecture"),
    ("truncated", "is truncated or damaged"),
    ("empty", "holds neither a ternary GGUF"),
])
def test_bad_gguf_folders_are_one_line_errors(gguf_repo, tmp_path, damage, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    data = (gguf_repo / "ggml-model-i2_s.gguf").read_bytes()
    if damage == "arch":  # a whole, valid GGUF of another architecture
        dummy.write(tmp_path / "qwen3.gguf", "tiny", "i2_s", arch="qwen3")
        data = (tmp_path / "qwen3.gguf").read_bytes()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    if damage != "empty":
        (folder / "ggml-model-i2_s.gguf").write_bytes(data)
    else:
        (folder / "README.md").write_text("no model here\n")
    r = subprocess.run([sys.executable, "-m", "bitnet_tools.cli", "setup", "--model-dir", str(folder), "-q", "tl2",
                        "-o", str(tmp_path / "m")], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").rglob("*.gguf"))


# ---------------------------------------------------------------- the fastest type, measured

def test_only_types_with_a_simd_kernel_for_the_build_are_candidates():
    assert fastest.candidates({"AVX2": True, "AVX512": True}, False) == ["i2_s", "tl1", "tl2"]
    assert fastest.candidates({"AVX2": True}, False) == ["i2_s", "tl1", "tl2"]
    assert fastest.candidates({"NEON": True}, False) == ["i2_s", "tl1"]   # TL2 has no NEON kernel
    assert fastest.candidates({}, False) == ["i2_s", "tl1", "tl2"]        # no SIMD: measure them all
    # TL2 held as I2_S: I2_S's kernels after a conversion at every load, never faster
    assert fastest.candidates({"AVX2": True}, True) == ["i2_s", "tl1"]


def test_tl2_held_as_i2_s_is_not_measured_and_a_cached_tl2_choice_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setattr(fastest, "CACHE", tmp_path / "fastest-type.json")
    measured = []

    def fake_measure(shape, threads, candidates, tools, progress=None):
        measured.append(list(candidates))
        return {name: {"i2_s": 50.0, "tl1": 40.0, "tl2": 60.0}[name] for name in candidates}

    from bitnet_tools import doctor, engine
    monkeypatch.setattr(doctor, "cpu_features", lambda: {"AVX2": True})
    monkeypatch.setattr(fastest, "measure", fake_measure)
    monkeypatch.setattr(engine, "tl2_held_as_i2_s", lambda libdir: False)
    shape = dummy.SHAPES["2b4t"]
    assert fastest.choose(shape, tmp_path, threads=2).type == "tl2"   # TL2's own kernel here
    monkeypatch.setattr(engine, "tl2_held_as_i2_s", lambda libdir: True)
    c = fastest.choose(shape, tmp_path, threads=2)  # the cached tl2 is no candidate now
    assert c.type == "i2_s" and not c.cached and measured == [["i2_s", "tl1", "tl2"], ["i2_s", "tl1"]]
    assert "tl2 not measured: this CPU runs it as i2_s" in c.summary()
    assert fastest.choose(shape, tmp_path, threads=2).cached and len(measured) == 2


def test_choose_is_the_best_measured_type_and_is_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(fastest, "CACHE", tmp_path / "fastest-type.json")
    calls = []

    def fake_measure(shape, threads, candidates, tools, progress=None):
        calls.append((shape, threads))
        return {"i2_s": 50.0, "tl2": 61.0, "tl1": 40.0} if len(calls) == 1 else {"i2_s": 70.0, "tl2": 61.0, "tl1": 40.0}

    monkeypatch.setattr(fastest, "measure", fake_measure)
    shape = dummy.SHAPES["2b4t"]
    c = fastest.choose(shape, tmp_path, threads=2)
    assert c.type == "tl2" and not c.cached and "tl2 61.0" in c.summary()
    assert calls[0][0].n_embd == 2560 and calls[0][0].n_ff == 6912 and calls[0][0].n_layer < shape.n_layer
    again = fastest.choose(shape, tmp_path, threads=2)
    assert again.type == "tl2" and again.cached and len(calls) == 1 and "cached" in again.summary()
    assert fastest.choose(shape, tmp_path, threads=2, refresh=True).type == "i2_s" and len(calls) == 2
    fastest.choose(shape, tmp_path, threads=1)  # another thread count is another measurement
    assert len(calls) == 3 and len(json.loads(fastest.CACHE.read_text())) == 2


def test_setup_without_a_type_measures_and_uses_the_fastest(gguf_repo, monkeypatch, tmp_path):
    """The real measurement (llama-bench on probes of the tiny model's widths): the choice is the
    best of the figures it reports, the model ends up in that type, a second setup reuses the
    measurement, and doctor shows it."""
    monkeypatch.setattr(fastest, "CACHE", tmp_path / "fastest-type.json")
    folder = tmp_path / "dl"
    folder.mkdir()
    (folder / "ggml-model-i2_s.gguf").write_bytes((gguf_repo / "ggml-model-i2_s.gguf").read_bytes())
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-o", str(tmp_path / "m"), "-t", "1"])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(fastest.CACHE.read_text()).values()
    figures = entry["tokens_per_s"]
    from bitnet_tools import engine
    from bitnet_tools.doctor import cpu_features
    held = engine.tl2_held_as_i2_s(engine.tools_dir(engine.installed_build()[0]))
    assert set(figures) == set(fastest.candidates(cpu_features(), held)) and all(v > 0 for v in figures.values())
    assert entry["type"] == max(figures, key=figures.get)
    assert f"fastest type here: {entry['type']} (measured" in " ".join(r.output.split())
    model = folder / "ggml-model-i2_s.gguf" if entry["type"] == "i2_s" else tmp_path / "m" / "dl" / f"ggml-model-{entry['type']}.gguf"
    assert _held(model) == {entry["type"].upper()} and "verification" in r.output
    r = runner.invoke(app, ["setup", "--model-dir", str(folder), "-o", str(tmp_path / "m"), "-t", "1"])
    assert r.exit_code == 0 and "cached measurement" in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["doctor", "--json"])
    assert entry["type"] in json.loads(r.output)["fastest_types"][entry["key"]]["type"]
