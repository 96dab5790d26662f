// Tests of the LLM-DataDist geometry/planning module (src/datadist/planner.*).
//
// The core of this file is a naive reference model: both caches are simulated
// as byte arrays, the spec's per-row / per-block copy semantics (spec 2.7,
// 2.8) are applied one block at a time with no merging, and the result is
// compared byte for byte with applying the planner's expanded ranges. The
// comparison runs exhaustively over small geometries and on thousands of
// randomized cases with fixed seeds.
#include "datadist/planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace dd = llmdd::datadist;
using llm_datadist::CacheDesc;
using llm_datadist::KvCacheExtParam;
using llm_datadist::LLM_PARAM_INVALID;
using llm_datadist::LLM_SUCCESS;
using llm_datadist::Status;
using Blocks = std::vector<uint64_t>;
using Pairs = std::vector<std::pair<uint32_t, uint32_t>>;

CacheDesc MakeDesc(uint32_t num_tensors, ge::DataType dt, std::vector<int64_t> shape) {
  CacheDesc d;
  d.num_tensors = num_tensors;
  d.data_type = dt;
  d.shape = std::move(shape);
  return d;
}

std::vector<uint64_t> Addrs(uint32_t n, uint64_t base = 0x10000, uint64_t spacing = 0x1000) {
  std::vector<uint64_t> a(n);
  for (uint32_t i = 0; i < n; ++i) a[i] = base + i * spacing;
  return a;
}

KvCacheExtParam Ext(std::pair<int32_t, int32_t> src = {-1, -1}, std::pair<int32_t, int32_t> dst = {-1, -1},
                    uint8_t n = 2) {
  KvCacheExtParam e{};
  e.src_layer_range = src;
  e.dst_layer_range = dst;
  e.tensor_num_per_layer = n;
  return e;
}

// Geometry with uint8 elements: `rows` rows of `row_bytes` bytes each.
dd::CacheGeometry Geo(uint32_t num_tensors, uint64_t rows, uint64_t row_bytes, uint64_t base = 0x10000) {
  dd::CacheGeometry g;
  std::string err;
  const Status st = dd::ComputeGeometry(
      MakeDesc(num_tensors, ge::DT_UINT8, {static_cast<int64_t>(rows), static_cast<int64_t>(row_bytes)}),
      Addrs(num_tensors, base, rows * row_bytes + 0x100), &g, &err);
  EXPECT_EQ(st, LLM_SUCCESS) << err;
  return g;
}

// ===========================================================================
// (1) DataTypeBits and ComputeGeometry

TEST(DataTypeBits, FullTable) {
  const std::vector<std::pair<int, uint32_t>> table = {
      {0, 32},  {1, 16},  {2, 8},   {3, 32},  {4, 8},   {5, 0},   {6, 16},  {7, 16},  {8, 32},  {9, 64},  {10, 64},
      {11, 64}, {12, 8},  {13, 128}, {14, 8}, {15, 8},  {16, 64}, {17, 128}, {18, 8}, {19, 16}, {20, 32}, {21, 8},
      {22, 16}, {23, 64}, {24, 128}, {25, 40}, {26, 64}, {27, 16}, {28, 0},  {29, 4}, {30, 1},  {31, 2},  {32, 2},
      {33, 32}, {34, 8},  {35, 8},  {36, 8},  {37, 8},  {38, 6},  {39, 6},  {40, 4},  {41, 4},  {42, 0},  {43, 0},
      {50, 0},  {63, 0}};
  for (const auto &[value, bits] : table) {
    EXPECT_EQ(dd::DataTypeBits(static_cast<ge::DataType>(value)), bits) << "data type " << value;
  }
  EXPECT_EQ(dd::DataTypeBits(ge::DT_UNDEFINED), 0u);
  EXPECT_EQ(dd::DataTypeBits(ge::DT_MAX), 0u);
  EXPECT_EQ(dd::DataTypeBits(ge::DT_STRING), 128u);
  EXPECT_EQ(dd::DataTypeBits(ge::DT_STRING_REF), 128u);
  EXPECT_EQ(dd::DataTypeBits(ge::DT_BF16), 16u);
}

TEST(ComputeGeometry, SampleGeometry) {
  // Spec 2.8.1 example: shape {8, 16}, DT_INT32, 4 tensors -> 512 B, 8 rows of 64 B.
  dd::CacheGeometry g;
  std::string err;
  const auto addrs = Addrs(4);
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(4, ge::DT_INT32, {8, 16}), addrs, &g, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(g.num_tensors, 4u);
  EXPECT_EQ(g.tensor_size, 512u);
  EXPECT_EQ(g.row_count, 8u);
  EXPECT_EQ(g.stride, 64u);
  EXPECT_EQ(g.addrs, addrs);
}

struct SizeCase {
  ge::DataType dt;
  std::vector<int64_t> shape;
  uint64_t tensor_size;
  uint64_t stride;
};

TEST(ComputeGeometry, DataTypeSizesIncludingSubByte) {
  const std::vector<SizeCase> cases = {
      {ge::DT_FLOAT, {2, 3}, 24, 12},
      {ge::DT_FLOAT16, {2, 3}, 12, 6},
      {ge::DT_BF16, {4, 1, 2}, 16, 4},
      {ge::DT_INT8, {5}, 5, 1},
      {ge::DT_INT64, {3, 2}, 48, 16},
      {ge::DT_DOUBLE, {1, 1}, 8, 8},
      {ge::DT_BOOL, {7, 1}, 7, 1},
      {ge::DT_STRING, {2}, 32, 16},
      {ge::DT_STRING_REF, {3, 2}, 96, 32},
      {ge::DT_COMPLEX128, {1}, 16, 16},
      {ge::DT_COMPLEX64, {2, 2}, 32, 16},
      {ge::DT_COMPLEX32, {2, 2}, 16, 8},
      {ge::DT_DUAL, {2, 3}, 30, 15},
      {ge::DT_RESOURCE, {2}, 16, 8},
      {ge::DT_VARIANT, {2}, 16, 8},
      {ge::DT_HIFLOAT8, {4, 4}, 16, 4},
      {ge::DT_FLOAT8_E4M3FN, {4, 4}, 16, 4},
      // sub-byte: ceil(elements * bits / 8)
      {ge::DT_INT4, {4, 8}, 16, 4},
      {ge::DT_INT4, {3, 3}, 5, 1},          // 36 bits -> 5 B, rows of 1 B (1 B tail unused)
      {ge::DT_FLOAT4_E2M1, {2, 3}, 3, 1},   // 24 bits
      {ge::DT_FLOAT4_E1M2, {1, 1}, 1, 1},   // 4 bits -> 1 B
      {ge::DT_UINT1, {4, 3}, 2, 0},         // 12 bits -> 2 B, 4 rows of 0 B
      {ge::DT_UINT1, {2, 8}, 2, 1},
      {ge::DT_INT2, {7}, 2, 0},             // 14 bits
      {ge::DT_UINT2, {2, 4}, 2, 1},
      {ge::DT_FLOAT6_E3M2, {2, 5}, 8, 4},   // 60 bits -> 8 B
      {ge::DT_FLOAT6_E2M3, {3, 4}, 9, 3},   // 72 bits
      // huge sub-byte element count: the bit count overflows 64 bits, the byte count does not
      {ge::DT_INT4, {int64_t{1} << 62}, uint64_t{1} << 61, 0},
      {ge::DT_UINT1, {std::numeric_limits<int64_t>::max()}, uint64_t{1} << 60, 0},
      // largest accepted byte size: INT64_MAX rounded down to a multiple of 8
      {ge::DT_INT64, {(int64_t{1} << 60) - 1}, (uint64_t{1} << 63) - 8, 8},
  };
  for (const auto &c : cases) {
    dd::CacheGeometry g;
    std::string err;
    ASSERT_EQ(dd::ComputeGeometry(MakeDesc(1, c.dt, c.shape), {0x1000}, &g, &err), LLM_SUCCESS)
        << "dtype " << c.dt << ": " << err;
    EXPECT_EQ(g.tensor_size, c.tensor_size) << "dtype " << c.dt;
    EXPECT_EQ(g.stride, c.stride) << "dtype " << c.dt;
    EXPECT_EQ(g.row_count, static_cast<uint64_t>(c.shape[0])) << "dtype " << c.dt;
  }
}

struct GeoErrorCase {
  const char *name;
  CacheDesc desc;
  std::vector<uint64_t> addrs;
  const char *message_part;
};

TEST(ComputeGeometry, ValidationTable) {
  const int64_t kMax = std::numeric_limits<int64_t>::max();
  const std::vector<GeoErrorCase> cases = {
      {"empty addrs", MakeDesc(0, ge::DT_FLOAT, {2, 2}), {}, "addrs is empty"},
      {"empty addrs, num_tensors 2", MakeDesc(2, ge::DT_FLOAT, {2, 2}), {}, "addrs is empty"},
      {"fewer addrs", MakeDesc(3, ge::DT_FLOAT, {2, 2}), Addrs(2), "addrs has 2 entries but cache_desc.num_tensors = 3"},
      {"more addrs", MakeDesc(1, ge::DT_FLOAT, {2, 2}), Addrs(2), "addrs has 2 entries but cache_desc.num_tensors = 1"},
      {"zero addr", MakeDesc(3, ge::DT_FLOAT, {2, 2}), {0x1000, 0, 0x3000}, "addrs[1] is 0"},
      {"empty shape", MakeDesc(1, ge::DT_FLOAT, {}), {0x1000}, "cache_desc.shape is empty"},
      {"32 dims", MakeDesc(1, ge::DT_FLOAT, std::vector<int64_t>(32, 1)), {0x1000}, "has 32 dims, the limit is 31"},
      {"40 dims", MakeDesc(1, ge::DT_FLOAT, std::vector<int64_t>(40, 1)), {0x1000}, "has 40 dims"},
      {"zero dim", MakeDesc(1, ge::DT_FLOAT, {2, 0}), {0x1000}, "cache_desc.shape[1] = 0"},
      {"negative dim", MakeDesc(1, ge::DT_FLOAT, {2, 3, -4}), {0x1000}, "cache_desc.shape[2] = -4"},
      {"negative first dim", MakeDesc(1, ge::DT_FLOAT, {-1}), {0x1000}, "cache_desc.shape[0] = -1"},
      {"undefined dtype (default)", MakeDesc(1, ge::DT_UNDEFINED, {2, 2}), {0x1000}, "data_type = 28"},
      {"reserved dtype 5", MakeDesc(1, static_cast<ge::DataType>(5), {2, 2}), {0x1000}, "data_type = 5"},
      {"dtype DT_MAX", MakeDesc(1, ge::DT_MAX, {2, 2}), {0x1000}, "data_type = 42"},
      {"element count overflow", MakeDesc(1, ge::DT_INT8, {kMax, 3}), {0x1000}, "element count"},
      {"element count overflow 3 dims", MakeDesc(1, ge::DT_INT8, {int64_t{1} << 32, int64_t{1} << 32, 2}), {0x1000},
       "element count"},
      {"byte size overflows uint64", MakeDesc(1, ge::DT_INT32, {int64_t{1} << 62, 2}), {0x1000}, "overflows int64"},
      {"byte size 2^63 overflows int64", MakeDesc(1, ge::DT_INT64, {int64_t{1} << 60}), {0x1000}, "overflows int64"},
      {"byte size 2^63 float", MakeDesc(1, ge::DT_FLOAT, {int64_t{1} << 61}), {0x1000}, "overflows int64"},
      {"address wrap", MakeDesc(2, ge::DT_UINT8, {4, 16}), {0x1000, ~uint64_t{0} - 10}, "addrs[1]"},
      {"address end at 2^64", MakeDesc(1, ge::DT_UINT8, {4, 16}), {~uint64_t{0} - 63}, "wraps"},
  };
  for (const auto &c : cases) {
    dd::CacheGeometry g;
    std::string err;
    EXPECT_EQ(dd::ComputeGeometry(c.desc, c.addrs, &g, &err), LLM_PARAM_INVALID) << c.name;
    EXPECT_NE(err.find(c.message_part), std::string::npos) << c.name << ": got \"" << err << "\"";
    EXPECT_EQ(err.find('\n'), std::string::npos) << c.name;
    // error may be null
    EXPECT_EQ(dd::ComputeGeometry(c.desc, c.addrs, &g, nullptr), LLM_PARAM_INVALID) << c.name;
  }
  // Boundaries that are accepted.
  dd::CacheGeometry g;
  std::string err;
  EXPECT_EQ(dd::ComputeGeometry(MakeDesc(1, ge::DT_FLOAT, std::vector<int64_t>(31, 1)), {0x1000}, &g, &err),
            LLM_SUCCESS)
      << err;
  EXPECT_EQ(g.tensor_size, 4u);
  EXPECT_EQ(dd::ComputeGeometry(MakeDesc(1, ge::DT_UINT8, {4, 16}), {~uint64_t{0} - 64}, &g, &err), LLM_SUCCESS)
      << err;
  EXPECT_EQ(dd::ComputeGeometry(MakeDesc(1, ge::DT_UINT8, {4, 16}), {0x1000}, nullptr, &err), LLM_PARAM_INVALID);
}

// ===========================================================================
// (2) Naive reference model

// A simulated cache: geometry plus one byte array per tensor. Tensor base
// addresses are spread apart with gaps and in a permuted order, so a range
// that leaves its tensor, or an assumption of contiguity, is detected.
struct SimCache {
  dd::CacheGeometry geo;
  std::vector<std::vector<uint8_t>> mem;

  // Index of the tensor holding [addr, addr + len) entirely, or -1.
  int Find(uint64_t addr, uint64_t len) const {
    for (size_t i = 0; i < geo.addrs.size(); ++i) {
      const uint64_t base = geo.addrs[i];
      if (addr >= base && addr - base <= geo.tensor_size && len <= geo.tensor_size - (addr - base)) {
        return static_cast<int>(i);
      }
    }
    return -1;
  }
};

SimCache MakeSim(const CacheDesc &desc, uint64_t base, std::mt19937_64 &rng, bool shuffle) {
  SimCache s;
  // Provisional geometry just for the size, then real addresses.
  dd::CacheGeometry probe;
  std::string err;
  std::vector<uint64_t> tmp(desc.num_tensors, 0x1000);
  EXPECT_EQ(dd::ComputeGeometry(desc, tmp, &probe, &err), LLM_SUCCESS) << err;
  const uint64_t spacing = (probe.tensor_size + 64 + 63) / 64 * 64;
  std::vector<uint64_t> slot(desc.num_tensors);
  std::iota(slot.begin(), slot.end(), 0);
  if (shuffle) {
    std::shuffle(slot.begin(), slot.end(), rng);
  } else {
    std::reverse(slot.begin(), slot.end());
  }
  std::vector<uint64_t> addrs(desc.num_tensors);
  for (uint32_t i = 0; i < desc.num_tensors; ++i) addrs[i] = base + slot[i] * spacing;
  EXPECT_EQ(dd::ComputeGeometry(desc, addrs, &s.geo, &err), LLM_SUCCESS) << err;
  s.mem.resize(desc.num_tensors);
  for (auto &t : s.mem) {
    t.resize(probe.tensor_size);
    for (auto &b : t) b = static_cast<uint8_t>(rng());
  }
  return s;
}

enum class Op { kPullCache, kPullBlocks, kPushCache, kPushBlocks };

const char *OpName(Op op) {
  switch (op) {
    case Op::kPullCache: return "PullKvCache";
    case Op::kPullBlocks: return "PullKvBlocks";
    case Op::kPushCache: return "PushKvCache";
    case Op::kPushBlocks: return "PushKvBlocks";
  }
  return "?";
}

bool IsPull(Op op) { return op == Op::kPullCache || op == Op::kPullBlocks; }
bool IsBlocks(Op op) { return op == Op::kPullBlocks || op == Op::kPushBlocks; }

struct Case {
  Op op = Op::kPullCache;
  CacheDesc local_desc;
  CacheDesc remote_desc;
  uint32_t caller_num_tensors = 0;  // push only
  uint32_t local_batch = 0;
  uint32_t remote_batch = 0;
  int64_t size = -1;
  Blocks src_blocks;  // pull: remote indices; push: local indices
  Blocks dst_blocks;  // pull: local indices; push: remote indices
  KvCacheExtParam ext = Ext();
};

std::string Describe(const Case &c) {
  std::ostringstream os;
  auto list = [&os](const Blocks &b) {
    os << "[";
    for (size_t i = 0; i < b.size() && i < 24; ++i) os << (i ? "," : "") << b[i];
    if (b.size() > 24) os << ",...(" << b.size() << ")";
    os << "]";
  };
  auto shape = [&os](const CacheDesc &d) {
    os << d.num_tensors << "x{";
    for (size_t i = 0; i < d.shape.size(); ++i) os << (i ? "," : "") << d.shape[i];
    os << "} dt" << d.data_type;
  };
  os << OpName(c.op) << " local=";
  shape(c.local_desc);
  os << " remote=";
  shape(c.remote_desc);
  os << " ext=(" << c.ext.src_layer_range.first << "," << c.ext.src_layer_range.second << ")/("
     << c.ext.dst_layer_range.first << "," << c.ext.dst_layer_range.second << ") n="
     << int(c.ext.tensor_num_per_layer);
  if (!IsPull(c.op)) os << " caller_T=" << c.caller_num_tensors;
  if (IsBlocks(c.op)) {
    os << " src=";
    list(c.src_blocks);
    os << " dst=";
    list(c.dst_blocks);
  } else {
    os << " local_batch=" << c.local_batch << " remote_batch=" << c.remote_batch << " size=" << c.size;
  }
  return os.str();
}

// --- reference tensor selection, written from spec 2.8.2-2.8.4 -------------

bool RangeOk(std::pair<int32_t, int32_t> r) { return r.first >= -1 && r.second >= -1 && r.first <= r.second; }
bool RangeDefault(std::pair<int32_t, int32_t> r) { return r.first == -1 && r.second == -1; }

// Pull: pairs are (remote src tensor, local dst tensor).
bool RefSelectPull(int64_t local_t, int64_t remote_t, const KvCacheExtParam &e, Pairs *pairs) {
  pairs->clear();
  const auto src = e.src_layer_range, dst = e.dst_layer_range;
  const int64_t n = e.tensor_num_per_layer;
  if (!RangeOk(src) || !RangeOk(dst) || n <= 0) return false;
  if ((!RangeDefault(src) || !RangeDefault(dst)) && (local_t % n != 0 || remote_t % n != 0)) return false;
  if (src.first >= 0 && dst.first >= 0) {
    const int64_t remote_max_layer = remote_t / n - 1, local_max_layer = local_t / n - 1;
    if (src.second > remote_max_layer || dst.second > local_max_layer) return false;
    if ((src.second - src.first + 1) * n != (dst.second - dst.first + 1) * n) return false;  // tensor counts
    for (int64_t sl = src.first, dl = dst.first; sl <= src.second; ++sl, ++dl) {
      for (int64_t k = 0; k < n; ++k) pairs->emplace_back(sl * n + k, dl * n + k);
    }
    return true;
  }
  if (local_t != remote_t) return false;
  for (int64_t i = 0; i < local_t; ++i) pairs->emplace_back(i, i);
  return true;
}

// Push: pairs are (local src tensor, remote dst tensor), layer by layer.
bool RefSelectPush(int64_t local_t, int64_t caller_t, int64_t remote_t, const KvCacheExtParam &e, Pairs *pairs) {
  pairs->clear();
  const auto src = e.src_layer_range, dst = e.dst_layer_range;
  const int64_t n = e.tensor_num_per_layer;
  if (!RangeOk(src) || !RangeOk(dst) || n <= 0) return false;
  if (int64_t{src.second} - src.first != int64_t{dst.second} - dst.first) return false;
  if ((!RangeDefault(src) || !RangeDefault(dst)) && (local_t % n != 0 || remote_t % n != 0)) return false;
  std::vector<std::pair<int64_t, int64_t>> layers;  // (src layer, dst layer)
  if (src.first >= 0 && dst.first >= 0) {
    if (src.second > local_t / n - 1 || dst.second > remote_t / n - 1) return false;
    for (int64_t l = 0; l <= src.second - src.first; ++l) layers.emplace_back(src.first + l, dst.first + l);
  } else {
    if (caller_t <= 0) return false;
    // 2.8.3: max_layer = T/n - 1 if divisible, else T/n (a partial last layer,
    // which fails the divisibility check); T < n gives the single layer 0.
    const int64_t max_layer = caller_t % n == 0 ? caller_t / n - 1 : caller_t / n;
    if (caller_t % n != 0) return false;
    for (int64_t l = 0; l <= max_layer; ++l) layers.emplace_back(l, l);
    for (const auto &[sl, dl] : layers) {
      if ((sl + 1) * n > local_t || (dl + 1) * n > remote_t) return false;  // layer out of range
    }
  }
  for (const auto &[sl, dl] : layers) {
    for (int64_t k = 0; k < n; ++k) pairs->emplace_back(sl * n + k, dl * n + k);
  }
  return true;
}

// Applies the naive semantics to (local, remote); returns whether the call is valid.
bool RefApply(const Case &c, SimCache &local, SimCache &remote, Pairs *pairs_out) {
  Pairs pairs;
  const bool sel_ok = IsPull(c.op)
                          ? RefSelectPull(local.geo.num_tensors, remote.geo.num_tensors, c.ext, &pairs)
                          : RefSelectPush(local.geo.num_tensors, c.caller_num_tensors, remote.geo.num_tensors, c.ext,
                                          &pairs);
  if (!sel_ok) return false;
  if (local.geo.stride != remote.geo.stride || local.geo.stride == 0) return false;
  const uint64_t stride = local.geo.stride;
  SimCache &src = IsPull(c.op) ? remote : local;
  SimCache &dst = IsPull(c.op) ? local : remote;
  if (!IsBlocks(c.op)) {
    if (c.op == Op::kPullCache) {
      if (c.size == 0 || c.size < -1) return false;
      if (c.size > 0 && static_cast<uint64_t>(c.size) > stride) return false;
    } else if (c.size != -1) {
      return false;
    }
    if (c.local_batch >= local.geo.row_count || c.remote_batch >= remote.geo.row_count) return false;
    const uint64_t len = c.size > 0 ? static_cast<uint64_t>(c.size) : stride;
    const uint64_t src_row = IsPull(c.op) ? c.remote_batch : c.local_batch;
    const uint64_t dst_row = IsPull(c.op) ? c.local_batch : c.remote_batch;
    for (const auto &[s, d] : pairs) {
      for (uint64_t b = 0; b < len; ++b) dst.mem[d][dst_row * stride + b] = src.mem[s][src_row * stride + b];
    }
  } else {
    if (c.src_blocks.empty() || c.src_blocks.size() != c.dst_blocks.size()) return false;
    for (size_t k = 0; k < c.src_blocks.size(); ++k) {
      if (c.src_blocks[k] >= src.geo.row_count || c.dst_blocks[k] >= dst.geo.row_count) return false;
    }
    for (size_t k = 0; k < c.src_blocks.size(); ++k) {  // one block at a time, in list order
      for (const auto &[s, d] : pairs) {
        for (uint64_t b = 0; b < stride; ++b) {
          dst.mem[d][c.dst_blocks[k] * stride + b] = src.mem[s][c.src_blocks[k] * stride + b];
        }
      }
    }
  }
  *pairs_out = pairs;
  return true;
}

// Applies a plan's expanded ranges; fails if a range leaves its tensor.
::testing::AssertionResult ApplyPlan(const dd::TransferPlan &plan, bool pull, SimCache &local, SimCache &remote) {
  std::vector<dd::CopyRange> ranges;
  plan.Expand(&ranges);
  if (ranges.size() != plan.RangeCount()) return ::testing::AssertionFailure() << "Expand size != RangeCount";
  for (const auto &r : ranges) {
    if (r.len == 0) return ::testing::AssertionFailure() << "zero-length range";
    const int li = local.Find(r.local_addr, r.len);
    const int ri = remote.Find(r.remote_addr, r.len);
    if (li < 0 || ri < 0) {
      return ::testing::AssertionFailure() << "range outside its tensor: local 0x" << std::hex << r.local_addr
                                           << " remote 0x" << r.remote_addr << std::dec << " len " << r.len;
    }
    uint8_t *lp = local.mem[li].data() + (r.local_addr - local.geo.addrs[li]);
    uint8_t *rp = remote.mem[ri].data() + (r.remote_addr - remote.geo.addrs[ri]);
    if (pull) {
      std::memcpy(lp, rp, r.len);
    } else {
      std::memcpy(rp, lp, r.len);
    }
  }
  return ::testing::AssertionSuccess();
}

// Checks that the runs decompose into exactly the block list (in order) and
// that no two neighbouring runs could have been merged.
::testing::AssertionResult CheckBlockRuns(const Case &c, const dd::TransferPlan &plan, uint64_t stride) {
  const bool pull = IsPull(c.op);
  Blocks src, dst;
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    const dd::Run &r = plan.runs[i];
    const uint64_t src_off = pull ? r.remote_offset : r.local_offset;
    const uint64_t dst_off = pull ? r.local_offset : r.remote_offset;
    if (r.len == 0 || r.len % stride != 0 || src_off % stride != 0 || dst_off % stride != 0) {
      return ::testing::AssertionFailure() << "run " << i << " not block aligned";
    }
    for (uint64_t j = 0; j < r.len / stride; ++j) {
      src.push_back(src_off / stride + j);
      dst.push_back(dst_off / stride + j);
    }
    if (i + 1 < plan.runs.size()) {
      const dd::Run &next = plan.runs[i + 1];
      if (r.local_offset + r.len == next.local_offset && r.remote_offset + r.len == next.remote_offset) {
        return ::testing::AssertionFailure() << "runs " << i << " and " << i + 1 << " are not maximal";
      }
    }
  }
  if (src != c.src_blocks || dst != c.dst_blocks) {
    return ::testing::AssertionFailure() << "runs do not reproduce the block lists";
  }
  return ::testing::AssertionSuccess();
}

Status CallPlanner(const Case &c, const SimCache &local, const SimCache &remote, dd::TransferPlan *plan,
                   std::string *err) {
  switch (c.op) {
    case Op::kPullCache:
      return dd::PlanPullCache(local.geo, remote.geo, c.remote_batch, c.local_batch, c.size, c.ext, plan, err);
    case Op::kPullBlocks:
      return dd::PlanPullBlocks(local.geo, remote.geo, c.src_blocks, c.dst_blocks, c.ext, plan, err);
    case Op::kPushCache:
      return dd::PlanPushCache(local.geo, c.caller_num_tensors, remote.geo, c.local_batch, c.remote_batch, c.size,
                               c.ext, plan, err);
    case Op::kPushBlocks:
      return dd::PlanPushBlocks(local.geo, c.caller_num_tensors, remote.geo, c.src_blocks, c.dst_blocks, c.ext, plan,
                                err);
  }
  return llm_datadist::LLM_FAILED;
}

// Runs one case through the planner and the reference model and compares.
::testing::AssertionResult RunCase(const Case &c, uint64_t seed, bool shuffle_addrs, bool *was_valid = nullptr) {
  std::mt19937_64 rng(seed);
  SimCache local = MakeSim(c.local_desc, 0x100000, rng, shuffle_addrs);
  SimCache remote = MakeSim(c.remote_desc, 0x7f0000000000ULL, rng, shuffle_addrs);
  SimCache ref_local = local, ref_remote = remote;
  Pairs ref_pairs;
  const bool ref_ok = RefApply(c, ref_local, ref_remote, &ref_pairs);
  if (was_valid != nullptr) *was_valid = ref_ok;

  dd::TransferPlan plan;
  plan.runs.push_back(dd::Run{1, 2, 3});  // stale content must be cleared
  std::string err;
  const Status st = CallPlanner(c, local, remote, &plan, &err);
  if (st != (ref_ok ? LLM_SUCCESS : LLM_PARAM_INVALID)) {
    return ::testing::AssertionFailure() << Describe(c) << ": status 0x" << std::hex << st << std::dec
                                         << ", reference says " << (ref_ok ? "valid" : "invalid") << " (" << err
                                         << ")";
  }
  if (!ref_ok) {
    if (err.empty() || err.find('\n') != std::string::npos) {
      return ::testing::AssertionFailure() << Describe(c) << ": bad error message \"" << err << "\"";
    }
    if (!plan.runs.empty() || !plan.tensor_pairs.empty()) {
      return ::testing::AssertionFailure() << Describe(c) << ": plan not empty after failure";
    }
    return ::testing::AssertionSuccess();
  }
  // Tensor pairs must be the reference selection, in order.
  const bool pull = IsPull(c.op);
  if (plan.tensor_pairs.size() != ref_pairs.size()) {
    return ::testing::AssertionFailure() << Describe(c) << ": " << plan.tensor_pairs.size() << " tensor pairs, expected "
                                         << ref_pairs.size();
  }
  for (size_t i = 0; i < ref_pairs.size(); ++i) {
    const uint32_t li = pull ? ref_pairs[i].second : ref_pairs[i].first;
    const uint32_t ri = pull ? ref_pairs[i].first : ref_pairs[i].second;
    if (plan.tensor_pairs[i] != std::make_pair(local.geo.addrs[li], remote.geo.addrs[ri])) {
      return ::testing::AssertionFailure() << Describe(c) << ": tensor pair " << i << " differs";
    }
  }
  const uint64_t stride = local.geo.stride;
  if (IsBlocks(c.op)) {
    auto r = CheckBlockRuns(c, plan, stride);
    if (!r) return ::testing::AssertionFailure() << Describe(c) << ": " << r.message();
    if (plan.TotalBytes() != c.src_blocks.size() * stride * ref_pairs.size()) {
      return ::testing::AssertionFailure() << Describe(c) << ": TotalBytes " << plan.TotalBytes();
    }
  } else {
    const uint64_t len = c.size > 0 ? static_cast<uint64_t>(c.size) : stride;
    const dd::Run expect{uint64_t{c.local_batch} * stride, uint64_t{c.remote_batch} * stride, len};
    if (plan.runs.size() != 1 || plan.runs[0].local_offset != expect.local_offset ||
        plan.runs[0].remote_offset != expect.remote_offset || plan.runs[0].len != expect.len) {
      return ::testing::AssertionFailure() << Describe(c) << ": unexpected run list";
    }
    if (plan.TotalBytes() != len * ref_pairs.size()) {
      return ::testing::AssertionFailure() << Describe(c) << ": TotalBytes " << plan.TotalBytes();
    }
  }
  if (plan.RangeCount() != plan.tensor_pairs.size() * plan.runs.size()) {
    return ::testing::AssertionFailure() << Describe(c) << ": RangeCount";
  }
  auto applied = ApplyPlan(plan, pull, local, remote);
  if (!applied) return ::testing::AssertionFailure() << Describe(c) << ": " << applied.message();
  if (local.mem != ref_local.mem || remote.mem != ref_remote.mem) {
    return ::testing::AssertionFailure() << Describe(c) << ": bytes differ from the reference model";
  }
  return ::testing::AssertionSuccess();
}

CacheDesc U8(uint32_t tensors, int64_t rows, int64_t row_bytes) {
  return MakeDesc(tensors, ge::DT_UINT8, {rows, row_bytes});
}

// All block lists of length 0..max_len over values 0..values-1.
std::vector<Blocks> AllLists(size_t max_len, uint64_t values) {
  std::vector<Blocks> out{{}};
  std::vector<Blocks> frontier{{}};
  for (size_t len = 1; len <= max_len; ++len) {
    std::vector<Blocks> next;
    for (const auto &b : frontier) {
      for (uint64_t v = 0; v < values; ++v) {
        Blocks x = b;
        x.push_back(v);
        next.push_back(x);
      }
    }
    out.insert(out.end(), next.begin(), next.end());
    frontier = std::move(next);
  }
  return out;
}

// --- self-test of the harness: it must be able to fail ----------------------

TEST(ReferenceModel, HarnessDetectsWrongPlans) {
  std::mt19937_64 rng(1);
  Case c;
  c.op = Op::kPullBlocks;
  c.local_desc = U8(2, 4, 8);
  c.remote_desc = U8(2, 4, 8);
  c.src_blocks = {0, 1, 3};
  c.dst_blocks = {1, 2, 0};
  ASSERT_TRUE(RunCase(c, 7, true));

  SimCache local = MakeSim(c.local_desc, 0x100000, rng, true);
  SimCache remote = MakeSim(c.remote_desc, 0x7f0000000000ULL, rng, true);
  dd::TransferPlan plan;
  std::string err;
  ASSERT_EQ(dd::PlanPullBlocks(local.geo, remote.geo, c.src_blocks, c.dst_blocks, c.ext, &plan, &err), LLM_SUCCESS);
  ASSERT_TRUE(CheckBlockRuns(c, plan, 8));
  // A non-maximal split is reported.
  dd::TransferPlan split = plan;
  split.runs = {{8, 0, 8}, {16, 8, 8}, {0, 24, 8}};
  EXPECT_FALSE(CheckBlockRuns(c, split, 8));
  // A run that overruns the tensor is reported.
  dd::TransferPlan overrun = plan;
  overrun.runs.push_back({24, 24, 16});
  EXPECT_FALSE(ApplyPlan(overrun, true, local, remote));
  // A wrong byte result is detected by comparing with the reference.
  SimCache ref_local = local, ref_remote = remote;
  Pairs pairs;
  ASSERT_TRUE(RefApply(c, ref_local, ref_remote, &pairs));
  dd::TransferPlan wrong = plan;
  wrong.runs[0].remote_offset += 8;
  ASSERT_TRUE(ApplyPlan(wrong, true, local, remote));
  EXPECT_NE(local.mem, ref_local.mem);
}

// --- exhaustive ---------------------------------------------------------------

// Every ext_param over small values, every tensor count: the planner's
// selection must equal the reference selection (validity and pairs).
TEST(ReferenceModel, ExhaustiveTensorSelection) {
  const std::vector<int32_t> values = {-2, -1, 0, 1, 2, 3, 4};
  std::vector<std::pair<int32_t, int32_t>> ranges;
  for (int32_t a : values) {
    for (int32_t b : values) ranges.emplace_back(a, b);
  }
  size_t valid_pull = 0, valid_push = 0, total = 0;
  Pairs got, want;
  std::string err;
  for (uint8_t n = 0; n <= 4; ++n) {
    for (const auto &src : ranges) {
      for (const auto &dst : ranges) {
        const KvCacheExtParam e = Ext(src, dst, n);
        for (uint32_t lt = 1; lt <= 8; ++lt) {
          for (uint32_t rt = 1; rt <= 8; ++rt) {
            ++total;
            const bool ok = RefSelectPull(lt, rt, e, &want);
            const Status st = dd::SelectPullTensors(lt, rt, e, &got, &err);
            ASSERT_EQ(st, ok ? LLM_SUCCESS : LLM_PARAM_INVALID)
                << "pull lt=" << lt << " rt=" << rt << " ext=(" << src.first << "," << src.second << ")/("
                << dst.first << "," << dst.second << ") n=" << int(n) << ": " << err;
            if (ok) {
              ASSERT_EQ(got, want);
              ++valid_pull;
            }
            for (uint32_t caller = 0; caller <= 9; ++caller) {
              const bool pok = RefSelectPush(lt, caller, rt, e, &want);
              const Status pst = dd::SelectPushTensors(lt, caller, rt, e, &got, &err);
              ASSERT_EQ(pst, pok ? LLM_SUCCESS : LLM_PARAM_INVALID)
                  << "push lt=" << lt << " caller=" << caller << " rt=" << rt << " ext=(" << src.first << ","
                  << src.second << ")/(" << dst.first << "," << dst.second << ") n=" << int(n) << ": " << err;
              if (pok) {
                ASSERT_EQ(got, want);
                ++valid_push;
              }
            }
          }
        }
      }
    }
  }
  // Sanity: both outcomes are well represented.
  EXPECT_GT(valid_pull, 5000u);
  EXPECT_GT(valid_push, 10000u);
  EXPECT_LT(valid_pull, total);
}

// PullKvCache / PushKvCache: every batch index pair and size over small row counts.
TEST(ReferenceModel, ExhaustiveCacheRows) {
  struct Config {
    uint32_t local_t, remote_t;
    KvCacheExtParam ext;
    std::vector<uint32_t> callers;
  };
  const std::vector<Config> configs = {
      {2, 2, Ext(), {0, 1, 2, 3}},
      {4, 6, Ext({1, 2}, {0, 1}, 2), {0}},
      {6, 4, Ext({0, 1}, {1, 2}, 2), {0}},
      {3, 5, Ext({2, 2}, {4, 4}, 1), {0}},
      {4, 4, Ext({-1, -1}, {-1, -1}, 1), {2, 4}},
      {6, 6, Ext({-1, -1}, {-1, -1}, 3), {3, 6}},
  };
  const uint64_t row_bytes = 3;
  size_t cases = 0, valid = 0;
  for (const auto &cfg : configs) {
    for (int64_t lrows = 1; lrows <= 4; ++lrows) {
      for (int64_t rrows = 1; rrows <= 4; ++rrows) {
        for (uint32_t lb = 0; lb <= 4; ++lb) {
          for (uint32_t rb = 0; rb <= 4; ++rb) {
            for (int64_t size : {-3, -2, -1, 0, 1, 2, 3, 4, 1000}) {
              Case c;
              c.local_desc = U8(cfg.local_t, lrows, row_bytes);
              c.remote_desc = U8(cfg.remote_t, rrows, row_bytes);
              c.local_batch = lb;
              c.remote_batch = rb;
              c.size = size;
              c.ext = cfg.ext;
              c.op = Op::kPullCache;
              bool ok = false;
              ASSERT_TRUE(RunCase(c, cases, false, &ok));
              ++cases;
              valid += ok;
              c.op = Op::kPushCache;
              for (uint32_t caller : cfg.callers) {
                c.caller_num_tensors = caller;
                ASSERT_TRUE(RunCase(c, cases, false, &ok));
                ++cases;
                valid += ok;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(valid, 1000u);
}

// *Blocks: every pair of block lists of length 0..3 over blocks 0..3, with row
// counts 3, 4 and 6 on each side (so some indices are out of range).
TEST(ReferenceModel, ExhaustiveBlockLists) {
  const std::vector<Blocks> lists = AllLists(3, 4);
  ASSERT_EQ(lists.size(), 85u);
  struct Config {
    uint32_t local_t, remote_t, caller;
    KvCacheExtParam ext;
  };
  const std::vector<Config> configs = {
      {2, 2, 2, Ext()},
      {6, 4, 0, Ext({1, 2}, {0, 1}, 2)},  // pull: remote 4 tensors (2 layers), local 6; push: local 6, remote 4
      {3, 3, 3, Ext({-1, -1}, {-1, -1}, 3)},
  };
  size_t cases = 0, valid = 0;
  for (const auto &cfg : configs) {
    for (int64_t lrows : {3, 4, 6}) {
      for (int64_t rrows : {3, 4, 6}) {
        for (const auto &src : lists) {
          for (const auto &dst : lists) {
            Case c;
            c.local_desc = U8(cfg.local_t, lrows, 2);
            c.remote_desc = U8(cfg.remote_t, rrows, 2);
            c.src_blocks = src;
            c.dst_blocks = dst;
            c.ext = cfg.ext;
            c.caller_num_tensors = cfg.caller;
            bool ok = false;
            for (Op op : {Op::kPullBlocks, Op::kPushBlocks}) {
              c.op = op;
              if (op == Op::kPullBlocks && cfg.ext.src_layer_range.first >= 0) {
                // pull reads src layers from the remote: swap tensor counts so the ranges fit
                c.local_desc.num_tensors = cfg.remote_t;
                c.remote_desc.num_tensors = cfg.local_t;
              } else {
                c.local_desc.num_tensors = cfg.local_t;
                c.remote_desc.num_tensors = cfg.remote_t;
              }
              ASSERT_TRUE(RunCase(c, cases, false, &ok));
              ++cases;
              valid += ok;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(valid, 30000u);
  EXPECT_LT(valid, cases);
}

// Layer structure: tensors per layer 1..4, 1..4 layers on each side, every
// explicit layer range over small values, with a few block lists and, for
// push, several caller tensor counts.
TEST(ReferenceModel, ExhaustiveLayers) {
  const std::vector<std::pair<Blocks, Blocks>> block_lists = {
      {{0, 1}, {2, 3}}, {{3}, {0}}, {{0, 1, 2}, {1, 2, 0}}, {{2, 3, 0, 1}, {0, 1, 2, 3}}};
  std::vector<std::pair<int32_t, int32_t>> ranges = {{-1, -1}};
  for (int32_t a = -1; a <= 4; ++a) {
    for (int32_t b = std::max(a, 0); b <= 4; ++b) ranges.emplace_back(a, b);
  }
  ranges.emplace_back(-2, 0);
  ranges.emplace_back(2, 1);
  size_t cases = 0, valid = 0;
  for (uint8_t n = 1; n <= 4; ++n) {
    for (uint32_t llayers = 1; llayers <= 4; ++llayers) {
      for (uint32_t rlayers = 1; rlayers <= 4; ++rlayers) {
        for (const auto &src : ranges) {
          for (const auto &dst : ranges) {
            const size_t bl = cases % block_lists.size();
            Case c;
            c.local_desc = U8(n * llayers, 4, 2);
            c.remote_desc = U8(n * rlayers, 4, 2);
            c.ext = Ext(src, dst, n);
            c.src_blocks = block_lists[bl].first;
            c.dst_blocks = block_lists[bl].second;
            bool ok = false;
            c.op = Op::kPullBlocks;
            ASSERT_TRUE(RunCase(c, cases, false, &ok));
            ++cases;
            valid += ok;
            c.op = Op::kPushBlocks;
            const bool explicit_ranges = src.first >= 0 && dst.first >= 0;
            const std::vector<uint32_t> callers =
                explicit_ranges ? std::vector<uint32_t>{0}
                                : std::vector<uint32_t>{0, 1, n, 2u * n, 3u * n, 4u * n, n * llayers + 1};
            for (uint32_t caller : callers) {
              c.caller_num_tensors = caller;
              ASSERT_TRUE(RunCase(c, cases, false, &ok));
              ++cases;
              valid += ok;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(valid, 5000u);
  EXPECT_LT(valid, cases);
}

// --- randomized -------------------------------------------------------------

struct DtypeChoice {
  ge::DataType dt;
  int64_t min_width;
};

Blocks RandomRunList(std::mt19937_64 &rng, size_t len, uint64_t rows, bool allow_oob) {
  Blocks out;
  std::uniform_int_distribution<int> pct(0, 99);
  while (out.size() < len) {
    uint64_t start = rng() % (allow_oob && pct(rng) < 3 ? rows + 2 : rows);
    size_t run = 1 + rng() % 8;
    for (size_t j = 0; j < run && out.size() < len; ++j) out.push_back(start + j);
  }
  return out;
}

void RandomBlockPair(std::mt19937_64 &rng, uint64_t src_rows, uint64_t dst_rows, Blocks *src, Blocks *dst) {
  std::uniform_int_distribution<int> pct(0, 99);
  const int kind = pct(rng);
  size_t len = 1 + rng() % 60;
  if (kind < 2) len = 0;
  const bool oob = pct(rng) < 10;
  // Build paired runs so that many consecutive pairs occur in both lists.
  src->clear();
  dst->clear();
  while (src->size() < len) {
    const uint64_t s0 = rng() % (oob ? src_rows + 2 : src_rows);
    const uint64_t d0 = rng() % (oob ? dst_rows + 2 : dst_rows);
    const size_t run = 1 + rng() % 10;
    const bool break_dst = pct(rng) < 15;  // consecutive in src only
    for (size_t j = 0; j < run && src->size() < len; ++j) {
      src->push_back(s0 + j);
      dst->push_back(break_dst ? d0 + 2 * j : d0 + j);
    }
  }
  if (!oob) {  // clip into range so most cases are valid
    for (auto &v : *src) v %= src_rows;
    for (auto &v : *dst) v %= dst_rows;
  }
  if (kind >= 2 && kind < 5) {  // length mismatch
    if (dst->empty() || pct(rng) < 50) {
      dst->push_back(0);
    } else {
      dst->pop_back();
    }
  }
  if (kind >= 5 && kind < 12) *dst = RandomRunList(rng, src->size(), dst_rows, oob);  // independent lists
  if (kind >= 12 && kind < 16 && !dst->empty()) {  // duplicate destinations
    for (size_t j = 1; j < dst->size(); j += 3) (*dst)[j] = (*dst)[j - 1];
  }
}

KvCacheExtParam RandomExt(std::mt19937_64 &rng, uint32_t n, uint32_t llayers, uint32_t rlayers, bool pull) {
  std::uniform_int_distribution<int> pct(0, 99);
  if (pct(rng) < 50) return Ext({-1, -1}, {-1, -1}, static_cast<uint8_t>(pct(rng) < 95 ? n : 1 + rng() % 5));
  // Source layers come from the remote for pull, from the local cache for push.
  const uint32_t src_layers = pull ? rlayers : llayers;
  const uint32_t dst_layers = pull ? llayers : rlayers;
  const uint32_t span = rng() % std::min(src_layers, dst_layers);
  const int32_t sa = static_cast<int32_t>(rng() % (src_layers - span));
  const int32_t da = static_cast<int32_t>(rng() % (dst_layers - span));
  KvCacheExtParam e = Ext({sa, sa + static_cast<int32_t>(span)}, {da, da + static_cast<int32_t>(span)},
                          static_cast<uint8_t>(n));
  const int t = pct(rng);
  if (t < 4) e.src_layer_range.second += 1;                 // maybe out of range / length mismatch
  else if (t < 7) e.dst_layer_range = {-1, -1};            // mixed explicit/default
  else if (t < 9) e.src_layer_range.first = -2;            // invalid
  else if (t < 11) e.tensor_num_per_layer = static_cast<uint8_t>(1 + rng() % 5);  // maybe not divisible
  else if (t < 12) e.tensor_num_per_layer = 0;             // invalid
  return e;
}

void RunRandomized(Op op, uint64_t seed, int count, size_t *valid_out) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pct(0, 99);
  const std::vector<DtypeChoice> dtypes = {{ge::DT_UINT8, 1},  {ge::DT_FLOAT16, 1}, {ge::DT_FLOAT, 1},
                                           {ge::DT_INT64, 1},  {ge::DT_INT4, 2},    {ge::DT_FLOAT6_E3M2, 4},
                                           {ge::DT_DUAL, 1},   {ge::DT_UINT1, 8}};
  size_t valid = 0;
  for (int i = 0; i < count; ++i) {
    const uint32_t n = 1 + rng() % 4;
    const uint32_t llayers = 1 + rng() % 4, rlayers = 1 + rng() % 4;
    const int64_t lrows = 1 + rng() % 40, rrows = pct(rng) < 30 ? lrows : 1 + rng() % 40;
    const DtypeChoice dc = dtypes[rng() % dtypes.size()];
    const int64_t width = dc.min_width * (1 + rng() % 4);
    const int64_t inner = 1 + rng() % 3;
    Case c;
    c.op = op;
    c.local_desc = MakeDesc(n * llayers, dc.dt, {lrows, width, inner});
    c.remote_desc = MakeDesc(n * rlayers, dc.dt, {rrows, width, inner});
    if (pct(rng) < 5) c.remote_desc.shape[1] += 1;  // row size mismatch
    if (pct(rng) < 5) c.local_desc.num_tensors += 1;  // not divisible / count mismatch
    if (pct(rng) < 30) c.remote_desc.num_tensors = c.local_desc.num_tensors;
    c.ext = RandomExt(rng, n, c.local_desc.num_tensors / n, c.remote_desc.num_tensors / n, IsPull(op));
    const int ct = pct(rng);
    c.caller_num_tensors = ct < 70   ? c.local_desc.num_tensors
                           : ct < 85 ? n * (1 + rng() % std::max<uint32_t>(1, llayers))
                           : ct < 90 ? 0
                                     : static_cast<uint32_t>(rng() % 20);
    if (IsBlocks(op)) {
      const uint64_t src_rows = IsPull(op) ? rrows : lrows;
      const uint64_t dst_rows = IsPull(op) ? lrows : rrows;
      RandomBlockPair(rng, src_rows, dst_rows, &c.src_blocks, &c.dst_blocks);
    } else {
      c.local_batch = static_cast<uint32_t>(rng() % (lrows + (pct(rng) < 5 ? 2 : 0)));
      c.remote_batch = static_cast<uint32_t>(rng() % (rrows + (pct(rng) < 5 ? 2 : 0)));
      const int s = pct(rng);
      c.size = s < 50 ? -1 : s < 90 ? 1 + static_cast<int64_t>(rng() % 40) : s < 95 ? 0 : -2;
    }
    bool ok = false;
    ASSERT_TRUE(RunCase(c, rng(), true, &ok)) << "seed " << seed << " case " << i;
    valid += ok;
  }
  *valid_out = valid;
}

TEST(ReferenceModel, RandomizedPullBlocks) {
  for (uint64_t seed : {11u, 12u, 13u}) {
    size_t valid = 0;
    RunRandomized(Op::kPullBlocks, seed, 3000, &valid);
    EXPECT_GT(valid, 600u) << "seed " << seed;
  }
}

TEST(ReferenceModel, RandomizedPushBlocks) {
  for (uint64_t seed : {21u, 22u, 23u}) {
    size_t valid = 0;
    RunRandomized(Op::kPushBlocks, seed, 3000, &valid);
    EXPECT_GT(valid, 600u) << "seed " << seed;
  }
}

TEST(ReferenceModel, RandomizedPullCache) {
  for (uint64_t seed : {31u, 32u}) {
    size_t valid = 0;
    RunRandomized(Op::kPullCache, seed, 3000, &valid);
    EXPECT_GT(valid, 300u) << "seed " << seed;
  }
}

TEST(ReferenceModel, RandomizedPushCache) {
  for (uint64_t seed : {41u, 42u}) {
    size_t valid = 0;
    RunRandomized(Op::kPushCache, seed, 3000, &valid);
    EXPECT_GT(valid, 300u) << "seed " << seed;
  }
}

// ===========================================================================
// Concrete plans (exact runs and bytes) for documented examples

TEST(Planner, MergesRunsConsecutiveInBothLists) {
  const auto local = Geo(2, 8, 16, 0x100000);
  const auto remote = Geo(2, 8, 16, 0x200000);
  dd::TransferPlan plan;
  std::string err;
  // src 0,1,2 -> dst 4,5,6 is one run; 5,6 -> 0,1 another; 7 -> 3 breaks (dst not consecutive with 1+1).
  ASSERT_EQ(dd::PlanPullBlocks(local, remote, {0, 1, 2, 5, 6, 7}, {4, 5, 6, 0, 1, 3}, Ext(), &plan, &err),
            LLM_SUCCESS)
      << err;
  ASSERT_EQ(plan.runs.size(), 3u);
  EXPECT_EQ(plan.runs[0].remote_offset, 0u);
  EXPECT_EQ(plan.runs[0].local_offset, 64u);
  EXPECT_EQ(plan.runs[0].len, 48u);
  EXPECT_EQ(plan.runs[1].remote_offset, 80u);
  EXPECT_EQ(plan.runs[1].local_offset, 0u);
  EXPECT_EQ(plan.runs[1].len, 32u);
  EXPECT_EQ(plan.runs[2].remote_offset, 112u);
  EXPECT_EQ(plan.runs[2].local_offset, 48u);
  EXPECT_EQ(plan.runs[2].len, 16u);
  ASSERT_EQ(plan.tensor_pairs.size(), 2u);
  EXPECT_EQ(plan.tensor_pairs[0], std::make_pair(local.addrs[0], remote.addrs[0]));
  EXPECT_EQ(plan.tensor_pairs[1], std::make_pair(local.addrs[1], remote.addrs[1]));
  EXPECT_EQ(plan.RangeCount(), 6u);
  EXPECT_EQ(plan.TotalBytes(), 2u * 6u * 16u);
  std::vector<dd::CopyRange> ranges = {{1, 2, 3}};  // Expand appends
  plan.Expand(&ranges);
  ASSERT_EQ(ranges.size(), 7u);
  EXPECT_EQ(ranges[1].local_addr, local.addrs[0] + 64);
  EXPECT_EQ(ranges[1].remote_addr, remote.addrs[0]);
  EXPECT_EQ(ranges[4].local_addr, local.addrs[1] + 64);  // tensor-pair-major
  EXPECT_EQ(ranges[6].len, 16u);
}

TEST(Planner, ReversedMappingFromDevGuide) {
  // {0,1,2,3} -> {3,2,1,0}: nothing merges, order preserved.
  const auto local = Geo(2, 4, 8, 0x100000);
  const auto remote = Geo(2, 4, 8, 0x200000);
  dd::TransferPlan plan;
  std::string err;
  ASSERT_EQ(dd::PlanPushBlocks(local, 2, remote, {0, 1, 2, 3}, {3, 2, 1, 0}, Ext(), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.runs.size(), 4u);
  for (uint64_t k = 0; k < 4; ++k) {
    EXPECT_EQ(plan.runs[k].local_offset, k * 8);
    EXPECT_EQ(plan.runs[k].remote_offset, (3 - k) * 8);
    EXPECT_EQ(plan.runs[k].len, 8u);
  }
}

TEST(Planner, DuplicateDestinationsAllowedLastWins) {
  Case c;
  c.op = Op::kPullBlocks;
  c.local_desc = U8(2, 4, 4);
  c.remote_desc = U8(2, 4, 4);
  c.src_blocks = {0, 1, 3};
  c.dst_blocks = {2, 2, 2};
  EXPECT_TRUE(RunCase(c, 99, true));
  // Check the winner explicitly: local block 2 ends up with remote block 3.
  std::mt19937_64 rng(5);
  SimCache local = MakeSim(c.local_desc, 0x100000, rng, false);
  SimCache remote = MakeSim(c.remote_desc, 0x200000, rng, false);
  dd::TransferPlan plan;
  std::string err;
  ASSERT_EQ(dd::PlanPullBlocks(local.geo, remote.geo, c.src_blocks, c.dst_blocks, Ext(), &plan, &err), LLM_SUCCESS);
  EXPECT_EQ(plan.runs.size(), 3u);
  ASSERT_TRUE(ApplyPlan(plan, true, local, remote));
  for (int t = 0; t < 2; ++t) {
    EXPECT_TRUE(std::equal(local.mem[t].begin() + 8, local.mem[t].begin() + 12, remote.mem[t].begin() + 12));
  }
}

TEST(Planner, PullCacheExactRunAndPartialSize) {
  const auto local = Geo(4, 8, 64, 0x100000);
  const auto remote = Geo(4, 6, 64, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  ASSERT_EQ(dd::PlanPullCache(local, remote, /*remote*/ 5, /*local*/ 7, 10, Ext(), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.runs.size(), 1u);
  EXPECT_EQ(plan.runs[0].local_offset, 7u * 64);
  EXPECT_EQ(plan.runs[0].remote_offset, 5u * 64);
  EXPECT_EQ(plan.runs[0].len, 10u);
  EXPECT_EQ(plan.TotalBytes(), 40u);
  ASSERT_EQ(dd::PlanPullCache(local, remote, 0, 0, 64, Ext(), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.runs[0].len, 64u);
  ASSERT_EQ(dd::PlanPullCache(local, remote, 0, 0, -1, Ext(), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.runs[0].len, 64u);
}

TEST(Planner, LayerRangesSelectSubsetsWithDifferentTensorCounts) {
  // Pull layers 3..4 of a 10-tensor remote into layers 0..1 of a 4-tensor local cache.
  const auto local = Geo(4, 4, 32, 0x100000);
  const auto remote = Geo(10, 4, 32, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  ASSERT_EQ(dd::PlanPullBlocks(local, remote, {1}, {2}, Ext({3, 4}, {0, 1}), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.tensor_pairs.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(plan.tensor_pairs[i], std::make_pair(local.addrs[i], remote.addrs[6 + i]));
  }
  // Push layer 1 of the 4-tensor local cache into layer 4 of the remote (layer-major pairs).
  ASSERT_EQ(dd::PlanPushCache(local, 4, remote, 1, 2, -1, Ext({1, 1}, {4, 4}), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.tensor_pairs.size(), 2u);
  EXPECT_EQ(plan.tensor_pairs[0], std::make_pair(local.addrs[2], remote.addrs[8]));
  EXPECT_EQ(plan.tensor_pairs[1], std::make_pair(local.addrs[3], remote.addrs[9]));
  EXPECT_EQ(plan.runs[0].local_offset, 32u);
  EXPECT_EQ(plan.runs[0].remote_offset, 64u);
  // Push default: caller_num_tensors 4 pushes layers 0..1 of a 10-tensor local cache.
  ASSERT_EQ(dd::PlanPushBlocks(remote, 4, local, {0}, {3}, Ext(), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.tensor_pairs.size(), 4u);
  EXPECT_EQ(plan.tensor_pairs[3], std::make_pair(remote.addrs[3], local.addrs[3]));
}

// ===========================================================================
// (3) Every LLM_PARAM_INVALID case

void ExpectInvalid(const char *name, Status st, const std::string &err, const dd::TransferPlan &plan,
                   const char *part) {
  EXPECT_EQ(st, LLM_PARAM_INVALID) << name;
  EXPECT_NE(err.find(part), std::string::npos) << name << ": got \"" << err << "\"";
  EXPECT_EQ(err.find('\n'), std::string::npos) << name;
  EXPECT_TRUE(plan.runs.empty() && plan.tensor_pairs.empty()) << name;
}

TEST(PlannerInvalid, SpecExamplesTenTensors) {
  const auto ten = Geo(10, 4, 16, 0x100000);
  const auto ten_r = Geo(10, 4, 16, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  // n = 7 and n = 17 do not divide 10 tensors.
  for (uint8_t n : {7, 17}) {
    const auto e = Ext({0, 0}, {0, 0}, n);
    Status st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, e, &plan, &err);
    ExpectInvalid("pull n", st, err, plan, "not divisible by ext_param.tensor_num_per_layer");
    st = dd::PlanPullBlocks(ten, ten_r, {0}, {0}, e, &plan, &err);
    ExpectInvalid("pull blocks n", st, err, plan, "not divisible");
    st = dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, e, &plan, &err);
    ExpectInvalid("push n", st, err, plan, "not divisible");
    st = dd::PlanPushBlocks(ten, 10, ten_r, {0}, {0}, e, &plan, &err);
    ExpectInvalid("push blocks n", st, err, plan, "not divisible");
    // Push with default ranges: caller_num_tensors 10 is not a whole number of layers.
    st = dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, Ext({-1, -1}, {-1, -1}, n), &plan, &err);
    ExpectInvalid("push default n", st, err, plan, "src_cache.cache_desc.num_tensors = 10 is not divisible");
  }
  // But n = 2, 5 and 10 divide 10.
  for (uint8_t n : {2, 5, 10}) {
    EXPECT_EQ(dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({0, 0}, {0, 0}, n), &plan, &err), LLM_SUCCESS) << err;
    EXPECT_EQ(plan.tensor_pairs.size(), n);
    EXPECT_EQ(dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, Ext({-1, -1}, {-1, -1}, n), &plan, &err), LLM_SUCCESS)
        << err;
    EXPECT_EQ(plan.tensor_pairs.size(), 10u);
  }
  // Pull with default ranges does not look at n.
  EXPECT_EQ(dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({-1, -1}, {-1, -1}, 7), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.tensor_pairs.size(), 10u);

  // (0,1)/(0,3): lengths differ.
  Status st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({0, 1}, {0, 3}), &plan, &err);
  ExpectInvalid("pull (0,1)/(0,3)", st, err, plan, "tensor count mismatch");
  st = dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, Ext({0, 1}, {0, 3}), &plan, &err);
  ExpectInvalid("push (0,1)/(0,3)", st, err, plan, "spans 2 layers but ext_param.dst_layer_range (0, 3) spans 4");
  st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({0, 3}, {0, 1}), &plan, &err);
  ExpectInvalid("pull (0,3)/(0,1)", st, err, plan, "selects 8 remote tensors");
  // (4,5)/(0,1): layer 5 does not exist (max layer 4).
  st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({4, 5}, {0, 1}), &plan, &err);
  ExpectInvalid("pull (4,5)/(0,1)", st, err, plan, "src_layer_range.second = 5 is out of range: max layer of the remote cache is 4");
  st = dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, Ext({4, 5}, {0, 1}), &plan, &err);
  ExpectInvalid("push (4,5)/(0,1)", st, err, plan, "max layer of the local cache is 4");
  st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({0, 1}, {4, 5}), &plan, &err);
  ExpectInvalid("pull (0,1)/(4,5)", st, err, plan, "max layer of the local cache is 4");
  st = dd::PlanPushBlocks(ten, 10, ten_r, {0}, {0}, Ext({0, 1}, {4, 5}), &plan, &err);
  ExpectInvalid("push (0,1)/(4,5)", st, err, plan, "max layer of the remote cache is 4");
  EXPECT_EQ(dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({3, 4}, {0, 1}), &plan, &err), LLM_SUCCESS) << err;
  // (-2,0) on either side.
  st = dd::PlanPullCache(ten, ten_r, 0, 0, -1, Ext({-2, 0}, {0, 2}), &plan, &err);
  ExpectInvalid("pull (-2,0) src", st, err, plan, "ext_param.src_layer_range.first = -2");
  st = dd::PlanPushCache(ten, 10, ten_r, 0, 0, -1, Ext({0, 2}, {-2, 0}), &plan, &err);
  ExpectInvalid("push (-2,0) dst", st, err, plan, "ext_param.dst_layer_range.first = -2");
}

TEST(PlannerInvalid, ExtParamRules) {
  const auto g = Geo(4, 4, 16, 0x100000);
  const auto r = Geo(4, 4, 16, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  Status st = dd::PlanPullCache(g, r, 0, 0, -1, Ext({2, 1}, {0, 0}), &plan, &err);
  ExpectInvalid("first > second", st, err, plan, "(2, 1) is invalid, first must be <= second");
  st = dd::PlanPullCache(g, r, 0, 0, -1, Ext({0, 0}, {-1, -3}), &plan, &err);
  ExpectInvalid("second < -1", st, err, plan, "dst_layer_range.second = -3");
  st = dd::PlanPullCache(g, r, 0, 0, -1, Ext({0, 0}, {0, 0}, 0), &plan, &err);
  ExpectInvalid("n = 0", st, err, plan, "tensor_num_per_layer = 0");
  st = dd::PlanPushBlocks(g, 4, r, {0}, {0}, Ext({-1, -1}, {-1, -1}, 0), &plan, &err);
  ExpectInvalid("push n = 0", st, err, plan, "tensor_num_per_layer = 0");
  // Push: range lengths must match even when one side is default.
  st = dd::PlanPushCache(g, 4, r, 0, 0, -1, Ext({0, 1}, {-1, -1}), &plan, &err);
  ExpectInvalid("push explicit/default lengths", st, err, plan, "spans");
  // Mixed explicit/default of equal length: default selection, divisibility required.
  const auto odd = Geo(3, 4, 16, 0x100000);
  const auto odd_r = Geo(3, 4, 16, 0x900000);
  st = dd::PlanPullCache(odd, odd_r, 0, 0, -1, Ext({0, 0}, {-1, -1}), &plan, &err);
  ExpectInvalid("mixed not divisible", st, err, plan, "3 tensors, not divisible");
  EXPECT_EQ(dd::PlanPullCache(odd, odd_r, 0, 0, -1, Ext(), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(dd::PlanPullCache(g, r, 0, 0, -1, Ext({0, 0}, {-1, -1}), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.tensor_pairs.size(), 4u);
  // Pull default: tensor counts must be equal.
  const auto six = Geo(6, 4, 16, 0x900000);
  st = dd::PlanPullBlocks(g, six, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("pull default count mismatch", st, err, plan, "remote cache has 6 tensors, local cache has 4");
  // Explicit range on a cache with fewer tensors than one layer.
  const auto one = Geo(1, 4, 16, 0x900000);
  st = dd::PlanPullBlocks(g, one, {0}, {0}, Ext({0, 0}, {0, 0}, 1), &plan, &err);
  EXPECT_EQ(st, LLM_SUCCESS) << err;
  st = dd::PlanPullBlocks(g, one, {0}, {0}, Ext({0, 0}, {1, 1}, 1), &plan, &err);
  EXPECT_EQ(st, LLM_SUCCESS) << err;
  st = dd::PlanPullBlocks(g, one, {0}, {0}, Ext({1, 1}, {0, 0}, 1), &plan, &err);
  ExpectInvalid("layer beyond 1-tensor remote", st, err, plan, "max layer of the remote cache is 0");
}

TEST(PlannerInvalid, PushCallerNumTensors) {
  const auto g = Geo(6, 4, 16, 0x100000);
  const auto r4 = Geo(4, 4, 16, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  Status st = dd::PlanPushCache(g, 0, r4, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("caller 0", st, err, plan, "src_cache.cache_desc.num_tensors = 0");
  st = dd::PlanPushCache(g, 3, r4, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("caller 3 with n 2", st, err, plan, "num_tensors = 3 is not divisible");
  st = dd::PlanPushCache(g, 1, r4, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("caller < n", st, err, plan, "num_tensors = 1 is not divisible");
  st = dd::PlanPushCache(g, 8, r4, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("caller > local", st, err, plan, "local cache has 6 tensors");
  st = dd::PlanPushCache(g, 6, r4, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("caller > remote", st, err, plan, "remote cache has 4 tensors");
  ASSERT_EQ(dd::PlanPushCache(g, 4, r4, 0, 0, -1, Ext(), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.tensor_pairs.size(), 4u);
  // caller_num_tensors is ignored with explicit ranges.
  ASSERT_EQ(dd::PlanPushCache(g, 0, r4, 0, 0, -1, Ext({2, 2}, {1, 1}), &plan, &err), LLM_SUCCESS) << err;
  EXPECT_EQ(plan.tensor_pairs.size(), 2u);
  EXPECT_EQ(plan.tensor_pairs[0], std::make_pair(g.addrs[4], r4.addrs[2]));
}

TEST(PlannerInvalid, SizesAndBatchIndices) {
  const auto g = Geo(2, 4, 16, 0x100000);
  const auto r = Geo(2, 3, 16, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  Status st = dd::PlanPullCache(g, r, 0, 0, 0, Ext(), &plan, &err);
  ExpectInvalid("size 0", st, err, plan, "size = 0 is invalid, must be -1 (whole row) or in [1, 16]");
  st = dd::PlanPullCache(g, r, 0, 0, -2, Ext(), &plan, &err);
  ExpectInvalid("size -2", st, err, plan, "size = -2");
  st = dd::PlanPullCache(g, r, 0, 0, std::numeric_limits<int64_t>::min(), Ext(), &plan, &err);
  ExpectInvalid("size min", st, err, plan, "size = -9223372036854775808");
  st = dd::PlanPullCache(g, r, 0, 0, 17, Ext(), &plan, &err);
  ExpectInvalid("size > stride", st, err, plan, "size = 17 exceeds the row size 16 B");
  st = dd::PlanPullCache(g, r, 0, 0, std::numeric_limits<int64_t>::max(), Ext(), &plan, &err);
  ExpectInvalid("size max", st, err, plan, "exceeds the row size 16 B");
  st = dd::PlanPullCache(g, r, 0, 4, -1, Ext(), &plan, &err);
  ExpectInvalid("local batch", st, err, plan, "batch_index = 4 is out of range: local cache has 4 rows");
  st = dd::PlanPullCache(g, r, 3, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("remote batch", st, err, plan, "src_cache_index.batch_index = 3 is out of range: remote cache has 3 rows");
  st = dd::PlanPullCache(g, r, 0xFFFFFFFFu, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("remote batch max", st, err, plan, "4294967295");
  EXPECT_EQ(dd::PlanPullCache(g, r, 2, 3, -1, Ext(), &plan, &err), LLM_SUCCESS) << err;

  for (int64_t size : {0, 1, 16, -2}) {
    st = dd::PlanPushCache(g, 2, r, 0, 0, size, Ext(), &plan, &err);
    ExpectInvalid("push size", st, err, plan, "PushKvCache supports only -1");
  }
  st = dd::PlanPushCache(g, 2, r, 4, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("push local batch", st, err, plan, "src_batch_index = 4 is out of range: local cache has 4 rows");
  st = dd::PlanPushCache(g, 2, r, 0, 3, -1, Ext(), &plan, &err);
  ExpectInvalid("push remote batch", st, err, plan,
                "dst_cache_index.batch_index = 3 is out of range: remote cache has 3 rows");
  EXPECT_EQ(dd::PlanPushCache(g, 2, r, 3, 2, -1, Ext(), &plan, &err), LLM_SUCCESS) << err;
}

TEST(PlannerInvalid, BlockLists) {
  const auto g = Geo(2, 8, 16, 0x100000);
  const auto r = Geo(2, 6, 16, 0x900000);
  dd::TransferPlan plan;
  std::string err;
  Status st = dd::PlanPullBlocks(g, r, {}, {}, Ext(), &plan, &err);
  ExpectInvalid("pull empty", st, err, plan, "src_blocks is empty");
  st = dd::PlanPushBlocks(g, 2, r, {}, {1}, Ext(), &plan, &err);
  ExpectInvalid("push empty", st, err, plan, "src_blocks is empty");
  st = dd::PlanPullBlocks(g, r, {0, 1}, {0}, Ext(), &plan, &err);
  ExpectInvalid("pull length", st, err, plan, "src_blocks has 2 entries but dst_blocks has 1");
  st = dd::PlanPushBlocks(g, 2, r, {0}, {0, 1, 2}, Ext(), &plan, &err);
  ExpectInvalid("push length", st, err, plan, "src_blocks has 1 entries but dst_blocks has 3");
  // Pull: src indices are remote (6 blocks), dst indices local (8 blocks).
  st = dd::PlanPullBlocks(g, r, {6}, {0}, Ext(), &plan, &err);
  ExpectInvalid("pull remote oob", st, err, plan, "src_blocks[0] = 6 is out of range: remote cache has 6 blocks");
  st = dd::PlanPullBlocks(g, r, {0}, {8}, Ext(), &plan, &err);
  ExpectInvalid("pull local oob", st, err, plan, "dst_blocks[0] = 8 is out of range: local cache has 8 blocks");
  EXPECT_EQ(dd::PlanPullBlocks(g, r, {5}, {7}, Ext(), &plan, &err), LLM_SUCCESS) << err;
  // An index in the middle of a run is checked too (CANN checks only the run's first index).
  st = dd::PlanPullBlocks(g, r, {3, 4, 5, 6}, {0, 1, 2, 3}, Ext(), &plan, &err);
  ExpectInvalid("pull remote oob mid-run", st, err, plan, "src_blocks[3] = 6 is out of range");
  st = dd::PlanPullBlocks(g, r, {0, 1, 2}, {6, 7, 8}, Ext(), &plan, &err);
  ExpectInvalid("pull local oob mid-run", st, err, plan, "dst_blocks[2] = 8 is out of range");
  st = dd::PlanPullBlocks(g, r, {0, 1, 2}, {0, 1, ~uint64_t{0}}, Ext(), &plan, &err);
  ExpectInvalid("pull huge index", st, err, plan, "dst_blocks[2] = 18446744073709551615");
  // Push: src indices are local (8 blocks), dst indices remote (6 blocks).
  st = dd::PlanPushBlocks(g, 2, r, {8}, {0}, Ext(), &plan, &err);
  ExpectInvalid("push local oob", st, err, plan, "src_blocks[0] = 8 is out of range: local cache has 8 blocks");
  st = dd::PlanPushBlocks(g, 2, r, {0, 1, 2, 3}, {3, 4, 5, 6}, Ext(), &plan, &err);
  ExpectInvalid("push remote oob mid-run", st, err, plan, "dst_blocks[3] = 6 is out of range: remote cache has 6 blocks");
  EXPECT_EQ(dd::PlanPushBlocks(g, 2, r, {7, 6}, {5, 5}, Ext(), &plan, &err), LLM_SUCCESS) << err;
}

TEST(PlannerInvalid, RowSizeMismatchRefused) {
  // 4 tensors of shape {8, 1024} fp16 (2048 B rows) locally, {8, 2048} fp16 (4096 B rows) remotely.
  dd::CacheGeometry local, remote;
  std::string err;
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(4, ge::DT_FLOAT16, {8, 1024}), Addrs(4, 0x100000, 0x10000), &local, &err),
            LLM_SUCCESS);
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(4, ge::DT_FLOAT16, {8, 2048}), Addrs(4, 0x900000, 0x10000), &remote, &err),
            LLM_SUCCESS);
  const char *kMsg = "remote row size 4096 B differs from local row size 2048 B";
  dd::TransferPlan plan;
  Status st = dd::PlanPullCache(local, remote, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("pull cache", st, err, plan, kMsg);
  EXPECT_EQ(err, kMsg);
  st = dd::PlanPullCache(local, remote, 0, 0, 16, Ext(), &plan, &err);  // even a partial row
  ExpectInvalid("pull cache partial", st, err, plan, kMsg);
  st = dd::PlanPullBlocks(local, remote, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("pull blocks", st, err, plan, kMsg);
  st = dd::PlanPushCache(local, 4, remote, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("push cache", st, err, plan, kMsg);
  st = dd::PlanPushBlocks(local, 4, remote, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("push blocks", st, err, plan, kMsg);
  // Same tensor size but a different row split also differs in stride.
  dd::CacheGeometry split;
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(4, ge::DT_FLOAT16, {16, 512}), Addrs(4, 0x900000, 0x10000), &split, &err),
            LLM_SUCCESS);
  st = dd::PlanPullBlocks(local, split, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("pull blocks split", st, err, plan, "remote row size 1024 B differs from local row size 2048 B");
  // Different dtype/shape but equal rows is fine: {8, 512} fp32 = 2048 B rows.
  dd::CacheGeometry same_rows;
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(4, ge::DT_FLOAT, {6, 512}), Addrs(4, 0x900000, 0x10000), &same_rows, &err),
            LLM_SUCCESS);
  EXPECT_EQ(dd::PlanPullBlocks(local, same_rows, {5}, {7}, Ext(), &plan, &err), LLM_SUCCESS) << err;
}

TEST(PlannerInvalid, ZeroRowSizeAndMalformedGeometry) {
  dd::CacheGeometry zero, zero_r;
  std::string err;
  // UINT1 {4, 3}: 12 bits -> 2 B, 4 rows of 0 B. Registration accepts it, transfers refuse it.
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(2, ge::DT_UINT1, {4, 3}), Addrs(2), &zero, &err), LLM_SUCCESS);
  ASSERT_EQ(dd::ComputeGeometry(MakeDesc(2, ge::DT_UINT1, {4, 3}), Addrs(2, 0x900000), &zero_r, &err), LLM_SUCCESS);
  dd::TransferPlan plan;
  Status st = dd::PlanPullBlocks(zero, zero_r, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("zero stride pull", st, err, plan, "local row size is 0 B");
  st = dd::PlanPushCache(zero, 2, zero_r, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("zero stride push", st, err, plan, "row size is 0 B");

  const auto good = Geo(2, 4, 16, 0x100000);
  auto bad = Geo(2, 4, 16, 0x900000);
  bad.addrs.pop_back();
  st = dd::PlanPullCache(good, bad, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("addrs size", st, err, plan, "remote cache geometry is malformed");
  bad = Geo(2, 4, 16, 0x900000);
  bad.stride = 32;  // stride inconsistent with tensor_size / row_count
  st = dd::PlanPushBlocks(good, 2, bad, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("stride", st, err, plan, "remote cache geometry is malformed");
  bad = Geo(2, 4, 16, 0x900000);
  bad.addrs[1] = ~uint64_t{0} - 8;
  st = dd::PlanPullBlocks(bad, good, {0}, {0}, Ext(), &plan, &err);
  ExpectInvalid("wrapping addr", st, err, plan, "local cache geometry is malformed: tensor 1");
  dd::CacheGeometry empty;
  st = dd::PlanPushCache(empty, 0, good, 0, 0, -1, Ext(), &plan, &err);
  ExpectInvalid("empty geometry", st, err, plan, "local cache geometry is malformed");
  // Null plan pointer and null error pointer.
  EXPECT_EQ(dd::PlanPullCache(good, good, 0, 0, -1, Ext(), nullptr, &err), LLM_PARAM_INVALID);
  EXPECT_EQ(dd::PlanPullBlocks(good, good, {0}, {0}, Ext(), nullptr, nullptr), LLM_PARAM_INVALID);
  EXPECT_EQ(dd::PlanPushCache(good, 2, good, 0, 0, -1, Ext(), nullptr, nullptr), LLM_PARAM_INVALID);
  EXPECT_EQ(dd::PlanPushBlocks(good, 2, good, {0}, {0}, Ext(), nullptr, nullptr), LLM_PARAM_INVALID);
  EXPECT_EQ(dd::PlanPushBlocks(good, 2, good, {9}, {0}, Ext(), &plan, nullptr), LLM_PARAM_INVALID);
  EXPECT_EQ(dd::PlanPushBlocks(good, 2, good, {1}, {0}, Ext(), &plan, nullptr), LLM_SUCCESS);
}

// ===========================================================================
// (4) 100,000 scattered blocks

TEST(PlannerScale, HundredThousandScatteredBlocks) {
  constexpr uint64_t kRows = 262144;
  constexpr size_t kBlocks = 100000;
  const auto local = Geo(8, kRows, 128, 0x10000000);
  const auto remote = Geo(8, kRows, 128, 0x4000000000ULL);
  std::mt19937_64 rng(2024);
  Blocks src(kBlocks), dst(kBlocks);
  // Mixture: runs of random length at random places, some reversed stretches.
  size_t k = 0;
  while (k < kBlocks) {
    const uint64_t s0 = rng() % (kRows - 64), d0 = rng() % (kRows - 64);
    const size_t run = 1 + rng() % 16;
    const bool reversed = rng() % 4 == 0;
    for (size_t j = 0; j < run && k < kBlocks; ++j, ++k) {
      src[k] = s0 + j;
      dst[k] = reversed ? d0 + 63 - j : d0 + j;
    }
  }
  size_t expected_runs = 1;
  for (size_t i = 1; i < kBlocks; ++i) {
    if (!(src[i] == src[i - 1] + 1 && dst[i] == dst[i - 1] + 1)) ++expected_runs;
  }
  dd::TransferPlan plan;
  std::string err;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(dd::PlanPullBlocks(local, remote, src, dst, Ext(), &plan, &err), LLM_SUCCESS) << err;
  const auto t1 = std::chrono::steady_clock::now();
  EXPECT_EQ(plan.runs.size(), expected_runs);
  EXPECT_EQ(plan.tensor_pairs.size(), 8u);
  EXPECT_EQ(plan.RangeCount(), 8u * expected_runs);
  EXPECT_EQ(plan.TotalBytes(), uint64_t{8} * kBlocks * 128);
  Case c;
  c.op = Op::kPullBlocks;
  c.src_blocks = src;
  c.dst_blocks = dst;
  EXPECT_TRUE(CheckBlockRuns(c, plan, 128));

  // Push direction, fully scattered (no merges at all) and fully contiguous (one run).
  for (size_t i = 0; i < kBlocks; ++i) {
    src[i] = (i * 7919) % kRows;
    dst[i] = kRows - 1 - i;
  }
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_EQ(dd::PlanPushBlocks(local, 8, remote, src, dst, Ext(), &plan, &err), LLM_SUCCESS) << err;
  const auto t3 = std::chrono::steady_clock::now();
  EXPECT_EQ(plan.runs.size(), kBlocks);
  EXPECT_EQ(plan.RangeCount(), 8u * kBlocks);
  std::iota(src.begin(), src.end(), uint64_t{5});
  std::iota(dst.begin(), dst.end(), uint64_t{100});
  ASSERT_EQ(dd::PlanPushBlocks(local, 8, remote, src, dst, Ext(), &plan, &err), LLM_SUCCESS) << err;
  ASSERT_EQ(plan.runs.size(), 1u);
  EXPECT_EQ(plan.runs[0].local_offset, 5u * 128);
  EXPECT_EQ(plan.runs[0].remote_offset, 100u * 128);
  EXPECT_EQ(plan.runs[0].len, uint64_t{kBlocks} * 128);
  // Informational only: no timing assertion.
  const auto us = [](auto d) { return std::chrono::duration_cast<std::chrono::microseconds>(d).count(); };
  std::cout << "[ info ] planning 100000 blocks: pull " << us(t1 - t0) << " us (" << expected_runs
            << " runs), push scattered " << us(t3 - t2) << " us" << std::endl;
}

}  // namespace
