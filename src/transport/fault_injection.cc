#include "transport/fault_injection.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

#include "common/endpoint.h"
#include "common/log.h"

namespace llmdd {
namespace {

std::mutex g_plan_mutex;
bool g_plan_loaded = false;
FaultPlan g_plan;
std::atomic<uint64_t> g_stream_counter{0};
// The freeze faults fire once per process.
std::atomic<bool> g_froze_send{false};
std::atomic<bool> g_froze_copy{false};

// Stops the whole process (a stop signal stops every thread) until SIGCONT.
void FreezeThisProcess(const char *where) {
  LOG_WARN("fault injection: stopping this process (SIGSTOP) %s", where);
  raise(SIGSTOP);
  LOG_WARN("fault injection: resumed (SIGCONT)");
}

bool ParseProbability(const std::string &text, double *out) {
  char *end = nullptr;
  double v = strtod(text.c_str(), &end);
  // `!(v >= 0 && v <= 1)` also refuses NaN; the size check refuses embedded NULs.
  if (end != text.c_str() + text.size() || text.empty() || !(v >= 0 && v <= 1)) return false;
  *out = v;
  return true;
}

void LoadFromEnvironmentLocked() {
  if (g_plan_loaded) return;
  g_plan_loaded = true;
  const char *env = getenv("LLMDD_FAULT_INJECTION");
  if (env == nullptr || env[0] == '\0') return;
  std::string error;
  if (!ParseFaultPlan(env, &g_plan, &error)) {
    LOG_ERROR("LLMDD_FAULT_INJECTION ignored: %s", error.c_str());
    g_plan = FaultPlan();
    return;
  }
  LOG_WARN("fault injection is ON (LLMDD_FAULT_INJECTION=%s)", env);
}

}  // namespace

bool ParseFaultPlan(const std::string &text, FaultPlan *plan, std::string *error) {
  FaultPlan parsed;
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      *error = "'" + item + "' is not key=value";
      return false;
    }
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    bool ok = true;
    if (key == "seed") {
      ok = ParseUint64(value, &parsed.seed);
    } else if (key == "delay") {
      size_t colon = value.find(':');
      int64_t ms = parsed.delay_ms;
      ok = ParseProbability(value.substr(0, colon), &parsed.delay) &&
           (colon == std::string::npos || (ParseInt64(value.substr(colon + 1), &ms) && ms >= 0 && ms <= 60000));
      parsed.delay_ms = static_cast<int>(ms);
    } else if (key == "stall") {
      ok = ParseProbability(value, &parsed.stall);
    } else if (key == "drop") {
      ok = ParseProbability(value, &parsed.drop);
    } else if (key == "corrupt") {
      ok = ParseProbability(value, &parsed.corrupt);
    } else if (key == "close") {
      ok = ParseProbability(value, &parsed.close);
    } else if (key == "partial") {
      ok = ParseProbability(value, &parsed.partial);
    } else if (key == "register") {
      ok = ParseProbability(value, &parsed.fail_register);
    } else if (key == "thread") {
      ok = ParseProbability(value, &parsed.fail_thread);
    } else if (key == "freeze_send") {
      ok = ParseUint64(value, &parsed.freeze_send);
    } else if (key == "freeze_copy") {
      ok = value == "0" || value == "1";
      parsed.freeze_copy = value == "1";
    } else {
      *error = "unknown fault '" + key + "'";
      return false;
    }
    if (!ok) {
      *error = "bad value for '" + key + "': '" + value + "'";
      return false;
    }
  }
  *plan = parsed;
  return true;
}

void SetFaultPlan(const FaultPlan &plan) {
  std::lock_guard lock(g_plan_mutex);
  g_plan_loaded = true;
  g_plan = plan;
}

FaultPlan CurrentFaultPlan() {
  std::lock_guard lock(g_plan_mutex);
  LoadFromEnvironmentLocked();
  return g_plan;
}

std::shared_ptr<ByteStream> MaybeInjectFaults(std::shared_ptr<ByteStream> stream) {
  FaultPlan plan = CurrentFaultPlan();
  if (!plan.Active() || !stream) return stream;
  uint64_t n = g_stream_counter.fetch_add(1);
  return std::make_shared<FaultyStream>(std::move(stream), plan, plan.seed * 0x9E3779B97F4A7C15ULL + n);
}

bool InjectRegistrationFailure() {
  FaultPlan plan = CurrentFaultPlan();
  if (plan.fail_register <= 0) return false;
  static std::mutex mutex;
  static std::mt19937_64 rng(plan.seed ^ 0x5EED);
  std::lock_guard lock(mutex);
  return std::uniform_real_distribution<double>(0, 1)(rng) < plan.fail_register;
}

bool InjectThreadStartFailure() {
  FaultPlan plan = CurrentFaultPlan();
  if (plan.fail_thread <= 0) return false;
  if (plan.fail_thread >= 1) return true;
  static std::mutex mutex;
  static std::mt19937_64 rng(plan.seed ^ 0x7EAD);
  std::lock_guard lock(mutex);
  return std::uniform_real_distribution<double>(0, 1)(rng) < plan.fail_thread;
}

void InjectFreezeBeforeServedCopy() {
  if (g_froze_copy.load(std::memory_order_relaxed) || !CurrentFaultPlan().freeze_copy) return;
  if (g_froze_copy.exchange(true)) return;
  FreezeThisProcess("before copying a same-host write from its requester");
}

FaultyStream::FaultyStream(std::shared_ptr<ByteStream> inner, const FaultPlan &plan, uint64_t stream_seed)
    : inner_(std::move(inner)), plan_(plan), rng_(stream_seed) {}

bool FaultyStream::Roll(double p) {
  if (p <= 0) return false;
  std::lock_guard lock(rng_mutex_);
  return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
}

IoStatus FaultyStream::Before(Deadline deadline) {
  if (Roll(plan_.close)) {
    LOG_WARN("fault injection: closing connection to %s", PeerName().c_str());
    inner_->Shutdown();
    return IoStatus::kClosed;
  }
  if (Roll(plan_.stall)) {
    LOG_WARN("fault injection: stalling connection to %s until the deadline", PeerName().c_str());
    // Sleep in slices so Shutdown() still ends the stall; without a deadline
    // (idle serving loops) the stall lasts at most 2 s.
    Deadline until = deadline.EarlierOf(Deadline::AfterMs(2000));
    while (!until.Expired() && !shut_down_.load())
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(20, until.RemainingMs() + 1)));
    if (shut_down_.load()) return IoStatus::kClosed;
    return deadline.Expired() ? IoStatus::kTimeout : IoStatus::kOk;
  }
  if (Roll(plan_.delay)) std::this_thread::sleep_for(std::chrono::milliseconds(plan_.delay_ms));
  return IoStatus::kOk;
}

IoStatus FaultyStream::ReadFull(const iovec *iov, int iovcnt, Deadline deadline) {
  IoStatus before = Before(deadline);
  if (before != IoStatus::kOk) return before;
  return inner_->ReadFull(iov, iovcnt, deadline);
}

bool FaultyStream::ClosedBeforeRead() {
  // Delays and stalls apply to the blocking reads; a close fault applies to every read.
  if (shut_down_.load()) return true;
  if (!Roll(plan_.close)) return false;
  LOG_WARN("fault injection: closing the connection to %s", PeerName().c_str());
  inner_->Shutdown();
  return true;
}

IoStatus FaultyStream::ReadAvailable(void *buf, size_t len, size_t *got) {
  *got = 0;
  return ClosedBeforeRead() ? IoStatus::kClosed : inner_->ReadAvailable(buf, len, got);
}

IoStatus FaultyStream::ReadAtLeast(void *buf, size_t min, size_t max, Deadline deadline, size_t *got) {
  *got = 0;
  IoStatus before = Before(deadline);
  if (before != IoStatus::kOk) return before;
  return inner_->ReadAtLeast(buf, min, max, deadline, got);
}

IoStatus FaultyStream::ReadSoon(void *buf, size_t len, size_t *got) {
  *got = 0;
  return ClosedBeforeRead() ? IoStatus::kClosed : inner_->ReadSoon(buf, len, got);
}

IoStatus FaultyStream::WriteFull(const iovec *iov, int iovcnt, Deadline deadline) {
  IoStatus before = Before(deadline);
  if (before != IoStatus::kOk) return before;
  if (Roll(plan_.drop)) {
    LOG_WARN("fault injection: dropping a message to %s", PeerName().c_str());
    return IoStatus::kOk;
  }
  size_t total = 0;
  for (int i = 0; i < iovcnt; ++i) total += iov[i].iov_len;
  if (plan_.freeze_send > 0 && total > plan_.freeze_send && !g_froze_send.exchange(true)) {
    // The first freeze_send bytes leave, then the process stops mid-write.
    std::vector<iovec> head, tail;
    size_t keep = plan_.freeze_send;
    for (int i = 0; i < iovcnt; ++i) {
      const size_t n = std::min(keep, iov[i].iov_len);
      if (n > 0) head.push_back({iov[i].iov_base, n});
      if (n < iov[i].iov_len) tail.push_back({static_cast<char *>(iov[i].iov_base) + n, iov[i].iov_len - n});
      keep -= n;
    }
    IoStatus io = inner_->WriteFull(head.data(), static_cast<int>(head.size()), deadline);
    if (io != IoStatus::kOk) return io;
    FreezeThisProcess(("in the middle of a write to " + PeerName()).c_str());
    return inner_->WriteFull(tail.data(), static_cast<int>(tail.size()), deadline);
  }
  if (total > 0 && Roll(plan_.partial)) {
    LOG_WARN("fault injection: partial write to %s, then closing", PeerName().c_str());
    size_t keep;
    {
      std::lock_guard lock(rng_mutex_);
      keep = std::uniform_int_distribution<size_t>(0, total - 1)(rng_);
    }
    std::vector<iovec> head;
    for (int i = 0; i < iovcnt && keep > 0; ++i) {
      size_t n = std::min(keep, iov[i].iov_len);
      head.push_back({iov[i].iov_base, n});
      keep -= n;
    }
    if (!head.empty()) inner_->WriteFull(head.data(), static_cast<int>(head.size()), deadline);
    inner_->Shutdown();
    return IoStatus::kClosed;
  }
  if (total > 0 && iov[0].iov_len > 0 && Roll(plan_.corrupt)) {
    // Corrupt a copy of the first buffer (usually the header), never the caller's memory.
    std::string copy(static_cast<const char *>(iov[0].iov_base), iov[0].iov_len);
    size_t at;
    {
      std::lock_guard lock(rng_mutex_);
      at = std::uniform_int_distribution<size_t>(0, copy.size() - 1)(rng_);
    }
    copy[at] = static_cast<char>(copy[at] ^ 0x5A);
    LOG_WARN("fault injection: corrupting byte %zu of a message to %s", at, PeerName().c_str());
    std::vector<iovec> patched(iov, iov + iovcnt);
    patched[0].iov_base = copy.data();
    return inner_->WriteFull(patched.data(), iovcnt, deadline);
  }
  return inner_->WriteFull(iov, iovcnt, deadline);
}

}  // namespace llmdd
