#include "engine/transfer_request.h"

#include <algorithm>

#include "engine/lane_pool.h"

namespace llmdd {

std::atomic<uint64_t> TransferRequest::next_id_{1};

TransferRequest::TransferRequest(std::string key, adxl::TransferOp op, std::vector<Segment> segs, Deadline deadline)
    : id_(next_id_.fetch_add(1, std::memory_order_relaxed)),
      key_(std::move(key)),
      op_(op),
      owned_(std::move(segs)),
      segs_(&owned_),
      deadline_(deadline) {}

TransferRequest::TransferRequest(std::string key, adxl::TransferOp op, const std::vector<Segment> *borrowed,
                                 Deadline deadline)
    : id_(next_id_.fetch_add(1, std::memory_order_relaxed)),
      key_(std::move(key)),
      op_(op),
      segs_(borrowed),
      deadline_(deadline) {}

bool TransferRequest::Wait(Deadline deadline) const {
  std::unique_lock lock(mutex_);
  if (deadline.IsNever()) {
    done_cv_.wait(lock, [&] { return visible_; });
    return true;
  }
  return done_cv_.wait_until(lock, deadline.At(), [&] { return visible_; });
}

bool TransferRequest::Done() const {
  std::lock_guard lock(mutex_);
  return visible_;
}

adxl::Status TransferRequest::Status() const {
  std::lock_guard lock(mutex_);
  return visible_ ? status_ : adxl::FAILED;
}

std::string TransferRequest::Error() const {
  std::lock_guard lock(mutex_);
  return visible_ ? error_ : std::string();
}

bool TransferRequest::Canceled() const {
  std::lock_guard lock(mutex_);
  return visible_ && canceled_;
}

bool TransferRequest::MovingBytes() const {
  std::lock_guard lock(mutex_);
  return !io_.empty();
}

void TransferRequest::SetOnDone(std::function<void()> on_done) {
  std::lock_guard lock(mutex_);
  on_done_ = std::move(on_done);
}

void TransferRequest::SetPool(std::shared_ptr<LanePool> pool) {
  std::lock_guard lock(mutex_);
  if (!finished_) pool_ = std::move(pool);
}

void TransferRequest::Cancel(const std::string &why) {
  std::unique_lock lock(mutex_);
  if (finished_ || cancel_requested_.load(std::memory_order_relaxed)) return;
  cancel_reason_ = why;
  cancel_requested_.store(true, std::memory_order_release);
  std::shared_ptr<LanePool> pool = pool_;
  // Shut down under the lock: EndIo cannot hand a stream back to its pool
  // (for another request to use) between our look at io_ and the shutdown.
  for (const auto &stream : io_) {
    if (stream) stream->Shutdown();
  }
  // Moving no bytes now: nothing to wait for. Otherwise the last EndIo completes it.
  if (io_.empty()) CompleteLocked(lock, kCanceledStatus, cancel_reason_, true);
  if (lock.owns_lock()) lock.unlock();
  // A runner waiting for a free lane sees the cancel at once.
  if (pool) pool->WakeWaiters();
}

bool TransferRequest::BeginIo(const std::shared_ptr<ByteStream> &stream) {
  std::lock_guard lock(mutex_);
  if (finished_ || cancel_requested_.load(std::memory_order_relaxed)) return false;
  io_.push_back(stream);
  return true;
}

bool TransferRequest::EndIo(const std::shared_ptr<ByteStream> &stream) {
  std::unique_lock lock(mutex_);
  auto it = std::find(io_.begin(), io_.end(), stream);
  if (it != io_.end()) io_.erase(it);
  const bool canceled = cancel_requested_.load(std::memory_order_relaxed);
  if (canceled && io_.empty() && !finished_) CompleteLocked(lock, kCanceledStatus, cancel_reason_, true);
  return canceled && stream != nullptr;
}

void TransferRequest::Finish(adxl::Status status, const std::string &error) {
  std::unique_lock lock(mutex_);
  if (finished_) return;
  if (cancel_requested_.load(std::memory_order_relaxed)) {
    CompleteLocked(lock, kCanceledStatus, cancel_reason_, true);
  } else {
    CompleteLocked(lock, status, error, false);
  }
}

void TransferRequest::CompleteLocked(std::unique_lock<std::mutex> &lock, adxl::Status status, std::string error,
                                     bool canceled) {
  finished_ = true;
  status_ = status;
  error_ = std::move(error);
  canceled_ = canceled;
  std::function<void()> on_done = std::move(on_done_);
  on_done_ = nullptr;
  std::shared_ptr<LanePool> pool = std::move(pool_);
  lock.unlock();
  // Outside the lock: on_done takes the engine's locks, and the last
  // reference to the pool may go here.
  if (on_done) on_done();
  pool.reset();
  lock.lock();
  visible_ = true;
  done_cv_.notify_all();
  lock.unlock();
}

}  // namespace llmdd
