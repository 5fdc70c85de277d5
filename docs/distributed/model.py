"""The tables of docs/distributed.md: the measured runs, and the on-paper model fitted to them.

    python docs/distributed/model.py docs/distributed/runs

reads every bench JSON under the runs folder (written by docs/distributed/measure.sh), prints
the measured table and the projection as Markdown, and writes docs/distributed/scaling.json,
.csv and .png.

The model, for one stream and a layer split over N hosts (the client sends each token's hidden
state to the first worker, fetches it back, sends it to the next, ...):

    time per token = weights read per token / (host bandwidth x efficiency)
                   + N x (round-trip time + per-hop overhead + hidden state bytes / network bandwidth)

The hosts compute one after another (one stream has nothing to overlap), so splitting does not
make a token faster: it makes a model fit, at the price of N round trips per token. The
efficiency and the per-hop overhead are fitted to the measured runs.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bitnet_tools.dummy import SHAPES  # noqa: E402

HERE = Path(__file__).parent
HOST_BW = 46e9          # this machine's streaming read bandwidth with 2 threads (bytes/s), measured
I2_S_BYTES = 2 / 8      # bytes per ternary weight
Q6_K_BYTES = 6.5625 / 8  # the output head's type
NET_BW = 10e9 / 8       # 10 Gbit/s Ethernet, for the projection


def weight_bytes(shape) -> float:
    """Bytes read per generated token: every ternary linear once, and the Q6_K output head."""
    kv = shape.n_embd * shape.n_head_kv // shape.n_head
    per_layer = 2 * shape.n_embd * shape.n_embd + 2 * shape.n_embd * kv + 3 * shape.n_embd * shape.n_ff
    return shape.n_layer * per_layer * I2_S_BYTES + shape.n_vocab * shape.n_embd * Q6_K_BYTES


def read_runs(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*/*.json")):
        name = path.parent.name                 # local, h2-direct, h2-d0, h2-d1, h3-d5 ...
        hosts = 1 if name == "local" else int(name.split("-")[0][1:])
        via = "direct" if name in ("local",) or name.endswith("direct") else "relay"
        delay = 0.0 if via == "direct" else float(name.rsplit("-d", 1)[1])
        doc = json.loads(path.read_text())
        tps = {r["test"][:2]: (r["tps_mean"], r["tps_sd"]) for r in doc["results"]}
        rows.append({"hosts": hosts, "path": via, "added_rtt_ms": delay, "pp128": tps["pp"][0],
                     "pp128_sd": tps["pp"][1], "tg32": tps["tg"][0], "tg32_sd": tps["tg"][1],
                     "command": doc["command"]})
    return sorted(rows, key=lambda r: (r["hosts"], r["path"] != "direct", r["added_rtt_ms"]))


def fit(rows: list[dict]) -> dict:
    """Efficiency from the local run; per-hop overhead of the direct and the relayed path from
    least squares of (t - t_local) / N - added RTT over the runs of each path."""
    local = next(r for r in rows if r["hosts"] == 1)
    t_local = 1 / local["tg32"]
    w = weight_bytes(SHAPES["2b4t"])
    out = {"efficiency": w / t_local / HOST_BW, "t_local_ms": 1e3 * t_local}
    for path in ("direct", "relay"):
        hops = [((1 / r["tg32"] - t_local) / r["hosts"] - r["added_rtt_ms"] / 1e3) for r in rows
                if r["hosts"] > 1 and r["path"] == path]
        out[f"hop_overhead_ms_{path}"] = 1e3 * sum(hops) / len(hops) if hops else float("nan")
    return out


def project(params: dict, host_mem_gb: float, rtt_ms: float, n_hosts: int, shape: str) -> float:
    s = SHAPES[shape]
    compute = weight_bytes(s) / (HOST_BW * params["efficiency"])
    hop = rtt_ms / 1e3 + params["hop_overhead_ms_direct"] / 1e3 + 4 * s.n_embd / NET_BW
    return 1 / (compute + n_hosts * hop)


def main() -> int:
    rows = read_runs(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "runs")
    if not rows:
        print("no runs: run docs/distributed/measure.sh first", file=sys.stderr)
        return 1
    params = fit(rows)
    print("| hosts | path | added RTT (ms) | pp128 t/s | tg32 t/s | tg vs local |")
    print("|---|---|---|---|---|---|")
    local_tg = next(r["tg32"] for r in rows if r["hosts"] == 1)
    for r in rows:
        print(f"| {r['hosts']} | {r['path']} | {r['added_rtt_ms']:g} | {r['pp128']:.1f} ± {r['pp128_sd']:.1f} "
              f"| {r['tg32']:.1f} ± {r['tg32_sd']:.1f} | {r['tg32'] / local_tg:.2f} |")
    print(f"\nfitted: efficiency {params['efficiency']:.2f} of {HOST_BW / 1e9:.0f} GB/s; per-hop overhead "
          f"{params['hop_overhead_ms_direct']:.3f} ms direct, {params['hop_overhead_ms_relay']:.3f} ms through the relay")

    projection = []
    print("\n| shape | GB read per token | host memory | hosts | RTT 0.1 ms | RTT 1 ms | RTT 5 ms |")
    print("|---|---|---|---|---|---|---|")
    for shape in ("30b", "100b"):
        gb = weight_bytes(SHAPES[shape]) / 1e9
        for mem in (8, 16, 32):
            need = math.ceil(gb / (0.8 * mem))  # 20 % of each host for KV cache, buffers, the OS
            for n in sorted({max(need, 1), max(need, 1) + 1}):
                tps = [project(params, mem, rtt, n, shape) for rtt in (0.1, 1, 5)]
                projection.append({"shape": shape, "gb_per_token": gb, "host_mem_gb": mem, "hosts": n,
                                   "tg_rtt_0.1ms": tps[0], "tg_rtt_1ms": tps[1], "tg_rtt_5ms": tps[2]})
                print(f"| {shape} | {gb:.1f} | {mem} GB | {n} | " + " | ".join(f"{t:.1f}" for t in tps) + " |")

    (HERE / "scaling.json").write_text(json.dumps({"measured": rows, "fit": params, "projection": projection,
                                                   "host_bw": HOST_BW, "net_bw": NET_BW}, indent=2))
    with open(HERE / "scaling.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "command"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, HERE / "scaling.png")
    return 0


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("pp128", "tg32")):
        local = next(r[key] for r in rows if r["hosts"] == 1)
        ax.axhline(local, color="gray", linestyle="--", label="1 host (local)")
        for hosts in sorted({r["hosts"] for r in rows if r["hosts"] > 1}):
            pts = [(r["added_rtt_ms"], r[key]) for r in rows if r["hosts"] == hosts and r["path"] == "relay"]
            ax.plot(*zip(*pts), marker="o", label=f"{hosts} hosts (relay)")
        ax.set_xlabel("added round-trip delay (ms)")
        ax.set_ylabel("tokens/s")
        ax.set_title(f"2B-4T I2_S, {key}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
