// fuzz_parsers: the text parsers for engine ids, listen addresses, integers,
// engine options and fault plans.
//
// Input: fields separated by NUL bytes. Every field goes to ParseEngineEndpoint,
// ParseListenIpInfo, ParseInt64, ParseUint64 and ParseFaultPlan; the whole
// input (NULs included) goes to ParseEngineEndpoint and ParseFaultPlan too.
// Consecutive field pairs form the options map (key, value) of
// ParseEngineOptions. Accepted values must lie in their documented ranges and
// survive a print/parse round trip.
#include <arpa/inet.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common/endpoint.h"
#include "common/log.h"
#include "engine/engine_config.h"
#include "fuzz_common.h"
#include "transport/fault_injection.h"

using namespace llmdd;

namespace {

void CheckEndpoint(const std::string &text) {
  Endpoint ep;
  std::string error;
  if (!ParseEngineEndpoint(text, &ep, &error)) {
    FUZZ_CHECK(!error.empty(), "rejection without a reason");
  } else {
    FUZZ_CHECK(ep.family == AF_INET || ep.family == AF_INET6, "family %d", ep.family);
    FUZZ_CHECK(ep.ip.find('\0') == std::string::npos, "ip with a NUL accepted");
    FUZZ_CHECK(IpFamily(ep.ip) == ep.family, "ip '%s' does not parse as its family", ep.ip.c_str());
    FUZZ_CHECK(ep.port <= 65535, "port %lld accepted", static_cast<long long>(ep.port));
    // Printing and parsing again gives the same endpoint.
    Endpoint again;
    std::string printed = ep.ToString();
    FUZZ_CHECK(ParseEngineEndpoint(printed, &again, &error), "'%s' (printed) rejected: %s", printed.c_str(),
               error.c_str());
    // ToString() omits a negative port ("no listener"), which parses back as -1.
    FUZZ_CHECK(again.ip == ep.ip && again.family == ep.family && again.port == (ep.port < 0 ? -1 : ep.port),
               "round trip of '%s' changed it", printed.c_str());
    if (ep.port >= 0) {
      sockaddr_storage sa;
      socklen_t len = ep.ToSockaddr(&sa);
      FUZZ_CHECK(sa.ss_family == ep.family, "sockaddr family");
      FUZZ_CHECK(len == (ep.family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in)), "sockaddr length");
    }
  }
  Endpoint listen;
  if (ParseListenIpInfo(text, &listen, &error)) {
    FUZZ_CHECK(listen.port >= 0 && listen.port <= 65535, "listen port %lld accepted",
               static_cast<long long>(listen.port));
    FUZZ_CHECK(listen.family == AF_INET || listen.family == AF_INET6, "family %d", listen.family);
  }
}

void CheckIntegers(const std::string &text) {
  int64_t s = 0;
  if (ParseInt64(text, &s)) {
    FUZZ_CHECK(!text.empty(), "empty text accepted");
    int64_t again = 0;
    FUZZ_CHECK(ParseInt64(std::to_string(s), &again) && again == s, "int64 round trip of %lld",
               static_cast<long long>(s));
    for (char c : text) FUZZ_CHECK((c >= '0' && c <= '9') || c == '-' || c == '+', "non-digit accepted");
  }
  uint64_t u = 0;
  if (ParseUint64(text, &u)) {
    uint64_t again = 0;
    FUZZ_CHECK(ParseUint64(std::to_string(u), &again) && again == u, "uint64 round trip");
    for (char c : text) FUZZ_CHECK(c >= '0' && c <= '9', "non-digit accepted in uint64");
  }
}

void CheckFaultPlan(const std::string &text) {
  FaultPlan plan;
  std::string error;
  if (!ParseFaultPlan(text, &plan, &error)) {
    FUZZ_CHECK(!error.empty(), "rejection without a reason");
    return;
  }
  // Probabilities are compared with uniform [0, 1) draws; NaN silently disables
  // a fault, so only the documented range is checked here.
  for (double p : {plan.delay, plan.stall, plan.drop, plan.corrupt, plan.close, plan.partial, plan.fail_register})
    FUZZ_CHECK(std::isnan(p) || (p >= 0 && p <= 1), "probability %g accepted", p);
  FUZZ_CHECK(plan.delay_ms >= 0 && plan.delay_ms <= 60000, "delay_ms %d accepted", plan.delay_ms);
}

void CheckOptions(const std::vector<std::string> &fields) {
  std::map<std::string, std::string> options;
  for (size_t i = 0; i + 1 < fields.size(); i += 2) options[fields[i]] = fields[i + 1];
  EngineConfig config;
  std::string error;
  adxl::Status status = ParseEngineOptions(options, &config, &error);
  if (status != adxl::SUCCESS) {
    FUZZ_CHECK(status == adxl::PARAM_INVALID, "status %u", status);
    FUZZ_CHECK(!error.empty(), "rejection without a reason");
    return;
  }
  FUZZ_CHECK(config.tcp_connections >= 1 && config.tcp_connections <= 64, "tcp_connections %u",
             config.tcp_connections);
  FUZZ_CHECK(config.ucx_workers <= kUcxWorkersMax && config.UcxWorkers() >= 1, "ucx_workers %u", config.ucx_workers);
  FUZZ_CHECK(config.worker_threads >= 1 && config.worker_threads <= 256, "worker_threads %u",
             config.worker_threads);
  FUZZ_CHECK(config.heartbeat_interval_ms >= 10 && config.heartbeat_interval_ms <= 3600000, "heartbeat %u",
             config.heartbeat_interval_ms);
  FUZZ_CHECK(config.peer_timeout_ms >= 100 && config.peer_timeout_ms <= 86400000, "peer timeout %u",
             config.peer_timeout_ms);
  FUZZ_CHECK(config.peer_timeout_ms > config.heartbeat_interval_ms, "peer timeout <= heartbeat");
  FUZZ_CHECK(config.auth_secret.size() <= 4096, "secret of %zu bytes", config.auth_secret.size());
  FUZZ_CHECK(config.transport == EngineConfig::Transport::kAuto || config.transport == EngineConfig::Transport::kTcp ||
                 config.transport == EngineConfig::Transport::kSameHost ||
                 config.transport == EngineConfig::Transport::kUcx,
             "transport %d", static_cast<int>(config.transport));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  SetLogLevel(LogLevel::kOff);
  unsetenv(kEnvAuthSecret);  // ParseEngineOptions falls back to it
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const std::string all(reinterpret_cast<const char *>(data), size);
  std::vector<std::string> fields;
  size_t start = 0;
  for (;;) {
    size_t nul = all.find('\0', start);
    fields.push_back(all.substr(start, nul == std::string::npos ? std::string::npos : nul - start));
    if (nul == std::string::npos) break;
    start = nul + 1;
  }
  for (const std::string &field : fields) {
    CheckEndpoint(field);
    CheckIntegers(field);
    CheckFaultPlan(field);
    (void)IpFamily(field);
  }
  if (fields.size() > 1) {
    CheckEndpoint(all);  // embedded NULs must be refused
    CheckFaultPlan(all);
  }
  CheckOptions(fields);
  return 0;
}
