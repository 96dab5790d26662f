// Install test client for hixl::Hixl, written as a HIXL program is (only
// hixl/hixl.h, HIXL's option keys and types), built against the *installed*
// headers and library only (C++11, -Werror, both values of
// _GLIBCXX_USE_CXX11_ABI). Two engines in this process: a server on
// 127.0.0.1:<free port> and a client that connects to it asynchronously,
// WRITEs and READs synchronously, READs asynchronously with user_data and
// collects the end with the bulk GetTransferStatus, then disconnects
// asynchronously. Prints "hixl_client OK" and exits 0 only if every check matched.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "hixl/hixl.h"

namespace {

int g_failures = 0;

void Check(bool ok, const char *what) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "hixl_client: FAILED: %s\n", what);
  }
}

void CheckStatus(hixl::Status got, hixl::Status want, const char *what) {
  if (got != want) {
    ++g_failures;
    std::fprintf(stderr, "hixl_client: FAILED: %s: status %u, expected %u\n", what, static_cast<unsigned>(got),
                 static_cast<unsigned>(want));
  }
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0) {
      port = ntohs(addr.sin_port);
    }
  }
  ::close(fd);
  return port;
}

// Polls the asynchronous connection status of `remote` until it is `want` (at most ~20 s).
hixl::AsyncConnectStatus WaitFor(hixl::Hixl &engine, const hixl::AscendString &remote, hixl::AsyncConnectStatus want) {
  hixl::AsyncConnectStatus status = hixl::AsyncConnectStatus::NOT_CONNECT;
  for (int i = 0; i < 20000; ++i) {
    if (engine.GetAsyncConnectStatus(remote, status) != hixl::SUCCESS || status == want) {
      break;
    }
    ::usleep(1000);
  }
  return status;
}

void CheckTypes() {
  Check(sizeof(hixl::TransferArgs) == 128U && sizeof(hixl::GetTransferStatusArgs) == 128U &&
            sizeof(hixl::TransferResult) == 128U,
        "the optional-argument structs are 128 bytes");
  hixl::GetTransferStatusArgs args;
  Check(args.max_query_count == UINT32_MAX && !args.skip_waiting, "GetTransferStatusArgs defaults");
  hixl::TransferResult result;
  Check(result.req == nullptr && result.user_data == nullptr && result.status == hixl::TransferStatus::WAITING,
        "TransferResult defaults");
  hixl::MemDesc desc;
  Check(!desc.local_only, "MemDesc defaults");
  Check(std::string(hixl::OPTION_BUFFER_POOL) == "BufferPool" &&
            std::string(hixl::OPTION_GLOBAL_RESOURCE_CONFIG) == "GlobalResourceConfig" &&
            std::string(hixl::OPTION_ENABLE_USE_FABRIC_MEM) == "EnableUseFabricMem",
        "HIXL option keys");
  Check(hixl::RESOURCE_EXHAUSTED == 203900U && hixl::FAILED == 503900U, "status values");
  int32_t value = -1;
  CheckStatus(hixl::Hixl::GetCapability(hixl::CLIENT_SERVER_COMM, value), hixl::SUCCESS, "GetCapability");
  Check(value == hixl::FEATURE_SUPPORTED, "CLIENT_SERVER_COMM supported");
  value = -1;
  CheckStatus(hixl::Hixl::GetCapability(hixl::AUTO_CONNECT, value), hixl::SUCCESS, "GetCapability(AUTO_CONNECT)");
  Check(value == hixl::FEATURE_SUPPORTED, "AUTO_CONNECT supported");
}

}  // namespace

int main() {
  CheckTypes();

  std::map<hixl::AscendString, hixl::AscendString> options;
  options[hixl::OPTION_BUFFER_POOL] = "4:8";
  options[hixl::OPTION_GLOBAL_RESOURCE_CONFIG] =
      "{\"connect_pool.thread_num\":\"2\",\"connect_pool.task_queue_capacity\":\"128\"}";

  std::unique_ptr<hixl::Hixl> server;
  std::string server_id;
  for (int attempt = 0; attempt < 5 && !server; ++attempt) {
    const int port = FreePort();
    if (port <= 0) {
      continue;
    }
    server_id = "127.0.0.1:" + std::to_string(port);
    std::unique_ptr<hixl::Hixl> engine(new hixl::Hixl());
    if (engine->Initialize(server_id.c_str(), options) == hixl::SUCCESS) {
      server.swap(engine);
    }
  }
  if (!server) {
    std::fprintf(stderr, "hixl_client: FAILED: no server Initialize succeeded\n");
    return 1;
  }
  const hixl::AscendString server_name(server_id.c_str());
  hixl::Hixl client;
  CheckStatus(client.Initialize("127.0.0.1", options), hixl::SUCCESS, "client Initialize");

  const size_t kLen = 1U << 20;
  std::vector<uint8_t> server_buf(kLen, 0);
  std::vector<uint8_t> client_buf(kLen, 0);
  hixl::MemDesc server_desc;
  server_desc.addr = reinterpret_cast<uintptr_t>(server_buf.data());
  server_desc.len = server_buf.size();
  hixl::MemHandle server_handle = nullptr;
  CheckStatus(server->RegisterMem(server_desc, hixl::MEM_HOST, server_handle), hixl::SUCCESS, "RegisterMem");

  CheckStatus(client.ConnectAsync(server_name, 5000), hixl::SUCCESS, "ConnectAsync");
  Check(WaitFor(client, server_name, hixl::AsyncConnectStatus::CONNECTED) == hixl::AsyncConnectStatus::CONNECTED,
        "ConnectAsync ends CONNECTED");
  std::map<hixl::AscendString, hixl::AsyncConnectStatus> statuses;
  CheckStatus(client.GetAsyncConnectStatus(statuses), hixl::SUCCESS, "GetAsyncConnectStatus(map)");
  Check(statuses.size() == 1U && statuses[server_name] == hixl::AsyncConnectStatus::CONNECTED, "the status map");

  // WRITE the first half into the server's second half, then READ it back.
  const size_t half = kLen / 2;
  for (size_t i = 0; i < half; ++i) {
    client_buf[i] = static_cast<uint8_t>((i * 131U + 7U) & 0xFFU);
  }
  std::vector<hixl::TransferOpDesc> write_ops(1);
  write_ops[0].local_addr = reinterpret_cast<uintptr_t>(client_buf.data());
  write_ops[0].remote_addr = reinterpret_cast<uintptr_t>(server_buf.data() + half);
  write_ops[0].len = half;
  CheckStatus(client.TransferSync(server_name, hixl::WRITE, write_ops, 5000), hixl::SUCCESS, "TransferSync WRITE");
  Check(std::memcmp(server_buf.data() + half, client_buf.data(), half) == 0, "WRITE delivered the bytes");
  std::vector<hixl::TransferOpDesc> read_ops(1);
  read_ops[0].local_addr = reinterpret_cast<uintptr_t>(client_buf.data() + half);
  read_ops[0].remote_addr = reinterpret_cast<uintptr_t>(server_buf.data() + half);
  read_ops[0].len = 4096;
  CheckStatus(client.TransferSync(server_name, hixl::READ, read_ops), hixl::SUCCESS, "TransferSync READ");
  Check(std::memcmp(client_buf.data() + half, client_buf.data(), 4096) == 0, "READ delivered the bytes");

  // Asynchronous READ with user_data, collected by the bulk query.
  read_ops[0].local_addr += 8192;
  hixl::TransferArgs args;
  int tag = 7;
  args.user_data = &tag;
  hixl::TransferReq req = nullptr;
  CheckStatus(client.TransferAsync(server_name, hixl::READ, read_ops, args, req), hixl::SUCCESS, "TransferAsync");
  Check(req != nullptr, "TransferAsync returns a request");
  hixl::GetTransferStatusArgs query;
  query.skip_waiting = true;
  std::vector<hixl::TransferResult> results;
  for (int i = 0; i < 20000 && results.empty(); ++i) {
    CheckStatus(client.GetTransferStatus(query, results), hixl::SUCCESS, "GetTransferStatus(args, results)");
    if (results.empty()) {
      ::usleep(1000);
    }
  }
  Check(results.size() == 1U, "one result");
  if (results.size() == 1U) {
    Check(results[0].req == req && results[0].user_data == &tag &&
              results[0].status == hixl::TransferStatus::COMPLETED,
          "the result: its req, its user_data, COMPLETED");
  }
  Check(std::memcmp(client_buf.data() + half + 8192, client_buf.data(), 4096) == 0, "the async READ delivered the bytes");
  hixl::TransferStatus status = hixl::TransferStatus::WAITING;
  CheckStatus(client.GetTransferStatus(req, status), hixl::PARAM_INVALID, "the bulk query released it");

  CheckStatus(client.DisconnectAsync(server_name, 5000), hixl::SUCCESS, "DisconnectAsync");
  Check(WaitFor(client, server_name, hixl::AsyncConnectStatus::NOT_CONNECT) == hixl::AsyncConnectStatus::NOT_CONNECT,
        "DisconnectAsync ends NOT_CONNECT");
  CheckStatus(client.TransferSync(server_name, hixl::READ, read_ops), hixl::NOT_CONNECTED, "TransferSync afterwards");
  CheckStatus(server->DeregisterMem(server_handle), hixl::SUCCESS, "DeregisterMem");
  client.Finalize();
  server->Finalize();

  if (g_failures != 0) {
    std::fprintf(stderr, "hixl_client: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("hixl_client OK\n");
  return 0;
}
