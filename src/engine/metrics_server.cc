#include "engine/metrics_server.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "common/threads.h"

namespace llmdd {
namespace {

using Clock = std::chrono::steady_clock;

struct Client {
  int fd = -1;
  std::string request;
  Clock::time_point deadline;
};

// Writes all of `data` on a non-blocking socket by `deadline`; false when
// the client did not take it in time or went away (then it is dropped).
bool SendAll(int fd, const std::string &data, Clock::time_point deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      continue;
    }
    return false;
  }
  return true;
}

std::string Response(int code, const char *reason, const char *content_type, const std::string &body,
                     const char *extra_header = "") {
  std::string r = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + content_type +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" + extra_header +
                  "Connection: close\r\n\r\n";
  r += body;
  return r;
}

std::string Plain(int code, const char *reason, const char *extra_header = "") {
  return Response(code, reason, "text/plain; charset=utf-8", std::string(reason) + "\n", extra_header);
}

// The end of the request head ("\r\n\r\n", or "\n\n" from a lenient client), or npos.
size_t HeadEnd(const std::string &request) {
  size_t at = request.find("\r\n\r\n");
  if (at != std::string::npos) return at;
  return request.find("\n\n");
}

}  // namespace

MetricsServer::~MetricsServer() { Stop(); }

bool MetricsServer::Start(const Endpoint &listen, const Options &options, Render render, std::string *error) {
  options_ = options;
  render_ = std::move(render);
  sockaddr_storage addr{};
  Endpoint bind_to = listen;
  const socklen_t len = bind_to.ToSockaddr(&addr);
  listen_fd_ = ::socket(bind_to.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // A small backlog: a scraper connects once per interval, and more than
  // that waiting is refused by the kernel rather than queued here.
  if (::bind(listen_fd_, reinterpret_cast<sockaddr *>(&addr), len) != 0 || ::listen(listen_fd_, 8) != 0) {
    *error = "cannot listen on " + listen.ToString() + ": " + std::strerror(errno);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr *>(&bound), &bound_len);
  port_ = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port)
                                      : ntohs(reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
  if (::pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
    *error = std::string("pipe: ") + std::strerror(errno);
    ::close(listen_fd_);
    listen_fd_ = -1;
    return false;
  }
  if (!StartThread("metrics server", [this] { Run(); }, &thread_)) {
    *error = "no thread for the metrics server (RESOURCE_EXHAUSTED)";
    Stop();
    return false;
  }
  return true;
}

void MetricsServer::Stop() {
  if (wake_fds_[1] >= 0) {
    const char b = 1;
    ssize_t ignored = ::write(wake_fds_[1], &b, 1);
    (void)ignored;
  }
  if (thread_.joinable()) thread_.join();
  for (int &fd : wake_fds_) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

void MetricsServer::Run() {
  std::vector<Client> clients;
  std::vector<pollfd> fds;
  const auto timeout = std::chrono::milliseconds(options_.read_timeout_ms);
  for (;;) {
    fds.clear();
    fds.push_back({wake_fds_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    auto next_deadline = Clock::now() + std::chrono::seconds(60);
    for (const Client &c : clients) {
      fds.push_back({c.fd, POLLIN, 0});
      next_deadline = std::min(next_deadline, c.deadline);
    }
    const auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(next_deadline - Clock::now()).count();
    const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait_ms) + 1));
    if (ready < 0 && errno != EINTR) {
      LOG_ERROR("metrics server: poll failed (%s); it stops serving", std::strerror(errno));
      break;
    }
    if (fds[0].revents != 0) break;  // Stop
    const auto now = Clock::now();
    // Clients first (their indexes match fds from 2 on), then new ones.
    std::vector<Client> kept;
    for (size_t i = 0; i < clients.size(); ++i) {
      Client &c = clients[i];
      std::string reply;
      bool done = false;
      if (fds[i + 2].revents != 0) {
        char buf[2048];
        const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
        if (n > 0) {
          c.request.append(buf, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          done = true;  // the client went away before a whole request
        }
      }
      const size_t head_end = HeadEnd(c.request);
      if (!done && head_end == std::string::npos && c.request.size() > options_.max_request_bytes) {
        reply = Plain(431, "Request Header Fields Too Large");
        LOG_WARN("metrics server: refused a request of more than %zu bytes with 431", options_.max_request_bytes);
      } else if (!done && head_end != std::string::npos) {
        // "GET /metrics HTTP/1.1"
        const std::string line = c.request.substr(0, c.request.find_first_of("\r\n"));
        const size_t sp1 = line.find(' ');
        const size_t sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
        const bool well_formed = head_end <= options_.max_request_bytes && sp1 != std::string::npos &&
                                 sp1 > 0 && sp2 != std::string::npos && sp2 > sp1 + 1 &&
                                 line.compare(sp2 + 1, 7, "HTTP/1.") == 0 && line.size() == sp2 + 9;
        if (!well_formed) {
          reply = Plain(head_end > options_.max_request_bytes ? 431 : 400,
                        head_end > options_.max_request_bytes ? "Request Header Fields Too Large" : "Bad Request");
          LOG_WARN("metrics server: refused a malformed request with %s",
                   head_end > options_.max_request_bytes ? "431" : "400");
        } else {
          const std::string method = line.substr(0, sp1);
          std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
          const size_t query = target.find('?');
          if (query != std::string::npos) target.resize(query);
          if (method != "GET" && method != "HEAD") {
            reply = Plain(405, "Method Not Allowed", "Allow: GET, HEAD\r\n");
          } else if (target != "/metrics" && target != "/metrics.json") {
            reply = Plain(404, "Not Found");
          } else {
            const bool json = target == "/metrics.json";
            std::string body;
            if (!RunGuarded("metrics render", [&] { body = render_(json); })) {
              reply = Plain(500, "Internal Server Error");
            } else {
              reply = Response(200, "OK", json ? "application/json" : "text/plain; version=0.0.4; charset=utf-8",
                               body);
              if (method == "HEAD") reply.resize(reply.size() - body.size());
            }
          }
        }
      } else if (!done && now >= c.deadline) {
        reply = Plain(408, "Request Timeout");
        LOG_WARN("metrics server: no complete request within %u ms; answered 408", options_.read_timeout_ms);
      }
      if (!reply.empty()) {
        SendAll(c.fd, reply, Clock::now() + timeout);
        done = true;
      }
      if (done) {
        ::shutdown(c.fd, SHUT_RDWR);
        ::close(c.fd);
      } else {
        kept.push_back(std::move(c));
      }
    }
    clients.swap(kept);
    if (fds[1].revents != 0) {
      for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        if (clients.size() >= options_.max_connections) {
          // Refused at once, without reading: the scrapes in progress keep their turn.
          static const std::string busy = Plain(503, "Service Unavailable");
          (void)::send(fd, busy.data(), busy.size(), MSG_NOSIGNAL);
          ::close(fd);
          LOG_WARN("metrics server: %u connections already open (llmdd.MetricsMaxConnections); refused one with 503",
                   options_.max_connections);
          continue;
        }
        clients.push_back(Client{fd, std::string(), Clock::now() + timeout});
      }
    }
  }
  for (Client &c : clients) ::close(c.fd);
}

}  // namespace llmdd
