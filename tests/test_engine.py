"""The engine: pin, patch series, cached build, and that the installed llama_cpp is ours."""
from __future__ import annotations

import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bitnet_tools import dummy, engine
from bitnet_tools.cli import app
from bitnet_tools.doctor import ggml_type_name
from conftest import run


def test_installed_llama_cpp_is_the_patched_build():
    import llama_cpp

    pin = engine.read_pin()
    key = engine.build_key(pin, "native")
    assert engine.installed_version() == engine.wheel_version(pin, key)
    assert llama_cpp.__version__ == engine.wheel_version(pin, key)
    # type 36 is a removed slot upstream (blck_size 0): only our library names it
    assert ggml_type_name(36) == "i2_s"
    assert ggml_type_name(38) is None


def test_doctor_reports_the_build():
    r = CliRunner().invoke(app, ["doctor", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["ternary_types_known"] is True
    assert report["pin"]["llama_cpp_commit"] == engine.read_pin().llama_cpp_commit
    assert report["builds"]["native"]["current"] is True
    assert report["cpu_features"]["AVX2"] is True or report["cpu_features"]["NEON"] is True
    # TL2 as the loaded library holds it, as that library answers (the rule itself: test_tl)
    assert report["tl2_held_as_i2_s"] is engine.tl2_held_as_i2_s(engine.library_dir())
    table = CliRunner().invoke(app, ["doctor"]).output
    assert ("as I2_S" if report["tl2_held_as_i2_s"] else "as stored") in table


def _pristine_copy(dst: Path) -> Path:
    """The upstream files our patches touch, straight from the pinned sdist."""
    pin = engine.read_pin()
    prefix = f"{pin.source_dir.name}/vendor/llama.cpp/"
    wanted = {prefix + f for f in engine.touched_files(engine.series())}
    with tarfile.open(engine.VENDOR / pin.sdist_name) as tar:
        for m in tar.getmembers():
            if m.name in wanted:
                m.name = m.name[len(prefix):]
                tar.extract(m, dst, filter="data")
    assert len(list(dst.rglob("*.*"))) == len(wanted)
    return dst


def test_patch_series_applies_once_and_detects_a_patched_tree(tmp_path):
    tree = _pristine_copy(tmp_path / "llama.cpp")
    done = engine.apply_patches(tree)
    assert done == [f"applied {p.name}" for p in engine.series()]
    # the result is exactly the tree the build uses
    for rel in engine.touched_files(engine.series()):
        assert (tree / rel).read_bytes() == (engine.read_pin().llama_cpp_dir / rel).read_bytes(), rel
    for f in engine.own_files():
        assert (tree / f.relative_to(engine.PATCHES / "files")).read_bytes() == f.read_bytes()

    before = {rel: (tree / rel).read_bytes() for rel in engine.touched_files(engine.series())}
    assert engine.apply_patches(tree) == [f"{p.name} unchanged" for p in engine.series()]
    # patched, but the record is lost: detected by reverse-applying, never applied twice
    shutil.rmtree(tree / ".bitnet-applied")
    assert engine.apply_patches(tree) == [f"{p.name} already applied" for p in engine.series()]
    assert {rel: (tree / rel).read_bytes() for rel in before} == before


def test_build_key_follows_sdist_patches_and_flags(tmp_path, monkeypatch):
    pin = engine.read_pin()
    keys = {f: engine.build_key(pin, f) for f in engine.FLAVORS}
    assert len(set(keys.values())) == len(keys)

    patches = tmp_path / "patches"
    shutil.copytree(engine.PATCHES, patches)
    monkeypatch.setattr(engine, "PATCHES", patches)
    assert engine.build_key(pin, "native") == keys["native"]
    last = patches / engine.series()[-1].name
    last.write_text(last.read_text() + "\n")
    assert engine.build_key(pin, "native") != keys["native"]


def test_a_build_without_its_stamp_is_not_used(tmp_path, monkeypatch):
    """An interrupted build never writes its stamp, so the next setup rebuilds."""
    pin = engine.read_pin()
    key = engine.build_key(pin, "native")
    monkeypatch.setattr(engine, "BUILD", tmp_path)
    bindir = engine.tools_dir("native")
    bindir.mkdir(parents=True)
    for t in engine.TOOLS:
        (bindir / t).write_text("")
    assert not engine.is_current(pin, "native", key, wheel=False)
    engine.stamp_path("native").write_text(json.dumps({"key": key}))
    assert engine.is_current(pin, "native", key, wheel=False)
    (bindir / "llama-bench").unlink()
    assert not engine.is_current(pin, "native", key, wheel=False)


def test_sdist_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    pin = engine.read_pin()
    monkeypatch.setattr(engine, "VENDOR", tmp_path)
    fake = tmp_path / pin.sdist_name
    fake.write_bytes(b"not the sdist")
    with pytest.raises(engine.EngineError, match="refusing to build"):
        engine.fetch_sdist(pin, log=open(tmp_path / "log", "w"))
    assert not fake.exists()


def test_missing_compiler_names_the_debian_package(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(engine.shutil, "which", lambda t: None if t == "cmake" else real(t))
    with pytest.raises(engine.EngineError, match="apt-get install cmake"):
        engine.check_toolchain()


def test_setup_with_nothing_changed_is_a_no_op():
    r = CliRunner().invoke(app, ["setup", "--engine-only"])
    assert r.exit_code == 0, r.output
    assert "up to date" in r.output


@pytest.mark.slow
def test_llama_cpp_test_quantize_fns(tools):
    from conftest import run
    r = run([tools / "test-quantize-fns", "-v"])
    assert r.returncode == 0, r.stdout[-3000:]
    # our type is among those tested, and passes
    for check in ("absolute quantization error", "reference implementation error", "dot product error"):
        assert re.search(rf"^\s*i2_s {check}:\s+ok \(", r.stdout, re.M), check


# in a child process, so that the count is the model's alone: the KiB of anonymous huge pages
# after loading with the given arguments
_HUGE_AFTER_LOAD = """
import json, re, sys
from pathlib import Path
from bitnet_tools import load
llm = load(sys.argv[1], n_ctx=64, **json.loads(sys.argv[2]))
print(re.search(r"AnonHugePages:\\s+(\\d+) kB", Path("/proc/self/smaps_rollup").read_text()).group(1))
"""


def test_models_are_read_into_huge_pages(tmp_path, tools):
    """By default a model is read into buffers in 2 MiB pages (patches/0014): from Python, and in
    the tools' default load mode; mapped on request."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("this kernel has transparent huge pages switched off: models are mapped")
    model = dummy.write(tmp_path / "m.gguf", "125m", "i2_s", n_layer=2, note=lambda _: None)
    size_kib = model.stat().st_size // 1024

    def huge_kib(kwargs: str) -> int:
        out = run([sys.executable, "-c", _HUGE_AFTER_LOAD, model, kwargs], timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    read, mapped = huge_kib("{}"), huge_kib('{"use_mmap": true}')
    assert read >= size_kib // 2, (read, size_kib)   # the weights (the Q6_K embedding is 5/6 of them)
    assert mapped < read - size_kib // 2, (mapped, read)
    # a tool left at its default load mode reads too, and says so
    out = run([tools / "llama-completion", "-m", model, "-p", "a", "-n", "1", "-no-cnv", "-t", "1", "-v"], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(load_mode = none)" in out.stderr + out.stdout


def test_load_reads_where_the_engine_would_and_maps_a_model_near_the_size_of_memory(tmp_path, monkeypatch):
    """bitnet_tools.load chooses as the engine's default load mode does (patches/0014), by asking
    the engine: read while huge pages are on and the file is under half of MemAvailable, else map
    (a model too large to read in would otherwise fail to fit)."""
    from bitnet_tools import runtime
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    on = thp.exists() and "[never]" not in thp.read_text()
    available = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    assert runtime.reads_into_memory(1_000_000) is on
    assert runtime.reads_into_memory(available // 4) is on                # well under half
    assert runtime.reads_into_memory(available) is False                  # over half: mapped
    # and load() passes the engine's answer on: read (load mode NONE) or map (MMAP)
    import llama_cpp
    model = dummy.write(tmp_path / "m.gguf", "tiny", "i2_s", note=lambda _: None)
    for answer, mode in ((True, llama_cpp.LLAMA_LOAD_MODE_NONE), (False, llama_cpp.LLAMA_LOAD_MODE_MMAP)):
        monkeypatch.setattr(runtime, "reads_into_memory", lambda n, a=answer: a)
        assert runtime.load(model, n_ctx=32).model_params.load_mode == mode
