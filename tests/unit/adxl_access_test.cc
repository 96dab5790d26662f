// Remote access rights through the public ADXL API and llmdd/extensions.h:
// read-only memory refuses WRITE, write-only memory refuses READ, untouched.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "adxl/adxl_engine.h"
#include "llmdd/extensions.h"

namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(AdxlAccess, ReadOnlyAndWriteOnlyRegistrationsAreEnforcedByTheServer) {
  adxl::AdxlEngine server, client;
  std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {}), adxl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
  std::vector<char> ro(256, 'R'), wo(256, 'W'), local(256, 'L');
  adxl::MemDesc ro_desc{};
  ro_desc.addr = reinterpret_cast<uintptr_t>(ro.data());
  ro_desc.len = ro.size();
  llmdd_ext::SetRemoteAccess(ro_desc, llmdd_ext::kRemoteReadOnly);
  adxl::MemDesc wo_desc{};
  wo_desc.addr = reinterpret_cast<uintptr_t>(wo.data());
  wo_desc.len = wo.size();
  llmdd_ext::SetRemoteAccess(wo_desc, llmdd_ext::kRemoteWriteOnly);
  adxl::MemHandle h1 = nullptr, h2 = nullptr;
  ASSERT_EQ(server.RegisterMem(ro_desc, adxl::MEM_HOST, h1), adxl::SUCCESS);
  ASSERT_EQ(server.RegisterMem(wo_desc, adxl::MEM_DEVICE, h2), adxl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), adxl::SUCCESS);

  std::vector<adxl::TransferOpDesc> on_ro{{reinterpret_cast<uintptr_t>(local.data()), ro_desc.addr, 256}};
  std::vector<adxl::TransferOpDesc> on_wo{{reinterpret_cast<uintptr_t>(local.data()), wo_desc.addr, 256}};
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::WRITE, on_ro, 2000), adxl::PARAM_INVALID);
  EXPECT_EQ(ro, std::vector<char>(256, 'R'));
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::READ, on_wo, 2000), adxl::PARAM_INVALID);
  EXPECT_EQ(local, std::vector<char>(256, 'L'));
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::READ, on_ro, 2000), adxl::SUCCESS);
  EXPECT_EQ(local, std::vector<char>(256, 'R'));
  EXPECT_EQ(client.TransferSync(id.c_str(), adxl::WRITE, on_wo, 2000), adxl::SUCCESS);
  EXPECT_EQ(wo, std::vector<char>(256, 'R'));
  client.Finalize();
  server.Finalize();
}

}  // namespace
