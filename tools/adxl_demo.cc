// adxl_demo: a two-process ADXL demo and bandwidth sweep over the public API.
//
//   adxl_demo [both] [options]           fork/exec a server, run the client here (default)
//   adxl_demo server [--listen IP:PORT] [--size BYTES]
//   adxl_demo client [--connect IP:PORT] [--remote-addr HEX --remote-len N]
//
// ADXL has no discovery, so the server publishes its registered buffer out of
// band: it prints "ADDR 0x<hex> <len>" and then "READY" on stdout, and serves
// until it reads "QUIT" (or end of file) on stdin. In `both` mode the parent
// reads those lines through a pipe; a standalone client takes --remote-addr /
// --remote-len, or reads the ADDR line from its own stdin.
//
// The server fills its buffer with a known pattern. The client first READs it
// back and checks every byte, then for each descriptor size WRITEs a fresh
// pattern with a reversed block mapping (local block i -> remote block n-1-i),
// has the server check its memory (both mode), READs the range back with the
// identity mapping and checks every byte again. Each phase runs one untimed
// warm-up and N timed TransferSync calls; the table shows medians. At the end
// the client writes the server's pattern back (and checks it), so a standalone
// server can serve one client after another.
#include <adxl/adxl_engine.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tool_util.h"

namespace {

// Passes the engine's log on as the user's LLMDD_LOG_LEVEL would, and learns
// from it which path the connection took (tool_util.h). Client side only.
llmdd_tools::LogTap g_tap;

using adxl::AdxlEngine;
using adxl::Status;
using adxl::TransferOpDesc;

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;
constexpr uint64_t kServerSeed = 0x5EEDC0DEULL;
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

// ------------------------------------------------------------------ options

struct Options {
  std::string mode = "both";
  std::string listen;              // server: engine id to listen on
  std::string connect;             // client: server engine id
  std::string local;               // client: own engine id (default: derived)
  uint64_t size = 0;               // server buffer bytes (0 = same as total)
  uint64_t total = 256 * kMiB;     // bytes moved per TransferSync call (upper bound)
  uint64_t max_descs = 16384;      // descriptors per call (upper bound)
  std::vector<uint64_t> sizes;     // descriptor sizes
  int iterations = 5;              // timed calls per (op, size)
  int connections = 0;             // llmdd.TcpConnections (0 = engine default)
  std::string transport;           // llmdd.Transport (empty = engine default, auto)
  int timeout_ms = 30000;          // per TransferSync / Connect call
  bool quick = false;
  uintptr_t remote_addr = 0;       // client: server buffer, when not read from stdin
  uint64_t remote_len = 0;
};

void Usage(FILE *out) {
  fprintf(out,
          "usage: adxl_demo [both|server|client] [options]\n"
          "  both (default)        run a server process and a client against it, verify, print a table\n"
          "  server                --listen IP:PORT (default 127.0.0.1:26000) --size BYTES\n"
          "                        prints 'ADDR 0x<hex> <len>' and 'READY'; serves until QUIT/EOF on stdin\n"
          "  client                --connect IP:PORT (default 127.0.0.1:26000)\n"
          "                        --remote-addr HEX --remote-len BYTES (else an ADDR line is read from stdin)\n"
          "                        --local ID (own engine id; default: the local IP that reaches the server)\n"
          "options:\n"
          "  --quick               small totals and fewer iterations (CI)\n"
          "  --total BYTES         bytes per TransferSync call (default 256M, quick 32M)\n"
          "  --sizes LIST          descriptor sizes, e.g. 4K,64K,1M,4M,16M (multiples of 8)\n"
          "  --max-descs N         cap on descriptors per call (default 16384)\n"
          "  --iterations N        timed calls per row after one warm-up (default 5, quick 3)\n"
          "  --connections N       passes llmdd.TcpConnections=N to Initialize\n"
          "  --transport T         passes llmdd.Transport=T (auto, tcp, shm, ucx) to Initialize\n"
          "  --timeout-ms N        timeout of each Connect/TransferSync call (default 30000)\n"
          "  --version             print the library version and exit\n"
          "BYTES take an optional K, M or G suffix (powers of 1024).\n");
}

bool ParseBytes(const std::string &text, uint64_t *out) {
  if (text.empty()) return false;
  char *end = nullptr;
  errno = 0;
  unsigned long long value = strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || text[0] == '-') return false;
  uint64_t mult = 1;
  std::string suffix(end);
  if (suffix == "K" || suffix == "k" || suffix == "KiB") mult = kKiB;
  else if (suffix == "M" || suffix == "m" || suffix == "MiB") mult = kMiB;
  else if (suffix == "G" || suffix == "g" || suffix == "GiB") mult = kMiB * 1024;
  else if (!suffix.empty()) return false;
  if (value > UINT64_MAX / mult) return false;
  *out = value * mult;
  return true;
}

bool ParseInt(const std::string &text, int min, int max, int *out) {
  char *end = nullptr;
  errno = 0;
  long value = strtol(text.c_str(), &end, 10);
  if (errno != 0 || text.empty() || *end != '\0' || value < min || value > max) return false;
  *out = static_cast<int>(value);
  return true;
}

std::string HumanBytes(uint64_t bytes) {
  char buf[32];
  if (bytes >= kMiB && bytes % kMiB == 0) snprintf(buf, sizeof(buf), "%" PRIu64 " MiB", bytes / kMiB);
  else if (bytes >= kKiB && bytes % kKiB == 0) snprintf(buf, sizeof(buf), "%" PRIu64 " KiB", bytes / kKiB);
  else snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  return buf;
}

// Returns kExitOk, or kExitUsage after printing why.
int ParseArgs(int argc, char **argv, Options *opt) {
  int i = 1;
  if (i < argc && argv[i][0] != '-') opt->mode = argv[i++];
  if (opt->mode != "both" && opt->mode != "server" && opt->mode != "client") {
    fprintf(stderr, "adxl_demo: unknown mode '%s'\n", opt->mode.c_str());
    Usage(stderr);
    return kExitUsage;
  }
  bool total_given = false, iterations_given = false, sizes_given = false;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](std::string *v) {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    std::string v;
    bool ok = true;
    if (arg == "-h" || arg == "--help") {
      Usage(stdout);
      exit(kExitOk);
    } else if (arg == "--version") {
      llmdd_tools::PrintVersion("adxl_demo");
      exit(kExitOk);
    } else if (arg == "--quick") {
      opt->quick = true;
    } else if (arg == "--listen") {
      ok = value(&opt->listen);
    } else if (arg == "--connect") {
      ok = value(&opt->connect);
    } else if (arg == "--local") {
      ok = value(&opt->local);
    } else if (arg == "--size") {
      ok = value(&v) && ParseBytes(v, &opt->size) && opt->size >= 8;
    } else if (arg == "--total") {
      ok = value(&v) && ParseBytes(v, &opt->total) && opt->total >= 8;
      total_given = true;
    } else if (arg == "--max-descs") {
      ok = value(&v) && ParseBytes(v, &opt->max_descs) && opt->max_descs >= 1;
    } else if (arg == "--iterations") {
      ok = value(&v) && ParseInt(v, 1, 100000, &opt->iterations);
      iterations_given = true;
    } else if (arg == "--transport") {
      ok = value(&v);
      opt->transport = v;
    } else if (arg == "--connections") {
      ok = value(&v) && ParseInt(v, 1, 1024, &opt->connections);
    } else if (arg == "--timeout-ms") {
      ok = value(&v) && ParseInt(v, 1, INT32_MAX, &opt->timeout_ms);
    } else if (arg == "--sizes") {
      ok = value(&v);
      sizes_given = true;
      opt->sizes.clear();
      size_t start = 0;
      while (ok && start <= v.size()) {
        size_t comma = v.find(',', start);
        std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        uint64_t bytes = 0;
        ok = ParseBytes(item, &bytes) && bytes >= 8 && bytes % 8 == 0;
        if (ok) opt->sizes.push_back(bytes);
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else if (arg == "--remote-addr") {
      ok = value(&v);
      if (ok) {
        char *end = nullptr;
        opt->remote_addr = static_cast<uintptr_t>(strtoull(v.c_str(), &end, 16));
        ok = *end == '\0' && opt->remote_addr != 0;
      }
    } else if (arg == "--remote-len") {
      ok = value(&v) && ParseBytes(v, &opt->remote_len);
    } else {
      fprintf(stderr, "adxl_demo: unknown option '%s'\n", arg.c_str());
      Usage(stderr);
      return kExitUsage;
    }
    if (!ok) {
      fprintf(stderr, "adxl_demo: bad or missing value for %s\n", arg.c_str());
      return kExitUsage;
    }
  }
  if (opt->quick) {
    if (!total_given) opt->total = 32 * kMiB;
    if (!iterations_given) opt->iterations = 3;
  }
  if (!sizes_given) {
    opt->sizes = opt->quick ? std::vector<uint64_t>{4 * kKiB, 64 * kKiB, 4 * kMiB}
                            : std::vector<uint64_t>{4 * kKiB, 64 * kKiB, kMiB, 4 * kMiB, 16 * kMiB};
  }
  if (opt->listen.empty()) opt->listen = "127.0.0.1:26000";
  if (opt->connect.empty()) opt->connect = "127.0.0.1:26000";
  if (opt->size == 0) opt->size = opt->total;
  return kExitOk;
}

// ------------------------------------------------------------------ helpers

// Lines for the table and the verdict go to stdout; flush so the parent and
// pipes see them in order.
void Say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void Say(const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vfprintf(stdout, fmt, args);
  va_end(args);
  fputc('\n', stdout);
  fflush(stdout);
}

const char *StatusName(Status s) { return llmdd_ext::StatusName(s); }

// Checks one Status; prints a FAILED line with the number and name otherwise.
bool Ok(Status s, const std::string &what) {
  if (s == adxl::SUCCESS) return true;
  Say("FAILED: %s returned status %u (%s)", what.c_str(), s, StatusName(s));
  return false;
}

const char *OpName(adxl::TransferOp op) { return op == adxl::READ ? "READ" : "WRITE"; }

// Deterministic 64-bit pattern: word `index` of the stream named `seed`.
inline uint64_t PatternWord(uint64_t seed, uint64_t index) {
  uint64_t z = (index + 1) * 0x9E3779B97F4A7C15ULL ^ seed * 0xD1B54A32D192ED03ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Fills `len` bytes (a multiple of 8) with words first_word, first_word+1, ... of `seed`.
void FillPattern(uint8_t *p, uint64_t len, uint64_t seed, uint64_t first_word) {
  for (uint64_t w = 0; w < len / 8; ++w) {
    uint64_t v = PatternWord(seed, first_word + w);
    memcpy(p + w * 8, &v, 8);
  }
}

// Returns the offset of the first byte that differs from the pattern, or -1.
int64_t FindMismatch(const uint8_t *p, uint64_t len, uint64_t seed, uint64_t first_word, uint64_t *expected,
                     uint64_t *got) {
  for (uint64_t w = 0; w < len / 8; ++w) {
    uint64_t want = PatternWord(seed, first_word + w);
    uint64_t have;
    memcpy(&have, p + w * 8, 8);
    if (have != want) {
      *expected = want;
      *got = have;
      return static_cast<int64_t>(w * 8);
    }
  }
  return -1;
}

// After a reversed-block WRITE of seed's stream (local block i -> remote block
// n-1-i, block = d bytes), remote block j holds words starting at (n-1-j)*d/8.
// Checks `n` blocks of `d` bytes at p laid out like the remote; "" when all match.
std::string CheckReversedBlocks(const uint8_t *p, uint64_t seed, uint64_t d, uint64_t n) {
  for (uint64_t j = 0; j < n; ++j) {
    uint64_t expected = 0, got = 0;
    int64_t at = FindMismatch(p + j * d, d, seed, (n - 1 - j) * d / 8, &expected, &got);
    if (at >= 0) {
      char buf[200];
      snprintf(buf, sizeof(buf), "block %" PRIu64 " of %" PRIu64 ", byte offset %" PRIu64
               ": expected word 0x%016" PRIx64 ", found 0x%016" PRIx64,
               j, n, j * d + static_cast<uint64_t>(at), expected, got);
      return buf;
    }
  }
  return "";
}

// Page-aligned anonymous memory, returned to the system on destruction.
class Buffer {
 public:
  explicit Buffer(uint64_t len) : len_(len) {
    void *p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    madvise(p, len, MADV_HUGEPAGE);  // best effort
    data_ = static_cast<uint8_t *>(p);
    memset(data_, 0, len);  // fault the pages in before anything is timed
  }
  ~Buffer() {
    if (data_ != nullptr) munmap(data_, len_);
  }
  Buffer(const Buffer &) = delete;
  Buffer &operator=(const Buffer &) = delete;
  uint8_t *data() const { return data_; }
  uintptr_t addr() const { return reinterpret_cast<uintptr_t>(data_); }
  uint64_t len() const { return len_; }

 private:
  uint8_t *data_ = nullptr;
  uint64_t len_;
};

std::map<adxl::AscendString, adxl::AscendString> EngineOptions(const Options &opt) {
  std::map<adxl::AscendString, adxl::AscendString> options;
  if (opt.connections > 0) options["llmdd.TcpConnections"] = std::to_string(opt.connections).c_str();
  if (!opt.transport.empty()) options["llmdd.Transport"] = opt.transport.c_str();
  return options;
}

// Reads whole lines from a file descriptor with a deadline.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // 1: got a line (without '\n'); 0: timed out; -1: end of file or error.
  int ReadLine(std::string *line, int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return 1;
      }
      if (eof_) {
        if (buf_.empty()) return -1;
        *line = buf_;
        buf_.clear();
        return 1;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return 0;
      pollfd pfd{fd_, POLLIN, 0};
      int rc = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
      if (rc < 0 && errno != EINTR) return -1;
      if (rc <= 0) continue;
      char chunk[4096];
      ssize_t n = read(fd_, chunk, sizeof(chunk));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) eof_ = true;
      else buf_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};

// ------------------------------------------------------------------ server

volatile sig_atomic_t g_stop = 0;
void OnStopSignal(int) { g_stop = 1; }

// Handles one command line from stdin; returns false on QUIT.
bool ServeCommand(const std::string &line, const Buffer &buf) {
  if (line == "QUIT") return false;
  unsigned long long seed = 0, d = 0, n = 0;
  if (sscanf(line.c_str(), "CHECK %llu %llu %llu", &seed, &d, &n) == 3) {
    if (d == 0 || d % 8 != 0 || n == 0 || d * n > buf.len()) {
      Say("CHECK FAILED bad arguments '%s'", line.c_str());
    } else {
      std::string why = CheckReversedBlocks(buf.data(), seed, d, n);
      if (why.empty()) Say("CHECK OK %llu bytes", d * n);
      else Say("CHECK FAILED %s", why.c_str());
    }
    return true;
  }
  if (!line.empty()) Say("server: ignoring unknown command '%s'", line.c_str());
  return true;
}

int RunServer(const Options &opt) {
  struct sigaction sa {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);  // no SA_RESTART: poll() returns EINTR
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Buffer buf(opt.size);
  if (buf.data() == nullptr) {
    Say("FAILED: server could not allocate %" PRIu64 " bytes", opt.size);
    return kExitFailed;
  }
  FillPattern(buf.data(), buf.len() / 8 * 8, kServerSeed, 0);

  AdxlEngine engine;
  if (!Ok(engine.Initialize(opt.listen.c_str(), EngineOptions(opt)), "server Initialize(" + opt.listen + ")"))
    return kExitFailed;
  adxl::MemDesc mem{};
  mem.addr = buf.addr();
  mem.len = buf.len();
  adxl::MemHandle handle = nullptr;
  if (!Ok(engine.RegisterMem(mem, adxl::MEM_HOST, handle), "server RegisterMem")) {
    engine.Finalize();
    return kExitFailed;
  }
  Say("ADDR 0x%" PRIxPTR " %" PRIu64, buf.addr(), buf.len());
  Say("READY");

  LineReader in(STDIN_FILENO);
  std::string line;
  while (!g_stop) {
    int rc = in.ReadLine(&line, 200);
    if (rc < 0) break;  // stdin closed: the controlling process is gone
    if (rc > 0 && !ServeCommand(line, buf)) break;
  }
  alarm(30);  // never linger: if shutdown hangs, SIGALRM ends the process
  bool ok = Ok(engine.DeregisterMem(handle), "server DeregisterMem");
  engine.Finalize();
  Say("server: %s, finalized", g_stop ? "stopped by signal" : "quit");
  return ok ? kExitOk : kExitFailed;
}

// ------------------------------------------------------------------ client

// Sends a command to the server and returns its reply line (both mode only).
using ServerControl = std::function<bool(const std::string &command, std::string *reply)>;

// The local address the kernel would use to reach `remote` (no packet is sent).
std::string LocalIpFor(const std::string &remote) {
  bool v6 = !remote.empty() && remote[0] == '[';
  std::string host = remote;
  if (v6) host = remote.substr(1, remote.find(']') - 1);
  else if (remote.find(':') != std::string::npos) host = remote.substr(0, remote.find(':'));
  std::string fallback = v6 ? "[::1]" : "127.0.0.1";
  int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fallback;
  sockaddr_storage ss{};
  socklen_t len;
  if (v6) {
    auto *sa = reinterpret_cast<sockaddr_in6 *>(&ss);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(9);
    len = sizeof(*sa);
    if (inet_pton(AF_INET6, host.c_str(), &sa->sin6_addr) != 1) len = 0;
  } else {
    auto *sa = reinterpret_cast<sockaddr_in *>(&ss);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(9);
    len = sizeof(*sa);
    if (inet_pton(AF_INET, host.c_str(), &sa->sin_addr) != 1) len = 0;
  }
  std::string result = fallback;
  if (len != 0 && connect(fd, reinterpret_cast<sockaddr *>(&ss), len) == 0) {
    sockaddr_storage local{};
    socklen_t local_len = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {};
    if (getsockname(fd, reinterpret_cast<sockaddr *>(&local), &local_len) == 0) {
      const void *addr = v6 ? static_cast<const void *>(&reinterpret_cast<sockaddr_in6 *>(&local)->sin6_addr)
                            : static_cast<const void *>(&reinterpret_cast<sockaddr_in *>(&local)->sin_addr);
      if (inet_ntop(v6 ? AF_INET6 : AF_INET, addr, text, sizeof(text)) != nullptr)
        result = v6 ? "[" + std::string(text) + "]" : std::string(text);
    }
  }
  close(fd);
  return result;
}

struct Row {
  const char *op;
  uint64_t desc_size;
  uint64_t descs;
  double median_s;
  double best_s;
};

class Client {
 public:
  Client(const Options &opt, uintptr_t remote_addr, uint64_t remote_len, ServerControl server)
      : opt_(opt), remote_addr_(remote_addr), remote_len_(remote_len), server_(std::move(server)),
        remote_(opt.connect.c_str()) {}

  int Run() {
    uint64_t span = std::min(opt_.total, remote_len_) / 8 * 8;
    if (span == 0) {
      Say("FAILED: remote buffer of %" PRIu64 " bytes is too small", remote_len_);
      return kExitFailed;
    }
    std::string local = opt_.local.empty() ? LocalIpFor(opt_.connect) : opt_.local;
    Say("client: engine '%s' -> server '%s', remote buffer 0x%" PRIxPTR " (%s), up to %s per call, "
        "%d timed iteration(s) after 1 warm-up%s",
        local.c_str(), opt_.connect.c_str(), remote_addr_, HumanBytes(remote_len_).c_str(), HumanBytes(span).c_str(),
        opt_.iterations, opt_.connections > 0 ? (", llmdd.TcpConnections=" + std::to_string(opt_.connections)).c_str()
                                               : "");
    Buffer src(span), dst(span);
    if (src.data() == nullptr || dst.data() == nullptr) {
      Say("FAILED: client could not allocate 2 x %" PRIu64 " bytes", span);
      return kExitFailed;
    }
    if (!Ok(engine_.Initialize(local.c_str(), EngineOptions(opt_)), "client Initialize(" + local + ")"))
      return kExitFailed;
    bool ok = Body(src, dst, span);
    // Tear down in the documented order even after a failure.
    if (connected_) ok = Ok(engine_.Disconnect(remote_, opt_.timeout_ms), "Disconnect") && ok;
    for (adxl::MemHandle h : handles_) ok = Ok(engine_.DeregisterMem(h), "client DeregisterMem") && ok;
    engine_.Finalize();
    return ok ? kExitOk : kExitFailed;
  }

  const std::vector<Row> &rows() const { return rows_; }
  const std::string &path() const { return path_; }

  static const char *PathText(const std::string &path) {
    if (path == "same-host") return "same-host path (one copy between the processes, process_vm_readv/writev)";
    if (path == "tcp") return "TCP path (sockets)";
    return "path the engine did not log (unknown)";
  }

 private:
  bool Register(const Buffer &b, const char *name) {
    adxl::MemDesc mem{};
    mem.addr = b.addr();
    mem.len = b.len();
    adxl::MemHandle h = nullptr;
    if (!Ok(engine_.RegisterMem(mem, adxl::MEM_HOST, h), std::string("RegisterMem(") + name + ")")) return false;
    handles_.push_back(h);
    return true;
  }

  bool Transfer(adxl::TransferOp op, const std::vector<TransferOpDesc> &descs, const std::string &what) {
    return Ok(engine_.TransferSync(remote_, op, descs, opt_.timeout_ms), std::string("TransferSync ") + OpName(op) +
                                                                              " " + what);
  }

  // One warm-up, then opt_.iterations timed calls.
  bool Timed(adxl::TransferOp op, uint64_t d, const std::vector<TransferOpDesc> &descs) {
    std::string what = std::to_string(descs.size()) + " x " + HumanBytes(d);
    if (!Transfer(op, descs, what + " (warm-up)")) return false;
    std::vector<double> secs;
    for (int it = 0; it < opt_.iterations; ++it) {
      auto t0 = std::chrono::steady_clock::now();
      if (!Transfer(op, descs, what)) return false;
      secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(secs.begin(), secs.end());
    size_t m = secs.size();
    double median = m % 2 ? secs[m / 2] : (secs[m / 2 - 1] + secs[m / 2]) / 2;
    rows_.push_back(Row{OpName(op), d, descs.size(), median, secs.front()});
    return true;
  }

  bool Body(const Buffer &src, const Buffer &dst, uint64_t span) {
    if (!Register(src, "source") || !Register(dst, "destination")) return false;
    if (!Ok(engine_.Connect(remote_, opt_.timeout_ms), "Connect(" + opt_.connect + ")")) return false;
    connected_ = true;
    path_ = g_tap.PathTo(opt_.connect);
    Say("client: connected; the bytes move over the %s (llmdd.Transport=%s)", PathText(path_),
        opt_.transport.empty() ? "auto" : opt_.transport.c_str());
    if (!CheckServerPattern(dst, span, "initial") || !CheckContract(dst)) return false;
    for (uint64_t d : opt_.sizes) {
      uint64_t n = std::min(span / d, opt_.max_descs);
      if (n == 0) {
        Say("note: skipping %s descriptors, larger than the %s span", HumanBytes(d).c_str(), HumanBytes(span).c_str());
        continue;
      }
      if (!SweepOne(src, dst, d, n)) return false;
    }
    Say("check: %s written and %s read back across the sweep, every byte compared%s",
        HumanBytes(verified_bytes_ / 2).c_str(), HumanBytes(verified_bytes_ / 2).c_str(),
        server_ ? " (WRITEs also checked by the server)" : "");
    return RestoreServerPattern(src, dst, span);
  }

  // 1 MiB descriptors over [0, span) with the identity mapping.
  std::vector<TransferOpDesc> IdentityDescs(const Buffer &local, uint64_t span) const {
    uint64_t d = std::min<uint64_t>(kMiB, span);
    std::vector<TransferOpDesc> descs;
    for (uint64_t off = 0; off < span; off += d)
      descs.push_back({local.addr() + off, remote_addr_ + off, std::min(d, span - off)});
    return descs;
  }

  // READs [0, span) of the server's buffer and compares it with the pattern the
  // server filled it with. First thing after Connect it checks READ against data
  // that only the other process wrote.
  bool CheckServerPattern(const Buffer &dst, uint64_t span, const char *when) {
    memset(dst.data(), 0, span);
    if (!Transfer(adxl::READ, IdentityDescs(dst, span), std::string("of the server's ") + when + " pattern"))
      return false;
    uint64_t expected = 0, got = 0;
    int64_t at = FindMismatch(dst.data(), span, kServerSeed, 0, &expected, &got);
    if (at >= 0) {
      Say("FAILED: READ of the server's %s pattern: byte %" PRId64 " differs: expected word 0x%016" PRIx64
          ", found 0x%016" PRIx64 "%s",
          when, at, expected, got,
          server_ ? "" : " (a standalone server keeps what an interrupted client wrote: restart it)");
      return false;
    }
    Say("check: READ of the server's %s pattern (%s): all bytes correct", when, HumanBytes(span).c_str());
    return true;
  }

  // Puts the server's pattern back so that the next client finds what it expects.
  bool RestoreServerPattern(const Buffer &src, const Buffer &dst, uint64_t span) {
    FillPattern(src.data(), span, kServerSeed, 0);
    if (!Transfer(adxl::WRITE, IdentityDescs(src, span), "restoring the server's pattern")) return false;
    return CheckServerPattern(dst, span, "restored");
  }

  // Documented statuses the demo relies on: an empty batch is a no-op, a remote
  // range outside the server's registration is PARAM_INVALID and touches nothing.
  bool CheckContract(const Buffer &dst) {
    if (!Ok(engine_.TransferSync(remote_, adxl::WRITE, {}, opt_.timeout_ms), "TransferSync of an empty batch"))
      return false;
    memset(dst.data(), 0xA5, 64);
    std::vector<TransferOpDesc> outside = {{dst.addr(), remote_addr_ + remote_len_ - 16, 64}};
    // Both engines log this refusal (the server a warning, this side an
    // error): the tap shows those lines marked as expected.
    g_tap.BeginExpected();
    Status s = engine_.TransferSync(remote_, adxl::READ, outside, opt_.timeout_ms);
    g_tap.EndExpected();
    if (s != adxl::PARAM_INVALID) {
      Say("FAILED: READ past the end of the remote registration returned status %u (%s), expected %u (PARAM_INVALID)",
          s, StatusName(s), adxl::PARAM_INVALID);
      return false;
    }
    for (int i = 0; i < 64; ++i) {
      if (dst.data()[i] != 0xA5) {
        Say("FAILED: rejected READ still wrote local byte %d", i);
        return false;
      }
    }
    Say("check: empty batch -> SUCCESS; out-of-range remote -> %u (PARAM_INVALID), nothing written "
        "(the refusal's log lines are expected)", s);
    return true;
  }

  bool SweepOne(const Buffer &src, const Buffer &dst, uint64_t d, uint64_t n) {
    const uint64_t seed = ++seed_counter_ * 0x100000001ULL;
    const uint64_t bytes = n * d;
    FillPattern(src.data(), bytes, seed, 0);

    // WRITE local block i -> remote block n-1-i.
    std::vector<TransferOpDesc> descs(n);
    for (uint64_t i = 0; i < n; ++i) descs[i] = {src.addr() + i * d, remote_addr_ + (n - 1 - i) * d, d};
    if (!Timed(adxl::WRITE, d, descs)) return false;
    if (server_) {
      std::string reply;
      std::string cmd = "CHECK " + std::to_string(seed) + " " + std::to_string(d) + " " + std::to_string(n);
      if (!server_(cmd, &reply)) {
        Say("FAILED: no answer from the server to '%s'", cmd.c_str());
        return false;
      }
      if (reply.rfind("CHECK OK", 0) != 0) {
        Say("FAILED: WRITE %s x %" PRIu64 ": server-side check: %s", HumanBytes(d).c_str(), n, reply.c_str());
        return false;
      }
    }

    // READ remote block i -> local block i, into a cleared destination.
    memset(dst.data(), 0, bytes);
    for (uint64_t i = 0; i < n; ++i) descs[i] = {dst.addr() + i * d, remote_addr_ + i * d, d};
    if (!Timed(adxl::READ, d, descs)) return false;
    std::string why = CheckReversedBlocks(dst.data(), seed, d, n);
    if (!why.empty()) {
      Say("FAILED: READ %s x %" PRIu64 " after WRITE: %s", HumanBytes(d).c_str(), n, why.c_str());
      return false;
    }
    verified_bytes_ += 2 * bytes;
    return true;
  }

  const Options &opt_;
  uintptr_t remote_addr_;
  uint64_t remote_len_;
  ServerControl server_;
  adxl::AscendString remote_;
  AdxlEngine engine_;
  std::vector<adxl::MemHandle> handles_;
  bool connected_ = false;
  uint64_t seed_counter_ = 0;
  uint64_t verified_bytes_ = 0;
  std::string path_;
  std::vector<Row> rows_;
};

void PrintTable(const std::vector<Row> &rows) {
  Say("%-6s %10s %12s %10s %14s %12s %16s", "op", "desc_size", "descs/batch", "total_MiB", "GB/s(median)",
      "GB/s(best)", "ms/call(median)");
  for (const Row &r : rows) {
    double bytes = static_cast<double>(r.desc_size * r.descs);
    Say("%-6s %10s %12" PRIu64 " %10.1f %14.2f %12.2f %16.3f", r.op, HumanBytes(r.desc_size).c_str(), r.descs,
        bytes / kMiB, bytes / r.median_s / 1e9, bytes / r.best_s / 1e9, r.median_s * 1e3);
  }
}

// Parses "ADDR 0x<hex> <len>".
bool ParseAddrLine(const std::string &line, uintptr_t *addr, uint64_t *len) {
  unsigned long long a = 0, l = 0;
  if (sscanf(line.c_str(), "ADDR %llx %llu", &a, &l) != 2 || a == 0 || l == 0) return false;
  *addr = static_cast<uintptr_t>(a);
  *len = l;
  return true;
}

int RunClient(const Options &opt, uintptr_t remote_addr, uint64_t remote_len, ServerControl server) {
  Client client(opt, remote_addr, remote_len, std::move(server));
  int rc = client.Run();
  if (!client.rows().empty()) {
    PrintTable(client.rows());
    Say("moved over the %s; load average (1 min) now %s", Client::PathText(client.path()),
        llmdd_tools::LoadNow().c_str());
  }
  return rc;
}

int RunStandaloneClient(Options opt) {
  signal(SIGPIPE, SIG_IGN);
  if (opt.remote_addr == 0 || opt.remote_len == 0) {
    Say("client: reading the server's 'ADDR 0x<hex> <len>' line from stdin");
    LineReader in(STDIN_FILENO);
    std::string line;
    bool found = false;
    while (!found && in.ReadLine(&line, 3600 * 1000) > 0)
      found = ParseAddrLine(line, &opt.remote_addr, &opt.remote_len);
    if (!found) {
      Say("FAILED: no ADDR line on stdin (or pass --remote-addr and --remote-len)");
      return kExitFailed;
    }
  }
  int rc = RunClient(opt, opt.remote_addr, opt.remote_len, nullptr);
  Say(rc == kExitOk ? "VERIFIED: all bytes correct" : "FAILED: see above");
  return rc;
}

// ------------------------------------------------------------------ both

// A free TCP port on 127.0.0.1 (bound, read back, released).
int PickFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  socklen_t len = sizeof(sa);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&sa), sizeof(sa)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&sa), &len) == 0)
    port = ntohs(sa.sin_port);
  close(fd);
  return port;
}

class ServerProcess {
 public:
  ~ServerProcess() { Stop(); }

  bool Start(const std::vector<std::string> &args) {
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
      Say("FAILED: cannot find this program's path: %s", strerror(errno));
      return false;
    }
    self[n] = '\0';
    int to_child[2], from_child[2];
    if (pipe2(to_child, O_CLOEXEC) != 0 || pipe2(from_child, O_CLOEXEC) != 0) {
      Say("FAILED: pipe: %s", strerror(errno));
      return false;
    }
    std::vector<std::string> argv_store = args;
    argv_store.insert(argv_store.begin(), "adxl_demo");
    std::vector<char *> argv;
    for (std::string &s : argv_store) argv.push_back(s.data());
    argv.push_back(nullptr);
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) {
      Say("FAILED: fork: %s", strerror(errno));
      return false;
    }
    if (pid_ == 0) {
      // The server must not outlive us: SIGTERM when the parent dies.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(kExitFailed);
      dup2(to_child[0], STDIN_FILENO);
      dup2(from_child[1], STDOUT_FILENO);
      execv(self, argv.data());
      dprintf(STDERR_FILENO, "adxl_demo: exec %s: %s\n", self, strerror(errno));
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    to_ = to_child[1];
    from_ = from_child[0];
    reader_ = std::make_unique<LineReader>(from_);
    return true;
  }

  // Waits for "ADDR" and "READY"; echoes anything else the server says.
  bool WaitReady(uintptr_t *addr, uint64_t *len, int timeout_ms) {
    bool have_addr = false;
    std::string line;
    for (;;) {
      int rc = reader_->ReadLine(&line, timeout_ms);
      if (rc == 0) {
        Say("FAILED: server not READY after %d ms", timeout_ms);
        return false;
      }
      if (rc < 0) {
        Say("FAILED: server exited before READY (%s)", ExitText(Reap(5000)).c_str());
        return false;
      }
      if (ParseAddrLine(line, addr, len)) {
        have_addr = true;
      } else if (line == "READY") {
        if (have_addr) return true;
        Say("FAILED: server said READY without an ADDR line");
        return false;
      } else {
        Say("[server] %s", line.c_str());
      }
    }
  }

  // Sends one command and returns the first reply line that starts with `CHECK`.
  bool Ask(const std::string &command, std::string *reply, int timeout_ms) {
    std::string msg = command + "\n";
    if (write(to_, msg.data(), msg.size()) != static_cast<ssize_t>(msg.size())) return false;
    std::string line;
    for (;;) {
      if (reader_->ReadLine(&line, timeout_ms) <= 0) return false;
      if (line.rfind("CHECK", 0) == 0) {
        *reply = line;
        return true;
      }
      Say("[server] %s", line.c_str());
    }
  }

  // QUIT, wait for a clean exit (echoing its last words), kill if it lingers.
  // Returns the raw wait status, or -1.
  int Stop() {
    if (pid_ <= 0) return status_;
    if (to_ >= 0) {
      static const char kQuit[] = "QUIT\n";
      ssize_t ignored = write(to_, kQuit, sizeof(kQuit) - 1);
      (void)ignored;
      close(to_);
      to_ = -1;
    }
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (reader_ && std::chrono::steady_clock::now() < deadline && reader_->ReadLine(&line, 500) != -1) {
      if (!line.empty()) Say("[server] %s", line.c_str());
      line.clear();
    }
    if (from_ >= 0) {
      close(from_);
      from_ = -1;
    }
    return Reap(5000);
  }

  static std::string ExitText(int status) {
    if (status == -1) return "no exit status";
    if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
    return "status " + std::to_string(status);
  }

 private:
  // Waits up to timeout_ms, then SIGKILLs. Returns the wait status or -1.
  int Reap(int timeout_ms) {
    if (pid_ <= 0) return status_;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        status_ = status;
        return status;
      }
      if (r < 0 && errno != EINTR) {
        pid_ = -1;
        return status_;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        Say("server did not exit within %d ms, killing it", timeout_ms);
        kill(pid_, SIGKILL);
        if (waitpid(pid_, &status, 0) == pid_) status_ = status;
        pid_ = -1;
        return status_;
      }
      usleep(20000);
    }
  }

  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  int status_ = -1;
  std::unique_ptr<LineReader> reader_;
};

int RunBoth(Options opt) {
  signal(SIGPIPE, SIG_IGN);
  int port = PickFreePort();
  if (port <= 0) {
    Say("FAILED: could not find a free TCP port on 127.0.0.1");
    return kExitFailed;
  }
  opt.listen = opt.connect = "127.0.0.1:" + std::to_string(port);
  opt.size = std::max<uint64_t>(opt.size, opt.total);
  std::vector<std::string> args = {"server", "--listen", opt.listen, "--size", std::to_string(opt.size)};
  if (!opt.transport.empty()) {
    args.push_back("--transport");
    args.push_back(opt.transport);
  }
  if (opt.connections > 0) {
    args.push_back("--connections");
    args.push_back(std::to_string(opt.connections));
  }
  Say("adxl_demo: server process on %s, client in this process (pid %d)", opt.listen.c_str(),
      static_cast<int>(getpid()));
  Say("%s", llmdd_tools::MachineLine().c_str());

  ServerProcess server;
  if (!server.Start(args)) return kExitFailed;
  uintptr_t remote_addr = 0;
  uint64_t remote_len = 0;
  int rc = kExitFailed;
  bool ready = server.WaitReady(&remote_addr, &remote_len, 30000);
  if (ready) {
    Say("server: buffer 0x%" PRIxPTR ", %s registered", remote_addr, HumanBytes(remote_len).c_str());
    ServerControl control = [&server, &opt](const std::string &cmd, std::string *reply) {
      return server.Ask(cmd, reply, std::max(opt.timeout_ms, 60000));
    };
    rc = RunClient(opt, remote_addr, remote_len, control);
  }
  int status = server.Stop();
  bool server_ok = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (!server_ok && ready) Say("FAILED: server process ended with %s", ServerProcess::ExitText(status).c_str());
  if (rc == kExitOk && server_ok) {
    Say("VERIFIED: all bytes correct");
    return kExitOk;
  }
  Say("FAILED: see above");
  return kExitFailed;
}

}  // namespace

int main(int argc, char **argv) {
  Options opt;
  int rc = ParseArgs(argc, argv, &opt);
  if (rc != kExitOk) return rc;
  if (opt.mode == "server") return RunServer(opt);
  // Before the first library call and before the server process starts.
  if (!g_tap.Start()) fprintf(stderr, "adxl_demo: cannot read the engine's log; the path will show as unknown\n");
  if (opt.mode == "client") Say("%s", llmdd_tools::MachineLine().c_str());
  rc = opt.mode == "client" ? RunStandaloneClient(opt) : RunBoth(opt);
  g_tap.Stop();
  return rc;
}
