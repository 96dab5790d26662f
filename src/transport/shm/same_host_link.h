// The same-host transport: one copy between two processes on this host with
// Cross Memory Attach (cma.h), for peers both sides verified in the handshake
// (kCapSameHost, docs/PROTOCOL.md "Same-host path"). Its small control
// messages ride on the engine's lanes (LaneLender); the bytes do not.
//   - WRITE: a same-host request; the server copies out of our memory into
//     its registered memory with process_vm_readv (it never writes ours),
//     under a hold (WriteHold, wire::kFlagWriteHold) we release before the
//     request may end: nothing the server reads from our buffers after that
//     is kept. Only to a peer that honours holds (kCapWriteHold): writes to
//     another are declined and go over TCP.
//   - READ: a same-host request; the server validates and pins the ranges for
//     a bounded lease, we copy out of its memory, then say Release.
//   - READ of few descriptors, up to kOneSidedMaxBytes: under a standing read
//     lease (the server lists its readable regions for a while), one
//     process_vm_readv and no message at all; not covered: a request.
// Which of these carries a batch, and when the TCP path is cheaper instead,
// is the path policy's call (engine/path_policy.h: SameHostPays,
// OneSidedReadFits); a batch the link cannot take (range not in the standing
// lease, no lease) is declined and goes to the next path.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/lane.h"
#include "transport/shm/cma.h"
#include "transport/shm/peer_mappings.h"
#include "transport/transport.h"

namespace llmdd {

// A standing read lease held by a same-host requester (wire::kLeaseGrant):
// until `expiry` (our clock, counted from before the request) it may copy out
// of the listed server regions with process_vm_readv, no message needed, or
// with memcpy from our read-only mapping of a region that lives in the
// server's shareable memory (peer_mappings.h).
struct ReadLease {
  struct Region {
    uintptr_t addr;
    uint64_t len;
    const uint8_t *mapped = nullptr;  // where the byte at addr is in our mapping, if mapped
    uint32_t listed_as = 0;           // its index in the LeaseGrant (wire::LeaseMapping::range_index)
  };
  Deadline::Clock::time_point expiry{};
  std::vector<Region> regions;  // sorted by addr
  uint64_t max_len = 0;
  bool any_mapped = false;
  std::vector<std::shared_ptr<const MappedFile>> mappings;  // kept alive while the lease lives
  // Drops unusable entries (empty, wrapping), sorts by address, notes the
  // longest and whether any is mapped.
  void Seal();
  bool Covers(uintptr_t addr, uint64_t len) const;
  // Our mapped copy of [addr, addr + len) when one mapped region holds it all, else null.
  const uint8_t *MappedSource(uintptr_t addr, uint64_t len) const;
};

// Sends one same-host Read or Write request for `count` (<=
// wire::kMaxRangesPerRequest) segments over a lane and completes it with one
// copy from `peer`'s memory (READ) or by the server's copy from ours (WRITE,
// under a hold released before this returns, when write_hold). `cancel`
// (may be null) stops a READ's copy between calls. `source_mappings` (the
// session granted wire::kCapSourceMappings): a WRITE whose sources all lie in
// our shareable memory says where (wire::kFlagSourceMappings).
LaneResult ExecuteSameHostTransfer(ByteStream &stream, adxl::TransferOp op, const Segment *segs, size_t count,
                                   uint64_t request_id, Deadline deadline, PeerProcess &peer,
                                   bool write_hold = false, const std::atomic<bool> *cancel = nullptr,
                                   bool source_mappings = false);

// Asks the server (a same-host peer) for a standing read lease. UNSUPPORTED:
// it grants none (too many regions); the lane stays usable. With `mappings`,
// asks where its listed ranges live in shareable memory too (an older server
// lists none): PeerMappings::Attach maps them into the lease.
LaneResult ExecuteLeaseRequest(ByteStream &stream, uint64_t request_id, Deadline deadline, ReadLease *lease,
                               std::vector<wire::LeaseMapping> *mappings = nullptr);

class SameHostTransport : public Transport {
 public:
  static const TransportCaps &StaticCaps();
  const TransportCaps &Caps() const override { return StaticCaps(); }
  // A link when the handshake verified the peer process (peer.same_host).
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override;
};

class SameHostLink : public TransportLink {
 public:
  SameHostLink(LaneLender *lanes, std::shared_ptr<PeerProcess> peer, bool write_hold = false,
               uint64_t map_max_bytes = 0, EngineMetrics *metrics = nullptr, bool source_mappings = false)
      : lanes_(lanes),
        peer_(std::move(peer)),
        write_hold_(write_hold),
        source_mappings_(source_mappings),
        mappings_(map_max_bytes),
        metrics_(metrics) {}
  const TransportCaps &Caps() const override { return SameHostTransport::StaticCaps(); }
  // While the verified process is still trusted (it ends for good when it is gone).
  bool Usable() const override { return !shut_down_.load() && !peer_->Gone(); }
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override;
  PeerProcess &Peer() { return *peer_; }

 private:
  // READ as one process_vm_readv under the standing lease; false: not
  // done (no lease, range not listed, copy failed, lease ran out).
  bool TryOneSidedRead(const TransferBatch &batch);
  // The current lease if it has some life left, renewing it when due (one
  // renewal at a time, on behalf of `request`, whose Cancel cuts it; a failed
  // one is retried after a pause).
  std::shared_ptr<const ReadLease> UsableLease(Deadline deadline, TransferRequest *request);
  // READ of any size whose every range lies in the peer's shareable memory
  // that we mapped (peer_mappings.h): memcpy, chunk by chunk, each chunk
  // within one standing lease (renewed between chunks); false: not done (a
  // range not mapped, lease lost, canceled, deadline): the caller goes on.
  bool TryMappedRead(const TransferBatch &batch);

  LaneLender *lanes_;
  std::shared_ptr<PeerProcess> peer_;
  const bool write_hold_;  // the peer honours write holds: WRITEs may take this path
  const bool source_mappings_;  // the peer may map our shareable WRITE sources (kCapSourceMappings)
  std::atomic<bool> shut_down_{false};
  PeerMappings mappings_;
  // Until then (steady clock, ns) large READs do not try the mapping: the
  // last lease mapped nothing. 0: try (no lease yet, or it mapped something).
  std::atomic<int64_t> unmapped_until_ns_{0};
  EngineMetrics *const metrics_;  // may be null
  std::mutex lease_mutex_;
  std::shared_ptr<const ReadLease> lease_;  // guarded by lease_mutex_
  bool lease_renewing_ = false;
  Deadline::Clock::time_point lease_retry_after_{};
};

}  // namespace llmdd
