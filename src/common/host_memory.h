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
// Shareable allocations. Without reserved huge pages, an allocation of at
// least kShareableMinBytes is a shared mapping of a memfd (tmpfs, sealed
// against shrinking, so a peer that maps it can never fault past its end),
// and the descriptor stays open for the allocation's life: a same-host peer
// that may read this process's memory anyway (ptrace permission, as
// process_vm_readv needs) takes it with pidfd_getfd and maps it read-only, and
// then reads registered ranges with plain memcpy (transport/shm/
// peer_mappings.h). At most kMaxShareableAllocations are shareable at once
// (each holds a descriptor); beyond, where memfd_create fails, or under strict
// overcommit (vm.overcommit_memory 2: tmpfs pages are charged when touched,
// where running short is SIGBUS, not a refusal), ordinary private pages. A shareable allocation is MAP_SHARED: a child
// forked after MallocMem shares it instead of getting a copy-on-write copy.
// FreeHostMemory frees a shareable allocation's pages at once (it punches
// the whole file), whatever peers still have it mapped: they read zeros.
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
  int fd = -1;            // shareable: the memfd mapped at addr (else -1)
  uint64_t serial = 0;    // shareable: unique in this process's life (never reused)
};

constexpr size_t kShareableMinBytes = 1u << 20;
constexpr size_t kMaxShareableAllocations = 256;

// Where the bytes [addr, addr + len) live when one shareable allocation holds
// them all: its descriptor, serial and the file's identity (fstat), and the
// offset of addr in the file.
struct SharedBacking {
  int fd = -1;
  uint64_t serial = 0;
  uint64_t offset = 0;
  uint64_t inode = 0;
  uint64_t device = 0;
  uintptr_t base = 0;  // the allocation: [base, base + size) is the whole file
  uint64_t size = 0;
};
bool FindSharedBacking(uintptr_t addr, uint64_t len, SharedBacking *out);

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
