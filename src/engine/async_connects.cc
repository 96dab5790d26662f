#include "engine/async_connects.h"

#include <new>
#include <utility>

#include "common/log.h"
#include "common/status_name.h"
#include "common/threads.h"

namespace llmdd {

namespace {
// Threads end after this long without a task (a fresh one starts on the next).
constexpr auto kIdleExit = std::chrono::seconds(10);
}  // namespace

AsyncConnects::AsyncConnects(Runner runner) : runner_(std::move(runner)) {}

AsyncConnects::~AsyncConnects() { Stop(); }

adxl::Status AsyncConnects::Start(const Config &config) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (started_) return adxl::SUCCESS;
  std::unique_ptr<WorkerPool> pool;
  try {
    pool = WorkerPool::Create(static_cast<int>(config.threads), kIdleExit);
  } catch (const std::bad_alloc &) {
    return adxl::RESOURCE_EXHAUSTED;
  }
  config_ = config;
  pool_ = std::move(pool);
  started_ = true;
  return adxl::SUCCESS;
}

void AsyncConnects::Stop() {
  std::unique_ptr<WorkerPool> pool;
  size_t dropped = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!started_) return;
    started_ = false;
    pool = std::move(pool_);
    for (auto &entry : remotes_) {
      dropped += entry.second.waiting.size();
      entry.second.waiting.clear();
    }
    waiting_ = 0;
    // Running tasks find their remote gone and only end.
    remotes_.clear();
  }
  if (dropped > 0) LOG_INFO("async connections: %zu waiting task(s) dropped (Finalize)", dropped);
  // Jobs still queued find nothing to do; running ones end by their timeouts.
  pool.reset();
}

adxl::Status AsyncConnects::Submit(const std::string &remote, bool connect, int32_t timeout_ms) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!started_) {
    LOG_ERROR("%s(%s): engine not initialized", connect ? "ConnectAsync" : "DisconnectAsync", remote.c_str());
    return adxl::FAILED;
  }
  if (waiting_ >= config_.queue_capacity) {
    LOG_ERROR("%s(%s): %zu tasks are waiting already (connect_pool.task_queue_capacity %u): RESOURCE_EXHAUSTED",
              connect ? "ConnectAsync" : "DisconnectAsync", remote.c_str(), waiting_, config_.queue_capacity);
    return adxl::RESOURCE_EXHAUSTED;
  }
  Remote &r = remotes_[remote];
  Task task;
  task.connect = connect;
  task.timeout_ms = timeout_ms;
  r.waiting.push_back(task);
  ++waiting_;
  if (!r.scheduled) {
    if (!pool_->Submit([this, remote] { RunNext(remote); })) {
      r.waiting.pop_back();
      --waiting_;
      if (r.waiting.empty() && !r.running && r.outcome == hixl::AsyncConnectStatus::NOT_CONNECT) remotes_.erase(remote);
      LOG_ERROR("%s(%s): no thread can run it (RESOURCE_EXHAUSTED)", connect ? "ConnectAsync" : "DisconnectAsync",
                remote.c_str());
      return adxl::RESOURCE_EXHAUSTED;
    }
    r.scheduled = true;
  }
  LOG_DEBUG("%s(%s, %d ms) queued", connect ? "ConnectAsync" : "DisconnectAsync", remote.c_str(), timeout_ms);
  return adxl::SUCCESS;
}

void AsyncConnects::RunNext(const std::string &remote) {
  Task task;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = remotes_.find(remote);
    if (it == remotes_.end()) return;
    Remote &r = it->second;
    if (!started_ || r.waiting.empty()) {
      r.scheduled = false;
      return;
    }
    task = r.waiting.front();
    r.waiting.pop_front();
    --waiting_;
    r.running = true;
    r.running_connect = task.connect;
  }
  adxl::Status status = adxl::FAILED;
  RunGuarded(task.connect ? "ConnectAsync task" : "DisconnectAsync task",
             [&] { status = runner_(remote, task.connect, task.timeout_ms); });
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = remotes_.find(remote);
  if (it == remotes_.end()) return;  // Stop forgot it
  Remote &r = it->second;
  r.running = false;
  if (task.connect) {
    r.outcome = (status == adxl::SUCCESS || status == adxl::ALREADY_CONNECTED) ? hixl::AsyncConnectStatus::CONNECTED
                                                                                : hixl::AsyncConnectStatus::CONNECT_FAILED;
  } else {
    r.outcome = hixl::AsyncConnectStatus::NOT_CONNECT;
  }
  LOG_INFO("%s(%s) ended with %s", task.connect ? "ConnectAsync" : "DisconnectAsync", remote.c_str(),
           StatusText(status).c_str());
  if (started_ && !r.waiting.empty()) {
    // The next task of this remote goes behind whatever other remotes queued.
    if (pool_->Submit([this, remote] { RunNext(remote); })) return;
    LOG_WARN("async connections: cannot requeue the tasks of %s; they wait for its next submission", remote.c_str());
  }
  r.scheduled = false;
  if (r.waiting.empty() && r.outcome == hixl::AsyncConnectStatus::NOT_CONNECT) remotes_.erase(it);
}

hixl::AsyncConnectStatus AsyncConnects::StatusOf(const Remote &r) {
  if (!r.waiting.empty()) {
    return r.waiting.back().connect ? hixl::AsyncConnectStatus::CONNECT_PENDING
                                    : hixl::AsyncConnectStatus::DISCONNECT_PENDING;
  }
  if (r.running) {
    return r.running_connect ? hixl::AsyncConnectStatus::CONNECTING : hixl::AsyncConnectStatus::DISCONNECTING;
  }
  return r.outcome;
}

hixl::AsyncConnectStatus AsyncConnects::Status(const std::string &remote) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = remotes_.find(remote);
  return it == remotes_.end() ? hixl::AsyncConnectStatus::NOT_CONNECT : StatusOf(it->second);
}

std::map<std::string, hixl::AsyncConnectStatus> AsyncConnects::Statuses() const {
  std::map<std::string, hixl::AsyncConnectStatus> out;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto &entry : remotes_) {
    const hixl::AsyncConnectStatus s = StatusOf(entry.second);
    if (s != hixl::AsyncConnectStatus::NOT_CONNECT) out.emplace(entry.first, s);
  }
  return out;
}

size_t AsyncConnects::Waiting() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return waiting_;
}

}  // namespace llmdd
