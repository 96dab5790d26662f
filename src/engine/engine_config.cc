#include "engine/engine_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

#include "common/endpoint.h"
#include "common/json_object.h"
#include "common/log.h"

namespace llmdd {
namespace {

bool ParseBounded(const std::string &text, int64_t lo, int64_t hi, int64_t *out) {
  return ParseInt64(text, out) && *out >= lo && *out <= hi;
}

// "$BUFFER_NUM:$BUFFER_SIZE_MB": both > 0, or "0:0" to disable the pool.
bool ValidBufferPool(const std::string &text) {
  size_t colon = text.find(':');
  if (colon == std::string::npos) return false;
  int64_t num = 0, size = 0;
  if (!ParseInt64(text.substr(0, colon), &num) || !ParseInt64(text.substr(colon + 1), &size)) return false;
  if (num == 0 && size == 0) return true;
  return num > 0 && size > 0 && num <= 1024 && size <= 4096;
}

// Parses an integer option in [lo, hi] into *out; false with *error naming it otherwise.
template <typename T>
bool SetBounded(const std::string &key, const std::string &value, int64_t lo, int64_t hi, T *out,
                std::string *error) {
  int64_t v = 0;
  if (!ParseBounded(value, lo, hi, &v)) {
    *error = "option " + key + "='" + value + "' must be an integer in [" + std::to_string(lo) + ", " +
             std::to_string(hi) + "]";
    return false;
  }
  *out = static_cast<T>(v);
  return true;
}

// The reason a shared secret is refused, or "". Only its length is checked
// and reported: the secret itself must never reach a log or an error text.
std::string CheckAuthSecret(const std::string &secret) {
  if (secret.size() < kMinAuthSecretBytes)
    return "is " + std::to_string(secret.size()) + " bytes: a shared secret must be at least " +
           std::to_string(kMinAuthSecretBytes) + " bytes (use a random one, e.g. `openssl rand -hex 32`)";
  if (secret.size() > kMaxAuthSecretBytes)
    return "is " + std::to_string(secret.size()) + " bytes: a shared secret must be at most " +
           std::to_string(kMaxAuthSecretBytes) + " bytes";
  return "";
}

// A number as JSON writes one (or as a string holding one), read without the
// process's locale (strtod would take "0,3" under a German LC_NUMERIC).
bool ParseFraction(const std::string &text, double *out) {
  const char *begin = text.data(), *end = text.data() + text.size();
  const auto result = std::from_chars(begin, end, *out, std::chars_format::general);
  return !text.empty() && result.ec == std::errc() && result.ptr == end && std::isfinite(*out);
}

// Tolerance of the waterline checks: 0.3 - 0.1 is 0.19999999999999998 in
// doubles, and (0.3 - 0.1) * 10 must still count as two channels.
constexpr double kWaterlineEpsilon = 1e-9;

}  // namespace

bool ParseGlobalResourceConfig(const std::string &json, ConnectPoolConfig *connect_pool,
                               ChannelPoolConfig *channel_pool, std::string *error) {
  std::map<std::string, std::string> members;
  if (!ParseJsonObject(json, &members, error)) {
    *error = "GlobalResourceConfig is not a JSON object: " + *error;
    return false;
  }
  struct Field {
    const char *key;
    int64_t lo, hi;
    uint32_t *out;
  } fields[] = {
      {"connect_pool.thread_num", 1, 64, &connect_pool->threads},
      {"connect_pool.task_queue_capacity", 1, 65535, &connect_pool->queue_capacity},
      {"channel_pool.max_channel", 1, 512, &channel_pool->max_channel},
  };
  for (const Field &f : fields) {
    auto it = members.find(f.key);
    if (it == members.end()) continue;
    int64_t v = 0;
    if (!ParseBounded(it->second, f.lo, f.hi, &v)) {
      *error = std::string("GlobalResourceConfig ") + f.key + "='" + it->second + "' must be an integer in [" +
               std::to_string(f.lo) + ", " + std::to_string(f.hi) + "]";
      return false;
    }
    *f.out = static_cast<uint32_t>(v);
  }
  const auto high = members.find("channel_pool.high_waterline");
  const auto low = members.find("channel_pool.low_waterline");
  if (members.count("channel_pool.max_channel") != 0 || high != members.end() || low != members.end())
    channel_pool->enabled = true;
  if ((high == members.end()) != (low == members.end())) {
    const char *given = high != members.end() ? "channel_pool.high_waterline" : "channel_pool.low_waterline";
    const char *missing = high != members.end() ? "channel_pool.low_waterline" : "channel_pool.high_waterline";
    *error = std::string("GlobalResourceConfig ") + given + " is given without " + missing +
             ": give both waterlines (each in (0, 1)) or neither";
    return false;
  }
  if (high == members.end()) return true;
  for (const auto &member : {high, low}) {
    double v = 0;
    if (!ParseFraction(member->second, &v) || v <= 0 || v >= 1) {
      *error = "GlobalResourceConfig " + member->first + "='" + member->second + "' must be a number in (0, 1)";
      return false;
    }
    (member == high ? channel_pool->high_waterline : channel_pool->low_waterline) = v;
  }
  const double span = (channel_pool->high_waterline - channel_pool->low_waterline) * channel_pool->max_channel;
  if (span < 1 - kWaterlineEpsilon) {
    *error = "GlobalResourceConfig channel_pool.high_waterline='" + high->second +
             "' and channel_pool.low_waterline='" + low->second +
             "' must be at least one channel apart: (high - low) * channel_pool.max_channel (" +
             std::to_string(channel_pool->max_channel) + ") is " + std::to_string(span) + ", must be >= 1";
    return false;
  }
  channel_pool->waterlines = true;
  return true;
}

adxl::Status ParseEngineOptions(const std::map<std::string, std::string> &options, EngineConfig *config,
                                std::string *error) {
  int auto_connect_option = -1;  // AutoConnect: -1 not given, else its value
  for (const auto &[key, value] : options) {
    int64_t v = 0;
    if (key == adxl::OPTION_BUFFER_POOL || key == "BufferPool") {
      // Staging buffers are not needed by the TCP/shared-memory data paths
      // (they read and write user memory directly), so a valid value is accepted
      // and has no further effect.
      if (!ValidBufferPool(value)) {
        *error = "option " + key + "='" + value + "' must be 'BUFFER_NUM:BUFFER_SIZE_MB' (both > 0) or '0:0'";
        return adxl::PARAM_INVALID;
      }
      LOG_INFO("option %s=%s accepted (no staging pool is needed by this engine)", key.c_str(), value.c_str());
    } else if (key == adxl::OPTION_RDMA_TRAFFIC_CLASS || key == "RdmaTrafficClass") {
      if (!ParseBounded(value, 0, 255, &v) || v % 4 != 0) {
        *error = "option " + key + "='" + value + "' must be an integer in [0, 255] and a multiple of 4";
        return adxl::PARAM_INVALID;
      }
      LOG_INFO("option %s=%s accepted (used by RDMA transports only)", key.c_str(), value.c_str());
    } else if (key == adxl::OPTION_RDMA_SERVICE_LEVEL || key == "RdmaServiceLevel") {
      if (!ParseBounded(value, 0, 7, &v)) {
        *error = "option " + key + "='" + value + "' must be an integer in [0, 7]";
        return adxl::PARAM_INVALID;
      }
      LOG_INFO("option %s=%s accepted (used by RDMA transports only)", key.c_str(), value.c_str());
    } else if (key == kOptGlobalResourceConfig) {
      // HIXL's JSON resource configuration, read here for both names: the
      // channel pool is the engine's, the connect pool hixl::Hixl's.
      std::string why;
      if (!ParseGlobalResourceConfig(value, &config->connect_pool, &config->channel_pool, &why)) {
        *error = "option " + why;  // "option GlobalResourceConfig channel_pool.max_channel='0' must be ..."
        return adxl::PARAM_INVALID;
      }
    } else if (key == kOptAutoConnect) {
      if (value != "0" && value != "1") {
        *error = "option " + key + "='" + value + "' must be 0 or 1";
        return adxl::PARAM_INVALID;
      }
      auto_connect_option = value == "1" ? 1 : 0;
    } else if (key == kOptUcxWorkers) {
      if (!SetBounded(key, value, 1, kUcxWorkersMax, &config->ucx_workers, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptTcpConnections) {
      if (!SetBounded(key, value, 1, 64, &config->tcp_connections, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptHeartbeatIntervalMs) {
      if (!SetBounded(key, value, 10, 3600000, &config->heartbeat_interval_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptPeerTimeoutMs) {
      if (!SetBounded(key, value, 100, 86400000, &config->peer_timeout_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptWorkerThreads) {
      if (!SetBounded(key, value, 1, 256, &config->worker_threads, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptEventThreads) {
      if (!SetBounded(key, value, 1, 256, &config->event_threads, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptIdleLaneCloseMs) {
      if (!SetBounded(key, value, 100, 86400000, &config->idle_lane_close_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptBusyPollUs) {
      if (!SetBounded(key, value, 0, 10000, &config->busy_poll_us, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxServeWaitMs) {
      if (!SetBounded(key, value, 100, 86400000, &config->max_serve_wait_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptDeregisterGraceMs) {
      if (!SetBounded(key, value, 100, 600000, &config->deregister_grace_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptSameHostMinPartBytes) {
      if (!SetBounded(key, value, 64ULL << 10, 1ULL << 40, &config->same_host_min_part_bytes, error)) {
        return adxl::PARAM_INVALID;
      }
    } else if (key == kOptSameHostMapMaxBytes) {
      if (!SetBounded(key, value, 0, 1ULL << 50, &config->same_host_map_max_bytes, error)) {
        return adxl::PARAM_INVALID;
      }
    } else if (key == kOptMaxPeerMessageBytes) {
      if (!SetBounded(key, value, 64 << 10, 64 << 20, &config->max_peer_message_bytes, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxSessions) {
      if (!SetBounded(key, value, 1, 1000000, &config->max_sessions, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxLanesPerSession) {
      if (!SetBounded(key, value, 1, 1024, &config->max_lanes_per_session, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxHandshakes) {
      if (!SetBounded(key, value, 1, 65536, &config->max_handshakes, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxRequestsInFlight) {
      if (!SetBounded(key, value, 1, 1000000, &config->max_requests_in_flight, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptAsyncTransferMaxMs) {
      if (!SetBounded(key, value, 100, 86400000, &config->async_transfer_max_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMaxNotifyBytes) {
      if (!SetBounded(key, value, 64 << 10, int64_t{4} << 30, &config->max_notify_bytes, error))
        return adxl::PARAM_INVALID;
    } else if (key == kOptMetricsListen) {
      std::string why;
      if (!ParseListenIpInfo(value, &config->metrics_listen, &why)) {
        *error = std::string("option ") + kOptMetricsListen + "='" + value + "' must be ip:port (port 0: any): " + why;
        return adxl::PARAM_INVALID;
      }
      config->metrics_listen_set = true;
    } else if (key == kOptMetricsMaxConnections) {
      if (!SetBounded(key, value, 1, 64, &config->metrics_max_connections, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptMetricsTimeoutMs) {
      if (!SetBounded(key, value, 10, 60000, &config->metrics_timeout_ms, error)) return adxl::PARAM_INVALID;
    } else if (key == kOptTransport) {
      if (value == "auto") {
        config->transport = EngineConfig::Transport::kAuto;
      } else if (value == "tcp") {
        config->transport = EngineConfig::Transport::kTcp;
      } else if (value == "shm" || value == "same-host") {
        config->transport = EngineConfig::Transport::kSameHost;
      } else if (value == "ucx") {
#ifdef LLMDD_HAVE_UCX
        config->transport = EngineConfig::Transport::kUcx;
#else
        *error = std::string("option ") + kOptTransport + "=ucx: this library was built without UCX (LLMDD_WITH_UCX)";
        return adxl::PARAM_INVALID;
#endif
      } else {
        *error = std::string("option ") + kOptTransport + "='" + value + "' must be auto, tcp, shm or ucx";
        return adxl::PARAM_INVALID;
      }
    } else if (key == kOptUcxUnderAuto) {
      // Accepted without UCX too (no effect there): one options map serves both builds.
      if (value == "rdma") {
        config->ucx_under_auto = EngineConfig::UcxUnderAuto::kRdma;
      } else if (value == "always") {
        config->ucx_under_auto = EngineConfig::UcxUnderAuto::kAlways;
      } else if (value == "any") {
        config->ucx_under_auto = EngineConfig::UcxUnderAuto::kAny;
      } else if (value == "never") {
        config->ucx_under_auto = EngineConfig::UcxUnderAuto::kNever;
      } else {
        *error = std::string("option ") + kOptUcxUnderAuto + "='" + value + "' must be rdma, always, any or never";
        return adxl::PARAM_INVALID;
      }
    } else if (key == kOptAuthSecret) {
      std::string why = CheckAuthSecret(value);
      if (!why.empty()) {
        *error = std::string("option ") + kOptAuthSecret + " " + why;
        return adxl::PARAM_INVALID;
      }
      config->auth_secret = value;
    } else {
      LOG_WARN("unknown option '%s' ignored", key.c_str());
    }
  }
  if (config->auth_secret.empty()) {
    const char *env = getenv(kEnvAuthSecret);
    if (env != nullptr && env[0] != '\0') {
      std::string why = CheckAuthSecret(env);
      if (!why.empty()) {
        *error = std::string("environment variable ") + kEnvAuthSecret + " " + why;
        return adxl::PARAM_INVALID;
      }
      config->auth_secret = env;
    }
  }
  // A pool needs auto-connect (the channels it closes must come back on use),
  // and auto-connect needs the pool (it bounds the channels transfers open
  // and cleans up dead ones): either option turns both on.
  if (config->channel_pool.enabled && auto_connect_option == 0)
    LOG_WARN("option %s=0 ignored: a channel pool in %s turns auto-connect on", kOptAutoConnect,
             kOptGlobalResourceConfig);
  if (config->channel_pool.enabled || auto_connect_option == 1) {
    config->auto_connect = true;
    config->channel_pool.enabled = true;
  }
  if (config->peer_timeout_ms <= config->heartbeat_interval_ms) {
    *error = "llmdd.PeerTimeoutMs (" + std::to_string(config->peer_timeout_ms) +
             ") must be larger than llmdd.HeartbeatIntervalMs (" + std::to_string(config->heartbeat_interval_ms) + ")";
    return adxl::PARAM_INVALID;
  }
  return adxl::SUCCESS;
}

uint32_t EngineConfig::SessionSilenceMs(uint32_t client_peer_timeout_ms, uint32_t client_heartbeat_interval_ms) const {
  // The client may ask for more patience than our own peer timeout (it sends
  // heartbeats less often), but never more than our own maximum wait.
  const uint64_t promised = uint64_t{client_peer_timeout_ms} + client_heartbeat_interval_ms;
  const uint32_t ceiling = std::max(peer_timeout_ms, max_serve_wait_ms);
  return static_cast<uint32_t>(std::min<uint64_t>(std::max<uint64_t>(peer_timeout_ms, promised), ceiling));
}

}  // namespace llmdd
