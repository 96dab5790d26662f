// No exception may cross a thread entry or a public call: at a thread or memory
// limit the engine refuses with a status, logs one line, and keeps serving the
// peers it already has.
#include <gtest/gtest.h>
#include <chrono>
#include <thread>
#include <signal.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "engine/engine.h"
#include "engine/handshake.h"
#include "engine/wire.h"
#include "llm_datadist/llm_datadist.h"
#include "transport/fault_injection.h"
#include "loopback_util.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

FaultPlan ThreadsFail() {
  FaultPlan plan;
  plan.fail_thread = 1.0;
  return plan;
}

// Engines started while threads can be made; the fault is switched on later.
struct ConnectedPair {
  Engine server, client;
  std::string server_id;
  std::vector<char> memory = std::vector<char>(4096);
  bool Start() {
    for (size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<char>(i * 7 + 1);
    server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
    uint64_t handle = 0;
    return server.Initialize(server_id, {}) == adxl::SUCCESS &&
           server.RegisterMem(reinterpret_cast<uintptr_t>(memory.data()), memory.size(), adxl::MEM_HOST, &handle) ==
               adxl::SUCCESS &&
           client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}) == adxl::SUCCESS &&
           client.Connect(server_id, 3000) == adxl::SUCCESS;
  }
  adxl::Status Read(std::vector<char> *out) {
    out->assign(memory.size(), 0);
    adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(out->data()), reinterpret_cast<uintptr_t>(memory.data()),
                           memory.size()};
    return client.TransferSync(server_id, adxl::READ, &d, 1, 3000);
  }
};

class ResourceExhaustion : public ::testing::Test {
 protected:
  void TearDown() override { SetFaultPlan(FaultPlan{}); }
};

TEST_F(ResourceExhaustion, InitializeWithoutThreadsIsAStatusNotAnAbort) {
  SetFaultPlan(ThreadsFail());
  Engine engine;
  EXPECT_EQ(engine.Initialize("127.0.0.1", {}), adxl::RESOURCE_EXHAUSTED);
  EXPECT_FALSE(engine.Initialized());
  adxl::AdxlEngine facade;
  EXPECT_EQ(facade.Initialize("127.0.0.1", {}), adxl::RESOURCE_EXHAUSTED);
  llm_datadist::LlmDataDist datadist(1, llm_datadist::LlmRole::kDecoder);
  EXPECT_NE(datadist.Initialize({{llm_datadist::OPTION_DEVICE_ID, "0"}}), llm_datadist::LLM_SUCCESS);
  SetFaultPlan(FaultPlan{});
  EXPECT_EQ(engine.Initialize("127.0.0.1", {}), adxl::SUCCESS);  // and it recovers once threads are available
}

// Threads no longer grow with peers: connecting, and being connected to, need
// no new thread on either side, so neither fails when none can be made.
TEST_F(ResourceExhaustion, ConnectingNeedsNoNewThreadOnEitherSide) {
  ConnectedPair pair;
  ASSERT_TRUE(pair.Start());
  Engine late;
  ASSERT_EQ(late.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  SetFaultPlan(ThreadsFail());
  ASSERT_EQ(late.Connect(pair.server_id, 3000), adxl::SUCCESS);
  std::vector<char> got(pair.memory.size(), 0);
  adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(got.data()), reinterpret_cast<uintptr_t>(pair.memory.data()),
                         got.size()};
  EXPECT_EQ(late.TransferSync(pair.server_id, adxl::READ, &d, 1, 3000), adxl::SUCCESS);
  EXPECT_EQ(got, pair.memory);
  // The peer it already had is still served.
  ASSERT_EQ(pair.Read(&got), adxl::SUCCESS);
  EXPECT_EQ(got, pair.memory);
  EXPECT_EQ(late.Disconnect(pair.server_id, 3000), adxl::SUCCESS);
}

TEST_F(ResourceExhaustion, AServerWithoutNewThreadsKeepsAcceptingAndServingPeers) {
  ConnectedPair pair;
  ASSERT_TRUE(pair.Start());
  std::vector<std::unique_ptr<Engine>> clients;
  for (int i = 0; i < 20; ++i) {
    clients.push_back(std::make_unique<Engine>());
    ASSERT_EQ(clients.back()->Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  }
  SetFaultPlan(ThreadsFail());
  for (auto &client : clients) ASSERT_EQ(client->Connect(pair.server_id, 3000), adxl::SUCCESS);
  std::vector<char> got;
  ASSERT_EQ(pair.Read(&got), adxl::SUCCESS);
  EXPECT_EQ(got, pair.memory);
  SetFaultPlan(FaultPlan{});
  for (auto &client : clients) EXPECT_EQ(client->Disconnect(pair.server_id, 3000), adxl::SUCCESS);
}

// The real thing, without the fault seam: a server process under an
// address-space limit (every thread reserves a stack, and there is room for
// few) takes a flood of connections without making a thread per connection,
// refuses those over its handshake cap with RESOURCE_EXHAUSTED at once, and
// keeps serving its first peer.
TEST_F(ResourceExhaustion, AServerUnderAnAddressSpaceLimitSurvivesAFloodOfConnections) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve terabytes of address space: an address-space limit cannot apply";
#endif
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ConnectedPair pair;
    if (!pair.Start()) _exit(10);
    std::ifstream status("/proc/self/status");
    std::string line;
    long vm_kb = 0;
    while (std::getline(status, line))
      if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stol(line.substr(7));
    if (vm_kb == 0) _exit(11);
    rlimit limit{};
    limit.rlim_cur = limit.rlim_max = static_cast<rlim_t>(vm_kb + 96 * 1024) * 1024;  // room for ~10 more stacks
    if (setrlimit(RLIMIT_AS, &limit) != 0) _exit(12);
    Endpoint endpoint;
    std::string error;
    if (!ParseEngineEndpoint(pair.server_id, &endpoint, &error)) _exit(13);
    std::vector<std::unique_ptr<TcpStream>> flood;
    for (int i = 0; i < 200; ++i) {
      bool timed_out = false;
      std::unique_ptr<TcpStream> stream = TcpStream::Connect(endpoint, Deadline::AfterMs(2000), &timed_out, &error);
      if (!stream) break;  // our own side at the limit: enough
      flood.push_back(std::move(stream));
    }
    // Refused connections get an Error at once; accepted ones wait for our Hello (none comes).
    int refused = 0;
    for (auto &stream : flood) {
      wire::MsgHeader header;
      if (stream->Read(&header, sizeof(header), Deadline::AfterMs(20)) == IoStatus::kOk &&
          header.status == adxl::RESOURCE_EXHAUSTED)
        ++refused;
    }
    if (flood.size() < 150) _exit(16);
    // 64 (llmdd.MaxHandshakes) wait in their handshake, the rest were refused.
    if (refused < static_cast<int>(flood.size()) - 64) _exit(14);
    std::vector<char> got;
    if (pair.Read(&got) != adxl::SUCCESS || got != pair.memory) _exit(15);
    fprintf(stderr, "server refused %d of %zu flooding connections and kept serving\n", refused, flood.size());
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the process died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// A raw connection that has not said anything: reads the server's first
// message, if any comes within `ms`.
bool ReadsRefusal(TcpStream &stream, int ms, uint32_t *status) {
  wire::MsgHeader header;
  if (stream.Read(&header, sizeof(header), Deadline::AfterMs(ms)) != IoStatus::kOk) return false;
  *status = header.status;
  return header.type == static_cast<uint16_t>(wire::MsgType::kError);
}

TEST_F(ResourceExhaustion, SessionsBeyondTheCapAreRefusedAtOnce) {
  Engine server;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.MaxSessions", "2"}}), adxl::SUCCESS);
  Engine a, b, c;
  for (Engine *e : {&a, &b, &c}) ASSERT_EQ(e->Initialize("127.0.0.1", {}), adxl::SUCCESS);
  ASSERT_EQ(a.Connect(server_id, 3000), adxl::SUCCESS);
  ASSERT_EQ(b.Connect(server_id, 3000), adxl::SUCCESS);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.Connect(server_id, 5000), adxl::RESOURCE_EXHAUSTED);  // told at once, not after 5 s
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  ASSERT_EQ(a.Disconnect(server_id, 3000), adxl::SUCCESS);
  EXPECT_EQ(c.Connect(server_id, 3000), adxl::SUCCESS);
}

TEST_F(ResourceExhaustion, HandshakesBeyondTheCapAreRefusedAtOnce) {
  Engine server;
  const int port = llmdd::testing::FreeLoopbackPort();
  const std::string server_id = "127.0.0.1:" + std::to_string(port);
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.MaxHandshakes", "2"}}), adxl::SUCCESS);
  bool timed_out = false;
  std::string error;
  std::vector<std::unique_ptr<TcpStream>> silent;
  for (int i = 0; i < 2; ++i) {
    silent.push_back(TcpStream::Connect(llmdd::testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error));
    ASSERT_TRUE(silent.back()) << error;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // both are in their handshake now
  std::unique_ptr<TcpStream> third =
      TcpStream::Connect(llmdd::testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error);
  ASSERT_TRUE(third) << error;
  uint32_t status = 0;
  ASSERT_TRUE(ReadsRefusal(*third, 1000, &status));  // the two in progress are young: the newcomer is refused
  EXPECT_EQ(status, adxl::RESOURCE_EXHAUSTED);
  // Silent for longer than a real peer takes to say Hello, the oldest gives
  // way to a newcomer (told so): silent connections cannot lock real peers out.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  EXPECT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  int told = 0;
  for (auto &stream : silent) {
    if (ReadsRefusal(*stream, 100, &status)) {
      EXPECT_EQ(status, adxl::RESOURCE_EXHAUSTED);
      ++told;
    }
  }
  EXPECT_GE(told, 1);
}

// A server process out of file descriptors still takes each new connection
// long enough to tell its peer, instead of leaving it in the kernel's backlog
// until the peer's timeout.
TEST_F(ResourceExhaustion, AServerOutOfDescriptorsRefusesNewcomersAtOnce) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer runtimes need descriptors of their own (UBSan's type checks read /proc/self/maps)";
#endif
  int to_parent[2];
  ASSERT_EQ(pipe(to_parent), 0);
  const int port = llmdd::testing::FreeLoopbackPort();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(to_parent[0]);
    Engine server;
    if (server.Initialize("127.0.0.1:" + std::to_string(port), {}) != adxl::SUCCESS) _exit(10);
    int open_fds = 0;
    for (int fd = 0; fd < 4096; ++fd)
      if (fcntl(fd, F_GETFD) != -1) ++open_fds;
    rlimit limit{};
    limit.rlim_cur = limit.rlim_max = static_cast<rlim_t>(open_fds + 8);  // room for a few connections
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) _exit(11);
    char ready = 1;
    if (write(to_parent[1], &ready, 1) != 1) _exit(12);
    pause();
    _exit(0);
  }
  close(to_parent[1]);
  char ready = 0;
  ASSERT_EQ(read(to_parent[0], &ready, 1), 1);
  close(to_parent[0]);
  std::vector<std::unique_ptr<TcpStream>> flood;
  int refused_at_once = 0;
  for (int i = 0; i < 30; ++i) {
    bool timed_out = false;
    std::string error;
    std::unique_ptr<TcpStream> stream =
        TcpStream::Connect(llmdd::testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error);
    ASSERT_TRUE(stream) << error;
    uint32_t status = 0;
    if (ReadsRefusal(*stream, 300, &status) && status == adxl::RESOURCE_EXHAUSTED) ++refused_at_once;
    flood.push_back(std::move(stream));
  }
  EXPECT_GT(refused_at_once, 0) << "newcomers were left in the backlog";
  flood.clear();
  // Descriptors free again: the server (still alive) takes a client.
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.TcpConnections", "1"}}), adxl::SUCCESS);
  adxl::Status connected = adxl::FAILED;
  for (int attempt = 0; attempt < 20 && connected != adxl::SUCCESS; ++attempt) {
    connected = client.Connect("127.0.0.1:" + std::to_string(port), 2000);
    if (connected != adxl::SUCCESS) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(connected, adxl::SUCCESS);
  client.Finalize();
  kill(child, SIGKILL);
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  EXPECT_TRUE(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGKILL) << "the server died before it was killed";
}

}  // namespace
}  // namespace llmdd
