// Fault injection: a ByteStream decorator that delays, stalls, drops, corrupts,
// closes or half-writes, driven by a seeded plan. Off unless a plan is set,
// either by a test (SetFaultPlan) or, for multi-process chaos tests, by the
// environment variable LLMDD_FAULT_INJECTION, e.g.
//   LLMDD_FAULT_INJECTION="seed=7,delay=0.05:20,stall=0.01,drop=0.01,corrupt=0.01,close=0.01,partial=0.01,register=0.1,thread=0.1"
// Each probability applies per read/write call (register: per RegisterMem;
// thread: per thread the library starts).
// Two faults freeze the process itself at a chosen point, once per process,
// as a SIGSTOP from outside would at the worst moment (a test then resumes it
// with SIGCONT): freeze_send=N cuts the first stream write of more than N
// bytes after N bytes and stops the process before it sends the rest (a peer
// frozen mid-transfer); freeze_copy=1 stops the serving side of a same-host
// write between its last check whether the requester gave up and its first
// copy call from the requester's memory.
// The decorator honours deadlines like the real stream: a stall waits until
// the caller's deadline and reports a timeout, it never hangs.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "transport/stream.h"

namespace llmdd {

struct FaultPlan {
  uint64_t seed = 1;
  double delay = 0;     // probability of sleeping delay_ms before the call
  int delay_ms = 10;
  double stall = 0;     // probability of blocking until the deadline (a frozen peer)
  double drop = 0;      // probability of reporting a write as done without sending it
  double corrupt = 0;   // probability of flipping one byte of a write
  double close = 0;     // probability of shutting the connection down before the call
  double partial = 0;   // probability of sending only part of a write, then shutting down
  double fail_register = 0;  // probability that RegisterMem fails (engine level)
  double fail_thread = 0;    // probability that starting a thread fails (as at a thread limit)
  uint64_t freeze_send = 0;  // > 0: stop the process once, N bytes into a larger stream write
  bool freeze_copy = false;  // stop the process once, right before a served same-host write's copy
  bool Active() const {
    return delay + stall + drop + corrupt + close + partial + fail_register + fail_thread > 0 || freeze_send > 0 ||
           freeze_copy;
  }
};

// "key=value,..." as in the header comment. False with *error on bad input.
bool ParseFaultPlan(const std::string &text, FaultPlan *plan, std::string *error);

// Process-wide plan. The environment variable is read on first use.
void SetFaultPlan(const FaultPlan &plan);
FaultPlan CurrentFaultPlan();

// Wraps `stream` when the current plan is active; returns it unchanged otherwise.
std::shared_ptr<ByteStream> MaybeInjectFaults(std::shared_ptr<ByteStream> stream);
// Rolls the registration-failure dice of the current plan.
bool InjectRegistrationFailure();
// Rolls the thread-start-failure dice of the current plan.
bool InjectThreadStartFailure();
// freeze_copy: stops this process (SIGSTOP), the first time only. Called by
// the serving side of a same-host write right before a copy call.
void InjectFreezeBeforeServedCopy();

class FaultyStream final : public ByteStream {
 public:
  FaultyStream(std::shared_ptr<ByteStream> inner, const FaultPlan &plan, uint64_t stream_seed);
  IoStatus ReadFull(const iovec *iov, int iovcnt, Deadline deadline) override;
  IoStatus WriteFull(const iovec *iov, int iovcnt, Deadline deadline) override;
  IoStatus ReadAvailable(void *buf, size_t len, size_t *got) override;
  bool ArrivesSoon() override { return !shut_down_.load() && inner_->ArrivesSoon(); }
  IoStatus ReadSoon(void *buf, size_t len, size_t *got) override;
  IoStatus ReadAtLeast(void *buf, size_t min, size_t max, Deadline deadline, size_t *got) override;
  void Shutdown() override {
    shut_down_ = true;
    inner_->Shutdown();
  }
  void Close() override { inner_->Close(); }
  std::string PeerName() const override { return inner_->PeerName(); }
  int LastErrno() const override { return inner_->LastErrno(); }
  bool SocketEnds(sockaddr_storage *local, sockaddr_storage *remote) const override {
    return inner_->SocketEnds(local, remote);
  }
  int NativeHandle() const override { return inner_->NativeHandle(); }

 private:
  bool Roll(double p);
  // Applies delay/stall/close; returns kOk to proceed.
  IoStatus Before(Deadline deadline);
  // ReadAvailable and ReadSoon: true when the stream is shut down or a close
  // fault rolled (it is then shut down).
  bool ClosedBeforeRead();

  std::shared_ptr<ByteStream> inner_;
  FaultPlan plan_;
  std::mutex rng_mutex_;
  std::mt19937_64 rng_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace llmdd
