#include "transport/shm/cma.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <vector>

#include "common/hmac.h"
#include "transport/shm/connection_owner.h"

namespace llmdd {
namespace {

constexpr size_t kTokenBytes = 32;
constexpr size_t kMaxIov = IOV_MAX < 1024 ? IOV_MAX : 1024;

std::string ReadBootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

// Advances through an iovec array without modifying it.
struct Cursor {
  const iovec *iov;
  size_t count;
  size_t index = 0;
  size_t offset = 0;
  bool Done() const { return index >= count; }
  // Takes up to `max_bytes` as at most kMaxIov entries.
  size_t Take(iovec *out, size_t *n, size_t max_bytes) {
    size_t taken = 0;
    *n = 0;
    while (index < count && *n < kMaxIov && taken < max_bytes) {
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
  void Rewind(size_t bytes) {  // gives back bytes not consumed by a short copy
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

}  // namespace

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

bool VerifyReachable(const ProcessIdentity &peer, const ByteStream &connection, std::string *why) {
  const ProcessIdentity &self = LocalIdentity();
  if (peer.Empty() || peer.token.size() != kTokenBytes) {
    *why = "peer did not offer the same-host path";
    return false;
  }
  if (self.boot_id.empty() || peer.boot_id != self.boot_id) {
    *why = "peer runs on another host (boot id differs)";
    return false;
  }
  // First: is the process named the one on the other end of this connection?
  // (Anyone can name a process; only that process holds the socket.)
  sockaddr_storage local{}, remote{};
  if (!connection.SocketEnds(&local, &remote)) {
    *why = "the connection has no TCP addresses to check the peer process against";
    return false;
  }
  if (!ProcessHoldsPeerEnd(static_cast<pid_t>(peer.pid), local, remote, why)) return false;
  // Then: can we reach its memory, and is it the same pid namespace (the token it placed is there)?
  char buf[kTokenBytes];
  iovec local_iov{buf, kTokenBytes};
  iovec remote_iov{reinterpret_cast<void *>(peer.token_addr), kTokenBytes};
  ssize_t n = process_vm_readv(static_cast<pid_t>(peer.pid), &local_iov, 1, &remote_iov, 1, 0);
  if (n != static_cast<ssize_t>(kTokenBytes)) {
    *why = std::string("cannot read the peer's memory at pid ") + std::to_string(peer.pid) + ": " +
           (n < 0 ? strerror(errno) : "short read");
    return false;
  }
  if (memcmp(buf, peer.token.data(), kTokenBytes) != 0) {
    *why = "pid " + std::to_string(peer.pid) + " is another process (different PID namespace?)";
    return false;
  }
  return true;
}

int CmaCopy(pid_t peer, bool to_peer, const iovec *local, size_t local_count, const iovec *remote,
            size_t remote_count, Deadline deadline) {
  Cursor l{local, local_count}, r{remote, remote_count};
  // Per-thread scratch: a small copy (the one-sided READ path) must not pay
  // for allocating and zeroing 2 x 16 KiB on every call.
  thread_local std::vector<iovec> lv(kMaxIov), rv(kMaxIov);
  while (!l.Done() && !r.Done()) {
    if (deadline.Expired()) return ETIMEDOUT;
    size_t ln = 0, rn = 0;
    size_t lbytes = l.Take(lv.data(), &ln, kMaxBytesPerCall);
    size_t rbytes = r.Take(rv.data(), &rn, lbytes);
    if (rbytes < lbytes) l.Rewind(lbytes - rbytes);
    // Trim the local side to the remote bytes taken.
    size_t want = rbytes, acc = 0;
    size_t used = 0;
    for (; used < ln && acc < want; ++used) {
      if (acc + lv[used].iov_len > want) lv[used].iov_len = want - acc;
      acc += lv[used].iov_len;
    }
    ssize_t n = to_peer ? process_vm_writev(peer, lv.data(), used, rv.data(), rn, 0)
                        : process_vm_readv(peer, lv.data(), used, rv.data(), rn, 0);
    if (n < 0) {
      if (errno == EINTR) {
        l.Rewind(want);
        r.Rewind(want);
        continue;
      }
      return errno;
    }
    if (static_cast<size_t>(n) < want) {
      // Partial copies stop at the first unmapped page on either side.
      if (n == 0) return EFAULT;
      l.Rewind(want - static_cast<size_t>(n));
      r.Rewind(want - static_cast<size_t>(n));
    }
  }
  return (l.Done() && r.Done()) ? 0 : EINVAL;
}

}  // namespace llmdd
