// Wire codec: header checks, Hello/HelloAck round trips, authentication
// messages, range-list bounds.
#include "engine/wire.h"

#include <gtest/gtest.h>

namespace llmdd::wire {
namespace {

MsgHeader Header(MsgType type, uint64_t body, uint64_t payload = 0) {
  MsgHeader h;
  h.type = static_cast<uint16_t>(type);
  h.body_len = body;
  h.payload_len = payload;
  return h;
}

TEST(WireHeader, AcceptsEveryKnownTypeWithinItsBounds) {
  EXPECT_EQ(CheckHeader(Header(MsgType::kHello, 100)), "");
  EXPECT_EQ(CheckHeader(Header(MsgType::kPing, 0)), "");
  EXPECT_EQ(CheckHeader(Header(MsgType::kReadRequest, kRangeBodyHeader + kRangeEntrySize * kMaxRangesPerRequest)),
            "");
  EXPECT_EQ(CheckHeader(Header(MsgType::kWriteRequest, 32, 1ULL << 40)), "");
  EXPECT_EQ(CheckHeader(Header(MsgType::kReadResponse, 0, 1ULL << 40)), "");
  EXPECT_EQ(CheckHeader(Header(MsgType::kAppRequest, kMaxAppBody)), "");
}

TEST(WireHeader, RefusesBadMagicVersionTypeAndSizes) {
  MsgHeader h = Header(MsgType::kPing, 0);
  h.magic = 0x12345678;
  EXPECT_NE(CheckHeader(h).find("magic"), std::string::npos);
  h = Header(MsgType::kPing, 0);
  h.version = 2;
  EXPECT_NE(CheckHeader(h).find("version 2"), std::string::npos);
  h = Header(MsgType::kPing, 0);
  h.type = 999;
  EXPECT_NE(CheckHeader(h).find("unknown message type 999"), std::string::npos);
  // A 4 GiB body is refused before anything is allocated.
  EXPECT_NE(CheckHeader(Header(MsgType::kHello, 4ULL << 30)).find("exceeds"), std::string::npos);
  EXPECT_NE(CheckHeader(Header(MsgType::kReadRequest, kRangeBodyHeader + kSameHostEntrySize * (kMaxRangesPerRequest + 1)))
                .find("exceeds"),
            std::string::npos);
  EXPECT_NE(CheckHeader(Header(MsgType::kAppResponse, kMaxAppBody + 1)).find("exceeds"), std::string::npos);
  // Only WriteRequest and ReadResponse carry a payload.
  EXPECT_NE(CheckHeader(Header(MsgType::kReadRequest, 32, 8)).find("payload"), std::string::npos);
  EXPECT_NE(CheckHeader(Header(MsgType::kPing, 0, 1)).find("payload"), std::string::npos);
}

TEST(WireHello, RoundTripsAndToleratesTrailingBytes) {
  Hello in;
  in.role = ConnRole::kReverseLane;
  in.capabilities = 3;
  in.session_id = 0xABCDEF0123456789ULL;
  in.lanes = 4;
  in.heartbeat_interval_ms = 1000;
  in.peer_timeout_ms = 10000;
  in.engine_id = "127.0.0.1:26000";
  in.target_engine_id = "[::1]:5000";
  // A later revision's field follows the transport advertisements (an empty block here).
  std::string body = EncodeHello(in) + std::string("\0\0", 2) + "future-field";
  Hello out;
  ASSERT_TRUE(DecodeHello(body, &out));
  EXPECT_EQ(out.role, in.role);
  EXPECT_EQ(out.capabilities, 3U);
  EXPECT_EQ(out.session_id, in.session_id);
  EXPECT_EQ(out.lanes, 4U);
  EXPECT_EQ(out.engine_id, in.engine_id);
  EXPECT_EQ(out.target_engine_id, in.target_engine_id);
}

TEST(WireHello, RefusesTruncatedOversizedAndUnknownRole) {
  Hello in;
  in.engine_id = "x";
  std::string body = EncodeHello(in);
  Hello out;
  // Trailing optional fields: the nonce (4-byte length, empty here), the
  // same-host identity block (boot id length 4, pid 4, token addr 8, token
  // length 4), the connection's descriptor (4) and the version range (2 + 2).
  // A body may end before any of them, nowhere else.
  const size_t without_versions = body.size() - 4;
  const size_t without_conn_fd = without_versions - 4;
  const size_t without_identity = without_conn_fd - 20;
  const size_t without_nonce = without_identity - 4;
  for (size_t cut = 0; cut < body.size(); ++cut) {
    if (cut == without_nonce || cut == without_identity || cut == without_conn_fd || cut == without_versions) {
      EXPECT_TRUE(DecodeHello(body.substr(0, cut), &out));
    } else {
      EXPECT_FALSE(DecodeHello(body.substr(0, cut), &out)) << cut;
    }
  }
  in.engine_id = std::string(kMaxEngineIdLen + 1, 'a');
  EXPECT_FALSE(DecodeHello(EncodeHello(in), &out));
  in.engine_id = "x";
  body = EncodeHello(in);
  uint32_t bad_role = 9;
  memcpy(body.data(), &bad_role, 4);
  EXPECT_FALSE(DecodeHello(body, &out));
  // A length prefix larger than the remaining bytes must not read past the end.
  body = EncodeHello(in);
  uint32_t huge = 0xFFFFFFFF;
  memcpy(body.data() + 28, &huge, 4);
  EXPECT_FALSE(DecodeHello(body, &out));
}

TEST(WireHelloAck, RoundTrips) {
  HelloAck in;
  in.capabilities = 7;
  in.session_id = 42;
  in.engine_id = "engine";
  HelloAck out;
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(in), &out));
  EXPECT_EQ(out.capabilities, 7U);
  EXPECT_EQ(out.session_id, 42U);
  EXPECT_EQ(out.engine_id, "engine");
  EXPECT_FALSE(DecodeHelloAck(std::string(5, '\0'), &out));
}

// The server's library version (llmdd_doctor) is appended after the
// transport block: written with count 0 when there are no ads, so an engine
// that predates the field reads an empty block and ignores the rest, and a
// body without it (an older server) decodes as an empty version.
TEST(WireHelloAck, LibraryVersionFollowsTheTransportBlock) {
  HelloAck in;
  in.engine_id = "engine";
  in.version = 2;
  const std::string without = EncodeHelloAck(in);
  in.library_version = "1.2.3";
  const std::string with = EncodeHelloAck(in);
  ASSERT_GT(with.size(), without.size() + 2);
  EXPECT_EQ(with.substr(0, without.size()), without);
  EXPECT_EQ(with.substr(without.size(), 2), std::string(2, '\0'));  // the transport block, count 0
  HelloAck out;
  ASSERT_TRUE(DecodeHelloAck(with, &out));
  EXPECT_EQ(out.library_version, "1.2.3");
  EXPECT_TRUE(out.transports.empty());
  out.library_version = "stale";
  ASSERT_TRUE(DecodeHelloAck(without, &out));
  EXPECT_EQ(out.library_version, "");
  // With ads, the version still follows them.
  in.transports = {{"fake", "meta"}};
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(in), &out));
  ASSERT_EQ(out.transports.size(), 1U);
  EXPECT_EQ(out.transports[0].name, "fake");
  EXPECT_EQ(out.library_version, "1.2.3");
  // Over its bound: the sender cuts it; a decoder drops a longer or
  // malformed one and keeps the handshake (the field is for diagnostics).
  in.library_version = std::string(kMaxLibraryVersionLen + 10, 'v');
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(in), &out));
  EXPECT_EQ(out.library_version.size(), kMaxLibraryVersionLen);
  in.transports.clear();
  in.library_version.clear();
  BodyWriter longer;
  longer.Str(std::string(kMaxLibraryVersionLen + 1, 'v'));
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(in) + std::string(2, '\0') + longer.Data(), &out));
  EXPECT_EQ(out.library_version, "");
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(in) + std::string(2, '\0') + "later", &out));
  EXPECT_EQ(out.library_version, "");
}

TEST(WireAuth, ChallengeCarriesOnlyTheNonce) {
  AuthChallenge in{std::string(32, 'n')};
  const std::string body = EncodeAuthChallenge(in);
  EXPECT_EQ(body.size(), 4U + 32U);
  AuthChallenge out;
  ASSERT_TRUE(DecodeAuthChallenge(body, &out));
  EXPECT_EQ(out.server_nonce, in.server_nonce);
  // Anything after the nonce (the server proof of earlier revisions) is refused.
  BodyWriter with_proof;
  with_proof.Str(std::string(32, 'n'));
  with_proof.Str(std::string(32, 'p'));
  EXPECT_FALSE(DecodeAuthChallenge(with_proof.Data(), &out));
  EXPECT_FALSE(DecodeAuthChallenge(body + "x", &out));
  EXPECT_FALSE(DecodeAuthChallenge(body.substr(0, body.size() - 1), &out));
  BodyWriter oversized;
  oversized.Str(std::string(kMaxAuthField + 1, 'n'));
  EXPECT_FALSE(DecodeAuthChallenge(oversized.Data(), &out));
}

TEST(WireAuth, ConfirmIsABoundedControlMessage) {
  EXPECT_STREQ(MsgTypeName(static_cast<uint16_t>(MsgType::kAuthConfirm)), "AuthConfirm");
  EXPECT_EQ(static_cast<uint16_t>(MsgType::kAuthConfirm), 10);
  EXPECT_EQ(CheckHeader(Header(MsgType::kAuthConfirm, 32)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kAuthConfirm, kMaxControlBody + 1)).find("exceeds"), std::string::npos);
  EXPECT_NE(CheckHeader(Header(MsgType::kAuthConfirm, 32, 1)).find("payload"), std::string::npos);
}

TEST(WireRanges, HeaderMustMatchBodyAndLimits) {
  uint8_t buf[kRangeBodyHeader];
  uint32_t count = 0, timeout = 0;
  uint64_t total = 0;
  EncodeRangeHeader(3, 250, 4096, buf);
  EXPECT_EQ(DecodeRangeHeader(buf, kRangeBodyHeader + 3 * kRangeEntrySize, &count, &timeout, &total), "");
  EXPECT_EQ(count, 3U);
  EXPECT_EQ(timeout, 250U);
  EXPECT_EQ(total, 4096U);
  EXPECT_NE(DecodeRangeHeader(buf, kRangeBodyHeader + 2 * kRangeEntrySize, &count, &timeout, &total), "");
  EncodeRangeHeader(0, 1, 0, buf);
  EXPECT_NE(DecodeRangeHeader(buf, kRangeBodyHeader, &count, &timeout, &total), "");
  EncodeRangeHeader(kMaxRangesPerRequest + 1, 1, 0, buf);
  EXPECT_NE(DecodeRangeHeader(buf, kRangeBodyHeader + (kMaxRangesPerRequest + 1) * kRangeEntrySize, &count,
                              &timeout, &total),
            "");
}

TEST(WireRanges, AHeldSameHostWriteCarriesItsHoldBeforeTheEntries) {
  uint8_t buf[kRangeBodyHeader];
  uint32_t count = 0, timeout = 0;
  uint64_t total = 0;
  EncodeRangeHeader(2, 100, 20, buf);
  const uint64_t plain = kRangeBodyHeader + kSameHostRemainingSize + 2 * kSameHostEntrySize;
  EXPECT_EQ(DecodeRangeHeader(buf, plain, &count, &timeout, &total, kSameHostEntrySize), "");
  EXPECT_NE(DecodeRangeHeader(buf, plain, &count, &timeout, &total, kSameHostEntrySize, /*write_hold=*/true), "");
  EXPECT_EQ(DecodeRangeHeader(buf, plain + kSameHostHoldSize, &count, &timeout, &total, kSameHostEntrySize, true), "");
  EXPECT_EQ(count, 2U);
  // The largest held write passes the header's bound, one byte more does not.
  MsgHeader h = Header(MsgType::kWriteRequest, kRangeBodyHeader + kSameHostRemainingSize + kSameHostHoldSize +
                                                   kSameHostEntrySize * kMaxRangesPerRequest);
  h.flags = kFlagSameHost | kFlagWriteHold;
  EXPECT_EQ(CheckHeader(h), "");
  // ... with the source-mapping trailer (kFlagSourceMappings) at its largest.
  h.body_len += kSourceMappingHeader + kSourceMappingEntrySize * kMaxSourceMappings;
  EXPECT_EQ(CheckHeader(h), "");
  h.body_len += 1;
  EXPECT_NE(CheckHeader(h), "");
}

TEST(WireRanges, SourceMappingsFollowTheEntriesAndAreBounded) {
  const std::vector<SourceMapping> sources = {{7, 42, 1234, 56, 0x7f0000000000ULL, 4u << 20},
                                              {9, 43, 1235, 56, 0x7f1000000000ULL, 1u << 20}};
  std::vector<uint8_t> body(24, 0xAB);  // stands for the header, time and entries
  AppendSourceMappings(sources, &body);
  ASSERT_EQ(body.size(), 24 + kSourceMappingHeader + 2 * kSourceMappingEntrySize);
  std::vector<SourceMapping> back;
  ASSERT_TRUE(DecodeSourceMappings(body.data(), body.size(), 24, &back));
  ASSERT_EQ(back.size(), 2U);
  EXPECT_EQ(back[1].fd, 9U);
  EXPECT_EQ(back[1].serial, 43U);
  EXPECT_EQ(back[1].inode, 1235U);
  EXPECT_EQ(back[1].device, 56U);
  EXPECT_EQ(back[1].base, 0x7f1000000000ULL);
  EXPECT_EQ(back[1].size, 1U << 20);
  EXPECT_FALSE(DecodeSourceMappings(body.data(), body.size() - 1, 24, &back));  // cut short
  EXPECT_FALSE(DecodeSourceMappings(body.data(), body.size(), 25, &back));      // not where it starts
  std::vector<uint8_t> none(24);
  AppendSourceMappings({}, &none);
  EXPECT_FALSE(DecodeSourceMappings(none.data(), none.size(), 24, &back));  // at least one
  std::vector<uint8_t> wraps(24);
  AppendSourceMappings({{1, 1, 1, 1, UINT64_MAX - 10, 4096}}, &wraps);
  EXPECT_FALSE(DecodeSourceMappings(wraps.data(), wraps.size(), 24, &back));
  std::vector<uint8_t> empty_alloc(24);
  AppendSourceMappings({{1, 1, 1, 1, 4096, 0}}, &empty_alloc);
  EXPECT_FALSE(DecodeSourceMappings(empty_alloc.data(), empty_alloc.size(), 24, &back));
  std::vector<uint8_t> unsorted(24);
  AppendSourceMappings({sources[1], sources[0]}, &unsorted);
  EXPECT_FALSE(DecodeSourceMappings(unsorted.data(), unsorted.size(), 24, &back));
  std::vector<uint8_t> overlapping(24);
  AppendSourceMappings({{1, 1, 1, 1, 4096, 8192}, {2, 2, 2, 2, 8192, 4096}}, &overlapping);
  EXPECT_FALSE(DecodeSourceMappings(overlapping.data(), overlapping.size(), 24, &back));
  std::vector<uint8_t> too_many(24);
  AppendSourceMappings(std::vector<SourceMapping>(kMaxSourceMappings + 1, sources[0]), &too_many);
  EXPECT_FALSE(DecodeSourceMappings(too_many.data(), too_many.size(), 24, &back));
  // The range header accepts a trailer only where the flag says so.
  uint8_t header[kRangeBodyHeader];
  EncodeRangeHeader(1, 1000, 8, header);
  uint32_t count = 0, timeout = 0;
  uint64_t total = 0;
  const uint64_t plain = kRangeBodyHeader + kSameHostRemainingSize + kSameHostHoldSize + kSameHostEntrySize;
  const uint64_t one = kSourceMappingHeader + kSourceMappingEntrySize;
  EXPECT_EQ(DecodeRangeHeader(header, plain + one, &count, &timeout, &total, kSameHostEntrySize, true, true), "");
  EXPECT_NE(DecodeRangeHeader(header, plain + one, &count, &timeout, &total, kSameHostEntrySize, true, false), "");
  EXPECT_NE(DecodeRangeHeader(header, plain, &count, &timeout, &total, kSameHostEntrySize, true, true), "");
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

TEST(WireHello, SameHostIdentityRoundTrips) {
  Hello in;
  in.engine_id = "e";
  in.boot_id = "boot";
  in.pid = 1234;
  in.token_addr = 0x7fff0000;
  in.token = std::string(32, 'T');
  in.conn_fd = 17;
  Hello out;
  ASSERT_TRUE(DecodeHello(EncodeHello(in), &out));
  EXPECT_EQ(out.boot_id, "boot");
  EXPECT_EQ(out.pid, 1234U);
  EXPECT_EQ(out.token_addr, 0x7fff0000U);
  EXPECT_EQ(out.token, in.token);
  EXPECT_EQ(out.conn_fd, 17U);
  // An identity block from a sender that names no descriptor (it ends after
  // the token; the version range, appended later, is absent too).
  std::string no_fd = EncodeHello(in);
  no_fd.resize(no_fd.size() - 4 - 4);
  Hello older;
  ASSERT_TRUE(DecodeHello(no_fd, &older));
  EXPECT_EQ(older.conn_fd, kNoConnFd);
  HelloAck ack;
  ack.engine_id = "s";
  ack.pid = 99;
  ack.token = "t";
  ack.conn_fd = 5;
  HelloAck back;
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(ack), &back));
  EXPECT_EQ(back.pid, 99U);
  EXPECT_EQ(back.token, "t");
  EXPECT_EQ(back.conn_fd, 5U);
  std::string ack_body = EncodeHelloAck(ack);
  EXPECT_FALSE(DecodeHelloAck(ack_body.substr(0, ack_body.size() - 2 - 2), &back));  // a cut descriptor field
}

TEST(WireHeader, SameHostWritesCarryNoPayload) {
  MsgHeader h;
  h.type = static_cast<uint16_t>(MsgType::kWriteRequest);
  h.flags = kFlagSameHost;
  h.body_len = kRangeBodyHeader + kSameHostEntrySize;
  EXPECT_EQ(CheckHeader(h), "");
  h.payload_len = 8;
  EXPECT_NE(CheckHeader(h).find("payload"), std::string::npos);
}

TEST(WireLease, GrantRoundTripsAndIsBounded) {
  std::vector<Range> regions = {{0x1000, 4096}, {0x7f0000000000, 1ULL << 30}};
  std::vector<Range> back;
  ASSERT_TRUE(DecodeLeaseGrant(EncodeLeaseGrant(regions), &back));
  ASSERT_EQ(back.size(), 2U);
  EXPECT_EQ(back[1].addr, 0x7f0000000000ULL);
  EXPECT_EQ(back[1].len, 1ULL << 30);
  std::string body = EncodeLeaseGrant(regions);
  EXPECT_FALSE(DecodeLeaseGrant(body.substr(0, body.size() - 1), &back));  // truncated
  EXPECT_FALSE(DecodeLeaseGrant(body + "x", &back));                      // trailing bytes
  std::string huge = body;
  uint32_t count = kMaxLeaseRegions + 1;
  memcpy(huge.data(), &count, 4);
  EXPECT_FALSE(DecodeLeaseGrant(huge, &back));
  EXPECT_TRUE(DecodeLeaseGrant(EncodeLeaseGrant({}), &back));
  EXPECT_TRUE(back.empty());
  // Header bounds: a request has no body, a grant at most kMaxLeaseRegions entries.
  EXPECT_EQ(CheckHeader(Header(MsgType::kLeaseRequest, 0)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kLeaseRequest, 1)), "");
  // (with the mapping trailer, kFlagLeaseMappings, one entry per region at most).
  const uint64_t max_grant = kLeaseGrantHeader + 16ULL * kMaxLeaseRegions + kLeaseMappingHeader +
                             kLeaseMappingEntrySize * kMaxLeaseRegions;
  EXPECT_EQ(CheckHeader(Header(MsgType::kLeaseGrant, max_grant)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kLeaseGrant, max_grant + 1)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kLeaseGrant, 8, 1)), "");  // no payload
}

TEST(WireLease, MappingTrailerOnlyWhenAskedForAndBoundedByTheRanges) {
  const std::vector<Range> regions = {{0x1000, 4096}, {0x200000, 1ULL << 20}};
  const std::vector<LeaseMapping> mappings = {{1, 7, 42, 4096, 1234, 56}};
  const std::string body = EncodeLeaseGrant(regions, &mappings);
  std::vector<Range> back;
  std::vector<LeaseMapping> mapped_back;
  ASSERT_TRUE(DecodeLeaseGrant(body, &back, &mapped_back));
  ASSERT_EQ(back.size(), 2U);
  ASSERT_EQ(mapped_back.size(), 1U);
  EXPECT_EQ(mapped_back[0].range_index, 1U);
  EXPECT_EQ(mapped_back[0].fd, 7U);
  EXPECT_EQ(mapped_back[0].serial, 42U);
  EXPECT_EQ(mapped_back[0].offset, 4096U);
  EXPECT_EQ(mapped_back[0].inode, 1234U);
  EXPECT_EQ(mapped_back[0].device, 56U);
  // A requester that did not ask accepts no trailer (an older one would not).
  EXPECT_FALSE(DecodeLeaseGrant(body, &back));
  // A server that predates the trailer sends none: no mapping, still a lease.
  mapped_back.assign(3, LeaseMapping{});
  ASSERT_TRUE(DecodeLeaseGrant(EncodeLeaseGrant(regions), &back, &mapped_back));
  EXPECT_TRUE(mapped_back.empty());
  // An empty trailer is fine; a cut or longer one, an index past the ranges
  // or more entries than ranges are malformed.
  const std::vector<LeaseMapping> none;
  EXPECT_TRUE(DecodeLeaseGrant(EncodeLeaseGrant(regions, &none), &back, &mapped_back));
  EXPECT_FALSE(DecodeLeaseGrant(body.substr(0, body.size() - 1), &back, &mapped_back));
  EXPECT_FALSE(DecodeLeaseGrant(body + "x", &back, &mapped_back));
  const std::vector<LeaseMapping> past = {{2, 7, 42, 0, 1, 1}};
  EXPECT_FALSE(DecodeLeaseGrant(EncodeLeaseGrant(regions, &past), &back, &mapped_back));
  const std::vector<LeaseMapping> too_many = {{0, 1, 1, 0, 1, 1}, {1, 1, 2, 0, 1, 1}, {1, 1, 3, 0, 1, 1}};
  EXPECT_FALSE(DecodeLeaseGrant(EncodeLeaseGrant(regions, &too_many), &back, &mapped_back));
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

TEST(WireByteOrder, IntegersAreLittleEndianOnTheWire) {
  BodyWriter w;
  w.U16(0x0102);
  w.U32(0x01020304U);
  w.U64(0x0102030405060708ULL);
  EXPECT_EQ(w.Data(), std::string("\x02\x01"
                                  "\x04\x03\x02\x01"
                                  "\x08\x07\x06\x05\x04\x03\x02\x01",
                                  14));
  BodyReader r(w.Data().data(), w.Data().size());
  uint16_t a = 0;
  uint32_t b = 0;
  uint64_t c = 0;
  ASSERT_TRUE(r.U16(&a) && r.U32(&b) && r.U64(&c));
  EXPECT_EQ(a, 0x0102);
  EXPECT_EQ(b, 0x01020304U);
  EXPECT_EQ(c, 0x0102030405060708ULL);
  uint8_t range[kRangeBodyHeader];
  EncodeRangeHeader(0x11223344U, 0x55667788U, 0x0102030405060708ULL, range);
  EXPECT_EQ(std::string(reinterpret_cast<char *>(range), sizeof(range)),
            std::string("\x44\x33\x22\x11\x88\x77\x66\x55\x08\x07\x06\x05\x04\x03\x02\x01", 16));
  uint8_t eight[8];
  PutU64(eight, 0xFEDCBA9876543210ULL);
  EXPECT_EQ(eight[0], 0x10);
  EXPECT_EQ(eight[7], 0xFE);
  EXPECT_EQ(GetU64(eight), 0xFEDCBA9876543210ULL);
  // The header is a host struct on the wire: magic "LDXL" in its first bytes.
  MsgHeader h;
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(&h), 4), "LDXL");
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

// ---- Versions (docs/PROTOCOL.md "Versions and capabilities") ----

TEST(WireVersion, NegotiationPicksTheHighestVersionInBothRanges) {
  EXPECT_EQ(kHandshakeVersion, 1);
  EXPECT_EQ(kMinVersion, 1);
  EXPECT_EQ(kMaxVersion, 2);
  EXPECT_EQ(NegotiateVersion(1, 1), 1);  // a version-1 peer
  EXPECT_EQ(NegotiateVersion(1, 2), 2);
  EXPECT_EQ(NegotiateVersion(2, 7), 2);  // a newer peer that still speaks 2
  EXPECT_EQ(NegotiateVersion(3, 4), 0);  // disjoint
  EXPECT_EQ(NegotiateVersion(1, 3, 2, 5), 3);
  EXPECT_EQ(NegotiateVersion(4, 6, 1, 3), 0);
  EXPECT_EQ(NegotiateVersion(0, 0), 0);
  EXPECT_EQ(VersionRange(1, 2), "1..2");
  EXPECT_EQ(VersionRange(3, 3), "3");
}

TEST(WireVersion, HeadersMustCarryTheConnectionsVersion) {
  MsgHeader h = Header(MsgType::kPing, 0);
  EXPECT_EQ(h.version, kHandshakeVersion);
  EXPECT_EQ(CheckHeader(h), "");
  EXPECT_NE(CheckHeader(h, 2).find("protocol version 1 on a connection that negotiated version 2"),
            std::string::npos)
      << CheckHeader(h, 2);
  h.version = 2;
  EXPECT_EQ(CheckHeader(h, 2), "");
  EXPECT_NE(CheckHeader(h).find("unsupported protocol version 2 in a handshake message"), std::string::npos)
      << CheckHeader(h);
}

// The layout a version-1 engine writes and reads, field by field.
std::string Version1HelloLayout(const Hello &h) {
  BodyWriter w;
  w.U32(static_cast<uint32_t>(h.role));
  w.U32(h.capabilities);
  w.U64(h.session_id);
  w.U32(h.lanes);
  w.U32(h.heartbeat_interval_ms);
  w.U32(h.peer_timeout_ms);
  w.Str(h.engine_id);
  w.Str(h.target_engine_id);
  w.Str(h.nonce);
  w.Str(h.boot_id);
  w.U32(h.pid);
  w.U64(h.token_addr);
  w.Str(h.token);
  w.U32(h.conn_fd);
  return w.Data();
}

TEST(WireHello, TheVersionRangeIsAppendedAfterEveryVersion1Field) {
  Hello in;
  in.role = ConnRole::kControl;
  in.capabilities = kCapReverseLanes | kCapSameHost;
  in.heartbeat_interval_ms = 1000;
  in.peer_timeout_ms = 10000;
  in.engine_id = "127.0.0.1:26001";
  in.target_engine_id = "127.0.0.1:26000";
  in.boot_id = "boot";
  in.pid = 77;
  in.token = std::string(32, 't');
  in.conn_fd = 12;
  in.min_version = 1;
  in.max_version = 2;
  const std::string body = EncodeHello(in);
  const std::string v1 = Version1HelloLayout(in);
  // A version-1 receiver reads exactly what it knows and ignores the rest.
  ASSERT_EQ(body.size(), v1.size() + 4);
  EXPECT_EQ(body.substr(0, v1.size()), v1);
  EXPECT_EQ(body.substr(v1.size()), std::string("\x01\x00\x02\x00", 4));
  Hello out;
  ASSERT_TRUE(DecodeHello(body, &out));
  EXPECT_EQ(out.min_version, 1);
  EXPECT_EQ(out.max_version, 2);
  // What a version-1 sender sends (no range) means 1..1.
  Hello old;
  old.min_version = 9;
  ASSERT_TRUE(DecodeHello(v1, &old));
  EXPECT_EQ(old.min_version, 1);
  EXPECT_EQ(old.max_version, 1);
  // A later revision's fields after the range (and the transport
  // advertisements, an empty block here) are ignored.
  ASSERT_TRUE(DecodeHello(body + std::string("\0\0", 2) + "later fields", &out));
  EXPECT_EQ(out.max_version, 2);
}

TEST(WireHello, TransportAdvertisementsFollowTheVersionRangeAndAreBounded) {
  Hello in;
  in.engine_id = "e";
  in.min_version = 1;
  in.max_version = 2;
  const std::string plain = EncodeHello(in);
  in.transports = {{"fake", "fake-server"}, {"ucx", std::string(300, 'w')}};
  const std::string body = EncodeHello(in);
  // Appended after every earlier field: an engine that does not know them reads the rest unchanged.
  ASSERT_GT(body.size(), plain.size());
  EXPECT_EQ(body.substr(0, plain.size()), plain);
  Hello out;
  ASSERT_TRUE(DecodeHello(body, &out));
  ASSERT_EQ(out.transports.size(), 2u);
  EXPECT_EQ(out.transports[0].name, "fake");
  EXPECT_EQ(out.transports[0].metadata, "fake-server");
  EXPECT_EQ(out.transports[1].metadata, std::string(300, 'w'));
  // None advertised: nothing written, none decoded.
  ASSERT_TRUE(DecodeHello(plain, &out));
  EXPECT_TRUE(out.transports.empty());
  // Truncated inside the block: refused.
  for (size_t cut = plain.size() + 1; cut < body.size(); ++cut)
    EXPECT_FALSE(DecodeHello(body.substr(0, cut), &out)) << cut;
  // Over the limits: more than kMaxTransportAds, a name or metadata too long.
  BodyWriter w;
  w.U16(kMaxTransportAds + 1);
  EXPECT_FALSE(DecodeHello(plain + w.Data(), &out));
  BodyWriter long_name;
  long_name.U16(1);
  long_name.Str(std::string(kMaxTransportNameLen + 1, 'n'));
  long_name.Str("m");
  EXPECT_FALSE(DecodeHello(plain + long_name.Data(), &out));
  // The encoder leaves out what a decoder would refuse.
  in.transports = {{"x", std::string(kMaxTransportMetadata + 1, 'm')}, {"ok", "m"}};
  ASSERT_TRUE(DecodeHello(EncodeHello(in), &out));
  ASSERT_EQ(out.transports.size(), 1u);
  EXPECT_EQ(out.transports[0].name, "ok");
  // HelloAck carries them the same way, after its version.
  HelloAck ack;
  ack.engine_id = "s";
  ack.version = 2;
  ack.transports = {{"fake", "f"}};
  HelloAck ack_out;
  ASSERT_TRUE(DecodeHelloAck(EncodeHelloAck(ack), &ack_out));
  EXPECT_EQ(ack_out.version, 2);
  ASSERT_EQ(ack_out.transports.size(), 1u);
  EXPECT_EQ(ack_out.transports[0].metadata, "f");
}

TEST(WireHello, RefusesAnEmptyOrInvertedVersionRange) {
  Hello in;
  in.engine_id = "e";
  Hello out;
  in.min_version = 0;
  in.max_version = 2;
  EXPECT_FALSE(DecodeHello(EncodeHello(in), &out));
  in.min_version = 3;
  in.max_version = 2;
  EXPECT_FALSE(DecodeHello(EncodeHello(in), &out));
  std::string cut = EncodeHello(Hello{});
  cut.resize(cut.size() - 1);  // half a range
  EXPECT_FALSE(DecodeHello(cut, &out));
}

TEST(WireHelloAck, TheVersionIsAppendedAndAbsentFromVersion1) {
  HelloAck ack;
  ack.capabilities = kCapReverseLanes;
  ack.session_id = 9;
  ack.engine_id = "s";
  ack.version = 2;
  std::string body = EncodeHelloAck(ack);
  HelloAck out;
  ASSERT_TRUE(DecodeHelloAck(body, &out));
  EXPECT_EQ(out.version, 2);
  EXPECT_EQ(body.substr(body.size() - 2), std::string("\x02\x00", 2));
  ASSERT_TRUE(DecodeHelloAck(body + std::string("\0\0", 2) + "later", &out));
  EXPECT_EQ(out.version, 2);
  // Version 1 ends after the descriptor, or before the identity block.
  out.version = 7;
  ASSERT_TRUE(DecodeHelloAck(body.substr(0, body.size() - 2), &out));
  EXPECT_EQ(out.version, 0);
  BodyWriter minimal;
  minimal.U32(kCapReverseLanes);
  minimal.U64(9);
  minimal.Str("s");
  out.version = 7;
  ASSERT_TRUE(DecodeHelloAck(minimal.Data(), &out));
  EXPECT_EQ(out.version, 0);
  EXPECT_FALSE(DecodeHelloAck(body.substr(0, body.size() - 1), &out));  // half a version
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

TEST(WireCapabilities, UnknownBitsAreNeverGranted) {
  // reverse lanes, app messages, same host, notifications, lazy reverse lanes, write hold, source mappings
  EXPECT_EQ(kKnownCapabilities, 0x7FU);
  EXPECT_EQ(NegotiateCapabilities(0xFFFFFFFFU, 0xFFFFFFFFU), kKnownCapabilities);
  EXPECT_EQ(NegotiateCapabilities(kCapReverseLanes | (1U << 20), kCapReverseLanes | kCapAppMessages),
            kCapReverseLanes);
  EXPECT_EQ(NegotiateCapabilities(kCapSameHost, kCapReverseLanes), 0U);
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

TEST(WireHeader, IgnorableTypesAreAcceptedWithinTheControlBound) {
  EXPECT_EQ(kFirstIgnorableType, 0x8000);
  EXPECT_TRUE(IsIgnorable(0x8000));
  EXPECT_TRUE(IsIgnorable(0xFFFF));
  EXPECT_FALSE(IsIgnorable(0x7FFF));
  EXPECT_FALSE(IsIgnorable(static_cast<uint16_t>(MsgType::kReadRequest)));
  MsgHeader h;
  h.type = 0x8001;
  h.body_len = kMaxControlBody;
  EXPECT_EQ(CheckHeader(h), "");
  h.body_len = kMaxControlBody + 1;
  EXPECT_NE(CheckHeader(h).find("exceeds the limit of 4096"), std::string::npos) << CheckHeader(h);
  h.body_len = 0;
  h.payload_len = 1;
  EXPECT_NE(CheckHeader(h).find("must not carry a payload"), std::string::npos) << CheckHeader(h);
  h.payload_len = 0;
  h.type = 0x7FFF;
  EXPECT_NE(CheckHeader(h).find("unknown message type 32767"), std::string::npos);
}

}  // namespace
}  // namespace llmdd::wire

namespace llmdd::wire {
namespace {

TEST(WireNotify, TypesLieInTheIgnorableRangeAndAreKnown) {
  for (MsgType t : {MsgType::kNotify, MsgType::kNotifyAck}) {
    const auto type = static_cast<uint16_t>(t);
    EXPECT_GE(type, kFirstIgnorableType);
    EXPECT_TRUE(IsKnownType(type));
    EXPECT_FALSE(IsIgnorable(type));  // this engine handles them
  }
  EXPECT_STREQ(MsgTypeName(0x8010), "Notify");
  EXPECT_STREQ(MsgTypeName(0x8011), "NotifyAck");
  EXPECT_NE(kKnownCapabilities & kCapNotify, 0U);
  EXPECT_EQ(kCapNotify, 8U);
}

TEST(WireNotify, HeaderBoundsAreTheNotifyBodyAndTheErrorText) {
  EXPECT_EQ(kMaxNotifyBody, 2056U);
  EXPECT_EQ(CheckHeader(Header(MsgType::kNotify, kMaxNotifyBody)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kNotify, kMaxNotifyBody + 1)).find("Notify body of 2057 bytes"),
            std::string::npos);
  EXPECT_NE(CheckHeader(Header(MsgType::kNotify, 10, 1)).find("must not carry a payload"), std::string::npos);
  EXPECT_EQ(CheckHeader(Header(MsgType::kNotifyAck, kMaxErrorText)), "");
  EXPECT_NE(CheckHeader(Header(MsgType::kNotifyAck, kMaxErrorText + 1)).find("exceeds"), std::string::npos);
}

TEST(WireNotify, RoundTripAndMalformedBodies) {
  Notify n;
  n.name = std::string("a\0b", 3);
  n.message = std::string(kMaxNotifyField, 'm');
  const std::string body = EncodeNotify(n);
  EXPECT_EQ(body.size(), 4 + 3 + 4 + kMaxNotifyField);
  Notify back;
  ASSERT_TRUE(DecodeNotify(body, &back));
  EXPECT_EQ(back.name, n.name);
  EXPECT_EQ(back.message, n.message);
  ASSERT_TRUE(DecodeNotify(body + "a later field", &back));  // trailing bytes: ignored
  EXPECT_EQ(back.message, n.message);
  EXPECT_FALSE(DecodeNotify(body.substr(0, body.size() - 1), &back));  // cut short
  EXPECT_FALSE(DecodeNotify("", &back));
  Notify big;
  big.name = std::string(kMaxNotifyField + 1, 'n');
  EXPECT_FALSE(DecodeNotify(EncodeNotify(big), &back));  // a field over 1024 bytes
  // A length beyond the body is refused before anything is copied.
  std::string lying(4, '\0');
  PutU32(reinterpret_cast<uint8_t *>(lying.data()), 1000);
  EXPECT_FALSE(DecodeNotify(lying + "short", &back));
}

}  // namespace
}  // namespace llmdd::wire
