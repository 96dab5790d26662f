// A same-host peer's shareable memory, mapped read-only into this process.
//
// A server lists, in its standing read lease (wire::kFlagLeaseMappings),
// which leased ranges live in shareable host memory (a memfd it holds,
// common/host_memory.h). We take that descriptor with pidfd_getfd (the kernel
// asks for the same ptrace right over the peer as process_vm_readv), check it,
// map the file read-only once, and from then on a one-sided READ of those
// ranges is a plain memcpy: no page pinning, no kernel call per copy.
//
// What makes a mapping safe to read whatever the peer does:
//   - the descriptor is the file the server named (fstat inode and device as
//     listed; the peer may have closed and reused the number meanwhile);
//   - it is a tmpfs file (fstatfs): its pages never wait on a device or a
//     network, and hugetlbfs (whose faults can fail with SIGBUS) is refused;
//   - it is sealed against shrinking (F_SEAL_SHRINK): no access within its
//     size at mapping time can ever fault past its end (SIGBUS);
//   - every listed range lies inside the file.
// A mapping that fails a check is not retried for that allocation (serial);
// its ranges are read with process_vm_readv as before. Bytes read through a
// mapping are the server's registered memory, so the lease's rules are
// unchanged: a copy counts only if it ended within the lease.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "engine/wire.h"

namespace llmdd {

class PeerProcess;
struct ReadLease;

// One of the peer's files, mapped read-only for its whole size.
class MappedFile {
 public:
  MappedFile(const uint8_t *base, uint64_t size, uint64_t inode, uint64_t device)
      : base_(base), size_(size), inode_(inode), device_(device) {}
  ~MappedFile();
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;
  const uint8_t *Base() const { return base_; }
  uint64_t Size() const { return size_; }
  bool Is(uint64_t inode, uint64_t device) const { return inode == inode_ && device == device_; }

 private:
  const uint8_t *const base_;
  const uint64_t size_;
  const uint64_t inode_, device_;
};

// The mappings of one peer (one per same-host link), at most `max_bytes` of
// address space at once (llmdd.SameHostMapMaxBytes).
class PeerMappings {
 public:
  explicit PeerMappings(uint64_t max_bytes) : max_bytes_(max_bytes) {}
  bool Enabled() const { return max_bytes_ != 0; }
  // Points the lease's listed regions that `entries`
  // names at their bytes in our mappings, mapping what is new, and keeps those
  // mappings alive for as long as the lease lives. Mappings no entry names any
  // more are let go (an older lease still in use keeps its own alive).
  void Attach(PeerProcess &peer, const std::vector<wire::LeaseMapping> &entries, ReadLease *lease);
  // Serving a same-host write (wire::kFlagSourceMappings): the requester's
  // source allocation, mapped once per serial and kept for later writes, or
  // null (not mappable: process_vm_readv). When a new one would pass the
  // cap, mappings no copy holds now are let go first. The requester's
  // FreeMem frees the pages at once (host_memory.h), whatever we keep mapped.
  std::shared_ptr<const MappedFile> Source(PeerProcess &peer, const wire::SourceMapping &source);
  uint64_t MappedBytes() const;
  // Lets go of every mapping (copies under way keep theirs until they end).
  void Clear();

 private:
  // Takes descriptor `fd` of the peer, checks it is the sealed tmpfs file
  // `inode`/`device` of at least `min_size` bytes, maps it whole; null when
  // any check fails or it would pass the cap (`in_use` mapped already);
  // *for_good then says whether the file itself failed (not worth retrying)
  // rather than this process's limits (descriptors, address space, the cap).
  std::shared_ptr<const MappedFile> Map(PeerProcess &peer, uint32_t fd, uint64_t serial, uint64_t inode,
                                        uint64_t device, uint64_t min_size, uint64_t in_use, bool *for_good);
  void Refuse(uint64_t serial);

  const uint64_t max_bytes_;
  mutable std::mutex mutex_;
  std::map<uint64_t, std::shared_ptr<const MappedFile>> by_serial_;  // guarded by mutex_
  std::set<uint64_t> refused_;                                      // serials that failed a check; guarded
};

}  // namespace llmdd
