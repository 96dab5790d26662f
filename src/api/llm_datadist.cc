// llm_datadist::LlmDataDist: thin PIMPL facade over llmdd::datadist::DataDist.
// Converts the ABI types and implements the V1-only stubs.
#include "llm_datadist/llm_datadist.h"

#include <mutex>
#include <string>
#include <unordered_map>

#include "common/log.h"
#include "common/threads.h"
#include "api/facade.h"
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

// The live instances, for the llmdd_ext calls that take an LlmDataDist: CANN's
// header gives the class no member they could use and no friend, and its
// layout must stay CANN's, so each instance records its core here for its
// lifetime. One lookup under a mutex per extension call.
std::mutex g_instances_mutex;
std::unordered_map<const LlmDataDist *, llmdd::datadist::DataDist *> g_instances;

llmdd::datadist::DataDist *CoreOf(const LlmDataDist &datadist) {
  std::lock_guard guard(g_instances_mutex);
  auto it = g_instances.find(&datadist);
  return it == g_instances.end() ? nullptr : it->second;
}

llmdd::datadist::CacheKeyId ToKeyId(const llmdd_ext::CacheKey &key) {
  return llmdd::datadist::CacheKeyId{key.kind, key.cluster_id, key.model_id, key.req_id, key.prefix_id};
}

// RegisterCfg's remote-access marker as engine access bits (default read-write).
uint32_t AccessOf(const RegisterCfg &cfg) {
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  llmdd_ext::GetRemoteAccess(cfg, &access);
  return llmdd::AccessBits(access);
}

}  // namespace

LlmDataDist::LlmDataDist(uint64_t cluster_id, LlmRole role) : impl_(new LlmDataDistImpl(cluster_id, role)) {
  std::lock_guard guard(g_instances_mutex);
  g_instances[this] = &impl_->core;
}

LlmDataDist::~LlmDataDist() {
  std::lock_guard guard(g_instances_mutex);
  g_instances.erase(this);
}

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
  return Guarded("RegisterKvCache",
                 [&] { return impl_->core.RegisterKvCache(cache_desc, addrs, AccessOf(cfg), cache_id); });
}

Status LlmDataDist::UnregisterKvCache(int64_t cache_id) {
  return Guarded("UnregisterKvCache", [&] { return impl_->core.UnregisterKvCache(cache_id); });
}

}  // namespace llm_datadist

// ---------------------------------------------------------------- llmdd/extensions.h

namespace llmdd_ext {

using llm_datadist::Status;

Status RegisterKvCacheWithKeys(llm_datadist::LlmDataDist &datadist, const llm_datadist::CacheDesc &cache_desc,
                               const std::vector<uint64_t> &addrs, const llm_datadist::RegisterCfg &cfg,
                               const std::vector<CacheKey> &keys, int64_t &cache_id) {
  return llm_datadist::Guarded("RegisterKvCacheWithKeys", [&] {
    llmdd::datadist::DataDist *core = llm_datadist::CoreOf(datadist);
    if (core == nullptr) {
      LOG_ERROR("RegisterKvCacheWithKeys: not a live LlmDataDist");
      return llm_datadist::LLM_PARAM_INVALID;
    }
    std::vector<llmdd::datadist::CacheKeyId> ids;
    ids.reserve(keys.size());
    for (const CacheKey &key : keys) ids.push_back(llm_datadist::ToKeyId(key));
    return core->RegisterKvCache(cache_desc, addrs, llm_datadist::AccessOf(cfg), cache_id, ids);
  });
}

Status FindRemoteCache(llm_datadist::LlmDataDist &datadist, const CacheKey &key, bool refresh,
                       llm_datadist::CacheIndex &index) {
  return llm_datadist::Guarded("FindRemoteCache", [&] {
    llmdd::datadist::DataDist *core = llm_datadist::CoreOf(datadist);
    if (core == nullptr) {
      LOG_ERROR("FindRemoteCache: not a live LlmDataDist");
      return llm_datadist::LLM_PARAM_INVALID;
    }
    return core->FindRemoteCache(llm_datadist::ToKeyId(key), refresh, &index);
  });
}

Status GetMetricsJson(llm_datadist::LlmDataDist &datadist, const char *&json) {
  json = "";
  return llm_datadist::Guarded("GetMetricsJson", [&] {
    llmdd::datadist::DataDist *core = llm_datadist::CoreOf(datadist);
    if (core == nullptr) {
      LOG_ERROR("GetMetricsJson: not a live LlmDataDist (LLM_PARAM_INVALID)");
      return llm_datadist::LLM_PARAM_INVALID;
    }
    std::string text;
    if (!core->MetricsJson(&text)) {
      LOG_ERROR("GetMetricsJson: LlmDataDist is not initialized (LLM_FAILED)");
      return llm_datadist::LLM_FAILED;
    }
    json = llmdd::KeepForThread(std::move(text));
    return llm_datadist::LLM_SUCCESS;
  });
}

const char *LastErrors() { return llmdd::ThreadErrors().c_str(); }

void ClearLastErrors() { llmdd::ClearThreadErrors(); }

}  // namespace llmdd_ext
