// Binds the same-host check to one TCP connection: asks the kernel (procfs)
// whether a process holds the other end of a connection we hold.
//
// Reading a token back from a claimed pid proves that pid's memory is
// reachable, not that the peer on our connection is that process: a peer
// could name any process it knows the identity of. The kernel knows who holds
// each socket; /proc/<pid>/net/tcp{,6} maps the connection's addresses (as that
// process's network namespace sees them) to a socket inode, and
// /proc/<pid>/fd lists the sockets the process holds (readable only with the
// same ptrace permission that process_vm_readv needs).
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <string>

namespace llmdd {

// True when process `pid` holds the other end of the TCP connection whose
// ends, as this process sees them, are `our_local` and `our_remote`. *why says
// what failed otherwise (another network namespace, no permission, not held).
bool ProcessHoldsPeerEnd(pid_t pid, const sockaddr_storage &our_local, const sockaddr_storage &our_remote,
                         std::string *why);

}  // namespace llmdd
