// Path policy: the one place that decides which path carries a transfer, and
// every threshold it uses. The carriers (the lane protocol for TCP and
// same-host requests, the standing read lease for one-sided reads, the lane
// pool's split across lanes) ask here and only carry out; a new path (UCX,
// device memory) adds its rule here, next to the ones it competes with.
//
// The numbers were measured on the project's hosts (docs/PERFORMANCE.md):
//   - one-sided read under the standing lease: one process_vm_readv, no
//     message; worth it while the copy is short next to a round trip and the
//     lease lists the ranges (renewal and range checks cost per descriptor);
//   - same-host request (the server copies with process_vm_readv/writev):
//     saves the socket copy, but a READ costs a third message (the lease
//     release) and the kernel pins every remote iovec (~0.4 µs each), so small
//     READs and batches of small descriptors are faster as a plain TCP request;
//   - split across lanes: parts pay a worker hand-off and a request each, so
//     only transfers large enough for every part to stay large are split.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "adxl/adxl_types.h"

namespace llmdd {

// Same-host request instead of the socket: from this many bytes (READ), and
// descriptors of at least this size on average.
constexpr uint64_t kSameHostMinReadBytes = 64 * 1024;
constexpr uint64_t kSameHostMinAvgDescriptor = 4 * 1024;
// One-sided READ under the standing lease: below kSameHostMinReadBytes and at
// most this many descriptors; the lease is renewed this long before it ends.
constexpr size_t kOneSidedMaxDescriptors = 64;
constexpr std::chrono::milliseconds kLeaseRenewMargin{20};
// Split across lanes from this many bytes, in parts of at least kMinPartBytes.
constexpr uint64_t kParallelThreshold = 1ULL << 20;
constexpr uint64_t kMinPartBytes = 256ULL << 10;

// A same-host request pays for `count` descriptors moving `total_bytes`.
inline bool SameHostPays(adxl::TransferOp op, uint64_t total_bytes, size_t count) {
  if (count == 0) return false;
  if (op == adxl::READ && total_bytes < kSameHostMinReadBytes) return false;
  return total_bytes / count >= kSameHostMinAvgDescriptor;
}

// A one-sided read (no message) is tried for this transfer.
inline bool OneSidedReadFits(adxl::TransferOp op, uint64_t total_bytes, size_t count) {
  return op == adxl::READ && count <= kOneSidedMaxDescriptors && total_bytes < kSameHostMinReadBytes;
}

// How many parts (lanes at once) a transfer of `total_bytes` is split into
// when `lanes` lanes are available; 1: not split.
inline size_t SplitParts(uint64_t total_bytes, size_t lanes) {
  if (total_bytes < kParallelThreshold || lanes <= 1) return 1;
  const uint64_t parts = total_bytes / kMinPartBytes;
  return parts < 1 ? 1 : (parts < lanes ? static_cast<size_t>(parts) : lanes);
}

}  // namespace llmdd
