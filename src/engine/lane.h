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
#include <tuple>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/deadline.h"
#include "engine/incoming_message.h"
#include "engine/memory_registry.h"
#include "engine/path_policy.h"
#include "engine/wire.h"
#include "transport/stream.h"
#include "transport/transport.h"

namespace llmdd {

class EngineMetrics;
class PeerMappings;  // transport/shm/peer_mappings.h

// Outcome of one request on the requester side. When `broken` is set the
// stream's framing is lost (timeout or error mid-message) and it must be dropped.
struct LaneResult {
  adxl::Status status = adxl::SUCCESS;
  bool broken = false;
  std::string error;  // why, for the caller's log line
};

// Sends one Read or Write request for `count` (<= wire::kMaxRangesPerRequest)
// segments and completes it: READ fills the local ranges, WRITE sends them
// (the TCP path: the bytes travel on the lane). The same-host path's requests
// are transport/shm/same_host_link.h.
LaneResult ExecuteTransfer(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                           uint64_t request_id, Deadline deadline);

// ---- For transports whose requests ride on lanes (transport/*/...) ----

// The engine's data connections to one peer, lent to transports
// (engine/lane_pool.h implements it). Thread-safe.
class LaneLender {
 public:
  // Runs one request on a lane: `io` gets the stream and a fresh request id.
  using LaneIo = std::function<LaneResult(ByteStream &stream, uint64_t request_id)>;
  // Runs a batch over lanes, `wire::kMaxRangesPerRequest` segments per request:
  // `io` gets the stream, the next chunk and a fresh request id. A lane whose
  // framing broke is dropped and the rest goes on another one. With a
  // `batch.request`, its I/O is announced to it (Cancel cuts it) and nothing
  // starts once it is canceled (status TransferRequest::kCanceledStatus).
  // `batch.total_bytes` decides whether the batch may take the express lane.
  using ChunkIo = std::function<LaneResult(ByteStream &stream, const Segment *segs, size_t count,
                                           uint64_t request_id, Deadline deadline)>;
  virtual ~LaneLender() = default;
  virtual LaneResult RunChunks(const TransferBatch &batch, const ChunkIo &io) = 0;
  // One request (a lease renewal) on behalf of `request` when not null: its
  // I/O is announced to it as in RunChunks, so that its Cancel (and with it
  // Disconnect and Finalize) cuts a renewal a frozen peer never answers.
  virtual LaneResult RunOnce(Deadline deadline, TransferRequest *request, const LaneIo &io) = 0;
  // Lanes it may have open at once (the parallelism a transfer can use).
  virtual size_t LaneCount() const = 0;
  virtual const std::string &PeerName() const = 0;
};

// The lane protocol's pieces, for transports that send their own requests.
// The value of a request's timeout field for `deadline` (>= 1 ms).
uint32_t TimeoutField(const Deadline &deadline);
// Fills *body with a Read/WriteRequest's body for `count` segments: the range
// header, then for a same-host request the requester's remaining time
// (wire::kSameHostRemainingSize) and, for a held write (hold_addr != 0), the
// hold (wire::kSameHostHoldSize), then an entry per segment: (remote, len),
// and for same-host also the requester's local address. Returns the total bytes.
uint64_t EncodeRangeBody(const Segment *segs, size_t count, Deadline deadline, bool same_host,
                         std::vector<uint8_t> *body, uint64_t hold_addr = 0, uint64_t hold_value = 0);
// A failed read or write on `stream` as a broken result naming `what`.
LaneResult IoFailure(IoStatus io, ByteStream &stream, const char *what);
// Reads the answer to request `request_id`: a header of type `expected` (or
// an Error about this request or the lane, id 0) and its body. SUCCESS with
// *body filled for `expected`; an Error becomes the peer's (sanitized) status
// with its text; anything else is a protocol error. Broken unless SUCCESS.
//
// With `ahead`, up to ahead->cap bytes past the header are taken in the same
// read (ByteStream::ReadAtLeast) where they have arrived: the body's are used
// for *body, what is left (the start of the payload) stays in ahead->rest.
// A TCP READ of at most this many bytes is read with its answer's header:
// one system call less per small READ, a copy of at most this.
constexpr size_t kReadAheadMaxBytes = 4096;
struct ReadAhead {
  uint8_t *room = nullptr;  // where bytes past the header go: at least min(cap, kReadAheadMaxBytes) bytes
  size_t cap = 0;           // at most this many (and kReadAheadMaxBytes); never more than the answer can hold
  const uint8_t *rest = nullptr;
  size_t rest_len = 0;  // bytes past the header and body, read already
};
LaneResult ReadAnswer(ByteStream &stream, wire::MsgType expected, uint64_t request_id, Deadline deadline,
                      wire::MsgHeader *header, std::string *body, ReadAhead *ahead = nullptr);
// The answer to a Read/WriteRequest: its status, and the refusal text as the error.
LaneResult ReadResponseHeader(ByteStream &stream, wire::MsgType expected, uint64_t request_id, Deadline deadline,
                              wire::MsgHeader *header, ReadAhead *ahead = nullptr);

// Per-thread scratch is kept between requests (small calls must not
// allocate), but never more than this: one maximal request must not leave
// megabytes behind on every thread that served or sent it.
constexpr size_t kKeepScratchBytes = 64 * 1024;

// Releases the given scratch vectors on scope exit when they grew beyond kKeepScratchBytes.
template <typename... Vectors>
class TrimOnExit {
 public:
  explicit TrimOnExit(Vectors &...vectors) : vectors_(vectors...) {}
  ~TrimOnExit() {
    std::apply([](auto &...v) { (Trim(v), ...); }, vectors_);
  }
  TrimOnExit(const TrimOnExit &) = delete;
  TrimOnExit &operator=(const TrimOnExit &) = delete;

 private:
  template <typename T>
  static void Trim(std::vector<T> &v) {
    if (v.capacity() * sizeof(T) > kKeepScratchBytes) std::vector<T>().swap(v);
  }
  std::tuple<Vectors &...> vectors_;
};

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
  // Same-host: where the requester's shareable WRITE sources are mapped, per
  // session (wire::kFlagSourceMappings); null: read with process_vm_readv.
  PeerMappings *source_mappings = nullptr;
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
  // Where refused ranges are counted (engine/metrics.h; null: not counted).
  EngineMetrics *metrics = nullptr;
};

// Serving-side pieces, for transports that serve requests arriving on lanes.
// How long a peer that started a message may take to send its body: ours, and
// never beyond this engine's own maximum wait.
Deadline AssemblyDeadline(const ServeContext &ctx);
// True once the requester shut the lane down or closed it (it does when it
// gives up on a request), or the lane was shut down here. Never blocks.
bool RequesterHungUp(const ByteStream &stream);
// Sends a response with optional text; false if the stream failed.
bool SendResponse(ByteStream &stream, wire::MsgType type, uint64_t request_id, adxl::Status status,
                  const std::string &text, Deadline deadline);

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
