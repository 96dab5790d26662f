// LLM-DataDist messages carried as engine app messages (docs/PROTOCOL.md,
// "LLM-DataDist messages"). Bodies are little-endian; every decoder bounds what
// it reads.
#pragma once

#include <cstdint>
#include <string>

#include "datadist/planner.h"

namespace llmdd::datadist {

enum AppType : uint32_t {
  kAppLink = 1,      // client -> server: bind this connection as the link between two clusters
  kAppUnlink = 2,    // either side: tear the link down on the receiver too
  kAppGetCache = 3,  // either side: geometry of one registered cache
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

// Geometry answer; a cache may have at most kMaxTensorsPerCache tensors.
constexpr uint32_t kMaxTensorsPerCache = 1U << 20;
std::string EncodeGeometry(const CacheGeometry &geometry);
bool DecodeGeometry(const std::string &body, CacheGeometry *out);

}  // namespace llmdd::datadist
