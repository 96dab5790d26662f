// The TCP transport: the default path between any two hosts. A transfer's
// bytes travel on the engine's lanes (LaneLender): a READ request is answered
// with the bytes, read straight into the destination ranges; a WRITE request
// carries them, sent straight from the source ranges (readv/writev, no copy
// in user space). The serving side checks every remote range against its
// registry (engine/lane.h ServeRequest). Reaches host memory only.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "engine/lane.h"
#include "transport/transport.h"

namespace llmdd {

class TcpTransport : public Transport {
 public:
  static const TransportCaps &StaticCaps();
  const TransportCaps &Caps() const override { return StaticCaps(); }
  std::shared_ptr<TransportLink> Connect(const TransportPeer &peer, Deadline deadline, std::string *error) override;
};

class TcpLink : public TransportLink {
 public:
  explicit TcpLink(LaneLender *lanes) : lanes_(lanes) {}
  const TransportCaps &Caps() const override { return TcpTransport::StaticCaps(); }
  bool Usable() const override { return !shut_down_.load(); }
  TransportResult Submit(const TransferBatch &batch) override;
  void Shutdown() override { shut_down_.store(true); }

 private:
  LaneLender *lanes_;
  std::atomic<bool> shut_down_{false};
};

}  // namespace llmdd
