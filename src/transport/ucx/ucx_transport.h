// The UCX transport (issue 14): one-sided READ (ucp_get_nbx) and WRITE
// (ucp_put_nbx) into the peer's registered memory through UCP, on whatever
// fabric UCX picks (UCX_TLS: rc/dc on InfiniBand or RoCE, tcp, shared
// memory). Built only when UCX is found (LLMDD_WITH_UCX); an engine runs it
// under llmdd.Transport=ucx (every peer, Mode::kForced) or, under auto, on
// hosts with an RDMA device for peers reached with hardware RMA
// (Mode::kWhereItPays; src/transport/ucx/README.md, docs/UCX.md).
//
//   - One UCP context per engine and one or more workers on it (a UcxCore
//     each: llmdd.UcxWorkers, UcxTransport::Create), shared by every link.
//     All calls on a worker are serialized by its core's mutex
//     (UCS_THREAD_MODE_SERIALIZED). A requester's Submit progresses the
//     worker itself while it waits; a progress thread of each core serves
//     the peers (UCX over TCP emulates GET/PUT with active messages: the
//     target must progress, or the requester waits forever). Idle, that
//     thread sleeps on the worker's event fd (UCP_FEATURE_WAKEUP, ucp_worker_arm).
//   - The worker addresses travel in the handshake (LocalMetadata, the
//     engine's TransportAd "ucx"); a link makes one endpoint per local
//     worker, to the peer's workers in turn, with UCP_ERR_HANDLING_MODE_PEER
//     (UcxWorkerLinks when there are several).
//   - Remote keys travel by UCX active message, on demand: a requester asks
//     the peer for the key of the registered region holding a range (key
//     request, carrying the random capability the peer advertised in the
//     handshake: a UCX peer that never completed one gets no key), the peer answers with the region's bounds, rights and packed
//     rkey, under a lease (kUcxKeyLeaseMs). The requester unpacks it once and
//     caches it for the lease; it starts I/O on a region only while the lease
//     has kUcxKeyLeaseMarginMs left, renewing it otherwise. The owner's
//     DeregisterMemory stops granting, waits until the leases it granted ran
//     out, then unmaps: a transfer started after DeregisterMem returned finds
//     no key and fails.
//   - A batch is posted without waiting per descriptor and completed with one
//     endpoint flush. Timeout or Cancel force-closes the endpoint and the next
//     batch makes a new one.
//   - Direct or staged. Where the lanes GET and PUT use (the get[N] /
//     put[N] lines of ucp_ep_print_info) run over verbs, where the NIC
//     moves the bytes (rc, dc: UcxRmaLanesAreDirect; not UCX's tcp, not an
//     endpoint without RMA lanes, not shared-memory lanes, where GET and PUT
//     of user memory are active messages whose replies UCX copies in by
//     address whenever they come) and every local range of a batch lies in memory this engine
//     registered, GETs land in and PUTs leave from the caller's memory
//     itself, each operation with the registration's memory handle (no
//     copy: what RDMA is for). A round returns only once UCX completed
//     every operation of it (UCX touches a request's buffer until it
//     completed, never after), so the request's guarantee holds (no byte of
//     its buffers written once it is done: docs/API.md): a round that ended
//     early (timeout, cancel, failure) force-closes its endpoint, which
//     cancels the operations as the worker progresses, and waits for that
//     (kUcxDirectCancelGraceMs). Operations still not ended then (logged)
//     stay in UcxCore::lingering, keeping the memory in use, and
//     DeregisterMemory waits for them (at most kUcxDirectDrainMs) before it
//     unmaps. Emulated lanes stay staged by default although the wait would
//     cover them: a canceled batch would wait on the target's CPU rather
//     than a NIC's flush, for a few percent (docs/UCX.md).
//     Otherwise (and for local memory not registered, which a canceled
//     batch must leave at once), UCX never sees a caller's buffer: every GET lands in, and
//     every PUT leaves from, a staging chunk of the core (kUcxStageBytes; a
//     batch moves in rounds of one chunk), copied to or from the caller's
//     memory by the requester. Why: UCX 1.13 over its TCP transport (RMA
//     emulated with active messages) still delivers the reply of a GET
//     whose endpoint was force-closed (the target resumes and answers;
//     ucp_get_rep_handler copies into the request's buffer by address), so
//     a caller's buffer freed after its request ended TIMEOUT was written
//     to. A chunk whose round did not complete is retired, never reused,
//     until the core goes (at most kUcxStageRetiredMax; beyond that the
//     transport refuses batches: restart the engine). Cost: one memcpy per
//     byte on the requester, which a READ hides in part: its GETs are
//     slices of at most kUcxSliceBytes, each run of completed slices copied
//     out while later ones arrive. Environment LLMDD_UCX_DIRECT=never stages
//     every batch; =any moves directly over emulated lanes too (tests and
//     measurement only: the hazard above returns).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ucp/api/ucp.h>

#include "transport/transport.h"

namespace llmdd {

// A key is granted for this long; I/O starts on it only while this much is left.
constexpr uint32_t kUcxKeyLeaseMs = 100;
constexpr uint32_t kUcxKeyLeaseMarginMs = 30;
// Remote regions a link keeps keys for (least recently granted dropped first).
constexpr size_t kUcxMaxCachedKeys = 1024;
// Longest packed rkey accepted from a peer.
constexpr size_t kUcxMaxRkeyBytes = 4096;
// The random capability an engine's key requests must carry. Its transport
// advertisement is kUcxAdMagic, the capability, then the worker address: an
// engine from before the capability advertised the bare address, which the
// magic tells apart (such a peer gets no link, rather than a misread address).
constexpr size_t kUcxCapabilityBytes = 16;
constexpr char kUcxAdMagic[] = "LDU2";
constexpr size_t kUcxAdMagicBytes = sizeof(kUcxAdMagic) - 1;
// Workers (llmdd.UcxWorkers): an engine runs up to this many UCX workers on
// one UCP context, each a UcxCore of its own (worker, progress thread, staging),
// and advertises them all: kUcxAdMagicMulti, a count byte, then per worker
// its capability, a 2-byte little-endian address length and the address. An
// engine with one worker advertises kUcxAdMagic's shape, as before.
constexpr size_t kUcxMaxWorkers = 8;
constexpr char kUcxAdMagicMulti[] = "LDU3";
// One of a peer's workers as its advertisement names it.
struct UcxWorkerAd {
  std::string capability;  // kUcxCapabilityBytes
  std::string address;     // the UCP worker address
};
// The advertisement of `workers` (one: kUcxAdMagic's shape; more: kUcxAdMagicMulti's).
std::string UcxAdvertisement(const std::vector<UcxWorkerAd> &workers);
// A peer's advertisement, either shape; false (nothing set) for anything
// else: another format, a truncated or overlong one, no worker, more than
// kUcxMaxWorkers, an empty address.
bool ParseUcxAdvertisement(const std::string &metadata, std::vector<UcxWorkerAd> *workers);
// The serving side's progress thread: empty progress rounds it spins
// (yielding) before it sleeps on the worker's event fd, and the longest sleep
// there (the destructor wakes it at once; the bound only limits how late a
// lost wake-up could be noticed).
constexpr int kUcxProgressSpinRounds = 64;
constexpr int kUcxProgressPollMs = 100;
// Staging (see above): chunk size, chunks in use at once per worker, and
// chunks of unfinished rounds kept (until their worker's UCX core goes) per
// engine, all workers together.
constexpr size_t kUcxStageBytes = 4u << 20;
constexpr size_t kUcxStageChunks = 8;
constexpr size_t kUcxStageRetiredMax = 16;
// A round moves as UCX operations of at most this many bytes, so that the
// staging copies overlap the transfer: a WRITE copies the next slice in while
// the previous one is sent, a READ copies completed slices out while later
// ones arrive (measured in docs/PERFORMANCE.md, "UCX transport against UCX
// itself").
constexpr size_t kUcxSliceBytes = 256u << 10;
// A direct round that ended early (timeout, cancel, failure) waits at most
// this long, after its endpoint's forced close, for UCX to complete its
// operations before it returns; DeregisterMemory at most kUcxDirectDrainMs
// for those that still did not.
constexpr int kUcxDirectCancelGraceMs = 1000;
// A round posts its operations in groups of this many, letting go of the
// worker's mutex between groups (the serving side progresses meanwhile).
constexpr size_t kUcxPostGroup = 1024;
constexpr int kUcxDirectDrainMs = 10000;

class UcxCore;

// From ucp_ep_print_info's text: whether one of the lanes UCX uses for RMA
// (roles rma#N, rma_bw#N) runs on a network RMA transport (rc, dc, ud, ...:
// not tcp, not one host's shared memory or copy engines). *rma_transports
// names the RMA lanes' transports ("none" without any: GET and PUT are then
// emulated with active messages).
bool UcxLanesHaveHardwareRma(const std::string &ep_info, std::string *rma_transports);
// From the same text: whether the lanes GET and PUT use (get[N] / put[N]
// lines) exist and all run over verbs (rc_*, dc_*: InfiniBand, RoCE, also
// soft-RoCE), where the NIC moves the bytes through the registration, never
// UCX copying a reply into a buffer by address (emulated RMA: tcp, no RMA
// lane, and posix / sysv lanes for user memory). Such an endpoint may move
// batches directly from and to registered local memory. False for text
// without get/put lines (another UCX version's format: not known).
bool UcxRmaLanesAreDirect(const std::string &ep_info);

class UcxTransport : public Transport {
 public:
  // kForced (llmdd.Transport=ucx): a link to every peer that advertises ucx,
  // taking every transfer. Under llmdd.Transport=auto, links rank after the
  // same-host path (PathRank), decline ranges the peer exports no key for
  // (the next path answers for them), and a registration UCX cannot map is
  // only not exported: kWhereItPays makes a link only to a peer the endpoint
  // reaches with hardware RMA (UcxLanesHaveHardwareRma; over UCX's tcp our
  // TCP is faster), kAnyPeer to every peer that runs UCX (llmdd.UcxUnderAuto=any).
  enum class Mode { kForced, kWhereItPays, kAnyPeer };
  // Null with *error when UCX cannot start (no transport, bad UCX_* variables).
  // `workers` (llmdd.UcxWorkers, 1..kUcxMaxWorkers): UCX workers of the
  // engine, on one UCP context, each with its own progress thread and staging; a link
  // to a peer has an endpoint on each (to the peer's workers in turn) and
  // moves the parts of a split transfer on different ones (max_parallel =
  // workers: the lane pool splits transfers of 1 MiB and more, path_policy.h).
  // Every registration is mapped once (on the shared context). Fewer workers
  // than asked (logged) when their addresses do not fit the handshake's 1024
  // bytes, when a further worker cannot start, or when this UCX does not lock
  // a shared context (built without thread support): one then. Under auto
  // (chosen caps) transfers are not split (max_parallel 1, CapsFor): a range
  // without a UCX key is declined whole to TCP; concurrent ones still spread.
  static std::shared_ptr<UcxTransport> Create(Mode mode, std::string *error, size_t workers = 1);
  // Whether this host has an RDMA device (InfiniBand or RoCE: an entry in
  // /sys/class/infiniband): where llmdd.UcxUnderAuto=rdma starts UCX.
  static bool HostHasRdmaDevice();
  ~UcxTransport() override;
  static const TransportCaps &StaticCaps();       // kForced, one worker
  static const TransportCaps &ChosenCaps();  // under auto, one worker
  // Either, for a transport with `workers` workers (max_parallel).
  static const TransportCaps &CapsFor(bool chosen_under_auto, size_t workers);
  const TransportCaps &Caps() const override { return CapsFor(mode_ != Mode::kForced, cores_.size()); }
  size_t Workers() const { return cores_.size(); }
  std::string LocalMetadata() const override;
  adxl::Status RegisterMemory(const TransportRegion &region, std::string *remote_key, std::string *error) override;
  void DeregisterMemory(const TransportRegion &region) override;
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override;
  // Key requests this engine answered, on all its workers, and on worker `i` (tests).
  uint64_t KeysGranted() const;
  uint64_t KeysGrantedOnWorker(size_t i) const;
  // Rounds this engine posted directly from and to registered local memory,
  // and through staging, on all its workers (tests).
  uint64_t DirectRounds() const;
  uint64_t StagedRounds() const;
  // Rounds (either way) posted on worker `i` (tests).
  uint64_t RoundsOnWorker(size_t i) const;
  // Direct rounds that ended before UCX completed all their operations,
  // whose local memory stayed in use until it did (tests).
  uint64_t LingeredRounds() const;
  size_t LingeringNow() const;  // such rounds whose operations have not all ended yet
  // Tests: how long a direct round that ended early waits for UCX
  // (kUcxDirectCancelGraceMs); 0 leaves every unfinished operation lingering.
  static void SetDirectCancelGraceForTests(int ms);
  // Rounds of the serving side's progress loop so far, and whether it sleeps
  // on the worker's event fd while idle (tests: an idle engine must not spin).
  uint64_t ProgressRounds() const;
  bool SleepsOnEventFd() const;

 private:
  UcxTransport(std::vector<std::shared_ptr<UcxCore>> cores, Mode mode) : cores_(std::move(cores)), mode_(mode) {}
  std::vector<std::shared_ptr<UcxCore>> cores_;  // one per worker, at least one
  const Mode mode_;
  // Registration on every worker (Map and its mirrors) and the retiring of a
  // registration on every worker each happen whole.
  std::mutex registry_mutex_;
};

class UcxLink : public TransportLink {
 public:
  UcxLink(std::shared_ptr<UcxCore> core, std::string peer_name, std::string address, std::string capability,
          const TransportCaps *caps);
  ~UcxLink() override;
  const TransportCaps &Caps() const override { return *caps_; }
  // Makes the endpoint now and says whether it moves data with hardware RMA
  // (*lanes: the RMA lanes' transports); false with *error when no endpoint
  // could be made.
  bool ReachesWithHardwareRma(Deadline deadline, std::string *lanes, std::string *error);
  bool Usable() const override { return !shut_down_.load(); }
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override;

 private:
  struct RemoteKey {
    uintptr_t addr = 0;
    uint64_t len = 0;
    uint32_t access = 0;
    ucp_rkey_h rkey = nullptr;
    Deadline::Clock::time_point expiry{};
    uint64_t ep_generation = 0;  // an rkey is unpacked on one endpoint
  };
  // Under the core's mutex: the endpoint, made when missing.
  ucp_ep_h EndpointLocked(std::string *error);
  // Under the core's mutex: ends the endpoint at once (its operations are canceled) and drops its keys.
  void CloseEndpointLocked(bool force);
  // Whether the next batch may try the direct path: not when the endpoint
  // is known not to be direct (read without the core's mutex; the round
  // checks again under it).
  bool MayGoDirect() const;
  // The key of the peer's registration holding `remote` with `rights` and
  // lease left, asking the peer when needed; *covered: how many of the `len`
  // bytes from `remote` it covers. Called without the core's mutex.
  adxl::Status KeyFor(uintptr_t remote, uint64_t len, uint32_t rights, Deadline deadline,
                      const TransferRequest *request, ucp_rkey_h *rkey, uint64_t *covered, std::string *error);
  RemoteKey *FindKeyLocked(uintptr_t remote, uint64_t len, uint32_t rights);
  // Under the core's mutex: `rkey` is still cached for this endpoint, covers
  // the range with `rights`, with lease left.
  bool KeyStandsLocked(ucp_rkey_h rkey, uintptr_t remote, uint64_t len, uint32_t rights) const;
  // One round of a batch: `segs` (at most kUcxStageBytes in all) through one
  // staging chunk; or, `direct`, all of a batch's segments from and to the
  // caller's registered memory (*not_direct when the endpoint or a local
  // range does not allow it: nothing was posted in that attempt, and the
  // caller stages instead). *posted: whether any UCX operation was posted
  // (in any attempt: bytes may have moved).
  TransportResult SubmitRound(adxl::TransferOp op, const Segment *segs, size_t count, uint64_t bytes,
                              Deadline deadline, TransferRequest *request, bool direct, bool *not_direct,
                              bool *posted);
  // Under auto (caps chosen_where_it_pays): a batch refused for want of a key (PARAM_INVALID) is
  // declined, for the next path to move or refuse.
  TransportResult DeclineWhereNotOurs(const TransferBatch &batch, TransportResult result) const;
  static void OnEndpointError(void *arg, ucp_ep_h ep, ucs_status_t status);

  std::shared_ptr<UcxCore> core_;
  const TransportCaps *caps_;
  const std::string peer_name_;
  const std::string address_;     // the peer's worker address
  const std::string capability_;  // the peer's key capability (its advertisement)
  std::atomic<bool> shut_down_{false};
  // Guarded by the core's mutex:
  ucp_ep_h ep_ = nullptr;
  uint64_t ep_generation_ = 0;
  // The endpoint's lanes (ucp_ep_print_info) and whether batches may move
  // directly over it (UcxRmaLanesAreDirect, or LLMDD_UCX_DIRECT).
  std::string ep_info_;
  bool ep_direct_ = false;
  std::atomic<int> direct_known_{0};  // 0: no endpoint yet, 1: direct, 2: staged
  bool ep_failed_ = false;
  std::string ep_error_;
  std::vector<RemoteKey> keys_;
  std::vector<ucp_rkey_h> retired_;  // dropped from keys_; destroyed when no batch is in flight
  int in_flight_ = 0;                // batches posted on this link
};

// A link over several workers (UcxTransport::Create's `workers` > 1): one
// UcxLink per local worker, each with its own endpoint (to the peer's
// workers in turn), keys and rounds. A batch, or one part of a transfer the
// lane pool split, goes to the link with the fewest batches in flight (ties
// in turn), so the parts of one transfer move on different workers at once.
class UcxWorkerLinks : public TransportLink {
 public:
  UcxWorkerLinks(std::vector<std::shared_ptr<UcxLink>> links, const TransportCaps *caps);
  const TransportCaps &Caps() const override { return *caps_; }
  bool Usable() const override;
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override;

 private:
  const std::vector<std::shared_ptr<UcxLink>> links_;
  const std::unique_ptr<std::atomic<int>[]> busy_;  // batches in flight per link
  std::atomic<size_t> next_{0};
  const TransportCaps *caps_;
};

}  // namespace llmdd
