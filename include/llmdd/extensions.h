/*
 * Extensions of this implementation that CANN's headers have no field for.
 * They travel in the reserved bytes of the public structs, so programs that do
 * not use them are unaffected and the struct layouts stay exactly CANN's.
 * C++11. Everything here is inline except Version() and StatusName(), which the
 * library exports.
 *
 * Remote access rights of a registration (default: peers may read and write,
 * as in CANN). The serving engine enforces them: a peer's READ of write-only
 * memory or WRITE into read-only memory is refused with PARAM_INVALID
 * (LLM_PARAM_INVALID) and a log line naming the range. MemDesc::local_only
 * (CANN's own field) wins over them: such memory is never reachable by peers.
 *
 * Where the bytes are: both structs end in a 128-byte area after their
 * required fields (adxl::MemDesc: local_only and reserved[127], that is the
 * original release's reserved[128]; llm_datadist::RegisterCfg: reserved[128]).
 * The marker takes the last four bytes of that area, bytes 124..127, far from
 * byte 0, which CANN's newest MemDesc gave to local_only (CANN grows its
 * structs from the front of the reserved area). Programs built with the first
 * version of this header put the marker in bytes 0..3 ("LDA" and the value);
 * the library still reads those as access rights, never as local_only.
 */
#ifndef LLMDD_EXTENSIONS_H_
#define LLMDD_EXTENSIONS_H_

#include <cstddef>
#include <cstdint>
#include "adxl/adxl_types.h"
#include "llm_datadist/llm_datadist.h"

namespace llmdd_ext {

// The version of the loaded libllm_datadist.so, "MAJOR.MINOR.PATCH" (CMake's
// project() version; the same as `pkg-config --modversion llm_datadist` and
// the CMake package version of its install). A static string: never free it.
ASCEND_FUNC_VISIBILITY const char *Version();

// The name of a status of either API, as its header spells it: an
// adxl::Status ("PARAM_INVALID" for 103900, "RESOURCE_EXHAUSTED" for 203900)
// or an llm_datadist::Status ("LLM_LINK_FAILED" for 0x5010B009). 0 is
// "SUCCESS" (adxl::SUCCESS and llm_datadist::LLM_SUCCESS alike); a value
// neither header defines is "unknown status". Never null; a static string:
// never free it. docs/TROUBLESHOOTING.md lists each status's usual causes.
ASCEND_FUNC_VISIBILITY const char *StatusName(uint32_t status);

enum RemoteAccess : uint8_t {
  kRemoteReadWrite = 0,
  kRemoteReadOnly = 1,   // peers may READ (pull) it, not WRITE (push) into it
  kRemoteWriteOnly = 2,  // peers may WRITE (push) into it, not READ (pull) it
};

// The marker: kMarker0..2 then the RemoteAccess value, at kAccessOffset of
// the 128-byte area (kLegacyAccessOffset in programs built with the first
// version of this header).
constexpr uint8_t kMarker0 = 'L', kMarker1 = 'D', kMarker2 = 'A';
constexpr size_t kExtensionAreaBytes = 128;
constexpr size_t kAccessOffset = 124;
constexpr size_t kLegacyAccessOffset = 0;

// The 128-byte area of each struct (see above), as bytes of the struct.
inline uint8_t *ExtensionArea(adxl::MemDesc &mem) {
  return reinterpret_cast<uint8_t *>(&mem) + offsetof(adxl::MemDesc, local_only);
}
inline const uint8_t *ExtensionArea(const adxl::MemDesc &mem) {
  return reinterpret_cast<const uint8_t *>(&mem) + offsetof(adxl::MemDesc, local_only);
}
inline uint8_t *ExtensionArea(llm_datadist::RegisterCfg &cfg) { return cfg.reserved; }
inline const uint8_t *ExtensionArea(const llm_datadist::RegisterCfg &cfg) { return cfg.reserved; }

// True when `area` holds a marker at `offset`; *access gets its value.
inline bool ReadAccessMarker(const uint8_t *area, size_t offset, RemoteAccess *access) {
  const uint8_t *m = area + offset;
  if (m[0] != kMarker0 || m[1] != kMarker1 || m[2] != kMarker2 || m[3] > 2) return false;
  *access = static_cast<RemoteAccess>(m[3]);
  return true;
}

inline void SetRemoteAccess(adxl::MemDesc &mem, RemoteAccess access) {
  uint8_t *m = ExtensionArea(mem) + kAccessOffset;
  m[0] = kMarker0;
  m[1] = kMarker1;
  m[2] = kMarker2;
  m[3] = static_cast<uint8_t>(access);
}
inline void SetRemoteAccess(llm_datadist::RegisterCfg &cfg, RemoteAccess access) {
  uint8_t *m = ExtensionArea(cfg) + kAccessOffset;
  m[0] = kMarker0;
  m[1] = kMarker1;
  m[2] = kMarker2;
  m[3] = static_cast<uint8_t>(access);
}

// Reads the marker back (either place); returns false when none is set (use
// the default, read-write).
inline bool GetRemoteAccess(const adxl::MemDesc &mem, RemoteAccess *access) {
  return ReadAccessMarker(ExtensionArea(mem), kAccessOffset, access) ||
         ReadAccessMarker(ExtensionArea(mem), kLegacyAccessOffset, access);
}
inline bool GetRemoteAccess(const llm_datadist::RegisterCfg &cfg, RemoteAccess *access) {
  return ReadAccessMarker(ExtensionArea(cfg), kAccessOffset, access) ||
         ReadAccessMarker(ExtensionArea(cfg), kLegacyAccessOffset, access);
}

}  // namespace llmdd_ext

#endif  // LLMDD_EXTENSIONS_H_
