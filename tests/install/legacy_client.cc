// Install test client built against the *first* headers (tests/install/legacy:
// MemDesc with reserved[128], llmdd/extensions.h writing its marker into bytes
// 0..3) and run against the installed library, which reads byte 0 as CANN's
// newest MemDesc::local_only. The old marker must still mean "read-only for
// peers", never "local only"; a MemDesc without a marker stays read-write.
// Prints "adxl_legacy_client OK" and exits 0 only if every check matched.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "llmdd/extensions.h"

namespace {

int g_failures = 0;

void CheckStatus(adxl::Status got, adxl::Status want, const char *what) {
  if (got != want) {
    ++g_failures;
    std::fprintf(stderr, "adxl_legacy_client: FAILED: %s: status %u, expected %u\n", what,
                 static_cast<unsigned>(got), static_cast<unsigned>(want));
  }
}

void Check(bool ok, const char *what) {
  if (!ok) {
    ++g_failures;
    std::fprintf(stderr, "adxl_legacy_client: FAILED: %s\n", what);
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
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

}  // namespace

// The layout this program is built with: the original one.
static_assert(sizeof(adxl::MemDesc::reserved) == 128U, "built against the first headers");

int main() {
  adxl::AdxlEngine server;
  adxl::AdxlEngine client;
  std::string id;
  adxl::Status st = adxl::FAILED;
  for (int attempt = 0; attempt < 5 && st != adxl::SUCCESS; ++attempt) {
    id = "127.0.0.1:" + std::to_string(FreePort());
    st = server.Initialize(id.c_str(), std::map<adxl::AscendString, adxl::AscendString>());
  }
  CheckStatus(st, adxl::SUCCESS, "server Initialize");
  CheckStatus(client.Initialize("127.0.0.1", std::map<adxl::AscendString, adxl::AscendString>()), adxl::SUCCESS,
              "client Initialize");
  std::vector<char> read_only(4096, 'R');
  std::vector<char> plain(4096, 'P');
  std::vector<char> local(4096, 'L');
  adxl::MemDesc ro_desc;
  ro_desc.addr = reinterpret_cast<uintptr_t>(read_only.data());
  ro_desc.len = read_only.size();
  llmdd_ext::SetRemoteAccess(ro_desc, llmdd_ext::kRemoteReadOnly);
  Check(ro_desc.reserved[0] == 'L', "the first extensions.h writes its marker at byte 0");
  adxl::MemDesc plain_desc;
  plain_desc.addr = reinterpret_cast<uintptr_t>(plain.data());
  plain_desc.len = plain.size();
  adxl::MemHandle h1 = nullptr;
  adxl::MemHandle h2 = nullptr;
  CheckStatus(server.RegisterMem(ro_desc, adxl::MEM_HOST, h1), adxl::SUCCESS, "RegisterMem (old marker)");
  CheckStatus(server.RegisterMem(plain_desc, adxl::MEM_HOST, h2), adxl::SUCCESS, "RegisterMem (no marker)");
  CheckStatus(client.Connect(id.c_str(), 2000), adxl::SUCCESS, "Connect");
  std::vector<adxl::TransferOpDesc> on_ro(1);
  on_ro[0].local_addr = reinterpret_cast<uintptr_t>(local.data());
  on_ro[0].remote_addr = ro_desc.addr;
  on_ro[0].len = 4096;
  std::vector<adxl::TransferOpDesc> on_plain(on_ro);
  on_plain[0].remote_addr = plain_desc.addr;
  // Read-only, not local only: READ served, WRITE refused.
  CheckStatus(client.TransferSync(id.c_str(), adxl::READ, on_ro, 2000), adxl::SUCCESS, "READ of read-only memory");
  Check(local == read_only, "READ delivered the bytes");
  local.assign(4096, 'L');
  CheckStatus(client.TransferSync(id.c_str(), adxl::WRITE, on_ro, 2000), adxl::PARAM_INVALID,
              "WRITE into read-only memory");
  Check(read_only == std::vector<char>(4096, 'R'), "read-only memory unchanged");
  // No marker: read-write, as in CANN.
  CheckStatus(client.TransferSync(id.c_str(), adxl::WRITE, on_plain, 2000), adxl::SUCCESS, "WRITE (no marker)");
  Check(plain == local, "WRITE delivered the bytes");
  CheckStatus(client.Disconnect(id.c_str(), 2000), adxl::SUCCESS, "Disconnect");
  CheckStatus(server.DeregisterMem(h1), adxl::SUCCESS, "DeregisterMem");
  CheckStatus(server.DeregisterMem(h2), adxl::SUCCESS, "DeregisterMem");
  client.Finalize();
  server.Finalize();
  if (g_failures != 0) {
    std::fprintf(stderr, "adxl_legacy_client: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("adxl_legacy_client OK\n");
  return 0;
}
