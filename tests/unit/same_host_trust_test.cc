// Same-host trust is bound to the verified process, not to its pid: the attack
// of the security issue, replayed in both directions.
//
// A peer's verified child holds the connection's sockets; the child exits, its
// pid is taken by a bystander holding a secret, and the attacker then names
// the bystander's memory in a same-host request (server side) or in a read
// lease (client side). Before the fix the engine copied the bystander's secret
// (into registered memory, readable over TCP, or into the caller's buffer).
//
// To make the bystander take the dead child's pid deterministically, each
// scenario runs as pid 1 of a fresh PID namespace (with a user namespace when
// not root) and sets ns_last_pid. Where namespaces are not available the test
// is skipped with the reason.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>

#include "engine/engine.h"
#include "engine/handshake.h"
#include "engine/wire.h"
#include "loopback_util.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

constexpr int kSkip = 77;
constexpr size_t kSecretBytes = 4096;
// The bystander's secret lives here (zero in every other process: the
// bystander fills it after fork).
alignas(4096) char g_secret[kSecretBytes];
// Registered memory of the server engine in the first scenario.
alignas(4096) char g_region[kSecretBytes];

#define SCENARIO_CHECK(cond, ...)       \
  do {                                  \
    if (!(cond)) {                      \
      fprintf(stderr, "FAILED: " __VA_ARGS__); \
      fprintf(stderr, "\n");            \
      return 1;                         \
    }                                   \
  } while (0)

bool WriteFile(const char *path, const std::string &text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  close(fd);
  return ok;
}

// A bystander started with exactly pid `want`: it puts a secret into
// g_secret, says so on the pipe and waits to be killed. -1 if the pid could
// not be arranged.
pid_t StartBystanderAt(pid_t want) {
  if (!WriteFile("/proc/sys/kernel/ns_last_pid", std::to_string(want - 1))) return -1;
  int ready[2];
  if (pipe(ready) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    memset(g_secret, 'X', sizeof(g_secret));
    char c = 1;
    if (write(ready[1], &c, 1) != 1) _exit(1);
    for (;;) pause();
  }
  char c;
  bool ok = pid > 0 && read(ready[0], &c, 1) == 1;
  close(ready[0]);
  close(ready[1]);
  if (!ok || pid != want) {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    return -1;
  }
  return pid;
}

// A child that holds copies of every descriptor open now, until killed. It
// has this process's same-host token at the same address (created first).
pid_t StartHolder() {
  (void)LocalIdentity();
  pid_t pid = fork();
  if (pid == 0) {
    for (;;) pause();
  }
  return pid;
}

void KillAndReap(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

// `version`: 1 (the handshake's) until HelloAck, then the negotiated one.
bool SendMessage(ByteStream &stream, wire::MsgType type, uint32_t flags, uint64_t id, const std::string &body,
                 uint16_t version = wire::kHandshakeVersion) {
  wire::MsgHeader h;
  h.version = version;
  h.type = static_cast<uint16_t>(type);
  h.flags = flags;
  h.request_id = id;
  h.body_len = body.size();
  iovec out[2] = {{&h, sizeof(h)}, {const_cast<char *>(body.data()), body.size()}};
  return stream.WriteFull(out, 2, Deadline::AfterMs(2000)) == IoStatus::kOk;
}

bool ReadMessage(ByteStream &stream, wire::MsgHeader *h, std::string *body,
                 uint16_t version = wire::kHandshakeVersion) {
  if (stream.Read(h, sizeof(*h), Deadline::AfterMs(3000)) != IoStatus::kOk) return false;
  if (!wire::CheckHeader(*h, version).empty()) return false;
  body->assign(h->body_len, '\0');
  return stream.Read(body->data(), body->size(), Deadline::AfterMs(3000)) == IoStatus::kOk;
}

// Server side: an attacker's verified child exits, a bystander takes its pid,
// and the attacker asks the engine to "write" from the bystander's memory into
// registered memory.
int ServerScenario() {
  Engine server;
  const int port = llmdd::testing::FreeLoopbackPort();
  SCENARIO_CHECK(port > 0, "no free port");
  SCENARIO_CHECK(server.Initialize("127.0.0.1:" + std::to_string(port), {}) == adxl::SUCCESS, "server start");
  uint64_t handle = 0;
  SCENARIO_CHECK(server.RegisterMem(reinterpret_cast<uintptr_t>(g_region), sizeof(g_region), adxl::MEM_HOST,
                                    &handle) == adxl::SUCCESS,
                 "register");
  bool timed_out = false;
  std::string error;
  std::shared_ptr<TcpStream> control = TcpStream::Connect(llmdd::testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error);
  std::shared_ptr<TcpStream> lane = TcpStream::Connect(llmdd::testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error);
  SCENARIO_CHECK(control && lane, "connect: %s", error.c_str());
  const pid_t child = StartHolder();  // holds both sockets: the process the server will verify
  SCENARIO_CHECK(child > 0, "fork");

  wire::Hello hello;
  hello.role = wire::ConnRole::kControl;
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages | wire::kCapSameHost;
  hello.heartbeat_interval_ms = 1000;
  hello.peer_timeout_ms = 10000;
  hello.engine_id = "attacker";
  hello.min_version = wire::kMinVersion;  // the same-host path needs version >= 2
  hello.max_version = wire::kMaxVersion;
  FillIdentity(&hello);
  hello.pid = static_cast<uint32_t>(child);  // the child has our token at the same address
  hello.conn_fd = static_cast<uint32_t>(control->NativeHandle());
  SCENARIO_CHECK(SendMessage(*control, wire::MsgType::kHello, 0, 0, wire::EncodeHello(hello)), "send hello");
  wire::MsgHeader h;
  std::string body;
  wire::HelloAck ack;
  SCENARIO_CHECK(ReadMessage(*control, &h, &body) && h.type == static_cast<uint16_t>(wire::MsgType::kHelloAck) &&
                     wire::DecodeHelloAck(body, &ack),
                 "hello answer");
  SCENARIO_CHECK(ack.version == wire::kMaxVersion, "negotiated version %u", ack.version);
  if ((ack.capabilities & wire::kCapSameHost) == 0) {
    fprintf(stderr, "SKIP: the server did not verify the same-host path here\n");
    return kSkip;
  }
  hello.role = wire::ConnRole::kDataLane;
  hello.session_id = ack.session_id;
  hello.conn_fd = static_cast<uint32_t>(lane->NativeHandle());
  SCENARIO_CHECK(SendMessage(*lane, wire::MsgType::kHello, 0, 0, wire::EncodeHello(hello)), "send lane hello");
  SCENARIO_CHECK(ReadMessage(*lane, &h, &body) && h.type == static_cast<uint16_t>(wire::MsgType::kHelloAck),
                 "lane answer");

  KillAndReap(child);
  const pid_t bystander = StartBystanderAt(child);
  if (bystander < 0) {
    fprintf(stderr, "SKIP: could not start a process with pid %d\n", static_cast<int>(child));
    return kSkip;
  }
  // Same-host WRITE: "copy kSecretBytes from my local address g_secret into the region".
  std::string request(wire::kRangeBodyHeader + wire::kSameHostRemainingSize + wire::kSameHostEntrySize, '\0');
  auto *p = reinterpret_cast<uint8_t *>(request.data());
  wire::EncodeRangeHeader(1, 2000, kSecretBytes, p);
  wire::PutU64(p + wire::kRangeBodyHeader, 5000000000ULL);  // 5 s from when the server reads the request
  wire::PutU64(p + wire::kRangeBodyHeader + 8, reinterpret_cast<uint64_t>(g_region));
  wire::PutU64(p + wire::kRangeBodyHeader + 16, kSecretBytes);
  wire::PutU64(p + wire::kRangeBodyHeader + 24, reinterpret_cast<uint64_t>(g_secret));
  SCENARIO_CHECK(SendMessage(*lane, wire::MsgType::kWriteRequest, wire::kFlagSameHost, 1, request, ack.version),
                 "send write");
  const bool answered = ReadMessage(*lane, &h, &body, ack.version);
  const bool leaked = g_region[0] == 'X' && g_region[kSecretBytes - 1] == 'X';
  KillAndReap(bystander);
  SCENARIO_CHECK(!leaked, "the bystander's secret was copied into registered memory (answer status %u)", h.status);
  SCENARIO_CHECK(answered && h.type == static_cast<uint16_t>(wire::MsgType::kWriteResponse) && h.status == adxl::FAILED,
                 "expected WriteResponse FAILED, got answered=%d type=%u status=%u", answered, h.type, h.status);
  SCENARIO_CHECK(body.find("gone") != std::string::npos, "refusal should say why: '%s'", body.c_str());
  SCENARIO_CHECK(g_region[0] == 0 && g_region[kSecretBytes - 1] == 0, "registered memory was modified");
  server.Finalize();
  return 0;
}

// Client side: the engine connects to an attacker's server whose verified
// process exits before the engine's one-sided read under a standing lease; a
// bystander has taken the pid and the lease names its secret.
int ClientScenario() {
  TcpListener listener;
  std::string error;
  Endpoint any = llmdd::testing::Loopback(0);
  SCENARIO_CHECK(listener.Listen(any, &error), "listen: %s", error.c_str());
  const int port = listener.Port();
  std::atomic<int> fake_result{-1};
  std::atomic<pid_t> bystander{-1};
  std::thread fake_server([&] {
    // Control connection: verified through a holder child.
    std::unique_ptr<TcpStream> control = listener.Accept(Deadline::AfterMs(5000));
    if (!control) return;
    wire::MsgHeader h;
    std::string body;
    if (!ReadMessage(*control, &h, &body)) return;
    wire::Hello hello;
    if (!wire::DecodeHello(body, &hello)) return;
    const pid_t child = StartHolder();
    wire::HelloAck ack;
    ack.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages | wire::kCapSameHost;
    ack.session_id = 42;
    ack.engine_id = "attacker";
    ack.version = wire::NegotiateVersion(hello.min_version, hello.max_version);  // 2: same-host allowed
    FillIdentity(&ack, *control);
    ack.pid = static_cast<uint32_t>(child);
    if (!SendMessage(*control, wire::MsgType::kHelloAck, 0, 0, wire::EncodeHelloAck(ack))) return;
    // One data lane.
    std::unique_ptr<TcpStream> lane = listener.Accept(Deadline::AfterMs(5000));
    if (!lane || !ReadMessage(*lane, &h, &body)) return;
    wire::HelloAck lane_ack;
    lane_ack.session_id = 42;
    lane_ack.engine_id = "attacker";
    lane_ack.version = ack.version;
    if (!SendMessage(*lane, wire::MsgType::kHelloAck, 0, 0, wire::EncodeHelloAck(lane_ack))) return;
    // The client's first small READ asks for a standing lease: swap the process first.
    if (!ReadMessage(*lane, &h, &body, ack.version) || h.type != static_cast<uint16_t>(wire::MsgType::kLeaseRequest)) {
      fake_result = 2;
      return;
    }
    KillAndReap(child);
    bystander = StartBystanderAt(child);
    if (bystander < 0) {
      fake_result = kSkip;
      return;
    }
    const std::string grant = wire::EncodeLeaseGrant({{reinterpret_cast<uint64_t>(g_secret), kSecretBytes}});
    wire::MsgHeader reply;
    reply.version = ack.version;
    reply.type = static_cast<uint16_t>(wire::MsgType::kLeaseGrant);
    reply.request_id = h.request_id;
    reply.flags = wire::kStandingLeaseMs;
    reply.body_len = grant.size();
    iovec out[2] = {{&reply, sizeof(reply)}, {const_cast<char *>(grant.data()), grant.size()}};
    if (lane->WriteFull(out, 2, Deadline::AfterMs(2000)) != IoStatus::kOk) return;
    fake_result = 0;
    // Whatever comes next (a request over TCP after a refused copy) gets no answer: the lane closes.
    ReadMessage(*lane, &h, &body);
    lane->Shutdown();
    ReadMessage(*control, &h, &body);
  });

  Engine client;
  SCENARIO_CHECK(client.Initialize("127.0.0.1", {{"llmdd.TcpConnections", "1"}}) == adxl::SUCCESS, "client start");
  const std::string remote = "127.0.0.1:" + std::to_string(port);
  adxl::Status connected = client.Connect(remote, 3000);
  if (connected != adxl::SUCCESS) {
    fake_server.join();
    SCENARIO_CHECK(false, "connect: status %u", connected);
  }
  static char destination[64];
  adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(destination), reinterpret_cast<uintptr_t>(g_secret),
                         sizeof(destination)};
  adxl::Status status = client.TransferSync(remote, adxl::READ, &d, 1, 1000);
  const bool leaked = destination[0] == 'X';
  client.Finalize();
  listener.Stop();
  fake_server.join();
  if (bystander > 0) KillAndReap(bystander);
  if (fake_result == kSkip) {
    fprintf(stderr, "SKIP: could not start a process with the holder's pid\n");
    return kSkip;
  }
  SCENARIO_CHECK(fake_result == 0, "the client never took the standing lease (fake server state %d)",
                 fake_result.load());
  SCENARIO_CHECK(!leaked, "the bystander's secret was copied into the caller's buffer (status %u)", status);
  SCENARIO_CHECK(status != adxl::SUCCESS, "the read succeeded without the server's data");
  return 0;
}

// Runs `scenario` as pid 1 of a new PID namespace with its own /proc; returns
// its exit code (kSkip where namespaces cannot be made here).
int RunInFreshPidNamespace(int (*scenario)()) {
  pid_t helper = fork();
  if (helper == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const uid_t uid = getuid();
    const gid_t gid = getgid();
    int flags = CLONE_NEWPID | CLONE_NEWNS;
    if (uid != 0) flags |= CLONE_NEWUSER;
    if (unshare(flags) != 0) {
      fprintf(stderr, "SKIP: unshare: %s\n", strerror(errno));
      _exit(kSkip);
    }
    if (uid != 0 && (!WriteFile("/proc/self/setgroups", "deny") ||
                     !WriteFile("/proc/self/uid_map", "0 " + std::to_string(uid) + " 1") ||
                     !WriteFile("/proc/self/gid_map", "0 " + std::to_string(gid) + " 1"))) {
      fprintf(stderr, "SKIP: cannot map ids in a user namespace\n");
      _exit(kSkip);
    }
    pid_t init = fork();
    if (init == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
          mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) {
        fprintf(stderr, "SKIP: cannot mount /proc for the new PID namespace: %s\n", strerror(errno));
        _exit(kSkip);
      }
      _exit(scenario());
    }
    int status = 0;
    if (init < 0 || waitpid(init, &status, 0) != init) _exit(3);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 4);
  }
  int status = 0;
  if (helper < 0 || waitpid(helper, &status, 0) != helper) return 5;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 6;
}

TEST(SameHostTrust, AServerNeverCopiesFromAProcessThatTookOverTheVerifiedPid) {
  int code = RunInFreshPidNamespace(ServerScenario);
  if (code == kSkip) GTEST_SKIP() << "PID namespaces are not available here (see stderr)";
  EXPECT_EQ(code, 0) << "see the FAILED line on stderr";
}

TEST(SameHostTrust, AClientNeverCopiesFromAProcessThatTookOverTheVerifiedPid) {
  int code = RunInFreshPidNamespace(ClientScenario);
  if (code == kSkip) GTEST_SKIP() << "PID namespaces are not available here (see stderr)";
  EXPECT_EQ(code, 0) << "see the FAILED line on stderr";
}

}  // namespace
}  // namespace llmdd
