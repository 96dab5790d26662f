#include "engine/lane_pool.h"

#include <algorithm>
#include <cstring>

#include "common/log.h"
#include "common/threads.h"
#include "engine/metrics.h"
#include "engine/path_policy.h"

namespace llmdd {

LanePool::LanePool(std::string peer_name, WorkerPool *workers, Reconnector reconnect)
    : peer_name_(std::move(peer_name)), workers_(workers), reconnect_(std::move(reconnect)) {}

LanePool::~LanePool() { ShutdownAll(); }

bool LanePool::AddLane(std::shared_ptr<ByteStream> stream, bool reserved) {
  std::lock_guard lock(mutex_);
  if (count_ >= kMaxLanes) return false;
  lanes_[count_].stream = std::move(stream);
  lanes_[count_].busy = reserved;
  lanes_[count_].last_used = Deadline::Clock::now();
  ++count_;
  if (!reserved) WakeOneLocked(/*express=*/false);
  return true;
}

void LanePool::ReleaseReserved(const std::shared_ptr<ByteStream> &stream) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < count_; ++i) {
    if (lanes_[i].stream == stream && lanes_[i].busy) {
      lanes_[i].busy = false;
      lanes_[i].last_used = Deadline::Clock::now();
      WakeOneLocked(/*express=*/false);
      return;
    }
  }
}

void LanePool::AddLazyLanes(size_t n) {
  std::lock_guard lock(mutex_);
  count_ = std::min(kMaxLanes, count_ + n);
  WakeAllLocked();
}

size_t LanePool::LaneCount() const {
  std::lock_guard lock(mutex_);
  return count_;
}

size_t LanePool::LiveLaneCount() const {
  std::lock_guard lock(mutex_);
  size_t live = 0;
  ForEachSlotLocked([&](const Lane &lane) { live += lane.stream ? 1 : 0; });
  return live;
}

size_t LanePool::CloseIdle(std::chrono::milliseconds idle) {
  if (!reconnect_) return 0;  // lanes the peer opened to us cannot be reopened by us
  std::vector<std::shared_ptr<ByteStream>> closing;
  {
    std::lock_guard lock(mutex_);
    const auto before = Deadline::Clock::now() - idle;
    ForEachSlotLocked([&](Lane &lane) {
      if (!lane.busy && lane.stream && lane.last_used < before) closing.push_back(std::move(lane.stream));
    });
  }
  // The server sees the end of each and forgets it.
  for (auto &stream : closing) stream->Shutdown();
  return closing.size();
}

void LanePool::ShutdownAll() {
  for (const auto &link : links_) {
    if (link) link->Shutdown();
  }
  std::lock_guard lock(mutex_);
  shut_down_.store(true);
  // Shutdown() is safe while another thread is inside a request on the stream.
  ForEachSlotLocked([](Lane &lane) {
    if (lane.stream) lane.stream->Shutdown();
    if (lane.opening) lane.opening->Shutdown();
  });
  WakeAllLocked();
}

void LanePool::WakeWaiters(const TransferRequest *canceled) {
  std::lock_guard lock(mutex_);
  if (canceled != nullptr) {
    // Its runner may be opening a lane to a peer that does not answer: the
    // request is done already, but whoever waits for its runner (Disconnect,
    // Finalize) should not wait for the handshake's deadline.
    ForEachSlotLocked([canceled](Lane &lane) {
      if (lane.opening_for != canceled) return;
      lane.opening_canceled = true;
      if (lane.opening) lane.opening->Shutdown();
    });
  }
  WakeAllLocked();
}

// A request's view of one lane's I/O: announced by Begin, ended by End (or,
// should an exception leave first, by the destructor, before the lane is
// released). A stream the request's Cancel shut down meanwhile is dropped
// like a broken one (the server abandons what it was doing on it); the lane
// reopens on next use.
class LanePool::IoScope {
 public:
  IoScope(LanePool *pool, Lane *lane, const std::shared_ptr<ByteStream> &stream, TransferRequest *request)
      : pool_(pool), lane_(lane), stream_(stream), request_(request) {}
  ~IoScope() { End(); }
  IoScope(const IoScope &) = delete;
  IoScope &operator=(const IoScope &) = delete;
  // False: the request was canceled, do not start.
  bool Begin() {
    if (request_ == nullptr) return true;
    begun_ = request_->BeginIo(stream_.get());
    return begun_;
  }
  // True when Cancel cut the stream (the lane was dropped).
  bool End() {
    if (!begun_) return false;
    begun_ = false;
    if (!request_->EndIo(stream_.get())) return false;
    pool_->DropLane(lane_, stream_);
    return true;
  }

 private:
  LanePool *pool_;
  Lane *lane_;
  const std::shared_ptr<ByteStream> &stream_;
  TransferRequest *request_;
  bool begun_ = false;
};

class LanePool::LaneGuard {
 public:
  LaneGuard(LanePool *pool, Lane *lane) : pool_(pool), lane_(lane) {}
  ~LaneGuard() { pool_->Release(lane_); }
  LaneGuard(const LaneGuard &) = delete;
  LaneGuard &operator=(const LaneGuard &) = delete;

 private:
  LanePool *pool_;
  Lane *lane_;
};

void LanePool::Release(Lane *lane) {
  std::lock_guard lock(mutex_);
  lane->busy = false;
  lane->last_used = Deadline::Clock::now();
  WakeOneLocked(lane == &lanes_[kExpressLane]);
}

void LanePool::WakeOneLocked(bool express) {
  // One waiter per freed lane, never a herd: the express lane goes to a small
  // request; a regular lane to a large one if any waits (only it can use it),
  // else to a small one.
  if (!express && bulk_waiting_ > 0) {
    freed_.notify_one();
  } else {
    small_freed_.notify_one();
  }
}

void LanePool::WakeAllLocked() {
  freed_.notify_all();
  small_freed_.notify_all();
}

LanePool::Lane *LanePool::Acquire(Deadline deadline, adxl::Status *status, std::string *error,
                                  std::shared_ptr<ByteStream> *stream, const TransferRequest *request, bool small) {
  error->clear();
  std::unique_lock lock(mutex_);
  for (;;) {
    // Checked under mutex_, which Cancel's WakeWaiters takes: no wake-up is missed.
    if (request != nullptr && request->CancelRequested()) {
      // A lane freed for us goes to the next waiter (of either kind: we do not know which we were).
      freed_.notify_one();
      small_freed_.notify_one();
      *status = TransferRequest::kCanceledStatus;
      *error = "canceled";
      return nullptr;
    }
    if (count_ == 0 || shut_down_.load()) {
      *status = adxl::FAILED;
      *error = "no open connection to " + peer_name_;
      return nullptr;
    }
    // Lowest free lane first, not round robin: a caller issuing small calls
    // one after another keeps using one warm lane (its server spins for the
    // next request, see LaneServer) while the others stay idle and close.
    // An open lane is preferred to one that must be opened. A small request
    // that finds every regular lane busy takes the express lane instead of
    // waiting behind the transfers on them.
    const auto now = Deadline::Clock::now();
    Lane *free_open = nullptr, *free_closed = nullptr;
    bool any_open = false;
    auto next_retry = Deadline::Clock::time_point::max();
    auto consider = [&](Lane &lane) {
      any_open |= lane.stream != nullptr || lane.busy;
      if (lane.busy) return;
      if (lane.stream && free_open == nullptr) free_open = &lane;
      if (!lane.stream && free_closed == nullptr) {
        if (lane.retry_after <= now) {
          free_closed = &lane;
        } else {
          next_retry = std::min(next_retry, lane.retry_after);
        }
      }
    };
    for (size_t i = 0; i < count_; ++i) consider(lanes_[i]);
    if (small && reconnect_ && free_open == nullptr) {
      Lane &express = lanes_[kExpressLane];
      if (!express.busy && express.stream) {
        free_open = &express;
      } else if (free_closed == nullptr) {
        consider(express);
      }
    }
    if (free_open != nullptr) {
      free_open->busy = true;
      *stream = free_open->stream;
      return free_open;
    }
    if (free_closed != nullptr && reconnect_) {
      free_closed->busy = true;  // reserved while it is opened, outside the lock
      free_closed->opening_for = request;
      free_closed->opening_canceled = false;
      lock.unlock();
      std::string why;
      adxl::Status refused = adxl::FAILED;
      Lane *slot = free_closed;
      const Opening opening = [this, slot](ByteStream *connecting) {
        std::lock_guard guard(mutex_);
        slot->opening = connecting;
        if (connecting != nullptr && (slot->opening_canceled || shut_down_.load())) connecting->Shutdown();
      };
      std::shared_ptr<ByteStream> fresh = reconnect_(deadline, &refused, &why, opening);
      lock.lock();
      const bool canceled_meanwhile = free_closed->opening_canceled;
      free_closed->opening_for = nullptr;
      free_closed->opening = nullptr;
      free_closed->opening_canceled = false;
      if (canceled_meanwhile) {
        // Its handshake may have been cut: the lane is not used. The loop
        // sees the cancel and gives the slot to the next waiter.
        if (fresh) fresh->Shutdown();
        free_closed->busy = false;
        continue;
      }
      if (fresh && !shut_down_.load()) {
        free_closed->stream = fresh;
        *stream = std::move(fresh);
        return free_closed;
      }
      free_closed->busy = false;
      WakeOneLocked(free_closed == &lanes_[kExpressLane]);
      if (fresh) fresh->Shutdown();
      // Another lane that is open, or being opened, may carry the requests.
      const bool others_open = std::any_of(lanes_, lanes_ + count_, [&](const Lane &l) {
        return &l != free_closed && (l.stream != nullptr || l.busy);
      });
      if (!fresh && refused == adxl::RESOURCE_EXHAUSTED && others_open && !deadline.Expired()) {
        // The peer takes no more lanes from us now: the open ones carry the
        // requests, this one is tried again later.
        free_closed->retry_after = Deadline::Clock::now() + std::chrono::seconds(1);
        continue;
      }
      *error = "cannot open a connection to " + peer_name_ + ": " + (fresh ? "the link is closing" : why);
      *status = deadline.Expired() ? adxl::TIMEOUT : fresh ? adxl::FAILED : refused;
      return nullptr;
    }
    if (!any_open && next_retry == Deadline::Clock::time_point::max()) {
      *status = adxl::FAILED;
      *error = "all connections to " + peer_name_ + " are lost";
      return nullptr;
    }
    // Every lane is busy (or waits to be retried): queue for the next one freed.
    const Deadline::Clock::time_point until = std::min(deadline.At(), next_retry);
    // Small requests wait apart from large ones, so a freed lane wakes one
    // waiter that can take it (WakeOneLocked).
    std::condition_variable &cv = small ? small_freed_ : freed_;
    size_t &waiting = small ? small_waiting_ : bulk_waiting_;
    ++waiting;
    std::cv_status woke = std::cv_status::no_timeout;
    if (until == Deadline::Clock::time_point::max()) {
      cv.wait(lock);
    } else {
      woke = cv.wait_until(lock, until);
    }
    --waiting;
    if (woke == std::cv_status::timeout && deadline.Expired()) {
      *status = adxl::TIMEOUT;
      *error = "no free connection to " + peer_name_ + " before the deadline";
      return nullptr;
    }
  }
}

namespace {

LaneResult CanceledResult() {
  LaneResult result;
  result.status = TransferRequest::kCanceledStatus;
  result.error = "canceled";
  return result;
}

}  // namespace

LaneResult LanePool::RunChunks(const TransferBatch &batch, const ChunkIo &io_fn) {
  LaneResult result;
  const Segment *segs = batch.segs;
  const size_t count = batch.count;
  const Deadline deadline = batch.deadline;
  TransferRequest *request = batch.request;
  const bool small = batch.total_bytes <= kExpressMaxBytes;
  size_t done = 0;
  while (done < count) {
    std::shared_ptr<ByteStream> stream;
    Lane *lane = Acquire(deadline, &result.status, &result.error, &stream, request, small);
    if (lane == nullptr) return result;
    LaneGuard guard(this, lane);
    // Announced to the request, which shuts the stream down if it is canceled meanwhile.
    IoScope io(this, lane, stream, request);
    if (!io.Begin()) return CanceledResult();
    bool failed = false;
    while (done < count) {
      size_t chunk = std::min<size_t>(count - done, wire::kMaxRangesPerRequest);
      result = io_fn(*stream, segs + done, chunk, next_request_id_.fetch_add(1), deadline);
      if (result.status != adxl::SUCCESS) {
        failed = true;
        break;
      }
      done += chunk;
      if (result.broken) break;  // done, but the lane cannot carry more: the rest goes on another
    }
    const bool cut = io.End();
    if (result.broken && !cut) DropLane(lane, stream);
    if (cut) return CanceledResult();
    if (failed) return result;
  }
  return result;
}

LaneResult LanePool::RunOnce(Deadline deadline, TransferRequest *request, const LaneIo &io_fn) {
  LaneResult result;
  std::shared_ptr<ByteStream> stream;
  Lane *lane = Acquire(deadline, &result.status, &result.error, &stream, request, /*small=*/true);
  if (lane == nullptr) return result;
  LaneGuard guard(this, lane);
  IoScope io(this, lane, stream, request);
  if (!io.Begin()) return CanceledResult();
  result = io_fn(*stream, next_request_id_.fetch_add(1));
  const bool cut = io.End();
  if (result.broken && !cut) DropLane(lane, stream);
  return cut ? CanceledResult() : result;
}

bool LanePool::HasUsableLink(const char *name) const {
  for (const auto &link : links_) {
    if (link && strcmp(link->Caps().name, name) == 0 && link->Usable()) return true;
  }
  return false;
}

void LanePool::DropLane(Lane *lane, const std::shared_ptr<ByteStream> &stream) {
  stream->Shutdown();
  std::lock_guard lock(mutex_);
  if (lane->stream == stream) lane->stream.reset();
}

namespace {

// Severity order for combining the results of parallel parts: the most
// specific cause wins (a refused range over a timeout over a generic failure).
int Rank(adxl::Status s) {
  if (s == adxl::SUCCESS) return 0;
  if (s == adxl::PARAM_INVALID) return 3;
  if (s == adxl::TIMEOUT) return 2;
  return 1;
}

}  // namespace

adxl::Status LanePool::Transfer(adxl::TransferOp op, const std::vector<Segment> &segs, Deadline deadline,
                                std::string *error, TransferRequest *request, MemoryKind kind) {
  if (segs.empty()) return adxl::SUCCESS;
  uint64_t total = 0;
  for (const auto &s : segs) total += s.len;
  if (request != nullptr) request->total_bytes = total;
  TransportLink *order[8];
  const size_t offered = OrderPaths(links_.data(), links_.size(), op, total, segs.size(), kind, order, 8);
  for (size_t i = 0; i < offered; ++i) {
    TransportResult r = RunOnLink(order[i], op, segs, total, deadline, request);
    if (r.declined) continue;
    if (request != nullptr) request->transport = metrics::TransportIndex(order[i]->Caps().name);
    *error = std::move(r.error);
    return r.status;
  }
  *error = "no transport reaches " + peer_name_ + " for this transfer";
  return adxl::FAILED;
}

TransportResult LanePool::RunOnLink(TransportLink *link, adxl::TransferOp op, const std::vector<Segment> &segs,
                                    uint64_t total, Deadline deadline, TransferRequest *request) {
  const size_t lanes = std::min(LaneCount(), link->Caps().max_parallel);
  const size_t parts = workers_ != nullptr ? PartsFor(link->Caps(), total, lanes, split_rule_) : 1;
  if (parts == 1) {
    TransferBatch batch;
    batch.op = op;
    batch.segs = segs.data();
    batch.count = segs.size();
    batch.total_bytes = total;
    batch.deadline = deadline;
    batch.request = request;
    return link->Submit(batch);
  }

  // Split by bytes into `parts` contiguous pieces, cutting segments where needed.
  // Shared with the queued part tasks, which may run after this call returned.
  struct Split {
    explicit Split(size_t parts) : pieces(parts), results(parts), claimed(new std::atomic<bool>[parts]()) {}
    std::vector<std::vector<Segment>> pieces;
    std::vector<TransportResult> results;
    std::unique_ptr<std::atomic<bool>[]> claimed;  // a thread has taken the part
    std::mutex mutex;
    std::condition_variable finished_cv;
    size_t finished = 0;  // parts that ran (guarded by mutex)
  };
  auto split = std::make_shared<Split>(parts);
  std::vector<std::vector<Segment>> &pieces = split->pieces;
  const uint64_t target = (total + parts - 1) / parts;
  size_t p = 0;
  uint64_t filled = 0;
  for (const auto &s : segs) {
    Segment rest = s;
    while (rest.len > 0) {
      uint64_t room = target - filled;
      uint64_t take = std::min(room, rest.len);
      pieces[p].push_back({rest.local, rest.remote, take});
      rest.local += take;
      rest.remote += take;
      rest.len -= take;
      filled += take;
      if (filled == target && p + 1 < parts) {
        ++p;
        filled = 0;
      }
    }
  }
  // Runs part i unless another thread took it first. Each part records its
  // outcome and nothing escapes it. A queued copy that runs after every part
  // was taken touches nothing but `split`.
  // The link outlives the parts: the pool (its owner) waits for them below.
  auto run_part = [link, split, op, deadline, request](size_t i) {
    if (split->claimed[i].exchange(true)) return;
    TransportResult &result = split->results[i];
    if (!RunGuarded("transfer part", [&] {
          const std::vector<Segment> &piece = split->pieces[i];
          if (piece.empty()) return;
          TransferBatch batch;
          batch.op = op;
          batch.segs = piece.data();
          batch.count = piece.size();
          for (const Segment &s : piece) batch.total_bytes += s.len;
          batch.deadline = deadline;
          batch.request = request;
          batch.part = true;
          result = link->Submit(batch);
          if (result.declined) {  // the path ended under a part already split for it
            result.status = adxl::FAILED;
            result.error = std::string("the ") + link->Caps().name + " path ended during the transfer";
          }
        })) {
      result.status = adxl::FAILED;
      result.error = "out of memory";
    }
    std::lock_guard lock(split->mutex);
    ++split->finished;
    split->finished_cv.notify_all();
  };
  // A part that cannot be queued is run below by the caller.
  for (size_t i = 1; i < parts; ++i) workers_->Submit([run_part, i] { run_part(i); });
  // The caller runs part 0, then every part no worker has started yet: a
  // caller that is itself a worker (a request run on the pool) never waits
  // for parts queued behind it, so requests cannot deadlock the pool. It
  // holds a lane only while doing I/O.
  for (size_t i = 0; i < parts; ++i) run_part(i);
  {
    std::unique_lock lock(split->mutex);
    split->finished_cv.wait(lock, [&] { return split->finished == parts; });
  }
  TransportResult worst;
  for (const auto &r : split->results) {
    if (Rank(r.status) > Rank(worst.status)) worst = r;
  }
  return worst;
}

adxl::Status LanePool::AppCall(uint32_t app_type, const std::string &request, Deadline deadline,
                               std::string *response, std::string *error) {
  adxl::Status status = adxl::SUCCESS;
  std::shared_ptr<ByteStream> stream;
  Lane *lane = Acquire(deadline, &status, error, &stream, nullptr, request.size() <= kExpressMaxBytes);
  if (lane == nullptr) return status;
  LaneGuard guard(this, lane);
  LaneResult r = ExecuteAppCall(*stream, app_type, request, next_request_id_.fetch_add(1), deadline, response);
  if (r.broken) DropLane(lane, stream);
  *error = r.error;
  return r.status;
}

}  // namespace llmdd
