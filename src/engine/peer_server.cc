#include "engine/peer_server.h"

#include <algorithm>
#include <cinttypes>
#include <chrono>
#include <cstring>
#include <thread>

#include <sys/socket.h>

#include "common/hmac.h"
#include "common/log.h"
#include "common/threads.h"
#include "engine/handshake.h"
#include "llmdd/extensions.h"
#include "transport/fault_injection.h"

namespace llmdd {

using wire::MsgType;

namespace {

uint64_t RandomSessionId() {
  // Unpredictable: a session id admits data and reverse lanes into a session.
  uint64_t id = 0;
  while (id == 0) memcpy(&id, RandomBytes(sizeof(id)).data(), sizeof(id));
  return id;
}

// Same-host trust is per connection: a lane joining a same-host session must
// itself be held by the verified peer process (a session id alone proves nothing).
std::shared_ptr<PeerProcess> SameHostForLane(const std::shared_ptr<PeerProcess> &session_peer,
                                             const wire::Hello &hello, const ByteStream &lane) {
  if (!session_peer) return nullptr;
  std::string why = "it names another process";
  if (hello.pid == static_cast<uint32_t>(session_peer->Pid()) && session_peer->HoldsOtherEnd(lane, hello.conn_fd, &why))
    return session_peer;
  LOG_WARN("lane from %s is not held by its verified process (%s): same-host requests refused on it",
           hello.engine_id.c_str(), why.c_str());
  return nullptr;
}

// Logs a refusal of a newcomer at most once a second per kind: a flood of
// them must not flood the log too.
int64_t SteadyNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Connections taken per listener wake-up: the rest wait for the next turn, so
// a connection storm cannot keep one event thread from everything else.
constexpr int kAcceptsPerWake = 64;
// A connection still in its handshake after this long gives way to a
// newcomer when llmdd.MaxHandshakes are in progress (see Adopt).
constexpr int64_t kEvictableHandshakeMs = 250;
// How often silent sessions and overdue handshakes are looked for.
constexpr std::chrono::milliseconds kHousekeepingPeriod{100};
// A lazy session's reverse pool: its regular lanes (the client opens the first
// at Connect), and how many lanes the client opened on request may wait for
// the opener that asked (more are refused: nobody asked for them).
constexpr size_t kLazyReverseLanes = 2;
constexpr size_t kMaxReverseArrivals = 3;

void LogRefusalRateLimited(std::atomic<int64_t> *last_ms, const std::string &what) {
  const int64_t now_ms = SteadyNowMs();
  int64_t said = last_ms->load();
  if (now_ms - said >= 1000 && last_ms->compare_exchange_strong(said, now_ms))
    LOG_WARN("%s (RESOURCE_EXHAUSTED; said at most once a second)", what.c_str());
}

}  // namespace

PeerServer::PeerServer(std::string local_id, MemoryRegistry *registry, WorkerPool *workers, Reactor *reactor,
                       const AppHandler *app_handler, const TransportSet *transports, EngineConfig config,
                       Callbacks callbacks, NotifyInbox *notifies, EngineMetrics *metrics)
    : local_id_(std::move(local_id)),
      registry_(registry),
      workers_(workers),
      reactor_(reactor),
      app_handler_(app_handler),
      transports_(transports),
      config_(config),
      callbacks_(std::move(callbacks)),
      notifies_(notifies),
      metrics_(metrics) {}

PeerServer::~PeerServer() { Stop(); }

bool PeerServer::Start(const Endpoint &listen, std::string *error) {
  if (!listener_.Listen(listen, error)) return false;
  listener_watch_ = reactor_->Watch(listener_.NativeHandle(), [this] { return OnAcceptable(); }, error);
  if (listener_watch_ == 0) {
    listener_.Close();
    return false;
  }
  housekeeping_timer_ = reactor_->Every(kHousekeepingPeriod, [this] { Housekeeping(); });
  started_ = true;
  LOG_INFO("engine %s listening on %s", local_id_.c_str(), listen.ToString().c_str());
  return true;
}

void PeerServer::Stop() {
  if (!started_ || stopping_.exchange(true)) return;
  reactor_->Unwatch(listener_watch_);
  reactor_->Cancel(housekeeping_timer_);
  listener_.Stop();
  std::vector<uint64_t> ids;
  {
    std::lock_guard lock(mutex_);
    for (auto &[id, session] : sessions_) ids.push_back(id);
    for (auto &conn : pending_) conn->stream->Shutdown();
  }
  for (uint64_t id : ids) EndSession(id, "engine is finalizing", /*said_goodbye=*/false, /*finalizing=*/true);
  // Every connection is shut down now; its handler (if running) returns at
  // once. After this, none of ours runs again.
  std::set<uint64_t> watches;
  {
    std::lock_guard lock(mutex_);
    watches.swap(watches_);
    pending_.clear();
  }
  for (uint64_t watch : watches) reactor_->Unwatch(watch);
  listener_.Close();
}

size_t PeerServer::SessionCount() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

size_t PeerServer::LaneCount() const {
  std::lock_guard lock(mutex_);
  size_t lanes = 0;
  for (const auto &entry : sessions_) lanes += entry.second->lanes.size();
  return lanes;
}

bool PeerServer::OnAcceptable() {
  for (int i = 0; i < kAcceptsPerWake && !stopping_.load(); ++i) {
    bool out_of_descriptors = false;
    std::unique_ptr<TcpStream> accepted = listener_.Accept(Deadline::AfterMs(0), &out_of_descriptors);
    if (!accepted) break;
    std::shared_ptr<ByteStream> stream = MaybeInjectFaults(std::shared_ptr<ByteStream>(std::move(accepted)));
    if (out_of_descriptors) {
      RefuseNewcomer(*stream, &refused_descriptors_ms_, "out of file descriptors");
      continue;
    }
    Adopt(std::move(stream));
  }
  return !stopping_.load();
}

void PeerServer::Adopt(std::shared_ptr<ByteStream> stream) {
  auto conn = std::make_shared<Connection>();
  conn->stream = stream;
  conn->handshake_deadline_ms = SteadyNowMs() + config_.handshake_timeout_ms;
  std::string error;
  bool at_cap = false, adopted = false;
  ConnectionPtr evicted;
  {
    std::lock_guard lock(mutex_);
    if (stopping_.load()) return;
    at_cap = pending_.size() >= config_.max_handshakes;
    if (at_cap) {
      // A real peer says Hello within a round trip. When the oldest connection
      // in its handshake has been silent for kEvictableHandshakeMs it gives
      // way to the newcomer, so silent connections cannot lock out the lanes
      // of peers already connected; a burst of young handshakes is not evicted.
      for (const ConnectionPtr &pending : pending_)
        if (!evicted || pending->handshake_deadline_ms < evicted->handshake_deadline_ms) evicted = pending;
      const int64_t started = evicted ? evicted->handshake_deadline_ms - config_.handshake_timeout_ms : 0;
      if (evicted && SteadyNowMs() - started >= kEvictableHandshakeMs && evicted->stage == Connection::Stage::kHello) {
        pending_.erase(evicted);
        at_cap = false;
      } else {
        evicted.reset();
      }
    }
    if (!at_cap) {
      // Held under mutex_ so the handler, which may run at once, finds its watch recorded.
      conn->watch = reactor_->Watch(stream->NativeHandle(), [this, conn] { return OnReadable(conn); }, &error);
      if (conn->watch != 0) {
        pending_.insert(conn);
        watches_.insert(conn->watch);
        adopted = true;
      }
    }
  }
  if (evicted) {
    LOG_INFO("connection from %s silent in its handshake gives way to %s (llmdd.MaxHandshakes)",
             evicted->stream->PeerName().c_str(), stream->PeerName().c_str());
    // Its handler sees the end and forgets it.
    RefuseNewcomer(*evicted->stream, &refused_handshakes_ms_,
                   "it said nothing for " + std::to_string(kEvictableHandshakeMs) + " ms while " +
                       std::to_string(config_.max_handshakes) +
                       " connections were in their handshake (llmdd.MaxHandshakes): it gave way to a newcomer");
  }
  if (adopted) return;
  if (at_cap) {
    RefuseNewcomer(*stream, &refused_handshakes_ms_,
                   std::to_string(config_.max_handshakes) + " connections are already in their handshake "
                   "(llmdd.MaxHandshakes)");
  } else {
    RefuseNewcomer(*stream, &refused_watches_ms_, error);
  }
}

void PeerServer::RefuseNewcomer(ByteStream &stream, std::atomic<int64_t> *last_logged_ms, const std::string &why) {
  CountRefusal(metrics::kCap);
  LogRefusalRateLimited(last_logged_ms, "refused a connection from " + stream.PeerName() + ": " + why);
  // The newcomer has sent nothing we must read: answer its Hello in advance and close.
  SendRefusal(stream, adxl::RESOURCE_EXHAUSTED, "engine " + local_id_ + " cannot take more connections now: " + why,
              Deadline::AfterMs(100));
  stream.Shutdown();
}

bool PeerServer::OnReadable(const ConnectionPtr &conn) {
  bool keep = false;
  RunGuarded("serving a peer connection", [&] {
    switch (conn->stage) {
      case Connection::Stage::kHello:
      case Connection::Stage::kAuthAnswer: keep = OnHandshakeMessage(conn); break;
      case Connection::Stage::kControl: keep = OnControlMessage(conn); break;
      case Connection::Stage::kLane: keep = conn->lane->OnReadable(); break;
    }
  });
  if (!keep) {
    std::lock_guard lock(mutex_);
    watches_.erase(conn->watch);
    pending_.erase(conn);
    if (conn->stage == Connection::Stage::kLane) {
      auto &lanes = conn->session->lanes;
      lanes.erase(std::remove(lanes.begin(), lanes.end(), conn->stream), lanes.end());
    }
  }
  return keep;
}

void PeerServer::ForgetPending(const ConnectionPtr &conn) {
  std::lock_guard lock(mutex_);
  pending_.erase(conn);
}

bool PeerServer::OnHandshakeMessage(const ConnectionPtr &conn) {
  ByteStream &stream = *conn->stream;
  std::string error;
  const uint64_t max_body = conn->stage == Connection::Stage::kHello ? wire::kMaxControlBody : wire::kMaxAuthField;
  switch (conn->incoming.Feed(stream, /*with_body=*/true, max_body, &error)) {
    case IncomingMessage::State::kPartial: return true;
    case IncomingMessage::State::kClosed: stream.Shutdown(); return false;
    case IncomingMessage::State::kInvalid:
      LOG_WARN("rejected connection from %s: %s", stream.PeerName().c_str(), error.c_str());
      SendRefusal(stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
      stream.Shutdown();
      return false;
    case IncomingMessage::State::kComplete: break;
  }
  const wire::MsgHeader header = conn->incoming.Header();
  const std::string body = conn->incoming.Body();
  conn->incoming.Reset();
  const Deadline deadline = Deadline::AfterMs(config_.handshake_timeout_ms);
  if (conn->stage == Connection::Stage::kHello) {
    if (!ParseHello(header, body, &conn->hello, &error)) {
      LOG_WARN("rejected connection from %s: %s", stream.PeerName().c_str(), error.c_str());
      SendRefusal(stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
      stream.Shutdown();
      return false;
    }
    if (!config_.auth_secret.empty()) {
      if (!SendAuthChallenge(stream, conn->hello, deadline, &conn->server_nonce, &error)) {
        LOG_WARN("refused connection from %s (engine '%s'): authentication failed: %s", stream.PeerName().c_str(),
                 conn->hello.engine_id.c_str(), error.c_str());
        CountRefusal(metrics::kAuth);
        SendRefusal(stream, adxl::FAILED, "authentication failed: " + error, Deadline::AfterMs(200));
        stream.Shutdown();
        return false;
      }
      conn->stage = Connection::Stage::kAuthAnswer;
      return true;
    }
  } else if (!CheckAuthAnswer(stream, conn->hello, config_.auth_secret, conn->server_nonce, header, body, deadline,
                              &error)) {
    LOG_WARN("refused connection from %s (engine '%s'): authentication failed: %s", stream.PeerName().c_str(),
             conn->hello.engine_id.c_str(), error.c_str());
    CountRefusal(metrics::kAuth);
    SendRefusal(stream, adxl::FAILED, "authentication failed: " + error, Deadline::AfterMs(200));
    stream.Shutdown();
    return false;
  }
  ForgetPending(conn);
  return Admit(conn);
}

bool PeerServer::Admit(const ConnectionPtr &conn) {
  ByteStream &stream = *conn->stream;
  if (!AdmitHello(stream, &conn->hello, local_id_, Deadline::AfterMs(200))) return false;  // refused, logged
  if (stopping_.load()) {
    SendRefusal(stream, adxl::FAILED, "engine " + local_id_ + " is finalizing", Deadline::AfterMs(200));
    stream.Shutdown();
    return false;
  }
  switch (conn->hello.role) {
    case wire::ConnRole::kControl: return StartControl(conn);
    case wire::ConnRole::kDataLane: return StartDataLane(conn);
    case wire::ConnRole::kReverseLane: AttachReverseLane(conn); return false;  // served by the pool's requests
  }
  return false;
}

bool PeerServer::StartControl(const ConnectionPtr &conn) {
  const wire::Hello &hello = conn->hello;
  const std::shared_ptr<ByteStream> &stream = conn->stream;
  auto session = std::make_shared<Session>();
  session->id = RandomSessionId();
  session->client_id = hello.engine_id;
  session->control = stream;
  session->transports = hello.transports;
  // Read under mutex_ by Housekeeping: set before the session is published.
  session->lazy_reverse = (hello.capabilities & wire::kCapLazyReverseLanes) != 0;
  // Granted below whenever offered: both sides then hold their same-host writes.
  session->write_hold = (hello.capabilities & wire::kCapWriteHold) != 0;
  session->source_mappings = (hello.capabilities & wire::kCapSourceMappings) != 0;
  session->client_sources = std::make_unique<PeerMappings>(config_.same_host_map_max_bytes);
  // The client promises a heartbeat every interval once the previous one was
  // answered, which it awaits for at most its peer timeout: silence beyond
  // their sum (at least our own timeout, capped by our own maximum wait) ends
  // the session.
  session->silence_ms = config_.SessionSilenceMs(hello.peer_timeout_ms, hello.heartbeat_interval_ms);
  session->last_heard_ms.store(SteadyNowMs());
  // Verified before the session is published: lanes read it under mutex_ only.
  if (config_.SameHostAllowed() && hello.pid != 0) {
    std::string why;
    session->same_host = PeerProcess::Verify(IdentityOf(hello), *stream, &why);
    if (!session->same_host) LOG_INFO("same-host path to %s not available: %s", hello.engine_id.c_str(), why.c_str());
  }
  bool full = false;
  {
    std::lock_guard lock(mutex_);
    if (stopping_.load()) {
      stream->Shutdown();
      return false;
    }
    full = sessions_.size() >= config_.max_sessions;
    if (!full) sessions_[session->id] = session;
  }
  if (full) {
    const std::string why =
        std::to_string(config_.max_sessions) + " client engines are already connected (llmdd.MaxSessions)";
    CountRefusal(metrics::kCap);
    LogRefusalRateLimited(&refused_sessions_ms_, "refused a session of " + hello.engine_id + ": " + why);
    SendRefusal(*stream, adxl::RESOURCE_EXHAUSTED, "engine " + local_id_ + " is full: " + why, Deadline::AfterMs(200));
    stream->Shutdown();
    return false;
  }
  wire::HelloAck ack;
  // Granted only where the client offered it (SendHelloAck negotiates).
  ack.capabilities =
      wire::kCapReverseLanes | wire::kCapLazyReverseLanes | wire::kCapWriteHold | wire::kCapSourceMappings;
  if (app_handler_ != nullptr && *app_handler_) ack.capabilities |= wire::kCapAppMessages;
  if (notifies_ != nullptr) ack.capabilities |= wire::kCapNotify;  // granted at version >= 2 only (AdmitHello)
  ack.session_id = session->id;
  ack.engine_id = local_id_;
  ack.transports = transports_->Advertisement();
  ack.library_version = llmdd_ext::Version();  // for diagnostics (llmdd_doctor peer)
  if (session->same_host) {
    ack.capabilities |= wire::kCapSameHost;
    FillIdentity(&ack, *stream);  // only to a peer that passed the check (it would prove nothing to others anyway)
  }
  if (!SendHelloAck(*stream, hello, ack, Deadline::AfterMs(config_.handshake_timeout_ms))) {
    EndSession(session->id, "hello answer could not be sent");
    return false;
  }
  LOG_INFO("session %" PRIx64 " opened by %s (%s)", session->id, hello.engine_id.c_str(),
           stream->PeerName().c_str());
  conn->session = session;
  conn->stage = Connection::Stage::kControl;
  return true;
}

bool PeerServer::OnControlMessage(const ConnectionPtr &conn) {
  const std::shared_ptr<Session> &session = conn->session;
  ByteStream &stream = *conn->stream;
  const std::string &client = conn->hello.engine_id;
  for (;;) {
    std::string error;
    const char *why = nullptr;
    // The largest control body is a Notify's (each type's own bound is checked first, before any allocation).
    switch (conn->incoming.Feed(stream, /*with_body=*/true, wire::kMaxNotifyBody, &error)) {
      case IncomingMessage::State::kPartial: return true;
      case IncomingMessage::State::kClosed: why = "control connection closed"; break;
      case IncomingMessage::State::kInvalid:
        LOG_ERROR("protocol error on control connection from %s: %s", client.c_str(), error.c_str());
        SendRefusal(stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
        why = "protocol error";
        break;
      case IncomingMessage::State::kComplete: break;
    }
    if (why != nullptr) {
      EndSession(session->id, why);
      return false;
    }
    const wire::MsgHeader header = conn->incoming.Header();
    session->last_heard_ms.store(SteadyNowMs());
    if (header.type == static_cast<uint16_t>(MsgType::kNotify) && notifies_ != nullptr) {
      // Stored before the answer: once the sender's SendNotify returns
      // SUCCESS, GetNotifies here returns it.
      std::unique_lock write(session->control_write);
      const bool sent = ServeNotify(stream, header, conn->incoming.Body(), *notifies_, session->id, client,
                                    local_id_, Deadline::AfterMs(session->silence_ms));
      conn->incoming.Reset();
      if (sent) continue;
      write.unlock();
      EndSession(session->id, "control connection lost");
      return false;
    }
    conn->incoming.Reset();
    // A later revision's optional message (body read): the session stays. (A
    // Notify without an inbox is answered like one: UNSUPPORTED.)
    if (wire::IsIgnorable(header.type) || header.type == static_cast<uint16_t>(MsgType::kNotify)) {
      std::unique_lock write(session->control_write);
      if (AnswerIgnorable(stream, header, Deadline::AfterMs(session->silence_ms))) continue;
      write.unlock();
      EndSession(session->id, "control connection lost");
      return false;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kPing)) {
      std::unique_lock write(session->control_write);
      if (!SendControl(stream, MsgType::kPong, header.request_id, Deadline::AfterMs(session->silence_ms))) {
        write.unlock();
        EndSession(session->id, "control connection lost");
        return false;
      }
    } else if (header.type == static_cast<uint16_t>(MsgType::kGoodbye)) {
      // Lanes are shut down before the ack, so the client knows nothing of the
      // session is still being served once it reads the ack.
      EndSession(session->id, "client said goodbye", /*said_goodbye=*/true);
      {
        std::lock_guard write(session->control_write);
        SendControl(stream, MsgType::kGoodbyeAck, header.request_id, Deadline::AfterMs(1000));
      }
      stream.Shutdown();
      return false;
    } else {
      LOG_ERROR("unexpected %s on control connection from %s", wire::MsgTypeName(header.type), client.c_str());
      EndSession(session->id, "protocol error");
      return false;
    }
  }
}

bool PeerServer::StartDataLane(const ConnectionPtr &conn) {
  const wire::Hello &hello = conn->hello;
  const std::shared_ptr<ByteStream> &stream = conn->stream;
  std::shared_ptr<PeerProcess> same_host;
  std::shared_ptr<std::atomic<int>> busy;
  std::shared_ptr<std::atomic<uint64_t>> app_bytes;
  PeerMappings *client_sources = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(hello.session_id);
    if (it == sessions_.end() || it->second->ended || it->second->client_id != hello.engine_id) {
      LOG_WARN("data connection from %s names no live session", hello.engine_id.c_str());
      SendRefusal(*stream, adxl::NOT_CONNECTED, "no such session (reconnect)", Deadline::AfterMs(200));
      stream->Shutdown();
      return false;
    }
    if (it->second->lanes.size() >= config_.max_lanes_per_session) {
      const std::string why = "its session already has " + std::to_string(it->second->lanes.size()) +
                              " data lanes (llmdd.MaxLanesPerSession)";
      CountRefusal(metrics::kCap);
      LogRefusalRateLimited(&refused_lanes_ms_, "refused a data lane of " + hello.engine_id + ": " + why);
      SendRefusal(*stream, adxl::RESOURCE_EXHAUSTED, "engine " + local_id_ + " refused a data lane: " + why,
                  Deadline::AfterMs(200));
      stream->Shutdown();
      return false;
    }
    it->second->lanes.push_back(stream);
    same_host = it->second->same_host;
    busy = it->second->busy;
    app_bytes = it->second->app_bytes;
    client_sources = it->second->client_sources.get();  // lives with the session, which conn keeps
    conn->session = it->second;
  }
  same_host = SameHostForLane(same_host, hello, *stream);
  wire::HelloAck ack;
  ack.session_id = hello.session_id;
  ack.engine_id = local_id_;
  if (!SendHelloAck(*stream, hello, ack, Deadline::AfterMs(config_.handshake_timeout_ms))) {
    stream->Shutdown();
    return false;
  }
  ServeContext ctx;
  ctx.registry = registry_;
  ctx.app_handler = app_handler_;
  ctx.peer = hello.engine_id;
  ctx.session_id = hello.session_id;
  ctx.same_host = same_host;
  ctx.source_mappings = client_sources;
  ctx.stopping = &stopping_;
  ctx.busy = busy.get();
  ctx.max_wait_ms = config_.max_serve_wait_ms;
  ctx.max_lease_ms = config_.deregister_grace_ms;
  ctx.app_bytes = app_bytes.get();
  ctx.max_app_bytes = config_.max_peer_message_bytes;
  ctx.metrics = metrics_;
  // The counters live in the session, which the connection keeps alive.
  conn->lane = std::make_unique<LaneServer>(*stream, std::move(ctx));
  conn->stage = Connection::Stage::kLane;
  return true;
}

void PeerServer::AttachReverseLane(const ConnectionPtr &conn) {
  const wire::Hello &hello = conn->hello;
  const std::shared_ptr<ByteStream> &stream = conn->stream;
  std::shared_ptr<LanePool> pool;
  std::shared_ptr<Session> asked;  // a lane a lazy session's pool asked for
  bool first = false;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(hello.session_id);
    if (it == sessions_.end() || it->second->ended || it->second->client_id != hello.engine_id) {
      SendRefusal(*stream, adxl::NOT_CONNECTED, "no such session (reconnect)", Deadline::AfterMs(200));
      stream->Shutdown();
      return;
    }
    auto &session = it->second;
    if (!session->reverse) {
      LanePool::Reconnector opener;
      if (session->lazy_reverse) {
        // The client opens the lane: nothing of ours to shut down while we wait (at most wait_ms).
        opener = [weak = std::weak_ptr<Session>(session), wait_ms = config_.handshake_timeout_ms](
                     Deadline d, adxl::Status *status, std::string *why, const LanePool::Opening &) {
          return AskForReverseLane(weak, wait_ms, d, status, why);
        };
      }
      session->reverse = std::make_shared<LanePool>(session->client_id, workers_, std::move(opener));
      session->reverse->SetSplitRule(SplitRule{UsableCores(), config_.same_host_min_part_bytes});
      // The client verified it reaches our memory: it can serve same-host requests.
      const bool both_ways = (hello.capabilities & wire::kCapSameHost) != 0 && session->same_host &&
                             config_.SameHostAllowed();
      TransportPeer peer;
      peer.peer_name = session->client_id;
      peer.lanes = session->reverse.get();
      if (both_ways) peer.same_host = session->same_host;
      peer.write_hold = session->write_hold;
      peer.map_max_bytes = config_.same_host_map_max_bytes;
      peer.source_mappings = session->source_mappings;
      peer.metrics = metrics_;
      session->reverse->SetLinks(transports_->Connect(peer, session->transports, Deadline::AfterMs(200)));
      first = true;
    } else if (session->lazy_reverse) {
      asked = session;
    }
    pool = session->reverse;
    if (pool->SameHost() && !SameHostForLane(session->same_host, hello, *stream)) {
      SendRefusal(*stream, adxl::FAILED, "reverse lane not held by the session's process", Deadline::AfterMs(200));
      stream->Shutdown();
      return;
    }
  }
  wire::HelloAck ack;
  ack.session_id = hello.session_id;
  ack.engine_id = local_id_;
  if (asked) {
    // Lazy session: the pool's opener asked for this lane and waits for it.
    {
      std::lock_guard lock(asked->reverse_mutex);
      if (asked->reverse_closed || asked->reverse_arrivals.size() >= kMaxReverseArrivals) {
        SendRefusal(*stream, adxl::RESOURCE_EXHAUSTED, "reverse lane not asked for", Deadline::AfterMs(200));
        stream->Shutdown();
        return;
      }
    }
    if (!SendHelloAck(*stream, hello, ack, Deadline::AfterMs(config_.handshake_timeout_ms))) {
      stream->Shutdown();
      return;
    }
    std::lock_guard lock(asked->reverse_mutex);
    if (asked->reverse_closed) {
      stream->Shutdown();
      return;
    }
    asked->reverse_arrivals.push_back(stream);
    asked->reverse_arrived.notify_all();  // each opener takes one; the others wait on
    return;
  }
  // The lane is in the pool, and the pool published to the engine, before the
  // client hears the lane is accepted: once its Connect returns, requests from
  // this side find the pool. It is added reserved: nothing is sent on it
  // before its HelloAck.
  if (!pool->AddLane(stream, /*reserved=*/true)) {
    CountRefusal(metrics::kCap);
    SendRefusal(*stream, adxl::RESOURCE_EXHAUSTED, "too many reverse lanes for one session", Deadline::AfterMs(200));
    stream->Shutdown();
    return;
  }
  // A lazy session's client opened its first lane only: the others open when asked for.
  if (first && pool->CanReconnect()) pool->AddLazyLanes(kLazyReverseLanes - 1);
  if (first && callbacks_.on_reverse) callbacks_.on_reverse(hello.engine_id, hello.session_id, pool);
  if (!SendHelloAck(*stream, hello, ack, Deadline::AfterMs(config_.handshake_timeout_ms))) stream->Shutdown();
  pool->ReleaseReserved(stream);
}

std::shared_ptr<ByteStream> PeerServer::AskForReverseLane(const std::weak_ptr<Session> &weak, uint32_t wait_ms,
                                                          Deadline deadline, adxl::Status *status, std::string *why) {
  const std::shared_ptr<Session> session = weak.lock();
  if (!session) {
    *status = adxl::FAILED;
    *why = "the client's session ended";
    return nullptr;
  }
  const Deadline until = deadline.EarlierOf(Deadline::AfterMs(wait_ms));
  std::unique_lock lock(session->reverse_mutex);
  // Asks, and asks again each second while none arrives (a client that
  // dropped the request, e.g. at its cap while an idle lane was closing, is
  // asked once more; it opens no more than its cap either way).
  for (int asked = 0; session->reverse_arrivals.empty() && !session->reverse_closed && !until.Expired(); ++asked) {
    if (asked > 0)
      LOG_WARN("no reverse lane from %s %d s after asking for one: asking again", session->client_id.c_str(), asked);
    lock.unlock();
    bool sent = false;
    {
      std::lock_guard write(session->control_write);
      sent = SendControl(*session->control, MsgType::kReverseLaneWanted, 0, until.EarlierOf(Deadline::AfterMs(200)));
    }
    if (!sent) {
      *status = adxl::FAILED;
      *why = "cannot ask " + session->client_id + " for a reverse lane: its control connection is lost";
      return nullptr;
    }
    lock.lock();
    const Deadline round = until.EarlierOf(Deadline::AfterMs(1000));
    session->reverse_arrived.wait_until(lock, round.At(), [&] {
      return !session->reverse_arrivals.empty() || session->reverse_closed;
    });
  }
  if (!session->reverse_arrivals.empty()) {
    std::shared_ptr<ByteStream> lane = std::move(session->reverse_arrivals.front());
    session->reverse_arrivals.pop_front();
    return lane;
  }
  *status = session->reverse_closed ? adxl::FAILED : adxl::TIMEOUT;
  *why = session->reverse_closed ? "the client's session ended"
                                 : "client " + session->client_id + " did not open the reverse lane asked for within " +
                                       std::to_string(wait_ms) + " ms";
  return nullptr;
}

void PeerServer::Housekeeping() {
  const int64_t now = SteadyNowMs();
  std::vector<std::shared_ptr<Session>> silent;
  std::vector<std::shared_ptr<LanePool>> lazy_pools;
  {
    std::lock_guard lock(mutex_);
    for (auto &conn : pending_) {
      // Shut down: its handler sees the end, logs nothing more and forgets it.
      if (now >= conn->handshake_deadline_ms) {
        LOG_WARN("connection from %s did not finish its handshake within %u ms: closed",
                 conn->stream->PeerName().c_str(), config_.handshake_timeout_ms);
        conn->handshake_deadline_ms = INT64_MAX;
        conn->stream->Shutdown();
      }
    }
    for (auto &[id, session] : sessions_) {
      if (now - session->last_heard_ms.load() > session->silence_ms) silent.push_back(session);
      if (session->lazy_reverse && session->reverse) lazy_pools.push_back(session->reverse);
    }
  }
  // Reverse lanes of lazy sessions close when idle, as the client's forward lanes do; asked for again when needed.
  for (auto &pool : lazy_pools) pool->CloseIdle(std::chrono::milliseconds(config_.idle_lane_close_ms));
  for (auto &session : silent) {
    LOG_WARN("client %s silent for %u ms: dropping its session", session->client_id.c_str(), session->silence_ms);
    EndSession(session->id, "heartbeat timeout");
  }
}

void PeerServer::EndSession(uint64_t session_id, const char *why, bool said_goodbye, bool finalizing) {
  std::shared_ptr<Session> session;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end()) return;
    session = it->second;
    sessions_.erase(it);
    session->ended = true;
    for (auto &lane : session->lanes) lane->Shutdown();
  }
  if (finalizing) {
    // Tell the client this is an orderly end, not a crash (it logs it at info
    // level; docs/PROTOCOL.md). Skipped while another message is being written: a jammed
    // connection must not hold Finalize.
    std::unique_lock write(session->control_write, std::try_to_lock);
    if (write.owns_lock()) SendControl(*session->control, MsgType::kGoodbye, 0, Deadline::AfterMs(100));
  }
  if (!said_goodbye) session->control->Shutdown();
  {
    std::lock_guard lock(session->reverse_mutex);
    session->reverse_closed = true;
    for (auto &lane : session->reverse_arrivals) lane->Shutdown();
    session->reverse_arrivals.clear();
    session->reverse_arrived.notify_all();
  }
  if (session->reverse) session->reverse->ShutdownAll();
  // Requests already being served finish or abort promptly (lanes are shut
  // down, copies stop at their deadlines); wait for them, bounded, so nothing
  // of the session is served after this returns (Goodbye is acked after it).
  for (int i = 0; i < 2000 && session->busy->load() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (session->busy->load() > 0)
    LOG_WARN("session %" PRIx64 " of %s: a request is still being served after 2 s", session_id,
             session->client_id.c_str());
  LOG_INFO("session %" PRIx64 " of %s ended: %s", session_id, session->client_id.c_str(), why);
  if (callbacks_.on_session_end) callbacks_.on_session_end(session->client_id, session_id, said_goodbye);
}

}  // namespace llmdd
