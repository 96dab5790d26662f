#!/usr/bin/env bash
# Installs the Debian 12 (bookworm) packages the project needs, by purpose:
#   bash scripts/setup.sh build   # build the library, tools, examples and demos
#   bash scripts/setup.sh test    # build + run the test suite (unit, integration, install, sanitizers,
#                                 # the UCX transport's tests and the Python package's tests:
#                                 # includes ucx and python)
#   bash scripts/setup.sh fuzz    # the libFuzzer targets (scripts/fuzz.sh)
#   bash scripts/setup.sh ucx     # UCX headers and tools (UCX transport work, bench/compare.sh's ucx_perftest)
#   bash scripts/setup.sh python  # Python headers and venv (the Python package: pip install ., its tests;
#                                 # bench/compare.sh's peers)
#   bash scripts/setup.sh bench   # the benchmark's plots and references: gnuplot (llmdd_bench --plot,
#                                 # bench/compare.sh), iperf3; includes ucx and python (compare.sh's
#                                 # UCX and Mooncake/NIXL references)
#   bash scripts/setup.sh         # build, test and fuzz: what CI needs (.ci/run)
#   bash scripts/setup.sh all     # every purpose above
# Several purposes may be given at once (setup.sh test fuzz).
#
# Idempotent: it first asks dpkg what is installed; when nothing of the chosen
# purposes is missing it says so and exits 0 without root. Otherwise it names
# the missing packages per purpose and installs them as root, or through sudo;
# without either it prints the apt-get command to run as root and exits 1.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# One package per line, with why it is needed. A package is listed under the
# first purpose that needs it; later purposes include the earlier ones they
# build on (see needs_of below).
BUILD_PACKAGES=(
  build-essential     # g++, make, binutils (nm/objdump used by tests/install)
  cmake               # build system (>= 3.20; bookworm ships 3.25)
  pkg-config          # the installed llm_datadist.pc (tests/install checks it)
  libssl-dev          # OpenSSL libcrypto: HMAC-SHA256 of the peer authentication handshake
)
TEST_PACKAGES=(
  libgtest-dev        # GoogleTest for tests/unit and tests/integration
  libgmock-dev        # GoogleMock (unit tests link GTest::gmock)
  googletest          # GoogleTest CMake package files used by find_package(GTest)
)
FUZZ_PACKAGES=(
  clang               # Clang for the libFuzzer targets (scripts/fuzz.sh, CI fuzz smoke)
  libclang-rt-14-dev  # Clang's sanitizer and libFuzzer runtimes (-fsanitize=fuzzer,address,undefined)
)
UCX_PACKAGES=(
  libucx-dev          # UCX headers and libraries (a UCX transport links libucp)
  ucx-utils           # ucx_info, ucx_perftest (bench/compare.sh's UCX reference)
)
PYTHON_PACKAGES=(
  python3-dev         # Python headers for the native module llm_datadist._native (pip install .)
  python3-venv        # virtual environments with pip (scripts/python_test.sh, bench/compare.sh's peers)
)
BENCH_PACKAGES=(
  gnuplot-nox         # the PNG/SVG plots of llmdd_bench --plot and bench/compare.sh (no X needed)
  iperf3              # bench/compare.sh's loopback TCP reference (family iperf3)
)

usage() {
  echo "usage: setup.sh [build|test|fuzz|ucx|python|bench|all]...  (no argument: build test fuzz)" >&2
}

# Purposes in the order their packages are checked; each adds what it needs
# beyond the purposes before it. test, fuzz, ucx and python all build the
# library, so they include build; test runs the Python package's tests too
# (scripts/test.sh), so it includes python, and the UCX transport's tests
# (ctest -L ucx, docs/UCX.md), so it includes ucx; bench/compare.sh measures
# UCX (ucx_perftest) and the Python peers as references, so bench includes
# ucx and python.
purposes=()
add_purpose() {
  local p
  for p in "${purposes[@]}"; do [[ $p == "$1" ]] && return 0; done
  purposes+=("$1")
}
[[ $# -eq 0 ]] && set -- build test fuzz
for arg in "$@"; do
  case "$arg" in
    build) add_purpose build ;;
    test) add_purpose build; add_purpose test; add_purpose ucx; add_purpose python ;;
    fuzz | ucx | python) add_purpose build; add_purpose "$arg" ;;
    bench) for p in build ucx python bench; do add_purpose "$p"; done ;;
    all) for p in build test fuzz ucx python bench; do add_purpose "$p"; done ;;
    -h | --help) usage; exit 0 ;;
    *)
      echo "setup.sh: unknown purpose '$arg'" >&2
      usage
      exit 2
      ;;
  esac
done

packages_of() {  # <purpose>: prints its packages, one a line
  case "$1" in
    build) printf '%s\n' "${BUILD_PACKAGES[@]}" ;;
    test) printf '%s\n' "${TEST_PACKAGES[@]}" ;;
    fuzz) printf '%s\n' "${FUZZ_PACKAGES[@]}" ;;
    ucx) printf '%s\n' "${UCX_PACKAGES[@]}" ;;
    python) printf '%s\n' "${PYTHON_PACKAGES[@]}" ;;
    bench) printf '%s\n' "${BENCH_PACKAGES[@]}" ;;
  esac
}

installed() {  # <package>: true when dpkg has it installed
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup.sh: dpkg-query not found: this script knows Debian 12 packages only." >&2
  echo "setup.sh: install by hand what the lists at the top of scripts/setup.sh name." >&2
  exit 1
fi

# 1. What is missing, per purpose (no root needed for this).
missing=()
for purpose in "${purposes[@]}"; do
  lacking=()
  while IFS= read -r pkg; do
    installed "$pkg" || lacking+=("$pkg")
  done < <(packages_of "$purpose")
  if [[ ${#lacking[@]} -gt 0 ]]; then
    echo "setup.sh: missing for $purpose: ${lacking[*]}"
    missing+=("${lacking[@]}")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup.sh: everything for ${purposes[*]} is installed; nothing to do"
  exit 0
fi

# 2. Only now is root needed.
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -E)
  echo "setup.sh: not root: installing through sudo"
else
  echo "setup.sh: not root and sudo is not available; as root run:" >&2
  echo "  apt-get update && apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}"
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup.sh: done"
