"""The built-in demo: a tiny BitNet b1.58 model with random ternary weights, written as I2_S
and run through the patched engine. Needs no network; proves the whole path works."""
from __future__ import annotations

import time

from rich.console import Console

from . import dummy
from .engine import ROOT

DEMO_PATH = ROOT / "models" / "demo-tiny-i2_s.gguf"


def run(console: Console | None = None, n_tokens: int = 16) -> dict:
    console = console or Console()
    DEMO_PATH.parent.mkdir(exist_ok=True)
    if not DEMO_PATH.exists():
        dummy.write(DEMO_PATH, "tiny", "i2_s", embd_type_name="f16")

    from .runtime import load
    llm = load(DEMO_PATH, n_ctx=256)
    prompt = "the quick brown fox"
    t0 = time.perf_counter()
    out = llm(prompt, max_tokens=n_tokens, temperature=0.0)
    dt = time.perf_counter() - t0
    n = out["usage"]["completion_tokens"]
    console.print(f"demo model {DEMO_PATH.name} ({DEMO_PATH.stat().st_size / 1024:.0f} KiB, random ternary weights, I2_S):")
    console.print(f"  prompt: {prompt!r} -> {n} tokens in {dt * 1000:.0f} ms: {out['choices'][0]['text']!r}",
                  highlight=False)
    return {"path": str(DEMO_PATH), "tokens": n, "seconds": dt}
