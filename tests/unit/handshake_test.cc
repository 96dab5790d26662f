// A protocol that can evolve (docs/PROTOCOL.md "Versions and capabilities",
// "Ignorable messages", "Which engine a client reached", "Peers one version
// apart"): raw-socket peers speaking exactly what an older, a current or a
// future engine would send, against a real serving engine, and fake servers
// against the real client side.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "engine/engine.h"
#include "engine/engine_config.h"
#include "engine/handshake.h"
#include "engine/lane.h"
#include "engine/wire.h"
#include "loopback_util.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

using wire::MsgType;

constexpr uint16_t TypeOf(MsgType t) { return static_cast<uint16_t>(t); }

struct RawMessage {
  wire::MsgHeader header;
  std::string body;
};

// One connection of a hand-written peer. Headers carry the stream's
// ProtocolVersion() unless told otherwise; answers are read without any check,
// so that tests can assert every header field themselves.
class RawConnection {
 public:
  explicit RawConnection(int port) {
    bool timed_out = false;
    std::string error;
    stream_ = TcpStream::Connect(testing::Loopback(port), Deadline::AfterMs(2000), &timed_out, &error);
    EXPECT_TRUE(stream_) << error;
  }
  explicit RawConnection(std::shared_ptr<ByteStream> stream) : stream_(std::move(stream)) {}
  ByteStream &stream() { return *stream_; }

  bool Send(uint16_t type, const std::string &body, uint64_t request_id = 0, int version = -1) {
    wire::MsgHeader h;
    h.version = version < 0 ? stream_->ProtocolVersion() : static_cast<uint16_t>(version);
    h.type = type;
    h.request_id = request_id;
    h.body_len = body.size();
    std::string bytes(reinterpret_cast<const char *>(&h), sizeof(h));
    bytes += body;
    return stream_->Write(bytes.data(), bytes.size(), Deadline::AfterMs(2000)) == IoStatus::kOk;
  }
  std::optional<RawMessage> Read(int64_t ms = 3000) {
    RawMessage m;
    if (stream_->Read(&m.header, sizeof(m.header), Deadline::AfterMs(ms)) != IoStatus::kOk) return std::nullopt;
    if (m.header.body_len > (1u << 20)) return std::nullopt;
    m.body.resize(m.header.body_len);
    if (stream_->Read(m.body.data(), m.body.size(), Deadline::AfterMs(ms)) != IoStatus::kOk) return std::nullopt;
    return m;
  }
  // The peer closed the connection (nothing more arrives, EOF within 3 s).
  bool Ended() {
    char byte;
    return stream_->Read(&byte, 1, Deadline::AfterMs(3000)) == IoStatus::kClosed;
  }
  // Sends a Hello body (as given: a version-1 body has no range) and reads the
  // answer; on HelloAck the connection carries the version it names (1 when none).
  std::optional<RawMessage> Hello(const std::string &body, wire::HelloAck *ack = nullptr) {
    if (!Send(TypeOf(MsgType::kHello), body, 0, wire::kHandshakeVersion)) return std::nullopt;
    std::optional<RawMessage> answer = Read();
    if (answer && answer->header.type == TypeOf(MsgType::kHelloAck)) {
      wire::HelloAck decoded;
      EXPECT_TRUE(wire::DecodeHelloAck(answer->body, &decoded));
      stream_->SetProtocolVersion(decoded.version == 0 ? 1 : decoded.version);
      if (ack != nullptr) *ack = decoded;
    }
    return answer;
  }

 private:
  std::shared_ptr<ByteStream> stream_;
};

wire::Hello MakeHello(wire::ConnRole role, uint16_t min_version, uint16_t max_version) {
  wire::Hello hello;
  hello.role = role;
  hello.capabilities = role == wire::ConnRole::kControl ? wire::kCapReverseLanes | wire::kCapAppMessages : 0;
  hello.heartbeat_interval_ms = 1000;
  hello.peer_timeout_ms = 10000;
  hello.engine_id = "127.0.0.1:1";
  hello.min_version = min_version;
  hello.max_version = max_version;
  return hello;
}

// A Hello as this engine's own client sends it (this engine's whole range).
std::string CurrentHello(wire::Hello hello) {
  hello.min_version = wire::kMinVersion;
  hello.max_version = wire::kMaxVersion;
  return wire::EncodeHello(hello);
}

// A Hello as a version-1 engine sends it: no version range at all.
std::string Version1Hello(const wire::Hello &hello) {
  std::string body = wire::EncodeHello(hello);
  body.resize(body.size() - 4);
  return body;
}

// A listening ADXL engine on a free loopback port with one registered region.
struct Server {
  Engine engine;
  int port = -1;
  std::vector<char> memory = std::vector<char>(4096);
  explicit Server(const std::map<std::string, std::string> &options = {}) {
    port = testing::FreeLoopbackPort();
    EXPECT_EQ(engine.Initialize(Id(), options), adxl::SUCCESS);
    for (size_t i = 0; i < memory.size(); ++i) memory[i] = static_cast<char>(i * 7 + 1);
    uint64_t handle = 0;
    EXPECT_EQ(engine.RegisterMem(reinterpret_cast<uintptr_t>(memory.data()), memory.size(), adxl::MEM_HOST, &handle),
              adxl::SUCCESS);
  }
  ~Server() { engine.Finalize(); }
  std::string Id() const { return "127.0.0.1:" + std::to_string(port); }
};

// ---------------------------------------------------------------------------
// Version negotiation
// ---------------------------------------------------------------------------

TEST(VersionNegotiation, ACurrentClientGetsTheHighestCommonVersionAndEveryLaterHeaderCarriesIt) {
  Server server;
  RawConnection control(server.port);
  wire::HelloAck ack;
  std::optional<RawMessage> answer = control.Hello(CurrentHello(MakeHello(wire::ConnRole::kControl, 1, 1)), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(answer->header.version, wire::kHandshakeVersion);  // the handshake is version-1 framed
  EXPECT_EQ(ack.version, wire::kMaxVersion);
  EXPECT_EQ(ack.version, 2);
  EXPECT_EQ(control.stream().ProtocolVersion(), 2);
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 41));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kPong));
  EXPECT_EQ(answer->header.version, 2);
  EXPECT_EQ(answer->header.request_id, 41U);
  // A header with another version on this connection is a protocol error: the session ends.
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 42, /*version=*/1));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.version, 2);
  EXPECT_EQ(answer->header.status, adxl::PARAM_INVALID);
  EXPECT_NE(answer->body.find("protocol version 1 on a connection that negotiated version 2"), std::string::npos)
      << answer->body;
  EXPECT_TRUE(control.Ended());
}

TEST(VersionNegotiation, AVersion1ClientIsServedAtVersion1OverTcpOnly) {
  Server server;
  RawConnection control(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 1);
  FillIdentity(&hello);  // it offers the same-host path as version 1 did
  hello.capabilities |= wire::kCapSameHost;
  hello.lanes = 1;
  wire::HelloAck ack;
  std::optional<RawMessage> answer = control.Hello(Version1Hello(hello), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(answer->header.version, 1);
  EXPECT_EQ(ack.version, 1);
  // Version-1 same-host requests carry absolute CLOCK_MONOTONIC deadlines: not offered.
  EXPECT_EQ(ack.capabilities & wire::kCapSameHost, 0U);
  EXPECT_EQ(ack.pid, 0U);
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes);
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 7));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kPong));
  EXPECT_EQ(answer->header.version, 1);
  // A version-1 data lane reads registered memory as before.
  RawConnection lane(server.port);
  hello.role = wire::ConnRole::kDataLane;
  hello.session_id = ack.session_id;
  wire::HelloAck lane_ack;
  answer = lane.Hello(Version1Hello(hello), &lane_ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(lane_ack.version, 1);
  std::vector<char> local(256);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(server.memory.data()) + 100,
              local.size()};
  LaneResult r = ExecuteTransfer(lane.stream(), adxl::READ, &seg, 1, 1, Deadline::AfterMs(3000));
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_EQ(0, memcmp(local.data(), server.memory.data() + 100, local.size()));
}

TEST(VersionNegotiation, AHelloWithADisjointRangeIsRefusedNamingBothRanges) {
  Server server;
  RawConnection control(server.port);
  std::optional<RawMessage> answer =
      control.Hello(wire::EncodeHello(MakeHello(wire::ConnRole::kControl, 3, 4)));
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.version, wire::kHandshakeVersion);  // readable by every version
  EXPECT_EQ(answer->header.status, adxl::FAILED);
  EXPECT_NE(answer->body.find("no common protocol version"), std::string::npos) << answer->body;
  EXPECT_NE(answer->body.find("client speaks 3..4"), std::string::npos) << answer->body;
  EXPECT_NE(answer->body.find("speaks 1..2"), std::string::npos) << answer->body;
  EXPECT_TRUE(control.Ended());
  // A range that overlaps at its low end gets that version.
  RawConnection overlap(server.port);
  wire::HelloAck ack;
  answer = overlap.Hello(wire::EncodeHello(MakeHello(wire::ConnRole::kControl, 2, 9)), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(ack.version, 2);
}

// A fake server on a loopback port: answers the first connection's Hello with
// what `answer` returns (given the decoded Hello), then reads until the client
// goes away.
class FakeServer {
 public:
  explicit FakeServer(std::function<std::string(const wire::Hello &)> answer) {
    std::string error;
    EXPECT_TRUE(listener_.Listen(testing::Loopback(0), &error)) << error;
    thread_ = std::thread([this, answer] {
      std::shared_ptr<ByteStream> accepted(listener_.Accept(Deadline::AfterMs(5000)));
      if (!accepted) return;
      RawConnection peer(accepted);
      std::optional<RawMessage> hello = peer.Read();
      if (!hello || !wire::DecodeHello(hello->body, &received_)) return;
      const std::string bytes = answer(received_);
      accepted->Write(bytes.data(), bytes.size(), Deadline::AfterMs(2000));
      while (peer.Read(500)) {
      }
    });
  }
  ~FakeServer() { Join(); }
  int Port() const { return listener_.Port(); }
  // The Hello it received, once the client has gone away.
  const wire::Hello &Received() {
    Join();
    return received_;
  }

 private:
  void Join() {
    listener_.Stop();
    if (thread_.joinable()) thread_.join();
  }
  wire::Hello received_;
  TcpListener listener_;
  std::thread thread_;
};

std::string Message(MsgType type, const std::string &body, uint32_t status = 0) {
  wire::MsgHeader h;
  h.type = TypeOf(type);
  h.status = status;
  h.body_len = body.size();
  return std::string(reinterpret_cast<const char *>(&h), sizeof(h)) + body;
}

std::shared_ptr<ByteStream> OpenControl(int port, wire::HelloAck *ack, adxl::Status *status, std::string *error) {
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 1);  // OpenPeerConnection offers the whole range
  hello.capabilities |= wire::kCapSameHost;
  return OpenPeerConnection(testing::Loopback(port), hello, "", Deadline::AfterMs(3000), ack, status, error);
}

TEST(VersionNegotiation, TheClientRefusesAVersionItDidNotOffer) {
  FakeServer fake([](const wire::Hello &) {
    wire::HelloAck ack;
    ack.capabilities = wire::kCapReverseLanes;
    ack.session_id = 5;
    ack.engine_id = "future";
    ack.version = 9;
    return Message(MsgType::kHelloAck, wire::EncodeHelloAck(ack));
  });
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  EXPECT_EQ(OpenControl(fake.Port(), &ack, &status, &error), nullptr);
  EXPECT_EQ(status, adxl::FAILED);
  EXPECT_NE(error.find("chose protocol version 9, which this engine (1..2) did not offer"), std::string::npos)
      << error;
  EXPECT_EQ(fake.Received().min_version, wire::kMinVersion);
  EXPECT_EQ(fake.Received().max_version, wire::kMaxVersion);
}

TEST(VersionNegotiation, AVersion1ServerIsSpokenToAtVersion1WithoutTheSameHostPath) {
  FakeServer fake([](const wire::Hello &) {
    wire::HelloAck ack;
    ack.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages | wire::kCapSameHost | (1U << 9);
    ack.session_id = 5;
    ack.engine_id = "old";
    ack.boot_id = "boot";
    ack.pid = 4242;
    ack.token_addr = 0x7f0000001000;
    ack.token = std::string(32, 't');
    ack.conn_fd = 9;
    std::string body = wire::EncodeHelloAck(ack);
    body.resize(body.size() - 2);  // version 1 says no version
    return Message(MsgType::kHelloAck, body);
  });
  wire::HelloAck ack;
  adxl::Status status = adxl::FAILED;
  std::string error;
  std::shared_ptr<ByteStream> stream = OpenControl(fake.Port(), &ack, &status, &error);
  ASSERT_NE(stream, nullptr) << error;
  EXPECT_EQ(status, adxl::SUCCESS);
  EXPECT_EQ(stream->ProtocolVersion(), 1);
  EXPECT_EQ(ack.version, 0);  // none said
  // Only what we offered, never an unknown bit; and no same-host path at version 1
  // (its grant and identity are dropped).
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes | wire::kCapAppMessages);
  EXPECT_EQ(ack.pid, 0U);
  stream->Shutdown();
}

TEST(VersionNegotiation, AnEngineReportsFailedForAServerWithoutACommonVersion) {
  // What a version-3-only server answers this engine's Hello.
  FakeServer fake([](const wire::Hello &hello) {
    return Message(MsgType::kError,
                   "no common protocol version: the client speaks " +
                       wire::VersionRange(hello.min_version, hello.max_version) + ", engine X speaks 3",
                   adxl::FAILED);
  });
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  EXPECT_EQ(client.Connect("127.0.0.1:" + std::to_string(fake.Port()), 3000), adxl::FAILED);
  client.Finalize();
}

TEST(VersionNegotiation, TheEnginesHelloSaysWhatItSpeaksAndNoLaneCount) {
  FakeServer fake([](const wire::Hello &) { return Message(MsgType::kError, "enough", adxl::FAILED); });
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.TcpConnections", "3"}}), adxl::SUCCESS);
  const std::string remote = "127.0.0.1:" + std::to_string(fake.Port());
  EXPECT_EQ(client.Connect(remote, 3000), adxl::FAILED);
  client.Finalize();
  EXPECT_EQ(fake.Received().role, wire::ConnRole::kControl);
  EXPECT_EQ(fake.Received().min_version, wire::kMinVersion);
  EXPECT_EQ(fake.Received().max_version, wire::kMaxVersion);
  EXPECT_EQ(fake.Received().lanes, 0U);  // not sent any more (docs/PROTOCOL.md)
  EXPECT_EQ(fake.Received().heartbeat_interval_ms, 1000U);
  EXPECT_EQ(fake.Received().peer_timeout_ms, 10000U);
  EXPECT_EQ(fake.Received().target_engine_id, remote);
  EXPECT_EQ(fake.Received().capabilities & ~wire::kCapSameHost,
            wire::kCapReverseLanes | wire::kCapAppMessages | wire::kCapNotify | wire::kCapWriteHold |
                wire::kCapSourceMappings);
  EXPECT_EQ((fake.Received().capabilities & wire::kCapSameHost) != 0, fake.Received().pid != 0);
}

// ---------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------

TEST(Capabilities, UnknownBitsAreIgnoredAndOnlyOfferedOnesAreGranted) {
  Server server;  // a plain ADXL engine: reverse lanes, no app messages
  RawConnection control(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages | (1U << 31) | (1U << 7);
  wire::HelloAck ack;
  std::optional<RawMessage> answer = control.Hello(wire::EncodeHello(hello), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes);
  RawConnection other(server.port);
  hello.capabilities = 1U << 30;  // offers nothing this engine knows
  answer = other.Hello(wire::EncodeHello(hello), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(ack.capabilities, 0U);
  // Write holds (docs/PROTOCOL.md "Write holds"): granted where offered, so
  // both sides of the session hold their same-host writes.
  RawConnection holding(server.port);
  hello.capabilities = wire::kCapReverseLanes | wire::kCapWriteHold;
  answer = holding.Hello(wire::EncodeHello(hello), &ack);
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes | wire::kCapWriteHold);
}

// ---------------------------------------------------------------------------
// Ignorable messages
// ---------------------------------------------------------------------------

TEST(IgnorableMessages, TheControlConnectionSurvivesAnIgnorableRequestAndNotification) {
  Server server;
  RawConnection control(server.port);
  wire::HelloAck ack;
  ASSERT_TRUE(control.Hello(CurrentHello(MakeHello(wire::ConnRole::kControl, 1, 2)), &ack));
  ASSERT_EQ(ack.version, 2);
  ASSERT_TRUE(control.Send(wire::kFirstIgnorableType + 1, "a later revision's optional request", 77));
  std::optional<RawMessage> answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.version, 2);
  EXPECT_EQ(answer->header.status, adxl::UNSUPPORTED);
  EXPECT_EQ(answer->header.request_id, 77U);
  EXPECT_NE(answer->body.find("message type 32769 is not supported"), std::string::npos) << answer->body;
  // A notification (request id 0) with the largest allowed body: no answer at all.
  ASSERT_TRUE(control.Send(0xFFFF, std::string(wire::kMaxControlBody, 'n'), 0));
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 78));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kPong));
  EXPECT_EQ(answer->header.request_id, 78U);
  // Goodbye still works: the session was never dropped.
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kGoodbye), "", 79));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kGoodbyeAck));
}

// A control connection and one data lane of a version-2 session.
struct Session {
  RawConnection control, lane;
  explicit Session(int port) : control(port), lane(port) {
    wire::HelloAck ack;
    wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
    EXPECT_TRUE(control.Hello(CurrentHello(hello), &ack));
    hello.role = wire::ConnRole::kDataLane;
    hello.session_id = ack.session_id;
    std::optional<RawMessage> answer = lane.Hello(CurrentHello(hello), &ack);
    EXPECT_TRUE(answer && answer->header.type == TypeOf(MsgType::kHelloAck));
    EXPECT_EQ(lane.stream().ProtocolVersion(), 2);
  }
};

TEST(IgnorableMessages, ADataLaneAnswersUnsupportedAndKeepsServing) {
  Server server;
  Session session(server.port);
  RawConnection &lane = session.lane;
  ASSERT_TRUE(lane.Send(wire::kFirstIgnorableType, "x", 3));
  std::optional<RawMessage> answer = lane.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.status, adxl::UNSUPPORTED);
  EXPECT_EQ(answer->header.request_id, 3U);
  ASSERT_TRUE(lane.Send(wire::kFirstIgnorableType + 9, "", 0));  // notification: no answer
  std::vector<char> local(512);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(server.memory.data()),
              local.size()};
  LaneResult r = ExecuteTransfer(lane.stream(), adxl::READ, &seg, 1, 4, Deadline::AfterMs(3000));
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_FALSE(r.broken);
  EXPECT_EQ(0, memcmp(local.data(), server.memory.data(), local.size()));
}

TEST(IgnorableMessages, UnknownTypesOutsideTheRangeAndOversizedOnesStillEndTheLane) {
  Server server;
  {
    Session session(server.port);
    ASSERT_TRUE(session.lane.Send(wire::kFirstIgnorableType - 1, "", 5));
    std::optional<RawMessage> answer = session.lane.Read();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
    EXPECT_EQ(answer->header.status, adxl::PARAM_INVALID);
    EXPECT_NE(answer->body.find("unknown message type 32767"), std::string::npos) << answer->body;
    EXPECT_TRUE(session.lane.Ended());
  }
  {
    Session session(server.port);
    ASSERT_TRUE(session.lane.Send(wire::kFirstIgnorableType, std::string(wire::kMaxControlBody + 1, 'x'), 6));
    std::optional<RawMessage> answer = session.lane.Read();
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
    EXPECT_NE(answer->body.find("exceeds the limit of 4096"), std::string::npos) << answer->body;
    EXPECT_TRUE(session.lane.Ended());
  }
}

// ---------------------------------------------------------------------------
// Notifications (SendNotify): capability kCapNotify, Notify / NotifyAck on the
// control connection, in the ignorable range
// ---------------------------------------------------------------------------

std::string NotifyBody(const std::string &name, const std::string &message) {
  wire::Notify n;
  n.name = name;
  n.message = message;
  return wire::EncodeNotify(n);
}

TEST(Notifications, GrantedToAVersion2ClientThatOffersThemOnly) {
  Server server;
  RawConnection current(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.capabilities |= wire::kCapNotify;
  wire::HelloAck ack;
  ASSERT_TRUE(current.Hello(CurrentHello(hello), &ack));
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes | wire::kCapNotify);
  // Version 1 has no ignorable types: the bit is not granted at version 1.
  RawConnection old(server.port);
  ASSERT_TRUE(old.Hello(Version1Hello(hello), &ack));
  EXPECT_EQ(ack.version, 1);
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes);
  // Not offered: not granted.
  RawConnection silent(server.port);
  ASSERT_TRUE(silent.Hello(CurrentHello(MakeHello(wire::ConnRole::kControl, 1, 2)), &ack));
  EXPECT_EQ(ack.capabilities, wire::kCapReverseLanes);
}

TEST(Notifications, StoredBeforeTheAckAndAMalformedOneKeepsTheSession) {
  Server server;
  RawConnection control(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.capabilities |= wire::kCapNotify;
  ASSERT_TRUE(control.Hello(CurrentHello(hello)));
  const std::string binary("n\0\xff\x01", 4);
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kNotify), NotifyBody(binary, std::string(1024, 'm')), 5));
  std::optional<RawMessage> answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kNotifyAck));
  EXPECT_EQ(answer->header.version, 2);
  EXPECT_EQ(answer->header.status, adxl::SUCCESS);
  EXPECT_EQ(answer->header.request_id, 5U);
  EXPECT_EQ(answer->body, "");
  std::vector<wire::Notify> got;
  ASSERT_EQ(server.engine.GetNotifies(&got), adxl::SUCCESS);  // stored before the ack was sent
  ASSERT_EQ(got.size(), 1U);
  EXPECT_EQ(got[0].name, binary);
  EXPECT_EQ(got[0].message, std::string(1024, 'm'));
  // A field over 1024 bytes (the body is within its bound): PARAM_INVALID, the session stays.
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kNotify), NotifyBody(std::string(1025, 'x'), "") , 6));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kNotifyAck));
  EXPECT_EQ(answer->header.status, adxl::PARAM_INVALID);
  EXPECT_EQ(answer->header.request_id, 6U);
  EXPECT_NE(answer->body.find("malformed Notify"), std::string::npos) << answer->body;
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kNotify), std::string("\x05\x00", 2), 7));  // cut short
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.status, adxl::PARAM_INVALID);
  // Trailing bytes (a later revision's fields) are ignored.
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kNotify), NotifyBody("later", "m") + "more", 8));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.status, adxl::SUCCESS);
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 9));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kPong));
  got.clear();
  ASSERT_EQ(server.engine.GetNotifies(&got), adxl::SUCCESS);
  ASSERT_EQ(got.size(), 1U);
  EXPECT_EQ(got[0].name, "later");
  // A body over the Notify bound is a protocol error: refused before it is read, the session ends.
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kNotify), std::string(wire::kMaxNotifyBody + 1, 'x'), 10));
  answer = control.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_NE(answer->body.find("Notify body of 2057 bytes exceeds the limit of 2056"), std::string::npos)
      << answer->body;
  EXPECT_TRUE(control.Ended());
}

TEST(Notifications, OnADataLaneANotifyIsAProtocolError) {
  Server server;
  Session session(server.port);
  ASSERT_TRUE(session.lane.Send(TypeOf(MsgType::kNotify), NotifyBody("n", "m"), 3));
  std::optional<RawMessage> answer = session.lane.Read();
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_TRUE(session.lane.Ended());
  std::vector<wire::Notify> got;
  ASSERT_EQ(server.engine.GetNotifies(&got), adxl::SUCCESS);
  EXPECT_TRUE(got.empty());
}

// A control session of a raw client that sends notifies one at a time.
struct NotifySender {
  RawConnection control;
  uint64_t next_id = 1;
  explicit NotifySender(int port) : control(port) {
    wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
    hello.capabilities |= wire::kCapNotify;
    wire::HelloAck ack;
    EXPECT_TRUE(control.Hello(CurrentHello(hello), &ack));
    EXPECT_NE(ack.capabilities & wire::kCapNotify, 0U);
  }
  // The NotifyAck's status (UINT32_MAX when none came); its reason in *why.
  uint32_t Send(const std::string &name, const std::string &message, std::string *why = nullptr) {
    const uint64_t id = next_id++;
    if (!control.Send(TypeOf(MsgType::kNotify), NotifyBody(name, message), id)) return UINT32_MAX;
    std::optional<RawMessage> answer = control.Read();
    if (!answer || answer->header.type != TypeOf(MsgType::kNotifyAck) || answer->header.request_id != id)
      return UINT32_MAX;
    if (why != nullptr) *why = answer->body;
    return answer->header.status;
  }
};

TEST(Notifications, TheEnginesByteLimitRefusesAcrossLinksAndAcknowledgedOnesOutliveTheirSession) {
  Server server(std::map<std::string, std::string>{{"llmdd.MaxNotifyBytes", "65536"}});
  const std::string big(1024, 'b');
  const uint64_t cost = 2 * 1024 + 128;  // name + message + the fixed overhead
  const size_t fit = 65536 / cost;        // 30
  {
    NotifySender first(server.port);
    for (size_t k = 0; k < fit; ++k) ASSERT_EQ(first.Send(std::to_string(k) + big.substr(8), big), adxl::SUCCESS);
    std::string why;
    EXPECT_EQ(first.Send("over", big, &why), adxl::RESOURCE_EXHAUSTED);
    EXPECT_NE(why.find("llmdd.MaxNotifyBytes=65536"), std::string::npos) << why;
    // The limit is the engine's: another link is refused too.
    NotifySender second(server.port);
    EXPECT_EQ(second.Send("other", big, &why), adxl::RESOURCE_EXHAUSTED);
    ASSERT_TRUE(first.control.Send(TypeOf(MsgType::kGoodbye), "", 0));
    ASSERT_TRUE(first.control.Read());  // GoodbyeAck: the first session is over
  }
  // What was acknowledged is kept after its sender left, oldest first.
  std::vector<wire::Notify> got(1);
  got[0].name = "kept";
  ASSERT_EQ(server.engine.GetNotifies(&got), adxl::SUCCESS);
  ASSERT_EQ(got.size(), fit + 1);
  EXPECT_EQ(got[0].name, "kept");  // appended: what the caller had stays
  for (size_t k = 0; k < fit; ++k) EXPECT_EQ(got[k + 1].name.substr(0, std::to_string(k).size()), std::to_string(k));
  EXPECT_EQ(server.engine.NotifiesHeld(), 0U);
  NotifySender third(server.port);
  EXPECT_EQ(third.Send("again", big), adxl::SUCCESS);
}

// A version-2 server played by hand: answers Hello with `capabilities`,
// Ping with Pong, Goodbye with GoodbyeAck, and Notify as `on_notify` says.
class ScriptedServer {
 public:
  using OnNotify = std::function<void(RawConnection &, const RawMessage &)>;
  ScriptedServer(uint32_t capabilities, OnNotify on_notify) {
    std::string error;
    EXPECT_TRUE(listener_.Listen(testing::Loopback(0), &error)) << error;
    thread_ = std::thread([this, capabilities, on_notify] {
      std::shared_ptr<ByteStream> accepted(listener_.Accept(Deadline::AfterMs(5000)));
      if (!accepted) return;
      RawConnection peer(accepted);
      std::optional<RawMessage> hello = peer.Read();
      wire::Hello decoded;
      if (!hello || !wire::DecodeHello(hello->body, &decoded)) return;
      wire::HelloAck ack;
      ack.capabilities = capabilities & decoded.capabilities;
      ack.session_id = 77;
      ack.engine_id = "scripted";
      ack.version = 2;
      const std::string bytes = Message(MsgType::kHelloAck, wire::EncodeHelloAck(ack));
      if (accepted->Write(bytes.data(), bytes.size(), Deadline::AfterMs(2000)) != IoStatus::kOk) return;
      accepted->SetProtocolVersion(2);
      while (std::optional<RawMessage> m = peer.Read(5000)) {
        if (m->header.type == TypeOf(MsgType::kPing)) {
          peer.Send(TypeOf(MsgType::kPong), "", m->header.request_id);
        } else if (m->header.type == TypeOf(MsgType::kGoodbye)) {
          peer.Send(TypeOf(MsgType::kGoodbyeAck), "", m->header.request_id);
          break;
        } else if (m->header.type == TypeOf(MsgType::kNotify)) {
          ++notifies_;
          on_notify(peer, *m);
        }
      }
    });
  }
  ~ScriptedServer() {
    listener_.Stop();
    if (thread_.joinable()) thread_.join();
  }
  std::string Id() const { return "127.0.0.1:" + std::to_string(listener_.Port()); }
  int Notifies() const { return notifies_.load(); }

 private:
  TcpListener listener_;
  std::atomic<int> notifies_{0};
  std::thread thread_;
};

int64_t TimedMs(const std::function<void()> &fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
}

TEST(Notifications, AServerThatDoesNotGrantThemIsUnsupportedAtOnceAndNothingIsSent) {
  ScriptedServer old(wire::kCapReverseLanes, [](RawConnection &, const RawMessage &) {});
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(old.Id(), 3000), adxl::SUCCESS);
  adxl::Status status = adxl::FAILED;
  EXPECT_LT(TimedMs([&] { status = client.SendNotify(old.Id(), {"n", "m"}, 5000); }), 1000);
  EXPECT_EQ(status, adxl::UNSUPPORTED);
  EXPECT_EQ(client.Disconnect(old.Id(), 3000), adxl::SUCCESS);
  client.Finalize();
  EXPECT_EQ(old.Notifies(), 0);
}

TEST(Notifications, AnUnsupportedAnswerToTheIgnorableTypeKeepsTheChannel) {
  // What an engine that does not know the type answers (it skips ignorable types).
  ScriptedServer server(wire::kCapReverseLanes | wire::kCapNotify, [](RawConnection &peer, const RawMessage &m) {
    AnswerIgnorable(peer.stream(), m.header, Deadline::AfterMs(2000));
  });
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server.Id(), 3000), adxl::SUCCESS);
  EXPECT_EQ(client.SendNotify(server.Id(), {"n", "m"}, 3000), adxl::UNSUPPORTED);
  EXPECT_EQ(client.SendNotify(server.Id(), {"n2", "m"}, 3000), adxl::UNSUPPORTED);  // the channel lives
  EXPECT_EQ(client.Disconnect(server.Id(), 3000), adxl::SUCCESS);
  client.Finalize();
  EXPECT_EQ(server.Notifies(), 2);
}

TEST(Notifications, TimeoutWithinTheDeadlineThenALateAckIsDroppedAndTheChannelLives) {
  // The first notify is answered 600 ms late, later ones at once.
  ScriptedServer server(wire::kCapReverseLanes | wire::kCapNotify, [](RawConnection &peer, const RawMessage &m) {
    if (m.header.request_id == 1) std::this_thread::sleep_for(std::chrono::milliseconds(600));
    peer.Send(TypeOf(MsgType::kNotifyAck), "", m.header.request_id);
  });
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server.Id(), 3000), adxl::SUCCESS);
  adxl::Status status = adxl::FAILED;
  const int64_t ms = TimedMs([&] { status = client.SendNotify(server.Id(), {"late", "m"}, 200); });
  EXPECT_EQ(status, adxl::TIMEOUT);
  EXPECT_GE(ms, 190);
  EXPECT_LT(ms, 500);
  // The late ack (id 1) arrives while this one waits; only its own counts.
  EXPECT_EQ(client.SendNotify(server.Id(), {"next", "m"}, 3000), adxl::SUCCESS);
  EXPECT_EQ(client.SendNotify(server.Id(), {"third", "m"}, 3000), adxl::SUCCESS);
  EXPECT_EQ(client.Disconnect(server.Id(), 3000), adxl::SUCCESS);
  client.Finalize();
}

TEST(Notifications, TheServersRefusalIsReturnedAndUndocumentedStatusesBecomeFailed) {
  ScriptedServer server(wire::kCapReverseLanes | wire::kCapNotify, [](RawConnection &peer, const RawMessage &m) {
    wire::MsgHeader h;
    h.version = 2;
    h.type = TypeOf(MsgType::kNotifyAck);
    h.status = m.header.request_id == 1 ? adxl::RESOURCE_EXHAUSTED : 4242U;
    h.request_id = m.header.request_id;
    h.body_len = 4;
    std::string bytes(reinterpret_cast<const char *>(&h), sizeof(h));
    bytes += "full";
    peer.stream().Write(bytes.data(), bytes.size(), Deadline::AfterMs(2000));
  });
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server.Id(), 3000), adxl::SUCCESS);
  EXPECT_EQ(client.SendNotify(server.Id(), {"n", "m"}, 3000), adxl::RESOURCE_EXHAUSTED);
  EXPECT_EQ(client.SendNotify(server.Id(), {"n", "m"}, 3000), adxl::FAILED);
  EXPECT_EQ(client.Disconnect(server.Id(), 3000), adxl::SUCCESS);
  client.Finalize();
}

// ---------------------------------------------------------------------------
// Which engine a client reached
// ---------------------------------------------------------------------------

TEST(TargetEngine, TheRuleComparesClusterIdsOnly) {
  std::string why;
  EXPECT_TRUE(TargetIsThisEngine("", "8", &why));
  EXPECT_TRUE(TargetIsThisEngine("8", "8", &why));
  EXPECT_TRUE(TargetIsThisEngine("008", "8", &why));  // the same number
  EXPECT_TRUE(TargetIsThisEngine("10.0.0.5:26000", "8", &why));  // an address reached: an ADXL client
  for (const char *name : {"10.0.0.5:26000", "10.0.0.5", "0.0.0.0:26000", "192.168.7.1:26000", "node-3:26000",
                           "[::1]:26000", "127.0.0.1:9"})
    EXPECT_TRUE(TargetIsThisEngine(name, "10.0.0.5:26000", &why)) << name;
  EXPECT_FALSE(TargetIsThisEngine("7", "8", &why));
  EXPECT_EQ(why, "wrong engine: this is LLM-DataDist cluster 8, the client asked for cluster 7");
  EXPECT_FALSE(TargetIsThisEngine("7", "10.0.0.5:26000", &why));
  EXPECT_EQ(why, "wrong engine: this is ADXL engine 10.0.0.5:26000, not LLM-DataDist cluster 7");
}

TEST(TargetEngine, AClusterThatReachedAnotherClusterIsRefused) {
  const int port = testing::FreeLoopbackPort();
  const Endpoint listen = testing::Loopback(port);
  Engine server;
  ASSERT_EQ(server.Start("8", EngineConfig{}, &listen, Engine::Hooks{}), adxl::SUCCESS);
  RawConnection wrong(port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.engine_id = "5";
  hello.target_engine_id = "7";
  std::optional<RawMessage> answer = wrong.Hello(wire::EncodeHello(hello));
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.status, adxl::FAILED);
  EXPECT_EQ(answer->body, "wrong engine: this is LLM-DataDist cluster 8, the client asked for cluster 7");
  EXPECT_TRUE(wrong.Ended());
  // Through the engine's own client: a link keyed by the wrong cluster fails, the right one connects.
  Engine client;
  ASSERT_EQ(client.Start("5", EngineConfig{}, nullptr, Engine::Hooks{}), adxl::SUCCESS);
  std::string error;
  EXPECT_EQ(client.ConnectKeyed("7", listen, 0, Deadline::AfterMs(3000), &error), adxl::FAILED);
  EXPECT_NE(error.find("wrong engine: this is LLM-DataDist cluster 8"), std::string::npos) << error;
  EXPECT_EQ(client.ConnectKeyed("8", listen, 0, Deadline::AfterMs(3000), &error), adxl::SUCCESS) << error;
  client.Finalize();
  server.Finalize();
}

TEST(TargetEngine, AnAdxlEngineIsReachedByAnyOfItsNames) {
  Server server;
  for (const std::string &target : {server.Id(), std::string("localhost:") + std::to_string(server.port),
                                    std::string("0.0.0.0:") + std::to_string(server.port), std::string("10.1.2.3:9"),
                                    std::string("[::1]:") + std::to_string(server.port), std::string("127.0.0.1"),
                                    std::string()}) {
    RawConnection control(server.port);
    wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
    hello.target_engine_id = target;
    std::optional<RawMessage> answer = control.Hello(wire::EncodeHello(hello));
    ASSERT_TRUE(answer);
    EXPECT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << target << ": " << answer->body;
  }
  RawConnection cluster(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.target_engine_id = "7";
  std::optional<RawMessage> answer = cluster.Hello(wire::EncodeHello(hello));
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kError));
  EXPECT_EQ(answer->header.status, adxl::FAILED);
  EXPECT_EQ(answer->body, "wrong engine: this is ADXL engine " + server.Id() + ", not LLM-DataDist cluster 7");
}

TEST(TargetEngine, AServerListeningOnTheWildcardAddressIsReachedThroughLoopback) {
  const int port = testing::FreeLoopbackPort();
  Engine server, client;
  ASSERT_EQ(server.Initialize("0.0.0.0:" + std::to_string(port), {}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  EXPECT_EQ(client.Connect("127.0.0.1:" + std::to_string(port), 3000), adxl::SUCCESS);
  client.Finalize();
  server.Finalize();
}

// ---------------------------------------------------------------------------
// Heartbeats: the server uses the client's interval
// ---------------------------------------------------------------------------

TEST(SessionSilence, TheClientsIntervalAndTimeoutBoundWhatTheServerWaits) {
  EngineConfig config;  // peer timeout 10 s, max serve wait 60 s
  EXPECT_EQ(config.SessionSilenceMs(10000, 1000), 11000u);  // defaults on both sides
  // A client pinging every 5 s that waits up to 10 s for a Pong may be silent
  // for 15 s while alive (the previous rule, max of the timeouts, said 10 s).
  EXPECT_EQ(config.SessionSilenceMs(10000, 5000), 15000u);
  EXPECT_EQ(config.SessionSilenceMs(100, 50), 10000u);  // never less than our own timeout
  EXPECT_EQ(config.SessionSilenceMs(UINT32_MAX, UINT32_MAX), 60000u);  // nor more than our ceiling
  EXPECT_EQ(config.SessionSilenceMs(50000, 20000), 60000u);
}

TEST(SessionSilence, ASilentClientIsKeptForItsIntervalPlusTimeoutThenDropped) {
  Server server({{"llmdd.HeartbeatIntervalMs", "100"}, {"llmdd.PeerTimeoutMs", "300"}});
  RawConnection control(server.port);
  wire::Hello hello = MakeHello(wire::ConnRole::kControl, 1, 2);
  hello.heartbeat_interval_ms = 1500;
  hello.peer_timeout_ms = 300;  // silence allowed: max(300, 1500 + 300) = 1800 ms
  ASSERT_TRUE(control.Hello(wire::EncodeHello(hello)));
  std::this_thread::sleep_for(std::chrono::milliseconds(900));  // past both timeouts, within the promise
  ASSERT_TRUE(control.Send(TypeOf(MsgType::kPing), "", 1));
  std::optional<RawMessage> answer = control.Read();
  ASSERT_TRUE(answer) << "the session was dropped before the client's promised interval had passed";
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kPong));
  std::this_thread::sleep_for(std::chrono::milliseconds(2600));
  control.Send(TypeOf(MsgType::kPing), "", 2);
  EXPECT_FALSE(control.Read(1000)) << "a client silent for longer than it promised is dropped";
}

}  // namespace
}  // namespace llmdd

namespace llmdd {
namespace {

// Records what is written and the stream's protocol version at that moment.
class RecordingStream final : public ByteStream {
 public:
  IoStatus ReadFull(const iovec *, int, Deadline) override { return IoStatus::kClosed; }
  IoStatus WriteFull(const iovec *iov, int iovcnt, Deadline) override {
    version_when_written = ProtocolVersion();
    for (int i = 0; i < iovcnt; ++i) written.append(static_cast<const char *>(iov[i].iov_base), iov[i].iov_len);
    return IoStatus::kOk;
  }
  IoStatus ReadAvailable(void *, size_t, size_t *got) override {
    *got = 0;
    return IoStatus::kClosed;
  }
  void Shutdown() override {}
  void Close() override {}
  std::string PeerName() const override { return "recording"; }
  int LastErrno() const override { return 0; }
  std::string written;
  uint16_t version_when_written = 0;
};

TEST(VersionNegotiation, TheConnectionCarriesTheVersionBeforeItsHelloAckGoesOut) {
  // A lane published before its HelloAck (reverse lanes) must never send a
  // request with the handshake's version: the version is set first, while the
  // HelloAck itself keeps the handshake's.
  RecordingStream stream;
  wire::Hello hello;
  hello.min_version = 1;
  hello.max_version = 2;
  wire::HelloAck ack;
  ack.engine_id = "s";
  ASSERT_TRUE(SendHelloAck(stream, hello, ack, Deadline::AfterMs(1000)));
  EXPECT_EQ(stream.version_when_written, 2);
  EXPECT_EQ(stream.ProtocolVersion(), 2);
  ASSERT_GE(stream.written.size(), sizeof(wire::MsgHeader));
  wire::MsgHeader header;
  memcpy(&header, stream.written.data(), sizeof(header));
  EXPECT_EQ(header.type, TypeOf(MsgType::kHelloAck));
  EXPECT_EQ(header.version, wire::kHandshakeVersion);
  wire::HelloAck sent;
  ASSERT_TRUE(wire::DecodeHelloAck(stream.written.substr(sizeof(header)), &sent));
  EXPECT_EQ(sent.version, 2);
}


// ---------------------------------------------------------------------------
// A server that finalizes says goodbye: its clients log an orderly end
// ---------------------------------------------------------------------------

TEST(ServerGoodbye, AFinalizingServerSendsGoodbyeOnEveryControlConnection) {
  auto server = std::make_unique<Server>();
  RawConnection control(server->port);
  std::optional<RawMessage> answer = control.Hello(CurrentHello(MakeHello(wire::ConnRole::kControl, 1, 1)));
  ASSERT_TRUE(answer);
  ASSERT_EQ(answer->header.type, TypeOf(MsgType::kHelloAck)) << answer->body;
  server->engine.Finalize();
  answer = control.Read();
  ASSERT_TRUE(answer) << "no message before the connection closed";
  EXPECT_EQ(answer->header.type, TypeOf(MsgType::kGoodbye));
  EXPECT_EQ(answer->header.version, 2);
  EXPECT_TRUE(answer->body.empty());
  EXPECT_TRUE(control.Ended());
}

TEST(ServerGoodbye, AClientWhoseServerFinalizesLogsNothingAtTheDefaultLevelAndItsTransfersFail) {
  const LogLevel saved = CurrentLogLevel();
  SetLogLevel(LogLevel::kWarn);
  auto server = std::make_unique<Server>();
  Engine client;
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server->Id(), 2000), adxl::SUCCESS);
  std::vector<char> local(64);
  const adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()),
                                  reinterpret_cast<uintptr_t>(server->memory.data()), local.size()};
  ASSERT_EQ(client.TransferSync(server->Id(), adxl::READ, &desc, 1, 2000), adxl::SUCCESS);
  EXPECT_EQ(local[1], server->memory[1]);
  const std::string id = server->Id();

  fflush(stderr);
  ::testing::internal::CaptureStderr();
  server.reset();  // Finalize: the client is told, it does not find out from a closed socket
  // The client has taken it in once the control connection's handler ran; give
  // it time (nothing here waits for a heartbeat).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  fflush(stderr);
  const std::string logged = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(logged, "") << "a server that finalizes is not an error on its clients";

  // Transfers fail fast, naming why (this one is logged: a failed call is an error).
  ::testing::internal::CaptureStderr();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(client.TransferSync(id, adxl::READ, &desc, 1, 2000), adxl::FAILED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
  fflush(stderr);
  const std::string failure = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(failure.find("the peer finalized its engine"), std::string::npos) << failure;
  EXPECT_EQ(client.Disconnect(id, 1000), adxl::SUCCESS);
  client.Finalize();
  SetLogLevel(saved);
}

}  // namespace
}  // namespace llmdd
