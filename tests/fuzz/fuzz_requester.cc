// fuzz_requester: the requesting side of a lane (ExecuteTransfer for READ and
// WRITE over TCP and over the same-host path, ExecuteAppCall) against an
// untrusted serving peer, over a socketpair.
//
// Input layout:
//   bytes 0-1 four 4-bit operations (little-endian, low nibble first), each % 7:
//             0 READ of one segment, 1 WRITE of two segments, 2 app call,
//             3 READ of three segments, 4 same-host READ of two 40 KiB
//             segments, 5 same-host WRITE of one 8 KiB segment (sizes for
//             which the same-host path is used, see SameHostPays), 6 standing
//             read lease request; they run in order on one stream until one
//             reports it broken
//   bytes 2.. the bytes the peer answers with (responses are expected for
//             request ids 1, 2, 3, 4; a same-host READ answered with a lease
//             is followed by our Release).
// Same-host operations name this process as the server (so its copies really
// run); the "server memory" they copy from is a guarded buffer S.
//
// Local memory is a set of guarded buffers (ASan reports any byte written
// outside the segments, also by readv/process_vm_readv). Checked besides
// ASan/UBSan/hangs: a WRITE never modifies its local source, a same-host READ
// that reports SUCCESS delivered exactly S's bytes, a transfer returns only
// documented status codes and a failed one always carries a reason and a broken stream is reported as SUCCESS only by a
// same-host READ that got its data but could not send Release.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/log.h"
#include "engine/lane.h"
#include "transport/shm/same_host_link.h"
#include "fuzz_common.h"
#include "transport/tcp/tcp_stream.h"

using namespace llmdd;
using llmdd::fuzz::GuardedBuffer;

namespace {

constexpr size_t kSegLens[3] = {16, 33, 7};
constexpr size_t kSameHostReadLen = 40 * 1024, kSameHostWriteLen = 8 * 1024;
static_assert(2 * kSameHostReadLen >= kSameHostMinReadBytes, "same-host READs must take the same-host path");
constexpr size_t kServerStride = kSameHostReadLen + 24;  // segment s of S starts at s * kServerStride
constexpr size_t kServerLen = 2 * kServerStride;
bool g_debug = false;  // LLMDD_FUZZ_DEBUG=1: keep the engine's log, print each outcome

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
  g_debug = getenv("LLMDD_FUZZ_DEBUG") != nullptr;
  if (!g_debug) SetLogLevel(LogLevel::kOff);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const unsigned ops = data[0] | (data[1] << 8);
  GuardedBuffer server(kServerLen);
  for (size_t i = 0; i < kServerLen; ++i) server.data()[i] = static_cast<uint8_t>(0xC0 ^ i ^ (i >> 8));
  int fds[2];
  if (!fuzz::SocketPair(fds)) abort();
  fuzz::PeerFeeder peer(fds[1], data + 2, size - 2);
  TcpStream stream(fds[0], "fuzz-server");
  for (int i = 0; i < 4; ++i) {
    const unsigned op = ((ops >> (4 * i)) & 15) % 7;
    const uint64_t request_id = static_cast<uint64_t>(i) + 1;
    LaneResult result;
    if (op == 2) {
      std::string response;
      result = ExecuteAppCall(stream, 3, std::string("\x07\0\0\0\0\0\0\0", 8), request_id, Deadline::AfterMs(2000),
                              &response);
      FUZZ_CHECK(response.size() <= wire::kMaxAppBody, "app response of %zu bytes", response.size());
    } else if (op == 6) {
      ReadLease lease;
      result = ExecuteLeaseRequest(stream, request_id, Deadline::AfterMs(2000), &lease);
      if (result.status == adxl::SUCCESS) {
        FUZZ_CHECK(lease.regions.size() <= wire::kMaxLeaseRegions, "lease of %zu regions", lease.regions.size());
        FUZZ_CHECK(lease.expiry <= Deadline::Clock::now() + std::chrono::milliseconds(wire::kStandingLeaseMs),
                   "a peer extended the lease beyond kStandingLeaseMs");
        for (const auto &r : lease.regions) FUZZ_CHECK(r.len > 0 && r.addr + r.len > r.addr, "unusable lease region");
      }
    } else {
      const bool same_host = op >= 4;
      const bool is_read = op == 0 || op == 3 || op == 4;
      const size_t count = op == 0 || op == 5 ? 1 : op == 3 ? 3 : 2;
      size_t lens[3];
      for (size_t s = 0; s < count; ++s)
        lens[s] = op == 4 ? kSameHostReadLen : op == 5 ? kSameHostWriteLen : kSegLens[s];
      // A WRITE's source is the local memory as the caller left it; a READ's
      // destination starts out different from what it should receive.
      std::vector<std::unique_ptr<GuardedBuffer>> buffers;
      for (size_t s = 0; s < count; ++s) {
        buffers.push_back(std::make_unique<GuardedBuffer>(lens[s]));
        memset(buffers[s]->data(), 0x5A, lens[s]);
      }
      Segment segs[3];
      for (size_t s = 0; s < count; ++s) {
        const uint64_t remote = same_host ? server.addr() + s * kServerStride : 0x10000 + s * 0x100000;
        segs[s] = {buffers[s]->addr(), remote, lens[s]};
      }
      const adxl::TransferOp op_kind = is_read ? adxl::READ : adxl::WRITE;
      result = same_host ? ExecuteSameHostTransfer(stream, op_kind, segs, count, request_id, Deadline::AfterMs(2000),
                                                   *fuzz::SelfAsPeer())
                         : ExecuteTransfer(stream, op_kind, segs, count, request_id, Deadline::AfterMs(2000));
      if (!is_read) {
        for (size_t s = 0; s < count; ++s)
          for (size_t k = 0; k < lens[s]; ++k)
            FUZZ_CHECK(buffers[s]->data()[k] == 0x5A, "WRITE modified its local source");
      }
      if (is_read && same_host && result.status == adxl::SUCCESS) {
        for (size_t s = 0; s < count; ++s)
          FUZZ_CHECK(memcmp(buffers[s]->data(), server.data() + s * kServerStride, lens[s]) == 0,
                     "same-host READ reported SUCCESS without the server's bytes in segment %zu", s);
      }
    }
    if (g_debug)
      fprintf(stderr, "  op %u (request %llu): status %u%s %s\n", op, static_cast<unsigned long long>(request_id),
              result.status, result.broken ? " broken" : "", result.error.c_str());
    // An app call's status is the handler's answer (no text, checked by the layer
    // above); a transfer returns only documented codes and its failures say why.
    if (op != 2) {
      FUZZ_CHECK(wire::SanitizePeerStatus(result.status) == result.status, "undocumented status %u returned",
                 result.status);
      if (result.status != adxl::SUCCESS) FUZZ_CHECK(!result.error.empty(), "failure without a reason");
    }
    if (result.broken) {
      // Exception: a same-host READ whose data arrived within the lease but whose
      // Release could not be sent is SUCCESS on a stream that must be dropped.
      FUZZ_CHECK(result.status != adxl::SUCCESS || op == 4, "broken stream with SUCCESS");
      break;
    }
  }
  stream.Shutdown();
  peer.Join();
  return 0;
}
