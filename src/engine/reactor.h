// Reactor: the engine's event-driven threads. Every connection that waits for
// a peer's next message (served lanes, control connections, connections in
// their handshake, the listener) is watched by one epoll set; when one becomes
// readable (or hangs up), one thread of a small, bounded set runs its handler,
// which takes what arrived, serves it, and says whether to keep watching.
// Timers (heartbeats, silence and handshake deadlines, idle lanes) run on the
// same threads. The engine's thread count therefore depends on how much work
// is running at once, never on how many peers are connected.
//
// Threads: one waits while the engine is idle; when a thread takes work and no
// other is left waiting, another is started, up to `max_threads`; threads that
// found nothing to do for `idle_exit` end (one always stays). A thread that
// cannot be created is logged (RESOURCE_EXHAUSTED) and the work waits for a
// running one.
//
// Contract for handlers and timers: they must be bounded by deadlines (a
// handler that blocks holds one of the threads until it returns); a handler
// runs at most once at a time per watch (EPOLLONESHOT); whatever a handler or
// timer throws is caught and logged, and the watch is then dropped.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace llmdd {

class Reactor {
 public:
  // Returns true to be called again when the descriptor is next readable,
  // false when the connection is done (the watch is then forgotten).
  using Handler = std::function<bool()>;
  using Clock = std::chrono::steady_clock;

  struct Options {
    size_t max_threads = 8;
    std::chrono::milliseconds idle_exit{10000};
  };

  explicit Reactor(Options options);
  ~Reactor();  // Stop()
  Reactor(const Reactor &) = delete;
  Reactor &operator=(const Reactor &) = delete;

  // Creates the epoll set and the first thread. False with *error on failure.
  bool Start(std::string *error);
  // Wakes every thread, lets running handlers and timers finish, joins the
  // threads and forgets every watch and timer. Idempotent. Not from a reactor thread.
  void Stop();

  // Watches `fd` (which the caller keeps open until Unwatch or the handler
  // returns false). Returns a watch id, 0 with *error when it cannot.
  uint64_t Watch(int fd, Handler on_readable, std::string *error);
  // After it returns the handler is not running and never runs again. From
  // the watch's own handler it only marks the watch (the handler's return then
  // ends it). Unknown or finished ids are ignored.
  void Unwatch(uint64_t id);

  // Runs `fn` every `period` (first after one period) on a reactor thread,
  // never twice at once; a run that overruns delays the next, never stacks.
  uint64_t Every(std::chrono::milliseconds period, std::function<void()> fn);
  // Runs `fn` once, at `due` (or as soon after as a thread is free), on a
  // reactor thread; the timer is then forgotten. 0 when the reactor is
  // stopping or not started (nothing will run).
  uint64_t At(Clock::time_point due, std::function<void()> fn);
  // After it returns `fn` is not running and never runs again (from `fn`
  // itself: it is not called again). Ids are unique in the process, across
  // reactors: an id of a reactor that was stopped names nothing in a later
  // one, so canceling it there does nothing.
  void Cancel(uint64_t timer_id);

  size_t ThreadCount() const;
  size_t WatchCount() const;

 private:
  struct Watched {
    int fd = -1;
    Handler handler;
    bool running = false;
    bool removed = false;
  };
  struct Timer {
    std::chrono::milliseconds period{0};  // 0: one-shot (At)
    std::function<void()> fn;
    Clock::time_point due;
    bool running = false;
    bool removed = false;
  };

  void Loop(uint64_t self);
  // Starts one more thread when none is left waiting and the cap allows.
  void GrowLocked();
  void RunWatch(std::unique_lock<std::mutex> &lock, uint64_t id);
  void RunTimers(std::unique_lock<std::mutex> &lock);
  void ArmTimerFdLocked();

  const Options options_;
  int epoll_fd_ = -1;
  int stop_fd_ = -1;   // eventfd, level-triggered: once written every thread wakes
  int timer_fd_ = -1;  // timerfd for the earliest timer, one-shot in the set
  bool started_ = false;

  mutable std::mutex mutex_;
  std::condition_variable finished_;  // a handler or timer run ended
  bool stopping_ = false;
  std::unordered_map<uint64_t, std::shared_ptr<Watched>> watches_;
  std::map<uint64_t, std::shared_ptr<Timer>> timers_;
  std::set<std::pair<Clock::time_point, uint64_t>> timer_queue_;  // (due, id) of timers not running
  std::map<uint64_t, std::thread> threads_;
  std::vector<std::thread> exited_;  // threads that ended, to join
  uint64_t next_thread_ = 1;
  size_t waiting_ = 0;  // threads in epoll_wait
  int64_t last_grow_failure_ms_ = 0;
};

}  // namespace llmdd
