// PeerServer: the serving side of an engine. Accepts connections on the
// listen address and serves them from the engine's event threads (a Reactor):
// nothing here owns a thread, so the engine's thread count does not depend on
// how many peers are connected, and the engine that is read from or written to
// makes no calls.
//
// Every accepted connection starts in its handshake (Hello, optionally
// authentication), assembled as it arrives: a peer that sends half a message
// holds a small buffer, not a thread, and is dropped at the handshake deadline.
// A client's control connection defines a session; its data lanes attach to
// the session by id and are served request by request (LaneServer); reverse
// lanes (where this side becomes the requester) are collected into a LanePool
// handed to the engine via a callback. A session ends on Goodbye, when the
// control connection drops, or when the client is silent for longer than its
// peer timeout; its lanes are then shut down.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "transport/shm/peer_mappings.h"

#include "common/endpoint.h"
#include "engine/engine_config.h"
#include "engine/incoming_message.h"
#include "engine/lane.h"
#include "engine/lane_pool.h"
#include "engine/memory_registry.h"
#include "engine/metrics.h"
#include "engine/notify_inbox.h"
#include "engine/reactor.h"
#include "engine/transports.h"
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

  // `notifies` (may be null: notifications are then not offered) receives
  // the clients' Notify messages; it must outlive the server.
  PeerServer(std::string local_id, MemoryRegistry *registry, WorkerPool *workers, Reactor *reactor,
             const AppHandler *app_handler, const TransportSet *transports, EngineConfig config, Callbacks callbacks,
             NotifyInbox *notifies = nullptr, EngineMetrics *metrics = nullptr);
  ~PeerServer();

  bool Start(const Endpoint &listen, std::string *error);
  // Stops accepting, ends every session, and returns once none of this
  // server's handlers runs any more. Idempotent.
  void Stop();
  int Port() const { return listener_.Port(); }
  size_t SessionCount() const;
  // Data lanes of every session (the lanes peers opened to us).
  size_t LaneCount() const;

 private:
  struct Session {
    uint64_t id = 0;
    std::string client_id;
    std::shared_ptr<ByteStream> control;
    std::vector<std::shared_ptr<ByteStream>> lanes;
    std::shared_ptr<LanePool> reverse;
    std::shared_ptr<PeerProcess> same_host;  // the client process, when we verified we reach its memory
    std::vector<wire::TransportAd> transports;  // what the client advertised (its reverse lanes' links use it)
    std::shared_ptr<std::atomic<int>> busy = std::make_shared<std::atomic<int>>(0);  // requests being served
    // Application-message bytes held for this client across its lanes (llmdd.MaxPeerMessageBytes).
    std::shared_ptr<std::atomic<uint64_t>> app_bytes = std::make_shared<std::atomic<uint64_t>>(0);
    // Messages the server starts on the control connection (ReverseLaneWanted,
    // from a requesting thread) and answers (Pong, from the control handler)
    // are written one at a time.
    std::mutex control_write;
    // kCapLazyReverseLanes granted: the reverse pool opens lanes by asking the
    // client; the lanes it opened wait in `reverse_arrivals` for the opener
    // that asked (at most kMaxReverseArrivals; unasked ones beyond are refused).
    bool lazy_reverse = false;
    // kCapWriteHold granted: same-host writes on the reverse lanes carry holds.
    bool write_hold = false;
    // kCapSourceMappings granted: the client's shareable write sources are
    // mapped here (its lanes' requests), and ours on reverse lanes may be.
    bool source_mappings = false;
    std::unique_ptr<PeerMappings> client_sources;
    std::mutex reverse_mutex;
    std::condition_variable reverse_arrived;
    std::deque<std::shared_ptr<ByteStream>> reverse_arrivals;
    bool reverse_closed = false;  // guarded by reverse_mutex: the session ended
    uint32_t silence_ms = 0;                   // silence on the control connection that ends the session
    std::atomic<int64_t> last_heard_ms{0};     // steady clock, ms: the last control message
    bool ended = false;
  };
  // One accepted connection, from its handshake to its end; its reactor
  // handler (OnReadable) runs on one thread at a time.
  struct Connection {
    enum class Stage { kHello, kAuthAnswer, kControl, kLane };
    std::shared_ptr<ByteStream> stream;
    Stage stage = Stage::kHello;
    IncomingMessage incoming;
    wire::Hello hello;
    std::string server_nonce;            // kAuthAnswer: the challenge we sent
    int64_t handshake_deadline_ms = 0;   // steady clock, ms
    uint64_t watch = 0;
    std::shared_ptr<Session> session;    // kControl
    std::unique_ptr<LaneServer> lane;    // kLane
  };
  using ConnectionPtr = std::shared_ptr<Connection>;

  // Listener readable: takes what is waiting (bounded per wake).
  bool OnAcceptable();
  void Adopt(std::shared_ptr<ByteStream> stream);
  // A connection is readable; false when it is done.
  bool OnReadable(const ConnectionPtr &conn);
  bool OnHandshakeMessage(const ConnectionPtr &conn);
  bool Admit(const ConnectionPtr &conn);
  bool StartControl(const ConnectionPtr &conn);
  bool OnControlMessage(const ConnectionPtr &conn);
  bool StartDataLane(const ConnectionPtr &conn);
  void AttachReverseLane(const ConnectionPtr &conn);
  // The reverse pool's opener for a lazy session: asks the client for a lane
  // and waits (bounded by the handshake timeout) for it to arrive.
  static std::shared_ptr<ByteStream> AskForReverseLane(const std::weak_ptr<Session> &weak, uint32_t wait_ms,
                                                       Deadline deadline, adxl::Status *status, std::string *why);
  // Ends a connection that is still in its handshake (not yet admitted).
  void ForgetPending(const ConnectionPtr &conn);
  // Timer: silent sessions and overdue handshakes.
  void Housekeeping();
  // Tells a new connection RESOURCE_EXHAUSTED (with why) and closes it; logged at most once a second per kind.
  void RefuseNewcomer(ByteStream &stream, std::atomic<int64_t> *last_logged_ms, const std::string &why);
  // said_goodbye: the client ended it (its control connection stays open for the ack).
  // said_goodbye: the client asked (its Goodbye is acked after this returns);
  // finalizing: this engine stops, and tells the client with a Goodbye first.
  void EndSession(uint64_t session_id, const char *why, bool said_goodbye = false, bool finalizing = false);

  std::string local_id_;
  MemoryRegistry *registry_;
  WorkerPool *workers_;
  Reactor *reactor_;
  const AppHandler *app_handler_;
  const TransportSet *transports_;
  EngineConfig config_;
  Callbacks callbacks_;
  NotifyInbox *notifies_;
  EngineMetrics *metrics_ = nullptr;  // refusals are counted here (may be null: tests)
  void CountRefusal(metrics::Refusal reason) {
    if (metrics_ != nullptr) metrics_->CountRefusal(reason);
  }
  TcpListener listener_;
  uint64_t listener_watch_ = 0;
  uint64_t housekeeping_timer_ = 0;
  std::atomic<bool> stopping_{false};
  bool started_ = false;

  mutable std::mutex mutex_;  // guards sessions_, pending_, watches_
  std::map<uint64_t, std::shared_ptr<Session>> sessions_;
  std::set<ConnectionPtr> pending_;  // connections still in their handshake
  std::set<uint64_t> watches_;       // this server's live watches (Stop waits them out)
  // When each kind of refusal was last logged (steady clock, ms).
  std::atomic<int64_t> refused_descriptors_ms_{0}, refused_handshakes_ms_{0}, refused_watches_ms_{0},
      refused_sessions_ms_{0}, refused_lanes_ms_{0};
};

}  // namespace llmdd
