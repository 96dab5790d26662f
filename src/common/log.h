// Logging: one line per event on stderr, "LEVEL time pid:tid file:line message".
// Level from the environment variable LLMDD_LOG_LEVEL (error|warn|info|debug|off,
// default warn), read once; SetLogLevel() overrides it at run time.
//
// Error lines are also kept per thread, whatever the level, so that a caller
// can say why a public call failed without parsing stderr (ThreadErrors; the
// Python package puts them into its LLMException). Only errors are kept: they
// are rare, so formatting them when the level hides them costs nothing that
// matters, while info and debug lines stay free when disabled.
#pragma once

#include <cstdarg>
#include <string>

namespace llmdd {

enum class LogLevel : int { kOff = 0, kError = 1, kWarn = 2, kInfo = 3, kDebug = 4 };

LogLevel CurrentLogLevel();
void SetLogLevel(LogLevel level);
void LogMessage(LogLevel level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
// An error: kept for ThreadErrors(), and printed unless the level is off.
void LogError(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// The error lines this thread logged since its last ClearThreadErrors(): the
// last kMaxThreadErrors of them, oldest first, joined by "; " (each as
// printed, without the prefix); "" when none. Errors logged by other threads
// on the caller's behalf (a link's parallel attempts, the serving side) are
// not here. The reference stays valid until this thread logs or clears again.
constexpr int kMaxThreadErrors = 4;
const std::string &ThreadErrors();
void ClearThreadErrors();

}  // namespace llmdd

#define LLMDD_LOG(level, ...)                                                    \
  do {                                                                           \
    if (static_cast<int>(level) <= static_cast<int>(::llmdd::CurrentLogLevel())) \
      ::llmdd::LogMessage(level, __FILE__, __LINE__, __VA_ARGS__);               \
  } while (0)
#define LOG_ERROR(...) ::llmdd::LogError(__FILE__, __LINE__, __VA_ARGS__)
#define LOG_WARN(...) LLMDD_LOG(::llmdd::LogLevel::kWarn, __VA_ARGS__)
#define LOG_INFO(...) LLMDD_LOG(::llmdd::LogLevel::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) LLMDD_LOG(::llmdd::LogLevel::kDebug, __VA_ARGS__)
