#include "engine/metrics.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <unordered_set>

namespace llmdd {

uint8_t metrics::TransportIndex(const char *name) {
  if (name == nullptr) return kNone;
  if (std::strcmp(name, "tcp") == 0) return kTcp;
  if (std::strcmp(name, "shm") == 0) return kShm;
  if (std::strcmp(name, "ucx") == 0) return kUcx;
  if (std::strcmp(name, "fake") == 0) return kFake;
  return kNone;
}

using namespace metrics;

// One cache-line-aligned block of the per-transfer counters (~4 KiB).
struct alignas(64) EngineMetrics::Shard {
  std::atomic<bool> claimed{false};  // owned by a thread (owned shards only)
  std::atomic<uint64_t> transfers[kOps][kTransports][kStatuses] = {};
  std::atomic<uint64_t> bytes[kOps][kTransports] = {};
  std::atomic<uint64_t> descriptors_submitted[kOps] = {};
  std::atomic<uint64_t> descriptors_coalesced[kOps] = {};
  std::atomic<uint64_t> latency_buckets[kTransports][kSizeClasses][kBuckets] = {};
  std::atomic<uint64_t> latency_sum_ns[kTransports][kSizeClasses] = {};
};

namespace {
// The EngineMetrics alive (by uid), so that a thread that exits releases its
// shards only in objects that still exist; both sides take the mutex.
std::mutex g_live_mutex;
std::unordered_set<uint64_t> g_live;
std::atomic<uint64_t> g_next_uid{1};
}  // namespace

// This thread's shards, one per engine it recorded transfers in (the last
// few engines; an older claim is given back to make room). Trivially
// destructible, so the hot path's thread_local access has no guard; the
// claims are given back at thread exit by a ShardReleaser, which a thread
// constructs on its first claim only.
struct ThreadShards {
  struct Entry {
    uint64_t uid;
    EngineMetrics::Shard *shard;
    bool owned;
  };
  static constexpr size_t kEntries = 4;
  Entry entries[kEntries];
  static void Release(Entry *e) {
    if (e->uid == 0 || !e->owned) return;
    std::lock_guard guard(g_live_mutex);
    if (g_live.count(e->uid) != 0) e->shard->claimed.store(false, std::memory_order_release);
    e->uid = 0;
  }
};
thread_local ThreadShards t_shards{};

namespace {
struct ShardReleaser {
  ~ShardReleaser() {
    for (ThreadShards::Entry &e : t_shards.entries) ThreadShards::Release(&e);
  }
};
thread_local ShardReleaser t_releaser;
}  // namespace

EngineMetrics::EngineMetrics() : uid_(g_next_uid.fetch_add(1)), shards_(new Shard[kOwnedShards + 1]) {
  std::lock_guard guard(g_live_mutex);
  g_live.insert(uid_);
}

EngineMetrics::~EngineMetrics() {
  std::lock_guard guard(g_live_mutex);
  g_live.erase(uid_);
}

EngineMetrics::Shard *EngineMetrics::ClaimShard(bool *owned) {
  for (size_t i = 0; i < kOwnedShards; ++i) {
    bool expected = false;
    if (!shards_[i].claimed.load(std::memory_order_relaxed) &&
        shards_[i].claimed.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      *owned = true;
      return &shards_[i];
    }
  }
  *owned = false;
  return &shards_[kOwnedShards];
}

namespace {
// A thread's own counter: a plain read and store (it is the only writer).
inline void Bump(std::atomic<uint64_t> *c, uint64_t n, bool owned) {
  if (owned) {
    c->store(c->load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  } else {
    c->fetch_add(n, std::memory_order_relaxed);
  }
}
}  // namespace

void EngineMetrics::RecordTransfer(const TransferRecord &r) {
  ThreadShards::Entry *entry = nullptr;
  for (ThreadShards::Entry &e : t_shards.entries) {
    if (e.uid == uid_) {
      entry = &e;
      break;
    }
  }
  if (entry == nullptr) {  // this thread's first transfer in this engine
    entry = &t_shards.entries[0];
    for (ThreadShards::Entry &e : t_shards.entries) {
      if (e.uid == 0) {
        entry = &e;
        break;
      }
    }
    ThreadShards::Release(entry);
    ShardReleaser *volatile releaser = &t_releaser;  // constructed here, on the cold path: it gives
    (void)releaser;                                   // the claims back at thread exit
    entry->shard = ClaimShard(&entry->owned);
    entry->uid = uid_;
  }
  Shard &s = *entry->shard;
  const bool owned = entry->owned;
  const size_t op = r.op == adxl::WRITE ? 1 : 0;
  const size_t transport = r.transport < kTransports ? r.transport : size_t{kNone};
  const size_t status = StatusIndex(r.status);
  Bump(&s.transfers[op][transport][status], 1, owned);
  if (r.status == adxl::SUCCESS) Bump(&s.bytes[op][transport], r.bytes, owned);
  Bump(&s.descriptors_submitted[op], r.descriptors_submitted, owned);
  Bump(&s.descriptors_coalesced[op], r.descriptors_coalesced, owned);
  const size_t size = SizeIndex(r.bytes);
  Bump(&s.latency_buckets[transport][size][BucketIndex(r.total_ns)], 1, owned);
  Bump(&s.latency_sum_ns[transport][size], r.total_ns, owned);
}

void EngineMetrics::Snapshot(MetricsSnapshot *out) const {
  const auto load = [](const std::atomic<uint64_t> &a) { return a.load(std::memory_order_relaxed); };
  for (size_t i = 0; i <= kOwnedShards; ++i) {
    const Shard &s = shards_[i];
    for (size_t op = 0; op < kOps; ++op) {
      for (size_t t = 0; t < kTransports; ++t) {
        for (size_t st = 0; st < kStatuses; ++st) out->transfers[op][t][st] += load(s.transfers[op][t][st]);
        out->bytes[op][t] += load(s.bytes[op][t]);
      }
      out->descriptors_submitted[op] += load(s.descriptors_submitted[op]);
      out->descriptors_coalesced[op] += load(s.descriptors_coalesced[op]);
    }
    for (size_t t = 0; t < kTransports; ++t) {
      for (size_t z = 0; z < kSizeClasses; ++z) {
        for (size_t b = 0; b < kBuckets; ++b) out->latency_buckets[t][z][b] += load(s.latency_buckets[t][z][b]);
        out->latency_sum_ns[t][z] += load(s.latency_sum_ns[t][z]);
      }
    }
  }
  for (size_t st = 0; st < kStatuses; ++st) out->connects[st] += load(connects_[st]);
  out->disconnects += load(disconnects_);
  out->reconnects += load(reconnects_);
  for (size_t r = 0; r < kRefusals; ++r) out->refusals[r] += load(refusals_[r]);
  out->links_established += load(links_established_);
  out->links_ended += load(links_ended_);
  for (size_t d = 0; d < 2; ++d) {
    out->blocks[d] += load(blocks_[d]);
    out->cache_transfers[d] += load(cache_transfers_[d]);
  }
  out->links = load(links_);
  for (size_t h = 0; h < 2; ++h) {
    out->one_sided_reads[h] += load(one_sided_reads_[h]);
    out->one_sided_read_bytes[h] += load(one_sided_read_bytes_[h]);
    out->served_same_host_writes[h] += load(served_writes_[h]);
    out->served_same_host_write_bytes[h] += load(served_write_bytes_[h]);
  }
}

// ---------------------------------------------------------------- rendering

namespace {

// A label value as Prometheus' text format escapes it (backslash, quote, newline).
std::string PromEscape(const std::string &value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// A JSON string's contents (control characters as \u00XX).
std::string JsonEscape(const std::string &value) {
  std::string out;
  out.reserve(value.size());
  for (unsigned char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

std::string Seconds(uint64_t ns) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(ns) / 1e9);
  return buf;
}

class Prom {
 public:
  explicit Prom(const MetricsSnapshot &s) : engine_("engine=\"" + PromEscape(s.engine) + "\"") {}
  void Header(const char *name, const char *type, const char *help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  // name{engine="..",labels} value
  void Line(const char *name, const std::string &labels, const std::string &value) {
    out_ += name;
    out_ += '{';
    out_ += engine_;
    if (!labels.empty()) {
      out_ += ',';
      out_ += labels;
    }
    out_ += "} ";
    out_ += value;
    out_ += '\n';
  }
  void Line(const char *name, const std::string &labels, uint64_t value) { Line(name, labels, std::to_string(value)); }
  // A series of one sample without labels of its own: its header, then the sample.
  void Single(const char *name, const char *type, const char *help, uint64_t value) {
    Header(name, type, help);
    Line(name, "", value);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string engine_;
  std::string out_;
};

std::string L(const char *k1, const char *v1) { return std::string(k1) + "=\"" + v1 + "\""; }
std::string L(const char *k1, const char *v1, const char *k2, const char *v2) {
  return L(k1, v1) + "," + L(k2, v2);
}

}  // namespace

std::string RenderPrometheus(const MetricsSnapshot &s) {
  Prom p(s);
  p.Header("llmdd_transfers_total", "counter", "Transfers that ended, by operation, transport and final status.");
  for (size_t op = 0; op < kOps; ++op)
    for (size_t t = 0; t < kTransports; ++t)
      for (size_t st = 0; st < kStatuses; ++st)
        if (s.transfers[op][t][st] != 0)
          p.Line("llmdd_transfers_total",
                 L("op", kOpNames[op], "transport", kTransportNames[t]) + "," + L("status", kStatusNames[st]),
                 s.transfers[op][t][st]);
  p.Header("llmdd_transfer_bytes_total", "counter", "Bytes moved by transfers that completed (SUCCESS).");
  for (size_t op = 0; op < kOps; ++op)
    for (size_t t = 0; t < kTransports; ++t)
      if (s.bytes[op][t] != 0)
        p.Line("llmdd_transfer_bytes_total", L("op", kOpNames[op], "transport", kTransportNames[t]), s.bytes[op][t]);
  p.Header("llmdd_transfer_descriptors_total", "counter",
           "Descriptors of ended transfers: as submitted by the caller, and after merging neighbours (coalesced).");
  for (size_t op = 0; op < kOps; ++op) {
    p.Line("llmdd_transfer_descriptors_total", L("op", kOpNames[op], "stage", "submitted"),
           s.descriptors_submitted[op]);
    p.Line("llmdd_transfer_descriptors_total", L("op", kOpNames[op], "stage", "coalesced"),
           s.descriptors_coalesced[op]);
  }
  p.Header("llmdd_transfer_duration_seconds", "histogram",
           "Time from submit to completion of ended transfers, by transport and size class.");
  for (size_t t = 0; t < kTransports; ++t) {
    for (size_t z = 0; z < kSizeClasses; ++z) {
      uint64_t count = 0;
      for (size_t b = 0; b < kBuckets; ++b) count += s.latency_buckets[t][z][b];
      if (count == 0) continue;
      const std::string labels = L("transport", kTransportNames[t], "size", kSizeNames[z]);
      uint64_t cumulative = 0;
      for (size_t b = 0; b < kBuckets; ++b) {
        cumulative += s.latency_buckets[t][z][b];
        const std::string le = b < kFiniteBuckets ? Seconds(kBucketBoundsNs[b]) : "+Inf";
        p.Line("llmdd_transfer_duration_seconds_bucket", labels + "," + L("le", le.c_str()), cumulative);
      }
      p.Line("llmdd_transfer_duration_seconds_sum", labels, Seconds(s.latency_sum_ns[t][z]));
      p.Line("llmdd_transfer_duration_seconds_count", labels, count);
    }
  }
  p.Header("llmdd_connects_total", "counter", "Connects to peers this engine made, by outcome.");
  for (size_t st = 0; st < kStatuses; ++st)
    if (s.connects[st] != 0 || st == 0) p.Line("llmdd_connects_total", L("status", kStatusNames[st]), s.connects[st]);
  p.Single("llmdd_disconnects_total", "counter", "Disconnects from peers this engine made.", s.disconnects);
  p.Single("llmdd_reconnects_total", "counter", "Dead channels replaced by a new connect (auto-connect).", s.reconnects);
  p.Header("llmdd_refusals_total", "counter",
           "Peer connections and requests this engine's serving side refused, by reason.");
  for (size_t r = 0; r < kRefusals; ++r) p.Line("llmdd_refusals_total", L("reason", kRefusalNames[r]), s.refusals[r]);
  p.Header("llmdd_same_host_one_sided_reads_total", "counter",
           "Same-host READs (or parts) copied under the standing read lease, no message, by how they copied.");
  for (size_t h = 0; h < 2; ++h)
    p.Line("llmdd_same_host_one_sided_reads_total", L("path", kOneSidedPathNames[h]), s.one_sided_reads[h]);
  p.Header("llmdd_same_host_one_sided_read_bytes_total", "counter",
           "Bytes of those READs, by how they copied.");
  for (size_t h = 0; h < 2; ++h)
    p.Line("llmdd_same_host_one_sided_read_bytes_total", L("path", kOneSidedPathNames[h]),
           s.one_sided_read_bytes[h]);
  p.Header("llmdd_same_host_served_writes_total", "counter",
           "Same-host WRITEs this engine served (copied from the requester), by how they copied.");
  for (size_t h = 0; h < 2; ++h)
    p.Line("llmdd_same_host_served_writes_total", L("path", kOneSidedPathNames[h]), s.served_same_host_writes[h]);
  p.Header("llmdd_same_host_served_write_bytes_total", "counter", "Bytes of those WRITEs, by how they copied.");
  for (size_t h = 0; h < 2; ++h)
    p.Line("llmdd_same_host_served_write_bytes_total", L("path", kOneSidedPathNames[h]),
           s.served_same_host_write_bytes[h]);
  p.Single("llmdd_sessions", "gauge", "Peers connected to this engine's server.", s.sessions);
  p.Single("llmdd_channels", "gauge", "Connections this engine holds to peers.", s.channels);
  p.Single("llmdd_lanes", "gauge", "Data lanes open, to peers and from peers.", s.lanes);
  p.Header("llmdd_threads", "gauge", "Threads of the engine running now, by pool.");
  p.Line("llmdd_threads", L("pool", "event"), s.event_threads);
  p.Line("llmdd_threads", L("pool", "worker"), s.worker_threads);
  p.Single("llmdd_requests_in_flight", "gauge", "Transfer requests admitted and not done.", s.requests_in_flight);
  p.Single("llmdd_async_requests_held", "gauge", "Asynchronous requests whose terminal status was not read yet.",
           s.async_requests_held);
  p.Single("llmdd_registered_regions", "gauge", "Memory regions registered.", s.registered_regions);
  p.Single("llmdd_registered_bytes", "gauge", "Bytes of memory registered.", s.registered_bytes);
  p.Single("llmdd_datadist_links", "gauge", "LLM-DataDist links to other clusters.", s.links);
  p.Header("llmdd_datadist_link_events_total", "counter", "LLM-DataDist links established and ended.");
  p.Line("llmdd_datadist_link_events_total", L("event", "established"), s.links_established);
  p.Line("llmdd_datadist_link_events_total", L("event", "ended"), s.links_ended);
  p.Header("llmdd_datadist_blocks_total", "counter", "KV blocks moved by PullKvBlocks / PushKvBlocks that succeeded.");
  for (size_t d = 0; d < 2; ++d) p.Line("llmdd_datadist_blocks_total", L("direction", kDirectionNames[d]), s.blocks[d]);
  p.Header("llmdd_datadist_cache_transfers_total", "counter",
           "LLM-DataDist Pull/Push calls (KvCache and KvBlocks) that succeeded.");
  for (size_t d = 0; d < 2; ++d)
    p.Line("llmdd_datadist_cache_transfers_total", L("direction", kDirectionNames[d]), s.cache_transfers[d]);
  return p.Take();
}

std::string RenderJson(const MetricsSnapshot &s) {
  std::string o;
  o.reserve(4096);
  const auto num = [&](const char *key, uint64_t v, bool comma = true) {
    o += '"';
    o += key;
    o += "\":";
    o += std::to_string(v);
    if (comma) o += ',';
  };
  o += "{\"engine\":\"" + JsonEscape(s.engine) + "\",\"initialized\":";
  o += s.initialized ? "true," : "false,";
  o += "\"transfers\":[";
  bool first = true;
  for (size_t op = 0; op < kOps; ++op)
    for (size_t t = 0; t < kTransports; ++t)
      for (size_t st = 0; st < kStatuses; ++st) {
        if (s.transfers[op][t][st] == 0) continue;
        if (!first) o += ',';
        first = false;
        o += std::string("{\"op\":\"") + kOpNames[op] + "\",\"transport\":\"" + kTransportNames[t] +
             "\",\"status\":\"" + kStatusNames[st] + "\",";
        num("count", s.transfers[op][t][st], false);
        o += '}';
      }
  o += "],\"bytes\":[";
  first = true;
  for (size_t op = 0; op < kOps; ++op)
    for (size_t t = 0; t < kTransports; ++t) {
      if (s.bytes[op][t] == 0) continue;
      if (!first) o += ',';
      first = false;
      o += std::string("{\"op\":\"") + kOpNames[op] + "\",\"transport\":\"" + kTransportNames[t] + "\",";
      num("bytes", s.bytes[op][t], false);
      o += '}';
    }
  o += "],\"descriptors\":{";
  for (size_t op = 0; op < kOps; ++op) {
    o += std::string("\"") + kOpNames[op] + "\":{";
    num("submitted", s.descriptors_submitted[op]);
    num("coalesced", s.descriptors_coalesced[op], false);
    o += op + 1 < kOps ? "}," : "}";
  }
  o += "},\"latency\":[";
  first = true;
  for (size_t t = 0; t < kTransports; ++t)
    for (size_t z = 0; z < kSizeClasses; ++z) {
      uint64_t count = 0;
      for (size_t b = 0; b < kBuckets; ++b) count += s.latency_buckets[t][z][b];
      if (count == 0) continue;
      if (!first) o += ',';
      first = false;
      o += std::string("{\"transport\":\"") + kTransportNames[t] + "\",\"size\":\"" + kSizeNames[z] + "\",";
      num("count", count);
      o += "\"sum_seconds\":" + Seconds(s.latency_sum_ns[t][z]) + ",\"buckets\":[";
      // Cumulative, as Prometheus' buckets are; le null is +Inf.
      uint64_t cumulative = 0;
      for (size_t b = 0; b < kBuckets; ++b) {
        cumulative += s.latency_buckets[t][z][b];
        o += "{\"le\":" + (b < kFiniteBuckets ? Seconds(kBucketBoundsNs[b]) : std::string("null")) + ",";
        num("count", cumulative, false);
        o += b + 1 < kBuckets ? "}," : "}";
      }
      o += "]}";
    }
  o += "],\"connects\":{";
  for (size_t st = 0; st < kStatuses; ++st) num(kStatusNames[st], s.connects[st], st + 1 < kStatuses);
  o += "},";
  num("disconnects", s.disconnects);
  num("reconnects", s.reconnects);
  o += "\"refusals\":{";
  for (size_t r = 0; r < kRefusals; ++r) num(kRefusalNames[r], s.refusals[r], r + 1 < kRefusals);
  o += "},\"same_host_one_sided_reads\":{";
  for (size_t h = 0; h < 2; ++h) num(kOneSidedPathNames[h], s.one_sided_reads[h], h + 1 < 2);
  o += "},\"same_host_one_sided_read_bytes\":{";
  for (size_t h = 0; h < 2; ++h) num(kOneSidedPathNames[h], s.one_sided_read_bytes[h], h + 1 < 2);
  o += "},\"same_host_served_writes\":{";
  for (size_t h = 0; h < 2; ++h) num(kOneSidedPathNames[h], s.served_same_host_writes[h], h + 1 < 2);
  o += "},\"same_host_served_write_bytes\":{";
  for (size_t h = 0; h < 2; ++h) num(kOneSidedPathNames[h], s.served_same_host_write_bytes[h], h + 1 < 2);
  o += "},\"gauges\":{";
  num("sessions", s.sessions);
  num("channels", s.channels);
  num("lanes", s.lanes);
  num("event_threads", s.event_threads);
  num("worker_threads", s.worker_threads);
  num("requests_in_flight", s.requests_in_flight);
  num("async_requests_held", s.async_requests_held);
  num("registered_regions", s.registered_regions);
  num("registered_bytes", s.registered_bytes, false);
  o += "},\"datadist\":{";
  num("links", s.links);
  num("links_established", s.links_established);
  num("links_ended", s.links_ended);
  num("blocks_pulled", s.blocks[kPull]);
  num("blocks_pushed", s.blocks[kPush]);
  num("cache_pulls", s.cache_transfers[kPull]);
  num("cache_pushes", s.cache_transfers[kPush], false);
  o += "}}";
  return o;
}

}  // namespace llmdd
