// MemoryRegistry: containment, overlapping registrations, pins and the
// "Remove waits for in-flight users" contract.
#include "engine/memory_registry.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
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
// Micro benchmark, run by hand (prints figures, asserts nothing about time):
//   build/tests/memory_registry_test --gtest_also_run_disabled_tests --gtest_filter='*CoverBenchmark*'
// One RegionPins validates 100,000 ranges, as ServeTransfer does for one request.
// ---------------------------------------------------------------------------------
namespace llmdd {
namespace {

TEST(MemoryRegistryBenchmark, DISABLED_CoverBenchmark) {
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
  auto run = [&](const char *what, const std::vector<size_t> &order) {
    double best_ms = 1e300;
    for (int round = 0; round < 3; ++round) {
      RegionPins pins(&registry);
      const auto start = std::chrono::steady_clock::now();
      for (size_t i : order) ASSERT_TRUE(pins.Cover(kBase + i * 2 * kRegionBytes + 64, 128, kAccessRead));
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      best_ms = std::min(best_ms, ms);
    }
    std::printf("[ BENCHMARK] %zu ranges, %-38s best of 3: %9.2f ms\n", order.size(), what, best_ms);
  };
  run("each in a different region (ascending)", ascending);
  run("each in a different region (shuffled)", shuffled);
  run("alternating between two regions", alternating);
  run("all in one region", same);
}

}  // namespace
}  // namespace llmdd
