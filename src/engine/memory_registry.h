// The set of memory regions this engine lets peers read and write.
//
// Contract: a peer's range is served only if every byte of it lies inside a
// live region that allows the access: one region, or several that join without
// a gap (one ends where the next begins, or they overlap). Requesters merge
// descriptors that are contiguous on both sides, so a range may cross the
// boundary between two registrations of one allocation (K and V views of one
// buffer); it cannot reach memory that is not registered with the right.
// Serving code holds a RegionPins for the duration of one request, which pins
// every region a range uses; Remove() unpublishes the region at once and then
// waits until no request still uses it and no standing read lease on it is
// left, so after Remove() returns neither the engine nor a same-host peer
// touches that memory.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_set>
#include <vector>

namespace llmdd {

// Remote access rights of a region (bit set).
constexpr uint32_t kAccessRead = 1;
constexpr uint32_t kAccessWrite = 2;
constexpr uint32_t kAccessReadWrite = kAccessRead | kAccessWrite;

class RegionPins;
class ByteStream;

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
  // The requests that pin it, so a deregistration that ran out of patience
  // can break them (RegionPins::Break).
  std::mutex holders_mutex;
  std::vector<RegionPins *> holders;
  bool Contains(uintptr_t a, uint64_t l) const { return a >= addr && l <= len && a - addr <= len - l; }
  // Breaks every request pinning this region; returns how many.
  size_t BreakHolders();
};

// Maps the public llmdd_ext::RemoteAccess value (0 rw, 1 read-only, 2 write-only).
inline uint32_t AccessBits(uint8_t remote_access) {
  return remote_access == 1 ? kAccessRead : remote_access == 2 ? kAccessWrite : kAccessReadWrite;
}

class MemoryRegistry;

// Pins taken while serving one request; releases them on destruction. Each
// region is pinned at most once per RegionPins, however many ranges use it.
class RegionPins {
 public:
  // `breaker`: the stream of the lane serving the request. A deregistration
  // that waited its grace period shuts it down (Break), which makes every
  // blocking I/O of the request return at once; may be null (then Remove
  // waits for the request however long it takes).
  explicit RegionPins(const MemoryRegistry *registry, ByteStream *breaker = nullptr)
      : registry_(registry), breaker_(breaker) {}
  ~RegionPins() { Release(); }
  RegionPins(const RegionPins &) = delete;
  RegionPins &operator=(const RegionPins &) = delete;
  // True if every byte of [addr, addr+len) lies inside live regions that allow
  // `access`: one region, or a chain that joins without a gap (touching end to
  // start, or overlapping). Pins each region of the chain that is not pinned
  // yet. False for len 0, a wrapping range, a gap, a region without the right
  // or a range running past the last region; then nothing pinned for this
  // range stays pinned (pins of earlier ranges stay). No lock for a range
  // inside the region used last (or any pinned one while there are few);
  // otherwise O(log regions).
  bool Cover(uintptr_t addr, uint64_t len, uint32_t access = kAccessReadWrite);
  void Release();
  // Distinct regions pinned now (for tests and logs).
  size_t PinnedCount() const { return pinned_.size(); }
  // Set once a deregistration broke this request: long copies check it
  // between chunks and stop.
  const std::atomic<bool> &Broken() const { return broken_; }

 private:
  friend struct Region;
  // Called by Region::BreakHolders under the region's holders_mutex.
  void Break();
  void Unpin(Region *region);
  bool AlreadyPinned(const Region *region) const;
  void Pin(const std::shared_ptr<Region> &region);
  void UnpinFrom(size_t first);

  // Below this many pins a linear scan finds duplicates faster than a hash set
  // (most requests use one or two regions); above it pinned_set_ is kept.
  static constexpr size_t kLinearPinLimit = 8;

  const MemoryRegistry *registry_;
  ByteStream *const breaker_;
  std::atomic<bool> broken_{false};
  std::vector<std::shared_ptr<Region>> pinned_;    // in pin order
  std::unordered_set<const Region *> pinned_set_;  // same regions, once pinned_ outgrows kLinearPinLimit
  const Region *last_used_ = nullptr;             // pinned; the fast path checks it first
};

class MemoryRegistry {
 public:
  // How long Remove()/Clear() wait for requests still using a region before
  // they break those requests' lanes (llmdd.DeregisterGraceMs).
  static constexpr std::chrono::milliseconds kDefaultRemovalGrace{2000};
  void SetRemovalGrace(std::chrono::milliseconds grace) { removal_grace_ms_.store(grace.count()); }

  // Returns the new region's id (> 0). len may be 0 (registers nothing usable).
  uint64_t Add(uintptr_t addr, uint64_t len, int mem_type, uint32_t access = kAccessReadWrite);
  // Unpublishes and waits for in-flight users: up to the removal grace, then
  // it breaks the lanes still serving them and waits for those to let go
  // (they do at once: their I/O fails). False if the id is unknown.
  bool Remove(uint64_t id);
  // Removes everything (Finalize); waits for users the same way, with one
  // grace period for all regions.
  void Clear();
  // Standing read lease for a same-host peer: the live regions it may read,
  // each kept from completing Remove() until `until`. At most `max_regions`
  // (the oldest registrations first); *too_many is set when some readable
  // regions were left out (the peer reads those with requests).
  struct LeasedRange {
    uintptr_t addr;
    uint64_t len;
  };
  std::vector<LeasedRange> GrantReadLease(std::chrono::steady_clock::time_point until, size_t max_regions,
                                          bool *too_many) const;
  size_t Size() const;
  // How many RegionPins hold the live region `id` now; -1 if it is not live.
  // For tests and diagnostics.
  int PinCount(uint64_t id) const;

 private:
  friend class RegionPins;
  // A live region that allows `access` and contains the byte at `addr`, or
  // null. Caller holds mutex_ (shared is enough).
  const std::shared_ptr<Region> *FindContainingByteLocked(uintptr_t addr, uint32_t access) const;
  void Unpin(Region *region) const;
  // Waits until none of `regions` is used, breaking their users once
  // `patience_ends` has passed; then waits out standing read leases.
  void WaitUnused(const std::vector<std::shared_ptr<Region>> &regions,
                  std::chrono::steady_clock::time_point patience_ends);

  mutable std::shared_mutex mutex_;
  std::multimap<uintptr_t, std::shared_ptr<Region>> by_addr_;
  std::map<uint64_t, std::shared_ptr<Region>> by_id_;
  uint64_t max_len_ = 0;
  uint64_t next_id_ = 1;
  mutable std::mutex unpin_mutex_;
  mutable std::condition_variable unpinned_;
  std::atomic<int64_t> removal_grace_ms_{kDefaultRemovalGrace.count()};
};

}  // namespace llmdd
