// Geometry and transfer planning for LLM-DataDist V2. See planner.h and
// docs/DATADIST_GEOMETRY.md.
#include "datadist/planner.h"

#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <limits>

namespace llmdd::datadist {

using llm_datadist::KvCacheExtParam;
using llm_datadist::LLM_PARAM_INVALID;
using llm_datadist::LLM_SUCCESS;
using llm_datadist::Status;

namespace {

using LayerRange = std::pair<int32_t, int32_t>;
using IndexPairs = std::vector<std::pair<uint32_t, uint32_t>>;

std::string Format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Format(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (n < 0) return std::string("(message formatting failed)");
  return std::string(buf, static_cast<size_t>(n) < sizeof(buf) ? static_cast<size_t>(n) : sizeof(buf) - 1);
}

Status Invalid(std::string *error, std::string message) {
  if (error != nullptr) *error = std::move(message);
  return LLM_PARAM_INVALID;
}

bool MulOverflow(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_mul_overflow(a, b, out); }
bool AddOverflow(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_add_overflow(a, b, out); }

std::string ShapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  s += "]";
  return s;
}

// ---------------------------------------------------------------------------
// ext_param validation and tensor selection (spec 2.8.2 / 2.8.4)

bool IsDefaultRange(const LayerRange &r) { return r.first == -1 && r.second == -1; }

Status CheckRange(const char *name, const LayerRange &r, std::string *error) {
  if (r.first < -1) {
    return Invalid(error, Format("ext_param.%s.first = %d is invalid, must be >= -1", name, r.first));
  }
  if (r.second < -1) {
    return Invalid(error, Format("ext_param.%s.second = %d is invalid, must be >= -1", name, r.second));
  }
  if (r.first > r.second) {
    return Invalid(error, Format("ext_param.%s = (%d, %d) is invalid, first must be <= second", name, r.first,
                                 r.second));
  }
  return LLM_SUCCESS;
}

Status CheckExtCommon(const KvCacheExtParam &ext, std::string *error) {
  Status st = CheckRange("src_layer_range", ext.src_layer_range, error);
  if (st != LLM_SUCCESS) return st;
  st = CheckRange("dst_layer_range", ext.dst_layer_range, error);
  if (st != LLM_SUCCESS) return st;
  if (ext.tensor_num_per_layer == 0) {
    return Invalid(error, "ext_param.tensor_num_per_layer = 0 is invalid, must be > 0");
  }
  return LLM_SUCCESS;
}

Status CheckDivisible(const char *which, uint32_t num_tensors, uint32_t n, std::string *error) {
  if (num_tensors % n != 0) {
    return Invalid(error, Format("%s cache has %u tensors, not divisible by ext_param.tensor_num_per_layer = %u", which,
                                 num_tensors, n));
  }
  return LLM_SUCCESS;
}

// Requires range.first >= 0 (explicit range) and num_tensors divisible by n.
Status CheckLayerInRange(const char *name, const LayerRange &range, const char *which, uint32_t num_tensors,
                         uint32_t n, std::string *error) {
  const uint64_t layers = num_tensors / n;
  if (layers == 0) {
    return Invalid(error, Format("ext_param.%s = (%d, %d) is out of range: %s cache has %u tensors, fewer than one "
                                 "layer of %u",
                                 name, range.first, range.second, which, num_tensors, n));
  }
  if (static_cast<uint64_t>(range.second) > layers - 1) {
    return Invalid(error, Format("ext_param.%s.second = %d is out of range: max layer of the %s cache is %" PRIu64
                                 " (%u tensors / %u per layer)",
                                 name, range.second, which, layers - 1, num_tensors, n));
  }
  return LLM_SUCCESS;
}

void FillSequentialPairs(uint64_t src_first, uint64_t dst_first, uint64_t count, IndexPairs *pairs) {
  pairs->reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    pairs->emplace_back(static_cast<uint32_t>(src_first + i), static_cast<uint32_t>(dst_first + i));
  }
}

// ---------------------------------------------------------------------------
// Geometry checks used by the planners

Status CheckGeometry(const char *which, const CacheGeometry &g, std::string *error) {
  if (g.num_tensors == 0 || g.addrs.size() != g.num_tensors || g.row_count == 0 || g.tensor_size == 0 ||
      g.stride != g.tensor_size / g.row_count) {
    return Invalid(error, Format("%s cache geometry is malformed (num_tensors %u, %zu addrs, tensor_size %" PRIu64
                                 " B, rows %" PRIu64 ", stride %" PRIu64 " B)",
                                 which, g.num_tensors, g.addrs.size(), g.tensor_size, g.row_count, g.stride));
  }
  for (size_t i = 0; i < g.addrs.size(); ++i) {
    uint64_t end = 0;
    if (g.addrs[i] == 0 || AddOverflow(g.addrs[i], g.tensor_size, &end)) {
      return Invalid(error, Format("%s cache geometry is malformed: tensor %zu address 0x%" PRIx64 " with size %" PRIu64
                                   " B is invalid",
                                   which, i, g.addrs[i], g.tensor_size));
    }
  }
  if (g.stride == 0) {
    return Invalid(error, Format("%s row size is 0 B (tensor of %" PRIu64 " B split into %" PRIu64
                                 " rows), nothing can be transferred",
                                 which, g.tensor_size, g.row_count));
  }
  return LLM_SUCCESS;
}

Status CheckPairGeometry(const CacheGeometry &local, const CacheGeometry &remote, std::string *error) {
  Status st = CheckGeometry("local", local, error);
  if (st != LLM_SUCCESS) return st;
  st = CheckGeometry("remote", remote, error);
  if (st != LLM_SUCCESS) return st;
  if (remote.stride != local.stride) {
    return Invalid(error, Format("remote row size %" PRIu64 " B differs from local row size %" PRIu64 " B",
                                 remote.stride, local.stride));
  }
  return LLM_SUCCESS;
}

// Builds plan->tensor_pairs from (src index, dst index) pairs.
void FillTensorPairs(const IndexPairs &pairs, const CacheGeometry &local, const CacheGeometry &remote, bool src_is_local,
                     TransferPlan *plan) {
  plan->tensor_pairs.reserve(pairs.size());
  for (const auto &p : pairs) {
    const uint32_t local_idx = src_is_local ? p.first : p.second;
    const uint32_t remote_idx = src_is_local ? p.second : p.first;
    plan->tensor_pairs.emplace_back(local.addrs[local_idx], remote.addrs[remote_idx]);
  }
}

// Validates two block lists and appends maximal merged runs to plan->runs.
// `local_blocks`/`remote_blocks` are the lists of the respective caches; the
// names are the user-visible parameter names used in messages.
Status BuildBlockRuns(const std::vector<uint64_t> &src_blocks, const char *src_name, const char *src_which,
                      uint64_t src_rows, const std::vector<uint64_t> &dst_blocks, const char *dst_name,
                      const char *dst_which, uint64_t dst_rows, bool src_is_local, uint64_t stride,
                      TransferPlan *plan, std::string *error) {
  if (src_blocks.empty()) {
    return Invalid(error, Format("%s is empty, at least one block is required", src_name));
  }
  if (src_blocks.size() != dst_blocks.size()) {
    return Invalid(error, Format("%s has %zu entries but %s has %zu, lengths must be equal", src_name,
                                 src_blocks.size(), dst_name, dst_blocks.size()));
  }
  const size_t count = src_blocks.size();
  size_t runs = 0;
  for (size_t k = 0; k < count; ++k) {
    if (src_blocks[k] >= src_rows) {
      return Invalid(error, Format("%s[%zu] = %" PRIu64 " is out of range: %s cache has %" PRIu64 " blocks", src_name,
                                   k, src_blocks[k], src_which, src_rows));
    }
    if (dst_blocks[k] >= dst_rows) {
      return Invalid(error, Format("%s[%zu] = %" PRIu64 " is out of range: %s cache has %" PRIu64 " blocks", dst_name,
                                   k, dst_blocks[k], dst_which, dst_rows));
    }
    if (k == 0 || src_blocks[k] != src_blocks[k - 1] + 1 || dst_blocks[k] != dst_blocks[k - 1] + 1) ++runs;
  }
  plan->runs.reserve(runs);
  size_t start = 0;
  while (start < count) {
    size_t end = start + 1;
    while (end < count && src_blocks[end] == src_blocks[end - 1] + 1 && dst_blocks[end] == dst_blocks[end - 1] + 1) {
      ++end;
    }
    // Every index was checked against its row count and row_count * stride <=
    // tensor_size, so none of these can overflow; check anyway.
    uint64_t src_off = 0, dst_off = 0, len = 0;
    if (MulOverflow(src_blocks[start], stride, &src_off) || MulOverflow(dst_blocks[start], stride, &dst_off) ||
        MulOverflow(static_cast<uint64_t>(end - start), stride, &len)) {
      plan->runs.clear();
      return Invalid(error, Format("block offset overflows 64 bits at %s[%zu]", src_name, start));
    }
    if (src_is_local) {
      plan->runs.push_back(Run{src_off, dst_off, len});
    } else {
      plan->runs.push_back(Run{dst_off, src_off, len});
    }
    start = end;
  }
  return LLM_SUCCESS;
}

Status CheckRow(const char *name, uint64_t index, const char *which, uint64_t rows, std::string *error) {
  if (index >= rows) {
    return Invalid(error, Format("%s = %" PRIu64 " is out of range: %s cache has %" PRIu64 " rows", name, index, which,
                                 rows));
  }
  return LLM_SUCCESS;
}

Status Fail(TransferPlan *plan, Status st) {
  plan->Clear();
  return st;
}

}  // namespace

// ---------------------------------------------------------------------------

uint32_t DataTypeBits(ge::DataType type) {
  switch (static_cast<int64_t>(type)) {
    case ge::DT_FLOAT: return 32;
    case ge::DT_FLOAT16: return 16;
    case ge::DT_INT8: return 8;
    case ge::DT_INT32: return 32;
    case ge::DT_UINT8: return 8;
    case ge::DT_INT16: return 16;
    case ge::DT_UINT16: return 16;
    case ge::DT_UINT32: return 32;
    case ge::DT_INT64: return 64;
    case ge::DT_UINT64: return 64;
    case ge::DT_DOUBLE: return 64;
    case ge::DT_BOOL: return 8;
    case ge::DT_STRING: return 128;
    case ge::DT_DUAL_SUB_INT8: return 8;
    case ge::DT_DUAL_SUB_UINT8: return 8;
    case ge::DT_COMPLEX64: return 64;
    case ge::DT_COMPLEX128: return 128;
    case ge::DT_QINT8: return 8;
    case ge::DT_QINT16: return 16;
    case ge::DT_QINT32: return 32;
    case ge::DT_QUINT8: return 8;
    case ge::DT_QUINT16: return 16;
    case ge::DT_RESOURCE: return 64;
    case ge::DT_STRING_REF: return 128;
    case ge::DT_DUAL: return 40;
    case ge::DT_VARIANT: return 64;
    case ge::DT_BF16: return 16;
    case ge::DT_INT4: return 4;
    case ge::DT_UINT1: return 1;
    case ge::DT_INT2: return 2;
    case ge::DT_UINT2: return 2;
    case ge::DT_COMPLEX32: return 32;
    case ge::DT_HIFLOAT8: return 8;
    case ge::DT_FLOAT8_E5M2: return 8;
    case ge::DT_FLOAT8_E4M3FN: return 8;
    case ge::DT_FLOAT8_E8M0: return 8;
    case ge::DT_FLOAT6_E3M2: return 6;
    case ge::DT_FLOAT6_E2M3: return 6;
    case ge::DT_FLOAT4_E2M1: return 4;
    case ge::DT_FLOAT4_E1M2: return 4;
    default: return 0;  // DT_UNDEFINED, reserved 5, DT_MAX and beyond
  }
}

Status ComputeGeometry(const llm_datadist::CacheDesc &desc, const std::vector<uint64_t> &addrs, CacheGeometry *out,
                       std::string *error) {
  if (out == nullptr) return Invalid(error, "output geometry pointer is null");
  if (addrs.empty()) return Invalid(error, "addrs is empty, at least one tensor address is required");
  if (addrs.size() != desc.num_tensors) {
    return Invalid(error, Format("addrs has %zu entries but cache_desc.num_tensors = %u, they must be equal",
                                 addrs.size(), desc.num_tensors));
  }
  for (size_t i = 0; i < addrs.size(); ++i) {
    if (addrs[i] == 0) return Invalid(error, Format("addrs[%zu] is 0, tensor addresses must be non-null", i));
  }
  if (desc.shape.empty()) return Invalid(error, "cache_desc.shape is empty, it needs 1 to 31 dims");
  if (desc.shape.size() >= kMaxShapeDims) {
    return Invalid(error, Format("cache_desc.shape has %zu dims, the limit is %zu", desc.shape.size(),
                                 kMaxShapeDims - 1));
  }
  uint64_t elements = 1;
  for (size_t i = 0; i < desc.shape.size(); ++i) {
    if (desc.shape[i] <= 0) {
      return Invalid(error, Format("cache_desc.shape[%zu] = %" PRId64 " is invalid, every dim must be > 0", i,
                                   desc.shape[i]));
    }
    if (MulOverflow(elements, static_cast<uint64_t>(desc.shape[i]), &elements)) {
      return Invalid(error, Format("element count of cache_desc.shape %s overflows 64 bits",
                                   ShapeString(desc.shape).c_str()));
    }
  }
  const uint32_t bits = DataTypeBits(desc.data_type);
  if (bits == 0) {
    return Invalid(error, Format("cache_desc.data_type = %d has no known element size",
                                 static_cast<int>(desc.data_type)));
  }
  // bytes = ceil(elements * bits / 8), computed without overflowing the intermediate bit count.
  uint64_t whole = 0;
  uint64_t bytes = 0;
  const uint64_t tail_bytes = ((elements % 8) * bits + 7) / 8;
  if (MulOverflow(elements / 8, bits, &whole) || AddOverflow(whole, tail_bytes, &bytes) ||
      bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Invalid(error, Format("byte size of cache_desc.shape %s with data_type %d overflows int64",
                                 ShapeString(desc.shape).c_str(), static_cast<int>(desc.data_type)));
  }
  for (size_t i = 0; i < addrs.size(); ++i) {
    uint64_t end = 0;
    if (AddOverflow(addrs[i], bytes, &end)) {
      return Invalid(error, Format("addrs[%zu] = 0x%" PRIx64 " plus tensor size %" PRIu64
                                   " B wraps past the end of the address space",
                                   i, addrs[i], bytes));
    }
  }
  out->num_tensors = desc.num_tensors;
  out->tensor_size = bytes;
  out->row_count = static_cast<uint64_t>(desc.shape[0]);
  out->stride = bytes / out->row_count;
  out->addrs = addrs;
  return LLM_SUCCESS;
}

// ---------------------------------------------------------------------------

uint64_t TransferPlan::TotalBytes() const {
  uint64_t per_pair = 0;
  for (const Run &r : runs) {
    if (AddOverflow(per_pair, r.len, &per_pair)) return std::numeric_limits<uint64_t>::max();
  }
  uint64_t total = 0;
  if (MulOverflow(per_pair, tensor_pairs.size(), &total)) return std::numeric_limits<uint64_t>::max();
  return total;
}

size_t TransferPlan::RangeCount() const { return tensor_pairs.size() * runs.size(); }

void TransferPlan::Expand(std::vector<CopyRange> *out) const {
  out->reserve(out->size() + RangeCount());
  for (const auto &pair : tensor_pairs) {
    for (const Run &r : runs) {
      out->push_back(CopyRange{pair.first + r.local_offset, pair.second + r.remote_offset, r.len});
    }
  }
}

void TransferPlan::Clear() {
  tensor_pairs.clear();
  runs.clear();
}

// ---------------------------------------------------------------------------

Status SelectPullTensors(uint32_t local_dst_tensors, uint32_t remote_src_tensors, const KvCacheExtParam &ext,
                         IndexPairs *pairs, std::string *error) {
  pairs->clear();
  Status st = CheckExtCommon(ext, error);
  if (st != LLM_SUCCESS) return st;
  const uint32_t n = ext.tensor_num_per_layer;
  const LayerRange &src = ext.src_layer_range;
  const LayerRange &dst = ext.dst_layer_range;
  if (!IsDefaultRange(src) || !IsDefaultRange(dst)) {
    if ((st = CheckDivisible("remote", remote_src_tensors, n, error)) != LLM_SUCCESS) return st;
    if ((st = CheckDivisible("local", local_dst_tensors, n, error)) != LLM_SUCCESS) return st;
  }
  if (src.first >= 0 && dst.first >= 0) {
    if ((st = CheckLayerInRange("src_layer_range", src, "remote", remote_src_tensors, n, error)) != LLM_SUCCESS) {
      return st;
    }
    if ((st = CheckLayerInRange("dst_layer_range", dst, "local", local_dst_tensors, n, error)) != LLM_SUCCESS) {
      return st;
    }
    const uint64_t src_count = static_cast<uint64_t>(src.second - src.first + 1) * n;
    const uint64_t dst_count = static_cast<uint64_t>(dst.second - dst.first + 1) * n;
    if (src_count != dst_count) {
      return Invalid(error, Format("tensor count mismatch: ext_param.src_layer_range (%d, %d) selects %" PRIu64
                                   " remote tensors but ext_param.dst_layer_range (%d, %d) selects %" PRIu64
                                   " local tensors",
                                   src.first, src.second, src_count, dst.first, dst.second, dst_count));
    }
    FillSequentialPairs(static_cast<uint64_t>(src.first) * n, static_cast<uint64_t>(dst.first) * n, src_count, pairs);
    return LLM_SUCCESS;
  }
  if (local_dst_tensors != remote_src_tensors) {
    return Invalid(error, Format("tensor count mismatch: remote cache has %u tensors, local cache has %u (default "
                                 "layer ranges pair all tensors)",
                                 remote_src_tensors, local_dst_tensors));
  }
  FillSequentialPairs(0, 0, local_dst_tensors, pairs);
  return LLM_SUCCESS;
}

Status SelectPushTensors(uint32_t local_src_tensors, uint32_t caller_num_tensors, uint32_t remote_dst_tensors,
                         const KvCacheExtParam &ext, IndexPairs *pairs, std::string *error) {
  pairs->clear();
  Status st = CheckExtCommon(ext, error);
  if (st != LLM_SUCCESS) return st;
  const uint32_t n = ext.tensor_num_per_layer;
  const LayerRange &src = ext.src_layer_range;
  const LayerRange &dst = ext.dst_layer_range;
  const int64_t src_len = static_cast<int64_t>(src.second) - src.first;
  const int64_t dst_len = static_cast<int64_t>(dst.second) - dst.first;
  if (src_len != dst_len) {
    return Invalid(error, Format("ext_param.src_layer_range (%d, %d) spans %" PRId64
                                 " layers but ext_param.dst_layer_range (%d, %d) spans %" PRId64 ", must be equal",
                                 src.first, src.second, src_len + 1, dst.first, dst.second, dst_len + 1));
  }
  if (!IsDefaultRange(src) || !IsDefaultRange(dst)) {
    if ((st = CheckDivisible("local", local_src_tensors, n, error)) != LLM_SUCCESS) return st;
    if ((st = CheckDivisible("remote", remote_dst_tensors, n, error)) != LLM_SUCCESS) return st;
  }
  if (src.first >= 0 && dst.first >= 0) {
    if ((st = CheckLayerInRange("src_layer_range", src, "local", local_src_tensors, n, error)) != LLM_SUCCESS) {
      return st;
    }
    if ((st = CheckLayerInRange("dst_layer_range", dst, "remote", remote_dst_tensors, n, error)) != LLM_SUCCESS) {
      return st;
    }
    const uint64_t count = static_cast<uint64_t>(src_len + 1) * n;
    FillSequentialPairs(static_cast<uint64_t>(src.first) * n, static_cast<uint64_t>(dst.first) * n, count, pairs);
    return LLM_SUCCESS;
  }
  // Default ranges: layers 0 .. caller_num_tensors / n - 1, dst layer = src layer.
  if (caller_num_tensors == 0) {
    return Invalid(error, "src_cache.cache_desc.num_tensors = 0 is invalid, must be > 0 with default layer ranges");
  }
  if (caller_num_tensors % n != 0) {
    return Invalid(error, Format("src_cache.cache_desc.num_tensors = %u is not divisible by "
                                 "ext_param.tensor_num_per_layer = %u",
                                 caller_num_tensors, n));
  }
  if (caller_num_tensors > local_src_tensors) {
    return Invalid(error, Format("src_cache.cache_desc.num_tensors = %u is out of range: the local cache has %u "
                                 "tensors (max layer %u)",
                                 caller_num_tensors, local_src_tensors, local_src_tensors / n - 1));
  }
  if (caller_num_tensors > remote_dst_tensors) {
    return Invalid(error, Format("src_cache.cache_desc.num_tensors = %u is out of range: the remote cache has %u "
                                 "tensors",
                                 caller_num_tensors, remote_dst_tensors));
  }
  FillSequentialPairs(0, 0, caller_num_tensors, pairs);
  return LLM_SUCCESS;
}

// ---------------------------------------------------------------------------

Status PlanPullCache(const CacheGeometry &local_dst, const CacheGeometry &remote_src, uint32_t remote_batch_index,
                     uint32_t local_batch_index, int64_t size, const KvCacheExtParam &ext, TransferPlan *plan,
                     std::string *error) {
  if (plan == nullptr) return Invalid(error, "output plan pointer is null");
  plan->Clear();
  Status st = CheckPairGeometry(local_dst, remote_src, error);
  if (st != LLM_SUCCESS) return st;
  const uint64_t stride = local_dst.stride;
  if (size == 0 || size < -1) {
    return Invalid(error, Format("size = %" PRId64 " is invalid, must be -1 (whole row) or in [1, %" PRIu64 "]", size,
                                 stride));
  }
  if (size > 0 && static_cast<uint64_t>(size) > stride) {
    return Invalid(error, Format("size = %" PRId64 " exceeds the row size %" PRIu64 " B", size, stride));
  }
  if ((st = CheckRow("batch_index", local_batch_index, "local", local_dst.row_count, error)) != LLM_SUCCESS) return st;
  if ((st = CheckRow("src_cache_index.batch_index", remote_batch_index, "remote", remote_src.row_count, error)) !=
      LLM_SUCCESS) {
    return st;
  }
  IndexPairs pairs;
  if ((st = SelectPullTensors(local_dst.num_tensors, remote_src.num_tensors, ext, &pairs, error)) != LLM_SUCCESS) {
    return st;
  }
  uint64_t local_off = 0, remote_off = 0;
  if (MulOverflow(local_batch_index, stride, &local_off) || MulOverflow(remote_batch_index, stride, &remote_off)) {
    return Invalid(error, "row offset overflows 64 bits");
  }
  const uint64_t len = size > 0 ? static_cast<uint64_t>(size) : stride;
  FillTensorPairs(pairs, local_dst, remote_src, /*src_is_local=*/false, plan);
  plan->runs.push_back(Run{local_off, remote_off, len});
  return LLM_SUCCESS;
}

Status PlanPullBlocks(const CacheGeometry &local_dst, const CacheGeometry &remote_src,
                      const std::vector<uint64_t> &remote_src_blocks, const std::vector<uint64_t> &local_dst_blocks,
                      const KvCacheExtParam &ext, TransferPlan *plan, std::string *error) {
  if (plan == nullptr) return Invalid(error, "output plan pointer is null");
  plan->Clear();
  Status st = CheckPairGeometry(local_dst, remote_src, error);
  if (st != LLM_SUCCESS) return st;
  IndexPairs pairs;
  if ((st = SelectPullTensors(local_dst.num_tensors, remote_src.num_tensors, ext, &pairs, error)) != LLM_SUCCESS) {
    return st;
  }
  st = BuildBlockRuns(remote_src_blocks, "src_blocks", "remote", remote_src.row_count, local_dst_blocks, "dst_blocks",
                      "local", local_dst.row_count, /*src_is_local=*/false, local_dst.stride, plan, error);
  if (st != LLM_SUCCESS) return Fail(plan, st);
  FillTensorPairs(pairs, local_dst, remote_src, /*src_is_local=*/false, plan);
  return LLM_SUCCESS;
}

Status PlanPushCache(const CacheGeometry &local_src, uint32_t caller_num_tensors, const CacheGeometry &remote_dst,
                     uint32_t local_batch_index, uint32_t remote_batch_index, int64_t size, const KvCacheExtParam &ext,
                     TransferPlan *plan, std::string *error) {
  if (plan == nullptr) return Invalid(error, "output plan pointer is null");
  plan->Clear();
  if (size != -1) {
    return Invalid(error, Format("size = %" PRId64 " is invalid, PushKvCache supports only -1 (whole row)", size));
  }
  Status st = CheckPairGeometry(local_src, remote_dst, error);
  if (st != LLM_SUCCESS) return st;
  const uint64_t stride = local_src.stride;
  if ((st = CheckRow("src_batch_index", local_batch_index, "local", local_src.row_count, error)) != LLM_SUCCESS) {
    return st;
  }
  if ((st = CheckRow("dst_cache_index.batch_index", remote_batch_index, "remote", remote_dst.row_count, error)) !=
      LLM_SUCCESS) {
    return st;
  }
  IndexPairs pairs;
  if ((st = SelectPushTensors(local_src.num_tensors, caller_num_tensors, remote_dst.num_tensors, ext, &pairs,
                              error)) != LLM_SUCCESS) {
    return st;
  }
  uint64_t local_off = 0, remote_off = 0;
  if (MulOverflow(local_batch_index, stride, &local_off) || MulOverflow(remote_batch_index, stride, &remote_off)) {
    return Invalid(error, "row offset overflows 64 bits");
  }
  FillTensorPairs(pairs, local_src, remote_dst, /*src_is_local=*/true, plan);
  plan->runs.push_back(Run{local_off, remote_off, stride});
  return LLM_SUCCESS;
}

Status PlanPushBlocks(const CacheGeometry &local_src, uint32_t caller_num_tensors, const CacheGeometry &remote_dst,
                      const std::vector<uint64_t> &local_src_blocks, const std::vector<uint64_t> &remote_dst_blocks,
                      const KvCacheExtParam &ext, TransferPlan *plan, std::string *error) {
  if (plan == nullptr) return Invalid(error, "output plan pointer is null");
  plan->Clear();
  Status st = CheckPairGeometry(local_src, remote_dst, error);
  if (st != LLM_SUCCESS) return st;
  IndexPairs pairs;
  if ((st = SelectPushTensors(local_src.num_tensors, caller_num_tensors, remote_dst.num_tensors, ext, &pairs,
                              error)) != LLM_SUCCESS) {
    return st;
  }
  st = BuildBlockRuns(local_src_blocks, "src_blocks", "local", local_src.row_count, remote_dst_blocks, "dst_blocks",
                      "remote", remote_dst.row_count, /*src_is_local=*/true, local_src.stride, plan, error);
  if (st != LLM_SUCCESS) return Fail(plan, st);
  FillTensorPairs(pairs, local_src, remote_dst, /*src_is_local=*/true, plan);
  return LLM_SUCCESS;
}

}  // namespace llmdd::datadist
