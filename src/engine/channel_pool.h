// ChannelPool: the bookkeeping of HIXL's channel pool (GlobalResourceConfig
// "channel_pool.*", or AutoConnect; docs/API.md, "Auto-connect and the
// channel pool"). It decides; the engine acts: it opens and closes the
// channels and keeps them in its map.
//
// What it counts: the channels this engine opens as a client (Connect and the
// transfers' auto-connects), one slot each from the moment a connect starts
// (a reservation) until the channel is gone. The sessions peers open to us
// are not counted: the serving side has its own caps (llmdd.MaxSessions).
//
// Busy and idle: a channel is busy while a Pin of it lives. The engine pins a
// channel for every transfer, notify and asynchronous request that uses it,
// from the lookup until the request is done, so a channel with anything in
// flight is never chosen for eviction. Pins are taken under the owner's lock
// (the one that guards this pool's map, Engine::channels_mutex_) and released
// anywhere: the count only drops outside that lock, so "no pin" seen under
// the lock stays true while the lock is held.
//
// Which channels go (TryTake, when a connect asks for a slot):
//  - dead ones (the owner says which) that are idle, always;
//  - with waterlines, when the slots taken (the new one not counted) have
//    reached the high count, ceil(high_waterline * max_channel): the idle
//    ones, least recently used first, until the slots taken are at most the
//    low count, floor(low_waterline * max_channel), or none idle is left.
//    (high - low) * max_channel >= 1 makes that at least one when one is idle;
//  - when max_channel are taken, the least recently used idle one, to make room.
// E.g. max_channel 10, waterlines 0.3 / 0.1: three channels stay open; the
// connect of a fourth closes the two least recently used idle ones first.
// A connect that finds every slot busy waits (BeginWait/Wait, without the
// owner's lock) until a pin is released or a slot freed, then asks again.
//
// Thread-safety: TryTake, Opened, PinUse, Release, Clear and Count require the
// owner's lock; Pin release and the waits take only this pool's leaf mutex.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/deadline.h"
#include "engine/engine_config.h"

namespace llmdd {

class ChannelPool {
  struct Use;

 public:
  ChannelPool() = default;
  ChannelPool(const ChannelPool &) = delete;
  ChannelPool &operator=(const ChannelPool &) = delete;

  // Before any other call (Engine::Start); forgets every slot.
  void Configure(const ChannelPoolConfig &config);
  bool Enabled() const { return config_.enabled; }
  // The counts the waterlines give (0 without waterlines).
  uint32_t HighCount() const { return high_count_; }
  uint32_t LowCount() const { return low_count_; }

  // A channel in use: busy while it lives. Movable; a default one pins nothing.
  class Pin {
   public:
    Pin() = default;
    Pin(Pin &&other) noexcept : pool_(other.pool_), use_(std::move(other.use_)) { other.pool_ = nullptr; }
    Pin &operator=(Pin &&other) noexcept;
    Pin(const Pin &) = delete;
    Pin &operator=(const Pin &) = delete;
    ~Pin() { Reset(); }
    void Reset();
    explicit operator bool() const { return use_ != nullptr; }

   private:
    friend class ChannelPool;
    ChannelPool *pool_ = nullptr;
    std::shared_ptr<Use> use_;
  };

  // ---- The owner's lock held ----
  enum class Take { kTaken, kFull };
  // Asks for a slot for `key` (not in the pool: the caller checked it has no
  // channel). Slots of channels that must go (see above) are freed first and
  // their keys appended to *evict: the caller removes those channels and
  // closes them. kTaken: `key` holds a reservation (busy until Opened);
  // kFull: every slot is busy, nothing reserved.
  Take TryTake(const std::string &key, const std::function<bool(const std::string &)> &dead,
               std::vector<std::string> *evict);
  // The channel of `key`'s reservation is open: idle from now on (unless
  // pinned), the most recently used.
  void Opened(const std::string &key);
  // Pins `key`'s channel; a default Pin when the pool is disabled or does not
  // hold `key` (a channel it does not count is never evicted).
  Pin PinUse(const std::string &key);
  // `key`'s channel or reservation is gone (Disconnect, a failed connect, a
  // dead channel dropped): its slot is free and waiters look again.
  void Release(const std::string &key);
  // Forgets every slot (Finalize took the channels).
  void Clear();
  // Slots taken: open channels and reservations.
  size_t Count() const { return entries_.size(); }
  bool Holds(const std::string &key) const { return entries_.count(key) != 0; }

  // ---- No lock needed ----
  // Waiting for a slot: BeginWait once, then for each attempt the
  // Generation before asking TryTake, and Wait with it: it returns when a pin
  // was released or a slot freed since, or at the deadline. EndWait when done.
  void BeginWait() { waiters_.fetch_add(1); }
  uint64_t Generation() const { return generation_.load(); }
  void Wait(uint64_t generation, Deadline deadline);
  void EndWait() { waiters_.fetch_sub(1); }
  // Every waiter looks again (Finalize: they give up).
  void Wake() { Changed(); }

 private:
  struct Use {
    std::atomic<uint32_t> pins{0};
    std::atomic<uint64_t> last_used{0};
  };
  struct Entry {
    bool open = false;  // false: a reservation (a connect in progress), never evicted
    std::shared_ptr<Use> use;
  };
  // Frees `key`'s slot (if it is idle) for TryTake.
  void Evict(std::map<std::string, Entry>::iterator it, std::vector<std::string> *evict);
  // Pins were released or a slot freed: waiters look again.
  void Changed();
  uint64_t Tick() { return clock_.fetch_add(1) + 1; }

  ChannelPoolConfig config_;
  uint32_t high_count_ = 0, low_count_ = 0;
  std::map<std::string, Entry> entries_;  // guarded by the owner's lock
  std::atomic<uint64_t> clock_{0};        // orders uses (least recently used first)

  // A leaf lock: taken by Pin release and the waits only, with nothing under it.
  std::mutex wait_mutex_;
  std::condition_variable changed_;
  std::atomic<uint64_t> generation_{0};
  // Connects waiting for a slot: a pin release wakes them only when there are
  // some (a transfer's end costs no lock otherwise). Raised before the
  // generation is read, so a release that misses a waiter here happened
  // before that waiter looked at the pins (both sequentially consistent).
  std::atomic<uint32_t> waiters_{0};
};

}  // namespace llmdd
