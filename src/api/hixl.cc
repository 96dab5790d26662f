// hixl::Hixl: thin PIMPL facade over llmdd::Engine, the engine behind
// adxl::AdxlEngine too. Converts HIXL's ABI types (its own structs and enums,
// with adxl's values and layouts) and nothing else; HIXL's asynchronous
// connection calls run the engine's Connect/Disconnect on
// llmdd::AsyncConnects (src/engine/async_connects.h).
#include "hixl/hixl.h"

#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

#include "adxl/adxl_engine.h"
#include "api/facade.h"
#include "common/endpoint.h"
#include "common/log.h"
#include "engine/async_connects.h"
#include "engine/engine.h"

namespace hixl {

// HIXL's types carry adxl's values and layouts: the facade converts them by
// value (enums, statuses) or field by field (structs).
static_assert(SUCCESS == adxl::SUCCESS && PARAM_INVALID == adxl::PARAM_INVALID && TIMEOUT == adxl::TIMEOUT &&
                  NOT_CONNECTED == adxl::NOT_CONNECTED && ALREADY_CONNECTED == adxl::ALREADY_CONNECTED &&
                  NOTIFY_FAILED == adxl::NOTIFY_FAILED && UNSUPPORTED == adxl::UNSUPPORTED &&
                  FAILED == adxl::FAILED && RESOURCE_EXHAUSTED == adxl::RESOURCE_EXHAUSTED,
              "HIXL's status codes are ADXL's");
static_assert(static_cast<int>(MEM_DEVICE) == adxl::MEM_DEVICE && static_cast<int>(MEM_HOST) == adxl::MEM_HOST &&
                  static_cast<int>(READ) == adxl::READ && static_cast<int>(WRITE) == adxl::WRITE,
              "HIXL's enums are ADXL's");
static_assert(static_cast<int>(TransferStatus::WAITING) == static_cast<int>(adxl::TransferStatus::WAITING) &&
                  static_cast<int>(TransferStatus::COMPLETED) == static_cast<int>(adxl::TransferStatus::COMPLETED) &&
                  static_cast<int>(TransferStatus::TIMEOUT) == static_cast<int>(adxl::TransferStatus::TIMEOUT) &&
                  static_cast<int>(TransferStatus::FAILED) == static_cast<int>(adxl::TransferStatus::FAILED),
              "HIXL's TransferStatus is ADXL's");
static_assert(sizeof(MemDesc) == sizeof(adxl::MemDesc) && offsetof(MemDesc, local_only) == offsetof(adxl::MemDesc, local_only) &&
                  offsetof(MemDesc, reserved) == offsetof(adxl::MemDesc, reserved),
              "HIXL's MemDesc is laid out as ADXL's");
// CANN's layouts: every optional-argument struct is 128 bytes.
static_assert(sizeof(TransferArgs) == 128 && offsetof(TransferArgs, reserved) == sizeof(void *), "TransferArgs");
static_assert(sizeof(GetTransferStatusArgs) == 128 && offsetof(GetTransferStatusArgs, skip_waiting) == 4 &&
                  offsetof(GetTransferStatusArgs, reserved) == 5,
              "GetTransferStatusArgs");
static_assert(sizeof(TransferResult) == 128 && offsetof(TransferResult, user_data) == 8 &&
                  offsetof(TransferResult, status) == 16 && offsetof(TransferResult, reserved) == 20,
              "TransferResult");
static_assert(static_cast<int>(AsyncConnectStatus::DISCONNECTING) == 6, "AsyncConnectStatus");

namespace {

using llmdd::Guarded;
using llmdd::ToStd;

adxl::MemDesc ToAdxl(const MemDesc &mem) {
  adxl::MemDesc out;
  out.addr = mem.addr;
  out.len = mem.len;
  // local_only and the reserved bytes (where llmdd/extensions.h keeps its marker), as they are.
  std::memcpy(reinterpret_cast<uint8_t *>(&out) + offsetof(adxl::MemDesc, local_only),
              reinterpret_cast<const uint8_t *>(&mem) + offsetof(MemDesc, local_only),
              sizeof(MemDesc) - offsetof(MemDesc, local_only));
  return out;
}

std::vector<adxl::TransferOpDesc> ToAdxl(const std::vector<TransferOpDesc> &descs) {
  std::vector<adxl::TransferOpDesc> out(descs.size());
  for (size_t i = 0; i < descs.size(); ++i) {
    out[i].local_addr = descs[i].local_addr;
    out[i].remote_addr = descs[i].remote_addr;
    out[i].len = descs[i].len;
  }
  return out;
}

adxl::TransferOp ToAdxl(TransferOp op) { return static_cast<adxl::TransferOp>(static_cast<int>(op)); }

TransferReq ToReq(uint64_t id) { return reinterpret_cast<TransferReq>(static_cast<uintptr_t>(id)); }
uint64_t ToId(TransferReq req) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(req)); }

}  // namespace

class Hixl::HixlImpl {
 public:
  HixlImpl()
      : connects([this](const std::string &remote, bool connect, int32_t timeout_ms) {
          return connect ? engine.Connect(remote, timeout_ms) : engine.Disconnect(remote, timeout_ms);
        }) {}
  ~HixlImpl() { Finalize(); }

  void Finalize() {
    // Waiting connection tasks are dropped, running ones end (their timeouts
    // bound them) before the engine goes down.
    connects.Stop();
    engine.Finalize();
  }

  // The checks ConnectAsync/DisconnectAsync make before queueing, in the
  // order (and with the statuses) of the engine's Connect/Disconnect.
  Status CheckAsyncConnect(const char *call, const std::string &remote, int32_t timeout_ms, bool connect) {
    if (timeout_ms <= 0) {
      LOG_ERROR("%s(%s): timeout %d ms must be > 0", call, remote.c_str(), timeout_ms);
      return PARAM_INVALID;
    }
    if (!engine.Initialized()) {
      LOG_ERROR("%s(%s): engine not initialized", call, remote.c_str());
      return FAILED;
    }
    llmdd::Endpoint endpoint;
    std::string error;
    if (!llmdd::ParseEngineEndpoint(remote, &endpoint, &error)) {
      LOG_ERROR("%s: invalid remote engine '%s': %s", call, remote.c_str(), error.c_str());
      return PARAM_INVALID;
    }
    if (connect && !endpoint.HasListenPort()) {
      LOG_ERROR("%s: remote engine '%s' has no port, so it cannot be listening", call, remote.c_str());
      return PARAM_INVALID;
    }
    if (connect && remote == engine.LocalId()) {
      LOG_ERROR("%s: '%s' is this engine itself", call, remote.c_str());
      return PARAM_INVALID;
    }
    return SUCCESS;
  }

  llmdd::Engine engine;
  llmdd::AsyncConnects connects;  // after the engine: its tasks call it
};

namespace {
// The live instances, for llmdd_ext::GetMetricsJson (as adxl::AdxlEngine's).
std::mutex g_instances_mutex;
std::unordered_map<const Hixl *, llmdd::Engine *> g_instances;

llmdd::Engine *EngineOf(const Hixl &engine) {
  std::lock_guard guard(g_instances_mutex);
  auto it = g_instances.find(&engine);
  return it == g_instances.end() ? nullptr : it->second;
}
}  // namespace

Hixl::Hixl() : impl_(new HixlImpl()) {
  std::lock_guard guard(g_instances_mutex);
  g_instances[this] = &impl_->engine;
}

Hixl::~Hixl() {
  {
    std::lock_guard guard(g_instances_mutex);
    g_instances.erase(this);
  }
  if (impl_) llmdd::RunGuarded("~Hixl", [&] { impl_->Finalize(); });
}

Status Hixl::Initialize(const AscendString &local_engine, const std::map<AscendString, AscendString> &options) {
  return Guarded("Initialize", [&] {
    if (impl_->engine.Initialized()) {
      LOG_INFO("engine %s already initialized; Initialize ignored", impl_->engine.LocalId().c_str());
      return SUCCESS;
    }
    // The engine reads GlobalResourceConfig (its channel pool and our
    // connect pool: engine_config.h, one parser) and refuses a bad one.
    Status status = impl_->engine.Initialize(ToStd(local_engine), ToStd(options));
    if (status != SUCCESS) return status;
    status = impl_->connects.Start(impl_->engine.Config().connect_pool);
    if (status != SUCCESS) {
      LOG_ERROR("Initialize: cannot set up the asynchronous connection pool (RESOURCE_EXHAUSTED)");
      impl_->engine.Finalize();
    }
    return status;
  });
}

void Hixl::Finalize() {
  llmdd::RunGuarded("Finalize", [&] { impl_->Finalize(); });
}

Status Hixl::RegisterMem(const MemDesc &mem, MemType type, MemHandle &mem_handle) {
  return Guarded("RegisterMem", [&] {
    const adxl::MemDesc desc = ToAdxl(mem);
    uint64_t handle = 0;
    Status status = impl_->engine.RegisterMem(desc.addr, desc.len, static_cast<adxl::MemType>(static_cast<int>(type)),
                                              &handle, llmdd::RemoteRights(desc));
    if (status == SUCCESS) mem_handle = reinterpret_cast<MemHandle>(static_cast<uintptr_t>(handle));
    return status;
  });
}

Status Hixl::DeregisterMem(MemHandle mem_handle) {
  if (mem_handle == nullptr) {
    LOG_ERROR("DeregisterMem: handle is null");
    return PARAM_INVALID;
  }
  return Guarded("DeregisterMem", [&] {
    return impl_->engine.DeregisterMem(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(mem_handle)));
  });
}

Status Hixl::Connect(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("Connect", [&] { return impl_->engine.Connect(ToStd(remote_engine), timeout_in_millis); });
}

Status Hixl::Disconnect(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("Disconnect", [&] { return impl_->engine.Disconnect(ToStd(remote_engine), timeout_in_millis); });
}

Status Hixl::ConnectAsync(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("ConnectAsync", [&] {
    const std::string remote = ToStd(remote_engine);
    Status status = impl_->CheckAsyncConnect("ConnectAsync", remote, timeout_in_millis, true);
    if (status != SUCCESS) return status;
    return impl_->connects.Submit(remote, true, timeout_in_millis);
  });
}

Status Hixl::DisconnectAsync(const AscendString &remote_engine, int32_t timeout_in_millis) {
  return Guarded("DisconnectAsync", [&] {
    const std::string remote = ToStd(remote_engine);
    Status status = impl_->CheckAsyncConnect("DisconnectAsync", remote, timeout_in_millis, false);
    if (status != SUCCESS) return status;
    return impl_->connects.Submit(remote, false, timeout_in_millis);
  });
}

Status Hixl::GetAsyncConnectStatus(const AscendString &remote_engine, AsyncConnectStatus &status) {
  status = AsyncConnectStatus::NOT_CONNECT;
  return Guarded("GetAsyncConnectStatus", [&] {
    if (!impl_->engine.Initialized()) {
      LOG_ERROR("GetAsyncConnectStatus(%s): engine not initialized", remote_engine.GetString());
      return FAILED;
    }
    status = impl_->connects.Status(ToStd(remote_engine));
    return SUCCESS;
  });
}

Status Hixl::GetAsyncConnectStatus(std::map<AscendString, AsyncConnectStatus> &statuses) {
  return Guarded("GetAsyncConnectStatus", [&] {
    statuses.clear();
    if (!impl_->engine.Initialized()) {
      LOG_ERROR("GetAsyncConnectStatus: engine not initialized");
      return FAILED;
    }
    for (const auto &entry : impl_->connects.Statuses()) {
      statuses.emplace(AscendString(entry.first.c_str(), entry.first.size()), entry.second);
    }
    return SUCCESS;
  });
}

Status Hixl::TransferSync(const AscendString &remote_engine, TransferOp operation,
                          const std::vector<TransferOpDesc> &op_descs, int32_t timeout_in_millis) {
  return Guarded("TransferSync", [&] {
    const std::vector<adxl::TransferOpDesc> descs = ToAdxl(op_descs);
    return impl_->engine.TransferSync(ToStd(remote_engine), ToAdxl(operation), descs.data(), descs.size(),
                                      timeout_in_millis);
  });
}

Status Hixl::TransferAsync(const AscendString &remote_engine, TransferOp operation,
                           const std::vector<TransferOpDesc> &op_descs, const TransferArgs &optional_args,
                           TransferReq &req) {
  req = nullptr;
  return Guarded("TransferAsync", [&] {
    const std::vector<adxl::TransferOpDesc> descs = ToAdxl(op_descs);
    // The reserved bytes carry only the deadline extension (llmdd/extensions.h); 0: none.
    uint32_t timeout_ms = 0;
    llmdd_ext::GetTransferTimeout(optional_args, &timeout_ms);
    uint64_t id = 0;
    Status status = impl_->engine.TransferAsync(ToStd(remote_engine), ToAdxl(operation), descs.data(), descs.size(),
                                                optional_args.user_data, timeout_ms, &id);
    if (status == SUCCESS) req = ToReq(id);
    return status;
  });
}

Status Hixl::GetTransferStatus(const TransferReq &req, TransferStatus &status) {
  status = TransferStatus::FAILED;
  return Guarded("GetTransferStatus", [&] {
    adxl::TransferStatus engine_status = adxl::TransferStatus::FAILED;
    Status ret = impl_->engine.GetTransferStatus(ToId(req), &engine_status);
    status = static_cast<TransferStatus>(static_cast<int>(engine_status));
    return ret;
  });
}

Status Hixl::GetTransferStatus(const GetTransferStatusArgs &args, std::vector<TransferResult> &results) {
  return Guarded("GetTransferStatus", [&] {
    results.clear();
    std::vector<llmdd::AsyncRequests::Result> found;
    Status status = impl_->engine.GetTransferStatuses(args.max_query_count, args.skip_waiting, &found);
    results.resize(found.size());
    for (size_t i = 0; i < found.size(); ++i) {
      results[i].req = ToReq(found[i].id);
      results[i].user_data = found[i].user_data;
      results[i].status = static_cast<TransferStatus>(static_cast<int>(found[i].status));
    }
    return status;
  });
}

Status Hixl::SendNotify(const AscendString &remote_engine, const NotifyDesc &notify, int32_t timeout_in_millis) {
  return Guarded("SendNotify", [&] {
    return impl_->engine.SendNotify(ToStd(remote_engine), llmdd::ToWireNotify(notify), timeout_in_millis);
  });
}

Status Hixl::GetNotifies(std::vector<NotifyDesc> &notifies) {
  return Guarded("GetNotifies", [&] {
    std::vector<llmdd::wire::Notify> received;
    Status status = impl_->engine.GetNotifies(&received);
    if (status == SUCCESS) llmdd::AppendNotifies(received, &notifies);
    return status;
  });
}

Status Hixl::GetCapability(FeatureType feature_type, int32_t &value) {
  // One answer for both names: the engine is the same.
  return adxl::AdxlEngine::GetCapability(static_cast<adxl::FeatureType>(static_cast<int32_t>(feature_type)), value);
}

}  // namespace hixl

namespace llmdd_ext {

hixl::Status GetMetricsJson(hixl::Hixl &engine, const char *&json) {
  json = "";
  return llmdd::Guarded("GetMetricsJson", [&] {
    llmdd::Engine *core = hixl::EngineOf(engine);
    if (core == nullptr) {
      LOG_ERROR("GetMetricsJson: not a live Hixl (PARAM_INVALID)");
      return hixl::PARAM_INVALID;
    }
    json = llmdd::KeepForThread(core->MetricsJson());
    return hixl::SUCCESS;
  });
}

}  // namespace llmdd_ext
