#!/usr/bin/env bash
# The project's main demo: a PREFILL and a DECODE process move a model-shaped
# KV cache with LLM-DataDist (PullKvBlocks of a scattered block list, then a
# layer-by-layer PushKvBlocks from the prefill), verify every byte and print a
# GB/s / latency table. Exits 0 only if every byte was right.
#
#   scripts/demo.sh             default model shape (32 layers x K,V, 256 MiB a side)
#   scripts/demo.sh --quick     small model (CI)
#   scripts/demo.sh --help      all options (tools/kv_demo.cc; two hosts: docs/TWO_HOSTS.md)
# The raw ADXL transfer demo is scripts/adxl_demo.sh.
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kv_demo.sh" "$@"
