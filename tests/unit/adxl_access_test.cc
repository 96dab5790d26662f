// Remote access rights through the public ADXL API and llmdd/extensions.h:
// read-only memory refuses WRITE, write-only memory refuses READ, untouched.
// MemDesc::local_only memory refuses both; the extension's marker lives away
// from local_only's byte, and the first version's marker (at that byte) is
// still read as access rights, never as local_only.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "adxl/adxl_engine.h"
#include "hixl/hixl.h"
#include "llmdd/extensions.h"
#include "loopback_util.h"

namespace {

int FreePort() { return llmdd::testing::FreeLoopbackPort(); }

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

// The same marker on hixl::MemDesc (the same layout as adxl's), through
// hixl::Hixl: the overloads of SetRemoteAccess / GetRemoteAccess.
TEST(AdxlAccess, HixlMemDescCarriesTheSameRights) {
  hixl::MemDesc probe;
  llmdd_ext::SetRemoteAccess(probe, llmdd_ext::kRemoteWriteOnly);
  EXPECT_FALSE(probe.local_only);
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  ASSERT_TRUE(llmdd_ext::GetRemoteAccess(probe, &access));
  EXPECT_EQ(access, llmdd_ext::kRemoteWriteOnly);

  hixl::Hixl server, client;
  std::string id = "127.0.0.1:" + std::to_string(FreePort());
  ASSERT_EQ(server.Initialize(id.c_str(), {}), hixl::SUCCESS);
  ASSERT_EQ(client.Initialize("127.0.0.1", {}), hixl::SUCCESS);
  std::vector<char> ro(256, 'R'), local(256, 'L');
  hixl::MemDesc ro_desc;
  ro_desc.addr = reinterpret_cast<uintptr_t>(ro.data());
  ro_desc.len = ro.size();
  llmdd_ext::SetRemoteAccess(ro_desc, llmdd_ext::kRemoteReadOnly);
  hixl::MemHandle handle = nullptr;
  ASSERT_EQ(server.RegisterMem(ro_desc, hixl::MEM_HOST, handle), hixl::SUCCESS);
  ASSERT_EQ(client.Connect(id.c_str(), 2000), hixl::SUCCESS);
  std::vector<hixl::TransferOpDesc> descs{{reinterpret_cast<uintptr_t>(local.data()), ro_desc.addr, 256}};
  EXPECT_EQ(client.TransferSync(id.c_str(), hixl::WRITE, descs, 2000), hixl::PARAM_INVALID);
  EXPECT_EQ(ro, std::vector<char>(256, 'R'));
  EXPECT_EQ(client.TransferSync(id.c_str(), hixl::READ, descs, 2000), hixl::SUCCESS);
  EXPECT_EQ(local, std::vector<char>(256, 'R'));
  client.Finalize();
  server.Finalize();
}

struct Pair {
  adxl::AdxlEngine server, client;
  std::string id;
  explicit Pair(const char *transport) {
    id = "127.0.0.1:" + std::to_string(FreePort());
    std::map<adxl::AscendString, adxl::AscendString> options;
    options["llmdd.Transport"] = transport;
    EXPECT_EQ(server.Initialize(id.c_str(), options), adxl::SUCCESS);
    EXPECT_EQ(client.Initialize("127.0.0.1", options), adxl::SUCCESS);
  }
  ~Pair() {
    client.Finalize();
    server.Finalize();
  }
  adxl::Status Xfer(adxl::TransferOp op, std::vector<char> &local, uintptr_t remote, size_t len) {
    std::vector<adxl::TransferOpDesc> descs{{reinterpret_cast<uintptr_t>(local.data()), remote, len}};
    return client.TransferSync(id.c_str(), op, descs, 2000);
  }
};

adxl::MemDesc Desc(std::vector<char> &buf) {
  adxl::MemDesc desc;
  desc.addr = reinterpret_cast<uintptr_t>(buf.data());
  desc.len = buf.size();
  return desc;
}

TEST(AdxlAccess, TheLayoutIsCannsAndTheMarkerStaysOffLocalOnly) {
  EXPECT_EQ(sizeof(adxl::MemDesc), sizeof(uintptr_t) + sizeof(size_t) + 128);
  EXPECT_EQ(offsetof(adxl::MemDesc, local_only), sizeof(uintptr_t) + sizeof(size_t));
  EXPECT_EQ(offsetof(adxl::MemDesc, reserved), offsetof(adxl::MemDesc, local_only) + 1);
  adxl::MemDesc desc;
  EXPECT_FALSE(desc.local_only);
  llmdd_ext::SetRemoteAccess(desc, llmdd_ext::kRemoteReadOnly);
  EXPECT_FALSE(desc.local_only);
  const uint8_t *area = reinterpret_cast<const uint8_t *>(&desc) + offsetof(adxl::MemDesc, local_only);
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(area + 124), 3), "LDA");
  EXPECT_EQ(area[127], llmdd_ext::kRemoteReadOnly);
  for (size_t i = 0; i < 124; ++i) ASSERT_EQ(area[i], 0u) << "byte " << i;
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  EXPECT_TRUE(llmdd_ext::GetRemoteAccess(desc, &access));
  EXPECT_EQ(access, llmdd_ext::kRemoteReadOnly);
  llm_datadist::RegisterCfg cfg;
  llmdd_ext::SetRemoteAccess(cfg, llmdd_ext::kRemoteWriteOnly);
  EXPECT_EQ(cfg.reserved[0], 0u);
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(cfg.reserved + 124), 3), "LDA");
  EXPECT_TRUE(llmdd_ext::GetRemoteAccess(cfg, &access));
  EXPECT_EQ(access, llmdd_ext::kRemoteWriteOnly);
}

class AdxlLocalOnly : public ::testing::TestWithParam<const char *> {};

TEST_P(AdxlLocalOnly, PeersCanNeitherReadNorWriteIt) {
  Pair p(GetParam());
  std::vector<char> hidden(4096, 'H'), open(4096, 'O'), local(4096, 'L');
  adxl::MemDesc hidden_desc = Desc(hidden);
  hidden_desc.local_only = true;
  // Access rights do not make it reachable.
  llmdd_ext::SetRemoteAccess(hidden_desc, llmdd_ext::kRemoteReadWrite);
  adxl::MemHandle h1 = nullptr, h2 = nullptr;
  ASSERT_EQ(p.server.RegisterMem(hidden_desc, adxl::MEM_HOST, h1), adxl::SUCCESS);
  ASSERT_NE(h1, nullptr);
  ASSERT_EQ(p.server.RegisterMem(Desc(open), adxl::MEM_HOST, h2), adxl::SUCCESS);
  ASSERT_EQ(p.client.Connect(p.id.c_str(), 2000), adxl::SUCCESS);
  const uintptr_t h = reinterpret_cast<uintptr_t>(hidden.data());
  EXPECT_EQ(p.Xfer(adxl::READ, local, h, 8), adxl::PARAM_INVALID);   // small: the one-sided path on one host
  EXPECT_EQ(p.Xfer(adxl::READ, local, h, 4096), adxl::PARAM_INVALID);
  EXPECT_EQ(local, std::vector<char>(4096, 'L'));
  EXPECT_EQ(p.Xfer(adxl::WRITE, local, h + 100, 16), adxl::PARAM_INVALID);
  EXPECT_EQ(hidden, std::vector<char>(4096, 'H'));
  // Registered memory beside it is served as usual.
  EXPECT_EQ(p.Xfer(adxl::READ, local, reinterpret_cast<uintptr_t>(open.data()), 4096), adxl::SUCCESS);
  EXPECT_EQ(local, std::vector<char>(4096, 'O'));
  EXPECT_EQ(p.server.DeregisterMem(h1), adxl::SUCCESS);
  EXPECT_EQ(p.server.DeregisterMem(h2), adxl::SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(Transport, AdxlLocalOnly, ::testing::Values("tcp", "auto"));

// A program built with the first llmdd/extensions.h wrote "LDA" and the value
// into bytes 0..3 of the original reserved[128]: byte 0 is local_only now.
TEST(AdxlAccess, TheFirstVersionsMarkerIsStillReadAsAccessRightsNotAsLocalOnly) {
  Pair p("tcp");
  std::vector<char> legacy_ro(256, 'R'), plain(256, 'P'), local(256, 'L');
  adxl::MemDesc desc = Desc(legacy_ro);
  uint8_t *area = reinterpret_cast<uint8_t *>(&desc) + offsetof(adxl::MemDesc, local_only);
  const uint8_t old_marker[4] = {'L', 'D', 'A', llmdd_ext::kRemoteReadOnly};
  std::memcpy(area, old_marker, sizeof(old_marker));
  llmdd_ext::RemoteAccess access = llmdd_ext::kRemoteReadWrite;
  EXPECT_TRUE(llmdd_ext::GetRemoteAccess(desc, &access));
  EXPECT_EQ(access, llmdd_ext::kRemoteReadOnly);
  adxl::MemHandle h1 = nullptr, h2 = nullptr;
  ASSERT_EQ(p.server.RegisterMem(desc, adxl::MEM_HOST, h1), adxl::SUCCESS);
  ASSERT_EQ(p.server.RegisterMem(Desc(plain), adxl::MEM_HOST, h2), adxl::SUCCESS);
  ASSERT_EQ(p.client.Connect(p.id.c_str(), 2000), adxl::SUCCESS);
  // Read-only: READ is served (so it is not local only), WRITE refused.
  EXPECT_EQ(p.Xfer(adxl::READ, local, desc.addr, 256), adxl::SUCCESS);
  EXPECT_EQ(local, std::vector<char>(256, 'R'));
  local.assign(256, 'L');
  EXPECT_EQ(p.Xfer(adxl::WRITE, local, desc.addr, 256), adxl::PARAM_INVALID);
  EXPECT_EQ(legacy_ro, std::vector<char>(256, 'R'));
  // A MemDesc without any marker is read-write for peers, as in CANN.
  EXPECT_EQ(p.Xfer(adxl::WRITE, local, reinterpret_cast<uintptr_t>(plain.data()), 256), adxl::SUCCESS);
  EXPECT_EQ(plain, std::vector<char>(256, 'L'));
}

}  // namespace
