#!/usr/bin/env bash
# bench/compare.sh: measure this host's references and our engine in one run,
# and print each of our figures as a ratio to its reference, with PASS/MISS
# against the project's performance targets (docs/PERFORMANCE.md).
#
#   bench/compare.sh [--quick] [--runs N] [--no-install] [--no-plot] [--build-dir DIR]
#
# From a clean clone: builds llmdd_bench (Release, own build dir), installs the
# reference tools when run as root (apt: iperf3 ucx-utils gnuplot-nox; pip, in
# a virtual environment under the build dir: mooncake-transfer-engine-non-cuda,
# nixl-cu12), then runs N interleaved rounds (default 5, --quick 3) of:
#   memcpy       llmdd_bench memcpy (single/two threads, hot and cold)
#   engine       llmdd_bench engine, llmdd.Transport=tcp and shm
#   kv           llmdd_bench kv, PullKvBlocks/PushKvBlocks of 4,096 scattered 16 KiB pieces (shm, tcp)
#   pingpong     llmdd_bench pingpong (raw TCP, 8 B, blocking and busy-polling)
#   overhead     llmdd_bench overhead (registration, planning, per-descriptor cost)
#   iperf3       single TCP stream over loopback, 1 MiB writes (-l 1M)
#   ucx_perftest ucp_get and tag_bw over TCP (UCX_TLS=tcp, UCX_NET_DEVICES=lo), 1 MiB
#   mooncake     Mooncake Transfer Engine, TCP, P2P handshake: 64 KiB x 128, 1 MiB x 128
#   nixl         NIXL, UCX backend over TCP: same points
# and reports medians over the rounds. A tool that cannot be installed or run
# is reported as SKIPPED; no number is ever made up. Raw JSON lines go to
# <build-dir>/results/<date>.jsonl, the report to <date>-report.txt; a full
# run (not --quick, not --no-plot) also plots an engine and a kv sweep with
# gnuplot: <date>-engine.png, <date>-kv.png and their -latency.png.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
RUNS=""
QUICK=0
INSTALL=1
PLOT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-plot) PLOT=0 ;;
    --build-dir) BUILD="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    -h|--help) sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$RUNS" ]; then RUNS=$([ $QUICK = 1 ] && echo 3 || echo 5); fi
if [ $QUICK = 1 ]; then
  T=0.15; IPERF_T=1; UCX_N=300; PEER_T=0.7; PLOT=0
else
  T=0.5; IPERF_T=3; UCX_N=1000; PEER_T=2
fi

STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="$BUILD/results"
RAW="$RESULTS/$STAMP.jsonl"
REPORT="$RESULTS/$STAMP-report.txt"
LOG="$RESULTS/$STAMP.log"
VENV="$BUILD/venv-peers"
mkdir -p "$RESULTS"
: > "$RAW"
: > "$LOG"

say() { echo "[compare] $*" >&2; echo "[compare] $*" >> "$LOG"; }

# Processes we start in the background, ended by their ids on exit.
BG_PIDS=()
cleanup() {
  for p in "${BG_PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
}
trap cleanup EXIT

# A record saying a reference is not available (the report prints SKIPPED).
skip() {  # skip MODE TEXT
  python3 -c 'import json,sys; print(json.dumps({"mode": sys.argv[1], "skipped": sys.argv[2]}))' "$1" "$2" >> "$RAW"
  say "SKIPPED $1: $2"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------- setup
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && [ $INSTALL = 1 ]; then
    apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null 2>&1
  fi
  command -v python3 >/dev/null 2>&1 || { echo "compare.sh needs python3 for the report" >&2; exit 1; }
fi

say "building llmdd_bench in $BUILD"
if ! { cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLMDD_BUILD_TESTS=OFF >> "$LOG" 2>&1 &&
       cmake --build "$BUILD" -j2 --target llmdd_bench >> "$LOG" 2>&1; }; then
  echo "compare.sh: build failed, see $LOG" >&2
  exit 1
fi
BENCH="$BUILD/tools/llmdd_bench"

APT_UPDATED=0
apt_install() {  # apt_install PACKAGE COMMAND
  command -v "$2" >/dev/null 2>&1 && return 0
  [ $INSTALL = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq >> "$LOG" 2>&1; APT_UPDATED=1; fi
  say "apt-get install $1"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >> "$LOG" 2>&1
  command -v "$2" >/dev/null 2>&1
}
HAVE_IPERF=0; HAVE_UCX=0
apt_install iperf3 iperf3 && HAVE_IPERF=1
apt_install ucx-utils ucx_perftest && HAVE_UCX=1
[ $PLOT = 1 ] && { apt_install gnuplot-nox gnuplot || say "gnuplot not available (apt-get install gnuplot-nox, as root): no plots"; }

# Python peers: one virtual environment with both wheels (pip, PyPI only).
PY="$VENV/bin/python"
HAVE_MOONCAKE=0; HAVE_NIXL=0
if [ ! -x "$PY" ] && [ $INSTALL = 1 ]; then
  if ! python3 -m venv "$VENV" >> "$LOG" 2>&1; then
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      [ $APT_UPDATED = 0 ] && { apt-get update -qq >> "$LOG" 2>&1; APT_UPDATED=1; }
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >> "$LOG" 2>&1
      python3 -m venv "$VENV" >> "$LOG" 2>&1 || rm -rf "$VENV"
    fi
  fi
fi
if [ -x "$PY" ]; then
  if ! "$PY" -c 'import mooncake.engine' >/dev/null 2>&1 && [ $INSTALL = 1 ]; then
    say "pip install mooncake-transfer-engine-non-cuda"
    "$PY" -m pip install -q mooncake-transfer-engine-non-cuda >> "$LOG" 2>&1
  fi
  "$PY" -c 'import mooncake.engine' >/dev/null 2>&1 && HAVE_MOONCAKE=1
  if ! "$PY" -c 'import nixl_cu12._api' >/dev/null 2>&1 && [ $INSTALL = 1 ]; then
    # nixl-cu12 declares torch as a dependency but host-memory transfers do not
    # use it: install without dependencies, plus numpy which the API imports.
    say "pip install --no-deps nixl-cu12 (+ numpy)"
    "$PY" -m pip install -q numpy >> "$LOG" 2>&1
    "$PY" -m pip install -q --no-deps nixl-cu12 >> "$LOG" 2>&1
  fi
  "$PY" -c 'import nixl_cu12._api' >/dev/null 2>&1 && HAVE_NIXL=1
fi

# ---------------------------------------------------------------- measurements
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
say "host: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), load $LOAD_BEFORE"
say "$RUNS rounds, ${T}s per point; raw results: $RAW"

bench() {  # bench TAG ARGS...: llmdd_bench with JSON lines appended to $RAW
  local tag="$1"; shift
  "$BENCH" "$@" --json --json-out "$RAW" --tag "$tag" > /dev/null 2>> "$LOG" || say "llmdd_bench $1 exited with $? (see $LOG)"
}

run_iperf() {  # run_iperf ROUND
  local port out
  port="$(free_port)"
  iperf3 -s -1 -p "$port" > /dev/null 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  sleep 0.3
  out="$(iperf3 -c 127.0.0.1 -p "$port" -l 1M -t "$IPERF_T" -J 2>> "$LOG")"
  wait "$spid" 2>/dev/null
  echo "$out" | python3 -c '
import json, os, sys
try:
    d = json.load(sys.stdin)
    bps = d["end"]["sum_received"]["bits_per_second"]
    print(json.dumps({"mode": "iperf3", "op": "stream", "transport": "tcp", "desc_size": 1048576, "threads": 1,
                      "gbps": bps / 8 / 1e9, "seconds": d["end"]["sum_received"]["seconds"],
                      "load1": os.getloadavg()[0], "tag": sys.argv[1]}))
except Exception as e:
    print(json.dumps({"mode": "iperf3", "error": "cannot parse iperf3 output: %s" % e, "tag": sys.argv[1]}))
' "round=$1" >> "$RAW"
}

run_ucx() {  # run_ucx ROUND TEST
  local port out
  port="$(free_port)"
  UCX_TLS=tcp UCX_NET_DEVICES=lo timeout 120 ucx_perftest -p "$port" > /dev/null 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  sleep 0.5
  out="$(UCX_TLS=tcp UCX_NET_DEVICES=lo timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t "$2" -s 1048576 \
         -n "$UCX_N" -w 20 2>> "$LOG")"
  wait "$spid" 2>/dev/null
  # "Final: iters p50 lat_avg lat_overall bw_avg bw_overall rate_avg rate_overall"; bandwidth in MiB/s.
  echo "$out" | python3 -c '
import json, os, sys
rec = {"mode": "ucx_perftest", "op": sys.argv[2], "transport": "tcp", "desc_size": 1048576, "batch": 1,
       "threads": 1, "tag": sys.argv[1], "load1": os.getloadavg()[0]}
for line in sys.stdin:
    w = line.split()
    if w and w[0] == "Final:":
        rec.update({"iters": int(w[1]), "p50_us": float(w[2]), "gbps": float(w[6]) * 1048576 / 1e9})
        break
else:
    rec["error"] = "no Final line from ucx_perftest"
print(json.dumps(rec))
' "round=$1" "$2" >> "$RAW"
}

run_peer() {  # run_peer ROUND SCRIPT ARGS...
  local round="$1" script="$2"; shift 2
  local out rc
  out="$(cd "$ROOT" && timeout 300 "$PY" "bench/peers/$script" --time "$PEER_T" "$@" 2>> "$LOG")"
  rc=$?
  echo "$out" | python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if line.startswith("{"):
        d = json.loads(line)
        d["tag"] = sys.argv[1]
        print(json.dumps(d))
' "round=$round" >> "$RAW"
  [ $rc = 0 ] || say "$script exited with $rc"
}

KV_ARGS=(--layers 16 --blocks 512 --block-bytes 16K --kv-blocks 128 --kv-pattern scattered --threads 1)
ENGINE_POINTS="1M:64:1,1M:64:2,64K:128:1,8:1:1,1M:1:1"
MEMCPY_POINTS="1M:64:1,1M:64:2,64K:128:1,16K:4096:1,8:1:1,1M:1:1"
START=$(date +%s)
for r in $(seq 1 "$RUNS"); do
  tag="round=$r"
  say "round $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
  bench "$tag" memcpy --points "$MEMCPY_POINTS" --ops hot,cold --time "$T"
  bench "$tag" engine --transport tcp,shm --points "$ENGINE_POINTS" --ops read,write --time "$T"
  # Diagnostic: the same 64 MiB calls on one lane (no split across connections/worker threads):
  # what one core does, against the default figure where one call already uses both cores.
  bench "$tag" engine --transport tcp,shm --points 1M:64:1 --ops read,write --connections 1 --time "$T"
  bench "$tag" kv --transport shm,tcp "${KV_ARGS[@]}" --ops pull,push --time "$T"
  bench "$tag" pingpong --time 1
  bench "$tag" overhead --transport tcp,shm
  if [ $HAVE_IPERF = 1 ]; then run_iperf "$r"; elif [ "$r" = 1 ]; then skip iperf3 "iperf3 is not installed (apt-get install iperf3, as root)"; fi
  if [ $HAVE_UCX = 1 ]; then
    run_ucx "$r" ucp_get
    run_ucx "$r" tag_bw
  elif [ "$r" = 1 ]; then
    skip ucx_perftest "ucx_perftest is not installed (apt-get install ucx-utils, as root)"
  fi
  if [ $HAVE_MOONCAKE = 1 ]; then run_peer "$r" mooncake_peer.py --points 65536:128,1048576:128
  elif [ "$r" = 1 ]; then skip mooncake "the mooncake-transfer-engine-non-cuda wheel is not installed (run as root, or pip install it into $VENV)"; fi
  if [ $HAVE_NIXL = 1 ]; then run_peer "$r" nixl_peer.py --points 65536:128,1048576:128 --ucx-tls tcp
  elif [ "$r" = 1 ]; then skip nixl "the nixl-cu12 wheel is not installed (run as root, or pip install --no-deps nixl-cu12 numpy into $VENV)"; fi
done
if [ $PLOT = 1 ]; then
  # Sweeps for the plots (not part of the report): GB/s and time per call
  # against the descriptor size (engine) and the blocks per call (kv); each
  # writes NAME.png and NAME-latency.png (docs/PERFORMANCE.md, "Plots").
  say "engine and kv sweeps for the plots"
  "$BENCH" engine --transport tcp,shm --batches 64 --threads 1 --time 0.2 --plot "$RESULTS/$STAMP-engine.png" \
    --json-out "$RESULTS/$STAMP-sweep.jsonl" --tag sweep > "$RESULTS/$STAMP-sweep.txt" 2>> "$LOG" ||
    say "engine sweep exited with $?"
  "$BENCH" kv --transport shm,tcp --threads 1 --time 0.2 --plot "$RESULTS/$STAMP-kv.png" \
    --json-out "$RESULTS/$STAMP-sweep.jsonl" --tag sweep >> "$RESULTS/$STAMP-sweep.txt" 2>> "$LOG" ||
    say "kv sweep exited with $?"
  grep -h '^plot:' "$RESULTS/$STAMP-sweep.txt" >&2
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
ELAPSED=$(( $(date +%s) - START ))

python3 "$ROOT/bench/compare_report.py" "$RAW" --runs "$RUNS" --load-before "$LOAD_BEFORE" \
  --load-after "$LOAD_AFTER" --elapsed "$ELAPSED" | tee "$REPORT"
echo "raw JSON lines: $RAW" >&2
echo "report: $REPORT" >&2
