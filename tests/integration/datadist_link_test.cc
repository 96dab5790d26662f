// Multi-process LLM-DataDist link tests: link/unlink cycles, several clusters in
// one LinkLlmClusters call, and faults of a peer process (SIGKILL, SIGSTOP,
// restart with the same cluster id). Every blocking call runs under a watchdog and
// must return within its own timeout plus kMarginMs (1.5 s); transfers to a frozen
// peer must return LLM_TIMEOUT (spec 2.3 / 2.7: timeout -> LLM_TIMEOUT), and a
// killed peer must turn into an error, not a hang.
#include <atomic>
#include <thread>

#include "datadist_process_util.h"

namespace ddtest {
namespace {

constexpr uint64_t kSelfId = 1;
constexpr uint64_t kRows = 8;
constexpr uint64_t kStride = 64;

using Pairs = std::vector<std::pair<uint32_t, uint32_t>>;

Pairs All(uint32_t n) {
  Pairs p;
  for (uint32_t i = 0; i < n; ++i) p.emplace_back(i, i);
  return p;
}

// Every test runs over both engine transports: the default (the same-host one-copy
// path between processes of this host) and plain TCP.
class LinkTest : public DdFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { transport_ = GetParam(); }
  SelfOptions Opts(bool listen, int32_t wait_time_ms, LlmRole role) const {
    SelfOptions o;
    o.listen = listen;
    o.wait_time_ms = wait_time_ms;
    o.role = role;
    o.transport = transport_;
    return o;
  }
  // This process: cluster 1, a 4-tensor cache (id 1) holding the sentinel pattern 9000.
  void StartSelf(const SelfOptions &opt) {
    self_ = std::make_unique<SelfDataDist>(kSelfId, opt);
    ASSERT_TRUE(self_->Init());
    local_ = std::make_unique<LocalKv>(4, kRows, kStride);
    local_->Fill(9000);
    ASSERT_LLM(LLM_SUCCESS, local_->Register(self_->dd()));
  }
  DdPeer *Peer(uint64_t cluster, uint64_t seed, bool listen = true, int32_t wait_time_ms = 0) {
    PeerOptions o;
    o.cluster = cluster;
    o.seed = seed;
    o.listen = listen;
    o.role = listen ? "prompt" : "decoder";
    o.wait_time_ms = wait_time_ms;
    return StartPeer(o);
  }
  // Pulls all of the peer's cache and checks it holds pattern `seed`.
  ::testing::AssertionResult PullAndVerify(DdPeer &peer, uint64_t seed) {
    local_->Fill(9000);
    Timed t =
        self_->PullBlocks(peer.cluster(), peer.cache_id(), *local_, {0, 1, 2, 3, 4, 5, 6, 7}, {7, 6, 5, 4, 3, 2, 1, 0});
    if (t.status != LLM_SUCCESS)
      return ::testing::AssertionFailure() << "pull from cluster " << peer.cluster() << ": " << LlmName(t.status);
    KvModel want = local_->Snapshot();
    ApplyBlocks(KvModel::Pattern(4, kRows, kStride, seed), &want, All(4), {0, 1, 2, 3, 4, 5, 6, 7},
                {7, 6, 5, 4, 3, 2, 1, 0});
    return local_->Matches(want, "pull from cluster " + std::to_string(peer.cluster()));
  }
  void TearDown() override {
    // Frozen peers are killed first, so this process's Finalize does not wait on them.
    for (auto &p : peers_)
      if (p->faulted()) p->Kill();
    if (self_) {
      const auto t0 = Clock::now();
      self_->Finalize();
      EXPECT_LT(MsSince(t0), 10000) << "Finalize of the test process's LlmDataDist";
    }
    DdFixture::TearDown();
  }

  std::unique_ptr<SelfDataDist> self_;
  std::unique_ptr<LocalKv> local_;
  std::unique_ptr<LocalKv> big_;  // outlives self_'s registrations (TearDown finalizes first)
};

// ---------------------------------------------------------------------------------
// Cycles
// ---------------------------------------------------------------------------------
TEST_P(LinkTest, LinkUnlinkCyclesClientSide) {
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(false, 0, LlmRole::kDecoder)));
  DdPeer *peer = Peer(2, 100);
  ASSERT_NE(nullptr, peer);
  for (int cycle = 0; cycle < 10; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    const uint64_t seed = 100 + 10 * cycle;
    ASSERT_TRUE(peer->Fill(1, seed));
    std::vector<Status> rets;
    ASSERT_LLM(LLM_SUCCESS, self_->Link({peer->Info()}, &rets).status) << Names(rets);
    ASSERT_TRUE(PullAndVerify(*peer, seed));
    // The listening side uses the same link.
    ASSERT_LLM(LLM_SUCCESS, peer->PullBlocks(kSelfId, local_->id(), 1, {0}, {0}).status) << peer->last_error();
    rets.clear();
    ASSERT_LLM(LLM_SUCCESS, self_->Unlink({peer->Info()}, &rets).status);
    ASSERT_EQ(Names({LLM_SUCCESS}), Names(rets));
    // Both sides are cleaned.
    ASSERT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(2, 1, *local_, {0}, {0}).status);
    ASSERT_LLM(LLM_NOT_YET_LINK, self_->PushBlocks(*local_, 2, 1, {0}, {0}).status);
    ASSERT_LLM(LLM_NOT_YET_LINK, peer->PullBlocks(kSelfId, local_->id(), 1, {0}, {0}).status);
    ASSERT_LLM(LLM_NOT_YET_LINK, peer->PushBlocks(1, kSelfId, local_->id(), {0}, {0}).status);
  }
}

TEST_P(LinkTest, LinkUnlinkCyclesPeerIsTheClient) {
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(true, 0, LlmRole::kPrompt)));
  DdPeer *peer = Peer(3, 300, /*listen=*/false);
  ASSERT_NE(nullptr, peer);
  const std::string me = std::to_string(kSelfId) + "@127.0.0.1:" + std::to_string(self_->port());
  for (int cycle = 0; cycle < 10; ++cycle) {
    SCOPED_TRACE("cycle " + std::to_string(cycle));
    const uint64_t seed = 300 + 10 * cycle;
    ASSERT_TRUE(peer->Fill(1, seed));
    std::vector<Status> rets;
    ASSERT_LLM(LLM_SUCCESS, peer->Link({me}, &rets)) << peer->last_error() << Names(rets);
    ASSERT_EQ(Names({LLM_SUCCESS}), Names(rets));
    // This (listening) side pulls over the peer's link.
    ASSERT_TRUE(PullAndVerify(*peer, seed));
    EXPECT_LLM(LLM_EXIST_LINK, self_->dd().SetRole(LlmRole::kPrompt));
    rets.clear();
    ASSERT_LLM(LLM_SUCCESS, peer->Unlink({me}, &rets)) << peer->last_error();
    ASSERT_EQ(Names({LLM_SUCCESS}), Names(rets));
    ASSERT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(3, 1, *local_, {0}, {0}).status);
    ASSERT_LLM(LLM_NOT_YET_LINK, peer->PullBlocks(kSelfId, local_->id(), 1, {0}, {0}).status);
  }
}

// ---------------------------------------------------------------------------------
// Several clusters in one call
// ---------------------------------------------------------------------------------
TEST_P(LinkTest, SeveralClustersInOneCall) {
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(false, 0, LlmRole::kDecoder)));
  DdPeer *a = Peer(21, 2100);
  DdPeer *b = Peer(22, 2200);
  DdPeer *c = Peer(23, 2300);
  ASSERT_TRUE(a && b && c);
  const ClusterInfo nobody = Cluster(24, FreePort());
  std::vector<Status> rets = {0xABCDu};
  Timed t = self_->Link({a->Info(), nobody, b->Info(), c->Info()}, &rets, 2000);
  ASSERT_EQ(5u, rets.size()) << Names(rets);
  EXPECT_LLM(0xABCDu, rets[0]) << "rets must be appended to";
  EXPECT_LLM(LLM_SUCCESS, rets[1]);
  EXPECT_TRUE(rets[2] == LLM_LINK_FAILED || rets[2] == LLM_TIMEOUT) << LlmName(rets[2]);
  EXPECT_LLM(LLM_SUCCESS, rets[3]);
  EXPECT_LLM(LLM_SUCCESS, rets[4]);
  EXPECT_LLM(rets[2], t.status) << "overall status = the failing cluster's";
  EXPECT_LE(t.ms, 2000 + kMarginMs);
  EXPECT_TRUE(PullAndVerify(*a, 2100));
  EXPECT_TRUE(PullAndVerify(*b, 2200));
  EXPECT_TRUE(PullAndVerify(*c, 2300));
  EXPECT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(24, 1, *local_, {0}, {0}).status);
  // Each peer pushes to this process over its own link.
  for (DdPeer *p : {a, b, c}) {
    Timed pt = p->PushBlocks(1, kSelfId, local_->id(), {1}, {1});
    EXPECT_LLM(LLM_SUCCESS, pt.status) << "push from cluster " << p->cluster() << " " << p->last_error();
  }
  // Linking again: ALREADY_LINK for each, in order.
  rets.clear();
  t = self_->Link({c->Info(), a->Info()}, &rets, 1000);
  EXPECT_LLM(LLM_ALREADY_LINK, t.status);
  EXPECT_EQ(Names({LLM_ALREADY_LINK, LLM_ALREADY_LINK}), Names(rets));
  // Unlink all three in one call.
  rets.clear();
  t = self_->Unlink({a->Info(), b->Info(), c->Info()}, &rets, 2000);
  EXPECT_LLM(LLM_SUCCESS, t.status);
  EXPECT_EQ(Names({LLM_SUCCESS, LLM_SUCCESS, LLM_SUCCESS}), Names(rets));
  for (DdPeer *p : {a, b, c}) {
    EXPECT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(p->cluster(), 1, *local_, {0}, {0}).status);
    EXPECT_LLM(LLM_NOT_YET_LINK, p->PullBlocks(kSelfId, local_->id(), 1, {0}, {0}).status);
  }
  EXPECT_LLM(LLM_SUCCESS, self_->dd().SetRole(LlmRole::kDecoder));
}

// Several peers link to this listening process at once.
TEST_P(LinkTest, SeveralClientsLinkToOneServer) {
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(true, 0, LlmRole::kPrompt)));
  const std::string me = std::to_string(kSelfId) + "@127.0.0.1:" + std::to_string(self_->port());
  std::vector<DdPeer *> clients;
  for (uint64_t k = 0; k < 3; ++k) {
    clients.push_back(Peer(31 + k, 3100 + 100 * k, /*listen=*/false));
    ASSERT_NE(nullptr, clients.back());
  }
  for (DdPeer *p : clients) {
    std::vector<Status> rets;
    ASSERT_LLM(LLM_SUCCESS, p->Link({me}, &rets)) << p->last_error();
  }
  for (size_t k = 0; k < clients.size(); ++k) EXPECT_TRUE(PullAndVerify(*clients[k], 3100 + 100 * k));
  // Each client pulls this process's cache.
  KvModel mine = local_->Snapshot();
  for (DdPeer *p : clients) {
    ASSERT_LLM(LLM_SUCCESS, p->PullBlocks(kSelfId, local_->id(), 1, {2, 3}, {0, 1}).status) << p->last_error();
    KvModel want = KvModel::Pattern(4, kRows, kStride, p->options().seed);
    ApplyBlocks(mine, &want, All(4), {2, 3}, {0, 1});
    EXPECT_TRUE(p->Matches(1, want, "client pulled from the server"));
  }
  for (DdPeer *p : clients) {
    std::vector<Status> rets;
    ASSERT_LLM(LLM_SUCCESS, p->Unlink({me}, &rets)) << p->last_error();
  }
  EXPECT_LLM(LLM_SUCCESS, self_->dd().SetRole(LlmRole::kPrompt)) << "no links may be left on the server";
}

// ---------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------

// SIGSTOP: the peer is alive but never answers. Transfers return LLM_TIMEOUT within
// llm.SyncKvCacheWaitTime + margin; a non-forced unlink fails (LLM_UNLINK_FAILED)
// and keeps the link; a forced unlink drops it; after SIGCONT both ends force-unlink
// and relink.
TEST_P(LinkTest, StoppedPeerTimesOut) {
  constexpr int32_t kWait = 1000;
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(false, kWait, LlmRole::kDecoder)));
  DdPeer *peer = Peer(5, 500);
  ASSERT_NE(nullptr, peer);
  const int64_t peer_cache2 = peer->Register(4, kRows, kStride, 550);  // never used before the stop
  ASSERT_EQ(2, peer_cache2) << peer->last_error();
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, self_->Link({peer->Info()}, &rets).status);
  ASSERT_TRUE(PullAndVerify(*peer, 500));
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, 5, 1, {0}, {0}).status);
  const KvModel before = local_->Snapshot();

  peer->Stop();
  SleepMs(kLeaseExpiryWaitMs);  // past the standing read lease: nothing is readable without the peer
  struct Call {
    std::string name;
    std::function<Timed()> fn;
  };
  const std::vector<Call> calls = {
      {"PullKvBlocks",
       [&] {
         return self_->PullBlocks(5, 1, *local_, {1, 2}, {1, 2});
       }},
      {"PullKvCache", [&] { return self_->PullCache(5, 1, 3, *local_, 3); }},
      {"PullKvCache size 8", [&] { return self_->PullCache(5, 1, 3, *local_, 3, 8); }},
      {"PushKvBlocks", [&] { return self_->PushBlocks(*local_, 5, 1, {4}, {4}); }},
      {"PushKvCache", [&] { return self_->PushCache(*local_, 0, 5, 1, 0); }},
      {"PullKvBlocks, remote cache not fetched yet",
       [&] { return self_->PullBlocks(5, peer_cache2, *local_, {0}, {0}); }},
      {"PushKvBlocks, remote cache not fetched yet",
       [&] { return self_->PushBlocks(*local_, 5, peer_cache2, {0}, {0}); }},
  };
  for (const Call &c : calls) {
    Timed t = c.fn();
    EXPECT_LLM(LLM_TIMEOUT, t.status) << c.name << " to a stopped peer (after " << t.ms << " ms)";
    EXPECT_LE(t.ms, kWait + kMarginMs) << c.name << " returned late";
    EXPECT_GE(t.ms, kWait * 9 / 10) << c.name << " returned before its timeout";
  }
  EXPECT_TRUE(local_->Matches(before, "pulls that timed out must not have written (nothing arrived)"));
  // Non-forced unlink cannot reach the peer: it fails in time and keeps the link.
  rets.clear();
  Timed t = self_->Unlink({peer->Info()}, &rets, 500);
  EXPECT_LLM(LLM_UNLINK_FAILED, t.status) << "after " << t.ms << " ms";
  EXPECT_LE(t.ms, 500 + kMarginMs);
  rets.clear();
  t = self_->Link({peer->Info()}, &rets, 500);
  EXPECT_LLM(LLM_ALREADY_LINK, t.status) << "the link must be kept after LLM_UNLINK_FAILED";
  EXPECT_LLM(LLM_EXIST_LINK, self_->dd().SetRole(LlmRole::kDecoder));
  // A second instance linking to the stopped peer times out too.
  {
    SelfDataDist probe(99, Opts(false, 0, LlmRole::kDecoder));
    ASSERT_TRUE(probe.Init());
    std::vector<Status> r;
    Timed lt = probe.Link({peer->Info()}, &r, 800);
    EXPECT_TRUE(lt.status == LLM_TIMEOUT || lt.status == LLM_LINK_FAILED) << LlmName(lt.status);
    EXPECT_LE(lt.ms, 800 + kMarginMs);
    const auto t0 = Clock::now();
    probe.Finalize();
    EXPECT_LT(MsSince(t0), 5000) << "Finalize after a link attempt to a stopped peer";
  }
  // Forced unlink is local: immediate, and the link is gone.
  rets.clear();
  t = self_->Unlink({peer->Info()}, &rets, 500, /*force=*/true);
  EXPECT_LLM(LLM_SUCCESS, t.status);
  EXPECT_LE(t.ms, 500 + kMarginMs);
  EXPECT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(5, 1, *local_, {0}, {0}).status);

  // The peer resumes; both ends force-unlink, then link again and move data.
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->last_error();
  rets.clear();
  EXPECT_LLM(LLM_SUCCESS, peer->Unlink({std::to_string(kSelfId) + "@127.0.0.1:1"}, &rets, 1000, /*force=*/true));
  // Pushes that returned LLM_TIMEOUT may still land once the peer runs again (their
  // bytes were already on the wire); the spec promises nothing about them, so the
  // peer's cache is only reported here and then reset.
  {
    KvModel untouched = KvModel::Pattern(4, kRows, kStride, 500);
    ApplyBlocks(before, &untouched, All(4), {0}, {0});  // the push that succeeded before the stop
    if (!peer->Matches(1, untouched, "peer cache after SIGCONT")) {
      std::printf("[   NOTE   ] pushes that timed out while the peer was stopped were applied after SIGCONT\n");
      ::testing::Test::RecordProperty("timed_out_pushes_landed_later", "yes");
    }
  }
  ASSERT_TRUE(peer->Fill(1, 500));
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, self_->Link({peer->Info()}, &rets).status) << Names(rets);
  EXPECT_TRUE(PullAndVerify(*peer, 500));
  rets.clear();
  EXPECT_LLM(LLM_SUCCESS, self_->Unlink({peer->Info()}, &rets).status);
}

// The frozen peer is the listening side and this process pushes/pulls as a server:
// the direction of the link does not matter for the timeout.
TEST_P(LinkTest, StoppedClientPeerTimesOutOnServerSide) {
  constexpr int32_t kWait = 800;
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(true, kWait, LlmRole::kPrompt)));
  DdPeer *peer = Peer(6, 600, /*listen=*/false);
  ASSERT_NE(nullptr, peer);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, peer->Link({std::to_string(kSelfId) + "@127.0.0.1:" + std::to_string(self_->port())}, &rets))
      << peer->last_error();
  ASSERT_TRUE(PullAndVerify(*peer, 600));
  peer->Stop();
  SleepMs(kLeaseExpiryWaitMs);  // past the standing read lease: nothing is readable without the peer
  Timed t = self_->PullBlocks(6, 1, *local_, {0}, {0});
  EXPECT_LLM(LLM_TIMEOUT, t.status);
  EXPECT_LE(t.ms, kWait + kMarginMs);
  t = self_->PushBlocks(*local_, 6, 1, {0}, {0});
  EXPECT_LLM(LLM_TIMEOUT, t.status);
  EXPECT_LE(t.ms, kWait + kMarginMs);
}

// SIGKILL while idle: transfers fail (not hang) within the wait time + margin; a
// non-forced unlink fails and keeps the link; after a forced unlink a restarted peer
// with the same cluster id (new port, new data) can be linked.
TEST_P(LinkTest, KilledPeerThenRestartedWithSameClusterId) {
  constexpr int32_t kWait = 2000;
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(false, kWait, LlmRole::kDecoder)));
  DdPeer *peer = Peer(7, 700);
  ASSERT_NE(nullptr, peer);
  const ClusterInfo old_info = peer->Info();
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, self_->Link({old_info}, &rets).status);
  ASSERT_TRUE(PullAndVerify(*peer, 700));
  const KvModel before = local_->Snapshot();
  peer->Kill();
  SleepMs(50);
  for (int round = 0; round < 2; ++round) {
    Timed t = self_->PullBlocks(7, 1, *local_, {0}, {0});
    EXPECT_NE(LLM_SUCCESS, t.status) << "pull from a killed peer";
    EXPECT_LE(t.ms, kWait + kMarginMs) << "pull from a killed peer: " << LlmName(t.status);
    t = self_->PushCache(*local_, 0, 7, 1, 0);
    EXPECT_NE(LLM_SUCCESS, t.status) << "push to a killed peer";
    EXPECT_LE(t.ms, kWait + kMarginMs) << "push to a killed peer: " << LlmName(t.status);
    ::testing::Test::RecordProperty("killed_peer_status_round" + std::to_string(round), LlmName(t.status));
  }
  EXPECT_TRUE(local_->Matches(before, "failed pulls must not have written"));
  rets.clear();
  Timed t = self_->Unlink({old_info}, &rets, 1000);
  EXPECT_LLM(LLM_UNLINK_FAILED, t.status) << "non-forced unlink of a dead peer";
  EXPECT_LE(t.ms, 1000 + kMarginMs);
  rets.clear();
  EXPECT_LLM(LLM_ALREADY_LINK, self_->Link({old_info}, &rets, 1000).status);
  rets.clear();
  EXPECT_LLM(LLM_SUCCESS, self_->Unlink({old_info}, &rets, 1000, /*force=*/true).status);
  EXPECT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(7, 1, *local_, {0}, {0}).status);

  // Restarted with the same cluster id, other data, new port.
  DdPeer *again = Peer(7, 770);
  ASSERT_NE(nullptr, again);
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, self_->Link({again->Info()}, &rets).status) << Names(rets);
  EXPECT_TRUE(PullAndVerify(*again, 770)) << "data must come from the new process";
  ASSERT_LLM(LLM_SUCCESS, again->PullBlocks(kSelfId, local_->id(), 1, {0}, {0}).status) << again->last_error();
}

// A client peer dies and a new process with the same cluster id links to this
// (listening) process again without anyone force-unlinking here.
TEST_P(LinkTest, KilledClientPeerRelinksToServer) {
  ASSERT_NO_FATAL_FAILURE(StartSelf(Opts(true, 1000, LlmRole::kPrompt)));
  const std::string me = std::to_string(kSelfId) + "@127.0.0.1:" + std::to_string(self_->port());
  DdPeer *peer = Peer(8, 800, /*listen=*/false);
  ASSERT_NE(nullptr, peer);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, peer->Link({me}, &rets)) << peer->last_error();
  ASSERT_TRUE(PullAndVerify(*peer, 800));
  peer->Kill();
  Timed t = self_->PullBlocks(8, 1, *local_, {0}, {0});
  EXPECT_NE(LLM_SUCCESS, t.status);
  EXPECT_LE(t.ms, 1000 + kMarginMs);
  DdPeer *again = Peer(8, 880, /*listen=*/false);
  ASSERT_NE(nullptr, again);
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, again->Link({me}, &rets)) << again->last_error() << " " << Names(rets);
  EXPECT_TRUE(PullAndVerify(*again, 880)) << "this side must now reach the new process";
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, 8, 1, {3}, {4}).status);
  KvModel want = KvModel::Pattern(4, kRows, kStride, 880);
  ApplyBlocks(local_->Snapshot(), &want, All(4), {3}, {4});
  EXPECT_TRUE(again->Matches(1, want, "push to the restarted client"));
  rets.clear();
  EXPECT_LLM(LLM_SUCCESS, again->Unlink({me}, &rets)) << again->last_error();
}

// SIGKILL in the middle of a long transfer: the call ends with an error soon, not
// at a far-away deadline and not with success.
TEST_P(LinkTest, KilledDuringLongTransfer) {
  constexpr int32_t kWait = 20000;
  constexpr uint64_t kBlocks = 16, kBlockBytes = 1 << 20;  // 16 MiB per tensor
  self_ = std::make_unique<SelfDataDist>(kSelfId, Opts(false, kWait, LlmRole::kDecoder));
  ASSERT_TRUE(self_->Init());
  big_ = std::make_unique<LocalKv>(2, kBlocks, kBlockBytes);
  LocalKv &big = *big_;
  big.Fill(1);
  ASSERT_LLM(LLM_SUCCESS, big.Register(self_->dd()));
  PeerOptions o;
  o.cluster = 9;
  o.tensors = 2;
  o.blocks = kBlocks;
  o.block_bytes = kBlockBytes;
  o.seed = 900;
  DdPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, self_->Link({peer->Info()}, &rets).status);
  // 1024 non-mergeable 1 MiB block copies per tensor: 2 GiB in total.
  std::vector<uint64_t> src, dst;
  for (uint64_t k = 0; k < 1024; ++k) {
    src.push_back((k * 7) % kBlocks);
    dst.push_back((k * 5 + 3) % kBlocks);
  }
  std::atomic<bool> done{false};
  Timed result;
  std::thread worker([&] {
    result = self_->PullBlocks(9, 1, big, src, dst);
    done = true;
  });
  SleepMs(150);
  const bool finished_early = done.load();
  const auto killed_at = Clock::now();
  peer->Kill();
  worker.join();
  const int64_t after_kill = MsSince(killed_at);
  if (finished_early) {
    GTEST_SKIP() << "the 2 GiB pull finished within 150 ms (" << LlmName(result.status) << "); cannot interrupt it";
  }
  EXPECT_NE(LLM_SUCCESS, result.status) << "a pull interrupted by SIGKILL cannot succeed";
  EXPECT_LE(result.ms, kWait + kMarginMs);
  EXPECT_LE(after_kill, 5000) << "the error should follow the peer's death quickly (" << LlmName(result.status) << " "
                              << after_kill << " ms after the kill)";
}

// Spec 2.7 (UnlinkLlmClusters) / 8.9: unlinking waits for the in-flight transfer on
// that link, which completes normally; afterwards transfers get LLM_NOT_YET_LINK.
TEST_P(LinkTest, UnlinkWaitsForInFlightTransfer) {
  constexpr int32_t kWait = 20000;
  constexpr uint64_t kBlocks = 16, kBlockBytes = 1 << 20;
  self_ = std::make_unique<SelfDataDist>(kSelfId, Opts(false, kWait, LlmRole::kDecoder));
  ASSERT_TRUE(self_->Init());
  big_ = std::make_unique<LocalKv>(2, kBlocks, kBlockBytes);
  LocalKv &big = *big_;
  big.Fill(1);
  ASSERT_LLM(LLM_SUCCESS, big.Register(self_->dd()));
  PeerOptions o;
  o.cluster = 10;
  o.tensors = 2;
  o.blocks = kBlocks;
  o.block_bytes = kBlockBytes;
  o.seed = 1000;
  DdPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, self_->Link({peer->Info()}, &rets).status);
  std::vector<uint64_t> src, dst;
  for (uint64_t k = 0; k < 512; ++k) {
    src.push_back((k * 7) % kBlocks);
    dst.push_back((k * 5 + 3) % kBlocks);
  }
  std::atomic<bool> done{false};
  Timed pull;
  Clock::time_point pull_end;
  itest::Watchdog dog(kWait + 30000, "PullKvBlocks overlapping UnlinkLlmClusters");
  std::thread worker([&] {
    const auto t0 = Clock::now();
    pull.status = self_->dd().PullKvBlocks(Index(10, 1, 0), big.AsCache(), src, dst);
    pull_end = Clock::now();
    pull.ms = std::chrono::duration_cast<std::chrono::milliseconds>(pull_end - t0).count();
    done = true;
  });
  SleepMs(50);
  const bool finished_early = done.load();
  rets.clear();
  Timed unlink = self_->Unlink({peer->Info()}, &rets, 10000);
  const auto unlink_end = Clock::now();
  worker.join();
  if (finished_early) GTEST_SKIP() << "the pull finished within 50 ms; cannot unlink during it";
  EXPECT_LLM(LLM_SUCCESS, pull.status) << "the in-flight pull must complete (after " << pull.ms << " ms)";
  EXPECT_LLM(LLM_SUCCESS, unlink.status);
  EXPECT_EQ(Names({LLM_SUCCESS}), Names(rets));
  // (20 ms of slack for the worker thread being scheduled after the call returned.)
  EXPECT_TRUE(pull_end <= unlink_end + std::chrono::milliseconds(20))
      << "Unlink returned " << std::chrono::duration_cast<std::chrono::milliseconds>(pull_end - unlink_end).count()
      << " ms before the in-flight pull finished (unlink took " << unlink.ms << " ms, pull " << pull.ms << " ms)";
  if (pull.status == LLM_SUCCESS) {
    KvModel want = KvModel::Pattern(2, kBlocks, kBlockBytes, 1);
    ApplyBlocks(KvModel::Pattern(2, kBlocks, kBlockBytes, 1000), &want, All(2), src, dst);
    EXPECT_TRUE(big.Matches(want, "the pull that overlapped the unlink"));
  }
  EXPECT_LLM(LLM_NOT_YET_LINK, self_->PullBlocks(10, 1, big, {0}, {0}).status);
  EXPECT_LLM(LLM_NOT_YET_LINK, peer->PullBlocks(kSelfId, big.id(), 1, {0}, {0}).status);
}

INSTANTIATE_TEST_SUITE_P(Transport, LinkTest, ::testing::ValuesIn(DataDistTransports()), TransportName);

}  // namespace
}  // namespace ddtest
