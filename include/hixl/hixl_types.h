/*
 * HIXL public types (namespace hixl): option keys, status codes, memory and
 * transfer descriptors, asynchronous transfer and connection statuses.
 * Names, values, default member initializers and layouts match CANN's newest
 * hixl/hixl_types.h. The types are hixl's own (not aliases of
 * adxl's), as in CANN, so symbols of hixl::Hixl name hixl types; they have
 * the same values and layouts as their adxl namesakes.
 * C++11-compatible; every struct keeps a fixed size with reserved bytes.
 * See docs/API.md ("HIXL") for the behaviour of each call and status.
 */
#ifndef CANN_HIXL_INCLUDE_HIXL_HIXL_TYPES_H_
#define CANN_HIXL_INCLUDE_HIXL_HIXL_TYPES_H_

#include <cstddef>
#include <cstdint>
#include "external/ge_common/ge_api_error_codes.h"

#ifndef ASCEND_FUNC_VISIBILITY
#ifdef FUNC_VISIBILITY
#define ASCEND_FUNC_VISIBILITY __attribute__((visibility("default")))
#else
#define ASCEND_FUNC_VISIBILITY
#endif
#endif

namespace hixl {
using Status = uint32_t;
using AscendString = ge::AscendString;
// An asynchronous transfer (Hixl::TransferAsync): an opaque id, never null.
using TransferReq = void *;

// Option keys of Hixl::Initialize (no "adxl." prefix).
constexpr const char OPTION_ENABLE_USE_FABRIC_MEM[] = "EnableUseFabricMem";
constexpr const char OPTION_RDMA_TRAFFIC_CLASS[] = "RdmaTrafficClass";
constexpr const char OPTION_RDMA_SERVICE_LEVEL[] = "RdmaServiceLevel";
constexpr const char OPTION_BUFFER_POOL[] = "BufferPool";
constexpr const char OPTION_GLOBAL_RESOURCE_CONFIG[] = "GlobalResourceConfig";
constexpr const char OPTION_AUTO_CONNECT[] = "AutoConnect";
constexpr const char OPTION_LOCAL_COMM_RES[] = "LocalCommRes";

// Status codes (the same values as adxl's).
constexpr Status SUCCESS = 0U;
constexpr Status PARAM_INVALID = 103900U;
constexpr Status TIMEOUT = 103901U;
constexpr Status NOT_CONNECTED = 103902U;
constexpr Status ALREADY_CONNECTED = 103903U;
constexpr Status NOTIFY_FAILED = 103904U;
constexpr Status UNSUPPORTED = 103905U;
constexpr Status FAILED = 503900U;
constexpr Status RESOURCE_EXHAUSTED = 203900U;

// Capabilities (Hixl::GetCapability); values are fixed, new ones go last.
enum FeatureType : int32_t {
  AUTO_CONNECT = 0,
  CLIENT_SERVER_COMM = 1,
};
constexpr int32_t FEATURE_SUPPORTED = 1;
constexpr int32_t FEATURE_NOT_SUPPORTED = 0;

using MemHandle = void *;

enum MemType {
  MEM_DEVICE,
  MEM_HOST
};

enum TransferOp {
  READ,   // remote -> local
  WRITE   // local -> remote
};

struct MemDesc {
  uintptr_t addr;
  size_t len;
  // Registered for local use only: never reachable by peers.
  bool local_only = false;
  uint8_t reserved[127] = {};
};

struct TransferOpDesc {
  uintptr_t local_addr;
  uintptr_t remote_addr;
  size_t len;
};

enum class TransferStatus {
  WAITING,
  COMPLETED,
  TIMEOUT,
  FAILED
};

// TransferAsync's optional arguments: user_data comes back with the request's
// status from the bulk GetTransferStatus.
struct TransferArgs {
  const void *user_data = nullptr;
  uint8_t reserved[120] = {};
};

// The bulk GetTransferStatus: at most max_query_count results; WAITING
// requests left out when skip_waiting.
struct GetTransferStatusArgs {
  uint32_t max_query_count = UINT32_MAX;
  bool skip_waiting = false;
  uint8_t reserved[123] = {};
};

struct TransferResult {
  TransferReq req = nullptr;
  const void *user_data = nullptr;
  TransferStatus status = TransferStatus::WAITING;
  uint8_t reserved[108] = {};
};

struct NotifyDesc {
  AscendString name;
  AscendString notify_msg;
};

// The state of the connection to one remote, as ConnectAsync/DisconnectAsync
// leave it (Hixl::GetAsyncConnectStatus).
enum class AsyncConnectStatus {
  NOT_CONNECT,
  CONNECT_PENDING,
  CONNECTING,
  CONNECTED,
  CONNECT_FAILED,
  DISCONNECT_PENDING,
  DISCONNECTING
};
}  // namespace hixl

#endif  // CANN_HIXL_INCLUDE_HIXL_HIXL_TYPES_H_
