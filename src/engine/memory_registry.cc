#include "engine/memory_registry.h"

#include <algorithm>
#include <cinttypes>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "transport/stream.h"

namespace llmdd {

bool RegionPins::Cover(uintptr_t addr, uint64_t len, uint32_t access) {
  uintptr_t end = 0;
  if (len == 0 || __builtin_add_overflow(addr, len, &end)) return false;
  // Fast path, no lock and no atomic: the ranges of one request mostly lie in
  // the region the previous range used (consecutive blocks of one tensor), or,
  // while it has few pins, in one it pinned already (K and V alternating).
  auto usable = [&](const Region &region) {
    return region.Contains(addr, len) && (region.access & access) == access;
  };
  if (last_used_ != nullptr && usable(*last_used_)) return true;
  if (pinned_.size() <= kLinearPinLimit) {
    for (const auto &pinned : pinned_) {
      if (usable(*pinned)) {
        last_used_ = pinned.get();
        return true;
      }
    }
  }
  const size_t first_new_pin = pinned_.size();
  // One shared lock for the whole walk: every region of the chain is looked
  // up and pinned in one consistent view of the registry.
  std::shared_lock lock(registry_->mutex_);
  uintptr_t cursor = addr;
  for (;;) {
    // Any region that contains the byte at cursor will do: it moves the cursor
    // forward, so the walk succeeds exactly when every byte is covered.
    const std::shared_ptr<Region> *found = registry_->FindContainingByteLocked(cursor, access);
    if (found == nullptr) {
      UnpinFrom(first_new_pin);
      return false;
    }
    const Region &region = **found;
    if (!AlreadyPinned(&region)) Pin(*found);
    last_used_ = &region;
    const uint64_t left_in_region = region.len - (cursor - region.addr);  // > 0: region contains cursor
    if (left_in_region >= end - cursor) return true;
    cursor += left_in_region;  // the first byte after this region
  }
}

bool RegionPins::AlreadyPinned(const Region *region) const {
  if (pinned_.size() <= kLinearPinLimit) {
    for (const auto &pinned : pinned_)
      if (pinned.get() == region) return true;
    return false;
  }
  return pinned_set_.count(region) != 0;
}

void RegionPins::Pin(const std::shared_ptr<Region> &region) {
  // Under the registry's shared lock: Remove() unpublishes under the exclusive
  // lock, so it either sees this pin when it waits or we never found the region.
  region->users.fetch_add(1, std::memory_order_acq_rel);
  {
    std::lock_guard lock(region->holders_mutex);
    region->holders.push_back(this);
  }
  pinned_.push_back(region);
  if (pinned_.size() == kLinearPinLimit + 1) {
    for (const auto &pinned : pinned_) pinned_set_.insert(pinned.get());
  } else if (pinned_.size() > kLinearPinLimit + 1) {
    pinned_set_.insert(region.get());
  }
}

// Releases the pins from index `first` on (the ones a refused range took).
void RegionPins::UnpinFrom(size_t first) {
  for (size_t i = first; i < pinned_.size(); ++i) {
    pinned_set_.erase(pinned_[i].get());
    Unpin(pinned_[i].get());
  }
  pinned_.resize(first);
  if (pinned_.size() <= kLinearPinLimit) pinned_set_.clear();
  last_used_ = pinned_.empty() ? nullptr : pinned_.back().get();
}

void RegionPins::Unpin(Region *region) {
  {
    std::lock_guard lock(region->holders_mutex);
    auto &holders = region->holders;
    holders.erase(std::find(holders.begin(), holders.end(), this));
  }
  registry_->Unpin(region);
}

void RegionPins::Break() {
  broken_.store(true, std::memory_order_release);
  if (breaker_ != nullptr) breaker_->Shutdown();
}

size_t Region::BreakHolders() {
  std::lock_guard lock(holders_mutex);
  for (RegionPins *holder : holders) holder->Break();
  return holders.size();
}

void RegionPins::Release() {
  for (auto &region : pinned_) Unpin(region.get());
  pinned_.clear();
  pinned_set_.clear();
  last_used_ = nullptr;
}

uint64_t MemoryRegistry::Add(uintptr_t addr, uint64_t len, int mem_type, uint32_t access) {
  auto region = std::make_shared<Region>();
  region->access = access;
  region->addr = addr;
  region->len = len;
  region->mem_type = mem_type;
  std::unique_lock lock(mutex_);
  region->id = next_id_++;
  by_addr_.emplace(addr, region);
  by_id_.emplace(region->id, region);
  if (len > max_len_) max_len_ = len;
  return region->id;
}

bool MemoryRegistry::Remove(uint64_t id) {
  std::shared_ptr<Region> region;
  {
    std::unique_lock lock(mutex_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return false;
    region = it->second;
    by_id_.erase(it);
    auto range = by_addr_.equal_range(region->addr);
    for (auto a = range.first; a != range.second; ++a) {
      if (a->second == region) {
        by_addr_.erase(a);
        break;
      }
    }
  }
  WaitUnused({region}, std::chrono::steady_clock::now() + std::chrono::milliseconds(removal_grace_ms_.load()));
  return true;
}

void MemoryRegistry::Clear() {
  std::vector<std::shared_ptr<Region>> all;
  {
    std::unique_lock lock(mutex_);
    for (auto &entry : by_id_) all.push_back(entry.second);
    by_id_.clear();
    by_addr_.clear();
    max_len_ = 0;
  }
  WaitUnused(all, std::chrono::steady_clock::now() + std::chrono::milliseconds(removal_grace_ms_.load()));
}

size_t MemoryRegistry::Size() const {
  std::shared_lock lock(mutex_);
  return by_id_.size();
}

int MemoryRegistry::PinCount(uint64_t id) const {
  std::shared_lock lock(mutex_);
  auto it = by_id_.find(id);
  return it == by_id_.end() ? -1 : it->second->users.load(std::memory_order_acquire);
}

const std::shared_ptr<Region> *MemoryRegistry::FindContainingByteLocked(uintptr_t addr, uint32_t access) const {
  // Candidates start at or before addr, nearest first. A region longer than
  // max_len_ cannot exist, which bounds the backward scan when registrations
  // overlap; without overlaps the nearest candidate is the only one.
  auto it = by_addr_.upper_bound(addr);
  while (it != by_addr_.begin()) {
    --it;
    const Region &region = *it->second;
    if (addr - region.addr >= max_len_) break;
    if (addr - region.addr < region.len && (region.access & access) == access) return &it->second;
  }
  return nullptr;
}

void MemoryRegistry::Unpin(Region *region) const {
  if (region->users.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard lock(unpin_mutex_);
    unpinned_.notify_all();
  }
}

std::vector<MemoryRegistry::LeasedRange> MemoryRegistry::GrantReadLease(std::chrono::steady_clock::time_point until,
                                                                        size_t max_regions, bool *too_many) const {
  const int64_t until_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until.time_since_epoch()).count();
  std::vector<LeasedRange> granted;
  *too_many = false;
  // Shared lock: Remove() unpublishes under the exclusive lock, so a region is
  // either listed here with its lease recorded before Remove() looks at it, or
  // not listed at all.
  std::shared_lock lock(mutex_);
  for (const auto &entry : by_id_) {
    Region &region = *entry.second;
    if ((region.access & kAccessRead) == 0 || region.len == 0) continue;
    if (granted.size() == max_regions) {
      *too_many = true;  // the lease lists what fits; the rest stays request-only
      break;
    }
    granted.push_back({region.addr, region.len});
    int64_t seen = region.leased_until_ns.load(std::memory_order_relaxed);
    while (seen < until_ns && !region.leased_until_ns.compare_exchange_weak(seen, until_ns)) {
    }
  }
  return granted;
}

void MemoryRegistry::WaitUnused(const std::vector<std::shared_ptr<Region>> &regions,
                                std::chrono::steady_clock::time_point patience_ends) {
  for (const auto &region : regions) {
    auto unused = [&] { return region->users.load(std::memory_order_acquire) == 0; };
    std::unique_lock lock(unpin_mutex_);
    if (unpinned_.wait_until(lock, patience_ends, unused)) continue;
    // A peer keeps a request on this memory beyond our patience (a stalled
    // sender, a frozen reader): close the lanes serving it. Their blocking I/O
    // returns at once and releases the pins; no byte is touched afterwards.
    lock.unlock();
    const size_t broken = region->BreakHolders();
    LOG_WARN("deregistering [0x%" PRIxPTR ", +%" PRIu64 "): %zu request(s) still used it after the grace period "
             "(llmdd.DeregisterGraceMs): their lanes were closed",
             region->addr, region->len, broken);
    lock.lock();
    unpinned_.wait(lock, unused);
  }
  // A same-host peer may still be reading under a standing lease (bounded by
  // wire::kStandingLeaseMs): wait it out. No new lease can name these regions now.
  for (const auto &region : regions) {
    const auto until = std::chrono::steady_clock::time_point(
        std::chrono::nanoseconds(region->leased_until_ns.load(std::memory_order_acquire)));
    if (std::chrono::steady_clock::now() < until) std::this_thread::sleep_until(until);
  }
}

}  // namespace llmdd
