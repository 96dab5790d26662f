// TcpStream's spin-then-block reads as the event-driven server uses them:
// ArrivesSoon (spin briefly for the requester's next message) and the credit
// that keeps an idle stream from burning a core but must come back when the
// requester turns out to be quick.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <thread>

#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

class TcpStreamSpin : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_spin_us_ = ReadSpinMicros();
    SetReadSpinMicros(kSpinUs);
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    server_ = std::make_unique<TcpStream>(fds[0], "server");
    requester_fd_ = fds[1];
  }
  void TearDown() override {
    SetReadSpinMicros(saved_spin_us_);
    if (requester_fd_ >= 0) close(requester_fd_);
  }

  // The requester sends one byte `after` from now, from another thread, while
  // the server asks ArrivesSoon; returns what ArrivesSoon said.
  bool ArrivesSoonWhenSentAfter(std::chrono::microseconds after) {
    std::thread requester([&] {
      std::this_thread::sleep_for(after);
      const char byte = 'r';
      EXPECT_EQ(send(requester_fd_, &byte, 1, 0), 1);
    });
    const bool soon = server_->ArrivesSoon();
    requester.join();
    DrainOne();
    return soon;
  }
  // Takes the byte the way the event-driven server does after a wake-up.
  void DrainOne() {
    char byte = 0;
    size_t got = 0;
    for (int i = 0; i < 1000 && got == 0; ++i) {
      ASSERT_EQ(server_->ReadAvailable(&byte, 1, &got), IoStatus::kOk);
      if (got == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(got, 1u);
  }
  // Spins in vain until the stream stops spinning (no credit left).
  void SpendAllCredit() {
    for (int i = 0; i < 16; ++i) ASSERT_FALSE(server_->ArrivesSoon());
  }

  // Long enough that a byte sent 2 ms into a spin is caught even on a loaded machine.
  static constexpr uint32_t kSpinUs = 50000;
  uint32_t saved_spin_us_ = 0;
  std::unique_ptr<TcpStream> server_;
  int requester_fd_ = -1;
};

TEST_F(TcpStreamSpin, AByteSentDuringTheSpinIsCaught) {
  EXPECT_TRUE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(2)));
}

TEST_F(TcpStreamSpin, AStreamThatSpunInVainStopsSpinning) {
  SpendAllCredit();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(server_->ArrivesSoon());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::microseconds(kSpinUs / 2))
      << "a stream without credit must not spin";
}

// The event-driven server gives up waiting, returns its thread to the event
// set, and reads the next message after the wake-up. When that message came
// within the spin budget, spinning would have caught it: the stream must spin
// again (before this, a server lane that once spun in vain never spun again,
// and every small request paid an epoll wake-up: 8 B READ p50 22.5 vs 11.6 µs).
TEST_F(TcpStreamSpin, CreditComesBackWhenTheNextMessageArrivesWithinTheBudget) {
  SpendAllCredit();
  // Gives up at once (no credit); the byte follows right after and is read
  // the way the reactor reads it.
  EXPECT_FALSE(server_->ArrivesSoon());
  const char byte = 'r';
  ASSERT_EQ(send(requester_fd_, &byte, 1, 0), 1);
  DrainOne();
  EXPECT_TRUE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(2)));
}

TEST_F(TcpStreamSpin, CreditStaysSpentWhenTheNextMessageComesLate) {
  SetReadSpinMicros(2000);
  SpendAllCredit();
  EXPECT_FALSE(server_->ArrivesSoon());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // well past the budget
  const char byte = 'r';
  ASSERT_EQ(send(requester_fd_, &byte, 1, 0), 1);
  DrainOne();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(server_->ArrivesSoon());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::microseconds(1000));
}

// ReadSoon: what ArrivesSoon waits for, read instead of peeked.
TEST_F(TcpStreamSpin, ReadSoonTakesBytesSentDuringTheSpin) {
  std::thread requester([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    EXPECT_EQ(send(requester_fd_, "hello", 5, 0), 5);
  });
  char buf[16] = {};
  size_t got = 0;
  IoStatus io = server_->ReadSoon(buf, sizeof(buf), &got);
  requester.join();
  ASSERT_EQ(io, IoStatus::kOk);
  // The spin ends with the first bytes; the rest of a message (not here) is Feed's.
  ASSERT_GE(got, 1u);
  size_t more = 0;
  if (got < 5) {
    ASSERT_EQ(server_->ReadAvailable(buf + got, sizeof(buf) - got, &more), IoStatus::kOk);
  }
  EXPECT_EQ(std::string(buf, got + more), "hello");
}

TEST_F(TcpStreamSpin, ReadSoonGivesUpWithNothingAndReportsTheEnd) {
  SetReadSpinMicros(2000);
  char buf[4];
  size_t got = 7;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(server_->ReadSoon(buf, sizeof(buf), &got), IoStatus::kOk);
  EXPECT_EQ(got, 0u);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  close(requester_fd_);
  requester_fd_ = -1;
  EXPECT_EQ(server_->ReadSoon(buf, sizeof(buf), &got), IoStatus::kClosed);
  EXPECT_EQ(got, 0u);
}

// ReadAtLeast waits for `min` bytes only, takes what came with them, and
// never more than `max`.
TEST_F(TcpStreamSpin, ReadAtLeastWaitsForTheMinimumAndTakesWhatCameWithIt) {
  std::thread requester([&] {
    EXPECT_EQ(send(requester_fd_, "0123", 4, 0), 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(send(requester_fd_, "456789abcdef", 12, 0), 12);
  });
  char buf[64] = {};
  size_t got = 0;
  ASSERT_EQ(server_->ReadAtLeast(buf, 8, 10, Deadline::AfterMs(5000), &got), IoStatus::kOk);
  requester.join();
  ASSERT_GE(got, 8u);
  ASSERT_LE(got, 10u);
  size_t rest = 0;
  for (int i = 0; i < 100 && got + rest < 16; ++i) {
    size_t n = 0;
    ASSERT_EQ(server_->ReadAvailable(buf + got + rest, sizeof(buf) - got - rest, &n), IoStatus::kOk);
    rest += n;
  }
  EXPECT_EQ(std::string(buf, got + rest), "0123456789abcdef");
}

TEST_F(TcpStreamSpin, ReadAtLeastEndsAtItsDeadlineWithoutTheMinimum) {
  EXPECT_EQ(send(requester_fd_, "ab", 2, 0), 2);
  char buf[16];
  size_t got = 0;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(server_->ReadAtLeast(buf, 8, 16, Deadline::AfterMs(50), &got), IoStatus::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// ScopedReadSpinFloor: a same-host WRITE's requester spins for the server's
// copy. Within the scope a read spins at least that long; it never turns
// spinning on where it is off, and it ends with the scope.
TEST_F(TcpStreamSpin, ASpinFloorKeepsAReadSpinningForTheAnswerItExpects) {
  SetReadSpinMicros(1000);
  EXPECT_FALSE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(30)));  // 1 ms: gives up first
  {
    ScopedReadSpinFloor floor(500000);
    EXPECT_TRUE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(30)));
    {
      ScopedReadSpinFloor smaller(10);  // nested: the larger floor stays
      EXPECT_TRUE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(30)));
    }
    SetReadSpinMicros(0);  // spinning off: the floor does not turn it on
    const auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(server_->ArrivesSoon());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(100));
    SetReadSpinMicros(1000);
  }
  // Credit spent in vain above comes back with reads that were caught.
  for (int i = 0; i < 8; ++i) ArrivesSoonWhenSentAfter(std::chrono::microseconds(0));
  EXPECT_FALSE(ArrivesSoonWhenSentAfter(std::chrono::milliseconds(30)));  // the floor ended with its scope
}

}  // namespace
}  // namespace llmdd
