// Multi-process ADXL error-path tests: every status code of spec 3.2/3.5 where the
// contract says it must be produced, with the exact code, and for rejected
// transfers proof (through the peer's CHECK command and the local buffer) that no
// byte was touched on either side.
#define ITEST_USE_GTEST
#include "process_util.h"

#include "llmdd/extensions.h"

namespace itest {
namespace {

constexpr int32_t kTimeoutMs = 10000;

class ErrorsTest : public AdxlFixture {};

// Error paths that involve the data path run once per transport ("tcp", "shm").
class TransportErrorsTest : public AdxlFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override { UseTransport(GetParam()); }
};

adxl::MemDesc Desc(uintptr_t addr, size_t len) {
  adxl::MemDesc d{};
  d.addr = addr;
  d.len = len;
  return d;
}

// ---------------------------------------------------------------------------------
// Initialize
// ---------------------------------------------------------------------------------
TEST_F(ErrorsTest, InitializeRejectsMalformedEngineIds) {
  for (const char *bad : {"ad.0.0.1:26000", "127.0.0.1:abc", "127.0.0.1:70000", "", "[::1", "not-an-ip"}) {
    adxl::AdxlEngine e;
    EXPECT_ST(adxl::PARAM_INVALID, e.Initialize(bad, {})) << "Initialize(\"" << bad << "\")";
    // The engine stays uninitialized.
    char byte = 0;
    adxl::MemHandle h = nullptr;
    EXPECT_ST(adxl::FAILED, e.RegisterMem(Desc(reinterpret_cast<uintptr_t>(&byte), 1), adxl::MEM_HOST, h))
        << "after Initialize(\"" << bad << "\") failed";
  }
}

TEST_F(ErrorsTest, InitializeOnAPortInUseFails) {
  int fd = -1;
  int port = 0;
  for (int attempt = 0; attempt < 20 && fd < 0; ++attempt) {
    port = PickFreePort();
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof(a)) != 0 || listen(fd, 4) != 0) {
      close(fd);
      fd = -1;
    }
  }
  ASSERT_GE(fd, 0) << "could not occupy a port";
  const std::string id = "127.0.0.1:" + std::to_string(port);
  adxl::AdxlEngine e;
  EXPECT_ST(adxl::FAILED, e.Initialize(id.c_str(), {})) << id << " is already listened on";
  close(fd);
  // The failed call left the engine usable for a proper Initialize.
  EXPECT_TRUE(InitServer());
}

TEST_F(ErrorsTest, SecondInitializeSucceedsAndChangesNothing) {
  ASSERT_TRUE(InitServer());
  EXPECT_ST(adxl::SUCCESS, engine_.Initialize(engine_id_.c_str(), {}));
  const int other_port = PickFreePort();
  const std::string other = "127.0.0.1:" + std::to_string(other_port);
  EXPECT_ST(adxl::SUCCESS, engine_.Initialize(other.c_str(), {}));

  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  // Still listening on the first id, and not on the second one.
  EXPECT_ST(adxl::SUCCESS, peer->Connect(engine_id_, kTimeoutMs)) << peer->last_error();
  EXPECT_ST(adxl::SUCCESS, peer->Disconnect(engine_id_, kTimeoutMs)) << peer->last_error();
  uint32_t st = peer->Connect(other, 2000);
  EXPECT_TRUE(st == adxl::FAILED || st == adxl::TIMEOUT)
      << "connect to the id of an ignored second Initialize returned " << StatusName(st);
  // And it still works as a client.
  ASSERT_TRUE(ConnectTo(*peer));
  GuardedBuffer local(100);
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 100}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 100, peer->region(0).seed, 0));
}

// ---------------------------------------------------------------------------------
// Not initialized / finalized -> FAILED
// ---------------------------------------------------------------------------------
TEST_F(ErrorsTest, CallsOnAnUninitializedEngineFail) {
  adxl::AdxlEngine e;
  GuardedBuffer buf(4096);
  adxl::MemHandle h = nullptr;
  EXPECT_ST(adxl::FAILED, e.RegisterMem(Desc(buf.addr(), buf.size()), adxl::MEM_HOST, h));
  EXPECT_ST(adxl::FAILED, e.DeregisterMem(reinterpret_cast<adxl::MemHandle>(0x1000)));
  EXPECT_ST(adxl::FAILED, e.Connect("127.0.0.1:26000", 1000));
  EXPECT_ST(adxl::FAILED, e.TransferSync("127.0.0.1:26000", adxl::READ, {{buf.addr(), 0x1000, 8}}, 1000));
  e.Finalize();  // harmless on an uninitialized engine
}

TEST_F(ErrorsTest, CallsAfterFinalizeFail) {
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  adxl::AdxlEngine e;
  ASSERT_ST(adxl::SUCCESS, e.Initialize("127.0.0.1", {}));
  ASSERT_ST(adxl::SUCCESS, e.Connect(peer->engine(), kTimeoutMs));
  GuardedBuffer buf(4096);
  ASSERT_ST(adxl::SUCCESS, e.TransferSync(peer->engine(), adxl::READ, {{buf.addr(), peer->region(0).addr, 64}}, kTimeoutMs));
  ASSERT_ST(adxl::SUCCESS, e.Disconnect(peer->engine(), kTimeoutMs));
  {
    Watchdog dog(30000, "Finalize");
    e.Finalize();
  }
  adxl::MemHandle h = nullptr;
  EXPECT_ST(adxl::FAILED, e.RegisterMem(Desc(buf.addr(), buf.size()), adxl::MEM_HOST, h));
  EXPECT_ST(adxl::FAILED, e.Connect(peer->engine(), 2000));
  EXPECT_ST(adxl::FAILED, e.TransferSync(peer->engine(), adxl::READ, {{buf.addr(), peer->region(0).addr, 64}}, 1000));
}

// ---------------------------------------------------------------------------------
// RegisterMem / DeregisterMem
// ---------------------------------------------------------------------------------
TEST_F(ErrorsTest, RegisterAndDeregisterArguments) {
  ASSERT_TRUE(InitClient());
  adxl::MemHandle h = nullptr;
  EXPECT_ST(adxl::PARAM_INVALID, engine_.RegisterMem(Desc(0, 4096), adxl::MEM_HOST, h)) << "addr 0";
  EXPECT_ST(adxl::PARAM_INVALID, engine_.RegisterMem(Desc(0, 4096), adxl::MEM_DEVICE, h)) << "addr 0, device";
  GuardedBuffer empty(4096);
  h = nullptr;
  EXPECT_ST(adxl::PARAM_INVALID, engine_.RegisterMem(Desc(empty.addr(), 0), adxl::MEM_HOST, h)) << "length 0";
  EXPECT_EQ(nullptr, h) << "a refused registration gives no handle";
  EXPECT_NE(std::string::npos, std::string(llmdd_ext::LastErrors()).find("length is 0")) << llmdd_ext::LastErrors();
  EXPECT_ST(adxl::PARAM_INVALID, engine_.DeregisterMem(nullptr));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(reinterpret_cast<adxl::MemHandle>(0x12345678)))
      << "unknown handle";
  GuardedBuffer buf(8192);
  ASSERT_ST(adxl::SUCCESS, engine_.RegisterMem(Desc(buf.addr(), buf.size()), adxl::MEM_HOST, h));
  ASSERT_NE(nullptr, h);
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(h));
  EXPECT_ST(adxl::SUCCESS, engine_.DeregisterMem(h)) << "deregistering twice: the handle is unknown by then";
}

// ---------------------------------------------------------------------------------
// Connect
// ---------------------------------------------------------------------------------
TEST_F(ErrorsTest, ConnectArgumentsAndStates) {
  ASSERT_TRUE(InitServer());
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);

  EXPECT_ST(adxl::PARAM_INVALID, engine_.Connect(peer->engine(), 0)) << "timeout 0";
  EXPECT_ST(adxl::PARAM_INVALID, engine_.Connect(peer->engine(), -1)) << "timeout -1";
  for (const char *bad : {"ad.0.0.1:26000", "127.0.0.1:abc", "", "[::1", "hello world"}) {
    EXPECT_ST(adxl::PARAM_INVALID, engine_.Connect(bad, 1000)) << "Connect(\"" << bad << "\")";
  }
  EXPECT_ST(adxl::PARAM_INVALID, engine_.Connect(engine_id_.c_str(), 1000)) << "connect to its own engine id";

  // Nobody listening: FAILED, or TIMEOUT when the engine retried until its deadline.
  const std::string nobody = "127.0.0.1:" + std::to_string(PickFreePort());
  Timed r = TimedCall("Connect(nobody)", 30000, [&] { return engine_.Connect(nobody.c_str(), 2000); });
  EXPECT_TRUE(r.status == adxl::FAILED || r.status == adxl::TIMEOUT)
      << "Connect to " << nobody << " (nobody listening) returned " << StatusName(r.status);
  EXPECT_LE(r.ms, 2000 + kReturnMarginMs);
  Note("Connect to nobody returned " + StatusName(r.status) + " after " + std::to_string(r.ms) + " ms");
  // A failed connect leaves no channel behind.
  EXPECT_ST(adxl::NOT_CONNECTED, engine_.Disconnect(nobody.c_str(), 1000));
  EXPECT_ST(adxl::NOT_CONNECTED, engine_.TransferSync(nobody.c_str(), adxl::READ, {{0x1000, 0x1000, 1}}, 1000));

  ASSERT_TRUE(ConnectTo(*peer));
  EXPECT_ST(adxl::ALREADY_CONNECTED, engine_.Connect(peer->engine(), kTimeoutMs));
  // The existing channel is unaffected.
  GuardedBuffer local(64);
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 64}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 64, peer->region(0).seed, 0));
}

TEST_F(ErrorsTest, ConnectToAStoppedPeerTimesOut) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(peer->Stop());  // the kernel still accepts the TCP connection; nobody answers
  Timed r = TimedCall("Connect(stopped peer)", 30000, [&] { return engine_.Connect(peer->engine(), 1000); });
  peer->Continue();
  EXPECT_ST(adxl::TIMEOUT, r.status);
  EXPECT_LE(r.ms, 1000 + kReturnMarginMs);
  // Once the peer runs again, connecting works.
  EXPECT_TRUE(peer->Ping());
  r = TimedCall("Connect(resumed peer)", 30000, [&] { return engine_.Connect(peer->engine(), kTimeoutMs); });
  EXPECT_ST(adxl::SUCCESS, r.status);
  if (r.status == adxl::SUCCESS) connected_.insert(peer->id());
}

// ---------------------------------------------------------------------------------
// Disconnect
// ---------------------------------------------------------------------------------
TEST_F(ErrorsTest, DisconnectArgumentsAndStates) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  EXPECT_ST(adxl::NOT_CONNECTED, engine_.Disconnect(peer->engine(), 1000)) << "never connected";
  EXPECT_ST(adxl::PARAM_INVALID, engine_.Disconnect("ad.0.0.1:26000", 1000)) << "malformed engine id";
  ASSERT_TRUE(ConnectTo(*peer));
  EXPECT_ST(adxl::PARAM_INVALID, engine_.Disconnect(peer->engine(), 0)) << "timeout 0";
  EXPECT_ST(adxl::PARAM_INVALID, engine_.Disconnect(peer->engine(), -100)) << "timeout -100";
  // Still connected after the rejected calls.
  GuardedBuffer local(64);
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 64}}, kTimeoutMs));
  EXPECT_ST(adxl::SUCCESS, DisconnectFrom(peer->id()));
  EXPECT_ST(adxl::NOT_CONNECTED, engine_.Disconnect(peer->engine(), 1000)) << "second Disconnect";
  EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 64}}, kTimeoutMs))
      << "transfer after Disconnect";
  // Reconnecting works.
  ASSERT_TRUE(ConnectTo(*peer));
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), peer->region(0).addr, 64}}, kTimeoutMs));
}

// ---------------------------------------------------------------------------------
// TransferSync arguments
// ---------------------------------------------------------------------------------
TEST_P(TransportErrorsTest, TransferSyncArguments) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 65536;
  o.seed = 50;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(4096);
  FillPattern(local.data(), local.size(), 51, 0);

  EXPECT_ST(adxl::NOT_CONNECTED, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, 16}}, kTimeoutMs))
      << "before Connect";
  ASSERT_TRUE(ConnectTo(*peer));
  EXPECT_ST(adxl::NOT_CONNECTED,
            Transfer("127.0.0.1:" + std::to_string(PickFreePort()), adxl::READ, {{local.addr(), rr.addr, 16}}, kTimeoutMs)
                .status)
      << "to an engine never connected";

  for (adxl::TransferOp op : {adxl::READ, adxl::WRITE}) {
    SCOPED_TRACE(op == adxl::READ ? "READ" : "WRITE");
    EXPECT_ST(adxl::SUCCESS, Xfer(*peer, op, {}, kTimeoutMs)) << "empty batch";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{local.addr(), rr.addr, 16}}, 0)) << "timeout 0";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{local.addr(), rr.addr, 16}}, -1)) << "timeout -1";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{0, rr.addr, 16}}, kTimeoutMs)) << "local_addr 0";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{local.addr(), 0, 16}}, kTimeoutMs)) << "remote_addr 0";
    // A null address in the last descriptor rejects the whole batch.
    EXPECT_ST(adxl::PARAM_INVALID,
              Xfer(*peer, op, {{local.addr(), rr.addr, 1024}, {local.addr() + 2048, 0, 16}}, kTimeoutMs))
        << "valid descriptor followed by remote_addr 0";
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{local.addr(), rr.addr, 1024}, {0, rr.addr + 2048, 16}}, kTimeoutMs))
        << "valid descriptor followed by local_addr 0";
    EXPECT_EQ("OK", peer->CheckUntouched(0));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), local.size(), 51, 0));
  }
  // The channel still works.
  EXPECT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr + 7, 4096}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 4096, 50, 7));
}

// ---------------------------------------------------------------------------------
// Remote ranges that are not fully inside registered memory (one region, or
// adjacent regions of one allocation: those are accepted, adxl_transfer_test.cc).
// ---------------------------------------------------------------------------------
class OutOfRegistrationTest : public AdxlFixture,
                              public ::testing::WithParamInterface<std::tuple<adxl::TransferOp, std::string>> {
 protected:
  void SetUp() override { UseTransport(std::get<1>(GetParam())); }
  adxl::TransferOp Op() const { return std::get<0>(GetParam()); }
};

TEST_P(OutOfRegistrationTest, RejectedWithoutTouchingEitherSide) {
  const adxl::TransferOp op = Op();
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 65536;
  o.seed = 60;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  const int split = peer->RegisterSplit(32768, 61);  // regions 1 and 2, adjacent
  ASSERT_EQ(1, split) << peer->last_error();
  ASSERT_EQ(peer->region(1).addr + peer->region(1).len, peer->region(2).addr);
  const int gone = peer->Register(8192, 63);  // region 3, deregistered below
  ASSERT_EQ(3, gone) << peer->last_error();
  ASSERT_TRUE(ConnectTo(*peer));
  ASSERT_ST(adxl::SUCCESS, peer->Deregister(3));

  const RemoteRegion r0 = peer->region(0), r1 = peer->region(1), r2 = peer->region(2), r3 = peer->region(3);
  const uintptr_t end0 = r0.addr + r0.len;
  GuardedBuffer local(256 << 10);
  const uint64_t kLocalSeed = 64;

  struct Case {
    const char *what;
    std::vector<adxl::TransferOpDesc> descs;
  };
  const uintptr_t L = local.addr();
  std::vector<Case> cases = {
      {"partially overlapping the end", {{L, end0 - 10, 20}}},
      {"one byte past the end", {{L, end0 - 4095, 4096 + 1}}},
      {"starting one byte before the region", {{L, r0.addr - 1, 100}}},
      {"whole region plus 4 KiB", {{L, r0.addr, r0.len + 4096}}},
      {"entirely after the region", {{L, end0 + 8192, 64}}},
      {"starting exactly at the end", {{L, end0, 1}}},
      {"across two adjacent regions and past the end of the second", {{L, r2.addr - 8, r2.len + 16}}},
      {"two adjacent regions exactly plus one byte", {{L, r1.addr, r1.len + r2.len + 1}}},
      {"in a deregistered region", {{L, r3.addr, 100}}},
      {"valid descriptors followed by an invalid one",
       {{L, r0.addr, 1000}, {L + 1000, r1.addr, 1000}, {L + 2000, end0 - 1, 2}}},
      {"invalid descriptor followed by valid ones", {{L, r2.addr + r2.len - 4, 8}, {L + 100, r2.addr, 1000}}},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(std::string(op == adxl::READ ? "READ " : "WRITE ") + c.what);
    FillPattern(local.data(), local.size(), kLocalSeed, 0);
    Timed r = Transfer(peer->id(), op, c.descs, kTimeoutMs);
    EXPECT_ST(adxl::PARAM_INVALID, r.status);
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), local.size(), kLocalSeed, 0)) << "local buffer modified";
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ("OK", peer->CheckUntouched(i)) << "remote region " << i << " modified";
    ASSERT_TRUE(peer->Ping()) << "peer " << peer->Health();
  }
  // The channel is still fine; the exact boundaries are accepted.
  FillPattern(local.data(), local.size(), kLocalSeed, 0);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{L, r0.addr, r0.len}, {L + r0.len, r2.addr, r2.len}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), r0.len, r0.seed, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + r0.len, r2.len, r2.seed, 0));
  // So are two adjacent regions exactly.
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{L, r1.addr, r1.len + r2.len}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), r1.len, r1.seed, 0));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + r1.len, r2.len, r2.seed, 0));
}

TEST_P(OutOfRegistrationTest, WrappingLengthRejected) {
  const adxl::TransferOp op = Op();
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 65536;
  o.seed = 70;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion r0 = peer->region(0);
  GuardedBuffer local(4096);
  FillPattern(local.data(), local.size(), 71, 0);
  // remote_addr + len wraps around to an address inside the region (a naive
  // "start >= base && start + len <= end" check would accept it).
  const size_t wrap_len = SIZE_MAX - 3;
  ASSERT_EQ(r0.addr + 4, r0.addr + 8 + wrap_len);
  for (size_t len : {wrap_len, SIZE_MAX}) {
    SCOPED_TRACE("len " + std::to_string(len));
    EXPECT_ST(adxl::PARAM_INVALID, Xfer(*peer, op, {{local.addr(), r0.addr + 8, len}}, kTimeoutMs));
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), local.size(), 71, 0));
    EXPECT_EQ("OK", peer->CheckUntouched(0));
    ASSERT_TRUE(peer->Ping()) << "peer " << peer->Health();
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, OutOfRegistrationTest,
                         ::testing::Combine(::testing::Values(adxl::READ, adxl::WRITE),
                                            ::testing::ValuesIn(AllTransports())),
                         [](const ::testing::TestParamInfo<std::tuple<adxl::TransferOp, std::string>> &info) {
                           return std::string(std::get<0>(info.param) == adxl::READ ? "Read_" : "Write_") +
                                  std::get<1>(info.param);
                         });

// ---------------------------------------------------------------------------------
// TIMEOUT: the peer is frozen with SIGSTOP.
// ---------------------------------------------------------------------------------
TEST_P(TransportErrorsTest, TransferToAStoppedPeerTimesOut) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 80;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(rr.len);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, 4096}}, kTimeoutMs));

  ASSERT_TRUE(peer->Stop());
  SleepMs(kLeaseExpiryWaitMs);  // past the standing read lease of the same-host path
  for (adxl::TransferOp op : {adxl::READ, adxl::WRITE}) {
    SCOPED_TRACE(op == adxl::READ ? "READ" : "WRITE");
    Timed r = Transfer(peer->id(), op, {{local.addr(), rr.addr, 4096}}, 1000);
    EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
    EXPECT_LE(r.ms, 1000 + kReturnMarginMs);
  }
  peer->Continue();
  EXPECT_TRUE(peer->Ping());
}

// Same-host small READs are one-sided (process_vm_readv under a standing read
// lease, like an RDMA read that needs no CPU on the target): right after the peer
// freezes they still deliver its registered bytes, exactly; once the lease has
// run out without renewal they time out. Over TCP they time out at once.
TEST_P(TransportErrorsTest, SmallReadsFromAFrozenPeerWithinTheLease) {
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 81;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(rr.len);
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, 64}}, kTimeoutMs));  // takes the lease
  ASSERT_TRUE(peer->Stop());
  Timed r = Transfer(peer->id(), adxl::READ, {{local.addr() + 4096, rr.addr + 4096, 512}}, 1000);
  if (GetParam() == "tcp") {
    EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
  } else if (r.status == adxl::SUCCESS) {
    EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data() + 4096, 512, rr.seed, 4096))
        << "one-sided read delivered wrong bytes";
  } else {
    // The lease may have run out while the stop took effect (a loaded machine).
    EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
  }
  EXPECT_LE(r.ms, 1000 + kReturnMarginMs);
  SleepMs(kLeaseExpiryWaitMs);
  r = Transfer(peer->id(), adxl::READ, {{local.addr(), rr.addr, 64}}, 500);
  EXPECT_ST(adxl::TIMEOUT, r.status) << "after the lease ran out, after " << r.ms << " ms";
  EXPECT_LE(r.ms, 500 + kReturnMarginMs);
  peer->Continue();
  EXPECT_TRUE(peer->Ping());
  ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, 64}}, kTimeoutMs));
  EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), 64, rr.seed, 0));
}

// A 1 MiB READ is one-sided too (no message round trip): right after the
// peer freezes it still delivers the peer's registered bytes on the same-host
// path (a request would wait for the frozen peer's answer and time out). The
// lease may run out while the stop takes effect on a loaded machine, so the
// freeze is tried a few times; one delivery is the proof.
TEST_P(TransportErrorsTest, MegabyteReadFromAFrozenPeerWithinTheLease) {
  if (GetParam() != "shm") GTEST_SKIP() << "one-sided reads are the same-host path's";
  ASSERT_TRUE(InitClient());
  AdxlPeer::Options o;
  o.size = 1u << 20;
  o.seed = 83;
  AdxlPeer *peer = StartPeer(o);
  ASSERT_NE(nullptr, peer);
  ASSERT_TRUE(ConnectTo(*peer));
  const RemoteRegion rr = peer->region(0);
  GuardedBuffer local(rr.len);
  bool delivered = false;
  for (int attempt = 0; attempt < 3 && !delivered; ++attempt) {
    memset(local.data(), 0, rr.len);
    ASSERT_ST(adxl::SUCCESS, Xfer(*peer, adxl::READ, {{local.addr(), rr.addr, 64}}, kTimeoutMs));  // the lease
    ASSERT_TRUE(peer->Stop());
    Timed r = Transfer(peer->id(), adxl::READ, {{local.addr(), rr.addr, rr.len}}, 300);
    if (r.status == adxl::SUCCESS) {
      EXPECT_EQ(SIZE_MAX, FindPatternMismatch(local.data(), rr.len, rr.seed, 0)) << "one-sided read delivered wrong bytes";
      delivered = true;
    } else {
      EXPECT_ST(adxl::TIMEOUT, r.status) << "after " << r.ms << " ms";
    }
    EXPECT_LE(r.ms, 300 + kReturnMarginMs);
    peer->Continue();
    EXPECT_TRUE(peer->Ping());
  }
  EXPECT_TRUE(delivered) << "a 1 MiB READ from a frozen peer within the lease was never delivered";
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportErrorsTest, ::testing::ValuesIn(AllTransports()),
                         [](const ::testing::TestParamInfo<std::string> &info) { return info.param; });

}  // namespace
}  // namespace itest
