/*
 * Extensions of this implementation that CANN's headers have no field for.
 * They travel in the reserved bytes of the public structs, so programs that do
 * not use them are unaffected and the struct layouts stay exactly CANN's.
 * C++11, header-only.
 *
 * Remote access rights of a registration (default: peers may read and write,
 * as in CANN). The serving engine enforces them: a peer's READ of write-only
 * memory or WRITE into read-only memory is refused with PARAM_INVALID
 * (LLM_PARAM_INVALID) and a log line naming the range.
 */
#ifndef LLMDD_EXTENSIONS_H_
#define LLMDD_EXTENSIONS_H_

#include <cstdint>
#include "adxl/adxl_types.h"
#include "llm_datadist/llm_datadist.h"

namespace llmdd_ext {

enum RemoteAccess : uint8_t {
  kRemoteReadWrite = 0,
  kRemoteReadOnly = 1,   // peers may READ (pull) it, not WRITE (push) into it
  kRemoteWriteOnly = 2,  // peers may WRITE (push) into it, not READ (pull) it
};

// Marker in reserved[0..2]; reserved[3] holds the RemoteAccess value.
constexpr uint8_t kMarker0 = 'L', kMarker1 = 'D', kMarker2 = 'A';

inline void SetRemoteAccess(uint8_t *reserved, RemoteAccess access) {
  reserved[0] = kMarker0;
  reserved[1] = kMarker1;
  reserved[2] = kMarker2;
  reserved[3] = static_cast<uint8_t>(access);
}
inline void SetRemoteAccess(adxl::MemDesc &mem, RemoteAccess access) { SetRemoteAccess(mem.reserved, access); }
inline void SetRemoteAccess(llm_datadist::RegisterCfg &cfg, RemoteAccess access) {
  SetRemoteAccess(cfg.reserved, access);
}

// Reads the marker back; returns false when none is set (use the default).
inline bool GetRemoteAccess(const uint8_t *reserved, RemoteAccess *access) {
  if (reserved[0] != kMarker0 || reserved[1] != kMarker1 || reserved[2] != kMarker2 || reserved[3] > 2) return false;
  *access = static_cast<RemoteAccess>(reserved[3]);
  return true;
}

}  // namespace llmdd_ext

#endif  // LLMDD_EXTENSIONS_H_
