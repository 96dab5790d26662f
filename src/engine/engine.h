// Engine: the transfer engine core behind adxl::AdxlEngine (and used by
// LLM-DataDist). Owns the memory registry, the server side, the client
// channels and the requester worker pool; validates every argument and maps
// every failure to an adxl status with one log line saying why.
//
// Every transfer is a TransferRequest (engine/transfer_request.h): the
// synchronous calls (TransferSync, TransferKeyed) admit one and run it on the
// calling thread; SubmitTransfer queues one on the worker pool and returns it.
// At most llmdd.MaxRequestsInFlight are in flight; Finalize cancels them.
//
// With AutoConnect or a channel pool (engine/channel_pool.h), TransferSync,
// TransferAsync and SendNotify to a remote without a channel open one
// (ChannelFor), and the channels this engine opens share the pool's slots.
//
// Thread-safety: every method may be called concurrently except Initialize and
// Finalize, which take the lifecycle lock exclusively (they wait for running
// calls instead of racing them).
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
#include <vector>

#include "adxl/adxl_types.h"
#include "common/endpoint.h"
#include "engine/async_requests.h"
#include "engine/channel.h"
#include "engine/channel_pool.h"
#include "engine/engine_config.h"
#include "engine/lane.h"
#include "engine/memory_registry.h"
#include "engine/metrics.h"
#include "engine/metrics_server.h"
#include "engine/notify_inbox.h"
#include "engine/peer_server.h"
#include "engine/reactor.h"
#include "engine/transfer_request.h"
#include "engine/transports.h"
#include "engine/worker_pool.h"

namespace llmdd {

class Engine {
 public:
  Engine();
  ~Engine();
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;

  adxl::Status Initialize(const std::string &local_engine, const std::map<std::string, std::string> &options);
  void Finalize();
  bool Initialized() const;

  // access: kAccessRead/kAccessWrite bits peers get (enforced when serving);
  // kAccessNone: local only, never reachable by peers (MemDesc::local_only).
  adxl::Status RegisterMem(uintptr_t addr, uint64_t len, adxl::MemType type, uint64_t *handle,
                           uint32_t access = kAccessReadWrite);
  adxl::Status DeregisterMem(uint64_t handle);

  // With a channel pool, a Connect takes a slot: when every slot is busy it
  // waits for one within its timeout, then RESOURCE_EXHAUSTED; the channel
  // it opens may be closed by the pool when idle (a later transfer opens it
  // again).
  adxl::Status Connect(const std::string &remote, int32_t timeout_ms);
  adxl::Status Disconnect(const std::string &remote, int32_t timeout_ms);
  // Without a channel to `remote`: NOT_CONNECTED, or with auto-connect a
  // channel is opened within the timeout first (ChannelFor: its failure is
  // the transfer's status).
  adxl::Status TransferSync(const std::string &remote, adxl::TransferOp op, const adxl::TransferOpDesc *descs,
                            size_t count, int32_t timeout_ms);

  // ---- Asynchronous transfers (docs/API.md, "TransferAsync") ----
  // Validates like TransferSync, submits the transfer and returns at once with
  // its id (*id, never 0; 0 when refused). timeout_ms: the request's own
  // deadline (llmdd/extensions.h SetTransferTimeout), 0 for none: a timer
  // cancels it then, whether anyone polls or not, and it ends TIMEOUT;
  // without one it runs for at most llmdd.AsyncTransferMaxMs and ends FAILED
  // then. Refused: FAILED (not initialized, finalizing, the peer is dead),
  // PARAM_INVALID, NOT_CONNECTED, RESOURCE_EXHAUSTED (llmdd.MaxRequestsInFlight
  // requests are held by the async table, or in flight in the engine). With
  // auto-connect, a remote without a channel is connected first, within
  // kAutoConnectAsyncMs or the request's own timeout_ms, whichever is shorter
  // (the caller waits for it); a failed connect is refused with its status.
  static constexpr int32_t kAutoConnectAsyncMs = 1000;
  adxl::Status TransferAsync(const std::string &remote, adxl::TransferOp op, const adxl::TransferOpDesc *descs,
                             size_t count, const void *user_data, uint32_t timeout_ms, uint64_t *id);
  // SUCCESS with WAITING or COMPLETED; TIMEOUT with TIMEOUT (its own
  // deadline passed); FAILED with FAILED (the request failed). Terminal
  // statuses end the request: its id is unknown afterwards. PARAM_INVALID
  // (status FAILED) for an id that is not held: never issued, or already
  // reported terminal. id 0: FAILED.
  adxl::Status GetTransferStatus(uint64_t id, adxl::TransferStatus *status);
  // HIXL's bulk query: the statuses of the held requests in id order, at most
  // max_count, WAITING ones left out when skip_waiting; terminal ones are
  // released as by GetTransferStatus. SUCCESS (each result has its status).
  adxl::Status GetTransferStatuses(uint32_t max_count, bool skip_waiting, std::vector<AsyncRequests::Result> *results);
  // Requests the async table holds (submitted, terminal status not read yet).
  size_t AsyncRequestsHeld() const { return async_.Size(); }

  // ---- Notifications (docs/API.md, "Notifications") ----
  // Sends `notify` to the server `remote` (a channel of Connect) over its
  // control connection and waits for its acknowledgement. PARAM_INVALID
  // (timeout <= 0, name or message over 1024 bytes), FAILED (not
  // initialized, the peer is dead or the connection lost), NOT_CONNECTED,
  // UNSUPPORTED (the remote is an earlier revision without notifications),
  // TIMEOUT (no answer in time), or the remote's refusal:
  // RESOURCE_EXHAUSTED (it holds 4096 unconsumed notifies of this link, or
  // llmdd.MaxNotifyBytes of all), with a log line each. The lifecycle lock is
  // not held while it waits: Finalize ends the wait (FAILED). With
  // auto-connect, a remote without a channel is connected first (within the
  // timeout), as for TransferSync.
  adxl::Status SendNotify(const std::string &remote, const wire::Notify &notify, int32_t timeout_ms);
  // Appends every notify received on this engine's serving side, oldest
  // first, and forgets them. FAILED if not initialized.
  adxl::Status GetNotifies(std::vector<wire::Notify> *notifies);
  // Notifies held unconsumed (tests).
  size_t NotifiesHeld() const { return notifies_.Size(); }

  const std::string &LocalId() const { return local_id_; }
  const EngineConfig &Config() const { return config_; }

  // ---- Internal API for layers above ADXL (LLM-DataDist) ----
  // Hooks must be set before Start(); they run on server threads.
  struct Hooks {
    AppHandler app_handler;
    // A peer that connected to us opened reverse lanes: we can send it requests.
    std::function<void(const std::string &peer_id, uint64_t session_id)> on_peer_attached;
    // The session of a peer with reverse lanes ended; said_goodbye: it
    // disconnected on purpose (else the connection was lost or dropped).
    std::function<void(const std::string &peer_id, uint64_t session_id, bool said_goodbye)> on_peer_detached;
  };
  // Adds a transport beside TCP and the same-host path (tests: a fake,
  // transport/fake/fake_transport.h); call before Initialize/Start.
  void AddTransport(std::shared_ptr<Transport> transport) { transports_.Add(std::move(transport)); }
  // Starts with an arbitrary identity (sent in Hello) and an optional listener.
  adxl::Status Start(const std::string &identity, const EngineConfig &config, const Endpoint *listen, Hooks hooks);
  adxl::Status StartListening(const Endpoint &listen);
  void StopListening();
  bool Listening() const;
  int ListenPort() const;

  // Channels keyed by a caller-chosen key; reverse_lanes > 0 lets the peer
  // send us requests over connections we opened (links are bidirectional).
  adxl::Status ConnectKeyed(const std::string &key, const Endpoint &remote, uint32_t reverse_lanes,
                            Deadline deadline, std::string *error);
  // say_goodbye=false closes locally without network traffic (forced unlink).
  // Requests queued by SubmitTransfer on the channel are canceled; the
  // synchronous transfers running on it are waited for (as CANN does).
  adxl::Status DisconnectKeyed(const std::string &key, Deadline deadline, bool say_goodbye);
  // Ends the session a peer opened to us (server side of a forced unlink).
  void DropAttachedPeer(const std::string &peer_id, uint64_t session_id);
  // Moves segments to/from the peer: over our channel `key` if there is one,
  // else over the reverse lanes of the peer whose identity is `key`.
  adxl::Status TransferKeyed(const std::string &key, adxl::TransferOp op, const std::vector<Segment> &segs,
                             Deadline deadline, std::string *error);
  adxl::Status AppCallKeyed(const std::string &key, uint32_t app_type, const std::string &request,
                            Deadline deadline, std::string *response, std::string *error);
  bool HasChannel(const std::string &key);
  // What the handshake of our channel to `key` learned (diagnostics:
  // llmdd_ext::GetPeerInfo); false when there is no open channel.
  bool DescribePeer(const std::string &key, PeerFacts *facts);
  // Slots of the channel pool taken (open channels and connects in progress; tests).
  size_t ChannelSlotsTaken();

  // Starts moving `segs` (validated, e.g. by BuildSegments) to/from the peer
  // `key` (resolved as TransferKeyed does) on the worker pool and returns at
  // once. SUCCESS: *request is running and ends by its deadline at the latest
  // (an empty `segs` gives one already done). Refused, with no request:
  // FAILED (not initialized or finalizing, or the peer is dead),
  // NOT_CONNECTED, RESOURCE_EXHAUSTED (llmdd.MaxRequestsInFlight requests
  // are in flight, or no worker can take it).
  adxl::Status SubmitTransfer(const std::string &key, adxl::TransferOp op, std::vector<Segment> segs,
                              Deadline deadline, std::shared_ptr<TransferRequest> *request, std::string *error);
  // Requests admitted and not done yet (what llmdd.MaxRequestsInFlight caps).
  size_t RequestsInFlight() const;

  // ---- Metrics (engine/metrics.h, docs/METRICS.md) ----
  // The counters: cumulative over this object's life (across Finalize and
  // Initialize), so a scraper never sees them go down.
  EngineMetrics &Metrics() { return metrics_; }
  // The counters and the gauges now (the gauges are zero when not initialized).
  void MetricsSnapshotOf(MetricsSnapshot *out);
  std::string MetricsJson();
  std::string MetricsText();
  // The port llmdd.MetricsListen serves on (-1: none).
  int MetricsPort() const;

 private:
  adxl::Status StartServerLocked(const Endpoint &listen);
  // ConnectKeyed with the lifecycle lock already held (shared) by the caller.
  // pooled: the channel takes a slot of the channel pool (Reserve); on
  // success *opened (when given) is the channel and *pin (when given) pins
  // it, taken under the same lock that installs it, so the pool cannot close
  // it before the caller uses it.
  adxl::Status ConnectLocked(const std::string &key, const Endpoint &remote, uint32_t reverse_lanes, Deadline deadline,
                             std::string *error, bool pooled = false, std::shared_ptr<Channel> *opened = nullptr,
                             ChannelPool::Pin *pin = nullptr);
  // Reserves `key` for a connect (a null entry in channels_, so a second
  // Connect sees ALREADY_CONNECTED, and its ConnectOutcome). pooled: also a
  // slot of the channel pool, closing the channels it says must go, and
  // waiting for a slot until the deadline (then RESOURCE_EXHAUSTED).
  adxl::Status Reserve(const std::string &key, bool pooled, Deadline deadline, std::string *error);
  // Says goodbye to and closes channels the pool evicted (idle: nothing to
  // wait for), in parallel, within the connect's deadline and at most
  // kEvictGoodbyeMs.
  void CloseEvicted(std::vector<std::shared_ptr<Channel>> channels, Deadline deadline);
  // The channel for a call of the public API (`call` names it in errors) to
  // `remote`, pinned by *pin. Without one: NOT_CONNECTED; with auto-connect
  // it is opened within `deadline` (a connect in progress to `remote` is
  // waited for and its outcome shared; a dead channel is dropped and opened
  // again): PARAM_INVALID for a remote Connect would refuse, the connect's
  // status when it fails, TIMEOUT when a shared connect outlasts the deadline.
  // Lifecycle lock held (shared).
  adxl::Status ChannelFor(const char *call, const std::string &remote, Deadline deadline,
                          std::shared_ptr<Channel> *channel, ChannelPool::Pin *pin, std::string *error);
  // Resolves `key` to a lane pool (channel first, then attached peer) and keeps it alive.
  std::shared_ptr<LanePool> FindPool(const std::string &key, std::shared_ptr<Channel> *channel);

  // What a request runs on (the channel, if any, is guarded against Close while it runs).
  struct Route {
    std::shared_ptr<Channel> channel;
    std::shared_ptr<LanePool> pool;
    // Keeps a pooled channel busy until the request is done (its runner
    // drops the route then); shared by the route's copies.
    std::shared_ptr<ChannelPool::Pin> pin;
  };
  // Counts `request` in flight and lets Finalize see it; refuses with FAILED
  // (finalizing) or RESOURCE_EXHAUSTED (the cap), *error saying why.
  adxl::Status Admit(TransferRequest *request, const Route &route, bool submitted, std::string *error);
  // Runs an admitted request to its end on this thread, then lets it go;
  // its outcome in *outcome and *outcome_error when given.
  void RunRequest(TransferRequest *request, Route route, bool queued, adxl::Status *outcome = nullptr,
                  std::string *outcome_error = nullptr);
  // Admits a request for `segs` and runs it here (the caller waits anyway:
  // no thread hop, no allocation). The request's outcome, or the refusal
  // (*refused set).
  // descriptors: as the caller passed them (0: segs.size()); submitted: when
  // the caller's call began, if it read the clock then (else now).
  adxl::Status RunHere(const std::string &key, Route route, adxl::TransferOp op, const std::vector<Segment> &segs,
                       Deadline deadline, std::string *error, bool *refused = nullptr, size_t descriptors = 0,
                       std::chrono::steady_clock::time_point submitted = {});
  // SubmitTransfer with the route resolved (lifecycle lock held, shared).
  adxl::Status SubmitLocked(const std::string &key, const Route &route, adxl::TransferOp op, std::vector<Segment> segs,
                            Deadline deadline, std::shared_ptr<TransferRequest> *request, std::string *error,
                            size_t descriptors = 0);
  // Counts an ended (or refused) request in the metrics and, at debug level,
  // logs its one-line record (docs/METRICS.md, "Per-transfer record").
  void RecordEnd(const TransferRequest &request, adxl::Status status, const std::string &error);
  static void RequestDone(void *engine);
  // Cancels the deadline timers of async requests that were released (they
  // may still be due): their captures go now, not at their deadlines.
  void CancelDeadlineTimers(const uint64_t *timers, size_t count);
  void ForgetRunner(TransferRequest *request);
  // Ends an admitted request that did not run (or ran carried by a group)
  // with `status` and lets it go.
  void EndRunner(TransferRequest *request, adxl::Status status, std::string error);

  // Submitted requests wait per lane pool for a worker. The worker takes the
  // oldest and, of the others queued to the same pool, those it can carry in
  // the same transfer (same operation, within path_policy.h's coalescing
  // caps): many small asynchronous requests to one peer then cost a round
  // trip per lane, as one TransferSync of their descriptors does, not one
  // round trip each. One worker task at most waits per pool (runner_posted):
  // a burst of submissions wakes one worker, which takes what has queued by
  // the time it runs, instead of one wake-up per submission, each taking a
  // fragment (on a host with few cores those wake-ups also preempt the
  // submitting thread). A runner that leaves requests behind posts the next.
  struct Queued {
    std::shared_ptr<TransferRequest> request;
    Route route;
  };
  struct PoolQueue {
    std::deque<Queued> requests;
    bool runner_posted = false;  // a RunQueued task for this pool is queued and has not taken yet
    std::chrono::steady_clock::time_point last_arrival;  // of the newest submission
  };
  void RunQueued(const LanePool *pool);
  // While a burst of submissions to `pool` is still arriving (path_policy.h's
  // kCoalesceQuietGap, at most kCoalesceMaxLinger), waits for it to end.
  void LingerForBurst(const LanePool *pool);
  // Runs requests taken together (the oldest first) as one carrier request:
  // each member is attached to it (its Cancel cancels the carrier) and ends
  // with the carrier's SUCCESS; after a failure each member not canceled runs
  // again alone, so that each gets its own outcome (a bad range fails only
  // the request that has it).
  void RunTogether(std::vector<Queued> taken);
  Hooks hooks_;
  std::mutex attached_mutex_;
  struct Attached {
    uint64_t session_id;
    std::shared_ptr<LanePool> pool;
  };
  std::map<std::string, Attached> attached_;

  // Lock order (docs/ARCHITECTURE.md): lifecycle_ops_ -> lifecycle_ -> channels_mutex_ / attached_mutex_.
  // lifecycle_ops_ serializes Start/Finalize/StartListening/StopListening;
  // lifecycle_ is taken shared by every call and exclusively only for short
  // state changes: nothing waits for a thread while holding it exclusively.
  std::mutex lifecycle_ops_;
  mutable std::shared_mutex lifecycle_;
  bool initialized_ = false;
  std::string local_id_;
  Endpoint local_endpoint_;
  EngineConfig config_;
  MemoryRegistry registry_;
  // What peers notified us (the server's sessions add, GetNotifies takes);
  // declared before server_, which adds to it.
  NotifyInbox notifies_;
  TransportSet transports_;  // before the server and the channels, which make links from it
  std::unique_ptr<WorkerPool> workers_;
  // Declared before server_ and the channels, which run on it: it outlives them.
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<PeerServer> server_;

  std::mutex channels_mutex_;
  // A null value marks a Connect in progress (so a second Connect sees ALREADY_CONNECTED).
  std::map<std::string, std::shared_ptr<Channel>> channels_;
  // The outcome of each connect in progress (guarded by channels_mutex_):
  // auto-connects to a remote that is being connected wait for it
  // (connect_done_, with channels_mutex_) and share its status, so
  // concurrent transfers open one channel.
  struct ConnectOutcome {
    bool done = false;
    adxl::Status status = adxl::FAILED;
    std::string error;
  };
  std::map<std::string, std::shared_ptr<ConnectOutcome>> connecting_;
  std::condition_variable connect_done_;
  // The channel pool's slots (guarded by channels_mutex_ but for its pins
  // and waits: engine/channel_pool.h). Disabled unless AutoConnect or a
  // channel pool was configured.
  ChannelPool pool_;

  // Requests (lock order: beside channels_mutex_; a request's own lock is a leaf below).
  mutable std::mutex requests_mutex_;
  std::condition_variable runners_ended_;  // live_ became empty
  bool requests_closed_ = false;           // Finalize: no new requests
  // Admitted and not done (the cap): raised under requests_mutex_, lowered
  // without it by the done hook (which runs under the request's lock).
  std::atomic<size_t> requests_in_flight_{0};
  // Admitted requests whose runner has not let go yet (Finalize cancels them
  // and waits for them before it takes the channels and workers down): an
  // intrusive list through TransferRequest::live_prev/live_next, so that
  // admitting a request allocates nothing.
  TransferRequest *live_ = nullptr;
  // Submitted requests not taken by a worker yet, per lane pool (RunQueued).
  // A leaf lock: under it only a request's immutable fields and atomics are read.
  std::mutex queued_mutex_;
  std::map<const LanePool *, PoolQueue> queued_;  // an entry exists while it has requests

  // TransferAsync's requests until their terminal status is read; kept
  // across Finalize (a query afterwards still gets the request's end).
  AsyncRequests async_;

  EngineMetrics metrics_;
  // llmdd.MetricsListen's endpoint: started last by Start, stopped first by
  // Finalize (its thread reads the gauges under lifecycle_, shared).
  std::unique_ptr<MetricsServer> metrics_server_;
  std::atomic<int> metrics_port_{-1};  // its port, for MetricsPort() from any thread
};

// Validates descriptors (null addresses, wrap-around) and merges neighbours that
// are adjacent on both sides; zero-length descriptors are dropped.
adxl::Status BuildSegments(const adxl::TransferOpDesc *descs, size_t count, std::vector<Segment> *segs,
                           std::string *error);

}  // namespace llmdd
