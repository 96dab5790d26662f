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
//     only transfers large enough for every part to stay large are split; on
//     the same-host path a part gains only while a core is free to copy it,
//     so it is split into at most as many parts as this process has cores.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "adxl/adxl_types.h"
#include "engine/engine_config.h"
#include "transport/transport.h"

namespace llmdd {

// Same-host request instead of the socket: from this many bytes (READ), and
// descriptors of at least this size on average.
constexpr uint64_t kSameHostMinReadBytes = 64 * 1024;
constexpr uint64_t kSameHostMinAvgDescriptor = 4 * 1024;
// One-sided READ under the standing lease (no message at all): at most this
// many descriptors and kOneSidedMaxBytes; the lease is renewed this long
// before it ends. The copy must end within the lease (else it is redone as a
// request): kOneSidedMaxBytes copied at 1 GB/s, far below this host's worst
// (docs/PERFORMANCE.md), take 16.8 ms, inside the renewal margin. Larger
// READs lose little by a request: its round trip (~20-60 µs) is a few % of
// copying 16 MiB (~1.1 ms at 15 GB/s). The descriptor cap is what one
// process_vm_readv takes (IOV_MAX): a request costs more than its round trip
// for many descriptors (the server validates and pins each), e.g. 65 x 16 KiB
// took 113 µs as a request against 62 µs for 64 one-sided (KV pulls of a few
// blocks per layer are such batches). Past kOneSidedAnySizeDescriptors the
// descriptors must average kSameHostMinAvgDescriptor: the kernel pins every
// remote iovec, and 512 x 8 B one-sided took 97 µs against 58 µs over TCP.
constexpr size_t kOneSidedMaxDescriptors = 1024;
constexpr size_t kOneSidedAnySizeDescriptors = 64;
constexpr uint64_t kOneSidedMaxBytes = 16ULL << 20;
constexpr std::chrono::milliseconds kLeaseRenewMargin{20};
// A request of at most this many bytes never waits behind larger ones: when
// every regular lane is busy it takes the peer's express lane (LanePool).
constexpr uint64_t kExpressMaxBytes = 64 * 1024;
// Submitted requests to one peer that are queued for a worker travel together
// (Engine::RunQueued) while the group stays within these totals; the scan for
// companions looks at this many queued requests at most.
constexpr uint64_t kCoalesceMaxBytes = 16ULL << 20;
constexpr size_t kCoalesceMaxDescriptors = 4096;
constexpr size_t kCoalesceMaxScan = 1024;
// A burst being submitted (at least two requests queued, the newest younger
// than kCoalesceQuietGap) is waited for, up to kCoalesceMaxLinger, so that
// it travels as one carrier split across the lanes rather than as a head
// and a tail that queues behind it for a lane. A request younger than the
// quiet gap may be the head of a burst, so even a lone one waits until it is
// kCoalesceQuietGap old (rarely at all: waking a worker takes about as long);
// without that, a runner woken on the first of 64 submissions ran it alone
// and half the rounds of `llmdd_bench async` split into a head and a tail.
constexpr std::chrono::microseconds kCoalesceQuietGap{10};
constexpr std::chrono::microseconds kCoalesceMaxLinger{100};
// A thread that keeps polling one request (GetTransferStatus) answered
// WAITING kStatusSpinAnswers times in a row then waits for it, up to
// kStatusWaitSlice per query, instead of spinning: on a host with few cores
// a tight polling loop takes the processor from the threads moving that
// request's bytes (Engine::PaceWaitingQuery).
constexpr uint32_t kStatusSpinAnswers = 16;
constexpr std::chrono::microseconds kStatusWaitSlice{50};
// A same-host WRITE's answer comes after the server's copy: its requester
// spins (ScopedReadSpinFloor) for the usual spin plus the copy's time at
// kSameHostSpinCopyBytesPerUs (4 GB/s: below what process_vm_readv does on
// the project's hosts, 10-24 GB/s), when that is at most kSameHostSpinMaxUs.
// Without it a WRITE that outlasts the 50 µs spin slept and paid a wake-up:
// 1 MiB same-host WRITE 7.4-7.5 GB/s, with a 200 µs spin 14.9-16.4, on the
// 2-vCPU AMD guest (docs/PERFORMANCE.md, "Results"). Longer copies (calls of
// several MiB, split on more cores) block: a wake-up is small beside them,
// and a spinner would take a core from the copy.
constexpr uint64_t kSameHostSpinCopyBytesPerUs = 4000;
constexpr uint32_t kSameHostSpinMaxUs = 1000;
inline uint32_t SameHostWriteSpinUs(uint32_t read_spin_us, uint64_t total_bytes) {
  const uint64_t copy_us = total_bytes / kSameHostSpinCopyBytesPerUs;
  if (read_spin_us == 0 || copy_us + read_spin_us > kSameHostSpinMaxUs) return 0;
  return static_cast<uint32_t>(copy_us) + read_spin_us;
}

// TCP: split across lanes from this many bytes, in parts of at least
// kMinPartBytes. Each part is a request of its own (a round trip, a worker
// hand-off and a wake-up on both ends): a hot 1 MiB call in 4 parts of
// 256 KiB moved 2.9-3.1 GB/s over loopback on 2 cores, in 2 parts of 512 KiB
// 3.8-4.4 (READ) and 3.6-5.0 (WRITE), with no change from 2 MiB up
// (docs/PERFORMANCE.md, "TCP: parts of at least 512 KiB").
constexpr uint64_t kParallelThreshold = 1ULL << 20;
constexpr uint64_t kMinPartBytes = 512ULL << 10;
// Same-host: parts of at least this many bytes (llmdd.SameHostMinPartBytes),
// and no more parts than cores. A same-host part is one copy by one thread
// (ours for a READ, a server lane thread for a WRITE) plus a worker hand-off
// and, for a request, its message exchange; measured on 2 cores
// (docs/PERFORMANCE.md, "Same-host calls: split and one-sided READ").
// The default, kSameHostMinPartBytesDefault, is the option's (engine_config.h).

// How a pool splits transfers: the cores this process may run on
// (UsableCores(), common/threads.h) and the same-host part size.
struct SplitRule {
  size_t cores = 1;
  uint64_t same_host_min_part_bytes = kSameHostMinPartBytesDefault;
};

// A same-host request pays for `count` descriptors moving `total_bytes`.
inline bool SameHostPays(adxl::TransferOp op, uint64_t total_bytes, size_t count) {
  if (count == 0) return false;
  if (op == adxl::READ && total_bytes < kSameHostMinReadBytes) return false;
  return total_bytes / count >= kSameHostMinAvgDescriptor;
}

// A one-sided read (no message) is tried for this transfer (or for each of
// its parts, when split).
inline bool OneSidedReadFits(adxl::TransferOp op, uint64_t total_bytes, size_t count) {
  if (op != adxl::READ || count == 0 || count > kOneSidedMaxDescriptors || total_bytes > kOneSidedMaxBytes) return false;
  return count <= kOneSidedAnySizeDescriptors || total_bytes / count >= kSameHostMinAvgDescriptor;
}

// TCP: how many parts (lanes at once) a transfer of `total_bytes` is split
// into when `lanes` lanes are available; 1: not split. Loopback TCP gains
// from parallel streams even past the cores (the kernel copies on both
// ends), so the lanes bound it, not the cores.
inline size_t SplitParts(uint64_t total_bytes, size_t lanes) {
  if (total_bytes < kParallelThreshold || lanes <= 1) return 1;
  const uint64_t parts = total_bytes / kMinPartBytes;
  return parts < 1 ? 1 : (parts < lanes ? static_cast<size_t>(parts) : lanes);
}

// Same-host: parts of at least `min_part_bytes`, at most one per core and
// per lane; 1: not split (a 1 MiB call on 2 cores with the default stays
// whole: one copy, no hand-off). min_part_bytes 0 is taken as "never split".
inline size_t SameHostSplitParts(uint64_t total_bytes, size_t lanes, size_t cores, uint64_t min_part_bytes) {
  const size_t most = std::min(lanes, cores);
  if (most <= 1 || min_part_bytes == 0) return 1;
  const uint64_t parts = total_bytes / min_part_bytes;
  return parts <= 1 ? 1 : static_cast<size_t>(std::min<uint64_t>(parts, most));
}

// The parts a transfer of `total_bytes` on the link with `caps` is split into.
inline size_t PartsFor(const TransportCaps &caps, uint64_t total_bytes, size_t lanes, const SplitRule &rule) {
  if (std::string_view(caps.name) == "shm") {
    return SameHostSplitParts(total_bytes, lanes, rule.cores, rule.same_host_min_part_bytes);
  }
  return SplitParts(total_bytes, lanes);
}

// Where a link stands among the paths offered a transfer: lower is offered
// first, negative is not offered. Every link's rule is here, next to the
// others it competes with:
//   - a fake (tests) takes everything it can: the test put it there;
//   - the same-host path where it pays (a request), or for a READ that may
//     fit its standing lease (the link declines it otherwise);
//   - TCP takes anything, last.
//   - UCX: forced (llmdd.Transport=ucx), everything, before the others;
//     under `auto` only links whose endpoint moves data with hardware RMA
//     exist (UcxTransport decides at Connect), after the same-host path and
//     before TCP.
inline int PathRank(const TransportCaps &caps, adxl::TransferOp op, uint64_t total_bytes, size_t count) {
  const std::string_view name(caps.name);
  if (name == "fake") return 0;
  if (name == "shm") return SameHostPays(op, total_bytes, count) || OneSidedReadFits(op, total_bytes, count) ? 10 : -1;
  // UCX (docs/UCX.md "Selecting it"): forced, it takes everything; under
  // `auto` its link exists only over hardware RMA (InfiniBand, RoCE), where
  // it beats kernel TCP at every size, and the same-host path keeps what it
  // takes (on one host it is a single copy). Over UCX's tcp, our own TCP is
  // several times faster (docs/PERFORMANCE.md): auto makes no link there.
  if (name == "ucx") return caps.chosen_where_it_pays ? 20 : 5;
  if (name == "tcp") return 100;
  return 50;
}

// Fills `order` with the usable links of `links` that can move this transfer
// (its operation, the memory kind of its ranges), in the order to offer it;
// returns how many. At most `max_order` are written.
inline size_t OrderPaths(const std::shared_ptr<TransportLink> *links, size_t count_links, adxl::TransferOp op,
                         uint64_t total_bytes, size_t count, MemoryKind kind, TransportLink **order,
                         size_t max_order) {
  size_t n = 0;
  int ranks[8];
  for (size_t i = 0; i < count_links && n < max_order && n < 8; ++i) {
    TransportLink *link = links[i].get();
    if (link == nullptr || !link->Usable()) continue;
    const TransportCaps &caps = link->Caps();
    if ((op == adxl::READ && !caps.read) || (op == adxl::WRITE && !caps.write)) continue;
    if ((caps.memory_kinds & MemoryKindBit(kind)) == 0) continue;
    const int rank = PathRank(caps, op, total_bytes, count);
    if (rank < 0) continue;
    size_t at = n++;  // insertion sort: a handful of links
    while (at > 0 && ranks[at - 1] > rank) {
      order[at] = order[at - 1];
      ranks[at] = ranks[at - 1];
      --at;
    }
    order[at] = link;
    ranks[at] = rank;
  }
  return n;
}

}  // namespace llmdd
