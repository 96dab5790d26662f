#include "transport/shm/cma.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <mutex>
#include <vector>

#include "common/hmac.h"
#include "common/log.h"
#include "transport/shm/connection_owner.h"

namespace llmdd {
namespace {

constexpr size_t kTokenBytes = 32;
constexpr size_t kMaxIov = IOV_MAX < 1024 ? IOV_MAX : 1024;
// Each call carries the data ranges plus an entry for a write's hold word and
// one for the token.
constexpr size_t kMaxDataIov = kMaxIov - 2;

std::string ReadBootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

int OpenPidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  errno = ENOSYS;
  return -1;
#endif
}

// Advances through an iovec array without modifying it.
struct Cursor {
  const iovec *iov;
  size_t count;
  size_t index = 0;
  size_t offset = 0;
  bool Done() const { return index >= count; }
  // Takes up to `max_bytes` as at most kMaxDataIov entries.
  size_t Take(iovec *out, size_t *n, size_t max_bytes) {
    size_t taken = 0;
    *n = 0;
    while (index < count && *n < kMaxDataIov && taken < max_bytes) {
      size_t left = iov[index].iov_len - offset;
      size_t use = std::min(left, max_bytes - taken);
      if (use > 0) out[(*n)++] = {static_cast<char *>(iov[index].iov_base) + offset, use};
      taken += use;
      offset += use;
      if (offset == iov[index].iov_len) {
        ++index;
        offset = 0;
      }
    }
    return taken;
  }
  void Rewind(size_t bytes) {  // gives back bytes not consumed
    while (bytes > 0) {
      if (offset == 0) {
        --index;
        offset = iov[index].iov_len;
      }
      size_t back = std::min(bytes, offset);
      offset -= back;
      bytes -= back;
    }
  }
};

// Zeroes the first `bytes` bytes described by `iov`.
void Scrub(const iovec *iov, size_t count, size_t bytes) {
  for (size_t i = 0; i < count && bytes > 0; ++i) {
    size_t n = std::min(bytes, iov[i].iov_len);
    memset(iov[i].iov_base, 0, n);
    bytes -= n;
  }
}

// The words of WriteHold: allocated in blocks that are never freed (a peer
// may read a word at any time), reused once released.
class HoldWords {
 public:
  static HoldWords &Get() {
    static HoldWords *words = new HoldWords;  // never destroyed: peers may read the words until we exit
    return *words;
  }
  std::atomic<uint64_t> *Take() {
    std::lock_guard lock(mutex_);
    if (free_.empty()) {
      constexpr size_t kBlock = 512;
      std::atomic<uint64_t> *block = new std::atomic<uint64_t>[kBlock];
      blocks_.push_back(block);
      for (size_t i = 0; i < kBlock; ++i) {
        block[i].store(0, std::memory_order_relaxed);
        free_.push_back(&block[i]);
      }
    }
    std::atomic<uint64_t> *word = free_.back();
    free_.pop_back();
    return word;
  }
  void Give(std::atomic<uint64_t> *word) {
    std::lock_guard lock(mutex_);
    free_.push_back(word);
  }
  // A value no hold had before in this process (never 0, the released value).
  uint64_t NextValue() { return next_value_.fetch_add(1, std::memory_order_relaxed); }

 private:
  std::mutex mutex_;
  std::vector<std::atomic<uint64_t> *> blocks_;
  std::vector<std::atomic<uint64_t> *> free_;
  std::atomic<uint64_t> next_value_{1};
};

}  // namespace

WriteHold::WriteHold() : word_(HoldWords::Get().Take()), value_(HoldWords::Get().NextValue()) {
  // Published before the request that names it is sent (a syscall after this).
  word_->store(value_, std::memory_order_release);
}

void WriteHold::Release() {
  if (word_ == nullptr) return;
  // seq_cst: ordered before everything that reports the write ended, hence
  // before whatever the caller then writes into its buffers. A server call
  // that read such a write also reads this store (it reads the word after the
  // data), so it throws its bytes away.
  word_->store(0, std::memory_order_seq_cst);
  HoldWords::Get().Give(word_);
  word_ = nullptr;
}

const ProcessIdentity &LocalIdentity() {
  static const ProcessIdentity identity = [] {
    ProcessIdentity id;
    id.boot_id = ReadBootId();
    id.pid = static_cast<uint32_t>(getpid());
    static char token_storage[kTokenBytes];
    std::string token = RandomBytes(kTokenBytes);
    memcpy(token_storage, token.data(), kTokenBytes);
    id.token = token;
    id.token_addr = reinterpret_cast<uint64_t>(token_storage);
    return id;
  }();
  return identity;
}

PeerProcess::PeerProcess(pid_t pid, int pidfd, uint64_t token_addr, const std::string &token)
    : pid_(pid), pidfd_(pidfd), token_addr_(token_addr) {
  memcpy(token_, token.data(), kTokenBytes);
}

PeerProcess::~PeerProcess() { close(pidfd_); }

std::shared_ptr<PeerProcess> PeerProcess::Verify(const ProcessIdentity &claimed, const ByteStream &connection,
                                                 std::string *why) {
  const ProcessIdentity &self = LocalIdentity();
  if (claimed.Empty() || claimed.token.size() != kTokenBytes) {
    *why = "peer did not offer the same-host path";
    return nullptr;
  }
  if (self.boot_id.empty() || claimed.boot_id != self.boot_id) {
    *why = "peer runs on another host (boot id differs)";
    return nullptr;
  }
  if (claimed.conn_fd == kNoDescriptor) {
    *why = "peer did not say which of its descriptors holds the connection";
    return nullptr;
  }
  if (claimed.pid > static_cast<uint32_t>(INT32_MAX)) {
    *why = "pid " + std::to_string(claimed.pid) + " is not a process id";
    return nullptr;
  }
  const pid_t pid = static_cast<pid_t>(claimed.pid);
  // The handle comes first: whatever the checks below find is only trusted if
  // this very process is still alive after them.
  int pidfd = OpenPidfd(pid);
  if (pidfd < 0) {
    *why = "cannot open a handle on pid " + std::to_string(pid) + ": " + strerror(errno);
    return nullptr;
  }
  std::shared_ptr<PeerProcess> process(new PeerProcess(pid, pidfd, claimed.token_addr, claimed.token));
  if (!process->HoldsOtherEnd(connection, claimed.conn_fd, why)) return nullptr;
  // Can we reach its memory, and is it the same PID namespace (the token it placed is there)?
  char buf[kTokenBytes];
  iovec local_iov{buf, kTokenBytes};
  iovec remote_iov{reinterpret_cast<void *>(claimed.token_addr), kTokenBytes};
  ssize_t n = process_vm_readv(pid, &local_iov, 1, &remote_iov, 1, 0);
  if (n != static_cast<ssize_t>(kTokenBytes)) {
    *why = std::string("cannot read the peer's memory at pid ") + std::to_string(pid) + ": " +
           (n < 0 ? strerror(errno) : "short read");
    return nullptr;
  }
  if (!process->TokenMatches(buf)) {
    *why = "pid " + std::to_string(pid) + " is another process (different PID namespace?)";
    return nullptr;
  }
  if (!process->Alive()) {
    *why = "pid " + std::to_string(pid) + " exited while it was being verified";
    return nullptr;
  }
  return process;
}

bool PeerProcess::HoldsOtherEnd(const ByteStream &connection, uint32_t fd, std::string *why) {
  if (fd == kNoDescriptor) {
    *why = "peer did not say which of its descriptors holds the connection";
    return false;
  }
  sockaddr_storage local{}, remote{};
  if (!connection.SocketEnds(&local, &remote)) {
    *why = "the connection has no TCP addresses to check the peer process against";
    return false;
  }
  uint64_t inode = 0;
  if (!PeerSocketInode(local, remote, &inode, why) || !ProcessHoldsSocket(pid_, fd, inode, why)) return false;
  if (!Alive()) {
    *why = "pid " + std::to_string(pid_) + " has exited";
    return false;
  }
  return true;
}

bool PeerProcess::TokenMatches(const char *bytes) const { return memcmp(bytes, token_, kTokenBytes) == 0; }

bool PeerProcess::Alive() {
  if (Gone()) return false;
  pollfd p{pidfd_, POLLIN, 0};
  int rc;
  do {
    rc = poll(&p, 1, 0);
  } while (rc < 0 && errno == EINTR);
  // A pidfd becomes readable when its process exits; an error means we cannot tell.
  if (rc != 0) {
    MarkGone(rc > 0 ? "the process exited" : "its handle cannot be polled");
    return false;
  }
  return true;
}

int PeerProcess::DuplicateDescriptor(uint32_t fd) {
  if (Gone() || fd > static_cast<uint32_t>(INT32_MAX)) {
    errno = Gone() ? ESRCH : EBADF;
    return -1;
  }
#ifdef SYS_pidfd_getfd
  // The kernel checks PTRACE_MODE_ATTACH_REALCREDS, the right process_vm_readv needs.
  const int dup = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd_, static_cast<int>(fd), 0));
  if (dup >= 0) fcntl(dup, F_SETFD, FD_CLOEXEC);  // pidfd_getfd sets it too; said here for older kernels' sake
  return dup;
#else
  errno = ENOSYS;
  return -1;
#endif
}

void PeerProcess::MarkGone(const char *reason) {
  if (gone_.exchange(true, std::memory_order_acq_rel)) return;
  LOG_WARN("same-host peer pid %d is no longer trusted (%s): its session stops using the same-host path",
           static_cast<int>(pid_), reason);
}

int PeerProcess::CopyFrom(const iovec *local, size_t local_count, const iovec *remote, size_t remote_count,
                          Deadline deadline, const std::atomic<bool> *cancel,
                          const std::function<bool()> &abandoned, const HoldWord *hold) {
  if (Gone()) return ESRCH;
  Cursor l{local, local_count}, r{remote, remote_count};
  // Per-thread scratch of a fixed size: a small copy (the one-sided READ path)
  // must not pay for allocating and zeroing 2 x 16 KiB on every call.
  thread_local std::vector<iovec> lv(kMaxIov), rv(kMaxIov);
  char echo[kTokenBytes];
  size_t written = 0;  // bytes of `local` (a prefix) written by the calls so far
  int err = 0;
  while (!l.Done() && !r.Done()) {
    if (deadline.Expired()) {
      err = ETIMEDOUT;
      break;
    }
    if ((cancel != nullptr && cancel->load(std::memory_order_acquire)) || (abandoned && abandoned())) {
      err = ECANCELED;
      break;
    }
    size_t ln = 0, rn = 0;
    size_t lbytes = l.Take(lv.data(), &ln, kMaxBytesPerCall);
    size_t rbytes = r.Take(rv.data(), &rn, lbytes);
    if (rbytes < lbytes) l.Rewind(lbytes - rbytes);
    // Trim the local side to the remote bytes taken.
    const size_t want = rbytes;
    size_t used = 0;
    for (size_t acc = 0; used < ln && acc < want; ++used) {
      if (acc + lv[used].iov_len > want) lv[used].iov_len = want - acc;
      acc += lv[used].iov_len;
    }
    // A write's hold word right after the data: the kernel reads the
    // remote ranges in order, and between two of them it drops its page
    // references (full barriers), so a call that read any byte the
    // requester wrote after letting go also reads the word it changed
    // before (WriteHold::Release).
    size_t lcount = used, rcount = rn;
    uint64_t held = 0;
    if (hold != nullptr) {
      lv[lcount++] = {&held, sizeof(held)};
      rv[rcount++] = {reinterpret_cast<void *>(static_cast<uintptr_t>(hold->addr)), sizeof(held)};
    }
    const size_t hold_bytes = hold != nullptr ? sizeof(held) : 0;
    // The token last: if it arrives intact, every byte before it came from
    // the address space we verified (one call reads from one address space).
    lv[lcount++] = {echo, kTokenBytes};
    rv[rcount++] = {reinterpret_cast<void *>(token_addr_), kTokenBytes};
    ssize_t n = process_vm_readv(pid_, lv.data(), lcount, rv.data(), rcount, 0);
    if (n < 0 && errno == EINTR) {  // nothing was copied
      l.Rewind(want);
      r.Rewind(want);
      continue;
    }
    if (n < 0) {  // nothing was copied by this call
      err = errno;
      if (err == ESRCH || err == EPERM) MarkGone(err == ESRCH ? "the process exited" : "access was withdrawn");
      break;
    }
    const size_t got = static_cast<size_t>(n);
    if (got < want) {  // stopped at an unmapped page on one side
      written += got;
      err = EFAULT;
      break;
    }
    written += want;
    if (got < want + hold_bytes) {  // the hold word is not mapped: the requester's mistake, not ours to trust
      err = EFAULT;
      break;
    }
    if (got < want + hold_bytes + kTokenBytes || !TokenMatches(echo)) {
      MarkGone("its address space no longer holds its token (the pid names another process or a new image)");
      err = ESRCH;
      break;
    }
    if (hold != nullptr && held != hold->value) {  // the requester let go meanwhile: what we read may be stale
      err = ECANCELED;
      break;
    }
  }
  if (err == 0 && !(l.Done() && r.Done())) err = EINVAL;
  // The pid may have named another process only if ours exited: once the
  // handle shows it alive after the copy, the copy was from it.
  if (!Alive()) err = ESRCH;
  if (err != 0 && written > 0) Scrub(local, local_count, written);
  return err;
}

}  // namespace llmdd
