// Same-host path: identity verification and the chunked process_vm copy.
#include "transport/shm/cma.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <cstring>
#include <thread>
#include <vector>

#include "engine/lane.h"
#include "transport/shm/connection_owner.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

// A loopback TCP connection inside this process: both ends are held here.
struct LoopbackPair {
  std::unique_ptr<TcpStream> client, server;
  LoopbackPair() {
    TcpListener listener;
    Endpoint local;
    local.ip = "127.0.0.1";
    local.family = AF_INET;
    local.port = 0;
    std::string error;
    if (!listener.Listen(local, &error)) return;
    Endpoint remote = local;
    remote.port = listener.Port();
    bool timed_out = false;
    client = TcpStream::Connect(remote, Deadline::AfterMs(2000), &timed_out, &error);
    server = listener.Accept(Deadline::AfterMs(2000));
  }
};

TEST(Cma, VerifiesAPeerOnlyThroughTheConnectionItHolds) {
  const ProcessIdentity &self = LocalIdentity();
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  std::string why;
  // This process holds both ends: its identity checks out on either side.
  EXPECT_TRUE(VerifyReachable(self, *pair.client, &why)) << why;
  EXPECT_TRUE(VerifyReachable(self, *pair.server, &why)) << why;
  // Another process (our parent) does not hold the other end: refused even
  // though its memory may be reachable; this is what stops a peer from
  // naming a process it is not.
  ProcessIdentity parent = self;
  parent.pid = static_cast<uint32_t>(getppid());
  EXPECT_FALSE(VerifyReachable(parent, *pair.client, &why));
  EXPECT_NE(why.find("other end of this connection"), std::string::npos) << why;
  // A stream without TCP ends (socketpair) cannot bind the check: refused.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream unix_a(fds[0], "a"), unix_b(fds[1], "b");
  EXPECT_FALSE(VerifyReachable(self, unix_a, &why));
  // Wrong token, other host, no such process, nothing announced.
  ProcessIdentity wrong_token = self;
  wrong_token.token[0] ^= 1;
  EXPECT_FALSE(VerifyReachable(wrong_token, *pair.client, &why));
  EXPECT_NE(why.find("another process"), std::string::npos) << why;
  ProcessIdentity other_host = self;
  other_host.boot_id = "not-this-boot";
  EXPECT_FALSE(VerifyReachable(other_host, *pair.client, &why));
  EXPECT_NE(why.find("another host"), std::string::npos) << why;
  ProcessIdentity no_process = self;
  no_process.pid = 0x3FFFFFFF;  // above pid_max
  EXPECT_FALSE(VerifyReachable(no_process, *pair.client, &why));
  EXPECT_FALSE(VerifyReachable(ProcessIdentity{}, *pair.client, &why));
}

TEST(Cma, ConnectionOwnerCheckFindsTheHolderOfTheOtherEnd) {
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  sockaddr_storage local{}, remote{};
  ASSERT_TRUE(pair.client->SocketEnds(&local, &remote));
  std::string why;
  EXPECT_TRUE(ProcessHoldsPeerEnd(getpid(), local, remote, &why)) << why;
  EXPECT_FALSE(ProcessHoldsPeerEnd(getppid(), local, remote, &why));
  // Once our end of the pair is closed, nobody holds the other end of the old tuple.
  pair.server.reset();
  EXPECT_FALSE(ProcessHoldsPeerEnd(getpid(), local, remote, &why));
}

TEST(Cma, CopiesAcrossManyUnevenlySplitRanges) {
  // 3000 local pieces of 7 bytes vs 1500 remote pieces of 14 bytes: more than
  // IOV_MAX on both sides and boundaries that never line up.
  std::vector<char> src(21000), dst(21000, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i * 11 + 3);
  std::vector<iovec> local, remote;
  for (size_t i = 0; i < 3000; ++i) local.push_back({src.data() + i * 7, 7});
  for (size_t i = 0; i < 1500; ++i) remote.push_back({dst.data() + i * 14, 14});
  ASSERT_EQ(CmaCopy(getpid(), /*to_peer=*/true, local.data(), local.size(), remote.data(), remote.size()), 0);
  EXPECT_EQ(src, dst);
  std::vector<char> back(21000, 0);
  std::vector<iovec> back_iov{{back.data(), back.size()}};
  ASSERT_EQ(CmaCopy(getpid(), /*to_peer=*/false, back_iov.data(), 1, remote.data(), remote.size()), 0);
  EXPECT_EQ(back, src);
}

TEST(Cma, UnmappedPeerRangeIsEfault) {
  std::vector<char> buf(64);
  iovec local{buf.data(), buf.size()};
  iovec remote{reinterpret_cast<void *>(0x10), 64};
  EXPECT_EQ(CmaCopy(getpid(), false, &local, 1, &remote, 1), EFAULT);
}

// The lane protocol with same-host requests: the serving side copies straight
// into / out of the requester's memory; refusals still happen before any copy.
TEST(CmaLane, SameHostPathOnlyWhereItPays) {
  EXPECT_FALSE(SameHostPays(adxl::READ, 8, 1));                          // small read: one TCP round trip
  EXPECT_FALSE(SameHostPays(adxl::READ, kSameHostMinReadBytes - 1, 1));
  EXPECT_TRUE(SameHostPays(adxl::READ, kSameHostMinReadBytes, 1));
  EXPECT_TRUE(SameHostPays(adxl::WRITE, 8192, 1));                       // a write is one round trip either way
  EXPECT_FALSE(SameHostPays(adxl::WRITE, 10000 * 8, 10000));            // small descriptors: page pinning per iovec
  EXPECT_FALSE(SameHostPays(adxl::READ, 1 << 20, 1024));                 // 1 KiB average
  EXPECT_TRUE(SameHostPays(adxl::READ, 64ULL << 20, 64));
  EXPECT_FALSE(SameHostPays(adxl::READ, 0, 0));
}

TEST(CmaLane, ReadWriteAndRefusalsOverTheSameHostPath) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream requester(fds[0], "requester"), server(fds[1], "server");
  MemoryRegistry registry;
  std::vector<char> remote(256 * 1024);
  for (size_t i = 0; i < remote.size(); ++i) remote[i] = static_cast<char>(i * 5 + 1);
  registry.Add(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), 1);
  std::thread serving([&] {
    ServeContext ctx;
    ctx.registry = &registry;
    ctx.peer = "self";
    ctx.same_host_pid = static_cast<uint32_t>(getpid());
    ServeLane(server, ctx);
  });
  const uint32_t self = static_cast<uint32_t>(getpid());
  auto R = [&](size_t off) { return reinterpret_cast<uintptr_t>(remote.data()) + off; };
  // Large enough for the same-host path (SameHostPays); and a small one that goes over the socket.
  for (size_t piece : {size_t{40 * 1024}, size_t{500}}) {
    std::vector<char> local(2 * piece, 'L');
    Segment segs[2] = {{reinterpret_cast<uintptr_t>(local.data()), R(100), piece},
                       {reinterpret_cast<uintptr_t>(local.data() + piece), R(120000), piece}};
    LaneResult r = ExecuteTransfer(requester, adxl::READ, segs, 2, 1, Deadline::AfterMs(3000), self);
    ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
    EXPECT_EQ(memcmp(local.data(), remote.data() + 100, piece), 0);
    EXPECT_EQ(memcmp(local.data() + piece, remote.data() + 120000, piece), 0);
  }

  for (size_t len : {size_t{8192}, size_t{300}}) {
    std::vector<char> data(len, static_cast<char>('W' + (len & 1)));
    Segment w{reinterpret_cast<uintptr_t>(data.data()), R(7000), len};
    LaneResult r = ExecuteTransfer(requester, adxl::WRITE, &w, 1, 2, Deadline::AfterMs(3000), self);
    ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
    EXPECT_EQ(std::string(remote.data() + 7000, len), std::string(data.begin(), data.end()));
  }

  std::vector<char> before = remote;
  std::vector<char> data(8192, 'X');
  Segment outside{reinterpret_cast<uintptr_t>(data.data()), R(remote.size() - 4096), 8192};
  LaneResult r = ExecuteTransfer(requester, adxl::WRITE, &outside, 1, 3, Deadline::AfterMs(3000), self);
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_EQ(remote, before);

  Segment bad_local{0x10, R(0), 64 * 1024};
  r = ExecuteTransfer(requester, adxl::READ, &bad_local, 1, 4, Deadline::AfterMs(3000), self);
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_NE(r.error.find("not mapped"), std::string::npos) << r.error;
  requester.Shutdown();
  serving.join();
}

TEST(CmaLane, StandingReadLeaseOnlyOnVerifiedLanesAndOnlyReadableRegions) {
  MemoryRegistry registry;
  std::vector<char> readable(8192, 'R'), write_only(8192, 'W');
  registry.Add(reinterpret_cast<uintptr_t>(readable.data()), readable.size(), 1);
  registry.Add(reinterpret_cast<uintptr_t>(write_only.data()), write_only.size(), 1, kAccessWrite);
  for (bool verified : {true, false}) {
    SCOPED_TRACE(verified ? "verified lane" : "unverified lane");
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    TcpStream requester(fds[0], "requester"), server(fds[1], "server");
    std::thread serving([&] {
      ServeContext ctx;
      ctx.registry = &registry;
      ctx.peer = "peer";
      ctx.same_host_pid = verified ? static_cast<uint32_t>(getpid()) : 0;
      ServeLane(server, ctx);
    });
    ReadLease lease;
    const auto before = Deadline::Clock::now();
    LaneResult r = ExecuteLeaseRequest(requester, 5, Deadline::AfterMs(2000), &lease);
    if (verified) {
      ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
      ASSERT_EQ(lease.regions.size(), 1U);
      EXPECT_TRUE(lease.Covers(reinterpret_cast<uintptr_t>(readable.data()), readable.size()));
      EXPECT_TRUE(lease.Covers(reinterpret_cast<uintptr_t>(readable.data()) + 100, 8));
      EXPECT_FALSE(lease.Covers(reinterpret_cast<uintptr_t>(readable.data()) + 100, readable.size()));
      EXPECT_FALSE(lease.Covers(reinterpret_cast<uintptr_t>(write_only.data()), 8));
      EXPECT_LE(lease.expiry, before + std::chrono::milliseconds(wire::kStandingLeaseMs) +
                                  std::chrono::milliseconds(1));
      EXPECT_GT(lease.expiry, before);
    } else {
      EXPECT_NE(r.status, adxl::SUCCESS);
      EXPECT_TRUE(r.broken);
      EXPECT_NE(r.error.find("not verified"), std::string::npos) << r.error;
    }
    requester.Shutdown();
    serving.join();
  }
}

TEST(CmaLane, UnverifiedPeerCannotUseTheSameHostPath) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream requester(fds[0], "requester"), server(fds[1], "server");
  MemoryRegistry registry;
  const size_t len = kSameHostMinReadBytes;  // large enough to be sent as a same-host request
  std::vector<char> remote(len, 'R');
  registry.Add(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), 1);
  std::thread serving([&] {
    ServeContext ctx;
    ctx.registry = &registry;
    ctx.peer = "stranger";  // same_host_pid stays 0: not verified
    ServeLane(server, ctx);
  });
  std::vector<char> local(len, 'L');
  Segment s{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()), len};
  LaneResult r = ExecuteTransfer(requester, adxl::READ, &s, 1, 1, Deadline::AfterMs(3000), static_cast<uint32_t>(getpid()));
  EXPECT_NE(r.status, adxl::SUCCESS);
  EXPECT_EQ(std::string(local.begin(), local.end()), std::string(len, 'L'));
  requester.Shutdown();
  serving.join();
}

}  // namespace
}  // namespace llmdd

namespace llmdd {
namespace {

// A requester that takes a read lease and never releases it cannot pin the
// server's memory beyond the lease: deregistration completes, the lane closes.
TEST(CmaLane, UnreleasedLeaseExpiresAndDeregistrationProceeds) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream requester(fds[0], "requester"), server(fds[1], "server");
  MemoryRegistry registry;
  std::vector<char> remote(4096, 'R');
  uint64_t id = registry.Add(reinterpret_cast<uintptr_t>(remote.data()), remote.size(), 1);
  std::thread serving([&] {
    ServeContext ctx;
    ctx.registry = &registry;
    ctx.peer = "greedy";
    ctx.same_host_pid = static_cast<uint32_t>(getpid());
    ServeLane(server, ctx);
  });
  uint8_t body[wire::kRangeBodyHeader + wire::kSameHostDeadlineSize + wire::kSameHostEntrySize];
  wire::EncodeRangeHeader(1, /*timeout_ms=*/300, 64, body);
  uint64_t deadline_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                   Deadline::AfterMs(10000).At().time_since_epoch())
                                                   .count());
  memcpy(body + wire::kRangeBodyHeader, &deadline_ns, 8);
  uint64_t entry[3] = {reinterpret_cast<uintptr_t>(remote.data()), 64, 0x1000};
  memcpy(body + wire::kRangeBodyHeader + 8, entry, sizeof(entry));
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  h.flags = wire::kFlagSameHost;
  h.request_id = 77;
  h.body_len = sizeof(body);
  iovec out[2] = {{&h, sizeof(h)}, {body, sizeof(body)}};
  ASSERT_EQ(requester.WriteFull(out, 2, Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader go;
  ASSERT_EQ(requester.Read(&go, sizeof(go), Deadline::AfterMs(1000)), IoStatus::kOk);
  EXPECT_EQ(go.type, static_cast<uint16_t>(wire::MsgType::kReadResponse));
  EXPECT_EQ(go.status, adxl::SUCCESS);
  EXPECT_EQ(go.flags, 300U);  // the lease
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(registry.Remove(id));  // waits for the lease, not forever
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(ms, 1500);
  char byte;
  EXPECT_EQ(requester.Read(&byte, 1, Deadline::AfterMs(1000)), IoStatus::kClosed);
  serving.join();
}

}  // namespace
}  // namespace llmdd
