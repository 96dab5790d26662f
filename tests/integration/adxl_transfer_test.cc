// Multi-process ADXL data-path tests: the test process runs a client AdxlEngine,
// the remote memory lives in separate adxl_peer processes. Every test checks the
// exact status and every byte (destination ranges, their neighbours, the sources).
//
// Remote regions hold a known pattern (itest::PatternByte(seed, offset)); the peer
// verifies ranges (CHECK) or hashes them (CRC) so the test can compare with the
// image it expects.
#define ITEST_USE_GTEST
#include "process_util.h"

#include "llmdd/extensions.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

namespace itest {
namespace {

constexpr int32_t kBigTimeoutMs = 20000;  // CI machines are slow (2 cores)

// One descriptor of a generated batch, in region/buffer offsets.
struct PlannedDesc {
  size_t region = 0;  // index into the peer's regions
  size_t roff = 0;    // offset in that region
  size_t loff = 0;    // offset in the local buffer
  size_t len = 0;
};

// Destinations never overlap (packed in shuffled order with random gaps); sources
// are random and may overlap. For READ the destination is the local buffer, for
// WRITE the remote regions listed in `regions` (sizes from `region_sizes`).
std::vector<PlannedDesc> PlanBatch(adxl::TransferOp op, const std::vector<size_t> &lengths,
                                   const std::vector<size_t> &regions, const std::vector<size_t> &region_sizes,
                                   size_t local_size, std::mt19937_64 &rng, std::string *err) {
  std::vector<PlannedDesc> out(lengths.size());
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  std::uniform_int_distribution<size_t> gap(0, 63);
  std::uniform_int_distribution<size_t> pick_region(0, regions.size() - 1);
  std::vector<size_t> cursor(regions.size(), 0);  // WRITE: per region
  size_t local_cursor = 0;                        // READ
  for (size_t k : order) {
    PlannedDesc d;
    d.len = lengths[k];
    if (op == adxl::READ) {
      local_cursor += gap(rng);
      d.loff = local_cursor;
      local_cursor += d.len;
      if (local_cursor > local_size) {
        *err = "local buffer too small for the planned batch";
        return {};
      }
      size_t ri = pick_region(rng);
      for (size_t tries = 0; tries < regions.size() && region_sizes[regions[ri]] < d.len; ++tries)
        ri = (ri + 1) % regions.size();
      d.region = regions[ri];
      if (region_sizes[d.region] < d.len) {
        *err = "no region large enough";
        return {};
      }
      d.roff = std::uniform_int_distribution<size_t>(0, region_sizes[d.region] - d.len)(rng);
    } else {
      size_t ri = pick_region(rng);
      bool placed = false;
      for (size_t tries = 0; tries < regions.size(); ++tries, ri = (ri + 1) % regions.size()) {
        size_t start = cursor[ri] + gap(rng);
        if (start + d.len <= region_sizes[regions[ri]]) {
          d.region = regions[ri];
          d.roff = start;
          cursor[ri] = start + d.len;
          placed = true;
          break;
        }
      }
      if (!placed) {
        *err = "remote regions too small for the planned batch";
        return {};
      }
      if (local_size < d.len) {
        *err = "local buffer too small";
        return {};
      }
      d.loff = std::uniform_int_distribution<size_t>(0, local_size - d.len)(rng);
    }
    out[k] = d;
  }
  return out;
}

// Finds the first byte where the peer's region differs from `expected` using CRCs
// of shrinking chunks (for a readable failure message).
std::string LocateRemoteMismatch(AdxlPeer &peer, size_t idx, const std::vector<uint8_t> &expected) {
  size_t lo = 0, len = expected.size();
  while (len > 64) {
    const size_t chunk = (len + 15) / 16;
    bool found = false;
    for (size_t off = lo; off < lo + len; off += chunk) {
      size_t n = std::min(chunk, lo + len - off);
      uint64_t crc = 0;
      if (!peer.Crc(idx, off, n, &crc)) return "CRC failed: " + peer.last_error();
      if (crc != Hash64(expected.data() + off, n)) {
        lo = off;
        len = n;
        found = true;
        break;
      }
    }
    if (!found) return "no mismatch found on second look";
  }
  return "first differing chunk at region offset " + std::to_string(lo) + " (length " + std::to_string(len) + ")";
}

class TransferBase : public AdxlFixture {
 protected:
  // A started peer with `regions` regions of `size` bytes filled from `seed`,
  // this client initialized and connected to it; null, the failure reported,
  // when any step failed.
  AdxlPeer *ConnectedPeer(size_t size, uint64_t seed, int regions = 1) {
    AdxlPeer::Options o;
    o.regions = regions;
    o.size = size;
    o.seed = seed;
    AdxlPeer *peer = StartPeer(o);
    if (peer == nullptr) return nullptr;
    if (!InitClient() || !ConnectTo(*peer)) {
      ADD_FAILURE() << "could not initialize the client and connect it to " << peer->id();
      return nullptr;
    }
    return peer;
  }

  // Runs a planned batch and verifies every byte of the destination side.
  void RunAndVerifyBatch(AdxlPeer &peer, adxl::TransferOp op, const std::vector<PlannedDesc> &plan,
                         GuardedBuffer &local, uint64_t local_seed, int32_t timeout_ms = kBigTimeoutMs) {
    FillPattern(local.data(), local.size(), local_seed, 0);
    std::vector<adxl::TransferOpDesc> descs;
    descs.reserve(plan.size());
    for (const auto &d : plan)
      descs.push_back({local.addr() + d.loff, peer.region(d.region).addr + d.roff, d.len});

    // Expected images before the transfer.
    std::vector<uint8_t> expected_local;
    std::map<size_t, std::vector<uint8_t>> expected_remote;
    if (op == adxl::READ) {
      expected_local.assign(local.data(), local.data() + local.size());
      for (const auto &d : plan)
        FillPattern(expected_local.data() + d.loff, d.len, peer.region(d.region).seed, d.roff);
    } else {
      for (const auto &d : plan) {
        auto it = expected_remote.find(d.region);
        if (it == expected_remote.end()) {
          std::vector<uint8_t> img(peer.region(d.region).len);
          FillPattern(img.data(), img.size(), peer.region(d.region).seed, 0);
          it = expected_remote.emplace(d.region, std::move(img)).first;
        }
        std::memcpy(it->second.data() + d.roff, local.data() + d.loff, d.len);
      }
    }

    Timed r = Transfer(peer.id(), op, descs, timeout_ms);
    ASSERT_ST(adxl::SUCCESS, r.status) << (op == adxl::READ ? "READ" : "WRITE") << " batch of " << descs.size()
                                       << " descriptors, after " << r.ms << " ms";

    if (op == adxl::READ) {
      size_t diff = FirstDiff(local.data(), expected_local.data(), local.size());
      if (diff != SIZE_MAX) {
        std::string which = "outside every destination range";
        for (size_t k = 0; k < plan.size(); ++k)
          if (diff >= plan[k].loff && diff < plan[k].loff + plan[k].len)
            which = "in descriptor " + std::to_string(k) + " (len " + std::to_string(plan[k].len) + ", byte " +
                    std::to_string(diff - plan[k].loff) + ")";
        ADD_FAILURE() << "READ result differs at local offset " << diff << " " << which;
      }
      // READ must not modify the remote.
      std::set<size_t> touched;
      for (const auto &d : plan) touched.insert(d.region);
      for (size_t idx : touched) {
        EXPECT_EQ("OK", peer.CheckUntouched(idx)) << "READ modified remote region " << idx;
      }
    } else {
      for (const auto &kv : expected_remote) {
        uint64_t crc = 0;
        ASSERT_TRUE(peer.Crc(kv.first, 0, kv.second.size(), &crc)) << peer.last_error();
        if (crc != Hash64(kv.second.data(), kv.second.size()))
          ADD_FAILURE() << "remote region " << kv.first << " differs from the expected image after WRITE: "
                        << LocateRemoteMismatch(peer, kv.first, kv.second);
      }
      // Regions that were not written stay untouched.
      for (size_t i = 0; i < peer.regions().size(); ++i)
        if (expected_remote.count(i) == 0) {
          EXPECT_EQ("OK", peer.CheckUntouched(i)) << "region " << i;
        }
      // WRITE must not modify the local source.
      EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), local.size(), local_seed, 0)) << "WRITE modified its source";
    }
  }

  // After a WRITE batch the peer regions hold the written image: restore patterns.
  void RestorePeer(AdxlPeer &peer) {
    for (size_t i = 0; i < peer.regions().size(); ++i) ASSERT_TRUE(peer.Fill(i, peer.region(i).seed));
  }
};

std::string TransportName(const ::testing::TestParamInfo<std::string> &info) { return info.param; }

// Tests that run once per data path ("tcp", "shm").
class TransferTest : public TransferBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
};

// ---------------------------------------------------------------------------------
// Single descriptors of many sizes, at odd offsets and flush with the region end.
// ---------------------------------------------------------------------------------
class SizeTest : public TransferBase, public ::testing::WithParamInterface<std::tuple<size_t, std::string>> {
 protected:
  void SetUp() override { UseTransport(std::get<1>(GetParam())); }
};

TEST_P(SizeTest, ReadAndWriteOneDescriptor) {
  const size_t len = std::get<0>(GetParam());
  const size_t region_size = (2u << 20) + 64;
  AdxlPeer *peer = ConnectedPeer(region_size, 100);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion &rr = peer->region(0);

  const size_t kPad = 32;  // sentinel bytes on both sides of the local destination
  GuardedBuffer local(len + 2 * kPad);
  for (size_t roff : {size_t{13}, region_size - len}) {
    SCOPED_TRACE("len " + std::to_string(len) + " at remote offset " + std::to_string(roff));
    // READ remote [roff, roff+len) -> local [kPad, kPad+len)
    FillPattern(local.data(), local.size(), 7, 0);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr() + kPad, rr.addr + roff, len}}, kBigTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + kPad, len, rr.seed, roff)) << "READ data wrong";
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kPad, 7, 0)) << "READ wrote before the destination";
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + kPad + len, kPad, 7, kPad + len))
        << "READ wrote past the destination";
    EXPECT_EQ("OK", peer->CheckUntouched(0)) << "READ modified the remote";

    // WRITE local [kPad, kPad+len) (pattern 555 aligned to the remote offset) -> remote
    FillPattern(local.data(), local.size(), 9, 0);
    FillPattern(local.data() + kPad, len, 555, roff);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{local.addr() + kPad, rr.addr + roff, len}}, kBigTimeoutMs));
    EXPECT_EQ("OK", peer->Check(0, roff, len, 555)) << "WRITE data wrong";
    EXPECT_EQ("OK", peer->Check(0, 0, roff, rr.seed)) << "WRITE touched bytes before the range";
    EXPECT_EQ("OK", peer->Check(0, roff + len, region_size - roff - len, rr.seed))
        << "WRITE touched bytes after the range";
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + kPad, len, 555, roff)) << "WRITE modified its source";
    ASSERT_TRUE(peer->Fill(0, rr.seed));
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, SizeTest,
                         ::testing::Combine(::testing::Values(size_t{1}, size_t{7}, size_t{4096}, size_t{65536},
                                                              size_t{(1u << 20) + 3}),
                                            ::testing::ValuesIn(AllTransports())),
                         [](const ::testing::TestParamInfo<std::tuple<size_t, std::string>> &info) {
                           return "Bytes" + std::to_string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
                         });

// ---------------------------------------------------------------------------------
// 64 MiB in one descriptor.
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, Read64MiBOneDescriptor) {
  const size_t kLen = 64u << 20;
  AdxlPeer *peer = ConnectedPeer(kLen, 4242);
  ASSERT_NE(nullptr, peer);
  GuardedBuffer local(kLen);
  std::memset(local.data(), 0xA5, kLen);
  Timed r = Transfer(peer->id(), adxl::READ, {{local.addr(), peer->region(0).addr, kLen}}, kBigTimeoutMs);
  ASSERT_ST(adxl::SUCCESS, r.status) << "after " << r.ms << " ms";
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kLen, 4242, 0));
  EXPECT_EQ("OK", peer->CheckUntouched(0));
}

// The metrics time every call, also the smallest READs, which on the
// same-host path are one-sided copies that stamp their own end (the record
// reuses that clock reading): each of the calls is counted once, with its
// bytes, and its recorded time is a real duration (at least the 100 ns a
// copy system call takes, at most the call's timeout).
TEST_P(TransferTest, SmallReadsAreCountedAndTimedInTheMetrics) {
  AdxlPeer *peer = ConnectedPeer(4096, 77);
  ASSERT_NE(nullptr, peer);
  GuardedBuffer local(8);
  const int kCalls = 200;
  for (int i = 0; i < kCalls; ++i) {
    const size_t off = static_cast<size_t>(i % 64) * 8;
    std::memset(local.data(), 0, 8);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr + off, 8}}, 5000));
    ASSERT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 8, 77, off)) << "call " << i;
  }
  const char *raw = nullptr;
  ASSERT_ST(adxl::SUCCESS, llmdd_ext::GetMetricsJson(engine_, raw));
  const std::string json = raw;
  const std::string t = GetParam();
  EXPECT_NE(json.find("{\"op\":\"read\",\"transport\":\"" + t + "\",\"status\":\"SUCCESS\",\"count\":200}"),
            std::string::npos) << json;
  EXPECT_NE(json.find("{\"op\":\"read\",\"transport\":\"" + t + "\",\"bytes\":1600}"), std::string::npos) << json;
  const std::string latency = "{\"transport\":\"" + t + "\",\"size\":\"le4KiB\",\"count\":200,\"sum_seconds\":";
  const size_t at = json.find(latency);
  ASSERT_NE(at, std::string::npos) << json;
  const double sum_seconds = std::strtod(json.c_str() + at + latency.size(), nullptr);
  EXPECT_GE(sum_seconds, kCalls * 100e-9) << json;
  EXPECT_LE(sum_seconds, kCalls * 5.0) << json;
}

TEST_P(TransferTest, Write64MiBOneDescriptor) {
  const size_t kLen = 64u << 20;
  AdxlPeer *peer = ConnectedPeer(kLen, 4243);
  ASSERT_NE(nullptr, peer);
  GuardedBuffer local(kLen);
  FillPattern(local.data(), kLen, 777, 0);
  Timed r = Transfer(peer->id(), adxl::WRITE, {{local.addr(), peer->region(0).addr, kLen}}, kBigTimeoutMs);
  ASSERT_ST(adxl::SUCCESS, r.status) << "after " << r.ms << " ms";
  EXPECT_EQ("OK", peer->Check(0, 0, kLen, 777));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kLen, 777, 0)) << "WRITE modified its source";
}

// ---------------------------------------------------------------------------------
// Batches.
// ---------------------------------------------------------------------------------
std::vector<size_t> SmallLengths(size_t n, std::mt19937_64 &rng) {
  std::uniform_int_distribution<size_t> len(1, 4096);
  std::vector<size_t> v(n);
  for (auto &x : v) x = len(rng);
  return v;
}

size_t SumPlusGaps(const std::vector<size_t> &lengths) {
  return std::accumulate(lengths.begin(), lengths.end(), size_t{0}) + 64 * lengths.size() + 4096;
}

class BatchTest : public TransferBase,
                  public ::testing::WithParamInterface<std::tuple<adxl::TransferOp, std::string>> {
 protected:
  void SetUp() override { UseTransport(std::get<1>(GetParam())); }
  adxl::TransferOp Op() const { return std::get<0>(GetParam()); }
};

TEST_P(BatchTest, TenThousandSmallDescriptors) {
  const adxl::TransferOp op = Op();
  std::mt19937_64 rng(op == adxl::READ ? 1001 : 1002);
  std::vector<size_t> lengths = SmallLengths(10000, rng);
  const size_t area = SumPlusGaps(lengths);
  AdxlPeer *peer = ConnectedPeer(area, 300);
  ASSERT_NE(nullptr, peer);
  GuardedBuffer local(area);
  std::string err;
  auto plan = PlanBatch(op, lengths, {0}, {area}, area, rng, &err);
  ASSERT_EQ(lengths.size(), plan.size()) << err;
  RunAndVerifyBatch(*peer, op, plan, local, 31);
}

TEST_P(BatchTest, MixedBigAndSmallDescriptors) {
  const adxl::TransferOp op = Op();
  std::mt19937_64 rng(op == adxl::READ ? 2001 : 2002);
  std::vector<size_t> lengths = SmallLengths(2000, rng);
  std::uniform_int_distribution<size_t> extra(0, 4095);
  for (int i = 0; i < 6; ++i) lengths.push_back((1u << 20) + extra(rng));
  lengths.push_back((4u << 20) + 1);
  lengths.push_back(256u << 10);
  const size_t area = SumPlusGaps(lengths) + (1u << 20);
  AdxlPeer *peer = ConnectedPeer(area, 400, 2);
  ASSERT_NE(nullptr, peer);
  GuardedBuffer local(area);
  std::string err;
  auto plan = PlanBatch(op, lengths, {0, 1}, {area, area}, area, rng, &err);
  ASSERT_EQ(lengths.size(), plan.size()) << err;
  RunAndVerifyBatch(*peer, op, plan, local, 32);
}

TEST_P(BatchTest, SeveralRegionsIncludingOneRegisteredAfterConnect) {
  const adxl::TransferOp op = Op();
  std::mt19937_64 rng(op == adxl::READ ? 3001 : 3002);
  const size_t kSize = 1u << 20;
  AdxlPeer *peer = ConnectedPeer(kSize, 500, 4);
  ASSERT_NE(nullptr, peer);
  // Memory registered on the server after the client connected is usable too.
  const size_t kLate = 300001;
  int late = peer->Register(kLate, 599);
  ASSERT_EQ(4, late) << peer->last_error();
  std::vector<size_t> lengths = SmallLengths(600, rng);
  lengths.push_back(200000);
  lengths.push_back(150001);
  GuardedBuffer local(SumPlusGaps(lengths));
  std::string err;
  auto plan = PlanBatch(op, lengths, {0, 1, 2, 3, 4}, {kSize, kSize, kSize, kSize, kLate}, local.size(), rng, &err);
  ASSERT_EQ(lengths.size(), plan.size()) << err;
  std::set<size_t> used;
  for (const auto &d : plan) used.insert(d.region);
  EXPECT_EQ(5u, used.size()) << "the plan should touch every region";
  RunAndVerifyBatch(*peer, op, plan, local, 33);
}

INSTANTIATE_TEST_SUITE_P(Ops, BatchTest,
                         ::testing::Combine(::testing::Values(adxl::READ, adxl::WRITE),
                                            ::testing::ValuesIn(AllTransports())),
                         [](const ::testing::TestParamInfo<std::tuple<adxl::TransferOp, std::string>> &info) {
                           return std::string(std::get<0>(info.param) == adxl::READ ? "Read_" : "Write_") +
                                  std::get<1>(info.param);
                         });

// ---------------------------------------------------------------------------------
// Sub-ranges of one registration: whole region, first byte, last byte, middle.
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, SubRangesOfOneRegistration) {
  const size_t kSize = (1u << 20) + 17;
  AdxlPeer *peer = ConnectedPeer(kSize, 600);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(kSize);
  struct Range {
    size_t off, len;
  };
  for (Range rg : {Range{0, kSize}, Range{0, 1}, Range{kSize - 1, 1}, Range{4096, 4096}, Range{1, kSize - 2}}) {
    SCOPED_TRACE("range [" + std::to_string(rg.off) + ", +" + std::to_string(rg.len) + ")");
    std::memset(local.data(), 0x5A, kSize);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr + rg.off, rg.len}}, kBigTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), rg.len, rr.seed, rg.off));
    for (size_t i = rg.len; i < kSize; i += 4099) ASSERT_EQ(0x5A, local.data()[i]) << "READ wrote past len";

    FillPattern(local.data(), rg.len, 601, rg.off);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{local.addr(), rr.addr + rg.off, rg.len}}, kBigTimeoutMs));
    EXPECT_EQ("OK", peer->Check(0, rg.off, rg.len, 601));
    EXPECT_EQ("OK", peer->Check(0, 0, rg.off, rr.seed));
    EXPECT_EQ("OK", peer->Check(0, rg.off + rg.len, kSize - rg.off - rg.len, rr.seed));
    ASSERT_TRUE(peer->Fill(0, rr.seed));
  }
}

// ---------------------------------------------------------------------------------
// One allocation registered as adjacent regions (K and V views of one buffer, as
// inference frameworks register them). The client merges descriptors that are
// contiguous on both sides, so ranges cross the registration boundaries; the
// server serves them because every byte lies in registered memory with the right.
// ---------------------------------------------------------------------------------
class AdjacentRegistrationsTest : public TransferBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }

  // Expected bytes of the adjacent regions [first, first + count) after nothing
  // was written: the concatenation of their patterns.
  std::vector<uint8_t> Image(AdxlPeer &peer, size_t first, size_t count) {
    std::vector<uint8_t> image;
    for (size_t i = first; i < first + count; ++i) {
      const size_t at = image.size();
      image.resize(at + peer.region(i).len);
      FillPattern(image.data() + at, peer.region(i).len, peer.region(i).seed, 0);
    }
    return image;
  }

  // The peer's adjacent regions [first, first + count) hold `image`, region by region.
  void ExpectRemote(AdxlPeer &peer, size_t first, size_t count, const std::vector<uint8_t> &image,
                    const std::string &what) {
    size_t at = 0;
    for (size_t i = first; i < first + count; ++i) {
      const size_t len = peer.region(i).len;
      std::vector<uint8_t> part(image.begin() + at, image.begin() + at + len);
      uint64_t crc = 0;
      ASSERT_TRUE(peer.Crc(i, 0, len, &crc)) << peer.last_error();
      if (crc != Hash64(part.data(), len))
        ADD_FAILURE() << what << ": remote region " << i << " differs: " << LocateRemoteMismatch(peer, i, part);
      at += len;
    }
  }
};

TEST_P(AdjacentRegistrationsTest, ReadAndWriteAcrossRegistrationBoundaries) {
  // Odd sizes: boundaries fall at unaligned addresses; 3 x 512 KiB reaches the
  // size at which the client splits a transfer across its lanes.
  const size_t kPart = (512u << 10) + 3;
  AdxlPeer::Options o;
  o.size = 4096;
  o.seed = 1400;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_EQ(1, peer->RegisterAdjacent(kPart, 1401, {"rw", "rw", "rw"})) << peer->last_error();
  const RemoteRegion r1 = peer->region(1), r2 = peer->region(2), r3 = peer->region(3);
  ASSERT_EQ(r1.addr + r1.len, r2.addr);
  ASSERT_EQ(r2.addr + r2.len, r3.addr);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*peer));
  const std::vector<uint8_t> original = Image(*peer, 1, 3);
  const size_t kAll = 3 * kPart;
  GuardedBuffer local(kAll);
  const uintptr_t L = local.addr();
  const uintptr_t R = r1.addr;  // the allocation's start; offsets below are into it

  struct Case {
    const char *what;
    std::vector<adxl::TransferOpDesc> descs;  // local offset == remote offset within the allocation
  };
  auto desc = [&](size_t off, size_t len) { return adxl::TransferOpDesc{L + off, R + off, len}; };
  const std::vector<Case> cases = {
      {"two descriptors adjacent on both sides, meeting at the boundary",
       {desc(kPart - 1000, 1000), desc(kPart, 3000)}},
      {"one descriptor straddling the boundary", {desc(kPart - 1, 2)}},
      {"one descriptor across two boundaries", {desc(kPart - 5000, kPart + 10000)}},
      {"the whole allocation in three descriptors", {desc(0, kPart), desc(kPart, kPart), desc(2 * kPart, kPart)}},
      {"the whole allocation in one descriptor", {desc(0, kAll)}},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    // READ: exactly the described bytes arrive, the rest of the local buffer keeps its pattern.
    FillPattern(local.data(), kAll, 1499, 0);
    std::vector<uint8_t> expected_local(local.data(), local.data() + kAll);
    for (const auto &d : c.descs)
      std::memcpy(expected_local.data() + (d.local_addr - L), original.data() + (d.remote_addr - R), d.len);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, c.descs, kBigTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FirstDiff(local.data(), expected_local.data(), kAll)) << "READ result";
    ExpectRemote(*peer, 1, 3, original, "READ modified the source");

    // WRITE: exactly the described bytes change on the peer.
    FillPattern(local.data(), kAll, 1498, 0);
    std::vector<uint8_t> expected_remote = original;
    for (const auto &d : c.descs)
      std::memcpy(expected_remote.data() + (d.remote_addr - R), local.data() + (d.local_addr - L), d.len);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, c.descs, kBigTimeoutMs));
    ExpectRemote(*peer, 1, 3, expected_remote, "after WRITE");
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kAll, 1498, 0)) << "WRITE modified its source";
    for (size_t i = 1; i <= 3; ++i) ASSERT_TRUE(peer->Fill(i, peer->region(i).seed));
  }
  EXPECT_EQ("OK", peer->CheckUntouched(0));
}

TEST_P(AdjacentRegistrationsTest, ReadOnlyNeighbourRefusesWritesAcrossTheBoundary) {
  const size_t kPart = 64u << 10;
  AdxlPeer::Options o;
  o.size = 4096;
  o.seed = 1500;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  // Region 1 read-write, region 2 read-only, adjacent.
  ASSERT_EQ(1, peer->RegisterAdjacent(kPart, 1501, {"rw", "ro"})) << peer->last_error();
  const RemoteRegion rw = peer->region(1), ro = peer->region(2);
  ASSERT_EQ(rw.addr + rw.len, ro.addr);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(2 * kPart);
  const uintptr_t L = local.addr();

  // WRITE across the boundary, as two merged descriptors and as one: refused,
  // no byte on either side of the boundary changed.
  FillPattern(local.data(), local.size(), 1599, 0);
  const std::vector<std::vector<adxl::TransferOpDesc>> writes = {
      {{L, ro.addr - 100, 100}, {L + 100, ro.addr, 100}},
      {{L, ro.addr - 1, 2}},
      {{L, rw.addr, 2 * kPart}},
  };
  for (const auto &descs : writes) {
    SCOPED_TRACE("WRITE of " + std::to_string(descs.size()) + " descriptor(s) from offset " +
                 std::to_string(descs[0].remote_addr - rw.addr));
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, adxl::WRITE, descs, kBigTimeoutMs));
    EXPECT_EQ("OK", peer->CheckUntouched(1)) << "the read-write part changed";
    EXPECT_EQ("OK", peer->CheckUntouched(2)) << "the read-only part changed";
    ASSERT_TRUE(peer->Ping()) << "peer " << peer->Health();
  }
  // READ across the same boundary is allowed: both regions may be read.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{L, ro.addr - 100, 100}, {L + 100, ro.addr, 100}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 100, rw.seed, kPart - 100));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 100, 100, ro.seed, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 200, local.size() - 200, 1599, 200));
  // A WRITE that stays inside the read-write part still works.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{L, ro.addr - 100, 100}}, kBigTimeoutMs));
  uint64_t crc = 0;
  ASSERT_TRUE(peer->Crc(1, kPart - 100, 100, &crc)) << peer->last_error();
  EXPECT_EQ(Hash64(local.data(), 100), crc) << "the written bytes";
  EXPECT_EQ("OK", peer->Check(1, 0, kPart - 100, rw.seed));
  EXPECT_EQ("OK", peer->CheckUntouched(2));
}

// MemDesc::local_only: registered, but never reachable by peers, not even
// across a boundary with neighbours they may read and write, on either path
// (same host: neither the one-sided read lease nor requests reach it).
TEST_P(AdjacentRegistrationsTest, LocalOnlyMemoryIsNeverReachableByPeers) {
  const size_t kPart = 64u << 10;
  AdxlPeer::Options o;
  o.size = 4096;
  o.seed = 1600;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_EQ(1, peer->RegisterAdjacent(kPart, 1601, {"rw", "local", "rw"})) << peer->last_error();
  const RemoteRegion before = peer->region(1), hidden = peer->region(2), after = peer->region(3);
  ASSERT_EQ(before.addr + before.len, hidden.addr);
  ASSERT_EQ(hidden.addr + hidden.len, after.addr);
  ASSERT_TRUE(InitClient());
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(3 * kPart);
  const uintptr_t L = local.addr();
  const std::vector<std::vector<adxl::TransferOpDesc>> cases = {
      {{L, hidden.addr, 8}},                  // small (one-sided on one host)
      {{L, hidden.addr + 100, kPart - 200}},  // inside
      {{L, hidden.addr - 1, 2}},              // across the lower boundary
      {{L, before.addr, 3 * kPart}},          // all three
      {{L, after.addr - 50, 100}},            // across the upper boundary
  };
  for (const auto &descs : cases) {
    SCOPED_TRACE("remote offset " + std::to_string(static_cast<int64_t>(descs[0].remote_addr - hidden.addr)) +
                 ", " + std::to_string(descs[0].len) + " bytes");
    FillPattern(local.data(), local.size(), 1699, 0);
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, adxl::READ, descs, kBigTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), local.size(), 1699, 0)) << "READ wrote local memory";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, adxl::WRITE, descs, kBigTimeoutMs));
    for (size_t i = 1; i <= 3; ++i) EXPECT_EQ("OK", peer->CheckUntouched(i)) << "region " << i << " changed";
  }
  // Its neighbours are served as usual.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{L, before.addr, kPart}, {L + kPart, after.addr, kPart}},
                                kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kPart, before.seed, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + kPart, kPart, after.seed, 0));
}

INSTANTIATE_TEST_SUITE_P(Transports, AdjacentRegistrationsTest, ::testing::ValuesIn(AllTransports()), TransportName);

// ---------------------------------------------------------------------------------
// Memory registered on the server after Connect (an improvement over CANN).
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, MemoryRegisteredAfterConnectIsAccessible) {
  AdxlPeer *peer = ConnectedPeer(4096, 700);
  ASSERT_NE(nullptr, peer);
  const size_t kLen = (256u << 10) + 5;
  int idx = peer->Register(kLen, 701);
  ASSERT_EQ(1, idx) << peer->last_error();
  const RemoteRegion rr = peer->region(1);
  GuardedBuffer local(kLen);
  // Immediately after the peer's RegisterMem returned.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, kLen}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kLen, 701, 0));
  FillPattern(local.data(), kLen, 702, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{local.addr() + 100, rr.addr + 100, kLen - 200}}, kBigTimeoutMs));
  EXPECT_EQ("OK", peer->Check(1, 100, kLen - 200, 702));
  EXPECT_EQ("OK", peer->Check(1, 0, 100, 701));
  EXPECT_EQ("OK", peer->Check(1, kLen - 100, 100, 701));
  EXPECT_EQ("OK", peer->CheckUntouched(0));
}

// ---------------------------------------------------------------------------------
// Local memory may be registered too, as MEM_DEVICE or MEM_HOST; remote MEM_DEVICE.
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, RegisteredLocalMemoryAndDeviceMemType) {
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 800;
  o.device_mem = true;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient());
  GuardedBuffer a(1u << 20), b(1u << 20);
  adxl::MemHandle ha = nullptr, hb = nullptr;
  adxl::MemDesc da{};
  da.addr = a.addr();
  da.len = a.size();
  adxl::MemDesc db{};
  db.addr = b.addr();
  db.len = b.size();
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(da, adxl::MEM_DEVICE, ha));
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(db, adxl::MEM_HOST, hb));
  EXPECT_NE(nullptr, ha);
  EXPECT_NE(nullptr, hb);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{a.addr(), rr.addr, a.size()}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(a.data(), a.size(), 800, 0));
  FillPattern(b.data(), b.size(), 801, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{b.addr(), rr.addr, b.size()}}, kBigTimeoutMs));
  EXPECT_EQ("OK", peer->Check(0, 0, b.size(), 801));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(peer->id()));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(ha));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(hb));
}

// ---------------------------------------------------------------------------------
// "llmdd.TcpConnections" = 1 and 8 (on both engines).
// ---------------------------------------------------------------------------------
class TcpConnectionsTest : public TransferBase, public ::testing::WithParamInterface<const char *> {
 protected:
  void SetUp() override { UseTransport("tcp"); }  // the lanes only matter for TCP
};

TEST_P(TcpConnectionsTest, BigAndBatchedBothDirections) {
  const std::vector<std::pair<std::string, std::string>> opts = {{"llmdd.TcpConnections", GetParam()}};
  std::mt19937_64 rng(4000 + std::atoi(GetParam()));
  std::vector<size_t> lengths = SmallLengths(1500, rng);
  for (int i = 0; i < 4; ++i) lengths.push_back((2u << 20) + 3 * i);
  const size_t area = SumPlusGaps(lengths);
  const size_t kBig = 16u << 20;
  AdxlPeer::Options o;
  o.regions = 2;
  o.size = std::max(area, kBig);
  o.seed = 900;
  o.engine_options = opts;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(InitClient(opts));
  ASSERT_TRUE(ConnectTo(*peer));

  GuardedBuffer big(kBig);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{big.addr(), peer->region(1).addr, kBig}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(big.data(), kBig, 901, 0));
  FillPattern(big.data(), kBig, 950, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{big.addr(), peer->region(1).addr, kBig}}, kBigTimeoutMs));
  EXPECT_EQ("OK", peer->Check(1, 0, kBig, 950));
  ASSERT_TRUE(peer->Fill(1, 901));

  GuardedBuffer local(area);
  for (adxl::TransferOp op : {adxl::READ, adxl::WRITE}) {
    SCOPED_TRACE(op == adxl::READ ? "READ batch" : "WRITE batch");
    std::string err;
    auto plan = PlanBatch(op, lengths, {0, 1}, {o.size, o.size}, area, rng, &err);
    ASSERT_EQ(lengths.size(), plan.size()) << err;
    RunAndVerifyBatch(*peer, op, plan, local, 34);
    RestorePeer(*peer);
  }
}

INSTANTIATE_TEST_SUITE_P(Connections, TcpConnectionsTest, ::testing::Values("1", "8"),
                         [](const ::testing::TestParamInfo<const char *> &info) {
                           return std::string("Sockets") + info.param;
                         });

// ---------------------------------------------------------------------------------
// IPv6 loopback.
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, Ipv6Loopback) {
  if (!Ipv6LoopbackAvailable()) GTEST_SKIP() << "::1 cannot be bound on this machine";
  AdxlPeer::Options o;
  o.host = "::1";
  o.size = (1u << 20) + 3;
  o.seed = 1100;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_EQ('[', peer->id()[0]) << peer->id();
  ASSERT_TRUE(InitClient({}, "[::1]"));
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(rr.len);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, rr.len}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), rr.len, 1100, 0));
  FillPattern(local.data(), rr.len, 1101, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{local.addr(), rr.addr, rr.len}}, kBigTimeoutMs));
  EXPECT_EQ("OK", peer->Check(0, 0, rr.len, 1101));
  ASSERT_TRUE(peer->Fill(0, 1100));

  std::mt19937_64 rng(1102);
  std::vector<size_t> lengths = SmallLengths(200, rng);
  std::string err;
  auto plan = PlanBatch(adxl::READ, lengths, {0}, {rr.len}, rr.len, rng, &err);
  ASSERT_EQ(lengths.size(), plan.size()) << err;
  RunAndVerifyBatch(*peer, adxl::READ, plan, local, 35);
}

// ---------------------------------------------------------------------------------
// The test process as the server: a peer connects to it and reads/writes its memory,
// while the test also connects back to the peer (server-server, both directions).
// ---------------------------------------------------------------------------------
TEST_P(TransferTest, PeerAsClientReadsAndWritesTestProcessMemory) {
  ASSERT_TRUE(InitServer());
  const size_t kLen = (1u << 20) + 9;
  GuardedBuffer mine(kLen);
  FillPattern(mine.data(), kLen, 1200, 0);
  adxl::MemHandle h = nullptr;
  adxl::MemDesc d{};
  d.addr = mine.addr();
  d.len = kLen;
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(d, adxl::MEM_HOST, h));

  AdxlPeer::Options o;
  o.size = kLen;
  o.seed = 1300;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_ST(adxl::SUCCESS, peer->Connect(engine_id_, 10000)) << peer->last_error();
  ASSERT_TRUE(ConnectTo(*peer));  // and the other direction

  // Peer READs the test's memory into its region 0.
  ASSERT_ST(adxl::SUCCESS, peer->Transfer(engine_id_, "READ", 0, 0, mine.addr(), kLen, kBigTimeoutMs))
      << peer->last_error();
  EXPECT_EQ("OK", peer->Check(0, 0, kLen, 1200));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data(), kLen, 1200, 0)) << "a remote READ modified the source";

  // Peer WRITEs (after re-filling region 0 with 1301) into the middle of the test's memory.
  ASSERT_TRUE(peer->Fill(0, 1301));
  ASSERT_ST(adxl::SUCCESS, peer->Transfer(engine_id_, "WRITE", 0, 1000, mine.addr() + 1000, 50000, kBigTimeoutMs))
      << peer->last_error();
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data() + 1000, 50000, 1301, 1000));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data(), 1000, 1200, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(mine.data() + 51000, kLen - 51000, 1200, 51000));

  // Meanwhile the test's own client channel to the peer works as well.
  GuardedBuffer local(4096);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr + 5, 4096}}, kBigTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, 1301, 5));

  EXPECT_ST(adxl::SUCCESS, peer->Disconnect(engine_id_, 10000));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(h));
}

INSTANTIATE_TEST_SUITE_P(Transports, TransferTest, ::testing::ValuesIn(AllTransports()), TransportName);

// ---------------------------------------------------------------------------------
// READs of MallocMem memory: a same-host requester maps it (read-only, through
// pidfd_getfd) and copies with memcpy; "shm-unmapped" turns that off
// (llmdd.SameHostMapMaxBytes=0: process_vm_readv as for any other memory).
// ---------------------------------------------------------------------------------
class MallocMemReadTest : public TransferBase, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(Mapped() || GetParam() == "shm-unmapped" ? "shm" : GetParam()); }
  bool Mapped() const { return GetParam() == "shm"; }
  // A started peer (one region of `size` bytes, pattern `seed`) and this
  // client connected to it; with "shm-unmapped" neither side maps (the
  // peer's option matters when it serves our WRITEs). Null, the failure
  // reported, when a step failed.
  AdxlPeer *ConnectedPair(size_t size, uint64_t seed) {
    AdxlPeer::Options o;
    o.size = size;
    o.seed = seed;
    std::vector<std::pair<std::string, std::string>> opts;
    if (GetParam() == "shm-unmapped") opts.emplace_back("llmdd.SameHostMapMaxBytes", "0");
    o.engine_options = opts;
    AdxlPeer *peer = StartPeer(o);
    if (peer == nullptr) return nullptr;
    if (!InitClient(opts) || !ConnectTo(*peer)) {
      ADD_FAILURE() << "could not initialize the client and connect it to " << peer->id();
      return nullptr;
    }
    return peer;
  }
  // A counter of a metrics JSON object by family and path ("mapped" or "process_vm_readv").
  static uint64_t Counter(const std::string &json, const std::string &family, const char *path) {
    size_t at = json.find("\"" + family + "\":{");
    if (at == std::string::npos) return UINT64_MAX;
    at = json.find(std::string("\"") + path + "\":", at);
    return at == std::string::npos ? UINT64_MAX : std::strtoull(json.c_str() + at + strlen(path) + 3, nullptr, 10);
  }
  // How many READs we copied under the standing lease, by path.
  uint64_t OneSidedReads(const char *path) {
    const char *raw = nullptr;
    if (llmdd_ext::GetMetricsJson(engine_, raw) != adxl::SUCCESS) return UINT64_MAX;
    return Counter(raw, "same_host_one_sided_reads", path);
  }
};

std::vector<std::string> MallocMemReadParams() {
  std::vector<std::string> params;
  for (const std::string &t : AllTransports()) {
    params.push_back(t);
    if (t == "shm") params.push_back("shm-unmapped");
  }
  return params;
}

std::string MallocMemParamName(const ::testing::TestParamInfo<std::string> &info) {
  std::string name = info.param;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

TEST_P(MallocMemReadTest, ReadsAreExactFollowWritesAndEndWithTheRegistration) {
  AdxlPeer *peer = ConnectedPair(4096, 800);
  ASSERT_NE(nullptr, peer);
  const size_t kSize = 4u << 20;
  const int idx = peer->RegisterMalloced(kSize, 900);
  ASSERT_GE(idx, 0) << peer->last_error();
  const uintptr_t remote = peer->region(idx).addr;
  GuardedBuffer local(kSize);
  // One descriptor of several sizes and offsets, then a scattered batch.
  const std::vector<std::pair<size_t, size_t>> singles = {{100, 8}, {4097, 64u << 10}, {1u << 20, 1u << 20},
                                                          {0, kSize}};
  for (const auto &single : singles) {
    SCOPED_TRACE("offset " + std::to_string(single.first) + ", " + std::to_string(single.second) + " bytes");
    std::memset(local.data(), 0, single.second);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), remote + single.first, single.second}}, 10000));
    ASSERT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), single.second, 900, single.first));
  }
  std::vector<adxl::TransferOpDesc> batch;
  for (size_t k = 0; k < 200; ++k) batch.push_back({local.addr() + k * 4096, remote + (199 - k) * 8192 + 3, 4096});
  std::memset(local.data(), 0, kSize);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, batch, 10000));
  for (size_t k = 0; k < 200; ++k)
    ASSERT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + k * 4096, 4096, 900, (199 - k) * 8192 + 3)) << k;
  // What the peer writes into its memory is what the next READ sees.
  ASSERT_TRUE(peer->Fill(idx, 901));
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), remote + 12345, 1u << 20}}, 10000));
  ASSERT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 1u << 20, 901, 12345));
  if (GetParam() == "shm") {
    EXPECT_GE(OneSidedReads("mapped"), 6U);  // every READ above
    EXPECT_EQ(OneSidedReads("process_vm_readv"), 0U);
  } else if (GetParam() == "shm-unmapped") {
    EXPECT_EQ(OneSidedReads("mapped"), 0U);
    EXPECT_GE(OneSidedReads("process_vm_readv"), 6U);
  } else if (GetParam() == "tcp") {
    EXPECT_EQ(OneSidedReads("mapped"), 0U);
    EXPECT_EQ(OneSidedReads("process_vm_readv"), 0U);
  }
  // Once DeregisterMem returned on the peer, no READ reaches its memory.
  ASSERT_EQ(adxl::SUCCESS, peer->Deregister(idx));
  std::memset(local.data(), 0x5A, 8);
  EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, adxl::READ, {{local.addr(), remote + 100, 8}}, 5000));
  EXPECT_EQ(local.data()[0], 0x5A);
}

// A pull of large READs only (no small READ took a lease before): the first
// one asks for the lease itself and goes through the mapping.
TEST_P(MallocMemReadTest, ALargeFirstReadTakesTheMapping) {
  AdxlPeer *peer = ConnectedPair(4096, 1);
  ASSERT_NE(nullptr, peer);
  // Larger than a one-sided READ even once split into a part per lane (4 x 32 MiB).
  const size_t kSize = 128u << 20;
  const int idx = peer->RegisterMalloced(kSize, 930);
  ASSERT_GE(idx, 0) << peer->last_error();
  GuardedBuffer local(kSize);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(idx).addr, kSize}}, 30000));
  ASSERT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), kSize, 930, 0));
  if (GetParam() == "shm") {
    EXPECT_GE(OneSidedReads("mapped"), 1U);
  } else {
    EXPECT_EQ(OneSidedReads("mapped"), 0U);
  }
}

// WRITEs from MallocMem memory: the serving peer maps the source
// (kFlagSourceMappings) and copies with memcpy, the write hold read after
// every chunk; unmapped (llmdd.SameHostMapMaxBytes=0 on both sides) it is
// process_vm_readv. The bytes are the same either way.
TEST_P(MallocMemReadTest, WritesFromMallocMemAreExactAndServedFromTheMapping) {
  const size_t kRegion = 8u << 20;
  AdxlPeer *peer = ConnectedPair(kRegion, 810);
  ASSERT_NE(nullptr, peer);
  const size_t kSize = 4u << 20;
  void *mem = nullptr;
  ASSERT_EQ(adxl::SUCCESS, adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, kSize, &mem));
  auto *src = static_cast<uint8_t *>(mem);
  FillPattern(src, kSize, 820, 0);
  adxl::MemDesc desc{};
  desc.addr = reinterpret_cast<uintptr_t>(src);
  desc.len = kSize;
  adxl::MemHandle handle = nullptr;
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(desc, adxl::MEM_HOST, handle));
  const uintptr_t remote = peer->region(0).addr;
  // One small, one of 1 MiB at an odd offset, one of the whole buffer (split in parts), a scattered batch.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{desc.addr + 5, remote + 7, 64}}, 10000));
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{desc.addr + 4097, remote + (1u << 20) + 3, 1u << 20}}, 10000));
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, {{desc.addr, remote + (4u << 20), kSize}}, 10000));
  std::vector<adxl::TransferOpDesc> batch;
  for (size_t k = 0; k < 100; ++k) batch.push_back({desc.addr + k * 8192, remote + (3u << 20) + k * 4096, 4096});
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::WRITE, batch, 10000));
  // The peer's region now holds: pattern 810 except where written.
  std::vector<uint8_t> expected(kRegion);
  FillPattern(expected.data(), expected.size(), 810, 0);
  std::memcpy(expected.data() + 7, src + 5, 64);
  std::memcpy(expected.data() + (1u << 20) + 3, src + 4097, 1u << 20);
  for (size_t k = 0; k < 100; ++k) std::memcpy(expected.data() + (3u << 20) + k * 4096, src + k * 8192, 4096);
  std::memcpy(expected.data() + (4u << 20), src, kSize);
  uint64_t crc = 0;
  ASSERT_TRUE(peer->Crc(0, 0, expected.size(), &crc)) << peer->last_error();
  EXPECT_EQ(crc, Hash64(expected.data(), expected.size())) << LocateRemoteMismatch(*peer, 0, expected);
  const std::string served = peer->MetricsJson();
  ASSERT_FALSE(served.empty()) << peer->last_error();
  if (GetParam() == "shm") {
    EXPECT_GE(Counter(served, "same_host_served_writes", "mapped"), 4U) << served;
    EXPECT_EQ(Counter(served, "same_host_served_writes", "process_vm_readv"), 0U) << served;
  } else if (GetParam() == "shm-unmapped") {
    EXPECT_EQ(Counter(served, "same_host_served_writes", "mapped"), 0U) << served;
    EXPECT_GE(Counter(served, "same_host_served_writes", "process_vm_readv"), 4U) << served;
  } else if (GetParam() == "tcp") {
    EXPECT_EQ(Counter(served, "same_host_served_writes", "mapped"), 0U) << served;
  }
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(handle));
  EXPECT_EQ(adxl::SUCCESS, adxl::AdxlEngine::FreeMem(mem));
}

INSTANTIATE_TEST_SUITE_P(Transports, MallocMemReadTest, ::testing::ValuesIn(MallocMemReadParams()),
                         MallocMemParamName);

}  // namespace
}  // namespace itest
