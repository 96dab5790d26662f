// LLM-DataDist messages carried as engine app messages (docs/PROTOCOL.md,
// "LLM-DataDist messages"). Bodies are little-endian; every decoder bounds what
// it reads.
#pragma once

#include <compare>
#include <cstdint>
#include <string>

#include "datadist/planner.h"

namespace llmdd::datadist {

enum AppType : uint32_t {
  kAppLink = 1,       // client -> server: bind this connection as the link between two clusters
  kAppUnlink = 2,     // either side: tear the link down on the receiver too
  kAppGetCache = 3,   // either side: geometry of one registered cache
  kAppFindCache = 4,  // either side: the cache registered under a key, and its geometry
};

// A cache key (llmdd_ext::CacheKey without its reserved bytes); kind is
// llmdd_ext::CacheKeyKind. Ordered, for the key maps of both sides.
struct CacheKeyId {
  uint32_t kind = 0;
  uint64_t cluster_id = 0;
  uint64_t model_id = 0;
  uint64_t req_id = 0;
  uint64_t prefix_id = 0;
  auto operator<=>(const CacheKeyId &) const = default;
};
constexpr uint32_t kBlocksKey = 1;   // llmdd_ext::kBlocksCacheKey
constexpr uint32_t kRequestKey = 2;  // llmdd_ext::kRequestCacheKey

// What a key names: a cache and its row (0 for a blocks key).
struct KeyTarget {
  int64_t cache_id = -1;
  uint32_t batch_index = 0;
};

struct LinkRequest {
  uint64_t sender_cluster = 0;
  uint64_t expected_receiver_cluster = 0;
};

std::string EncodeLinkRequest(const LinkRequest &req);
bool DecodeLinkRequest(const std::string &body, LinkRequest *out);

std::string EncodeUnlink(uint64_t sender_cluster);
bool DecodeUnlink(const std::string &body, uint64_t *sender_cluster);

std::string EncodeCacheQuery(int64_t cache_id);
bool DecodeCacheQuery(const std::string &body, int64_t *cache_id);

// Key query; the decoder refuses an unknown kind.
std::string EncodeKeyQuery(const CacheKeyId &key);
bool DecodeKeyQuery(const std::string &body, CacheKeyId *key);

// Key answer: the target, then the cache's geometry (as EncodeGeometry), so
// that a transfer by key needs no second round trip.
std::string EncodeKeyAnswer(const KeyTarget &target, const CacheGeometry &geometry);
bool DecodeKeyAnswer(const std::string &body, KeyTarget *target, CacheGeometry *geometry);

// Geometry answer; a cache may have at most kMaxTensorsPerCache tensors.
constexpr uint32_t kMaxTensorsPerCache = 1U << 20;
std::string EncodeGeometry(const CacheGeometry &geometry);
bool DecodeGeometry(const std::string &body, CacheGeometry *out);

}  // namespace llmdd::datadist
