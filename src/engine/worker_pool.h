// Thread pool for the requester side of transfers (the parts of a split
// transfer). Threads start when tasks wait and none is idle, up to the cap, and
// end after idling for `idle_exit`: an engine that does not transfer holds
// none. Tasks must be bounded by their own deadlines: the pool never cancels them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace llmdd {

class WorkerPool {
 public:
  static std::unique_ptr<WorkerPool> Create(int max_threads,
                                            std::chrono::milliseconds idle_exit = std::chrono::seconds(10));
  ~WorkerPool();  // runs the queued tasks, then joins
  WorkerPool(const WorkerPool &) = delete;
  WorkerPool &operator=(const WorkerPool &) = delete;
  // Queues a task (tasks must not throw: the pool logs and drops what escapes).
  // False when it cannot be queued (out of memory, or no thread can run it):
  // run it yourself.
  bool Submit(std::function<void()> task);
  size_t ThreadCount() const;

 private:
  WorkerPool(int max_threads, std::chrono::milliseconds idle_exit) : max_threads_(max_threads), idle_exit_(idle_exit) {}
  void Run(uint64_t self);
  const size_t max_threads_;
  const std::chrono::milliseconds idle_exit_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  size_t idle_ = 0;  // threads waiting for a task
  uint64_t next_thread_ = 1;
  std::map<uint64_t, std::thread> threads_;
  std::vector<std::thread> exited_;
};

// Counts down completions; Wait() returns when all arrived.
class Latch {
 public:
  explicit Latch(int count) : count_(count) {}
  void CountDown() {
    std::lock_guard lock(mutex_);
    if (--count_ == 0) done_.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return count_ <= 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  int count_;
};

}  // namespace llmdd
