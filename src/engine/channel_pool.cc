#include "engine/channel_pool.h"

#include <algorithm>
#include <cmath>

namespace llmdd {

namespace {
// As engine_config.cc checks the waterlines: 0.3 * 10 must count as 3 channels
// although it is 3.0000000000000004 in doubles.
constexpr double kEpsilon = 1e-9;
}  // namespace

void ChannelPool::Configure(const ChannelPoolConfig &config) {
  config_ = config;
  entries_.clear();
  high_count_ = low_count_ = 0;
  if (config_.waterlines) {
    high_count_ = static_cast<uint32_t>(std::ceil(config_.high_waterline * config_.max_channel - kEpsilon));
    low_count_ = static_cast<uint32_t>(std::floor(config_.low_waterline * config_.max_channel + kEpsilon));
  }
}

ChannelPool::Pin &ChannelPool::Pin::operator=(Pin &&other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = other.pool_;
    use_ = std::move(other.use_);
    other.pool_ = nullptr;
  }
  return *this;
}

void ChannelPool::Pin::Reset() {
  if (!use_) return;
  use_->last_used.store(pool_->Tick());
  if (use_->pins.fetch_sub(1) == 1 && pool_->waiters_.load() > 0) pool_->Changed();
  use_.reset();
  pool_ = nullptr;
}

ChannelPool::Take ChannelPool::TryTake(const std::string &key, const std::function<bool(const std::string &)> &dead,
                                       std::vector<std::string> *evict) {
  // Idle channels, dead ones first, then the least recently used.
  struct Candidate {
    bool dead;
    uint64_t last_used;
    std::map<std::string, Entry>::iterator it;
  };
  std::vector<Candidate> idle;
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (!it->second.open || it->second.use->pins.load() != 0) continue;
    idle.push_back(Candidate{dead(it->first), it->second.use->last_used.load(), it});
  }
  std::sort(idle.begin(), idle.end(), [](const Candidate &a, const Candidate &b) {
    return a.dead != b.dead ? a.dead : a.last_used < b.last_used;
  });
  size_t next = 0;
  while (next < idle.size() && idle[next].dead) Evict(idle[next++].it, evict);
  // The waterlines count the channels there are (the one asked for not yet):
  // a pool holds up to the high count, and the next connect trims it.
  if (config_.waterlines && entries_.size() >= high_count_) {
    while (next < idle.size() && entries_.size() > low_count_) Evict(idle[next++].it, evict);
  }
  while (next < idle.size() && entries_.size() + 1 > config_.max_channel) Evict(idle[next++].it, evict);
  if (entries_.size() + 1 > config_.max_channel) return Take::kFull;
  Entry entry;
  entry.use = std::make_shared<Use>();
  entry.use->last_used.store(Tick());
  entries_.emplace(key, std::move(entry));
  return Take::kTaken;
}

void ChannelPool::Evict(std::map<std::string, Entry>::iterator it, std::vector<std::string> *evict) {
  evict->push_back(it->first);
  entries_.erase(it);
}

void ChannelPool::Opened(const std::string &key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  it->second.open = true;
  it->second.use->last_used.store(Tick());
}

ChannelPool::Pin ChannelPool::PinUse(const std::string &key) {
  Pin pin;
  if (!config_.enabled) return pin;
  auto it = entries_.find(key);
  if (it == entries_.end()) return pin;
  it->second.use->pins.fetch_add(1);
  it->second.use->last_used.store(Tick());
  pin.pool_ = this;
  pin.use_ = it->second.use;
  return pin;
}

void ChannelPool::Release(const std::string &key) {
  if (entries_.erase(key) != 0) Changed();
}

void ChannelPool::Clear() {
  entries_.clear();
  Changed();
}

void ChannelPool::Wait(uint64_t generation, Deadline deadline) {
  std::unique_lock<std::mutex> lock(wait_mutex_);
  auto changed = [&] { return generation_.load() != generation; };
  if (deadline.IsNever()) {
    changed_.wait(lock, changed);  // (wait_until of time_point::max overflows in some libstdc++ versions)
  } else {
    changed_.wait_until(lock, deadline.At(), changed);
  }
}

void ChannelPool::Changed() {
  {
    std::lock_guard<std::mutex> lock(wait_mutex_);
    generation_.fetch_add(1);
  }
  changed_.notify_all();
}

}  // namespace llmdd
