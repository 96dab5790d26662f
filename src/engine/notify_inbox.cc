#include "engine/notify_inbox.h"

#include <chrono>
#include <cinttypes>

#include "common/log.h"
#include "common/status_name.h"
#include "engine/handshake.h"

namespace llmdd {

namespace {

int64_t SteadyNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void NotifyInbox::SetLimits(uint32_t per_link, uint64_t max_bytes) {
  std::lock_guard lock(mutex_);
  per_link_ = per_link;
  max_bytes_ = max_bytes;
}

adxl::Status NotifyInbox::Add(uint64_t link, const std::string &peer, const std::string &local_id,
                              wire::Notify notify, std::string *why) {
  const uint64_t cost = Cost(notify);
  std::unique_lock lock(mutex_);
  auto it = per_link_count_.find(link);
  const uint32_t held = it == per_link_count_.end() ? 0 : it->second;
  if (held >= per_link_) {
    *why = "engine " + local_id + " already holds " + std::to_string(held) +
           " unconsumed notifies from this link (at most " + std::to_string(per_link_) +
           " per link; the oldest are kept until its GetNotifies takes them): notify '" +
           notify.name.substr(0, 64) + "' refused";
  } else if (bytes_ + cost > max_bytes_) {
    *why = "engine " + local_id + " already holds " + std::to_string(queue_.size()) + " unconsumed notifies of " +
           std::to_string(bytes_) + " bytes from all links (llmdd.MaxNotifyBytes=" + std::to_string(max_bytes_) +
           "): notify '" + notify.name.substr(0, 64) + "' refused";
  } else {
    per_link_count_[link] = held + 1;
    bytes_ += cost;
    queue_.push_back(Entry{link, std::move(notify)});
    return adxl::SUCCESS;
  }
  lock.unlock();
  LogRefusal(peer, *why);
  return adxl::RESOURCE_EXHAUSTED;
}

void NotifyInbox::LogRefusal(const std::string &peer, const std::string &why) {
  uint64_t unlogged = 0;
  {
    std::lock_guard lock(mutex_);
    const int64_t now = SteadyNowMs();
    if (now - last_log_ms_ < 1000) {
      ++unlogged_refusals_;
      return;
    }
    last_log_ms_ = now;
    unlogged = unlogged_refusals_;
    unlogged_refusals_ = 0;
  }
  if (unlogged == 0) {
    LOG_WARN("refused a notify from %s with RESOURCE_EXHAUSTED: %s (logged at most once a second)", peer.c_str(),
             why.c_str());
  } else {
    LOG_WARN("refused a notify from %s with RESOURCE_EXHAUSTED: %s (logged at most once a second; %" PRIu64
             " more refused since the last line)",
             peer.c_str(), why.c_str(), unlogged);
  }
}

void NotifyInbox::TakeAll(std::vector<wire::Notify> *out) {
  std::deque<Entry> taken;
  {
    std::lock_guard lock(mutex_);
    taken.swap(queue_);
    per_link_count_.clear();
    bytes_ = 0;
  }
  // Outside the lock: a caller's vector may have to grow.
  out->reserve(out->size() + taken.size());
  for (Entry &entry : taken) out->push_back(std::move(entry.notify));
}

void NotifyInbox::Clear() {
  std::deque<Entry> dropped;
  std::lock_guard lock(mutex_);
  dropped.swap(queue_);
  per_link_count_.clear();
  bytes_ = 0;
}

size_t NotifyInbox::Size() const {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

uint64_t NotifyInbox::Bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

bool ServeNotify(ByteStream &stream, const wire::MsgHeader &header, const std::string &body, NotifyInbox &inbox,
                 uint64_t link, const std::string &peer, const std::string &local_id, Deadline deadline) {
  wire::Notify notify;
  adxl::Status status = adxl::SUCCESS;
  std::string why;
  if (!wire::DecodeNotify(body, &notify)) {
    status = adxl::PARAM_INVALID;
    why = "malformed Notify body of " + std::to_string(body.size()) + " bytes (two strings of at most " +
          std::to_string(wire::kMaxNotifyField) + " bytes expected)";
    LOG_WARN("refused a notify from %s with %s: %s", peer.c_str(), StatusText(status).c_str(), why.c_str());
  } else {
    status = inbox.Add(link, peer, local_id, std::move(notify), &why);
  }
  LOG_DEBUG("notify %" PRIu64 " from %s: %s", header.request_id, peer.c_str(), StatusText(status).c_str());
  if (why.size() > wire::kMaxErrorText) why.resize(wire::kMaxErrorText);
  return SendControlBody(stream, wire::MsgType::kNotifyAck, status, header.request_id, why, deadline);
}

}  // namespace llmdd
