// AsyncRequests: the engine's table of asynchronous transfers, what CANN's
// TransferAsync / GetTransferStatus (and HIXL's bulk GetTransferStatus) see.
//
// Each entry is a TransferRequest the engine submitted (Engine::SubmitTransfer
// runs it on the worker pool), the channel it runs on and the caller's
// user_data, keyed by the request's id (process-unique, increasing, never 0).
// A query reports WAITING while the request runs; COMPLETED (it succeeded),
// TIMEOUT (only for a request with its own deadline, llmdd/extensions.h
// SetTransferTimeout, that ended TIMEOUT) or FAILED (anything else: a
// failure, Disconnect/Finalize canceled it, the peer died, it ran past
// llmdd.AsyncTransferMaxMs) are terminal and remove the entry, so querying it
// again finds nothing. A query of a request whose peer
// the channel declared dead (heartbeats) cancels it: a frozen peer ends the
// requests of whoever polls them within llmdd.PeerTimeoutMs.
//
// The table holds at most `cap` entries (llmdd.MaxRequestsInFlight): a
// request counts from submission until its terminal status is read.
//
// Thread-safe. Lock order: the table's mutex comes after the engine's
// (none is held when it is taken); under it only a request's lock and,
// through Cancel, its lane pool's are taken (docs/ARCHITECTURE.md).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "engine/transfer_request.h"

namespace llmdd {

class Channel;

class AsyncRequests {
 public:
  struct Result {
    uint64_t id = 0;
    const void *user_data = nullptr;
    adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  };

  // Reserves one entry for a request about to be submitted; false (nothing
  // reserved) when `cap` entries are held or reserved. *held: how many.
  bool Reserve(size_t cap, size_t *held);
  // Gives a reservation back (the submission was refused).
  void Unreserve();
  // Turns a reservation into the entry for `request`. own_deadline: the
  // caller gave the request its deadline (a TIMEOUT outcome is reported as
  // TIMEOUT, not FAILED); timer: the engine's timer that cancels it at that
  // deadline (Reactor id, 0 for none), handed back when the entry goes.
  void Insert(std::shared_ptr<TransferRequest> request, std::weak_ptr<Channel> channel, const void *user_data,
              bool own_deadline = false, uint64_t timer = 0);

  enum class Found { kNo, kWaiting, kTerminal };
  // The status of request `id`. kTerminal: *status is COMPLETED, TIMEOUT or
  // FAILED, *outcome the request's own status and *error why it failed; the
  // entry is gone and *timer is its deadline timer (0: none) for the caller
  // to cancel, outside this table's lock. kWaiting: *waiting (when given)
  // gets the request, for a caller that wants to wait for it.
  Found Query(uint64_t id, adxl::TransferStatus *status, adxl::Status *outcome, std::string *error,
              uint64_t *timer = nullptr, std::shared_ptr<TransferRequest> *waiting = nullptr);
  // Statuses in id order (oldest first), at most `max_count`; WAITING ones are
  // left out when skip_waiting (and then do not count). Terminal ones are
  // removed (their deadline timers appended to *timers when given).
  // Failures (TIMEOUT included) are described in *failures (one line each)
  // when given.
  void QueryMany(uint32_t max_count, bool skip_waiting, std::vector<Result> *results,
                 std::vector<std::string> *failures = nullptr, std::vector<uint64_t> *timers = nullptr);
  // Entries held (reservations included).
  size_t Size() const;
  // The oldest request held (null when none), for a caller that wants to
  // wait for something to end.
  std::shared_ptr<TransferRequest> Oldest() const;

 private:
  struct Entry {
    std::shared_ptr<TransferRequest> request;
    std::weak_ptr<Channel> channel;
    const void *user_data = nullptr;
    bool own_deadline = false;
    uint64_t timer = 0;
  };
  // WAITING, or the terminal status with the request's outcome; cancels the
  // request first when its channel is dead. *keep receives the channel, so
  // that the caller lets go of it after unlocking.
  static adxl::TransferStatus Evaluate(const Entry &entry, adxl::Status *outcome, std::string *error,
                                       std::shared_ptr<Channel> *keep);

  mutable std::mutex mutex_;
  std::map<uint64_t, Entry> entries_;
  size_t reserved_ = 0;
};

// What a request's outcome is as a CANN TransferStatus (terminal outcomes
// only). TIMEOUT only for a request the caller gave a deadline: CANN's
// clients, which cannot give one, never see it (their requests end FAILED at
// llmdd.AsyncTransferMaxMs).
inline adxl::TransferStatus TerminalStatus(adxl::Status outcome, bool own_deadline = false) {
  if (outcome == adxl::SUCCESS) return adxl::TransferStatus::COMPLETED;
  if (outcome == adxl::TIMEOUT && own_deadline) return adxl::TransferStatus::TIMEOUT;
  return adxl::TransferStatus::FAILED;
}

}  // namespace llmdd
