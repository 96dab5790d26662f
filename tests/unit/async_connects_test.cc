// AsyncConnects (HIXL's ConnectAsync/DisconnectAsync machinery) with a fake
// runner whose tasks block until the test lets them go: the tasks of one
// remote run one at a time in submission order, remotes run concurrently on
// at most `threads` threads, statuses follow the latest task, the waiting
// cap refuses with RESOURCE_EXHAUSTED, Stop drops what waits. Also the JSON
// reader behind GlobalResourceConfig.
#include "engine/async_connects.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/json_object.h"

namespace llmdd {
namespace {

using namespace std::chrono_literals;
using S = hixl::AsyncConnectStatus;

// Tasks block until their remote is opened; the log records the order they started in.
class FakeRunner {
 public:
  adxl::Status Run(const std::string &remote, bool connect, int32_t /*timeout_ms*/) {
    std::unique_lock<std::mutex> lock(mu_);
    log_.push_back((connect ? "C " : "D ") + remote);
    ++inside_;
    max_inside_ = std::max(max_inside_, inside_);
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_.count(remote) != 0 || open_all_; });
    --inside_;
    ++finished_;
    changed_.notify_all();
    if (!connect) return adxl::SUCCESS;
    auto it = connect_status_.find(remote);
    return it == connect_status_.end() ? adxl::SUCCESS : it->second;
  }
  void Open(const std::string &remote) {
    std::lock_guard<std::mutex> lock(mu_);
    open_.insert(remote);
    changed_.notify_all();
  }
  void Close(const std::string &remote) {
    std::lock_guard<std::mutex> lock(mu_);
    open_.erase(remote);
  }
  void OpenAll() {
    std::lock_guard<std::mutex> lock(mu_);
    open_all_ = true;
    changed_.notify_all();
  }
  void FailConnect(const std::string &remote, adxl::Status status) {
    std::lock_guard<std::mutex> lock(mu_);
    connect_status_[remote] = status;
  }
  // Waits until `n` tasks started in all (log size) and `inside` run now.
  bool WaitStarted(size_t n, int inside) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, 5s, [&] { return log_.size() >= n && inside_ == inside; });
  }
  bool WaitFinished(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, 5s, [&] { return finished_ >= n; });
  }
  std::vector<std::string> Log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }
  int MaxInside() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_inside_;
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  std::set<std::string> open_;
  bool open_all_ = false;
  std::map<std::string, adxl::Status> connect_status_;
  std::vector<std::string> log_;
  int inside_ = 0, max_inside_ = 0, finished_ = 0;
};

class AsyncConnectsTest : public ::testing::Test {
 protected:
  FakeRunner runner_;
  AsyncConnects connects_{[this](const std::string &r, bool c, int32_t t) { return runner_.Run(r, c, t); }};

  void TearDown() override {
    runner_.OpenAll();
    connects_.Stop();
  }
  // Polls until `remote` has `want` (the fake's tasks end asynchronously).
  ::testing::AssertionResult Becomes(const std::string &remote, S want) {
    const auto end = std::chrono::steady_clock::now() + 5s;
    S got = connects_.Status(remote);
    while (got != want && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(1ms);
      got = connects_.Status(remote);
    }
    if (got == want) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << remote << " has status " << static_cast<int>(got) << ", not "
                                         << static_cast<int>(want);
  }
};

TEST_F(AsyncConnectsTest, NotStartedRefusesWithFailedAndUnknownRemotesAreNotConnected) {
  EXPECT_EQ(adxl::FAILED, connects_.Submit("a", true, 100));
  EXPECT_EQ(S::NOT_CONNECT, connects_.Status("a"));
  EXPECT_TRUE(connects_.Statuses().empty());
  ASSERT_EQ(adxl::SUCCESS, connects_.Start({}));
  EXPECT_EQ(adxl::SUCCESS, connects_.Start({}));  // again: nothing changes
  EXPECT_EQ(S::NOT_CONNECT, connects_.Status("never"));
  EXPECT_TRUE(connects_.Statuses().empty());
}

TEST_F(AsyncConnectsTest, OneRemoteRunsItsTasksInSubmissionOrderAndReportsTheLatest) {
  ASSERT_EQ(adxl::SUCCESS, connects_.Start({}));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", true, 100));
  ASSERT_TRUE(runner_.WaitStarted(1, 1));
  EXPECT_EQ(S::CONNECTING, connects_.Status("a"));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", false, 100));
  EXPECT_EQ(S::DISCONNECT_PENDING, connects_.Status("a"));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", true, 100));
  EXPECT_EQ(S::CONNECT_PENDING, connects_.Status("a"));
  EXPECT_EQ(2u, connects_.Waiting());
  // Two threads, but the second task of "a" never starts beside the first.
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(1u, runner_.Log().size());
  EXPECT_EQ(1, runner_.MaxInside());
  auto all = connects_.Statuses();
  ASSERT_EQ(1u, all.size());
  EXPECT_EQ(S::CONNECT_PENDING, all["a"]);
  runner_.Open("a");
  ASSERT_TRUE(runner_.WaitFinished(3));
  EXPECT_TRUE(Becomes("a", S::CONNECTED));
  EXPECT_EQ((std::vector<std::string>{"C a", "D a", "C a"}), runner_.Log());
  EXPECT_EQ(1, runner_.MaxInside());
  EXPECT_EQ(0u, connects_.Waiting());
  // A disconnect ends NOT_CONNECT, and the remote leaves the map.
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", false, 100));
  EXPECT_TRUE(Becomes("a", S::NOT_CONNECT));
  EXPECT_TRUE(connects_.Statuses().empty());
}

TEST_F(AsyncConnectsTest, RemotesRunConcurrentlyOnAtMostThreadsThreads) {
  AsyncConnects::Config config;
  config.threads = 2;
  ASSERT_EQ(adxl::SUCCESS, connects_.Start(config));
  for (const char *r : {"a", "b", "c", "d"}) ASSERT_EQ(adxl::SUCCESS, connects_.Submit(r, true, 100));
  ASSERT_TRUE(runner_.WaitStarted(2, 2));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(2u, runner_.Log().size());  // two threads: c and d wait
  EXPECT_EQ(S::CONNECTING, connects_.Status("a"));
  EXPECT_EQ(S::CONNECTING, connects_.Status("b"));
  EXPECT_EQ(S::CONNECT_PENDING, connects_.Status("c"));
  EXPECT_EQ(S::CONNECT_PENDING, connects_.Status("d"));
  // "b" ends first: "c" starts while "a" still runs.
  runner_.Open("b");
  ASSERT_TRUE(runner_.WaitStarted(3, 2));
  EXPECT_TRUE(Becomes("b", S::CONNECTED));
  EXPECT_EQ(S::CONNECTING, connects_.Status("a"));
  EXPECT_EQ(S::CONNECTING, connects_.Status("c"));
  runner_.OpenAll();
  ASSERT_TRUE(runner_.WaitFinished(4));
  for (const char *r : {"a", "b", "c", "d"}) EXPECT_TRUE(Becomes(r, S::CONNECTED)) << r;
  EXPECT_EQ(2, runner_.MaxInside());
  EXPECT_EQ(4u, connects_.Statuses().size());
}

TEST_F(AsyncConnectsTest, ARemoteWithMoreTasksLetsOtherRemotesTakeTheirTurn) {
  AsyncConnects::Config config;
  config.threads = 1;
  ASSERT_EQ(adxl::SUCCESS, connects_.Start(config));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", true, 100));
  ASSERT_TRUE(runner_.WaitStarted(1, 1));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", false, 100));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("b", true, 100));
  runner_.OpenAll();
  ASSERT_TRUE(runner_.WaitFinished(3));
  // "b" was queued before a's second task was requeued.
  EXPECT_EQ((std::vector<std::string>{"C a", "C b", "D a"}), runner_.Log());
  EXPECT_TRUE(Becomes("a", S::NOT_CONNECT));
  EXPECT_TRUE(Becomes("b", S::CONNECTED));
}

TEST_F(AsyncConnectsTest, FailedConnectsAreConnectFailedAndAlreadyConnectedIsConnected) {
  ASSERT_EQ(adxl::SUCCESS, connects_.Start({}));
  runner_.OpenAll();
  runner_.FailConnect("timeout", adxl::TIMEOUT);
  runner_.FailConnect("refused", adxl::FAILED);
  runner_.FailConnect("full", adxl::RESOURCE_EXHAUSTED);
  runner_.FailConnect("there", adxl::ALREADY_CONNECTED);
  for (const char *r : {"timeout", "refused", "full", "there"}) ASSERT_EQ(adxl::SUCCESS, connects_.Submit(r, true, 100));
  EXPECT_TRUE(Becomes("timeout", S::CONNECT_FAILED));
  EXPECT_TRUE(Becomes("refused", S::CONNECT_FAILED));
  EXPECT_TRUE(Becomes("full", S::CONNECT_FAILED));
  EXPECT_TRUE(Becomes("there", S::CONNECTED));
  auto all = connects_.Statuses();
  EXPECT_EQ(4u, all.size());
  EXPECT_EQ(S::CONNECT_FAILED, all["refused"]);
  // A disconnect of a failed remote (whatever the engine says) leaves NOT_CONNECT.
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("refused", false, 100));
  EXPECT_TRUE(Becomes("refused", S::NOT_CONNECT));
  EXPECT_EQ(3u, connects_.Statuses().size());
}

TEST_F(AsyncConnectsTest, TheWaitingCapRefusesWithResourceExhausted) {
  AsyncConnects::Config config;
  config.threads = 1;
  config.queue_capacity = 3;
  ASSERT_EQ(adxl::SUCCESS, connects_.Start(config));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", true, 100));
  ASSERT_TRUE(runner_.WaitStarted(1, 1));  // running: no longer waiting
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", false, 100));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("b", true, 100));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("c", true, 100));
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, connects_.Submit("d", true, 100));
  EXPECT_EQ(adxl::RESOURCE_EXHAUSTED, connects_.Submit("a", true, 100));
  EXPECT_EQ(S::NOT_CONNECT, connects_.Status("d"));       // the refused task left nothing behind
  EXPECT_EQ(S::DISCONNECT_PENDING, connects_.Status("a"));  // nor changed a's latest
  runner_.Open("a");
  ASSERT_TRUE(runner_.WaitStarted(2, 1));  // a's connect ended, b runs (a's disconnect waits behind c)
  EXPECT_EQ(adxl::SUCCESS, connects_.Submit("d", true, 100));
  runner_.OpenAll();
  ASSERT_TRUE(runner_.WaitFinished(5));
  EXPECT_TRUE(Becomes("d", S::CONNECTED));
}

TEST_F(AsyncConnectsTest, StopDropsWaitingTasksWaitsForRunningOnesAndForgetsStatuses) {
  AsyncConnects::Config config;
  config.threads = 1;
  ASSERT_EQ(adxl::SUCCESS, connects_.Start(config));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("a", true, 100));
  ASSERT_TRUE(runner_.WaitStarted(1, 1));
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("b", true, 100));
  std::thread opener([&] {
    std::this_thread::sleep_for(100ms);
    runner_.Open("a");
  });
  const auto t0 = std::chrono::steady_clock::now();
  connects_.Stop();  // returns once a's task ended
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 80ms);
  opener.join();
  EXPECT_EQ((std::vector<std::string>{"C a"}), runner_.Log());  // b never ran
  EXPECT_EQ(S::NOT_CONNECT, connects_.Status("a"));
  EXPECT_TRUE(connects_.Statuses().empty());
  EXPECT_EQ(adxl::FAILED, connects_.Submit("a", true, 100));
  // Started again, it works as before.
  ASSERT_EQ(adxl::SUCCESS, connects_.Start(config));
  runner_.OpenAll();
  ASSERT_EQ(adxl::SUCCESS, connects_.Submit("b", true, 100));
  EXPECT_TRUE(Becomes("b", S::CONNECTED));
}

TEST(ConnectPoolConfig, ReadsConnectPoolMembersAsStringsOrNumbers) {
  AsyncConnects::Config config;
  ChannelPoolConfig channels;
  std::string error;
  ASSERT_TRUE(ParseGlobalResourceConfig(R"({"connect_pool.thread_num":"3", "connect_pool.task_queue_capacity": 256,
      "channel_pool.max_channel":"10", "comm_resource_config.protocol_desc": ["roce:host", "roce:device"],
      "nested": {"a": [1, 2.5e3, true, null, "\u00e9\ud83d\ude00"]}})",
                                        &config, &channels, &error))
      << error;
  EXPECT_EQ(3u, config.threads);
  EXPECT_EQ(256u, config.queue_capacity);
  AsyncConnects::Config defaults;
  ChannelPoolConfig no_pool;
  ASSERT_TRUE(ParseGlobalResourceConfig("{}", &defaults, &no_pool, &error)) << error;
  EXPECT_FALSE(no_pool.enabled);
  EXPECT_EQ(2u, defaults.threads);
  EXPECT_EQ(128u, defaults.queue_capacity);
  for (const char *bad : {R"({"connect_pool.thread_num":"0"})", R"({"connect_pool.thread_num":"65"})",
                          R"({"connect_pool.task_queue_capacity":"65536"})",
                          R"({"connect_pool.task_queue_capacity":"x"})", R"({"connect_pool.thread_num":2.5})",
                          "", "[]", "{", R"({"a":1,})", R"({"a" 1})", R"({"a":"b"} x)", R"({"a":"\q"})",
                          R"({"a":tru})", R"({"a":"\ud800"})"}) {
    AsyncConnects::Config c;
    EXPECT_FALSE(ParseGlobalResourceConfig(bad, &c, &channels, &error)) << bad;
    EXPECT_FALSE(error.empty()) << bad;
  }
}

TEST(JsonObject, ScalarsAsTextContainersAsRawJson) {
  std::map<std::string, std::string> m;
  std::string error;
  ASSERT_TRUE(ParseJsonObject(R"( { "s" : "a\"b\\c\n", "n": -12.5E+2, "t": true, "f": false, "z": null,
                                    "arr": [ 1, {"x": []} ], "s": "last" } )",
                              &m, &error))
      << error;
  EXPECT_EQ("last", m["s"]);
  EXPECT_EQ("-12.5E+2", m["n"]);
  EXPECT_EQ("true", m["t"]);
  EXPECT_EQ("false", m["f"]);
  EXPECT_EQ("null", m["z"]);
  EXPECT_EQ(R"([ 1, {"x": []} ])", m["arr"]);
  ASSERT_TRUE(ParseJsonObject(R"({"e":"\u00e9"})", &m, &error));
  EXPECT_EQ("\xC3\xA9", m["e"]);
  std::string deep(40, '[');
  EXPECT_FALSE(ParseJsonObject("{\"d\":" + deep + std::string(40, ']') + "}", &m, &error)) << "depth is bounded";
}

}  // namespace
}  // namespace llmdd
