// Channel: the client side of a connection to one remote engine (what ADXL's
// Connect creates). Owns the control connection (heartbeats, goodbye), the
// forward data lanes (a LanePool that reconnects broken lanes) and, when asked,
// reverse lanes that this side serves for the remote (LLM-DataDist links are
// bidirectional). It owns no thread: heartbeats are a timer, and the control
// connection's answers and the reverse lanes' requests are handled on the
// engine's event threads (engine/reactor.h).
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common/endpoint.h"
#include "engine/engine_config.h"
#include "engine/lane.h"
#include "engine/lane_pool.h"
#include "engine/incoming_message.h"
#include "engine/memory_registry.h"
#include "engine/reactor.h"
#include "engine/transports.h"
#include "transport/shm/peer_mappings.h"

namespace llmdd {

// What a channel's handshake learned about its server, for diagnostics
// (llmdd_ext::GetPeerInfo, llmdd_doctor): fixed once the channel is open.
struct PeerFacts {
  std::string library_version;       // the server's llmdd_ext::Version(); empty from an older server
  uint16_t protocol_version = 0;     // negotiated on the control connection
  uint32_t capabilities = 0;         // granted by the HelloAck (wire::kCap*)
  std::vector<std::string> offered;  // transports the server advertised in its HelloAck (tcp and shm never are)
  std::vector<std::string> links;    // the links this channel made, in the order the engine holds them
  bool same_host = false;            // the same-host path is verified both ways (forward lanes use it)
  std::string same_host_why_not;     // when not: why (our check of the server; "" when we never tried)
};

class Channel : public std::enable_shared_from_this<Channel> {
 public:
  struct Params {
    std::string local_id;
    std::string remote_id;
    Endpoint remote;
    EngineConfig config;
    uint32_t reverse_lanes = 0;  // lanes the remote may send requests on
    WorkerPool *workers = nullptr;
    Reactor *reactor = nullptr;
    MemoryRegistry *registry = nullptr;
    const AppHandler *app_handler = nullptr;
    EngineMetrics *metrics = nullptr;  // refused ranges on reverse lanes are counted here (may be null)
    const TransportSet *transports = nullptr;  // the links to the peer are made from these
  };

  // Performs the whole handshake within the deadline.
  static adxl::Status Open(const Params &params, Deadline deadline, std::shared_ptr<Channel> *out,
                           std::string *error);
  ~Channel();

  // Guards a transfer against Close(): Close waits for every live guard.
  class InFlight {
   public:
    explicit InFlight(Channel *c) : lock_(c->in_flight_) {}

   private:
    std::shared_lock<std::shared_mutex> lock_;
  };

  LanePool &Lanes() { return *lanes_; }
  bool SameHost() const { return lanes_ && lanes_->SameHost(); }
  // Set when the remote stopped answering heartbeats or the session was lost.
  bool Dead() const { return dead_.load(); }
  std::string DeadReason() const;
  const std::string &RemoteId() const { return params_.remote_id; }
  const PeerFacts &Facts() const { return facts_; }

  // Notifications (docs/API.md, "Notifications"): sends `notify` on the
  // control connection and waits for the server's NotifyAck until the
  // deadline. SUCCESS, or the server's refusal (RESOURCE_EXHAUSTED: the link
  // or the engine holds too many unconsumed notifies; PARAM_INVALID), or:
  // UNSUPPORTED (the server's handshake did not grant notifications: an
  // earlier revision), NOT_CONNECTED (the channel is closing), FAILED (the
  // control connection is lost or the peer dead), TIMEOUT (no answer in
  // time; the notify may still arrive). *error says why. Thread-safe; many
  // may wait at once.
  adxl::Status SendNotify(const wire::Notify &notify, Deadline deadline, std::string *error);
  bool NotifyGranted() const { return notify_granted_; }

  // Waits for in-flight transfers, says goodbye (best effort within the
  // deadline) and releases every connection. Idempotent.
  // say_goodbye=false (a forced unlink) tears down only this end: no message
  // is sent, the peer sees the connections close and keeps its own state.
  void Close(Deadline deadline, bool say_goodbye = true);
  // The first half of Close: waits for in-flight transfers and sends Goodbye
  // without waiting for the answer. Closing many channels, send every goodbye
  // first, then Close each under one deadline: the answers arrive in parallel.
  void SayGoodbye(Deadline deadline);

 private:
  explicit Channel(const Params &params)
      : params_(params),
        reverse_source_mappings_(std::make_unique<PeerMappings>(params.config.same_host_map_max_bytes)) {}
  // Timer: sends a Ping when none is outstanding; declares the peer dead when
  // the outstanding one went unanswered for the peer timeout.
  void Heartbeat();
  // The control connection is readable (Pong, GoodbyeAck, or its end).
  bool OnControlReadable();
  // Logged at error level, or at info level when the peer ended the session
  // in order (it finalized and said goodbye): nothing went wrong then.
  void MarkDead(const std::string &reason, bool orderly = false);
  std::shared_ptr<ByteStream> OpenLane(wire::ConnRole role, Deadline deadline, adxl::Status *status,
                                       std::string *error, const LanePool::Opening &opening = nullptr);
  // Opens one reverse lane and serves the remote's requests on it (event
  // threads); false with *status/*error when it cannot, or when the channel
  // is closing. A lane the remote closes (idle) is forgotten and its socket
  // closed.
  bool AddReverseLane(Deadline deadline, adxl::Status *status, std::string *error);
  // The remote asked for a reverse lane (ReverseLaneWanted): opened on the
  // worker pool, up to the channel's cap (reverse lanes and the express lane).
  void OnReverseLaneWanted();
  void ForgetReverseLane(const ByteStream *lane);

  Params params_;
  PeerFacts facts_;  // written by Open before the channel is shared
  uint64_t session_id_ = 0;
  std::shared_ptr<PeerProcess> server_process_;  // the server, when we verified we reach its memory
  std::shared_ptr<ByteStream> control_;
  // One control message written at a time. A notify waits for it at most
  // until its deadline (try_lock in a loop: TSan does not see the clocked
  // lock that std::timed_mutex uses, and holders keep it for one write).
  std::mutex control_mutex_;
  std::unique_ptr<LanePool> lanes_;
  // Reverse lanes being served, and their watches (same order). Lazy reverse
  // lanes (kCapLazyReverseLanes) come and go while the channel is open.
  std::mutex reverse_mutex_;
  std::vector<std::shared_ptr<ByteStream>> reverse_streams_;  // guarded by reverse_mutex_
  std::vector<uint64_t> reverse_watches_;                     // guarded by reverse_mutex_
  size_t reverse_opening_ = 0;   // asked-for lanes being opened (guarded by reverse_mutex_)
  bool reverse_closed_ = false;  // Close took the lanes: no more (guarded by reverse_mutex_)
  std::atomic<uint64_t> reverse_app_bytes_{0};  // app messages held for the server across reverse lanes
  // The server's shareable sources of same-host writes on reverse lanes, mapped (kCapSourceMappings).
  std::unique_ptr<PeerMappings> reverse_source_mappings_;
  std::atomic<bool> stopping_{false};
  uint64_t heartbeat_timer_ = 0;
  uint64_t idle_timer_ = 0;  // closes data lanes that sat idle
  uint64_t control_watch_ = 0;
  IncomingMessage control_incoming_;  // touched by the control watch's handler only
  uint64_t ping_sequence_ = 0;        // heartbeat timer only
  std::atomic<uint64_t> ping_outstanding_{0};      // sequence of the unanswered Ping, 0: none
  std::atomic<int64_t> ping_sent_ms_{0};           // when it was sent (steady clock)
  // Goodbye: sent once (SayGoodbye), answered (or the connection ended) as seen by the control handler.
  std::once_flag goodbye_sent_;
  bool goodbye_pending_ = false;  // guarded by wake_mutex_
  bool control_ended_ = false;    // guarded by wake_mutex_
  // Notifications: granted by the server's HelloAck (set once in Open); the
  // ones sent and not yet answered, by request id (guarded by wake_mutex_).
  bool notify_granted_ = false;
  std::atomic<uint64_t> notify_sequence_{0};
  struct PendingNotify {
    bool answered = false;
    adxl::Status status = adxl::FAILED;
    std::string reason;
  };
  std::map<uint64_t, PendingNotify> pending_notifies_;
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::atomic<bool> dead_{false};
  mutable std::mutex dead_mutex_;
  std::string dead_reason_;
  std::shared_mutex in_flight_;
  std::once_flag closed_;
};

}  // namespace llmdd
