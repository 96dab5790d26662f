// Ctrl-C during a blocking native call (docs/PYTHON.md, "Threads").
//
// CPython runs signal handlers on the main thread only, between bytecodes: a
// thread waiting in C++ with the GIL released sees Ctrl-C only when the call
// returns. RunInterruptibly, called with the GIL held, makes a blocking call
// interruptible when it is called from the main thread:
//   - the call runs on a helper thread with an llmdd_ext::CallCanceler bound
//     to it (include/llmdd/extensions.h);
//   - the main thread waits for it with the GIL released, in slices of
//     kSliceMs, and between slices takes the GIL and runs the pending signal
//     handlers (PyErr_CheckSignals);
//   - when a handler raises (KeyboardInterrupt for Ctrl-C), it cancels the
//     call (the canceler's Cancel returns once no transfer of the call moves
//     bytes: buffers the user frees after the exception are never written)
//     and raises that exception. What Cancel does not cut short (a connect,
//     a link handshake, a remote lookup) goes on in the background until its
//     own timeout, moving no data. The helper owns everything it uses (the
//     call holds a shared_ptr to the object's state, so the Python object
//     may go first), and finalize() waits for it like for any call.
// Other threads call directly (GIL released): they never receive signals.
//
// The helper threads are a small pool, kept between calls so that a call
// costs two thread wake-ups (about 10 us on a loaded 2-core host), not a
// thread's creation; one is added when all are busy (an abandoned call
// keeps its thread until it ends), and one idle for kIdleExitS exits.
// Spinning instead of the wake-ups was tried: on a host with fewer free
// cores than busy threads it starves the peer and the helper (a 128-byte
// transfer_sync took 108 us instead of 13).
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <unistd.h>

#include <nanobind/nanobind.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "llmdd/extensions.h"

namespace llmdd_py {

constexpr int kSliceMs = 50;            // how often the main thread looks at signals
constexpr int kCancelGraceMs = 200;     // after Cancel, how long to wait for the call to return
constexpr int kIdleExitS = 10;          // an idle helper thread exits after this

// The pool of helper threads. Leaked on purpose: helpers may still wait on
// it while the interpreter exits, after static destructors would have run.
class Helpers {
 public:
  static Helpers &Get() {
    static Helpers *helpers = new Helpers();
    return *helpers;
  }

  // Queues `task` for a helper; false (nothing queued) when no helper is
  // idle and no thread can be started.
  bool Run(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.push_back(std::move(task));
    if (idle_ >= tasks_.size()) {
      wake_.notify_one();
      return true;
    }
    try {
      std::thread([this] { Loop(); }).detach();
    } catch (const std::system_error &) {
      tasks_.pop_back();
      return false;
    }
    return true;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      ++idle_;
      const bool got = wake_.wait_for(lock, std::chrono::seconds(kIdleExitS), [this] { return !tasks_.empty(); });
      --idle_;
      if (!got) return;
      std::function<void()> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      task();
      task = nullptr;  // its captures go before the thread waits again
      lock.lock();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  size_t idle_ = 0;  // helpers waiting for a task
};

// The main thread's id (the only one CPython runs signal handlers on), taken
// from threading at module import.
inline unsigned long &MainThreadIdent() {
  static unsigned long ident = 0;
  return ident;
}

inline void InitMainThreadIdent() {
  MainThreadIdent() = nanobind::cast<unsigned long>(
      nanobind::module_::import_("threading").attr("main_thread")().attr("ident"));
}

inline bool OnMainThread() { return PyThread_get_thread_ident() == MainThreadIdent(); }

// The error lines (llmdd_ext::LastErrors) of the last call this thread made
// through a helper; unset after a direct call. last_errors() reads them.
inline std::unique_ptr<std::string> &HelperErrors() {
  static thread_local std::unique_ptr<std::string> errors;
  return errors;
}

// Runs call() (which returns R and must own what it uses: it may outlive this
// frame) and returns its result; GIL held on entry and exit. Raises the
// exception a signal handler raised while it waited (nanobind::python_error).
template <typename R, typename Call>
R RunInterruptibly(Call call) {
  HelperErrors().reset();
  if (!OnMainThread()) {
    nanobind::gil_scoped_release release;
    return call();
  }
  struct Shared {
    llmdd_ext::CallCanceler canceler;
    std::mutex mutex;
    std::condition_variable done_cv;
    std::atomic<bool> done{false};  // set after result and errors, under mutex
    R result{};
    std::string errors;
  };
  auto shared = std::make_shared<Shared>();
  {
    nanobind::gil_scoped_release release;
    const bool queued = Helpers::Get().Run([shared, call]() mutable {
      shared->canceler.Bind();
      R result = call();
      llmdd_ext::CallCanceler::Unbind();
      std::string errors = llmdd_ext::LastErrors();
      std::lock_guard<std::mutex> lock(shared->mutex);
      shared->result = std::move(result);
      shared->errors = std::move(errors);
      shared->done.store(true, std::memory_order_release);
      shared->done_cv.notify_all();
    });
    if (!queued) return call();  // no helper thread: not interruptible, as before
  }
  while (!shared->done.load(std::memory_order_acquire)) {
    {
      nanobind::gil_scoped_release release;
      std::unique_lock<std::mutex> lock(shared->mutex);
      if (shared->done_cv.wait_for(lock, std::chrono::milliseconds(kSliceMs), [&] { return shared->done.load(); }))
        break;
    }
    if (PyErr_CheckSignals() != 0) {
      {
        nanobind::gil_scoped_release release;
        shared->canceler.Cancel();  // returns once no transfer of the call moves bytes
        std::unique_lock<std::mutex> lock(shared->mutex);
        shared->done_cv.wait_for(lock, std::chrono::milliseconds(kCancelGraceMs),
                                 [&] { return shared->done.load(); });
      }
      throw nanobind::python_error();
    }
  }
  HelperErrors().reset(new std::string(std::move(shared->errors)));
  return std::move(shared->result);
}

// ---- The fast path for transfers ----
//
// A hand-over to a helper costs two thread wake-ups, about 10 us on a loaded
// 2-core host: five times a 1-block same-host pull (docs/PYTHON.md, the
// per-call figure). Transfers therefore run on the calling thread itself
// with a CallCanceler bound, and a watcher thread cancels them when SIGINT
// arrives:
//   - SigintWatch wraps the process's SIGINT handler (CPython's) in one that
//     counts the signal, writes a byte to a pipe (both async-signal-safe) and
//     calls the wrapped handler, so Python sees the signal as before;
//     it is (re)installed at a call when the handler is not ours any more
//     (signal.signal replaced it; looked at no more than every kRecheckMs),
//     and never over SIG_DFL or SIG_IGN (then the call is not interruptible:
//     Ctrl-C kills the process or is ignored, as the program asked).
//   - The watcher thread blocks on the pipe; on a byte it cancels the call
//     armed on the main thread when the signal came after the call began
//     (Cancel returns once no transfer of it moves bytes).
//   - The call then returns (FAILED); the caller runs the signal handlers
//     (PyErr_CheckSignals): KeyboardInterrupt propagates. A handler that does
//     not raise means the call was cut short for nothing: it runs again (a
//     transfer moves the same bytes again).
// What Cancel does not cut short (a remote cache lookup before a pull, an
// auto-connect) ends by its own timeout, then KeyboardInterrupt comes.
//
// One watch per process: llm_datadist._native makes it (Create) and hands it
// to the hixl module through a capsule (Adopt). Two watches would wrap each
// other's handler, each calling the other forever on a SIGINT.
class SigintWatch {
 public:
  static constexpr int kRecheckMs = 100;
  static constexpr const char *kCapsuleName = "llmdd_sigint_watch";

  // This module's watch; null when there is none (then transfers are not
  // interruptible).
  static SigintWatch *&Instance() {
    static SigintWatch *watch = nullptr;
    return watch;
  }
  // Leaked: the handler and the watcher use it until exit.
  static SigintWatch *Create() { return Instance() = new SigintWatch(); }
  static void Adopt(SigintWatch *watch) { Instance() = watch; }

  // True when our handler is in place (installed now if needed); false when
  // SIGINT is SIG_DFL or SIG_IGN, or the watcher cannot run.
  bool Ready() {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> lock(mutex_);
    if (!started_) return false;
    if (now < recheck_at_) return installed_;
    recheck_at_ = now + std::chrono::milliseconds(kRecheckMs);
    struct sigaction current;
    if (sigaction(SIGINT, nullptr, &current) != 0) return installed_ = false;
    const bool info = (current.sa_flags & SA_SIGINFO) != 0;
    if (info && current.sa_sigaction == handler_) return installed_ = true;
    if (!info && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN)) return installed_ = false;
    chained_info_.store(info);
    chained_.store(info ? reinterpret_cast<void *>(current.sa_sigaction) : reinterpret_cast<void *>(current.sa_handler));
    struct sigaction ours = current;
    ours.sa_flags |= SA_SIGINFO;
    ours.sa_sigaction = handler_;
    installed_ = sigaction(SIGINT, &ours, nullptr) == 0;
    return installed_;
  }

  // The canceler of the call the main thread runs now (null: none).
  void Arm(llmdd_ext::CallCanceler *canceler) {
    std::lock_guard<std::mutex> lock(mutex_);
    armed_ = canceler;
    armed_since_ = count_.load();
  }
  void Disarm() {
    std::lock_guard<std::mutex> lock(mutex_);  // waits for a Cancel under way
    armed_ = nullptr;
  }

 private:
  SigintWatch() : handler_(&OnSigint) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return;
    read_fd_ = fds[0];
    write_fd_ = fds[1];
    const int flags = fcntl(read_fd_, F_GETFL);
    fcntl(read_fd_, F_SETFL, flags & ~O_NONBLOCK);  // the watcher blocks; the handler never does
    try {
      std::thread([this] { Watch(); }).detach();
      started_ = true;
    } catch (const std::system_error &) {
    }
    // A forked child has no watcher and shares the pipe with its parent: its
    // handler must not wake the parent's watcher, and its transfers run
    // uninterruptible (as without this package's help). No lock: only the
    // forking thread runs in the child.
    pthread_atfork(nullptr, nullptr, [] {
      SigintWatch *watch = Instance();
      if (watch == nullptr) return;
      watch->write_fd_ = -1;
      watch->started_ = false;
      watch->installed_ = false;
      new (&watch->mutex_) std::mutex();  // it may have been held by a thread that is gone
    });
  }

  // Runs in the module that made the watch (handler_), so Instance() is it.
  static void OnSigint(int sig, siginfo_t *info, void *context) {
    SigintWatch &watch = *Instance();
    const int saved_errno = errno;
    watch.count_.fetch_add(1);
    const char byte = 0;
    if (watch.write_fd_ >= 0 && write(watch.write_fd_, &byte, 1) < 0) {
      // full pipe: the watcher has bytes to read already
    }
    errno = saved_errno;
    void *chained = watch.chained_.load();
    if (watch.chained_info_.load()) {
      reinterpret_cast<void (*)(int, siginfo_t *, void *)>(chained)(sig, info, context);
    } else if (chained != nullptr) {
      reinterpret_cast<void (*)(int)>(chained)(sig);
    }
  }

  void Watch() {
    char bytes[64];
    for (;;) {
      const ssize_t n = read(read_fd_, bytes, sizeof(bytes));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      std::lock_guard<std::mutex> lock(mutex_);
      if (armed_ != nullptr && count_.load() != armed_since_) armed_->Cancel();
    }
  }

  void (*const handler_)(int, siginfo_t *, void *);  // the maker module's OnSigint
  std::mutex mutex_;
  bool started_ = false;
  bool installed_ = false;
  std::chrono::steady_clock::time_point recheck_at_{};
  llmdd_ext::CallCanceler *armed_ = nullptr;  // under mutex_
  uint64_t armed_since_ = 0;                  // count_ when armed_ was set
  std::atomic<uint64_t> count_{0};            // SIGINTs our handler saw
  std::atomic<void *> chained_{nullptr};      // the handler ours calls
  std::atomic<bool> chained_info_{false};     // it takes (int, siginfo_t *, void *)
  int read_fd_ = -1;
  int write_fd_ = -1;  // -1 in a forked child
};

// Runs the transfer call() on this thread (GIL released) so that Ctrl-C on
// the main thread cancels it (SigintWatch); GIL held on entry and exit.
template <typename R, typename Call>
R RunTransfer(Call call) {
  HelperErrors().reset();
  SigintWatch *watch = SigintWatch::Instance();
  if (watch == nullptr || !OnMainThread() || !watch->Ready()) {
    nanobind::gil_scoped_release release;
    return call();
  }
  for (;;) {
    llmdd_ext::CallCanceler canceler;
    R result{};
    {
      nanobind::gil_scoped_release release;
      canceler.Bind();
      watch->Arm(&canceler);
      result = call();
      watch->Disarm();
      llmdd_ext::CallCanceler::Unbind();
    }
    if (!canceler.Canceled()) return result;
    if (PyErr_CheckSignals() != 0) throw nanobind::python_error();
  }
}

}  // namespace llmdd_py
