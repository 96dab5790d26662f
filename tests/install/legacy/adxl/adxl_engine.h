/*
 * adxl::AdxlEngine: a point-to-point, one-sided transfer engine.
 *
 * Same class, signatures and default arguments as CANN's adxl/adxl_engine.h.
 * Contracts (details and every status in docs/API.md):
 *  - Initialize(local_engine, options): "ip:port" listens (server), "ip" or a
 *    port <= 0 is client-only. IPv6 as "[ip]:port". Bad input -> PARAM_INVALID.
 *    A second call on an initialized engine returns SUCCESS and does nothing.
 *  - RegisterMem: makes [addr, addr+len) reachable by peers. nullptr -> PARAM_INVALID.
 *  - DeregisterMem: unknown handle -> SUCCESS; waits for peers' in-flight accesses.
 *  - Connect/Disconnect(remote "ip:port", timeout ms): ALREADY_CONNECTED /
 *    NOT_CONNECTED; timeout <= 0 -> PARAM_INVALID.
 *  - TransferSync(remote, READ|WRITE, descs, timeout ms): READ copies remote ->
 *    local, WRITE local -> remote. Every remote range must lie inside memory the
 *    remote registered: one region, or regions that touch end to start (else
 *    PARAM_INVALID, nothing is touched). The whole batch honours the deadline
 *    (TIMEOUT). Empty batch -> SUCCESS.
 *  - All calls except Finalize are thread-safe. Finalize must not race others.
 *  - The engine that is read from / written to makes no calls: its threads serve.
 */
#ifndef CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_ENGINE_H_
#define CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_ENGINE_H_

#include <map>
#include <memory>
#include <vector>
#include "adxl_types.h"

namespace adxl {
class ASCEND_FUNC_VISIBILITY AdxlEngine {
 public:
  AdxlEngine();
  ~AdxlEngine();

  Status Initialize(const AscendString &local_engine, const std::map<AscendString, AscendString> &options);
  void Finalize();

  Status RegisterMem(const MemDesc &mem, MemType type, MemHandle &mem_handle);
  Status DeregisterMem(MemHandle mem_handle);

  Status Connect(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);
  Status Disconnect(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);

  Status TransferSync(const AscendString &remote_engine,
                      TransferOp operation,
                      const std::vector<TransferOpDesc> &op_descs,
                      int32_t timeout_in_millis = 1000);

 private:
  class AdxlEngineImpl;
  std::unique_ptr<AdxlEngineImpl> impl_;
};
}  // namespace adxl

#endif  // CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_ENGINE_H_
