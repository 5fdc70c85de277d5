#!/usr/bin/env bash
# The measurements in docs/distributed.md: the 2B-4T shape (I2_S, random ternary weights) over
# 1 host (local), 2 and 3 hosts (network namespaces on this machine, tests/netns_hosts.py),
# with 0 ms (direct), and 0, 1 and 5 ms of added round-trip delay through a relay.
# Run as root from the repository's top: bash docs/distributed/measure.sh
set -euo pipefail
out=docs/distributed
model=models/bench/2b4t-i2_s.gguf
[ -f "$model" ] || bitnet dummy --shape 2b4t -q i2_s -o "$model"
bench="bitnet bench -m $model -t 2 -p 128 -n 32 -r 3"

$bench --outdir "$out/runs/local"
for hosts in 2 3; do
    python tests/netns_hosts.py --hosts "$hosts" -t 2 -- $bench --rpc {workers} --outdir "$out/runs/h$hosts-direct"
    for delay in 0 1 5; do
        python tests/netns_hosts.py --hosts "$hosts" -t 2 --delay-ms "$delay" -- \
            $bench --rpc {workers} --outdir "$out/runs/h$hosts-d$delay"
    done
done
