// A fake transport for tests: engines in one process reach each other's
// registered memory with memcpy, no socket and no kernel in the way. It keeps
// the contract a real transport keeps (transport/transport.h): it moves only
// bytes inside memory the remote side registered with the right access,
// honours the batch's deadline and its request's Cancel, and reports each
// outcome with the status a real transport would. Tests use it to drive the
// engine's request path (policy, split into parts, completion, cancel) without
// the timing of the network, and wrap it in FaultyLink to make it misbehave.
//
// A FakeFabric is the "network": transports join it under a name, which they
// advertise in the handshake (LocalMetadata); Connect finds the peer by the
// name it advertised (TransportPeer::metadata).
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "transport/transport.h"

namespace llmdd {

class FakeTransport;

class FakeFabric {
 public:
  void Join(const std::string &name, FakeTransport *transport);
  void Leave(const std::string &name, FakeTransport *transport);
  std::shared_ptr<FakeTransport> Find(const std::string &name) const;

 private:
  friend class FakeTransport;
  mutable std::mutex mutex_;
  std::map<std::string, std::weak_ptr<FakeTransport>> members_;
};

class FakeTransport : public Transport, public std::enable_shared_from_this<FakeTransport> {
 public:
  static std::shared_ptr<FakeTransport> Create(FakeFabric *fabric, const std::string &name);
  ~FakeTransport() override;
  static const TransportCaps &StaticCaps();
  const TransportCaps &Caps() const override { return StaticCaps(); }
  std::string LocalMetadata() const override { return name_; }
  adxl::Status RegisterMemory(const TransportRegion &region, std::string *remote_key, std::string *error) override;
  void DeregisterMemory(const TransportRegion &region) override;
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override;

  // Copies `len` bytes between `local` and this transport's registered
  // memory at `remote` (READ: out of it; WRITE: into it) when a registration
  // allows it; PARAM_INVALID otherwise, with nothing copied.
  adxl::Status Serve(adxl::TransferOp op, uintptr_t local, uintptr_t remote, uint64_t len, std::string *error);
  // Batches served (by any link to this transport), for tests.
  uint64_t Served() const { return served_.load(); }

 private:
  friend class FakeLink;
  FakeTransport(FakeFabric *fabric, std::string name) : fabric_(fabric), name_(std::move(name)) {}
  FakeFabric *fabric_;
  const std::string name_;
  mutable std::mutex mutex_;  // guards regions_; held while copying, so a deregistration waits for copies
  std::vector<TransportRegion> regions_;
  std::atomic<uint64_t> served_{0};
};

class FakeLink : public TransportLink {
 public:
  explicit FakeLink(std::shared_ptr<FakeTransport> remote) : remote_(std::move(remote)) {}
  const TransportCaps &Caps() const override { return FakeTransport::StaticCaps(); }
  bool Usable() const override { return !shut_down_.load(); }
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override { shut_down_.store(true); }
  uint64_t Submitted() const { return submitted_.load(); }

 private:
  std::shared_ptr<FakeTransport> remote_;
  std::atomic<bool> shut_down_{false};
  std::atomic<uint64_t> submitted_{0};
};

// A decorator that makes any link misbehave, for tests of what the engine does
// when a transport does. Each Submit follows the plan in force when it starts.
class FaultyLink : public TransportLink {
 public:
  struct Plan {
    adxl::Status fail_with = adxl::SUCCESS;  // != SUCCESS: every batch ends so, nothing moved
    int fail_every = 0;                      // > 0: only every n-th batch fails (1st, n+1-th, ...)
    bool stall = false;       // hold every batch until its deadline (TIMEOUT) or its request's Cancel
    bool decline = false;     // decline every batch (the next path takes it)
    int delay_ms = 0;         // before each batch is passed on
  };
  FaultyLink(std::shared_ptr<TransportLink> inner, Plan plan) : inner_(std::move(inner)), plan_(plan) {}
  const TransportCaps &Caps() const override { return inner_->Caps(); }
  bool Usable() const override { return inner_->Usable(); }
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override;
  void SetPlan(const Plan &plan);
  // Batches that began and have not ended (a test waits for one to stall).
  int InFlight() const { return in_flight_.load(); }

 private:
  std::shared_ptr<TransportLink> inner_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;  // a stalled batch looks again (Shutdown, a Cancel poll)
  Plan plan_;
  uint64_t count_ = 0;
  bool shut_down_ = false;
  std::atomic<int> in_flight_{0};
};

}  // namespace llmdd
