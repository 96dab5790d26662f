// What the public facades (adxl::AdxlEngine, hixl::Hixl) share: converting
// the ABI types to the engine's, and reading a MemDesc's remote rights. Both
// facades run on one llmdd::Engine each and convert nothing else.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/threads.h"
#include "engine/memory_registry.h"
#include "engine/wire.h"
#include "llmdd/extensions.h"

namespace llmdd {

inline std::string ToStd(const ge::AscendString &s) { return std::string(s.GetString(), s.GetLength()); }

inline std::map<std::string, std::string> ToStd(const std::map<ge::AscendString, ge::AscendString> &options) {
  std::map<std::string, std::string> converted;
  for (const auto &kv : options) converted[ToStd(kv.first)] = ToStd(kv.second);
  return converted;
}

// What peers may do with a registration described by `mem`:
// MemDesc::local_only (byte 0 of the 128-byte area) -> kAccessNone, else the
// access marker of llmdd/extensions.h (default read-write). A program built
// with the first extensions.h put its marker in byte 0 ('L'): that is read
// as access rights, never as local_only.
inline uint32_t RemoteRights(const adxl::MemDesc &mem) {
  const uint8_t *area = llmdd_ext::ExtensionArea(mem);
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  const bool legacy = llmdd_ext::ReadAccessMarker(area, llmdd_ext::kLegacyAccessOffset, &access);
  if (!legacy && area[0] != 0) return kAccessNone;
  access = llmdd_ext::kRemoteReadWrite;
  llmdd_ext::GetRemoteAccess(mem, &access);
  return AccessBits(access);
}

// No exception crosses the ABI: out of memory is RESOURCE_EXHAUSTED, anything
// else FAILED (both logged with `name`).
template <typename Call>
adxl::Status Guarded(const char *name, Call &&call) {
  return CallGuarded<adxl::Status>(name, adxl::RESOURCE_EXHAUSTED, adxl::FAILED, std::forward<Call>(call));
}

// A NotifyDesc (adxl's or hixl's: the same two fields) as the engine's, and back.
template <typename NotifyDescT>
wire::Notify ToWireNotify(const NotifyDescT &notify) {
  wire::Notify converted;
  converted.name = ToStd(notify.name);
  converted.message = ToStd(notify.notify_msg);
  return converted;
}
// Appends `received` (oldest first) to the caller's vector, whose entries stay.
template <typename NotifyDescT>
void AppendNotifies(const std::vector<wire::Notify> &received, std::vector<NotifyDescT> *notifies) {
  notifies->reserve(notifies->size() + received.size());
  for (const wire::Notify &n : received) {
    NotifyDescT desc;
    desc.name = ge::AscendString(n.name.data(), n.name.size());
    desc.notify_msg = ge::AscendString(n.message.data(), n.message.size());
    notifies->push_back(desc);
  }
}

// GetMetricsJson's answer: kept per thread until its next call (llmdd/extensions.h).
inline const char *KeepForThread(std::string text) {
  static thread_local std::string kept;
  kept = std::move(text);
  return kept.c_str();
}

}  // namespace llmdd
