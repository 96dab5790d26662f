#!/usr/bin/env bash
# The Python package's tests (tests/python, docs/PYTHON.md), as scripts/test.sh
# runs them after ctest:
#   1. a venv in <build dir>/python/venv with tests/python/requirements.txt
#      from PyPI (the build backend, nanobind, pytest, numpy);
#   2. `pip install .` of this repository into it, exactly as a user would,
#      except --no-build-isolation and a CMake build directory kept in
#      <build dir>/python/wheel-build, so that a rerun rebuilds only what
#      changed;
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
echo "==> pip install . (the llm-datadist package; CMake build in $BUILD_DIR/python/wheel-build)"
"$PY" -m pip install --disable-pip-version-check --no-build-isolation \
  -C build-dir="$BUILD_DIR/python/wheel-build" . >"$BUILD_DIR/python/pip-install.log" 2>&1 || {
  tail -n 60 "$BUILD_DIR/python/pip-install.log" >&2
  fail "pip install . (the whole log: $BUILD_DIR/python/pip-install.log)"
}

echo "==> pytest tests/python"
# The installed package is what is tested: python/llm_datadist (no native
# module there) is not on the path. No .pytest_cache in the source tree.
"$PY" -m pytest -q -p no:cacheprovider "$@" tests/python || fail "pytest tests/python"
echo "==> python tests passed"
