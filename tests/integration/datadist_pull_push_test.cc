// Multi-process LLM-DataDist data-path tests: the test process runs one LlmDataDist
// and datadist_peer processes run the others. Every transfer is checked byte for
// byte against a model built with the spec's copy rules (2.8.3), applied one block
// / row at a time: destinations are first filled with a sentinel pattern, so every
// byte outside the expected ranges must still hold the sentinel afterwards. Local
// tensors end right before a PROT_NONE page (an overrun crashes).
//
// Covers: pull and push in both directions over one link (the listening side
// pushes to / pulls from the client that linked to it), reversed and
// non-contiguous block lists, PullKvCache with partial rows (size > 0), layer
// ranges with tensor_num_per_layer 1, 2 and 4, a large permuted block transfer,
// K and V tensors carved out of one allocation (ranges joined across tensors),
// and the three flows of spec section 4 (pull 4.1, layer-wise push 4.2, role
// switch 4.3).
#include <algorithm>
#include <cinttypes>
#include <numeric>
#include <random>
#include <thread>

#include "datadist_process_util.h"

namespace ddtest {
namespace {

constexpr uint64_t kSelfId = 1;
constexpr uint64_t kPeerId = 2;
constexpr uint64_t kRows = 8;
constexpr uint64_t kStride = 64;

using Blocks = std::vector<uint64_t>;
using Pairs = std::vector<std::pair<uint32_t, uint32_t>>;

Pairs All(uint32_t n) {
  Pairs p;
  for (uint32_t i = 0; i < n; ++i) p.emplace_back(i, i);
  return p;
}

// The test process (client, cluster 1) linked to one listening peer (cluster 2).
// Both caches: `tensors` tensors of kRows x kStride bytes. The peer's cache holds
// pattern seed 1000 + t, the local one the sentinel pattern 9000 + t.
class PullPushBase : public DdFixture {
 protected:
  // adjacent: on both sides the tensors are consecutive views of one allocation.
  void Start(uint32_t tensors, uint64_t rows = kRows, uint64_t stride = kStride, bool adjacent = false) {
    tensors_ = tensors;
    SelfOptions so;
    so.transport = transport_;
    self_ = std::make_unique<SelfDataDist>(kSelfId, so);
    ASSERT_TRUE(self_->Init());
    PeerOptions o;
    o.cluster = kPeerId;
    o.tensors = tensors;
    o.blocks = rows;
    o.block_bytes = stride;
    o.seed = 1000;
    o.adjacent_tensors = adjacent;
    peer_ = StartPeer(o);
    ASSERT_NE(nullptr, peer_);
    ASSERT_EQ(1, peer_->cache_id()) << "the first cache of an instance must get id 1";
    local_ = std::make_unique<LocalKv>(tensors, rows, stride, adjacent);
    local_->Fill(9000);
    ASSERT_LLM(LLM_SUCCESS, local_->Register(self_->dd()));
    ASSERT_EQ(1, local_->id());
    std::vector<Status> rets;
    Timed t = self_->Link({peer_->Info()}, &rets);
    ASSERT_LLM(LLM_SUCCESS, t.status) << Names(rets);
    ASSERT_EQ(Names({LLM_SUCCESS}), Names(rets));
    local_model_ = local_->Snapshot();
    peer_model_ = peer_->InitialModel();
  }
  void TearDown() override {
    if (self_) self_->Finalize();
    DdFixture::TearDown();
  }
  // Expected local cache after pulling these blocks from the peer.
  void ExpectLocal(const std::string &what) { EXPECT_TRUE(local_->Matches(local_model_, what)); }
  void ExpectPeer(const std::string &what) { EXPECT_TRUE(peer_->Matches(1, peer_model_, what)); }

  uint32_t tensors_ = 0;
  std::unique_ptr<SelfDataDist> self_;
  DdPeer *peer_ = nullptr;
  std::unique_ptr<LocalKv> local_;
  KvModel local_model_, peer_model_;
};

// The data-path tests run over both engine transports: the default (the same-host
// one-copy path between processes of this host) and plain TCP.
class PullPushTest : public PullPushBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { transport_ = GetParam(); }
};

TEST_P(PullPushTest, PullBlocksAndRowsVerified) {
  ASSERT_NO_FATAL_FAILURE(Start(4));
  // Reversed: {0,1,2,3} -> {3,2,1,0} (dev-guide example); blocks 4..7 keep the sentinel.
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, {0, 1, 2, 3}, {3, 2, 1, 0}).status);
  ApplyBlocks(peer_model_, &local_model_, All(4), {0, 1, 2, 3}, {3, 2, 1, 0});
  ExpectLocal("reversed block list");
  // Non-contiguous, with a mergeable run {1,2} -> {5,6} in the middle.
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, {7, 1, 2, 5}, {4, 5, 6, 0}).status);
  ApplyBlocks(peer_model_, &local_model_, All(4), {7, 1, 2, 5}, {4, 5, 6, 0});
  ExpectLocal("non-contiguous block list");
  // Rows: whole row, partial rows (size > 0: that many bytes from the row start), size = stride.
  local_->Fill(9100);
  local_model_ = local_->Snapshot();
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 5, *local_, 2).status);
  ApplyRow(peer_model_, &local_model_, All(4), 5, 2, kStride);
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 3, *local_, 7, 24).status);
  ApplyRow(peer_model_, &local_model_, All(4), 3, 7, 24);
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 0, *local_, 1, 1).status);
  ApplyRow(peer_model_, &local_model_, All(4), 0, 1, 1);
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 7, *local_, 0, static_cast<int64_t>(kStride)).status);
  ApplyRow(peer_model_, &local_model_, All(4), 7, 0, kStride);
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 6, *local_, 6, 63).status);
  ApplyRow(peer_model_, &local_model_, All(4), 6, 6, 63);
  ExpectLocal("PullKvCache rows");
  // The source is only read.
  ExpectPeer("peer cache after being pulled from");
}

TEST_P(PullPushTest, PushBlocksAndRowsVerified) {
  ASSERT_NO_FATAL_FAILURE(Start(4));
  local_->Fill(3000);
  local_model_ = local_->Snapshot();
  ASSERT_TRUE(peer_->Fill(1, 7000));  // sentinel on the destination
  peer_model_ = KvModel::Pattern(4, kRows, kStride, 7000);
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, {0, 1, 2, 3}, {3, 2, 1, 0}).status);
  ApplyBlocks(local_model_, &peer_model_, All(4), {0, 1, 2, 3}, {3, 2, 1, 0});
  ExpectPeer("reversed push");
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, {6, 4, 5}, {4, 6, 7}).status);
  ApplyBlocks(local_model_, &peer_model_, All(4), {6, 4, 5}, {4, 6, 7});
  ASSERT_LLM(LLM_SUCCESS, self_->PushCache(*local_, 7, kPeerId, 1, 0).status);
  ApplyRow(local_model_, &peer_model_, All(4), 7, 0, kStride);
  ASSERT_LLM(LLM_SUCCESS, self_->PushCache(*local_, 2, kPeerId, 1, 5).status);
  ApplyRow(local_model_, &peer_model_, All(4), 2, 5, kStride);
  ExpectPeer("non-contiguous pushes and PushKvCache rows");
  ExpectLocal("the push source is only read");
}

TEST_P(PullPushTest, BothDirectionsOverOneLink) {
  ASSERT_NO_FATAL_FAILURE(Start(4));
  // The client (this process) pulls and pushes...
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, {2}, {0}).status);
  ApplyBlocks(peer_model_, &local_model_, All(4), {2}, {0});
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, {7}, {6}).status);
  ApplyBlocks(local_model_, &peer_model_, All(4), {7}, {6});
  // ...and the listening peer pushes to and pulls from the client over the same link.
  Timed t = peer_->PushBlocks(1, kSelfId, local_->id(), {0, 1}, {5, 4});
  ASSERT_LLM(LLM_SUCCESS, t.status) << peer_->last_error();
  ApplyBlocks(peer_model_, &local_model_, All(4), {0, 1}, {5, 4});
  t = peer_->PushCache(1, 3, kSelfId, local_->id(), 1);
  ASSERT_LLM(LLM_SUCCESS, t.status) << peer_->last_error();
  ApplyRow(peer_model_, &local_model_, All(4), 3, 1, kStride);
  ExpectLocal("after the peer's pushes");
  KvModel local_before = local_model_;
  t = peer_->PullBlocks(kSelfId, local_->id(), 1, {5, 6, 7}, {1, 2, 3});
  ASSERT_LLM(LLM_SUCCESS, t.status) << peer_->last_error();
  ApplyBlocks(local_before, &peer_model_, All(4), {5, 6, 7}, {1, 2, 3});
  t = peer_->PullCache(kSelfId, local_->id(), 4, 1, 7, 17);
  ASSERT_LLM(LLM_SUCCESS, t.status) << peer_->last_error();
  ApplyRow(local_before, &peer_model_, All(4), 4, 7, 17);
  ExpectPeer("after the peer's pulls");
  ExpectLocal("the peer's pulls only read this process's cache");
  // The peer's error codes for this link.
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, peer_->PullBlocks(kSelfId, 5, 1, {0}, {0}).status);
  EXPECT_LLM(LLM_PARAM_INVALID, peer_->PullBlocks(kSelfId, local_->id(), 1, {8}, {0}).status);
  EXPECT_LLM(LLM_NOT_YET_LINK, peer_->PullBlocks(77, 1, 1, {0}, {0}).status);
  ExpectPeer("after the peer's rejected pulls");
}

// Layer ranges with tensor_num_per_layer n in {1, 2, 4}; 8 tensors on both sides.
class LayerRangeTest : public PullPushBase, public ::testing::WithParamInterface<int> {};

TEST_P(LayerRangeTest, PullAndPushSelectedLayers) {
  const uint8_t n = static_cast<uint8_t>(GetParam());
  ASSERT_NO_FATAL_FAILURE(Start(8));
  const int32_t layers = 8 / n;
  auto range_pairs = [&](int32_t src_first, int32_t dst_first, int32_t count) {
    Pairs p;
    for (int32_t i = 0; i < count * n; ++i) p.emplace_back(src_first * n + i, dst_first * n + i);
    return p;
  };
  // Pull the last layer into layer 0, reversed non-contiguous blocks.
  KvCacheExtParam ext = Ext(layers - 1, layers - 1, 0, 0, n);
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, {4, 3, 2}, {5, 6, 7}, ext).status);
  ApplyBlocks(peer_model_, &local_model_, range_pairs(layers - 1, 0, 1), {4, 3, 2}, {5, 6, 7});
  ExpectLocal("pull last layer -> layer 0");
  // Pull a two-layer range shifted by one (or everything, for n = 4), partial row.
  if (layers >= 3) {
    ext = Ext(0, 1, 1, 2, n);
    ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 6, *local_, 1, 40, ext).status);
    ApplyRow(peer_model_, &local_model_, range_pairs(0, 1, 2), 6, 1, 40);
  } else {
    ext = Ext(0, 1, 0, 1, n);
    ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, 1, 6, *local_, 1, 40, ext).status);
    ApplyRow(peer_model_, &local_model_, range_pairs(0, 0, 2), 6, 1, 40);
  }
  ExpectLocal("pull a range of layers, 40 bytes of a row");
  // Push: layer 0 -> last layer, then layer by layer (spec 4.2) blocks {5,6,7}.
  local_->Fill(3000);
  local_model_ = local_->Snapshot();
  ASSERT_TRUE(peer_->Fill(1, 7000));
  peer_model_ = KvModel::Pattern(8, kRows, kStride, 7000);
  ext = Ext(0, 0, layers - 1, layers - 1, n);
  ASSERT_LLM(LLM_SUCCESS, self_->PushCache(*local_, 2, kPeerId, 1, 3, ext).status);
  ApplyRow(local_model_, &peer_model_, range_pairs(0, layers - 1, 1), 2, 3, kStride);
  ExpectPeer("push layer 0 -> last layer");
  for (int32_t layer = 0; layer < layers; ++layer) {
    ext = Ext(layer, layer, layer, layer, n);
    ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, {5, 6, 7}, {5, 6, 7}, ext).status)
        << "layer " << layer;
    ApplyBlocks(local_model_, &peer_model_, range_pairs(layer, layer, 1), {5, 6, 7}, {5, 6, 7});
  }
  ExpectPeer("layer-wise push of blocks 5..7");
  // The peer pulls a layer range from this process with the same n.
  ext = Ext(0, 0, layers - 1, layers - 1, n);
  KvModel peer_before = peer_model_;
  Timed t = peer_->PullBlocks(kSelfId, local_->id(), 1, {0, 1}, {1, 0}, ext);
  ASSERT_LLM(LLM_SUCCESS, t.status) << peer_->last_error();
  ApplyBlocks(local_model_, &peer_model_, range_pairs(0, layers - 1, 1), {0, 1}, {1, 0});
  ExpectPeer("peer pulls layer 0 -> its last layer");
  // A layer past the end is rejected, nothing moves.
  ext = Ext(layers, layers, 0, 0, n);
  EXPECT_LLM(LLM_PARAM_INVALID, self_->PullBlocks(kPeerId, 1, *local_, {0}, {0}, ext).status);
  EXPECT_LLM(LLM_PARAM_INVALID, self_->PushBlocks(*local_, kPeerId, 1, {0}, {0}, ext).status);
  ExpectLocal("after rejected range");
  ExpectPeer("after rejected range");
}

INSTANTIATE_TEST_SUITE_P(TensorsPerLayer, LayerRangeTest, ::testing::Values(1, 2, 4),
                         [](const ::testing::TestParamInfo<int> &info) { return "n" + std::to_string(info.param); });

// Many small runs over a bigger cache: 2 tensors x 256 blocks x 16 KiB, random
// permutations both ways.
TEST_P(PullPushTest, LargePermutedBlockLists) {
  constexpr uint64_t kBlocks = 256, kBlockBytes = 16 << 10;
  ASSERT_NO_FATAL_FAILURE(Start(2, kBlocks, kBlockBytes));
  std::mt19937_64 rng(42);
  Blocks src(kBlocks), dst(kBlocks);
  std::iota(src.begin(), src.end(), 0);
  std::iota(dst.begin(), dst.end(), 0);
  std::shuffle(src.begin(), src.end(), rng);
  std::shuffle(dst.begin(), dst.end(), rng);
  src.resize(200);  // 56 destination blocks keep the sentinel
  dst.resize(200);
  Timed t = self_->PullBlocks(kPeerId, 1, *local_, src, dst);
  ASSERT_LLM(LLM_SUCCESS, t.status);
  ApplyBlocks(peer_model_, &local_model_, All(2), src, dst);
  ExpectLocal("permuted pull of 200 blocks");
  ASSERT_TRUE(peer_->Fill(1, 7000));
  peer_model_ = KvModel::Pattern(2, kBlocks, kBlockBytes, 7000);
  std::shuffle(src.begin(), src.end(), rng);
  t = self_->PushBlocks(*local_, kPeerId, 1, dst, src);
  ASSERT_LLM(LLM_SUCCESS, t.status);
  ApplyBlocks(local_model_, &peer_model_, All(2), dst, src);
  for (uint32_t k = 0; k < 2; ++k) {
    std::string r = peer_->Cmd("HASH 1 " + std::to_string(k) + " 0 " + std::to_string(kBlocks * kBlockBytes));
    char want[64];
    snprintf(want, sizeof(want), "HASH %" PRIx64, itest::Hash64(peer_model_.t[k].data(), kBlocks * kBlockBytes));
    EXPECT_EQ(std::string(want), r) << "peer tensor " << k << " after the permuted push";
  }
}

// Spec 2.10: transfers may run concurrently on one link and across links. Four
// threads pull from two peers and push to them at the same time, into disjoint
// blocks; every byte is checked afterwards.
TEST_P(PullPushTest, ConcurrentTransfersOnOneLinkAndAcrossLinks) {
  constexpr uint64_t kBlocks = 64, kBlockBytes = 1024;
  ASSERT_NO_FATAL_FAILURE(Start(4, kBlocks, kBlockBytes));
  PeerOptions o;
  o.cluster = 3;
  o.tensors = 4;
  o.blocks = kBlocks;
  o.block_bytes = kBlockBytes;
  o.seed = 3000;
  DdPeer *second = StartPeer(o);
  ASSERT_NE(nullptr, second);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, self_->Link({second->Info()}, &rets).status);
  ASSERT_TRUE(peer_->Fill(1, 7000));
  ASSERT_TRUE(second->Fill(1, 7100));
  // Both peers' caches are the pull sources (read before the same thread pushes
  // into that block) and the push destinations.
  const KvModel src_peer = KvModel::Pattern(4, kBlocks, kBlockBytes, 7000);
  const KvModel src_second = KvModel::Pattern(4, kBlocks, kBlockBytes, 7100);
  KvModel want_local = local_model_;
  KvModel want_peer = KvModel::Pattern(4, kBlocks, kBlockBytes, 7000);
  KvModel want_second = KvModel::Pattern(4, kBlocks, kBlockBytes, 7100);
  // Thread t pulls blocks [16t, 16t+16) from peer (t even) or second (t odd) in 8
  // reversed pairs, then pushes its local blocks 16t.. to the same peer's blocks 16t...
  std::vector<std::thread> threads;
  std::vector<std::string> errors(4);
  itest::Watchdog dog(120000, "concurrent transfers");
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const uint64_t cluster = t % 2 == 0 ? kPeerId : 3;
      for (uint64_t k = 0; k < 16; k += 2) {
        const uint64_t b = 16 * t + k;
        Status st = self_->dd().PullKvBlocks(Index(cluster, 1, 0), local_->AsCache(), {b, b + 1}, {b + 1, b});
        if (st != LLM_SUCCESS) errors[t] += " pull " + std::to_string(b) + ": " + LlmName(st);
        st = self_->dd().PushKvBlocks(local_->AsCache(), Index(cluster, 1, 0), {b}, {b});
        if (st != LLM_SUCCESS) errors[t] += " push " + std::to_string(b) + ": " + LlmName(st);
      }
    });
  }
  for (auto &th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ("", errors[t]) << "thread " << t;
  // Pushed block b = local block b after the pull of pair (b, b+1) -> (b+1, b),
  // i.e. the remote's own block b+1; block b+1 of the remote is untouched.
  for (int t = 0; t < 4; ++t) {
    const KvModel &src = t % 2 == 0 ? src_peer : src_second;
    KvModel &dst_remote = t % 2 == 0 ? want_peer : want_second;
    for (uint64_t k = 0; k < 16; k += 2) {
      const uint64_t b = 16 * t + k;
      ApplyBlocks(src, &want_local, All(4), {b, b + 1}, {b + 1, b});
      ApplyBlocks(want_local, &dst_remote, All(4), {b}, {b});
    }
  }
  local_model_ = want_local;
  ExpectLocal("after concurrent pulls");
  EXPECT_TRUE(peer_->Matches(1, want_peer, "first peer after concurrent pushes"));
  EXPECT_TRUE(second->Matches(1, want_second, "second peer after concurrent pushes"));
}

INSTANTIATE_TEST_SUITE_P(Transport, PullPushTest, ::testing::ValuesIn(DataDistTransports()), TransportName);

// ---------------------------------------------------------------------------------
// K and V tensors carved out of one allocation on both sides (tensor k + 1 starts
// where tensor k ends), each registered with its own address by RegisterKvCache.
// The requester joins runs that are contiguous on both sides across tensor pairs,
// so one range crosses the boundary between two registrations; the serving side
// accepts it because every byte is registered.
// ---------------------------------------------------------------------------------
class AdjacentTensorsTest : public PullPushBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { transport_ = GetParam(); }
};

TEST_P(AdjacentTensorsTest, PullAndPushAcrossTensorBoundaries) {
  ASSERT_NO_FATAL_FAILURE(Start(4, kRows, kStride, /*adjacent=*/true));
  const std::vector<uint64_t> local_addrs = local_->Addrs();
  for (uint32_t k = 1; k < 4; ++k) ASSERT_EQ(local_addrs[k - 1] + kRows * kStride, local_addrs[k]);

  // Every block of every tensor: all four tensors become one range on each side.
  Blocks all(kRows);
  std::iota(all.begin(), all.end(), 0);
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, all, all).status);
  ApplyBlocks(peer_model_, &local_model_, All(4), all, all);
  ExpectLocal("PullKvBlocks of whole adjacent tensors");
  // The last blocks of tensor k join the first blocks of tensor k + 1.
  local_->Fill(9200);
  local_model_ = local_->Snapshot();
  ASSERT_LLM(LLM_SUCCESS, self_->PullBlocks(kPeerId, 1, *local_, {0, 1, 6, 7}, {0, 1, 6, 7}).status);
  ApplyBlocks(peer_model_, &local_model_, All(4), {0, 1, 6, 7}, {0, 1, 6, 7});
  ExpectLocal("PullKvBlocks of the blocks around each tensor boundary");
  ExpectPeer("the pulled cache is only read");

  // PullKvCache: with one row per tensor (batch 1) a row is a whole tensor, so
  // the rows of all tensors join into one range.
  constexpr uint64_t kRowBytes = 512;
  Status st = LLM_FAILED;
  const int64_t peer_rows = peer_->Register(4, 1, kRowBytes, 2000, &st, /*adjacent=*/true);
  ASSERT_LLM(LLM_SUCCESS, st) << peer_->last_error();
  LocalKv local_rows(4, 1, kRowBytes, /*adjacent=*/true);
  local_rows.Fill(9300);
  ASSERT_LLM(LLM_SUCCESS, local_rows.Register(self_->dd()));
  ASSERT_LLM(LLM_SUCCESS, self_->PullCache(kPeerId, peer_rows, 0, local_rows, 0).status);
  const KvModel peer_rows_model = KvModel::Pattern(4, 1, kRowBytes, 2000);
  EXPECT_TRUE(local_rows.Matches(peer_rows_model, "PullKvCache of adjacent one-row tensors"));
  EXPECT_TRUE(peer_->Matches(peer_rows, peer_rows_model, "the pulled one-row cache is only read"));

  // Push, blocks and a row, into the peer's adjacent tensors.
  local_->Fill(3000);
  local_model_ = local_->Snapshot();
  ASSERT_TRUE(peer_->Fill(1, 7000));
  peer_model_ = KvModel::Pattern(4, kRows, kStride, 7000);
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, {0, 1, 6, 7}, {0, 1, 6, 7}).status);
  ApplyBlocks(local_model_, &peer_model_, All(4), {0, 1, 6, 7}, {0, 1, 6, 7});
  ExpectPeer("PushKvBlocks of the blocks around each tensor boundary");
  ASSERT_LLM(LLM_SUCCESS, self_->PushBlocks(*local_, kPeerId, 1, all, all).status);
  ApplyBlocks(local_model_, &peer_model_, All(4), all, all);
  ExpectPeer("PushKvBlocks of whole adjacent tensors");
  ExpectLocal("the push source is only read");
  local_rows.Fill(3100);
  const KvModel pushed_rows = local_rows.Snapshot();
  ASSERT_LLM(LLM_SUCCESS, self_->PushCache(local_rows, 0, kPeerId, peer_rows, 0).status);
  EXPECT_TRUE(peer_->Matches(peer_rows, pushed_rows, "PushKvCache of adjacent one-row tensors"));
  EXPECT_LLM(LLM_SUCCESS, self_->dd().UnregisterKvCache(local_rows.id()));
}

INSTANTIATE_TEST_SUITE_P(Transport, AdjacentTensorsTest, ::testing::ValuesIn(DataDistTransports()),
                         TransportName);

// ---------------------------------------------------------------------------------
// Spec section 4 flows.
// ---------------------------------------------------------------------------------
class DataDistFlows : public DdFixture {};

// 4.1: the decoder (this process, client) pulls from the prompt (peer, server).
TEST_F(DataDistFlows, Flow41PullMode) {
  PeerOptions o;
  o.cluster = 10;
  o.role = "prompt";
  o.seed = 500;
  DdPeer *prompt = StartPeer(o);
  ASSERT_NE(nullptr, prompt);
  ASSERT_EQ(1, prompt->cache_id());
  LocalKv kv(4, kRows, kStride);  // declared first: outlives the instance it is registered with
  SelfDataDist decoder(11, SelfOptions{});
  ASSERT_TRUE(decoder.Init());
  kv.Fill(9000);
  ASSERT_LLM(LLM_SUCCESS, kv.Register(decoder.dd()));
  ASSERT_EQ(1, kv.id());
  KvModel want = kv.Snapshot();
  const KvModel src = prompt->InitialModel();
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, decoder.Link({prompt->Info()}, &rets).status);
  // The decoder uses the prompt's cache id 1 without being told (as the samples do).
  ASSERT_LLM(LLM_SUCCESS, decoder.PullBlocks(10, 1, kv, {1, 2, 3}, {1, 2, 3}).status);
  ApplyBlocks(src, &want, All(4), {1, 2, 3}, {1, 2, 3});
  ASSERT_LLM(LLM_SUCCESS, decoder.PullCache(10, 1, 0, kv, 0).status);
  ApplyRow(src, &want, All(4), 0, 0, kStride);
  EXPECT_TRUE(kv.Matches(want, "rows 0-3 pulled, 4-7 untouched"));
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, decoder.Unlink({prompt->Info()}, &rets).status);
  EXPECT_EQ(Names({LLM_SUCCESS}), Names(rets));
  EXPECT_LLM(LLM_SUCCESS, decoder.dd().UnregisterKvCache(kv.id()));
  decoder.Finalize();
  // The prompt's side of the link is gone too; its cache is intact.
  EXPECT_LLM(LLM_NOT_YET_LINK, prompt->PullBlocks(11, 1, 1, {0}, {0}).status);
  EXPECT_TRUE(prompt->Matches(1, src, "prompt cache after the flow"));
  EXPECT_LLM(LLM_SUCCESS, prompt->Unregister(1));
}

// 4.2: the prompt (this process, client) pushes layer by layer to the decoder (peer, server).
TEST_F(DataDistFlows, Flow42PushLayerwise) {
  PeerOptions o;
  o.cluster = 1;
  o.role = "decoder";
  o.seed = 700;
  DdPeer *decoder = StartPeer(o);
  ASSERT_NE(nullptr, decoder);
  ASSERT_EQ(1, decoder->cache_id());
  LocalKv kv(4, kRows, kStride);
  SelfDataDist prompt(0, SelfOptions{false, 0, LlmRole::kPrompt, ""});
  ASSERT_TRUE(prompt.Init());
  kv.Fill(3000);
  ASSERT_LLM(LLM_SUCCESS, kv.Register(prompt.dd()));
  ASSERT_EQ(1, kv.id());
  const KvModel src = kv.Snapshot();
  KvModel want = decoder->InitialModel();
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, prompt.Link({decoder->Info()}, &rets).status);
  for (int32_t layer = 0; layer < 4; ++layer) {
    ASSERT_LLM(LLM_SUCCESS,
               prompt.PushBlocks(kv, 1, 1, {5, 6, 7}, {5, 6, 7}, Ext(layer, layer, layer, layer, 1)).status)
        << "layer " << layer;
    ApplyBlocks(src, &want, {{static_cast<uint32_t>(layer), static_cast<uint32_t>(layer)}}, {5, 6, 7}, {5, 6, 7});
    // Layer `layer` arrived, later layers not yet.
    EXPECT_TRUE(decoder->Matches(1, want, "after pushing layer " + std::to_string(layer)));
  }
  ASSERT_LLM(LLM_SUCCESS, prompt.PushCache(kv, 4, 1, 1, 4, Ext(0, 0, 0, 0, 4)).status);
  ApplyRow(src, &want, All(4), 4, 4, kStride);
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, prompt.Unlink({decoder->Info()}, &rets).status);
  EXPECT_LLM(LLM_SUCCESS, prompt.dd().UnregisterKvCache(kv.id()));
  prompt.Finalize();
  EXPECT_TRUE(decoder->Matches(1, want, "decoder: blocks 4-7 pushed, 0-3 untouched"));
  EXPECT_TRUE(kv.Matches(src, "prompt cache is only read"));
}

// 4.3: pull with prompt = server, then both switch roles and the prompt (now a
// client) pushes to the decoder (now a server), then Finalizes without unlinking.
TEST_F(DataDistFlows, Flow43RoleSwitch) {
  PeerOptions o;
  o.cluster = 20;
  o.role = "prompt";
  o.seed = 800;
  DdPeer *prompt = StartPeer(o);
  ASSERT_NE(nullptr, prompt);
  const int prompt_port = prompt->port();
  LocalKv kv(4, kRows, kStride);
  SelfDataDist decoder(21, SelfOptions{false, 1000, LlmRole::kDecoder, ""});
  ASSERT_TRUE(decoder.Init());
  kv.Fill(9000);
  ASSERT_LLM(LLM_SUCCESS, kv.Register(decoder.dd()));
  KvModel want = kv.Snapshot();
  const KvModel src = prompt->InitialModel();

  // Phase 1: pull.
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, decoder.Link({prompt->Info()}, &rets).status);
  EXPECT_LLM(LLM_EXIST_LINK, decoder.dd().SetRole(LlmRole::kPrompt));
  EXPECT_LLM(LLM_EXIST_LINK, prompt->SetRole("decoder"));
  ASSERT_LLM(LLM_SUCCESS, decoder.PullBlocks(20, 1, kv, {1, 2, 3}, {1, 2, 3}).status);
  ASSERT_LLM(LLM_SUCCESS, decoder.PullCache(20, 1, 0, kv, 0).status);
  ApplyBlocks(src, &want, All(4), {0, 1, 2, 3}, {0, 1, 2, 3});
  EXPECT_TRUE(kv.Matches(want, "phase 1: rows 0-3"));
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, decoder.Unlink({prompt->Info()}, &rets).status);

  // Phase 2: switch roles (no links left on either side).
  Status st = LLM_FAILED;
  int decoder_port = 0;
  for (int attempt = 0; attempt < 10 && st != LLM_SUCCESS; ++attempt) {
    decoder_port = FreePort();
    std::map<AscendString, AscendString> opts;
    opts[OPTION_LISTEN_IP_INFO] = AscendString(Listen(decoder_port).c_str());
    // SetRole restarts the engine with these options: keep the suite's transport (ucx runs).
    if (!DefaultDataDistTransport().empty())
      opts["llmdd.Transport"] = AscendString(DefaultDataDistTransport().c_str());
    st = decoder.dd().SetRole(LlmRole::kPrompt, opts);
  }
  ASSERT_LLM(LLM_SUCCESS, st) << "decoder SetRole(kPrompt, listen)";
  ASSERT_LLM(LLM_SUCCESS, prompt->SetRole("decoder")) << prompt->last_error();
  // The prompt stopped listening: nobody can link to its old port.
  {
    SelfDataDist probe(99, SelfOptions{});
    ASSERT_TRUE(probe.Init());
    std::vector<Status> r;
    Timed t = probe.Link({Cluster(20, prompt_port)}, &r, 1000);
    EXPECT_TRUE(t.status == LLM_LINK_FAILED || t.status == LLM_TIMEOUT)
        << "link to the old prompt port: " << LlmName(t.status);
  }
  rets.clear();
  ASSERT_LLM(LLM_SUCCESS, prompt->Link({"21@127.0.0.1:" + std::to_string(decoder_port)}, &rets))
      << prompt->last_error() << " " << Names(rets);
  for (int32_t layer = 0; layer < 4; ++layer) {
    Timed t = prompt->PushBlocks(1, 21, kv.id(), {4, 5, 6, 7}, {4, 5, 6, 7}, Ext(layer, layer, layer, layer, 1));
    ASSERT_LLM(LLM_SUCCESS, t.status) << "layer " << layer << " " << prompt->last_error();
  }
  ApplyBlocks(src, &want, All(4), {4, 5, 6, 7}, {4, 5, 6, 7});
  EXPECT_TRUE(kv.Matches(want, "phase 2: rows 4-7 pushed by the prompt"));
  EXPECT_LLM(LLM_EXIST_LINK, decoder.dd().SetRole(LlmRole::kDecoder)) << "the prompt's link reached this side";
  // The prompt Finalizes without unlinking.
  ASSERT_EQ("OK", prompt->FinalizeCmd());
  // This side must not hang on the dead link: a pull returns an error in time.
  Timed t = decoder.PullBlocks(20, 1, kv, {0}, {0});
  EXPECT_NE(LLM_SUCCESS, t.status);
  EXPECT_LE(t.ms, decoder.wait_time_ms() + kMarginMs) << LlmName(t.status);
  EXPECT_TRUE(kv.Matches(want, "after the prompt finalized"));
}

}  // namespace
}  // namespace ddtest
