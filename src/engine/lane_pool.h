// LanePool: the requester side of a peer link. Owns up to kMaxLanes streams on
// which this engine sends requests (lent to transports, LaneLender) and the
// transport links to the peer (transport/transport.h); a transfer is offered
// to the links in the path policy's order (engine/path_policy.h), split into
// parts that run at once where the policy says it pays, and bounded by the
// caller's deadline.
//
// Thread-safe: any number of threads may call Transfer/AppCall at once; each
// lane carries one request at a time, and a caller that finds every lane busy
// waits in a queue (a condition variable) for the next one freed, until its
// deadline. Lanes of a pool with a reconnector are opened when first needed,
// closed after they sat idle (CloseIdle), and reopened when needed again; a
// lane whose framing broke (timeout or error mid-message) is dropped the same way.
//
// A transfer may run for a TransferRequest (engine/transfer_request.h): its
// I/O is then announced to the request, which can cancel it (the lanes it is
// using are shut down and dropped; a wait for a free lane is woken).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/threads.h"
#include "engine/lane.h"
#include "engine/path_policy.h"
#include "engine/transfer_request.h"
#include "engine/worker_pool.h"

namespace llmdd {

class LanePool : public LaneLender {
 public:
  static constexpr size_t kMaxLanes = 64;
  // Told the connection a lane is being opened on once it exists (before its
  // handshake), and null before the opener returns (OpenPeerConnection's
  // `opening`): a Cancel of the request the lane is opened for shuts it down,
  // so a canceled request's runner does not wait for a frozen peer's answer.
  using Opening = std::function<void(ByteStream *)>;
  // Opens a fresh lane to the same peer; returns nullptr with *status (the
  // peer's refusal, TIMEOUT, FAILED) and *error on failure. It may ignore
  // `opening` (the lane is then opened to its end or the deadline).
  using Reconnector = std::function<std::shared_ptr<ByteStream>(Deadline, adxl::Status *status, std::string *error,
                                                                const Opening &opening)>;

  LanePool(std::string peer_name, WorkerPool *workers, Reconnector reconnect);
  ~LanePool() override;

  // Adds a connected lane; false when kMaxLanes are already present.
  // reserved: the lane is added busy, so no request takes it until
  // ReleaseReserved (a reverse lane is published before its HelloAck is
  // written, and carries nothing before it).
  bool AddLane(std::shared_ptr<ByteStream> stream, bool reserved = false);
  void ReleaseReserved(const std::shared_ptr<ByteStream> &stream);
  // Adds `n` lanes that are opened on first use (the pool needs a reconnector).
  void AddLazyLanes(size_t n);
  size_t LaneCount() const override;
  size_t LiveLaneCount() const;
  // Closes lanes no request has used for `idle`; they reopen when needed.
  // Returns how many it closed.
  size_t CloseIdle(std::chrono::milliseconds idle);

  // Moves `segs` (already validated) over the first link the path policy
  // offers it to that does not decline it. Returns an adxl status; *error
  // says why on failure. With a `request`, stops early once it is canceled.
  // `kind`: where the local ranges live (the policy skips links that cannot reach it).
  adxl::Status Transfer(adxl::TransferOp op, const std::vector<Segment> &segs, Deadline deadline,
                        std::string *error, TransferRequest *request = nullptr, MemoryKind kind = MemoryKind::kHost);
  adxl::Status AppCall(uint32_t app_type, const std::string &request, Deadline deadline, std::string *response,
                       std::string *error);
  // The links transfers are offered to (a TCP link over these lanes, the
  // same-host link when the handshake verified the peer, a fake in tests).
  // Set once, before the pool is used.
  void SetLinks(std::vector<std::shared_ptr<TransportLink>> links) { links_ = std::move(links); }
  // How transfers are split into parts (path_policy.h, PartsFor). Set once,
  // before the pool is used; by default: this process's cores, the default part size.
  void SetSplitRule(const SplitRule &rule) { split_rule_ = rule; }
  // Whether lanes can be (re)opened from this side (a reconnector was given).
  bool CanReconnect() const { return static_cast<bool>(reconnect_); }
  // Whether a usable link of this transport (TransportCaps::name) is present.
  bool HasUsableLink(const char *name) const;
  // The same-host path, while the verified peer process is still trusted.
  bool SameHost() const { return HasUsableLink("shm"); }

  // LaneLender (transports run their requests on these lanes).
  LaneResult RunChunks(const TransferBatch &batch, const ChunkIo &io) override;
  LaneResult RunOnce(Deadline deadline, TransferRequest *request, const LaneIo &io) override;
  const std::string &PeerName() const override { return peer_name_; }

  // Wakes every blocked request and stops reconnecting; used by Disconnect/Finalize.
  void ShutdownAll();
  // Wakes the callers waiting for a free lane so they look again (a request
  // was canceled), and shuts down the lanes being opened for `canceled`.
  void WakeWaiters(const TransferRequest *canceled = nullptr);

 private:
  struct Lane {
    std::shared_ptr<ByteStream> stream;  // null: not open (yet, or any more)
    bool busy = false;                   // a request (or its reconnect) owns the lane
    Deadline::Clock::time_point last_used{};
    // Not reopened before this after the peer refused to open it (other
    // lanes carry the requests meanwhile).
    Deadline::Clock::time_point retry_after{};
    // While it is being opened: for which request (null: none), its
    // connection once it exists, and whether that request was canceled.
    const TransferRequest *opening_for = nullptr;
    ByteStream *opening = nullptr;
    bool opening_canceled = false;
  };
  class LaneGuard;
  class IoScope;

  // Reserves a free lane with a usable stream (opening it if needed) within
  // the deadline; null with *status and *error when none can be had. The
  // lane is released by LaneGuard.
  // A canceled `request` ends the wait (FAILED).
  // small: a request of at most kExpressMaxBytes, which may take the express lane.
  Lane *Acquire(Deadline deadline, adxl::Status *status, std::string *error,
                std::shared_ptr<ByteStream> *stream, const TransferRequest *request = nullptr, bool small = false);
  void Release(Lane *lane);
  // mutex_ held: wakes one waiter that can take the lane just freed
  // (express: the express lane), or every waiter (shutdown, new lanes, cancel).
  void WakeOneLocked(bool express);
  void WakeAllLocked();
  // mutex_ held: calls fn(lane) for every slot, the regular lanes and the
  // express lane (the one place that knows where the slots are).
  template <typename Fn>
  void ForEachSlotLocked(Fn fn) {
    for (size_t i = 0; i < count_; ++i) fn(lanes_[i]);
    fn(lanes_[kExpressLane]);
  }
  template <typename Fn>
  void ForEachSlotLocked(Fn fn) const {
    for (size_t i = 0; i < count_; ++i) fn(lanes_[i]);
    fn(lanes_[kExpressLane]);
  }
  // Moves `segs` over `link`, split into parts that run at once on the worker
  // pool where the policy says so.
  TransportResult RunOnLink(TransportLink *link, adxl::TransferOp op, const std::vector<Segment> &segs,
                            uint64_t total, Deadline deadline, TransferRequest *request);
  // Closes a lane whose framing is unknown; Acquire reopens it on next use.
  void DropLane(Lane *lane, const std::shared_ptr<ByteStream> &stream);
  std::string peer_name_;
  WorkerPool *workers_;
  Reconnector reconnect_;
  mutable std::mutex mutex_;          // guards lanes_ and count_
  std::condition_variable freed_;        // large requests: a regular lane was released (or the pool shut down)
  std::condition_variable small_freed_;  // small requests: any lane was released (or the pool shut down)
  size_t bulk_waiting_ = 0;              // threads waiting on freed_ (guarded by mutex_)
  size_t small_waiting_ = 0;             // threads waiting on small_freed_ (guarded by mutex_)
  // lanes_[0, count_) are the regular lanes; lanes_[kExpressLane] is the
  // express lane, opened (pools with a reconnector only) when a small request
  // finds every regular lane busy, so that it never waits behind large
  // transfers; it closes when idle like the others.
  static constexpr size_t kExpressLane = kMaxLanes;
  Lane lanes_[kMaxLanes + 1];
  size_t count_ = 0;
  std::atomic<uint64_t> next_request_id_{1};
  std::atomic<bool> shut_down_{false};
  std::vector<std::shared_ptr<TransportLink>> links_;  // written only before the pool is shared
  SplitRule split_rule_{UsableCores(), kSameHostMinPartBytesDefault};  // written only before the pool is shared
};

}  // namespace llmdd
