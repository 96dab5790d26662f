#!/usr/bin/env bash
# Long chaos soak of the ADXL engine: runs tests/integration/chaos_test.cc with many
# iterations (peers SIGKILLed and restarted with the same id, SIGSTOP/SIGCONT, a peer
# with LLMDD_FAULT_INJECTION) and prints its summary lines.
#   bash scripts/chaos.sh                      # 3000 iterations per transport, seed 1
#   LLMDD_CHAOS_ITERATIONS=20000 LLMDD_CHAOS_SEED=42 bash scripts/chaos.sh
#   LLMDD_CHAOS_BUILD_DIR=build-asan bash scripts/chaos.sh   # a tree configured elsewhere
# Extra arguments go to the test binary (e.g. --gtest_filter='*tcp').
# Exit status: that of the test binary (non-zero on any violated invariant).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${LLMDD_CHAOS_BUILD_DIR:-build}
export LLMDD_CHAOS_ITERATIONS=${LLMDD_CHAOS_ITERATIONS:-3000}
export LLMDD_CHAOS_SEED=${LLMDD_CHAOS_SEED:-1}
JOBS=${LLMDD_CHAOS_JOBS:-2}

BIN="$BUILD_DIR/tests/chaos_test"
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  echo "==> configure $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo
fi
echo "==> build chaos_test and peers in $BUILD_DIR (-j$JOBS)"
cmake --build "$BUILD_DIR" -j"$JOBS" --target chaos_test adxl_peer datadist_peer

echo "==> chaos soak: seed $LLMDD_CHAOS_SEED, $LLMDD_CHAOS_ITERATIONS iterations per transport"
LOG=$(mktemp "${TMPDIR:-/tmp}/llmdd-chaos.XXXXXX")
set +e
"$BIN" "$@" 2>&1 | tee "$LOG" | grep -E '^chaos|^\[  (FAILED|PASSED)|WATCHDOG|^\[       OK|^\[ RUN'
rc=${PIPESTATUS[0]}
set -e
echo "==> summary (full log: $LOG)"
grep -E '^chaos\[[a-z]+\]: [0-9]+ faults' "$LOG" || echo "no summary line (the binary aborted?)"
if [[ $rc -ne 0 ]]; then
  echo "==> chaos soak FAILED (exit $rc); rerun with LLMDD_CHAOS_SEED=$LLMDD_CHAOS_SEED to reproduce the fault sequence"
else
  echo "==> chaos soak passed"
fi
exit $rc
