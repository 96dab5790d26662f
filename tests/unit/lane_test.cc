// Lane protocol: a requester and a serving loop over a socketpair. Checks the
// bytes that arrive, the exact statuses, that refused requests touch nothing
// and keep the lane usable, and that hostile messages close the lane.
#include "engine/lane.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

class LaneTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    requester_ = std::make_shared<TcpStream>(fds[0], "requester");
    server_ = std::make_shared<TcpStream>(fds[1], "server");
    remote_.resize(1 << 16);
    for (size_t i = 0; i < remote_.size(); ++i) remote_[i] = static_cast<char>(i * 13 + 1);
    registry_.Add(reinterpret_cast<uintptr_t>(remote_.data()), remote_.size(), 1);
  }
  void StartServing(const AppHandler *handler = nullptr) {
    serving_ = std::thread([this, handler] {
      ServeContext ctx;
      ctx.registry = &registry_;
      ctx.app_handler = handler;
      ctx.peer = "test-peer";
      ServeLane(*server_, ctx);
      served_done_ = true;
    });
  }
  void TearDown() override {
    server_->Shutdown();
    requester_->Shutdown();
    if (serving_.joinable()) serving_.join();
  }
  uintptr_t R(size_t off) { return reinterpret_cast<uintptr_t>(remote_.data()) + off; }

  std::shared_ptr<TcpStream> requester_, server_;
  MemoryRegistry registry_;
  std::vector<char> remote_;
  std::thread serving_;
  std::atomic<bool> served_done_{false};
};

// A ReadResponse refusing `req` (PARAM_INVALID) with `text`, followed by
// `payload` zero bytes of data (which a refusal must not carry).
std::string ReadRefusal(const wire::MsgHeader &req, const std::string &text, size_t payload = 0) {
  wire::MsgHeader resp;
  resp.type = static_cast<uint16_t>(wire::MsgType::kReadResponse);
  resp.request_id = req.request_id;
  resp.status = adxl::PARAM_INVALID;
  resp.body_len = text.size();
  resp.payload_len = payload;
  return std::string(reinterpret_cast<const char *>(&resp), sizeof(resp)) + text + std::string(payload, '\0');
}

// A scripted serving peer: reads one request (header and body) and sends back
// the bytes `answer` returns for it. client() is the requester's end.
class FakeServer {
 public:
  explicit FakeServer(std::function<std::string(const wire::MsgHeader &request)> answer) {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) abort();
    client_ = std::make_unique<TcpStream>(fds[0], "client");
    server_ = std::make_unique<TcpStream>(fds[1], "fake-server");
    thread_ = std::thread([this, answer] {
      wire::MsgHeader req;
      if (server_->Read(&req, sizeof(req), Deadline::AfterMs(2000)) != IoStatus::kOk) return;
      std::string body(req.body_len, '\0');
      if (server_->Read(body.data(), body.size(), Deadline::AfterMs(2000)) != IoStatus::kOk) return;
      const std::string reply = answer(req);
      server_->Write(reply.data(), reply.size(), Deadline::AfterMs(2000));
    });
  }
  ~FakeServer() {
    client_->Shutdown();
    server_->Shutdown();
    thread_.join();
  }
  TcpStream &client() { return *client_; }

 private:
  std::unique_ptr<TcpStream> client_, server_;
  std::thread thread_;
};

TEST_F(LaneTest, ReadDeliversExactBytesIntoScatteredDestinations) {
  StartServing();
  std::vector<char> local(3000, 0);
  Segment segs[3] = {{reinterpret_cast<uintptr_t>(local.data()), R(100), 1000},
                     {reinterpret_cast<uintptr_t>(local.data() + 1000), R(50000), 7},
                     {reinterpret_cast<uintptr_t>(local.data() + 1007), R(0), 1993}};
  LaneResult r = ExecuteTransfer(*requester_, adxl::READ, segs, 3, 1, Deadline::AfterMs(5000));
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_FALSE(r.broken);
  EXPECT_EQ(memcmp(local.data(), remote_.data() + 100, 1000), 0);
  EXPECT_EQ(memcmp(local.data() + 1000, remote_.data() + 50000, 7), 0);
  EXPECT_EQ(memcmp(local.data() + 1007, remote_.data(), 1993), 0);
}

TEST_F(LaneTest, WriteLandsInRegisteredMemory) {
  StartServing();
  std::vector<char> local(4096);
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(255 - i);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(60000), 4096};
  LaneResult r = ExecuteTransfer(*requester_, adxl::WRITE, &seg, 1, 2, Deadline::AfterMs(5000));
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_EQ(memcmp(remote_.data() + 60000, local.data(), 4096), 0);
}

TEST_F(LaneTest, UnregisteredRangesAreRefusedWithoutTouchingAnythingAndLaneStaysUsable) {
  StartServing();
  std::vector<char> before = remote_;
  std::vector<char> local(128, 'L');
  // Read crossing the end of the registration.
  Segment read_bad{reinterpret_cast<uintptr_t>(local.data()), R(remote_.size() - 64), 128};
  LaneResult r = ExecuteTransfer(*requester_, adxl::READ, &read_bad, 1, 3, Deadline::AfterMs(5000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_FALSE(r.broken);
  EXPECT_NE(r.error.find("not inside memory registered"), std::string::npos) << r.error;
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(128, 'L'));
  // Write where one of two ranges is outside: nothing at all is written.
  Segment write_bad[2] = {{reinterpret_cast<uintptr_t>(local.data()), R(0), 64},
                          {reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(&before[0]), 64}};
  r = ExecuteTransfer(*requester_, adxl::WRITE, write_bad, 2, 4, Deadline::AfterMs(5000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_EQ(remote_, before);
  // The same lane still works.
  Segment ok{reinterpret_cast<uintptr_t>(local.data()), R(10), 128};
  r = ExecuteTransfer(*requester_, adxl::READ, &ok, 1, 5, Deadline::AfterMs(5000));
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_EQ(memcmp(local.data(), remote_.data() + 10, 128), 0);
}

TEST_F(LaneTest, DeregisteredMemoryIsRefused) {
  MemoryRegistry only;
  StartServing();
  registry_.Clear();
  std::vector<char> local(16);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 16};
  LaneResult r = ExecuteTransfer(*requester_, adxl::READ, &seg, 1, 6, Deadline::AfterMs(5000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
}

TEST_F(LaneTest, SilentPeerTimesOutWithinTheDeadline) {
  // No serving thread: nobody answers.
  std::vector<char> local(16);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 16};
  auto start = std::chrono::steady_clock::now();
  LaneResult r = ExecuteTransfer(*requester_, adxl::READ, &seg, 1, 7, Deadline::AfterMs(300));
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.status, adxl::TIMEOUT);
  EXPECT_TRUE(r.broken);
  EXPECT_GE(ms, 250);
  EXPECT_LT(ms, 1500);
}

TEST_F(LaneTest, UnknownMessageTypeGetsAnErrorAndTheLaneCloses) {
  StartServing();
  wire::MsgHeader h;
  h.type = 999;
  ASSERT_EQ(requester_->Write(&h, sizeof(h), Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
  std::string text(reply.body_len, '\0');
  ASSERT_EQ(requester_->Read(text.data(), text.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_NE(text.find("unknown message type 999"), std::string::npos);
  char byte;
  EXPECT_EQ(requester_->Read(&byte, 1, Deadline::AfterMs(2000)), IoStatus::kClosed);
}

TEST_F(LaneTest, HugeBodyLengthIsRefusedWithoutAllocating) {
  StartServing();
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  h.body_len = 4ULL << 30;
  ASSERT_EQ(requester_->Write(&h, sizeof(h), Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
  EXPECT_EQ(reply.status, adxl::PARAM_INVALID);
}

TEST_F(LaneTest, RangeCountNotMatchingBodyClosesTheLane) {
  StartServing();
  uint8_t body[wire::kRangeBodyHeader + wire::kRangeEntrySize];
  wire::EncodeRangeHeader(5, 1000, 10, body);  // claims 5 ranges, carries 1
  uint64_t entry[2] = {R(0), 10};
  memcpy(body + wire::kRangeBodyHeader, entry, sizeof(entry));
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  h.body_len = sizeof(body);
  iovec out[2] = {{&h, sizeof(h)}, {body, sizeof(body)}};
  ASSERT_EQ(requester_->WriteFull(out, 2, Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
}

TEST_F(LaneTest, AppCallsReachTheHandlerOrGetUnsupported) {
  AppHandler handler = [](const std::string &peer, uint64_t session, const std::string &request,
                          std::string *response) -> adxl::Status {
    uint32_t type = 0;
    memcpy(&type, request.data(), 4);
    *response = peer + "/" + std::to_string(type) + "/" + request.substr(4);
    return type == 7 ? adxl::SUCCESS : adxl::PARAM_INVALID;
  };
  StartServing(&handler);
  std::string response;
  LaneResult r = ExecuteAppCall(*requester_, 7, "hello", 9, Deadline::AfterMs(2000), &response);
  EXPECT_EQ(r.status, adxl::SUCCESS);
  EXPECT_EQ(response, "test-peer/7/hello");
  r = ExecuteAppCall(*requester_, 8, "x", 10, Deadline::AfterMs(2000), &response);
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
}

TEST_F(LaneTest, AppCallWithoutHandlerIsUnsupportedAndItsBodyIsNotRead) {
  StartServing(nullptr);
  std::string response;
  LaneResult r = ExecuteAppCall(*requester_, 1, "x", 11, Deadline::AfterMs(2000), &response);
  EXPECT_EQ(r.status, adxl::UNSUPPORTED);
  EXPECT_TRUE(r.broken);  // refused before the body: the lane closes
  EXPECT_NE(r.error.find("not served"), std::string::npos) << r.error;
}

TEST_F(LaneTest, MalformedRequestReasonReachesTheRequester) {
  // A serving side that cannot parse a request answers with an Error naming
  // the cause; the requester must report that text, not "another request".
  StartServing();
  std::vector<char> local(16);
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 16};
  // Same-host flag on a lane that was never verified for it.
  uint8_t body[wire::kRangeBodyHeader + wire::kSameHostRemainingSize + wire::kSameHostEntrySize] = {};
  wire::EncodeRangeHeader(1, 1000, 16, body);
  uint64_t entry[3] = {R(0), 16, reinterpret_cast<uintptr_t>(local.data())};
  memcpy(body + wire::kRangeBodyHeader + wire::kSameHostRemainingSize, entry, sizeof(entry));
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  h.flags = wire::kFlagSameHost;
  h.request_id = 41;
  h.body_len = sizeof(body);
  iovec out[2] = {{&h, sizeof(h)}, {body, sizeof(body)}};
  ASSERT_EQ(requester_->WriteFull(out, 2, Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
  EXPECT_EQ(reply.request_id, 41U);  // the error names the request it answers
  // And a requester reading an Error with request id 0 keeps the reason.
  FakeServer fake([](const wire::MsgHeader &) {
    std::string text = "lane framing broken: because";
    wire::MsgHeader err;
    err.type = static_cast<uint16_t>(wire::MsgType::kError);
    err.status = adxl::PARAM_INVALID;
    err.body_len = text.size();
    return std::string(reinterpret_cast<const char *>(&err), sizeof(err)) + text;
  });
  LaneResult r = ExecuteTransfer(fake.client(), adxl::READ, &seg, 1, 77, Deadline::AfterMs(3000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_TRUE(r.broken);
  EXPECT_NE(r.error.find("lane framing broken: because"), std::string::npos) << r.error;
}

TEST_F(LaneTest, RefusalCarryingAPayloadMarksTheLaneBroken) {
  FakeServer fake([](const wire::MsgHeader &req) { return ReadRefusal(req, "", 16); });
  std::vector<char> local(16, 'L');
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 16};
  LaneResult r = ExecuteTransfer(fake.client(), adxl::READ, &seg, 1, 78, Deadline::AfterMs(3000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_TRUE(r.broken);
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(16, 'L'));
}

// A READ of at most 4 KiB takes its answer's header and what came with it in
// one read (ReadAhead): the payload's first bytes come from there, the rest
// from the stream, into scattered destinations, exactly.
TEST_F(LaneTest, ASmallReadWhosePayloadComesInPiecesLandsExactly) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream client(fds[0], "client");
  TcpStream server(fds[1], "fake-server");
  std::string payload(3000, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7 + 3);
  std::thread fake([&] {
    wire::MsgHeader req;
    ASSERT_EQ(server.Read(&req, sizeof(req), Deadline::AfterMs(2000)), IoStatus::kOk);
    std::string body(req.body_len, '\0');
    ASSERT_EQ(server.Read(body.data(), body.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
    wire::MsgHeader resp;
    resp.type = static_cast<uint16_t>(wire::MsgType::kReadResponse);
    resp.request_id = req.request_id;
    resp.payload_len = payload.size();
    // The header with 5 payload bytes, then the rest after a pause.
    const std::string first = std::string(reinterpret_cast<const char *>(&resp), sizeof(resp)) + payload.substr(0, 5);
    ASSERT_EQ(server.Write(first.data(), first.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(server.Write(payload.data() + 5, payload.size() - 5, Deadline::AfterMs(2000)), IoStatus::kOk);
  });
  std::vector<char> local(3000, 'L');
  // 2 bytes, 0 bytes, then the rest: the 5 read ahead span the first two destinations.
  Segment segs[3] = {{reinterpret_cast<uintptr_t>(local.data()), R(0), 2},
                     {reinterpret_cast<uintptr_t>(local.data() + 2), R(2), 0},
                     {reinterpret_cast<uintptr_t>(local.data() + 2), R(2), 2998}};
  LaneResult r = ExecuteTransfer(client, adxl::READ, segs, 3, 9, Deadline::AfterMs(5000));
  fake.join();
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  EXPECT_FALSE(r.broken);
  EXPECT_EQ(std::string(local.begin(), local.end()), payload);
}

// A refusal of a small READ whose text is longer than the READ (and than what
// is read ahead): the text arrives whole, the destination is untouched and
// the lane stays in step for the next request.
TEST_F(LaneTest, ALongRefusalOfASmallReadArrivesWholeAndTheLaneStaysInStep) {
  const std::string text = std::string(480, 'x') + "<end of the reason>";  // within wire::kMaxErrorText
  FakeServer fake([&text](const wire::MsgHeader &req) { return ReadRefusal(req, text); });
  std::vector<char> local(8, 'L');
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 8};
  LaneResult r = ExecuteTransfer(fake.client(), adxl::READ, &seg, 1, 79, Deadline::AfterMs(3000));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_FALSE(r.broken);
  EXPECT_NE(r.error.find(text), std::string::npos) << r.error.size();
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(8, 'L'));
  // Nothing of the answer is left on the stream: the next read finds nothing.
  char byte;
  size_t got = 1;
  EXPECT_EQ(fake.client().ReadAvailable(&byte, 1, &got), IoStatus::kOk);
  EXPECT_EQ(got, 0u);
}

// The serving side reads a requester's next message as it comes (StartSoon)
// right after answering the last: a bad header that arrives that way (here in
// the same write as a good request) is refused as one read from the event set.
TEST_F(LaneTest, ABadHeaderRightBehindAGoodRequestClosesTheLane) {
  StartServing();
  std::vector<char> local(64, 'L');
  uint8_t body[wire::kRangeBodyHeader + wire::kRangeEntrySize] = {};
  wire::EncodeRangeHeader(1, 1000, 64, body);
  wire::PutU64(body + wire::kRangeBodyHeader, R(0));
  wire::PutU64(body + wire::kRangeBodyHeader + 8, 64);
  wire::MsgHeader good;
  good.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  good.request_id = 51;
  good.body_len = sizeof(body);
  wire::MsgHeader bad = good;
  bad.magic = 0x12345678;
  bad.request_id = 52;
  iovec out[3] = {{&good, sizeof(good)}, {body, sizeof(body)}, {&bad, sizeof(bad)}};
  ASSERT_EQ(requester_->WriteFull(out, 3, Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kReadResponse));
  EXPECT_EQ(reply.request_id, 51u);
  ASSERT_EQ(reply.payload_len, 64u);
  ASSERT_EQ(requester_->Read(local.data(), 64, Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(memcmp(local.data(), remote_.data(), 64), 0);
  // Then the refusal of the bad header, and the end of the lane.
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
  std::string reason(reply.body_len, '\0');
  ASSERT_EQ(requester_->Read(reason.data(), reason.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
  char byte;
  EXPECT_EQ(requester_->Read(&byte, 1, Deadline::AfterMs(2000)), IoStatus::kClosed) << reason;
}

// A wake serves at most LaneServer::kMaxRequestsPerWake requests, then gives
// the thread back. Nothing of the next message may have been taken from the
// socket then: a message that is all header (here an empty application
// request), read and left unserved, would never wake the event set again.
TEST_F(LaneTest, AHeaderOnlyMessageAfterAFullWakeIsStillServed) {
  AppHandler handler = [](const std::string &, uint64_t, const std::string &request, std::string *response) {
    *response = "empty:" + std::to_string(request.size());
    return adxl::SUCCESS;
  };
  // Everything is in the socket before the server wakes: 64 READs of 8 B,
  // then the application request with no body.
  const int reads = LaneServer::kMaxRequestsPerWake;
  uint8_t body[wire::kRangeBodyHeader + wire::kRangeEntrySize] = {};
  wire::EncodeRangeHeader(1, 2000, 8, body);
  wire::PutU64(body + wire::kRangeBodyHeader, R(16));
  wire::PutU64(body + wire::kRangeBodyHeader + 8, 8);
  std::vector<wire::MsgHeader> headers(reads + 1);
  std::vector<iovec> out;
  for (int i = 0; i < reads; ++i) {
    headers[i].type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
    headers[i].request_id = 100 + i;
    headers[i].body_len = sizeof(body);
    out.push_back({&headers[i], sizeof(headers[i])});
    out.push_back({body, sizeof(body)});
  }
  headers[reads].type = static_cast<uint16_t>(wire::MsgType::kAppRequest);
  headers[reads].flags = 3;
  headers[reads].request_id = 999;
  out.push_back({&headers[reads], sizeof(headers[reads])});
  ASSERT_EQ(requester_->WriteFull(out.data(), static_cast<int>(out.size()), Deadline::AfterMs(2000)), IoStatus::kOk);
  StartServing(&handler);
  for (int i = 0; i < reads; ++i) {
    wire::MsgHeader reply;
    ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(3000)), IoStatus::kOk) << i;
    ASSERT_EQ(reply.request_id, static_cast<uint64_t>(100 + i));
    ASSERT_EQ(reply.payload_len, 8u);
    char got[8];
    ASSERT_EQ(requester_->Read(got, 8, Deadline::AfterMs(3000)), IoStatus::kOk);
    EXPECT_EQ(memcmp(got, remote_.data() + 16, 8), 0);
  }
  wire::MsgHeader reply;
  ASSERT_EQ(requester_->Read(&reply, sizeof(reply), Deadline::AfterMs(3000)), IoStatus::kOk)
      << "the application request that followed a full wake was never served";
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kAppResponse));
  EXPECT_EQ(reply.request_id, 999u);
  std::string text(reply.body_len, '\0');
  ASSERT_EQ(requester_->Read(text.data(), text.size(), Deadline::AfterMs(3000)), IoStatus::kOk);
  EXPECT_EQ(text, "empty:4");  // the handler sees the 4-byte type before the (empty) request
}

// The other way round: a refusal shorter than the READ. Reading ahead asks
// for up to the READ's size past the header; it must take the short answer
// as it is (not wait for bytes that never come) and leave the lane in step.
TEST_F(LaneTest, AShortRefusalOfAReadIsTakenAsItIs) {
  FakeServer fake([](const wire::MsgHeader &req) { return ReadRefusal(req, "no"); });
  std::vector<char> local(4096, 'L');
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), R(0), 4096};
  const auto start = std::chrono::steady_clock::now();
  LaneResult r = ExecuteTransfer(fake.client(), adxl::READ, &seg, 1, 80, Deadline::AfterMs(3000));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_FALSE(r.broken);
  EXPECT_NE(r.error.find("refused: no"), std::string::npos) << r.error;
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(4096, 'L'));
}

}  // namespace
}  // namespace llmdd
