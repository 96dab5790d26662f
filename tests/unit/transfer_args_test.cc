// The per-request deadline extension of llmdd/extensions.h: where its bytes
// lie in both APIs' TransferArgs, that it round-trips, that zeroed args (what
// CANN's programs pass) mean no deadline, and that it never touches what CANN
// put in the struct (hixl's user_data, the rest of the reserved bytes).
#include <gtest/gtest.h>

#include <cstring>

#include "llmdd/extensions.h"

namespace {

template <typename Args>
void ExpectRoundTrip() {
  Args args;
  uint32_t ms = 12345;
  EXPECT_FALSE(llmdd_ext::GetTransferTimeout(args, &ms)) << "default-constructed args carry no deadline";
  EXPECT_EQ(ms, 12345u) << "untouched when none is set";
  for (uint32_t value : {1u, 250u, 60000u, 0xFFFFFFFFu}) {
    llmdd_ext::SetTransferTimeout(args, value);
    ASSERT_TRUE(llmdd_ext::GetTransferTimeout(args, &ms)) << value;
    EXPECT_EQ(ms, value);
  }
  llmdd_ext::SetTransferTimeout(args, 0);  // removes it
  EXPECT_FALSE(llmdd_ext::GetTransferTimeout(args, &ms));
  const Args zero{};
  EXPECT_EQ(memcmp(&args, &zero, sizeof(args)), 0) << "0 leaves the bytes as a default-constructed struct has them";
}

TEST(TransferArgsExtension, RoundTripsInBothApis) {
  ExpectRoundTrip<adxl::TransferArgs>();
  ExpectRoundTrip<hixl::TransferArgs>();
}

TEST(TransferArgsExtension, UsesOnlyTheLastEightBytes) {
  // CANN grows its structs from the front of the reserved area: the deadline
  // sits at the far end, bytes 120..127 of the 128.
  static_assert(sizeof(adxl::TransferArgs) == 128 && sizeof(hixl::TransferArgs) == 128, "layouts");
  adxl::TransferArgs a;
  memset(a.reserved, 0xA5, sizeof(a.reserved));
  llmdd_ext::SetTransferTimeout(a, 500);
  for (size_t i = 0; i < 120; ++i) EXPECT_EQ(a.reserved[i], 0xA5) << "byte " << i;
  EXPECT_EQ(a.reserved[120], 'L');
  EXPECT_EQ(a.reserved[121], 'D');
  EXPECT_EQ(a.reserved[122], 'T');
  EXPECT_EQ(a.reserved[123], llmdd_ext::kTimeoutFormat);

  int tag = 0;
  hixl::TransferArgs h;
  h.user_data = &tag;
  memset(h.reserved, 0x5A, sizeof(h.reserved));
  llmdd_ext::SetTransferTimeout(h, 500);
  EXPECT_EQ(h.user_data, &tag);
  for (size_t i = 0; i < 112; ++i) EXPECT_EQ(h.reserved[i], 0x5A) << "byte " << i;
  EXPECT_EQ(h.reserved[112], 'L');
  uint32_t ms = 0;
  ASSERT_TRUE(llmdd_ext::GetTransferTimeout(h, &ms));
  EXPECT_EQ(ms, 500u);
}

TEST(TransferArgsExtension, BytesWithoutTheMarkerOrWithZeroAreNoDeadline) {
  uint32_t ms = 7;
  adxl::TransferArgs a;
  memset(a.reserved, 0xFF, sizeof(a.reserved));  // garbage a caller left: no marker
  EXPECT_FALSE(llmdd_ext::GetTransferTimeout(a, &ms));
  llmdd_ext::SetTransferTimeout(a, 300);
  a.reserved[123] = 2;  // a later format this library does not know
  EXPECT_FALSE(llmdd_ext::GetTransferTimeout(a, &ms));
  llmdd_ext::SetTransferTimeout(a, 300);
  memset(a.reserved + 124, 0, 4);  // the marker with a zero timeout
  EXPECT_FALSE(llmdd_ext::GetTransferTimeout(a, &ms));
  EXPECT_EQ(ms, 7u);
}

}  // namespace
