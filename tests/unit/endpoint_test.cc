// Unit tests for src/common/endpoint.h: engine-id / listen-address parsing, the
// strict integer parsers and the Endpoint helpers.
#include "common/endpoint.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

namespace llmdd {
namespace {

// ---------------------------------------------------------------------------
// ParseEngineEndpoint: accepted inputs
// ---------------------------------------------------------------------------

struct ValidCase {
  const char *text;
  const char *ip;
  int family;
  int64_t port;
  bool listens;
  const char *display;  // Endpoint::ToString()
};

class EngineEndpointValid : public ::testing::TestWithParam<ValidCase> {};

TEST_P(EngineEndpointValid, Parses) {
  const ValidCase &c = GetParam();
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint(c.text, &ep, &error)) << "input '" << c.text << "': " << error;
  EXPECT_EQ(ep.ip, c.ip);
  EXPECT_EQ(ep.family, c.family);
  EXPECT_EQ(ep.port, c.port);
  EXPECT_EQ(ep.HasListenPort(), c.listens);
  EXPECT_EQ(ep.ToString(), c.display);
}

INSTANTIATE_TEST_SUITE_P(
    Table, EngineEndpointValid,
    ::testing::Values(
        ValidCase{"127.0.0.1:26000", "127.0.0.1", AF_INET, 26000, true, "127.0.0.1:26000"},
        ValidCase{"127.0.0.1", "127.0.0.1", AF_INET, -1, false, "127.0.0.1"},
        ValidCase{"10.0.0.1:16000", "10.0.0.1", AF_INET, 16000, true, "10.0.0.1:16000"},
        ValidCase{"1.2.3.4:65535", "1.2.3.4", AF_INET, 65535, true, "1.2.3.4:65535"},
        ValidCase{"1.2.3.4:1", "1.2.3.4", AF_INET, 1, true, "1.2.3.4:1"},
        // Port 0 and negative ports are accepted: they mean "client only".
        ValidCase{"1.2.3.4:0", "1.2.3.4", AF_INET, 0, false, "1.2.3.4:0"},
        ValidCase{"1.2.3.4:-1", "1.2.3.4", AF_INET, -1, false, "1.2.3.4"},
        ValidCase{"1.2.3.4:-7", "1.2.3.4", AF_INET, -7, false, "1.2.3.4"},
        // "optional sign" and leading zeros are still decimal integers.
        ValidCase{"1.2.3.4:+80", "1.2.3.4", AF_INET, 80, true, "1.2.3.4:80"},
        ValidCase{"1.2.3.4:0080", "1.2.3.4", AF_INET, 80, true, "1.2.3.4:80"},
        ValidCase{"[::1]:5000", "::1", AF_INET6, 5000, true, "[::1]:5000"},
        ValidCase{"[::1]", "::1", AF_INET6, -1, false, "[::1]"},
        ValidCase{"[::1]:0", "::1", AF_INET6, 0, false, "[::1]:0"},
        ValidCase{"[fe80::1:2]:7", "fe80::1:2", AF_INET6, 7, true, "[fe80::1:2]:7"},
        ValidCase{"[::ffff:1.2.3.4]:80", "::ffff:1.2.3.4", AF_INET6, 80, true, "[::ffff:1.2.3.4]:80"},
        // A bare IPv6 address (several colons, no brackets) never carries a port.
        ValidCase{"::1", "::1", AF_INET6, -1, false, "[::1]"},
        ValidCase{"2001:db8::5", "2001:db8::5", AF_INET6, -1, false, "[2001:db8::5]"},
        // "::1:80" is itself a valid IPv6 address (0:0:0:0:0:0:1:80), so it is
        // taken whole as an address without a port, not as "::1" port 80.
        ValidCase{"::1:80", "::1:80", AF_INET6, -1, false, "[::1:80]"},
        // Brackets around an IPv4 address are tolerated (the family comes from inet_pton).
        ValidCase{"[1.2.3.4]:80", "1.2.3.4", AF_INET, 80, true, "1.2.3.4:80"}));

// ---------------------------------------------------------------------------
// ParseEngineEndpoint: rejected inputs
// ---------------------------------------------------------------------------

struct InvalidCase {
  const char *name;
  std::string text;
  const char *error_fragment;  // must appear in the error message ("" = any non-empty)
};

void PrintTo(const InvalidCase &c, std::ostream *os) { *os << "'" << c.text << "'"; }
void PrintTo(const ValidCase &c, std::ostream *os) { *os << "'" << c.text << "'"; }

class EngineEndpointInvalid : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(EngineEndpointInvalid, Rejects) {
  const InvalidCase &c = GetParam();
  Endpoint ep;
  ep.ip = "untouched";
  ep.family = 12345;
  ep.port = 4242;
  std::string error;
  EXPECT_FALSE(ParseEngineEndpoint(c.text, &ep, &error)) << "input '" << c.text << "' was accepted";
  EXPECT_FALSE(error.empty()) << "input '" << c.text << "' rejected without a message";
  EXPECT_NE(error.find(c.error_fragment), std::string::npos)
      << "input '" << c.text << "': message '" << error << "' lacks '" << c.error_fragment << "'";
  // A failed parse leaves the output alone.
  EXPECT_EQ(ep.ip, "untouched");
  EXPECT_EQ(ep.family, 12345);
  EXPECT_EQ(ep.port, 4242);
}

INSTANTIATE_TEST_SUITE_P(
    Table, EngineEndpointInvalid,
    ::testing::Values(
        InvalidCase{"BadIpv4", "ad.0.0.1:26000", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"BadIpNoPort", "ad.0.0.1", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"Hostname", "localhost:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"ShortIpv4", "1.2.3:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"Ipv4OctetTooBig", "1.2.3.256:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"AlphaPort", "1.2.3.4:abc", "is not an integer"},
        InvalidCase{"PortTrailingGarbage", "1.2.3.4:80x", "is not an integer"},
        InvalidCase{"PortHex", "1.2.3.4:0x50", "is not an integer"},
        InvalidCase{"PortLeadingSpace", "1.2.3.4: 80", "is not an integer"},
        InvalidCase{"PortTrailingSpace", "1.2.3.4:80 ", "is not an integer"},
        InvalidCase{"PortOverflowInt64", "1.2.3.4:99999999999999999999", "is not an integer"},
        InvalidCase{"PortTooBig", "1.2.3.4:65536", "larger than 65535"},
        InvalidCase{"PortWayTooBig", "1.2.3.4:100000", "larger than 65535"},
        InvalidCase{"EmptyPort", "1.2.3.4:", "is not an integer"},
        InvalidCase{"SignOnlyPort", "1.2.3.4:+", "is not an integer"},
        InvalidCase{"Empty", "", "empty"},
        InvalidCase{"EmptyHost", ":80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"ColonOnly", ":", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"UnclosedBracket", "[::1", "missing ']'"},
        InvalidCase{"UnclosedBracketPort", "[::1:80", "missing ']'"},
        InvalidCase{"GarbageAfterBracket", "[::1]x", "expected ':' after ']'"},
        InvalidCase{"SpaceAfterBracket", "[::1] :80", "expected ':' after ']'"},
        InvalidCase{"EmptyBrackets", "[]:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"BracketedGarbage", "[abc]:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"BracketedV6EmptyPort", "[::1]:", "is not an integer"},
        InvalidCase{"BracketedV6PortTooBig", "[::1]:70000", "larger than 65535"},
        InvalidCase{"TwoPorts", "1.2.3.4:80:90", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"BareV6WithBadTail", "::1:port", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"ScopedV6", "[fe80::1%eth0]:80", "not a valid IPv4 or IPv6 address"},
        InvalidCase{"LeadingSpace", " 1.2.3.4:80", "not a valid IPv4 or IPv6 address"}),
    [](const ::testing::TestParamInfo<InvalidCase> &info) { return std::string(info.param.name); });

// KNOWN BUG (src/common/endpoint.cc), disabled until fixed: the host part is
// checked with inet_pton(host.c_str()), so bytes after an embedded NUL are never
// looked at. "1.2.3.4\0junk:80" is accepted with ip == "1.2.3.4\0junk" (an
// AscendString built with (ptr, len) can carry such bytes), and that ip string
// then differs from "1.2.3.4" everywhere it is compared or printed.
TEST(EngineEndpoint, RejectsEmbeddedNul) {
  for (const std::string &text : {std::string("1.2.3.4\0:80", 11), std::string("1.2.3.4\0junk:80", 15),
                                  std::string("[::1\0x]:80", 10), std::string("1.2.3.4\0", 8)}) {
    Endpoint ep;
    std::string error;
    EXPECT_FALSE(ParseEngineEndpoint(text, &ep, &error)) << "accepted, ip has " << ep.ip.size() << " bytes";
    EXPECT_FALSE(error.empty());
  }
}

// The error out-parameter is overwritten, not appended to.
TEST(EngineEndpoint, ErrorMessageNamesTheInput) {
  Endpoint ep;
  std::string error = "stale";
  ASSERT_FALSE(ParseEngineEndpoint("ad.0.0.1:26000", &ep, &error));
  EXPECT_EQ(error.find("stale"), std::string::npos) << error;
  EXPECT_NE(error.find("ad.0.0.1"), std::string::npos) << error;
  ASSERT_FALSE(ParseEngineEndpoint("1.2.3.4:abc", &ep, &error));
  EXPECT_NE(error.find("abc"), std::string::npos) << error;
  ASSERT_FALSE(ParseEngineEndpoint("1.2.3.4:65536", &ep, &error));
  EXPECT_NE(error.find("65536"), std::string::npos) << error;
}

TEST(EngineEndpoint, SuccessAfterFailureOverwritesEverything) {
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint("[::1]:5000", &ep, &error)) << error;
  ASSERT_TRUE(ParseEngineEndpoint("127.0.0.1", &ep, &error)) << error;
  EXPECT_EQ(ep.ip, "127.0.0.1");
  EXPECT_EQ(ep.family, AF_INET);
  EXPECT_EQ(ep.port, -1);
}

// ---------------------------------------------------------------------------
// ParseListenIpInfo: a port is required and must be in [0, 65535]
// ---------------------------------------------------------------------------

TEST(ListenIpInfo, AcceptsIpAndPort) {
  struct Case {
    const char *text;
    const char *ip;
    int family;
    int64_t port;
  };
  const std::vector<Case> cases = {
      {"127.0.0.1:26000", "127.0.0.1", AF_INET, 26000},
      {"0.0.0.0:1", "0.0.0.0", AF_INET, 1},
      {"1.2.3.4:65535", "1.2.3.4", AF_INET, 65535},
      {"1.2.3.4:0", "1.2.3.4", AF_INET, 0},
      {"[::1]:5000", "::1", AF_INET6, 5000},
      {"[::]:26000", "::", AF_INET6, 26000},
  };
  for (const Case &c : cases) {
    Endpoint ep;
    std::string error;
    ASSERT_TRUE(ParseListenIpInfo(c.text, &ep, &error)) << c.text << ": " << error;
    EXPECT_EQ(ep.ip, c.ip) << c.text;
    EXPECT_EQ(ep.family, c.family) << c.text;
    EXPECT_EQ(ep.port, c.port) << c.text;
  }
}

TEST(ListenIpInfo, RejectsMissingOrBadPort) {
  const std::vector<std::string> cases = {
      "127.0.0.1",      // no port
      "[::1]",          // no port
      "::1",            // bare v6: never has a port
      "1.2.3.4:-1",     // negative
      "1.2.3.4:-80",    // negative
      "1.2.3.4:65536",  // too big
      "1.2.3.4:abc",    // not a number
      "1.2.3.4:",       // empty port
      "ad.0.0.1:26000", // bad ip
      "",               // empty
      ":80",            // no ip
      "[::1",           // unclosed
  };
  for (const std::string &text : cases) {
    Endpoint ep;
    ep.ip = "untouched";
    std::string error;
    EXPECT_FALSE(ParseListenIpInfo(text, &ep, &error)) << "'" << text << "' was accepted";
    EXPECT_FALSE(error.empty()) << "'" << text << "' rejected without a message";
    EXPECT_EQ(ep.ip, "untouched") << text;
  }
  Endpoint ep;
  std::string error;
  ASSERT_FALSE(ParseListenIpInfo("127.0.0.1", &ep, &error));
  EXPECT_NE(error.find("needs a port"), std::string::npos) << error;
  EXPECT_NE(error.find("127.0.0.1"), std::string::npos) << error;
}

// ---------------------------------------------------------------------------
// IpFamily
// ---------------------------------------------------------------------------

TEST(IpFamily, ClassifiesAddresses) {
  EXPECT_EQ(IpFamily("127.0.0.1"), AF_INET);
  EXPECT_EQ(IpFamily("0.0.0.0"), AF_INET);
  EXPECT_EQ(IpFamily("255.255.255.255"), AF_INET);
  EXPECT_EQ(IpFamily("::1"), AF_INET6);
  EXPECT_EQ(IpFamily("::"), AF_INET6);
  EXPECT_EQ(IpFamily("fe80::1"), AF_INET6);
  EXPECT_EQ(IpFamily("::ffff:10.0.0.1"), AF_INET6);
  EXPECT_EQ(IpFamily("2001:0db8:0000:0000:0000:ff00:0042:8329"), AF_INET6);
  EXPECT_EQ(IpFamily(""), 0);
  EXPECT_EQ(IpFamily("ad.0.0.1"), 0);
  EXPECT_EQ(IpFamily("256.0.0.1"), 0);
  EXPECT_EQ(IpFamily("1.2.3"), 0);
  EXPECT_EQ(IpFamily("1.2.3.4.5"), 0);
  EXPECT_EQ(IpFamily("localhost"), 0);
  EXPECT_EQ(IpFamily("[::1]"), 0);
  EXPECT_EQ(IpFamily("1.2.3.4:80"), 0);
  EXPECT_EQ(IpFamily(" 1.2.3.4"), 0);
  EXPECT_EQ(IpFamily("1::2::3"), 0);
  EXPECT_EQ(IpFamily(std::string("127.0.0.1\0garbage", 17)), 0);  // not silently truncated at the NUL
}

// ---------------------------------------------------------------------------
// ParseInt64 / ParseUint64
// ---------------------------------------------------------------------------

TEST(ParseInt64, AcceptsDecimalIntegers) {
  struct Case {
    const char *text;
    int64_t value;
  };
  const std::vector<Case> cases = {
      {"0", 0},
      {"1", 1},
      {"-1", -1},
      {"+1", 1},
      {"+0", 0},
      {"-0", 0},
      {"007", 7},
      {"26000", 26000},
      {"9223372036854775807", std::numeric_limits<int64_t>::max()},
      {"-9223372036854775808", std::numeric_limits<int64_t>::min()},
      {"+9223372036854775807", std::numeric_limits<int64_t>::max()},
  };
  for (const Case &c : cases) {
    int64_t value = 12345;
    EXPECT_TRUE(ParseInt64(c.text, &value)) << c.text;
    EXPECT_EQ(value, c.value) << c.text;
  }
}

TEST(ParseInt64, RejectsEverythingElse) {
  const std::vector<std::string> cases = {
      "",
      "+",
      "-",
      " 1",
      "1 ",
      "\t1",
      "1\n",
      "1.0",
      "1e3",
      "0x10",
      "abc",
      "12abc",
      "++1",
      "--1",
      "9223372036854775808",   // INT64_MAX + 1
      "-9223372036854775809",  // INT64_MIN - 1
      "99999999999999999999999",
      std::string("1\0", 2),
  };
  for (const std::string &text : cases) {
    int64_t value = 0;
    EXPECT_FALSE(ParseInt64(text, &value)) << "'" << text << "' accepted as " << value;
  }
}

// KNOWN BUG (src/common/endpoint.cc), disabled until fixed: ParseInt64 skips a
// leading '+' and then hands the rest to std::from_chars, which accepts a '-'
// itself, so "+-1" parses as -1 (and "1.2.3.4:+-5" as port -5). The header
// promises a strict decimal parser with one optional sign.
TEST(ParseInt64, RejectsPlusFollowedByMinus) {
  int64_t value = 0;
  EXPECT_FALSE(ParseInt64("+-1", &value)) << "'+-1' accepted as " << value;
  EXPECT_FALSE(ParseInt64("+-0", &value)) << "'+-0' accepted as " << value;
  Endpoint ep;
  std::string error;
  EXPECT_FALSE(ParseEngineEndpoint("1.2.3.4:+-5", &ep, &error)) << "accepted with port " << ep.port;
}

TEST(ParseInt64, WorksOnStringViewSlices) {
  // Parsers take a string_view: they must stop at its end, not at a NUL.
  const std::string text = "12345";
  int64_t value = 0;
  ASSERT_TRUE(ParseInt64(std::string_view(text).substr(0, 3), &value));
  EXPECT_EQ(value, 123);
  uint64_t uvalue = 0;
  ASSERT_TRUE(ParseUint64(std::string_view(text).substr(1, 2), &uvalue));
  EXPECT_EQ(uvalue, 23U);
}

TEST(ParseUint64, AcceptsUnsignedDecimal) {
  struct Case {
    const char *text;
    uint64_t value;
  };
  const std::vector<Case> cases = {
      {"0", 0},
      {"1", 1},
      {"0042", 42},
      {"18446744073709551615", std::numeric_limits<uint64_t>::max()},
      {"9223372036854775808", 9223372036854775808ULL},
  };
  for (const Case &c : cases) {
    uint64_t value = 777;
    EXPECT_TRUE(ParseUint64(c.text, &value)) << c.text;
    EXPECT_EQ(value, c.value) << c.text;
  }
}

TEST(ParseUint64, RejectsSignsWhitespaceOverflowGarbage) {
  const std::vector<std::string> cases = {
      "", "-", "+", "-1", "+1", "-0", " 1", "1 ", "1.5", "0x1", "abc", "1a",
      "18446744073709551616",  // UINT64_MAX + 1
      "99999999999999999999999",
  };
  for (const std::string &text : cases) {
    uint64_t value = 0;
    EXPECT_FALSE(ParseUint64(text, &value)) << "'" << text << "' accepted as " << value;
  }
}

// ---------------------------------------------------------------------------
// Endpoint::ToString / ToSockaddr
// ---------------------------------------------------------------------------

TEST(EndpointHelpers, ToStringForms) {
  Endpoint v4{"10.1.2.3", AF_INET, 80};
  EXPECT_EQ(v4.ToString(), "10.1.2.3:80");
  v4.port = -1;
  EXPECT_EQ(v4.ToString(), "10.1.2.3");
  v4.port = 0;
  EXPECT_EQ(v4.ToString(), "10.1.2.3:0");
  Endpoint v6{"fe80::1", AF_INET6, 443};
  EXPECT_EQ(v6.ToString(), "[fe80::1]:443");
  v6.port = -1;
  EXPECT_EQ(v6.ToString(), "[fe80::1]");
}

TEST(EndpointHelpers, ToStringRoundTripsThroughParser) {
  for (const char *text : {"127.0.0.1:26000", "127.0.0.1", "[::1]:5000", "[::1]", "1.2.3.4:0"}) {
    Endpoint ep;
    std::string error;
    ASSERT_TRUE(ParseEngineEndpoint(text, &ep, &error)) << text << ": " << error;
    EXPECT_EQ(ep.ToString(), text);
    Endpoint again;
    ASSERT_TRUE(ParseEngineEndpoint(ep.ToString(), &again, &error)) << error;
    EXPECT_EQ(again.ip, ep.ip);
    EXPECT_EQ(again.family, ep.family);
    EXPECT_EQ(again.port, ep.port);
  }
}

TEST(EndpointHelpers, ToSockaddrIpv4) {
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint("192.168.10.20:26000", &ep, &error)) << error;
  sockaddr_storage ss;
  memset(&ss, 0xAB, sizeof(ss));
  socklen_t len = ep.ToSockaddr(&ss);
  ASSERT_EQ(len, sizeof(sockaddr_in));
  const auto *sa = reinterpret_cast<const sockaddr_in *>(&ss);
  EXPECT_EQ(sa->sin_family, AF_INET);
  EXPECT_EQ(ntohs(sa->sin_port), 26000);
  char text[INET_ADDRSTRLEN] = {};
  ASSERT_NE(inet_ntop(AF_INET, &sa->sin_addr, text, sizeof(text)), nullptr);
  EXPECT_STREQ(text, "192.168.10.20");
  // The whole storage is cleared before filling (no stale bytes in sin_zero).
  for (size_t i = 0; i < sizeof(sa->sin_zero); ++i) EXPECT_EQ(sa->sin_zero[i], 0) << i;
}

TEST(EndpointHelpers, ToSockaddrIpv6) {
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint("[2001:db8::7]:65535", &ep, &error)) << error;
  sockaddr_storage ss;
  memset(&ss, 0xAB, sizeof(ss));
  socklen_t len = ep.ToSockaddr(&ss);
  ASSERT_EQ(len, sizeof(sockaddr_in6));
  const auto *sa = reinterpret_cast<const sockaddr_in6 *>(&ss);
  EXPECT_EQ(sa->sin6_family, AF_INET6);
  EXPECT_EQ(ntohs(sa->sin6_port), 65535);
  EXPECT_EQ(sa->sin6_flowinfo, 0U);
  EXPECT_EQ(sa->sin6_scope_id, 0U);
  char text[INET6_ADDRSTRLEN] = {};
  ASSERT_NE(inet_ntop(AF_INET6, &sa->sin6_addr, text, sizeof(text)), nullptr);
  EXPECT_STREQ(text, "2001:db8::7");
}

TEST(EndpointHelpers, ToSockaddrWithoutPortUsesZero) {
  Endpoint ep;
  std::string error;
  ASSERT_TRUE(ParseEngineEndpoint("127.0.0.1", &ep, &error)) << error;
  sockaddr_storage ss;
  ASSERT_EQ(ep.ToSockaddr(&ss), sizeof(sockaddr_in));
  EXPECT_EQ(reinterpret_cast<const sockaddr_in *>(&ss)->sin_port, 0);
  EXPECT_EQ(ntohl(reinterpret_cast<const sockaddr_in *>(&ss)->sin_addr.s_addr), INADDR_LOOPBACK);
}

}  // namespace
}  // namespace llmdd
