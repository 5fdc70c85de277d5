"""The GGUF fuzzer (tests/gguf_fuzz.py): its parser and mutator, its fork-per-file runner on
fake targets, and a bounded slice of mutated files through the real loader, which must neither
crash nor hang on any of them."""
from __future__ import annotations

import ctypes
import os
import time
from collections import defaultdict
from pathlib import Path
from random import Random

import gguf
import numpy as np
import pytest

import gguf_fuzz as fz
from bitnet_tools import quants

SLICE_FILES = 800  # two children at once: about 35 s on an idle 2-core machine, 60 s on a busy one


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-seeds")


@pytest.fixture(scope="module")
def seeds(seed_dir) -> dict[str, bytes]:
    return fz.make_seeds(seed_dir)


# --- parser and mutator ------------------------------------------------------------------------

@pytest.mark.parametrize("name", fz.SEED_TYPES)
def test_parser_round_trips_the_seed_and_agrees_with_gguf_py(seeds, seed_dir, name):
    data = seeds[name]
    layout = fz.parse(data)
    assert fz.serialize(layout, data) == data
    reader = gguf.GGUFReader(seed_dir / f"seed-{name}.gguf")
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}  # gguf-py's header pseudo-fields
    assert [kv.key.text.decode() for kv in layout.kvs] == list(fields)
    assert [kv.key.off for kv in layout.kvs] == [f.offset for f in fields.values()]
    assert [t.name.text.decode() for t in layout.tensors] == [t.name for t in reader.tensors]
    assert [layout.data_start + t.offset for t in layout.tensors] == [int(t.data_offset) for t in reader.tensors]
    assert [t.nbytes() for t in layout.tensors] == [int(t.n_bytes) for t in reader.tensors]
    assert layout.kv("general.architecture").value == b"bitnet-b1.58"


@pytest.mark.parametrize("name", fz.SEED_TYPES)
def test_mutator_is_deterministic(seeds, name):
    for k in range(30):
        a = fz.mutate(seeds[name], Random(k))
        assert a == fz.mutate(seeds[name], Random(k))
    assert fz.case(seeds, 7, 123) == fz.case(seeds, 7, 123)


@pytest.mark.parametrize("name", fz.SEED_TYPES)
@pytest.mark.parametrize("cls", fz.CLASSES)
def test_every_class_changes_the_file(seeds, name, cls):
    for k in range(15):
        data, desc = fz.mutate(seeds[name], Random(k), cls)
        assert data != seeds[name], desc
        assert fz.mutation_class(desc) == cls and "\n" not in desc


def test_classes_are_picked_uniformly(seeds):
    counts = defaultdict(int)
    for i in range(600):
        counts[fz.case(seeds, 0, i).cls] += 1
    assert set(counts) == set(fz.CLASSES)
    assert min(counts.values()) > 600 / len(fz.CLASSES) / 2, counts


def test_scale_mutation_writes_the_tail_scale(seeds):
    """On an I2_S seed the scale class changes only the float after a tensor's codes."""
    layout = fz.parse(seeds["i2_s"])
    for k in range(10):
        data, desc = fz.mutate(seeds["i2_s"], Random(k), "scale")
        changed = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(seeds["i2_s"], np.uint8))
        t = next(t for t in layout.tensors if t.name.text.decode() == desc.split()[1])
        start = layout.data_start + t.offset
        shape = tuple(reversed(t.dims))
        assert changed.min() >= start + t.nbytes() - 32 and changed.max() < start + t.nbytes() - 28, desc
        old = quants.I2_S.unpack(np.frombuffer(seeds["i2_s"], np.uint8)[start:start + t.nbytes()], shape)[1]
        new = quants.I2_S.unpack(np.frombuffer(data, np.uint8)[start:start + t.nbytes()], shape)[1]
        assert old.tobytes() != new.tobytes(), desc


# --- runner on fake targets --------------------------------------------------------------------

def _ok(path):
    pass


def _raise(path):
    raise ValueError(f"refused {path}")


def _raise_unexpected(path):
    raise TypeError("a traceback the user would see")


_raise_unexpected.refusals = (KeyError,)


def _wrong(path):
    fz._check_logits(np.array([0.0, np.nan], dtype=np.float32), 0)


def _abort(path):
    os.abort()


def _segfault(path):
    ctypes.string_at(0)


def _exit_outside_protocol(path):
    os._exit(3)


def _sleep_with_grandchild(path):
    """Hangs, with a grandchild in its process group that must die with it."""
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    Path(path).write_text(str(pid))
    time.sleep(60)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_runner_classifies_fake_targets(tmp_path):
    targets = {"ok": _ok, "error": _raise, "uncaught": _raise_unexpected, "wrong": _wrong, "crash-abort": _abort,
               "crash-segv": _segfault,
               "crash-exit": _exit_outside_protocol, "hang": _sleep_with_grandchild}
    results = {}
    start = time.monotonic()
    for name, target in targets.items():
        # one target per run_many call: the target is the runner's, the same for all its files
        for key, res in fz.run_many([(name, str(tmp_path / name))], target, jobs=1, timeout=1.5):
            results[key] = res
    assert time.monotonic() - start < 15
    assert results["ok"].outcome == "ok"
    assert results["error"].outcome == "error"
    assert results["error"].message.startswith("ValueError: refused FILE")  # the scratch path is masked
    assert results["uncaught"].outcome == "crash" and results["uncaught"].message.startswith("uncaught TypeError")
    assert results["wrong"].outcome == "wrong" and "NaN" in results["wrong"].message
    assert results["crash-abort"].outcome == "crash" and results["crash-abort"].message == "SIGABRT"
    assert results["crash-segv"].outcome == "crash" and results["crash-segv"].message == "SIGSEGV"
    assert results["crash-exit"].outcome == "crash" and results["crash-exit"].message == "exit code 3"
    assert results["hang"].outcome == "hang" and 1.5 <= results["hang"].seconds < 5
    assert results["hang"].detail.startswith("in test_fuzz.py:_sleep_with_grandchild"), results["hang"].detail
    grandchild = int((tmp_path / "hang").read_text())
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.02)
    assert not _alive(grandchild), "the hung child's process group was not killed"


def test_runner_runs_jobs_at_once(tmp_path):
    def nap(path):
        time.sleep(0.5)

    start = time.monotonic()
    results = list(fz.run_many([(i, str(tmp_path / str(i))) for i in range(6)], nap, jobs=3, timeout=10))
    assert sorted(k for k, _ in results) == list(range(6))
    assert all(r.outcome == "ok" for _, r in results)
    assert time.monotonic() - start < 2.5  # two rounds of three, not six naps in a row


def test_crash_signature_from_stderr():
    text = ("llama_model_loader: loaded meta data\n"
            "/work/vendor/llama.cpp/src/llama-model.cpp:1330: GGML_ASSERT(hparams.n_layer_all > 0) failed\n")
    assert fz.stderr_signature(text, True) == "llama-model.cpp:1330: GGML_ASSERT(hparams.n_layer_all > 0) failed"
    text = "terminate called after throwing an instance of 'std::out_of_range'\n  what():  unordered_map::at\n"
    assert fz.stderr_signature(text, True) == ("terminate called after throwing an instance of 'std::out_of_range' "
                                               "what():  unordered_map::at")


# --- the real loader ---------------------------------------------------------------------------

def test_loader_neither_crashes_nor_hangs(seeds):
    """SLICE_FILES mutants (run seed 0, the four seed types in turn) through runtime.load and two
    generated tokens. Any crash or hang fails, listed by signature with the mutations behind it
    (rebuild one with: python tests/gguf_fuzz.py --seed 0 --first INDEX --files 1 --keep DIR)."""
    records = fz.fuzz(seeds, SLICE_FILES, run_seed=0, jobs=2, timeout=10.0)  # a good file takes 50 ms
    assert len(records) == SLICE_FILES
    assert {r.seed_type for r in records} == set(fz.SEED_TYPES)
    bad = [r for r in records if r.outcome in ("crash", "hang")]
    groups = defaultdict(list)
    for r in bad:
        groups[fz.signature(r)].append(r)
    report = "\n".join(f"{len(rs):4d}  {sig}\n" + "".join(f"        #{r.index} {r.seed_type}: {r.description}\n"
                                                           for r in rs[:5])
                       for sig, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])))
    if bad:
        pytest.fail(f"{len(bad)} of {SLICE_FILES} mutated files crashed or hung the loader:\n{report}", pytrace=False)
