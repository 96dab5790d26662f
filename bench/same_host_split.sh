#!/bin/bash
# Same-host figures of two builds side by side (issue 11's same-host rows):
# each round runs the references (memcpy on 1 and 2 threads, raw
# process_vm_readv) once and both builds' engine and KV points, the builds'
# order swapped every round (a build that always ran right after the other's
# 1 GiB KV run measured 40% slower WRITEs: an order artefact, not the build).
#   OLD=/path/old/build NEW=/path/new/build ROUNDS=8 T=0.3 bench/same_host_split.sh
#   python3 bench/same_host_split_report.py $OUT
# Each build: cmake -DLLMDD_BUILD_TESTS=OFF, --target llmdd_bench. JSON lines to $OUT.
set -u
OUT=${OUT:-same_host_split.jsonl}; ROUNDS=${ROUNDS:-5}; T=${T:-0.3}
OLD=${OLD:?the old build directory}; NEW=${NEW:?the new build directory}
: > "$OUT"
KV=(--layers 32 --blocks 512 --block-bytes 32K --kv-blocks 256 --kv-pattern scattered --threads 1)
for r in $(seq 1 $ROUNDS); do
  order="old new"; [ $((r % 2)) = 0 ] && order="new old"  # neither build always runs after the other's kv
  for b in $order; do
    if [ $b = old ]; then B=$OLD/tools/llmdd_bench; else B=$NEW/tools/llmdd_bench; fi
    [ $b = ${order%% *} ] && $B memcpy --points 64M:1:1,64M:1:2,1M:64:1,1M:64:2 --ops hot --time $T --json --tag "r$r ref" --no-progress 2>/dev/null >> "$OUT"
    [ $b = ${order%% *} ] && $B cma --points 1M:1:1 --ops read --time $T --json --tag "r$r ref" --no-progress 2>/dev/null >> "$OUT"
    $B engine --transport shm --points 64M:1:1,1M:64:1,1M:1:1,4M:1:1 --ops read,write --time $T --json --tag "r$r $b" --no-progress 2>/dev/null >> "$OUT"
    $B kv --transport shm "${KV[@]}" --ops pull,memcpy --time $T --json --tag "r$r $b" --no-progress 2>/dev/null >> "$OUT"
  done
  echo "round $r done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)" >&2
done
