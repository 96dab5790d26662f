#include "transport/shm/connection_owner.h"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace llmdd {
namespace {

// One end of a connection as sock_diag wants it: family, address bytes
// (network order) and port (network order). IPv4-mapped IPv6 addresses are
// looked up as IPv4: the kernel keeps such connections in its IPv4 table.
struct DiagEnd {
  int family = 0;
  uint32_t addr[4] = {0, 0, 0, 0};
  uint16_t port = 0;
};

bool ToDiagEnd(const sockaddr_storage &addr, DiagEnd *out) {
  if (addr.ss_family == AF_INET) {
    const auto *in = reinterpret_cast<const sockaddr_in *>(&addr);
    out->family = AF_INET;
    out->addr[0] = in->sin_addr.s_addr;
    out->port = in->sin_port;
    return true;
  }
  if (addr.ss_family == AF_INET6) {
    const auto *in6 = reinterpret_cast<const sockaddr_in6 *>(&addr);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      out->family = AF_INET;
      memcpy(&out->addr[0], in6->sin6_addr.s6_addr + 12, 4);
    } else {
      out->family = AF_INET6;
      memcpy(out->addr, in6->sin6_addr.s6_addr, 16);
    }
    out->port = in6->sin6_port;
    return true;
  }
  return false;
}

class NetlinkSocket {
 public:
  NetlinkSocket() : fd_(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)) {}
  ~NetlinkSocket() {
    if (fd_ >= 0) close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

bool PeerSocketInode(const sockaddr_storage &our_local, const sockaddr_storage &our_remote, uint64_t *inode,
                     std::string *why) {
  DiagEnd local, remote;
  if (!ToDiagEnd(our_local, &local) || !ToDiagEnd(our_remote, &remote) || local.family != remote.family) {
    *why = "the connection's addresses are not TCP/IP addresses of one family";
    return false;
  }
  NetlinkSocket nl;
  if (nl.fd() < 0) {
    *why = std::string("sock_diag is not available: ") + strerror(errno);
    return false;
  }
  // The kernel answers at once; the timeout only guards against a kernel that never does.
  timeval timeout{1, 0};
  setsockopt(nl.fd(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));

  struct {
    nlmsghdr header;
    inet_diag_req_v2 request;
  } message{};
  message.header.nlmsg_len = sizeof(message);
  message.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  message.header.nlmsg_flags = NLM_F_REQUEST;  // an exact lookup, not a dump
  message.request.sdiag_family = static_cast<uint8_t>(local.family);
  message.request.sdiag_protocol = IPPROTO_TCP;
  message.request.idiag_states = ~0U;
  // The socket we look for is the peer's: its local end is our remote end.
  message.request.id.idiag_sport = remote.port;
  message.request.id.idiag_dport = local.port;
  memcpy(message.request.id.idiag_src, remote.addr, sizeof(remote.addr));
  memcpy(message.request.id.idiag_dst, local.addr, sizeof(local.addr));
  message.request.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  message.request.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl.fd(), &message, sizeof(message), 0, reinterpret_cast<sockaddr *>(&kernel), sizeof(kernel)) !=
      static_cast<ssize_t>(sizeof(message))) {
    *why = std::string("sock_diag request failed: ") + strerror(errno);
    return false;
  }
  alignas(nlmsghdr) char buffer[8192];
  ssize_t n = recv(nl.fd(), buffer, sizeof(buffer), 0);
  if (n < 0) {
    *why = std::string("no sock_diag answer: ") + strerror(errno);
    return false;
  }
  int left = static_cast<int>(n);
  for (auto *h = reinterpret_cast<nlmsghdr *>(buffer); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      const auto *error = static_cast<const nlmsgerr *>(NLMSG_DATA(h));
      *why = error->error == -ENOENT ? "no socket at the other end of this connection in this network namespace"
                                     : std::string("sock_diag: ") + strerror(-error->error);
      return false;
    }
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) continue;
    const auto *answer = static_cast<const inet_diag_msg *>(NLMSG_DATA(h));
    // Only the exact socket asked for counts (a listener would answer with other ports).
    if (answer->id.idiag_sport != remote.port || answer->id.idiag_dport != local.port || answer->idiag_inode == 0)
      continue;
    *inode = answer->idiag_inode;
    return true;
  }
  *why = "sock_diag did not name the socket at the other end of this connection";
  return false;
}

bool ProcessHoldsSocket(pid_t pid, uint32_t fd, uint64_t inode, std::string *why) {
  if (pid <= 0) {
    *why = "no process named";
    return false;
  }
  const std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  char target[64];
  ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
  if (n < 0) {
    *why = "cannot inspect descriptor " + std::to_string(fd) + " of pid " + std::to_string(pid) + ": " +
           strerror(errno);
    return false;
  }
  target[n] = '\0';
  if (std::string(target) != "socket:[" + std::to_string(inode) + "]") {
    *why = "pid " + std::to_string(pid) + " does not hold the other end of this connection at descriptor " +
           std::to_string(fd);
    return false;
  }
  return true;
}

}  // namespace llmdd
