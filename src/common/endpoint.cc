#include "common/endpoint.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace llmdd {

int IpFamily(const std::string &ip) {
  unsigned char buf[sizeof(in6_addr)];
  if (ip.find('\0') != std::string::npos) return 0;  // c_str() would hide the rest
  if (inet_pton(AF_INET, ip.c_str(), buf) == 1) return AF_INET;
  if (inet_pton(AF_INET6, ip.c_str(), buf) == 1) return AF_INET6;
  return 0;
}

bool ParseInt64(std::string_view text, int64_t *out) {
  if (text.empty()) return false;
  size_t start = (text[0] == '+') ? 1 : 0;
  if (start == text.size() || (start == 1 && text[1] == '-')) return false;
  const char *first = text.data() + start;
  const char *last = text.data() + text.size();
  auto result = std::from_chars(first, last, *out);
  return result.ec == std::errc() && result.ptr == last;
}

bool ParseUint64(std::string_view text, uint64_t *out) {
  if (text.empty() || text[0] == '-' || text[0] == '+') return false;
  auto result = std::from_chars(text.data(), text.data() + text.size(), *out);
  return result.ec == std::errc() && result.ptr == text.data() + text.size();
}

std::string Endpoint::ToString() const {
  std::string host = family == AF_INET6 ? "[" + ip + "]" : ip;
  return port >= 0 ? host + ":" + std::to_string(port) : host;
}

socklen_t Endpoint::ToSockaddr(sockaddr_storage *out) const {
  memset(out, 0, sizeof(*out));
  uint16_t net_port = htons(static_cast<uint16_t>(port < 0 ? 0 : port));
  if (family == AF_INET6) {
    auto *sa = reinterpret_cast<sockaddr_in6 *>(out);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = net_port;
    inet_pton(AF_INET6, ip.c_str(), &sa->sin6_addr);
    return sizeof(sockaddr_in6);
  }
  auto *sa = reinterpret_cast<sockaddr_in *>(out);
  sa->sin_family = AF_INET;
  sa->sin_port = net_port;
  inet_pton(AF_INET, ip.c_str(), &sa->sin_addr);
  return sizeof(sockaddr_in);
}

namespace {

bool SplitHostPort(std::string_view text, std::string *host, std::string_view *port, bool *has_port,
                   std::string *error) {
  *has_port = false;
  if (text.empty()) {
    *error = "address is empty";
    return false;
  }
  if (text[0] == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) {
      *error = "missing ']' after IPv6 address";
      return false;
    }
    *host = std::string(text.substr(1, close - 1));
    std::string_view rest = text.substr(close + 1);
    if (rest.empty()) return true;
    if (rest[0] != ':') {
      *error = "expected ':' after ']'";
      return false;
    }
    *port = rest.substr(1);
    *has_port = true;
    return true;
  }
  size_t first_colon = text.find(':');
  if (first_colon == std::string_view::npos) {
    *host = std::string(text);
    return true;
  }
  if (text.find(':', first_colon + 1) != std::string_view::npos) {
    // Several colons: a bare IPv6 address without port (ports need brackets).
    *host = std::string(text);
    return true;
  }
  *host = std::string(text.substr(0, first_colon));
  *port = text.substr(first_colon + 1);
  *has_port = true;
  return true;
}

}  // namespace

bool ParseEngineEndpoint(std::string_view text, Endpoint *out, std::string *error) {
  if (text.find('\0') != std::string_view::npos) {
    *error = "address contains a NUL byte";
    return false;
  }
  std::string host;
  std::string_view port_text;
  bool has_port = false;
  if (!SplitHostPort(text, &host, &port_text, &has_port, error)) return false;
  int family = IpFamily(host);
  if (family == 0) {
    *error = "'" + host + "' is not a valid IPv4 or IPv6 address";
    return false;
  }
  int64_t port = -1;
  if (has_port) {
    if (!ParseInt64(port_text, &port)) {
      *error = "port '" + std::string(port_text) + "' is not an integer";
      return false;
    }
    if (port > 65535) {
      *error = "port " + std::to_string(port) + " is larger than 65535";
      return false;
    }
  }
  out->ip = host;
  out->family = family;
  out->port = port;
  return true;
}

bool ParseListenIpInfo(std::string_view text, Endpoint *out, std::string *error) {
  Endpoint parsed;
  if (!ParseEngineEndpoint(text, &parsed, error)) return false;
  if (parsed.port < 0) {
    *error = "listen address '" + std::string(text) + "' needs a port (ip:port)";
    return false;
  }
  *out = parsed;
  return true;
}

}  // namespace llmdd
