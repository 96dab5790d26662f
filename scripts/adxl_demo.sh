#!/usr/bin/env bash
# Builds the library and the ADXL demo (Release, in build-release/) and runs a
# two-process transfer demo over TCP on 127.0.0.1: a server process registers a
# buffer, this process connects, WRITEs and READs it for a sweep of descriptor
# sizes, verifies every byte and prints a bandwidth table.
#
#   scripts/adxl_demo.sh              full sweep (256 MiB per call)
#   scripts/adxl_demo.sh --quick      small totals (CI)
#   scripts/adxl_demo.sh --help       all options of tools/adxl_demo
#
# Needs cmake and a C++20 compiler (scripts/setup.sh installs them); no root.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

build_dir="${BUILD_DIR:-build-release}"
jobs="$(nproc 2>/dev/null || echo 2)"

generator=()
if [ ! -f "$build_dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

cmake -S . -B "$build_dir" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DLLMDD_BUILD_TESTS=OFF \
  -DLLMDD_BUILD_TOOLS=ON >/dev/null
cmake --build "$build_dir" -j "$jobs" --target llm_datadist adxl_demo

status=0
"$build_dir/tools/adxl_demo" both "$@" || status=$?
exit "$status"
