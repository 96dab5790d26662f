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
//
// Costs (n live regions): a range inside one region is validated in O(log n)
// however the ranges of a request spread over regions and whether
// registrations overlap; in O(1) when it lies in the region after the one the
// request used last (ascending ranges), and without a lock when it lies in a
// region the request used lately. A range across k regions takes k such
// steps. Pinning costs a request one lock when it begins and one when it ends,
// nothing per region. Add and Remove are O(log n).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "transport/transport.h"

namespace llmdd {

// Remote access rights of a region (bit set). kAccessNone: registered for
// local use only (MemDesc::local_only), never reachable by peers.
constexpr uint32_t kAccessNone = 0;
constexpr uint32_t kAccessRead = 1;
constexpr uint32_t kAccessWrite = 2;
constexpr uint32_t kAccessReadWrite = kAccessRead | kAccessWrite;

class RegionPins;
class ByteStream;

// Aligned to a cache line: a search of the index reads the first line of the
// nodes it passes, the lookup of ascending ranges the second line of the
// region used last.
struct alignas(64) Region {
  uintptr_t addr = 0;
  uintptr_t end = 0;  // addr + len (saturated at UINTPTR_MAX; no range reaches past it)
  // RegionIndex's node (guarded by the registry's lock: written under the
  // exclusive lock, read under the shared one).
  Region *left = nullptr, *right = nullptr;
  uintptr_t max_end[3] = {0, 0, 0};  // subtree: largest end of a region with rights kRights[i] (0: none)
  uint32_t priority = 0;
  uint32_t access = kAccessReadWrite;  // what peers may do with it

  // While indexed, `next` is the following live region in (addr, id) order
  // and next_* copy its span, so that checking it reads only this line;
  // `after_next` is the one after it.
  bool indexed = false;
  uint32_t next_access = 0;
  uintptr_t next_addr = 0, next_end = 0;  // 0, 0 when there is no next region
  Region *next = nullptr, *after_next = nullptr;
  Region *prev = nullptr;
  Region *parent = nullptr;  // RegionIndex's node: null for the root
  uint64_t id = 0;

  uint64_t len = 0;
  int mem_type = 0;  // adxl::MemType
  MemoryKind kind = MemoryKind::kHost;  // where the bytes live (the path policy reads it)
  // Until when (steady clock, ns since its epoch) a same-host peer may read it
  // one-sidedly under a standing lease; Remove() waits for that time too.
  std::atomic<int64_t> leased_until_ns{0};

  bool Allows(uint32_t rights) const { return (access & rights) == rights; }
  // The line Cover reads to check the next region.
  const void *NextLine() const { return &indexed; }
};

// Maps the public llmdd_ext::RemoteAccess value (0 rw, 1 read-only, 2 write-only, 3 none).
inline uint32_t AccessBits(uint8_t remote_access) {
  return remote_access == 1   ? kAccessRead
         : remote_access == 2 ? kAccessWrite
         : remote_access == 3 ? kAccessNone
                              : kAccessReadWrite;
}

// The live regions ordered by (addr, id): a treap whose nodes also know, per
// set of rights, the largest end in their subtree, so the region that
// contains a byte (overlapping registrations included) is found in O(log n)
// instead of by walking back over every region that starts before it. Not
// thread-safe (MemoryRegistry guards it); does not own the regions.
class RegionIndex {
 public:
  // Rights a lookup can ask for, and their slot in Region::max_end.
  static constexpr uint32_t kRights[3] = {kAccessRead, kAccessWrite, kAccessReadWrite};
  static int Slot(uint32_t rights) { return rights == kAccessRead ? 0 : rights == kAccessWrite ? 1 : 2; }

  // Insert: O(log n) expected (the priorities are random); it touches the
  // search path and O(1) nodes below it, expected. Erase: O(1) expected,
  // plus the ancestors whose max_end it lowers.
  void Insert(Region *region);  // region->addr < region->end, not indexed yet
  void Erase(Region *region);   // an indexed region
  void Clear();                 // unindexes every region
  size_t Size() const { return size_; }
  // Of the regions that allow `rights` (kAccessRead, kAccessWrite or
  // kAccessReadWrite) and contain the byte at `addr`, the one that reaches
  // furthest (the lowest (addr, id) among equals); null if none. O(log n).
  Region *FindContaining(uintptr_t addr, uint32_t rights) const;
  // The first region in (addr, id) order, or null.
  Region *First() const;
  // Checks every invariant (order, priorities, max_end, parent links, the
  // neighbour list and its copies, size); says what is wrong, empty if
  // nothing. O(n), for tests.
  std::string Check() const;

 private:
  // Recomputes node->max_end from the node and its children (and makes it
  // their parent); true if max_end changed.
  static bool Update(Region *node);
  // Makes `next` follow `node` (null: nothing follows), with its copies.
  static void SetNext(Region *node, Region *next);
  // The link that points to `node` (its parent's child pointer, or root_).
  Region **LinkTo(Region *node);
  static bool Less(const Region *a, const Region *b) {
    return a->addr != b->addr ? a->addr < b->addr : a->id < b->id;
  }
  // Splits `node`'s tree into the keys below `key` and the rest.
  static void Split(Region *node, const Region *key, Region **lower, Region **upper);
  static Region *Merge(Region *lower, Region *upper);

  Region *root_ = nullptr;
  size_t size_ = 0;
  uint64_t seed_ = 0x9E3779B97F4A7C15ULL;
};

class MemoryRegistry;

// What one request may touch while it is served: the regions its ranges were
// validated against. Remove() of a region waits for every request that used
// it, and breaks it past the removal grace.
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
  // `access` (kAccessRead, kAccessWrite or kAccessReadWrite): one region, or
  // a chain that joins without a gap (touching end to start, or overlapping).
  // Pins each region of the chain. False for len 0, a wrapping range, a gap, a
  // region without the right, a range running past the last region or other
  // rights; then nothing pinned for this range stays pinned (pins of earlier
  // ranges stay). No lock for a range inside a region pinned lately; otherwise
  // O(1) for a range in the region after the one used last, else O(log regions).
  bool Cover(uintptr_t addr, uint64_t len, uint32_t access = kAccessReadWrite);
  void Release();
  // Distinct regions pinned now (for tests and logs; O(pins log pins)).
  size_t PinnedCount() const;
  // Set once a deregistration broke this request: long copies check it
  // between chunks and stop.
  const std::atomic<bool> &Broken() const { return broken_; }

 private:
  friend class MemoryRegistry;
  // Pins `region`, whose span and rights are given (caller holds the
  // registry's lock, shared).
  void Pin(const Region *region, uintptr_t begin, uintptr_t end, uint32_t access);
  bool Pins(const Region *region) const;
  // Called by MemoryRegistry under its active_mutex_.
  void Break();

  // The fast path looks for a range in the spans of this many most recently
  // pinned regions (kept here: checking them reads no region).
  static constexpr size_t kRecentPins = 8;
  struct Span {
    uintptr_t begin = 0, end = 0;
    uint32_t access = 0;
  };

  const MemoryRegistry *registry_;
  ByteStream *const breaker_;
  std::atomic<bool> broken_{false};
  // The regions pinned, in pin order (a region may appear more than once).
  // Pinned means: Remove() waits for this request, so they stay allocated.
  // Appended by the owner under the registry's shared lock, read by Remove()
  // under its exclusive lock.
  std::vector<const Region *> pinned_;
  Span recent_[kRecentPins];  // a ring; entries of unpinned regions are cleared
  size_t recent_next_ = 0;    // where the next span goes
  // The region the last lookup found (pinned); its `next` is read only while
  // it is indexed, under the registry's lock.
  const Region *last_region_ = nullptr;
  // Membership in the registry's list of requests holding pins (active_mutex_).
  bool linked_ = false;
  uint64_t serial_ = 0;
  RegionPins *active_prev_ = nullptr, *active_next_ = nullptr;
};

class MemoryRegistry {
 public:
  // How long Remove()/Clear() wait for requests still using a region before
  // they break those requests' lanes (llmdd.DeregisterGraceMs).
  static constexpr std::chrono::milliseconds kDefaultRemovalGrace{2000};
  void SetRemovalGrace(std::chrono::milliseconds grace) { removal_grace_ms_.store(grace.count()); }

  // Returns the new region's id (> 0). len may be 0 (registers nothing
  // usable). Rights outside kAccessReadWrite are ignored.
  uint64_t Add(uintptr_t addr, uint64_t len, int mem_type, uint32_t access = kAccessReadWrite,
               MemoryKind kind = MemoryKind::kHost);
  // The live region `id` as transports see it; false if the id is unknown.
  bool Describe(uint64_t id, TransportRegion *out) const;
  // The memory kind of the registration holding the byte at `addr` (kHost
  // when none does: unregistered local memory is host memory). O(log n).
  MemoryKind KindAt(uintptr_t addr) const;
  // Every live region as transports see it (Finalize tells them all are gone).
  std::vector<TransportRegion> Regions() const;
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
  // How many requests (RegionPins) pin the live region `id` now; -1 if it is
  // not live. For tests and diagnostics.
  int PinCount(uint64_t id) const;

 private:
  friend class RegionPins;
  // The requests that pin `region` (every request that pins any region when
  // it is null), sorted; caller holds mutex_ exclusively.
  std::vector<uint64_t> HoldersLocked(const Region *region) const;
  // Waits until none of the requests `serials` (sorted) is still active,
  // breaking them once `patience_ends` has passed; returns how many it broke.
  size_t WaitReleased(const std::vector<uint64_t> &serials, std::chrono::steady_clock::time_point patience_ends);
  bool AnyActiveLocked(const std::vector<uint64_t> &serials) const;
  // Then waits out the standing read leases of `regions`.
  static void WaitLeases(const std::vector<std::shared_ptr<Region>> &regions);
  void Link(RegionPins *pins) const;
  void Unlink(RegionPins *pins) const;

  mutable std::shared_mutex mutex_;  // guards everything below down to active_mutex_
  std::map<uint64_t, std::shared_ptr<Region>> by_id_;
  RegionIndex index_;
  uint64_t next_id_ = 1;

  // Requests holding pins (taken after mutex_ when both are held).
  mutable std::mutex active_mutex_;
  mutable std::condition_variable released_;
  mutable RegionPins *active_ = nullptr;  // intrusive list
  mutable uint64_t next_serial_ = 1;
  mutable int waiters_ = 0;
  std::atomic<int64_t> removal_grace_ms_{kDefaultRemovalGrace.count()};
};

}  // namespace llmdd
