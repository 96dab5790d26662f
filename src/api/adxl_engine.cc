// adxl::AdxlEngine: thin PIMPL facade over llmdd::Engine. Converts the ABI types
// (AscendString, MemHandle) and nothing else.
#include "adxl/adxl_engine.h"

#include <string>

#include "common/log.h"
#include "common/threads.h"
#include "engine/engine.h"
#include "llmdd/extensions.h"

namespace adxl {

class AdxlEngine::AdxlEngineImpl {
 public:
  llmdd::Engine engine;
};

namespace {

std::string ToStd(const AscendString &s) { return std::string(s.GetString(), s.GetLength()); }

// No exception crosses the ABI: out of memory is RESOURCE_EXHAUSTED, anything else FAILED (both logged).
template <typename Call>
Status Guarded(const char *name, Call &&call) {
  return llmdd::CallGuarded<Status>(name, RESOURCE_EXHAUSTED, FAILED, std::forward<Call>(call));
}

}  // namespace

AdxlEngine::AdxlEngine() : impl_(new AdxlEngineImpl()) {}

AdxlEngine::~AdxlEngine() {
  if (impl_) llmdd::RunGuarded("~AdxlEngine", [&] { impl_->engine.Finalize(); });
}

Status AdxlEngine::Initialize(const AscendString &local_engine, const std::map<AscendString, AscendString> &options) {
  return Guarded("Initialize", [&] {
    std::map<std::string, std::string> converted;
    for (const auto &kv : options) converted[ToStd(kv.first)] = ToStd(kv.second);
    return impl_->engine.Initialize(ToStd(local_engine), converted);
  });
}

void AdxlEngine::Finalize() {
  llmdd::RunGuarded("Finalize", [&] { impl_->engine.Finalize(); });
}

Status AdxlEngine::RegisterMem(const MemDesc &mem, MemType type, MemHandle &mem_handle) {
  return Guarded("RegisterMem", [&] {
    uint64_t handle = 0;
    llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
    llmdd_ext::GetRemoteAccess(mem.reserved, &access);
    Status status = impl_->engine.RegisterMem(mem.addr, mem.len, type, &handle, llmdd::AccessBits(access));
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

}  // namespace adxl
