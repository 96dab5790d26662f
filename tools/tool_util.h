// Small helpers shared by the tools (adxl_demo, kv_demo, llmdd_bench): --version, printf-style
// formatting into a std::string, a status's name and number, writing a whole string to a pipe, a
// monotonic clock in nanoseconds, starting this program again as a peer, a
// line about the machine and its load, and LogTap (which path a connection
// took, from the engine's own log line).
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "llmdd/extensions.h"

namespace llmdd_tools {

// `--version`: the tool's name and the version of the library it loaded.
inline void PrintVersion(const char *tool) { printf("%s (llm_datadist) %s\n", tool, llmdd_ext::Version()); }

inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline std::string Format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string Format(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char small[512];
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(small, sizeof(small), fmt, ap);
  va_end(ap);
  std::string out;
  if (n < 0) {
    out = "(format error)";
  } else if (static_cast<size_t>(n) < sizeof(small)) {
    out.assign(small, static_cast<size_t>(n));
  } else {
    out.resize(static_cast<size_t>(n) + 1);
    vsnprintf(&out[0], out.size(), fmt, ap2);
    out.resize(static_cast<size_t>(n));
  }
  va_end(ap2);
  return out;
}

// A status of either API with its number, as the library's log lines write
// it: "PARAM_INVALID (103900)", "LLM_LINK_FAILED (0x5010B009)" (LLM-DataDist
// codes in hex), "unknown status (42)".
inline std::string StatusWithNumber(uint32_t status) {
  return Format(status >= 0x10000000U ? "%s (0x%08X)" : "%s (%u)", llmdd_ext::StatusName(status), status);
}

// Writes all of `text` to `fd` (retrying short writes and EINTR); false on error.
inline bool WriteAll(int fd, const std::string &text) {
  size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// Runs this executable again (/proc/self/exe) with `args` (args[0] is its
// name) as a child whose stdin and stdout are pipes: *to_child is written to
// its stdin, *from_child reads its stdout. The child dies with this process
// (and does not start if this one is already gone). False with *error when
// no child was started; nothing is left open then.
inline bool SpawnSelf(std::vector<std::string> args, pid_t *pid, int *to_child, int *from_child,
                      std::string *error) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + strerror(errno);
    return false;
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    *error = std::string("pipe: ") + strerror(errno);
    close(in[0]);
    close(in[1]);
    return false;
  }
  std::vector<char *> argv;
  for (auto &a : args) argv.push_back(&a[0]);
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  fflush(stdout);
  fflush(stderr);
  const pid_t child = fork();
  if (child < 0) {
    *error = std::string("fork: ") + strerror(errno);
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    return false;
  }
  if (child == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    execv("/proc/self/exe", argv.data());
    dprintf(STDERR_FILENO, "%s: exec /proc/self/exe: %s\n", args[0].c_str(), strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  *pid = child;
  *to_child = in[1];
  *from_child = out[0];
  return true;
}

// One line about this machine for the figures: CPU model, CPUs this process
// may run on (of those online), and the load average (1, 5, 15 min), which
// says how much else was running while the figures were taken.
inline std::string MachineLine() {
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.compare(0, 10, "model name") == 0 && line.find(':') != std::string::npos) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  const int usable = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : -1;
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  std::string load = "?";
  std::ifstream loadavg("/proc/loadavg");
  std::string l1, l5, l15;
  if (loadavg >> l1 >> l5 >> l15) load = l1 + " " + l5 + " " + l15;
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  return Format("host %s: %s, %d of %ld CPUs usable, load average %s (1/5/15 min)", host, model.c_str(), usable,
                online, load.c_str());
}

// The current load average alone (1 min), for an "after" figure.
inline std::string LoadNow() {
  std::ifstream loadavg("/proc/loadavg");
  std::string l1;
  return (loadavg >> l1) ? l1 : std::string("?");
}

// LogTap: which path a connection took, from the engine's log. The engine
// logs every connection it makes at info level ("connected to <id> (...,
// same-host path)" or "tcp path"; docs/API.md "Logging" gives the line's
// format); no call of the public API says it. Start() therefore raises
// LLMDD_LOG_LEVEL to info for this process and the children it starts
// afterwards, sends stderr (fd 2) through a pipe, and a thread passes on
// exactly the lines the user's level (LLMDD_LOG_LEVEL as it was, default
// warn) would have shown, noting the paths on the way. Lines between
// BeginExpected() and EndExpected() (a deliberate negative check) are passed
// on marked as expected. Start it before the first library call and before
// any child is started; Stop() after the children ended.
class LogTap {
 public:
  ~LogTap() { Stop(); }

  bool Start() {
    const char *level = getenv("LLMDD_LOG_LEVEL");
    user_level_ = ParseLevel(level);
    if (pipe2(fds_, O_CLOEXEC) != 0) return false;
    saved_stderr_ = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
    if (saved_stderr_ < 0) return false;
    fflush(stderr);
    if (dup2(fds_[1], STDERR_FILENO) < 0) return false;  // dup2 clears close-on-exec: children inherit it
    close(fds_[1]);
    fds_[1] = -1;
    if (user_level_ < 3) setenv("LLMDD_LOG_LEVEL", "info", 1);
    reader_ = std::thread([this] { Read(); });
    return true;
  }

  void Stop() {
    if (!reader_.joinable()) return;
    fflush(stderr);
    WriteAll(STDERR_FILENO, std::string(kStop) + "\n");
    reader_.join();
    dup2(saved_stderr_, STDERR_FILENO);
    close(saved_stderr_);
    close(fds_[0]);
    saved_stderr_ = fds_[0] = -1;
  }

  // Error and warning lines logged from here to EndExpected() are shown as
  // expected (the pipe keeps the order: lines a peer wrote before answering
  // are in it before EndExpected()'s marker).
  void BeginExpected() {
    fflush(stderr);
    WriteAll(STDERR_FILENO, std::string(kBegin) + "\n");
  }
  void EndExpected() {
    fflush(stderr);
    WriteAll(STDERR_FILENO, std::string(kEnd) + "\n");
  }

  // "same-host", "tcp" or "ucx" for the last connection this process or a child
  // made to `remote` ("" if none was logged; "" remote: any). Waits up to
  // wait_ms for the line to pass through the pipe.
  std::string PathTo(const std::string &remote, int wait_ms = 1000) {
    const int64_t deadline = NowNs() + int64_t{wait_ms} * 1000000;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        for (auto it = paths_.rbegin(); it != paths_.rend(); ++it)
          if (remote.empty() || it->first == remote) return it->second;
      }
      if (NowNs() > deadline) return "";
      usleep(2000);
    }
  }

 private:
  static constexpr const char *kBegin = "\x01llmdd-tools-expected-begin";
  static constexpr const char *kEnd = "\x01llmdd-tools-expected-end";
  static constexpr const char *kStop = "\x01llmdd-tools-stop";

  static int ParseLevel(const char *text) {  // as the library reads LLMDD_LOG_LEVEL
    if (text == nullptr) return 2;
    std::string t(text);
    for (char &c : t) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    if (t == "off" || t == "0") return 0;
    if (t == "error" || t == "1") return 1;
    if (t == "info" || t == "3") return 3;
    if (t == "debug" || t == "4") return 4;
    return 2;
  }

  void Handle(const std::string &line) {
    if (line == kBegin) { expected_ = true; return; }
    if (line == kEnd) { expected_ = false; return; }
    // "[llmdd L hh:mm:ss.us pid:tid file:line] message"
    int level = -1;
    if (line.compare(0, 7, "[llmdd ") == 0 && line.size() > 8) {
      const char letter = line[7];
      level = letter == 'E' ? 1 : letter == 'W' ? 2 : letter == 'I' ? 3 : letter == 'D' ? 4 : -1;
      const size_t at = line.find("] connected to ");
      if (at != std::string::npos) {
        const size_t id_start = at + 15, id_end = line.find(" (", id_start);
        const bool same_host = line.find("same-host path)") != std::string::npos;
        const bool tcp = line.find("tcp path)") != std::string::npos;
        const bool ucx = line.find("ucx path)") != std::string::npos;
        if (id_end != std::string::npos && (same_host || tcp || ucx)) {
          std::lock_guard<std::mutex> lock(mutex_);
          paths_.emplace_back(line.substr(id_start, id_end - id_start), same_host ? "same-host" : ucx ? "ucx" : "tcp");
        }
      }
    }
    if (level > user_level_) return;  // the user's level would not have shown it
    if (expected_ && (level == 1 || level == 2)) {
      WriteAll(saved_stderr_, "(expected, from the deliberate negative check) " + line + "\n");
    } else {
      WriteAll(saved_stderr_, line + "\n");
    }
  }

  void Read() {
    std::string buf;
    char chunk[4096];
    for (;;) {
      ssize_t n = read(fds_[0], chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      buf.append(chunk, static_cast<size_t>(n));
      size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (line == kStop) return;
        Handle(line);
      }
    }
  }

  int fds_[2] = {-1, -1};
  int saved_stderr_ = -1;
  int user_level_ = 2;
  bool expected_ = false;  // reader thread only
  std::thread reader_;
  std::mutex mutex_;
  std::vector<std::pair<std::string, std::string>> paths_;  // (remote id, path), in log order
};

}  // namespace llmdd_tools
