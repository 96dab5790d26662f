#include "engine/memory_registry.h"

#include <mutex>
#include <thread>

namespace llmdd {

bool RegionPins::Cover(uintptr_t addr, uint64_t len, uint32_t access) {
  for (auto it = pinned_.rbegin(); it != pinned_.rend(); ++it) {
    if ((*it)->Contains(addr, len) && ((*it)->access & access) == access) return true;
  }
  std::shared_ptr<Region> region = registry_->FindAndPin(addr, len, access);
  if (!region) return false;
  pinned_.push_back(std::move(region));
  return true;
}

void RegionPins::Release() {
  for (auto &region : pinned_) registry_->Unpin(region.get());
  pinned_.clear();
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
  WaitUnused(region);
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
  for (auto &region : all) WaitUnused(region);
}

size_t MemoryRegistry::Size() const {
  std::shared_lock lock(mutex_);
  return by_id_.size();
}

std::shared_ptr<Region> MemoryRegistry::FindAndPin(uintptr_t addr, uint64_t len, uint32_t access) const {
  std::shared_lock lock(mutex_);
  // Candidates start at or before addr; a region longer than max_len_ cannot exist,
  // which bounds the backward scan when registrations overlap.
  auto it = by_addr_.upper_bound(addr);
  while (it != by_addr_.begin()) {
    --it;
    const auto &region = it->second;
    if (addr - region->addr > max_len_) break;
    if (region->Contains(addr, len) && (region->access & access) == access) {
      region->users.fetch_add(1, std::memory_order_acq_rel);
      return region;
    }
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
    const Region &region = *entry.second;
    if ((region.access & kAccessRead) == 0 || region.len == 0) continue;
    if (granted.size() == max_regions) {
      *too_many = true;
      return {};
    }
    granted.push_back({region.addr, region.len});
  }
  for (const auto &entry : by_id_) {
    Region &region = *entry.second;
    if ((region.access & kAccessRead) == 0 || region.len == 0) continue;
    int64_t seen = region.leased_until_ns.load(std::memory_order_relaxed);
    while (seen < until_ns && !region.leased_until_ns.compare_exchange_weak(seen, until_ns)) {
    }
  }
  return granted;
}

void MemoryRegistry::WaitUnused(const std::shared_ptr<Region> &region) {
  {
    std::unique_lock lock(unpin_mutex_);
    unpinned_.wait(lock, [&] { return region->users.load(std::memory_order_acquire) == 0; });
  }
  // A same-host peer may still be reading under a standing lease (bounded by
  // wire::kStandingLeaseMs): wait it out. No new lease can name the region now.
  const auto until = std::chrono::steady_clock::time_point(
      std::chrono::nanoseconds(region->leased_until_ns.load(std::memory_order_acquire)));
  if (std::chrono::steady_clock::now() < until) std::this_thread::sleep_until(until);
}

}  // namespace llmdd
