// The path policy's rules, at their thresholds (engine/path_policy.h).
#include "engine/path_policy.h"

#include <gtest/gtest.h>

namespace llmdd {
namespace {

TEST(PathPolicy, OneSidedReadOnlyForSmallReadsOfFewDescriptors) {
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, 8, 1));
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, kSameHostMinReadBytes - 1, kOneSidedMaxDescriptors));
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, kSameHostMinReadBytes, 1));          // a same-host request pays
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, 8 * 65, kOneSidedMaxDescriptors + 1));
  EXPECT_FALSE(OneSidedReadFits(adxl::WRITE, 8, 1));                             // never writes the peer's memory
}

TEST(PathPolicy, SplitOnlyWhenEveryPartStaysLarge) {
  EXPECT_EQ(SplitParts(kParallelThreshold - 1, 4), 1u);
  EXPECT_EQ(SplitParts(kParallelThreshold, 4), 4u);              // 1 MiB in 4 parts of 256 KiB
  EXPECT_EQ(SplitParts(kParallelThreshold, 8), 4u);              // not in parts under kMinPartBytes
  EXPECT_EQ(SplitParts(64ULL << 20, 4), 4u);                     // never more parts than lanes
  EXPECT_EQ(SplitParts(64ULL << 20, 1), 1u);
  EXPECT_EQ(SplitParts(kParallelThreshold + kMinPartBytes, 64), 5u);
}

}  // namespace
}  // namespace llmdd
