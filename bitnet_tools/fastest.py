"""Which of our ternary types generates fastest on this CPU for a model's shapes: measured.

The probe is a model with the real matrix widths (hidden, FFN, KV heads) and enough layers that
its ternary weights (about 256 MiB, or the whole model if smaller) cannot sit in the CPU's
caches: generation streams the weights from memory, as with the real model, so the type that
reads fewest bytes per useful MAC wins where bandwidth binds and the cheapest kernel where it
does not -- which one that is depends on the CPU and the widths, hence a measurement, not a
rule. One layer's random codes are packed once per type and repeated, so writing the probes
takes about a second; llama-bench (from our build) then times token generation with every
candidate in turn, twice, keeping each type's best run. Where the engine holds TL2 weights as
I2_S (no AVX-512 VBMI), TL2 is not a candidate: it would run I2_S's kernels, after a conversion
at every load, so a measurement could only pick it by noise. The choice is cached per CPU model,
engine build key, widths and thread count in build/fastest-type.json (`bitnet doctor` shows it).
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from gguf.constants import GGMLQuantizationType as T

from . import engine, quants
from .dummy import Shape, layer_matrices, layer_norms, metadata
from .runtime import cpu_model, physical_cores
from .writer import PendingTensor, write_gguf

CACHE = engine.BUILD / "fastest-type.json"
PROBE_BYTES = 256 << 20   # ternary bytes (at 2 bits) the probe streams per token, at most the model's
PROBE_VOCAB = 260         # the output head must not dominate: it is the same for every type
N_GEN, REPS, ROUNDS = 32, 2, 2


@dataclass(frozen=True)
class Choice:
    type: str                     # the fastest type, e.g. "tl2"
    tokens_per_s: dict            # type -> best measured tg t/s of the probe
    threads: int
    probe_layers: int
    key: str                      # cache key: cpu | engine build | widths | threads
    cached: bool = False

    def summary(self) -> str:
        figures = ", ".join(f"{t} {v:.1f}" for t, v in sorted(self.tokens_per_s.items(), key=lambda kv: -kv[1]))
        how = "cached measurement" if self.cached else "measured"
        unmeasured = "; tl2 not measured: this CPU runs it as i2_s, converted at every load" if "tl2" not in self.tokens_per_s else ""
        return (f"fastest type here: {self.type} ({how}: generation t/s on a {self.probe_layers}-layer probe with "
                f"the model's widths, {self.threads} thread{'s' if self.threads > 1 else ''}: {figures}{unmeasured}; "
                f"-q overrides)")


def cache_key(shape: Shape, threads: int) -> str:
    widths = f"{shape.n_embd}x{shape.n_ff} heads {shape.n_head}/{shape.n_head_kv}"
    return f"{cpu_model()} | engine {engine.installed_build()[1]} | {widths} | threads={threads}"


def cached() -> dict:
    """Every cached choice: key -> Choice fields."""
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def _store(choice: Choice) -> None:
    entries = cached()
    from .bench import _atomic_write
    entries[choice.key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(CACHE, json.dumps(entries, indent=1))


def probe_layers(shape: Shape) -> int:
    layer_bytes = sum(rows * cols for _, rows, cols in layer_matrices(shape)) // 4
    return max(1, min(shape.n_layer, math.ceil(PROBE_BYTES / layer_bytes)))


def write_probe(path: Path, shape: Shape, qtype: T, codes: dict) -> Path:
    """A model of `shape`'s widths whose every layer holds the same packed codes (`codes`: matrix
    name -> (rows, cols) trits, made once for all types)."""
    packed = {name: quants.BY_QTYPE[qtype].quant.pack(q, np.float32(0.02)) for name, q in codes.items()}
    e = shape.n_embd
    rng = np.random.default_rng(0)
    embd = (rng.standard_normal((shape.n_vocab, e)) * 0.02).astype(np.float16)
    ts = [PendingTensor("token_embd.weight", (shape.n_vocab, e), T.F16, lambda: embd)]
    ones = {n: np.ones(n, np.float32) for n in (e, shape.n_ff)}
    for i in range(shape.n_layer):
        for name, n in layer_norms(shape):
            ts.append(PendingTensor(f"blk.{i}.{name}.weight", (n,), T.F32, lambda n=n: ones[n]))
        for name, q in codes.items():
            ts.append(PendingTensor(f"blk.{i}.{name}.weight", q.shape, qtype, lambda name=name: packed[name]))
    ts.append(PendingTensor("output_norm.weight", (e,), T.F32, lambda: ones[e]))
    return write_gguf(path, "bitnet-b1.58", metadata(shape, "fastest-type-probe", quants.BY_QTYPE[qtype].file_type), ts)


def measure(shape: Shape, threads: int, candidates: list[str], tools: Path, progress=None) -> dict:
    """Best generation t/s of each candidate type on a probe of `shape`'s widths."""
    from .bench import run_one
    rng = np.random.default_rng(1)
    codes = {name: rng.integers(-1, 2, size=(rows, cols), dtype=np.int8) for name, rows, cols in layer_matrices(shape)}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bitnet-probe-") as tmp:
        files = {}
        for name in candidates:
            if progress:
                progress(f"writing the {name} probe")
            files[name] = write_probe(Path(tmp) / f"probe-{name}.gguf", shape, quants.OURS[name].qtype, codes)
        for _ in range(ROUNDS):  # alternate the types: a busy spell of the machine hits them all
            for name, path in files.items():
                if progress:
                    progress(f"timing {name}")
                r = run_one(tools / "llama-bench", path, name, threads, 0, N_GEN, REPS, watts_per_core=0.0)
                best[name] = max(best.get(name, 0.0), r.tps_mean)
    return best


def candidates(features: dict[str, bool], tl2_as_i2_s: bool) -> list[str]:
    """Our types with a SIMD kernel for the build's widest instruction set (`features` as
    doctor.cpu_features reports them): the others run the scalar reference, orders of magnitude
    slower (TL2 on ARM) and not worth minutes of measuring. Without TL2 where the engine holds it
    as I2_S (`tl2_as_i2_s`): the same kernels as I2_S, plus a conversion at every load."""
    isa = next((k.lower() for k in ("AVX512", "AVX2", "NEON") if features.get(k)), None)
    names = [name for name, t in quants.OURS.items() if isa in t.kernels] or list(quants.OURS)
    return [name for name in names if not (tl2_as_i2_s and name == "tl2")]


def choose(shape: Shape, tools: Path, threads: int | None = None, progress=None, refresh: bool = False) -> Choice:
    """The fastest of our types for `shape` on this CPU (cached unless `refresh`)."""
    from .doctor import cpu_features
    threads = threads or physical_cores()
    key = cache_key(shape, threads)
    names = candidates(cpu_features(), engine.tl2_held_as_i2_s(tools))
    entry = cached().get(key)
    # a cached choice that is no candidate now (TL2, measured before it left them) is measured again
    if entry is not None and entry["type"] in names and not refresh:
        return Choice(**entry, cached=True)
    probe = replace(shape, n_layer=probe_layers(shape), n_vocab=PROBE_VOCAB)
    tps = measure(probe, threads, names, tools, progress)
    choice = Choice(type=max(tps, key=tps.get), tokens_per_s=tps, threads=threads, probe_layers=probe.n_layer,
                    key=key)
    _store(choice)
    return choice
