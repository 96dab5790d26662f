// Multi-process tests of how an asynchronous request ends (docs/API.md,
// "Per-request deadline" and "How a request ends"), over TCP and the
// same-host path, against adxl_peer processes that are frozen (SIGSTOP)
// mid-transfer and then resumed:
//
//  - With a deadline (llmdd_ext::SetTransferTimeout), a request to a frozen
//    peer is TIMEOUT within the deadline and a small slack, reported by
//    GetTransferStatus (return TIMEOUT too), whether or not anyone polled.
//  - Once it is terminal, no byte of its buffers is touched again: a READ's
//    buffer, refilled with a sentinel at once, keeps it after the peer
//    resumes; for a WRITE, what the caller writes into its source afterwards
//    never shows up in the peer's memory. On the same-host path the peer
//    copies a WRITE out of our memory itself: it is frozen right between its
//    last check and its copy call (LLMDD_FAULT_INJECTION=freeze_copy=1),
//    the one moment where only the write's hold (cma.h) can tell it.
//  - Disconnect and Finalize with requests in flight to a frozen peer,
//    lanes still being opened included: every request is terminal at once
//    and the call returns within its own bound.
//  - A request without a deadline is unaffected: it waits for the frozen
//    peer and completes once it resumes.
//  - llmdd_ext::CallCanceler ends a TransferSync to a frozen peer from
//    another thread, with the same guarantee once Cancel returned.
#define ITEST_USE_GTEST
#include "process_util.h"

#include "llmdd/extensions.h"

#include <atomic>
#include <thread>

namespace itest {
namespace {

constexpr int64_t kPollMs = 20000;
constexpr size_t kBig = 16u << 20;  // split across lanes on both paths
constexpr uint8_t kSentinel = 0xEE;

std::string Name(adxl::TransferStatus s) {
  switch (s) {
    case adxl::TransferStatus::WAITING: return "WAITING";
    case adxl::TransferStatus::COMPLETED: return "COMPLETED";
    case adxl::TransferStatus::TIMEOUT: return "TIMEOUT";
    case adxl::TransferStatus::FAILED: return "FAILED";
  }
  return "?";
}

struct Polled {
  uint32_t ret = UINT32_MAX;
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  int64_t ms = 0;  // since the poll started
};

// Index of the first byte of `buf` that is not the sentinel, or SIZE_MAX.
size_t FirstNotSentinel(const GuardedBuffer &buf) {
  for (size_t i = 0; i < buf.size(); ++i)
    if (buf.data()[i] != kSentinel) return i;
  return SIZE_MAX;
}

class DeadlineTest : public AdxlFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
  bool SameHost() const { return GetParam() != "tcp"; }

  // TransferAsync with a deadline (0: none) set through the extension.
  uint32_t Async(AdxlPeer &peer, adxl::TransferOp op, const std::vector<adxl::TransferOpDesc> &descs,
                 uint32_t timeout_ms, adxl::TransferReq *req) {
    adxl::TransferArgs args;
    if (timeout_ms != 0) llmdd_ext::SetTransferTimeout(args, timeout_ms);
    *req = nullptr;
    Timed r = TimedCall("TransferAsync(" + peer.id() + ")", 10000,
                        [&] { return engine_.TransferAsync(peer.engine(), op, descs, args, *req); });
    EXPECT_LT(r.ms, 1000) << "TransferAsync must return at once";
    return r.status;
  }
  Polled Poll(adxl::TransferReq req, int64_t timeout_ms = kPollMs) {
    Watchdog dog(timeout_ms + 30000, "polling GetTransferStatus");
    Polled p;
    const auto t0 = Clock::now();
    for (;;) {
      p.ret = engine_.GetTransferStatus(req, p.status);
      if (p.ret != adxl::SUCCESS || p.status != adxl::TransferStatus::WAITING || MsSince(t0) > timeout_ms) break;
      SleepMs(1);
    }
    p.ms = MsSince(t0);
    return p;
  }
  void ExpectReleased(adxl::TransferReq req) {
    adxl::TransferStatus status = adxl::TransferStatus::WAITING;
    EXPECT_ST(adxl::PARAM_INVALID, engine_.GetTransferStatus(req, status));
    EXPECT_EQ("FAILED", Name(status));
  }
  // A peer with one region of kBig bytes; `env` for its own environment.
  AdxlPeer *BigPeer(uint64_t seed, std::vector<std::string> env = {}) {
    AdxlPeer::Options o;
    o.size = kBig;
    o.seed = seed;
    o.env = std::move(env);
    // A peer frozen for a few seconds is not declared dead by its own silence timers.
    o.engine_options.emplace_back("llmdd.PeerTimeoutMs", "30000");
    return StartPeer(o);
  }
  ::testing::AssertionResult Client() {
    return InitClient({{"llmdd.PeerTimeoutMs", "30000"}, {"llmdd.HeartbeatIntervalMs", "1000"}});
  }
  // A big peer that will withhold a READ's data, the client connected to it,
  // one 4 KiB READ done and `in` (kBig bytes) filled with kSentinel. TCP: the
  // peer stops itself 1 MiB into sending data. Same host: a READ copies out
  // of the peer's memory itself, which a stopped process does not prevent;
  // what a frozen peer withholds is its answer (the lease), so it is stopped
  // here, before the request. Null (the failure reported) if a step failed.
  AdxlPeer *PeerFrozenForARead(uint64_t seed, GuardedBuffer &in) {
    AdxlPeer *peer = BigPeer(seed, SameHost() ? std::vector<std::string>{}
                                              : std::vector<std::string>{"LLMDD_FAULT_INJECTION=freeze_send=1048576"});
    if (peer == nullptr) return nullptr;
    const ::testing::AssertionResult client = Client();
    if (!client || !ConnectTo(*peer)) {
      ADD_FAILURE() << "client: " << client.message();
      return nullptr;
    }
    const uint32_t warm = Xfer(*peer, adxl::READ, {{in.addr(), peer->region(0).addr, 4096}}, 10000);
    if (warm != adxl::SUCCESS) {
      ADD_FAILURE() << "the first READ ended " << warm;
      return nullptr;
    }
    memset(in.data(), kSentinel, in.size());
    if (SameHost() && !peer->StopPastReadLease()) {
      ADD_FAILURE() << "could not stop the peer";
      return nullptr;
    }
    return peer;
  }
};

std::string TransportName(const ::testing::TestParamInfo<std::string> &info) { return info.param; }

TEST_P(DeadlineTest, ARequestWithoutADeadlineIsUnaffected) {
  AdxlPeer *peer = BigPeer(3100);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(Client());
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer in(kBig / 2), out(kBig / 2), head(4096);
  FillPattern(out.data(), out.size(), 3199, 0);
  // Zeroed args (CANN's), a deadline removed again, and a generous one: all
  // complete. Each writes a buffer of its own (two requests in flight into the
  // same bytes would be the caller's data race).
  adxl::TransferReq plain = nullptr, removed = nullptr, generous = nullptr;
  adxl::TransferArgs args;
  llmdd_ext::SetTransferTimeout(args, 5);
  llmdd_ext::SetTransferTimeout(args, 0);
  ASSERT_ST(adxl::SUCCESS, engine_.TransferAsync(peer->engine(), adxl::READ, {{in.addr(), rr.addr, in.size()}},
                                                 adxl::TransferArgs(), plain));
  ASSERT_ST(adxl::SUCCESS,
            engine_.TransferAsync(peer->engine(), adxl::WRITE, {{out.addr(), rr.addr + kBig / 2, out.size()}}, args,
                                  removed));
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::READ, {{head.addr(), rr.addr, head.size()}}, 20000, &generous));
  for (adxl::TransferReq r : {plain, removed, generous}) {
    Polled p = Poll(r);
    EXPECT_ST(adxl::SUCCESS, p.ret);
    EXPECT_EQ("COMPLETED", Name(p.status));
    ExpectReleased(r);
  }
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), in.size(), rr.seed, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(head.data(), head.size(), rr.seed, 0));
  EXPECT_EQ(int64_t{kBig / 2 / 8}, peer->Matches(0, kBig / 2, kBig / 2, 3199, 0)) << "the WRITE did not land";

  // A peer frozen while one request has a deadline and another has none:
  // the first ends TIMEOUT, the second waits and completes once it resumes.
  ASSERT_TRUE(peer->StopPastReadLease());
  FillPattern(in.data(), in.size(), 0, 0);
  adxl::TransferReq patient = nullptr, hasty = nullptr;
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::READ, {{in.addr(), rr.addr, in.size()}}, 0, &patient));
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::READ, {{out.addr(), rr.addr, 1u << 20}}, 300, &hasty));
  Polled h = Poll(hasty);
  EXPECT_ST(adxl::TIMEOUT, h.ret);
  EXPECT_EQ("TIMEOUT", Name(h.status));
  adxl::TransferStatus status = adxl::TransferStatus::FAILED;
  EXPECT_ST(adxl::SUCCESS, engine_.GetTransferStatus(patient, status));
  EXPECT_EQ("WAITING", Name(status));
  peer->Continue();
  Polled p = Poll(patient);
  EXPECT_ST(adxl::SUCCESS, p.ret);
  EXPECT_EQ("COMPLETED", Name(p.status));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), in.size(), rr.seed, 0));
}

TEST_P(DeadlineTest, AReadFromAPeerFrozenMidTransferEndsTimeoutAndItsBufferIsNeverWrittenAfter) {
  GuardedBuffer in(kBig);
  AdxlPeer *peer = PeerFrozenForARead(3200, in);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion rr = peer->region(0);
  constexpr uint32_t kDeadlineMs = 700;
  const auto t0 = Clock::now();
  adxl::TransferReq req = nullptr;
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::READ, {{in.addr(), rr.addr, in.size()}}, kDeadlineMs, &req));
  if (!SameHost()) {
    ASSERT_TRUE(peer->WaitStopped(10000)) << "the peer did not stop itself mid-transfer";
  }
  Polled p = Poll(req);
  const int64_t ended_ms = MsSince(t0);
  EXPECT_ST(adxl::TIMEOUT, p.ret);
  EXPECT_EQ("TIMEOUT", Name(p.status));
  EXPECT_GE(ended_ms, kDeadlineMs - 20);
  EXPECT_LT(ended_ms, kDeadlineMs + kReturnMarginMs) << "TIMEOUT came long after the deadline";
  ExpectReleased(req);
  if (!SameHost()) {
    size_t arrived = 0;
    for (size_t off = 0; off + 4096 <= in.size(); off += 4096)
      arrived += FindPatternMismatch(in.data() + off, 4096, rr.seed, off) == SIZE_MAX ? 1 : 0;
    EXPECT_GT(arrived, 0u) << "no byte had arrived: the peer was not frozen mid-transfer";
  }
  // The caller owns the buffer again: it refills it, the peer resumes and
  // sends what it still had; none of it may land here.
  memset(in.data(), kSentinel, in.size());
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->Health();
  SleepMs(500);
  EXPECT_EQ(SIZE_MAX, FirstNotSentinel(in)) << "the buffer was written after its request ended";
  // The channel goes on.
  adxl::TransferReq again = nullptr;
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::READ, {{in.addr(), rr.addr, 1u << 20}}, 10000, &again));
  Polled a = Poll(again);
  EXPECT_ST(adxl::SUCCESS, a.ret);
  EXPECT_EQ("COMPLETED", Name(a.status));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), 1u << 20, rr.seed, 0));
}

TEST_P(DeadlineTest, AWriteToAPeerFrozenMidTransferEndsTimeoutAndLaterSourceChangesNeverLand) {
  // Same host: the peer copies out of our memory and stops itself between
  // its check whether we gave up and its copy call. TCP: stopped by us; our
  // own threads send until its socket buffers are full.
  AdxlPeer *peer =
      BigPeer(3300, SameHost() ? std::vector<std::string>{"LLMDD_FAULT_INJECTION=freeze_copy=1"}
                               : std::vector<std::string>{});
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(Client());
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer out(kBig);
  constexpr uint64_t kBefore = 3301, kAfter = 3302;
  FillPattern(out.data(), out.size(), kBefore, 0);
  if (!SameHost()) {
    // Every lane open, so the write is under way when the peer stops.
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{out.addr(), rr.addr, out.size()}}, 10000));
    ASSERT_TRUE(peer->Stop());
  }
  constexpr uint32_t kDeadlineMs = 700;
  const auto t0 = Clock::now();
  adxl::TransferReq req = nullptr;
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::WRITE, {{out.addr(), rr.addr, out.size()}}, kDeadlineMs, &req));
  if (SameHost()) {
    ASSERT_TRUE(peer->WaitStopped(10000)) << "the peer did not stop itself before its copy";
  }
  Polled p = Poll(req);
  const int64_t ended_ms = MsSince(t0);
  EXPECT_ST(adxl::TIMEOUT, p.ret);
  EXPECT_EQ("TIMEOUT", Name(p.status));
  EXPECT_GE(ended_ms, kDeadlineMs - 20);
  EXPECT_LT(ended_ms, kDeadlineMs + kReturnMarginMs) << "TIMEOUT came long after the deadline";
  ExpectReleased(req);
  // The caller reuses its source at once; the peer resumes.
  FillPattern(out.data(), out.size(), kAfter, 0);
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->Health();
  SleepMs(500);
  // What the peer holds is undefined for a write that did not complete (old
  // bytes, its own, zeros), but never what we wrote after the end.
  EXPECT_EQ(0, peer->Matches(0, 0, kBig, kAfter, 0)) << "bytes written after the request ended reached the peer";
  // The channel goes on.
  adxl::TransferReq again = nullptr;
  ASSERT_ST(adxl::SUCCESS, Async(*peer, adxl::WRITE, {{out.addr(), rr.addr, 1u << 20}}, 10000, &again));
  Polled a = Poll(again);
  EXPECT_ST(adxl::SUCCESS, a.ret);
  EXPECT_EQ("COMPLETED", Name(a.status));
  EXPECT_EQ(int64_t{(1u << 20) / 8}, peer->Matches(0, 0, 1u << 20, kAfter, 0));
}

// Requests in flight to a frozen peer, some opening lanes the peer will not
// answer (only one of the client's lanes is open when it stops), some with
// deadlines: `end` (Disconnect or Finalize) returns within its bound, and
// every request is terminal (FAILED) at the next query. The peer, resumed,
// touches none of their buffers.
void EndEveryRequestToAFrozenPeer(DeadlineTest *t, AdxlPeer *peer, adxl::AdxlEngine &engine,
                                  const std::function<uint32_t()> &end, int64_t bound_ms) {
  const RemoteRegion rr = peer->region(0);
  constexpr size_t kPart = kBig / 8;
  GuardedBuffer in(kBig / 2), out(kBig / 2);
  ASSERT_EQ(adxl::SUCCESS, engine.TransferSync(peer->engine(), adxl::READ, {{in.addr(), rr.addr, 4096}}, 10000));
  memset(in.data(), kSentinel, in.size());
  constexpr uint64_t kAfter = 3402;
  FillPattern(out.data(), out.size(), 3401, 0);
  ASSERT_TRUE(peer->StopPastReadLease());
  std::vector<adxl::TransferReq> reqs;
  for (size_t k = 0; k < 4; ++k) {
    adxl::TransferArgs args;
    if (k % 2 == 1) llmdd_ext::SetTransferTimeout(args, 60000);  // a deadline far away changes nothing here
    adxl::TransferReq r = nullptr;
    EXPECT_EQ(adxl::SUCCESS, engine.TransferAsync(peer->engine(), adxl::READ,
                                                  {{in.addr() + k * kPart, rr.addr + k * kPart, kPart}}, args, r));
    reqs.push_back(r);
    EXPECT_EQ(adxl::SUCCESS,
              engine.TransferAsync(peer->engine(), adxl::WRITE,
                                   {{out.addr() + k * kPart, rr.addr + kBig / 2 + k * kPart, kPart}}, args, r));
    reqs.push_back(r);
  }
  SleepMs(300);  // they are running: sending, waiting for answers, opening lanes
  Timed e = TimedCall("ending the requests", bound_ms + 30000, end);
  EXPECT_LT(e.ms, bound_ms) << "the call waited for the frozen peer";
  for (adxl::TransferReq r : reqs) {
    adxl::TransferStatus status = adxl::TransferStatus::WAITING;
    EXPECT_EQ(adxl::FAILED, engine.GetTransferStatus(r, status)) << r;
    EXPECT_EQ("FAILED", Name(status));
  }
  memset(in.data(), kSentinel, in.size());
  FillPattern(out.data(), out.size(), kAfter, 0);
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->Health();
  SleepMs(500);
  EXPECT_EQ(SIZE_MAX, FirstNotSentinel(in)) << "a READ's buffer was written after its request ended";
  EXPECT_EQ(0, peer->Matches(0, kBig / 2, kBig / 2, kAfter, 0)) << "a WRITE's later source reached the peer";
  (void)t;
}

TEST_P(DeadlineTest, DisconnectEndsEveryRequestToAFrozenPeerAtOnce) {
  AdxlPeer *peer = BigPeer(3400);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(Client());
  ASSERT_TRUE(ConnectTo(*peer));
  EndEveryRequestToAFrozenPeer(this, peer, engine_, [&] {
    connected_.erase(peer->id());
    return engine_.Disconnect(peer->engine(), 500);  // the frozen peer does not answer the goodbye
  }, 500 + kReturnMarginMs);
}

TEST_P(DeadlineTest, FinalizeEndsEveryRequestToAFrozenPeerAtOnce) {
  AdxlPeer *peer = BigPeer(3400);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(Client());
  ASSERT_TRUE(ConnectTo(*peer));
  EndEveryRequestToAFrozenPeer(this, peer, engine_, [&] {
    connected_.erase(peer->id());
    engine_.Finalize();  // goodbyes within 1 s in all
    initialized_ = false;
    return adxl::SUCCESS;
  }, 1000 + kReturnMarginMs);
}

// llmdd_ext::CallCanceler (include/llmdd/extensions.h): another thread ends
// a TransferSync to a frozen peer long before its timeout; once Cancel has
// returned, no byte of the buffer is written again, and the channel goes on.
TEST_P(DeadlineTest, ACallCancelerEndsATransferSyncToAFrozenPeerAndItsBufferIsNeverWrittenAfter) {
  GuardedBuffer in(kBig);
  AdxlPeer *peer = PeerFrozenForARead(3500, in);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion rr = peer->region(0);
  llmdd_ext::CallCanceler canceler;
  std::atomic<uint32_t> status{UINT32_MAX};
  std::atomic<int64_t> returned_ms{-1};
  const auto t0 = Clock::now();
  std::thread caller([&] {
    canceler.Bind();
    std::vector<adxl::TransferOpDesc> descs{{in.addr(), rr.addr, in.size()}};
    status = engine_.TransferSync(peer->engine(), adxl::READ, descs, 30000);
    returned_ms = MsSince(t0);
    llmdd_ext::CallCanceler::Unbind();
  });
  if (!SameHost()) {
    EXPECT_TRUE(peer->WaitStopped(10000)) << "the peer did not stop itself mid-transfer";
  }
  SleepMs(300);
  EXPECT_EQ(-1, returned_ms.load()) << "TransferSync returned before the cancel";
  const auto cancel_at = Clock::now();
  canceler.Cancel();
  const int64_t cancel_ms = MsSince(cancel_at);
  EXPECT_TRUE(canceler.Canceled());
  EXPECT_LT(cancel_ms, kReturnMarginMs) << "Cancel took long";
  // Cancel has returned: the caller owns the buffer again. It refills it,
  // the peer resumes and sends what it still had; none of it may land here.
  memset(in.data(), kSentinel, in.size());
  caller.join();
  EXPECT_ST(adxl::FAILED, status.load());
  EXPECT_LT(returned_ms.load(), 300 + cancel_ms + kReturnMarginMs);
  peer->Continue();
  ASSERT_TRUE(peer->Ping()) << peer->Health();
  SleepMs(500);
  EXPECT_EQ(SIZE_MAX, FirstNotSentinel(in)) << "the buffer was written after Cancel returned";
  // The channel goes on, on this thread (no canceler) and on a thread with
  // a fresh one.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{in.addr(), rr.addr, 1u << 20}}, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), 1u << 20, rr.seed, 0));
  llmdd_ext::CallCanceler fresh;
  std::thread again([&] {
    fresh.Bind();
    std::vector<adxl::TransferOpDesc> descs{{in.addr(), rr.addr, in.size()}};
    status = engine_.TransferSync(peer->engine(), adxl::READ, descs, 10000);
    llmdd_ext::CallCanceler::Unbind();
  });
  again.join();
  EXPECT_ST(adxl::SUCCESS, status.load());
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), in.size(), rr.seed, 0));
}

TEST_P(DeadlineTest, ACanceledCallCancelerRefusesTheTransfersOfItsThreadOnly) {
  AdxlPeer *peer = BigPeer(3600);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(Client());
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer in(1u << 20);
  memset(in.data(), kSentinel, in.size());
  llmdd_ext::CallCanceler canceler;
  canceler.Cancel();  // nothing under way: returns at once
  std::atomic<uint32_t> status{UINT32_MAX};
  std::thread caller([&] {
    canceler.Bind();
    std::vector<adxl::TransferOpDesc> descs{{in.addr(), rr.addr, in.size()}};
    status = engine_.TransferSync(peer->engine(), adxl::READ, descs, 10000);
    llmdd_ext::CallCanceler::Unbind();
  });
  caller.join();
  EXPECT_ST(adxl::FAILED, status.load());
  EXPECT_EQ(SIZE_MAX, FirstNotSentinel(in)) << "a refused transfer moved bytes";
  // On a thread without a canceler the same transfer runs.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{in.addr(), rr.addr, in.size()}}, 10000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(in.data(), in.size(), rr.seed, 0));
}

INSTANTIATE_TEST_SUITE_P(Transports, DeadlineTest, ::testing::ValuesIn(AllTransports()), TransportName);

}  // namespace
}  // namespace itest
