// Engine: the transfer engine core behind adxl::AdxlEngine (and used by
// LLM-DataDist). Owns the memory registry, the server side, the client
// channels and the requester worker pool; validates every argument and maps
// every failure to an adxl status with one log line saying why.
//
// Thread-safety: every method may be called concurrently except Initialize and
// Finalize, which take the lifecycle lock exclusively (they wait for running
// calls instead of racing them).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "adxl/adxl_types.h"
#include "common/endpoint.h"
#include "engine/channel.h"
#include "engine/engine_config.h"
#include "engine/lane.h"
#include "engine/memory_registry.h"
#include "engine/peer_server.h"
#include "engine/worker_pool.h"

namespace llmdd {

class Engine {
 public:
  Engine();
  ~Engine();
  Engine(const Engine &) = delete;
  Engine &operator=(const Engine &) = delete;

  adxl::Status Initialize(const std::string &local_engine, const std::map<std::string, std::string> &options);
  void Finalize();
  bool Initialized() const;

  adxl::Status RegisterMem(uintptr_t addr, uint64_t len, adxl::MemType type, uint64_t *handle);
  adxl::Status DeregisterMem(uint64_t handle);

  adxl::Status Connect(const std::string &remote, int32_t timeout_ms);
  adxl::Status Disconnect(const std::string &remote, int32_t timeout_ms);
  adxl::Status TransferSync(const std::string &remote, adxl::TransferOp op, const adxl::TransferOpDesc *descs,
                            size_t count, int32_t timeout_ms);

  const std::string &LocalId() const { return local_id_; }
  const EngineConfig &Config() const { return config_; }

 private:
  adxl::Status StartServer(const Endpoint &listen);

  mutable std::shared_mutex lifecycle_;
  bool initialized_ = false;
  std::string local_id_;
  Endpoint local_endpoint_;
  EngineConfig config_;
  MemoryRegistry registry_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<PeerServer> server_;
  AppHandler app_handler_;

  std::mutex channels_mutex_;
  // A null value marks a Connect in progress (so a second Connect sees ALREADY_CONNECTED).
  std::map<std::string, std::shared_ptr<Channel>> channels_;
};

// Validates descriptors (null addresses, wrap-around) and merges neighbours that
// are adjacent on both sides; zero-length descriptors are dropped.
adxl::Status BuildSegments(const adxl::TransferOpDesc *descs, size_t count, std::vector<Segment> *segs,
                           std::string *error);

}  // namespace llmdd
