// Mutual authentication with a shared secret (llmdd.AuthSecret /
// LLMDD_AUTH_SECRET): only peers that know the secret can connect, the client
// proves first (the server reveals nothing derived from the secret to a peer
// that has not), a client refuses a server that cannot prove it knows the
// secret, and secrets shorter than 16 bytes are refused.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "common/hmac.h"
#include "engine/engine.h"
#include "engine/engine_config.h"
#include "engine/handshake.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

// 32 bytes, like `openssl rand -hex 16` would give.
constexpr char kSecret[] = "3f9c1e07a2b84d6590e1c7f4b2a86d13";
constexpr char kOtherSecret[] = "b71d04e9c3a25f8866d0e2b9a4c17f35";
constexpr size_t kNonceBytes = 32;

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

// Sets (or unsets, with nullptr) LLMDD_AUTH_SECRET for one scope and puts the
// previous value back.
class ScopedSecretEnv {
 public:
  explicit ScopedSecretEnv(const char *value) {
    if (const char *old = getenv(kEnvAuthSecret)) previous_ = old;
    if (value != nullptr)
      setenv(kEnvAuthSecret, value, 1);
    else
      unsetenv(kEnvAuthSecret);
  }
  ~ScopedSecretEnv() {
    if (previous_)
      setenv(kEnvAuthSecret, previous_->c_str(), 1);
    else
      unsetenv(kEnvAuthSecret);
  }

 private:
  std::optional<std::string> previous_;
};

// The proofs exactly as docs/SECURITY.md describes them, computed here
// independently of the engine.
std::string DocumentedClientProof(const std::string &secret, const std::string &client_nonce,
                                  const std::string &server_nonce, const std::string &client_id) {
  return HmacSha256(secret, "llmdd-auth-v1 client|" + server_nonce + "|" + client_nonce + "|" + client_id);
}
std::string DocumentedServerProof(const std::string &secret, const std::string &client_nonce,
                                  const std::string &server_nonce, const std::string &client_id) {
  return HmacSha256(secret, "llmdd-auth-v1 server|" + client_nonce + "|" + server_nonce + "|" + client_id);
}

// Raw protocol messages, encoded by hand around the project's body encoders.
bool SendRaw(ByteStream &stream, wire::MsgType type, const std::string &body, uint32_t status = 0) {
  wire::MsgHeader header;
  header.type = static_cast<uint16_t>(type);
  header.status = status;
  header.body_len = body.size();
  std::string bytes(reinterpret_cast<const char *>(&header), sizeof(header));
  bytes += body;
  return stream.Write(bytes.data(), bytes.size(), Deadline::AfterMs(2000)) == IoStatus::kOk;
}

struct RawMessage {
  wire::MsgHeader header;
  std::string body;
  wire::MsgType Type() const { return static_cast<wire::MsgType>(header.type); }
};

// Reads the next message; nullopt when the stream ends (or breaks).
std::optional<RawMessage> ReadRaw(ByteStream &stream) {
  RawMessage m;
  if (stream.Read(&m.header, sizeof(m.header), Deadline::AfterMs(3000)) != IoStatus::kOk) return std::nullopt;
  if (!wire::CheckHeader(m.header).empty()) return std::nullopt;
  m.body.resize(m.header.body_len);
  if (stream.Read(m.body.data(), m.body.size(), Deadline::AfterMs(3000)) != IoStatus::kOk) return std::nullopt;
  return m;
}

wire::Hello ControlHello(const std::string &engine_id, const std::string &nonce) {
  wire::Hello hello;
  hello.role = wire::ConnRole::kControl;
  hello.lanes = 1;
  hello.heartbeat_interval_ms = 1000;
  hello.peer_timeout_ms = 10000;
  hello.engine_id = engine_id;
  hello.target_engine_id = "127.0.0.1";
  hello.nonce = nonce;
  return hello;
}

Endpoint EndpointOf(const std::string &id) {
  Endpoint ep;
  std::string error;
  EXPECT_TRUE(ParseEngineEndpoint(id, &ep, &error)) << error;
  return ep;
}

struct Pair {
  Engine server, client;
  std::string server_id;
  std::vector<char> memory = std::vector<char>(4096, 'S');
  adxl::Status Start(const char *server_secret, const char *client_secret) {
    server_id = "127.0.0.1:" + std::to_string(FreePort());
    EXPECT_EQ(server.Initialize(server_id, Secret(server_secret)), adxl::SUCCESS);
    for (size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<char>('A' + i % 26);
    uint64_t handle = 0;
    server.RegisterMem(reinterpret_cast<uintptr_t>(memory.data()), memory.size(), adxl::MEM_HOST, &handle);
    EXPECT_EQ(client.Initialize("127.0.0.1", Secret(client_secret)), adxl::SUCCESS);
    return client.Connect(server_id, 2000);
  }
};

// A server engine with kSecret, listening on a fresh port.
struct SecretServer {
  Engine engine;
  std::string id = "127.0.0.1:" + std::to_string(FreePort());
  SecretServer() { EXPECT_EQ(engine.Initialize(id, Secret(kSecret)), adxl::SUCCESS); }
};

// Plays the server for one connection: accepts it, reads the client's Hello and
// hands both to `script` (on its own thread).
class ScriptedServer {
 public:
  using Script = std::function<void(ByteStream &, const wire::Hello &)>;
  explicit ScriptedServer(Script script) {
    Endpoint local = EndpointOf("127.0.0.1:0");
    std::string error;
    EXPECT_TRUE(listener_.Listen(local, &error)) << error;
    thread_ = std::thread([this, script = std::move(script)] {
      std::unique_ptr<TcpStream> stream = listener_.Accept(Deadline::AfterMs(5000));
      if (!stream) return;
      std::optional<RawMessage> hello_msg = ReadRaw(*stream);
      wire::Hello hello;
      if (hello_msg && hello_msg->Type() == wire::MsgType::kHello && wire::DecodeHello(hello_msg->body, &hello))
        script(*stream, hello);
      // Wait until the client has read everything and closed its end.
      char byte;
      while (stream->Read(&byte, 1, Deadline::AfterMs(3000)) == IoStatus::kOk) {
      }
      stream->Shutdown();
    });
  }
  ~ScriptedServer() { Join(); }
  // Waits until the script has run and the client has closed the connection.
  void Join() {
    if (thread_.joinable()) thread_.join();
    listener_.Close();
  }
  Endpoint Address() const { return EndpointOf("127.0.0.1:" + std::to_string(listener_.Port())); }

 private:
  TcpListener listener_;
  std::thread thread_;
};

// Runs OpenPeerConnection as an engine's client with `secret` against `remote`.
struct ClientAttempt {
  std::shared_ptr<ByteStream> stream;
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  ClientAttempt(const Endpoint &remote, const std::string &secret, const std::string &engine_id = "127.0.0.1:1") {
    stream = OpenPeerConnection(remote, ControlHello(engine_id, ""), secret, Deadline::AfterMs(3000), &ack, &status,
                                &error);
  }
};

TEST(EngineAuth, SameSecretConnectsAndTransfers) {
  Pair p;
  ASSERT_EQ(p.Start(kSecret, kSecret), adxl::SUCCESS);
  std::vector<char> local(4096, 0);
  adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(p.memory.data()),
                         4096};
  ASSERT_EQ(p.client.TransferSync(p.server_id, adxl::READ, &d, 1, 2000), adxl::SUCCESS);
  EXPECT_EQ(local, p.memory);
}

TEST(EngineAuth, WrongSecretIsRefused) {
  Pair p;
  EXPECT_EQ(p.Start(kSecret, kOtherSecret), adxl::FAILED);
}

TEST(EngineAuth, ClientWithoutSecretIsRefused) {
  Pair p;
  EXPECT_EQ(p.Start(kSecret, nullptr), adxl::FAILED);
}

TEST(EngineAuth, ClientRefusesServerWithoutSecret) {
  Pair p;
  EXPECT_EQ(p.Start(nullptr, kSecret), adxl::FAILED);
}

TEST(EngineAuth, SecretFromEnvironment) {
  ScopedSecretEnv env(kSecret);
  Pair p;
  ASSERT_EQ(p.Start(nullptr, nullptr), adxl::SUCCESS);
  std::vector<char> local(64, 0);
  adxl::TransferOpDesc d{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(p.memory.data()),
                         local.size()};
  ASSERT_EQ(p.client.TransferSync(p.server_id, adxl::READ, &d, 1, 2000), adxl::SUCCESS);
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(p.memory.begin(), p.memory.begin() + 64));
}

TEST(EngineAuth, ClientWithTheSecretGetsTheServersProofAndASession) {
  SecretServer server;
  ClientAttempt client(EndpointOf(server.id), kSecret);
  ASSERT_NE(client.stream, nullptr) << client.error;
  EXPECT_EQ(client.status, adxl::SUCCESS);
  EXPECT_NE(client.ack.session_id, 0U);
  EXPECT_EQ(client.ack.engine_id, server.id);
}

TEST(EngineAuth, ClientWithAnotherSecretIsRefusedWithFailed) {
  SecretServer server;
  ClientAttempt client(EndpointOf(server.id), kOtherSecret);
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  // The server refused it (the client did not get as far as judging the server).
  EXPECT_NE(client.error.find("authentication failed"), std::string::npos) << client.error;
  EXPECT_EQ(client.error.find("failed to prove"), std::string::npos) << client.error;
  EXPECT_EQ(client.ack.session_id, 0U);
}

TEST(EngineAuth, RawPeerLearnsNothingBeforeAuthenticating) {
  SecretServer server;
  // A client that speaks the protocol but has no secret: the only answer it
  // gets is a refusal; never a session id.
  ClientAttempt client(EndpointOf(server.id), "", "intruder");
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  EXPECT_NE(client.error.find("authentication failed"), std::string::npos) << client.error;
  EXPECT_EQ(client.ack.session_id, 0U);
}

// The issue this guards against: a server that sent its proof before the
// client proved anything handed every unauthenticated peer material for an
// offline dictionary attack on the secret.
TEST(EngineAuth, ServerSendsNoProofBeforeTheClientHasProvedItself) {
  SecretServer server;
  bool timed_out = false;
  std::string error;
  std::unique_ptr<TcpStream> stream = TcpStream::Connect(EndpointOf(server.id), Deadline::AfterMs(2000), &timed_out,
                                                         &error);
  ASSERT_NE(stream, nullptr) << error;
  const std::string client_nonce(kNonceBytes, 'n');
  const std::string client_id = "guesser";
  ASSERT_TRUE(SendRaw(*stream, wire::MsgType::kHello, wire::EncodeHello(ControlHello(client_id, client_nonce))));

  std::optional<RawMessage> challenge_msg = ReadRaw(*stream);
  ASSERT_TRUE(challenge_msg.has_value());
  ASSERT_EQ(challenge_msg->Type(), wire::MsgType::kAuthChallenge);
  EXPECT_EQ(challenge_msg->header.status, 0U);
  // The body is the server nonce and nothing else: u32 length + 32 bytes.
  EXPECT_EQ(challenge_msg->body.size(), sizeof(uint32_t) + kNonceBytes);
  wire::AuthChallenge challenge;
  ASSERT_TRUE(wire::DecodeAuthChallenge(challenge_msg->body, &challenge));
  ASSERT_EQ(challenge.server_nonce.size(), kNonceBytes);
  const std::string server_proof = DocumentedServerProof(kSecret, client_nonce, challenge.server_nonce, client_id);
  EXPECT_EQ(challenge_msg->body.find(server_proof), std::string::npos);

  // A guess at the client proof (made with another secret) is refused, and
  // the server's proof never comes.
  ASSERT_TRUE(SendRaw(*stream, wire::MsgType::kAuthResponse,
                      DocumentedClientProof(kOtherSecret, client_nonce, challenge.server_nonce, client_id)));
  std::vector<RawMessage> answers;
  while (std::optional<RawMessage> m = ReadRaw(*stream)) answers.push_back(*m);
  ASSERT_EQ(answers.size(), 1U);
  EXPECT_EQ(answers[0].Type(), wire::MsgType::kError);
  EXPECT_EQ(answers[0].header.status, static_cast<uint32_t>(adxl::FAILED));
  EXPECT_NE(answers[0].body.find("authentication failed"), std::string::npos) << answers[0].body;
  EXPECT_EQ(answers[0].body.find(server_proof), std::string::npos);
  for (const RawMessage &m : answers) EXPECT_NE(m.Type(), wire::MsgType::kAuthConfirm);
}

TEST(EngineAuth, ServerProvesItselfOnlyAfterAValidClientProof) {
  SecretServer server;
  bool timed_out = false;
  std::string error;
  std::unique_ptr<TcpStream> stream = TcpStream::Connect(EndpointOf(server.id), Deadline::AfterMs(2000), &timed_out,
                                                         &error);
  ASSERT_NE(stream, nullptr) << error;
  const std::string client_nonce = RandomBytes(kNonceBytes);
  const std::string client_id = "127.0.0.1:7";
  ASSERT_TRUE(SendRaw(*stream, wire::MsgType::kHello, wire::EncodeHello(ControlHello(client_id, client_nonce))));
  std::optional<RawMessage> challenge_msg = ReadRaw(*stream);
  ASSERT_TRUE(challenge_msg.has_value());
  ASSERT_EQ(challenge_msg->Type(), wire::MsgType::kAuthChallenge);
  wire::AuthChallenge challenge;
  ASSERT_TRUE(wire::DecodeAuthChallenge(challenge_msg->body, &challenge));

  ASSERT_TRUE(SendRaw(*stream, wire::MsgType::kAuthResponse,
                      DocumentedClientProof(kSecret, client_nonce, challenge.server_nonce, client_id)));
  std::optional<RawMessage> confirm = ReadRaw(*stream);
  ASSERT_TRUE(confirm.has_value());
  ASSERT_EQ(confirm->Type(), wire::MsgType::kAuthConfirm);
  EXPECT_EQ(confirm->body, DocumentedServerProof(kSecret, client_nonce, challenge.server_nonce, client_id));
  std::optional<RawMessage> ack_msg = ReadRaw(*stream);
  ASSERT_TRUE(ack_msg.has_value());
  ASSERT_EQ(ack_msg->Type(), wire::MsgType::kHelloAck);
  wire::HelloAck ack;
  ASSERT_TRUE(wire::DecodeHelloAck(ack_msg->body, &ack));
  EXPECT_NE(ack.session_id, 0U);
  SendRaw(*stream, wire::MsgType::kGoodbye, "");
}

// Client side against scripted servers.

TEST(EngineAuth, ClientProvesFirstAndRefusesAWrongServerProof) {
  std::string response_seen, expected_response;
  ScriptedServer impostor([&](ByteStream &stream, const wire::Hello &hello) {
    wire::AuthChallenge challenge{std::string(kNonceBytes, 's')};
    ASSERT_TRUE(SendRaw(stream, wire::MsgType::kAuthChallenge, wire::EncodeAuthChallenge(challenge)));
    std::optional<RawMessage> response = ReadRaw(stream);
    ASSERT_TRUE(response.has_value());
    ASSERT_EQ(response->Type(), wire::MsgType::kAuthResponse);
    response_seen = response->body;
    expected_response = DocumentedClientProof(kSecret, hello.nonce, challenge.server_nonce, hello.engine_id);
    // A proof made with a guessed secret, then an ack that must not be taken.
    SendRaw(stream, wire::MsgType::kAuthConfirm,
            DocumentedServerProof(kOtherSecret, hello.nonce, challenge.server_nonce, hello.engine_id));
    wire::HelloAck ack;
    ack.session_id = 99;
    SendRaw(stream, wire::MsgType::kHelloAck, wire::EncodeHelloAck(ack));
  });
  ClientAttempt client(impostor.Address(), kSecret);
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  EXPECT_NE(client.error.find("failed to prove it knows the shared secret"), std::string::npos) << client.error;
  EXPECT_EQ(client.ack.session_id, 0U);
  impostor.Join();
  EXPECT_EQ(response_seen.size(), 32U);
  EXPECT_EQ(response_seen, expected_response);
}

TEST(EngineAuth, ClientRefusesHelloAckWithoutTheServersProof) {
  ScriptedServer impostor([](ByteStream &stream, const wire::Hello &) {
    ASSERT_TRUE(SendRaw(stream, wire::MsgType::kAuthChallenge,
                        wire::EncodeAuthChallenge(wire::AuthChallenge{std::string(kNonceBytes, 's')})));
    std::optional<RawMessage> response = ReadRaw(stream);
    ASSERT_TRUE(response.has_value());
    wire::HelloAck ack;
    ack.session_id = 99;
    SendRaw(stream, wire::MsgType::kHelloAck, wire::EncodeHelloAck(ack));
  });
  ClientAttempt client(impostor.Address(), kSecret);
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  EXPECT_NE(client.error.find("failed to prove it knows the shared secret"), std::string::npos) << client.error;
  EXPECT_EQ(client.ack.session_id, 0U);
}

TEST(EngineAuth, ClientRefusesAChallengeThatCarriesMoreThanTheNonce) {
  bool got_response = true;
  ScriptedServer old_style([&](ByteStream &stream, const wire::Hello &) {
    // What earlier revisions sent: nonce, then the server proof.
    wire::BodyWriter body;
    body.Str(std::string(kNonceBytes, 's'));
    body.Str(std::string(32, 'p'));
    ASSERT_TRUE(SendRaw(stream, wire::MsgType::kAuthChallenge, body.Data()));
    got_response = ReadRaw(stream).has_value();
  });
  ClientAttempt client(old_style.Address(), kSecret);
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  EXPECT_NE(client.error.find("malformed"), std::string::npos) << client.error;
  old_style.Join();
  EXPECT_FALSE(got_response);
}

TEST(EngineAuth, ClientWithoutSecretExplainsAChallenge) {
  ScriptedServer server([](ByteStream &stream, const wire::Hello &) {
    SendRaw(stream, wire::MsgType::kAuthChallenge,
            wire::EncodeAuthChallenge(wire::AuthChallenge{std::string(kNonceBytes, 's')}));
  });
  ClientAttempt client(server.Address(), "");
  EXPECT_EQ(client.stream, nullptr);
  EXPECT_EQ(client.status, adxl::FAILED);
  EXPECT_NE(client.error.find("requires authentication"), std::string::npos) << client.error;
  EXPECT_NE(client.error.find("llmdd.AuthSecret"), std::string::npos) << client.error;
}

// Secret length: at least 16 bytes, at most 4096, from the option or the
// environment; the error names where it came from and never the secret.

TEST(EngineAuthSecret, OptionShorterThan16BytesIsRefused) {
  ScopedSecretEnv env(nullptr);
  const std::string fifteen = "0123456789abcde";
  ASSERT_EQ(fifteen.size(), 15U);
  Engine engine;
  EXPECT_EQ(engine.Initialize("127.0.0.1", Secret(fifteen.c_str())), adxl::PARAM_INVALID);

  EngineConfig config;
  std::string error;
  EXPECT_EQ(ParseEngineOptions(Secret(fifteen.c_str()), &config, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("llmdd.AuthSecret"), std::string::npos) << error;
  EXPECT_NE(error.find("at least 16 bytes"), std::string::npos) << error;
  EXPECT_EQ(error.find(fifteen), std::string::npos) << "the secret must not appear in the error";
  EXPECT_TRUE(config.auth_secret.empty());
}

TEST(EngineAuthSecret, Option16BytesIsAccepted) {
  ScopedSecretEnv env(nullptr);
  const std::string sixteen = "0123456789abcdef";
  Engine engine;
  EXPECT_EQ(engine.Initialize("127.0.0.1", Secret(sixteen.c_str())), adxl::SUCCESS);
  EngineConfig config;
  std::string error;
  ASSERT_EQ(ParseEngineOptions(Secret(sixteen.c_str()), &config, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(config.auth_secret, sixteen);
}

TEST(EngineAuthSecret, EmptyAndOversizedOptionsAreRefused) {
  ScopedSecretEnv env(nullptr);
  EngineConfig config;
  std::string error;
  EXPECT_EQ(ParseEngineOptions(Secret(""), &config, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("llmdd.AuthSecret"), std::string::npos) << error;
  const std::string max(4096, 'k');
  EXPECT_EQ(ParseEngineOptions(Secret(max.c_str()), &config, &error), adxl::SUCCESS) << error;
  const std::string too_long(4097, 'k');
  EXPECT_EQ(ParseEngineOptions(Secret(too_long.c_str()), &config, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("at most 4096 bytes"), std::string::npos) << error;
}

TEST(EngineAuthSecret, ShortEnvironmentSecretIsRefused) {
  const std::string short_secret = "short-env-value";
  ASSERT_EQ(short_secret.size(), 15U);
  ScopedSecretEnv env(short_secret.c_str());
  Engine engine;
  EXPECT_EQ(engine.Initialize("127.0.0.1", {}), adxl::PARAM_INVALID);

  EngineConfig config;
  std::string error;
  EXPECT_EQ(ParseEngineOptions({}, &config, &error), adxl::PARAM_INVALID);
  EXPECT_NE(error.find("LLMDD_AUTH_SECRET"), std::string::npos) << error;
  EXPECT_NE(error.find("environment"), std::string::npos) << error;
  EXPECT_NE(error.find("at least 16 bytes"), std::string::npos) << error;
  EXPECT_EQ(error.find(short_secret), std::string::npos) << "the secret must not appear in the error";
}

TEST(EngineAuthSecret, OptionWinsOverAShortEnvironmentSecretAndEmptyEnvMeansNone) {
  {
    ScopedSecretEnv env("too-short");
    EngineConfig config;
    std::string error;
    ASSERT_EQ(ParseEngineOptions(Secret(kSecret), &config, &error), adxl::SUCCESS) << error;
    EXPECT_EQ(config.auth_secret, kSecret);
  }
  {
    ScopedSecretEnv env("");
    EngineConfig config;
    std::string error;
    ASSERT_EQ(ParseEngineOptions({}, &config, &error), adxl::SUCCESS) << error;
    EXPECT_TRUE(config.auth_secret.empty());
  }
}

}  // namespace
}  // namespace llmdd
