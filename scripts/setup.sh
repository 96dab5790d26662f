#!/usr/bin/env bash
# Installs the Debian 12 (bookworm) packages the project needs, by purpose:
#   bash scripts/setup.sh build   # build the library, tools and demos
#   bash scripts/setup.sh test    # build + run the test suite (unit, integration, install, sanitizers)
#   bash scripts/setup.sh fuzz    # the libFuzzer targets (scripts/fuzz.sh)
#   bash scripts/setup.sh         # all of the above (what CI needs)
# Idempotent: when every package of the chosen purposes is installed it does
# nothing and needs no root. Otherwise it installs the missing ones as root, or
# through sudo; without either it names what is missing and exits 1.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# One package per line, with why it is needed.
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

purposes=("$@")
[[ ${#purposes[@]} -eq 0 ]] && purposes=(all)
wanted=()
for purpose in "${purposes[@]}"; do
  case "$purpose" in
    build) wanted+=("${BUILD_PACKAGES[@]}") ;;
    test) wanted+=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
    fuzz) wanted+=("${BUILD_PACKAGES[@]}" "${FUZZ_PACKAGES[@]}") ;;
    all) wanted+=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}" "${FUZZ_PACKAGES[@]}") ;;
    *)
      echo "setup.sh: unknown purpose '$purpose' (build, test, fuzz or all)" >&2
      exit 2
      ;;
  esac
done

missing=()
for pkg in "${wanted[@]}"; do
  [[ " ${missing[*]} " == *" $pkg "* ]] && continue
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup.sh: the packages for '${purposes[*]}' are installed"
  exit 0
fi

# Only now is root needed.
if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -E)
else
  echo "setup.sh: missing for '${purposes[*]}': ${missing[*]}" >&2
  echo "setup.sh: not root and sudo is not available; as root run: apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "setup.sh: installing ${missing[*]}"
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup.sh: done"
