#include "datadist/link_messages.h"

#include "engine/wire.h"

namespace llmdd::datadist {

using wire::BodyReader;
using wire::BodyWriter;

std::string EncodeLinkRequest(const LinkRequest &req) {
  BodyWriter w;
  w.U64(req.sender_cluster);
  w.U64(req.expected_receiver_cluster);
  return w.Data();
}

bool DecodeLinkRequest(const std::string &body, LinkRequest *out) {
  BodyReader r(body.data(), body.size());
  return r.U64(&out->sender_cluster) && r.U64(&out->expected_receiver_cluster);
}

std::string EncodeUnlink(uint64_t sender_cluster) {
  BodyWriter w;
  w.U64(sender_cluster);
  return w.Data();
}

bool DecodeUnlink(const std::string &body, uint64_t *sender_cluster) {
  BodyReader r(body.data(), body.size());
  return r.U64(sender_cluster);
}

std::string EncodeCacheQuery(int64_t cache_id) {
  BodyWriter w;
  w.U64(static_cast<uint64_t>(cache_id));
  return w.Data();
}

bool DecodeCacheQuery(const std::string &body, int64_t *cache_id) {
  BodyReader r(body.data(), body.size());
  uint64_t v = 0;
  if (!r.U64(&v)) return false;
  *cache_id = static_cast<int64_t>(v);
  return true;
}

std::string EncodeKeyQuery(const CacheKeyId &key) {
  BodyWriter w;
  w.U32(key.kind);
  w.U64(key.cluster_id);
  w.U64(key.model_id);
  w.U64(key.req_id);
  w.U64(key.prefix_id);
  return w.Data();
}

bool DecodeKeyQuery(const std::string &body, CacheKeyId *key) {
  BodyReader r(body.data(), body.size());
  if (!r.U32(&key->kind) || !r.U64(&key->cluster_id) || !r.U64(&key->model_id) || !r.U64(&key->req_id) ||
      !r.U64(&key->prefix_id))
    return false;
  return r.Left() == 0 && (key->kind == kBlocksKey || key->kind == kRequestKey);
}

std::string EncodeKeyAnswer(const KeyTarget &target, const CacheGeometry &geometry) {
  BodyWriter w;
  w.U64(static_cast<uint64_t>(target.cache_id));
  w.U32(target.batch_index);
  return w.Data() + EncodeGeometry(geometry);
}

bool DecodeKeyAnswer(const std::string &body, KeyTarget *target, CacheGeometry *geometry) {
  constexpr size_t kTargetBytes = 12;
  if (body.size() < kTargetBytes) return false;
  BodyReader r(body.data(), kTargetBytes);
  uint64_t id = 0;
  if (!r.U64(&id) || !r.U32(&target->batch_index)) return false;
  target->cache_id = static_cast<int64_t>(id);
  if (target->cache_id <= 0 || !DecodeGeometry(body.substr(kTargetBytes), geometry)) return false;
  // The row a key names lies inside the cache.
  return target->batch_index < geometry->row_count;
}

std::string EncodeGeometry(const CacheGeometry &geometry) {
  BodyWriter w;
  w.U32(geometry.num_tensors);
  w.U64(geometry.tensor_size);
  w.U64(geometry.row_count);
  w.U64(geometry.stride);
  for (uint64_t addr : geometry.addrs) w.U64(addr);
  return w.Data();
}

bool DecodeGeometry(const std::string &body, CacheGeometry *out) {
  BodyReader r(body.data(), body.size());
  if (!r.U32(&out->num_tensors) || !r.U64(&out->tensor_size) || !r.U64(&out->row_count) || !r.U64(&out->stride))
    return false;
  if (out->num_tensors == 0 || out->num_tensors > kMaxTensorsPerCache) return false;
  if (r.Left() != static_cast<size_t>(out->num_tensors) * 8) return false;
  if (out->row_count == 0 || out->stride == 0 || out->stride != out->tensor_size / out->row_count) return false;
  out->addrs.resize(out->num_tensors);
  for (auto &addr : out->addrs) r.U64(&addr);
  return true;
}

}  // namespace llmdd::datadist
