#include "engine/channel.h"

#include <chrono>
#include <cinttypes>
#include <thread>

#include "common/log.h"
#include "common/threads.h"
#include "engine/handshake.h"

namespace llmdd {

using wire::MsgType;

std::shared_ptr<ByteStream> Channel::OpenLane(wire::ConnRole role, Deadline deadline, adxl::Status *status,
                                              std::string *error) {
  wire::Hello hello;
  hello.role = role;
  hello.session_id = session_id_;
  if (role == wire::ConnRole::kReverseLane && server_process_) hello.capabilities |= wire::kCapSameHost;
  // Lanes of a same-host session say who holds them: the server checks each one.
  if (params_.config.SameHostAllowed()) FillIdentity(&hello);
  hello.engine_id = params_.local_id;
  hello.target_engine_id = params_.remote_id;
  wire::HelloAck ack;
  return OpenPeerConnection(params_.remote, hello, params_.config.auth_secret, deadline, &ack, status, error);
}

adxl::Status Channel::Open(const Params &params, Deadline deadline, std::shared_ptr<Channel> *out,
                           std::string *error) {
  std::shared_ptr<Channel> channel(new Channel(params));
  wire::Hello hello;
  hello.role = wire::ConnRole::kControl;
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages;
  hello.lanes = params.config.tcp_connections;
  hello.heartbeat_interval_ms = params.config.heartbeat_interval_ms;
  hello.peer_timeout_ms = params.config.peer_timeout_ms;
  hello.engine_id = params.local_id;
  hello.target_engine_id = params.remote_id;
  const bool allow_same_host = params.config.SameHostAllowed();
  if (allow_same_host) FillIdentity(&hello);
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  channel->control_ =
      OpenPeerConnection(params.remote, hello, params.config.auth_secret, deadline, &ack, &status, error);
  if (!channel->control_) return status;
  channel->session_id_ = ack.session_id;
  // Same-host path: forward lanes when the server reached our memory; reverse
  // lanes when we reach the server's.
  std::string why_not;
  if (allow_same_host) channel->server_process_ = PeerProcess::Verify(IdentityOf(ack), *channel->control_, &why_not);
  // Each side copies into its own memory from the other's: both must reach each other.
  const bool forward_same_host =
      allow_same_host && (ack.capabilities & wire::kCapSameHost) != 0 && channel->server_process_ != nullptr;
  if (params.config.transport == EngineConfig::Transport::kSameHost && !forward_same_host) {
    *error = "llmdd.Transport=shm but the same-host path to " + params.remote_id + " is not available" +
             (why_not.empty() ? "" : " (" + why_not + ")");
    channel->Close(Deadline::AfterMs(200));
    return adxl::FAILED;
  }

  // Broken forward lanes are reopened on demand with the same session.
  Channel *raw = channel.get();
  channel->lanes_ = std::make_unique<LanePool>(
      params.remote_id, params.workers, [raw](Deadline d, std::string *why) -> std::shared_ptr<ByteStream> {
        if (raw->stopping_.load() || raw->Dead()) {
          *why = raw->Dead() ? raw->DeadReason() : "channel is closing";
          return nullptr;
        }
        adxl::Status s = adxl::SUCCESS;
        return raw->OpenLane(wire::ConnRole::kDataLane, d, &s, why);
      });
  channel->lanes_->SetSameHost(forward_same_host ? channel->server_process_ : nullptr);
  for (uint32_t i = 0; i < params.config.tcp_connections; ++i) {
    std::shared_ptr<ByteStream> lane = channel->OpenLane(wire::ConnRole::kDataLane, deadline, &status, error);
    if (!lane) {
      channel->Close(Deadline::AfterMs(200));
      return status;
    }
    channel->lanes_->AddLane(std::move(lane));
  }
  for (uint32_t i = 0; i < params.reverse_lanes; ++i) {
    std::shared_ptr<ByteStream> lane = channel->OpenLane(wire::ConnRole::kReverseLane, deadline, &status, error);
    if (!lane) {
      channel->Close(Deadline::AfterMs(200));
      return status;
    }
    channel->reverse_streams_.push_back(lane);
    std::thread serving;
    const bool started = StartThread("serving a reverse lane", [raw, lane] {
      ServeContext ctx;
      ctx.registry = raw->params_.registry;
      ctx.app_handler = raw->params_.app_handler;
      ctx.peer = raw->params_.remote_id;
      ctx.same_host = raw->server_process_;
      ctx.stopping = &raw->stopping_;
      ctx.max_wait_ms = raw->params_.config.max_serve_wait_ms;
      ctx.max_lease_ms = raw->params_.config.deregister_grace_ms;
      ctx.app_bytes = &raw->reverse_app_bytes_;
      ctx.max_app_bytes = raw->params_.config.max_peer_message_bytes;
      ServeLane(*lane, ctx);
      lane->Shutdown();
    }, &serving);
    if (!started) {
      *error = "cannot start a thread to serve a reverse lane to " + params.remote_id;
      channel->Close(Deadline::AfterMs(200));
      return adxl::RESOURCE_EXHAUSTED;
    }
    channel->reverse_threads_.push_back(std::move(serving));
  }
  if (!StartThread("heartbeats", [raw] { raw->HeartbeatLoop(); }, &channel->heartbeat_)) {
    *error = "cannot start the heartbeat thread for " + params.remote_id;
    channel->Close(Deadline::AfterMs(200));
    return adxl::RESOURCE_EXHAUSTED;
  }
  LOG_INFO("connected to %s (session %" PRIx64 ", %u lanes, %u reverse lanes, %s)", params.remote_id.c_str(),
           channel->session_id_, params.config.tcp_connections, params.reverse_lanes,
           forward_same_host ? "same-host path" : "tcp path");
  *out = std::move(channel);
  return adxl::SUCCESS;
}

Channel::~Channel() { Close(Deadline::AfterMs(0)); }

std::string Channel::DeadReason() const {
  std::lock_guard lock(dead_mutex_);
  return dead_reason_;
}

void Channel::MarkDead(const std::string &reason) {
  {
    std::lock_guard lock(dead_mutex_);
    if (dead_.load()) return;
    dead_reason_ = reason;
    dead_.store(true);
  }
  LOG_ERROR("peer %s is considered dead: %s", params_.remote_id.c_str(), reason.c_str());
}

void Channel::HeartbeatLoop() {
  uint64_t sequence = 0;
  while (!stopping_.load()) {
    {
      std::unique_lock lock(wake_mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(params_.config.heartbeat_interval_ms),
                     [&] { return stopping_.load(); });
    }
    if (stopping_.load() || Dead()) return;
    std::unique_lock control(control_mutex_, std::try_to_lock);
    if (!control.owns_lock()) continue;  // Close() is using the control connection
    Deadline deadline = Deadline::AfterMs(params_.config.peer_timeout_ms);
    ++sequence;
    if (!SendControl(*control_, MsgType::kPing, sequence, deadline)) {
      if (!stopping_.load()) MarkDead("cannot send heartbeat");
      return;
    }
    wire::MsgHeader header;
    IoStatus io = IoStatus::kOk;
    std::string error;
    if (!ReadControl(*control_, deadline, &header, &io, &error) ||
        header.type != static_cast<uint16_t>(MsgType::kPong) || header.request_id != sequence) {
      if (!stopping_.load())
        MarkDead(io == IoStatus::kTimeout ? "no heartbeat answer within " +
                                                std::to_string(params_.config.peer_timeout_ms) + " ms"
                                          : "control connection lost (" + error + ")");
      return;
    }
  }
}

void Channel::Close(Deadline deadline, bool say_goodbye) {
  std::call_once(closed_, [&] {
    // 1. No transfer of ours is running after this (they are deadline-bounded).
    std::unique_lock drain(in_flight_);
    // 2. Stop heartbeats, then say goodbye on the control connection.
    stopping_.store(true);
    wake_.notify_all();
    if (control_ && say_goodbye) {
      std::unique_lock control(control_mutex_, std::defer_lock);
      // The heartbeat thread may hold the control connection while it waits for
      // a Pong; wait for it, but only until our deadline.
      while (!Dead() && !control.try_lock() && !deadline.Expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (!Dead() && control.owns_lock()) {
        bool acked = false;
        if (SendControl(*control_, MsgType::kGoodbye, 0, deadline)) {
          wire::MsgHeader header;
          IoStatus io = IoStatus::kOk;
          std::string error;
          acked = ReadControl(*control_, deadline, &header, &io, &error) &&
                  header.type == static_cast<uint16_t>(MsgType::kGoodbyeAck);
        }
        if (!acked) LOG_WARN("no goodbye answer from %s; released local resources anyway", params_.remote_id.c_str());
      }
    }
    if (control_) control_->Shutdown();
    if (heartbeat_.joinable()) heartbeat_.join();
    if (lanes_) lanes_->ShutdownAll();
    for (auto &stream : reverse_streams_) stream->Shutdown();
    for (auto &t : reverse_threads_) t.join();
  });
}

}  // namespace llmdd
