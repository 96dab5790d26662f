#include "common/log.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace llmdd {
namespace {

LogLevel ParseLevel(const char *text) {
  if (text == nullptr) return LogLevel::kWarn;
  if (strcasecmp(text, "off") == 0 || strcmp(text, "0") == 0) return LogLevel::kOff;
  if (strcasecmp(text, "error") == 0 || strcmp(text, "1") == 0) return LogLevel::kError;
  if (strcasecmp(text, "warn") == 0 || strcasecmp(text, "warning") == 0 || strcmp(text, "2") == 0)
    return LogLevel::kWarn;
  if (strcasecmp(text, "info") == 0 || strcmp(text, "3") == 0) return LogLevel::kInfo;
  if (strcasecmp(text, "debug") == 0 || strcmp(text, "4") == 0) return LogLevel::kDebug;
  return LogLevel::kWarn;
}

std::atomic<int> &LevelSlot() {
  static std::atomic<int> level{static_cast<int>(ParseLevel(getenv("LLMDD_LOG_LEVEL")))};
  return level;
}

const char *LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "E";
    case LogLevel::kWarn: return "W";
    case LogLevel::kInfo: return "I";
    case LogLevel::kDebug: return "D";
    default: return "?";
  }
}

}  // namespace

LogLevel CurrentLogLevel() { return static_cast<LogLevel>(LevelSlot().load(std::memory_order_relaxed)); }

void SetLogLevel(LogLevel level) { LevelSlot().store(static_cast<int>(level), std::memory_order_relaxed); }

void LogMessage(LogLevel level, const char *file, int line, const char *fmt, ...) {
  char message[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(message, sizeof(message), fmt, args);
  va_end(args);
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  tm local{};
  localtime_r(&now.tv_sec, &local);
  // One fprintf call per line keeps lines from different threads whole.
  fprintf(stderr, "[llmdd %s %02d:%02d:%02d.%06ld %d:%ld %s:%d] %s\n", LevelName(level), local.tm_hour,
          local.tm_min, local.tm_sec, now.tv_nsec / 1000, static_cast<int>(getpid()),
          static_cast<long>(syscall(SYS_gettid)), base, line, message);
}

}  // namespace llmdd
