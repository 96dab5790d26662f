// The transport contract: what the engine asks of a way to move bytes, and
// what such a way promises. The engine (engine/) owns everything a transport
// should not care about: which peer, which registered region, validation of
// every remote range on the serving side, deadlines, splitting a transfer into
// parts, status mapping. A transport moves the bytes of one batch and reports
// how it ended.
//
// Two objects per transport, in the spirit of NIXL's backend engine and
// Mooncake TENT's transports:
//   - Transport: one per engine. Says what it can do (TransportCaps), learns
//     about registrations (and returns the per-transport metadata a peer
//     needs to reach them: a remote key; empty for TCP and same-host, whose
//     peers name plain addresses that the serving side checks), and connects
//     to a peer from what the handshake told about it (TransportPeer).
//   - TransportLink: one per (engine, peer). Submit moves one batch; Cancel of
//     the batch's TransferRequest cuts its I/O; Shutdown ends the link.
//
// Submit blocks the calling thread (an engine worker, or the caller of a
// synchronous transfer) until the batch is done, failed, canceled, or its
// deadline passed: it is the transport's progress loop. A transport whose
// hardware completes asynchronously (UCX) polls its worker inside Submit; the
// engine gets asynchrony from its request model (engine/transfer_request.h),
// which runs submissions on its worker pool, so a transport never owns
// threads of its own.
//
// Which link carries a transfer is decided in one place, the path policy
// (engine/path_policy.h), from the links' capabilities, the batch's size and
// shape, and the memory kind of the registrations. A link may still decline a
// batch it was offered (TransportResult::declined: nothing was moved, e.g. the
// same-host read lease does not list the range); the engine then offers it to
// the next link the policy named.
//
// Adding a transport: docs/ARCHITECTURE.md "Adding a transport".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "adxl/adxl_types.h"
#include "common/deadline.h"

namespace llmdd {

class TransferRequest;  // engine/transfer_request.h: completion and cancel of one request
class PeerProcess;      // transport/shm/cma.h: a same-host peer process we verified
class LaneLender;
class EngineMetrics;    // engine/metrics.h

// One contiguous piece of a transfer: `len` bytes between this engine's
// `local` address and the peer's `remote` address.
struct Segment {
  uintptr_t local;
  uintptr_t remote;
  uint64_t len;
};

// Where a registration's bytes live. Host memory today; device memory (CUDA)
// is a transport capability a later transport adds. MEM_DEVICE registered on a
// host whose device seam is the cpu device is host memory (device/device.h).
enum class MemoryKind : uint8_t { kHost = 0, kDevice = 1 };
constexpr uint32_t MemoryKindBit(MemoryKind kind) { return 1U << static_cast<uint32_t>(kind); }

struct TransportCaps {
  const char *name = "";             // "tcp", "shm", "fake": logs, the handshake, the policy
  bool read = true;                  // one-sided READ (remote -> local) of addresses the requester names
  bool write = true;                 // one-sided WRITE (local -> remote)
  bool same_host_only = false;       // reaches peers on this host only
  uint32_t memory_kinds = MemoryKindBit(MemoryKind::kHost);  // MemoryKindBit of what it reaches, both ends
  bool prompt_cancel = true;         // Cancel of a request cuts its I/O in flight (else: at the next batch)
  size_t max_parallel = 1;           // batches of one transfer it moves at once to one peer (lanes, QPs)
  // Chosen by the engine's policy (llmdd.Transport=auto) rather than forced
  // by an option: ranks after the same-host path (PathRank). UCX under auto.
  bool chosen_where_it_pays = false;
};

// One batch as a link moves it: segments already validated on this side
// (no null address, no wrap-around); the serving side checks the remote ranges.
struct TransferBatch {
  adxl::TransferOp op = adxl::READ;
  const Segment *segs = nullptr;
  size_t count = 0;
  uint64_t total_bytes = 0;
  Deadline deadline = Deadline::Never();
  // The request this batch belongs to, or null (internal callers). When set,
  // the link announces its I/O to it (TransferRequest::BeginIo/EndIo), so that
  // Cancel cuts it, and starts nothing once it is canceled.
  TransferRequest *request = nullptr;
  // One part of a transfer the lane pool split for this link: declining it
  // fails the transfer (the other parts are already under way), so a link
  // declines a part only when it cannot move it at all.
  bool part = false;
};

struct TransportResult {
  adxl::Status status = adxl::SUCCESS;
  std::string error;       // why, for the caller's log line
  bool declined = false;   // nothing was moved: offer the batch to the next link
};

// What a transport needs to reach one peer, gathered by the engine's handshake.
struct TransportPeer {
  std::string peer_name;   // for logs
  // The engine's data connections to the peer (engine/lane_pool.h), for
  // transports whose requests ride on them (TCP, and the same-host path's
  // small control messages). Outlives every link made from it.
  LaneLender *lanes = nullptr;
  // Same-host: the peer process both sides verified they reach (else null).
  std::shared_ptr<PeerProcess> same_host;
  // Same-host: the session granted wire::kCapWriteHold (writes carry a hold
  // the peer honours). Without it the same-host link carries no WRITE.
  bool write_hold = false;
  // Same-host: how many bytes of the peer's shareable memory we may map
  // (llmdd.SameHostMapMaxBytes; 0: none).
  uint64_t map_max_bytes = 0;
  // Same-host: the session granted wire::kCapSourceMappings (the peer maps
  // the sources of our WRITEs that lie in our shareable memory).
  bool source_mappings = false;
  // Where the link counts what it does (engine/metrics.h; null: not counted).
  EngineMetrics *metrics = nullptr;
  // What the peer advertised for this transport (its LocalMetadata).
  std::string metadata;
};

class TransportLink {
 public:
  virtual ~TransportLink() = default;
  virtual const TransportCaps &Caps() const = 0;
  // Whether it can carry batches now (the same-host path ends for good when
  // the verified peer process is gone). Cheap; the policy asks per request.
  virtual bool Usable() const = 0;
  // Moves one batch, blocking until it is done, failed, canceled (status
  // TransferRequest::kCanceledStatus, error "canceled") or its deadline
  // passed (TIMEOUT). Thread-safe: the engine submits parts of one transfer,
  // and other transfers, from several threads at once.
  virtual TransportResult Submit(const TransferBatch &batch) = 0;
  // Ends the link: submissions in flight end promptly with a failure, later
  // ones fail at once. Idempotent.
  virtual void Shutdown() = 0;
};

// A registration as transports see it.
struct TransportRegion {
  uintptr_t addr = 0;
  uint64_t len = 0;
  MemoryKind kind = MemoryKind::kHost;
  uint32_t access = 0;  // kAccessRead | kAccessWrite (engine/memory_registry.h)
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const TransportCaps &Caps() const = 0;
  // What this engine advertises for the transport in its handshake (an
  // address, a worker blob); empty for TCP and same-host.
  virtual std::string LocalMetadata() const { return std::string(); }
  // A registration was added / removed. *remote_key: what a peer needs to
  // reach the region through this transport (empty: its address suffices).
  virtual adxl::Status RegisterMemory(const TransportRegion &region, std::string *remote_key, std::string *error) {
    (void)region;
    (void)error;
    remote_key->clear();
    return adxl::SUCCESS;
  }
  virtual void DeregisterMemory(const TransportRegion &region) { (void)region; }
  // A link to `peer`; null with *error when this transport cannot reach it
  // (not advertised, not the same host, ...).
  virtual std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline,
                                                 std::string *error) = 0;
};

}  // namespace llmdd
