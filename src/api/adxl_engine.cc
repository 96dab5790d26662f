// adxl::AdxlEngine: thin PIMPL facade over llmdd::Engine. Converts the ABI types
// (AscendString, MemHandle) and nothing else.
#include "adxl/adxl_engine.h"

#include <cinttypes>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "api/facade.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "engine/engine.h"

#include <mutex>
#include <unordered_map>

namespace adxl {

class AdxlEngine::AdxlEngineImpl {
 public:
  llmdd::Engine engine;
};

// The layouts CANN's programs were built with (the original release's
// MemDesc, with reserved[128] where local_only and reserved[127] are now).
static_assert(sizeof(MemDesc) == sizeof(uintptr_t) + sizeof(size_t) + 128, "MemDesc keeps its size");
static_assert(offsetof(MemDesc, local_only) == sizeof(uintptr_t) + sizeof(size_t), "local_only is byte 0");
static_assert(offsetof(MemDesc, reserved) == offsetof(MemDesc, local_only) + 1, "reserved follows local_only");
static_assert(sizeof(TransferArgs) == 128 && sizeof(TransferReq) == sizeof(void *), "CANN's async types");
static_assert(static_cast<int>(TransferStatus::FAILED) == 3 && RESOURCE_EXHAUSTED == 203900U, "CANN's values");

namespace {

using llmdd::Guarded;
using llmdd::ToStd;

// The live instances, for the llmdd_ext calls that take an AdxlEngine (CANN's
// header gives the class no member they could use, and its layout must stay
// CANN's): each instance records its engine here for its lifetime. The
// extension call runs under the mutex, so the engine cannot go meanwhile.
std::mutex g_instances_mutex;
std::unordered_map<const AdxlEngine *, llmdd::Engine *> g_instances;

// The engine of a live instance, or null (GetMetricsJson: the caller keeps
// the instance alive, as for any member call).
llmdd::Engine *EngineOf(const AdxlEngine &engine) {
  std::lock_guard guard(g_instances_mutex);
  auto it = g_instances.find(&engine);
  return it == g_instances.end() ? nullptr : it->second;
}

}  // namespace

AdxlEngine::AdxlEngine() : impl_(new AdxlEngineImpl()) {
  std::lock_guard guard(g_instances_mutex);
  g_instances[this] = &impl_->engine;
}

AdxlEngine::~AdxlEngine() {
  {
    std::lock_guard guard(g_instances_mutex);
    g_instances.erase(this);
  }
  if (impl_) llmdd::RunGuarded("~AdxlEngine", [&] { impl_->engine.Finalize(); });
}

Status AdxlEngine::Initialize(const AscendString &local_engine, const std::map<AscendString, AscendString> &options) {
  return Guarded("Initialize", [&] {
    return impl_->engine.Initialize(ToStd(local_engine), ToStd(options));
  });
}

void AdxlEngine::Finalize() {
  llmdd::RunGuarded("Finalize", [&] { impl_->engine.Finalize(); });
}

Status AdxlEngine::RegisterMem(const MemDesc &mem, MemType type, MemHandle &mem_handle) {
  return Guarded("RegisterMem", [&] {
    uint64_t handle = 0;
    Status status = impl_->engine.RegisterMem(mem.addr, mem.len, type, &handle, llmdd::RemoteRights(mem));
    if (status == SUCCESS) mem_handle = reinterpret_cast<MemHandle>(static_cast<uintptr_t>(handle));
    return status;
  });
}

Status AdxlEngine::DeregisterMem(MemHandle mem_handle) {
  if (mem_handle == nullptr) {
    LOG_ERROR("DeregisterMem: handle is null");
    return PARAM_INVALID;
  }
  return Guarded("DeregisterMem", [&] {
    return impl_->engine.DeregisterMem(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(mem_handle)));
  });
}

Status AdxlEngine::Connect(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("Connect", [&] { return impl_->engine.Connect(ToStd(remote_engine), timeout_in_millis); });
}

Status AdxlEngine::Disconnect(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("Disconnect", [&] { return impl_->engine.Disconnect(ToStd(remote_engine), timeout_in_millis); });
}

Status AdxlEngine::TransferSync(const AscendString &remote_engine, TransferOp operation,
                                const std::vector<TransferOpDesc> &op_descs, int32_t timeout_in_millis) {
  return Guarded("TransferSync", [&] {
    return impl_->engine.TransferSync(ToStd(remote_engine), operation, op_descs.data(), op_descs.size(),
                                      timeout_in_millis);
  });
}

Status AdxlEngine::TransferAsync(const AscendString &remote_engine, TransferOp operation,
                                 const std::vector<TransferOpDesc> &op_descs, const TransferArgs &optional_args,
                                 TransferReq &req) {
  req = nullptr;
  return Guarded("TransferAsync", [&] {
    // The reserved bytes carry only the deadline extension (llmdd/extensions.h); 0: none.
    uint32_t timeout_ms = 0;
    llmdd_ext::GetTransferTimeout(optional_args, &timeout_ms);
    uint64_t id = 0;
    Status status = impl_->engine.TransferAsync(ToStd(remote_engine), operation, op_descs.data(), op_descs.size(),
                                                nullptr, timeout_ms, &id);
    if (status == SUCCESS) req = reinterpret_cast<TransferReq>(static_cast<uintptr_t>(id));
    return status;
  });
}

Status AdxlEngine::GetTransferStatus(const TransferReq &req, TransferStatus &status) {
  status = TransferStatus::FAILED;
  return Guarded("GetTransferStatus", [&] {
    return impl_->engine.GetTransferStatus(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(req)), &status);
  });
}

Status AdxlEngine::SendNotify(const AscendString &remote_engine, const NotifyDesc &notify, int32_t timeout_in_millis) {
  return Guarded("SendNotify", [&] {
    return impl_->engine.SendNotify(ToStd(remote_engine), llmdd::ToWireNotify(notify), timeout_in_millis);
  });
}

Status AdxlEngine::GetNotifies(std::vector<NotifyDesc> &notifies) {
  return Guarded("GetNotifies", [&] {
    std::vector<llmdd::wire::Notify> received;
    Status status = impl_->engine.GetNotifies(&received);
    if (status == SUCCESS) llmdd::AppendNotifies(received, &notifies);
    return status;
  });
}

Status AdxlEngine::MallocMem(MemType type, size_t size, void **ptr) {
  return Guarded("MallocMem", [&] {
    if (ptr == nullptr) {
      LOG_ERROR("MallocMem: ptr is null");
      return PARAM_INVALID;
    }
    *ptr = nullptr;
    if (type == MEM_DEVICE) {
      LOG_ERROR("MallocMem: only MEM_HOST memory can be allocated (as in CANN)");
      return UNSUPPORTED;
    }
    if (type != MEM_HOST) {
      LOG_ERROR("MallocMem: unknown memory type %d", static_cast<int>(type));
      return PARAM_INVALID;
    }
    if (size == 0) {
      LOG_ERROR("MallocMem: size is 0");
      return PARAM_INVALID;
    }
    llmdd::HostAllocation allocation;
    if (llmdd::AllocateHostMemory(size, &allocation) != llmdd::HostAllocStatus::kOk) {
      LOG_ERROR("MallocMem: cannot map %zu bytes of host memory", size);
      return RESOURCE_EXHAUSTED;
    }
    *ptr = allocation.addr;
    LOG_DEBUG("MallocMem: %zu bytes at %p (%zu mapped, %s)", size, allocation.addr, allocation.mapped,
              allocation.huge_tlb ? "huge pages" : "ordinary pages");
    return SUCCESS;
  });
}

Status AdxlEngine::ExportToShareableHandle(void *addr, ShareableHandle &handle) {
  (void)addr;
  (void)handle;
  LOG_ERROR("ExportToShareableHandle: fabric memory is not supported by this implementation");
  return UNSUPPORTED;
}

Status AdxlEngine::FreeMem(void *ptr) {
  return Guarded("FreeMem", [&] {
    if (ptr == nullptr) {
      LOG_ERROR("FreeMem: ptr is null");
      return PARAM_INVALID;
    }
    if (!llmdd::FreeHostMemory(ptr)) {
      LOG_ERROR("FreeMem: %p was not allocated by MallocMem (or was freed already)", ptr);
      return PARAM_INVALID;
    }
    return SUCCESS;
  });
}

Status AdxlEngine::GetCapability(FeatureType feature_type, int32_t &value) {
  const int32_t feature = static_cast<int32_t>(feature_type);
  if (feature < 0) {
    LOG_ERROR("GetCapability: invalid feature %d", static_cast<int>(feature));
    value = FEATURE_NOT_SUPPORTED;
    return PARAM_INVALID;
  }
  switch (feature) {
    case CLIENT_SERVER_COMM:
      // Client-only engines (no port) connect to listening engines and move
      // data both ways; servers make no calls.
      value = FEATURE_SUPPORTED;
      break;
    case AUTO_CONNECT:
      // OPTION_AUTO_CONNECT "1" (or a channel pool in GlobalResourceConfig):
      // transfers and notifies to a remote without a channel open one.
      value = FEATURE_SUPPORTED;
      break;
    default:  // unknown features: not supported, as in CANN
      value = FEATURE_NOT_SUPPORTED;
      break;
  }
  return SUCCESS;
}

}  // namespace adxl

namespace llmdd_ext {

adxl::Status GetMetricsJson(adxl::AdxlEngine &engine, const char *&json) {
  json = "";
  return llmdd::Guarded("GetMetricsJson", [&] {
    llmdd::Engine *core = adxl::EngineOf(engine);
    if (core == nullptr) {
      LOG_ERROR("GetMetricsJson: not a live AdxlEngine (PARAM_INVALID)");
      return adxl::PARAM_INVALID;
    }
    json = llmdd::KeepForThread(core->MetricsJson());
    return adxl::SUCCESS;
  });
}

namespace {

// Copies `text` into a fixed array, cut to fit, always NUL-terminated.
template <size_t N>
void CopyCut(char (&out)[N], const std::string &text) {
  const size_t n = std::min(text.size(), N - 1);
  std::memcpy(out, text.data(), n);
  out[n] = '\0';
}

std::string Joined(const std::vector<std::string> &names) {
  std::string joined;
  for (const std::string &name : names) joined += (joined.empty() ? "" : ",") + name;
  return joined;
}

}  // namespace

adxl::Status GetPeerInfo(adxl::AdxlEngine &engine, const char *remote, PeerInfo *info) {
  if (remote == nullptr || info == nullptr) {
    LOG_ERROR("GetPeerInfo: %s is null", remote == nullptr ? "remote" : "info");
    return adxl::PARAM_INVALID;
  }
  return llmdd::Guarded("GetPeerInfo", [&] {
    llmdd::PeerFacts facts;
    {
      std::lock_guard guard(adxl::g_instances_mutex);
      auto it = adxl::g_instances.find(&engine);
      if (it == adxl::g_instances.end()) {
        LOG_ERROR("GetPeerInfo: not a live AdxlEngine");
        return adxl::PARAM_INVALID;
      }
      if (!it->second->DescribePeer(remote, &facts)) {
        LOG_ERROR("GetPeerInfo(%s): no open channel to it (Connect first)", remote);
        return adxl::NOT_CONNECTED;
      }
    }
    std::memset(info, 0, sizeof(*info));
    CopyCut(info->library_version, facts.library_version);
    info->protocol_version = facts.protocol_version;
    info->same_host = facts.same_host ? 1 : 0;
    CopyCut(info->offered, Joined(facts.offered));
    CopyCut(info->links, Joined(facts.links));
    CopyCut(info->same_host_why_not, facts.same_host_why_not);
    return adxl::SUCCESS;
  });
}

}  // namespace llmdd_ext
