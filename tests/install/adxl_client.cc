// Install test client: uses adxl::AdxlEngine exactly as CANN documents it
// (the original calls, and the later ones: TransferAsync/GetTransferStatus,
// SendNotify/GetNotifies,
// GetCapability, MallocMem/FreeMem, ExportToShareableHandle, the newest types),
// built against the *installed* headers and library only (C++11, -Werror,
// both values of _GLIBCXX_USE_CXX11_ABI). Two engines live in this process:
// A listens on 127.0.0.1:<free port>, B is a pure client that connects to A.
// Also llmdd_ext::StatusName (llmdd/extensions.h) for statuses of both APIs,
// and its per-request deadline of TransferAsync (SetTransferTimeout).
// Prints "adxl_client OK" and exits 0 only if every check matched.
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
#include <unordered_set>
#include <vector>

#include "adxl/adxl_engine.h"
#include "llmdd/extensions.h"

namespace {

int g_failures = 0;

void Fail(const char *what, const std::string &detail) {
  ++g_failures;
  std::fprintf(stderr, "adxl_client: FAILED: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
}

void Check(bool ok, const char *what) {
  if (!ok) {
    Fail(what, "");
  }
}

void CheckStatus(adxl::Status got, adxl::Status want, const char *what) {
  if (got != want) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "%s (%u), expected %s (%u)", llmdd_ext::StatusName(got),
                  static_cast<unsigned>(got), llmdd_ext::StatusName(want), static_cast<unsigned>(want));
    Fail(what, buf);
  }
}

// Asks the kernel for a currently free TCP port on 127.0.0.1 (racy by nature:
// the caller retries if Initialize then fails to listen on it).
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in addr;
  std::memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
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

void CheckAscendString() {
  // Copies, comparisons, map keys and std::hash, all through the library.
  adxl::AscendString a("127.0.0.1:26000");
  adxl::AscendString b = a;  // copy shares the library-created string
  adxl::AscendString c;
  c = b;
  Check(a == b && b == c && !(a != c), "AscendString copy equality");
  Check(a == "127.0.0.1:26000" && a != "127.0.0.1:26001", "AscendString == const char*");
  Check(std::string(a.GetString()) == "127.0.0.1:26000", "AscendString::GetString");
  Check(a.GetLength() == std::strlen("127.0.0.1:26000"), "AscendString::GetLength");
  Check(a.Find(adxl::AscendString(":26000")) == 9U, "AscendString::Find");
  adxl::AscendString lo("a");
  adxl::AscendString hi("b");
  Check(lo < hi && hi > lo && lo <= hi && hi >= lo && lo <= lo, "AscendString ordering");
  adxl::AscendString null_str;
  adxl::AscendString empty_str("");
  Check(null_str.GetLength() == 0U && std::strcmp(null_str.GetString(), "") == 0, "null AscendString is empty");
  Check(null_str != empty_str && null_str < empty_str, "null AscendString differs from and sorts before \"\"");
  Check(adxl::AscendString("ab", 1) == "a", "AscendString(ptr, len)");
  std::unordered_set<adxl::AscendString> set;
  set.insert(a);
  set.insert(b);
  set.insert(hi);
  Check(set.size() == 2U && set.count(adxl::AscendString("b")) == 1U, "std::hash<AscendString>");
}

// The later calls (spec 5.1, 5.3, 5.3a) that need no engine: capabilities,
// host memory, the newest types.
void CheckStatics() {
  int32_t value = -1;
  CheckStatus(adxl::AdxlEngine::GetCapability(adxl::CLIENT_SERVER_COMM, value), adxl::SUCCESS,
              "GetCapability(CLIENT_SERVER_COMM) before Initialize");
  Check(value == adxl::FEATURE_SUPPORTED, "CLIENT_SERVER_COMM is supported");
  CheckStatus(adxl::AdxlEngine::GetCapability(adxl::AUTO_CONNECT, value), adxl::SUCCESS, "GetCapability(AUTO_CONNECT)");
  Check(value == adxl::FEATURE_SUPPORTED, "AUTO_CONNECT is supported");
  void *mem = nullptr;
  CheckStatus(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, 12345, &mem), adxl::SUCCESS, "MallocMem");
  Check(mem != nullptr && reinterpret_cast<uintptr_t>(mem) % 4096U == 0U, "MallocMem is page-aligned");
  if (mem != nullptr) {
    std::memset(mem, 0x5A, 12345);
  }
  CheckStatus(adxl::AdxlEngine::FreeMem(mem), adxl::SUCCESS, "FreeMem");
  CheckStatus(adxl::AdxlEngine::FreeMem(mem), adxl::PARAM_INVALID, "FreeMem twice");
  adxl::ShareableHandle handle;
  CheckStatus(adxl::AdxlEngine::ExportToShareableHandle(&value, handle), adxl::UNSUPPORTED, "ExportToShareableHandle");
  adxl::MemDesc desc;
  Check(!desc.local_only && desc.reserved[126] == 0U, "MemDesc{} has local_only false");
  adxl::TransferArgs args;
  Check(args.reserved[0] == 0U && sizeof(args) == 128U, "TransferArgs");
  adxl::NotifyDesc notify;
  notify.name = "n";
  notify.notify_msg = "m";
  Check(notify.name == "n" && notify.notify_msg == "m", "NotifyDesc");
  Check(std::string(adxl::OPTION_AUTO_CONNECT) == "AutoConnect" &&
            std::string(adxl::OPTION_LOCAL_COMM_RES) == "adxl.LocalCommRes",
        "option names");
}

// Polls an async request until it is no longer WAITING (at most ~20 s).
adxl::Status PollToEnd(adxl::AdxlEngine &engine, adxl::TransferReq req, adxl::TransferStatus *status) {
  adxl::Status st = adxl::FAILED;
  for (int i = 0; i < 20000; ++i) {
    st = engine.GetTransferStatus(req, *status);
    if (st != adxl::SUCCESS || *status != adxl::TransferStatus::WAITING) {
      break;
    }
    ::usleep(1000);
  }
  return st;
}

}  // namespace

// The exported status names, for values of both APIs and an unknown one.
void CheckStatusNames() {
  struct Named {
    uint32_t value;
    const char *name;
  };
  const Named names[] = {
      {adxl::SUCCESS, "SUCCESS"},
      {adxl::PARAM_INVALID, "PARAM_INVALID"},
      {adxl::TIMEOUT, "TIMEOUT"},
      {adxl::NOT_CONNECTED, "NOT_CONNECTED"},
      {adxl::ALREADY_CONNECTED, "ALREADY_CONNECTED"},
      {adxl::NOTIFY_FAILED, "NOTIFY_FAILED"},
      {adxl::UNSUPPORTED, "UNSUPPORTED"},
      {adxl::FAILED, "FAILED"},
      {adxl::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"},
      {llm_datadist::LLM_SUCCESS, "SUCCESS"},
      {llm_datadist::LLM_FAILED, "LLM_FAILED"},
      {llm_datadist::LLM_PARAM_INVALID, "LLM_PARAM_INVALID"},
      {llm_datadist::LLM_LINK_FAILED, "LLM_LINK_FAILED"},
      {llm_datadist::LLM_WAIT_PROC_TIMEOUT, "LLM_WAIT_PROC_TIMEOUT"},
      {llm_datadist::LLM_OUT_OF_MEMORY, "LLM_OUT_OF_MEMORY"},
      {42U, "unknown status"},
      {0x5010B0FFU, "unknown status"},
  };
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
    const char *got = llmdd_ext::StatusName(names[i].value);
    if (got == nullptr || std::strcmp(got, names[i].name) != 0) {
      Fail("llmdd_ext::StatusName", std::string(names[i].name) + " expected, got " + (got ? got : "null"));
    }
  }
}

int main() {
  CheckAscendString();
  CheckStatics();
  CheckStatusNames();

  // Options map keyed by AscendString, built from the header constant and
  // from a plain string literal (both are documented usages). "4:8" is the
  // documented default buffer pool, so both engines agree.
  std::map<adxl::AscendString, adxl::AscendString> options;
  options[adxl::OPTION_BUFFER_POOL] = "4:8";
  options["adxl.BufferPool"] = "4:8";
  Check(options.size() == 1U, "option map: constant and literal key are the same key");
  Check(options.find(adxl::AscendString("adxl.BufferPool")) != options.end(), "option map lookup");

  // Calls before Initialize fail with FAILED (spec 3.5).
  {
    adxl::AdxlEngine idle;
    adxl::MemDesc desc;
    static uint8_t scratch[64];
    desc.addr = reinterpret_cast<uintptr_t>(scratch);
    desc.len = sizeof(scratch);
    adxl::MemHandle h = nullptr;
    CheckStatus(idle.RegisterMem(desc, adxl::MEM_HOST, h), adxl::FAILED, "RegisterMem before Initialize");
  }

  // Engine A: server on a free loopback port (retry a few ports on a race).
  std::unique_ptr<adxl::AdxlEngine> server;
  std::string server_id;
  for (int attempt = 0; attempt < 5 && !server; ++attempt) {
    int port = FreePort();
    if (port <= 0) {
      continue;
    }
    server_id = "127.0.0.1:" + std::to_string(port);
    std::unique_ptr<adxl::AdxlEngine> engine(new adxl::AdxlEngine());
    adxl::Status st = engine->Initialize(server_id.c_str(), options);
    if (st == adxl::SUCCESS) {
      server.swap(engine);
    } else {
      std::fprintf(stderr, "adxl_client: Initialize(%s) returned %s (%u), retrying\n", server_id.c_str(),
                   llmdd_ext::StatusName(st), static_cast<unsigned>(st));
    }
  }
  if (!server) {
    Fail("server Initialize", "no attempt succeeded");
    return 1;
  }
  const adxl::AscendString server_name(server_id.c_str());

  // Engine B: pure client (no port).
  adxl::AdxlEngine client;
  CheckStatus(client.Initialize("127.0.0.1", {}), adxl::SUCCESS, "client Initialize");

  // Host buffers, registered before Connect.
  const size_t kLen = 1U << 20;
  std::vector<uint8_t> server_buf(kLen, 0);
  std::vector<uint8_t> client_buf(kLen, 0);
  adxl::MemDesc server_desc;
  server_desc.addr = reinterpret_cast<uintptr_t>(server_buf.data());
  server_desc.len = server_buf.size();
  adxl::MemDesc client_desc;
  client_desc.addr = reinterpret_cast<uintptr_t>(client_buf.data());
  client_desc.len = client_buf.size();
  adxl::MemHandle server_handle = nullptr;
  adxl::MemHandle client_handle = nullptr;
  CheckStatus(server->RegisterMem(server_desc, adxl::MEM_HOST, server_handle), adxl::SUCCESS, "server RegisterMem");
  CheckStatus(client.RegisterMem(client_desc, adxl::MEM_HOST, client_handle), adxl::SUCCESS, "client RegisterMem");
  Check(server_handle != nullptr && client_handle != nullptr, "RegisterMem returns a handle");

  adxl::Status st = client.Connect(server_name, 2000);
  CheckStatus(st, adxl::SUCCESS, "Connect");
  if (st != adxl::SUCCESS) {
    client.Finalize();
    server->Finalize();
    std::fprintf(stderr, "adxl_client: %d check(s) failed\n", g_failures);
    return 1;
  }
  CheckStatus(client.Connect(server_name, 2000), adxl::ALREADY_CONNECTED, "second Connect");

  // WRITE: client_buf[0, half) -> server_buf[half, len).
  const size_t half = kLen / 2;
  for (size_t i = 0; i < half; ++i) {
    client_buf[i] = static_cast<uint8_t>((i * 131U + 7U) & 0xFFU);
  }
  std::vector<adxl::TransferOpDesc> write_ops;
  adxl::TransferOpDesc w{reinterpret_cast<uintptr_t>(client_buf.data()),
                         reinterpret_cast<uintptr_t>(server_buf.data() + half), half};
  write_ops.push_back(w);
  CheckStatus(client.TransferSync(server_name, adxl::WRITE, write_ops, 2000), adxl::SUCCESS, "TransferSync WRITE");
  bool write_ok = true;
  for (size_t i = 0; i < half && write_ok; ++i) {
    write_ok = server_buf[half + i] == static_cast<uint8_t>((i * 131U + 7U) & 0xFFU) &&
               client_buf[i] == static_cast<uint8_t>((i * 131U + 7U) & 0xFFU);
  }
  Check(write_ok, "WRITE delivered the bytes (and left the source intact)");

  // READ: server_buf[0, 4096) and [8192, 12288) -> client_buf[half, ...) in one batch.
  for (size_t i = 0; i < 16384; ++i) {
    server_buf[i] = static_cast<uint8_t>((i * 29U + 3U) & 0xFFU);
  }
  std::vector<adxl::TransferOpDesc> read_ops;
  adxl::TransferOpDesc r1{reinterpret_cast<uintptr_t>(client_buf.data() + half),
                          reinterpret_cast<uintptr_t>(server_buf.data()), 4096};
  adxl::TransferOpDesc r2{reinterpret_cast<uintptr_t>(client_buf.data() + half + 4096),
                          reinterpret_cast<uintptr_t>(server_buf.data() + 8192), 4096};
  read_ops.push_back(r1);
  read_ops.push_back(r2);
  CheckStatus(client.TransferSync(server_name, adxl::READ, read_ops), adxl::SUCCESS, "TransferSync READ");
  bool read_ok = true;
  for (size_t i = 0; i < 4096 && read_ok; ++i) {
    read_ok = client_buf[half + i] == static_cast<uint8_t>((i * 29U + 3U) & 0xFFU) &&
              client_buf[half + 4096 + i] == static_cast<uint8_t>(((i + 8192U) * 29U + 3U) & 0xFFU) &&
              server_buf[i] == static_cast<uint8_t>((i * 29U + 3U) & 0xFFU);
  }
  Check(read_ok, "READ delivered the bytes (and left the source intact)");

  // Asynchronous READ of the same ranges into the other half: WAITING, then COMPLETED.
  std::vector<adxl::TransferOpDesc> async_ops;
  for (size_t k = 0; k < read_ops.size(); ++k) {
    adxl::TransferOpDesc d = read_ops[k];
    d.local_addr += 8192;
    async_ops.push_back(d);
  }
  adxl::TransferArgs async_args;
  // The per-request deadline extension (llmdd/extensions.h): generous, so the READ completes.
  llmdd_ext::SetTransferTimeout(async_args, 30000);
  uint32_t deadline_ms = 0;
  Check(llmdd_ext::GetTransferTimeout(async_args, &deadline_ms) && deadline_ms == 30000U, "SetTransferTimeout");
  adxl::TransferReq req = nullptr;
  CheckStatus(client.TransferAsync(server_name, adxl::READ, async_ops, async_args, req), adxl::SUCCESS,
              "TransferAsync READ");
  Check(req != nullptr, "TransferAsync returns a request");
  adxl::TransferStatus status = adxl::TransferStatus::WAITING;
  CheckStatus(PollToEnd(client, req, &status), adxl::SUCCESS, "GetTransferStatus");
  Check(status == adxl::TransferStatus::COMPLETED, "the async READ completed");
  Check(std::memcmp(client_buf.data() + half + 8192, client_buf.data() + half, 8192) == 0,
        "the async READ delivered the bytes");
  CheckStatus(client.GetTransferStatus(req, status), adxl::PARAM_INVALID, "GetTransferStatus after the end");
  CheckStatus(client.GetTransferStatus(nullptr, status), adxl::FAILED, "GetTransferStatus(nullptr)");
  adxl::TransferReq none = nullptr;
  CheckStatus(client.TransferAsync("127.0.0.1:1", adxl::READ, async_ops, async_args, none), adxl::NOT_CONNECTED,
              "TransferAsync to an engine never connected");
  Check(none == nullptr, "no request when refused");

  // Documented status codes.
  CheckStatus(client.TransferSync(server_name, adxl::READ, read_ops, 0), adxl::PARAM_INVALID,
              "TransferSync timeout 0");
  CheckStatus(client.TransferSync(server_name, adxl::WRITE, std::vector<adxl::TransferOpDesc>(), 1000),
              adxl::SUCCESS, "TransferSync empty batch");
  CheckStatus(client.Connect(server_name, 0), adxl::PARAM_INVALID, "Connect timeout 0");
  CheckStatus(client.Disconnect("127.0.0.1:1", 1000), adxl::NOT_CONNECTED, "Disconnect unknown engine");
  CheckStatus(client.DeregisterMem(nullptr), adxl::PARAM_INVALID, "DeregisterMem(nullptr)");
  CheckStatus(client.TransferSync("127.0.0.1:1", adxl::READ, read_ops, 1000), adxl::NOT_CONNECTED,
              "TransferSync to an engine never connected");

  // Notifications: client -> server, read on the server with GetNotifies (appended, then cleared).
  adxl::NotifyDesc notify;
  notify.name = "kv-ready";
  notify.notify_msg = "request 17";
  CheckStatus(client.SendNotify(server_name, notify), adxl::SUCCESS, "SendNotify");
  CheckStatus(client.SendNotify(server_name, notify, 0), adxl::PARAM_INVALID, "SendNotify timeout 0");
  adxl::NotifyDesc too_long;
  too_long.name = std::string(1025, 'n').c_str();
  CheckStatus(client.SendNotify(server_name, too_long, 1000), adxl::PARAM_INVALID, "SendNotify name of 1025");
  CheckStatus(client.SendNotify("127.0.0.1:1", notify, 1000), adxl::NOT_CONNECTED, "SendNotify never connected");
  std::vector<adxl::NotifyDesc> notifies(1);
  CheckStatus(server->GetNotifies(notifies), adxl::SUCCESS, "GetNotifies");
  Check(notifies.size() == 2 && std::string(notifies[1].name.GetString()) == "kv-ready" &&
            std::string(notifies[1].notify_msg.GetString()) == "request 17",
        "GetNotifies appended the notify");
  notifies.clear();
  CheckStatus(server->GetNotifies(notifies), adxl::SUCCESS, "second GetNotifies");
  Check(notifies.empty(), "GetNotifies cleared what it returned");

  CheckStatus(client.Disconnect(server_name, 2000), adxl::SUCCESS, "Disconnect");
  CheckStatus(client.TransferSync(server_name, adxl::READ, read_ops, 1000), adxl::NOT_CONNECTED,
              "TransferSync after Disconnect");
  CheckStatus(client.Disconnect(server_name, 2000), adxl::NOT_CONNECTED, "second Disconnect");

  CheckStatus(client.DeregisterMem(client_handle), adxl::SUCCESS, "client DeregisterMem");
  CheckStatus(server->DeregisterMem(server_handle), adxl::SUCCESS, "server DeregisterMem");
  client.Finalize();
  server->Finalize();

  if (g_failures != 0) {
    std::fprintf(stderr, "adxl_client: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("adxl_client OK\n");
  return 0;
}
