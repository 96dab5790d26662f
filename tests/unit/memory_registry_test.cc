// MemoryRegistry: containment, overlapping registrations, pins and the
// "Remove waits for in-flight users" contract.
#include "engine/memory_registry.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace llmdd {
namespace {

TEST(MemoryRegistry, CoversOnlyRangesInsideOneRegion) {
  MemoryRegistry registry;
  registry.Add(1000, 100, 1);
  registry.Add(1100, 100, 1);  // adjacent, but a range may not span both
  RegionPins pins(&registry);
  EXPECT_TRUE(pins.Cover(1000, 100));
  EXPECT_TRUE(pins.Cover(1050, 50));
  EXPECT_TRUE(pins.Cover(1199, 1));
  EXPECT_FALSE(pins.Cover(1050, 100));  // spans two registrations
  EXPECT_FALSE(pins.Cover(999, 2));
  EXPECT_FALSE(pins.Cover(1200, 1));
  EXPECT_FALSE(pins.Cover(1000, UINT64_MAX));  // overflow-safe
  EXPECT_FALSE(pins.Cover(UINT64_MAX, 2));
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
  // Too many regions: no lease at all (the peer then sends requests).
  for (int i = 0; i < 5; ++i) registry.Add(10000 + 100 * i, 50, 1);
  granted = registry.GrantReadLease(std::chrono::steady_clock::now(), 4, &too_many);
  EXPECT_TRUE(too_many);
  EXPECT_TRUE(granted.empty());
}

}  // namespace
}  // namespace llmdd
