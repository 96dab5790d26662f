// llmdd_doctor: says whether this host and a peer engine are fit for the
// library, and how to fix what is not (docs/DOCTOR.md).
//
//   llmdd_doctor local [--peers N] [--lanes L] [--transport auto|tcp|shm]
//   llmdd_doctor peer IP:PORT [--secret S] [--transport auto|tcp|shm] ...
//   llmdd_doctor serve IP:PORT [--secret S] [--bytes N] [--seconds T]
//
// Every check prints one line "OK|WARN|FAIL|SKIP <check>: <what it found>",
// and every WARN or FAIL a second line "  fix: <one line>". The exit status is
// 1 when a check FAILed (something blocks use), 2 for a bad command line, 0
// otherwise. Every step has a deadline: the slowest `local` takes ~5 s, `peer`
// its --timeout-ms plus ~3 s.
//
// Linked against the public library only (adxl/adxl_engine.h and
// llmdd/extensions.h), like every tool.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "llmdd/extensions.h"
#include "tool_util.h"

namespace {

using llmdd_tools::Format;
using llmdd_tools::NowNs;
using llmdd_tools::StatusWithNumber;

// ------------------------------------------------------------------ report

enum class Verdict { kOk, kWarn, kFail, kSkip };

struct Report {
  int ok = 0, warn = 0, fail = 0, skip = 0;
  void Line(Verdict v, const std::string &check, const std::string &what, const std::string &fix = "") {
    static const char *const kWord[] = {"OK  ", "WARN", "FAIL", "SKIP"};
    printf("%s %s: %s\n", kWord[static_cast<int>(v)], check.c_str(), what.c_str());
    if (!fix.empty() && (v == Verdict::kWarn || v == Verdict::kFail)) printf("  fix: %s\n", fix.c_str());
    fflush(stdout);
    (v == Verdict::kOk ? ok : v == Verdict::kWarn ? warn : v == Verdict::kFail ? fail : skip)++;
  }
  int Finish(const char *mode) const {
    printf("llmdd_doctor %s: %d OK, %d WARN, %d FAIL, %d SKIP%s\n", mode, ok, warn, fail, skip,
           fail > 0 ? " (something blocks use: see the fix lines)" : "");
    return fail > 0 ? 1 : 0;
  }
};

// ------------------------------------------------------------------ small helpers

std::string ReadFirstLine(const char *path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return "";
  return line;
}

bool ParseU64(const std::string &text, uint64_t *out) {
  if (text.empty()) return false;
  char *end = nullptr;
  errno = 0;
  const unsigned long long v = strtoull(text.c_str(), &end, 0);
  if (errno != 0 || end == text.c_str() || *end != '\0' || text[0] == '-') return false;
  *out = v;
  return true;
}

// "64 MiB", "512 KiB", "12 B".
std::string Bytes(uint64_t n) {
  if (n >= (1ULL << 30) && n % (1ULL << 30) == 0) return Format("%" PRIu64 " GiB", n >> 30);
  if (n >= (1ULL << 20) && n % (1ULL << 20) == 0) return Format("%" PRIu64 " MiB", n >> 20);
  if (n >= (1ULL << 10) && n % (1ULL << 10) == 0) return Format("%" PRIu64 " KiB", n >> 10);
  return Format("%" PRIu64 " B", n);
}

// Why the last library call failed, without the doctor's own log (LastErrors
// keeps the error lines whatever LLMDD_LOG_LEVEL prints).
std::string LastError() {
  std::string text = llmdd_ext::LastErrors();
  return text.empty() ? "(no error text)" : text;
}

bool Contains(const std::string &text, const char *what) { return text.find(what) != std::string::npos; }

// A free TCP port on 127.0.0.1 (bound, read, closed: a race with another
// program is possible and only makes the probe fail, reported as such).
int FreeLoopbackPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  close(fd);
  return port;
}

// Waits up to `ms` for `fd` to be readable; false on timeout.
bool WaitReadable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  int rc;
  const int64_t end = NowNs() + static_cast<int64_t>(ms) * 1000000;
  do {
    const int64_t left = (end - NowNs()) / 1000000;
    rc = poll(&p, 1, static_cast<int>(std::max<int64_t>(left, 0)));
  } while (rc < 0 && errno == EINTR);
  return rc > 0;
}

// Reaps `pid` within `ms`, killing it (SIGKILL) if it is still there then.
void ReapWithin(pid_t pid, int ms) {
  const int64_t end = NowNs() + static_cast<int64_t>(ms) * 1000000;
  for (;;) {
    int status = 0;
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) return;
    if (NowNs() >= end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return;
    }
    usleep(2000);
  }
}

// ------------------------------------------------------------------ the doctor buffer
//
// `serve` registers a read-only buffer at a fixed address, so that `peer` can
// find it without a side channel: the address is the same in every process
// where it is free (x86-64 and 48-bit arm64 user space), and `peer` checks
// the header before it trusts it. Where the address is taken, `serve` maps
// the buffer elsewhere and prints the --remote-addr/--remote-len to pass.
// Why this address: above where ASLR puts PIE binaries and their heap
// (0x5555... plus at most 1 TiB) and inside what ThreadSanitizer accepts as
// application memory (0x5500... to 0x5680...); TSan kills a process that maps
// a fixed address outside its application ranges (the first choice,
// 0x6c6c6d640000, did so under the TSan CI run). ASan accepts it too.
constexpr uint64_t kDoctorAddr = 0x566c6c6d0000ULL;  // "Vllm"
constexpr char kDoctorMagic[16] = "llmdd-doctor-v1";
constexpr size_t kHeaderBytes = 64;

struct DoctorHeader {
  char magic[16];
  uint64_t length;  // of the whole buffer, header included
  uint8_t reserved[kHeaderBytes - 24];
};
static_assert(sizeof(DoctorHeader) == kHeaderBytes, "the header is 64 bytes");

// The bytes after the header: a function of the offset, so a reader checks
// any range it read without a copy of the buffer.
inline uint8_t PatternByte(uint64_t offset) {
  return static_cast<uint8_t>((offset ^ (offset >> 8) ^ (offset >> 16) ^ (offset >> 24)) * 151U + 7U);
}

void FillPattern(uint8_t *buf, uint64_t len) {
  DoctorHeader header{};
  memcpy(header.magic, kDoctorMagic, sizeof(kDoctorMagic));
  header.length = len;
  memcpy(buf, &header, sizeof(header));
  for (uint64_t i = kHeaderBytes; i < len; ++i) buf[i] = PatternByte(i);
}

// First offset in [from, from + n) where `got` differs from the pattern, or -1.
int64_t FirstMismatch(const uint8_t *got, uint64_t from, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (got[i] != PatternByte(from + i)) return static_cast<int64_t>(from + i);
  }
  return -1;
}

volatile sig_atomic_t g_stop = 0;
void OnStopSignal(int) { g_stop = 1; }

// ------------------------------------------------------------------ options

struct Options {
  std::string mode;
  std::string address;  // peer / serve
  uint64_t peers = 64;
  uint64_t lanes = 4;  // llmdd.TcpConnections' default
  std::string transport = "auto";
  std::string secret;
  bool has_secret = false;
  uint64_t timeout_ms = 3000;
  uint64_t bytes = 64ULL << 20;
  uint64_t seconds = 0;  // serve: 0 = until a signal; peer: bandwidth test length (1 s when 0)
  uint64_t remote_addr = 0, remote_len = 0;
  uint64_t rtt_samples = 200;
};

void Usage(FILE *out) {
  fprintf(out,
          "usage:\n"
          "  llmdd_doctor local [--peers N] [--lanes L] [--transport auto|tcp|shm]\n"
          "      checks this host: the same-host path (ptrace rights, pidfd, PID namespace, a real\n"
          "      same-host transfer between two processes), the fd and thread limits for N peers\n"
          "      (default 64) with L data lanes each (llmdd.TcpConnections, default 4), huge pages,\n"
          "      UCX (when the library has it), the monotonic clock.\n"
          "  llmdd_doctor peer IP:PORT [--secret S] [--transport auto|tcp|shm] [--timeout-ms MS]\n"
          "                   [--seconds T] [--remote-addr A --remote-len N]\n"
          "      connects to a running engine: reachability, authentication, library versions,\n"
          "      transports, the path transfers take, round-trip time (median of 8-byte READs) and\n"
          "      READ bandwidth for T seconds (default 1) against the buffer of `llmdd_doctor serve`\n"
          "      (or memory the peer registered for remote reads: --remote-addr/--remote-len).\n"
          "      The secret may also come from LLMDD_AUTH_SECRET (as for every engine).\n"
          "  llmdd_doctor serve IP:PORT [--secret S] [--bytes N] [--seconds T]\n"
          "      runs an engine at IP:PORT that exposes a read-only N-byte test buffer (default\n"
          "      64 MiB) to `llmdd_doctor peer`, until SIGINT/SIGTERM or T seconds.\n"
          "Each check prints OK/WARN/FAIL/SKIP; each WARN and FAIL a `fix:` line.\n"
          "Exit status: 0 nothing blocks use, 1 a check failed, 2 bad command line.\n"
          "Engine log lines are off unless LLMDD_LOG_LEVEL is set.\n");
}

bool ParseArgs(int argc, char **argv, Options *o) {
  if (argc < 2) return false;
  o->mode = argv[1];
  int i = 2;
  if (o->mode == "peer" || o->mode == "serve") {
    if (argc < 3 || argv[2][0] == '-') return false;
    o->address = argv[2];
    i = 3;
  } else if (o->mode != "local") {
    return false;
  }
  for (; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string *out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    auto number = [&](uint64_t *out, uint64_t min) {
      std::string v;
      return value(&v) && ParseU64(v, out) && *out >= min;
    };
    bool good = false;
    if (arg == "--peers") good = o->mode == "local" && number(&o->peers, 1);
    else if (arg == "--lanes") good = o->mode == "local" && number(&o->lanes, 1) && o->lanes <= 64;
    else if (arg == "--transport")
      good = o->mode != "serve" && value(&o->transport) &&
             (o->transport == "auto" || o->transport == "tcp" || o->transport == "shm");
    else if (arg == "--secret") good = o->mode != "local" && value(&o->secret) && (o->has_secret = true);
    else if (arg == "--timeout-ms") good = o->mode == "peer" && number(&o->timeout_ms, 1) && o->timeout_ms <= 600000;
    else if (arg == "--bytes") good = o->mode == "serve" && number(&o->bytes, 1 << 20);
    else if (arg == "--seconds") good = o->mode != "local" && number(&o->seconds, 1) && o->seconds <= 86400 * 365;
    else if (arg == "--remote-addr") good = o->mode == "peer" && number(&o->remote_addr, 1);
    else if (arg == "--remote-len") good = o->mode == "peer" && number(&o->remote_len, 8);
    if (!good) {
      fprintf(stderr, "llmdd_doctor: bad or misplaced argument '%s'\n", arg.c_str());
      return false;
    }
  }
  if ((o->remote_addr == 0) != (o->remote_len == 0)) {
    fprintf(stderr, "llmdd_doctor: --remote-addr and --remote-len go together\n");
    return false;
  }
  return true;
}

std::map<adxl::AscendString, adxl::AscendString> EngineOptions(const Options &o, const std::string &transport) {
  std::map<adxl::AscendString, adxl::AscendString> options;
  options["llmdd.Transport"] = transport.c_str();
  if (o.has_secret) options["llmdd.AuthSecret"] = o.secret.c_str();
  return options;
}

// ------------------------------------------------------------------ local: the same-host path

// Probe 1: the kernel calls the same-host path makes, between two sibling
// processes (as two unrelated engines are): A holds a token; B opens a pidfd
// for A and reads the token with process_vm_readv. Returns 0 or the errno
// (ENOSYS for a kernel without pidfd_open), *what naming the failing call.
int ProbeCrossProcessRead(std::string *what) {
  static char token[32] = "llmdd-doctor same-host token...";
  int ready[2], result[2];
  if (pipe2(ready, O_CLOEXEC) != 0) {
    *what = "pipe";
    return errno;
  }
  if (pipe2(result, O_CLOEXEC) != 0) {
    close(ready[0]);
    close(ready[1]);
    *what = "pipe";
    return errno;
  }
  const pid_t a = fork();
  if (a == 0) {  // A: waits until the parent closes its end (or 5 s)
    close(ready[1]);
    WaitReadable(ready[0], 5000);
    _exit(0);
  }
  int err = 0;
  std::string step;
  if (a < 0) {
    err = errno;
    step = "fork";
  } else {
    const pid_t b = fork();
    if (b == 0) {  // B: the reader
      int codes[2] = {0, 0};
#ifdef SYS_pidfd_open
      const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, a, 0));
      if (pidfd < 0) codes[0] = 1, codes[1] = errno;
#else
      codes[0] = 1, codes[1] = ENOSYS;
#endif
      if (codes[0] == 0) {
        char got[sizeof(token)] = {};
        iovec l{got, sizeof(got)}, r{token, sizeof(token)};
        const ssize_t n = process_vm_readv(a, &l, 1, &r, 1, 0);
        if (n != static_cast<ssize_t>(sizeof(got))) codes[0] = 2, codes[1] = n < 0 ? errno : EIO;
        else if (memcmp(got, token, sizeof(got)) != 0) codes[0] = 2, codes[1] = EIO;
      }
      (void)!write(result[1], codes, sizeof(codes));
      _exit(0);
    }
    close(result[1]);
    result[1] = -1;
    int codes[2] = {3, ETIMEDOUT};
    if (b < 0) {
      codes[0] = 3, codes[1] = errno;
    } else if (!WaitReadable(result[0], 3000) || read(result[0], codes, sizeof(codes)) != sizeof(codes)) {
      codes[0] = 3, codes[1] = ETIMEDOUT;
    }
    if (b > 0) ReapWithin(b, 1000);
    err = codes[1];
    step = codes[0] == 1 ? "pidfd_open" : codes[0] == 2 ? "process_vm_readv" : "the probe process";
    if (codes[0] == 0) err = 0;
  }
  close(ready[1]);
  if (a > 0) ReapWithin(a, 1000);
  close(ready[0]);
  close(result[0]);
  if (result[1] >= 0) close(result[1]);
  *what = step;
  return err;
}

// Probe 2: the engine itself. A child serves a registered buffer on
// 127.0.0.1; this process connects with llmdd.Transport=shm (which refuses a
// channel without the same-host path both ways) and READs it. SUCCESS with
// the right bytes, or *why. Runs before this process starts any engine
// thread (the fork).
bool ProbeEngineSameHost(std::string *why, double *read_us) {
  constexpr size_t kBytes = 1 << 20;
  std::vector<uint8_t> served(kBytes);
  FillPattern(served.data(), kBytes);
  const int port = FreeLoopbackPort();
  if (port <= 0) {
    *why = "no free port on 127.0.0.1 for the probe engine";
    return false;
  }
  const std::string address = Format("127.0.0.1:%d", port);
  int up[2], down[2];
  if (pipe2(up, O_CLOEXEC) != 0) {
    *why = std::string("pipe: ") + strerror(errno);
    return false;
  }
  if (pipe2(down, O_CLOEXEC) != 0) {
    close(up[0]);
    close(up[1]);
    *why = std::string("pipe: ") + strerror(errno);
    return false;
  }
  const pid_t child = fork();
  if (child == 0) {
    close(up[0]);
    close(down[1]);
    char status = 'x';
    {
      adxl::AdxlEngine engine;
      std::map<adxl::AscendString, adxl::AscendString> options;
      options["llmdd.Transport"] = "auto";
      adxl::MemHandle handle = nullptr;
      adxl::MemDesc mem{};
      mem.addr = reinterpret_cast<uintptr_t>(served.data());
      mem.len = kBytes;
      llmdd_ext::SetRemoteAccess(mem, llmdd_ext::kRemoteReadOnly);
      if (engine.Initialize(address.c_str(), options) == adxl::SUCCESS &&
          engine.RegisterMem(mem, adxl::MEM_HOST, handle) == adxl::SUCCESS)
        status = 'r';
      (void)!write(up[1], &status, 1);
      if (status == 'r') WaitReadable(down[0], 8000);  // until the parent is done (its end closes)
      engine.Finalize();
    }
    _exit(status == 'r' ? 0 : 1);
  }
  close(up[1]);
  close(down[0]);
  bool ok = false;
  char status = 0;
  if (child < 0) {
    *why = std::string("fork: ") + strerror(errno);
  } else if (!WaitReadable(up[0], 5000) || read(up[0], &status, 1) != 1 || status != 'r') {
    *why = "the probe engine did not start on " + address;
  } else {
    adxl::AdxlEngine engine;
    std::map<adxl::AscendString, adxl::AscendString> options;
    options["llmdd.Transport"] = "shm";
    std::vector<uint8_t> got(kBytes, 0);
    adxl::MemHandle handle = nullptr;
    adxl::MemDesc mem{};
    mem.addr = reinterpret_cast<uintptr_t>(got.data());
    mem.len = kBytes;
    mem.local_only = true;
    llmdd_ext::ClearLastErrors();
    adxl::Status s = engine.Initialize("127.0.0.1", options);
    if (s == adxl::SUCCESS) s = engine.RegisterMem(mem, adxl::MEM_HOST, handle);
    if (s == adxl::SUCCESS) s = engine.Connect(address.c_str(), 3000);
    if (s != adxl::SUCCESS) {
      *why = LastError();
    } else {
      adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(got.data()), reinterpret_cast<uintptr_t>(served.data()),
                                kBytes};
      const int64_t t0 = NowNs();
      s = engine.TransferSync(address.c_str(), adxl::READ, {desc}, 2000);
      *read_us = static_cast<double>(NowNs() - t0) / 1e3;
      if (s != adxl::SUCCESS) {
        *why = "a 1 MiB same-host READ failed: " + StatusWithNumber(s) + ": " + LastError();
      } else if (memcmp(got.data(), served.data(), kBytes) != 0) {
        *why = "a 1 MiB same-host READ returned wrong bytes";
      } else {
        ok = true;
      }
      engine.Disconnect(address.c_str(), 1000);
    }
    engine.Finalize();
  }
  close(down[1]);
  close(up[0]);
  if (child > 0) ReapWithin(child, 3000);
  return ok;
}

int YamaScope() {
  const std::string text = ReadFirstLine("/proc/sys/kernel/yama/ptrace_scope");
  uint64_t v = 0;
  return ParseU64(text, &v) ? static_cast<int>(v) : -1;  // -1: no Yama
}

bool HasCapSysPtrace() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, 7, "CapEff:") == 0) {
      const uint64_t caps = strtoull(line.c_str() + 7, nullptr, 16);
      return (caps >> 19) & 1;  // CAP_SYS_PTRACE
    }
  }
  return false;
}

std::string StatusField(const char *name) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = strlen(name);
  while (std::getline(in, line)) {
    if (line.compare(0, n, name) == 0 && line.size() > n && line[n] == ':') {
      size_t at = n + 1;
      while (at < line.size() && (line[at] == ' ' || line[at] == '\t')) ++at;
      return line.substr(at);
    }
  }
  return "";
}

void CheckSameHost(Report &r, const Options &o) {
  // Not having the path costs speed, not function (the engine falls back to
  // TCP), unless the application requires it with llmdd.Transport=shm.
  const bool required = o.transport == "shm";
  const Verdict missing = required ? Verdict::kFail : Verdict::kWarn;
  const std::string consequence = required ? "llmdd.Transport=shm refuses every same-host Connect"
                                           : "same-host peers fall back to TCP (slower)";
  if (o.transport == "tcp") {
    r.Line(Verdict::kSkip, "same-host", "--transport tcp: the path is not used");
    return;
  }
  const int yama = YamaScope();
  const bool cap = HasCapSysPtrace();
  const std::string seccomp = StatusField("Seccomp");
  // Yama: 0 classic ptrace rights; 1 only over descendants (unrelated engine
  // processes cannot read each other), 2 only with CAP_SYS_PTRACE, 3 never.
  if (yama < 0) {
    r.Line(Verdict::kOk, "ptrace-scope", "no Yama LSM: same-user processes may read each other's memory");
  } else if (yama == 0 || (yama <= 2 && cap)) {
    r.Line(Verdict::kOk, "ptrace-scope",
           Format("kernel.yama.ptrace_scope=%d%s", yama, yama == 0 ? "" : " (CAP_SYS_PTRACE held)"));
  } else {
    r.Line(missing, "ptrace-scope",
           Format("kernel.yama.ptrace_scope=%d: %s; %s", yama,
                  yama == 1 ? "only a process's ancestors may read its memory, not another engine"
                  : yama == 2 ? "only processes with CAP_SYS_PTRACE may read another's memory"
                              : "no process may read another's memory (until reboot)",
                  consequence.c_str()),
           yama == 3 ? "reboot with kernel.yama.ptrace_scope=1 or 0 (3 cannot be lowered at run time), or run "
                       "with --transport tcp"
                     : "sysctl -w kernel.yama.ptrace_scope=0   (or give both engines CAP_SYS_PTRACE)");
  }
  r.Line(Verdict::kOk, "capabilities",
         cap ? "CAP_SYS_PTRACE held (reads any process's memory)"
             : "no CAP_SYS_PTRACE: the path works between processes of the same user");
  const std::string nspid = StatusField("NSpid");
  const size_t levels = nspid.empty() ? 1 : static_cast<size_t>(std::count(nspid.begin(), nspid.end(), '\t')) + 1;
  char ns[64] = "";
  const ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
  if (n > 0) ns[n] = '\0';
  r.Line(Verdict::kOk, "pid-namespace",
         Format("%s%s: the path reaches engines in this PID (and network) namespace only", ns,
                levels > 1 ? Format(" (nested, level %zu: a container)", levels).c_str() : ""));

  std::string step;
  const int err = ProbeCrossProcessRead(&step);
  if (err == 0) {
    r.Line(Verdict::kOk, "cross-process-read", "pidfd_open and process_vm_readv between two sibling processes work");
  } else {
    std::string fix;
    if (err == ENOSYS)
      fix = "upgrade to Linux >= 5.3 (pidfd_open), or run with --transport tcp";
    else if (err == EPERM && yama >= 1 && !cap)
      fix = "sysctl -w kernel.yama.ptrace_scope=0";
    else if (err == EPERM && seccomp == "2")
      fix = "allow process_vm_readv in the seccomp profile (docker: --cap-add SYS_PTRACE, or "
            "--security-opt seccomp=<profile permitting it>)";
    else if (err == EPERM)
      fix = "run both engines as the same user with the same capabilities (or give them CAP_SYS_PTRACE)";
    else
      fix = "see docs/DOCTOR.md (same-host); meanwhile --transport tcp works";
    r.Line(missing, "cross-process-read",
           Format("%s between two sibling processes failed: %s%s; %s", step.c_str(), strerror(err),
                  seccomp == "2" ? " (a seccomp filter is active)" : "", consequence.c_str()),
           fix);
  }
  std::string why;
  double read_us = 0;
  if (ProbeEngineSameHost(&why, &read_us)) {
    r.Line(Verdict::kOk, "same-host-engine",
           Format("two engines on 127.0.0.1 verified each other (llmdd.Transport=shm) and a 1 MiB READ "
                  "returned the right bytes (%.0f us, lanes opened on the way)",
                  read_us));
  } else {
    r.Line(missing, "same-host-engine",
           Format("an engine could not use the same-host path to another on this host: %s; %s", why.c_str(),
                  consequence.c_str()),
           err != 0 ? "fix cross-process-read above first"
                    : "see docs/DOCTOR.md (same-host); meanwhile --transport tcp works");
  }
}

// ------------------------------------------------------------------ local: limits

void CheckFdLimit(Report &r, const Options &o) {
  // Per peer, with everything busy (docs/ARCHITECTURE.md, docs/PERFORMANCE.md
  // "peers"): the control connection, the same-host pidfd, llmdd.TcpConnections
  // data lanes and the express lane; an idle peer holds the first two only.
  // Per engine: epoll, eventfd, timerfd, the listener and a reserve
  // descriptor; the application's own files come on top: 64 in all.
  const uint64_t per_peer = 2 + o.lanes + 1;
  const uint64_t constant = 64;
  const uint64_t need = o.peers * per_peer + constant;
  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  const std::string what =
      Format("RLIMIT_NOFILE soft %" PRIu64 ", hard %" PRIu64 "; %" PRIu64 " peers x %" PRIu64
             " fds (control, pidfd, %" PRIu64 " lanes, express lane) + %" PRIu64 " = %" PRIu64 " needed",
             static_cast<uint64_t>(lim.rlim_cur), static_cast<uint64_t>(lim.rlim_max), o.peers, per_peer, o.lanes,
             constant, need);
  if (lim.rlim_cur == RLIM_INFINITY || lim.rlim_cur >= need) {
    r.Line(Verdict::kOk, "fd-limit", what);
  } else if (lim.rlim_max == RLIM_INFINITY || lim.rlim_max >= need) {
    r.Line(Verdict::kFail, "fd-limit", what + ": connects beyond the limit fail with RESOURCE_EXHAUSTED",
           Format("ulimit -n %" PRIu64 "   (in the shell or service that starts the engine)", need));
  } else {
    r.Line(Verdict::kFail, "fd-limit", what + ": even the hard limit is too low",
           Format("raise the hard limit: LimitNOFILE=%" PRIu64 " in the systemd unit, or '* - nofile %" PRIu64
                  "' in /etc/security/limits.conf, or docker run --ulimit nofile=%" PRIu64 ":%" PRIu64,
                  need, need, need, need));
  }
  uint64_t nr_open = 0;
  if (ParseU64(ReadFirstLine("/proc/sys/fs/nr_open"), &nr_open) && nr_open < need) {
    r.Line(Verdict::kFail, "fd-nr-open", Format("fs.nr_open %" PRIu64 " < %" PRIu64 " needed", nr_open, need),
           Format("sysctl -w fs.nr_open=%" PRIu64, need));
  }
}

// Threads of processes owned by `uid` (RLIMIT_NPROC counts them all).
uint64_t ThreadsOfUser(uid_t uid) {
  uint64_t total = 0;
  DIR *d = opendir("/proc");
  if (d == nullptr) return 0;
  while (dirent *e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream in(std::string("/proc/") + e->d_name + "/status");
    std::string line;
    bool mine = false;
    while (std::getline(in, line)) {
      if (line.compare(0, 4, "Uid:") == 0) mine = strtoul(line.c_str() + 4, nullptr, 10) == uid;
      if (line.compare(0, 8, "Threads:") == 0 && mine) total += strtoull(line.c_str() + 8, nullptr, 10);
    }
  }
  closedir(d);
  return total;
}

void CheckThreads(Report &r, const Options &o) {
  (void)o;
  // An engine's threads do not grow with its peers (docs/ARCHITECTURE.md):
  // at most llmdd.EventThreads (8) + llmdd.WorkerThreads (8), plus HIXL's
  // connect pool (2) and the caller's own. 32 leaves room for that.
  constexpr uint64_t kEngineThreads = 32;
  rlimit lim{};
  getrlimit(RLIMIT_NPROC, &lim);
  const uid_t uid = getuid();
  if (lim.rlim_cur == RLIM_INFINITY || uid == 0) {
    r.Line(Verdict::kOk, "thread-limit",
           Format("RLIMIT_NPROC %s; an engine needs at most ~%" PRIu64 " threads whatever its peers",
                  uid == 0 ? "does not apply to root" : "unlimited", kEngineThreads));
  } else {
    const uint64_t used = ThreadsOfUser(uid);
    const std::string what = Format("RLIMIT_NPROC %" PRIu64 ", this user runs %" PRIu64 " threads; an engine needs "
                                    "at most ~%" PRIu64 " more whatever its peers",
                                    static_cast<uint64_t>(lim.rlim_cur), used, kEngineThreads);
    if (used + kEngineThreads <= lim.rlim_cur) {
      r.Line(Verdict::kOk, "thread-limit", what);
    } else {
      r.Line(Verdict::kFail, "thread-limit", what + ": thread starts would fail (RESOURCE_EXHAUSTED)",
             Format("ulimit -u %" PRIu64, used + 4 * kEngineThreads));
    }
  }
  // A container's cgroup caps tasks too.
  uint64_t max = 0, current = 0;
  if (ParseU64(ReadFirstLine("/sys/fs/cgroup/pids.max"), &max) &&
      ParseU64(ReadFirstLine("/sys/fs/cgroup/pids.current"), &current)) {
    const std::string what = Format("cgroup pids.max %" PRIu64 ", %" PRIu64 " in use", max, current);
    if (current + kEngineThreads <= max) {
      r.Line(Verdict::kOk, "cgroup-pids", what);
    } else {
      r.Line(Verdict::kFail, "cgroup-pids", what + ": thread starts would fail (RESOURCE_EXHAUSTED)",
             Format("raise the container's task limit (docker run --pids-limit %" PRIu64 ")",
                    current + 4 * kEngineThreads));
    }
  }
  uint64_t threads_max = 0;
  if (ParseU64(ReadFirstLine("/proc/sys/kernel/threads-max"), &threads_max) && threads_max < 4096) {
    r.Line(Verdict::kWarn, "threads-max", Format("kernel.threads-max %" PRIu64 " is low", threads_max),
           "sysctl -w kernel.threads-max=65536");
  }
}

void CheckHugePages(Report &r) {
  // MallocMem takes reserved huge pages when there are free ones, else
  // ordinary pages with MADV_HUGEPAGE: THP "never" leaves large buffers on
  // 4 KiB pages (registration and one-copy transfers touch 512x more pages).
  const std::string thp = ReadFirstLine("/sys/kernel/mm/transparent_hugepage/enabled");
  uint64_t reserved = 0;
  {
    std::ifstream in("/proc/meminfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.compare(0, 15, "HugePages_Free:") == 0) reserved = strtoull(line.c_str() + 15, nullptr, 10);
    }
  }
  const std::string note = Format("; %" PRIu64 " reserved huge pages free", reserved);
  if (thp.empty()) {
    r.Line(Verdict::kWarn, "huge-pages", "transparent huge pages not available" + note,
           "use a kernel with CONFIG_TRANSPARENT_HUGEPAGE, or reserve pages: sysctl -w vm.nr_hugepages=N");
  } else if (Contains(thp, "[never]") && reserved == 0) {
    r.Line(Verdict::kWarn, "huge-pages", "transparent huge pages: " + thp + note + ": large buffers use 4 KiB pages",
           "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled");
  } else {
    r.Line(Verdict::kOk, "huge-pages", "transparent huge pages: " + thp + note);
  }
}

void CheckUcx(Report &r) {
  // Asked of the loaded library at run time: it has a UCX transport when it
  // accepts llmdd.Transport=ucx.
  adxl::AdxlEngine engine;
  std::map<adxl::AscendString, adxl::AscendString> options;
  options["llmdd.Transport"] = "ucx";
  llmdd_ext::ClearLastErrors();
  const adxl::Status s = engine.Initialize("127.0.0.1", options);
  const std::string why = LastError();
  engine.Finalize();
  if (s == adxl::SUCCESS) {
    std::string devices;
    if (FILE *p = popen("timeout 5 ucx_info -d 2>/dev/null", "r")) {
      char line[512];
      while (fgets(line, sizeof(line), p) != nullptr) {
        const char *at = strstr(line, "Device:");
        if (at == nullptr) continue;
        std::string name(at + 7);
        name.erase(0, name.find_first_not_of(" \t"));
        name.erase(name.find_last_not_of(" \t\n") + 1);
        if (devices.find(name) == std::string::npos) devices += (devices.empty() ? "" : ", ") + name;
      }
      pclose(p);
    }
    r.Line(Verdict::kOk, "ucx",
           "the library has the UCX transport and it started" +
               (devices.empty() ? std::string(" (ucx_info not found: devices not listed)") : "; devices: " + devices));
  } else if (s == adxl::PARAM_INVALID && (Contains(why, "must be auto, tcp or shm") || Contains(why, "UCX") ||
                                          Contains(why, "ucx"))) {
    if (Contains(why, "must be auto, tcp or shm") || Contains(why, "not built") || Contains(why, "without"))
      r.Line(Verdict::kSkip, "ucx", "this library was built without the UCX transport");
    else
      r.Line(Verdict::kWarn, "ucx", "the UCX transport did not start: " + why,
             "check the devices UCX sees (ucx_info -d) and UCX_TLS / UCX_NET_DEVICES");
  } else {
    r.Line(Verdict::kWarn, "ucx", "the UCX transport did not start: " + StatusWithNumber(s) + ": " + why,
           "check the devices UCX sees (ucx_info -d) and UCX_TLS / UCX_NET_DEVICES");
  }
}

void CheckClock(Report &r) {
  timespec res{};
  clock_getres(CLOCK_MONOTONIC, &res);
  const std::string source = ReadFirstLine("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  const std::string available =
      ReadFirstLine("/sys/devices/system/clocksource/clocksource0/available_clocksource");
  // The engine reads the clock a few times per request (deadlines, spins):
  // measure a read, and that it never goes back.
  constexpr int kReads = 200000;
  int64_t prev = NowNs(), backwards = 0;
  const int64_t t0 = prev;
  for (int i = 0; i < kReads; ++i) {
    const int64_t now = NowNs();
    if (now < prev) ++backwards;
    prev = now;
  }
  const double ns_per_read = static_cast<double>(prev - t0) / kReads;
  const std::string what =
      Format("CLOCK_MONOTONIC resolution %ld ns, %.0f ns per read, source %s", res.tv_nsec + res.tv_sec * 1000000000L,
             ns_per_read, source.empty() ? "unknown" : source.c_str());
  if (backwards > 0) {
    r.Line(Verdict::kFail, "clock", what + Format(": went backwards %" PRId64 " times", backwards),
           "use a stable clock source: echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource");
  } else if (res.tv_sec != 0 || res.tv_nsec > 1000 || ns_per_read > 1000) {
    r.Line(Verdict::kWarn, "clock", what + ": slow or coarse (deadlines and spins read it per request)",
           Contains(available, "tsc") ? "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource"
                                      : "use a VM/host with a fast clock source (tsc, kvm-clock, arch_sys_counter)");
  } else {
    r.Line(Verdict::kOk, "clock", what);
  }
}

int RunLocal(const Options &o) {
  printf("llmdd_doctor local: library %s, planning for %" PRIu64 " peers, %" PRIu64 " lanes each, transport %s\n",
         llmdd_ext::Version(), o.peers, o.lanes, o.transport.c_str());
  Report r;
  CheckSameHost(r, o);  // first: it forks, before this process runs any engine thread
  CheckFdLimit(r, o);
  CheckThreads(r, o);
  CheckHugePages(r);
  CheckUcx(r);
  CheckClock(r);
  return r.Finish("local");
}

// ------------------------------------------------------------------ peer

// A plain TCP connect within `ms`: 0, or the errno (ETIMEDOUT at the deadline).
int TcpReach(const std::string &host, int port, int ms, double *connect_us) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  auto *v4 = reinterpret_cast<sockaddr_in *>(&ss);
  auto *v6 = reinterpret_cast<sockaddr_in6 *>(&ss);
  if (inet_pton(AF_INET, h.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, h.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*v6);
  } else {
    return EINVAL;
  }
  const int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  const int64_t t0 = NowNs();
  int err = 0;
  if (connect(fd, reinterpret_cast<sockaddr *>(&ss), len) != 0) {
    err = errno;
    if (err == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int rc;
      do rc = poll(&p, 1, ms);
      while (rc < 0 && errno == EINTR);
      if (rc == 0) {
        err = ETIMEDOUT;
      } else {
        socklen_t l = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
      }
    }
  }
  *connect_us = static_cast<double>(NowNs() - t0) / 1e3;
  close(fd);
  return err;
}

bool SplitHostPort(const std::string &address, std::string *host, int *port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  uint64_t p = 0;
  if (!ParseU64(address.substr(colon + 1), &p) || p == 0 || p > 65535) return false;
  *host = address.substr(0, colon);
  *port = static_cast<int>(p);
  return true;
}

// The verdict on a failed Connect, from its status and the error text the
// library recorded (handshake.cc's messages).
void ReportConnectFailure(Report &r, const Options &o, adxl::Status s, const std::string &why) {
  const std::string secret_source =
      o.has_secret ? "--secret" : getenv("LLMDD_AUTH_SECRET") != nullptr ? "LLMDD_AUTH_SECRET" : "";
  if (Contains(why, "requires authentication") || Contains(why, "did not offer authentication")) {
    r.Line(Verdict::kFail, "auth", "the peer requires a shared secret and we sent none",
           "pass --secret <the peer's llmdd.AuthSecret> (or set LLMDD_AUTH_SECRET)");
  } else if (Contains(why, "authentication failed") || Contains(why, "different shared secret")) {
    r.Line(Verdict::kFail, "auth",
           "the peer refused our proof: it has a different shared secret (ours from " + secret_source + ")",
           "use the peer's secret: --secret <its llmdd.AuthSecret> (or LLMDD_AUTH_SECRET)");
  } else if (Contains(why, "did not authenticate itself")) {
    r.Line(Verdict::kFail, "auth", "we have a secret (from " + secret_source + ") but the peer has none configured",
           "set the same llmdd.AuthSecret (or LLMDD_AUTH_SECRET) on the peer, or connect without a secret");
  } else if (Contains(why, "failed to prove it knows the shared secret")) {
    r.Line(Verdict::kFail, "auth", "the peer could not prove it knows our secret (a different secret, or an impostor)",
           "check that the peer at this address is the engine you meant and shares the secret");
  } else if (Contains(why, "same-host path") && o.transport == "shm") {
    r.Line(Verdict::kFail, "path", "--transport shm, but the same-host path is not available: " + why,
           "run `llmdd_doctor local --transport shm` on both hosts' side, or use --transport auto");
  } else if (Contains(why, "is full") || s == adxl::RESOURCE_EXHAUSTED) {
    r.Line(Verdict::kFail, "connect", "the peer refused: " + why,
           "raise the peer's llmdd.MaxSessions, or disconnect idle clients from it");
  } else if (s == adxl::TIMEOUT) {
    r.Line(Verdict::kFail, "handshake", Format("no answer to the handshake within %" PRIu64 " ms: %s", o.timeout_ms,
                                               why.c_str()),
           "something accepts connections there but does not answer as an llmdd engine: check the port, or the "
           "peer is frozen (see its log)");
  } else if (Contains(why, "answered hello") || Contains(why, "no valid answer")) {
    r.Line(Verdict::kFail, "handshake", "whatever listens there is not an llmdd engine (or a much older one): " + why,
           "check the port: point at the address the engine passed to Initialize");
  } else {
    r.Line(Verdict::kFail, "connect", StatusWithNumber(s) + ": " + why, "see the peer's log for the other side");
  }
}

// READs the 64-byte header at the doctor address; true when it is a doctor buffer.
bool FindDoctorBuffer(adxl::AdxlEngine &engine, const std::string &remote, uint8_t *local, uint64_t *length,
                      std::string *why) {
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local), static_cast<uintptr_t>(kDoctorAddr), kHeaderBytes};
  llmdd_ext::ClearLastErrors();
  const adxl::Status s = engine.TransferSync(remote.c_str(), adxl::READ, {desc}, 1000);
  if (s != adxl::SUCCESS) {
    *why = StatusWithNumber(s) + (s == adxl::PARAM_INVALID ? " (not registered there)" : ": " + LastError());
    return false;
  }
  DoctorHeader header;
  memcpy(&header, local, sizeof(header));
  if (memcmp(header.magic, kDoctorMagic, sizeof(kDoctorMagic)) != 0 || header.length < kHeaderBytes) {
    *why = "memory at the doctor address holds no doctor header";
    return false;
  }
  *length = header.length;
  return true;
}

int RunPeer(const Options &o) {
  const std::string remote = o.address;
  std::string host;
  int port = 0;
  if (!SplitHostPort(remote, &host, &port)) {
    fprintf(stderr, "llmdd_doctor: '%s' is not IP:PORT\n", remote.c_str());
    return 2;
  }
  printf("llmdd_doctor peer %s: library %s, transport %s, timeout %" PRIu64 " ms\n", remote.c_str(),
         llmdd_ext::Version(), o.transport.c_str(), o.timeout_ms);
  Report r;
  double connect_us = 0;
  const int err = TcpReach(host, port, static_cast<int>(o.timeout_ms), &connect_us);
  if (err == EINVAL) {
    fprintf(stderr, "llmdd_doctor: '%s' is not a numeric IP address\n", host.c_str());
    return 2;
  }
  if (err == ECONNREFUSED) {
    r.Line(Verdict::kFail, "reach", "nothing listens at " + remote + " (connection refused)",
           "start the engine there with a listening address (Initialize(\"IP:PORT\")), or check the port");
    return r.Finish("peer");
  }
  if (err == ETIMEDOUT) {
    r.Line(Verdict::kFail, "reach", Format("no TCP answer from %s within %" PRIu64 " ms", remote.c_str(), o.timeout_ms),
           Format("check the route and firewall: nc -vz %s %d", host.c_str(), port));
    return r.Finish("peer");
  }
  if (err != 0) {
    r.Line(Verdict::kFail, "reach", Format("cannot connect to %s: %s", remote.c_str(), strerror(err)),
           Format("check the address and route: ip route get %s", host.c_str()));
    return r.Finish("peer");
  }
  r.Line(Verdict::kOk, "reach", Format("%s accepts TCP connections (connect took %.0f us)", remote.c_str(), connect_us));

  adxl::AdxlEngine engine;
  llmdd_ext::ClearLastErrors();
  adxl::Status s = engine.Initialize("127.0.0.1", EngineOptions(o, o.transport));
  if (s != adxl::SUCCESS) {
    const std::string why = LastError();
    r.Line(Verdict::kFail, "setup", "this side's engine did not start: " + StatusWithNumber(s) + ": " + why,
           Contains(why, "AuthSecret") || Contains(why, "LLMDD_AUTH_SECRET")
               ? "use a secret of 16-4096 bytes (openssl rand -hex 32) on both engines"
               : "see the error above");
    return r.Finish("peer");
  }
  const bool have_secret = o.has_secret || getenv("LLMDD_AUTH_SECRET") != nullptr;
  llmdd_ext::ClearLastErrors();
  const int64_t t0 = NowNs();
  s = engine.Connect(remote.c_str(), static_cast<int32_t>(o.timeout_ms));
  const double handshake_ms = static_cast<double>(NowNs() - t0) / 1e6;
  if (s != adxl::SUCCESS) {
    ReportConnectFailure(r, o, s, LastError());
    engine.Finalize();
    return r.Finish("peer");
  }
  if (have_secret) {
    r.Line(Verdict::kOk, "auth", "both sides proved the shared secret (mutual HMAC-SHA256)");
  } else {
    r.Line(Verdict::kWarn, "auth", "no shared secret on either side: anyone who reaches the port may connect",
           "set the same llmdd.AuthSecret (openssl rand -hex 32) on every engine (docs/SECURITY.md)");
  }
  llmdd_ext::PeerInfo info{};
  if (llmdd_ext::GetPeerInfo(engine, remote.c_str(), &info) != adxl::SUCCESS) {
    r.Line(Verdict::kWarn, "peer-info", "the channel's handshake facts are not available: " + LastError(),
           "report this as a bug");
  } else {
    const std::string peer_version = info.library_version[0] != '\0' ? info.library_version : "";
    if (peer_version.empty()) {
      r.Line(Verdict::kOk, "version",
             Format("ours %s; the peer's library predates version reporting; protocol version %u",
                    llmdd_ext::Version(), info.protocol_version));
    } else {
      r.Line(Verdict::kOk, "version",
             Format("ours %s, the peer's %s; protocol version %u", llmdd_ext::Version(), peer_version.c_str(),
                    info.protocol_version));
    }
    r.Line(Verdict::kOk, "transports",
           Format("links made: %s; advertised by the peer: %s; handshake took %.1f ms", info.links,
                  info.offered[0] != '\0' ? info.offered : "none beyond tcp/shm", handshake_ms));
    const std::string why_not = info.same_host_why_not;
    if (info.same_host) {
      r.Line(Verdict::kOk, "path", "same-host (one copy with process_vm_readv; TCP for batches of many small pieces)");
    } else if (Contains(why_not, "another host") || o.transport == "tcp") {
      r.Line(Verdict::kOk, "path", "tcp (" + why_not + ")");
    } else {
      r.Line(Verdict::kWarn, "path", "tcp, though the peer runs on this host: " + why_not,
             "run `llmdd_doctor local` here and fix what it reports for same-host");
    }
  }

  // Memory to read: the doctor buffer, or what --remote-addr names.
  std::vector<uint8_t> local(std::max<uint64_t>(4ULL << 20, kHeaderBytes));
  adxl::MemDesc mem{};
  mem.addr = reinterpret_cast<uintptr_t>(local.data());
  mem.len = local.size();
  mem.local_only = true;
  adxl::MemHandle handle = nullptr;
  uint64_t remote_addr = o.remote_addr, remote_len = o.remote_len;
  bool patterned = false;
  if (engine.RegisterMem(mem, adxl::MEM_HOST, handle) != adxl::SUCCESS) {
    r.Line(Verdict::kFail, "setup", "cannot register the doctor's own buffer: " + LastError(), "see the error above");
  } else if (remote_addr == 0) {
    std::string why;
    uint64_t length = 0;
    if (FindDoctorBuffer(engine, remote, local.data(), &length, &why)) {
      remote_addr = kDoctorAddr;
      remote_len = length;
      patterned = true;
    } else {
      r.Line(Verdict::kSkip, "rtt", "no doctor buffer at the peer: " + why);
      r.Line(Verdict::kSkip, "bandwidth",
             "run `llmdd_doctor serve IP:PORT` on the peer's host and point peer at it, or pass "
             "--remote-addr/--remote-len of memory the peer registered for remote reads");
    }
  }
  if (remote_addr != 0) {
    // Round trip: the median of small READs, bounded by count and 2 s.
    std::vector<double> us;
    const int64_t rtt_end = NowNs() + 2000000000LL;
    adxl::Status last = adxl::SUCCESS;
    for (uint64_t i = 0; i < o.rtt_samples && NowNs() < rtt_end; ++i) {
      adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(local.data()), static_cast<uintptr_t>(remote_addr), 8};
      const int64_t a = NowNs();
      last = engine.TransferSync(remote.c_str(), adxl::READ, {d}, 1000);
      if (last != adxl::SUCCESS) break;
      us.push_back(static_cast<double>(NowNs() - a) / 1e3);
    }
    if (last != adxl::SUCCESS || us.empty()) {
      r.Line(Verdict::kFail, "rtt", "an 8-byte READ failed: " + StatusWithNumber(last) + ": " + LastError(),
             last == adxl::PARAM_INVALID ? "name memory the peer registered for remote reads (--remote-addr/--remote-len)"
                                         : "see the peer's log");
    } else {
      std::sort(us.begin(), us.end());
      r.Line(Verdict::kOk, "rtt",
             Format("median %.1f us, min %.1f us, p90 %.1f us over %zu 8-byte READs", us[us.size() / 2], us[0],
                    us[us.size() * 9 / 10], us.size()));
      // Bandwidth: READs of up to 4 MiB for --seconds (1 s), the bytes of
      // the doctor buffer checked on the first and the last READ.
      const uint64_t chunk = std::min<uint64_t>(local.size(), remote_len);
      const uint64_t seconds = o.seconds == 0 ? 1 : o.seconds;
      const int64_t start = NowNs(), end = start + static_cast<int64_t>(seconds) * 1000000000LL;
      uint64_t moved = 0, reads = 0;
      adxl::Status bs = adxl::SUCCESS;
      std::string bad;
      while (NowNs() < end) {
        adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(local.data()), static_cast<uintptr_t>(remote_addr), chunk};
        memset(local.data(), 0, 64);
        bs = engine.TransferSync(remote.c_str(), adxl::READ, {d}, 5000);
        if (bs != adxl::SUCCESS) break;
        moved += chunk;
        if (patterned && (reads == 0 || NowNs() >= end) && chunk > kHeaderBytes) {
          const int64_t at = FirstMismatch(local.data() + kHeaderBytes, kHeaderBytes, chunk - kHeaderBytes);
          if (at >= 0) {
            bad = Format("byte %" PRId64 " of the peer's buffer arrived wrong", at);
            break;
          }
        }
        ++reads;
      }
      const double secs = static_cast<double>(NowNs() - start) / 1e9;
      if (bs != adxl::SUCCESS) {
        r.Line(Verdict::kFail, "bandwidth", Format("a %s READ failed: ", Bytes(chunk).c_str()) +
                                                StatusWithNumber(bs) + ": " + LastError(),
               "see the peer's log");
      } else if (!bad.empty()) {
        r.Line(Verdict::kFail, "bandwidth", bad, "report this as a bug (with both engines' logs)");
      } else {
        r.Line(Verdict::kOk, "bandwidth",
               Format("%.2f GB/s READ (%" PRIu64 " x %s in %.2f s%s)", static_cast<double>(moved) / secs / 1e9,
                      reads, Bytes(chunk).c_str(), secs, patterned ? ", bytes checked" : ""));
      }
    }
  }
  engine.Disconnect(remote.c_str(), 1000);
  engine.Finalize();
  return r.Finish("peer");
}

// ------------------------------------------------------------------ serve

int RunServe(const Options &o) {
  const uint64_t len = o.bytes;
  void *at = mmap(reinterpret_cast<void *>(kDoctorAddr), len, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  bool fixed = at == reinterpret_cast<void *>(kDoctorAddr);
  if (at != MAP_FAILED && !fixed) munmap(at, len);  // an old kernel took the address as a hint only
  if (!fixed) at = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (at == MAP_FAILED) {
    fprintf(stderr, "llmdd_doctor serve: cannot map %s: %s\n", Bytes(len).c_str(), strerror(errno));
    return 1;
  }
  FillPattern(static_cast<uint8_t *>(at), len);
  adxl::AdxlEngine engine;
  Options opts = o;
  llmdd_ext::ClearLastErrors();
  adxl::Status s = engine.Initialize(o.address.c_str(), EngineOptions(opts, "auto"));
  if (s != adxl::SUCCESS) {
    fprintf(stderr, "llmdd_doctor serve: Initialize(%s) failed: %s: %s\n", o.address.c_str(),
            StatusWithNumber(s).c_str(), LastError().c_str());
    return 1;
  }
  adxl::MemDesc mem{};
  mem.addr = reinterpret_cast<uintptr_t>(at);
  mem.len = len;
  llmdd_ext::SetRemoteAccess(mem, llmdd_ext::kRemoteReadOnly);  // peers may read it, never write
  adxl::MemHandle handle = nullptr;
  s = engine.RegisterMem(mem, adxl::MEM_HOST, handle);
  if (s != adxl::SUCCESS) {
    fprintf(stderr, "llmdd_doctor serve: RegisterMem failed: %s: %s\n", StatusWithNumber(s).c_str(),
            LastError().c_str());
    return 1;
  }
  struct sigaction sa{};
  sa.sa_handler = OnStopSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  printf("llmdd_doctor serve: library %s on %s, a read-only %s test buffer at 0x%" PRIx64 "%s%s\n",
         llmdd_ext::Version(), o.address.c_str(), Bytes(len).c_str(), static_cast<uint64_t>(mem.addr),
         o.has_secret || getenv("LLMDD_AUTH_SECRET") != nullptr ? ", shared secret set" : "",
         fixed ? "" : " (not at the doctor address: pass --remote-addr/--remote-len to peer)");
  if (!fixed) printf("  peer: llmdd_doctor peer %s --remote-addr 0x%" PRIx64 " --remote-len %" PRIu64 "\n",
                     o.address.c_str(), static_cast<uint64_t>(mem.addr), len);
  printf("ready (stop with Ctrl-C%s)\n", o.seconds ? Format(", or after %" PRIu64 " s", o.seconds).c_str() : "");
  fflush(stdout);
  const int64_t end = o.seconds ? NowNs() + static_cast<int64_t>(o.seconds) * 1000000000LL : INT64_MAX;
  while (!g_stop && NowNs() < end) usleep(50000);
  engine.DeregisterMem(handle);
  engine.Finalize();
  munmap(at, len);
  printf("llmdd_doctor serve: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    Usage(stdout);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
    llmdd_tools::PrintVersion("llmdd_doctor");
    return 0;
  }
  Options o;
  if (!ParseArgs(argc, argv, &o)) {
    Usage(stderr);
    return 2;
  }
  // The doctor reports what the engine's error lines say in its own words
  // (llmdd_ext::LastErrors); the lines themselves only with LLMDD_LOG_LEVEL.
  setenv("LLMDD_LOG_LEVEL", "off", 0);
  signal(SIGPIPE, SIG_IGN);
  if (o.mode == "local") return RunLocal(o);
  if (o.mode == "peer") return RunPeer(o);
  return RunServe(o);
}
