// Host memory for AdxlEngine::MallocMem / FreeMem: page-aligned anonymous
// mappings, on huge pages where the host has them.
//
// An allocation of at least one huge page (2 MiB on x86-64 and most aarch64
// kernels; the size is read from /proc/meminfo) is first tried with
// MAP_HUGETLB from the host's reserved huge pages; when none are reserved (or
// they are used up) it falls back to ordinary pages with transparent huge
// pages advised (MADV_HUGEPAGE), and says so in the log once per process.
// Smaller allocations use ordinary pages. Sizes are rounded up to the page
// size used.
//
// Thread-safe; process-wide (the allocations outlive every engine).
#pragma once

#include <cstddef>
#include <cstdint>

namespace llmdd {

enum class HostAllocStatus { kOk, kInvalid, kNoMemory };

struct HostAllocation {
  void *addr = nullptr;
  size_t mapped = 0;     // bytes mapped (the size rounded up to the page size used)
  bool huge_tlb = false;  // from the reserved huge pages (MAP_HUGETLB)
};

// size == 0 or out == nullptr: kInvalid. No memory (or no mapping): kNoMemory.
HostAllocStatus AllocateHostMemory(size_t size, HostAllocation *out);
// Unmaps an address AllocateHostMemory returned; false (nothing done) for any
// other address, nullptr included.
bool FreeHostMemory(void *addr);
// The allocation that starts at `addr`, if any (tests, diagnostics).
bool FindHostAllocation(const void *addr, HostAllocation *out);
// The huge page size the kernel uses by default (0 if it has none).
size_t DefaultHugePageBytes();

}  // namespace llmdd
