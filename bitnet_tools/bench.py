"""`bitnet bench`: throughput, memory and energy per token of our types against stock llama.cpp
types, all measured in one run with llama.cpp's own llama-bench from our build.

Each (model, threads, test) is one llama-bench process, so that its peak RSS, CPU time and
energy belong to it alone. Prompt processing runs whole batches (llama-bench's pp test:
n_batch 2048, n_ubatch 512), not one token at a time. llama-bench's warm-up run is excluded
from its figures; repetitions give mean ± sd.

Roofline: before and after the runs, bitnet-roofline (our probe, built with the engine's tools)
measures this machine's streaming read bandwidth and int8 dot-product peak at each thread count
(the better of the two counts). Every tg row gets the t/s the bandwidth allows for the bytes a
generated token reads, every pp row the t/s the int8 peak allows for the multiply-accumulates a
prompt token needs (an embd row: without the output head), and the measured figure's share of
that ceiling (see model_cost and ceiling). Not measured over --rpc (the work is elsewhere).

Energy: package energy from RAPL counters (Linux powercap) when readable, as
average package power over the process × seconds per token; otherwise an estimate from the
process's CPU time and a per-core power figure. The source is stored with every figure and
an estimate is never labelled as a measurement.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import engine
from .quants import OURS

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
SCHEMA_VERSION = 2   # 2: roofline fields per result and the "roofline" figures per thread count


class BenchError(RuntimeError):
    """A bench run that cannot go on; the message names the cause and the fix."""


# ---------------------------------------------------------------- energy

def rapl_domains(root: Path = POWERCAP) -> list[Path]:
    """Readable package-level RAPL domains (intel-rapl:N, not their sub-zones)."""
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:
            continue  # sub-zone (core, uncore, dram) of a package
        try:
            int((d / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        out.append(d)
    return out


def rapl_read(domains: list[Path]) -> list[int]:
    return [int((d / "energy_uj").read_text()) for d in domains]


def rapl_joules(domains: list[Path], before: list[int], after: list[int]) -> float:
    total = 0
    for d, a, b in zip(domains, before, after):
        delta = b - a
        if delta < 0:  # the counter wrapped
            delta += int((d / "max_energy_range_uj").read_text())
        total += delta
    return total / 1e6


@dataclass
class Energy:
    joules_per_token: float
    watts: float
    source: str  # "measured: RAPL ..." or "estimated: ..."

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


def energy_per_token(tps: float, wall: float, cpu_seconds: float, joules: float | None,
                     watts_per_core: float) -> Energy:
    """Average power over the process × seconds per token."""
    if joules is not None:
        watts = joules / wall
        return Energy(watts / tps, watts, "measured: RAPL package energy")
    watts = watts_per_core * cpu_seconds / wall
    return Energy(watts / tps, watts, f"estimated: {watts_per_core:g} W per busy core x CPU time")


# ---------------------------------------------------------------- models

def bench_model(shape: str, qtype: str, outdir: Path, tools: Path, note=log.warning) -> Path:
    """A dummy model of `shape` in `qtype`, made once and reused (random ternary weights, the
    same token embedding for every type -- Q6_K, or Q8_0 where Q6_K's blocks cannot hold the
    rows -- so that only the ternary weights differ). A stock type is what llama.cpp itself
    makes of it: where TQ1_0/TQ2_0 cannot hold the shape's rows that is llama-quantize's own
    fallback, not the I2_S that `bitnet dummy` would write (which would compare I2_S with itself)."""
    from . import dummy
    from .writer import TERNARY_TYPES, embedding_type

    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{shape}-{qtype}.gguf"
    if path.exists():
        return path
    if shape not in dummy.SHAPES:
        raise BenchError(f"unknown shape {shape!r}: choose one of {', '.join(dummy.SHAPES)}")
    # an embedding model's token embedding is f16, as converted (only looked up: no effect on speed)
    embd = embedding_type(None, dummy.SHAPES[shape].n_embd, "f16" if dummy.SHAPES[shape].embedding else "q6_k")
    embd = embd[0].name.lower()
    if qtype in TERNARY_TYPES:
        misfits = dummy.unheld_widths(dummy.SHAPES[shape], TERNARY_TYPES[qtype])
        if not misfits:
            return dummy.write(path, shape, qtype, embd_type_name=embd)
        note(f"{qtype} cannot hold rows of {', '.join(map(str, misfits))} values: benchmarking what "
             f"llama.cpp's llama-quantize makes of a {qtype.upper()} request (its fallback type for those tensors)")
    # any other stock type: llama-quantize from the f16 model, keeping its embedding
    src = bench_model(shape, "f16", outdir, tools)
    tmp = path.with_name(f".{path.name}.partial")
    r = subprocess.run([str(tools / "llama-quantize"), "--token-embedding-type", embd, str(src), str(tmp),
                        qtype.upper()], capture_output=True, text=True)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BenchError(f"llama-quantize cannot make {qtype.upper()}: {r.stderr.strip().splitlines()[-1:]}")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- roofline

ROOFLINE = "bitnet-roofline"
# tensors that are looked up (one row per token), never multiplied
LOOKUPS = ("token_embd.weight", "token_types.weight", "position_embd.weight")


@dataclass
class Ceilings:
    """This machine's ceilings at one thread count, as bitnet-roofline measured them."""
    threads: int
    read_gb_s: float        # streaming read bandwidth, 1e9 bytes/s
    int8_gmac_s: float      # int8 dot product peak, 1e9 multiply-accumulates/s
    isa: str                # the dot instruction: avx512-vnni, avx-vnni, avx2, neon-dotprod, neon, scalar


def measure_ceilings(tools: Path, threads: int, quick: bool = False, timeout: float = 300) -> Ceilings:
    """Run the probe at `threads` threads. A probe whose self-check fails (its SIMD dot or read
    loop disagrees with the scalar sum) stops the bench: the build is broken."""
    cmd = [str(tools / ROOFLINE), "-t", str(threads), "--json"] + (["--quick"] if quick else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BenchError(f"{tools / ROOFLINE} is missing: run 'bitnet setup --engine-only' to build it") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{ROOFLINE} failed ({' '.join(cmd)}): {last}")
    d = json.loads(r.stdout)
    c = Ceilings(int(d["threads"]), float(d["read_gb_s"]), float(d["int8_gmac_s"]), str(d["isa"]))
    if c.threads != threads or not (c.read_gb_s > 0 and c.int8_gmac_s > 0):
        raise BenchError(f"{ROOFLINE} gave implausible figures: {r.stdout.strip()}")
    return c


@dataclass
class ModelCost:
    """What one token costs a model file, from its tensors (dense models)."""
    bytes_per_token: int    # bytes a generated token reads
    macs_per_token: int     # multiply-accumulates of a token's matrix products, head included
    head_macs: int          # of which the output head's
    tied: bool              # no output.weight: the token embedding is also the head


def model_cost(path: Path, tl2_as_i2_s: bool = False) -> ModelCost:
    """Bytes read per generated token: every tensor of the file, whole (every weight matrix,
    the output head, the norms), except the looked-up token embedding, of which a token reads
    one row -- unless the model has no output.weight: then the embedding is also the head and is
    read whole. TL2 tensors count I2_S's bytes where the engine holds them so (tl2_as_i2_s).
    MACs per token: rows x width of every 2-D weight that is multiplied (the same tensors: the
    head included, the embedding only as the tied head). Attention over the KV cache and
    activations are left out (small next to the weights at bench's context lengths)."""
    import gguf
    from .quants import i2_s
    reader = gguf.GGUFReader(path)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    nbytes = macs = head = 0
    for t in reader.tensors:
        dims = [int(x) for x in t.shape]          # gguf order: dims[0] is the row width
        rows = t.n_elements // dims[0]
        two_d = len([x for x in dims if x > 1]) == 2
        if t.name in LOOKUPS and not (tied and t.name == "token_embd.weight"):
            nbytes += int(t.n_bytes) // rows   # one row
            continue
        if tl2_as_i2_s and t.tensor_type == gguf.GGMLQuantizationType.TL2:
            nbytes += i2_s.nbytes((rows, dims[0]))
        else:
            nbytes += int(t.n_bytes)
        if two_d:
            macs += int(t.n_elements)
            if t.name in ("output.weight", "token_embd.weight"):
                head += int(t.n_elements)
    return ModelCost(nbytes, macs, head, tied)


def ceiling(test: str, cost: ModelCost, c: Ceilings) -> float:
    """Tokens per second this machine's ceiling allows for one test of one model: generation
    (tg) is bound by reading the weights once per token, prompt processing (pp) by the int8
    peak over the MACs per token. llama-bench asks a prompt (ppN, one batch) for the logits of
    its last token only, so the output head runs once per N tokens; a pooled-embedding text
    (embd) needs no head at all."""
    if test.startswith("tg"):
        return c.read_gb_s * 1e9 / cost.bytes_per_token
    body = cost.macs_per_token - cost.head_macs
    macs = body if test.startswith("embd") else body + cost.head_macs / int(test[2:])
    return c.int8_gmac_s * 1e9 / macs


def add_ceilings(results: list["Result"], ceilings: dict[int, Ceilings], costs: dict[str, ModelCost]) -> None:
    """Fill in each result's ceiling and share (results of thread counts without a measurement,
    e.g. over RPC, keep None)."""
    for r in results:
        c, cost = ceilings.get(r.threads), costs.get(r.model)
        if c is None or cost is None:
            continue
        r.bytes_per_token, r.macs_per_token = cost.bytes_per_token, cost.macs_per_token
        r.read_gb_s, r.int8_gmac_s, r.int8_isa = c.read_gb_s, c.int8_gmac_s, c.isa
        r.ceiling_tps = ceiling(r.test, cost, c)
        r.ceiling_share = r.tps_mean / r.ceiling_tps
        r.ceiling_bound = "read bandwidth" if r.test.startswith("tg") else "int8 peak"


# ---------------------------------------------------------------- running

@dataclass
class Result:
    model: str
    type: str
    threads: int
    test: str                 # "pp512", "tg128"
    n_tokens: int
    tps_mean: float
    tps_sd: float
    size_bytes: int
    n_params: int
    bpw: float
    peak_rss_mib: float
    energy_j_per_token: float
    power_w: float
    energy_source: str
    ours: bool
    engine: str = "bitnet-tools"
    samples: list[float] = field(default_factory=list)
    # roofline (schema 2): the ceiling this row's test meets on this machine, and the share of it
    # reached; None where not measured (--rpc: the layers run on other hosts)
    ceiling_tps: float | None = None
    ceiling_share: float | None = None
    ceiling_bound: str | None = None     # "read bandwidth" (tg) or "int8 peak" (pp, embd)
    read_gb_s: float | None = None       # bitnet-roofline at this row's thread count
    int8_gmac_s: float | None = None
    int8_isa: str | None = None          # the probe's dot instruction
    bytes_per_token: int | None = None   # model_cost of this row's file
    macs_per_token: int | None = None


def run_one(bench_bin: Path, model: Path, qtype: str, threads: int, n_prompt: int, n_gen: int, reps: int,
            watts_per_core: float, powercap: Path = POWERCAP, engine_name: str = "bitnet-tools",
            rpc: list[str] | None = None, tensor_split: list[float] | None = None, embeddings: bool = False) -> Result:
    cmd = [str(bench_bin), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
           "-r", str(reps), "-o", "json"]
    if embeddings:   # an embedding model: the text goes through once and is pooled (test "embd<N>")
        cmd += ["-embd", "1"]
    if rpc:  # every layer on the workers (their threads are their own: bitnet rpc-server -t)
        cmd += ["--rpc", ",".join(rpc), "-ngl", "99"] + (["-ts", "/".join(f"{x:g}" for x in tensor_split)]
                                                         if tensor_split else [])
    domains = rapl_domains(powercap)
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        e0 = rapl_read(domains) if domains else None
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, text=True)
        # wait4 gives this child's own rusage: its peak RSS and CPU time
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        e1 = rapl_read(domains) if domains else None
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0), ferr.seek(0)
        out, errtext = fout.read(), ferr.read()
    if proc.returncode != 0:
        last = errtext.strip().splitlines()[-1:] or ["no output"]
        raise BenchError(f"llama-bench failed on {model.name} ({' '.join(cmd)}): {last[0]}")
    rows = json.loads(out)
    if len(rows) != 1:
        raise BenchError(f"llama-bench returned {len(rows)} results for one test")
    row = rows[0]
    test = f"{'embd' if embeddings else 'pp'}{n_prompt}" if n_prompt else f"tg{n_gen}"
    tps = float(row["avg_ts"])
    joules = rapl_joules(domains, e0, e1) if domains else None
    energy = energy_per_token(tps, wall, usage.ru_utime + usage.ru_stime, joules, watts_per_core)
    size, n_params = int(row["model_size"]), int(row["model_n_params"])
    return Result(model=model.name, type=qtype, threads=threads, test=test, n_tokens=n_prompt or n_gen,
                  tps_mean=tps, tps_sd=float(row.get("stddev_ts", 0.0)), size_bytes=size, n_params=n_params,
                  bpw=8 * size / n_params, peak_rss_mib=usage.ru_maxrss / 1024,
                  energy_j_per_token=energy.joules_per_token, power_w=energy.watts, energy_source=energy.source,
                  ours=qtype in OURS and engine_name.startswith("bitnet-tools"), engine=engine_name, samples=[float(x) for x in row.get("samples_ts", [])])


def speedups(results: list[Result]) -> list[dict]:
    """Each of our types over each stock type, per (threads, test), from the same run."""
    out = []
    for r in results:
        if not r.ours:
            continue
        for s in results:
            if s.ours or s.threads != r.threads or s.test != r.test:
                continue
            out.append({"ours": r.type, "stock": s.type, "stock_engine": s.engine, "threads": r.threads,
                        "test": r.test, "speedup": r.tps_mean / s.tps_mean,
                        "energy_ratio": r.energy_j_per_token / s.energy_j_per_token})
    return out


# ---------------------------------------------------------------- outputs

def type_label(path: Path) -> str:
    """A given file's type in the tables: the last '-' part of its name (2b4t-iq2_bn.gguf: iq2_bn)."""
    return path.stem.rsplit("-", 1)[-1].lower()


def prepare_models(model: Path | None, shape: str, types: list[str], models_dir: Path, tools: Path,
                   progress) -> list[tuple[str, Path]]:
    """(type, file) pairs to run: the given GGUF, or a dummy model of `shape` per type (cached)."""
    if model is not None:
        from .runtime import check_model_file
        check_model_file(model)
        return [(type_label(model), model)]
    task = progress.add_task("preparing models", total=len(types))
    models = []
    for t in types:
        models.append((t, bench_model(shape, t, models_dir, tools, note=lambda m: progress.console.print(f"note: {m}"))))
        progress.advance(task)
    return models


def run_matrix(tools: Path, models: list[tuple[str, Path]], threads: list[int], n_prompt: int, n_gen: int,
               reps: int, watts_per_core: float, baseline: Path | None, progress, rpc: list[str] | None = None,
               tensor_split: list[float] | None = None, baseline_models: list[tuple[str, Path]] = (),
               baseline_name: str = "stock") -> list[Result]:
    """Every model x thread count x test (pp, tg) through our llama-bench, and stock types also
    through the baseline's llama-bench when one is given (another engine: a stock llama.cpp
    build, ik_llama.cpp, bitnet.cpp), together with baseline_models, files in that engine's own
    types that only it runs. With rpc, the layers run on those workers; energy and RSS are then
    this process's share only. An embedding model (its GGUF pools) runs the prompt test only,
    with embeddings on: that is all it does."""
    from .embed import pooling_type
    benches = [(tools / "llama-bench", f"bitnet-tools rpc x{len(rpc)}" if rpc else "bitnet-tools")]
    pools = {m: pooling_type(m) is not None for _, m in models}
    pools.update({m: False for _, m in baseline_models})   # text models in types gguf-py may not know
    runs = [(t, m, th, test, bb, eng) for t, m in models for th in threads
            for test in (("pp",) if pools[m] else ("pp", "tg"))
            for bb, eng in benches + ([(baseline, baseline_name)] if baseline is not None and t not in OURS else [])]
    runs += [(t, m, th, test, baseline, baseline_name) for t, m in baseline_models for th in threads
             for test in ("pp", "tg")]
    ceilings: dict[int, Ceilings] = {}
    if not rpc:   # the ceilings of this machine; over RPC the work is elsewhere
        task = progress.add_task("measuring this machine's ceilings", total=len(threads))
        for th in threads:
            ceilings[th] = measure_ceilings(tools, th)
            progress.advance(task)
    task = progress.add_task("benchmarking", total=len(runs))
    results = []
    for t, m, th, test, bb, eng in runs:
        progress.update(task, description=f"{t} {eng} {test} {th} thr")
        try:
            results.append(run_one(bb, m, t, th, n_prompt if test == "pp" else 0, n_gen if test == "tg" else 0,
                                   reps, watts_per_core, engine_name=eng, rpc=rpc, tensor_split=tensor_split,
                                   embeddings=pools[m]))
        except BenchError as e:
            if bb == benches[0][0]:
                raise   # our own engine failing is a broken build or file: stop
            # another engine may lack a stock type (ik_llama.cpp has no TQ2_0): keep the run's other rows
            progress.console.print(f"note: {eng} skipped: {e}")
        progress.advance(task)
    if ceilings:  # again after the runs: a ceiling is the best the machine does, so a probe run
        # that met other load (another process on a core, a noisy neighbour) does not count
        task = progress.add_task("measuring this machine's ceilings again", total=len(threads))
        for th in threads:
            again = measure_ceilings(tools, th)
            c = ceilings[th]
            ceilings[th] = Ceilings(th, max(c.read_gb_s, again.read_gb_s), max(c.int8_gmac_s, again.int8_gmac_s), c.isa)
            progress.advance(task)
    held = engine.tl2_held_as_i2_s(tools)
    costs = {m.name: model_cost(m, held) for _, m in models}
    for _, m in baseline_models:
        try:
            costs[m.name] = model_cost(m)
        except ValueError:  # a type id gguf-py does not know (another engine's own types): no ceiling
            pass
    add_ceilings(results, ceilings, costs)
    return results


def write_outputs(results: list[Result], command: str, outdir: Path, stem: str) -> list[Path]:
    """<stem>.json (every repetition, the machine, the speedups), .csv and .png in outdir."""
    outdir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path, png_path = (outdir / f"{stem}.{k}" for k in ("json", "csv", "png"))
    doc = {"schema": SCHEMA_VERSION, "command": command, "machine": machine_info(),
           "results": [asdict(r) for r in results], "speedups": speedups(results),
           "roofline": roofline_summary(results)}
    _atomic_write(json_path, json.dumps(doc, indent=2))
    tmp = csv_path.with_name(f".{csv_path.name}.partial")
    with open(tmp, "w", newline="") as f:
        fields = [k for k in asdict(results[0]) if k != "samples"]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(asdict(r))
    os.replace(tmp, csv_path)
    plot(results, png_path)
    return [json_path, csv_path, png_path]


def roofline_summary(results: list[Result]) -> list[dict]:
    """The machine's ceilings per thread count, as measured in this run (empty over RPC)."""
    seen = {}
    for r in results:
        if r.read_gb_s is not None and r.threads not in seen:
            seen[r.threads] = {"threads": r.threads, "read_gb_s": r.read_gb_s, "int8_gmac_s": r.int8_gmac_s,
                               "isa": r.int8_isa, "probe": ROOFLINE}
    return [seen[t] for t in sorted(seen)]


def render(results: list[Result], command: str, show_engine: bool, watts_per_core: float, console) -> None:
    """The results table (ours marked *) with each figure's ceiling and share of it, this
    machine's ceilings, the same-run speedups, and whether energy is estimated."""
    from rich.table import Table
    measured = all(r.energy_source.startswith("measured") for r in results)
    table = Table(title=command)
    cols = ["type"] + (["engine"] if show_engine else []) + ["thr", "test", "t/s", "±", "ceiling t/s", "share",
                                                             "MiB", "bpw", "RSS MiB",
                                                             "J/tok" if measured else "J/tok (est.)"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("type", "engine", "test") else "right", no_wrap=True)
    for r in results:
        row = [r.type + ("*" if r.ours else "")] + ([r.engine] if show_engine else [])
        row += [str(r.threads), r.test, f"{r.tps_mean:.2f}", f"{r.tps_sd:.2f}",
                "-" if r.ceiling_tps is None else f"{r.ceiling_tps:.2f}",
                "-" if r.ceiling_share is None else f"{100 * r.ceiling_share:.0f}%", f"{r.size_bytes / 2**20:.0f}",
                f"{r.bpw:.2f}", f"{r.peak_rss_mib:.0f}", f"{r.energy_j_per_token:.3f}"]
        table.add_row(*row)
    console.print(table)
    roof = roofline_summary(results)
    if roof:
        console.print("ceilings (bitnet-roofline, this run): " + "; ".join(
            f"{x['threads']} thr: read {x['read_gb_s']:.1f} GB/s, int8 {x['int8_gmac_s']:.0f} GMAC/s ({x['isa']})"
            for x in roof))
        console.print("tg ceiling = read bandwidth / bytes a token reads; pp ceiling = int8 peak / MACs per prompt token (head once per prompt)")
    else:
        console.print("no ceilings: the layers ran on RPC workers, not on this machine")
    sp = speedups(results)
    if sp:
        t2 = Table(title="speedup of ours over stock (same run)")
        for col in ("ours", "stock", "thr", "test", "speedup", "energy ratio"):
            t2.add_column(col)
        for x in sp:
            t2.add_row(x["ours"], x["stock"] + ("" if x["stock_engine"] == "bitnet-tools" else f" ({x['stock_engine']})"),
                       str(x["threads"]), x["test"], f"{x['speedup']:.2f}x", f"{x['energy_ratio']:.2f}")
        console.print(t2)
    if not any(r.energy_source.startswith("measured") for r in results):
        console.print(f"[yellow]energy is ESTIMATED ({watts_per_core:g} W per busy core x CPU time): "
                      "RAPL counters are not readable here[/]")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def machine_info() -> dict:
    from .runtime import cpu_model
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "engine_key": _engine_key()}


def _engine_key() -> str:
    return engine.installed_build()[1]


def plot(results: list[Result], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = sorted({r.test for r in results}, key=lambda t: (t[:2] != "pp", t))
    threads = sorted({r.threads for r in results})
    labels = list(dict.fromkeys(f"{r.type}" + ("" if r.engine == "bitnet-tools" else f" ({r.engine})") for r in results))
    fig, axes = plt.subplots(2, len(tests), figsize=(5.5 * len(tests), 8), squeeze=False)
    width = 0.8 / max(1, len(labels))
    for col, test in enumerate(tests):
        for row, (metric, ylabel) in enumerate((("tps_mean", "tokens / s"), ("energy_j_per_token", "J / token"))):
            ax = axes[row][col]
            for i, label in enumerate(labels):
                vals, errs, rows = [], [], []
                for t in threads:
                    r = next((r for r in results if r.test == test and r.threads == t and
                              f"{r.type}" + ("" if r.engine == "bitnet-tools" else f" ({r.engine})") == label), None)
                    vals.append(getattr(r, metric) if r else 0)
                    errs.append(r.tps_sd if (r and metric == "tps_mean") else 0)
                    rows.append(r)
                xs = [j + i * width for j in range(len(threads))]
                bars = ax.bar(xs, vals, width, yerr=errs if metric == "tps_mean" else None, label=label,
                              hatch="//" if label in OURS else None)
                if metric == "tps_mean":   # the roofline: this bar's ceiling (dashed) and its share
                    for x, r, bar in zip(xs, rows, bars):
                        if r is None or r.ceiling_tps is None:
                            continue
                        ax.hlines(r.ceiling_tps, x - width / 2, x + width / 2, colors=bar.get_facecolor(),
                                  linestyles="dashed", linewidth=2,
                                  label="ceiling (this machine)" if (i, x) == (0, xs[0]) else None)
                        ax.annotate(f"{100 * r.ceiling_share:.0f}%", (x, r.tps_mean + r.tps_sd), ha="center",
                                    va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
            ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(threads))])
            ax.set_xticklabels([f"{t} thread{'s' if t > 1 else ''}" for t in threads])
            ax.set_ylabel(ylabel)
            src = {r.energy_source.split(":")[0] for r in results}
            bound = {r.ceiling_bound for r in results if r.test == test and r.ceiling_bound}
            title = (test + (f" (dashed: ceiling, {bound.pop()}; % reached)" if bound else "")
                     if metric == "tps_mean" else f"{test} energy per token ({'/'.join(sorted(src))})")
            ax.set_title(title)
            ax.grid(axis="y", alpha=0.3)
        top = axes[0][col].get_ylim()[1]
        axes[0][col].set_ylim(0, top * 1.3)   # room for the legend above bars and ceilings
        axes[0][col].legend(fontsize=8, loc="upper left", ncol=2)
    fig.suptitle(f"bitnet bench — {results[0].model.split('-')[0]} shape")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def parse_threads(spec: str) -> list[int]:
    """'1,2,4' or '1-4' or '2'."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    if not out or any(t < 1 for t in out):
        raise BenchError(f"--threads {spec!r}: give positive counts like 2, 1,2 or 1-4")
    return sorted(set(out))
