#include "engine/engine.h"

#include <cinttypes>

#include "common/log.h"

namespace llmdd {

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

Engine::~Engine() { Finalize(); }

bool Engine::Initialized() const {
  std::shared_lock lock(lifecycle_);
  return initialized_;
}

adxl::Status Engine::Initialize(const std::string &local_engine, const std::map<std::string, std::string> &options) {
  std::unique_lock lock(lifecycle_);
  if (initialized_) {
    LOG_INFO("engine %s already initialized; Initialize ignored", local_id_.c_str());
    return adxl::SUCCESS;
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
  local_id_ = local_engine;
  local_endpoint_ = endpoint;
  config_ = config;
  workers_ = std::make_unique<WorkerPool>(static_cast<int>(config_.worker_threads));
  if (endpoint.HasListenPort()) {
    adxl::Status status = StartServer(endpoint);
    if (status != adxl::SUCCESS) {
      workers_.reset();
      return status;
    }
  }
  initialized_ = true;
  LOG_INFO("engine %s initialized (%s)", local_id_.c_str(), server_ ? "listening" : "client only");
  return adxl::SUCCESS;
}

adxl::Status Engine::StartServer(const Endpoint &listen) {
  server_ = std::make_unique<PeerServer>(local_id_, &registry_, workers_.get(), &app_handler_, config_,
                                         PeerServer::Callbacks{});
  std::string error;
  if (!server_->Start(listen, &error)) {
    LOG_ERROR("Initialize: %s", error.c_str());
    server_.reset();
    return adxl::FAILED;
  }
  return adxl::SUCCESS;
}

void Engine::Finalize() {
  std::unique_lock lock(lifecycle_);
  if (!initialized_) return;
  if (server_) server_->Stop();
  std::map<std::string, std::shared_ptr<Channel>> channels;
  {
    std::lock_guard guard(channels_mutex_);
    channels.swap(channels_);
  }
  for (auto &[id, channel] : channels) {
    if (channel) channel->Close(Deadline::AfterMs(500));
  }
  channels.clear();
  server_.reset();
  registry_.Clear();
  workers_.reset();
  initialized_ = false;
  LOG_INFO("engine %s finalized", local_id_.c_str());
}

adxl::Status Engine::RegisterMem(uintptr_t addr, uint64_t len, adxl::MemType type, uint64_t *handle) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("RegisterMem: engine not initialized");
    return adxl::FAILED;
  }
  if (addr == 0) {
    LOG_ERROR("RegisterMem: address is null");
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
  *handle = registry_.Add(addr, len, type);
  LOG_DEBUG("registered [0x%" PRIxPTR ", +%" PRIu64 ") as handle %" PRIu64, addr, len, *handle);
  return adxl::SUCCESS;
}

adxl::Status Engine::DeregisterMem(uint64_t handle) {
  std::shared_lock lock(lifecycle_);
  if (!initialized_) {
    LOG_ERROR("DeregisterMem: engine not initialized");
    return adxl::FAILED;
  }
  if (!registry_.Remove(handle)) LOG_WARN("DeregisterMem: unknown handle %" PRIu64 " (nothing to do)", handle);
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
  {
    std::lock_guard guard(channels_mutex_);
    if (channels_.count(remote) != 0) {
      LOG_ERROR("Connect: already connected to %s", remote.c_str());
      return adxl::ALREADY_CONNECTED;
    }
    channels_[remote] = nullptr;  // reserve
  }
  Channel::Params params;
  params.local_id = local_id_;
  params.remote_id = remote;
  params.remote = endpoint;
  params.config = config_;
  params.workers = workers_.get();
  params.registry = &registry_;
  params.app_handler = &app_handler_;
  std::shared_ptr<Channel> channel;
  adxl::Status status = Channel::Open(params, deadline, &channel, &error);
  std::lock_guard guard(channels_mutex_);
  if (status != adxl::SUCCESS) {
    channels_.erase(remote);
    LOG_ERROR("Connect(%s) failed: %s", remote.c_str(), error.c_str());
    return status;
  }
  channels_[remote] = channel;
  return adxl::SUCCESS;
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
  std::shared_ptr<Channel> channel;
  {
    std::lock_guard guard(channels_mutex_);
    auto it = channels_.find(remote);
    if (it == channels_.end() || !it->second) {
      LOG_ERROR("Disconnect: not connected to %s", remote.c_str());
      return adxl::NOT_CONNECTED;
    }
    channel = it->second;
    channels_.erase(it);
  }
  channel->Close(Deadline::AfterMs(timeout_ms));
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
  {
    std::lock_guard guard(channels_mutex_);
    auto it = channels_.find(remote);
    if (it != channels_.end()) channel = it->second;
  }
  if (!channel) {
    LOG_ERROR("TransferSync: not connected to %s", remote.c_str());
    return adxl::NOT_CONNECTED;
  }
  if (segs.empty()) return adxl::SUCCESS;
  Channel::InFlight in_flight(channel.get());
  if (channel->Dead()) {
    LOG_ERROR("TransferSync(%s): peer is dead (%s); Disconnect and Connect again", remote.c_str(),
              channel->DeadReason().c_str());
    return adxl::FAILED;
  }
  adxl::Status status = channel->Lanes().Transfer(op, segs, deadline, &error);
  if (status != adxl::SUCCESS) {
    LOG_ERROR("TransferSync(%s, %s, %zu descriptors) failed with %u: %s", remote.c_str(),
              op == adxl::READ ? "READ" : "WRITE", count, status, error.c_str());
  }
  return status;
}

}  // namespace llmdd
