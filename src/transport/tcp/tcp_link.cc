#include "transport/tcp/tcp_link.h"

namespace llmdd {

const TransportCaps &TcpTransport::StaticCaps() {
  static const TransportCaps caps = [] {
    TransportCaps c;
    c.name = "tcp";
    c.max_parallel = 64;  // one request per lane (llmdd.TcpConnections lanes per peer)
    return c;
  }();
  return caps;
}

std::shared_ptr<TransportLink> TcpTransport::Connect(const TransportPeer &peer, Deadline deadline,
                                                     std::string *error) {
  (void)deadline;
  if (peer.lanes == nullptr) {
    *error = "no lanes to " + peer.peer_name;
    return nullptr;
  }
  return std::make_shared<TcpLink>(peer.lanes);
}

TransportResult TcpLink::Submit(const TransferBatch &batch) {
  TransportResult result;
  if (shut_down_.load()) {
    result.status = adxl::FAILED;
    result.error = "the link to " + lanes_->PeerName() + " is closed";
    return result;
  }
  const adxl::TransferOp op = batch.op;
  LaneResult r = lanes_->RunChunks(
      batch, [op](ByteStream &stream, const Segment *segs, size_t count, uint64_t request_id, Deadline deadline) {
        return ExecuteTransfer(stream, op, segs, count, request_id, deadline);
      });
  result.status = r.status;
  result.error = std::move(r.error);
  return result;
}

}  // namespace llmdd
