#!/usr/bin/env bash
# What the metrics cost (docs/METRICS.md "Overhead"): llmdd_bench builds run
# in turn, the order rotated every round, on the 8-byte same-host READ and the
# 100,000 x 8 B same-host READ batch; prints the median p50 per build and the
# median (min-max) of the per-round ratios to the first build.
#
#   bench/metrics_overhead.sh [--rounds N] NAME=path/to/llmdd_bench ...
#
# The first build is the reference. For the figures in METRICS.md: a
# worktree of the commit with the first line of Engine::RecordEnd changed to
# `return;` (no metrics) first, then the commit itself. Each build:
#   cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMDD_BUILD_TESTS=OFF
#   cmake --build build -j2 --target llmdd_bench
# Run it on a machine as quiet as you can have it (as root: nice -n -15).
set -euo pipefail
rounds=12
if [ "${1:-}" = "--rounds" ]; then rounds=$2; shift 2; fi
[ $# -ge 2 ] || { echo "usage: $0 [--rounds N] NAME=llmdd_bench NAME=llmdd_bench ..." >&2; exit 2; }
names=(); bins=()
for a in "$@"; do
  names+=("${a%%=*}"); bins+=("${a#*=}")
  [ -x "${a#*=}" ] || { echo "$0: ${a#*=} is not an executable" >&2; exit 2; }
done
out=$(mktemp)
trap 'rm -f "$out"' EXIT
n=${#bins[@]}
for ((r = 0; r < rounds; ++r)); do
  for ((k = 0; k < n; ++k)); do
    i=$(( (k + r) % n ))
    # p50 of the 8 B READ and of the batch (0.5 s each), then the batch's
    # throughput over 2 s (its p50 rests on ~80 calls: the rate is steadier).
    "${bins[$i]}" engine --transport shm --points 8:1:1,8:100000:1 --ops read --time 0.5 2>/dev/null |
      awk -v n="${names[$i]}" -v r="$r" '$1=="engine"{print r, n, "p50_us_batch" $5, $10}' >> "$out"
    "${bins[$i]}" engine --transport shm --points 8:100000:1 --ops read --time 2 2>/dev/null |
      awk -v n="${names[$i]}" -v r="$r" '$1=="engine"{print r, n, "us_per_Mdesc", 1/$9}' >> "$out"
  done
done
python3 - "$out" "${names[@]}" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(lambda: collections.defaultdict(dict))
for line in open(sys.argv[1]):
    r, name, point, value = line.split()
    rows[point][name][int(r)] = float(value)
names = sys.argv[2:]
ref = names[0]
labels = {"p50_us_batch1": "8 B READ p50 (us)", "p50_us_batch100000": "100,000 x 8 B READ p50 (us)",
          "us_per_Mdesc": "100,000 x 8 B READ, s per 10^6 descriptors"}
for point, label in labels.items():
    if point not in rows:
        continue
    print(f"# {label}")
    for name in names:
        values = rows[point][name]
        line = f"  {name:>10}: median {statistics.median(values.values()):.4g}"
        if name != ref:
            ratios = [values[r] / rows[point][ref][r] for r in values if r in rows[point][ref]]
            line += f"  {name}/{ref} {statistics.median(ratios):.3f} [{min(ratios):.2f}-{max(ratios):.2f}]"
        print(line)
PY
