#include "transport/shm/peer_mappings.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "common/log.h"
#include "transport/shm/cma.h"
#include "transport/shm/same_host_link.h"

namespace llmdd {
namespace {

// Serials refused are remembered so that a bad file is not taken again at
// every renewal; the set is bounded (a hostile peer could name endless ones).
constexpr size_t kMaxRefusedSerials = 4096;
// Write sources mapped per session at most (an honest requester has at most
// kMaxShareableAllocations); beyond, the ones no copy holds are let go. Keeps
// a requester that keeps allocating from growing our mapping count (and
// vm.max_map_count is per process).
constexpr size_t kMaxSourceFiles = 256;

}  // namespace

MappedFile::~MappedFile() { munmap(const_cast<uint8_t *>(base_), size_); }

void PeerMappings::Clear() {
  std::lock_guard lock(mutex_);
  by_serial_.clear();
}

uint64_t PeerMappings::MappedBytes() const {
  std::lock_guard lock(mutex_);
  uint64_t bytes = 0;
  for (const auto &entry : by_serial_) bytes += entry.second->Size();
  return bytes;
}

std::shared_ptr<const MappedFile> PeerMappings::Map(PeerProcess &peer, uint32_t peer_fd, uint64_t serial,
                                                    uint64_t inode, uint64_t device, uint64_t min_size,
                                                    uint64_t in_use, bool *for_good) {
  std::string why;
  std::shared_ptr<const MappedFile> mapped;
  *for_good = false;  // only a file that fails a check is never tried again
  const int fd = peer.DuplicateDescriptor(peer_fd);
  struct stat st {};
  struct statfs fs {};
  if (fd < 0) {
    why = std::string("pidfd_getfd: ") + strerror(errno);
    *for_good = errno != EMFILE && errno != ENFILE && errno != ENOMEM;
  } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_ino) != inode ||
             static_cast<uint64_t>(st.st_dev) != device) {
    why = "descriptor " + std::to_string(peer_fd) + " is not the file listed";
    *for_good = true;
  } else if (fstatfs(fd, &fs) != 0 || static_cast<unsigned long>(fs.f_type) != TMPFS_MAGIC) {
    why = "not a tmpfs file (hugetlbfs and others are read with process_vm_readv)";
    *for_good = true;
  } else if ((fcntl(fd, F_GET_SEALS) & F_SEAL_SHRINK) == 0 || fstat(fd, &st) != 0) {
    // The size counts only once the seal is seen: the file may have shrunk
    // before it was sealed, so it is read again after (never less from then on).
    why = "not sealed against shrinking";
    *for_good = true;
  } else if (st.st_size <= 0 || static_cast<uint64_t>(st.st_size) < min_size) {
    why = "smaller than the allocation listed";
    *for_good = true;
  } else if (static_cast<uint64_t>(st.st_size) > max_bytes_ - std::min(in_use, max_bytes_)) {
    why = "over llmdd.SameHostMapMaxBytes (" + std::to_string(st.st_size) + " bytes, " +
          std::to_string(in_use) + " of " + std::to_string(max_bytes_) + " mapped)";
  } else {
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    void *p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      why = std::string("mmap: ") + strerror(errno);
    } else {
      mapped = std::make_shared<const MappedFile>(static_cast<const uint8_t *>(p), size, inode, device);
    }
  }
  if (fd >= 0) close(fd);
  if (!mapped) {
    LOG_INFO("same-host peer pid %d: allocation %llu is not mapped (%s); its ranges are read with "
             "process_vm_readv",
             static_cast<int>(peer.Pid()), static_cast<unsigned long long>(serial), why.c_str());
  } else {
    LOG_DEBUG("same-host peer pid %d: mapped allocation %llu (%llu bytes) read-only",
              static_cast<int>(peer.Pid()), static_cast<unsigned long long>(serial),
              static_cast<unsigned long long>(mapped->Size()));
  }
  return mapped;
}

void PeerMappings::Refuse(uint64_t serial) {
  if (refused_.size() >= kMaxRefusedSerials) refused_.clear();
  refused_.insert(serial);
}

std::shared_ptr<const MappedFile> PeerMappings::Source(PeerProcess &peer, const wire::SourceMapping &source) {
  if (!Enabled()) return nullptr;
  std::lock_guard lock(mutex_);
  auto known = by_serial_.find(source.serial);
  if (known != by_serial_.end()) {
    if (known->second->Is(source.inode, source.device) && known->second->Size() >= source.size)
      return known->second;
    return nullptr;  // not the allocation this serial named before: not trusted
  }
  if (refused_.count(source.serial) != 0) return nullptr;
  uint64_t in_use = 0;
  for (const auto &entry : by_serial_) in_use += entry.second->Size();
  if (source.size > max_bytes_ - std::min(in_use, max_bytes_) || by_serial_.size() >= kMaxSourceFiles) {
    // Over a cap: let go of what no copy holds now (allocations since freed among them).
    for (auto it = by_serial_.begin(); it != by_serial_.end();) {
      if (it->second.use_count() == 1) {
        in_use -= it->second->Size();
        it = by_serial_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (by_serial_.size() >= kMaxSourceFiles) return nullptr;  // all in use by copies now: process_vm_readv
  bool for_good = false;
  std::shared_ptr<const MappedFile> file =
      Map(peer, source.fd, source.serial, source.inode, source.device, source.size, in_use, &for_good);
  if (!file) {
    if (for_good) Refuse(source.serial);
    return nullptr;
  }
  by_serial_.emplace(source.serial, file);
  return file;
}

void PeerMappings::Attach(PeerProcess &peer, const std::vector<wire::LeaseMapping> &entries, ReadLease *lease) {
  if (!Enabled()) return;
  std::lock_guard lock(mutex_);
  // The lease's regions are sorted by address: find them by their wire index.
  std::map<uint32_t, ReadLease::Region *> by_index;
  for (ReadLease::Region &region : lease->regions) by_index[region.listed_as] = &region;
  std::map<uint64_t, std::shared_ptr<const MappedFile>> kept;
  uint64_t in_use = 0;
  for (const wire::LeaseMapping &entry : entries) {
    auto listed = by_index.find(entry.range_index);
    if (listed == by_index.end()) continue;  // dropped as unusable
    ReadLease::Region &region = *listed->second;
    std::shared_ptr<const MappedFile> file;
    auto known = kept.find(entry.serial);
    if (known != kept.end()) {
      file = known->second;
    } else if ((known = by_serial_.find(entry.serial)) != by_serial_.end() &&
               known->second->Is(entry.inode, entry.device)) {
      file = known->second;
    } else if (refused_.count(entry.serial) == 0) {
      bool for_good = false;
      file = Map(peer, entry.fd, entry.serial, entry.inode, entry.device, 0, in_use, &for_good);
      if (!file && for_good) Refuse(entry.serial);
    }
    if (!file) continue;
    if (kept.emplace(entry.serial, file).second) {
      in_use += file->Size();
      lease->mappings.push_back(file);
    }
    // The listed range must lie inside the file, as a file of the same
    // allocation must be the same file.
    uint64_t end = 0;
    if (!file->Is(entry.inode, entry.device) || __builtin_add_overflow(entry.offset, region.len, &end) ||
        end > file->Size())
      continue;
    region.mapped = file->Base() + entry.offset;
    lease->any_mapped = true;
  }
  by_serial_.swap(kept);  // the ones no longer listed are unmapped when no lease holds them
}

}  // namespace llmdd
