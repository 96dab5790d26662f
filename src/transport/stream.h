// ByteStream: the seam between the engine's protocol code and the bytes on the
// wire. The TCP transport implements it; tests wrap it in fault-injecting
// decorators (delay, stall, drop, corrupt, close, partial writes).
//
// Contract: ReadFull/WriteFull move exactly the bytes described by the iovecs
// or fail; they never block past the deadline. After any non-kOk result the
// stream's framing is unknown and the caller must Close() it. Shutdown() may be
// called from another thread to wake a blocked reader/writer (it then returns
// kClosed); Close() must not race with I/O on the same stream.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/deadline.h"

namespace llmdd {

enum class IoStatus { kOk, kTimeout, kClosed, kError };

const char *IoStatusName(IoStatus status);

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Both take a scratch copy of the iovec array; the caller's array is untouched.
  virtual IoStatus ReadFull(const iovec *iov, int iovcnt, Deadline deadline) = 0;
  virtual IoStatus WriteFull(const iovec *iov, int iovcnt, Deadline deadline) = 0;
  // Takes what has already arrived, up to `len` bytes, without waiting: kOk
  // with *got (0 when nothing is there yet), kClosed at end of stream. For
  // event-driven readers that assemble a message as it arrives.
  virtual IoStatus ReadAvailable(void *buf, size_t len, size_t *got) = 0;
  // Reads at least `min` and at most `max` bytes into `buf`, waiting (within
  // the deadline) only for the first `min`; *got says how many came. A
  // requester takes an answer's header and whatever of a small payload came
  // with it in one system call. Only for a stream on which nothing can follow
  // the message being read (a lane between its request's answer and its next
  // request). Default: exactly `min`.
  virtual IoStatus ReadAtLeast(void *buf, size_t min, size_t max, Deadline deadline, size_t *got) {
    iovec iov{buf, min};
    const IoStatus io = ReadFull(&iov, 1, deadline);
    *got = io == IoStatus::kOk ? min : 0;
    return io;
  }
  // True when bytes arrive within this process's short read spin (see
  // ReadSpinMicros), false at once where spinning is not allowed: a serving
  // thread that just answered keeps a busy peer's next request off the event
  // set. Never blocks.
  virtual bool ArrivesSoon() { return false; }
  // ReadAvailable, after waiting up to the same short spin as ArrivesSoon for
  // the first bytes: kOk with *got 0 when none came. The serving side reads a
  // requester's next message this way instead of ArrivesSoon then
  // ReadAvailable (a peek and a read: one system call more per request).
  // Never blocks; where spinning is not allowed it is ReadAvailable.
  virtual IoStatus ReadSoon(void *buf, size_t len, size_t *got) { return ReadAvailable(buf, len, got); }
  virtual void Shutdown() = 0;
  virtual void Close() = 0;
  // Human-readable peer description for logs ("127.0.0.1:26000").
  virtual std::string PeerName() const = 0;
  // errno of the last kError, for logs.
  virtual int LastErrno() const = 0;
  // The connection's two addresses as this process sees them (TCP only);
  // false for streams that have none. Binds the same-host check to a connection.
  virtual bool SocketEnds(sockaddr_storage *local, sockaddr_storage *remote) const {
    (void)local;
    (void)remote;
    return false;
  }

  // The descriptor behind the stream (for the same-host check, which names
  // the socket to the peer), or -1.
  virtual int NativeHandle() const { return -1; }

  IoStatus Read(void *buf, size_t len, Deadline deadline) {
    iovec iov{buf, len};
    return ReadFull(&iov, 1, deadline);
  }
  IoStatus Write(const void *buf, size_t len, Deadline deadline) {
    iovec iov{const_cast<void *>(buf), len};
    return WriteFull(&iov, 1, deadline);
  }

  // The engine protocol's version on this connection (engine/wire.h): 1, the
  // handshake's, until the handshake sets the negotiated one, once, before
  // the stream is shared. Stamped on and expected in every later header.
  uint16_t ProtocolVersion() const { return protocol_version_.load(std::memory_order_relaxed); }
  void SetProtocolVersion(uint16_t version) { protocol_version_.store(version, std::memory_order_relaxed); }

 private:
  std::atomic<uint16_t> protocol_version_{1};
};

}  // namespace llmdd
