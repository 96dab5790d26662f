// Multi-process ADXL fault tests: peers are SIGKILLed or frozen with SIGSTOP while
// transfers run. Every call runs under a watchdog (a hang aborts the binary with a
// message instead of hanging CTest) and must return within its own timeout plus a
// small margin; afterwards the engine must keep working with live peers.
#define ITEST_USE_GTEST
#include "process_util.h"

#include <atomic>
#include <thread>

namespace itest {
namespace {

constexpr int32_t kTimeoutMs = 10000;
constexpr size_t kBig = 64u << 20;

class FaultsTest : public AdxlFixture {
 protected:
  // A batch that moves 64 descriptors x 64 MiB (4 GiB) between the same two
  // 64 MiB buffers: long enough to be interrupted, little memory.
  static std::vector<adxl::TransferOpDesc> LongBatch(uintptr_t local, uintptr_t remote) {
    return std::vector<adxl::TransferOpDesc>(64, adxl::TransferOpDesc{local, remote, kBig});
  }

  // Runs TransferSync on a worker thread; `fault` is applied to the peer
  // `fault_after_ms` after the call started. Returns the call's result; sets
  // *finished_before_fault when the call had already returned by then.
  Timed TransferWithFault(AdxlPeer &peer, adxl::TransferOp op, const std::vector<adxl::TransferOpDesc> &descs,
                          int32_t timeout_ms, int64_t fault_after_ms, const std::function<void()> &fault,
                          bool *finished_before_fault) {
    std::atomic<bool> started{false}, done{false};
    Timed result;
    Watchdog dog(timeout_ms + 30000, "TransferSync interrupted by a fault");
    std::thread worker([&] {
      const auto t0 = Clock::now();
      started = true;
      result.status = engine_.TransferSync(peer.engine(), op, descs, timeout_ms);
      result.ms = MsSince(t0);
      done = true;
    });
    while (!started) SleepMs(1);
    SleepMs(fault_after_ms);
    *finished_before_fault = done.load();
    fault();
    worker.join();
    return result;
  }

  void ExpectWorkingChannel(AdxlPeer &peer, size_t region, uint64_t write_seed) {
    const RemoteRegion rr = peer.region(region);
    const size_t len = std::min<size_t>(rr.len, 1u << 20);
    GuardedBuffer local(len);
    ASSERT_ST(adxl::SUCCESS, Xfer(peer, adxl::READ, {{local.addr(), rr.addr, len}}, kTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), len, rr.seed, 0));
    FillPattern(local.data(), len, write_seed, 0);
    ASSERT_ST(adxl::SUCCESS, Xfer(peer, adxl::WRITE, {{local.addr(), rr.addr, len}}, kTimeoutMs));
    EXPECT_EQ("OK", peer.Check(region, 0, len, write_seed));
    ASSERT_TRUE(peer.Fill(region, rr.seed));
  }
};

// ---------------------------------------------------------------------------------
// Peer SIGKILLed in the middle of a batch.
// ---------------------------------------------------------------------------------
class KilledMidBatchTest : public FaultsTest,
                           public ::testing::WithParamInterface<std::tuple<adxl::TransferOp, std::string>> {
 protected:
  void SetUp() override { UseTransport(std::get<1>(GetParam())); }
};

TEST_P(KilledMidBatchTest, ErrorWithinTimeoutAndEngineKeepsWorking) {
  const adxl::TransferOp op = std::get<0>(GetParam());
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = kBig;
  o.seed = 10;
  AdxlPeer *victim = StartPeer(o);
  ASSERT_NE(nullptr, victim);
  o.size = 1u << 20;
  o.seed = 20;
  AdxlPeer *survivor = StartPeer(o);
  ASSERT_NE(nullptr, survivor);
  ASSERT_TRUE(ConnectTo(*victim));
  ASSERT_TRUE(ConnectTo(*survivor));

  GuardedBuffer local(kBig);
  FillPattern(local.data(), 4096, 11, 0);
  const int32_t kXferTimeout = 20000;
  bool early = false;
  Timed r = TransferWithFault(*victim, op, LongBatch(local.addr(), victim->region(0).addr), kXferTimeout, 30,
                              [&] { victim->Kill(); }, &early);
  if (early) GTEST_SKIP() << "the 4 GiB batch finished within 30 ms; cannot interrupt it on this machine";
  EXPECT_TRUE(r.status == adxl::FAILED || r.status == adxl::TIMEOUT)
      << "batch interrupted by SIGKILL of the peer returned " << StatusName(r.status) << " after " << r.ms << " ms";
  EXPECT_LE(r.ms, kXferTimeout + kReturnMarginMs);
  Note("batch interrupted by SIGKILL returned " + StatusName(r.status) + " after " + std::to_string(r.ms) + " ms");

  // Further transfers to the dead peer fail (any error), in time.
  Timed again = Transfer(victim->id(), op, {{local.addr(), victim->region(0).addr, 4096}}, 2000);
  Note("next transfer to the dead peer returned " + StatusName(again.status) + " after " + std::to_string(again.ms) +
       " ms");
  EXPECT_NE(StatusName(adxl::SUCCESS), StatusName(again.status)) << "transfer to a dead peer";
  EXPECT_LE(again.ms, 2000 + kReturnMarginMs);

  // The other peer is unaffected.
  ExpectWorkingChannel(*survivor, 0, 21);

  // Disconnect from the dead peer returns within its timeout and drops the channel.
  Timed d = TimedCall("Disconnect(dead peer)", 40000, [&] { return engine_.Disconnect(victim->engine(), 2000); });
  connected_.erase(victim->id());
  EXPECT_LE(d.ms, 2000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  Note("Disconnect(dead peer) returned " + StatusName(d.status) + " after " + std::to_string(d.ms) + " ms");
  EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*victim, op, {{local.addr(), victim->region(0).addr, 16}}, 2000));
  ExpectWorkingChannel(*survivor, 0, 22);
}

INSTANTIATE_TEST_SUITE_P(Ops, KilledMidBatchTest,
                         ::testing::Combine(::testing::Values(adxl::READ, adxl::WRITE),
                                            ::testing::ValuesIn(AllTransports())),
                         [](const ::testing::TestParamInfo<std::tuple<adxl::TransferOp, std::string>> &info) {
                           return std::string(std::get<0>(info.param) == adxl::READ ? "Read_" : "Write_") +
                                  std::get<1>(info.param);
                         });

// Fault tests that involve the data path run once per transport.
class TransportFaultsTest : public FaultsTest, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Transports, TransportFaultsTest, ::testing::ValuesIn(AllTransports()),
                         [](const ::testing::TestParamInfo<std::string> &info) { return info.param; });

// ---------------------------------------------------------------------------------
// Peer frozen (SIGSTOP) before and during a transfer -> TIMEOUT; after SIGCONT,
// Disconnect + Connect gives a working channel again.
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, StoppedPeerTimesOutThenRecoversAfterReconnect) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.regions = 2;  // region 0 is the target of the interrupted transfers, region 1 verifies recovery
  o.size = kBig;
  o.seed = 30;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(kBig);
  FillPattern(local.data(), kBig, 33, 0);
  const uintptr_t target = peer->region(0).addr;

  // Frozen before the call: a 64 MiB WRITE fills the socket buffers and stalls; a READ gets no answer.
  ASSERT_TRUE(peer->Stop());
  for (adxl::TransferOp op : {adxl::WRITE, adxl::READ}) {
    SCOPED_TRACE(op == adxl::READ ? "READ to a stopped peer" : "WRITE to a stopped peer");
    Timed r = Transfer(peer->id(), op, {{local.addr(), target, kBig}}, 1500);
    EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
    EXPECT_LE(r.ms, 1500 + kReturnMarginMs);
  }
  peer->Continue();
  ASSERT_TRUE(peer->Ping());

  // Frozen during a long batch.
  for (adxl::TransferOp op : {adxl::READ, adxl::WRITE}) {
    SCOPED_TRACE(op == adxl::READ ? "READ batch, peer stopped mid-way" : "WRITE batch, peer stopped mid-way");
    bool early = false;
    Timed r = TransferWithFault(*peer, op, LongBatch(local.addr(), target), 3000, 30, [&] { peer->Stop(); }, &early);
    peer->Continue();
    if (early) {
      ADD_FAILURE() << "the 4 GiB batch finished within 30 ms; the stop could not interrupt it";
      continue;
    }
    if (GetParam() == "shm" && op == adxl::READ && r.status == adxl::SUCCESS) {
      // Same-host reads are copied by the requester from the peer's memory under
      // a lease granted before the stop; a stopped process's memory stays readable,
      // so the batch may legitimately complete.
      Note("same-host READ batch completed from the stopped peer's memory after " + std::to_string(r.ms) + " ms");
    } else {
      EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
    }
    EXPECT_LE(r.ms, 3000 + kReturnMarginMs);
    ASSERT_TRUE(peer->Ping());
  }

  // Reconnect and check the channel works (region 1 only: late-arriving data of the
  // aborted WRITEs may still land in region 0).
  Timed d = TimedCall("Disconnect(resumed peer)", 40000, [&] { return engine_.Disconnect(peer->engine(), 5000); });
  connected_.erase(peer->id());
  EXPECT_LE(d.ms, 5000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  Note("Disconnect(resumed peer after timeouts) returned " + StatusName(d.status) + " after " + std::to_string(d.ms) +
       " ms");
  ASSERT_TRUE(ConnectTo(*peer));
  ExpectWorkingChannel(*peer, 1, 34);
}

// ---------------------------------------------------------------------------------
// Once TransferSync has returned (here: TIMEOUT), the caller owns its buffer again:
// data the frozen peer sends (or lets be copied) after SIGCONT must never land in it.
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, NoLateWritesIntoLocalBufferAfterTimeout) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = kBig;
  o.seed = 120;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(kBig);
  const uintptr_t remote = peer->region(0).addr;
  auto expect_untouched = [&](const char *phase) {
    std::memset(local.data(), 0x3C, kBig);  // the caller reuses its buffer
    peer->Continue();
    ASSERT_TRUE(peer->Ping());
    SleepMs(1000);  // let the resumed peer answer whatever it still had queued
    size_t bad = SIZE_MAX;
    for (size_t i = 0; i < kBig; ++i)
      if (local.data()[i] != 0x3C) {
        bad = i;
        break;
      }
    EXPECT_EQ(SIZE_MAX, bad) << phase << ": the local buffer was written after TransferSync returned";
  };

  // 1. Peer frozen before the call.
  ASSERT_TRUE(peer->Stop());
  Timed r = Transfer(peer->id(), adxl::READ, {{local.addr(), remote, kBig}}, 1000);
  EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
  expect_untouched("READ to a peer stopped before the call");

  // 2. Peer frozen in the middle of a 4 GiB batch (fresh channel).
  Timed d = TimedCall("Disconnect", 40000, [&] { return engine_.Disconnect(peer->engine(), 5000); });
  connected_.erase(peer->id());
  EXPECT_LE(d.ms, 5000 + kReturnMarginMs);
  ASSERT_TRUE(ConnectTo(*peer));
  bool early = false;
  r = TransferWithFault(*peer, adxl::READ, LongBatch(local.addr(), remote), 2000, 30, [&] { peer->Stop(); }, &early);
  ASSERT_FALSE(early) << "the 4 GiB batch finished within 30 ms";
  if (GetParam() == "shm" && r.status == adxl::SUCCESS) {
    Note("same-host READ batch completed from the stopped peer's memory (one-sided read)");
  } else {
    EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
  }
  EXPECT_LE(r.ms, 2000 + kReturnMarginMs);
  expect_untouched("READ batch interrupted by SIGSTOP");
}

// ---------------------------------------------------------------------------------
// After Disconnect has returned SUCCESS nothing of the old session is served any
// more (docs/PROTOCOL.md: lanes are shut down before GoodbyeAck): WRITE requests
// that were queued at a frozen peer when their call timed out must not keep
// changing its memory once the peer resumes and the client has disconnected.
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, RemoteMemoryQuiescentAfterDisconnect) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = kBig;
  o.seed = 130;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(kBig);
  FillPattern(local.data(), kBig, 131, 0);

  ASSERT_TRUE(peer->Stop());
  Timed r = Transfer(peer->id(), adxl::WRITE, LongBatch(local.addr(), peer->region(0).addr), 1500);
  EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
  peer->Continue();
  Timed d = TimedCall("Disconnect", 40000, [&] { return engine_.Disconnect(peer->engine(), 5000); });
  connected_.erase(peer->id());
  EXPECT_ST(adxl::SUCCESS, d.status) << "Disconnect from the resumed peer, after " << d.ms << " ms";

  uint64_t before = 0, after = 0;
  ASSERT_TRUE(peer->Crc(0, 0, kBig, &before)) << peer->last_error();
  FillPattern(local.data(), kBig, 132, 0);  // the caller reuses its buffer
  SleepMs(1500);
  ASSERT_TRUE(peer->Crc(0, 0, kBig, &after)) << peer->last_error();
  if (before != after) {
    // Does the peer now hold what the client put into its buffer *after* the
    // Disconnect (i.e. it copied from the client's reused memory)?
    const std::string reused = peer->Check(0, 0, kBig, 132);
    ADD_FAILURE() << "the peer's memory kept changing after Disconnect returned " << StatusName(d.status)
                  << " (stale WRITE requests of the closed session were served); CHECK of the region against the "
                     "client's post-Disconnect buffer contents: "
                  << reused << (reused == "OK" ? " (the peer copied the client's reused buffer)" : "");
  }
}

// ---------------------------------------------------------------------------------
// Disconnect from a frozen peer returns within its timeout and drops the channel.
// ---------------------------------------------------------------------------------
TEST_F(FaultsTest, DisconnectFromStoppedPeerReturnsWithinTimeout) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 40;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  ASSERT_TRUE(peer->Stop());
  Timed d = TimedCall("Disconnect(stopped peer)", 40000, [&] { return engine_.Disconnect(peer->engine(), 1000); });
  connected_.erase(peer->id());
  EXPECT_LE(d.ms, 1000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  Note("Disconnect(stopped peer) returned " + StatusName(d.status) + " after " + std::to_string(d.ms) + " ms");
  GuardedBuffer local(4096);
  EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 16}}, 1000));
  peer->Continue();
  ASSERT_TRUE(peer->Ping());
  ASSERT_TRUE(ConnectTo(*peer));
  ExpectWorkingChannel(*peer, 0, 41);
}

// ---------------------------------------------------------------------------------
// Disconnect from a dead peer (killed while idle).
// ---------------------------------------------------------------------------------
TEST_F(FaultsTest, DisconnectFromDeadPeerReturnsWithinTimeout) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  peer->Kill();
  Timed d = TimedCall("Disconnect(dead peer)", 40000, [&] { return engine_.Disconnect(peer->engine(), 1000); });
  connected_.erase(peer->id());
  EXPECT_LE(d.ms, 1000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  Note("Disconnect(dead peer) returned " + StatusName(d.status) + " after " + std::to_string(d.ms) + " ms");
  GuardedBuffer local(4096);
  EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 16}}, 1000));
}

// ---------------------------------------------------------------------------------
// One peer dies while transfers to another one are running on a second thread.
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, ClientContinuesWithSecondPeerWhileFirstDies) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 4u << 20;
  o.seed = 50;
  AdxlPeer *a = StartPeer(o);
  ASSERT_NE(nullptr, a);
  o.seed = 60;
  AdxlPeer *b = StartPeer(o);
  ASSERT_NE(nullptr, b);
  ASSERT_TRUE(ConnectTo(*a));
  ASSERT_TRUE(ConnectTo(*b));

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, bad{0};
  std::string first_bad;
  std::mutex mu;
  const RemoteRegion rb = b->region(0);
  std::thread worker([&] {
    GuardedBuffer buf(1u << 20);
    std::mt19937_64 rng(61);
    while (!stop) {
      size_t off = std::uniform_int_distribution<size_t>(0, rb.len - buf.size())(rng);
      uint32_t st = engine_.TransferSync(b->engine(), adxl::READ, {{buf.addr(), rb.addr + off, buf.size()}}, kTimeoutMs);
      size_t mis = st == adxl::SUCCESS ? FindPatternMismatch(buf.data(), buf.size(), rb.seed, off) : SIZE_MAX;
      if (st == adxl::SUCCESS && mis == SIZE_MAX) {
        ++ok;
      } else {
        ++bad;
        std::lock_guard<std::mutex> lock(mu);
        if (first_bad.empty())
          first_bad = st != adxl::SUCCESS ? StatusName(st) : "wrong data at " + std::to_string(mis);
      }
    }
  });

  GuardedBuffer local(1u << 20);
  {
    Watchdog dog(120000, "ClientContinuesWithSecondPeerWhileFirstDies main part");
    SleepMs(100);
    // A big write to `a` is in flight when it dies.
    bool early = false;
    GuardedBuffer big(4u << 20);
    const std::vector<adxl::TransferOpDesc> two_gib(512, {big.addr(), a->region(0).addr, big.size()});
    Timed r = TransferWithFault(*a, adxl::WRITE, two_gib, kTimeoutMs, 20, [&] { a->Kill(); }, &early);
    if (!early) {
      EXPECT_TRUE(r.status == adxl::FAILED || r.status == adxl::TIMEOUT)
          << "returned " << StatusName(r.status) << " after " << r.ms << " ms";
    }
    EXPECT_LE(r.ms, kTimeoutMs + kReturnMarginMs);
    Note("WRITE batch interrupted by SIGKILL returned " + StatusName(r.status) + " after " + std::to_string(r.ms) +
         " ms" + (early ? " (finished before the kill)" : ""));
    Timed again = Transfer(a->id(), adxl::READ, {{local.addr(), a->region(0).addr, 4096}}, 2000);
    EXPECT_NE(StatusName(adxl::SUCCESS), StatusName(again.status)) << "transfer to a dead peer";
    EXPECT_LE(again.ms, 2000 + kReturnMarginMs);
    SleepMs(300);
    stop = true;
    worker.join();
  }
  EXPECT_EQ(0, bad.load()) << "transfers to the live peer failed while the other died; first: " << first_bad;
  EXPECT_GT(ok.load(), 0);
  ExpectWorkingChannel(*b, 0, 62);
}

// ---------------------------------------------------------------------------------
// The test process is the server; a client peer dies during its transfer; another
// client is served correctly afterwards (and Finalize in TearDown returns).
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, ServerSurvivesClientKilledMidTransfer) {
  ASSERT_TRUE(InitServer());
  GuardedBuffer mine(kBig);
  FillPattern(mine.data(), kBig, 70, 0);
  adxl::MemHandle h = nullptr;
  adxl::MemDesc desc{};
  desc.addr = mine.addr();
  desc.len = kBig;
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(desc, adxl::MEM_HOST, h));

  AdxlPeer::Options o;
  o.size = kBig;
  o.seed = 71;
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    AdxlPeer *client = StartPeer(o);
    ASSERT_NE(nullptr, client);
    ASSERT_ST(adxl::SUCCESS, client->Connect(engine_id_, kTimeoutMs)) << client->last_error();
    // Fire a 64 MiB READ of our memory and kill the client while it runs.
    std::ostringstream cmd;
    cmd << "XFER " << engine_id_ << " READ 0 0 " << std::hex << mine.addr() << std::dec << " " << kBig << " "
        << kTimeoutMs;
    ASSERT_TRUE(client->proc().WriteLine(cmd.str()));
    SleepMs(5 + 10 * round);
    client->Kill();
  }
  // Our memory was only read.
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data(), kBig, 70, 0));

  // A fresh client is served correctly.
  o.size = 1u << 20;
  o.seed = 72;
  AdxlPeer *good = StartPeer(o);
  ASSERT_NE(nullptr, good);
  ASSERT_ST(adxl::SUCCESS, good->Connect(engine_id_, kTimeoutMs)) << good->last_error();
  ASSERT_ST(adxl::SUCCESS, good->Transfer(engine_id_, "READ", 0, 0, mine.addr() + 12345, 1u << 20, kTimeoutMs))
      << good->last_error();
  uint64_t crc = 0;
  ASSERT_TRUE(good->Crc(0, 0, 1u << 20, &crc)) << good->last_error();
  EXPECT_EQ(Hash64(mine.data() + 12345, 1u << 20), crc) << "the client read wrong data";
  ASSERT_TRUE(good->Fill(0, 72));
  ASSERT_ST(adxl::SUCCESS, good->Transfer(engine_id_, "WRITE", 0, 0, mine.addr() + 4096, 1u << 20, kTimeoutMs))
      << good->last_error();
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data() + 4096, 1u << 20, 72, 0)) << "the client wrote wrong data";
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data(), 4096, 70, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data() + (1u << 20) + 4096, kBig - (1u << 20) - 4096, 70,
                                          (1u << 20) + 4096));
  EXPECT_ST(adxl::SUCCESS, good->Disconnect(engine_id_, kTimeoutMs));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(h));
}

// ---------------------------------------------------------------------------------
// A peer restarted on the same port after a crash: Disconnect + Connect reaches the
// new process (and its new memory).
// ---------------------------------------------------------------------------------
TEST_P(TransportFaultsTest, PeerRestartedOnSamePortAfterCrash) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 80;
  AdxlPeer *first = StartPeer(o);
  ASSERT_NE(nullptr, first);
  ASSERT_TRUE(ConnectTo(*first));
  ExpectWorkingChannel(*first, 0, 81);
  const std::string id = first->id();
  first->Kill();

  o.fixed_port = first->port();
  o.seed = 90;
  AdxlPeer *second = StartPeer(o);
  ASSERT_NE(nullptr, second) << "could not listen again on the crashed peer's port (SO_REUSEADDR?)";
  ASSERT_EQ(id, second->id());
  Timed d = TimedCall("Disconnect(crashed peer)", 40000, [&] { return engine_.Disconnect(adxl::AscendString(id.c_str()), 2000); });
  connected_.erase(id);
  EXPECT_LE(d.ms, 2000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  ASSERT_TRUE(ConnectTo(*second));
  ExpectWorkingChannel(*second, 0, 91);
}

// ---------------------------------------------------------------------------------
// Heartbeats (docs/PROTOCOL.md): a peer that stays silent longer than
// llmdd.PeerTimeoutMs is marked dead; transfers then fail with FAILED until the
// application disconnects and connects again.
// ---------------------------------------------------------------------------------
TEST_F(FaultsTest, HeartbeatMarksFrozenPeerDeadUntilReconnect) {
  ASSERT_TRUE(InitClient({{"llmdd.HeartbeatIntervalMs", "100"}, {"llmdd.PeerTimeoutMs", "600"}}));
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 95;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  ExpectWorkingChannel(*peer, 0, 96);
  GuardedBuffer local(4096);

  ASSERT_TRUE(peer->Stop());
  SleepMs(1500);  // > PeerTimeoutMs: the heartbeat has given up on the peer
  Timed r = Transfer(peer->id(), adxl::READ, {{local.addr(), peer->region(0).addr, 4096}}, 5000);
  EXPECT_ST(adxl::FAILED, r.status) << "transfer to a peer declared dead, after " << r.ms << " ms";
  EXPECT_LE(r.ms, 5000 + kReturnMarginMs);
  Note("transfer to a peer declared dead returned " + StatusName(r.status) + " after " + std::to_string(r.ms) + " ms");
  peer->Continue();
  ASSERT_TRUE(peer->Ping());
  r = Transfer(peer->id(), adxl::READ, {{local.addr(), peer->region(0).addr, 4096}}, 5000);
  EXPECT_ST(adxl::FAILED, r.status) << "the peer stays dead until Disconnect + Connect";

  Timed d = TimedCall("Disconnect(peer declared dead)", 40000, [&] { return engine_.Disconnect(peer->engine(), 2000); });
  connected_.erase(peer->id());
  EXPECT_LE(d.ms, 2000 + kReturnMarginMs) << "Disconnect returned " << StatusName(d.status);
  ASSERT_TRUE(ConnectTo(*peer));
  ExpectWorkingChannel(*peer, 0, 97);
}

}  // namespace
}  // namespace itest
