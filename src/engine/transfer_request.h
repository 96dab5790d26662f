// TransferRequest: one transfer as an object with a process-unique id, a
// deadline, exactly one terminal outcome, a completion callers wait on, and a
// Cancel (docs/ARCHITECTURE.md, "Requests").
//
// Lifecycle: queued -> running -> done. It becomes done exactly once, with
//   - the runner's outcome (SUCCESS, or the failure status, TIMEOUT included)
//     when it ends by itself, or
//   - the status Cancel() was given (kCanceledStatus, adxl::FAILED, unless
//     its deadline timer canceled it: TIMEOUT) with Canceled() true when
//     Cancel() came first: at once if it was moving no bytes at that moment,
//     else as soon as the I/O it had in progress returns (Cancel shuts those
//     lanes down).
// Once done, the runner starts no more I/O into or out of the request's local
// buffers (BeginIo refuses), so a caller may reuse them when Wait returns true.
//
// Thread-safe. The caller side is Wait/Done/Status/Error/Canceled/Cancel; the
// runner side (Engine, LanePool) is BeginIo/EndIo/CancelRequested/Finish.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/deadline.h"
#include "engine/lane.h"

namespace llmdd {

class LanePool;

class TransferRequest {
 public:
  // I/O at once on one request: one per lane (LanePool::kMaxLanes) and a
  // one-sided copy.
  static constexpr size_t kMaxIo = 72;

  // A canceled request ends with FAILED: that is what CANN's TransferStatus
  // has for a request that did not complete (WAITING/COMPLETED/TIMEOUT/FAILED,
  // no CANCELED), and what CANN's GetTransferStatus reports (FAILED, or the
  // call NOT_CONNECTED) for async requests torn down by Disconnect/Finalize.
  // TIMEOUT stays reserved for the deadline.
  static constexpr adxl::Status kCanceledStatus = adxl::FAILED;

  // `segs` is the request's own copy. The second form borrows the caller's
  // segments, which must outlive the request's run (a caller that runs the
  // request on its own thread and waits for it).
  TransferRequest(std::string key, adxl::TransferOp op, std::vector<Segment> segs, Deadline deadline);
  TransferRequest(std::string key, adxl::TransferOp op, const std::vector<Segment> *borrowed, Deadline deadline);
  TransferRequest(const TransferRequest &) = delete;
  TransferRequest &operator=(const TransferRequest &) = delete;

  uint64_t Id() const { return id_; }  // process-unique, increasing, never 0
  const std::string &Key() const { return key_; }
  adxl::TransferOp Op() const { return op_; }
  Deadline GetDeadline() const { return deadline_; }
  const std::vector<Segment> &Segments() const { return *segs_; }

  // ---- caller side ----
  // Waits until the request is done or `deadline` passes (a condition
  // variable, no polling); true when done. The request goes on either way.
  bool Wait(Deadline deadline) const;
  bool Done() const;
  // The terminal outcome; meaningful once Done() (FAILED before).
  adxl::Status Status() const;
  std::string Error() const;
  // Both at once.
  adxl::Status Outcome(std::string *error) const;
  // True when the request ended because of Cancel().
  bool Canceled() const;
  // True while it has I/O in progress on its local buffers (diagnostics, tests).
  bool MovingBytes() const;
  // Ends the request promptly with `status` (kCanceledStatus; TIMEOUT when
  // its deadline ended it): lanes it is moving bytes on are shut down (the
  // server abandons the request; the lane reopens on next use), a wait for a
  // free lane is woken. Nothing when already done or canceled.
  void Cancel(const std::string &why = "canceled", adxl::Status status = kCanceledStatus);

  // ---- coalescing (several queued requests carried as one, Engine) ----
  // From now on this request's bytes move as part of `group`, a request that
  // carries this one's segments with others': Cancel cancels the group, and
  // this request counts as moving bytes (it does not end on a Cancel) until
  // Detach. False, nothing attached, when it is canceled or done already.
  // The caller keeps `group` alive until Detach.
  bool AttachTo(TransferRequest *group);
  void Detach();

  // ---- runner side ----
  // Runs once when the request becomes done, on the completing thread,
  // under the request's lock and before any waiter returns from Wait (the
  // engine releases its in-flight slot there): it must not block or lock.
  using DoneHook = void (*)(void *context);
  // Before the request is shared with another thread: the done hook, and
  // the pool it runs on (Cancel wakes its waiters). The runner keeps the
  // pool alive until the request is done.
  void Arm(DoneHook on_done, void *context, LanePool *pool);
  bool CancelRequested() const { return cancel_requested_.load(std::memory_order_acquire); }
  // The flag CancelRequested reads, for copy loops that check it between
  // calls (PeerProcess::CopyFrom); valid while the request lives.
  const std::atomic<bool> *CancelFlag() const { return &cancel_requested_; }
  // Announces I/O on `stream` (null: a copy without a stream, e.g. a
  // one-sided read) touching the local buffers. False once canceled or done:
  // do not start it.
  // The caller keeps `stream` alive until EndIo.
  bool BeginIo(ByteStream *stream);
  // The I/O announced with BeginIo ended. True when Cancel shut `stream`
  // down meanwhile: the lane is no longer usable, drop it.
  bool EndIo(ByteStream *stream);
  // The runner's outcome; ignored when already done, replaced by the
  // canceled outcome when Cancel came first. Then *status and *error hold
  // the request's outcome.
  void Finish(adxl::Status *status, std::string *error);
  void Finish(adxl::Status status, std::string error) { Finish(&status, &error); }

  // The engine's list of requests whose runner has not let go, and what the
  // engine cancels by (guarded by the engine's lock, not by this request's).
  TransferRequest *live_prev = nullptr;
  TransferRequest *live_next = nullptr;
  const void *live_channel = nullptr;  // the channel it runs on, if any
  bool live_submitted = false;         // queued by SubmitTransfer (no caller waits in it)

  // What the engine's metrics and per-transfer record report (engine/metrics.h),
  // written by the engine and the runner's thread before the request ends
  // and read by the thread that ends it.
  std::chrono::steady_clock::time_point submitted_at{};  // admitted
  std::chrono::steady_clock::time_point started_at{};    // its runner took it (== submitted_at when run at once)
  // A clock reading a path took right after the request's last byte moved
  // (the one-sided same-host read checks its lease with one), so that the
  // record needs no clock read of its own: on an 8 B same-host READ that
  // read was 2% of the call. Set only by a batch that carries the whole
  // request (its total_bytes equal the request's: not one part of a split);
  // unset: the record reads the clock.
  std::chrono::steady_clock::time_point ended_at{};
  uint64_t descriptors_submitted = 0;                    // as the caller passed them (0: Segments().size())
  uint64_t total_bytes = UINT64_MAX;                     // set by the lane pool (UINT64_MAX: not known yet)
  uint8_t transport = 3;                                 // metrics::Transport of the path that took it (3: none)

 private:
  // Completes with `status` (mutex_ held).
  void CompleteLocked(adxl::Status status, std::string error, bool canceled);

  static std::atomic<uint64_t> next_id_;
  const uint64_t id_;
  const std::string key_;
  const adxl::TransferOp op_;
  const std::vector<Segment> owned_;
  const std::vector<Segment> *const segs_;
  const Deadline deadline_;

  mutable std::mutex mutex_;
  mutable std::condition_variable done_cv_;
  std::atomic<bool> cancel_requested_{false};
  bool finished_ = false;  // the outcome is set (guarded by mutex_)
  adxl::Status status_ = adxl::FAILED;
  std::string error_;
  bool canceled_ = false;
  std::string cancel_reason_;
  adxl::Status cancel_status_ = kCanceledStatus;  // what Cancel was given (guarded by mutex_)
  // I/O in progress (null entries: copies without a stream). Cancel shuts
  // down every stream here; BeginIo refuses after it, so every stream still
  // here after a Cancel is one it shut down. Inline: no allocation per request.
  ByteStream *io_[kMaxIo];  // the first io_count_ are set
  size_t io_count_ = 0;
  mutable int waiters_ = 0;  // threads in Wait (guarded by mutex_): no notify without them
  LanePool *pool_ = nullptr;  // null once done
  TransferRequest *group_ = nullptr;  // the request carrying this one's bytes (AttachTo)
  DoneHook on_done_ = nullptr;
  void *on_done_context_ = nullptr;
};

}  // namespace llmdd
