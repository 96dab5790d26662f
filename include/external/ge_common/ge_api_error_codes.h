/*
 * Compatibility subset of GE/metadef's ge_api_error_codes.h: the status type and
 * the two generic codes that the ADXL and LLM-DataDist headers rely on, plus the
 * AscendString and DataType definitions those headers use transitively.
 * C++11, no std::string in the ABI.
 */
#ifndef INC_EXTERNAL_GE_COMMON_GE_API_ERROR_CODES_H_
#define INC_EXTERNAL_GE_COMMON_GE_API_ERROR_CODES_H_

#include <cstdint>
#include "../graph/ascend_string.h"
#include "../graph/types.h"

namespace ge {
using Status = uint32_t;

// GE error numbers are composed as
//   (runtime & 0xFF) << 30 | (type & 0xFF) << 28 | (level & 0xFF) << 25 |
//   (sysid & 0xFF) << 17 | (modid & 0xFF) << 12 | (value & 0x0FFF)
#define GE_ERRORNO(runtime, type, level, sysid, modid, name, value)                                  \
  constexpr ::ge::Status name =                                                                       \
      ((0xFFU & (static_cast<uint32_t>(runtime))) << 30U) |                                         \
      ((0xFFU & (static_cast<uint32_t>(type))) << 28U) |                                            \
      ((0xFFU & (static_cast<uint32_t>(level))) << 25U) |                                           \
      ((0xFFU & (static_cast<uint32_t>(sysid))) << 17U) |                                           \
      ((0xFFU & (static_cast<uint32_t>(modid))) << 12U) | (0x0FFFU & (static_cast<uint32_t>(value)))

constexpr Status SUCCESS = 0U;
constexpr Status FAILED = 0xFFFFFFFFU;
}  // namespace ge

#endif  // INC_EXTERNAL_GE_COMMON_GE_API_ERROR_CODES_H_
