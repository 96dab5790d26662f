// LanePool: the requester side of a peer link. Owns up to kMaxLanes streams on
// which this engine sends requests, splits a transfer across them, and keeps
// each request bounded by the caller's deadline.
//
// Thread-safe: any number of threads may call Transfer/AppCall at once; each
// lane carries one request at a time. A lane whose framing broke (timeout or
// error mid-message) is dropped and, when a reconnector is set, reopened on
// next use.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/lane.h"
#include "engine/worker_pool.h"

namespace llmdd {

class LanePool {
 public:
  static constexpr size_t kMaxLanes = 64;
  // Opens a fresh lane to the same peer; returns nullptr with *error on failure.
  using Reconnector = std::function<std::shared_ptr<ByteStream>(Deadline, std::string *error)>;

  LanePool(std::string peer_name, WorkerPool *workers, Reconnector reconnect);
  ~LanePool();

  // Adds a lane; false when kMaxLanes are already present.
  bool AddLane(std::shared_ptr<ByteStream> stream);
  size_t LaneCount() const { return count_.load(); }
  size_t LiveLaneCount() const;

  // Moves `segs` (already validated). Returns an adxl status; *error says why on failure.
  adxl::Status Transfer(adxl::TransferOp op, const std::vector<Segment> &segs, Deadline deadline,
                        std::string *error);
  adxl::Status AppCall(uint32_t app_type, const std::string &request, Deadline deadline, std::string *response,
                       std::string *error);
  // Same-host requests to the verified peer process (null: off). Set once both
  // sides verified they reach each other's memory, before the pool is used.
  void SetSameHost(std::shared_ptr<PeerProcess> peer) { same_host_ = std::move(peer); }
  // While the peer process is still trusted (it ends for good when it is gone).
  bool SameHost() const { return same_host_ && !same_host_->Gone(); }

  // Wakes every blocked request and stops reconnecting; used by Disconnect/Finalize.
  void ShutdownAll();

  // Same-host READs this small (bytes and descriptors) are copied one-sidedly
  // under a standing read lease, renewed this long before it ends.
  static constexpr size_t kOneSidedMaxDescriptors = 64;
  static constexpr std::chrono::milliseconds kLeaseRenewMargin{20};

  // Transfers of at least this many bytes are split across lanes.
  static constexpr uint64_t kParallelThreshold = 1ULL << 20;
  static constexpr uint64_t kMinPartBytes = 256ULL << 10;

 private:
  // `busy` is held by the one request using the lane; the stream pointer has its
  // own small lock so ShutdownAll() can reach it while a request runs.
  struct Lane {
    std::mutex busy;  // try_lock + short sleeps: TSan models plain mutexes precisely
    std::shared_ptr<ByteStream> Get() {
      std::lock_guard lock(ptr_mutex);
      return stream;
    }
    void Set(std::shared_ptr<ByteStream> s) {
      std::lock_guard lock(ptr_mutex);
      stream = std::move(s);
    }

   private:
    std::mutex ptr_mutex;
    std::shared_ptr<ByteStream> stream;  // null when broken
  };
  class LaneGuard;

  // Locks a lane with a usable stream (reconnecting if allowed) within the deadline.
  Lane *Acquire(Deadline deadline, adxl::Status *status, std::string *error);
  LaneResult RunPart(adxl::TransferOp op, const Segment *segs, size_t count, Deadline deadline);
  // Closes a lane whose framing is unknown; Acquire reopens it on next use.
  static void DropLane(Lane *lane, const std::shared_ptr<ByteStream> &stream);
  // Small same-host READ as one process_vm_readv under the standing lease;
  // false: not done (no lease, range not listed, copy failed, lease ran out),
  // the caller sends a request instead (which also reports any error).
  bool TryOneSidedRead(const std::vector<Segment> &segs, Deadline deadline);
  // The current lease if it has some life left, renewing it when due (one
  // renewal at a time; a failed one is retried after a pause).
  std::shared_ptr<const ReadLease> UsableLease(Deadline deadline);

  std::string peer_name_;
  WorkerPool *workers_;
  Reconnector reconnect_;
  Lane lanes_[kMaxLanes];
  std::atomic<size_t> count_{0};
  std::mutex add_mutex_;
  std::atomic<uint64_t> next_request_id_{1};
  std::atomic<bool> shut_down_{false};
  std::shared_ptr<PeerProcess> same_host_;  // written only before the pool is shared
  std::mutex lease_mutex_;
  std::shared_ptr<const ReadLease> lease_;  // guarded by lease_mutex_
  bool lease_renewing_ = false;
  Deadline::Clock::time_point lease_retry_after_{};
};

}  // namespace llmdd
