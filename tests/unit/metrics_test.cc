// Engine metrics (docs/METRICS.md): what a transfer moved appears, with the
// exact values, in llmdd_ext::GetMetricsJson and in a scrape of
// llmdd.MetricsListen; refusals are counted by reason on the serving side;
// the HTTP endpoint answers bad requests with a status and never hangs; a bad
// MetricsListen is PARAM_INVALID with a log line; the per-transfer record.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "adxl/adxl_engine.h"
#include "common/log.h"
#include "engine/metrics.h"
#include "hixl/hixl.h"
#include "llm_datadist/llm_datadist.h"
#include "llmdd/extensions.h"
#include "loopback_util.h"

namespace {

int FreePort() { return llmdd::testing::FreeLoopbackPort(); }

// Sends `request` to 127.0.0.1:port and reads the answer until the server
// closes, at most `timeout_ms` in all (a hang fails the test, it does not block it).
std::string HttpExchange(int port, const std::string &request, int timeout_ms = 3000) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "socket failed";
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "connect failed";
  }
  if (!request.empty()) (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string answer;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[4096];
  while (std::chrono::steady_clock::now() < give_up) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return answer;
}

std::string Json(adxl::AdxlEngine &engine) {
  const char *json = nullptr;
  EXPECT_EQ(llmdd_ext::GetMetricsJson(engine, json), adxl::SUCCESS);
  return json == nullptr ? "" : json;
}

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << "missing: " << (part) << "\nin:\n" << (text)

TEST(Metrics, TransferAppearsInJsonAndScrapeWithExactValues) {
  adxl::AdxlEngine server, client;
  const std::string id = "127.0.0.1:" + std::to_string(FreePort());
  const int metrics_port = FreePort();
  ASSERT_EQ(server.Initialize(id.c_str(), {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"},
                                            {"llmdd.MetricsListen", ("127.0.0.1:" + std::to_string(metrics_port)).c_str()}}),
            adxl::SUCCESS);
  std::vector<char> remote(4096, 'r'), local(4096, 'l');
  adxl::MemDesc desc{};
  desc.addr = reinterpret_cast<uintptr_t>(remote.data());
  desc.len = remote.size();
  adxl::MemHandle handle = nullptr;
  ASSERT_EQ(server.RegisterMem(desc, adxl::MEM_HOST, handle), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), adxl::SUCCESS);

  const uintptr_t l = reinterpret_cast<uintptr_t>(local.data()), r = desc.addr;
  // WRITE: 3 descriptors, the first two adjacent on both sides (merged): 600 bytes, 2 after coalescing.
  std::vector<adxl::TransferOpDesc> write{{l, r, 100}, {l + 100, r + 100, 200}, {l + 1000, r + 2000, 300}};
  ASSERT_EQ(client.TransferSync(id.c_str(), adxl::WRITE, write, 2000), adxl::SUCCESS);
  // READ: one descriptor of 8 bytes.
  std::vector<adxl::TransferOpDesc> read{{l + 3000, r + 3000, 8}};
  ASSERT_EQ(client.TransferSync(id.c_str(), adxl::READ, read, 2000), adxl::SUCCESS);

  const std::string json = Json(client);
  EXPECT_HAS(json, "{\"op\":\"write\",\"transport\":\"tcp\",\"status\":\"SUCCESS\",\"count\":1}");
  EXPECT_HAS(json, "{\"op\":\"read\",\"transport\":\"tcp\",\"status\":\"SUCCESS\",\"count\":1}");
  EXPECT_HAS(json, "{\"op\":\"write\",\"transport\":\"tcp\",\"bytes\":600}");
  EXPECT_HAS(json, "{\"op\":\"read\",\"transport\":\"tcp\",\"bytes\":8}");
  EXPECT_HAS(json, "\"read\":{\"submitted\":1,\"coalesced\":1},\"write\":{\"submitted\":3,\"coalesced\":2}");
  EXPECT_HAS(json, "{\"transport\":\"tcp\",\"size\":\"le4KiB\",\"count\":2,");
  EXPECT_HAS(json, "\"channels\":1,");
  EXPECT_HAS(json, "\"connects\":{\"SUCCESS\":1,");
  // Nothing else was counted as a transfer (no other status, no other transport).
  EXPECT_EQ(json.find("\"transport\":\"shm\""), std::string::npos) << json;
  EXPECT_EQ(json.find("\"status\":\"FAILED\""), std::string::npos) << json;

  const std::string scrape = HttpExchange(metrics_port, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
  EXPECT_EQ(scrape.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << scrape;
  EXPECT_HAS(scrape, "Content-Type: text/plain; version=0.0.4");
  const std::string e = "engine=\"127.0.0.1\",";
  EXPECT_HAS(scrape, "\nllmdd_transfer_bytes_total{" + e + "op=\"write\",transport=\"tcp\"} 600\n");
  EXPECT_HAS(scrape, "\nllmdd_transfer_bytes_total{" + e + "op=\"read\",transport=\"tcp\"} 8\n");
  EXPECT_HAS(scrape, "\nllmdd_transfers_total{" + e + "op=\"write\",transport=\"tcp\",status=\"SUCCESS\"} 1\n");
  EXPECT_HAS(scrape, "\nllmdd_transfers_total{" + e + "op=\"read\",transport=\"tcp\",status=\"SUCCESS\"} 1\n");
  EXPECT_HAS(scrape, "\nllmdd_transfer_descriptors_total{" + e + "op=\"write\",stage=\"submitted\"} 3\n");
  EXPECT_HAS(scrape, "\nllmdd_transfer_descriptors_total{" + e + "op=\"write\",stage=\"coalesced\"} 2\n");
  EXPECT_HAS(scrape, "\nllmdd_transfer_duration_seconds_count{" + e + "transport=\"tcp\",size=\"le4KiB\"} 2\n");
  EXPECT_HAS(scrape,
             "\nllmdd_transfer_duration_seconds_bucket{" + e + "transport=\"tcp\",size=\"le4KiB\",le=\"+Inf\"} 2\n");
  EXPECT_HAS(scrape, "# TYPE llmdd_transfer_duration_seconds histogram\n");
  // The JSON flavour of the endpoint is the same snapshot.
  const std::string scraped_json = HttpExchange(metrics_port, "GET /metrics.json HTTP/1.0\r\n\r\n");
  EXPECT_HAS(scraped_json, "Content-Type: application/json");
  EXPECT_HAS(scraped_json, "{\"op\":\"write\",\"transport\":\"tcp\",\"bytes\":600}");

  // The server registered 4096 bytes in one region.
  const std::string server_json = Json(server);
  EXPECT_HAS(server_json, "\"registered_regions\":1,\"registered_bytes\":4096");
  EXPECT_HAS(server_json, "\"sessions\":1,");
  client.Finalize();
  server.Finalize();
  // After Finalize the endpoint is gone and the counters stay.
  EXPECT_EQ(HttpExchange(metrics_port, "GET /metrics HTTP/1.1\r\n\r\n"), "connect failed");
  EXPECT_HAS(Json(client), "{\"op\":\"write\",\"transport\":\"tcp\",\"bytes\":600}");
  EXPECT_HAS(Json(client), "\"initialized\":false");
}

TEST(Metrics, AsyncTransfersAreCountedOnceEach) {
  hixl::Hixl server, client;
  const std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {{"llmdd.Transport", "tcp"}}), hixl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), hixl::SUCCESS);
  std::vector<char> remote(64 * 64, 'r'), local(64 * 64, 'l');
  hixl::MemDesc desc;
  desc.addr = reinterpret_cast<uintptr_t>(remote.data());
  desc.len = remote.size();
  hixl::MemHandle handle = nullptr;
  ASSERT_EQ(server.RegisterMem(desc, hixl::MEM_HOST, handle), hixl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), hixl::SUCCESS);
  std::vector<hixl::TransferReq> reqs(16);
  for (size_t i = 0; i < reqs.size(); ++i) {
    std::vector<hixl::TransferOpDesc> d{{reinterpret_cast<uintptr_t>(local.data()) + i * 64, desc.addr + i * 64, 64}};
    ASSERT_EQ(client.TransferAsync(id.c_str(), hixl::READ, d, hixl::TransferArgs(), reqs[i]), hixl::SUCCESS);
  }
  for (hixl::TransferReq &req : reqs) {
    hixl::TransferStatus status = hixl::TransferStatus::WAITING;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (status == hixl::TransferStatus::WAITING && std::chrono::steady_clock::now() < give_up)
      ASSERT_EQ(client.GetTransferStatus(req, status), hixl::SUCCESS);
    ASSERT_EQ(status, hixl::TransferStatus::COMPLETED);
  }
  // A worker counts a request right after it ended: a poller may see it
  // COMPLETED a moment before that (docs/METRICS.md).
  std::string text;
  for (int i = 0; i < 200; ++i) {
    const char *json = nullptr;
    ASSERT_EQ(llmdd_ext::GetMetricsJson(client, json), hixl::SUCCESS);
    text = json;
    if (text.find("\"count\":16}") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Carried together or alone, each request counts once with its own bytes.
  EXPECT_HAS(text, "{\"op\":\"read\",\"transport\":\"tcp\",\"status\":\"SUCCESS\",\"count\":16}");
  EXPECT_HAS(text, "{\"op\":\"read\",\"transport\":\"tcp\",\"bytes\":1024}");
  EXPECT_HAS(text, "\"read\":{\"submitted\":16,\"coalesced\":16}");
  client.Finalize();
  server.Finalize();
}

TEST(Metrics, RefusalsAreCountedByReason) {
  adxl::AdxlEngine server, client;
  const std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {{"llmdd.Transport", "tcp"}, {"llmdd.MaxSessions", "1"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  std::vector<char> ro(256, 'R'), local(256, 'L');
  adxl::MemDesc ro_desc{};
  ro_desc.addr = reinterpret_cast<uintptr_t>(ro.data());
  ro_desc.len = ro.size();
  llmdd_ext::SetRemoteAccess(ro_desc, llmdd_ext::kRemoteReadOnly);
  adxl::MemHandle handle = nullptr;
  ASSERT_EQ(server.RegisterMem(ro_desc, adxl::MEM_HOST, handle), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), adxl::SUCCESS);
  const uintptr_t l = reinterpret_cast<uintptr_t>(local.data());
  // A WRITE into read-only memory: rights.
  std::vector<adxl::TransferOpDesc> into_ro{{l, ro_desc.addr, 16}};
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::WRITE, into_ro, 2000), adxl::PARAM_INVALID);
  // A READ that runs past the registration: range.
  std::vector<adxl::TransferOpDesc> past{{l, ro_desc.addr + 200, 100}};
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::READ, past, 2000), adxl::PARAM_INVALID);
  // A second client over llmdd.MaxSessions=1: cap.
  adxl::AdxlEngine second;
  ASSERT_EQ(second.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  EXPECT_EQ(second.Connect(id.c_str(), 2000), adxl::RESOURCE_EXHAUSTED);

  EXPECT_HAS(Json(server), "\"refusals\":{\"auth\":0,\"cap\":1,\"range\":1,\"rights\":1}");
  const std::string c = Json(client);
  EXPECT_HAS(c, "{\"op\":\"write\",\"transport\":\"tcp\",\"status\":\"PARAM_INVALID\",\"count\":1}");
  EXPECT_HAS(c, "{\"op\":\"read\",\"transport\":\"tcp\",\"status\":\"PARAM_INVALID\",\"count\":1}");
  EXPECT_EQ(c.find("\"bytes\":{"), std::string::npos);
  EXPECT_HAS(c, "\"bytes\":[]");  // nothing moved
  EXPECT_HAS(Json(second), "\"connects\":{\"SUCCESS\":0,\"PARAM_INVALID\":0,\"TIMEOUT\":0,\"NOT_CONNECTED\":0,"
                           "\"ALREADY_CONNECTED\":0,\"UNSUPPORTED\":0,\"RESOURCE_EXHAUSTED\":1,");
  second.Finalize();
  client.Finalize();
  server.Finalize();
}

TEST(Metrics, AuthenticationFailuresAreCounted) {
  adxl::AdxlEngine server, client;
  const std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {{"llmdd.AuthSecret", "0123456789abcdef-server"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.AuthSecret", "0123456789abcdef-client"}}), adxl::SUCCESS);
  EXPECT_NE(client.Connect(id.c_str(), 2000), adxl::SUCCESS);
  // The server counts after it answered: give it a moment.
  std::string json;
  for (int i = 0; i < 100; ++i) {
    json = Json(server);
    if (json.find("\"auth\":1") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_HAS(json, "\"refusals\":{\"auth\":1,\"cap\":0,\"range\":0,\"rights\":0}");
  client.Finalize();
  server.Finalize();
}

TEST(Metrics, EndpointRefusesBadRequestsWithAStatusAndDoesNotHang) {
  adxl::AdxlEngine engine;
  const int port = FreePort();
  ASSERT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.MetricsListen", ("127.0.0.1:" + std::to_string(port)).c_str()},
                                            {"llmdd.MetricsTimeoutMs", "300"},
                                            {"llmdd.MetricsMaxConnections", "1"}}),
            adxl::SUCCESS);
  const auto status_line = [](const std::string &answer) { return answer.substr(0, answer.find("\r\n")); };
  // Oversize: 10 KiB without an end of headers.
  EXPECT_EQ(status_line(HttpExchange(port, "GET /metrics HTTP/1.1\r\nX-Pad: " + std::string(10240, 'a'))),
            "HTTP/1.1 431 Request Header Fields Too Large");
  EXPECT_EQ(status_line(HttpExchange(port, "\x01\x02garbage\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(status_line(HttpExchange(port, "GET /metrics SPDY/3\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  EXPECT_EQ(status_line(HttpExchange(port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
            "HTTP/1.1 405 Method Not Allowed");
  EXPECT_EQ(status_line(HttpExchange(port, "GET /secrets HTTP/1.1\r\n\r\n")), "HTTP/1.1 404 Not Found");
  // A request that never ends: 408 at llmdd.MetricsTimeoutMs, not a hang.
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(status_line(HttpExchange(port, "GET /metrics HTTP/1.1\r\n")), "HTTP/1.1 408 Request Timeout");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  // A connection over llmdd.MetricsMaxConnections=1 while one is open: 503 at once.
  std::string slow_answer;
  std::thread slow([&] { slow_answer = HttpExchange(port, "GET /metrics HTTP/1.1\r\n"); });  // held until 408
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(status_line(HttpExchange(port, "GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 503 Service Unavailable");
  slow.join();
  EXPECT_EQ(status_line(slow_answer), "HTTP/1.1 408 Request Timeout");
  // And it still serves afterwards.
  EXPECT_EQ(status_line(HttpExchange(port, "GET /metrics HTTP/1.1\r\n\r\n")), "HTTP/1.1 200 OK");
  engine.Finalize();
}

TEST(Metrics, BadMetricsListenIsParamInvalidWithALogLine) {
  for (const char *bad : {"nonsense", "127.0.0.1", "127.0.0.1:70000", "999.1.1.1:80", ""}) {
    adxl::AdxlEngine engine;
    llmdd_ext::ClearLastErrors();
    EXPECT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.MetricsListen", bad}}), adxl::PARAM_INVALID) << bad;
    const std::string errors = llmdd_ext::LastErrors();
    EXPECT_HAS(errors, std::string("llmdd.MetricsListen='") + bad + "'");
  }
  for (const char *bad : {"0", "65", "x"}) {
    adxl::AdxlEngine engine;
    EXPECT_EQ(engine.Initialize("127.0.0.1", {{"llmdd.MetricsMaxConnections", bad}}), adxl::PARAM_INVALID) << bad;
  }
  // A port already taken: FAILED, with the address in the log line, and nothing left running.
  adxl::AdxlEngine first, second;
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(first.Initialize("127.0.0.1", {{"llmdd.MetricsListen", listen.c_str()}}), adxl::SUCCESS);
  llmdd_ext::ClearLastErrors();
  EXPECT_EQ(second.Initialize(("127.0.0.1:" + std::to_string(FreePort())).c_str(), {{"llmdd.MetricsListen", listen.c_str()}}),
            adxl::FAILED);
  EXPECT_HAS(std::string(llmdd_ext::LastErrors()), "llmdd.MetricsListen=" + listen);
  first.Finalize();
}

TEST(Metrics, PerTransferRecordAtDebugLevel) {
  adxl::AdxlEngine server, client;
  const std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {{"llmdd.Transport", "tcp"}}), adxl::SUCCESS);
  std::vector<char> remote(64, 'r'), local(64, 'l');
  adxl::MemDesc desc{};
  desc.addr = reinterpret_cast<uintptr_t>(remote.data());
  desc.len = remote.size();
  adxl::MemHandle handle = nullptr;
  ASSERT_EQ(server.RegisterMem(desc, adxl::MEM_HOST, handle), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), adxl::SUCCESS);
  const uintptr_t l = reinterpret_cast<uintptr_t>(local.data());
  std::vector<adxl::TransferOpDesc> d{{l, desc.addr, 8}, {l + 8, desc.addr + 8, 8}, {l + 32, desc.addr + 40, 8}};

  // Off at the default level: no record.
  const llmdd::LogLevel saved = llmdd::CurrentLogLevel();
  llmdd::SetLogLevel(llmdd::LogLevel::kWarn);
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(client.TransferSync(id.c_str(), adxl::READ, d, 2000), adxl::SUCCESS);
  EXPECT_EQ(::testing::internal::GetCapturedStderr().find("transfer "), std::string::npos);

  llmdd::SetLogLevel(llmdd::LogLevel::kDebug);
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(client.TransferSync(id.c_str(), adxl::READ, d, 2000), adxl::SUCCESS);
  const std::string log = ::testing::internal::GetCapturedStderr();
  llmdd::SetLogLevel(saved);
  EXPECT_HAS(log, "peer=" + id + " op=read descriptors=3 coalesced=2 bytes=24 transport=tcp queued_us=0.0 wire_us=");
  EXPECT_HAS(log, " total_us=");
  EXPECT_HAS(log, " status=SUCCESS\n");
  client.Finalize();
  server.Finalize();
}

TEST(Metrics, LlmDataDistNotInitializedIsFailed) {
  llm_datadist::LlmDataDist datadist(1, llm_datadist::LlmRole::kPrompt);
  const char *json = nullptr;
  EXPECT_EQ(llmdd_ext::GetMetricsJson(datadist, json), llm_datadist::LLM_FAILED);
  ASSERT_NE(json, nullptr);
  EXPECT_STREQ(json, "");
}

// LLM-DataDist: links, pulled blocks and the engine transfer underneath.
TEST(Metrics, LlmDataDistLinksAndBlocks) {
  using namespace llm_datadist;
  constexpr uint64_t kPrompt = 11, kDecoder = 22;
  LlmDataDist prompt(kPrompt, LlmRole::kPrompt), decoder(kDecoder, LlmRole::kDecoder);
  std::map<AscendString, AscendString> options{{OPTION_DEVICE_ID, "0"}};
  const int port = FreePort();
  auto listen = options;
  listen[OPTION_LISTEN_IP_INFO] = AscendString(("127.0.0.1:" + std::to_string(port)).c_str());
  ASSERT_EQ(prompt.Initialize(listen), LLM_SUCCESS);
  ASSERT_EQ(decoder.Initialize(options), LLM_SUCCESS);
  ClusterInfo cluster;
  cluster.remote_cluster_id = kPrompt;
  IpInfo local_ip, remote_ip;
  local_ip.ip = "127.0.0.1";
  remote_ip.ip = "127.0.0.1";
  remote_ip.port = static_cast<uint16_t>(port);
  cluster.local_ip_infos.push_back(local_ip);
  cluster.remote_ip_infos.push_back(remote_ip);
  std::vector<Status> rets;
  ASSERT_EQ(decoder.LinkLlmClusters({cluster}, rets, 3000), LLM_SUCCESS);
  // 4 tensors of {8, 16} int32: 8 blocks of 64 B each.
  CacheDesc desc;
  desc.num_tensors = 4;
  desc.data_type = DT_INT32;
  desc.shape = {8, 16};
  std::vector<std::vector<uint8_t>> src(4, std::vector<uint8_t>(512, 1)), dst(4, std::vector<uint8_t>(512, 0));
  std::vector<uint64_t> src_addrs, dst_addrs;
  for (size_t t = 0; t < 4; ++t) {
    src_addrs.push_back(reinterpret_cast<uint64_t>(src[t].data()));
    dst_addrs.push_back(reinterpret_cast<uint64_t>(dst[t].data()));
  }
  int64_t src_id = -1, dst_id = -1;
  ASSERT_EQ(prompt.RegisterKvCache(desc, src_addrs, RegisterCfg{}, src_id), LLM_SUCCESS);
  ASSERT_EQ(decoder.RegisterKvCache(desc, dst_addrs, RegisterCfg{}, dst_id), LLM_SUCCESS);
  CacheIndex index;
  index.cluster_id = kPrompt;
  index.cache_id = src_id;
  index.batch_index = 0;
  Cache dst_cache;
  dst_cache.cache_id = dst_id;
  dst_cache.cache_desc = desc;
  ASSERT_EQ(decoder.PullKvBlocks(index, dst_cache, {1, 2}, {5, 6}), LLM_SUCCESS);

  const char *json = nullptr;
  ASSERT_EQ(llmdd_ext::GetMetricsJson(decoder, json), LLM_SUCCESS);
  std::string d = json;
  EXPECT_HAS(d, "\"datadist\":{\"links\":1,\"links_established\":1,\"links_ended\":0,\"blocks_pulled\":2,"
                "\"blocks_pushed\":0,\"cache_pulls\":1,\"cache_pushes\":0}");
  // 2 blocks of 64 B from each of 4 tensors, on whichever path the engines chose.
  EXPECT_HAS(d, "\"bytes\":512}");
  EXPECT_HAS(d, "\"engine\":\"22\"");
  ASSERT_EQ(llmdd_ext::GetMetricsJson(prompt, json), LLM_SUCCESS);
  EXPECT_HAS(std::string(json), "\"datadist\":{\"links\":1,\"links_established\":1,");
  ASSERT_EQ(decoder.UnlinkLlmClusters({cluster}, rets, 3000), LLM_SUCCESS);
  ASSERT_EQ(llmdd_ext::GetMetricsJson(decoder, json), LLM_SUCCESS);
  EXPECT_HAS(std::string(json), "\"datadist\":{\"links\":0,\"links_established\":1,\"links_ended\":1,");
  decoder.Finalize();
  prompt.Finalize();
}

// The shards: concurrent records from many threads sum exactly.
TEST(Metrics, ConcurrentRecordsSumExactly) {
  llmdd::EngineMetrics metrics;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        llmdd::TransferRecord r;
        r.op = adxl::WRITE;
        r.transport = llmdd::metrics::kShm;
        r.status = adxl::SUCCESS;
        r.bytes = 3;
        r.descriptors_submitted = 2;
        r.descriptors_coalesced = 1;
        r.total_ns = 7000;  // the 10 µs bucket
        metrics.RecordTransfer(r);
      }
    });
  }
  for (auto &t : threads) t.join();
  llmdd::MetricsSnapshot s;
  metrics.Snapshot(&s);
  EXPECT_EQ(s.transfers[1][llmdd::metrics::kShm][0], 80000u);
  EXPECT_EQ(s.bytes[1][llmdd::metrics::kShm], 240000u);
  EXPECT_EQ(s.descriptors_submitted[1], 160000u);
  EXPECT_EQ(s.descriptors_coalesced[1], 80000u);
  EXPECT_EQ(s.latency_buckets[llmdd::metrics::kShm][0][1], 80000u);
  EXPECT_EQ(s.latency_sum_ns[llmdd::metrics::kShm][0], 80000u * 7000u);
  s.engine = "e\"1";
  const std::string text = llmdd::RenderPrometheus(s);
  // Cumulative buckets, escaped label value.
  EXPECT_HAS(text, "llmdd_transfer_duration_seconds_bucket{engine=\"e\\\"1\",transport=\"shm\",size=\"le4KiB\",le=\"5e-06\"} 0\n");
  EXPECT_HAS(text, "llmdd_transfer_duration_seconds_bucket{engine=\"e\\\"1\",transport=\"shm\",size=\"le4KiB\",le=\"1e-05\"} 80000\n");
  EXPECT_HAS(text, "llmdd_transfer_duration_seconds_bucket{engine=\"e\\\"1\",transport=\"shm\",size=\"le4KiB\",le=\"10\"} 80000\n");
  EXPECT_HAS(text, "llmdd_transfer_duration_seconds_sum{engine=\"e\\\"1\",transport=\"shm\",size=\"le4KiB\"} 0.56\n");
}

}  // namespace
