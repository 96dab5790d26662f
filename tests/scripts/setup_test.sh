#!/usr/bin/env bash
# scripts/setup.sh's contract, without touching the machine's packages: it runs
# with PATH holding only fakes of the four commands it calls (dpkg-query, id,
# sudo, apt-get), so the test behaves the same as root or not, with or without
# the packages installed.
#   - nothing missing: exit 0, "nothing to do", no root asked for (id -u says
#     1000 and there is no sudo), apt-get never called;
#   - something missing, not root, no sudo: exit 1, the missing packages named
#     per purpose and the apt-get line to run as root, apt-get never called;
#   - something missing as root: apt-get installs exactly what is missing;
#   - each purpose's packages, bench included (gnuplot-nox for the plots);
#   - every package line of the lists says why it is needed (a # comment);
#   - an unknown purpose: exit 2.
# Usage: setup_test.sh <repo root>
set -u
ROOT="${1:?usage: setup_test.sh <repo root>}"
SETUP="$ROOT/scripts/setup.sh"
BASH_BIN="$(command -v bash)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

mkdir -p "$work/bin"
# dpkg-query -W -f='${Status}' PKG: installed unless PKG is in $FAKE_MISSING.
cat > "$work/bin/dpkg-query" <<FAKE
#!$BASH_BIN
pkg="\${!#}"
for m in \${FAKE_MISSING:-}; do [[ \$m == "\$pkg" ]] && exit 1; done
printf 'install ok installed'
FAKE
cat > "$work/bin/id" <<FAKE
#!$BASH_BIN
echo "\${FAKE_UID:-1000}"
FAKE
cat > "$work/bin/apt-get" <<FAKE
#!$BASH_BIN
echo "apt-get \$*" >> "$work/apt.log"
FAKE
chmod +x "$work/bin/"*

# run <label> <expected rc> [env...] -- setup.sh args...; output in $work/out
run() {
  local label="$1" want="$2"; shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  rm -f "$work/apt.log"
  env -i PATH="$work/bin" "${envs[@]}" "$BASH_BIN" "$SETUP" "$@" > "$work/out" 2>&1
  local rc=$?
  [[ $rc == "$want" ]] || { fail "$label: exit $rc, expected $want"; sed 's/^/    /' "$work/out"; }
}
has() { grep -qF -- "$2" "$work/out" || { fail "$1: output lacks '$2'"; sed 's/^/    /' "$work/out"; }; }
no_apt() { [[ ! -e $work/apt.log ]] || fail "$1: apt-get was called: $(cat "$work/apt.log")"; }

# Nothing missing, not root, no sudo.
for purposes in "" build test fuzz ucx python bench all "test fuzz"; do
  # shellcheck disable=SC2086
  run "nothing missing ($purposes)" 0 FAKE_UID=1000 -- $purposes
  has "nothing missing ($purposes)" "nothing to do"
  no_apt "nothing missing ($purposes)"
done

# bench: gnuplot and iperf3 under bench; compare.sh's UCX and Python references too.
run "bench, gnuplot missing" 1 FAKE_UID=1000 FAKE_MISSING="gnuplot-nox ucx-utils python3-venv" -- bench
has "bench, gnuplot missing" "missing for bench: gnuplot-nox"
has "bench, gnuplot missing" "missing for ucx: ucx-utils"
has "bench, gnuplot missing" "missing for python: python3-venv"
has "bench, gnuplot missing" "not root and sudo is not available"
has "bench, gnuplot missing" "apt-get install --no-install-recommends ucx-utils python3-venv gnuplot-nox"
no_apt "bench, gnuplot missing"

# build does not ask for what only tests, fuzzing or the benchmark need.
run "build, others missing" 0 FAKE_UID=1000 FAKE_MISSING="clang libgtest-dev gnuplot-nox iperf3 libucx-dev" -- build
has "build, others missing" "nothing to do"

# all asks for bench's packages too.
run "all, iperf3 missing" 1 FAKE_UID=1000 FAKE_MISSING="iperf3" -- all
has "all, iperf3 missing" "missing for bench: iperf3"

# As root: installs exactly what is missing.
run "root installs" 0 FAKE_UID=0 FAKE_MISSING="gnuplot-nox" -- bench
if ! grep -q "install -y --no-install-recommends gnuplot-nox$" "$work/apt.log" 2>/dev/null; then
  fail "root installs: apt-get log: $(cat "$work/apt.log" 2>/dev/null)"
fi

run "unknown purpose" 2 -- benchmark
has "unknown purpose" "unknown purpose 'benchmark'"

# Every package line of the lists gives its reason.
bad="$(awk '/^[A-Z]+_PACKAGES=\(/{inlist=1; next} inlist && /^\)/{inlist=0} inlist && !/#/' "$SETUP")"
[[ -z $bad ]] || fail "package lines without a reason: $bad"
grep -q '^BENCH_PACKAGES=(' "$SETUP" || fail "no BENCH_PACKAGES list"

if [[ $fails -ne 0 ]]; then
  echo "setup_test: $fails failure(s)"
  exit 1
fi
echo "setup_test: OK"
