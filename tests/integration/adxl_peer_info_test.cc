// llmdd_ext::GetPeerInfo: what a channel's handshake learned about its server
// (the peer's library version travels in HelloAck; docs/API.md). A real peer
// process on this host, over each transport.
#define ITEST_USE_GTEST
#include "process_util.h"

#include <cstring>

#include "llmdd/extensions.h"

namespace itest {
namespace {

class PeerInfoTest : public AdxlFixture {};

TEST_F(PeerInfoTest, ReportsVersionLinksAndPathOfEachTransport) {
  UseTransport("auto");  // the peer offers the same-host path
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  for (const char *transport : {"auto", "tcp"}) {
    adxl::AdxlEngine e;
    ASSERT_ST(adxl::SUCCESS, e.Initialize("127.0.0.1", {{"llmdd.Transport", transport}}));
    llmdd_ext::PeerInfo info;
    std::memset(&info, 0x55, sizeof(info));
    // Before Connect: no channel.
    EXPECT_ST(adxl::NOT_CONNECTED, llmdd_ext::GetPeerInfo(e, peer->id().c_str(), &info));
    ASSERT_ST(adxl::SUCCESS, e.Connect(peer->id().c_str(), 10000));
    ASSERT_ST(adxl::SUCCESS, llmdd_ext::GetPeerInfo(e, peer->id().c_str(), &info));
    EXPECT_STREQ(info.library_version, llmdd_ext::Version()) << transport;  // the peer runs this build's library
    EXPECT_EQ(info.protocol_version, 2U) << transport;
    EXPECT_STREQ(info.offered, "") << transport;  // TCP and shm are never advertised with metadata
    if (std::string(transport) == "tcp") {
      EXPECT_STREQ(info.links, "tcp");
      EXPECT_EQ(info.same_host, 0U);
      EXPECT_STREQ(info.same_host_why_not, "llmdd.Transport=tcp on this engine");
    } else {
      EXPECT_STREQ(info.links, "tcp,shm");
      EXPECT_EQ(info.same_host, 1U);
      EXPECT_STREQ(info.same_host_why_not, "");
    }
    for (uint8_t b : info.reserved) ASSERT_EQ(b, 0) << "reserved bytes are zeroed";
    // Spelled differently from Connect: another remote, no channel.
    EXPECT_ST(adxl::NOT_CONNECTED, llmdd_ext::GetPeerInfo(e, "127.0.0.1:1", &info));
    EXPECT_ST(adxl::PARAM_INVALID, llmdd_ext::GetPeerInfo(e, nullptr, &info));
    EXPECT_ST(adxl::PARAM_INVALID, llmdd_ext::GetPeerInfo(e, peer->id().c_str(), nullptr));
    EXPECT_ST(adxl::SUCCESS, e.Disconnect(peer->id().c_str(), 10000));
    EXPECT_ST(adxl::NOT_CONNECTED, llmdd_ext::GetPeerInfo(e, peer->id().c_str(), &info));
    e.Finalize();
  }
}

}  // namespace
}  // namespace itest
