#include "transport/stream.h"

namespace llmdd {

const char *IoStatusName(IoStatus status) {
  switch (status) {
    case IoStatus::kOk: return "ok";
    case IoStatus::kTimeout: return "timed out";
    case IoStatus::kClosed: return "connection closed by peer";
    case IoStatus::kError: return "socket error";
  }
  return "?";
}

}  // namespace llmdd
