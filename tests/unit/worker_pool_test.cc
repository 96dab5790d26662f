// The requester's worker pool holds no thread until work waits, grows to its
// cap while tasks run at once, and shrinks back to none when idle.
#include "engine/worker_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace llmdd {
namespace {

using namespace std::chrono_literals;

TEST(WorkerPool, ThreadsComeWithWorkAndGoWhenIdle) {
  auto pool = WorkerPool::Create(3, 100ms);
  EXPECT_EQ(pool->ThreadCount(), 0u);
  std::atomic<int> inside{0}, done{0};
  std::atomic<bool> release{false};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(pool->Submit([&] {
      ++inside;
      while (!release.load()) std::this_thread::sleep_for(1ms);
      ++done;
    }));
  }
  const auto end = std::chrono::steady_clock::now() + 3s;
  while (inside.load() < 3 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(inside.load(), 3);  // the cap: two tasks wait their turn
  EXPECT_EQ(pool->ThreadCount(), 3u);
  release = true;
  while (done.load() < 5 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(done.load(), 5);
  while (pool->ThreadCount() > 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(pool->ThreadCount(), 0u);
  std::atomic<bool> ran{false};
  ASSERT_TRUE(pool->Submit([&] { ran = true; }));  // and starts again
  pool.reset();  // runs what is queued, then joins
  EXPECT_TRUE(ran.load());
}

}  // namespace
}  // namespace llmdd
