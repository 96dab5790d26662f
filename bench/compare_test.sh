#!/usr/bin/env bash
# Tests of the benchmark itself (ctest label `bench`): a comparison that can
# fail, and figures that cannot come from a broken engine.
#
#   compare_test.sh BIN_DIR checks|report|slowed|quick WORK_DIR
#
#   checks  llmdd_bench checks the bytes of the first and last call of every
#           point: with a healthy peer every engine/kv/async/cma record says
#           "checked" and the exit status is 0; with a peer whose memory is not
#           what it announces (LLMDD_BENCH_PEER_FAULT=flip) every record has an
#           "error", none has a figure, and the exit status is 1.
#   report  bench/compare_report_test.py: how ratios, columns and verdicts are
#           computed, on made-up records.
#   slowed  bench/compare.sh with the engine slowed on purpose (--slow-engine:
#           the library's fault injection sleeps before every read and write
#           on the engine's connections) must report MISS and exit 1.
#           Short: one quick round of the engine points and the ping-pong;
#           the reference tools are not needed.
#   quick   bench/compare.sh --quick --no-fail: one round of every family
#           within 180 s; every family left records (figures, or a "skipped"
#           record naming why a reference is not measured), nothing of ours
#           failed, and the report has its result line. Opt-in ctest
#           (-DLLMDD_BENCH_QUICK_TEST=ON): a benchmark run of about two
#           minutes does not belong in every suite run.
# Exit 77 (ctest SKIP_RETURN_CODE) when python3, which the checks and the
# report need, is missing.
set -u -o pipefail
BIN_DIR="$1"
WHAT="$2"
WORK="$3"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$BIN_DIR/llmdd_bench"
command -v python3 >/dev/null 2>&1 || { echo "SKIPPED: python3 is not installed"; exit 77; }
rm -rf "$WORK"
mkdir -p "$WORK"
fail() { echo "FAIL: $*"; exit 1; }

# expect_records FILE healthy|broken: every record of FILE checked (and no
# error), or every record an error about wrong bytes (and no figure).
expect_records() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
path, want = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(path) if l.startswith("{")]
if not recs:
    sys.exit("no records in %s" % path)
for r in recs:
    name = "%s %s %s %s" % (r.get("mode"), r.get("op"), r.get("transport"), r.get("desc_size"))
    if want == "healthy":
        if r.get("error"):
            sys.exit("%s: unexpected error %r" % (name, r["error"]))
        figure = r.get("op") in ("read", "write", "pull", "push", "batch_sync", "batch_async")
        if figure and r.get("checked") != "first,last":
            sys.exit("%s: no byte check recorded" % name)
    else:
        if "bytes wrong" not in r.get("error", ""):
            sys.exit("%s: expected a wrong-bytes error, got %r" % (name, r.get("error")))
        for k in ("gbps", "p50_us", "p99_us", "gbps_p50"):
            if k in r:
                sys.exit("%s: a figure (%s) reported despite wrong bytes" % (name, k))
print("%d records %s" % (len(recs), want))
EOF
}

case "$WHAT" in
  checks)
    [ -x "$BENCH" ] || fail "no $BENCH"
    runs=(
      "engine --transport tcp,shm --points 64K:4:1,8:1:1,1M:8:2 --ops read,write"
      "kv --transport shm,tcp --layers 2 --blocks 64 --block-bytes 16K --kv-blocks 16 --threads 1 --ops pull,push"
      "async --transport tcp,auto --async-descs 8 --async-size 16K"
      "cma --points 8:1:1,1M:8:2,4K:1500:1 --ops read,write"
    )
    for args in "${runs[@]}"; do
      name="${args%% *}"
      # shellcheck disable=SC2086
      "$BENCH" $args --time 0.05 --json > "$WORK/$name-healthy.jsonl" 2> "$WORK/$name-healthy.err"
      rc=$?
      [ $rc = 0 ] || { cat "$WORK/$name-healthy.err"; fail "llmdd_bench $name (healthy peer) exited with $rc"; }
      expect_records "$WORK/$name-healthy.jsonl" healthy || fail "llmdd_bench $name, healthy peer"
      # shellcheck disable=SC2086
      LLMDD_BENCH_PEER_FAULT=flip "$BENCH" $args --time 0.05 --json > "$WORK/$name-broken.jsonl" \
        2> "$WORK/$name-broken.err"
      rc=$?
      [ $rc = 1 ] || fail "llmdd_bench $name (peer with wrong bytes) exited with $rc, not 1"
      expect_records "$WORK/$name-broken.jsonl" broken || fail "llmdd_bench $name, peer with wrong bytes"
    done
    echo "PASS: byte checks"
    ;;
  report)
    python3 "$ROOT/bench/compare_report_test.py" -v 2>&1 || fail "bench/compare_report_test.py"
    ;;
  slowed)
    [ -x "$BENCH" ] || fail "no $BENCH"
    bash "$ROOT/bench/compare.sh" --quick --runs 1 --no-install --no-plot --bench "$BENCH" --build-dir "$WORK" \
      --only engine,pingpong --slow-engine 2 > "$WORK/stdout.txt" 2> "$WORK/stderr.txt"
    rc=$?
    cat "$WORK/stdout.txt"
    [ $rc = 1 ] || { cat "$WORK/stderr.txt"; fail "compare.sh with a slowed engine exited with $rc, not 1"; }
    grep -q "THE ENGINE WAS SLOWED ON PURPOSE" "$WORK/stdout.txt" || fail "the report does not say the engine was slowed"
    # 2 ms before every read and write makes an 8-byte TCP READ take milliseconds
    # against a round trip of microseconds: this target cannot pass.
    grep -Eq "^  tcp READ 8 B p50 vs TCP ping-pong RTT \(best of busy, blocking\) +[0-9.]+ us +[0-9.]+ us .*MISS" \
      "$WORK/stdout.txt" ||
      fail "the slowed 8 B TCP READ is not reported as MISS"
    grep -q "^result: FAIL" "$WORK/stdout.txt" || fail "the report's result is not FAIL"
    # The report alone, again from the raw records: the same verdict and exit status.
    raw="$(ls "$WORK"/results/*.jsonl | head -1)"
    python3 "$ROOT/bench/compare_report.py" "$raw" > "$WORK/again.txt"
    [ $? = 1 ] || fail "compare_report.py on the same raw records did not exit 1"
    echo "PASS: a slowed engine makes compare.sh report MISS and exit 1"
    ;;
  quick)
    [ -x "$BENCH" ] || fail "no $BENCH"
    start=$(date +%s)
    bash "$ROOT/bench/compare.sh" --quick --no-install --no-fail --bench "$BENCH" --build-dir "$WORK" \
      > "$WORK/stdout.txt" 2> "$WORK/stderr.txt"
    rc=$?
    took=$(( $(date +%s) - start ))
    cat "$WORK/stdout.txt"
    [ $rc = 0 ] || { cat "$WORK/stderr.txt"; fail "compare.sh --quick --no-fail exited with $rc"; }
    [ $took -le 180 ] || fail "compare.sh --quick took $took s (more than 180)"
    raw="$(ls "$WORK"/results/*.jsonl | head -1)"
    python3 - "$raw" <<'EOF' || fail "compare.sh --quick: a family left no record"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
modes = {r.get("mode") for r in recs}
# Every family leaves a record: a figure, an error, or "skipped" with the reason.
want = {"memcpy", "cma", "engine", "kv", "pingpong", "overhead", "iperf3", "ucx_perftest", "mooncake_bench",
        "mooncake", "nixl"}
missing = want - modes
if missing:
    sys.exit("no record of %s" % ", ".join(sorted(missing)))
print("%d records, modes: %s" % (len(recs), ", ".join(sorted(m for m in modes if m))))
EOF
    grep -q "; 0 failure record(s) of ours$" "$WORK/stdout.txt" || fail "a figure of ours failed in the quick run"
    grep -q "^result: " "$WORK/stdout.txt" || fail "no result line"
    echo "PASS: compare.sh --quick ran every family once in $took s"
    ;;
  *)
    fail "unknown test $WHAT"
    ;;
esac
