// The engine's event threads: handlers run when their descriptor is readable,
// one at a time per watch; Unwatch/Cancel wait out a running handler; threads
// grow with work that runs at once (up to the cap), not with what is watched,
// and shrink back when idle.
#include "engine/reactor.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace llmdd {
namespace {

using namespace std::chrono_literals;

struct SocketPair {
  int fds[2] = {-1, -1};
  SocketPair() { EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0); }
  ~SocketPair() {
    for (int fd : fds) close(fd);
  }
  void Send(char c = 'x') { ASSERT_EQ(write(fds[1], &c, 1), 1); }
  int Drain() {
    char buf[64];
    ssize_t n = read(fds[0], buf, sizeof(buf));
    return n > 0 ? static_cast<int>(n) : 0;
  }
};

template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

Reactor::Options SmallOptions(size_t threads = 4, std::chrono::milliseconds idle = 200ms) {
  Reactor::Options options;
  options.max_threads = threads;
  options.idle_exit = idle;
  return options;
}

TEST(Reactor, HandlerRunsOncePerReadinessAndEndsWhenItSaysSo) {
  Reactor reactor(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  SocketPair pair;
  std::atomic<int> calls{0}, bytes{0};
  const uint64_t id = reactor.Watch(pair.fds[0], [&] {
    bytes += pair.Drain();
    return ++calls < 3;
  }, &error);
  ASSERT_NE(id, 0u) << error;
  for (int i = 1; i <= 3; ++i) {
    pair.Send();
    ASSERT_TRUE(WaitFor([&] { return calls.load() == i; })) << i;
  }
  EXPECT_TRUE(WaitFor([&] { return reactor.WatchCount() == 0; }));
  pair.Send();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(calls.load(), 3);  // forgotten: never called again
  EXPECT_EQ(bytes.load(), 3);
}

TEST(Reactor, UnwatchWaitsForTheRunningHandlerAndStopsLaterOnes) {
  Reactor reactor(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  SocketPair pair;
  std::atomic<bool> inside{false}, finished{false};
  std::atomic<int> calls{0};
  const uint64_t id = reactor.Watch(pair.fds[0], [&] {
    pair.Drain();
    ++calls;
    inside = true;
    std::this_thread::sleep_for(100ms);
    finished = true;
    return true;
  }, &error);
  pair.Send();
  ASSERT_TRUE(WaitFor([&] { return inside.load(); }));
  reactor.Unwatch(id);
  EXPECT_TRUE(finished.load());  // returned only after the handler did
  pair.Send();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(reactor.WatchCount(), 0u);
}

TEST(Reactor, OneWatchNeverRunsOnTwoThreadsAtOnce) {
  Reactor reactor(SmallOptions(4));
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  SocketPair pair;
  std::atomic<int> running{0}, overlap{0}, calls{0};
  reactor.Watch(pair.fds[0], [&] {
    if (running.fetch_add(1) != 0) ++overlap;
    pair.Drain();
    std::this_thread::sleep_for(2ms);
    running.fetch_sub(1);
    ++calls;
    return true;
  }, &error);
  for (int i = 0; i < 50; ++i) {
    pair.Send();
    std::this_thread::sleep_for(200us);
  }
  ASSERT_TRUE(WaitFor([&] { return calls.load() > 0 && running.load() == 0; }));
  EXPECT_EQ(overlap.load(), 0);
}

TEST(Reactor, ThreadsFollowConcurrentWorkNotWatchesAndShrinkWhenIdle) {
  Reactor reactor(SmallOptions(4, 200ms));
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  // 500 idle watches: still one thread.
  std::vector<std::unique_ptr<SocketPair>> idle;
  for (int i = 0; i < 500; ++i) {
    idle.push_back(std::make_unique<SocketPair>());
    ASSERT_NE(reactor.Watch(idle.back()->fds[0], [] { return true; }, &error), 0u) << error;
  }
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(reactor.ThreadCount(), 1u);
  // Six handlers that block at once: the threads grow to the cap of 4, no further.
  std::vector<std::unique_ptr<SocketPair>> busy;
  std::atomic<int> inside{0};
  std::atomic<bool> release{false};
  for (int i = 0; i < 6; ++i) {
    busy.push_back(std::make_unique<SocketPair>());
    SocketPair *p = busy.back().get();
    reactor.Watch(p->fds[0], [&, p] {
      p->Drain();
      ++inside;
      while (!release.load()) std::this_thread::sleep_for(1ms);
      --inside;
      return false;
    }, &error);
    p->Send();
  }
  EXPECT_TRUE(WaitFor([&] { return inside.load() == 4; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(inside.load(), 4);  // the other two wait for a thread
  EXPECT_EQ(reactor.ThreadCount(), 4u);
  release = true;
  EXPECT_TRUE(WaitFor([&] { return reactor.WatchCount() == 500; }));  // all six served and gone
  EXPECT_TRUE(WaitFor([&] { return reactor.ThreadCount() == 1; }, 3000ms));
}

TEST(Reactor, TimersRepeatAndCancelWaitsForARunningOne) {
  Reactor reactor(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  std::atomic<int> ticks{0};
  std::atomic<bool> inside{false}, finished{false};
  const uint64_t timer = reactor.Every(10ms, [&] {
    if (++ticks == 5) {
      inside = true;
      std::this_thread::sleep_for(100ms);
      finished = true;
    }
  });
  ASSERT_TRUE(WaitFor([&] { return inside.load(); }));
  reactor.Cancel(timer);
  EXPECT_TRUE(finished.load());
  const int after = ticks.load();
  std::this_thread::sleep_for(60ms);
  EXPECT_EQ(ticks.load(), after);
  EXPECT_EQ(after, 5);
}

TEST(Reactor, AOneShotTimerRunsOnceAtItsTimeUnlessCanceled) {
  Reactor reactor(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  std::atomic<int> runs{0}, canceled_runs{0};
  const auto t0 = Reactor::Clock::now();
  std::atomic<int64_t> ran_after_ms{-1};
  const uint64_t later = reactor.At(t0 + 300ms, [&] { ++canceled_runs; });
  const uint64_t once = reactor.At(t0 + 80ms, [&] {
    ran_after_ms = std::chrono::duration_cast<std::chrono::milliseconds>(Reactor::Clock::now() - t0).count();
    ++runs;
  });
  ASSERT_NE(once, 0u);
  ASSERT_NE(later, 0u);
  EXPECT_NE(once, later);
  ASSERT_TRUE(WaitFor([&] { return runs.load() == 1; }));
  EXPECT_GE(ran_after_ms.load(), 80);  // an earlier timer armed later still runs first, at its time
  reactor.Cancel(later);
  std::this_thread::sleep_for(400ms);
  EXPECT_EQ(runs.load(), 1);  // once, then forgotten
  EXPECT_EQ(canceled_runs.load(), 0);
  reactor.Cancel(once);  // already ran: nothing to do
  // Ids are unique in the process, across reactors: a stale id names nothing.
  Reactor other(SmallOptions());
  ASSERT_TRUE(other.Start(&error)) << error;
  std::atomic<int> other_runs{0};
  const uint64_t fresh = other.At(Reactor::Clock::now() + 50ms, [&] { ++other_runs; });
  EXPECT_GT(fresh, later);
  other.Cancel(once);
  other.Cancel(later);
  EXPECT_TRUE(WaitFor([&] { return other_runs.load() == 1; }));
  other.Stop();
  EXPECT_EQ(other.At(Reactor::Clock::now(), [] {}), 0u);  // stopped: nothing would run it
}

TEST(Reactor, AThrowingHandlerLosesItsWatchOnly) {
  Reactor reactor(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor.Start(&error)) << error;
  SocketPair bad, good;
  std::atomic<int> good_calls{0};
  reactor.Watch(bad.fds[0], []() -> bool { throw std::runtime_error("handler failure"); }, &error);
  reactor.Watch(good.fds[0], [&] {
    good.Drain();
    ++good_calls;
    return true;
  }, &error);
  bad.Send();
  ASSERT_TRUE(WaitFor([&] { return reactor.WatchCount() == 1; }));
  good.Send();
  EXPECT_TRUE(WaitFor([&] { return good_calls.load() == 1; }));
}

TEST(Reactor, StopWaitsForRunningHandlersAndRefusesNewWatches) {
  auto reactor = std::make_unique<Reactor>(SmallOptions());
  std::string error;
  ASSERT_TRUE(reactor->Start(&error)) << error;
  SocketPair pair;
  std::atomic<bool> inside{false}, finished{false};
  reactor->Watch(pair.fds[0], [&] {
    inside = true;
    std::this_thread::sleep_for(100ms);
    finished = true;
    return true;
  }, &error);
  pair.Send();
  ASSERT_TRUE(WaitFor([&] { return inside.load(); }));
  reactor->Stop();
  EXPECT_TRUE(finished.load());
  EXPECT_EQ(reactor->ThreadCount(), 0u);
  SocketPair other;
  EXPECT_EQ(reactor->Watch(other.fds[0], [] { return true; }, &error), 0u);
  EXPECT_FALSE(error.empty());
}

}  // namespace
}  // namespace llmdd
