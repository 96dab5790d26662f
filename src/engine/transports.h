// TransportSet: the transports one engine runs (transport/transport.h), in the
// order they were added. Every link to a peer is made here, from what the
// handshake learned about it, and every registration is announced here, so a
// new transport is one line in the constructor (and its rule in
// engine/path_policy.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/wire.h"
#include "transport/transport.h"

namespace llmdd {

class TransportSet {
 public:
  // TCP (any peer) and the same-host path (peers verified in the handshake).
  TransportSet();
  // Adds a transport (tests: a fake); before the engine connects to anyone.
  void Add(std::shared_ptr<Transport> transport) { transports_.push_back(std::move(transport)); }
  // Drops the transport named `name` (the engine's optional ones, between a
  // Finalize and the next Initialize).
  void Remove(const char *name);
  // Whether one of `links` is of the transport named `name`.
  static bool HasLink(const std::vector<std::shared_ptr<TransportLink>> &links, const char *name);
  // What this engine advertises in its Hello / HelloAck: each transport with
  // metadata (TCP and the same-host path have none).
  std::vector<wire::TransportAd> Advertisement() const;
  // A link from every transport that reaches `peer`, each given the metadata
  // the peer advertised for it in `ads` (the others say why not at debug
  // level: not reaching a peer is normal for a same-host path).
  std::vector<std::shared_ptr<TransportLink>> Connect(const TransportPeer &peer,
                                                      const std::vector<wire::TransportAd> &ads,
                                                      Deadline deadline) const;
  // Announces a registration to every transport; the first refusal is
  // returned (and the ones that accepted it are told it is gone).
  adxl::Status RegisterMemory(const TransportRegion &region, std::string *error);
  void DeregisterMemory(const TransportRegion &region);

 private:
  std::vector<std::shared_ptr<Transport>> transports_;
};

}  // namespace llmdd
