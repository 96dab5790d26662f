// The set of memory regions this engine lets peers read and write.
//
// Contract: a peer's range is served only if it lies entirely inside one live
// region. Serving code holds a RegionPins for the duration of one request;
// Remove() unpublishes the region at once and then waits until no request
// still uses it and no standing read lease on it is left, so after Remove()
// returns neither the engine nor a same-host peer touches that memory.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <vector>

namespace llmdd {

// Remote access rights of a region (bit set).
constexpr uint32_t kAccessRead = 1;
constexpr uint32_t kAccessWrite = 2;
constexpr uint32_t kAccessReadWrite = kAccessRead | kAccessWrite;

struct Region {
  uint64_t id = 0;
  uintptr_t addr = 0;
  uint64_t len = 0;
  int mem_type = 0;                // adxl::MemType
  uint32_t access = kAccessReadWrite;  // what peers may do with it
  std::atomic<int> users{0};       // requests currently reading/writing it
  // Until when (steady clock, ns since its epoch) a same-host peer may read it
  // one-sidedly under a standing lease; Remove() waits for that time too.
  std::atomic<int64_t> leased_until_ns{0};
  bool Contains(uintptr_t a, uint64_t l) const { return a >= addr && l <= len && a - addr <= len - l; }
};

// Maps the public llmdd_ext::RemoteAccess value (0 rw, 1 read-only, 2 write-only).
inline uint32_t AccessBits(uint8_t remote_access) {
  return remote_access == 1 ? kAccessRead : remote_access == 2 ? kAccessWrite : kAccessReadWrite;
}

class MemoryRegistry;

// Pins taken while serving one request; releases them on destruction.
class RegionPins {
 public:
  explicit RegionPins(const MemoryRegistry *registry) : registry_(registry) {}
  ~RegionPins() { Release(); }
  RegionPins(const RegionPins &) = delete;
  RegionPins &operator=(const RegionPins &) = delete;
  // True if [addr, addr+len) lies inside one live region that allows `access`
  // (pinning it if new).
  bool Cover(uintptr_t addr, uint64_t len, uint32_t access = kAccessReadWrite);
  void Release();

 private:
  const MemoryRegistry *registry_;
  std::vector<std::shared_ptr<Region>> pinned_;
};

class MemoryRegistry {
 public:
  // Returns the new region's id (> 0). len may be 0 (registers nothing usable).
  uint64_t Add(uintptr_t addr, uint64_t len, int mem_type, uint32_t access = kAccessReadWrite);
  // Unpublishes and waits for in-flight users. False if the id is unknown.
  bool Remove(uint64_t id);
  // Removes everything (Finalize); waits for users.
  void Clear();
  // Standing read lease for a same-host peer: every live region it may read,
  // each kept from completing Remove() until `until`. Empty with *too_many set
  // when there are more than `max_regions` (the peer then uses requests).
  struct LeasedRange {
    uintptr_t addr;
    uint64_t len;
  };
  std::vector<LeasedRange> GrantReadLease(std::chrono::steady_clock::time_point until, size_t max_regions,
                                          bool *too_many) const;
  size_t Size() const;

 private:
  friend class RegionPins;
  // Finds a live region containing the range and increments its users.
  std::shared_ptr<Region> FindAndPin(uintptr_t addr, uint64_t len, uint32_t access) const;
  void Unpin(Region *region) const;
  void WaitUnused(const std::shared_ptr<Region> &region);

  mutable std::shared_mutex mutex_;
  std::multimap<uintptr_t, std::shared_ptr<Region>> by_addr_;
  std::map<uint64_t, std::shared_ptr<Region>> by_id_;
  uint64_t max_len_ = 0;
  uint64_t next_id_ = 1;
  mutable std::mutex unpin_mutex_;
  mutable std::condition_variable unpinned_;
};

}  // namespace llmdd
