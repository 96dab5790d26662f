// The static AdxlEngine calls (usable before Initialize): GetCapability,
// MallocMem / FreeMem (host memory: page-aligned, huge pages where the host
// has them) and ExportToShareableHandle (UNSUPPORTED: no fabric memory).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "adxl/adxl_engine.h"
#include "common/host_memory.h"
#include "loopback_util.h"

namespace {

int FreePort() { return llmdd::testing::FreeLoopbackPort(); }

TEST(AdxlCapability, AnswersBeforeAnyEngineExists) {
  int32_t value = -7;
  EXPECT_EQ(adxl::AdxlEngine::GetCapability(adxl::AUTO_CONNECT, value), adxl::SUCCESS);
  EXPECT_EQ(value, adxl::FEATURE_SUPPORTED);  // OPTION_AUTO_CONNECT (docs/API.md, "Auto-connect")
  value = -7;
  EXPECT_EQ(adxl::AdxlEngine::GetCapability(adxl::CLIENT_SERVER_COMM, value), adxl::SUCCESS);
  EXPECT_EQ(value, adxl::FEATURE_SUPPORTED);
  // Unknown features: not supported, SUCCESS; negative ones: PARAM_INVALID.
  value = -7;
  EXPECT_EQ(adxl::AdxlEngine::GetCapability(static_cast<adxl::FeatureType>(99), value), adxl::SUCCESS);
  EXPECT_EQ(value, adxl::FEATURE_NOT_SUPPORTED);
  EXPECT_EQ(adxl::AdxlEngine::GetCapability(static_cast<adxl::FeatureType>(-1), value), adxl::PARAM_INVALID);
  EXPECT_EQ(adxl::FEATURE_SUPPORTED, 1);
  EXPECT_EQ(adxl::FEATURE_NOT_SUPPORTED, 0);
  EXPECT_EQ(static_cast<int32_t>(adxl::CLIENT_SERVER_COMM), 1);
}

TEST(AdxlHostMemory, IsPageAlignedWritableAndFreedOnce) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t size : {size_t{1}, size_t{4095}, size_t{65536}, size_t{3} << 20, (size_t{8} << 20) + 5}) {
    SCOPED_TRACE("size " + std::to_string(size));
    void *p = nullptr;
    ASSERT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, size, &p), adxl::SUCCESS);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % page, 0u);
    llmdd::HostAllocation a;
    ASSERT_TRUE(llmdd::FindHostAllocation(p, &a));
    EXPECT_GE(a.mapped, size);
    const size_t unit = a.huge_tlb ? llmdd::DefaultHugePageBytes() : page;
    EXPECT_EQ(a.mapped % unit, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % unit, 0u);
    if (a.huge_tlb) {
      EXPECT_GE(size, llmdd::DefaultHugePageBytes());
    }
    // Zeroed, and every byte usable.
    auto *bytes = static_cast<unsigned char *>(p);
    EXPECT_EQ(bytes[0], 0u);
    EXPECT_EQ(bytes[size - 1], 0u);
    std::memset(p, 0xA5, size);
    EXPECT_EQ(bytes[size - 1], 0xA5u);
    EXPECT_EQ(adxl::AdxlEngine::FreeMem(p), adxl::SUCCESS);
    EXPECT_FALSE(llmdd::FindHostAllocation(p, &a));
    EXPECT_EQ(adxl::AdxlEngine::FreeMem(p), adxl::PARAM_INVALID);  // twice
  }
}

TEST(AdxlHostMemory, RefusesWhatItCannotDo) {
  void *p = reinterpret_cast<void *>(0x1);
  EXPECT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, 0, &p), adxl::PARAM_INVALID);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, 4096, nullptr), adxl::PARAM_INVALID);
  p = reinterpret_cast<void *>(0x1);
  EXPECT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_DEVICE, 4096, &p), adxl::UNSUPPORTED);  // host memory only
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, SIZE_MAX - 10, &p), adxl::RESOURCE_EXHAUSTED);
  EXPECT_EQ(p, nullptr);
  EXPECT_EQ(adxl::AdxlEngine::FreeMem(nullptr), adxl::PARAM_INVALID);
  int not_ours = 0;
  EXPECT_EQ(adxl::AdxlEngine::FreeMem(&not_ours), adxl::PARAM_INVALID);
  adxl::ShareableHandle handle;
  std::vector<char> buf(64);
  EXPECT_EQ(adxl::AdxlEngine::ExportToShareableHandle(buf.data(), handle), adxl::UNSUPPORTED);
}

TEST(AdxlHostMemory, ManyThreadsAllocateAndFreeDistinctBlocks) {
  std::vector<std::thread> threads;
  std::vector<std::vector<void *>> got(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&got, t] {
      for (int i = 0; i < 50; ++i) {
        void *p = nullptr;
        if (adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, 4096 * (1 + i % 3), &p) == adxl::SUCCESS) got[t].push_back(p);
      }
    });
  }
  for (auto &t : threads) t.join();
  std::map<void *, int> seen;
  for (auto &mine : got) {
    EXPECT_EQ(mine.size(), 50u);
    for (void *p : mine) ++seen[p];
  }
  EXPECT_EQ(seen.size(), 200u);
  for (auto &mine : got)
    for (void *p : mine) EXPECT_EQ(adxl::AdxlEngine::FreeMem(p), adxl::SUCCESS);
}

// What MallocMem returns is ordinary registrable memory: a peer reads and writes it.
TEST(AdxlHostMemory, RegisteredOnBothSidesItCarriesTransfers) {
  const size_t kLen = 4 << 20;
  void *server_mem = nullptr, *client_mem = nullptr;
  ASSERT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, kLen, &server_mem), adxl::SUCCESS);
  ASSERT_EQ(adxl::AdxlEngine::MallocMem(adxl::MEM_HOST, kLen, &client_mem), adxl::SUCCESS);
  auto *s = static_cast<unsigned char *>(server_mem);
  auto *c = static_cast<unsigned char *>(client_mem);
  for (size_t i = 0; i < kLen; ++i) s[i] = static_cast<unsigned char>(i * 13 + i / 4099);
  {
    adxl::AdxlEngine server, client;
    const std::string id = "127.0.0.1:" + std::to_string(FreePort());
    ASSERT_EQ(server.Initialize(id.c_str(), {}), adxl::SUCCESS);
    ASSERT_EQ(client.Initialize("127.0.0.1", {}), adxl::SUCCESS);
    adxl::MemDesc sd, cd;
    sd.addr = reinterpret_cast<uintptr_t>(server_mem);
    sd.len = kLen;
    cd.addr = reinterpret_cast<uintptr_t>(client_mem);
    cd.len = kLen;
    adxl::MemHandle sh = nullptr, ch = nullptr;
    ASSERT_EQ(server.RegisterMem(sd, adxl::MEM_HOST, sh), adxl::SUCCESS);
    ASSERT_EQ(client.RegisterMem(cd, adxl::MEM_HOST, ch), adxl::SUCCESS);
    ASSERT_EQ(client.Connect(id.c_str(), 2000), adxl::SUCCESS);
    std::vector<adxl::TransferOpDesc> read{{cd.addr, sd.addr, kLen}};
    ASSERT_EQ(client.TransferSync(id.c_str(), adxl::READ, read, 10000), adxl::SUCCESS);
    EXPECT_EQ(std::memcmp(c, s, kLen), 0);
    for (size_t i = 0; i < 4096; ++i) c[i] = static_cast<unsigned char>(~i);
    std::vector<adxl::TransferOpDesc> write{{cd.addr, sd.addr + kLen - 4096, 4096}};
    ASSERT_EQ(client.TransferSync(id.c_str(), adxl::WRITE, write, 10000), adxl::SUCCESS);
    EXPECT_EQ(std::memcmp(c, s + kLen - 4096, 4096), 0);
    EXPECT_EQ(client.Disconnect(id.c_str(), 2000), adxl::SUCCESS);
    EXPECT_EQ(client.DeregisterMem(ch), adxl::SUCCESS);
    EXPECT_EQ(server.DeregisterMem(sh), adxl::SUCCESS);
    client.Finalize();
    server.Finalize();
  }
  EXPECT_EQ(adxl::AdxlEngine::FreeMem(server_mem), adxl::SUCCESS);
  EXPECT_EQ(adxl::AdxlEngine::FreeMem(client_mem), adxl::SUCCESS);
}

}  // namespace
