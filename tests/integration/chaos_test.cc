// Multi-process chaos test for the ADXL engine: loops of TransferSync READ/WRITE
// against three peer processes while a chaos thread injects faults at random points
// of the calls:
//   - SIGKILL of a peer, which is then restarted with the SAME engine id (same port)
//     and reconnected (Disconnect + Connect);
//   - SIGSTOP of a peer, SIGCONT after a random short time;
//   - one peer runs with LLMDD_FAULT_INJECTION set (its own environment only: it is
//     started through /usr/bin/env, the test process's environment is never touched)
//     so its connections delay, stall, drop, corrupt, close and half-write.
// Peer 0 is never faulted: it must keep serving (SUCCESS) after every fault.
//
// Invariants, checked after every call (violations are counted and asserted zero):
//   - the call returns within its timeout + kReturnMarginMs (a watchdog aborts the
//     binary on a real hang instead of blocking CTest);
//   - its status is SUCCESS, TIMEOUT, FAILED or NOT_CONNECTED (PARAM_INVALID only
//     from the peer whose responses may be corrupted by injection);
//   - a successful READ delivers exactly the expected bytes (not checked for the
//     corrupting peer: the wire has no payload checksum, see docs/SECURITY.md), a
//     successful WRITE leaves exactly the expected bytes in the peer;
//   - no byte outside the requested destination ranges is written: every local
//     buffer is filled with a canary pattern and checked around and between the
//     ranges, the local source of a WRITE must stay untouched, the peer's region
//     is checked outside the written ranges, and a local buffer is re-checked when
//     it is reused a few iterations later (late writes after a failed call);
//   - no fd or thread leak: /proc/self/fd entries and "Threads:" of /proc/self/status
//     before Initialize and after Disconnect/Finalize of everything (small slack).
//
// Environment: LLMDD_CHAOS_ITERATIONS (calls per transport, default 160),
// LLMDD_CHAOS_SEED (default 1). The fault sequence (which fault, when, how long) is a
// function of the seed; the exact interleaving with the engine's threads is not.
#define ITEST_USE_GTEST
#include "process_util.h"

#include <dirent.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

namespace itest {
namespace {

constexpr size_t kRegionSize = 256u << 10;  // per peer region; region 0 read, region 1 written
constexpr size_t kQuarter = kRegionSize / 4;
constexpr size_t kMaxDescLen = 48u << 10;
constexpr size_t kCanary = 4096;  // guard zone on each side of the local ranges
constexpr int kNumPeers = 3;
constexpr int kFaultyPeer = 2;  // runs with LLMDD_FAULT_INJECTION
constexpr int kRing = 4;        // local buffers reused round-robin (late-write check)

uint64_t EnvU64(const char *name, uint64_t def) {
  const char *e = getenv(name);
  if (e == nullptr || e[0] == '\0') return def;
  return std::strtoull(e, nullptr, 10);
}

int CountFds() {
  DIR *d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent *e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n;
}

int CountThreads() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return -1;
}

// A running adxl_peer started with an optional environment addition. (AdxlPeer has
// no environment hook, so this is a small launcher of its own on top of Subprocess.)
class ChaosPeer {
 public:
  static std::unique_ptr<ChaosPeer> Start(const std::string &id, const std::string &env, const std::string &transport,
                                          uint64_t seed, std::string *err) {
    for (int attempt = 0; attempt < 40; ++attempt) {
      std::vector<std::string> argv;
      if (!env.empty()) argv = {"/usr/bin/env", env};
      std::vector<std::string> rest = {AdxlPeer::PeerPath(), "--engine",  id, "--regions", "2", "--size",
                                       std::to_string(kRegionSize), "--seed", std::to_string(seed), "--opt",
                                       "llmdd.Transport=" + transport};
      argv.insert(argv.end(), rest.begin(), rest.end());
      auto proc = Subprocess::Start(argv, err);
      if (!proc) return nullptr;
      std::unique_ptr<ChaosPeer> p(new ChaosPeer());
      p->proc_ = std::move(proc);
      bool retry = false;
      for (;;) {
        std::string line;
        bool eof = false;
        if (!p->proc_->ReadLine(&line, 30000, &eof)) {
          *err = "peer " + id + (eof ? " exited during start-up" : " start-up timed out");
          return nullptr;
        }
        if (line.rfind("INIT_FAILED", 0) == 0) {
          // The port of the killed incarnation may still be busy for a moment.
          retry = true;
          *err = "peer " + id + ": " + line;
          break;
        }
        if (line.rfind("REGION ", 0) == 0) {
          RemoteRegion r;
          if (!AdxlPeer::ParseRegionLine(line, &r)) {
            *err = "bad line " + line;
            return nullptr;
          }
          p->regions_.push_back(r);
          continue;
        }
        if (line == "READY") return p;
        *err = "unexpected line from peer: " + line;
        return nullptr;
      }
      if (!retry) break;
      SleepMs(100);
    }
    return nullptr;
  }

  ~ChaosPeer() {
    if (proc_ && !proc_->Exited()) {
      proc_->Continue();
      proc_->Kill();
      proc_->Wait(5000);
    }
  }

  std::string Cmd(const std::string &line, int64_t timeout_ms = 10000) {
    if (!proc_->WriteLine(line)) return "ERR write";
    std::string reply;
    bool eof = false;
    if (!proc_->ReadLine(&reply, timeout_ms, &eof)) return eof ? "ERR eof" : "ERR timeout";
    return reply;
  }
  // "OK", "BAD <off>" or "ERR ..." (a dead peer).
  std::string Check(size_t idx, size_t off, size_t len, uint64_t seed) {
    if (len == 0) return "OK";
    return Cmd("CHECK " + std::to_string(idx) + " " + std::to_string(off) + " " + std::to_string(len) + " " +
               std::to_string(seed));
  }
  pid_t pid() const { return proc_->pid(); }
  // False once the process ended (it is reaped then).
  bool Alive() { return !proc_->Wait(0); }
  bool WaitExit(int64_t ms) { return proc_->Wait(ms); }
  const RemoteRegion &region(size_t i) const { return regions_.at(i); }
  std::string Quit() {
    proc_->WriteLine("QUIT");
    int st = 0;
    if (!proc_->Wait(20000, &st)) return "no exit after QUIT";
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
    return Subprocess::DescribeWaitStatus(st);
  }

 private:
  ChaosPeer() = default;
  std::unique_ptr<Subprocess> proc_;
  std::vector<RemoteRegion> regions_;
};

enum class FaultKind { kNone, kKill, kStop };

struct Fault {
  FaultKind kind = FaultKind::kNone;
  pid_t pid = -1;
  int delay_ms = 0;  // after the call started
  int stop_ms = 0;   // SIGSTOP duration
};

// Executes one posted fault at a time, `delay_ms` after it was posted (i.e. at a
// random point of the call the main thread makes meanwhile).
class ChaosThread {
 public:
  ChaosThread() : thread_([this] { Run(); }) {}
  ~ChaosThread() {
    {
      std::lock_guard<std::mutex> l(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Post(const Fault &f) {
    std::lock_guard<std::mutex> l(mu_);
    pending_ = f;
    busy_ = true;
    cv_.notify_all();
  }
  // Waits until the posted fault is fully applied (a stopped peer is continued).
  void WaitIdle() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return !busy_; });
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [this] { return quit_ || busy_; });
      if (quit_) return;
      Fault f = pending_;
      l.unlock();
      SleepMs(f.delay_ms);
      if (f.kind == FaultKind::kKill) {
        kill(f.pid, SIGKILL);
      } else if (f.kind == FaultKind::kStop) {
        kill(f.pid, SIGSTOP);
        SleepMs(f.stop_ms);
        kill(f.pid, SIGCONT);
      }
      l.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  Fault pending_;
  bool busy_ = false;
  bool quit_ = false;
  std::thread thread_;
};

struct Stats {
  int64_t faults = 0, kills = 0, stops = 0, restarts = 0, calls = 0;
  int64_t hangs = 0, wrong_bytes = 0, stray_writes = 0, bad_status = 0, healthy_failures = 0;
  int64_t reconnect_failures = 0, corrupted_reads = 0, successes = 0;
  std::map<std::string, int64_t> statuses;
  std::vector<std::string> first_errors;
  void Error(const std::string &e) {
    if (first_errors.size() < 20) first_errors.push_back(e);
  }
};

struct Slot {
  std::string id;
  std::string env;
  std::unique_ptr<ChaosPeer> peer;
  bool connected = false;
  bool write_tainted = false;  // a WRITE failed: late data may still land in region 1
  uint64_t seed = 0;
  uint64_t restart_at = 0;  // a killed peer stays dead until this iteration
};

struct LocalBuf {
  GuardedBuffer buf;
  std::vector<uint8_t> snapshot;  // contents after its last call's checks
};

// The injection plan of the fault-injected peer. Its seed changes with every
// incarnation: the same seed would make each restarted peer roll the same dice on
// its first connection (e.g. close every first handshake).
std::string FaultEnv(uint64_t seed, uint64_t incarnation) {
  return "LLMDD_FAULT_INJECTION=seed=" + std::to_string(seed * 1000 + incarnation) +
         ",delay=0.05:5,stall=0.003,drop=0.003,corrupt=0.01,close=0.005,partial=0.005";
}

class ChaosTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ChaosTest, TransfersSurviveKillsStopsAndInjectedFaults) {
  const std::string transport = GetParam();
  const uint64_t iterations = EnvU64("LLMDD_CHAOS_ITERATIONS", 160);
  const uint64_t seed = EnvU64("LLMDD_CHAOS_SEED", 1);
  const int32_t kTimeout = 400;      // chaos calls
  const int32_t kHealthyTimeout = 5000;
  std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + (transport == "shm" ? 1 : 0));
  auto rnd = [&](uint64_t lo, uint64_t hi) { return std::uniform_int_distribution<uint64_t>(lo, hi)(rng); };
  Note("chaos[" + transport + "]: seed " + std::to_string(seed) + ", " + std::to_string(iterations) + " iterations");

  const int fds_before = CountFds();
  const int threads_before = CountThreads();
  Stats st;
  {
    adxl::AdxlEngine engine;
    ASSERT_EQ(adxl::SUCCESS,
              engine.Initialize(adxl::AscendString("127.0.0.1"), EngineOptions({{"llmdd.Transport", transport}})));
    std::vector<Slot> slots(kNumPeers);
    for (int i = 0; i < kNumPeers; ++i) {
      int port = PickFreePort();
      ASSERT_NE(0, port);
      slots[i].id = "127.0.0.1:" + std::to_string(port);
      slots[i].seed = 1000 + 10 * i;
      if (i == kFaultyPeer) slots[i].env = FaultEnv(seed, 0);
      std::string err;
      slots[i].peer = ChaosPeer::Start(slots[i].id, slots[i].env, transport, slots[i].seed, &err);
      ASSERT_NE(nullptr, slots[i].peer) << err;
    }
    auto connect = [&](Slot &s) {
      Timed c = TimedCall("Connect(" + s.id + ")", 30000, [&] { return engine.Connect(adxl::AscendString(s.id.c_str()), 500); });
      if (c.ms > 500 + kReturnMarginMs) {
        ++st.hangs;
        st.Error("Connect(" + s.id + ") took " + std::to_string(c.ms) + " ms");
      }
      s.connected = c.status == adxl::SUCCESS;
      return c.status;
    };
    auto disconnect = [&](Slot &s) {
      Timed d = TimedCall("Disconnect(" + s.id + ")", 30000,
                          [&] { return engine.Disconnect(adxl::AscendString(s.id.c_str()), 500); });
      if (d.ms > 500 + kReturnMarginMs) {
        ++st.hangs;
        st.Error("Disconnect(" + s.id + ") took " + std::to_string(d.ms) + " ms");
      }
      s.connected = false;
      return d.status;
    };
    for (auto &s : slots) {
      // The fault-injected peer may stall or drop a handshake: retry a few times.
      uint32_t c = connect(s);
      for (int attempt = 0; attempt < 20 && c != adxl::SUCCESS; ++attempt) {
        disconnect(s);
        c = connect(s);
      }
      ASSERT_EQ(StatusName(adxl::SUCCESS), StatusName(c)) << s.id;
    }

    std::vector<LocalBuf> ring(kRing);
    const size_t local_len = 2 * kCanary + 4 * kQuarter;
    for (int i = 0; i < kRing; ++i) {
      ASSERT_TRUE(ring[i].buf.Allocate(local_len));
      FillPattern(ring[i].buf.data(), local_len, 777 + i, 0);
      ring[i].snapshot.assign(ring[i].buf.data(), ring[i].buf.data() + local_len);
    }

    ChaosThread chaos;

    // One transfer with all checks. `slot_idx` 0 is the healthy peer.
    auto do_call = [&](uint64_t it, int slot_idx, adxl::TransferOp op, int32_t timeout, const Fault *fault) -> uint32_t {
      Slot &s = slots[slot_idx];
      LocalBuf &lb = ring[it % kRing];
      uint8_t *base = lb.buf.data();
      // Late-write check: the buffer must still hold what it held after its last call.
      if (size_t d = FirstDiff(base, lb.snapshot.data(), local_len); d != SIZE_MAX) {
        ++st.stray_writes;
        st.Error("iteration " + std::to_string(it) + ": local buffer changed after its call returned (offset " +
                 std::to_string(d) + ")");
      }
      const uint64_t canary = SplitMix64(it * 31 + 7);
      FillPattern(base, local_len, canary, 0);
      const int n = static_cast<int>(rnd(1, 3));
      struct R {
        size_t loff, roff, len;
      };
      std::vector<R> ranges;
      std::vector<adxl::TransferOpDesc> descs;
      const uint64_t wseed = SplitMix64(it * 131 + 3);
      std::vector<int> quarters = {0, 1, 2, 3};
      std::shuffle(quarters.begin(), quarters.end(), rng);
      for (int k = 0; k < n; ++k) {
        R r;
        r.len = rnd(1, kMaxDescLen);
        r.loff = kCanary + static_cast<size_t>(k) * kQuarter + rnd(0, kQuarter - r.len);
        if (op == adxl::READ) {
          r.roff = rnd(0, kRegionSize - r.len);
        } else {  // disjoint remote ranges
          r.roff = static_cast<size_t>(quarters[k]) * kQuarter + rnd(0, kQuarter - r.len);
          FillPattern(base + r.loff, r.len, wseed, r.roff);
        }
        ranges.push_back(r);
      }
      std::vector<uint8_t> before_write;
      if (op == adxl::WRITE) before_write.assign(base, base + local_len);
      const RemoteRegion rr = s.peer->region(op == adxl::READ ? 0 : 1);
      for (const R &r : ranges) descs.push_back({reinterpret_cast<uintptr_t>(base + r.loff), rr.addr + r.roff, r.len});

      const std::string what = "TransferSync(" + s.id + ", " + (op == adxl::READ ? "READ" : "WRITE") + ", " +
                               std::to_string(n) + " descs, timeout " + std::to_string(timeout) + ") iteration " +
                               std::to_string(it);
      if (fault != nullptr) chaos.Post(*fault);
      Timed r = TimedCall(what, timeout + 10000LL,
                          [&] { return engine.TransferSync(adxl::AscendString(s.id.c_str()), op, descs, timeout); });
      ++st.calls;
      ++st.statuses[StatusName(r.status)];
      if (r.ms > timeout + kReturnMarginMs) {
        ++st.hangs;
        st.Error(what + " returned " + StatusName(r.status) + " after " + std::to_string(r.ms) + " ms");
      }
      const bool allowed = r.status == adxl::SUCCESS || r.status == adxl::TIMEOUT || r.status == adxl::FAILED ||
                           r.status == adxl::NOT_CONNECTED ||
                           (r.status == adxl::PARAM_INVALID && slot_idx == kFaultyPeer);
      if (!allowed) {
        ++st.bad_status;
        st.Error(what + " returned " + StatusName(r.status));
      }
      if (r.status == adxl::SUCCESS) ++st.successes;
      // Local bytes outside the destination ranges (READ) / anywhere (WRITE source).
      if (op == adxl::READ) {
        std::vector<R> sorted = ranges;
        std::sort(sorted.begin(), sorted.end(), [](const R &a, const R &b) { return a.loff < b.loff; });
        size_t pos = 0;
        for (size_t k = 0; k <= sorted.size(); ++k) {
          const size_t end = k < sorted.size() ? sorted[k].loff : local_len;
          if (size_t m = FindPatternMismatch(base + pos, end - pos, canary, pos); m != SIZE_MAX) {
            ++st.stray_writes;
            st.Error(what + ": byte written outside the destination ranges at local offset " + std::to_string(pos + m));
          }
          if (k < sorted.size()) pos = sorted[k].loff + sorted[k].len;
        }
        if (r.status == adxl::SUCCESS) {
          for (const R &x : ranges) {
            if (size_t m = FindPatternMismatch(base + x.loff, x.len, rr.seed, x.roff); m != SIZE_MAX) {
              if (slot_idx == kFaultyPeer) {
                ++st.corrupted_reads;  // injected corruption of the payload: no checksum on the wire
              } else {
                ++st.wrong_bytes;
                st.Error(what + ": SUCCESS but wrong byte at remote offset " + std::to_string(x.roff + m));
              }
              break;
            }
          }
        }
      } else if (size_t d = FirstDiff(base, before_write.data(), local_len); d != SIZE_MAX) {
        ++st.stray_writes;
        st.Error(what + ": WRITE modified its local source at offset " + std::to_string(d));
      }
      if (fault != nullptr) chaos.WaitIdle();  // a stopped peer is running again
      // Remote bytes of a WRITE (skipped when the peer died).
      if (op == adxl::WRITE && s.peer->Cmd("PING", 10000) == "PONG") {
        if (r.status == adxl::SUCCESS) {
          for (const R &x : ranges) {
            std::string c = s.peer->Check(1, x.roff, x.len, wseed);
            if (c.rfind("BAD", 0) == 0) {
              ++st.wrong_bytes;
              st.Error(what + ": SUCCESS but the peer holds " + c + " in the written range");
            }
          }
        }
        if (!s.write_tainted) {
          std::vector<R> sorted = ranges;
          std::sort(sorted.begin(), sorted.end(), [](const R &a, const R &b) { return a.roff < b.roff; });
          size_t pos = 0;
          for (size_t k = 0; k <= sorted.size(); ++k) {
            const size_t end = k < sorted.size() ? sorted[k].roff : kRegionSize;
            std::string c = s.peer->Check(1, pos, end - pos, rr.seed);
            if (c.rfind("BAD", 0) == 0) {
              ++st.stray_writes;
              st.Error(what + ": peer region written outside the requested ranges: " + c);
            }
            if (k < sorted.size()) pos = sorted[k].roff + sorted[k].len;
          }
        }
        if (r.status != adxl::SUCCESS) s.write_tainted = true;
        s.peer->Cmd("FILL 1 " + std::to_string(rr.seed));
      }
      lb.snapshot.assign(base, base + local_len);
      return r.status;
    };

    for (uint64_t it = 0; it < iterations; ++it) {
      const int slot_idx = static_cast<int>(rnd(0, kNumPeers - 1));
      const adxl::TransferOp op = rnd(0, 1) == 0 ? adxl::READ : adxl::WRITE;
      Fault fault;
      const uint64_t dice = rnd(0, 99);
      // Mostly the peer this call goes to, so the fault lands inside the call.
      const int other = static_cast<int>(rnd(1, kNumPeers - 1));
      const int victim = (slot_idx != 0 && rnd(0, 9) < 7) ? slot_idx : other;
      const int delay = rnd(0, 1) == 0 ? static_cast<int>(rnd(0, 3)) : static_cast<int>(rnd(0, 40));
      const uint64_t dead_for = rnd(0, 1) == 0 ? 0 : rnd(1, 4);
      const int stop_ms = static_cast<int>(rnd(10, 250));
      if (dice < 25 && slots[victim].peer->Alive()) {
        fault.kind = FaultKind::kStop;
      } else if (dice < 45 && slots[victim].peer->Alive()) {
        fault.kind = FaultKind::kKill;
      }
      if (fault.kind != FaultKind::kNone) {
        fault.pid = slots[victim].peer->pid();
        fault.delay_ms = delay;
        fault.stop_ms = stop_ms;
        ++st.faults;
        ++(fault.kind == FaultKind::kKill ? st.kills : st.stops);
      }
      const uint32_t status = do_call(it, slot_idx, op, slot_idx == 0 ? kHealthyTimeout : kTimeout,
                                      fault.kind != FaultKind::kNone ? &fault : nullptr);
      if (fault.kind == FaultKind::kKill) {
        if (!slots[victim].peer->WaitExit(10000)) st.Error("killed peer did not exit");
        slots[victim].restart_at = it + dead_for;
      }
      if (slot_idx == 0 && status != adxl::SUCCESS) {
        ++st.healthy_failures;
        st.Error("iteration " + std::to_string(it) + ": healthy peer returned " + StatusName(status));
      }
      // Recovery: restart killed peers with the same id, reconnect failed channels.
      for (int i = 1; i < kNumPeers; ++i) {
        Slot &s = slots[i];
        const bool alive = s.peer->Alive();
        const bool failed_here = i == slot_idx && status != adxl::SUCCESS;
        if (alive && s.connected && !failed_here) continue;
        if (!alive && it < s.restart_at) continue;  // calls meanwhile go to a dead peer
        if (!alive) {
          s.peer.reset();
          if (i == kFaultyPeer) s.env = FaultEnv(seed, static_cast<uint64_t>(st.restarts) + 1);
          std::string err;
          s.peer = ChaosPeer::Start(s.id, s.env, transport, s.seed, &err);
          ASSERT_NE(nullptr, s.peer) << "restart of " << s.id << ": " << err;
          s.write_tainted = false;
          ++st.restarts;
        }
        disconnect(s);  // also clears a half-open attempt (NOT_CONNECTED otherwise)
        uint32_t c = connect(s);
        if (c != adxl::SUCCESS) {
          ++st.reconnect_failures;  // retried after the next call
          Note("reconnect to " + s.id + " returned " + StatusName(c) + " (will retry)");
        }
      }
      if (fault.kind != FaultKind::kNone || (slot_idx != 0 && status != adxl::SUCCESS)) {
        // The healthy peer keeps serving after each fault.
        const uint32_t h = do_call(it + 1000000, 0, adxl::READ, kHealthyTimeout, nullptr);
        if (h != adxl::SUCCESS) {
          ++st.healthy_failures;
          st.Error("iteration " + std::to_string(it) + ": healthy peer returned " + StatusName(h) + " after a fault");
        }
      }
    }

    // Shutdown: Disconnect everything, QUIT the peers, Finalize.
    for (auto &s : slots)
      if (s.connected) disconnect(s);
    for (int i = 0; i < kNumPeers; ++i) {
      std::string q = slots[i].peer->Quit();
      if (i == 0) EXPECT_EQ("", q) << "healthy peer did not shut down cleanly";
      else if (!q.empty()) Note("peer " + slots[i].id + " at QUIT: " + q);
    }
    slots.clear();
    {
      Watchdog dog(30000, "Finalize()");
      engine.Finalize();
    }
  }
  // Give exiting engine threads a moment to be gone from /proc.
  int fd_delta = 0, thread_delta = 0;
  for (int k = 0; k < 50; ++k) {
    fd_delta = CountFds() - fds_before;
    thread_delta = CountThreads() - threads_before;
    if (fd_delta <= 0 && thread_delta <= 0) break;
    SleepMs(20);
  }
  std::ostringstream statuses;
  for (const auto &kv : st.statuses) statuses << " " << kv.first << "=" << kv.second;
  char line[512];
  std::snprintf(line, sizeof(line),
                "chaos[%s]: %lld faults injected (kills %lld, stops %lld, restarts %lld), %lld calls, %lld hangs, "
                "%lld wrong bytes, %lld stray writes, fd delta %d, thread delta %d",
                transport.c_str(), (long long)st.faults, (long long)st.kills, (long long)st.stops,
                (long long)st.restarts, (long long)st.calls, (long long)st.hangs, (long long)st.wrong_bytes,
                (long long)st.stray_writes, fd_delta, thread_delta);
  std::printf("%s\n", line);
  std::printf("chaos[%s]: seed %llu; statuses:%s; bad statuses %lld, healthy-peer failures %lld, "
              "reconnect retries %lld, corrupted reads from the fault-injected peer %lld\n",
              transport.c_str(), (unsigned long long)seed, statuses.str().c_str(), (long long)st.bad_status,
              (long long)st.healthy_failures, (long long)st.reconnect_failures, (long long)st.corrupted_reads);
  for (const auto &e : st.first_errors) std::printf("chaos[%s]: VIOLATION %s\n", transport.c_str(), e.c_str());
  std::fflush(stdout);
  EXPECT_EQ(0, st.hangs);
  EXPECT_EQ(0, st.wrong_bytes);
  EXPECT_EQ(0, st.stray_writes);
  EXPECT_EQ(0, st.bad_status);
  EXPECT_EQ(0, st.healthy_failures);
  EXPECT_LE(fd_delta, 2) << "fd leak";
  EXPECT_LE(thread_delta, 1) << "thread leak";
  EXPECT_GT(st.successes, 0);
}

INSTANTIATE_TEST_SUITE_P(Transports, ChaosTest, ::testing::ValuesIn(AllTransports()),
                         [](const ::testing::TestParamInfo<std::string> &info) { return info.param; });

}  // namespace
}  // namespace itest
