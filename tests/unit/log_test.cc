// Unit tests for src/common/log.h: level filtering, line format, and the
// LLMDD_LOG_LEVEL environment variable (checked in a child process because the
// variable is read only once per process).
#include "common/log.h"

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char **environ;

namespace llmdd {
namespace {

// Restores the process-wide level after each test.
class LogTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_ = CurrentLogLevel(); }
  void TearDown() override { SetLogLevel(saved_); }

  // Runs fn with stderr captured; returns what was written.
  template <typename Fn>
  static std::string Capture(Fn fn) {
    fflush(stderr);
    ::testing::internal::CaptureStderr();
    fn();
    fflush(stderr);
    return ::testing::internal::GetCapturedStderr();
  }

  static size_t CountLines(const std::string &text) {
    size_t n = 0;
    for (char c : text) n += (c == '\n');
    return n;
  }

 private:
  LogLevel saved_ = LogLevel::kWarn;
};

TEST_F(LogTest, SetLogLevelIsReadBack) {
  for (LogLevel level : {LogLevel::kOff, LogLevel::kError, LogLevel::kWarn, LogLevel::kInfo, LogLevel::kDebug}) {
    SetLogLevel(level);
    EXPECT_EQ(CurrentLogLevel(), level);
  }
}

TEST_F(LogTest, LevelsAreOrdered) {
  EXPECT_LT(static_cast<int>(LogLevel::kOff), static_cast<int>(LogLevel::kError));
  EXPECT_LT(static_cast<int>(LogLevel::kError), static_cast<int>(LogLevel::kWarn));
  EXPECT_LT(static_cast<int>(LogLevel::kWarn), static_cast<int>(LogLevel::kInfo));
  EXPECT_LT(static_cast<int>(LogLevel::kInfo), static_cast<int>(LogLevel::kDebug));
}

TEST_F(LogTest, MessagesAtOrAboveLevelAreEmittedOthersAreNot) {
  SetLogLevel(LogLevel::kWarn);
  std::string out = Capture([] {
    LOG_ERROR("error-message-%d", 1);
    LOG_WARN("warn-message-%d", 2);
    LOG_INFO("info-message-%d", 3);
    LOG_DEBUG("debug-message-%d", 4);
  });
  EXPECT_NE(out.find("error-message-1"), std::string::npos) << out;
  EXPECT_NE(out.find("warn-message-2"), std::string::npos) << out;
  EXPECT_EQ(out.find("info-message-3"), std::string::npos) << out;
  EXPECT_EQ(out.find("debug-message-4"), std::string::npos) << out;
  EXPECT_EQ(CountLines(out), 2U) << out;
}

TEST_F(LogTest, EachLevelEmitsExactlyItsShare) {
  struct Case {
    LogLevel level;
    size_t expected_lines;
  };
  for (Case c : {Case{LogLevel::kOff, 0}, Case{LogLevel::kError, 1}, Case{LogLevel::kWarn, 2},
                 Case{LogLevel::kInfo, 3}, Case{LogLevel::kDebug, 4}}) {
    SetLogLevel(c.level);
    std::string out = Capture([] {
      LOG_ERROR("e");
      LOG_WARN("w");
      LOG_INFO("i");
      LOG_DEBUG("d");
    });
    EXPECT_EQ(CountLines(out), c.expected_lines) << "level " << static_cast<int>(c.level) << ":\n" << out;
  }
}

TEST_F(LogTest, OffSilencesErrors) {
  SetLogLevel(LogLevel::kOff);
  std::string out = Capture([] { LOG_ERROR("must not appear"); });
  EXPECT_EQ(out, "");
}

TEST_F(LogTest, LineHasLevelFileLineAndMessage) {
  SetLogLevel(LogLevel::kDebug);
  int line = 0;
  std::string out = Capture([&line] {
    line = __LINE__ + 1;
    LOG_INFO("connected to %s after %d ms", "127.0.0.1:26000", 42);
  });
  ASSERT_EQ(CountLines(out), 1U) << out;
  ASSERT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  // Only the base name of the file is printed.
  std::string where = "log_test.cc:" + std::to_string(line);
  EXPECT_NE(out.find(where), std::string::npos) << "missing '" << where << "' in: " << out;
  EXPECT_EQ(out.find("/log_test.cc"), std::string::npos) << "full path printed: " << out;
  EXPECT_NE(out.find("connected to 127.0.0.1:26000 after 42 ms"), std::string::npos) << out;
  // The message comes after file:line.
  EXPECT_LT(out.find(where), out.find("connected to")) << out;
  // Level letter and pid are on the line.
  EXPECT_EQ(out.find("[llmdd I "), 0U) << out;
  EXPECT_NE(out.find(" " + std::to_string(getpid()) + ":"), std::string::npos) << out;
}

TEST_F(LogTest, LevelLetters) {
  SetLogLevel(LogLevel::kDebug);
  struct Case {
    LogLevel level;
    const char *prefix;
  };
  for (Case c : {Case{LogLevel::kError, "[llmdd E "}, Case{LogLevel::kWarn, "[llmdd W "},
                 Case{LogLevel::kInfo, "[llmdd I "}, Case{LogLevel::kDebug, "[llmdd D "}}) {
    std::string out = Capture([&c] { LLMDD_LOG(c.level, "x"); });
    EXPECT_EQ(out.find(c.prefix), 0U) << out;
  }
}

TEST_F(LogTest, ArgumentsAreNotEvaluatedWhenFilteredOut) {
  int evaluations = 0;
  auto count = [&evaluations] { return ++evaluations; };
  SetLogLevel(LogLevel::kError);
  std::string out = Capture([&count] {
    LOG_DEBUG("%d", count());
    LOG_INFO("%d", count());
    LOG_WARN("%d", count());
  });
  EXPECT_EQ(evaluations, 0);
  EXPECT_EQ(out, "");
  out = Capture([&count] { LOG_ERROR("value=%d", count()); });
  EXPECT_EQ(evaluations, 1);
  EXPECT_NE(out.find("value=1"), std::string::npos) << out;
}

TEST_F(LogTest, LongMessageIsTruncatedToOneLine) {
  SetLogLevel(LogLevel::kWarn);
  std::string big(10000, 'z');
  std::string out = Capture([&big] { LOG_WARN("%s", big.c_str()); });
  EXPECT_EQ(CountLines(out), 1U);
  EXPECT_NE(out.find(std::string(1000, 'z')), std::string::npos);
  EXPECT_LT(out.size(), big.size()) << "message should be bounded";
}

TEST_F(LogTest, PercentInArgumentIsLiteral) {
  SetLogLevel(LogLevel::kWarn);
  std::string out = Capture([] { LOG_WARN("%s", "100% done %d %s"); });
  EXPECT_NE(out.find("100% done %d %s"), std::string::npos) << out;
}

// --- LLMDD_LOG_LEVEL, read once at start-up --------------------------------------
//
// The test runs this binary again with the variable set and kChildMarker in its
// environment. The child is not a test: before GoogleTest starts, it prints the
// level it sees and exits, so no helper appears in the test list (ctest would
// report it as a test that "did not run").

constexpr const char kChildMarker[] = "LLMDD_LOG_TEST_CHILD";

[[maybe_unused]] const bool kReportedAsChild = [] {
  if (getenv(kChildMarker) == nullptr) return false;
  printf("LEVEL=%d\n", static_cast<int>(CurrentLogLevel()));
  fflush(stdout);
  _exit(0);
}();

// Runs the child with LLMDD_LOG_LEVEL=value (unset when value is nullptr); returns the level it printed.
int ChildLevel(const char *value) {
  int out_pipe[2];
  if (pipe(out_pipe) != 0) return -100;
  std::vector<std::string> env_strings;
  for (char **e = environ; *e != nullptr; ++e) {
    if (strncmp(*e, "LLMDD_LOG_LEVEL=", 16) == 0) continue;
    if (strncmp(*e, "GTEST_", 6) == 0) continue;  // e.g. sharding variables set by ctest
    env_strings.emplace_back(*e);
  }
  env_strings.push_back(std::string(kChildMarker) + "=1");
  if (value != nullptr) env_strings.push_back(std::string("LLMDD_LOG_LEVEL=") + value);
  std::vector<char *> envp;
  for (std::string &s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);

  std::string exe = "/proc/self/exe";
  std::vector<char *> argv = {exe.data(), nullptr};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    return -101;
  }
  std::string output;
  char buf[4096];
  ssize_t n;
  while ((n = read(out_pipe[0], buf, sizeof(buf))) > 0) output.append(buf, static_cast<size_t>(n));
  close(out_pipe[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -102;
  size_t at = output.find("LEVEL=");
  if (at == std::string::npos) return -103;
  return atoi(output.c_str() + at + 6);
}

TEST(LogEnv, LevelFromEnvironment) {
  struct Case {
    const char *value;
    LogLevel expected;
  };
  const Case cases[] = {
      {nullptr, LogLevel::kWarn},  // default
      {"off", LogLevel::kOff},     {"0", LogLevel::kOff},        {"error", LogLevel::kError},
      {"ERROR", LogLevel::kError}, {"1", LogLevel::kError},      {"warn", LogLevel::kWarn},
      {"warning", LogLevel::kWarn}, {"2", LogLevel::kWarn},      {"info", LogLevel::kInfo},
      {"Info", LogLevel::kInfo},   {"3", LogLevel::kInfo},       {"debug", LogLevel::kDebug},
      {"4", LogLevel::kDebug},     {"bogus", LogLevel::kWarn},   {"", LogLevel::kWarn},
  };
  for (const Case &c : cases) {
    EXPECT_EQ(ChildLevel(c.value), static_cast<int>(c.expected)) << "LLMDD_LOG_LEVEL=" << (c.value ? c.value : "(unset)");
  }
}

}  // namespace
}  // namespace llmdd
