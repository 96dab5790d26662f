#include "engine/wire.h"

#include <algorithm>

namespace llmdd::wire {

const char *MsgTypeName(uint16_t type) {
  switch (static_cast<MsgType>(type)) {
    case MsgType::kHello: return "Hello";
    case MsgType::kHelloAck: return "HelloAck";
    case MsgType::kPing: return "Ping";
    case MsgType::kPong: return "Pong";
    case MsgType::kGoodbye: return "Goodbye";
    case MsgType::kGoodbyeAck: return "GoodbyeAck";
    case MsgType::kError: return "Error";
    case MsgType::kAuthChallenge: return "AuthChallenge";
    case MsgType::kAuthResponse: return "AuthResponse";
    case MsgType::kAuthConfirm: return "AuthConfirm";
    case MsgType::kReverseLaneWanted: return "ReverseLaneWanted";
    case MsgType::kReadRequest: return "ReadRequest";
    case MsgType::kReadResponse: return "ReadResponse";
    case MsgType::kWriteRequest: return "WriteRequest";
    case MsgType::kWriteResponse: return "WriteResponse";
    case MsgType::kRelease: return "Release";
    case MsgType::kLeaseRequest: return "LeaseRequest";
    case MsgType::kLeaseGrant: return "LeaseGrant";
    case MsgType::kAppRequest: return "AppRequest";
    case MsgType::kAppResponse: return "AppResponse";
    case MsgType::kNotify: return "Notify";
    case MsgType::kNotifyAck: return "NotifyAck";
  }
  return "Unknown";
}

bool IsKnownType(uint16_t type) { return std::string_view(MsgTypeName(type)) != "Unknown"; }

uint16_t NegotiateVersion(uint16_t peer_min, uint16_t peer_max, uint16_t our_min, uint16_t our_max) {
  const uint16_t low = std::max(peer_min, our_min), high = std::min(peer_max, our_max);
  return low <= high && high >= 1 ? high : 0;
}

std::string VersionRange(uint16_t min, uint16_t max) {
  return min == max ? std::to_string(min) : std::to_string(min) + ".." + std::to_string(max);
}

std::string CheckHeader(const MsgHeader &header, uint16_t version) {
  if (header.magic != kMagic) return "bad magic (not an llm_datadist engine peer)";
  if (header.version != version) {
    if (version == kHandshakeVersion)
      return "unsupported protocol version " + std::to_string(header.version) + " in a handshake message (they " +
             "carry version " + std::to_string(kHandshakeVersion) + "; this engine speaks " +
             VersionRange(kMinVersion, kMaxVersion) + ")";
    return "protocol version " + std::to_string(header.version) + " on a connection that negotiated version " +
           std::to_string(version);
  }
  uint64_t max_body = 0;
  bool payload_allowed = false;
  switch (static_cast<MsgType>(header.type)) {
    case MsgType::kHello:
    case MsgType::kHelloAck:
    case MsgType::kPing:
    case MsgType::kPong:
    case MsgType::kGoodbye:
    case MsgType::kGoodbyeAck:
    case MsgType::kError:
    case MsgType::kAuthChallenge:
    case MsgType::kAuthResponse:
    case MsgType::kAuthConfirm:
      max_body = kMaxControlBody;
      break;
    case MsgType::kRelease:
    case MsgType::kLeaseRequest:
    case MsgType::kReverseLaneWanted:
      max_body = 0;
      break;
    case MsgType::kLeaseGrant:
      max_body = kLeaseGrantHeader + 16ULL * kMaxLeaseRegions + kLeaseMappingHeader +
                 kLeaseMappingEntrySize * kMaxLeaseRegions;
      break;
    case MsgType::kReadRequest:
      max_body = kRangeBodyHeader + kSameHostRemainingSize + kSameHostEntrySize * kMaxRangesPerRequest;
      break;
    case MsgType::kWriteRequest:
      max_body = kRangeBodyHeader + kSameHostRemainingSize + kSameHostHoldSize +
                 kSameHostEntrySize * kMaxRangesPerRequest + kSourceMappingHeader +
                 kSourceMappingEntrySize * kMaxSourceMappings;
      payload_allowed = (header.flags & kFlagSameHost) == 0;
      break;
    case MsgType::kReadResponse:
      max_body = kMaxErrorText;
      payload_allowed = true;
      break;
    case MsgType::kWriteResponse:
      max_body = kMaxErrorText;
      break;
    case MsgType::kAppRequest:
    case MsgType::kAppResponse:
      max_body = kMaxAppBody;
      break;
    case MsgType::kNotify:
      max_body = kMaxNotifyBody;
      break;
    case MsgType::kNotifyAck:
      max_body = kMaxErrorText;
      break;
    default:
      // Read and discarded by the side that serves the connection (IsIgnorable).
      if (IsIgnorable(header.type)) {
        max_body = kMaxControlBody;
        break;
      }
      return "unknown message type " + std::to_string(header.type);
  }
  if (header.body_len > max_body)
    return std::string(MsgTypeName(header.type)) + " body of " + std::to_string(header.body_len) +
           " bytes exceeds the limit of " + std::to_string(max_body);
  if (!payload_allowed && header.payload_len != 0)
    return std::string(MsgTypeName(header.type)) + " must not carry a payload";
  return "";
}

namespace {

// Transport advertisements (TransportAd): u16 count, then name and metadata
// strings. The encoder writes at most the limits a decoder accepts, and
// nothing at all when there is nothing to advertise (the body is then the
// one earlier revisions of version 2 sent); a field appended by a later
// revision comes after this block, which it then writes (count 0 if need be).
void PutTransportAds(BodyWriter &w, const std::vector<TransportAd> &ads) {
  if (ads.empty()) return;
  uint16_t count = 0;
  for (const TransportAd &ad : ads) {
    count += ad.name.size() <= kMaxTransportNameLen && ad.metadata.size() <= kMaxTransportMetadata ? 1 : 0;
  }
  count = static_cast<uint16_t>(std::min<uint32_t>(count, kMaxTransportAds));
  w.U16(count);
  uint16_t written = 0;
  for (const TransportAd &ad : ads) {
    if (written == count) break;
    if (ad.name.size() > kMaxTransportNameLen || ad.metadata.size() > kMaxTransportMetadata) continue;
    w.Str(ad.name);
    w.Str(ad.metadata);
    ++written;
  }
}

// Absent (nothing left): none. Malformed or over the limits: false.
bool GetTransportAds(BodyReader &r, std::vector<TransportAd> *ads) {
  ads->clear();
  if (r.Left() == 0) return true;
  uint16_t count = 0;
  if (!r.U16(&count) || count > kMaxTransportAds) return false;
  ads->resize(count);
  for (TransportAd &ad : *ads) {
    if (!r.Str(&ad.name, kMaxTransportNameLen) || !r.Str(&ad.metadata, kMaxTransportMetadata)) return false;
  }
  return true;
}

}  // namespace

std::string EncodeHello(const Hello &hello) {
  BodyWriter w;
  w.U32(static_cast<uint32_t>(hello.role));
  w.U32(hello.capabilities);
  w.U64(hello.session_id);
  w.U32(hello.lanes);
  w.U32(hello.heartbeat_interval_ms);
  w.U32(hello.peer_timeout_ms);
  w.Str(hello.engine_id);
  w.Str(hello.target_engine_id);
  w.Str(hello.nonce);
  w.Str(hello.boot_id);
  w.U32(hello.pid);
  w.U64(hello.token_addr);
  w.Str(hello.token);
  w.U32(hello.conn_fd);
  // Appended in version 2: every field before is always written, so a version-1
  // decoder reads what it knows and ignores these trailing bytes.
  w.U16(hello.min_version);
  w.U16(hello.max_version);
  PutTransportAds(w, hello.transports);
  return w.Data();
}

bool DecodeHello(const std::string &body, Hello *out) {
  BodyReader r(body.data(), body.size());
  uint32_t role = 0;
  if (!r.U32(&role) || !r.U32(&out->capabilities) || !r.U64(&out->session_id) || !r.U32(&out->lanes) ||
      !r.U32(&out->heartbeat_interval_ms) || !r.U32(&out->peer_timeout_ms) ||
      !r.Str(&out->engine_id, kMaxEngineIdLen) || !r.Str(&out->target_engine_id, kMaxEngineIdLen))
    return false;
  // The nonce is a later field: absent in a body that ends here.
  if (r.Left() > 0 && !r.Str(&out->nonce, kMaxAuthField)) return false;
  if (r.Left() > 0 && (!r.Str(&out->boot_id, kMaxAuthField) || !r.U32(&out->pid) || !r.U64(&out->token_addr) ||
                       !r.Str(&out->token, kMaxAuthField)))
    return false;
  if (r.Left() > 0 && !r.U32(&out->conn_fd)) return false;
  out->min_version = out->max_version = 1;  // a version-1 sender says nothing more
  if (r.Left() > 0 && (!r.U16(&out->min_version) || !r.U16(&out->max_version))) return false;
  if (out->min_version == 0 || out->min_version > out->max_version) return false;
  if (!GetTransportAds(r, &out->transports)) return false;
  if (role < 1 || role > 3) return false;
  out->role = static_cast<ConnRole>(role);
  return true;  // trailing bytes are tolerated: later minor revisions may append fields
}

std::string EncodeAuthChallenge(const AuthChallenge &c) {
  BodyWriter w;
  w.Str(c.server_nonce);
  return w.Data();
}

bool DecodeAuthChallenge(const std::string &body, AuthChallenge *out) {
  BodyReader r(body.data(), body.size());
  return r.Str(&out->server_nonce, kMaxAuthField) && r.Left() == 0;
}

std::string EncodeHelloAck(const HelloAck &ack) {
  BodyWriter w;
  w.U32(ack.capabilities);
  w.U64(ack.session_id);
  w.Str(ack.engine_id);
  w.Str(ack.boot_id);
  w.U32(ack.pid);
  w.U64(ack.token_addr);
  w.Str(ack.token);
  w.U32(ack.conn_fd);
  w.U16(ack.version);  // appended in version 2 (after the always-written identity block)
  // A field after the transport block needs the block written, count 0 if
  // need be (docs/PROTOCOL.md): a decoder would read the field as the count.
  if (ack.transports.empty() && !ack.library_version.empty()) {
    w.U16(0);
  } else {
    PutTransportAds(w, ack.transports);
  }
  if (!ack.library_version.empty()) w.Str(ack.library_version.substr(0, kMaxLibraryVersionLen));
  return w.Data();
}

bool DecodeHelloAck(const std::string &body, HelloAck *out) {
  BodyReader r(body.data(), body.size());
  out->version = 0;
  if (!r.U32(&out->capabilities) || !r.U64(&out->session_id) || !r.Str(&out->engine_id, kMaxEngineIdLen))
    return false;
  if (r.Left() == 0) return true;  // no same-host identity
  if (!r.Str(&out->boot_id, kMaxAuthField) || !r.U32(&out->pid) || !r.U64(&out->token_addr) ||
      !r.Str(&out->token, kMaxAuthField))
    return false;
  if (r.Left() == 0) return true;
  if (!r.U32(&out->conn_fd)) return false;
  if (r.Left() == 0) return true;  // a version-1 server
  if (!r.U16(&out->version)) return false;
  if (!GetTransportAds(r, &out->transports)) return false;
  out->library_version.clear();
  if (r.Left() == 0) return true;  // a server that predates the field
  // Diagnostics only: a malformed or over-long version is dropped, never a
  // reason to refuse the handshake. Later bytes: fields of later revisions.
  if (!r.Str(&out->library_version, kMaxLibraryVersionLen)) out->library_version.clear();
  return true;
}

void EncodeRangeHeader(uint32_t count, uint32_t timeout_ms, uint64_t total, uint8_t out[kRangeBodyHeader]) {
  PutU32(out, count);
  PutU32(out + 4, timeout_ms);
  PutU64(out + 8, total);
}

std::string DecodeRangeHeader(const uint8_t in[kRangeBodyHeader], uint64_t body_len, uint32_t *count,
                              uint32_t *timeout_ms, uint64_t *total, uint64_t entry_size, bool write_hold,
                              bool source_mappings) {
  *count = GetU32(in);
  *timeout_ms = GetU32(in + 4);
  *total = GetU64(in + 8);
  if (*count == 0 || *count > kMaxRangesPerRequest)
    return "range count " + std::to_string(*count) + " outside [1, " + std::to_string(kMaxRangesPerRequest) + "]";
  const uint64_t extra =
      entry_size == kSameHostEntrySize ? kSameHostRemainingSize + (write_hold ? kSameHostHoldSize : 0) : 0;
  const uint64_t ranges_end = kRangeBodyHeader + extra + entry_size * static_cast<uint64_t>(*count);
  // The source-mapping trailer's own length is checked when it is decoded.
  if (source_mappings ? body_len < ranges_end + kSourceMappingHeader + kSourceMappingEntrySize ||
                            body_len > ranges_end + kSourceMappingHeader +
                                           kSourceMappingEntrySize * kMaxSourceMappings
                      : body_len != ranges_end)
    return "body length " + std::to_string(body_len) + " does not match " + std::to_string(*count) + " ranges";
  return "";
}

void AppendSourceMappings(const std::vector<SourceMapping> &mappings, std::vector<uint8_t> *body) {
  const size_t at = body->size();
  body->resize(at + kSourceMappingHeader + kSourceMappingEntrySize * mappings.size());
  uint8_t *out = body->data() + at;
  PutU32(out, static_cast<uint32_t>(mappings.size()));
  PutU32(out + 4, 0);
  out += kSourceMappingHeader;
  for (const SourceMapping &m : mappings) {
    PutU32(out, m.fd);
    PutU32(out + 4, 0);
    PutU64(out + 8, m.serial);
    PutU64(out + 16, m.inode);
    PutU64(out + 24, m.device);
    PutU64(out + 32, m.base);
    PutU64(out + 40, m.size);
    out += kSourceMappingEntrySize;
  }
}

bool DecodeSourceMappings(const uint8_t *body, uint64_t body_len, uint64_t at, std::vector<SourceMapping> *out) {
  if (at > body_len || body_len - at < kSourceMappingHeader) return false;
  const uint32_t count = GetU32(body + at);
  if (count == 0 || count > kMaxSourceMappings ||
      body_len - at != kSourceMappingHeader + kSourceMappingEntrySize * count)
    return false;
  out->resize(count);
  const uint8_t *in = body + at + kSourceMappingHeader;
  for (SourceMapping &m : *out) {
    m.fd = GetU32(in);
    m.serial = GetU64(in + 8);
    m.inode = GetU64(in + 16);
    m.device = GetU64(in + 24);
    m.base = GetU64(in + 32);
    m.size = GetU64(in + 40);
    uint64_t end = 0;
    if (m.size == 0 || __builtin_add_overflow(m.base, m.size, &end)) return false;
    if (&m != out->data() && (&m)[-1].base + (&m)[-1].size > m.base) return false;  // sorted, apart
    in += kSourceMappingEntrySize;
  }
  return true;
}

std::string EncodeLeaseGrant(const std::vector<Range> &regions, const std::vector<LeaseMapping> *mappings) {
  BodyWriter w;
  w.U32(static_cast<uint32_t>(regions.size()));
  w.U32(0);
  for (const Range &r : regions) {
    w.U64(r.addr);
    w.U64(r.len);
  }
  if (mappings != nullptr) {
    w.U32(static_cast<uint32_t>(mappings->size()));
    w.U32(0);
    for (const LeaseMapping &m : *mappings) {
      w.U32(m.range_index);
      w.U32(m.fd);
      w.U64(m.serial);
      w.U64(m.offset);
      w.U64(m.inode);
      w.U64(m.device);
    }
  }
  return w.Data();
}

bool DecodeLeaseGrant(const std::string &body, std::vector<Range> *regions, std::vector<LeaseMapping> *mappings) {
  BodyReader r(body.data(), body.size());
  uint32_t count = 0, reserved = 0;
  if (!r.U32(&count) || !r.U32(&reserved) || count > kMaxLeaseRegions) return false;
  const uint64_t ranges_end = kLeaseGrantHeader + 16ULL * count;
  if (body.size() < ranges_end || (mappings == nullptr && body.size() != ranges_end)) return false;
  regions->resize(count);
  for (Range &range : *regions) {
    if (!r.U64(&range.addr) || !r.U64(&range.len)) return false;
  }
  if (mappings == nullptr) return true;
  mappings->clear();
  if (body.size() == ranges_end) return true;  // a server that predates the trailer
  uint32_t map_count = 0;
  if (!r.U32(&map_count) || !r.U32(&reserved) || map_count > count ||
      body.size() != ranges_end + kLeaseMappingHeader + kLeaseMappingEntrySize * map_count)
    return false;
  mappings->resize(map_count);
  for (LeaseMapping &m : *mappings) {
    if (!r.U32(&m.range_index) || !r.U32(&m.fd) || !r.U64(&m.serial) || !r.U64(&m.offset) || !r.U64(&m.inode) ||
        !r.U64(&m.device) || m.range_index >= count)
      return false;
  }
  return true;
}

std::string EncodeNotify(const Notify &notify) {
  BodyWriter w;
  w.Str(notify.name);
  w.Str(notify.message);
  return w.Data();
}

bool DecodeNotify(const std::string &body, Notify *out) {
  BodyReader r(body.data(), body.size());
  return r.Str(&out->name, kMaxNotifyField) && r.Str(&out->message, kMaxNotifyField);
}

}  // namespace llmdd::wire
