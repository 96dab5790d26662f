// Same-host one-copy data path: Cross Memory Attach (process_vm_readv /
// process_vm_writev). Each side copies between its own registered memory and
// the peer's buffers, one copy, no socket payload.
//
// Before trusting it, each side proves the peer on this TCP connection is a
// process whose memory it reaches: the peer advertises its boot id, pid and
// the address of a random 32-byte token in its memory (over the handshake);
// we check with the kernel that this pid holds the other end of the very
// connection (connection_owner.h), then read the token back with
// process_vm_readv and compare. A different host, network or PID namespace, a
// peer naming another process, or missing ptrace permission makes the check
// fail, and the TCP path is used instead.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstdint>
#include <string>

#include "common/deadline.h"
#include "transport/stream.h"

namespace llmdd {

struct ProcessIdentity {
  std::string boot_id;     // /proc/sys/kernel/random/boot_id
  uint32_t pid = 0;
  uint64_t token_addr = 0;
  std::string token;       // 32 random bytes living at token_addr
  bool Empty() const { return pid == 0; }
};

// This process's identity (token allocated once, lives for the process).
const ProcessIdentity &LocalIdentity();

// True when `peer` is on this host, holds the other end of `connection`, and
// its memory is reachable with CMA at that pid (token read back and equal).
// *why says what failed otherwise.
bool VerifyReachable(const ProcessIdentity &peer, const ByteStream &connection, std::string *why);

// Copies between local iovecs and the peer's iovecs (same total length),
// in calls of at most IOV_MAX entries and kMaxBytesPerCall bytes, checking the
// deadline between calls (one syscall is not interruptible, so this bounds how
// far a copy can overrun it). to_peer: local -> peer (writev), else peer ->
// local. Returns 0 on success or the errno that stopped it (EFAULT: a range
// was not mapped in one of the processes; ESRCH: peer gone; EPERM: not
// permitted; ETIMEDOUT: deadline passed).
constexpr size_t kMaxBytesPerCall = 8u << 20;
int CmaCopy(pid_t peer, bool to_peer, const iovec *local, size_t local_count, const iovec *remote,
            size_t remote_count, Deadline deadline = Deadline::Never());

}  // namespace llmdd
