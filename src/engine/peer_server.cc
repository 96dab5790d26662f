#include "engine/peer_server.h"

#include <algorithm>
#include <cinttypes>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/hmac.h"
#include "common/log.h"
#include "common/threads.h"
#include "engine/handshake.h"
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
void LogRefusalRateLimited(std::atomic<int64_t> *last_ms, const std::string &what) {
  const int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
  int64_t said = last_ms->load();
  if (now_ms - said >= 1000 && last_ms->compare_exchange_strong(said, now_ms))
    LOG_WARN("%s (RESOURCE_EXHAUSTED; said at most once a second)", what.c_str());
}

}  // namespace

PeerServer::PeerServer(std::string local_id, MemoryRegistry *registry, WorkerPool *workers,
                       const AppHandler *app_handler, EngineConfig config, Callbacks callbacks)
    : local_id_(std::move(local_id)),
      registry_(registry),
      workers_(workers),
      app_handler_(app_handler),
      config_(config),
      callbacks_(std::move(callbacks)) {}

PeerServer::~PeerServer() { Stop(); }

bool PeerServer::Start(const Endpoint &listen, std::string *error) {
  if (!listener_.Listen(listen, error)) return false;
  if (!StartThread("accept loop", [this] { AcceptLoop(); }, &accept_thread_)) {
    listener_.Close();
    *error = "cannot start the accept thread (RESOURCE_EXHAUSTED)";
    return false;
  }
  started_ = true;
  LOG_INFO("engine %s listening on %s", local_id_.c_str(), listen.ToString().c_str());
  return true;
}

void PeerServer::Stop() {
  if (!started_ || stopping_.exchange(true)) return;
  listener_.Stop();
  if (accept_thread_.joinable()) accept_thread_.join();
  std::vector<uint64_t> ids;
  {
    std::lock_guard lock(mutex_);
    for (auto &[id, session] : sessions_) ids.push_back(id);
    for (auto &stream : pending_) stream->Shutdown();
  }
  for (uint64_t id : ids) EndSession(id, "engine is finalizing");
  std::vector<Worker> threads;
  {
    std::lock_guard lock(mutex_);
    threads.swap(threads_);
  }
  for (auto &w : threads) w.thread.join();
  listener_.Close();
}

size_t PeerServer::SessionCount() const {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}

bool PeerServer::Spawn(const char *name, std::function<void()> fn) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread thread;
  // `done` is set however fn ends (RunGuarded inside StartThread catches what it throws).
  if (!StartThread(name, [fn = std::move(fn), done] {
        RunGuarded("peer connection", fn);
        done->store(true);
      }, &thread))
    return false;
  std::lock_guard lock(mutex_);
  threads_.push_back({std::move(thread), done});
  return true;
}

void PeerServer::ReapFinished() {
  std::vector<Worker> finished;
  {
    std::lock_guard lock(mutex_);
    auto split = std::partition(threads_.begin(), threads_.end(), [](const Worker &w) { return !w.done->load(); });
    std::move(split, threads_.end(), std::back_inserter(finished));
    threads_.erase(split, threads_.end());
  }
  for (auto &w : finished) w.thread.join();
}

void PeerServer::AcceptLoop() {
  // One connection's trouble (an allocation that fails under a memory limit)
  // must not stop the loop that serves every other peer.
  while (!stopping_.load()) RunGuarded("accepting a connection", [this] { AcceptOne(); });
}

void PeerServer::AcceptOne() {
  bool out_of_descriptors = false;
  std::unique_ptr<TcpStream> accepted = listener_.Accept(Deadline::AfterMs(500), &out_of_descriptors);
  ReapFinished();
  if (!accepted) return;
  std::shared_ptr<ByteStream> stream = MaybeInjectFaults(std::shared_ptr<ByteStream>(std::move(accepted)));
  if (out_of_descriptors) {
    RefuseNewcomer(*stream, &refused_descriptors_ms_, "out of file descriptors");
    return;
  }
  bool too_many_handshakes = false;
  {
    std::lock_guard lock(mutex_);
    if (stopping_.load()) return;
    too_many_handshakes = pending_.size() >= config_.max_handshakes;
    if (!too_many_handshakes) pending_.push_back(stream);
  }
  if (too_many_handshakes) {
    RefuseNewcomer(*stream, &refused_handshakes_ms_,
                   std::to_string(config_.max_handshakes) + " connections are already in their handshake "
                   "(llmdd.MaxHandshakes)");
    return;
  }
  if (!Spawn("peer connection", [this, stream] { HandleConnection(stream); })) {
    // At the thread limit: refuse this connection, keep serving the others.
    {
      std::lock_guard lock(mutex_);
      pending_.erase(std::remove(pending_.begin(), pending_.end(), stream), pending_.end());
    }
    RefuseNewcomer(*stream, &refused_threads_ms_, "no thread to serve it");
  }
}

void PeerServer::RefuseNewcomer(ByteStream &stream, std::atomic<int64_t> *last_logged_ms, const std::string &why) {
  LogRefusalRateLimited(last_logged_ms, "refused a connection from " + stream.PeerName() + ": " + why);
  // The newcomer has sent nothing we must read: answer its Hello in advance and close.
  SendRefusal(stream, adxl::RESOURCE_EXHAUSTED, "engine " + local_id_ + " cannot take more connections now: " + why,
              Deadline::AfterMs(100));
  stream.Shutdown();
}

void PeerServer::HandleConnection(std::shared_ptr<ByteStream> stream) {
  wire::Hello hello;
  std::string error;
  bool ok = ReadHello(*stream, Deadline::AfterMs(config_.handshake_timeout_ms), &hello, &error);
  {
    std::lock_guard lock(mutex_);
    pending_.erase(std::remove(pending_.begin(), pending_.end(), stream), pending_.end());
  }
  if (!ok) {
    LOG_WARN("rejected connection from %s: %s", stream->PeerName().c_str(), error.c_str());
    SendRefusal(*stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
    stream->Shutdown();
    return;
  }
  if (ok && !config_.auth_secret.empty()) {
    ok = AuthenticateClient(*stream, hello, config_.auth_secret,
                            Deadline::AfterMs(config_.handshake_timeout_ms), &error);
    if (!ok) {
      LOG_WARN("refused connection from %s (engine '%s'): authentication failed: %s", stream->PeerName().c_str(),
               hello.engine_id.c_str(), error.c_str());
      SendRefusal(*stream, adxl::FAILED, "authentication failed: " + error, Deadline::AfterMs(200));
      stream->Shutdown();
      return;
    }
  }
  if (stopping_.load()) {
    SendRefusal(*stream, adxl::FAILED, "engine " + local_id_ + " is finalizing", Deadline::AfterMs(200));
    stream->Shutdown();
    return;
  }
  switch (hello.role) {
    case wire::ConnRole::kControl: RunControl(stream, hello); break;
    case wire::ConnRole::kDataLane: RunDataLane(stream, hello); break;
    case wire::ConnRole::kReverseLane: AttachReverseLane(stream, hello); break;
  }
}

void PeerServer::RunControl(std::shared_ptr<ByteStream> stream, const wire::Hello &hello) {
  auto session = std::make_shared<Session>();
  session->id = RandomSessionId();
  session->client_id = hello.engine_id;
  session->control = stream;
  // Verified before the session is published: lanes read it under mutex_ only.
  if (config_.SameHostAllowed() && hello.pid != 0) {
    std::string why;
    session->same_host = PeerProcess::Verify(IdentityOf(hello), *stream, &why);
    if (!session->same_host) LOG_INFO("same-host path to %s not available: %s", hello.engine_id.c_str(), why.c_str());
  }
  bool full = false;
  {
    std::lock_guard lock(mutex_);
    if (stopping_.load()) return;
    full = sessions_.size() >= config_.max_sessions;
    if (!full) sessions_[session->id] = session;
  }
  if (full) {
    const std::string why =
        std::to_string(config_.max_sessions) + " client engines are already connected (llmdd.MaxSessions)";
    LogRefusalRateLimited(&refused_sessions_ms_, "refused a session of " + hello.engine_id + ": " + why);
    SendRefusal(*stream, adxl::RESOURCE_EXHAUSTED, "engine " + local_id_ + " is full: " + why, Deadline::AfterMs(200));
    stream->Shutdown();
    return;
  }
  // However serving ends (an exception included), the session ends with it.
  const char *why = "internal error (see the log)";
  RunGuarded("serving a control connection", [&] { why = ServeControl(session, stream, hello); });
  if (why != nullptr) EndSession(session->id, why);
}

const char *PeerServer::ServeControl(const std::shared_ptr<Session> &session, const std::shared_ptr<ByteStream> &stream,
                                     const wire::Hello &hello) {
  wire::HelloAck ack;
  ack.capabilities = wire::kCapReverseLanes;
  if (app_handler_ != nullptr && *app_handler_) ack.capabilities |= wire::kCapAppMessages;
  ack.session_id = session->id;
  ack.engine_id = local_id_;
  if (session->same_host) {
    ack.capabilities |= wire::kCapSameHost;
    FillIdentity(&ack, *stream);  // only to a peer that passed the check (it would prove nothing to others anyway)
  }
  if (!SendHelloAck(*stream, ack, Deadline::AfterMs(config_.handshake_timeout_ms)))
    return "hello answer could not be sent";
  LOG_INFO("session %" PRIx64 " opened by %s (%s)", session->id, hello.engine_id.c_str(),
           stream->PeerName().c_str());
  // The client promises a heartbeat every interval; silence beyond its peer
  // timeout (or ours, whichever is larger, capped by our own maximum wait)
  // ends the session.
  const uint32_t silence_ms = config_.SessionSilenceMs(hello.peer_timeout_ms);
  const char *why = "control connection closed";
  for (;;) {
    wire::MsgHeader header;
    IoStatus io = IoStatus::kOk;
    std::string error;
    if (!ReadControl(*stream, Deadline::AfterMs(silence_ms), &header, &io, &error)) {
      if (io == IoStatus::kTimeout) {
        LOG_WARN("client %s silent for %u ms: dropping its session", hello.engine_id.c_str(), silence_ms);
        why = "heartbeat timeout";
      } else if (io == IoStatus::kOk) {
        LOG_ERROR("protocol error on control connection from %s: %s", hello.engine_id.c_str(), error.c_str());
        SendRefusal(*stream, adxl::PARAM_INVALID, error, Deadline::AfterMs(200));
        why = "protocol error";
      }
      break;
    }
    if (header.body_len != 0) {
      LOG_ERROR("control message %s from %s carries an unexpected body", wire::MsgTypeName(header.type),
                hello.engine_id.c_str());
      why = "protocol error";
      break;
    }
    if (header.type == static_cast<uint16_t>(MsgType::kPing)) {
      if (!SendControl(*stream, MsgType::kPong, header.request_id, Deadline::AfterMs(silence_ms))) break;
    } else if (header.type == static_cast<uint16_t>(MsgType::kGoodbye)) {
      // Lanes are shut down before the ack, so the client knows nothing of the
      // session is still being served once it reads the ack.
      EndSession(session->id, "client said goodbye", /*said_goodbye=*/true);
      SendControl(*stream, MsgType::kGoodbyeAck, header.request_id, Deadline::AfterMs(1000));
      stream->Shutdown();
      return nullptr;  // already ended
    } else {
      LOG_ERROR("unexpected %s on control connection from %s", wire::MsgTypeName(header.type),
                hello.engine_id.c_str());
      why = "protocol error";
      break;
    }
  }
  return why;
}

void PeerServer::RunDataLane(std::shared_ptr<ByteStream> stream, const wire::Hello &hello) {
  std::shared_ptr<PeerProcess> same_host;
  std::shared_ptr<std::atomic<int>> busy;
  std::shared_ptr<std::atomic<uint64_t>> app_bytes;
  {
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(hello.session_id);
    if (it == sessions_.end() || it->second->ended || it->second->client_id != hello.engine_id) {
      LOG_WARN("data connection from %s names no live session", hello.engine_id.c_str());
      SendRefusal(*stream, adxl::NOT_CONNECTED, "no such session (reconnect)", Deadline::AfterMs(200));
      stream->Shutdown();
      return;
    }
    if (it->second->lanes.size() >= LanePool::kMaxLanes) {
      LOG_WARN("data connection from %s refused: its session already has %zu lanes", hello.engine_id.c_str(),
               it->second->lanes.size());
      SendRefusal(*stream, adxl::FAILED, "too many lanes for one session", Deadline::AfterMs(200));
      stream->Shutdown();
      return;
    }
    it->second->lanes.push_back(stream);
    same_host = it->second->same_host;
    busy = it->second->busy;
    app_bytes = it->second->app_bytes;
  }
  RunGuarded("serving a data lane", [&] {
    same_host = SameHostForLane(same_host, hello, *stream);
    wire::HelloAck ack;
    ack.session_id = hello.session_id;
    ack.engine_id = local_id_;
    if (!SendHelloAck(*stream, ack, Deadline::AfterMs(config_.handshake_timeout_ms))) return;
    ServeContext ctx;
    ctx.registry = registry_;
    ctx.app_handler = app_handler_;
    ctx.peer = hello.engine_id;
    ctx.session_id = hello.session_id;
    ctx.same_host = same_host;
    ctx.stopping = &stopping_;
    ctx.busy = busy.get();
    ctx.max_wait_ms = config_.max_serve_wait_ms;
    ctx.max_lease_ms = config_.deregister_grace_ms;
    ctx.app_bytes = app_bytes.get();
    ctx.max_app_bytes = config_.max_peer_message_bytes;
    ServeLane(*stream, ctx);
  });
  stream->Shutdown();
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(hello.session_id);
  if (it != sessions_.end()) {
    auto &lanes = it->second->lanes;
    lanes.erase(std::remove(lanes.begin(), lanes.end(), stream), lanes.end());
  }
}

void PeerServer::AttachReverseLane(std::shared_ptr<ByteStream> stream, const wire::Hello &hello) {
  std::shared_ptr<LanePool> pool;
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
      session->reverse = std::make_shared<LanePool>(session->client_id, workers_, nullptr);
      // The client verified it reaches our memory: it can serve same-host requests.
      const bool both_ways = (hello.capabilities & wire::kCapSameHost) != 0 && session->same_host &&
                             config_.SameHostAllowed();
      session->reverse->SetSameHost(both_ways ? session->same_host : nullptr);
      first = true;
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
  if (!SendHelloAck(*stream, ack, Deadline::AfterMs(config_.handshake_timeout_ms)) || !pool->AddLane(stream)) {
    stream->Shutdown();
    return;
  }
  if (first && callbacks_.on_reverse) callbacks_.on_reverse(hello.engine_id, hello.session_id, pool);
}

void PeerServer::EndSession(uint64_t session_id, const char *why, bool said_goodbye) {
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
  if (!said_goodbye) session->control->Shutdown();
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
