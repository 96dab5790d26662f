// Parsing of engine ids and listen addresses: "ip", "ip:port", "[ipv6]", "[ipv6]:port".
// Pure code, no I/O; every rejection comes with a message saying why.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

namespace llmdd {

struct Endpoint {
  std::string ip;       // textual address without brackets
  int family = 0;       // AF_INET or AF_INET6
  int64_t port = -1;    // -1 when absent; may be 0 or negative when given so
  bool HasListenPort() const { return port > 0; }
  // "ip:port" or "[ip]:port" for display and connect logs.
  std::string ToString() const;
  // Fills a sockaddr for connect/bind; port must be in [0, 65535].
  socklen_t ToSockaddr(sockaddr_storage *out) const;
};

// Engine id as ADXL's Initialize/Connect take it. A port is optional; a port
// <= 0 means "no listener". Port must be a decimal integer (optional sign) and
// <= 65535. IPv6 must be bracketed when a port follows.
bool ParseEngineEndpoint(std::string_view text, Endpoint *out, std::string *error);

// "ip:port" as LLM-DataDist's llm.ListenIpInfo takes it: port required, in [0, 65535].
bool ParseListenIpInfo(std::string_view text, Endpoint *out, std::string *error);

// Validates a bare IP address (v4 or v6) with inet_pton; returns its family or 0.
int IpFamily(const std::string &ip);

// Strict decimal parsers (no whitespace, no trailing garbage, no overflow).
bool ParseInt64(std::string_view text, int64_t *out);
bool ParseUint64(std::string_view text, uint64_t *out);

}  // namespace llmdd
