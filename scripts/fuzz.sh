#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with Clang in build-fuzz/ and runs
# each for a while. See docs/TESTING.md, "Fuzzing".
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#     seconds-per-target   default 60 (CI runs 20)
#     target...            default: every tests/fuzz/fuzz_*.cc (fuzz_wire, fuzz_serve_lane, ...)
#
# Each target starts from a scratch corpus, build-fuzz/corpus/<target>/, which
# keeps what earlier runs found and is topped up with the checked-in seeds
# (tests/fuzz/corpus/<target>/, never modified here). Crash, timeout and
# out-of-memory reproducers go to build-fuzz/crashes/<target>/ and are kept.
# Prints executions, coverage and the verdict per target; exits 1 if any target
# crashed (including on a checked-in reproducer of a bug not fixed yet).
#
# Environment:
#   LLMDD_FUZZ_PARALLEL=N     run N targets at once (default 1)
#   LLMDD_FUZZ_ARGS="..."     extra libFuzzer flags (e.g. -max_len=65536 or -only_ascii=1)
#   CC / CXX                  compilers (default clang / clang++)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_PER_TARGET=${1:-60}
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [[ $SECONDS_PER_TARGET -lt 1 ]]; then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi
shift $(($# > 0 ? 1 : 0))

TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  for src in tests/fuzz/fuzz_*.cc; do
    TARGETS+=("$(basename "$src" .cc)")
  done
fi
for t in "${TARGETS[@]}"; do
  if [[ ! -f tests/fuzz/$t.cc ]]; then
    echo "fuzz.sh: unknown target '$t' (no tests/fuzz/$t.cc)" >&2
    exit 2
  fi
done

export CC=${CC:-clang}
export CXX=${CXX:-clang++}
if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "fuzz.sh: $CXX not found: libFuzzer needs Clang (bash scripts/setup.sh installs it)" >&2
  exit 2
fi

BUILD_DIR=build-fuzz
JOBS=$(nproc 2>/dev/null || echo 2)
PARALLEL=${LLMDD_FUZZ_PARALLEL:-1}
read -r -a EXTRA_ARGS <<<"${LLMDD_FUZZ_ARGS:-}"

echo "==> configure $BUILD_DIR ($CXX, LLMDD_BUILD_FUZZERS=ON)"
mkdir -p "$BUILD_DIR"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMDD_BUILD_FUZZERS=ON \
  -DLLMDD_BUILD_TESTS=OFF -DLLMDD_BUILD_TOOLS=OFF >"$BUILD_DIR/configure.log" 2>&1 ||
  { cat "$BUILD_DIR/configure.log" >&2; exit 1; }
echo "==> build -j$JOBS: ${TARGETS[*]}"
cmake --build "$BUILD_DIR" -j"$JOBS" --target "${TARGETS[@]}"

# Findings must be loud: UBSan stops at the first report, leaks count.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# The engine's own log and fault injection stay out of the way.
export LLMDD_LOG_LEVEL=off
unset LLMDD_FAULT_INJECTION LLMDD_AUTH_SECRET LLMDD_FUZZ_DEBUG

run_target() {  # <target>: fuzzes it, leaves the log in $BUILD_DIR/fuzz-logs/<target>.log
  local t=$1
  local corpus=$BUILD_DIR/corpus/$t crashes=$BUILD_DIR/crashes/$t log=$BUILD_DIR/fuzz-logs/$t.log
  local dict=()
  mkdir -p "$corpus" "$crashes" "$BUILD_DIR/fuzz-logs"
  if [[ -d tests/fuzz/corpus/$t ]]; then
    cp -f tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  fi
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  # -timeout: one input taking this long is a hang (reported like a crash).
  # -rss_limit_mb: the ASan quarantine counts; well above what the targets need.
  "$BUILD_DIR/tests/fuzz/$t" "$corpus" \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=20 -rss_limit_mb=3072 \
    -artifact_prefix="$crashes/" "${dict[@]}" "${EXTRA_ARGS[@]}" >"$log" 2>&1
}

summarize() {  # <target> <exit status>: one line; returns 1 if it crashed
  local t=$1 rc=$2 log=$BUILD_DIR/fuzz-logs/$1.log
  local execs cov artifacts
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "$log" | tail -1 || true)
  artifacts=$(sed -n 's/.*Test unit written to //p' "$log" | tr '\n' ' ')
  if [[ $rc -eq 0 && -z $artifacts ]]; then
    printf '  %-18s OK       %12s execs  %s\n' "$t" "${execs:-?}" "$cov"
    return 0
  fi
  printf '  %-18s CRASHED  %12s execs  %s\n' "$t" "${execs:-?}" "$cov"
  echo "    exit status $rc; reproducer: ${artifacts:-none written}; log: $log"
  grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed' "$log" |
    sed 's/^/    /' || true
  return 1
}

echo "==> fuzzing ${#TARGETS[@]} target(s) for ${SECONDS_PER_TARGET}s each (corpus: $BUILD_DIR/corpus/<target>)"
declare -A STATUS=()
running=()
for t in "${TARGETS[@]}"; do
  echo "    start $t"
  run_target "$t" &
  running+=("$!:$t")
  if [[ ${#running[@]} -ge $PARALLEL ]]; then
    entry=${running[0]}
    running=("${running[@]:1}")
    rc=0
    wait "${entry%%:*}" || rc=$?
    STATUS[${entry#*:}]=$rc
  fi
done
for entry in "${running[@]}"; do
  rc=0
  wait "${entry%%:*}" || rc=$?
  STATUS[${entry#*:}]=$rc
done

echo "==> results (logs: $BUILD_DIR/fuzz-logs/, reproducers: $BUILD_DIR/crashes/)"
failed=0
for t in "${TARGETS[@]}"; do
  summarize "$t" "${STATUS[$t]}" || failed=1
done
if [[ $failed -ne 0 ]]; then
  echo "==> fuzzing found crashes: reproduce one with $BUILD_DIR/tests/fuzz/<target> <reproducer>" >&2
  exit 1
fi
echo "==> no crashes"
