#include "engine/transports.h"

#include <cstring>

#include "common/log.h"
#include "transport/shm/same_host_link.h"
#include "transport/tcp/tcp_link.h"

namespace llmdd {

TransportSet::TransportSet() {
  transports_.push_back(std::make_shared<TcpTransport>());
  transports_.push_back(std::make_shared<SameHostTransport>());
}

void TransportSet::Remove(const char *name) {
  for (auto it = transports_.begin(); it != transports_.end();) {
    it = strcmp((*it)->Caps().name, name) == 0 ? transports_.erase(it) : it + 1;
  }
}

bool TransportSet::HasLink(const std::vector<std::shared_ptr<TransportLink>> &links, const char *name) {
  for (const auto &link : links) {
    if (link != nullptr && strcmp(link->Caps().name, name) == 0) return true;
  }
  return false;
}

std::vector<wire::TransportAd> TransportSet::Advertisement() const {
  std::vector<wire::TransportAd> ads;
  for (const auto &transport : transports_) {
    std::string metadata = transport->LocalMetadata();
    if (metadata.empty()) continue;
    if (ads.size() == wire::kMaxTransportAds || metadata.size() > wire::kMaxTransportMetadata ||
        strlen(transport->Caps().name) > wire::kMaxTransportNameLen) {
      LOG_WARN("transport %s is not advertised: over the handshake's limits", transport->Caps().name);
      continue;
    }
    ads.push_back({transport->Caps().name, std::move(metadata)});
  }
  return ads;
}

std::vector<std::shared_ptr<TransportLink>> TransportSet::Connect(const TransportPeer &base,
                                                                  const std::vector<wire::TransportAd> &ads,
                                                                  Deadline deadline) const {
  std::vector<std::shared_ptr<TransportLink>> links;
  for (const auto &transport : transports_) {
    TransportPeer peer = base;
    peer.metadata.clear();
    for (const wire::TransportAd &ad : ads) {
      if (ad.name == transport->Caps().name) peer.metadata = ad.metadata;
    }
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
