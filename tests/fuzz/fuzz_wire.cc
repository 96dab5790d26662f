// fuzz_wire: the engine's wire decoders on arbitrary bytes.
//
// Input: any bytes. The first 40 bytes (when present) are checked as a message
// header (CheckHeader, MsgTypeName); every body decoder (Hello, HelloAck,
// AuthChallenge, Notify, range header with TCP and same-host entries, LLM-DataDist
// link/unlink/cache-query/geometry)
// then runs on the whole input and, when a header is present, on the bytes
// after it. Whatever a decoder accepts must survive an encode/decode round trip
// unchanged and respect the decoder's documented bounds.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/log.h"
#include "datadist/link_messages.h"
#include "engine/wire.h"
#include "fuzz_common.h"

using namespace llmdd;

namespace {

void CheckHeaderOf(const uint8_t *data) {
  wire::MsgHeader header;
  memcpy(&header, data, sizeof(header));
  std::string bad = wire::CheckHeader(header);
  FUZZ_CHECK(wire::MsgTypeName(header.type) != nullptr, "no type name");
  if (!bad.empty()) return;
  FUZZ_CHECK(header.magic == wire::kMagic && header.version == wire::kHandshakeVersion, "accepted a foreign header");
  FUZZ_CHECK(strcmp(wire::MsgTypeName(header.type), "Unknown") != 0 || wire::IsIgnorable(header.type),
             "accepted unknown type %u", header.type);
  FUZZ_CHECK(!wire::IsIgnorable(header.type) || header.body_len <= wire::kMaxControlBody,
             "ignorable type %u accepted with a %llu-byte body", header.type,
             static_cast<unsigned long long>(header.body_len));
  const auto type = static_cast<wire::MsgType>(header.type);
  const bool payload_ok = (type == wire::MsgType::kWriteRequest && (header.flags & wire::kFlagSameHost) == 0) ||
                          type == wire::MsgType::kReadResponse;
  FUZZ_CHECK(payload_ok || header.payload_len == 0, "payload accepted on type %u", header.type);
  FUZZ_CHECK(header.body_len <= wire::kMaxAppBody, "body_len %llu accepted",
             static_cast<unsigned long long>(header.body_len));
  FUZZ_CHECK(type != wire::MsgType::kRelease || header.body_len == 0, "Release with a body accepted");
  FUZZ_CHECK(type != wire::MsgType::kNotify || header.body_len <= wire::kMaxNotifyBody,
             "Notify with a %llu-byte body accepted", static_cast<unsigned long long>(header.body_len));
  FUZZ_CHECK(type != wire::MsgType::kNotifyAck || header.body_len <= wire::kMaxErrorText,
             "NotifyAck with a %llu-byte body accepted", static_cast<unsigned long long>(header.body_len));
}

void DecodeBodies(const std::string &body) {
  {
    // A LeaseGrant, with or without the shared-mapping trailer: what is
    // accepted stays within its bounds and re-encodes to the same bytes.
    std::vector<wire::Range> ranges;
    std::vector<wire::LeaseMapping> mappings;
    if (wire::DecodeLeaseGrant(body, &ranges, &mappings)) {
      FUZZ_CHECK(ranges.size() <= wire::kMaxLeaseRegions && mappings.size() <= ranges.size(),
                 "lease grant of %zu ranges, %zu mappings accepted", ranges.size(), mappings.size());
      for (const wire::LeaseMapping &m : mappings)
        FUZZ_CHECK(m.range_index < ranges.size(), "mapping of range %u of %zu accepted", m.range_index, ranges.size());
      const bool trailer = body.size() > wire::kLeaseGrantHeader + 16ULL * ranges.size();
      const std::string encoded = wire::EncodeLeaseGrant(ranges, trailer ? &mappings : nullptr);
      // Same length (the reserved words are not kept, so not the same bytes).
      FUZZ_CHECK(encoded.size() == body.size(), "accepted lease grant re-encodes to %zu of %zu bytes",
                 encoded.size(), body.size());
    }
  }
  {
    wire::Notify notify;
    if (wire::DecodeNotify(body, &notify)) {
      FUZZ_CHECK(notify.name.size() <= wire::kMaxNotifyField && notify.message.size() <= wire::kMaxNotifyField,
                 "notify field over its bound accepted");
      const std::string encoded = wire::EncodeNotify(notify);
      FUZZ_CHECK(encoded.size() <= wire::kMaxNotifyBody && encoded.size() <= body.size(),
                 "accepted Notify re-encodes to %zu bytes", encoded.size());
      FUZZ_CHECK(body.compare(0, encoded.size(), encoded) == 0, "Notify re-encoding differs from its input");
      wire::Notify again;
      FUZZ_CHECK(wire::DecodeNotify(encoded, &again) && again.name == notify.name && again.message == notify.message,
                 "re-encoded Notify changed");
    }
  }
  {
    wire::Hello hello;
    if (wire::DecodeHello(body, &hello)) {
      const uint32_t role = static_cast<uint32_t>(hello.role);
      FUZZ_CHECK(role >= 1 && role <= 3, "role %u", role);
      FUZZ_CHECK(hello.engine_id.size() <= wire::kMaxEngineIdLen, "engine_id too long");
      FUZZ_CHECK(hello.target_engine_id.size() <= wire::kMaxEngineIdLen, "target_engine_id too long");
      FUZZ_CHECK(hello.nonce.size() <= wire::kMaxAuthField, "nonce too long");
      FUZZ_CHECK(hello.boot_id.size() <= wire::kMaxAuthField && hello.token.size() <= wire::kMaxAuthField,
                 "identity field too long");
      wire::Hello again;
      FUZZ_CHECK(wire::DecodeHello(wire::EncodeHello(hello), &again), "re-encoded Hello rejected");
      FUZZ_CHECK(again.role == hello.role && again.capabilities == hello.capabilities &&
                     again.session_id == hello.session_id && again.lanes == hello.lanes &&
                     again.heartbeat_interval_ms == hello.heartbeat_interval_ms &&
                     again.peer_timeout_ms == hello.peer_timeout_ms && again.engine_id == hello.engine_id &&
                     again.target_engine_id == hello.target_engine_id && again.nonce == hello.nonce &&
                     again.boot_id == hello.boot_id && again.pid == hello.pid &&
                     again.token_addr == hello.token_addr && again.token == hello.token,
                 "Hello round trip changed a field");
    }
  }
  {
    wire::HelloAck ack;
    if (wire::DecodeHelloAck(body, &ack)) {
      FUZZ_CHECK(ack.engine_id.size() <= wire::kMaxEngineIdLen, "engine_id too long");
      wire::HelloAck again;
      FUZZ_CHECK(wire::DecodeHelloAck(wire::EncodeHelloAck(ack), &again), "re-encoded HelloAck rejected");
      FUZZ_CHECK(again.capabilities == ack.capabilities && again.session_id == ack.session_id &&
                     again.engine_id == ack.engine_id && again.boot_id == ack.boot_id && again.pid == ack.pid &&
                     again.token_addr == ack.token_addr && again.token == ack.token,
                 "HelloAck round trip changed a field");
    }
  }
  {
    wire::AuthChallenge challenge;
    if (wire::DecodeAuthChallenge(body, &challenge)) {
      FUZZ_CHECK(challenge.server_nonce.size() <= wire::kMaxAuthField, "nonce too long");
      // The challenge is the nonce and nothing else (no server proof rides along).
      FUZZ_CHECK(body.size() == sizeof(uint32_t) + challenge.server_nonce.size(),
                 "AuthChallenge of %zu bytes accepted with a %zu-byte nonce", body.size(),
                 challenge.server_nonce.size());
      wire::AuthChallenge again;
      FUZZ_CHECK(wire::DecodeAuthChallenge(wire::EncodeAuthChallenge(challenge), &again),
                 "re-encoded AuthChallenge rejected");
      FUZZ_CHECK(again.server_nonce == challenge.server_nonce, "AuthChallenge round trip changed a field");
    }
  }
  for (int layout = 0; layout < 3; ++layout) {
    // TCP entries; same-host entries; same-host entries behind a write hold.
    const uint64_t entry_size = layout == 0 ? wire::kRangeEntrySize : wire::kSameHostEntrySize;
    const bool held = layout == 2;
    if (body.size() < wire::kRangeBodyHeader) break;
    // As ServeTransfer uses it: body_len is the length of the whole range list.
    uint32_t count = 0, timeout_ms = 0;
    uint64_t total = 0;
    const auto *p = reinterpret_cast<const uint8_t *>(body.data());
    std::string bad = wire::DecodeRangeHeader(p, body.size(), &count, &timeout_ms, &total, entry_size, held);
    if (bad.empty()) {
      FUZZ_CHECK(count >= 1 && count <= wire::kMaxRangesPerRequest, "count %u accepted", count);
      // Same-host bodies carry the requester's deadline (and a held write its
      // hold) between header and entries.
      const uint64_t extra = entry_size == wire::kSameHostEntrySize
                                 ? wire::kSameHostRemainingSize + (held ? wire::kSameHostHoldSize : 0)
                                 : 0;
      FUZZ_CHECK(body.size() == wire::kRangeBodyHeader + extra + entry_size * count,
                 "count %u does not match %zu bytes", count, body.size());
      uint8_t again[wire::kRangeBodyHeader];
      wire::EncodeRangeHeader(count, timeout_ms, total, again);
      FUZZ_CHECK(memcmp(again, p, sizeof(again)) == 0, "range header round trip changed a field");
    }
  }
  {
    datadist::LinkRequest req;
    if (datadist::DecodeLinkRequest(body, &req)) {
      datadist::LinkRequest again;
      FUZZ_CHECK(datadist::DecodeLinkRequest(datadist::EncodeLinkRequest(req), &again) &&
                     again.sender_cluster == req.sender_cluster &&
                     again.expected_receiver_cluster == req.expected_receiver_cluster,
                 "LinkRequest round trip");
    }
    uint64_t sender = 0, sender_again = 0;
    if (datadist::DecodeUnlink(body, &sender))
      FUZZ_CHECK(datadist::DecodeUnlink(datadist::EncodeUnlink(sender), &sender_again) && sender_again == sender,
                 "Unlink round trip");
    int64_t cache_id = 0, cache_again = 0;
    if (datadist::DecodeCacheQuery(body, &cache_id))
      FUZZ_CHECK(datadist::DecodeCacheQuery(datadist::EncodeCacheQuery(cache_id), &cache_again) &&
                     cache_again == cache_id,
                 "CacheQuery round trip");
  }
  {
    datadist::CacheGeometry geometry;
    if (datadist::DecodeGeometry(body, &geometry)) {
      FUZZ_CHECK(geometry.num_tensors >= 1 && geometry.num_tensors <= datadist::kMaxTensorsPerCache,
                 "num_tensors %u", geometry.num_tensors);
      FUZZ_CHECK(geometry.addrs.size() == geometry.num_tensors, "addrs/num_tensors mismatch");
      FUZZ_CHECK(geometry.row_count != 0 && geometry.stride == geometry.tensor_size / geometry.row_count,
                 "inconsistent stride");
      // The geometry body has no optional or trailing parts: re-encoding gives the input back.
      FUZZ_CHECK(datadist::EncodeGeometry(geometry) == body, "Geometry round trip changed the bytes");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  SetLogLevel(LogLevel::kOff);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  DecodeBodies(std::string(reinterpret_cast<const char *>(data), size));
  if (size >= sizeof(wire::MsgHeader)) {
    CheckHeaderOf(data);
    DecodeBodies(std::string(reinterpret_cast<const char *>(data) + sizeof(wire::MsgHeader),
                             size - sizeof(wire::MsgHeader)));
  }
  return 0;
}
