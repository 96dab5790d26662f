// The path policy's rules, at their thresholds (engine/path_policy.h).
#include "engine/path_policy.h"

#include <gtest/gtest.h>

#include <chrono>

namespace llmdd {
namespace {

TEST(PathPolicy, OneSidedReadForReadsOfFewDescriptorsUpToTheLeaseBound) {
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, 8, 1));
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, kSameHostMinReadBytes - 1, kOneSidedAnySizeDescriptors));
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, 1 << 20, 1));  // no round trip for a 1 MiB READ either
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, kOneSidedMaxBytes, kOneSidedMaxDescriptors));
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, kOneSidedMaxBytes + 1, 1));  // might outlive the lease: a request
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, 16 << 10, kOneSidedMaxDescriptors + 1));
  // Many descriptors: one-sided when they are large enough to pay for pinning each (a KV pull's blocks).
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, 128 * (16 << 10), 128));
  EXPECT_TRUE(OneSidedReadFits(adxl::READ, 8 * kOneSidedAnySizeDescriptors, kOneSidedAnySizeDescriptors));
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, 8 * 512, 512));  // tiny ones: the kernel pins each remote iovec
  EXPECT_FALSE(OneSidedReadFits(adxl::READ, 0, 0));
  EXPECT_FALSE(OneSidedReadFits(adxl::WRITE, 8, 1));                     // never writes the peer's memory
  // The lease bound fits the renewal margin even at 1 GB/s.
  EXPECT_LT(kOneSidedMaxBytes / 1000, static_cast<uint64_t>(std::chrono::microseconds(kLeaseRenewMargin).count()));
}

TEST(PathPolicy, SameHostSplitsAtMostOncePerCoreInLargeParts) {
  constexpr uint64_t kMiB = 1 << 20;
  constexpr uint64_t part = kSameHostMinPartBytesDefault;
  // 2 cores, 4 lanes: a 1 MiB call is one copy, no hand-off.
  EXPECT_EQ(SameHostSplitParts(1 * kMiB, 4, 2, part), 1u);
  EXPECT_EQ(SameHostSplitParts(2 * part - 1, 4, 2, part), 1u);
  EXPECT_EQ(SameHostSplitParts(2 * part, 4, 2, part), 2u);
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 4, 2, part), 2u);   // one part per core, not per lane
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 4, 16, part), 4u);  // the lanes bound it
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 4, 1, part), 1u);   // one core: never split
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 1, 16, part), 1u);
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 4, 16, 0), 1u);     // 0: never
  EXPECT_EQ(SameHostSplitParts(64 * kMiB, 4, 16, 1ULL << 40), 1u);
  EXPECT_EQ(SameHostSplitParts(3 * kMiB, 8, 16, kMiB), 3u);
  // The split a link gets: its own rule.
  TransportCaps shm, tcp;
  shm.name = "shm";
  tcp.name = "tcp";
  const SplitRule two_cores{2, part};
  EXPECT_EQ(PartsFor(shm, 1 * kMiB, 4, two_cores), 1u);
  EXPECT_EQ(PartsFor(tcp, 2 * kMiB, 4, two_cores), 4u);  // TCP: lanes, not cores
}

TEST(PathPolicy, SplitOnlyWhenEveryPartStaysLarge) {
  EXPECT_EQ(SplitParts(kParallelThreshold - 1, 4), 1u);
  EXPECT_EQ(SplitParts(kParallelThreshold, 4), 2u);              // 1 MiB in 2 parts of 512 KiB
  EXPECT_EQ(SplitParts(kParallelThreshold, 8), 2u);              // not in parts under kMinPartBytes
  EXPECT_EQ(SplitParts(2 * kParallelThreshold, 8), 4u);
  EXPECT_EQ(SplitParts(64ULL << 20, 4), 4u);                     // never more parts than lanes
  EXPECT_EQ(SplitParts(64ULL << 20, 1), 1u);
  EXPECT_EQ(SplitParts(kParallelThreshold + kMinPartBytes, 64), 3u);
}

// A same-host WRITE's requester spins for the server's copy only while that
// is short: the usual spin plus the copy at 4 GB/s, at most 1 ms; never where
// spinning is off.
TEST(PathPolicy, SameHostWriteSpinCoversShortCopiesOnly) {
  EXPECT_EQ(SameHostWriteSpinUs(50, 0), 50u);
  EXPECT_EQ(SameHostWriteSpinUs(50, 1ULL << 20), 50u + (1u << 20) / 4000);  // 312 µs for 1 MiB
  EXPECT_EQ(SameHostWriteSpinUs(0, 1ULL << 20), 0u);
  EXPECT_EQ(SameHostWriteSpinUs(50, 16ULL << 20), 0u);                      // 4 ms: block
  EXPECT_EQ(SameHostWriteSpinUs(50, (kSameHostSpinMaxUs - 50) * kSameHostSpinCopyBytesPerUs), kSameHostSpinMaxUs);
  EXPECT_EQ(SameHostWriteSpinUs(50, (kSameHostSpinMaxUs - 49) * kSameHostSpinCopyBytesPerUs), 0u);
}

}  // namespace
}  // namespace llmdd
