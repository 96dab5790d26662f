/*
 * Extensions of this implementation that CANN's headers have no field for.
 * They travel in the reserved bytes of the public structs, so programs that do
 * not use them are unaffected and the struct layouts stay exactly CANN's.
 * C++11. Everything here is inline except Version(), StatusName(), LastErrors(),
 * ClearLastErrors(), RegisterKvCacheWithKeys(), FindRemoteCache(),
 * GetMetricsJson(), GetPeerInfo() and CallCanceler, which the library exports.
 *
 * Remote access rights of a registration (default: peers may read and write,
 * as in CANN). The serving engine enforces them: a peer's READ of write-only
 * memory or WRITE into read-only memory is refused with PARAM_INVALID
 * (LLM_PARAM_INVALID) and a log line naming the range. MemDesc::local_only
 * (CANN's own field) wins over them: such memory is never reachable by peers.
 *
 * Where the bytes are: the structs end in a 128-byte area after their
 * required fields (adxl::MemDesc and hixl::MemDesc, the same layout:
 * local_only and reserved[127], that is the
 * original release's reserved[128]; llm_datadist::RegisterCfg: reserved[128]).
 * The marker takes the last four bytes of that area, bytes 124..127, far from
 * byte 0, which CANN's newest MemDesc gave to local_only (CANN grows its
 * structs from the front of the reserved area). Programs built with the first
 * version of this header put the marker in bytes 0..3 ("LDA" and the value);
 * the library still reads those as access rights, never as local_only.
 *
 * Per-request deadline of an asynchronous transfer (adxl::AdxlEngine and
 * hixl::Hixl TransferAsync; default: none, as in CANN). When it passes before
 * the transfer completed, the request is canceled and its status becomes
 * TransferStatus::TIMEOUT (terminal: it releases the request like COMPLETED
 * and FAILED), whether or not the caller is polling. Where the bytes are:
 * the last 8 bytes of the 128-byte TransferArgs of either API (adxl:
 * reserved[120..127]; hixl, whose user_data takes the first 8 bytes:
 * reserved[112..119]): a marker "LDT", a format byte (1), then the timeout in
 * milliseconds (uint32_t, this host's byte order). Zeroed bytes, as a
 * default-constructed TransferArgs has, mean no deadline. docs/API.md,
 * "Per-request deadline", says what a request guarantees once it ended.
 */
#ifndef LLMDD_EXTENSIONS_H_
#define LLMDD_EXTENSIONS_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>
#include "adxl/adxl_types.h"
#include "hixl/hixl_types.h"
#include "llm_datadist/llm_datadist.h"

namespace adxl {
class AdxlEngine;
}  // namespace adxl
namespace hixl {
class Hixl;
}  // namespace hixl

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
  // Peers may do neither (CANN Python's remote_accessible=False): a pull from
  // or push into it is refused with PARAM_INVALID / LLM_PARAM_INVALID. Local
  // transfers (this side's pulls into it, pushes from it) are unaffected.
  // A library older than this value reads the marker as absent (read-write).
  kRemoteNone = 3,
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
inline uint8_t *ExtensionArea(hixl::MemDesc &mem) {
  return reinterpret_cast<uint8_t *>(&mem) + offsetof(hixl::MemDesc, local_only);
}
inline const uint8_t *ExtensionArea(const hixl::MemDesc &mem) {
  return reinterpret_cast<const uint8_t *>(&mem) + offsetof(hixl::MemDesc, local_only);
}
inline uint8_t *ExtensionArea(llm_datadist::RegisterCfg &cfg) { return cfg.reserved; }
inline const uint8_t *ExtensionArea(const llm_datadist::RegisterCfg &cfg) { return cfg.reserved; }

// True when `area` holds a marker at `offset`; *access gets its value.
inline bool ReadAccessMarker(const uint8_t *area, size_t offset, RemoteAccess *access) {
  const uint8_t *m = area + offset;
  if (m[0] != kMarker0 || m[1] != kMarker1 || m[2] != kMarker2 || m[3] > 3) return false;
  *access = static_cast<RemoteAccess>(m[3]);
  return true;
}

// Writes the marker for `access` into a 128-byte area.
inline void WriteAccessMarker(uint8_t *area, RemoteAccess access) {
  uint8_t *m = area + kAccessOffset;
  m[0] = kMarker0;
  m[1] = kMarker1;
  m[2] = kMarker2;
  m[3] = static_cast<uint8_t>(access);
}

inline void SetRemoteAccess(adxl::MemDesc &mem, RemoteAccess access) { WriteAccessMarker(ExtensionArea(mem), access); }
inline void SetRemoteAccess(hixl::MemDesc &mem, RemoteAccess access) { WriteAccessMarker(ExtensionArea(mem), access); }
inline void SetRemoteAccess(llm_datadist::RegisterCfg &cfg, RemoteAccess access) {
  WriteAccessMarker(ExtensionArea(cfg), access);
}

// Reads the marker back (either place); returns false when none is set (use
// the default, read-write).
// True when `area` holds a marker in either place (the current one first).
inline bool ReadAccessMarkerAnywhere(const uint8_t *area, RemoteAccess *access) {
  return ReadAccessMarker(area, kAccessOffset, access) || ReadAccessMarker(area, kLegacyAccessOffset, access);
}
inline bool GetRemoteAccess(const adxl::MemDesc &mem, RemoteAccess *access) {
  return ReadAccessMarkerAnywhere(ExtensionArea(mem), access);
}
inline bool GetRemoteAccess(const hixl::MemDesc &mem, RemoteAccess *access) {
  return ReadAccessMarkerAnywhere(ExtensionArea(mem), access);
}
inline bool GetRemoteAccess(const llm_datadist::RegisterCfg &cfg, RemoteAccess *access) {
  return ReadAccessMarkerAnywhere(ExtensionArea(cfg), access);
}

// ---- Per-request deadline (TransferArgs) ----

// The marker: kTimeoutMarker0..2, kTimeoutFormat, then the timeout in ms
// (uint32_t), at kTimeoutOffset of the 128-byte struct.
constexpr uint8_t kTimeoutMarker0 = 'L', kTimeoutMarker1 = 'D', kTimeoutMarker2 = 'T';
constexpr uint8_t kTimeoutFormat = 1;
constexpr size_t kTransferArgsBytes = 128;
constexpr size_t kTimeoutOffset = kTransferArgsBytes - 8;

static_assert(sizeof(adxl::TransferArgs) == kTransferArgsBytes, "adxl::TransferArgs is 128 bytes");
static_assert(sizeof(hixl::TransferArgs) == kTransferArgsBytes, "hixl::TransferArgs is 128 bytes");
static_assert(offsetof(hixl::TransferArgs, reserved) + sizeof(hixl::TransferArgs().reserved) == kTransferArgsBytes,
              "the deadline lies in hixl::TransferArgs::reserved");

// The 8 bytes of `args` (a TransferArgs of either API) that hold the deadline.
inline void WriteTimeoutBytes(uint8_t *at, uint32_t timeout_ms) {
  if (timeout_ms == 0) {
    std::memset(at, 0, 8);
    return;
  }
  at[0] = kTimeoutMarker0;
  at[1] = kTimeoutMarker1;
  at[2] = kTimeoutMarker2;
  at[3] = kTimeoutFormat;
  std::memcpy(at + 4, &timeout_ms, sizeof(timeout_ms));
}
// True when `at` holds a deadline (a marker and a timeout of at least 1 ms).
inline bool ReadTimeoutBytes(const uint8_t *at, uint32_t *timeout_ms) {
  if (at[0] != kTimeoutMarker0 || at[1] != kTimeoutMarker1 || at[2] != kTimeoutMarker2 || at[3] != kTimeoutFormat)
    return false;
  uint32_t ms = 0;
  std::memcpy(&ms, at + 4, sizeof(ms));
  if (ms == 0) return false;
  *timeout_ms = ms;
  return true;
}

// Sets the deadline of the request TransferAsync makes from `args`: it ends
// TIMEOUT once `timeout_ms` milliseconds have passed since TransferAsync
// accepted it, unless it ended before. 0 removes the deadline (the request
// then runs until it completes, fails, is canceled, or the engine's
// llmdd.AsyncTransferMaxMs ends it FAILED). Touches only the last 8 bytes.
inline void SetTransferTimeout(adxl::TransferArgs &args, uint32_t timeout_ms) {
  WriteTimeoutBytes(reinterpret_cast<uint8_t *>(&args) + kTimeoutOffset, timeout_ms);
}
inline void SetTransferTimeout(hixl::TransferArgs &args, uint32_t timeout_ms) {
  WriteTimeoutBytes(reinterpret_cast<uint8_t *>(&args) + kTimeoutOffset, timeout_ms);
}

// Reads the deadline back; false (and *timeout_ms untouched) when none is
// set, as in zeroed or default-constructed args.
inline bool GetTransferTimeout(const adxl::TransferArgs &args, uint32_t *timeout_ms) {
  return ReadTimeoutBytes(reinterpret_cast<const uint8_t *>(&args) + kTimeoutOffset, timeout_ms);
}
inline bool GetTransferTimeout(const hixl::TransferArgs &args, uint32_t *timeout_ms) {
  return ReadTimeoutBytes(reinterpret_cast<const uint8_t *>(&args) + kTimeoutOffset, timeout_ms);
}

// ---------------------------------------------------------------- errors
//
// Why the last call failed, as text: the error lines this thread logged (see
// docs/API.md "Logging") since ClearLastErrors(), the last 4 of them joined by
// "; ", whether or not LLMDD_LOG_LEVEL printed them; "" when none. Lines that
// other threads logged on the caller's behalf (a link's parallel attempts, the
// peer) are not included. The pointer stays valid until this thread's next
// call into the library. Never null.
ASCEND_FUNC_VISIBILITY const char *LastErrors();
ASCEND_FUNC_VISIBILITY void ClearLastErrors();

// ---------------------------------------------------------------- cache keys
//
// CANN's Python package (llm_datadist) lets the owner of a cache register it
// under keys and a peer name it by key instead of by cache id:
// BlocksCacheKey(cluster_id, model_id) names a blocks cache,
// CacheKey(cluster_id, req_id, model_id, prefix_id) one batch row of a cache.
// CANN's C++ V2 API has no keys; these two calls add them. The owner registers
// with its own cluster id in the key; a peer linked to it finds the cache with
// the same key (key.cluster_id selects the link, as CacheIndex::cluster_id does).
enum CacheKeyKind : uint32_t {
  kBlocksCacheKey = 1,   // cluster_id, model_id: the whole cache (row 0)
  kRequestCacheKey = 2,  // cluster_id, req_id, model_id, prefix_id: one row
};
constexpr uint64_t kInvalidKeyId = UINT64_MAX;  // CANN's "no id" (2**64 - 1)

struct CacheKey {
  uint32_t kind = kBlocksCacheKey;
  uint64_t cluster_id = 0;
  uint64_t model_id = 0;
  uint64_t req_id = kInvalidKeyId;     // kRequestCacheKey only
  uint64_t prefix_id = kInvalidKeyId;  // kRequestCacheKey only
  uint8_t reserved[64] = {};
};

// LlmDataDist::RegisterKvCache, and the cache is also registered under `keys`:
// a kBlocksCacheKey names the whole cache; the i-th kRequestCacheKey names
// batch row i (CANN's register_cache: one key per batch row; a key with both
// req_id and prefix_id kInvalidKeyId only holds the place of an unused row
// and is not registered). A key registered again (by this or another cache)
// names the newest registration; UnregisterKvCache drops the cache's keys.
// LLM_PARAM_INVALID (nothing registered) for an unknown kind, more request
// keys than rows, or a list that mixes the two kinds or has two blocks keys;
// otherwise RegisterKvCache's statuses. `datadist` must be alive (as for any
// member call).
ASCEND_FUNC_VISIBILITY llm_datadist::Status RegisterKvCacheWithKeys(llm_datadist::LlmDataDist &datadist,
                                                                    const llm_datadist::CacheDesc &cache_desc,
                                                                    const std::vector<uint64_t> &addrs,
                                                                    const llm_datadist::RegisterCfg &cfg,
                                                                    const std::vector<CacheKey> &keys,
                                                                    int64_t &cache_id);

// The cache (and row) that `key` names on the linked peer key.cluster_id:
// `index` gets {key.cluster_id, its cache id, its row}, ready for the Pull/Push
// calls. The answer is cached per link (one round trip on first use); pass
// refresh = true to ask the peer again (after a transfer with the cached index
// returned LLM_KV_CACHE_NOT_EXIST: the peer may have registered the key anew).
// LLM_FAILED if not initialized or the link is lost; LLM_PARAM_INVALID for an
// unknown kind or this instance's own cluster id; LLM_NOT_YET_LINK without a
// link; LLM_KV_CACHE_NOT_EXIST when the peer has no cache under that key;
// LLM_TIMEOUT when the peer does not answer within llm.SyncKvCacheWaitTime;
// LLM_FAILED when the peer runs a library without cache keys.
ASCEND_FUNC_VISIBILITY llm_datadist::Status FindRemoteCache(llm_datadist::LlmDataDist &datadist,
                                                            const CacheKey &key, bool refresh,
                                                            llm_datadist::CacheIndex &index);

// ---------------------------------------------------------------- metrics
//
// The engine's counters, histograms and gauges (docs/METRICS.md) as one JSON
// object, the same snapshot llmdd.MetricsListen serves to a scraper:
// transfers by operation, transport and status, bytes, descriptors, latency
// histograms, connects, refusals by reason, sessions, lanes, threads,
// registered memory and, for LLM-DataDist, links and blocks.
// `json` gets a NUL-terminated string owned by the library, valid until this
// thread calls GetMetricsJson again (as LastErrors' text is kept per thread):
// copy it to keep it; never free it. On failure it is "" (never null).
// adxl::AdxlEngine / hixl::Hixl: SUCCESS whenever the object is alive (before
// Initialize and after Finalize the counters are still there and
// "initialized" is false). LlmDataDist: LLM_SUCCESS, or LLM_FAILED (logged)
// when it is not initialized (its engine exists only then). The object must be
// alive, as for any member call.
ASCEND_FUNC_VISIBILITY adxl::Status GetMetricsJson(adxl::AdxlEngine &engine, const char *&json);
ASCEND_FUNC_VISIBILITY hixl::Status GetMetricsJson(hixl::Hixl &engine, const char *&json);
ASCEND_FUNC_VISIBILITY llm_datadist::Status GetMetricsJson(llm_datadist::LlmDataDist &datadist, const char *&json);

// ---------------------------------------------------------------- peers
//
// What the handshake of this engine's channel to `remote` (a Connect, or an
// auto-connect, of this engine) learned about that server: its library
// version, the transports it advertised, and whether the same-host path was
// verified both ways. For diagnostics (tools/llmdd_doctor.cc,
// docs/DOCTOR.md); nothing here changes how transfers run. Every string is
// NUL-terminated and cut to its array. SUCCESS with *info filled;
// PARAM_INVALID (logged) when `remote` or `info` is null or `engine` is not
// a live AdxlEngine; NOT_CONNECTED when the engine has no open channel to
// `remote` (spelled as it was given to Connect).
struct PeerInfo {
  // The peer's llmdd_ext::Version(); "" when its library predates the field.
  char library_version[64];
  uint32_t protocol_version;  // negotiated on the control connection (docs/PROTOCOL.md)
  // 1: the same-host path is verified both ways and the channel's links
  // include it (large and coarse transfers take it, path_policy.h); 0: not.
  uint32_t same_host;
  // Transports the peer advertised with metadata, comma-separated ("" when
  // none: TCP and the same-host path are never advertised this way).
  char offered[128];
  // The links this channel made, comma-separated, in the engine's order
  // ("tcp,shm" on one host, "tcp" across hosts).
  char links[128];
  // When same_host is 0: why ("peer runs on another host (boot id differs)",
  // "llmdd.Transport=tcp on this engine", ...).
  char same_host_why_not[256];
  uint8_t reserved[128];
};

ASCEND_FUNC_VISIBILITY adxl::Status GetPeerInfo(adxl::AdxlEngine &engine, const char *remote, PeerInfo *info);

// ---------------------------------------------------------------- interrupting a call
//
// CallCanceler lets one thread cut short the data transfers of the blocking
// calls another thread makes: a language binding that waits for a call on a
// helper thread and must return when the user presses Ctrl-C, or any program
// that abandons a call it no longer needs. Cancel() does not wait for the
// call's timeout, does not close the channel or the link (other threads'
// transfers on them go on), and leaves the engine usable.
//
// Contract:
// - Bind() binds the canceler to the calling thread: it covers the blocking
//   calls of adxl::AdxlEngine, hixl::Hixl and llm_datadist::LlmDataDist that
//   thread makes until Unbind() (or another Bind on that thread). One thread
//   has at most one canceler; a canceler is bound to at most one thread at a
//   time.
// - Cancel() (any thread, any number of times): the transfer those calls have
//   under way, if any, is canceled, and every transfer they start afterwards
//   is refused at once; such a call returns FAILED (LLM-DataDist: LLM_FAILED)
//   with a log line saying it was canceled. Cancel() returns once the transfer
//   under way has ended: from then on no byte of the local buffers those
//   calls name is written or read by this engine or the peer (the guarantee
//   of docs/API.md "How a request ends"), so the caller may free them.
//   That wait is short: the cancel shuts the lanes the transfer was moving
//   bytes on down (they reopen on next use).
// - What is not cut short: the other waits of a call (a connect or a link
//   handshake, a remote cache lookup, a notify's acknowledgement, an
//   AutoConnect): they end by their own timeouts, then the call returns its
//   status without moving data.
// - Canceled() stays true; a canceler is for one call (or one batch of calls):
//   make a new one for the next.
// - Destroying a canceler that is still bound to a thread is undefined (Unbind
//   on that thread first); the bound thread's calls must have returned.
// - The constructor allocates (std::bad_alloc when out of memory); nothing
//   else throws.
// Asynchronous requests (TransferAsync) are not covered: give them a deadline
// (SetTransferTimeout) or Disconnect.
class ASCEND_FUNC_VISIBILITY CallCanceler {
 public:
  CallCanceler();
  ~CallCanceler();
  CallCanceler(const CallCanceler &) = delete;
  CallCanceler &operator=(const CallCanceler &) = delete;

  void Bind();
  static void Unbind();
  void Cancel();
  bool Canceled() const;

  struct Impl;

 private:
  Impl *impl_;
};

}  // namespace llmdd_ext

#endif  // LLMDD_EXTENSIONS_H_
