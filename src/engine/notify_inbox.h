// NotifyInbox: the notifications (ADXL SendNotify) this engine received on
// its serving side, until GetNotifies takes them (docs/API.md,
// "Notifications"; docs/PROTOCOL.md, "Notifications").
//
// Bounded twice, so that no peer can make it grow without end:
//  - per link (a client's session): at most `per_link` unconsumed notifies
//    (CANN: 4096). The oldest are kept; a newer one is refused.
//  - per engine: at most `max_bytes` of names and messages (plus a fixed
//    overhead per notify) across every link, ended sessions included: a
//    notify that was acknowledged stays until it is taken, even when its
//    sender disconnected, and a peer that reconnects again and again still
//    cannot push past this.
// A refusal is RESOURCE_EXHAUSTED with the reason, which the receiver logs
// (at most once a second, with the count of refusals it did not log) and
// sends back to the sender.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/deadline.h"
#include "engine/wire.h"
#include "transport/stream.h"

namespace llmdd {

class NotifyInbox {
 public:
  // Bytes counted per notify on top of its name and message (queue entry, strings).
  static constexpr uint64_t kEntryOverhead = 128;

  explicit NotifyInbox(uint32_t per_link = wire::kMaxNotifiesPerLink, uint64_t max_bytes = 64ULL << 20)
      : per_link_(per_link), max_bytes_(max_bytes) {}

  // Limits for the engine's next life (Initialize); what is held stays.
  void SetLimits(uint32_t per_link, uint64_t max_bytes);
  // `local_id` names this engine in refusals. SUCCESS, or RESOURCE_EXHAUSTED
  // with *why (logged here).
  adxl::Status Add(uint64_t link, const std::string &peer, const std::string &local_id, wire::Notify notify,
                   std::string *why);
  // Appends every notify held, oldest first, and forgets them.
  void TakeAll(std::vector<wire::Notify> *out);
  void Clear();
  size_t Size() const;
  uint64_t Bytes() const;

 private:
  struct Entry {
    uint64_t link;
    wire::Notify notify;
  };
  static uint64_t Cost(const wire::Notify &n) { return n.name.size() + n.message.size() + kEntryOverhead; }
  void LogRefusal(const std::string &peer, const std::string &why);

  mutable std::mutex mutex_;
  uint32_t per_link_;
  uint64_t max_bytes_;
  std::deque<Entry> queue_;
  std::map<uint64_t, uint32_t> per_link_count_;  // only links with notifies held
  uint64_t bytes_ = 0;
  // Refusal log: at most one line a second.
  int64_t last_log_ms_ = 0;
  uint64_t unlogged_refusals_ = 0;
};

// The serving side's handling of one Notify (header checked, body read
// whole): decodes it, adds it to `inbox` for `link`, and answers NotifyAck
// with the outcome (a malformed body: PARAM_INVALID, logged; the session
// stays). False when the answer could not be sent (the connection must end).
bool ServeNotify(ByteStream &stream, const wire::MsgHeader &header, const std::string &body, NotifyInbox &inbox,
                 uint64_t link, const std::string &peer, const std::string &local_id, Deadline deadline);

}  // namespace llmdd
