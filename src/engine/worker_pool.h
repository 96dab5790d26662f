// Fixed-size thread pool for the requester side of transfers. Tasks must be
// bounded by their own deadlines: the pool never cancels them.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace llmdd {

class WorkerPool {
 public:
  // nullptr when the threads cannot be started (logged; RESOURCE_EXHAUSTED for the caller).
  static std::unique_ptr<WorkerPool> Create(int threads);
  ~WorkerPool();  // runs the queued tasks, then joins
  WorkerPool(const WorkerPool &) = delete;
  WorkerPool &operator=(const WorkerPool &) = delete;
  // Queues a task (tasks must not throw: the pool logs and drops what escapes).
  // False when it cannot be queued (out of memory): run it yourself.
  bool Submit(std::function<void()> task);

 private:
  WorkerPool() = default;
  void Run();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
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
