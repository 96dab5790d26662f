// PeerServer: the serving side of an engine. Accepts connections on the
// listen address and serves them from its own threads (one per connection), so
// the engine that is read from or written to makes no calls.
//
// A client's control connection defines a session; its data lanes attach to
// the session by id; reverse lanes (where this side becomes the requester) are
// collected into a LanePool handed to the engine via a callback. A session ends
// on Goodbye, when the control connection drops, or when the client is silent
// for longer than its peer timeout; its lanes are then shut down.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/endpoint.h"
#include "engine/engine_config.h"
#include "engine/lane.h"
#include "engine/lane_pool.h"
#include "engine/memory_registry.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {

class PeerServer {
 public:
  struct Callbacks {
    // A client opened reverse lanes: the engine may now send requests to it.
    std::function<void(const std::string &client_id, uint64_t session_id, std::shared_ptr<LanePool>)> on_reverse;
    // A session ended: said_goodbye when the client ended it with Goodbye,
    // false when it was dropped (connection lost, timeout, protocol error, stop).
    std::function<void(const std::string &client_id, uint64_t session_id, bool said_goodbye)> on_session_end;
  };

  PeerServer(std::string local_id, MemoryRegistry *registry, WorkerPool *workers, const AppHandler *app_handler,
             EngineConfig config, Callbacks callbacks);
  ~PeerServer();

  bool Start(const Endpoint &listen, std::string *error);
  // Stops accepting, ends every session, joins every thread. Idempotent.
  void Stop();
  int Port() const { return listener_.Port(); }
  size_t SessionCount() const;

 private:
  struct Session {
    uint64_t id = 0;
    std::string client_id;
    std::shared_ptr<ByteStream> control;
    std::vector<std::shared_ptr<ByteStream>> lanes;
    std::shared_ptr<LanePool> reverse;
    std::shared_ptr<PeerProcess> same_host;  // the client process, when we verified we reach its memory
    std::shared_ptr<std::atomic<int>> busy = std::make_shared<std::atomic<int>>(0);  // requests being served
    // Application-message bytes held for this client across its lanes (llmdd.MaxPeerMessageBytes).
    std::shared_ptr<std::atomic<uint64_t>> app_bytes = std::make_shared<std::atomic<uint64_t>>(0);
    bool ended = false;
  };
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };

  void AcceptLoop();
  void AcceptOne();
  // Tells a new connection RESOURCE_EXHAUSTED (with why) and closes it; logged at most once a second per kind.
  void RefuseNewcomer(ByteStream &stream, std::atomic<int64_t> *last_logged_ms, const std::string &why);
  void HandleConnection(std::shared_ptr<ByteStream> stream);
  void RunControl(std::shared_ptr<ByteStream> stream, const wire::Hello &hello);
  // The control connection's handshake answer and message loop; returns why
  // the session should end, or nullptr when it already did (goodbye).
  const char *ServeControl(const std::shared_ptr<Session> &session, const std::shared_ptr<ByteStream> &stream,
                           const wire::Hello &hello);
  void RunDataLane(std::shared_ptr<ByteStream> stream, const wire::Hello &hello);
  void AttachReverseLane(std::shared_ptr<ByteStream> stream, const wire::Hello &hello);
  // said_goodbye: the client ended it (its control connection stays open for the ack).
  void EndSession(uint64_t session_id, const char *why, bool said_goodbye = false);
  // Runs fn on a new connection thread; false when none can be started.
  bool Spawn(const char *name, std::function<void()> fn);
  void ReapFinished();

  std::string local_id_;
  MemoryRegistry *registry_;
  WorkerPool *workers_;
  const AppHandler *app_handler_;
  EngineConfig config_;
  Callbacks callbacks_;
  TcpListener listener_;
  std::thread accept_thread_;
  std::atomic<bool> stopping_{false};
  bool started_ = false;

  mutable std::mutex mutex_;  // guards sessions_, pending_, workers_list_
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;
  std::vector<std::shared_ptr<ByteStream>> pending_;  // connections still in handshake
  std::vector<Worker> threads_;
  // When each kind of refusal was last logged (steady clock, ms).
  std::atomic<int64_t> refused_descriptors_ms_{0}, refused_handshakes_ms_{0}, refused_threads_ms_{0},
      refused_sessions_ms_{0};
};

}  // namespace llmdd
