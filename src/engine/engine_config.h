// Engine tunables: parsed from the options map of Initialize. CANN's own keys
// are validated and accepted; the project's extension keys start with "llmdd.".
// Every key, default and meaning is listed in docs/API.md ("Options").
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "adxl/adxl_types.h"
#include "common/endpoint.h"

namespace llmdd {

// HIXL's GlobalResourceConfig "connect_pool.*": the threads and the queue of
// hixl::Hixl's ConnectAsync/DisconnectAsync tasks (engine/async_connects.h).
struct ConnectPoolConfig {
  uint32_t threads = 2;           // connect_pool.thread_num [1, 64]
  uint32_t queue_capacity = 128;  // connect_pool.task_queue_capacity [1, 65535]
};

// The channel pool (engine/channel_pool.h; docs/API.md, "Auto-connect and
// the channel pool"): GlobalResourceConfig "channel_pool.*", or AutoConnect
// alone (then with these defaults). When enabled, the channels this engine
// opens (Connect, and the transfers' auto-connects, which it turns on) take a
// slot each, idle ones are closed by the waterlines, and a connect that finds
// every slot busy waits for one until its timeout.
struct ChannelPoolConfig {
  bool enabled = false;
  uint32_t max_channel = 512;  // channel_pool.max_channel [1, 512]
  // channel_pool.high_waterline / low_waterline, both in (0, 1), both or
  // neither, (high - low) * max_channel >= 1. Without them an idle channel is
  // closed only to make room when max_channel are open.
  bool waterlines = false;
  double high_waterline = 0;
  double low_waterline = 0;
};

// llmdd.SameHostMinPartBytes's default: same-host parts of at least 2 MiB
// (two parts pay from 4 MiB on 2 cores, docs/PERFORMANCE.md; path_policy.h).
constexpr uint64_t kSameHostMinPartBytesDefault = 2ULL << 20;
// llmdd.UcxWorkers's defaults (docs/UCX.md, "Workers"): under
// llmdd.Transport=ucx, where the parts of a transfer move on different
// workers (measured: docs/PERFORMANCE.md "UCX workers"), and under auto,
// where transfers stay whole and a second worker is not measured (RDMA).
constexpr uint32_t kUcxWorkersForcedDefault = 2;
constexpr uint32_t kUcxWorkersAutoDefault = 1;
constexpr uint32_t kUcxWorkersMax = 8;

struct EngineConfig {
  uint32_t tcp_connections = 4;         // llmdd.TcpConnections: data lanes per peer [1, 64]
  uint32_t heartbeat_interval_ms = 1000; // llmdd.HeartbeatIntervalMs
  uint32_t peer_timeout_ms = 10000;     // llmdd.PeerTimeoutMs: silent peer -> dead
  uint32_t worker_threads = 8;          // llmdd.WorkerThreads: requester-side I/O threads (started when needed)
  // The engine's event threads (engine/reactor.h): they accept, handshake,
  // answer heartbeats and serve every peer's requests. One waits when idle;
  // more start while requests keep them all busy, up to this cap.
  uint32_t event_threads = 8;           // llmdd.EventThreads [1, 256]
  // Client side: data lanes open on first use and close after sitting idle
  // this long (reopened when needed), so an idle peer holds no data connection.
  uint32_t idle_lane_close_ms = 30000;  // llmdd.IdleLaneCloseMs [100, 86400000]
  uint32_t handshake_timeout_ms = 5000; // server side: a new connection must say Hello within this
  // llmdd.Transport: how data moves between engines on one host.
  enum class Transport { kAuto, kTcp, kSameHost, kUcx } transport = Transport::kAuto;
  // `auto` uses the same-host path wherever the handshake verifies it (the
  // peer process holds the other end of the connection and its memory is
  // reachable); `shm` requires it; `tcp` never uses it. `ucx` (built with
  // UCX only, docs/UCX.md) runs the UCX transport and requires it for every
  // peer; `auto` uses UCX only where the policy says it pays (below).
  bool SameHostAllowed() const { return transport != Transport::kTcp && transport != Transport::kUcx; }
  // llmdd.UcxUnderAuto (libraries built with UCX; docs/UCX.md): whether an
  // engine under llmdd.Transport=auto starts UCX. `rdma` (default): when the
  // host has an RDMA device (/sys/class/infiniband: InfiniBand, RoCE); `always`:
  // whenever built (hosts whose devices are named otherwise); `never`.
  // Either way a peer's link is made only when UCX reaches it with hardware
  // RMA and the peer runs UCX too; other peers stay on TCP / the same-host
  // path. `any`: start UCX and link every peer that runs it, whatever fabric
  // UCX picks (UCX_TLS), still after the same-host path and before TCP.
  enum class UcxUnderAuto { kRdma, kAlways, kAny, kNever } ucx_under_auto = UcxUnderAuto::kRdma;
  // llmdd.UcxWorkers [1, 8] (libraries built with UCX): UCX workers of the
  // engine wherever it runs UCX (UcxTransport::Create), on one UCP context
  // (registrations mapped once), each with its own progress thread and
  // staging; under llmdd.Transport=ucx a transfer the lane pool splits (1 MiB
  // and more) moves its parts on different workers at once, and concurrent
  // transfers spread over them (docs/UCX.md, "Workers"). 0: not set, the
  // mode's default (UcxWorkers()).
  uint32_t ucx_workers = 0;
  uint32_t UcxWorkers() const {
    if (ucx_workers != 0) return ucx_workers;
    return transport == Transport::kUcx ? kUcxWorkersForcedDefault : kUcxWorkersAutoDefault;
  }
  // llmdd.SameHostMinPartBytes [64 KiB, 1 TiB]: a same-host transfer is
  // split into parts of at least this many bytes, at most one per core and
  // per lane (path_policy.h, SameHostSplitParts); 1 TiB: never split.
  uint64_t same_host_min_part_bytes = kSameHostMinPartBytesDefault;
  // llmdd.SameHostMapMaxBytes [0, 1 PiB]: a same-host peer's shareable
  // memory (its MallocMem allocations, common/host_memory.h) is mapped
  // read-only here, up to this many bytes of address space per peer, and
  // READs of it under the standing lease are plain memcpy
  // (transport/shm/peer_mappings.h); 0: never mapped (process_vm_readv).
  uint64_t same_host_map_max_bytes = 1ULL << 40;
  // llmdd.BusyPollUs: spin-then-block of small reads [0, 10000] µs; process-wide,
  // applied only when given (-1: leave the current setting, 50 µs by default).
  int32_t busy_poll_us = -1;
  std::string auth_secret;              // llmdd.AuthSecret or $LLMDD_AUTH_SECRET (16..4096 bytes): mutual HMAC auth when set
  // Serving side: the longest it waits for, or works on, one peer request
  // (the peer's announced timeout is clamped to it), and the longest a silent
  // session is kept whatever the client announces.
  uint32_t max_serve_wait_ms = 60000;   // llmdd.MaxServeWaitMs [100, 86400000]
  // DeregisterMem / UnregisterKvCache / Finalize wait this long for requests
  // still using a region, then break the lanes that serve them and return.
  // Same-host read leases are never longer than this.
  uint32_t deregister_grace_ms = 2000;  // llmdd.DeregisterGraceMs [100, 600000]
  // Bytes of application messages (LLM-DataDist's link and cache-table
  // messages) one peer may have this engine hold at once; a larger message is
  // refused and its lane closed. Memory is allocated only as bytes arrive.
  uint64_t max_peer_message_bytes = 16ULL << 20;  // llmdd.MaxPeerMessageBytes [64 KiB, 64 MiB]
  // Serving side caps; over one, a newcomer is refused at once with
  // RESOURCE_EXHAUSTED (its Connect fails fast instead of timing out).
  uint32_t max_sessions = 1024;        // llmdd.MaxSessions [1, 1000000]: client engines connected at once
  uint32_t max_handshakes = 64;        // llmdd.MaxHandshakes [1, 65536]: connections that have not said Hello yet
  uint32_t max_lanes_per_session = 64; // llmdd.MaxLanesPerSession [1, 1024]: data lanes one client engine may open
  // Requester side: transfer requests in flight at once in this engine
  // (synchronous calls included); one more is refused at once with
  // RESOURCE_EXHAUSTED.
  uint32_t max_requests_in_flight = 1024;  // llmdd.MaxRequestsInFlight [1, 1000000]
  // An asynchronous transfer (TransferAsync) still running after this long
  // is ended with FAILED: CANN's has no timeout and never reports TIMEOUT,
  // but every request here ends, a frozen peer's included.
  uint32_t async_transfer_max_ms = 60000;  // llmdd.AsyncTransferMaxMs [100, 86400000]
  // Serving side: bytes of notifications (SendNotify) this engine holds
  // unconsumed, from all links together (names and messages plus 128 bytes
  // each); one more is refused with RESOURCE_EXHAUSTED. Each link holds at
  // most 4096 besides (CANN's limit). Kept across sessions until GetNotifies.
  uint64_t max_notify_bytes = 64ULL << 20;  // llmdd.MaxNotifyBytes [64 KiB, 4 GiB]
  // AutoConnect ("0"/"1"), or a channel pool in GlobalResourceConfig (which
  // turns it on): TransferSync, TransferAsync and SendNotify to a remote
  // without a channel open one (Engine::ChannelFor), and always through the
  // channel pool (channel_pool.enabled is set with it).
  bool auto_connect = false;
  ChannelPoolConfig channel_pool;
  ConnectPoolConfig connect_pool;  // read by hixl::Hixl only
  // llmdd.MetricsListen=ip:port (port 0: any free one): serve the engine's
  // metrics over HTTP there (engine/metrics_server.h; docs/METRICS.md). Off
  // unless given. The endpoint's connections and deadline are capped by the
  // two options after it.
  bool metrics_listen_set = false;
  Endpoint metrics_listen;
  uint32_t metrics_max_connections = 4;  // llmdd.MetricsMaxConnections [1, 64]: scrapes served at once
  uint32_t metrics_timeout_ms = 2000;    // llmdd.MetricsTimeoutMs [10, 60000]: to send a request / take the answer
  // Silence after which the server drops a client's session, from what its
  // Hello says: it pings every heartbeat interval once the previous Pong came
  // back, and waits for a Pong at most its peer timeout (then it gives up on
  // us itself), so a live client is never silent for longer than their sum.
  // Never less than our own peer timeout, never more than
  // max(peer_timeout_ms, max_serve_wait_ms).
  uint32_t SessionSilenceMs(uint32_t client_peer_timeout_ms, uint32_t client_heartbeat_interval_ms = 0) const;
};

// Keys (extension options).
constexpr const char kOptTcpConnections[] = "llmdd.TcpConnections";
constexpr const char kOptHeartbeatIntervalMs[] = "llmdd.HeartbeatIntervalMs";
constexpr const char kOptPeerTimeoutMs[] = "llmdd.PeerTimeoutMs";
constexpr const char kOptWorkerThreads[] = "llmdd.WorkerThreads";
constexpr const char kOptEventThreads[] = "llmdd.EventThreads";
constexpr const char kOptIdleLaneCloseMs[] = "llmdd.IdleLaneCloseMs";
constexpr const char kOptAuthSecret[] = "llmdd.AuthSecret";
constexpr const char kOptTransport[] = "llmdd.Transport";
constexpr const char kOptUcxUnderAuto[] = "llmdd.UcxUnderAuto";
constexpr const char kOptUcxWorkers[] = "llmdd.UcxWorkers";
constexpr const char kOptBusyPollUs[] = "llmdd.BusyPollUs";
constexpr const char kOptSameHostMinPartBytes[] = "llmdd.SameHostMinPartBytes";
constexpr const char kOptSameHostMapMaxBytes[] = "llmdd.SameHostMapMaxBytes";
constexpr const char kOptMaxServeWaitMs[] = "llmdd.MaxServeWaitMs";
constexpr const char kOptDeregisterGraceMs[] = "llmdd.DeregisterGraceMs";
constexpr const char kOptMaxPeerMessageBytes[] = "llmdd.MaxPeerMessageBytes";
constexpr const char kOptMaxSessions[] = "llmdd.MaxSessions";
constexpr const char kOptMaxHandshakes[] = "llmdd.MaxHandshakes";
constexpr const char kOptMaxLanesPerSession[] = "llmdd.MaxLanesPerSession";
constexpr const char kOptMaxRequestsInFlight[] = "llmdd.MaxRequestsInFlight";
constexpr const char kOptAsyncTransferMaxMs[] = "llmdd.AsyncTransferMaxMs";
constexpr const char kOptMaxNotifyBytes[] = "llmdd.MaxNotifyBytes";
constexpr const char kOptMetricsListen[] = "llmdd.MetricsListen";
constexpr const char kOptMetricsMaxConnections[] = "llmdd.MetricsMaxConnections";
constexpr const char kOptMetricsTimeoutMs[] = "llmdd.MetricsTimeoutMs";
// The metrics endpoint reads at most this much of a request (its line and
// headers; a scraper's GET takes a few hundred bytes): more is answered 431.
constexpr size_t kMetricsMaxRequestBytes = 8192;
// CANN's keys that both names (adxl's and hixl's) spell without a prefix.
constexpr const char kOptAutoConnect[] = "AutoConnect";
constexpr const char kOptGlobalResourceConfig[] = "GlobalResourceConfig";
constexpr const char kEnvAuthSecret[] = "LLMDD_AUTH_SECRET";
// Shared secret bounds. The handshake lets a rogue server at an address the
// client connects to collect one client proof per attempt, which it can test
// guesses against offline: the secret must be too long to guess, so shorter
// ones are refused (an empty option is refused too; an empty environment
// variable means "no secret").
constexpr size_t kMinAuthSecretBytes = 16;
constexpr size_t kMaxAuthSecretBytes = 4096;

// Reads HIXL's GlobalResourceConfig (one JSON object; values as strings or
// numbers): connect_pool.thread_num, connect_pool.task_queue_capacity and
// channel_pool.max_channel / high_waterline / low_waterline; any channel_pool
// member enables the pool. Other members (fabric memory, comm_resource_config)
// are left alone. False with *error naming the member and its allowed range
// when the text is not a JSON object or a value is out of range; the outputs
// are then unspecified.
bool ParseGlobalResourceConfig(const std::string &json, ConnectPoolConfig *connect_pool,
                               ChannelPoolConfig *channel_pool, std::string *error);

// Parses and validates; unknown keys are logged and ignored. Returns
// adxl::SUCCESS or adxl::PARAM_INVALID with *error naming the key and value.
adxl::Status ParseEngineOptions(const std::map<std::string, std::string> &options, EngineConfig *config,
                                std::string *error);

}  // namespace llmdd
