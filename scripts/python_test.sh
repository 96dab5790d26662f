#!/usr/bin/env bash
# The Python package's tests (tests/python, docs/PYTHON.md), as scripts/test.sh
# runs them after ctest:
#   1. a venv in <build dir>/python/venv with tests/python/requirements.txt
#      from PyPI (the build backend, nanobind, pytest, numpy);
#   2. `pip install .` of this repository into it, exactly as a user would,
#      except --no-build-isolation, a CMake build directory kept in
#      <build dir>/python/wheel-build, so that a rerun rebuilds only what
#      changed, and, when <build dir> is a plain C++ build of this tree, the
#      library taken from there instead of compiled again (below;
#      LLMDD_PYTHON_FROM_SOURCE=1: compiled from source as for a user);
#   3. pytest tests/python against the installed package.
# Usage: python_test.sh [<build dir>] [pytest arguments...]   (default build)
# Needs python3-venv and python3-dev (bash scripts/setup.sh python) and PyPI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BUILD_DIR=${1:-build}
shift || true
mkdir -p "$BUILD_DIR/python"
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
VENV="$BUILD_DIR/python/venv"
PY="$VENV/bin/python"

fail() {
  echo "python_test.sh: FAILED: $*" >&2
  exit 1
}

command -v python3 >/dev/null 2>&1 || fail "python3 not found; run: bash scripts/setup.sh python"
if [[ ! -x "$PY" ]]; then
  echo "==> python venv $VENV"
  python3 -m venv "$VENV" || fail "python3 -m venv failed; run: bash scripts/setup.sh python"
fi
echo "==> pip install -r tests/python/requirements.txt"
"$PY" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt ||
  fail "installing tests/python/requirements.txt from PyPI"

# scikit-build-core drives `cmake --build`; without Ninja it falls back to
# make, which builds one file at a time unless told otherwise.
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
# When <build dir> is a configured C++ build of this tree (scripts/test.sh
# has just built and tested it), the wheel bundles its libllm_datadist.so
# (brought up to date first) instead of compiling the library again
# (LLMDD_PYTHON_LIBRARY, CMakeLists.txt): the rest is the same pip install .
# (scikit-build-core, the nanobind modules, the wheel, its install).
# LLMDD_PYTHON_FROM_SOURCE=1 builds everything from source, as a user's
# `pip install .` does.
PIP_DEFINES=()
if [[ "${LLMDD_PYTHON_FROM_SOURCE:-0}" != 1 && -f "$BUILD_DIR/CMakeCache.txt" ]] &&
  grep -q '^LLMDD_SANITIZE:STRING=$' "$BUILD_DIR/CMakeCache.txt"; then
  echo "==> cmake --build $BUILD_DIR --target llm_datadist (the library the wheel bundles)"
  cmake --build "$BUILD_DIR" --target llm_datadist -j"$CMAKE_BUILD_PARALLEL_LEVEL" >/dev/null ||
    fail "building llm_datadist in $BUILD_DIR"
  LIB=$(ls "$BUILD_DIR"/src/libllm_datadist.so.*.* 2>/dev/null | head -n 1)
  [[ -n "$LIB" ]] || fail "no $BUILD_DIR/src/libllm_datadist.so.<version> after building it"
  PIP_DEFINES=(--config-settings="cmake.define.LLMDD_PYTHON_LIBRARY=$LIB")
else
  PIP_DEFINES=(--config-settings="cmake.define.LLMDD_PYTHON_LIBRARY=")
fi
LIB_NOTE=${PIP_DEFINES[0]#*LLMDD_PYTHON_LIBRARY=}
[[ -n "$LIB_NOTE" ]] && LIB_NOTE="bundling $LIB_NOTE" || LIB_NOTE="the library built from source"
echo "==> pip install . (the llm_datadist and hixl packages; CMake build in $BUILD_DIR/python/wheel-build; $LIB_NOTE)"
"$PY" -m pip install --disable-pip-version-check --no-build-isolation \
  --config-settings=build-dir="$BUILD_DIR/python/wheel-build" "${PIP_DEFINES[@]}" . >"$BUILD_DIR/python/pip-install.log" 2>&1 || {
  tail -n 60 "$BUILD_DIR/python/pip-install.log" >&2
  fail "pip install . (the whole log: $BUILD_DIR/python/pip-install.log)"
}

echo "==> pytest tests/python"
# The installed package is what is tested: python/llm_datadist (no native
# module there) is not on the path. No .pytest_cache in the source tree.
"$PY" -m pytest -q -p no:cacheprovider "$@" tests/python || fail "pytest tests/python"
echo "==> python tests passed"
