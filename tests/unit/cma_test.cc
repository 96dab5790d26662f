// Same-host path: identity verification and the chunked process_vm copy.
#include "transport/shm/cma.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <cstring>
#include <thread>
#include <vector>

#include "common/sync_point.h"
#include "engine/lane.h"
#include "engine/metrics.h"
#include "engine/path_policy.h"
#include "common/host_memory.h"
#include "transport/shm/peer_mappings.h"
#include "transport/shm/same_host_link.h"
#include "transport/shm/connection_owner.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

// What the engine does with a request for a verified same-host peer: the
// same-host link where the path policy says it pays, else a TCP request.
LaneResult ExecuteWithSameHost(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                               uint64_t request_id, Deadline deadline, PeerProcess *peer) {
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += segs[i].len;
  if (peer != nullptr && !peer->Gone() && SameHostPays(op, total, count))
    return ExecuteSameHostTransfer(stream, op, segs, count, request_id, deadline, *peer);
  return ExecuteTransfer(stream, op, segs, count, request_id, deadline);
}


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

// This process's identity as the holder of `held` (the other end of the
// connection a verifier checks).
ProcessIdentity SelfHolding(const TcpStream &held) {
  ProcessIdentity id = LocalIdentity();
  id.conn_fd = static_cast<uint32_t>(held.NativeHandle());
  return id;
}

// This process as a verified same-host peer (it holds both ends of a loopback
// connection, which lives as long as the test binary).
std::shared_ptr<PeerProcess> SelfPeer() {
  static LoopbackPair *pair = new LoopbackPair();
  std::string why;
  std::shared_ptr<PeerProcess> self = PeerProcess::Verify(SelfHolding(*pair->client), *pair->server, &why);
  EXPECT_TRUE(self) << why;
  return self;
}

// A forked child that holds copies of our descriptors (so the other end of a
// loopback pair too) and the same token, until told to change it or killed.
struct ChildHolder {
  pid_t pid = -1;
  int command = -1;  // write 't' to make the child overwrite its token
  explicit ChildHolder() {
    int p[2];
    if (pipe(p) != 0) return;
    (void)LocalIdentity();  // the token exists before fork, at the same address in the child
    pid = fork();
    if (pid == 0) {
      close(p[1]);
      char c;
      while (read(p[0], &c, 1) == 1) {
        if (c == 't') memset(reinterpret_cast<void *>(LocalIdentity().token_addr), 0x5A, 32);
      }
      _exit(0);
    }
    close(p[0]);
    command = p[1];
  }
  void ChangeToken() {
    char c = 't';
    ASSERT_EQ(write(command, &c, 1), 1);
  }
  void Kill() {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
  ~ChildHolder() {
    Kill();
    if (command >= 0) close(command);
  }
};

TEST(Cma, VerifiesAPeerOnlyThroughTheConnectionItHolds) {
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  std::string why;
  // This process holds both ends: its identity checks out on either side,
  // naming the descriptor of the *other* end.
  EXPECT_TRUE(PeerProcess::Verify(SelfHolding(*pair.client), *pair.server, &why)) << why;
  EXPECT_TRUE(PeerProcess::Verify(SelfHolding(*pair.server), *pair.client, &why)) << why;
  // Naming our own end (not the other one) proves nothing.
  EXPECT_FALSE(PeerProcess::Verify(SelfHolding(*pair.server), *pair.server, &why));
  EXPECT_NE(why.find("does not hold the other end"), std::string::npos) << why;
  // Another process (our parent) does not hold the other end: refused even
  // though its memory may be reachable; this is what stops a peer from
  // naming a process it is not.
  ProcessIdentity parent = SelfHolding(*pair.client);
  parent.pid = static_cast<uint32_t>(getppid());
  EXPECT_FALSE(PeerProcess::Verify(parent, *pair.server, &why));
  EXPECT_NE(why.find("descriptor"), std::string::npos) << why;
  // No descriptor named: nothing to check the connection against.
  ProcessIdentity no_fd = LocalIdentity();
  EXPECT_FALSE(PeerProcess::Verify(no_fd, *pair.server, &why));
  EXPECT_NE(why.find("which of its descriptors"), std::string::npos) << why;
  // A stream without TCP ends (socketpair) cannot bind the check: refused.
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream unix_a(fds[0], "a"), unix_b(fds[1], "b");
  EXPECT_FALSE(PeerProcess::Verify(SelfHolding(unix_b), unix_a, &why));
  // Wrong token, other host, no such process, nothing announced.
  ProcessIdentity wrong_token = SelfHolding(*pair.client);
  wrong_token.token[0] ^= 1;
  EXPECT_FALSE(PeerProcess::Verify(wrong_token, *pair.server, &why));
  EXPECT_NE(why.find("another process"), std::string::npos) << why;
  ProcessIdentity other_host = SelfHolding(*pair.client);
  other_host.boot_id = "not-this-boot";
  EXPECT_FALSE(PeerProcess::Verify(other_host, *pair.server, &why));
  EXPECT_NE(why.find("another host"), std::string::npos) << why;
  ProcessIdentity no_process = SelfHolding(*pair.client);
  no_process.pid = 0x3FFFFFFF;  // above pid_max
  EXPECT_FALSE(PeerProcess::Verify(no_process, *pair.server, &why));
  EXPECT_FALSE(PeerProcess::Verify(ProcessIdentity{}, *pair.server, &why));
}

TEST(Cma, KernelNamesTheSocketAtTheOtherEndAndWhoHoldsIt) {
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  sockaddr_storage local{}, remote{};
  ASSERT_TRUE(pair.client->SocketEnds(&local, &remote));
  std::string why;
  uint64_t inode = 0;
  ASSERT_TRUE(PeerSocketInode(local, remote, &inode, &why)) << why;
  struct stat st {};
  ASSERT_EQ(fstat(pair.server->NativeHandle(), &st), 0);
  EXPECT_EQ(inode, st.st_ino);  // the server end is the other end of the client's connection
  EXPECT_TRUE(ProcessHoldsSocket(getpid(), static_cast<uint32_t>(pair.server->NativeHandle()), inode, &why)) << why;
  EXPECT_FALSE(ProcessHoldsSocket(getpid(), static_cast<uint32_t>(pair.client->NativeHandle()), inode, &why));
  EXPECT_FALSE(ProcessHoldsSocket(getppid(), static_cast<uint32_t>(pair.server->NativeHandle()), inode, &why));
  // Once the other end is closed, the kernel knows no socket there any more.
  pair.server.reset();
  uint64_t gone = 0;
  EXPECT_FALSE(PeerSocketInode(local, remote, &gone, &why) && gone == inode);
}

TEST(Cma, TrustEndsWithTheProcessNotItsNumber) {
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  ChildHolder child;  // holds copies of both ends, so also the client end at the same descriptor
  ASSERT_GT(child.pid, 0);
  ProcessIdentity id = SelfHolding(*pair.client);
  id.pid = static_cast<uint32_t>(child.pid);
  std::string why;
  std::shared_ptr<PeerProcess> peer = PeerProcess::Verify(id, *pair.server, &why);
  ASSERT_TRUE(peer) << why;
  static char source[4096];
  memset(source, 'P', sizeof(source));  // the child's copy was taken at fork: zeros
  std::vector<char> dst(4096, 'D');
  iovec l{dst.data(), dst.size()}, r{source, sizeof(source)};
  ASSERT_EQ(peer->CopyFrom(&l, 1, &r, 1), 0);
  EXPECT_EQ(dst, std::vector<char>(4096, 0));  // the child's bytes, not ours
  child.Kill();
  std::fill(dst.begin(), dst.end(), 'D');
  EXPECT_EQ(peer->CopyFrom(&l, 1, &r, 1), ESRCH);
  EXPECT_TRUE(peer->Gone());
  EXPECT_FALSE(peer->Alive());
  EXPECT_EQ(dst, std::vector<char>(4096, 'D'));  // nothing copied
  EXPECT_FALSE(peer->HoldsOtherEnd(*pair.server, id.conn_fd, &why));
}

TEST(Cma, ACopyFromAnAddressSpaceWithoutTheTokenIsScrubbedAndEndsTrust) {
  // What a process that exec'd another image (or a process that took over the
  // pid) looks like: alive, reachable, but without the token it was verified by.
  LoopbackPair pair;
  ASSERT_TRUE(pair.client && pair.server);
  ChildHolder child;
  ASSERT_GT(child.pid, 0);
  ProcessIdentity id = SelfHolding(*pair.client);
  id.pid = static_cast<uint32_t>(child.pid);
  std::string why;
  std::shared_ptr<PeerProcess> peer = PeerProcess::Verify(id, *pair.server, &why);
  ASSERT_TRUE(peer) << why;
  child.ChangeToken();
  static char source[8192];
  std::vector<char> dst(8192, 'D');
  iovec l{dst.data(), dst.size()}, r{source, sizeof(source)};
  int err = 0;
  for (int i = 0; i < 200 && err == 0; ++i) {  // until the child has overwritten its token
    err = peer->CopyFrom(&l, 1, &r, 1);
    if (err == 0) usleep(5000);
  }
  EXPECT_EQ(err, ESRCH);
  EXPECT_TRUE(peer->Gone());
  EXPECT_EQ(dst, std::vector<char>(8192, 0));  // scrubbed (the bytes were not trusted)
  std::fill(dst.begin(), dst.end(), 'D');
  EXPECT_EQ(peer->CopyFrom(&l, 1, &r, 1), ESRCH);  // trust does not come back
  EXPECT_EQ(dst, std::vector<char>(8192, 'D'));
}

TEST(Cma, CopiesAcrossManyUnevenlySplitRanges) {
  // 3000 local pieces of 7 bytes vs 1500 remote pieces of 14 bytes: more than
  // IOV_MAX on both sides and boundaries that never line up.
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  std::vector<char> src(21000), dst(21000, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i * 11 + 3);
  std::vector<iovec> local, remote;
  for (size_t i = 0; i < 3000; ++i) local.push_back({dst.data() + i * 7, 7});
  for (size_t i = 0; i < 1500; ++i) remote.push_back({src.data() + i * 14, 14});
  ASSERT_EQ(self->CopyFrom(local.data(), local.size(), remote.data(), remote.size()), 0);
  EXPECT_EQ(src, dst);
  std::vector<char> back(21000, 0);
  std::vector<iovec> back_iov{{back.data(), back.size()}};
  ASSERT_EQ(self->CopyFrom(back_iov.data(), 1, local.data(), local.size()), 0);
  EXPECT_EQ(back, src);
}

TEST(Cma, UnmappedPeerRangeIsEfaultAndWhatWasCopiedIsScrubbed) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  std::vector<char> buf(64, 'B');
  iovec local{buf.data(), buf.size()};
  iovec remote{reinterpret_cast<void *>(0x10), 64};
  EXPECT_EQ(self->CopyFrom(&local, 1, &remote, 1), EFAULT);
  EXPECT_EQ(buf, std::vector<char>(64, 'B'));  // nothing copied, nothing changed
  // A range whose second page is not mapped: the first page arrives, then the
  // copy stops; those bytes are zeroed rather than left half-done.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char *two = static_cast<char *>(mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(two, MAP_FAILED);
  memset(two, 'S', page);
  ASSERT_EQ(mprotect(two + page, page, PROT_NONE), 0);
  std::vector<char> dst(2 * page, 'D');
  iovec l{dst.data(), dst.size()}, r{two, 2 * page};
  EXPECT_EQ(self->CopyFrom(&l, 1, &r, 1), EFAULT);
  EXPECT_EQ(std::string(dst.data(), page), std::string(page, '\0'));
  EXPECT_EQ(std::string(dst.data() + page, page), std::string(page, 'D'));
  EXPECT_FALSE(self->Gone());  // a bad range is the caller's mistake, not a reason to distrust the peer
  munmap(two, 2 * page);
}

TEST(Cma, ACopyUnderAReleasedHoldIsThrownAwayAndTrustStays) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  std::vector<char> src(3 * kMaxBytesPerCall / 2, 'S'), dst(src.size(), 'D');
  iovec l{dst.data(), dst.size()}, r{src.data(), src.size()};
  WriteHold hold;
  const HoldWord word{hold.Addr(), hold.Value()};
  ASSERT_EQ(self->CopyFrom(&l, 1, &r, 1, Deadline::Never(), nullptr, nullptr, &word), 0);
  EXPECT_EQ(dst, src);  // held: copied
  WriteHold other;      // another hold never has the same value
  EXPECT_NE(other.Value(), hold.Value());
  hold.Release();
  std::fill(dst.begin(), dst.end(), 'D');
  // The requester let go: what the call read is zeroed (bytes of two calls), the copy stops.
  EXPECT_EQ(self->CopyFrom(&l, 1, &r, 1, Deadline::Never(), nullptr, nullptr, &word), ECANCELED);
  EXPECT_EQ(std::count(dst.begin(), dst.end(), 'S'), 0);
  EXPECT_FALSE(self->Gone());  // the requester's choice, not a reason to distrust it
  // A released word is reused with a fresh value: an old hold never matches again.
  WriteHold reused;
  const HoldWord stale{reused.Addr(), word.value};
  EXPECT_EQ(self->CopyFrom(&l, 1, &r, 1, Deadline::Never(), nullptr, nullptr, &stale), ECANCELED);
  // A hold word that is not mapped: the requester's mistake (EFAULT), nothing kept.
  const HoldWord unmapped{0x10, 1};
  std::fill(dst.begin(), dst.end(), 'D');
  EXPECT_EQ(self->CopyFrom(&l, 1, &r, 1, Deadline::Never(), nullptr, nullptr, &unmapped), EFAULT);
  EXPECT_EQ(std::count(dst.begin(), dst.end(), 'S'), 0);
  EXPECT_FALSE(self->Gone());
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
    ctx.same_host = SelfPeer();
    ServeLane(server, ctx);
  });
  std::shared_ptr<PeerProcess> self_peer = SelfPeer();
  PeerProcess *self = self_peer.get();
  auto R = [&](size_t off) { return reinterpret_cast<uintptr_t>(remote.data()) + off; };
  // Large enough for the same-host path (SameHostPays); and a small one that goes over the socket.
  for (size_t piece : {size_t{40 * 1024}, size_t{500}}) {
    std::vector<char> local(2 * piece, 'L');
    Segment segs[2] = {{reinterpret_cast<uintptr_t>(local.data()), R(100), piece},
                       {reinterpret_cast<uintptr_t>(local.data() + piece), R(120000), piece}};
    LaneResult r = ExecuteWithSameHost(requester, adxl::READ, segs, 2, 1, Deadline::AfterMs(3000), self);
    ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
    EXPECT_EQ(memcmp(local.data(), remote.data() + 100, piece), 0);
    EXPECT_EQ(memcmp(local.data() + piece, remote.data() + 120000, piece), 0);
  }

  for (size_t len : {size_t{8192}, size_t{300}}) {
    std::vector<char> data(len, static_cast<char>('W' + (len & 1)));
    Segment w{reinterpret_cast<uintptr_t>(data.data()), R(7000), len};
    LaneResult r = ExecuteWithSameHost(requester, adxl::WRITE, &w, 1, 2, Deadline::AfterMs(3000), self);
    ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
    EXPECT_EQ(std::string(remote.data() + 7000, len), std::string(data.begin(), data.end()));
  }

  std::vector<char> before = remote;
  std::vector<char> data(8192, 'X');
  Segment outside{reinterpret_cast<uintptr_t>(data.data()), R(remote.size() - 4096), 8192};
  LaneResult r = ExecuteWithSameHost(requester, adxl::WRITE, &outside, 1, 3, Deadline::AfterMs(3000), self);
  EXPECT_EQ(r.status, adxl::PARAM_INVALID);
  EXPECT_EQ(remote, before);

  Segment bad_local{0x10, R(0), 64 * 1024};
  r = ExecuteWithSameHost(requester, adxl::READ, &bad_local, 1, 4, Deadline::AfterMs(3000), self);
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
      if (verified) ctx.same_host = SelfPeer();
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

TEST(CmaLane, AStandingLeaseCoversRangesAcrossAdjacentListedRegions) {
  ReadLease lease;
  lease.regions = {{1000, 100}, {1100, 50}, {1150, 10}, {2000, 100}};  // sorted; three touch, one apart
  lease.max_len = 100;
  EXPECT_TRUE(lease.Covers(1000, 100));
  EXPECT_TRUE(lease.Covers(1090, 20));   // across the first boundary
  EXPECT_TRUE(lease.Covers(1000, 160));  // across both
  EXPECT_FALSE(lease.Covers(1000, 161)); // one byte past the chain
  EXPECT_FALSE(lease.Covers(1150, 900)); // across the gap to 2000
  EXPECT_FALSE(lease.Covers(999, 2));
  EXPECT_TRUE(lease.Covers(2050, 50));
  EXPECT_FALSE(lease.Covers(2050, 51));
  EXPECT_FALSE(lease.Covers(1000, 0));
  EXPECT_FALSE(lease.Covers(UINTPTR_MAX - 1, 8));  // wraps
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
    ctx.peer = "stranger";  // same_host stays null: not verified
    ServeLane(server, ctx);
  });
  std::vector<char> local(len, 'L');
  Segment s{reinterpret_cast<uintptr_t>(local.data()), reinterpret_cast<uintptr_t>(remote.data()), len};
  std::shared_ptr<PeerProcess> self = SelfPeer();
  LaneResult r = ExecuteWithSameHost(requester, adxl::READ, &s, 1, 1, Deadline::AfterMs(3000), self.get());
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
    ctx.same_host = SelfPeer();
    ServeLane(server, ctx);
  });
  uint8_t body[wire::kRangeBodyHeader + wire::kSameHostRemainingSize + wire::kSameHostEntrySize];
  wire::EncodeRangeHeader(1, /*timeout_ms=*/300, 64, body);
  wire::PutU64(body + wire::kRangeBodyHeader, 10000000000ULL);  // 10 s left
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

namespace llmdd {
namespace {

// A same-host write request as the wire carries it (docs/PROTOCOL.md "Same-host
// path"): the requester's remaining time in ns, then (server addr, len, requester addr).
std::string SameHostWrite(uint64_t request_id, uint64_t remaining_ns, const void *server_addr, uint64_t len,
                          const void *requester_addr) {
  std::string body(wire::kRangeBodyHeader + wire::kSameHostRemainingSize + wire::kSameHostEntrySize, '\0');
  auto *p = reinterpret_cast<uint8_t *>(body.data());
  wire::EncodeRangeHeader(1, /*timeout_ms=*/5000, len, p);
  wire::PutU64(p + wire::kRangeBodyHeader, remaining_ns);
  wire::PutU64(p + wire::kRangeBodyHeader + 8, reinterpret_cast<uintptr_t>(server_addr));
  wire::PutU64(p + wire::kRangeBodyHeader + 16, len);
  wire::PutU64(p + wire::kRangeBodyHeader + 24, reinterpret_cast<uintptr_t>(requester_addr));
  wire::MsgHeader h;
  h.type = static_cast<uint16_t>(wire::MsgType::kWriteRequest);
  h.flags = wire::kFlagSameHost;
  h.request_id = request_id;
  h.body_len = body.size();
  return std::string(reinterpret_cast<const char *>(&h), sizeof(h)) + body;
}

// A lane served in this process over a socketpair, its requester end held by the test.
struct SameHostLane {
  MemoryRegistry registry;
  PeerMappings *source_mappings = nullptr;  // set before Serve(): writes' shareable sources are mapped
  EngineMetrics *metrics = nullptr;
  std::unique_ptr<TcpStream> requester, server;
  std::thread serving;
  SameHostLane() {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) abort();
    requester = std::make_unique<TcpStream>(fds[0], "requester");
    server = std::make_unique<TcpStream>(fds[1], "server");
  }
  void Serve() {
    serving = std::thread([this] {
      ServeContext ctx;
      ctx.registry = &registry;
      ctx.peer = "requester";
      ctx.same_host = SelfPeer();
      ctx.source_mappings = source_mappings;
      ctx.metrics = metrics;
      ServeLane(*server, ctx);
    });
  }
  ~SameHostLane() {
    requester->Shutdown();
    if (serving.joinable()) serving.join();
  }
};

TEST(CmaLane, ASameHostWritesTimeIsADurationCountedFromItsReceipt) {
  SameHostLane lane;
  std::vector<char> region(4096, 0), source(64, 'S');
  lane.registry.Add(reinterpret_cast<uintptr_t>(region.data()), region.size(), 1);
  lane.Serve();
  // No time left: answered TIMEOUT, nothing read from the requester.
  std::string request = SameHostWrite(1, 0, region.data(), source.size(), source.data());
  ASSERT_EQ(lane.requester->Write(request.data(), request.size(), Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(lane.requester->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kWriteResponse));
  EXPECT_EQ(reply.status, adxl::TIMEOUT);
  std::string text(reply.body_len, '\0');
  ASSERT_EQ(lane.requester->Read(text.data(), text.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(text, "request arrived after its deadline");
  EXPECT_EQ(region[0], 0);
  // 5 s from receipt: applied, whatever this host's CLOCK_MONOTONIC reads.
  request = SameHostWrite(2, 5000000000ULL, region.data(), source.size(), source.data());
  ASSERT_EQ(lane.requester->Write(request.data(), request.size(), Deadline::AfterMs(1000)), IoStatus::kOk);
  ASSERT_EQ(lane.requester->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.status, adxl::SUCCESS);
  EXPECT_EQ(reply.request_id, 2U);
  EXPECT_EQ(std::string(region.data(), 64), std::string(64, 'S'));
}

TEST(CmaLane, AWriteWhoseRequesterHungUpIsNotApplied) {
  SameHostLane lane;
  std::vector<char> region(4096, 0), source(64, 'S');
  lane.registry.Add(reinterpret_cast<uintptr_t>(region.data()), region.size(), 1);
  // The requester gave up (it shuts its lanes down when it does) before the
  // server got to the request: plenty of time left by the count, yet no byte is read.
  const std::string request = SameHostWrite(3, 5000000000ULL, region.data(), source.size(), source.data());
  ASSERT_EQ(lane.requester->Write(request.data(), request.size(), Deadline::AfterMs(1000)), IoStatus::kOk);
  ASSERT_EQ(shutdown(lane.requester->NativeHandle(), SHUT_WR), 0);
  lane.Serve();
  char byte;
  EXPECT_EQ(lane.requester->Read(&byte, 1, Deadline::AfterMs(3000)), IoStatus::kClosed);  // no answer, lane closed
  lane.serving.join();
  EXPECT_EQ(region[0], 0);
  EXPECT_EQ(region[63], 0);
}

// A server stopped between its check whether the requester gave up and its
// copy call (descheduled, or frozen by SIGSTOP): the requester's request ended
// meanwhile (TIMEOUT) and the caller reused its buffer. The hold, read by the
// copy call itself, makes the server throw away what it read then.
std::atomic<int> g_window_state{0};  // 0 idle, 1 a server thread waits in the window, 2 go on
void PauseInTheCopyWindow(const char *name) {
  if (strcmp(name, "ServeSameHostWrite:before_copy") != 0) return;
  int expected = 0;
  if (!g_window_state.compare_exchange_strong(expected, 1)) return;  // once per arming
  for (int i = 0; i < 5000 && g_window_state.load() != 2; ++i) usleep(1000);
}

TEST(CmaLane, AHeldWriteWhoseRequesterLetGoBeforeTheCopyLeavesNothingOfItsBuffer) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  SetSyncPointCallback(&PauseInTheCopyWindow);
  // Control first (no hold, as a peer of an earlier revision sends it): the
  // server cannot tell, and copies the bytes the caller wrote after its
  // request ended. This is why writes to such a peer go over TCP.
  for (bool held : {false, true}) {
    SCOPED_TRACE(held ? "held write" : "write without a hold");
    SameHostLane lane;
    std::vector<char> region(1 << 20, 0), source(1 << 20, 'A');
    lane.registry.Add(reinterpret_cast<uintptr_t>(region.data()), region.size(), 1);
    lane.Serve();
    g_window_state = 0;
    Segment seg{reinterpret_cast<uintptr_t>(source.data()), reinterpret_cast<uintptr_t>(region.data()),
                source.size()};
    LaneResult r = ExecuteSameHostTransfer(*lane.requester, adxl::WRITE, &seg, 1, 5, Deadline::AfterMs(300), *self,
                                           held);
    EXPECT_EQ(r.status, adxl::TIMEOUT) << r.error;  // the server waits in the window
    ASSERT_EQ(g_window_state.load(), 1) << "the server never reached its copy";
    // The request ended: the caller reuses its buffer. (The lane is not shut
    // down: the server is past that check.)
    std::fill(source.begin(), source.end(), 'N');
    g_window_state = 2;
    char byte;
    EXPECT_NE(lane.requester->Read(&byte, 1, Deadline::AfterMs(3000)), IoStatus::kTimeout);  // answered or closed
    lane.requester->Shutdown();
    lane.serving.join();
    const auto reused = std::count(region.begin(), region.end(), 'N');
    if (held) {
      EXPECT_EQ(reused, 0) << "bytes the caller wrote after its request ended reached the server's memory";
      EXPECT_EQ(std::count(region.begin(), region.end(), 0), static_cast<long>(region.size()));
    } else {
      EXPECT_EQ(reused, static_cast<long>(region.size())) << "the window was not reached (control)";
    }
  }
  SetSyncPointCallback(nullptr);
}

TEST(CmaLane, AWriteHoldOnAnythingButASameHostWriteIsAProtocolError) {
  SameHostLane lane;
  std::vector<char> region(4096, 0), source(64, 'S');
  lane.registry.Add(reinterpret_cast<uintptr_t>(region.data()), region.size(), 1);
  lane.Serve();
  std::string request = SameHostWrite(4, 5000000000ULL, region.data(), source.size(), source.data());
  wire::MsgHeader h;
  memcpy(&h, request.data(), sizeof(h));
  h.type = static_cast<uint16_t>(wire::MsgType::kReadRequest);
  h.flags |= wire::kFlagWriteHold;
  memcpy(request.data(), &h, sizeof(h));
  ASSERT_EQ(lane.requester->Write(request.data(), request.size(), Deadline::AfterMs(1000)), IoStatus::kOk);
  wire::MsgHeader reply;
  ASSERT_EQ(lane.requester->Read(&reply, sizeof(reply), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_EQ(reply.type, static_cast<uint16_t>(wire::MsgType::kError));
  EXPECT_EQ(reply.status, adxl::PARAM_INVALID);
  std::string text(reply.body_len, '\0');
  ASSERT_EQ(lane.requester->Read(text.data(), text.size(), Deadline::AfterMs(2000)), IoStatus::kOk);
  EXPECT_NE(text.find("write hold"), std::string::npos) << text;
  char byte;
  EXPECT_EQ(lane.requester->Read(&byte, 1, Deadline::AfterMs(3000)), IoStatus::kClosed);
  EXPECT_EQ(region[0], 0);
}

TEST(CmaLane, WritesGoOverTcpToAPeerThatDoesNotHonourHolds) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  std::vector<char> data(1 << 20, 'w');
  Segment seg{reinterpret_cast<uintptr_t>(data.data()), 0x10000, data.size()};
  TransferBatch batch;
  batch.op = adxl::WRITE;
  batch.segs = &seg;
  batch.count = 1;
  batch.total_bytes = data.size();
  batch.deadline = Deadline::AfterMs(1000);
  SameHostLink unheld(nullptr, self, /*write_hold=*/false);
  TransportResult r = unheld.Submit(batch);
  EXPECT_TRUE(r.declined);  // nothing sent: the next path (TCP) takes it
}

TEST(CmaLane, TheRequesterSendsItsRemainingTimeLessAMargin) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  for (int64_t timeout_ms : {1000, 4}) {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
    TcpStream requester(fds[0], "requester"), server(fds[1], "server");
    uint64_t remaining_ns = 0;
    uint32_t flags = 0;
    std::thread fake([&] {
      wire::MsgHeader h;
      if (server.Read(&h, sizeof(h), Deadline::AfterMs(2000)) != IoStatus::kOk) return;
      std::vector<uint8_t> body(h.body_len);
      if (server.Read(body.data(), body.size(), Deadline::AfterMs(2000)) != IoStatus::kOk) return;
      flags = h.flags;
      remaining_ns = wire::GetU64(body.data() + wire::kRangeBodyHeader);
      wire::MsgHeader reply;
      reply.type = static_cast<uint16_t>(wire::MsgType::kWriteResponse);
      reply.request_id = h.request_id;
      server.Write(&reply, sizeof(reply), Deadline::AfterMs(2000));
    });
    std::vector<char> source(8192, 'w');
    Segment seg{reinterpret_cast<uintptr_t>(source.data()), 0x10000, source.size()};
    const Deadline deadline = Deadline::AfterMs(timeout_ms);
    LaneResult r = ExecuteWithSameHost(requester, adxl::WRITE, &seg, 1, 9, deadline, self.get());
    fake.join();
    ASSERT_EQ(flags, wire::kFlagSameHost) << "not sent as a same-host request";
    if (timeout_ms == 1000) {  // 4 ms may run out on a busy host
      EXPECT_EQ(r.status, adxl::SUCCESS) << r.error;
    }
    const uint64_t whole = static_cast<uint64_t>(timeout_ms) * 1000000;
    const uint64_t margin = std::min<uint64_t>(wire::kSameHostMarginNs, whole / 4);
    EXPECT_LE(remaining_ns, whole - margin) << timeout_ms;
    if (timeout_ms == 1000) {
      EXPECT_GT(remaining_ns, whole - margin - 200000000) << "the request took 200 ms to send?";
    }
  }
}

}  // namespace
}  // namespace llmdd

namespace llmdd {
namespace {

// A standing lease over shareable host memory (MallocMem's, host_memory.h)
// says where it lives; the requester maps it once and reads it with memcpy.
TEST(SameHostMappings, ALeaseMapsShareableMemoryAndReadsItThroughTheMapping) {
  HostAllocation a;
  ASSERT_EQ(AllocateHostMemory(4u << 20, &a), HostAllocStatus::kOk);
  if (a.huge_tlb) {
    FreeHostMemory(a.addr);
    GTEST_SKIP() << "reserved huge pages: MallocMem memory is not shareable here";
  }
  ASSERT_GE(a.fd, 0);
  auto *bytes = static_cast<uint8_t *>(a.addr);
  for (size_t i = 0; i < a.mapped; ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 3);
  const uintptr_t shared_addr = reinterpret_cast<uintptr_t>(bytes) + 4096;
  const size_t shared_len = 1u << 20;
  std::vector<char> plain(8192, 'P');  // ordinary memory: listed, not mappable
  MemoryRegistry registry;
  registry.Add(shared_addr, shared_len, 1);
  registry.Add(reinterpret_cast<uintptr_t>(plain.data()), plain.size(), 2);
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  TcpStream requester(fds[0], "requester"), server(fds[1], "server");
  std::thread serving([&] {
    ServeContext ctx;
    ctx.registry = &registry;
    ctx.peer = "peer";
    ctx.same_host = SelfPeer();
    ServeLane(server, ctx);
  });
  // Not asked for: no trailer (what a requester that predates it gets).
  ReadLease plain_lease;
  ASSERT_EQ(ExecuteLeaseRequest(requester, 4, Deadline::AfterMs(2000), &plain_lease).status, adxl::SUCCESS);
  EXPECT_FALSE(plain_lease.any_mapped);
  EXPECT_EQ(plain_lease.regions.size(), 2U);

  ReadLease lease;
  std::vector<wire::LeaseMapping> listed;
  LaneResult r = ExecuteLeaseRequest(requester, 5, Deadline::AfterMs(2000), &lease, &listed);
  ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
  ASSERT_EQ(listed.size(), 1U);  // the plain vector has no shared backing
  EXPECT_EQ(listed[0].fd, static_cast<uint32_t>(a.fd));
  EXPECT_EQ(listed[0].serial, a.serial);
  EXPECT_EQ(listed[0].offset, 4096U);
  EXPECT_FALSE(lease.any_mapped);  // listed, not mapped yet

  PeerMappings mappings(1ULL << 30);
  std::shared_ptr<PeerProcess> self = SelfPeer();
  mappings.Attach(*self, listed, &lease);
  ASSERT_TRUE(lease.any_mapped);
  EXPECT_EQ(mappings.MappedBytes(), a.mapped);  // the whole file, once
  const uint8_t *source = lease.MappedSource(shared_addr + 100, 64);
  ASSERT_NE(source, nullptr);
  EXPECT_NE(source, bytes + 4096 + 100);  // our own read-only mapping of the file
  EXPECT_EQ(memcmp(source, bytes + 4096 + 100, 64), 0);
  bytes[4096 + 100] ^= 0xFF;  // shared, not a snapshot
  EXPECT_EQ(source[0], bytes[4096 + 100]);
  EXPECT_NE(lease.MappedSource(shared_addr, shared_len), nullptr);
  EXPECT_EQ(lease.MappedSource(shared_addr, shared_len + 1), nullptr);  // past the registration
  EXPECT_EQ(lease.MappedSource(shared_addr - 1, 2), nullptr);
  EXPECT_EQ(lease.MappedSource(reinterpret_cast<uintptr_t>(plain.data()), 8), nullptr);
  EXPECT_TRUE(lease.Covers(reinterpret_cast<uintptr_t>(plain.data()), 8));  // still readable, with the kernel

  // The next lease reuses the mapping (same serial), the old lease keeps its own alive.
  ReadLease again;
  std::vector<wire::LeaseMapping> listed_again;
  ASSERT_EQ(ExecuteLeaseRequest(requester, 6, Deadline::AfterMs(2000), &again, &listed_again).status,
            adxl::SUCCESS);
  mappings.Attach(*self, listed_again, &again);
  EXPECT_EQ(again.MappedSource(shared_addr + 100, 64), source);
  EXPECT_EQ(mappings.MappedBytes(), a.mapped);
  requester.Shutdown();
  serving.join();
  FreeHostMemory(a.addr);
  // The free gives the pages back at once (it punches the file): a mapping
  // kept by a peer reads zeros, and holds no memory.
  EXPECT_EQ(source[0], 0);
}

// What the requester checks before it maps a descriptor a peer named.
TEST(SameHostMappings, OnlySealedTmpfsFilesAsListedAndWithinTheCapAreMapped) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  auto make_memfd = [](size_t size, bool seal) {
    const int fd = memfd_create("t", MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0));
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
    if (seal) {
      EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    }
    return fd;
  };
  auto identity = [](int fd, wire::LeaseMapping *m) {
    struct stat st {};
    ASSERT_EQ(fstat(fd, &st), 0);
    m->fd = static_cast<uint32_t>(fd);
    m->inode = st.st_ino;
    m->device = st.st_dev;
  };
  // Maps entry `m` for one listed region of `len` bytes: whether it was mapped.
  uint64_t serial = 100;
  auto maps = [&](wire::LeaseMapping m, uint64_t len, uint64_t cap) {
    PeerMappings mappings(cap);
    ReadLease lease;
    lease.regions = {{0x10000, len, nullptr, 0}};
    lease.Seal();
    m.range_index = 0;
    m.serial = ++serial;
    mappings.Attach(*self, {m}, &lease);
    return lease.regions[0].mapped != nullptr && lease.any_mapped;
  };
  const int good = make_memfd(1 << 20, true);
  wire::LeaseMapping m;
  identity(good, &m);
  EXPECT_TRUE(maps(m, 4096, 1ULL << 30));
  m.offset = (1 << 20) - 4096;
  EXPECT_TRUE(maps(m, 4096, 1ULL << 30));
  EXPECT_FALSE(maps(m, 4097, 1ULL << 30));  // past the end of the file
  m.offset = 0;
  EXPECT_FALSE(maps(m, 4096, (1 << 20) - 1));  // over llmdd.SameHostMapMaxBytes
  EXPECT_FALSE(maps(m, 4096, 0));              // mapping off
  wire::LeaseMapping wrong = m;
  wrong.inode += 1;
  EXPECT_FALSE(maps(wrong, 4096, 1ULL << 30));  // the descriptor holds another file
  wrong = m;
  wrong.fd = 1000000;
  EXPECT_FALSE(maps(wrong, 4096, 1ULL << 30));  // no such descriptor
  const int unsealed = make_memfd(1 << 20, false);
  identity(unsealed, &m);
  EXPECT_FALSE(maps(m, 4096, 1ULL << 30));  // could shrink under our reads (SIGBUS)
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  identity(pipe_fds[0], &m);
  EXPECT_FALSE(maps(m, 4096, 1ULL << 30));  // not a regular file
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  close(unsealed);
  close(good);
}

// A same-host WRITE from shareable memory (kFlagSourceMappings): the server
// maps the source and copies with memcpy; the hold is read after the chunk,
// so a requester that let go leaves nothing of its buffer, as with the kernel copy.
TEST(SameHostMappings, AMappedWriteSourceIsCopiedAndAReleasedHoldLeavesNothing) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  ASSERT_TRUE(self);
  HostAllocation a;
  ASSERT_EQ(AllocateHostMemory(1u << 20, &a), HostAllocStatus::kOk);
  if (a.fd < 0) {
    FreeHostMemory(a.addr);
    GTEST_SKIP() << "MallocMem memory is not shareable here (reserved huge pages)";
  }
  auto *source = static_cast<char *>(a.addr);
  for (bool released : {false, true}) {
    SCOPED_TRACE(released ? "hold released before the copy" : "plain mapped write");
    PeerMappings mappings(1ULL << 30);
    EngineMetrics metrics;
    SameHostLane lane;
    lane.source_mappings = &mappings;
    lane.metrics = &metrics;
    std::vector<char> region(1 << 20, 0);
    lane.registry.Add(reinterpret_cast<uintptr_t>(region.data()), region.size(), 1);
    std::memset(source, 'A', region.size());
    if (released) SetSyncPointCallback(&PauseInTheCopyWindow);
    g_window_state = 0;
    lane.Serve();
    Segment seg{reinterpret_cast<uintptr_t>(source), reinterpret_cast<uintptr_t>(region.data()), region.size()};
    LaneResult r = ExecuteSameHostTransfer(*lane.requester, adxl::WRITE, &seg, 1, 5,
                                           Deadline::AfterMs(released ? 300 : 5000), *self, /*write_hold=*/true,
                                           nullptr, /*source_mappings=*/true);
    MetricsSnapshot counted;
    if (!released) {
      ASSERT_EQ(r.status, adxl::SUCCESS) << r.error;
      EXPECT_EQ(std::count(region.begin(), region.end(), 'A'), static_cast<long>(region.size()));
      metrics.Snapshot(&counted);
      EXPECT_EQ(counted.served_same_host_writes[metrics::kMapped], 1U);
      EXPECT_EQ(counted.served_same_host_writes[metrics::kKernelCopy], 0U);
      EXPECT_EQ(mappings.MappedBytes(), a.mapped);  // kept for the session's next writes
      continue;
    }
    EXPECT_EQ(r.status, adxl::TIMEOUT) << r.error;  // the server waits in the window
    ASSERT_EQ(g_window_state.load(), 1) << "the server never reached its copy";
    std::memset(source, 'N', region.size());  // the request ended: the caller reuses its buffer
    g_window_state = 2;
    char byte;
    EXPECT_NE(lane.requester->Read(&byte, 1, Deadline::AfterMs(3000)), IoStatus::kTimeout);  // answered or closed
    lane.requester->Shutdown();
    lane.serving.join();
    EXPECT_EQ(std::count(region.begin(), region.end(), 'N'), 0)
        << "bytes the caller wrote after its request ended reached the server's memory";
    EXPECT_EQ(std::count(region.begin(), region.end(), 0), static_cast<long>(region.size()));
    SetSyncPointCallback(nullptr);
  }
  FreeHostMemory(a.addr);
}

// A write source that did not fit under the cap is tried again once room is
// made (a limit of ours, not the file's fault); mappings no copy holds are let
// go to make it. Files that fail a check are not tried again.
TEST(SameHostMappings, WriteSourcesOverTheCapWaitForRoomAndBadFilesAreNotRetried) {
  std::shared_ptr<PeerProcess> self = SelfPeer();
  auto memfd = [](uint64_t serial, bool seal, wire::SourceMapping *m) {
    const int fd = memfd_create("t", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, 1 << 20), 0);
    if (seal) {
      EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
    }
    struct stat st {};
    EXPECT_EQ(fstat(fd, &st), 0);
    *m = {static_cast<uint32_t>(fd), serial, static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_dev),
          0x100000000ULL * serial, 1 << 20};
    return fd;
  };
  PeerMappings mappings(1 << 20);  // room for one
  wire::SourceMapping a, b, bad;
  const int fd_a = memfd(1, true, &a), fd_b = memfd(2, true, &b), fd_bad = memfd(3, false, &bad);
  std::shared_ptr<const MappedFile> held = mappings.Source(*self, a);
  ASSERT_TRUE(held);
  EXPECT_EQ(mappings.Source(*self, a), held);  // the same mapping for the same allocation
  EXPECT_FALSE(mappings.Source(*self, b));    // over the cap while a copy holds a
  held.reset();                               // the copy ended
  std::shared_ptr<const MappedFile> mapped_b = mappings.Source(*self, b);
  EXPECT_TRUE(mapped_b);                      // a let go to make room
  EXPECT_EQ(mappings.MappedBytes(), 1U << 20);
  mapped_b.reset();
  EXPECT_FALSE(mappings.Source(*self, bad));  // unsealed: refused
  ASSERT_EQ(fcntl(fd_bad, F_ADD_SEALS, F_SEAL_SHRINK), 0);
  EXPECT_FALSE(mappings.Source(*self, bad));  // and not tried again
  wire::SourceMapping reused = a;             // a serial that named another file before
  reused.inode += 1;
  ASSERT_TRUE(mappings.Source(*self, a));
  EXPECT_FALSE(mappings.Source(*self, reused));
  mappings.Clear();
  EXPECT_EQ(mappings.MappedBytes(), 0U);
  close(fd_a);
  close(fd_b);
  close(fd_bad);
}

}  // namespace
}  // namespace llmdd
