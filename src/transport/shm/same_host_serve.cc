#include "transport/shm/same_host_serve.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>

#include "common/host_memory.h"
#include "common/log.h"
#include "common/sync_point.h"
#include "transport/fault_injection.h"
#include "engine/metrics.h"
#include "transport/shm/cma.h"
#include "transport/shm/peer_mappings.h"

namespace llmdd {

using wire::MsgHeader;
using wire::MsgType;

namespace {

// The requester's source ranges as pointers into our mappings of its
// shareable allocations (`files` keeps them mapped); false when a range lies
// in none of `sources` or an allocation cannot be mapped.
bool MappedSources(const ServeContext &ctx, const std::vector<wire::SourceMapping> &sources,
                   const std::vector<iovec> &peer_iov, std::vector<std::shared_ptr<const MappedFile>> *files,
                   std::vector<const uint8_t *> *from) {
  if (sources.empty() || ctx.source_mappings == nullptr || !ctx.source_mappings->Enabled()) return false;
  files->assign(sources.size(), nullptr);
  from->clear();
  for (const iovec &range : peer_iov) {
    const uint64_t addr = reinterpret_cast<uintptr_t>(range.iov_base), len = range.iov_len;
    // Sorted by base and apart (DecodeSourceMappings): the last one at or below addr.
    auto it = std::upper_bound(sources.begin(), sources.end(), addr,
                               [](uint64_t a, const wire::SourceMapping &m) { return a < m.base; });
    if (it == sources.begin()) return false;
    const size_t k = static_cast<size_t>(it - sources.begin()) - 1;
    if (addr - sources[k].base > sources[k].size || len > sources[k].size - (addr - sources[k].base)) return false;
    if (!(*files)[k]) {
      (*files)[k] = ctx.source_mappings->Source(*ctx.same_host, sources[k]);
      if (!(*files)[k]) return false;
    }
    from->push_back((*files)[k]->Base() + (addr - sources[k].base));
  }
  return true;
}

// memcpy from `from[i]` into iov[i], in chunks of at most kMaxBytesPerCall,
// with CopyFrom's rules: before each chunk the cancel flag, `abandoned` and
// the deadline are looked at; after it the requester's hold word is read with
// process_vm_readv (which also checks the process is still the verified one).
// Returns 0 or CopyFrom's errno; on failure every byte it wrote is zeroed, as
// CopyFrom does (the last chunk's may postdate the requester letting go).
int MappedCopy(PeerProcess &peer, const std::vector<iovec> &iov, const std::vector<const uint8_t *> &from,
               Deadline deadline, const std::atomic<bool> *cancel, const std::function<bool()> &abandoned,
               const HoldWord *hold) {
  size_t i = 0;
  uint64_t off = 0;
  // Zeroes [start of iov, (i, off)).
  auto scrub = [&iov, &i, &off] {
    for (size_t z = 0; z <= i && z < iov.size(); ++z)
      memset(iov[z].iov_base, 0, z < i ? iov[z].iov_len : off);
  };
  while (i < iov.size()) {
    int stop = 0;
    if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) stop = ECANCELED;
    if (stop == 0 && abandoned && abandoned()) stop = ECANCELED;
    if (stop == 0 && deadline.Expired()) stop = ETIMEDOUT;
    if (stop != 0) {
      scrub();
      return stop;
    }
    uint64_t chunk = 0;
    while (i < iov.size() && chunk < kMaxBytesPerCall) {
      const uint64_t n = std::min<uint64_t>(iov[i].iov_len - off, kMaxBytesPerCall - chunk);
      memcpy(static_cast<uint8_t *>(iov[i].iov_base) + off, from[i] + off, n);
      chunk += n;
      off += n;
      if (off == iov[i].iov_len) {
        ++i;
        off = 0;
      }
    }
    int err = 0;
    if (hold != nullptr) {
      uint64_t word = 0;
      iovec local{&word, sizeof(word)}, remote{reinterpret_cast<void *>(static_cast<uintptr_t>(hold->addr)),
                                                sizeof(word)};
      err = peer.CopyFrom(&local, 1, &remote, 1, deadline);
      if (err == 0 && word != hold->value) err = ECANCELED;
    } else if (!peer.Alive()) {
      err = ESRCH;
    }
    if (err != 0) {
      scrub();
      return err;
    }
  }
  return 0;
}

}  // namespace

bool SameHostTrustHolds(const ServeContext &ctx, const char *what) {
  if (ctx.same_host->Alive()) return true;
  LOG_WARN("refused same-host %s from %s: the verified process (pid %d) is gone, same-host trust has ended", what,
           ctx.peer.c_str(), static_cast<int>(ctx.same_host->Pid()));
  return false;
}

bool HoldSameHostRead(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx, uint32_t timeout_ms) {
  // The requester copies out of our memory itself: keep the regions pinned
  // for a bounded lease, until it says Release. We never write its memory.
  const uint32_t lease_ms =
      std::min({std::max<uint32_t>(timeout_ms, 1), wire::kMaxLeaseMs, std::max<uint32_t>(ctx.max_lease_ms, 1)});
  Deadline lease = Deadline::AfterMs(lease_ms);
  MsgHeader go;
  go.version = stream.ProtocolVersion();
  go.type = static_cast<uint16_t>(MsgType::kReadResponse);
  go.request_id = header.request_id;
  go.flags = lease_ms;
  if (stream.Write(&go, sizeof(go), lease) != IoStatus::kOk) return false;
  MsgHeader release;
  IoStatus io = stream.Read(&release, sizeof(release), lease);
  if (io != IoStatus::kOk || wire::CheckHeader(release, stream.ProtocolVersion()) != "" ||
      release.type != static_cast<uint16_t>(MsgType::kRelease) || release.request_id != header.request_id) {
    LOG_WARN("same-host read lease of %s ended without release (%s): closing the lane", ctx.peer.c_str(),
             io == IoStatus::kOk ? "unexpected message" : IoStatusName(io));
    return false;  // pins are released on return
  }
  return true;
}

bool ServeSameHostWrite(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx,
                        const std::vector<iovec> &iov, const std::vector<iovec> &peer_iov, Deadline deadline,
                        Deadline requester_deadline, RegionPins &pins, const HoldWord *hold,
                        const std::vector<wire::SourceMapping> &sources) {
  // Write: one copy from the requester's ranges into our registered memory,
  // with the regions pinned. The requester's memory is only read.
  if (requester_deadline.Expired()) {
    pins.Release();
    LOG_WARN("same-host write from %s arrived after its deadline: not applied", ctx.peer.c_str());
    return SendResponse(stream, MsgType::kWriteResponse, header.request_id, adxl::TIMEOUT,
                        "request arrived after its deadline", deadline);
  }
  // Checked before every copy call (<= 8 MiB): a requester that gave up shut
  // the lane down. That check and the call are not one step (we may stop, or
  // be stopped, between them): the hold, read by the call itself, is what
  // makes a call that started after the requester let go throw its bytes away.
  bool gave_up = false;
  const std::function<bool()> abandoned = [&stream, &gave_up] {
    gave_up = RequesterHungUp(stream);
    if (!gave_up) {
      // Tests stop here: the window between the check and the call.
      SyncPoint("ServeSameHostWrite:before_copy");
      InjectFreezeBeforeServedCopy();
    }
    return gave_up;
  };
  // Sources in the requester's shareable memory that we map: memcpy from
  // there (no page pinning), else process_vm_readv.
  thread_local std::vector<std::shared_ptr<const MappedFile>> files;
  thread_local std::vector<const uint8_t *> from;
  const bool mapped = MappedSources(ctx, sources, peer_iov, &files, &from);
  int err = mapped ? MappedCopy(*ctx.same_host, iov, from, deadline.EarlierOf(requester_deadline), &pins.Broken(),
                                abandoned, hold)
                   : ctx.same_host->CopyFrom(iov.data(), iov.size(), peer_iov.data(), peer_iov.size(),
                                             deadline.EarlierOf(requester_deadline), &pins.Broken(), abandoned,
                                             hold);
  files.clear();  // let go of what this copy held (the session keeps the mappings)
  if (err == 0 && ctx.metrics != nullptr) {
    uint64_t bytes = 0;
    for (const iovec &v : iov) bytes += v.iov_len;
    ctx.metrics->CountServedSameHostWrite(mapped ? metrics::kMapped : metrics::kKernelCopy, bytes);
  }
  const bool deregistered = pins.Broken().load();
  pins.Release();
  if (gave_up || (hold != nullptr && err == ECANCELED && !deregistered)) {
    LOG_WARN("same-host write from %s: the requester gave up (%s), copy stopped%s", ctx.peer.c_str(),
             gave_up ? "lane shut down" : "hold released", gave_up ? "" : " and its bytes zeroed");
    return false;
  }
  adxl::Status status = adxl::SUCCESS;
  std::string text;
  if (err != 0) {
    status = err == EFAULT ? adxl::PARAM_INVALID : err == ETIMEDOUT ? adxl::TIMEOUT : adxl::FAILED;
    text = std::string("same-host copy failed: ") + strerror(err) +
           (err == EFAULT ? " (a local range of the requester is not mapped)" : "");
    LOG_WARN("%s for %s", text.c_str(), ctx.peer.c_str());
  }
  return SendResponse(stream, MsgType::kWriteResponse, header.request_id, status,
                      text, deadline);
}

bool ServeLeaseRequest(ByteStream &stream, const MsgHeader &header, const ServeContext &ctx) {
  const auto until = Deadline::Clock::now() + std::chrono::milliseconds(wire::kStandingLeaseMs);
  bool too_many = false;
  std::vector<MemoryRegistry::LeasedRange> granted;
  // No lease for a lane whose verified process is gone (UNSUPPORTED, empty).
  const bool trusted = ctx.same_host->Alive();
  if (trusted) granted = ctx.registry->GrantReadLease(until, wire::kMaxLeaseRegions, &too_many);
  if (too_many) {
    // Partial lease: reads of the regions left out go as requests. Said once per process, not per renewal.
    static std::atomic<bool> said{false};
    if (!said.exchange(true))
      LOG_INFO("standing read lease lists the first %u readable regions only (wire limit); small reads of "
               "later registrations use requests",
               wire::kMaxLeaseRegions);
  }
  std::vector<wire::Range> ranges;
  ranges.reserve(granted.size());
  for (const auto &g : granted) ranges.push_back({static_cast<uint64_t>(g.addr), g.len});
  // The requester maps shared memory: say where the listed ranges that live in
  // shareable host memory (MallocMem, common/host_memory.h) are, so it reads
  // them with memcpy. It takes the descriptor with pidfd_getfd, which needs
  // the same ptrace right over us as process_vm_readv: nothing new is exposed.
  std::vector<wire::LeaseMapping> mappings;
  const bool wants_mappings = (header.flags & wire::kFlagLeaseMappings) != 0;
  if (wants_mappings) {
    for (size_t i = 0; i < granted.size(); ++i) {
      SharedBacking backing;
      if (!FindSharedBacking(granted[i].addr, granted[i].len, &backing)) continue;
      mappings.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(backing.fd), backing.serial,
                          backing.offset, backing.inode, backing.device});
    }
  }
  const std::string body = wire::EncodeLeaseGrant(ranges, wants_mappings ? &mappings : nullptr);
  MsgHeader reply;
  reply.version = stream.ProtocolVersion();
  reply.type = static_cast<uint16_t>(MsgType::kLeaseGrant);
  reply.request_id = header.request_id;
  reply.status = trusted ? adxl::SUCCESS : adxl::UNSUPPORTED;
  reply.flags = wire::kStandingLeaseMs;
  reply.body_len = body.size();
  iovec out[2] = {{&reply, sizeof(reply)}, {const_cast<char *>(body.data()), body.size()}};
  return stream.WriteFull(out, 2, AssemblyDeadline(ctx)) == IoStatus::kOk;
}

}  // namespace llmdd
