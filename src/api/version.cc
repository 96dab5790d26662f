// llmdd_ext::Version(): the library's version, from CMake's project() version
// (LLMDD_VERSION, set in src/CMakeLists.txt).
#include "llmdd/extensions.h"

#ifndef LLMDD_VERSION
#error "LLMDD_VERSION must be defined by the build (src/CMakeLists.txt)"
#endif

namespace llmdd_ext {

const char *Version() { return LLMDD_VERSION; }

}  // namespace llmdd_ext
