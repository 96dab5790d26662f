// DataDist: the LLM-DataDist V2 implementation behind llm_datadist::LlmDataDist.
// Turns cache/link/transfer calls into engine operations and maps every outcome
// to an LLM status with one log line saying why.
//
// Links: the side that calls LinkLlmClusters opens an engine channel (forward
// lanes for its requests, reverse lanes for the peer's requests) and sends a
// Link message; the listening side records the link when it arrives. Either
// side may then pull or push. Remote cache geometry is fetched on first use and
// cached per link, so caches registered after the link are visible too.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "datadist/link_messages.h"
#include "datadist/planner.h"
#include "device/device.h"
#include "engine/engine.h"
#include "llm_datadist/llm_datadist.h"

namespace llmdd::datadist {

using llm_datadist::Status;

class DataDist {
 public:
  DataDist(uint64_t cluster_id, llm_datadist::LlmRole role);
  ~DataDist();

  Status Initialize(const std::map<std::string, std::string> &options);
  void Finalize();
  Status SetRole(llm_datadist::LlmRole role, const std::map<std::string, std::string> &options);
  Status LinkClusters(const std::vector<llm_datadist::ClusterInfo> &clusters, std::vector<Status> &rets,
                      int32_t timeout_ms);
  Status UnlinkClusters(const std::vector<llm_datadist::ClusterInfo> &clusters, std::vector<Status> &rets,
                        int32_t timeout_ms, bool force);
  // access: remote access bits (kAccessRead/kAccessWrite) peers get on the tensors.
  // keys: what peers may name the cache by (llmdd_ext::RegisterKvCacheWithKeys
  // states the rules); placeholders (a request key with no req_id and no
  // prefix_id) hold a row's place and are not registered.
  Status RegisterKvCache(const llm_datadist::CacheDesc &desc, const std::vector<uint64_t> &addrs, uint32_t access,
                         int64_t &cache_id, const std::vector<CacheKeyId> &keys = {});
  Status UnregisterKvCache(int64_t cache_id);
  Status PullKvCache(const llm_datadist::CacheIndex &src, const llm_datadist::Cache &dst, uint32_t batch_index,
                     int64_t size, const llm_datadist::KvCacheExtParam &ext);
  Status PullKvBlocks(const llm_datadist::CacheIndex &src, const llm_datadist::Cache &dst,
                      const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks,
                      const llm_datadist::KvCacheExtParam &ext);
  Status PushKvCache(const llm_datadist::Cache &src, const llm_datadist::CacheIndex &dst, uint32_t src_batch_index,
                     int64_t size, const llm_datadist::KvCacheExtParam &ext);
  Status PushKvBlocks(const llm_datadist::Cache &src, const llm_datadist::CacheIndex &dst,
                      const std::vector<uint64_t> &src_blocks, const std::vector<uint64_t> &dst_blocks,
                      const llm_datadist::KvCacheExtParam &ext);

  // The engine's metrics as JSON (llmdd_ext::GetMetricsJson): false when
  // not initialized (there is no engine then).
  bool MetricsJson(std::string *json);
  // The cache `key` names on the linked peer key.cluster_id (llmdd_ext::FindRemoteCache).
  Status FindRemoteCache(const CacheKeyId &key, bool refresh, llm_datadist::CacheIndex *index);

  uint64_t ClusterId() const { return cluster_id_; }

 private:
  struct LocalCache {
    CacheGeometry geometry;
    llm_datadist::CachePlacement placement;
    std::vector<uint64_t> handles;  // engine registrations, one per tensor
    std::vector<CacheKeyId> keys;   // registered with it (some may name a newer cache by now)
  };
  struct Link {
    uint64_t remote_cluster = 0;
    bool outbound = false;     // we connected (we own the engine channel)
    uint64_t session_id = 0;   // for inbound links: the peer's engine session
    // Inbound link whose peer's connections went away without an unlink (a
    // crash, or its forced unlink): kept, as in CANN, until this side unlinks
    // or the peer links again; transfers on it fail.
    std::atomic<bool> lost{false};
    std::shared_mutex in_flight;  // transfers hold it shared; unlink exclusively
    std::mutex cache_mutex;
    std::map<int64_t, CacheGeometry> remote_caches;
    std::map<CacheKeyId, KeyTarget> remote_keys;  // what the peer answered to kAppFindCache
  };
  enum class Direction { kPull, kPush };

  Status LinkOne(const llm_datadist::ClusterInfo &cluster, int32_t timeout_ms);
  Status UnlinkOne(const llm_datadist::ClusterInfo &cluster, int32_t timeout_ms, bool force);
  std::shared_ptr<Link> FindLink(uint64_t cluster);
  // Removes the link record and releases its connections (locally only).
  void DropLink(const std::shared_ptr<Link> &link, bool say_goodbye, Deadline deadline);
  Status RemoteGeometry(const std::shared_ptr<Link> &link, int64_t cache_id, bool refresh, CacheGeometry *out);
  using PlanFunction = std::function<Status(const CacheGeometry &local, const CacheGeometry &remote,
                                            TransferPlan *plan, std::string *error)>;
  // The common tail of the four transfer calls: local cache, link and remote
  // cache lookups (in the spec's order), planning, then the transfer.
  Status Transfer(const char *call, Direction direction, uint64_t remote_cluster, int64_t local_cache_id,
                  int64_t remote_cache_id, const PlanFunction &make_plan, uint64_t blocks = 0);
  // blocks: of a Pull/PushKvBlocks, counted in the metrics when it succeeds.
  Status RunPlan(const char *call, Direction direction, uint64_t cluster, int64_t remote_cache_id,
                 const std::shared_ptr<Link> &link, const TransferPlan &plan, uint64_t blocks);
  // links_ changed (links_mutex_ held; the engine is up): counts and sets the gauge.
  void LinksChangedLocked(bool established);
  // Common checks of the four transfer calls; fills the local cache and link.
  Status Prepare(const char *call, uint64_t remote_cluster, int64_t local_cache_id, LocalCache *local,
                 std::shared_ptr<Link> *link);
  adxl::Status HandleApp(const std::string &peer, uint64_t session_id, const std::string &typed_request,
                         std::string *response);
  void OnPeerDetached(const std::string &peer, uint64_t session_id, bool said_goodbye);
  void JanitorLoop();
  void ScheduleClose(uint64_t cluster);
  bool Ready(const char *call) const;

  const uint64_t cluster_id_;
  std::atomic<llm_datadist::LlmRole> role_;
  std::mutex init_mutex_;
  std::atomic<bool> initialized_{false};
  int32_t sync_timeout_ms_ = 1000;
  std::unique_ptr<Device> device_;
  std::unique_ptr<Engine> engine_;
  Endpoint listen_;
  bool listening_ = false;
  bool hixl_backend_ = false;  // llm.TransferBackend=hixl: always listening, at one address
  std::atomic<bool> local_comm_known_{false};  // listening, llm.LocalCommRes, or linked once

  std::mutex caches_mutex_;
  std::map<int64_t, LocalCache> caches_;
  std::map<CacheKeyId, KeyTarget> keys_;  // a key names the newest cache registered under it
  int64_t next_cache_id_ = 1;

  std::mutex links_mutex_;
  std::map<uint64_t, std::shared_ptr<Link>> links_;
  std::map<uint64_t, bool> linking_;  // links being set up (reserved ids)

  // Channels to close outside serving threads (a peer's Unlink arrives on one).
  std::mutex janitor_mutex_;
  std::condition_variable janitor_wake_;
  std::deque<uint64_t> janitor_queue_;
  bool janitor_stop_ = false;
  std::thread janitor_;
};

// Maps engine statuses to LLM statuses (TIMEOUT -> LLM_TIMEOUT, ...).
Status ToLlmStatus(adxl::Status status);

}  // namespace llmdd::datadist
