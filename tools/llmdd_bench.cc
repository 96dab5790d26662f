// llmdd_bench: transfer benchmark for the ADXL engine and LLM-DataDist, in the
// spirit of ucx_perftest / nixlbench / transfer_engine_bench. One command
// measures two processes on one host: the benchmark forks/execs itself in a
// `serve` role (the peer dies with its parent, PR_SET_PDEATHSIG), the peer
// registers its memory and publishes the addresses over a pipe.
//
//   llmdd_bench engine   [options]  ADXL TransferSync READ/WRITE sweep: descriptor size x batch x threads
//   llmdd_bench kv       [options]  LLM-DataDist PullKvBlocks/PushKvBlocks over a model-shaped KV cache
//   llmdd_bench memcpy   [options]  memcpy reference of the same shapes (1..N threads, hot and cold)
//   llmdd_bench cma      [options]  raw process_vm_readv/writev of the same shapes with a child process
//   llmdd_bench pingpong [options]  raw TCP ping-pong of 8 B over loopback (blocking and busy-polling)
//   llmdd_bench overhead [options]  registration cost, PullKvBlocks planning cost, per-descriptor cost
//   llmdd_bench peers    [options]  cost of many peers: idle peers, frozen peers, descriptors in many regions
//   llmdd_bench mixed    [options]  a small READ alone and while bulk READs keep every lane to the same peer busy
//   llmdd_bench async    [options]  TransferAsync: N READs in flight vs one TransferSync of the same N descriptors,
//                                   submit cost, GetTransferStatus cost on a completed request
//   llmdd_bench notify   [options]  SendNotify -> GetNotifies latency (one way) and SendNotify's own time, vs the
//                                   TCP ping-pong round trip measured in the same run
//   llmdd_bench serve ...           the peer process (internal; control protocol on stdin/stdout)
//
// Engine, kv, async and cma points check the bytes of their first and last
// call and report no figure when one is wrong ("byte checks" below).
//
// Every point reports bytes per call, GB/s (1e9 B/s, all threads together),
// descriptors/s, per-call latency p50/p99 in microseconds and the iteration
// count. The terminal gets a table; --json prints one JSON object per line
// instead; --json-out FILE appends the same lines to FILE while the table is
// printed. A progress line goes to stderr (Reporter says when). --plot
// FILE.png draws the run's figures with gnuplot ("plot", below, says which).
//
// Control protocol (parent <-> `serve` child, one line each way; the peers
// mode's roles have their own lines, described where they are served):
//   child -> parent: READY <port> <words...> | FAILED <text>
//   parent -> child: QUIT (or end of file)
//   engine, kv and cma peers also answer CHECK lines (byte checks)
#include <adxl/adxl_engine.h>
#include <llm_datadist/llm_datadist.h>
#include <llmdd/extensions.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tool_util.h"

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using llmdd_tools::Format;
using llmdd_tools::NowNs;
using llmdd_tools::StatusWithNumber;
using llmdd_tools::WriteAll;

using Clock = std::chrono::steady_clock;
using llm_datadist::AscendString;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kGiB = 1024 * kMiB;
constexpr const char *kHost = "127.0.0.1";
constexpr uint64_t kPromptCluster = 100;
constexpr uint64_t kDecodeCluster = 200;
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;



std::string HumanBytes(uint64_t bytes) {
  if (bytes >= kGiB && bytes % kGiB == 0) return Format("%" PRIu64 "G", bytes / kGiB);
  if (bytes >= kMiB && bytes % kMiB == 0) return Format("%" PRIu64 "M", bytes / kMiB);
  if (bytes >= kKiB && bytes % kKiB == 0) return Format("%" PRIu64 "K", bytes / kKiB);
  if (bytes >= kMiB) return Format("%.1fM", static_cast<double>(bytes) / kMiB);
  if (bytes >= kKiB) return Format("%.1fK", static_cast<double>(bytes) / kKiB);
  return Format("%" PRIu64, bytes);
}

// "8", "4K", "1M", "1G" (powers of 1024), also "4KiB"/"4kb".
bool ParseSize(const std::string &text, uint64_t *out) {
  if (text.empty()) return false;
  char *end = nullptr;
  errno = 0;
  unsigned long long v = strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str()) return false;
  std::string unit(end);
  for (auto &c : unit) c = static_cast<char>(toupper(static_cast<unsigned char>(c)));
  uint64_t mult = 1;
  if (unit.empty() || unit == "B") {
    mult = 1;
  } else if (unit == "K" || unit == "KB" || unit == "KIB") {
    mult = kKiB;
  } else if (unit == "M" || unit == "MB" || unit == "MIB") {
    mult = kMiB;
  } else if (unit == "G" || unit == "GB" || unit == "GIB") {
    mult = kGiB;
  } else {
    return false;
  }
  if (v > UINT64_MAX / mult) return false;
  *out = v * mult;
  return true;
}

std::vector<std::string> SplitOn(const std::string &text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

bool ParseSizeList(const std::string &text, std::vector<uint64_t> *out) {
  out->clear();
  for (const auto &w : SplitOn(text, ',')) {
    uint64_t v = 0;
    if (!ParseSize(w, &v)) return false;
    out->push_back(v);
  }
  return !out->empty();
}

double Load1() {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f != nullptr) {
    if (fscanf(f, "%lf", &l) != 1) l = -1;
    fclose(f);
  }
  return l;
}

std::string JsonEscape(const std::string &s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += Format("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out;
}

uint64_t Mix(uint64_t x) {  // splitmix64
  uint64_t z = x + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

inline void CompilerBarrier() { asm volatile("" ::: "memory"); }

// ------------------------------------------------------------------ memory

// --mallocmem: every buffer (ours and the peers') comes from
// AdxlEngine::MallocMem, the memory a same-host peer maps and reads with
// memcpy (docs/PERFORMANCE.md), instead of a private anonymous mapping.
bool g_malloc_mem = false;

// Anonymous mapping, optionally advised for transparent huge pages (the
// analogue of device memory allocated huge-page-only), optionally prefaulted.
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer &) = delete;
  Buffer &operator=(const Buffer &) = delete;
  ~Buffer() { Release(); }
  bool Allocate(uint64_t bytes, bool hugepages, bool prefault, uint8_t fill) {
    Release();
    bytes_ = std::max<uint64_t>(bytes, 4096);
    bytes_ = (bytes_ + 2 * kMiB - 1) / (2 * kMiB) * (2 * kMiB);
    malloced_ = g_malloc_mem;
    if (malloced_) {
      void *m = nullptr;
      if (adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, bytes_, &m) != adxl::SUCCESS) return false;
      p_ = static_cast<uint8_t *>(m);
      if (prefault) memset(p_, fill, bytes_);
      return true;
    }
    void *p = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      p_ = nullptr;
      return false;
    }
    p_ = static_cast<uint8_t *>(p);
    if (hugepages) madvise(p_, bytes_, MADV_HUGEPAGE);
    if (prefault) memset(p_, fill, bytes_);
    return true;
  }
  void Release() {
    if (p_ != nullptr) {
      if (malloced_) {
        adxl::AdxlEngine::FreeMem(p_);
      } else {
        munmap(p_, bytes_);
      }
    }
    p_ = nullptr;
    bytes_ = 0;
  }
  uint8_t *data() const { return p_; }
  uint64_t size() const { return bytes_; }
  uintptr_t addr() const { return reinterpret_cast<uintptr_t>(p_); }

 private:
  uint8_t *p_ = nullptr;
  uint64_t bytes_ = 0;
  bool malloced_ = false;
};

// ------------------------------------------------------------------ options

struct Point {  // one (descriptor size, batch, threads) of a sweep
  uint64_t size;
  uint64_t batch;
  int threads;
  uint64_t batch_req = 0;  // the batch asked for, before clipping to --max-call-bytes
};

struct Options {
  std::string mode;
  std::vector<std::string> transports = {"auto"};
  std::vector<uint64_t> sizes = {8, 64, 256, kKiB, 4 * kKiB, 16 * kKiB, 64 * kKiB, 256 * kKiB, kMiB, 4 * kMiB};
  std::vector<uint64_t> batches = {1, 64};
  std::vector<uint64_t> threads = {1, 2};
  std::vector<std::string> ops;  // engine: read,write; kv: pull,push; memcpy: hot,cold
  std::vector<Point> points;     // --points overrides the cross product
  std::string layout = "reversed";
  double time_s = 0.25;
  int warmup = 2;
  int min_iters = 3;
  int64_t max_iters = 1000000;
  uint64_t max_call_bytes = 64 * kMiB;
  int connections = 0;  // llmdd.TcpConnections; 0: library default
  int workers = 0;      // llmdd.WorkerThreads; 0: library default
  int ucx_workers = 0;  // llmdd.UcxWorkers; 0: library default
  int busy_poll_us = -1;  // llmdd.BusyPollUs; -1: library default
  uint64_t same_host_min_part = 0;  // llmdd.SameHostMinPartBytes of the measuring engine; 0: library default
  int timeout_ms = 30000;
  bool hugepages = true;
  bool register_local = false;  // engine: RegisterMem the measuring side's buffer too
  bool json = false;
  std::string json_out;
  std::string plot;
  bool quick = false;
  int progress = -1;  // the progress line: -1 only when stderr is a terminal, 0 never, 1 always
  std::string tag;
  // kv
  int layers = 16;
  uint64_t kv_blocks = 512;      // blocks per tensor in the cache
  uint64_t block_bytes = 0;      // 0: tokens*heads*head_dim*2 (bf16)
  uint64_t block_tokens = 16;
  uint64_t heads = 8;
  uint64_t head_dim = 64;
  std::vector<uint64_t> kv_counts;  // blocks per call; not given: 1, 2, 4, ... (ParseArgs)
  std::string kv_pattern = "scattered";
  std::vector<uint64_t> copy_threads = {1, 2};  // kv memcpy: threads sharing one call's pieces
  // memcpy
  uint64_t pool_bytes = 512 * kMiB;  // per side, for cold copies
  uint64_t async_descs = 64;          // async: requests in flight per round
  uint64_t async_size = 64 * kKiB;    // async: bytes per descriptor
  // pingpong
  std::vector<std::string> pp_modes = {"blocking", "busy"};
  // notify
  uint64_t notify_count = 20000;  // notifies timed per transport (after 500 untimed)
  int notify_poll_us = 0;          // receiver: sleep between empty polls; 0: busy loop
  // overhead
  uint64_t plan_blocks = 100000;
  uint64_t submit_descs = 10000;
  uint64_t reg_regions = 10000;
  uint64_t reg_region_bytes = 4 * kKiB;
  uint64_t reg_big_bytes = kGiB;
  std::vector<std::string> sections = {"register", "submit", "plan"};  // peers: idle,frozen,regions
  // peers
  int peers = 1000;              // idle client engines connected to one server
  int per_process = 50;          // idle client engines per client process
  int parallel = 4;              // client processes connecting at once
  int frozen = 100;              // server engines frozen (SIGSTOP) under one client's Finalize
  int frozen_per_process = 25;   // frozen server engines per process
  uint64_t regions = 100000;     // descriptors (each its own region, then all in one region)
  int connect_samples = 9;       // Connect timings per point (median)
  int idle_wait_ms = 500;        // after the last idle peer connected, before the server is sampled
  int connect_timeout_ms = 5000; // Connect timeout of every client engine
  int disconnect_timeout_ms = 1000;  // Disconnect timeout (frozen peer)
  int peer_timeout_ms = 0;       // llmdd.PeerTimeoutMs of every engine; 0: library default
  int ramp_deadline_s = 150;     // connecting the idle peers stops here
  int deadline_s = 600;          // the whole mode: children killed and exit 3 past it
  // mixed
  uint64_t small_size = 4 * kKiB;  // the small READ timed alone and under load
  uint64_t bulk_size = 32 * kMiB;  // each background READ
  int bulk_threads = 0;            // background threads; 0: --connections, else the library's 4 lanes

  uint64_t BlockBytes() const { return block_bytes != 0 ? block_bytes : block_tokens * heads * head_dim * 2; }
  uint32_t Tensors() const { return static_cast<uint32_t>(2 * layers); }
};

void Usage(FILE *out) {
  fprintf(out,
          "usage: llmdd_bench MODE [options]\n"
          "modes:\n"
          "  engine    ADXL TransferSync READ/WRITE: sweep descriptor size x batch x threads\n"
          "  kv        LLM-DataDist PullKvBlocks/PushKvBlocks over a model-shaped KV cache: sweep blocks per call\n"
          "  memcpy    memcpy reference of the same shapes, hot (same buffers) and cold (walks a pool)\n"
          "  cma       raw process_vm_readv/writev of the same shapes from/to a child process's memory\n"
          "            (the same-host physical limit: what the shm path does with no engine around it)\n"
                    "  pingpong  raw TCP ping-pong of 8 B over loopback to a peer process, blocking and busy-polling\n"
          "  overhead  RegisterMem/RegisterKvCache cost, PullKvBlocks planning cost, per-descriptor cost\n"
          "  peers     cost of many peers: one server with N idle client engines (threads, fds, RSS, Connect,\n"
          "            4 KiB READ latency), Finalize with frozen peers, descriptors in many regions vs one\n"
          "  mixed     a small READ to one peer alone, then while background threads keep issuing large READs\n"
          "            to the same peer (does a small request wait behind large ones?)\n"
          "  async     TransferAsync: N READs of one descriptor in flight vs one TransferSync of the same N\n"
          "            descriptors (rounds alternate), TransferAsync submit cost (1 descriptor), GetTransferStatus\n"
          "            cost on a completed request\n"
          "  notify    SendNotify -> GetNotifies latency, one way (the sender stamps each notify, the receiver\n"
          "            polls GetNotifies), and the time SendNotify takes (its acknowledgement), against the\n"
          "            TCP ping-pong round trip (blocking and busy-polling) measured in the same run\n"
          "output:\n"
          "  a table on stdout (or JSON lines with --json); notes and headers go to stderr with --json.\n"
          "  A progress line goes to stderr, never stdout: on a terminal by default, rewritten in place\n"
          "  at most once a second from 2 s into the run (shorter runs stay quiet).\n"
          "  --plot FILE.png      draw the run's figures with gnuplot (scripts/setup.sh bench; FILE.svg: SVG):\n"
          "                       engine, memcpy, kv: GB/s vs descriptor size (kv: vs blocks per call) in FILE, and\n"
          "                         time per call (p50 solid, p99 dashed) vs the same in FILE-latency.png;\n"
          "                       cma, pingpong, async, notify, mixed, peers: bars of each latency's p50 and p99\n"
          "                         in FILE;\n"
          "                       overhead: no plot. Without gnuplot: one note at the start, no plot, the same\n"
          "                       exit status\n"
          "  --progress           the progress line also when stderr is not a terminal: from the start, a new\n"
          "                       line at most every 5 s\n"
          "  --no-progress        no progress line\n"
          "  --json               JSON lines on stdout instead of the table\n"
          "  --json-out FILE      also append the JSON lines to FILE\n"
          "  --tag TEXT           copied into every JSON record\n"
          "  --version            print the library version and exit\n"
          "common options (each mode's section below says where its defaults differ):\n"
          "  --transport LIST     tcp|shm|auto|ucx (ucx: built with UCX, UCX_TLS applies), comma-separated;\n"
          "                       llmdd.Transport of both engines, one peer\n"
          "                       each in turn (default auto; memcpy and pingpong ignore it)\n"
          "  --sizes LIST         engine, memcpy: descriptor sizes, e.g. 8,4K,64K,1M\n"
          "                       (default 8,64,256,1K,4K,16K,64K,256K,1M,4M; quick 8,4K,64K,1M)\n"
          "  --batches LIST       engine, memcpy: descriptors per call (default 1,64)\n"
          "  --threads LIST       engine, memcpy, kv: caller threads, each with its own buffers (default 1,2)\n"
          "  --points LIST        engine, memcpy: size:batch:threads,... instead of the cross product\n"
          "  --ops LIST           engine, cma: read,write; kv: pull,push,memcpy (default pull,push);\n"
          "                       memcpy: hot,cold (default all)\n"
          "  --layout L           engine, memcpy: reversed (default: local i <-> remote n-1-i, never merged),\n"
          "                       contiguous, strided (gap of one descriptor between descriptors)\n"
          "  --time SEC           measuring time per point (default 0.25, quick 0.06)\n"
          "  --warmup N           untimed calls per thread before each point (default 2)\n"
          "  --min-iters N        at least N timed calls per thread (default 3)\n"
          "  --max-iters N        at most N timed calls per thread (default 1000000)\n"
          "  --max-call-bytes N   engine, memcpy: clip the batch so one call moves at most N bytes; kv: the\n"
          "                       default --kv-blocks stops there (default 64M, quick 16M)\n"
          "  --connections N      llmdd.TcpConnections (default: library default)\n"
          "  --workers N          llmdd.WorkerThreads (default: library default)\n"
          "  --ucx-workers N      llmdd.UcxWorkers, both sides (default: library default)\n"
          "  --busy-poll-us N     llmdd.BusyPollUs, both sides (default: library default; 0 = block at once)\n"
          "  --same-host-min-part N  llmdd.SameHostMinPartBytes of the measuring engine (it splits): same-host\n"
          "                       transfers split into parts of at least N, one per core (default: library\n"
          "                       default; 1024G = never split)\n"
          "  --timeout-ms N       TransferSync / llm.SyncKvCacheWaitTime timeout (default 30000)\n"
          "  --no-hugepages       do not madvise(MADV_HUGEPAGE) the buffers\n"
          "  --register-local     engine: RegisterMem the measuring side's buffer too, as KV-cache programs\n"
          "                       do (the UCX transport then moves batches without staging where its\n"
          "                       lanes allow: docs/UCX.md)\n"
          "  --mallocmem          every buffer (both sides) from AdxlEngine::MallocMem: memory a same-host\n"
          "                       peer maps and reads with memcpy (llmdd.SameHostMapMaxBytes)\n"
          "  --quick              small sweep that takes seconds\n"
          "byte checks: every engine, kv (pull/push), async and cma point checks the bytes of its first and\n"
          "  last call; a wrong byte fails the point (an \"error\" record, no figure) and the exit status is 1\n"
          "kv options:\n"
          "  --layers N           layers; the cache has 2N tensors (default 16, quick 4)\n"
          "  --blocks N           blocks per tensor (default 512, quick 256)\n"
          "  --block-bytes N      bytes per block per tensor (default tokens*heads*head-dim*2 = 16K)\n"
          "  --block-tokens N --heads N --head-dim N   bf16 block shape (default 16, 8, 64)\n"
          "  --kv-blocks LIST     blocks per call (default 1,2,4,... while the cache (--blocks/2 scattered) and\n"
          "                       --max-call-bytes allow: 1..128 for the default and the quick shape)\n"
          "  --kv-pattern P       scattered (default; no two blocks adjacent on both sides) or contiguous\n"
          "  --copy-threads LIST  op memcpy: the pieces of a pull copied in-process (src -> the odd block after\n"
          "                       dst), one call's pieces split over N threads (default 1,2; scattered only)\n"
          "memcpy options:\n"
          "  --pool N             bytes per side walked by cold copies (default 512M)\n"
          "pingpong options (--time: at least 1 s per mode):\n"
          "  --pp-modes LIST      blocking,busy (default both)\n"
          "notify options (--transport default tcp; the notifies travel on the control connection either way):\n"
          "  --notify-count N     notifies timed per transport (default 20000, quick 2000; 500 more untimed)\n"
          "  --notify-poll-us N   the receiver sleeps N us between empty GetNotifies polls (default 0: busy loop)\n"
          "overhead options (--transport: the transports of the submit and plan sections):\n"
          "  --sections LIST      register,submit,plan (default all)\n"
          "  --plan-blocks N      blocks in the planning test (default 100000)\n"
          "  --submit-descs N     8-byte descriptors in the submit test (default 10000)\n"
          "  --reg-regions N      4 KiB regions in the registration test (default 10000)\n"
          "async options (--transport default tcp,auto; --time: seconds per method, default 1, quick 0.06):\n"
          "  --async-descs N      descriptors (requests in flight) per round (default 64)\n"
          "  --async-size N       bytes per descriptor (default 64K)\n"
          "peers options (--transport LIST: the server and idle clients use the first, the 4 KiB READ is\n"
          "measured with each; default auto,tcp; --time: seconds per READ point, default 1):\n"
          "  --sections LIST      idle,frozen,regions (default all)\n"
          "  --peers N            idle client engines connected to the server (default 1000)\n"
          "  --per-process N      idle client engines per client process (default 50)\n"
          "  --parallel N         client processes connecting at once (default 4)\n"
          "  --connect-samples N  Connect timings of a fresh client at 0 and at N peers (median; default 9)\n"
          "  --idle-wait-ms N     wait after the last idle peer connected before sampling the server\n"
          "                       (default 500; longer for an engine that closes idle connections later)\n"
          "  --connect-timeout-ms N  Connect timeout of every client engine (default 5000)\n"
          "  --frozen F           server engines frozen under one client's Finalize (default 100)\n"
          "  --frozen-per-process N  frozen server engines per process (default 25)\n"
          "  --disconnect-timeout-ms N  Disconnect timeout for one frozen peer (default 1000)\n"
          "  --peer-timeout-ms N  llmdd.PeerTimeoutMs of every engine (default: library default)\n"
          "  --regions N          descriptors of 8 B, each in its own region vs all in one (default 100000)\n"
          "  --ramp-deadline-s N  stop connecting idle peers after N s (default 150)\n"
          "  --deadline-s N       the whole mode: past it every child is killed, exit 3 (default 600)\n"
          "mixed options (--transport default tcp,auto, one peer process each; --time: seconds of small READs\n"
          "per phase, default 0.5, quick 0.2; at least 100 timed READs per phase):\n"
          "  --small-size N       the small READ, one descriptor (default 4K)\n"
          "  --bulk-size N        each background READ, one descriptor (default 32M)\n"
          "  --bulk-threads N     background threads, each READing its own region in a loop\n"
          "                       (default: --connections, else 4, the library's llmdd.TcpConnections)\n");
}

bool NeedValue(int argc, char **argv, int i) {
  if (i + 1 >= argc) {
    fprintf(stderr, "llmdd_bench: %s needs a value\n", argv[i]);
    return false;
  }
  return true;
}

int ParseArgs(int argc, char **argv, Options *opt) {
  if (argc < 2) {
    Usage(stderr);
    return kExitUsage;
  }
  opt->mode = argv[1];
  if (opt->mode == "-h" || opt->mode == "--help" || opt->mode == "help") {
    Usage(stdout);
    exit(kExitOk);
  }
  if (opt->mode == "--version") {
    llmdd_tools::PrintVersion("llmdd_bench");
    exit(kExitOk);
  }
  static const std::set<std::string> kModes = {"engine", "kv",    "memcpy", "cma",   "pingpong",
                                               "overhead", "peers", "mixed",  "async", "notify"};
  if (kModes.count(opt->mode) == 0) {
    fprintf(stderr, "llmdd_bench: unknown mode '%s'\n", opt->mode.c_str());
    Usage(stderr);
    return kExitUsage;
  }
  std::map<std::string, std::string> given;
  static const std::set<std::string> kFlags = {"--json", "--quick", "--no-hugepages", "--progress", "--no-progress",
                                               "--mallocmem", "--register-local"};
  static const std::set<std::string> kValued = {
      "--transport",   "--sizes",       "--batches",      "--threads",      "--points",      "--ops",
      "--layout",      "--time",        "--warmup",       "--min-iters",    "--max-iters",   "--max-call-bytes",
      "--connections", "--workers", "--ucx-workers", "--busy-poll-us",     "--timeout-ms",   "--json-out",     "--plot",        "--tag",
      "--layers",      "--blocks",      "--block-bytes",  "--block-tokens", "--heads",       "--head-dim",
      "--kv-blocks",   "--kv-pattern",  "--pool",         "--pp-modes",     "--sections",    "--plan-blocks",
      "--submit-descs", "--reg-regions", "--peers",    "--per-process",  "--parallel",    "--frozen",
      "--frozen-per-process", "--regions", "--connect-samples", "--connect-timeout-ms", "--disconnect-timeout-ms",
      "--peer-timeout-ms", "--ramp-deadline-s", "--deadline-s", "--idle-wait-ms", "--small-size", "--bulk-size",
      "--bulk-threads", "--async-descs", "--async-size", "--notify-count", "--same-host-min-part",
      "--notify-poll-us", "--copy-threads"};
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      Usage(stdout);
      exit(kExitOk);
    }
    if (arg == "--version") {
      llmdd_tools::PrintVersion("llmdd_bench");
      exit(kExitOk);
    }
    if (kFlags.count(arg) != 0) {
      given[arg] = "1";
      continue;
    }
    if (kValued.count(arg) == 0) {
      fprintf(stderr, "llmdd_bench: unknown option '%s'\n", arg.c_str());
      Usage(stderr);
      return kExitUsage;
    }
    if (!NeedValue(argc, argv, i)) return kExitUsage;
    given[arg] = argv[++i];
  }
  opt->quick = given.count("--quick") != 0;
  opt->json = given.count("--json") != 0;
  opt->hugepages = given.count("--no-hugepages") == 0;
  g_malloc_mem = given.count("--mallocmem") != 0;
  opt->register_local = given.count("--register-local") != 0;
  if (given.count("--no-progress") != 0) opt->progress = 0;
  if (given.count("--progress") != 0) opt->progress = 1;
  if (opt->mode == "engine" || opt->mode == "cma") opt->ops = {"read", "write"};
  if (opt->mode == "kv") opt->ops = {"pull", "push"};
  if (opt->mode == "memcpy") opt->ops = {"hot", "cold"};
  if (opt->mode == "async") {
    opt->transports = {"tcp", "auto"};
    opt->time_s = 1.0;
  }
  if (opt->mode == "peers") {
    opt->transports = {"auto", "tcp"};
    opt->sections = {"idle", "frozen", "regions"};
    opt->time_s = 1.0;
  }
  if (opt->mode == "notify") {
    opt->transports = {"tcp"};
    if (opt->quick) opt->notify_count = 2000;
  }
  if (opt->mode == "mixed") {
    opt->transports = {"tcp", "auto"};
    opt->time_s = opt->quick ? 0.2 : 0.5;
  }
  if (opt->quick && opt->mode == "peers") {
    opt->peers = 100;
    opt->frozen = 20;
    opt->regions = 10000;
    opt->connect_samples = 5;
    opt->time_s = 0.25;
  } else if (opt->quick && opt->mode != "mixed") {
    opt->time_s = 0.06;
    opt->sizes = {8, 4 * kKiB, 64 * kKiB, kMiB};
    opt->batches = {1, 64};
    opt->threads = {1, 2};
    opt->layers = 4;
    opt->kv_blocks = 256;
    opt->pool_bytes = 256 * kMiB;
    opt->max_call_bytes = 16 * kMiB;
    opt->plan_blocks = 100000;
    opt->reg_regions = 10000;
  }
  bool ok = true;
  auto size_of = [&](const char *name, uint64_t *field, uint64_t min, uint64_t max) {
    auto it = given.find(name);
    if (it == given.end()) return;
    uint64_t v = 0;
    if (!ParseSize(it->second, &v) || v < min || v > max) {
      fprintf(stderr, "llmdd_bench: %s needs a size in [%" PRIu64 ", %" PRIu64 "]\n", name, min, max);
      ok = false;
      return;
    }
    *field = v;
  };
  auto int_of = [&](const char *name, auto *field, int64_t min, int64_t max) {
    auto it = given.find(name);
    if (it == given.end()) return;
    char *end = nullptr;
    errno = 0;
    long long v = strtoll(it->second.c_str(), &end, 10);
    if (errno != 0 || *end != '\0' || it->second.empty() || v < min || v > max) {
      fprintf(stderr, "llmdd_bench: %s needs an integer in [%" PRId64 ", %" PRId64 "]\n", name, min, max);
      ok = false;
      return;
    }
    *field = static_cast<std::remove_pointer_t<decltype(field)>>(v);
  };
  auto list_of = [&](const char *name, std::vector<uint64_t> *field, uint64_t min, uint64_t max) {
    auto it = given.find(name);
    if (it == given.end()) return;
    std::vector<uint64_t> v;
    if (!ParseSizeList(it->second, &v) ||
        std::any_of(v.begin(), v.end(), [&](uint64_t x) { return x < min || x > max; })) {
      fprintf(stderr, "llmdd_bench: %s needs a list of sizes in [%" PRIu64 ", %" PRIu64 "]\n", name, min, max);
      ok = false;
      return;
    }
    *field = v;
  };
  auto words_of = [&](const char *name, std::vector<std::string> *field, const std::set<std::string> &allowed) {
    auto it = given.find(name);
    if (it == given.end()) return;
    std::vector<std::string> v = SplitOn(it->second, ',');
    if (v.empty() || std::any_of(v.begin(), v.end(), [&](const std::string &w) { return allowed.count(w) == 0; })) {
      std::string all;
      for (const auto &a : allowed) all += (all.empty() ? "" : ", ") + a;
      fprintf(stderr, "llmdd_bench: %s takes a comma-separated list of: %s\n", name, all.c_str());
      ok = false;
      return;
    }
    *field = v;
  };
  words_of("--transport", &opt->transports, {"tcp", "shm", "auto", "ucx"});
  list_of("--sizes", &opt->sizes, 1, 1 * kGiB);
  list_of("--batches", &opt->batches, 1, 65536 * 4);
  list_of("--threads", &opt->threads, 1, 64);
  if (opt->mode == "engine" || opt->mode == "cma") words_of("--ops", &opt->ops, {"read", "write"});
  if (opt->mode == "kv") words_of("--ops", &opt->ops, {"pull", "push", "memcpy"});
  list_of("--copy-threads", &opt->copy_threads, 1, 64);
  if (opt->mode == "memcpy") words_of("--ops", &opt->ops, {"hot", "cold"});
  if (given.count("--layout")) {
    opt->layout = given["--layout"];
    if (opt->layout != "reversed" && opt->layout != "contiguous" && opt->layout != "strided") {
      fprintf(stderr, "llmdd_bench: --layout is reversed, contiguous or strided\n");
      ok = false;
    }
  }
  if (given.count("--time")) {
    char *end = nullptr;
    double t = strtod(given["--time"].c_str(), &end);
    if (*end != '\0' || !(t > 0 && t <= 3600)) {
      fprintf(stderr, "llmdd_bench: --time needs seconds in (0, 3600]\n");
      ok = false;
    } else {
      opt->time_s = t;
    }
  }
  int_of("--warmup", &opt->warmup, 0, 100000);
  int_of("--min-iters", &opt->min_iters, 1, 100000000);
  int_of("--max-iters", &opt->max_iters, 1, INT64_MAX);
  size_of("--max-call-bytes", &opt->max_call_bytes, 1, 8 * kGiB);
  int_of("--connections", &opt->connections, 1, 64);
  int_of("--workers", &opt->workers, 1, 256);
  int_of("--ucx-workers", &opt->ucx_workers, 1, 8);
  int_of("--busy-poll-us", &opt->busy_poll_us, 0, 10000);
  size_of("--same-host-min-part", &opt->same_host_min_part, 64 * kKiB, 1024 * kGiB);
  int_of("--timeout-ms", &opt->timeout_ms, 1, 3600000);
  if (given.count("--json-out")) opt->json_out = given["--json-out"];
  if (given.count("--plot")) opt->plot = given["--plot"];
  if (given.count("--tag")) opt->tag = given["--tag"];
  int_of("--layers", &opt->layers, 1, 1024);
  size_of("--blocks", &opt->kv_blocks, 2, 1 << 24);
  size_of("--block-bytes", &opt->block_bytes, 1, kGiB);
  size_of("--block-tokens", &opt->block_tokens, 1, 1 << 20);
  size_of("--heads", &opt->heads, 1, 1 << 16);
  size_of("--head-dim", &opt->head_dim, 1, 1 << 16);
  list_of("--kv-blocks", &opt->kv_counts, 1, 1 << 24);
  if (given.count("--kv-pattern")) {
    opt->kv_pattern = given["--kv-pattern"];
    if (opt->kv_pattern != "scattered" && opt->kv_pattern != "contiguous") {
      fprintf(stderr, "llmdd_bench: --kv-pattern is scattered or contiguous\n");
      ok = false;
    }
  }
  size_of("--pool", &opt->pool_bytes, 4 * kKiB, 64 * kGiB);
  size_of("--async-descs", &opt->async_descs, 1, 100000);
  size_of("--async-size", &opt->async_size, 1, kGiB);
  size_of("--notify-count", &opt->notify_count, 1, 10000000);
  int_of("--notify-poll-us", &opt->notify_poll_us, 0, 1000000);
  words_of("--pp-modes", &opt->pp_modes, {"blocking", "busy"});
  if (opt->mode == "peers")
    words_of("--sections", &opt->sections, {"idle", "frozen", "regions"});
  else
    words_of("--sections", &opt->sections, {"register", "submit", "plan"});
  int_of("--peers", &opt->peers, 1, 1000000);
  int_of("--per-process", &opt->per_process, 1, 10000);
  int_of("--parallel", &opt->parallel, 1, 256);
  int_of("--frozen", &opt->frozen, 1, 100000);
  int_of("--frozen-per-process", &opt->frozen_per_process, 1, 10000);
  size_of("--regions", &opt->regions, 1, 1 << 24);
  int_of("--connect-samples", &opt->connect_samples, 1, 1000);
  int_of("--idle-wait-ms", &opt->idle_wait_ms, 0, 3600000);
  int_of("--connect-timeout-ms", &opt->connect_timeout_ms, 1, 3600000);
  int_of("--disconnect-timeout-ms", &opt->disconnect_timeout_ms, 1, 3600000);
  int_of("--peer-timeout-ms", &opt->peer_timeout_ms, 100, 86400000);
  int_of("--ramp-deadline-s", &opt->ramp_deadline_s, 1, 86400);
  int_of("--deadline-s", &opt->deadline_s, 1, 86400);
  size_of("--small-size", &opt->small_size, 1, 64 * kMiB);
  size_of("--bulk-size", &opt->bulk_size, 1, 4 * kGiB);
  int_of("--bulk-threads", &opt->bulk_threads, 1, 64);
  size_of("--plan-blocks", &opt->plan_blocks, 2, 1 << 24);
  size_of("--submit-descs", &opt->submit_descs, 1, 1 << 22);
  size_of("--reg-regions", &opt->reg_regions, 1, 1 << 22);
  if (given.count("--points")) {
    for (const auto &w : SplitOn(given["--points"], ',')) {
      auto parts = SplitOn(w, ':');
      uint64_t s = 0, b = 0, t = 0;
      if (parts.size() != 3 || !ParseSize(parts[0], &s) || !ParseSize(parts[1], &b) || !ParseSize(parts[2], &t) ||
          s == 0 || b == 0 || t == 0 || t > 64) {
        fprintf(stderr, "llmdd_bench: --points takes size:batch:threads,... (e.g. 1M:64:1,8:1:1)\n");
        ok = false;
        break;
      }
      opt->points.push_back({s, b, static_cast<int>(t), b});
    }
  }
  // Blocks per call: 1, 2, 4, ... as far as the cache and --max-call-bytes
  // allow, so the kv plot has a curve (8 points of the default shape, 1..128
  // blocks of 512K: 64M per call), not the two or three points of a fixed list.
  if (opt->kv_counts.empty()) {
    const uint64_t per_block = std::max<uint64_t>(1, uint64_t{opt->Tensors()} * opt->BlockBytes());
    const uint64_t most = std::min(opt->kv_pattern == "scattered" ? opt->kv_blocks / 2 : opt->kv_blocks,
                                   std::max<uint64_t>(1, opt->max_call_bytes / per_block));
    for (uint64_t c = 1; c <= most; c *= 2) opt->kv_counts.push_back(c);
    if (opt->kv_counts.empty()) opt->kv_counts.push_back(1);
  }
  if (opt->mode == "kv" && opt->kv_pattern == "scattered") {
    for (uint64_t c : opt->kv_counts) {
      if (2 * c > opt->kv_blocks) {
        fprintf(stderr,
                "llmdd_bench: --kv-blocks %" PRIu64 " scattered needs --blocks >= %" PRIu64
                " (every other block is used)\n",
                c, 2 * c);
        ok = false;
      }
    }
  }
  if (opt->mode == "kv" && opt->kv_pattern == "contiguous") {
    for (uint64_t c : opt->kv_counts)
      if (c > opt->kv_blocks) {
        fprintf(stderr, "llmdd_bench: --kv-blocks %" PRIu64 " exceeds --blocks %" PRIu64 "\n", c, opt->kv_blocks);
        ok = false;
      }
  }
  return ok ? kExitOk : kExitUsage;
}

// The (size, batch, threads) points of a sweep, batch clipped to max_call_bytes.
std::vector<Point> SweepPoints(const Options &opt) {
  std::vector<Point> pts = opt.points;
  if (pts.empty()) {
    for (uint64_t t : opt.threads)
      for (uint64_t b : opt.batches)
        for (uint64_t s : opt.sizes) pts.push_back({s, b, static_cast<int>(t), b});
  }
  std::vector<Point> out;
  std::set<std::tuple<uint64_t, uint64_t, int>> seen;
  for (Point p : pts) {
    if (p.size * p.batch > opt.max_call_bytes && opt.points.empty())
      p.batch = std::max<uint64_t>(1, opt.max_call_bytes / p.size);
    if (seen.insert({p.size, p.batch, p.threads}).second) out.push_back(p);
  }
  return out;
}

// Bytes of one thread's region for a point: descriptors laid out by `layout`.
uint64_t RegionBytes(const Point &p, const std::string &layout) {
  return p.size * p.batch * (layout == "strided" ? 2 : 1);
}

// Descriptor i of a call: (local offset, remote offset) inside the thread's regions.
std::pair<uint64_t, uint64_t> DescOffsets(const std::string &layout, uint64_t size, uint64_t batch, uint64_t i) {
  if (layout == "contiguous") return {i * size, i * size};
  if (layout == "strided") return {2 * i * size, 2 * i * size};
  return {i * size, (batch - 1 - i) * size};
}

// ------------------------------------------------------------------ results

struct Stats {
  double p50_us = 0, p99_us = 0, mean_us = 0, min_us = 0, max_us = 0;
};

Stats Summarize(std::vector<int64_t> ns) {
  Stats s;
  if (ns.empty()) return s;
  std::sort(ns.begin(), ns.end());
  auto rank = [&](double q) {
    size_t idx = static_cast<size_t>(std::ceil(q * static_cast<double>(ns.size()))) - 1;
    return static_cast<double>(ns[std::min(idx, ns.size() - 1)]) / 1e3;
  };
  s.p50_us = rank(0.50);
  s.p99_us = rank(0.99);
  s.min_us = static_cast<double>(ns.front()) / 1e3;
  s.max_us = static_cast<double>(ns.back()) / 1e3;
  s.mean_us = static_cast<double>(std::accumulate(ns.begin(), ns.end(), int64_t{0})) / 1e3 /
              static_cast<double>(ns.size());
  return s;
}

// One output record: ordered key/value pairs, values already JSON-encoded.
class Record {
 public:
  Record &Str(const std::string &k, const std::string &v) {
    if (k == "error" && v.empty()) return *this;  // "error" is present only on failure
    return Put(k, "\"" + JsonEscape(v) + "\"");
  }
  Record &Int(const std::string &k, int64_t v) { return Put(k, std::to_string(v)); }
  Record &Num(const std::string &k, double v) { return Put(k, std::isfinite(v) ? Format("%.6g", v) : "null"); }
  std::string Json() const {
    std::string out = "{";
    for (size_t i = 0; i < kv_.size(); ++i) out += (i ? ", \"" : "\"") + kv_[i].first + "\": " + kv_[i].second;
    return out + "}";
  }
  std::string Get(const std::string &k) const {
    for (const auto &[key, v] : kv_)
      if (key == k) return v.size() >= 2 && v.front() == '"' ? v.substr(1, v.size() - 2) : v;
    return "";
  }

 private:
  // A key set twice keeps its first place and its last value.
  Record &Put(const std::string &k, std::string v) {
    for (auto &[key, old] : kv_) {
      if (key == k) {
        old = std::move(v);
        return *this;
      }
    }
    kv_.emplace_back(k, std::move(v));
    return *this;
  }
  std::vector<std::pair<std::string, std::string>> kv_;
};

// Prints what a run produces: the table or the JSON lines on stdout, notes,
// and the progress line on stderr (never on stdout, so `--json > file` stays
// pure JSON lines).
//
// The progress line: by default only when stderr is a terminal, one line
// rewritten in place at most once a second, and only from 2 s into the run
// (a run of a few seconds stays quiet). --progress shows it when stderr is
// not a terminal too, from the start, as a new line at most every 5 s (a log
// of a 10-minute peers run gets ~120 lines, not one per point); --no-progress
// never. A ticker thread redraws it once a second so the elapsed time moves
// during long steps (a peers ramp, a notify run); formatting and writing one
// line a second is nothing a measurement sees. Every write of the Reporter
// holds mu_, so a redraw never lands between a row and its newline; a row or
// note printed to the same terminal clears the line and puts it back, up to
// date, below itself (no write more than the row's own).
class Reporter {
 public:
  explicit Reporter(const Options &opt) : opt_(opt) {
    if (!opt.json_out.empty()) {
      out_ = fopen(opt.json_out.c_str(), "a");
      if (out_ == nullptr) fprintf(stderr, "llmdd_bench: cannot open %s: %s\n", opt.json_out.c_str(), strerror(errno));
    }
    tty_ = isatty(STDERR_FILENO) != 0;
    forced_ = opt.progress > 0;
    progress_ = forced_ || (opt.progress < 0 && tty_);
    start_ns_ = NowNs();
    if (progress_) ticker_ = std::thread([this] { Tick(); });
  }
  ~Reporter() {
    Finish();
    if (out_ != nullptr) fclose(out_);
  }
  // A sweep announces how many points it will measure (all transports and
  // ops together); Point() then counts them in the progress line.
  void PlanPoints(size_t total) {
    std::lock_guard lock(mu_);
    points_total_ = total;
    points_started_ = 0;
  }
  // The next point of a planned sweep starts.
  void Point(const std::string &text) {
    std::lock_guard lock(mu_);
    const int64_t now = NowNs();
    if (points_started_ == 0) first_point_ns_ = now;
    ++points_started_;
    point_ns_ = now;
    step_ = text;
    DrawLocked(now);
  }
  // A step that is not a point of a sweep (starting a peer, a phase).
  void Progress(const std::string &text) {
    std::lock_guard lock(mu_);
    step_ = text;
    DrawLocked(NowNs());
  }
  // The measuring is over: the ticker stops and the line is cleared.
  void Finish() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (ticker_.joinable()) ticker_.join();
    std::lock_guard lock(mu_);
    ClearLocked(stderr);
  }
  // A free-text line (headers, notes); never on stdout with --json.
  void Note(const std::string &text) {
    std::lock_guard lock(mu_);
    const bool shown = ClearLocked(opt_.json ? stderr : stdout);
    if (opt_.json) {
      fprintf(stderr, "%s\n", text.c_str());
    } else {
      printf("%s\n", text.c_str());
      fflush(stdout);
    }
    if (shown) RestoreLocked();
  }
  void TableHeader() {
    if (opt_.json) return;
    std::lock_guard lock(mu_);
    const bool shown = ClearLocked(stdout);
    printf("%-8s %-9s %-5s %8s %6s %3s %9s %9s %10s %10s %10s %8s\n", "mode", "op", "trans", "desc", "batch", "thr",
           "bytes", "GB/s", "Mdesc/s", "p50_us", "p99_us", "iters");
    fflush(stdout);
    if (shown) RestoreLocked();
  }
  // A throughput record also prints as a table row.
  void Emit(Record r, bool row) {
    Stamp(&r);
    std::lock_guard lock(mu_);
    records_.push_back(r);
    std::string line = r.Json();
    if (out_ != nullptr) {
      fprintf(out_, "%s\n", line.c_str());
      fflush(out_);
    }
    const bool shown = ClearLocked(stdout);
    if (opt_.json) {
      printf("%s\n", line.c_str());
      fflush(stdout);
    } else if (row) {
      PrintRow(r);
    }
    if (shown) RestoreLocked();
  }
  // Only read once the measuring threads are done (main, after the mode returned).
  const std::vector<Record> &records() const { return records_; }

 private:
  void PrintRow(const Record &r) {
    auto num = [&](const char *k) { return atof(r.Get(k).c_str()); };
    std::string err = r.Get("error");
    if (!err.empty()) {
      printf("%-8s %-9s %-5s %8s %6s %3s  FAILED: %s\n", r.Get("mode").c_str(), r.Get("op").c_str(),
             r.Get("transport").c_str(), HumanBytes(static_cast<uint64_t>(num("desc_size"))).c_str(),
             r.Get("batch").c_str(), r.Get("threads").c_str(), err.c_str());
    } else {
      printf("%-8s %-9s %-5s %8s %6s %3s %9s %9.3f %10.3f %10.2f %10.2f %8s\n", r.Get("mode").c_str(),
             r.Get("op").c_str(), r.Get("transport").c_str(),
             HumanBytes(static_cast<uint64_t>(num("desc_size"))).c_str(), r.Get("batch").c_str(),
             r.Get("threads").c_str(), HumanBytes(static_cast<uint64_t>(num("bytes"))).c_str(), num("gbps"),
             num("descs_per_s") / 1e6, num("p50_us"), num("p99_us"), r.Get("iters").c_str());
    }
    fflush(stdout);
  }
  void Stamp(Record *r) {
    if (opt_.mode == "engine" || opt_.mode == "kv" || opt_.mode == "overhead" || opt_.mode == "peers" ||
        opt_.mode == "mixed" || opt_.mode == "async") {
      r->Int("connections", opt_.connections);  // llmdd.TcpConnections; 0 = library default
      r->Int("workers", opt_.workers);          // llmdd.WorkerThreads; 0 = library default
      r->Int("ucx_workers", opt_.ucx_workers);  // llmdd.UcxWorkers; 0 = library default
      r->Int("busy_poll_us", opt_.busy_poll_us);  // llmdd.BusyPollUs; -1 = library default
      // llmdd.SameHostMinPartBytes; 0 = library default
      r->Int("same_host_min_part", static_cast<int64_t>(opt_.same_host_min_part));
    }
    r->Num("load1", Load1());
    r->Int("nproc", static_cast<int64_t>(std::thread::hardware_concurrency()));
    if (!opt_.tag.empty()) r->Str("tag", opt_.tag);
    if (g_malloc_mem) r->Str("memory", "mallocmem");  // absent: private anonymous mappings
    if (opt_.register_local && opt_.mode == "engine") r->Str("local", "registered");  // absent: not registered
  }
  static constexpr int64_t kSecond = 1000000000;  // ns
  void Tick() {
    std::unique_lock lock(mu_);
    while (!cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; })) DrawLocked(NowNs());
  }
  // Draws the line if it is due: not before 2 s unless forced, then at most
  // once a second on a terminal and every 5 s elsewhere (100 ms of slack, so
  // the once-a-second ticker does not skip every other second).
  void DrawLocked(int64_t now) {
    if (!progress_ || step_.empty() || stop_) return;
    if (!forced_ && now - start_ns_ < 2 * kSecond) return;
    const int64_t period = tty_ ? kSecond : 5 * kSecond;
    if (drawn_ns_ != 0 && now - drawn_ns_ < period - kSecond / 10) return;
    drawn_ns_ = now;
    ComposeLocked(now);
    RedrawLocked();
  }
  // The counts first: a terminal narrower than the line cuts the step's
  // details, not how far the run is.
  void ComposeLocked(int64_t now) {
    line_ = "[llmdd_bench] ";
    if (points_total_ > 0 && points_started_ > 0)
      line_ += Format("point %zu/%zu, ", std::min(points_started_, points_total_), points_total_);
    line_ += Format("%" PRId64 " s elapsed", (now - start_ns_) / kSecond);
    // The points done so far took (point_ns_ - first_point_ns_); the rest
    // are assumed to take as long each (peer start-ups included: "about").
    if (points_total_ > points_started_ && points_started_ >= 2) {
      const size_t done = points_started_ - 1;
      const double per = static_cast<double>(point_ns_ - first_point_ns_) / static_cast<double>(done);
      const double left = per * static_cast<double>(points_total_ - done) - static_cast<double>(now - point_ns_);
      if (left >= kSecond) line_ += Format(", about %.0f s left", left / kSecond);
    }
    line_ += ": " + step_;
  }
  // After a row cleared the line from the terminal: puts it back, up to date
  // (no more writes than the row itself; not counted as an update).
  void RestoreLocked() {
    ComposeLocked(NowNs());
    RedrawLocked();
  }
  void RedrawLocked() {
    if (line_.empty()) return;
    if (!tty_) {
      fprintf(stderr, "%s\n", line_.c_str());
      fflush(stderr);
      return;
    }
    // A line longer than the terminal would wrap, and \r would then return
    // to its last row only: cut it to the width.
    winsize ws{};
    const size_t width = ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1 ? ws.ws_col - 1 : 79;
    fprintf(stderr, "\r\033[K%s", line_.substr(0, width).c_str());
    fflush(stderr);
    shown_ = true;
  }
  // Before text goes to `to`: clears the line if `to` is a terminal too (a
  // row would land in the middle of it); true if it did (to put it back).
  bool ClearLocked(FILE *to) {
    if (!shown_ || isatty(fileno(to)) == 0) return false;
    fprintf(stderr, "\r\033[K");
    fflush(stderr);
    shown_ = false;
    return true;
  }

  const Options &opt_;
  FILE *out_ = nullptr;
  std::vector<Record> records_;
  std::mutex mu_;  // every write of the Reporter, records_ and the progress state below
  std::condition_variable cv_;
  std::thread ticker_;
  bool tty_ = false, forced_ = false, progress_ = false, stop_ = false;
  bool shown_ = false;         // the line is on the terminal now
  std::string step_, line_;    // the current step; the line last drawn
  int64_t start_ns_ = 0, drawn_ns_ = 0, first_point_ns_ = 0, point_ns_ = 0;
  size_t points_total_ = 0, points_started_ = 0;
};

// ------------------------------------------------------------------ timed runs

struct RunResult {
  bool ok = true;
  std::string error;
  int64_t calls = 0;    // all threads
  double seconds = 0;   // wall time of the timed phase
  std::vector<int64_t> ns;  // per-call latencies, all threads
  bool checked = false;     // the first and last call's bytes were checked (CheckedRun)
};

// Runs `call(thread)` on `threads` threads: `warmup` untimed calls each, then
// timed calls until `time_s` has passed (at least min_iters, at most max_iters
// per thread). call returns an empty string on success, else the error.
RunResult TimedRun(int threads, const Options &opt, const std::function<std::string(int)> &call) {
  RunResult result;
  std::mutex mutex;
  std::condition_variable cv;
  int ready = 0;
  bool go = false;
  std::atomic<bool> failed{false};
  std::vector<std::vector<int64_t>> samples(static_cast<size_t>(threads));
  std::vector<int64_t> end_ns(static_cast<size_t>(threads), 0);
  std::vector<std::string> errors(static_cast<size_t>(threads));
  int64_t start_ns = 0;
  auto body = [&](int t) {
    for (int i = 0; i < opt.warmup && !failed.load(); ++i) {
      std::string e = call(t);
      if (!e.empty()) {
        errors[static_cast<size_t>(t)] = e;
        failed.store(true);
      }
    }
    {
      std::unique_lock lock(mutex);
      ++ready;
      cv.notify_all();
      cv.wait(lock, [&] { return go; });
    }
    auto &mine = samples[static_cast<size_t>(t)];
    mine.reserve(1024);
    const int64_t stop_at = start_ns + static_cast<int64_t>(opt.time_s * 1e9);
    for (int64_t i = 0; i < opt.max_iters && !failed.load(); ++i) {
      int64_t t0 = NowNs();
      std::string e = call(t);
      int64_t t1 = NowNs();
      if (!e.empty()) {
        errors[static_cast<size_t>(t)] = e;
        failed.store(true);
        break;
      }
      mine.push_back(t1 - t0);
      if (t1 >= stop_at && i + 1 >= opt.min_iters) break;
    }
    end_ns[static_cast<size_t>(t)] = NowNs();
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(body, t);
  std::thread releaser([&] {
    std::unique_lock lock(mutex);
    cv.wait(lock, [&] { return ready == threads; });
    start_ns = NowNs();
    go = true;
    cv.notify_all();
  });
  body(0);
  releaser.join();
  for (auto &th : pool) th.join();
  for (int t = 0; t < threads; ++t) {
    if (!errors[static_cast<size_t>(t)].empty()) {
      result.ok = false;
      result.error = errors[static_cast<size_t>(t)];
    }
    result.calls += static_cast<int64_t>(samples[static_cast<size_t>(t)].size());
    result.ns.insert(result.ns.end(), samples[static_cast<size_t>(t)].begin(), samples[static_cast<size_t>(t)].end());
  }
  int64_t last = *std::max_element(end_ns.begin(), end_ns.end());
  result.seconds = static_cast<double>(last - start_ns) / 1e9;
  return result;
}

// TimedRun between two checked calls (byte checks): check("first") runs
// before the warm-up, check("last") after the timed calls; a wrong byte in
// either fails the run with what was wrong, and no timed calls follow a
// failed first check.
RunResult CheckedRun(int threads, const Options &opt, const std::function<std::string(const char *)> &check,
                     const std::function<std::string(int)> &call) {
  RunResult r;
  std::string e = check("first");
  if (e.empty()) {
    r = TimedRun(threads, opt, call);
    if (r.ok) e = check("last");
  }
  if (!e.empty()) {
    r.ok = false;
    r.error = e;
  }
  r.checked = r.ok;
  return r;
}

Record ThroughputRecord(const std::string &mode, const std::string &op, const std::string &transport,
                        const Point &p, uint64_t descs_per_call, const RunResult &r) {
  const uint64_t bytes = p.size * p.batch;
  Stats s = Summarize(r.ns);
  Record rec;
  rec.Str("mode", mode).Str("op", op).Str("transport", transport);
  rec.Int("desc_size", static_cast<int64_t>(p.size)).Int("batch", static_cast<int64_t>(p.batch));
  rec.Int("batch_req", static_cast<int64_t>(p.batch_req != 0 ? p.batch_req : p.batch));
  rec.Int("threads", p.threads).Int("bytes", static_cast<int64_t>(bytes));
  rec.Int("descs", static_cast<int64_t>(descs_per_call));
  // A failed point reports what failed and no figure (a wrong byte, a failed
  // call): nothing downstream can take a broken run's speed for a result.
  if (!r.ok) return rec.Str("error", r.error.empty() ? "failed" : r.error);
  // "first,last": the bytes of the point's first and last call were checked.
  if (r.checked) rec.Str("checked", "first,last");
  rec.Int("iters", r.calls).Num("seconds", r.seconds);
  const double secs = r.seconds > 0 ? r.seconds : 1e-12;
  rec.Num("gbps", static_cast<double>(bytes) * static_cast<double>(r.calls) / secs / 1e9);
  rec.Num("descs_per_s", static_cast<double>(descs_per_call) * static_cast<double>(r.calls) / secs);
  rec.Num("calls_per_s", static_cast<double>(r.calls) / secs);
  rec.Num("p50_us", s.p50_us).Num("p99_us", s.p99_us).Num("mean_us", s.mean_us);
  rec.Num("min_us", s.min_us).Num("max_us", s.max_us);
  // Per-thread bytes over the median call time: less sensitive to the process
  // being descheduled by other load than the wall-clock figure.
  rec.Num("gbps_p50", s.p50_us > 0 ? static_cast<double>(bytes) * p.threads / (s.p50_us * 1e3) : NAN);
  return rec;
}

// ------------------------------------------------------------------ peer process


// Reads one '\n'-terminated line; false on EOF/timeout.
bool ReadLine(int fd, std::string *buf, std::string *line, int timeout_ms) {
  const int64_t deadline = NowNs() + int64_t{timeout_ms} * 1000000;
  for (;;) {
    size_t nl = buf->find('\n');
    if (nl != std::string::npos) {
      *line = buf->substr(0, nl);
      buf->erase(0, nl + 1);
      return true;
    }
    int64_t left = (deadline - NowNs()) / 1000000;
    if (timeout_ms >= 0 && left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    int rc = poll(&pfd, 1, timeout_ms < 0 ? -1 : static_cast<int>(std::min<int64_t>(left, INT32_MAX)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return false;
    char chunk[4096];
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf->append(chunk, static_cast<size_t>(n));
  }
}

std::vector<std::string> Words(const std::string &line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

class Peer {
 public:
  ~Peer() { Stop(); }
  // Starts `/proc/self/exe serve args...`; waits for its READY line.
  bool Start(const std::vector<std::string> &args, std::vector<std::string> *ready, std::string *error) {
    std::vector<std::string> all = {"llmdd_bench", "serve"};
    all.insert(all.end(), args.begin(), args.end());
    if (!llmdd_tools::SpawnSelf(all, &pid_, &to_, &from_, error)) return false;
    std::string line;
    if (!ReadLine(from_, &buf_, &line, 120000)) {
      *error = "the peer process did not start (no READY line)";
      Stop();
      return false;
    }
    auto words = Words(line);
    if (words.empty() || words[0] != "READY") {
      *error = "peer: " + line;
      Stop();
      return false;
    }
    ready->assign(words.begin() + 1, words.end());
    return true;
  }
  // Sends one control line and waits for the peer's one-line answer.
  bool Ask(const std::string &line, std::string *reply, int timeout_ms) {
    if (pid_ <= 0 || !WriteAll(to_, line + "\n")) return false;
    return ReadLine(from_, &buf_, reply, timeout_ms);
  }
  pid_t pid() const { return pid_; }
  void Stop() {
    if (pid_ <= 0) return;
    WriteAll(to_, "QUIT\n");
    close(to_);
    to_ = -1;
    for (int i = 0; i < 500; ++i) {  // up to 5 s for a clean Finalize
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      usleep(10000);
    }
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    close(from_);
    from_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  std::string buf_;
};

int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  inet_pton(AF_INET, kHost, &addr.sin_addr);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

std::map<AscendString, AscendString> ExtOptions(const Options &opt, const std::string &transport) {
  std::map<AscendString, AscendString> o;
  o["llmdd.Transport"] = transport.c_str();
  if (opt.connections > 0) o["llmdd.TcpConnections"] = std::to_string(opt.connections).c_str();
  if (opt.workers > 0) o["llmdd.WorkerThreads"] = std::to_string(opt.workers).c_str();
  if (opt.ucx_workers > 0) o["llmdd.UcxWorkers"] = std::to_string(opt.ucx_workers).c_str();
  if (opt.busy_poll_us >= 0) o["llmdd.BusyPollUs"] = std::to_string(opt.busy_poll_us).c_str();
  if (opt.same_host_min_part > 0) {
    o["llmdd.SameHostMinPartBytes"] = std::to_string(opt.same_host_min_part).c_str();
  }
  if (opt.peer_timeout_ms > 0) o["llmdd.PeerTimeoutMs"] = std::to_string(opt.peer_timeout_ms).c_str();
  return o;
}

std::vector<std::string> PeerCommonArgs(const Options &opt, const std::string &transport) {
  std::vector<std::string> a = {"--transport", transport};
  if (opt.connections > 0) a.insert(a.end(), {"--connections", std::to_string(opt.connections)});
  if (opt.workers > 0) a.insert(a.end(), {"--workers", std::to_string(opt.workers)});
  if (opt.ucx_workers > 0) a.insert(a.end(), {"--ucx-workers", std::to_string(opt.ucx_workers)});
  if (opt.busy_poll_us >= 0) a.insert(a.end(), {"--busy-poll-us", std::to_string(opt.busy_poll_us)});
  if (opt.peer_timeout_ms > 0) a.insert(a.end(), {"--peer-timeout-ms", std::to_string(opt.peer_timeout_ms)});
  if (!opt.hugepages) a.push_back("--no-hugepages");
  if (g_malloc_mem) a.push_back("--mallocmem");
  return a;
}

// Waits for QUIT or end of file on stdin.
void WaitForQuit() {
  std::string buf, line;
  while (ReadLine(STDIN_FILENO, &buf, &line, -1)) {
    if (line == "QUIT") return;
  }
}

// ------------------------------------------------------------------ byte checks
//
// A figure counts only if the bytes arrived. Every engine, kv, async and cma
// point checks its first and its last call (the first runs before the
// warm-up, the last after the timed calls; the calls between are not checked,
// a comparison in the timed loop would be measured with them):
//   - the serving peer fills region r of its memory (the engine buffer, or
//     tensor r of the KV caches in registration order) with the pattern
//     seeded RegionSeed(kPeerSeed, r);
//   - READ: the destination is poisoned first, so a call that moves nothing
//     cannot pass on bytes an earlier call left there; afterwards every
//     descriptor must hold the peer's pattern at its remote offset;
//   - WRITE: the source holds a pattern with a fresh seed at the remote
//     offsets; afterwards the peer is asked to compare those ranges (a CHECK
//     line on its stdin) and puts its own pattern back.
// A point whose check fails is reported with an "error" and no figure, and
// llmdd_bench exits non-zero: a broken engine cannot produce a fast figure.
//
// LLMDD_BENCH_PEER_FAULT=flip (read by the serving peer; for the tests of
// this check only) makes the peer's memory differ from what it announces: the
// first byte of every 4 KiB of its pattern is flipped, and so is the first
// byte of every range it is asked to check, as if the engine had delivered
// one wrong byte.

constexpr uint64_t kPeerSeed = 0x5EEDull;    // the pattern served memory holds
constexpr uint64_t kPoisonSeed = 0xBADull;   // what a destination holds before a checked READ
constexpr uint64_t kPatternChunk = 64 * kKiB;

uint64_t RegionSeed(uint64_t seed, uint64_t region) { return Mix(seed * 0x9E3779B97F4A7C15ULL + region); }

// Bytes [offset, offset + n) of the pattern seeded `seed`: byte o is byte
// o % 8 (in memory order) of the word Mix(seed + o / 8). Any offset, any length.
void FillPatternAt(uint8_t *p, uint64_t n, uint64_t seed, uint64_t offset) {
  uint64_t o = offset;
  const uint64_t end = offset + n;
  while (o < end) {
    const uint64_t v = Mix(seed + o / 8);
    const uint64_t in_word = o % 8;
    const uint64_t take = std::min<uint64_t>(8 - in_word, end - o);
    if (take == 8) {
      memcpy(p, &v, 8);
    } else {
      uint8_t w[8];
      memcpy(w, &v, 8);
      memcpy(p, w + in_word, take);
    }
    p += take;
    o += take;
  }
}

// Bytes of p[0, n) that differ from the pattern `seed` at `offset`.
uint64_t PatternMismatchesAt(const uint8_t *p, uint64_t n, uint64_t seed, uint64_t offset) {
  std::vector<uint8_t> want(static_cast<size_t>(std::min(n, kPatternChunk)));
  uint64_t bad = 0;
  for (uint64_t done = 0; done < n;) {
    const uint64_t len = std::min(kPatternChunk, n - done);
    FillPatternAt(want.data(), len, seed, offset + done);
    if (memcmp(p + done, want.data(), len) != 0)
      for (uint64_t i = 0; i < len; ++i) bad += p[done + i] != want[i] ? 1 : 0;
    done += len;
  }
  return bad;
}

bool PeerFaultFlip() {
  const char *f = getenv("LLMDD_BENCH_PEER_FAULT");
  return f != nullptr && strcmp(f, "flip") == 0;
}

// Memory a peer serves, as regions it fills with its pattern and checks on request.
struct ServedRegion {
  uint8_t *p;
  uint64_t len;
};

// Puts the peer's own pattern into [off, off + len) of a region (with the test fault, if set).
void PaintServed(const ServedRegion &r, uint64_t region, uint64_t off, uint64_t len, bool flip) {
  FillPatternAt(r.p + off, len, RegionSeed(kPeerSeed, region), off);
  if (!flip) return;
  for (uint64_t o = (off + 4095) / 4096 * 4096; o < off + len; o += 4096) r.p[o] ^= 0xFF;
}

// The peer's control loop: answers
//   CHECK <seed> <region>:<offset>:<len>,...  ->  CHECKED <bytes wrong> <first wrong range or -1>
// (each range compared with the pattern RegionSeed(seed, region), then given
// the peer's own pattern back) until QUIT or end of file.
void ServeChecks(const std::vector<ServedRegion> &regions) {
  const bool flip = PeerFaultFlip();
  std::string buf, line;
  while (ReadLine(STDIN_FILENO, &buf, &line, -1)) {
    if (line == "QUIT") return;
    auto words = Words(line);
    if (words.size() != 3 || words[0] != "CHECK") continue;
    const uint64_t seed = strtoull(words[1].c_str(), nullptr, 10);
    uint64_t bad = 0;
    int64_t first = -1, index = 0;
    for (const auto &range : SplitOn(words[2], ',')) {
      auto f = SplitOn(range, ':');
      uint64_t r = 0, off = 0, len = 0;
      bool ok = f.size() == 3;
      if (ok) {
        r = strtoull(f[0].c_str(), nullptr, 10);
        off = strtoull(f[1].c_str(), nullptr, 10);
        len = strtoull(f[2].c_str(), nullptr, 10);
        ok = r < regions.size() && off <= regions[r].len && len <= regions[r].len - off;
      }
      uint64_t wrong = ok ? 0 : 1;  // a range outside the served memory counts as wrong
      if (ok && len > 0) {
        if (flip) regions[r].p[off] ^= 0xFF;
        wrong = PatternMismatchesAt(regions[r].p + off, len, RegionSeed(seed, r), off);
        PaintServed(regions[r], r, off, len, flip);
      }
      if (wrong != 0 && first < 0) first = index;
      bad += wrong;
      ++index;
    }
    WriteAll(STDOUT_FILENO, Format("CHECKED %" PRIu64 " %" PRId64 "\n", bad, first));
  }
}

// Asks the peer to compare `ranges` ("region:offset:len" words) with the
// pattern `seed`; "" when every byte is right, else what was wrong.
std::string PeerCheck(Peer &peer, uint64_t seed, const std::vector<std::string> &ranges, const char *which) {
  std::string line = "CHECK " + std::to_string(seed) + " ";
  for (size_t i = 0; i < ranges.size(); ++i) line += (i ? "," : "") + ranges[i];
  std::string reply;
  if (!peer.Ask(line, &reply, 120000)) return Format("bytes not checked after the %s call: the peer did not answer", which);
  auto w = Words(reply);
  if (w.size() != 3 || w[0] != "CHECKED") return "bytes not checked: the peer answered '" + reply + "'";
  if (w[1] == "0") return "";
  return Format("bytes wrong after the %s call: %s bytes in the peer's memory differ from what was written "
                "(first in range %s of %zu)", which, w[1].c_str(), w[2].c_str(), ranges.size());
}

// One descriptor of a checked call, as offsets: local memory and the peer's region.
struct CheckRange {
  uint8_t *local;
  uint64_t region, remote_off, len;
};

// Before a checked call: READ destinations poisoned, WRITE sources given the pattern `seed`.
void PrepareChecked(bool read, const std::vector<CheckRange> &ranges, uint64_t seed) {
  for (const auto &c : ranges) {
    if (read)
      FillPatternAt(c.local, c.len, kPoisonSeed, c.remote_off);
    else
      FillPatternAt(c.local, c.len, RegionSeed(seed, c.region), c.remote_off);
  }
}

// After a checked call: "" when every byte arrived, else what was wrong.
std::string VerifyChecked(bool read, Peer &peer, const std::vector<CheckRange> &ranges, uint64_t seed,
                          const char *which) {
  if (!read) {
    std::vector<std::string> words;
    words.reserve(ranges.size());
    for (const auto &c : ranges)
      words.push_back(Format("%" PRIu64 ":%" PRIu64 ":%" PRIu64, c.region, c.remote_off, c.len));
    return PeerCheck(peer, seed, words, which);
  }
  uint64_t bad = 0, total = 0;
  int64_t first = -1;
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto &c = ranges[i];
    const uint64_t wrong = PatternMismatchesAt(c.local, c.len, RegionSeed(kPeerSeed, c.region), c.remote_off);
    if (wrong != 0 && first < 0) first = static_cast<int64_t>(i);
    bad += wrong;
    total += c.len;
  }
  if (bad == 0) return "";
  return Format("bytes wrong after the %s call: %" PRIu64 " of %" PRIu64 " bytes read differ from the peer's "
                "(first in descriptor %" PRId64 " of %zu)", which, bad, total, first, ranges.size());
}

// A fresh seed for each checked WRITE, so a call that writes nothing cannot
// pass on what an earlier one left in the peer's memory.
uint64_t NextWriteSeed() {
  static std::atomic<uint64_t> n{1};
  return Mix(0xC0FFEEull + n.fetch_add(1));
}

// ------------------------------------------------------------------ serve

struct ServeOptions {
  std::string role;
  std::string transport = "auto";
  int connections = 0;
  int workers = 0;
  int ucx_workers = 0;
  int busy_poll_us = -1;
  bool hugepages = true;
  uint64_t bytes = 0;
  std::vector<std::string> caches;  // kv: "tensors:blocks:block_bytes"
  // peers roles
  int peer_timeout_ms = 0;
  int count = 1;                  // engines in this process
  std::string target;             // peers-clients: the server's "ip:port"
  std::vector<std::string> targets;  // peers-frozen-client: the servers
  uint64_t seed = 1;              // pattern written into served memory
  uint64_t regions = 0;           // peers-regions
  int connect_timeout_ms = 5000;
  int disconnect_timeout_ms = 1000;
};

int ServeFail(const std::string &text) {
  WriteAll(STDOUT_FILENO, "FAILED " + text + "\n");
  return kExitFailed;
}

int ServeEngine(const ServeOptions &so) {
  Options fake;
  fake.connections = so.connections;
  fake.workers = so.workers;
  fake.ucx_workers = so.ucx_workers;
  fake.busy_poll_us = so.busy_poll_us;
  Buffer buf;
  if (!buf.Allocate(so.bytes, so.hugepages, false, 0)) return ServeFail("cannot allocate the buffer");
  const ServedRegion served{buf.data(), buf.size()};
  PaintServed(served, 0, 0, served.len, PeerFaultFlip());  // also faults every page in
  adxl::AdxlEngine engine;
  int port = -1;
  adxl::Status st = adxl::FAILED;
  for (int attempt = 0; attempt < 8 && st != adxl::SUCCESS; ++attempt) {
    port = PickFreePort();
    std::string id = std::string(kHost) + ":" + std::to_string(port);
    st = engine.Initialize(id.c_str(), ExtOptions(fake, so.transport));
  }
  if (st != adxl::SUCCESS) return ServeFail("engine Initialize failed: " + StatusWithNumber(st));
  adxl::MemDesc desc{};
  desc.addr = buf.addr();
  desc.len = buf.size();
  adxl::MemHandle handle = nullptr;
  st = engine.RegisterMem(desc, adxl::MEM_HOST, handle);
  if (st != adxl::SUCCESS) return ServeFail("RegisterMem failed: " + StatusWithNumber(st));
  WriteAll(STDOUT_FILENO, Format("READY %d 0x%" PRIxPTR " %" PRIu64 "\n", port, buf.addr(), buf.size()));
  ServeChecks({served});
  engine.DeregisterMem(handle);
  engine.Finalize();
  return kExitOk;
}

struct KvShape {
  uint32_t tensors;
  uint64_t blocks;
  uint64_t block_bytes;
};

bool ParseKvShape(const std::string &text, KvShape *out) {
  auto p = SplitOn(text, ':');
  uint64_t t = 0, b = 0, bb = 0;
  if (p.size() != 3 || !ParseSize(p[0], &t) || !ParseSize(p[1], &b) || !ParseSize(p[2], &bb) || t == 0 || b == 0 ||
      bb == 0)
    return false;
  *out = {static_cast<uint32_t>(t), b, bb};
  return true;
}

// A cache of `tensors` tensors, each [blocks, block_bytes] int8: block = row.
llm_datadist::CacheDesc KvDesc(const KvShape &s) {
  llm_datadist::CacheDesc d{};
  d.placement = llm_datadist::CachePlacement::kDevice;
  d.num_tensors = s.tensors;
  d.data_type = llm_datadist::DT_INT8;
  d.shape = {static_cast<int64_t>(s.blocks), static_cast<int64_t>(s.block_bytes)};
  return d;
}

// One allocation per tensor, as a CANN program makes one aclrtMalloc per KV tensor.
struct KvMemory {
  std::vector<std::unique_ptr<Buffer>> tensors;
  std::vector<uint64_t> addrs;
  bool Allocate(const KvShape &s, bool hugepages, bool prefault, uint8_t fill) {
    for (uint32_t t = 0; t < s.tensors; ++t) {
      auto b = std::make_unique<Buffer>();
      if (!b->Allocate(s.blocks * s.block_bytes, hugepages, prefault, fill)) return false;
      addrs.push_back(b->addr());
      tensors.push_back(std::move(b));
    }
    return true;
  }
};

// The cma mode's peer: patterned memory and nothing else (no engine); the
// parent reads and writes it with process_vm_readv/writev.
int ServeCma(const ServeOptions &so) {
  Buffer buf;
  if (!buf.Allocate(so.bytes, so.hugepages, false, 0)) return ServeFail("cannot allocate the buffer");
  const ServedRegion served{buf.data(), buf.size()};
  PaintServed(served, 0, 0, served.len, PeerFaultFlip());
  WriteAll(STDOUT_FILENO, Format("READY 0 0x%" PRIxPTR " %" PRIu64 "\n", buf.addr(), buf.size()));
  ServeChecks({served});
  return kExitOk;
}

int ServeKv(const ServeOptions &so) {
  std::vector<KvShape> shapes;
  for (const auto &c : so.caches) {
    KvShape s{};
    if (!ParseKvShape(c, &s)) return ServeFail("bad cache shape " + c);
    shapes.push_back(s);
  }
  std::vector<KvMemory> mem(shapes.size());
  std::vector<ServedRegion> served;  // region r: the r-th tensor, caches in order
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (!mem[i].Allocate(shapes[i], so.hugepages, false, 0)) return ServeFail("cannot allocate a cache");
    for (const auto &t : mem[i].tensors) {
      served.push_back({t->data(), t->size()});
      PaintServed(served.back(), served.size() - 1, 0, t->size(), PeerFaultFlip());
    }
  }
  Options fake;
  fake.connections = so.connections;
  fake.workers = so.workers;
  fake.ucx_workers = so.ucx_workers;
  fake.busy_poll_us = so.busy_poll_us;
  std::unique_ptr<llm_datadist::LlmDataDist> dd;
  int port = -1;
  llm_datadist::Status st = llm_datadist::LLM_FAILED;
  for (int attempt = 0; attempt < 8 && st != llm_datadist::LLM_SUCCESS; ++attempt) {
    port = PickFreePort();
    dd = std::make_unique<llm_datadist::LlmDataDist>(kPromptCluster, llm_datadist::LlmRole::kPrompt);
    auto o = ExtOptions(fake, so.transport);
    o[llm_datadist::OPTION_DEVICE_ID] = "0";
    std::string listen = std::string(kHost) + ":" + std::to_string(port);
    o[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();
    o[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = "30000";
    st = dd->Initialize(o);
  }
  if (st != llm_datadist::LLM_SUCCESS) return ServeFail("LlmDataDist Initialize failed: " + StatusWithNumber(st));
  std::string ids;
  std::vector<int64_t> cache_ids;
  for (size_t i = 0; i < shapes.size(); ++i) {
    int64_t id = -1;
    st = dd->RegisterKvCache(KvDesc(shapes[i]), mem[i].addrs, llm_datadist::RegisterCfg{}, id);
    if (st != llm_datadist::LLM_SUCCESS) return ServeFail("RegisterKvCache failed: " + StatusWithNumber(st));
    cache_ids.push_back(id);
    ids += " " + std::to_string(id);
  }
  WriteAll(STDOUT_FILENO, Format("READY %d%s\n", port, ids.c_str()));
  ServeChecks(served);
  for (int64_t id : cache_ids) dd->UnregisterKvCache(id);
  dd->Finalize();
  return kExitOk;
}

// Echo server for the ping-pong: the first byte of a connection says how to
// wait ('b' blocking recv, 's' spinning on non-blocking recv); then 8-byte
// messages are echoed until end of file.
void EchoConnection(int fd) {
  char mode = 0;
  if (recv(fd, &mode, 1, MSG_WAITALL) != 1) {
    close(fd);
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char msg[8];
  for (;;) {
    size_t got = 0;
    while (got < sizeof(msg)) {
      ssize_t n = recv(fd, msg + got, sizeof(msg) - got, mode == 's' ? MSG_DONTWAIT : 0);
      if (n > 0) {
        got += static_cast<size_t>(n);
      } else if (n == 0) {
        close(fd);
        return;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        close(fd);
        return;
      }
    }
    if (send(fd, msg, sizeof(msg), MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(msg))) {
      close(fd);
      return;
    }
  }
}

int ServePingPong() {
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  inet_pton(AF_INET, kHost, &addr.sin_addr);
  socklen_t len = sizeof(addr);
  if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0 || listen(lfd, 16) != 0 ||
      getsockname(lfd, reinterpret_cast<sockaddr *>(&addr), &len) != 0)
    return ServeFail(std::string("cannot listen: ") + strerror(errno));
  std::thread acceptor([lfd] {
    for (;;) {
      int fd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR) continue;
        return;
      }
      std::thread(EchoConnection, fd).detach();
    }
  });
  acceptor.detach();
  WriteAll(STDOUT_FILENO, Format("READY %d\n", ntohs(addr.sin_port)));
  WaitForQuit();
  _exit(kExitOk);  // detached threads may be blocked in recv/accept
}

// ------------------------------------------------------------------ peers: child processes
//
// Roles of `llmdd_bench serve` used by the peers mode. Each raises its soft
// RLIMIT_NOFILE to the hard limit first and reports the limits it runs with.
// Control lines (child -> parent on stdout, parent -> child on stdin):
//   peers-server        READY <port> <addr> <bytes> <nofile_soft> <nofile_hard>; then QUIT
//   peers-clients       READY <threads> <fds> <rss_kib> <nofile_soft> <nofile_hard>; waits for GO;
//                       "C <n>" after each connected engine; DONE <connected> <status> <where>
//                       <threads> <fds> <rss_kib> <ms>; then QUIT (Finalize of all)
//   peers-frozen        READY <nofile_soft> <nofile_hard> <port>...; then QUIT
//   peers-frozen-client CONNECTED <n> <first failure status> <nofile_soft> <nofile_hard>; waits for GO;
//                       DONE <disconnect_ms> <disconnect_status> <finalize_ms>
//   peers-regions       READY <port_many> <port_one> <addr_many> <addr_one> <regions>; then QUIT

struct NofileLimit {
  uint64_t soft = 0, hard = 0;
};

NofileLimit RaiseNofile() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return {};
  if (r.rlim_cur < r.rlim_max) {
    rlimit want = r;
    want.rlim_cur = r.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &want) != 0 && r.rlim_max == RLIM_INFINITY) {
      // An unlimited hard limit is capped by fs.nr_open.
      FILE *f = fopen("/proc/sys/fs/nr_open", "r");
      unsigned long long nr = 0;
      if (f != nullptr) {
        if (fscanf(f, "%llu", &nr) != 1) nr = 0;
        fclose(f);
      }
      if (nr > r.rlim_cur) {
        want.rlim_cur = nr;
        setrlimit(RLIMIT_NOFILE, &want);
      }
    }
    getrlimit(RLIMIT_NOFILE, &r);
  }
  return {static_cast<uint64_t>(r.rlim_cur), static_cast<uint64_t>(r.rlim_max)};
}

// Threads, open file descriptors and resident memory of a process (0: this one).
struct ProcStats {
  bool ok = false;
  int64_t threads = -1, fds = -1, rss_kib = -1;
};

ProcStats ReadProcStats(pid_t pid) {
  ProcStats s;
  const std::string base = pid == 0 ? std::string("/proc/self") : "/proc/" + std::to_string(pid);
  FILE *f = fopen((base + "/status").c_str(), "r");
  if (f == nullptr) return s;
  char line[256];
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strncmp(line, "Threads:", 8) == 0) s.threads = atoll(line + 8);
    if (strncmp(line, "VmRSS:", 6) == 0) s.rss_kib = atoll(line + 6);
  }
  fclose(f);
  DIR *d = opendir((base + "/fd").c_str());
  if (d != nullptr) {
    int64_t n = 0;
    while (dirent *e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
    s.fds = pid == 0 ? n - 1 : n;  // our own listing holds one
  }
  s.ok = s.threads >= 0 && s.fds >= 0 && s.rss_kib >= 0;
  return s;
}

std::string StatusName(uint32_t st) { return StatusWithNumber(st); }

// Served memory holds a pattern the reader can check: byte o of a buffer
// seeded s is byte (o % 8) of Mix(s * K + o / 8).
uint8_t PatternByte(uint64_t seed, uint64_t offset) {
  return static_cast<uint8_t>(Mix(seed * 0x100000001B3ULL + offset / 8) >> (8 * (offset % 8)));
}

void FillPattern(uint8_t *p, uint64_t n, uint64_t seed) {
  for (uint64_t w = 0; w * 8 < n; ++w) {
    const uint64_t v = Mix(seed * 0x100000001B3ULL + w);
    for (uint64_t j = 0; j < 8 && w * 8 + j < n; ++j) p[w * 8 + j] = static_cast<uint8_t>(v >> (8 * j));
  }
}

// Bytes of local[0, n) that differ from the pattern at remote offset `offset`.
uint64_t PatternMismatches(const uint8_t *local, uint64_t n, uint64_t seed, uint64_t offset) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < n; ++i) bad += local[i] != PatternByte(seed, offset + i) ? 1 : 0;
  return bad;
}

Options ServeEngineOptions(const ServeOptions &so) {
  Options o;
  o.connections = so.connections;
  o.workers = so.workers;
  o.ucx_workers = so.ucx_workers;
  o.busy_poll_us = so.busy_poll_us;
  o.peer_timeout_ms = so.peer_timeout_ms;
  return o;
}

// Initializes `engine` listening on a free loopback port; the port or -1.
int ListenOnFreePort(adxl::AdxlEngine &engine, const std::map<AscendString, AscendString> &options,
                     adxl::Status *status) {
  *status = adxl::FAILED;
  for (int attempt = 0; attempt < 8; ++attempt) {
    const int port = PickFreePort();
    const std::string id = std::string(kHost) + ":" + std::to_string(port);
    *status = engine.Initialize(id.c_str(), options);
    if (*status == adxl::SUCCESS) return port;
  }
  return -1;
}

// Waits for "GO" on stdin; false on QUIT, end of file or after timeout_ms (-1: none).
bool WaitForGo(std::string *buf, int timeout_ms) {
  std::string line;
  while (ReadLine(STDIN_FILENO, buf, &line, timeout_ms)) {
    if (line == "GO") return true;
    if (line == "QUIT") return false;
  }
  return false;
}

// One listening engine with `bytes` of patterned memory registered.
int ServePeersServer(const ServeOptions &so) {
  const NofileLimit lim = RaiseNofile();
  Buffer buf;
  if (!buf.Allocate(so.bytes, false, true, 0)) return ServeFail("cannot allocate the buffer");
  FillPattern(buf.data(), buf.size(), so.seed);
  adxl::AdxlEngine engine;
  adxl::Status st = adxl::FAILED;
  const int port = ListenOnFreePort(engine, ExtOptions(ServeEngineOptions(so), so.transport), &st);
  if (port < 0) return ServeFail("engine Initialize failed: " + StatusName(st));
  adxl::MemDesc desc{};
  desc.addr = buf.addr();
  desc.len = buf.size();
  adxl::MemHandle handle = nullptr;
  st = engine.RegisterMem(desc, adxl::MEM_HOST, handle);
  if (st != adxl::SUCCESS) return ServeFail("RegisterMem failed: " + StatusName(st));
  WriteAll(STDOUT_FILENO, Format("READY %d 0x%" PRIxPTR " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", port, buf.addr(),
                                 buf.size(), lim.soft, lim.hard));
  WaitForQuit();
  engine.DeregisterMem(handle);
  engine.Finalize();
  return kExitOk;
}

// `count` client-only engines, each connected to the target, made one after
// the other once the parent says GO; the first failure ends the series.
int ServePeersClients(const ServeOptions &so) {
  const NofileLimit lim = RaiseNofile();
  const ProcStats before = ReadProcStats(0);
  WriteAll(STDOUT_FILENO, Format("READY %" PRId64 " %" PRId64 " %" PRId64 " %" PRIu64 " %" PRIu64 "\n",
                                 before.threads, before.fds, before.rss_kib, lim.soft, lim.hard));
  std::string in;
  if (!WaitForGo(&in, -1)) return kExitOk;
  const auto options = ExtOptions(ServeEngineOptions(so), so.transport);
  std::vector<std::unique_ptr<adxl::AdxlEngine>> engines;
  adxl::Status failed = adxl::SUCCESS;
  std::string where = "-";
  const int64_t t0 = NowNs();
  for (int i = 0; i < so.count; ++i) {
    auto e = std::make_unique<adxl::AdxlEngine>();
    adxl::Status st = e->Initialize(kHost, options);
    if (st != adxl::SUCCESS) {
      failed = st;
      where = "Initialize";
      break;
    }
    st = e->Connect(so.target.c_str(), so.connect_timeout_ms);
    if (st != adxl::SUCCESS) {
      failed = st;
      where = "Connect";
      e->Finalize();
      break;
    }
    engines.push_back(std::move(e));
    WriteAll(STDOUT_FILENO, Format("C %zu\n", engines.size()));
  }
  const double ms = static_cast<double>(NowNs() - t0) / 1e6;
  const ProcStats after = ReadProcStats(0);
  WriteAll(STDOUT_FILENO, Format("DONE %zu %u %s %" PRId64 " %" PRId64 " %" PRId64 " %.3f\n", engines.size(), failed,
                                 where.c_str(), after.threads, after.fds, after.rss_kib, ms));
  WaitForQuit();
  for (auto &e : engines) e->Finalize();
  return kExitOk;
}

// `count` listening engines (no memory), to be frozen by the parent.
int ServePeersFrozen(const ServeOptions &so) {
  const NofileLimit lim = RaiseNofile();
  const auto options = ExtOptions(ServeEngineOptions(so), so.transport);
  std::vector<std::unique_ptr<adxl::AdxlEngine>> engines;
  std::string ports;
  for (int i = 0; i < so.count; ++i) {
    auto e = std::make_unique<adxl::AdxlEngine>();
    adxl::Status st = adxl::FAILED;
    const int port = ListenOnFreePort(*e, options, &st);
    if (port < 0) return ServeFail(Format("engine %d: Initialize failed: %s", i, StatusName(st).c_str()));
    ports += " " + std::to_string(port);
    engines.push_back(std::move(e));
  }
  WriteAll(STDOUT_FILENO, Format("READY %" PRIu64 " %" PRIu64 "%s\n", lim.soft, lim.hard, ports.c_str()));
  WaitForQuit();
  for (auto &e : engines) e->Finalize();
  return kExitOk;
}

// One client engine connected to every target; on GO (the targets frozen by
// then) times Disconnect of the first connected target and then Finalize.
int ServePeersFrozenClient(const ServeOptions &so) {
  const NofileLimit lim = RaiseNofile();
  adxl::AdxlEngine engine;
  adxl::Status st = engine.Initialize(kHost, ExtOptions(ServeEngineOptions(so), so.transport));
  if (st != adxl::SUCCESS) return ServeFail("Initialize failed: " + StatusName(st));
  std::vector<std::string> connected;
  adxl::Status first_failure = adxl::SUCCESS;
  for (const auto &t : so.targets) {
    st = engine.Connect(t.c_str(), so.connect_timeout_ms);
    if (st == adxl::SUCCESS) {
      connected.push_back(t);
    } else if (first_failure == adxl::SUCCESS) {
      first_failure = st;
    }
  }
  WriteAll(STDOUT_FILENO, Format("CONNECTED %zu %u %" PRIu64 " %" PRIu64 "\n", connected.size(), first_failure,
                                 lim.soft, lim.hard));
  std::string in;
  if (!WaitForGo(&in, 600000)) return kExitOk;
  double disconnect_ms = -1;
  adxl::Status disconnect_status = adxl::NOT_CONNECTED;
  if (!connected.empty()) {
    const int64_t t0 = NowNs();
    disconnect_status = engine.Disconnect(connected.front().c_str(), so.disconnect_timeout_ms);
    disconnect_ms = static_cast<double>(NowNs() - t0) / 1e6;
  }
  const int64_t t1 = NowNs();
  engine.Finalize();
  const double finalize_ms = static_cast<double>(NowNs() - t1) / 1e6;
  WriteAll(STDOUT_FILENO, Format("DONE %.3f %u %.3f\n", disconnect_ms, disconnect_status, finalize_ms));
  return kExitOk;
}

// Two listening engines with the same layout of `regions` 8-byte slots at a
// 16-byte stride: one registers every slot as its own region, the other the
// whole buffer as one region.
int ServePeersRegions(const ServeOptions &so) {
  RaiseNofile();
  const uint64_t n = so.regions;
  Buffer many, one;
  if (!many.Allocate(n * 16, false, true, 0) || !one.Allocate(n * 16, false, true, 0))
    return ServeFail("cannot allocate the buffers");
  FillPattern(many.data(), many.size(), so.seed);
  FillPattern(one.data(), one.size(), so.seed + 1);
  const auto options = ExtOptions(ServeEngineOptions(so), so.transport);
  adxl::AdxlEngine e_many, e_one;
  adxl::Status st = adxl::FAILED;
  const int port_many = ListenOnFreePort(e_many, options, &st);
  if (port_many < 0) return ServeFail("engine Initialize failed: " + StatusName(st));
  const int port_one = ListenOnFreePort(e_one, options, &st);
  if (port_one < 0) return ServeFail("engine Initialize failed: " + StatusName(st));
  for (uint64_t i = 0; i < n; ++i) {
    adxl::MemDesc d{};
    d.addr = many.addr() + i * 16;
    d.len = 8;
    adxl::MemHandle h = nullptr;
    st = e_many.RegisterMem(d, adxl::MEM_HOST, h);
    if (st != adxl::SUCCESS)
      return ServeFail(Format("RegisterMem of region %" PRIu64 " failed: %s", i, StatusName(st).c_str()));
  }
  adxl::MemDesc d{};
  d.addr = one.addr();
  d.len = n * 16;
  adxl::MemHandle h = nullptr;
  st = e_one.RegisterMem(d, adxl::MEM_HOST, h);
  if (st != adxl::SUCCESS) return ServeFail("RegisterMem failed: " + StatusName(st));
  WriteAll(STDOUT_FILENO, Format("READY %d %d 0x%" PRIxPTR " 0x%" PRIxPTR " %" PRIu64 "\n", port_many, port_one,
                                 many.addr(), one.addr(), n));
  WaitForQuit();
  e_many.Finalize();
  e_one.Finalize();
  return kExitOk;
}

// notify-sender: a client-only engine connected to --target; on GO it sends
// --count notifies one after the other (SendNotify waits for each one's
// acknowledgement), each stamped with the steady clock (ns) at the call's
// start, then prints DONE <p50_us> <p99_us> <sent> <failures> <first failure>
// of SendNotify's own time and waits for QUIT.
int ServeNotifySender(const ServeOptions &so) {
  adxl::AdxlEngine engine;
  adxl::Status st = engine.Initialize(kHost, ExtOptions(ServeEngineOptions(so), so.transport));
  if (st != adxl::SUCCESS) return ServeFail("engine Initialize failed: " + StatusName(st));
  st = engine.Connect(so.target.c_str(), 10000);
  if (st != adxl::SUCCESS) return ServeFail("Connect(" + so.target + ") failed: " + StatusName(st));
  WriteAll(STDOUT_FILENO, "READY\n");
  std::string buf;
  if (!WaitForGo(&buf, 120000)) {
    engine.Finalize();
    return kExitOk;
  }
  std::vector<int64_t> ns;
  ns.reserve(static_cast<size_t>(so.count));
  int failures = 0;
  std::string first_failure = "-";
  adxl::NotifyDesc notify;
  for (int k = 0; k < so.count; ++k) {
    const int64_t t0 = NowNs();
    notify.name = ("n" + std::to_string(k)).c_str();
    notify.notify_msg = std::to_string(t0).c_str();
    st = engine.SendNotify(so.target.c_str(), notify, 10000);
    ns.push_back(NowNs() - t0);
    if (st != adxl::SUCCESS && failures++ == 0) first_failure = StatusName(st);
  }
  const Stats s = Summarize(ns);
  WriteAll(STDOUT_FILENO, Format("DONE %.3f %.3f %d %d %s\n", s.p50_us, s.p99_us, so.count, failures,
                                 first_failure.c_str()));
  WaitForQuit();
  engine.Disconnect(so.target.c_str(), 2000);
  engine.Finalize();
  return kExitOk;
}

int ServeMain(int argc, char **argv) {
  ServeOptions so;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--role") {
      so.role = next();
    } else if (a == "--transport") {
      so.transport = next();
    } else if (a == "--connections") {
      so.connections = atoi(next().c_str());
    } else if (a == "--workers") {
      so.workers = atoi(next().c_str());
    } else if (a == "--ucx-workers") {
      so.ucx_workers = atoi(next().c_str());
    } else if (a == "--busy-poll-us") {
      so.busy_poll_us = atoi(next().c_str());
    } else if (a == "--no-hugepages") {
      so.hugepages = false;
    } else if (a == "--mallocmem") {
      g_malloc_mem = true;
    } else if (a == "--bytes") {
      ParseSize(next(), &so.bytes);
    } else if (a == "--cache") {
      so.caches.push_back(next());
    } else if (a == "--peer-timeout-ms") {
      so.peer_timeout_ms = atoi(next().c_str());
    } else if (a == "--count") {
      so.count = atoi(next().c_str());
    } else if (a == "--target") {
      so.target = next();
    } else if (a == "--targets") {
      so.targets = SplitOn(next(), ',');
    } else if (a == "--seed") {
      so.seed = strtoull(next().c_str(), nullptr, 10);
    } else if (a == "--regions") {
      ParseSize(next(), &so.regions);
    } else if (a == "--connect-timeout-ms") {
      so.connect_timeout_ms = atoi(next().c_str());
    } else if (a == "--disconnect-timeout-ms") {
      so.disconnect_timeout_ms = atoi(next().c_str());
    } else {
      return ServeFail("unknown serve option " + a);
    }
  }
  if (so.role == "engine") return ServeEngine(so);
  if (so.role == "kv") return ServeKv(so);
  if (so.role == "cma") return ServeCma(so);
  if (so.role == "pingpong") return ServePingPong();
  if (so.role == "peers-server") return ServePeersServer(so);
  if (so.role == "peers-clients") return ServePeersClients(so);
  if (so.role == "peers-frozen") return ServePeersFrozen(so);
  if (so.role == "peers-frozen-client") return ServePeersFrozenClient(so);
  if (so.role == "peers-regions") return ServePeersRegions(so);
  if (so.role == "notify-sender") return ServeNotifySender(so);
  return ServeFail("unknown role " + so.role);
}

// ------------------------------------------------------------------ engine client

// A connected ADXL client engine and its peer.
class EngineSession {
 public:
  bool Open(const Options &opt, const std::string &transport, uint64_t bytes, std::string *error) {
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(), {"--role", "engine", "--bytes", std::to_string(bytes)});
    std::vector<std::string> ready;
    if (!peer_.Start(args, &ready, error)) return false;
    if (ready.size() != 3) {
      *error = "malformed READY from the peer";
      return false;
    }
    remote_id_ = std::string(kHost) + ":" + ready[0];
    remote_addr_ = strtoull(ready[1].c_str(), nullptr, 16);
    remote_len_ = strtoull(ready[2].c_str(), nullptr, 10);
    if (!local_.Allocate(bytes, opt.hugepages, true, 0xA5)) {
      *error = "cannot allocate the local buffer";
      return false;
    }
    adxl::Status st = engine_.Initialize(kHost, ExtOptions(opt, transport));
    if (st != adxl::SUCCESS) {
      *error = "Initialize: " + StatusName(st);
      return false;
    }
    initialized_ = true;
    if (opt.register_local) {
      adxl::MemDesc desc{};
      desc.addr = reinterpret_cast<uintptr_t>(local_.data());
      desc.len = bytes;
      adxl::MemHandle handle = nullptr;
      st = engine_.RegisterMem(desc, adxl::MEM_HOST, handle);
      if (st != adxl::SUCCESS) {
        *error = "RegisterMem of the local buffer: " + StatusName(st);
        return false;
      }
    }
    int64_t t0 = NowNs();
    st = engine_.Connect(remote_id_.c_str(), 10000);
    connect_ms_ = static_cast<double>(NowNs() - t0) / 1e6;
    if (st != adxl::SUCCESS) {
      *error = Format("Connect(%s, llmdd.Transport=%s): %s", remote_id_.c_str(), transport.c_str(), StatusName(st).c_str());
      return false;
    }
    connected_ = true;
    return true;
  }
  void Close() {
    if (connected_) engine_.Disconnect(remote_id_.c_str(), 2000);
    connected_ = false;
    if (initialized_) engine_.Finalize();
    initialized_ = false;
    peer_.Stop();
  }
  ~EngineSession() { Close(); }
  adxl::AdxlEngine &engine() { return engine_; }
  const std::string &remote() const { return remote_id_; }
  uintptr_t remote_addr() const { return remote_addr_; }
  uint64_t remote_len() const { return remote_len_; }
  uint8_t *local() const { return local_.data(); }
  double connect_ms() const { return connect_ms_; }
  Peer &peer() { return peer_; }

 private:
  Peer peer_;
  adxl::AdxlEngine engine_;
  Buffer local_;
  std::string remote_id_;
  uintptr_t remote_addr_ = 0;
  uint64_t remote_len_ = 0;
  bool initialized_ = false, connected_ = false;
  double connect_ms_ = 0;
};

std::string EngineCall(adxl::AdxlEngine &engine, const std::string &remote, adxl::TransferOp op,
                       const std::vector<adxl::TransferOpDesc> &descs, int timeout_ms) {
  adxl::Status st = engine.TransferSync(remote.c_str(), op, descs, timeout_ms);
  return st == adxl::SUCCESS ? std::string() : "TransferSync: " + StatusName(st);
}

// The check ranges of a descriptor list into the peer's one region (byte checks).
std::vector<CheckRange> EngineCheckRanges(const EngineSession &s, const std::vector<adxl::TransferOpDesc> &descs) {
  std::vector<CheckRange> out;
  out.reserve(descs.size());
  for (const auto &d : descs)
    out.push_back({reinterpret_cast<uint8_t *>(d.local_addr), 0, d.remote_addr - s.remote_addr(), d.len});
  return out;
}

// One checked TransferSync per thread's descriptor list, one after the other
// (byte checks): "" when every byte arrived, else what was wrong.
std::string CheckedEngineCalls(EngineSession &s, adxl::TransferOp op,
                               const std::vector<std::vector<adxl::TransferOpDesc>> &descs, int timeout_ms,
                               const char *which) {
  for (const auto &list : descs) {
    const auto ranges = EngineCheckRanges(s, list);
    const uint64_t seed = NextWriteSeed();
    PrepareChecked(op == adxl::READ, ranges, seed);
    std::string e = EngineCall(s.engine(), s.remote(), op, list, timeout_ms);
    if (e.empty()) e = VerifyChecked(op == adxl::READ, s.peer(), ranges, seed, which);
    if (!e.empty()) return e;
  }
  return "";
}

int RunEngine(const Options &opt, Reporter &rep) {
  const std::vector<Point> points = SweepPoints(opt);
  uint64_t per_thread = 0;
  int max_threads = 1;
  for (const auto &p : points) {
    per_thread = std::max(per_thread, RegionBytes(p, opt.layout));
    max_threads = std::max(max_threads, p.threads);
  }
  per_thread = (per_thread + 4095) / 4096 * 4096;
  const uint64_t bytes = per_thread * static_cast<uint64_t>(max_threads);
  int rc = kExitOk;
  rep.Note(Format("# engine: ADXL TransferSync, %zu points x %zu ops, layout %s, %.2f s/point, buffers %s per side",
                  points.size(), opt.ops.size(), opt.layout.c_str(), opt.time_s, HumanBytes(bytes).c_str()));
  rep.TableHeader();
  rep.PlanPoints(opt.transports.size() * opt.ops.size() * points.size());
  for (const auto &transport : opt.transports) {
    EngineSession session;
    std::string error;
    rep.Progress("engine: starting peer (" + transport + ")");
    if (!session.Open(opt, transport, bytes, &error)) {
      rep.Emit(Record().Str("mode", "engine").Str("op", "connect").Str("transport", transport).Str("error", error),
               false);
      rep.Note("engine " + transport + ": SKIPPED: " + error);
      rc = kExitFailed;
      continue;
    }
    for (const auto &op_name : opt.ops) {
      const adxl::TransferOp op = op_name == "read" ? adxl::READ : adxl::WRITE;
      for (const auto &p : points) {
        rep.Point(Format("engine %s %s %s x %" PRIu64 " x %d thread%s", transport.c_str(), op_name.c_str(),
                         HumanBytes(p.size).c_str(), p.batch, p.threads, p.threads == 1 ? "" : "s"));
        std::vector<std::vector<adxl::TransferOpDesc>> descs(static_cast<size_t>(p.threads));
        for (int t = 0; t < p.threads; ++t) {
          const uintptr_t lbase = reinterpret_cast<uintptr_t>(session.local()) + static_cast<uint64_t>(t) * per_thread;
          const uintptr_t rbase = session.remote_addr() + static_cast<uint64_t>(t) * per_thread;
          for (uint64_t i = 0; i < p.batch; ++i) {
            auto [lo, ro] = DescOffsets(opt.layout, p.size, p.batch, i);
            descs[static_cast<size_t>(t)].push_back({lbase + lo, rbase + ro, p.size});
          }
        }
        RunResult r = CheckedRun(p.threads, opt, [&](const char *which) {
          return CheckedEngineCalls(session, op, descs, opt.timeout_ms, which);
        }, [&](int t) {
          return EngineCall(session.engine(), session.remote(), op, descs[static_cast<size_t>(t)], opt.timeout_ms);
        });
        Record rec = ThroughputRecord("engine", op_name, transport, p, p.batch, r);
        rec.Str("layout", opt.layout);
        // Over UCX the fabric is UCX_TLS's choice: the record says which, so
        // figures of one UCX_TLS pair with a reference of the same (bench/ucx_ref.cc).
        if (transport == "ucx") rec.Str("ucx_tls", getenv("UCX_TLS") != nullptr ? getenv("UCX_TLS") : "");
        rep.Emit(rec, true);
        if (!r.ok) rc = kExitFailed;
      }
    }
    session.Close();
  }
  return rc;
}

// ------------------------------------------------------------------ async
//
// One record per figure (op), per transport:
//   batch_sync    one TransferSync of N descriptors: p50/p99 per call
//   batch_async   N TransferAsync of one descriptor each, submitted back to
//                 back, then polled until every one is COMPLETED: p50/p99 per
//                 round; ratio_to_sync = its p50 / batch_sync's p50. Rounds
//                 of the two alternate, so both see the same machine.
//   submit_1desc  TransferAsync of one descriptor (the calls of the rounds above)
//   status_completed  GetTransferStatus of a request that has completed (the
//                 query that reports COMPLETED and releases it; measured after
//                 the round's requests had time to end, WAITING answers left out)

// Polls every request until it is terminal; false (with *error) if one is not COMPLETED.
bool PollAll(adxl::AdxlEngine &engine, const std::vector<adxl::TransferReq> &reqs, int timeout_ms,
             std::vector<int64_t> *completed_ns, std::string *error) {
  const int64_t give_up = NowNs() + static_cast<int64_t>(timeout_ms) * 1000000;
  for (adxl::TransferReq req : reqs) {
    for (;;) {
      adxl::TransferStatus status = adxl::TransferStatus::WAITING;
      const int64_t t0 = NowNs();
      const adxl::Status st = engine.GetTransferStatus(req, status);
      const int64_t took = NowNs() - t0;
      if (st != adxl::SUCCESS) {
        *error = "GetTransferStatus: " + StatusName(st);
        return false;
      }
      if (status == adxl::TransferStatus::COMPLETED) {
        if (completed_ns != nullptr) completed_ns->push_back(took);
        break;
      }
      if (status != adxl::TransferStatus::WAITING) {
        *error = Format("request ended with TransferStatus %d", static_cast<int>(status));
        return false;
      }
      if (NowNs() > give_up) {
        *error = "requests still WAITING past --timeout-ms";
        return false;
      }
    }
  }
  return true;
}

int RunAsync(const Options &opt, Reporter &rep) {
  const uint64_t n = opt.async_descs, size = opt.async_size;
  const uint64_t bytes = (n * size + 4095) / 4096 * 4096;
  int rc = kExitOk;
  rep.Note(Format("# async: %" PRIu64 " READs of %s in flight vs one TransferSync of the same %" PRIu64
                  " descriptors (layout reversed), %.2f s per method",
                  n, HumanBytes(size).c_str(), n, opt.time_s));
  for (const auto &transport : opt.transports) {
    EngineSession session;
    std::string error;
    rep.Progress("async: starting peer (" + transport + ")");
    if (!session.Open(opt, transport, bytes, &error)) {
      rep.Emit(Record().Str("mode", "async").Str("op", "connect").Str("transport", transport).Str("error", error),
               false);
      rep.Note("async " + transport + ": SKIPPED: " + error);
      rc = kExitFailed;
      continue;
    }
    adxl::AdxlEngine &engine = session.engine();
    const AscendString remote(session.remote().c_str());
    std::vector<adxl::TransferOpDesc> descs;
    const uintptr_t lbase = reinterpret_cast<uintptr_t>(session.local());
    for (uint64_t i = 0; i < n; ++i) {
      auto [lo, ro] = DescOffsets("reversed", size, n, i);
      descs.push_back({lbase + lo, session.remote_addr() + ro, size});
    }
    std::vector<std::vector<adxl::TransferOpDesc>> singles;
    for (const auto &d : descs) singles.push_back({d});
    const adxl::TransferArgs args;
    std::vector<adxl::TransferReq> reqs(n);
    std::vector<int64_t> sync_ns, async_ns, submit_ns, status_ns;
    auto async_round = [&](std::vector<int64_t> *completed_ns, int64_t settle_us) -> bool {
      for (uint64_t i = 0; i < n; ++i) {
        const int64_t t0 = NowNs();
        const adxl::Status st = engine.TransferAsync(remote, adxl::READ, singles[i], args, reqs[i]);
        submit_ns.push_back(NowNs() - t0);
        if (st != adxl::SUCCESS) {
          error = "TransferAsync: " + StatusName(st);
          return false;
        }
      }
      if (settle_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(settle_us));
      return PollAll(engine, reqs, opt.timeout_ms, completed_ns, &error);
    };
    // Byte checks: one TransferSync and one round of TransferAsync, each into
    // a poisoned buffer, before the warm-up and after the timed rounds.
    const auto ranges = EngineCheckRanges(session, descs);
    auto checked = [&](const char *which) -> bool {
      PrepareChecked(true, ranges, 0);
      error = EngineCall(engine, session.remote(), adxl::READ, descs, opt.timeout_ms);
      if (error.empty()) error = VerifyChecked(true, session.peer(), ranges, 0, which);
      if (!error.empty()) return false;
      PrepareChecked(true, ranges, 0);
      if (!async_round(nullptr, 0)) return false;
      error = VerifyChecked(true, session.peer(), ranges, 0, which);
      return error.empty();
    };
    bool ok = checked("first");
    // Warm-up: lanes open, pages touched, workers started.
    for (int w = 0; w < std::max(1, opt.warmup) && ok; ++w) {
      ok = EngineCall(engine, session.remote(), adxl::READ, descs, opt.timeout_ms).empty() &&
           async_round(nullptr, 0);
    }
    submit_ns.clear();
    const int64_t budget_ns = static_cast<int64_t>(opt.time_s * 2e9);
    const int64_t start = NowNs();
    uint64_t rounds = 0;
    while (ok && (rounds < static_cast<uint64_t>(opt.min_iters) || NowNs() - start < budget_ns) &&
           rounds < static_cast<uint64_t>(opt.max_iters)) {
      rep.Progress(Format("async %s: round %" PRIu64, transport.c_str(), rounds + 1));
      int64_t t0 = NowNs();
      error = EngineCall(engine, session.remote(), adxl::READ, descs, opt.timeout_ms);
      sync_ns.push_back(NowNs() - t0);
      if (!error.empty()) {
        ok = false;
        break;
      }
      t0 = NowNs();
      ok = async_round(nullptr, 0);
      async_ns.push_back(NowNs() - t0);
      ++rounds;
    }
    // The query on a completed request: rounds that had time to end first.
    const int64_t settle_us = std::max<int64_t>(2000, sync_ns.empty() ? 0 : 4 * Summarize(sync_ns).p50_us);
    for (int k = 0; ok && k < 20; ++k) ok = async_round(&status_ns, settle_us);
    const size_t timed_submits = submit_ns.size();
    if (ok) ok = checked("last");
    submit_ns.resize(std::min(timed_submits, submit_ns.size()));
    const Stats sync = Summarize(sync_ns), async = Summarize(async_ns), submit = Summarize(submit_ns),
                status = Summarize(status_ns);
    auto base = [&](const char *op) {
      Record r;
      r.Str("mode", "async").Str("op", op).Str("transport", transport).Int("desc_size", static_cast<int64_t>(size))
          .Int("descs", static_cast<int64_t>(n));
      return r;
    };
    if (!ok) {
      // No figures from a failed run (a failed call or a wrong byte).
      for (const char *op : {"batch_sync", "batch_async", "submit_1desc", "status_completed"})
        rep.Emit(base(op).Str("error", error), false);
      rep.Note("async " + transport + ": FAILED: " + error);
      rc = kExitFailed;
      session.Close();
      continue;
    }
    rep.Emit(base("batch_sync").Num("p50_us", sync.p50_us).Num("p99_us", sync.p99_us)
                 .Num("gbps", sync.p50_us > 0 ? static_cast<double>(n * size) / (sync.p50_us * 1e3) : 0)
                 .Int("iters", static_cast<int64_t>(sync_ns.size())).Str("checked", "first,last"),
             false);
    const double ratio = sync.p50_us > 0 ? async.p50_us / sync.p50_us : 0;
    rep.Emit(base("batch_async").Num("p50_us", async.p50_us).Num("p99_us", async.p99_us)
                 .Num("gbps", async.p50_us > 0 ? static_cast<double>(n * size) / (async.p50_us * 1e3) : 0)
                 .Num("ratio_to_sync", ratio).Int("iters", static_cast<int64_t>(async_ns.size()))
                 .Str("checked", "first,last"),
             false);
    rep.Emit(base("submit_1desc").Num("p50_us", submit.p50_us).Num("p99_us", submit.p99_us)
                 .Int("iters", static_cast<int64_t>(submit_ns.size())),
             false);
    rep.Emit(base("status_completed").Num("p50_us", status.p50_us).Num("p99_us", status.p99_us)
                 .Int("iters", static_cast<int64_t>(status_ns.size())),
             false);
    if (!opt.json) {
      rep.Note(Format("async %-4s %" PRIu64 " x %s: TransferSync p50 %.1f us (p99 %.1f), %" PRIu64
                      " async in flight p50 %.1f us (p99 %.1f): %.2fx; TransferAsync submit p50 %.2f us (p99 %.2f); "
                      "GetTransferStatus on a completed request p50 %.3f us (p99 %.3f); %" PRIu64 " rounds",
                      transport.c_str(), n, HumanBytes(size).c_str(), sync.p50_us, sync.p99_us, n, async.p50_us,
                      async.p99_us, ratio, submit.p50_us, submit.p99_us, status.p50_us, status.p99_us, rounds));
    }
    session.Close();
  }
  return rc;
}

// ------------------------------------------------------------------ kv client

class KvSession {
 public:
  // caches: the shapes the peer registers (and this side registers too, same order).
  bool Open(const Options &opt, const std::string &transport, const std::vector<KvShape> &shapes,
            bool prefault_local, std::string *error) {
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(), {"--role", "kv"});
    for (const auto &s : shapes)
      args.insert(args.end(), {"--cache", Format("%u:%" PRIu64 ":%" PRIu64, s.tensors, s.blocks, s.block_bytes)});
    std::vector<std::string> ready;
    if (!peer_.Start(args, &ready, error)) return false;
    if (ready.size() != shapes.size() + 1) {
      *error = "malformed READY from the peer";
      return false;
    }
    port_ = atoi(ready[0].c_str());
    for (size_t i = 0; i < shapes.size(); ++i) remote_ids_.push_back(atoll(ready[i + 1].c_str()));
    dd_ = std::make_unique<llm_datadist::LlmDataDist>(kDecodeCluster, llm_datadist::LlmRole::kDecoder);
    auto o = ExtOptions(opt, transport);
    o[llm_datadist::OPTION_DEVICE_ID] = "1";
    o[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = std::to_string(opt.timeout_ms).c_str();
    llm_datadist::Status st = dd_->Initialize(o);
    if (st != llm_datadist::LLM_SUCCESS) {
      *error = "LlmDataDist Initialize: " + StatusName(st);
      return false;
    }
    initialized_ = true;
    mem_.resize(shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (!mem_[i].Allocate(shapes[i], opt.hugepages, prefault_local, 0xA5)) {
        *error = "cannot allocate the local cache";
        return false;
      }
      llm_datadist::Cache c{};
      c.cache_desc = KvDesc(shapes[i]);
      int64_t t0 = NowNs();
      st = dd_->RegisterKvCache(c.cache_desc, mem_[i].addrs, llm_datadist::RegisterCfg{}, c.cache_id);
      register_ms_.push_back(static_cast<double>(NowNs() - t0) / 1e6);
      if (st != llm_datadist::LLM_SUCCESS) {
        *error = "RegisterKvCache: " + StatusName(st);
        return false;
      }
      c.tensor_addrs.assign(mem_[i].addrs.begin(), mem_[i].addrs.end());
      local_.push_back(c);
    }
    llm_datadist::ClusterInfo cluster{};
    cluster.remote_cluster_id = kPromptCluster;
    llm_datadist::IpInfo local{}, remote{};
    local.ip = kHost;
    remote.ip = kHost;
    remote.port = static_cast<uint16_t>(port_);
    cluster.local_ip_infos.push_back(local);
    cluster.remote_ip_infos.push_back(remote);
    std::vector<llm_datadist::Status> rets;
    st = dd_->LinkLlmClusters({cluster}, rets, 10000);
    if (st != llm_datadist::LLM_SUCCESS) {
      *error = Format("LinkLlmClusters (llmdd.Transport=%s): %s", transport.c_str(), StatusName(st).c_str());
      return false;
    }
    linked_ = true;
    cluster_ = cluster;
    return true;
  }
  void Close() {
    if (linked_) {
      std::vector<llm_datadist::Status> rets;
      dd_->UnlinkLlmClusters({cluster_}, rets, 2000);
    }
    linked_ = false;
    if (initialized_) {
      for (const auto &c : local_) dd_->UnregisterKvCache(c.cache_id);
      dd_->Finalize();
    }
    initialized_ = false;
    peer_.Stop();
  }
  ~KvSession() { Close(); }
  llm_datadist::LlmDataDist &dd() { return *dd_; }
  const llm_datadist::Cache &local(size_t i) const { return local_[i]; }
  llm_datadist::CacheIndex remote(size_t i) const { return {kPromptCluster, remote_ids_[i], 0}; }
  double register_ms(size_t i) const { return register_ms_[i]; }
  uint8_t *tensor(size_t cache, size_t t) const { return mem_[cache].tensors[t]->data(); }
  Peer &peer() { return peer_; }

 private:
  Peer peer_;
  std::unique_ptr<llm_datadist::LlmDataDist> dd_;
  std::vector<KvMemory> mem_;
  std::vector<llm_datadist::Cache> local_;
  std::vector<int64_t> remote_ids_;
  std::vector<double> register_ms_;
  llm_datadist::ClusterInfo cluster_{};
  int port_ = 0;
  bool initialized_ = false, linked_ = false;
};

// `count` source and destination blocks. Scattered: blocks drawn from the even
// indices in two independent shuffled orders, so no pair is adjacent on both
// sides and every block is its own range. Contiguous: 0..count-1 both sides.
void MakeBlockLists(uint64_t count, uint64_t blocks, const std::string &pattern, uint64_t seed,
                    std::vector<uint64_t> *src, std::vector<uint64_t> *dst) {
  src->clear();
  dst->clear();
  if (pattern == "contiguous") {
    for (uint64_t i = 0; i < count; ++i) {
      src->push_back(i);
      dst->push_back(i);
    }
    return;
  }
  std::vector<uint64_t> evens;
  for (uint64_t b = 0; b < blocks; b += 2) evens.push_back(b);
  auto shuffled = [&](uint64_t s) {
    std::vector<uint64_t> v = evens;
    uint64_t state = s;
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Mix(state++) % i]);
    v.resize(count);
    return v;
  };
  *src = shuffled(seed);
  *dst = shuffled(seed ^ 0xABCDEF);
}

std::string KvCall(KvSession &s, bool pull, size_t cache, const std::vector<uint64_t> &src,
                   const std::vector<uint64_t> &dst) {
  llm_datadist::Status st = pull ? s.dd().PullKvBlocks(s.remote(cache), s.local(cache), src, dst)
                                 : s.dd().PushKvBlocks(s.local(cache), s.remote(cache), src, dst);
  return st == llm_datadist::LLM_SUCCESS ? std::string() : Format("%s: %s", pull ? "PullKvBlocks" : "PushKvBlocks", StatusName(st).c_str());
}

// The check ranges of one call of cache 0 (byte checks): piece (tensor t,
// block i) pairs local block dst[i] with the peer's src[i] for a pull, local
// src[i] with the peer's dst[i] for a push; the peer's region t is tensor t.
std::vector<CheckRange> KvCheckRanges(const KvSession &s, const KvShape &shape, bool pull,
                                      const std::vector<uint64_t> &src, const std::vector<uint64_t> &dst) {
  std::vector<CheckRange> out;
  const uint64_t bb = shape.block_bytes;
  for (uint32_t t = 0; t < shape.tensors; ++t)
    for (size_t i = 0; i < src.size(); ++i)
      out.push_back({s.tensor(0, t) + (pull ? dst[i] : src[i]) * bb, t, (pull ? src[i] : dst[i]) * bb, bb});
  return out;
}

// The memcpy reference of a pull (op "memcpy"): the same pieces, copied in
// this process from local block src[i] to local block dst[i]+1 of the same
// tensor (odd blocks: the scattered lists only use even ones, so no piece
// overlaps another), split over `copy_threads` threads that start with the
// call and join at its end, as the engine hands one call's parts to its
// threads. Same piece size, count and scatter as the engine's call.
std::string KvMemcpyCall(const KvSession &s, const KvShape &shape, const std::vector<uint64_t> &src,
                         const std::vector<uint64_t> &dst, int copy_threads) {
  const uint64_t bb = shape.block_bytes, n = src.size();
  const uint64_t pieces = n * shape.tensors;
  auto part = [&](uint64_t from, uint64_t to) {
    for (uint64_t k = from; k < to; ++k) {
      const uint64_t t = k / n, i = k % n;
      const uint64_t to_block = dst[i] + 1 < shape.blocks ? dst[i] + 1 : dst[i] - 1;
      memcpy(s.tensor(0, t) + to_block * bb, s.tensor(0, t) + src[i] * bb, bb);
    }
  };
  std::vector<std::thread> helpers;
  const uint64_t tc = static_cast<uint64_t>(copy_threads);
  for (uint64_t h = 1; h < tc; ++h) helpers.emplace_back(part, pieces * h / tc, pieces * (h + 1) / tc);
  part(0, pieces / tc);
  for (auto &th : helpers) th.join();
  CompilerBarrier();
  return "";
}

int RunKv(const Options &opt, Reporter &rep) {
  const KvShape shape{opt.Tensors(), opt.kv_blocks, opt.BlockBytes()};
  rep.Note(Format("# kv: LLM-DataDist %d layers x (K,V) = %u tensors, %" PRIu64 " blocks x %s per tensor "
                  "(%s per side), %s block lists, %.2f s/point",
                  opt.layers, shape.tensors, shape.blocks, HumanBytes(shape.block_bytes).c_str(),
                  HumanBytes(static_cast<uint64_t>(shape.tensors) * shape.blocks * shape.block_bytes).c_str(),
                  opt.kv_pattern.c_str(), opt.time_s));
  rep.TableHeader();
  // memcpy runs once (in-process, not per transport), over --copy-threads.
  size_t planned = 0;
  for (const auto &op : opt.ops)
    planned += op == "memcpy" ? opt.copy_threads.size() * opt.kv_counts.size()
                              : opt.transports.size() * opt.threads.size() * opt.kv_counts.size();
  rep.PlanPoints(planned);
  int rc = kExitOk;
  for (const auto &transport : opt.transports) {
    KvSession session;
    std::string error;
    rep.Progress("kv: starting peer (" + transport + ")");
    if (!session.Open(opt, transport, {shape}, true, &error)) {
      rep.Emit(Record().Str("mode", "kv").Str("op", "link").Str("transport", transport).Str("error", error), false);
      rep.Note("kv " + transport + ": SKIPPED: " + error);
      rc = kExitFailed;
      continue;
    }
    for (const auto &op : opt.ops) {
      const bool copy = op == "memcpy";
      if (copy && transport != opt.transports.front()) continue;  // in-process: once, not per transport
      if (copy && opt.kv_pattern != "scattered") {
        rep.Note("kv memcpy: needs --kv-pattern scattered (it copies into the odd blocks); skipped");
        continue;
      }
      // For memcpy the thread counts are --copy-threads, threads sharing one
      // call's pieces; for pull/push they are --threads, callers with their own lists.
      for (uint64_t threads : copy ? opt.copy_threads : opt.threads) {
        for (uint64_t count : opt.kv_counts) {
          rep.Point(Format("kv %s %s %" PRIu64 " blocks x %u tensors, %" PRIu64 " thread%s", transport.c_str(),
                           op.c_str(), count, shape.tensors, threads, threads == 1 ? "" : "s"));
          const uint64_t callers = copy ? 1 : threads;
          std::vector<std::vector<uint64_t>> src(callers), dst(callers);
          for (uint64_t t = 0; t < callers; ++t)
            MakeBlockLists(count, shape.blocks, opt.kv_pattern, 0x5EED + t * 7919, &src[t], &dst[t]);
          RunResult r;
          if (copy) {
            r = TimedRun(1, opt, [&](int) { return KvMemcpyCall(session, shape, src[0], dst[0], static_cast<int>(threads)); });
          } else {
            const bool pull = op == "pull";
            r = CheckedRun(static_cast<int>(threads), opt, [&](const char *which) {
              for (uint64_t t = 0; t < callers; ++t) {
                const auto ranges = KvCheckRanges(session, shape, pull, src[t], dst[t]);
                const uint64_t seed = NextWriteSeed();
                PrepareChecked(pull, ranges, seed);
                std::string e = KvCall(session, pull, 0, src[t], dst[t]);
                if (e.empty()) e = VerifyChecked(pull, session.peer(), ranges, seed, which);
                if (!e.empty()) return e;
              }
              return std::string();
            }, [&](int t) {
              return KvCall(session, pull, 0, src[static_cast<size_t>(t)], dst[static_cast<size_t>(t)]);
            });
          }
          // A "descriptor" here is one (block, tensor) piece of block_bytes.
          Point p{shape.block_bytes, count * shape.tensors, static_cast<int>(threads)};
          Record rec = ThroughputRecord("kv", op, copy ? "local" : transport, p, count * shape.tensors, r);
          rec.Int("kv_blocks", static_cast<int64_t>(count)).Int("tensors", shape.tensors);
          rec.Int("layers", opt.layers).Str("pattern", opt.kv_pattern);
          if (copy) rec.Int("copy_threads", static_cast<int64_t>(threads));
          rep.Emit(rec, true);
          if (!r.ok) rc = kExitFailed;
        }
      }
    }
    session.Close();
  }
  return rc;
}

// ------------------------------------------------------------------ cma
//
// The same-host physical limit: process_vm_readv / process_vm_writev between
// this process and a child (`serve --role cma`, forked and exec'd like every
// peer) that holds patterned memory, with the engine mode's descriptor shapes
// and layout, one system call per call (at most kCmaMaxIov iovecs each) and
// nothing else: no message, no lease, no token, no worker hand-off. Each
// thread has its own region, as in engine mode. What the shm path adds on top
// of this is the engine's cost.

constexpr size_t kCmaMaxIov = 1024;  // UIO_MAXIOV: the kernel refuses more iovecs per call

std::string CmaCall(pid_t pid, bool read, const std::vector<iovec> &local, const std::vector<iovec> &remote) {
  for (size_t done = 0; done < local.size();) {
    const size_t k = std::min(kCmaMaxIov, local.size() - done);
    size_t want = 0;
    for (size_t i = done; i < done + k; ++i) want += local[i].iov_len;
    const ssize_t got = read ? process_vm_readv(pid, &local[done], k, &remote[done], k, 0)
                             : process_vm_writev(pid, &local[done], k, &remote[done], k, 0);
    if (got < 0) {
      const int err = errno;
      return Format("%s: %s%s", read ? "process_vm_readv" : "process_vm_writev", strerror(err),
                    err == EPERM ? " (this host does not let a process read its child's memory: "
                                   "kernel.yama.ptrace_scope or a seccomp policy)"
                                 : "");
    }
    if (static_cast<size_t>(got) != want)
      return Format("%s moved %zd of %zu bytes", read ? "process_vm_readv" : "process_vm_writev", got, want);
    done += k;
  }
  return "";
}

int RunCma(const Options &opt, Reporter &rep) {
  const std::vector<Point> points = SweepPoints(opt);
  uint64_t per_thread = 0;
  int max_threads = 1;
  for (const auto &p : points) {
    per_thread = std::max(per_thread, RegionBytes(p, opt.layout));
    max_threads = std::max(max_threads, p.threads);
  }
  per_thread = (per_thread + 4095) / 4096 * 4096;
  const uint64_t bytes = per_thread * static_cast<uint64_t>(max_threads);
  rep.Note(Format("# cma: process_vm_readv/writev with a child process, %zu points x %zu ops, layout %s, %.2f s/point, "
                  "buffers %s per side",
                  points.size(), opt.ops.size(), opt.layout.c_str(), opt.time_s, HumanBytes(bytes).c_str()));
  rep.TableHeader();
  Peer peer;
  std::vector<std::string> ready;
  std::string error;
  std::vector<std::string> args = {"--role", "cma", "--bytes", std::to_string(bytes)};
  if (!opt.hugepages) args.push_back("--no-hugepages");
  Buffer local;
  if (!peer.Start(args, &ready, &error) || ready.size() != 3 || !local.Allocate(bytes, opt.hugepages, true, 0xA5)) {
    if (error.empty()) error = "cannot start the child or allocate the local buffer";
    rep.Emit(Record().Str("mode", "cma").Str("op", "start").Str("transport", "cma").Str("error", error), false);
    rep.Note("cma: FAILED: " + error);
    return kExitFailed;
  }
  const uintptr_t remote_base = strtoull(ready[1].c_str(), nullptr, 16);
  int rc = kExitOk;
  for (const auto &op_name : opt.ops) {
    const bool read = op_name == "read";
    for (const auto &p : points) {
      std::vector<std::vector<iovec>> liov(static_cast<size_t>(p.threads)), riov(static_cast<size_t>(p.threads));
      std::vector<std::vector<CheckRange>> ranges(static_cast<size_t>(p.threads));
      for (int t = 0; t < p.threads; ++t) {
        const uint64_t base = static_cast<uint64_t>(t) * per_thread;
        for (uint64_t i = 0; i < p.batch; ++i) {
          auto [lo, ro] = DescOffsets(opt.layout, p.size, p.batch, i);
          liov[static_cast<size_t>(t)].push_back({local.data() + base + lo, p.size});
          riov[static_cast<size_t>(t)].push_back({reinterpret_cast<void *>(remote_base + base + ro), p.size});
          ranges[static_cast<size_t>(t)].push_back({local.data() + base + lo, 0, base + ro, p.size});
        }
      }
      RunResult r = CheckedRun(p.threads, opt, [&](const char *which) {
        for (int t = 0; t < p.threads; ++t) {
          const auto &rg = ranges[static_cast<size_t>(t)];
          const uint64_t seed = NextWriteSeed();
          PrepareChecked(read, rg, seed);
          std::string e = CmaCall(peer.pid(), read, liov[static_cast<size_t>(t)], riov[static_cast<size_t>(t)]);
          if (e.empty()) e = VerifyChecked(read, peer, rg, seed, which);
          if (!e.empty()) return e;
        }
        return std::string();
      }, [&](int t) {
        return CmaCall(peer.pid(), read, liov[static_cast<size_t>(t)], riov[static_cast<size_t>(t)]);
      });
      Record rec = ThroughputRecord("cma", op_name, "cma", p, p.batch, r);
      rec.Str("layout", opt.layout);
      rep.Emit(rec, true);
      if (!r.ok) rc = kExitFailed;
    }
  }
  peer.Stop();
  return rc;
}

// ------------------------------------------------------------------ memcpy

int RunMemcpy(const Options &opt, Reporter &rep) {
  const std::vector<Point> points = SweepPoints(opt);
  int max_threads = 1;
  uint64_t hot_per_thread = 0;
  for (const auto &p : points) {
    max_threads = std::max(max_threads, p.threads);
    hot_per_thread = std::max(hot_per_thread, RegionBytes(p, opt.layout));
  }
  hot_per_thread = (hot_per_thread + 4095) / 4096 * 4096;
  const bool any_cold = std::find(opt.ops.begin(), opt.ops.end(), "cold") != opt.ops.end();
  const uint64_t side = std::max(hot_per_thread * static_cast<uint64_t>(max_threads), any_cold ? opt.pool_bytes : 0);
  Buffer src, dst;
  if (!src.Allocate(side, opt.hugepages, true, 0x11) || !dst.Allocate(side, opt.hugepages, true, 0x22)) {
    rep.Note("memcpy: cannot allocate " + HumanBytes(side) + " per side");
    return kExitFailed;
  }
  rep.Note(Format("# memcpy: %zu points x %zu ops, layout %s, %.2f s/point, %s per side (cold copies walk it)",
                  points.size(), opt.ops.size(), opt.layout.c_str(), opt.time_s, HumanBytes(side).c_str()));
  rep.TableHeader();
  rep.PlanPoints(opt.ops.size() * points.size());
  for (const auto &op : opt.ops) {
    const bool cold = op == "cold";
    for (const auto &p : points) {
      rep.Point(Format("memcpy %s %s x %" PRIu64 " x %d thread%s", op.c_str(), HumanBytes(p.size).c_str(), p.batch,
                       p.threads, p.threads == 1 ? "" : "s"));
      const uint64_t region = RegionBytes(p, opt.layout);
      // Cold: each thread walks its share of the pool; a call uses the next
      // region, page-aligned, so no line or page of the last call is reused.
      const uint64_t share = side / static_cast<uint64_t>(p.threads) / 4096 * 4096;
      const uint64_t step = (region + 4095) / 4096 * 4096;
      if (cold && step > share) {
        rep.Note(Format("memcpy cold %s x %" PRIu64 " x %d: pool too small, skipped", HumanBytes(p.size).c_str(),
                        p.batch, p.threads));
        continue;
      }
      std::vector<uint64_t> cursor(static_cast<size_t>(p.threads), 0);
      std::vector<std::pair<uint64_t, uint64_t>> offs;
      for (uint64_t i = 0; i < p.batch; ++i) offs.push_back(DescOffsets(opt.layout, p.size, p.batch, i));
      RunResult r = TimedRun(p.threads, opt, [&](int t) {
        uint64_t base;
        if (cold) {
          uint64_t &c = cursor[static_cast<size_t>(t)];
          if (c + step > share) c = 0;
          base = static_cast<uint64_t>(t) * share + c;
          c += step;
        } else {
          base = static_cast<uint64_t>(t) * hot_per_thread;
        }
        uint8_t *d = dst.data() + base;
        const uint8_t *s = src.data() + base;
        for (const auto &[lo, ro] : offs) memcpy(d + lo, s + ro, p.size);
        CompilerBarrier();
        return std::string();
      });
      Record rec = ThroughputRecord("memcpy", op, "local", p, p.batch, r);
      rec.Str("layout", opt.layout);
      rep.Emit(rec, true);
    }
  }
  return kExitOk;
}

// ------------------------------------------------------------------ pingpong

// One ping-pong measurement against the `pingpong` peer at `port`: 8 B
// messages, blocking or busy-polling recv on both sides, at least 1 s.
RunResult PingPongRun(const Options &opt, int port, bool busy) {
  RunResult failed;
  failed.ok = false;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, kHost, &addr.sin_addr);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
    failed.error = std::string("connect: ") + strerror(errno);
    if (fd >= 0) close(fd);
    return failed;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  char m = busy ? 's' : 'b';
  send(fd, &m, 1, MSG_NOSIGNAL);
  char msg[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  auto once = [&]() -> bool {
    if (send(fd, msg, sizeof(msg), MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof(msg))) return false;
    size_t got = 0;
    while (got < sizeof(msg)) {
      ssize_t n = recv(fd, msg + got, sizeof(msg) - got, busy ? MSG_DONTWAIT : 0);
      if (n > 0) {
        got += static_cast<size_t>(n);
      } else if (n == 0) {
        return false;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return false;
      }
    }
    return true;
  };
  Options o = opt;
  o.time_s = std::max(opt.time_s, 1.0);
  o.warmup = 1000;
  o.min_iters = 1000;
  RunResult r = TimedRun(1, o, [&](int) { return once() ? std::string() : std::string("ping-pong I/O failed"); });
  close(fd);
  return r;
}

int RunPingPong(const Options &opt, Reporter &rep) {
  Peer peer;
  std::vector<std::string> ready;
  std::string error;
  if (!peer.Start({"--role", "pingpong"}, &ready, &error) || ready.empty()) {
    rep.Note("pingpong: " + error);
    return kExitFailed;
  }
  const int port = atoi(ready[0].c_str());
  rep.Note(Format("# pingpong: 8 B messages over TCP loopback to a peer process, %.2f s per mode "
                  "(full round trip = send + echo; half = RTT/2)",
                  std::max(opt.time_s, 1.0)));
  int rc = kExitOk;
  for (const auto &mode : opt.pp_modes) {
    const bool busy = mode == "busy";
    rep.Progress("pingpong " + mode);
    RunResult r = PingPongRun(opt, port, busy);
    Stats s = Summarize(r.ns);
    Record rec;
    rec.Str("mode", "pingpong").Str("op", mode).Str("transport", "tcp");
    rec.Int("desc_size", 8).Int("batch", 1).Int("threads", 1).Int("bytes", 8).Int("iters", r.calls);
    rec.Num("seconds", r.seconds);
    rec.Num("rtt_p50_us", s.p50_us).Num("rtt_p99_us", s.p99_us).Num("rtt_mean_us", s.mean_us);
    rec.Num("half_p50_us", s.p50_us / 2).Num("half_p99_us", s.p99_us / 2);
    rec.Num("p50_us", s.p50_us).Num("p99_us", s.p99_us);
    rec.Num("round_trips_per_s", static_cast<double>(r.calls) / std::max(r.seconds, 1e-12));
    if (!r.ok) {
      rec.Str("error", r.error);
      rc = kExitFailed;
    }
    rep.Emit(rec, false);
    if (!opt.json)
      rep.Note(Format("pingpong %-8s  round trip p50 %7.2f us  p99 %7.2f us   half round trip p50 %7.2f us  p99 "
                      "%7.2f us   (%" PRId64 " round trips)%s",
                      mode.c_str(), s.p50_us, s.p99_us, s.p50_us / 2, s.p99_us / 2, r.calls,
                      r.ok ? "" : ("  FAILED: " + r.error).c_str()));
  }
  peer.Stop();
  return rc;
}

// ------------------------------------------------------------------ overhead

Record Metric(const std::string &op, const std::string &transport, double value, const std::string &unit) {
  Record r;
  r.Str("mode", "overhead").Str("op", op).Str("transport", transport).Num("value", value).Str("unit", unit);
  return r;
}

int OverheadRegister(const Options &opt, Reporter &rep) {
  int rc = kExitOk;
  rep.Note("# registration cost (client-only engine, untouched memory; median of repetitions)");
  {
    adxl::AdxlEngine engine;
    if (engine.Initialize(kHost, {}) != adxl::SUCCESS) {
      rep.Note("register: Initialize failed");
      return kExitFailed;
    }
    Buffer big;
    if (!big.Allocate(opt.reg_big_bytes, false, false, 0)) {
      rep.Note("register: cannot map " + HumanBytes(opt.reg_big_bytes));
      return kExitFailed;
    }
    bool ok = true;
    int64_t reg = 0, dereg = 0;
    std::vector<int64_t> regs, deregs;
    for (int i = 0; i < 21; ++i) {
      adxl::MemDesc d{};
      d.addr = big.addr();
      d.len = opt.reg_big_bytes;
      adxl::MemHandle h = nullptr;
      int64_t t0 = NowNs();
      ok = ok && engine.RegisterMem(d, adxl::MEM_DEVICE, h) == adxl::SUCCESS;
      int64_t t1 = NowNs();
      ok = ok && engine.DeregisterMem(h) == adxl::SUCCESS;
      int64_t t2 = NowNs();
      regs.push_back(t1 - t0);
      deregs.push_back(t2 - t1);
    }
    std::sort(regs.begin(), regs.end());
    std::sort(deregs.begin(), deregs.end());
    reg = regs[regs.size() / 2];
    dereg = deregs[deregs.size() / 2];
    rep.Emit(Metric("register_1region", "local", static_cast<double>(reg) / 1e3, "us")
                 .Int("region_bytes", static_cast<int64_t>(opt.reg_big_bytes))
                 .Num("deregister_us", static_cast<double>(dereg) / 1e3)
                 .Str("error", ok ? "" : "RegisterMem failed"),
             false);
    if (!opt.json)
      rep.Note(Format("RegisterMem of %s in one region: %.2f us (DeregisterMem %.2f us)",
                      HumanBytes(opt.reg_big_bytes).c_str(), static_cast<double>(reg) / 1e3,
                      static_cast<double>(dereg) / 1e3));
    if (!ok) rc = kExitFailed;

    Buffer many;
    const uint64_t n = opt.reg_regions, rb = opt.reg_region_bytes;
    if (!many.Allocate(n * rb, false, false, 0)) {
      rep.Note("register: cannot map the small regions");
      return kExitFailed;
    }
    std::vector<adxl::MemHandle> handles(n);
    std::vector<int64_t> tr, td;
    for (int rep_i = 0; rep_i < 5; ++rep_i) {
      int64_t t0 = NowNs();
      for (uint64_t i = 0; i < n; ++i) {
        adxl::MemDesc d{};
        d.addr = many.addr() + i * rb;
        d.len = rb;
        ok = ok && engine.RegisterMem(d, adxl::MEM_HOST, handles[i]) == adxl::SUCCESS;
      }
      int64_t t1 = NowNs();
      for (uint64_t i = 0; i < n; ++i) ok = ok && engine.DeregisterMem(handles[i]) == adxl::SUCCESS;
      int64_t t2 = NowNs();
      tr.push_back(t1 - t0);
      td.push_back(t2 - t1);
    }
    std::sort(tr.begin(), tr.end());
    std::sort(td.begin(), td.end());
    const double total_ms = static_cast<double>(tr[tr.size() / 2]) / 1e6;
    const double dtotal_ms = static_cast<double>(td[td.size() / 2]) / 1e6;
    rep.Emit(Metric("register_many", "local", total_ms, "ms")
                 .Int("regions", static_cast<int64_t>(n))
                 .Int("region_bytes", static_cast<int64_t>(rb))
                 .Num("per_region_us", total_ms * 1e3 / static_cast<double>(n))
                 .Num("deregister_ms", dtotal_ms)
                 .Str("error", ok ? "" : "RegisterMem failed"),
             false);
    if (!opt.json)
      rep.Note(Format("RegisterMem of %" PRIu64 " regions of %s: %.2f ms (%.2f us each); DeregisterMem of all: %.2f ms",
                      n, HumanBytes(rb).c_str(), total_ms, total_ms * 1e3 / static_cast<double>(n), dtotal_ms));
    engine.Finalize();
  }
  {
    llm_datadist::LlmDataDist dd(kDecodeCluster, llm_datadist::LlmRole::kDecoder);
    std::map<AscendString, AscendString> o;
    o[llm_datadist::OPTION_DEVICE_ID] = "0";
    if (dd.Initialize(o) != llm_datadist::LLM_SUCCESS) {
      rep.Note("register: LlmDataDist Initialize failed");
      return kExitFailed;
    }
    const KvShape shape{opt.Tensors(), opt.kv_blocks, opt.BlockBytes()};
    KvMemory mem;
    if (!mem.Allocate(shape, false, false, 0)) {
      rep.Note("register: cannot map the KV cache");
      return kExitFailed;
    }
    bool ok = true;
    std::vector<int64_t> tr, tu;
    for (int i = 0; i < 21; ++i) {
      int64_t id = -1;
      int64_t t0 = NowNs();
      ok = ok && dd.RegisterKvCache(KvDesc(shape), mem.addrs, llm_datadist::RegisterCfg{}, id) ==
                     llm_datadist::LLM_SUCCESS;
      int64_t t1 = NowNs();
      ok = ok && dd.UnregisterKvCache(id) == llm_datadist::LLM_SUCCESS;
      int64_t t2 = NowNs();
      tr.push_back(t1 - t0);
      tu.push_back(t2 - t1);
    }
    std::sort(tr.begin(), tr.end());
    std::sort(tu.begin(), tu.end());
    const double us = static_cast<double>(tr[tr.size() / 2]) / 1e3;
    const double uus = static_cast<double>(tu[tu.size() / 2]) / 1e3;
    rep.Emit(Metric("register_kv_cache", "local", us, "us")
                 .Int("tensors", shape.tensors)
                 .Int("blocks", static_cast<int64_t>(shape.blocks))
                 .Int("block_bytes", static_cast<int64_t>(shape.block_bytes))
                 .Num("unregister_us", uus)
                 .Str("error", ok ? "" : "RegisterKvCache failed"),
             false);
    if (!opt.json)
      rep.Note(Format("RegisterKvCache of %u tensors x %" PRIu64 " blocks x %s (%s): %.2f us; UnregisterKvCache %.2f us",
                      shape.tensors, shape.blocks, HumanBytes(shape.block_bytes).c_str(),
                      HumanBytes(static_cast<uint64_t>(shape.tensors) * shape.blocks * shape.block_bytes).c_str(), us,
                      uus));
    if (!ok) rc = kExitFailed;
    dd.Finalize();
  }
  return rc;
}

// Per-descriptor submit cost: TransferSync of N 8-byte descriptors (never
// adjacent, so never merged) against one descriptor; and the raw transfer of
// plan_blocks 1-byte descriptors (the reference for the planning estimate).
int OverheadSubmit(const Options &opt, const std::string &transport, Reporter &rep,
                   std::map<std::string, double> *raw_ms) {
  const uint64_t n = opt.submit_descs;
  const uint64_t m = opt.plan_blocks;
  const uint64_t bytes = std::max(n * 16, m * 2) + 4096;
  EngineSession s;
  std::string error;
  if (!s.Open(opt, transport, bytes, &error)) {
    rep.Emit(Metric("submit_per_desc", transport, NAN, "ns").Str("error", error), false);
    rep.Note("submit " + transport + ": SKIPPED: " + error);
    return kExitFailed;
  }
  auto measure = [&](adxl::TransferOp op, uint64_t count, uint64_t size, uint64_t stride, int reps,
                     double *p50_us, double *p99_us) -> bool {
    std::vector<adxl::TransferOpDesc> d;
    for (uint64_t i = 0; i < count; ++i)
      d.push_back({reinterpret_cast<uintptr_t>(s.local()) + i * stride, s.remote_addr() + i * stride, size});
    Options o = opt;
    o.min_iters = reps;
    o.warmup = 2;
    RunResult r = TimedRun(1, o, [&](int) { return EngineCall(s.engine(), s.remote(), op, d, opt.timeout_ms); });
    Stats st = Summarize(r.ns);
    *p50_us = st.p50_us;
    *p99_us = st.p99_us;
    if (!r.ok) rep.Note("submit: " + r.error);
    return r.ok;
  };
  int rc = kExitOk;
  for (auto op : {adxl::READ, adxl::WRITE}) {
    const char *name = op == adxl::READ ? "read" : "write";
    double one50 = 0, one99 = 0, many50 = 0, many99 = 0;
    bool ok = measure(op, 1, 8, 16, 20, &one50, &one99) && measure(op, n, 8, 16, 10, &many50, &many99);
    const double per = many50 * 1e3 / static_cast<double>(n);
    const double marginal = (many50 - one50) * 1e3 / static_cast<double>(n - (n > 1 ? 1 : 0));
    Record r = Metric(std::string("submit_per_desc_") + name, transport, per, "ns");
    r.Int("descs", static_cast<int64_t>(n)).Int("desc_size", 8);
    r.Num("call_p50_us", many50).Num("call_p99_us", many99).Num("one_desc_p50_us", one50);
    r.Num("marginal_ns", marginal);
    if (!ok) {
      r.Str("error", "TransferSync failed");
      rc = kExitFailed;
    }
    rep.Emit(r, false);
    if (!opt.json)
      rep.Note(Format("TransferSync %-5s %-4s of %" PRIu64 " x 8 B descriptors: p50 %.1f us = %.1f ns/descriptor "
                      "(1 descriptor: %.1f us; marginal %.1f ns/descriptor)",
                      name, transport.c_str(), n, many50, per, one50, marginal));
  }
  // Raw transfer of plan_blocks scattered 1-byte ranges (what PullKvBlocks of
  // that many 1-byte blocks sends once planned).
  double raw50 = 0, raw99 = 0;
  if (measure(adxl::READ, m, 1, 2, 5, &raw50, &raw99)) {
    (*raw_ms)[transport] = raw50 / 1e3;
    rep.Emit(Metric("raw_read_1B_descs", transport, raw50 / 1e3, "ms").Int("descs", static_cast<int64_t>(m)), false);
    if (!opt.json)
      rep.Note(Format("TransferSync read  %-4s of %" PRIu64 " x 1 B descriptors (no planning): p50 %.2f ms",
                      transport.c_str(), m, raw50 / 1e3));
  }
  s.Close();
  return rc;
}

// Planning cost of PullKvBlocks with plan_blocks blocks of the smallest legal
// size (1 tensor of [plan_blocks, 1] int8: 1-byte blocks). Planning happens
// inside the call, so it is isolated by differences:
//  - contiguous: src = dst = 0..N-1 plans into ONE 100 KB range, so
//    t(contiguous N) - t(1 block) = validating + merging N block indices;
//  - scattered: every block is its own range, so t(scattered N) - t(raw
//    TransferSync of the same N 1-byte ranges) = planning + range expansion.
int OverheadPlan(const Options &opt, const std::string &transport, Reporter &rep,
                 const std::map<std::string, double> &raw_ms) {
  const uint64_t n = opt.plan_blocks;
  const KvShape shape{1, 2 * n, 1};
  KvSession s;
  std::string error;
  if (!s.Open(opt, transport, {shape}, true, &error)) {
    rep.Emit(Metric("plan", transport, NAN, "ms").Str("error", error), false);
    rep.Note("plan " + transport + ": SKIPPED: " + error);
    return kExitFailed;
  }
  auto timed = [&](const std::vector<uint64_t> &src, const std::vector<uint64_t> &dst, int reps, double *p50_ms) {
    Options o = opt;
    o.min_iters = reps;
    o.warmup = 2;
    RunResult r = TimedRun(1, o, [&](int) { return KvCall(s, true, 0, src, dst); });
    *p50_ms = Summarize(r.ns).p50_us / 1e3;
    if (!r.ok) rep.Note("plan: " + r.error);
    return r.ok;
  };
  std::vector<uint64_t> one_s = {0}, one_d = {0}, cs, cd, ss, sd;
  MakeBlockLists(n, shape.blocks, "contiguous", 0, &cs, &cd);
  MakeBlockLists(n, shape.blocks, "scattered", 0x77, &ss, &sd);
  double t_one = 0, t_contig = 0, t_scat = 0;
  bool ok = timed(one_s, one_d, 20, &t_one) && timed(cs, cd, 20, &t_contig) && timed(ss, sd, 5, &t_scat);
  const double plan_contig = t_contig - t_one;
  auto raw = raw_ms.find(transport);
  const double plan_scat = raw == raw_ms.end() ? NAN : t_scat - raw->second;
  Record r = Metric("plan_100k", transport, plan_contig, "ms");
  r.Int("blocks", static_cast<int64_t>(n)).Int("block_bytes", 1);
  r.Num("pull_1_block_ms", t_one).Num("pull_contiguous_ms", t_contig).Num("pull_scattered_ms", t_scat);
  r.Num("raw_scattered_ms", raw == raw_ms.end() ? NAN : raw->second).Num("plan_scattered_ms", plan_scat);
  if (!ok) r.Str("error", "PullKvBlocks failed");
  rep.Emit(r, false);
  if (!opt.json) {
    rep.Note(Format("PullKvBlocks %-4s of 1 block: %.3f ms; %" PRIu64 " contiguous 1 B blocks (1 range): %.3f ms -> "
                    "planning %" PRIu64 " blocks ~ %.3f ms",
                    transport.c_str(), t_one, n, t_contig, n, plan_contig));
    rep.Note(Format("PullKvBlocks %-4s of %" PRIu64 " scattered 1 B blocks (%" PRIu64 " ranges): %.3f ms per call "
                    "(planning + transfer); minus raw TransferSync of the same ranges: %.3f ms",
                    transport.c_str(), n, n, t_scat, plan_scat));
  }
  s.Close();
  return ok ? kExitOk : kExitFailed;
}

int RunOverhead(const Options &opt, Reporter &rep) {
  int rc = kExitOk;
  auto has = [&](const char *s) { return std::find(opt.sections.begin(), opt.sections.end(), s) != opt.sections.end(); };
  if (has("register")) rc = std::max(rc, OverheadRegister(opt, rep));
  std::map<std::string, double> raw_ms;
  for (const auto &transport : opt.transports) {
    if (has("submit") || has("plan")) {
      rep.Note("# per-descriptor submit cost and planning cost, llmdd.Transport=" + transport);
      rep.Progress("overhead: submit (" + transport + ")");
      rc = std::max(rc, OverheadSubmit(opt, transport, rep, &raw_ms));
    }
    if (has("plan")) {
      rep.Progress("overhead: plan (" + transport + ")");
      rc = std::max(rc, OverheadPlan(opt, transport, rep, raw_ms));
    }
  }
  return rc;
}

// ------------------------------------------------------------------ peers
//
// Cost of many peers, each figure one JSON record (op):
//   server_threads, server_fds, server_rss   one server engine, at 0 and at N idle client engines
//   client_threads                           threads per idle client engine (several per process)
//   connect                                  Connect of a fresh client at 0 and at N peers
//   read_4k                                  4 KiB READ p50/p99 from an active client, 0 vs N peers
//   finalize_frozen                          a client's Finalize with F peers frozen (SIGSTOP)
//   regions                                  READ of R descriptors, each its own region vs one region
// Every child is killed by pid at the end, and past --deadline-s.

// Every child process of the peers mode, so that a deadline can kill them all.
std::mutex g_children_mutex;
std::set<pid_t> g_children;

void KillAllChildren() {
  std::lock_guard lock(g_children_mutex);
  for (pid_t p : g_children) {
    kill(p, SIGKILL);
    kill(p, SIGCONT);
  }
  for (pid_t p : g_children) waitpid(p, nullptr, 0);
  g_children.clear();
}

// A `llmdd_bench serve --role ...` child: lines from its stdout, commands to
// its stdin; Stop() reaps it (SIGKILL after a grace period).
class Child {
 public:
  Child() = default;
  Child(const Child &) = delete;
  Child &operator=(const Child &) = delete;
  ~Child() { Stop(0); }

  bool Start(const std::vector<std::string> &args, std::string *error) {
    std::vector<std::string> all = {"llmdd_bench", "serve"};
    all.insert(all.end(), args.begin(), args.end());
    std::lock_guard lock(g_children_mutex);  // the watchdog sees every pid
    if (!llmdd_tools::SpawnSelf(all, &pid_, &to_, &from_, error)) return false;
    g_children.insert(pid_);
    fcntl(from_, F_SETFL, fcntl(from_, F_GETFL) | O_NONBLOCK);
    return true;
  }
  pid_t pid() const { return pid_; }
  int fd() const { return from_; }
  bool eof() const { return eof_; }
  const std::string &exit_text() const { return exit_text_; }
  bool Send(const std::string &line) { return to_ >= 0 && WriteAll(to_, line + "\n"); }
  // Reads what its stdout has now (call when poll says so); false at end of file.
  bool Pump() {
    char chunk[4096];
    for (;;) {
      ssize_t n = read(from_, chunk, sizeof(chunk));
      if (n > 0) {
        buf_.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      eof_ = true;
      return false;
    }
  }
  bool TakeLine(std::string *line) {
    size_t nl = buf_.find('\n');
    if (nl == std::string::npos) return false;
    *line = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return true;
  }
  // One line within timeout_ms; false at end of file or timeout.
  bool WaitLine(std::string *line, int timeout_ms) {
    const int64_t deadline = NowNs() + int64_t{timeout_ms} * 1000000;
    for (;;) {
      if (TakeLine(line)) return true;
      if (eof_ || from_ < 0) return false;
      const int64_t left_ms = (deadline - NowNs()) / 1000000;
      if (left_ms <= 0) return false;
      pollfd p{from_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000))) > 0) Pump();
    }
  }
  // False once it exited (then reaped, exit_text() says how).
  bool Alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      Reaped(status);
      return false;
    }
    return true;
  }
  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  // Asks it to finish (SIGCONT, QUIT, end of file on stdin).
  void RequestQuit() {
    if (pid_ > 0) kill(pid_, SIGCONT);
    if (to_ >= 0) {
      Send("QUIT");
      close(to_);
      to_ = -1;
    }
  }
  // RequestQuit, up to grace_ms for it to exit, then SIGKILL; reaps it.
  void Stop(int grace_ms) {
    RequestQuit();
    const int64_t deadline = NowNs() + int64_t{grace_ms} * 1000000;
    while (Alive() && NowNs() < deadline) usleep(5000);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      int status = 0;
      if (waitpid(pid_, &status, 0) == pid_) Reaped(status);
      if (exit_text_.empty()) exit_text_ = "killed";
      Forget();
    }
    if (from_ >= 0) close(from_);
    from_ = -1;
  }

 private:
  void Reaped(int status) {
    if (WIFEXITED(status)) exit_text_ = Format("exit %d", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) exit_text_ = Format("signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    Forget();
  }
  void Forget() {
    std::lock_guard lock(g_children_mutex);
    g_children.erase(pid_);
    pid_ = -1;
  }
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  bool eof_ = false;
  std::string buf_;
  std::string exit_text_;
};

// Stops many children at once: all are asked to quit, then share one grace period.
void StopAll(const std::vector<Child *> &children, int grace_ms) {
  for (Child *c : children) c->RequestQuit();
  const int64_t deadline = NowNs() + int64_t{grace_ms} * 1000000;
  for (;;) {
    bool any = false;
    for (Child *c : children) any = c->Alive() || any;
    if (!any || NowNs() >= deadline) break;
    usleep(10000);
  }
  for (Child *c : children) c->Stop(0);
}

// Past the deadline: a note, every child killed, exit 3.
class Watchdog {
 public:
  explicit Watchdog(int seconds) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock lock(mutex_);
      if (cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) return;
      fprintf(stderr, "llmdd_bench peers: --deadline-s %d passed; killing every child and exiting\n", seconds);
      printf("{\"mode\": \"peers\", \"op\": \"deadline\", \"error\": \"the mode ran past --deadline-s %d\"}\n",
             seconds);
      fflush(stdout);
      KillAllChildren();
      _exit(3);
    });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Threads of the whole system now (/proc/loadavg) and the most it may have.
int64_t SystemThreads() {
  FILE *f = fopen("/proc/loadavg", "r");
  if (f == nullptr) return -1;
  double a, b, c;
  long running = 0, total = -1;
  if (fscanf(f, "%lf %lf %lf %ld/%ld", &a, &b, &c, &running, &total) != 5) total = -1;
  fclose(f);
  return total;
}

int64_t ReadSysctl(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == nullptr) return -1;
  long long v = -1;
  if (fscanf(f, "%lld", &v) != 1) v = -1;
  fclose(f);
  return v;
}

int64_t SystemThreadCeiling() {
  int64_t pid_max = ReadSysctl("/proc/sys/kernel/pid_max");
  int64_t threads_max = ReadSysctl("/proc/sys/kernel/threads-max");
  if (pid_max < 0) return threads_max;
  if (threads_max < 0) return pid_max;
  return std::min(pid_max, threads_max);
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

std::string JoinNums(const std::vector<double> &v) {
  std::string out;
  for (double x : v) out += (out.empty() ? "" : ",") + Format("%.3f", x);
  return out;
}

Record PeersRecord(const std::string &op, const std::string &transport, double value, const std::string &unit,
                   const NofileLimit &lim) {
  Record r;
  r.Str("mode", "peers").Str("op", op).Str("transport", transport).Num("value", value).Str("unit", unit);
  r.Int("nofile_soft", static_cast<int64_t>(lim.soft)).Int("nofile_hard", static_cast<int64_t>(lim.hard));
  return r;
}

// Connect of a fresh client-only engine, `samples` times (each then
// disconnected and finalized): the times in ms, and the first failure.
struct ConnectTimes {
  std::vector<double> ms;
  adxl::Status failure = adxl::SUCCESS;
  std::string where;
};

ConnectTimes TimeConnects(const Options &opt, const std::string &transport, const std::string &target) {
  ConnectTimes out;
  for (int i = 0; i < opt.connect_samples; ++i) {
    adxl::AdxlEngine e;
    adxl::Status st = e.Initialize(kHost, ExtOptions(opt, transport));
    if (st != adxl::SUCCESS) {
      out.failure = st;
      out.where = "Initialize";
      break;
    }
    const int64_t t0 = NowNs();
    st = e.Connect(target.c_str(), opt.connect_timeout_ms);
    const double ms = static_cast<double>(NowNs() - t0) / 1e6;
    if (st != adxl::SUCCESS) {
      out.failure = st;
      out.where = Format("Connect (after %.1f ms)", ms);
      e.Finalize();
      break;
    }
    out.ms.push_back(ms);
    e.Disconnect(target.c_str(), 2000);
    e.Finalize();
  }
  return out;
}

// 4 KiB READs from one client engine: the first and the last READ are checked
// against the server's pattern (the local buffer zeroed before each).
struct ReadFigure {
  bool ok = false;
  std::string error;
  Stats stats;
  int64_t iters = 0;
};

ReadFigure MeasureRead(const Options &opt, const std::string &transport, const std::string &target,
                       uintptr_t remote_addr, uint64_t remote_len, uint64_t seed) {
  ReadFigure out;
  constexpr uint64_t kSize = 4 * kKiB;
  const uint64_t offset = std::min<uint64_t>(3 * kSize, remote_len - kSize);
  adxl::AdxlEngine e;
  adxl::Status st = e.Initialize(kHost, ExtOptions(opt, transport));
  if (st != adxl::SUCCESS) {
    out.error = "Initialize: " + StatusName(st);
    return out;
  }
  st = e.Connect(target.c_str(), opt.connect_timeout_ms);
  if (st != adxl::SUCCESS) {
    out.error = "Connect: " + StatusName(st);
    e.Finalize();
    return out;
  }
  Buffer local;
  local.Allocate(kSize, false, true, 0);
  const std::vector<adxl::TransferOpDesc> descs = {{local.addr(), remote_addr + offset, kSize}};
  auto checked = [&](const char *which) -> std::string {
    memset(local.data(), 0, kSize);
    adxl::Status s = e.TransferSync(target.c_str(), adxl::READ, descs, opt.timeout_ms);
    if (s != adxl::SUCCESS) return Format("%s READ: %s", which, StatusName(s).c_str());
    uint64_t bad = PatternMismatches(local.data(), kSize, seed, offset);
    if (bad != 0) return Format("%s READ: %" PRIu64 " of %" PRIu64 " bytes differ from the server's", which, bad, kSize);
    return "";
  };
  out.error = checked("first");
  if (out.error.empty()) {
    Options o = opt;
    o.warmup = 20;
    o.min_iters = 100;
    RunResult r = TimedRun(1, o, [&](int) { return EngineCall(e, target, adxl::READ, descs, opt.timeout_ms); });
    out.stats = Summarize(r.ns);
    out.iters = r.calls;
    out.error = r.ok ? checked("last") : r.error;
  }
  out.ok = out.error.empty();
  e.Disconnect(target.c_str(), 2000);
  e.Finalize();
  return out;
}

// The idle client processes and what they reported.
struct ClientProc {
  std::unique_ptr<Child> child;
  int engines = 0;
  enum State { kSpawned, kReady, kConnecting, kDone, kLost } state = kSpawned;
  int64_t threads_before = -1, fds_before = -1, rss_before = -1;
  uint64_t nofile_soft = 0, nofile_hard = 0;
  int connected = 0;
  adxl::Status failure = adxl::SUCCESS;
  std::string where;
  int64_t threads_after = -1, fds_after = -1, rss_after = -1;
  double ms = 0;
};

struct IdleResult {
  int connected = 0;
  int processes = 0, processes_used = 0;
  std::string stop_reason;  // why fewer than asked are connected
  double ramp_s = 0;
};

// Connects opt.peers idle engines to `target` from client processes, at most
// opt.parallel processes connecting at once; stops at the first failure, when
// the server exits, when the system's thread headroom runs low or at the ramp
// deadline.
IdleResult ConnectIdlePeers(const Options &opt, const std::string &transport, const std::string &target,
                            Child &server, std::vector<ClientProc> *procs, Reporter &rep) {
  IdleResult out;
  const int n = opt.peers;
  for (int left = n; left > 0; left -= opt.per_process) {
    ClientProc p;
    p.engines = std::min(left, opt.per_process);
    p.child = std::make_unique<Child>();
    procs->push_back(std::move(p));
  }
  out.processes = static_cast<int>(procs->size());
  const int64_t t_start = NowNs();
  for (auto &p : *procs) {
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(), {"--role", "peers-clients", "--count", std::to_string(p.engines), "--target", target,
                             "--connect-timeout-ms", std::to_string(opt.connect_timeout_ms)});
    std::string error, line;
    if (!p.child->Start(args, &error) || !p.child->WaitLine(&line, 30000)) {
      p.state = ClientProc::kLost;
      if (out.stop_reason.empty()) out.stop_reason = "a client process did not start: " + error;
      break;
    }
    auto w = Words(line);
    if (w.size() != 6 || w[0] != "READY") {
      p.state = ClientProc::kLost;
      if (out.stop_reason.empty()) out.stop_reason = "client process: " + line;
      break;
    }
    p.threads_before = atoll(w[1].c_str());
    p.fds_before = atoll(w[2].c_str());
    p.rss_before = atoll(w[3].c_str());
    p.nofile_soft = strtoull(w[4].c_str(), nullptr, 10);
    p.nofile_hard = strtoull(w[5].c_str(), nullptr, 10);
    p.state = ClientProc::kReady;
  }
  const int64_t deadline = t_start + int64_t{opt.ramp_deadline_s} * 1000000000;
  const int64_t ceiling = SystemThreadCeiling();
  size_t next = 0;
  int active = 0;
  for (;;) {
    while (out.stop_reason.empty() && active < opt.parallel && next < procs->size()) {
      ClientProc &p = (*procs)[next];
      if (p.state != ClientProc::kReady) {
        ++next;
        continue;
      }
      // Leave the machine's other users room: about 9 client and 5 server
      // threads per peer today, so ask for 16 a peer and keep 4096 spare.
      const int64_t sys = SystemThreads();
      if (ceiling > 0 && sys > 0 && sys + 16 * p.engines + 4096 > ceiling) {
        out.stop_reason = Format("stopped: %" PRId64 " threads on the system, limit %" PRId64
                                 " (pid_max/threads-max); kept 4096 spare",
                                 sys, ceiling);
        break;
      }
      if (!server.Alive()) {
        out.stop_reason = "the server exited (" + server.exit_text() + ")";
        break;
      }
      p.child->Send("GO");
      p.state = ClientProc::kConnecting;
      ++active;
      ++next;
      ++out.processes_used;
    }
    if (active == 0) break;
    int connected_now = 0;
    for (const auto &p : *procs) connected_now += p.connected;
    rep.Progress(Format("peers: %d of %d idle client engines connected", connected_now, n));
    if (NowNs() > deadline) {
      if (out.stop_reason.empty())
        out.stop_reason = Format("ramp deadline (--ramp-deadline-s %d) passed", opt.ramp_deadline_s);
      for (auto &p : *procs) {
        if (p.state != ClientProc::kConnecting) continue;
        p.child->Stop(0);  // its engines counted as connected so far are gone now
        p.state = ClientProc::kLost;
        p.connected = 0;
      }
      break;
    }
    std::vector<pollfd> fds;
    std::vector<ClientProc *> who;
    for (auto &p : *procs) {
      if (p.state != ClientProc::kConnecting) continue;
      fds.push_back({p.child->fd(), POLLIN, 0});
      who.push_back(&p);
    }
    if (poll(fds.data(), fds.size(), 200) < 0 && errno != EINTR) break;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      ClientProc &p = *who[i];
      p.child->Pump();
      std::string line;
      while (p.state == ClientProc::kConnecting && p.child->TakeLine(&line)) {
        auto w = Words(line);
        if (w.size() == 2 && w[0] == "C") {
          p.connected = atoi(w[1].c_str());
        } else if (w.size() == 8 && w[0] == "DONE") {
          p.connected = atoi(w[1].c_str());
          p.failure = static_cast<adxl::Status>(strtoul(w[2].c_str(), nullptr, 10));
          p.where = w[3];
          p.threads_after = atoll(w[4].c_str());
          p.fds_after = atoll(w[5].c_str());
          p.rss_after = atoll(w[6].c_str());
          p.ms = atof(w[7].c_str());
          p.state = ClientProc::kDone;
          --active;
          if (p.failure != adxl::SUCCESS && out.stop_reason.empty()) {
            int before = 0;
            for (const auto &q : *procs) before += q.connected;
            out.stop_reason = Format("%s of an idle client returned %s (%d connected at that point)",
                                     p.where.c_str(), StatusName(p.failure).c_str(), before);
          }
        }
      }
      if (p.state == ClientProc::kConnecting && p.child->eof()) {
        p.child->Alive();
        if (out.stop_reason.empty())
          out.stop_reason = "a client process ended early (" + p.child->exit_text() + ")";
        p.state = ClientProc::kLost;
        p.connected = 0;
        --active;
      }
    }
  }
  for (auto &p : *procs) {
    if (p.state == ClientProc::kReady) p.child->Stop(2000);  // never started connecting
    out.connected += p.connected;
  }
  out.ramp_s = static_cast<double>(NowNs() - t_start) / 1e9;
  return out;
}

void NoteRecord(const Options &opt, Reporter &rep, const Record &r, const std::string &text) {
  rep.Emit(r, false);
  if (!opt.json) rep.Note(text + (r.Get("error").empty() ? "" : "  ERROR: " + r.Get("error")));
}

int PeersIdle(const Options &opt, Reporter &rep, const NofileLimit &lim) {
  const std::string transport = opt.transports.front();
  const uint64_t seed = 0xC0FFEE;
  rep.Note(Format("# peers/idle: one server engine, %d idle client engines (%d per process, llmdd.Transport=%s); "
                  "4 KiB READ with llmdd.Transport=%s",
                  opt.peers, opt.per_process, transport.c_str(), [&] {
                    std::string t;
                    for (const auto &x : opt.transports) t += (t.empty() ? "" : ",") + x;
                    return t;
                  }().c_str()));
  Child server;
  std::string error, line;
  auto args = PeerCommonArgs(opt, transport);
  args.insert(args.end(), {"--role", "peers-server", "--bytes", "1M", "--seed", std::to_string(seed)});
  rep.Progress("peers: starting the server");
  std::vector<std::string> w;
  if (server.Start(args, &error) && server.WaitLine(&line, 60000)) w = Words(line);
  if (w.size() != 6 || w[0] != "READY") {
    if (error.empty()) error = line.empty() ? "the server did not start (" + server.exit_text() + ")" : line;
    NoteRecord(opt, rep, PeersRecord("server_threads", transport, NAN, "threads/peer", lim).Str("error", error),
               "peers: server: " + error);
    return kExitFailed;
  }
  const std::string target = std::string(kHost) + ":" + w[1];
  const uintptr_t remote_addr = strtoull(w[2].c_str(), nullptr, 16);
  const uint64_t remote_len = strtoull(w[3].c_str(), nullptr, 10);
  const int64_t server_soft = atoll(w[4].c_str()), server_hard = atoll(w[5].c_str());
  usleep(200000);
  const ProcStats s0 = ReadProcStats(server.pid());

  rep.Progress("peers: Connect and READ at 0 peers");
  const ConnectTimes connect0 = TimeConnects(opt, transport, target);
  std::map<std::string, ReadFigure> read0, readn;
  for (const auto &t : opt.transports) read0[t] = MeasureRead(opt, t, target, remote_addr, remote_len, seed);
  usleep(200000);
  const ProcStats s0_after = ReadProcStats(server.pid());

  std::vector<ClientProc> procs;
  const IdleResult idle = ConnectIdlePeers(opt, transport, target, server, &procs, rep);
  usleep(static_cast<useconds_t>(opt.idle_wait_ms) * 1000);  // the server settles
  const bool server_alive = server.Alive();
  const ProcStats sn = ReadProcStats(server.pid());
  const int m = idle.connected;

  auto base = [&](const char *op, double value, const char *unit) {
    Record r = PeersRecord(op, transport, value, unit, lim);
    r.Int("peers", m).Int("peers_req", opt.peers).Int("per_process", opt.per_process);
    if (!idle.stop_reason.empty()) r.Str("stopped", idle.stop_reason);
    return r;
  };
  int rc = kExitOk;
  if (m < opt.peers) rc = kExitFailed;
  // Server figures.
  {
    const bool ok = s0.ok && sn.ok && server_alive;
    const std::string err = !server_alive ? "the server exited (" + server.exit_text() + ")"
                            : !ok         ? "cannot read /proc of the server"
                            : m == 0      ? "no idle peer connected"
                                          : "";
    auto per = [&](int64_t a, int64_t b) { return ok && m > 0 ? static_cast<double>(b - a) / m : NAN; };
    struct Fig {
      const char *op, *unit;
      int64_t a, a2, b;
    } figs[] = {{"server_threads", "threads/peer", s0.threads, s0_after.threads, sn.threads},
                {"server_fds", "fds/peer", s0.fds, s0_after.fds, sn.fds},
                {"server_rss", "KiB/peer", s0.rss_kib, s0_after.rss_kib, sn.rss_kib}};
    for (const auto &f : figs) {
      // Per idle peer: from just before the idle peers connect (after the
      // 0-peer Connect and READ, which warm the server up) to N.
      Record r = base(f.op, per(f.a2, f.b), f.unit);
      r.Int("at_0", f.a).Int("at_0_before_idle", f.a2).Int("at_n", f.b);
      r.Int("server_nofile_soft", server_soft).Int("server_nofile_hard", server_hard);
      r.Str("error", err);
      NoteRecord(opt, rep, r,
                 Format("server %-8s at 0 peers %" PRId64 " (%" PRId64 " before the idle peers), at %d peers %" PRId64
                        ": %.2f %s",
                        f.op + 7, f.a, f.a2, m, f.b, per(f.a2, f.b), f.unit));
    }
    if (!err.empty()) rc = kExitFailed;
  }
  // Client figures.
  {
    int64_t dthreads = 0, dfds = 0, drss = 0, engines = 0;
    double lo = INFINITY, hi = -INFINITY;
    uint64_t soft = 0, hard = 0;
    std::vector<double> before;
    for (const auto &p : procs) {
      if (p.state != ClientProc::kDone || p.connected == 0) continue;
      dthreads += p.threads_after - p.threads_before;
      dfds += p.fds_after - p.fds_before;
      drss += p.rss_after - p.rss_before;
      engines += p.connected;
      const double per = static_cast<double>(p.threads_after - p.threads_before) / p.connected;
      lo = std::min(lo, per);
      hi = std::max(hi, per);
      before.push_back(static_cast<double>(p.threads_before));
      soft = p.nofile_soft;
      hard = p.nofile_hard;
    }
    const double per = engines > 0 ? static_cast<double>(dthreads) / static_cast<double>(engines) : NAN;
    Record r = base("client_threads", per, "threads/engine");
    r.Int("engines", engines).Int("processes", idle.processes_used);
    r.Num("threads_before_median", Median(before)).Num("per_process_min", engines > 0 ? lo : NAN);
    r.Num("per_process_max", engines > 0 ? hi : NAN);
    r.Num("fds_per_engine", engines > 0 ? static_cast<double>(dfds) / static_cast<double>(engines) : NAN);
    r.Num("rss_kib_per_engine", engines > 0 ? static_cast<double>(drss) / static_cast<double>(engines) : NAN);
    r.Int("client_nofile_soft", static_cast<int64_t>(soft)).Int("client_nofile_hard", static_cast<int64_t>(hard));
    r.Num("ramp_s", idle.ramp_s);
    if (engines == 0) r.Str("error", "no idle client engine connected");
    NoteRecord(opt, rep, r,
               Format("client threads per idle engine: %.2f (%" PRId64 " engines in %d processes; ramp %.1f s)%s", per,
                      engines, idle.processes_used, idle.ramp_s,
                      idle.stop_reason.empty() ? "" : ("; " + idle.stop_reason).c_str()));
  }
  // Connect of the (N+1)th client, then READ with N idle peers.
  rep.Progress(Format("peers: Connect and READ at %d peers", m));
  const ConnectTimes connectn = server_alive ? TimeConnects(opt, transport, target) : ConnectTimes{};
  for (const auto &t : opt.transports) {
    if (server_alive) {
      readn[t] = MeasureRead(opt, t, target, remote_addr, remote_len, seed);
    } else {
      readn[t].error = "the server exited";
    }
  }
  {
    const double first = Median(connect0.ms), nth = Median(connectn.ms);
    Record r = base("connect", nth / first, "ratio");
    r.Num("first_ms", first).Num("nth_ms", nth).Int("samples", opt.connect_samples);
    auto least = [](const std::vector<double> &v) { return v.empty() ? NAN : *std::min_element(v.begin(), v.end()); };
    r.Num("first_min_ms", least(connect0.ms)).Num("nth_min_ms", least(connectn.ms));
    r.Str("first_all_ms", JoinNums(connect0.ms)).Str("nth_all_ms", JoinNums(connectn.ms));
    std::string err;
    if (connect0.failure != adxl::SUCCESS)
      err = "first client: " + connect0.where + ": " + StatusName(connect0.failure);
    if (!server_alive) err += std::string(err.empty() ? "" : "; ") + "the server exited";
    if (connectn.failure != adxl::SUCCESS)
      err += std::string(err.empty() ? "" : "; ") + Format("client %d: ", m + 1) + connectn.where + ": " +
             StatusName(connectn.failure);
    r.Str("error", err);
    if (!err.empty()) rc = kExitFailed;
    NoteRecord(opt, rep, r,
               Format("Connect of a fresh client: first %.2f ms, with %d peers %.2f ms (median of %d): ratio %.2f",
                      first, m, nth, opt.connect_samples, nth / first));
  }
  for (const auto &t : opt.transports) {
    const ReadFigure &a = read0[t], &b = readn[t];
    const bool ok = a.ok && b.ok;
    Record r = base("read_4k", ok ? b.stats.p50_us / a.stats.p50_us : NAN, "ratio");
    r.Str("read_transport", t).Int("desc_size", 4096);
    if (ok) {  // no figure from a READ whose bytes were wrong
      r.Num("p50_0_us", a.stats.p50_us).Num("p99_0_us", a.stats.p99_us).Int("iters_0", a.iters);
      r.Num("p50_n_us", b.stats.p50_us).Num("p99_n_us", b.stats.p99_us).Int("iters_n", b.iters);
      r.Str("verified", "first and last READ at 0 and at N");
    }
    std::string err;
    if (!a.ok) err = "at 0 peers: " + a.error;
    if (!b.ok) err += (err.empty() ? "" : "; ") + Format("at %d peers: ", m) + b.error;
    r.Str("error", err);
    if (!ok) rc = kExitFailed;
    NoteRecord(opt, rep, r,
               ok ? Format("4 KiB READ (%s): p50 %.2f us (p99 %.2f) at 0 peers, %.2f us (p99 %.2f) at %d peers: "
                           "ratio %.2f",
                           t.c_str(), a.stats.p50_us, a.stats.p99_us, b.stats.p50_us, b.stats.p99_us, m,
                           b.stats.p50_us / a.stats.p50_us)
                  : Format("4 KiB READ (%s): no figure", t.c_str()));
  }
  rep.Progress("peers: stopping the idle clients");
  std::vector<Child *> all;
  for (auto &p : procs) all.push_back(p.child.get());
  StopAll(all, 30000);
  server.Stop(10000);
  return rc;
}

int PeersFrozen(const Options &opt, Reporter &rep, const NofileLimit &lim) {
  const std::string transport = opt.transports.front();
  const int f = opt.frozen;
  rep.Note(Format("# peers/frozen: one client engine connected to %d server engines (%d per process), the servers "
                  "frozen (SIGSTOP), then Disconnect of one and Finalize",
                  f, opt.frozen_per_process));
  Record r = PeersRecord("finalize_frozen", transport, NAN, "ms", lim);
  r.Int("frozen_req", f).Int("disconnect_timeout_ms", opt.disconnect_timeout_ms);
  // What bounds it: llmdd.PeerTimeoutMs, and Finalize's goodbye deadline
  // (docs/API.md, Finalize: "goodbyes within 1 s in all"; not an option).
  r.Int("peer_timeout_ms", opt.peer_timeout_ms > 0 ? opt.peer_timeout_ms : 10000);
  r.Str("peer_timeout_source", opt.peer_timeout_ms > 0 ? "--peer-timeout-ms" : "library default (docs/API.md)");
  r.Int("close_timeout_ms", 1000).Str("close_timeout_source", "docs/API.md Finalize: goodbyes within 1 s in all");
  std::vector<std::unique_ptr<Child>> servers;
  std::vector<std::string> targets;
  std::string error;
  rep.Progress("peers: starting the frozen servers");
  for (int left = f; left > 0 && error.empty(); left -= opt.frozen_per_process) {
    auto c = std::make_unique<Child>();
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(),
                {"--role", "peers-frozen", "--count", std::to_string(std::min(left, opt.frozen_per_process))});
    std::string line;
    if (!c->Start(args, &error)) break;
    if (!c->WaitLine(&line, 60000)) {
      error = "a frozen server process did not start (" + (c->Alive() ? "no READY" : c->exit_text()) + ")";
    } else {
      auto w = Words(line);
      if (w.size() < 3 || w[0] != "READY") {
        error = "frozen server process: " + line;
      } else {
        for (size_t i = 3; i < w.size(); ++i) targets.push_back(std::string(kHost) + ":" + w[i]);
      }
    }
    servers.push_back(std::move(c));
  }
  r.Int("processes", static_cast<int64_t>(servers.size()));
  Child client;
  int connected = 0;
  auto cleanup = [&] {
    for (auto &s : servers) s->Signal(SIGCONT);
    client.Stop(1000);
    std::vector<Child *> all;
    for (auto &s : servers) all.push_back(s.get());
    StopAll(all, 10000);
  };
  if (error.empty()) {
    std::string joined;
    for (const auto &t : targets) joined += (joined.empty() ? "" : ",") + t;
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(), {"--role", "peers-frozen-client", "--targets", joined, "--connect-timeout-ms",
                             std::to_string(opt.connect_timeout_ms), "--disconnect-timeout-ms",
                             std::to_string(opt.disconnect_timeout_ms)});
    std::string line;
    rep.Progress(Format("peers: connecting one client to %d servers", f));
    const int connect_budget_ms = 60000 + f * std::min(opt.connect_timeout_ms, 1000);
    if (!client.Start(args, &error)) {
    } else if (!client.WaitLine(&line, connect_budget_ms)) {
      error = "the client did not connect within " + std::to_string(connect_budget_ms / 1000) + " s";
    } else {
      auto w = Words(line);
      if (w.size() != 5 || w[0] != "CONNECTED") {
        error = "client: " + line;
      } else {
        connected = atoi(w[1].c_str());
        const auto first_failure = static_cast<adxl::Status>(strtoul(w[2].c_str(), nullptr, 10));
        if (first_failure != adxl::SUCCESS) r.Str("connect_failure", llmdd_ext::StatusName(first_failure));
        r.Int("client_nofile_soft", atoll(w[3].c_str())).Int("client_nofile_hard", atoll(w[4].c_str()));
      }
    }
  }
  r.Int("frozen", connected);
  if (error.empty() && connected == 0) error = "the client connected to no server";
  if (error.empty()) {
    for (auto &s : servers) s->Signal(SIGSTOP);
    // Until the kernel shows every one stopped ('T' in /proc/<pid>/stat), 2 s at most.
    const int64_t until = NowNs() + 2000000000LL;
    for (auto &s : servers) {
      for (;;) {
        char state = '?';
        FILE *st = fopen(Format("/proc/%d/stat", s->pid()).c_str(), "r");
        if (st != nullptr) {
          if (fscanf(st, "%*d (%*[^)]) %c", &state) != 1) state = '?';
          fclose(st);
        }
        if (state == 'T' || state == 't' || NowNs() > until) break;
        usleep(1000);
      }
    }
    const int budget_s = 60 + f;  // never waits longer than this for the client
    rep.Progress(Format("peers: Disconnect and Finalize with %d frozen peers (at most %d s)", connected, budget_s));
    client.Send("GO");
    std::string line;
    if (!client.WaitLine(&line, budget_s * 1000)) {
      error = Format("Disconnect + Finalize did not return within %d s (client killed)", budget_s);
    } else {
      auto w = Words(line);
      if (w.size() != 4 || w[0] != "DONE") {
        error = "client: " + line;
      } else {
        const auto ds = static_cast<adxl::Status>(strtoul(w[2].c_str(), nullptr, 10));
        r.Num("disconnect_ms", atof(w[1].c_str())).Str("disconnect_status", llmdd_ext::StatusName(ds));
        r.Num("finalize_ms", atof(w[3].c_str()));
        r.Num("value", atof(w[3].c_str()));
        r.Int("finalized_with", connected - 1);  // the disconnected one is gone before Finalize
      }
    }
  }
  cleanup();
  r.Str("error", error);
  NoteRecord(opt, rep, r,
             Format("Finalize with %d frozen peers: %s ms (Disconnect of one frozen peer: %s ms, timeout %d ms)",
                    connected - 1, r.Get("finalize_ms").c_str(), r.Get("disconnect_ms").c_str(),
                    opt.disconnect_timeout_ms));
  return error.empty() ? kExitOk : kExitFailed;
}

int PeersRegions(const Options &opt, Reporter &rep, const NofileLimit &lim) {
  const std::string transport = opt.transports.front();
  const uint64_t n = opt.regions;
  const uint64_t seed = 0xBEEF;
  rep.Note(Format("# peers/regions: READ of %" PRIu64 " descriptors of 8 B (16 B apart), each in its own registered "
                  "region vs all in one region (server in another process)",
                  n));
  Record r = PeersRecord("regions", transport, NAN, "ratio", lim);
  r.Int("regions", static_cast<int64_t>(n)).Int("desc_size", 8).Int("stride", 16);
  Child server;
  std::string error, line;
  auto args = PeerCommonArgs(opt, transport);
  args.insert(args.end(),
              {"--role", "peers-regions", "--regions", std::to_string(n), "--seed", std::to_string(seed)});
  rep.Progress("peers: registering the regions");
  std::vector<std::string> w;
  if (server.Start(args, &error) && server.WaitLine(&line, 120000)) w = Words(line);
  if (error.empty() && (w.size() != 6 || w[0] != "READY"))
    error = line.empty() ? "the regions server did not start (" + server.exit_text() + ")" : line;
  if (error.empty()) {
    const std::string t_many = std::string(kHost) + ":" + w[1], t_one = std::string(kHost) + ":" + w[2];
    const uintptr_t a_many = strtoull(w[3].c_str(), nullptr, 16), a_one = strtoull(w[4].c_str(), nullptr, 16);
    adxl::AdxlEngine e;
    adxl::Status st = e.Initialize(kHost, ExtOptions(opt, transport));
    if (st != adxl::SUCCESS) error = "Initialize: " + StatusName(st);
    if (error.empty() && (st = e.Connect(t_many.c_str(), opt.connect_timeout_ms)) != adxl::SUCCESS)
      error = "Connect: " + StatusName(st);
    if (error.empty() && (st = e.Connect(t_one.c_str(), opt.connect_timeout_ms)) != adxl::SUCCESS)
      error = "Connect: " + StatusName(st);
    Buffer local;
    if (error.empty() && !local.Allocate(n * 16, false, true, 0)) error = "cannot allocate the local buffer";
    struct Side {
      const char *name;
      std::string target;
      uintptr_t addr;
      uint64_t seed;
      int reps;
      double p50_ms = NAN, p99_ms = NAN;
    } sides[] = {{"one", t_one, a_one, seed + 1, 5}, {"many", t_many, a_many, seed, 3}};
    for (auto &s : sides) {
      if (!error.empty()) break;
      rep.Progress(Format("peers: READ of %" PRIu64 " descriptors, %s region(s)", n, s.name));
      std::vector<adxl::TransferOpDesc> descs;
      for (uint64_t i = 0; i < n; ++i) descs.push_back({local.addr() + i * 16, s.addr + i * 16, 8});
      auto checked = [&](const char *which) -> std::string {
        memset(local.data(), 0, n * 16);
        adxl::Status c = e.TransferSync(s.target.c_str(), adxl::READ, descs, opt.timeout_ms);
        if (c != adxl::SUCCESS) return Format("%s READ (%s): %s", which, s.name, StatusName(c).c_str());
        uint64_t bad = 0;
        for (uint64_t i = 0; i < n; ++i) {
          bad += PatternMismatches(local.data() + i * 16, 8, s.seed, i * 16);
          for (uint64_t j = 8; j < 16; ++j) bad += local.data()[i * 16 + j] != 0 ? 1 : 0;  // gaps untouched
        }
        return bad == 0 ? "" : Format("%s READ (%s): %" PRIu64 " bytes wrong", which, s.name, bad);
      };
      error = checked("first");  // also the warm-up
      if (!error.empty()) break;
      Options o = opt;
      o.warmup = 0;
      o.min_iters = s.reps;
      o.time_s = 1e-3;
      RunResult rr = TimedRun(1, o, [&](int) { return EngineCall(e, s.target, adxl::READ, descs, opt.timeout_ms); });
      if (!rr.ok) {
        error = Format("READ (%s): %s", s.name, rr.error.c_str());
        break;
      }
      Stats stats = Summarize(rr.ns);
      s.p50_ms = stats.p50_us / 1e3;
      s.p99_ms = stats.max_us / 1e3;
      error = checked("last");
    }
    if (error.empty()) {
      const double one_ns = sides[0].p50_ms * 1e6 / static_cast<double>(n);
      const double many_ns = sides[1].p50_ms * 1e6 / static_cast<double>(n);
      r.Num("value", many_ns / one_ns);
      r.Num("per_desc_ns_many", many_ns).Num("per_desc_ns_one", one_ns);
      r.Num("call_p50_ms_many", sides[1].p50_ms).Num("call_max_ms_many", sides[1].p99_ms);
      r.Num("call_p50_ms_one", sides[0].p50_ms).Num("call_max_ms_one", sides[0].p99_ms);
      r.Int("calls_many", sides[1].reps).Int("calls_one", sides[0].reps);
      r.Str("verified", "first and last READ of each");
    }
    e.Finalize();
  }
  server.Stop(10000);
  r.Str("error", error);
  NoteRecord(opt, rep, r,
             Format("READ of %" PRIu64 " x 8 B descriptors: %s ns/descriptor in %" PRIu64 " regions, %s in one: ratio %s",
                    n, r.Get("per_desc_ns_many").c_str(), n, r.Get("per_desc_ns_one").c_str(), r.Get("value").c_str()));
  return error.empty() ? kExitOk : kExitFailed;
}

int RunPeers(const Options &opt, Reporter &rep) {
  const NofileLimit lim = RaiseNofile();
  Watchdog watchdog(opt.deadline_s);
  rep.Note(Format("# peers: RLIMIT_NOFILE %" PRIu64 "/%" PRIu64 " (soft raised to hard in every process); "
                  "%" PRId64 " threads on the system, limit %" PRId64,
                  lim.soft, lim.hard, SystemThreads(), SystemThreadCeiling()));
  auto has = [&](const char *s) { return std::find(opt.sections.begin(), opt.sections.end(), s) != opt.sections.end(); };
  int rc = kExitOk;
  if (has("idle")) rc = std::max(rc, PeersIdle(opt, rep, lim));
  if (has("frozen")) rc = std::max(rc, PeersFrozen(opt, rep, lim));
  if (has("regions")) rc = std::max(rc, PeersRegions(opt, rep, lim));
  KillAllChildren();  // none should be left; never leave one behind
  return rc;
}

// ------------------------------------------------------------------ mixed

// Does a small request wait behind large ones on the same peer? One client
// engine and one peer (`serve --role engine`, patterned memory): a
// small READ is timed alone, then while `bulk_threads` background threads
// keep READing `bulk_size` each (one descriptor, own region) from the same
// peer. The background threads start before the loaded phase and each has
// finished one READ before it begins, so every lane is open and busy.

struct SmallPhase {
  std::string error;
  Stats stats;
  int64_t iters = 0;
};

// Bytes of p[0, n) that differ from what ServeEngine serves at `remote_off` (byte checks).
uint64_t PeerBytesWrong(const uint8_t *p, uint64_t n, uint64_t remote_off) {
  return PatternMismatchesAt(p, n, RegionSeed(kPeerSeed, 0), remote_off);
}

int RunMixed(const Options &opt, Reporter &rep) {
  const int bulk_threads = opt.bulk_threads > 0 ? opt.bulk_threads : opt.connections > 0 ? opt.connections : 4;
  const uint64_t bulk_region = (opt.bulk_size + 4095) / 4096 * 4096;
  const uint64_t small_offset = bulk_region * static_cast<uint64_t>(bulk_threads);
  const uint64_t bytes = small_offset + (opt.small_size + 4095) / 4096 * 4096;
  rep.Note(Format("# mixed: READ of %s alone, then while %d threads READ %s each in a loop from the same peer; "
                  "%.2f s (at least 100 READs) per phase, buffers %s per side",
                  HumanBytes(opt.small_size).c_str(), bulk_threads, HumanBytes(opt.bulk_size).c_str(), opt.time_s,
                  HumanBytes(bytes).c_str()));
  int rc = kExitOk;
  for (const auto &transport : opt.transports) {
    Record r;
    r.Str("mode", "mixed").Str("op", "small_under_load").Str("transport", transport);
    r.Num("value", NAN).Str("unit", "ratio");
    r.Int("small_size", static_cast<int64_t>(opt.small_size)).Int("bulk_size", static_cast<int64_t>(opt.bulk_size));
    r.Int("bulk_threads", bulk_threads);
    EngineSession session;
    std::string error;
    rep.Progress("mixed: starting peer (" + transport + ")");
    if (!session.Open(opt, transport, bytes, &error)) {
      r.Str("error", error);
      NoteRecord(opt, rep, r, "mixed " + transport + ": SKIPPED");
      rc = kExitFailed;
      continue;
    }
    adxl::AdxlEngine &engine = session.engine();
    const std::string &remote = session.remote();
    uint8_t *small_local = session.local() + small_offset;
    const std::vector<adxl::TransferOpDesc> small_descs = {
        {reinterpret_cast<uintptr_t>(small_local), session.remote_addr() + small_offset, opt.small_size}};

    // The small READs of one phase; the first and the last are checked (the
    // local bytes zeroed before each).
    auto small_phase = [&](const char *phase) {
      SmallPhase out;
      auto checked = [&](const char *which) -> std::string {
        memset(small_local, 0, opt.small_size);
        adxl::Status st = engine.TransferSync(remote.c_str(), adxl::READ, small_descs, opt.timeout_ms);
        if (st != adxl::SUCCESS) return Format("%s small READ (%s): %s", which, phase, StatusName(st).c_str());
        const uint64_t bad = PeerBytesWrong(small_local, opt.small_size, small_offset);
        if (bad != 0)
          return Format("%s small READ (%s): %" PRIu64 " of %" PRIu64 " bytes differ from the peer's", which, phase,
                        bad, opt.small_size);
        return "";
      };
      out.error = checked("first");
      if (!out.error.empty()) return out;
      Options o = opt;
      o.warmup = 20;
      o.min_iters = 100;
      RunResult rr =
          TimedRun(1, o, [&](int) { return EngineCall(engine, remote, adxl::READ, small_descs, opt.timeout_ms); });
      out.stats = Summarize(rr.ns);
      out.iters = rr.calls;
      out.error = rr.ok ? checked("last") : rr.error;
      return out;
    };

    rep.Progress(Format("mixed %s: small READs alone", transport.c_str()));
    const SmallPhase alone = small_phase("alone");

    // The load: every thread READs its own region in a loop until told to stop.
    SmallPhase load;
    std::atomic<bool> stop{false};
    std::atomic<int> warmed{0};      // threads with one READ done
    std::atomic<int64_t> bulk_done{0};  // READs done, all threads
    std::vector<std::string> bulk_errors(static_cast<size_t>(bulk_threads));
    std::vector<std::thread> bulk;
    memset(session.local(), 0, small_offset);
    if (alone.error.empty()) {
      for (int t = 0; t < bulk_threads; ++t) {
        bulk.emplace_back([&, t] {
          const uint64_t off = static_cast<uint64_t>(t) * bulk_region;
          const std::vector<adxl::TransferOpDesc> descs = {
              {reinterpret_cast<uintptr_t>(session.local() + off), session.remote_addr() + off, opt.bulk_size}};
          bool first = true;
          while (!stop.load()) {
            adxl::Status st = engine.TransferSync(remote.c_str(), adxl::READ, descs, opt.timeout_ms);
            if (st != adxl::SUCCESS) {
              bulk_errors[static_cast<size_t>(t)] = "background READ: " + StatusName(st);
              break;
            }
            bulk_done.fetch_add(1);
            if (first) warmed.fetch_add(1);
            first = false;
          }
          if (first) warmed.fetch_add(1);  // failed before its first READ: do not wait for it
        });
      }
      const int64_t warm_deadline = NowNs() + int64_t{opt.timeout_ms} * 1000000;
      while (warmed.load() < bulk_threads && NowNs() < warm_deadline) usleep(1000);
      rep.Progress(Format("mixed %s: small READs under %d x %s READs", transport.c_str(), bulk_threads,
                          HumanBytes(opt.bulk_size).c_str()));
      const int64_t calls0 = bulk_done.load(), t0 = NowNs();
      load = small_phase("under load");
      const int64_t calls1 = bulk_done.load(), t1 = NowNs();
      stop.store(true);
      for (auto &th : bulk) th.join();
      const double secs = static_cast<double>(t1 - t0) / 1e9;
      r.Int("bulk_calls", calls1 - calls0).Num("bulk_seconds", secs);
      r.Num("bulk_gbps", static_cast<double>(calls1 - calls0) * static_cast<double>(opt.bulk_size) / secs / 1e9);
    }
    for (const auto &e : bulk_errors)
      if (error.empty() && !e.empty()) error = e;
    // Every background region must hold the peer's bytes (zeroed before the load).
    if (error.empty() && alone.error.empty()) {
      for (int t = 0; t < bulk_threads && error.empty(); ++t) {
        const uint64_t bad =
            PeerBytesWrong(session.local() + static_cast<uint64_t>(t) * bulk_region, opt.bulk_size,
                           static_cast<uint64_t>(t) * bulk_region);
        if (bad != 0) error = Format("background READ %d: %" PRIu64 " bytes differ from the peer's", t, bad);
      }
    }
    if (!alone.error.empty()) error = alone.error;
    if (error.empty()) error = load.error;
    if (error.empty() && r.Get("bulk_calls") == "0") error = "no background READ finished during the loaded phase";
    session.Close();

    r.Num("p50_alone_us", alone.stats.p50_us).Num("p99_alone_us", alone.stats.p99_us);
    r.Num("max_alone_us", alone.stats.max_us).Int("iters_alone", alone.iters);
    r.Num("p50_load_us", load.stats.p50_us).Num("p99_load_us", load.stats.p99_us);
    r.Num("max_load_us", load.stats.max_us).Int("iters_load", load.iters);
    if (error.empty()) {
      r.Num("value", load.stats.p50_us / alone.stats.p50_us);
      r.Num("ratio_p50", load.stats.p50_us / alone.stats.p50_us);
      r.Num("ratio_p99", load.stats.p99_us / alone.stats.p99_us);
      r.Str("verified", "first and last small READ of each phase; every background region after the load");
    }
    r.Str("error", error);
    if (!error.empty()) rc = kExitFailed;
    NoteRecord(opt, rep, r,
               Format("mixed %-4s %s READ p50/p99: alone %s/%s us, under %d x %s READs %s/%s us: "
                      "x%s p50, x%s p99 (background %s GB/s)",
                      transport.c_str(), HumanBytes(opt.small_size).c_str(), r.Get("p50_alone_us").c_str(),
                      r.Get("p99_alone_us").c_str(), bulk_threads, HumanBytes(opt.bulk_size).c_str(),
                      r.Get("p50_load_us").c_str(), r.Get("p99_load_us").c_str(), r.Get("ratio_p50").c_str(),
                      r.Get("ratio_p99").c_str(), r.Get("bulk_gbps").c_str()));
  }
  return rc;
}

// ------------------------------------------------------------------ notify
//
// The latency of a notification, one way: a sender process (`serve --role
// notify-sender`, a client-only engine connected to this process's listening
// engine) calls SendNotify in a loop, each notify carrying the steady clock
// at the call's start; this process polls GetNotifies and takes
// now - stamp for each notify it sees (both processes read the same
// CLOCK_MONOTONIC on one host). It polls in a busy loop, or sleeps
// --notify-poll-us between empty polls (timer slack 1 us). Either way the
// figure needs a quiet host: on a loaded one a thread that polls often uses
// more than its share of the CPU and the scheduler keeps it off the CPU for
// whole time slices (milliseconds), while SendNotify's own time, which only
// wakes threads that block, stays near its quiet value. The sender reports SendNotify's own time (to
// its acknowledgement, a round trip). The reference is the TCP ping-pong
// round trip of the `pingpong` mode, measured in the same run.

int RunNotify(const Options &opt, Reporter &rep) {
  constexpr uint64_t kUntimed = 500;
  int rc = kExitOk;
  // The reference first, on a quiet machine.
  double rtt_busy_us = 0, rtt_blocking_us = 0;
  {
    Peer pp;
    std::vector<std::string> ready;
    std::string error;
    if (!pp.Start({"--role", "pingpong"}, &ready, &error) || ready.empty()) {
      rep.Note("notify: the ping-pong peer did not start: " + error);
      return kExitFailed;
    }
    const int port = atoi(ready[0].c_str());
    for (const bool busy : {true, false}) {
      rep.Progress(std::string("notify: reference ping-pong ") + (busy ? "busy" : "blocking"));
      RunResult r = PingPongRun(opt, port, busy);
      if (!r.ok) {
        rep.Note("notify: reference ping-pong failed: " + r.error);
        rc = kExitFailed;
      }
      (busy ? rtt_busy_us : rtt_blocking_us) = Summarize(r.ns).p50_us;
    }
    pp.Stop();
  }
  // The receiver's short sleeps between polls last what they ask for, not the 50 us default slack.
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  rep.Note(Format("# notify: %" PRIu64 " SendNotify -> GetNotifies (one way, stamped by the sender; the receiver "
                  "polls GetNotifies %s) after %" PRIu64
                  " untimed; reference TCP ping-pong 8 B round trip p50: busy-polling %.2f us, blocking %.2f us",
                  opt.notify_count,
                  opt.notify_poll_us > 0 ? Format("every %d us", opt.notify_poll_us).c_str() : "in a busy loop",
                  kUntimed, rtt_busy_us, rtt_blocking_us));
  for (const auto &transport : opt.transports) {
    auto fail = [&](const std::string &why) {
      rep.Emit(Record().Str("mode", "notify").Str("op", "notify").Str("transport", transport).Str("error", why),
               false);
      rep.Note("notify " + transport + ": FAILED: " + why);
      rc = kExitFailed;
    };
    adxl::AdxlEngine receiver;
    adxl::Status st = adxl::FAILED;
    const int port = ListenOnFreePort(receiver, ExtOptions(opt, transport), &st);
    if (port < 0) {
      fail("receiver Initialize: " + StatusName(st));
      continue;
    }
    Child sender;
    std::string error, line;
    auto args = PeerCommonArgs(opt, transport);
    args.insert(args.end(), {"--role", "notify-sender", "--target", std::string(kHost) + ":" + std::to_string(port),
                             "--count", std::to_string(opt.notify_count + kUntimed)});
    if (!sender.Start(args, &error) || !sender.WaitLine(&line, 60000) || line != "READY") {
      fail("sender: " + (error.empty() ? line : error));
      receiver.Finalize();
      continue;
    }
    rep.Progress("notify " + transport);
    sender.Send("GO");
    std::vector<int64_t> one_way;
    one_way.reserve(opt.notify_count);
    uint64_t seen = 0;
    std::vector<adxl::NotifyDesc> got;
    const int64_t deadline = NowNs() + int64_t{120} * 1000000000;
    while (seen < opt.notify_count + kUntimed && NowNs() < deadline) {
      got.clear();
      if (receiver.GetNotifies(got) != adxl::SUCCESS) break;
      if (got.empty()) {
        if (opt.notify_poll_us > 0) {
          const timespec pause{0, static_cast<long>(opt.notify_poll_us) * 1000};
          nanosleep(&pause, nullptr);
        }
        continue;
      }
      const int64_t now = NowNs();
      for (const adxl::NotifyDesc &n : got) {
        if (seen++ >= kUntimed) one_way.push_back(now - strtoll(n.notify_msg.GetString(), nullptr, 10));
      }
    }
    std::string done;
    if (!sender.WaitLine(&done, 60000)) done = "no DONE line from the sender";
    sender.Stop(5000);
    receiver.Finalize();
    const auto words = Words(done);
    if (words.size() != 6 || words[0] != "DONE") {
      fail(done);
      continue;
    }
    const double send_p50 = atof(words[1].c_str()), send_p99 = atof(words[2].c_str());
    const int failures = atoi(words[4].c_str());
    const Stats s = Summarize(one_way);
    const double ratio = rtt_busy_us > 0 ? s.p50_us / rtt_busy_us : 0;
    std::string err;
    if (failures > 0) err = words[4] + " SendNotify calls failed, the first with " + words[5];
    if (seen < opt.notify_count + kUntimed) err += (err.empty() ? "" : "; ") + Format("%" PRIu64 " seen", seen);
    if (!err.empty()) rc = kExitFailed;
    rep.Emit(Record().Str("mode", "notify").Str("op", "notify").Str("transport", transport)
                 .Num("p50_us", s.p50_us).Num("p99_us", s.p99_us).Num("mean_us", s.mean_us)
                 .Num("send_p50_us", send_p50).Num("send_p99_us", send_p99)
                 .Num("rtt_busy_p50_us", rtt_busy_us).Num("rtt_blocking_p50_us", rtt_blocking_us)
                 .Num("ratio_to_busy_rtt", ratio)
                 .Num("ratio_to_blocking_rtt", rtt_blocking_us > 0 ? s.p50_us / rtt_blocking_us : 0)
                 .Int("iters", static_cast<int64_t>(one_way.size())).Str("error", err),
             false);
    if (!opt.json)
      rep.Note(Format("notify %-4s SendNotify -> GetNotifies one way p50 %.2f us (p99 %.2f): %.2fx the busy-polling "
                      "ping-pong round trip, %.2fx the blocking one; SendNotify itself p50 %.2f us (p99 %.2f); "
                      "%zu timed%s",
                      transport.c_str(), s.p50_us, s.p99_us, ratio,
                      rtt_blocking_us > 0 ? s.p50_us / rtt_blocking_us : 0, send_p50, send_p99, one_way.size(),
                      err.empty() ? "" : ("  FAILED: " + err).c_str()));
  }
  return rc;
}

// ------------------------------------------------------------------ plot
//
// --plot FILE draws the run's figures with gnuplot, the package
// bench/compare.sh installs (gnuplot-nox). There is one renderer on purpose:
// a figure is described once (Figure, below) and written as one gnuplot
// script with its data inline, so changing a plot means changing data, not
// two plotting languages kept in step. Without gnuplot the run says so in one
// line at its start and writes no plot; the plot never changes the exit status.
//
//   engine, memcpy, kv             FILE: GB/s vs descriptor size (kv: blocks
//                                  per call), FILE-latency.EXT: time per call,
//                                  p50 solid and p99 dashed, same x
//   pingpong, async, notify,       FILE: bars of p50 and p99 of each latency
//   mixed, peers                   figure of the run
//   overhead                       nothing (single costs in several units)
//
// Every figure stands alone: its title names the mode, what is constant in
// the run (transport, threads, batch, layout, time per point) and the host
// (cpus, load during the run, date); what varies is in the legend or in the
// panel titles, in words ("batch of 64 descriptors per call", not "x64").
// Axes are logarithmic where the values span more than 20x.

struct Curve {
  std::string label;
  std::vector<std::pair<double, double>> pts;  // (x, GB/s) or (x, p50 us)
  std::vector<std::pair<double, double>> p99;  // latency figures: (x, p99 us), drawn dashed
};

struct Panel {
  std::string title;  // empty: the figure has one panel
  std::vector<Curve> curves;
};

struct Bar {  // one group of a bar chart; NaN: no bar
  std::string label;
  double p50 = NAN, p99 = NAN;
};

struct Figure {
  std::string path, what;   // the file, and what it shows (for the note)
  std::string title;        // lines separated by '\n'
  std::string xlabel, ylabel, x2label;
  std::vector<std::pair<std::string, double>> xtics, x2tics;  // line figures: one named tick per x of the run
  std::vector<Panel> panels;  // a line figure...
  std::vector<Bar> bars;      // ...or a bar chart
};

bool HaveProgram(const std::string &name) {
  const char *path = getenv("PATH");
  if (path == nullptr) return false;
  for (const auto &dir : SplitOn(path, ':')) {
    std::string p = dir + "/" + name;
    if (access(p.c_str(), X_OK) == 0) return true;
  }
  return false;
}

// The modes --plot draws, and the note for the others.
bool PlotsMode(const std::string &mode) { return mode != "overhead"; }

// FILE.png -> FILE-latency.png (FILE -> FILE-latency).
std::string SiblingPath(const std::string &path, const std::string &suffix) {
  const size_t slash = path.rfind('/');
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash) || dot == slash + 1)
    return path + suffix;
  return path.substr(0, dot) + suffix + path.substr(dot);
}

// A number of a record; NaN when absent or null.
double Field(const Record &r, const std::string &key) {
  const std::string v = r.Get(key);
  if (v.empty() || v == "null") return NAN;
  return atof(v.c_str());
}

// A count or size of a record; 0 when absent.
uint64_t Count(const Record &r, const std::string &key) {
  const double v = Field(r, key);
  return v > 0 ? static_cast<uint64_t>(v) : 0;
}

std::string CpuModel() {
  std::string cpu = "?";
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return cpu;
  char line[512];
  while (fgets(line, sizeof(line), f) != nullptr) {
    if (strncmp(line, "model name", 10) == 0) {
      const char *c = strchr(line, ':');
      cpu = c != nullptr ? c + 2 : line;
      if (!cpu.empty() && cpu.back() == '\n') cpu.pop_back();
      break;
    }
  }
  fclose(f);
  return cpu;
}

// "host: 2 cpus (AMD EPYC 7B13), load 1.52-2.31 during the run, 2026-12-03 18:05 UTC, llmdd 0.3.0"
std::string HostLine(const std::vector<Record> &recs) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto &r : recs) {
    const double l = Field(r, "load1");
    if (l >= 0) {
      lo = std::min(lo, l);
      hi = std::max(hi, l);
    }
  }
  std::string load = !(lo <= hi)                 ? "load ?"
                     : Format("%.2f", lo) == Format("%.2f", hi) ? Format("load %.2f", lo)
                                                               : Format("load %.2f-%.2f during the run", lo, hi);
  char when[64] = "";
  const time_t now = time(nullptr);
  tm utc{};
  gmtime_r(&now, &utc);
  strftime(when, sizeof(when), "%Y-%m-%d %H:%M UTC", &utc);
  return Format("host: %u cpus (%s), %s; %s; llmdd %s", std::thread::hardware_concurrency(), CpuModel().c_str(),
                load.c_str(), when, llmdd_ext::Version());
}

std::string Join(const std::vector<std::string> &parts, const std::string &sep) {
  std::string out;
  for (const auto &p : parts)
    if (!p.empty()) out += (out.empty() ? "" : sep) + p;
  return out;
}

std::string TransportWords(const std::string &t) {
  if (t == "tcp") return "TCP";
  if (t == "auto") return "auto transport";
  return t;  // shm: TransportNote explains it once per figure
}

// What the transport names of a run mean, said once in the title.
std::string TransportNote(const std::set<std::string> &transports) {
  std::vector<std::string> notes;
  if (transports.count("shm")) notes.push_back("shm: the same-host one-copy path");
  if (transports.count("auto")) notes.push_back("auto: the library picks the path (llmdd.Transport auto)");
  return Join(notes, "; ");
}

std::string OpWords(const Options &opt, const std::string &op) {
  if (op == "read") return "READ";
  if (op == "write") return "WRITE";
  if (op == "pull") return "PullKvBlocks";
  if (op == "push") return "PushKvBlocks";
  if (op == "hot") return "hot (same buffers every call)";
  if (op == "cold") return "cold (walks a " + HumanBytes(opt.pool_bytes) + " pool)";
  return op;
}

std::string ThreadWords(int threads) { return Format("%d caller thread%s", threads, threads == 1 ? "" : "s"); }

std::string BatchWords(uint64_t batch) {
  return batch == 1 ? "one descriptor per call" : Format("batch of %" PRIu64 " descriptors per call", batch);
}


// engine, memcpy, kv: GB/s and time per call against the swept size.
void SweepFigures(const Options &opt, const std::vector<Record> &recs, std::vector<Figure> *out) {
  const bool kv = opt.mode == "kv";
  struct Row {
    std::string op, transport;
    int threads;
    uint64_t batch_req, batch;
    double x, gbps, p50, p99;
  };
  std::vector<Row> rows;
  for (const auto &r : recs) {
    if (!r.Get("error").empty() || r.Get("gbps").empty()) continue;
    Row w{r.Get("op"),
          r.Get("transport"),
          atoi(r.Get("threads").c_str()),
          Count(r, "batch_req"),
          Count(r, "batch"),
          Field(r, kv ? "kv_blocks" : "desc_size"),
          Field(r, "gbps"),
          Field(r, "p50_us"),
          Field(r, "p99_us")};
    if (w.x > 0) rows.push_back(w);
  }
  if (rows.empty()) return;
  std::set<std::string> ops, transports;
  std::set<int> threads;
  std::set<uint64_t> batches;
  std::set<double> xs;
  for (const auto &w : rows) {
    ops.insert(w.op);
    transports.insert(w.transport);
    threads.insert(w.threads);
    batches.insert(w.batch_req);
    xs.insert(w.x);
  }
  // What varies becomes panels (the batch) or legend words; what is constant
  // goes into the title, said once.
  const bool batch_panels = !kv && batches.size() > 1;
  std::vector<std::string> constant;
  if (transports.size() == 1 && opt.mode != "memcpy") constant.push_back(TransportWords(*transports.begin()));
  if (threads.size() == 1) constant.push_back(ThreadWords(*threads.begin()));
  if (!kv && !batch_panels) constant.push_back(BatchWords(*batches.begin()));
  if (!kv) {
    constant.push_back(opt.layout == "reversed"     ? "layout reversed (local i <-> remote n-1-i: never merged)"
                       : opt.layout == "contiguous" ? "layout contiguous (the engine may merge descriptors)"
                                                    : "layout strided (a gap between descriptors)");
  } else {
    constant.push_back(Format("%d layers x (K,V) = %u tensors of %" PRIu64 " blocks of %s, %s block lists",
                              opt.layers, opt.Tensors(), opt.kv_blocks, HumanBytes(opt.BlockBytes()).c_str(),
                              opt.kv_pattern.c_str()));
  }
  constant.push_back(Format("%.2g s per point", opt.time_s));
  constant.push_back(TransportNote(transports));
  if (opt.connections > 0) constant.push_back(Format("llmdd.TcpConnections %d", opt.connections));
  if (opt.workers > 0) constant.push_back(Format("llmdd.WorkerThreads %d", opt.workers));
  if (opt.ucx_workers > 0) constant.push_back(Format("llmdd.UcxWorkers %d", opt.ucx_workers));
  if (opt.busy_poll_us >= 0) constant.push_back(Format("llmdd.BusyPollUs %d", opt.busy_poll_us));
  const std::string context = Join(constant, "; ") + "\n" + HostLine(recs);

  const uint64_t per_block = uint64_t{opt.Tensors()} * opt.BlockBytes();
  std::vector<std::pair<std::string, double>> xtics, x2tics;
  for (double x : xs) {
    const uint64_t v = static_cast<uint64_t>(x);
    xtics.push_back({kv ? std::to_string(v) : HumanBytes(v), x});
    if (kv) x2tics.push_back({HumanBytes(v * per_block), x});
  }

  // Panels by batch; curves by op, transport and threads, in the run's order.
  std::vector<uint64_t> panel_keys;
  for (const auto &w : rows)
    if (std::find(panel_keys.begin(), panel_keys.end(), batch_panels ? w.batch_req : 0) == panel_keys.end())
      panel_keys.push_back(batch_panels ? w.batch_req : 0);
  auto label_of = [&](const Row &w) {
    std::vector<std::string> parts = {OpWords(opt, w.op)};
    if (transports.size() > 1) parts.push_back(TransportWords(w.transport));
    if (threads.size() > 1) parts.push_back(ThreadWords(w.threads));
    return Join(parts, ", ");
  };
  for (const bool latency : {false, true}) {
    Figure f;
    f.path = latency ? SiblingPath(opt.plot, "-latency") : opt.plot;
    f.xtics = xtics;
    f.x2tics = x2tics;
    if (kv) {
      f.xlabel = Format("blocks per call (a block: %u tensors x %s = %s)", opt.Tensors(),
                        HumanBytes(opt.BlockBytes()).c_str(), HumanBytes(per_block).c_str());
      f.x2label = "bytes per call (K = KiB, M = MiB)";
    } else {
      f.xlabel = "descriptor size, bytes (K = KiB, M = MiB)";
    }
    const std::string what = opt.mode == "engine" ? "ADXL TransferSync"
                             : opt.mode == "kv"   ? "LLM-DataDist " + Join({ops.count("pull") ? "PullKvBlocks" : "",
                                                                            ops.count("push") ? "PushKvBlocks" : ""},
                                                                           "/")
                                                  : "memcpy in one process (the reference for the engine)";
    const std::string against = kv ? "blocks per call" : "descriptor size";
    if (!latency) {
      f.what = "GB/s vs " + against;
      f.title = "llmdd_bench " + opt.mode + ": " + what + ", throughput vs " + against + "\n" + context;
      f.ylabel = "GB/s (10^9 bytes/s, all caller threads together)";
    } else {
      f.what = "time per call (p50, p99) vs " + against;
      f.title = "llmdd_bench " + opt.mode + ": " + what + ", time per call vs " + against +
                " (solid: p50, dashed: p99)\n" + context;
      f.ylabel = "time per call, µs";
    }
    for (uint64_t key : panel_keys) {
      Panel panel;
      if (batch_panels) {
        panel.title = BatchWords(key);
        // SweepPoints clipped the batch where a call would pass --max-call-bytes.
        double clipped_from = INFINITY;
        for (const auto &w : rows)
          if (w.batch_req == key && w.batch != w.batch_req) clipped_from = std::min(clipped_from, w.x);
        if (std::isfinite(clipped_from))
          panel.title += Format("\n(fewer from %s on: a call moves at most %s, --max-call-bytes)",
                                HumanBytes(static_cast<uint64_t>(clipped_from)).c_str(),
                                HumanBytes(opt.max_call_bytes).c_str());
      }
      for (const auto &w : rows) {
        if (batch_panels && w.batch_req != key) continue;
        const std::string label = label_of(w);
        auto it = std::find_if(panel.curves.begin(), panel.curves.end(),
                               [&](const Curve &c) { return c.label == label; });
        if (it == panel.curves.end()) {
          panel.curves.push_back(Curve{label, {}, {}});
          it = panel.curves.end() - 1;
        }
        if (!latency) {
          it->pts.push_back({w.x, w.gbps});
        } else {
          it->pts.push_back({w.x, w.p50});
          it->p99.push_back({w.x, w.p99});
        }
      }
      for (auto &c : panel.curves) {
        std::sort(c.pts.begin(), c.pts.end());
        std::sort(c.p99.begin(), c.p99.end());
      }
      f.panels.push_back(panel);
    }
    out->push_back(f);
  }
}

// pingpong, async, notify, mixed, peers: one bar chart of their latencies.
void BarFigure(const Options &opt, const std::vector<Record> &recs, std::vector<Figure> *out) {
  Figure f;
  f.path = opt.plot;
  f.what = "p50/p99 bars";
  std::set<std::string> transports, named;  // named: also peers' READ transports, for the note
  for (const auto &r : recs) {
    if (!r.Get("error").empty()) continue;
    transports.insert(r.Get("transport"));
    named.insert(r.Get("transport"));
    if (!r.Get("read_transport").empty()) named.insert(r.Get("read_transport"));
  }
  // A transport is named in each bar's label only when the run had several;
  // otherwise once, in the title.
  auto tr = [&](const Record &r) {
    return transports.size() > 1 ? " (" + TransportWords(r.Get("transport")) + ")" : std::string();
  };
  const std::string note = TransportNote(named);
  const std::string one = (transports.size() == 1 ? TransportWords(*transports.begin()) + "; " : "") +
                          (note.empty() ? "" : note + "; ");
  std::string title, constant;
  if (opt.mode == "pingpong") {
    title = "llmdd_bench pingpong: raw TCP round trip of 8 B over loopback to a peer process (the reference)";
    f.ylabel = "round trip, µs";
    constant = Format("TCP_NODELAY; at least %.2g s per mode", std::max(opt.time_s, 1.0));
  } else if (opt.mode == "async") {
    title = "llmdd_bench async: TransferAsync in flight vs one TransferSync, and the calls' own cost";
    f.ylabel = "time, µs";
    constant = one + Format("%.2g s per method", opt.time_s);
  } else if (opt.mode == "notify") {
    title = "llmdd_bench notify: SendNotify -> GetNotifies one way, SendNotify's own time, TCP ping-pong reference";
    f.ylabel = "time, µs";
    constant = one + Format("%" PRIu64 " notifies timed; the receiver polls %s", opt.notify_count,
                            opt.notify_poll_us > 0 ? Format("every %d µs", opt.notify_poll_us).c_str()
                                                   : "in a busy loop");
  } else if (opt.mode == "mixed") {
    title = "llmdd_bench mixed: a small READ alone and while large READs keep every lane to the same peer busy";
    f.ylabel = "time per small READ, µs";
    constant = one + Format("%.2g s per phase", opt.time_s);
  } else if (opt.mode == "peers") {
    title = "llmdd_bench peers: latency with no and with many idle peers on one server";
    f.ylabel = "time, µs";
    constant = transports.size() == 1 ? "server and idle peers over " + one : "";
  }
  bool reference_done = false;
  for (const auto &r : recs) {
    if (!r.Get("error").empty()) continue;
    const std::string op = r.Get("op");
    auto bar = [&](const std::string &label, const char *p50, const char *p99) {
      f.bars.push_back(Bar{label, p50 != nullptr ? Field(r, p50) : NAN, p99 != nullptr ? Field(r, p99) : NAN});
    };
    if (opt.mode == "pingpong") {
      bar(op == "busy" ? "busy-polling recv (both sides)" : "blocking recv (both sides)", "p50_us", "p99_us");
    } else if (opt.mode == "async") {
      const std::string n = r.Get("descs"), size = HumanBytes(Count(r, "desc_size"));
      if (op == "batch_sync") bar("one TransferSync of " + n + " x " + size + tr(r), "p50_us", "p99_us");
      if (op == "batch_async")
        bar(n + " TransferAsync of " + size + " in flight, until all completed" + tr(r), "p50_us", "p99_us");
      if (op == "submit_1desc") bar("TransferAsync submit, 1 descriptor" + tr(r), "p50_us", "p99_us");
      if (op == "status_completed") bar("GetTransferStatus of a completed request" + tr(r), "p50_us", "p99_us");
    } else if (opt.mode == "notify") {
      bar("SendNotify -> GetNotifies, one way" + tr(r), "p50_us", "p99_us");
      bar("SendNotify call, to its acknowledgement" + tr(r), "send_p50_us", "send_p99_us");
      if (!reference_done) {  // measured once per run, before the notifies; its median only
        bar("TCP ping-pong 8 B round trip, busy-polling (reference)", "rtt_busy_p50_us", nullptr);
        bar("TCP ping-pong 8 B round trip, blocking (reference)", "rtt_blocking_p50_us", nullptr);
        reference_done = true;
      }
    } else if (opt.mode == "mixed") {
      const std::string small = HumanBytes(Count(r, "small_size"));
      bar(small + " READ alone" + tr(r), "p50_alone_us", "p99_alone_us");
      bar(Format("%s READ while %s threads READ %s each", small.c_str(), r.Get("bulk_threads").c_str(),
                 HumanBytes(Count(r, "bulk_size")).c_str()) +
              tr(r),
          "p50_load_us", "p99_load_us");
    } else if (opt.mode == "peers") {
      const std::string peers = r.Get("peers");
      if (op == "read_4k") {
        const std::string over = " over " + TransportWords(r.Get("read_transport"));
        bar("4K READ" + over + ", no idle peers", "p50_0_us", "p99_0_us");
        bar("4K READ" + over + ", " + peers + " idle peers", "p50_n_us", "p99_n_us");
      }
      if (op == "connect") {  // medians of --connect-samples, in ms
        const std::string median = Format(" (median of %d)", opt.connect_samples);
        f.bars.push_back(Bar{"Connect of a fresh client, no idle peers" + median, Field(r, "first_ms") * 1e3, NAN});
        f.bars.push_back(Bar{"Connect of a fresh client, " + peers + " idle peers" + median,
                             Field(r, "nth_ms") * 1e3, NAN});
      }
    }
  }
  f.bars.erase(std::remove_if(f.bars.begin(), f.bars.end(), [](const Bar &b) { return !(b.p50 > 0) && !(b.p99 > 0); }),
               f.bars.end());
  if (f.bars.empty()) return;
  while (!constant.empty() && (constant.back() == ' ' || constant.back() == ';')) constant.pop_back();
  f.title = title + "\n" + (constant.empty() ? "" : constant + "\n") + HostLine(recs);
  out->push_back(f);
}

std::vector<Figure> Figures(const Options &opt, const std::vector<Record> &recs) {
  std::vector<Figure> figs;
  if (opt.mode == "engine" || opt.mode == "memcpy" || opt.mode == "kv") {
    SweepFigures(opt, recs, &figs);
  } else if (PlotsMode(opt.mode)) {
    BarFigure(opt, recs, &figs);
  }
  return figs;
}

// A gnuplot string constant: double quotes, so "\n" breaks a line.
std::string GpString(const std::string &s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

// Breaks a bar label into lines of about `width` characters.
std::string Wrap(const std::string &text, size_t width) {
  std::string out, line;
  for (const auto &word : SplitOn(text, ' ')) {
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += (out.empty() ? "" : "\n") + line;
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) out += (out.empty() ? "" : "\n") + line;
  return out;
}

// The y range of values: logarithmic when they span more than 20x.
struct YAxis {
  bool log = false;
  double lo = 0, hi = 1;
};
YAxis YAxisOf(const std::vector<double> &values) {
  double lo = INFINITY, hi = 0;
  for (double v : values) {
    if (v > 0 && std::isfinite(v)) {
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  }
  YAxis y;
  if (!(hi > 0)) return y;
  y.log = hi / lo > 20;
  y.lo = y.log ? lo / 2 : 0;
  y.hi = y.log ? hi * 2.5 : hi * 1.2;
  return y;
}

const char *const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// terminal: gnuplot's terminal name and the options that follow its size.
std::string GnuplotScript(const Figure &f, const std::pair<std::string, std::string> &terminal) {
  std::string s = "set encoding utf8\n";
  const bool bars = !f.bars.empty();
  const size_t panels = bars ? 1 : f.panels.size();
  const size_t cols = panels == 1 ? 1 : 2, rows = (panels + 1) / 2;
  // Line figures carry their key under each panel (2 columns), so it never
  // covers a curve: the height grows with its rows.
  size_t entries = 0;
  for (const auto &p : f.panels) {
    const bool p99 = !p.curves.empty() && !p.curves[0].p99.empty();  // one more entry: "dashed: p99"
    entries = std::max(entries, p.curves.size() + (p99 ? 1 : 0));
  }
  const int key_rows = static_cast<int>((entries + 1) / 2);
  int width = static_cast<int>(cols == 1 ? 1200 : 1900);
  int height = static_cast<int>(rows) * (rows == 1 ? 700 : 600) + 22 * key_rows * static_cast<int>(rows);
  if (bars) width = std::max(1100, static_cast<int>(150 * f.bars.size() + 360));
  s += Format("set terminal %s size %d,%d %s\n", terminal.first.c_str(), width, height, terminal.second.c_str());
  s += "set output " + GpString(f.path) + "\n";
  s += "set grid xtics ytics mytics lt 1 lw 1 lc rgb '#dddddd', lt 1 lw 1 lc rgb '#f0f0f0'\n";
  s += "set border lw 1\nset format y '%g'\nset key box lc rgb '#999999' samplen 3 spacing 1.1 Left reverse\n";
  if (bars) {
    std::vector<double> all;
    for (const auto &b : f.bars) all.insert(all.end(), {b.p50, b.p99});
    const YAxis y = YAxisOf(all);
    s += "set title " + GpString(f.title) + "\n";
    s += "set ylabel " + GpString(f.ylabel + (y.log ? " (log scale)" : "")) + "\n";
    s += y.log ? "set logscale y 10\n" : "";
    s += Format("set yrange [%.6g:%.6g]\n", y.lo, y.hi);
    s += Format("set xrange [-0.6:%.1f]\n", static_cast<double>(f.bars.size()) - 0.4);
    s += "set xtics nomirror (";
    for (size_t i = 0; i < f.bars.size(); ++i)
      s += Format("%s%s %zu", i ? ", " : "", GpString(Wrap(f.bars[i].label, 20)).c_str(), i);
    s += ")\nset grid noxtics\nset bmargin 7\nset key outside right top vertical\n";
    // Two bars per group, drawn as boxes from the bottom of the axis (a box
    // from 0 does not exist on a log axis); each carries its value.
    const double w = 0.36, base = y.lo;
    for (int which = 0; which < 2; ++which) {
      s += Format("$b%d << EOD\n", which);
      for (size_t i = 0; i < f.bars.size(); ++i) {
        const double v = which == 0 ? f.bars[i].p50 : f.bars[i].p99;
        if (!(v > 0)) continue;
        const double x = static_cast<double>(i) + (which == 0 ? -w / 2 : w / 2);
        // 3 significant digits, but 38300 rather than 3.83e+04.
        const std::string text = v >= 100 ? Format("%.0f", v) : Format("%.3g", v);
        s += Format("%.4f %.6g %.4f %.4f %.6g %.6g \"%s\"\n", x, v, x - w / 2, x + w / 2, base, v, text.c_str());
      }
      s += "EOD\n";
    }
    s += "plot $b0 using 1:2:3:4:5:6 with boxxyerror fs solid 0.85 noborder lc rgb '#1f77b4' title 'p50 (median)', \\\n"
         "     $b1 using 1:2:3:4:5:6 with boxxyerror fs solid 0.85 noborder lc rgb '#ff7f0e' title 'p99', \\\n"
         "     $b0 using 1:2:7 with labels offset 0,0.7 font ',9' notitle, \\\n"
         "     $b1 using 1:2:7 with labels offset 0,0.7 font ',9' notitle\n";
    return s;
  }
  // Line figure. Colours follow the curve's label, so a curve keeps its
  // colour in every panel.
  std::vector<std::string> labels;
  std::vector<double> xs_all, ys_all;
  for (const auto &p : f.panels)
    for (const auto &c : p.curves) {
      if (std::find(labels.begin(), labels.end(), c.label) == labels.end()) labels.push_back(c.label);
      for (const auto &[x, y] : c.pts) xs_all.push_back(x), ys_all.push_back(y);
      for (const auto &[x, y] : c.p99) ys_all.push_back(y);
    }
  const YAxis y = YAxisOf(ys_all);  // one scale for every panel: panels compare at a glance
  double xlo = *std::min_element(xs_all.begin(), xs_all.end()), xhi = *std::max_element(xs_all.begin(), xs_all.end());
  xlo /= 1.5;
  xhi *= 1.5;
  const bool latency = !f.panels.empty() && !f.panels[0].curves.empty() && !f.panels[0].curves[0].p99.empty();
  s += "set logscale x 2\n" + Format("set xrange [%.6g:%.6g]\n", xlo, xhi);
  s += "set xtics nomirror (";
  for (size_t i = 0; i < f.xtics.size(); ++i)
    s += Format("%s%s %.6g", i ? ", " : "", GpString(f.xtics[i].first).c_str(), f.xtics[i].second);
  s += ")\nset xlabel " + GpString(f.xlabel) + "\n";
  if (!f.x2tics.empty()) {
    s += "set logscale x2 2\n" + Format("set x2range [%.6g:%.6g]\n", xlo, xhi) + "set x2tics (";
    for (size_t i = 0; i < f.x2tics.size(); ++i)
      s += Format("%s%s %.6g", i ? ", " : "", GpString(f.x2tics[i].first).c_str(), f.x2tics[i].second);
    s += ")\nset x2label " + GpString(f.x2label) + "\n";
  }
  s += "set ylabel " + GpString(f.ylabel + (y.log ? " (log scale)" : "")) + "\n";
  s += y.log ? "set logscale y 10\n" : "";
  s += Format("set yrange [%.6g:%.6g]\n", y.lo, y.hi);
  // The bottom margin is set, not left to gnuplot: with the key below, its
  // own would put the key over the x label. Several panels get the same
  // margins all round, so their plot areas line up whatever their titles.
  // (vertical: gnuplot keeps maxrows only when it fills columns; horizontal
  // in the margin would make one long column.)
  s += Format("set key bmargin center vertical maxrows %d\n", std::max(1, key_rows));
  s += Format("set bmargin %d\n", 5 + (key_rows * 5 + 3) / 4);  // tics, label, 1.25 lines per key row
  if (panels > 1) s += "set tmargin 5\nset lmargin 12\nset rmargin 4\n";
  if (panels > 1) {
    s += Format("set multiplot layout %zu,%zu title %s\n", rows, cols, GpString(f.title).c_str());
  } else {
    s += "set title " + GpString(f.title) + "\n";
  }
  int block = 0;
  for (const auto &p : f.panels) {
    if (panels > 1) s += "set title " + GpString(p.title) + "\n";
    std::string plot;
    for (const auto &c : p.curves) {
      const size_t k = static_cast<size_t>(std::find(labels.begin(), labels.end(), c.label) - labels.begin());
      const std::string colour = kColors[k % (sizeof(kColors) / sizeof(kColors[0]))];
      const int point = 5 + 2 * static_cast<int>(k % 4);  // filled square, circle, triangle, diamond
      s += Format("$d%d << EOD\n", block);
      for (size_t i = 0; i < c.pts.size(); ++i)
        s += Format("%.6g %.6g %.6g\n", c.pts[i].first, c.pts[i].second, i < c.p99.size() ? c.p99[i].second : NAN);
      s += "EOD\n";
      plot += Format("%s$d%d using 1:2 with linespoints lw 2 pt %d ps 1.2 lc rgb '%s' title %s",
                     plot.empty() ? "" : ", \\\n     ", block, point, colour.c_str(),
                     GpString(c.label).c_str());
      if (latency)
        plot += Format(", \\\n     $d%d using 1:3 with linespoints lw 1.5 dt 2 pt %d ps 0.8 lc rgb '%s' notitle", block,
                       point - 1, colour.c_str());
      ++block;
    }
    if (latency)
      plot += ", \\\n     NaN with lines lw 1.5 dt 2 lc rgb '#555555' title 'dashed: p99 of the same colour'";
    s += "plot " + plot + "\n";
  }
  if (panels > 1) s += "unset multiplot\n";
  return s;
}

// Runs gnuplot on the figure's script; "" or the reason it failed. A
// gnuplot without cairo gets the libgd png terminal instead.
std::string RenderFigure(const Figure &f) {
  const size_t dot = f.path.rfind('.');
  const std::string ext = dot == std::string::npos ? "" : f.path.substr(dot);
  std::vector<std::pair<std::string, std::string>> terminals;
  if (ext == ".svg" || ext == ".SVG") {
    terminals = {{"svg", "dynamic background rgb 'white' font 'Sans,10' noenhanced"}};
  } else {
    terminals = {{"pngcairo", "font 'Sans,10' noenhanced"}, {"png", "font 'Sans,10' noenhanced"}};
  }
  std::string why;
  for (const auto &terminal : terminals) {
    char script_path[] = "/tmp/llmdd_bench_plot_XXXXXX";
    const int fd = mkstemp(script_path);
    if (fd < 0) return std::string("cannot create a temporary file: ") + strerror(errno);
    WriteAll(fd, GnuplotScript(f, terminal));
    close(fd);
    const std::string log_path = std::string(script_path) + ".log";
    // gnuplot's stdout and stderr go to a file: stdout carries the JSON lines.
    const int rc = system(("gnuplot " + std::string(script_path) + " > " + log_path + " 2>&1").c_str());
    std::string first;
    if (FILE *l = fopen(log_path.c_str(), "r")) {
      char buf[512];
      while (fgets(buf, sizeof(buf), l) != nullptr) {
        std::string line(buf);
        while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
        if (!line.empty() && line.find_first_not_of(" ^") != std::string::npos) first = line;  // the last message
      }
      fclose(l);
    }
    unlink(log_path.c_str());
    unlink(script_path);
    if (rc == 0) return "";
    why = first.empty() ? Format("gnuplot exited with status %d", rc) : "gnuplot: " + first;
  }
  return why;
}

// Said at the start of the run, so a user does not wait for a plot that will
// not come; false when no plot will be drawn.
bool CheckPlot(const Options &opt, Reporter &rep) {
  if (opt.plot.empty()) return false;
  if (!PlotsMode(opt.mode)) {
    rep.Note("plot: overhead's figures are single costs in several units; no plot (--plot draws engine, memcpy, "
             "kv, pingpong, async, notify, mixed and peers)");
    return false;
  }
  if (!HaveProgram("gnuplot")) {
    rep.Note("plot: gnuplot is not installed (bash scripts/setup.sh bench); this run writes no plot");
    return false;
  }
  const size_t slash = opt.plot.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : opt.plot.substr(0, slash);
  if (access(dir.c_str(), W_OK) != 0) {
    rep.Note("plot: cannot write in " + dir + " (" + strerror(errno) + "); this run writes no plot");
    return false;
  }
  return true;
}

void Plot(const Options &opt, Reporter &rep) {
  const std::vector<Figure> figs = Figures(opt, rep.records());
  if (figs.empty()) {
    rep.Note("plot: no figure without errors to plot; no plot written");
    return;
  }
  std::vector<std::string> wrote;
  for (const auto &f : figs) {
    const std::string why = RenderFigure(f);
    if (why.empty()) {
      wrote.push_back(f.path + " (" + f.what + ")");
    } else {
      rep.Note("plot: " + f.path + " not written: " + why);
    }
  }
  if (!wrote.empty()) rep.Note("plot: wrote " + Join(wrote, ", "));
}

void PrintMachine(const Options &opt, Reporter &rep) {
  utsname u{};
  uname(&u);
  rep.Note(Format("# llmdd_bench %s on %u cpus (%s), kernel %s, load %.2f", opt.mode.c_str(),
                  std::thread::hardware_concurrency(), CpuModel().c_str(), u.release, Load1()));
}

}  // namespace

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc >= 2 && std::string(argv[1]) == "serve") return ServeMain(argc, argv);
  if (getenv("LLMDD_LOG_LEVEL") == nullptr) setenv("LLMDD_LOG_LEVEL", "error", 0);
  Options opt;
  int rc = ParseArgs(argc, argv, &opt);
  if (rc != kExitOk) return rc;
  Reporter rep(opt);
  PrintMachine(opt, rep);
  const bool plot = CheckPlot(opt, rep);
  if (opt.mode == "engine") rc = RunEngine(opt, rep);
  if (opt.mode == "kv") rc = RunKv(opt, rep);
  if (opt.mode == "memcpy") rc = RunMemcpy(opt, rep);
  if (opt.mode == "cma") rc = RunCma(opt, rep);
  if (opt.mode == "pingpong") rc = RunPingPong(opt, rep);
  if (opt.mode == "overhead") rc = RunOverhead(opt, rep);
  if (opt.mode == "peers") rc = RunPeers(opt, rep);
  if (opt.mode == "mixed") rc = RunMixed(opt, rep);
  if (opt.mode == "async") rc = RunAsync(opt, rep);
  if (opt.mode == "notify") rc = RunNotify(opt, rep);
  rep.Finish();
  if (plot) Plot(opt, rep);
  return rc;
}
