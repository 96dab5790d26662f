#include "transport/shm/same_host_link.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

#include "common/host_memory.h"
#include "common/log.h"
#include "engine/metrics.h"
#include "engine/path_policy.h"
#include "engine/transfer_request.h"
#include "engine/wire.h"
#include "transport/tcp/tcp_stream.h"

namespace llmdd {
namespace {

using wire::MsgHeader;
using wire::MsgType;

// The shareable allocations (host_memory.h) that hold every one of the
// segments' local ranges, sorted by base, at most wire::kMaxSourceMappings;
// false when some range lies elsewhere (the server then reads with
// process_vm_readv). KV blocks alternate between tensors (allocations):
// looked up by binary search in what was found, the process-wide table only
// for a new allocation.
bool SourceAllocations(const Segment *segs, size_t count, std::vector<wire::SourceMapping> *out) {
  out->clear();
  for (size_t i = 0; i < count; ++i) {
    const uintptr_t addr = segs[i].local;
    auto it = std::upper_bound(out->begin(), out->end(), addr,
                               [](uintptr_t a, const wire::SourceMapping &m) { return a < m.base; });
    if (it != out->begin()) {
      const wire::SourceMapping &m = *(it - 1);
      if (addr - m.base <= m.size && segs[i].len <= m.size - (addr - m.base)) continue;
    }
    SharedBacking backing;
    if (out->size() == wire::kMaxSourceMappings || !FindSharedBacking(addr, segs[i].len, &backing)) return false;
    out->insert(it, {static_cast<uint32_t>(backing.fd), backing.serial, backing.inode, backing.device,
                     static_cast<uint64_t>(backing.base), backing.size});
  }
  return !out->empty();
}

}  // namespace

LaneResult ExecuteSameHostTransfer(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                                   uint64_t request_id, Deadline deadline, PeerProcess &peer, bool write_hold,
                                   const std::atomic<bool> *cancel, bool source_mappings) {
  const bool is_read = op == adxl::READ;
  const auto sent_at = Deadline::Clock::now();
  thread_local std::vector<uint8_t> body;
  thread_local std::vector<iovec> local_iov, remote_iov;
  TrimOnExit trim(body, local_iov, remote_iov);
  // A write's hold lives until this returns, whatever the outcome: the
  // request this chunk belongs to cannot end before (its I/O is announced
  // around this call), so the server never keeps what it reads from our
  // buffers once the request ended (cma.h, WriteHold).
  std::optional<WriteHold> hold;
  if (!is_read && write_hold) hold.emplace();
  EncodeRangeBody(segs, count, deadline, /*same_host=*/true, &body, hold ? hold->Addr() : 0,
                  hold ? hold->Value() : 0);
  // Sources in our shareable memory: say where, so the server can map them.
  thread_local std::vector<wire::SourceMapping> sources;
  const bool sourced = !is_read && source_mappings && SourceAllocations(segs, count, &sources);
  if (sourced) wire::AppendSourceMappings(sources, &body);

  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(is_read ? MsgType::kReadRequest : MsgType::kWriteRequest);
  header.request_id = request_id;
  header.body_len = body.size();
  header.payload_len = 0;  // the bytes never travel on the lane

  header.flags = wire::kFlagSameHost | (hold ? wire::kFlagWriteHold : 0) | (sourced ? wire::kFlagSourceMappings : 0);
  iovec request[2] = {{&header, sizeof(header)}, {body.data(), body.size()}};
  IoStatus io = stream.WriteFull(request, 2, deadline);
  if (io != IoStatus::kOk) return IoFailure(io, stream, "sending request to");
  MsgHeader response;
  // A WRITE's answer comes after the server copied: wait for it spinning
  // while that should take (path_policy.h); a READ's comes at once.
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += segs[i].len;
  ScopedReadSpinFloor copy_wait(is_read ? 0 : SameHostWriteSpinUs(ReadSpinMicros(), total));
  LaneResult result = ReadResponseHeader(stream, is_read ? MsgType::kReadResponse : MsgType::kWriteResponse,
                                         request_id, deadline, &response);
  if (result.status == adxl::SUCCESS && !result.broken && response.payload_len != 0) {
    result.status = adxl::FAILED;
    result.broken = true;
    result.error = "peer " + stream.PeerName() + " sent a payload for a same-host request";
  }
  if (!is_read || result.status != adxl::SUCCESS || result.broken) return result;
  // Read: the server pinned the ranges for `lease` ms, counted from its
  // receipt of the request, which is after `sent_at`; so if our copy ends
  // before sent_at + lease, it ran entirely while the memory was pinned.
  const auto lease_end = sent_at + std::chrono::milliseconds(std::min<uint32_t>(response.flags, wire::kMaxLeaseMs));
  local_iov.clear();
  remote_iov.clear();
  for (size_t i = 0; i < count; ++i) {
    local_iov.push_back({reinterpret_cast<void *>(segs[i].local), segs[i].len});
    remote_iov.push_back({reinterpret_cast<void *>(segs[i].remote), segs[i].len});
  }
  int err = peer.CopyFrom(local_iov.data(), local_iov.size(), remote_iov.data(), remote_iov.size(),
                          deadline.EarlierOf(Deadline(lease_end)), cancel);
  const bool in_lease = Deadline::Clock::now() < lease_end;
  MsgHeader release;
  release.version = stream.ProtocolVersion();
  release.type = static_cast<uint16_t>(MsgType::kRelease);
  release.request_id = request_id;
  if (stream.Write(&release, sizeof(release), deadline.EarlierOf(Deadline::AfterMs(1000))) != IoStatus::kOk) {
    result.broken = true;  // the server ends the lease on its own; this lane's framing is unknown
  }
  if (err != 0) {
    result.status = err == EFAULT      ? adxl::PARAM_INVALID
                    : err == ETIMEDOUT ? adxl::TIMEOUT
                    : err == ECANCELED ? TransferRequest::kCanceledStatus
                                       : adxl::FAILED;
    result.error = std::string("same-host read from ") + stream.PeerName() + " failed: " +
                   (err == ESRCH ? "the peer process is gone (same-host trust ended)" : strerror(err)) +
                   (err == EFAULT ? " (a local destination range is not mapped?)" : "");
  } else if (!in_lease) {
    result.status = adxl::TIMEOUT;
    result.error = "same-host read from " + stream.PeerName() + " outlived its lease; the data is not trusted";
  }
  return result;
}

LaneResult ExecuteLeaseRequest(ByteStream &stream, uint64_t request_id, Deadline deadline, ReadLease *lease,
                               std::vector<wire::LeaseMapping> *mappings) {
  const auto sent_at = Deadline::Clock::now();
  MsgHeader header;
  header.version = stream.ProtocolVersion();
  header.type = static_cast<uint16_t>(MsgType::kLeaseRequest);
  header.request_id = request_id;
  header.flags = mappings != nullptr ? wire::kFlagLeaseMappings : 0;
  IoStatus io = stream.Write(&header, sizeof(header), deadline);
  if (io != IoStatus::kOk) return IoFailure(io, stream, "sending lease request to");
  MsgHeader reply;
  std::string body;
  LaneResult result = ReadAnswer(stream, MsgType::kLeaseGrant, request_id, deadline, &reply, &body);
  if (result.status != adxl::SUCCESS || result.broken) return result;
  std::vector<wire::Range> ranges;
  if (!wire::DecodeLeaseGrant(body, &ranges, mappings)) {
    result.status = adxl::FAILED;
    result.broken = true;
    result.error = "peer " + stream.PeerName() + " sent a malformed lease";
    return result;
  }
  result.status = reply.status == adxl::SUCCESS ? adxl::SUCCESS : adxl::UNSUPPORTED;
  if (result.status != adxl::SUCCESS) {
    result.error = "peer " + stream.PeerName() + " grants no standing lease (too many regions)";
    return result;
  }
  // Counted from before our request, so the lease ends here no later than on the server.
  lease->expiry = sent_at + std::chrono::milliseconds(std::min<uint32_t>(reply.flags, wire::kStandingLeaseMs));
  lease->regions.clear();
  for (size_t i = 0; i < ranges.size(); ++i)
    lease->regions.push_back({static_cast<uintptr_t>(ranges[i].addr), ranges[i].len, nullptr, static_cast<uint32_t>(i)});
  lease->Seal();
  return result;
}

void ReadLease::Seal() {
  regions.erase(std::remove_if(regions.begin(), regions.end(),
                               [](const Region &r) {  // unusable entries are ignored
                                 uintptr_t end = 0;
                                 return r.len == 0 || __builtin_add_overflow(r.addr, r.len, &end);
                               }),
                regions.end());
  std::sort(regions.begin(), regions.end(), [](const Region &a, const Region &b) { return a.addr < b.addr; });
  max_len = 0;
  any_mapped = false;
  for (const Region &r : regions) {
    max_len = std::max(max_len, r.len);
    any_mapped = any_mapped || r.mapped != nullptr;
  }
}

const uint8_t *ReadLease::MappedSource(uintptr_t addr, uint64_t len) const {
  uintptr_t end = 0;
  if (len == 0 || __builtin_add_overflow(addr, len, &end)) return nullptr;
  auto it = std::upper_bound(regions.begin(), regions.end(), addr,
                             [](uintptr_t a, const Region &r) { return a < r.addr; });
  while (it != regions.begin()) {
    --it;
    if (addr - it->addr >= max_len) break;
    if (it->mapped != nullptr && end - it->addr <= it->len) return it->mapped + (addr - it->addr);
  }
  return nullptr;
}

bool ReadLease::Covers(uintptr_t addr, uint64_t len) const {
  uintptr_t end = 0;
  if (len == 0 || __builtin_add_overflow(addr, len, &end)) return false;
  // Walk forward through listed regions that join without a gap, as the
  // server's range check does (K and V views of one allocation are two
  // registrations; a merged range may cross from one into the next).
  uintptr_t cursor = addr;
  for (;;) {
    // The listed region that contains the byte at cursor and reaches furthest.
    uintptr_t reach = cursor;
    auto it = std::upper_bound(regions.begin(), regions.end(), cursor,
                               [](uintptr_t a, const Region &r) { return a < r.addr; });
    while (it != regions.begin()) {
      --it;
      if (cursor - it->addr >= max_len) break;
      if (cursor - it->addr < it->len) reach = std::max<uintptr_t>(reach, it->addr + it->len);
    }
    if (reach == cursor) return false;  // a byte no listed region holds
    if (reach >= end) return true;
    cursor = reach;
  }
}

std::shared_ptr<const ReadLease> SameHostLink::UsableLease(Deadline deadline, TransferRequest *request) {
  const auto now = Deadline::Clock::now();
  {
    std::lock_guard lock(lease_mutex_);
    if (lease_ && now + kLeaseRenewMargin < lease_->expiry) return lease_;
    if (lease_renewing_ || now < lease_retry_after_) return lease_ && now < lease_->expiry ? lease_ : nullptr;
    lease_renewing_ = true;
  }
  auto fresh = std::make_shared<ReadLease>();
  std::vector<wire::LeaseMapping> listed;
  std::vector<wire::LeaseMapping> *want = mappings_.Enabled() ? &listed : nullptr;
  LaneResult r = lanes_->RunOnce(deadline, request, [&fresh, deadline, want](ByteStream &stream, uint64_t request_id) {
    return ExecuteLeaseRequest(stream, request_id, deadline, fresh.get(), want);
  });
  if (r.status == adxl::SUCCESS && !peer_->Alive()) {
    // Granted, but the process is gone now: no lease, and nothing of it stays mapped.
    r.status = adxl::FAILED;
    r.error = "the peer process is gone (same-host trust ended)";
    mappings_.Clear();
  }
  if (r.status == adxl::SUCCESS && want != nullptr) {
    // Mapping what is new takes a pidfd_getfd and an mmap per allocation,
    // once; what the lease no longer lists is let go (also when it lists none).
    mappings_.Attach(*peer_, listed, fresh.get());
    // A lease that maps nothing: large READs skip the mapping (and the lease)
    // for a second; then one asks again, in case the peer has shared memory now.
    const auto until = fresh->any_mapped ? Deadline::Clock::time_point{} : now + std::chrono::seconds(1);
    unmapped_until_ns_.store(until.time_since_epoch().count(), std::memory_order_relaxed);
  }
  std::lock_guard lock(lease_mutex_);
  lease_renewing_ = false;
  if (r.status == adxl::SUCCESS) {
    lease_ = std::move(fresh);
    return lease_;
  }
  LOG_DEBUG("no standing read lease from %s (%s): small reads use requests for a while", lanes_->PeerName().c_str(),
            r.error.c_str());
  lease_.reset();
  // A canceled renewal says nothing about the peer: the next READ tries again.
  if (request == nullptr || !request->CancelRequested()) lease_retry_after_ = now + std::chrono::seconds(1);
  return nullptr;
}

bool SameHostLink::TryOneSidedRead(const TransferBatch &batch) {
  const Deadline deadline = batch.deadline;
  TransferRequest *request = batch.request;
  std::shared_ptr<const ReadLease> lease = UsableLease(deadline, request);
  if (!lease) return false;
  thread_local std::vector<iovec> local, remote;
  local.clear();
  remote.clear();
  for (size_t i = 0; i < batch.count; ++i) {
    const Segment &s = batch.segs[i];
    if (!lease->Covers(s.remote, s.len)) return false;  // not listed (yet): the server decides
    local.push_back({reinterpret_cast<void *>(s.local), s.len});
    remote.push_back({reinterpret_cast<void *>(s.remote), s.len});
  }
  const Deadline lease_end(lease->expiry);
  // A copy with no stream to shut down (at most kOneSidedMaxBytes): a Cancel
  // meanwhile stops it between process_vm_readv calls (the cancel flag) and
  // completes the request when it returns.
  if (request != nullptr && !request->BeginIo(nullptr)) return false;
  const int err = peer_->CopyFrom(local.data(), local.size(), remote.data(), remote.size(),
                                  deadline.EarlierOf(lease_end), request != nullptr ? request->CancelFlag() : nullptr);
  if (request != nullptr) request->EndIo(nullptr);
  if (err != 0) return false;
  const auto copied_at = Deadline::Clock::now();
  if (copied_at >= lease->expiry) return false;  // not copied entirely while the regions were leased
  // The reading doubles as the request's end for its record (saves a clock read on the smallest calls).
  if (request != nullptr && request->total_bytes == batch.total_bytes) request->ended_at = copied_at;
  if (metrics_ != nullptr) metrics_->CountOneSidedRead(metrics::kKernelCopy, batch.total_bytes);
  return true;
}

bool SameHostLink::TryMappedRead(const TransferBatch &batch) {
  TransferRequest *request = batch.request;
  std::shared_ptr<const ReadLease> lease = UsableLease(batch.deadline, request);
  if (!lease || !lease->any_mapped) return false;
  // Everything mapped, or nothing done here (process_vm_readv or a request reads it).
  for (size_t i = 0; i < batch.count; ++i)
    if (lease->MappedSource(batch.segs[i].remote, batch.segs[i].len) == nullptr) return false;
  const std::atomic<bool> *cancel = request != nullptr ? request->CancelFlag() : nullptr;
  // No stream to shut down: Cancel and the deadline are looked at between
  // chunks of kMaxBytesPerCall bytes, as between process_vm_readv calls.
  if (request != nullptr && !request->BeginIo(nullptr)) return false;
  // Chunk by chunk, each copied entirely within one lease (the server holds
  // back deregistration until that lease ends), renewing the lease between
  // chunks when it is due: a copy of any size, never one that outlives its lease.
  bool done = true;
  size_t seg = 0;
  uint64_t seg_off = 0;
  while (seg < batch.count) {
    if ((cancel != nullptr && cancel->load(std::memory_order_relaxed)) || batch.deadline.Expired() ||
        peer_->Gone()) {  // the file may outlive the trust: no copy once the peer is known gone
      done = false;
      break;
    }
    if (Deadline::Clock::now() + kLeaseRenewMargin >= lease->expiry) {
      lease = UsableLease(batch.deadline, request);
      if (!lease) {
        done = false;
        break;
      }
    }
    // One chunk: up to kMaxBytesPerCall bytes from where we are, sources from this lease.
    uint64_t chunk_bytes = 0;
    while (seg < batch.count && chunk_bytes < kMaxBytesPerCall) {
      const Segment &s = batch.segs[seg];
      const uint64_t n = std::min<uint64_t>(s.len - seg_off, kMaxBytesPerCall - chunk_bytes);
      const uint8_t *source = lease->MappedSource(s.remote + seg_off, n);
      if (source == nullptr) break;  // no longer listed (deregistered meanwhile): a request says why
      memcpy(reinterpret_cast<void *>(s.local + seg_off), source, n);
      chunk_bytes += n;
      seg_off += n;
      if (seg_off == s.len) {
        ++seg;
        seg_off = 0;
      }
    }
    if (chunk_bytes == 0 || Deadline::Clock::now() >= lease->expiry) {
      // Not listed, or not copied entirely while leased: this chunk is not trusted.
      done = false;
      break;
    }
  }
  if (request != nullptr) request->EndIo(nullptr);
  // No pidfd poll per copy (it would double the cost of a small READ): the
  // bytes are the file's, which no other process can have taken over, and
  // the peer's death is seen at the next renewal (UsableLease polls it), so a
  // mapped READ may return what a server that died less than one lease ago
  // left in its registered memory, as it may while the server is stopped.
  if (!done) return false;
  const auto copied_at = Deadline::Clock::now();
  if (request != nullptr && request->total_bytes == batch.total_bytes) request->ended_at = copied_at;
  if (metrics_ != nullptr) metrics_->CountOneSidedRead(metrics::kMapped, batch.total_bytes);
  return true;
}

void SameHostLink::Shutdown() {
  shut_down_.store(true);
  // Mappings hold a peer's pages only until it frees them (FreeMem punches
  // them); a peer that ended without FreeMem keeps them until we let go.
  mappings_.Clear();
  std::lock_guard lock(lease_mutex_);
  lease_.reset();
}

const TransportCaps &SameHostTransport::StaticCaps() {
  static const TransportCaps caps = [] {
    TransportCaps c;
    c.name = "shm";
    c.same_host_only = true;
    c.max_parallel = 64;  // one request per lane; the server copies on its event threads
    return c;
  }();
  return caps;
}

std::shared_ptr<TransportLink> SameHostTransport::Connect(const TransportPeer &peer, Deadline deadline,
                                                          std::string *error) {
  (void)deadline;
  if (peer.same_host == nullptr || peer.lanes == nullptr) {
    *error = "peer " + peer.peer_name + " was not verified for the same-host path";
    return nullptr;
  }
  return std::make_shared<SameHostLink>(peer.lanes, peer.same_host, peer.write_hold, peer.map_max_bytes,
                                        peer.metrics, peer.source_mappings);
}

TransportResult SameHostLink::Submit(const TransferBatch &batch) {
  TransportResult result;
  if (!Usable()) {
    result.declined = true;
    return result;
  }
  // A READ of memory the peer shares with us (its MallocMem memory, mapped
  // here read-only): memcpy under the standing lease, whatever its size.
  // Larger than a one-sided READ: not tried for a second after a lease that
  // mapped nothing (no lease round trip per large READ of a peer without
  // shareable memory); tried first thing, so a pull of large READs only
  // takes the mapping without any small READ before it.
  if (batch.op == adxl::READ && mappings_.Enabled() &&
      (OneSidedReadFits(batch.op, batch.total_bytes, batch.count) ||
       Deadline::Clock::now().time_since_epoch().count() >= unmapped_until_ns_.load(std::memory_order_relaxed)) &&
      TryMappedRead(batch))
    return result;
  if (OneSidedReadFits(batch.op, batch.total_bytes, batch.count)) {
    if (TryOneSidedRead(batch)) return result;
    if (batch.deadline.Expired()) {  // renewing the lease took the whole time: the peer does not answer
      result.status = adxl::TIMEOUT;
      result.error = "no answer from " + lanes_->PeerName() + " before the deadline (read lease renewal)";
      return result;
    }
    // Not listed (yet), no lease, or the copy did not end within the lease:
    // a request decides, ours where the same-host request pays (or for a
    // part, which must not be declined), else TCP's. A canceled request
    // stops there, before any I/O.
    if (!batch.part && !SameHostPays(batch.op, batch.total_bytes, batch.count)) {
      result.declined = true;
      return result;
    }
  }
  if (batch.op == adxl::WRITE && !write_hold_) {
    // A peer that does not honour write holds might copy from our buffers
    // after the request ended (a stale read into its memory): TCP carries
    // the write instead, from our own thread.
    result.declined = true;
    return result;
  }
  PeerProcess *peer = peer_.get();
  const adxl::TransferOp op = batch.op;
  const bool hold = write_hold_;
  const std::atomic<bool> *cancel = batch.request != nullptr ? batch.request->CancelFlag() : nullptr;
  const bool sources = source_mappings_;
  LaneResult r = lanes_->RunChunks(batch, [peer, op, hold, cancel, sources](ByteStream &stream, const Segment *segs,
                                                                            size_t count, uint64_t request_id,
                                                                            Deadline deadline) {
    return ExecuteSameHostTransfer(stream, op, segs, count, request_id, deadline, *peer, hold, cancel, sources);
  });
  result.status = r.status;
  result.error = std::move(r.error);
  return result;
}

}  // namespace llmdd
