// ADXL client/server: one process listens and registers a buffer, the other
// connects and moves bytes both ways with TransferSync.
//
//   server (child process)                client (this process)
//   Initialize("127.0.0.1:PORT")          Initialize("127.0.0.1")  (no port: client only)
//   RegisterMem(buffer)                   RegisterMem(local buffers)  (optional for local memory)
//   -- tells the client its buffer address (ADXL has no discovery) -->
//                                         Connect("127.0.0.1:PORT")
//                                         TransferSync READ   remote -> local, checks the bytes
//                                         TransferSync WRITE  local -> remote
//   <-- "CHECK": the server checks the bytes the WRITE put there --
//                                         Disconnect, DeregisterMem, Finalize
//   DeregisterMem, Finalize
//
// Build: part of the project's build (examples/CMakeLists.txt), or alone:
//   g++ -std=c++11 adxl_client_server.cc $(pkg-config --cflags --libs llm_datadist)
// Run:   build/examples/adxl_client_server     (exit status 0 = every byte arrived)
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "example_peer.h"
#include "llmdd/extensions.h"  // llmdd_ext::StatusName

namespace {

const size_t kBytes = 64 * 1024;
int g_port = 0;  // chosen before the fork; the server child inherits it

// Options are a map of AscendString to AscendString. A std::string value must
// be passed as .c_str(): AscendString has no constructor from std::string.
std::map<adxl::AscendString, adxl::AscendString> Options() {
  std::map<adxl::AscendString, adxl::AscendString> options;
  std::string lanes = "2";
  options["llmdd.TcpConnections"] = lanes.c_str();  // an extension option (docs/API.md); CANN ignores unknown keys
  return options;
}

int Server(int in_fd, int out_fd) {
  adxl::AdxlEngine engine;
  const std::string id = "127.0.0.1:" + std::to_string(g_port);  // "ip:port": listen on it
  if (engine.Initialize(id.c_str(), Options()) != adxl::SUCCESS) return 1;

  std::vector<unsigned char> buffer(kBytes);
  for (size_t i = 0; i < kBytes; ++i) buffer[i] = example::Pattern(1, i);

  // MemDesc is not an aggregate in C++11 (its members have default member
  // initializers), so `adxl::MemDesc mem{addr, len};` does not compile there:
  // declare it and set the fields.
  adxl::MemDesc mem;
  mem.addr = reinterpret_cast<uintptr_t>(buffer.data());
  mem.len = buffer.size();
  adxl::MemHandle handle = nullptr;
  if (engine.RegisterMem(mem, adxl::MEM_HOST, handle) != adxl::SUCCESS) return 1;

  char ready[64];
  snprintf(ready, sizeof(ready), "READY %" PRIxPTR, mem.addr);
  example::SendLine(out_fd, ready);

  // The server makes no transfer calls: its engine serves the client.
  std::string line;
  int rc = 1;
  if (example::ReadLine(in_fd, &line) && line == "CHECK") {
    // The client wrote Pattern(2) into the second half.
    rc = 0;
    for (size_t i = kBytes / 2; i < kBytes; ++i)
      if (buffer[i] != example::Pattern(2, i - kBytes / 2)) rc = 1;
    example::SendLine(out_fd, rc == 0 ? "OK" : "BAD");
  }
  example::ReadLine(in_fd, &line);  // end of file: the client has disconnected
  engine.DeregisterMem(handle);
  engine.Finalize();
  return rc;
}

bool Ok(adxl::Status status, const char *what) {
  if (status == adxl::SUCCESS) return true;
  // StatusName: "PARAM_INVALID" for 103900 (docs/TROUBLESHOOTING.md lists the causes of each).
  fprintf(stderr, "adxl_client_server: %s failed with %s (%u)\n", what, llmdd_ext::StatusName(status), status);
  return false;
}

int Client(uintptr_t remote) {
  adxl::AdxlEngine engine;
  // "ip" without a port: a client-only engine (it listens nowhere).
  if (!Ok(engine.Initialize("127.0.0.1", Options()), "Initialize")) return 1;

  // Local memory need not be registered; registering it is allowed (CANN
  // needs it for device memory) and costs nothing here.
  std::vector<unsigned char> local(kBytes, 0);
  adxl::MemDesc mem;
  mem.addr = reinterpret_cast<uintptr_t>(local.data());
  mem.len = local.size();
  adxl::MemHandle handle = nullptr;
  if (!Ok(engine.RegisterMem(mem, adxl::MEM_HOST, handle), "RegisterMem")) return 1;

  const std::string server = "127.0.0.1:" + std::to_string(g_port);
  if (!Ok(engine.Connect(server.c_str(), 5000), "Connect")) return 1;

  // READ: remote -> local. TransferOpDesc is an aggregate:
  // {local_addr, remote_addr, len}. The remote range must lie inside memory
  // the server registered, else PARAM_INVALID and nothing moves.
  std::vector<adxl::TransferOpDesc> read = {{mem.addr, remote, kBytes}};
  if (!Ok(engine.TransferSync(server.c_str(), adxl::READ, read, 5000), "TransferSync READ")) return 1;
  for (size_t i = 0; i < kBytes; ++i) {
    if (local[i] != example::Pattern(1, i)) {
      fprintf(stderr, "adxl_client_server: READ byte %zu is wrong\n", i);
      return 1;
    }
  }
  printf("READ  %zu bytes from the server: every byte is right\n", kBytes);

  // WRITE: local -> remote, into the server's second half, as two
  // descriptors (a batch may hold many; they travel together).
  for (size_t i = 0; i < kBytes / 2; ++i) local[i] = example::Pattern(2, i);
  const size_t quarter = kBytes / 4;
  std::vector<adxl::TransferOpDesc> write = {{mem.addr, remote + kBytes / 2, quarter},
                                             {mem.addr + quarter, remote + kBytes / 2 + quarter, quarter}};
  if (!Ok(engine.TransferSync(server.c_str(), adxl::WRITE, write, 5000), "TransferSync WRITE")) return 1;

  if (!Ok(engine.Disconnect(server.c_str(), 5000), "Disconnect")) return 1;
  engine.DeregisterMem(handle);
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
      printf("WRITE %zu bytes to the server: %s\n", kBytes / 2,
             rc == 0 ? "the server found every byte right" : "the server found wrong bytes");
    }
  }
  const int server_rc = example::FinishPeer(&server);
  if (rc == 0 && server_rc == 0) {
    printf("adxl_client_server: OK\n");
    return 0;
  }
  printf("adxl_client_server: FAILED (client %d, server %d)\n", rc, server_rc);
  return 1;
}
