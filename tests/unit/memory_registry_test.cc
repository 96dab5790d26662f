// MemoryRegistry: containment, overlapping registrations, pins and the
// "Remove waits for in-flight users" contract.
#include "engine/memory_registry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace llmdd {
namespace {

TEST(MemoryRegistry, CoversOnlyRangesInsideRegisteredMemory) {
  MemoryRegistry registry;
  registry.Add(1000, 100, 1);
  registry.Add(1300, 100, 1);  // a gap of 200 bytes after the first
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(1000, 100));
  EXPECT_TRUE(pins.Cover(1050, 50));
  EXPECT_TRUE(pins.Cover(1399, 1));
  EXPECT_FALSE(pins.Cover(1050, 300));  // runs across the gap
  EXPECT_FALSE(pins.Cover(999, 2));
  EXPECT_FALSE(pins.Cover(1100, 1));
  EXPECT_FALSE(pins.Cover(1400, 1));
  EXPECT_FALSE(pins.Cover(1000, 0));           // an empty range names no memory
  EXPECT_FALSE(pins.Cover(1000, UINT64_MAX));  // overflow-safe
  EXPECT_FALSE(pins.Cover(UINT64_MAX, 2));
  EXPECT_EQ(pins.PinnedCount(), 2U);
}

// Two registrations of one allocation (K and V views of one buffer): a range
// across the boundary is served and pins both regions until Release.
TEST(MemoryRegistry, RangeAcrossTwoAdjacentRegionsIsCoveredAndPinsBoth) {
  MemoryRegistry registry;
  const uint64_t first = registry.Add(1000, 100, 1);
  const uint64_t second = registry.Add(1100, 100, 1);
  auto pins = std::make_unique<RegionPins>(&registry);
  ASSERT_TRUE(pins->Cover(1050, 100));
  EXPECT_EQ(pins->PinnedCount(), 2U);
  EXPECT_EQ(registry.PinCount(first), 1);
  EXPECT_EQ(registry.PinCount(second), 1);
  EXPECT_TRUE(pins->Cover(1000, 200));  // both regions exactly
  EXPECT_TRUE(pins->Cover(1099, 2));    // one byte on each side
  EXPECT_EQ(registry.PinCount(first), 1);
  EXPECT_EQ(registry.PinCount(second), 1);

  // Remove of either region waits until the pins are released.
  std::atomic<int> removed{0};
  std::thread remove_first([&] {
    registry.Remove(first);
    ++removed;
  });
  std::thread remove_second([&] {
    registry.Remove(second);
    ++removed;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(removed.load(), 0) << "Remove returned while a range across the boundary was pinned";
  pins.reset();
  remove_first.join();
  remove_second.join();
  EXPECT_EQ(removed.load(), 2);
}

TEST(MemoryRegistry, RangeAcrossThreeAdjacentRegionsIsCovered) {
  MemoryRegistry registry;
  const uint64_t a = registry.Add(4096, 4096, 1);
  const uint64_t c = registry.Add(3 * 4096, 4096, 1);  // registration order differs from address order
  const uint64_t b = registry.Add(2 * 4096, 4096, 1);
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(4096 + 10, 3 * 4096 - 20));
  EXPECT_TRUE(pins.Cover(4096, 3 * 4096));
  EXPECT_FALSE(pins.Cover(4096, 3 * 4096 + 1));  // one byte past the last region
  EXPECT_EQ(pins.PinnedCount(), 3U);
  for (uint64_t id : {a, b, c}) EXPECT_EQ(registry.PinCount(id), 1) << "region " << id;
}

TEST(MemoryRegistry, GapOrRangePastTheLastAdjacentRegionIsRefusedAndPinsNothingNew) {
  MemoryRegistry registry;
  const uint64_t a = registry.Add(1000, 100, 1);
  const uint64_t b = registry.Add(1100, 100, 1);
  const uint64_t c = registry.Add(1201, 100, 1);  // one byte of gap before it
  RegionPins pins(&registry);
  EXPECT_FALSE(pins.Cover(1150, 100));  // b, then the gap byte 1200
  EXPECT_FALSE(pins.Cover(1050, 200));  // a, b, the gap
  EXPECT_FALSE(pins.Cover(1050, 300));  // starts in a, runs past the last region
  EXPECT_EQ(pins.PinnedCount(), 0U);
  for (uint64_t id : {a, b, c}) EXPECT_EQ(registry.PinCount(id), 0) << "region " << id;
  // A refused range releases only its own pins: an earlier range's pins stay.
  ASSERT_TRUE(pins.Cover(1000, 10));
  EXPECT_FALSE(pins.Cover(1050, 200));
  EXPECT_EQ(pins.PinnedCount(), 1U);
  EXPECT_EQ(registry.PinCount(a), 1);
  EXPECT_EQ(registry.PinCount(b), 0);
  EXPECT_TRUE(pins.Cover(1050, 150));
  EXPECT_EQ(registry.PinCount(b), 1);
  EXPECT_TRUE(pins.Cover(1201, 100));
  pins.Release();
  for (uint64_t id : {a, b, c}) EXPECT_EQ(registry.PinCount(id), 0) << "region " << id;
}

TEST(MemoryRegistry, AdjacentRegionsWithDifferentRightsAllowOnlyTheCommonOne) {
  MemoryRegistry registry;
  const uint64_t read_write = registry.Add(1000, 100, 1, kAccessReadWrite);
  const uint64_t read_only = registry.Add(1100, 100, 1, kAccessRead);
  const uint64_t write_only = registry.Add(1200, 100, 1, kAccessWrite);
  RegionPins pins(&registry);
  EXPECT_FALSE(pins.Cover(1050, 100, kAccessWrite));  // the second half is read-only
  EXPECT_EQ(registry.PinCount(read_write), 0) << "a refused range left its first region pinned";
  EXPECT_TRUE(pins.Cover(1050, 100, kAccessRead));
  EXPECT_FALSE(pins.Cover(1150, 100, kAccessRead));   // the second half is write-only
  EXPECT_FALSE(pins.Cover(1150, 100, kAccessWrite));  // the first half is read-only
  EXPECT_FALSE(pins.Cover(1050, 200, kAccessRead));
  EXPECT_FALSE(pins.Cover(1090, 20, kAccessReadWrite));  // both rights: the read-only part lacks one
  EXPECT_EQ(registry.PinCount(read_write), 1);
  EXPECT_EQ(registry.PinCount(read_only), 1);
  EXPECT_EQ(registry.PinCount(write_only), 0);
}

// Many ranges of one request that use the same regions pin each region once.
TEST(MemoryRegistry, PinsAreCountedOncePerRegion) {
  MemoryRegistry registry;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(registry.Add(10000 + 100 * i, 100, 1));  // adjacent, 2000 bytes
  RegionPins pins(&registry);
  for (int round = 0; round < 3; ++round) {
    for (int i = 19; i >= 0; --i) ASSERT_TRUE(pins.Cover(10000 + 100 * i + 90, i == 19 ? 10 : 20));
    ASSERT_TRUE(pins.Cover(10000, 2000));
    ASSERT_TRUE(pins.Cover(10000 + 7, 5));
  }
  EXPECT_EQ(pins.PinnedCount(), 20U);
  for (uint64_t id : ids) EXPECT_EQ(registry.PinCount(id), 1) << "region " << id;
  pins.Release();
  for (uint64_t id : ids) EXPECT_EQ(registry.PinCount(id), 0) << "region " << id;
  EXPECT_EQ(registry.PinCount(12345), -1);
}

// Overlapping registrations: every byte in some region with the right is enough.
TEST(MemoryRegistry, RangeAcrossOverlappingRegionsIsCovered) {
  MemoryRegistry registry;
  registry.Add(1000, 100, 1);
  registry.Add(1050, 100, 1);
  registry.Add(1060, 5, 1);
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(1010, 130));
  EXPECT_FALSE(pins.Cover(1010, 141));
}

TEST(MemoryRegistry, FindsContainingRegionAmongOverlaps) {
  MemoryRegistry registry;
  registry.Add(0x10000, 0x10000, 1);  // big region
  registry.Add(0x10100, 0x10, 1);     // small one inside it, starting later
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(0x10200, 0x1000));  // predecessor is the small one; the big one contains it
  EXPECT_TRUE(pins.Cover(0x10100, 0x10));
}

TEST(MemoryRegistry, RemoveUnpublishesAndUnknownIdIsReported) {
  MemoryRegistry registry;
  uint64_t id = registry.Add(5000, 10, 1);
  EXPECT_EQ(registry.Size(), 1U);
  EXPECT_TRUE(registry.Remove(id));
  EXPECT_FALSE(registry.Remove(id));
  RegionPins pins(&registry);
  EXPECT_FALSE(pins.Cover(5000, 1));
  EXPECT_EQ(registry.Size(), 0U);
}

TEST(MemoryRegistry, RemoveWaitsForPinsToBeReleased) {
  MemoryRegistry registry;
  uint64_t id = registry.Add(8000, 64, 1);
  auto pins = std::make_unique<RegionPins>(&registry);
  ASSERT_TRUE(pins->Cover(8000, 64));
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    registry.Remove(id);
    removed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(removed.load()) << "Remove returned while the region was pinned";
  // New lookups already miss the region although the old pin is still held.
  RegionPins other(&registry);
  EXPECT_FALSE(other.Cover(8000, 1));
  pins.reset();
  remover.join();
  EXPECT_TRUE(removed.load());
}

}  // namespace
}  // namespace llmdd

namespace llmdd {
namespace {

TEST(MemoryRegistry, AccessRightsAreEnforcedPerRegion) {
  MemoryRegistry registry;
  registry.Add(1000, 100, 1, kAccessRead);
  registry.Add(2000, 100, 1, kAccessWrite);
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(1000, 10, kAccessRead));
  EXPECT_FALSE(pins.Cover(1000, 10, kAccessWrite));
  EXPECT_TRUE(pins.Cover(2000, 10, kAccessWrite));
  EXPECT_FALSE(pins.Cover(2000, 10, kAccessRead));
  EXPECT_EQ(AccessBits(0), kAccessReadWrite);
  EXPECT_EQ(AccessBits(1), kAccessRead);
  EXPECT_EQ(AccessBits(2), kAccessWrite);
}

TEST(MemoryRegistry, ReadLeaseListsReadableRegionsAndHoldsBackTheirRemoval) {
  MemoryRegistry registry;
  const uint64_t rw = registry.Add(1000, 100, 1);
  registry.Add(2000, 100, 1, kAccessWrite);  // write-only: never leased for reads
  const uint64_t ro = registry.Add(3000, 100, 1, kAccessRead);
  registry.Add(4000, 0, 1);  // empty: nothing to lease
  bool too_many = true;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  auto granted = registry.GrantReadLease(until, 16, &too_many);
  EXPECT_FALSE(too_many);
  ASSERT_EQ(granted.size(), 2U);
  EXPECT_EQ(granted[0].addr, 1000U);
  EXPECT_EQ(granted[1].addr, 3000U);
  // Removing a leased region waits for the lease to end, not longer.
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(registry.Remove(rw));
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, std::chrono::milliseconds(250));
  EXPECT_LT(waited, std::chrono::milliseconds(2000));
  // After the lease, removal is immediate; the removed region is not leased again.
  EXPECT_TRUE(registry.Remove(ro));
  granted = registry.GrantReadLease(std::chrono::steady_clock::now(), 16, &too_many);
  EXPECT_TRUE(granted.empty());
  // More regions than a grant may list: the oldest that fit are leased (and
  // held back from removal), the others are not (the peer reads them with requests).
  std::vector<uint64_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(registry.Add(10000 + 100 * i, 50, 1));
  const auto later = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
  granted = registry.GrantReadLease(later, 4, &too_many);
  EXPECT_TRUE(too_many);
  ASSERT_EQ(granted.size(), 4U);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(granted[i].addr, 10000U + 100 * i);
  start = std::chrono::steady_clock::now();
  EXPECT_TRUE(registry.Remove(ids[4]));  // not listed: not held back
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));
  EXPECT_TRUE(registry.Remove(ids[0]));  // listed: waits for its lease
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(250));
}

}  // namespace
}  // namespace llmdd

// ---------------------------------------------------------------------------------
// RegionIndex and RegionPins against naive models: exact outcomes under random
// registrations (overlapping, nested, adjacent, with different rights).
// ---------------------------------------------------------------------------------
namespace llmdd {
namespace {

constexpr uint32_t kAllRights[3] = {kAccessRead, kAccessWrite, kAccessReadWrite};

// The model's answer to FindContaining: of the regions with the rights that
// contain addr, the one reaching furthest, the lowest (addr, id) among equals.
const Region *NaiveFindContaining(const std::vector<std::unique_ptr<Region>> &live, uintptr_t addr,
                                  uint32_t rights) {
  const Region *best = nullptr;
  for (const auto &r : live) {
    if (!(r->addr <= addr && addr < r->end) || !r->Allows(rights)) continue;
    if (best == nullptr || r->end > best->end ||
        (r->end == best->end && (r->addr < best->addr || (r->addr == best->addr && r->id < best->id))))
      best = r.get();
  }
  return best;
}

TEST(RegionIndex, MatchesANaiveModelUnderRandomInsertsAndErases) {
  std::mt19937_64 rng(42);
  for (int round = 0; round < 20; ++round) {
    RegionIndex index;
    std::vector<std::unique_ptr<Region>> live;
    uint64_t next_id = 1;
    const uintptr_t space = round % 2 == 0 ? 600 : 5000;  // dense overlaps, then sparser
    for (int op = 0; op < 400; ++op) {
      if (live.empty() || rng() % 3 != 0) {
        auto r = std::make_unique<Region>();
        r->id = next_id++;
        r->addr = rng() % space;
        // Mostly short, some long enough to contain many others, some adjacent.
        const uint64_t len = rng() % 8 == 0 ? 1 + rng() % space : 1 + rng() % 40;
        r->end = r->addr + len;
        r->len = len;
        r->access = kAllRights[rng() % 3];
        index.Insert(r.get());
        live.push_back(std::move(r));
      } else {
        const size_t victim = rng() % live.size();
        index.Erase(live[victim].get());
        EXPECT_FALSE(live[victim]->indexed);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
      }
      ASSERT_EQ(index.Check(), "") << "round " << round << " op " << op;
      ASSERT_EQ(index.Size(), live.size());
      for (int probe = 0; probe < 20; ++probe) {
        const uintptr_t addr = rng() % (space + 50);
        for (uint32_t rights : kAllRights) {
          ASSERT_EQ(index.FindContaining(addr, rights), NaiveFindContaining(live, addr, rights))
              << "round " << round << " op " << op << " addr " << addr << " rights " << rights;
        }
      }
    }
    index.Clear();
    EXPECT_EQ(index.Size(), 0U);
    EXPECT_EQ(index.First(), nullptr);
    for (const auto &r : live) EXPECT_FALSE(r->indexed);
  }
}

TEST(RegionIndex, FindsTheRegionReachingFurthestAmongNestedOnes) {
  RegionIndex index;
  std::vector<std::unique_ptr<Region>> regions;
  auto add = [&](uintptr_t addr, uintptr_t end, uint32_t access) {
    auto r = std::make_unique<Region>();
    r->id = regions.size() + 1;
    r->addr = addr;
    r->end = end;
    r->access = access;
    index.Insert(r.get());
    regions.push_back(std::move(r));
    return regions.back().get();
  };
  Region *big = add(0x1000, 0x100000, kAccessReadWrite);
  std::vector<const Region *> small;
  for (uintptr_t a = 0x2000; a < 0x80000; a += 0x100) small.push_back(add(a, a + 0x10, kAccessReadWrite));
  const Region *read_only = add(0x1800, 0x200000, kAccessRead);
  ASSERT_EQ(index.Check(), "");
  // Inside a small one: the big one reaches further (read-only reaches furthest for reads).
  EXPECT_EQ(index.FindContaining(0x2008, kAccessWrite), big);
  EXPECT_EQ(index.FindContaining(0x2008, kAccessReadWrite), big);
  EXPECT_EQ(index.FindContaining(0x2008, kAccessRead), read_only);
  // Between the small ones, far from the big one's start.
  EXPECT_EQ(index.FindContaining(0x7ff80, kAccessWrite), big);
  EXPECT_EQ(index.FindContaining(0x100000, kAccessWrite), nullptr);  // one past the big one
  EXPECT_EQ(index.FindContaining(0x100000, kAccessRead), read_only);
  EXPECT_EQ(index.FindContaining(0x17ff, kAccessRead), big);
  EXPECT_EQ(index.FindContaining(0xfff, kAccessRead), nullptr);
  index.Erase(big);
  ASSERT_EQ(index.Check(), "");
  EXPECT_EQ(index.FindContaining(0x7ff80, kAccessWrite), nullptr);
  EXPECT_EQ(index.FindContaining(0x7ff08, kAccessWrite), small.back());
  EXPECT_EQ(index.FindContaining(0x7ff08, kAccessRead), read_only);
}

// Cover() against the byte-level definition: a range is allowed exactly when
// every byte lies in a live region with the rights. Registrations change
// between and during requests (the successor links the lookup follows are
// rewired); every region a request pinned holds the bytes it was allowed.
TEST(MemoryRegistry, CoverMatchesAByteModelWhileRegistrationsChange) {
  constexpr uintptr_t kBase = 0x10000, kSpace = 3000;
  std::mt19937_64 rng(7);
  MemoryRegistry registry;
  struct Live {
    uint64_t id;
    uintptr_t addr;
    uint64_t len;
    uint32_t access;
  };
  std::vector<Live> live;
  auto add = [&] {
    const uintptr_t addr = kBase + rng() % kSpace;
    const uint64_t len = rng() % 10 == 0 ? rng() % 600 : rng() % 50;  // some empty ones too
    const uint32_t access = kAllRights[rng() % 3];
    live.push_back({registry.Add(addr, len, 1, access), addr, len, access});
  };
  // Remove a region no request pins (a pinned one would wait for the request).
  auto remove_unpinned = [&] {
    for (int tries = 0; tries < 10 && !live.empty(); ++tries) {
      const size_t i = rng() % live.size();
      if (registry.PinCount(live[i].id) != 0) continue;
      ASSERT_TRUE(registry.Remove(live[i].id));
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  };
  auto covered = [&](uintptr_t a, uintptr_t end, uint32_t rights) {
    for (uintptr_t byte = a; byte < end; ++byte) {
      bool in = false;
      for (const Live &r : live) in |= byte >= r.addr && byte - r.addr < r.len && (r.access & rights) == rights;
      if (!in) return false;
    }
    return true;
  };
  for (int i = 0; i < 150; ++i) add();
  size_t allowed = 0, refused = 0;
  for (int request = 0; request < 300; ++request) {
    RegionPins pins(&registry);
    struct Allowed {
      uintptr_t addr, end;
      uint32_t rights;
    };
    std::vector<Allowed> granted;
    uintptr_t cursor = kBase + rng() % kSpace;
    for (int range = 0; range < 40; ++range) {
      if (rng() % 8 == 0) add();
      if (rng() % 8 == 0) remove_unpinned();
      // Mostly ascending, some jumps; lengths across region boundaries too.
      cursor = rng() % 5 == 0 ? kBase + rng() % kSpace : cursor + rng() % 64;
      const uint64_t len = rng() % 6 == 0 ? 1 + rng() % 400 : 1 + rng() % 24;
      const uint32_t rights = kAllRights[rng() % 3];
      const bool expect = covered(cursor, cursor + len, rights);
      ASSERT_EQ(pins.Cover(cursor, len, rights), expect)
          << "request " << request << " range " << range << " [" << cursor << ", +" << len << ") rights " << rights;
      if (expect) {
        granted.push_back({cursor, cursor + len, rights});
        ++allowed;
      } else {
        ++refused;
      }
    }
    // What is allowed stays inside pinned regions: every byte of every
    // allowed range is in a region this request pins, with the rights.
    std::vector<Live> pinned;
    for (const Live &r : live) {
      const int count = registry.PinCount(r.id);
      ASSERT_TRUE(count == 0 || count == 1) << count;
      if (count == 1) pinned.push_back(r);
    }
    EXPECT_EQ(pins.PinnedCount(), pinned.size());
    for (const Allowed &a : granted) {
      for (uintptr_t byte = a.addr; byte < a.end; ++byte) {
        bool in = false;
        for (const Live &r : pinned)
          in |= byte >= r.addr && byte - r.addr < r.len && (r.access & a.rights) == a.rights;
        ASSERT_TRUE(in) << "byte " << byte << " of an allowed range is in no pinned region";
      }
    }
    pins.Release();
    for (const Live &r : live) ASSERT_EQ(registry.PinCount(r.id), 0);
  }
  EXPECT_GT(allowed, 1000U);  // both outcomes are exercised
  EXPECT_GT(refused, 1000U);
}

// Overlapping registrations: a request pins the region that reaches furthest
// (fewest steps); removing another registration of the same bytes does not
// wait for it, removing the one it pinned does.
TEST(MemoryRegistry, RemoveWaitsOnlyForRequestsThatPinnedThatRegion) {
  MemoryRegistry registry;
  const uint64_t big = registry.Add(1000, 1000, 1);
  const uint64_t small = registry.Add(1100, 100, 1);
  auto pins = std::make_unique<RegionPins>(&registry);
  ASSERT_TRUE(pins->Cover(1150, 10));
  EXPECT_EQ(registry.PinCount(big), 1);
  EXPECT_EQ(registry.PinCount(small), 0);
  auto removal = std::async(std::launch::async, [&] { return registry.Remove(small); });
  const bool returned = removal.wait_for(std::chrono::milliseconds(1000)) == std::future_status::ready;
  if (!returned) pins->Release();  // unblock it so the test can end
  ASSERT_TRUE(returned) << "removing a region the request does not pin waited for the request";
  EXPECT_TRUE(removal.get());
  EXPECT_TRUE(pins->Cover(1120, 10));  // the big one still holds those bytes
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    registry.Remove(big);
    removed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(removed.load()) << "Remove returned while the region was pinned";
  // Unpublished already: a new request cannot use it, the pinning one still can.
  RegionPins other(&registry);
  EXPECT_FALSE(other.Cover(1150, 10));
  EXPECT_TRUE(pins->Cover(1500, 10));
  pins.reset();
  remover.join();
  EXPECT_TRUE(removed.load());
}

// Past the grace period a deregistration breaks the requests that pin the
// region, and only those; then it waits for them to let go.
TEST(MemoryRegistry, RemovalBreaksOnlyTheRequestsPinningTheRegion) {
  MemoryRegistry registry;
  registry.SetRemovalGrace(std::chrono::milliseconds(100));
  const uint64_t first = registry.Add(1000, 100, 1);
  registry.Add(2000, 100, 1);
  auto user = std::make_unique<RegionPins>(&registry);
  RegionPins bystander(&registry);
  RegionPins refused_only(&registry);
  ASSERT_TRUE(user->Cover(1010, 10));
  ASSERT_TRUE(bystander.Cover(2010, 10));
  ASSERT_FALSE(refused_only.Cover(1090, 20));  // runs past the first region: pins nothing
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    registry.Remove(first);
    removed = true;
  });
  const auto start = std::chrono::steady_clock::now();
  while (!user->Broken().load() && std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(user->Broken().load());
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(90));
  EXPECT_FALSE(bystander.Broken().load());
  EXPECT_FALSE(refused_only.Broken().load());
  EXPECT_FALSE(removed.load()) << "Remove returned before the broken request let go";
  user.reset();
  remover.join();
  EXPECT_TRUE(removed.load());
  // Clear() waits for the requests that pin something, not for one that pins nothing.
  bystander.Release();
  const auto clear_start = std::chrono::steady_clock::now();
  registry.Clear();
  EXPECT_LT(std::chrono::steady_clock::now() - clear_start, std::chrono::milliseconds(90));
  EXPECT_FALSE(refused_only.Broken().load());
}

// Ranges that cross many adjacent registrations (each range one step per
// region, following the successor links) and ranges that cross into a gap.
TEST(MemoryRegistry, RangesAcrossManyAdjacentRegionsPinEachOnce) {
  MemoryRegistry registry;
  std::vector<uint64_t> ids;
  for (int i = 0; i < 1000; ++i) ids.push_back(registry.Add(100000 + 64 * i, 64, 1));
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(100000 + 10, 64 * 1000 - 20));
  EXPECT_FALSE(pins.Cover(100000 + 10, 64 * 1000));  // one byte past the last one
  EXPECT_TRUE(pins.Cover(100000, 64 * 1000));
  EXPECT_EQ(pins.PinnedCount(), 1000U);
  for (uint64_t id : ids) ASSERT_EQ(registry.PinCount(id), 1);
  pins.Release();
  registry.Remove(ids[500]);  // a gap in the middle
  EXPECT_FALSE(pins.Cover(100000, 64 * 1000));
  EXPECT_EQ(pins.PinnedCount(), 0U);
  EXPECT_TRUE(pins.Cover(100000 + 64 * 501, 64 * 499));
  EXPECT_EQ(pins.PinnedCount(), 499U);
}

}  // namespace
}  // namespace llmdd

// ---------------------------------------------------------------------------------
// Micro benchmark, run by hand (prints figures, asserts nothing about time):
//   LLMDD_COVER_BENCHMARK=1 build/tests/memory_registry_test
// One RegionPins validates 100,000 ranges, as ServeTransfer does for one request.
// It is not a test: with the variable set the binary runs it before GoogleTest
// starts and exits (0, or 1 if a range was refused); without it nothing is
// registered, so ctest lists no benchmark that "did not run".
// ---------------------------------------------------------------------------------
namespace llmdd {
namespace {

int RunCoverBenchmark() {
  constexpr size_t kRegions = 100000;
  constexpr uint64_t kRegionBytes = 4096;
  constexpr uintptr_t kBase = 0x10000000;
  MemoryRegistry registry;
  // A gap after every region, so no range could be joined across two of them.
  for (size_t i = 0; i < kRegions; ++i) registry.Add(kBase + i * 2 * kRegionBytes, kRegionBytes, 1);
  std::vector<size_t> ascending(kRegions), shuffled(kRegions), alternating(kRegions), same(kRegions, 7);
  for (size_t i = 0; i < kRegions; ++i) ascending[i] = shuffled[i] = i, alternating[i] = i % 2;
  std::mt19937_64 rng(1);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  bool refused = false;
  auto run = [&](const char *what, const std::vector<size_t> &order, uint64_t offset) {
    double best_ms = 1e300;
    for (int round = 0; round < 3; ++round) {
      RegionPins pins(&registry);
      const auto start = std::chrono::steady_clock::now();
      for (size_t i : order) {
        if (!pins.Cover(kBase + i * 2 * kRegionBytes + offset, 128, kAccessRead)) {
          std::printf("[ BENCHMARK] FAILED: range %zu (%s) was refused\n", i, what);
          refused = true;
          return;
        }
      }
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      best_ms = std::min(best_ms, ms);
    }
    std::printf("[ BENCHMARK] %zu ranges, %-38s best of 3: %9.2f ms\n", order.size(), what, best_ms);
  };
  run("each in a different region (ascending)", ascending, 64);
  run("each in a different region (shuffled)", shuffled, 64);
  run("alternating between two regions", alternating, 64);
  run("all in one region", same, 64);
  // Overlapping registrations: one region over all of them; ranges in the
  // gaps between the small ones (only the big one holds them) and in the
  // small ones (the big one reaches further).
  registry.Add(kBase, kRegions * 2 * kRegionBytes, 1);
  run("overlapped, in the gaps (shuffled)", shuffled, kRegionBytes + 64);
  run("overlapped, in the small ones (shuffled)", shuffled, 64);
  return refused ? 1 : 0;
}

// Runs before main() only when asked to (see above).
[[maybe_unused]] const bool kCoverBenchmarkRan = [] {
  const char *flag = std::getenv("LLMDD_COVER_BENCHMARK");
  if (flag == nullptr || flag[0] == '\0' || std::strcmp(flag, "0") == 0) return false;
  std::fflush(stdout);
  const int rc = RunCoverBenchmark();
  std::fflush(stdout);
  std::_Exit(rc);
}();

}  // namespace
}  // namespace llmdd
