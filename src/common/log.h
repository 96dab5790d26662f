// Logging: one line per event on stderr, "LEVEL time pid:tid file:line message".
// Level from the environment variable LLMDD_LOG_LEVEL (error|warn|info|debug|off,
// default warn), read once; SetLogLevel() overrides it at run time.
#pragma once

#include <cstdarg>

namespace llmdd {

enum class LogLevel : int { kOff = 0, kError = 1, kWarn = 2, kInfo = 3, kDebug = 4 };

LogLevel CurrentLogLevel();
void SetLogLevel(LogLevel level);
void LogMessage(LogLevel level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace llmdd

#define LLMDD_LOG(level, ...)                                                    \
  do {                                                                           \
    if (static_cast<int>(level) <= static_cast<int>(::llmdd::CurrentLogLevel())) \
      ::llmdd::LogMessage(level, __FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)
#define LOG_ERROR(...) LLMDD_LOG(::llmdd::LogLevel::kError, __VA_ARGS__)
#define LOG_WARN(...) LLMDD_LOG(::llmdd::LogLevel::kWarn, __VA_ARGS__)
#define LOG_INFO(...) LLMDD_LOG(::llmdd::LogLevel::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) LLMDD_LOG(::llmdd::LogLevel::kDebug, __VA_ARGS__)
