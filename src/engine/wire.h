// Wire format of the engine's protocol (documented in docs/PROTOCOL.md).
// Every message is a fixed 40-byte header, a structured body of body_len bytes
// and, for data messages, payload_len bulk bytes. All integers little-endian,
// whatever the host: bodies are encoded byte by byte (BodyWriter/BodyReader,
// PutU32/GetU32...); the header is copied as a host struct, which the
// static_assert below confines to little-endian hosts.
// Decoding treats every byte as untrusted: sizes are bounded before anything is
// allocated, unknown types/versions are refused.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace llmdd::wire {

// MsgHeader is sent and received as a host struct (memcpy / iovec): that is
// the protocol's byte order only on a little-endian host. A big-endian port
// must encode it field by field (everything else already is).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the wire protocol is little-endian and MsgHeader is copied as a host struct");

constexpr uint32_t kMagic = 0x4C58444CU;  // bytes "LDXL"

// Protocol versions (docs/PROTOCOL.md "Versions and capabilities"). Each
// connection negotiates one: the client's Hello says the range it speaks, the
// server picks the highest version in both ranges and says it in HelloAck.
// Every message up to and including HelloAck (or the Error that refuses the
// Hello) carries kHandshakeVersion in its header, so that any version can parse
// any other's Hello and refuse it clearly; every later message carries the
// negotiated version, and a header with another version is a protocol error.
//   1: the first revision (no range in Hello: a Hello without one means 1..1).
//   2: version negotiation (this range in Hello, the version in HelloAck),
//      ignorable message types, the target engine check, durations instead
//      of absolute CLOCK_MONOTONIC deadlines in same-host requests. The
//      same-host path is only used on version >= 2 connections.
constexpr uint16_t kHandshakeVersion = 1;
constexpr uint16_t kMinVersion = 1;  // the oldest version this engine speaks
constexpr uint16_t kMaxVersion = 2;  // the newest
constexpr uint16_t kSameHostMinVersion = 2;

// The highest version in both [peer_min, peer_max] and [our_min, our_max]; 0 when none.
uint16_t NegotiateVersion(uint16_t peer_min, uint16_t peer_max, uint16_t our_min = kMinVersion,
                          uint16_t our_max = kMaxVersion);
// "1..2", or "1" for a range of one version.
std::string VersionRange(uint16_t min, uint16_t max);

enum class MsgType : uint16_t {
  kHello = 1,          // first message on every connection
  kHelloAck = 2,
  kPing = 3,           // control connection heartbeats
  kPong = 4,
  kGoodbye = 5,        // orderly disconnect
  kGoodbyeAck = 6,
  kError = 7,          // fatal protocol error; the sender closes the connection
  kAuthChallenge = 8,  // server -> client when a shared secret is configured: the server's nonce only
  kAuthResponse = 9,   // client -> server, answers the challenge with the client's proof
  kAuthConfirm = 10,   // server -> client, only after a valid client proof: the server's proof
  // server -> client on the control connection of a session that granted
  // kCapLazyReverseLanes: open one more reverse lane (no body, request_id 0)
  kReverseLaneWanted = 15,
  kReadRequest = 16,   // data lanes
  kReadResponse = 17,
  kWriteRequest = 18,
  kWriteResponse = 19,
  kRelease = 20,       // same-host read: the requester finished copying, the lease ends
  kLeaseRequest = 21,  // same-host: ask for a standing read lease (no body)
  kLeaseGrant = 22,    // the readable regions and how long they stay readable (flags = ms)
  kAppRequest = 32,    // opaque request/response for layers above the engine
  kAppResponse = 33,
  // Notifications (ADXL SendNotify): client -> server on the control
  // connection, answered by NotifyAck with the same request_id. In the
  // ignorable range, so an engine that does not know them answers
  // Error{UNSUPPORTED, request_id} and keeps the session; sent only once the
  // HelloAck granted kCapNotify (version >= 2).
  kNotify = 0x8010,     // body: name (string <= kMaxNotifyField), message (same); later fields may follow
  kNotifyAck = 0x8011,  // status: SUCCESS, RESOURCE_EXHAUSTED (link or engine full), PARAM_INVALID; body: reason
};

const char *MsgTypeName(uint16_t type);

// Message types from here up are ignorable: one this engine does not know,
// arriving on an established connection at the side that serves it (the
// server's control connection and data lanes, the client's reverse lanes), is
// read and discarded (CheckHeader bounds it to kMaxControlBody, no payload);
// with a request_id it is answered Error{UNSUPPORTED, request_id} and the
// connection stays open; with request_id 0 it is a notification, not answered.
// Types below are never ignorable: an unknown one ends the connection. Senders
// use ignorable types only on connections that negotiated version >= 2 (a
// version-1 receiver ends the connection on any unknown type).
constexpr uint16_t kFirstIgnorableType = 0x8000;
bool IsKnownType(uint16_t type);
inline bool IsIgnorable(uint16_t type) { return type >= kFirstIgnorableType && !IsKnownType(type); }

// A status received from a peer is untrusted: anything but a known ADXL code
// becomes FAILED, so the public API only ever returns documented values.
inline uint32_t SanitizePeerStatus(uint32_t status) {
  switch (status) {
    case 0U: case 103900U: case 103901U: case 103902U: case 103903U: case 103905U: case 203900U: case 503900U:
      return status;
    default:
      return 503900U;
  }
}

struct MsgHeader {
  uint32_t magic = kMagic;
  uint16_t version = kHandshakeVersion;  // the negotiated version once HelloAck is through
  uint16_t type = 0;
  uint32_t status = 0;       // adxl status code in responses
  uint32_t flags = 0;
  uint64_t request_id = 0;
  uint64_t body_len = 0;
  uint64_t payload_len = 0;
};
static_assert(sizeof(MsgHeader) == 40, "wire header must be 40 bytes");

// Connection roles announced in Hello.
enum class ConnRole : uint32_t {
  kControl = 1,      // handshake, heartbeats, goodbye, app messages
  kDataLane = 2,     // connector sends data requests, acceptor serves them
  kReverseLane = 3,  // acceptor sends data requests, connector serves them
};

// Capability bits. A control Hello offers what the client supports; the
// HelloAck grants the subset the server supports too (NegotiateCapabilities),
// and only granted features are used on the session. Bits a receiver does not
// know are ignored (never refused, never granted), so a later revision may add
// bits without a version bump.
constexpr uint32_t kCapReverseLanes = 1U << 0;
constexpr uint32_t kCapAppMessages = 1U << 1;
// Control Hello: the client offers the same-host path (its identity block is
// filled). HelloAck: the server reached the client's memory (token check), so
// requests on forward lanes may use the same-host path. Reverse-lane Hello:
// the client reached the server's memory, so the server may use it on reverse
// lanes.
constexpr uint32_t kCapSameHost = 1U << 2;
// Control Hello: the client may send Notify. HelloAck: the server stores and
// acknowledges them (only at version >= 2: Notify is an ignorable type).
constexpr uint32_t kCapNotify = 1U << 3;
// Control Hello: the client opens its reverse lanes when the server asks
// (ReverseLaneWanted) instead of all at Connect; HelloAck: the server will ask.
// The client then opens one reverse lane at Connect (it tells the server which
// paths reach the client, as before) and the server closes idle ones
// (llmdd.IdleLaneCloseMs) and asks again when it needs them.
constexpr uint32_t kCapLazyReverseLanes = 1U << 4;
// Control Hello: the client holds its same-host writes (kFlagWriteHold) and
// honours the holds of writes it serves; HelloAck: so does the server. Granted,
// both directions of the session send every same-host write with a hold;
// otherwise a same-host write is not sent at all (TCP carries it), so that a
// request that ended never has its memory read by the peer again.
constexpr uint32_t kCapWriteHold = 1U << 5;
// Control Hello: the client can serve same-host writes whose source lies in
// the requester's shareable memory (kFlagSourceMappings) and sends them;
// HelloAck: so can the server. Granted, both directions may send them.
constexpr uint32_t kCapSourceMappings = 1U << 6;
constexpr uint32_t kKnownCapabilities = kCapReverseLanes | kCapAppMessages | kCapSameHost | kCapNotify |
                                        kCapLazyReverseLanes | kCapWriteHold | kCapSourceMappings;
// What a HelloAck grants: offered by the client, supported here, known.
inline uint32_t NegotiateCapabilities(uint32_t offered, uint32_t supported) {
  return offered & supported & kKnownCapabilities;
}

// Header flag of Read/Write requests: same-host request. Entries carry the
// requester's local address too; no payload either way. Each side only ever
// writes its own memory: for a write the server copies from the requester with
// process_vm_readv; for a read the server pins the ranges and answers with a
// lease (ReadResponse.flags = lease in ms) during which the requester copies
// with process_vm_readv, then sends Release.
constexpr uint32_t kFlagSameHost = 1U << 0;
// Header flag of same-host WriteRequests (with kFlagSameHost): after the
// requester's remaining time come `hold_addr u64, hold_value u64`
// (kSameHostHoldSize), a word in the requester's memory that holds
// hold_value while the requester still wants the write. The server reads it
// in every copy call right after the data; once it no longer holds the value
// the requester has ended the request (deadline, cancel) and may have reused
// its buffers, so the bytes copied are zeroed and the copy stops. Only on
// sessions that granted kCapWriteHold.
constexpr uint32_t kFlagWriteHold = 1U << 1;
constexpr uint64_t kSameHostHoldSize = 16;
// Header flag of same-host WriteRequests (with kFlagSameHost), only on
// sessions that granted kCapSourceMappings: after the entries comes `count
// u32, reserved u32, (fd u32, reserved u32, serial u64, inode u64, device u64,
// base u64, size u64) x count` (1..kMaxSourceMappings, sorted by base, not
// overlapping): the requester's
// addresses [base, base + size) are offsets [0, size) of the memfd it holds at
// descriptor `fd` (its MallocMem memory; identity inode/device, allocation
// `serial`), and every source range of the request lies in one of them. The
// server may map them read-only (pidfd_getfd) and copy with memcpy instead
// of process_vm_readv; the write hold is checked after every chunk as before.
constexpr uint32_t kFlagSourceMappings = 1U << 2;
constexpr uint32_t kMaxSourceMappings = 256;  // as many as a process has shareable allocations
constexpr uint64_t kSourceMappingHeader = 8;
constexpr uint64_t kSourceMappingEntrySize = 48;
constexpr uint32_t kMaxLeaseMs = 10000;
// Standing read lease (same-host lanes only): LeaseGrant lists regions the
// requester may read one-sidedly, with process_vm_readv and no message, for
// flags ms from its LeaseRequest; the server's deregistration of a listed
// region waits for that time. Body: count u32, reserved u32, (addr u64, len u64) x count.
constexpr uint32_t kStandingLeaseMs = 100;
constexpr uint32_t kMaxLeaseRegions = 4096;
constexpr uint64_t kLeaseGrantHeader = 8;
// LeaseRequest flag: the requester can map shared memory. A server that knows
// it appends to the LeaseGrant body, after the ranges, `count u32, reserved
// u32, (range_index u32, fd u32, serial u64, offset u64, inode u64, device u64)
// x count`: listed range range_index lives at `offset` in the memfd the server
// holds at descriptor `fd` (identity inode/device from fstat; serial names the
// allocation, unique in the server's life). Servers that predate the flag
// ignore it and send no trailer; a requester that did not set it gets none.
constexpr uint32_t kFlagLeaseMappings = 1U << 0;
constexpr uint64_t kLeaseMappingHeader = 8;
constexpr uint64_t kLeaseMappingEntrySize = 40;

// Bounds that the decoder enforces before allocating.
constexpr uint32_t kMaxRangesPerRequest = 65536;
constexpr uint64_t kMaxControlBody = 4096;
constexpr uint64_t kMaxAppBody = 64ULL << 20;
constexpr uint64_t kMaxErrorText = 512;
constexpr uint32_t kMaxEngineIdLen = 256;
constexpr uint32_t kMaxAuthField = 64;
constexpr uint64_t kRangeBodyHeader = 16;  // count u32, timeout_ms u32, total u64
constexpr uint64_t kRangeEntrySize = 16;   // addr u64, len u64
constexpr uint64_t kSameHostEntrySize = 24;  // addr u64, len u64, requester's local addr u64
// Same-host requests carry, after the range header, the requester's remaining
// time in ns (u64), less a margin for the request's way to the server
// (kSameHostMarginNs, at most a quarter of the time). The server counts it from
// when it read the request's header and never reads the requester's memory
// after that, nor once the requester has shut the lane down (which it does
// when it gives up on a request). A duration, not a point in time: two
// processes on one host need not share CLOCK_MONOTONIC (time namespaces).
// Version 1 sent an absolute CLOCK_MONOTONIC deadline here; this engine never
// uses the same-host path on a version-1 connection.
constexpr uint64_t kSameHostRemainingSize = 8;
constexpr uint64_t kSameHostMarginNs = 2000000;
// The longest remaining time a same-host request carries or is taken from (a
// day; the server's own limits clamp it further): far from overflow.
constexpr uint64_t kMaxSameHostRemainingNs = 86400ULL * 1000000000ULL;

// Notifications (ADXL NotifyDesc): name and message, each at most 1024 bytes
// (CANN's limit); at most kMaxNotifiesPerLink of one session held unconsumed
// by the receiver (CANN's later docs: 4096 per link), the oldest kept.
constexpr uint32_t kMaxNotifyField = 1024;
constexpr uint64_t kMaxNotifyBody = 2 * (4 + kMaxNotifyField);
constexpr uint32_t kMaxNotifiesPerLink = 4096;
static_assert(kMaxNotifyBody <= kMaxControlBody, "Notify must fit the ignorable-type bound of older receivers");

// "No descriptor named" in the same-host identity (older senders end the block before it).
constexpr uint32_t kNoConnFd = UINT32_MAX;

// A transport the sender runs and what a peer needs to reach it through that
// transport (transport/transport.h: Transport::LocalMetadata), appended to
// Hello and HelloAck (version 2, after every other field: decoders that do not
// know it ignore the trailing bytes). TCP and the same-host path advertise
// nothing here (the same-host path has kCapSameHost and the identity block).
struct TransportAd {
  std::string name;      // TransportCaps::name
  std::string metadata;  // opaque to the engine
};
constexpr uint32_t kMaxTransportAds = 4;
constexpr uint32_t kMaxTransportNameLen = 16;
constexpr uint32_t kMaxTransportMetadata = 1024;
// HelloAck's library_version: a "MAJOR.MINOR.PATCH" string and room for a suffix.
constexpr uint32_t kMaxLibraryVersionLen = 64;

struct Hello {
  ConnRole role = ConnRole::kControl;
  uint32_t capabilities = 0;
  uint64_t session_id = 0;        // 0 on control connections; the session on lanes
  uint32_t lanes = 0;             // reserved: sent as 0 since version 2, ignored by every version
  uint32_t heartbeat_interval_ms = 0;  // the client pings at least this often (server: silence limit)
  uint32_t peer_timeout_ms = 0;        // and gives up on a Pong after this long
  std::string engine_id;          // sender's engine id (client's local_engine)
  std::string target_engine_id;   // the id the client used to reach the server (checked: TargetIsThisEngine)
  std::string nonce;              // client's random challenge for mutual authentication
  // Same-host path (optional): who the sender is, so the receiver can verify it
  // reaches the sender's memory (see transport/shm/cma.h).
  std::string boot_id;
  uint32_t pid = 0;
  uint64_t token_addr = 0;
  std::string token;
  uint32_t conn_fd = kNoConnFd;   // the sender's descriptor of this connection (appended field)
  // Versions the sender speaks (appended u16 pair). A Hello without them, as
  // version 1 sends it, decodes as 1..1; this default is the same, so a Hello
  // built without setting them is a version-1 Hello (OpenPeerConnection sets
  // this engine's range).
  uint16_t min_version = 1;
  uint16_t max_version = 1;
  std::vector<TransportAd> transports;  // appended: u16 count, then (name, metadata) strings
};

struct HelloAck {
  uint32_t capabilities = 0;
  uint64_t session_id = 0;
  std::string engine_id;          // server's own engine id
  std::string boot_id;            // same-host identity of the server (optional)
  uint32_t pid = 0;
  uint64_t token_addr = 0;
  std::string token;
  uint32_t conn_fd = kNoConnFd;   // the server's descriptor of this connection (appended field)
  // The version the server picked for this connection (appended u16); 0 when
  // absent, as from a version-1 server, which means version 1.
  uint16_t version = 0;
  std::vector<TransportAd> transports;  // appended after version, as in Hello
  // The server's library version (llmdd_ext::Version()), appended after the
  // transport block (written with count 0 when there are no ads); empty from
  // a server that predates the field. Diagnostics only (llmdd_doctor): no
  // behaviour depends on it.
  std::string library_version;
};

struct Range {
  uint64_t addr;
  uint64_t len;
};

// A same-host write's source allocation (kFlagSourceMappings).
struct SourceMapping {
  uint32_t fd = 0;
  uint64_t serial = 0;
  uint64_t inode = 0;
  uint64_t device = 0;
  uint64_t base = 0;
  uint64_t size = 0;
};
// Appends the trailer to a same-host write body.
void AppendSourceMappings(const std::vector<SourceMapping> &mappings, std::vector<uint8_t> *body);
// The trailer at `at` of a body of `body_len` bytes; false when malformed
// (count outside [1, kMaxSourceMappings], length not matching, a size of 0,
// a range that wraps, or entries not sorted by base and apart).
bool DecodeSourceMappings(const uint8_t *body, uint64_t body_len, uint64_t at, std::vector<SourceMapping> *out);

// Where a listed range lives in the server's memory (kFlagLeaseMappings).
struct LeaseMapping {
  uint32_t range_index = 0;
  uint32_t fd = 0;
  uint64_t serial = 0;
  uint64_t offset = 0;
  uint64_t inode = 0;
  uint64_t device = 0;
};

// `mappings` non-null: the trailer is appended (possibly with no entry).
std::string EncodeLeaseGrant(const std::vector<Range> &regions, const std::vector<LeaseMapping> *mappings = nullptr);

struct Notify {
  std::string name;
  std::string message;
};
std::string EncodeNotify(const Notify &notify);
// False when malformed: cut short, or a field over kMaxNotifyField. Trailing
// bytes are ignored (a later revision may append fields).
bool DecodeNotify(const std::string &body, Notify *out);
// False if malformed (count beyond kMaxLeaseRegions or not matching the length;
// a trailer, when `mappings` is given, with more entries than ranges, a
// range_index out of range, or not matching the length). Without `mappings`
// no trailer is accepted; with it, a body without one decodes to none.
bool DecodeLeaseGrant(const std::string &body, std::vector<Range> *regions,
                      std::vector<LeaseMapping> *mappings = nullptr);

// Little-endian integers at a byte address, whatever the host's byte order
// (written so that compilers merge them into single loads/stores).
inline void PutU16(uint8_t *p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
inline void PutU32(uint8_t *p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}
inline void PutU64(uint8_t *p, uint64_t v) {
  PutU32(p, static_cast<uint32_t>(v));
  PutU32(p + 4, static_cast<uint32_t>(v >> 32));
}
inline uint16_t GetU16(const uint8_t *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t GetU32(const uint8_t *p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint64_t GetU64(const uint8_t *p) { return uint64_t{GetU32(p)} | (uint64_t{GetU32(p + 4)} << 32); }

// Little-endian encoder/decoder helpers.
class BodyWriter {
 public:
  void U16(uint16_t v) {
    uint8_t b[2];
    PutU16(b, v);
    Append(b, sizeof(b));
  }
  void U32(uint32_t v) {
    uint8_t b[4];
    PutU32(b, v);
    Append(b, sizeof(b));
  }
  void U64(uint64_t v) {
    uint8_t b[8];
    PutU64(b, v);
    Append(b, sizeof(b));
  }
  void Str(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    Append(s.data(), s.size());
  }
  void Bytes(const void *data, size_t len) { Append(data, len); }
  const std::string &Data() const { return data_; }
  std::string &MutableData() { return data_; }

 private:
  void Append(const void *p, size_t n) { data_.append(static_cast<const char *>(p), n); }
  std::string data_;
};

class BodyReader {
 public:
  BodyReader(const void *data, size_t len) : p_(static_cast<const uint8_t *>(data)), left_(len) {}
  bool U16(uint16_t *v) {
    uint8_t b[2];
    if (!Take(b, sizeof(b))) return false;
    *v = GetU16(b);
    return true;
  }
  bool U32(uint32_t *v) {
    uint8_t b[4];
    if (!Take(b, sizeof(b))) return false;
    *v = GetU32(b);
    return true;
  }
  bool U64(uint64_t *v) {
    uint8_t b[8];
    if (!Take(b, sizeof(b))) return false;
    *v = GetU64(b);
    return true;
  }
  bool Str(std::string *s, uint32_t max_len) {
    uint32_t n = 0;
    if (!U32(&n) || n > max_len || n > left_) return false;
    s->assign(reinterpret_cast<const char *>(p_), n);
    p_ += n;
    left_ -= n;
    return true;
  }
  size_t Left() const { return left_; }

 private:
  bool Take(void *out, size_t n) {
    if (left_ < n) return false;
    memcpy(out, p_, n);
    p_ += n;
    left_ -= n;
    return true;
  }
  const uint8_t *p_;
  size_t left_;
};

// Header checks common to every message: magic, version, known (or
// ignorable) type, body bound for that type. `version` is what the connection carries:
// kHandshakeVersion until HelloAck, then the negotiated one
// (ByteStream::ProtocolVersion()). Returns an empty string when valid, else
// the reason.
std::string CheckHeader(const MsgHeader &header, uint16_t version = kHandshakeVersion);

std::string EncodeHello(const Hello &hello);
// False when malformed (also: a version range with min 0 or min > max).
bool DecodeHello(const std::string &body, Hello *out);
// Carries nothing derived from the secret: the server proves itself only in
// AuthConfirm, after the client has proved it knows the secret.
struct AuthChallenge {
  std::string server_nonce;
};
std::string EncodeAuthChallenge(const AuthChallenge &c);
// Exactly the nonce: a body with anything after it (such as the server proof
// that earlier revisions of the protocol sent here) is refused.
bool DecodeAuthChallenge(const std::string &body, AuthChallenge *out);

std::string EncodeHelloAck(const HelloAck &ack);
bool DecodeHelloAck(const std::string &body, HelloAck *out);

// Range-list body of Read/Write requests.
void EncodeRangeHeader(uint32_t count, uint32_t timeout_ms, uint64_t total, uint8_t out[kRangeBodyHeader]);
// Validates count against body_len and the limits; returns "" or the reason.
// entry_size: kRangeEntrySize, or kSameHostEntrySize for same-host requests;
// write_hold: a same-host write with kFlagWriteHold (kSameHostHoldSize more);
// source_mappings: with kFlagSourceMappings (a trailer of 1..kMaxSourceMappings
// entries follows the ranges; DecodeSourceMappings checks it exactly).
std::string DecodeRangeHeader(const uint8_t in[kRangeBodyHeader], uint64_t body_len, uint32_t *count,
                              uint32_t *timeout_ms, uint64_t *total, uint64_t entry_size = kRangeEntrySize,
                              bool write_hold = false, bool source_mappings = false);

}  // namespace llmdd::wire
