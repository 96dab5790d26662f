// ADXL asynchronous transfers and notifications: TransferAsync returns at
// once with a request, GetTransferStatus polls it; SendNotify tells the peer
// that data is there, GetNotifies collects what arrived.
//
//   server (child process): Initialize("127.0.0.1:PORT"), RegisterMem, then serves;
//                           at the end collects the client's notify with
//                           GetNotifies and checks the bytes it announced.
//   client (this process):  Connect, then four READs of a quarter each with
//                           TransferAsync, polled until every one is COMPLETED;
//                           then one WRITE the same way, followed by a
//                           SendNotify {"kv_ready", "write of N bytes done"}.
//
// Rules (docs/API.md, "Asynchronous transfers"):
//  - GetTransferStatus returns SUCCESS with WAITING while the request runs,
//    SUCCESS with COMPLETED once every byte arrived, FAILED with FAILED if it
//    failed (the reason is in the log). COMPLETED and FAILED end the request:
//    query each request until it reaches one of them, then never again.
//  - A request holds a place until its end was read: at
//    llmdd.MaxRequestsInFlight (1024) held requests TransferAsync returns
//    RESOURCE_EXHAUSTED. Read the status of what you submit.
//  - The buffers must stay alive until the request ended.
//  - A notify goes from a client to an engine it connected to (docs/API.md,
//    "Notifications"). SendNotify returns SUCCESS once the receiver stored it,
//    so a GetNotifies there afterwards sees it; sending it after the WRITE
//    completed means the data is in place when the receiver reads the notify.
//    GetNotifies appends and forgets: each notify is returned once.
//
// Run: build/examples/adxl_async     (exit status 0 = every byte arrived)
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "example_peer.h"
#include "llmdd/extensions.h"  // llmdd_ext::StatusName

namespace {

const size_t kBytes = 1024 * 1024;
int g_port = 0;  // chosen before the fork; the server child inherits it

int Server(int in_fd, int out_fd) {
  adxl::AdxlEngine engine;
  const std::string id = "127.0.0.1:" + std::to_string(g_port);
  std::map<adxl::AscendString, adxl::AscendString> options;  // none needed
  if (engine.Initialize(id.c_str(), options) != adxl::SUCCESS) return 1;
  std::vector<unsigned char> buffer(2 * kBytes);  // first half read by the client, second half written
  for (size_t i = 0; i < kBytes; ++i) buffer[i] = example::Pattern(3, i);
  adxl::MemDesc mem;  // not an aggregate in C++11: set the fields
  mem.addr = reinterpret_cast<uintptr_t>(buffer.data());
  mem.len = buffer.size();
  adxl::MemHandle handle = nullptr;
  if (engine.RegisterMem(mem, adxl::MEM_HOST, handle) != adxl::SUCCESS) return 1;
  char ready[64];
  snprintf(ready, sizeof(ready), "READY %" PRIxPTR, mem.addr);
  example::SendLine(out_fd, ready);

  std::string line;
  int rc = 1;
  if (example::ReadLine(in_fd, &line) && line == "CHECK") {
    // The notify the client sent after its WRITE: it says the data is there.
    std::vector<adxl::NotifyDesc> notifies;
    const adxl::Status st = engine.GetNotifies(notifies);
    if (st != adxl::SUCCESS) {
      fprintf(stderr, "adxl_async server: GetNotifies failed with %s (%u)\n", llmdd_ext::StatusName(st), st);
    } else if (notifies.size() != 1 || std::string(notifies[0].name.GetString()) != "kv_ready") {
      fprintf(stderr, "adxl_async server: expected one notify \"kv_ready\", got %zu\n", notifies.size());
    } else {
      printf("server: notify %s: %s\n", notifies[0].name.GetString(), notifies[0].notify_msg.GetString());
      rc = 0;
      for (size_t i = 0; i < kBytes; ++i)
        if (buffer[kBytes + i] != example::Pattern(4, i)) rc = 1;
    }
    example::SendLine(out_fd, rc == 0 ? "OK" : "BAD");
  }
  example::ReadLine(in_fd, &line);  // end of file: the client is done
  engine.DeregisterMem(handle);
  engine.Finalize();
  return rc;
}

// Polls every request until it ended; true if all COMPLETED.
bool WaitAll(adxl::AdxlEngine &engine, std::vector<adxl::TransferReq> requests) {
  bool all_completed = true;
  while (!requests.empty()) {
    for (size_t i = 0; i < requests.size();) {
      adxl::TransferStatus status = adxl::TransferStatus::WAITING;
      const adxl::Status rc = engine.GetTransferStatus(requests[i], status);
      if (rc == adxl::SUCCESS && status == adxl::TransferStatus::WAITING) {
        ++i;  // still running: look again later
        continue;
      }
      // Ended (COMPLETED, or FAILED: rc is FAILED too). The request is gone now.
      if (status != adxl::TransferStatus::COMPLETED) {
        fprintf(stderr, "adxl_async: a request ended %s (call returned %s)\n",
                status == adxl::TransferStatus::TIMEOUT ? "TIMEOUT" : "FAILED", llmdd_ext::StatusName(rc));
        all_completed = false;
      }
      requests.erase(requests.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (!requests.empty()) usleep(100);  // a real program does other work here
  }
  return all_completed;
}

int Client(uintptr_t remote) {
  adxl::AdxlEngine engine;
  std::map<adxl::AscendString, adxl::AscendString> options;
  if (engine.Initialize("127.0.0.1", options) != adxl::SUCCESS) return 1;
  const std::string server = "127.0.0.1:" + std::to_string(g_port);
  if (engine.Connect(server.c_str(), 5000) != adxl::SUCCESS) return 1;

  std::vector<unsigned char> local(kBytes, 0);
  const uintptr_t base = reinterpret_cast<uintptr_t>(local.data());
  const size_t quarter = kBytes / 4;

  // Four READs in flight at once, one quarter each.
  std::vector<adxl::TransferReq> requests;
  for (size_t q = 0; q < 4; ++q) {
    std::vector<adxl::TransferOpDesc> descs = {{base + q * quarter, remote + q * quarter, quarter}};
    adxl::TransferArgs args;  // reserved bytes only
    adxl::TransferReq request = nullptr;
    const adxl::Status rc = engine.TransferAsync(server.c_str(), adxl::READ, descs, args, request);
    if (rc != adxl::SUCCESS) {
      fprintf(stderr, "adxl_async: TransferAsync READ failed with %s (%u)\n", llmdd_ext::StatusName(rc), rc);
      WaitAll(engine, requests);  // end what was submitted before leaving
      return 1;
    }
    requests.push_back(request);
  }
  if (!WaitAll(engine, requests)) return 1;
  for (size_t i = 0; i < kBytes; ++i) {
    if (local[i] != example::Pattern(3, i)) {
      fprintf(stderr, "adxl_async: READ byte %zu is wrong\n", i);
      return 1;
    }
  }
  printf("4 asynchronous READs of %zu bytes: every byte is right\n", quarter);
  fflush(stdout);  // before the server prints its line

  // One asynchronous WRITE into the server's second half.
  for (size_t i = 0; i < kBytes; ++i) local[i] = example::Pattern(4, i);
  std::vector<adxl::TransferOpDesc> descs = {{base, remote + kBytes, kBytes}};
  adxl::TransferReq request = nullptr;
  if (engine.TransferAsync(server.c_str(), adxl::WRITE, descs, adxl::TransferArgs(), request) != adxl::SUCCESS)
    return 1;
  if (!WaitAll(engine, std::vector<adxl::TransferReq>(1, request))) return 1;

  // Tell the server the data is there. name and notify_msg: at most 1024 bytes each.
  adxl::NotifyDesc notify;
  notify.name = "kv_ready";
  const std::string msg = "write of " + std::to_string(kBytes) + " bytes done";
  notify.notify_msg = msg.c_str();  // AscendString takes a const char *, not a std::string
  const adxl::Status st = engine.SendNotify(server.c_str(), notify, 5000);
  if (st != adxl::SUCCESS) {
    fprintf(stderr, "adxl_async: SendNotify failed with %s (%u)\n", llmdd_ext::StatusName(st), st);
    return 1;
  }

  engine.Disconnect(server.c_str(), 5000);
  engine.Finalize();
  return 0;
}

}  // namespace

int main() {
  g_port = example::FreePort();
  example::Peer server;
  if (g_port <= 0 || !example::StartPeer(Server, &server)) return 1;
  std::string line;
  uintptr_t remote = 0;
  int rc = 1;
  if (example::ReadLine(server.from, &line) && sscanf(line.c_str(), "READY %" SCNxPTR, &remote) == 1) {
    rc = Client(remote);
    if (rc == 0) {
      example::SendLine(server.to, "CHECK");
      rc = example::ReadLine(server.from, &line) && line == "OK" ? 0 : 1;
      printf("1 asynchronous WRITE of %zu bytes and a notify: %s\n", kBytes,
             rc == 0 ? "the server got the notify and found every byte right"
                     : "the server found no notify or wrong bytes");
    }
  }
  const int server_rc = example::FinishPeer(&server);
  printf("adxl_async: %s\n", rc == 0 && server_rc == 0 ? "OK" : "FAILED");
  return rc == 0 && server_rc == 0 ? 0 : 1;
}
