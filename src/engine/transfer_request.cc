#include "engine/transfer_request.h"

#include "engine/lane_pool.h"

namespace llmdd {

static_assert(LanePool::kMaxLanes + 1 <= TransferRequest::kMaxIo, "one I/O per lane and a one-sided copy");

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
  if (finished_) return true;
  ++waiters_;
  if (deadline.IsNever()) {
    done_cv_.wait(lock, [&] { return finished_; });
  } else {
    done_cv_.wait_until(lock, deadline.At(), [&] { return finished_; });
  }
  --waiters_;
  return finished_;
}

bool TransferRequest::Done() const {
  std::lock_guard lock(mutex_);
  return finished_;
}

adxl::Status TransferRequest::Status() const {
  std::lock_guard lock(mutex_);
  return finished_ ? status_ : adxl::FAILED;
}

std::string TransferRequest::Error() const {
  std::lock_guard lock(mutex_);
  return finished_ ? error_ : std::string();
}

adxl::Status TransferRequest::Outcome(std::string *error) const {
  std::lock_guard lock(mutex_);
  if (!finished_) {
    error->clear();
    return adxl::FAILED;
  }
  *error = error_;
  return status_;
}

bool TransferRequest::Canceled() const {
  std::lock_guard lock(mutex_);
  return finished_ && canceled_;
}

bool TransferRequest::MovingBytes() const {
  std::lock_guard lock(mutex_);
  return io_count_ != 0 || group_ != nullptr;
}

void TransferRequest::Arm(DoneHook on_done, void *context, LanePool *pool) {
  // Not shared yet: whoever receives the request later does so through a
  // lock (the engine's), which orders these writes before its reads.
  on_done_ = on_done;
  on_done_context_ = context;
  pool_ = pool;
}

void TransferRequest::Cancel(const std::string &why, adxl::Status status) {
  std::lock_guard lock(mutex_);
  if (finished_ || cancel_requested_.load(std::memory_order_relaxed)) return;
  cancel_reason_ = why;
  cancel_status_ = status;
  cancel_requested_.store(true, std::memory_order_release);
  // Under the lock: EndIo cannot hand a stream back to its pool (for another
  // request to use) between our look at io_ and the shutdown, and the pool
  // is alive while the request is not done.
  for (size_t i = 0; i < io_count_; ++i) {
    if (io_[i] != nullptr) io_[i]->Shutdown();
  }
  // A runner waiting for a free lane sees the cancel at once; one opening a
  // lane for it has that connection shut down.
  if (pool_ != nullptr) pool_->WakeWaiters(this);
  // Carried by a group: the group stops (lock order: a member's lock, then its
  // group's; nothing takes them the other way) and its runner ends this one
  // once the group's I/O has returned.
  if (group_ != nullptr) {
    group_->Cancel(why, status);
    return;
  }
  // Moving no bytes now: nothing to wait for. Otherwise the last EndIo completes it.
  if (io_count_ == 0) CompleteLocked(cancel_status_, cancel_reason_, true);
}

bool TransferRequest::AttachTo(TransferRequest *group) {
  std::lock_guard lock(mutex_);
  if (finished_ || cancel_requested_.load(std::memory_order_relaxed) || group_ != nullptr) return false;
  group_ = group;
  return true;
}

void TransferRequest::Detach() {
  std::lock_guard lock(mutex_);
  group_ = nullptr;
  if (cancel_requested_.load(std::memory_order_relaxed) && io_count_ == 0 && !finished_)
    CompleteLocked(cancel_status_, cancel_reason_, true);
}

bool TransferRequest::BeginIo(ByteStream *stream) {
  std::lock_guard lock(mutex_);
  if (finished_ || cancel_requested_.load(std::memory_order_relaxed) || io_count_ == kMaxIo) return false;
  io_[io_count_++] = stream;
  return true;
}

bool TransferRequest::EndIo(ByteStream *stream) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < io_count_; ++i) {
    if (io_[i] == stream) {
      io_[i] = io_[--io_count_];
      break;
    }
  }
  const bool canceled = cancel_requested_.load(std::memory_order_relaxed);
  if (canceled && io_count_ == 0 && !finished_) CompleteLocked(cancel_status_, cancel_reason_, true);
  return canceled && stream != nullptr;
}

void TransferRequest::Finish(adxl::Status *status, std::string *error) {
  std::lock_guard lock(mutex_);
  if (!finished_) {
    if (cancel_requested_.load(std::memory_order_relaxed)) {
      CompleteLocked(cancel_status_, cancel_reason_, true);
    } else {
      CompleteLocked(*status, std::move(*error), false);
    }
  }
  *status = status_;
  *error = error_;
}

void TransferRequest::CompleteLocked(adxl::Status status, std::string error, bool canceled) {
  finished_ = true;
  status_ = status;
  error_ = std::move(error);
  canceled_ = canceled;
  pool_ = nullptr;
  if (on_done_ != nullptr) on_done_(on_done_context_);
  on_done_ = nullptr;
  if (waiters_ > 0) done_cv_.notify_all();
}

}  // namespace llmdd
