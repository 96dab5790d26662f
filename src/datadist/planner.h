// Pure geometry and transfer planning for LLM-DataDist V2 (no I/O, no locking).
//
// ComputeGeometry() validates a CacheDesc exactly as RegisterKvCache does and
// derives the per-cache geometry of spec 2.8.1. The Plan*() functions turn the
// arguments of PullKvCache / PullKvBlocks / PushKvCache / PushKvBlocks into a
// compact TransferPlan: a list of tensor pairs and one list of byte runs that
// applies to every pair. Every plan range is guaranteed to lie inside
// [addr, addr + tensor_size) of its tensor on both sides.
//
// Checks done by the caller (the facade), not here: batch_index == 0 for the
// *Blocks calls, cache existence, links, own-cluster and placement checks.
// Formulas and the project's decisions: docs/DATADIST_GEOMETRY.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "llm_datadist/llm_datadist.h"

namespace llmdd::datadist {

// RegisterKvCache accepts 1..31 dimensions.
inline constexpr size_t kMaxShapeDims = 32;

// Geometry of one registered cache (spec 2.8.1).
struct CacheGeometry {
  uint32_t num_tensors = 0;
  uint64_t tensor_size = 0;     // bytes per tensor = ceil(product(shape) * bits / 8)
  uint64_t row_count = 0;       // shape[0] = batch count = block count
  uint64_t stride = 0;          // tensor_size / row_count (integer division)
  std::vector<uint64_t> addrs;  // base address of each tensor
};

// Bits per element (spec 1.3); 0 for DT_UNDEFINED, the reserved value 5 and
// anything unknown. DT_STRING / DT_STRING_REF count as 16 bytes.
uint32_t DataTypeBits(ge::DataType type);

// RegisterKvCache validation (spec 2.7). LLM_PARAM_INVALID with *error naming
// the problem for: empty addrs, addrs.size() != num_tensors, a zero address,
// empty shape or >= 32 dims, a dim <= 0, unknown data type, byte size that
// overflows int64, or a tensor whose [addr, addr + size) wraps past 2^64.
// Otherwise LLM_SUCCESS and *out filled. `error` may be null.
llm_datadist::Status ComputeGeometry(const llm_datadist::CacheDesc &desc, const std::vector<uint64_t> &addrs,
                                     CacheGeometry *out, std::string *error);

// One byte run, relative to the base address of the tensors of a pair.
struct Run {
  uint64_t local_offset;
  uint64_t remote_offset;
  uint64_t len;
};

// One absolute copy range (direction is given by the operation: pull reads
// remote into local, push writes local into remote).
struct CopyRange {
  uint64_t local_addr;
  uint64_t remote_addr;
  uint64_t len;
};

// Compact plan: the same list of byte runs applied to every selected tensor pair.
struct TransferPlan {
  // (local tensor base addr, remote tensor base addr), in transfer order. For
  // push this is layer-major (n consecutive pairs per layer, n =
  // tensor_num_per_layer), so a layer-wise transport can slice it.
  std::vector<std::pair<uint64_t, uint64_t>> tensor_pairs;
  std::vector<Run> runs;

  uint64_t TotalBytes() const;                     // saturates at UINT64_MAX (cannot happen for valid plans of sane caches)
  size_t RangeCount() const;                       // tensor_pairs.size() * runs.size()
  void Expand(std::vector<CopyRange> *out) const;  // appends flat ranges, tensor-pair-major
  void Clear();
};

// "local" = this process's cache, "remote" = the peer's cache. All return
// LLM_SUCCESS or LLM_PARAM_INVALID (with *error set to a one-line message
// naming the offending value and the limit; `error` may be null). On failure
// *plan is left empty.

// Pull: remote is the source, local the destination.
//   remote_batch_index = src_cache_index.batch_index, local_batch_index = batch_index.
llm_datadist::Status PlanPullCache(const CacheGeometry &local_dst, const CacheGeometry &remote_src,
                                   uint32_t remote_batch_index, uint32_t local_batch_index, int64_t size,
                                   const llm_datadist::KvCacheExtParam &ext, TransferPlan *plan, std::string *error);
llm_datadist::Status PlanPullBlocks(const CacheGeometry &local_dst, const CacheGeometry &remote_src,
                                    const std::vector<uint64_t> &remote_src_blocks,
                                    const std::vector<uint64_t> &local_dst_blocks,
                                    const llm_datadist::KvCacheExtParam &ext, TransferPlan *plan, std::string *error);

// Push: local is the source, remote the destination. caller_num_tensors is
// src_cache.cache_desc.num_tensors of the Cache the user passed (drives the
// layer count when the layer ranges are default, spec 2.8.3).
//   local_batch_index = src_batch_index, remote_batch_index = dst_cache_index.batch_index.
llm_datadist::Status PlanPushCache(const CacheGeometry &local_src, uint32_t caller_num_tensors,
                                   const CacheGeometry &remote_dst, uint32_t local_batch_index,
                                   uint32_t remote_batch_index, int64_t size,
                                   const llm_datadist::KvCacheExtParam &ext, TransferPlan *plan, std::string *error);
llm_datadist::Status PlanPushBlocks(const CacheGeometry &local_src, uint32_t caller_num_tensors,
                                    const CacheGeometry &remote_dst, const std::vector<uint64_t> &local_src_blocks,
                                    const std::vector<uint64_t> &remote_dst_blocks,
                                    const llm_datadist::KvCacheExtParam &ext, TransferPlan *plan, std::string *error);

// Tensor selection (spec 2.8.2 / 2.8.4) on its own, exposed for tests and for
// callers that need the layer structure. Fills *pairs with (src tensor index,
// dst tensor index) in transfer order. For pull, src = remote and dst = local;
// for push, src = local and dst = remote.
llm_datadist::Status SelectPullTensors(uint32_t local_dst_tensors, uint32_t remote_src_tensors,
                                       const llm_datadist::KvCacheExtParam &ext,
                                       std::vector<std::pair<uint32_t, uint32_t>> *pairs, std::string *error);
llm_datadist::Status SelectPushTensors(uint32_t local_src_tensors, uint32_t caller_num_tensors,
                                       uint32_t remote_dst_tensors, const llm_datadist::KvCacheExtParam &ext,
                                       std::vector<std::pair<uint32_t, uint32_t>> *pairs, std::string *error);

}  // namespace llmdd::datadist
