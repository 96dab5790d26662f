// Install test client for llm_datadist/llm_datadist.h, built against the
// *installed* package only (C++11, -Werror, both _GLIBCXX_USE_CXX11_ABI values).
//
// It always compiles the documented idioms of the CANN samples and checks the
// public constants at compile time. The run-time part that needs the
// LLM-DataDist implementation is compiled only with -DLLMDD_CLIENT_RUN_DATADIST
// (run_install_test.sh defines it once the installed library exports
// llm_datadist::LlmDataDist). Prints "llm_datadist_client OK" on success.
#include <cstdint>
#include <cstdio>
#include <map>
#include <type_traits>
#include <utility>
#include <vector>

#include "adxl/adxl_engine.h"
#include "llm_datadist/llm_datadist.h"

using llm_datadist::AscendString;
using llm_datadist::Cache;
using llm_datadist::CacheDesc;
using llm_datadist::CacheIndex;
using llm_datadist::CachePlacement;
using llm_datadist::ClusterInfo;
using llm_datadist::IpInfo;
using llm_datadist::KvCacheExtParam;
using llm_datadist::LlmRole;
using llm_datadist::RegisterCfg;
using llm_datadist::Status;

// ---- compile-time contract -------------------------------------------------
static_assert(std::is_same<Status, uint32_t>::value, "Status is uint32_t");
static_assert(std::is_same<adxl::Status, ge::Status>::value, "adxl::Status is ge::Status");
static_assert(llm_datadist::LLM_SUCCESS == 0U, "LLM_SUCCESS");
static_assert(llm_datadist::LLM_FAILED == 0xFFFFFFFFU && llm_datadist::LLM_FAILED == ge::FAILED, "LLM_FAILED");
static_assert(llm_datadist::LLM_WAIT_PROC_TIMEOUT == 0x5010B001U, "LLM_WAIT_PROC_TIMEOUT");
static_assert(llm_datadist::LLM_KV_CACHE_NOT_EXIST == 0x5010B002U, "LLM_KV_CACHE_NOT_EXIST");
static_assert(llm_datadist::LLM_PARAM_INVALID == 0x5010B005U, "LLM_PARAM_INVALID");
static_assert(llm_datadist::LLM_NOT_YET_LINK == 0x5010B007U, "LLM_NOT_YET_LINK");
static_assert(llm_datadist::LLM_ALREADY_LINK == 0x5010B008U, "LLM_ALREADY_LINK");
static_assert(llm_datadist::LLM_EXIST_LINK == 0x5010B018U, "LLM_EXIST_LINK");
static_assert(llm_datadist::LLM_FEATURE_NOT_ENABLED == 0x5010B019U, "LLM_FEATURE_NOT_ENABLED");
static_assert(llm_datadist::LLM_TIMEOUT == 0x5010B01AU, "LLM_TIMEOUT");
static_assert(llm_datadist::LLM_OUT_OF_MEMORY == 0x5010B01CU, "LLM_OUT_OF_MEMORY");
static_assert(adxl::SUCCESS == 0U && adxl::PARAM_INVALID == 103900U && adxl::TIMEOUT == 103901U, "adxl codes");
static_assert(adxl::NOT_CONNECTED == 103902U && adxl::ALREADY_CONNECTED == 103903U, "adxl codes");
static_assert(adxl::NOTIFY_FAILED == 103904U && adxl::UNSUPPORTED == 103905U && adxl::FAILED == 503900U,
              "adxl codes");
static_assert(adxl::MEM_DEVICE == 0 && adxl::MEM_HOST == 1 && adxl::READ == 0 && adxl::WRITE == 1, "adxl enums");
static_assert(static_cast<int32_t>(LlmRole::kPrompt) == 1 && static_cast<int32_t>(LlmRole::kDecoder) == 2 &&
                  static_cast<int32_t>(LlmRole::kMix) == 3,
              "LlmRole values");
static_assert(static_cast<uint32_t>(CachePlacement::kHost) == 0U &&
                  static_cast<uint32_t>(CachePlacement::kDevice) == 1U,
              "CachePlacement values");
static_assert(llm_datadist::DT_FLOAT == 0 && llm_datadist::DT_FLOAT16 == 1 && llm_datadist::DT_INT8 == 2 &&
                  llm_datadist::DT_INT32 == 3 && llm_datadist::DT_BF16 == 27 && llm_datadist::DT_UNDEFINED == 28,
              "DataType values");
static_assert(std::is_same<llm_datadist::DataType, ge::DataType>::value, "DataType is ge::DataType");
// CANN's newest MemDesc: local_only took byte 0 of the original reserved[128]; same size.
static_assert(sizeof(adxl::MemDesc::reserved) == 127U && sizeof(adxl::MemDesc::local_only) == 1U &&
                  sizeof(adxl::MemDesc) == sizeof(uintptr_t) + sizeof(size_t) + 128U && sizeof(RegisterCfg) == 128U,
              "reserved sizes");
static_assert(sizeof(KvCacheExtParam::reserved) == 127U, "KvCacheExtParam reserved size");
static_assert(std::is_trivially_copyable<CacheIndex>::value, "CacheIndex is a plain aggregate");

namespace {

int g_failures = 0;

void Check(bool ok, const char *what) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "llm_datadist_client: FAILED: %s\n", what);
  }
}

// The idioms of the CANN samples, exactly as users write them.
struct Idioms {
  CacheIndex cache_index;
  KvCacheExtParam ext;
  RegisterCfg cfg;
  ClusterInfo cluster;
  CacheDesc desc;
  Cache cache;
  std::map<AscendString, AscendString> options;
  std::vector<Status> rets;
};

void BuildIdioms(Idioms &out) {
// `CacheIndex cache_index{1, 1, 0};` (CANN samples and docs) leaves `reserved`
// to value-initialisation, which GCC/Clang's -Wextra reports as
// -Wmissing-field-initializers. The header cannot avoid that without giving up
// C++11 aggregate initialisation, so the warning is silenced for this idiom only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
  CacheIndex cache_index{1, 1, 0};
#pragma GCC diagnostic pop
  CacheIndex zeroed = {};
  Check(cache_index.cluster_id == 1U && cache_index.cache_id == 1 && cache_index.batch_index == 0U,
        "CacheIndex brace initialisation");
  Check(zeroed.cluster_id == 0U && zeroed.cache_id == 0 && zeroed.reserved[127] == 0U, "CacheIndex = {}");
  out.cache_index = cache_index;

  KvCacheExtParam ext{};
  Check(ext.src_layer_range.first == -1 && ext.src_layer_range.second == -1 && ext.dst_layer_range.first == -1 &&
            ext.tensor_num_per_layer == 2U,
        "KvCacheExtParam defaults");
  ext.src_layer_range = std::make_pair(0, 0);
  ext.dst_layer_range = std::pair<int32_t, int32_t>(0, 0);
  ext.tensor_num_per_layer = 1U;
  out.ext = ext;

  RegisterCfg cfg{};
  Check(cfg.reserved[0] == 0U, "RegisterCfg{}");
  out.cfg = cfg;

  IpInfo local_ip;
  local_ip.ip = "127.0.0.1";
  IpInfo remote_ip;
  remote_ip.ip = "127.0.0.1";
  remote_ip.port = 26000;
  ClusterInfo cluster;
  Check(cluster.remote_cluster_id == 0U && cluster.remote_role_type == 0 && local_ip.port == 0U,
        "ClusterInfo/IpInfo defaults");
  cluster.remote_cluster_id = 1;
  cluster.remote_role_type = 0;
  cluster.local_ip_infos.emplace_back(local_ip);
  cluster.remote_ip_infos.push_back(remote_ip);
  out.cluster = cluster;

  CacheDesc desc;
  Check(desc.placement == CachePlacement::kDevice && desc.num_tensors == 0U &&
            desc.data_type == llm_datadist::DT_UNDEFINED,
        "CacheDesc defaults");
  desc.placement = CachePlacement::kHost;
  desc.num_tensors = 2;
  desc.data_type = llm_datadist::DT_INT32;
  desc.shape = {8, 16};
  out.desc = desc;

  Cache cache;
  Check(cache.cache_id == -1, "Cache default id");
  cache.cache_desc = desc;
  out.cache = cache;

  std::map<AscendString, AscendString> options;
  options[llm_datadist::OPTION_DEVICE_ID] = "0";
  options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = "1000";
  options["llm.ListenIpInfo"] = "127.0.0.1:26000";
  Check(options.size() == 3U && options[llm_datadist::OPTION_LISTEN_IP_INFO] == "127.0.0.1:26000",
        "options map");
  out.options = options;

  std::vector<Status> rets;
  rets.push_back(llm_datadist::LLM_SUCCESS);
  out.rets = rets;

  llm_datadist::DataType types[] = {llm_datadist::DT_FLOAT16, llm_datadist::DT_BF16, llm_datadist::DT_FLOAT,
                                    llm_datadist::DT_INT8, llm_datadist::DT_UINT8};
  Check(types[0] != types[1], "DataType re-exports");
}

#ifdef LLMDD_CLIENT_RUN_DATADIST
// Only calls whose results the spec fixes without a peer (spec 2.3, 2.7).
void RunDataDist(const Idioms &idioms) {
  using namespace llm_datadist;
  {
    LlmDataDist not_initialized(1, LlmRole::kPrompt);
    int64_t id = 0;
    std::vector<uint64_t> addrs(2, 0x1000U);
    Check(not_initialized.RegisterKvCache(idioms.desc, addrs, idioms.cfg, id) == LLM_FAILED,
          "RegisterKvCache before Initialize -> LLM_FAILED");
    Cache cache;
    Check(not_initialized.AllocateCache(idioms.desc, cache) == LLM_FEATURE_NOT_ENABLED,
          "AllocateCache -> LLM_FEATURE_NOT_ENABLED");
  }

  LlmDataDist datadist(2, LlmRole::kDecoder);
  std::map<AscendString, AscendString> no_device;
  Check(datadist.Initialize(no_device) == LLM_PARAM_INVALID, "Initialize without DeviceId -> LLM_PARAM_INVALID");
  std::map<AscendString, AscendString> options;
  options[OPTION_DEVICE_ID] = "0";
  Status st = datadist.Initialize(options);
  Check(st == LLM_SUCCESS, "Initialize(client, DeviceId 0)");
  if (st != LLM_SUCCESS) {
    return;
  }

  std::vector<int32_t> k(8 * 16, 1);
  std::vector<int32_t> v(8 * 16, 2);
  std::vector<uint64_t> addrs;
  addrs.push_back(reinterpret_cast<uintptr_t>(k.data()));
  addrs.push_back(reinterpret_cast<uintptr_t>(v.data()));
  int64_t cache_id = 0;
  Check(datadist.RegisterKvCache(idioms.desc, addrs, idioms.cfg, cache_id) == LLM_SUCCESS && cache_id == 1,
        "RegisterKvCache -> id 1");
  CacheDesc bad = idioms.desc;
  bad.data_type = DT_UNDEFINED;
  int64_t bad_id = 0;
  Check(datadist.RegisterKvCache(bad, addrs, idioms.cfg, bad_id) == LLM_PARAM_INVALID,
        "RegisterKvCache DT_UNDEFINED -> LLM_PARAM_INVALID");

  Cache dst;
  dst.cache_id = cache_id;
  CacheIndex src = idioms.cache_index;
  src.cluster_id = 7;
  Check(datadist.PullKvCache(src, dst) == LLM_NOT_YET_LINK, "PullKvCache without link -> LLM_NOT_YET_LINK");

  Check(datadist.UnregisterKvCache(cache_id) == LLM_SUCCESS, "UnregisterKvCache");
  Check(datadist.UnregisterKvCache(12345) == LLM_SUCCESS, "UnregisterKvCache(unknown) -> LLM_SUCCESS");
  datadist.Finalize();
}
#endif

}  // namespace

int main() {
  Idioms idioms;
  BuildIdioms(idioms);
#ifdef LLMDD_CLIENT_RUN_DATADIST
  RunDataDist(idioms);
#else
  std::printf("llm_datadist_client: LlmDataDist run-time checks not compiled in (LLMDD_CLIENT_RUN_DATADIST)\n");
#endif
  if (g_failures != 0) {
    std::fprintf(stderr, "llm_datadist_client: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("llm_datadist_client OK\n");
  return 0;
}
