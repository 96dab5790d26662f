// Helpers shared by the libFuzzer targets in tests/fuzz (docs/TESTING.md, "Fuzzing").
//
//   PeerFeeder    plays the untrusted peer on one end of a connected socket, on a
//                 helper thread: it writes the fuzz input, then shuts its write
//                 side down, and discards (optionally keeps) whatever the code
//                 under test sends back, until that side closes. Reads and
//                 writes are interleaved with poll(), so neither side can block
//                 the other forever.
//   GuardedBuffer a heap buffer with ASan-poisoned guard zones on both sides:
//                 any byte the code under test touches outside [data, data+len)
//                 is reported by ASan (including readv/writev buffers).
//   SelfAsPeer    this process as a verified same-host peer (it holds both ends
//                 of a loopback connection kept for the life of the fuzzer).
//   FUZZ_CHECK    an invariant of the code under test; aborts (a libFuzzer crash)
//                 with the message when it does not hold.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sanitizer/asan_interface.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <memory>
#include <thread>

#include "transport/shm/cma.h"
#include "transport/tcp/tcp_stream.h"

#define FUZZ_CHECK(cond, ...)                                               \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                         \
      fprintf(stderr, "\n");                                                \
      abort();                                                              \
    }                                                                       \
  } while (0)

namespace llmdd::fuzz {

// Bounds how much of the code-under-test's output a feeder keeps.
constexpr size_t kMaxCapture = 8u << 20;

// One long-lived thread runs the feeders: creating a thread per execution
// costs ~0.5 KiB of never-returned memory under ASan, which would end long
// fuzzing runs with libFuzzer's out-of-memory error.
class FeederThread {
 public:
  static FeederThread &Get() {
    static FeederThread *instance = new FeederThread();  // lives until exit, never joined
    return *instance;
  }
  void Submit(std::function<void()> job) {
    std::unique_lock lock(mutex_);
    job_ = std::move(job);
    done_ = false;
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return done_; });
  }

 private:
  FeederThread() {
    std::thread([this] { Loop(); }).detach();
  }
  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return static_cast<bool>(job_); });
        job = std::move(job_);
        job_ = nullptr;
      }
      job();
      std::unique_lock lock(mutex_);
      done_ = true;
      cv_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool done_ = true;
};

class PeerFeeder {
 public:
  // Takes ownership of `fd` (closed by Join()). When `accept_from` is a
  // listening socket, the feeder first accepts one connection on it (within
  // 2 s) and feeds that instead; `fd` is then ignored. One feeder at a time.
  PeerFeeder(int fd, const uint8_t *data, size_t size, std::string *capture = nullptr, int accept_from = -1)
      : fd_(fd), data_(data), size_(size), capture_(capture), listen_fd_(accept_from) {
    FeederThread::Get().Submit([this] { Run(); });
  }
  ~PeerFeeder() { Join(); }
  PeerFeeder(const PeerFeeder &) = delete;
  PeerFeeder &operator=(const PeerFeeder &) = delete;

  void Join() {
    if (joined_) return;
    FeederThread::Get().Wait();
    joined_ = true;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  void Run() {
    if (listen_fd_ >= 0) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 2000) <= 0) return;
      fd_ = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd_ < 0) return;
    }
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL, 0) | O_NONBLOCK);
    size_t off = 0;
    bool writing = true;
    if (size_ == 0) {
      shutdown(fd_, SHUT_WR);
      writing = false;
    }
    char buf[64 * 1024];
    for (;;) {
      pollfd p{fd_, static_cast<short>(POLLIN | (writing ? POLLOUT : 0)), 0};
      // The code under test always ends by closing or shutting down its side;
      // the 10 s bound only keeps a broken harness from wedging forever
      // (libFuzzer's -timeout reports the hang first).
      int ready = poll(&p, 1, 10000);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return;
      if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t n = read(fd_, buf, sizeof(buf));
        if (n == 0) return;  // the other side is done
        if (n > 0) {
          if (capture_ != nullptr && capture_->size() < kMaxCapture) capture_->append(buf, static_cast<size_t>(n));
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          return;  // reset
        }
      }
      if (writing && (p.revents & POLLOUT)) {
        ssize_t n = send(fd_, data_ + off, size_ - off, MSG_NOSIGNAL);
        if (n > 0) off += static_cast<size_t>(n);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) writing = false;
        if (off == size_) {
          shutdown(fd_, SHUT_WR);  // the code under test now reads EOF after the input
          writing = false;
        }
      }
    }
  }

  int fd_;
  const uint8_t *data_;
  size_t size_;
  std::string *capture_;
  int listen_fd_;
  bool joined_ = false;
};

class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 256;
  explicit GuardedBuffer(size_t len) : len_(len), raw_(new uint8_t[len + 2 * kGuard]) {
    ASAN_POISON_MEMORY_REGION(raw_, kGuard);
    ASAN_POISON_MEMORY_REGION(raw_ + kGuard + len_, kGuard);
  }
  ~GuardedBuffer() {
    ASAN_UNPOISON_MEMORY_REGION(raw_, len_ + 2 * kGuard);
    delete[] raw_;
  }
  GuardedBuffer(const GuardedBuffer &) = delete;
  GuardedBuffer &operator=(const GuardedBuffer &) = delete;

  uint8_t *data() const { return raw_ + kGuard; }
  size_t size() const { return len_; }
  uintptr_t addr() const { return reinterpret_cast<uintptr_t>(data()); }
  // Makes the whole buffer off-limits (memory that is not, or no longer, registered).
  void PoisonAll() { ASAN_POISON_MEMORY_REGION(data(), len_); }

 private:
  size_t len_;
  uint8_t *raw_;
};

// A connected AF_UNIX stream pair; TcpStream works on it like on a TCP socket.
inline bool SocketPair(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0; }

// This process as a verified same-host peer: it holds both ends of a
// loopback connection kept for the life of the fuzzer.
inline std::shared_ptr<PeerProcess> SelfAsPeer() {
  static std::shared_ptr<PeerProcess> self = [] {
    static TcpListener listener;
    Endpoint local;
    local.ip = "127.0.0.1";
    local.family = AF_INET;
    std::string why;
    if (!listener.Listen(local, &why)) abort();
    local.port = listener.Port();
    bool timed_out = false;
    static std::unique_ptr<TcpStream> client = TcpStream::Connect(local, Deadline::AfterMs(2000), &timed_out, &why);
    static std::unique_ptr<TcpStream> server = listener.Accept(Deadline::AfterMs(2000));
    if (!client || !server) abort();
    ProcessIdentity id = LocalIdentity();
    id.conn_fd = static_cast<uint32_t>(client->NativeHandle());
    std::shared_ptr<PeerProcess> peer = PeerProcess::Verify(id, *server, &why);
    if (!peer) {
      fprintf(stderr, "fuzz: cannot verify this process for the same-host path: %s\n", why.c_str());
      abort();
    }
    return peer;
  }();
  return self;
}

}  // namespace llmdd::fuzz
