#!/usr/bin/env bash
# Install test: installs the build into a temporary prefix and builds/runs small
# clients against that prefix only (never the source tree):
#   1. adxl_client.cc (the original and the later ADXL calls), legacy_client.cc
#      (built against the first headers in tests/install/legacy: the library
#      must keep working for programs built with them) and
#      llm_datadist_client.cc and hixl_client.cc (hixl::Hixl, HIXL's names only)
#      with g++ -std=c++11 -Werror,
#      once per _GLIBCXX_USE_CXX11_ABI value, flags from `pkg-config llm_datadist`;
#   2. adxl_client.cc and hixl_client.cc through a separate CMake project using
#      find_package().
# Usage: run_install_test.sh <build dir> <source dir> [<cmake command>]
# Env:   CXX_FOR_INSTALL_TEST (default g++), LLMDD_INSTALL_TEST_KEEP=1 keeps the temp dir.
# shellcheck disable=SC2086  # PC_FLAGS / PC_CFLAGS are word lists by design
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <build dir> <source dir> [<cmake command>]" >&2
  exit 2
fi
BUILD_DIR=$(cd "$1" && pwd)
SRC_DIR=$(cd "$2" && pwd)
CMAKE=${3:-cmake}
CXX_BIN=${CXX_FOR_INSTALL_TEST:-g++}
HERE="$SRC_DIR/tests/install"
RUN_TIMEOUT=120

fail() {
  echo "install test: FAILED: $*" >&2
  exit 1
}
step() { echo "==> $*"; }

for tool in "$CMAKE" "$CXX_BIN" pkg-config nm timeout; do
  command -v "$tool" >/dev/null 2>&1 || fail "required tool '$tool' not found"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/llmdd-install-test.XXXXXX")
cleanup() {
  if [[ "${LLMDD_INSTALL_TEST_KEEP:-0}" == "1" ]]; then
    echo "install test: keeping $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
PREFIX="$WORK/prefix"

# ---- 1. install --------------------------------------------------------------
step "cmake --install $BUILD_DIR --prefix $PREFIX"
"$CMAKE" --install "$BUILD_DIR" --prefix "$PREFIX" >"$WORK/install.log" 2>&1 || {
  cat "$WORK/install.log" >&2
  fail "cmake --install failed"
}

# Locate the library directory (lib or lib/<multiarch>) from the .pc file.
PC_FILE=$(find "$PREFIX" -name llm_datadist.pc -path '*/pkgconfig/*' | head -n1)
[[ -n "$PC_FILE" ]] || fail "llm_datadist.pc was not installed under $PREFIX"
PC_DIR=$(dirname "$PC_FILE")
LIB_DIR=$(dirname "$PC_DIR")

for h in adxl/adxl_engine.h adxl/adxl_types.h hixl/hixl.h hixl/hixl_types.h llm_datadist/llm_datadist.h \
         external/ge_common/ge_api_error_codes.h external/graph/ascend_string.h \
         external/graph/types.h graph/ascend_string.h graph/types.h; do
  [[ -f "$PREFIX/include/$h" ]] || fail "header include/$h not installed"
done
# Every public header of the source tree is installed, and each one compiles on
# its own as C++11 with warnings as errors (self-contained, no C++14 creep).
while IFS= read -r h; do
  [[ -f "$PREFIX/include/$h" ]] || fail "header include/$h of the source tree was not installed"
  printf '#include "%s"\nint main() { return 0; }\n' "$h" |
    "$CXX_BIN" -std=c++11 -Wall -Wextra -Werror -fsyntax-only -x c++ -I"$PREFIX/include" - \
    || fail "installed header $h does not compile on its own with -std=c++11 -Werror"
done < <(cd "$SRC_DIR/include" && find . -name '*.h' | sed 's|^\./||' | sort)
[[ -L "$LIB_DIR/libllm_datadist.so" ]] || fail "$LIB_DIR/libllm_datadist.so (dev symlink) missing"
SONAME_LINK=$(readlink "$LIB_DIR/libllm_datadist.so")
[[ -e "$LIB_DIR/$SONAME_LINK" ]] || fail "libllm_datadist.so points to missing $SONAME_LINK"
REAL_LIB=$(readlink -f "$LIB_DIR/libllm_datadist.so")
SONAME=$(objdump -p "$REAL_LIB" 2>/dev/null | awk '/SONAME/ {print $2}') || true
if [[ -n "$SONAME" ]]; then
  [[ -e "$LIB_DIR/$SONAME" ]] || fail "soname symlink $SONAME missing in $LIB_DIR"
fi
for f in llm_datadistConfig.cmake llm_datadistConfigVersion.cmake llm_datadistTargets.cmake; do
  [[ -f "$LIB_DIR/cmake/llm_datadist/$f" ]] || fail "CMake package file $f not installed"
done
echo "installed: $(cd "$PREFIX" && find . -type f -o -type l | sort | tr '\n' ' ')"

# The installed library must export the public API (and nothing from the
# source tree must be needed to use it).
EXPORTS="$WORK/exports.txt"
nm -DC --defined-only "$REAL_LIB" >"$EXPORTS" || fail "nm on $REAL_LIB failed"
for sym in 'adxl::AdxlEngine::Initialize' 'adxl::AdxlEngine::TransferSync' 'adxl::AdxlEngine::TransferAsync' \
           'adxl::AdxlEngine::GetTransferStatus' 'adxl::AdxlEngine::MallocMem' 'adxl::AdxlEngine::FreeMem' \
           'adxl::AdxlEngine::GetCapability' 'adxl::AdxlEngine::ExportToShareableHandle' \
           'hixl::Hixl::Initialize' 'hixl::Hixl::ConnectAsync' 'hixl::Hixl::GetAsyncConnectStatus' \
           'hixl::Hixl::GetTransferStatus(hixl::GetTransferStatusArgs const&' 'hixl::Hixl::SendNotify' \
           'adxl::AdxlEngine::SendNotify' 'adxl::AdxlEngine::GetNotifies' \
           'ge::AscendString::AscendString'; do
  grep -qF "$sym" "$EXPORTS" || fail "$REAL_LIB does not export $sym"
done

# ---- 2. pkg-config clients, both libstdc++ ABIs --------------------------------
export PKG_CONFIG_PATH="$PC_DIR"
export PKG_CONFIG_LIBDIR="$PC_DIR"   # only the temp prefix, never a system copy
PC_FLAGS=$(pkg-config --cflags --libs llm_datadist) || fail "pkg-config --cflags --libs llm_datadist failed"
PC_CFLAGS=$(pkg-config --cflags llm_datadist) || fail "pkg-config --cflags llm_datadist failed"
echo "pkg-config --cflags --libs llm_datadist: $PC_FLAGS"
[[ "$PC_FLAGS" == *"-I$PREFIX/include"* ]] || fail "pkg-config Cflags do not point at $PREFIX/include"
[[ "$PC_FLAGS" == *"-L$LIB_DIR"* ]] || fail "pkg-config Libs do not point at $LIB_DIR"
[[ "$PC_FLAGS" != *"$SRC_DIR"* ]] || fail "pkg-config flags reference the source tree"
pkg-config --static --libs llm_datadist | grep -q -- '-pthread' || fail "pkg-config Libs.private lacks -pthread"

CXXFLAGS_STRICT=(-std=c++11 -Wall -Wextra -Werror -Wno-unused-parameter)
export LD_LIBRARY_PATH="$LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

run_client() {  # <binary> <expected line>
  local bin=$1 expect=$2 out rc=0
  out=$(timeout "$RUN_TIMEOUT" "$bin" 2>&1) || rc=$?
  if [[ $rc -eq 0 ]] && grep -qx "$expect" <<<"$out"; then
    # Success: the library's log lines for the deliberately provoked errors are noise.
    grep -E '^(adxl_client|adxl_legacy_client|llm_datadist_client|hixl_client)' <<<"$out" | sed "s|^|    $(basename "$bin"): |"
    return 0
  fi
  printf '%s\n' "$out" | sed "s|^|    $(basename "$bin"): |" >&2
  [[ $rc -ne 124 ]] || fail "$(basename "$bin") timed out after ${RUN_TIMEOUT}s"
  [[ $rc -eq 0 ]] || fail "$(basename "$bin") exited with status $rc"
  grep -qx "$expect" <<<"$out" || fail "$(basename "$bin") did not print '$expect'"
}

# llmdd_ext::Version() (llmdd/extensions.h) is the package's version.
step "llmdd_ext::Version() against pkg-config --modversion"
grep -qF 'llmdd_ext::Version()' "$EXPORTS" || fail "$REAL_LIB does not export llmdd_ext::Version()"
grep -qF 'llmdd_ext::StatusName(unsigned int)' "$EXPORTS" || fail "$REAL_LIB does not export llmdd_ext::StatusName()"
printf '#include "llmdd/extensions.h"\n#include <cstdio>\nint main() { std::printf("%%s\\n", llmdd_ext::Version()); return 0; }\n' |
  "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -x c++ - -o "$WORK/print_version" $PC_FLAGS || fail "compiling a llmdd_ext::Version() client"
LIB_VERSION=$(timeout "$RUN_TIMEOUT" "$WORK/print_version") || fail "running the llmdd_ext::Version() client"
PC_VERSION=$(pkg-config --modversion llm_datadist)
[[ -n "$LIB_VERSION" && "$LIB_VERSION" == "$PC_VERSION" ]] ||
  fail "llmdd_ext::Version() says '$LIB_VERSION', pkg-config --modversion says '$PC_VERSION'"
echo "    library version $LIB_VERSION"

HAVE_DATADIST=0
if grep -qF 'llm_datadist::LlmDataDist::Initialize' "$EXPORTS"; then
  HAVE_DATADIST=1
fi

for abi in 0 1; do
  step "adxl_client, _GLIBCXX_USE_CXX11_ABI=$abi (pkg-config)"
  bin="$WORK/adxl_client_abi$abi"
  "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -D_GLIBCXX_USE_CXX11_ABI=$abi "$HERE/adxl_client.cc" -o "$bin" $PC_FLAGS \
    || fail "compiling/linking adxl_client.cc with _GLIBCXX_USE_CXX11_ABI=$abi"
  run_client "$bin" "adxl_client OK"

  step "hixl_client, _GLIBCXX_USE_CXX11_ABI=$abi (pkg-config)"
  bin="$WORK/hixl_client_abi$abi"
  "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -D_GLIBCXX_USE_CXX11_ABI=$abi "$HERE/hixl_client.cc" -o "$bin" $PC_FLAGS \
    || fail "compiling/linking hixl_client.cc with _GLIBCXX_USE_CXX11_ABI=$abi"
  run_client "$bin" "hixl_client OK"

  step "adxl_legacy_client (built with the first headers), _GLIBCXX_USE_CXX11_ABI=$abi (pkg-config)"
  bin="$WORK/adxl_legacy_client_abi$abi"
  "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -D_GLIBCXX_USE_CXX11_ABI=$abi -I"$HERE/legacy" \
    "$HERE/legacy_client.cc" -o "$bin" $PC_FLAGS \
    || fail "compiling/linking legacy_client.cc with _GLIBCXX_USE_CXX11_ABI=$abi"
  run_client "$bin" "adxl_legacy_client OK"

  step "llm_datadist_client, _GLIBCXX_USE_CXX11_ABI=$abi (pkg-config)"
  obj="$WORK/llm_datadist_client_abi$abi.o"
  "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -D_GLIBCXX_USE_CXX11_ABI=$abi $PC_CFLAGS \
    -c "$HERE/llm_datadist_client.cc" -o "$obj" \
    || fail "compiling llm_datadist_client.cc with _GLIBCXX_USE_CXX11_ABI=$abi"
  if [[ $HAVE_DATADIST -eq 1 ]]; then
    bin="$WORK/llm_datadist_client_abi$abi"
    "$CXX_BIN" "${CXXFLAGS_STRICT[@]}" -D_GLIBCXX_USE_CXX11_ABI=$abi -DLLMDD_CLIENT_RUN_DATADIST \
      "$HERE/llm_datadist_client.cc" -o "$bin" $PC_FLAGS \
      || fail "compiling/linking llm_datadist_client.cc (run mode) with _GLIBCXX_USE_CXX11_ABI=$abi"
    run_client "$bin" "llm_datadist_client OK"
  else
    # The compile-only object still links: it calls nothing of LlmDataDist.
    bin="$WORK/llm_datadist_client_abi${abi}_compile_only"
    "$CXX_BIN" "$obj" -o "$bin" $PC_FLAGS || fail "linking compile-only llm_datadist_client (ABI $abi)"
    run_client "$bin" "llm_datadist_client OK"
    echo "    SKIPPED: LlmDataDist run-time checks (installed library does not export" \
         "llm_datadist::LlmDataDist::Initialize yet)"
  fi
done

# ---- 3. CMake consumer via find_package ----------------------------------------
step "CMake consumer: find_package(llm_datadist) with CMAKE_PREFIX_PATH=$PREFIX"
CONSUMER_BUILD="$WORK/consumer-build"
# Keep the consumer independent of the parent build's environment.
unset CMAKE_PREFIX_PATH llm_datadist_DIR || true
"$CMAKE" -S "$HERE/consumer" -B "$CONSUMER_BUILD" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DCMAKE_CXX_COMPILER="$(command -v "$CXX_BIN")" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  >"$WORK/consumer-configure.log" 2>&1 || {
  cat "$WORK/consumer-configure.log" >&2
  fail "configuring the find_package consumer"
}
grep -F "llm_datadist" "$WORK/consumer-configure.log" | sed 's/^/    /'
grep -qF "$PREFIX" "$CONSUMER_BUILD/CMakeCache.txt" || fail "consumer did not find the package under $PREFIX"
if grep -qF "$SRC_DIR/include" "$CONSUMER_BUILD/compile_commands.json"; then
  fail "consumer compile flags reference the source tree's include/"
fi
"$CMAKE" --build "$CONSUMER_BUILD" -j2 >"$WORK/consumer-build.log" 2>&1 || {
  cat "$WORK/consumer-build.log" >&2
  fail "building the find_package consumer"
}
run_client "$CONSUMER_BUILD/adxl_client" "adxl_client OK"
run_client "$CONSUMER_BUILD/hixl_client" "hixl_client OK"

echo "install test: PASSED"
