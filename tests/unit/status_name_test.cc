// Unit tests for src/common/status_name.h and the exported
// llmdd_ext::StatusName(): every status value of both public headers has its
// name, docs/API.md and docs/TROUBLESHOOTING.md agree with it, unknown values
// say so, and the log lines of failing calls name the status (and the peer's
// reason, when a peer refused).
#include "common/status_name.h"

#include <gtest/gtest.h>

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/log.h"
#include "datadist/link_messages.h"
#include "engine/engine.h"
#include "llm_datadist/llm_datadist.h"
#include "llmdd/extensions.h"
#include "loopback_util.h"

#ifndef LLMDD_SOURCE_DIR
#error "LLMDD_SOURCE_DIR must be defined by the build (tests/CMakeLists.txt)"
#endif

namespace llmdd {
namespace {

std::string ReadSource(const std::string &relative) {
  std::ifstream in(std::string(LLMDD_SOURCE_DIR) + "/" + relative);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every `constexpr Status NAME = VALUE;` of a public header, by name.
std::map<std::string, uint32_t> HeaderStatuses(const std::string &relative) {
  const std::string text = ReadSource(relative);
  std::map<std::string, uint32_t> out;
  std::regex decl(R"(constexpr\s+Status\s+(\w+)\s*=\s*(0[xX][0-9A-Fa-f]+|\d+)U?\s*;)");
  for (std::sregex_iterator it(text.begin(), text.end(), decl), end; it != end; ++it)
    out[(*it)[1]] = static_cast<uint32_t>(std::stoul((*it)[2], nullptr, 0));
  return out;
}

std::map<std::string, uint32_t> AllHeaderStatuses() {
  std::map<std::string, uint32_t> all = HeaderStatuses("include/adxl/adxl_types.h");
  for (const auto &kv : HeaderStatuses("include/llm_datadist/llm_datadist.h")) all[kv.first] = kv.second;
  return all;
}

// The header's name, except that 0 (SUCCESS and LLM_SUCCESS) is "SUCCESS".
std::string ExpectedName(const std::string &declared, uint32_t value) {
  return value == 0 ? "SUCCESS" : declared;
}

TEST(StatusName, EveryStatusOfBothHeadersHasItsName) {
  const std::map<std::string, uint32_t> all = AllHeaderStatuses();
  // 9 ADXL values and 18 LLM-DataDist values today; a parse that finds
  // fewer is a broken test, not a passing one.
  ASSERT_GE(all.size(), 27U);
  for (const auto &kv : all) {
    SCOPED_TRACE(kv.first);
    const char *name = StatusNameOrNull(kv.second);
    ASSERT_NE(name, nullptr);
    EXPECT_EQ(std::string(name), ExpectedName(kv.first, kv.second));
    EXPECT_EQ(std::string(llmdd_ext::StatusName(kv.second)), ExpectedName(kv.first, kv.second));
  }
}

TEST(StatusName, TextHasTheNumberAsTheDocsWriteIt) {
  EXPECT_EQ(StatusText(adxl::SUCCESS), "SUCCESS (0)");
  EXPECT_EQ(StatusText(adxl::PARAM_INVALID), "PARAM_INVALID (103900)");
  EXPECT_EQ(StatusText(adxl::TIMEOUT), "TIMEOUT (103901)");
  EXPECT_EQ(StatusText(adxl::RESOURCE_EXHAUSTED), "RESOURCE_EXHAUSTED (203900)");
  EXPECT_EQ(StatusText(adxl::FAILED), "FAILED (503900)");
  EXPECT_EQ(StatusText(llm_datadist::LLM_FAILED), "LLM_FAILED (0xFFFFFFFF)");
  EXPECT_EQ(StatusText(llm_datadist::LLM_WAIT_PROC_TIMEOUT), "LLM_WAIT_PROC_TIMEOUT (0x5010B001)");
  EXPECT_EQ(StatusText(llm_datadist::LLM_LINK_FAILED), "LLM_LINK_FAILED (0x5010B009)");
  EXPECT_EQ(StatusText(llm_datadist::LLM_OUT_OF_MEMORY), "LLM_OUT_OF_MEMORY (0x5010B01C)");
  // Every value of both headers: "NAME (number)".
  for (const auto &kv : AllHeaderStatuses()) {
    const std::string text = StatusText(kv.second);
    EXPECT_EQ(text.rfind(ExpectedName(kv.first, kv.second) + " (", 0), 0U) << text;
  }
}

TEST(StatusName, UnknownValuesSaySo) {
  for (uint32_t v : {1U, 42U, 103899U, 103906U, 503901U, 0x5010B000U, 0x5010B003U, 0x5010B01DU, 0xFFFFFFFEU}) {
    SCOPED_TRACE(v);
    EXPECT_EQ(StatusNameOrNull(v), nullptr);
    EXPECT_STREQ(llmdd_ext::StatusName(v), "unknown status");
  }
  EXPECT_EQ(StatusText(42), "unknown status (42)");
  EXPECT_EQ(StatusText(503901), "unknown status (503901)");
  EXPECT_EQ(StatusText(0x5010B0FFU), "unknown status (0x5010B0FF)");
}

// docs/API.md writes the LLM-DataDist values as "`LLM_X` 0x5010B0..": the
// same numbers as the headers (and so as StatusText).
TEST(StatusName, ApiDocValuesMatch) {
  const std::string doc = ReadSource("docs/API.md");
  std::regex pair(R"(`(LLM_\w+)` (0x[0-9A-Fa-f]+|\d+))");
  size_t checked = 0;
  for (std::sregex_iterator it(doc.begin(), doc.end(), pair), end; it != end; ++it, ++checked) {
    const uint32_t value = static_cast<uint32_t>(std::stoul((*it)[2], nullptr, 0));
    EXPECT_EQ(ExpectedName((*it)[1], value), StatusNameOrNull(value) ? StatusNameOrNull(value) : "(none)")
        << (*it)[0];
  }
  EXPECT_GE(checked, 10U);
}

// docs/TROUBLESHOOTING.md has a section for every status of both headers.
TEST(StatusName, TroubleshootingCoversEveryStatus) {
  const std::string doc = ReadSource("docs/TROUBLESHOOTING.md");
  ASSERT_FALSE(doc.empty()) << "docs/TROUBLESHOOTING.md is missing";
  for (const auto &kv : AllHeaderStatuses()) {
    if (kv.second == 0) continue;
    const std::string heading = "### `" + kv.first + "`";
    EXPECT_NE(doc.find(heading), std::string::npos) << heading << " is not in docs/TROUBLESHOOTING.md";
  }
}

// ---------------------------------------------------------------- log lines

class StatusLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = CurrentLogLevel();
    SetLogLevel(LogLevel::kError);
  }
  void TearDown() override { SetLogLevel(saved_); }

  template <typename Fn>
  static std::string Capture(Fn fn) {
    fflush(stderr);
    ::testing::internal::CaptureStderr();
    fn();
    fflush(stderr);
    return ::testing::internal::GetCapturedStderr();
  }

  // The captured lines that contain `needle`.
  static std::vector<std::string> LinesWith(const std::string &text, const std::string &needle) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (line.find(needle) != std::string::npos) out.push_back(line);
    return out;
  }

 private:
  LogLevel saved_ = LogLevel::kWarn;
};

// A READ past the end of the server's registration: the caller's line names
// the status and carries the peer's reason.
TEST_F(StatusLogTest, RefusedTransferNamesTheStatusAndThePeersReason) {
  const std::map<std::string, std::string> options;
  std::vector<char> served(4096), local(4096);
  Engine server, client;
  const int port = testing::FreeLoopbackPort();
  ASSERT_GT(port, 0);
  const std::string server_id = "127.0.0.1:" + std::to_string(port);
  ASSERT_EQ(server.Initialize(server_id, options), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", options), adxl::SUCCESS);
  uint64_t handle = 0;
  ASSERT_EQ(server.RegisterMem(reinterpret_cast<uintptr_t>(served.data()), served.size(), adxl::MEM_HOST, &handle),
            adxl::SUCCESS);
  ASSERT_EQ(client.Connect(server_id, 3000), adxl::SUCCESS);
  adxl::TransferOpDesc past_end{reinterpret_cast<uintptr_t>(local.data()),
                                reinterpret_cast<uintptr_t>(served.data()) + served.size() - 16, 64};
  adxl::Status st = adxl::SUCCESS;
  const std::string log = Capture([&] { st = client.TransferSync(server_id, adxl::READ, &past_end, 1, 3000); });
  EXPECT_EQ(st, adxl::PARAM_INVALID);
  const std::vector<std::string> lines = LinesWith(log, "TransferSync(" + server_id);
  ASSERT_EQ(lines.size(), 1U) << log;
  EXPECT_NE(lines[0].find("PARAM_INVALID (103900)"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("refused: "), std::string::npos) << "the peer's reason: " << lines[0];
  client.Finalize();
  server.Finalize();
}

// Fills `options` for a LlmDataDist listening on a free loopback port; returns the port.
int ListenOptions(std::map<ge::AscendString, ge::AscendString> *options) {
  const int port = testing::FreeLoopbackPort();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  (*options)[llm_datadist::OPTION_DEVICE_ID] = "0";
  (*options)[llm_datadist::OPTION_LISTEN_IP_INFO] = ge::AscendString(listen.c_str());
  return port;
}

llm_datadist::ClusterInfo ClusterAt(uint64_t cluster, int port) {
  llm_datadist::ClusterInfo c;
  c.remote_cluster_id = cluster;
  llm_datadist::IpInfo ip;
  ip.ip = "127.0.0.1";
  c.local_ip_infos.push_back(ip);
  ip.port = static_cast<uint16_t>(port);
  c.remote_ip_infos.push_back(ip);
  return c;
}

// A link naming the wrong cluster id: the caller's line names the status and
// says which cluster actually listens there (the server's reason).
TEST_F(StatusLogTest, WrongClusterIdNamesTheStatusAndThePeersReason) {
  llm_datadist::LlmDataDist server(1, llm_datadist::LlmRole::kPrompt);
  std::map<ge::AscendString, ge::AscendString> options;
  const int port = ListenOptions(&options);
  ASSERT_GT(port, 0);
  ASSERT_EQ(server.Initialize(options), llm_datadist::LLM_SUCCESS);
  llm_datadist::LlmDataDist client(5, llm_datadist::LlmRole::kDecoder);
  std::map<ge::AscendString, ge::AscendString> client_options;
  client_options[llm_datadist::OPTION_DEVICE_ID] = "0";
  ASSERT_EQ(client.Initialize(client_options), llm_datadist::LLM_SUCCESS);
  std::vector<llm_datadist::Status> rets;
  llm_datadist::Status st = llm_datadist::LLM_SUCCESS;
  const std::string log = Capture([&] { st = client.LinkLlmClusters({ClusterAt(2, port)}, rets, 3000); });
  EXPECT_EQ(st, llm_datadist::LLM_LINK_FAILED);
  const std::vector<std::string> lines = LinesWith(log, "LinkLlmClusters: ");
  ASSERT_EQ(lines.size(), 1U) << log;
  EXPECT_NE(lines[0].find("LLM_LINK_FAILED (0x5010B009)"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("this is LLM-DataDist cluster 1"), std::string::npos) << lines[0];
  client.Finalize();
  server.Finalize();
}

// The Link and GetCache app messages (the refusals an engine that does not
// check the Hello's target meets): a refusal's response body is its reason.
TEST_F(StatusLogTest, AppRefusalsCarryTheirReason) {
  llm_datadist::LlmDataDist server(1, llm_datadist::LlmRole::kPrompt);
  std::map<ge::AscendString, ge::AscendString> options;
  const int port = ListenOptions(&options);
  ASSERT_GT(port, 0);
  ASSERT_EQ(server.Initialize(options), llm_datadist::LLM_SUCCESS);
  Engine raw;  // cluster 5, connecting without naming a target
  ASSERT_EQ(raw.Start("5", EngineConfig{}, nullptr, Engine::Hooks{}), adxl::SUCCESS);
  std::string error, response;
  ASSERT_EQ(raw.ConnectKeyed("server", testing::Loopback(port), 0, Deadline::AfterMs(3000), &error), adxl::SUCCESS)
      << error;
  datadist::LinkRequest wrong{5, 99};
  Capture([&] {
    EXPECT_EQ(raw.AppCallKeyed("server", datadist::kAppLink, datadist::EncodeLinkRequest(wrong), Deadline::AfterMs(3000), &response,
                               &error),
              llm_datadist::LLM_LINK_FAILED);
  });
  EXPECT_NE(response.find("names cluster 99"), std::string::npos) << response;
  EXPECT_NE(response.find("is cluster 1"), std::string::npos) << response;
  response.clear();
  EXPECT_EQ(raw.AppCallKeyed("server", datadist::kAppGetCache, datadist::EncodeCacheQuery(42), Deadline::AfterMs(3000), &response,
                             &error),
            llm_datadist::LLM_KV_CACHE_NOT_EXIST);
  EXPECT_EQ(response, "cache 42 is not registered on cluster 1");
  raw.Finalize();
  server.Finalize();
}

}  // namespace
}  // namespace llmdd
