// LLM-DataDist role switch with SetRole: two instances trade places.
//
//   A (child process, cluster 1)               B (this process, cluster 2)
//   kPrompt, listens on PORT_A                 kDecoder, client
//   -- "READY" -->                             link to A, PullKvBlocks, check, unlink
//   <-- "SWITCH" --
//   SetRole(kDecoder, {})  (stops listening)   SetRole(kPrompt, {llm.ListenIpInfo: PORT_B})
//   <-- "LINK" (B listens now) --
//   link to B, PushKvBlocks into B, unlink
//   -- "PUSHED" -->                            checks what A pushed
//
// SetRole changes the label and, through llm.ListenIpInfo, whether and where
// the instance listens: with the option it listens there, without it it stops
// listening. It needs every link gone first (else LLM_EXIST_LINK).
//
// Run: build/examples/datadist_role_switch     (exit status 0 = every byte arrived)
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

const uint64_t kClusterA = 1;
const uint64_t kClusterB = 2;
const int64_t kBlocks = 8;
const size_t kBlockBytes = 4096;  // shape {8, 4096} of uint8: 8 blocks of 4 KiB per tensor
const uint32_t kTensors = 2;      // one layer: K and V
int g_port_a = 0, g_port_b = 0;   // chosen before the fork

typedef std::map<llm_datadist::AscendString, llm_datadist::AscendString> Options;

llm_datadist::CacheDesc Desc() {
  llm_datadist::CacheDesc desc;
  desc.placement = llm_datadist::CachePlacement::kDevice;
  desc.num_tensors = kTensors;
  desc.data_type = llm_datadist::DT_UINT8;
  desc.shape = {kBlocks, static_cast<int64_t>(kBlockBytes)};
  return desc;
}

// A cache of kTensors tensors, each filled with Pattern(seed + t), registered.
struct KvCache {
  std::vector<std::vector<unsigned char> > tensors;
  int64_t id = -1;
  bool Register(LlmDataDist &dd, unsigned seed) {
    tensors.assign(kTensors, std::vector<unsigned char>(kBlocks * kBlockBytes));
    std::vector<uint64_t> addrs;
    for (size_t t = 0; t < kTensors; ++t) {
      for (size_t i = 0; i < tensors[t].size(); ++i) tensors[t][i] = example::Pattern(seed + static_cast<unsigned>(t), i);
      addrs.push_back(reinterpret_cast<uintptr_t>(tensors[t].data()));
    }
    return dd.RegisterKvCache(Desc(), addrs, llm_datadist::RegisterCfg(), id) == llm_datadist::LLM_SUCCESS;
  }
  // Block `b` of every tensor holds block `from` of a cache filled with `seed`.
  bool BlockIs(size_t b, unsigned seed, size_t from) const {
    for (size_t t = 0; t < kTensors; ++t)
      for (size_t o = 0; o < kBlockBytes; ++o)
        if (tensors[t][b * kBlockBytes + o] != example::Pattern(seed + static_cast<unsigned>(t), from * kBlockBytes + o))
          return false;
    return true;
  }
};

Options Base(const char *device) {
  Options options;
  options[llm_datadist::OPTION_DEVICE_ID] = device;
  options[llm_datadist::OPTION_SYNC_CACHE_WAIT_TIME] = "5000";
  return options;
}

Options Listen(int port) {
  Options options;
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  options[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();  // "ip:port"; .c_str() for AscendString
  return options;
}

std::vector<llm_datadist::ClusterInfo> Target(uint64_t cluster, int port) {
  llm_datadist::ClusterInfo info;
  info.remote_cluster_id = cluster;
  llm_datadist::IpInfo local{};
  local.ip = "127.0.0.1";
  llm_datadist::IpInfo remote{};
  remote.ip = "127.0.0.1";
  remote.port = static_cast<uint16_t>(port);
  info.local_ip_infos.push_back(local);
  info.remote_ip_infos.push_back(remote);
  return std::vector<llm_datadist::ClusterInfo>(1, info);
}

bool Ok(Status status, const char *who, const char *what) {
  if (status == llm_datadist::LLM_SUCCESS) return true;
  fprintf(stderr, "datadist_role_switch: %s: %s failed with %s (0x%X)\n", who, what, llmdd_ext::StatusName(status), status);
  return false;
}

int A(int in_fd, int out_fd) {
  LlmDataDist dd(kClusterA, llm_datadist::LlmRole::kPrompt);
  Options options = Base("0");
  const std::string listen = "127.0.0.1:" + std::to_string(g_port_a);
  options[llm_datadist::OPTION_LISTEN_IP_INFO] = listen.c_str();
  if (!Ok(dd.Initialize(options), "A", "Initialize")) return 1;
  KvCache cache;
  if (!cache.Register(dd, 10)) return 1;
  example::SendLine(out_fd, "READY");

  std::string line;
  if (!example::ReadLine(in_fd, &line) || line != "SWITCH") return 1;  // B has pulled and unlinked
  // No link is left (B's normal unlink removed this side's too): switch.
  if (!Ok(dd.SetRole(llm_datadist::LlmRole::kDecoder, Options()), "A", "SetRole(kDecoder)")) return 1;
  if (!example::ReadLine(in_fd, &line) || line != "LINK") return 1;  // B listens now

  std::vector<llm_datadist::ClusterInfo> b = Target(kClusterB, g_port_b);
  std::vector<Status> rets;
  if (!Ok(dd.LinkLlmClusters(b, rets, 5000), "A", "LinkLlmClusters")) return 1;
  llm_datadist::Cache src;
  src.cache_id = cache.id;
  src.cache_desc = Desc();
  llm_datadist::CacheIndex dst{};
  dst.cluster_id = kClusterB;
  dst.cache_id = 1;
  dst.batch_index = 0;
  const std::vector<uint64_t> src_blocks = {6, 7}, dst_blocks = {0, 1};
  if (!Ok(dd.PushKvBlocks(src, dst, src_blocks, dst_blocks), "A", "PushKvBlocks")) return 1;
  rets.clear();
  if (!Ok(dd.UnlinkLlmClusters(b, rets, 5000), "A", "UnlinkLlmClusters")) return 1;
  example::SendLine(out_fd, "PUSHED");
  example::ReadLine(in_fd, &line);  // end of file: B is done
  dd.UnregisterKvCache(cache.id);
  dd.Finalize();
  return 0;
}

int B(example::Peer *a) {
  LlmDataDist dd(kClusterB, llm_datadist::LlmRole::kDecoder);
  if (!Ok(dd.Initialize(Base("1")), "B", "Initialize")) return 1;
  KvCache cache;
  if (!cache.Register(dd, 20)) return 1;

  // Phase 1: B (decoder, client) pulls A's blocks 2,3 into its blocks 4,5.
  std::vector<llm_datadist::ClusterInfo> to_a = Target(kClusterA, g_port_a);
  std::vector<Status> rets;
  if (!Ok(dd.LinkLlmClusters(to_a, rets, 5000), "B", "LinkLlmClusters")) return 1;
  llm_datadist::CacheIndex src{};
  src.cluster_id = kClusterA;
  src.cache_id = 1;
  src.batch_index = 0;
  llm_datadist::Cache dst;
  dst.cache_id = cache.id;
  const std::vector<uint64_t> src_blocks = {2, 3}, dst_blocks = {4, 5};
  if (!Ok(dd.PullKvBlocks(src, dst, src_blocks, dst_blocks), "B", "PullKvBlocks")) return 1;
  if (!cache.BlockIs(4, 10, 2) || !cache.BlockIs(5, 10, 3)) {
    fprintf(stderr, "datadist_role_switch: B pulled wrong bytes\n");
    return 1;
  }
  printf("phase 1: B (decoder, client) pulled blocks 2,3 of A (prompt, listening): every byte is right\n");
  rets.clear();
  if (!Ok(dd.UnlinkLlmClusters(to_a, rets, 5000), "B", "UnlinkLlmClusters")) return 1;

  // Phase 2: the roles trade places; B listens now.
  example::SendLine(a->to, "SWITCH");
  if (!Ok(dd.SetRole(llm_datadist::LlmRole::kPrompt, Listen(g_port_b)), "B", "SetRole(kPrompt)")) return 1;
  example::SendLine(a->to, "LINK");
  std::string line;
  if (!example::ReadLine(a->from, &line) || line != "PUSHED") return 1;
  // A pushed its blocks 6,7 into B's blocks 0,1; the rest of B is untouched.
  const bool right = cache.BlockIs(0, 10, 6) && cache.BlockIs(1, 10, 7) && cache.BlockIs(2, 20, 2) &&
                     cache.BlockIs(4, 10, 2);
  printf("phase 2: A (now decoder, client) pushed blocks 6,7 into B (now prompt, listening): %s\n",
         right ? "every byte is right" : "wrong bytes");
  dd.UnregisterKvCache(cache.id);
  dd.Finalize();
  return right ? 0 : 1;
}

}  // namespace

int main() {
  g_port_a = example::FreePort();
  g_port_b = example::FreePort();
  example::Peer a;
  if (g_port_a <= 0 || g_port_b <= 0 || g_port_a == g_port_b || !example::StartPeer(A, &a)) return 1;
  std::string line;
  const int rc = example::ReadLine(a.from, &line) && line == "READY" ? B(&a) : 1;
  const int a_rc = example::FinishPeer(&a);
  printf("datadist_role_switch: %s\n", rc == 0 && a_rc == 0 ? "OK" : "FAILED");
  return rc == 0 && a_rc == 0 ? 0 : 1;
}
