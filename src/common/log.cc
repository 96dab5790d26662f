#include "common/log.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <string>

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

// This thread's recent error lines (ThreadErrors) and their joined text.
struct ThreadErrorLog {
  std::deque<std::string> lines;
  std::string joined;
};

ThreadErrorLog &ThisThreadErrors() {
  thread_local ThreadErrorLog log;
  return log;
}

void Emit(LogLevel level, const char *file, int line, const char *message) {
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

}  // namespace

LogLevel CurrentLogLevel() { return static_cast<LogLevel>(LevelSlot().load(std::memory_order_relaxed)); }

void SetLogLevel(LogLevel level) { LevelSlot().store(static_cast<int>(level), std::memory_order_relaxed); }

void LogMessage(LogLevel level, const char *file, int line, const char *fmt, ...) {
  char message[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(message, sizeof(message), fmt, args);
  va_end(args);
  Emit(level, file, line, message);
}

void LogError(const char *file, int line, const char *fmt, ...) {
  char message[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(message, sizeof(message), fmt, args);
  va_end(args);
  ThreadErrorLog &log = ThisThreadErrors();
  log.lines.emplace_back(message);
  if (log.lines.size() > static_cast<size_t>(kMaxThreadErrors)) log.lines.pop_front();
  log.joined.clear();
  if (static_cast<int>(CurrentLogLevel()) >= static_cast<int>(LogLevel::kError)) Emit(LogLevel::kError, file, line, message);
}

const std::string &ThreadErrors() {
  ThreadErrorLog &log = ThisThreadErrors();
  if (log.joined.empty()) {
    for (const std::string &line : log.lines) {
      if (!log.joined.empty()) log.joined += "; ";
      log.joined += line;
    }
  }
  return log.joined;
}

void ClearThreadErrors() {
  ThreadErrorLog &log = ThisThreadErrors();
  log.lines.clear();
  log.joined.clear();
}

}  // namespace llmdd
