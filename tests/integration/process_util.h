// Helpers shared by the multi-process integration tests and their peer programs.
//
//  - Subprocess: fork/exec a peer with pipes on its stdin/stdout, read stdout lines
//    with a deadline, send lines, signal it (kill/stop/continue), wait with a timeout.
//    The child gets PR_SET_PDEATHSIG(SIGKILL), so it dies with the test. NOTE: the
//    death signal fires when the *thread* that forked exits, so start peers from the
//    test's main thread only, never from a short-lived worker thread.
//  - PickFreePort(): a port below the ephemeral range that can currently be bound.
//  - Watchdog: aborts the whole test binary (with a message) when a call does not
//    return in time, so a hang fails the test instead of hanging CTest.
//  - Deterministic data patterns (splitmix64 of seed and position) and a 64-bit hash,
//    identical in the test and in the peers, so both sides can check bytes cheaply.
//  - GuardedBuffer: memory that ends right before a PROT_NONE page, so an engine
//    that touches bytes past a range crashes instead of silently corrupting.
//  - AdxlPeer: drives tests/integration/peers/adxl_peer (its line protocol is
//    documented in that file).
//
// Header-only, no gtest dependency (the peers include it too). Linux only.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "adxl/adxl_types.h"

namespace itest {

// ---------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------
using Clock = std::chrono::steady_clock;

inline int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

inline void SleepMs(int64_t ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// A same-host requester may keep reading a peer's registered memory one-sidedly
// for the standing read lease (wire::kStandingLeaseMs = 100 ms) after the peer
// stops answering; tests that expect a stopped peer to time out wait this long first.
constexpr int64_t kLeaseExpiryWaitMs = 200;

// CPU time the calling thread has used, in ns (how busy a polling loop was).
inline int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// ---------------------------------------------------------------------------------
// Status names (for readable assertion messages)
// ---------------------------------------------------------------------------------
inline std::string StatusName(uint32_t s) {
  switch (s) {
    case adxl::SUCCESS: return "SUCCESS";
    case adxl::PARAM_INVALID: return "PARAM_INVALID";
    case adxl::TIMEOUT: return "TIMEOUT";
    case adxl::NOT_CONNECTED: return "NOT_CONNECTED";
    case adxl::ALREADY_CONNECTED: return "ALREADY_CONNECTED";
    case adxl::NOTIFY_FAILED: return "NOTIFY_FAILED";
    case adxl::UNSUPPORTED: return "UNSUPPORTED";
    case adxl::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case adxl::FAILED: return "FAILED";
    default: return "status(" + std::to_string(s) + ")";
  }
}

// ---------------------------------------------------------------------------------
// Patterns and hashing
// ---------------------------------------------------------------------------------
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// The pattern is a function of (seed, position): byte `pos` of the stream `seed`.
// Regions of the peers hold PatternByte(seed, offset-in-region).
inline uint64_t PatternWord(uint64_t seed, uint64_t word_index) {
  return SplitMix64(seed * 0xD1B54A32D192ED03ULL + word_index);
}

inline uint8_t PatternByte(uint64_t seed, uint64_t pos) {
  return static_cast<uint8_t>(PatternWord(seed, pos >> 3) >> ((pos & 7U) * 8U));
}

// dst[i] = PatternByte(seed, pos0 + i). Little-endian hosts only (x86-64, aarch64).
inline void FillPattern(void *dst_v, size_t len, uint64_t seed, uint64_t pos0) {
  auto *dst = static_cast<uint8_t *>(dst_v);
  size_t i = 0;
  while (i < len && ((pos0 + i) & 7U) != 0) {
    dst[i] = PatternByte(seed, pos0 + i);
    ++i;
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t w = PatternWord(seed, (pos0 + i) >> 3);
    std::memcpy(dst + i, &w, 8);
  }
  for (; i < len; ++i) dst[i] = PatternByte(seed, pos0 + i);
}

// Index of the first byte that differs from the pattern, or SIZE_MAX if none.
inline size_t FindPatternMismatch(const void *src_v, size_t len, uint64_t seed, uint64_t pos0) {
  const auto *src = static_cast<const uint8_t *>(src_v);
  size_t i = 0;
  while (i < len && ((pos0 + i) & 7U) != 0) {
    if (src[i] != PatternByte(seed, pos0 + i)) return i;
    ++i;
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t w = PatternWord(seed, (pos0 + i) >> 3);
    if (std::memcmp(src + i, &w, 8) != 0) {
      for (size_t k = 0; k < 8; ++k)
        if (src[i + k] != PatternByte(seed, pos0 + i + k)) return i + k;
    }
  }
  for (; i < len; ++i)
    if (src[i] != PatternByte(seed, pos0 + i)) return i;
  return SIZE_MAX;
}

// 64-bit content hash (position dependent, includes the length).
inline uint64_t Hash64(const void *data_v, size_t len) {
  const auto *p = static_cast<const uint8_t *>(data_v);
  uint64_t h = 0x6A09E667F3BCC908ULL ^ (len * 0x9E3779B97F4A7C15ULL);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001B3ULL;
    h ^= h >> 29;
  }
  for (; i < len; ++i) {
    h = (h ^ p[i]) * 0x100000001B3ULL;
    h ^= h >> 29;
  }
  return SplitMix64(h);
}

// First index where a and b differ, or SIZE_MAX.
inline size_t FirstDiff(const void *a_v, const void *b_v, size_t len) {
  const auto *a = static_cast<const uint8_t *>(a_v);
  const auto *b = static_cast<const uint8_t *>(b_v);
  if (std::memcmp(a, b, len) == 0) return SIZE_MAX;
  for (size_t i = 0; i < len; ++i)
    if (a[i] != b[i]) return i;
  return SIZE_MAX;
}

// Bytes as lowercase hex behind an 'x' ("x" alone for none), so that any name or
// message travels as one token of the peers' line protocol.
inline std::string HexToken(const std::string &bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out = "x";
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}
inline bool FromHexToken(const std::string &token, std::string *bytes) {
  if (token.empty() || token[0] != 'x' || token.size() % 2 != 1) return false;
  auto digit = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  bytes->clear();
  for (size_t i = 1; i < token.size(); i += 2) {
    const int hi = digit(token[i]), lo = digit(token[i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes->push_back(static_cast<char>(hi * 16 + lo));
  }
  return true;
}

// ---------------------------------------------------------------------------------
// GuardedBuffer: [data(), data()+size()) is followed immediately by a PROT_NONE page
// and preceded (after page rounding) by another one.
// ---------------------------------------------------------------------------------
class GuardedBuffer {
 public:
  GuardedBuffer() = default;
  explicit GuardedBuffer(size_t len) { Allocate(len); }
  ~GuardedBuffer() { Release(); }
  GuardedBuffer(const GuardedBuffer &) = delete;
  GuardedBuffer &operator=(const GuardedBuffer &) = delete;
  GuardedBuffer(GuardedBuffer &&o) noexcept { *this = std::move(o); }
  GuardedBuffer &operator=(GuardedBuffer &&o) noexcept {
    if (this != &o) {
      Release();
      base_ = o.base_;
      map_len_ = o.map_len_;
      data_ = o.data_;
      len_ = o.len_;
      o.base_ = nullptr;
      o.map_len_ = 0;
      o.data_ = nullptr;
      o.len_ = 0;
    }
    return *this;
  }

  // Returns false when the mapping failed.
  bool Allocate(size_t len) {
    Release();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t body = (len + page - 1) / page * page;
    if (body == 0) body = page;
    map_len_ = body + 2 * page;
    void *m = mmap(nullptr, map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
      map_len_ = 0;
      return false;
    }
    base_ = static_cast<uint8_t *>(m);
    mprotect(base_, page, PROT_NONE);
    mprotect(base_ + page + body, page, PROT_NONE);
    len_ = len;
    data_ = base_ + page + body - len;  // ends exactly at the trailing guard page
    return true;
  }

  void Release() {
    if (base_ != nullptr) munmap(base_, map_len_);
    base_ = nullptr;
    map_len_ = 0;
    data_ = nullptr;
    len_ = 0;
  }

  uint8_t *data() const { return data_; }
  size_t size() const { return len_; }
  uintptr_t addr() const { return reinterpret_cast<uintptr_t>(data_); }

 private:
  uint8_t *base_ = nullptr;
  size_t map_len_ = 0;
  uint8_t *data_ = nullptr;
  size_t len_ = 0;
};

// ---------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------
inline bool CanBind(int family, const char *ip, int port) {
  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  bool ok = false;
  if (family == AF_INET) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, ip, &a.sin_addr) == 1)
      ok = bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0;
  } else {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    a.sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, ip, &a.sin6_addr) == 1)
      ok = bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0;
  }
  close(fd);
  return ok;
}

inline std::mt19937_64 &PortRng() {
  static std::mt19937_64 rng(static_cast<uint64_t>(getpid()) * 0x9E3779B97F4A7C15ULL ^
                             static_cast<uint64_t>(Clock::now().time_since_epoch().count()));
  return rng;
}

// A port in [20000, 32000) (below Linux's default ephemeral range, so outgoing
// connections do not steal it) that can be bound on `ip` right now. Racy by nature:
// callers that hand the port to Initialize retry with another one on FAILED.
inline int PickFreePort(const char *ip = "127.0.0.1", int family = AF_INET) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  std::uniform_int_distribution<int> dist(20000, 31999);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    int port = dist(PortRng());
    if (CanBind(family, ip, port)) return port;
  }
  return 0;
}

// True if a socket can be bound to ::1 (IPv6 loopback available).
inline bool Ipv6LoopbackAvailable() {
  int port = PickFreePort("::1", AF_INET6);
  return port != 0;
}

// ---------------------------------------------------------------------------------
// Watchdog: if not destroyed within `ms`, prints `what` and terminates the process
// (exit code 99). Children started with Subprocess die with it (PDEATHSIG).
// ---------------------------------------------------------------------------------
class Watchdog {
 public:
  Watchdog(int64_t ms, std::string what) : what_(std::move(what)) {
    thread_ = std::thread([this, ms] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return done_; })) {
        std::fprintf(stderr, "\n*** WATCHDOG: '%s' did not return within %lld ms; aborting the test binary\n",
                     what_.c_str(), static_cast<long long>(ms));
        std::fflush(stderr);
        std::fflush(stdout);
        _exit(99);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog &) = delete;
  Watchdog &operator=(const Watchdog &) = delete;

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------------------------
// Subprocess
// ---------------------------------------------------------------------------------
class Subprocess {
 public:
  // argv[0] is the executable path. Returns nullptr (and *err) on failure.
  // stderr is inherited, so the child's logs appear in the test output.
  static std::unique_ptr<Subprocess> Start(const std::vector<std::string> &argv, std::string *err) {
    if (argv.empty()) {
      if (err) *err = "empty argv";
      return nullptr;
    }
    int in_pipe[2];   // parent writes in_pipe[1] -> child's stdin
    int out_pipe[2];  // child writes out_pipe[1] -> parent reads out_pipe[0]
    if (pipe2(in_pipe, O_CLOEXEC) != 0) {
      if (err) *err = std::string("pipe2: ") + std::strerror(errno);
      return nullptr;
    }
    if (pipe2(out_pipe, O_CLOEXEC) != 0) {
      if (err) *err = std::string("pipe2: ") + std::strerror(errno);
      close(in_pipe[0]);
      close(in_pipe[1]);
      return nullptr;
    }
    // Everything the child needs is prepared before fork (only async-signal-safe
    // calls after fork: the parent is multi-threaded).
    std::vector<char *> cargv;
    cargv.reserve(argv.size() + 1);
    for (const auto &a : argv) cargv.push_back(const_cast<char *>(a.c_str()));
    cargv.push_back(nullptr);
    const pid_t parent = getpid();

    pid_t pid = fork();
    if (pid < 0) {
      if (err) *err = std::string("fork: ") + std::strerror(errno);
      close(in_pipe[0]);
      close(in_pipe[1]);
      close(out_pipe[0]);
      close(out_pipe[1]);
      return nullptr;
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(126);  // parent already gone
      dup2(in_pipe[0], STDIN_FILENO);
      dup2(out_pipe[1], STDOUT_FILENO);
      // Restore default signal dispositions/masks the test may have changed.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGPIPE, SIG_DFL);
      execv(cargv[0], cargv.data());
      static const char msg[] = "EXEC_FAILED\n";
      ssize_t ignored = write(STDOUT_FILENO, msg, sizeof(msg) - 1);
      (void)ignored;
      _exit(127);
    }
    close(in_pipe[0]);
    close(out_pipe[1]);
    std::unique_ptr<Subprocess> p(new Subprocess());
    p->pid_ = pid;
    p->stdin_fd_ = in_pipe[1];
    p->stdout_fd_ = out_pipe[0];
    return p;
  }

  ~Subprocess() {
    CloseStdin();
    if (!reaped_) {
      kill(pid_, SIGKILL);
      kill(pid_, SIGCONT);
      int st = 0;
      waitpid(pid_, &st, 0);
      reaped_ = true;
    }
    if (stdout_fd_ >= 0) close(stdout_fd_);
  }

  pid_t pid() const { return pid_; }

  // Reads one line (without '\n'). False on timeout or EOF (*eof tells which).
  bool ReadLine(std::string *line, int64_t timeout_ms, bool *eof = nullptr) {
    if (eof) *eof = false;
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        *line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return true;
      }
      if (stdout_eof_) {
        if (eof) *eof = true;
        return false;
      }
      int64_t left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left < 0) return false;
      pollfd pfd{stdout_fd_, POLLIN, 0};
      int r = poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      if (r < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      if (r == 0) continue;
      char tmp[4096];
      ssize_t n = read(stdout_fd_, tmp, sizeof(tmp));
      if (n > 0) {
        buf_.append(tmp, static_cast<size_t>(n));
      } else if (n == 0) {
        stdout_eof_ = true;
      } else if (errno != EINTR && errno != EAGAIN) {
        stdout_eof_ = true;
      }
    }
  }

  // Writes `line` + '\n' to the child's stdin. False if the child closed it.
  // SIGPIPE is blocked for this thread during the write and a pending one is
  // consumed, so the test process does not need to ignore SIGPIPE globally (an
  // engine that forgets MSG_NOSIGNAL must still be caught by the tests).
  bool WriteLine(const std::string &line) {
    if (stdin_fd_ < 0) return false;
    std::string data = line + "\n";
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    bool ok = true;
    bool got_epipe = false;
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = write(stdin_fd_, data.data() + off, data.size() - off);
      if (n > 0) {
        off += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        got_epipe = (n < 0 && errno == EPIPE);
        ok = false;
        break;
      }
    }
    if (got_epipe && !sigismember(&old_set, SIGPIPE)) {
      timespec zero{0, 0};
      sigtimedwait(&pipe_set, nullptr, &zero);  // consume our own SIGPIPE
    }
    pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
    return ok;
  }

  void CloseStdin() {
    if (stdin_fd_ >= 0) close(stdin_fd_);
    stdin_fd_ = -1;
  }

  void Signal(int sig) {
    if (!reaped_) kill(pid_, sig);
  }
  void Kill() { Signal(SIGKILL); }
  // SIGSTOP is delivered asynchronously: wait until the kernel reports the whole
  // process as stopped (state 'T' in /proc/<pid>/stat), so a test does not race it.
  bool Stop(int64_t timeout_ms = 5000) {
    Signal(SIGSTOP);
    const auto t0 = Clock::now();
    while (MsSince(t0) < timeout_ms) {
      if (AllThreadsStopped()) return true;
      SleepMs(1);
    }
    return false;
  }

  // True when every thread of the child is in state 'T' (group stop completed).
  bool AllThreadsStopped() const {
    char dir_path[64];
    snprintf(dir_path, sizeof(dir_path), "/proc/%d/task", static_cast<int>(pid_));
    DIR *dir = opendir(dir_path);
    if (dir == nullptr) return false;
    bool all = true;
    int seen = 0;
    while (dirent *e = readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      char path[384];
      snprintf(path, sizeof(path), "%s/%s/stat", dir_path, e->d_name);
      if (StatState(path) != 'T') all = false;
      ++seen;
    }
    closedir(dir);
    return all && seen > 0;
  }
  void Continue() { Signal(SIGCONT); }

  // Process state letter from /proc/<pid>/stat ('R', 'S', 'T', 'Z', ...), or 0.
  char ProcState() const {
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid_));
    return StatState(path);
  }

  static char StatState(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == nullptr) return 0;
    char buf[512];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *rp = strrchr(buf, ')');  // the command name may contain spaces
    if (rp == nullptr || rp[1] != ' ') return 0;
    return rp[2];
  }

  // Waits for the child to exit. True if it exited (status in *wstatus).
  bool Wait(int64_t timeout_ms, int *wstatus = nullptr) {
    if (reaped_) {
      if (wstatus) *wstatus = wstatus_;
      return true;
    }
    const auto t0 = Clock::now();
    for (;;) {
      int st = 0;
      pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        wstatus_ = st;
        if (wstatus) *wstatus = st;
        return true;
      }
      if (r < 0 && errno != EINTR) return false;
      if (MsSince(t0) >= timeout_ms) return false;
      SleepMs(5);
    }
  }

  bool Exited() const { return reaped_; }

  static std::string DescribeWaitStatus(int st) {
    if (WIFEXITED(st)) return "exit code " + std::to_string(WEXITSTATUS(st));
    if (WIFSIGNALED(st)) return std::string("killed by signal ") + std::to_string(WTERMSIG(st)) + " (" +
                                strsignal(WTERMSIG(st)) + ")";
    return "status " + std::to_string(st);
  }

 private:
  Subprocess() = default;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string buf_;
  bool stdout_eof_ = false;
  bool reaped_ = false;
  int wstatus_ = 0;
};

// ---------------------------------------------------------------------------------
// AdxlPeer: a running tests/integration/peers/adxl_peer.
// ---------------------------------------------------------------------------------
struct RemoteRegion {
  uintptr_t addr = 0;
  size_t len = 0;
  uint64_t seed = 0;  // pattern seed the region was filled with
};

class AdxlPeer {
 public:
  struct Options {
    std::string host = "127.0.0.1";  // IPv6: "::1" (brackets are added)
    bool listen = true;              // false: client-only engine id (just the host)
    int regions = 1;
    size_t size = 1 << 20;
    uint64_t seed = 1;               // region i is filled with pattern seed + i
    bool device_mem = false;         // register as MEM_DEVICE instead of MEM_HOST
    std::vector<std::pair<std::string, std::string>> engine_options;
    int64_t start_timeout_ms = 60000;
    int fixed_port = 0;  // listen on this port (retried for a few seconds) instead of a free one
    // "KEY=VALUE" entries added to the peer's environment only (it is started
    // through /usr/bin/env; the test process's environment is never touched),
    // e.g. LLMDD_FAULT_INJECTION=freeze_copy=1.
    std::vector<std::string> env;
  };

  static std::string PeerPath() {
#ifdef LLMDD_PEER_DIR
    return std::string(LLMDD_PEER_DIR) + "/adxl_peer";
#else
    return "adxl_peer";
#endif
  }

  // Starts a peer; picks a free port and retries when the peer reports that its
  // Initialize failed with FAILED (port taken in the meantime).
  static std::unique_ptr<AdxlPeer> Start(const Options &opt, std::string *err) {
    const bool v6 = opt.host.find(':') != std::string::npos;
    for (int attempt = 0; attempt < 20; ++attempt) {
      std::string id;
      int port = 0;
      if (opt.listen) {
        port = opt.fixed_port != 0 ? opt.fixed_port : PickFreePort(opt.host.c_str(), v6 ? AF_INET6 : AF_INET);
        if (port == 0) {
          if (err) *err = "no free port on " + opt.host;
          return nullptr;
        }
        id = v6 ? "[" + opt.host + "]:" + std::to_string(port) : opt.host + ":" + std::to_string(port);
      } else {
        id = v6 ? "[" + opt.host + "]" : opt.host;
      }
      std::vector<std::string> argv;
      if (!opt.env.empty()) {
        argv.push_back("/usr/bin/env");
        argv.insert(argv.end(), opt.env.begin(), opt.env.end());
      }
      for (const std::string &a : {PeerPath(), std::string("--engine"), id, std::string("--regions"),
                                   std::to_string(opt.regions), std::string("--size"), std::to_string(opt.size),
                                   std::string("--seed"), std::to_string(opt.seed)})
        argv.push_back(a);
      if (opt.device_mem) {
        argv.push_back("--mem");
        argv.push_back("device");
      }
      for (const auto &kv : opt.engine_options) {
        argv.push_back("--opt");
        argv.push_back(kv.first + "=" + kv.second);
      }
      std::string perr;
      auto proc = Subprocess::Start(argv, &perr);
      if (!proc) {
        if (err) *err = perr;
        return nullptr;
      }
      std::unique_ptr<AdxlPeer> peer(new AdxlPeer());
      peer->proc_ = std::move(proc);
      peer->id_ = id;
      peer->port_ = port;
      bool retry = false;
      for (;;) {
        std::string line;
        bool eof = false;
        if (!peer->proc_->ReadLine(&line, opt.start_timeout_ms, &eof)) {
          if (err) *err = std::string("peer ") + id + (eof ? " exited during start-up" : " start-up timed out");
          return nullptr;
        }
        if (line.rfind("INIT_FAILED", 0) == 0) {
          // "INIT_FAILED <status>": FAILED usually means the port was taken.
          if (line == "INIT_FAILED " + std::to_string(adxl::FAILED) && opt.listen) {
            retry = true;
            if (opt.fixed_port != 0) {
              if (attempt >= 9) {
                if (err) *err = "peer " + id + ": " + line + " (fixed port, 10 attempts)";
                return nullptr;
              }
              SleepMs(300);
            }
            break;
          }
          if (err) *err = "peer " + id + ": " + line;
          return nullptr;
        }
        if (line.rfind("REGION ", 0) == 0) {
          RemoteRegion r;
          if (!ParseRegionLine(line, &r)) {
            if (err) *err = "bad line from peer: " + line;
            return nullptr;
          }
          peer->regions_.push_back(r);
          continue;
        }
        if (line == "READY") return peer;
        if (err) *err = "unexpected line from peer: " + line;
        return nullptr;
      }
      if (!retry) break;
    }
    if (err) *err = "could not start a peer on a free port";
    return nullptr;
  }

  ~AdxlPeer() {
    if (proc_ && !proc_->Exited()) {
      proc_->Continue();
      proc_->Kill();
      proc_->Wait(5000);
    }
  }

  const std::string &id() const { return id_; }
  adxl::AscendString engine() const { return adxl::AscendString(id_.c_str()); }
  int port() const { return port_; }
  const std::vector<RemoteRegion> &regions() const { return regions_; }
  const RemoteRegion &region(size_t i) const { return regions_.at(i); }
  Subprocess &proc() { return *proc_; }
  pid_t pid() const { return proc_->pid(); }

  // Sends a command, returns the reply line or "" (plus last_error()) on failure.
  std::string Cmd(const std::string &line, int64_t timeout_ms = 60000) {
    if (!proc_->WriteLine(line)) {
      last_error_ = "could not write '" + line + "' to peer " + id_;
      return "";
    }
    std::string reply;
    bool eof = false;
    if (!proc_->ReadLine(&reply, timeout_ms, &eof)) {
      last_error_ = "no reply to '" + line + "' from peer " + id_ + (eof ? " (peer exited)" : " (timeout)");
      return "";
    }
    return reply;
  }
  const std::string &last_error() const { return last_error_; }

  // "OK", or "BAD <offset>" / an error text.
  std::string Check(size_t idx, size_t off, size_t len, uint64_t seed) {
    std::string r = Cmd("CHECK " + std::to_string(idx) + " " + std::to_string(off) + " " + std::to_string(len) +
                        " " + std::to_string(seed));
    return r.empty() ? last_error_ : r;
  }
  // Whole region still holds its initial pattern?
  std::string CheckUntouched(size_t idx) { return Check(idx, 0, regions_.at(idx).len, regions_.at(idx).seed); }

  bool Fill(size_t idx, uint64_t seed) {
    std::string r = Cmd("FILL " + std::to_string(idx) + " " + std::to_string(seed));
    if (r != "OK") return false;
    regions_.at(idx).seed = seed;
    return true;
  }

  // Hash64 of region bytes [off, off+len); false on error.
  bool Crc(size_t idx, size_t off, size_t len, uint64_t *out) {
    std::string r = Cmd("CRC " + std::to_string(idx) + " " + std::to_string(off) + " " + std::to_string(len));
    if (r.rfind("CRC ", 0) != 0) {
      if (!r.empty()) last_error_ = r;
      return false;
    }
    *out = std::strtoull(r.c_str() + 4, nullptr, 16);
    return true;
  }

  // Registers one more region (filled with pattern `seed`); returns its index or -1.
  int Register(size_t size, uint64_t seed) {
    std::string r = Cmd("REGISTER " + std::to_string(size) + " " + std::to_string(seed));
    RemoteRegion reg;
    if (!ParseRegionLine(r, &reg)) {
      if (!r.empty()) last_error_ = r;
      return -1;
    }
    regions_.push_back(reg);
    return static_cast<int>(regions_.size()) - 1;
  }

  // Like Register, in memory from AdxlEngine::MallocMem (shareable with
  // same-host peers, common/host_memory.h); returns its index or -1.
  int RegisterMalloced(size_t size, uint64_t seed) {
    return ReadRegionLines("MALLOCREG " + std::to_string(size) + " " + std::to_string(seed), 1);
  }

  // One allocation of 2*size bytes registered as two adjacent regions; returns the
  // index of the first (the second is +1) or -1.
  int RegisterSplit(size_t size, uint64_t seed) {
    return ReadRegionLines("SPLITREG " + std::to_string(size) + " " + std::to_string(seed), 2);
  }

  // One allocation of rights.size()*size bytes registered as adjacent regions of
  // `size` bytes, region k with remote access rights[k] ("rw", "ro", "wo", or
  // "local": MemDesc::local_only) and
  // pattern seed+k; returns the index of the first (the others follow) or -1.
  int RegisterAdjacent(size_t size, uint64_t seed, const std::vector<std::string> &rights) {
    std::string line = "ADJREG " + std::to_string(size) + " " + std::to_string(seed);
    for (const std::string &r : rights) line += " " + r;
    return ReadRegionLines(line, rights.size());
  }

  // The peer engine's metrics (llmdd_ext::GetMetricsJson), "" on error.
  std::string MetricsJson() {
    std::string r = Cmd("METRICS");
    if (r.rfind("METRICS ", 0) != 0) {
      if (!r.empty()) last_error_ = r;
      return "";
    }
    return r.substr(8);
  }

  // Returns the peer's DeregisterMem status (or UINT32_MAX on protocol error).
  uint32_t Deregister(size_t idx) { return StatusCmd("DEREGISTER " + std::to_string(idx)); }

  // Client-side commands run by the peer's own engine.
  uint32_t Connect(const std::string &remote, int timeout_ms, int64_t reply_timeout_ms = 60000) {
    return StatusCmd("CONNECT " + remote + " " + std::to_string(timeout_ms), reply_timeout_ms);
  }
  uint32_t Disconnect(const std::string &remote, int timeout_ms) {
    return StatusCmd("DISCONNECT " + remote + " " + std::to_string(timeout_ms));
  }
  // op: "READ" or "WRITE"; local side is [region(idx).addr + off, +len) of the peer.
  uint32_t Transfer(const std::string &remote, const std::string &op, size_t idx, size_t off, uintptr_t remote_addr,
                    size_t len, int timeout_ms, int64_t reply_timeout_ms = 120000) {
    std::ostringstream s;
    s << "XFER " << remote << " " << op << " " << idx << " " << off << " " << std::hex << remote_addr << std::dec
      << " " << len << " " << timeout_ms;
    return StatusCmd(s.str(), reply_timeout_ms);
  }

  // SendNotify from the peer's engine to `remote`; the status, UINT32_MAX on a protocol error.
  uint32_t Notify(const std::string &remote, const std::string &name, const std::string &msg, int timeout_ms) {
    return StatusCmd("NOTIFY " + remote + " " + HexToken(name) + " " + HexToken(msg) + " " +
                     std::to_string(timeout_ms));
  }
  // GetNotifies on the peer's engine: its status, the notifies as (name, message).
  uint32_t Notifies(std::vector<std::pair<std::string, std::string>> *out, int64_t timeout_ms = 60000) {
    out->clear();
    std::string r = Cmd("NOTIFIES", timeout_ms);
    std::istringstream head(r);
    std::string tag;
    uint32_t status = UINT32_MAX;
    size_t count = 0;
    if (!(head >> tag >> status >> count) || tag != "NOTIFIES") {
      if (!r.empty()) last_error_ = "unexpected reply '" + r + "' to NOTIFIES";
      return UINT32_MAX;
    }
    for (size_t k = 0; k < count; ++k) {
      std::string line;
      if (!proc_->ReadLine(&line, timeout_ms)) {
        last_error_ = "NOTIFIES: line " + std::to_string(k) + " of " + std::to_string(count) + " missing";
        return UINT32_MAX;
      }
      std::istringstream in(line);
      std::string n, name_hex, msg_hex;
      std::pair<std::string, std::string> item;
      if (!(in >> n >> name_hex >> msg_hex) || n != "N" || !FromHexToken(name_hex, &item.first) ||
          !FromHexToken(msg_hex, &item.second)) {
        last_error_ = "bad NOTIFIES line '" + line + "'";
        return UINT32_MAX;
      }
      out->push_back(std::move(item));
    }
    return status;
  }
  // Starts WATCHNOTIFY (see adxl_peer.cc) without waiting for its reply;
  // WatchResult() reads it.
  bool StartWatch(size_t count, size_t region, int64_t timeout_ms) {
    return proc_->WriteLine("WATCHNOTIFY " + std::to_string(count) + " " + std::to_string(region) + " " +
                            std::to_string(timeout_ms));
  }
  std::string WatchResult(int64_t timeout_ms) {
    std::string reply;
    bool eof = false;
    if (!proc_->ReadLine(&reply, timeout_ms, &eof)) return std::string("no WATCHNOTIFY reply") + (eof ? " (exited)" : "");
    return reply;
  }

  bool Ping(int64_t timeout_ms = 10000) { return Cmd("PING", timeout_ms) == "PONG"; }

  // Sends QUIT (peer disconnects nothing itself; it Finalizes and exits 0).
  // Returns "" on a clean exit 0, else a description.
  std::string Quit(int64_t timeout_ms = 20000) {
    proc_->WriteLine("QUIT");
    int st = 0;
    if (!proc_->Wait(timeout_ms, &st)) {
      proc_->Kill();
      proc_->Wait(5000);
      return "peer " + id_ + " did not exit within " + std::to_string(timeout_ms) + " ms after QUIT";
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
    return "peer " + id_ + " ended with " + Subprocess::DescribeWaitStatus(st);
  }

  // Deliberate faults: the peer is remembered as faulted, so fixtures do not
  // expect a clean shutdown from it.
  void Kill() {
    faulted_ = true;
    proc_->Kill();
    proc_->Wait(10000);
  }
  // Returns once the peer is really stopped (false if that could not be seen).
  bool Stop() {
    faulted_ = true;
    return proc_->Stop();
  }
  // Stops the peer and waits out its standing read lease: from then on a
  // READ of its memory needs its answer on every path (same-host READs of up
  // to 16 MiB are one-sided within the lease).
  bool StopPastReadLease() {
    if (!Stop()) return false;
    SleepMs(kLeaseExpiryWaitMs);
    return true;
  }
  void Continue() { proc_->Continue(); }
  // Waits until the peer stopped itself (a freeze fault of
  // LLMDD_FAULT_INJECTION); false when it did not within the time.
  bool WaitStopped(int64_t timeout_ms) {
    faulted_ = true;
    const auto t0 = Clock::now();
    while (MsSince(t0) < timeout_ms) {
      if (proc_->AllThreadsStopped()) return true;
      SleepMs(1);
    }
    return false;
  }
  // How many 8-byte words of region i at [off, off+len) equal the pattern
  // `seed` counted from position pos0 (the bytes a WRITE of a buffer filled
  // with FillPattern(seed, pos0) would leave there); -1 on a protocol error.
  int64_t Matches(size_t i, size_t off, size_t len, uint64_t seed, uint64_t pos0 = 0) {
    std::string r = Cmd("MATCHES " + std::to_string(i) + " " + std::to_string(off) + " " + std::to_string(len) + " " +
                        std::to_string(seed) + " " + std::to_string(pos0));
    if (r.rfind("MATCHES ", 0) != 0) {
      last_error_ = "unexpected reply '" + r + "' to MATCHES";
      return -1;
    }
    return static_cast<int64_t>(std::strtoll(r.c_str() + 8, nullptr, 10));
  }
  bool faulted() const { return faulted_; }

  // "alive" or how it ended (reaps it if it ended).
  std::string Health() {
    int st = 0;
    if (proc_->Wait(0, &st)) return "ended with " + Subprocess::DescribeWaitStatus(st);
    return "alive";
  }

  static bool ParseRegionLine(const std::string &line, RemoteRegion *r) {
    // "REGION <index> <addr-hex> <len> <seed>"
    std::istringstream in(line);
    std::string tag, addr_hex;
    size_t index = 0;
    if (!(in >> tag >> index >> addr_hex >> r->len >> r->seed) || tag != "REGION") return false;
    r->addr = static_cast<uintptr_t>(std::strtoull(addr_hex.c_str(), nullptr, 16));
    return r->addr != 0;
  }

 private:
  AdxlPeer() = default;

  // Sends `line` and reads `count` REGION lines; returns the first new index or -1.
  int ReadRegionLines(const std::string &line, size_t count) {
    if (!proc_->WriteLine(line)) {
      last_error_ = "could not write '" + line + "' to peer " + id_;
      return -1;
    }
    int first = -1;
    for (size_t k = 0; k < count; ++k) {
      std::string reply;
      if (!proc_->ReadLine(&reply, 60000)) {
        last_error_ = "no REGION line for '" + line + "' from peer " + id_;
        return -1;
      }
      RemoteRegion reg;
      if (!ParseRegionLine(reply, &reg)) {
        last_error_ = reply;
        return -1;
      }
      regions_.push_back(reg);
      if (k == 0) first = static_cast<int>(regions_.size()) - 1;
    }
    return first;
  }

  uint32_t StatusCmd(const std::string &line, int64_t timeout_ms = 60000) {
    std::string r = Cmd(line, timeout_ms);
    if (r.rfind("STATUS ", 0) != 0) {
      if (!r.empty()) last_error_ = "unexpected reply '" + r + "' to '" + line + "'";
      return UINT32_MAX;
    }
    return static_cast<uint32_t>(std::strtoul(r.c_str() + 7, nullptr, 10));
  }

  std::unique_ptr<Subprocess> proc_;
  std::string id_;
  int port_ = 0;
  std::vector<RemoteRegion> regions_;
  std::string last_error_;
  bool faulted_ = false;
};

// Options map for AdxlEngine::Initialize from string pairs.
inline std::map<adxl::AscendString, adxl::AscendString> EngineOptions(
    const std::vector<std::pair<std::string, std::string>> &kv) {
  std::map<adxl::AscendString, adxl::AscendString> m;
  for (const auto &p : kv) m[adxl::AscendString(p.first.c_str())] = adxl::AscendString(p.second.c_str());
  return m;
}

// Result of a timed engine call.
struct Timed {
  uint32_t status = UINT32_MAX;
  int64_t ms = 0;
};

}  // namespace itest

// ---------------------------------------------------------------------------------
// gtest part: a fixture for tests whose process runs one AdxlEngine against peers.
// Define ITEST_USE_GTEST before including this header to get it.
// ---------------------------------------------------------------------------------
#ifdef ITEST_USE_GTEST
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include "adxl/adxl_engine.h"

// Status assertions that print names ("PARAM_INVALID") rather than numbers.
#define EXPECT_ST(expected, actual) EXPECT_EQ(::itest::StatusName(expected), ::itest::StatusName(actual))
#define ASSERT_ST(expected, actual) ASSERT_EQ(::itest::StatusName(expected), ::itest::StatusName(actual))

namespace itest {

// Prints an observation (e.g. which of several allowed statuses the engine chose).
inline void Note(const std::string &what) {
  std::printf("[   NOTE   ] %s\n", what.c_str());
  std::fflush(stdout);
}

// Margin allowed on top of a call's own timeout before "it returned late" fails.
constexpr int64_t kReturnMarginMs = 1500;

// Runs fn under a watchdog (hang -> the binary aborts with a message) and times it.
inline Timed TimedCall(const std::string &what, int64_t watchdog_ms, const std::function<uint32_t()> &fn) {
  Watchdog dog(watchdog_ms, what);
  const auto t0 = Clock::now();
  Timed r;
  r.status = fn();
  r.ms = MsSince(t0);
  return r;
}

// Data path used by the fixture's engines and peers ("llmdd.Transport"): "tcp"
// unless the environment variable ITEST_ADXL_TRANSPORT says otherwise ("shm",
// "auto"); tests parameterized over the transport call UseTransport().
inline std::string DefaultTransport() {
  const char *e = getenv("ITEST_ADXL_TRANSPORT");
  return (e != nullptr && e[0] != '\0') ? e : "tcp";
}

// The transports that parameterized tests run over: tcp and shm, or only the
// one ITEST_ADXL_TRANSPORT names when it is set (ctest's ucx_tcp.* / ucx_sm.*
// entries run whole suites once more with "ucx", tests/CMakeLists.txt).
inline std::vector<std::string> AllTransports() {
  const char *e = getenv("ITEST_ADXL_TRANSPORT");
  if (e != nullptr && e[0] != '\0') return {e};
  return {"tcp", "shm"};
}

class AdxlFixture : public ::testing::Test {
 protected:
  adxl::AdxlEngine engine_;
  std::string engine_id_;
  bool initialized_ = false;
  std::vector<std::unique_ptr<AdxlPeer>> peers_;
  std::set<std::string> connected_;
  std::string transport_ = DefaultTransport();

  void UseTransport(const std::string &t) { transport_ = t; }

  // opts plus {"llmdd.Transport", transport_} unless opts already names one.
  std::vector<std::pair<std::string, std::string>> WithTransport(
      std::vector<std::pair<std::string, std::string>> opts) const {
    for (const auto &kv : opts)
      if (kv.first == "llmdd.Transport") return opts;
    opts.emplace_back("llmdd.Transport", transport_);
    return opts;
  }

  // Starts a peer (from the main thread); nullptr + a recorded failure on error.
  AdxlPeer *StartPeer(const AdxlPeer::Options &opt_in) {
    AdxlPeer::Options opt = opt_in;
    opt.engine_options = WithTransport(opt.engine_options);
    std::string err;
    auto p = AdxlPeer::Start(opt, &err);
    if (!p) {
      ADD_FAILURE() << "could not start adxl_peer (" << AdxlPeer::PeerPath() << "): " << err;
      return nullptr;
    }
    peers_.push_back(std::move(p));
    return peers_.back().get();
  }

  ::testing::AssertionResult InitClient(const std::vector<std::pair<std::string, std::string>> &opts = {},
                                        const std::string &id = "127.0.0.1") {
    uint32_t st = engine_.Initialize(adxl::AscendString(id.c_str()), EngineOptions(WithTransport(opts)));
    if (st != adxl::SUCCESS)
      return ::testing::AssertionFailure() << "Initialize(" << id << ") returned " << StatusName(st);
    engine_id_ = id;
    initialized_ = true;
    return ::testing::AssertionSuccess();
  }

  // Listening engine on a free port of `host` ("127.0.0.1" or "::1"); retries when
  // the port was taken meanwhile (FAILED).
  ::testing::AssertionResult InitServer(const std::vector<std::pair<std::string, std::string>> &opts = {},
                                        const std::string &host = "127.0.0.1") {
    const bool v6 = host.find(':') != std::string::npos;
    uint32_t st = adxl::FAILED;
    for (int attempt = 0; attempt < 20; ++attempt) {
      int port = PickFreePort(host.c_str(), v6 ? AF_INET6 : AF_INET);
      std::string id = v6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
      st = engine_.Initialize(adxl::AscendString(id.c_str()), EngineOptions(WithTransport(opts)));
      if (st == adxl::SUCCESS) {
        engine_id_ = id;
        initialized_ = true;
        return ::testing::AssertionSuccess();
      }
      if (st != adxl::FAILED) break;
    }
    return ::testing::AssertionFailure() << "Initialize(server on " << host << ") returned " << StatusName(st);
  }

  ::testing::AssertionResult ConnectTo(AdxlPeer &peer, int32_t timeout_ms = 10000) {
    Timed r = TimedCall("Connect(" + peer.id() + ")", timeout_ms + 30000,
                        [&] { return engine_.Connect(peer.engine(), timeout_ms); });
    if (r.status != adxl::SUCCESS)
      return ::testing::AssertionFailure() << "Connect(" << peer.id() << ") returned " << StatusName(r.status)
                                           << " after " << r.ms << " ms";
    connected_.insert(peer.id());
    return ::testing::AssertionSuccess();
  }

  Timed Transfer(const std::string &remote, adxl::TransferOp op, const std::vector<adxl::TransferOpDesc> &descs,
                 int32_t timeout_ms) {
    return TimedCall("TransferSync(" + remote + ", " + (op == adxl::READ ? "READ" : "WRITE") + ", " +
                         std::to_string(descs.size()) + " descs, timeout " + std::to_string(timeout_ms) + ")",
                     static_cast<int64_t>(timeout_ms > 0 ? timeout_ms : 0) + 30000,
                     [&] { return engine_.TransferSync(adxl::AscendString(remote.c_str()), op, descs, timeout_ms); });
  }
  uint32_t Xfer(AdxlPeer &peer, adxl::TransferOp op, const std::vector<adxl::TransferOpDesc> &descs,
                int32_t timeout_ms) {
    return Transfer(peer.id(), op, descs, timeout_ms).status;
  }

  uint32_t DisconnectFrom(const std::string &remote, int32_t timeout_ms = 10000) {
    Timed r = TimedCall("Disconnect(" + remote + ")", timeout_ms + 30000,
                        [&] { return engine_.Disconnect(adxl::AscendString(remote.c_str()), timeout_ms); });
    connected_.erase(remote);
    return r.status;
  }

  AdxlPeer *FindPeer(const std::string &id) {
    for (auto &p : peers_)
      if (p->id() == id) return p.get();
    return nullptr;
  }

  // Clean shutdown: Disconnect (SUCCESS expected from healthy peers), QUIT each
  // peer (exit code 0 expected from healthy peers), Finalize under a watchdog.
  void TearDown() override {
    for (const std::string &remote : std::set<std::string>(connected_)) {
      AdxlPeer *p = FindPeer(remote);
      uint32_t st = DisconnectFrom(remote, 10000);
      if (p != nullptr && !p->faulted()) {
        EXPECT_ST(adxl::SUCCESS, st) << "Disconnect(" << remote << ") at teardown";
      }
    }
    for (auto &p : peers_) {
      if (p->faulted()) {
        p->Continue();
        continue;  // destructor kills it
      }
      EXPECT_EQ("", p->Quit()) << "peer did not shut down cleanly";
    }
    if (initialized_) {
      Watchdog dog(30000, "Finalize()");
      engine_.Finalize();
      initialized_ = false;
    }
    peers_.clear();
  }
};

}  // namespace itest
#endif  // ITEST_USE_GTEST

