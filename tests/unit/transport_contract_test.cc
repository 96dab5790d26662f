// The transport contract (transport/transport.h) from the engine's side,
// without sockets: the lane pool offers a transfer to its links in the path
// policy's order, splits large ones into parts that run at once, and turns
// what a link reports (bytes moved, refusal, decline, stall, cancel) into the
// transfer's outcome. The links are the fake transport, made to misbehave by
// FaultyLink; the last tests run whole engines whose transfers take the fake.
#include "transport/fake/fake_transport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/lane_pool.h"
#include "engine/path_policy.h"
#include "engine/transfer_request.h"
#include "engine/worker_pool.h"
#include "loopback_util.h"
#ifdef LLMDD_HAVE_UCX
#include <ucs/debug/log_def.h>
#include <sys/mman.h>
#include <unistd.h>

#include "transport/ucx/ucx_transport.h"
#endif

namespace llmdd {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MsSince(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

constexpr size_t kBytes = 4 << 20;

// A "remote" engine's memory registered on a fake transport, and a lane pool
// (no lane is ever opened: the fake needs none) whose links reach it.
class FakeLinks : public ::testing::Test {
 protected:
  void SetUp() override {
    remote_.resize(kBytes);
    for (size_t i = 0; i < remote_.size(); ++i) remote_[i] = static_cast<char>(i * 29 + i / 997);
    local_.assign(kBytes, 0);
    server_ = FakeTransport::Create(&fabric_, "server");
    std::string key, error;
    ASSERT_EQ(server_->RegisterMemory({R(0), kBytes, MemoryKind::kHost, kAccessReadWrite}, &key, &error),
              adxl::SUCCESS);
    workers_ = WorkerPool::Create(4);
    pool_ = std::make_unique<LanePool>("server", workers_.get(), nullptr);
    pool_->AddLazyLanes(4);  // the parallelism a transfer may use
  }
  void TearDown() override { pool_.reset(); }
  uintptr_t R(size_t off) { return reinterpret_cast<uintptr_t>(remote_.data()) + off; }
  uintptr_t L(size_t off) { return reinterpret_cast<uintptr_t>(local_.data()) + off; }
  std::shared_ptr<FakeLink> FakeTo(const std::string &name) {
    TransportPeer peer;
    peer.peer_name = name;
    peer.metadata = name;  // what the peer's handshake would have advertised
    std::string error;
    auto client = FakeTransport::Create(&fabric_, "client-" + std::to_string(++clients_));
    clients_kept_.push_back(client);
    return std::static_pointer_cast<FakeLink>(client->Connect(peer, Deadline::AfterMs(100), &error));
  }
  adxl::Status Move(adxl::TransferOp op, size_t off, size_t len, std::string *error, int timeout_ms = 5000,
                    TransferRequest *request = nullptr) {
    return pool_->Transfer(op, {{L(off), R(off), len}}, Deadline::AfterMs(timeout_ms), error, request);
  }

  FakeFabric fabric_;
  std::shared_ptr<FakeTransport> server_;
  std::vector<std::shared_ptr<FakeTransport>> clients_kept_;
  int clients_ = 0;
  std::vector<char> remote_, local_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<LanePool> pool_;
};

TEST_F(FakeLinks, ReadAndWriteMoveTheBytesOfRegisteredMemoryOnly) {
  auto link = FakeTo("server");
  ASSERT_TRUE(link);
  pool_->SetLinks({link});
  std::string error;
  ASSERT_EQ(Move(adxl::READ, 4096, 64 << 10, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(0, memcmp(local_.data() + 4096, remote_.data() + 4096, 64 << 10));
  EXPECT_EQ(local_[4095], 0);
  memset(local_.data(), 'W', 8192);
  ASSERT_EQ(Move(adxl::WRITE, 0, 8192, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(std::string(remote_.data(), 8192), std::string(8192, 'W'));
  // One byte past the registration: refused, nothing moved.
  const std::vector<char> before = remote_;
  EXPECT_EQ(pool_->Transfer(adxl::WRITE, {{L(0), R(kBytes - 16), 17}}, Deadline::AfterMs(1000), &error),
            adxl::PARAM_INVALID);
  EXPECT_NE(error.find("not registered"), std::string::npos) << error;
  EXPECT_EQ(remote_, before);
  // Deregistered: refused too.
  server_->DeregisterMemory({R(0), kBytes, MemoryKind::kHost, kAccessReadWrite});
  EXPECT_EQ(Move(adxl::READ, 0, 4096, &error), adxl::PARAM_INVALID);
}

TEST_F(FakeLinks, ALargeTransferIsSplitIntoPartsThatRunAtOnce) {
  auto link = FakeTo("server");
  pool_->SetLinks({link});
  std::string error;
  ASSERT_EQ(Move(adxl::READ, 0, kBytes, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(local_, remote_);
  // 4 MiB over 4 lanes (the fake takes up to 8 at once): 4 parts.
  EXPECT_EQ(link->Submitted(), SplitParts(kBytes, 4));
  EXPECT_EQ(link->Submitted(), 4u);
  // Below the split threshold: one batch.
  ASSERT_EQ(Move(adxl::READ, 0, 64 << 10, &error), adxl::SUCCESS);
  EXPECT_EQ(link->Submitted(), 5u);
}

// The fake's bytes under the same-host path's name: the policy splits it by
// the same-host rule (cores and part size), not by TCP's.
class SameHostNamedLink : public TransportLink {
 public:
  explicit SameHostNamedLink(std::shared_ptr<FakeLink> inner) : inner_(std::move(inner)) {
    caps_ = inner_->Caps();
    caps_.name = "shm";
  }
  const TransportCaps &Caps() const override { return caps_; }
  bool Usable() const override { return inner_->Usable(); }
  TransportResult Submit(const TransferBatch &batch) override {
    ++submitted;
    if (batch.part) ++parts;
    return inner_->Submit(batch);
  }
  void Shutdown() override { inner_->Shutdown(); }
  std::atomic<int> submitted{0};
  std::atomic<int> parts{0};  // batches marked as parts of a split transfer

 private:
  std::shared_ptr<FakeLink> inner_;
  TransportCaps caps_;
};

TEST_F(FakeLinks, ASameHostTransferIsSplitAtMostOncePerCoreInLargeParts) {
  auto link = std::make_shared<SameHostNamedLink>(FakeTo("server"));
  pool_->SetLinks({link});
  std::string error;
  // 2 cores, the default part size (2 MiB): a 1 MiB READ and a 2 MiB WRITE
  // stay whole (TCP's rule would cut both into 4 parts on these 4 lanes).
  pool_->SetSplitRule(SplitRule{2, kSameHostMinPartBytesDefault});
  ASSERT_EQ(Move(adxl::READ, 0, 1 << 20, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(0, memcmp(local_.data(), remote_.data(), 1 << 20));
  ASSERT_EQ(Move(adxl::WRITE, 0, 2 << 20, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(link->submitted.load(), 2);
  EXPECT_EQ(link->parts.load(), 0);
  // 1 MiB parts on 2 cores: 4 MiB in 2 parts (one per core, not one per lane).
  pool_->SetSplitRule(SplitRule{2, 1 << 20});
  local_.assign(kBytes, 0);
  ASSERT_EQ(Move(adxl::READ, 0, kBytes, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(local_, remote_);
  EXPECT_EQ(link->submitted.load(), 4);
  EXPECT_EQ(link->parts.load(), 2);
  // 16 cores: the 4 lanes bound it.
  pool_->SetSplitRule(SplitRule{16, 1 << 20});
  local_.assign(kBytes, 0);
  ASSERT_EQ(Move(adxl::READ, 0, kBytes, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(local_, remote_);
  EXPECT_EQ(link->parts.load(), 6);
  // One core: never split, whatever the size.
  pool_->SetSplitRule(SplitRule{1, 64 << 10});
  ASSERT_EQ(Move(adxl::READ, 0, kBytes, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(link->parts.load(), 6);
  EXPECT_EQ(link->submitted.load(), 9);
}

TEST_F(FakeLinks, ADeclinedBatchGoesToTheNextLinkInThePolicysOrder) {
  auto first = FakeTo("server"), second = FakeTo("server");
  FaultyLink::Plan decline;
  decline.decline = true;
  auto declining = std::make_shared<FaultyLink>(first, decline);
  pool_->SetLinks({declining, second});
  std::string error;
  ASSERT_EQ(Move(adxl::READ, 0, 8192, &error), adxl::SUCCESS) << error;
  EXPECT_EQ(0, memcmp(local_.data(), remote_.data(), 8192));
  EXPECT_EQ(first->Submitted(), 0u);
  EXPECT_EQ(second->Submitted(), 1u);
  // Declined by every link: FAILED, saying no transport reaches the peer.
  pool_->SetLinks({declining});
  EXPECT_EQ(Move(adxl::READ, 0, 8192, &error), adxl::FAILED);
  EXPECT_NE(error.find("no transport"), std::string::npos) << error;
}

TEST_F(FakeLinks, APartThatFailsFailsTheTransferWithItsStatus) {
  FaultyLink::Plan plan;
  plan.fail_with = adxl::TIMEOUT;
  plan.fail_every = 3;  // the 1st of every 3 batches
  auto faulty = std::make_shared<FaultyLink>(FakeTo("server"), plan);
  pool_->SetLinks({faulty});
  std::string error;
  EXPECT_EQ(Move(adxl::READ, 0, kBytes, &error), adxl::TIMEOUT);
  EXPECT_EQ(error, "failed by the fault plan");
  // A refused range outranks a timeout among the parts' outcomes.
  plan.fail_with = adxl::PARAM_INVALID;
  plan.fail_every = 2;
  faulty->SetPlan(plan);
  EXPECT_EQ(Move(adxl::WRITE, 0, kBytes, &error), adxl::PARAM_INVALID);
}

TEST_F(FakeLinks, AStalledBatchEndsAtItsDeadlineWithTimeout) {
  FaultyLink::Plan plan;
  plan.stall = true;
  pool_->SetLinks({std::make_shared<FaultyLink>(FakeTo("server"), plan)});
  std::string error;
  const auto t0 = Clock::now();
  EXPECT_EQ(Move(adxl::READ, 0, 4096, &error, 200), adxl::TIMEOUT);
  EXPECT_GE(MsSince(t0), 195);
  EXPECT_LT(MsSince(t0), 1500);
}

TEST_F(FakeLinks, CancelEndsAStalledRequestPromptlyAndShutdownEndsTheRest) {
  FaultyLink::Plan plan;
  plan.stall = true;
  auto faulty = std::make_shared<FaultyLink>(FakeTo("server"), plan);
  pool_->SetLinks({faulty});
  auto request = std::make_shared<TransferRequest>("server", adxl::READ,
                                                   std::vector<Segment>{{L(0), R(0), kBytes}}, Deadline::AfterMs(30000));
  request->Arm([](void *) {}, nullptr, pool_.get());
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  std::thread runner([&] {
    status = pool_->Transfer(request->Op(), request->Segments(), request->GetDeadline(), &error, request.get());
    request->Finish(&status, &error);
  });
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (faulty->InFlight() < 4 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(faulty->InFlight(), 4) << "every part stalls";
  const auto t0 = Clock::now();
  request->Cancel();
  ASSERT_TRUE(request->Wait(Deadline::AfterMs(2000)));
  runner.join();
  EXPECT_LT(MsSince(t0), 1000);
  EXPECT_EQ(request->Status(), TransferRequest::kCanceledStatus);
  EXPECT_TRUE(request->Canceled());
  EXPECT_EQ(faulty->InFlight(), 0);
  // Shutdown ends a stalled batch with FAILED, and every later one at once.
  std::thread late([&] { status = Move(adxl::READ, 0, 4096, &error, 30000); });
  while (faulty->InFlight() < 1 && Clock::now() < until + std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  pool_->ShutdownAll();
  late.join();
  EXPECT_EQ(status, adxl::FAILED);
}

// A link that reaches device memory only (a later transport's shape).
class DeviceOnlyLink : public TransportLink {
 public:
  DeviceOnlyLink() {
    caps_.name = "device-only";
    caps_.memory_kinds = MemoryKindBit(MemoryKind::kDevice);
  }
  const TransportCaps &Caps() const override { return caps_; }
  bool Usable() const override { return true; }
  TransportResult Submit(const TransferBatch &) override {
    ++submitted;
    return {};
  }
  void Shutdown() override {}
  int submitted = 0;

 private:
  TransportCaps caps_;
};

TEST_F(FakeLinks, ThePolicySkipsLinksThatCannotReachTheMemoryKind) {
  auto device = std::make_shared<DeviceOnlyLink>();
  auto fake = FakeTo("server");
  pool_->SetLinks({device, fake});
  std::string error;
  ASSERT_EQ(Move(adxl::READ, 0, 4096, &error), adxl::SUCCESS) << error;  // host memory: the fake
  EXPECT_EQ(device->submitted, 0);
  EXPECT_EQ(fake->Submitted(), 1u);
  ASSERT_EQ(pool_->Transfer(adxl::READ, {{L(0), R(0), 4096}}, Deadline::AfterMs(1000), &error, nullptr,
                            MemoryKind::kDevice),
            adxl::SUCCESS);
  EXPECT_EQ(device->submitted, 1);
  EXPECT_EQ(fake->Submitted(), 1u);
}

TEST(MemoryKind, IsAnAttributeOfTheRegistrationThatHoldsTheByte) {
  MemoryRegistry registry;
  std::vector<char> host(4096), device(4096);
  registry.Add(reinterpret_cast<uintptr_t>(host.data()), host.size(), adxl::MEM_HOST);
  const uint64_t id = registry.Add(reinterpret_cast<uintptr_t>(device.data()), device.size(), adxl::MEM_DEVICE,
                                   kAccessReadWrite, MemoryKind::kDevice);
  EXPECT_EQ(registry.KindAt(reinterpret_cast<uintptr_t>(host.data()) + 100), MemoryKind::kHost);
  EXPECT_EQ(registry.KindAt(reinterpret_cast<uintptr_t>(device.data()) + 100), MemoryKind::kDevice);
  int unregistered = 0;
  EXPECT_EQ(registry.KindAt(reinterpret_cast<uintptr_t>(&unregistered)), MemoryKind::kHost);
  TransportRegion region;
  ASSERT_TRUE(registry.Describe(id, &region));
  EXPECT_EQ(region.addr, reinterpret_cast<uintptr_t>(device.data()));
  EXPECT_EQ(region.len, device.size());
  EXPECT_EQ(region.kind, MemoryKind::kDevice);
  EXPECT_EQ(registry.Regions().size(), 2u);
}

// Whole engines whose transfers take the fake transport (the handshake still
// runs over loopback TCP, and advertises the fake's name: the client connects
// its link from that): registrations reach the transport, the policy prefers
// the fake, bytes arrive, refusals come back with their status.
TEST(EngineOnTheFakeTransport, TransfersTakeTheFakeAndRegistrationsReachIt) {
  std::vector<char> remote(1 << 20), local(1 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 11 + 3);
  FakeFabric fabric;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  auto server_fake = FakeTransport::Create(&fabric, "fake-server");  // not the engine id: found by the advertisement
  auto client_fake = FakeTransport::Create(&fabric, "client");
  Engine server, client;
  server.AddTransport(server_fake);
  client.AddTransport(client_fake);
  ASSERT_EQ(server.Initialize(server_id, {}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            local.size()};
  ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 3000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  EXPECT_GT(server_fake->Served(), 0u) << "the bytes went through the fake transport";
  // Outside the registration: the fake refuses it, the engine says PARAM_INVALID.
  adxl::TransferOpDesc outside{reinterpret_cast<uintptr_t>(local.data()),
                               reinterpret_cast<uintptr_t>(remote.data()) + remote.size() - 8, 16};
  EXPECT_EQ(client.TransferSync(server_id, adxl::READ, &outside, 1, 3000), adxl::PARAM_INVALID);
  // Deregistered on the engine: the transport forgot it too.
  ASSERT_EQ(server.DeregisterMem(handle), adxl::SUCCESS);
  EXPECT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 3000), adxl::PARAM_INVALID);
  EXPECT_EQ(client.Disconnect(server_id, 3000), adxl::SUCCESS);
}

#ifdef LLMDD_HAVE_UCX
// The same contract over UCX (llmdd.Transport=ucx on both engines): bytes of
// READs and WRITEs, batches of many descriptors completed by one flush, ranges
// outside a registration and against its rights refused, and a READ after
// DeregisterMem returned refused. ctest runs it under UCX_TLS=tcp and
// UCX_TLS=sm as well (tests/CMakeLists.txt).
class UcxEngines : public ::testing::Test {
 protected:
  // Engines with the default UCX workers (2 under llmdd.Transport=ucx: a transfer of 1 MiB or more moves in parts).
  virtual std::map<std::string, std::string> Options() const { return {{"llmdd.Transport", "ucx"}}; }
  void SetUp() override {
    server_id_ = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
    ASSERT_EQ(server_.Initialize(server_id_, Options()), adxl::SUCCESS);
    ASSERT_EQ(client_.Initialize("127.0.0.1", Options()), adxl::SUCCESS);
  }
  adxl::TransferOpDesc Desc(const std::vector<char> &local, const std::vector<char> &remote, size_t off = 0,
                            size_t len = 0) {
    return {reinterpret_cast<uintptr_t>(local.data()) + off, reinterpret_cast<uintptr_t>(remote.data()) + off,
            len != 0 ? len : local.size()};
  }
  std::string server_id_;
  Engine server_, client_;
};

TEST_F(UcxEngines, ReadAndWriteMoveTheBytesOfRegisteredMemoryOnly) {
  std::vector<char> remote(1 << 20), local(1 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 11 + 3);
  uint64_t handle = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc = Desc(local, remote);
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  // WRITE back a changed pattern.
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(i * 7 + 1);
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::WRITE, &desc, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  // A batch of 256 x 4 KiB descriptors: posted together, one flush.
  std::vector<char> scattered(1 << 20, 0);
  std::vector<adxl::TransferOpDesc> batch;
  for (size_t i = 0; i < 256; ++i) batch.push_back(Desc(scattered, remote, i * 4096, 4096));
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, batch.data(), batch.size(), 5000), adxl::SUCCESS);
  EXPECT_EQ(scattered, remote);
  // Outside the registration: no key covers it, PARAM_INVALID, nothing moved.
  adxl::TransferOpDesc outside{reinterpret_cast<uintptr_t>(local.data()),
                               reinterpret_cast<uintptr_t>(remote.data()) + remote.size() - 8, 16};
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::READ, &outside, 1, 3000), adxl::PARAM_INVALID);
  // Deregistered: a READ after DeregisterMem returned is refused.
  ASSERT_EQ(server_.DeregisterMem(handle), adxl::SUCCESS);
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 3000), adxl::PARAM_INVALID);
  EXPECT_EQ(client_.Disconnect(server_id_, 3000), adxl::SUCCESS);
}

// Descriptors of uneven sizes that cut across READ slices (kUcxSliceBytes),
// staging chunks (kUcxStageBytes) and two adjacent registrations, landing in
// a local layout of another order: every byte goes where its descriptor says
// (a READ copies slices out while later ones arrive; a WRITE stages whole).
TEST_F(UcxEngines, UnevenDescriptorsAcrossSlicesChunksAndRegistrationsLandExactly) {
  const size_t total = 2 * kUcxStageBytes + 3 * kUcxSliceBytes + 12345;
  std::vector<char> remote(total), local(total, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 29 + i / 4093);
  const size_t split = kUcxStageBytes - 777;  // the second registration starts mid-chunk
  uint64_t first = 0, second = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), split, adxl::MEM_HOST, &first),
            adxl::SUCCESS);
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()) + split, total - split, adxl::MEM_HOST,
                                &second),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  // Remote pieces in order, of sizes cycling through these; locally in reverse order.
  const size_t sizes[] = {1, kUcxSliceBytes + 7, 4095, 3 * kUcxSliceBytes - 1, 64 << 10, kUcxStageBytes / 2 + 3};
  std::vector<std::pair<size_t, size_t>> pieces;  // remote offset, length
  for (size_t off = 0, k = 0; off < total; ++k) {
    const size_t len = std::min(sizes[k % 6], total - off);
    pieces.push_back({off, len});
    off += len;
  }
  std::vector<adxl::TransferOpDesc> batch;
  size_t local_off = total;
  for (const auto &p : pieces) {
    local_off -= p.second;
    batch.push_back({reinterpret_cast<uintptr_t>(local.data()) + local_off,
                     reinterpret_cast<uintptr_t>(remote.data()) + p.first, p.second});
  }
  auto expect_mirrored = [&](const char *what) {
    size_t at = total, bad = 0;
    for (const auto &p : pieces) {
      at -= p.second;
      if (memcmp(local.data() + at, remote.data() + p.first, p.second) != 0) ++bad;
    }
    EXPECT_EQ(bad, 0u) << what << ": descriptors whose bytes differ, of " << pieces.size();
  };
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, batch.data(), batch.size(), 10000), adxl::SUCCESS);
  expect_mirrored("READ");
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(i * 17 + 9);
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::WRITE, batch.data(), batch.size(), 10000), adxl::SUCCESS);
  expect_mirrored("WRITE");
}

// Overlapping registrations: a READ whose first byte only one of them holds
// uses that one's key for every slice, though the other (cached by an
// earlier READ) covers the later slices and reaches further.
// One UCX worker: a transfer stays whole (with two, its parts would each
// stay inside one registration, and the case below would not arise).
class UcxEnginesOneWorker : public UcxEngines {
 protected:
  std::map<std::string, std::string> Options() const override {
    return {{"llmdd.Transport", "ucx"}, {"llmdd.UcxWorkers", "1"}};
  }
};

TEST_F(UcxEnginesOneWorker, AReadUnderOverlappingRegistrationsKeepsTheKeyItChose) {
  std::vector<char> remote(2 << 20), local(1 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 19 + 4);
  uint64_t first = 0, second = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), 1 << 20, adxl::MEM_HOST, &first),
            adxl::SUCCESS);
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()) + (512 << 10), (3 << 20) / 2,
                                adxl::MEM_HOST, &second),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc tail{reinterpret_cast<uintptr_t>(local.data()),
                            reinterpret_cast<uintptr_t>(remote.data()) + (1 << 20), 1 << 20};
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &tail, 1, 5000), adxl::SUCCESS);  // caches the second
  EXPECT_EQ(memcmp(local.data(), remote.data() + (1 << 20), 1 << 20), 0);
  adxl::TransferOpDesc head{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            1 << 20};
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &head, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(memcmp(local.data(), remote.data(), 1 << 20), 0);
}

TEST_F(UcxEngines, AccessRightsOfTheRegistrationAreKept) {
  std::vector<char> readable(64 << 10, 'r'), writable(64 << 10, 'w'), local(64 << 10, 'l');
  uint64_t ro = 0, wo = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(readable.data()), readable.size(), adxl::MEM_HOST, &ro,
                                kAccessRead),
            adxl::SUCCESS);
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(writable.data()), writable.size(), adxl::MEM_HOST, &wo,
                                kAccessWrite),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc to_ro = Desc(local, readable), to_wo = Desc(local, writable);
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::WRITE, &to_ro, 1, 3000), adxl::PARAM_INVALID);
  EXPECT_EQ(readable, std::vector<char>(readable.size(), 'r'));
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::READ, &to_wo, 1, 3000), adxl::PARAM_INVALID);
  EXPECT_EQ(local, std::vector<char>(local.size(), 'l'));
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::READ, &to_ro, 1, 3000), adxl::SUCCESS);
  EXPECT_EQ(local, readable);
  EXPECT_EQ(client_.TransferSync(server_id_, adxl::WRITE, &to_wo, 1, 3000), adxl::SUCCESS);
  EXPECT_EQ(writable, readable);
}

TEST_F(UcxEngines, APeerWithoutUcxIsRefusedAtConnect) {
  Engine plain;
  const std::string plain_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(plain.Initialize(plain_id, {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  EXPECT_EQ(client_.Connect(plain_id, 3000), adxl::FAILED);
}

TEST_F(UcxEngines, ADeadPeerIsAnErrorWithinTheTimeout) {
  std::vector<char> remote(1 << 20, 'x'), local(1 << 20, 0);
  uint64_t handle = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc = Desc(local, remote);
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
  server_.Finalize();
  const auto t0 = Clock::now();
  EXPECT_NE(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 1000), adxl::SUCCESS);
  EXPECT_LT(MsSince(t0), 2500);
}

// The serving side's progress thread sleeps on the worker's event fd while
// idle: an idle engine does not wake every millisecond (it did with the
// back-off sleeps: ~1 ms steps, hundreds of rounds in half a second).
TEST(UcxProgress, AnIdleTransportSleepsOnTheWorkersEventFd) {
  std::string error;
  std::shared_ptr<UcxTransport> ucx = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(ucx, nullptr) << error;
  ASSERT_TRUE(ucx->SleepsOnEventFd());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // past the spin after start
  const uint64_t before = ucx->ProgressRounds();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const uint64_t rounds = ucx->ProgressRounds() - before;
  // One round per kUcxProgressPollMs (5), with room for a stray wake-up and
  // its spin; the back-off sleeps made ~450 here.
  EXPECT_LE(rounds, 5u + kUcxProgressSpinRounds) << "the idle progress thread kept waking";
  const auto t0 = Clock::now();
  ucx.reset();  // the destructor's ucp_worker_signal ends the poll at once
  EXPECT_LT(MsSince(t0), kUcxProgressPollMs);
}

// A target asleep on its event fd wakes for a peer's key request and GET (UCX
// over tcp emulates GET with active messages its worker must progress): each
// READ after an idle spell takes far less than the poll's bound, with its bytes.
TEST_F(UcxEngines, ATargetAsleepOnItsEventFdWakesForEachRead) {
  std::vector<char> remote(256 << 10), local(256 << 10, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 13 + 5);
  uint64_t handle = 0;
  ASSERT_EQ(server_.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client_.Connect(server_id_, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc = Desc(local, remote);
  ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);  // endpoint made
  std::vector<int64_t> ms;
  for (int i = 0; i < 5; ++i) {
    // Idle past the key lease (a new key request each time) and into the poll.
    std::this_thread::sleep_for(std::chrono::milliseconds(kUcxKeyLeaseMs + 50));
    std::fill(local.begin(), local.end(), 0);
    const auto t0 = Clock::now();
    ASSERT_EQ(client_.TransferSync(server_id_, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
    ms.push_back(MsSince(t0));
    ASSERT_EQ(local, remote);
  }
  std::sort(ms.begin(), ms.end());
  EXPECT_LT(ms[2], kUcxProgressPollMs / 2) << "median READ after an idle spell (ms); a target that slept out "
                                              "its poll would take about " << kUcxProgressPollMs;
}
// Key requests must carry the owner's capability, which travels only in its
// handshake advertisement: a UCX peer that reaches the owner's worker without
// it (it never completed a handshake) gets no key and moves nothing.
TEST(UcxKeys, ARequesterWithoutTheOwnersCapabilityGetsNoKey) {
  std::string error;
  std::shared_ptr<UcxTransport> owner = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(owner, nullptr) << error;
  std::shared_ptr<UcxTransport> requester = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(requester, nullptr) << error;
  std::vector<char> remote(64 << 10), local(64 << 10, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 7 + 2);
  TransportRegion region;
  region.addr = reinterpret_cast<uintptr_t>(remote.data());
  region.len = remote.size();
  region.access = kAccessRead | kAccessWrite;
  std::string key;
  ASSERT_EQ(owner->RegisterMemory(region, &key, &error), adxl::SUCCESS) << error;
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), region.addr, remote.size()};
  TransferBatch batch;
  batch.op = adxl::READ;
  batch.segs = &seg;
  batch.count = 1;
  batch.total_bytes = seg.len;
  TransportPeer peer;
  peer.peer_name = "owner";
  peer.metadata = owner->LocalMetadata();
  ASSERT_GT(peer.metadata.size(), kUcxAdMagicBytes + kUcxCapabilityBytes);
  peer.metadata[kUcxAdMagicBytes + 3] ^= 0x5a;  // the address is right, the capability is not
  std::shared_ptr<TransportLink> forged = requester->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(forged, nullptr) << error;
  batch.deadline = Deadline::AfterMs(3000);
  const auto t0 = Clock::now();
  TransportResult result = forged->Submit(batch);
  EXPECT_EQ(result.status, adxl::FAILED) << result.error;
  EXPECT_LT(MsSince(t0), 2000) << "the refusal came at the deadline, not as an answer";
  EXPECT_EQ(owner->KeysGranted(), 0u);
  EXPECT_EQ(local, std::vector<char>(local.size(), 0));
  // An advertisement without the magic (an older engine's bare address) makes no link.
  TransportPeer older = peer;
  older.metadata = older.metadata.substr(kUcxAdMagicBytes + kUcxCapabilityBytes);
  EXPECT_EQ(requester->Connect(older, Deadline::AfterMs(1000), &error), nullptr);
  // The advertisement as the handshake carries it: the key is granted.
  peer.metadata = owner->LocalMetadata();
  std::shared_ptr<TransportLink> entitled = requester->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(entitled, nullptr) << error;
  batch.deadline = Deadline::AfterMs(3000);
  result = entitled->Submit(batch);
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(local, remote);
  EXPECT_EQ(owner->KeysGranted(), 1u);
  entitled->Shutdown();
  forged->Shutdown();
  owner->DeregisterMemory(region);
}

// An engine's UCX workers travel in its advertisement: one worker in the
// original shape (older engines read it), several in the multi-worker shape;
// a peer's advertisement in neither, cut short, with trailing bytes, an empty
// address or a count out of range is refused whole.
TEST(UcxWorkers, TheAdvertisementCarriesEveryWorkerAndMalformedOnesAreRefused) {
  const std::vector<UcxWorkerAd> one = {{std::string(kUcxCapabilityBytes, 'a'), "address-0"}};
  std::string ad = UcxAdvertisement(one);
  EXPECT_EQ(ad, std::string(kUcxAdMagic) + one[0].capability + one[0].address);
  std::vector<UcxWorkerAd> parsed;
  ASSERT_TRUE(ParseUcxAdvertisement(ad, &parsed));
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].capability, one[0].capability);
  EXPECT_EQ(parsed[0].address, one[0].address);
  std::vector<UcxWorkerAd> three;
  for (int i = 0; i < 3; ++i) {
    three.push_back({std::string(kUcxCapabilityBytes, static_cast<char>('k' + i)), std::string(300 + i, static_cast<char>(i))});
  }
  ad = UcxAdvertisement(three);
  EXPECT_EQ(ad.compare(0, kUcxAdMagicBytes, kUcxAdMagicMulti), 0);
  parsed.clear();
  ASSERT_TRUE(ParseUcxAdvertisement(ad, &parsed));
  ASSERT_EQ(parsed.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(parsed[i].capability, three[i].capability);
    EXPECT_EQ(parsed[i].address, three[i].address);  // 300+ bytes: the length's high byte counts
  }
  for (size_t cut = 0; cut < ad.size(); ++cut) {
    EXPECT_FALSE(ParseUcxAdvertisement(ad.substr(0, cut), &parsed)) << "cut to " << cut << " bytes";
  }
  EXPECT_FALSE(ParseUcxAdvertisement(ad + "x", &parsed));
  std::string bad = ad;
  bad[kUcxAdMagicBytes] = 0;  // no worker
  EXPECT_FALSE(ParseUcxAdvertisement(bad, &parsed));
  bad[kUcxAdMagicBytes] = static_cast<char>(kUcxMaxWorkers + 1);
  EXPECT_FALSE(ParseUcxAdvertisement(bad, &parsed));
  std::vector<UcxWorkerAd> empty_address = {three[0], {three[1].capability, ""}};
  EXPECT_FALSE(ParseUcxAdvertisement(UcxAdvertisement(empty_address), &parsed));
  EXPECT_FALSE(ParseUcxAdvertisement("LDU9" + ad.substr(kUcxAdMagicBytes), &parsed));
  EXPECT_EQ(parsed.size(), 3u) << "a refused advertisement left the last good one alone";
}

// A link over several workers: batches (and the parts of a split transfer)
// take turns on the requester's workers, each with its own endpoint to one of
// the owner's workers, which all serve the one registration (mapped once, on
// the context they share). DeregisterMemory withdraws it from every worker:
// a READ after it returned is refused whichever worker carries it.
TEST(UcxWorkers, BatchesTakeTurnsOnTheWorkersAndADeregisteredRegionIsRefusedOnEach) {
  std::string error;
  std::shared_ptr<UcxTransport> owner = UcxTransport::Create(UcxTransport::Mode::kForced, &error, 3);
  ASSERT_NE(owner, nullptr) << error;
  ASSERT_EQ(owner->Workers(), 3u);
  EXPECT_EQ(owner->Caps().max_parallel, 3u);
  std::shared_ptr<UcxTransport> requester = UcxTransport::Create(UcxTransport::Mode::kForced, &error, 2);
  ASSERT_NE(requester, nullptr) << error;
  std::shared_ptr<UcxTransport> single = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(single, nullptr) << error;
  std::vector<char> remote(1 << 20), local(1 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 29 + i / 4099);
  TransportRegion region;
  region.addr = reinterpret_cast<uintptr_t>(remote.data());
  region.len = remote.size();
  region.access = kAccessRead | kAccessWrite;
  std::string key;
  ASSERT_EQ(owner->RegisterMemory(region, &key, &error), adxl::SUCCESS) << error;
  TransportPeer peer;
  peer.peer_name = "owner";
  peer.metadata = owner->LocalMetadata();
  std::shared_ptr<TransportLink> link = requester->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(link, nullptr) << error;
  EXPECT_EQ(link->Caps().max_parallel, 2u);
  std::shared_ptr<TransportLink> single_link = single->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(single_link, nullptr) << error;
  Segment seg{reinterpret_cast<uintptr_t>(local.data()), region.addr, remote.size()};
  auto read = [&](TransportLink *on) {
    std::fill(local.begin(), local.end(), 0);
    TransferBatch batch;
    batch.op = adxl::READ;
    batch.segs = &seg;
    batch.count = 1;
    batch.total_bytes = seg.len;
    batch.deadline = Deadline::AfterMs(5000);
    return on->Submit(batch);
  };
  for (int i = 0; i < 2; ++i) {
    TransportResult result = read(link.get());
    ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
    EXPECT_EQ(local, remote);
  }
  EXPECT_GT(requester->RoundsOnWorker(0), 0u);
  EXPECT_GT(requester->RoundsOnWorker(1), 0u) << "both batches went on the first worker";
  EXPECT_EQ(owner->KeysGrantedOnWorker(0), 1u);
  EXPECT_EQ(owner->KeysGrantedOnWorker(1), 1u) << "the owner's second worker does not serve the registration";
  EXPECT_EQ(owner->KeysGrantedOnWorker(2), 0u);
  // An engine with one worker reaches the owner's first worker.
  TransportResult result = read(single_link.get());
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(local, remote);
  owner->DeregisterMemory(region);
  const uint64_t granted = owner->KeysGranted();
  for (int i = 0; i < 2; ++i) {
    result = read(link.get());
    EXPECT_EQ(result.status, adxl::PARAM_INVALID) << "worker " << i << ": " << result.error;
    EXPECT_EQ(local, std::vector<char>(local.size(), 0));
  }
  EXPECT_EQ(read(single_link.get()).status, adxl::PARAM_INVALID);
  EXPECT_EQ(owner->KeysGranted(), granted);
  link->Shutdown();
  single_link->Shutdown();
  // Under auto a transfer is never split (a part cannot be declined to TCP).
  EXPECT_EQ(UcxTransport::CapsFor(true, 2).max_parallel, 1u);
  EXPECT_EQ(UcxTransport::CapsFor(false, 2).max_parallel, 2u);
}

// In an engine (the lane pool splits transfers of 1 MiB and more into
// parts, max_parallel at once): the parts of one READ and of one WRITE move
// on both UCX workers of the requester, bytes where they belong.
TEST(UcxWorkers, TheLanePoolsPartsOfOneTransferMoveOnDifferentWorkers) {
  std::string error;
  std::shared_ptr<UcxTransport> server_ucx = UcxTransport::Create(UcxTransport::Mode::kForced, &error, 2);
  ASSERT_NE(server_ucx, nullptr) << error;
  std::shared_ptr<UcxTransport> client_ucx = UcxTransport::Create(UcxTransport::Mode::kForced, &error, 2);
  ASSERT_NE(client_ucx, nullptr) << error;
  std::vector<char> remote(4 << 20), local(4 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 37 + i / 5003);
  Engine server, client;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.UcxUnderAuto", "never"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.UcxUnderAuto", "never"}}), adxl::SUCCESS);
  // After Initialize (which replaces any ucx transport by its own); forced: ranks first for every transfer.
  server.AddTransport(server_ucx);
  client.AddTransport(client_ucx);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            local.size()};
  for (adxl::TransferOp op : {adxl::READ, adxl::WRITE}) {
    if (op == adxl::WRITE) {
      for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(i * 5 + 1);
    }
    const uint64_t before0 = client_ucx->RoundsOnWorker(0), before1 = client_ucx->RoundsOnWorker(1);
    ASSERT_EQ(client.TransferSync(server_id, op, &desc, 1, 10000), adxl::SUCCESS);
    EXPECT_EQ(local, remote);
    EXPECT_GT(client_ucx->RoundsOnWorker(0), before0) << (op == adxl::READ ? "READ" : "WRITE");
    EXPECT_GT(client_ucx->RoundsOnWorker(1), before1) << (op == adxl::READ ? "READ" : "WRITE")
                                                      << ": the transfer was not split across the workers";
  }
  EXPECT_EQ(client.Disconnect(server_id, 3000), adxl::SUCCESS);
  ASSERT_EQ(server.DeregisterMem(handle), adxl::SUCCESS);
}

// Engines with different numbers of UCX workers (llmdd.UcxWorkers) move
// transfers the lane pool splits into parts, both ways; an out-of-range
// value is refused at Initialize.
TEST(UcxWorkers, EnginesWithDifferentWorkerCountsMoveSplitTransfers) {
  for (const char *counts : {"3:1", "1:2", "2:2"}) {
    SCOPED_TRACE(counts);
    std::vector<char> remote(6 << 20), local(6 << 20, 0);
    for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 31 + i / 65537);
    Engine server, client;
    const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
    ASSERT_EQ(server.Initialize(server_id, {{"llmdd.Transport", "ucx"}, {"llmdd.UcxWorkers", std::string(1, counts[0])}}),
              adxl::SUCCESS);
    ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "ucx"}, {"llmdd.UcxWorkers", std::string(1, counts[2])}}),
              adxl::SUCCESS);
    uint64_t handle = 0;
    ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
              adxl::SUCCESS);
    ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
    adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                              local.size()};
    ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 10000), adxl::SUCCESS);
    EXPECT_EQ(local, remote);
    for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(i * 3 + 7);
    ASSERT_EQ(client.TransferSync(server_id, adxl::WRITE, &desc, 1, 10000), adxl::SUCCESS);
    EXPECT_EQ(local, remote);
    ASSERT_EQ(server.DeregisterMem(handle), adxl::SUCCESS);
    EXPECT_EQ(client.TransferSync(server_id, adxl::READ, &desc, 1, 3000), adxl::PARAM_INVALID);
    EXPECT_EQ(client.Disconnect(server_id, 3000), adxl::SUCCESS);
  }
  for (const char *bad : {"0", "9", "two"}) {
    Engine engine;
    EXPECT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.Transport", "ucx"}, {"llmdd.UcxWorkers", bad}}),
              adxl::PARAM_INVALID)
        << bad;
  }
}

// Which endpoints may move batches directly from and to registered local
// memory: those whose GET and PUT lanes run over verbs (the NIC moves the
// bytes through the registration; also soft-RoCE), never UCX's tcp, shared
// memory lanes or emulated RMA.
TEST(UcxDirect, OnlyVerbsLanesAreDirect) {
  // UCX 1.13's text: the lanes, then the protocols of the lanes GET and PUT use.
  // UCX_TLS=tcp with peer error handling: no RMA lane (GET and PUT are active messages).
  const char *tcp =
      "#                 lane[0]:  0:tcp/lo.0 md[0]                -> md[0]/tcp/sysdev[255] am am_bw#0 keepalive wireup\n"
      "#\n"
      "#                 am_send: 0..<egr/short>..8185..<egr/zcopy>..20553..<rndv>..(inf)\n"
      "#\n"
      "#                  rma_bw: mds rndv_rkey_size 9\n";
  EXPECT_FALSE(UcxRmaLanesAreDirect(tcp));
  // UCX_TLS=sm,tcp without error handling: the GET and PUT lanes are posix and sysv, which reach only
  // memory UCX allocated; for user memory UCX emulates GET and PUT with active messages: staged.
  const char *sm =
      "#                 lane[0]:  2:sysv/memory.0 md[1]           -> md[1]/sysv/sysdev[255] am am_bw#0\n"
      "#                 lane[1]:  3:posix/memory.0 md[2]          -> md[2]/posix/sysdev[255]\n"
      "#                 lane[2]:  4:cma/memory.0 md[3]            -> md[3]/cma/sysdev[255] rma_bw#0\n"
      "#\n"
      "#                  put[0]: 0..<short>..4294967296..<bcopy>..(inf)\n"
      "#                  get[0]: 0..<bcopy>..(inf)\n"
      "#                  put[1]: 0..<short>..4294967296..<bcopy>..(inf)\n"
      "#                  get[1]: 0..<bcopy>..(inf)\n";
  EXPECT_FALSE(UcxRmaLanesAreDirect(sm));
  std::string rma;
  EXPECT_FALSE(UcxLanesHaveHardwareRma(sm, &rma));
  EXPECT_EQ(rma, "sysv/memory.0,posix/memory.0") << "the lanes GET and PUT use, not the rendezvous lane";
  // InfiniBand: GET and PUT on rc, active messages on tcp.
  const char *rc =
      "#   lane[0]:  1:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib/sysdev[255] rma_bw#0 amo wireup\n"
      "#   lane[1]:  5:tcp/eth0.0 md[3] -> md[3]/tcp/sysdev[255] am am_bw#0 keepalive\n"
      "#    put[0]: 0..<short>..92..<bcopy>..8256..<zcopy>..(inf)\n"
      "#    get[0]: 0..<bcopy>..8256..<zcopy>..(inf)\n";
  EXPECT_TRUE(UcxRmaLanesAreDirect(rc));
  EXPECT_TRUE(UcxLanesHaveHardwareRma(rc, &rma));
  EXPECT_EQ(rma, "rc_mlx5/mlx5_0:1.0");
  // Soft-RoCE: verbs in the kernel, through the registration too (direct, though not hardware RMA for auto).
  const char *rxe = "lane[1]: 3:rc_verbs/rxe0:1.0 md[2] -> md[2]/ib rma_bw#0\n"
                    "get[1]: 0..<bcopy>..16384..<zcopy>..(inf)\nput[1]: 0..<zcopy>..(inf)\n";
  EXPECT_TRUE(UcxRmaLanesAreDirect(rxe));
  EXPECT_FALSE(UcxLanesHaveHardwareRma(rxe, &rma));
  // A GET or PUT lane on tcp is enough to stage.
  EXPECT_FALSE(UcxRmaLanesAreDirect("lane[0]: 1:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib rma_bw#0\n"
                                    "lane[1]: 5:tcp/eth0.0 md[3] -> md[3]/tcp am\n"
                                    "get[0]: 0..<zcopy>..(inf)\n"
                                    "put[1]: 0..<bcopy>..(inf)\n"));
  // Without get/put lines (another UCX's text) nothing is known: staged.
  EXPECT_FALSE(UcxRmaLanesAreDirect("lane[0]: 1:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib rma_bw#0\n"));
  EXPECT_FALSE(UcxRmaLanesAreDirect(""));
}

// A forced UCX transport that moves batches directly over every lane
// (LLMDD_UCX_DIRECT=any: UCX_TLS=tcp has no direct lanes). Create it before
// any other UCX transport of the test: the variable is read at creation.
std::shared_ptr<UcxTransport> CreateDirectOnAnyLane(std::string *error, size_t workers = 1) {
  setenv("LLMDD_UCX_DIRECT", "any", 1);
  std::shared_ptr<UcxTransport> direct = UcxTransport::Create(UcxTransport::Mode::kForced, error, workers);
  unsetenv("LLMDD_UCX_DIRECT");
  return direct;
}

// A batch whose local ranges all lie in memory the requester registered
// moves without staging where the endpoint allows it (LLMDD_UCX_DIRECT=any
// here: UCX_TLS=tcp has no direct lanes), bytes landing where each
// descriptor says, across two local registrations; a batch touching
// unregistered local memory is staged whole; by default a tcp endpoint
// stages everything.
TEST(UcxDirect, RegisteredLocalMemoryMovesWithoutStagingOtherMemoryIsStaged) {
  std::string error;
  std::shared_ptr<UcxTransport> direct = CreateDirectOnAnyLane(&error);
  ASSERT_NE(direct, nullptr) << error;
  std::shared_ptr<UcxTransport> owner = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(owner, nullptr) << error;
  std::shared_ptr<UcxTransport> staged = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(staged, nullptr) << error;
  const size_t total = kUcxStageBytes + 3 * kUcxSliceBytes + 4321;  // more than one staging round
  std::vector<char> remote(total), local(total, 0), loose(total, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 13 + i / 7919);
  auto region_of = [](const char *at, size_t len) {
    TransportRegion region;
    region.addr = reinterpret_cast<uintptr_t>(at);
    region.len = len;
    region.access = kAccessRead | kAccessWrite;
    return region;
  };
  const TransportRegion remote_region = region_of(remote.data(), total);
  const size_t split = total / 3 + 11;  // the local memory as two registrations
  const TransportRegion local_head = region_of(local.data(), split);
  const TransportRegion local_tail = region_of(local.data() + split, total - split);
  std::string key;
  ASSERT_EQ(owner->RegisterMemory(remote_region, &key, &error), adxl::SUCCESS) << error;
  ASSERT_EQ(direct->RegisterMemory(local_head, &key, &error), adxl::SUCCESS) << error;
  ASSERT_EQ(direct->RegisterMemory(local_tail, &key, &error), adxl::SUCCESS) << error;
  TransportPeer peer;
  peer.peer_name = "owner";
  peer.metadata = owner->LocalMetadata();
  std::shared_ptr<TransportLink> link = direct->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(link, nullptr) << error;
  // Pieces of uneven sizes, remote in order, local in reverse order (so one crosses the local split).
  const size_t sizes[] = {1, kUcxSliceBytes + 5, 4093, 2 * kUcxSliceBytes - 3, kUcxStageBytes / 3};
  std::vector<Segment> segs;
  for (size_t off = 0, k = 0; off < total; ++k) {
    const size_t len = std::min(sizes[k % 5], total - off);
    segs.push_back({reinterpret_cast<uintptr_t>(local.data()) + total - off - len,
                    reinterpret_cast<uintptr_t>(remote.data()) + off, len});
    off += len;
  }
  auto submit = [&](TransportLink *on, adxl::TransferOp op, const std::vector<Segment> &batch_segs) {
    TransferBatch batch;
    batch.op = op;
    batch.segs = batch_segs.data();
    batch.count = batch_segs.size();
    for (const Segment &s : batch_segs) batch.total_bytes += s.len;
    batch.deadline = Deadline::AfterMs(10000);
    return on->Submit(batch);
  };
  auto mirrored = [&](const std::vector<char> &into) {
    size_t bad = 0;
    for (const Segment &s : segs) {
      const char *mine = into.data() + (s.local - reinterpret_cast<uintptr_t>(local.data()));
      if (memcmp(mine, reinterpret_cast<const char *>(s.remote), s.len) != 0) ++bad;
    }
    return bad;
  };
  TransportResult result = submit(link.get(), adxl::READ, segs);
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(mirrored(local), 0u) << "READ: descriptors whose bytes differ, of " << segs.size();
  EXPECT_EQ(direct->DirectRounds(), 1u) << "the whole batch in one direct round";
  EXPECT_EQ(direct->StagedRounds(), 0u);
  for (size_t i = 0; i < local.size(); ++i) local[i] = static_cast<char>(i * 5 + 1);
  result = submit(link.get(), adxl::WRITE, segs);
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(mirrored(local), 0u) << "WRITE: descriptors whose bytes differ";
  EXPECT_EQ(direct->DirectRounds(), 2u);
  EXPECT_EQ(direct->StagedRounds(), 0u);
  // One descriptor into memory the requester did not register: the batch is staged.
  std::vector<Segment> mixed = segs;
  mixed[1].local = reinterpret_cast<uintptr_t>(loose.data());
  result = submit(link.get(), adxl::READ, mixed);
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(memcmp(loose.data(), reinterpret_cast<const char *>(mixed[1].remote), mixed[1].len), 0);
  EXPECT_EQ(direct->DirectRounds(), 2u);
  EXPECT_GE(direct->StagedRounds(), 2u) << "more than one staging chunk of bytes";
  link->Shutdown();
  // Deregistered local memory is no longer moved directly.
  direct->DeregisterMemory(local_head);
  direct->DeregisterMemory(local_tail);
  if (UcxTransport::HostHasRdmaDevice()) {  // UCX may take rc here by itself: the default half means tcp
    owner->DeregisterMemory(remote_region);
    return;
  }
  // By default UCX's tcp has no direct lanes: registered or not, batches are staged.
  ASSERT_EQ(staged->RegisterMemory(local_head, &key, &error), adxl::SUCCESS) << error;
  ASSERT_EQ(staged->RegisterMemory(local_tail, &key, &error), adxl::SUCCESS) << error;
  std::shared_ptr<TransportLink> plain = staged->Connect(peer, Deadline::AfterMs(1000), &error);
  ASSERT_NE(plain, nullptr) << error;
  std::fill(local.begin(), local.end(), 0);
  result = submit(plain.get(), adxl::READ, segs);
  ASSERT_EQ(result.status, adxl::SUCCESS) << result.error;
  EXPECT_EQ(mirrored(local), 0u);
  EXPECT_EQ(staged->DirectRounds(), 0u);
  EXPECT_GE(staged->StagedRounds(), 2u);
  plain->Shutdown();
  staged->DeregisterMemory(local_head);
  staged->DeregisterMemory(local_tail);
  owner->DeregisterMemory(remote_region);
}

// Direct READs of 64 MiB (256 GETs of 256 KiB over UCX's tcp, the direct
// path forced) cut short by their deadline, each into freshly mapped and
// registered memory, then DeregisterMemory and munmap at once: a reply
// landing after that crashes the test. `grace_ms`: how long a round that
// ended early waits for UCX's cancel; with the default, no byte lands after
// TIMEOUT was returned either (checked); with 0 the unfinished operations
// linger and DeregisterMemory must wait for them. Returns the rounds cut
// short after their GETs were posted; *lingered: rounds whose operations
// outlived the wait.
// `workers`: the requester's UCX workers; with 2 its batches alternate
// between them, so every cut-short READ (the second batch of a round) runs
// on the second worker, whose registrations mirror the first's.
int CutShortDirectReads(int grace_ms, uint64_t *lingered, size_t workers = 1) {
  // The owner's memory outlives the owner: over UCX's tcp the owner's worker
  // still sends replies to GETs of cut-short READs after its
  // DeregisterMemory, reading the region by address (docs/UCX.md, "Known
  // UCX 1.13 limitations").
  const size_t bytes = 64u << 20;
  std::vector<char> remote(bytes, 'r');
  *lingered = 0;
  std::string error;
  std::shared_ptr<UcxTransport> direct = CreateDirectOnAnyLane(&error, workers);
  EXPECT_NE(direct, nullptr) << error;
  std::shared_ptr<UcxTransport> owner = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  EXPECT_NE(owner, nullptr) << error;
  if (direct == nullptr || owner == nullptr) return 0;
  UcxTransport::SetDirectCancelGraceForTests(grace_ms);
  TransportRegion remote_region;
  remote_region.addr = reinterpret_cast<uintptr_t>(remote.data());
  remote_region.len = bytes;
  remote_region.access = kAccessRead;
  std::string key;
  EXPECT_EQ(owner->RegisterMemory(remote_region, &key, &error), adxl::SUCCESS) << error;
  TransportPeer peer;
  peer.peer_name = "owner";
  peer.metadata = owner->LocalMetadata();
  std::shared_ptr<TransportLink> link = direct->Connect(peer, Deadline::AfterMs(1000), &error);
  EXPECT_NE(link, nullptr) << error;
  if (link == nullptr) return 0;
  auto read = [&](uintptr_t local, uint64_t len, int64_t deadline_ms) {
    std::vector<Segment> segs;
    for (uint64_t off = 0; off < len; off += kUcxSliceBytes) {
      segs.push_back({local + off, remote_region.addr + off, std::min<uint64_t>(kUcxSliceBytes, len - off)});
    }
    TransferBatch batch;
    batch.op = adxl::READ;
    batch.segs = segs.data();
    batch.count = segs.size();
    batch.total_bytes = len;
    batch.deadline = Deadline::AfterMs(deadline_ms);
    return link->Submit(batch);
  };
  int cut_short = 0;
  int64_t whole_ms = 0;
  for (int round = 0; round < 20 && cut_short < 2; ++round) {
    void *mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(mem, MAP_FAILED);
    if (mem == MAP_FAILED) break;
    TransportRegion local;
    local.addr = reinterpret_cast<uintptr_t>(mem);
    local.len = bytes;
    local.access = kAccessRead | kAccessWrite;
    EXPECT_EQ(direct->RegisterMemory(local, &key, &error), adxl::SUCCESS) << error;
    // An endpoint and a fresh key lease first, so that the READ below starts posting at once.
    TransportResult result = read(local.addr, 4096, 5000);
    EXPECT_EQ(result.status, adxl::SUCCESS) << result.error;
    if (round < 2) {
      // Whole READs: how long 64 MiB take on this machine now (the second: no set-up in it).
      const auto t0 = Clock::now();
      result = read(local.addr, bytes, 20000);
      whole_ms = MsSince(t0);
      EXPECT_EQ(result.status, adxl::SUCCESS) << result.error;
      EXPECT_EQ(memcmp(mem, remote.data(), bytes), 0);
    } else {
      const uint64_t posted_before = direct->DirectRounds();
      result = read(local.addr, bytes, std::max<int64_t>(2, whole_ms / 4));
      if (result.status == adxl::TIMEOUT && direct->DirectRounds() > posted_before) {
        ++cut_short;
        if (grace_ms > 0) {
          // Done means done (docs/API.md, "How a request ends"): nothing lands after TIMEOUT was returned.
          memset(mem, 0x5a, bytes);
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
          size_t landed = 0;
          for (size_t i = 0; i < bytes; ++i) landed += static_cast<unsigned char *>(mem)[i] != 0x5a;
          EXPECT_EQ(landed, 0u) << "bytes written into the buffer after the READ returned TIMEOUT";
        }
      }
    }
    direct->DeregisterMemory(local);
    EXPECT_EQ(direct->LingeringNow(), 0u) << "DeregisterMemory returned with UCX operations on the region";
    EXPECT_EQ(munmap(mem, bytes), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // late replies, if any, would arrive now
  }
  UcxTransport::SetDirectCancelGraceForTests(kUcxDirectCancelGraceMs);
  *lingered = direct->LingeredRounds();
  link->Shutdown();
  owner->DeregisterMemory(remote_region);
  return cut_short;
}

// A direct READ that ends TIMEOUT with its GETs in flight returns only once
// UCX completed them (its forced close cancels them as the worker
// progresses): no byte lands in the buffer after TIMEOUT was returned
// (fails without that wait), and none after DeregisterMemory and munmap.
TEST(UcxDirect, ATimedOutDirectReadReturnsOnlyOnceUcxLetGoOfTheBuffer) {
  uint64_t lingered = 0;
  EXPECT_GE(CutShortDirectReads(kUcxDirectCancelGraceMs, &lingered), 1)
      << "no direct READ was cut short after posting: the test did not test it";
}

// The same without the wait: the cut-short rounds leave their unfinished
// operations to the core (lingering), and DeregisterMemory waits until UCX
// completed them before it unmaps; the memory is unmapped right after, so a
// late reply crashes the test (5 of 5 runs when the operations were freed
// instead).
TEST(UcxDirect, OperationsLeftToUcxKeepTheirMemoryUntilTheyEnd) {
  uint64_t lingered = 0;
  EXPECT_GE(CutShortDirectReads(0, &lingered), 1) << "no direct READ was cut short after posting: the test did not test it";
  EXPECT_GE(lingered, 1u) << "no operation was left to UCX: the test did not test it";
}

// The same on a second worker: its operations use the first worker's
// mapping (one per context), which DeregisterMemory unmaps only once the
// second worker's lingering operations ended.
TEST(UcxWorkers, OperationsLeftToUcxOnASecondWorkerKeepTheFirstWorkersMapping) {
  uint64_t lingered = 0;
  EXPECT_GE(CutShortDirectReads(0, &lingered, 2), 1)
      << "no direct READ was cut short after posting: the test did not test it";
  EXPECT_GE(lingered, 1u) << "no operation was left to UCX: the test did not test it";
}

// UCX's own error lines (a peer's socket going away: "tcp_ep ... recv
// failed") go to our log on stderr, never to the program's stdout (UCX's
// default), where the suites' peer programs speak their protocol.
TEST(UcxLog, UcxErrorLinesGoToOurLogNotToStdout) {
  std::string error;
  std::shared_ptr<UcxTransport> ucx = UcxTransport::Create(UcxTransport::Mode::kForced, &error);
  ASSERT_NE(ucx, nullptr) << error;
  fflush(stdout);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const int saved_stdout = dup(1);
  ASSERT_GE(saved_stdout, 0);
  ASSERT_GE(dup2(pipe_fds[1], 1), 0);
  ::testing::internal::CaptureStderr();
  ucs_log(UCS_LOG_LEVEL_ERROR, "tcp_ep %p (state=CONNECTED): recv(%d) failed: Input/output error", (void *)0x1, -1);
  const std::string err = ::testing::internal::GetCapturedStderr();
  fflush(stdout);
  dup2(saved_stdout, 1);
  close(saved_stdout);
  close(pipe_fds[1]);
  char buf[512];
  const ssize_t n = read(pipe_fds[0], buf, sizeof(buf));
  close(pipe_fds[0]);
  EXPECT_EQ(n, 0) << "on stdout: " << std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
  EXPECT_NE(err.find("recv(-1) failed: Input/output error"), std::string::npos) << err;
}

// What decides a link under llmdd.Transport=auto: the RMA lanes of the
// endpoint UCX made (ucp_ep_print_info's text, as UCX 1.13 prints it).
TEST(UcxUnderAuto, OnlyHardwareRmaLanesCount) {
  std::string rma;
  // UCX over tcp: no RMA lane at all (GET and PUT are emulated with active messages).
  EXPECT_FALSE(UcxLanesHaveHardwareRma(
      "#   lane[0]:  0:tcp/lo.0 md[0]          -> md[0]/tcp/sysdev[255] am am_bw#0 keepalive wireup\n", &rma));
  EXPECT_EQ(rma, "none");
  // One host's shared memory: RMA over cma is not the network.
  EXPECT_FALSE(UcxLanesHaveHardwareRma("#   lane[0]:  2:sysv/memory.0 md[1] -> md[1]/sysv/sysdev[255] am am_bw#0\n"
                                       "#   lane[2]:  4:cma/memory.0 md[3] -> md[3]/cma/sysdev[255] rma_bw#0\n",
                                       &rma));
  EXPECT_EQ(rma, "cma/memory.0");
  // InfiniBand / RoCE: rc on a mlx5 port carries RMA.
  EXPECT_TRUE(UcxLanesHaveHardwareRma(
      "#   lane[0]:  1:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib/sysdev[255] rma_bw#0 amo wireup\n"
      "#   lane[1]:  5:tcp/eth0.0 md[3] -> md[3]/tcp/sysdev[255] am am_bw#0 keepalive\n",
      &rma));
  EXPECT_EQ(rma, "rc_mlx5/mlx5_0:1.0");
  EXPECT_TRUE(UcxLanesHaveHardwareRma("lane[3]: 2:dc_mlx5/mlx5_1:1.0 md[1] -> md[1]/ib rma#0\n", &rma));
  // UCX 1.13 names the lanes GET and PUT use (get[N] / put[N]); they decide, not the rendezvous lane. On an
  // InfiniBand host a same-host peer may get rc over the port's loopback for GET/PUT and cma for rendezvous:
  // hardware RMA, so under auto it gets a UCX link, ranked after the same-host path (which keeps what it takes).
  EXPECT_TRUE(UcxLanesHaveHardwareRma("#   lane[0]:  1:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib/sysdev[255] am am_bw#0 wireup\n"
                                      "#   lane[1]:  4:cma/memory.0 md[3] -> md[3]/cma/sysdev[255] rma_bw#0\n"
                                      "#    put[0]: 0..<short>..92..<bcopy>..8256..<zcopy>..(inf)\n"
                                      "#    get[0]: 0..<bcopy>..8256..<zcopy>..(inf)\n",
                                      &rma));
  EXPECT_EQ(rma, "rc_mlx5/mlx5_0:1.0");
  // Soft-RoCE (rxe) runs verbs in the kernel: not faster than its TCP.
  EXPECT_FALSE(UcxLanesHaveHardwareRma("lane[1]: 3:rc_verbs/rxe0:1.0 md[2] -> md[2]/ib rma_bw#0\n", &rma));
  EXPECT_FALSE(UcxLanesHaveHardwareRma("", &rma));
  EXPECT_EQ(rma, "none");
}

// The path policy: UCX chosen under auto ranks after the same-host path
// (where that takes the transfer) and before TCP; forced UCX before both.
TEST(UcxUnderAuto, RanksAfterTheSameHostPathAndBeforeTcp) {
  TransportCaps shm, tcp;
  shm.name = "shm";
  tcp.name = "tcp";
  const TransportCaps &chosen = UcxTransport::ChosenCaps(), &forced = UcxTransport::StaticCaps();
  const uint64_t mib = 1 << 20;
  ASSERT_GE(PathRank(shm, adxl::READ, mib, 1), 0);
  EXPECT_LT(PathRank(shm, adxl::READ, mib, 1), PathRank(chosen, adxl::READ, mib, 1));
  EXPECT_LT(PathRank(chosen, adxl::READ, mib, 1), PathRank(tcp, adxl::READ, mib, 1));
  EXPECT_LT(PathRank(forced, adxl::READ, mib, 1), PathRank(shm, adxl::READ, mib, 1));
  // A small WRITE the same-host path declines goes to UCX, not TCP.
  EXPECT_LT(PathRank(shm, adxl::WRITE, 8, 1), 0);
  EXPECT_GE(PathRank(chosen, adxl::WRITE, 8, 1), 0);
}

// Under auto with UCX started (llmdd.UcxUnderAuto=always, as a host with an
// RDMA device does by default): the engine offers ucx and serves it, but
// links a peer over UCX only with hardware RMA. This host has none, so its
// peers stay on TCP / the same-host path with correct bytes, while a peer
// that forces ucx is served over UCX; `never` offers nothing.
TEST(UcxUnderAuto, WithoutHardwareRmaPeersStayOffUcxAndForcedPeersAreServed) {
  if (UcxTransport::HostHasRdmaDevice()) GTEST_SKIP() << "this host has an RDMA device: UCX may reach peers with it";
  std::vector<char> remote(1 << 20), local(1 << 20, 0);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 5 + 1);
  Engine server, auto_client, forced_client;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.UcxUnderAuto", "always"}}), adxl::SUCCESS);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  adxl::TransferOpDesc desc{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                            remote.size()};
  ASSERT_EQ(auto_client.Initialize("127.0.0.1", {{"llmdd.UcxUnderAuto", "always"}}), adxl::SUCCESS);
  ASSERT_EQ(auto_client.Connect(server_id, 3000), adxl::SUCCESS);
  PeerFacts facts;
  ASSERT_TRUE(auto_client.DescribePeer(server_id, &facts));
  EXPECT_NE(std::find(facts.offered.begin(), facts.offered.end(), "ucx"), facts.offered.end());
  EXPECT_EQ(std::find(facts.links.begin(), facts.links.end(), "ucx"), facts.links.end())
      << "a UCX link without hardware RMA under auto";
  ASSERT_EQ(auto_client.TransferSync(server_id, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  // A peer that forces ucx is served over it by the auto engine.
  std::fill(local.begin(), local.end(), 0);
  ASSERT_EQ(forced_client.Initialize("127.0.0.1", {{"llmdd.Transport", "ucx"}}), adxl::SUCCESS);
  ASSERT_EQ(forced_client.Connect(server_id, 3000), adxl::SUCCESS);
  ASSERT_TRUE(forced_client.DescribePeer(server_id, &facts));
  EXPECT_NE(std::find(facts.links.begin(), facts.links.end(), "ucx"), facts.links.end());
  ASSERT_EQ(forced_client.TransferSync(server_id, adxl::READ, &desc, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  // `never`: no ucx offered, so a forced peer is refused at Connect.
  Engine quiet;
  const std::string quiet_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(quiet.Initialize(quiet_id, {{"llmdd.UcxUnderAuto", "never"}}), adxl::SUCCESS);
  EXPECT_EQ(forced_client.Connect(quiet_id, 3000), adxl::FAILED);
  Engine bad;
  EXPECT_EQ(bad.Initialize("127.0.0.1", {{"llmdd.UcxUnderAuto", "sometimes"}}), adxl::PARAM_INVALID);
}
// llmdd.UcxUnderAuto=any: every peer that runs UCX gets a link, whatever
// fabric UCX picks, ranked after the same-host path: a large READ stays on
// the same-host path, a small WRITE (which that path leaves to requests) goes
// over UCX; a range the peer exports no key for is declined to TCP, whose
// serving side refuses it: PARAM_INVALID, nothing written.
TEST(UcxUnderAuto, AnyLinksEveryUcxPeerAfterTheSameHostPathAndDeclinesRangesWithoutAKey) {
  std::vector<char> remote(1 << 20), local(1 << 20, 0), unregistered(64, 'u');
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 3 + 7);
  Engine server, client;
  const std::string server_id = "127.0.0.1:" + std::to_string(llmdd::testing::FreeLoopbackPort());
  ASSERT_EQ(server.Initialize(server_id, {{"llmdd.UcxUnderAuto", "any"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.UcxUnderAuto", "any"}}), adxl::SUCCESS);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  PeerFacts facts;
  ASSERT_TRUE(client.DescribePeer(server_id, &facts));
  ASSERT_NE(std::find(facts.links.begin(), facts.links.end(), "ucx"), facts.links.end());
  auto bytes_over = [&](adxl::TransferOp op, metrics::Transport transport) {
    MetricsSnapshot snap;
    client.MetricsSnapshotOf(&snap);
    return snap.bytes[op == adxl::READ ? 0 : 1][transport];
  };
  adxl::TransferOpDesc all{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()),
                           remote.size()};
  ASSERT_EQ(client.TransferSync(server_id, adxl::READ, &all, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(local, remote);
  if (facts.same_host) {
    EXPECT_EQ(bytes_over(adxl::READ, metrics::kUcx), 0u) << "a large READ left the same-host path";
  }
  const char word[] = "over-ucx";
  adxl::TransferOpDesc small{reinterpret_cast<uintptr_t>(word), reinterpret_cast<uintptr_t>(remote.data()) + 100,
                             sizeof(word)};
  ASSERT_EQ(client.TransferSync(server_id, adxl::WRITE, &small, 1, 5000), adxl::SUCCESS);
  EXPECT_EQ(memcmp(remote.data() + 100, word, sizeof(word)), 0);
  EXPECT_EQ(bytes_over(adxl::WRITE, metrics::kUcx), sizeof(word));
  // Not registered on the server: UCX has no key for it, TCP's serving side refuses it.
  adxl::TransferOpDesc outside{reinterpret_cast<uintptr_t>(word), reinterpret_cast<uintptr_t>(unregistered.data()),
                               sizeof(word)};
  EXPECT_EQ(client.TransferSync(server_id, adxl::WRITE, &outside, 1, 3000), adxl::PARAM_INVALID);
  EXPECT_EQ(unregistered, std::vector<char>(64, 'u'));
  MetricsSnapshot snap;
  client.MetricsSnapshotOf(&snap);
  const size_t refused = metrics::StatusIndex(adxl::PARAM_INVALID);
  EXPECT_EQ(snap.transfers[1][metrics::kTcp][refused], 1u) << "the refusal did not come from TCP's serving side";
  EXPECT_EQ(snap.transfers[1][metrics::kUcx][refused], 0u) << "UCX answered for a range it has no key for";
}
#else
// Built without UCX: llmdd.Transport=ucx is a clear refusal, not a silent TCP.
TEST(UcxNotBuilt, TransportUcxIsParamInvalid) {
  Engine engine;
  EXPECT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.Transport", "ucx"}}), adxl::PARAM_INVALID);
  EXPECT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
}
#endif  // LLMDD_HAVE_UCX

}  // namespace
}  // namespace llmdd
