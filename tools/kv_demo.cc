// kv_demo: the main LLM-DataDist V2 demo. A PREFILL process and a DECODE
// process move a model-shaped, paged KV cache through the public
// llm_datadist::LlmDataDist API, exactly as a CANN serving engine does.
//
//   kv_demo [both] [options]     run DECODE here and fork/exec `kv_demo prefill --pipe` (default)
//   kv_demo prefill --listen IP:PORT [options]
//                                the PREFILL side alone (another host): LLM-DataDist listens on
//                                IP:PORT, the demo's control connection on IP:PORT+1
//   kv_demo decode --remote HOST:PORT [options]
//                                the DECODE side alone: connects to a prefill started as above
// Both halves must be given the same model-shape options (the decoder checks).
// Two hosts: docs/TWO_HOSTS.md.
//
// Model-shaped cache: L layers x (K, V) = 2L tensors, each
// [blocks, block_tokens, heads, head_dim] bf16 (CacheDesc.shape is the shape of
// EACH tensor; shape[0] is the block count). Defaults: 32 layers, 128 blocks of
// 16 tokens x 8 heads x 128 dims = 32 KiB per block per tensor, 256 MiB a side.
//
// Flow:
//  1. PREFILL (cluster 100) listens on 127.0.0.1:PORT, registers its cache and
//     fills it with a known pattern; DECODE (cluster 200, client) registers a
//     cache of the same shape filled with a sentinel. The prefill says READY.
//  2. DECODE links, pulls a non-contiguous block list (runs, a reversed run and
//     scattered blocks, remapped to other block numbers) for all layers with
//     PullKvBlocks, N timed calls (the destination blocks are reset to the
//     sentinel before each call), then checks every byte of its cache:
//     pulled blocks carry the source pattern, all other blocks the sentinel.
//  3. PREFILL pushes layer by layer over the link the decoder made (links are
//     bidirectional): PushKvBlocks with ext {src=dst=(i,i), 2 tensors/layer}
//     for each layer, N timed passes (each pass first rewrites its source
//     blocks with a new generation of the pattern, so the last pass alone must
//     deliver every byte). PUSHED -> DECODE checks every byte -> VERIFIED.
//  4. DECODE unlinks (a normal unlink tears down both sides' link), both sides
//     unregister and finalize.
//
// Control protocol (DECODE <-> PREFILL, one line each; over two pipes when
// `both` started the prefill, over a TCP connection to IP:PORT+1 otherwise):
//   prefill -> decode: LOG <text> | READY <port> <cache_id> <layers> <blocks> <block_tokens> <heads> <head_dim> |
//                      PASS <pass> <total_ns> <layer0_ns> ... | PUSHED <generation> |
//                      DONE | FAILED <text>
//   decode -> prefill: PUSH <cluster> <cache_id> <warmup> <iterations> | VERIFIED |
//                      UNLINKED | ABORT
// The child dies with its parent (PR_SET_PDEATHSIG, SIGKILL) and exits when its
// control pipe (stdin) reaches end of file; a standalone prefill serves one
// decoder and exits when its control connection ends.
#include <llm_datadist/llm_datadist.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tool_util.h"

// CANN programs write CacheIndex{cluster_id, cache_id, batch_index} and leave
// `reserved` to aggregate zero-initialisation; so does this demo.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

// Passes the engine's log on as the user's LLMDD_LOG_LEVEL would, and learns
// from it which path the link took (tool_util.h). DECODE side only.
llmdd_tools::LogTap g_tap;

using llmdd_tools::Format;
using llmdd_tools::NowNs;
using llmdd_tools::StatusWithNumber;
using llmdd_tools::WriteAll;

using llm_datadist::AscendString;
using llm_datadist::Cache;
using llm_datadist::CacheDesc;
using llm_datadist::CacheIndex;
using llm_datadist::CachePlacement;
using llm_datadist::ClusterInfo;
using llm_datadist::IpInfo;
using llm_datadist::KvCacheExtParam;
using llm_datadist::LlmDataDist;
using llm_datadist::LlmRole;
using llm_datadist::RegisterCfg;
using llm_datadist::Status;

constexpr uint64_t kPrefillCluster = 100;
constexpr uint64_t kDecodeCluster = 200;
constexpr const char *kLoopback = "127.0.0.1";
constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kTensorAlign = 2 * kMiB;   // like ACL_MEM_MALLOC_HUGE_ONLY
constexpr uint64_t kBf16Bytes = 2;
constexpr uint64_t kPatternSeed = 0x4B5643414348ULL;  // "KVCACH"
constexpr uint64_t kPlanSeed = 0x426C6F636B73ULL;     // "Blocks"
constexpr uint8_t kSentinel = 0xC5;
constexpr int kLinkTimeoutMs = 5000;
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

using Clock = std::chrono::steady_clock;


// ------------------------------------------------------------------ options

struct Options {
  std::string mode = "both";
  int layers = 32;
  int64_t blocks = 128;
  int64_t block_tokens = 16;
  int64_t heads = 8;
  int64_t head_dim = 128;
  int iterations = 20;
  int warmup = 1;
  int port = 0;               // 0: the prefill picks a free port
  int timeout_ms = 10000;     // llm.SyncKvCacheWaitTime
  bool quick = false;
  std::string listen_ip = kLoopback;  // prefill: the address it listens on (--listen IP:PORT)
  std::string remote_host;            // decode: the prefill's host (--remote HOST:PORT)
  std::string local_ip;               // decode: its own address in local_ip_infos (--local IP)
  std::string transport;              // llmdd.Transport on both sides (empty: the engine's default, auto)
  bool pipe_control = false;          // prefill started by `both`: control on stdin/stdout

  uint32_t Tensors() const { return static_cast<uint32_t>(2 * layers); }
  uint64_t BlockBytes() const {
    return static_cast<uint64_t>(block_tokens) * static_cast<uint64_t>(heads) * static_cast<uint64_t>(head_dim) *
           kBf16Bytes;
  }
  uint64_t TensorBytes() const { return BlockBytes() * static_cast<uint64_t>(blocks); }
  uint64_t CacheBytes() const { return TensorBytes() * Tensors(); }
};

void Usage(FILE *out) {
  fprintf(out,
          "usage: kv_demo [both|prefill|decode] [options]\n"
          "  both (default)      run the DECODE side here and a PREFILL process (fork/exec), transfer the\n"
          "                      KV cache both ways, verify every byte, print a table\n"
          "  prefill             the PREFILL side alone, for two hosts: --listen IP:PORT (LLM-DataDist on\n"
          "                      PORT, the demo's control connection on PORT+1); serves one decoder\n"
          "  decode              the DECODE side alone: --remote HOST:PORT of a prefill started as above\n"
          "                      (same model-shape options on both); prints the table\n"
          "options:\n"
          "  --listen IP:PORT    prefill: address to listen on (default 127.0.0.1 and a free port;\n"
          "                      0.0.0.0 for every interface; IPv6 as [addr]:PORT)\n"
          "  --remote HOST:PORT  decode: the prefill's address and LLM-DataDist port\n"
          "  --local IP          decode: its own address for local_ip_infos (default: the address its\n"
          "                      control connection to the prefill left from)\n"
          "  --transport T       llmdd.Transport on both sides: auto (default), tcp, shm or ucx\n"
          "                      (ucx: libraries built with UCX; docs/UCX.md)\n"
          "  --layers N          transformer layers; the cache has 2N tensors (K, V) (default 32, quick 8)\n"
          "  --blocks N          blocks per tensor, shape[0] (default 128, quick 64; at least 8)\n"
          "  --block-tokens N    tokens per block (default 16)\n"
          "  --heads N           KV heads (default 8)\n"
          "  --head-dim N        head dimension (default 128)\n"
          "  --iterations N      timed PullKvBlocks calls and push passes (default 20, quick 5)\n"
          "  --warmup N          untimed calls/passes before them (default 1)\n"
          "  --port N            prefill listen port (same as the PORT of --listen)\n"
          "  --timeout-ms N      llm.SyncKvCacheWaitTime for every transfer (default 10000)\n"
          "  --quick             small model for CI: 8 layers, 64 blocks, 5 iterations\n"
          "  --version           print the library version and exit\n"
          "A shared secret (LLMDD_AUTH_SECRET in both environments) authenticates the two sides.\n");
}

bool ParseInt64(const std::string &text, int64_t min, int64_t max, int64_t *out) {
  if (text.empty()) return false;
  char *end = nullptr;
  errno = 0;
  long long value = strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || value < min || value > max) return false;
  *out = value;
  return true;
}

// "IP:PORT", "HOST:PORT" or "[IPv6]:PORT" -> host (without brackets) and port.
bool SplitHostPort(const std::string &text, std::string *host, int64_t *port) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  std::string h = text.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  else if (h.find(':') != std::string::npos) return false;  // IPv6 needs brackets
  if (h.empty() || !ParseInt64(text.substr(colon + 1), 0, 65535, port)) return false;
  *host = h;
  return true;
}

// An address as llm.ListenIpInfo and messages write it: IPv6 in brackets.
std::string JoinHostPort(const std::string &host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

int ParseArgs(int argc, char **argv, Options *opt) {
  int i = 1;
  if (i < argc && argv[i][0] != '-') opt->mode = argv[i++];
  if (opt->mode != "both" && opt->mode != "prefill" && opt->mode != "decode") {
    fprintf(stderr, "kv_demo: unknown mode '%s'\n", opt->mode.c_str());
    Usage(stderr);
    return kExitUsage;
  }
  // --quick only changes defaults; explicit options win whatever their order.
  std::map<std::string, int64_t> given;
  static const std::map<std::string, std::pair<int64_t, int64_t>> kRanges = {
      {"--layers", {1, 1024}},           {"--blocks", {8, 1 << 20}},   {"--block-tokens", {1, 1 << 16}},
      {"--heads", {1, 1 << 12}},         {"--head-dim", {1, 1 << 16}}, {"--iterations", {1, 100000}},
      {"--warmup", {0, 1000}},           {"--port", {0, 65535}},       {"--timeout-ms", {1, 3600000}},
  };
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      Usage(stdout);
      exit(kExitOk);
    }
    if (arg == "--version") {
      llmdd_tools::PrintVersion("kv_demo");
      exit(kExitOk);
    }
    if (arg == "--quick") {
      opt->quick = true;
      continue;
    }
    if (arg == "--pipe") {  // internal: the prefill that `both` starts
      opt->pipe_control = true;
      continue;
    }
    if (arg == "--listen" || arg == "--remote" || arg == "--local" || arg == "--transport") {
      if (i + 1 >= argc) {
        fprintf(stderr, "kv_demo: %s needs a value\n", arg.c_str());
        return kExitUsage;
      }
      const std::string value = argv[++i];
      int64_t port = 0;
      if (arg == "--listen") {
        if (!SplitHostPort(value, &opt->listen_ip, &port)) {
          fprintf(stderr, "kv_demo: --listen needs IP:PORT (e.g. 0.0.0.0:26000, [::]:26000), got '%s'\n",
                  value.c_str());
          return kExitUsage;
        }
        given["--port"] = port;
      } else if (arg == "--remote") {
        if (!SplitHostPort(value, &opt->remote_host, &port) || port == 0) {
          fprintf(stderr, "kv_demo: --remote needs HOST:PORT of the prefill (e.g. 10.0.0.5:26000), got '%s'\n",
                  value.c_str());
          return kExitUsage;
        }
        given["--port"] = port;
      } else if (arg == "--local") {
        opt->local_ip = value;
      } else {
        if (value != "auto" && value != "tcp" && value != "shm" && value != "ucx") {
          fprintf(stderr, "kv_demo: --transport is auto, tcp, shm or ucx, got '%s'\n", value.c_str());
          return kExitUsage;
        }
        opt->transport = value;
      }
      continue;
    }
    auto range = kRanges.find(arg);
    if (range == kRanges.end()) {
      fprintf(stderr, "kv_demo: unknown option '%s'\n", arg.c_str());
      Usage(stderr);
      return kExitUsage;
    }
    int64_t value = 0;
    if (i + 1 >= argc || !ParseInt64(argv[i + 1], range->second.first, range->second.second, &value)) {
      fprintf(stderr, "kv_demo: %s needs an integer in [%" PRId64 ", %" PRId64 "]\n", arg.c_str(),
              range->second.first, range->second.second);
      return kExitUsage;
    }
    given[arg] = value;
    ++i;
  }
  if (opt->quick) {
    opt->layers = 8;
    opt->blocks = 64;
    opt->iterations = 5;
  }
  auto take = [&](const char *name, auto *field) {
    auto it = given.find(name);
    if (it != given.end()) *field = static_cast<std::remove_pointer_t<decltype(field)>>(it->second);
  };
  take("--layers", &opt->layers);
  take("--blocks", &opt->blocks);
  take("--block-tokens", &opt->block_tokens);
  take("--heads", &opt->heads);
  take("--head-dim", &opt->head_dim);
  take("--iterations", &opt->iterations);
  take("--warmup", &opt->warmup);
  take("--port", &opt->port);
  take("--timeout-ms", &opt->timeout_ms);
  if (opt->mode == "decode" && opt->remote_host.empty()) {
    fprintf(stderr, "kv_demo: decode needs --remote HOST:PORT (the prefill's --listen address)\n");
    return kExitUsage;
  }
  if (opt->mode == "prefill" && !opt->pipe_control && opt->port == 65535) {
    fprintf(stderr, "kv_demo: the prefill's control connection takes PORT+1: choose a PORT below 65535\n");
    return kExitUsage;
  }
  // Every factor is range-checked above, so the product fits in 128 bits.
  const unsigned __int128 cache_bytes = static_cast<unsigned __int128>(opt->block_tokens) * opt->heads *
                                        opt->head_dim * kBf16Bytes * opt->blocks * opt->Tensors();
  if (cache_bytes > 16ULL * 1024 * kMiB) {
    fprintf(stderr, "kv_demo: the cache would exceed 16 GiB per side\n");
    return kExitUsage;
  }
  return kExitOk;
}

std::string HumanBytes(uint64_t bytes) {
  char buf[48];
  if (bytes >= kMiB * 1024 && bytes % (kMiB * 1024) == 0) {
    snprintf(buf, sizeof(buf), "%" PRIu64 " GiB", bytes / (kMiB * 1024));
  } else if (bytes >= kMiB) {
    snprintf(buf, sizeof(buf), bytes % kMiB == 0 ? "%.0f MiB" : "%.2f MiB", static_cast<double>(bytes) / kMiB);
  } else if (bytes >= kKiB) {
    snprintf(buf, sizeof(buf), bytes % kKiB == 0 ? "%.0f KiB" : "%.2f KiB", static_cast<double>(bytes) / kKiB);
  } else {
    snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  }
  return buf;
}

std::string StatusText(Status s) { return StatusWithNumber(s); }

// ------------------------------------------------------------------ data

uint64_t Mix(uint64_t x) {  // splitmix64
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The prefill's content of (tensor, block) in pattern generation `gen`:
// word w of the block is splitmix64 of (gen, tensor, block, w).
void FillPattern(uint8_t *dst, uint64_t bytes, uint64_t gen, uint64_t tensor, uint64_t block) {
  const uint64_t seed = Mix(Mix(Mix(kPatternSeed + gen) + tensor) + block);
  uint64_t w = 0;
  for (; (w + 1) * 8 <= bytes; ++w) {
    uint64_t v = Mix(seed + w);
    memcpy(dst + w * 8, &v, 8);
  }
  if (w * 8 < bytes) {
    uint64_t v = Mix(seed + w);
    memcpy(dst + w * 8, &v, bytes - w * 8);
  }
}

struct FreeDeleter {
  void operator()(uint8_t *p) const { free(p); }
};
using TensorMem = std::unique_ptr<uint8_t, FreeDeleter>;

// "Device" tensors: one 2 MiB-aligned allocation per tensor, as a CANN program
// makes one aclrtMalloc per KV tensor.
bool AllocateTensors(const Options &opt, std::vector<TensorMem> *tensors, std::vector<uint64_t> *addrs,
                     std::string *error) {
  const uint64_t bytes = (opt.TensorBytes() + kTensorAlign - 1) / kTensorAlign * kTensorAlign;
  for (uint32_t t = 0; t < opt.Tensors(); ++t) {
    void *p = aligned_alloc(kTensorAlign, bytes);
    if (p == nullptr) {
      *error = "cannot allocate " + HumanBytes(bytes) + " for tensor " + std::to_string(t);
      return false;
    }
    tensors->emplace_back(static_cast<uint8_t *>(p));
    addrs->push_back(reinterpret_cast<uintptr_t>(p));
  }
  return true;
}

CacheDesc ModelCacheDesc(const Options &opt) {
  CacheDesc desc{};
  desc.placement = CachePlacement::kDevice;
  desc.num_tensors = opt.Tensors();
  desc.data_type = llm_datadist::DT_BF16;
  desc.shape = {opt.blocks, opt.block_tokens, opt.heads, opt.head_dim};
  return desc;
}

// ------------------------------------------------------------------ block lists

struct BlockList {
  std::vector<uint64_t> src;
  std::vector<uint64_t> dst;
};

struct BlockPlans {
  BlockList pull;
  BlockList push;
  std::vector<uint64_t> untouched;  // destination blocks neither list writes
};

struct Rng {
  uint64_t state;
  uint64_t Next() { return Mix(state++); }
  uint64_t Below(uint64_t n) { return Next() % n; }
};

// Both processes compute the same lists from the block count. With c = blocks/8
// and K = 3c blocks per list:
//   pull: K sources picked at random from [0, 4c), ascending (so they form runs
//         with gaps); push: K sources from [4c, 8c).
//   pull destinations: [c, 3c) + [5c, 6c); push: [0, c) + [4c, 5c) + [6c, 7c);
//   untouched (must keep the sentinel): [3c, 4c) + [7c, blocks).
//   Sources are mapped in order onto the first K/2 destinations (runs that are
//   consecutive on both sides), reversed onto the next K/4, and shuffled onto
//   the rest (scattered).
BlockPlans MakeBlockPlans(uint64_t blocks) {
  const uint64_t c = blocks / 8;
  const uint64_t k = 3 * c;
  Rng rng{kPlanSeed};
  auto pick_sources = [&](uint64_t lo) {
    std::vector<uint64_t> all;
    for (uint64_t b = lo; b < lo + 4 * c; ++b) all.push_back(b);
    for (uint64_t i = 0; i < k; ++i) std::swap(all[i], all[i + rng.Below(all.size() - i)]);
    all.resize(k);
    std::sort(all.begin(), all.end());
    return all;
  };
  auto map_onto = [&](const std::vector<uint64_t> &pool) {
    std::vector<uint64_t> dst(k);
    const uint64_t a = k / 2, r = k / 4;
    for (uint64_t i = 0; i < a; ++i) dst[i] = pool[i];
    for (uint64_t i = 0; i < r; ++i) dst[a + i] = pool[a + r - 1 - i];
    std::vector<uint64_t> rest(pool.begin() + static_cast<std::ptrdiff_t>(a + r), pool.end());
    for (uint64_t i = rest.size(); i > 1; --i) std::swap(rest[i - 1], rest[rng.Below(i)]);
    std::copy(rest.begin(), rest.end(), dst.begin() + static_cast<std::ptrdiff_t>(a + r));
    return dst;
  };
  auto range = [](std::vector<uint64_t> *v, uint64_t lo, uint64_t hi) {
    for (uint64_t b = lo; b < hi; ++b) v->push_back(b);
  };
  BlockPlans plans;
  std::vector<uint64_t> pull_pool, push_pool;
  range(&pull_pool, c, 3 * c);
  range(&pull_pool, 5 * c, 6 * c);
  range(&push_pool, 0, c);
  range(&push_pool, 4 * c, 5 * c);
  range(&push_pool, 6 * c, 7 * c);
  range(&plans.untouched, 3 * c, 4 * c);
  range(&plans.untouched, 7 * c, blocks);
  plans.pull.src = pick_sources(0);
  plans.pull.dst = map_onto(pull_pool);
  plans.push.src = pick_sources(4 * c);
  plans.push.dst = map_onto(push_pool);
  return plans;
}

// Index pairs consecutive on both sides form one contiguous copy.
size_t CountRuns(const BlockList &list) {
  size_t runs = 0;
  for (size_t i = 0; i < list.src.size(); ++i) {
    if (i == 0 || list.src[i] != list.src[i - 1] + 1 || list.dst[i] != list.dst[i - 1] + 1) ++runs;
  }
  return runs;
}

std::string DescribeList(const BlockList &list) {
  std::string out;
  size_t i = 0;
  while (i < list.src.size()) {
    size_t j = i;
    while (j + 1 < list.src.size() && list.src[j + 1] == list.src[j] + 1 && list.dst[j + 1] == list.dst[j] + 1) ++j;
    char buf[96];
    if (j == i) {
      snprintf(buf, sizeof(buf), "%" PRIu64 ">%" PRIu64, list.src[i], list.dst[i]);
    } else {
      snprintf(buf, sizeof(buf), "%" PRIu64 "-%" PRIu64 ">%" PRIu64 "-%" PRIu64, list.src[i], list.src[j],
               list.dst[i], list.dst[j]);
    }
    if (!out.empty()) out += ' ';
    out += buf;
    i = j + 1;
  }
  return out;
}

// ------------------------------------------------------------------ control pipe

// Reads '\n'-terminated lines from a file descriptor.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // 1: a line; 0: end of file; -1: timeout (timeout_ms >= 0) or error.
  int ReadLine(std::string *line, int timeout_ms) {
    const int64_t deadline = timeout_ms < 0 ? INT64_MAX : NowNs() + int64_t{timeout_ms} * 1000000;
    for (;;) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return 1;
      }
      if (eof_) return 0;
      if (timeout_ms >= 0) {
        int64_t left_ms = (deadline - NowNs()) / 1000000;
        if (left_ms <= 0) return -1;
        pollfd pfd{fd_, POLLIN, 0};
        int rc = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, INT32_MAX)));
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) return -1;
        if (rc == 0) continue;
      }
      char chunk[4096];
      ssize_t n = read(fd_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return -1;
      if (n == 0) {
        eof_ = true;
        if (!buf_.empty()) {  // a last line without '\n'
          *line = buf_;
          buf_.clear();
          return 1;
        }
        return 0;
      }
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};



std::vector<std::string> Split(const std::string &line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  std::string word;
  while (in >> word) out.push_back(word);
  return out;
}

// ------------------------------------------------------------------ PREFILL

class Prefill {
 public:
  explicit Prefill(const Options &opt) : opt_(opt), plans_(MakeBlockPlans(static_cast<uint64_t>(opt.blocks))) {}

  int Run() {
    int rc = Serve();
    if (rc != kExitOk) Teardown();
    if (control_fd_ >= 0) close(control_fd_);
    if (listen_fd_ >= 0) close(listen_fd_);
    return rc;
  }

 private:
  // Started by `both`: the control protocol on stdin/stdout. Standalone: on
  // the decoder's TCP connection, and what the prefill says is printed here too.
  void Send(const std::string &line) {
    if (opt_.pipe_control) {
      WriteAll(STDOUT_FILENO, line + "\n");
    } else if (control_fd_ >= 0) {
      WriteAll(control_fd_, line + "\n");
    }
  }
  void Print(const std::string &text) {
    if (!opt_.pipe_control) printf("[prefill] %s\n", text.c_str());
  }
  void Log(const std::string &text) {
    Print(text);
    Send("LOG " + text);
  }
  int Fail(const std::string &text) {
    if (!opt_.pipe_control) printf("FAILED: %s\n", text.c_str());
    Send("FAILED " + text);
    return kExitFailed;
  }

  // A TCP socket bound to host:port (port 0: a free one); -1 with *error.
  static int BoundSocket(const std::string &host, int port, int *bound_port, std::string *error) {
    sockaddr_storage addr{};
    socklen_t len = 0;
    int family = AF_INET;
    if (host.find(':') != std::string::npos) {
      auto *a6 = reinterpret_cast<sockaddr_in6 *>(&addr);
      a6->sin6_family = family = AF_INET6;
      a6->sin6_port = htons(static_cast<uint16_t>(port));
      if (inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) != 1) {
        *error = "'" + host + "' is not an IPv6 address";
        return -1;
      }
      len = sizeof(sockaddr_in6);
    } else {
      auto *a4 = reinterpret_cast<sockaddr_in *>(&addr);
      a4->sin_family = AF_INET;
      a4->sin_port = htons(static_cast<uint16_t>(port));
      if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1) {
        *error = "'" + host + "' is not an IPv4 address (give the prefill an IP to listen on)";
        return -1;
      }
      len = sizeof(sockaddr_in);
    }
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), len) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
      *error = Format("cannot bind %s: %s", JoinHostPort(host, port).c_str(), strerror(errno));
      if (fd >= 0) close(fd);
      return -1;
    }
    *bound_port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6 *>(&addr)->sin6_port
                                           : reinterpret_cast<sockaddr_in *>(&addr)->sin_port);
    return fd;
  }

  static int PickFreePort(const std::string &host) {
    int port = -1;
    std::string error;
    int fd = BoundSocket(host, 0, &port, &error);
    if (fd < 0) return -1;
    close(fd);
    return port;
  }

  std::map<AscendString, AscendString> InitOptions(int port) const {
    std::map<AscendString, AscendString> options;
    options[llm_datadist::OPTION_DEVICE_ID] = "0";
    // llm.ListenIpInfo is one string "ip:port" (IPv6: "[ip]:port"); a
    // std::string value needs .c_str() to become an AscendString.
    std::string listen = JoinHostPort(opt_.listen_ip, port);
    options[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();
    options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = std::to_string(opt_.timeout_ms).c_str();
    if (!opt_.transport.empty()) options["llmdd.Transport"] = opt_.transport.c_str();
    return options;
  }

  // Standalone: waits for the decoder's control connection on PORT+1.
  int AcceptDecoder() {
    std::string error;
    int control_port = 0;
    listen_fd_ = BoundSocket(opt_.listen_ip, port_ + 1, &control_port, &error);
    if (listen_fd_ < 0 || listen(listen_fd_, 1) != 0)
      return Fail("demo control port: " + (error.empty() ? std::string(strerror(errno)) : error));
    Print(Format("waiting for the decoder: on the other host run  kv_demo decode --remote <this host's address>:%d "
                 "(and the same model-shape options); control connection on port %d",
                 port_, control_port));
    fflush(stdout);
    for (;;) {
      sockaddr_storage peer{};
      socklen_t len = sizeof(peer);
      control_fd_ = accept4(listen_fd_, reinterpret_cast<sockaddr *>(&peer), &len, SOCK_CLOEXEC);
      if (control_fd_ >= 0) break;
      if (errno != EINTR) return Fail(Format("accept on the control port: %s", strerror(errno)));
    }
    close(listen_fd_);  // one decoder per run
    listen_fd_ = -1;
    Print("decoder connected to the control port");
    return kExitOk;
  }

  void FillBlocks(const std::vector<uint64_t> &blocks, uint64_t gen) {
    const uint64_t bb = opt_.BlockBytes();
    for (uint32_t t = 0; t < opt_.Tensors(); ++t)
      for (uint64_t b : blocks) FillPattern(tensors_[t].get() + b * bb, bb, gen, t, b);
  }

  int Serve() {
    std::string error;
    std::vector<uint64_t> addrs;
    if (!AllocateTensors(opt_, &tensors_, &addrs, &error)) return Fail(error);
    std::vector<uint64_t> all_blocks;
    for (int64_t b = 0; b < opt_.blocks; ++b) all_blocks.push_back(static_cast<uint64_t>(b));
    FillBlocks(all_blocks, 0);

    // A free port may be taken between the probe and Initialize: try again.
    Status st = llm_datadist::LLM_FAILED;
    for (int attempt = 0; attempt < (opt_.port == 0 ? 8 : 1); ++attempt) {
      port_ = opt_.port != 0 ? opt_.port : PickFreePort(opt_.listen_ip);
      if (port_ <= 0) return Fail("cannot find a free TCP port on " + opt_.listen_ip);
      dd_ = std::make_unique<LlmDataDist>(kPrefillCluster, LlmRole::kPrompt);
      st = dd_->Initialize(InitOptions(port_));
      if (st == llm_datadist::LLM_SUCCESS) break;
      dd_.reset();
    }
    if (st != llm_datadist::LLM_SUCCESS)
      return Fail(Format("prefill Initialize (listen %s): %s", JoinHostPort(opt_.listen_ip, port_).c_str(),
                         StatusText(st).c_str()));
    initialized_ = true;

    desc_ = ModelCacheDesc(opt_);
    st = dd_->RegisterKvCache(desc_, addrs, RegisterCfg{}, cache_id_);
    if (st != llm_datadist::LLM_SUCCESS) return Fail("prefill RegisterKvCache: " + StatusText(st));
    registered_ = true;
    if (!opt_.pipe_control) {
      Print(llmdd_tools::MachineLine());
      Print(getenv("LLMDD_AUTH_SECRET") != nullptr && getenv("LLMDD_AUTH_SECRET")[0] != '\0'
                ? "authentication: on (LLMDD_AUTH_SECRET): only peers with the same secret are served"
                : "authentication: off: anyone who reaches the port may link and read or write the cache "
                  "(set LLMDD_AUTH_SECRET on both hosts; docs/TWO_HOSTS.md)");
    }
    Log(Format("pid %d, cluster %" PRIu64 ", listening on %s; RegisterKvCache -> cache id %" PRId64
               " (%u tensors x %s), filled with the pattern",
               getpid(), kPrefillCluster, JoinHostPort(opt_.listen_ip, port_).c_str(), cache_id_, opt_.Tensors(),
               HumanBytes(opt_.TensorBytes()).c_str()));
    if (!opt_.pipe_control) {
      int rc = AcceptDecoder();
      if (rc != kExitOk) return rc;
    }
    Send(Format("READY %d %" PRId64 " %d %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64, port_, cache_id_, opt_.layers,
                opt_.blocks, opt_.block_tokens, opt_.heads, opt_.head_dim));

    LineReader control(opt_.pipe_control ? STDIN_FILENO : control_fd_);
    for (;;) {
      std::string line;
      int rc = control.ReadLine(&line, -1);
      if (rc <= 0) {
        // The decoder is gone (or closed the pipe): clean up and leave.
        fprintf(stderr, "kv_demo prefill: control pipe closed; exiting\n");
        return kExitFailed;
      }
      std::vector<std::string> words = Split(line);
      if (words.empty()) continue;
      if (words[0] == "PUSH" && words.size() == 5) {
        int64_t cluster = 0, cache = 0, warmup = 0, iterations = 0;
        if (!ParseInt64(words[1], 0, INT64_MAX, &cluster) || !ParseInt64(words[2], 1, INT64_MAX, &cache) ||
            !ParseInt64(words[3], 0, 1000, &warmup) || !ParseInt64(words[4], 1, 100000, &iterations))
          return Fail("malformed command: " + line);
        int prc = PushLayerWise(static_cast<uint64_t>(cluster), cache, static_cast<int>(warmup),
                                static_cast<int>(iterations));
        if (prc != kExitOk) return prc;
      } else if (words[0] == "VERIFIED") {
        continue;  // the decoder checked the pushed blocks; it unlinks next
      } else if (words[0] == "UNLINKED") {
        return Finish();
      } else if (words[0] == "ABORT") {
        fprintf(stderr, "kv_demo prefill: decoder aborted the demo; exiting\n");
        return kExitFailed;
      } else {
        return Fail("unknown command: " + line);
      }
    }
  }

  // Layer-wise push over the link the decoder made (this side only listens).
  int PushLayerWise(uint64_t dst_cluster, int64_t dst_cache, int warmup, int iterations) {
    Cache src{};
    src.cache_id = cache_id_;
    src.cache_desc = desc_;
    for (const auto &t : tensors_) src.tensor_addrs.push_back(reinterpret_cast<uintptr_t>(t.get()));
    const CacheIndex dst{dst_cluster, dst_cache, 0};
    const int passes = warmup + iterations;
    for (int pass = 0; pass < passes; ++pass) {
      // A new generation of the source blocks (untimed): the last pass alone
      // must deliver every byte the decoder checks.
      FillBlocks(plans_.push.src, static_cast<uint64_t>(pass) + 1);
      std::string timings;
      const int64_t pass_start = NowNs();
      for (int layer = 0; layer < opt_.layers; ++layer) {
        KvCacheExtParam ext{};
        ext.src_layer_range = {layer, layer};
        ext.dst_layer_range = {layer, layer};
        ext.tensor_num_per_layer = 2;
        const int64_t t0 = NowNs();
        Status st = dd_->PushKvBlocks(src, dst, plans_.push.src, plans_.push.dst, ext);
        const int64_t t1 = NowNs();
        if (st != llm_datadist::LLM_SUCCESS)
          return Fail(Format("PushKvBlocks (pass %d, layer %d, %zu blocks, to cluster %" PRIu64 " cache %" PRId64
                             "): %s",
                             pass, layer, plans_.push.src.size(), dst.cluster_id, dst.cache_id,
                             StatusText(st).c_str()));
        timings += ' ';
        timings += std::to_string(t1 - t0);
      }
      const int64_t pass_ns = NowNs() - pass_start;
      Send(Format("PASS %d %" PRId64 "%s", pass, pass_ns, timings.c_str()));
    }
    Log(Format("pushed %d pass(es) x %d layers (PushKvBlocks, ext src=dst=(i,i), 2 tensors/layer) to cluster "
               "%" PRIu64 " cache %" PRId64,
               passes, opt_.layers, dst_cluster, dst_cache));
    Send(Format("PUSHED %d", passes));
    return kExitOk;
  }

  // The decoder unlinked (a normal unlink tears down both sides).
  int Finish() {
    Status st = dd_->UnregisterKvCache(cache_id_);
    registered_ = false;
    if (st != llm_datadist::LLM_SUCCESS) return Fail("prefill UnregisterKvCache: " + StatusText(st));
    dd_->Finalize();
    initialized_ = false;
    Log("UnregisterKvCache, Finalize: done");
    Send("DONE");
    return kExitOk;
  }

  void Teardown() {
    if (!dd_) return;
    if (registered_) dd_->UnregisterKvCache(cache_id_);
    if (initialized_) dd_->Finalize();
    registered_ = initialized_ = false;
  }

  const Options &opt_;
  BlockPlans plans_;
  std::vector<TensorMem> tensors_;
  std::unique_ptr<LlmDataDist> dd_;
  CacheDesc desc_{};
  int port_ = 0;
  int64_t cache_id_ = -1;
  bool initialized_ = false;
  bool registered_ = false;
  int listen_fd_ = -1;   // standalone: the control port until the decoder connects
  int control_fd_ = -1;  // standalone: the decoder's control connection
};

// ------------------------------------------------------------------ DECODE (parent)

struct Series {
  std::string name;
  uint64_t bytes_per_call = 0;
  std::vector<int64_t> ns;
};

double Percentile(std::vector<int64_t> v, double p) {  // nearest rank
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  rank = std::clamp<size_t>(rank, 1, v.size());
  return static_cast<double>(v[rank - 1]);
}

void PrintTable(const std::vector<Series> &rows) {
  printf("\n%-40s %6s %11s %9s %9s %9s %9s\n", "operation", "calls", "bytes/call", "GB/s", "GB/s p50", "p50 ms",
         "p99 ms");
  for (const Series &s : rows) {
    int64_t total_ns = 0;
    for (int64_t v : s.ns) total_ns += v;
    const double total_bytes = static_cast<double>(s.bytes_per_call) * static_cast<double>(s.ns.size());
    const double p50 = Percentile(s.ns, 50), p99 = Percentile(s.ns, 99);
    printf("%-40s %6zu %11s %9.2f %9.2f %9.3f %9.3f\n", s.name.c_str(), s.ns.size(),
           HumanBytes(s.bytes_per_call).c_str(), total_ns > 0 ? total_bytes / static_cast<double>(total_ns) : 0.0,
           p50 > 0 ? static_cast<double>(s.bytes_per_call) / p50 : 0.0, p50 / 1e6, p99 / 1e6);
  }
  printf("GB/s = total bytes / total time of the calls; GB/s p50 = bytes per call / median latency; "
         "GB = 10^9 B\n\n");
}

// "same-host" / "tcp" / "ucx" (LogTap::PathTo) in words.
const char *PathText(const std::string &path) {
  if (path == "same-host") return "same-host path (one copy between the processes, process_vm_readv/writev)";
  if (path == "tcp") return "TCP path (sockets)";
  if (path == "ucx") return "UCX path (the fabric UCX picked: RDMA on InfiniBand/RoCE, docs/UCX.md)";
  return "path the engine did not log (unknown)";
}

class Decode {
 public:
  Decode(const Options &opt, const char *self)
      : opt_(opt), self_(self), plans_(MakeBlockPlans(static_cast<uint64_t>(opt.blocks))) {}

  int Run() {
    int rc = Demo();
    if (rc != kExitOk) {
      Teardown();
      StopChild(/*abort=*/true);
    }
    return rc;
  }

 private:
  void Say(const std::string &text) {
    printf("%s\n", text.c_str());
    fflush(stdout);
  }
  int Fail(const std::string &text) {
    Say("FAILED: " + text);
    return kExitFailed;
  }

  bool StartChild(std::string *error) {
    std::vector<std::string> args = {self_,
                                     "prefill",
                                     "--layers",
                                     std::to_string(opt_.layers),
                                     "--blocks",
                                     std::to_string(opt_.blocks),
                                     "--block-tokens",
                                     std::to_string(opt_.block_tokens),
                                     "--heads",
                                     std::to_string(opt_.heads),
                                     "--head-dim",
                                     std::to_string(opt_.head_dim),
                                     "--listen",
                                     JoinHostPort(opt_.listen_ip, opt_.port),
                                     "--timeout-ms",
                                     std::to_string(opt_.timeout_ms),
                                     "--pipe"};
    if (!opt_.transport.empty()) {
      args.push_back("--transport");
      args.push_back(opt_.transport);
    }
    if (!llmdd_tools::SpawnSelf(args, &child_, &to_child_, &from_child_, error)) return false;
    reader_ = std::make_unique<LineReader>(from_child_);
    remote_ip_ = local_ip_ = opt_.listen_ip == "0.0.0.0" ? kLoopback : opt_.listen_ip == "::" ? "::1" : opt_.listen_ip;
    return true;
  }

  // decode mode: the control connection to the prefill's PORT+1 (retried for
  // up to a minute, so either half may be started first).
  bool ConnectControl(std::string *error) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    const std::string service = std::to_string(opt_.port + 1);
    const int64_t deadline = NowNs() + 60 * int64_t{1000000000};
    bool said = false;
    for (;;) {
      addrinfo *found = nullptr;
      int rc = getaddrinfo(opt_.remote_host.c_str(), service.c_str(), &hints, &found);
      if (rc != 0) {
        *error = "cannot resolve '" + opt_.remote_host + "': " + gai_strerror(rc);
        return false;
      }
      int last_errno = 0;
      for (addrinfo *a = found; a != nullptr && to_child_ < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          char ip[INET6_ADDRSTRLEN] = "";
          const void *where = a->ai_family == AF_INET6
                                  ? static_cast<const void *>(&reinterpret_cast<sockaddr_in6 *>(a->ai_addr)->sin6_addr)
                                  : static_cast<const void *>(&reinterpret_cast<sockaddr_in *>(a->ai_addr)->sin_addr);
          inet_ntop(a->ai_family, where, ip, sizeof(ip));
          remote_ip_ = ip;
          // Our own address on the route to the prefill: what local_ip_infos names.
          sockaddr_storage self{};
          socklen_t len = sizeof(self);
          if (getsockname(fd, reinterpret_cast<sockaddr *>(&self), &len) == 0) {
            const void *mine = self.ss_family == AF_INET6
                                   ? static_cast<const void *>(&reinterpret_cast<sockaddr_in6 *>(&self)->sin6_addr)
                                   : static_cast<const void *>(&reinterpret_cast<sockaddr_in *>(&self)->sin_addr);
            inet_ntop(self.ss_family, mine, ip, sizeof(ip));
            local_ip_ = ip;
          }
          to_child_ = fd;
          from_child_ = dup(fd);
          break;
        }
        last_errno = errno;
        close(fd);
      }
      freeaddrinfo(found);
      if (to_child_ >= 0) break;
      if (NowNs() > deadline) {
        *error = Format("no prefill control port at %s within 60 s (%s): start `kv_demo prefill --listen IP:%d` there, "
                        "and let TCP ports %d and %d through its firewall",
                        JoinHostPort(opt_.remote_host, opt_.port + 1).c_str(), strerror(last_errno), opt_.port,
                        opt_.port, opt_.port + 1);
        return false;
      }
      if (!said) {
        Say(Format("[decode] waiting for the prefill's control port %s (%s) ...",
                   JoinHostPort(opt_.remote_host, opt_.port + 1).c_str(), strerror(last_errno)));
        said = true;
      }
      usleep(500000);
    }
    if (!opt_.local_ip.empty()) local_ip_ = opt_.local_ip;
    reader_ = std::make_unique<LineReader>(from_child_);
    Say(Format("[decode] control connection to the prefill at %s", JoinHostPort(remote_ip_, opt_.port + 1).c_str()));
    return true;
  }

  bool Tell(const std::string &line) {
    if (to_child_ < 0 || !WriteAll(to_child_, line + "\n")) {
      Fail("cannot write '" + line + "' to the prefill process: " + strerror(errno));
      return false;
    }
    return true;
  }

  // Next protocol line from the prefill (its LOG lines are printed on the way).
  // False (after printing a FAILED line) on FAILED, end of file or timeout.
  bool Next(std::vector<std::string> *words, std::string *raw, int timeout_ms) {
    for (;;) {
      std::string line;
      int rc = reader_->ReadLine(&line, timeout_ms);
      if (rc == 0) {
        Fail("the prefill process ended unexpectedly" + ReapChildText());
        return false;
      }
      if (rc < 0) {
        Fail(Format("no message from the prefill process within %d ms", timeout_ms));
        return false;
      }
      if (line.rfind("LOG ", 0) == 0) {
        Say("[prefill] " + line.substr(4));
        continue;
      }
      if (line.rfind("FAILED", 0) == 0) {
        Fail("[prefill] " + line.substr(std::min<size_t>(line.size(), 7)));
        return false;
      }
      *words = Split(line);
      if (raw) *raw = line;
      if (words->empty()) continue;
      return true;
    }
  }

  bool Expect(const char *keyword, size_t min_words, std::vector<std::string> *words, int timeout_ms) {
    std::string raw;
    if (!Next(words, &raw, timeout_ms)) return false;
    if ((*words)[0] != keyword || words->size() < min_words) {
      Fail(Format("expected %s from the prefill process, got '%s'", keyword, raw.c_str()));
      return false;
    }
    return true;
  }

  std::string ReapChildText() {
    if (child_ <= 0) return "";
    int status = 0;
    for (int i = 0; i < 50; ++i) {
      pid_t r = waitpid(child_, &status, WNOHANG);
      if (r == child_) {
        child_ = -1;
        if (WIFEXITED(status)) return Format(" (exit status %d)", WEXITSTATUS(status));
        if (WIFSIGNALED(status)) return Format(" (killed by signal %d)", WTERMSIG(status));
        return "";
      }
      usleep(20000);
    }
    return "";
  }

  // Waits for the child; with abort it is asked to leave, then killed.
  int StopChild(bool abort) {
    if (opt_.mode == "decode") {  // a remote prefill: end the control connection
      if (abort && to_child_ >= 0) WriteAll(to_child_, "ABORT\n");
      if (to_child_ >= 0) close(to_child_);
      if (from_child_ >= 0) close(from_child_);
      to_child_ = from_child_ = -1;
      return 0;
    }
    if (child_ <= 0) return -1;
    if (abort && to_child_ >= 0) WriteAll(to_child_, "ABORT\n");
    if (to_child_ >= 0) close(to_child_);  // end of file: the prefill exits
    to_child_ = -1;
    int status = 0;
    for (int i = 0; i < 500; ++i) {  // up to 10 s
      pid_t r = waitpid(child_, &status, WNOHANG);
      if (r == child_) {
        child_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
      }
      usleep(20000);
    }
    kill(child_, SIGKILL);
    waitpid(child_, &status, 0);
    child_ = -1;
    return 128 + SIGKILL;
  }

  ClusterInfo PrefillCluster() const {
    ClusterInfo cluster{};
    cluster.remote_cluster_id = kPrefillCluster;
    cluster.remote_role_type = 0;  // docs: 0 = full (prompt)
    // IpInfo.ip is an AscendString: a std::string needs .c_str().
    IpInfo local{};
    local.ip = local_ip_.c_str();
    IpInfo remote{};
    remote.ip = remote_ip_.c_str();
    remote.port = static_cast<uint16_t>(prefill_port_);
    cluster.local_ip_infos.push_back(local);
    cluster.remote_ip_infos.push_back(remote);
    return cluster;
  }

  void ResetBlocks(const std::vector<uint64_t> &blocks) {
    const uint64_t bb = opt_.BlockBytes();
    for (uint32_t t = 0; t < opt_.Tensors(); ++t)
      for (uint64_t b : blocks) memset(tensors_[t].get() + b * bb, kSentinel, bb);
  }

  // What each destination block must hold: the prefill's pattern of a source
  // block in some generation, or the sentinel (src < 0).
  struct Expected {
    int64_t src = -1;
    uint64_t gen = 0;
  };

  // Checks every byte of every tensor. Returns false after printing FAILED.
  bool Verify(const char *phase, const std::vector<Expected> &expected) {
    const uint64_t bb = opt_.BlockBytes();
    std::vector<uint8_t> want(bb), sentinel(bb, kSentinel);
    uint64_t wrong_blocks = 0, checked_blocks = 0;
    std::string first;
    for (uint32_t t = 0; t < opt_.Tensors(); ++t) {
      for (uint64_t b = 0; b < static_cast<uint64_t>(opt_.blocks); ++b) {
        const uint8_t *got = tensors_[t].get() + b * bb;
        const uint8_t *ref = sentinel.data();
        if (expected[b].src >= 0) {
          FillPattern(want.data(), bb, expected[b].gen, t, static_cast<uint64_t>(expected[b].src));
          ref = want.data();
        }
        ++checked_blocks;
        if (memcmp(got, ref, bb) == 0) continue;
        if (++wrong_blocks == 1) {
          uint64_t off = 0;
          while (off < bb && got[off] == ref[off]) ++off;
          first = Format("tensor %u (layer %u %c) block %" PRIu64 " byte %" PRIu64 ": expected 0x%02X, got 0x%02X (%s)",
                         t, t / 2, t % 2 == 0 ? 'K' : 'V', b, off, ref[off], got[off],
                         expected[b].src >= 0
                             ? Format("pattern gen %" PRIu64 " of source block %" PRId64, expected[b].gen,
                                      expected[b].src)
                                   .c_str()
                             : "sentinel: block not in any list");
        }
      }
    }
    if (wrong_blocks != 0) {
      Fail(Format("verification after %s: %" PRIu64 " of %" PRIu64 " blocks wrong; first: %s", phase, wrong_blocks,
                  checked_blocks, first.c_str()));
      return false;
    }
    bytes_checked_ += checked_blocks * bb;
    return true;
  }

  int Demo() {
    const BlockPlans &p = plans_;
    Say("kv_demo: LLM-DataDist V2 KV-cache transfer between a PREFILL and a DECODE process (public API only)");
    Say(Format("  KV cache: %d layers x (K,V) = %u tensors, each [%" PRId64 " blocks, %" PRId64 " tokens, %" PRId64
               " heads, %" PRId64 " dims] bf16",
               opt_.layers, opt_.Tensors(), opt_.blocks, opt_.block_tokens, opt_.heads, opt_.head_dim));
    Say(Format("  %s per block per tensor, %s per tensor, %s per side", HumanBytes(opt_.BlockBytes()).c_str(),
               HumanBytes(opt_.TensorBytes()).c_str(), HumanBytes(opt_.CacheBytes()).c_str()));
    Say(Format("  pull list: %zu blocks src>dst in %zu contiguous runs: %s", p.pull.src.size(), CountRuns(p.pull),
               DescribeList(p.pull).c_str()));
    Say(Format("  push list: %zu blocks src>dst in %zu contiguous runs: %s", p.push.src.size(), CountRuns(p.push),
               DescribeList(p.push).c_str()));
    Say(Format("  %zu destination blocks in neither list must keep the sentinel 0x%02X", p.untouched.size(),
               kSentinel));

    Say("  " + llmdd_tools::MachineLine());
    if (opt_.mode == "decode")
      Say(getenv("LLMDD_AUTH_SECRET") != nullptr && getenv("LLMDD_AUTH_SECRET")[0] != '\0'
              ? "  authentication: on (LLMDD_AUTH_SECRET)"
              : "  authentication: off (set LLMDD_AUTH_SECRET on both hosts; docs/TWO_HOSTS.md)");

    std::string error;
    if (!(opt_.mode == "decode" ? ConnectControl(&error) : StartChild(&error))) return Fail(error);

    // DECODE: client (no listen option), its own cache of the same shape.
    std::vector<uint64_t> addrs;
    if (!AllocateTensors(opt_, &tensors_, &addrs, &error)) return Fail(error);
    for (auto &t : tensors_) memset(t.get(), kSentinel, opt_.TensorBytes());
    dd_ = std::make_unique<LlmDataDist>(kDecodeCluster, LlmRole::kDecoder);
    std::map<AscendString, AscendString> options;
    options[llm_datadist::OPTION_DEVICE_ID] = "1";
    options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = std::to_string(opt_.timeout_ms).c_str();
    if (!opt_.transport.empty()) options["llmdd.Transport"] = opt_.transport.c_str();
    Status st = dd_->Initialize(options);
    if (st != llm_datadist::LLM_SUCCESS) return Fail("decode Initialize: " + StatusText(st));
    initialized_ = true;
    const CacheDesc desc = ModelCacheDesc(opt_);
    st = dd_->RegisterKvCache(desc, addrs, RegisterCfg{}, cache_id_);
    if (st != llm_datadist::LLM_SUCCESS) return Fail("decode RegisterKvCache: " + StatusText(st));
    registered_ = true;
    if (cache_id_ != 1)
      return Fail(Format("decode RegisterKvCache returned cache id %" PRId64 "; the first id of an instance is 1",
                         cache_id_));
    Say(Format("[decode] pid %d, cluster %" PRIu64 ", client; RegisterKvCache -> cache id %" PRId64
               ", filled with the sentinel",
               getpid(), kDecodeCluster, cache_id_));

    std::vector<std::string> words;
    if (!Expect("READY", 8, &words, 120000)) return kExitFailed;
    int64_t port = 0;
    int64_t shape[5] = {0, 0, 0, 0, 0};
    for (int k = 0; k < 5; ++k)
      if (!ParseInt64(words[3 + k], 1, INT64_MAX, &shape[k])) return Fail("malformed READY line from the prefill");
    if (!ParseInt64(words[1], 1, 65535, &port) || !ParseInt64(words[2], 1, INT64_MAX, &prefill_cache_))
      return Fail("malformed READY line from the prefill process");
    if (shape[0] != opt_.layers || shape[1] != opt_.blocks || shape[2] != opt_.block_tokens ||
        shape[3] != opt_.heads || shape[4] != opt_.head_dim)
      return Fail(Format("the prefill's cache has another shape: --layers %" PRId64 " --blocks %" PRId64
                         " --block-tokens %" PRId64 " --heads %" PRId64 " --head-dim %" PRId64
                         " there; give both halves the same options",
                         shape[0], shape[1], shape[2], shape[3], shape[4]));
    prefill_port_ = static_cast<int>(port);
    if (prefill_cache_ != 1)
      return Fail(Format("prefill RegisterKvCache returned cache id %" PRId64 "; the first id of an instance is 1",
                         prefill_cache_));

    // Link (this side is the client; the prefill listens).
    std::vector<ClusterInfo> clusters = {PrefillCluster()};
    std::vector<Status> rets;
    int64_t t0 = NowNs();
    st = dd_->LinkLlmClusters(clusters, rets, kLinkTimeoutMs);
    int64_t link_ns = NowNs() - t0;
    if (st != llm_datadist::LLM_SUCCESS || rets.size() != 1 || rets[0] != llm_datadist::LLM_SUCCESS)
      return Fail("LinkLlmClusters to cluster 100 at " + JoinHostPort(remote_ip_, prefill_port_) +
                  ": " + StatusText(st) + (rets.size() == 1 ? ", rets[0] " + StatusText(rets[0]) : ""));
    linked_ = true;
    Say(Format("[decode] LinkLlmClusters -> cluster %" PRIu64 " at %s (from %s): ok (%.3f ms)", kPrefillCluster,
               JoinHostPort(remote_ip_, prefill_port_).c_str(), local_ip_.c_str(), static_cast<double>(link_ns) / 1e6));
    path_ = g_tap.PathTo("");
    Say(Format("[decode] the bytes move over the %s (llmdd.Transport=%s)", PathText(path_),
               opt_.transport.empty() ? "auto" : opt_.transport.c_str()));

    // ---- pull: decode pulls the block list for all layers.
    Series pull{Format("PullKvBlocks (%zu blocks x %u tensors)", p.pull.src.size(), opt_.Tensors()),
                p.pull.src.size() * opt_.Tensors() * opt_.BlockBytes(), {}};
    const CacheIndex src_index{kPrefillCluster, prefill_cache_, 0};
    Cache dst{};
    dst.cache_id = cache_id_;
    for (int it = 0; it < opt_.warmup + opt_.iterations; ++it) {
      ResetBlocks(p.pull.dst);  // untimed: the last call alone must deliver every byte
      t0 = NowNs();
      st = dd_->PullKvBlocks(src_index, dst, p.pull.src, p.pull.dst);
      const int64_t ns = NowNs() - t0;
      if (st != llm_datadist::LLM_SUCCESS)
        return Fail(Format("PullKvBlocks (call %d, %zu blocks from cluster %" PRIu64 " cache %" PRId64 "): %s", it,
                           p.pull.src.size(), src_index.cluster_id, src_index.cache_id, StatusText(st).c_str()));
      if (it >= opt_.warmup) pull.ns.push_back(ns);
    }
    std::vector<Expected> expected(static_cast<size_t>(opt_.blocks));
    for (size_t i = 0; i < p.pull.src.size(); ++i) expected[p.pull.dst[i]] = {static_cast<int64_t>(p.pull.src[i]), 0};
    if (!Verify("PullKvBlocks", expected)) return kExitFailed;
    Say(Format("[decode] PullKvBlocks x %d (+%d warm-up): every byte of the %zu pulled blocks x %u tensors is "
               "correct, all other blocks hold the sentinel",
               opt_.iterations, opt_.warmup, p.pull.src.size(), opt_.Tensors()));

    // ---- push: the prefill pushes layer by layer into this cache.
    if (!Tell(Format("PUSH %" PRIu64 " %" PRId64 " %d %d", kDecodeCluster, cache_id_, opt_.warmup, opt_.iterations)))
      return kExitFailed;
    Series layer{Format("PushKvBlocks (%zu blocks x 2 tensors)", p.push.src.size()),
                 p.push.src.size() * 2 * opt_.BlockBytes(), {}};
    Series pass{Format("  = push pass (%d layer calls)", opt_.layers),
                p.push.src.size() * opt_.Tensors() * opt_.BlockBytes(), {}};
    int64_t generation = 0;
    for (;;) {
      std::string raw;
      if (!Next(&words, &raw, 120000)) return kExitFailed;
      if (words[0] == "PASS" && words.size() == static_cast<size_t>(3 + opt_.layers)) {
        int64_t index = 0, total = 0;
        if (!ParseInt64(words[1], 0, INT32_MAX, &index) || !ParseInt64(words[2], 0, INT64_MAX, &total))
          return Fail("malformed PASS line: " + raw);
        if (index < opt_.warmup) continue;
        pass.ns.push_back(total);
        for (size_t i = 3; i < words.size(); ++i) {
          int64_t v = 0;
          if (!ParseInt64(words[i], 0, INT64_MAX, &v)) return Fail("malformed PASS line: " + raw);
          layer.ns.push_back(v);
        }
      } else if (words[0] == "PUSHED" && words.size() == 2 && ParseInt64(words[1], 1, INT32_MAX, &generation)) {
        break;
      } else {
        return Fail("unexpected message from the prefill process: " + raw);
      }
    }
    if (pass.ns.size() != static_cast<size_t>(opt_.iterations))
      return Fail(Format("the prefill reported %zu timed push passes, expected %d", pass.ns.size(), opt_.iterations));
    for (size_t i = 0; i < p.push.src.size(); ++i)
      expected[p.push.dst[i]] = {static_cast<int64_t>(p.push.src[i]), static_cast<uint64_t>(generation)};
    if (!Verify("PushKvBlocks", expected)) return kExitFailed;
    Say(Format("[decode] after %d push pass(es): every byte of the %zu pushed blocks x %u tensors is the last pass's "
               "data, pulled blocks are intact, untouched blocks hold the sentinel",
               opt_.warmup + opt_.iterations, p.push.src.size(), opt_.Tensors()));
    if (!Tell("VERIFIED")) return kExitFailed;

    // ---- teardown: unlink (tears down both sides), unregister, finalize.
    rets.clear();
    st = dd_->UnlinkLlmClusters(clusters, rets, kLinkTimeoutMs);
    if (st != llm_datadist::LLM_SUCCESS || rets.size() != 1 || rets[0] != llm_datadist::LLM_SUCCESS)
      return Fail("UnlinkLlmClusters: " + StatusText(st) + (rets.size() == 1 ? ", rets[0] " + StatusText(rets[0]) : ""));
    linked_ = false;
    Say(Format("[decode] UnlinkLlmClusters -> cluster %" PRIu64 ": ok", kPrefillCluster));
    if (!Tell("UNLINKED")) return kExitFailed;
    if (!Expect("DONE", 1, &words, 60000)) return kExitFailed;
    st = dd_->UnregisterKvCache(cache_id_);
    registered_ = false;
    if (st != llm_datadist::LLM_SUCCESS) return Fail("decode UnregisterKvCache: " + StatusText(st));
    dd_->Finalize();
    initialized_ = false;
    Say("[decode] UnregisterKvCache, Finalize: done");
    const int child_rc = StopChild(false);
    if (child_rc != 0) return Fail(Format("the prefill process exited with status %d", child_rc));

    PrintTable({pull, layer, pass});
    Say(Format("moved over the %s between %s and %s; load average (1 min) now %s", PathText(path_),
               local_ip_.c_str(), JoinHostPort(remote_ip_, prefill_port_).c_str(), llmdd_tools::LoadNow().c_str()));
    Say(Format("VERIFIED: all bytes correct (%" PRIu64 " bytes checked)", bytes_checked_));
    return kExitOk;
  }

  void Teardown() {
    if (!dd_) return;
    if (linked_) {
      std::vector<Status> rets;
      dd_->UnlinkLlmClusters({PrefillCluster()}, rets, 1000, /*force_flag=*/true);
    }
    if (registered_) dd_->UnregisterKvCache(cache_id_);
    if (initialized_) dd_->Finalize();
    linked_ = registered_ = initialized_ = false;
  }

  const Options &opt_;
  const char *self_;
  BlockPlans plans_;
  std::vector<TensorMem> tensors_;
  std::unique_ptr<LlmDataDist> dd_;
  int64_t cache_id_ = -1;
  int64_t prefill_cache_ = -1;
  int prefill_port_ = 0;
  std::string local_ip_;   // this side's address in local_ip_infos
  std::string remote_ip_;  // the prefill's address in remote_ip_infos
  std::string path_;       // "same-host", "tcp" or "ucx", from the engine's log
  bool initialized_ = false;
  bool registered_ = false;
  bool linked_ = false;
  uint64_t bytes_checked_ = 0;
  pid_t child_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::unique_ptr<LineReader> reader_;
};

}  // namespace

int main(int argc, char **argv) {
  Options opt;
  int rc = ParseArgs(argc, argv, &opt);
  if (rc != kExitOk) return rc;
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (opt.mode == "prefill") {
    Prefill prefill(opt);
    return prefill.Run();
  }
  // Before the first library call and before the prefill process starts.
  if (!g_tap.Start()) fprintf(stderr, "kv_demo: cannot read the engine's log; the path will show as unknown\n");
  Decode decode(opt, argv[0]);
  rc = decode.Run();
  g_tap.Stop();
  return rc;
}
