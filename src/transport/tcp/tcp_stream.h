// TCP implementation of ByteStream plus a listener. Sockets are non-blocking;
// every wait is a poll() bounded by the caller's deadline.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "common/deadline.h"
#include "common/endpoint.h"
#include "transport/stream.h"

namespace llmdd {

// Spin-then-block: how long a small read (a message header, a short answer)
// retries a non-blocking socket before it blocks in poll(); 0 blocks at once.
// Process-wide (set by llmdd.BusyPollUs at Initialize; the last one wins).
constexpr uint32_t kDefaultReadSpinMicros = 50;
void SetReadSpinMicros(uint32_t us);
uint32_t ReadSpinMicros();

// While it lives, small reads on this thread spin for at least `us` (where
// spinning is on at all: ReadSpinMicros() > 0), for an answer known to come
// only after work the peer does first: a same-host WRITE's answer follows
// the peer's copy. A reader that gave up spinning sleeps in poll(), and
// waking it costs tens of µs in a VM (40 µs one way on the 2-vCPU hosts:
// docs/PERFORMANCE.md). The cores stay bounded by the process-wide spinner
// cap. Nests (the larger floor wins inside).
class ScopedReadSpinFloor {
 public:
  explicit ScopedReadSpinFloor(uint32_t us);
  ~ScopedReadSpinFloor();
  ScopedReadSpinFloor(const ScopedReadSpinFloor &) = delete;
  ScopedReadSpinFloor &operator=(const ScopedReadSpinFloor &) = delete;

 private:
  uint32_t saved_;
};

class TcpStream final : public ByteStream {
 public:
  // Takes ownership of a connected socket.
  TcpStream(int fd, std::string peer_name);
  ~TcpStream() override;

  // Connects within the deadline. On failure returns nullptr, sets *timed_out
  // when the deadline (not a refusal) ended the attempt, and fills *error.
  static std::unique_ptr<TcpStream> Connect(const Endpoint &remote, Deadline deadline, bool *timed_out,
                                            std::string *error);

  IoStatus ReadFull(const iovec *iov, int iovcnt, Deadline deadline) override;
  IoStatus WriteFull(const iovec *iov, int iovcnt, Deadline deadline) override;
  IoStatus ReadAvailable(void *buf, size_t len, size_t *got) override;
  IoStatus ReadAtLeast(void *buf, size_t min, size_t max, Deadline deadline, size_t *got) override;
  bool ArrivesSoon() override;
  IoStatus ReadSoon(void *buf, size_t len, size_t *got) override;
  void Shutdown() override;
  void Close() override;
  std::string PeerName() const override { return peer_name_; }
  int LastErrno() const override { return last_errno_; }
  bool SocketEnds(sockaddr_storage *local, sockaddr_storage *remote) const override;
  int NativeHandle() const override { return fd_.load(); }

 private:
  class SpinWait;
  IoStatus WaitFor(short events, Deadline deadline);
  void SettleGaveUp();
  // recv(flags | MSG_DONTWAIT) of up to `len` bytes, spinning (SpinWait) while
  // nothing is there: ArrivesSoon (MSG_PEEK) and ReadSoon.
  IoStatus SpinRecv(void *buf, size_t len, int flags, size_t *got);
  // ReadFull and ReadAtLeast: reads into `iov` until at least `min` bytes
  // (at most their total) came, spinning then blocking; *got says how many.
  IoStatus ReadIovAtLeast(const iovec *iov, int iovcnt, size_t min, Deadline deadline, size_t *got);

  std::atomic<int> fd_;
  int spin_credit_ = 8;  // adaptive spinning (SpinWait); only the reading thread touches it
  // When ArrivesSoon last gave up (0: it has not, or that was settled). A
  // server that stops waiting returns its thread to the event set, and the
  // next read there (ReadAvailable) tells whether the bytes came within the
  // spin budget: if so spinning would have caught them and credit comes
  // back; without this a stream that once spun in vain never spins again.
  int64_t gave_up_at_ns_ = 0;
  std::string peer_name_;
  int last_errno_ = 0;
};

class TcpListener {
 public:
  ~TcpListener();
  // Binds and listens; returns false with *error on failure (e.g. port in use).
  bool Listen(const Endpoint &local, std::string *error);
  // Waits up to the deadline for a connection; nullptr on timeout or after Stop().
  // When the process is out of descriptors, the connection waiting longest is
  // still taken (through a descriptor kept in reserve for that) and returned
  // with *out_of_descriptors set: the caller tells the peer and closes it, so
  // the peer learns at once instead of timing out in the backlog.
  std::unique_ptr<TcpStream> Accept(Deadline deadline, bool *out_of_descriptors = nullptr);
  // Wakes Accept() for good; safe from another thread.
  void Stop();
  void Close();
  int Port() const { return port_; }
  // The listening socket, for an event set to watch (-1 when not listening).
  int NativeHandle() const { return fd_; }

 private:
  int fd_ = -1;
  int spare_fd_ = -1;  // /dev/null, given up to accept one connection when descriptors run out
  int wake_pipe_[2] = {-1, -1};
  int port_ = 0;
  std::atomic<bool> stopped_{false};
};

// Tunes a connected socket for bulk transfer (no Nagle, large buffers).
void TuneSocket(int fd);

}  // namespace llmdd
