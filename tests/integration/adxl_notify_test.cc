// Multi-process tests of the ADXL notifications (spec §5.2): SendNotify from
// this process (or from a second adxl_peer) to adxl_peer servers, which read
// them with GetNotifies. Every test checks exact statuses and bytes.
//
//  - Every status the spec gives: name or message over 1024 chars and
//    timeout <= 0 -> PARAM_INVALID, not initialized -> FAILED, no channel ->
//    NOT_CONNECTED, a frozen receiver -> TIMEOUT within the timeout, 4096
//    unconsumed notifies on one link -> RESOURCE_EXHAUSTED (203900) with the
//    oldest kept.
//  - GetNotifies appends what arrived on this engine's serving side, oldest
//    first, and clears it; notifies of two senders; names and messages arrive
//    byte for byte (1024 of each, NULs and high bytes included); what was
//    acknowledged survives the sender's Disconnect.
//  - Beyond CANN: a notify sent after a transfer completed is seen by the
//    receiver only once that transfer's bytes are in its memory (many
//    iterations, TCP and same-host, TransferSync and TransferAsync).
#define ITEST_USE_GTEST
#include "process_util.h"

namespace itest {
namespace {

using Notifies = std::vector<std::pair<std::string, std::string>>;

adxl::NotifyDesc Desc(const std::string &name, const std::string &msg) {
  adxl::NotifyDesc d;
  d.name = adxl::AscendString(name.data(), name.size());
  d.notify_msg = adxl::AscendString(msg.data(), msg.size());
  return d;
}

std::string Str(const adxl::AscendString &s) { return std::string(s.GetString(), s.GetLength()); }

class NotifyBase : public AdxlFixture {
 protected:
  uint32_t Send(AdxlPeer &peer, const std::string &name, const std::string &msg, int32_t timeout_ms = 10000) {
    return SendTo(peer.id(), name, msg, timeout_ms);
  }
  uint32_t SendTo(const std::string &remote, const std::string &name, const std::string &msg,
                  int32_t timeout_ms = 10000) {
    Timed r = TimedCall("SendNotify(" + remote + ")", static_cast<int64_t>(std::max(timeout_ms, 0)) + 30000, [&] {
      return engine_.SendNotify(adxl::AscendString(remote.c_str()), Desc(name, msg), timeout_ms);
    });
    return r.status;
  }
  // The peer's GetNotifies (SUCCESS expected).
  Notifies Received(AdxlPeer &peer) {
    Notifies got;
    EXPECT_ST(adxl::SUCCESS, peer.Notifies(&got)) << peer.last_error();
    return got;
  }
};

class NotifyStatusTest : public NotifyBase {};

TEST_F(NotifyStatusTest, EveryArgumentStatusAndExactBytes) {
  AdxlPeer::Options o;
  o.seed = 3000;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  std::vector<adxl::NotifyDesc> mine;
  // Not initialized: FAILED.
  EXPECT_ST(adxl::FAILED, Send(*peer, "n", "m"));
  EXPECT_ST(adxl::FAILED, engine_.GetNotifies(mine));
  ASSERT_TRUE(InitClient());
  // No channel: NOT_CONNECTED.
  EXPECT_ST(adxl::NOT_CONNECTED, Send(*peer, "n", "m"));
  ASSERT_TRUE(ConnectTo(*peer));
  // Over 1024 characters, timeout <= 0: PARAM_INVALID, nothing sent.
  const std::string k1024(1024, 'k'), k1025(1025, 'k');
  EXPECT_ST(adxl::PARAM_INVALID, Send(*peer, k1025, "m"));
  EXPECT_ST(adxl::PARAM_INVALID, Send(*peer, "n", k1025));
  EXPECT_ST(adxl::PARAM_INVALID, Send(*peer, "n", "m", 0));
  EXPECT_ST(adxl::PARAM_INVALID, Send(*peer, "n", "m", -5));
  EXPECT_ST(adxl::PARAM_INVALID, Send(*peer, k1025, k1025, 0));
  EXPECT_TRUE(Received(*peer).empty()) << "a refused notify arrived";
  // The limits themselves, and any bytes: delivered exactly.
  std::string binary("\0\x01\xff name with spaces\n", 20);
  ASSERT_ST(adxl::SUCCESS, Send(*peer, k1024, k1024));
  ASSERT_ST(adxl::SUCCESS, Send(*peer, binary, binary + binary));
  ASSERT_ST(adxl::SUCCESS, Send(*peer, "", ""));
  Notifies got = Received(*peer);
  ASSERT_EQ(3u, got.size());
  EXPECT_EQ(k1024, got[0].first);
  EXPECT_EQ(k1024, got[0].second);
  EXPECT_EQ(binary, got[1].first);
  EXPECT_EQ(binary + binary, got[1].second);
  EXPECT_EQ("", got[2].first);
  EXPECT_EQ("", got[2].second);
  // GetNotifies cleared them.
  EXPECT_TRUE(Received(*peer).empty());
  // A client-only engine receives nothing: an empty list, SUCCESS.
  EXPECT_ST(adxl::SUCCESS, engine_.GetNotifies(mine));
  EXPECT_TRUE(mine.empty());
  // After Disconnect: NOT_CONNECTED. What was acknowledged before stays with the receiver.
  ASSERT_ST(adxl::SUCCESS, Send(*peer, "last", "before goodbye"));
  ASSERT_ST(adxl::SUCCESS, DisconnectFrom(peer->id()));
  EXPECT_ST(adxl::NOT_CONNECTED, Send(*peer, "n", "m"));
  got = Received(*peer);
  ASSERT_EQ(1u, got.size());
  EXPECT_EQ("last", got[0].first);
  EXPECT_EQ("before goodbye", got[0].second);
}

// This process listens; peers connect to it and notify it: GetNotifies appends
// to what the vector holds, in arrival order, for two senders.
TEST_F(NotifyStatusTest, GetNotifiesAppendsWhatTwoSendersSentAndClears) {
  ASSERT_TRUE(InitServer());
  AdxlPeer::Options o;
  o.listen = false;
  o.seed = 3100;
  AdxlPeer *a = StartPeer(o);
  AdxlPeer *b = StartPeer(o);
  ASSERT_NE(nullptr, a);
  ASSERT_NE(nullptr, b);
  ASSERT_ST(adxl::SUCCESS, a->Connect(engine_id_, 10000));
  ASSERT_ST(adxl::SUCCESS, b->Connect(engine_id_, 10000));
  for (int k = 0; k < 3; ++k) {
    ASSERT_ST(adxl::SUCCESS, a->Notify(engine_id_, "a" + std::to_string(k), "from a", 10000)) << a->last_error();
    ASSERT_ST(adxl::SUCCESS, b->Notify(engine_id_, "b" + std::to_string(k), "from b", 10000)) << b->last_error();
  }
  std::vector<adxl::NotifyDesc> got;
  got.push_back(Desc("mine", "kept"));
  ASSERT_ST(adxl::SUCCESS, engine_.GetNotifies(got));
  ASSERT_EQ(7u, got.size());
  EXPECT_EQ("mine", Str(got[0].name));
  EXPECT_EQ("kept", Str(got[0].notify_msg));
  for (int k = 0; k < 3; ++k) {  // each SendNotify returned before the next was sent: arrival order
    EXPECT_EQ("a" + std::to_string(k), Str(got[1 + 2 * k].name));
    EXPECT_EQ("from a", Str(got[1 + 2 * k].notify_msg));
    EXPECT_EQ("b" + std::to_string(k), Str(got[2 + 2 * k].name));
    EXPECT_EQ("from b", Str(got[2 + 2 * k].notify_msg));
  }
  got.clear();
  ASSERT_ST(adxl::SUCCESS, engine_.GetNotifies(got));
  EXPECT_TRUE(got.empty()) << "GetNotifies did not clear";
  EXPECT_ST(adxl::SUCCESS, a->Disconnect(engine_id_, 10000));
  EXPECT_ST(adxl::SUCCESS, b->Disconnect(engine_id_, 10000));
}

TEST_F(NotifyStatusTest, AFrozenReceiverIsTimeoutWithinTheTimeoutAndTheChannelLives) {
  AdxlPeer::Options o;
  o.seed = 3200;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*peer));
  ASSERT_ST(adxl::SUCCESS, Send(*peer, "before", "m"));
  ASSERT_TRUE(peer->Stop());
  Timed t = TimedCall("SendNotify to a stopped peer", 30000,
                      [&] { return engine_.SendNotify(peer->engine(), Desc("frozen", "m"), 300); });
  EXPECT_ST(adxl::TIMEOUT, t.status);
  EXPECT_GE(t.ms, 290);
  EXPECT_LT(t.ms, 300 + kReturnMarginMs);
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->Health();
  // The channel still works; the notify that timed out arrived late (TIMEOUT
  // means its fate is unknown to the sender), its answer was dropped.
  ASSERT_ST(adxl::SUCCESS, Send(*peer, "after", "m"));
  Notifies got = Received(*peer);
  ASSERT_EQ(3u, got.size());
  EXPECT_EQ("before", got[0].first);
  EXPECT_EQ("frozen", got[1].first);
  EXPECT_EQ("after", got[2].first);
}

// CANN's later docs: at most 4096 unconsumed notifies per link. The oldest
// are kept; the 4097th is refused with RESOURCE_EXHAUSTED, which the receiver
// logs. Another link is not affected; GetNotifies makes room again.
TEST_F(NotifyStatusTest, TheLinkHoldsAtMost4096KeepingTheOldest) {
  AdxlPeer::Options o;
  o.seed = 3300;
  AdxlPeer *receiver = StartPeer(o);
  ASSERT_NE(nullptr, receiver);
  AdxlPeer::Options c;
  c.listen = false;
  c.seed = 3310;
  AdxlPeer *other = StartPeer(c);
  ASSERT_NE(nullptr, other);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*receiver));
  ASSERT_ST(adxl::SUCCESS, other->Connect(receiver->id(), 10000));
  {
    Watchdog dog(240000, "4096 notifies");
    for (int k = 0; k < 4096; ++k) {
      const uint32_t st = engine_.SendNotify(receiver->engine(), Desc("n" + std::to_string(k), "m"), 10000);
      ASSERT_ST(adxl::SUCCESS, st) << "notify " << k;
    }
  }
  EXPECT_ST(adxl::RESOURCE_EXHAUSTED, Send(*receiver, "n4096", "refused"));
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, 203900u);
  EXPECT_ST(adxl::RESOURCE_EXHAUSTED, Send(*receiver, "n4097", "refused"));
  // Another link of the same receiver has its own 4096.
  ASSERT_ST(adxl::SUCCESS, other->Notify(receiver->id(), "other", "m", 10000)) << other->last_error();
  Notifies got = Received(*receiver);
  ASSERT_EQ(4097u, got.size());
  for (int k = 0; k < 4096; ++k) ASSERT_EQ("n" + std::to_string(k), got[k].first) << "the oldest are kept, in order";
  EXPECT_EQ("other", got[4096].first);
  // Consumed: room again.
  ASSERT_ST(adxl::SUCCESS, Send(*receiver, "again", "m"));
  got = Received(*receiver);
  ASSERT_EQ(1u, got.size());
  EXPECT_EQ("again", got[0].first);
  EXPECT_ST(adxl::SUCCESS, other->Disconnect(receiver->id(), 10000));
}

// ---------------------------------------------------------------------------------
// Ordered after the data: a WRITE (TransferSync, or TransferAsync polled to
// COMPLETED), then SendNotify naming what it wrote. The receiver polls
// GetNotifies and checks, as soon as it sees each notify, that the bytes are
// in its memory. Over TCP and the same-host path (where writes that average
// 4 KiB or more are copied by the server with process_vm_readv, smaller ones
// go over TCP), sizes from 1 byte to 2 MiB (split across lanes).
// ---------------------------------------------------------------------------------
class NotifyOrderTest : public NotifyBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
};

std::string TransportName(const ::testing::TestParamInfo<std::string> &info) { return info.param; }

TEST_P(NotifyOrderTest, ANotifySentAfterAWriteCompletedIsSeenOnlyWithItsBytes) {
  const size_t kRegion = 32u << 20;
  const int kIterations = 600;
  const std::vector<size_t> sizes = {1, 333, 4096, 16384, 65536, 7};
  AdxlPeer::Options o;
  o.size = kRegion;
  o.seed = 3400;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(kRegion);
  ASSERT_TRUE(peer->StartWatch(kIterations, 0, 240000));
  size_t off = 0;
  int async_count = 0;
  {
    Watchdog dog(240000, "write + notify iterations");
    for (int k = 0; k < kIterations; ++k) {
      const size_t len = k % 100 == 99 ? (2u << 20) + 5 : sizes[k % sizes.size()];
      ASSERT_LE(off + len, kRegion);
      const uint64_t seed = 3500 + k;  // never the region's own pattern
      FillPattern(local.data() + off, len, seed, off);
      const std::vector<adxl::TransferOpDesc> descs = {{local.addr() + off, rr.addr + off, len}};
      if (k % 3 == 2) {
        adxl::TransferArgs args;
        adxl::TransferReq req = nullptr;
        ASSERT_ST(adxl::SUCCESS, engine_.TransferAsync(peer->engine(), adxl::WRITE, descs, args, req));
        adxl::TransferStatus status = adxl::TransferStatus::WAITING;
        uint32_t ret = adxl::SUCCESS;
        while ((ret = engine_.GetTransferStatus(req, status)) == adxl::SUCCESS &&
               status == adxl::TransferStatus::WAITING) {
        }
        ASSERT_ST(adxl::SUCCESS, ret) << "iteration " << k;
        ASSERT_EQ(adxl::TransferStatus::COMPLETED, status) << "iteration " << k;
        ++async_count;
      } else {
        ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, descs, 20000)) << "iteration " << k;
      }
      const std::string msg = std::to_string(off) + " " + std::to_string(len) + " " + std::to_string(seed);
      ASSERT_ST(adxl::SUCCESS, Send(*peer, "w" + std::to_string(k), msg)) << "iteration " << k;
      off += (len + 63) / 64 * 64 + 64;
    }
  }
  EXPECT_EQ(kIterations / 3, async_count);
  EXPECT_EQ("WATCHED " + std::to_string(kIterations) + " 0 -", peer->WatchResult(240000))
      << "the receiver saw notifies whose bytes were not in its memory yet";
}

INSTANTIATE_TEST_SUITE_P(Transports, NotifyOrderTest, ::testing::ValuesIn(AllTransports()), TransportName);

}  // namespace
}  // namespace itest
