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

}  // namespace
}  // namespace llmdd
