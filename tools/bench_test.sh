#!/usr/bin/env bash
# ctest of llmdd_bench's command line and output (label `bench`,
# tools/CMakeLists.txt); a few seconds of short runs, no figure is judged:
#   - --help describes every mode, says what --plot draws for each, and every
#     mode it names is one the parser accepts;
#   - with --json, stdout holds JSON lines only; the progress line asked for
#     with --progress is on stderr; without --progress, a stderr that is not a
#     terminal gets no progress line;
#   - --plot without gnuplot on PATH: one note, no file, exit status 0; with
#     gnuplot (when installed): the throughput and latency PNGs of a sweep and
#     the bar chart of a latency mode.
# Usage: bench_test.sh <path of llmdd_bench>
set -uo pipefail
unset LLMDD_LOG_LEVEL
bench=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/llmdd-bench-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
step=""
fail() {
  echo "bench test ($step): FAILED: $*" >&2
  for f in out err; do [[ -f $work/$f ]] && { echo "--- $f" >&2; cat "$work/$f" >&2; }; done
  exit 1
}
modes="engine kv memcpy cma pingpong overhead peers mixed async notify"

step="--help"
"$bench" --help >"$work/help" 2>&1 || fail "--help exited with $?"
for m in $modes; do
  grep -q "^  $m " "$work/help" || fail "--help does not describe the mode '$m'"
  "$bench" "$m" --help >/dev/null 2>&1 || fail "'$m --help' exited with $? (a mode --help names, the parser refuses)"
done
listed=$(sed -n '/^modes:/,/^[a-z]/p' "$work/help" | grep -oE '^  [a-z]+ ' | tr -d ' ' | sort | tr '\n' ' ')
[[ $listed == "$(tr ' ' '\n' <<<"$modes" | sort | tr '\n' ' ')" ]] ||
  fail "--help lists the modes '$listed'; this test knows '$modes' (update one of the two)"
plot_text=$(sed -n '/--plot FILE/,/--progress/p' "$work/help")
for m in $modes; do
  grep -qw "$m" <<<"$plot_text" || fail "--help's --plot text does not say what it draws for '$m'"
done
"$bench" nosuchmode >/dev/null 2>&1 && fail "an unknown mode was accepted"

# Two points of a short engine sweep: about a second with the peer's start.
timeout_bin=$(command -v timeout)
run() {  # run ARGS...: the engine run with stdout and stderr in files; fails on a non-zero exit
  PATH=${RUN_PATH:-$PATH} "$timeout_bin" 120 "$bench" engine --transport tcp --points 4K:1:1,64K:4:1 --ops read \
    --time 0.05 "$@" >"$work/out" 2>"$work/err" || fail "exit status $?"
}
json_only() {
  [[ -s $work/out ]] || fail "nothing on stdout"
  if grep -qv '^{.*}$' "$work/out"; then fail "stdout has a line that is not a JSON object"; fi
}

step="--json --progress"
run --json --progress
json_only
[[ $(grep -c '"mode": "engine"' "$work/out") -eq 2 ]] || fail "not 2 engine records on stdout"
# Forced on a stderr that is not a terminal, the first line comes at once
# (the next ones every 5 s, after this short run).
grep -qE '^\[llmdd_bench\] .*[0-9]+ s elapsed.*: engine' "$work/err" || fail "no progress line on stderr"

step="--json, stderr not a terminal"
run --json
json_only
grep -q 'llmdd_bench\]' "$work/err" && fail "a progress line without --progress on a stderr that is not a terminal"

step="--plot without gnuplot"
# The benchmark's PATH without gnuplot: it starts its peer through
# /proc/self/exe, so only the plot's lookup changes.
RUN_PATH=/nonexistent run --json --plot "$work/none.png"
json_only
grep -q '^plot: gnuplot is not installed' "$work/err" || fail "no note that gnuplot is missing"
[[ $(grep -c '^plot:' "$work/err") -eq 1 ]] || fail "more than one plot note"
[[ -e $work/none.png ]] && fail "a plot was written without gnuplot"

if command -v gnuplot >/dev/null 2>&1; then
  png() { [[ $(head -c 8 "$1" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; }
  step="--plot, engine"
  run --json --plot "$work/engine.png"
  json_only
  grep -q "^plot: wrote $work/engine.png .*, $work/engine-latency.png " "$work/err" || fail "no 'plot: wrote' note"
  png "$work/engine.png" || fail "engine.png is not a PNG"
  png "$work/engine-latency.png" || fail "engine-latency.png is not a PNG"
  step="--plot, pingpong"
  timeout 120 "$bench" pingpong --pp-modes busy --plot "$work/pp.png" >"$work/out" 2>"$work/err" ||
    fail "exit status $?"
  grep -q "^plot: wrote $work/pp.png (p50/p99 bars)" "$work/out" || fail "no 'plot: wrote' note"
  png "$work/pp.png" || fail "pp.png is not a PNG"
else
  echo "bench test: gnuplot is not installed; the plots themselves were not drawn"
fi
echo "bench test: OK"
