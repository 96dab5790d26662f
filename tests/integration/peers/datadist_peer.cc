// datadist_peer: a remote LLM-DataDist instance for the multi-process tests
// (tests/integration/datadist_*_test.cc, driven through ddtest::DdPeer in
// tests/integration/datadist_process_util.h).
//
//   datadist_peer --cluster-id N [--listen IP:PORT] [--role prompt|decoder|mix]
//                 [--device D] [--wait-time MS] [--tensors T] [--blocks B]
//                 [--block-bytes S] [--seed X] [--no-cache] [--adjacent-tensors]
//                 [--opt KEY=VALUE]...
//
// Initializes LlmDataDist(N, role) with llm.DeviceId = D, llm.ListenIpInfo (when
// --listen is given), llm.SyncKvCacheWaitTime (when --wait-time is given) and any
// --opt KEY=VALUE (e.g. llmdd.Transport=tcp). Then,
// unless --no-cache, it registers one cache: T tensors (default 4), each of shape
// {B, S} (default 8 x 64) DT_UINT8, so a row/block is S bytes. Tensor t of a cache
// registered with seed X holds itest::PatternByte(X + t, offset) at every offset.
// Every tensor ends right before a PROT_NONE guard page, except with
// --adjacent-tensors (or "adjacent" on REGISTER): then the cache is one allocation
// and tensor t + 1 starts where tensor t ends (K and V as views of one buffer),
// each still registered with its own address. It prints
//     CACHE <id>
//     READY
// and serves line commands on stdin, one reply line each ("STATUS <s>" = decimal
// ge::Status):
//     PING                                        -> PONG
//     REGISTER <T> <B> <S> <seed> [host|device] [adjacent]
//                                                 -> CACHE <id> | STATUS <s>
//     UNREGISTER <id>                             -> STATUS <s>   (memory stays mapped)
//     FILL <cache> <seed>                         -> OK   (tensor t = pattern seed + t)
//     CHECK <cache> <t> <off> <len> <seed> <pos0> -> OK | BAD <offset in tensor>
//                                                    (bytes == pattern(seed, pos0 + k))
//     DUMP <cache> <t> <off> <len>                -> DATA <hex>
//     HASH <cache> <t> <off> <len>                -> HASH <hex of itest::Hash64>
//     LINK <timeout> <cluster>@<ip>:<port> ...    -> STATUS <overall> <ret1> <ret2> ...
//     UNLINK <timeout> <force 0|1> <cluster>@<ip>:<port> ...
//                                                 -> STATUS <overall> <ret1> ...
//     PULL_CACHE <cluster> <rcache> <rbatch> <lcache> <lbatch> <size> [EXT]
//     PULL_BLOCKS <cluster> <rcache> <lcache> <src_csv> <dst_csv> [EXT]
//     PUSH_CACHE <cluster> <rcache> <rbatch> <lcache> <src_batch> [EXT]
//     PUSH_BLOCKS <cluster> <rcache> <lcache> <src_csv> <dst_csv> [EXT]
//                                                 -> STATUS <s> <elapsed ms>
//        EXT = <src_first>,<src_second> <dst_first>,<dst_second> <tensor_num_per_layer>
//        Push passes Cache{lcache, desc{kDevice, num_tensors of lcache}}.
//     SETROLE <prompt|decoder|mix> [IP:PORT]      -> STATUS <s>
//     FINALIZE                                    -> OK   (LlmDataDist::Finalize)
//     QUIT                                        -> Finalize, exit 0
// Malformed commands answer "ERR <text>". If Initialize fails it prints
// "INIT_FAILED <status>" and exits 3. It Finalizes and exits 0 on stdin EOF (bounded
// by an alarm) and dies with its parent (PR_SET_PDEATHSIG).
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../process_util.h"
#include "llm_datadist/llm_datadist.h"

namespace {

using namespace llm_datadist;  // NOLINT

struct PeerCache {
  int64_t id = -1;
  uint32_t tensors = 0;
  uint64_t blocks = 0;
  uint64_t block_bytes = 0;
  CachePlacement placement = CachePlacement::kDevice;
  std::vector<uint8_t *> data;  // one per tensor, blocks * block_bytes each
};

LlmDataDist *g_dd = nullptr;
bool g_finalized = false;
std::vector<std::unique_ptr<itest::GuardedBuffer>> g_buffers;  // never freed before exit
std::map<int64_t, PeerCache> g_caches;

void Reply(const std::string &line) {
  std::string s = line + "\n";
  fwrite(s.data(), 1, s.size(), stdout);
  fflush(stdout);
}

std::string Hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof(buf), "%" PRIx64, v);
  return buf;
}

bool ParseU64(const std::string &s, uint64_t *out) {
  if (s.empty() || s[0] == '-') return false;
  char *end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseI64(const std::string &s, int64_t *out) {
  if (s.empty()) return false;
  char *end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseCsv(const std::string &s, std::vector<uint64_t> *out) {
  out->clear();
  if (s == "-") return true;  // empty list
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    uint64_t v = 0;
    if (!ParseU64(item, &v)) return false;
    out->push_back(v);
  }
  return true;
}

bool ParsePair(const std::string &s, std::pair<int32_t, int32_t> *out) {
  size_t comma = s.find(',');
  if (comma == std::string::npos) return false;
  int64_t a = 0, b = 0;
  if (!ParseI64(s.substr(0, comma), &a) || !ParseI64(s.substr(comma + 1), &b)) return false;
  *out = {static_cast<int32_t>(a), static_cast<int32_t>(b)};
  return true;
}

// Parses an optional EXT suffix starting at t[i].
bool ParseExt(const std::vector<std::string> &t, size_t i, KvCacheExtParam *ext) {
  if (t.size() == i) return true;
  if (t.size() != i + 3) return false;
  uint64_t n = 0;
  if (!ParsePair(t[i], &ext->src_layer_range) || !ParsePair(t[i + 1], &ext->dst_layer_range) ||
      !ParseU64(t[i + 2], &n) || n > 255)
    return false;
  ext->tensor_num_per_layer = static_cast<uint8_t>(n);
  return true;
}

// "<cluster>@<ip>:<port>" -> ClusterInfo with one local and one remote IpInfo.
bool ParseCluster(const std::string &s, ClusterInfo *out) {
  size_t at = s.find('@');
  size_t colon = s.rfind(':');
  if (at == std::string::npos || colon == std::string::npos || colon < at) return false;
  uint64_t cluster = 0, port = 0;
  if (!ParseU64(s.substr(0, at), &cluster) || !ParseU64(s.substr(colon + 1), &port) || port > 65535) return false;
  std::string ip = s.substr(at + 1, colon - at - 1);
  ClusterInfo c;
  c.remote_cluster_id = cluster;
  IpInfo local;
  local.ip = AscendString(ip.c_str());
  IpInfo remote;
  remote.ip = AscendString(ip.c_str());
  remote.port = static_cast<uint16_t>(port);
  c.local_ip_infos.push_back(local);
  c.remote_ip_infos.push_back(remote);
  *out = c;
  return true;
}

bool ParseRole(const std::string &s, LlmRole *role) {
  if (s == "prompt")
    *role = LlmRole::kPrompt;
  else if (s == "decoder")
    *role = LlmRole::kDecoder;
  else if (s == "mix")
    *role = LlmRole::kMix;
  else
    return false;
  return true;
}

uint8_t *Allocate(size_t len) {
  auto buf = std::make_unique<itest::GuardedBuffer>();
  if (!buf->Allocate(len)) return nullptr;
  uint8_t *p = buf->data();
  g_buffers.push_back(std::move(buf));
  return p;
}

// Allocates, fills and registers a cache; returns the status (and *id). With
// `adjacent` the tensors are consecutive views of one allocation.
Status AddCache(uint32_t tensors, uint64_t blocks, uint64_t block_bytes, uint64_t seed, CachePlacement placement,
                bool adjacent, int64_t *id) {
  PeerCache c;
  c.tensors = tensors;
  c.blocks = blocks;
  c.block_bytes = block_bytes;
  c.placement = placement;
  std::vector<uint64_t> addrs;
  uint8_t *whole = adjacent ? Allocate(tensors * blocks * block_bytes) : nullptr;
  if (adjacent && whole == nullptr) return LLM_OUT_OF_MEMORY;
  for (uint32_t t = 0; t < tensors; ++t) {
    uint8_t *p = adjacent ? whole + t * blocks * block_bytes : Allocate(blocks * block_bytes);
    if (p == nullptr) return LLM_OUT_OF_MEMORY;
    itest::FillPattern(p, blocks * block_bytes, seed + t, 0);
    c.data.push_back(p);
    addrs.push_back(reinterpret_cast<uint64_t>(p));
  }
  CacheDesc desc;
  desc.placement = placement;
  desc.num_tensors = tensors;
  desc.data_type = DT_UINT8;
  desc.shape = {static_cast<int64_t>(blocks), static_cast<int64_t>(block_bytes)};
  int64_t cache_id = -1;
  Status st = g_dd->RegisterKvCache(desc, addrs, RegisterCfg{}, cache_id);
  if (st != LLM_SUCCESS) return st;
  c.id = cache_id;
  g_caches[cache_id] = c;
  *id = cache_id;
  return LLM_SUCCESS;
}

// Validates "<cache> <t> <off> <len>" at t[i..i+3].
bool TensorRange(const std::vector<std::string> &t, size_t i, uint8_t **p, uint64_t *off, uint64_t *len) {
  int64_t cache = 0;
  uint64_t tensor = 0;
  if (!ParseI64(t[i], &cache) || g_caches.count(cache) == 0 || !ParseU64(t[i + 1], &tensor) ||
      !ParseU64(t[i + 2], off) || !ParseU64(t[i + 3], len))
    return false;
  const PeerCache &c = g_caches[cache];
  const uint64_t size = c.blocks * c.block_bytes;
  if (tensor >= c.tensors || *off > size || *len > size - *off) return false;
  *p = c.data[tensor] + *off;
  return true;
}

Cache LocalCacheArg(int64_t id) {
  Cache c;
  c.cache_id = id;
  auto it = g_caches.find(id);
  if (it != g_caches.end()) {
    c.cache_desc.placement = it->second.placement;
    c.cache_desc.num_tensors = it->second.tensors;
    c.cache_desc.data_type = DT_UINT8;
    c.cache_desc.shape = {static_cast<int64_t>(it->second.blocks), static_cast<int64_t>(it->second.block_bytes)};
    for (uint8_t *p : it->second.data) c.tensor_addrs.push_back(reinterpret_cast<uintptr_t>(p));
  }
  return c;
}

CacheIndex RemoteIndex(uint64_t cluster, int64_t cache, uint32_t batch) {
  CacheIndex idx{};
  idx.cluster_id = cluster;
  idx.cache_id = cache;
  idx.batch_index = batch;
  return idx;
}

void ReplyTimed(Status st, std::chrono::steady_clock::time_point t0) {
  Reply("STATUS " + std::to_string(st) + " " + std::to_string(itest::MsSince(t0)));
}

[[noreturn]] void FinalizeAndExit(int code) {
  // A hanging Finalize must not leave the peer around forever: SIGALRM kills it.
  signal(SIGALRM, SIG_DFL);
  alarm(20);
  if (!g_finalized) g_dd->Finalize();
  alarm(0);
  fflush(stdout);
  _exit(code);
}

void Serve(const std::vector<std::string> &t) {
  const std::string &cmd = t[0];
  if (cmd == "PING") {
    Reply("PONG");
  } else if (cmd == "REGISTER" && t.size() >= 5 && t.size() <= 7) {
    uint64_t tensors = 0, blocks = 0, bytes = 0, seed = 0;
    if (!ParseU64(t[1], &tensors) || !ParseU64(t[2], &blocks) || !ParseU64(t[3], &bytes) || !ParseU64(t[4], &seed) ||
        tensors == 0 || blocks == 0 || bytes == 0)
      return Reply("ERR bad args");
    CachePlacement placement = CachePlacement::kDevice;
    bool adjacent = false;
    for (size_t k = 5; k < t.size(); ++k) {
      if (t[k] == "host")
        placement = CachePlacement::kHost;
      else if (t[k] == "adjacent")
        adjacent = true;
      else if (t[k] != "device")
        return Reply("ERR bad placement or flag '" + t[k] + "'");
    }
    int64_t id = -1;
    Status st = AddCache(static_cast<uint32_t>(tensors), blocks, bytes, seed, placement, adjacent, &id);
    if (st != LLM_SUCCESS) return Reply("STATUS " + std::to_string(st));
    Reply("CACHE " + std::to_string(id));
  } else if (cmd == "UNREGISTER" && t.size() == 2) {
    int64_t id = 0;
    if (!ParseI64(t[1], &id)) return Reply("ERR bad id");
    Status st = g_dd->UnregisterKvCache(id);
    if (st == LLM_SUCCESS) g_caches.erase(id);  // memory stays mapped (g_buffers)
    Reply("STATUS " + std::to_string(st));
  } else if (cmd == "FILL" && t.size() == 3) {
    int64_t id = 0;
    uint64_t seed = 0;
    if (!ParseI64(t[1], &id) || g_caches.count(id) == 0 || !ParseU64(t[2], &seed)) return Reply("ERR bad args");
    const PeerCache &c = g_caches[id];
    for (uint32_t k = 0; k < c.tensors; ++k) itest::FillPattern(c.data[k], c.blocks * c.block_bytes, seed + k, 0);
    Reply("OK");
  } else if (cmd == "CHECK" && t.size() == 7) {
    uint8_t *p = nullptr;
    uint64_t off = 0, len = 0, seed = 0, pos0 = 0;
    if (!TensorRange(t, 1, &p, &off, &len) || !ParseU64(t[5], &seed) || !ParseU64(t[6], &pos0))
      return Reply("ERR bad args");
    size_t bad = itest::FindPatternMismatch(p, len, seed, pos0);
    if (bad == SIZE_MAX) return Reply("OK");
    Reply("BAD " + std::to_string(off + bad));
  } else if (cmd == "DUMP" && t.size() == 5) {
    uint8_t *p = nullptr;
    uint64_t off = 0, len = 0;
    if (!TensorRange(t, 1, &p, &off, &len)) return Reply("ERR bad args");
    static const char kDigits[] = "0123456789abcdef";
    std::string out = "DATA ";
    out.reserve(5 + 2 * len);
    for (uint64_t i = 0; i < len; ++i) {
      out.push_back(kDigits[p[i] >> 4]);
      out.push_back(kDigits[p[i] & 15]);
    }
    Reply(out);
  } else if (cmd == "HASH" && t.size() == 5) {
    uint8_t *p = nullptr;
    uint64_t off = 0, len = 0;
    if (!TensorRange(t, 1, &p, &off, &len)) return Reply("ERR bad args");
    Reply("HASH " + Hex(itest::Hash64(p, len)));
  } else if ((cmd == "LINK" && t.size() >= 3) || (cmd == "UNLINK" && t.size() >= 4)) {
    int64_t timeout = 0;
    if (!ParseI64(t[1], &timeout)) return Reply("ERR bad timeout");
    size_t first = 2;
    bool force = false;
    if (cmd == "UNLINK") {
      if (t[2] != "0" && t[2] != "1") return Reply("ERR bad force flag");
      force = t[2] == "1";
      first = 3;
    }
    std::vector<ClusterInfo> clusters;
    for (size_t i = first; i < t.size(); ++i) {
      ClusterInfo c;
      if (!ParseCluster(t[i], &c)) return Reply("ERR bad cluster " + t[i]);
      clusters.push_back(c);
    }
    std::vector<Status> rets;
    Status st = cmd == "LINK" ? g_dd->LinkLlmClusters(clusters, rets, static_cast<int32_t>(timeout))
                              : g_dd->UnlinkLlmClusters(clusters, rets, static_cast<int32_t>(timeout), force);
    std::string line = "STATUS " + std::to_string(st);
    for (Status r : rets) line += " " + std::to_string(r);
    Reply(line);
  } else if (cmd == "PULL_CACHE" && t.size() >= 7) {
    uint64_t cluster = 0, rbatch = 0, lbatch = 0;
    int64_t rcache = 0, lcache = 0, size = 0;
    KvCacheExtParam ext;
    if (!ParseU64(t[1], &cluster) || !ParseI64(t[2], &rcache) || !ParseU64(t[3], &rbatch) || !ParseI64(t[4], &lcache) ||
        !ParseU64(t[5], &lbatch) || !ParseI64(t[6], &size) || !ParseExt(t, 7, &ext))
      return Reply("ERR bad args");
    auto t0 = itest::Clock::now();
    Status st = g_dd->PullKvCache(RemoteIndex(cluster, rcache, static_cast<uint32_t>(rbatch)), LocalCacheArg(lcache),
                                  static_cast<uint32_t>(lbatch), size, ext);
    ReplyTimed(st, t0);
  } else if ((cmd == "PULL_BLOCKS" || cmd == "PUSH_BLOCKS") && t.size() >= 6) {
    uint64_t cluster = 0;
    int64_t rcache = 0, lcache = 0;
    std::vector<uint64_t> src, dst;
    KvCacheExtParam ext;
    if (!ParseU64(t[1], &cluster) || !ParseI64(t[2], &rcache) || !ParseI64(t[3], &lcache) || !ParseCsv(t[4], &src) ||
        !ParseCsv(t[5], &dst) || !ParseExt(t, 6, &ext))
      return Reply("ERR bad args");
    auto t0 = itest::Clock::now();
    Status st = cmd == "PULL_BLOCKS"
                    ? g_dd->PullKvBlocks(RemoteIndex(cluster, rcache, 0), LocalCacheArg(lcache), src, dst, ext)
                    : g_dd->PushKvBlocks(LocalCacheArg(lcache), RemoteIndex(cluster, rcache, 0), src, dst, ext);
    ReplyTimed(st, t0);
  } else if (cmd == "PUSH_CACHE" && t.size() >= 6) {
    uint64_t cluster = 0, rbatch = 0, sbatch = 0;
    int64_t rcache = 0, lcache = 0;
    KvCacheExtParam ext;
    if (!ParseU64(t[1], &cluster) || !ParseI64(t[2], &rcache) || !ParseU64(t[3], &rbatch) || !ParseI64(t[4], &lcache) ||
        !ParseU64(t[5], &sbatch) || !ParseExt(t, 6, &ext))
      return Reply("ERR bad args");
    auto t0 = itest::Clock::now();
    Status st = g_dd->PushKvCache(LocalCacheArg(lcache), RemoteIndex(cluster, rcache, static_cast<uint32_t>(rbatch)),
                                  static_cast<uint32_t>(sbatch), -1, ext);
    ReplyTimed(st, t0);
  } else if (cmd == "SETROLE" && (t.size() == 2 || t.size() == 3)) {
    LlmRole role;
    if (!ParseRole(t[1], &role)) return Reply("ERR bad role");
    std::map<AscendString, AscendString> options;
    if (t.size() == 3) options[AscendString(OPTION_LISTEN_IP_INFO)] = AscendString(t[2].c_str());
    Reply("STATUS " + std::to_string(g_dd->SetRole(role, options)));
  } else if (cmd == "FINALIZE" && t.size() == 1) {
    g_dd->Finalize();
    g_finalized = true;
    Reply("OK");
  } else if (cmd == "QUIT") {
    FinalizeAndExit(0);
  } else {
    Reply("ERR unknown or malformed command '" + cmd + "'");
  }
}

}  // namespace

int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGPIPE, SIG_IGN);
  uint64_t cluster = 0;
  bool have_cluster = false;
  std::string listen, device = "0", wait_time;
  LlmRole role = LlmRole::kPrompt;
  uint64_t tensors = 4, blocks = 8, block_bytes = 64, seed = 1;
  bool with_cache = true, adjacent_tensors = false;
  std::vector<std::pair<std::string, std::string>> extra;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](std::string *out) {
      if (i + 1 >= argc) {
        fprintf(stderr, "datadist_peer: %s needs a value\n", a.c_str());
        exit(2);
      }
      *out = argv[++i];
    };
    std::string v;
    if (a == "--cluster-id") {
      next(&v);
      have_cluster = ParseU64(v, &cluster);
    } else if (a == "--listen") {
      next(&listen);
    } else if (a == "--role") {
      next(&v);
      if (!ParseRole(v, &role)) {
        fprintf(stderr, "datadist_peer: bad role %s\n", v.c_str());
        return 2;
      }
    } else if (a == "--device") {
      next(&device);
    } else if (a == "--wait-time") {
      next(&wait_time);
    } else if (a == "--tensors") {
      next(&v);
      ParseU64(v, &tensors);
    } else if (a == "--blocks") {
      next(&v);
      ParseU64(v, &blocks);
    } else if (a == "--block-bytes") {
      next(&v);
      ParseU64(v, &block_bytes);
    } else if (a == "--seed") {
      next(&v);
      ParseU64(v, &seed);
    } else if (a == "--no-cache") {
      with_cache = false;
    } else if (a == "--adjacent-tensors") {
      adjacent_tensors = true;
    } else if (a == "--opt") {
      next(&v);
      const size_t eq = v.find('=');
      if (eq == std::string::npos) {
        fprintf(stderr, "datadist_peer: --opt needs KEY=VALUE\n");
        return 2;
      }
      extra.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else {
      fprintf(stderr, "datadist_peer: unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (!have_cluster || tensors == 0 || blocks == 0 || block_bytes == 0) {
    fprintf(stderr, "datadist_peer: --cluster-id is required; geometry must be > 0\n");
    return 2;
  }
  static LlmDataDist dd(cluster, role);  // static: never destroyed behind _exit's back
  g_dd = &dd;
  std::map<AscendString, AscendString> options;
  options[AscendString(OPTION_DEVICE_ID)] = AscendString(device.c_str());
  if (!listen.empty()) options[AscendString(OPTION_LISTEN_IP_INFO)] = AscendString(listen.c_str());
  if (!wait_time.empty()) options[AscendString(OPTION_SYNC_CACHE_WAIT_TIME)] = AscendString(wait_time.c_str());
  for (const auto &kv : extra) options[AscendString(kv.first.c_str())] = AscendString(kv.second.c_str());
  Status st = dd.Initialize(options);
  if (st != LLM_SUCCESS) {
    Reply("INIT_FAILED " + std::to_string(st));
    fflush(stdout);
    _exit(3);
  }
  if (with_cache) {
    int64_t id = -1;
    st = AddCache(static_cast<uint32_t>(tensors), blocks, block_bytes, seed, CachePlacement::kDevice, adjacent_tensors,
                  &id);
    if (st != LLM_SUCCESS) {
      Reply("REGISTER_FAILED " + std::to_string(st));
      FinalizeAndExit(4);
    }
    Reply("CACHE " + std::to_string(id));
  }
  Reply("READY");
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::vector<std::string> tokens;
    std::string tok;
    while (in >> tok) tokens.push_back(tok);
    if (tokens.empty()) continue;
    Serve(tokens);
  }
  FinalizeAndExit(0);
}
