#!/usr/bin/env bash
# Builds the library and the LLM-DataDist KV-cache demo (Release, in
# build-release/) and runs it: a PREFILL process and a DECODE process on this
# host move a model-shaped paged KV cache (default 32 layers x (K,V), 128 blocks
# of 32 KiB per tensor, 256 MiB a side) with PullKvBlocks and layer-wise
# PushKvBlocks, verify every byte and print a latency / throughput table with
# the path the bytes took (same-host or TCP) and the machine's load. Exits with
# the demo's status (0 = VERIFIED, 1 = FAILED).
#
#   scripts/kv_demo.sh                    default model shape, both halves on this host
#   scripts/kv_demo.sh --quick            small model, few iterations (CI)
#   scripts/kv_demo.sh --transport tcp    over TCP sockets even on one host
#   scripts/kv_demo.sh --help             all options of tools/kv_demo
# Two hosts (prefill on one, decode on the other): docs/TWO_HOSTS.md.
#
# Needs cmake and a C++20 compiler (scripts/setup.sh installs them); no root.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

build_dir="build-release"
jobs="$(nproc 2>/dev/null || echo 2)"

cmake -S . -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DLLMDD_BUILD_TESTS=OFF \
  -DLLMDD_BUILD_TOOLS=ON >/dev/null
cmake --build "$build_dir" -j "$jobs" --target llm_datadist kv_demo

status=0
"$build_dir/tools/kv_demo" "$@" || status=$?
exit "$status"
