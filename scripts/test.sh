#!/usr/bin/env bash
# Configures, builds and runs the whole test suite (unit, integration, install).
#   bash scripts/test.sh                         # build/, RelWithDebInfo
#   LLMDD_SANITIZE=address bash scripts/test.sh  # build-asan/, ASan+UBSan
#   LLMDD_SANITIZE=thread  bash scripts/test.sh  # build-tsan/, TSan
# Extra arguments are passed to ctest (e.g. -R adxl -V).
# The plain run then tests the Python package (scripts/python_test.sh: a venv
# in build/python, pip install ., pytest tests/python; PyPI needed);
# LLMDD_PYTHON_TESTS=0 skips that. Sanitizer runs test the C++ library only.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SANITIZE=${LLMDD_SANITIZE:-}
CMAKE_EXTRA=()
CTEST_EXTRA=()
CTEST_PREFIX=()
case "$SANITIZE" in
  "")
    BUILD_DIR=build
    ;;
  address)
    BUILD_DIR=build-asan
    export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
    export LSAN_OPTIONS=${LSAN_OPTIONS:-detect_leaks=1}
    # Installed clients are not instrumented: the install test is for plain builds.
    CTEST_EXTRA+=(-LE install)
    ;;
  thread)
    BUILD_DIR=build-tsan
    # ignore_interceptors_accesses: bytes written by readv()/recvmsg() into
    # registered memory are ordered with the application's reads through
    # another process (a peer's message), which TSan cannot see; without it
    # every multi-process test reports that as a race. Locks, atomics and
    # plain accesses are still checked.
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:ignore_interceptors_accesses=1}
    CTEST_EXTRA+=(-LE install)
    # GCC 12's TSan cannot map its shadow with > 28 bits of mmap ASLR entropy
    # (newer kernels default to 32): run the tests without ASLR there.
    rnd_bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)
    if [[ $rnd_bits -gt 28 ]] && command -v setarch >/dev/null 2>&1; then
      CTEST_PREFIX=(setarch "$(uname -m)" -R)
    fi
    ;;
  *)
    echo "test.sh: LLMDD_SANITIZE must be empty, 'address' or 'thread' (got '$SANITIZE')" >&2
    exit 2
    ;;
esac

# The UCX transport (docs/UCX.md) is in the sanitizer builds too, when UCX is
# installed (tests/CMakeLists.txt turns UCX's memory hooks off for the tests
# that start it: they break TSan, openucx/ucx#8475). LLMDD_SANITIZE_UCX=0
# leaves it out.
if [[ -n "$SANITIZE" ]]; then
  if [[ "${LLMDD_SANITIZE_UCX:-1}" == 0 ]]; then
    CMAKE_EXTRA+=(-DLLMDD_WITH_UCX=OFF)
  elif pkg-config --exists ucx 2>/dev/null; then
    CMAKE_EXTRA+=(-DLLMDD_WITH_UCX=ON)  # also in a tree configured without it before
    # With libucm loaded, a TSan program crashes at once (measured: every
    # demo, exit 139) unless UCM's hooks are off: for every test, not only
    # those that start UCX (tests/CMakeLists.txt sets them for those too).
    export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none UCX_MEM_EVENTS=no
  fi
fi

JOBS=$(nproc 2>/dev/null || echo 2)

echo "==> configure $BUILD_DIR${SANITIZE:+ (LLMDD_SANITIZE=$SANITIZE)}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLLMDD_SANITIZE="$SANITIZE" "${CMAKE_EXTRA[@]}"

echo "==> build -j$JOBS"
cmake --build "$BUILD_DIR" -j"$JOBS"

echo "==> ctest"
"${CTEST_PREFIX[@]}" ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 --timeout 600 "${CTEST_EXTRA[@]}" "$@"

# The Python package: an instrumented library cannot be loaded into a plain
# interpreter, so only the plain run has it.
if [[ -z "$SANITIZE" && "${LLMDD_PYTHON_TESTS:-1}" != 0 ]]; then
  echo "==> python package tests"
  bash scripts/python_test.sh "$BUILD_DIR"
fi
echo "==> all tests passed ($BUILD_DIR)"
