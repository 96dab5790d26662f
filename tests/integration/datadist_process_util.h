// Helpers for the multi-process LLM-DataDist integration tests
// (datadist_pull_push_test.cc, datadist_link_test.cc).
//
// Reuses tests/integration/process_util.h (Subprocess, Watchdog, patterns,
// GuardedBuffer) and adds:
//  - LLM status names and EXPECT_LLM/ASSERT_LLM (print "LLM_TIMEOUT", not numbers);
//  - FreePort(): bind port 0 on 127.0.0.1 and read the kernel's choice back;
//  - KvModel: the expected bytes of every tensor of one cache, with the copy
//    semantics of spec 2.8.3 applied one block / row at a time (no merging), so a
//    test states what must change and everything else must stay as it was;
//  - LocalKv: a cache of the test process (one guarded buffer per tensor);
//  - DdPeer: drives tests/integration/peers/datadist_peer (protocol in that file);
//  - SelfDataDist: the test process's own LlmDataDist, listening or not.
// Every blocking call of the test process should go through TimedLlm (watchdog +
// elapsed time), so a hang aborts the binary with a message instead of hanging CTest.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "llm_datadist/llm_datadist.h"
#include "process_util.h"

namespace ddtest {

using namespace llm_datadist;  // NOLINT: API types and status constants
using itest::Clock;
using itest::MsSince;
using itest::SleepMs;

// Allowed lateness of a call on top of its own timeout.
constexpr int64_t kMarginMs = 1500;
// Same-host small pulls are one-sided reads under a standing lease of 100 ms
// (wire::kStandingLeaseMs): a stopped peer's memory stays readable until it ends.
constexpr int64_t kLeaseExpiryWaitMs = 200;

inline std::string LlmName(uint32_t s) {
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
    case UINT32_MAX - 1:
      return "(peer protocol error)";
    default: {
      char buf[32];
      snprintf(buf, sizeof(buf), "status(0x%X)", s);
      return buf;
    }
  }
}

// The transports parameterized LLM-DataDist tests run over: the default (auto)
// and tcp, or only the one ITEST_ADXL_TRANSPORT names when it is set.
inline std::string DefaultDataDistTransport() {
  const char *e = getenv("ITEST_ADXL_TRANSPORT");
  return e != nullptr ? e : "";
}
inline std::vector<std::string> DataDistTransports() {
  if (!DefaultDataDistTransport().empty()) return {DefaultDataDistTransport()};
  return {std::string(), std::string("tcp")};
}

// Test-name suffix for a transport parameter.
inline std::string TransportName(const ::testing::TestParamInfo<std::string> &info) {
  return info.param.empty() ? std::string("default") : info.param;
}

inline std::string Names(const std::vector<Status> &v) {
  std::string s = "{";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + LlmName(v[i]);
  return s + "}";
}

#define EXPECT_LLM(expected, actual) EXPECT_EQ(::ddtest::LlmName(expected), ::ddtest::LlmName(actual))
#define ASSERT_LLM(expected, actual) ASSERT_EQ(::ddtest::LlmName(expected), ::ddtest::LlmName(actual))

// Port chosen by the kernel for a socket bound to port 0 on 127.0.0.1 (closed again,
// so racy: callers retry when Initialize / the peer reports LLM_FAILED).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  int port = 0;
  socklen_t len = sizeof(a);
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

inline std::string Listen(int port) { return "127.0.0.1:" + std::to_string(port); }

inline ClusterInfo Cluster(uint64_t cluster_id, int port, const std::string &ip = "127.0.0.1") {
  ClusterInfo c;
  c.remote_cluster_id = cluster_id;
  IpInfo local;
  local.ip = AscendString(ip.c_str());
  IpInfo remote;
  remote.ip = AscendString(ip.c_str());
  remote.port = static_cast<uint16_t>(port);
  c.local_ip_infos.push_back(local);
  c.remote_ip_infos.push_back(remote);
  return c;
}

inline CacheIndex Index(uint64_t cluster, int64_t cache, uint32_t batch = 0) {
  CacheIndex idx{};
  idx.cluster_id = cluster;
  idx.cache_id = cache;
  idx.batch_index = batch;
  return idx;
}

inline KvCacheExtParam Ext(int32_t s0, int32_t s1, int32_t d0, int32_t d1, uint8_t n) {
  KvCacheExtParam e;
  e.src_layer_range = {s0, s1};
  e.dst_layer_range = {d0, d1};
  e.tensor_num_per_layer = n;
  return e;
}

struct Timed {
  Status status = UINT32_MAX;
  int64_t ms = 0;
};

// Runs fn under a watchdog (a hang aborts the binary with `what`) and times it.
inline Timed TimedLlm(const std::string &what, int64_t watchdog_ms, const std::function<Status()> &fn) {
  itest::Watchdog dog(watchdog_ms, what);
  const auto t0 = Clock::now();
  Timed r;
  r.status = fn();
  r.ms = MsSince(t0);
  return r;
}

// ---------------------------------------------------------------------------------
// KvModel: expected content of a cache (DT_UINT8, shape {rows, stride}).
// ---------------------------------------------------------------------------------
struct KvModel {
  uint32_t tensors = 0;
  uint64_t rows = 0;
  uint64_t stride = 0;
  std::vector<std::vector<uint8_t>> t;  // t[tensor][byte]

  static KvModel Pattern(uint32_t tensors, uint64_t rows, uint64_t stride, uint64_t seed) {
    KvModel m;
    m.tensors = tensors;
    m.rows = rows;
    m.stride = stride;
    m.t.resize(tensors);
    for (uint32_t k = 0; k < tensors; ++k) {
      m.t[k].resize(rows * stride);
      itest::FillPattern(m.t[k].data(), rows * stride, seed + k, 0);
    }
    return m;
  }
  uint64_t TensorBytes() const { return rows * stride; }
};

// Tensor pairs (src tensor, dst tensor) selected by ext (spec 2.8.2) for a cache of
// `num_tensors` on both sides; `push_default_tensors` = number of tensors pushed with
// default ranges (src_cache.cache_desc.num_tensors).
inline std::vector<std::pair<uint32_t, uint32_t>> SelectedPairs(uint32_t num_tensors, const KvCacheExtParam &ext) {
  std::vector<std::pair<uint32_t, uint32_t>> pairs;
  const uint32_t n = ext.tensor_num_per_layer;
  if (ext.src_layer_range.first >= 0 && ext.dst_layer_range.first >= 0) {
    const uint32_t count = static_cast<uint32_t>(ext.src_layer_range.second - ext.src_layer_range.first + 1) * n;
    for (uint32_t i = 0; i < count; ++i)
      pairs.emplace_back(ext.src_layer_range.first * n + i, ext.dst_layer_range.first * n + i);
  } else {
    for (uint32_t i = 0; i < num_tensors; ++i) pairs.emplace_back(i, i);
  }
  return pairs;
}

// dst block dst_blocks[k] = src block src_blocks[k], for every pair (one block at a time).
inline void ApplyBlocks(const KvModel &src, KvModel *dst, const std::vector<std::pair<uint32_t, uint32_t>> &pairs,
                        const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks) {
  for (const auto &p : pairs)
    for (size_t k = 0; k < src_blocks.size(); ++k)
      std::memcpy(dst->t[p.second].data() + dst_blocks[k] * dst->stride,
                  src.t[p.first].data() + src_blocks[k] * src.stride, src.stride);
}

// dst row dst_row[0, len) = src row src_row[0, len).
inline void ApplyRow(const KvModel &src, KvModel *dst, const std::vector<std::pair<uint32_t, uint32_t>> &pairs,
                     uint64_t src_row, uint64_t dst_row, uint64_t len) {
  for (const auto &p : pairs)
    std::memcpy(dst->t[p.second].data() + dst_row * dst->stride, src.t[p.first].data() + src_row * src.stride, len);
}

// Compares one tensor's bytes with the model; the message names tensor, row, offset.
inline ::testing::AssertionResult SameTensor(const KvModel &expected, uint32_t tensor, const uint8_t *actual,
                                             const std::string &what) {
  const auto &e = expected.t[tensor];
  size_t diff = itest::FirstDiff(e.data(), actual, e.size());
  if (diff == SIZE_MAX) return ::testing::AssertionSuccess();
  size_t count = 0;
  for (size_t i = 0; i < e.size(); ++i) count += e[i] != actual[i];
  char buf[256];
  snprintf(
      buf, sizeof(buf),
      "%s: tensor %u differs at byte %zu (row %zu, offset %zu in row): expected 0x%02x got 0x%02x; %zu byte(s) differ",
      what.c_str(), tensor, diff, static_cast<size_t>(diff / expected.stride),
      static_cast<size_t>(diff % expected.stride), e[diff], actual[diff], count);
  return ::testing::AssertionFailure() << buf;
}

// ---------------------------------------------------------------------------------
// LocalKv: a cache of the test process; tensor k is one GuardedBuffer (a byte past the
// end of a tensor faults), or, with `adjacent`, the tensors are consecutive views of
// one GuardedBuffer (tensor k + 1 starts where tensor k ends, as K and V caches that
// a framework carves out of one allocation).
// ---------------------------------------------------------------------------------
class LocalKv {
 public:
  LocalKv(uint32_t tensors, uint64_t rows, uint64_t stride, bool adjacent = false)
      : tensors_(tensors), rows_(rows), stride_(stride) {
    const uint64_t bytes = rows * stride;
    if (adjacent) {
      bufs_.push_back(std::make_unique<itest::GuardedBuffer>(tensors * bytes));
      for (uint32_t k = 0; k < tensors; ++k) data_.push_back(bufs_[0]->data() + k * bytes);
    } else {
      for (uint32_t k = 0; k < tensors; ++k) {
        bufs_.push_back(std::make_unique<itest::GuardedBuffer>(bytes));
        data_.push_back(bufs_.back()->data());
      }
    }
  }
  void Fill(uint64_t seed) {
    for (uint32_t k = 0; k < tensors_; ++k) itest::FillPattern(data_[k], rows_ * stride_, seed + k, 0);
  }
  void Load(const KvModel &m) {
    for (uint32_t k = 0; k < tensors_; ++k) std::memcpy(data_[k], m.t[k].data(), rows_ * stride_);
  }
  KvModel Snapshot() const {
    KvModel m;
    m.tensors = tensors_;
    m.rows = rows_;
    m.stride = stride_;
    for (uint32_t k = 0; k < tensors_; ++k) m.t.emplace_back(data_[k], data_[k] + rows_ * stride_);
    return m;
  }
  CacheDesc Desc(CachePlacement placement = CachePlacement::kDevice) const {
    CacheDesc d;
    d.placement = placement;
    d.num_tensors = tensors_;
    d.data_type = DT_UINT8;
    d.shape = {static_cast<int64_t>(rows_), static_cast<int64_t>(stride_)};
    return d;
  }
  std::vector<uint64_t> Addrs() const {
    std::vector<uint64_t> a;
    for (uint8_t *p : data_) a.push_back(reinterpret_cast<uintptr_t>(p));
    return a;
  }
  Status Register(LlmDataDist &dd) {
    Status st = dd.RegisterKvCache(Desc(), Addrs(), RegisterCfg{}, id_);
    return st;
  }
  // The Cache argument of the transfer calls (push reads cache_desc).
  Cache AsCache() const {
    Cache c;
    c.cache_id = id_;
    c.cache_desc = Desc();
    for (uint8_t *p : data_) c.tensor_addrs.push_back(reinterpret_cast<uintptr_t>(p));
    return c;
  }
  ::testing::AssertionResult Matches(const KvModel &m, const std::string &what) const {
    for (uint32_t k = 0; k < tensors_; ++k) {
      auto r = SameTensor(m, k, data_[k], what);
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
  int64_t id() const { return id_; }
  uint32_t tensors() const { return tensors_; }
  uint64_t rows() const { return rows_; }
  uint64_t stride() const { return stride_; }

 private:
  uint32_t tensors_;
  uint64_t rows_;
  uint64_t stride_;
  int64_t id_ = -1;
  std::vector<std::unique_ptr<itest::GuardedBuffer>> bufs_;  // one per tensor, or one for all
  std::vector<uint8_t *> data_;                              // tensor k's first byte
};

// ---------------------------------------------------------------------------------
// SelfDataDist: the test process's LlmDataDist.
// ---------------------------------------------------------------------------------
// Engine transport for both ends ("llmdd.Transport"): "" = the default (auto: the
// same-host one-copy path when verified), "tcp" = always TCP.
struct SelfOptions {
  bool listen = false;
  int32_t wait_time_ms = 0;  // 0: default (no llm.SyncKvCacheWaitTime option)
  LlmRole role = LlmRole::kDecoder;
  std::string transport = DefaultDataDistTransport();
};

class SelfDataDist {
 public:
  SelfDataDist(uint64_t cluster, const SelfOptions &opt) : cluster_(cluster), opt_(opt), dd_(cluster, opt.role) {}
  ~SelfDataDist() { Finalize(); }

  ::testing::AssertionResult Init() {
    Status st = LLM_FAILED;
    for (int attempt = 0; attempt < 20; ++attempt) {
      std::map<AscendString, AscendString> o;
      o[OPTION_DEVICE_ID] = "0";
      if (opt_.wait_time_ms > 0)
        o[OPTION_SYNC_CACHE_WAIT_TIME] = AscendString(std::to_string(opt_.wait_time_ms).c_str());
      if (!opt_.transport.empty()) o["llmdd.Transport"] = AscendString(opt_.transport.c_str());
      int port = 0;
      if (opt_.listen) {
        port = FreePort();
        o[OPTION_LISTEN_IP_INFO] = AscendString(Listen(port).c_str());
      }
      st = dd_.Initialize(o);
      if (st == LLM_SUCCESS) {
        port_ = port;
        initialized_ = true;
        return ::testing::AssertionSuccess();
      }
      if (!(opt_.listen && st == LLM_FAILED)) break;  // LLM_FAILED: port taken meanwhile
    }
    return ::testing::AssertionFailure() << "Initialize of cluster " << cluster_ << " returned " << LlmName(st);
  }
  void Finalize() {
    if (!initialized_) return;
    itest::Watchdog dog(30000, "LlmDataDist::Finalize");
    dd_.Finalize();
    initialized_ = false;
  }
  LlmDataDist &dd() { return dd_; }
  uint64_t cluster() const { return cluster_; }
  int port() const { return port_; }
  void set_port(int port) { port_ = port; }
  int32_t wait_time_ms() const { return opt_.wait_time_ms > 0 ? opt_.wait_time_ms : 1000; }

  Timed Link(const std::vector<ClusterInfo> &clusters, std::vector<Status> *rets, int32_t timeout_ms = 5000) {
    return TimedLlm("LinkLlmClusters", timeout_ms + 30000,
                    [&] { return dd_.LinkLlmClusters(clusters, *rets, timeout_ms); });
  }
  Timed Unlink(const std::vector<ClusterInfo> &clusters, std::vector<Status> *rets, int32_t timeout_ms = 5000,
               bool force = false) {
    return TimedLlm("UnlinkLlmClusters", timeout_ms + 30000,
                    [&] { return dd_.UnlinkLlmClusters(clusters, *rets, timeout_ms, force); });
  }
  Timed PullBlocks(uint64_t cluster, int64_t rcache, const LocalKv &dst, const std::vector<uint64_t> &src_blocks,
                   const std::vector<uint64_t> &dst_blocks, const KvCacheExtParam &ext = {}) {
    return TimedLlm("PullKvBlocks", wait_time_ms() + 30000, [&] {
      return dd_.PullKvBlocks(Index(cluster, rcache, 0), dst.AsCache(), src_blocks, dst_blocks, ext);
    });
  }
  Timed PullCache(uint64_t cluster, int64_t rcache, uint32_t rbatch, const LocalKv &dst, uint32_t lbatch,
                  int64_t size = -1, const KvCacheExtParam &ext = {}) {
    return TimedLlm("PullKvCache", wait_time_ms() + 30000,
                    [&] { return dd_.PullKvCache(Index(cluster, rcache, rbatch), dst.AsCache(), lbatch, size, ext); });
  }
  Timed PushBlocks(const LocalKv &src, uint64_t cluster, int64_t rcache, const std::vector<uint64_t> &src_blocks,
                   const std::vector<uint64_t> &dst_blocks, const KvCacheExtParam &ext = {}) {
    return TimedLlm("PushKvBlocks", wait_time_ms() + 30000, [&] {
      return dd_.PushKvBlocks(src.AsCache(), Index(cluster, rcache, 0), src_blocks, dst_blocks, ext);
    });
  }
  Timed PushCache(const LocalKv &src, uint32_t sbatch, uint64_t cluster, int64_t rcache, uint32_t rbatch,
                  const KvCacheExtParam &ext = {}) {
    return TimedLlm("PushKvCache", wait_time_ms() + 30000,
                    [&] { return dd_.PushKvCache(src.AsCache(), Index(cluster, rcache, rbatch), sbatch, -1, ext); });
  }

 private:
  uint64_t cluster_;
  SelfOptions opt_;
  LlmDataDist dd_;
  int port_ = 0;
  bool initialized_ = false;
};

// ---------------------------------------------------------------------------------
// DdPeer: a running datadist_peer.
// ---------------------------------------------------------------------------------
struct PeerOptions {
  uint64_t cluster = 0;
  bool listen = true;
  int fixed_port = 0;  // 0: a free port
  std::string role = "prompt";
  int32_t wait_time_ms = 0;  // 0: default
  uint32_t tensors = 4;
  uint64_t blocks = 8;
  uint64_t block_bytes = 64;
  uint64_t seed = 1;
  bool with_cache = true;
  bool adjacent_tensors = false;  // the start-up cache's tensors are views of one allocation
  std::string transport = DefaultDataDistTransport();  // "" = default
};

class DdPeer {
 public:
  static std::string PeerPath() {
#ifdef LLMDD_PEER_DIR
    return std::string(LLMDD_PEER_DIR) + "/datadist_peer";
#else
    return "datadist_peer";
#endif
  }

  // Must be called from the test's main thread (PDEATHSIG is per thread).
  static std::unique_ptr<DdPeer> Start(const PeerOptions &opt, std::string *err) {
    for (int attempt = 0; attempt < 20; ++attempt) {
      int port = 0;
      std::vector<std::string> argv = {PeerPath(),
                                       "--cluster-id",
                                       std::to_string(opt.cluster),
                                       "--role",
                                       opt.role,
                                       "--tensors",
                                       std::to_string(opt.tensors),
                                       "--blocks",
                                       std::to_string(opt.blocks),
                                       "--block-bytes",
                                       std::to_string(opt.block_bytes),
                                       "--seed",
                                       std::to_string(opt.seed)};
      if (opt.listen) {
        port = opt.fixed_port != 0 ? opt.fixed_port : FreePort();
        argv.push_back("--listen");
        argv.push_back(Listen(port));
      }
      if (opt.wait_time_ms > 0) {
        argv.push_back("--wait-time");
        argv.push_back(std::to_string(opt.wait_time_ms));
      }
      if (!opt.with_cache) argv.push_back("--no-cache");
      if (opt.adjacent_tensors) argv.push_back("--adjacent-tensors");
      if (!opt.transport.empty()) {
        argv.push_back("--opt");
        argv.push_back("llmdd.Transport=" + opt.transport);
      }
      std::string perr;
      auto proc = itest::Subprocess::Start(argv, &perr);
      if (!proc) {
        if (err) *err = perr;
        return nullptr;
      }
      std::unique_ptr<DdPeer> peer(new DdPeer());
      peer->proc_ = std::move(proc);
      peer->opt_ = opt;
      peer->port_ = port;
      for (;;) {
        std::string line;
        bool eof = false;
        if (!peer->proc_->ReadLine(&line, 30000, &eof)) {
          if (err) *err = std::string("datadist_peer ") + (eof ? "exited during start-up" : "start-up timed out");
          return nullptr;
        }
        if (line.rfind("INIT_FAILED ", 0) == 0) {
          if (line == "INIT_FAILED " + std::to_string(LLM_FAILED) && opt.listen) {
            if (opt.fixed_port != 0) SleepMs(300);
            break;  // port taken meanwhile: retry
          }
          if (err) *err = line;
          return nullptr;
        }
        if (line.rfind("CACHE ", 0) == 0) {
          peer->cache_id_ = std::strtoll(line.c_str() + 6, nullptr, 10);
          continue;
        }
        if (line == "READY") return peer;
        if (err) *err = "unexpected line from datadist_peer: " + line;
        return nullptr;
      }
    }
    if (err) *err = "could not start datadist_peer on a free port";
    return nullptr;
  }

  ~DdPeer() {
    if (proc_ && !proc_->Exited()) {
      proc_->Continue();
      proc_->Kill();
      proc_->Wait(5000);
    }
  }

  uint64_t cluster() const { return opt_.cluster; }
  int port() const { return port_; }
  int64_t cache_id() const { return cache_id_; }
  const PeerOptions &options() const { return opt_; }
  const std::string &last_error() const { return last_error_; }
  ClusterInfo Info() const { return Cluster(opt_.cluster, port_); }
  // "<cluster>@127.0.0.1:<port>" for LINK/UNLINK commands of other peers.
  std::string Spec() const { return std::to_string(opt_.cluster) + "@127.0.0.1:" + std::to_string(port_); }
  // Expected initial content of the start-up cache.
  KvModel InitialModel() const { return KvModel::Pattern(opt_.tensors, opt_.blocks, opt_.block_bytes, opt_.seed); }

  std::string Cmd(const std::string &line, int64_t timeout_ms = 60000) {
    if (!proc_->WriteLine(line)) {
      last_error_ = "cannot write '" + line + "' to datadist_peer (" + Health() + ")";
      return "";
    }
    std::string reply;
    bool eof = false;
    if (!proc_->ReadLine(&reply, timeout_ms, &eof)) {
      last_error_ = "no reply to '" + line + "' (" + (eof ? "peer exited: " + Health() : "timed out") + ")";
      return "";
    }
    return reply;
  }

  // "STATUS <s> ..." -> s (UINT32_MAX - 1 on protocol error; *rest = the other fields).
  Status StatusCmd(const std::string &line, std::vector<uint64_t> *rest = nullptr, int64_t timeout_ms = 60000) {
    std::string r = Cmd(line, timeout_ms);
    std::istringstream in(r);
    std::string tag;
    uint64_t st = 0;
    if (!(in >> tag >> st) || tag != "STATUS") {
      if (!r.empty()) last_error_ = "unexpected reply '" + r + "' to '" + line + "'";
      return UINT32_MAX - 1;
    }
    uint64_t v;
    while (rest != nullptr && in >> v) rest->push_back(v);
    return static_cast<Status>(st);
  }

  // LINK/UNLINK: returns the overall status; *rets gets the per-cluster statuses.
  Status Link(const std::vector<std::string> &specs, std::vector<Status> *rets, int32_t timeout_ms = 5000) {
    std::string line = "LINK " + std::to_string(timeout_ms);
    for (const auto &s : specs) line += " " + s;
    return WithRets(line, rets, timeout_ms);
  }
  Status Unlink(const std::vector<std::string> &specs, std::vector<Status> *rets, int32_t timeout_ms = 5000,
                bool force = false) {
    std::string line = "UNLINK " + std::to_string(timeout_ms) + (force ? " 1" : " 0");
    for (const auto &s : specs) line += " " + s;
    return WithRets(line, rets, timeout_ms);
  }

  static std::string Csv(const std::vector<uint64_t> &v) {
    if (v.empty()) return "-";
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
    return s;
  }
  static std::string ExtArgs(const KvCacheExtParam &e) {
    return " " + std::to_string(e.src_layer_range.first) + "," + std::to_string(e.src_layer_range.second) + " " +
           std::to_string(e.dst_layer_range.first) + "," + std::to_string(e.dst_layer_range.second) + " " +
           std::to_string(e.tensor_num_per_layer);
  }

  // Transfers run by the peer: result status and the peer-measured elapsed time.
  Timed PullBlocks(uint64_t cluster, int64_t rcache, int64_t lcache, const std::vector<uint64_t> &src,
                   const std::vector<uint64_t> &dst, const KvCacheExtParam &ext = {}) {
    return Xfer("PULL_BLOCKS " + std::to_string(cluster) + " " + std::to_string(rcache) + " " + std::to_string(lcache) +
                " " + Csv(src) + " " + Csv(dst) + ExtArgs(ext));
  }
  Timed PushBlocks(int64_t lcache, uint64_t cluster, int64_t rcache, const std::vector<uint64_t> &src,
                   const std::vector<uint64_t> &dst, const KvCacheExtParam &ext = {}) {
    return Xfer("PUSH_BLOCKS " + std::to_string(cluster) + " " + std::to_string(rcache) + " " + std::to_string(lcache) +
                " " + Csv(src) + " " + Csv(dst) + ExtArgs(ext));
  }
  Timed PullCache(uint64_t cluster, int64_t rcache, uint32_t rbatch, int64_t lcache, uint32_t lbatch, int64_t size,
                  const KvCacheExtParam &ext = {}) {
    return Xfer("PULL_CACHE " + std::to_string(cluster) + " " + std::to_string(rcache) + " " + std::to_string(rbatch) +
                " " + std::to_string(lcache) + " " + std::to_string(lbatch) + " " + std::to_string(size) +
                ExtArgs(ext));
  }
  Timed PushCache(int64_t lcache, uint32_t sbatch, uint64_t cluster, int64_t rcache, uint32_t rbatch,
                  const KvCacheExtParam &ext = {}) {
    return Xfer("PUSH_CACHE " + std::to_string(cluster) + " " + std::to_string(rcache) + " " + std::to_string(rbatch) +
                " " + std::to_string(lcache) + " " + std::to_string(sbatch) + ExtArgs(ext));
  }

  Status SetRole(const std::string &role, const std::string &listen = "") {
    return StatusCmd("SETROLE " + role + (listen.empty() ? "" : " " + listen));
  }
  // Registers another cache filled with pattern seed; returns its id or -1 (*st = status).
  // `adjacent`: its tensors are consecutive views of one allocation.
  int64_t Register(uint32_t tensors, uint64_t blocks, uint64_t block_bytes, uint64_t seed, Status *st = nullptr,
                   bool adjacent = false) {
    std::string r = Cmd("REGISTER " + std::to_string(tensors) + " " + std::to_string(blocks) + " " +
                        std::to_string(block_bytes) + " " + std::to_string(seed) +
                        (adjacent ? " device adjacent" : ""));
    if (r.rfind("CACHE ", 0) == 0) {
      if (st) *st = LLM_SUCCESS;
      return std::strtoll(r.c_str() + 6, nullptr, 10);
    }
    if (st)
      *st = r.rfind("STATUS ", 0) == 0 ? static_cast<Status>(std::strtoul(r.c_str() + 7, nullptr, 10)) : UINT32_MAX - 1;
    last_error_ = "REGISTER: " + r;
    return -1;
  }
  Status Unregister(int64_t id) { return StatusCmd("UNREGISTER " + std::to_string(id)); }
  bool Fill(int64_t cache, uint64_t seed) {
    return Cmd("FILL " + std::to_string(cache) + " " + std::to_string(seed)) == "OK";
  }

  // Bytes of one tensor; empty on error.
  std::vector<uint8_t> Dump(int64_t cache, uint32_t tensor, uint64_t off, uint64_t len) {
    std::string r = Cmd("DUMP " + std::to_string(cache) + " " + std::to_string(tensor) + " " + std::to_string(off) +
                        " " + std::to_string(len));
    std::vector<uint8_t> out;
    if (r.rfind("DATA ", 0) != 0 || r.size() != 5 + 2 * len) {
      last_error_ = "DUMP: " + r.substr(0, 80);
      return out;
    }
    auto nib = [](char c) { return static_cast<uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10); };
    out.resize(len);
    for (uint64_t i = 0; i < len; ++i) out[i] = static_cast<uint8_t>(nib(r[5 + 2 * i]) << 4 | nib(r[6 + 2 * i]));
    return out;
  }
  // Every tensor of `cache` equals the model, byte for byte.
  ::testing::AssertionResult Matches(int64_t cache, const KvModel &m, const std::string &what) {
    for (uint32_t k = 0; k < m.tensors; ++k) {
      std::vector<uint8_t> bytes = Dump(cache, k, 0, m.TensorBytes());
      if (bytes.size() != m.TensorBytes())
        return ::testing::AssertionFailure() << what << ": cannot dump tensor " << k << ": " << last_error_;
      auto r = SameTensor(m, k, bytes.data(), what + " (peer cluster " + std::to_string(opt_.cluster) + ")");
      if (!r) return r;
    }
    return ::testing::AssertionSuccess();
  }
  // Whole-tensor hash check, for big caches: tensor k == pattern(seed + k).
  std::string CheckPattern(int64_t cache, uint32_t tensor, uint64_t len, uint64_t seed) {
    return Cmd("CHECK " + std::to_string(cache) + " " + std::to_string(tensor) + " 0 " + std::to_string(len) + " " +
               std::to_string(seed) + " 0");
  }

  bool Ping() { return Cmd("PING", 10000) == "PONG"; }
  std::string FinalizeCmd() { return Cmd("FINALIZE", 30000); }

  // QUIT; "" on a clean exit 0, else a description.
  std::string Quit(int64_t timeout_ms = 30000) {
    proc_->WriteLine("QUIT");
    int st = 0;
    if (!proc_->Wait(timeout_ms, &st)) {
      proc_->Kill();
      proc_->Wait(5000);
      return "datadist_peer did not exit within " + std::to_string(timeout_ms) + " ms after QUIT";
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
    return "datadist_peer ended with " + itest::Subprocess::DescribeWaitStatus(st);
  }
  void Kill() {
    faulted_ = true;
    proc_->Continue();
    proc_->Kill();
    proc_->Wait(10000);
  }
  void Stop() {
    faulted_ = true;
    proc_->Stop();
  }
  void Continue() { proc_->Continue(); }
  bool faulted() const { return faulted_; }
  std::string Health() {
    int st = 0;
    if (proc_->Wait(0, &st)) return "ended with " + itest::Subprocess::DescribeWaitStatus(st);
    return "alive";
  }

 private:
  DdPeer() = default;

  Status WithRets(const std::string &line, std::vector<Status> *rets, int32_t timeout_ms) {
    std::vector<uint64_t> rest;
    Status st = StatusCmd(line, &rest, timeout_ms + 30000);
    for (uint64_t v : rest) rets->push_back(static_cast<Status>(v));
    return st;
  }
  Timed Xfer(const std::string &line) {
    std::vector<uint64_t> rest;
    Timed t;
    t.status = StatusCmd(line, &rest, 90000);
    t.ms = rest.empty() ? -1 : static_cast<int64_t>(rest[0]);
    return t;
  }

  std::unique_ptr<itest::Subprocess> proc_;
  PeerOptions opt_;
  int port_ = 0;
  int64_t cache_id_ = -1;
  std::string last_error_;
  bool faulted_ = false;
};

// Fixture base: owns the peers; TearDown QUITs healthy peers and expects exit 0.
// transport_ (set by parametrized fixtures) is applied to every peer started here.
class DdFixture : public ::testing::Test {
 protected:
  std::vector<std::unique_ptr<DdPeer>> peers_;
  std::string transport_ = DefaultDataDistTransport();

  DdPeer *StartPeer(PeerOptions opt) {
    if (opt.transport.empty()) opt.transport = transport_;
    std::string err;
    auto p = DdPeer::Start(opt, &err);
    if (!p) {
      ADD_FAILURE() << "could not start datadist_peer (" << DdPeer::PeerPath() << "): " << err;
      return nullptr;
    }
    peers_.push_back(std::move(p));
    return peers_.back().get();
  }
  void TearDown() override {
    for (auto &p : peers_) {
      if (p->faulted()) continue;  // destructor kills it
      EXPECT_EQ("", p->Quit()) << "datadist_peer cluster " << p->cluster() << " did not shut down cleanly";
    }
    peers_.clear();
  }
};

}  // namespace ddtest
