/*
 * hixl::Hixl: CANN's HIXL transfer engine. The same engine as
 * adxl::AdxlEngine (one implementation in the library) under HIXL's names,
 * with HIXL's additions: asynchronous connection management and the bulk
 * transfer status query.
 *
 * Same class, signatures and default arguments as CANN's hixl/hixl.h.
 * Contracts (details and every status in docs/API.md, "HIXL"):
 *  - Initialize / Finalize / RegisterMem / DeregisterMem / Connect /
 *    Disconnect / TransferSync / TransferAsync / GetTransferStatus(req):
 *    exactly as adxl::AdxlEngine's calls of the same name. Option keys are
 *    HIXL's (no "adxl." prefix; the adxl spellings are accepted too).
 *  - ConnectAsync / DisconnectAsync(remote, timeout ms): checked at once
 *    (PARAM_INVALID, FAILED when not initialized), then queued and run by a
 *    small pool of threads (GlobalResourceConfig "connect_pool.thread_num",
 *    default 2); the tasks of one remote run one at a time in the order they
 *    were submitted, different remotes run concurrently. More than
 *    "connect_pool.task_queue_capacity" (default 128) tasks waiting ->
 *    RESOURCE_EXHAUSTED. Do not mix them with Connect/Disconnect for one remote.
 *  - GetAsyncConnectStatus(remote, status): SUCCESS; the status the latest
 *    task for that remote leads to (pending, running, or its outcome);
 *    NOT_CONNECT for a remote with no task. The map overload lists every
 *    remote whose status is not NOT_CONNECT.
 *  - GetTransferStatus(args, results): the statuses of the asynchronous
 *    requests in submission order (at most args.max_query_count, WAITING ones
 *    left out when args.skip_waiting), each with the user_data its
 *    TransferArgs carried; COMPLETED and FAILED ones are released.
 *  - OPTION_AUTO_CONNECT and GlobalResourceConfig "channel_pool.max_channel",
 *    "channel_pool.high_waterline", "channel_pool.low_waterline": transfers
 *    and notifies connect on demand, and the channels this engine opens share
 *    a pool whose idle channels are closed (never busy ones); as
 *    adxl::AdxlEngine's (docs/API.md, "Auto-connect and the channel pool").
 *  - SendNotify / GetNotifies: see docs/API.md.
 *  - GetCapability: static, callable before Initialize.
 *  - All calls except Finalize are thread-safe. Finalize must not race others.
 */
#ifndef CANN_HIXL_INCLUDE_HIXL_HIXL_H_
#define CANN_HIXL_INCLUDE_HIXL_HIXL_H_

#include <map>
#include <memory>
#include <vector>
#include "hixl_types.h"

namespace hixl {
class ASCEND_FUNC_VISIBILITY Hixl {
 public:
  Hixl();
  ~Hixl();

  Status Initialize(const AscendString &local_engine, const std::map<AscendString, AscendString> &options);
  void Finalize();

  Status RegisterMem(const MemDesc &mem, MemType type, MemHandle &mem_handle);
  Status DeregisterMem(MemHandle mem_handle);

  Status Connect(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);
  Status Disconnect(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);

  Status ConnectAsync(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);
  Status DisconnectAsync(const AscendString &remote_engine, int32_t timeout_in_millis = 1000);
  Status GetAsyncConnectStatus(const AscendString &remote_engine, AsyncConnectStatus &status);
  Status GetAsyncConnectStatus(std::map<AscendString, AsyncConnectStatus> &statuses);

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
  Status GetTransferStatus(const GetTransferStatusArgs &args, std::vector<TransferResult> &results);

  Status SendNotify(const AscendString &remote_engine, const NotifyDesc &notify, int32_t timeout_in_millis = 1000);
  Status GetNotifies(std::vector<NotifyDesc> &notifies);

  static Status GetCapability(FeatureType feature_type, int32_t &value);

 private:
  class HixlImpl;
  std::unique_ptr<HixlImpl> impl_;
};
}  // namespace hixl

#endif  // CANN_HIXL_INCLUDE_HIXL_HIXL_H_
