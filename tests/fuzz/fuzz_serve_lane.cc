// fuzz_serve_lane: the real ServeLane (the loop that serves an untrusted peer's
// Read/Write/App requests against registered memory) over a socketpair.
//
// Input layout:
//   byte 0    flags: bit 0    an app handler is installed (else app requests are refused: the lane closes)
//                    bits 1-2 region B's rights: 0 read-write, 1 read-only, 2 write-only, 3 not registered
//                    bit 3    region C (read-only, inside A) is registered
//                    bit 4    the lane is verified for the same-host path (ServeContext.same_host
//                             = this process, which then plays the requester's memory too)
//   byte 1..  the byte stream the peer sends: 40-byte headers, bodies, payloads,
//             Release messages. (A same-host body's deadline field is sent as
//             is: 0 is long past, ~0 is never.)
//
// Memory (fresh every run, each buffer on its own with ASan-poisoned guard zones
// on both sides):
//   region 0 = A  256 bytes, read-write
//   region 1 = B   64 bytes, rights from the flags; filled with a secret marker
//   region 2 = C   A + 64, 64 bytes, read-only (only when flag bit 3)
//   region 3 = D  128 bytes, registered and removed again before serving (poisoned)
//   region 4 = R  128 bytes, not registered: the requester's own buffer, the
//                 source of same-host writes
// Region addresses change every run, so an address in a range entry (the
// server's address, and for same-host requests the requester's too) may be
// written relative to a region: an address whose top 16 bits are 0xADD1 means
//   base(region ((addr >> 40) & 0xff) % 5) + int32(addr & 0xffffffff).
// The harness walks the message framing exactly as ServeLane consumes it and
// rewrites such addresses before sending; every other byte goes out unchanged.
//
// Checked: ASan (no byte outside live registered memory is read or written,
// also through readv/writev/process_vm_readv), UBSan, no hang (libFuzzer
// -timeout), and against a model of the registry computed from the same
// walk: every Read/Write answered SUCCESS (TCP data, same-host lease or copy)
// only covers memory registered with the needed rights, every TCP request the
// model allows succeeds, responses come in order with the request's id, a TCP
// read returns exactly `total` bytes, a lease lasts 1..kMaxLeaseMs; besides, a
// read-only B is never modified and a write-only B's bytes are never sent back.
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/log.h"
#include "datadist/link_messages.h"
#include "engine/lane.h"
#include "engine/memory_registry.h"
#include "engine/wire.h"
#include "fuzz_common.h"
#include "transport/tcp/tcp_stream.h"

using namespace llmdd;
using llmdd::fuzz::GuardedBuffer;

namespace {

// The peer's budget for application messages held at once (small, so inputs reach it).
constexpr uint64_t kAppBudget = 4096;


constexpr uint64_t kRelativeTag = 0xADD1;
constexpr size_t kLenA = 256, kLenB = 64, kOffsetC = 64, kLenC = 64, kLenD = 128, kLenR = 128;
constexpr int kRegions = 5;
uint8_t g_marker[8];  // fills region B; random per process, so inputs do not contain it
bool g_debug = false;  // LLMDD_FUZZ_DEBUG=1: keep the engine's log, print every response

uint8_t PatternA(size_t i) { return static_cast<uint8_t>(i * 7 + 1); }

// What an LLM-DataDist engine does with app requests: decode and answer.
adxl::Status AppHandlerImpl(const std::string &peer, uint64_t session_id, const std::string &typed,
                            std::string *response) {
  if (typed.size() < 4) return adxl::PARAM_INVALID;
  uint32_t type = 0;
  memcpy(&type, typed.data(), 4);
  const std::string body = typed.substr(4);
  switch (type) {
    case datadist::kAppLink: {
      datadist::LinkRequest req;
      return datadist::DecodeLinkRequest(body, &req) ? adxl::SUCCESS : adxl::PARAM_INVALID;
    }
    case datadist::kAppUnlink: {
      uint64_t sender = 0;
      return datadist::DecodeUnlink(body, &sender) ? adxl::SUCCESS : adxl::PARAM_INVALID;
    }
    case datadist::kAppGetCache: {
      int64_t cache_id = 0;
      if (!datadist::DecodeCacheQuery(body, &cache_id)) return adxl::PARAM_INVALID;
      datadist::CacheGeometry geometry;
      geometry.num_tensors = 2;
      geometry.tensor_size = 4096;
      geometry.row_count = 4;
      geometry.stride = 1024;
      geometry.addrs = {0x1000, 0x2000};
      *response = datadist::EncodeGeometry(geometry);
      return adxl::SUCCESS;
    }
    default:
      return adxl::UNSUPPORTED;
  }
}
const AppHandler g_app_handler = AppHandlerImpl;

// What the registry of this run allows, as the serving side must see it.
struct Model {
  uintptr_t bases[kRegions];
  unsigned b_mode;  // 0 rw, 1 read-only, 2 write-only, 3 not registered
  bool same_host;   // ServeContext.same_host set (this process as the verified requester)
  bool app_handler; // app requests are served (else refused: the lane closes)

  static bool Inside(uintptr_t base, uint64_t size, uint64_t addr, uint64_t len) {
    return addr >= base && len <= size && addr - base <= size - len;
  }
  // A range is served only if every byte lies in a live region with the rights
  // (one region, or regions that touch end to start). A and B are separate
  // buffers with guard zones between them, so no range joins them, and C lies
  // inside A, so it never grants more than A does: inside A or inside B it is.
  bool Allowed(uint64_t addr, uint64_t len, bool is_read) const {
    if (addr == 0 || len == 0) return false;
    if (Inside(bases[0], kLenA, addr, len)) return true;
    const bool b_ok = is_read ? (b_mode == 0 || b_mode == 1) : (b_mode == 0 || b_mode == 2);
    return b_ok && Inside(bases[1], kLenB, addr, len);
  }
};

// One request as the harness predicts its answer.
struct Expect {
  wire::MsgType type;  // the request type
  bool same_host;
  uint64_t request_id;
  uint64_t total;
  bool allowed;        // every range allowed and the total matches
};

uint64_t Relocate(uint64_t addr, const Model &model) {
  if ((addr >> 48) != kRelativeTag) return addr;
  const uintptr_t base = model.bases[((addr >> 40) & 0xff) % kRegions];
  const int32_t offset = static_cast<int32_t>(static_cast<uint32_t>(addr));
  return static_cast<uint64_t>(base) + static_cast<uint64_t>(static_cast<int64_t>(offset));
}

bool ValidHeaderAt(const std::vector<uint8_t> &stream, size_t pos, wire::MsgHeader *header) {
  if (stream.size() - pos < sizeof(*header)) return false;
  memcpy(header, stream.data() + pos, sizeof(*header));
  return wire::CheckHeader(*header).empty();
}

// Rewrites region-relative addresses and predicts the answers, following the
// framing exactly the way ServeLoop/ServeTransfer/ServeApp consume the stream
// (it stops where the server would stop: protocol error or end of input).
std::vector<Expect> Walk(std::vector<uint8_t> *stream, const Model &model) {
  std::vector<Expect> expects;
  size_t pos = 0;
  wire::MsgHeader header;
  while (ValidHeaderAt(*stream, pos, &header)) {
    pos += sizeof(header);
    const size_t left = stream->size() - pos;
    const auto type = static_cast<wire::MsgType>(header.type);
    if (type == wire::MsgType::kAppRequest) {
      // Refused without a handler, or beyond the peer's message budget: the lane closes.
      if (!model.app_handler || header.body_len > kAppBudget) break;
      if (header.body_len > left) break;
      pos += header.body_len;
      expects.push_back({type, false, header.request_id, 0, false});
      continue;
    }
    if (wire::IsIgnorable(header.type)) {
      // A later revision's optional message: its body is skipped, and one with
      // a request id is answered Error{UNSUPPORTED}; the lane stays.
      if (header.body_len > left) break;
      pos += header.body_len;
      if (header.request_id != 0) expects.push_back({type, false, header.request_id, 0, false});
      continue;
    }
    if (type == wire::MsgType::kLeaseRequest) {
      if (!model.same_host) break;  // refused on a lane that was not verified
      expects.push_back({type, true, header.request_id, 0, true});
      continue;
    }
    if (type != wire::MsgType::kReadRequest && type != wire::MsgType::kWriteRequest) break;
    const bool is_read = type == wire::MsgType::kReadRequest;
    const bool same_host = (header.flags & wire::kFlagSameHost) != 0;
    const bool held = (header.flags & wire::kFlagWriteHold) != 0;
    const uint64_t entry_size = same_host ? wire::kSameHostEntrySize : wire::kRangeEntrySize;
    // Same-host bodies carry the requester's remaining time (ns) before the
    // entries, a held write its hold (addr, value) after it.
    const uint64_t hold_at = wire::kRangeBodyHeader + wire::kSameHostRemainingSize;
    const uint64_t entries_at =
        wire::kRangeBodyHeader + (same_host ? wire::kSameHostRemainingSize : 0) + (held ? wire::kSameHostHoldSize : 0);
    if (header.body_len < wire::kRangeBodyHeader) break;
    if (held && (!same_host || is_read)) break;  // a protocol error: the lane closes
    const size_t body_end = pos + static_cast<size_t>(std::min<uint64_t>(header.body_len, left));
    Expect e{type, same_host, header.request_id, 0, true};
    if (held && pos + hold_at + 8 <= body_end) {  // the hold word's address, like the requester's ranges
      uint64_t addr = 0;
      memcpy(&addr, stream->data() + pos + hold_at, 8);
      addr = Relocate(addr, model);
      memcpy(stream->data() + pos + hold_at, &addr, 8);
    }
    uint64_t sum = 0;
    for (size_t at = pos + entries_at; at + entry_size <= body_end; at += entry_size) {
      uint64_t entry[3] = {0, 0, 0};
      memcpy(entry, stream->data() + at, entry_size);
      entry[0] = Relocate(entry[0], model);
      if (same_host) entry[2] = Relocate(entry[2], model);
      memcpy(stream->data() + at, entry, entry_size);
      if (!model.Allowed(entry[0], entry[1], is_read) || __builtin_add_overflow(sum, entry[1], &sum))
        e.allowed = false;
    }
    if (header.body_len > left) break;  // the server reads to EOF and stops
    uint32_t count = 0, timeout_ms = 0;
    if (!wire::DecodeRangeHeader(stream->data() + pos, header.body_len, &count, &timeout_ms, &e.total, entry_size,
                                 held)
             .empty())
      break;
    if (same_host && !model.same_host) break;
    if (sum != e.total) e.allowed = false;
    pos += header.body_len;
    if (!is_read && !same_host) {
      if (header.payload_len != e.total) break;
      if (header.payload_len > stream->size() - pos) break;
      pos += header.payload_len;
    }
    expects.push_back(e);
    // A granted same-host read lease ends with the requester's Release.
    wire::MsgHeader release;
    if (same_host && is_read && ValidHeaderAt(*stream, pos, &release) &&
        release.type == static_cast<uint16_t>(wire::MsgType::kRelease)) {
      if (!e.allowed) break;  // nothing was granted: the Release is unexpected and the lane closes
      pos += sizeof(release);
    }
  }
  return expects;
}

// The marker checks are compiled without coverage instrumentation: libFuzzer
// learns the operands of instrumented comparisons (and of memcmp/memmem) and
// would otherwise copy the secret marker into its inputs.
__attribute__((no_sanitize("coverage"))) bool IsMarkerPattern(const uint8_t *p, size_t len) {
  for (size_t i = 0; i < len; ++i)
    if (p[i] != g_marker[i % sizeof(g_marker)]) return false;
  return true;
}

__attribute__((no_sanitize("coverage"))) bool HasMarker(const char *p, size_t len) {
  for (size_t i = 0; i + sizeof(g_marker) <= len; ++i) {
    size_t k = 0;
    while (k < sizeof(g_marker) && static_cast<uint8_t>(p[i + k]) == g_marker[k]) ++k;
    if (k == sizeof(g_marker)) return true;
  }
  return false;
}

// Checks what the lane sent against the predictions.
void CheckResponses(const std::string &out, const std::vector<Expect> &expects, const Model &model,
                    bool b_write_only) {
  size_t pos = 0, next = 0;
  while (out.size() - pos >= sizeof(wire::MsgHeader)) {
    wire::MsgHeader h;
    memcpy(&h, out.data() + pos, sizeof(h));
    pos += sizeof(h);
    const size_t text = static_cast<size_t>(std::min<uint64_t>(h.body_len, out.size() - pos));
    if (g_debug)
      fprintf(stderr, "  response %s id=%llu status=%u flags=%u payload=%llu %.*s\n", wire::MsgTypeName(h.type),
              static_cast<unsigned long long>(h.request_id), h.status, h.flags,
              static_cast<unsigned long long>(h.payload_len), static_cast<int>(text), out.data() + pos);
    pos += text;
    const size_t payload = static_cast<size_t>(std::min<uint64_t>(h.payload_len, out.size() - pos));
    const char *data = out.data() + pos;
    pos += payload;
    FUZZ_CHECK(wire::CheckHeader(h).empty(), "the lane sent an invalid header");
    if (h.type == static_cast<uint16_t>(wire::MsgType::kError) && next < expects.size() &&
        wire::IsIgnorable(static_cast<uint16_t>(expects[next].type))) {
      FUZZ_CHECK(h.request_id == expects[next].request_id && h.status == adxl::UNSUPPORTED,
                 "ignorable message %llu answered with status %u for request %llu",
                 static_cast<unsigned long long>(expects[next].request_id), h.status,
                 static_cast<unsigned long long>(h.request_id));
      ++next;
      continue;  // the lane stays
    }
    if (h.type == static_cast<uint16_t>(wire::MsgType::kError)) return;  // the lane closes after it
    FUZZ_CHECK(next < expects.size(), "response %s without a request", wire::MsgTypeName(h.type));
    const Expect &e = expects[next++];
    FUZZ_CHECK(h.request_id == e.request_id, "response for request %llu answers request %llu",
               static_cast<unsigned long long>(h.request_id), static_cast<unsigned long long>(e.request_id));
    if (e.type == wire::MsgType::kAppRequest) {
      FUZZ_CHECK(h.type == static_cast<uint16_t>(wire::MsgType::kAppResponse), "app request answered by %s",
                 wire::MsgTypeName(h.type));
      continue;
    }
    if (e.type == wire::MsgType::kLeaseRequest) {
      FUZZ_CHECK(h.type == static_cast<uint16_t>(wire::MsgType::kLeaseGrant), "lease request answered by %s",
                 wire::MsgTypeName(h.type));
      FUZZ_CHECK(h.flags <= wire::kStandingLeaseMs, "lease of %u ms", h.flags);
      if (text == h.body_len) {
        std::vector<wire::Range> granted;
        std::vector<wire::LeaseMapping> mapped;  // a LeaseRequest with kFlagLeaseMappings gets a trailer
        FUZZ_CHECK(wire::DecodeLeaseGrant(std::string(out.data() + pos - payload - text, text), &granted, &mapped),
                   "malformed lease grant");
        // The harness's regions are not MallocMem's: nothing of them is shareable.
        FUZZ_CHECK(mapped.empty(), "lease maps %zu ranges of memory that is not shareable", mapped.size());
        // A lease lets the peer read one-sidedly: it must name only memory registered for remote reads.
        for (const wire::Range &r : granted)
          FUZZ_CHECK(model.Allowed(r.addr, r.len, /*is_read=*/true),
                     "lease names [0x%llx, +%llu), which is not registered for remote reads",
                     static_cast<unsigned long long>(r.addr), static_cast<unsigned long long>(r.len));
      }
      continue;
    }
    const bool is_read = e.type == wire::MsgType::kReadRequest;
    FUZZ_CHECK(h.type == static_cast<uint16_t>(is_read ? wire::MsgType::kReadResponse : wire::MsgType::kWriteResponse),
               "%s answered by %s", is_read ? "read" : "write", wire::MsgTypeName(h.type));
    if (h.status == adxl::SUCCESS)
      FUZZ_CHECK(e.allowed, "%s%s of memory that is not registered with that right was served (request %llu)",
                 e.same_host ? "same-host " : "", is_read ? "read" : "write",
                 static_cast<unsigned long long>(e.request_id));
    if (e.allowed && !e.same_host)
      FUZZ_CHECK(h.status == adxl::SUCCESS, "allowed %s refused: %.*s", is_read ? "read" : "write",
                 static_cast<int>(text), out.data() + pos - payload - text);
    if (h.status == adxl::SUCCESS && is_read && !e.same_host)
      FUZZ_CHECK(h.payload_len == e.total, "read of %llu bytes answered with %llu",
                 static_cast<unsigned long long>(e.total), static_cast<unsigned long long>(h.payload_len));
    if (h.status == adxl::SUCCESS && is_read && e.same_host)
      FUZZ_CHECK(h.payload_len == 0 && h.flags >= 1 && h.flags <= wire::kMaxLeaseMs, "bad lease %u ms", h.flags);
    if (b_write_only && is_read)
      // Any read of >= 15 bytes of B carries one whole copy of the marker.
      FUZZ_CHECK(!HasMarker(data, payload), "contents of write-only region B were sent to the peer");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  g_debug = getenv("LLMDD_FUZZ_DEBUG") != nullptr;
  if (!g_debug) SetLogLevel(LogLevel::kOff);
  // Drawn at start-up: no input (and no seed) can contain it by design.
  FILE *f = fopen("/dev/urandom", "rb");
  if (f == nullptr || fread(g_marker, 1, sizeof(g_marker), f) != sizeof(g_marker)) abort();
  fclose(f);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const bool with_app_handler = flags & 1;
  const unsigned b_mode = (flags >> 1) & 3;
  const bool with_c = flags & 8;
  const bool same_host = flags & 16;

  GuardedBuffer a(kLenA), b(kLenB), d(kLenD), r(kLenR);
  for (size_t i = 0; i < kLenA; ++i) a.data()[i] = PatternA(i);
  for (size_t i = 0; i < kLenB; ++i) b.data()[i] = g_marker[i % sizeof(g_marker)];
  memset(d.data(), 0xDD, kLenD);
  for (size_t i = 0; i < kLenR; ++i) r.data()[i] = static_cast<uint8_t>(0x80 + i);

  MemoryRegistry registry;
  registry.Add(a.addr(), kLenA, 0, kAccessReadWrite);
  if (b_mode == 0) registry.Add(b.addr(), kLenB, 0, kAccessReadWrite);
  if (b_mode == 1) registry.Add(b.addr(), kLenB, 0, kAccessRead);
  if (b_mode == 2) registry.Add(b.addr(), kLenB, 0, kAccessWrite);
  if (b_mode == 3) b.PoisonAll();
  if (with_c) registry.Add(a.addr() + kOffsetC, kLenC, 0, kAccessRead);
  registry.Remove(registry.Add(d.addr(), kLenD, 0, kAccessReadWrite));
  d.PoisonAll();

  const Model model{{a.addr(), b.addr(), a.addr() + kOffsetC, d.addr(), r.addr()}, b_mode, same_host,
                    with_app_handler};
  std::vector<uint8_t> stream_bytes(data + 1, data + size);
  const std::vector<Expect> expects = Walk(&stream_bytes, model);

  int fds[2];
  if (!fuzz::SocketPair(fds)) abort();
  std::string sent_back;
  {
    fuzz::PeerFeeder peer(fds[1], stream_bytes.data(), stream_bytes.size(), &sent_back);
    TcpStream stream(fds[0], "fuzz-peer");
    ServeContext ctx;
    ctx.registry = &registry;
    ctx.app_handler = with_app_handler ? &g_app_handler : nullptr;
    ctx.peer = "fuzz-peer";
    ctx.session_id = 7;
    if (same_host) ctx.same_host = fuzz::SelfAsPeer();
    std::atomic<uint64_t> app_bytes{0};
    ctx.app_bytes = &app_bytes;
    ctx.max_app_bytes = kAppBudget;
    ServeLane(stream, ctx);
    peer.Join();
  }

  // With the same-host path this process is the requester too, and a same-host
  // write may legitimately copy "requester memory" (any of it, B included) into
  // A: the marker check then says nothing, the model check still applies.
  CheckResponses(sent_back, expects, model, b_mode == 2 && !same_host);
  if (b_mode == 1) FUZZ_CHECK(IsMarkerPattern(b.data(), kLenB), "read-only region B was modified");
  registry.Clear();
  return 0;
}
