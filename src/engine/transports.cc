#include "engine/transports.h"

#include "common/log.h"
#include "transport/shm/same_host_link.h"
#include "transport/tcp/tcp_link.h"

namespace llmdd {

TransportSet::TransportSet() {
  transports_.push_back(std::make_shared<TcpTransport>());
  transports_.push_back(std::make_shared<SameHostTransport>());
}

std::vector<std::shared_ptr<TransportLink>> TransportSet::Connect(const TransportPeer &peer, Deadline deadline) const {
  std::vector<std::shared_ptr<TransportLink>> links;
  for (const auto &transport : transports_) {
    std::string why;
    if (auto link = transport->Connect(peer, deadline, &why)) {
      links.push_back(std::move(link));
    } else {
      LOG_DEBUG("no %s link to %s: %s", transport->Caps().name, peer.peer_name.c_str(), why.c_str());
    }
  }
  return links;
}

adxl::Status TransportSet::RegisterMemory(const TransportRegion &region, std::string *error) {
  for (size_t i = 0; i < transports_.size(); ++i) {
    std::string key;
    const adxl::Status status = transports_[i]->RegisterMemory(region, &key, error);
    if (status != adxl::SUCCESS) {
      for (size_t j = 0; j < i; ++j) transports_[j]->DeregisterMemory(region);
      *error = std::string(transports_[i]->Caps().name) + ": " + *error;
      return status;
    }
  }
  return adxl::SUCCESS;
}

void TransportSet::DeregisterMemory(const TransportRegion &region) {
  for (const auto &transport : transports_) transport->DeregisterMemory(region);
}

}  // namespace llmdd
