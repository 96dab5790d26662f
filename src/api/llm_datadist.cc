// llm_datadist::LlmDataDist: thin PIMPL facade over llmdd::datadist::DataDist.
// Converts the ABI types and implements the V1-only stubs.
#include "llm_datadist/llm_datadist.h"

#include <string>

#include "common/log.h"
#include "common/threads.h"
#include "datadist/datadist.h"
#include "llmdd/extensions.h"

namespace llm_datadist {

class LlmDataDist::LlmDataDistImpl {
 public:
  LlmDataDistImpl(uint64_t cluster_id, LlmRole role) : core(cluster_id, role) {}
  llmdd::datadist::DataDist core;
};

namespace {

std::map<std::string, std::string> ToStd(const std::map<AscendString, AscendString> &options) {
  std::map<std::string, std::string> out;
  for (const auto &kv : options)
    out[std::string(kv.first.GetString(), kv.first.GetLength())] =
        std::string(kv.second.GetString(), kv.second.GetLength());
  return out;
}

// No exception crosses the ABI: out of memory is LLM_OUT_OF_MEMORY, anything else LLM_FAILED (both logged).
template <typename Call>
Status Guarded(const char *name, Call &&call) {
  return llmdd::CallGuarded<Status>(name, LLM_OUT_OF_MEMORY, LLM_FAILED, std::forward<Call>(call));
}

Status NotEnabled(const char *call) {
  LOG_ERROR("%s is a V1 API; it is not supported by LLM-DataDist V2", call);
  return LLM_FEATURE_NOT_ENABLED;
}

}  // namespace

LlmDataDist::LlmDataDist(uint64_t cluster_id, LlmRole role) : impl_(new LlmDataDistImpl(cluster_id, role)) {}

LlmDataDist::~LlmDataDist() = default;

Status LlmDataDist::Initialize(const std::map<AscendString, AscendString> &options) {
  return Guarded("Initialize", [&] { return impl_->core.Initialize(ToStd(options)); });
}

void LlmDataDist::Finalize() {
  llmdd::RunGuarded("Finalize", [&] { impl_->core.Finalize(); });
}

Status LlmDataDist::SetRole(LlmRole role, const std::map<AscendString, AscendString> &options) {
  return Guarded("SetRole", [&] { return impl_->core.SetRole(role, ToStd(options)); });
}

Status LlmDataDist::LinkLlmClusters(const std::vector<ClusterInfo> &clusters, std::vector<Status> &rets,
                                    int32_t timeout_in_millis) {
  return Guarded("LinkLlmClusters", [&] { return impl_->core.LinkClusters(clusters, rets, timeout_in_millis); });
}

Status LlmDataDist::UnlinkLlmClusters(const std::vector<ClusterInfo> &clusters, std::vector<Status> &rets,
                                      int32_t timeout_in_millis, bool force_flag) {
  return Guarded("UnlinkLlmClusters",
                 [&] { return impl_->core.UnlinkClusters(clusters, rets, timeout_in_millis, force_flag); });
}

Status LlmDataDist::AllocateCache(const CacheDesc &, Cache &) { return NotEnabled("AllocateCache"); }

Status LlmDataDist::DeallocateCache(int64_t) { return NotEnabled("DeallocateCache"); }

Status LlmDataDist::PullKvCache(const CacheIndex &src_cache_index, const Cache &dst_cache, uint32_t batch_index,
                                int64_t size, const KvCacheExtParam &ext_param) {
  return Guarded("PullKvCache",
                 [&] { return impl_->core.PullKvCache(src_cache_index, dst_cache, batch_index, size, ext_param); });
}

Status LlmDataDist::PullKvBlocks(const CacheIndex &src_cache_index, const Cache &dst_cache,
                                 const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks,
                                 const KvCacheExtParam &ext_param) {
  return Guarded("PullKvBlocks", [&] {
    return impl_->core.PullKvBlocks(src_cache_index, dst_cache, src_blocks, dst_blocks, ext_param);
  });
}

Status LlmDataDist::CopyKvCache(const Cache &, const Cache &, uint32_t, uint32_t, uint64_t, int64_t) {
  return NotEnabled("CopyKvCache");
}

Status LlmDataDist::CopyKvBlocks(const Cache &, const Cache &, const std::vector<uint64_t> &,
                                 const std::vector<std::vector<uint64_t>> &) {
  return NotEnabled("CopyKvBlocks");
}

Status LlmDataDist::PushKvCache(const Cache &src_cache, const CacheIndex &dst_cache_index, uint32_t src_batch_index,
                                int64_t size, const KvCacheExtParam &ext_param) {
  return Guarded("PushKvCache", [&] {
    return impl_->core.PushKvCache(src_cache, dst_cache_index, src_batch_index, size, ext_param);
  });
}

Status LlmDataDist::PushKvBlocks(const Cache &src_cache, const CacheIndex &dst_cache_index,
                                 const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks,
                                 const KvCacheExtParam &ext_param) {
  return Guarded("PushKvBlocks", [&] {
    return impl_->core.PushKvBlocks(src_cache, dst_cache_index, src_blocks, dst_blocks, ext_param);
  });
}

Status LlmDataDist::RegisterKvCache(const CacheDesc &cache_desc, const std::vector<uint64_t> &addrs,
                                    const RegisterCfg &cfg, int64_t &cache_id) {
  // cfg is reserved in CANN V2; we read the optional remote-access extension from it.
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  llmdd_ext::GetRemoteAccess(cfg, &access);
  return Guarded("RegisterKvCache",
                 [&] { return impl_->core.RegisterKvCache(cache_desc, addrs, llmdd::AccessBits(access), cache_id); });
}

Status LlmDataDist::UnregisterKvCache(int64_t cache_id) {
  return Guarded("UnregisterKvCache", [&] { return impl_->core.UnregisterKvCache(cache_id); });
}

}  // namespace llm_datadist
