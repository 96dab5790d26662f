#include "engine/lane_pool.h"

#include <algorithm>
#include <thread>

#include "common/log.h"
#include "common/threads.h"
#include "transport/shm/cma.h"

namespace llmdd {

LanePool::LanePool(std::string peer_name, WorkerPool *workers, Reconnector reconnect)
    : peer_name_(std::move(peer_name)), workers_(workers), reconnect_(std::move(reconnect)) {}

LanePool::~LanePool() { ShutdownAll(); }

bool LanePool::AddLane(std::shared_ptr<ByteStream> stream) {
  std::lock_guard lock(add_mutex_);
  size_t n = count_.load();
  if (n >= kMaxLanes) return false;
  lanes_[n].Set(std::move(stream));
  count_.store(n + 1);
  return true;
}

size_t LanePool::LiveLaneCount() const {
  size_t live = 0;
  size_t n = count_.load();
  for (size_t i = 0; i < n; ++i) {
    if (const_cast<Lane &>(lanes_[i]).Get()) ++live;
  }
  return live;
}

void LanePool::ShutdownAll() {
  shut_down_.store(true);
  size_t n = count_.load();
  // Shutdown() is safe while another thread is inside a request on the stream.
  for (size_t i = 0; i < n; ++i) {
    std::shared_ptr<ByteStream> stream = lanes_[i].Get();
    if (stream) stream->Shutdown();
  }
}

class LanePool::LaneGuard {
 public:
  explicit LaneGuard(Lane *lane) : lane_(lane) {}
  ~LaneGuard() {
    if (lane_) lane_->busy.unlock();
  }
  LaneGuard(const LaneGuard &) = delete;
  LaneGuard &operator=(const LaneGuard &) = delete;

 private:
  Lane *lane_;
};

LanePool::Lane *LanePool::Acquire(Deadline deadline, adxl::Status *status, std::string *error) {
  error->clear();
  const size_t n = count_.load();
  if (n == 0 || shut_down_.load()) {
    *status = adxl::FAILED;
    *error = "no open connection to " + peer_name_;
    return nullptr;
  }
  // Lowest free lane first, not round robin: a caller issuing small calls one
  // after another keeps using one warm lane (its serving thread spins for the
  // next request, see TcpStream) while the other lanes' threads sleep.
  const size_t start = 0;
  auto usable = [&](Lane &lane) -> bool {
    if (lane.Get()) return true;
    if (!reconnect_ || shut_down_.load()) return false;
    std::string why;
    std::shared_ptr<ByteStream> fresh = reconnect_(deadline, &why);
    if (!fresh) {
      *error = "cannot reopen a connection to " + peer_name_ + ": " + why;
      *status = deadline.Expired() ? adxl::TIMEOUT : adxl::FAILED;
      return false;
    }
    lane.Set(std::move(fresh));
    return true;
  };
  bool any_alive_or_reconnectable = false;
  for (size_t i = 0; i < n; ++i) {
    Lane &lane = lanes_[(start + i) % n];
    if (!lane.busy.try_lock()) {
      any_alive_or_reconnectable = true;
      continue;
    }
    if (usable(lane)) return &lane;
    lane.busy.unlock();
    if (!error->empty()) return nullptr;  // reconnect attempted and failed
  }
  if (!any_alive_or_reconnectable) {
    *status = adxl::FAILED;
    *error = "all connections to " + peer_name_ + " are lost";
    return nullptr;
  }
  // Every lane is busy: wait for one, in rotation order, until the deadline.
  for (size_t i = 0; !deadline.Expired(); i = (i + 1) % n) {
    Lane &lane = lanes_[(start + i) % n];
    if (!lane.busy.try_lock()) {
      if (i + 1 == n) std::this_thread::sleep_for(std::chrono::microseconds(200));
      continue;
    }
    if (usable(lane)) return &lane;
    lane.busy.unlock();
    if (!error->empty()) return nullptr;
  }
  *status = adxl::TIMEOUT;
  *error = "no free connection to " + peer_name_ + " before the deadline";
  return nullptr;
}

LaneResult LanePool::RunPart(adxl::TransferOp op, const Segment *segs, size_t count, Deadline deadline) {
  LaneResult result;
  size_t done = 0;
  while (done < count) {
    Lane *lane = Acquire(deadline, &result.status, &result.error);
    if (lane == nullptr) return result;
    LaneGuard guard(lane);
    std::shared_ptr<ByteStream> stream = lane->Get();
    while (done < count) {
      size_t chunk = std::min<size_t>(count - done, wire::kMaxRangesPerRequest);
      result = ExecuteTransfer(*stream, op, segs + done, chunk, next_request_id_.fetch_add(1), deadline,
                               same_host_.get());
      if (result.status != adxl::SUCCESS) {
        if (result.broken) DropLane(lane, stream);
        return result;
      }
      done += chunk;
      if (result.broken) {  // done, but the lane cannot carry more: the rest goes on another
        DropLane(lane, stream);
        break;
      }
    }
  }
  return result;
}

void LanePool::DropLane(Lane *lane, const std::shared_ptr<ByteStream> &stream) {
  stream->Shutdown();
  lane->Set(nullptr);
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

std::shared_ptr<const ReadLease> LanePool::UsableLease(Deadline deadline) {
  const auto now = Deadline::Clock::now();
  {
    std::lock_guard lock(lease_mutex_);
    if (lease_ && now + kLeaseRenewMargin < lease_->expiry) return lease_;
    if (lease_renewing_ || now < lease_retry_after_) return lease_ && now < lease_->expiry ? lease_ : nullptr;
    lease_renewing_ = true;
  }
  auto fresh = std::make_shared<ReadLease>();
  LaneResult r;
  if (Lane *lane = Acquire(deadline, &r.status, &r.error)) {
    LaneGuard guard(lane);
    std::shared_ptr<ByteStream> stream = lane->Get();
    r = ExecuteLeaseRequest(*stream, next_request_id_.fetch_add(1), deadline, fresh.get());
    if (r.broken) DropLane(lane, stream);
  }
  std::lock_guard lock(lease_mutex_);
  lease_renewing_ = false;
  if (r.status == adxl::SUCCESS) {
    lease_ = std::move(fresh);
    return lease_;
  }
  LOG_DEBUG("no standing read lease from %s (%s): small reads use requests for a while", peer_name_.c_str(),
            r.error.c_str());
  lease_.reset();
  lease_retry_after_ = now + std::chrono::seconds(1);
  return nullptr;
}

bool LanePool::TryOneSidedRead(const std::vector<Segment> &segs, Deadline deadline) {
  if (!SameHost() || shut_down_.load()) return false;
  std::shared_ptr<const ReadLease> lease = UsableLease(deadline);
  if (!lease) return false;
  thread_local std::vector<iovec> local, remote;
  local.clear();
  remote.clear();
  for (const Segment &s : segs) {
    if (!lease->Covers(s.remote, s.len)) return false;  // not listed (yet): the server decides
    local.push_back({reinterpret_cast<void *>(s.local), s.len});
    remote.push_back({reinterpret_cast<void *>(s.remote), s.len});
  }
  const Deadline lease_end(lease->expiry);
  if (same_host_->CopyFrom(local.data(), local.size(), remote.data(), remote.size(), deadline.EarlierOf(lease_end)) !=
      0)
    return false;
  return !lease_end.Expired();  // copied entirely while the regions were leased
}

adxl::Status LanePool::Transfer(adxl::TransferOp op, const std::vector<Segment> &segs, Deadline deadline,
                                std::string *error) {
  if (segs.empty()) return adxl::SUCCESS;
  uint64_t total = 0;
  for (const auto &s : segs) total += s.len;
  if (op == adxl::READ && SameHost() && segs.size() <= kOneSidedMaxDescriptors &&
      total < kSameHostMinReadBytes) {
    if (TryOneSidedRead(segs, deadline)) return adxl::SUCCESS;
    if (deadline.Expired()) {  // renewing the lease took the whole time: the peer does not answer
      *error = "no answer from " + peer_name_ + " before the deadline (read lease renewal)";
      return adxl::TIMEOUT;
    }
  }
  size_t parts = 1;
  const size_t lanes = count_.load();
  if (total >= kParallelThreshold && lanes > 1 && workers_ != nullptr) {
    parts = static_cast<size_t>(std::min<uint64_t>(lanes, total / kMinPartBytes));
    parts = std::max<size_t>(parts, 1);
  }
  if (parts == 1) {
    LaneResult r = RunPart(op, segs.data(), segs.size(), deadline);
    *error = r.error;
    return r.status;
  }

  // Split by bytes into `parts` contiguous pieces, cutting segments where needed.
  std::vector<std::vector<Segment>> pieces(parts);
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
  std::vector<LaneResult> results(parts);
  Latch latch(static_cast<int>(parts - 1));
  // Each part records its outcome and nothing escapes it: the latch must be
  // counted down, and the stack the parts share must outlive them all.
  auto run_part = [&](size_t i) {
    if (!RunGuarded("transfer part", [&] {
          if (!pieces[i].empty()) results[i] = RunPart(op, pieces[i].data(), pieces[i].size(), deadline);
        })) {
      results[i].status = adxl::FAILED;
      results[i].error = "out of memory";
    }
  };
  for (size_t i = 1; i < parts; ++i) {
    auto task = [&, i] {
      run_part(i);
      latch.CountDown();
    };
    if (!workers_->Submit(task)) task();  // cannot queue it: do it here
  }
  // The caller works on part 0 itself; it holds a lane only while doing I/O, so
  // waiting for the other parts afterwards cannot deadlock the pool.
  run_part(0);
  latch.Wait();
  adxl::Status worst = adxl::SUCCESS;
  for (const auto &r : results) {
    if (Rank(r.status) > Rank(worst)) {
      worst = r.status;
      *error = r.error;
    }
  }
  return worst;
}

adxl::Status LanePool::AppCall(uint32_t app_type, const std::string &request, Deadline deadline,
                               std::string *response, std::string *error) {
  adxl::Status status = adxl::SUCCESS;
  Lane *lane = Acquire(deadline, &status, error);
  if (lane == nullptr) return status;
  LaneGuard guard(lane);
  std::shared_ptr<ByteStream> stream = lane->Get();
  LaneResult r = ExecuteAppCall(*stream, app_type, request, next_request_id_.fetch_add(1), deadline, response);
  if (r.broken) DropLane(lane, stream);
  *error = r.error;
  return r.status;
}

}  // namespace llmdd
