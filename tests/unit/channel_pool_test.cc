// Auto-connect and the channel pool (engine/channel_pool.h; docs/API.md,
// "Auto-connect and the channel pool").
//
//  - ChannelPool's bookkeeping alone: the counts the waterlines give, which
//    channels a connect closes (dead idle ones, then the least recently used
//    idle ones down to the low waterline, then one to make room at the cap),
//    never a busy one or a connect in progress, a full pool refuses, a
//    released pin wakes a waiting connect and a wait without one is bounded.
//  - The options: AutoConnect and GlobalResourceConfig's channel_pool.*
//    members, each bad value refused with a message naming it and its range.
//  - Whole engines in this process (their transfers take the fake transport,
//    through links a test can stall): TransferSync, TransferAsync and
//    SendNotify to a remote without Connect open the channel and move the
//    bytes, and without the option are NOT_CONNECTED; concurrent transfers
//    to one remote open one channel, and share a failed connect's status
//    within their timeout; a bad remote is PARAM_INVALID; a pool of two
//    closes idle channels for a third peer and a closed peer's next transfer
//    reconnects; a channel with a transfer or an asynchronous request in
//    flight is never closed, and a third connect waits for a slot, then gets
//    RESOURCE_EXHAUSTED at its timeout, or the slot once a transfer ends; a
//    dead peer's channel is replaced on the next transfer.
#include "engine/channel_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/engine_config.h"
#include "loopback_util.h"
#include "transport/fake/fake_transport.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

using Clock = std::chrono::steady_clock;
using Take = ChannelPool::Take;

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

template <typename Pred>
bool WaitFor(Pred pred, int ms) {
  const auto end = Clock::now() + std::chrono::milliseconds(ms);
  while (!pred()) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

ChannelPoolConfig PoolOf(uint32_t max_channel, double high = 0, double low = 0) {
  ChannelPoolConfig config;
  config.enabled = true;
  config.max_channel = max_channel;
  config.waterlines = high > 0;
  config.high_waterline = high;
  config.low_waterline = low;
  return config;
}

// ---------------------------------------------------------------------------
// The bookkeeping alone (the caller's lock is this test's only thread).
// ---------------------------------------------------------------------------

class Book : public ::testing::Test {
 protected:
  ChannelPool pool_;
  std::map<std::string, bool> dead_;
  std::function<bool(const std::string &)> dead_fn_ = [this](const std::string &k) { return dead_[k]; };

  // Takes a slot and opens it at once; the keys it closed.
  std::vector<std::string> Open(const std::string &key) {
    std::vector<std::string> evicted;
    EXPECT_EQ(Take::kTaken, pool_.TryTake(key, dead_fn_, &evicted)) << key;
    pool_.Opened(key);
    return evicted;
  }
  void Use(const std::string &key) { pool_.PinUse(key).Reset(); }  // a transfer that came and went
};

TEST_F(Book, TheWaterlinesGiveCountsOfChannels) {
  pool_.Configure(PoolOf(10, 0.3, 0.1));
  EXPECT_EQ(3u, pool_.HighCount());  // 0.3 * 10 is 3.0000000000000004 in doubles
  EXPECT_EQ(1u, pool_.LowCount());
  pool_.Configure(PoolOf(2, 0.9, 0.4));
  EXPECT_EQ(2u, pool_.HighCount());
  EXPECT_EQ(0u, pool_.LowCount());
  pool_.Configure(PoolOf(512, 0.8, 0.5));
  EXPECT_EQ(410u, pool_.HighCount());
  EXPECT_EQ(256u, pool_.LowCount());
}

TEST_F(Book, ReachingTheHighWaterlineClosesTheLeastRecentlyUsedIdleChannelsDownToTheLow) {
  pool_.Configure(PoolOf(10, 0.3, 0.1));  // three stay, then trimmed to one
  EXPECT_TRUE(Open("a").empty());
  EXPECT_TRUE(Open("b").empty());
  EXPECT_TRUE(Open("c").empty());
  Use("b");
  Use("a");  // least recently used first: c, b, a
  EXPECT_EQ((std::vector<std::string>{"c", "b"}), Open("d"));
  EXPECT_TRUE(pool_.Holds("a") && pool_.Holds("d"));
  EXPECT_EQ(2u, pool_.Count());
}

TEST_F(Book, BusyChannelsAndConnectsInProgressAreNeverClosedAndAFullPoolRefuses) {
  pool_.Configure(PoolOf(2, 0.9, 0.4));
  std::vector<std::string> evicted;
  ASSERT_EQ(Take::kTaken, pool_.TryTake("a", dead_fn_, &evicted));  // a connect in progress
  EXPECT_TRUE(Open("b").empty());
  ChannelPool::Pin b = pool_.PinUse("b");
  ASSERT_TRUE(b);
  EXPECT_EQ(Take::kFull, pool_.TryTake("c", dead_fn_, &evicted));
  EXPECT_TRUE(evicted.empty());
  pool_.Opened("a");
  ChannelPool::Pin a = pool_.PinUse("a");
  ChannelPool::Pin a2 = pool_.PinUse("a");  // two transfers on it
  EXPECT_EQ(Take::kFull, pool_.TryTake("c", dead_fn_, &evicted));
  a.Reset();
  EXPECT_EQ(Take::kFull, pool_.TryTake("c", dead_fn_, &evicted)) << "a still has a transfer";
  a2.Reset();
  EXPECT_EQ(Take::kTaken, pool_.TryTake("c", dead_fn_, &evicted));
  EXPECT_EQ((std::vector<std::string>{"a"}), evicted);
  EXPECT_TRUE(pool_.Holds("b")) << "busy";
}

TEST_F(Book, WithoutWaterlinesAnIdleChannelIsClosedOnlyToMakeRoom) {
  pool_.Configure(PoolOf(3));
  EXPECT_TRUE(Open("a").empty());
  EXPECT_TRUE(Open("b").empty());
  EXPECT_TRUE(Open("c").empty());
  Use("a");
  EXPECT_EQ((std::vector<std::string>{"b"}), Open("d"));
  EXPECT_EQ(3u, pool_.Count());
}

TEST_F(Book, DeadIdleChannelsGoFirstWhateverTheCounts) {
  pool_.Configure(PoolOf(10));
  Open("a");
  Open("b");
  dead_["a"] = true;
  ChannelPool::Pin a = pool_.PinUse("a");  // a transfer still failing on it
  EXPECT_TRUE(Open("c").empty());
  a.Reset();
  dead_["b"] = true;
  EXPECT_EQ((std::vector<std::string>{"b", "a"}), Open("d"));  // b was used longer ago
}

TEST_F(Book, ReleaseFreesTheSlotAndADisabledPoolPinsNothing) {
  pool_.Configure(PoolOf(1));
  Open("a");
  std::vector<std::string> evicted;
  ChannelPool::Pin a = pool_.PinUse("a");
  EXPECT_EQ(Take::kFull, pool_.TryTake("b", dead_fn_, &evicted));
  pool_.Release("a");  // Disconnect
  EXPECT_EQ(Take::kTaken, pool_.TryTake("b", dead_fn_, &evicted));
  a.Reset();  // a pin outliving its slot is harmless
  ChannelPool disabled;
  disabled.Configure(ChannelPoolConfig{});
  EXPECT_FALSE(disabled.Enabled());
  EXPECT_FALSE(disabled.PinUse("a"));
}

TEST_F(Book, AReleasedPinWakesAWaitingConnectAndAWaitWithoutOneEndsAtItsDeadline) {
  pool_.Configure(PoolOf(1));
  Open("a");
  ChannelPool::Pin a = pool_.PinUse("a");
  pool_.BeginWait();
  uint64_t generation = pool_.Generation();
  std::vector<std::string> evicted;
  ASSERT_EQ(Take::kFull, pool_.TryTake("b", dead_fn_, &evicted));
  auto t0 = Clock::now();
  pool_.Wait(generation, Deadline::AfterMs(150));
  EXPECT_GE(MsSince(t0), 140);
  EXPECT_LT(MsSince(t0), 2000);
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a.Reset();
  });
  t0 = Clock::now();
  pool_.Wait(generation, Deadline::AfterMs(10000));
  EXPECT_LT(MsSince(t0), 5000) << "the release did not wake the waiter";
  release.join();
  pool_.EndWait();
  EXPECT_EQ(Take::kTaken, pool_.TryTake("b", dead_fn_, &evicted));
}

// ---------------------------------------------------------------------------
// The options.
// ---------------------------------------------------------------------------

adxl::Status Parse(const std::map<std::string, std::string> &options, EngineConfig *config, std::string *error) {
  *config = EngineConfig{};
  error->clear();
  return ParseEngineOptions(options, config, error);
}

TEST(PoolOptions, AutoConnectAndAChannelPoolEachTurnOnBoth) {
  EngineConfig config;
  std::string error;
  ASSERT_EQ(adxl::SUCCESS, Parse({}, &config, &error));
  EXPECT_FALSE(config.auto_connect);
  EXPECT_FALSE(config.channel_pool.enabled);
  ASSERT_EQ(adxl::SUCCESS, Parse({{"AutoConnect", "0"}}, &config, &error));
  EXPECT_FALSE(config.auto_connect);
  ASSERT_EQ(adxl::SUCCESS, Parse({{"AutoConnect", "1"}}, &config, &error));
  EXPECT_TRUE(config.auto_connect);
  EXPECT_TRUE(config.channel_pool.enabled);
  EXPECT_EQ(512u, config.channel_pool.max_channel);
  EXPECT_FALSE(config.channel_pool.waterlines);
  ASSERT_EQ(adxl::SUCCESS,
            Parse({{"GlobalResourceConfig",
                    R"({"channel_pool.max_channel":"10","channel_pool.high_waterline":"0.3",
                        "channel_pool.low_waterline":0.1, "connect_pool.thread_num": "4"})"}},
                  &config, &error))
      << error;
  EXPECT_TRUE(config.auto_connect);
  EXPECT_TRUE(config.channel_pool.enabled);
  EXPECT_TRUE(config.channel_pool.waterlines);
  EXPECT_EQ(10u, config.channel_pool.max_channel);
  EXPECT_DOUBLE_EQ(0.3, config.channel_pool.high_waterline);
  EXPECT_DOUBLE_EQ(0.1, config.channel_pool.low_waterline);
  EXPECT_EQ(4u, config.connect_pool.threads);
  ASSERT_EQ(adxl::SUCCESS, Parse({{"GlobalResourceConfig", R"({"channel_pool.max_channel":7})"}}, &config, &error));
  EXPECT_TRUE(config.auto_connect);
  EXPECT_EQ(7u, config.channel_pool.max_channel);
  EXPECT_FALSE(config.channel_pool.waterlines);
  // Members of other pools leave the channel pool off.
  ASSERT_EQ(adxl::SUCCESS, Parse({{"GlobalResourceConfig", R"({"connect_pool.thread_num":"3"})"}}, &config, &error));
  EXPECT_FALSE(config.auto_connect);
  EXPECT_FALSE(config.channel_pool.enabled);
}

TEST(PoolOptions, EveryBadValueIsParamInvalidNamingTheMemberAndItsRange) {
  struct Case {
    const char *key, *value, *says;
  } cases[] = {
      {"AutoConnect", "2", "must be 0 or 1"},
      {"AutoConnect", "true", "must be 0 or 1"},
      {"GlobalResourceConfig", R"({"channel_pool.max_channel":"0"})", "channel_pool.max_channel='0' must be an integer in [1, 512]"},
      {"GlobalResourceConfig", R"({"channel_pool.max_channel":513})", "channel_pool.max_channel='513' must be an integer in [1, 512]"},
      {"GlobalResourceConfig", R"({"channel_pool.max_channel":"ten"})", "channel_pool.max_channel='ten'"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"0.3"})",
       "channel_pool.high_waterline is given without channel_pool.low_waterline"},
      {"GlobalResourceConfig", R"({"channel_pool.low_waterline":"0.1"})",
       "channel_pool.low_waterline is given without channel_pool.high_waterline"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"1","channel_pool.low_waterline":"0.1"})",
       "channel_pool.high_waterline='1' must be a number in (0, 1)"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"0.5","channel_pool.low_waterline":"0"})",
       "channel_pool.low_waterline='0' must be a number in (0, 1)"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"-0.5","channel_pool.low_waterline":"0.1"})",
       "channel_pool.high_waterline='-0.5' must be a number in (0, 1)"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"0,5","channel_pool.low_waterline":"0.1"})",
       "channel_pool.high_waterline='0,5' must be a number in (0, 1)"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"nan","channel_pool.low_waterline":"0.1"})",
       "must be a number in (0, 1)"},
      // Less than one channel apart: 10 * (0.3 - 0.25) = 0.5; low above high.
      {"GlobalResourceConfig",
       R"({"channel_pool.max_channel":"10","channel_pool.high_waterline":"0.3","channel_pool.low_waterline":"0.25"})",
       "must be at least one channel apart"},
      {"GlobalResourceConfig", R"({"channel_pool.high_waterline":"0.1","channel_pool.low_waterline":"0.3"})",
       "must be at least one channel apart"},
      {"GlobalResourceConfig", R"({"channel_pool.max_channel":"1"})" "x", "is not a JSON object"},
  };
  for (const Case &c : cases) {
    EngineConfig config;
    std::string error;
    EXPECT_EQ(adxl::PARAM_INVALID, Parse({{c.key, c.value}}, &config, &error)) << c.key << "=" << c.value;
    EXPECT_NE(std::string::npos, error.find(c.says)) << c.value << ": " << error;
  }
  // At the edges: 512 channels; exactly one channel apart.
  EngineConfig config;
  std::string error;
  EXPECT_EQ(adxl::SUCCESS, Parse({{"GlobalResourceConfig", R"({"channel_pool.max_channel":"512"})"}}, &config, &error));
  EXPECT_EQ(adxl::SUCCESS,
            Parse({{"GlobalResourceConfig",
                    R"({"channel_pool.max_channel":"2","channel_pool.high_waterline":"0.9","channel_pool.low_waterline":"0.4"})"}},
                  &config, &error))
      << error;
  EXPECT_EQ(adxl::SUCCESS,
            Parse({{"GlobalResourceConfig",
                    R"({"channel_pool.max_channel":"10","channel_pool.high_waterline":"0.3","channel_pool.low_waterline":"0.2"})"}},
                  &config, &error))
      << error;
}

TEST(PoolOptions, InitializeRefusesABadPoolAndStartsNothing) {
  Engine engine;
  EXPECT_EQ(adxl::PARAM_INVALID,
            engine.Initialize("127.0.0.1", {{"GlobalResourceConfig", R"({"channel_pool.max_channel":"0"})"}}));
  EXPECT_FALSE(engine.Initialized());
  EXPECT_EQ(adxl::PARAM_INVALID, engine.Initialize("127.0.0.1", {{"AutoConnect", "on"}}));
  EXPECT_FALSE(engine.Initialized());
}

// ---------------------------------------------------------------------------
// Whole engines.
// ---------------------------------------------------------------------------

// The fake transport with every link to a peer made to misbehave on demand
// (FaultyLink, by peer name) and every connect counted and, when asked, slowed.
class PeerFaultsTransport : public Transport {
 public:
  explicit PeerFaultsTransport(std::shared_ptr<FakeTransport> inner) : inner_(std::move(inner)) {}
  const TransportCaps &Caps() const override { return inner_->Caps(); }
  std::string LocalMetadata() const override { return inner_->LocalMetadata(); }
  adxl::Status RegisterMemory(const TransportRegion &region, std::string *key, std::string *error) override {
    return inner_->RegisterMemory(region, key, error);
  }
  void DeregisterMemory(const TransportRegion &region) override { inner_->DeregisterMemory(region); }
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override {
    int delay_ms = 0;
    FaultyLink::Plan plan;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++connects_[peer.peer_name];
      delay_ms = connect_delay_ms_;
      plan = plans_[peer.peer_name];
    }
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    auto link = inner_->Connect(peer, deadline, error);
    if (!link) return nullptr;
    auto faulty = std::make_shared<FaultyLink>(link, plan);
    std::lock_guard<std::mutex> lock(mutex_);
    links_[peer.peer_name] = faulty;
    return faulty;
  }
  int Connects(const std::string &peer) {
    std::lock_guard<std::mutex> lock(mutex_);
    return connects_[peer];
  }
  void SetConnectDelay(int ms) {
    std::lock_guard<std::mutex> lock(mutex_);
    connect_delay_ms_ = ms;
  }
  // For the links to `peer`, the current one and those made later.
  void SetPlan(const std::string &peer, const FaultyLink::Plan &plan) {
    std::lock_guard<std::mutex> lock(mutex_);
    plans_[peer] = plan;
    auto it = links_.find(peer);
    if (it != links_.end()) it->second->SetPlan(plan);
  }
  int InFlight(const std::string &peer) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = links_.find(peer);
    return it == links_.end() ? 0 : it->second->InFlight();
  }

 private:
  std::shared_ptr<FakeTransport> inner_;
  std::mutex mutex_;
  std::map<std::string, int> connects_;
  std::map<std::string, FaultyLink::Plan> plans_;
  std::map<std::string, std::shared_ptr<FaultyLink>> links_;
  int connect_delay_ms_ = 0;
};

constexpr size_t kBytes = 256 * 1024;

class Engines : public ::testing::Test {
 protected:
  struct Server {
    std::vector<char> memory;  // before the engine: it outlives it
    std::string id;
    Engine engine;
  };

  // `n` listening engines, server i's memory filled with pattern i.
  void StartServers(int n) {
    for (int i = 0; i < n; ++i) {
      auto server = std::make_unique<Server>();
      server->memory.resize(kBytes);
      for (size_t k = 0; k < kBytes; ++k) server->memory[k] = static_cast<char>(k * 7 + i * 31 + k / 4093);
      server->engine.AddTransport(FakeTransport::Create(&fabric_, "server-" + std::to_string(i)));
      server->id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
      ASSERT_EQ(adxl::SUCCESS, server->engine.Initialize(server->id, {}));
      uint64_t handle = 0;
      ASSERT_EQ(adxl::SUCCESS, server->engine.RegisterMem(reinterpret_cast<uintptr_t>(server->memory.data()),
                                                          kBytes, adxl::MEM_HOST, &handle));
      servers_.push_back(std::move(server));
    }
  }
  ::testing::AssertionResult StartClient(const std::map<std::string, std::string> &options) {
    transport_ = std::make_shared<PeerFaultsTransport>(FakeTransport::Create(&fabric_, "client"));
    client_.AddTransport(transport_);
    local_.assign(kBytes, 0);
    adxl::Status status = client_.Initialize("127.0.0.1", options);
    if (status != adxl::SUCCESS) return ::testing::AssertionFailure() << "Initialize: " << status;
    uint64_t handle = 0;
    status = client_.RegisterMem(reinterpret_cast<uintptr_t>(local_.data()), kBytes, adxl::MEM_HOST, &handle);
    if (status != adxl::SUCCESS) return ::testing::AssertionFailure() << "RegisterMem: " << status;
    return ::testing::AssertionSuccess();
  }
  const std::string &Id(int i) const { return servers_[i]->id; }
  adxl::TransferOpDesc Desc(int i, size_t offset, size_t len) {
    return {reinterpret_cast<uintptr_t>(local_.data()) + offset,
            reinterpret_cast<uintptr_t>(servers_[i]->memory.data()) + offset, len};
  }
  adxl::Status Read(int i, size_t offset, size_t len, int32_t timeout_ms = 5000) {
    const adxl::TransferOpDesc desc = Desc(i, offset, len);
    return client_.TransferSync(Id(i), adxl::READ, &desc, 1, timeout_ms);
  }
  bool Arrived(int i, size_t offset, size_t len) const {
    return std::memcmp(local_.data() + offset, servers_[i]->memory.data() + offset, len) == 0;
  }
  // Reads all of server i's memory after clearing ours: the bytes are server i's.
  ::testing::AssertionResult ReadsRightBytes(int i) {
    std::memset(local_.data(), 0, kBytes);
    const adxl::Status status = Read(i, 0, kBytes);
    if (status != adxl::SUCCESS) return ::testing::AssertionFailure() << "TransferSync(" << Id(i) << "): " << status;
    if (!Arrived(i, 0, kBytes)) return ::testing::AssertionFailure() << "wrong bytes from " << Id(i);
    return ::testing::AssertionSuccess();
  }
  // A slot-holding, stalled TransferSync to server i on its own thread; ends by its timeout.
  std::thread StalledRead(int i, int32_t timeout_ms, std::atomic<adxl::Status> *status) {
    FaultyLink::Plan stall;
    stall.stall = true;
    transport_->SetPlan(Id(i), stall);
    return std::thread([this, i, timeout_ms, status] { status->store(Read(i, 0, 4096, timeout_ms)); });
  }
  void TearDown() override {
    client_.Finalize();
    for (auto &server : servers_) server->engine.Finalize();
  }

  FakeFabric fabric_;  // first: the engines' transports leave it when they go
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<char> local_;
  std::shared_ptr<PeerFaultsTransport> transport_;
  Engine client_;
};

TEST_F(Engines, WithoutTheOptionATransferToARemoteWithoutConnectIsNotConnectedWithItItIsNot) {
  StartServers(1);
  ASSERT_TRUE(StartClient({}));
  EXPECT_EQ(adxl::NOT_CONNECTED, Read(0, 0, 64));
  uint64_t id = 1;
  const adxl::TransferOpDesc desc = Desc(0, 0, 64);
  EXPECT_EQ(adxl::NOT_CONNECTED, client_.TransferAsync(Id(0), adxl::READ, &desc, 1, nullptr, 0, &id));
  EXPECT_EQ(0u, id);
  EXPECT_EQ(adxl::NOT_CONNECTED, client_.SendNotify(Id(0), wire::Notify{"n", "m"}, 1000));
  EXPECT_FALSE(client_.HasChannel(Id(0)));
  EXPECT_EQ(0, transport_->Connects(Id(0)));
  // The same engine with the option: the same call reaches it.
  client_.Finalize();
  ASSERT_EQ(adxl::SUCCESS, client_.Initialize("127.0.0.1", {{"AutoConnect", "1"}}));
  uint64_t handle = 0;
  ASSERT_EQ(adxl::SUCCESS, client_.RegisterMem(reinterpret_cast<uintptr_t>(local_.data()), kBytes, adxl::MEM_HOST, &handle));
  ASSERT_TRUE(ReadsRightBytes(0));
  EXPECT_EQ(1, transport_->Connects(Id(0)));
}

TEST_F(Engines, AutoConnectTransfersAndNotifiesWithoutConnectAndMovesTheBytes) {
  StartServers(2);
  ASSERT_TRUE(StartClient({{"AutoConnect", "1"}}));
  // TransferSync READ, then WRITE back into server 0 at another offset.
  ASSERT_EQ(adxl::SUCCESS, Read(0, 1000, 5000));
  EXPECT_TRUE(Arrived(0, 1000, 5000));
  EXPECT_TRUE(client_.HasChannel(Id(0)));
  std::memset(local_.data() + 100000, 0x5a, 777);
  adxl::TransferOpDesc write = Desc(0, 100000, 777);
  ASSERT_EQ(adxl::SUCCESS, client_.TransferSync(Id(0), adxl::WRITE, &write, 1, 5000));
  EXPECT_EQ(0x5a, servers_[0]->memory[100000]);
  EXPECT_EQ(0x5a, servers_[0]->memory[100000 + 776]);
  EXPECT_EQ(1, transport_->Connects(Id(0))) << "the second transfer used the channel the first opened";
  // TransferAsync to server 1, which has no channel yet.
  const adxl::TransferOpDesc desc = Desc(1, 4096, 65536);
  uint64_t id = 0;
  ASSERT_EQ(adxl::SUCCESS, client_.TransferAsync(Id(1), adxl::READ, &desc, 1, nullptr, 0, &id));
  EXPECT_NE(0u, id);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  ASSERT_TRUE(WaitFor([&] {
    return client_.GetTransferStatus(id, &status) != adxl::SUCCESS || status != adxl::TransferStatus::WAITING;
  }, 10000));
  EXPECT_EQ(adxl::TransferStatus::COMPLETED, status);
  EXPECT_TRUE(Arrived(1, 4096, 65536));
  // SendNotify after a Disconnect: connected again on demand.
  ASSERT_EQ(adxl::SUCCESS, client_.Disconnect(Id(1), 1000));
  EXPECT_EQ(adxl::SUCCESS, client_.SendNotify(Id(1), wire::Notify{"kv", "landed"}, 3000));
  std::vector<wire::Notify> got;
  ASSERT_EQ(adxl::SUCCESS, servers_[1]->engine.GetNotifies(&got));
  ASSERT_EQ(1u, got.size());
  EXPECT_EQ("landed", got[0].message);
  EXPECT_EQ(2, transport_->Connects(Id(1)));
  // An explicit Connect to a remote auto-connect opened: ALREADY_CONNECTED, as always.
  EXPECT_EQ(adxl::ALREADY_CONNECTED, client_.Connect(Id(0), 1000));
}

TEST_F(Engines, ARemoteConnectWouldRefuseIsParamInvalidAndAFailedConnectReturnsItsStatusAndItsSlot) {
  StartServers(1);
  ASSERT_TRUE(StartClient({{"AutoConnect", "1"}}));
  const adxl::TransferOpDesc desc = Desc(0, 0, 8);
  // What Connect refuses: a malformed id, no port (cannot listen), this engine itself.
  for (const char *bad : {"ad.0.0.1:26000", "127.0.0.1", "127.0.0.1:x"})
    EXPECT_EQ(adxl::PARAM_INVALID, client_.TransferSync(bad, adxl::READ, &desc, 1, 1000)) << bad;
  // Nobody listens there: FAILED at once, as Connect's.
  const std::string nobody = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  auto t0 = Clock::now();
  EXPECT_EQ(adxl::FAILED, client_.TransferSync(nobody, adxl::READ, &desc, 1, 3000));
  EXPECT_LT(MsSince(t0), 2500);
  uint64_t id = 1;
  EXPECT_EQ(adxl::FAILED, client_.TransferAsync(nobody, adxl::READ, &desc, 1, nullptr, 0, &id));
  EXPECT_EQ(0u, id);
  EXPECT_FALSE(client_.HasChannel(nobody));
  EXPECT_EQ(0u, client_.ChannelSlotsTaken()) << "a failed connect gives its slot back";
}

TEST_F(Engines, ConcurrentTransfersToOneRemoteOpenOneChannel) {
  StartServers(1);
  ASSERT_TRUE(StartClient({{"AutoConnect", "1"}}));
  transport_->SetConnectDelay(300);  // every thread arrives while the first connects
  constexpr int kThreads = 8;
  constexpr size_t kSlice = kBytes / kThreads;
  std::vector<std::thread> threads;
  std::vector<adxl::Status> statuses(kThreads, adxl::FAILED);
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] { statuses[t] = Read(0, t * kSlice, kSlice, 10000); });
  for (auto &thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(adxl::SUCCESS, statuses[t]) << "thread " << t;
  EXPECT_TRUE(Arrived(0, 0, kBytes));
  EXPECT_EQ(1, transport_->Connects(Id(0)));
  EXPECT_EQ(1u, client_.ChannelSlotsTaken());
}

// A listener that accepts and never answers: every connect to it times out.
TEST_F(Engines, ConcurrentTransfersToASilentRemoteShareOneConnectAndItsTimeout) {
  StartServers(1);
  ASSERT_TRUE(StartClient({{"AutoConnect", "1"}}));
  TcpListener silent;
  std::string error;
  ASSERT_TRUE(silent.Listen(llmdd::testing::Loopback(0), &error)) << error;
  const std::string remote = "127.0.0.1:" + std::to_string(silent.Port());
  std::atomic<bool> stop{false};
  std::atomic<int> accepted{0};
  std::thread acceptor([&] {
    std::vector<std::unique_ptr<TcpStream>> held;  // open and silent until the end
    while (!stop.load()) {
      std::unique_ptr<TcpStream> conn = silent.Accept(Deadline::AfterMs(20));
      if (conn) {
        accepted.fetch_add(1);
        held.push_back(std::move(conn));
      }
    }
  });
  constexpr int kThreads = 6;
  constexpr int32_t kTimeoutMs = 1500;  // long enough for every thread to arrive while the first connects
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  std::vector<adxl::Status> statuses(kThreads, adxl::SUCCESS);
  std::vector<int64_t> ms(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      const adxl::TransferOpDesc desc = Desc(0, 0, 8);
      const auto t0 = Clock::now();
      statuses[t] = client_.TransferSync(remote, adxl::READ, &desc, 1, kTimeoutMs);
      ms[t] = MsSince(t0);
    });
  }
  for (auto &thread : threads) thread.join();
  stop.store(true);
  acceptor.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(adxl::TIMEOUT, statuses[t]) << "thread " << t;
    EXPECT_LT(ms[t], kTimeoutMs + 1500) << "thread " << t << " waited past its timeout";
  }
  EXPECT_EQ(1, accepted.load()) << "the transfers did not share one connect";
  EXPECT_EQ(0u, client_.ChannelSlotsTaken());
}

TEST_F(Engines, APoolOfTwoClosesIdleChannelsForAThirdPeerAndAClosedPeerComesBackOnItsNextTransfer) {
  StartServers(3);
  ASSERT_TRUE(StartClient({{"GlobalResourceConfig",
                            R"({"channel_pool.max_channel":"2","channel_pool.high_waterline":"0.9",
                                "channel_pool.low_waterline":"0.4"})"}}));
  // Two channels stay (the high waterline, 2); the third connect trims to the low one (0).
  ASSERT_EQ(adxl::SUCCESS, client_.Connect(Id(0), 3000));
  ASSERT_TRUE(ReadsRightBytes(1));  // auto-connect: a pool turns it on
  EXPECT_TRUE(client_.HasChannel(Id(0)) && client_.HasChannel(Id(1)));
  ASSERT_TRUE(ReadsRightBytes(2));
  EXPECT_FALSE(client_.HasChannel(Id(0))) << "idle: closed for the third peer";
  EXPECT_FALSE(client_.HasChannel(Id(1))) << "idle: closed for the third peer";
  EXPECT_TRUE(client_.HasChannel(Id(2)));
  EXPECT_EQ(1u, client_.ChannelSlotsTaken());
  // The closed peers' next transfers reconnect and move their bytes.
  ASSERT_TRUE(ReadsRightBytes(0));
  EXPECT_EQ(2, transport_->Connects(Id(0)));
  EXPECT_EQ(2u, client_.ChannelSlotsTaken());
  ASSERT_TRUE(ReadsRightBytes(1));
  EXPECT_EQ(2, transport_->Connects(Id(1)));
  EXPECT_TRUE(client_.HasChannel(Id(1)));
  EXPECT_LE(client_.ChannelSlotsTaken(), 2u);
  // An explicit channel the pool closed is gone: Disconnect says so.
  EXPECT_EQ(adxl::NOT_CONNECTED, client_.Disconnect(Id(2), 1000));
}

TEST_F(Engines, BusyChannelsAreNeverClosedAndAThirdConnectWaitsThenResourceExhaustedOrTheFreedSlot) {
  StartServers(3);
  ASSERT_TRUE(StartClient({{"GlobalResourceConfig",
                            R"({"channel_pool.max_channel":"2","channel_pool.high_waterline":"0.9",
                                "channel_pool.low_waterline":"0.4"})"},
                           {"llmdd.AsyncTransferMaxMs", "2500"}}));
  ASSERT_TRUE(ReadsRightBytes(0));
  ASSERT_TRUE(ReadsRightBytes(1));
  // Server 0's channel: an asynchronous request in flight; server 1's: a TransferSync.
  FaultyLink::Plan stall;
  stall.stall = true;
  transport_->SetPlan(Id(0), stall);
  const adxl::TransferOpDesc desc = Desc(0, 0, 4096);
  uint64_t id = 0;
  ASSERT_EQ(adxl::SUCCESS, client_.TransferAsync(Id(0), adxl::READ, &desc, 1, nullptr, 0, &id));
  std::atomic<adxl::Status> sync_status{adxl::SUCCESS};
  std::thread sync = StalledRead(1, 6000, &sync_status);
  ASSERT_TRUE(WaitFor([&] { return transport_->InFlight(Id(0)) == 1 && transport_->InFlight(Id(1)) == 1; }, 5000));

  // Every slot busy: a Connect and a transfer wait their timeouts, then RESOURCE_EXHAUSTED.
  auto t0 = Clock::now();
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, client_.Connect(Id(2), 400));
  int64_t waited = MsSince(t0);
  EXPECT_GE(waited, 380) << "it did not wait for a slot";
  EXPECT_LT(waited, 400 + 1500);
  t0 = Clock::now();
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, Read(2, 0, 64, 300));
  waited = MsSince(t0);
  EXPECT_GE(waited, 280);
  EXPECT_LT(waited, 300 + 1500);
  EXPECT_TRUE(client_.HasChannel(Id(0)) && client_.HasChannel(Id(1))) << "a busy channel was closed";
  EXPECT_FALSE(client_.HasChannel(Id(2)));

  // A connect that waits longer gets the slot of the first channel to go
  // idle: the async request ends by llmdd.AsyncTransferMaxMs (2.5 s), the
  // stalled TransferSync by its timeout (6 s).
  EXPECT_EQ(adxl::SUCCESS, client_.Connect(Id(2), 20000));
  EXPECT_EQ(1, transport_->InFlight(Id(1))) << "the TransferSync ended first; the test proves nothing";
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(adxl::FAILED, client_.GetTransferStatus(id, &status));  // ran past llmdd.AsyncTransferMaxMs
  EXPECT_FALSE(client_.HasChannel(Id(0))) << "the channel that went idle first made room";
  EXPECT_TRUE(client_.HasChannel(Id(1))) << "still busy";
  sync.join();
  EXPECT_EQ(adxl::TIMEOUT, sync_status.load());
  transport_->SetPlan(Id(0), FaultyLink::Plan{});
  transport_->SetPlan(Id(1), FaultyLink::Plan{});
  ASSERT_TRUE(ReadsRightBytes(2));
  ASSERT_TRUE(ReadsRightBytes(0));
}

TEST_F(Engines, ADeadPeersChannelIsReplacedOnTheNextTransfer) {
  StartServers(1);
  ASSERT_TRUE(StartClient({{"AutoConnect", "1"}}));
  ASSERT_TRUE(ReadsRightBytes(0));
  // The server goes away and comes back on the same address.
  servers_[0]->engine.Finalize();
  ASSERT_TRUE(WaitFor([&] { return Read(0, 0, 8, 500) != adxl::SUCCESS; }, 5000));
  bool started = false;
  for (int attempt = 0; attempt < 50 && !started; ++attempt) {
    started = servers_[0]->engine.Initialize(Id(0), {}) == adxl::SUCCESS;
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(started) << "the server could not listen on its address again";
  uint64_t handle = 0;
  ASSERT_EQ(adxl::SUCCESS, servers_[0]->engine.RegisterMem(reinterpret_cast<uintptr_t>(servers_[0]->memory.data()),
                                                          kBytes, adxl::MEM_HOST, &handle));
  ASSERT_TRUE(WaitFor([&] { return Read(0, 0, 8, 1000) == adxl::SUCCESS; }, 10000))
      << "the dead channel was not replaced";
  ASSERT_TRUE(ReadsRightBytes(0));
  EXPECT_EQ(1u, client_.ChannelSlotsTaken());
}

}  // namespace
}  // namespace llmdd
