// Deadline: an absolute point on the monotonic clock. Every blocking call in the
// project takes one, so "a dead peer becomes an error within the timeout" holds
// by construction.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace llmdd {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline AfterMs(int64_t ms) { return Deadline(Clock::now() + std::chrono::milliseconds(ms)); }
  static Deadline Never() { return Deadline(Clock::time_point::max()); }
  explicit Deadline(Clock::time_point at) : at_(at) {}

  bool Expired() const { return Clock::now() >= at_; }
  bool IsNever() const { return at_ == Clock::time_point::max(); }
  Clock::time_point At() const { return at_; }

  // Milliseconds left, rounded up, clamped to [0, INT32_MAX]; -1 for Never (poll's "forever").
  int RemainingMsForPoll() const {
    if (IsNever()) return -1;
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(at_ - Clock::now()).count();
    if (left <= 0) return 0;
    return static_cast<int>(std::min<int64_t>((left + 999) / 1000, INT32_MAX));
  }
  int64_t RemainingMs() const {
    if (IsNever()) return INT64_MAX;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at_ - Clock::now()).count();
    return left > 0 ? left : 0;
  }
  Deadline EarlierOf(const Deadline &other) const { return Deadline(std::min(at_, other.at_)); }

 private:
  Clock::time_point at_;
};

}  // namespace llmdd
