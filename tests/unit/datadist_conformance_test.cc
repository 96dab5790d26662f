// Conformance of the public LLM-DataDist V2 API (llm_datadist::LlmDataDist) with
// spec section 2 (status codes 2.3, per-call semantics 2.7, geometry 2.8): every
// public call x every status it can return, table-driven, with two or three
// instances in this one process on 127.0.0.1 (a listening "prompt", a client
// "decoder", sometimes a third "probe" client). Listen ports come from binding port
// 0 and reading the kernel's choice back.
//
// Every case asserts the exact status. Transfers that must succeed are checked byte
// for byte against a model built with the spec's copy rules, and every failing
// transfer is followed by a check that no byte of either cache (nor the guard bytes
// around each tensor) changed. Timeouts (LLM_TIMEOUT) need a frozen peer process
// and live in tests/integration/datadist_link_test.cc.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/sync_point.h"
#include "llm_datadist/llm_datadist.h"

namespace {

using namespace llm_datadist;  // NOLINT: API types and status constants
using Clock = std::chrono::steady_clock;
using Blocks = std::vector<uint64_t>;
using Options = std::map<AscendString, AscendString>;

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------
std::string Name(Status s) {
  switch (s) {
    case LLM_SUCCESS:
      return "LLM_SUCCESS";
    case LLM_FAILED:
      return "LLM_FAILED";
    case LLM_WAIT_PROC_TIMEOUT:
      return "LLM_WAIT_PROC_TIMEOUT";
    case LLM_KV_CACHE_NOT_EXIST:
      return "LLM_KV_CACHE_NOT_EXIST";
    case LLM_PARAM_INVALID:
      return "LLM_PARAM_INVALID";
    case LLM_NOT_YET_LINK:
      return "LLM_NOT_YET_LINK";
    case LLM_ALREADY_LINK:
      return "LLM_ALREADY_LINK";
    case LLM_LINK_FAILED:
      return "LLM_LINK_FAILED";
    case LLM_UNLINK_FAILED:
      return "LLM_UNLINK_FAILED";
    case LLM_NOTIFY_PROMPT_UNLINK_FAILED:
      return "LLM_NOTIFY_PROMPT_UNLINK_FAILED";
    case LLM_CLUSTER_NUM_EXCEED_LIMIT:
      return "LLM_CLUSTER_NUM_EXCEED_LIMIT";
    case LLM_PROCESSING_LINK:
      return "LLM_PROCESSING_LINK";
    case LLM_DEVICE_OUT_OF_MEMORY:
      return "LLM_DEVICE_OUT_OF_MEMORY";
    case LLM_EXIST_LINK:
      return "LLM_EXIST_LINK";
    case LLM_FEATURE_NOT_ENABLED:
      return "LLM_FEATURE_NOT_ENABLED";
    case LLM_TIMEOUT:
      return "LLM_TIMEOUT";
    case LLM_LINK_BUSY:
      return "LLM_LINK_BUSY";
    case LLM_OUT_OF_MEMORY:
      return "LLM_OUT_OF_MEMORY";
    default: {
      char buf[32];
      snprintf(buf, sizeof(buf), "status(0x%X)", s);
      return buf;
    }
  }
}

std::string Names(const std::vector<Status> &v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + Name(v[i]);
  return s + "}";
}

#define EXPECT_LLM(expected, actual) EXPECT_EQ(Name(expected), Name(actual))
#define ASSERT_LLM(expected, actual) ASSERT_EQ(Name(expected), Name(actual))

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

// A port the kernel handed out for 127.0.0.1:0 (then closed again: nobody listens).
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

std::string Listen(int port) { return "127.0.0.1:" + std::to_string(port); }

Options Opts(std::initializer_list<std::pair<const char *, std::string>> kv) {
  Options o;
  for (const auto &p : kv) o[AscendString(p.first)] = AscendString(p.second.c_str());
  return o;
}

Options DeviceOnly() { return Opts({{OPTION_DEVICE_ID, "0"}}); }

IpInfo Ip(const std::string &ip, uint16_t port = 0) {
  IpInfo i;
  i.ip = AscendString(ip.c_str());
  i.port = port;
  return i;
}

ClusterInfo Cluster(uint64_t cluster, int port, const std::string &ip = "127.0.0.1") {
  ClusterInfo c;
  c.remote_cluster_id = cluster;
  c.local_ip_infos.push_back(Ip(ip));
  c.remote_ip_infos.push_back(Ip(ip, static_cast<uint16_t>(port)));
  return c;
}

CacheIndex Index(uint64_t cluster, int64_t cache, uint32_t batch = 0) {
  CacheIndex idx{};
  idx.cluster_id = cluster;
  idx.cache_id = cache;
  idx.batch_index = batch;
  return idx;
}

KvCacheExtParam Ext(int32_t s0, int32_t s1, int32_t d0, int32_t d1, uint8_t n) {
  KvCacheExtParam e;
  e.src_layer_range = {s0, s1};
  e.dst_layer_range = {d0, d1};
  e.tensor_num_per_layer = n;
  return e;
}

KvCacheExtParam ExtN(uint8_t n) { return Ext(-1, -1, -1, -1, n); }

// Initializes a listening instance on a free port (retrying when the port was
// taken meanwhile, which Initialize reports as LLM_FAILED); returns the port.
int InitServer(LlmDataDist &dd, Options extra = {}) {
  for (int attempt = 0; attempt < 20; ++attempt) {
    int port = FreePort();
    Options o = extra;
    o[OPTION_DEVICE_ID] = "0";
    o[OPTION_LISTEN_IP_INFO] = AscendString(Listen(port).c_str());
    Status st = dd.Initialize(o);
    if (st == LLM_SUCCESS) return port;
    if (st != LLM_FAILED) {
      ADD_FAILURE() << "Initialize(listen " << port << ") returned " << Name(st);
      return 0;
    }
  }
  ADD_FAILURE() << "no free port for a listening LlmDataDist";
  return 0;
}

// Links `client` to one cluster; returns the overall status (and checks rets).
Status LinkOne(LlmDataDist &client, uint64_t cluster, int port, int32_t timeout_ms = 3000) {
  std::vector<Status> rets;
  Status st = client.LinkLlmClusters({Cluster(cluster, port)}, rets, timeout_ms);
  EXPECT_EQ(1u, rets.size()) << "rets must get one entry per cluster";
  if (rets.size() == 1) {
    EXPECT_LLM(st, rets[0]);
  }
  return st;
}

Status UnlinkOne(LlmDataDist &client, uint64_t cluster, int port, bool force = false, int32_t timeout_ms = 3000) {
  std::vector<Status> rets;
  Status st = client.UnlinkLlmClusters({Cluster(cluster, port)}, rets, timeout_ms, force);
  EXPECT_EQ(1u, rets.size()) << "rets must get one entry per cluster";
  if (rets.size() == 1) {
    EXPECT_LLM(st, rets[0]);
  }
  return st;
}

// ---------------------------------------------------------------------------------
// Kv: a cache in this process; every tensor is surrounded by guard bytes that must
// never change. Bytes are a deterministic function of (seed, tensor, offset).
// ---------------------------------------------------------------------------------
constexpr size_t kGuard = 64;
constexpr uint8_t kGuardByte = 0xEE;

uint8_t PatternByte(uint64_t seed, uint64_t pos) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + pos * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return static_cast<uint8_t>(x ^ (x >> 31));
}

using Model = std::vector<std::vector<uint8_t>>;  // [tensor][byte] without guards

struct Kv {
  Kv(uint32_t tensors, std::vector<int64_t> shape_in, DataType dt_in, size_t elem_bytes)
      : num_tensors(tensors), shape(std::move(shape_in)), dt(dt_in) {
    size_t elems = 1;
    for (int64_t d : shape) elems *= static_cast<size_t>(d);
    tensor_bytes = elems * elem_bytes;
    stride = tensor_bytes / static_cast<size_t>(shape[0]);
    mem.assign(tensors, std::vector<uint8_t>(tensor_bytes + 2 * kGuard, kGuardByte));
  }
  // Default geometry of this file: shape {8, 16} DT_INT32 -> 512 B tensors, 8 rows of 64 B.
  static std::unique_ptr<Kv> Std(uint32_t tensors, uint64_t seed) {
    auto kv = std::make_unique<Kv>(tensors, std::vector<int64_t>{8, 16}, DT_INT32, 4);
    kv->Fill(seed);
    return kv;
  }
  uint8_t *T(uint32_t k) { return mem[k].data() + kGuard; }
  const uint8_t *T(uint32_t k) const { return mem[k].data() + kGuard; }
  void Fill(uint64_t seed) {
    for (uint32_t k = 0; k < num_tensors; ++k)
      for (size_t i = 0; i < tensor_bytes; ++i) T(k)[i] = PatternByte(seed + k, i);
  }
  Model Snapshot() const {
    Model m;
    for (uint32_t k = 0; k < num_tensors; ++k) m.emplace_back(T(k), T(k) + tensor_bytes);
    return m;
  }
  CacheDesc Desc(CachePlacement placement = CachePlacement::kDevice) const {
    CacheDesc d;
    d.placement = placement;
    d.num_tensors = num_tensors;
    d.data_type = dt;
    d.shape = shape;
    return d;
  }
  std::vector<uint64_t> Addrs() const {
    std::vector<uint64_t> a;
    for (uint32_t k = 0; k < num_tensors; ++k) a.push_back(reinterpret_cast<uint64_t>(T(k)));
    return a;
  }
  Status Register(LlmDataDist &dd) { return dd.RegisterKvCache(Desc(), Addrs(), RegisterCfg{}, id); }
  Cache AsCache() const {
    Cache c;
    c.cache_id = id;
    c.cache_desc = Desc();
    for (uint64_t a : Addrs()) c.tensor_addrs.push_back(static_cast<uintptr_t>(a));
    return c;
  }
  // Tensor bytes equal the model and every guard byte is intact.
  ::testing::AssertionResult Matches(const Model &m, const std::string &what) const {
    for (uint32_t k = 0; k < num_tensors; ++k) {
      for (size_t i = 0; i < kGuard; ++i) {
        if (mem[k][i] != kGuardByte || mem[k][kGuard + tensor_bytes + i] != kGuardByte)
          return ::testing::AssertionFailure() << what << ": guard bytes around tensor " << k << " were written";
      }
      for (size_t i = 0; i < tensor_bytes; ++i) {
        if (T(k)[i] != m[k][i]) {
          return ::testing::AssertionFailure()
                 << what << ": tensor " << k << " byte " << i << " (row " << i / stride << ", offset " << i % stride
                 << ") is 0x" << std::hex << int(T(k)[i]) << ", expected 0x" << int(m[k][i]);
        }
      }
    }
    return ::testing::AssertionSuccess();
  }

  uint32_t num_tensors;
  std::vector<int64_t> shape;
  DataType dt;
  size_t tensor_bytes = 0;
  size_t stride = 0;
  std::vector<std::vector<uint8_t>> mem;
  int64_t id = -1;
};

// Spec 2.8.3 applied one block at a time: dst tensor d block db[k] = src tensor s block sb[k].
void ModelBlocks(const Kv &src, Model *dst, size_t stride, const std::vector<std::pair<uint32_t, uint32_t>> &pairs,
                 const Blocks &sb, const Blocks &db) {
  for (const auto &p : pairs)
    for (size_t k = 0; k < sb.size(); ++k)
      std::memcpy((*dst)[p.second].data() + db[k] * stride, src.T(p.first) + sb[k] * stride, stride);
}

void ModelRow(const Kv &src, Model *dst, size_t stride, const std::vector<std::pair<uint32_t, uint32_t>> &pairs,
              uint64_t src_row, uint64_t dst_row, size_t len) {
  for (const auto &p : pairs)
    std::memcpy((*dst)[p.second].data() + dst_row * stride, src.T(p.first) + src_row * stride, len);
}

std::vector<std::pair<uint32_t, uint32_t>> AllPairs(uint32_t n) {
  std::vector<std::pair<uint32_t, uint32_t>> p;
  for (uint32_t i = 0; i < n; ++i) p.emplace_back(i, i);
  return p;
}

std::vector<std::pair<uint32_t, uint32_t>> RangePairs(uint32_t src_first, uint32_t dst_first, uint32_t count) {
  std::vector<std::pair<uint32_t, uint32_t>> p;
  for (uint32_t i = 0; i < count; ++i) p.emplace_back(src_first + i, dst_first + i);
  return p;
}

// One row of a status table.
struct Case {
  std::string name;
  std::function<Status()> call;
  Status expected;
};

void RunTable(const std::vector<Case> &cases) {
  for (const Case &c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_LLM(c.expected, c.call()) << "case: " << c.name;
  }
}

constexpr uint64_t kPromptId = 100;
constexpr uint64_t kDecoderId = 200;
constexpr uint64_t kProbeId = 900;

// =================================================================================
// Initialize / Finalize / lifecycle
// =================================================================================

TEST(DataDistInitialize, RejectsMissingOrBadDeviceId) {
  const std::vector<std::pair<std::string, Options>> cases = {
      {"no llm.DeviceId", Options{}},
      {"empty", Opts({{OPTION_DEVICE_ID, ""}})},
      {"negative", Opts({{OPTION_DEVICE_ID, "-1"}})},
      {"non-numeric", Opts({{OPTION_DEVICE_ID, "abc"}})},
      {"trailing garbage", Opts({{OPTION_DEVICE_ID, "0x"}})},
      {"only listen info", Opts({{OPTION_LISTEN_IP_INFO, Listen(FreePort())}})},
  };
  for (const auto &c : cases) {
    SCOPED_TRACE(c.first);
    LlmDataDist dd(1, LlmRole::kPrompt);
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(c.second));
    // A failed Initialize leaves the instance uninitialized, and usable.
    int64_t id = 0;
    Kv kv(1, {2, 4}, DT_UINT8, 1);
    EXPECT_LLM(LLM_FAILED, dd.RegisterKvCache(kv.Desc(), kv.Addrs(), RegisterCfg{}, id));
    EXPECT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
    dd.Finalize();
  }
}

TEST(DataDistInitialize, RejectsBadListenIpInfo) {
  for (const std::string bad : {"", "127.0.0.1", "abc:1234", "127.0.0.1:port", "127.0.0.1:-1", "127.0.0.1:1:2",
                                "256.0.0.1:1234", "1.2.3:1234", "[::1]", "::1:1234", "[::1:1234", ":1234"}) {
    SCOPED_TRACE("llm.ListenIpInfo='" + bad + "'");
    LlmDataDist dd(1, LlmRole::kPrompt);
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_LISTEN_IP_INFO, bad}})));
  }
}

TEST(DataDistInitialize, RejectsBadSyncKvCacheWaitTime) {
  for (const std::string bad : {"abc", "0", "-5", "", "1.5", " 100", "+100", "12a", "00"}) {
    SCOPED_TRACE("llm.SyncKvCacheWaitTime='" + bad + "'");
    LlmDataDist dd(1, LlmRole::kDecoder);
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_SYNC_CACHE_WAIT_TIME, bad}})));
  }
  for (const std::string good : {"1", "1000", "60000"}) {
    SCOPED_TRACE("llm.SyncKvCacheWaitTime='" + good + "'");
    LlmDataDist dd(1, LlmRole::kDecoder);
    EXPECT_LLM(LLM_SUCCESS, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_SYNC_CACHE_WAIT_TIME, good}})));
  }
}

TEST(DataDistInitialize, RejectsInvalidRole) {
  for (int32_t role : {0, 4, 7, -1}) {
    SCOPED_TRACE("role " + std::to_string(role));
    LlmDataDist dd(1, static_cast<LlmRole>(role));
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(DeviceOnly()));
  }
  for (LlmRole role : {LlmRole::kPrompt, LlmRole::kDecoder, LlmRole::kMix}) {
    SCOPED_TRACE("role " + std::to_string(static_cast<int>(role)));
    LlmDataDist dd(1, role);
    EXPECT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
  }
}

TEST(DataDistInitialize, AcceptsV1OnlyOptions) {
  auto kv = Kv::Std(2, 1);  // declared first: outlives the instance it is registered with
  LlmDataDist dd(1, LlmRole::kPrompt);
  EXPECT_LLM(LLM_SUCCESS,
             dd.Initialize(Opts(
                 {{OPTION_DEVICE_ID, "0"},
                  {OPTION_BUF_POOL_CFG, R"({"buf_cfg":[{"total_size":2097152,"blk_size":256,"max_buf_size":8192}],)"
                                        R"("buf_pool_size":2147483648})"},
                  {OPTION_ENABLE_SET_ROLE, "1"}})));
  // Still a working instance.
  EXPECT_LLM(LLM_SUCCESS, kv->Register(dd));
  EXPECT_EQ(1, kv->id);
}

// The later options (CANN 2026): llm.TransferBackend "hixl" needs a listen
// address and keeps it; llm.GlobalResourceConfig is checked as HIXL checks it.
TEST(DataDistInitialize, TransferBackendHixlNeedsAndKeepsTheListenAddress) {
  {
    LlmDataDist dd(1, LlmRole::kDecoder);
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_TRANSFER_BACKEND, "hixl"}})))
        << "the HIXL backend without llm.ListenIpInfo";
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"},
                                                      {OPTION_LISTEN_IP_INFO, Listen(FreePort())},
                                                      {OPTION_TRANSFER_BACKEND, "hccl"}})))
        << "a backend that does not exist";
  }
  LlmDataDist server(kPromptId, LlmRole::kPrompt);
  const int port = InitServer(server, Opts({{OPTION_TRANSFER_BACKEND, "hixl"}}));
  ASSERT_NE(0, port);
  LlmDataDist client(kDecoderId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, client.Initialize(DeviceOnly()));
  // Another address is refused; the same one, or none, changes only the role,
  // and the instance stays reachable where it was.
  EXPECT_LLM(LLM_PARAM_INVALID, server.SetRole(LlmRole::kDecoder, Opts({{OPTION_LISTEN_IP_INFO, Listen(FreePort())}})));
  EXPECT_LLM(LLM_SUCCESS, server.SetRole(LlmRole::kDecoder));
  EXPECT_LLM(LLM_SUCCESS, LinkOne(client, kPromptId, port)) << "still listening after SetRole without an address";
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(client, kPromptId, port));
  EXPECT_LLM(LLM_SUCCESS, server.SetRole(LlmRole::kPrompt, Opts({{OPTION_LISTEN_IP_INFO, Listen(port)}})));
  EXPECT_LLM(LLM_SUCCESS, LinkOne(client, kPromptId, port));
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(client, kPromptId, port));
}

TEST(DataDistInitialize, GlobalResourceConfigIsCheckedAsHixlChecksIt) {
  for (const std::string bad : {"not json", R"({"channel_pool.max_channel":"0"})",
                                R"({"channel_pool.max_channel":"10","channel_pool.high_waterline":"0.3"})",
                                R"({"connect_pool.thread_num":"-1"})"}) {
    SCOPED_TRACE("llm.GlobalResourceConfig='" + bad + "'");
    LlmDataDist dd(1, LlmRole::kDecoder);
    EXPECT_LLM(LLM_PARAM_INVALID, dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_GLOBAL_RESOURCE_CONFIG, bad}})));
  }
  // A valid channel pool is accepted and does not evict links: two links
  // stay usable with a pool whose high waterline is one channel.
  LlmDataDist a(kPromptId, LlmRole::kPrompt), b(kPromptId + 1, LlmRole::kPrompt);
  const int port_a = InitServer(a), port_b = InitServer(b);
  ASSERT_NE(0, port_a);
  ASSERT_NE(0, port_b);
  LlmDataDist client(kDecoderId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS,
             client.Initialize(Opts({{OPTION_DEVICE_ID, "0"},
                                     {OPTION_GLOBAL_RESOURCE_CONFIG,
                                      R"({"channel_pool.max_channel":"2","channel_pool.high_waterline":"0.9",)"
                                      R"("channel_pool.low_waterline":"0.4","connect_pool.thread_num":"2"})"}})));
  EXPECT_LLM(LLM_SUCCESS, LinkOne(client, kPromptId, port_a));
  EXPECT_LLM(LLM_SUCCESS, LinkOne(client, kPromptId + 1, port_b));
  EXPECT_LLM(LLM_ALREADY_LINK, LinkOne(client, kPromptId, port_a)) << "the first link is still there";
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(client, kPromptId, port_a));
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(client, kPromptId + 1, port_b));
}

TEST(DataDistInitialize, SecondInitializeSucceedsWithoutEffect) {
  LlmDataDist server(kPromptId, LlmRole::kPrompt);
  const int port = InitServer(server);
  ASSERT_NE(0, port);
  // Returns success even with options that would be rejected the first time...
  EXPECT_LLM(LLM_SUCCESS, server.Initialize(DeviceOnly()));
  EXPECT_LLM(LLM_SUCCESS, server.Initialize(Options{}));
  // ...and does not start a listener on a new port.
  const int other = FreePort();
  EXPECT_LLM(LLM_SUCCESS, server.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_LISTEN_IP_INFO, Listen(other)}})));
  LlmDataDist client(kDecoderId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, client.Initialize(DeviceOnly()));
  Status st = LinkOne(client, kPromptId, other, 500);
  EXPECT_TRUE(st == LLM_LINK_FAILED || st == LLM_TIMEOUT) << Name(st);
  EXPECT_LLM(LLM_SUCCESS, LinkOne(client, kPromptId, port));
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(client, kPromptId, port));
}

TEST(DataDistLifecycle, EveryCallBeforeInitializeFails) {
  auto kv = Kv::Std(2, 1);
  LlmDataDist dd(1, LlmRole::kDecoder);
  Cache cache = kv->AsCache();
  cache.cache_id = 1;
  std::vector<Status> rets;
  int64_t id = 0;
  const std::vector<Case> cases = {
      {"SetRole", [&] { return dd.SetRole(LlmRole::kPrompt); }, LLM_FAILED},
      {"SetRole with listen",
       [&] {
         return dd.SetRole(LlmRole::kPrompt, Opts({{OPTION_LISTEN_IP_INFO, Listen(FreePort())}}));
       },
       LLM_FAILED},
      {"LinkLlmClusters", [&] { return dd.LinkLlmClusters({Cluster(2, FreePort())}, rets, 1000); }, LLM_FAILED},
      {"UnlinkLlmClusters", [&] { return dd.UnlinkLlmClusters({Cluster(2, FreePort())}, rets, 1000, false); },
       LLM_FAILED},
      {"UnlinkLlmClusters forced", [&] { return dd.UnlinkLlmClusters({Cluster(2, FreePort())}, rets, 1000, true); },
       LLM_FAILED},
      {"RegisterKvCache", [&] { return dd.RegisterKvCache(kv->Desc(), kv->Addrs(), RegisterCfg{}, id); }, LLM_FAILED},
      {"UnregisterKvCache", [&] { return dd.UnregisterKvCache(1); }, LLM_FAILED},
      {"PullKvCache", [&] { return dd.PullKvCache(Index(2, 1), cache); }, LLM_FAILED},
      {"PullKvBlocks", [&] { return dd.PullKvBlocks(Index(2, 1), cache, {0}, {0}); }, LLM_FAILED},
      {"PushKvCache", [&] { return dd.PushKvCache(cache, Index(2, 1)); }, LLM_FAILED},
      {"PushKvBlocks", [&] { return dd.PushKvBlocks(cache, Index(2, 1), {0}, {0}); }, LLM_FAILED},
      {"AllocateCache (V1)", [&] { return dd.AllocateCache(kv->Desc(), cache); }, LLM_FEATURE_NOT_ENABLED},
      {"DeallocateCache (V1)", [&] { return dd.DeallocateCache(1); }, LLM_FEATURE_NOT_ENABLED},
      {"CopyKvCache (V1)", [&] { return dd.CopyKvCache(cache, cache); }, LLM_FEATURE_NOT_ENABLED},
      {"CopyKvBlocks (V1)", [&] { return dd.CopyKvBlocks(cache, cache, {0}, {{1}}); }, LLM_FEATURE_NOT_ENABLED},
  };
  RunTable(cases);
  EXPECT_TRUE(rets.empty()) << "rets of calls rejected before Initialize: " << Names(rets);
  EXPECT_TRUE(kv->Matches(Kv::Std(2, 1)->Snapshot(), "cache after rejected calls"));

  // Finalize before Initialize is a no-op; the instance can still be initialized.
  dd.Finalize();
  dd.Finalize();
  ASSERT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
  // V1 stubs stay unsupported after Initialize.
  EXPECT_LLM(LLM_FEATURE_NOT_ENABLED, dd.AllocateCache(kv->Desc(), cache));
  EXPECT_LLM(LLM_FEATURE_NOT_ENABLED, dd.DeallocateCache(1));
  EXPECT_LLM(LLM_FEATURE_NOT_ENABLED, dd.CopyKvCache(cache, cache, 0, 1, 0, -1));
  EXPECT_LLM(LLM_FEATURE_NOT_ENABLED, dd.CopyKvBlocks(cache, cache, {0}, {{1}, {2}}));
  EXPECT_TRUE(cache.tensor_addrs == kv->AsCache().tensor_addrs) << "AllocateCache must not touch the Cache";

  // After Finalize every call fails again, and Finalize stays idempotent.
  dd.Finalize();
  rets.clear();
  RunTable(cases);
  dd.Finalize();
}

TEST(DataDistLifecycle, DestructorWithoutFinalizeWithLiveLinkAndCaches) {
  auto pk = Kv::Std(2, 10);
  auto dk = Kv::Std(2, 20);
  const auto t0 = Clock::now();
  {
    LlmDataDist prompt(kPromptId, LlmRole::kPrompt);
    const int port = InitServer(prompt);
    ASSERT_NE(0, port);
    LlmDataDist decoder(kDecoderId, LlmRole::kDecoder);
    ASSERT_LLM(LLM_SUCCESS, decoder.Initialize(DeviceOnly()));
    ASSERT_LLM(LLM_SUCCESS, pk->Register(prompt));
    ASSERT_LLM(LLM_SUCCESS, dk->Register(decoder));
    ASSERT_LLM(LLM_SUCCESS, LinkOne(decoder, kPromptId, port));
    ASSERT_LLM(LLM_SUCCESS, decoder.PullKvBlocks(Index(kPromptId, pk->id), dk->AsCache(), {0}, {1}));
    // Both destroyed here, linked, with registered caches, no Finalize.
  }
  EXPECT_LT(MsSince(t0), 15000) << "destruction without Finalize took too long";
  {
    // Finalize then destructor; and an instance that was never initialized.
    LlmDataDist a(1, LlmRole::kMix);
    ASSERT_LLM(LLM_SUCCESS, a.Initialize(DeviceOnly()));
    a.Finalize();
    LlmDataDist b(2, LlmRole::kMix);
  }
}

// =================================================================================
// RegisterKvCache / UnregisterKvCache
// =================================================================================

TEST(DataDistRegister, ValidationFailures) {
  std::vector<uint8_t> mem(4096);  // outlives the instance it is registered with
  LlmDataDist dd(1, LlmRole::kPrompt);
  ASSERT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
  const uint64_t a0 = reinterpret_cast<uint64_t>(mem.data());
  const uint64_t a1 = a0 + 1024;
  const uint64_t a2 = a0 + 2048;
  auto desc = [](uint32_t n, DataType dt, std::vector<int64_t> shape) {
    CacheDesc d;
    d.num_tensors = n;
    d.data_type = dt;
    d.shape = std::move(shape);
    return d;
  };
  CacheDesc default_type{};  // data_type defaults to DT_UNDEFINED
  default_type.num_tensors = 1;
  default_type.shape = {4, 4};
  std::vector<int64_t> dims31(31, 1), dims32(32, 1);
  dims31[0] = 2;
  dims32[0] = 2;
  int64_t id = 12345;
  auto reg = [&](const CacheDesc &d, const std::vector<uint64_t> &addrs) {
    return [&dd, d, addrs, &id] { return dd.RegisterKvCache(d, addrs, RegisterCfg{}, id); };
  };
  RunTable({
      {"addrs empty", reg(desc(0, DT_INT32, {4, 4}), {}), LLM_PARAM_INVALID},
      {"addrs empty, num_tensors 1", reg(desc(1, DT_INT32, {4, 4}), {}), LLM_PARAM_INVALID},
      {"addrs.size 2 != num_tensors 3", reg(desc(3, DT_INT32, {4, 4}), {a0, a1}), LLM_PARAM_INVALID},
      {"addrs.size 3 != num_tensors 2", reg(desc(2, DT_INT32, {4, 4}), {a0, a1, a2}), LLM_PARAM_INVALID},
      {"an address is 0", reg(desc(3, DT_INT32, {4, 4}), {a0, 0, a2}), LLM_PARAM_INVALID},
      {"shape empty", reg(desc(1, DT_INT32, {}), {a0}), LLM_PARAM_INVALID},
      {"32 dims", reg(desc(1, DT_INT32, dims32), {a0}), LLM_PARAM_INVALID},
      {"dim 0", reg(desc(1, DT_INT32, {4, 0}), {a0}), LLM_PARAM_INVALID},
      {"shape[0] 0", reg(desc(1, DT_INT32, {0, 4}), {a0}), LLM_PARAM_INVALID},
      {"dim -1", reg(desc(1, DT_INT32, {4, -1}), {a0}), LLM_PARAM_INVALID},
      {"size overflow", reg(desc(1, DT_INT32, {std::numeric_limits<int64_t>::max(), 16}), {a0}), LLM_PARAM_INVALID},
      {"size overflow (elements)",
       reg(desc(1, DT_UINT8, {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max()}), {a0}),
       LLM_PARAM_INVALID},
      {"DT_UNDEFINED default", reg(default_type, {a0}), LLM_PARAM_INVALID},
      {"DT_UNDEFINED explicit", reg(desc(1, DT_UNDEFINED, {4, 4}), {a0}), LLM_PARAM_INVALID},
      {"reserved data type 5", reg(desc(1, static_cast<DataType>(5), {4, 4}), {a0}), LLM_PARAM_INVALID},
      {"DT_MAX", reg(desc(1, ge::DT_MAX, {4, 4}), {a0}), LLM_PARAM_INVALID},
      {"data type 60 (unknown)", reg(desc(1, static_cast<DataType>(60), {4, 4}), {a0}), LLM_PARAM_INVALID},
  });
  EXPECT_EQ(12345, id) << "cache_id must not be written by a failed RegisterKvCache";
  // Failures did not consume ids: the first success gets 1.
  EXPECT_LLM(LLM_SUCCESS, dd.RegisterKvCache(desc(1, DT_INT32, dims31), {a0}, RegisterCfg{}, id));
  EXPECT_EQ(1, id) << "31 dims are allowed and ids start at 1";
  EXPECT_LLM(LLM_SUCCESS, dd.RegisterKvCache(desc(1, DT_INT4, {8, 3}), {a1}, RegisterCfg{}, id));
  EXPECT_EQ(2, id) << "sub-byte type";
  EXPECT_LLM(LLM_SUCCESS, dd.RegisterKvCache(desc(1, DT_BF16, {4, 4}), {a2}, RegisterCfg{}, id));
  EXPECT_EQ(3, id);
}

TEST(DataDistRegister, IdsStartAtOneAndAreNeverReused) {
  auto a = Kv::Std(2, 1), b = Kv::Std(2, 2), c = Kv::Std(2, 3);
  LlmDataDist dd(1, LlmRole::kPrompt);
  ASSERT_LLM(LLM_SUCCESS, dd.Initialize(DeviceOnly()));
  ASSERT_LLM(LLM_SUCCESS, a->Register(dd));
  ASSERT_LLM(LLM_SUCCESS, b->Register(dd));
  ASSERT_LLM(LLM_SUCCESS, c->Register(dd));
  EXPECT_EQ(1, a->id);
  EXPECT_EQ(2, b->id);
  EXPECT_EQ(3, c->id);
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(2));
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(2)) << "second unregister of the same id";
  EXPECT_LLM(LLM_SUCCESS, b->Register(dd));
  EXPECT_EQ(4, b->id) << "id 2 must not be reused";
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(4));
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(3));
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(1));
  // The same memory registered twice (de-duplicated registration) and host placement.
  ASSERT_LLM(LLM_SUCCESS, a->Register(dd));
  EXPECT_EQ(5, a->id);
  int64_t id = 0;
  EXPECT_LLM(LLM_SUCCESS, dd.RegisterKvCache(a->Desc(), a->Addrs(), RegisterCfg{}, id));
  EXPECT_EQ(6, id) << "same addresses in a second cache";
  EXPECT_LLM(LLM_SUCCESS, dd.RegisterKvCache(c->Desc(CachePlacement::kHost), c->Addrs(), RegisterCfg{}, id));
  EXPECT_EQ(7, id) << "host placement";
  // Unregistering one of two caches over the same memory keeps the other usable.
  EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(5));
  // Unknown ids: success.
  for (int64_t unknown : {int64_t{0}, int64_t{-1}, int64_t{99}, std::numeric_limits<int64_t>::max()}) {
    EXPECT_LLM(LLM_SUCCESS, dd.UnregisterKvCache(unknown)) << "unknown id " << unknown;
  }
  // A second instance has its own counter.
  LlmDataDist other(2, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, other.Initialize(DeviceOnly()));
  EXPECT_LLM(LLM_SUCCESS, other.RegisterKvCache(a->Desc(), a->Addrs(), RegisterCfg{}, id));
  EXPECT_EQ(1, id);
}

// =================================================================================
// A linked prompt (listening, cluster 100) and decoder (client, cluster 200).
// Both register 4 tensors of shape {8, 16} DT_INT32 (512 B, 8 rows of 64 B): the
// prompt's cache 1 holds pattern seed 11, the decoder's cache 1 pattern seed 22.
// =================================================================================
class LinkedPair : public ::testing::Test {
 protected:
  void SetUp() override {
    prompt_ = std::make_unique<LlmDataDist>(kPromptId, LlmRole::kPrompt);
    port_ = InitServer(*prompt_);
    ASSERT_NE(0, port_);
    decoder_ = std::make_unique<LlmDataDist>(kDecoderId, LlmRole::kDecoder);
    ASSERT_LLM(LLM_SUCCESS, decoder_->Initialize(DeviceOnly()));
    pk_ = Kv::Std(4, 11);
    dk_ = Kv::Std(4, 22);
    ASSERT_LLM(LLM_SUCCESS, pk_->Register(*prompt_));
    ASSERT_LLM(LLM_SUCCESS, dk_->Register(*decoder_));
    ASSERT_EQ(1, pk_->id);
    ASSERT_EQ(1, dk_->id);
    ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
    p0_ = pk_->Snapshot();
    d0_ = dk_->Snapshot();
  }
  void TearDown() override {
    if (decoder_) decoder_->Finalize();
    if (prompt_) prompt_->Finalize();
  }
  // Neither cache changed (used after rejected transfers).
  void ExpectUnchanged(const std::string &what) {
    EXPECT_TRUE(pk_->Matches(p0_, what + ": prompt cache"));
    EXPECT_TRUE(dk_->Matches(d0_, what + ": decoder cache"));
  }
  // Unlink + link again, so caches registered meanwhile are known "before the link"
  // (the CANN rule), keeping the error tables independent of the register-after-link
  // behaviour tested on its own.
  void Relink() {
    ASSERT_LLM(LLM_SUCCESS, UnlinkOne(*decoder_, kPromptId, port_));
    ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  }
  Cache DCache() const { return dk_->AsCache(); }
  Cache PCache() const { return pk_->AsCache(); }
  CacheIndex ToPrompt(int64_t cache = 1, uint32_t batch = 0) const { return Index(kPromptId, cache, batch); }
  CacheIndex ToDecoder(int64_t cache = 1, uint32_t batch = 0) const { return Index(kDecoderId, cache, batch); }

  // Caches created by a test body; they outlive both instances (never freed while registered).
  Kv *Keep(std::unique_ptr<Kv> kv) {
    keep_.push_back(std::move(kv));
    return keep_.back().get();
  }

  std::vector<std::unique_ptr<Kv>> keep_;
  std::unique_ptr<LlmDataDist> prompt_, decoder_;
  int port_ = 0;
  std::unique_ptr<Kv> pk_, dk_;
  Model p0_, d0_;
};

// ---------------------------------------------------------------------------------
// SetRole
// ---------------------------------------------------------------------------------
TEST_F(LinkedPair, SetRoleChecksRoleAndListenBeforeLinks) {
  auto listen = [](const std::string &v) { return Opts({{OPTION_LISTEN_IP_INFO, v}}); };
  for (LlmDataDist *dd : {decoder_.get(), prompt_.get()}) {
    const std::string side = dd == decoder_.get() ? "decoder (client side)" : "prompt (listening side)";
    SCOPED_TRACE(side);
    RunTable({
        {"invalid role 0", [&] { return dd->SetRole(static_cast<LlmRole>(0)); }, LLM_PARAM_INVALID},
        {"invalid role 7", [&] { return dd->SetRole(static_cast<LlmRole>(7)); }, LLM_PARAM_INVALID},
        {"invalid role kEnd", [&] { return dd->SetRole(LlmRole::kEnd); }, LLM_PARAM_INVALID},
        {"bad listen (no port)", [&] { return dd->SetRole(LlmRole::kPrompt, listen("127.0.0.1")); }, LLM_PARAM_INVALID},
        {"bad listen (ip)", [&] { return dd->SetRole(LlmRole::kPrompt, listen("x.y:1234")); }, LLM_PARAM_INVALID},
        {"bad listen (empty)", [&] { return dd->SetRole(LlmRole::kPrompt, listen("")); }, LLM_PARAM_INVALID},
        {"valid role, link exists", [&] { return dd->SetRole(LlmRole::kMix); }, LLM_EXIST_LINK},
        {"valid role + listen, link exists", [&] { return dd->SetRole(LlmRole::kPrompt, listen(Listen(FreePort()))); },
         LLM_EXIST_LINK},
    });
  }
  // The link survived every rejected SetRole.
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*decoder_, kPromptId, port_));
  EXPECT_LLM(LLM_SUCCESS, decoder_->SetRole(LlmRole::kDecoder));
  EXPECT_LLM(LLM_SUCCESS, prompt_->SetRole(LlmRole::kPrompt, listen(Listen(port_))));
}

TEST(DataDistSetRole, ListenerStartStopAndChange) {
  LlmDataDist node(300, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, node.Initialize(DeviceOnly()));
  LlmDataDist probe(kProbeId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, probe.Initialize(DeviceOnly()));
  auto reachable = [&](int port) {
    Status st = LinkOne(probe, 300, port, 1000);
    if (st == LLM_SUCCESS) {
      EXPECT_LLM(LLM_SUCCESS, UnlinkOne(probe, 300, port));
      return true;
    }
    EXPECT_TRUE(st == LLM_LINK_FAILED || st == LLM_TIMEOUT) << "link to a closed port: " << Name(st);
    return false;
  };
  auto listen = [](int port) { return Opts({{OPTION_LISTEN_IP_INFO, Listen(port)}}); };

  // Not listening + no option: no change.
  EXPECT_LLM(LLM_SUCCESS, node.SetRole(LlmRole::kDecoder));
  // Start listening on A.
  int a = 0;
  Status st = LLM_FAILED;
  for (int attempt = 0; attempt < 10 && st != LLM_SUCCESS; ++attempt) {
    a = FreePort();
    st = node.SetRole(LlmRole::kPrompt, listen(a));
  }
  ASSERT_LLM(LLM_SUCCESS, st);
  EXPECT_TRUE(reachable(a)) << "after SetRole(listen A)";
  // Same port: no change, still reachable.
  EXPECT_LLM(LLM_SUCCESS, node.SetRole(LlmRole::kMix, listen(a)));
  EXPECT_TRUE(reachable(a)) << "after SetRole(listen A) again";
  // Change to B: A closed, B open.
  int b = 0;
  st = LLM_FAILED;
  for (int attempt = 0; attempt < 10 && st != LLM_SUCCESS; ++attempt) {
    b = FreePort();
    if (b == a) continue;
    st = node.SetRole(LlmRole::kPrompt, listen(b));
  }
  ASSERT_LLM(LLM_SUCCESS, st);
  EXPECT_FALSE(reachable(a)) << "old port A must be closed after switching to B";
  EXPECT_TRUE(reachable(b)) << "after SetRole(listen B)";
  // No option while listening: stop.
  EXPECT_LLM(LLM_SUCCESS, node.SetRole(LlmRole::kDecoder));
  EXPECT_FALSE(reachable(b)) << "after SetRole without listen option";
  EXPECT_LLM(LLM_SUCCESS, node.SetRole(LlmRole::kDecoder));
  EXPECT_FALSE(reachable(b));

  // The listener started by Initialize is stopped the same way.
  LlmDataDist server(301, LlmRole::kPrompt);
  const int port = InitServer(server);
  ASSERT_NE(0, port);
  std::vector<Status> rets;
  ASSERT_LLM(LLM_SUCCESS, probe.LinkLlmClusters({Cluster(301, port)}, rets, 1000));
  ASSERT_LLM(LLM_SUCCESS, probe.UnlinkLlmClusters({Cluster(301, port)}, rets, 1000));
  EXPECT_LLM(LLM_SUCCESS, server.SetRole(LlmRole::kDecoder));
  rets.clear();
  st = probe.LinkLlmClusters({Cluster(301, port)}, rets, 1000);
  EXPECT_TRUE(st == LLM_LINK_FAILED || st == LLM_TIMEOUT) << Name(st);
}

// ---------------------------------------------------------------------------------
// LinkLlmClusters
// ---------------------------------------------------------------------------------
TEST_F(LinkedPair, LinkArgumentValidation) {
  LlmDataDist probe(kProbeId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, probe.Initialize(DeviceOnly()));
  std::vector<Status> rets;
  auto link = [&](std::vector<ClusterInfo> clusters, int32_t timeout = 1000) {
    return [&probe, &rets, clusters, timeout] { return probe.LinkLlmClusters(clusters, rets, timeout); };
  };
  ClusterInfo good = Cluster(kPromptId, port_);
  ClusterInfo bad_remote_ip = good;
  bad_remote_ip.remote_ip_infos[0].ip = "abc";
  ClusterInfo empty_remote_ip = good;
  empty_remote_ip.remote_ip_infos[0].ip = "";
  ClusterInfo short_remote_ip = good;
  short_remote_ip.remote_ip_infos[0].ip = "127.0.1";
  ClusterInfo bad_octet = good;
  bad_octet.remote_ip_infos[0].ip = "127.0.0.256";
  ClusterInfo bad_local_ip = good;
  bad_local_ip.local_ip_infos[0].ip = "not-an-ip";
  ClusterInfo no_remote = good;
  no_remote.remote_ip_infos.clear();
  ClusterInfo two_remotes = good;
  two_remotes.remote_ip_infos.push_back(good.remote_ip_infos[0]);
  ClusterInfo no_local = good;
  no_local.local_ip_infos.clear();
  RunTable({
      {"timeout 0", link({good}, 0), LLM_PARAM_INVALID},
      {"timeout -1", link({good}, -1), LLM_PARAM_INVALID},
      {"clusters empty", link({}), LLM_PARAM_INVALID},
      {"remote ip 'abc'", link({bad_remote_ip}), LLM_PARAM_INVALID},
      {"remote ip ''", link({empty_remote_ip}), LLM_PARAM_INVALID},
      {"remote ip '127.0.1'", link({short_remote_ip}), LLM_PARAM_INVALID},
      {"remote ip '127.0.0.256'", link({bad_octet}), LLM_PARAM_INVALID},
      {"local ip invalid", link({bad_local_ip}), LLM_PARAM_INVALID},
      {"remote_ip_infos empty", link({no_remote}), LLM_PARAM_INVALID},
      {"remote_ip_infos size 2", link({two_remotes}), LLM_PARAM_INVALID},
      {"local_ip_infos empty (no local comm res)", link({no_local}), LLM_PARAM_INVALID},
  });
  // Nothing was linked by the rejected calls.
  Kv *pkv = Keep(Kv::Std(4, 5));
  ASSERT_LLM(LLM_SUCCESS, pkv->Register(probe));
  EXPECT_LLM(LLM_NOT_YET_LINK, probe.PullKvBlocks(ToPrompt(), pkv->AsCache(), {0}, {0}));
  EXPECT_LLM(LLM_SUCCESS, probe.SetRole(LlmRole::kDecoder)) << "no link may exist after rejected link calls";
  // One malformed cluster among good ones makes the call fail.
  EXPECT_LLM(LLM_PARAM_INVALID, probe.LinkLlmClusters({good, no_remote}, rets, 1000));
}

TEST_F(LinkedPair, AlreadyLinkAndRetsAppendedInOrder) {
  std::vector<Status> rets = {0xDEADu};
  EXPECT_LLM(LLM_ALREADY_LINK, decoder_->LinkLlmClusters({Cluster(kPromptId, port_)}, rets, 1000));
  EXPECT_EQ(Names({0xDEADu, LLM_ALREADY_LINK}), Names(rets)) << "rets must be appended to";
  // The existing link still works.
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {2}, {2}));

  // Several clusters: [prompt2, nobody, prompt3] -> rets in input order.
  LlmDataDist prompt2(101, LlmRole::kPrompt), prompt3(102, LlmRole::kPrompt);
  const int port2 = InitServer(prompt2), port3 = InitServer(prompt3);
  ASSERT_NE(0, port2);
  ASSERT_NE(0, port3);
  Kv *k2 = Keep(Kv::Std(4, 31)), *k3 = Keep(Kv::Std(4, 32));
  ASSERT_LLM(LLM_SUCCESS, k2->Register(prompt2));
  ASSERT_LLM(LLM_SUCCESS, k3->Register(prompt3));
  const int closed = FreePort();
  rets = {0xBEEFu};
  const auto t0 = Clock::now();
  Status st = decoder_->LinkLlmClusters({Cluster(101, port2), Cluster(103, closed), Cluster(102, port3)}, rets, 1000);
  const int64_t ms = MsSince(t0);
  ASSERT_EQ(4u, rets.size()) << Names(rets);
  EXPECT_LLM(0xBEEFu, rets[0]);
  EXPECT_LLM(LLM_SUCCESS, rets[1]);
  EXPECT_TRUE(rets[2] == LLM_LINK_FAILED || rets[2] == LLM_TIMEOUT) << "nobody listening: " << Name(rets[2]);
  EXPECT_LLM(LLM_SUCCESS, rets[3]);
  EXPECT_LLM(rets[2], st) << "overall status must be the failing cluster's";
  EXPECT_LT(ms, 1000 + 1500) << "Link to a closed port must return within its timeout";
  // Linked ones are usable, the failed one is not.
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvCache(Index(101, 1, 0), DCache(), 0));
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvCache(Index(102, 1, 1), DCache(), 1));
  EXPECT_LLM(LLM_NOT_YET_LINK, decoder_->PullKvCache(Index(103, 1, 0), DCache(), 0));
  Model want = d0_;
  ModelRow(*k2, &want, 64, AllPairs(4), 0, 0, 64);
  ModelRow(*k3, &want, 64, AllPairs(4), 1, 1, 64);
  ModelBlocks(*pk_, &want, 64, AllPairs(4), {2}, {2});
  EXPECT_TRUE(dk_->Matches(want, "pulls from three linked prompts"));

  // Mixed: one already linked, one new (nobody) -> per-cluster codes in order.
  rets.clear();
  st = decoder_->LinkLlmClusters({Cluster(102, port3), Cluster(104, closed)}, rets, 500);
  ASSERT_EQ(2u, rets.size());
  EXPECT_LLM(LLM_ALREADY_LINK, rets[0]);
  EXPECT_TRUE(rets[1] == LLM_LINK_FAILED || rets[1] == LLM_TIMEOUT) << Name(rets[1]);
  EXPECT_NE(LLM_SUCCESS, st);

  rets.clear();
  EXPECT_LLM(LLM_SUCCESS, decoder_->UnlinkLlmClusters({Cluster(101, port2), Cluster(102, port3)}, rets, 1000));
  EXPECT_EQ(Names({LLM_SUCCESS, LLM_SUCCESS}), Names(rets));
}

// Spec 2.7 (LinkLlmClusters): local_ip_infos.size() != 1 is rejected only "if no
// local comm res is known yet". The comm res becomes known from llm.LocalCommRes,
// from the listen IP at Initialize, or from local_ip_infos[0] at the first link; after
// that a ClusterInfo without local_ip_infos is valid.
TEST_F(LinkedPair, EmptyLocalIpInfosOnceLocalCommResIsKnown) {
  LlmDataDist other(101, LlmRole::kPrompt);
  const int other_port = InitServer(other);
  ASSERT_NE(0, other_port);
  ClusterInfo to_other = Cluster(101, other_port);
  to_other.local_ip_infos.clear();
  std::vector<Status> rets;
  // The decoder made its first link (SetUp) with local_ip_infos[0] = 127.0.0.1.
  EXPECT_LLM(LLM_SUCCESS, decoder_->LinkLlmClusters({to_other}, rets, 3000)) << "client after its first link";
  // The prompt listens on 127.0.0.1, so its comm res is known from Initialize.
  LlmDataDist third(102, LlmRole::kPrompt);
  const int third_port = InitServer(third);
  ASSERT_NE(0, third_port);
  ClusterInfo to_third = Cluster(102, third_port);
  to_third.local_ip_infos.clear();
  EXPECT_LLM(LLM_SUCCESS, prompt_->LinkLlmClusters({to_third}, rets, 3000)) << "listening instance";
  // Given explicitly through llm.LocalCommRes (A2 rank-table fragment, version 1.0).
  LlmDataDist with_res(103, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS,
             with_res.Initialize(
                 Opts({{OPTION_DEVICE_ID, "0"},
                       {OPTION_LOCAL_COMM_RES, R"({"server_count":"1","server_list":[{"device":[{"device_id":"0",)"
                                               R"("device_ip":"127.0.0.1","rank_id":"0"}],"server_id":"127.0.0.1"}],)"
                                               R"("status":"completed","version":"1.0"})"}})));
  EXPECT_LLM(LLM_SUCCESS, with_res.LinkLlmClusters({to_other}, rets, 3000)) << "llm.LocalCommRes given";
  EXPECT_EQ(Names({LLM_SUCCESS, LLM_SUCCESS, LLM_SUCCESS}), Names(rets));
}

TEST_F(LinkedPair, LinkToNobodyReturnsWithinTimeout) {
  LlmDataDist probe(kProbeId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, probe.Initialize(DeviceOnly()));
  for (int32_t timeout : {200, 1000}) {
    const auto t0 = Clock::now();
    Status st = LinkOne(probe, 555, FreePort(), timeout);
    const int64_t ms = MsSince(t0);
    EXPECT_TRUE(st == LLM_LINK_FAILED || st == LLM_TIMEOUT) << Name(st);
    EXPECT_LE(ms, timeout + 1500);
  }
  EXPECT_LLM(LLM_SUCCESS, probe.SetRole(LlmRole::kDecoder)) << "a failed link must not leave a link record";
}

TEST_F(LinkedPair, LinkToOwnClusterIdIsRejected) {
  // The prompt links to its own listener under its own cluster id.
  std::vector<Status> rets;
  EXPECT_LLM(LLM_PARAM_INVALID, prompt_->LinkLlmClusters({Cluster(kPromptId, port_)}, rets, 1000));
  EXPECT_EQ(Names({LLM_PARAM_INVALID}), Names(rets));
  // Project decision: a link whose remote_cluster_id is not the listener's real id
  // is refused by the listener (LLM_LINK_FAILED) instead of creating a link that
  // transfers could never address.
  LlmDataDist probe(kProbeId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, probe.Initialize(DeviceOnly()));
  EXPECT_LLM(LLM_LINK_FAILED, LinkOne(probe, 555, port_));
  EXPECT_LLM(LLM_SUCCESS, probe.SetRole(LlmRole::kDecoder));
}

// ---------------------------------------------------------------------------------
// UnlinkLlmClusters
// ---------------------------------------------------------------------------------
TEST_F(LinkedPair, UnlinkArgumentValidation) {
  std::vector<Status> rets;
  auto unlink = [&](std::vector<ClusterInfo> clusters, int32_t timeout = 1000, bool force = false) {
    return
        [this, &rets, clusters, timeout, force] { return decoder_->UnlinkLlmClusters(clusters, rets, timeout, force); };
  };
  ClusterInfo good = Cluster(kPromptId, port_);
  ClusterInfo bad_ip = good;
  bad_ip.remote_ip_infos[0].ip = "abc";
  ClusterInfo no_remote = good;
  no_remote.remote_ip_infos.clear();
  ClusterInfo two_remotes = good;
  two_remotes.remote_ip_infos.push_back(good.remote_ip_infos[0]);
  RunTable({
      {"timeout 0", unlink({good}, 0), LLM_PARAM_INVALID},
      {"timeout -5", unlink({good}, -5), LLM_PARAM_INVALID},
      {"timeout 0 forced", unlink({good}, 0, true), LLM_PARAM_INVALID},
      {"clusters empty", unlink({}), LLM_PARAM_INVALID},
      {"clusters empty forced", unlink({}, 1000, true), LLM_PARAM_INVALID},
      {"bad remote ip", unlink({bad_ip}), LLM_PARAM_INVALID},
      {"bad remote ip forced", unlink({bad_ip}, 1000, true), LLM_PARAM_INVALID},
      {"remote_ip_infos empty (non-forced)", unlink({no_remote}), LLM_PARAM_INVALID},
      {"remote_ip_infos size 2 (non-forced)", unlink({two_remotes}), LLM_PARAM_INVALID},
  });
  // The link is still there.
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_EXIST_LINK, decoder_->SetRole(LlmRole::kDecoder));
}

TEST_F(LinkedPair, NormalUnlinkCleansBothSides) {
  // Both directions work before.
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {1}, {1}));
  ASSERT_LLM(LLM_SUCCESS, prompt_->PullKvBlocks(ToDecoder(), PCache(), {2}, {2}));
  std::vector<Status> rets = {0x77u};
  ASSERT_LLM(LLM_SUCCESS, decoder_->UnlinkLlmClusters({Cluster(kPromptId, port_)}, rets, 2000));
  EXPECT_EQ(Names({0x77u, LLM_SUCCESS}), Names(rets));
  const Model p1 = pk_->Snapshot(), d1 = dk_->Snapshot();
  RunTable({
      {"decoder pull cache", [&] { return decoder_->PullKvCache(ToPrompt(), DCache()); }, LLM_NOT_YET_LINK},
      {"decoder pull blocks", [&] { return decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}); }, LLM_NOT_YET_LINK},
      {"decoder push cache", [&] { return decoder_->PushKvCache(DCache(), ToPrompt()); }, LLM_NOT_YET_LINK},
      {"decoder push blocks", [&] { return decoder_->PushKvBlocks(DCache(), ToPrompt(), {0}, {0}); }, LLM_NOT_YET_LINK},
      {"prompt pull cache", [&] { return prompt_->PullKvCache(ToDecoder(), PCache()); }, LLM_NOT_YET_LINK},
      {"prompt pull blocks", [&] { return prompt_->PullKvBlocks(ToDecoder(), PCache(), {0}, {0}); }, LLM_NOT_YET_LINK},
      {"prompt push cache", [&] { return prompt_->PushKvCache(PCache(), ToDecoder()); }, LLM_NOT_YET_LINK},
      {"prompt push blocks", [&] { return prompt_->PushKvBlocks(PCache(), ToDecoder(), {0}, {0}); }, LLM_NOT_YET_LINK},
      {"decoder SetRole (no links left)", [&] { return decoder_->SetRole(LlmRole::kDecoder); }, LLM_SUCCESS},
      {"prompt SetRole (no links left)",
       [&] {
         return prompt_->SetRole(LlmRole::kPrompt, Opts({{OPTION_LISTEN_IP_INFO, Listen(port_)}}));
       },
       LLM_SUCCESS},
      {"second non-forced unlink", [&] { return UnlinkOne(*decoder_, kPromptId, port_); }, LLM_NOT_YET_LINK},
  });
  EXPECT_TRUE(pk_->Matches(p1, "prompt cache after rejected transfers"));
  EXPECT_TRUE(dk_->Matches(d1, "decoder cache after rejected transfers"));
  // Relink works and moves data again.
  ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {5}, {6}));
  Model want = d1;
  ModelBlocks(*pk_, &want, 64, AllPairs(4), {5}, {6});
  EXPECT_TRUE(dk_->Matches(want, "pull after relink"));
}

TEST_F(LinkedPair, ForcedUnlinkIsLocalAndUnknownClusters) {
  std::vector<Status> rets;
  // Forced / non-forced unlink of a cluster that was never linked.
  EXPECT_LLM(LLM_SUCCESS, decoder_->UnlinkLlmClusters({Cluster(777, FreePort())}, rets, 1000, true));
  EXPECT_LLM(LLM_NOT_YET_LINK, decoder_->UnlinkLlmClusters({Cluster(777, FreePort())}, rets, 1000, false));
  EXPECT_EQ(Names({LLM_SUCCESS, LLM_NOT_YET_LINK}), Names(rets));
  // Mixed list, forced: both entries succeed, in order.
  rets.clear();
  EXPECT_LLM(LLM_SUCCESS,
             decoder_->UnlinkLlmClusters({Cluster(778, FreePort()), Cluster(kPromptId, port_)}, rets, 1000, true));
  EXPECT_EQ(Names({LLM_SUCCESS, LLM_SUCCESS}), Names(rets));
  EXPECT_LLM(LLM_NOT_YET_LINK, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_SUCCESS, decoder_->SetRole(LlmRole::kDecoder));
  // The other end force-unlinks too (whether or not it still had a record: success).
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*prompt_, kDecoderId, 0, /*force=*/true));
  EXPECT_LLM(LLM_NOT_YET_LINK, prompt_->PullKvBlocks(ToDecoder(), PCache(), {0}, {0}));
  ExpectUnchanged("after forced unlinks");
  // And they can link again.
  ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {3}, {3}));
}

TEST_F(LinkedPair, ForcedUnlinkTearsDownOnlyThisEnd) {
  // CANN: a forced unlink sends nothing and tears down only the local side;
  // both ends must call it.
  ::testing::internal::CaptureStderr();
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*decoder_, kPromptId, port_, /*force=*/true));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the prompt notices the closed connections
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("goodbye"), std::string::npos) << "a forced unlink says no goodbye:\n" << log;
  EXPECT_LLM(LLM_NOT_YET_LINK, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  // The prompt keeps its side: transfers on it fail, a non-forced unlink cannot reach the decoder.
  EXPECT_LLM(LLM_FAILED, prompt_->PullKvBlocks(ToDecoder(), PCache(), {0}, {0}));
  EXPECT_LLM(LLM_UNLINK_FAILED, UnlinkOne(*prompt_, kDecoderId, port_, false, 1000));
  EXPECT_LLM(LLM_EXIST_LINK, prompt_->SetRole(LlmRole::kPrompt, Opts({{OPTION_LISTEN_IP_INFO, Listen(port_)}})));
  // Until it force-unlinks too.
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*prompt_, kDecoderId, 0, /*force=*/true));
  EXPECT_LLM(LLM_NOT_YET_LINK, prompt_->PullKvBlocks(ToDecoder(), PCache(), {0}, {0}));
  ExpectUnchanged("after forced unlinks");
  ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  EXPECT_LLM(LLM_SUCCESS, prompt_->PullKvBlocks(ToDecoder(), PCache(), {2}, {2}));
}

TEST_F(LinkedPair, APeerThatLinksAgainReplacesItsLostLink) {
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*decoder_, kPromptId, port_, /*force=*/true));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The decoder links again without the prompt having unlinked: the stale record is replaced.
  ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  EXPECT_LLM(LLM_SUCCESS, prompt_->PullKvBlocks(ToDecoder(), PCache(), {3}, {3}));
  EXPECT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {1}, {1}));
}

TEST_F(LinkedPair, ForcedUnlinkNeedsNoPeer) {
  // The prompt disappears (Finalize) while linked.
  prompt_->Finalize();
  // A non-forced unlink cannot reach it: LLM_UNLINK_FAILED, local link kept.
  const auto t0 = Clock::now();
  EXPECT_LLM(LLM_UNLINK_FAILED, UnlinkOne(*decoder_, kPromptId, port_, false, 1000));
  EXPECT_LE(MsSince(t0), 1000 + 1500);
  EXPECT_LLM(LLM_ALREADY_LINK, LinkOne(*decoder_, kPromptId, port_)) << "the link must be kept after UNLINK_FAILED";
  EXPECT_LLM(LLM_EXIST_LINK, decoder_->SetRole(LlmRole::kDecoder));
  Status st = decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0});
  EXPECT_NE(LLM_SUCCESS, st) << "pull from a finalized peer";
  // Forced unlink works without the peer.
  EXPECT_LLM(LLM_SUCCESS, UnlinkOne(*decoder_, kPromptId, port_, true));
  EXPECT_LLM(LLM_NOT_YET_LINK, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_SUCCESS, decoder_->SetRole(LlmRole::kDecoder));
  EXPECT_TRUE(dk_->Matches(d0_, "decoder cache"));
  // A new prompt with the same cluster id (a restarted process) can be linked.
  prompt_ = std::make_unique<LlmDataDist>(kPromptId, LlmRole::kPrompt);
  port_ = InitServer(*prompt_);
  ASSERT_NE(0, port_);
  Kv *fresh = Keep(Kv::Std(4, 44));
  ASSERT_LLM(LLM_SUCCESS, fresh->Register(*prompt_));
  ASSERT_LLM(LLM_SUCCESS, LinkOne(*decoder_, kPromptId, port_));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(Index(kPromptId, fresh->id), DCache(), {0, 1}, {4, 5}));
  Model want = d0_;
  ModelBlocks(*fresh, &want, 64, AllPairs(4), {0, 1}, {4, 5});
  EXPECT_TRUE(dk_->Matches(want, "pull from the restarted prompt"));
}

// ---------------------------------------------------------------------------------
// Transfers: every error of spec 2.7 / 2.8.4, exact codes, no byte moved.
// ---------------------------------------------------------------------------------
TEST_F(LinkedPair, PullKvCacheErrors) {
  // Prompt-side caches with other geometries: cache 2 stride 128 B, cache 3 has 2 tensors.
  Kv *wide = Keep(std::make_unique<Kv>(4, std::vector<int64_t>{8, 32}, DT_INT32, 4));
  Kv *two = Keep(Kv::Std(2, 3));
  ASSERT_LLM(LLM_SUCCESS, wide->Register(*prompt_));
  ASSERT_LLM(LLM_SUCCESS, two->Register(*prompt_));
  Relink();
  Cache dst = DCache();
  Cache unknown_dst = dst;
  unknown_dst.cache_id = 99;
  auto pull = [&](CacheIndex src, const Cache &d, uint32_t batch = 0, int64_t size = -1,
                  KvCacheExtParam ext = KvCacheExtParam{}) {
    return [this, src, d, batch, size, ext] { return decoder_->PullKvCache(src, d, batch, size, ext); };
  };
  RunTable({
      {"own cluster id", pull(Index(kDecoderId, 1), dst), LLM_PARAM_INVALID},
      {"unknown local cache", pull(ToPrompt(), unknown_dst), LLM_KV_CACHE_NOT_EXIST},
      {"local cache id -1", pull(ToPrompt(), Cache{}), LLM_KV_CACHE_NOT_EXIST},
      {"no link", pull(Index(999, 1), dst), LLM_NOT_YET_LINK},
      {"unknown remote cache", pull(ToPrompt(99), dst), LLM_KV_CACHE_NOT_EXIST},
      {"size 0", pull(ToPrompt(), dst, 0, 0), LLM_PARAM_INVALID},
      {"size -2", pull(ToPrompt(), dst, 0, -2), LLM_PARAM_INVALID},
      {"size INT64_MIN", pull(ToPrompt(), dst, 0, std::numeric_limits<int64_t>::min()), LLM_PARAM_INVALID},
      {"size stride+1", pull(ToPrompt(), dst, 0, 65), LLM_PARAM_INVALID},
      {"local batch 8 (== rows)", pull(ToPrompt(), dst, 8), LLM_PARAM_INVALID},
      {"local batch UINT32_MAX", pull(ToPrompt(), dst, UINT32_MAX), LLM_PARAM_INVALID},
      {"remote batch 8 (== rows)", pull(ToPrompt(1, 8), dst), LLM_PARAM_INVALID},
      {"remote batch UINT32_MAX", pull(ToPrompt(1, UINT32_MAX), dst), LLM_PARAM_INVALID},
      {"stride mismatch (remote 128 B rows)", pull(ToPrompt(wide->id), dst), LLM_PARAM_INVALID},
      {"tensor count mismatch (default ranges)", pull(ToPrompt(two->id), dst), LLM_PARAM_INVALID},
      {"ext src first -2", pull(ToPrompt(), dst, 0, -1, Ext(-2, 0, 0, 0, 2)), LLM_PARAM_INVALID},
      {"ext src second -2", pull(ToPrompt(), dst, 0, -1, Ext(-1, -2, -1, -1, 2)), LLM_PARAM_INVALID},
      {"ext dst first > second", pull(ToPrompt(), dst, 0, -1, Ext(0, 0, 1, 0, 2)), LLM_PARAM_INVALID},
      {"ext tensor_num_per_layer 0", pull(ToPrompt(), dst, 0, -1, Ext(0, 0, 0, 0, 0)), LLM_PARAM_INVALID},
      {"ext tensor_num_per_layer 0, default ranges", pull(ToPrompt(), dst, 0, -1, ExtN(0)), LLM_PARAM_INVALID},
      {"ext src layer 2 out of range (2 layers)", pull(ToPrompt(), dst, 0, -1, Ext(2, 2, 0, 0, 2)), LLM_PARAM_INVALID},
      {"ext dst layer 2 out of range", pull(ToPrompt(), dst, 0, -1, Ext(0, 0, 2, 2, 2)), LLM_PARAM_INVALID},
      {"ext tensor counts differ (0,1)/(0,0)", pull(ToPrompt(), dst, 0, -1, Ext(0, 1, 0, 0, 2)), LLM_PARAM_INVALID},
      {"ext 4 tensors not divisible by 3", pull(ToPrompt(), dst, 0, -1, Ext(0, 0, 0, 0, 3)), LLM_PARAM_INVALID},
  });
  ExpectUnchanged("after rejected PullKvCache calls");
}

TEST_F(LinkedPair, PullKvBlocksErrors) {
  Kv *wide = Keep(std::make_unique<Kv>(4, std::vector<int64_t>{8, 32}, DT_INT32, 4));
  ASSERT_LLM(LLM_SUCCESS, wide->Register(*prompt_));
  Relink();
  Cache dst = DCache();
  Cache unknown_dst = dst;
  unknown_dst.cache_id = 42;
  auto pull = [&](CacheIndex src, const Cache &d, Blocks s, Blocks t, KvCacheExtParam ext = KvCacheExtParam{}) {
    return [this, src, d, s, t, ext] { return decoder_->PullKvBlocks(src, d, s, t, ext); };
  };
  RunTable({
      {"src batch_index 1", pull(ToPrompt(1, 1), dst, {0}, {0}), LLM_PARAM_INVALID},
      {"src_blocks empty", pull(ToPrompt(), dst, {}, {}), LLM_PARAM_INVALID},
      {"dst_blocks shorter", pull(ToPrompt(), dst, {0, 1}, {0}), LLM_PARAM_INVALID},
      {"dst_blocks longer", pull(ToPrompt(), dst, {0}, {0, 1}), LLM_PARAM_INVALID},
      {"dst_blocks empty", pull(ToPrompt(), dst, {0}, {}), LLM_PARAM_INVALID},
      {"own cluster id", pull(Index(kDecoderId, 1), dst, {0}, {0}), LLM_PARAM_INVALID},
      {"unknown local cache", pull(ToPrompt(), unknown_dst, {0}, {0}), LLM_KV_CACHE_NOT_EXIST},
      {"no link", pull(Index(999, 1), dst, {0}, {0}), LLM_NOT_YET_LINK},
      {"unknown remote cache", pull(ToPrompt(7), dst, {0}, {0}), LLM_KV_CACHE_NOT_EXIST},
      {"local block 8", pull(ToPrompt(), dst, {0}, {8}), LLM_PARAM_INVALID},
      {"local block UINT64_MAX", pull(ToPrompt(), dst, {0}, {UINT64_MAX}), LLM_PARAM_INVALID},
      {"local run overruns (6,7,8)", pull(ToPrompt(), dst, {0, 1, 2}, {6, 7, 8}), LLM_PARAM_INVALID},
      {"remote block 8", pull(ToPrompt(), dst, {8}, {0}), LLM_PARAM_INVALID},
      {"remote block UINT64_MAX", pull(ToPrompt(), dst, {UINT64_MAX}, {0}), LLM_PARAM_INVALID},
      {"remote run overruns (6,7,8)", pull(ToPrompt(), dst, {6, 7, 8}, {0, 1, 2}), LLM_PARAM_INVALID},
      {"remote bad index last of many", pull(ToPrompt(), dst, {0, 3, 5, 9}, {1, 2, 3, 4}), LLM_PARAM_INVALID},
      {"stride mismatch", pull(ToPrompt(wide->id), dst, {0}, {0}), LLM_PARAM_INVALID},
      {"ext (-2,0)", pull(ToPrompt(), dst, {0}, {0}, Ext(-2, 0, 0, 0, 2)), LLM_PARAM_INVALID},
      {"ext (1,0)", pull(ToPrompt(), dst, {0}, {0}, Ext(1, 0, 1, 0, 2)), LLM_PARAM_INVALID},
      {"ext n 0", pull(ToPrompt(), dst, {0}, {0}, Ext(0, 0, 0, 0, 0)), LLM_PARAM_INVALID},
      {"ext layer out of range", pull(ToPrompt(), dst, {0}, {0}, Ext(0, 4, 0, 4, 1)), LLM_PARAM_INVALID},
      {"ext count mismatch", pull(ToPrompt(), dst, {0}, {0}, Ext(0, 3, 0, 1, 1)), LLM_PARAM_INVALID},
  });
  ExpectUnchanged("after rejected PullKvBlocks calls");
}

TEST_F(LinkedPair, PushKvCacheErrors) {
  Kv *wide = Keep(std::make_unique<Kv>(4, std::vector<int64_t>{8, 32}, DT_INT32, 4));
  ASSERT_LLM(LLM_SUCCESS, wide->Register(*prompt_));
  Relink();
  Cache src = DCache();
  Cache host = src;
  host.cache_desc.placement = CachePlacement::kHost;
  Cache zero = src;
  zero.cache_desc.num_tensors = 0;
  Cache three = src;
  three.cache_desc.num_tensors = 3;
  Cache six = src;
  six.cache_desc.num_tensors = 6;
  Cache unknown = src;
  unknown.cache_id = 5;
  auto push = [&](const Cache &s, CacheIndex dst, uint32_t sbatch = 0, int64_t size = -1,
                  KvCacheExtParam ext = KvCacheExtParam{}) {
    return [this, s, dst, sbatch, size, ext] { return decoder_->PushKvCache(s, dst, sbatch, size, ext); };
  };
  RunTable({
      {"size 64 (only -1 supported)", push(src, ToPrompt(), 0, 64), LLM_PARAM_INVALID},
      {"size 0", push(src, ToPrompt(), 0, 0), LLM_PARAM_INVALID},
      {"size -2", push(src, ToPrompt(), 0, -2), LLM_PARAM_INVALID},
      {"placement kHost", push(host, ToPrompt()), LLM_PARAM_INVALID},
      {"num_tensors 0, default ranges", push(zero, ToPrompt()), LLM_PARAM_INVALID},
      {"num_tensors 3 not divisible by 2", push(three, ToPrompt()), LLM_PARAM_INVALID},
      {"num_tensors 6 > 4 registered", push(six, ToPrompt()), LLM_PARAM_INVALID},
      {"own cluster id", push(src, Index(kDecoderId, 1)), LLM_PARAM_INVALID},
      {"unknown local cache", push(unknown, ToPrompt()), LLM_KV_CACHE_NOT_EXIST},
      {"no link", push(src, Index(999, 1)), LLM_NOT_YET_LINK},
      {"unknown remote cache", push(src, ToPrompt(99)), LLM_KV_CACHE_NOT_EXIST},
      {"src batch 8", push(src, ToPrompt(), 8), LLM_PARAM_INVALID},
      {"dst batch 8", push(src, ToPrompt(1, 8)), LLM_PARAM_INVALID},
      {"dst batch UINT32_MAX", push(src, ToPrompt(1, UINT32_MAX)), LLM_PARAM_INVALID},
      {"stride mismatch", push(src, ToPrompt(wide->id)), LLM_PARAM_INVALID},
      {"ext unequal range lengths", push(src, ToPrompt(), 0, -1, Ext(0, 0, 0, 1, 2)), LLM_PARAM_INVALID},
      {"ext unequal, src default", push(src, ToPrompt(), 0, -1, Ext(-1, -1, 0, 1, 2)), LLM_PARAM_INVALID},
      {"ext (-2,0)", push(src, ToPrompt(), 0, -1, Ext(-2, 0, -2, 0, 2)), LLM_PARAM_INVALID},
      {"ext (1,0)", push(src, ToPrompt(), 0, -1, Ext(1, 0, 1, 0, 2)), LLM_PARAM_INVALID},
      {"ext n 0", push(src, ToPrompt(), 0, -1, Ext(0, 0, 0, 0, 0)), LLM_PARAM_INVALID},
      {"ext src layer 2 out of range", push(src, ToPrompt(), 0, -1, Ext(2, 2, 0, 0, 2)), LLM_PARAM_INVALID},
      {"ext dst layer 2 out of range", push(src, ToPrompt(), 0, -1, Ext(0, 0, 2, 2, 2)), LLM_PARAM_INVALID},
      {"ext n 3 with range (4 tensors)", push(src, ToPrompt(), 0, -1, Ext(0, 0, 0, 0, 3)), LLM_PARAM_INVALID},
      {"ext n 3 default ranges (4 tensors)", push(src, ToPrompt(), 0, -1, ExtN(3)), LLM_PARAM_INVALID},
  });
  ExpectUnchanged("after rejected PushKvCache calls");
}

TEST_F(LinkedPair, PushKvBlocksErrors) {
  Kv *wide = Keep(std::make_unique<Kv>(4, std::vector<int64_t>{8, 32}, DT_INT32, 4));
  ASSERT_LLM(LLM_SUCCESS, wide->Register(*prompt_));
  Relink();
  Cache src = DCache();
  Cache host = src;
  host.cache_desc.placement = CachePlacement::kHost;
  Cache zero = src;
  zero.cache_desc.num_tensors = 0;
  Cache unknown = src;
  unknown.cache_id = 5;
  auto push = [&](const Cache &s, CacheIndex dst, Blocks sb, Blocks db, KvCacheExtParam ext = KvCacheExtParam{}) {
    return [this, s, dst, sb, db, ext] { return decoder_->PushKvBlocks(s, dst, sb, db, ext); };
  };
  RunTable({
      {"dst batch_index 1", push(src, ToPrompt(1, 1), {0}, {0}), LLM_PARAM_INVALID},
      {"blocks empty", push(src, ToPrompt(), {}, {}), LLM_PARAM_INVALID},
      {"unequal lengths", push(src, ToPrompt(), {0, 1}, {0}), LLM_PARAM_INVALID},
      {"placement kHost", push(host, ToPrompt(), {0}, {0}), LLM_PARAM_INVALID},
      {"num_tensors 0, default ranges", push(zero, ToPrompt(), {0}, {0}), LLM_PARAM_INVALID},
      {"own cluster id", push(src, Index(kDecoderId, 1), {0}, {0}), LLM_PARAM_INVALID},
      {"unknown local cache", push(unknown, ToPrompt(), {0}, {0}), LLM_KV_CACHE_NOT_EXIST},
      {"no link", push(src, Index(999, 1), {0}, {0}), LLM_NOT_YET_LINK},
      {"unknown remote cache", push(src, ToPrompt(99), {0}, {0}), LLM_KV_CACHE_NOT_EXIST},
      {"local block 8", push(src, ToPrompt(), {8}, {0}), LLM_PARAM_INVALID},
      {"local run overruns", push(src, ToPrompt(), {6, 7, 8}, {0, 1, 2}), LLM_PARAM_INVALID},
      {"remote block 8", push(src, ToPrompt(), {0}, {8}), LLM_PARAM_INVALID},
      {"remote run overruns", push(src, ToPrompt(), {0, 1, 2}, {6, 7, 8}), LLM_PARAM_INVALID},
      {"remote block UINT64_MAX", push(src, ToPrompt(), {0}, {UINT64_MAX}), LLM_PARAM_INVALID},
      {"stride mismatch", push(src, ToPrompt(wide->id), {0}, {0}), LLM_PARAM_INVALID},
      {"ext unequal range lengths", push(src, ToPrompt(), {0}, {0}, Ext(0, 1, 1, 1, 2)), LLM_PARAM_INVALID},
      {"ext (-2,0)", push(src, ToPrompt(), {0}, {0}, Ext(-2, 0, -2, 0, 2)), LLM_PARAM_INVALID},
      {"ext n 0", push(src, ToPrompt(), {0}, {0}, Ext(0, 0, 0, 0, 0)), LLM_PARAM_INVALID},
      {"ext layer out of range", push(src, ToPrompt(), {0}, {0}, Ext(4, 4, 0, 0, 1)), LLM_PARAM_INVALID},
  });
  ExpectUnchanged("after rejected PushKvBlocks calls");
}

// Spec 2.8.4 examples: 10 tensors, n = 7 and n = 17 fail; (0,1)/(0,3), (4,5)/(0,1)
// and (-2,0) fail; valid ranges move exactly the selected tensors.
TEST_F(LinkedPair, LayerRangesWithTenTensors) {
  Kv *p10 = Keep(Kv::Std(10, 50));
  Kv *d10 = Keep(Kv::Std(10, 60));
  ASSERT_LLM(LLM_SUCCESS, p10->Register(*prompt_));
  ASSERT_LLM(LLM_SUCCESS, d10->Register(*decoder_));
  Relink();
  const Model p10_0 = p10->Snapshot();
  const CacheIndex psrc = Index(kPromptId, p10->id);
  const Cache dc = d10->AsCache();
  auto pull = [&](KvCacheExtParam ext) {
    return [this, psrc, dc, ext] { return decoder_->PullKvBlocks(psrc, dc, {0}, {0}, ext); };
  };
  auto push = [&](KvCacheExtParam ext) {
    return [this, psrc, dc, ext] { return decoder_->PushKvBlocks(dc, psrc, {0}, {0}, ext); };
  };
  RunTable({
      {"pull n=7 (0,0)/(0,0)", pull(Ext(0, 0, 0, 0, 7)), LLM_PARAM_INVALID},
      {"pull n=17 (0,0)/(0,0)", pull(Ext(0, 0, 0, 0, 17)), LLM_PARAM_INVALID},
      {"pull (0,1)/(0,3) n=2", pull(Ext(0, 1, 0, 3, 2)), LLM_PARAM_INVALID},
      {"pull (4,5)/(0,1) n=2", pull(Ext(4, 5, 0, 1, 2)), LLM_PARAM_INVALID},
      {"pull (-2,0)", pull(Ext(-2, 0, -2, 0, 2)), LLM_PARAM_INVALID},
      {"push n=7 (0,0)/(0,0)", push(Ext(0, 0, 0, 0, 7)), LLM_PARAM_INVALID},
      {"push n=17 (0,0)/(0,0)", push(Ext(0, 0, 0, 0, 17)), LLM_PARAM_INVALID},
      {"push n=7 default ranges (partial last layer)", push(ExtN(7)), LLM_PARAM_INVALID},
      {"push (0,1)/(0,3) n=2", push(Ext(0, 1, 0, 3, 2)), LLM_PARAM_INVALID},
      {"push (4,5)/(0,1) n=2", push(Ext(4, 5, 0, 1, 2)), LLM_PARAM_INVALID},
      {"push (-2,0)", push(Ext(-2, 0, -2, 0, 2)), LLM_PARAM_INVALID},
  });
  EXPECT_TRUE(p10->Matches(p10_0, "prompt 10-tensor cache after rejected calls"));
  EXPECT_TRUE(d10->Matches(Kv::Std(10, 60)->Snapshot(), "decoder 10-tensor cache after rejected calls"));

  // Valid selections, bytes checked after each.
  Model want = d10->Snapshot();
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(psrc, dc, {1}, {2}, Ext(4, 4, 0, 0, 2)));
  ModelBlocks(*p10, &want, 64, RangePairs(8, 0, 2), {1}, {2});
  EXPECT_TRUE(d10->Matches(want, "pull layer 4 -> 0, n=2"));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(psrc, dc, {3, 4}, {3, 4}, Ext(1, 1, 0, 0, 5)));
  ModelBlocks(*p10, &want, 64, RangePairs(5, 0, 5), {3, 4}, {3, 4});
  EXPECT_TRUE(d10->Matches(want, "pull layer 1 -> 0, n=5"));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(Index(kPromptId, p10->id, 6), dc, 7, 16, Ext(0, 0, 0, 0, 10)));
  ModelRow(*p10, &want, 64, AllPairs(10), 6, 7, 16);
  EXPECT_TRUE(d10->Matches(want, "pull cache n=10 all tensors, 16 bytes of row 6 -> 7"));
  // Default ranges: tensor_num_per_layer is irrelevant for pull (no divisibility check).
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(psrc, dc, {5}, {5}, ExtN(7)));
  ModelBlocks(*p10, &want, 64, AllPairs(10), {5}, {5});
  EXPECT_TRUE(d10->Matches(want, "pull default ranges, n=7"));
  // Only one range given: spec 2.8.2 falls back to all tensors.
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(psrc, dc, {6}, {6}, Ext(0, 0, -1, -1, 2)));
  ModelBlocks(*p10, &want, 64, AllPairs(10), {6}, {6});
  EXPECT_TRUE(d10->Matches(want, "pull with only src_layer_range given"));
  EXPECT_TRUE(p10->Matches(p10_0, "prompt cache is only read by pulls"));

  // Push: layers (0,1) -> (3,4), n=2: local tensors 0..3 -> remote 6..9.
  Model pwant = p10_0;
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvBlocks(dc, psrc, {7, 0}, {0, 7}, Ext(0, 1, 3, 4, 2)));
  ModelBlocks(*d10, &pwant, 64, RangePairs(0, 6, 4), {7, 0}, {0, 7});
  EXPECT_TRUE(p10->Matches(pwant, "push layers (0,1) -> (3,4)"));
  // Push default ranges with cache_desc.num_tensors 4 < 10: layers 0..1 only.
  Cache four = dc;
  four.cache_desc.num_tensors = 4;
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvCache(four, Index(kPromptId, p10->id, 3), 2));
  ModelRow(*d10, &pwant, 64, AllPairs(4), 2, 3, 64);
  EXPECT_TRUE(p10->Matches(pwant, "push default ranges with num_tensors 4"));
  // Push with explicit range and cache_desc.num_tensors 0 (only needed for default ranges).
  Cache none = dc;
  none.cache_desc.num_tensors = 0;
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvCache(none, Index(kPromptId, p10->id, 5), 1, -1, Ext(4, 4, 4, 4, 2)));
  ModelRow(*d10, &pwant, 64, RangePairs(8, 8, 2), 1, 5, 64);
  EXPECT_TRUE(p10->Matches(pwant, "push layer 4 with num_tensors 0"));
}

// ---------------------------------------------------------------------------------
// Successful transfers, byte-exact, in both directions over one link.
// ---------------------------------------------------------------------------------
TEST_F(LinkedPair, PullAndPushMoveExactlyTheSelectedBytes) {
  Model d = d0_, p = p0_;
  // Pull blocks with a mapping that merges ({1,2}->{4,5}) and reverses.
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {1, 2, 7, 0}, {4, 5, 0, 7}));
  ModelBlocks(*pk_, &d, 64, AllPairs(4), {1, 2, 7, 0}, {4, 5, 0, 7});
  EXPECT_TRUE(dk_->Matches(d, "PullKvBlocks"));
  // Pull cache: whole row 3 -> 2, then 10 bytes of row 6 -> 1, then exactly stride bytes.
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(ToPrompt(1, 3), DCache(), 2));
  ModelRow(*pk_, &d, 64, AllPairs(4), 3, 2, 64);
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(ToPrompt(1, 6), DCache(), 1, 10));
  ModelRow(*pk_, &d, 64, AllPairs(4), 6, 1, 10);
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(ToPrompt(1, 7), DCache(), 3, 64));
  ModelRow(*pk_, &d, 64, AllPairs(4), 7, 3, 64);
  EXPECT_TRUE(dk_->Matches(d, "PullKvCache"));
  EXPECT_TRUE(pk_->Matches(p, "prompt unchanged by pulls"));
  // Push blocks and cache from the decoder (the client) to the prompt.
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvBlocks(DCache(), ToPrompt(), {0, 1, 2, 3}, {3, 2, 1, 0}));
  ModelBlocks(*dk_, &p, 64, AllPairs(4), {0, 1, 2, 3}, {3, 2, 1, 0});
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvCache(DCache(), ToPrompt(1, 6), 5));
  ModelRow(*dk_, &p, 64, AllPairs(4), 5, 6, 64);
  EXPECT_TRUE(pk_->Matches(p, "Push from the client side"));
  EXPECT_TRUE(dk_->Matches(d, "decoder unchanged by pushes"));
}

// Spec 2.7 (PullKvBlocks): duplicate destination indices are not rejected.
TEST_F(LinkedPair, DuplicateDestinationBlocksAccepted) {
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(), DCache(), {1, 2}, {3, 3}));
  for (uint32_t t = 0; t < 4; ++t) {
    const bool from1 = std::memcmp(dk_->T(t) + 3 * 64, pk_->T(t) + 1 * 64, 64) == 0;
    const bool from2 = std::memcmp(dk_->T(t) + 3 * 64, pk_->T(t) + 2 * 64, 64) == 0;
    EXPECT_TRUE(from1 || from2) << "tensor " << t << ": block 3 must hold remote block 1 or 2";
  }
  Model d = d0_;
  for (uint32_t t = 0; t < 4; ++t) std::memcpy(d[t].data() + 3 * 64, dk_->T(t) + 3 * 64, 64);
  EXPECT_TRUE(dk_->Matches(d, "only block 3 changed"));
}

TEST_F(LinkedPair, ListeningSidePushesAndPullsOverTheClientsLink) {
  Model d = d0_, p = p0_;
  ASSERT_LLM(LLM_SUCCESS, prompt_->PushKvBlocks(PCache(), ToDecoder(), {5, 6, 7}, {5, 6, 7}, Ext(0, 1, 0, 1, 2)));
  ModelBlocks(*pk_, &d, 64, AllPairs(4), {5, 6, 7}, {5, 6, 7});
  ASSERT_LLM(LLM_SUCCESS, prompt_->PushKvCache(PCache(), ToDecoder(1, 0), 4, -1, Ext(0, 0, 0, 0, 4)));
  ModelRow(*pk_, &d, 64, AllPairs(4), 4, 0, 64);
  EXPECT_TRUE(dk_->Matches(d, "prompt -> decoder pushes"));
  ASSERT_LLM(LLM_SUCCESS, prompt_->PullKvBlocks(ToDecoder(), PCache(), {0}, {2}));
  ModelBlocks(*dk_, &p, 64, AllPairs(4), {0}, {2});
  ASSERT_LLM(LLM_SUCCESS, prompt_->PullKvCache(ToDecoder(1, 1), PCache(), 1, 33));
  ModelRow(*dk_, &p, 64, AllPairs(4), 1, 1, 33);
  EXPECT_TRUE(pk_->Matches(p, "prompt <- decoder pulls"));
  // The listening side's error codes: unknown remote cache, own id.
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, prompt_->PullKvBlocks(ToDecoder(9), PCache(), {0}, {0}));
  EXPECT_LLM(LLM_PARAM_INVALID, prompt_->PullKvBlocks(ToPrompt(), PCache(), {0}, {0}));
}

TEST_F(LinkedPair, CacheRegisteredAfterLinkIsUsableAndUnregisteredIsReported) {
  // Registered on the prompt after the link (CANN would not see it; spec 2.8.6).
  Kv *late = Keep(Kv::Std(4, 70));
  ASSERT_LLM(LLM_SUCCESS, late->Register(*prompt_));
  EXPECT_EQ(2, late->id);
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(late->id), DCache(), {0, 1}, {6, 7}));
  Model d = d0_;
  ModelBlocks(*late, &d, 64, AllPairs(4), {0, 1}, {6, 7});
  EXPECT_TRUE(dk_->Matches(d, "pull of a cache registered after the link"));
  // And on the decoder after the link: the prompt pushes into it.
  Kv *dlate = Keep(Kv::Std(4, 80));
  ASSERT_LLM(LLM_SUCCESS, dlate->Register(*decoder_));
  ASSERT_LLM(LLM_SUCCESS, prompt_->PushKvBlocks(PCache(), Index(kDecoderId, dlate->id), {2}, {3}));
  Model dl = Kv::Std(4, 80)->Snapshot();
  ModelBlocks(*pk_, &dl, 64, AllPairs(4), {2}, {3});
  EXPECT_TRUE(dlate->Matches(dl, "push into a cache registered after the link"));
  // Unregistered after it was used on this link: reported as not existing.
  ASSERT_LLM(LLM_SUCCESS, prompt_->UnregisterKvCache(late->id));
  const Model before = dk_->Snapshot();
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PullKvBlocks(ToPrompt(late->id), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PushKvBlocks(DCache(), ToPrompt(late->id), {0}, {0}));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PullKvCache(ToPrompt(late->id), DCache()));
  EXPECT_TRUE(dk_->Matches(before, "decoder after pulls of an unregistered cache"));
  EXPECT_TRUE(late->Matches(Kv::Std(4, 70)->Snapshot(), "unregistered cache memory untouched by the push"));
  // Registering again gives a new id that works.
  ASSERT_LLM(LLM_SUCCESS, late->Register(*prompt_));
  EXPECT_EQ(3, late->id);
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(late->id), DCache(), {4}, {4}));
  Model d2 = before;
  ModelBlocks(*late, &d2, 64, AllPairs(4), {4}, {4});
  EXPECT_TRUE(dk_->Matches(d2, "pull after re-registration"));
}

// Pull has no placement restriction (spec 2.7); host-placed caches work as pull
// destination, pull source and push destination. Only the push *source* descriptor
// must say kDevice.
TEST_F(LinkedPair, HostPlacedCaches) {
  Kv *dhost = Keep(Kv::Std(4, 90)), *phost = Keep(Kv::Std(4, 91));
  ASSERT_LLM(LLM_SUCCESS,
             decoder_->RegisterKvCache(dhost->Desc(CachePlacement::kHost), dhost->Addrs(), RegisterCfg{}, dhost->id));
  ASSERT_LLM(LLM_SUCCESS,
             prompt_->RegisterKvCache(phost->Desc(CachePlacement::kHost), phost->Addrs(), RegisterCfg{}, phost->id));
  Relink();
  Cache dh = dhost->AsCache();
  dh.cache_desc.placement = CachePlacement::kHost;
  Model dm = dhost->Snapshot(), pm = phost->Snapshot();
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvBlocks(ToPrompt(phost->id), dh, {0, 1}, {2, 3}));
  ModelBlocks(*phost, &dm, 64, AllPairs(4), {0, 1}, {2, 3});
  ASSERT_LLM(LLM_SUCCESS, decoder_->PullKvCache(ToPrompt(), dh, 7, 20));
  ModelRow(*pk_, &dm, 64, AllPairs(4), 0, 7, 20);
  EXPECT_TRUE(dhost->Matches(dm, "pulls into a host-placed cache"));
  ASSERT_LLM(LLM_SUCCESS, decoder_->PushKvBlocks(DCache(), ToPrompt(phost->id), {4}, {5}));
  ModelBlocks(*dk_, &pm, 64, AllPairs(4), {4}, {5});
  EXPECT_TRUE(phost->Matches(pm, "push into a host-placed remote cache"));
  EXPECT_LLM(LLM_PARAM_INVALID, decoder_->PushKvBlocks(dh, ToPrompt(), {0}, {0}));
  ExpectUnchanged("host-placed transfers leave the device caches alone");
}

TEST(DataDistInitialize, AcceptsIpv6ListenIpInfo) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "::1", &a.sin6_addr);
  socklen_t len = sizeof(a);
  int port = 0;
  if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0)
    port = ntohs(a.sin6_port);
  if (fd >= 0) close(fd);
  if (port == 0) GTEST_SKIP() << "no IPv6 loopback";
  LlmDataDist dd(1, LlmRole::kPrompt);
  EXPECT_LLM(LLM_SUCCESS,
             dd.Initialize(Opts({{OPTION_DEVICE_ID, "0"}, {OPTION_LISTEN_IP_INFO, "[::1]:" + std::to_string(port)}})));
}

TEST_F(LinkedPair, LocalCacheUnregisteredIsReported) {
  ASSERT_LLM(LLM_SUCCESS, decoder_->UnregisterKvCache(dk_->id));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PullKvBlocks(ToPrompt(), DCache(), {0}, {0}));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, decoder_->PushKvCache(DCache(), ToPrompt()));
  // The prompt cannot address it either.
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, prompt_->PushKvBlocks(PCache(), ToDecoder(), {0}, {0}));
  EXPECT_LLM(LLM_KV_CACHE_NOT_EXIST, prompt_->PullKvCache(ToDecoder(), PCache()));
  ExpectUnchanged("after transfers with an unregistered cache");
}

}  // namespace

// ---------------------------------------------------------------------------------
// Lock order (docs/ARCHITECTURE.md): a transfer that has taken its link, an
// incoming Unlink served on a server thread (it waits for the link's transfers)
// and Finalize, forced into the one interleaving that used to deadlock with sync
// points: Finalize held the engine's lifecycle lock exclusively while joining
// server threads, the Unlink's thread waited for the transfer, and the transfer
// waited for the lifecycle lock.
// ---------------------------------------------------------------------------------
struct LockOrderScript {
  std::mutex mutex;
  std::condition_variable changed;
  bool transfer_holds_link = false;
  bool finalize_holds_lifecycle = false;
  bool armed = true;
  std::thread::id transfer_thread;
};
LockOrderScript *g_script = nullptr;

void LockOrderSyncPoint(const char *name) {
  LockOrderScript &s = *g_script;
  std::unique_lock lock(s.mutex);
  if (!s.armed) return;
  if (std::strcmp(name, "DataDist::Transfer:link_taken") == 0 && std::this_thread::get_id() == s.transfer_thread) {
    s.transfer_holds_link = true;
    s.changed.notify_all();
    // Hold the link until Finalize holds the lifecycle lock (bounded: a broken script must not hang).
    s.changed.wait_for(lock, std::chrono::seconds(5), [&] { return s.finalize_holds_lifecycle; });
  } else if (std::strcmp(name, "Engine::Finalize:lifecycle_locked") == 0) {
    s.finalize_holds_lifecycle = true;
    s.armed = false;
    s.changed.notify_all();
  }
}

TEST(DataDistLockOrder, TransferIncomingUnlinkAndFinalizeInTheWorstOrderAllReturn) {
  auto prompt = std::make_unique<LlmDataDist>(kPromptId, LlmRole::kPrompt);
  const int port = InitServer(*prompt);
  ASSERT_NE(0, port);
  LlmDataDist decoder(kDecoderId, LlmRole::kDecoder);
  ASSERT_LLM(LLM_SUCCESS, decoder.Initialize(DeviceOnly()));
  std::unique_ptr<Kv> pk = Kv::Std(4, 11), dk = Kv::Std(4, 22);
  ASSERT_LLM(LLM_SUCCESS, pk->Register(*prompt));
  ASSERT_LLM(LLM_SUCCESS, dk->Register(decoder));
  ASSERT_LLM(LLM_SUCCESS, LinkOne(decoder, kPromptId, port));
  ASSERT_LLM(LLM_SUCCESS, prompt->PullKvBlocks(Index(kDecoderId, 1), pk->AsCache(), {1}, {1}));

  LockOrderScript script;
  g_script = &script;
  llmdd::SetSyncPointCallback(LockOrderSyncPoint);
  // 1. The prompt pulls over the decoder's link: paused right after it took the link.
  Status pulled = LLM_SUCCESS;
  std::thread transfer([&] {
    {
      std::lock_guard lock(script.mutex);
      script.transfer_thread = std::this_thread::get_id();
    }
    pulled = prompt->PullKvBlocks(Index(kDecoderId, 1), pk->AsCache(), {2}, {2});
  });
  {
    std::unique_lock lock(script.mutex);
    ASSERT_TRUE(script.changed.wait_for(lock, std::chrono::seconds(5), [&] { return script.transfer_holds_link; }));
  }
  // 2. The decoder unlinks: a prompt server thread handles it and waits for the paused transfer.
  std::thread unlink([&] {
    std::vector<Status> rets;
    decoder.UnlinkLlmClusters({Cluster(kPromptId, port)}, rets, 3000);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // 3. The prompt finalizes; once it holds its lifecycle lock the transfer goes on to the engine.
  const auto t0 = Clock::now();
  std::atomic<bool> finalized{false};
  std::thread finalize([&] {
    prompt->Finalize();
    finalized = true;
  });
  while (!finalized.load() && MsSince(t0) < 20000) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!finalized.load()) {
    fprintf(stderr, "Finalize did not return within 20 s: lock-order deadlock\n");
    std::abort();  // the threads are stuck for good; fail loudly instead of hanging CTest
  }
  EXPECT_LE(MsSince(t0), 8000);
  transfer.join();
  unlink.join();
  finalize.join();
  llmdd::SetSyncPointCallback(nullptr);
  g_script = nullptr;
  EXPECT_NE(pulled, LLM_SUCCESS);  // it ran into a finalizing engine
  EXPECT_TRUE(script.finalize_holds_lifecycle);
  decoder.Finalize();
}
