// llm_datadist._native: the thin C++ layer under the Python package
// llm_datadist (python/llm_datadist/). It mirrors how CANN's package is built:
// the native part returns status codes (plain ints) and the Python part checks
// arguments, maps codes to LLMStatusCode and raises LLMException.
//
// Contracts every binding here keeps:
// - Every call that can block (a network round trip, waiting for transfers,
//   joining threads) releases the GIL (nb::call_guard<nb::gil_scoped_release>):
//   arguments are converted before and results after, with the GIL held.
// - Nothing throws out of the library (its API returns statuses); what can
//   throw here (allocations while converting arguments) becomes a Python
//   exception, never a crash.
// - Each call clears this thread's error lines first, so last_errors() right
//   after a failed call on the same thread says why (the lines the library
//   logged, docs/API.md "Logging"; for a call that ran on a helper thread,
//   the lines it logged there, interruptible.h).
// - The transfers and links return on Ctrl-C at once when called from the
//   main thread (interruptible.h): KeyboardInterrupt once no byte of the
//   call's buffers can be written any more.
// - finalize() waits for the calls in flight on the same object and later
//   calls return LLM_FAILED: CANN forbids Finalize concurrently with other
//   calls, and a Python program must not be able to crash the process by
//   doing it anyway.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "llm_datadist/llm_datadist.h"
#include "interruptible.h"
#include "llmdd/extensions.h"

namespace nb = nanobind;
using namespace llm_datadist;  // NOLINT: API types and status constants

namespace {

using Options = std::map<std::string, std::string>;
// (ip, port): the ip as text, IPv4 or IPv6.
using IpTuple = std::pair<std::string, uint16_t>;
// (remote_cluster_id, remote_role_type, local ips, remote ips).
using ClusterTuple = std::tuple<uint64_t, int32_t, std::vector<IpTuple>, std::vector<IpTuple>>;
// A cache key: (kind, cluster_id, model_id, req_id, prefix_id), kind as llmdd_ext::CacheKeyKind.
using KeyTuple = std::tuple<uint32_t, uint64_t, uint64_t, uint64_t, uint64_t>;
// What a transfer names on the peer: (kind, cluster_id, a, b, c) where kind 0 is
// CacheKeyByIdAndIndex (a = cache_id, b = batch_index), 1 a BlocksCacheKey
// (a = model_id) and 2 a CacheKey (a = req_id, b = model_id, c = prefix_id).
using SourceTuple = std::tuple<uint32_t, uint64_t, uint64_t, uint64_t, uint64_t>;
// KvCacheExtParam: (src_first, src_last, dst_first, dst_last, tensor_num_per_layer), ranges inclusive, -1 = all.
using ExtTuple = std::tuple<int32_t, int32_t, int32_t, int32_t, uint8_t>;
using Gil = nb::call_guard<nb::gil_scoped_release>;

std::map<AscendString, AscendString> ToAscend(const Options &options) {
  std::map<AscendString, AscendString> out;
  for (const auto &kv : options)
    out[AscendString(kv.first.data(), kv.first.size())] = AscendString(kv.second.data(), kv.second.size());
  return out;
}

std::vector<ClusterInfo> ToClusters(const std::vector<ClusterTuple> &clusters) {
  std::vector<ClusterInfo> out;
  out.reserve(clusters.size());
  for (const auto &[remote, role, locals, remotes] : clusters) {
    ClusterInfo info;
    info.remote_cluster_id = remote;
    info.remote_role_type = role;
    for (const auto &[ip, port] : locals) {
      IpInfo ip_info;
      ip_info.ip = AscendString(ip.data(), ip.size());
      ip_info.port = port;
      info.local_ip_infos.push_back(ip_info);
    }
    for (const auto &[ip, port] : remotes) {
      IpInfo ip_info;
      ip_info.ip = AscendString(ip.data(), ip.size());
      ip_info.port = port;
      info.remote_ip_infos.push_back(ip_info);
    }
    out.push_back(info);
  }
  return out;
}

llmdd_ext::CacheKey ToKey(uint32_t kind, uint64_t cluster, uint64_t model, uint64_t req, uint64_t prefix) {
  llmdd_ext::CacheKey key;
  key.kind = kind;
  key.cluster_id = cluster;
  key.model_id = model;
  key.req_id = req;
  key.prefix_id = prefix;
  return key;
}

KvCacheExtParam ToExt(const ExtTuple &ext) {
  KvCacheExtParam out;
  out.src_layer_range = {std::get<0>(ext), std::get<1>(ext)};
  out.dst_layer_range = {std::get<2>(ext), std::get<3>(ext)};
  out.tensor_num_per_layer = std::get<4>(ext);
  return out;
}

CacheIndex Index(uint64_t cluster, int64_t cache_id, uint32_t batch_index) {
  CacheIndex index{};
  index.cluster_id = cluster;
  index.cache_id = cache_id;
  index.batch_index = batch_index;
  return index;
}

// One llm_datadist::LlmDataDist for one Python LLMDataDist.
class DataDist {
 public:
  DataDist(uint64_t cluster_id, int32_t role) : datadist_(cluster_id, static_cast<LlmRole>(role)) {}

  uint32_t Initialize(const Options &options) {
    Call call(this);
    return call.ok ? datadist_.Initialize(ToAscend(options)) : LLM_FAILED;
  }

  // The engine's metrics snapshot as JSON (llmdd_ext::GetMetricsJson,
  // docs/METRICS.md): (LLM_SUCCESS, text), or (LLM_FAILED, "") when not
  // initialized.
  std::pair<uint32_t, std::string> Metrics() {
    Call call(this);
    if (!call.ok) return {LLM_FAILED, std::string()};
    const char *json = "";
    const Status status = llmdd_ext::GetMetricsJson(datadist_, json);
    return {status, std::string(json)};
  }

  void Finalize() {
    llmdd_ext::ClearLastErrors();
    llmdd_py::HelperErrors().reset();
    std::unique_lock lock(calls_);  // waits for the calls in flight
    finalized_ = true;
    datadist_.Finalize();
  }

  uint32_t SetRole(int32_t role, const Options &options) {
    Call call(this);
    return call.ok ? datadist_.SetRole(static_cast<LlmRole>(role), ToAscend(options)) : LLM_FAILED;
  }

  std::pair<uint32_t, std::vector<uint32_t>> Link(const std::vector<ClusterTuple> &clusters, int32_t timeout_ms) {
    Call call(this);
    std::vector<Status> rets;
    Status status = call.ok ? datadist_.LinkLlmClusters(ToClusters(clusters), rets, timeout_ms) : LLM_FAILED;
    return {status, std::vector<uint32_t>(rets.begin(), rets.end())};
  }

  std::pair<uint32_t, std::vector<uint32_t>> Unlink(const std::vector<ClusterTuple> &clusters, int32_t timeout_ms,
                                                    bool force) {
    Call call(this);
    std::vector<Status> rets;
    Status status = call.ok ? datadist_.UnlinkLlmClusters(ToClusters(clusters), rets, timeout_ms, force) : LLM_FAILED;
    return {status, std::vector<uint32_t>(rets.begin(), rets.end())};
  }

  // Returns (status, cache_id). remote_accessible false: peers can neither pull
  // from nor push into the cache (llmdd_ext::kRemoteNone).
  std::pair<uint32_t, int64_t> Register(uint32_t placement, uint32_t num_tensors, int32_t data_type,
                                        const std::vector<int64_t> &shape, const std::vector<uint64_t> &addrs,
                                        const std::vector<KeyTuple> &keys, bool remote_accessible) {
    Call call(this);
    if (!call.ok) return {LLM_FAILED, -1};
    CacheDesc desc;
    desc.placement = static_cast<CachePlacement>(placement);
    desc.num_tensors = num_tensors;
    desc.data_type = static_cast<DataType>(data_type);
    desc.shape = shape;
    RegisterCfg cfg{};
    if (!remote_accessible) llmdd_ext::SetRemoteAccess(cfg, llmdd_ext::kRemoteNone);
    std::vector<llmdd_ext::CacheKey> ext_keys;
    ext_keys.reserve(keys.size());
    for (const auto &[kind, cluster, model, req, prefix] : keys) ext_keys.push_back(ToKey(kind, cluster, model, req, prefix));
    int64_t cache_id = -1;
    Status status = llmdd_ext::RegisterKvCacheWithKeys(datadist_, desc, addrs, cfg, ext_keys, cache_id);
    return {status, cache_id};
  }

  uint32_t Unregister(int64_t cache_id) {
    Call call(this);
    return call.ok ? datadist_.UnregisterKvCache(cache_id) : LLM_FAILED;
  }

  uint32_t PullCache(const SourceTuple &src, int64_t dst_cache_id, uint32_t batch_index, int64_t size,
                     const ExtTuple &ext) {
    Call call(this);
    if (!call.ok) return LLM_FAILED;
    Cache dst;
    dst.cache_id = dst_cache_id;
    const KvCacheExtParam param = ToExt(ext);
    return WithSource(src, [&](const CacheIndex &index) {
      return datadist_.PullKvCache(index, dst, batch_index, size, param);
    });
  }

  uint32_t PullBlocks(const SourceTuple &src, int64_t dst_cache_id, const std::vector<uint64_t> &src_blocks,
                      const std::vector<uint64_t> &dst_blocks, const ExtTuple &ext) {
    Call call(this);
    if (!call.ok) return LLM_FAILED;
    Cache dst;
    dst.cache_id = dst_cache_id;
    const KvCacheExtParam param = ToExt(ext);
    return WithSource(src, [&](const CacheIndex &index) {
      return datadist_.PullKvBlocks(index, dst, src_blocks, dst_blocks, param);
    });
  }

  // src_num_tensors / src_placement: the source Cache's CacheDesc, which the
  // C++ push calls read (placement must be kDevice; num_tensors gives the layers
  // when no range is given).
  uint32_t PushCache(const SourceTuple &dst, int64_t src_cache_id, uint32_t src_placement, uint32_t src_num_tensors,
                     uint32_t src_batch_index, int64_t size, const ExtTuple &ext) {
    Call call(this);
    if (!call.ok) return LLM_FAILED;
    const Cache src = Source(src_cache_id, src_placement, src_num_tensors);
    const KvCacheExtParam param = ToExt(ext);
    return WithSource(dst, [&](const CacheIndex &index) {
      return datadist_.PushKvCache(src, index, src_batch_index, size, param);
    });
  }

  uint32_t PushBlocks(const SourceTuple &dst, int64_t src_cache_id, uint32_t src_placement, uint32_t src_num_tensors,
                      const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks,
                      const ExtTuple &ext) {
    Call call(this);
    if (!call.ok) return LLM_FAILED;
    const Cache src = Source(src_cache_id, src_placement, src_num_tensors);
    const KvCacheExtParam param = ToExt(ext);
    return WithSource(dst, [&](const CacheIndex &index) {
      return datadist_.PushKvBlocks(src, index, src_blocks, dst_blocks, param);
    });
  }

 private:
  // Shared hold on the object for one call (Finalize takes it exclusively);
  // ok is false once finalized. Clears this thread's error lines.
  struct Call {
    explicit Call(DataDist *self) : lock(self->calls_), ok(!self->finalized_) {
      llmdd_ext::ClearLastErrors();
      llmdd_py::HelperErrors().reset();  // this thread's last call is this one
    }
    std::shared_lock<std::shared_mutex> lock;
    bool ok;
  };

  static Cache Source(int64_t cache_id, uint32_t placement, uint32_t num_tensors) {
    Cache src;
    src.cache_id = cache_id;
    src.cache_desc.placement = static_cast<CachePlacement>(placement);
    src.cache_desc.num_tensors = num_tensors;
    return src;
  }

  // Runs `transfer` on the CacheIndex `source` names. A key is looked up on the
  // peer (cached per link); when the transfer then finds no such cache, the
  // owner may have registered the key anew since: look it up again and, if it
  // names another cache now, transfer once more.
  template <typename Transfer>
  Status WithSource(const SourceTuple &source, Transfer &&transfer) {
    const auto &[kind, cluster, a, b, c] = source;
    if (kind == 0) return transfer(Index(cluster, static_cast<int64_t>(a), static_cast<uint32_t>(b)));
    const llmdd_ext::CacheKey key = kind == llmdd_ext::kBlocksCacheKey
                                        ? ToKey(kind, cluster, a, llmdd_ext::kInvalidKeyId, llmdd_ext::kInvalidKeyId)
                                        : ToKey(kind, cluster, b, a, c);
    CacheIndex index{};
    Status status = llmdd_ext::FindRemoteCache(datadist_, key, false, index);
    if (status != LLM_SUCCESS) return status;
    status = transfer(index);
    if (status != LLM_KV_CACHE_NOT_EXIST) return status;
    CacheIndex fresh{};
    if (llmdd_ext::FindRemoteCache(datadist_, key, true, fresh) != LLM_SUCCESS || fresh.cache_id == index.cache_id)
      return status;
    return transfer(fresh);
  }

  LlmDataDist datadist_;
  std::shared_mutex calls_;
  bool finalized_ = false;  // written under calls_ held exclusively
};

// The Python DataDist: its state is shared with the helper threads of its
// interruptible calls, which may outlive the Python object (interruptible.h).
struct PyDataDist {
  PyDataDist(uint64_t cluster_id, int32_t role) : core(std::make_shared<DataDist>(cluster_id, role)) {}
  std::shared_ptr<DataDist> core;
};

// (address, byte length, read-only) of an object exposing the buffer protocol
// (numpy arrays, bytearray, memoryview, mmap). TypeError if it has none;
// ValueError if it is not C-contiguous (a cache tensor is one byte range).
std::tuple<uint64_t, uint64_t, bool> BufferInfo(nb::handle obj) {
  Py_buffer view;
  if (PyObject_GetBuffer(obj.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) {
    const bool exposes_buffer = PyObject_CheckBuffer(obj.ptr());
    PyErr_Clear();
    if (exposes_buffer) throw nb::value_error("the buffer is not C-contiguous");
    throw nb::type_error("the object does not expose the buffer protocol");
  }
  std::tuple<uint64_t, uint64_t, bool> info{reinterpret_cast<uint64_t>(view.buf), static_cast<uint64_t>(view.len),
                                            view.readonly != 0};
  PyBuffer_Release(&view);
  return info;
}

// (address, byte length) of a C-contiguous CPU tensor given through DLPack
// (__dlpack__, e.g. jax or tensorflow CPU arrays): nanobind imports it
// without a copy (noconvert) and refuses another device, a non-contiguous or
// a read-only tensor with TypeError. The capsule is released on return; the
// caller keeps the object itself alive.
std::tuple<uint64_t, uint64_t> DlpackInfo(const nb::ndarray<nb::device::cpu, nb::c_contig> &tensor) {
  return {reinterpret_cast<uint64_t>(tensor.data()), static_cast<uint64_t>(tensor.nbytes())};
}

}  // namespace

NB_MODULE(_native, m) {
  llmdd_py::InitMainThreadIdent();
  // The process's one SIGINT watch; the hixl module adopts it (interruptible.h).
  m.attr("_sigint_watch") = nb::capsule(llmdd_py::SigintWatch::Create(), llmdd_py::SigintWatch::kCapsuleName);
  m.doc() = "Native layer of llm_datadist (libllm_datadist.so); use the llm_datadist package, not this module.";

  // Blocking calls release the GIL; on the main thread the transfers
  // (RunTransfer) and the links (RunInterruptibly) also return on Ctrl-C
  // (interruptible.h).
  nb::class_<PyDataDist>(m, "DataDist")
      .def(nb::init<uint64_t, int32_t>(), nb::arg("cluster_id"), nb::arg("role"))
      .def("initialize", [](PyDataDist &d, const Options &options) { return d.core->Initialize(options); },
           nb::arg("options"), Gil())
      .def("finalize", [](PyDataDist &d) { d.core->Finalize(); }, Gil())
      .def("set_role",
           [](PyDataDist &d, int32_t role, const Options &options) { return d.core->SetRole(role, options); },
           nb::arg("role"), nb::arg("options"), Gil())
      .def("link_clusters",
           [](PyDataDist &d, const std::vector<ClusterTuple> &clusters, int32_t timeout_ms) {
             std::shared_ptr<DataDist> core = d.core;
             return llmdd_py::RunInterruptibly<std::pair<uint32_t, std::vector<uint32_t>>>(
                 [core, clusters, timeout_ms] { return core->Link(clusters, timeout_ms); });
           },
           nb::arg("clusters"), nb::arg("timeout_ms"))
      .def("unlink_clusters",
           [](PyDataDist &d, const std::vector<ClusterTuple> &clusters, int32_t timeout_ms, bool force) {
             std::shared_ptr<DataDist> core = d.core;
             return llmdd_py::RunInterruptibly<std::pair<uint32_t, std::vector<uint32_t>>>(
                 [core, clusters, timeout_ms, force] { return core->Unlink(clusters, timeout_ms, force); });
           },
           nb::arg("clusters"), nb::arg("timeout_ms"), nb::arg("force"))
      .def("register_cache",
           [](PyDataDist &d, uint32_t placement, uint32_t num_tensors, int32_t data_type,
              const std::vector<int64_t> &shape, const std::vector<uint64_t> &addrs, const std::vector<KeyTuple> &keys,
              bool remote_accessible) {
             return d.core->Register(placement, num_tensors, data_type, shape, addrs, keys, remote_accessible);
           },
           nb::arg("placement"), nb::arg("num_tensors"), nb::arg("data_type"), nb::arg("shape"), nb::arg("addrs"),
           nb::arg("keys"), nb::arg("remote_accessible"), Gil())
      .def("unregister_cache", [](PyDataDist &d, int64_t cache_id) { return d.core->Unregister(cache_id); },
           nb::arg("cache_id"), Gil())
      .def("pull_cache",
           [](PyDataDist &d, const SourceTuple &src, int64_t dst_cache_id, uint32_t batch_index, int64_t size,
              const ExtTuple &ext) {
             return llmdd_py::RunTransfer<uint32_t>(
                 [&] { return d.core->PullCache(src, dst_cache_id, batch_index, size, ext); });
           },
           nb::arg("src"), nb::arg("dst_cache_id"), nb::arg("batch_index"), nb::arg("size"), nb::arg("ext"))
      .def("pull_blocks",
           [](PyDataDist &d, const SourceTuple &src, int64_t dst_cache_id, const std::vector<uint64_t> &src_blocks,
              const std::vector<uint64_t> &dst_blocks, const ExtTuple &ext) {
             return llmdd_py::RunTransfer<uint32_t>(
                 [&] { return d.core->PullBlocks(src, dst_cache_id, src_blocks, dst_blocks, ext); });
           },
           nb::arg("src"), nb::arg("dst_cache_id"), nb::arg("src_blocks"), nb::arg("dst_blocks"), nb::arg("ext"))
      .def("push_cache",
           [](PyDataDist &d, const SourceTuple &dst, int64_t src_cache_id, uint32_t src_placement,
              uint32_t src_num_tensors, uint32_t src_batch_index, int64_t size, const ExtTuple &ext) {
             return llmdd_py::RunTransfer<uint32_t>([&] {
               return d.core->PushCache(dst, src_cache_id, src_placement, src_num_tensors, src_batch_index, size, ext);
             });
           },
           nb::arg("dst"), nb::arg("src_cache_id"), nb::arg("src_placement"), nb::arg("src_num_tensors"),
           nb::arg("src_batch_index"), nb::arg("size"), nb::arg("ext"))
      .def("push_blocks",
           [](PyDataDist &d, const SourceTuple &dst, int64_t src_cache_id, uint32_t src_placement,
              uint32_t src_num_tensors, const std::vector<uint64_t> &src_blocks,
              const std::vector<uint64_t> &dst_blocks, const ExtTuple &ext) {
             return llmdd_py::RunTransfer<uint32_t>([&] {
               return d.core->PushBlocks(dst, src_cache_id, src_placement, src_num_tensors, src_blocks, dst_blocks,
                                         ext);
             });
           },
           nb::arg("dst"), nb::arg("src_cache_id"), nb::arg("src_placement"), nb::arg("src_num_tensors"),
           nb::arg("src_blocks"), nb::arg("dst_blocks"), nb::arg("ext"))
      .def("metrics_json", [](PyDataDist &d) { return d.core->Metrics(); }, Gil());

  m.def("last_errors",
        [] {
          const std::unique_ptr<std::string> &helper = llmdd_py::HelperErrors();
          return helper ? *helper : std::string(llmdd_ext::LastErrors());
        },
        "The error lines the library logged during this thread's last call here (on its helper thread, for "
        "a call that ran on one).");
  m.def("status_name", [](uint32_t status) { return std::string(llmdd_ext::StatusName(status)); });
  m.def("version", [] { return std::string(llmdd_ext::Version()); });
  m.def("buffer_info", &BufferInfo, nb::arg("obj"));
  m.def("dlpack_info", &DlpackInfo, nb::arg("obj").noconvert());
}
