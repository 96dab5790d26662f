#!/usr/bin/env bash
# bench/compare.sh: measure this host's references and our engine in one run,
# pair each figure of ours with a reference measured in the same round, and
# print the ratios with PASS/MISS against the targets (docs/PERFORMANCE.md,
# "bench/compare.sh"). A comparison that can fail: the exit status is 1 when
# a target is MISS or a figure of ours failed (a failed call, or bytes that
# did not arrive: llmdd_bench checks the first and last call of every point).
#
#   bench/compare.sh [--quick] [--runs N] [--no-install] [--no-plot] [--no-fail]
#                    [--build-dir DIR] [--bench PATH] [--only LIST] [--slow-engine MS]
#
#   --quick           one round of every family with short points, a smaller KV cache and short
#                     timeouts: under ~2 minutes on 2 cpus, for tests (checks the mechanism, not a result)
#   --runs N          rounds (default 5, --quick 1); every round measures every family below
#   --no-install      do not install missing reference tools (they are SKIPPED)
#   --no-plot         no engine sweep and plot at the end
#   --no-fail         exit 0 whatever the verdicts (exploratory runs); the report is the same
#   --build-dir DIR   where llmdd_bench is built and results go (default build-bench/)
#   --bench PATH      use this llmdd_bench instead of building one (the tests do)
#   --only LIST       families to run, comma-separated (default all):
#                     memcpy,cma,engine,kv,pingpong,overhead,iperf3,ucx,mooncake,nixl
#   --slow-engine MS  slow the engine on purpose: every read and write on its connections first
#                     sleeps MS ms (LLMDD_FAULT_INJECTION=delay=1:MS in both llmdd_bench processes);
#                     the run must then report MISS and exit 1 (bench/compare_test.sh checks it does)
#
# Exit status: 0 no target MISS and nothing of ours failed; 1 a target MISS or
# a failure of ours; 2 bad arguments; 3 setup failed (build, python3).
#
# From a clean clone: builds llmdd_bench (Release, own build dir), installs the
# reference tools when run as root (apt: iperf3 ucx-utils gnuplot-nox; pip, in
# a virtual environment under the build dir: mooncake-transfer-engine-non-cuda,
# nixl-cu12), then runs N interleaved rounds of:
#   memcpy   llmdd_bench memcpy: 1 MiB x 64 on 1 and on all-core threads, 1 MiB x 1, 64 KiB x 128
#   cma      llmdd_bench cma: raw process_vm_readv/writev with a child, 8 B, 1 MiB x 1, 1 MiB x 64
#   engine   llmdd_bench engine, tcp and shm, default lanes, then 1 lane (1 MiB x 64)
#   kv       llmdd_bench kv: PullKvBlocks/PushKvBlocks (shm, tcp) and memcpy of the same pieces;
#            the shm pull again with MallocMem caches (--mallocmem: the reader maps them)
#   pingpong llmdd_bench pingpong: raw TCP 8 B round trip, blocking and busy-polling
#   overhead llmdd_bench overhead: planning, per-descriptor submit cost, registration
#   iperf3   loopback, -l 1M, -P 1 and -P <lanes>
#   ucx      ucx_perftest over tcp (tag_bw and ucp_put_bw at 64 MiB and 1 MiB, ucp_get 1 MiB as
#            information) and on the same host (ucp_get/ucp_put_bw over posix and over cma, tag_bw
#            over cma; a run whose lanes lack the transport it is named after is "not measured")
#   mooncake Mooncake's own transfer_engine_bench (tcp, read, 1 thread, 64 KiB x 128, 1 MiB x 64) when
#            installed ($MOONCAKE_TE_BENCH, PATH, or the wheel's, in the venv below), else "not
#            measured"; and its Python API driven by bench/peers/mooncake_peer.py (information)
#            and our engine over UCX (llmdd.Transport=ucx, 1 MiB READ/WRITE, UCX_TLS=tcp and sm,tcp)
#            against UCX's own get/put on ucp_mem_map'ed user memory (llmdd_ucx_ref, bench/ucx_ref.cc;
#            built with the UCX transport, else "not measured")
#   nixl     NIXL, UCX backend over TCP: same points
# A reference that cannot be installed or run reads "not measured" (its rows
# SKIPPED), with the reason; no number is
# ever made up. Raw JSON lines go to <build-dir>/results/<date>.jsonl, the
# report to <date>-report.txt, the tools' output to <date>.log; a full run
# (not --quick, not --no-plot) also plots an engine and a kv sweep with
# gnuplot: <date>-engine.png, <date>-kv.png and their -latency.png.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build-bench"
RUNS=""
QUICK=0
INSTALL=1
PLOT=1
FAIL=1
BENCH=""
ONLY="memcpy,cma,engine,kv,pingpong,overhead,iperf3,ucx,mooncake,nixl"
SLOW=""
usage_error() { echo "compare.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --runs) [ $# -ge 2 ] || usage_error "--runs needs a value"; RUNS="$2"; shift ;;
    --no-install) INSTALL=0 ;;
    --no-plot) PLOT=0 ;;
    --no-fail) FAIL=0 ;;
    --build-dir) [ $# -ge 2 ] || usage_error "--build-dir needs a value"
                 mkdir -p "$2" && BUILD="$(cd "$2" && pwd)" || usage_error "cannot use $2"; shift ;;
    --bench) [ $# -ge 2 ] || usage_error "--bench needs a value"; BENCH="$2"; shift ;;
    --only) [ $# -ge 2 ] || usage_error "--only needs a value"; ONLY="$2"; shift ;;
    --slow-engine) [ $# -ge 2 ] || usage_error "--slow-engine needs a value"; SLOW="$2"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) usage_error "unknown option $1" ;;
  esac
  shift
done
case "$RUNS" in ''|*[!0-9]*) [ -z "$RUNS" ] || usage_error "--runs needs a number" ;; esac
case "$SLOW" in ''|*[!0-9]*) [ -z "$SLOW" ] || usage_error "--slow-engine needs milliseconds" ;; esac
for f in ${ONLY//,/ }; do
  case "$f" in memcpy|cma|engine|kv|pingpong|overhead|iperf3|ucx|mooncake|nixl) ;;
    *) usage_error "--only: unknown family '$f'" ;; esac
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }
if [ -z "$RUNS" ]; then RUNS=$([ $QUICK = 1 ] && echo 1 || echo 5); fi
[ "$RUNS" -ge 1 ] || usage_error "--runs needs at least 1"

# The engine's lanes per peer: llmdd.TcpConnections, whose library default is 4
# (src/engine/engine_config.h). A call of >= 1 MiB is split into one part per
# lane and the parts are copied at once by as many threads, so on this host
# the engine's bulk calls use min(lanes, cpus) cores: memcpy is measured on as
# many threads ("all-core", the target's reference) and on one (information).
LANES=4
NPROC=$(nproc)
ALLCORE=$(( LANES < NPROC ? LANES : NPROC ))
if [ $QUICK = 1 ]; then
  # Short enough that one round of every family takes under ~2 minutes on 2 cpus
  # (UCX's emulated RMA over tcp is the slowest: its timeout bounds it).
  T=0.15; IPERF_T=1; UCX_BYTES=$((128 << 20)); UCX_TIMEOUT=10; PEER_T=0.5; TE_T=1; PP_T=0.3; PLOT=0
  POOL=256M  # cold memcpy's pool per side: still 4 calls of 64 MiB, less to fault in
  # 8 tensors x 512 blocks x 32 KiB per side; each call moves 256 scattered blocks: 64 MiB.
  KV_ARGS=(--layers 4 --blocks 512 --block-bytes 32K --kv-blocks 256 --kv-pattern scattered --threads 1)
  KV_LAYERS=4
else
  T=0.5; IPERF_T=3; UCX_BYTES=$((2 << 30)); UCX_TIMEOUT=60; PEER_T=2; TE_T=3; PP_T=1
  POOL=512M
  # Issue 11's shape: 32 layers x (K,V) = 64 tensors of 512 blocks x 32 KiB (1 GiB per side);
  # each call moves 256 scattered blocks of every tensor: 16,384 pieces, 512 MiB.
  KV_ARGS=(--layers 32 --blocks 512 --block-bytes 32K --kv-blocks 256 --kv-pattern scattered --threads 1)
  KV_LAYERS=32
fi
KV_BLOCKS=256

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
  command -v python3 >/dev/null 2>&1 || { echo "compare.sh needs python3 for the report" >&2; exit 3; }
fi

if [ -n "$BENCH" ]; then
  [ -x "$BENCH" ] || { echo "compare.sh: --bench $BENCH is not an executable" >&2; exit 3; }
  say "using $BENCH (not built here)"
else
  say "building llmdd_bench in $BUILD"
  if ! { cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLMDD_BUILD_TESTS=OFF >> "$LOG" 2>&1 &&
         cmake --build "$BUILD" -j2 --target llmdd_bench >> "$LOG" 2>&1; }; then
    echo "compare.sh: build failed, see $LOG" >&2
    exit 3
  fi
  BENCH="$BUILD/tools/llmdd_bench"
  # UCX's own get/put on mapped user memory (bench/ucx_ref.cc): built only where
  # the library is built with UCX; without it the ucx family's engine pairs
  # read "not measured".
  if want ucx && ! cmake --build "$BUILD" -j2 --target llmdd_ucx_ref >> "$LOG" 2>&1; then
    say "llmdd_ucx_ref not built (no UCX in this build): our engine over UCX is not measured"
  fi
fi
UCX_REF="$(dirname "$BENCH")/llmdd_ucx_ref"

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
want iperf3 && apt_install iperf3 iperf3 && HAVE_IPERF=1
want ucx && apt_install ucx-utils ucx_perftest && HAVE_UCX=1
want engine || PLOT=0
[ $PLOT = 1 ] && { apt_install gnuplot-nox gnuplot || say "gnuplot not available (bash scripts/setup.sh bench): no plots"; }

# Python peers: one virtual environment with both wheels (pip, PyPI only).
PY="$VENV/bin/python"
HAVE_MOONCAKE=0; HAVE_NIXL=0
if { want mooncake || want nixl; } && [ ! -x "$PY" ] && [ $INSTALL = 1 ]; then
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
  if want mooncake; then
    if ! "$PY" -c 'import mooncake.engine' >/dev/null 2>&1 && [ $INSTALL = 1 ]; then
      say "pip install mooncake-transfer-engine-non-cuda"
      "$PY" -m pip install -q mooncake-transfer-engine-non-cuda >> "$LOG" 2>&1
    fi
    "$PY" -c 'import mooncake.engine' >/dev/null 2>&1 && HAVE_MOONCAKE=1
  fi
  if want nixl; then
    if ! "$PY" -c 'import nixl_cu12._api' >/dev/null 2>&1 && [ $INSTALL = 1 ]; then
      # nixl-cu12 declares torch as a dependency but host-memory transfers do not
      # use it: install without dependencies, plus numpy which the API imports.
      say "pip install --no-deps nixl-cu12 (+ numpy)"
      "$PY" -m pip install -q numpy >> "$LOG" 2>&1
      "$PY" -m pip install -q --no-deps nixl-cu12 >> "$LOG" 2>&1
    fi
    "$PY" -c 'import nixl_cu12._api' >/dev/null 2>&1 && HAVE_NIXL=1
  fi
fi

# Mooncake's own benchmark, transfer_engine_bench (a program of Mooncake's
# repository; the mooncake-transfer-engine wheel installs it as a command):
# only when it is installed, never a number from elsewhere.
TE_BENCH=""
if want mooncake; then
  for c in "${MOONCAKE_TE_BENCH:-}" "$(command -v transfer_engine_bench 2>/dev/null)" "$VENV/bin/transfer_engine_bench"; do
    if [ -n "$c" ] && [ -x "$c" ]; then TE_BENCH="$c"; break; fi
  done
fi

# ---------------------------------------------------------------- measurements
# The slowed engine: the library's own fault injection (src/transport/
# fault_injection.h) sleeping before every read and write on the engine's
# connections, in both llmdd_bench processes (the peer inherits the
# environment). Only the modes that run the engine get it.
ENGINE_ENV=()
SLOW_TEXT=""
if [ -n "$SLOW" ]; then
  ENGINE_ENV=(env "LLMDD_FAULT_INJECTION=delay=1:$SLOW")
  SLOW_TEXT="LLMDD_FAULT_INJECTION=delay=1:$SLOW"
  say "ENGINE SLOWED ON PURPOSE: $SLOW_TEXT (this run must report MISS)"
fi

tool_version() {  # the version of each reference, for the record
  case "$1" in
    iperf3) iperf3 --version 2>/dev/null | head -1 ;;
    ucx) ucx_info -v 2>/dev/null | sed -n 's/^# Version //p' | head -1 ;;
    mooncake) "$PY" -m pip show mooncake-transfer-engine-non-cuda 2>/dev/null | sed -n 's/^Version: //p' ;;
    te_bench) echo "$TE_BENCH" ;;
    nixl) "$PY" -m pip show nixl-cu12 2>/dev/null | sed -n 's/^Version: //p' ;;
  esac
}
python3 - "$LANES" "$ALLCORE" "$NPROC" "$KV_BLOCKS" "$KV_LAYERS" "$QUICK" "$RUNS" "$ONLY" "$SLOW_TEXT" \
  "$([ $HAVE_IPERF = 1 ] && tool_version iperf3)" "$([ $HAVE_UCX = 1 ] && tool_version ucx)" \
  "$([ $HAVE_MOONCAKE = 1 ] && tool_version mooncake)" "$([ $HAVE_NIXL = 1 ] && tool_version nixl)" \
  "$([ -n "$TE_BENCH" ] && tool_version te_bench)" >> "$RAW" <<'EOF'
import json, sys
a = sys.argv[1:]
rec = {"mode": "meta", "lanes": int(a[0]), "allcore_threads": int(a[1]), "nproc": int(a[2]), "kv_blocks": int(a[3]),
       "kv_layers": int(a[4]), "quick": a[5] == "1", "runs": int(a[6]), "only": a[7],
       "tools": {"iperf3": a[9], "ucx": a[10], "mooncake": a[11], "nixl": a[12], "transfer_engine_bench": a[13]}}
if a[8]:
    rec["slow_engine"] = a[8]
print(json.dumps(rec))
EOF

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
say "host: $NPROC cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), load $LOAD_BEFORE"
say "$RUNS rounds, ${T}s per point; families: $ONLY; raw results: $RAW"

# llmdd_bench with JSON lines appended to $RAW. A non-zero exit is recorded as
# a failure of ours (the report fails the run on it): a point whose bytes were
# wrong already wrote its own error record, a crash writes none.
bench() {  # bench TAG ARGS...
  local tag="$1"; shift
  local env_=()
  case "$1" in engine|kv|overhead) env_=("${ENGINE_ENV[@]}") ;; esac
  "${env_[@]}" "$BENCH" "$@" --json --json-out "$RAW" --tag "$tag" > /dev/null 2>> "$LOG"
  local rc=$?
  if [ $rc != 0 ]; then
    say "llmdd_bench $1 exited with $rc (see $LOG)"
    python3 -c 'import json,sys; print(json.dumps({"mode": "llmdd_bench", "op": sys.argv[1], "tag": sys.argv[3],
      "error": "llmdd_bench %s exited with %s" % (sys.argv[1], sys.argv[2])}))' "$1" "$rc" "$tag" >> "$RAW"
  fi
}

run_iperf() {  # run_iperf ROUND STREAMS
  local port out
  port="$(free_port)"
  iperf3 -s -1 -p "$port" > /dev/null 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  sleep 0.3
  out="$(timeout $((IPERF_T + 30)) iperf3 -c 127.0.0.1 -p "$port" -l 1M -P "$2" -t "$IPERF_T" -J 2>> "$LOG")"
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  echo "$out" | python3 -c '
import json, os, sys
try:
    d = json.load(sys.stdin)
    bps = d["end"]["sum_received"]["bits_per_second"]
    print(json.dumps({"mode": "iperf3", "op": "stream", "transport": "tcp", "desc_size": 1048576,
                      "streams": int(sys.argv[2]), "threads": 1, "gbps": bps / 8 / 1e9,
                      "seconds": d["end"]["sum_received"]["seconds"], "load1": os.getloadavg()[0],
                      "tag": sys.argv[1]}))
except Exception as e:
    print(json.dumps({"mode": "iperf3", "streams": int(sys.argv[2]), "tag": sys.argv[1],
                      "error": "cannot parse iperf3 output: %s" % e}))
' "round=$1" "$2" >> "$RAW"
}

# ucx_perftest between two processes on this host. TLS names the transport the
# bytes take: tcp (UCX_TLS=tcp over lo), posix (shared memory UCX allocates:
# RMA is a memcpy from it) or cma: tag_bw with UCX_TLS=cma,tcp (its rendezvous
# reads the sender's buffer with process_vm_readv), ucp_get and ucp_put_bw with
# UCX_TLS=cma,posix (UCX 1.13 puts their RMA lane on posix memory it allocated
# itself, "rma(posix/memory)", and with cma,tcp emulates it over tcp: either way
# not cma, so they read "not measured" there; a UCX that puts RMA on cma is
# measured). The lanes UCX chose (UCX_LOG_LEVEL=info, "ep_cfg") are recorded,
# and a run whose lanes lack the named transport is an error record, not a
# figure (the report prints the row as SKIPPED with the lanes). Bandwidth: ucx_perftest's MB/s are MiB/s, converted to GB/s.
run_ucx() {  # run_ucx ROUND TEST TLS SIZE
  local port out rc tls n w
  case "$3" in
    tcp) tls=tcp ;;
    posix) tls=posix ;;
    cma) case "$2" in tag_bw) tls=cma,tcp ;; *) tls=cma,posix ;; esac ;;
  esac
  n=$(( UCX_BYTES / $4 )); [ $n -lt 10 ] && n=10
  w=$(( n / 10 )); [ $w -lt 2 ] && w=2
  port="$(free_port)"
  # The server outlives the client's timeout, so a stuck run ends as the
  # client's timeout (recorded as such), not as a broken pipe.
  UCX_TLS=$tls UCX_NET_DEVICES=lo timeout $((UCX_TIMEOUT + 15)) ucx_perftest -p "$port" > /dev/null 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  sleep 0.5
  out="$(UCX_TLS=$tls UCX_NET_DEVICES=lo UCX_LOG_LEVEL=info timeout "$UCX_TIMEOUT" ucx_perftest 127.0.0.1 -p "$port" \
         -t "$2" -s "$4" -n "$n" -w "$w" 2>&1)"
  rc=$?
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  echo "$out" >> "$LOG"
  # "Final: iters typical_lat avg_lat overall_lat avg_bw overall_bw avg_rate overall_rate"
  echo "$out" | python3 -c '
import json, os, sys
tag, test, label, size, rc, timeout = sys.argv[1:7]
rec = {"mode": "ucx_perftest", "op": test, "transport": label, "desc_size": int(size), "batch": 1, "threads": 1,
       "tag": tag, "load1": os.getloadavg()[0]}
lanes = ""
final = None
for line in sys.stdin:
    if "ep_cfg[" in line and not lanes:
        lanes = line.split("ep_cfg[", 1)[1].split(":", 1)[-1].strip()
    w = line.split()
    if w and w[0] == "Final:":
        final = w
rec["ucx_lanes"] = lanes
if rc == "124":
    rec["error"] = "ucx_perftest %s over %s timed out after %s s" % (test, label, timeout)
elif final is None:
    rec["error"] = "no Final line from ucx_perftest (exit %s)" % rc
elif lanes and label not in lanes:
    rec["error"] = "UCX did not use %s (lanes: %s)" % (label, lanes)
else:
    rec.update({"iters": int(final[1]), "lat_typical_us": float(final[2]), "gbps": float(final[6]) * 1048576 / 1e9})
print(json.dumps(rec))
' "round=$1" "$2" "$3" "$4" "$rc" "$UCX_TIMEOUT" >> "$RAW"
}

# Mooncake's transfer_engine_bench, a target and an initiator on this host
# (tcp protocol, P2P handshake: no metadata server), the initiator reading
# SIZE x BATCH per batch on one submission thread (our engine point is one
# caller thread). The target announces its handshake port in its log
# ("P2P handshake, listening on HOST:PORT"), which is the initiator's segment.
# The figure is counted here: batches x BATCH x SIZE over the duration it
# reports ("Test completed: duration D, batch count N, ...").
run_te_bench() {  # run_te_bench ROUND SIZE BATCH
  local size="$2" batch="$3" tlog seg i out rc
  tlog="$RESULTS/$STAMP-te-target.log"
  : > "$tlog"
  timeout $((TE_T + 60)) "$TE_BENCH" --mode=target --metadata_server=P2PHANDSHAKE --protocol=tcp \
    --local_server_name=127.0.0.1 --buffer_size=$((size * batch)) > "$tlog" 2>&1 &
  local spid=$!
  BG_PIDS+=("$spid")
  seg=""
  for i in $(seq 1 100); do
    seg="$(sed -n 's/.*P2P handshake, listening on \([0-9.]*:[0-9]*\).*/\1/p' "$tlog" | head -1)"
    [ -n "$seg" ] && break
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  # The target registers its buffer after it listens: give it that time.
  [ -n "$seg" ] && sleep 1
  out="$(timeout $((TE_T + 30)) "$TE_BENCH" --mode=initiator --metadata_server=P2PHANDSHAKE --protocol=tcp \
         --segment_id="${seg:-none}" --local_server_name=127.0.0.1 --buffer_size=$((size * batch)) --operation=read \
         --block_size="$size" --batch_size="$batch" --threads=1 --duration="$TE_T" --report_unit=GB \
         --report_precision=4 2>&1)"
  rc=$?
  [ -n "$seg" ] || rc=255
  kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  { cat "$tlog"; echo "$out"; } >> "$LOG"
  echo "$out" | python3 -c '
import json, os, re, sys
tag, size, batch, rc, timeout = sys.argv[1:6]
size, batch = int(size), int(batch)
rec = {"mode": "mooncake_bench", "op": "read", "transport": "tcp", "desc_size": size, "batch": batch, "threads": 1,
       "tag": tag, "load1": os.getloadavg()[0]}
text = sys.stdin.read()
m = re.search(r"Test completed: duration ([0-9.]+), batch count ([0-9]+), throughput ([0-9.]+)", text)
if rc == "255":
    rec["error"] = "transfer_engine_bench target did not announce its handshake port"
elif rc == "124":
    rec["error"] = "transfer_engine_bench initiator timed out after %s s" % timeout
elif m is None or float(m.group(1)) <= 0:
    last = [l for l in text.splitlines() if l.strip()][-1:] or ["no output"]
    rec["error"] = "no \"Test completed\" line from transfer_engine_bench (exit %s): %s" % (rc, last[0][-120:])
else:
    secs, n = float(m.group(1)), int(m.group(2))
    rec.update({"seconds": secs, "batches": n, "gbps": n * batch * size / secs / 1e9,
                "gbps_reported": float(m.group(3))})
print(json.dumps(rec))
' "round=$1" "$size" "$batch" "$rc" "$((TE_T + 30))" >> "$RAW"
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

# Our engine over UCX and UCX's own get/put (bench/ucx_ref.cc) at 1 MiB on one UCX_TLS.
ucx_ours() {  # ucx_ours TAG TLS
  # One UCX worker, as UCX alone runs (like for like; the default 2 split a 1 MiB call: docs/UCX.md "Workers").
  UCX_TLS=$2 bench "$1" engine --transport ucx --points 1M:1:1 --ops read,write --time "$T" --ucx-workers 1
}
ucx_ref() {  # ucx_ref TAG TLS
  UCX_TLS=$2 timeout $((UCX_TIMEOUT + 15)) "$UCX_REF" --ops get,put --size 1M --time "$T" --tag "$1" \
    >> "$RAW" 2>> "$LOG" || say "llmdd_ucx_ref (UCX_TLS=$2) exited with $?"
}

ENGINE_POINTS="1M:64:1,64K:128:1,8:1:1,1M:1:1"
MEMCPY_POINTS="1M:64:1,1M:64:$ALLCORE,1M:1:1,64K:128:1"
CMA_POINTS="8:1:1,1M:1:1,1M:64:1,1M:64:$ALLCORE"
START=$(date +%s)
for r in $(seq 1 "$RUNS"); do
  tag="round=$r"
  say "round $r/$RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
  want memcpy && bench "$tag" memcpy --points "$MEMCPY_POINTS" --ops hot,cold --pool "$POOL" --time "$T"
  want cma && bench "$tag" cma --points "$CMA_POINTS" --ops read,write --time "$T"
  if want engine; then
    bench "$tag" engine --transport tcp,shm --points "$ENGINE_POINTS" --ops read,write --time "$T"
    # One lane: the pair of iperf3 -P 1, and what one call does without being split.
    bench "$tag" engine --transport tcp,shm --points 1M:64:1 --ops read,write --connections 1 --time "$T"
  fi
  want kv && bench "$tag" kv --transport shm,tcp "${KV_ARGS[@]}" --ops pull,push,memcpy \
    --copy-threads "1,$ALLCORE" --time "$T"
  # The same pull from caches the prefill side allocated with MallocMem: the reader maps them.
  want kv && bench "$tag" kv --transport shm "${KV_ARGS[@]}" --ops pull --mallocmem --time "$T"
  want pingpong && bench "$tag" pingpong --time "$PP_T"
  want overhead && bench "$tag" overhead --transport tcp,shm
  if want iperf3; then
    if [ $HAVE_IPERF = 1 ]; then
      run_iperf "$r" 1
      run_iperf "$r" "$LANES"
    elif [ "$r" = 1 ]; then
      skip iperf3 "iperf3 is not installed (apt-get install iperf3, as root)"
    fi
  fi
  if want ucx; then
    if [ $HAVE_UCX = 1 ]; then
      for size in $((64 << 20)) $((1 << 20)); do
        run_ucx "$r" tag_bw tcp "$size"
        run_ucx "$r" ucp_put_bw tcp "$size"
      done
      run_ucx "$r" ucp_get tcp $((1 << 20))
      run_ucx "$r" ucp_get posix $((1 << 20))
      run_ucx "$r" ucp_put_bw posix $((1 << 20))
      run_ucx "$r" ucp_get cma $((1 << 20))
      run_ucx "$r" ucp_put_bw cma $((1 << 20))
      run_ucx "$r" tag_bw cma $((1 << 20))
      run_ucx "$r" tag_bw cma $((64 << 20))
    elif [ "$r" = 1 ]; then
      skip ucx_perftest "ucx_perftest is not installed (apt-get install ucx-utils, as root)"
    fi
    # Our engine over UCX against UCX's own get/put on user memory mapped with
    # ucp_mem_map and endpoints with peer error handling, as ours
    # (bench/ucx_ref.cc), 1 MiB, on the same UCX_TLS; order alternating by
    # round. sm alone reaches nobody with peer error handling: "sm,tcp"
    # (docs/UCX.md). The 100,000 x 4 KiB batch takes ~30 s a round: it is
    # bench/ucx_figures.sh's, not this script's.
    if [ -x "$UCX_REF" ]; then
      for tls in tcp sm,tcp; do
        if [ $((r % 2)) = 1 ]; then ucx_ours "$tag" "$tls"; ucx_ref "$tag" "$tls"
        else ucx_ref "$tag" "$tls"; ucx_ours "$tag" "$tls"; fi
      done
    elif [ "$r" = 1 ]; then
      skip ucx_ref "llmdd_ucx_ref is not built (the library was built without UCX: bash scripts/setup.sh ucx)"
    fi
  fi
  if want mooncake; then
    if [ -n "$TE_BENCH" ]; then
      run_te_bench "$r" 65536 128
      run_te_bench "$r" 1048576 64
    elif [ "$r" = 1 ]; then
      skip mooncake_bench "Mooncake's transfer_engine_bench is not installed (pip install mooncake-transfer-engine-non-cuda into $VENV, or set MOONCAKE_TE_BENCH)"
    fi
    if [ $HAVE_MOONCAKE = 1 ]; then run_peer "$r" mooncake_peer.py --points 65536:128,1048576:128
    elif [ "$r" = 1 ]; then skip mooncake "the mooncake-transfer-engine-non-cuda wheel is not installed (run as root, or pip install it into $VENV)"; fi
  fi
  if want nixl; then
    if [ $HAVE_NIXL = 1 ]; then run_peer "$r" nixl_peer.py --points 65536:128,1048576:128 --ucx-tls tcp
    elif [ "$r" = 1 ]; then skip nixl "the nixl-cu12 wheel is not installed (run as root, or pip install --no-deps nixl-cu12 numpy into $VENV)"; fi
  fi
done
if [ $PLOT = 1 ]; then
  # Sweeps for the plots (not part of the report): GB/s and time per call
  # against the descriptor size (engine) and the blocks per call (kv); each
  # writes NAME.png and NAME-latency.png (docs/PERFORMANCE.md, "Plots").
  say "engine and kv sweeps for the plots"
  "${ENGINE_ENV[@]}" "$BENCH" engine --transport tcp,shm --batches 64 --threads 1 --time 0.2 \
    --plot "$RESULTS/$STAMP-engine.png" --json-out "$RESULTS/$STAMP-sweep.jsonl" --tag sweep \
    > "$RESULTS/$STAMP-sweep.txt" 2>> "$LOG" || say "engine sweep exited with $?"
  "${ENGINE_ENV[@]}" "$BENCH" kv --transport shm,tcp --threads 1 --time 0.2 \
    --plot "$RESULTS/$STAMP-kv.png" --json-out "$RESULTS/$STAMP-sweep.jsonl" --tag sweep \
    >> "$RESULTS/$STAMP-sweep.txt" 2>> "$LOG" || say "kv sweep exited with $?"
  grep -h '^plot:' "$RESULTS/$STAMP-sweep.txt" >&2
fi
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
ELAPSED=$(( $(date +%s) - START ))

python3 "$ROOT/bench/compare_report.py" "$RAW" --runs "$RUNS" --load-before "$LOAD_BEFORE" \
  --load-after "$LOAD_AFTER" --elapsed "$ELAPSED" | tee "$REPORT"
STATUS=${PIPESTATUS[0]}
echo "raw JSON lines: $RAW" >&2
echo "report: $REPORT" >&2
if [ "$STATUS" != 0 ] && [ $FAIL = 0 ]; then
  say "exit status 0 despite the verdicts above (--no-fail)"
  exit 0
fi
exit "$STATUS"
