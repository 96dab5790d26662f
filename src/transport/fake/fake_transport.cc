#include "transport/fake/fake_transport.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "engine/memory_registry.h"
#include "engine/transfer_request.h"

namespace llmdd {

void FakeFabric::Join(const std::string &name, FakeTransport *transport) {
  std::lock_guard lock(mutex_);
  members_[name] = transport->weak_from_this();
}

void FakeFabric::Leave(const std::string &name, FakeTransport *transport) {
  std::lock_guard lock(mutex_);
  auto it = members_.find(name);
  if (it == members_.end()) return;
  auto member = it->second.lock();
  if (member == nullptr || member.get() == transport) members_.erase(it);
}

std::shared_ptr<FakeTransport> FakeFabric::Find(const std::string &name) const {
  std::lock_guard lock(mutex_);
  auto it = members_.find(name);
  return it == members_.end() ? nullptr : it->second.lock();
}

std::shared_ptr<FakeTransport> FakeTransport::Create(FakeFabric *fabric, const std::string &name) {
  std::shared_ptr<FakeTransport> transport(new FakeTransport(fabric, name));
  fabric->Join(name, transport.get());
  return transport;
}

FakeTransport::~FakeTransport() {
  // weak_from_this() is expired by now: Leave drops the entry (or one already replaced).
  std::lock_guard lock(fabric_->mutex_);
  auto it = fabric_->members_.find(name_);
  if (it != fabric_->members_.end() && it->second.expired()) fabric_->members_.erase(it);
}

const TransportCaps &FakeTransport::StaticCaps() {
  static const TransportCaps caps = [] {
    TransportCaps c;
    c.name = "fake";
    c.max_parallel = 8;
    return c;
  }();
  return caps;
}

adxl::Status FakeTransport::RegisterMemory(const TransportRegion &region, std::string *remote_key,
                                           std::string *error) {
  (void)error;
  std::lock_guard lock(mutex_);
  regions_.push_back(region);
  *remote_key = name_;
  return adxl::SUCCESS;
}

void FakeTransport::DeregisterMemory(const TransportRegion &region) {
  std::lock_guard lock(mutex_);
  for (auto it = regions_.begin(); it != regions_.end(); ++it) {
    if (it->addr == region.addr && it->len == region.len && it->access == region.access) {
      regions_.erase(it);
      return;
    }
  }
}

std::shared_ptr<TransportLink> FakeTransport::Connect(const TransportPeer &peer, Deadline deadline,
                                                      std::string *error) {
  (void)deadline;
  if (peer.metadata.empty()) {
    *error = "peer " + peer.peer_name + " did not advertise a fake transport";
    return nullptr;
  }
  auto remote = fabric_->Find(peer.metadata);
  if (remote == nullptr) {
    *error = "no fake transport named " + peer.metadata;
    return nullptr;
  }
  return std::make_shared<FakeLink>(std::move(remote));
}

adxl::Status FakeTransport::Serve(adxl::TransferOp op, uintptr_t local, uintptr_t remote, uint64_t len,
                                  std::string *error) {
  const uint32_t rights = op == adxl::READ ? kAccessRead : kAccessWrite;
  std::lock_guard lock(mutex_);
  const bool allowed = std::any_of(regions_.begin(), regions_.end(), [&](const TransportRegion &r) {
    return (r.access & rights) == rights && remote >= r.addr && len <= r.len && remote - r.addr <= r.len - len;
  });
  if (!allowed || len == 0) {
    *error = "range [" + std::to_string(remote) + ", +" + std::to_string(len) + ") is not registered on " + name_ +
             (op == adxl::READ ? " for remote reads" : " for remote writes");
    return adxl::PARAM_INVALID;
  }
  if (op == adxl::READ) {
    memcpy(reinterpret_cast<void *>(local), reinterpret_cast<const void *>(remote), len);
  } else {
    memcpy(reinterpret_cast<void *>(remote), reinterpret_cast<const void *>(local), len);
  }
  return adxl::SUCCESS;
}

TransportResult FakeLink::Submit(const TransferBatch &batch) {
  submitted_.fetch_add(1);
  TransportResult result;
  if (shut_down_.load()) {
    result.status = adxl::FAILED;
    result.error = "the fake link is shut down";
    return result;
  }
  if (batch.deadline.Expired()) {
    result.status = adxl::TIMEOUT;
    result.error = "the deadline passed before the fake link started";
    return result;
  }
  if (batch.request != nullptr && !batch.request->BeginIo(nullptr)) {
    result.status = TransferRequest::kCanceledStatus;
    result.error = "canceled";
    return result;
  }
  for (size_t i = 0; i < batch.count && result.status == adxl::SUCCESS; ++i) {
    const Segment &s = batch.segs[i];
    result.status = remote_->Serve(batch.op, s.local, s.remote, s.len, &result.error);
  }
  remote_->served_.fetch_add(1);
  if (batch.request != nullptr) batch.request->EndIo(nullptr);
  return result;
}

TransportResult FaultyLink::Submit(const TransferBatch &batch) {
  in_flight_.fetch_add(1);
  struct Leave {
    std::atomic<int> *n;
    ~Leave() { n->fetch_sub(1); }
  } leave{&in_flight_};
  Plan plan;
  uint64_t nth = 0;
  {
    std::lock_guard lock(mutex_);
    plan = plan_;
    nth = count_++;
  }
  TransportResult result;
  if (plan.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(plan.delay_ms));
  if (plan.decline) {
    result.declined = true;
    return result;
  }
  if (plan.stall) {
    // Held like a peer that stopped answering: until the deadline, a Cancel, or Shutdown.
    std::unique_lock lock(mutex_);
    for (;;) {
      if (shut_down_) {
        result.status = adxl::FAILED;
        result.error = "the link was shut down";
        return result;
      }
      if (batch.request != nullptr && batch.request->CancelRequested()) {
        result.status = TransferRequest::kCanceledStatus;
        result.error = "canceled";
        return result;
      }
      if (batch.deadline.Expired()) {
        result.status = adxl::TIMEOUT;
        result.error = "stalled until the deadline (fault plan)";
        return result;
      }
      // A Cancel has no hook into this link: look again every few ms.
      wake_.wait_for(lock, std::chrono::milliseconds(5));
    }
  }
  if (plan.fail_with != adxl::SUCCESS && (plan.fail_every <= 1 || nth % plan.fail_every == 0)) {
    result.status = plan.fail_with;
    result.error = "failed by the fault plan";
    return result;
  }
  return inner_->Submit(batch);
}

void FaultyLink::Shutdown() {
  {
    std::lock_guard lock(mutex_);
    shut_down_ = true;
  }
  wake_.notify_all();
  inner_->Shutdown();
}

void FaultyLink::SetPlan(const Plan &plan) {
  {
    std::lock_guard lock(mutex_);
    plan_ = plan;
  }
  wake_.notify_all();
}

}  // namespace llmdd
