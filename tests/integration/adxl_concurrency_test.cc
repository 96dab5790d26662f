// Multi-process ADXL concurrency tests: TransferSync from many threads at once, to
// one peer and to several; Connect/Disconnect/DeregisterMem racing with transfers.
// Every byte read is verified, every region written is compared (CRC) with the image
// the test expects; nothing may crash or hang (watchdogs abort the binary on a hang).
#define ITEST_USE_GTEST
#include "process_util.h"

#include <atomic>
#include <thread>

namespace itest {
namespace {

constexpr int32_t kTimeoutMs = 20000;

// Thread-safe collection of the first few failures seen by worker threads
// (gtest assertions are only used on the main thread).
class Failures {
 public:
  void Add(const std::string &what) {
    std::lock_guard<std::mutex> lock(mu_);
    ++count_;
    if (first_.size() < 10) first_.push_back(what);
  }
  int count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }
  std::string Describe() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s;
    for (const auto &f : first_) s += "\n  " + f;
    return s;
  }

 private:
  mutable std::mutex mu_;
  int count_ = 0;
  std::vector<std::string> first_;
};

std::string OpName(adxl::TransferOp op) { return op == adxl::READ ? "READ" : "WRITE"; }

class ConcurrencyTest : public AdxlFixture {
 protected:
  // Each thread owns slice `thread` (slice_len bytes) of region 0 on every peer,
  // and reads freely from region 1. Per iteration, on a random peer: WRITE a random
  // sub-range of its slice (sometimes as a batch of small descriptors), READ it back,
  // READ a random range of region 1. At the end every slice is compared (CRC) with
  // the image the thread expects.
  void RunStress(const std::vector<AdxlPeer *> &peers, int threads, int iterations, size_t slice_len) {
    Failures failures;
    std::atomic<int> calls{0};
    // expected[peer][thread] = image of that slice
    std::vector<std::vector<std::vector<uint8_t>>> expected(peers.size(),
                                                            std::vector<std::vector<uint8_t>>(threads));
    for (size_t p = 0; p < peers.size(); ++p)
      for (int t = 0; t < threads; ++t) {
        expected[p][t].resize(slice_len);
        FillPattern(expected[p][t].data(), slice_len, peers[p]->region(0).seed, t * slice_len);
      }
    {
      Watchdog dog(240000, "RunStress worker threads");
      std::vector<std::thread> workers;
      for (int t = 0; t < threads; ++t) {
        workers.emplace_back([&, t] {
          std::mt19937_64 rng(1000 + t);
          GuardedBuffer src(slice_len), dst(slice_len), ro(256 << 10);
          for (int it = 0; it < iterations; ++it) {
            const size_t p = std::uniform_int_distribution<size_t>(0, peers.size() - 1)(rng);
            AdxlPeer &peer = *peers[p];
            const adxl::AscendString remote = peer.engine();
            const uintptr_t slice = peer.region(0).addr + t * slice_len;
            const size_t n = std::uniform_int_distribution<size_t>(1, std::min<size_t>(slice_len, 256 << 10))(rng);
            const size_t off = std::uniform_int_distribution<size_t>(0, slice_len - n)(rng);
            const uint64_t seed = (static_cast<uint64_t>(t) << 32) | static_cast<uint64_t>(it);
            FillPattern(src.data() + off, n, seed, 0);
            std::vector<adxl::TransferOpDesc> wr;
            if (it % 3 == 2 && n >= 64) {
              // batch of 16 pieces, in reverse order
              const size_t piece = n / 16;
              for (int k = 15; k >= 0; --k) {
                size_t b = off + k * piece, e = (k == 15) ? off + n : b + piece;
                wr.push_back({src.addr() + b, slice + b, e - b});
              }
            } else {
              wr.push_back({src.addr() + off, slice + off, n});
            }
            uint32_t st = engine_.TransferSync(remote, adxl::WRITE, wr, kTimeoutMs);
            ++calls;
            if (st != adxl::SUCCESS) {
              failures.Add("thread " + std::to_string(t) + " WRITE to " + peer.id() + ": " + StatusName(st));
              continue;
            }
            std::memcpy(expected[p][t].data() + off, src.data() + off, n);
            std::memset(dst.data() + off, 0xEE, n);
            st = engine_.TransferSync(remote, adxl::READ, {{dst.addr() + off, slice + off, n}}, kTimeoutMs);
            ++calls;
            if (st != adxl::SUCCESS) {
              failures.Add("thread " + std::to_string(t) + " READ back from " + peer.id() + ": " + StatusName(st));
              continue;
            }
            size_t diff = FirstDiff(dst.data() + off, src.data() + off, n);
            if (diff != SIZE_MAX)
              failures.Add("thread " + std::to_string(t) + " read back wrong byte at slice offset " +
                           std::to_string(off + diff) + " from " + peer.id());
            const RemoteRegion &r1 = peer.region(1);
            const size_t rn = std::uniform_int_distribution<size_t>(1, ro.size())(rng);
            const size_t roff = std::uniform_int_distribution<size_t>(0, r1.len - rn)(rng);
            st = engine_.TransferSync(remote, adxl::READ, {{ro.addr(), r1.addr + roff, rn}}, kTimeoutMs);
            ++calls;
            if (st != adxl::SUCCESS) {
              failures.Add("thread " + std::to_string(t) + " READ shared from " + peer.id() + ": " + StatusName(st));
              continue;
            }
            size_t bad = FindPatternMismatch(ro.data(), rn, r1.seed, roff);
            if (bad != SIZE_MAX)
              failures.Add("thread " + std::to_string(t) + " shared READ wrong at region offset " +
                           std::to_string(roff + bad));
          }
        });
      }
      for (auto &w : workers) w.join();
    }
    EXPECT_EQ(0, failures.count()) << failures.count() << " failures, first:" << failures.Describe();
    EXPECT_EQ(threads * iterations * 3, calls.load());
    for (size_t p = 0; p < peers.size(); ++p) {
      for (int t = 0; t < threads; ++t) {
        uint64_t crc = 0;
        ASSERT_TRUE(peers[p]->Crc(0, t * slice_len, slice_len, &crc)) << peers[p]->last_error();
        EXPECT_EQ(Hash64(expected[p][t].data(), slice_len), crc)
            << "slice of thread " << t << " on peer " << peers[p]->id() << " differs from the expected image";
      }
      EXPECT_EQ("OK", peers[p]->CheckUntouched(1)) << "region 1 is only read";
    }
  }
};

// Tests that run once per transport ("tcp", "shm").
class TransportConcurrencyTest : public ConcurrencyTest, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
};
INSTANTIATE_TEST_SUITE_P(Transports, TransportConcurrencyTest, ::testing::ValuesIn(AllTransports()),
                         [](const ::testing::TestParamInfo<std::string> &info) { return info.param; });

TEST_P(TransportConcurrencyTest, EightThreadsOnePeerDisjointRanges) {
  const int kThreads = 8;
  const size_t kSlice = 2u << 20;
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.regions = 2;
  o.size = kThreads * kSlice;
  o.seed = 100;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  RunStress({peer}, kThreads, 200, kSlice);
}

TEST_P(TransportConcurrencyTest, NineThreadsThreePeers) {
  const int kThreads = 9;
  const size_t kSlice = 1u << 20;
  ASSERT_TRUE(InitClient());
  std::vector<AdxlPeer *> peers;
  for (int i = 0; i < 3; ++i) {
    AdxlPeer::Options o;
    o.regions = 2;
    o.size = kThreads * kSlice;
    o.seed = 200 + 10 * i;
    if (i == 1) o.engine_options = {{"llmdd.TcpConnections", "1"}};
    AdxlPeer *p = StartPeer(o);
    ASSERT_NE(nullptr, p);
    ASSERT_TRUE(ConnectTo(*p));
    peers.push_back(p);
  }
  RunStress(peers, kThreads, 150, kSlice);
}

// ---------------------------------------------------------------------------------
// Disconnect while 8 threads transfer: in-flight calls end with SUCCESS or an error,
// calls started after Disconnect returned get NOT_CONNECTED; successful READs carry
// the right bytes; reconnecting works.
// ---------------------------------------------------------------------------------
TEST_P(TransportConcurrencyTest, DisconnectWhileOtherThreadsTransfer) {
  const int kThreads = 8;
  const size_t kChunk = 1u << 20;
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.regions = 2;  // region 0: read by readers; region 1: slices written by writers
  o.size = kThreads * kChunk;
  o.seed = 300;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion r0 = peer->region(0), r1 = peer->region(1);

  std::atomic<bool> disconnected{false};
  std::atomic<int> before_ok{0}, before_err{0}, after_calls{0};
  std::vector<std::atomic<int>> writes_ok(kThreads);  // per writer thread
  std::mutex hist_mu;
  std::map<std::string, int> error_hist;  // statuses of failed calls started before Disconnect returned
  Failures failures;
  std::vector<std::thread> workers;
  {
    Watchdog dog(120000, "DisconnectWhileOtherThreadsTransfer");
    for (int t = 0; t < kThreads; ++t) {
      workers.emplace_back([&, t] {
        const bool reader = (t % 2) == 0;
        GuardedBuffer buf(kChunk);
        FillPattern(buf.data(), kChunk, 400 + t, 0);
        std::mt19937_64 rng(t);
        int after = 0;
        const auto loop_start = Clock::now();
        while (after < 5 && MsSince(loop_start) < 30000) {
          const size_t off = reader ? std::uniform_int_distribution<size_t>(0, r0.len - kChunk)(rng) : t * kChunk;
          const bool started_after = disconnected.load();
          const auto t0 = Clock::now();
          uint32_t st = engine_.TransferSync(peer->engine(), reader ? adxl::READ : adxl::WRITE,
                                             {{buf.addr(), (reader ? r0.addr : r1.addr) + off, kChunk}}, 5000);
          const int64_t ms = MsSince(t0);
          if (ms > 5000 + kReturnMarginMs)
            failures.Add("thread " + std::to_string(t) + " call took " + std::to_string(ms) + " ms");
          if (started_after) {
            ++after;
            ++after_calls;
            if (st != adxl::NOT_CONNECTED)
              failures.Add("thread " + std::to_string(t) + " call started after Disconnect returned " +
                           StatusName(st));
            continue;
          }
          if (st == adxl::SUCCESS) {
            ++before_ok;
            if (!reader) ++writes_ok[t];
            if (reader) {
              size_t bad = FindPatternMismatch(buf.data(), kChunk, r0.seed, off);
              if (bad != SIZE_MAX)
                failures.Add("thread " + std::to_string(t) + " READ returned SUCCESS with wrong byte at " +
                             std::to_string(off + bad));
            }
          } else {
            ++before_err;
            std::lock_guard<std::mutex> lock(hist_mu);
            ++error_hist[StatusName(st)];
          }
        }
      });
    }
    SleepMs(300);
    Timed d = TimedCall("Disconnect during transfers", 60000, [&] { return engine_.Disconnect(peer->engine(), 10000); });
    disconnected = true;
    connected_.erase(peer->id());
    for (auto &w : workers) w.join();
    EXPECT_ST(adxl::SUCCESS, d.status) << "Disconnect while transfers run, after " << d.ms << " ms";
    Note("Disconnect during transfers returned " + StatusName(d.status) + " after " + std::to_string(d.ms) + " ms");
    EXPECT_LE(d.ms, 10000 + kReturnMarginMs);
  }
  EXPECT_EQ(0, failures.count()) << failures.count() << " failures, first:" << failures.Describe();
  EXPECT_GT(before_ok.load(), 0) << "no transfer succeeded before the Disconnect";
  EXPECT_EQ(kThreads * 5, after_calls.load());
  std::string hist;
  for (const auto &kv : error_hist) hist += " " + kv.first + "=" + std::to_string(kv.second);
  Note(std::to_string(before_ok.load()) + " calls succeeded before Disconnect returned; failed ones:" + hist);

  // A WRITE that returned SUCCESS has landed (each writer always writes the same
  // bytes, so partial writes of failed calls cannot hide it).
  for (int t = 1; t < kThreads; t += 2) {
    if (writes_ok[t] == 0) continue;
    std::vector<uint8_t> expect(kChunk);
    FillPattern(expect.data(), kChunk, 400 + t, 0);
    uint64_t crc = 0;
    ASSERT_TRUE(peer->Crc(1, t * kChunk, kChunk, &crc)) << peer->last_error();
    EXPECT_EQ(Hash64(expect.data(), kChunk), crc) << "writer " << t << " had " << writes_ok[t].load()
                                                  << " successful WRITEs but its slice does not hold the data";
  }
  // Region 0 is only read.
  EXPECT_EQ("OK", peer->CheckUntouched(0));

  // Reconnect: the channel works again.
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer buf(kChunk);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{buf.addr(), r0.addr + 3, kChunk}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(buf.data(), kChunk, r0.seed, 3));
}

// ---------------------------------------------------------------------------------
// Concurrent Connect / Disconnect on the same remote: exactly one wins.
// ---------------------------------------------------------------------------------
TEST_F(ConcurrencyTest, ConcurrentConnectAndDisconnectExactlyOneWins) {
  const int kThreads = 8;
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.seed = 500;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);

  auto race = [&](const std::function<uint32_t()> &call) {
    std::vector<uint32_t> results(kThreads, UINT32_MAX);
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> ts;
    Watchdog dog(60000, "racing Connect/Disconnect");
    for (int t = 0; t < kThreads; ++t) {
      ts.emplace_back([&, t] {
        ++ready;
        while (!go) std::this_thread::yield();
        results[t] = call();
      });
    }
    while (ready < kThreads) std::this_thread::yield();
    go = true;
    for (auto &t : ts) t.join();
    return results;
  };

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    auto rc = race([&] { return engine_.Connect(peer->engine(), kTimeoutMs); });
    int success = 0, already = 0;
    for (uint32_t st : rc) {
      if (st == adxl::SUCCESS) ++success;
      else if (st == adxl::ALREADY_CONNECTED) ++already;
      else ADD_FAILURE() << "concurrent Connect returned " << StatusName(st);
    }
    EXPECT_EQ(1, success) << "concurrent Connects: exactly one SUCCESS expected";
    EXPECT_EQ(kThreads - 1, already);
    GuardedBuffer buf(4096);
    EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{buf.addr(), peer->region(0).addr, 4096}}, kTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(buf.data(), 4096, 500, 0));

    auto rd = race([&] { return engine_.Disconnect(peer->engine(), kTimeoutMs); });
    success = 0;
    int not_connected = 0;
    for (uint32_t st : rd) {
      if (st == adxl::SUCCESS) ++success;
      else if (st == adxl::NOT_CONNECTED) ++not_connected;
      else ADD_FAILURE() << "concurrent Disconnect returned " << StatusName(st);
    }
    EXPECT_EQ(1, success) << "concurrent Disconnects: exactly one SUCCESS expected";
    EXPECT_EQ(kThreads - 1, not_connected);
    EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*peer, adxl::READ, {{buf.addr(), peer->region(0).addr, 16}}, kTimeoutMs));
  }
}

// ---------------------------------------------------------------------------------
// The peer deregisters a region while threads read and write it: calls end with
// SUCCESS or PARAM_INVALID; calls started after DeregisterMem returned get
// PARAM_INVALID and can no longer change the memory; the other region is unaffected.
// ---------------------------------------------------------------------------------
TEST_P(TransportConcurrencyTest, PeerDeregistersWhileThreadsTransfer) {
  const size_t kLen = 4u << 20;
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.regions = 2;
  o.size = kLen;
  o.seed = 600;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion r0 = peer->region(0), r1 = peer->region(1);

  std::atomic<bool> deregistered{false};
  std::atomic<int> after_calls{0};
  Failures failures;
  std::vector<std::thread> workers;
  const int kThreads = 5;  // 0,1: read region 1; 2,3: write region 1; 4: reads region 0 throughout
  uint64_t crc_after_deregister = 0;
  {
    Watchdog dog(120000, "PeerDeregistersWhileThreadsTransfer");
    for (int t = 0; t < kThreads; ++t) {
      workers.emplace_back([&, t] {
        const bool on_r1 = t < 4;
        const adxl::TransferOp op = (t == 2 || t == 3) ? adxl::WRITE : adxl::READ;
        const RemoteRegion &r = on_r1 ? r1 : r0;
        GuardedBuffer buf(256 << 10);
        FillPattern(buf.data(), buf.size(), 700 + t, 0);
        std::mt19937_64 rng(t);
        int after = 0;
        const auto loop_start = Clock::now();
        while (after < 10 && MsSince(loop_start) < 30000) {
          const size_t n = std::uniform_int_distribution<size_t>(1, buf.size())(rng);
          const size_t off = std::uniform_int_distribution<size_t>(0, r.len - n)(rng);
          const bool started_after = deregistered.load();
          uint32_t st = engine_.TransferSync(peer->engine(), op, {{buf.addr(), r.addr + off, n}}, kTimeoutMs);
          const std::string who = "thread " + std::to_string(t) + " " + OpName(op) + (on_r1 ? " region 1" : " region 0");
          if (!on_r1) {
            if (st != adxl::SUCCESS) failures.Add(who + ": " + StatusName(st));
            else if (FindPatternMismatch(buf.data(), n, r0.seed, off) != SIZE_MAX) failures.Add(who + ": wrong data");
            if (started_after) ++after;
            continue;
          }
          if (started_after) {
            ++after;
            ++after_calls;
            if (st != adxl::PARAM_INVALID)
              failures.Add(who + " started after DeregisterMem returned: " + StatusName(st));
            continue;
          }
          // Before/around DeregisterMem: SUCCESS or PARAM_INVALID. (Region 1 is
          // concurrently written by threads 2/3, so read data is not checked here.)
          if (st != adxl::SUCCESS && st != adxl::PARAM_INVALID) failures.Add(who + ": " + StatusName(st));
        }
      });
    }
    SleepMs(300);
    EXPECT_ST(adxl::SUCCESS, peer->Deregister(1)) << peer->last_error();
    EXPECT_TRUE(peer->Crc(1, 0, kLen, &crc_after_deregister)) << peer->last_error();
    deregistered = true;
    for (auto &w : workers) w.join();
  }
  EXPECT_EQ(0, failures.count()) << failures.count() << " failures, first:" << failures.Describe();
  EXPECT_EQ(4 * 10, after_calls.load());
  uint64_t crc_end = 0;
  ASSERT_TRUE(peer->Crc(1, 0, kLen, &crc_end)) << peer->last_error();
  EXPECT_EQ(crc_after_deregister, crc_end) << "memory changed after DeregisterMem returned";
  EXPECT_EQ("OK", peer->CheckUntouched(0));
}

// ---------------------------------------------------------------------------------
// Two client engines in one process with the same id ("127.0.0.1") use one peer at
// once (sessions are not keyed by the client id, docs/API.md); one disconnects,
// the other keeps working.
// ---------------------------------------------------------------------------------
TEST_F(ConcurrencyTest, TwoClientEnginesWithTheSameIdShareOnePeer) {
  const size_t kSlice = 1u << 20;
  ASSERT_TRUE(InitClient());
  adxl::AdxlEngine second;
  ASSERT_ST(adxl::SUCCESS, second.Initialize("127.0.0.1", {}));
  AdxlPeer::Options o;
  o.size = 2 * kSlice;
  o.seed = 800;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  ASSERT_ST(adxl::SUCCESS, second.Connect(peer->engine(), kTimeoutMs));

  Failures failures;
  adxl::AdxlEngine *engines[2] = {&engine_, &second};
  {
    Watchdog dog(120000, "TwoClientEnginesWithTheSameIdShareOnePeer");
    std::vector<std::thread> ts;
    for (int t = 0; t < 2; ++t) {
      ts.emplace_back([&, t] {
        GuardedBuffer src(kSlice), dst(kSlice);
        const uintptr_t slice = peer->region(0).addr + t * kSlice;
        for (int it = 0; it < 100; ++it) {
          FillPattern(src.data(), kSlice, 810 + 100 * t + it, 0);
          uint32_t st = engines[t]->TransferSync(peer->engine(), adxl::WRITE, {{src.addr(), slice, kSlice}}, kTimeoutMs);
          if (st != adxl::SUCCESS) {
            failures.Add("engine " + std::to_string(t) + " WRITE: " + StatusName(st));
            continue;
          }
          st = engines[t]->TransferSync(peer->engine(), adxl::READ, {{dst.addr(), slice, kSlice}}, kTimeoutMs);
          if (st != adxl::SUCCESS) {
            failures.Add("engine " + std::to_string(t) + " READ: " + StatusName(st));
            continue;
          }
          if (FirstDiff(src.data(), dst.data(), kSlice) != SIZE_MAX)
            failures.Add("engine " + std::to_string(t) + " read back other data than it wrote");
        }
      });
    }
    for (auto &t : ts) t.join();
  }
  EXPECT_EQ(0, failures.count()) << failures.Describe();

  {
    Watchdog dog(60000, "second engine Disconnect/Finalize");
    EXPECT_ST(adxl::SUCCESS, second.Disconnect(peer->engine(), kTimeoutMs));
    second.Finalize();
  }
  GuardedBuffer buf(4096);
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{buf.addr(), peer->region(0).addr + kSlice, 4096}}, kTimeoutMs))
      << "the first engine's channel must survive the second engine's Disconnect";
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(buf.data(), 4096, 810 + 100 + 99, 0));
}

}  // namespace
}  // namespace itest
