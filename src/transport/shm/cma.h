// Same-host one-copy data path: Cross Memory Attach (process_vm_readv). Each
// side copies from the peer's memory into its own, one copy, no socket
// payload; neither side ever writes the other's memory.
//
// Trust is bound to a process, not to its number. Verification
// (PeerProcess::Verify) proves that the peer on this TCP connection is a live
// process whose memory we reach:
//   - the peer advertises its boot id, pid, the address of a random 32-byte
//     token in its memory and which of its descriptors holds the connection;
//   - we open a pidfd for the pid first (a handle on that process, which never
//     names another one), then ask the kernel which socket is at the other end
//     of our connection and check the process holds it at that descriptor
//     (connection_owner.h), then read the token back with process_vm_readv;
//   - the pidfd still shows the process alive afterwards, so the pid named it
//     for the whole check.
// A different host, network or PID namespace, a peer naming another process,
// or missing ptrace permission makes the check fail (the TCP path is used).
//
// Every later copy is checked the same way (PeerProcess::CopyFrom): each
// process_vm_readv call also reads the peer's token, so the address space the
// bytes came from is the verified one (not a process that took over the pid,
// nor an image the peer exec'd), and the pidfd is checked after the copy. A
// copy that fails a check is scrubbed from our memory and the peer is marked
// gone: same-host trust for its session ends for good.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/deadline.h"
#include "transport/stream.h"

namespace llmdd {

constexpr uint32_t kNoDescriptor = UINT32_MAX;

struct ProcessIdentity {
  std::string boot_id;     // /proc/sys/kernel/random/boot_id
  uint32_t pid = 0;
  uint64_t token_addr = 0;
  std::string token;       // 32 random bytes living at token_addr
  uint32_t conn_fd = kNoDescriptor;  // the sender's descriptor of the connection this identity travels on
  bool Empty() const { return pid == 0; }
};

// This process's identity (token allocated once, lives for the process);
// conn_fd is left for the caller to fill per connection.
const ProcessIdentity &LocalIdentity();

// Copies are issued in calls of at most this many bytes (and IOV_MAX entries),
// with the deadline checked between calls: one call is not interruptible, so
// this bounds how far a copy can overrun its deadline.
constexpr size_t kMaxBytesPerCall = 8u << 20;

// A same-host write's hold as the serving side sees it (wire::kFlagWriteHold):
// the word at `addr` in the requester's memory holds `value` while the
// requester still wants the write.
struct HoldWord {
  uint64_t addr = 0;
  uint64_t value = 0;
};

// The requester's half of a hold: a word of this process, set to a value no
// hold ever had before, that the server re-reads in every copy call from our
// memory. Release (or the destructor) changes it before the write is
// reported ended, so a copy call that read our buffers after that also reads
// the change and its bytes are thrown away: once a same-host write ended
// (TIMEOUT, cancel), nothing the server read from its buffers afterwards
// stays in the server's memory. The words are never freed (a frozen peer may
// read one much later); released ones are reused with new values.
class WriteHold {
 public:
  WriteHold();
  ~WriteHold() { Release(); }
  WriteHold(const WriteHold &) = delete;
  WriteHold &operator=(const WriteHold &) = delete;
  uint64_t Addr() const { return reinterpret_cast<uint64_t>(word_); }
  uint64_t Value() const { return value_; }
  // The requester lets go: from here on every copy call of the server fails
  // the check. Idempotent.
  void Release();

 private:
  std::atomic<uint64_t> *word_ = nullptr;
  uint64_t value_ = 0;
};

class PeerProcess {
 public:
  // Verifies `claimed` as described above against `connection` (the TCP
  // connection the identity arrived on). nullptr with *why when it fails.
  static std::shared_ptr<PeerProcess> Verify(const ProcessIdentity &claimed, const ByteStream &connection,
                                             std::string *why);
  ~PeerProcess();
  PeerProcess(const PeerProcess &) = delete;
  PeerProcess &operator=(const PeerProcess &) = delete;

  pid_t Pid() const { return pid_; }

  // True when this live process holds the other end of `connection` at its
  // descriptor `fd` (each lane joining a verified session is checked so).
  bool HoldsOtherEnd(const ByteStream &connection, uint32_t fd, std::string *why);

  // Copies peer -> local (same total length on both sides), checked per call
  // as described above. Returns 0 or the errno that stopped it: EFAULT (a
  // range not mapped on either side), ETIMEDOUT (deadline passed), ESRCH (the
  // process is gone or no longer the verified image: trust has ended), EPERM
  // (not permitted), EINVAL (lengths differ), ECANCELED. On failure the bytes this call
  // wrote into `local` are zeroed: they may not be the peer's.
  // `cancel`, when given and set, stops the copy between calls (ECANCELED);
  // so does `abandoned`, when given and it returns true (asked before every call).
  // `hold`, when given: every call also reads the hold word, right after the
  // data; when it no longer holds its value the requester had let go while
  // the call read its memory, so the copy stops (ECANCELED) and what it wrote
  // is zeroed like any failed copy's. A hold word that cannot be read is EFAULT.
  int CopyFrom(const iovec *local, size_t local_count, const iovec *remote, size_t remote_count,
               Deadline deadline = Deadline::Never(), const std::atomic<bool> *cancel = nullptr,
               const std::function<bool()> &abandoned = nullptr, const HoldWord *hold = nullptr);

  // A descriptor of ours for the peer's descriptor `fd` (pidfd_getfd: the
  // same file, opened as the peer opened it; close-on-exec), or -1 with errno.
  // Nothing about the file is checked here: the caller does.
  int DuplicateDescriptor(uint32_t fd);

  // Asks the kernel (pidfd) whether the process still lives; false once it
  // has exited (and forever after).
  bool Alive();
  // True once a check found the process gone; no syscall.
  bool Gone() const { return gone_.load(std::memory_order_acquire); }
  // Ends trust in this process (logged once with the reason).
  void MarkGone(const char *reason);

 private:
  PeerProcess(pid_t pid, int pidfd, uint64_t token_addr, const std::string &token);
  bool TokenMatches(const char *bytes) const;

  const pid_t pid_;
  const int pidfd_;
  const uint64_t token_addr_;
  char token_[32];
  std::atomic<bool> gone_{false};
};

}  // namespace llmdd
