// BuildSegments: descriptor validation and merging of neighbours.
#include <gtest/gtest.h>

#include "engine/engine.h"

namespace llmdd {
namespace {

TEST(BuildSegments, MergesDescriptorsAdjacentOnBothSidesOnly) {
  std::vector<adxl::TransferOpDesc> d = {{1000, 5000, 10}, {1010, 5010, 20}, {1030, 6000, 5}, {2000, 6005, 5}};
  std::vector<Segment> segs;
  std::string error;
  ASSERT_EQ(BuildSegments(d.data(), d.size(), &segs, &error), adxl::SUCCESS);
  ASSERT_EQ(segs.size(), 3U);
  EXPECT_EQ(segs[0].local, 1000U);
  EXPECT_EQ(segs[0].len, 30U);
  EXPECT_EQ(segs[1].remote, 6000U);
  EXPECT_EQ(segs[2].local, 2000U);
}

TEST(BuildSegments, DropsZeroLengthAndRefusesNullOrWrappingDescriptors) {
  std::vector<Segment> segs;
  std::string error;
  std::vector<adxl::TransferOpDesc> zero = {{1000, 2000, 0}};
  ASSERT_EQ(BuildSegments(zero.data(), zero.size(), &segs, &error), adxl::SUCCESS);
  EXPECT_TRUE(segs.empty());
  std::vector<adxl::TransferOpDesc> null_local = {{1000, 2000, 8}, {0, 2000, 8}};
  EXPECT_EQ(BuildSegments(null_local.data(), null_local.size(), &segs, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("descriptor 1 has a null local address"), std::string::npos) << error;
  std::vector<adxl::TransferOpDesc> null_remote = {{1000, 0, 8}};
  EXPECT_EQ(BuildSegments(null_remote.data(), null_remote.size(), &segs, &error), adxl::PARAM_INVALID);
  std::vector<adxl::TransferOpDesc> wrap = {{UINTPTR_MAX - 4, 2000, 8}};
  EXPECT_EQ(BuildSegments(wrap.data(), wrap.size(), &segs, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("wraps"), std::string::npos);
}

}  // namespace
}  // namespace llmdd
