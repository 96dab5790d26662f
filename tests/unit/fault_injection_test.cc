// The fault-injecting ByteStream decorator, and the engine under it: every
// injected fault becomes a specific status within the deadline, never a hang
// or a wrong byte outside the destination.
#include "transport/fault_injection.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <vector>

#include "engine/engine.h"
#include "transport/tcp/tcp_stream.h"
#include "loopback_util.h"

namespace llmdd {
namespace {

struct Pipe {
  std::shared_ptr<ByteStream> a, b;
  Pipe() {
    int fds[2];
    EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    a = std::make_shared<TcpStream>(fds[0], "a");
    b = std::make_shared<TcpStream>(fds[1], "b");
  }
};

FaultPlan Only(const char *text) {
  FaultPlan plan;
  std::string error;
  EXPECT_TRUE(ParseFaultPlan(text, &plan, &error)) << error;
  return plan;
}

TEST(FaultPlan, ParsesAndRejects) {
  FaultPlan plan = Only("seed=9,delay=0.5:30,stall=0.1,drop=0.2,corrupt=0.3,close=0.4,partial=0.05,register=1");
  EXPECT_EQ(plan.seed, 9U);
  EXPECT_DOUBLE_EQ(plan.delay, 0.5);
  EXPECT_EQ(plan.delay_ms, 30);
  EXPECT_DOUBLE_EQ(plan.fail_register, 1.0);
  EXPECT_TRUE(plan.Active());
  std::string error;
  EXPECT_FALSE(ParseFaultPlan("drop=2", &plan, &error));
  EXPECT_FALSE(ParseFaultPlan("explode=0.1", &plan, &error));
  EXPECT_NE(error.find("unknown fault"), std::string::npos);
  EXPECT_FALSE(ParseFaultPlan("delay", &plan, &error));
  EXPECT_FALSE(ParseFaultPlan("drop=nan", &plan, &error));  // NaN compares false with every bound
  EXPECT_FALSE(ParseFaultPlan("drop=-0.1", &plan, &error));
  EXPECT_FALSE(ParseFaultPlan(std::string("drop=0.1\0x", 10), &plan, &error));
  EXPECT_FALSE(FaultPlan().Active());
  // The freezes (a process stopping itself once, for tests of frozen peers).
  plan = Only("freeze_send=1048576,freeze_copy=1");
  EXPECT_EQ(plan.freeze_send, 1048576U);
  EXPECT_TRUE(plan.freeze_copy);
  EXPECT_TRUE(plan.Active());
  EXPECT_FALSE(ParseFaultPlan("freeze_copy=2", &plan, &error));
  EXPECT_FALSE(ParseFaultPlan("freeze_send=-1", &plan, &error));
}

TEST(FaultyStream, CloseStallDropCorruptPartial) {
  {
    Pipe p;
    FaultyStream s(p.a, Only("close=1"), 1);
    char c = 'x';
    EXPECT_EQ(s.Write(&c, 1, Deadline::AfterMs(1000)), IoStatus::kClosed);
  }
  {
    Pipe p;
    FaultyStream s(p.a, Only("stall=1"), 1);
    char c = 'x';
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(s.Write(&c, 1, Deadline::AfterMs(200)), IoStatus::kTimeout);
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(ms, 150);
    EXPECT_LT(ms, 1200);
  }
  {
    Pipe p;
    FaultyStream s(p.a, Only("drop=1"), 1);
    char c = 'x', got = 0;
    EXPECT_EQ(s.Write(&c, 1, Deadline::AfterMs(1000)), IoStatus::kOk);
    EXPECT_EQ(p.b->Read(&got, 1, Deadline::AfterMs(100)), IoStatus::kTimeout);
  }
  {
    Pipe p;
    FaultyStream s(p.a, Only("corrupt=1"), 1);
    char data[16], got[16];
    memset(data, 'A', sizeof(data));
    EXPECT_EQ(s.Write(data, sizeof(data), Deadline::AfterMs(1000)), IoStatus::kOk);
    ASSERT_EQ(p.b->Read(got, sizeof(got), Deadline::AfterMs(1000)), IoStatus::kOk);
    EXPECT_NE(memcmp(data, got, sizeof(data)), 0);
    for (char c : data) EXPECT_EQ(c, 'A');  // the caller's buffer is never modified
  }
  {
    Pipe p;
    FaultyStream s(p.a, Only("partial=1"), 1);
    std::vector<char> data(1000, 'P'), got(1000);
    EXPECT_EQ(s.Write(data.data(), data.size(), Deadline::AfterMs(1000)), IoStatus::kClosed);
    EXPECT_EQ(p.b->Read(got.data(), got.size(), Deadline::AfterMs(1000)), IoStatus::kClosed);
  }
}

int FreePort() { return llmdd::testing::FreeLoopbackPort(); }

// The real engine with faults on every connection (both sides, one process):
// each call returns a specific status within timeout + margin, and READ never
// writes outside its destination (guard bytes around it stay intact).
TEST(EngineUnderFaults, EveryCallReturnsInTimeAndNeverWritesOutsideTheDestination) {
  SetFaultPlan(Only("seed=42,delay=0.05:5,stall=0.01,drop=0.01,corrupt=0.02,close=0.02,partial=0.01"));
  // Buffers outlive the engines (declared first, destroyed last): a transfer
  // that failed on a fault may still be served while the test ends.
  constexpr size_t kGuard = 4096;
  std::vector<char> remote(1 << 20);
  std::vector<char> local(remote.size() + 2 * kGuard, 'G');
  Engine server, client;
  std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id, {{"llmdd.TcpConnections", "2"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.TcpConnections", "2"}}), adxl::SUCCESS);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 31 + 7);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  char *dest = local.data() + kGuard;
  std::map<adxl::Status, int> outcomes;
  int connected_calls = 0;
  for (int i = 0; i < 60; ++i) {
    client.Connect(id, 500);  // after a Disconnect below; ALREADY_CONNECTED otherwise
    size_t len = 1 + (i * 7919) % remote.size();
    adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(dest), reinterpret_cast<uintptr_t>(remote.data()), len};
    auto start = std::chrono::steady_clock::now();
    adxl::Status s = client.TransferSync(id, adxl::READ, &d, 1, 300);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(ms, 300 + 1500) << "call " << i << " took " << ms << " ms";
    outcomes[s]++;
    if (s != adxl::NOT_CONNECTED) ++connected_calls;
    if (s == adxl::SUCCESS) {
      EXPECT_EQ(memcmp(dest, remote.data(), len), 0) << "call " << i;
    }
    EXPECT_TRUE(s == adxl::SUCCESS || s == adxl::TIMEOUT || s == adxl::FAILED || s == adxl::NOT_CONNECTED ||
                s == adxl::PARAM_INVALID)
        << s;
    for (size_t g = 0; g < kGuard; ++g) {
      ASSERT_EQ(local[g], 'G') << "byte before the destination written";
      ASSERT_EQ(local[kGuard + remote.size() + g], 'G') << "byte after the destination written";
    }
    if (s == adxl::FAILED) client.Disconnect(id, 300);  // a dead channel: start over
  }
  SetFaultPlan(FaultPlan());
  EXPECT_GT(outcomes[adxl::SUCCESS], 0);
  EXPECT_GT(connected_calls, 0);
  client.Finalize();
  server.Finalize();
}

}  // namespace
}  // namespace llmdd
