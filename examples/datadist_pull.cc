// LLM-DataDist pull: the decoder pulls KV-cache blocks from the prompt.
//
//   PROMPT (child process, cluster 1)          DECODER (this process, cluster 2)
//   Initialize: llm.ListenIpInfo "ip:port"     Initialize: no listen option (client)
//   RegisterKvCache -> cache id 1, filled      RegisterKvCache -> cache id 1, zeroed
//   -- "READY" (out of band: the prompt's KV is ready) -->
//                                              LinkLlmClusters(prompt's ip:port)
//                                              PullKvBlocks  blocks {0,1,2} -> {5,6,7}, every layer
//                                              PullKvCache   row 3 -> row 0, first 2 layers only
//                                              checks every byte; UnlinkLlmClusters
//   <-- end of file: the decoder is done --
//   UnregisterKvCache, Finalize                UnregisterKvCache, Finalize
//
// Run: build/examples/datadist_pull     (exit status 0 = every byte arrived)
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "example_peer.h"
#include "llm_datadist/llm_datadist.h"
#include "llmdd/extensions.h"  // llmdd_ext::StatusName

namespace {

using llm_datadist::LlmDataDist;
using llm_datadist::Status;

const uint64_t kPromptCluster = 1;   // what peers put in CacheIndex.cluster_id and ClusterInfo.remote_cluster_id
const uint64_t kDecoderCluster = 2;
const uint32_t kLayers = 4;          // tensors K0,V0,K1,V1,...: 2 per layer
const int64_t kBlocks = 8;           // shape[0]: the block count (the row count for *KvCache calls)
int g_port = 0;                      // chosen before the fork; the prompt child inherits it

// Every tensor has this shape: [blocks, tokens per block, kv heads, head dim]
// of fp16, so one block of one tensor is 16 * 2 * 64 * 2 = 4096 bytes and a
// tensor is 8 blocks of it (tensor bytes / shape[0] = the block size).
llm_datadist::CacheDesc KvDesc() {
  llm_datadist::CacheDesc desc;  // field by field: the usual way for CacheDesc
  desc.placement = llm_datadist::CachePlacement::kDevice;  // kDevice is host memory on a host without accelerator
  desc.num_tensors = 2 * kLayers;
  desc.data_type = llm_datadist::DT_FLOAT16;  // the default, DT_UNDEFINED, has no size: LLM_PARAM_INVALID
  desc.shape = {kBlocks, 16, 2, 64};
  return desc;
}
const size_t kBlockBytes = 16 * 2 * 64 * 2;
const size_t kTensorBytes = kBlocks * kBlockBytes;

// Byte `o` of block `b` of tensor `t` on the prompt.
unsigned char PromptByte(size_t t, size_t b, size_t o) { return example::Pattern(static_cast<unsigned>(t * 16 + b), o); }

std::map<llm_datadist::AscendString, llm_datadist::AscendString> BaseOptions(const char *device) {
  std::map<llm_datadist::AscendString, llm_datadist::AscendString> options;
  options[llm_datadist::OPTION_DEVICE_ID] = device;                // required
  options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = "5000";     // transfer timeout, ms (default 1000)
  return options;
}

int Prompt(int in_fd, int out_fd) {
  LlmDataDist dd(kPromptCluster, llm_datadist::LlmRole::kPrompt);
  std::map<llm_datadist::AscendString, llm_datadist::AscendString> options = BaseOptions("0");
  // llm.ListenIpInfo is ONE string "ip:port" (not an IpInfo). Built from a
  // std::string, the value needs .c_str(): AscendString takes a const char *.
  const std::string listen = "127.0.0.1:" + std::to_string(g_port);
  options[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();
  if (dd.Initialize(options) != llm_datadist::LLM_SUCCESS) return 1;

  // One allocation per tensor (CANN: one aclrtMalloc each), registered as one cache.
  std::vector<std::vector<unsigned char> > tensors(2 * kLayers, std::vector<unsigned char>(kTensorBytes));
  std::vector<uint64_t> addrs;
  for (size_t t = 0; t < tensors.size(); ++t) {
    for (size_t b = 0; b < static_cast<size_t>(kBlocks); ++b)
      for (size_t o = 0; o < kBlockBytes; ++o) tensors[t][b * kBlockBytes + o] = PromptByte(t, b, o);
    addrs.push_back(reinterpret_cast<uintptr_t>(tensors[t].data()));
  }
  int64_t cache_id = -1;
  // Register before the peer links (CANN requires it; here later ones are visible too).
  if (dd.RegisterKvCache(KvDesc(), addrs, llm_datadist::RegisterCfg(), cache_id) != llm_datadist::LLM_SUCCESS)
    return 1;
  // Ids start at 1 in every instance and are never reused, so the decoder
  // can name this cache (1) without being told.
  example::SendLine(out_fd, "READY");

  std::string line;
  example::ReadLine(in_fd, &line);  // end of file: the decoder has pulled and unlinked
  // Only now may the memory go away: a side being pulled from waits for the puller.
  dd.UnregisterKvCache(cache_id);
  dd.Finalize();
  return 0;
}

bool Ok(Status status, const char *what) {
  if (status == llm_datadist::LLM_SUCCESS) return true;
  fprintf(stderr, "datadist_pull: %s failed with %s (0x%X)\n", what, llmdd_ext::StatusName(status), status);
  return false;
}

int Decoder() {
  LlmDataDist dd(kDecoderCluster, llm_datadist::LlmRole::kDecoder);
  if (!Ok(dd.Initialize(BaseOptions("1")), "Initialize")) return 1;  // no listen option: a client
  std::vector<std::vector<unsigned char> > tensors(2 * kLayers, std::vector<unsigned char>(kTensorBytes, 0));
  std::vector<uint64_t> addrs;
  for (size_t t = 0; t < tensors.size(); ++t) addrs.push_back(reinterpret_cast<uintptr_t>(tensors[t].data()));
  int64_t cache_id = -1;
  if (!Ok(dd.RegisterKvCache(KvDesc(), addrs, llm_datadist::RegisterCfg(), cache_id), "RegisterKvCache")) return 1;

  // The link: remote_ip_infos = the prompt's listen address, local_ip_infos =
  // this host's address (exactly one entry each). remote_role_type is
  // informational (0 = prompt, 1 = decoder).
  llm_datadist::ClusterInfo prompt;
  prompt.remote_cluster_id = kPromptCluster;
  prompt.remote_role_type = 0;
  llm_datadist::IpInfo local{};
  local.ip = "127.0.0.1";
  llm_datadist::IpInfo remote{};
  remote.ip = "127.0.0.1";
  remote.port = static_cast<uint16_t>(g_port);
  prompt.local_ip_infos.push_back(local);
  prompt.remote_ip_infos.push_back(remote);
  std::vector<llm_datadist::ClusterInfo> clusters(1, prompt);
  std::vector<Status> rets;  // one status per cluster, in order
  if (!Ok(dd.LinkLlmClusters(clusters, rets, 5000), "LinkLlmClusters")) return 1;

  // The remote cache: CacheIndex{cluster, cache id, batch index}. batch_index
  // must be 0 for the *Blocks calls. (Brace-initialising it works too: it is
  // an aggregate; -Wextra then warns about the reserved bytes left out.)
  llm_datadist::CacheIndex src{};
  src.cluster_id = kPromptCluster;
  src.cache_id = 1;
  src.batch_index = 0;
  // The local destination: a pull reads only dst.cache_id.
  llm_datadist::Cache dst;
  dst.cache_id = cache_id;

  // Remote blocks 0,1,2 -> local blocks 5,6,7 of every tensor (consecutive
  // pairs travel as one range). Default KvCacheExtParam: all tensors, i -> i.
  const std::vector<uint64_t> src_blocks = {0, 1, 2}, dst_blocks = {5, 6, 7};
  if (!Ok(dd.PullKvBlocks(src, dst, src_blocks, dst_blocks), "PullKvBlocks")) return 1;

  // PullKvCache: one row (shape[0] counts rows too): remote row 3 -> local
  // row 0, and only layers 0..1 (KvCacheExtParam ranges are inclusive layers
  // of tensor_num_per_layer tensors each).
  src.batch_index = 3;
  llm_datadist::KvCacheExtParam layers;
  layers.src_layer_range = std::make_pair(0, 1);
  layers.dst_layer_range = std::make_pair(0, 1);
  layers.tensor_num_per_layer = 2;
  if (!Ok(dd.PullKvCache(src, dst, /*batch_index=*/0, /*size=*/-1, layers), "PullKvCache")) return 1;

  // Check every byte of every tensor.
  for (size_t t = 0; t < tensors.size(); ++t) {
    for (size_t b = 0; b < static_cast<size_t>(kBlocks); ++b) {
      for (size_t o = 0; o < kBlockBytes; ++o) {
        unsigned char want = 0;
        if (b >= 5) want = PromptByte(t, b - 5, o);               // pulled blocks
        if (b == 0 && t < 4) want = PromptByte(t, 3, o);          // the pulled row, layers 0..1
        if (tensors[t][b * kBlockBytes + o] != want) {
          fprintf(stderr, "datadist_pull: tensor %zu block %zu byte %zu is wrong\n", t, b, o);
          return 1;
        }
      }
    }
  }
  printf("PullKvBlocks {0,1,2} -> {5,6,7} and PullKvCache row 3 -> 0 (layers 0-1): every byte is right\n");

  rets.clear();
  if (!Ok(dd.UnlinkLlmClusters(clusters, rets, 5000), "UnlinkLlmClusters")) return 1;  // both sides drop the link
  dd.UnregisterKvCache(cache_id);
  dd.Finalize();
  return 0;
}

}  // namespace

int main() {
  g_port = example::FreePort();
  example::Peer prompt;
  if (g_port <= 0 || !example::StartPeer(Prompt, &prompt)) return 1;
  std::string line;
  const int rc = example::ReadLine(prompt.from, &line) && line == "READY" ? Decoder() : 1;
  const int prompt_rc = example::FinishPeer(&prompt);
  printf("datadist_pull: %s\n", rc == 0 && prompt_rc == 0 ? "OK" : "FAILED");
  return rc == 0 && prompt_rc == 0 ? 0 : 1;
}
