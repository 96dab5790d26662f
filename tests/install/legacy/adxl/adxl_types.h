/*
 * ADXL public types: option keys, status codes, memory and transfer descriptors.
 * Names, values and layouts match CANN's adxl/adxl_types.h (original release).
 * C++11-compatible; see docs/API.md for the behaviour of each status.
 */
#ifndef CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_TYPES_H_
#define CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_TYPES_H_

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

namespace adxl {
using Status = uint32_t;
using AscendString = ge::AscendString;

// options
constexpr const char OPTION_RDMA_TRAFFIC_CLASS[] = "adxl.RdmaTrafficClass";
constexpr const char OPTION_RDMA_SERVICE_LEVEL[] = "adxl.RdmaServiceLevel";
constexpr const char OPTION_BUFFER_POOL[] = "adxl.BufferPool";

// status codes
constexpr Status SUCCESS = 0U;
constexpr Status PARAM_INVALID = 103900U;
constexpr Status TIMEOUT = 103901U;
constexpr Status NOT_CONNECTED = 103902U;
constexpr Status ALREADY_CONNECTED = 103903U;
constexpr Status NOTIFY_FAILED = 103904U;
constexpr Status UNSUPPORTED = 103905U;
constexpr Status FAILED = 503900U;
// Later CANN releases: resources exhausted (retry after some are released).
constexpr Status RESOURCE_EXHAUSTED = 203900U;

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
  uint8_t reserved[128] = {};
};

struct TransferOpDesc {
  uintptr_t local_addr;
  uintptr_t remote_addr;
  size_t len;
};
}  // namespace adxl

#endif  // CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_TYPES_H_
