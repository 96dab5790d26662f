// LLM-DataDist push: the prompt pushes its KV cache into the decoder, one
// layer at a time, as a serving engine does while the model computes the next
// layer. Here the decoder listens and the prompt links to it: which side
// listens is independent of the roles, and a link carries transfers both ways.
//
//   DECODER (child process, cluster 2)         PROMPT (this process, cluster 1)
//   Initialize: llm.ListenIpInfo "ip:port"     Initialize: no listen option (client)
//   RegisterKvCache -> cache id 1, zeroed      RegisterKvCache -> cache id 1, filled
//   -- "READY" -->
//                                              LinkLlmClusters(decoder's ip:port)
//                                              for each layer: PushKvBlocks {1,2,3} -> {4,5,6}
//                                              PushKvCache row 7 -> row 0 (all layers)
//   <-- "CHECK": the decoder checks every byte --
//                                              UnlinkLlmClusters, UnregisterKvCache, Finalize
//   UnregisterKvCache, Finalize
//
// Run: build/examples/datadist_push     (exit status 0 = every byte arrived)
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "example_peer.h"
#include "llm_datadist/llm_datadist.h"
#include "llmdd/extensions.h"  // llmdd_ext::StatusName

namespace {

using llm_datadist::LlmDataDist;
using llm_datadist::Status;

const uint64_t kPromptCluster = 1;
const uint64_t kDecoderCluster = 2;
const uint32_t kLayers = 4;  // 2 tensors (K, V) per layer
const int64_t kBlocks = 8;
const size_t kBlockBytes = 16 * 2 * 64 * 2;  // [16 tokens, 2 heads, 64 dims] of fp16
const size_t kTensorBytes = kBlocks * kBlockBytes;
int g_port = 0;  // chosen before the fork; the decoder child inherits it

llm_datadist::CacheDesc KvDesc() {
  llm_datadist::CacheDesc desc;
  desc.placement = llm_datadist::CachePlacement::kDevice;  // a push's source must be kDevice
  desc.num_tensors = 2 * kLayers;
  desc.data_type = llm_datadist::DT_FLOAT16;
  desc.shape = {kBlocks, 16, 2, 64};
  return desc;
}

unsigned char PromptByte(size_t t, size_t b, size_t o) { return example::Pattern(static_cast<unsigned>(t * 16 + b), o); }

std::map<llm_datadist::AscendString, llm_datadist::AscendString> BaseOptions(const char *device) {
  std::map<llm_datadist::AscendString, llm_datadist::AscendString> options;
  options[llm_datadist::OPTION_DEVICE_ID] = device;
  options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = "5000";
  return options;
}

int Decoder(int in_fd, int out_fd) {
  LlmDataDist dd(kDecoderCluster, llm_datadist::LlmRole::kDecoder);
  std::map<llm_datadist::AscendString, llm_datadist::AscendString> options = BaseOptions("1");
  const std::string listen = "127.0.0.1:" + std::to_string(g_port);  // "ip:port", as one string
  options[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();    // .c_str(): AscendString wants a char *
  if (dd.Initialize(options) != llm_datadist::LLM_SUCCESS) return 1;
  std::vector<std::vector<unsigned char> > tensors(2 * kLayers, std::vector<unsigned char>(kTensorBytes, 0));
  std::vector<uint64_t> addrs;
  for (size_t t = 0; t < tensors.size(); ++t) addrs.push_back(reinterpret_cast<uintptr_t>(tensors[t].data()));
  int64_t cache_id = -1;
  if (dd.RegisterKvCache(KvDesc(), addrs, llm_datadist::RegisterCfg(), cache_id) != llm_datadist::LLM_SUCCESS)
    return 1;
  example::SendLine(out_fd, "READY");

  std::string line;
  int rc = 1;
  if (example::ReadLine(in_fd, &line) && line == "CHECK") {
    rc = 0;
    for (size_t t = 0; t < tensors.size(); ++t) {
      for (size_t b = 0; b < static_cast<size_t>(kBlocks); ++b) {
        for (size_t o = 0; o < kBlockBytes; ++o) {
          unsigned char want = 0;
          if (b >= 4 && b <= 6) want = PromptByte(t, b - 3, o);  // pushed blocks 1,2,3 -> 4,5,6
          if (b == 0) want = PromptByte(t, 7, o);                // pushed row 7 -> 0
          if (tensors[t][b * kBlockBytes + o] != want) rc = 1;
        }
      }
    }
    example::SendLine(out_fd, rc == 0 ? "OK" : "BAD");
  }
  example::ReadLine(in_fd, &line);  // end of file: the prompt is done (and unlinked)
  dd.UnregisterKvCache(cache_id);
  dd.Finalize();
  return rc;
}

bool Ok(Status status, const char *what) {
  if (status == llm_datadist::LLM_SUCCESS) return true;
  fprintf(stderr, "datadist_push: %s failed with %s (0x%X)\n", what, llmdd_ext::StatusName(status), status);
  return false;
}

int Prompt(example::Peer *decoder) {
  LlmDataDist dd(kPromptCluster, llm_datadist::LlmRole::kPrompt);
  if (!Ok(dd.Initialize(BaseOptions("0")), "Initialize")) return 1;
  std::vector<std::vector<unsigned char> > tensors(2 * kLayers, std::vector<unsigned char>(kTensorBytes));
  std::vector<uint64_t> addrs;
  for (size_t t = 0; t < tensors.size(); ++t) {
    for (size_t b = 0; b < static_cast<size_t>(kBlocks); ++b)
      for (size_t o = 0; o < kBlockBytes; ++o) tensors[t][b * kBlockBytes + o] = PromptByte(t, b, o);
    addrs.push_back(reinterpret_cast<uintptr_t>(tensors[t].data()));
  }
  int64_t cache_id = -1;
  if (!Ok(dd.RegisterKvCache(KvDesc(), addrs, llm_datadist::RegisterCfg(), cache_id), "RegisterKvCache")) return 1;

  llm_datadist::ClusterInfo target;
  target.remote_cluster_id = kDecoderCluster;
  target.remote_role_type = 1;  // informational: 1 = decoder
  llm_datadist::IpInfo local{};
  local.ip = "127.0.0.1";
  llm_datadist::IpInfo remote{};
  remote.ip = "127.0.0.1";
  remote.port = static_cast<uint16_t>(g_port);
  target.local_ip_infos.push_back(local);
  target.remote_ip_infos.push_back(remote);
  std::vector<llm_datadist::ClusterInfo> clusters(1, target);
  std::vector<Status> rets;
  if (!Ok(dd.LinkLlmClusters(clusters, rets, 5000), "LinkLlmClusters")) return 1;

  // The local source: a push reads src.cache_id and src.cache_desc (placement
  // must be kDevice; with default layer ranges, num_tensors says how many
  // layers go). tensor_addrs is not read.
  llm_datadist::Cache src;
  src.cache_id = cache_id;
  src.cache_desc = KvDesc();
  llm_datadist::CacheIndex dst{};  // the decoder's cache 1; batch_index 0 for *Blocks
  dst.cluster_id = kDecoderCluster;
  dst.cache_id = 1;
  dst.batch_index = 0;

  // Layer by layer: ranges (i, i) of tensor_num_per_layer = 2 tensors (K, V).
  const std::vector<uint64_t> src_blocks = {1, 2, 3}, dst_blocks = {4, 5, 6};
  for (int32_t layer = 0; layer < static_cast<int32_t>(kLayers); ++layer) {
    llm_datadist::KvCacheExtParam ext;
    ext.src_layer_range = std::make_pair(layer, layer);
    ext.dst_layer_range = std::make_pair(layer, layer);
    ext.tensor_num_per_layer = 2;
    if (!Ok(dd.PushKvBlocks(src, dst, src_blocks, dst_blocks, ext), "PushKvBlocks")) return 1;
  }
  // A whole row: local row 7 -> the decoder's row dst.batch_index, all layers
  // (size must be -1 for a push).
  dst.batch_index = 0;
  if (!Ok(dd.PushKvCache(src, dst, /*src_batch_index=*/7), "PushKvCache")) return 1;

  example::SendLine(decoder->to, "CHECK");
  std::string line;
  const bool right = example::ReadLine(decoder->from, &line) && line == "OK";
  printf("PushKvBlocks {1,2,3} -> {4,5,6} layer by layer and PushKvCache row 7 -> 0: %s\n",
         right ? "the decoder found every byte right" : "the decoder found wrong bytes");

  rets.clear();
  if (!Ok(dd.UnlinkLlmClusters(clusters, rets, 5000), "UnlinkLlmClusters")) return 1;
  dd.UnregisterKvCache(cache_id);
  dd.Finalize();
  return right ? 0 : 1;
}

}  // namespace

int main() {
  g_port = example::FreePort();
  example::Peer decoder;
  if (g_port <= 0 || !example::StartPeer(Decoder, &decoder)) return 1;
  std::string line;
  const int rc = example::ReadLine(decoder.from, &line) && line == "READY" ? Prompt(&decoder) : 1;
  const int decoder_rc = example::FinishPeer(&decoder);
  printf("datadist_push: %s\n", rc == 0 && decoder_rc == 0 ? "OK" : "FAILED");
  return rc == 0 && decoder_rc == 0 ? 0 : 1;
}
