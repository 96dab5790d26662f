// Multi-process tests of hixl::Hixl (include/hixl/hixl.h): this
// process runs a Hixl; its peers are adxl_peer processes (adxl::AdxlEngine,
// the same engine under its other name, so these also show the two names
// talk to each other). Every test checks exact statuses and the bytes.
//
//  - The whole life of a Hixl: every call before Initialize, Initialize's
//    checks (GlobalResourceConfig included), register, connect, TransferSync
//    both ways, TransferAsync with user_data, the single and the bulk
//    GetTransferStatus, a peer reading and writing our memory, disconnect,
//    deregister, finalize; SendNotify/GetNotifies through the same engine.
//  - The bulk GetTransferStatus: id order, max_query_count, skip_waiting
//    (requests to a stopped peer stay WAITING and are not released),
//    user_data; FAILED results after Disconnect.
//  - ConnectAsync/DisconnectAsync/GetAsyncConnectStatus: unknown remotes,
//    bad arguments, per-remote order (connect then disconnect ends
//    NOT_CONNECT), pending statuses behind a running task, different remotes
//    concurrently, CONNECT_FAILED for a refused and for a silent remote
//    within the timeout, the waiting cap (RESOURCE_EXHAUSTED) with a
//    one-thread pool, Finalize dropping waiting tasks.
#define ITEST_USE_GTEST
#include "process_util.h"

#include <set>

#include "hixl/hixl.h"
#include "llmdd/extensions.h"

namespace itest {
namespace {

constexpr int64_t kPollMs = 20000;  // CI machines are slow (2 cores)
using ACS = hixl::AsyncConnectStatus;

std::string Name(hixl::TransferStatus s) {
  switch (s) {
    case hixl::TransferStatus::WAITING: return "WAITING";
    case hixl::TransferStatus::COMPLETED: return "COMPLETED";
    case hixl::TransferStatus::TIMEOUT: return "TIMEOUT";
    case hixl::TransferStatus::FAILED: return "FAILED";
  }
  return "?";
}

std::string Name(ACS s) {
  switch (s) {
    case ACS::NOT_CONNECT: return "NOT_CONNECT";
    case ACS::CONNECT_PENDING: return "CONNECT_PENDING";
    case ACS::CONNECTING: return "CONNECTING";
    case ACS::CONNECTED: return "CONNECTED";
    case ACS::CONNECT_FAILED: return "CONNECT_FAILED";
    case ACS::DISCONNECT_PENDING: return "DISCONNECT_PENDING";
    case ACS::DISCONNECTING: return "DISCONNECTING";
  }
  return "?";
}

hixl::AscendString Str(const std::string &s) { return hixl::AscendString(s.c_str()); }

class HixlBase : public ::testing::Test {
 protected:
  hixl::Hixl hixl_;
  std::string id_;
  bool initialized_ = false;
  std::vector<std::unique_ptr<AdxlPeer>> peers_;
  std::string transport_ = DefaultTransport();

  AdxlPeer *StartPeer(AdxlPeer::Options opt) {
    opt.engine_options.emplace_back("llmdd.Transport", transport_);
    std::string err;
    auto p = AdxlPeer::Start(opt, &err);
    if (!p) {
      ADD_FAILURE() << "could not start adxl_peer (" << AdxlPeer::PeerPath() << "): " << err;
      return nullptr;
    }
    peers_.push_back(std::move(p));
    return peers_.back().get();
  }

  std::vector<std::pair<std::string, std::string>> WithTransport(std::vector<std::pair<std::string, std::string>> o) {
    o.emplace_back("llmdd.Transport", transport_);
    return o;
  }

  ::testing::AssertionResult InitClient(const std::vector<std::pair<std::string, std::string>> &opts = {}) {
    uint32_t st = hixl_.Initialize("127.0.0.1", EngineOptions(WithTransport(opts)));
    if (st != hixl::SUCCESS) return ::testing::AssertionFailure() << "Initialize returned " << StatusName(st);
    id_ = "127.0.0.1";
    initialized_ = true;
    return ::testing::AssertionSuccess();
  }

  ::testing::AssertionResult InitServer(const std::vector<std::pair<std::string, std::string>> &opts = {}) {
    uint32_t st = hixl::FAILED;
    for (int attempt = 0; attempt < 20 && st == hixl::FAILED; ++attempt) {
      const std::string id = "127.0.0.1:" + std::to_string(PickFreePort());
      st = hixl_.Initialize(Str(id), EngineOptions(WithTransport(opts)));
      if (st == hixl::SUCCESS) {
        id_ = id;
        initialized_ = true;
        return ::testing::AssertionSuccess();
      }
    }
    return ::testing::AssertionFailure() << "Initialize(server) returned " << StatusName(st);
  }

  // Polls the async connection status of `remote` until it is `want` (or
  // the time is up); the status seen last and when.
  struct Seen {
    ACS status = ACS::NOT_CONNECT;
    int64_t ms = 0;
    std::set<std::string> all;  // every status seen while polling
  };
  Seen WaitFor(const std::string &remote, ACS want, int64_t timeout_ms = kPollMs) {
    Watchdog dog(timeout_ms + 30000, "polling GetAsyncConnectStatus(" + remote + ")");
    Seen seen;
    const auto t0 = Clock::now();
    for (;;) {
      uint32_t st = hixl_.GetAsyncConnectStatus(Str(remote), seen.status);
      EXPECT_ST(hixl::SUCCESS, st);
      seen.all.insert(Name(seen.status));
      if (st != hixl::SUCCESS || seen.status == want || MsSince(t0) > timeout_ms) break;
      SleepMs(2);
    }
    seen.ms = MsSince(t0);
    return seen;
  }
  ACS StatusOf(const std::string &remote) {
    ACS s = ACS::CONNECT_FAILED;
    EXPECT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(Str(remote), s));
    return s;
  }

  uint32_t Async(const std::string &remote, hixl::TransferOp op, const std::vector<hixl::TransferOpDesc> &descs,
                 hixl::TransferReq *req, const void *user_data = nullptr) {
    hixl::TransferArgs args;
    args.user_data = user_data;
    *req = reinterpret_cast<hixl::TransferReq>(0x1);  // overwritten either way
    Timed r = TimedCall("TransferAsync(" + remote + ")", 10000,
                        [&] { return hixl_.TransferAsync(Str(remote), op, descs, args, *req); });
    EXPECT_LT(r.ms, 1000) << "TransferAsync must return at once";
    EXPECT_EQ(*req != nullptr, r.status == hixl::SUCCESS);
    return r.status;
  }

  // Bulk queries until every one of `reqs` was reported terminal; the results by req.
  std::map<hixl::TransferReq, hixl::TransferResult> CollectAll(const std::set<hixl::TransferReq> &reqs) {
    Watchdog dog(kPollMs + 30000, "bulk GetTransferStatus");
    std::map<hixl::TransferReq, hixl::TransferResult> done;
    const auto t0 = Clock::now();
    hixl::GetTransferStatusArgs args;
    args.skip_waiting = true;
    while (done.size() < reqs.size() && MsSince(t0) < kPollMs) {
      std::vector<hixl::TransferResult> results;
      EXPECT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(args, results));
      for (const auto &r : results) {
        EXPECT_NE("WAITING", Name(r.status)) << "skip_waiting";
        EXPECT_EQ(1u, reqs.count(r.req)) << "a request nobody submitted: " << r.req;
        EXPECT_TRUE(done.emplace(r.req, r).second) << "reported terminal twice: " << r.req;
      }
      SleepMs(1);
    }
    return done;
  }

  void TearDown() override {
    if (initialized_) {
      Watchdog dog(30000, "Finalize()");
      hixl_.Finalize();
      initialized_ = false;
    }
    for (auto &p : peers_) {
      if (p->faulted()) {
        p->Continue();
        continue;
      }
      EXPECT_EQ("", p->Quit()) << "peer did not shut down cleanly";
    }
    peers_.clear();
  }
};

class HixlTest : public HixlBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { transport_ = GetParam(); }
};

std::string TransportName(const ::testing::TestParamInfo<std::string> &info) { return info.param; }

TEST_P(HixlTest, EveryCallOfALifeWithExactStatuses) {
  AdxlPeer::Options o;
  o.regions = 2;
  o.size = 1 << 20;
  o.seed = 3100;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion src = peer->region(0), dst = peer->region(1);
  GuardedBuffer local(1 << 20);
  FillPattern(local.data(), local.size(), 3199, 0);
  hixl::MemDesc desc;
  desc.addr = local.addr();
  desc.len = local.size();
  hixl::MemHandle handle = nullptr;
  hixl::TransferReq req = nullptr;
  hixl::TransferStatus status = hixl::TransferStatus::WAITING;
  ACS acs = ACS::CONNECTED;
  std::map<hixl::AscendString, ACS> all;
  std::vector<hixl::TransferResult> results;
  hixl::GetTransferStatusArgs bulk;

  // Before Initialize: FAILED everywhere (the bulk query finds nothing).
  EXPECT_ST(hixl::FAILED, hixl_.RegisterMem(desc, hixl::MEM_HOST, handle));
  EXPECT_ST(hixl::FAILED, hixl_.Connect(peer->engine()));
  EXPECT_ST(hixl::FAILED, hixl_.ConnectAsync(peer->engine()));
  EXPECT_ST(hixl::FAILED, hixl_.DisconnectAsync(peer->engine()));
  EXPECT_ST(hixl::FAILED, hixl_.GetAsyncConnectStatus(peer->engine(), acs));
  EXPECT_EQ("NOT_CONNECT", Name(acs));
  all[Str("x")] = ACS::CONNECTED;
  EXPECT_ST(hixl::FAILED, hixl_.GetAsyncConnectStatus(all));
  EXPECT_TRUE(all.empty());
  EXPECT_ST(hixl::FAILED, Async(peer->id(), hixl::READ, {{local.addr(), src.addr, 8}}, &req));
  EXPECT_ST(hixl::FAILED, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), src.addr, 8}}));
  EXPECT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(bulk, results));
  EXPECT_TRUE(results.empty());

  // Initialize: bad id, bad GlobalResourceConfig -> PARAM_INVALID; then HIXL's
  // own option keys (and the connect pool's) are accepted.
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.Initialize("ad.0.0.1:26000", {}));
  EXPECT_ST(hixl::PARAM_INVALID,
            hixl_.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_GLOBAL_RESOURCE_CONFIG, "{\"connect_pool"}})));
  EXPECT_ST(hixl::PARAM_INVALID,
            hixl_.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_GLOBAL_RESOURCE_CONFIG,
                                                          "{\"connect_pool.thread_num\":\"0\"}"}})));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.Initialize("127.0.0.1", EngineOptions({{hixl::OPTION_BUFFER_POOL, "4"}})));
  ASSERT_TRUE(InitServer({{hixl::OPTION_BUFFER_POOL, "4:8"},
                          {hixl::OPTION_RDMA_TRAFFIC_CLASS, "132"},
                          {hixl::OPTION_RDMA_SERVICE_LEVEL, "4"},
                          {hixl::OPTION_GLOBAL_RESOURCE_CONFIG,
                           "{\"connect_pool.thread_num\":\"2\",\"connect_pool.task_queue_capacity\":\"256\"}"}}));
  EXPECT_ST(hixl::SUCCESS, hixl_.Initialize("not an id", {}));  // initialized: ignored

  ASSERT_ST(hixl::SUCCESS, hixl_.RegisterMem(desc, hixl::MEM_HOST, handle));
  EXPECT_NE(nullptr, handle);
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.DeregisterMem(nullptr));
  EXPECT_ST(hixl::SUCCESS, hixl_.DeregisterMem(reinterpret_cast<hixl::MemHandle>(uintptr_t{0xdead0000})));

  // Connect's statuses.
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.Connect(peer->engine(), 0));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.Connect(Str(id_)));
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), src.addr, 8}}));
  ASSERT_ST(hixl::SUCCESS, hixl_.Connect(peer->engine(), 10000));
  EXPECT_ST(hixl::ALREADY_CONNECTED, hixl_.Connect(peer->engine(), 10000));

  // TransferSync both ways, with the default timeout (1000 ms) and a longer one.
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ,
                                              {{local.addr(), src.addr + 5, 4096}, {local.addr() + 8192, src.addr + 70000, 100}},
                                              10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, src.seed, 5));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 8192, 100, src.seed, 70000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 4096, 4096, 3199, 4096)) << "READ wrote between its ranges";
  ASSERT_ST(hixl::SUCCESS,
            hixl_.TransferSync(peer->engine(), hixl::WRITE, {{local.addr() + 65536, dst.addr + 3, 300000}}, 10000));
  uint64_t crc = 0;
  ASSERT_TRUE(peer->Crc(1, 3, 300000, &crc)) << peer->last_error();
  EXPECT_EQ(Hash64(local.data() + 65536, 300000), crc);
  EXPECT_EQ("OK", peer->Check(1, 300003, 64, dst.seed)) << "WRITE wrote past its range";
  EXPECT_EQ("OK", peer->Check(1, 0, 3, dst.seed)) << "WRITE wrote before its range";
  EXPECT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ, {}));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), src.addr, 8}}, 0));
  EXPECT_ST(hixl::PARAM_INVALID,
            hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), src.addr + src.len, 8}}, 10000));

  // TransferAsync: the single query, then the bulk one with user_data.
  int tag_a = 0, tag_b = 0;
  ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::READ, {{local.addr() + 16384, src.addr + 100, 20000}}, &req, &tag_a));
  for (int i = 0; i < 20000; ++i) {
    ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(req, status));
    if (status != hixl::TransferStatus::WAITING) break;
    SleepMs(1);
  }
  ASSERT_EQ("COMPLETED", Name(status));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 16384, 20000, src.seed, 100));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.GetTransferStatus(req, status));  // released
  EXPECT_EQ("FAILED", Name(status));
  EXPECT_ST(hixl::FAILED, hixl_.GetTransferStatus(nullptr, status));
  hixl::TransferReq w = nullptr, bad = nullptr;
  ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::WRITE, {{local.addr(), dst.addr + 500000, 4096}}, &w, &tag_b));
  ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::READ, {{local.addr(), src.addr + src.len - 4, 8}}, &bad, nullptr));
  auto done = CollectAll({w, bad});
  ASSERT_EQ(2u, done.size());
  EXPECT_EQ("COMPLETED", Name(done[w].status));
  EXPECT_EQ(&tag_b, done[w].user_data);
  EXPECT_EQ("FAILED", Name(done[bad].status)) << "the peer refuses a range it did not register";
  EXPECT_EQ(nullptr, done[bad].user_data);
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.GetTransferStatus(w, status));  // the bulk query released them
  ASSERT_TRUE(peer->Crc(1, 500000, 4096, &crc));
  EXPECT_EQ(Hash64(local.data(), 4096), crc);
  EXPECT_ST(hixl::NOT_CONNECTED, Async("127.0.0.1:1", hixl::READ, {{local.addr(), src.addr, 8}}, &req));

  // The peer reads and writes the memory this Hixl registered.
  ASSERT_ST(hixl::SUCCESS, peer->Connect(id_, 10000));
  ASSERT_ST(hixl::SUCCESS, peer->Transfer(id_, "WRITE", 0, 1000, local.addr() + 200000, 50000, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 200000, 50000, src.seed, 1000));
  FillPattern(local.data() + 300000, 70000, 3198, 0);
  ASSERT_ST(hixl::SUCCESS, peer->Transfer(id_, "READ", 1, 700000, local.addr() + 300000, 70000, 10000));
  ASSERT_TRUE(peer->Crc(1, 700000, 70000, &crc));
  EXPECT_EQ(Hash64(local.data() + 300000, 70000), crc);
  EXPECT_ST(hixl::SUCCESS, peer->Disconnect(id_, 10000));

  // Notifications go through the same engine as ADXL's (adxl_notify_test covers them whole);
  // capabilities as ADXL's.
  hixl::NotifyDesc notify;
  notify.name = "kv";
  notify.notify_msg = "landed";
  EXPECT_ST(hixl::SUCCESS, hixl_.SendNotify(peer->engine(), notify));
  notify.name = std::string(1025, 'n').c_str();
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.SendNotify(peer->engine(), notify));
  std::vector<hixl::NotifyDesc> notifies;
  EXPECT_ST(hixl::SUCCESS, hixl_.GetNotifies(notifies));
  EXPECT_TRUE(notifies.empty()) << "nobody sent this engine a notify";
  int32_t value = -1;
  EXPECT_ST(hixl::SUCCESS, hixl::Hixl::GetCapability(hixl::CLIENT_SERVER_COMM, value));
  EXPECT_EQ(hixl::FEATURE_SUPPORTED, value);
  value = -1;
  EXPECT_ST(hixl::SUCCESS, hixl::Hixl::GetCapability(hixl::AUTO_CONNECT, value));
  EXPECT_EQ(hixl::FEATURE_SUPPORTED, value);
  EXPECT_ST(hixl::PARAM_INVALID, hixl::Hixl::GetCapability(static_cast<hixl::FeatureType>(-1), value));

  // Disconnect: afterwards NOT_CONNECTED; deregister; finalize.
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.Disconnect(peer->engine(), 0));
  ASSERT_ST(hixl::SUCCESS, hixl_.Disconnect(peer->engine(), 10000));
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.Disconnect(peer->engine(), 10000));
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), src.addr, 8}}));
  EXPECT_ST(hixl::SUCCESS, hixl_.DeregisterMem(handle));
  hixl_.Finalize();
  initialized_ = false;
  hixl_.Finalize();  // idempotent
  EXPECT_ST(hixl::FAILED, hixl_.Connect(peer->engine()));
  EXPECT_EQ("OK", peer->CheckUntouched(0)) << "READs modified their source";
}

TEST_P(HixlTest, BulkStatusInIdOrderWithMaxCountSkipWaitingAndUserData) {
  AdxlPeer::Options o;
  o.size = 8u << 20;
  o.seed = 3200;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient({{"llmdd.TcpConnections", "1"}}));
  ASSERT_ST(hixl::SUCCESS, hixl_.Connect(peer->engine(), 10000));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(8u << 20);

  // Six READs, all done before the first query: the bulk query reports them
  // oldest first, at most max_query_count at a time.
  std::vector<hixl::TransferReq> reqs;
  int tags[6] = {};
  for (int k = 0; k < 6; ++k) {
    hixl::TransferReq r = nullptr;
    ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::READ, {{local.addr() + k * 4096u, rr.addr + k * 8192u, 4096}},
                                   &r, &tags[k]));
    reqs.push_back(r);
  }
  hixl::GetTransferStatusArgs none;
  none.max_query_count = 0;  // reports nothing, releases nothing
  std::vector<hixl::TransferResult> results(3);
  EXPECT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(none, results));
  EXPECT_TRUE(results.empty());
  // Two at a time, WAITING ones included (and kept): each answer starts with
  // the oldest request still held and is in id order.
  hixl::GetTransferStatusArgs two;
  two.max_query_count = 2;
  std::set<hixl::TransferReq> ended;
  {
    Watchdog dog(kPollMs + 30000, "bulk queries of six requests");
    const auto t0 = Clock::now();
    while (ended.size() < reqs.size() && MsSince(t0) < kPollMs) {
      ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(two, results));
      ASSERT_GE(results.size(), 1u);
      ASSERT_LE(results.size(), 2u);
      hixl::TransferReq oldest = nullptr;
      for (hixl::TransferReq r : reqs)
        if (ended.count(r) == 0) {
          oldest = r;
          break;
        }
      EXPECT_EQ(oldest, results[0].req) << "oldest first";
      if (results.size() == 2) {
        EXPECT_LT(reinterpret_cast<uintptr_t>(results[0].req), reinterpret_cast<uintptr_t>(results[1].req));
      }
      for (const auto &r : results) {
        const size_t k = std::find(reqs.begin(), reqs.end(), r.req) - reqs.begin();
        ASSERT_LT(k, reqs.size());
        EXPECT_EQ(&tags[k], r.user_data);
        if (r.status == hixl::TransferStatus::WAITING) continue;
        EXPECT_EQ("COMPLETED", Name(r.status));
        EXPECT_TRUE(ended.insert(r.req).second) << "request " << k << " reported terminal twice";
      }
    }
  }
  ASSERT_EQ(reqs.size(), ended.size());
  for (int k = 0; k < 6; ++k)
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + k * 4096u, 4096, rr.seed, k * 8192u)) << "request " << k;
  ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(hixl::GetTransferStatusArgs(), results));
  EXPECT_TRUE(results.empty()) << "all six were released";

  // A stopped peer: its requests stay WAITING. Without skip_waiting they are
  // reported WAITING and kept; with it they are left out.
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 256u << 10}}, 10000));
  ASSERT_TRUE(peer->StopPastReadLease());
  hixl::TransferReq slow1 = nullptr, slow2 = nullptr;
  int t1 = 0, t2 = 0;
  ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::READ, {{local.addr(), rr.addr, 4u << 20}}, &slow1, &t1));
  ASSERT_ST(hixl::SUCCESS, Async(peer->id(), hixl::WRITE, {{local.addr() + (4u << 20), rr.addr + (4u << 20), 4u << 20}},
                                 &slow2, &t2));
  SleepMs(200);
  ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(hixl::GetTransferStatusArgs(), results));
  ASSERT_EQ(2u, results.size());
  EXPECT_EQ(slow1, results[0].req);
  EXPECT_EQ(&t1, results[0].user_data);
  EXPECT_EQ("WAITING", Name(results[0].status));
  EXPECT_EQ(slow2, results[1].req);
  EXPECT_EQ(&t2, results[1].user_data);
  EXPECT_EQ("WAITING", Name(results[1].status));
  hixl::GetTransferStatusArgs skip;
  skip.skip_waiting = true;
  ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(skip, results));
  EXPECT_TRUE(results.empty());
  // Disconnect ends them: FAILED, once.
  Timed d = TimedCall("Disconnect", 30000, [&] { return hixl_.Disconnect(peer->engine(), 500); });
  EXPECT_ST(hixl::SUCCESS, d.status);
  auto done = CollectAll({slow1, slow2});
  ASSERT_EQ(2u, done.size());
  EXPECT_EQ("FAILED", Name(done[slow1].status));
  EXPECT_EQ(&t1, done[slow1].user_data);
  EXPECT_EQ("FAILED", Name(done[slow2].status));
  ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(hixl::GetTransferStatusArgs(), results));
  EXPECT_TRUE(results.empty());
  peer->Continue();
  EXPECT_TRUE(peer->Ping()) << peer->Health();
}

// The per-request deadline through hixl::TransferArgs (llmdd/extensions.h):
// requests to a stopped peer end TIMEOUT at it, with their user_data, in the
// bulk query and in the single one (which returns TIMEOUT too); a request
// without one stays WAITING.
TEST_P(HixlTest, ADeadlineInTransferArgsEndsARequestTimeoutInBothQueries) {
  AdxlPeer::Options o;
  o.size = 4u << 20;
  o.seed = 3500;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  ASSERT_ST(hixl::SUCCESS, hixl_.Connect(peer->engine(), 10000));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(4u << 20);
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 4096}}, 10000));
  ASSERT_TRUE(peer->StopPastReadLease());
  int tags[3];
  hixl::TransferReq reqs[3] = {};
  for (int k = 0; k < 3; ++k) {
    hixl::TransferArgs args;
    args.user_data = &tags[k];
    if (k < 2) llmdd_ext::SetTransferTimeout(args, 400);
    ASSERT_ST(hixl::SUCCESS, hixl_.TransferAsync(peer->engine(), k == 1 ? hixl::WRITE : hixl::READ,
                                                 {{local.addr() + k * (1u << 20), rr.addr + k * (1u << 20), 1u << 20}},
                                                 args, reqs[k]));
    uint32_t ms = 0;
    EXPECT_EQ(k < 2, llmdd_ext::GetTransferTimeout(args, &ms));
    EXPECT_EQ(&tags[k], args.user_data) << "the deadline does not touch user_data";
  }
  SleepMs(1000);  // nobody polls meanwhile
  hixl::TransferStatus status = hixl::TransferStatus::WAITING;
  EXPECT_ST(hixl::TIMEOUT, hixl_.GetTransferStatus(reqs[0], status));
  EXPECT_EQ("TIMEOUT", Name(status));
  std::vector<hixl::TransferResult> results;
  ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(hixl::GetTransferStatusArgs(), results));
  ASSERT_EQ(2u, results.size());
  EXPECT_EQ(reqs[1], results[0].req);
  EXPECT_EQ(&tags[1], results[0].user_data);
  EXPECT_EQ("TIMEOUT", Name(results[0].status));
  EXPECT_EQ(reqs[2], results[1].req);
  EXPECT_EQ("WAITING", Name(results[1].status));  // no deadline of its own
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.GetTransferStatus(reqs[1], status));  // released by the bulk query
  peer->Continue();
  auto done = CollectAll({reqs[2]});
  ASSERT_EQ(1u, done.size());
  EXPECT_EQ("COMPLETED", Name(done[reqs[2]].status));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + (2u << 20), 1u << 20, rr.seed, 2u << 20));
  EXPECT_ST(hixl::SUCCESS, hixl_.Disconnect(peer->engine(), 5000));
}

// The bulk query is paced as the single one is: a loop of bulk queries that
// find nothing ended sleeps rather than spins (its thread's CPU time over
// 400 ms of polling a request to a stopped peer), and sees the TIMEOUT.
TEST_P(HixlTest, ATightBulkPollingLoopSleepsInsteadOfSpinning) {
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 3600;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  ASSERT_ST(hixl::SUCCESS, hixl_.Connect(peer->engine(), 10000));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(1u << 20);
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 4096}}, 10000));
  ASSERT_TRUE(peer->StopPastReadLease());
  hixl::TransferArgs args;
  llmdd_ext::SetTransferTimeout(args, 400);
  hixl::TransferReq req = nullptr;
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferAsync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 1u << 20}}, args, req));
  const int64_t cpu0 = ThreadCpuNs();
  const auto t0 = Clock::now();
  std::vector<hixl::TransferResult> results;
  uint64_t queries = 0;
  {
    Watchdog dog(30000, "bulk-polling GetTransferStatus without a pause");
    for (;;) {
      ASSERT_ST(hixl::SUCCESS, hixl_.GetTransferStatus(hixl::GetTransferStatusArgs(), results));
      ++queries;
      if (!results.empty() && results[0].status != hixl::TransferStatus::WAITING) break;
    }
  }
  const int64_t wall_ms = MsSince(t0);
  const double cpu_ms = static_cast<double>(ThreadCpuNs() - cpu0) / 1e6;
  peer->Continue();
  std::printf("bulk polling: %.1f ms of CPU in %lld ms, %llu queries\n", cpu_ms, static_cast<long long>(wall_ms),
              static_cast<unsigned long long>(queries));
  ASSERT_EQ(1u, results.size());
  EXPECT_EQ(req, results[0].req);
  EXPECT_EQ("TIMEOUT", Name(results[0].status));
  EXPECT_GE(wall_ms, 300);
  EXPECT_LT(cpu_ms, 0.5 * static_cast<double>(wall_ms)) << "the bulk polling thread spun";
}

INSTANTIATE_TEST_SUITE_P(Transports, HixlTest, ::testing::ValuesIn(AllTransports()), TransportName);

class HixlAsyncConnectTest : public HixlBase {};

TEST_F(HixlAsyncConnectTest, UnknownRemotesBadArgumentsAndAConnectDisconnectRoundTrip) {
  AdxlPeer::Options o;
  o.seed = 3300;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitServer());
  GuardedBuffer local(4096);

  // Unknown remotes: SUCCESS with NOT_CONNECT; the map lists nothing.
  EXPECT_EQ("NOT_CONNECT", Name(StatusOf(peer->id())));
  EXPECT_EQ("NOT_CONNECT", Name(StatusOf("not even an id")));
  std::map<hixl::AscendString, ACS> all;
  all[Str("stale")] = ACS::CONNECTED;
  EXPECT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(all));
  EXPECT_TRUE(all.empty());

  // Checked before queueing, as Connect/Disconnect check them.
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.ConnectAsync(peer->engine(), 0));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.ConnectAsync(peer->engine(), -5));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.ConnectAsync("ad.0.0.1:26000"));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.ConnectAsync("127.0.0.1"));  // no port: cannot be listening
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.ConnectAsync(Str(id_)));     // itself
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.DisconnectAsync(peer->engine(), 0));
  EXPECT_ST(hixl::PARAM_INVALID, hixl_.DisconnectAsync("ad.0.0.1:26000"));
  EXPECT_EQ("NOT_CONNECT", Name(StatusOf(peer->id())));
  EXPECT_EQ("NOT_CONNECT", Name(StatusOf("127.0.0.1")));

  // Connect: CONNECTED, listed, and transfers run.
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(peer->engine(), 10000));
  Seen s = WaitFor(peer->id(), ACS::CONNECTED);
  ASSERT_EQ("CONNECTED", Name(s.status)) << "after " << s.ms << " ms";
  ASSERT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(all));
  ASSERT_EQ(1u, all.size());
  EXPECT_EQ("CONNECTED", Name(all[peer->engine()]));
  const RemoteRegion rr = peer->region(0);
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr + 9, 4096}}, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, rr.seed, 9));
  // The channel is the engine's: a sync Connect sees it.
  EXPECT_ST(hixl::ALREADY_CONNECTED, hixl_.Connect(peer->engine(), 10000));
  // A second ConnectAsync finds it connected: CONNECTED again.
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(peer->engine(), 10000));
  s = WaitFor(peer->id(), ACS::CONNECTED);
  EXPECT_EQ("CONNECTED", Name(s.status));

  // Disconnect: NOT_CONNECT, unlisted, transfers refused.
  ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(peer->engine(), 10000));
  s = WaitFor(peer->id(), ACS::NOT_CONNECT);
  ASSERT_EQ("NOT_CONNECT", Name(s.status));
  ASSERT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(all));
  EXPECT_TRUE(all.empty());
  EXPECT_ST(hixl::NOT_CONNECTED, hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 8}}, 10000));
  // A disconnect of a remote never connected: accepted, ends NOT_CONNECT.
  ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync("127.0.0.1:1", 1000));
  EXPECT_EQ("NOT_CONNECT", Name(WaitFor("127.0.0.1:1", ACS::NOT_CONNECT).status));
}

// Per remote, tasks run in submission order: connect then disconnect ends
// NOT_CONNECT (the other order would end CONNECTED), and connect,
// disconnect, connect ends CONNECTED, every round.
TEST_F(HixlAsyncConnectTest, ConnectThenDisconnectOfOneRemoteRunInThatOrder) {
  AdxlPeer::Options o;
  o.seed = 3400;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(4096);
  for (int round = 0; round < 5; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    // From the moment the disconnect is submitted, the status is the
    // disconnect's (pending, running, done), never the connect's.
    ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(peer->engine(), 10000));
    ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(peer->engine(), 10000));
    Seen s = WaitFor(peer->id(), ACS::NOT_CONNECT);
    ASSERT_EQ("NOT_CONNECT", Name(s.status));
    for (const std::string &seen : s.all)
      EXPECT_TRUE(seen == "DISCONNECT_PENDING" || seen == "DISCONNECTING" || seen == "NOT_CONNECT") << seen;
    EXPECT_ST(hixl::NOT_CONNECTED,
              hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr, 8}}, 10000));

    ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(peer->engine(), 10000));
    ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(peer->engine(), 10000));
    ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(peer->engine(), 10000));
    s = WaitFor(peer->id(), ACS::CONNECTED);
    ASSERT_EQ("CONNECTED", Name(s.status));
    for (const std::string &seen : s.all)
      EXPECT_TRUE(seen == "CONNECT_PENDING" || seen == "CONNECTING" || seen == "CONNECTED") << seen;
    FillPattern(local.data(), 4096, 1, 0);
    ASSERT_ST(hixl::SUCCESS,
              hixl_.TransferSync(peer->engine(), hixl::READ, {{local.addr(), rr.addr + round, 4096}}, 10000));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, rr.seed, round));
    ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(peer->engine(), 10000));
    ASSERT_EQ("NOT_CONNECT", Name(WaitFor(peer->id(), ACS::NOT_CONNECT).status));
  }
}

// A silent (stopped) remote holds its connect task for its timeout: what is
// submitted for it meanwhile waits (pending statuses), while another remote
// connects at once. Resumed, the silent one ends CONNECTED.
TEST_F(HixlAsyncConnectTest, PendingBehindARunningTaskWhileOtherRemotesConnect) {
  AdxlPeer::Options o;
  o.seed = 3500;
  AdxlPeer *silent = StartPeer(o);
  ASSERT_NE(nullptr, silent);
  o.seed = 3600;
  AdxlPeer *healthy = StartPeer(o);
  ASSERT_NE(nullptr, healthy);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(silent->Stop());

  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), 4000));
  Seen s = WaitFor(silent->id(), ACS::CONNECTING, 5000);
  ASSERT_EQ("CONNECTING", Name(s.status));
  ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(silent->engine(), 1000));
  EXPECT_EQ("DISCONNECT_PENDING", Name(StatusOf(silent->id())));
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), 10000));
  EXPECT_EQ("CONNECT_PENDING", Name(StatusOf(silent->id())));

  const auto t0 = Clock::now();
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(healthy->engine(), 10000));
  s = WaitFor(healthy->id(), ACS::CONNECTED);
  ASSERT_EQ("CONNECTED", Name(s.status));
  EXPECT_LT(MsSince(t0), 3000) << "the healthy remote waited for the silent one";
  EXPECT_EQ("CONNECT_PENDING", Name(StatusOf(silent->id()))) << "the silent remote's first task still runs";
  std::map<hixl::AscendString, ACS> all;
  ASSERT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(all));
  ASSERT_EQ(2u, all.size());
  EXPECT_EQ("CONNECTED", Name(all[healthy->engine()]));
  EXPECT_EQ("CONNECT_PENDING", Name(all[silent->engine()]));
  GuardedBuffer local(4096);
  const RemoteRegion hr = healthy->region(0);
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(healthy->engine(), hixl::READ, {{local.addr(), hr.addr, 4096}}, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, hr.seed, 0));

  silent->Continue();
  s = WaitFor(silent->id(), ACS::CONNECTED, 30000);
  ASSERT_EQ("CONNECTED", Name(s.status)) << "after " << s.ms << " ms";
  const RemoteRegion sr = silent->region(0);
  ASSERT_ST(hixl::SUCCESS, hixl_.TransferSync(silent->engine(), hixl::READ, {{local.addr(), sr.addr, 4096}}, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, sr.seed, 0));
  ASSERT_TRUE(silent->Ping()) << silent->Health();
}

// CONNECT_FAILED within the timeout: at once for a port nobody listens on,
// at the timeout for a remote that accepts but never answers.
TEST_F(HixlAsyncConnectTest, AnUnreachableRemoteIsConnectFailedWithinTheTimeout) {
  AdxlPeer::Options o;
  o.seed = 3700;
  AdxlPeer *silent = StartPeer(o);
  ASSERT_NE(nullptr, silent);
  ASSERT_TRUE(InitClient());
  const std::string refused = "127.0.0.1:" + std::to_string(PickFreePort());
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(Str(refused), 5000));
  Seen s = WaitFor(refused, ACS::CONNECT_FAILED, 10000);
  EXPECT_EQ("CONNECT_FAILED", Name(s.status));
  EXPECT_LT(s.ms, 5000);

  ASSERT_TRUE(silent->Stop());
  const int32_t kTimeout = 1000;
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), kTimeout));
  s = WaitFor(silent->id(), ACS::CONNECT_FAILED, 20000);
  EXPECT_EQ("CONNECT_FAILED", Name(s.status));
  EXPECT_GE(s.ms, kTimeout - 100);
  EXPECT_LT(s.ms, kTimeout + 2000) << "ended well after its timeout";
  std::map<hixl::AscendString, ACS> all;
  ASSERT_ST(hixl::SUCCESS, hixl_.GetAsyncConnectStatus(all));
  EXPECT_EQ(2u, all.size());
  EXPECT_EQ("CONNECT_FAILED", Name(all[Str(refused)]));
  GuardedBuffer local(8);
  EXPECT_ST(hixl::NOT_CONNECTED,
            hixl_.TransferSync(silent->engine(), hixl::READ, {{local.addr(), silent->region(0).addr, 8}}, 1000));
  // A failed remote can be connected again once it answers.
  silent->Continue();
  ASSERT_TRUE(silent->Ping()) << silent->Health();
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), 10000));
  EXPECT_EQ("CONNECTED", Name(WaitFor(silent->id(), ACS::CONNECTED).status));
}

// A one-thread pool with room for three waiting tasks: a fourth is refused
// with RESOURCE_EXHAUSTED; a healthy remote waits behind a silent one (one
// thread); Finalize drops what waits and returns once the running task's
// timeout ends it.
TEST_F(HixlAsyncConnectTest, TheWaitingCapIsResourceExhaustedAndFinalizeDropsWaitingTasks) {
  AdxlPeer::Options o;
  o.seed = 3800;
  AdxlPeer *silent = StartPeer(o);
  ASSERT_NE(nullptr, silent);
  o.seed = 3900;
  AdxlPeer *healthy = StartPeer(o);
  ASSERT_NE(nullptr, healthy);
  ASSERT_TRUE(InitClient({{hixl::OPTION_GLOBAL_RESOURCE_CONFIG,
                           R"({"connect_pool.thread_num": "1", "connect_pool.task_queue_capacity": 3})"}}));
  ASSERT_TRUE(silent->Stop());
  const std::string refused = "127.0.0.1:" + std::to_string(PickFreePort());

  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), 2000));
  ASSERT_EQ("CONNECTING", Name(WaitFor(silent->id(), ACS::CONNECTING, 5000).status));
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(healthy->engine(), 10000));
  ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(silent->engine(), 1000));
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(Str(refused), 1000));
  EXPECT_EQ(hixl::RESOURCE_EXHAUSTED, hixl_.ConnectAsync(healthy->engine(), 10000));
  EXPECT_EQ(hixl::RESOURCE_EXHAUSTED, hixl_.DisconnectAsync("127.0.0.1:2", 1000));
  EXPECT_EQ("NOT_CONNECT", Name(StatusOf("127.0.0.1:2"))) << "a refused task leaves nothing behind";
  SleepMs(300);
  EXPECT_EQ("CONNECT_PENDING", Name(StatusOf(healthy->id()))) << "one thread: it waits behind the silent remote";

  // The silent remote's connect times out; then the rest run, in order.
  Seen s = WaitFor(healthy->id(), ACS::CONNECTED, 20000);
  ASSERT_EQ("CONNECTED", Name(s.status));
  EXPECT_EQ("NOT_CONNECT", Name(WaitFor(silent->id(), ACS::NOT_CONNECT).status));
  EXPECT_EQ("CONNECT_FAILED", Name(WaitFor(refused, ACS::CONNECT_FAILED).status));
  // Room again.
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(silent->engine(), 2000));
  ASSERT_EQ("CONNECTING", Name(WaitFor(silent->id(), ACS::CONNECTING, 5000).status));
  ASSERT_ST(hixl::SUCCESS, hixl_.DisconnectAsync(healthy->engine(), 10000));
  EXPECT_EQ("DISCONNECT_PENDING", Name(StatusOf(healthy->id())));
  {
    Watchdog dog(30000, "Finalize with connection tasks running and waiting");
    const auto t0 = Clock::now();
    hixl_.Finalize();
    EXPECT_LT(MsSince(t0), 2000 + 3000) << "bounded by the running task's timeout";
  }
  initialized_ = false;
  ACS acs = ACS::CONNECTED;
  EXPECT_ST(hixl::FAILED, hixl_.GetAsyncConnectStatus(healthy->engine(), acs));
  EXPECT_EQ("NOT_CONNECT", Name(acs));
  EXPECT_ST(hixl::FAILED, hixl_.ConnectAsync(healthy->engine(), 1000));
  silent->Continue();
  EXPECT_TRUE(silent->Ping()) << silent->Health();
  // Initialized again, the pool works again.
  ASSERT_TRUE(InitClient());
  ASSERT_ST(hixl::SUCCESS, hixl_.ConnectAsync(healthy->engine(), 10000));
  EXPECT_EQ("CONNECTED", Name(WaitFor(healthy->id(), ACS::CONNECTED).status));
}

}  // namespace
}  // namespace itest
