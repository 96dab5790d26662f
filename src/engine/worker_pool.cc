#include "engine/worker_pool.h"

#include <new>

#include "common/threads.h"

namespace llmdd {

std::unique_ptr<WorkerPool> WorkerPool::Create(int threads) {
  std::unique_ptr<WorkerPool> pool(new WorkerPool());
  for (int i = 0; i < threads; ++i) {
    std::thread worker;
    if (!StartThread("transfer worker", [raw = pool.get()] { raw->Run(); }, &worker)) return nullptr;  // joins the rest
    pool->threads_.push_back(std::move(worker));
  }
  return pool;
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto &t : threads_) t.join();
}

bool WorkerPool::Submit(std::function<void()> task) {
  try {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(task));
  } catch (const std::bad_alloc &) {
    return false;
  }
  wake_.notify_one();
  return true;
}

void WorkerPool::Run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    RunGuarded("transfer worker task", task);
  }
}

}  // namespace llmdd
