// Device seam: what "device memory" means on this host. CANN programs register
// CachePlacement::kDevice / MEM_DEVICE memory; on a host without an
// accelerator the cpu device serves it as plain host memory. A CUDA device
// (registered memory reached through staging or IPC) plugs in here without
// touching the LLM-DataDist layer or the public headers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace llmdd {

class Device {
 public:
  virtual ~Device() = default;
  virtual const char *Kind() const = 0;
  virtual int32_t Ordinal() const = 0;
  // True when the engine may read/write registered "device" memory with the CPU.
  virtual bool HostAccessible() const = 0;
};

// Opens device `ordinal` (>= 0). Without an accelerator backend this is the cpu
// device, which accepts every ordinal.
std::unique_ptr<Device> OpenDevice(int32_t ordinal, std::string *error);

}  // namespace llmdd
