#include "common/host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
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
struct Allocation {
  HostAllocation host;
  uint64_t inode = 0, device = 0;  // shareable: the memfd's identity
};
std::map<uintptr_t, Allocation> &Allocations() {
  static auto *allocations = new std::map<uintptr_t, Allocation>();
  return *allocations;
}
size_t shareable_count = 0;   // guarded by AllocationsMutex()
uint64_t last_serial = 0;     // guarded by AllocationsMutex()

// A shareable allocation of `len` bytes (page multiple): a tmpfs memfd sealed
// against shrinking (and further seals), mapped shared. False: not made (no
// slot, or the kernel refused); the caller falls back to private pages.
// Strict overcommit (vm.overcommit_memory = 2): a private mapping is refused
// up front when memory is short, but tmpfs pages are charged only when first
// touched, where a refusal is SIGBUS. MallocMem keeps its clean refusal there.
bool StrictOvercommit() {
  static const bool strict = [] {
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    int mode = 0;
    if (f != nullptr) {
      if (fscanf(f, "%d", &mode) != 1) mode = 0;
      fclose(f);
    }
    return mode == 2;
  }();
  return strict;
}

bool MapShareable(size_t len, HostAllocation *a, Allocation *record) {
  if (StrictOvercommit()) return false;
  {
    std::lock_guard lock(AllocationsMutex());
    if (shareable_count >= kMaxShareableAllocations) return false;
    ++shareable_count;  // the slot is taken now, given back below on failure
  }
  auto give_back = [] {
    std::lock_guard lock(AllocationsMutex());
    --shareable_count;
  };
  const int fd = memfd_create("llmdd-host", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  struct stat st {};
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(len)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 || fstat(fd, &st) != 0) {
    if (fd >= 0) close(fd);
    give_back();
    return false;
  }
  void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    give_back();
    return false;
  }
  // Transparent huge pages where tmpfs allows them (shmem_enabled "advise").
  madvise(p, len, MADV_HUGEPAGE);
  a->addr = p;
  a->mapped = len;
  a->fd = fd;
  record->inode = st.st_ino;
  record->device = st.st_dev;
  return true;
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

void Unmap(const HostAllocation &a) {
  // Peers may keep the file mapped (transport/shm/peer_mappings.h): free the
  // pages now, not when the last of them lets go.
  if (a.fd >= 0) fallocate(a.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(a.mapped));
  munmap(a.addr, a.mapped);
  if (a.fd >= 0) {
    close(a.fd);
    std::lock_guard lock(AllocationsMutex());
    --shareable_count;
  }
}

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
                   "host memory uses %zu-byte pages with transparent huge pages advised (shareable tmpfs pages from 1 MiB)",
                   huge / 1024, strerror(err), page);
        });
      }
    }
  } else if (huge == 0) {
    std::call_once(no_huge_pages_logged, [&] {
      LOG_WARN("MallocMem: this host has no huge pages: host memory uses %zu-byte pages", page);
    });
  }
  Allocation record;
  if (a.addr == nullptr) {
    overflow = false;
    const size_t len = RoundUp(size, page, &overflow);
    if (overflow) return HostAllocStatus::kNoMemory;
    if (len < kShareableMinBytes || !MapShareable(len, &a, &record)) {
      void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return HostAllocStatus::kNoMemory;
      // Large buffers: ask for transparent huge pages (ignored where THP is off).
      if (huge != 0 && len >= huge) madvise(p, len, MADV_HUGEPAGE);
      a.addr = p;
      a.mapped = len;
    }
  }
  try {
    std::lock_guard lock(AllocationsMutex());
    if (a.fd >= 0) a.serial = ++last_serial;
    record.host = a;
    Allocations()[reinterpret_cast<uintptr_t>(a.addr)] = record;
  } catch (...) {
    Unmap(a);
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
    a = it->second.host;
    Allocations().erase(it);
  }
  Unmap(a);
  return true;
}

bool FindHostAllocation(const void *addr, HostAllocation *out) {
  std::lock_guard lock(AllocationsMutex());
  auto it = Allocations().find(reinterpret_cast<uintptr_t>(addr));
  if (it == Allocations().end()) return false;
  *out = it->second.host;
  return true;
}

bool FindSharedBacking(uintptr_t addr, uint64_t len, SharedBacking *out) {
  uintptr_t end = 0;
  if (len == 0 || __builtin_add_overflow(addr, len, &end)) return false;
  std::lock_guard lock(AllocationsMutex());
  auto it = Allocations().upper_bound(addr);
  if (it == Allocations().begin()) return false;
  --it;
  const Allocation &a = it->second;
  const uintptr_t base = reinterpret_cast<uintptr_t>(a.host.addr);
  if (a.host.fd < 0 || end - base > a.host.mapped) return false;
  out->fd = a.host.fd;
  out->serial = a.host.serial;
  out->offset = addr - base;
  out->inode = a.inode;
  out->device = a.device;
  out->base = base;
  out->size = a.host.mapped;
  return true;
}

}  // namespace llmdd
