#include "common/host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "common/log.h"

namespace llmdd {
namespace {

std::mutex &AllocationsMutex() {
  static std::mutex mutex;
  return mutex;
}
// Never destroyed: FreeMem may run from static destructors of a program.
std::map<uintptr_t, HostAllocation> &Allocations() {
  static auto *allocations = new std::map<uintptr_t, HostAllocation>();
  return *allocations;
}

size_t ReadHugePageBytes() {
  FILE *f = fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  size_t kib = 0;
  while (fgets(line, sizeof(line), f) != nullptr) {
    unsigned long value = 0;
    if (sscanf(line, "Hugepagesize: %lu kB", &value) == 1) {
      kib = value;
      break;
    }
  }
  fclose(f);
  return kib * 1024;
}

size_t RoundUp(size_t size, size_t unit, bool *overflow) {
  const size_t rem = size % unit;
  if (rem == 0) return size;
  size_t rounded = 0;
  *overflow = __builtin_add_overflow(size, unit - rem, &rounded);
  return rounded;
}

std::once_flag no_huge_pages_logged;

}  // namespace

size_t DefaultHugePageBytes() {
  static const size_t bytes = ReadHugePageBytes();
  return bytes;
}

HostAllocStatus AllocateHostMemory(size_t size, HostAllocation *out) {
  if (out == nullptr || size == 0) return HostAllocStatus::kInvalid;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t huge = DefaultHugePageBytes();
  HostAllocation a;
  bool overflow = false;
  if (huge != 0 && size >= huge) {
    const size_t len = RoundUp(size, huge, &overflow);
    if (!overflow) {
      void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
      if (p != MAP_FAILED) {
        a.addr = p;
        a.mapped = len;
        a.huge_tlb = true;
      } else {
        const int err = errno;
        std::call_once(no_huge_pages_logged, [&] {
          LOG_WARN("MallocMem: no reserved huge pages of %zu KiB available (%s; see /proc/sys/vm/nr_hugepages): "
                   "host memory uses %zu-byte pages with transparent huge pages advised",
                   huge / 1024, strerror(err), page);
        });
      }
    }
  } else if (huge == 0) {
    std::call_once(no_huge_pages_logged, [&] {
      LOG_WARN("MallocMem: this host has no huge pages: host memory uses %zu-byte pages", page);
    });
  }
  if (a.addr == nullptr) {
    overflow = false;
    const size_t len = RoundUp(size, page, &overflow);
    if (overflow) return HostAllocStatus::kNoMemory;
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return HostAllocStatus::kNoMemory;
    // Large buffers: ask for transparent huge pages (ignored where THP is off).
    if (huge != 0 && len >= huge) madvise(p, len, MADV_HUGEPAGE);
    a.addr = p;
    a.mapped = len;
  }
  try {
    std::lock_guard lock(AllocationsMutex());
    Allocations()[reinterpret_cast<uintptr_t>(a.addr)] = a;
  } catch (...) {
    munmap(a.addr, a.mapped);
    return HostAllocStatus::kNoMemory;
  }
  *out = a;
  return HostAllocStatus::kOk;
}

bool FreeHostMemory(void *addr) {
  if (addr == nullptr) return false;
  HostAllocation a;
  {
    std::lock_guard lock(AllocationsMutex());
    auto it = Allocations().find(reinterpret_cast<uintptr_t>(addr));
    if (it == Allocations().end()) return false;
    a = it->second;
    Allocations().erase(it);
  }
  munmap(a.addr, a.mapped);
  return true;
}

bool FindHostAllocation(const void *addr, HostAllocation *out) {
  std::lock_guard lock(AllocationsMutex());
  auto it = Allocations().find(reinterpret_cast<uintptr_t>(addr));
  if (it == Allocations().end()) return false;
  *out = it->second;
  return true;
}

}  // namespace llmdd
