// A lane is one connected ByteStream carrying data requests in one direction:
// the requester sends Read/Write/App requests, the server answers them.
//   - ExecuteTransfer / ExecuteAppCall run one request on the requester side.
//   - ServeLane loops on the serving side until the stream ends.
// Both directions of a link use this same code (forward lanes: the connector
// requests; reverse lanes: the acceptor requests).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/deadline.h"
#include "engine/incoming_message.h"
#include "engine/memory_registry.h"
#include "engine/path_policy.h"
#include "engine/wire.h"
#include "transport/shm/cma.h"
#include "transport/stream.h"

namespace llmdd {

struct Segment {
  uintptr_t local;
  uintptr_t remote;
  uint64_t len;
};

// Outcome of one request on the requester side. When `broken` is set the
// stream's framing is lost (timeout or error mid-message) and it must be dropped.
struct LaneResult {
  adxl::Status status = adxl::SUCCESS;
  bool broken = false;
  std::string error;  // why, for the caller's log line
};

// Sends one Read or Write request for `count` (<= wire::kMaxRangesPerRequest)
// segments and completes it: READ fills the local ranges, WRITE sends them.
// same_host != nullptr: the same-host path with that server process is
// available (both sides verified they reach each other's memory;
// docs/PROTOCOL.md) and is used where SameHostPays (engine/path_policy.h), while the process is
// still trusted.
LaneResult ExecuteTransfer(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                           uint64_t request_id, Deadline deadline, PeerProcess *same_host = nullptr);

// A standing read lease held by a same-host requester (wire::kLeaseGrant):
// until `expiry` (our clock, counted from before the request) it may copy out
// of the listed server regions with process_vm_readv, no message needed.
struct ReadLease {
  struct Region {
    uintptr_t addr;
    uint64_t len;
  };
  Deadline::Clock::time_point expiry{};
  std::vector<Region> regions;  // sorted by addr
  uint64_t max_len = 0;
  bool Covers(uintptr_t addr, uint64_t len) const;
};

// Asks the server (a same-host peer) for a standing read lease. UNSUPPORTED:
// it grants none (too many regions); the lane stays usable.
LaneResult ExecuteLeaseRequest(ByteStream &stream, uint64_t request_id, Deadline deadline, ReadLease *lease);

// Application messages (used by LLM-DataDist for cache tables and unlink).
// The handler gets the peer's engine id, the session the request arrived on
// (0 on lanes this side opened) and the request body, prefixed with the 4-byte
// app type; it returns a status and fills the response body.
using AppHandler = std::function<adxl::Status(const std::string &peer, uint64_t session_id,
                                              const std::string &request, std::string *response)>;

LaneResult ExecuteAppCall(ByteStream &stream, uint32_t app_type, const std::string &request, uint64_t request_id,
                          Deadline deadline, std::string *response);

struct ServeContext {
  MemoryRegistry *registry = nullptr;
  const AppHandler *app_handler = nullptr;  // may be null: app requests are then refused (lane closed)
  std::string peer;                         // peer engine id, for logs and the app handler
  uint64_t session_id = 0;                  // server-side session of the lane, 0 otherwise
  // The requester's process when verified for the same-host path on this
  // lane (it holds the lane and we reach its memory), else null.
  std::shared_ptr<PeerProcess> same_host;
  std::atomic<bool> *stopping = nullptr;
  std::atomic<int> *busy = nullptr;        // counts requests being served (session quiescence)
  // This engine's own limits, whatever the requester announces: the longest
  // one request is served (its timeout_ms is clamped to it), and the longest
  // same-host read lease (no longer than the deregistration grace, so a
  // deregistration that breaks a lane never cuts a lease short).
  uint32_t max_wait_ms = 60000;
  uint32_t max_lease_ms = 2000;
  // Bytes of application messages this peer has us hold at once (shared by
  // the lanes of its session; null: unlimited, for tests), and the budget.
  std::atomic<uint64_t> *app_bytes = nullptr;
  uint64_t max_app_bytes = 16ULL << 20;
};

// Checks a request header that arrived on a lane and serves the request
// (reading its body and payload, bounded by the request's deadline). False
// when the lane must end (protocol violation, I/O failure), after telling the
// peer why where it can.
bool ServeRequest(ByteStream &stream, const wire::MsgHeader &header, const ServeContext &ctx);

// A lane served from the event set (engine/reactor.h): OnReadable is called
// each time its connection is readable, never twice at once. It assembles the
// next request header from what arrived (a half-sent header holds no thread),
// serves the request, and goes on with the next one while it arrives within
// the read spin (at most kMaxRequestsPerWake, so other connections get their
// turn). Returns false when the lane has ended; the stream is then shut down.
// Never touches memory outside the registry's live regions.
class LaneServer {
 public:
  static constexpr int kMaxRequestsPerWake = 64;
  LaneServer(ByteStream &stream, ServeContext ctx) : stream_(stream), ctx_(std::move(ctx)) {}
  bool OnReadable();
  const ServeContext &Context() const { return ctx_; }

 private:
  bool ServeArrived();
  ByteStream &stream_;
  ServeContext ctx_;
  IncomingMessage next_;
};

// Serves a lane on the calling thread until the peer closes, a protocol
// violation occurs, or stream.Shutdown() is called from another thread (the
// same LaneServer, waiting in poll() instead of the event set; for tests and
// tools).
void ServeLane(ByteStream &stream, const ServeContext &ctx);

}  // namespace llmdd
