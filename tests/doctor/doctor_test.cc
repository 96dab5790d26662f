// llmdd_doctor against deliberately broken setups (docs/DOCTOR.md): each is
// found, reported FAIL or WARN with its one-line fix, and the exit status says
// whether it blocks use; and a real served peer gets RTT and bandwidth.
// The doctor runs as a child process; its environment is broken for real where
// that works unprivileged: a seccomp filter that denies process_vm_readv (what
// Docker's default profile does without CAP_SYS_PTRACE) and a low
// RLIMIT_NOFILE set in the child before exec.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#ifndef LLMDD_DOCTOR
#error "LLMDD_DOCTOR (the path of llmdd_doctor) must be defined by the build"
#endif

namespace {

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef";

struct Outcome {
  int exit_code = -1;  // -1: killed at the deadline
  std::string output;  // stdout and stderr together
};

// Runs llmdd_doctor with `args`; `before_exec` runs in the child first. The
// child is killed after `timeout_s` (the doctor's own deadlines are shorter).
Outcome RunDoctor(const std::vector<std::string> &args, const std::function<void()> &before_exec = nullptr,
                  int timeout_s = 60) {
  int out[2];
  EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    if (before_exec) before_exec();
    std::vector<char *> argv;
    argv.push_back(const_cast<char *>(LLMDD_DOCTOR));
    for (const std::string &a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);
    unsetenv("LLMDD_AUTH_SECRET");
    unsetenv("LLMDD_LOG_LEVEL");
    execv(LLMDD_DOCTOR, argv.data());
    _exit(127);
  }
  close(out[1]);
  Outcome o;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      break;
    }
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = read(out[0], buf, sizeof(buf));
    if (n <= 0) break;
    o.output.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return o;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// `llmdd_doctor serve` on 127.0.0.1 for the length of a test.
class ServedPeer {
 public:
  explicit ServedPeer(const std::string &secret) {
    address_ = "127.0.0.1:" + std::to_string(FreePort());
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], 1);
      unsetenv("LLMDD_AUTH_SECRET");
      std::vector<std::string> args = {LLMDD_DOCTOR, "serve", address_, "--seconds", "120"};
      if (!secret.empty()) args.insert(args.end(), {"--secret", secret});
      std::vector<char *> argv;
      for (std::string &a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(LLMDD_DOCTOR, argv.data());
      _exit(127);
    }
    close(out[1]);
    // Up when it says "ready" (within 20 s).
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    char buf[1024];
    while (std::chrono::steady_clock::now() < end && banner_.find("ready") == std::string::npos) {
      pollfd p{out[0], POLLIN, 0};
      if (poll(&p, 1, 200) <= 0) continue;
      const ssize_t n = read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      banner_.append(buf, static_cast<size_t>(n));
    }
    close(out[0]);
  }
  ~ServedPeer() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
    }
  }
  bool Ready() const { return banner_.find("ready") != std::string::npos; }
  const std::string &Address() const { return address_; }
  const std::string &Banner() const { return banner_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
  std::string banner_;
};

bool Has(const std::string &text, const std::string &what) { return text.find(what) != std::string::npos; }

// The line that starts with `prefix`, and the line after it ("" when absent).
std::pair<std::string, std::string> LineAndNext(const std::string &text, const std::string &prefix) {
  size_t at = text.find("\n" + prefix);
  if (at == std::string::npos) {
    if (text.compare(0, prefix.size(), prefix) != 0) return {"", ""};
    at = 0;
  } else {
    ++at;
  }
  const size_t end = text.find('\n', at);
  const std::string line = text.substr(at, end - at);
  if (end == std::string::npos) return {line, ""};
  const size_t end2 = text.find('\n', end + 1);
  return {line, text.substr(end + 1, end2 == std::string::npos ? std::string::npos : end2 - end - 1)};
}

// In the child: a seccomp filter that fails process_vm_readv/writev with
// EPERM (as Docker's default profile does without CAP_SYS_PTRACE), inherited
// by everything the doctor forks. No privilege needed (no_new_privs).
void DenyCrossMemoryAttach() {
#if defined(__x86_64__)
  constexpr uint32_t kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
  constexpr uint32_t kArch = AUDIT_ARCH_AARCH64;
#else
  _exit(77);
#endif
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_writev, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
  };
  sock_fprog prog{static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
    _exit(77);  // the test skips: this kernel or sandbox does not let us install a filter
}

TEST(Doctor, CommandLineErrorsExitTwo) {
  EXPECT_EQ(RunDoctor({}).exit_code, 2);
  EXPECT_EQ(RunDoctor({"nosuchmode"}).exit_code, 2);
  EXPECT_EQ(RunDoctor({"peer"}).exit_code, 2);
  EXPECT_EQ(RunDoctor({"local", "--peers", "0"}).exit_code, 2);
  EXPECT_EQ(RunDoctor({"peer", "127.0.0.1:1", "--remote-addr", "4096"}).exit_code, 2);  // without --remote-len
  const Outcome help = RunDoctor({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(Has(help.output, "llmdd_doctor local")) << help.output;
}

TEST(Doctor, NothingListening) {
  const std::string address = "127.0.0.1:" + std::to_string(FreePort());
  const Outcome o = RunDoctor({"peer", address, "--timeout-ms", "2000"});
  EXPECT_EQ(o.exit_code, 1) << o.output;
  const auto [line, fix] = LineAndNext(o.output, "FAIL reach:");
  EXPECT_EQ(line, "FAIL reach: nothing listens at " + address + " (connection refused)") << o.output;
  EXPECT_EQ(fix, "  fix: start the engine there with a listening address (Initialize(\"IP:PORT\")), or check the port");
}

TEST(Doctor, WrongSecret) {
  ServedPeer peer(kSecret);
  ASSERT_TRUE(peer.Ready()) << peer.Banner();
  const Outcome o = RunDoctor({"peer", peer.Address(), "--secret", std::string(kSecret) + "-other"});
  EXPECT_EQ(o.exit_code, 1) << o.output;
  EXPECT_TRUE(Has(o.output, "OK   reach: ")) << o.output;  // reached: not taken for "nothing listening"
  const auto [line, fix] = LineAndNext(o.output, "FAIL auth:");
  EXPECT_EQ(line, "FAIL auth: the peer refused our proof: it has a different shared secret (ours from --secret)")
      << o.output;
  EXPECT_EQ(fix, "  fix: use the peer's secret: --secret <its llmdd.AuthSecret> (or LLMDD_AUTH_SECRET)");
  EXPECT_FALSE(Has(o.output, "OK   rtt")) << o.output;
}

TEST(Doctor, MissingSecretAndSecretThePeerLacks) {
  ServedPeer with(kSecret);
  ServedPeer without("");
  ASSERT_TRUE(with.Ready() && without.Ready()) << with.Banner() << without.Banner();
  Outcome o = RunDoctor({"peer", with.Address()});
  EXPECT_EQ(o.exit_code, 1) << o.output;
  auto [line, fix] = LineAndNext(o.output, "FAIL auth:");
  EXPECT_EQ(line, "FAIL auth: the peer requires a shared secret and we sent none") << o.output;
  EXPECT_EQ(fix, "  fix: pass --secret <the peer's llmdd.AuthSecret> (or set LLMDD_AUTH_SECRET)");
  o = RunDoctor({"peer", without.Address(), "--secret", kSecret});
  EXPECT_EQ(o.exit_code, 1) << o.output;
  std::tie(line, fix) = LineAndNext(o.output, "FAIL auth:");
  EXPECT_EQ(line, "FAIL auth: we have a secret (from --secret) but the peer has none configured") << o.output;
  EXPECT_TRUE(Has(fix, "  fix: set the same llmdd.AuthSecret")) << o.output;
}

TEST(Doctor, ServedPeerGetsRttAndBandwidth) {
  ServedPeer peer(kSecret);
  ASSERT_TRUE(peer.Ready()) << peer.Banner();
  for (const char *transport : {"auto", "tcp"}) {
    const Outcome o = RunDoctor({"peer", peer.Address(), "--secret", kSecret, "--transport", transport});
    EXPECT_EQ(o.exit_code, 0) << o.output;
    EXPECT_TRUE(Has(o.output, "OK   auth: both sides proved the shared secret")) << o.output;
    // The peer's version travels in the HelloAck: the same library here.
    const auto [version, unused] = LineAndNext(o.output, "OK   version:");
    EXPECT_TRUE(Has(version, "the peer's ")) << o.output;
    EXPECT_FALSE(Has(version, "predates")) << o.output;
    EXPECT_TRUE(Has(o.output, std::string("OK   path: ") + (transport == std::string("tcp") ? "tcp" : "same-host")))
        << o.output;
    EXPECT_TRUE(Has(o.output, "OK   rtt: median ")) << o.output;
    EXPECT_TRUE(Has(o.output, "OK   bandwidth: ")) << o.output;
    EXPECT_TRUE(Has(o.output, "bytes checked)")) << o.output;
    EXPECT_TRUE(Has(o.output, " 0 FAIL")) << o.output;
  }
}

TEST(Doctor, SameHostPathForbidden) {
  // Default transport: the engine would fall back to TCP, so WARN (exit 0);
  // with --transport shm, Connect would be refused, so FAIL (exit 1).
  Outcome o = RunDoctor({"local", "--peers", "4"}, DenyCrossMemoryAttach);
  if (o.exit_code == 77) GTEST_SKIP() << "cannot install a seccomp filter here";
  EXPECT_EQ(o.exit_code, 0) << o.output;
  auto [line, fix] = LineAndNext(o.output, "WARN cross-process-read:");
  EXPECT_TRUE(Has(line, "process_vm_readv between two sibling processes failed: Operation not permitted "
                        "(a seccomp filter is active)"))
      << o.output;
  EXPECT_TRUE(Has(fix, "  fix: allow process_vm_readv in the seccomp profile")) << o.output;
  EXPECT_TRUE(Has(o.output, "WARN same-host-engine: ")) << o.output;
  o = RunDoctor({"local", "--peers", "4", "--transport", "shm"}, DenyCrossMemoryAttach);
  EXPECT_EQ(o.exit_code, 1) << o.output;
  std::tie(line, fix) = LineAndNext(o.output, "FAIL cross-process-read:");
  EXPECT_TRUE(Has(line, "llmdd.Transport=shm refuses every same-host Connect")) << o.output;
  EXPECT_TRUE(Has(fix, "  fix: allow process_vm_readv in the seccomp profile")) << o.output;
  std::tie(line, fix) = LineAndNext(o.output, "FAIL same-host-engine:");
  // The engine's own check, in its words (the serving side fails first, so
  // the client hears that the same-host path was not offered).
  EXPECT_TRUE(Has(line, "the same-host path to 127.0.0.1:")) << o.output;
  EXPECT_TRUE(Has(line, "is not available")) << o.output;
  EXPECT_EQ(fix, "  fix: fix cross-process-read above first");
  // Unbroken, the same host passes.
  o = RunDoctor({"local", "--peers", "4", "--transport", "shm"});
  EXPECT_TRUE(Has(o.output, "OK   cross-process-read:")) << o.output;
  EXPECT_TRUE(Has(o.output, "OK   same-host-engine:")) << o.output;
}

TEST(Doctor, SameHostForbiddenPeerTakesTcpAndSaysWhy) {
  ServedPeer peer(kSecret);
  ASSERT_TRUE(peer.Ready()) << peer.Banner();
  const Outcome o = RunDoctor({"peer", peer.Address(), "--secret", kSecret}, DenyCrossMemoryAttach);
  if (o.exit_code == 77) GTEST_SKIP() << "cannot install a seccomp filter here";
  EXPECT_EQ(o.exit_code, 0) << o.output;  // TCP works: slower, not blocked
  const auto [line, fix] = LineAndNext(o.output, "WARN path:");
  EXPECT_TRUE(Has(line, "tcp, though the peer runs on this host")) << o.output;
  EXPECT_EQ(fix, "  fix: run `llmdd_doctor local` here and fix what it reports for same-host");
  EXPECT_TRUE(Has(o.output, "OK   bandwidth: ")) << o.output;
}

TEST(Doctor, FdLimitTooLow) {
  const auto low_fds = [] {
    rlimit lim{};
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = 100;  // the hard limit stays: the fix is `ulimit -n` where it allows 7064
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0) _exit(99);
  };
  const Outcome o = RunDoctor({"local", "--peers", "1000"}, low_fds);
  EXPECT_EQ(o.exit_code, 1) << o.output;
  const auto [line, fix] = LineAndNext(o.output, "FAIL fd-limit:");
  EXPECT_TRUE(Has(line, "RLIMIT_NOFILE soft 100, hard ")) << o.output;
  EXPECT_TRUE(Has(line, "1000 peers x 7 fds (control, pidfd, 4 lanes, express lane) + 64 = 7064 needed")) << o.output;
  EXPECT_TRUE(fix == "  fix: ulimit -n 7064   (in the shell or service that starts the engine)" ||
              Has(fix, "  fix: raise the hard limit: LimitNOFILE=7064"))
      << o.output;
  // The same limit suffices for 4 peers (4 x 7 + 64 = 92).
  const Outcome few = RunDoctor({"local", "--peers", "4"}, low_fds);
  EXPECT_TRUE(Has(few.output, "OK   fd-limit: ")) << few.output;
}

}  // namespace
