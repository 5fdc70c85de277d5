"""The `bitnet` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import engine

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Ternary (BitNet b1.58) language models on CPUs, through a patched llama.cpp.")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # errors stay one line

_debug = False


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    global _debug
    _debug = debug


def fail(message: str, code: int = 1):
    """One line naming the cause and the fix, and a non-zero exit."""
    # escaped: the message may quote text of the input, and "[/x]" there is no markup
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def run_guarded(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except engine.EngineError as e:
        if _debug:
            raise
        fail(str(e))


@app.command()
def setup(
    hf_repo: Optional[str] = typer.Option(None, "--hf-repo", "-hr", help="Hugging Face repo: a checkpoint to convert "
                                          "(microsoft/BitNet-b1.58-2B-4T-bf16) or GGUF files "
                                          "(microsoft/bitnet-b1.58-2B-4T-gguf)."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", "-md", help="A local folder instead: a checkpoint, "
                                             "a GGUF, or both."),
    quant: Optional[str] = typer.Option(None, "-q", "--quant-type", help="Weight type: i2_s, tl2, tl1, tq2_0, tq1_0, "
                                        "f16, bf16, f32 (default: the one of ours that measures fastest here)."),
    quant_embd: Optional[str] = typer.Option(None, "--quant-embd", help="Token embedding type: q6_k, q8_0, f16, f32 "
                                             "(default: q6_k for large vocabularies, else f16)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads for the verification run."),
    outdir: Path = typer.Option(engine.ROOT / "models", "--outdir", "-o", help="Where converted models go."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Repo revision (branch, tag or commit)."),
    engine_only: bool = typer.Option(False, "--engine-only", help="Build the engine and stop."),
    portable: bool = typer.Option(False, "--portable",
                                  help="Build for any CPU of this architecture (x86-64: AVX2, no AVX-512) "
                                       "instead of this machine's CPU."),
    force: bool = typer.Option(False, "--force", help="Rebuild the engine and re-convert even if nothing changed."),
):
    """One shot: build the patched engine (cached), then get a model (--hf-repo / --model-dir:
    a GGUF of the asked type is used as it is, another ternary GGUF is transcoded, a checkpoint
    is converted) and verify it; or run the built-in demo model when neither is given."""
    from .writer import TERNARY_TYPES
    if hf_repo and model_dir:  # before the engine build, which can take minutes
        fail("give either --hf-repo or --model-dir, not both")
    if quant is not None and quant.lower() not in TERNARY_TYPES:
        fail(f"unknown weight type {quant!r}: choose one of {', '.join(TERNARY_TYPES)}")
    if model_dir is not None and not model_dir.is_dir():
        fail(f"{model_dir} is not a folder: point --model-dir at a folder holding a checkpoint or a GGUF")
    result = run_guarded(engine.build, portable=portable, force=force, console=err)
    state = "built" if result["rebuilt"] else "up to date"
    console.print(f"engine {state}: flavor [bold]{result['flavor']}[/], build key {result['key']}")
    if engine_only:
        return
    if hf_repo is None and model_dir is None:
        from . import demo
        run_guarded(demo.run, console=console)
        return

    from . import hub
    defaults = hub.defaults_for(hf_repo or "")
    quant = (quant or defaults.quant or "").lower() or None
    if hf_repo:
        if hf_repo not in hub.KNOWN_REPOS:
            err.print(f"{hf_repo} is not a repo we know: trying it by what it holds")
        files = _hub(hub.list_files, hf_repo, revision)
        name, where = hf_repo.split("/")[-1], hf_repo
    else:
        files = sorted(p.name for p in model_dir.iterdir() if p.is_file())
        name, where = model_dir.resolve().name, str(model_dir)

    def fetch(filename: str) -> Path:
        if hf_repo:
            with err.status(f"downloading {filename} from {hf_repo} (resumable)"):
                return _hub(hub.download_file, hf_repo, filename, revision)
        return model_dir / filename

    ggufs, checkpoint = hub.ternary_ggufs(files), hub.has_checkpoint(files)
    if not ggufs and not checkpoint:
        fail(f"{where} holds neither a ternary GGUF (named like ggml-model-i2_s.gguf) nor a Hugging Face checkpoint "
             "(config.json + *.safetensors): check the repo or folder")
    if quant is None:
        quant = _fastest_type(fetch, ggufs, checkpoint, threads)
    out = outdir / name / f"ggml-model-{quant}.gguf"
    if quant in ggufs or (ggufs and not checkpoint):
        model = _from_gguf(fetch(hub.gguf_source(ggufs, quant)), quant, out, force)
    else:
        if hf_repo:
            with err.status(f"downloading {hf_repo} (resumable)"):
                src = _hub(hub.download, hf_repo, revision=revision)
        else:
            src = model_dir
        if out.exists() and not force:
            console.print(f"reusing {out} (already converted; --force to redo)")
        else:
            _convert(src, out, quant, quant_embd or defaults.embd, force=False)
        model = out
    _verify(model, threads)


def _hub(fn, *args, **kwargs):
    from .hub import HubError
    try:
        return fn(*args, **kwargs)
    except HubError as e:
        fail(str(e))


def _read_gguf(path: Path):
    from .convert import ConvertError
    from .transcode import architecture, open_gguf
    try:
        reader = open_gguf(path)
        architecture(reader, path)
    except ConvertError as e:
        fail(str(e))
    return reader


def _fastest_type(fetch, ggufs: dict, checkpoint: bool, threads: Optional[int]) -> str:
    """The type of ours that generates fastest here for the model's widths (measured, cached)."""
    from .convert import ConvertError, hparams, pick_family, read_config
    from .dummy import Shape
    from .fastest import choose
    from .transcode import shape_of
    try:
        if checkpoint:
            cfg_path = fetch("config.json")
            cfg = read_config(cfg_path.parent)
            hp = hparams(cfg, pick_family(cfg))
            shape = Shape(hp.n_embd, hp.n_layer, hp.n_ff, hp.n_head, hp.n_head_kv, hp.n_vocab)
        else:
            from .hub import gguf_source
            path = fetch(gguf_source(ggufs, None))
            shape = shape_of(_read_gguf(path), path)
    except ConvertError as e:
        fail(str(e))
    from .bench import BenchError
    try:
        with err.status("measuring which ternary type generates fastest on this CPU") as status:
            choice = run_guarded(choose, shape, _current_tools(), threads, progress=lambda s: status.update(s))
    except BenchError as e:
        fail(f"measuring the fastest type failed ({e}): give the type with -q")
    console.print(choice.summary(), highlight=False)
    return choice.type


def _from_gguf(path: Path, quant: str, out: Path, force: bool) -> Path:
    """A downloaded or local ternary GGUF: used as it is when it holds `quant`, else transcoded."""
    from .transcode import held_type
    held = held_type(_read_gguf(path))
    if held == quant:
        console.print(f"using {path} as it is ({held})", highlight=False)
        return path
    if out.exists() and not force:
        console.print(f"reusing {out} (already transcoded; --force to redo)")
        return out
    console.print(f"transcoding {path.name} ({held}) to {quant}", highlight=False)
    return _convert(path, out, quant, None, force=False)


def _convert(src: Path, out: Path, qtype: str, embd: Optional[str], force: bool, i2s_layout: str = "x86") -> Path:
    """A checkpoint folder converted, or a ternary GGUF transcoded, to `out`."""
    from rich.progress import Progress
    from .convert import ConvertError, convert as convert_fn
    from .transcode import transcode
    gguf_input = src.is_file()
    if gguf_input and embd is not None:
        fail("--embd-type applies to checkpoints: a GGUF's token embedding is copied as it is")
    if not gguf_input and i2s_layout != "x86":
        fail("--i2s-layout applies to I2_S GGUF files, not to checkpoints: drop it")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task(f"{'transcoding' if gguf_input else 'converting'} to {out.name}", total=None)
            step = lambda *a: progress.advance(task)  # noqa: E731
            if gguf_input:
                transcode(src, out, qtype, i2s_layout=i2s_layout, progress=step)
            else:
                convert_fn(src, out, outtype=qtype, embd_type=embd, force=force, progress=step)
    except ConvertError as e:
        if _debug:
            raise
        fail(str(e))
    except OSError as e:
        if _debug:
            raise
        fail(f"writing {out} failed: {e.strerror or e} (nothing partial was left; free space and run again)")
    console.print(f"{'transcoded' if gguf_input else 'converted'}: {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return out


def _verify(model: Path, threads: Optional[int]) -> None:
    from .embed import embed, pooling_type
    if pooling_type(model) is not None:   # an embedding model: embed, and compare a related and an unrelated text
        llm = _load(model, 512, threads, embedding=True)
        v = embed(llm, ["query: what is BitNet?", "BitNet b1.58 is a language model with ternary weights.",
                        "The cat sat on the mat."])
        console.print(f"verification ({model.name}): {v.shape[1]} values per text; cosine with the query: related "
                      f"text {v[0] @ v[1]:.3f}, unrelated text {v[0] @ v[2]:.3f}", highlight=False)
        return
    llm = _load(model, 512, threads)
    out = llm("The capital of France is", max_tokens=16, temperature=0.0)
    console.print(f"verification ({model.name}, greedy): {out['choices'][0]['text']!r}", highlight=False)


@app.command()
def convert(
    source: Path = typer.Argument(..., help="Hugging Face checkpoint folder (config.json + safetensors), or a "
                                  "ternary GGUF file to transcode."),
    outfile: Path = typer.Option(..., "-o", "--outfile", help="Output GGUF."),
    outtype: str = typer.Option("i2_s", "--outtype", help="i2_s, tl2, tl1, tq2_0, tq1_0, f16, bf16, f32."),
    embd_type: Optional[str] = typer.Option(None, "--embd-type", help="q6_k, q8_0, f16, f32 (default: q6_k for large "
                                            "vocabularies, else f16; checkpoints only)."),
    i2s_layout: str = typer.Option("x86", "--i2s-layout", help="I2_S code layout of the input GGUF: x86 (Microsoft's "
                                   "published files, ours) or arm64 (made by bitnet.cpp's ARM builds since Nov 2025)."),
    force: bool = typer.Option(False, "--force", help="Convert even if the weights are not ternary after scaling."),
):
    """Convert a BitNet b1.58 checkpoint to GGUF in one streaming pass, or transcode a ternary
    GGUF to another type (ternary codes and scales kept exactly, everything else copied)."""
    _convert(source, outfile, outtype.lower(), embd_type, force, i2s_layout)


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """What is built, from which sources and patches, for which CPU features, and where."""
    from .doctor import report
    r = report()
    if as_json:
        console.print_json(json.dumps(r))
        return
    t = Table(title="bitnet-tools engine", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    pin = r["pin"]
    t.add_row("engine source", f"{pin['package']} {pin['version']} (sha256 {pin['sha256'][:12]}…)")
    t.add_row("llama.cpp", f"{pin['llama_cpp_commit']} ({pin['llama_cpp_build']})")
    t.add_row("patch series", f"{', '.join(r['patch_series'])} (hash {r['series_hash']})")
    t.add_row("source tree", r["source_tree"] or "[red]not unpacked[/] (run: bitnet setup)")
    t.add_row("llama_cpp installed", r["llama_cpp_python"] or "[red]no[/] (run: bitnet setup)")
    t.add_row("llama_cpp library", r["llama_cpp_lib"] or "-")
    t.add_row("patched (knows I2_S, TL1, TL2)", "[green]yes[/]" if r["ternary_types_known"] else "[red]no[/] (run: bitnet setup)")
    if r["ternary_types_known"]:
        t.add_row("TL2 weights in memory", "as I2_S (no AVX-512 VBMI here: a fifth more memory, I2_S's kernels)"
                  if r["tl2_held_as_i2_s"] else "as stored (TL2's own kernel)")
    feats = ", ".join(k for k, v in r["cpu_features"].items() if v) or "-"
    t.add_row("CPU features in build", feats)
    for flavor, b in r["builds"].items():
        t.add_row(f"build {flavor}", f"key {b['key']} ({'current' if b['current'] else 'stale'}), tools in {b['tools']}")
    for key, c in r["fastest_types"].items():
        figures = ", ".join(f"{k} {v:.1f}" for k, v in sorted(c["tokens_per_s"].items(), key=lambda kv: -kv[1]))
        t.add_row("fastest type (measured)", f"[bold]{c['type']}[/] for {key} (generation t/s: {figures})")
    console.print(t)
    if not r["ternary_types_known"]:
        raise typer.Exit(1)


RPC_HELP = "Workers holding the model's layers: HOST:PORT[,HOST:PORT...] ('bitnet rpc-server' on each)."
SPLIT_HELP = "Share of layers per --rpc worker, e.g. 3,1 (default: by each worker's free memory)."


def _workers(rpc: Optional[str], split: Optional[str]) -> tuple[list[str], Optional[list[float]]]:
    """--rpc and --tensor-split, checked: the worker endpoints and the share of each (or None)."""
    from .rpc import RPCError, parse_split, parse_workers
    if split and not rpc:
        fail("--tensor-split needs --rpc: it divides the layers among RPC workers")
    try:
        workers = parse_workers(rpc) if rpc else []
        return workers, parse_split(split, len(workers)) if workers else None
    except RPCError as e:
        fail(str(e))


def _load(model: Path, ctx: int, threads: Optional[int], rpc: Optional[str] = None, split: Optional[str] = None,
          **kwargs):
    import llama_cpp
    from .rpc import RPCError
    from .runtime import ModelError, load
    workers, tensor_split = _workers(rpc, split)
    try:
        if workers:
            from .rpc import exit_on_engine_abort
            exit_on_engine_abort(lambda reason: err.print(f"[bold red]error:[/] {escape(reason)}", highlight=False))
        llm = load(model, n_ctx=ctx, n_threads=threads, rpc=workers or None, tensor_split=tensor_split, **kwargs)
    except (ModelError, RPCError) as e:  # the engine's reason, or ours
        fail(str(e))
    if not kwargs.get("embedding") and llm.pooling_type() != llama_cpp.LLAMA_POOLING_TYPE_NONE:
        fail(f"{model} is an embedding model: it gives one vector per text and generates no text; "
             f"use 'bitnet embed -m {model}'")
    return llm


def _chat(llm, temp: float, n: int, system: Optional[str]):
    """Conversation on stdin/stdout with the model's chat template; an empty line or EOF ends it."""
    messages = [{"role": "system", "content": system}] if system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            console.print("[bold green]> [/]", end="")
        line = sys.stdin.readline()
        if not line or not line.strip():
            break
        messages.append({"role": "user", "content": line.strip()})
        reply = []
        for chunk in llm.create_chat_completion(messages=messages, temperature=temp, max_tokens=n, stream=True):
            piece = chunk["choices"][0]["delta"].get("content")
            if piece:
                reply.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": "".join(reply)})


@app.command()
def infer(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model."),
    prompt: str = typer.Option("", "-p", "--prompt", help="Prompt (or system prompt with -cnv)."),
    n: int = typer.Option(128, "-n", "--n-predict", help="Tokens to generate."),
    temp: float = typer.Option(0.8, "--temp", help="Sampling temperature (0 = greedy)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
    ctx: int = typer.Option(2048, "-c", "--ctx-size", help="Context size."),
    conversation: bool = typer.Option(False, "-cnv", "--conversation", help="Chat with the model's chat template."),
    seed: int = typer.Option(-1, "--seed", help="Sampling seed (-1: random)."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help=RPC_HELP),
    split: Optional[str] = typer.Option(None, "--tensor-split", "-ts", help=SPLIT_HELP),
):
    """Generate text, streaming tokens as they come; -cnv for a conversation."""
    llm = _load(model, ctx, threads, rpc, split, seed=seed if seed >= 0 else 0xFFFFFFFF)
    if conversation:
        _chat(llm, temp, n, prompt or None)
        return
    if not prompt:
        fail("no prompt: give one with -p, or use -cnv for a conversation")
    for chunk in llm(prompt, max_tokens=n, temperature=temp, stream=True):
        sys.stdout.write(chunk["choices"][0]["text"])
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def chat(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model."),
    system: Optional[str] = typer.Option(None, "-s", "--system", help="System prompt."),
    n: int = typer.Option(256, "-n", "--n-predict", help="Tokens per reply at most."),
    temp: float = typer.Option(0.8, "--temp", help="Sampling temperature."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads"),
    ctx: int = typer.Option(4096, "-c", "--ctx-size"),
    rpc: Optional[str] = typer.Option(None, "--rpc", help=RPC_HELP),
    split: Optional[str] = typer.Option(None, "--tensor-split", "-ts", help=SPLIT_HELP),
):
    """Chat with a model (its chat template); one message per line, an empty line ends."""
    llm = _load(model, ctx, threads, rpc, split)
    _chat(llm, temp, n, system)


@app.command()
def embed(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF embedding model (bitnet-embedding-0.6b / -270m)."),
    prompt: list[str] = typer.Option([], "-p", "--prompt", help="A text to embed (repeatable)."),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="Texts to embed, one per line ('-': stdin)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the vectors: .npy (matrix) or .json."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
    ctx: int = typer.Option(2048, "-c", "--ctx-size", help="Tokens per batch of texts (the longest text allowed)."),
):
    """Embed texts: unit-length vectors, one per text, pooled as the model says (the last token
    for the BitNet embedding models). Many texts are embedded per batch."""
    from .embed import EmbedError, check_out, embed as embed_texts, read_texts, write_vectors
    try:
        texts = read_texts(prompt, file)
        if out is not None:
            check_out(out)
        llm = _load(model, ctx, threads, embedding=True, n_batch=ctx, n_ubatch=ctx)
        with err.status(f"embedding {len(texts)} text(s)"):
            vectors = embed_texts(llm, texts)
        if out is not None:
            write_vectors(out, texts, vectors)
    except EmbedError as e:
        fail(str(e))
    table = Table(title=f"{len(texts)} embedding(s) of {vectors.shape[1]} values, L2-normalised")
    for col in ("#", "text", "first values"):
        table.add_column(col)
    for i, (text, v) in enumerate(zip(texts, vectors)):
        table.add_row(str(i + 1), escape(text if len(text) <= 48 else text[:45] + "..."),
                      " ".join(f"{x:+.4f}" for x in v[:4]) + " ...")
    console.print(table)
    if out is not None:
        console.print(f"wrote {out}")


@app.command()
def serve(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (other than loopback: see --api-key)."),
    port: int = typer.Option(8080, "--port"),
    parallel: Optional[int] = typer.Option(None, "--parallel", "-np", help="Requests decoded together "
                                           "(slots; default: max(4, 2 x physical cores))."),
    ctx: int = typer.Option(4096, "-c", "--ctx-size", help="Context of each request (tokens)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads"),
    alias: Optional[str] = typer.Option(None, "--alias", help="Model name clients use (default: file stem)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require this bearer key from clients."),
    cache_ram: int = typer.Option(2048, "--cache-ram", help="MiB of host RAM for finished requests' KV states "
                                  "(a returning conversation skips its prompt); 0 disables it."),
    log: Optional[Path] = typer.Option(None, "--log-file", help="Server log (default: in the temp directory)."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help=RPC_HELP),
    split: Optional[str] = typer.Option(None, "--tensor-split", "-ts", help=SPLIT_HELP),
):
    """OpenAI-compatible server for many users at once: llama.cpp's llama-server from our build
    (continuous batching), /v1/chat/completions, /v1/completions, /v1/models, /health; for an
    embedding model /v1/embeddings (unit-length vectors) instead of the completions."""
    from .runtime import ModelError
    from .server import ServeOptions, ServerError, default_log, serve_forever
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        err.print(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    workers, tensor_split = _workers(rpc, split)
    opts = ServeOptions(model=model, host=host, port=port, parallel=parallel or 0, ctx=ctx, threads=threads or 0,
                        alias=alias, api_key=api_key, cache_ram_mib=cache_ram, rpc=tuple(workers),
                        tensor_split=tuple(tensor_split or ()))
    try:
        code = serve_forever(opts, _current_tools() / "llama-server", log or default_log(port), err)
    except (ServerError, ModelError) as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def loadtest(
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="Start `bitnet serve` on this GGUF for the test."),
    url: Optional[str] = typer.Option(None, "--url", help="Or test a running server (e.g. http://127.0.0.1:8080)."),
    clients: str = typer.Option("1,4,8,16", "--clients", help="Concurrent streaming clients, one level each."),
    requests: int = typer.Option(4, "--requests", help="Requests per client at each level."),
    n_gen: int = typer.Option(64, "-n", help="Tokens generated per request."),
    parallel: Optional[int] = typer.Option(None, "--parallel", "-np", help="Server slots (with -m)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Server threads (with -m)."),
    time_limit: float = typer.Option(300.0, "--time-limit", help="No request starts after this many seconds per level."),
    outdir: Path = typer.Option(Path("loadtest-results"), "--outdir", help="Where the JSON, CSV and PNG go."),
    api_key: Optional[str] = typer.Option(None, "--api-key"),
):
    """Aggregate tokens/s, time to first token and inter-token latency of a server under C
    concurrent streaming clients (a table, JSON, CSV and a PNG plot)."""
    from contextlib import nullcontext
    from . import loadtest as lt
    from .bench import parse_threads
    from .server import ServeOptions, ServerError, free_port, models, running
    if (model is None) == (url is None):
        fail("give either -m MODEL (a server is started for the test) or --url of a running server")
    try:
        levels_c = parse_threads(clients)
    except ValueError:
        fail(f"--clients {clients!r} is not a list of positive integers like 1,4,8,16")
    ctx = nullcontext((url.rstrip("/"), None)) if url else running(
        ServeOptions(model=model, port=free_port(), parallel=parallel or max(levels_c), ctx=max(512, 2 * n_gen + 256),
                     threads=threads or 0, api_key=api_key), _current_tools() / "llama-server")
    results = []
    try:
        with ctx as (base, proc):
            name = models(base)[0]
            with err.status("load test") as status:
                for c in levels_c:
                    status.update(f"{c} concurrent clients x {requests} requests of {n_gen} tokens")
                    results.append(lt.run_level(base, name, c, requests, n_gen, time_limit, api_key=api_key))
    except ServerError as e:
        fail(str(e))
    title = f"load test: {name}, {requests} requests x {n_gen} tokens per client"
    lt.render(results, title, console)
    import shlex
    meta = {"model": name, "url": url, "requests_per_client": requests, "n_gen": n_gen,
            "command": "bitnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    for p in lt.write_outputs(results, meta, outdir, f"loadtest-{Path(name).stem}"):
        console.print(f"wrote {p}")
    if any(lv.errors for lv in results):
        raise typer.Exit(1)


@app.command()
def ppl(
    model: Path = typer.Option(..., "-m", "--model", help="GGUF model."),
    text: Path = typer.Option(..., "-f", "--file", help="Text file to measure perplexity on."),
    ctx: int = typer.Option(512, "-c", "--ctx-size", help="Context per chunk (the second half of each is scored)."),
    threads: Optional[int] = typer.Option(None, "-t", "--threads"),
    chunks: int = typer.Option(-1, "--chunks", help="Chunks to evaluate (-1: all)."),
):
    """Perplexity of a model on a text, computed as llama.cpp's llama-perplexity does."""
    from rich.progress import Progress
    from .perplexity import perplexity
    if not text.is_file():
        fail(f"text file {text} does not exist: give a plain-text file with -f")
    llm = _load(model, ctx, threads, logits_all=True)
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("perplexity", total=None)
            value, stderr = perplexity(llm, text.read_text(errors="replace"), ctx, chunks,
                                       progress=lambda i, n: progress.update(task, completed=i, total=n))
    except ValueError as e:
        fail(str(e))
    console.print(f"perplexity of {model.name} on {text.name}: [bold]{value:.4f}[/] ± {stderr:.4f}")


def _current_tools() -> Path:
    """bin/ of llama.cpp's tools of the installed build (native, or --portable's flavor)."""
    try:
        flavor, _ = engine.installed_build()
    except engine.EngineError as e:
        fail(str(e))
    return engine.tools_dir(flavor)


@app.command()
def dummy(
    shape: str = typer.Option("2b4t", "--shape", help="Model shape: tiny, 125m, 700m, 1.5b, 2b4t, 3b, 8b, 13b, 30b, 70b, 100b, falcon3-1b, falcon3-3b, falcon3-7b, falcon3-10b."),
    qtype: str = typer.Option("i2_s", "-q", "--quant", help="Ternary weight type: i2_s, tl2, tl1, tq1_0, tq2_0, f16, bf16, f32."),
    embd_type: Optional[str] = typer.Option(None, "--embd-type", help="Token embedding type: q6_k, q8_0, f16, f32, "
                                            "q4_0 (default: q6_k, or q8_0 where q6_k's blocks of 256 cannot hold the rows)."),
    out: Path = typer.Option(..., "-o", "--outfile", help="Output GGUF path."),
    seed: int = typer.Option(0, "--seed"),
    layers: Optional[int] = typer.Option(None, "--layers", help="Fewer layers than the shape has (a small file "
                                         "with the shape's widths)."),
):
    """Write a BitNet b1.58 model of a standard shape with random ternary weights (streams to disk)."""
    from rich.progress import Progress
    from . import dummy as dummy_mod

    if shape not in dummy_mod.SHAPES:
        fail(f"unknown shape {shape!r}: choose one of {', '.join(dummy_mod.SHAPES)}")
    s = dummy_mod.SHAPES[shape]
    n_tensors = 2 + (7 + len(dummy_mod.layer_norms(s))) * (layers or s.n_layer)
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task(f"writing {out.name}", total=n_tensors)
            dummy_mod.write(out, shape, qtype, embd_type, seed, progress=lambda name: progress.advance(task),
                            note=lambda msg: err.print(f"note: {msg}"), n_layer=layers)
    except (ValueError, OSError) as e:
        if _debug:
            raise
        fail(f"{e}")
    from dataclasses import replace
    params = dummy_mod.n_params(replace(dummy_mod.SHAPES[shape], n_layer=layers or dummy_mod.SHAPES[shape].n_layer))
    console.print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, ~{params / 1e9:.2f} B parameters)")


@app.command()
def info(model: Path = typer.Argument(..., help="A GGUF file.")):
    """Architecture, tensor types, bits per weight and size of a GGUF model."""
    import gguf
    import numpy as np
    from .runtime import ModelError, check_model_file, diagnose_model_file
    from .writer import tensor_nbytes

    try:
        check_model_file(model)
        diagnose_model_file(model)
        reader = gguf.GGUFReader(model)
    except (ModelError, ValueError) as e:
        if _debug:
            raise
        fail(f"{e}")
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field else "?"
    counts: dict[str, list[int]] = {}
    total_bytes = total_params = 0
    for t in reader.tensors:
        n = int(np.prod(t.shape))
        size = tensor_nbytes(tuple(int(x) for x in t.shape[::-1]), t.tensor_type)
        c = counts.setdefault(t.tensor_type.name, [0, 0, 0])
        c[0] += 1; c[1] += n; c[2] += size
        total_bytes += size
        total_params += n
    table = Table(title=f"{model.name}: {arch}, {len(reader.tensors)} tensors")
    for col in ("type", "tensors", "parameters", "MiB", "bpw"):
        table.add_column(col, justify="right" if col != "type" else "left")
    for name, (k, n, size) in sorted(counts.items(), key=lambda kv: -kv[1][1]):
        table.add_row(name, str(k), f"{n:,}", f"{size / 2**20:.1f}", f"{8 * size / n:.3f}")
    table.add_row("total", str(len(reader.tensors)), f"{total_params:,}", f"{total_bytes / 2**20:.1f}",
                  f"{8 * total_bytes / total_params:.3f}", style="bold")
    console.print(table)


@app.command("rpc-server")
def rpc_server(
    host: str = typer.Option("127.0.0.1", "--host", "-H", help="IPv4 address to listen on (other than loopback "
                             "needs --allow-network)."),
    port: int = typer.Option(50052, "--port", "-p"),
    threads: Optional[int] = typer.Option(None, "-t", "--threads", help="Threads (default: physical cores)."),
    mem: Optional[int] = typer.Option(None, "--mem", help="MiB this worker offers (default: its free memory); "
                                      "clients split layers by it."),
    allow_network: bool = typer.Option(False, "--allow-network", help="Listen on a non-loopback address: the "
                                       "protocol has no authentication, use a trusted network or a tunnel."),
):
    """A worker for --rpc: llama.cpp's ggml-rpc-server from our build, holding the layers a client gives it."""
    import os
    from .rpc import RPCError, check_bind, worker_command
    from .runtime import physical_cores
    from .server import port_in_use
    try:
        warning = check_bind(host, allow_network)
        cmd, env = worker_command(_current_tools() / "ggml-rpc-server", host, port, threads or physical_cores(), mem)
    except RPCError as e:
        fail(str(e))
    if not Path(cmd[0]).exists():
        fail(f"{cmd[0]} is missing: run 'bitnet setup --engine-only' (it builds the RPC worker with the engine)")
    if port_in_use(cmd[2], port):
        fail(f"port {port} on {host} is in use: choose another with --port")
    if warning:
        err.print(warning)
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)  # the worker is this process: signals and exit code are its own


@app.command()
def bench(
    threads: str = typer.Option(None, "-t", "--threads", help="Thread counts: 2, 1,2 or 1-4 (default: physical cores)."),
    model: Optional[Path] = typer.Option(None, "-m", "--model", help="Benchmark this GGUF instead of dummy models."),
    shape: str = typer.Option("2b4t", "--shape", help="Dummy model shape when no --model is given."),
    types: str = typer.Option("i2_s,tq2_0,tq1_0,f16", "--types", help="Weight types to compare (ours and stock)."),
    n_prompt: int = typer.Option(512, "-p", "--n-prompt", help="Prompt tokens per pp test (whole batches)."),
    n_gen: int = typer.Option(128, "-n", "--n-gen", help="Generated tokens per tg test."),
    reps: int = typer.Option(5, "-r", "--repetitions", help="Repetitions (mean ± sd; warm-up excluded)."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="llama-bench of another engine (a stock "
                                            "llama.cpp build, ik_llama.cpp, ...): stock types are also run through it."),
    baseline_model: list[Path] = typer.Option([], "--baseline-model", help="A GGUF in the baseline engine's own "
                                              "type (e.g. ik_llama.cpp's IQ2_BN), run only through --baseline; "
                                              "its type is the file name's last '-' part (repeatable)."),
    baseline_name: str = typer.Option("stock", "--baseline-name", help="The baseline engine's name in the tables."),
    watts_per_core: float = typer.Option(7.0, "--watts-per-core", help="Per-core power for the energy estimate "
                                         "when RAPL counters are not readable."),
    outdir: Path = typer.Option(Path("bench-results"), "--outdir", help="Where JSON, CSV and PNG go."),
    models_dir: Path = typer.Option(engine.ROOT / "models" / "bench", "--models-dir", help="Cache of dummy models."),
    rpc: Optional[str] = typer.Option(None, "--rpc", help=RPC_HELP + " Every layer runs on the workers."),
    split: Optional[str] = typer.Option(None, "--tensor-split", "-ts", help=SPLIT_HELP),
):
    """Throughput, memory and energy per token: our ternary types against stock llama.cpp types, one run."""
    from rich.progress import Progress
    from . import bench as b
    from .runtime import GGUF_MAGIC, physical_cores

    tools = _current_tools()
    try:
        thread_list = b.parse_threads(threads) if threads else [physical_cores()]
    except (b.BenchError, ValueError) as e:
        fail(str(e))
    if baseline is not None and not baseline.exists():
        fail(f"--baseline {baseline} does not exist: point it at a stock build's llama-bench binary")
    if baseline_model and baseline is None:
        fail("--baseline-model needs --baseline: the llama-bench of the engine that runs that file")
    for f in baseline_model:
        if not f.is_file():
            fail(f"--baseline-model {f} does not exist: give a GGUF file of the baseline engine")
        with open(f, "rb") as fh:   # not check_model_file: their own types may be ids ours refuses
            if fh.read(4) != GGUF_MAGIC:
                fail(f"--baseline-model {f} is not a GGUF file: give a model file of the baseline engine")
    workers, tensor_split = _workers(rpc, split)
    if workers and baseline is not None:
        fail("--baseline and --rpc together are not supported: a stock build cannot use our workers")
    if workers:  # llama-bench skips a refused worker and runs locally: check them here, with the reason
        from .rpc import RPCError, add_workers
        try:
            add_workers(workers)
        except RPCError as e:
            fail(str(e))
    type_list = [t.strip().lower() for t in types.split(",") if t.strip()]
    command = "bitnet bench " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "bitnet bench"
    try:
        with Progress(console=err) as progress:
            models = b.prepare_models(model, shape, type_list, models_dir, tools, progress)
            results = b.run_matrix(tools, models, thread_list, n_prompt, n_gen, reps, watts_per_core, baseline,
                                   progress, rpc=workers, tensor_split=tensor_split, baseline_name=baseline_name,
                                   baseline_models=[(b.type_label(f), f) for f in baseline_model])
    except (b.BenchError, ValueError, OSError) as e:
        if _debug:
            raise
        fail(str(e))
    paths = b.write_outputs(results, command, outdir, f"bench-{(model.stem if model else shape)}")
    b.render(results, command, baseline is not None, watts_per_core, console)
    console.print(f"written: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":  # pragma: no cover
    app()
