"""The `bitnet` command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import engine

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Ternary (BitNet b1.58) language models on CPUs, through a patched llama.cpp.")
console = Console()
err = Console(stderr=True)

_debug = False


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    global _debug
    _debug = debug


def fail(message: str, code: int = 1):
    """One line naming the cause and the fix, and a non-zero exit."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
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
    engine_only: bool = typer.Option(False, "--engine-only", help="Build the engine and stop (no demo model)."),
    portable: bool = typer.Option(False, "--portable",
                                  help="Build for any CPU of this architecture (x86-64: AVX2, no AVX-512) "
                                       "instead of this machine's CPU."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cached build is current."),
):
    """Build the patched engine (cached), then prepare and run the built-in demo model."""
    result = run_guarded(engine.build, portable=portable, force=force, console=err)
    state = "built" if result["rebuilt"] else "up to date"
    console.print(f"engine {state}: flavor [bold]{result['flavor']}[/], build key {result['key']}")
    if engine_only:
        return
    from . import demo
    run_guarded(demo.run, console=console)


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
    t.add_row("patched (knows I2_S)", "[green]yes[/]" if r["i2_s_known"] else "[red]no[/]")
    feats = ", ".join(k for k, v in r["cpu_features"].items() if v) or "-"
    t.add_row("CPU features in build", feats)
    for flavor, b in r["builds"].items():
        t.add_row(f"build {flavor}", f"key {b['key']} ({'current' if b['current'] else 'stale'}), tools in {b['tools']}")
    console.print(t)
    if not r["i2_s_known"]:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
