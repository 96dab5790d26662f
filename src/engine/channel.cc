#include "engine/channel.h"

#include <chrono>
#include <cinttypes>
#include <algorithm>
#include <thread>

#include "common/log.h"
#include "common/threads.h"
#include "engine/handshake.h"

namespace llmdd {

using wire::MsgType;

std::shared_ptr<ByteStream> Channel::OpenLane(wire::ConnRole role, Deadline deadline, adxl::Status *status,
                                              std::string *error, const LanePool::Opening &opening) {
  wire::Hello hello;
  hello.role = role;
  hello.session_id = session_id_;
  if (role == wire::ConnRole::kReverseLane && server_process_) hello.capabilities |= wire::kCapSameHost;
  // Lanes of a same-host session say who holds them: the server checks each one.
  if (params_.config.SameHostAllowed()) FillIdentity(&hello);
  hello.engine_id = params_.local_id;
  hello.target_engine_id = params_.remote_id;
  wire::HelloAck ack;
  return OpenPeerConnection(params_.remote, hello, params_.config.auth_secret, deadline, &ack, status, error,
                            opening);
}

adxl::Status Channel::Open(const Params &params, Deadline deadline, std::shared_ptr<Channel> *out,
                           std::string *error) {
  std::shared_ptr<Channel> channel(new Channel(params));
  wire::Hello hello;
  hello.role = wire::ConnRole::kControl;
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages | wire::kCapNotify | wire::kCapWriteHold |
                       wire::kCapSourceMappings;
  if (params.reverse_lanes > 0) hello.capabilities |= wire::kCapLazyReverseLanes;
  hello.heartbeat_interval_ms = params.config.heartbeat_interval_ms;
  hello.peer_timeout_ms = params.config.peer_timeout_ms;
  hello.engine_id = params.local_id;
  hello.target_engine_id = params.remote_id;
  hello.transports = params.transports->Advertisement();
  const bool allow_same_host = params.config.SameHostAllowed();
  if (allow_same_host) {
    FillIdentity(&hello);
    hello.capabilities |= wire::kCapSameHost;  // offered; HelloAck grants it once the server verified us
  }
  wire::HelloAck ack;
  adxl::Status status = adxl::SUCCESS;
  channel->control_ =
      OpenPeerConnection(params.remote, hello, params.config.auth_secret, deadline, &ack, &status, error);
  if (!channel->control_) return status;
  channel->session_id_ = ack.session_id;
  // Notify is an ignorable type: sent only where the server granted it (OpenPeerConnection drops it below version 2).
  channel->notify_granted_ = (ack.capabilities & wire::kCapNotify) != 0;
  // Watched from here on, so the answer to a goodbye (on a failure below too) is seen.
  Channel *raw = channel.get();
  channel->control_watch_ =
      params.reactor->Watch(channel->control_->NativeHandle(), [raw] { return raw->OnControlReadable(); }, error);
  if (channel->control_watch_ == 0) {
    *error = "cannot watch the control connection to " + params.remote_id + ": " + *error;
    channel->Close(Deadline::AfterMs(200));
    return adxl::RESOURCE_EXHAUSTED;
  }
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
  channel->lanes_ = std::make_unique<LanePool>(
      params.remote_id, params.workers,
      [raw](Deadline d, adxl::Status *status, std::string *why,
            const LanePool::Opening &opening) -> std::shared_ptr<ByteStream> {
        if (raw->stopping_.load() || raw->Dead()) {
          *status = adxl::FAILED;
          *why = raw->Dead() ? raw->DeadReason() : "channel is closing";
          return nullptr;
        }
        return raw->OpenLane(wire::ConnRole::kDataLane, d, status, why, opening);
      });
  channel->lanes_->SetSplitRule(SplitRule{UsableCores(), params.config.same_host_min_part_bytes});
  TransportPeer peer;
  peer.peer_name = params.remote_id;
  peer.lanes = channel->lanes_.get();
  if (forward_same_host) peer.same_host = channel->server_process_;
  peer.write_hold = (ack.capabilities & wire::kCapWriteHold) != 0;
  peer.map_max_bytes = params.config.same_host_map_max_bytes;
  peer.source_mappings = (ack.capabilities & wire::kCapSourceMappings) != 0;
  peer.metrics = params.metrics;
  std::vector<std::shared_ptr<TransportLink>> links = params.transports->Connect(peer, ack.transports, deadline);
  PeerFacts &facts = channel->facts_;
  facts.library_version = ack.library_version;
  facts.protocol_version = channel->control_->ProtocolVersion();
  facts.capabilities = ack.capabilities;
  for (const wire::TransportAd &ad : ack.transports) facts.offered.push_back(ad.name);
  for (const auto &link : links) facts.links.push_back(link->Caps().name);
  facts.same_host = forward_same_host;
  if (!forward_same_host) {
    const char *forced = params.config.transport == EngineConfig::Transport::kUcx ? "llmdd.Transport=ucx on this engine"
                                                                                 : "llmdd.Transport=tcp on this engine";
    facts.same_host_why_not = !allow_same_host ? forced
                              : !why_not.empty() ? why_not
                                                 : "the server did not verify this process (see its log)";
  }
  if (params.config.transport == EngineConfig::Transport::kUcx) {
    if (!TransportSet::HasLink(links, "ucx")) {
      *error = "llmdd.Transport=ucx but " + params.remote_id + " did not advertise ucx (run it with llmdd.Transport=ucx)";
      for (auto &link : links) link->Shutdown();
      channel->Close(Deadline::AfterMs(200));
      return adxl::FAILED;
    }
  }
  // The path named in the log line below (the demos read it): the same-host
  // path where verified, else UCX where a link was made (forced, or under
  // auto over hardware RMA), else TCP.
  const char *path = forward_same_host ? "same-host path" : TransportSet::HasLink(links, "ucx") ? "ucx path" : "tcp path";
  channel->lanes_->SetLinks(std::move(links));
  // Data lanes open when a transfer first needs them and close after they sat
  // idle (llmdd.IdleLaneCloseMs): an idle peer costs its control connection only.
  channel->lanes_->AddLazyLanes(params.config.tcp_connections);
  // A server that asks for reverse lanes (kCapLazyReverseLanes) gets the first
  // now: it carries what the server needs to know of the paths to us, and the
  // server then asks for the others as its requests need them.
  const bool lazy_reverse = (ack.capabilities & wire::kCapLazyReverseLanes) != 0;
  const uint32_t reverse_now = lazy_reverse ? std::min<uint32_t>(params.reverse_lanes, 1) : params.reverse_lanes;
  for (uint32_t i = 0; i < reverse_now; ++i) {
    if (!channel->AddReverseLane(deadline, &status, error)) {
      channel->Close(Deadline::AfterMs(200));
      return status;
    }
  }
  channel->heartbeat_timer_ = params.reactor->Every(std::chrono::milliseconds(params.config.heartbeat_interval_ms),
                                                    [raw] { raw->Heartbeat(); });
  const std::chrono::milliseconds idle(params.config.idle_lane_close_ms);
  channel->idle_timer_ = params.reactor->Every(std::max(idle / 4, std::chrono::milliseconds(10)),
                                               [raw, idle] { raw->lanes_->CloseIdle(idle); });
  LOG_INFO("connected to %s (session %" PRIx64 ", %u lanes, %u reverse lanes, %s)", params.remote_id.c_str(),
           channel->session_id_, params.config.tcp_connections, params.reverse_lanes, path);
  *out = std::move(channel);
  return adxl::SUCCESS;
}

Channel::~Channel() { Close(Deadline::AfterMs(0)); }

bool Channel::AddReverseLane(Deadline deadline, adxl::Status *status, std::string *error) {
  std::shared_ptr<ByteStream> lane = OpenLane(wire::ConnRole::kReverseLane, deadline, status, error);
  if (!lane) return false;
  ServeContext ctx;
  ctx.registry = params_.registry;
  ctx.app_handler = params_.app_handler;
  ctx.peer = params_.remote_id;
  ctx.same_host = server_process_;
  ctx.source_mappings = reverse_source_mappings_.get();
  ctx.stopping = &stopping_;
  ctx.max_wait_ms = params_.config.max_serve_wait_ms;
  ctx.max_lease_ms = params_.config.deregister_grace_ms;
  ctx.app_bytes = &reverse_app_bytes_;
  ctx.max_app_bytes = params_.config.max_peer_message_bytes;
  ctx.metrics = params_.metrics;
  auto server = std::make_shared<LaneServer>(*lane, std::move(ctx));
  std::lock_guard lock(reverse_mutex_);
  if (reverse_closed_) {
    lane->Shutdown();
    *status = adxl::FAILED;
    *error = "the channel to " + params_.remote_id + " is closing";
    return false;
  }
  // The handler keeps the stream alive as long as it is watched. Close
  // unwatches every reverse lane before the channel goes, so `this` is alive
  // whenever a handler runs.
  const uint64_t watch = params_.reactor->Watch(
      lane->NativeHandle(),
      [this, server, lane] {
        if (server->OnReadable()) return true;
        ForgetReverseLane(lane.get());  // ended (the remote closed it idle): its socket goes with the watch
        return false;
      },
      error);
  if (watch == 0) {
    lane->Shutdown();
    *status = adxl::RESOURCE_EXHAUSTED;
    *error = "cannot serve a reverse lane to " + params_.remote_id + ": " + *error;
    return false;
  }
  reverse_streams_.push_back(std::move(lane));
  reverse_watches_.push_back(watch);
  return true;
}

void Channel::ForgetReverseLane(const ByteStream *lane) {
  std::lock_guard lock(reverse_mutex_);
  for (size_t i = 0; i < reverse_streams_.size(); ++i) {
    if (reverse_streams_[i].get() == lane) {
      reverse_streams_.erase(reverse_streams_.begin() + static_cast<std::ptrdiff_t>(i));
      reverse_watches_.erase(reverse_watches_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
}

void Channel::OnReverseLaneWanted() {
  {
    std::lock_guard lock(reverse_mutex_);
    // Its regular reverse lanes and its express lane: what the remote's pool can use.
    const size_t cap = static_cast<size_t>(params_.reverse_lanes) + 1;
    if (reverse_closed_ || reverse_streams_.size() + reverse_opening_ >= cap) {
      LOG_WARN("%s asked for a reverse lane beyond the %zu it may have: not opened", params_.remote_id.c_str(), cap);
      return;
    }
    ++reverse_opening_;
  }
  // The handshake is a round trip: not on the event thread that read the request.
  std::weak_ptr<Channel> weak = weak_from_this();
  const bool submitted = params_.workers->Submit([weak] {
    std::shared_ptr<Channel> self = weak.lock();
    if (!self) return;
    adxl::Status status = adxl::SUCCESS;
    std::string error;
    if (!self->AddReverseLane(Deadline::AfterMs(self->params_.config.handshake_timeout_ms), &status, &error) &&
        !self->stopping_.load())
      LOG_WARN("cannot open the reverse lane %s asked for: %s", self->params_.remote_id.c_str(), error.c_str());
    std::lock_guard lock(self->reverse_mutex_);
    --self->reverse_opening_;
  });
  if (!submitted) {
    LOG_WARN("cannot open the reverse lane %s asked for: no worker thread", params_.remote_id.c_str());
    std::lock_guard lock(reverse_mutex_);
    --reverse_opening_;
  }
}

std::string Channel::DeadReason() const {
  std::lock_guard lock(dead_mutex_);
  return dead_reason_;
}

void Channel::MarkDead(const std::string &reason, bool orderly) {
  {
    std::lock_guard lock(dead_mutex_);
    if (dead_.load()) return;
    dead_reason_ = reason;
    dead_.store(true);
  }
  if (orderly) {
    LOG_INFO("peer %s ended the connection: %s", params_.remote_id.c_str(), reason.c_str());
  } else {
    LOG_ERROR("peer %s is considered dead: %s", params_.remote_id.c_str(), reason.c_str());
  }
  std::lock_guard lock(wake_mutex_);  // notifies waiting for an answer give up now
  wake_.notify_all();
}

namespace {

int64_t SteadyNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A Ping is a 40-byte write into an idle socket: it either goes at once or the
// connection is in trouble, which the unanswered Ping then reports.
constexpr int64_t kPingSendMs = 100;

}  // namespace

void Channel::Heartbeat() {
  if (stopping_.load() || Dead()) return;
  const uint64_t outstanding = ping_outstanding_.load();
  if (outstanding != 0) {
    if (SteadyNowMs() - ping_sent_ms_.load() > params_.config.peer_timeout_ms)
      MarkDead("no heartbeat answer within " + std::to_string(params_.config.peer_timeout_ms) + " ms");
    return;  // one Ping at a time, as the server expects
  }
  std::unique_lock control(control_mutex_, std::try_to_lock);
  if (!control.owns_lock()) return;  // Close() is saying goodbye
  const uint64_t sequence = ++ping_sequence_;
  ping_sent_ms_.store(SteadyNowMs());
  ping_outstanding_.store(sequence);
  // Not sent (the connection ended or is jammed): the control handler reports
  // the end, the unanswered Ping the jam.
  SendControl(*control_, MsgType::kPing, sequence, Deadline::AfterMs(kPingSendMs));
}

bool Channel::OnControlReadable() {
  std::string error;
  const char *lost = nullptr;
  for (;;) {
    // Bodies are bounded per type by the header check (NotifyAck: kMaxErrorText).
    switch (control_incoming_.Feed(*control_, /*with_body=*/true, wire::kMaxControlBody, &error)) {
      case IncomingMessage::State::kPartial: return true;
      case IncomingMessage::State::kClosed: lost = "closed"; break;
      case IncomingMessage::State::kInvalid: lost = error.c_str(); break;
      case IncomingMessage::State::kComplete: break;
    }
    if (lost != nullptr) break;
    const wire::MsgHeader header = control_incoming_.Header();
    // A notify's answer: NotifyAck, or the Error{UNSUPPORTED, request_id} an
    // engine that does not know Notify answers to an ignorable type with (the
    // connection stays). An answer that comes after its SendNotify gave up is dropped.
    const bool notify_answer =
        header.type == static_cast<uint16_t>(MsgType::kNotifyAck) ||
        (header.type == static_cast<uint16_t>(MsgType::kError) && header.request_id != 0 &&
         header.request_id <= notify_sequence_.load());
    if (notify_answer) {
      std::lock_guard lock(wake_mutex_);
      auto it = pending_notifies_.find(header.request_id);
      if (it != pending_notifies_.end()) {
        it->second.answered = true;
        it->second.status = header.type == static_cast<uint16_t>(MsgType::kError) && header.status == adxl::SUCCESS
                                ? adxl::FAILED
                                : wire::SanitizePeerStatus(header.status);
        it->second.reason = control_incoming_.Body();
        wake_.notify_all();
      } else {
        LOG_DEBUG("answer to notify %" PRIu64 " from %s came after its SendNotify gave up", header.request_id,
                  params_.remote_id.c_str());
      }
      control_incoming_.Reset();
      continue;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kError)) {
      error = "the server ended the session: " + control_incoming_.Body().substr(0, wire::kMaxErrorText);
      control_incoming_.Reset();
      lost = error.c_str();
      break;
    }
    control_incoming_.Reset();
    if (header.type == static_cast<uint16_t>(MsgType::kPong)) {
      uint64_t expected = header.request_id;
      if (expected != 0) ping_outstanding_.compare_exchange_strong(expected, 0);
      continue;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kReverseLaneWanted) && params_.reverse_lanes > 0) {
      OnReverseLaneWanted();
      continue;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kGoodbyeAck)) {
      std::lock_guard lock(wake_mutex_);
      goodbye_pending_ = false;
      control_ended_ = true;
      wake_.notify_all();
      return false;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kGoodbye)) {
      // The server finalized: an orderly end. Transfers fail fast from now on
      // (FAILED, naming this reason) until Disconnect + Connect.
      if (!stopping_.load()) MarkDead("the peer finalized its engine", /*orderly=*/true);
      std::lock_guard lock(wake_mutex_);
      control_ended_ = true;
      wake_.notify_all();
      return false;
    }
    error = std::string("unexpected ") + wire::MsgTypeName(header.type);
    lost = error.c_str();
    break;
  }
  if (!stopping_.load()) MarkDead(std::string("control connection lost (") + lost + ")");
  std::lock_guard lock(wake_mutex_);
  control_ended_ = true;
  wake_.notify_all();
  return false;
}

adxl::Status Channel::SendNotify(const wire::Notify &notify, Deadline deadline, std::string *error) {
  if (!notify_granted_) {
    *error = params_.remote_id + " does not accept notifications (an engine of an earlier revision: its handshake "
             "did not grant them)";
    return adxl::UNSUPPORTED;
  }
  if (Dead()) {
    *error = "peer " + params_.remote_id + " is dead (" + DeadReason() + "); Disconnect and Connect again";
    return adxl::FAILED;
  }
  const std::string body = wire::EncodeNotify(notify);
  const uint64_t id = notify_sequence_.fetch_add(1) + 1;
  {
    std::lock_guard lock(wake_mutex_);
    if (control_ended_) {
      *error = "the control connection to " + params_.remote_id + " has ended";
      return adxl::FAILED;
    }
    pending_notifies_[id];
  }
  auto forget = [this, id] {
    std::lock_guard lock(wake_mutex_);
    pending_notifies_.erase(id);
  };
  {
    std::unique_lock control(control_mutex_, std::try_to_lock);
    for (int tries = 0; !control.owns_lock(); ++tries) {
      if (deadline.Expired()) {
        forget();
        *error = "the control connection to " + params_.remote_id + " stayed busy until the deadline";
        return adxl::TIMEOUT;
      }
      // Holders keep it for one message's write (bounded by their own deadlines).
      if (tries < 16) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      control.try_lock();
    }
    // SayGoodbye sets stopping_ before it takes control_mutex_: nothing is sent after the Goodbye.
    if (stopping_.load()) {
      forget();
      *error = "the channel to " + params_.remote_id + " is being disconnected";
      return adxl::NOT_CONNECTED;
    }
    if (!SendControlBody(*control_, MsgType::kNotify, adxl::SUCCESS, id, body, deadline)) {
      forget();
      if (stopping_.load()) {
        *error = "the channel to " + params_.remote_id + " is being disconnected";
        return adxl::NOT_CONNECTED;
      }
      // Part of the message may have gone out: the connection's framing is
      // lost, and with it the session.
      const bool timed_out = deadline.Expired();
      *error = timed_out ? "the notify could not be written within the timeout (the peer does not read its "
                           "control connection); the channel is now dead"
                         : "the control connection to " + params_.remote_id + " failed";
      control_->Shutdown();
      MarkDead(timed_out ? "a notify could not be written to the control connection within its timeout"
                         : "the control connection failed while a notify was written");
      return timed_out ? adxl::TIMEOUT : adxl::FAILED;
    }
  }
  std::unique_lock lock(wake_mutex_);
  auto it = pending_notifies_.find(id);
  while (!it->second.answered && !control_ended_ && !Dead() && !deadline.Expired())
    wake_.wait_for(lock, std::chrono::milliseconds(std::clamp<int64_t>(deadline.RemainingMs(), 1, 1000)));
  const PendingNotify result = std::move(it->second);
  pending_notifies_.erase(it);
  if (result.answered) {
    *error = result.reason;
    return result.status;
  }
  if (control_ended_ || Dead()) {
    *error = "the control connection to " + params_.remote_id + " ended before the notify was answered" +
             (Dead() ? " (" + DeadReason() + ")" : "");
    return adxl::FAILED;
  }
  *error = "no answer from " + params_.remote_id + " within the timeout (the notify may still arrive)";
  return adxl::TIMEOUT;
}

void Channel::SayGoodbye(Deadline deadline) {
  std::call_once(goodbye_sent_, [&] {
    // 1. No transfer of ours is running after this (they are deadline-bounded).
    { std::unique_lock drain(in_flight_); }
    // 2. Stop heartbeats, then say goodbye; the control handler sees the answer.
    stopping_.store(true);
    if (params_.reactor != nullptr) {
      params_.reactor->Cancel(heartbeat_timer_);
      params_.reactor->Cancel(idle_timer_);
    }
    if (!control_ || Dead()) return;
    std::lock_guard control(control_mutex_);
    {
      std::lock_guard lock(wake_mutex_);
      if (control_ended_) return;
      goodbye_pending_ = true;
    }
    if (!SendControl(*control_, MsgType::kGoodbye, 0, deadline)) {
      std::lock_guard lock(wake_mutex_);
      goodbye_pending_ = false;
    }
  });
}

void Channel::Close(Deadline deadline, bool say_goodbye) {
  std::call_once(closed_, [&] {
    if (say_goodbye) {
      SayGoodbye(deadline);
      std::unique_lock lock(wake_mutex_);
      while (goodbye_pending_ && !control_ended_ && !Dead() && !deadline.Expired())
        wake_.wait_for(lock, std::chrono::milliseconds(std::max<int64_t>(1, deadline.RemainingMs())));
      if (goodbye_pending_ && !control_ended_)
        LOG_WARN("no goodbye answer from %s; released local resources anyway", params_.remote_id.c_str());
    } else {
      { std::unique_lock drain(in_flight_); }
      stopping_.store(true);
      if (params_.reactor != nullptr) {
        params_.reactor->Cancel(heartbeat_timer_);
        params_.reactor->Cancel(idle_timer_);
      }
    }
    if (control_) control_->Shutdown();
    if (lanes_) lanes_->ShutdownAll();
    std::vector<std::shared_ptr<ByteStream>> reverse;
    std::vector<uint64_t> reverse_watches;
    {
      std::lock_guard lock(reverse_mutex_);
      reverse_closed_ = true;  // a lane being opened on request is shut when it arrives
      reverse = reverse_streams_;
      reverse_watches = reverse_watches_;
    }
    for (auto &stream : reverse) stream->Shutdown();
    // Nothing of ours runs on the event threads after this.
    if (params_.reactor != nullptr) {
      params_.reactor->Unwatch(control_watch_);
      for (uint64_t watch : reverse_watches) params_.reactor->Unwatch(watch);
    }
    // No answer can arrive any more: notifies still waiting give up.
    std::lock_guard lock(wake_mutex_);
    control_ended_ = true;
    wake_.notify_all();
  });
}

}  // namespace llmdd
