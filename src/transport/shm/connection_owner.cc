#include "transport/shm/connection_owner.h"

#include <dirent.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace llmdd {
namespace {

// One way procfs may print a connection: which table, and "LOCAL REMOTE" in
// its format (each 32-bit word of the address as the host prints it, %08X,
// then ':' and the port in %04X).
struct ProcKey {
  const char *table;  // "tcp" or "tcp6"
  std::string ends;
};

std::string Word(uint32_t raw) {
  char buf[9];
  snprintf(buf, sizeof(buf), "%08X", raw);
  return buf;
}

std::string Port(uint16_t net_port) {
  char buf[6];
  snprintf(buf, sizeof(buf), "%04X", ntohs(net_port));
  return buf;
}

// An address as IPv4 when it is one (or an IPv4-mapped IPv6 one); false for other families.
bool AsIpv4(const sockaddr_storage &addr, uint32_t *ip, uint16_t *port) {
  if (addr.ss_family == AF_INET) {
    const auto *in = reinterpret_cast<const sockaddr_in *>(&addr);
    *ip = in->sin_addr.s_addr;
    *port = in->sin_port;
    return true;
  }
  if (addr.ss_family == AF_INET6) {
    const auto *in6 = reinterpret_cast<const sockaddr_in6 *>(&addr);
    if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return false;
    memcpy(ip, in6->sin6_addr.s6_addr + 12, 4);
    *port = in6->sin6_port;
    return true;
  }
  return false;
}

std::string Ipv6Text(const sockaddr_storage &addr) {
  const auto *in6 = reinterpret_cast<const sockaddr_in6 *>(&addr);
  std::string out;
  for (int i = 0; i < 4; ++i) {
    uint32_t word;
    memcpy(&word, in6->sin6_addr.s6_addr + 4 * i, 4);
    out += Word(word);
  }
  return out + ":" + Port(in6->sin6_port);
}

std::string MappedText(uint32_t ip, uint16_t port) {
  // ::ffff:a.b.c.d as four host-order words: 0, 0, bytes 00 00 ff ff, the IPv4 address.
  uint32_t marker;
  const uint8_t bytes[4] = {0, 0, 0xff, 0xff};
  memcpy(&marker, bytes, 4);
  return Word(0) + Word(0) + Word(marker) + Word(ip) + ":" + Port(port);
}

// The peer's end is the mirror of ours: its local is our remote and vice versa.
// A dual-stack peer may hold an IPv4 connection as IPv4-mapped IPv6, or the other way round.
std::vector<ProcKey> PeerKeys(const sockaddr_storage &our_local, const sockaddr_storage &our_remote) {
  std::vector<ProcKey> keys;
  uint32_t lip, rip;
  uint16_t lport, rport;
  if (AsIpv4(our_local, &lip, &lport) && AsIpv4(our_remote, &rip, &rport)) {
    keys.push_back({"tcp", Word(rip) + ":" + Port(rport) + " " + Word(lip) + ":" + Port(lport)});
    keys.push_back({"tcp6", MappedText(rip, rport) + " " + MappedText(lip, lport)});
  } else if (our_local.ss_family == AF_INET6 && our_remote.ss_family == AF_INET6) {
    keys.push_back({"tcp6", Ipv6Text(our_remote) + " " + Ipv6Text(our_local)});
  }
  return keys;
}

// Finds the socket inode of `key` in /proc/<pid>/net/<table>; 0 when absent.
unsigned long FindInode(pid_t pid, const ProcKey &key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + key.table);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, local, remote, state, queues, timer, retransmits, uid, timeout;
    unsigned long inode = 0;
    if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode))
      continue;
    if (local + " " + remote == key.ends) return inode;
  }
  return 0;
}

}  // namespace

bool ProcessHoldsPeerEnd(pid_t pid, const sockaddr_storage &our_local, const sockaddr_storage &our_remote,
                         std::string *why) {
  if (pid <= 0) {
    *why = "no process named";
    return false;
  }
  unsigned long inode = 0;
  for (const ProcKey &key : PeerKeys(our_local, our_remote)) {
    inode = FindInode(pid, key);
    if (inode != 0) break;
  }
  if (inode == 0) {
    *why = "pid " + std::to_string(pid) + " has no socket at the other end of this connection";
    return false;
  }
  const std::string fd_dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR *dir = opendir(fd_dir.c_str());
  if (dir == nullptr) {
    *why = "cannot list the sockets of pid " + std::to_string(pid) + ": " + strerror(errno);
    return false;
  }
  const std::string wanted = "socket:[" + std::to_string(inode) + "]";
  bool held = false;
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    char target[64];
    ssize_t n = readlinkat(dirfd(dir), entry->d_name, target, sizeof(target) - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (wanted == target) {
      held = true;
      break;
    }
  }
  closedir(dir);
  if (!held) *why = "pid " + std::to_string(pid) + " does not hold the other end of this connection";
  return held;
}

}  // namespace llmdd
