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
 *  - TransferAsync(remote, op, descs, args, req): the same checks as
 *    TransferSync without a timeout; returns at once with req, an opaque id
 *    (increasing, never null). GetTransferStatus(req, status): WAITING while
 *    it runs; COMPLETED (SUCCESS) or FAILED (returns FAILED too) end it, and
 *    a second query of that req is PARAM_INVALID. Disconnect and Finalize end
 *    the requests in flight (FAILED). More than llmdd.MaxRequestsInFlight
 *    requests not yet reported terminal -> RESOURCE_EXHAUSTED.
 *  - SendNotify(remote, notify, timeout ms): sends {name, notify_msg} to the
 *    server `remote` (a channel of Connect) and waits for its acknowledgement:
 *    name or message over 1024 chars / timeout <= 0 -> PARAM_INVALID; no
 *    channel -> NOT_CONNECTED; no answer in time -> TIMEOUT; the receiver holds
 *    4096 unconsumed notifies of this link (or its byte limit) ->
 *    RESOURCE_EXHAUSTED. A notify sent after a transfer to that remote
 *    completed is seen there only once that transfer's bytes are in its memory.
 *    GetNotifies(notifies): appends every notify this engine received as a
 *    server, oldest first, and forgets them.
 *  - OPTION_AUTO_CONNECT "1" (or a channel pool, "GlobalResourceConfig"
 *    channel_pool.*): TransferSync / TransferAsync / SendNotify to a remote
 *    without a channel connect to it first (within the call's timeout; 1 s
 *    for TransferAsync) and return a failed connect's status. The channels
 *    this engine opens then share max_channel slots (default 512): idle ones
 *    are closed by the waterlines or to make room, never one with a transfer
 *    in flight; a connect finding every slot busy waits up to its timeout,
 *    then RESOURCE_EXHAUSTED. GetCapability(AUTO_CONNECT) -> FEATURE_SUPPORTED.
 *  - Static, usable before Initialize: GetCapability, MallocMem/FreeMem (host
 *    memory, page-aligned, huge pages where the host has them);
 *    ExportToShareableHandle -> UNSUPPORTED (no fabric memory here).
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

  Status TransferAsync(const AscendString &remote_engine,
                       TransferOp operation,
                       const std::vector<TransferOpDesc> &op_descs,
                       const TransferArgs &optional_args,
                       TransferReq &req);
  Status GetTransferStatus(const TransferReq &req, TransferStatus &status);

  Status SendNotify(const AscendString &remote_engine, const NotifyDesc &notify, int32_t timeout_in_millis = 1000);
  Status GetNotifies(std::vector<NotifyDesc> &notifies);

  static Status MallocMem(MemType type, size_t size, void **ptr);
  static Status ExportToShareableHandle(void *addr, ShareableHandle &handle);
  static Status FreeMem(void *ptr);
  static Status GetCapability(FeatureType feature_type, int32_t &value);

 private:
  class AdxlEngineImpl;
  std::unique_ptr<AdxlEngineImpl> impl_;
};
}  // namespace adxl

#endif  // CANN_GRAPH_ENGINE_INC_EXTERNAL_ADXL_ADXL_ENGINE_H_
