// Mutual authentication with a shared secret (llmdd.AuthSecret /
// LLMDD_AUTH_SECRET): only peers that know the secret can connect, and a
// client refuses a server that cannot prove it knows the secret.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/engine.h"
#include "engine/handshake.h"

namespace llmdd {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::map<std::string, std::string> Secret(const char *s) {
  std::map<std::string, std::string> o;
  if (s != nullptr) o["llmdd.AuthSecret"] = s;
  return o;
}

struct Pair {
  Engine server, client;
  std::string server_id;
  std::vector<char> memory = std::vector<char>(4096, 'S');
  adxl::Status Start(const char *server_secret, const char *client_secret) {
    server_id = "127.0.0.1:" + std::to_string(FreePort());
    EXPECT_EQ(server.Initialize(server_id, Secret(server_secret)), adxl::SUCCESS);
    uint64_t handle = 0;
    server.RegisterMem(reinterpret_cast<uintptr_t>(memory.data()), memory.size(), adxl::MEM_HOST, &handle);
    EXPECT_EQ(client.Initialize("127.0.0.1", Secret(client_secret)), adxl::SUCCESS);
    return client.Connect(server_id, 2000);
  }
};

TEST(EngineAuth, SameSecretConnectsAndTransfers) {
  Pair p;
  ASSERT_EQ(p.Start("s3cret", "s3cret"), adxl::SUCCESS);
  std::vector<char> local(4096, 0);
  adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(p.memory.data()),
                         4096};
  ASSERT_EQ(p.client.TransferSync(p.server_id, adxl::READ, &d, 1, 2000), adxl::SUCCESS);
  EXPECT_EQ(local, p.memory);
}

TEST(EngineAuth, WrongSecretIsRefused) {
  Pair p;
  EXPECT_EQ(p.Start("s3cret", "guess"), adxl::FAILED);
}

TEST(EngineAuth, ClientWithoutSecretIsRefused) {
  Pair p;
  EXPECT_EQ(p.Start("s3cret", nullptr), adxl::FAILED);
}

TEST(EngineAuth, ClientRefusesServerWithoutSecret) {
  Pair p;
  EXPECT_EQ(p.Start(nullptr, "s3cret"), adxl::FAILED);
}

TEST(EngineAuth, SecretFromEnvironment) {
  setenv("LLMDD_AUTH_SECRET", "from-env", 1);
  Pair p;
  adxl::Status status = p.Start(nullptr, nullptr);
  unsetenv("LLMDD_AUTH_SECRET");
  EXPECT_EQ(status, adxl::SUCCESS);
}

TEST(EngineAuth, RawPeerLearnsNothingBeforeAuthenticating) {
  Engine server;
  std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id, Secret("s3cret")), adxl::SUCCESS);
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint(id, &ep, &error));
  // A client that speaks the protocol but has no secret: the only answer it
  // gets is a challenge, then a refusal; never a session id.
  wire::Hello hello;
  hello.engine_id = "intruder";
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  auto stream = OpenPeerConnection(ep, hello, "", Deadline::AfterMs(2000), &ack, &status, &error);
  EXPECT_EQ(stream, nullptr);
  EXPECT_EQ(status, adxl::FAILED);
  EXPECT_NE(error.find("authentication failed"), std::string::npos) << error;
  EXPECT_EQ(ack.session_id, 0U);
}

}  // namespace
}  // namespace llmdd
