// llmdd_ext::StatusName(): the exported name of a status of either API
// (include/llmdd/extensions.h); the table is src/common/status_name.cc's.
#include "common/status_name.h"
#include "llmdd/extensions.h"

namespace llmdd_ext {

const char *StatusName(uint32_t status) {
  const char *name = llmdd::StatusNameOrNull(status);
  return name == nullptr ? "unknown status" : name;
}

}  // namespace llmdd_ext
