// Binds the same-host check to one TCP connection: asks the kernel which
// socket is at the other end of a connection we hold, and whether a given
// process holds that socket.
//
// Reading a token back from a claimed pid proves that pid's memory is
// reachable, not that the peer on our connection is that process: a peer
// could name any process it knows the identity of. The kernel knows who holds
// each socket:
//   1. sock_diag (NETLINK_SOCK_DIAG, an exact lookup by the connection's four
//      addresses, one hash lookup in the kernel) gives the inode of the socket
//      at the other end, in our network namespace;
//   2. the peer says which of its descriptors holds the connection, and
//      /proc/<pid>/fd/<fd> (readable only with the ptrace permission that
//      process_vm_readv needs anyway) must name exactly that socket.
// Both steps cost the same however many sockets the host has.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <string>

namespace llmdd {

// The inode of the socket at the other end of the TCP connection whose ends,
// as this process sees them, are `our_local` and `our_remote`. False with *why
// when the kernel knows no such socket in this network namespace (the peer is
// in another one, or the connection is gone) or sock_diag is unavailable.
bool PeerSocketInode(const sockaddr_storage &our_local, const sockaddr_storage &our_remote, uint64_t *inode,
                     std::string *why);

// True when process `pid` holds socket `inode` at descriptor `fd` right now.
bool ProcessHoldsSocket(pid_t pid, uint32_t fd, uint64_t inode, std::string *why);

}  // namespace llmdd
