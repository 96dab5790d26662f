// The LLM-DataDist extensions of llmdd/extensions.h that CANN's Python package
// needs and its C++ V2 API lacks: caches registered under keys and found by a
// linked peer (RegisterKvCacheWithKeys, FindRemoteCache, docs/API.md "Cache
// keys"), caches peers cannot reach (kRemoteNone), and the error text of the
// last failed call (LastErrors). Two instances in this process on 127.0.0.1.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"
#include "llm_datadist/llm_datadist.h"
#include "llmdd/extensions.h"

namespace {

using namespace llm_datadist;  // NOLINT: API types and status constants
using Options = std::map<AscendString, AscendString>;
using llmdd_ext::CacheKey;

constexpr uint64_t kPromptId = 100;
constexpr uint64_t kDecoderId = 200;

std::string Name(Status s) { return llmdd_ext::StatusName(s); }
#define EXPECT_LLM(expected, actual) EXPECT_EQ(Name(expected), Name(actual))
#define ASSERT_LLM(expected, actual) ASSERT_EQ(Name(expected), Name(actual))

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  int port = 0;
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

Options DeviceOnly() {
  Options o;
  o[OPTION_DEVICE_ID] = "0";
  return o;
}

int InitServer(LlmDataDist &dd) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    const int port = FreePort();
    Options o = DeviceOnly();
    o[OPTION_LISTEN_IP_INFO] = AscendString(("127.0.0.1:" + std::to_string(port)).c_str());
    const Status st = dd.Initialize(o);
    if (st == LLM_SUCCESS) return port;
    if (st != LLM_FAILED) return 0;
  }
  return 0;
}

ClusterInfo Cluster(uint64_t cluster, int port) {
  ClusterInfo c;
  c.remote_cluster_id = cluster;
  IpInfo local, remote;
  local.ip = "127.0.0.1";
  remote.ip = "127.0.0.1";
  remote.port = static_cast<uint16_t>(port);
  c.local_ip_infos.push_back(local);
  c.remote_ip_infos.push_back(remote);
  return c;
}

CacheKey BlocksKey(uint64_t cluster, uint64_t model) {
  CacheKey k;
  k.kind = llmdd_ext::kBlocksCacheKey;
  k.cluster_id = cluster;
  k.model_id = model;
  return k;
}

CacheKey RequestKey(uint64_t cluster, uint64_t req, uint64_t model = 0) {
  CacheKey k;
  k.kind = llmdd_ext::kRequestCacheKey;
  k.cluster_id = cluster;
  k.req_id = req;
  k.model_id = model;
  return k;
}

CacheKey Placeholder(uint64_t cluster) { return RequestKey(cluster, llmdd_ext::kInvalidKeyId); }

// A cache of 4 tensors, shape {8, 16} DT_INT32: 512 B tensors, 8 rows of 64 B,
// tensor t byte i = seed + t * 7 + i.
struct Kv {
  explicit Kv(uint8_t seed) : mem(4, std::vector<uint8_t>(512)) {
    for (size_t t = 0; t < mem.size(); ++t)
      for (size_t i = 0; i < mem[t].size(); ++i) mem[t][i] = static_cast<uint8_t>(seed + t * 7 + i);
  }
  CacheDesc Desc() const {
    CacheDesc d;
    d.num_tensors = 4;
    d.data_type = DT_INT32;
    d.shape = {8, 16};
    return d;
  }
  std::vector<uint64_t> Addrs() const {
    std::vector<uint64_t> a;
    for (const auto &t : mem) a.push_back(reinterpret_cast<uint64_t>(t.data()));
    return a;
  }
  Status Register(LlmDataDist &dd, const std::vector<CacheKey> &keys, RegisterCfg cfg = {}) {
    return llmdd_ext::RegisterKvCacheWithKeys(dd, Desc(), Addrs(), cfg, keys, id);
  }
  Cache AsCache() const {
    Cache c;
    c.cache_id = id;
    c.cache_desc = Desc();
    return c;
  }
  std::vector<std::vector<uint8_t>> mem;
  int64_t id = -1;
};

class KeyedPair : public ::testing::Test {
 protected:
  void SetUp() override {
    prompt_ = std::make_unique<LlmDataDist>(kPromptId, LlmRole::kPrompt);
    port_ = InitServer(*prompt_);
    ASSERT_NE(0, port_);
    decoder_ = std::make_unique<LlmDataDist>(kDecoderId, LlmRole::kDecoder);
    ASSERT_LLM(LLM_SUCCESS, decoder_->Initialize(DeviceOnly()));
    std::vector<Status> rets;
    ASSERT_LLM(LLM_SUCCESS, decoder_->LinkLlmClusters({Cluster(kPromptId, port_)}, rets, 3000));
  }
  void TearDown() override {
    if (decoder_) decoder_->Finalize();
    if (prompt_) prompt_->Finalize();
  }
  Status Find(const CacheKey &key, CacheIndex *index, bool refresh = false) {
    *index = CacheIndex{};
    return llmdd_ext::FindRemoteCache(*decoder_, key, refresh, *index);
  }

  std::unique_ptr<LlmDataDist> prompt_, decoder_;
  int port_ = 0;
};

TEST_F(KeyedPair, KeysNameTheCacheAndRowOnThePeer) {
  Kv blocks(1), rows(2);
  ASSERT_LLM(LLM_SUCCESS, blocks.Register(*prompt_, {BlocksKey(kPromptId, 7)}));
  // Key i names row i; the placeholder holds row 1 and is not registered.
  ASSERT_LLM(LLM_SUCCESS, rows.Register(*prompt_, {RequestKey(kPromptId, 5), Placeholder(kPromptId),
                                                   RequestKey(kPromptId, 9, 3)}));
  CacheIndex index;
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 7), &index));
  EXPECT_EQ(kPromptId, index.cluster_id);
  EXPECT_EQ(blocks.id, index.cache_id);
  EXPECT_EQ(0u, index.batch_index);
  ASSERT_LLM(LLM_SUCCESS, Find(RequestKey(kPromptId, 9, 3), &index));
  EXPECT_EQ(rows.id, index.cache_id);
  EXPECT_EQ(2u, index.batch_index);
  ASSERT_LLM(LLM_SUCCESS, Find(RequestKey(kPromptId, 5), &index));
  EXPECT_EQ(0u, index.batch_index);

  // Every field of the key counts.
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, Find(BlocksKey(kPromptId, 8), &index));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, Find(RequestKey(kPromptId, 9), &index));  // model 0, registered with 3
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, Find(Placeholder(kPromptId), &index));

  // The index found works with the ordinary calls: blocks 1, 2 of every tensor.
  Kv local(50);
  ASSERT_LLM(LLM_SUCCESS, local.Register(*decoder_, {}));
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 7), &index));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(index, local.AsCache(), {1, 2}, {5, 6}));
  for (size_t t = 0; t < 4; ++t) {
    EXPECT_EQ(0, memcmp(local.mem[t].data() + 5 * 64, blocks.mem[t].data() + 64, 128)) << "tensor " << t;
  }
  // And a request key's row with PullKvCache.
  ASSERT_LLM(LLM_SUCCESS, Find(RequestKey(kPromptId, 9, 3), &index));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(index, local.AsCache(), 0));
  for (size_t t = 0; t < 4; ++t) {
    EXPECT_EQ(0, memcmp(local.mem[t].data(), rows.mem[t].data() + 2 * 64, 64)) << "tensor " << t;
  }
}

TEST_F(KeyedPair, LookupErrors) {
  CacheIndex index;
  EXPECT_LLM(LLM_NOT_YET_LINK, Find(BlocksKey(555, 0), &index));
  EXPECT_LLM(LLM_PARAM_INVALID, Find(BlocksKey(kDecoderId, 0), &index));  // this instance itself
  CacheKey bad = BlocksKey(kPromptId, 0);
  bad.kind = 0;
  EXPECT_LLM(LLM_PARAM_INVALID, Find(bad, &index));
  LlmDataDist idle(300, LlmRole::kMix);
  EXPECT_LLM(LLM_FAILED, llmdd_ext::FindRemoteCache(idle, BlocksKey(kPromptId, 0), false, index));
  Kv kv(3);
  EXPECT_LLM(LLM_FAILED, kv.Register(idle, {}));
}

TEST_F(KeyedPair, RegistrationKeyRules) {
  Kv kv(4);
  CacheKey bad_kind = BlocksKey(kPromptId, 1);
  bad_kind.kind = 3;
  const std::vector<std::vector<CacheKey>> refused = {
      {bad_kind},
      {BlocksKey(kPromptId, 1), BlocksKey(kPromptId, 2)},
      {BlocksKey(kPromptId, 1), RequestKey(kPromptId, 1)},
      std::vector<CacheKey>(9, Placeholder(kPromptId)),  // 9 request keys, 8 rows
  };
  for (size_t i = 0; i < refused.size(); ++i) {
    EXPECT_LLM(LLM_PARAM_INVALID, kv.Register(*prompt_, refused[i])) << "key list " << i;
  }
  // Nothing was registered: the next id is still 1.
  ASSERT_LLM(LLM_SUCCESS, kv.Register(*prompt_, std::vector<CacheKey>(8, Placeholder(kPromptId))));
  EXPECT_EQ(1, kv.id);
}

TEST_F(KeyedPair, NewestRegistrationWinsAndRefreshFindsIt) {
  Kv first(10), second(20);
  ASSERT_LLM(LLM_SUCCESS, first.Register(*prompt_, {BlocksKey(kPromptId, 1)}));
  CacheIndex index;
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 1), &index));
  EXPECT_EQ(first.id, index.cache_id);
  // The owner replaces the cache under the same key.
  ASSERT_LLM(LLM_SUCCESS, prompt_->UnregisterKvCache(first.id));
  ASSERT_LLM(LLM_SUCCESS, second.Register(*prompt_, {BlocksKey(kPromptId, 1)}));
  // The cached answer names the old cache: the transfer says so, a refresh finds the new one.
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 1), &index));
  EXPECT_EQ(first.id, index.cache_id);
  Kv local(30);
  ASSERT_LLM(LLM_SUCCESS, local.Register(*decoder_, {}));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PullKvBlocks(index, local.AsCache(), {0}, {0}));
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 1), &index, /*refresh=*/true));
  EXPECT_EQ(second.id, index.cache_id);
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(index, local.AsCache(), {3}, {0}));
  EXPECT_EQ(0, memcmp(local.mem[0].data(), second.mem[0].data() + 3 * 64, 64));
  // Unregistering drops its keys.
  ASSERT_LLM(LLM_SUCCESS, prompt_->UnregisterKvCache(second.id));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, Find(BlocksKey(kPromptId, 1), &index, true));
}

TEST_F(KeyedPair, RemoteNoneRefusesPeersOnly) {
  Kv hidden(40), local(41);
  RegisterCfg cfg{};
  llmdd_ext::SetRemoteAccess(cfg, llmdd_ext::kRemoteNone);
  ASSERT_LLM(LLM_SUCCESS, hidden.Register(*prompt_, {BlocksKey(kPromptId, 2)}, cfg));
  ASSERT_LLM(LLM_SUCCESS, local.Register(*decoder_, {}, cfg));
  const auto before = local.mem;
  CacheIndex index;
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 2), &index));
  // The peer's cache is out of reach both ways, and nothing moved ...
  EXPECT_LLM(LLM_PARAM_INVALID, decoder_->PullKvBlocks(index, local.AsCache(), {0}, {0}));
  EXPECT_LLM(LLM_PARAM_INVALID, decoder_->PushKvBlocks(local.AsCache(), index, {0}, {0}));
  EXPECT_EQ(before, local.mem);
  // ... while a local kRemoteNone cache still takes part in this side's own transfers.
  Kv open(42);
  ASSERT_LLM(LLM_SUCCESS, open.Register(*prompt_, {BlocksKey(kPromptId, 3)}));
  ASSERT_LLM(LLM_SUCCESS, Find(BlocksKey(kPromptId, 3), &index));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(index, local.AsCache(), {4}, {1}));
  EXPECT_EQ(0, memcmp(local.mem[2].data() + 64, open.mem[2].data() + 4 * 64, 64));
}

TEST(LastErrors, KeepsThisThreadsErrorLinesWhateverTheLevel) {
  const llmdd::LogLevel saved = llmdd::CurrentLogLevel();
  llmdd::SetLogLevel(llmdd::LogLevel::kOff);  // not printed, still kept
  LlmDataDist dd(1, LlmRole::kPrompt);
  ASSERT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
  llmdd_ext::ClearLastErrors();
  EXPECT_STREQ("", llmdd_ext::LastErrors());
  int64_t id = 0;
  EXPECT_LLM(LLM_PARAM_INVALID, dd.RegisterKvCache(CacheDesc{}, {}, RegisterCfg{}, id));
  EXPECT_NE(std::string::npos, std::string(llmdd_ext::LastErrors()).find("addrs is empty"))
      << llmdd_ext::LastErrors();
  // The last kMaxThreadErrors lines, oldest first.
  for (int i = 0; i < llmdd::kMaxThreadErrors + 2; ++i) LOG_ERROR("line %d", i);
  EXPECT_EQ("line 2; line 3; line 4; line 5", std::string(llmdd_ext::LastErrors()));
  llmdd_ext::ClearLastErrors();
  EXPECT_STREQ("", llmdd_ext::LastErrors());
  dd.Finalize();
  llmdd::SetLogLevel(saved);
}

}  // namespace
