// Submitted requests to one peer that wait for a worker travel together
// (Engine::RunQueued/RunTogether): one transfer carries them, each still gets
// its own outcome. Whole engines whose transfers take the fake transport,
// with every batch passing through a counting, misbehaving link, and one
// transfer worker: while it is held by a first request, the next ones queue.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/engine_config.h"
#include "loopback_util.h"
#include "transport/fake/fake_transport.h"

namespace llmdd {
namespace {

using Clock = std::chrono::steady_clock;

// Counts the batches that reach the link it wraps.
class CountingLink : public TransportLink {
 public:
  explicit CountingLink(std::shared_ptr<TransportLink> inner) : inner_(std::move(inner)) {}
  const TransportCaps &Caps() const override { return inner_->Caps(); }
  bool Usable() const override { return inner_->Usable(); }
  TransportResult Submit(const TransferBatch &batch) override {
    submitted_.fetch_add(1);
    return inner_->Submit(batch);
  }
  void Shutdown() override { inner_->Shutdown(); }
  uint64_t Submitted() const { return submitted_.load(); }

 private:
  std::shared_ptr<TransportLink> inner_;
  std::atomic<uint64_t> submitted_{0};
};

// The fake transport whose links are made to misbehave (FaultyLink) and counted.
class FaultyFakeTransport : public Transport {
 public:
  explicit FaultyFakeTransport(std::shared_ptr<FakeTransport> inner) : inner_(std::move(inner)) {}
  const TransportCaps &Caps() const override { return inner_->Caps(); }
  std::string LocalMetadata() const override { return inner_->LocalMetadata(); }
  adxl::Status RegisterMemory(const TransportRegion &region, std::string *key, std::string *error) override {
    return inner_->RegisterMemory(region, key, error);
  }
  void DeregisterMemory(const TransportRegion &region) override { inner_->DeregisterMemory(region); }
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override {
    auto link = inner_->Connect(peer, deadline, error);
    if (!link) return nullptr;
    faulty_ = std::make_shared<FaultyLink>(link, FaultyLink::Plan{});
    counting_ = std::make_shared<CountingLink>(faulty_);
    return counting_;
  }
  FaultyLink &Faulty() { return *faulty_; }
  uint64_t Batches() const { return counting_->Submitted(); }

 private:
  std::shared_ptr<FakeTransport> inner_;
  std::shared_ptr<FaultyLink> faulty_;
  std::shared_ptr<CountingLink> counting_;
};

constexpr size_t kSlot = 64 * 1024;  // one request's bytes
constexpr size_t kSlots = 64;

class Coalescing : public ::testing::Test {
 protected:
  void SetUp() override {
    remote_.resize(kSlot * kSlots);
    for (size_t i = 0; i < remote_.size(); ++i) remote_[i] = static_cast<char>(i * 13 + i / 4099);
    local_.assign(remote_.size(), 0);
    server_id_ = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
    server_.AddTransport(FakeTransport::Create(&fabric_, "fake-server"));
    link_ = std::make_shared<FaultyFakeTransport>(FakeTransport::Create(&fabric_, "client"));
    client_.AddTransport(link_);
    ASSERT_EQ(server_.Initialize(server_id_, {}), adxl::SUCCESS);
    // One worker: while it carries a request, the next ones wait in the queue.
    ASSERT_EQ(client_.Initialize("127.0.0.1", {{kOptWorkerThreads, "1"}}), adxl::SUCCESS);
    uint64_t handle = 0;
    ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote_.data()), remote_.size(), adxl::MEM_HOST,
                                  &handle),
              adxl::SUCCESS);
    ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  }
  void TearDown() override {
    client_.Finalize();
    server_.Finalize();
  }

  adxl::TransferOpDesc Slot(size_t i) const {
    return {reinterpret_cast<uintptr_t>(local_.data()) + i * kSlot, reinterpret_cast<uintptr_t>(remote_.data()) + i * kSlot,
            kSlot};
  }
  uint64_t Submit(adxl::TransferOp op, const adxl::TransferOpDesc &desc) {
    uint64_t id = 0;
    EXPECT_EQ(client_.TransferAsync(server_id_, op, &desc, 1, nullptr, 0, &id), adxl::SUCCESS);
    return id;
  }
  // Polls until terminal (or 10 s): the terminal status, WAITING if none came.
  adxl::TransferStatus End(uint64_t id) {
    const auto give_up = Clock::now() + std::chrono::seconds(10);
    adxl::TransferStatus status = adxl::TransferStatus::WAITING;
    while (Clock::now() < give_up) {
      if (client_.GetTransferStatus(id, &status) != adxl::SUCCESS) return adxl::TransferStatus::FAILED;
      if (status != adxl::TransferStatus::WAITING) return status;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return status;
  }
  // Holds the only worker with a first request that takes `delay_ms` on the link.
  uint64_t HoldTheWorker(int delay_ms) {
    FaultyLink::Plan plan;
    plan.delay_ms = delay_ms;
    link_->Faulty().SetPlan(plan);
    const uint64_t id = Submit(adxl::READ, Slot(0));
    for (int i = 0; i < 5000 && link_->Faulty().InFlight() == 0; ++i)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    EXPECT_EQ(link_->Faulty().InFlight(), 1) << "the first request never reached the link";
    return id;
  }
  bool SlotArrived(size_t i) const { return std::memcmp(&local_[i * kSlot], &remote_[i * kSlot], kSlot) == 0; }

  FakeFabric fabric_;
  std::vector<char> remote_, local_;
  std::string server_id_;
  std::shared_ptr<FaultyFakeTransport> link_;
  Engine server_, client_;
};

TEST_F(Coalescing, QueuedRequestsToOnePeerTravelAsOneTransferAndEachCompletes) {
  const uint64_t first = HoldTheWorker(300);
  link_->Faulty().SetPlan(FaultyLink::Plan{});
  std::vector<uint64_t> ids;
  for (size_t i = 1; i < kSlots; ++i) ids.push_back(Submit(adxl::READ, Slot(i)));
  EXPECT_EQ(End(first), adxl::TransferStatus::COMPLETED);
  for (uint64_t id : ids) EXPECT_EQ(End(id), adxl::TransferStatus::COMPLETED) << "request " << id;
  for (size_t i = 0; i < kSlots; ++i) EXPECT_TRUE(SlotArrived(i)) << "slot " << i;
  // 63 × 64 KiB carried together: split into at most one part per lane (4),
  // instead of one batch per request.
  EXPECT_LE(link_->Batches(), 1u + 4u) << "queued requests were not carried together";
}

TEST_F(Coalescing, AMemberThatIsRefusedFailsAloneAndTheOthersComplete) {
  const uint64_t first = HoldTheWorker(300);
  link_->Faulty().SetPlan(FaultyLink::Plan{});
  std::vector<uint64_t> good;
  for (size_t i = 1; i < 10; ++i) good.push_back(Submit(adxl::READ, Slot(i)));
  adxl::TransferOpDesc outside = Slot(10);
  outside.remote_addr = reinterpret_cast<uintptr_t>(remote_.data()) + remote_.size() - 8;  // past the registration
  const uint64_t bad = Submit(adxl::READ, outside);
  for (size_t i = 11; i < 20; ++i) good.push_back(Submit(adxl::READ, Slot(i)));
  EXPECT_EQ(End(first), adxl::TransferStatus::COMPLETED);
  EXPECT_EQ(End(bad), adxl::TransferStatus::FAILED);
  for (uint64_t id : good) EXPECT_EQ(End(id), adxl::TransferStatus::COMPLETED) << "request " << id;
  for (size_t i = 0; i < 20; ++i) {
    if (i == 10) continue;
    EXPECT_TRUE(SlotArrived(i)) << "slot " << i;
  }
}

TEST_F(Coalescing, ReadsAndWritesQueuedTogetherEachMoveTheirOwnBytes) {
  const uint64_t first = HoldTheWorker(300);
  link_->Faulty().SetPlan(FaultyLink::Plan{});
  // Odd slots are written from local memory (filled with a pattern first), even ones read.
  for (size_t i = 1; i < 16; i += 2) std::memset(&local_[i * kSlot], static_cast<int>(0x40 + i), kSlot);
  std::vector<uint64_t> ids;
  for (size_t i = 1; i < 16; ++i) ids.push_back(Submit(i % 2 == 1 ? adxl::WRITE : adxl::READ, Slot(i)));
  EXPECT_EQ(End(first), adxl::TransferStatus::COMPLETED);
  for (uint64_t id : ids) EXPECT_EQ(End(id), adxl::TransferStatus::COMPLETED) << "request " << id;
  for (size_t i = 1; i < 16; ++i) {
    if (i % 2 == 1) {
      EXPECT_EQ(remote_[i * kSlot], static_cast<char>(0x40 + i));
      EXPECT_EQ(remote_[i * kSlot + kSlot - 1], static_cast<char>(0x40 + i));
    } else {
      EXPECT_TRUE(SlotArrived(i)) << "slot " << i;
    }
  }
}

// A carried group stalled on the link: Disconnect cancels its members, the
// group stops, every member ends FAILED promptly and none moves a byte after.
TEST_F(Coalescing, DisconnectEndsAStalledGroupAndEveryMember) {
  const uint64_t first = HoldTheWorker(300);
  FaultyLink::Plan stall;
  stall.stall = true;
  link_->Faulty().SetPlan(stall);
  std::vector<uint64_t> ids;
  for (size_t i = 1; i < 16; ++i) ids.push_back(Submit(adxl::READ, Slot(i)));
  EXPECT_EQ(End(first), adxl::TransferStatus::COMPLETED);
  for (int i = 0; i < 5000 && link_->Faulty().InFlight() == 0; ++i)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  ASSERT_GE(link_->Faulty().InFlight(), 1) << "the group never reached the link";
  const auto t0 = Clock::now();
  EXPECT_EQ(client_.Disconnect(server_id_, 3000), adxl::SUCCESS);
  for (uint64_t id : ids) EXPECT_EQ(End(id), adxl::TransferStatus::FAILED) << "request " << id;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  EXPECT_EQ(link_->Faulty().InFlight(), 0);
  for (size_t i = 1; i < 16; ++i) EXPECT_EQ(local_[i * kSlot], 0) << "slot " << i << " was written";
}

}  // namespace
}  // namespace llmdd
