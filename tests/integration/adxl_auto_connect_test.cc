// Multi-process tests of auto-connect and the channel pool (docs/API.md,
// "Auto-connect and the channel pool") through the public API, against
// adxl_peer processes. Every test checks exact statuses and the bytes.
//
//  - AutoConnect "1": TransferSync (both ways), TransferAsync and SendNotify
//    to peers the engine never connected to move the right bytes (and the
//    notify arrives); without the option, or with "0", each is NOT_CONNECTED
//    as before. GetCapability(AUTO_CONNECT) is FEATURE_SUPPORTED.
//  - A failed auto-connect is the transfer's status, within its timeout:
//    FAILED when nobody listens, TIMEOUT when the peer is frozen; TransferAsync
//    waits for it no longer than the request's own deadline.
//  - A dead peer is cleaned up: after it exits and another starts on its
//    address, the next transfer reconnects on its own.
//  - hixl::Hixl with a channel pool of two (GlobalResourceConfig): the third
//    peer's transfer closes the idle channels (Disconnect of one Connect
//    opened says NOT_CONNECTED), and their peers' next transfers come back
//    with the right bytes; with a transfer in flight on both channels
//    (frozen peers), a third Connect and a third transfer wait for a slot
//    and end with RESOURCE_EXHAUSTED (203900) at their timeouts, and the
//    busy channels stay.
//  - Bad AutoConnect and channel_pool values: Initialize is PARAM_INVALID.
#define ITEST_USE_GTEST
#include "process_util.h"

#include <thread>

#include "hixl/hixl.h"
#include "llmdd/extensions.h"

namespace itest {
namespace {

constexpr int64_t kPollMs = 20000;  // CI machines are slow (2 cores)

class AutoConnectTest : public AdxlFixture {
 protected:
  AdxlPeer *Peer(uint64_t seed, int regions = 1) {
    AdxlPeer::Options o;
    o.regions = regions;
    o.size = 1 << 20;
    o.seed = seed;
    return StartPeer(o);
  }
  // READ of [off, off+len) of the peer's region 0 into `into` (its first len bytes cleared first).
  uint32_t ReadFrom(AdxlPeer &peer, GuardedBuffer &into, size_t off, size_t len, int32_t timeout_ms = 10000) {
    std::memset(into.data(), 0, len);
    return Xfer(peer, adxl::READ, {{into.addr(), peer.region(0).addr + off, len}}, timeout_ms);
  }
};

TEST_F(AutoConnectTest, EveryCallReachesAPeerNeverConnectedToAndMovesTheBytes) {
  int32_t value = -1;
  EXPECT_ST(adxl::SUCCESS, adxl::AdxlEngine::GetCapability(adxl::AUTO_CONNECT, value));
  EXPECT_EQ(adxl::FEATURE_SUPPORTED, value);
  AdxlPeer *a = Peer(4100, 2);
  AdxlPeer *b = Peer(4200);
  ASSERT_NE(nullptr, a);
  ASSERT_NE(nullptr, b);
  ASSERT_TRUE(InitClient({{adxl::OPTION_AUTO_CONNECT, "1"}}));
  GuardedBuffer local(1 << 20);

  // TransferSync READ and WRITE, no Connect.
  ASSERT_ST(adxl::SUCCESS, ReadFrom(*a, local, 12345, 300000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 300000, a->region(0).seed, 12345));
  FillPattern(local.data(), 70000, 4199, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*a, adxl::WRITE, {{local.addr(), a->region(1).addr + 7, 70000}}, 10000));
  uint64_t crc = 0;
  ASSERT_TRUE(a->Crc(1, 7, 70000, &crc)) << a->last_error();
  EXPECT_EQ(Hash64(local.data(), 70000), crc);
  EXPECT_EQ("OK", a->Check(1, 70007, 1000, a->region(1).seed)) << "WRITE wrote past its range";

  // TransferAsync to the second peer, no Connect.
  std::memset(local.data(), 0, 65536);
  adxl::TransferReq req = nullptr;
  Timed r = TimedCall("TransferAsync", 30000, [&] {
    return engine_.TransferAsync(b->engine(), adxl::READ, {{local.addr(), b->region(0).addr + 99, 65536}},
                                 adxl::TransferArgs(), req);
  });
  ASSERT_ST(adxl::SUCCESS, r.status);
  ASSERT_NE(nullptr, req);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  const auto t0 = Clock::now();
  uint32_t st = adxl::SUCCESS;
  while ((st = engine_.GetTransferStatus(req, status)) == adxl::SUCCESS && status == adxl::TransferStatus::WAITING &&
         MsSince(t0) < kPollMs)
    SleepMs(1);
  ASSERT_ST(adxl::SUCCESS, st);
  ASSERT_EQ(static_cast<int>(adxl::TransferStatus::COMPLETED), static_cast<int>(status));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 65536, b->region(0).seed, 99));

  // SendNotify after a Disconnect: connected again on demand; the peer gets it.
  ASSERT_ST(adxl::SUCCESS, DisconnectFrom(b->id()));
  adxl::NotifyDesc notify;
  notify.name = "kv";
  notify.notify_msg = "landed";
  EXPECT_ST(adxl::SUCCESS, engine_.SendNotify(b->engine(), notify, 10000));
  std::vector<std::pair<std::string, std::string>> got;
  ASSERT_ST(adxl::SUCCESS, b->Notifies(&got)) << b->last_error();
  ASSERT_EQ(1u, got.size());
  EXPECT_EQ("kv", got[0].first);
  EXPECT_EQ("landed", got[0].second);
  // A channel auto-connect opened is an ordinary one: Connect says so, Disconnect closes it.
  EXPECT_ST(adxl::ALREADY_CONNECTED, engine_.Connect(a->engine(), 10000));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(a->id()));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(b->id()));
}

TEST_F(AutoConnectTest, WithoutTheOptionOrWithZeroEveryCallIsNotConnectedWithOneItConnects) {
  AdxlPeer *a = Peer(4300);
  ASSERT_NE(nullptr, a);
  GuardedBuffer local(4096);
  for (const char *option : {"", "0"}) {
    SCOPED_TRACE(std::string("AutoConnect='") + option + "'");
    std::vector<std::pair<std::string, std::string>> opts;
    if (option[0] != '\0') opts.emplace_back(adxl::OPTION_AUTO_CONNECT, option);
    ASSERT_TRUE(InitClient(opts));
    EXPECT_ST(adxl::NOT_CONNECTED, ReadFrom(*a, local, 0, 64));
    adxl::TransferReq req = reinterpret_cast<adxl::TransferReq>(0x1);
    EXPECT_ST(adxl::NOT_CONNECTED, engine_.TransferAsync(a->engine(), adxl::READ, {{local.addr(), a->region(0).addr, 64}},
                                                         adxl::TransferArgs(), req));
    EXPECT_EQ(nullptr, req);
    adxl::NotifyDesc notify;
    notify.name = "n";
    notify.notify_msg = "m";
    EXPECT_ST(adxl::NOT_CONNECTED, engine_.SendNotify(a->engine(), notify, 1000));
    engine_.Finalize();
    initialized_ = false;
  }
  // With "1" the same call reaches it.
  ASSERT_TRUE(InitClient({{adxl::OPTION_AUTO_CONNECT, "1"}}));
  ASSERT_ST(adxl::SUCCESS, ReadFrom(*a, local, 10, 64));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 64, a->region(0).seed, 10));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(a->id()));
}

TEST_F(AutoConnectTest, AFailedAutoConnectIsTheTransfersStatusWithinItsTimeout) {
  AdxlPeer *a = Peer(4400);
  ASSERT_NE(nullptr, a);
  ASSERT_TRUE(InitClient({{adxl::OPTION_AUTO_CONNECT, "1"}}));
  GuardedBuffer local(4096);
  // Nobody listens: FAILED, as Connect's.
  const std::string nobody = "127.0.0.1:" + std::to_string(PickFreePort());
  Timed r = Transfer(nobody, adxl::READ, {{local.addr(), a->region(0).addr, 64}}, 3000);
  EXPECT_ST(adxl::FAILED, r.status);
  EXPECT_LT(r.ms, 3000 + kReturnMarginMs);
  // Malformed: PARAM_INVALID, as Connect's.
  EXPECT_ST(adxl::PARAM_INVALID, Transfer("ad.0.0.1:26000", adxl::READ, {{local.addr(), 4096, 64}}, 1000).status);
  // A frozen peer never answers the handshake: TIMEOUT at the transfer's timeout.
  ASSERT_TRUE(a->Stop());
  r = Transfer(a->id(), adxl::READ, {{local.addr(), a->region(0).addr, 64}}, 800);
  // TransferAsync waits for its auto-connect at most 1 s, and never longer
  // than the request's own deadline (SetTransferTimeout): here 100 ms.
  adxl::TransferArgs args;
  llmdd_ext::SetTransferTimeout(args, 100);
  adxl::TransferReq req = nullptr;
  Timed submit = TimedCall("TransferAsync (frozen peer, 100 ms deadline)", 30000, [&] {
    return engine_.TransferAsync(a->engine(), adxl::READ, {{local.addr(), a->region(0).addr, 64}}, args, req);
  });
  a->Continue();
  EXPECT_ST(adxl::TIMEOUT, r.status);
  EXPECT_GE(r.ms, 700);
  EXPECT_LT(r.ms, 800 + kReturnMarginMs);
  EXPECT_ST(adxl::TIMEOUT, submit.status);
  EXPECT_EQ(nullptr, req);
  EXPECT_GE(submit.ms, 90);
  EXPECT_LT(submit.ms, 800) << "the submit waited for the 1 s auto-connect bound, not the request's 100 ms";
  // Thawed, it is reached on the next transfer.
  ASSERT_ST(adxl::SUCCESS, ReadFrom(*a, local, 5, 4000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4000, a->region(0).seed, 5));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(a->id()));
}

TEST_F(AutoConnectTest, ADeadPeerIsCleanedUpAndItsSuccessorReachedOnTheNextTransfer) {
  AdxlPeer *a = Peer(4500);
  ASSERT_NE(nullptr, a);
  ASSERT_TRUE(InitClient({{adxl::OPTION_AUTO_CONNECT, "1"}}));
  GuardedBuffer local(1 << 16);
  ASSERT_ST(adxl::SUCCESS, ReadFrom(*a, local, 0, 1 << 16));
  const int port = a->port();
  EXPECT_EQ("", a->Quit());
  peers_.clear();
  AdxlPeer::Options o;
  o.size = 1 << 20;
  o.seed = 4600;  // another pattern: the bytes must come from the new peer
  o.fixed_port = port;
  AdxlPeer *successor = StartPeer(o);
  ASSERT_NE(nullptr, successor);
  // Its registration may sit at another address: read what it says.
  uint32_t st = adxl::FAILED;
  const auto t0 = Clock::now();
  while ((st = ReadFrom(*successor, local, 3, 5000, 2000)) != adxl::SUCCESS && MsSince(t0) < kPollMs) SleepMs(50);
  ASSERT_ST(adxl::SUCCESS, st) << "the dead channel was not replaced";
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 5000, 4600, 3));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(successor->id()));
}

// hixl::Hixl with a channel pool of two: max_channel 2, waterlines 0.9 / 0.4
// (two channels stay; the next connect closes every idle one).
class ChannelPoolTest : public ::testing::Test {
 protected:
  const std::string kPool =
      R"({"channel_pool.max_channel":"2","channel_pool.high_waterline":"0.9","channel_pool.low_waterline":"0.4"})";

  void SetUp() override {
    for (uint64_t seed : {5100, 5200, 5300}) {
      AdxlPeer::Options o;
      o.size = 1 << 20;
      o.seed = seed;
      o.engine_options.emplace_back("llmdd.Transport", "tcp");  // frozen peers must freeze transfers
      std::string err;
      auto p = AdxlPeer::Start(o, &err);
      ASSERT_NE(nullptr, p) << err;
      peers_.push_back(std::move(p));
    }
    ASSERT_ST(hixl::SUCCESS,
              hixl_.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_GLOBAL_RESOURCE_CONFIG, kPool},
                                                           {"llmdd.Transport", "tcp"}})));
    initialized_ = true;
  }
  void TearDown() override {
    if (initialized_) {
      Watchdog dog(30000, "Finalize()");
      hixl_.Finalize();
    }
    for (auto &p : peers_) {
      p->Continue();
      EXPECT_EQ("", p->Quit()) << "peer did not shut down cleanly";
    }
  }
  hixl::AscendString Id(int i) { return hixl::AscendString(peers_[i]->id().c_str()); }
  // TransferSync READ of 64 KiB at `off` of peer i's region into `into`; checks the bytes on SUCCESS.
  uint32_t Read(int i, GuardedBuffer &into, size_t off, int32_t timeout_ms) {
    std::memset(into.data(), 0, 65536);
    const uint32_t st = TimedCall("TransferSync(" + peers_[i]->id() + ")", timeout_ms + 30000, [&] {
                          return hixl_.TransferSync(Id(i), hixl::READ, {{into.addr(), peers_[i]->region(0).addr + off, 65536}},
                                                    timeout_ms);
                        }).status;
    if (st == hixl::SUCCESS) {
      EXPECT_EQ(SIZE_MAX, FindPatternMismatch(into.data(), 65536, peers_[i]->region(0).seed, off)) << "peer " << i;
    }
    return st;
  }

  hixl::Hixl hixl_;
  bool initialized_ = false;
  std::vector<std::unique_ptr<AdxlPeer>> peers_;
};

TEST_F(ChannelPoolTest, AThirdPeerClosesTheIdleChannelsAndTheirPeersComeBackWithTheirBytes) {
  GuardedBuffer local(65536);
  ASSERT_ST(hixl::SUCCESS, hixl_.Connect(Id(0), 10000));
  ASSERT_ST(hixl::SUCCESS, Read(0, local, 100, 10000));
  ASSERT_ST(hixl::SUCCESS, Read(1, local, 200, 10000));  // auto-connect: the pool turns it on
  ASSERT_ST(hixl::SUCCESS, Read(2, local, 300, 10000));  // two were open: both idle ones close
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.Disconnect(Id(0), 1000)) << "the channel Connect opened was not closed";
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.Disconnect(Id(1), 1000));
  EXPECT_ST(hixl::ALREADY_CONNECTED, hixl_.Connect(Id(2), 1000));
  // Their next transfers reconnect, and the bytes are theirs.
  ASSERT_ST(hixl::SUCCESS, Read(0, local, 400, 10000));
  ASSERT_ST(hixl::SUCCESS, Read(1, local, 500, 10000));
  ASSERT_ST(hixl::SUCCESS, Read(2, local, 600, 10000));
}

TEST_F(ChannelPoolTest, ChannelsWithTransfersInFlightStayAndAThirdConnectGetsResourceExhaustedAtItsTimeout) {
  GuardedBuffer local(65536), a_in(65536), b_in(65536);
  ASSERT_ST(hixl::SUCCESS, Read(0, local, 0, 10000));
  ASSERT_ST(hixl::SUCCESS, Read(1, local, 0, 10000));
  // Both peers freeze; a transfer to each is then in flight until its timeout.
  ASSERT_TRUE(peers_[0]->Stop());
  ASSERT_TRUE(peers_[1]->Stop());
  std::atomic<uint32_t> a_status{UINT32_MAX}, b_status{UINT32_MAX};
  std::thread a([&] {
    a_status = hixl_.TransferSync(Id(0), hixl::READ, {{a_in.addr(), peers_[0]->region(0).addr, 65536}}, 5000);
  });
  std::thread b([&] {
    b_status = hixl_.TransferSync(Id(1), hixl::READ, {{b_in.addr(), peers_[1]->region(0).addr, 65536}}, 5000);
  });
  SleepMs(300);  // both are waiting for their frozen peers
  Timed r = TimedCall("Connect(third)", 30000, [&] { return hixl_.Connect(Id(2), 600); });
  EXPECT_ST(hixl::RESOURCE_EXHAUSTED, r.status);
  EXPECT_EQ(203900u, r.status);
  EXPECT_GE(r.ms, 550) << "it did not wait for a slot";
  EXPECT_LT(r.ms, 600 + kReturnMarginMs);
  r = TimedCall("TransferSync(third)", 30000, [&] {
    return hixl_.TransferSync(Id(2), hixl::READ, {{local.addr(), peers_[2]->region(0).addr, 64}}, 500);
  });
  EXPECT_ST(hixl::RESOURCE_EXHAUSTED, r.status);
  EXPECT_GE(r.ms, 450);
  EXPECT_LT(r.ms, 500 + kReturnMarginMs);
  EXPECT_ST(hixl::ALREADY_CONNECTED, hixl_.Connect(Id(0), 1000)) << "a busy channel was closed";
  EXPECT_ST(hixl::ALREADY_CONNECTED, hixl_.Connect(Id(1), 1000)) << "a busy channel was closed";
  peers_[0]->Continue();
  peers_[1]->Continue();
  a.join();
  b.join();
  // Thawed in time or not, each transfer ended by its timeout.
  EXPECT_TRUE(a_status == hixl::SUCCESS || a_status == hixl::TIMEOUT) << StatusName(a_status);
  EXPECT_TRUE(b_status == hixl::SUCCESS || b_status == hixl::TIMEOUT) << StatusName(b_status);
  ASSERT_ST(hixl::SUCCESS, Read(2, local, 700, 10000));
}

TEST(AutoConnectOptions, BadValuesAreParamInvalid) {
  for (const char *config : {R"({"channel_pool.max_channel":"0"})", R"({"channel_pool.max_channel":"513"})",
                             R"({"channel_pool.high_waterline":"0.3"})",
                             R"({"channel_pool.high_waterline":"1.2","channel_pool.low_waterline":"0.1"})",
                             R"({"channel_pool.max_channel":"10","channel_pool.high_waterline":"0.3","channel_pool.low_waterline":"0.25"})",
                             R"({"channel_pool.max_channel":)"}) {
    SCOPED_TRACE(config);
    hixl::Hixl hixl;
    EXPECT_ST(hixl::PARAM_INVALID,
              hixl.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_GLOBAL_RESOURCE_CONFIG, config}})));
    adxl::AdxlEngine adxl;  // the same engine: the same key is read
    EXPECT_ST(adxl::PARAM_INVALID, adxl.Initialize("127.0.0.1", EngineOptions({{"GlobalResourceConfig", config}})));
  }
  adxl::AdxlEngine adxl;
  EXPECT_ST(adxl::PARAM_INVALID, adxl.Initialize("127.0.0.1", EngineOptions({{adxl::OPTION_AUTO_CONNECT, "yes"}})));
  hixl::Hixl hixl;
  EXPECT_ST(hixl::PARAM_INVALID, hixl.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_AUTO_CONNECT, "2"}})));
  EXPECT_ST(hixl::SUCCESS, hixl.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_AUTO_CONNECT, "1"}})));
  hixl.Finalize();
}

}  // namespace
}  // namespace itest
