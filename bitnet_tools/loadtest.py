"""Load test of an OpenAI-compatible server: C concurrent streaming clients, a fixed number of
requests each, bounded in time too.

Each request is a streamed /v1/chat/completions of exactly `max_tokens` tokens (llama-server's
`ignore_eos`, so every level does the same work). Per request: time to first token (TTFT), the
gaps between streamed tokens (inter-token latency, ITL), tokens, completion. Per level:
aggregate tokens/s (all completion tokens / wall time of the level), TTFT and ITL p50/p95,
errors by status. Only the standard library talks HTTP, so the client adds no dependency.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class RequestResult:
    status: int                  # HTTP status (0: no response)
    complete: bool               # the stream ended with a finish_reason and [DONE]
    tokens: int
    seconds: float
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Level:
    clients: int
    requests: int
    complete: int
    errors: dict                 # status (as text) -> count, for requests that did not complete
    tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float


def stream_chat(url: str, model: str, max_tokens: int, timeout: float, prompt: str = PROMPT,
                api_key: str | None = None) -> RequestResult:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "stream": True, "ignore_eos": True, "temperature": 0.8,
                       "stream_options": {"include_usage": True}}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers=headers, method="POST")
    t0 = time.perf_counter()
    arrivals, tokens, finished, done = [], 0, False, False
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for raw in r:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        arrivals.append(time.perf_counter())
                    finished = finished or bool(choice.get("finish_reason"))
                usage = chunk.get("usage")
                if usage:
                    tokens = int(usage.get("completion_tokens", tokens))
            status = r.status
    except urllib.error.HTTPError as e:
        return RequestResult(e.code, False, 0, time.perf_counter() - t0, error=e.read()[:200].decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError) as e:
        return RequestResult(0, False, 0, time.perf_counter() - t0, error=str(e)[:200])
    gaps = list(np.diff(arrivals)) if len(arrivals) > 1 else []
    return RequestResult(status, finished and done, tokens or len(arrivals), time.perf_counter() - t0,
                         ttft=(arrivals[0] - t0) if arrivals else None, gaps=[float(g) for g in gaps])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, model: str, clients: int, requests: int, max_tokens: int, time_limit: float,
              api_key: str | None = None) -> Level:
    """`clients` threads, each sending up to `requests` requests one after another, none started
    after `time_limit` seconds; every request also has its own timeout."""
    results: list[RequestResult] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client():
        for _ in range(requests):
            if time.monotonic() > deadline:
                return
            r = stream_chat(url, model, max_tokens, timeout=max(30.0, time_limit), api_key=api_key)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 120)
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.complete and r.status == 200]
    errors: dict[str, int] = {}
    for r in results:
        if not (r.complete and r.status == 200):
            errors[str(r.status or "no response")] = errors.get(str(r.status or "no response"), 0) + 1
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    return Level(clients=clients, requests=len(results), complete=len(ok), errors=errors, tokens=tokens,
                 seconds=wall, tokens_per_s=tokens / wall if wall > 0 else 0.0,
                 ttft_p50=_pct(ttfts, 50), ttft_p95=_pct(ttfts, 95), itl_p50=_pct(gaps, 50), itl_p95=_pct(gaps, 95))


def write_outputs(levels: list[Level], meta: dict, outdir: Path, stem: str) -> list[Path]:
    from .bench import _atomic_write
    outdir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(lv) for lv in levels]
    js = outdir / f"{stem}.json"
    _atomic_write(js, json.dumps({**meta, "levels": rows}, indent=2))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    for r in rows:
        w.writerow({**r, "errors": json.dumps(r["errors"])})
    cs = outdir / f"{stem}.csv"
    _atomic_write(cs, buf.getvalue())
    png = outdir / f"{stem}.png"
    plot(levels, meta.get("model", ""), png)
    return [js, cs, png]


def plot(levels: list[Level], title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = [lv.clients for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(c, [lv.tokens_per_s for lv in levels], "o-")
    a.set_xlabel("concurrent clients"), a.set_ylabel("aggregate tokens/s"), a.set_title(f"throughput: {title}")
    b.plot(c, [lv.ttft_p50 for lv in levels], "o-", label="TTFT p50")
    b.plot(c, [lv.ttft_p95 for lv in levels], "o--", label="TTFT p95")
    b.plot(c, [lv.itl_p50 for lv in levels], "s-", label="ITL p50")
    b.plot(c, [lv.itl_p95 for lv in levels], "s--", label="ITL p95")
    b.set_xlabel("concurrent clients"), b.set_ylabel("seconds"), b.set_yscale("log"), b.legend(), b.set_title("latency")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def render(levels: list[Level], title: str, console) -> None:
    from rich.table import Table
    t = Table(title=title)
    for col in ("clients", "requests ok", "errors", "aggregate t/s", "TTFT p50 / p95 s", "ITL p50 / p95 ms"):
        t.add_column(col, justify="right")
    for lv in levels:
        errs = ", ".join(f"{k}: {v}" for k, v in lv.errors.items()) or "0"
        t.add_row(str(lv.clients), f"{lv.complete}/{lv.requests}", errs, f"{lv.tokens_per_s:.1f}",
                  f"{lv.ttft_p50:.2f} / {lv.ttft_p95:.2f}", f"{lv.itl_p50 * 1e3:.0f} / {lv.itl_p95 * 1e3:.0f}")
    console.print(t)
