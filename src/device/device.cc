#include "device/device.h"

#include "common/log.h"

namespace llmdd {
namespace {

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(int32_t ordinal) : ordinal_(ordinal) {}
  const char *Kind() const override { return "cpu"; }
  int32_t Ordinal() const override { return ordinal_; }
  bool HostAccessible() const override { return true; }

 private:
  int32_t ordinal_;
};

}  // namespace

std::unique_ptr<Device> OpenDevice(int32_t ordinal, std::string *error) {
  if (ordinal < 0) {
    *error = "device id " + std::to_string(ordinal) + " is negative";
    return nullptr;
  }
  LOG_INFO("device %d: cpu device (device memory is host memory on this build)", ordinal);
  return std::make_unique<CpuDevice>(ordinal);
}

}  // namespace llmdd
