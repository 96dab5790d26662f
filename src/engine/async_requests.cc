#include "engine/async_requests.h"

#include "engine/channel.h"

#include "common/status_name.h"

namespace llmdd {

bool AsyncRequests::Reserve(size_t cap, size_t *held) {
  std::lock_guard lock(mutex_);
  *held = entries_.size() + reserved_;
  if (*held >= cap) return false;
  ++reserved_;
  return true;
}

void AsyncRequests::Unreserve() {
  std::lock_guard lock(mutex_);
  if (reserved_ > 0) --reserved_;
}

void AsyncRequests::Insert(std::shared_ptr<TransferRequest> request, std::weak_ptr<Channel> channel,
                           const void *user_data, bool own_deadline, uint64_t timer) {
  const uint64_t id = request->Id();
  Entry entry;
  entry.request = std::move(request);
  entry.channel = std::move(channel);
  entry.user_data = user_data;
  entry.own_deadline = own_deadline;
  entry.timer = timer;
  std::lock_guard lock(mutex_);
  if (reserved_ > 0) --reserved_;
  entries_.emplace(id, std::move(entry));
}

adxl::TransferStatus AsyncRequests::Evaluate(const Entry &entry, adxl::Status *outcome, std::string *error,
                                             std::shared_ptr<Channel> *keep) {
  TransferRequest &request = *entry.request;
  if (!request.Done()) {
    *keep = entry.channel.lock();
    // The heartbeats declared the peer dead: nothing will answer. Cancel
    // ends the request at once, or as soon as the I/O it has in progress
    // returns (its lanes are shut down).
    if (*keep && (*keep)->Dead()) request.Cancel("canceled: peer " + request.Key() + " is dead (" +
                                                 (*keep)->DeadReason() + ")");
    if (!request.Done()) return adxl::TransferStatus::WAITING;
  }
  *outcome = request.Outcome(error);
  return TerminalStatus(*outcome, entry.own_deadline);
}

AsyncRequests::Found AsyncRequests::Query(uint64_t id, adxl::TransferStatus *status, adxl::Status *outcome,
                                          std::string *error, uint64_t *timer,
                                          std::shared_ptr<TransferRequest> *waiting) {
  // Released after the lock (declared before it): the last reference to a
  // channel or a request may be ours.
  std::shared_ptr<Channel> channel;
  std::shared_ptr<TransferRequest> request;
  std::lock_guard lock(mutex_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return Found::kNo;
  *status = Evaluate(it->second, outcome, error, &channel);
  if (*status == adxl::TransferStatus::WAITING) {
    if (waiting != nullptr) *waiting = it->second.request;
    return Found::kWaiting;
  }
  request = std::move(it->second.request);
  if (timer != nullptr) *timer = it->second.timer;
  entries_.erase(it);
  return Found::kTerminal;
}

void AsyncRequests::QueryMany(uint32_t max_count, bool skip_waiting, std::vector<Result> *results,
                              std::vector<std::string> *failures, std::vector<uint64_t> *timers) {
  results->clear();
  std::vector<std::shared_ptr<Channel>> channels;
  std::vector<std::shared_ptr<TransferRequest>> ended;
  std::lock_guard lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end() && results->size() < max_count;) {
    adxl::Status outcome = adxl::FAILED;
    std::string error;
    std::shared_ptr<Channel> channel;
    Result result;
    result.id = it->first;
    result.user_data = it->second.user_data;
    result.status = Evaluate(it->second, &outcome, &error, &channel);
    if (channel) channels.push_back(std::move(channel));
    if (result.status == adxl::TransferStatus::WAITING) {
      if (!skip_waiting) results->push_back(result);
      ++it;
      continue;
    }
    results->push_back(result);
    if (failures != nullptr && outcome != adxl::SUCCESS)
      failures->push_back("request " + std::to_string(it->first) + " to " + it->second.request->Key() +
                          " failed with " + StatusText(outcome) + ": " + error);
    if (timers != nullptr && it->second.timer != 0) timers->push_back(it->second.timer);
    ended.push_back(std::move(it->second.request));
    it = entries_.erase(it);
  }
}

size_t AsyncRequests::Size() const {
  std::lock_guard lock(mutex_);
  return entries_.size() + reserved_;
}

std::shared_ptr<TransferRequest> AsyncRequests::Oldest() const {
  std::lock_guard lock(mutex_);
  return entries_.empty() ? nullptr : entries_.begin()->second.request;
}

}  // namespace llmdd
