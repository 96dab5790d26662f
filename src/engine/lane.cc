#include "engine/lane.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstring>
#include <tuple>
#include <vector>

#include <poll.h>

#include <cerrno>

#include "common/log.h"
#include "common/threads.h"
#include "engine/handshake.h"
#include "engine/metrics.h"
#include "transport/shm/cma.h"
#include "transport/shm/same_host_serve.h"

namespace llmdd {
namespace {

using wire::MsgHeader;
using wire::MsgType;

// The serving side gives a request this long beyond the requester's own
// timeout before abandoning it (the requester has given up by then).
constexpr int64_t kServeGraceMs = 1000;
// A peer that started a message must finish sending its body within this.
constexpr int64_t kBodyAssemblyMs = 30000;
constexpr size_t kDiscardChunk = 256 * 1024;

std::string HexRange(uint64_t addr, uint64_t len) {
  char buf[96];
  snprintf(buf, sizeof(buf), "[0x%" PRIx64 ", +%" PRIu64 ")", addr, len);
  return buf;
}

// Reads a body of `len` bytes into *out (appended), allocating only as the
// bytes arrive: a length a peer announced is not a reason to allocate it.
template <typename Bytes>
IoStatus ReadBodyAsItArrives(ByteStream &stream, uint64_t len, Deadline deadline, Bytes *out) {
  constexpr uint64_t kChunk = 64 * 1024;
  while (len > 0) {
    const size_t n = static_cast<size_t>(std::min(len, kChunk));
    const size_t at = out->size();
    out->resize(at + n);
    IoStatus io = stream.Read(out->data() + at, n, deadline);
    if (io != IoStatus::kOk) return io;
    len -= n;
  }
  return IoStatus::kOk;
}

}  // namespace

// How long a peer that started a message may take to send its body: ours, and
// never beyond this engine's own maximum wait.
Deadline AssemblyDeadline(const ServeContext &ctx) {
  return Deadline::AfterMs(std::min<int64_t>(kBodyAssemblyMs, int64_t{ctx.max_wait_ms} + kServeGraceMs));
}

uint32_t TimeoutField(const Deadline &deadline) {
  int64_t ms = deadline.RemainingMs();
  if (ms < 1) ms = 1;
  if (ms > UINT32_MAX) ms = UINT32_MAX;
  return static_cast<uint32_t>(ms);
}

namespace {

// A same-host request's time (wire::kSameHostRemainingSize): what is left of
// the caller's, less the margin for the request's way to the server (at most a
// quarter of it), so the server's count, started when it reads the request,
// normally ends before ours.
uint64_t SameHostRemainingNs(const Deadline &deadline) {
  if (deadline.IsNever()) return wire::kMaxSameHostRemainingNs;
  const int64_t left =
      std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.At() - Deadline::Clock::now()).count();
  if (left <= 0) return 0;
  const uint64_t ns = std::min<uint64_t>(static_cast<uint64_t>(left), wire::kMaxSameHostRemainingNs);
  return ns - std::min<uint64_t>(wire::kSameHostMarginNs, ns / 4);
}

}  // namespace

uint64_t EncodeRangeBody(const Segment *segs, size_t count, Deadline deadline, bool same_host,
                         std::vector<uint8_t> *body, uint64_t hold_addr, uint64_t hold_value) {
  const bool held = same_host && hold_addr != 0;
  const uint64_t entries_at = wire::kRangeBodyHeader + (same_host ? wire::kSameHostRemainingSize : 0) +
                              (held ? wire::kSameHostHoldSize : 0);
  const uint64_t entry_size = same_host ? wire::kSameHostEntrySize : wire::kRangeEntrySize;
  body->resize(entries_at + entry_size * count);
  uint8_t *out = body->data();
  if (same_host) wire::PutU64(out + wire::kRangeBodyHeader, SameHostRemainingNs(deadline));
  if (held) {
    uint8_t *hold = out + wire::kRangeBodyHeader + wire::kSameHostRemainingSize;
    wire::PutU64(hold, hold_addr);
    wire::PutU64(hold + 8, hold_value);
  }
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) {
    uint8_t *entry = out + entries_at + i * entry_size;
    wire::PutU64(entry, segs[i].remote);
    wire::PutU64(entry + 8, segs[i].len);
    if (same_host) wire::PutU64(entry + 16, segs[i].local);
    total += segs[i].len;
  }
  wire::EncodeRangeHeader(static_cast<uint32_t>(count), TimeoutField(deadline), total, out);
  return total;
}

LaneResult IoFailure(IoStatus io, ByteStream &stream, const char *what) {
  LaneResult result;
  result.broken = true;
  result.status = io == IoStatus::kTimeout ? adxl::TIMEOUT : adxl::FAILED;
  result.error = std::string(what) + " " + stream.PeerName() + ": " + IoStatusName(io);
  if (io == IoStatus::kError) result.error += std::string(" (") + strerror(stream.LastErrno()) + ")";
  return result;
}

// Reads the answer to request `request_id`: a header of type `expected` (or
// an Error about this request or the lane, id 0) and its body. SUCCESS with
// *body filled for `expected`; an Error becomes the peer's (sanitized) status
// with its text; anything else is a protocol error. Broken unless SUCCESS.
LaneResult ReadAnswer(ByteStream &stream, MsgType expected, uint64_t request_id, Deadline deadline, MsgHeader *header,
                      std::string *body, ReadAhead *ahead) {
  IoStatus io;
  size_t past_header = 0;
  if (ahead == nullptr || ahead->cap == 0) {
    io = stream.Read(header, sizeof(*header), deadline);
  } else {
    // Header and room contiguous, for one read; the header is copied out.
    alignas(8) uint8_t first[sizeof(MsgHeader) + kReadAheadMaxBytes];
    const size_t cap = std::min(ahead->cap, kReadAheadMaxBytes);
    size_t got = 0;
    io = stream.ReadAtLeast(first, sizeof(*header), sizeof(*header) + cap, deadline, &got);
    if (io == IoStatus::kOk) {
      memcpy(header, first, sizeof(*header));
      past_header = got - sizeof(*header);
      memcpy(ahead->room, first + sizeof(*header), past_header);
    }
  }
  if (io != IoStatus::kOk) return IoFailure(io, stream, "waiting for an answer from");
  LaneResult result;
  const bool is_error = header->type == static_cast<uint16_t>(MsgType::kError);
  std::string bad = wire::CheckHeader(*header, stream.ProtocolVersion());
  if (bad.empty() && header->type != static_cast<uint16_t>(expected) && !is_error)
    bad = std::string("unexpected ") + wire::MsgTypeName(header->type);
  if (bad.empty() && header->request_id != request_id && !(is_error && header->request_id == 0))
    bad = "answer for another request";
  if (!bad.empty()) {
    result.status = adxl::FAILED;
    result.broken = true;
    result.error = "protocol error from " + stream.PeerName() + ": " + bad;
    return result;
  }
  body->clear();
  // The body's bytes that came with the header, then the rest as it arrives.
  const uint64_t body_ahead = std::min<uint64_t>(past_header, header->body_len);
  if (body_ahead > 0) body->assign(reinterpret_cast<const char *>(ahead->room), static_cast<size_t>(body_ahead));
  if (ahead != nullptr) {
    ahead->rest = ahead->room + body_ahead;
    ahead->rest_len = past_header - static_cast<size_t>(body_ahead);
  }
  io = ReadBodyAsItArrives(stream, header->body_len - body_ahead, deadline, body);
  if (io != IoStatus::kOk) return IoFailure(io, stream, "reading an answer from");
  if (is_error) {
    result.status = header->status != adxl::SUCCESS ? wire::SanitizePeerStatus(header->status) : adxl::FAILED;
    result.broken = true;
    result.error = "peer " + stream.PeerName() + " reported: " + *body;
    body->clear();
  }
  return result;
}

// The answer to a Read/WriteRequest: its status, and the refusal text as the error.
LaneResult ReadResponseHeader(ByteStream &stream, MsgType expected, uint64_t request_id, Deadline deadline,
                              MsgHeader *header, ReadAhead *ahead) {
  std::string text;
  LaneResult result = ReadAnswer(stream, expected, request_id, deadline, header, &text, ahead);
  if (result.status != adxl::SUCCESS || result.broken) return result;
  result.status = wire::SanitizePeerStatus(header->status);
  if (result.status != header->status) result.broken = true;  // a peer that invents codes is not trusted further
  if (result.status != adxl::SUCCESS) {
    result.error = "peer " + stream.PeerName() + " refused: " + text;
    // A refusal has no data; a payload behind it would desynchronise the lane.
    if (header->payload_len != 0) result.broken = true;
  }
  return result;
}

LaneResult ExecuteTransfer(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                           uint64_t request_id, Deadline deadline) {
  const bool is_read = op == adxl::READ;
  thread_local std::vector<uint8_t> body;
  thread_local std::vector<iovec> iov;
  TrimOnExit trim(body, iov);
  const uint64_t total = EncodeRangeBody(segs, count, deadline, /*same_host=*/false, &body);

  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(is_read ? MsgType::kReadRequest : MsgType::kWriteRequest);
  header.request_id = request_id;
  header.body_len = body.size();
  header.payload_len = is_read ? 0 : total;

  // Local side of the data: destination iovecs for READ, source iovecs for WRITE.
  iov.clear();
  iov.reserve(count + 2);
  if (!is_read) {
    iov.push_back({&header, sizeof(header)});
    iov.push_back({body.data(), body.size()});
  }
  for (size_t i = 0; i < count; ++i) iov.push_back({reinterpret_cast<void *>(segs[i].local), segs[i].len});

  if (is_read) {
    iovec request[2] = {{&header, sizeof(header)}, {body.data(), body.size()}};
    IoStatus io = stream.WriteFull(request, 2, deadline);
    if (io != IoStatus::kOk) return IoFailure(io, stream, "sending read request to");
    MsgHeader response;
    // A small READ's bytes mostly come with the answer's header: one read
    // takes both (the answer holds at least `total` bytes past its header
    // when it succeeds; when it does not, the lane ends or has no more).
    uint8_t room[kReadAheadMaxBytes];
    ReadAhead ahead;
    ahead.room = room;
    ahead.cap = total <= kReadAheadMaxBytes ? static_cast<size_t>(total) : 0;
    LaneResult result = ReadResponseHeader(stream, MsgType::kReadResponse, request_id, deadline, &response, &ahead);
    if (result.status != adxl::SUCCESS || result.broken) return result;
    if (response.payload_len != total) {
      result.status = adxl::FAILED;
      result.broken = true;
      result.error = "peer " + stream.PeerName() + " answered " + std::to_string(response.payload_len) +
                     " bytes for a read of " + std::to_string(total);
      return result;
    }
    // The payload's first bytes, read with the header, then the rest in place.
    size_t first = 0;
    while (ahead.rest_len > 0 && first < iov.size()) {
      const size_t n = std::min(ahead.rest_len, iov[first].iov_len);
      memcpy(iov[first].iov_base, ahead.rest, n);
      ahead.rest += n;
      ahead.rest_len -= n;
      iov[first].iov_base = static_cast<uint8_t *>(iov[first].iov_base) + n;
      iov[first].iov_len -= n;
      if (iov[first].iov_len == 0) ++first;
    }
    if (first < iov.size()) {
      io = stream.ReadFull(iov.data() + first, static_cast<int>(iov.size() - first), deadline);
      if (io != IoStatus::kOk) return IoFailure(io, stream, "receiving read data from");
    }
    return result;
  }

  IoStatus io = stream.WriteFull(iov.data(), static_cast<int>(iov.size()), deadline);
  if (io != IoStatus::kOk) return IoFailure(io, stream, "sending write data to");
  MsgHeader response;
  return ReadResponseHeader(stream, MsgType::kWriteResponse, request_id, deadline, &response);
}

LaneResult ExecuteAppCall(ByteStream &stream, uint32_t app_type, const std::string &request, uint64_t request_id,
                          Deadline deadline, std::string *response) {
  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(MsgType::kAppRequest);
  header.flags = app_type;
  header.request_id = request_id;
  header.body_len = request.size();
  iovec out[2] = {{&header, sizeof(header)}, {const_cast<char *>(request.data()), request.size()}};
  IoStatus io = stream.WriteFull(out, 2, deadline);
  if (io != IoStatus::kOk) return IoFailure(io, stream, "sending request to");
  MsgHeader reply;
  LaneResult result = ReadAnswer(stream, MsgType::kAppResponse, request_id, deadline, &reply, response);
  if (result.status != adxl::SUCCESS || result.broken) return result;
  result.status = reply.status;  // the app layer's own code space: it checks what it accepts
  return result;
}

// True once the requester shut the lane down or closed it (it does when it
// gives up on a request), or the lane was shut down here. Never blocks.
bool RequesterHungUp(const ByteStream &stream) {
  const int fd = stream.NativeHandle();
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

// Sends a response with optional text; false if the stream failed.
bool SendResponse(ByteStream &stream, MsgType type, uint64_t request_id, adxl::Status status,
                  const std::string &text, Deadline deadline) {
  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(type);
  header.request_id = request_id;
  header.status = status;
  std::string clipped = text.substr(0, wire::kMaxErrorText);
  header.body_len = clipped.size();
  iovec out[2] = {{&header, sizeof(header)}, {clipped.data(), clipped.size()}};
  return stream.WriteFull(out, 2, deadline) == IoStatus::kOk;
}

namespace {

// `request_id` is 0 when the message that broke the lane could not be read as a request.
void SendProtocolError(ByteStream &stream, uint64_t request_id, const std::string &reason,
                       adxl::Status status = adxl::PARAM_INVALID) {
  SendResponse(stream, MsgType::kError, request_id, status, reason, Deadline::AfterMs(200));
}

bool DiscardPayload(ByteStream &stream, uint64_t len, Deadline deadline) {
  // Per call, not per thread: refusals with a payload are rare, and a sink
  // kept on every serving thread would cost memory for nothing.
  std::vector<char> sink(static_cast<size_t>(std::min<uint64_t>(len, kDiscardChunk)));
  while (len > 0) {
    size_t n = len < sink.size() ? static_cast<size_t>(len) : sink.size();
    if (stream.Read(sink.data(), n, deadline) != IoStatus::kOk) return false;
    len -= n;
  }
  return true;
}

// Serves one Read/Write request whose header has been read. False ends the lane.
bool ServeTransfer(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx) {
  const auto received_at = Deadline::Clock::now();  // the header was just read: same-host time counts from here
  const bool is_read = header.type == static_cast<uint16_t>(MsgType::kReadRequest);
  Deadline assembly = AssemblyDeadline(ctx);
  if (header.body_len < wire::kRangeBodyHeader) {
    SendProtocolError(stream, header.request_id, "range list too short");
    return false;
  }
  const bool same_host = (header.flags & wire::kFlagSameHost) != 0;
  const bool held = (header.flags & wire::kFlagWriteHold) != 0;
  const bool sourced = (header.flags & wire::kFlagSourceMappings) != 0;
  const uint64_t entry_size = same_host ? wire::kSameHostEntrySize : wire::kRangeEntrySize;
  thread_local std::vector<uint8_t> body;
  thread_local std::vector<iovec> iov, peer_iov;  // peer_iov: same-host, the requester's local ranges
  TrimOnExit trim(body, iov, peer_iov);
  body.clear();
  if (ReadBodyAsItArrives(stream, header.body_len, assembly, &body) != IoStatus::kOk) return false;
  uint32_t count = 0, timeout_ms = 0;
  uint64_t total = 0;
  std::string bad = held && (!same_host || is_read)
                        ? "a write hold on a request that is not a same-host write"
                    : sourced && (!same_host || is_read)
                        ? "source mappings on a request that is not a same-host write"
                        : wire::DecodeRangeHeader(body.data(), header.body_len, &count, &timeout_ms, &total,
                                                  entry_size, held, sourced);
  thread_local std::vector<wire::SourceMapping> sources;
  sources.clear();
  if (bad.empty() && sourced &&
      !wire::DecodeSourceMappings(body.data(), header.body_len,
                                  wire::kRangeBodyHeader + wire::kSameHostRemainingSize +
                                      (held ? wire::kSameHostHoldSize : 0) + entry_size * count,
                                  &sources))
    bad = "malformed source mappings";
  if (bad.empty() && same_host && ctx.same_host == nullptr)
    bad = "same-host request on a connection whose peer was not verified for it";
  if (!bad.empty()) {
    LOG_ERROR("peer %s sent a malformed request: %s", ctx.peer.c_str(), bad.c_str());
    SendProtocolError(stream, header.request_id, bad);
    return false;
  }
  if (!is_read && !same_host && header.payload_len != total) {
    LOG_ERROR("peer %s: write payload %" PRIu64 " != declared total %" PRIu64, ctx.peer.c_str(),
              header.payload_len, total);
    SendProtocolError(stream, header.request_id, "write payload length does not match the range list");
    return false;
  }
  // The requester's timeout, but never beyond our own limit: a peer must not
  // choose how long we hold its regions pinned.
  const uint32_t serve_ms = std::min(timeout_ms, ctx.max_wait_ms);
  Deadline deadline = Deadline::AfterMs(static_cast<int64_t>(serve_ms) + kServeGraceMs);
  if (same_host && !SameHostTrustHolds(ctx, is_read ? "read" : "write")) {
    // A same-host request carries no payload, so the lane stays in step.
    return SendResponse(stream, is_read ? MsgType::kReadResponse : MsgType::kWriteResponse, header.request_id,
                        adxl::FAILED, "same-host trust ended: the verified peer process is gone", deadline);
  }
  const uint64_t entries_at = wire::kRangeBodyHeader + (same_host ? wire::kSameHostRemainingSize : 0) +
                              (held ? wire::kSameHostHoldSize : 0);
  // Same-host: the requester's remaining time (less its margin), counted from
  // when we read the request. Its memory is never read after that, nor once it
  // shut the lane down: a timed-out caller may reuse its buffers. A held
  // write also names the requester's hold word: what a copy call read after
  // the requester let go is thrown away (cma.h, CopyFrom).
  Deadline requester_deadline = Deadline::Never();
  HoldWord hold;
  if (same_host) {
    const uint64_t ns = std::min<uint64_t>(wire::GetU64(body.data() + wire::kRangeBodyHeader), wire::kMaxSameHostRemainingNs);
    requester_deadline = Deadline(received_at + std::chrono::nanoseconds(static_cast<int64_t>(ns)));
  }
  if (held) {
    const uint8_t *at = body.data() + wire::kRangeBodyHeader + wire::kSameHostRemainingSize;
    hold.addr = wire::GetU64(at);
    hold.value = wire::GetU64(at + 8);
  }

  // Validate every range before touching any byte; pin the regions meanwhile.
  RegionPins pins(ctx.registry, &stream);
  iov.clear();
  iov.reserve(count + 1);
  MsgHeader response;
  response.version = stream.ProtocolVersion();
  response.type = static_cast<uint16_t>(is_read ? MsgType::kReadResponse : MsgType::kWriteResponse);
  response.request_id = header.request_id;
  if (is_read && !same_host) iov.push_back({&response, sizeof(response)});
  peer_iov.clear();
  uint64_t sum = 0;
  std::string refusal;
  metrics::Refusal refusal_reason = metrics::kRange;
  for (uint32_t i = 0; i < count && refusal.empty(); ++i) {
    const uint8_t *entry = body.data() + entries_at + i * entry_size;
    const uint64_t addr = wire::GetU64(entry), len = wire::GetU64(entry + 8);
    if (same_host)
      peer_iov.push_back({reinterpret_cast<void *>(static_cast<uintptr_t>(wire::GetU64(entry + 16))), len});
    if (len == 0 || __builtin_add_overflow(sum, len, &sum)) {
      refusal = "range " + std::to_string(i) + " has an invalid length";
    } else if (addr == 0 || !pins.Cover(static_cast<uintptr_t>(addr), len, is_read ? kAccessRead : kAccessWrite)) {
      refusal = "range " + HexRange(addr, len) + " is not inside memory registered on this engine" +
                (is_read ? " for remote reads" : " for remote writes");
      // Inside a registration that allows the other operation only: the
      // rights refused it, not the range (counted apart; a cold path).
      if (addr != 0 && RegionPins(ctx.registry).Cover(static_cast<uintptr_t>(addr), len,
                                                      is_read ? kAccessWrite : kAccessRead))
        refusal_reason = metrics::kRights;
    } else {
      iov.push_back({reinterpret_cast<void *>(static_cast<uintptr_t>(addr)), static_cast<size_t>(len)});
    }
  }
  if (refusal.empty() && sum != total) refusal = "declared total does not match the ranges";
  if (!refusal.empty()) {
    pins.Release();
    if (ctx.metrics != nullptr) ctx.metrics->CountRefusal(refusal_reason);
    LOG_WARN("refused %s from %s: %s", is_read ? "read" : "write", ctx.peer.c_str(), refusal.c_str());
    if (!is_read && !same_host && !DiscardPayload(stream, header.payload_len, deadline)) return false;
    return SendResponse(stream, response.type == static_cast<uint16_t>(MsgType::kReadResponse)
                                    ? MsgType::kReadResponse
                                    : MsgType::kWriteResponse,
                        header.request_id, adxl::PARAM_INVALID, refusal, deadline);
  }

  if (same_host && is_read) return HoldSameHostRead(stream, header, ctx, timeout_ms);
  if (same_host) {
    return ServeSameHostWrite(stream, header, ctx, iov, peer_iov, deadline, requester_deadline, pins,
                              held ? &hold : nullptr, sources);
  }
  if (is_read) {
    response.payload_len = total;
    IoStatus io = stream.WriteFull(iov.data(), static_cast<int>(iov.size()), deadline);
    if (io != IoStatus::kOk) {
      LOG_WARN("serving read to %s failed: %s", ctx.peer.c_str(), IoStatusName(io));
      return false;
    }
    return true;
  }
  IoStatus io = stream.ReadFull(iov.data(), static_cast<int>(iov.size()), deadline);
  pins.Release();
  if (io != IoStatus::kOk) {
    LOG_WARN("receiving write from %s failed: %s", ctx.peer.c_str(), IoStatusName(io));
    return false;
  }
  return SendResponse(stream, MsgType::kWriteResponse, header.request_id, adxl::SUCCESS, "", deadline);
}

// Holds `bytes` of a peer's budget for application messages while one is
// being read and handled; refused when the peer would exceed it.
class AppBudgetReservation {
 public:
  AppBudgetReservation(const ServeContext &ctx, uint64_t bytes) : counter_(ctx.app_bytes), bytes_(bytes) {
    if (counter_ == nullptr) return;
    if (counter_->fetch_add(bytes_) + bytes_ > ctx.max_app_bytes) {
      counter_->fetch_sub(bytes_);
      counter_ = nullptr;
      refused_ = true;
    }
  }
  ~AppBudgetReservation() {
    if (counter_ != nullptr) counter_->fetch_sub(bytes_);
  }
  bool Refused() const { return refused_; }

 private:
  std::atomic<uint64_t> *counter_;
  uint64_t bytes_;
  bool refused_ = false;
};

// Only called when an app handler exists (ServeLoop refuses app messages otherwise).
bool ServeApp(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx) {
  AppBudgetReservation budget(ctx, header.body_len);
  if (budget.Refused()) {
    const std::string why = "application message of " + std::to_string(header.body_len) +
                            " bytes exceeds what this engine holds for one peer (" +
                            std::to_string(ctx.max_app_bytes) + " bytes, llmdd.MaxPeerMessageBytes)";
    LOG_ERROR("closing lane from %s: %s", ctx.peer.c_str(), why.c_str());
    SendProtocolError(stream, header.request_id, why);
    return false;
  }
  // The handler gets the app type (it travels in flags) followed by the body.
  std::string typed(4, '\0');
  memcpy(typed.data(), &header.flags, 4);
  if (ReadBodyAsItArrives(stream, header.body_len, AssemblyDeadline(ctx), &typed) != IoStatus::kOk) return false;
  std::string response;
  adxl::Status status = (*ctx.app_handler)(ctx.peer, ctx.session_id, typed, &response);
  if (response.size() > wire::kMaxAppBody) {
    status = adxl::FAILED;
    response.clear();
  }
  MsgHeader reply;
  reply.version = stream.ProtocolVersion();
  reply.type = static_cast<uint16_t>(MsgType::kAppResponse);
  reply.request_id = header.request_id;
  reply.status = status;
  reply.body_len = response.size();
  iovec out[2] = {{&reply, sizeof(reply)}, {response.data(), response.size()}};
  return stream.WriteFull(out, 2, AssemblyDeadline(ctx)) == IoStatus::kOk;
}

// Counts one request being served for the session's quiescence, however it ends.
class BusyCount {
 public:
  explicit BusyCount(std::atomic<int> *counter) : counter_(counter) {
    if (counter_ != nullptr) counter_->fetch_add(1);
  }
  ~BusyCount() {
    if (counter_ != nullptr) counter_->fetch_sub(1);
  }
  BusyCount(const BusyCount &) = delete;
  BusyCount &operator=(const BusyCount &) = delete;

 private:
  std::atomic<int> *counter_;
};

// Grants a standing read lease (same-host lanes only; checked by the caller).
}  // namespace

bool ServeRequest(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx) {
  std::string bad = wire::CheckHeader(header, stream.ProtocolVersion());
  // A later revision's optional message: skipped, the lane stays (docs/PROTOCOL.md "Ignorable messages").
  if (bad.empty() && wire::IsIgnorable(header.type)) return SkipIgnorable(stream, header, AssemblyDeadline(ctx));
  const bool lease = header.type == static_cast<uint16_t>(MsgType::kLeaseRequest);
  if (bad.empty() && header.type != static_cast<uint16_t>(MsgType::kReadRequest) &&
      header.type != static_cast<uint16_t>(MsgType::kWriteRequest) &&
      header.type != static_cast<uint16_t>(MsgType::kAppRequest) && !lease)
    bad = std::string("unexpected ") + wire::MsgTypeName(header.type) + " on a data lane";
  if (bad.empty() && lease && ctx.same_host == nullptr)
    bad = "read lease requested on a connection whose peer was not verified for the same-host path";
  adxl::Status refusal = adxl::PARAM_INVALID;
  if (bad.empty() && header.type == static_cast<uint16_t>(MsgType::kAppRequest) &&
      (ctx.app_handler == nullptr || !*ctx.app_handler)) {
    // Refused before its body is read: nothing is held for a message nobody handles.
    bad = "application messages are not served by this engine";
    refusal = adxl::UNSUPPORTED;
  }
  if (!bad.empty()) {
    LOG_ERROR("closing lane from %s: %s", ctx.peer.c_str(), bad.c_str());
    SendProtocolError(stream, header.magic == wire::kMagic ? header.request_id : 0, bad, refusal);
    return false;
  }
  BusyCount busy(ctx.busy);
  return lease ? ServeLeaseRequest(stream, header, ctx)
               : header.type == static_cast<uint16_t>(MsgType::kAppRequest) ? ServeApp(stream, header, ctx)
                                                                            : ServeTransfer(stream, header, ctx);
}

bool LaneServer::OnReadable() {
  bool keep = false;
  // An exception (an allocation failing under a memory limit) ends this lane
  // only; the requester sees it closed and reports a failure.
  RunGuarded(("serving a lane from " + ctx_.peer).c_str(), [&] { keep = ServeArrived(); });
  if (!keep) stream_.Shutdown();  // the peer sees EOF at once instead of a half-dead lane
  return keep;
}

bool LaneServer::ServeArrived() {
  for (int served = 0; served < kMaxRequestsPerWake; ++served) {
    if (ctx_.stopping != nullptr && ctx_.stopping->load()) return false;
    std::string error;
    switch (next_.Feed(stream_, /*with_body=*/false, 0, &error)) {
      case IncomingMessage::State::kPartial: return true;
      case IncomingMessage::State::kClosed: return false;
      case IncomingMessage::State::kInvalid: {
        const MsgHeader &header = next_.Header();
        LOG_ERROR("closing lane from %s: %s", ctx_.peer.c_str(), error.c_str());
        if (next_.Received() == sizeof(header))  // a whole header that is wrong: say why
          SendProtocolError(stream_, header.magic == wire::kMagic ? header.request_id : 0, error,
                            adxl::PARAM_INVALID);
        return false;
      }
      case IncomingMessage::State::kComplete: break;
    }
    const MsgHeader header = next_.Header();
    next_.Reset();
    if (!ServeRequest(stream_, header, ctx_)) return false;
    // After the last request of this wake nothing more is taken from the
    // socket: the event set wakes us only for bytes still there, and a message
    // that is all header (a lease request), read here, would wait forever.
    if (served + 1 == kMaxRequestsPerWake) break;
    // A requester that sends its next request right away finds us still here
    // (its first bytes are read as they come, not peeked and read again).
    if (!next_.StartSoon(stream_)) return true;
  }
  return true;  // fair to the other connections: the event set brings us back
}

void ServeLane(ByteStream &stream, const ServeContext &ctx) {
  LaneServer server(stream, ctx);
  for (;;) {
    pollfd ready{stream.NativeHandle(), POLLIN, 0};
    if (ready.fd >= 0 && poll(&ready, 1, -1) < 0 && errno != EINTR) {
      stream.Shutdown();
      return;
    }
    if (!server.OnReadable()) return;
  }
}

}  // namespace llmdd
