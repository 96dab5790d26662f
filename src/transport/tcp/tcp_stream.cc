#include "transport/tcp/tcp_stream.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>

#include "common/log.h"

namespace llmdd {
namespace {

constexpr int kMaxIovPerCall = IOV_MAX < 1024 ? IOV_MAX : 1024;
// Reads of at most this many bytes (message headers, small responses) spin
// before blocking; bulk reads block at once (spinning would take the core
// from the thread producing the data).
constexpr size_t kSpinMaxBytes = 64 * 1024;
constexpr int kSpinCreditMax = 8;
std::atomic<uint32_t> g_read_spin_us{kDefaultReadSpinMicros};
// Threads of this process spinning right now, and how many may: spinning
// threads beyond the cores starve the very threads they wait for (on 2 cores:
// one spinner here, one in the peer process).
std::atomic<int> g_spinners{0};
const int g_max_spinners = [] {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  return cpus > 3 ? static_cast<int>(cpus / 2) : 1;
}();

int64_t MonotonicNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void SetNonBlocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Walks a caller-owned iovec array without modifying it: position = (index, offset).
class IovCursor {
 public:
  IovCursor(const iovec *iov, int count) : iov_(iov), count_(count) { SkipEmpty(); }
  bool Done() const { return index_ >= count_; }
  // Fills `out` with up to kMaxIovPerCall entries starting at the cursor.
  int Fill(iovec *out) const {
    int n = 0;
    for (int i = index_; i < count_ && n < kMaxIovPerCall; ++i) {
      if (iov_[i].iov_len == 0) continue;
      size_t skip = (i == index_) ? offset_ : 0;
      out[n].iov_base = static_cast<char *>(iov_[i].iov_base) + skip;
      out[n].iov_len = iov_[i].iov_len - skip;
      ++n;
    }
    return n;
  }
  size_t Remaining() const {
    size_t total = 0;
    for (int i = index_; i < count_; ++i) total += iov_[i].iov_len - (i == index_ ? offset_ : 0);
    return total;
  }
  void Advance(size_t bytes) {
    while (bytes > 0 && index_ < count_) {
      size_t left = iov_[index_].iov_len - offset_;
      if (bytes < left) {
        offset_ += bytes;
        return;
      }
      bytes -= left;
      ++index_;
      offset_ = 0;
      SkipEmpty();
    }
  }

 private:
  void SkipEmpty() {
    while (index_ < count_ && iov_[index_].iov_len == 0) ++index_;
  }
  const iovec *iov_;
  int count_;
  int index_ = 0;
  size_t offset_ = 0;
};

}  // namespace

void TuneSocket(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Socket buffers are left to the kernel's autotuning (net.ipv4.tcp_rmem /
  // tcp_wmem): setting SO_SNDBUF/SO_RCVBUF turns autotuning off, and on a host
  // with the default net.core.rmem_max the request is clipped to ~416 KiB.
}

TcpStream::TcpStream(int fd, std::string peer_name) : fd_(fd), peer_name_(std::move(peer_name)) {
  SetNonBlocking(fd);
  TuneSocket(fd);
}

TcpStream::~TcpStream() { Close(); }

std::unique_ptr<TcpStream> TcpStream::Connect(const Endpoint &remote, Deadline deadline, bool *timed_out,
                                              std::string *error) {
  *timed_out = false;
  sockaddr_storage addr;
  socklen_t addr_len = remote.ToSockaddr(&addr);
  int fd = socket(remote.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *error = std::string("socket() failed: ") + strerror(errno);
    return nullptr;
  }
  if (connect(fd, reinterpret_cast<sockaddr *>(&addr), addr_len) != 0 && errno != EINPROGRESS) {
    *error = "connect to " + remote.ToString() + " failed: " + strerror(errno);
    close(fd);
    return nullptr;
  }
  pollfd pfd{fd, POLLOUT, 0};
  int ready;
  do {
    ready = poll(&pfd, 1, deadline.RemainingMsForPoll());
  } while (ready < 0 && errno == EINTR);
  if (ready == 0) {
    *timed_out = true;
    *error = "connect to " + remote.ToString() + " timed out";
    close(fd);
    return nullptr;
  }
  int so_error = 0;
  socklen_t len = sizeof(so_error);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
  if (ready < 0 || so_error != 0) {
    *error = "connect to " + remote.ToString() + " failed: " + strerror(so_error ? so_error : errno);
    close(fd);
    return nullptr;
  }
  return std::make_unique<TcpStream>(fd, remote.ToString());
}

IoStatus TcpStream::WaitFor(short events, Deadline deadline) {
  int fd = fd_.load();
  if (fd < 0) return IoStatus::kClosed;
  pollfd pfd{fd, events, 0};
  for (;;) {
    int ready = poll(&pfd, 1, deadline.RemainingMsForPoll());
    if (ready > 0) return IoStatus::kOk;  // readiness or error: the next syscall reports which
    if (ready == 0) return IoStatus::kTimeout;
    if (errno != EINTR) {
      last_errno_ = errno;
      return IoStatus::kError;
    }
  }
}

void SetReadSpinMicros(uint32_t us) { g_read_spin_us.store(us, std::memory_order_relaxed); }
uint32_t ReadSpinMicros() { return g_read_spin_us.load(std::memory_order_relaxed); }

namespace {
thread_local uint32_t t_read_spin_floor_us = 0;  // ScopedReadSpinFloor
}  // namespace

ScopedReadSpinFloor::ScopedReadSpinFloor(uint32_t us) : saved_(t_read_spin_floor_us) {
  t_read_spin_floor_us = std::max(saved_, us);
}
ScopedReadSpinFloor::~ScopedReadSpinFloor() { t_read_spin_floor_us = saved_; }

// Spin-then-block for one ReadFull: waking a thread blocked in poll() costs
// several µs (more in a VM), a round trip of a small request is about that
// much, so a reader that expects an answer soon retries the non-blocking read
// for a bounded time first. Adaptive per stream: spins that end in blocking
// anyway use up credit, and a stream without credit blocks at once (an idle
// lane does not burn a core) until a short blocking wait shows spinning
// would have paid.
class TcpStream::SpinWait {
 public:
  SpinWait(int *credit, bool small) : credit_(credit) {
    uint32_t us = ReadSpinMicros();
    if (us > 0) us = std::max(us, t_read_spin_floor_us);
    allowed_ = small && us > 0 && *credit_ > 0;
    budget_ = std::chrono::microseconds(us);
  }
  ~SpinWait() { StopSpinning(); }
  // Called on EAGAIN; true: retry the read now.
  bool KeepSpinning() {
    if (!allowed_) return false;
    const auto now = Clock::now();
    if (!started_) {
      started_ = true;
      start_ = now;
      if (g_spinners.fetch_add(1, std::memory_order_relaxed) >= g_max_spinners) {
        g_spinners.fetch_sub(1, std::memory_order_relaxed);
        allowed_ = false;  // enough cores spin already: block, without blaming this stream
        return false;
      }
      counted_ = true;
    }
    if (now - start_ < budget_) {
      CpuRelax();
      return true;
    }
    StopSpinning();
    allowed_ = false;
    *credit_ -= 2;  // spun in vain
    blocked_from_ = now;
    blocked_ = true;
    return false;
  }
  void BlockingWait() {
    if (!blocked_) {
      blocked_ = true;
      blocked_from_ = Clock::now();
    }
  }
  // The read completed.
  void Finished() {
    StopSpinning();
    if (blocked_) {
      // A blocking wait as short as the budget: spinning would have caught it.
      if (budget_.count() > 0 && Clock::now() - blocked_from_ < budget_) *credit_ = std::min(*credit_ + 2, kSpinCreditMax);
    } else if (started_) {
      *credit_ = std::min(*credit_ + 1, kSpinCreditMax);
    }
  }

 private:
  using Clock = std::chrono::steady_clock;
  void StopSpinning() {
    if (counted_) g_spinners.fetch_sub(1, std::memory_order_relaxed);
    counted_ = false;
  }
  int *credit_;
  bool allowed_ = false, started_ = false, blocked_ = false, counted_ = false;
  std::chrono::microseconds budget_{0};
  Clock::time_point start_, blocked_from_;
};

IoStatus TcpStream::ReadFull(const iovec *iov, int iovcnt, Deadline deadline) {
  size_t got = 0;
  return ReadIovAtLeast(iov, iovcnt, SIZE_MAX, deadline, &got);
}

IoStatus TcpStream::ReadAtLeast(void *buf, size_t min, size_t max, Deadline deadline, size_t *got) {
  const iovec room{buf, max};
  return ReadIovAtLeast(&room, 1, min, deadline, got);
}

IoStatus TcpStream::ReadIovAtLeast(const iovec *iov, int iovcnt, size_t min, Deadline deadline, size_t *got) {
  *got = 0;
  IovCursor cursor(iov, iovcnt);
  const size_t total = cursor.Remaining();
  if (min > total) min = total;
  iovec window[kMaxIovPerCall];
  SpinWait spin(&spin_credit_, total <= kSpinMaxBytes);
  while (*got < min) {
    int fd = fd_.load();
    if (fd < 0) return IoStatus::kClosed;
    int n = cursor.Fill(window);
    ssize_t read = readv(fd, window, n);  // the socket is non-blocking
    if (read > 0) {
      cursor.Advance(static_cast<size_t>(read));
      *got += static_cast<size_t>(read);
      continue;
    }
    if (read == 0) return IoStatus::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (deadline.Expired()) return IoStatus::kTimeout;
      if (spin.KeepSpinning()) continue;
      spin.BlockingWait();
      IoStatus waited = WaitFor(POLLIN, deadline);
      if (waited != IoStatus::kOk) return waited;
      continue;
    }
    last_errno_ = errno;
    return (errno == ECONNRESET || errno == EPIPE) ? IoStatus::kClosed : IoStatus::kError;
  }
  spin.Finished();
  return IoStatus::kOk;
}

IoStatus TcpStream::ReadAvailable(void *buf, size_t len, size_t *got) {
  *got = 0;
  for (;;) {
    const int fd = fd_.load();
    if (fd < 0) return IoStatus::kClosed;
    const ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
    if (n > 0) {
      *got = static_cast<size_t>(n);
      if (gave_up_at_ns_ != 0) SettleGaveUp();
      return IoStatus::kOk;
    }
    if (n == 0) return len == 0 ? IoStatus::kOk : IoStatus::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IoStatus::kOk;
    last_errno_ = errno;
    return (errno == ECONNRESET || errno == EPIPE) ? IoStatus::kClosed : IoStatus::kError;
  }
}

IoStatus TcpStream::SpinRecv(void *buf, size_t len, int flags, size_t *got) {
  *got = 0;
  SpinWait spin(&spin_credit_, true);
  for (;;) {
    const int fd = fd_.load();
    if (fd < 0) return IoStatus::kClosed;
    const ssize_t n = recv(fd, buf, len, flags | MSG_DONTWAIT);
    if (n > 0) {
      spin.Finished();
      *got = static_cast<size_t>(n);
      return IoStatus::kOk;
    }
    if (n == 0) return len == 0 ? IoStatus::kOk : IoStatus::kClosed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      last_errno_ = errno;
      return (errno == ECONNRESET || errno == EPIPE) ? IoStatus::kClosed : IoStatus::kError;
    }
    if (!spin.KeepSpinning()) {
      gave_up_at_ns_ = MonotonicNanos();
      return IoStatus::kOk;
    }
  }
}

bool TcpStream::ArrivesSoon() {
  char byte;
  size_t got = 0;
  // End of stream or an error: false, the event set reports it.
  return SpinRecv(&byte, 1, MSG_PEEK, &got) == IoStatus::kOk && got > 0;
}

IoStatus TcpStream::ReadSoon(void *buf, size_t len, size_t *got) { return SpinRecv(buf, len, 0, got); }

void TcpStream::SettleGaveUp() {
  const int64_t waited_ns = MonotonicNanos() - gave_up_at_ns_;
  gave_up_at_ns_ = 0;
  if (waited_ns < static_cast<int64_t>(ReadSpinMicros()) * 1000) spin_credit_ = std::min(spin_credit_ + 2, kSpinCreditMax);
}

IoStatus TcpStream::WriteFull(const iovec *iov, int iovcnt, Deadline deadline) {
  IovCursor cursor(iov, iovcnt);
  iovec window[kMaxIovPerCall];
  while (!cursor.Done()) {
    int fd = fd_.load();
    if (fd < 0) return IoStatus::kClosed;
    int n = cursor.Fill(window);
    msghdr msg{};
    msg.msg_iov = window;
    msg.msg_iovlen = static_cast<size_t>(n);
    ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (sent >= 0) {
      cursor.Advance(static_cast<size_t>(sent));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (deadline.Expired()) return IoStatus::kTimeout;
      IoStatus waited = WaitFor(POLLOUT, deadline);
      if (waited != IoStatus::kOk) return waited;
      continue;
    }
    last_errno_ = errno;
    return (errno == ECONNRESET || errno == EPIPE) ? IoStatus::kClosed : IoStatus::kError;
  }
  return IoStatus::kOk;
}

bool TcpStream::SocketEnds(sockaddr_storage *local, sockaddr_storage *remote) const {
  const int fd = fd_.load();
  if (fd < 0) return false;
  socklen_t local_len = sizeof(*local), remote_len = sizeof(*remote);
  if (getsockname(fd, reinterpret_cast<sockaddr *>(local), &local_len) != 0) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr *>(remote), &remote_len) != 0) return false;
  return (local->ss_family == AF_INET || local->ss_family == AF_INET6) && local->ss_family == remote->ss_family;
}

void TcpStream::Shutdown() {
  int fd = fd_.load();
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

void TcpStream::Close() {
  int fd = fd_.exchange(-1);
  if (fd >= 0) close(fd);
}

TcpListener::~TcpListener() { Close(); }

bool TcpListener::Listen(const Endpoint &local, std::string *error) {
  sockaddr_storage addr;
  socklen_t addr_len = local.ToSockaddr(&addr);
  fd_ = socket(local.family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd_ < 0) {
    *error = std::string("socket() failed: ") + strerror(errno);
    return false;
  }
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (local.family == AF_INET6) setsockopt(fd_, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (bind(fd_, reinterpret_cast<sockaddr *>(&addr), addr_len) != 0) {
    *error = "cannot bind " + local.ToString() + ": " + strerror(errno);
    Close();
    return false;
  }
  if (listen(fd_, 512) != 0) {
    *error = "cannot listen on " + local.ToString() + ": " + strerror(errno);
    Close();
    return false;
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  getsockname(fd_, reinterpret_cast<sockaddr *>(&bound), &bound_len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6 *>(&bound)->sin6_port
                                             : reinterpret_cast<sockaddr_in *>(&bound)->sin_port);
  if (pipe2(wake_pipe_, O_CLOEXEC | O_NONBLOCK) != 0) {
    *error = std::string("pipe2 failed: ") + strerror(errno);
    Close();
    return false;
  }
  spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return true;
}

std::unique_ptr<TcpStream> TcpListener::Accept(Deadline deadline, bool *out_of_descriptors) {
  if (out_of_descriptors != nullptr) *out_of_descriptors = false;
  if (spare_fd_ < 0) spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);  // given up last time
  while (!stopped_.load()) {
    pollfd pfds[2] = {{fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
    int ready = poll(pfds, 2, deadline.RemainingMsForPoll());
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0 || stopped_.load()) return nullptr;
    if (pfds[1].revents != 0) return nullptr;
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof(peer);
    int fd = accept4(fd_, reinterpret_cast<sockaddr *>(&peer), &peer_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EINTR || err == ECONNABORTED) continue;
      if ((err == EMFILE || err == ENFILE) && spare_fd_ >= 0 && out_of_descriptors != nullptr) {
        // Take the connection with the reserved descriptor so its peer can be
        // told; the reserve is reopened on the next Accept once one is free.
        close(spare_fd_);
        spare_fd_ = -1;
        fd = accept4(fd_, reinterpret_cast<sockaddr *>(&peer), &peer_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
          *out_of_descriptors = true;
        } else {
          spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
      }
      if (fd < 0) {
        // Said at most once a second: a full descriptor table makes this repeat.
        static std::atomic<int64_t> last_said_ms{0};
        const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count();
        int64_t said = last_said_ms.load();
        if (now_ms - said >= 1000 && last_said_ms.compare_exchange_strong(said, now_ms))
          LOG_WARN("accept failed: %s", strerror(err));
        if (err == EMFILE || err == ENFILE) {
          // Out of descriptors: back off instead of spinning.
          poll(nullptr, 0, 50);
          if (deadline.Expired()) return nullptr;
          continue;
        }
        return nullptr;
      }
    }
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (peer.ss_family == AF_INET) {
      auto *sa = reinterpret_cast<sockaddr_in *>(&peer);
      inet_ntop(AF_INET, &sa->sin_addr, host, sizeof(host));
      port = ntohs(sa->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      auto *sa = reinterpret_cast<sockaddr_in6 *>(&peer);
      inet_ntop(AF_INET6, &sa->sin6_addr, host, sizeof(host));
      port = ntohs(sa->sin6_port);
    }
    return std::make_unique<TcpStream>(fd, std::string(host) + ":" + std::to_string(port));
  }
  return nullptr;
}

void TcpListener::Stop() {
  stopped_.store(true);
  if (wake_pipe_[1] >= 0) {
    char byte = 1;
    ssize_t ignored = write(wake_pipe_[1], &byte, 1);
    (void)ignored;
  }
}

void TcpListener::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
  if (spare_fd_ >= 0) close(spare_fd_);
  spare_fd_ = -1;
  for (int &end : wake_pipe_) {
    if (end >= 0) close(end);
    end = -1;
  }
}

}  // namespace llmdd
