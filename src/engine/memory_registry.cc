#include "engine/memory_registry.h"

#include <algorithm>
#include <cinttypes>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "transport/stream.h"

namespace llmdd {

// ----------------------------------------------------------------- RegionIndex

bool RegionIndex::Update(Region *node) {
  bool changed = false;
  for (int i = 0; i < 3; ++i) {
    uintptr_t reach = node->Allows(kRights[i]) ? node->end : 0;
    if (node->left != nullptr) reach = std::max(reach, node->left->max_end[i]);
    if (node->right != nullptr) reach = std::max(reach, node->right->max_end[i]);
    changed |= node->max_end[i] != reach;
    node->max_end[i] = reach;
  }
  if (node->left != nullptr) node->left->parent = node;
  if (node->right != nullptr) node->right->parent = node;
  return changed;
}

void RegionIndex::Split(Region *node, const Region *key, Region **lower, Region **upper) {
  if (node == nullptr) {
    *lower = *upper = nullptr;
    return;
  }
  if (Less(node, key)) {
    Split(node->right, key, &node->right, upper);
    *lower = node;
  } else {
    Split(node->left, key, lower, &node->left);
    *upper = node;
  }
  Update(node);
}

Region *RegionIndex::Merge(Region *lower, Region *upper) {
  if (lower == nullptr) return upper;
  if (upper == nullptr) return lower;
  if (lower->priority > upper->priority) {
    lower->right = Merge(lower->right, upper);
    Update(lower);
    return lower;
  }
  upper->left = Merge(lower, upper->left);
  Update(upper);
  return upper;
}

// Descends while the nodes outrank the region, raising their max_end on the
// way (the region joins their subtree); where it outranks the node, that
// subtree is split around it.
void RegionIndex::Insert(Region *region) {
  // splitmix64: priorities independent of the addresses keep the tree's
  // expected depth O(log n) in whatever order regions are registered.
  uint64_t z = (seed_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  region->priority = static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
  Region **link = &root_;
  Region *parent = nullptr;
  Region *before = nullptr, *after = nullptr;  // nearest nodes passed that precede / follow it
  for (Region *node = root_; node != nullptr && node->priority >= region->priority; node = *link) {
    for (int i = 0; i < 3; ++i)
      if (region->Allows(kRights[i])) node->max_end[i] = std::max(node->max_end[i], region->end);
    parent = node;
    if (Less(region, node)) {
      after = node;
      link = &node->left;
    } else {
      before = node;
      link = &node->right;
    }
  }
  Split(*link, region, &region->left, &region->right);
  Update(region);
  region->parent = parent;
  *link = region;
  // Neighbours in order: inside the split parts if they are not empty.
  if (region->left != nullptr)
    for (before = region->left; before->right != nullptr;) before = before->right;
  if (region->right != nullptr)
    for (after = region->right; after->left != nullptr;) after = after->left;
  region->prev = before;
  SetNext(region, after);
  if (after != nullptr) after->prev = region;
  if (before != nullptr) {
    SetNext(before, region);
    if (before->prev != nullptr) before->prev->after_next = region;
  }
  region->indexed = true;
  ++size_;
}

Region **RegionIndex::LinkTo(Region *node) {
  if (node->parent == nullptr) return &root_;
  return node->parent->left == node ? &node->parent->left : &node->parent->right;
}

void RegionIndex::Erase(Region *region) {
  // Its children take its place; then the ancestors recompute max_end, and
  // only while it changes (the region reached furthest in their subtree).
  Region *parent = region->parent;
  Region *replacement = Merge(region->left, region->right);
  *LinkTo(region) = replacement;
  if (replacement != nullptr) replacement->parent = parent;
  for (Region *node = parent; node != nullptr && Update(node);) node = node->parent;
  Region *before = region->prev, *after = region->next;
  if (after != nullptr) after->prev = before;
  if (before != nullptr) {
    SetNext(before, after);
    if (before->prev != nullptr) before->prev->after_next = after;
  }
  SetNext(region, nullptr);
  region->left = region->right = region->prev = region->parent = nullptr;
  region->indexed = false;
  --size_;
}

void RegionIndex::SetNext(Region *node, Region *next) {
  node->next = next;
  node->after_next = next != nullptr ? next->next : nullptr;
  node->next_addr = next != nullptr ? next->addr : 0;
  node->next_end = next != nullptr ? next->end : 0;
  node->next_access = next != nullptr ? next->access : 0;
}

void RegionIndex::Clear() {
  for (Region *node = First(); node != nullptr;) {
    Region *next = node->next;
    SetNext(node, nullptr);
    node->left = node->right = node->prev = node->parent = nullptr;
    node->indexed = false;
    node = next;
  }
  root_ = nullptr;
  size_ = 0;
}

Region *RegionIndex::First() const {
  Region *node = root_;
  while (node != nullptr && node->left != nullptr) node = node->left;
  return node;
}

std::string RegionIndex::Check() const {
  std::vector<const Region *> in_order;
  // In-order walk with explicit stack; checks the tree fields on the way.
  std::vector<const Region *> stack;
  std::string why;
  auto fail = [&](const Region *node, const char *what) {
    if (why.empty()) why = std::string(what) + " at region " + std::to_string(node->id);
  };
  if (root_ != nullptr && root_->parent != nullptr) fail(root_, "root has a parent");
  for (const Region *node = root_; node != nullptr || !stack.empty();) {
    while (node != nullptr) {
      stack.push_back(node);
      node = node->left;
    }
    node = stack.back();
    stack.pop_back();
    in_order.push_back(node);
    if (!node->indexed) fail(node, "in the tree but not indexed");
    if (!(node->addr < node->end)) fail(node, "empty region indexed");
    for (const Region *child : {node->left, node->right}) {
      if (child == nullptr) continue;
      if (child->parent != node) fail(child, "wrong parent");
      if (child->priority > node->priority) fail(child, "priority above its parent's");
    }
    for (int i = 0; i < 3; ++i) {
      uintptr_t reach = node->Allows(kRights[i]) ? node->end : 0;
      if (node->left != nullptr) reach = std::max(reach, node->left->max_end[i]);
      if (node->right != nullptr) reach = std::max(reach, node->right->max_end[i]);
      if (node->max_end[i] != reach) fail(node, "wrong max_end");
    }
    node = node->right;
  }
  if (in_order.size() != size_) why += " size " + std::to_string(size_) + " != " + std::to_string(in_order.size());
  for (size_t i = 0; i < in_order.size(); ++i) {
    const Region *node = in_order[i];
    const Region *before = i > 0 ? in_order[i - 1] : nullptr;
    const Region *after = i + 1 < in_order.size() ? in_order[i + 1] : nullptr;
    const Region *after2 = i + 2 < in_order.size() ? in_order[i + 2] : nullptr;
    if (before != nullptr && !Less(before, node)) fail(node, "out of order");
    if (node->prev != before || node->next != after || node->after_next != after2) fail(node, "wrong neighbours");
    if (node->next_addr != (after ? after->addr : 0) || node->next_end != (after ? after->end : 0) ||
        node->next_access != (after ? after->access : 0))
      fail(node, "stale copy of the next region");
  }
  if (First() != (in_order.empty() ? nullptr : in_order.front())) why += " wrong First()";
  return why;
}

Region *RegionIndex::FindContaining(uintptr_t addr, uint32_t rights) const {
  const int slot = Slot(rights);
  // The regions starting at or before addr are, along the search path, each
  // node at or before addr with its left subtree. Among them the one reaching
  // furthest contains addr if any does (it starts at or before addr).
  uintptr_t best_end = addr;  // a candidate must end after addr
  Region *best = nullptr;
  Region *best_subtree = nullptr;
  for (Region *node = root_; node != nullptr;) {
    if (node->addr > addr) {
      node = node->left;
      continue;
    }
    if (node->left != nullptr && node->left->max_end[slot] > best_end) {
      best_end = node->left->max_end[slot];
      best_subtree = node->left;
      best = nullptr;
    }
    if (node->Allows(rights) && node->end > best_end) {
      best_end = node->end;
      best = node;
      best_subtree = nullptr;
    }
    node = node->right;
  }
  if (best != nullptr || best_subtree == nullptr) return best;
  // The subtree holds a region with rights ending at best_end: the lowest one.
  for (Region *node = best_subtree;;) {
    if (node->left != nullptr && node->left->max_end[slot] == best_end) {
      node = node->left;
    } else if (node->Allows(rights) && node->end == best_end) {
      return node;
    } else {
      node = node->right;
    }
  }
}

// ------------------------------------------------------------------ RegionPins

bool RegionPins::Cover(uintptr_t addr, uint64_t len, uint32_t access) {
  uintptr_t end = 0;
  if (len == 0 || __builtin_add_overflow(addr, len, &end)) return false;
  if (access == 0 || (access & ~kAccessReadWrite) != 0) return false;
  // Fast path, no lock: the ranges of one request mostly lie in a region it
  // pinned lately (consecutive blocks of one tensor, K and V alternating).
  for (size_t i = 0; i < kRecentPins; ++i) {
    const Span &span = recent_[(recent_next_ + kRecentPins - 1 - i) % kRecentPins];
    if (span.begin <= addr && end <= span.end && (span.access & access) == access) return true;
  }
  const size_t count = pinned_.size();
  // One shared lock for the whole walk: every region of the chain is looked
  // up and recorded in one view of the registry, so Remove() either finds
  // this request among the holders or the lookup did not find the region.
  std::shared_lock lock(registry_->mutex_);
  const Region *const last_before = last_region_;
  uintptr_t cursor = addr;
  for (;;) {
    const Region *region = nullptr;
    uintptr_t region_addr = 0, region_end = 0;
    uint32_t region_access = 0;
    // Ascending ranges over consecutive regions: the region after the last
    // one, checked on the last one's own line.
    if (const Region *last = last_region_; last != nullptr && last->indexed && last->next_addr <= cursor &&
                                           cursor < last->next_end && (last->next_access & access) == access) {
      region = last->next;
      region_addr = last->next_addr, region_end = last->next_end, region_access = last->next_access;
    } else {
      // Any region that contains the byte at cursor will do: it moves the
      // cursor forward, so the walk succeeds exactly when every byte is
      // covered. The one that reaches furthest takes the fewest steps.
      region = registry_->index_.FindContaining(cursor, access);
      if (region == nullptr) {
        // Nothing pinned for a refused range stays pinned; last_region_ goes
        // back to one still pinned (only those are kept from being freed).
        pinned_.resize(count);
        last_region_ = last_before;
        for (Span &span : recent_) span = Span{};  // (refusals are rare: forget them all)
        return false;
      }
      region_addr = region->addr, region_end = region->end, region_access = region->access;
    }
    // What the next ranges will probably read, fetched meanwhile.
    __builtin_prefetch(region->NextLine());
    if (region->after_next != nullptr) __builtin_prefetch(region->after_next->NextLine());
    Pin(region, region_addr, region_end, region_access);
    last_region_ = region;
    if (end <= region_end) return true;
    cursor = region_end;  // the first byte after this region
  }
}

void RegionPins::Pin(const Region *region, uintptr_t begin, uintptr_t end, uint32_t access) {
  if (!linked_) registry_->Link(this);
  if (!pinned_.empty() && pinned_.back() == region) return;
  pinned_.push_back(region);
  recent_[recent_next_] = Span{begin, end, access};
  recent_next_ = (recent_next_ + 1) % kRecentPins;
}

bool RegionPins::Pins(const Region *region) const {
  return std::find(pinned_.begin(), pinned_.end(), region) != pinned_.end();
}

void RegionPins::Release() {
  // Unlinked first: a Remove() scanning the holders never reads pinned_ after this.
  if (linked_) registry_->Unlink(this);
  pinned_.clear();
  for (Span &span : recent_) span = Span{};
  last_region_ = nullptr;
}

void RegionPins::Break() {
  broken_.store(true, std::memory_order_release);
  if (breaker_ != nullptr) breaker_->Shutdown();
}

size_t RegionPins::PinnedCount() const {
  std::vector<const Region *> distinct = pinned_;
  std::sort(distinct.begin(), distinct.end());
  return static_cast<size_t>(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
}

// -------------------------------------------------------------- MemoryRegistry

void MemoryRegistry::Link(RegionPins *pins) const {
  std::lock_guard lock(active_mutex_);
  pins->serial_ = next_serial_++;
  pins->active_prev_ = nullptr;
  pins->active_next_ = active_;
  if (active_ != nullptr) active_->active_prev_ = pins;
  active_ = pins;
  pins->linked_ = true;
}

void MemoryRegistry::Unlink(RegionPins *pins) const {
  std::lock_guard lock(active_mutex_);
  if (pins->active_prev_ != nullptr) {
    pins->active_prev_->active_next_ = pins->active_next_;
  } else {
    active_ = pins->active_next_;
  }
  if (pins->active_next_ != nullptr) pins->active_next_->active_prev_ = pins->active_prev_;
  pins->active_prev_ = pins->active_next_ = nullptr;
  pins->linked_ = false;
  if (waiters_ > 0) released_.notify_all();
}

uint64_t MemoryRegistry::Add(uintptr_t addr, uint64_t len, int mem_type, uint32_t access, MemoryKind kind) {
  auto region = std::make_shared<Region>();
  region->access = access & kAccessReadWrite;
  region->addr = addr;
  region->len = len;
  uintptr_t end = 0;
  region->end = __builtin_add_overflow(addr, len, &end) ? UINTPTR_MAX : end;
  region->mem_type = mem_type;
  region->kind = kind;
  std::unique_lock lock(mutex_);
  region->id = next_id_++;
  by_id_.emplace(region->id, region);
  if (region->addr < region->end) index_.Insert(region.get());
  return region->id;
}

bool MemoryRegistry::Describe(uint64_t id, TransportRegion *out) const {
  std::shared_lock lock(mutex_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  out->addr = it->second->addr;
  out->len = it->second->len;
  out->kind = it->second->kind;
  out->access = it->second->access;
  return true;
}

std::vector<TransportRegion> MemoryRegistry::Regions() const {
  std::shared_lock lock(mutex_);
  std::vector<TransportRegion> regions;
  regions.reserve(by_id_.size());
  for (const auto &entry : by_id_) {
    regions.push_back({entry.second->addr, entry.second->len, entry.second->kind, entry.second->access});
  }
  return regions;
}

MemoryKind MemoryRegistry::KindAt(uintptr_t addr) const {
  std::shared_lock lock(mutex_);
  const Region *region = index_.FindContaining(addr, kAccessRead);
  if (region == nullptr) region = index_.FindContaining(addr, kAccessWrite);
  return region != nullptr ? region->kind : MemoryKind::kHost;
}

bool MemoryRegistry::Remove(uint64_t id) {
  std::shared_ptr<Region> region;
  std::vector<uint64_t> holders;
  {
    std::unique_lock lock(mutex_);
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return false;
    region = it->second;
    by_id_.erase(it);
    if (region->indexed) {
      index_.Erase(region.get());
      holders = HoldersLocked(region.get());
    }
  }
  const size_t broken =
      WaitReleased(holders, std::chrono::steady_clock::now() + std::chrono::milliseconds(removal_grace_ms_.load()));
  if (broken > 0)
    LOG_WARN("deregistering [0x%" PRIxPTR ", +%" PRIu64 "): %zu request(s) still used it after the grace period "
             "(llmdd.DeregisterGraceMs): their lanes were closed",
             region->addr, region->len, broken);
  WaitLeases({region});
  return true;
}

void MemoryRegistry::Clear() {
  std::vector<std::shared_ptr<Region>> all;
  std::vector<uint64_t> holders;
  {
    std::unique_lock lock(mutex_);
    for (auto &entry : by_id_) all.push_back(entry.second);
    by_id_.clear();
    index_.Clear();
    holders = HoldersLocked(nullptr);
  }
  const size_t broken =
      WaitReleased(holders, std::chrono::steady_clock::now() + std::chrono::milliseconds(removal_grace_ms_.load()));
  if (broken > 0)
    LOG_WARN("deregistering all memory: %zu request(s) still used it after the grace period "
             "(llmdd.DeregisterGraceMs): their lanes were closed",
             broken);
  WaitLeases(all);
}

size_t MemoryRegistry::Size() const {
  std::shared_lock lock(mutex_);
  return by_id_.size();
}

int MemoryRegistry::PinCount(uint64_t id) const {
  // Exclusive: requests append to their pins under the shared lock.
  std::unique_lock lock(mutex_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return -1;
  return static_cast<int>(HoldersLocked(it->second.get()).size());
}

std::vector<uint64_t> MemoryRegistry::HoldersLocked(const Region *region) const {
  std::vector<uint64_t> serials;
  std::lock_guard lock(active_mutex_);
  for (const RegionPins *pins = active_; pins != nullptr; pins = pins->active_next_)
    if (region == nullptr ? !pins->pinned_.empty() : pins->Pins(region)) serials.push_back(pins->serial_);
  std::sort(serials.begin(), serials.end());
  return serials;
}

bool MemoryRegistry::AnyActiveLocked(const std::vector<uint64_t> &serials) const {
  for (const RegionPins *pins = active_; pins != nullptr; pins = pins->active_next_)
    if (std::binary_search(serials.begin(), serials.end(), pins->serial_)) return true;
  return false;
}

size_t MemoryRegistry::WaitReleased(const std::vector<uint64_t> &serials,
                                    std::chrono::steady_clock::time_point patience_ends) {
  if (serials.empty()) return 0;
  std::unique_lock lock(active_mutex_);
  ++waiters_;
  auto released = [&] { return !AnyActiveLocked(serials); };
  size_t broken = 0;
  if (!released_.wait_until(lock, patience_ends, released)) {
    // A peer keeps a request on this memory beyond our patience (a stalled
    // sender, a frozen reader): close the lanes serving it. Their blocking I/O
    // returns at once and releases the pins; no byte is touched afterwards.
    // Under active_mutex_: a request cannot end (and its RegionPins go away)
    // while it is being broken.
    for (RegionPins *pins = active_; pins != nullptr; pins = pins->active_next_) {
      if (!std::binary_search(serials.begin(), serials.end(), pins->serial_)) continue;
      pins->Break();
      ++broken;
    }
    released_.wait(lock, released);
  }
  --waiters_;
  return broken;
}

void MemoryRegistry::WaitLeases(const std::vector<std::shared_ptr<Region>> &regions) {
  // A same-host peer may still be reading under a standing lease (bounded by
  // wire::kStandingLeaseMs): wait it out. No new lease can name these regions now.
  for (const auto &region : regions) {
    const auto until = std::chrono::steady_clock::time_point(
        std::chrono::nanoseconds(region->leased_until_ns.load(std::memory_order_acquire)));
    if (std::chrono::steady_clock::now() < until) std::this_thread::sleep_until(until);
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

}  // namespace llmdd
