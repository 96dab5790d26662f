// Small helpers shared by the tools (kv_demo, llmdd_bench): printf-style
// formatting into a std::string, writing a whole string to a pipe, a
// monotonic clock in nanoseconds, and starting this program again as a peer.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace llmdd_tools {

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

}  // namespace llmdd_tools
