// MetricsServer: a minimal HTTP/1.0-1.1 endpoint that serves an engine's
// metrics (llmdd.MetricsListen; docs/METRICS.md) to a scraper.
//
//   GET /metrics       200, Prometheus text format (text/plain; version=0.0.4)
//   GET /metrics.json  200, the same snapshot as JSON
//   another path       404;  another method: 405;  a request line that is not
//   "METHOD SP TARGET SP HTTP/1.x": 400;  a request over max_request_bytes:
//   431;  no complete request within read_timeout_ms: 408;  a connection over
//   max_connections: 503. Every response closes its connection.
//
// One thread of its own, polling the listener and its few connections without
// blocking; it calls nothing of the engine but `render`, so a slow or hostile
// client costs at most this thread's time (bounded by the deadlines), never an
// engine thread. Requests are read until the blank line; a body is ignored.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "common/endpoint.h"

namespace llmdd {

class MetricsServer {
 public:
  struct Options {
    uint32_t max_connections = 4;    // llmdd.MetricsMaxConnections
    uint32_t read_timeout_ms = 2000; // llmdd.MetricsTimeoutMs: to send the request, and to take the response
    size_t max_request_bytes = 8192; // kMetricsMaxRequestBytes: request line and headers
  };
  // The body for a GET: Prometheus text (json false) or JSON. Runs on the
  // server's thread; must not block for long.
  using Render = std::function<std::string(bool json)>;

  MetricsServer() = default;
  ~MetricsServer();
  MetricsServer(const MetricsServer &) = delete;
  MetricsServer &operator=(const MetricsServer &) = delete;

  // Binds `listen` (port 0: any free port) and starts the thread. False with
  // *error saying why (address in use, no thread).
  bool Start(const Endpoint &listen, const Options &options, Render render, std::string *error);
  // Ends the thread and closes every connection; idempotent.
  void Stop();
  int Port() const { return port_; }

 private:
  void Run();

  Options options_;
  Render render_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // a pipe: Stop writes, the thread's poll wakes
  int port_ = -1;
  std::thread thread_;
};

}  // namespace llmdd
