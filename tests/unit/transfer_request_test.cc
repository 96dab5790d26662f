// Transfer requests (engine/transfer_request.h, Engine::SubmitTransfer): ids,
// completion, waits with the caller's own deadline, Cancel, the in-flight cap
// and Finalize, through real engines on loopback. A stalled peer is a TCP
// proxy between the two engines that stops forwarding, in both directions, on
// the connections that are open when it freezes (connections opened later
// are forwarded): what a frozen process looks like from the other side.
#include "engine/transfer_request.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "loopback_util.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

// Forwards 127.0.0.1:Port() to 127.0.0.1:target.
class FreezableProxy {
 public:
  explicit FreezableProxy(int target_port) : target_port_(target_port) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr *>(&addr), len) != 0 ||
        listen(listen_fd_, 64) != 0 || getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&addr), &len) != 0)
      abort();
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~FreezableProxy() {
    stop_ = true;
    acceptor_.join();
    std::lock_guard lock(mutex_);
    for (auto &pair : pairs_) {
      pair->pump.join();
      close(pair->client_fd);
      close(pair->server_fd);
    }
    close(listen_fd_);
  }
  int Port() const { return port_; }
  int Accepted() const { return accepted_.load(); }
  // Stops forwarding on every connection open now.
  void FreezeOpen() {
    std::lock_guard lock(mutex_);
    for (auto &pair : pairs_) pair->frozen = true;
  }
  void Thaw() {
    std::lock_guard lock(mutex_);
    for (auto &pair : pairs_) pair->frozen = false;
  }
  // Ends every connection open now and closes every later one at once, as
  // when the peer process dies (a later reconnect finds nobody to answer).
  void Die() {
    dead_ = true;
    std::lock_guard lock(mutex_);
    for (auto &pair : pairs_) {
      shutdown(pair->client_fd, SHUT_RDWR);
      shutdown(pair->server_fd, SHUT_RDWR);
    }
  }

 private:
  struct Pair {
    int client_fd = -1;
    int server_fd = -1;
    std::atomic<bool> frozen{false};
    std::thread pump;
  };

  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      const int client = accept(listen_fd_, nullptr, nullptr);
      if (client < 0) continue;
      if (dead_) {
        close(client);
        continue;
      }
      const int server = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(static_cast<uint16_t>(target_port_));
      if (server < 0 || connect(server, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
        close(client);
        if (server >= 0) close(server);
        continue;
      }
      // A receiver that stopped reading for this long ends the connection
      // (so the proxy's threads always end).
      timeval patience{10, 0};
      setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &patience, sizeof(patience));
      setsockopt(server, SOL_SOCKET, SO_SNDTIMEO, &patience, sizeof(patience));
      auto pair = std::make_unique<Pair>();
      pair->client_fd = client;
      pair->server_fd = server;
      Pair *raw = pair.get();
      // Counted before the pump starts: once it forwards, the client may finish
      // a transfer through this connection and read the count.
      ++accepted_;
      std::lock_guard lock(mutex_);
      pair->pump = std::thread([this, raw] { Pump(raw); });
      pairs_.push_back(std::move(pair));
    }
  }

  void Pump(Pair *pair) {
    std::vector<char> buffer(256 << 10);
    while (!stop_) {
      if (pair->frozen) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      pollfd fds[2] = {{pair->client_fd, POLLIN, 0}, {pair->server_fd, POLLIN, 0}};
      if (poll(fds, 2, 20) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (fds[i].revents == 0) continue;
        const int from = fds[i].fd, to = i == 0 ? pair->server_fd : pair->client_fd;
        const ssize_t got = read(from, buffer.data(), buffer.size());
        bool ok = got > 0;
        for (ssize_t sent = 0; ok && sent < got;) {
          const ssize_t n = send(to, buffer.data() + sent, got - sent, MSG_NOSIGNAL);
          ok = n > 0;
          sent += n > 0 ? n : 0;
        }
        if (!ok) {  // one end is gone: so is the other
          shutdown(pair->client_fd, SHUT_RDWR);
          shutdown(pair->server_fd, SHUT_RDWR);
          return;
        }
      }
    }
  }

  const int target_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> dead_{false};
  std::atomic<int> accepted_{0};
  std::thread acceptor_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Pair>> pairs_;
};

constexpr size_t kRemoteBytes = 8 << 20;

// A serving engine with 8 MiB of registered, patterned memory and a client
// engine connected to it (through a FreezableProxy unless direct), keyed by
// the server's id.
class RequestTest : public ::testing::Test {
 protected:
  void Start(std::map<std::string, std::string> client_options, bool direct = false,
             const std::string &transport = "tcp") {
    client_options.emplace("llmdd.Transport", transport);
    client_options.emplace("llmdd.PeerTimeoutMs", "60000");  // a frozen test peer is not declared dead
    const int port = llmdd::testing::FreeLoopbackPort();
    ASSERT_GT(port, 0);
    server_id_ = "127.0.0.1:" + std::to_string(port);
    ASSERT_EQ(server_.Initialize(server_id_, {{"llmdd.Transport", transport}}), adxl::SUCCESS);
    remote_.resize(kRemoteBytes);
    for (size_t i = 0; i < remote_.size(); ++i) remote_[i] = static_cast<char>(i * 7 + i / 4093);
    uint64_t handle = 0;
    ASSERT_EQ(server_.RegisterMem(R(0), remote_.size(), adxl::MEM_HOST, &handle), adxl::SUCCESS);
    ASSERT_EQ(client_.Initialize("127.0.0.1", client_options), adxl::SUCCESS);
    local_.assign(kRemoteBytes, 0);
    if (!direct) proxy_ = std::make_unique<FreezableProxy>(port);
    std::string error;
    ASSERT_EQ(client_.ConnectKeyed(server_id_, llmdd::testing::Loopback(direct ? port : proxy_->Port()), 0,
                                   Deadline::AfterMs(5000), &error),
              adxl::SUCCESS)
        << error;
  }
  void TearDown() override {
    if (proxy_) proxy_->Thaw();
    client_.Finalize();
    server_.Finalize();
    proxy_.reset();
  }
  uintptr_t R(size_t off) { return reinterpret_cast<uintptr_t>(remote_.data()) + off; }
  uintptr_t L(size_t off) { return reinterpret_cast<uintptr_t>(local_.data()) + off; }
  std::vector<Segment> Read(size_t off, size_t len) { return {{L(off), R(off), len}}; }
  bool Arrived(size_t off, size_t len) { return memcmp(local_.data() + off, remote_.data() + off, len) == 0; }
  std::shared_ptr<TransferRequest> Submit(adxl::TransferOp op, std::vector<Segment> segs, int64_t timeout_ms,
                                          adxl::Status expect = adxl::SUCCESS) {
    std::shared_ptr<TransferRequest> request;
    std::string error;
    EXPECT_EQ(client_.SubmitTransfer(server_id_, op, std::move(segs), Deadline::AfterMs(timeout_ms), &request,
                                     &error),
              expect)
        << error;
    EXPECT_EQ(request != nullptr, expect == adxl::SUCCESS);
    return request;
  }
  // Opens the client's first lane (and proves the route works) before a test
  // freezes it. Tests that freeze use one lane: the others would open later,
  // unfrozen.
  void Warm() {
    auto r = Submit(adxl::READ, Read(0, 4096), 5000);
    ASSERT_TRUE(r && r->Wait(Deadline::AfterMs(5000)));
    ASSERT_EQ(r->Status(), adxl::SUCCESS) << r->Error();
  }
  bool WaitUntil(const std::function<bool()> &pred, int ms) {
    const auto end = Clock::now() + std::chrono::milliseconds(ms);
    while (!pred()) {
      if (Clock::now() > end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
  }

  Engine server_, client_;
  std::string server_id_;
  std::vector<char> remote_, local_;
  std::unique_ptr<FreezableProxy> proxy_;
};

// ---- TransferRequest on its own ----

TEST(TransferRequestAlone, IdsAreUniqueIncreasingAndNeverZero) {
  std::vector<uint64_t> ids[4];
  std::vector<std::thread> threads;
  for (auto &mine : ids) {
    threads.emplace_back([&mine] {
      for (int i = 0; i < 2000; ++i)
        mine.push_back(TransferRequest("k", adxl::READ, std::vector<Segment>{}, Deadline::Never()).Id());
    });
  }
  for (auto &t : threads) t.join();
  std::set<uint64_t> all;
  for (auto &mine : ids) {
    for (size_t i = 0; i < mine.size(); ++i) {
      EXPECT_NE(mine[i], 0u);
      if (i > 0) {
        EXPECT_GT(mine[i], mine[i - 1]);
      }
      all.insert(mine[i]);
    }
  }
  EXPECT_EQ(all.size(), 4u * 2000u);
}

TEST(TransferRequestAlone, CompletesExactlyOnceAndWaitHonoursItsOwnDeadline) {
  TransferRequest request("k", adxl::WRITE, std::vector<Segment>{{1, 2, 3}}, Deadline::AfterMs(60000));
  EXPECT_FALSE(request.Done());
  const auto t0 = Clock::now();
  EXPECT_FALSE(request.Wait(Deadline::AfterMs(50)));
  EXPECT_GE(MsSince(t0), 45);
  EXPECT_LT(MsSince(t0), 1000);
  std::atomic<int> on_done_runs{0};
  bool seen_before_wait_returned = false;
  request.Arm([](void *runs) { ++*static_cast<std::atomic<int> *>(runs); }, &on_done_runs, nullptr);
  std::thread finisher([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    request.Finish(adxl::TIMEOUT, "late");
  });
  EXPECT_TRUE(request.Wait(Deadline::AfterMs(5000)));
  seen_before_wait_returned = on_done_runs.load() == 1;
  finisher.join();
  EXPECT_TRUE(seen_before_wait_returned);
  EXPECT_EQ(request.Status(), adxl::TIMEOUT);
  EXPECT_EQ(request.Error(), "late");
  // Later outcomes and a cancel change nothing.
  request.Finish(adxl::SUCCESS, "");
  request.Cancel();
  EXPECT_EQ(request.Status(), adxl::TIMEOUT);
  EXPECT_FALSE(request.Canceled());
  EXPECT_EQ(on_done_runs.load(), 1);
  EXPECT_FALSE(request.BeginIo(nullptr));
}

TEST(TransferRequestAlone, CancelShutsDownTheStreamsInUseAndCompletesWhenTheirIoEnds) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto mine = std::make_shared<TcpStream>(fds[0], "mine");
  TcpStream other(fds[1], "other");
  TransferRequest request("k", adxl::READ, std::vector<Segment>{{1, 2, 3}}, Deadline::Never());
  ASSERT_TRUE(request.BeginIo(mine.get()));
  request.Cancel("stop");
  EXPECT_FALSE(request.Done());  // its I/O is still in progress
  char byte;
  EXPECT_EQ(mine->Read(&byte, 1, Deadline::AfterMs(2000)), IoStatus::kClosed);  // shut down
  EXPECT_FALSE(request.BeginIo(mine.get()));
  EXPECT_TRUE(request.EndIo(mine.get()));  // it was cut: the caller drops the lane
  EXPECT_TRUE(request.Wait(Deadline::AfterMs(0)));
  EXPECT_EQ(request.Status(), TransferRequest::kCanceledStatus);
  EXPECT_EQ(request.Status(), adxl::FAILED);
  EXPECT_TRUE(request.Canceled());
  EXPECT_EQ(request.Error(), "stop");
  request.Finish(adxl::SUCCESS, "");  // the runner's late outcome is ignored
  EXPECT_EQ(request.Status(), adxl::FAILED);
}

TEST(TransferRequestAlone, ACancelForItsDeadlineEndsItTimeoutOnceItsIoReturned) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  auto mine = std::make_shared<TcpStream>(fds[0], "mine");
  TcpStream other(fds[1], "other");
  TransferRequest request("k", adxl::READ, std::vector<Segment>{{1, 2, 3}}, Deadline::Never());
  ASSERT_TRUE(request.BeginIo(mine.get()));
  request.Cancel("its deadline passed", adxl::TIMEOUT);
  request.Cancel("disconnected");  // the first cancel decides
  EXPECT_FALSE(request.Done());    // not before the I/O on its buffers returned
  EXPECT_TRUE(request.EndIo(mine.get()));
  ASSERT_TRUE(request.Done());
  EXPECT_EQ(request.Status(), adxl::TIMEOUT);
  EXPECT_TRUE(request.Canceled());
  EXPECT_EQ(request.Error(), "its deadline passed");
  request.Finish(adxl::SUCCESS, "");
  EXPECT_EQ(request.Status(), adxl::TIMEOUT);
}

TEST(TransferRequestAlone, CancelOfARequestMovingNoBytesCompletesAtOnce) {
  TransferRequest request("k", adxl::READ, std::vector<Segment>{{1, 2, 3}}, Deadline::Never());
  request.Cancel();
  EXPECT_TRUE(request.Done());
  EXPECT_TRUE(request.Canceled());
  EXPECT_TRUE(request.CancelRequested());
  EXPECT_FALSE(request.BeginIo(nullptr));
}

// ---- through the engine ----

class RequestBytes : public RequestTest, public ::testing::WithParamInterface<const char *> {};

TEST_P(RequestBytes, ArriveAndTheStatusIsSuccess) {
  Start({{"llmdd.TcpConnections", "4"}}, /*direct=*/true, GetParam());
  // Large (split across lanes), small, and a WRITE back to another place.
  auto big = Submit(adxl::READ, Read(0, 6 << 20), 10000);
  auto small = Submit(adxl::READ, Read((6 << 20) + 8, 8), 10000);
  ASSERT_TRUE(big && small);
  EXPECT_NE(big->Id(), small->Id());
  EXPECT_EQ(big->Key(), server_id_);
  ASSERT_TRUE(big->Wait(Deadline::AfterMs(10000)));
  ASSERT_TRUE(small->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(big->Status(), adxl::SUCCESS) << big->Error();
  EXPECT_EQ(small->Status(), adxl::SUCCESS) << small->Error();
  EXPECT_FALSE(big->Canceled());
  EXPECT_TRUE(Arrived(0, 6 << 20));
  EXPECT_TRUE(Arrived((6 << 20) + 8, 8));
  for (size_t i = 0; i < (1 << 20); ++i) local_[i] = static_cast<char>(~i);
  auto write = Submit(adxl::WRITE, {{L(0), R(7 << 20), 1 << 20}}, 10000);
  ASSERT_TRUE(write && write->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(write->Status(), adxl::SUCCESS) << write->Error();
  EXPECT_EQ(memcmp(local_.data(), remote_.data() + (7 << 20), 1 << 20), 0);
  // Cancel after completion does nothing.
  big->Cancel();
  EXPECT_EQ(big->Status(), adxl::SUCCESS);
  EXPECT_FALSE(big->Canceled());
  EXPECT_EQ(client_.RequestsInFlight(), 0u);
  // Nothing to move: done at once.
  auto empty = Submit(adxl::READ, {}, 1000);
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->Done());
  EXPECT_EQ(empty->Status(), adxl::SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(Transport, RequestBytes, ::testing::Values("tcp", "auto"));

TEST_F(RequestTest, ManyRequestsFromManyThreadsHaveUniqueIdsAndAllSucceed) {
  Start({{"llmdd.TcpConnections", "2"}}, /*direct=*/true);
  constexpr int kThreads = 4, kEach = 64;
  std::vector<std::shared_ptr<TransferRequest>> requests[kThreads];
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const size_t off = (static_cast<size_t>(t) * kEach + i) * 1024;
        requests[t].push_back(Submit(adxl::READ, Read(off, 1024), 10000));
      }
    });
  }
  for (auto &t : threads) t.join();
  std::set<uint64_t> ids;
  for (auto &mine : requests) {
    for (auto &r : mine) {
      ASSERT_TRUE(r && r->Wait(Deadline::AfterMs(10000)));
      EXPECT_EQ(r->Status(), adxl::SUCCESS) << r->Error();
      ids.insert(r->Id());
    }
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_TRUE(Arrived(0, kThreads * kEach * 1024));
}

// A request runs on a worker and splits itself across lanes onto the same
// workers: with one worker, it must run its own parts instead of waiting for them.
TEST_F(RequestTest, SplitRequestsOnTooFewWorkersDoNotWaitForThemselves) {
  Start({{"llmdd.TcpConnections", "4"}, {"llmdd.WorkerThreads", "1"}}, /*direct=*/true);
  std::vector<std::shared_ptr<TransferRequest>> requests;
  for (int i = 0; i < 4; ++i) requests.push_back(Submit(adxl::READ, Read(i * (2 << 20), 2 << 20), 10000));
  for (auto &r : requests) {
    ASSERT_TRUE(r && r->Wait(Deadline::AfterMs(15000))) << "a split request waited for itself";
    EXPECT_EQ(r->Status(), adxl::SUCCESS) << r->Error();
  }
  EXPECT_TRUE(Arrived(0, kRemoteBytes));
}

TEST_F(RequestTest, WaitWithAShortDeadlineReturnsWhileTheRequestGoesOn) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  auto request = Submit(adxl::READ, Read(0, 1 << 20), 20000);
  ASSERT_TRUE(request);
  const auto t0 = Clock::now();
  EXPECT_FALSE(request->Wait(Deadline::AfterMs(100)));
  EXPECT_GE(MsSince(t0), 95);
  EXPECT_LT(MsSince(t0), 1000);
  EXPECT_FALSE(request->Done());
  EXPECT_EQ(client_.RequestsInFlight(), 1u);
  // It goes on: thawed, it completes with the right bytes.
  proxy_->Thaw();
  ASSERT_TRUE(request->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(request->Status(), adxl::SUCCESS) << request->Error();
  EXPECT_TRUE(Arrived(0, 1 << 20));
}

// A small request never waits behind a large one: with the only regular lane
// held by a stalled 4 MiB READ, a 4 KiB READ takes the express lane (a new
// connection, which the frozen proxy forwards) and completes at once.
TEST_F(RequestTest, ASmallRequestDoesNotWaitBehindALargeOne) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  const int connections_before = proxy_->Accepted();
  proxy_->FreezeOpen();
  auto large = Submit(adxl::READ, Read(0, 4 << 20), 30000);
  ASSERT_TRUE(large);
  ASSERT_TRUE(WaitUntil([&] { return large->MovingBytes(); }, 5000));
  local_.assign(kRemoteBytes, 0);
  std::string error;
  const auto t0 = Clock::now();
  ASSERT_EQ(client_.TransferKeyed(server_id_, adxl::READ, Read(6 << 20, 4096), Deadline::AfterMs(3000), &error),
            adxl::SUCCESS)
      << error;
  EXPECT_LT(MsSince(t0), 1000);
  EXPECT_TRUE(Arrived(6 << 20, 4096));
  EXPECT_FALSE(large->Done()) << "the large READ is still stalled";
  EXPECT_EQ(proxy_->Accepted(), connections_before + 1) << "one express lane";
  // A large request does not take the express lane: with the regular lane
  // still stalled, a 1 MiB READ waits (and times out).
  EXPECT_EQ(client_.TransferKeyed(server_id_, adxl::READ, Read(5 << 20, 1 << 20), Deadline::AfterMs(300), &error),
            adxl::TIMEOUT);
  EXPECT_EQ(proxy_->Accepted(), connections_before + 1);
  proxy_->Thaw();
  ASSERT_TRUE(large->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(large->Status(), adxl::SUCCESS) << large->Error();
  EXPECT_TRUE(Arrived(0, 4 << 20));
}

class CancelStalled : public RequestTest, public ::testing::WithParamInterface<adxl::TransferOp> {};

TEST_P(CancelStalled, EndsPromptlyCanceledAndTheLaneServesTheNextTransfer) {
  const adxl::TransferOp op = GetParam();
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  const int connections_before = proxy_->Accepted();
  proxy_->FreezeOpen();
  // 4 MiB: a WRITE fills the socket buffers and blocks sending; a READ waits for its answer.
  auto stalled = Submit(op, Read(0, 4 << 20), 30000);
  ASSERT_TRUE(stalled);
  ASSERT_TRUE(WaitUntil([&] { return stalled->MovingBytes(); }, 5000));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_FALSE(stalled->Done());
  const auto t0 = Clock::now();
  stalled->Cancel();
  ASSERT_TRUE(stalled->Wait(Deadline::AfterMs(5000)));
  EXPECT_LT(MsSince(t0), 1000) << "Cancel took " << MsSince(t0) << " ms";
  EXPECT_EQ(stalled->Status(), adxl::FAILED);
  EXPECT_TRUE(stalled->Canceled());
  EXPECT_EQ(stalled->Error(), "canceled");
  // The only lane was dropped; the next transfer reopens it (a new
  // connection, which the still frozen proxy forwards) and moves the right bytes.
  local_.assign(kRemoteBytes, 0);
  std::string error;
  ASSERT_EQ(client_.TransferKeyed(server_id_, adxl::READ, Read(4096, 1 << 20), Deadline::AfterMs(10000), &error),
            adxl::SUCCESS)
      << error;
  EXPECT_TRUE(Arrived(4096, 1 << 20));
  EXPECT_EQ(proxy_->Accepted(), connections_before + 1);
  auto next = Submit(adxl::READ, Read(2 << 20, 2 << 20), 10000);
  ASSERT_TRUE(next && next->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(next->Status(), adxl::SUCCESS) << next->Error();
  EXPECT_TRUE(Arrived(2 << 20, 2 << 20));
  EXPECT_EQ(client_.RequestsInFlight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Op, CancelStalled, ::testing::Values(adxl::READ, adxl::WRITE),
                         [](const ::testing::TestParamInfo<adxl::TransferOp> &info) {
                           return std::string(info.param == adxl::READ ? "Read" : "Write");
                         });

TEST_F(RequestTest, CancelWhileWaitingForALaneEndsAtOnceAndLeavesTheOthersRunning) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  // Larger than kExpressMaxBytes: both need a regular lane (the express lane is for small ones).
  auto holding = Submit(adxl::READ, Read(0, 128 << 10), 30000);
  ASSERT_TRUE(WaitUntil([&] { return holding->MovingBytes(); }, 5000));  // it holds the only lane
  auto queued = Submit(adxl::READ, Read(256 << 10, 128 << 10), 30000);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // it waits for the lane
  ASSERT_FALSE(queued->Done());
  const auto t0 = Clock::now();
  queued->Cancel();
  EXPECT_TRUE(queued->Done());  // it moved no bytes: done at once
  EXPECT_LT(MsSince(t0), 500);
  EXPECT_TRUE(queued->Canceled());
  EXPECT_FALSE(holding->Done());
  // Its runner lets go of the lane queue (woken, not at its deadline).
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 1; }, 1000));
  proxy_->Thaw();
  ASSERT_TRUE(holding->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(holding->Status(), adxl::SUCCESS) << holding->Error();
  EXPECT_TRUE(Arrived(0, 128 << 10));
  EXPECT_FALSE(Arrived(256 << 10, 128 << 10));
}

TEST_F(RequestTest, TheInFlightCapRefusesAtOnceWithResourceExhausted) {
  Start({{"llmdd.TcpConnections", "1"}, {"llmdd.MaxRequestsInFlight", "2"}});
  Warm();
  proxy_->FreezeOpen();
  // Larger than kExpressMaxBytes: they compete for the one regular lane.
  auto a = Submit(adxl::READ, Read(0, 128 << 10), 30000);
  auto b = Submit(adxl::READ, Read(128 << 10, 128 << 10), 30000);
  ASSERT_TRUE(a && b);
  // One holds the only lane (so canceling it drops that frozen lane), the other waits for it.
  ASSERT_TRUE(WaitUntil([&] { return a->MovingBytes() || b->MovingBytes(); }, 5000));
  EXPECT_EQ(client_.RequestsInFlight(), 2u);
  const auto t0 = Clock::now();
  Submit(adxl::READ, Read(8192, 4096), 30000, adxl::RESOURCE_EXHAUSTED);
  std::string error;
  EXPECT_EQ(client_.TransferKeyed(server_id_, adxl::READ, Read(8192, 4096), Deadline::AfterMs(30000), &error),
            adxl::RESOURCE_EXHAUSTED);
  EXPECT_NE(error.find("llmdd.MaxRequestsInFlight"), std::string::npos) << error;
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, 203900u);
  EXPECT_LT(MsSince(t0), 500);
  // Done requests free their slots before their waiters return.
  a->Cancel();
  b->Cancel();
  ASSERT_TRUE(a->Wait(Deadline::AfterMs(2000)) && b->Wait(Deadline::AfterMs(2000)));
  auto c = Submit(adxl::READ, Read(8192, 4096), 10000);
  ASSERT_TRUE(c && c->Wait(Deadline::AfterMs(10000)));
  EXPECT_EQ(c->Status(), adxl::SUCCESS) << c->Error();
  EXPECT_TRUE(Arrived(8192, 4096));
}

TEST_F(RequestTest, FinalizeWithRequestsInFlightReturnsAndEveryRequestIsTerminal) {
  // One lane: the first request stalls on it, the others wait for it.
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  std::vector<std::shared_ptr<TransferRequest>> requests;
  for (int i = 0; i < 6; ++i) requests.push_back(Submit(i % 2 ? adxl::WRITE : adxl::READ, Read(i << 20, 1 << 20), 60000));
  // A synchronous caller too.
  std::atomic<bool> sync_returned{false};
  adxl::Status sync_status = adxl::SUCCESS;
  std::thread sync([&] {
    std::string error;
    // Not a small one (which would take the express lane): it waits for the lane.
    sync_status =
        client_.TransferKeyed(server_id_, adxl::READ, Read(7 << 20, 128 << 10), Deadline::AfterMs(60000), &error);
    sync_returned = true;
  });
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 7; }, 2000));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t0 = Clock::now();
  client_.Finalize();
  const int64_t took = MsSince(t0);
  EXPECT_LT(took, 3000);  // the goodbye to the frozen peer costs its 1 s
  sync.join();
  EXPECT_TRUE(sync_returned);
  EXPECT_EQ(sync_status, adxl::FAILED);
  for (auto &r : requests) {
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->Done());
    EXPECT_EQ(r->Status(), adxl::FAILED);
    EXPECT_TRUE(r->Canceled());
    EXPECT_NE(r->Error().find("finalizing"), std::string::npos) << r->Error();
  }
  EXPECT_EQ(client_.RequestsInFlight(), 0u);
  std::shared_ptr<TransferRequest> after;
  std::string error;
  EXPECT_EQ(client_.SubmitTransfer(server_id_, adxl::READ, Read(0, 8), Deadline::AfterMs(1000), &after, &error),
            adxl::FAILED);
  EXPECT_EQ(after, nullptr);
}

TEST_F(RequestTest, DisconnectCancelsTheSubmittedRequestsOnItsChannel) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  std::vector<std::shared_ptr<TransferRequest>> requests;
  for (int i = 0; i < 3; ++i) requests.push_back(Submit(adxl::READ, Read(i << 20, 1 << 20), 60000));
  ASSERT_TRUE(WaitUntil([&] { return requests[0]->MovingBytes() || requests[1]->MovingBytes() ||
                                     requests[2]->MovingBytes(); },
                        5000));
  const auto t0 = Clock::now();
  // The frozen peer does not answer the goodbye: Disconnect waits for it until its deadline.
  EXPECT_EQ(client_.DisconnectKeyed(server_id_, Deadline::AfterMs(500), true), adxl::SUCCESS);
  EXPECT_LT(MsSince(t0), 2000);
  for (auto &r : requests) {
    ASSERT_TRUE(r->Wait(Deadline::AfterMs(0)));
    EXPECT_EQ(r->Status(), adxl::FAILED);
    EXPECT_TRUE(r->Canceled());
    EXPECT_NE(r->Error().find("disconnected"), std::string::npos) << r->Error();
  }
  EXPECT_EQ(client_.RequestsInFlight(), 0u);
  Submit(adxl::READ, Read(0, 8), 1000, adxl::NOT_CONNECTED);
}

TEST_F(RequestTest, APeerThatGoesAwayEndsItsRequestsWithFailed) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  std::vector<std::shared_ptr<TransferRequest>> requests;
  for (int i = 0; i < 4; ++i) requests.push_back(Submit(adxl::READ, Read(i << 20, 1 << 20), 60000));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t0 = Clock::now();
  proxy_->Die();
  for (auto &r : requests) {
    ASSERT_TRUE(r->Wait(Deadline::AfterMs(5000)));
    EXPECT_EQ(r->Status(), adxl::FAILED) << r->Error();
    EXPECT_FALSE(r->Canceled());
  }
  EXPECT_LT(MsSince(t0), 2000);
}

TEST_F(RequestTest, AStalledRequestEndsWithTimeoutAtItsDeadline) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  const auto t0 = Clock::now();
  auto request = Submit(adxl::READ, Read(0, 1 << 20), 600);
  ASSERT_TRUE(request->Wait(Deadline::AfterMs(5000)));
  EXPECT_EQ(request->Status(), adxl::TIMEOUT) << request->Error();
  EXPECT_FALSE(request->Canceled());
  EXPECT_GE(MsSince(t0), 550);
  EXPECT_LT(MsSince(t0), 2000);
}

TEST_F(RequestTest, RefusalsComeWithoutARequest) {
  Start({}, /*direct=*/true);
  std::shared_ptr<TransferRequest> request;
  std::string error;
  EXPECT_EQ(client_.SubmitTransfer("nobody", adxl::READ, Read(0, 8), Deadline::AfterMs(1000), &request, &error),
            adxl::NOT_CONNECTED);
  EXPECT_EQ(request, nullptr);
}

// ---- asynchronous transfers (Engine::TransferAsync, engine/async_requests.h) ----

// Polls GetTransferStatus until the request is terminal; its outcome.
adxl::Status PollToEnd(Engine &engine, uint64_t id, adxl::TransferStatus *status, int timeout_ms) {
  const auto end = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    adxl::Status ret = engine.GetTransferStatus(id, status);
    if (ret != adxl::SUCCESS || *status != adxl::TransferStatus::WAITING) return ret;
    if (Clock::now() > end) return ret;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

uint64_t Async(Engine &engine, const std::string &remote, adxl::TransferOp op, const std::vector<adxl::TransferOpDesc> &descs,
               const void *user_data = nullptr, adxl::Status expect = adxl::SUCCESS) {
  uint64_t id = 12345;
  EXPECT_EQ(engine.TransferAsync(remote, op, descs.data(), descs.size(), user_data, 0, &id), expect);
  EXPECT_EQ(id != 0, expect == adxl::SUCCESS);
  return id;
}

TEST_F(RequestTest, AsyncBulkQueryReportsUserDataInIdOrderAndReleasesWhatEnded) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  int tags[3];
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i)
    ids.push_back(Async(client_, server_id_, adxl::READ, {{L(i << 20), R(i << 20), 1 << 20}}, &tags[i]));
  ASSERT_LT(ids[0], ids[1]);
  ASSERT_LT(ids[1], ids[2]);
  EXPECT_EQ(client_.AsyncRequestsHeld(), 3u);
  std::vector<AsyncRequests::Result> results;
  // Frozen: all wait; skip_waiting leaves them out.
  ASSERT_EQ(client_.GetTransferStatuses(UINT32_MAX, false, &results), adxl::SUCCESS);
  ASSERT_EQ(results.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(results[i].id, ids[i]);
    EXPECT_EQ(results[i].user_data, &tags[i]);
    EXPECT_EQ(results[i].status, adxl::TransferStatus::WAITING);
  }
  ASSERT_EQ(client_.GetTransferStatuses(2, false, &results), adxl::SUCCESS);
  EXPECT_EQ(results.size(), 2u);
  ASSERT_EQ(client_.GetTransferStatuses(UINT32_MAX, true, &results), adxl::SUCCESS);
  EXPECT_TRUE(results.empty());
  proxy_->Thaw();
  // Thawed, they complete (in any order); once all have, one query at a
  // time reports them in id order, each once, and releases it.
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 0; }, 10000));
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(client_.GetTransferStatuses(1, true, &results), adxl::SUCCESS);
    ASSERT_EQ(results.size(), 1u);
    EXPECT_EQ(results[0].id, ids[i]);
    EXPECT_EQ(results[0].user_data, &tags[i]);
    EXPECT_EQ(results[0].status, adxl::TransferStatus::COMPLETED);
  }
  ASSERT_EQ(client_.GetTransferStatuses(UINT32_MAX, false, &results), adxl::SUCCESS);
  EXPECT_TRUE(results.empty());
  EXPECT_TRUE(Arrived(0, 3 << 20));
  EXPECT_EQ(client_.AsyncRequestsHeld(), 0u);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(ids[0], &status), adxl::PARAM_INVALID);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
}

TEST_F(RequestTest, AsyncRequestsCountAgainstTheCapUntilTheirEndIsRead) {
  Start({{"llmdd.MaxRequestsInFlight", "3"}}, /*direct=*/true);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(Async(client_, server_id_, adxl::READ, {{L(i * 4096), R(i * 4096), 4096}}));
  // Finished or not, they are held until their terminal status is read.
  Async(client_, server_id_, adxl::READ, {{L(0), R(0), 8}}, nullptr, adxl::RESOURCE_EXHAUSTED);
  // The engine's own count is free again once they are done: synchronous calls go on.
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  ASSERT_EQ(PollToEnd(client_, ids[0], &status, 10000), adxl::SUCCESS);
  EXPECT_EQ(status, adxl::TransferStatus::COMPLETED);
  std::string error;
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 0; }, 10000));
  EXPECT_EQ(client_.TransferKeyed(server_id_, adxl::READ, Read(1 << 20, 64), Deadline::AfterMs(5000), &error),
            adxl::SUCCESS)
      << error;
  const uint64_t next = Async(client_, server_id_, adxl::READ, {{L(5 << 20), R(5 << 20), 4096}});
  EXPECT_GT(next, ids[2]);
  Async(client_, server_id_, adxl::READ, {{L(0), R(0), 8}}, nullptr, adxl::RESOURCE_EXHAUSTED);
  for (uint64_t id : {ids[1], ids[2], next}) {
    ASSERT_EQ(PollToEnd(client_, id, &status, 10000), adxl::SUCCESS);
    EXPECT_EQ(status, adxl::TransferStatus::COMPLETED);
  }
  EXPECT_TRUE(Arrived(0, 3 * 4096));
  EXPECT_TRUE(Arrived(5 << 20, 4096));
  EXPECT_EQ(client_.AsyncRequestsHeld(), 0u);
}

TEST_F(RequestTest, AnAsyncRequestPastAsyncTransferMaxMsEndsFailed) {
  Start({{"llmdd.TcpConnections", "1"}, {"llmdd.AsyncTransferMaxMs", "400"}});
  Warm();
  proxy_->FreezeOpen();
  const auto t0 = Clock::now();
  const uint64_t id = Async(client_, server_id_, adxl::READ, {{L(0), R(0), 1 << 20}});
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(id, &status), adxl::SUCCESS);
  EXPECT_EQ(status, adxl::TransferStatus::WAITING);
  // CANN's async transfers never report TIMEOUT: the bound ends it FAILED.
  EXPECT_EQ(PollToEnd(client_, id, &status, 5000), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
  EXPECT_GE(MsSince(t0), 350);
  EXPECT_LT(MsSince(t0), 3000);
  EXPECT_EQ(client_.GetTransferStatus(id, &status), adxl::PARAM_INVALID);
}

TEST_F(RequestTest, AQueryEndsAnAsyncRequestToAPeerDeclaredDead) {
  // Default bound (60 s): only the heartbeats can end it early.
  Start({{"llmdd.TcpConnections", "1"}, {"llmdd.HeartbeatIntervalMs", "50"}, {"llmdd.PeerTimeoutMs", "300"}});
  Warm();
  proxy_->FreezeOpen();  // the control connection too: heartbeats go unanswered
  const auto t0 = Clock::now();
  const uint64_t id = Async(client_, server_id_, adxl::WRITE, {{L(0), R(0), 1 << 20}});
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(PollToEnd(client_, id, &status, 10000), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
  EXPECT_GE(MsSince(t0), 250);
  EXPECT_LT(MsSince(t0), 5000);
  EXPECT_EQ(client_.RequestsInFlight(), 0u);
  EXPECT_EQ(client_.AsyncRequestsHeld(), 0u);
}

TEST_F(RequestTest, AsyncRequestsEndedByDisconnectAndFinalizeReportFailed) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  const uint64_t a = Async(client_, server_id_, adxl::READ, {{L(0), R(0), 1 << 20}});
  const uint64_t b = Async(client_, server_id_, adxl::READ, {{L(1 << 20), R(1 << 20), 1 << 20}});
  EXPECT_EQ(client_.DisconnectKeyed(server_id_, Deadline::AfterMs(300), true), adxl::SUCCESS);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(a, &status), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
  client_.Finalize();
  // Still answered after Finalize (the table outlives it), then released.
  status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(b, &status), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
  EXPECT_EQ(client_.GetTransferStatus(b, &status), adxl::FAILED);  // unknown, and not initialized
  EXPECT_EQ(client_.GetTransferStatus(0, &status), adxl::FAILED);
}

// ---- the per-request deadline of asynchronous requests (llmdd/extensions.h SetTransferTimeout) ----

uint64_t AsyncWithin(Engine &engine, const std::string &remote, adxl::TransferOp op,
                     const std::vector<adxl::TransferOpDesc> &descs, uint32_t timeout_ms,
                     const void *user_data = nullptr) {
  uint64_t id = 0;
  EXPECT_EQ(engine.TransferAsync(remote, op, descs.data(), descs.size(), user_data, timeout_ms, &id), adxl::SUCCESS);
  EXPECT_NE(id, 0u);
  return id;
}

TEST_F(RequestTest, AnAsyncRequestPastItsOwnDeadlineEndsTimeoutWithoutBeingPolled) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  memset(local_.data(), 0xEE, 1 << 20);
  const auto t0 = Clock::now();
  const uint64_t id = AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0), 1 << 20}}, 300);
  // Nobody polls: the request still ends at its deadline (its in-flight slot is free).
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 0; }, 5000));
  const int64_t ended_ms = MsSince(t0);
  EXPECT_GE(ended_ms, 290);
  EXPECT_LT(ended_ms, 300 + 1500);
  EXPECT_EQ(client_.AsyncRequestsHeld(), 1u);  // held until its end is read
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(id, &status), adxl::TIMEOUT);
  EXPECT_EQ(status, adxl::TransferStatus::TIMEOUT);
  EXPECT_EQ(client_.GetTransferStatus(id, &status), adxl::PARAM_INVALID);  // released
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
  // The peer resumes and sends what it owed: none of it reaches the buffer
  // of a request that ended (its lane was closed, not drained into it).
  proxy_->Thaw();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (size_t i = 0; i < (1 << 20); ++i) {
    if (static_cast<unsigned char>(local_[i]) != 0xEE) {
      ADD_FAILURE() << "byte " << i << " of the buffer was written after the request ended";
      break;
    }
  }
  // The channel goes on: a new request reopens a lane.
  const uint64_t again = AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0), 4096}}, 5000);
  EXPECT_EQ(PollToEnd(client_, again, &status, 10000), adxl::SUCCESS);
  EXPECT_EQ(status, adxl::TransferStatus::COMPLETED);
  EXPECT_TRUE(Arrived(0, 4096));
}

TEST_F(RequestTest, ADeadlineEndsARequestThatWaitsForAWorkerBehindAStuckOne) {
  // One worker, busy with a request to the frozen peer for up to 20 s: the
  // next request waits in the queue, and its own deadline still ends it.
  Start({{"llmdd.TcpConnections", "1"}, {"llmdd.WorkerThreads", "1"}, {"llmdd.AsyncTransferMaxMs", "20000"}});
  Warm();
  proxy_->FreezeOpen();
  const uint64_t stuck = AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0), 1 << 20}}, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the worker took it
  const auto t0 = Clock::now();
  // A WRITE is never carried together with the READ: it waits alone.
  const uint64_t queued = AsyncWithin(client_, server_id_, adxl::WRITE, {{L(2 << 20), R(2 << 20), 4096}}, 300);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(PollToEnd(client_, queued, &status, 5000), adxl::TIMEOUT);
  EXPECT_EQ(status, adxl::TransferStatus::TIMEOUT);
  EXPECT_GE(MsSince(t0), 290);
  EXPECT_LT(MsSince(t0), 300 + 1500);
  EXPECT_EQ(client_.GetTransferStatus(stuck, &status), adxl::SUCCESS);
  EXPECT_EQ(status, adxl::TransferStatus::WAITING);  // no deadline of its own: unaffected
  EXPECT_EQ(client_.DisconnectKeyed(server_id_, Deadline::AfterMs(300), true), adxl::SUCCESS);
  EXPECT_EQ(client_.GetTransferStatus(stuck, &status), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
}

TEST_F(RequestTest, OwnDeadlinesAreReportedByTheBulkQueryAndOtherEndsStayTheirs) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  int tags[3];
  // In time: COMPLETED; a range the server refuses: FAILED, deadline or not.
  const uint64_t done = AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0), 4096}}, 5000, &tags[0]);
  const uint64_t refused =
      AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0) + kRemoteBytes, 8}}, 5000, &tags[1]);
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 0; }, 10000));
  proxy_->FreezeOpen();
  const uint64_t late = AsyncWithin(client_, server_id_, adxl::WRITE, {{L(0), R(0), 4096}}, 200, &tags[2]);
  ASSERT_TRUE(WaitUntil([&] { return client_.RequestsInFlight() == 0; }, 5000));
  std::vector<AsyncRequests::Result> results;
  ASSERT_EQ(client_.GetTransferStatuses(UINT32_MAX, false, &results), adxl::SUCCESS);
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].id, done);
  EXPECT_EQ(results[0].status, adxl::TransferStatus::COMPLETED);
  EXPECT_EQ(results[1].id, refused);
  EXPECT_EQ(results[1].status, adxl::TransferStatus::FAILED);
  EXPECT_EQ(results[2].id, late);
  EXPECT_EQ(results[2].user_data, &tags[2]);
  EXPECT_EQ(results[2].status, adxl::TransferStatus::TIMEOUT);
  ASSERT_EQ(client_.GetTransferStatuses(UINT32_MAX, false, &results), adxl::SUCCESS);
  EXPECT_TRUE(results.empty());
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(late, &status), adxl::PARAM_INVALID);
}

TEST_F(RequestTest, ARequestWithADeadlineEndedByDisconnectIsFailedNotTimeout) {
  Start({{"llmdd.TcpConnections", "1"}});
  Warm();
  proxy_->FreezeOpen();
  const uint64_t id = AsyncWithin(client_, server_id_, adxl::READ, {{L(0), R(0), 1 << 20}}, 60000);
  const auto t0 = Clock::now();
  EXPECT_EQ(client_.DisconnectKeyed(server_id_, Deadline::AfterMs(300), true), adxl::SUCCESS);
  EXPECT_LT(MsSince(t0), 2000);
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(id, &status), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
}

TEST_F(RequestTest, AsyncRefusalsComeWithoutARequest) {
  Start({}, /*direct=*/true);
  Async(client_, "nobody", adxl::READ, {{L(0), R(0), 8}}, nullptr, adxl::NOT_CONNECTED);
  Async(client_, server_id_, adxl::READ, {{0, R(0), 8}}, nullptr, adxl::PARAM_INVALID);
  EXPECT_EQ(client_.AsyncRequestsHeld(), 0u);
  // Nothing to move: a request that is complete at once.
  const uint64_t empty = Async(client_, server_id_, adxl::WRITE, {});
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  EXPECT_EQ(client_.GetTransferStatus(empty, &status), adxl::SUCCESS);
  EXPECT_EQ(status, adxl::TransferStatus::COMPLETED);
  // A remote range the server did not register: accepted, then FAILED.
  const uint64_t bad = Async(client_, server_id_, adxl::READ, {{L(0), R(0) + kRemoteBytes, 8}});
  EXPECT_EQ(PollToEnd(client_, bad, &status, 10000), adxl::FAILED);
  EXPECT_EQ(status, adxl::TransferStatus::FAILED);
}

}  // namespace
}  // namespace llmdd
