// Loopback endpoints for in-process engine tests: a port the kernel just gave
// out (and that is free again), and an Endpoint for 127.0.0.1.
#pragma once

#include <sys/socket.h>

#include <string>

#include "common/endpoint.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd::testing {

inline Endpoint Loopback(int port) {
  Endpoint e;
  e.ip = "127.0.0.1";
  e.family = AF_INET;
  e.port = port;
  return e;
}

// -1 when no port could be bound.
inline int FreeLoopbackPort() {
  TcpListener listener;
  std::string error;
  return listener.Listen(Loopback(0), &error) ? listener.Port() : -1;
}

}  // namespace llmdd::testing
