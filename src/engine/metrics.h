// EngineMetrics: the counters and histograms of one engine (docs/METRICS.md
// names every series). Always on, so the hot path is a handful of relaxed
// atomic adds on a shard that the calling thread rarely shares (no lock, no
// allocation, no clock read of its own: the engine passes the times it has).
// A snapshot sums the shards; it is a consistent-enough view for a scraper
// (each counter is exact, two counters may be a transfer apart).
//
// Labels are small fixed sets, so every series is an array slot:
//   op        read, write
//   transport tcp, shm, fake, none (the transfer ended before a path took it)
//   status    the adxl::Status name (SUCCESS, PARAM_INVALID, ...)
//   size      size class of the transfer's bytes (le4KiB .. gt16MiB)
//   reason    of a refusal on the serving side: auth, cap, range, rights
//
// Thread-safety: every Record/Count call may run on any thread at once;
// Snapshot may run concurrently with them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "adxl/adxl_types.h"

namespace llmdd {

namespace metrics {

constexpr size_t kOps = 2;  // adxl::READ, adxl::WRITE
constexpr const char *kOpNames[kOps] = {"read", "write"};

enum Transport : uint8_t { kTcp = 0, kShm = 1, kUcx = 2, kFake = 3, kNone = 4 };
constexpr size_t kTransports = 5;
constexpr const char *kTransportNames[kTransports] = {"tcp", "shm", "ucx", "fake", "none"};
// The slot of a transport by its TransportCaps::name (kNone for an unknown one).
uint8_t TransportIndex(const char *name);

// The statuses a transfer can end with; every other value counts as FAILED.
constexpr size_t kStatuses = 8;
constexpr adxl::Status kStatusValues[kStatuses] = {adxl::SUCCESS,       adxl::PARAM_INVALID,     adxl::TIMEOUT,
                                                    adxl::NOT_CONNECTED, adxl::ALREADY_CONNECTED, adxl::UNSUPPORTED,
                                                    adxl::RESOURCE_EXHAUSTED, adxl::FAILED};
constexpr const char *kStatusNames[kStatuses] = {"SUCCESS",           "PARAM_INVALID", "TIMEOUT",
                                                 "NOT_CONNECTED",     "ALREADY_CONNECTED", "UNSUPPORTED",
                                                 "RESOURCE_EXHAUSTED", "FAILED"};
inline size_t StatusIndex(adxl::Status status) {
  for (size_t i = 0; i + 1 < kStatuses; ++i)
    if (kStatusValues[i] == status) return i;
  return kStatuses - 1;
}

// Size classes of a transfer (its bytes), upper bounds inclusive.
constexpr size_t kSizeClasses = 5;
constexpr uint64_t kSizeBounds[kSizeClasses - 1] = {4ULL << 10, 64ULL << 10, 1ULL << 20, 16ULL << 20};
constexpr const char *kSizeNames[kSizeClasses] = {"le4KiB", "le64KiB", "le1MiB", "le16MiB", "gt16MiB"};
inline size_t SizeIndex(uint64_t bytes) {
  size_t i = 0;
  while (i < kSizeClasses - 1 && bytes > kSizeBounds[i]) ++i;
  return i;
}

// Latency buckets (upper bounds, ns): 5 µs .. 10 s, then +Inf. From the
// smallest same-host READ (~2-3 µs lands in the first) to the longest
// deadline anyone sets in practice.
constexpr size_t kFiniteBuckets = 20;
constexpr size_t kBuckets = kFiniteBuckets + 1;
constexpr uint64_t kBucketBoundsNs[kFiniteBuckets] = {
    5000,       10000,      25000,      50000,       100000,      250000,      500000,
    1000000,    2500000,    5000000,    10000000,    25000000,    50000000,    100000000,
    250000000,  500000000,  1000000000, 2500000000,  5000000000,  10000000000};
inline size_t BucketIndex(uint64_t ns) {
  size_t i = 0;
  while (i < kFiniteBuckets && ns > kBucketBoundsNs[i]) ++i;
  return i;
}

enum Refusal : uint8_t { kAuth = 0, kCap = 1, kRange = 2, kRights = 3 };
constexpr size_t kRefusals = 4;
constexpr const char *kRefusalNames[kRefusals] = {"auth", "cap", "range", "rights"};

enum Direction : uint8_t { kPull = 0, kPush = 1 };
constexpr const char *kDirectionNames[2] = {"pull", "push"};

// How a same-host READ under the standing lease copied (no message): with the
// kernel, or with memcpy from our mapping of the peer's shareable memory.
enum OneSidedPath : uint8_t { kKernelCopy = 0, kMapped = 1 };
constexpr const char *kOneSidedPathNames[2] = {"process_vm_readv", "mapped"};

}  // namespace metrics

// What one finished transfer reports (Engine fills it from its request).
struct TransferRecord {
  adxl::TransferOp op = adxl::READ;
  uint8_t transport = metrics::kNone;
  adxl::Status status = adxl::FAILED;
  uint64_t bytes = 0;
  uint64_t descriptors_submitted = 0;  // as the caller passed them
  uint64_t descriptors_coalesced = 0;  // after merging neighbours (what the path moved)
  uint64_t total_ns = 0;               // submit -> complete
};

// Everything, summed, plus the gauges the engine reads when asked.
struct MetricsSnapshot {
  std::string engine;  // the engine's identity (a label of every series)
  uint64_t transfers[metrics::kOps][metrics::kTransports][metrics::kStatuses] = {};
  uint64_t bytes[metrics::kOps][metrics::kTransports] = {};  // moved by transfers that completed
  uint64_t descriptors_submitted[metrics::kOps] = {};
  uint64_t descriptors_coalesced[metrics::kOps] = {};
  uint64_t latency_buckets[metrics::kTransports][metrics::kSizeClasses][metrics::kBuckets] = {};  // not cumulative
  uint64_t latency_sum_ns[metrics::kTransports][metrics::kSizeClasses] = {};
  uint64_t connects[metrics::kStatuses] = {};
  uint64_t disconnects = 0;
  uint64_t reconnects = 0;
  uint64_t refusals[metrics::kRefusals] = {};
  // LLM-DataDist (zero under ADXL/HIXL).
  uint64_t links_established = 0;
  uint64_t links_ended = 0;
  uint64_t blocks[2] = {};           // pulled, pushed (PullKvBlocks / PushKvBlocks)
  uint64_t cache_transfers[2] = {};  // PullKvCache / PushKvCache and the Blocks calls that succeeded
  uint64_t one_sided_reads[2] = {};       // same-host READs (or parts) under the standing lease, by OneSidedPath
  uint64_t one_sided_read_bytes[2] = {};
  uint64_t served_same_host_writes[2] = {};  // same-host WRITEs this engine served (copied), by OneSidedPath
  uint64_t served_same_host_write_bytes[2] = {};
  // Gauges, read at snapshot time.
  uint64_t sessions = 0;         // peers connected to our server
  uint64_t channels = 0;         // our connections to peers
  uint64_t lanes = 0;            // data lanes open (ours to peers, and peers' to us)
  uint64_t event_threads = 0;
  uint64_t worker_threads = 0;
  uint64_t requests_in_flight = 0;
  uint64_t async_requests_held = 0;
  uint64_t registered_regions = 0;
  uint64_t registered_bytes = 0;
  uint64_t links = 0;            // LLM-DataDist links
  bool initialized = false;
};

class EngineMetrics {
 public:
  EngineMetrics();
  ~EngineMetrics();
  EngineMetrics(const EngineMetrics &) = delete;
  EngineMetrics &operator=(const EngineMetrics &) = delete;

  // Hot path: one finished transfer.
  void RecordTransfer(const TransferRecord &record);
  void CountConnect(adxl::Status status) { Add(&connects_[metrics::StatusIndex(status)]); }
  void CountDisconnect() { Add(&disconnects_); }
  void CountReconnect() { Add(&reconnects_); }
  void CountRefusal(metrics::Refusal reason) { Add(&refusals_[reason]); }
  void CountLink(bool established) { Add(established ? &links_established_ : &links_ended_); }
  void CountBlocks(metrics::Direction direction, uint64_t blocks) { Add(&blocks_[direction], blocks); }
  void CountCacheTransfer(metrics::Direction direction) { Add(&cache_transfers_[direction]); }
  void SetLinks(uint64_t links) { links_.store(links, std::memory_order_relaxed); }
  void CountOneSidedRead(metrics::OneSidedPath path, uint64_t bytes) {
    Add(&one_sided_reads_[path]);
    Add(&one_sided_read_bytes_[path], bytes);
  }
  void CountServedSameHostWrite(metrics::OneSidedPath path, uint64_t bytes) {
    Add(&served_writes_[path]);
    Add(&served_write_bytes_[path], bytes);
  }

  // Sums every counter into *out (the gauges are left as they are).
  void Snapshot(MetricsSnapshot *out) const;

 private:
  static void Add(std::atomic<uint64_t> *counter, uint64_t n = 1) { counter->fetch_add(n, std::memory_order_relaxed); }
  struct Shard;
  // Transfers finish on many threads (callers, workers). A thread claims a
  // shard of its own on its first transfer (kOwnedShards of them) and adds to
  // it with plain relaxed stores, no read-modify-write: one writer per shard,
  // so nothing is lost, and a snapshot reads each counter atomically. A
  // thread that finds none free adds to the shared shard with fetch_add.
  // A thread's claims end when it exits (metrics.cc, ThreadShards).
  static constexpr size_t kOwnedShards = 32;
  Shard *ClaimShard(bool *owned);
  friend struct ThreadShards;
  const uint64_t uid_;  // process-unique: a thread's cache never mistakes a new object at the same address
  std::unique_ptr<Shard[]> shards_;  // kOwnedShards owned ones, then the shared one
  std::atomic<uint64_t> connects_[metrics::kStatuses] = {};
  std::atomic<uint64_t> disconnects_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<uint64_t> refusals_[metrics::kRefusals] = {};
  std::atomic<uint64_t> links_established_{0};
  std::atomic<uint64_t> links_ended_{0};
  std::atomic<uint64_t> blocks_[2] = {};
  std::atomic<uint64_t> cache_transfers_[2] = {};
  std::atomic<uint64_t> links_{0};
  std::atomic<uint64_t> one_sided_reads_[2] = {};
  std::atomic<uint64_t> one_sided_read_bytes_[2] = {};
  std::atomic<uint64_t> served_writes_[2] = {};
  std::atomic<uint64_t> served_write_bytes_[2] = {};
};

// The snapshot in the Prometheus text exposition format (version 0.0.4):
// series with a zero value are left out except the unlabelled ones and the
// refusal reasons (docs/METRICS.md).
std::string RenderPrometheus(const MetricsSnapshot &snapshot);
// The same numbers as one JSON object (docs/METRICS.md, "JSON").
std::string RenderJson(const MetricsSnapshot &snapshot);

}  // namespace llmdd
