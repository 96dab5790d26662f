// NotifyInbox: the receiver's store of notifications (SendNotify): the
// per-link cap keeps the oldest, the byte cap spans every link, GetNotifies'
// TakeAll appends oldest first and clears, refusals say why.
#include "engine/notify_inbox.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace llmdd {
namespace {

wire::Notify N(const std::string &name, const std::string &message = "") {
  wire::Notify n;
  n.name = name;
  n.message = message;
  return n;
}

TEST(NotifyInbox, EachLinkHoldsAtMostItsCapKeepingTheOldest) {
  NotifyInbox inbox(3, 1 << 20);
  std::string why;
  for (int k = 0; k < 3; ++k) ASSERT_EQ(inbox.Add(1, "p1", "me", N("a" + std::to_string(k)), &why), adxl::SUCCESS);
  EXPECT_EQ(inbox.Add(1, "p1", "me", N("a3"), &why), adxl::RESOURCE_EXHAUSTED);
  EXPECT_NE(why.find("engine me already holds 3 unconsumed notifies from this link"), std::string::npos) << why;
  EXPECT_NE(why.find("'a3' refused"), std::string::npos) << why;
  // Another link is not affected.
  ASSERT_EQ(inbox.Add(2, "p2", "me", N("b0"), &why), adxl::SUCCESS);
  EXPECT_EQ(inbox.Size(), 4U);
  std::vector<wire::Notify> out = {N("already there")};
  inbox.TakeAll(&out);
  ASSERT_EQ(out.size(), 5U);
  EXPECT_EQ(out[0].name, "already there");
  EXPECT_EQ(out[1].name, "a0");
  EXPECT_EQ(out[2].name, "a1");
  EXPECT_EQ(out[3].name, "a2");
  EXPECT_EQ(out[4].name, "b0");
  EXPECT_EQ(inbox.Size(), 0U);
  EXPECT_EQ(inbox.Bytes(), 0U);
  // Taken: the link has room again.
  EXPECT_EQ(inbox.Add(1, "p1", "me", N("a4"), &why), adxl::SUCCESS);
}

TEST(NotifyInbox, TheByteCapSpansEveryLinkAndCountsAFixedOverhead) {
  const uint64_t cost = 10 + 20 + NotifyInbox::kEntryOverhead;
  NotifyInbox inbox(4096, 3 * cost);
  std::string why;
  for (uint64_t link = 1; link <= 3; ++link)
    ASSERT_EQ(inbox.Add(link, "p", "me", N(std::string(10, 'n'), std::string(20, 'm')), &why), adxl::SUCCESS);
  EXPECT_EQ(inbox.Bytes(), 3 * cost);
  EXPECT_EQ(inbox.Add(4, "p", "me", N(""), &why), adxl::RESOURCE_EXHAUSTED);
  EXPECT_NE(why.find("llmdd.MaxNotifyBytes=" + std::to_string(3 * cost)), std::string::npos) << why;
  inbox.Clear();
  EXPECT_EQ(inbox.Bytes(), 0U);
  EXPECT_EQ(inbox.Add(4, "p", "me", N(""), &why), adxl::SUCCESS);
}

TEST(NotifyInbox, TheSpecsDefaultIs4096PerLink) {
  NotifyInbox inbox;
  std::string why;
  for (int k = 0; k < 4096; ++k) ASSERT_EQ(inbox.Add(9, "p", "me", N("n"), &why), adxl::SUCCESS) << k;
  EXPECT_EQ(inbox.Add(9, "p", "me", N("n"), &why), adxl::RESOURCE_EXHAUSTED);
  EXPECT_EQ(inbox.Add(10, "p", "me", N("n"), &why), adxl::SUCCESS);
  // SetLimits applies to what comes next; what is held stays.
  inbox.SetLimits(1, 1 << 20);
  EXPECT_EQ(inbox.Size(), 4097U);
  EXPECT_EQ(inbox.Add(11, "p", "me", N("n"), &why), adxl::SUCCESS);
  EXPECT_EQ(inbox.Add(11, "p", "me", N("n"), &why), adxl::RESOURCE_EXHAUSTED);
}

}  // namespace
}  // namespace llmdd
