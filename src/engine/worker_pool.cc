#include "engine/worker_pool.h"

#include <new>

#include "common/threads.h"

namespace llmdd {

std::unique_ptr<WorkerPool> WorkerPool::Create(int max_threads, std::chrono::milliseconds idle_exit) {
  return std::unique_ptr<WorkerPool>(new WorkerPool(max_threads < 1 ? 1 : max_threads, idle_exit));
}

WorkerPool::~WorkerPool() {
  std::map<uint64_t, std::thread> threads;
  {
    std::unique_lock lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
    threads.swap(threads_);
  }
  for (auto &[id, thread] : threads) thread.join();
  std::unique_lock lock(mutex_);
  JoinExited(lock, &exited_);
}

size_t WorkerPool::ThreadCount() const {
  std::lock_guard lock(mutex_);
  return threads_.size();
}

bool WorkerPool::Submit(std::function<void()> task) {
  std::unique_lock lock(mutex_);
  try {
    queue_.push_back(std::move(task));
  } catch (const std::bad_alloc &) {
    return false;
  }
  if (idle_ >= queue_.size()) {
    // Woken after the unlock: a thread woken under our lock would run only
    // to block on it again (on a small host, preempting us to do so).
    lock.unlock();
    wake_.notify_one();
    return true;
  }
  JoinExited(lock, &exited_);
  if (threads_.size() < max_threads_) {
    const uint64_t self = next_thread_++;
    std::thread worker;
    // The new thread takes mutex_ first, which we hold: it finds itself in threads_.
    if (StartThread("transfer worker", [this, self] { Run(self); }, &worker)) {
      threads_[self] = std::move(worker);
      return true;
    }
  }
  if (!threads_.empty()) {
    wake_.notify_one();  // a busy thread takes it when it is done
    return true;
  }
  queue_.pop_back();  // no thread at all can run it
  return false;
}

void WorkerPool::Run(uint64_t self) {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_;
    const bool woken = wake_.wait_for(lock, idle_exit_, [&] { return stopping_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) {
      if (stopping_) return;
      if (!woken) {
        // Idle for a whole period: end, and let the next Submit join us.
        auto it = threads_.find(self);
        if (it != threads_.end()) {
          exited_.push_back(std::move(it->second));
          threads_.erase(it);
        }
        return;
      }
      continue;
    }
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    RunGuarded("transfer worker task", task);
    lock.lock();
  }
}

}  // namespace llmdd
