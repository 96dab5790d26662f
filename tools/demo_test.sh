#!/usr/bin/env bash
# ctest of the demos (label `demo`, tools/CMakeLists.txt): runs one demo in
# --quick form and checks what a user relies on in its output: VERIFIED, the
# path the bytes took (never "unknown"; the one asked for with --transport),
# the machine line, and no log line on stderr that is not marked expected.
# Usage: demo_test.sh <tools dir> kv|kv-tcp|kv-two-halves|kv-ucx-two-halves|adxl
# (kv-ucx-two-halves: the two halves with --transport ucx under UCX_TLS=tcp,
# as docs/UCX.md runs them on two hosts; libraries built with UCX only)
set -uo pipefail
unset LLMDD_LOG_LEVEL  # what a user sees at the default level
dir=$1
what=$2
work=$(mktemp -d "${TMPDIR:-/tmp}/llmdd-demo-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() { echo "demo test ($what): FAILED: $*" >&2; echo "--- stdout" >&2; cat "$work/out" >&2; echo "--- stderr" >&2; cat "$work/err" >&2; exit 1; }
free_port() {  # an even port pair below the ephemeral range, both free now
  local p
  for _ in $(seq 50); do
    p=$((20000 + 2 * (RANDOM % 6000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 1))") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  echo 0
}

rc=0
case "$what" in
  kv) timeout 300 "$dir/kv_demo" --quick >"$work/out" 2>"$work/err" || rc=$? ;;
  kv-tcp) timeout 300 "$dir/kv_demo" --quick --transport tcp >"$work/out" 2>"$work/err" || rc=$? ;;
  kv-two-halves | kv-ucx-two-halves)
    transport=tcp
    if [[ $what == kv-ucx-two-halves ]]; then
      transport=ucx
      export UCX_TLS=tcp
    fi
    port=$(free_port)
    timeout 300 "$dir/kv_demo" prefill --listen "127.0.0.1:$port" --quick --transport $transport >"$work/prefill" 2>&1 &
    prefill=$!
    timeout 300 "$dir/kv_demo" decode --remote "localhost:$port" --quick --transport $transport >"$work/out" 2>"$work/err" || rc=$?
    wait "$prefill" || fail "the prefill half exited with status $? ($(cat "$work/prefill"))"
    grep -q "decoder connected to the control port" "$work/prefill" || fail "the prefill never saw the decoder"
    ;;
  adxl) timeout 300 "$dir/adxl_demo" --quick >"$work/out" 2>"$work/err" || rc=$? ;;
  *) echo "usage: $0 <tools dir> kv|kv-tcp|kv-two-halves|kv-ucx-two-halves|adxl" >&2; exit 2 ;;
esac
[[ $rc -eq 0 ]] || fail "exit status $rc"
grep -q '^VERIFIED: all bytes correct' "$work/out" || fail "no VERIFIED line"
grep -q '^moved over the \(same-host\|TCP\|UCX\) path' "$work/out" || fail "no 'moved over the ... path' line"
grep -q 'load average' "$work/out" || fail "no machine line with the load average"
case "$what" in
  kv-tcp | kv-two-halves) grep -q '^moved over the TCP path' "$work/out" || fail "--transport tcp did not move over TCP" ;;
  kv-ucx-two-halves) grep -q '^moved over the UCX path' "$work/out" || fail "--transport ucx did not move over UCX" ;;
esac
if grep -v '^(expected, from the deliberate negative check) ' "$work/err" | grep -q .; then
  fail "stderr has lines a successful run must not print"
fi
grep -E '^(moved over|VERIFIED)' "$work/out"
echo "demo test ($what): OK"
