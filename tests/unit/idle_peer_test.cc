// What an idle peer costs: its control connection only. Data lanes open when
// a transfer needs them and close after llmdd.IdleLaneCloseMs without use;
// the next transfer reopens them and moves the right bytes.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "loopback_util.h"

namespace llmdd {
namespace {

// Sockets this process holds (both engines live here: each connection counts twice).
int OpenSockets() {
  int sockets = 0;
  DIR *dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent *entry = readdir(dir)) {
    char target[256];
    const std::string path = std::string("/proc/self/fd/") + entry->d_name;
    const ssize_t n = readlink(path.c_str(), target, sizeof(target) - 1);
    if (n > 0 && strncmp(target, "socket:", 7) == 0) ++sockets;
  }
  closedir(dir);
  return sockets;
}

template <typename Pred>
bool WaitFor(Pred pred, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

class IdlePeer : public ::testing::TestWithParam<const char *> {};

TEST_P(IdlePeer, HoldsOnlyItsControlConnectionAndLanesComeAndGoWithUse) {
  const std::map<std::string, std::string> options = {
      {"llmdd.Transport", GetParam()}, {"llmdd.IdleLaneCloseMs", "300"}, {"llmdd.TcpConnections", "4"}};
  // Buffers outlive the engines (declared first, destroyed last), see TESTING.md.
  std::vector<char> remote(8 << 20), local(remote.size());
  Engine server, client;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, options), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", options), adxl::SUCCESS);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 13 + 5);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.RegisterMem(reinterpret_cast<uintptr_t>(local.data()), local.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);

  const int before = OpenSockets();
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  const int connected = OpenSockets();
  EXPECT_EQ(connected - before, 2) << "an idle peer holds its control connection only (one socket on each side)";

  // A large READ is split over the lanes: they open now, in parallel.
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            remote.size()};
  ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  const int busy = OpenSockets();
  EXPECT_GT(busy, connected) << "the transfer opened data lanes";
  EXPECT_LE(busy - connected, 2 * 4) << "at most llmdd.TcpConnections lanes";

  // Idle for longer than llmdd.IdleLaneCloseMs: the lanes close on both sides.
  EXPECT_TRUE(WaitFor([&] { return OpenSockets() == connected; }, 3000))
      << OpenSockets() << " sockets, " << connected << " expected";

  // And reopen for the next transfer, which moves the right bytes.
  std::fill(local.begin(), local.end(), 0);
  desc = {reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()), 4096};
  ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 3000), adxl::SUCCESS);
  EXPECT_EQ(0, memcmp(local.data(), remote.data(), 4096));
  EXPECT_EQ(client.Disconnect(server_id, 3000), adxl::SUCCESS);
  EXPECT_TRUE(WaitFor([&] { return OpenSockets() == before; }, 3000));
}

INSTANTIATE_TEST_SUITE_P(Transport, IdlePeer, ::testing::Values("tcp", "auto"));

// The server's llmdd.MaxLanesPerSession refuses lanes beyond it with
// RESOURCE_EXHAUSTED: a transfer split for more lanes is carried by the ones
// the server took, and moves the right bytes.
TEST(LanesPerSession, ATransferSplitForMoreLanesThanTheServerTakesUsesTheLanesItGot) {
  // Buffers outlive the engines (declared first, destroyed last), see TESTING.md.
  std::vector<char> remote(8 << 20), local(remote.size());
  Engine server, client;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.MaxLanesPerSession", "1"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}, {"llmdd.TcpConnections", "4"}}),
            adxl::SUCCESS);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 31 + 7);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.RegisterMem(reinterpret_cast<uintptr_t>(local.data()), local.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  const int before = OpenSockets();
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            remote.size()};
  for (int round = 0; round < 3; ++round) {
    std::fill(local.begin(), local.end(), 0);
    ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 5000), adxl::SUCCESS) << round;
    EXPECT_EQ(local, remote);
  }
  EXPECT_EQ(OpenSockets() - before, 4) << "control and one lane, both ends";
}

// An LLM-DataDist link (ConnectKeyed with reverse lanes) costs the same when
// idle: the client opens one reverse lane at Connect (it tells the server how
// to reach the client), the server closes it once idle and asks for reverse
// lanes (ReverseLaneWanted) when its requests need them. Before, both reverse
// lanes stayed open for the link's life: 3 sockets a side per idle link.
TEST_P(IdlePeer, AReverseLinkOpensItsReverseLanesOnRequestAndClosesThemWhenIdle) {
  const std::map<std::string, std::string> options = {
      {"llmdd.Transport", GetParam()}, {"llmdd.IdleLaneCloseMs", "300"}, {"llmdd.TcpConnections", "4"}};
  // Buffers outlive the engines (declared first, destroyed last), see TESTING.md.
  std::vector<char> on_client(8 << 20), on_server(on_client.size());
  Engine server, client;
  const int port = llmdd::testing::FreeLoopbackPort();
  const std::string server_id = "127.0.0.1:" + std::to_string(port);
  const std::string client_id = "127.0.0.1";
  ASSERT_EQ(server.Initialize(server_id, options), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize(client_id, options), adxl::SUCCESS);
  for (size_t i = 0; i < on_client.size(); ++i) on_client[i] = static_cast<char>(i * 17 + 3);
  uint64_t handle = 0;
  ASSERT_EQ(client.RegisterMem(reinterpret_cast<uintptr_t>(on_client.data()), on_client.size(), adxl::MEM_HOST,
                               &handle),
            adxl::SUCCESS);
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(on_server.data()), on_server.size(), adxl::MEM_HOST,
                               &handle),
            adxl::SUCCESS);

  const int before = OpenSockets();
  std::string error;
  ASSERT_EQ(client.ConnectKeyed("server", llmdd::testing::Loopback(port), 2, Deadline::AfterMs(3000), &error),
            adxl::SUCCESS)
      << error;
  EXPECT_EQ(OpenSockets() - before, 4) << "control and one reverse lane (both ends)";
  EXPECT_TRUE(WaitFor([&] { return OpenSockets() - before == 2; }, 3000))
      << OpenSockets() - before << " sockets: the idle reverse lane stayed open";

  // The server reads the client's memory: it asks for reverse lanes again.
  std::vector<Segment> all = {{reinterpret_cast<uintptr_t>(on_server.data()),
                               reinterpret_cast<uintptr_t>(on_client.data()), on_client.size()}};
  ASSERT_EQ(server.TransferKeyed(client_id, adxl::READ, all, Deadline::AfterMs(5000), &error), adxl::SUCCESS)
      << error;
  EXPECT_EQ(on_server, on_client);
  const int busy = OpenSockets() - before;
  EXPECT_GT(busy, 2) << "the transfer opened reverse lanes";
  EXPECT_LE(busy, 2 + 2 * 3) << "at most 2 reverse lanes and the express lane";
  EXPECT_TRUE(WaitFor([&] { return OpenSockets() - before == 2; }, 3000)) << OpenSockets() - before << " sockets";

  // Again, small: reopened, the right bytes.
  std::fill(on_server.begin(), on_server.end(), 0);
  std::vector<Segment> small = {{reinterpret_cast<uintptr_t>(on_server.data()) + 4096,
                                 reinterpret_cast<uintptr_t>(on_client.data()) + 4096, 4096}};
  ASSERT_EQ(server.TransferKeyed(client_id, adxl::READ, small, Deadline::AfterMs(3000), &error), adxl::SUCCESS)
      << error;
  EXPECT_EQ(0, memcmp(on_server.data() + 4096, on_client.data() + 4096, 4096));
  EXPECT_EQ(client.DisconnectKeyed("server", Deadline::AfterMs(3000), true), adxl::SUCCESS);
  EXPECT_TRUE(WaitFor([&] { return OpenSockets() == before; }, 3000));
}

}  // namespace
}  // namespace llmdd
