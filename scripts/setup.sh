#!/usr/bin/env bash
# Installs the build and test dependencies on Debian 12 (bookworm). Idempotent:
# does nothing (no apt-get update) when every package is already installed.
# Runs as root, or through sudo when not root and sudo exists.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# One package per line, with why it is needed.
PACKAGES=(
  build-essential   # g++, make, binutils (nm/objdump used by tests/install)
  cmake             # build system (>= 3.20; bookworm ships 3.25)
  pkg-config        # tests/install checks the installed llm_datadist.pc
  git               # version control (source checkout)
  libgtest-dev      # GoogleTest for tests/unit and tests/integration
  libgmock-dev      # GoogleMock (unit tests link GTest::gmock)
  googletest        # GoogleTest sources/CMake package files used by find_package(GTest)
  libbenchmark-dev  # google-benchmark for the micro-benchmarks under tools/
  libssl-dev        # OpenSSL libcrypto: HMAC-SHA256 of the peer authentication handshake
  clang             # Clang for the libFuzzer targets (scripts/fuzz.sh, CI fuzz smoke)
  libclang-rt-14-dev  # Clang's sanitizer and libFuzzer runtimes (-fsanitize=fuzzer,address,undefined)
  iproute2          # `ss`/`ip`: inspect listening sockets and interfaces when debugging tests and demos
  procps            # `ps`/`pgrep`/`free`: inspect peer processes and memory of tests and demos
)

if [[ $(id -u) -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo -E)
else
  echo "setup.sh: not root and sudo is not available; install manually: ${PACKAGES[*]}" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup.sh: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "setup.sh: installing ${missing[*]}"
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup.sh: done"
