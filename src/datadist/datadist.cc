#include "datadist/datadist.h"

#include <cinttypes>

#include "common/endpoint.h"
#include "common/log.h"
#include "common/status_name.h"
#include "common/sync_point.h"
#include "common/threads.h"
#include "datadist/link_messages.h"

namespace llmdd::datadist {

using namespace llm_datadist;  // NOLINT: status constants and API types

namespace {

constexpr uint32_t kReverseLanes = 2;
constexpr int kMaxParallelLinks = 16;

std::string ClusterKey(uint64_t cluster) { return std::to_string(cluster); }

bool ValidRole(LlmRole role) {
  return role == LlmRole::kPrompt || role == LlmRole::kDecoder || role == LlmRole::kMix;
}

// Engine extension options ("llmdd.*") may be given to LLM-DataDist too.
std::map<std::string, std::string> EngineOptions(const std::map<std::string, std::string> &options) {
  std::map<std::string, std::string> out;
  for (const auto &[key, value] : options)
    if (key.rfind("llmdd.", 0) == 0) out[key] = value;
  return out;
}

bool AllDigits(const std::string &text) {
  if (text.empty()) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  return true;
}

// Checks of KvCacheExtParam that do not need any geometry (spec 2.8.4).
bool ValidExt(const KvCacheExtParam &ext, bool push, std::string *error) {
  const auto &s = ext.src_layer_range;
  const auto &d = ext.dst_layer_range;
  if (s.first < -1 || s.second < -1 || d.first < -1 || d.second < -1 || s.first > s.second || d.first > d.second) {
    *error = "layer ranges must satisfy -1 <= first <= second (src (" + std::to_string(s.first) + ", " +
             std::to_string(s.second) + "), dst (" + std::to_string(d.first) + ", " + std::to_string(d.second) + "))";
    return false;
  }
  if (ext.tensor_num_per_layer == 0) {
    *error = "tensor_num_per_layer must be > 0";
    return false;
  }
  if (push && s.second - s.first != d.second - d.first) {
    *error = "src and dst layer ranges must have the same length";
    return false;
  }
  return true;
}

// Argument checks shared by the four transfer calls; each logs "<call>: why".
bool CheckExt(const char *call, const KvCacheExtParam &ext, bool push) {
  std::string error;
  if (ValidExt(ext, push, &error)) return true;
  LOG_ERROR("%s: %s", call, error.c_str());
  return false;
}

bool CheckBlockLists(const char *call, const std::vector<uint64_t> &src_blocks,
                     const std::vector<uint64_t> &dst_blocks) {
  if (!src_blocks.empty() && src_blocks.size() == dst_blocks.size()) return true;
  LOG_ERROR("%s: block lists must be non-empty and of equal length (src %zu, dst %zu)", call, src_blocks.size(),
            dst_blocks.size());
  return false;
}

bool CheckPushSource(const char *call, const Cache &src, const KvCacheExtParam &ext) {
  if (src.cache_desc.placement != CachePlacement::kDevice) {
    LOG_ERROR("%s: source cache placement must be kDevice", call);
    return false;
  }
  if (ext.src_layer_range.first == -1 && src.cache_desc.num_tensors == 0) {
    LOG_ERROR("%s: src_cache.cache_desc.num_tensors must be > 0 when no layer range is given", call);
    return false;
  }
  return true;
}

// Runs work(0..count-1), at most kMaxParallelLinks at a time, each on its own
// thread where one can be started and on the caller's otherwise. An exception
// in one item is logged; its result keeps its initial value.
void ForEachConcurrently(size_t count, const std::function<void(size_t)> &work) {
  for (size_t begin = 0; begin < count; begin += kMaxParallelLinks) {
    const size_t end = std::min(count, begin + kMaxParallelLinks);
    std::vector<std::thread> threads;
    threads.reserve(end - begin);
    for (size_t i = begin; i < end; ++i) {
      auto item = [&work, i] { RunGuarded("link or unlink of one cluster", [&] { work(i); }); };
      std::thread thread;
      if (StartThread("link or unlink of one cluster", item, &thread)) {
        threads.push_back(std::move(thread));
      } else {
        item();  // no thread to spare: do it here, one after another
      }
    }
    for (auto &t : threads) t.join();
  }
}

// The reason a peer gave with a refused app message (its response body; older
// engines send none): clipped, and bytes that are not printable ASCII replaced,
// since it goes into our log lines.
std::string PeerReason(const std::string &response) {
  if (response.empty()) return "no reason given";
  std::string text = response.substr(0, wire::kMaxErrorText);
  for (char &c : text) {
    if (c < 0x20 || c > 0x7E) c = '?';
  }
  return text;
}

// A key as log lines and refusals name it, with CANN's Python names.
std::string KeyText(const CacheKeyId &key) {
  if (key.kind == kBlocksKey)
    return "BlocksCacheKey(cluster_id=" + std::to_string(key.cluster_id) +
           ", model_id=" + std::to_string(key.model_id) + ")";
  return "CacheKey(cluster_id=" + std::to_string(key.cluster_id) + ", req_id=" + std::to_string(key.req_id) +
         ", model_id=" + std::to_string(key.model_id) + ", prefix_id=" + std::to_string(key.prefix_id) + ")";
}

// A request key that names no request and no prefix: CANN's placeholder for
// an unused batch row in register_cache's key list.
bool IsPlaceholder(const CacheKeyId &key) {
  return key.kind == kRequestKey && key.req_id == UINT64_MAX && key.prefix_id == UINT64_MAX;
}

// The keys of one registration (llmdd_ext::RegisterKvCacheWithKeys): one
// blocks key, or request keys for at most `rows` rows. Fills `targets` with
// what each non-placeholder key will name.
bool CheckKeys(const std::vector<CacheKeyId> &keys, uint64_t rows,
               std::vector<std::pair<CacheKeyId, uint32_t>> *targets, std::string *error) {
  size_t blocks = 0, requests = 0;
  for (const CacheKeyId &key : keys) {
    if (key.kind == kBlocksKey) {
      ++blocks;
    } else if (key.kind == kRequestKey) {
      ++requests;
    } else {
      *error = "cache key kind " + std::to_string(key.kind) + " is neither a blocks key (1) nor a request key (2)";
      return false;
    }
  }
  if (blocks > 1 || (blocks == 1 && requests > 0)) {
    *error = "a cache is registered under one blocks key or under request keys (one per row), not " +
             std::to_string(blocks) + " blocks key(s) and " + std::to_string(requests) + " request key(s)";
    return false;
  }
  if (requests > rows) {
    *error = std::to_string(requests) + " request keys for a cache of " + std::to_string(rows) +
             " rows: key i names row i";
    return false;
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!IsPlaceholder(keys[i])) targets->emplace_back(keys[i], keys[i].kind == kBlocksKey ? 0U : static_cast<uint32_t>(i));
  }
  return true;
}

}  // namespace

Status ToLlmStatus(adxl::Status status) {
  switch (status) {
    case adxl::SUCCESS: return LLM_SUCCESS;
    case adxl::TIMEOUT: return LLM_TIMEOUT;
    case adxl::NOT_CONNECTED: return LLM_NOT_YET_LINK;
    case adxl::PARAM_INVALID: return LLM_PARAM_INVALID;
    case adxl::ALREADY_CONNECTED: return LLM_ALREADY_LINK;
    default: return LLM_FAILED;
  }
}

DataDist::DataDist(uint64_t cluster_id, LlmRole role) : cluster_id_(cluster_id), role_(role) {}

DataDist::~DataDist() {
  // A destructor must not throw (that would terminate the process).
  RunGuarded("~DataDist", [this] { Finalize(); });
}

bool DataDist::Ready(const char *call) const {
  if (initialized_.load()) return true;
  LOG_ERROR("%s: LlmDataDist (cluster %" PRIu64 ") is not initialized", call, cluster_id_);
  return false;
}

Status DataDist::Initialize(const std::map<std::string, std::string> &options) {
  std::lock_guard lock(init_mutex_);
  if (initialized_.load()) return LLM_SUCCESS;
  if (!ValidRole(role_.load())) {
    LOG_ERROR("Initialize: invalid role %d", static_cast<int>(role_.load()));
    return LLM_PARAM_INVALID;
  }
  auto device_it = options.find(OPTION_DEVICE_ID);
  if (device_it == options.end() || device_it->second.empty()) {
    LOG_ERROR("Initialize: option %s can not be empty", OPTION_DEVICE_ID);
    return LLM_PARAM_INVALID;
  }
  // A ';'-separated list is accepted (the first device is used), as in CANN.
  std::string first_device = device_it->second.substr(0, device_it->second.find(';'));
  int64_t device_id = -1;
  if (!ParseInt64(first_device, &device_id) || device_id < 0 || device_id > INT32_MAX) {
    LOG_ERROR("Initialize: option %s='%s' is not a device ordinal", OPTION_DEVICE_ID, device_it->second.c_str());
    return LLM_PARAM_INVALID;
  }
  int32_t sync_timeout = 1000;
  auto wait_it = options.find(OPTION_SYNC_CACHE_WAIT_TIME);
  if (wait_it != options.end()) {
    int64_t v = 0;
    if (!AllDigits(wait_it->second) || !ParseInt64(wait_it->second, &v) || v <= 0 || v > INT32_MAX) {
      LOG_ERROR("Initialize: option %s='%s' must be a positive integer (milliseconds)", OPTION_SYNC_CACHE_WAIT_TIME,
                wait_it->second.c_str());
      return LLM_PARAM_INVALID;
    }
    sync_timeout = static_cast<int32_t>(v);
  }
  Endpoint listen;
  bool listening = false;
  auto listen_it = options.find(OPTION_LISTEN_IP_INFO);
  if (listen_it != options.end()) {
    std::string error;
    if (!ParseListenIpInfo(listen_it->second, &listen, &error)) {
      LOG_ERROR("Initialize: option %s='%s': %s", OPTION_LISTEN_IP_INFO, listen_it->second.c_str(), error.c_str());
      return LLM_PARAM_INVALID;
    }
    listening = true;
  }
  for (const char *v1_only : {OPTION_BUF_POOL_CFG, OPTION_ENABLE_SET_ROLE}) {
    if (options.count(v1_only) != 0) LOG_INFO("Initialize: option %s is V1 only; ignored", v1_only);
  }
  if (options.count(OPTION_LOCAL_COMM_RES) != 0)
    LOG_INFO("Initialize: option %s describes Ascend NICs; not needed here, ignored", OPTION_LOCAL_COMM_RES);
  // llm.TransferBackend "hixl": CANN moves the data with HIXL, where every
  // instance is client and server; our engine is that already, so what stays
  // is CANN's rule that every instance listens (and keeps its address, see
  // SetRole).
  bool hixl_backend = false;
  auto backend_it = options.find(OPTION_TRANSFER_BACKEND);
  if (backend_it != options.end()) {
    if (backend_it->second != "hixl") {
      LOG_ERROR("Initialize: option %s='%s' is not a backend (the only one is 'hixl') (PARAM_INVALID)",
                OPTION_TRANSFER_BACKEND, backend_it->second.c_str());
      return LLM_PARAM_INVALID;
    }
    if (!listening) {
      LOG_ERROR("Initialize: option %s=hixl needs %s (with the HIXL backend every instance listens) "
                "(PARAM_INVALID)", OPTION_TRANSFER_BACKEND, OPTION_LISTEN_IP_INFO);
      return LLM_PARAM_INVALID;
    }
    hixl_backend = true;
  }
  // llm.GlobalResourceConfig is HIXL's JSON (CANN forwards it verbatim): it is
  // read and checked as hixl::Hixl reads it, so a bad value fails here as it
  // would there. Its channel pool is not applied: LLM-DataDist's links are
  // made and ended only by LinkLlmClusters / UnlinkLlmClusters, and a pool
  // that evicted an idle link would break that contract (docs/API.md).
  auto resource_it = options.find(OPTION_GLOBAL_RESOURCE_CONFIG);
  if (resource_it != options.end()) {
    ConnectPoolConfig connect_pool;
    ChannelPoolConfig channel_pool;
    std::string why;
    if (!ParseGlobalResourceConfig(resource_it->second, &connect_pool, &channel_pool, &why)) {
      LOG_ERROR("Initialize: option %s: %s (PARAM_INVALID)", OPTION_GLOBAL_RESOURCE_CONFIG, why.c_str());
      return LLM_PARAM_INVALID;
    }
    LOG_INFO("Initialize: option %s accepted%s", OPTION_GLOBAL_RESOURCE_CONFIG,
             channel_pool.enabled ? "; its channel pool does not apply to links, which only Link/Unlink change" : "");
  }
  EngineConfig config;
  std::string error;
  if (ParseEngineOptions(EngineOptions(options), &config, &error) != adxl::SUCCESS) {
    LOG_ERROR("Initialize: %s", error.c_str());
    return LLM_PARAM_INVALID;
  }
  device_ = OpenDevice(static_cast<int32_t>(device_id), &error);
  if (!device_) {
    LOG_ERROR("Initialize: %s", error.c_str());
    return LLM_PARAM_INVALID;
  }
  engine_ = std::make_unique<Engine>();
  Engine::Hooks hooks;
  hooks.app_handler = [this](const std::string &peer, uint64_t session, const std::string &request,
                             std::string *response) { return HandleApp(peer, session, request, response); };
  hooks.on_peer_detached = [this](const std::string &peer, uint64_t session, bool said_goodbye) {
    OnPeerDetached(peer, session, said_goodbye);
  };
  adxl::Status status = engine_->Start(ClusterKey(cluster_id_), config, listening ? &listen : nullptr, hooks);
  if (status != adxl::SUCCESS) {
    LOG_ERROR("Initialize: cannot start the transfer engine (listen %s)",
              listening ? listen.ToString().c_str() : "none");
    engine_.reset();
    device_.reset();
    return LLM_FAILED;
  }
  sync_timeout_ms_ = sync_timeout;
  local_comm_known_.store(listening || options.count(OPTION_LOCAL_COMM_RES) != 0);
  listen_ = listen;
  listening_ = listening;
  hixl_backend_ = hixl_backend;
  janitor_stop_ = false;
  if (!StartThread("LLM-DataDist janitor", [this] { JanitorLoop(); }, &janitor_)) {
    LOG_ERROR("Initialize: cannot start a thread (RESOURCE_EXHAUSTED)");
    engine_->Finalize();
    engine_.reset();
    device_.reset();
    return LLM_FAILED;
  }
  initialized_.store(true);
  LOG_INFO("LlmDataDist cluster %" PRIu64 " initialized (device %" PRId64 ", %s, sync timeout %d ms)", cluster_id_,
           device_id, listening ? ("listening on " + listen.ToString()).c_str() : "client", sync_timeout);
  return LLM_SUCCESS;
}

void DataDist::Finalize() {
  std::lock_guard lock(init_mutex_);
  if (!initialized_.exchange(false)) return;
  {
    std::lock_guard guard(janitor_mutex_);
    janitor_stop_ = true;
  }
  janitor_wake_.notify_all();
  if (janitor_.joinable()) janitor_.join();
  {
    std::lock_guard guard(links_mutex_);
    links_.clear();
    linking_.clear();
  }
  // Tears down every link (goodbye to peers we connected), the listener, and
  // all registrations, waiting for requests that are being served.
  engine_->Finalize();
  engine_.reset();
  {
    std::lock_guard guard(caches_mutex_);
    caches_.clear();
    keys_.clear();
  }
  device_.reset();
  LOG_INFO("LlmDataDist cluster %" PRIu64 " finalized", cluster_id_);
}

Status DataDist::SetRole(LlmRole role, const std::map<std::string, std::string> &options) {
  if (!Ready("SetRole")) return LLM_FAILED;
  if (!ValidRole(role)) {
    LOG_ERROR("SetRole: invalid role %d", static_cast<int>(role));
    return LLM_PARAM_INVALID;
  }
  Endpoint listen;
  auto it = options.find(OPTION_LISTEN_IP_INFO);
  const bool want_listen = it != options.end();
  if (want_listen) {
    std::string error;
    if (!ParseListenIpInfo(it->second, &listen, &error)) {
      LOG_ERROR("SetRole: option %s='%s': %s", OPTION_LISTEN_IP_INFO, it->second.c_str(), error.c_str());
      return LLM_PARAM_INVALID;
    }
  }
  {
    std::lock_guard guard(links_mutex_);
    if (!links_.empty() || !linking_.empty()) {
      LOG_ERROR("SetRole: %zu link(s) still exist; unlink all clusters first", links_.size() + linking_.size());
      return LLM_EXIST_LINK;
    }
  }
  std::lock_guard lock(init_mutex_);
  const bool same_address = want_listen && listening_ && listen.port == listen_.port && listen.ip == listen_.ip;
  if (hixl_backend_ && want_listen && !same_address) {
    // CANN: with the HIXL backend SetRole cannot change the listen port.
    LOG_ERROR("SetRole: option %s='%s' differs from %s; with %s=hixl the listen address cannot change "
              "(PARAM_INVALID)", OPTION_LISTEN_IP_INFO, it->second.c_str(), listen_.ToString().c_str(),
              OPTION_TRANSFER_BACKEND);
    return LLM_PARAM_INVALID;
  }
  if (same_address || hixl_backend_) {
    // Same listen address (or the HIXL backend, where every instance keeps
    // listening whatever the role): nothing to change.
  } else {
    if (listening_) {
      engine_->StopListening();
      listening_ = false;
    }
    if (want_listen) {
      if (engine_->StartListening(listen) != adxl::SUCCESS) {
        LOG_ERROR("SetRole: cannot listen on %s", listen.ToString().c_str());
        return LLM_FAILED;
      }
      listen_ = listen;
      listening_ = true;
      local_comm_known_.store(true);
    }
  }
  role_.store(role);
  LOG_INFO("SetRole: cluster %" PRIu64 " is now role %d, %s", cluster_id_, static_cast<int>(role),
           listening_ ? ("listening on " + listen_.ToString()).c_str() : "not listening");
  return LLM_SUCCESS;
}

// ---------------------------------------------------------------- links

Status DataDist::LinkClusters(const std::vector<ClusterInfo> &clusters, std::vector<Status> &rets,
                              int32_t timeout_ms) {
  if (!Ready("LinkLlmClusters")) return LLM_FAILED;
  if (timeout_ms <= 0) {
    LOG_ERROR("LinkLlmClusters: timeout %d ms must be > 0", timeout_ms);
    return LLM_PARAM_INVALID;
  }
  if (clusters.empty()) {
    LOG_ERROR("LinkLlmClusters: clusters is empty");
    return LLM_PARAM_INVALID;
  }
  for (const auto &cluster : clusters) {
    for (const auto *list : {&cluster.local_ip_infos, &cluster.remote_ip_infos}) {
      for (const auto &ip : *list) {
        if (IpFamily(std::string(ip.ip.GetString(), ip.ip.GetLength())) == 0) {
          LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 ": '%s' is not a valid IP address", cluster.remote_cluster_id,
                    ip.ip.GetString());
          return LLM_PARAM_INVALID;
        }
      }
    }
    if (cluster.remote_ip_infos.size() != 1) {
      LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 " needs exactly one remote IpInfo (got %zu)",
                cluster.remote_cluster_id, cluster.remote_ip_infos.size());
      return LLM_PARAM_INVALID;
    }
    // As in CANN, the local address is only needed until this instance's own
    // communication address is known (it listens, llm.LocalCommRes was given,
    // or an earlier link succeeded). Its port is never bound.
    if (!local_comm_known_.load() && cluster.local_ip_infos.size() != 1) {
      LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 " needs exactly one local IpInfo (got %zu) until this instance "
                "listens or has linked once", cluster.remote_cluster_id, cluster.local_ip_infos.size());
      return LLM_PARAM_INVALID;
    }
  }
  std::vector<Status> results(clusters.size(), LLM_FAILED);
  // Links are set up concurrently, at most kMaxParallelLinks at a time.
  ForEachConcurrently(clusters.size(), [&](size_t i) { results[i] = LinkOne(clusters[i], timeout_ms); });
  Status overall = LLM_SUCCESS;
  for (Status s : results) {
    rets.push_back(s);
    if (s != LLM_SUCCESS && overall == LLM_SUCCESS) overall = s;
  }
  return overall;
}

Status DataDist::LinkOne(const ClusterInfo &cluster, int32_t timeout_ms) {
  const uint64_t remote = cluster.remote_cluster_id;
  Deadline deadline = Deadline::AfterMs(timeout_ms);
  if (remote == cluster_id_) {
    LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 " is this instance itself", remote);
    return LLM_PARAM_INVALID;
  }
  {
    std::lock_guard guard(links_mutex_);
    if (links_.count(remote) != 0 || linking_.count(remote) != 0) {
      LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 " is already linked", remote);
      return LLM_ALREADY_LINK;
    }
    linking_[remote] = true;
  }
  auto unreserve = [&] {
    std::lock_guard guard(links_mutex_);
    linking_.erase(remote);
  };
  const IpInfo &info = cluster.remote_ip_infos[0];
  Endpoint endpoint;
  endpoint.ip = std::string(info.ip.GetString(), info.ip.GetLength());
  endpoint.family = IpFamily(endpoint.ip);
  endpoint.port = info.port;
  std::string error;
  const std::string key = ClusterKey(remote);
  adxl::Status status = engine_->ConnectKeyed(key, endpoint, kReverseLanes, deadline, &error);
  if (status != adxl::SUCCESS) {
    unreserve();
    const Status llm = status == adxl::TIMEOUT ? LLM_TIMEOUT : LLM_LINK_FAILED;
    LOG_ERROR("LinkLlmClusters: link to cluster %" PRIu64 " at %s failed with %s: %s", remote,
              endpoint.ToString().c_str(), StatusText(llm).c_str(), error.c_str());
    return llm;
  }
  std::string response;
  LinkRequest request{cluster_id_, remote};
  status = engine_->AppCallKeyed(key, kAppLink, EncodeLinkRequest(request), deadline, &response, &error);
  if (status != adxl::SUCCESS) {
    engine_->DisconnectKeyed(key, Deadline::AfterMs(200), true);
    unreserve();
    // Only the codes a Link answer may carry; anything else from the peer is a failed link.
    Status llm = status == adxl::TIMEOUT ? LLM_TIMEOUT : status == LLM_ALREADY_LINK ? LLM_ALREADY_LINK : LLM_LINK_FAILED;
    if (error.empty()) {
      // The peer answered: its status and its reason (the response body).
      LOG_ERROR("LinkLlmClusters: cluster %" PRIu64 " at %s refused the link with %s: %s; returning %s", remote,
                endpoint.ToString().c_str(), StatusText(status).c_str(), PeerReason(response).c_str(),
                StatusText(llm).c_str());
    } else {
      LOG_ERROR("LinkLlmClusters: link to cluster %" PRIu64 " at %s failed with %s: %s", remote,
                endpoint.ToString().c_str(), StatusText(llm).c_str(), error.c_str());
    }
    return llm;
  }
  auto link = std::make_shared<Link>();
  link->remote_cluster = remote;
  link->outbound = true;
  local_comm_known_.store(true);
  std::lock_guard guard(links_mutex_);
  linking_.erase(remote);
  links_[remote] = link;
  LinksChangedLocked(true);
  LOG_INFO("linked cluster %" PRIu64 " -> %" PRIu64 " at %s", cluster_id_, remote, endpoint.ToString().c_str());
  return LLM_SUCCESS;
}

Status DataDist::UnlinkClusters(const std::vector<ClusterInfo> &clusters, std::vector<Status> &rets,
                                int32_t timeout_ms, bool force) {
  if (!Ready("UnlinkLlmClusters")) return LLM_FAILED;
  if (timeout_ms <= 0) {
    LOG_ERROR("UnlinkLlmClusters: timeout %d ms must be > 0", timeout_ms);
    return LLM_PARAM_INVALID;
  }
  if (clusters.empty()) {
    LOG_ERROR("UnlinkLlmClusters: clusters is empty");
    return LLM_PARAM_INVALID;
  }
  for (const auto &cluster : clusters) {
    for (const auto &ip : cluster.remote_ip_infos) {
      if (IpFamily(std::string(ip.ip.GetString(), ip.ip.GetLength())) == 0) {
        LOG_ERROR("UnlinkLlmClusters: cluster %" PRIu64 ": '%s' is not a valid IP address", cluster.remote_cluster_id,
                  ip.ip.GetString());
        return LLM_PARAM_INVALID;
      }
    }
    if (!force && cluster.remote_ip_infos.size() != 1) {
      LOG_ERROR("UnlinkLlmClusters: cluster %" PRIu64 " needs exactly one remote IpInfo (got %zu)",
                cluster.remote_cluster_id, cluster.remote_ip_infos.size());
      return LLM_PARAM_INVALID;
    }
  }
  std::vector<Status> results(clusters.size(), LLM_FAILED);
  ForEachConcurrently(clusters.size(), [&](size_t i) { results[i] = UnlinkOne(clusters[i], timeout_ms, force); });
  Status overall = LLM_SUCCESS;
  for (Status s : results) {
    rets.push_back(s);
    if (s != LLM_SUCCESS && overall == LLM_SUCCESS) overall = s;
  }
  return overall;
}

std::shared_ptr<DataDist::Link> DataDist::FindLink(uint64_t cluster) {
  std::lock_guard guard(links_mutex_);
  auto it = links_.find(cluster);
  return it == links_.end() ? nullptr : it->second;
}

void DataDist::DropLink(const std::shared_ptr<Link> &link, bool say_goodbye, Deadline deadline) {
  {
    std::lock_guard guard(links_mutex_);
    auto it = links_.find(link->remote_cluster);
    if (it != links_.end() && it->second == link) {
      links_.erase(it);
      LinksChangedLocked(false);
    }
  }
  // Wait for our own transfers on this link (they are bounded by their deadlines).
  std::unique_lock drain(link->in_flight);
  const std::string key = ClusterKey(link->remote_cluster);
  if (link->outbound) {
    engine_->DisconnectKeyed(key, deadline, say_goodbye);
  } else {
    engine_->DropAttachedPeer(key, link->session_id);
  }
}

Status DataDist::UnlinkOne(const ClusterInfo &cluster, int32_t timeout_ms, bool force) {
  const uint64_t remote = cluster.remote_cluster_id;
  Deadline deadline = Deadline::AfterMs(timeout_ms);
  std::shared_ptr<Link> link = FindLink(remote);
  if (!link) {
    if (force) return LLM_SUCCESS;  // forced unlink of nothing is a no-op
    LOG_ERROR("UnlinkLlmClusters: no link to cluster %" PRIu64, remote);
    return LLM_NOT_YET_LINK;
  }
  if (force) {
    DropLink(link, /*say_goodbye=*/false, deadline);
    LOG_INFO("force-unlinked cluster %" PRIu64 " (local side only)", remote);
    return LLM_SUCCESS;
  }
  std::string response, error;
  adxl::Status status =
      engine_->AppCallKeyed(ClusterKey(remote), kAppUnlink, EncodeUnlink(cluster_id_), deadline, &response, &error);
  if (status != adxl::SUCCESS) {
    LOG_ERROR("UnlinkLlmClusters: cluster %" PRIu64 " could not be told (%s); link kept, use force_flag to drop it",
              remote, error.c_str());
    return LLM_UNLINK_FAILED;
  }
  DropLink(link, /*say_goodbye=*/true, deadline);
  LOG_INFO("unlinked cluster %" PRIu64, remote);
  return LLM_SUCCESS;
}

void DataDist::OnPeerDetached(const std::string &peer, uint64_t session_id, bool said_goodbye) {
  uint64_t cluster = 0;
  if (!ParseUint64(peer, &cluster)) return;
  std::lock_guard guard(links_mutex_);
  auto it = links_.find(cluster);
  if (it == links_.end() || it->second->outbound || it->second->session_id != session_id) return;
  if (said_goodbye) {
    LOG_INFO("cluster %" PRIu64 " disconnected: link removed", cluster);
    links_.erase(it);
    LinksChangedLocked(false);
    return;
  }
  // As in CANN, only an unlink on this side (or a new link from the peer)
  // removes this side's link: a forced unlink over there is local to it.
  it->second->lost = true;
  LOG_WARN("cluster %" PRIu64 " lost its connection without unlinking: the link stays until UnlinkLlmClusters "
           "(force_flag) here or a new link from it; transfers on it fail",
           cluster);
}

void DataDist::ScheduleClose(uint64_t cluster) {
  {
    std::lock_guard guard(janitor_mutex_);
    janitor_queue_.push_back(cluster);
  }
  janitor_wake_.notify_one();
}

void DataDist::JanitorLoop() {
  std::unique_lock lock(janitor_mutex_);
  for (;;) {
    janitor_wake_.wait(lock, [&] { return janitor_stop_ || !janitor_queue_.empty(); });
    if (janitor_stop_) return;
    uint64_t cluster = janitor_queue_.front();
    janitor_queue_.pop_front();
    lock.unlock();
    RunGuarded("closing an unlinked cluster's channel",
               [&] { engine_->DisconnectKeyed(ClusterKey(cluster), Deadline::AfterMs(1000), true); });
    lock.lock();
  }
}

adxl::Status DataDist::HandleApp(const std::string &peer, uint64_t session_id, const std::string &typed_request,
                                 std::string *response) {
  if (typed_request.size() < 4) return adxl::PARAM_INVALID;
  uint32_t type = 0;
  memcpy(&type, typed_request.data(), 4);
  const std::string body = typed_request.substr(4);
  uint64_t peer_cluster = 0;
  if (!ParseUint64(peer, &peer_cluster)) {
    LOG_ERROR("request from an engine that is not an LLM-DataDist cluster ('%s') refused", peer.c_str());
    return adxl::PARAM_INVALID;
  }
  switch (type) {
    case kAppLink: {
      LinkRequest req;
      // A refusal's response body is its reason: the requester logs it.
      if (!DecodeLinkRequest(body, &req) || req.sender_cluster != peer_cluster) {
        *response = "malformed link request, or its sender cluster is not the engine id of the connection";
        LOG_ERROR("link from cluster %" PRIu64 " refused: %s", peer_cluster, response->c_str());
        return adxl::PARAM_INVALID;
      }
      if (req.expected_receiver_cluster != cluster_id_) {
        *response = "the link names cluster " + std::to_string(req.expected_receiver_cluster) +
                    " (remote_cluster_id), but this instance at that address is cluster " +
                    std::to_string(cluster_id_);
        LOG_ERROR("link from cluster %" PRIu64 " refused: it expects cluster %" PRIu64 ", this is %" PRIu64,
                  peer_cluster, req.expected_receiver_cluster, cluster_id_);
        return LLM_LINK_FAILED;
      }
      if (session_id == 0) {  // links are made on the listening side only
        *response = "links are accepted only by the listening side (llm.ListenIpInfo)";
        return adxl::PARAM_INVALID;
      }
      std::lock_guard guard(links_mutex_);
      auto it = links_.find(peer_cluster);
      if (it != links_.end() && it->second->outbound) {
        *response = "cluster " + std::to_string(cluster_id_) + " already has its own link to cluster " +
                    std::to_string(peer_cluster);
        LOG_ERROR("link from cluster %" PRIu64 " refused: this side already linked to it", peer_cluster);
        return LLM_ALREADY_LINK;
      }
      if (it != links_.end()) LOG_WARN("cluster %" PRIu64 " linked again: replacing its stale link", peer_cluster);
      auto link = std::make_shared<Link>();
      link->remote_cluster = peer_cluster;
      link->outbound = false;
      link->session_id = session_id;
      links_[peer_cluster] = link;
      LinksChangedLocked(true);
      LOG_INFO("cluster %" PRIu64 " linked to this cluster %" PRIu64, peer_cluster, cluster_id_);
      return adxl::SUCCESS;
    }
    case kAppUnlink: {
      uint64_t sender = 0;
      if (!DecodeUnlink(body, &sender) || sender != peer_cluster) return adxl::PARAM_INVALID;
      std::shared_ptr<Link> link;
      {
        std::lock_guard guard(links_mutex_);
        auto it = links_.find(peer_cluster);
        if (it == links_.end()) return adxl::SUCCESS;
        link = it->second;
        links_.erase(it);
        LinksChangedLocked(false);
      }
      {
        std::unique_lock drain(link->in_flight);  // our transfers to the peer finish first
      }
      // We may be running on one of the link's own serving threads: close the
      // channel from the janitor instead of here.
      if (link->outbound) ScheduleClose(peer_cluster);
      LOG_INFO("cluster %" PRIu64 " unlinked from this cluster", peer_cluster);
      return adxl::SUCCESS;
    }
    case kAppGetCache: {
      int64_t cache_id = 0;
      if (!DecodeCacheQuery(body, &cache_id)) return adxl::PARAM_INVALID;
      std::lock_guard guard(caches_mutex_);
      auto it = caches_.find(cache_id);
      if (it == caches_.end()) {
        *response = "cache " + std::to_string(cache_id) + " is not registered on cluster " + std::to_string(cluster_id_);
        return LLM_KV_CACHE_NOT_EXIST;
      }
      *response = EncodeGeometry(it->second.geometry);
      return adxl::SUCCESS;
    }
    case kAppFindCache: {
      CacheKeyId key;
      if (!DecodeKeyQuery(body, &key)) {
        *response = "malformed cache key query";
        return adxl::PARAM_INVALID;
      }
      std::lock_guard guard(caches_mutex_);
      auto it = keys_.find(key);
      auto cache = it == keys_.end() ? caches_.end() : caches_.find(it->second.cache_id);
      if (cache == caches_.end()) {
        *response = "no cache is registered under key " + KeyText(key) + " on cluster " + std::to_string(cluster_id_);
        return LLM_KV_CACHE_NOT_EXIST;
      }
      *response = EncodeKeyAnswer(it->second, cache->second.geometry);
      return adxl::SUCCESS;
    }
    default:
      LOG_ERROR("unknown LLM-DataDist message %u from cluster %" PRIu64, type, peer_cluster);
      return adxl::UNSUPPORTED;
  }
}

// ---------------------------------------------------------------- caches

Status DataDist::RegisterKvCache(const CacheDesc &desc, const std::vector<uint64_t> &addrs, uint32_t access,
                                 int64_t &cache_id, const std::vector<CacheKeyId> &keys) {
  if (!Ready("RegisterKvCache")) return LLM_FAILED;
  LocalCache cache;
  std::string error;
  Status status = ComputeGeometry(desc, addrs, &cache.geometry, &error);
  if (status != LLM_SUCCESS) {
    LOG_ERROR("RegisterKvCache: %s", error.c_str());
    return status;
  }
  std::vector<std::pair<CacheKeyId, uint32_t>> key_rows;
  if (!CheckKeys(keys, cache.geometry.row_count, &key_rows, &error)) {
    LOG_ERROR("RegisterKvCache: %s", error.c_str());
    return LLM_PARAM_INVALID;
  }
  cache.placement = desc.placement;
  const adxl::MemType type = desc.placement == CachePlacement::kHost ? adxl::MEM_HOST : adxl::MEM_DEVICE;
  for (uint64_t addr : cache.geometry.addrs) {
    uint64_t handle = 0;
    if (engine_->RegisterMem(static_cast<uintptr_t>(addr), cache.geometry.tensor_size, type, &handle, access) !=
        adxl::SUCCESS) {
      for (uint64_t h : cache.handles) engine_->DeregisterMem(h);
      LOG_ERROR("RegisterKvCache: registering tensor at 0x%" PRIx64 " failed", addr);
      return LLM_FAILED;
    }
    cache.handles.push_back(handle);
  }
  std::lock_guard guard(caches_mutex_);
  cache_id = next_cache_id_++;
  for (const auto &[key, row] : key_rows) {
    // As in CANN, the newest registration under a key wins (logged: usually a mistake).
    auto [it, added] = keys_.insert_or_assign(key, KeyTarget{cache_id, row});
    if (!added) LOG_INFO("RegisterKvCache: %s now names cache %" PRId64, KeyText(key).c_str(), cache_id);
    cache.keys.push_back(key);
  }
  caches_.emplace(cache_id, std::move(cache));
  LOG_INFO("RegisterKvCache: cache %" PRId64 " (%u tensors of %" PRIu64 " B, %" PRIu64 " rows)", cache_id,
           caches_[cache_id].geometry.num_tensors, caches_[cache_id].geometry.tensor_size,
           caches_[cache_id].geometry.row_count);
  return LLM_SUCCESS;
}

Status DataDist::UnregisterKvCache(int64_t cache_id) {
  if (!Ready("UnregisterKvCache")) return LLM_FAILED;
  LocalCache cache;
  {
    std::lock_guard guard(caches_mutex_);
    auto it = caches_.find(cache_id);
    if (it == caches_.end()) {
      LOG_INFO("UnregisterKvCache: cache %" PRId64 " is not registered (nothing to do)", cache_id);
      return LLM_SUCCESS;
    }
    cache = std::move(it->second);
    caches_.erase(it);
    for (const CacheKeyId &key : cache.keys) {
      auto named = keys_.find(key);
      if (named != keys_.end() && named->second.cache_id == cache_id) keys_.erase(named);
    }
  }
  // Waits for peers' requests that are reading or writing these tensors.
  for (uint64_t handle : cache.handles) engine_->DeregisterMem(handle);
  return LLM_SUCCESS;
}

// ---------------------------------------------------------------- transfers

Status DataDist::Prepare(const char *call, uint64_t remote_cluster, int64_t local_cache_id, LocalCache *local,
                         std::shared_ptr<Link> *link) {
  if (remote_cluster == cluster_id_) {
    LOG_ERROR("%s: cluster %" PRIu64 " is this instance itself", call, remote_cluster);
    return LLM_PARAM_INVALID;
  }
  {
    std::lock_guard guard(caches_mutex_);
    auto it = caches_.find(local_cache_id);
    if (it == caches_.end()) {
      LOG_ERROR("%s: local cache %" PRId64 " is not registered", call, local_cache_id);
      return LLM_KV_CACHE_NOT_EXIST;
    }
    local->geometry = it->second.geometry;
    local->placement = it->second.placement;
  }
  *link = FindLink(remote_cluster);
  if (!*link) {
    LOG_ERROR("%s: no link to cluster %" PRIu64, call, remote_cluster);
    return LLM_NOT_YET_LINK;
  }
  if ((*link)->lost.load()) {
    LOG_ERROR("%s: cluster %" PRIu64 " lost its connection without unlinking; unlink it (force_flag) or let it "
              "link again", call, remote_cluster);
    return LLM_FAILED;
  }
  return LLM_SUCCESS;
}

Status DataDist::RemoteGeometry(const std::shared_ptr<Link> &link, int64_t cache_id, bool refresh,
                                CacheGeometry *out) {
  {
    std::lock_guard guard(link->cache_mutex);
    auto it = link->remote_caches.find(cache_id);
    if (it != link->remote_caches.end()) {
      if (!refresh) {
        *out = it->second;
        return LLM_SUCCESS;
      }
      link->remote_caches.erase(it);
    }
  }
  std::string response, error;
  adxl::Status status = engine_->AppCallKeyed(ClusterKey(link->remote_cluster), kAppGetCache,
                                              EncodeCacheQuery(cache_id), Deadline::AfterMs(sync_timeout_ms_),
                                              &response, &error);
  if (status == LLM_KV_CACHE_NOT_EXIST) {
    LOG_ERROR("cache %" PRId64 " is not registered on cluster %" PRIu64 " (%s)", cache_id, link->remote_cluster,
              StatusText(LLM_KV_CACHE_NOT_EXIST).c_str());
    return LLM_KV_CACHE_NOT_EXIST;
  }
  if (status != adxl::SUCCESS) {
    const Status llm = ToLlmStatus(wire::SanitizePeerStatus(status));
    LOG_ERROR("cannot query cache %" PRId64 " of cluster %" PRIu64 " (%s, returning %s): %s", cache_id,
              link->remote_cluster, StatusText(status).c_str(), StatusText(llm).c_str(),
              error.empty() ? PeerReason(response).c_str() : error.c_str());
    return llm;
  }
  if (!DecodeGeometry(response, out)) {
    LOG_ERROR("cluster %" PRIu64 " sent a malformed description of cache %" PRId64, link->remote_cluster, cache_id);
    return LLM_FAILED;
  }
  std::lock_guard guard(link->cache_mutex);
  link->remote_caches[cache_id] = *out;
  return LLM_SUCCESS;
}

Status DataDist::FindRemoteCache(const CacheKeyId &key, bool refresh, CacheIndex *index) {
  const char *call = "FindRemoteCache";
  if (!Ready(call)) return LLM_FAILED;
  if (key.kind != kBlocksKey && key.kind != kRequestKey) {
    LOG_ERROR("%s: cache key kind %u is neither a blocks key (1) nor a request key (2)", call, key.kind);
    return LLM_PARAM_INVALID;
  }
  if (key.cluster_id == cluster_id_) {
    LOG_ERROR("%s: %s names this instance itself", call, KeyText(key).c_str());
    return LLM_PARAM_INVALID;
  }
  std::shared_ptr<Link> link = FindLink(key.cluster_id);
  if (!link) {
    LOG_ERROR("%s: no link to cluster %" PRIu64 " (%s)", call, key.cluster_id, KeyText(key).c_str());
    return LLM_NOT_YET_LINK;
  }
  if (link->lost.load()) {
    LOG_ERROR("%s: cluster %" PRIu64 " lost its connection without unlinking; unlink it (force_flag) or let it "
              "link again", call, key.cluster_id);
    return LLM_FAILED;
  }
  // An unlink waits for the lookup, as for a transfer.
  std::shared_lock in_flight(link->in_flight);
  auto answer = [&](const KeyTarget &target) {
    index->cluster_id = key.cluster_id;
    index->cache_id = target.cache_id;
    index->batch_index = target.batch_index;
    return LLM_SUCCESS;
  };
  {
    std::lock_guard guard(link->cache_mutex);
    auto it = link->remote_keys.find(key);
    if (it != link->remote_keys.end()) {
      if (!refresh) return answer(it->second);
      link->remote_keys.erase(it);
    }
  }
  std::string response, error;
  adxl::Status status = engine_->AppCallKeyed(ClusterKey(key.cluster_id), kAppFindCache, EncodeKeyQuery(key),
                                              Deadline::AfterMs(sync_timeout_ms_), &response, &error);
  if (status == LLM_KV_CACHE_NOT_EXIST) {
    LOG_ERROR("%s: no cache is registered under %s on cluster %" PRIu64 " (%s)", call, KeyText(key).c_str(),
              key.cluster_id, StatusText(LLM_KV_CACHE_NOT_EXIST).c_str());
    return LLM_KV_CACHE_NOT_EXIST;
  }
  if (status == adxl::UNSUPPORTED) {
    LOG_ERROR("%s: cluster %" PRIu64 " runs a library without cache keys (it refused the query with %s)", call,
              key.cluster_id, StatusText(status).c_str());
    return LLM_FAILED;
  }
  if (status != adxl::SUCCESS) {
    const Status llm = ToLlmStatus(wire::SanitizePeerStatus(status));
    LOG_ERROR("%s: cannot look up %s on cluster %" PRIu64 " (%s, returning %s): %s", call, KeyText(key).c_str(),
              key.cluster_id, StatusText(status).c_str(), StatusText(llm).c_str(),
              error.empty() ? PeerReason(response).c_str() : error.c_str());
    return llm;
  }
  KeyTarget target;
  CacheGeometry geometry;
  if (!DecodeKeyAnswer(response, &target, &geometry)) {
    LOG_ERROR("%s: cluster %" PRIu64 " sent a malformed answer for %s", call, key.cluster_id, KeyText(key).c_str());
    return LLM_FAILED;
  }
  std::lock_guard guard(link->cache_mutex);
  link->remote_keys[key] = target;
  link->remote_caches[target.cache_id] = geometry;  // the transfer that follows needs no query
  return answer(target);
}

bool DataDist::MetricsJson(std::string *json) {
  // init_mutex_ keeps the engine from going away (Finalize resets it under it).
  std::lock_guard lock(init_mutex_);
  if (!initialized_.load() || !engine_) return false;
  *json = engine_->MetricsJson();
  return true;
}

void DataDist::LinksChangedLocked(bool established) {
  EngineMetrics &metrics = engine_->Metrics();
  metrics.CountLink(established);
  metrics.SetLinks(links_.size());
}

Status DataDist::RunPlan(const char *call, Direction direction, uint64_t cluster, int64_t remote_cache_id,
                         const std::shared_ptr<Link> &link, const TransferPlan &plan, uint64_t blocks) {
  Deadline deadline = Deadline::AfterMs(sync_timeout_ms_);
  std::vector<Segment> segs;
  segs.reserve(plan.RangeCount());
  for (const auto &[local_base, remote_base] : plan.tensor_pairs) {
    for (const Run &run : plan.runs) {
      Segment seg{static_cast<uintptr_t>(local_base + run.local_offset),
                  static_cast<uintptr_t>(remote_base + run.remote_offset), run.len};
      if (!segs.empty() && segs.back().local + segs.back().len == seg.local &&
          segs.back().remote + segs.back().len == seg.remote) {
        segs.back().len += seg.len;
      } else {
        segs.push_back(seg);
      }
    }
  }
  std::string error;
  adxl::Status status;
  // The caller (Transfer) holds the link's in_flight lock.
  status = engine_->TransferKeyed(ClusterKey(cluster), direction == Direction::kPull ? adxl::READ : adxl::WRITE,
                                  segs, deadline, &error);
  if (status == adxl::SUCCESS) {
    const metrics::Direction counted = direction == Direction::kPull ? metrics::kPull : metrics::kPush;
    engine_->Metrics().CountCacheTransfer(counted);
    if (blocks != 0) engine_->Metrics().CountBlocks(counted, blocks);
    return LLM_SUCCESS;
  }
  if (status == adxl::PARAM_INVALID) {
    // The peer refused a range: most likely the cache was unregistered (or
    // re-registered) since we cached its geometry. Forget it and say which.
    CacheGeometry fresh;
    Status again = RemoteGeometry(link, remote_cache_id, /*refresh=*/true, &fresh);
    if (again == LLM_KV_CACHE_NOT_EXIST) return LLM_KV_CACHE_NOT_EXIST;
  }
  LOG_ERROR("%s with cluster %" PRIu64 " failed with %s (transfer: %s): %s", call, cluster,
            StatusText(ToLlmStatus(status)).c_str(), StatusText(status).c_str(), error.c_str());
  return ToLlmStatus(status);
}

Status DataDist::Transfer(const char *call, Direction direction, uint64_t remote_cluster, int64_t local_cache_id,
                          int64_t remote_cache_id, const PlanFunction &make_plan, uint64_t blocks) {
  LocalCache local;
  std::shared_ptr<Link> link;
  Status status = Prepare(call, remote_cluster, local_cache_id, &local, &link);
  if (status != LLM_SUCCESS) return status;
  // In flight from here: an unlink waits for the whole call, the remote
  // geometry query included, not only for its data transfer.
  std::shared_lock in_flight(link->in_flight);
  SyncPoint("DataDist::Transfer:link_taken");
  CacheGeometry remote;
  status = RemoteGeometry(link, remote_cache_id, false, &remote);
  if (status != LLM_SUCCESS) return status;
  TransferPlan plan;
  std::string error;
  status = make_plan(local.geometry, remote, &plan, &error);
  if (status != LLM_SUCCESS) {
    LOG_ERROR("%s: %s", call, error.c_str());
    return status;
  }
  return RunPlan(call, direction, remote_cluster, remote_cache_id, link, plan, blocks);
}

Status DataDist::PullKvCache(const CacheIndex &src, const Cache &dst, uint32_t batch_index, int64_t size,
                             const KvCacheExtParam &ext) {
  const char *call = "PullKvCache";
  if (!Ready(call)) return LLM_FAILED;
  if (size == 0 || size < -1) {
    LOG_ERROR("%s: size %" PRId64 " must be -1 (whole row) or > 0", call, size);
    return LLM_PARAM_INVALID;
  }
  if (!CheckExt(call, ext, false)) return LLM_PARAM_INVALID;
  return Transfer(call, Direction::kPull, src.cluster_id, dst.cache_id, src.cache_id,
                  [&](const CacheGeometry &local, const CacheGeometry &remote, TransferPlan *plan, std::string *why) {
                    return PlanPullCache(local, remote, src.batch_index, batch_index, size, ext, plan, why);
                  });
}

Status DataDist::PullKvBlocks(const CacheIndex &src, const Cache &dst, const std::vector<uint64_t> &src_blocks,
                              const std::vector<uint64_t> &dst_blocks, const KvCacheExtParam &ext) {
  const char *call = "PullKvBlocks";
  if (!Ready(call)) return LLM_FAILED;
  if (src.batch_index != 0) {
    LOG_ERROR("%s: src batch_index must be 0 (got %u)", call, src.batch_index);
    return LLM_PARAM_INVALID;
  }
  if (!CheckBlockLists(call, src_blocks, dst_blocks) || !CheckExt(call, ext, false)) return LLM_PARAM_INVALID;
  return Transfer(call, Direction::kPull, src.cluster_id, dst.cache_id, src.cache_id,
                  [&](const CacheGeometry &local, const CacheGeometry &remote, TransferPlan *plan, std::string *why) {
                    return PlanPullBlocks(local, remote, src_blocks, dst_blocks, ext, plan, why);
                  },
                  src_blocks.size());
}

Status DataDist::PushKvCache(const Cache &src, const CacheIndex &dst, uint32_t src_batch_index, int64_t size,
                             const KvCacheExtParam &ext) {
  const char *call = "PushKvCache";
  if (!Ready(call)) return LLM_FAILED;
  if (size != -1) {
    LOG_ERROR("%s: size must be -1 (got %" PRId64 ")", call, size);
    return LLM_PARAM_INVALID;
  }
  if (!CheckPushSource(call, src, ext) || !CheckExt(call, ext, true)) return LLM_PARAM_INVALID;
  return Transfer(call, Direction::kPush, dst.cluster_id, src.cache_id, dst.cache_id,
                  [&](const CacheGeometry &local, const CacheGeometry &remote, TransferPlan *plan, std::string *why) {
                    return PlanPushCache(local, src.cache_desc.num_tensors, remote, src_batch_index,
                                         dst.batch_index, size, ext, plan, why);
                  });
}

Status DataDist::PushKvBlocks(const Cache &src, const CacheIndex &dst, const std::vector<uint64_t> &src_blocks,
                              const std::vector<uint64_t> &dst_blocks, const KvCacheExtParam &ext) {
  const char *call = "PushKvBlocks";
  if (!Ready(call)) return LLM_FAILED;
  if (dst.batch_index != 0) {
    LOG_ERROR("%s: dst batch_index must be 0 (got %u)", call, dst.batch_index);
    return LLM_PARAM_INVALID;
  }
  if (!CheckBlockLists(call, src_blocks, dst_blocks) || !CheckPushSource(call, src, ext) ||
      !CheckExt(call, ext, true))
    return LLM_PARAM_INVALID;
  return Transfer(call, Direction::kPush, dst.cluster_id, src.cache_id, dst.cache_id,
                  [&](const CacheGeometry &local, const CacheGeometry &remote, TransferPlan *plan, std::string *why) {
                    return PlanPushBlocks(local, src.cache_desc.num_tensors, remote, src_blocks, dst_blocks, ext,
                                          plan, why);
                  },
                  src_blocks.size());
}

}  // namespace llmdd::datadist
