// Writes the checked-in seed corpus of the fuzz targets (tests/fuzz/corpus/)
// from the project's own encoders, so seeds follow the wire format exactly and
// can be regenerated after a format change:
//   build-fuzz/tests/fuzz/make_fuzz_seeds tests/fuzz/corpus
// Output is deterministic (no addresses, no randomness): rerunning it on an
// unchanged tree leaves git clean. Crash reproducers and regression seeds kept
// next to these files are not touched.
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "datadist/link_messages.h"
#include "engine/wire.h"

using namespace llmdd;

namespace {

std::string g_root;
int g_written = 0;

void MakeDir(const std::string &path) {
  if (mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "make_fuzz_seeds: mkdir %s: %s\n", path.c_str(), strerror(errno));
    exit(1);
  }
}

void Seed(const std::string &target, const std::string &name, const std::string &bytes) {
  MakeDir(g_root + "/" + target);
  std::string path = g_root + "/" + target + "/" + name;
  FILE *f = fopen(path.c_str(), "wb");
  if (f == nullptr || fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || fclose(f) != 0) {
    fprintf(stderr, "make_fuzz_seeds: cannot write %s\n", path.c_str());
    exit(1);
  }
  ++g_written;
}

std::string Header(wire::MsgType type, uint64_t body_len, uint64_t payload_len = 0, uint64_t request_id = 0,
                   uint32_t status = 0, uint32_t flags = 0) {
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(type);
  h.body_len = body_len;
  h.payload_len = payload_len;
  h.request_id = request_id;
  h.status = status;
  h.flags = flags;
  return std::string(reinterpret_cast<const char *>(&h), sizeof(h));
}

std::string Message(wire::MsgType type, const std::string &body, uint64_t request_id = 0, uint32_t status = 0,
                    uint32_t flags = 0) {
  return Header(type, body.size(), 0, request_id, status, flags) + body;
}

std::string U64(uint64_t v) { return std::string(reinterpret_cast<const char *>(&v), 8); }

wire::Hello MakeHello(wire::ConnRole role, bool with_nonce) {
  wire::Hello hello;
  hello.role = role;
  hello.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages;
  hello.session_id = role == wire::ConnRole::kControl ? 0 : 0x1122334455667788ULL;
  hello.lanes = 4;
  hello.heartbeat_interval_ms = 1000;
  hello.peer_timeout_ms = 10000;
  hello.engine_id = "127.0.0.1:26001";
  hello.target_engine_id = "127.0.0.1:26000";
  hello.min_version = wire::kMinVersion;
  hello.max_version = wire::kMaxVersion;
  if (with_nonce) hello.nonce = std::string(32, 'n');
  return hello;
}

std::string HelloBody(wire::ConnRole role, bool with_nonce) { return wire::EncodeHello(MakeHello(role, with_nonce)); }

// Read/Write request: header + range list (+ payload for writes).
struct RangeSpec {
  uint64_t addr;
  uint64_t len;
};
std::string Transfer(bool is_read, const std::vector<RangeSpec> &ranges, uint64_t request_id,
                     const std::string &payload = std::string(), uint32_t timeout_ms = 1000) {
  uint64_t total = 0;
  std::string entries;
  for (const RangeSpec &r : ranges) {
    entries += U64(r.addr) + U64(r.len);
    total += r.len;
  }
  uint8_t head[wire::kRangeBodyHeader];
  wire::EncodeRangeHeader(static_cast<uint32_t>(ranges.size()), timeout_ms, total, head);
  std::string body = std::string(reinterpret_cast<const char *>(head), sizeof(head)) + entries;
  return Header(is_read ? wire::MsgType::kReadRequest : wire::MsgType::kWriteRequest, body.size(),
                is_read ? 0 : payload.size(), request_id) +
         body + (is_read ? std::string() : payload);
}

// Same-host request: flags kFlagSameHost, the requester's remaining time, entries
// (server addr, len, requester's addr), no payload.
struct SameHostRange {
  uint64_t addr;
  uint64_t len;
  uint64_t local;
};
// remaining_ns: the requester's remaining time, counted by the server from
// when it reads the request; ~0 = as long as the server allows, 0 = none left.
std::string SameHost(bool is_read, const std::vector<SameHostRange> &ranges, uint64_t request_id,
                     uint32_t timeout_ms = 1000, uint64_t remaining_ns = ~0ULL) {
  uint64_t total = 0;
  std::string entries = U64(remaining_ns);
  for (const SameHostRange &r : ranges) {
    entries += U64(r.addr) + U64(r.len) + U64(r.local);
    total += r.len;
  }
  uint8_t head[wire::kRangeBodyHeader];
  wire::EncodeRangeHeader(static_cast<uint32_t>(ranges.size()), timeout_ms, total, head);
  std::string body = std::string(reinterpret_cast<const char *>(head), sizeof(head)) + entries;
  return Header(is_read ? wire::MsgType::kReadRequest : wire::MsgType::kWriteRequest, body.size(), 0, request_id, 0,
                wire::kFlagSameHost) +
         body;
}

std::string Release(uint64_t request_id) { return Header(wire::MsgType::kRelease, 0, 0, request_id); }

// A same-host identity as it travels in Hello / HelloAck. fuzz_handshake reads
// "@self", pid 0xFFFFFFFF and token_addr 0xADD1000000000000 as "this process's
// own value" (what a peer learns from the handshake).
template <typename T>
void SetIdentity(T *msg, const std::string &boot_id, uint32_t pid, uint64_t token_addr, const std::string &token) {
  msg->boot_id = boot_id;
  msg->pid = pid;
  msg->token_addr = token_addr;
  msg->token = token;
}

// fuzz_serve_lane's region-relative address (see the target's header comment).
uint64_t Rel(unsigned region, int32_t offset) {
  return (0xADD1ULL << 48) | (static_cast<uint64_t>(region) << 40) | static_cast<uint32_t>(offset);
}

std::string Flags(uint8_t f) { return std::string(1, static_cast<char>(f)); }

void WireSeeds() {
  const char *t = "fuzz_wire";
  using wire::ConnRole;
  using wire::MsgType;
  Seed(t, "hello_control", Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)));
  Seed(t, "hello_lane_nonce", Message(MsgType::kHello, HelloBody(ConnRole::kDataLane, true)));
  Seed(t, "hello_body_only", HelloBody(ConnRole::kReverseLane, true));
  wire::HelloAck ack;
  ack.capabilities = 3;
  ack.session_id = 42;
  ack.engine_id = "127.0.0.1:26000";
  ack.version = wire::kMaxVersion;
  Seed(t, "hello_ack", Message(MsgType::kHelloAck, wire::EncodeHelloAck(ack)));
  {
    wire::Hello v1 = MakeHello(ConnRole::kControl, false);
    v1.min_version = v1.max_version = 1;
    std::string body = wire::EncodeHello(v1);
    body.resize(body.size() - 4);  // as version 1 sends it: no range
    Seed(t, "hello_v1", Message(MsgType::kHello, body));
  }
  Seed(t, "ignorable_request", Message(static_cast<MsgType>(wire::kFirstIgnorableType + 1), "optional", 7));
  Seed(t, "notify", Message(MsgType::kNotify, wire::EncodeNotify({"kv-ready/req-17", "layers 0..31"}), 11));
  Seed(t, "notify_body_only", wire::EncodeNotify({std::string(1024, 'n'), std::string(1024, 'm')}));
  Seed(t, "notify_ack", Message(MsgType::kNotifyAck, "engine holds 4096 unconsumed notifies", 11, 203900));
  wire::AuthChallenge challenge{std::string(32, 's')};
  Seed(t, "auth_challenge", Message(MsgType::kAuthChallenge, wire::EncodeAuthChallenge(challenge)));
  Seed(t, "auth_response", Message(MsgType::kAuthResponse, std::string(32, 'q')));
  Seed(t, "auth_confirm", Message(MsgType::kAuthConfirm, std::string(32, 'p')));
  Seed(t, "ping", Header(MsgType::kPing, 0, 0, 9));
  Seed(t, "error", Message(MsgType::kError, "no such session (reconnect)", 0, 4));
  Seed(t, "read_request", Transfer(true, {{0x7f0000001000, 64}, {0x7f0000002000, 128}}, 1));
  Seed(t, "write_request", Transfer(false, {{0x7f0000001000, 8}}, 2, "ABCDEFGH"));
  Seed(t, "range_body_only", Transfer(true, {{0x1000, 16}}, 3).substr(sizeof(wire::MsgHeader)));
  Seed(t, "read_response", Header(MsgType::kReadResponse, 0, 64, 1));
  Seed(t, "app_request", Message(MsgType::kAppRequest, datadist::EncodeLinkRequest({5, 6}), 4, 0, 1));
  Seed(t, "link_request", datadist::EncodeLinkRequest({1, 2}));
  Seed(t, "unlink", datadist::EncodeUnlink(3));
  Seed(t, "cache_query", datadist::EncodeCacheQuery(-1));
  datadist::CacheGeometry geometry;
  geometry.num_tensors = 2;
  geometry.tensor_size = 4096;
  geometry.row_count = 4;
  geometry.stride = 1024;
  geometry.addrs = {0x10000, 0x20000};
  Seed(t, "geometry", datadist::EncodeGeometry(geometry));
  {
    wire::Hello hello = MakeHello(ConnRole::kControl, true);
    SetIdentity(&hello, "8c5f0a7e-4b7e-4c62-9d1f-2b1f0c9e7a11", 4242, 0x7f00deadb000, std::string(32, 't'));
    Seed(t, "hello_same_host", Message(MsgType::kHello, wire::EncodeHello(hello)));
    wire::HelloAck with_id = ack;
    SetIdentity(&with_id, "8c5f0a7e-4b7e-4c62-9d1f-2b1f0c9e7a11", 4243, 0x7f00deadc000, std::string(32, 'u'));
    Seed(t, "hello_ack_same_host", Message(MsgType::kHelloAck, wire::EncodeHelloAck(with_id)));
  }
  Seed(t, "same_host_read", SameHost(true, {{0x7f0000001000, 64, 0x7f0000009000}}, 6));
  Seed(t, "same_host_write", SameHost(false, {{0x7f0000001000, 8, 0x7f0000009000}, {0x7f0000002000, 8, 1}}, 7));
  Seed(t, "release", Release(6));
  Seed(t, "lease", Header(MsgType::kReadResponse, 0, 0, 6, 0, 1000));
  Seed(t, "app_response_geometry", Message(MsgType::kAppResponse, datadist::EncodeGeometry(geometry), 5));
}

void ServeLaneSeeds() {
  const char *t = "fuzz_serve_lane";
  using wire::MsgType;
  // Region indexes: 0 = A (256 B rw), 1 = B (64 B), 2 = C (A + 64, 64 B ro), 3 = D (removed).
  Seed(t, "read_a", Flags(0) + Transfer(true, {{Rel(0, 0), 64}}, 1));
  Seed(t, "write_a", Flags(0) + Transfer(false, {{Rel(0, 16), 32}}, 1, std::string(32, 'w')));
  Seed(t, "read_a_whole", Flags(0) + Transfer(true, {{Rel(0, 0), 256}}, 1));
  Seed(t, "pipeline",
       Flags(0) + Transfer(true, {{Rel(0, 0), 16}, {Rel(1, 8), 32}}, 1) +
           Transfer(false, {{Rel(0, 200), 56}, {Rel(1, 0), 4}}, 2, std::string(60, 'p')) +
           Transfer(true, {{Rel(1, 0), 64}}, 3));
  Seed(t, "b_read_only", Flags(1 << 1) + Transfer(true, {{Rel(1, 0), 64}}, 1) +
                             Transfer(false, {{Rel(1, 0), 16}}, 2, std::string(16, 'x')) +
                             Transfer(true, {{Rel(0, 0), 8}}, 3));
  Seed(t, "b_write_only", Flags(2 << 1) + Transfer(false, {{Rel(1, 0), 64}}, 1, std::string(64, 'y')) +
                              Transfer(true, {{Rel(1, 0), 64}}, 2) + Transfer(true, {{Rel(0, 0), 8}}, 3));
  Seed(t, "b_unregistered", Flags(3 << 1) + Transfer(true, {{Rel(1, 0), 8}}, 1) +
                                Transfer(false, {{Rel(1, 0), 8}}, 2, std::string(8, 'z')));
  Seed(t, "c_overlap", Flags(8) + Transfer(true, {{Rel(2, 0), 64}}, 1) +
                           Transfer(false, {{Rel(2, 8), 8}}, 2, std::string(8, 'c')));
  // Standing read leases: granted on a same-host lane (bit 4), with B write-only (bits 1-2 = 2) and C
  // registered (bit 3), so the grant must list A and C but not B; refused on an unverified lane.
  Seed(t, "lease_same_host", Flags(0x10 | (2 << 1) | 8) + Header(MsgType::kLeaseRequest, 0, 0, 1) +
                                 Transfer(true, {{Rel(0, 0), 16}}, 2) + Header(MsgType::kLeaseRequest, 0, 0, 3));
  Seed(t, "lease_unverified", Flags(0) + Header(MsgType::kLeaseRequest, 0, 0, 1));
  Seed(t, "d_removed", Flags(0) + Transfer(true, {{Rel(3, 0), 16}}, 1) +
                           Transfer(false, {{Rel(3, 0), 16}}, 2, std::string(16, 'd')));
  Seed(t, "edges", Flags(0) + Transfer(true, {{Rel(0, 250), 16}}, 1) + Transfer(true, {{Rel(0, -8), 16}}, 2) +
                       Transfer(true, {{Rel(0, 255), 1}}, 3) + Transfer(true, {{Rel(0, 0), 0}}, 4) +
                       Transfer(true, {{~0ULL - 7, 16}}, 5) + Transfer(true, {{0, 16}}, 6));
  Seed(t, "overflowing_lengths",
       Flags(0) + Transfer(true, {{Rel(0, 0), 16}, {Rel(0, 0), ~0ULL - 7}}, 1) +
           Transfer(false, {{Rel(0, 0), 1ULL << 63}, {Rel(0, 0), 1ULL << 63}}, 2, std::string()));
  {
    // A write whose payload does not match the declared total.
    std::string w = Transfer(false, {{Rel(0, 0), 8}}, 1, std::string(8, 'm'));
    wire::MsgHeader h;
    memcpy(&h, w.data(), sizeof(h));
    h.payload_len = 4;
    memcpy(w.data(), &h, sizeof(h));
    Seed(t, "write_total_mismatch", Flags(0) + w.substr(0, w.size() - 4));
  }
  {
    // Range count that does not match body_len.
    std::string r = Transfer(true, {{Rel(0, 0), 8}, {Rel(0, 8), 8}}, 1);
    uint32_t count = 3;
    memcpy(r.data() + sizeof(wire::MsgHeader), &count, 4);
    Seed(t, "bad_count", Flags(0) + r);
  }
  Seed(t, "app_link", Flags(1) + Message(MsgType::kAppRequest, datadist::EncodeLinkRequest({5, 6}), 1, 0, 1) +
                          Message(MsgType::kAppRequest, datadist::EncodeUnlink(5), 2, 0, 2) +
                          Message(MsgType::kAppRequest, datadist::EncodeCacheQuery(7), 3, 0, 3) +
                          Message(MsgType::kAppRequest, "??", 4, 0, 99));
  Seed(t, "app_no_handler", Flags(0) + Message(MsgType::kAppRequest, datadist::EncodeCacheQuery(7), 1, 0, 3));
  Seed(t, "ping_on_lane", Flags(0) + Header(MsgType::kPing, 0, 0, 1));
  Seed(t, "truncated_body", Flags(0) + Transfer(true, {{Rel(0, 0), 8}}, 1).substr(0, 50));
  Seed(t, "truncated_payload", Flags(0) + Transfer(false, {{Rel(0, 0), 64}}, 1, std::string(64, 't')).substr(0, 100));
  // Same-host path (flag bit 4): region 4 = R is the requester's buffer.
  const uint8_t kSameHostOn = 16;
  Seed(t, "sh_write", Flags(kSameHostOn) + SameHost(false, {{Rel(0, 0), 32, Rel(4, 0)}}, 1) +
                          SameHost(false, {{Rel(0, 32), 8, Rel(4, 8)}, {Rel(0, 100), 16, Rel(4, 64)}}, 2) +
                          Transfer(true, {{Rel(0, 0), 64}}, 3));
  Seed(t, "sh_read_release", Flags(kSameHostOn) + SameHost(true, {{Rel(0, 0), 64, Rel(4, 0)}}, 1) + Release(1) +
                                 SameHost(true, {{Rel(0, 64), 8, Rel(4, 0)}, {Rel(0, 0), 8, Rel(4, 8)}}, 2) +
                                 Release(2) + Transfer(true, {{Rel(0, 0), 8}}, 3));
  Seed(t, "sh_read_no_release", Flags(kSameHostOn) + SameHost(true, {{Rel(0, 0), 16, Rel(4, 0)}}, 1));
  Seed(t, "sh_read_wrong_release", Flags(kSameHostOn) + SameHost(true, {{Rel(0, 0), 16, Rel(4, 0)}}, 1) + Release(9) +
                                       Transfer(true, {{Rel(0, 0), 8}}, 2));
  Seed(t, "sh_not_verified", Flags(0) + SameHost(false, {{Rel(0, 0), 16, Rel(4, 0)}}, 1));
  Seed(t, "sh_b_write_only", Flags(kSameHostOn | (2 << 1)) + SameHost(true, {{Rel(1, 0), 16, Rel(4, 0)}}, 1) +
                                 SameHost(false, {{Rel(1, 0), 16, Rel(4, 0)}}, 2));
  Seed(t, "sh_b_read_only", Flags(kSameHostOn | (1 << 1)) + SameHost(false, {{Rel(1, 0), 16, Rel(4, 0)}}, 1) +
                                SameHost(true, {{Rel(1, 0), 16, Rel(4, 0)}}, 2) + Release(2));
  Seed(t, "sh_removed_region", Flags(kSameHostOn) + SameHost(false, {{Rel(3, 0), 16, Rel(4, 0)}}, 1) +
                                   SameHost(true, {{Rel(3, 0), 16, Rel(4, 0)}}, 2));
  Seed(t, "sh_unmapped_source", Flags(kSameHostOn) + SameHost(false, {{Rel(0, 0), 16, 0x10}}, 1) +
                                    SameHost(false, {{Rel(0, 0), 16, Rel(4, 120)}}, 2));
  Seed(t, "sh_past_deadline", Flags(kSameHostOn) + SameHost(false, {{Rel(0, 0), 16, Rel(4, 0)}}, 1, 1000, 0) +
                                  SameHost(true, {{Rel(0, 0), 16, Rel(4, 0)}}, 2, 1000, 1) + Release(2));
}

void HandshakeSeeds() {
  const char *t = "fuzz_handshake";
  using wire::ConnRole;
  using wire::MsgType;
  // After a Hello that offers this engine's versions, messages carry the negotiated (highest) one.
  auto v2 = [](std::string message) {
    message[4] = static_cast<char>(wire::kMaxVersion);
    return message;
  };
  const std::string ping = v2(Header(MsgType::kPing, 0, 0, 1)), goodbye = v2(Header(MsgType::kGoodbye, 0, 0, 2));
  const std::string v1_ping = Header(MsgType::kPing, 0, 0, 1), v1_goodbye = Header(MsgType::kGoodbye, 0, 0, 2);
  Seed(t, "server_control", Flags(0) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)) + ping +
                                ping + goodbye);
  Seed(t, "server_lane", Flags(0) + Message(MsgType::kHello, HelloBody(ConnRole::kDataLane, false)));
  Seed(t, "server_control_body", Flags(0) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)) +
                                     Message(MsgType::kPing, "x", 1));
  Seed(t, "server_secret", Flags(1) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, true)) +
                               Message(MsgType::kAuthResponse, std::string(32, 'r')));
  Seed(t, "server_secret_no_nonce", Flags(1) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)));
  Seed(t, "server_secret_confirm_instead", Flags(1) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, true)) +
                                               Message(MsgType::kAuthConfirm, std::string(32, 'p')));
  Seed(t, "server_not_hello", Flags(0) + v1_ping);
  {
    // Versions: a version-1 client (no range), a disjoint range.
    wire::Hello v1 = MakeHello(ConnRole::kControl, false);
    std::string body = wire::EncodeHello(v1);
    body.resize(body.size() - 4);
    Seed(t, "server_control_v1", Flags(0) + Message(MsgType::kHello, body) + v1_ping + v1_goodbye);
    wire::Hello future = MakeHello(ConnRole::kControl, false);
    future.min_version = wire::kMaxVersion + 1;
    future.max_version = wire::kMaxVersion + 5;
    Seed(t, "server_versions_disjoint", Flags(0) + Message(MsgType::kHello, wire::EncodeHello(future)));
    wire::Hello cluster = MakeHello(ConnRole::kControl, false);
    cluster.target_engine_id = "7";  // an LLM-DataDist cluster id; the harness is ADXL engine 127.0.0.1:26000
    Seed(t, "server_wrong_target", Flags(0) + Message(MsgType::kHello, wire::EncodeHello(cluster)));
    // Ignorable messages (a request, a notification) on an established control connection.
    const std::string ignorable_request = v2(Message(static_cast<MsgType>(wire::kFirstIgnorableType), "optional", 5));
    const std::string ignorable_note = v2(Message(static_cast<MsgType>(wire::kFirstIgnorableType + 3), "note", 0));
    Seed(t, "server_control_ignorable", Flags(0) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)) +
                                            ignorable_request + ignorable_note + ping);
    // Notifications: stored and acknowledged, the third from one link refused
    // (the harness's inbox holds 2 per link), a malformed one, then a ping.
    std::string notifies;
    for (int k = 0; k < 3; ++k)
      notifies += v2(Message(MsgType::kNotify, wire::EncodeNotify({"n" + std::to_string(k), "m"}), 20 + k));
    notifies += v2(Message(MsgType::kNotify, std::string("\x05\x00\x00\x00" "ab", 6), 30));
    Seed(t, "server_control_notify", Flags(0) + Message(MsgType::kHello, HelloBody(ConnRole::kControl, false)) +
                                         notifies + ping + goodbye);
  }
  {
    wire::Hello other = MakeHello(ConnRole::kControl, false);
    SetIdentity(&other, "@self", 1, 0x1000, std::string(32, 'x'));
    Seed(t, "server_same_host_other", Flags(0) + Message(MsgType::kHello, wire::EncodeHello(other)) + ping);
    // Regression: a peer replays the server's own identity (from its HelloAck).
    wire::Hello self = MakeHello(ConnRole::kControl, false);
    SetIdentity(&self, "@self", 0xFFFFFFFFu, 0xADD1000000000000ULL, "@self");
    Seed(t, "regress_same_host_self_identity_server", Flags(0) + Message(MsgType::kHello, wire::EncodeHello(self)));
    // Regression (found by fuzz_handshake): no token needed, any 32 known bytes
    // of the process do; here zeros at an address of ASan's shadow memory.
    wire::Hello zeros = MakeHello(ConnRole::kControl, false);
    SetIdentity(&zeros, "@self", 0xFFFFFFFFu, 0x6ff000000f0ULL, std::string(32, '\0'));
    Seed(t, "regress_same_host_zero_token_server", Flags(0) + Message(MsgType::kHello, wire::EncodeHello(zeros)));
  }
  Seed(t, "server_bad_magic", Flags(0) + std::string(40, 'L'));
  wire::HelloAck ack;
  ack.capabilities = wire::kCapReverseLanes | wire::kCapAppMessages;
  ack.session_id = 0x55;
  ack.engine_id = "127.0.0.1:26000";
  ack.version = wire::kMaxVersion;
  const std::string ack_msg = Message(MsgType::kHelloAck, wire::EncodeHelloAck(ack));
  {
    wire::HelloAck v1 = ack;
    std::string body = wire::EncodeHelloAck(v1);
    body.resize(body.size() - 2);  // a version-1 server says no version
    Seed(t, "client_ack_v1", Flags(2) + Message(MsgType::kHelloAck, body));
    v1.version = wire::kMaxVersion + 1;
    Seed(t, "client_ack_version_not_offered", Flags(2) + Message(MsgType::kHelloAck, wire::EncodeHelloAck(v1)));
  }
  wire::AuthChallenge challenge{std::string(32, 's')};
  const std::string challenge_msg = Message(MsgType::kAuthChallenge, wire::EncodeAuthChallenge(challenge));
  // The server's proof comes only after the client's (AuthConfirm); no input
  // can carry the right one (it depends on the client's random nonce).
  const std::string confirm_msg = Message(MsgType::kAuthConfirm, std::string(32, 'p'));
  Seed(t, "client_ack", Flags(2) + ack_msg);
  Seed(t, "client_secret", Flags(3) + challenge_msg + confirm_msg + ack_msg);
  Seed(t, "client_secret_no_challenge", Flags(3) + ack_msg);
  Seed(t, "client_secret_no_confirm", Flags(3) + challenge_msg + ack_msg);
  Seed(t, "client_secret_confirm_first", Flags(3) + confirm_msg + challenge_msg + ack_msg);
  Seed(t, "client_secret_refused", Flags(3) + challenge_msg +
                                       Message(MsgType::kError, "authentication failed: wrong proof", 0, 503900));
  Seed(t, "client_confirm_without_secret", Flags(2) + confirm_msg + ack_msg);
  Seed(t, "client_challenge_without_secret", Flags(2) + challenge_msg);
  Seed(t, "client_refused", Flags(2) + Message(MsgType::kError, "authentication failed", 0, 4));
  Seed(t, "client_malformed_ack", Flags(2) + Message(MsgType::kHelloAck, "\x01\x02"));
  {
    wire::HelloAck other = ack;
    SetIdentity(&other, "@self", 1, 0x1000, std::string(32, 'x'));
    Seed(t, "client_same_host_other", Flags(2) + Message(MsgType::kHelloAck, wire::EncodeHelloAck(other)));
    // Regression: a server echoes the client's own identity (from its Hello).
    wire::HelloAck self = ack;
    SetIdentity(&self, "@self", 0xFFFFFFFFu, 0xADD1000000000000ULL, "@self");
    Seed(t, "regress_same_host_self_identity_client", Flags(2) + Message(MsgType::kHelloAck, wire::EncodeHelloAck(self)));
  }
}

void RequesterSeeds() {
  const char *t = "fuzz_requester";
  using wire::MsgType;
  // Operations: four nibbles, low first: 0 READ 1 seg (16 B), 1 WRITE 2 segs, 2 app call,
  // 3 READ 3 segs (56 B), 4 same-host READ 2 segs, 5 same-host WRITE 1 seg, 6 read lease request.
  auto ops = [](uint16_t v) { return std::string(reinterpret_cast<const char *>(&v), 2); };
  auto read_resp = [](uint64_t id, uint64_t len, uint32_t status = 0) {
    return Header(MsgType::kReadResponse, 0, status == 0 ? len : 0, id, status) +
           (status == 0 ? std::string(len, 'r') : std::string());
  };
  auto lease = [](uint64_t id, uint32_t ms) { return Header(MsgType::kReadResponse, 0, 0, id, 0, ms); };
  Seed(t, "read_ok", ops(0x0000) + read_resp(1, 16) + read_resp(2, 16) + read_resp(3, 16) + read_resp(4, 16));
  Seed(t, "write_ok", ops(0x1111) + Header(MsgType::kWriteResponse, 0, 0, 1) + Header(MsgType::kWriteResponse, 0, 0, 2));
  Seed(t, "app_ok", ops(0x2222) + Message(MsgType::kAppResponse, "geometry", 1) +
                        Message(MsgType::kAppResponse, "", 2, 6));
  Seed(t, "mixed", ops(0x3210) + read_resp(1, 16) + Header(MsgType::kWriteResponse, 0, 0, 2) +
                       Message(MsgType::kAppResponse, "ok", 3) + read_resp(4, 56));
  Seed(t, "refused", ops(0x0000) + Message(MsgType::kReadResponse, "range is not inside memory", 1, 103900) +
                         read_resp(2, 16));
  Seed(t, "undocumented_status", ops(0x0000) + Message(MsgType::kReadResponse, "?", 1, 103) + read_resp(2, 16));
  Seed(t, "error", ops(0x1111) + Message(MsgType::kError, "bad request", 0, 103900));
  Seed(t, "wrong_id", ops(0x0000) + read_resp(9, 16));
  Seed(t, "short_read", ops(0x3333) + read_resp(1, 40));
  Seed(t, "same_host_read", ops(0x4444) + lease(1, 1000) + lease(2, 10000) + lease(3, 0) + lease(4, 50000));
  Seed(t, "same_host_write", ops(0x5555) + Header(MsgType::kWriteResponse, 0, 0, 1) +
                                 Message(MsgType::kWriteResponse, "same-host copy failed", 2, 103900));
  Seed(t, "same_host_mixed", ops(0x4150) + read_resp(1, 16) + Header(MsgType::kWriteResponse, 0, 0, 2) +
                                 Header(MsgType::kWriteResponse, 0, 0, 3) + lease(4, 500));
  Seed(t, "same_host_read_payload", ops(0x4444) + read_resp(1, 56));
  const std::string grant = wire::EncodeLeaseGrant({{0x10000, 4096}, {0x7f0000000000ULL, 1ULL << 20}});
  Seed(t, "lease_ok", ops(0x6666) + Message(MsgType::kLeaseGrant, grant, 1, 0, wire::kStandingLeaseMs) +
                          Message(MsgType::kLeaseGrant, wire::EncodeLeaseGrant({}), 2, 0, 50000) +
                          Message(MsgType::kLeaseGrant, grant, 3, 103905, 100));
  Seed(t, "lease_refused", ops(0x6666) + Message(MsgType::kError, "read lease requested on a connection whose peer "
                                                                  "was not verified", 1, 103900));
  Seed(t, "lease_malformed", ops(0x6666) + Message(MsgType::kLeaseGrant, grant.substr(0, 20), 1));
}

void ParserSeeds() {
  const char *t = "fuzz_parsers";
  auto fields = [](const std::vector<std::string> &list) {
    std::string out;
    for (size_t i = 0; i < list.size(); ++i) out += (i ? std::string(1, '\0') : std::string()) + list[i];
    return out;
  };
  Seed(t, "endpoints", fields({"127.0.0.1:26000", "[::1]:8080", "::1", "10.0.0.1", "1.2.3.4:-1", "[fe80::1]"}));
  Seed(t, "bad_endpoints", fields({"127.0.0.1:65536", "[::1", "[::1]x", "1.2.3:80", ":80", "host:1", ""}));
  Seed(t, "integers", fields({"+42", "-9223372036854775808", "18446744073709551615", "0", "+-1", "007"}));
  Seed(t, "options", fields({"llmdd.TcpConnections", "4", "llmdd.HeartbeatIntervalMs", "100", "llmdd.PeerTimeoutMs",
                             "500", "llmdd.WorkerThreads", "16", "llmdd.AuthSecret", "0123456789abcdef",
                             "llmdd.Transport", "shm"}));
  // 15 bytes: one short of the minimum, refused.
  Seed(t, "options_short_secret", fields({"llmdd.AuthSecret", "0123456789abcde"}));
  Seed(t, "cann_options", fields({"adxl.BufferPool", "4:8", "adxl.RdmaTrafficClass", "132", "adxl.RdmaServiceLevel",
                                  "5", "BufferPool", "0:0", "unknown.key", "x"}));
  Seed(t, "fault_plan", "seed=7,delay=0.05:20,stall=0.01,drop=0.01,corrupt=0.01,close=0.01,partial=0.01,register=0.1");
  Seed(t, "bad_fault_plan", fields({"seed=-1,delay=2", "bogus=1", "delay=0.5:70000", "noequals"}));
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <corpus-dir>   (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  MakeDir(g_root);
  WireSeeds();
  ServeLaneSeeds();
  HandshakeSeeds();
  RequesterSeeds();
  ParserSeeds();
  printf("make_fuzz_seeds: wrote %d seeds under %s\n", g_written, g_root.c_str());
  return 0;
}
