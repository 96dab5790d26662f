// hixl.hixl: CANN's `hixl` Python module (docs/PYTHON.md, "The hixl module")
// over this library's hixl::Hixl (include/hixl/hixl.h). The Python package
// python/hixl re-exports everything here, as CANN's package does.
//
// As in CANN's module, nothing here raises on an engine failure: every call
// returns the C++ status (an int) or a (status, value) tuple. Wrong argument
// types are TypeError and out-of-range ints (a negative length, a timeout
// beyond int32) are TypeError/OverflowError from the conversion, before any
// native call.
//
// Contracts:
// - Every method that can block releases the GIL (nb::call_guard): arguments
//   are converted before and results after, with the GIL held. connect,
//   disconnect, transfer_sync and send_notify release it themselves and, on
//   the main thread, return on Ctrl-C at once (interruptible.h).
// - Several Python threads may call one Hixl at once (the C++ calls are
//   thread-safe); finalize() takes the object exclusively, so it waits for
//   the calls in flight (each bounded by its timeout) and later calls return
//   FAILED: finalizing while other threads transfer never crashes.
// - Handles and request ids are ints (the C++ pointers), as in CANN.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "hixl/hixl.h"
#include "interruptible.h"
#include "llmdd/extensions.h"

namespace nb = nanobind;

namespace {

using Gil = nb::call_guard<nb::gil_scoped_release>;
using Options = std::map<std::string, std::string>;
constexpr int32_t kDefaultTimeoutMs = 1000;  // CANN's default for every timeout_in_millis

hixl::AscendString Ascend(const std::string &s) { return hixl::AscendString(s.data(), s.size()); }
std::string Text(const hixl::AscendString &s) { return std::string(s.GetString(), s.GetLength()); }

// One hixl::Hixl per Python Hixl. The engine is created by initialize() and
// destroyed by finalize(), so a finalized object can be initialized again.
class PyHixl {
  struct Core;  // below

 public:
  PyHixl() = default;
  ~PyHixl() { Finalize(); }
  PyHixl(const PyHixl &) = delete;
  PyHixl &operator=(const PyHixl &) = delete;

  // The blocking calls Ctrl-C interrupts (interruptible.h): GIL held on
  // entry. transfer_sync runs here with a canceler (RunTransfer); the others
  // run on a helper thread when called from the main thread
  // (RunInterruptibly), which keeps the state alive (core_), not `this`.
  uint32_t ConnectInterruptibly(const std::string &remote, int32_t timeout_ms) {
    std::shared_ptr<Core> core = core_;
    return llmdd_py::RunInterruptibly<uint32_t>(
        [core, remote, timeout_ms] { return Connect(*core, remote, timeout_ms); });
  }
  uint32_t DisconnectInterruptibly(const std::string &remote, int32_t timeout_ms) {
    std::shared_ptr<Core> core = core_;
    return llmdd_py::RunInterruptibly<uint32_t>(
        [core, remote, timeout_ms] { return Disconnect(*core, remote, timeout_ms); });
  }
  uint32_t TransferSyncInterruptibly(const std::string &remote, hixl::TransferOp op,
                                     const std::vector<hixl::TransferOpDesc> &descs, int32_t timeout_ms) {
    return llmdd_py::RunTransfer<uint32_t>([&] { return TransferSync(*core_, remote, op, descs, timeout_ms); });
  }
  uint32_t SendNotifyInterruptibly(const std::string &remote, const hixl::NotifyDesc &notify, int32_t timeout_ms) {
    std::shared_ptr<Core> core = core_;
    return llmdd_py::RunInterruptibly<uint32_t>(
        [core, remote, notify, timeout_ms] { return SendNotify(*core, remote, notify, timeout_ms); });
  }

  uint32_t Initialize(const std::string &local_engine, const Options &options) {
    std::unique_lock<std::shared_mutex> lock(core_->mutex);
    if (core_->engine) return hixl::SUCCESS;  // CANN: a second initialize succeeds and changes nothing
    auto engine = std::make_unique<hixl::Hixl>();
    std::map<hixl::AscendString, hixl::AscendString> ascend;
    for (const auto &kv : options) ascend[Ascend(kv.first)] = Ascend(kv.second);
    const hixl::Status status = engine->Initialize(Ascend(local_engine), ascend);
    if (status == hixl::SUCCESS) core_->engine = std::move(engine);
    return status;
  }

  void Finalize() {
    std::unique_ptr<hixl::Hixl> engine;
    {
      std::unique_lock<std::shared_mutex> lock(core_->mutex);  // waits for the calls in flight
      engine = std::move(core_->engine);
      if (engine) engine->Finalize();
    }
  }

  // (SUCCESS, the metrics snapshot as a dict: llmdd_ext::GetMetricsJson,
  // docs/METRICS.md), or (FAILED, None) when not initialized. An extension:
  // CANN's hixl package has no such call.
  std::pair<uint32_t, std::string> MetricsJson() {
    Hold hold(*core_);
    if (!hold.engine) return {hixl::FAILED, std::string()};
    const char *json = "";
    const hixl::Status status = llmdd_ext::GetMetricsJson(*hold.engine, json);
    return {status, std::string(json)};
  }

  std::pair<uint32_t, uintptr_t> RegisterMem(const hixl::MemDesc &mem, hixl::MemType type) {
    Hold hold(*core_);
    if (!hold.engine) return {hixl::FAILED, 0};
    hixl::MemHandle handle = nullptr;
    const hixl::Status status = hold.engine->RegisterMem(mem, type, handle);
    return {status, reinterpret_cast<uintptr_t>(handle)};
  }

  uint32_t DeregisterMem(uintptr_t handle) {
    Hold hold(*core_);
    return hold.engine ? hold.engine->DeregisterMem(reinterpret_cast<hixl::MemHandle>(handle)) : hixl::FAILED;
  }

  static uint32_t Connect(Core &core, const std::string &remote, int32_t timeout_ms) {
    Hold hold(core);
    return hold.engine ? hold.engine->Connect(Ascend(remote), timeout_ms) : hixl::FAILED;
  }

  static uint32_t Disconnect(Core &core, const std::string &remote, int32_t timeout_ms) {
    Hold hold(core);
    return hold.engine ? hold.engine->Disconnect(Ascend(remote), timeout_ms) : hixl::FAILED;
  }

  uint32_t ConnectAsync(const std::string &remote, int32_t timeout_ms) {
    Hold hold(*core_);
    return hold.engine ? hold.engine->ConnectAsync(Ascend(remote), timeout_ms) : hixl::FAILED;
  }

  uint32_t DisconnectAsync(const std::string &remote, int32_t timeout_ms) {
    Hold hold(*core_);
    return hold.engine ? hold.engine->DisconnectAsync(Ascend(remote), timeout_ms) : hixl::FAILED;
  }

  std::pair<uint32_t, hixl::AsyncConnectStatus> GetAsyncConnectStatus(const std::string &remote) {
    Hold hold(*core_);
    hixl::AsyncConnectStatus status = hixl::AsyncConnectStatus::NOT_CONNECT;
    if (!hold.engine) return {hixl::FAILED, status};
    const hixl::Status ret = hold.engine->GetAsyncConnectStatus(Ascend(remote), status);
    return {ret, status};
  }

  std::pair<uint32_t, std::map<std::string, hixl::AsyncConnectStatus>> GetAllAsyncConnectStatus() {
    Hold hold(*core_);
    std::map<std::string, hixl::AsyncConnectStatus> out;
    if (!hold.engine) return {hixl::FAILED, out};
    std::map<hixl::AscendString, hixl::AsyncConnectStatus> statuses;
    const hixl::Status ret = hold.engine->GetAsyncConnectStatus(statuses);
    for (const auto &kv : statuses) out[Text(kv.first)] = kv.second;
    return {ret, out};
  }

  static uint32_t TransferSync(Core &core, const std::string &remote, hixl::TransferOp op,
                               const std::vector<hixl::TransferOpDesc> &descs, int32_t timeout_ms) {
    Hold hold(core);
    return hold.engine ? hold.engine->TransferSync(Ascend(remote), op, descs, timeout_ms) : hixl::FAILED;
  }

  std::pair<uint32_t, uintptr_t> TransferAsync(const std::string &remote, hixl::TransferOp op,
                                               const std::vector<hixl::TransferOpDesc> &descs,
                                               const hixl::TransferArgs &args) {
    Hold hold(*core_);
    if (!hold.engine) return {hixl::FAILED, 0};
    hixl::TransferReq req = nullptr;
    const hixl::Status status = hold.engine->TransferAsync(Ascend(remote), op, descs, args, req);
    return {status, status == hixl::SUCCESS ? reinterpret_cast<uintptr_t>(req) : 0};
  }

  std::pair<uint32_t, hixl::TransferStatus> GetTransferStatus(uintptr_t req) {
    Hold hold(*core_);
    hixl::TransferStatus status = hixl::TransferStatus::FAILED;  // CANN: what an unknown request reads
    if (!hold.engine) return {hixl::FAILED, status};
    const hixl::Status ret = hold.engine->GetTransferStatus(reinterpret_cast<hixl::TransferReq>(req), status);
    return {ret, status};
  }

  std::pair<uint32_t, std::vector<hixl::TransferResult>> GetAllTransferStatus(const hixl::GetTransferStatusArgs &args) {
    Hold hold(*core_);
    std::vector<hixl::TransferResult> results;
    if (!hold.engine) return {hixl::FAILED, results};
    const hixl::Status ret = hold.engine->GetTransferStatus(args, results);
    return {ret, results};
  }

  static uint32_t SendNotify(Core &core, const std::string &remote, const hixl::NotifyDesc &notify,
                             int32_t timeout_ms) {
    Hold hold(core);
    return hold.engine ? hold.engine->SendNotify(Ascend(remote), notify, timeout_ms) : hixl::FAILED;
  }

  std::pair<uint32_t, std::vector<hixl::NotifyDesc>> GetNotifies() {
    Hold hold(*core_);
    std::vector<hixl::NotifyDesc> notifies;
    if (!hold.engine) return {hixl::FAILED, notifies};
    const hixl::Status ret = hold.engine->GetNotifies(notifies);
    return {ret, notifies};
  }

 private:
  // The object's state, shared with the helper threads of its calls.
  struct Core {
    std::shared_mutex mutex;
    std::unique_ptr<hixl::Hixl> engine;  // changed only under mutex held exclusively
  };
  // A shared hold on the object for one call; engine is null when the
  // object is not initialized (or finalized).
  struct Hold {
    explicit Hold(Core &core) : lock(core.mutex), engine(core.engine.get()) {}
    std::shared_lock<std::shared_mutex> lock;
    hixl::Hixl *engine;
  };

  std::shared_ptr<Core> core_ = std::make_shared<Core>();
};

std::pair<uint32_t, int32_t> GetCapability(hixl::FeatureType feature) {
  int32_t value = hixl::FEATURE_NOT_SUPPORTED;
  const hixl::Status status = hixl::Hixl::GetCapability(feature, value);
  return {status, value};
}

hixl::NotifyDesc MakeNotify(const std::string &name, const std::string &msg) {
  hixl::NotifyDesc notify;
  notify.name = Ascend(name);
  notify.notify_msg = Ascend(msg);
  return notify;
}

}  // namespace

NB_MODULE(hixl, m) {
  llmdd_py::InitMainThreadIdent();
  // The SIGINT watch of llm_datadist._native: one per process (interruptible.h).
  {
    nb::object capsule = nb::module_::import_("llm_datadist._native").attr("_sigint_watch");
    void *watch = PyCapsule_GetPointer(capsule.ptr(), llmdd_py::SigintWatch::kCapsuleName);
    if (watch == nullptr) throw nb::python_error();
    llmdd_py::SigintWatch::Adopt(static_cast<llmdd_py::SigintWatch *>(watch));
  }
  m.doc() = "CANN's hixl Python module (hixl::Hixl) over libllm_datadist.so; import it as `import hixl`.";

  m.attr("SUCCESS") = hixl::SUCCESS;
  m.attr("PARAM_INVALID") = hixl::PARAM_INVALID;
  m.attr("TIMEOUT") = hixl::TIMEOUT;
  m.attr("NOT_CONNECTED") = hixl::NOT_CONNECTED;
  m.attr("ALREADY_CONNECTED") = hixl::ALREADY_CONNECTED;
  m.attr("NOTIFY_FAILED") = hixl::NOTIFY_FAILED;
  m.attr("UNSUPPORTED") = hixl::UNSUPPORTED;
  m.attr("FAILED") = hixl::FAILED;
  m.attr("RESOURCE_EXHAUSTED") = hixl::RESOURCE_EXHAUSTED;
  m.attr("OPTION_ENABLE_USE_FABRIC_MEM") = hixl::OPTION_ENABLE_USE_FABRIC_MEM;
  m.attr("OPTION_RDMA_TRAFFIC_CLASS") = hixl::OPTION_RDMA_TRAFFIC_CLASS;
  m.attr("OPTION_RDMA_SERVICE_LEVEL") = hixl::OPTION_RDMA_SERVICE_LEVEL;
  m.attr("OPTION_BUFFER_POOL") = hixl::OPTION_BUFFER_POOL;
  m.attr("OPTION_GLOBAL_RESOURCE_CONFIG") = hixl::OPTION_GLOBAL_RESOURCE_CONFIG;
  m.attr("OPTION_AUTO_CONNECT") = hixl::OPTION_AUTO_CONNECT;
  m.attr("OPTION_LOCAL_COMM_RES") = hixl::OPTION_LOCAL_COMM_RES;
  m.attr("FEATURE_SUPPORTED") = hixl::FEATURE_SUPPORTED;
  m.attr("FEATURE_NOT_SUPPORTED") = hixl::FEATURE_NOT_SUPPORTED;

  // Enums compare equal to their ints (is_arithmetic). CANN exports the
  // values of every enum but TransferStatus at module level.
  nb::enum_<hixl::MemType>(m, "MemType", nb::is_arithmetic())
      .value("MEM_DEVICE", hixl::MEM_DEVICE)
      .value("MEM_HOST", hixl::MEM_HOST)
      .export_values();
  nb::enum_<hixl::TransferOp>(m, "TransferOp", nb::is_arithmetic())
      .value("READ", hixl::READ)
      .value("WRITE", hixl::WRITE)
      .export_values();
  nb::enum_<hixl::TransferStatus>(m, "TransferStatus", nb::is_arithmetic())
      .value("WAITING", hixl::TransferStatus::WAITING)
      .value("COMPLETED", hixl::TransferStatus::COMPLETED)
      .value("TIMEOUT", hixl::TransferStatus::TIMEOUT)
      .value("FAILED", hixl::TransferStatus::FAILED);
  nb::enum_<hixl::AsyncConnectStatus>(m, "AsyncConnectStatus", nb::is_arithmetic())
      .value("NOT_CONNECT", hixl::AsyncConnectStatus::NOT_CONNECT)
      .value("CONNECT_PENDING", hixl::AsyncConnectStatus::CONNECT_PENDING)
      .value("CONNECTING", hixl::AsyncConnectStatus::CONNECTING)
      .value("CONNECTED", hixl::AsyncConnectStatus::CONNECTED)
      .value("CONNECT_FAILED", hixl::AsyncConnectStatus::CONNECT_FAILED)
      .value("DISCONNECT_PENDING", hixl::AsyncConnectStatus::DISCONNECT_PENDING)
      .value("DISCONNECTING", hixl::AsyncConnectStatus::DISCONNECTING)
      .export_values();
  nb::enum_<hixl::FeatureType>(m, "FeatureType", nb::is_arithmetic())
      .value("AUTO_CONNECT", hixl::AUTO_CONNECT)
      .value("CLIENT_SERVER_COMM", hixl::CLIENT_SERVER_COMM)
      .export_values();

  nb::class_<hixl::MemDesc>(m, "MemDesc")
      .def(
          "__init__",
          [](hixl::MemDesc *self, uintptr_t addr, size_t len) {
            new (self) hixl::MemDesc();
            self->addr = addr;
            self->len = len;
          },
          nb::arg("addr"), nb::arg("len"))
      .def_rw("addr", &hixl::MemDesc::addr)
      .def_rw("len", &hixl::MemDesc::len)
      .def_rw("local_only", &hixl::MemDesc::local_only);

  nb::class_<hixl::TransferOpDesc>(m, "TransferOpDesc")
      .def(
          "__init__",
          [](hixl::TransferOpDesc *self, uintptr_t local_addr, uintptr_t remote_addr, size_t len) {
            new (self) hixl::TransferOpDesc{local_addr, remote_addr, len};
          },
          nb::arg("local_addr"), nb::arg("remote_addr"), nb::arg("len"))
      .def_rw("local_addr", &hixl::TransferOpDesc::local_addr)
      .def_rw("remote_addr", &hixl::TransferOpDesc::remote_addr)
      .def_rw("len", &hixl::TransferOpDesc::len);

  nb::class_<hixl::TransferArgs>(m, "TransferArgs")
      .def(nb::init<>())
      .def_prop_rw(
          "user_data", [](const hixl::TransferArgs &a) { return reinterpret_cast<uintptr_t>(a.user_data); },
          [](hixl::TransferArgs &a, uintptr_t v) { a.user_data = reinterpret_cast<const void *>(v); });

  nb::class_<hixl::GetTransferStatusArgs>(m, "GetTransferStatusArgs")
      .def(
          "__init__",
          [](hixl::GetTransferStatusArgs *self, uint32_t max_query_count, bool skip_waiting) {
            new (self) hixl::GetTransferStatusArgs();
            self->max_query_count = max_query_count;
            self->skip_waiting = skip_waiting;
          },
          nb::arg("max_query_count") = UINT32_MAX, nb::arg("skip_waiting") = false)
      .def_rw("max_query_count", &hixl::GetTransferStatusArgs::max_query_count)
      .def_rw("skip_waiting", &hixl::GetTransferStatusArgs::skip_waiting);

  nb::class_<hixl::TransferResult>(m, "TransferResult")
      .def(nb::init<>())
      .def_prop_ro("req", [](const hixl::TransferResult &r) { return reinterpret_cast<uintptr_t>(r.req); })
      .def_prop_ro("user_data", [](const hixl::TransferResult &r) { return reinterpret_cast<uintptr_t>(r.user_data); })
      .def_ro("status", &hixl::TransferResult::status);

  nb::class_<hixl::NotifyDesc>(m, "NotifyDesc")
      .def(
          "__init__",
          [](hixl::NotifyDesc *self, const std::string &name, const std::string &msg) {
            new (self) hixl::NotifyDesc(MakeNotify(name, msg));
          },
          nb::arg("name"), nb::arg("notify_msg"))
      .def_prop_rw(
          "name", [](const hixl::NotifyDesc &n) { return Text(n.name); },
          [](hixl::NotifyDesc &n, const std::string &s) { n.name = Ascend(s); })
      .def_prop_rw(
          "notify_msg", [](const hixl::NotifyDesc &n) { return Text(n.notify_msg); },
          [](hixl::NotifyDesc &n, const std::string &s) { n.notify_msg = Ascend(s); });

  nb::class_<PyHixl>(m, "Hixl")
      .def(nb::init<>())
      .def("initialize", &PyHixl::Initialize, nb::arg("local_engine"), nb::arg("options") = Options{}, Gil())
      .def("finalize", &PyHixl::Finalize, Gil())
      .def("register_mem", &PyHixl::RegisterMem, Gil())
      .def("deregister_mem", &PyHixl::DeregisterMem, Gil())
      .def("connect", &PyHixl::ConnectInterruptibly, nb::arg("remote_engine"),
           nb::arg("timeout_in_millis") = kDefaultTimeoutMs)
      .def("disconnect", &PyHixl::DisconnectInterruptibly, nb::arg("remote_engine"),
           nb::arg("timeout_in_millis") = kDefaultTimeoutMs)
      .def("connect_async", &PyHixl::ConnectAsync, nb::arg("remote_engine"),
           nb::arg("timeout_in_millis") = kDefaultTimeoutMs, Gil())
      .def("disconnect_async", &PyHixl::DisconnectAsync, nb::arg("remote_engine"),
           nb::arg("timeout_in_millis") = kDefaultTimeoutMs, Gil())
      .def("get_async_connect_status", &PyHixl::GetAsyncConnectStatus, Gil())
      .def("get_all_async_connect_status", &PyHixl::GetAllAsyncConnectStatus, Gil())
      .def("transfer_sync", &PyHixl::TransferSyncInterruptibly, nb::arg("remote_engine"), nb::arg("op"),
           nb::arg("op_descs"), nb::arg("timeout_in_millis") = kDefaultTimeoutMs)
      .def("transfer_async", &PyHixl::TransferAsync, nb::arg("remote_engine"), nb::arg("op"), nb::arg("op_descs"),
           nb::arg("args") = hixl::TransferArgs(), Gil())
      .def("get_transfer_status", &PyHixl::GetTransferStatus, Gil())
      .def("get_all_transfer_status", &PyHixl::GetAllTransferStatus,
           nb::arg("args") = hixl::GetTransferStatusArgs(), Gil())
      .def("send_notify", &PyHixl::SendNotifyInterruptibly, nb::arg("remote_engine"), nb::arg("notify"),
           nb::arg("timeout_in_millis") = kDefaultTimeoutMs)
      .def("get_notifies", &PyHixl::GetNotifies, Gil())
      .def(
          "get_metrics",
          [](PyHixl &self) {
            std::pair<uint32_t, std::string> got;
            {
              nb::gil_scoped_release release;
              got = self.MetricsJson();
            }
            if (got.first != hixl::SUCCESS) return nb::make_tuple(got.first, nb::none());
            return nb::make_tuple(got.first, nb::module_::import_("json").attr("loads")(got.second));
          });

  m.def("get_capability", &GetCapability, nb::arg("feature_type"));
}
