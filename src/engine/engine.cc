#include "engine/engine.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <new>
#include <optional>

#include "common/log.h"
#include "common/status_name.h"
#include "common/sync_point.h"
#include "common/threads.h"
#include "engine/call_cancel.h"
#include "transport/tcp/tcp_stream.h"
#include "transport/fault_injection.h"
#ifdef LLMDD_HAVE_UCX
#include "transport/ucx/ucx_transport.h"
#endif

namespace llmdd {
namespace {

// Finalize says goodbye to every peer it connected to within this much time in all.
constexpr int64_t kFinalizeGoodbyeMs = 1000;
// Finalize logs the requests it still waits for after this long.
constexpr int64_t kFinalizeRunnersLogMs = 1000;
// Channels the pool closes say goodbye within this much time in all (and
// within the connect's deadline): the connect that needed the slot should
// not wait long for a frozen idle peer, whose session its server drops anyway.
constexpr int64_t kEvictGoodbyeMs = 200;

// True at most once a second (per call site): refusals that a busy caller
// may hit in a loop are logged, not flooded.
bool LogThisSecond(std::atomic<int64_t> *last_ms) {
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_ms->load(std::memory_order_relaxed);
  return now - last >= 1000 && last_ms->compare_exchange_strong(last, now, std::memory_order_relaxed);
}

}  // namespace

adxl::Status BuildSegments(const adxl::TransferOpDesc *descs, size_t count, std::vector<Segment> *segs,
                           std::string *error) {
  segs->clear();
  segs->reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const auto &d = descs[i];
    if (d.local_addr == 0 || d.remote_addr == 0) {
      *error = "descriptor " + std::to_string(i) + " has a null " + (d.local_addr == 0 ? "local" : "remote") +
               " address";
      return adxl::PARAM_INVALID;
    }
    uintptr_t end = 0;
    if (__builtin_add_overflow(d.local_addr, d.len, &end) || __builtin_add_overflow(d.remote_addr, d.len, &end)) {
      *error = "descriptor " + std::to_string(i) + " wraps around the address space";
      return adxl::PARAM_INVALID;
    }
    if (d.len == 0) continue;
    if (!segs->empty()) {
      Segment &last = segs->back();
      if (last.local + last.len == d.local_addr && last.remote + last.len == d.remote_addr) {
        last.len += d.len;
        continue;
      }
    }
    segs->push_back({d.local_addr, d.remote_addr, d.len});
  }
  return adxl::SUCCESS;
}

Engine::Engine() = default;

Engine::~Engine() {
  // A destructor must not throw (that would terminate the process).
  RunGuarded("~Engine", [this] { Finalize(); });
}

bool Engine::Initialized() const {
  std::shared_lock lock(lifecycle_);
  return initialized_;
}

adxl::Status Engine::Initialize(const std::string &local_engine, const std::map<std::string, std::string> &options) {
  {
    std::shared_lock lock(lifecycle_);
    if (initialized_) {
      LOG_INFO("engine %s already initialized; Initialize ignored", local_id_.c_str());
      return adxl::SUCCESS;
    }
  }
  Endpoint endpoint;
  std::string error;
  if (!ParseEngineEndpoint(local_engine, &endpoint, &error)) {
    LOG_ERROR("Initialize: invalid local engine '%s': %s", local_engine.c_str(), error.c_str());
    return adxl::PARAM_INVALID;
  }
  EngineConfig config;
  if (ParseEngineOptions(options, &config, &error) != adxl::SUCCESS) {
    LOG_ERROR("Initialize: %s", error.c_str());
    return adxl::PARAM_INVALID;
  }
  return Start(local_engine, config, endpoint.HasListenPort() ? &endpoint : nullptr, Hooks{});
}

adxl::Status Engine::Start(const std::string &identity, const EngineConfig &config, const Endpoint *listen,
                           Hooks hooks) {
  std::lock_guard ops(lifecycle_ops_);
  std::unique_lock lock(lifecycle_);
  if (initialized_) return adxl::SUCCESS;
  local_id_ = identity;
  config_ = config;
  {
    std::lock_guard guard(requests_mutex_);
    requests_closed_ = false;
  }
  registry_.SetRemovalGrace(std::chrono::milliseconds(config_.deregister_grace_ms));
  // Auto-connect always goes through the pool (ChannelFor connects pooled:
  // the pool is what replaces dead channels and bounds what transfers open).
  if (config_.auto_connect) config_.channel_pool.enabled = true;
  {
    std::lock_guard guard(channels_mutex_);
    pool_.Configure(config_.channel_pool);
  }
  notifies_.SetLimits(wire::kMaxNotifiesPerLink, config_.max_notify_bytes);
  if (config_.busy_poll_us >= 0) SetReadSpinMicros(static_cast<uint32_t>(config_.busy_poll_us));
  hooks_ = std::move(hooks);
  workers_ = WorkerPool::Create(static_cast<int>(config_.worker_threads));
  if (!workers_) {
    LOG_ERROR("engine %s: cannot start its %u transfer worker threads (RESOURCE_EXHAUSTED)", identity.c_str(),
              config_.worker_threads);
    return adxl::RESOURCE_EXHAUSTED;
  }
  Reactor::Options event_options;
  event_options.max_threads = config_.event_threads;
  std::string error;
  transports_.Remove("ucx");
#ifdef LLMDD_HAVE_UCX
  if (config_.transport == EngineConfig::Transport::kUcx) {
    auto ucx = UcxTransport::Create(UcxTransport::Mode::kForced, &error, config_.UcxWorkers());
    if (ucx == nullptr) {
      LOG_ERROR("engine %s: llmdd.Transport=ucx but UCX cannot start: %s", identity.c_str(), error.c_str());
      workers_.reset();
      return adxl::FAILED;
    }
    transports_.Add(std::move(ucx));
    LOG_INFO("engine %s: transport ucx (llmdd.Transport=ucx): every peer is reached over UCX", identity.c_str());
  } else if (config_.transport == EngineConfig::Transport::kAuto &&
             (config_.ucx_under_auto == EngineConfig::UcxUnderAuto::kAlways ||
              config_.ucx_under_auto == EngineConfig::UcxUnderAuto::kAny ||
              (config_.ucx_under_auto == EngineConfig::UcxUnderAuto::kRdma && UcxTransport::HostHasRdmaDevice()))) {
    // Under auto UCX is an offer, not a requirement: it serves peers that
    // run it, and links to a peer only over hardware RMA (UcxTransport::Connect)
    // unless llmdd.UcxUnderAuto=any.
    auto ucx = UcxTransport::Create(config_.ucx_under_auto == EngineConfig::UcxUnderAuto::kAny
                                        ? UcxTransport::Mode::kAnyPeer
                                        : UcxTransport::Mode::kWhereItPays,
                                    &error, config_.UcxWorkers());
    if (ucx == nullptr) {
      LOG_INFO("engine %s: UCX did not start (%s): peers are reached over TCP and the same-host path",
               identity.c_str(), error.c_str());
      error.clear();
    } else {
      transports_.Add(std::move(ucx));
      LOG_INFO("engine %s: UCX started (llmdd.Transport=auto): peers it reaches with hardware RMA use it",
               identity.c_str());
    }
  }
#endif
  reactor_ = std::make_unique<Reactor>(event_options);
  if (!reactor_->Start(&error)) {
    LOG_ERROR("engine %s: %s", identity.c_str(), error.c_str());
    reactor_.reset();
    workers_.reset();
    return adxl::RESOURCE_EXHAUSTED;
  }
  if (listen != nullptr) {
    adxl::Status status = StartServerLocked(*listen);
    if (status != adxl::SUCCESS) {
      reactor_->Stop();
      reactor_.reset();
      workers_.reset();
      return status;
    }
  }
  if (config_.metrics_listen_set) {
    auto metrics_server = std::make_unique<MetricsServer>();
    MetricsServer::Options metrics_options;
    metrics_options.max_connections = config_.metrics_max_connections;
    metrics_options.read_timeout_ms = config_.metrics_timeout_ms;
    metrics_options.max_request_bytes = kMetricsMaxRequestBytes;
    std::string why;
    if (!metrics_server->Start(config_.metrics_listen, metrics_options,
                               [this](bool json) { return json ? MetricsJson() : MetricsText(); }, &why)) {
      LOG_ERROR("engine %s: %s=%s: %s (FAILED)", identity.c_str(), kOptMetricsListen,
                config_.metrics_listen.ToString().c_str(), why.c_str());
      if (server_) {
        // Stopped outside the lifecycle lock, as Finalize does.
        std::unique_ptr<PeerServer> server = std::move(server_);
        lock.unlock();
        server->Stop();
        lock.lock();
      }
      reactor_->Stop();
      reactor_.reset();
      workers_.reset();
      return adxl::FAILED;
    }
    metrics_port_.store(metrics_server->Port());
    metrics_server_ = std::move(metrics_server);
    LOG_INFO("engine %s: metrics served on http://%s:%d/metrics", identity.c_str(), config_.metrics_listen.ip.c_str(),
             metrics_server_->Port());
  }
  initialized_ = true;
  LOG_INFO("engine %s initialized (%s)", local_id_.c_str(), server_ ? "listening" : "client only");
  if (pool_.Enabled()) {
    LOG_INFO("engine %s: auto-connect on; channel pool of %u channels, %s", local_id_.c_str(),
             config_.channel_pool.max_channel,
             config_.channel_pool.waterlines
                 ? ("idle ones closed from " + std::to_string(pool_.HighCount()) + " down to " +
                    std::to_string(pool_.LowCount()))
                       .c_str()
                 : "an idle one closed only to make room");
  }
  return adxl::SUCCESS;
}

adxl::Status Engine::StartServerLocked(const Endpoint &listen) {
  PeerServer::Callbacks callbacks;
  callbacks.on_reverse = [this](const std::string &peer, uint64_t session, std::shared_ptr<LanePool> pool) {
    {
      std::lock_guard guard(attached_mutex_);
      attached_[peer] = Attached{session, std::move(pool)};
    }
    if (hooks_.on_peer_attached) hooks_.on_peer_attached(peer, session);
  };
  callbacks.on_session_end = [this](const std::string &peer, uint64_t session, bool said_goodbye) {
    bool removed = false;
    {
      std::lock_guard guard(attached_mutex_);
      auto it = attached_.find(peer);
      if (it != attached_.end() && it->second.session_id == session) {
        attached_.erase(it);
        removed = true;
      }
    }
    if (removed && hooks_.on_peer_detached) hooks_.on_peer_detached(peer, session, said_goodbye);
  };
  auto server = std::make_unique<PeerServer>(local_id_, &registry_, workers_.get(), reactor_.get(),
                                             &hooks_.app_handler, &transports_, config_, std::move(callbacks),
                                             &notifies_, &metrics_);
  std::string error;
  if (!server->Start(listen, &error)) {
    LOG_ERROR("cannot listen: %s", error.c_str());
    return adxl::FAILED;
  }
  server_ = std::move(server);
  local_endpoint_ = listen;
  return adxl::SUCCESS;
}

adxl::Status Engine::StartListening(const Endpoint &listen) {
  std::lock_guard ops(lifecycle_ops_);
  std::unique_lock lock(lifecycle_);
  if (!initialized_) return adxl::FAILED;
  if (server_) return adxl::SUCCESS;
  return StartServerLocked(listen);
}

void Engine::StopListening() {
  std::lock_guard ops(lifecycle_ops_);
  std::unique_ptr<PeerServer> server;
  {
    std::unique_lock lock(lifecycle_);
    server = std::move(server_);
  }
  // Stopped outside the lifecycle lock: its threads may be waiting for calls
  // that need that lock (docs/ARCHITECTURE.md, "Lock order").
  if (server) server->Stop();
  server.reset();
  std::lock_guard guard(attached_mutex_);
  attached_.clear();
}

bool Engine::Listening() const {
  std::shared_lock lock(lifecycle_);
  return server_ != nullptr;
}

int Engine::ListenPort() const {
  std::shared_lock lock(lifecycle_);
  return server_ ? server_->Port() : -1;
}

void Engine::Finalize() {
  std::lock_guard ops(lifecycle_ops_);
  // The metrics endpoint first: its thread takes lifecycle_ (shared) to read
  // the gauges, and nothing else waits for it.
  if (metrics_server_) {
    metrics_server_->Stop();
    metrics_server_.reset();
    metrics_port_.store(-1);
  }
  // No new requests from now on; the running ones are canceled: each ends at
  // once, or as soon as the I/O it has in progress returns (its lanes are
  // shut down). Synchronous callers among them then release the lifecycle
  // lock, so taking it below does not wait for their deadlines.
  // (Cancel takes only the request's lock and its pool's: it may run under
  // requests_mutex_, which keeps each request in the list alive.)
  {
    std::lock_guard guard(requests_mutex_);
    requests_closed_ = true;
    for (TransferRequest *r = live_; r != nullptr; r = r->live_next) r->Cancel("canceled: the engine is finalizing");
  }
  // Connects waiting for a slot of the channel pool give up (they hold the
  // lifecycle lock, which Finalize takes next).
  pool_.Wake();
  std::unique_ptr<PeerServer> server;
  std::map<std::string, std::shared_ptr<Channel>> channels;
  {
    // Waits for the calls running now; every later call sees the engine
    // finalized and fails fast, so nothing below races a call.
    std::unique_lock lock(lifecycle_);
    if (!initialized_) return;
    SyncPoint("Engine::Finalize:lifecycle_locked");
    initialized_ = false;
    server = std::move(server_);
    std::lock_guard guard(channels_mutex_);
    channels.swap(channels_);
    pool_.Clear();
  }
  // Everything that waits for threads happens outside the lifecycle lock: a
  // serving thread may be waiting (through a hook into the layer above) for
  // a transfer that needs that lock (docs/ARCHITECTURE.md, "Lock order").
  // The canceled requests' runners let go before the channels and workers
  // they use are taken down. Each is done already; a runner can outlast its
  // request only while it opens a lane (bounded by the request's deadline).
  {
    std::unique_lock guard(requests_mutex_);
    if (!runners_ended_.wait_for(guard, std::chrono::milliseconds(kFinalizeRunnersLogMs),
                                 [&] { return live_ == nullptr; })) {
      LOG_WARN("Finalize: transfer requests are still opening connections; waiting for them (their deadlines)");
      runners_ended_.wait(guard, [&] { return live_ == nullptr; });
    }
  }
  if (server) server->Stop();
  // Goodbyes share one deadline: a frozen peer costs it once, not once per channel.
  // Every goodbye is sent before any answer is awaited: the answers arrive
  // in parallel on the event threads.
  const Deadline goodbyes = Deadline::AfterMs(kFinalizeGoodbyeMs);
  for (auto &[id, channel] : channels) {
    if (channel) channel->SayGoodbye(goodbyes);
  }
  for (auto &[id, channel] : channels) {
    if (channel) channel->Close(goodbyes);
  }
  channels.clear();
  server.reset();
  notifies_.Clear();  // nothing adds to it any more
  {
    std::lock_guard guard(attached_mutex_);
    attached_.clear();
  }
  if (reactor_) reactor_->Stop();
  reactor_.reset();
  const std::vector<TransportRegion> regions = registry_.Regions();
  registry_.Clear();
  for (const TransportRegion &region : regions) transports_.DeregisterMemory(region);
  transports_.Remove("ucx");  // its worker and progress thread end with the last link
  workers_.reset();
  LOG_INFO("engine %s finalized", local_id_.c_str());
}

adxl::Status Engine::RegisterMem(uintptr_t addr, uint64_t len, adxl::MemType type, uint64_t *handle,
                                 uint32_t access) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("RegisterMem: engine not initialized");
    return adxl::FAILED;
  }
  if (addr == 0) {
    LOG_ERROR("RegisterMem: address is null");
    return adxl::PARAM_INVALID;
  }
  // An empty range can serve no transfer: most likely a caller's bug (an
  // empty array). CANN's docs name no status for it (they list only a null
  // address); refused as MallocMem refuses size 0.
  if (len == 0) {
    LOG_ERROR("RegisterMem: length is 0 (address 0x%" PRIxPTR ")", addr);
    return adxl::PARAM_INVALID;
  }
  uintptr_t end = 0;
  if (__builtin_add_overflow(addr, len, &end)) {
    LOG_ERROR("RegisterMem: range [0x%" PRIxPTR ", +%" PRIu64 ") wraps around", addr, len);
    return adxl::PARAM_INVALID;
  }
  if (type != adxl::MEM_DEVICE && type != adxl::MEM_HOST) {
    LOG_ERROR("RegisterMem: unknown memory type %d", static_cast<int>(type));
    return adxl::PARAM_INVALID;
  }
  if ((access & ~kAccessReadWrite) != 0) {
    LOG_ERROR("RegisterMem: invalid remote access rights %u", access);
    return adxl::PARAM_INVALID;
  }
  if (InjectRegistrationFailure()) {
    LOG_ERROR("RegisterMem: registration failed (fault injection)");
    return adxl::FAILED;
  }
  // MEM_DEVICE on the cpu device (no accelerator backend) is host memory
  // (device/device.h); a device backend will tell its memory apart here.
  const MemoryKind kind = MemoryKind::kHost;
  *handle = registry_.Add(addr, len, type, access, kind);
  TransportRegion region{addr, len, kind, access};
  std::string error;
  if (transports_.RegisterMemory(region, &error) != adxl::SUCCESS) {
    registry_.Remove(*handle);
    *handle = 0;
    LOG_ERROR("RegisterMem: [0x%" PRIxPTR ", +%" PRIu64 ") refused by a transport: %s", addr, len, error.c_str());
    return adxl::FAILED;
  }
  LOG_DEBUG("registered [0x%" PRIxPTR ", +%" PRIu64 ") as handle %" PRIu64 "%s", addr, len, *handle,
            access == kAccessNone ? " (local only: peers cannot reach it)" : "");
  return adxl::SUCCESS;
}

adxl::Status Engine::DeregisterMem(uint64_t handle) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("DeregisterMem: engine not initialized");
    return adxl::FAILED;
  }
  // Transports forget the region after the registry's barrier: no request uses it any more.
  TransportRegion region;
  const bool known = registry_.Describe(handle, &region);
  if (!registry_.Remove(handle)) {
    LOG_WARN("DeregisterMem: unknown handle %" PRIu64 " (nothing to do)", handle);
  } else if (known) {
    transports_.DeregisterMemory(region);
  }
  return adxl::SUCCESS;
}

adxl::Status Engine::Connect(const std::string &remote, int32_t timeout_ms) {
  std::shared_lock lock(lifecycle_);
  if (timeout_ms <= 0) {
    LOG_ERROR("Connect(%s): timeout %d ms must be > 0", remote.c_str(), timeout_ms);
    return adxl::PARAM_INVALID;
  }
  if (!initialized_) {
    LOG_ERROR("Connect(%s): engine not initialized", remote.c_str());
    return adxl::FAILED;
  }
  Deadline deadline = Deadline::AfterMs(timeout_ms);
  Endpoint endpoint;
  std::string error;
  if (!ParseEngineEndpoint(remote, &endpoint, &error)) {
    LOG_ERROR("Connect: invalid remote engine '%s': %s", remote.c_str(), error.c_str());
    return adxl::PARAM_INVALID;
  }
  if (!endpoint.HasListenPort()) {
    LOG_ERROR("Connect: remote engine '%s' has no port, so it cannot be listening", remote.c_str());
    return adxl::PARAM_INVALID;
  }
  if (remote == local_id_) {
    LOG_ERROR("Connect: '%s' is this engine itself", remote.c_str());
    return adxl::PARAM_INVALID;
  }
  adxl::Status status = ConnectLocked(remote, endpoint, 0, deadline, &error, /*pooled=*/pool_.Enabled());
  if (status != adxl::SUCCESS)
    LOG_ERROR("Connect(%s) failed with %s: %s", remote.c_str(), StatusText(status).c_str(), error.c_str());
  return status;
}

adxl::Status Engine::ConnectKeyed(const std::string &key, const Endpoint &remote, uint32_t reverse_lanes,
                                  Deadline deadline, std::string *error) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    *error = "engine is not initialized";
    return adxl::FAILED;
  }
  return ConnectLocked(key, remote, reverse_lanes, deadline, error);
}

adxl::Status Engine::ConnectLocked(const std::string &key, const Endpoint &remote, uint32_t reverse_lanes,
                                   Deadline deadline, std::string *error, bool pooled, std::shared_ptr<Channel> *opened,
                                   ChannelPool::Pin *pin) {
  adxl::Status status = Reserve(key, pooled, deadline, error);
  if (status != adxl::SUCCESS) return status;
  Channel::Params params;
  params.local_id = local_id_;
  params.remote_id = key;
  params.remote = remote;
  params.config = config_;
  params.reverse_lanes = reverse_lanes;
  params.workers = workers_.get();
  params.reactor = reactor_.get();
  params.registry = &registry_;
  params.app_handler = &hooks_.app_handler;
  params.transports = &transports_;
  params.metrics = &metrics_;
  std::shared_ptr<Channel> channel;
  // The reservation must end whatever happens: a slot and a waiting
  // auto-connect depend on it.
  try {
    status = Channel::Open(params, deadline, &channel, error);
  } catch (const std::bad_alloc &) {
    status = adxl::RESOURCE_EXHAUSTED;
    *error = "out of memory";
  } catch (...) {
    status = adxl::FAILED;
    *error = "unexpected exception";
  }
  {
    std::lock_guard guard(channels_mutex_);
    auto outcome = connecting_.find(key);
    if (outcome != connecting_.end()) {
      outcome->second->done = true;
      outcome->second->status = status;
      outcome->second->error = *error;
      connecting_.erase(outcome);
    }
    if (status != adxl::SUCCESS) {
      channels_.erase(key);
      if (pooled) pool_.Release(key);
    } else {
      channels_[key] = channel;
      if (pooled) {
        pool_.Opened(key);
        if (pin != nullptr) *pin = pool_.PinUse(key);
      }
      if (opened != nullptr) *opened = channel;
    }
  }
  connect_done_.notify_all();
  metrics_.CountConnect(status);
  return status;
}

adxl::Status Engine::Reserve(const std::string &key, bool pooled, Deadline deadline, std::string *error) {
  if (!pooled) {
    std::lock_guard guard(channels_mutex_);
    if (channels_.count(key) != 0) {
      *error = "already connected to " + key;
      return adxl::ALREADY_CONNECTED;
    }
    channels_[key] = nullptr;  // reserve: a concurrent Connect sees ALREADY_CONNECTED
    connecting_[key] = std::make_shared<ConnectOutcome>();
    return adxl::SUCCESS;
  }
  pool_.BeginWait();
  struct EndWait {
    ChannelPool *pool;
    ~EndWait() { pool->EndWait(); }
  } end_wait{&pool_};
  // Dead channels give their slots back first (TryTake; under channels_mutex_).
  const auto dead = [this](const std::string &k) {
    auto it = channels_.find(k);
    return it != channels_.end() && it->second && it->second->Dead();
  };
  bool waited = false;
  for (;;) {
    const uint64_t generation = pool_.Generation();  // before anything it looks at
    {
      std::lock_guard guard(requests_mutex_);
      if (requests_closed_) {
        *error = "the engine is finalizing";
        return adxl::FAILED;
      }
    }
    std::vector<std::shared_ptr<Channel>> evicted;
    std::shared_ptr<Channel> replaced;
    ChannelPool::Take take = ChannelPool::Take::kFull;
    size_t taken = 0;
    {
      std::lock_guard guard(channels_mutex_);
      auto existing = channels_.find(key);
      if (existing != channels_.end() && existing->second && existing->second->Dead()) {
        // Cleaned up (a pool means auto-connect): the connect replaces it. It
        // is closed by whoever holds it last (a transfer may still be failing
        // on it), not waited for here.
        replaced = std::move(existing->second);
        channels_.erase(existing);
        pool_.Release(key);
      } else if (existing != channels_.end()) {
        *error = "already connected to " + key;
        return adxl::ALREADY_CONNECTED;
      }
      std::vector<std::string> keys;
      take = pool_.TryTake(key, dead, &keys);
      for (const std::string &k : keys) {
        auto it = channels_.find(k);
        if (it == channels_.end()) continue;
        if (it->second) evicted.push_back(std::move(it->second));
        channels_.erase(it);
      }
      if (take == ChannelPool::Take::kTaken) {
        channels_[key] = nullptr;
        connecting_[key] = std::make_shared<ConnectOutcome>();
      }
      taken = pool_.Count();
    }
    if (replaced) metrics_.CountReconnect();
    if (replaced) LOG_WARN("the channel to %s is dead (%s); connecting again", key.c_str(), replaced->DeadReason().c_str());
    replaced.reset();
    if (!evicted.empty()) CloseEvicted(std::move(evicted), deadline);
    if (take == ChannelPool::Take::kTaken) {
      if (waited) LOG_INFO("connect to %s got a slot of the channel pool", key.c_str());
      return adxl::SUCCESS;
    }
    if (deadline.Expired()) {
      *error = "every slot of the channel pool is busy (" + std::to_string(taken) +
               " channels with a transfer, notify or connect in flight; channel_pool.max_channel=" +
               std::to_string(config_.channel_pool.max_channel) + ") and none came free within the timeout";
      return adxl::RESOURCE_EXHAUSTED;
    }
    if (!waited) {
      LOG_INFO("connect to %s waits for a slot of the channel pool (all %zu busy)", key.c_str(), taken);
      waited = true;
    }
    pool_.Wait(generation, deadline);
  }
}

void Engine::CloseEvicted(std::vector<std::shared_ptr<Channel>> channels, Deadline deadline) {
  // One deadline for all, every goodbye sent before any answer is awaited (as Finalize does).
  const Deadline goodbyes = deadline.EarlierOf(Deadline::AfterMs(kEvictGoodbyeMs));
  for (const auto &channel : channels) {
    LOG_INFO("channel pool: closing the idle channel to %s%s", channel->RemoteId().c_str(),
             channel->Dead() ? " (dead)" : "");
    channel->SayGoodbye(goodbyes);
  }
  for (const auto &channel : channels) channel->Close(goodbyes);
}

adxl::Status Engine::ChannelFor(const char *call, const std::string &remote, Deadline deadline,
                                std::shared_ptr<Channel> *channel, ChannelPool::Pin *pin, std::string *error) {
  for (;;) {
    {
      std::unique_lock lock(channels_mutex_);
      auto it = channels_.find(remote);
      if (it != channels_.end() && it->second && !(config_.auto_connect && it->second->Dead())) {
        *channel = it->second;
        *pin = pool_.PinUse(remote);
        return adxl::SUCCESS;
      }
      if (!config_.auto_connect) {
        *error = "not connected to " + remote;
        return adxl::NOT_CONNECTED;
      }
      // A dead channel (its peer stopped answering or went away) is replaced
      // by the connect below (Reserve drops it).
      if (it != channels_.end() && !it->second) {
        // Being connected (by another transfer or a Connect): its outcome is ours.
        auto pending = connecting_.find(remote);
        if (pending == connecting_.end()) {  // (every reservation has one: Reserve)
          *error = "a connect to " + remote + " is in progress";
          return adxl::NOT_CONNECTED;
        }
        std::shared_ptr<ConnectOutcome> outcome = pending->second;
        if (!connect_done_.wait_until(lock, deadline.At(), [&] { return outcome->done; })) {
          *error = "the connect to " + remote + " in progress did not end within the timeout";
          return adxl::TIMEOUT;
        }
        if (outcome->status != adxl::SUCCESS) {
          *error = "connecting failed: " + outcome->error;
          return outcome->status;
        }
        continue;  // its channel, or (closed again meanwhile) a connect of our own
      }
    }
    Endpoint endpoint;
    if (!ParseEngineEndpoint(remote, &endpoint, error)) {
      *error = "invalid remote engine '" + remote + "': " + *error;
      return adxl::PARAM_INVALID;
    }
    if (!endpoint.HasListenPort()) {
      *error = "remote engine '" + remote + "' has no port, so it cannot be listening";
      return adxl::PARAM_INVALID;
    }
    if (remote == local_id_) {
      *error = "'" + remote + "' is this engine itself";
      return adxl::PARAM_INVALID;
    }
    const adxl::Status status = ConnectLocked(remote, endpoint, 0, deadline, error, /*pooled=*/true, channel, pin);
    if (status == adxl::ALREADY_CONNECTED) continue;  // another caller started first: share its connect
    if (status == adxl::SUCCESS) LOG_INFO("%s: connected to %s on demand (auto-connect)", call, remote.c_str());
    return status;
  }
}

adxl::Status Engine::DisconnectKeyed(const std::string &key, Deadline deadline, bool say_goodbye) {
  std::shared_ptr<Channel> channel;
  {
    std::lock_guard guard(channels_mutex_);
    auto it = channels_.find(key);
    if (it == channels_.end() || !it->second) return adxl::NOT_CONNECTED;
    channel = it->second;
    channels_.erase(it);
    pool_.Release(key);
  }
  // Submitted requests end now (no caller waits in them); Close then waits
  // for the transfers still running on the channel, these included.
  {
    const std::string why = "canceled: disconnected from " + key;
    std::lock_guard guard(requests_mutex_);
    for (TransferRequest *r = live_; r != nullptr; r = r->live_next) {
      if (r->live_submitted && r->live_channel == channel.get()) r->Cancel(why);
    }
  }
  channel->Close(deadline, say_goodbye);
  metrics_.CountDisconnect();
  return adxl::SUCCESS;
}

void Engine::DropAttachedPeer(const std::string &peer_id, uint64_t session_id) {
  std::shared_ptr<LanePool> pool;
  {
    std::lock_guard guard(attached_mutex_);
    auto it = attached_.find(peer_id);
    if (it == attached_.end() || it->second.session_id != session_id) return;
    pool = it->second.pool;
    attached_.erase(it);
  }
  // Shutting the reverse lanes down makes the peer's serving threads see EOF.
  pool->ShutdownAll();
}

bool Engine::HasChannel(const std::string &key) {
  std::lock_guard guard(channels_mutex_);
  auto it = channels_.find(key);
  return it != channels_.end() && it->second;
}

bool Engine::DescribePeer(const std::string &key, PeerFacts *facts) {
  std::lock_guard guard(channels_mutex_);
  auto it = channels_.find(key);
  if (it == channels_.end() || !it->second) return false;
  *facts = it->second->Facts();
  return true;
}

size_t Engine::ChannelSlotsTaken() {
  std::lock_guard guard(channels_mutex_);
  return pool_.Count();
}

std::shared_ptr<LanePool> Engine::FindPool(const std::string &key, std::shared_ptr<Channel> *channel) {
  {
    std::lock_guard guard(channels_mutex_);
    auto it = channels_.find(key);
    if (it != channels_.end() && it->second) {
      *channel = it->second;
      // Aliasing pointer: keeps the channel (and so its pool) alive.
      return std::shared_ptr<LanePool>(it->second, &it->second->Lanes());
    }
  }
  std::lock_guard guard(attached_mutex_);
  auto it = attached_.find(key);
  if (it != attached_.end()) return it->second.pool;
  return nullptr;
}

adxl::Status Engine::TransferKeyed(const std::string &key, adxl::TransferOp op, const std::vector<Segment> &segs,
                                   Deadline deadline, std::string *error) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) return adxl::FAILED;
  Route route;
  route.pool = FindPool(key, &route.channel);
  if (!route.pool) {
    *error = "no connection to " + key;
    return adxl::NOT_CONNECTED;
  }
  if (segs.empty()) return adxl::SUCCESS;
  if (route.channel && route.channel->Dead()) {
    *error = "peer " + key + " is dead (" + route.channel->DeadReason() + ")";
    return adxl::FAILED;
  }
  return RunHere(key, std::move(route), op, segs, deadline, error);
}

size_t Engine::RequestsInFlight() const { return requests_in_flight_.load(); }

void Engine::RequestDone(void *engine) { static_cast<Engine *>(engine)->requests_in_flight_.fetch_sub(1); }

adxl::Status Engine::Admit(TransferRequest *request, const Route &route, bool submitted, std::string *error) {
  // Armed before anyone else can see it (Finalize's Cancel included). The
  // done hook runs before its waiters return: a caller that waited for it
  // can submit the next one at once.
  request->Arm(&Engine::RequestDone, this, route.pool.get());
  std::lock_guard guard(requests_mutex_);
  if (requests_closed_) {
    *error = "the engine is finalizing";
    return adxl::FAILED;
  }
  const size_t in_flight = requests_in_flight_.load();
  if (in_flight >= config_.max_requests_in_flight) {
    *error = std::to_string(in_flight) + " transfer requests are in flight (llmdd.MaxRequestsInFlight=" +
             std::to_string(config_.max_requests_in_flight) + ")";
    return adxl::RESOURCE_EXHAUSTED;
  }
  requests_in_flight_.fetch_add(1);
  request->live_channel = route.channel.get();
  request->live_submitted = submitted;
  request->live_prev = nullptr;
  request->live_next = live_;
  if (live_ != nullptr) live_->live_prev = request;
  live_ = request;
  return adxl::SUCCESS;
}

void Engine::ForgetRunner(TransferRequest *request) {
  std::lock_guard guard(requests_mutex_);
  if (request->live_prev != nullptr) {
    request->live_prev->live_next = request->live_next;
  } else {
    live_ = request->live_next;
  }
  if (request->live_next != nullptr) request->live_next->live_prev = request->live_prev;
  request->live_prev = request->live_next = nullptr;
  if (live_ == nullptr) runners_ended_.notify_all();
}

void Engine::RunRequest(TransferRequest *request, Route route, bool queued, adxl::Status *outcome,
                        std::string *outcome_error) {
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  request->started_at = queued ? std::chrono::steady_clock::now() : request->submitted_at;
  if (request->CancelRequested()) {
    status = TransferRequest::kCanceledStatus;  // canceled while queued: nothing to do
  } else if (queued && request->GetDeadline().Expired()) {
    status = adxl::TIMEOUT;
    error = "the deadline passed while the request waited for a worker";
  } else {
    // Nothing escapes: the request must end and its runner let go.
    try {
      // Close (Disconnect) waits for the transfers running on its channel.
      std::optional<Channel::InFlight> in_flight;
      if (route.channel) in_flight.emplace(route.channel.get());
      if (queued && route.channel && route.channel->Dead()) {
        status = adxl::FAILED;
        error = "peer " + request->Key() + " is dead (" + route.channel->DeadReason() + ")";
      } else {
        // The policy skips paths that cannot reach where the local ranges live.
        const MemoryKind kind = registry_.KindAt(request->Segments().front().local);
        status =
            route.pool->Transfer(request->Op(), request->Segments(), request->GetDeadline(), &error, request, kind);
      }
    } catch (const std::bad_alloc &) {
      status = adxl::RESOURCE_EXHAUSTED;
      error = "out of memory";
    } catch (...) {
      status = adxl::FAILED;
      error = "unexpected exception";
    }
  }
  request->Finish(&status, &error);
  RecordEnd(*request, status, error);
  route = Route{};  // the channel may go with it: not under the runner's locks
  ForgetRunner(request);
  if (outcome != nullptr) {
    *outcome = status;
    *outcome_error = std::move(error);
  }
}

adxl::Status Engine::RunHere(const std::string &key, Route route, adxl::TransferOp op,
                             const std::vector<Segment> &segs, Deadline deadline, std::string *error,
                             bool *refused, size_t descriptors, std::chrono::steady_clock::time_point submitted) {
  // On this stack and borrowing `segs`: it runs and ends before this call
  // returns, and Finalize touches it only while its runner has not let go.
  TransferRequest request(key, op, &segs, deadline);
  request.submitted_at = submitted != std::chrono::steady_clock::time_point{} ? submitted
                                                                             : std::chrono::steady_clock::now();
  request.descriptors_submitted = descriptors;
  adxl::Status status = Admit(&request, route, /*submitted=*/false, error);
  if (refused != nullptr) *refused = status != adxl::SUCCESS;
  if (status != adxl::SUCCESS) {
    request.started_at = request.submitted_at;
    RecordEnd(request, status, *error);
    return status;
  }
  // A canceler bound to this thread (llmdd_ext::CallCanceler) may end it;
  // Leave only once the runner let go, so its Cancel returns after that.
  llmdd_ext::CallCanceler::Impl *canceler = llmdd_ext::CallCanceler::Impl::Current();
  if (canceler != nullptr) canceler->Enter(&request);
  RunRequest(&request, std::move(route), /*queued=*/false, &status, error);
  if (canceler != nullptr) canceler->Leave(&request);
  return status;
}

adxl::Status Engine::SubmitTransfer(const std::string &key, adxl::TransferOp op, std::vector<Segment> segs,
                                    Deadline deadline, std::shared_ptr<TransferRequest> *request,
                                    std::string *error) {
  request->reset();
  error->clear();
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    *error = "engine is not initialized";
    return adxl::FAILED;
  }
  Route route;
  route.pool = FindPool(key, &route.channel);
  if (!route.pool) {
    *error = "no connection to " + key;
    return adxl::NOT_CONNECTED;
  }
  if (route.channel && route.channel->Dead()) {
    *error = "peer " + key + " is dead (" + route.channel->DeadReason() + ")";
    return adxl::FAILED;
  }
  return SubmitLocked(key, route, op, std::move(segs), deadline, request, error);
}

adxl::Status Engine::SubmitLocked(const std::string &key, const Route &route, adxl::TransferOp op,
                                  std::vector<Segment> segs, Deadline deadline,
                                  std::shared_ptr<TransferRequest> *request, std::string *error,
                                  size_t descriptors) {
  auto submitted = std::make_shared<TransferRequest>(key, op, std::move(segs), deadline);
  if (submitted->Segments().empty()) {  // nothing to move: done at once
    submitted->Finish(adxl::SUCCESS, "");
    *request = std::move(submitted);
    return adxl::SUCCESS;
  }
  submitted->submitted_at = std::chrono::steady_clock::now();
  submitted->started_at = submitted->submitted_at;
  submitted->descriptors_submitted = descriptors;
  adxl::Status status = Admit(submitted.get(), route, /*submitted=*/true, error);
  if (status != adxl::SUCCESS) {
    RecordEnd(*submitted, status, *error);
    return status;
  }
  const LanePool *pool = route.pool.get();
  bool post_runner = false;
  {
    std::lock_guard guard(queued_mutex_);
    PoolQueue &queue = queued_[pool];
    queue.requests.push_back(Queued{submitted, route});
    queue.last_arrival = std::chrono::steady_clock::now();
    post_runner = !queue.runner_posted;
    queue.runner_posted = true;
  }
  // Finalize waits for this runner (live_) before it destroys the workers.
  if (post_runner && !workers_->Submit([this, pool] { RunQueued(pool); })) {
    // No worker can take them: this request is refused, and the ones that
    // queued behind it counting on this runner end the same way (they were
    // accepted, so they end RESOURCE_EXHAUSTED rather than wait forever).
    std::deque<Queued> orphans;
    {
      std::lock_guard guard(queued_mutex_);
      auto it = queued_.find(pool);
      if (it != queued_.end()) {
        orphans.swap(it->second.requests);
        queued_.erase(it);
      }
    }
    *error = "no transfer worker can take the request";
    bool ours_refused = false;
    for (Queued &q : orphans) {
      if (q.request == submitted) ours_refused = true;
      q.route = Route{};
      EndRunner(q.request.get(), adxl::RESOURCE_EXHAUSTED, *error);
    }
    if (ours_refused) return adxl::RESOURCE_EXHAUSTED;
    // A running worker took it along with requests queued before it.
  }
  *request = std::move(submitted);
  return adxl::SUCCESS;
}

void Engine::EndRunner(TransferRequest *request, adxl::Status status, std::string error) {
  request->Finish(&status, &error);
  RecordEnd(*request, status, error);
  ForgetRunner(request);
}

namespace {
// A status query that found nothing ended gives up the processor once.
// Callers poll GetTransferStatus in a tight loop (Mooncake's and
// vllm-ascend's do); on a host with few cores that loop otherwise competes
// with the threads moving the request's bytes, and 64 requests in flight
// took 1.5-1.9x one TransferSync of the same descriptors instead of 1.2-1.6x
// (llmdd_bench async, 2-core host). sched_yield returns at once (~0.3 us)
// when nothing else wants this core.
void YieldToTransfers() { sched_yield(); }

// The request this thread polled last and how many WAITING answers in a row
// it got (see PaceWaitingQuery).
struct PollStreak {
  uint64_t id = 0;
  uint32_t waiting_answers = 0;
};
thread_local PollStreak poll_streak;

// A WAITING answer to a status query of request `id`. The first few in a row
// give up the processor once; from kStatusSpinAnswers on, the query waits for
// the request to end, up to kStatusWaitSlice: a caller that only polls then
// sleeps instead of taking a core from the transfer (64 async READs of 64 KiB
// on a 2-core host: the poller's share of the cores was the transfer's loss),
// and still learns of the end at once (the request wakes its waiters).
// Bulk queries that found nothing ended count as queries of this id (request
// ids start at 1 and never reach it).
constexpr uint64_t kBulkQueryStreak = UINT64_MAX;

void PaceWaitingQuery(uint64_t id, const TransferRequest *request) {
  if (poll_streak.id != id) poll_streak = PollStreak{id, 0};
  if (++poll_streak.waiting_answers < kStatusSpinAnswers || request == nullptr) {
    YieldToTransfers();
    return;
  }
  request->Wait(Deadline(Deadline::Clock::now() + kStatusWaitSlice));
}

uint64_t TotalBytes(const std::vector<Segment> &segs) {
  uint64_t total = 0;
  for (const Segment &s : segs) total += s.len;
  return total;
}
}  // namespace

void Engine::RunQueued(const LanePool *pool) {
  for (;;) {
    LingerForBurst(pool);
    std::vector<Queued> taken;
    bool more = false;
    {
      std::lock_guard guard(queued_mutex_);
      auto it = queued_.find(pool);
      if (it == queued_.end()) return;  // taken along by another worker
      std::deque<Queued> &queue = it->second.requests;
      taken.push_back(std::move(queue.front()));
      queue.pop_front();
      const TransferRequest &oldest = *taken.front().request;
      uint64_t bytes = TotalBytes(oldest.Segments());
      size_t descriptors = oldest.Segments().size();
      size_t scanned = 0;
      for (auto q = queue.begin(); q != queue.end() && scanned < kCoalesceMaxScan && bytes < kCoalesceMaxBytes;
           ++scanned) {
        const TransferRequest &r = *q->request;
        const uint64_t r_bytes = TotalBytes(r.Segments());
        if (r.Op() != oldest.Op() || r.CancelRequested() || bytes + r_bytes > kCoalesceMaxBytes ||
            descriptors + r.Segments().size() > kCoalesceMaxDescriptors) {
          ++q;
          continue;
        }
        bytes += r_bytes;
        descriptors += r.Segments().size();
        taken.push_back(std::move(*q));
        q = queue.erase(q);
      }
      more = !queue.empty();
      if (more) {
        it->second.runner_posted = true;  // posted below, or this worker comes back for them
      } else {
        queued_.erase(it);  // the next submission posts a runner
      }
    }
    // What is left (over the caps, another operation) runs in parallel on
    // another worker; if none can be had, this one takes it after its group.
    const bool come_back = more && !workers_->Submit([this, pool] { RunQueued(pool); });
    if (taken.size() == 1) {
      RunRequest(taken.front().request.get(), std::move(taken.front().route), /*queued=*/true);
    } else {
      RunTogether(std::move(taken));
    }
    if (!come_back) return;
  }
}

void Engine::LingerForBurst(const LanePool *pool) {
  const auto give_up = std::chrono::steady_clock::now() + kCoalesceMaxLinger;
  for (;;) {
    {
      std::lock_guard guard(queued_mutex_);
      auto it = queued_.find(pool);
      if (it == queued_.end() || it->second.requests.size() >= kCoalesceMaxDescriptors) return;
      // A request younger than the quiet gap may be the head of a burst (the
      // submitter's next call is under way): even a lone one waits that long.
      const auto now = std::chrono::steady_clock::now();
      if (now - it->second.last_arrival >= kCoalesceQuietGap || now >= give_up) return;
    }
    sched_yield();  // the submitting thread may need this core to finish the burst
  }
}

void Engine::RunTogether(std::vector<Queued> taken) {
  Route route = taken.front().route;
  const TransferRequest &oldest = *taken.front().request;
  // The policy skips paths that cannot reach where the local ranges live: a
  // group shares one memory kind; a request of another kind runs alone.
  const MemoryKind kind = registry_.KindAt(oldest.Segments().front().local);
  std::vector<Queued> members, alone;
  Deadline earliest = oldest.GetDeadline();
  for (Queued &q : taken) {
    if (&q != &taken.front() && registry_.KindAt(q.request->Segments().front().local) != kind) {
      alone.push_back(std::move(q));
      continue;
    }
    if (q.request->GetDeadline().At() < earliest.At()) earliest = q.request->GetDeadline();
    members.push_back(std::move(q));
  }
  std::vector<Segment> segs;  // the carrier borrows them: filled before it runs, kept until it ends
  TransferRequest carrier(oldest.Key(), oldest.Op(), &segs, earliest);
  const auto started = std::chrono::steady_clock::now();
  carrier.Arm(nullptr, nullptr, route.pool.get());
  std::vector<Queued> carried;
  for (Queued &q : members) {
    if (q.request->AttachTo(&carrier)) {
      segs.insert(segs.end(), q.request->Segments().begin(), q.request->Segments().end());
      carried.push_back(std::move(q));
    } else {
      alone.push_back(std::move(q));  // canceled meanwhile: RunRequest ends it
    }
  }
  adxl::Status status = adxl::SUCCESS;
  std::string error;
  if (carried.size() < 2) {
    status = adxl::FAILED;  // nothing to share: each runs alone below
  } else {
    try {
      // Close (Disconnect) waits for the transfers running on its channel.
      std::optional<Channel::InFlight> in_flight;
      if (route.channel) in_flight.emplace(route.channel.get());
      if (route.channel && route.channel->Dead()) {
        status = adxl::FAILED;
        error = "peer " + carrier.Key() + " is dead (" + route.channel->DeadReason() + ")";
      } else {
        status = route.pool->Transfer(carrier.Op(), segs, carrier.GetDeadline(), &error, &carrier, kind);
      }
    } catch (const std::bad_alloc &) {
      status = adxl::RESOURCE_EXHAUSTED;
      error = "out of memory";
    } catch (...) {
      status = adxl::FAILED;
      error = "unexpected exception";
    }
    carrier.Finish(&status, &error);
  }
  // The carrier's I/O has returned: no byte of a member moves after this.
  std::vector<TransferRequest *> ending;
  for (Queued &q : carried) {
    q.request->Detach();
    // Its record: the carrier's path and start (RunRequest sets its own if it runs again alone).
    q.request->started_at = started;
    q.request->transport = carrier.transport;
    if (status == adxl::SUCCESS || q.request->CancelRequested()) {
      ending.push_back(q.request.get());
      q.route = Route{};  // the channel may go with it: not under the runner's locks
    } else {
      alone.push_back(std::move(q));  // its own outcome: run it alone
    }
  }
  route = Route{};
  for (TransferRequest *request : ending) EndRunner(request, adxl::SUCCESS, "");  // a canceled one ends canceled
  for (Queued &q : alone) RunRequest(q.request.get(), std::move(q.route), /*queued=*/true);
}

adxl::Status Engine::AppCallKeyed(const std::string &key, uint32_t app_type, const std::string &request,
                                  Deadline deadline, std::string *response, std::string *error) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) return adxl::FAILED;
  std::shared_ptr<Channel> channel;
  std::shared_ptr<LanePool> pool = FindPool(key, &channel);
  if (!pool) {
    *error = "no connection to " + key;
    return adxl::NOT_CONNECTED;
  }
  std::unique_ptr<Channel::InFlight> in_flight;
  if (channel) in_flight = std::make_unique<Channel::InFlight>(channel.get());
  return pool->AppCall(app_type, request, deadline, response, error);
}

adxl::Status Engine::Disconnect(const std::string &remote, int32_t timeout_ms) {
  std::shared_lock lock(lifecycle_);
  if (timeout_ms <= 0) {
    LOG_ERROR("Disconnect(%s): timeout %d ms must be > 0", remote.c_str(), timeout_ms);
    return adxl::PARAM_INVALID;
  }
  if (!initialized_) {
    LOG_ERROR("Disconnect(%s): engine not initialized", remote.c_str());
    return adxl::FAILED;
  }
  Endpoint endpoint;
  std::string error;
  if (!ParseEngineEndpoint(remote, &endpoint, &error)) {
    LOG_ERROR("Disconnect: invalid remote engine '%s': %s", remote.c_str(), error.c_str());
    return adxl::PARAM_INVALID;
  }
  if (DisconnectKeyed(remote, Deadline::AfterMs(timeout_ms), true) != adxl::SUCCESS) {
    LOG_ERROR("Disconnect: not connected to %s", remote.c_str());
    return adxl::NOT_CONNECTED;
  }
  LOG_INFO("disconnected from %s", remote.c_str());
  return adxl::SUCCESS;
}

adxl::Status Engine::TransferSync(const std::string &remote, adxl::TransferOp op, const adxl::TransferOpDesc *descs,
                                  size_t count, int32_t timeout_ms) {
  std::shared_lock lock(lifecycle_);
  if (timeout_ms <= 0) {
    LOG_ERROR("TransferSync(%s): timeout %d ms must be > 0", remote.c_str(), timeout_ms);
    return adxl::PARAM_INVALID;
  }
  if (!initialized_) {
    LOG_ERROR("TransferSync(%s): engine not initialized", remote.c_str());
    return adxl::FAILED;
  }
  if (op != adxl::READ && op != adxl::WRITE) {
    LOG_ERROR("TransferSync(%s): unknown operation %d", remote.c_str(), static_cast<int>(op));
    return adxl::PARAM_INVALID;
  }
  Deadline deadline = Deadline::AfterMs(timeout_ms);
  std::vector<Segment> segs;
  std::string error;
  if (BuildSegments(descs, count, &segs, &error) != adxl::SUCCESS) {
    LOG_ERROR("TransferSync(%s): %s", remote.c_str(), error.c_str());
    return adxl::PARAM_INVALID;
  }
  std::shared_ptr<Channel> channel;
  ChannelPool::Pin pin;  // the channel stays out of the pool's reach until the transfer returns
  adxl::Status found = ChannelFor("TransferSync", remote, deadline, &channel, &pin, &error);
  if (found != adxl::SUCCESS) {
    if (found == adxl::NOT_CONNECTED && !config_.auto_connect) {
      LOG_ERROR("TransferSync: not connected to %s", remote.c_str());
    } else {
      LOG_ERROR("TransferSync(%s): no channel, auto-connect failed with %s: %s", remote.c_str(),
                StatusText(found).c_str(), error.c_str());
    }
    return found;
  }
  if (segs.empty()) return adxl::SUCCESS;
  if (channel->Dead()) {
    LOG_ERROR("TransferSync(%s): peer is dead (%s); Disconnect and Connect again", remote.c_str(),
              channel->DeadReason().c_str());
    return adxl::FAILED;
  }
  Route route;
  route.pool = std::shared_ptr<LanePool>(channel, &channel->Lanes());
  route.channel = std::move(channel);
  bool refused = false;
  // The deadline's clock reading is when the call began: the record's start
  // costs no second clock read on the smallest transfers.
  adxl::Status status = RunHere(remote, std::move(route), op, segs, deadline, &error, &refused, count,
                                deadline.At() - std::chrono::milliseconds(timeout_ms));
  if (refused) {
    static std::atomic<int64_t> last_logged{0};
    if (status != adxl::RESOURCE_EXHAUSTED || LogThisSecond(&last_logged))
      LOG_ERROR("TransferSync(%s) refused with %s: %s", remote.c_str(), StatusText(status).c_str(), error.c_str());
    return status;
  }
  if (status != adxl::SUCCESS) {
    LOG_ERROR("TransferSync(%s, %s, %zu descriptors) failed with %s: %s", remote.c_str(),
              op == adxl::READ ? "READ" : "WRITE", count, StatusText(status).c_str(), error.c_str());
  }
  return status;
}

adxl::Status Engine::TransferAsync(const std::string &remote, adxl::TransferOp op, const adxl::TransferOpDesc *descs,
                                   size_t count, const void *user_data, uint32_t timeout_ms, uint64_t *id) {
  *id = 0;
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("TransferAsync(%s): engine not initialized", remote.c_str());
    return adxl::FAILED;
  }
  if (op != adxl::READ && op != adxl::WRITE) {
    LOG_ERROR("TransferAsync(%s): unknown operation %d", remote.c_str(), static_cast<int>(op));
    return adxl::PARAM_INVALID;
  }
  std::vector<Segment> segs;
  std::string error;
  if (BuildSegments(descs, count, &segs, &error) != adxl::SUCCESS) {
    LOG_ERROR("TransferAsync(%s): %s", remote.c_str(), error.c_str());
    return adxl::PARAM_INVALID;
  }
  Route route;
  ChannelPool::Pin pin;
  // The submitter waits for an auto-connect: never longer than the request
  // itself may take.
  const int32_t connect_ms =
      timeout_ms > 0 && timeout_ms < static_cast<uint32_t>(kAutoConnectAsyncMs) ? static_cast<int32_t>(timeout_ms)
                                                                                : kAutoConnectAsyncMs;
  adxl::Status found =
      ChannelFor("TransferAsync", remote, Deadline::AfterMs(connect_ms), &route.channel, &pin, &error);
  if (found != adxl::SUCCESS) {
    if (found == adxl::NOT_CONNECTED && !config_.auto_connect) {
      LOG_ERROR("TransferAsync: not connected to %s", remote.c_str());
    } else {
      LOG_ERROR("TransferAsync(%s): no channel, auto-connect failed with %s: %s", remote.c_str(),
                StatusText(found).c_str(), error.c_str());
    }
    return found;
  }
  // The request's route keeps the channel busy until the request is done.
  if (pin) route.pin = std::make_shared<ChannelPool::Pin>(std::move(pin));
  if (route.channel->Dead()) {
    LOG_ERROR("TransferAsync(%s): peer is dead (%s); Disconnect and Connect again", remote.c_str(),
              route.channel->DeadReason().c_str());
    return adxl::FAILED;
  }
  route.pool = std::shared_ptr<LanePool>(route.channel, &route.channel->Lanes());
  static std::atomic<int64_t> last_logged{0};
  size_t held = 0;
  if (!async_.Reserve(config_.max_requests_in_flight, &held)) {
    if (LogThisSecond(&last_logged))
      LOG_ERROR("TransferAsync(%s) refused with %s: %zu asynchronous requests are held (submitted, terminal "
                "status not read yet; llmdd.MaxRequestsInFlight=%u)",
                remote.c_str(), StatusText(adxl::RESOURCE_EXHAUSTED).c_str(), held, config_.max_requests_in_flight);
    return adxl::RESOURCE_EXHAUSTED;
  }
  // The caller's own deadline replaces the engine's bound for requests
  // without one (llmdd.AsyncTransferMaxMs): it asked for this one.
  const bool own_deadline = timeout_ms != 0;
  const Deadline deadline = Deadline::AfterMs(own_deadline ? timeout_ms : config_.async_transfer_max_ms);
  std::shared_ptr<TransferRequest> request;
  adxl::Status status = adxl::FAILED;
  try {
    status = SubmitLocked(remote, route, op, std::move(segs), deadline, &request, &error, count);
  } catch (...) {
    async_.Unreserve();
    throw;
  }
  if (status != adxl::SUCCESS) {
    async_.Unreserve();
    if (status != adxl::RESOURCE_EXHAUSTED || LogThisSecond(&last_logged))
      LOG_ERROR("TransferAsync(%s) refused with %s: %s", remote.c_str(), StatusText(status).c_str(), error.c_str());
    return status;
  }
  // The runner ends the request at its deadline too (every wait it makes is
  // bounded by it), but not while it waits for a worker behind requests to a
  // frozen peer: the timer ends it then, whether anyone polls or not. Cancel
  // cuts the I/O in flight, so within milliseconds of its deadline the
  // request is TIMEOUT and its buffers are the caller's again.
  uint64_t timer = 0;
  if (own_deadline && !request->Done()) {
    try {
      timer = reactor_->At(deadline.At(), [weak = std::weak_ptr<TransferRequest>(request), timeout_ms] {
        if (std::shared_ptr<TransferRequest> expired = weak.lock())
          expired->Cancel("its deadline of " + std::to_string(timeout_ms) + " ms passed", adxl::TIMEOUT);
      });
    } catch (const std::bad_alloc &) {
      timer = 0;  // the request is running: its runner still ends it by its deadline
    }
    if (timer == 0)
      LOG_WARN("TransferAsync(%s): no timer for the deadline of request %" PRIu64
               " (out of memory, or finalizing); its transfer still ends by it",
               remote.c_str(), request->Id());
  }
  *id = request->Id();
  async_.Insert(std::move(request), route.channel, user_data, own_deadline, timer);
  return adxl::SUCCESS;
}

void Engine::CancelDeadlineTimers(const uint64_t *timers, size_t count) {
  // Most requests have no timer: a query of one costs no lock here.
  if (std::none_of(timers, timers + count, [](uint64_t timer) { return timer != 0; })) return;
  // The reactor lives while the engine is initialized (Finalize stops it
  // after it flips initialized_ under the exclusive lock); a timer of an
  // earlier reactor names nothing in this one (ids are process-unique).
  std::shared_lock lock(lifecycle_);
  if (!initialized_ || !reactor_) return;
  for (size_t i = 0; i < count; ++i) {
    if (timers[i] != 0) reactor_->Cancel(timers[i]);
  }
}

adxl::Status Engine::GetTransferStatus(uint64_t id, adxl::TransferStatus *status) {
  *status = adxl::TransferStatus::FAILED;
  if (id == 0) {
    LOG_ERROR("GetTransferStatus: the request is null");
    return adxl::FAILED;
  }
  adxl::Status outcome = adxl::FAILED;
  std::string error;
  uint64_t timer = 0;
  std::shared_ptr<TransferRequest> waiting;
  switch (async_.Query(id, status, &outcome, &error, &timer, &waiting)) {
    case AsyncRequests::Found::kNo:
      *status = adxl::TransferStatus::FAILED;
      if (!Initialized()) {
        LOG_ERROR("GetTransferStatus(%" PRIu64 "): engine not initialized", id);
        return adxl::FAILED;
      }
      LOG_ERROR("GetTransferStatus(%" PRIu64 "): no such request (never issued, or its terminal status was "
                "already reported)", id);
      return adxl::PARAM_INVALID;
    case AsyncRequests::Found::kWaiting:
      PaceWaitingQuery(id, waiting.get());
      return adxl::SUCCESS;
    case AsyncRequests::Found::kTerminal:
      break;
  }
  CancelDeadlineTimers(&timer, 1);
  if (*status == adxl::TransferStatus::COMPLETED) return adxl::SUCCESS;
  LOG_ERROR("TransferAsync request %" PRIu64 " failed with %s: %s", id, StatusText(outcome).c_str(), error.c_str());
  // TIMEOUT (its own deadline passed) is reported as such, as FAILED is.
  return *status == adxl::TransferStatus::TIMEOUT ? adxl::TIMEOUT : adxl::FAILED;
}

adxl::Status Engine::GetTransferStatuses(uint32_t max_count, bool skip_waiting,
                                         std::vector<AsyncRequests::Result> *results) {
  std::vector<std::string> failures;
  std::vector<uint64_t> timers;
  async_.QueryMany(max_count, skip_waiting, results, &failures, &timers);
  CancelDeadlineTimers(timers.data(), timers.size());
  for (const std::string &failure : failures) LOG_ERROR("TransferAsync %s", failure.c_str());
  bool any_ended = false;
  for (const AsyncRequests::Result &result : *results) any_ended |= result.status != adxl::TransferStatus::WAITING;
  if (any_ended) poll_streak = PollStreak{};  // progress: the next empty answer starts a new streak
  if (!any_ended && async_.Size() > 0) {
    // Paced as a query of one request is, waiting for the oldest one.
    std::shared_ptr<TransferRequest> oldest = async_.Oldest();
    PaceWaitingQuery(kBulkQueryStreak, oldest.get());
  }
  return adxl::SUCCESS;
}

adxl::Status Engine::SendNotify(const std::string &remote, const wire::Notify &notify, int32_t timeout_ms) {
  if (notify.name.size() > wire::kMaxNotifyField || notify.message.size() > wire::kMaxNotifyField) {
    LOG_ERROR("SendNotify(%s): the %s has %zu characters (at most %u)", remote.c_str(),
              notify.name.size() > wire::kMaxNotifyField ? "name" : "message",
              notify.name.size() > wire::kMaxNotifyField ? notify.name.size() : notify.message.size(),
              wire::kMaxNotifyField);
    return adxl::PARAM_INVALID;
  }
  if (timeout_ms <= 0) {
    LOG_ERROR("SendNotify(%s): timeout %d ms must be > 0", remote.c_str(), timeout_ms);
    return adxl::PARAM_INVALID;
  }
  const Deadline deadline = Deadline::AfterMs(timeout_ms);
  std::shared_ptr<Channel> channel;
  ChannelPool::Pin pin;  // the channel stays out of the pool's reach until the notify is answered
  std::string error;
  {
    std::shared_lock lock(lifecycle_);
    if (!initialized_) {
      LOG_ERROR("SendNotify(%s): engine not initialized", remote.c_str());
      return adxl::FAILED;
    }
    const adxl::Status found = ChannelFor("SendNotify", remote, deadline, &channel, &pin, &error);
    if (found != adxl::SUCCESS) {
      if (found == adxl::NOT_CONNECTED && !config_.auto_connect) {
        LOG_ERROR("SendNotify: not connected to %s", remote.c_str());
      } else {
        LOG_ERROR("SendNotify(%s): no channel, auto-connect failed with %s: %s", remote.c_str(),
                  StatusText(found).c_str(), error.c_str());
      }
      return found;
    }
  }
  const adxl::Status status = channel->SendNotify(notify, deadline, &error);
  if (status != adxl::SUCCESS) {
    static std::atomic<int64_t> last_logged{0};
    if (status != adxl::RESOURCE_EXHAUSTED || LogThisSecond(&last_logged))
      LOG_ERROR("SendNotify(%s, '%s') failed with %s: %s", remote.c_str(), notify.name.substr(0, 64).c_str(),
                StatusText(status).c_str(), error.c_str());
  }
  return status;
}

adxl::Status Engine::GetNotifies(std::vector<wire::Notify> *notifies) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("GetNotifies: engine not initialized");
    return adxl::FAILED;
  }
  notifies_.TakeAll(notifies);
  return adxl::SUCCESS;
}

void Engine::RecordEnd(const TransferRequest &request, adxl::Status status, const std::string &error) {
  const auto now = request.ended_at != std::chrono::steady_clock::time_point{} && status == adxl::SUCCESS
                       ? request.ended_at
                       : std::chrono::steady_clock::now();
  TransferRecord record;
  record.op = request.Op();
  record.transport = request.transport;
  record.status = status;
  // The lane pool knows the total once a path was tried; otherwise (refused,
  // canceled while queued, carried by a group) it is summed here.
  record.bytes = request.total_bytes != UINT64_MAX ? request.total_bytes : TotalBytes(request.Segments());
  record.descriptors_coalesced = request.Segments().size();
  record.descriptors_submitted =
      request.descriptors_submitted != 0 ? request.descriptors_submitted : record.descriptors_coalesced;
  const auto ns = [](std::chrono::steady_clock::duration d) {
    return static_cast<uint64_t>(std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()));
  };
  record.total_ns = ns(now - request.submitted_at);
  metrics_.RecordTransfer(record);
  if (CurrentLogLevel() >= LogLevel::kDebug) {
    LOG_DEBUG("transfer %" PRIu64 " peer=%s op=%s descriptors=%" PRIu64 " coalesced=%" PRIu64 " bytes=%" PRIu64
              " transport=%s queued_us=%.1f wire_us=%.1f total_us=%.1f status=%s%s%s",
              request.Id(), request.Key().c_str(), request.Op() == adxl::WRITE ? "write" : "read",
              record.descriptors_submitted, record.descriptors_coalesced, record.bytes,
              metrics::kTransportNames[record.transport < metrics::kTransports ? record.transport : size_t{metrics::kNone}],
              ns(request.started_at - request.submitted_at) / 1e3, ns(now - request.started_at) / 1e3,
              record.total_ns / 1e3, StatusNameOrNull(status) != nullptr ? StatusNameOrNull(status) : "unknown",
              error.empty() ? "" : " error=", error.c_str());
  }
}

void Engine::MetricsSnapshotOf(MetricsSnapshot *out) {
  metrics_.Snapshot(out);
  out->requests_in_flight = requests_in_flight_.load(std::memory_order_relaxed);
  out->async_requests_held = async_.Size();
  std::shared_lock lock(lifecycle_);
  out->engine = local_id_;
  out->initialized = initialized_;
  if (!initialized_) return;
  if (server_) {
    out->sessions = server_->SessionCount();
    out->lanes += server_->LaneCount();
  }
  if (reactor_) out->event_threads = reactor_->ThreadCount();
  if (workers_) out->worker_threads = workers_->ThreadCount();
  for (const TransportRegion &region : registry_.Regions()) {
    ++out->registered_regions;
    out->registered_bytes += region.len;
  }
  std::vector<std::shared_ptr<Channel>> channels;
  {
    std::lock_guard guard(channels_mutex_);
    for (const auto &entry : channels_)
      if (entry.second) channels.push_back(entry.second);
  }
  out->channels = channels.size();
  for (const auto &channel : channels) out->lanes += channel->Lanes().LiveLaneCount();
}

std::string Engine::MetricsJson() {
  MetricsSnapshot snapshot;
  MetricsSnapshotOf(&snapshot);
  return RenderJson(snapshot);
}

std::string Engine::MetricsText() {
  MetricsSnapshot snapshot;
  MetricsSnapshotOf(&snapshot);
  return RenderPrometheus(snapshot);
}

int Engine::MetricsPort() const { return metrics_port_.load(); }

}  // namespace llmdd
