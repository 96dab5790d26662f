#include "engine/reactor.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "common/threads.h"

namespace llmdd {
namespace {

// epoll data of the two internal descriptors; watch ids start at 1 and never reach these.
constexpr uint64_t kStopEvent = UINT64_MAX;
constexpr uint64_t kTimerEvent = UINT64_MAX - 1;

// The watch or timer the current thread is running (0: none), so Unwatch and
// Cancel from inside it do not wait for themselves.
thread_local const Reactor *t_reactor = nullptr;
thread_local uint64_t t_watch = 0;
thread_local uint64_t t_timer = 0;

// Watch and timer ids, process-wide: an id outlives its reactor in the
// engine's tables (a deadline timer of a request kept across Finalize) and
// must never name something of the next reactor.
std::atomic<uint64_t> g_next_id{1};

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Reactor::Clock::now().time_since_epoch()).count();
}

}  // namespace

Reactor::Reactor(Options options) : options_(options) {}

Reactor::~Reactor() { Stop(); }

bool Reactor::Start(std::string *error) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  if (epoll_fd_ < 0 || stop_fd_ < 0 || timer_fd_ < 0) {
    *error = std::string("cannot create the engine's event set: ") + strerror(errno);
    Stop();
    return false;
  }
  epoll_event stop_event{};
  stop_event.events = EPOLLIN;  // level-triggered: wakes every waiter for good
  stop_event.data.u64 = kStopEvent;
  epoll_event timer_event{};
  timer_event.events = EPOLLIN | EPOLLONESHOT;
  timer_event.data.u64 = kTimerEvent;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &stop_event) != 0 ||
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, timer_fd_, &timer_event) != 0) {
    *error = std::string("cannot set up the engine's event set: ") + strerror(errno);
    Stop();
    return false;
  }
  std::unique_lock lock(mutex_);
  started_ = true;
  GrowLocked();
  if (threads_.empty()) {
    lock.unlock();
    *error = "cannot start the engine's event thread (RESOURCE_EXHAUSTED)";
    Stop();
    return false;
  }
  return true;
}

void Reactor::Stop() {
  std::map<uint64_t, std::thread> threads;
  std::unordered_map<uint64_t, std::shared_ptr<Watched>> watches;
  std::map<uint64_t, std::shared_ptr<Timer>> timers;
  {
    std::unique_lock lock(mutex_);
    stopping_ = true;
    if (stop_fd_ >= 0) {
      uint64_t one = 1;
      ssize_t ignored = write(stop_fd_, &one, sizeof(one));
      (void)ignored;
    }
    threads.swap(threads_);
  }
  for (auto &[id, thread] : threads) thread.join();
  {
    std::unique_lock lock(mutex_);
    JoinExited(lock, &exited_);
    // Handlers may own streams; they are destroyed outside the lock.
    watches.swap(watches_);
    timers.swap(timers_);
    timer_queue_.clear();
  }
  watches.clear();
  timers.clear();
  for (int *fd : {&epoll_fd_, &stop_fd_, &timer_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

uint64_t Reactor::Watch(int fd, Handler on_readable, std::string *error) {
  auto watched = std::make_shared<Watched>();
  watched->fd = fd;
  watched->handler = std::move(on_readable);
  std::lock_guard lock(mutex_);
  if (stopping_ || !started_) {
    *error = "the engine is stopping";
    return 0;
  }
  const uint64_t id = g_next_id.fetch_add(1, std::memory_order_relaxed);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
  event.data.u64 = id;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
    *error = std::string("cannot watch the connection: ") + strerror(errno);
    return 0;
  }
  watches_[id] = std::move(watched);
  return id;
}

void Reactor::Unwatch(uint64_t id) {
  std::shared_ptr<Watched> gone;
  {
    std::unique_lock lock(mutex_);
    auto it = watches_.find(id);
    if (it == watches_.end()) return;
    std::shared_ptr<Watched> watched = it->second;
    if (!watched->removed) {
      watched->removed = true;
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, watched->fd, nullptr);
    }
    if (t_reactor == this && t_watch == id) return;  // its own handler: RunWatch ends it
    finished_.wait(lock, [&] { return !watched->running; });
    it = watches_.find(id);
    if (it != watches_.end() && it->second == watched) {
      gone = std::move(it->second);
      watches_.erase(it);
    }
  }
  // `gone` (and what its handler owns) is released here, outside the lock.
}

uint64_t Reactor::Every(std::chrono::milliseconds period, std::function<void()> fn) {
  auto timer = std::make_shared<Timer>();
  timer->period = period < std::chrono::milliseconds(1) ? std::chrono::milliseconds(1) : period;
  timer->fn = std::move(fn);
  timer->due = Clock::now() + timer->period;
  std::lock_guard lock(mutex_);
  const uint64_t id = g_next_id.fetch_add(1, std::memory_order_relaxed);
  timers_[id] = timer;
  timer_queue_.insert({timer->due, id});
  ArmTimerFdLocked();
  return id;
}

uint64_t Reactor::At(Clock::time_point due, std::function<void()> fn) {
  auto timer = std::make_shared<Timer>();
  timer->fn = std::move(fn);
  timer->due = due;
  std::lock_guard lock(mutex_);
  if (stopping_ || !started_) return 0;
  const uint64_t id = g_next_id.fetch_add(1, std::memory_order_relaxed);
  timers_[id] = timer;
  const bool earliest = timer_queue_.empty() || due < timer_queue_.begin()->first;
  timer_queue_.insert({due, id});
  if (earliest) ArmTimerFdLocked();  // a later one does not move the timerfd (no syscall)
  return id;
}

void Reactor::Cancel(uint64_t timer_id) {
  std::shared_ptr<Timer> gone;
  {
    std::unique_lock lock(mutex_);
    auto it = timers_.find(timer_id);
    if (it == timers_.end()) return;
    std::shared_ptr<Timer> timer = it->second;
    timer->removed = true;
    timer_queue_.erase({timer->due, timer_id});
    if (!(t_reactor == this && t_timer == timer_id)) finished_.wait(lock, [&] { return !timer->running; });
    it = timers_.find(timer_id);
    if (it != timers_.end() && it->second == timer) {
      gone = std::move(it->second);
      timers_.erase(it);
    }
  }
}

size_t Reactor::ThreadCount() const {
  std::lock_guard lock(mutex_);
  return threads_.size();
}

size_t Reactor::WatchCount() const {
  std::lock_guard lock(mutex_);
  return watches_.size();
}

void Reactor::GrowLocked() {
  if (stopping_ || waiting_ > 0 || threads_.size() >= options_.max_threads) return;
  const uint64_t self = next_thread_++;
  std::thread thread;
  // The new thread starts by taking mutex_, which we hold: it finds itself in threads_.
  if (!StartThread("engine event thread", [this, self] { Loop(self); }, &thread)) {
    const int64_t now = NowMs();
    if (now - last_grow_failure_ms_ >= 1000) {
      last_grow_failure_ms_ = now;
      LOG_WARN("cannot start another event thread (RESOURCE_EXHAUSTED): %zu keep serving", threads_.size());
    }
    return;
  }
  threads_[self] = std::move(thread);
  ++waiting_;  // counted as waiting from now on, so a burst starts one thread at a time
}

void Reactor::Loop(uint64_t self) {
  t_reactor = this;
  std::unique_lock lock(mutex_);
  --waiting_;  // GrowLocked counted this thread as waiting before it ran
  Clock::time_point last_work = Clock::now();
  for (;;) {
    if (stopping_) return;
    JoinExited(lock, &exited_);
    const bool alone = threads_.size() <= 1;
    const int wait_ms = alone ? -1 : static_cast<int>(options_.idle_exit.count());
    ++waiting_;
    lock.unlock();
    epoll_event event{};
    const int ready = epoll_wait(epoll_fd_, &event, 1, wait_ms);
    const int wait_errno = errno;
    lock.lock();
    --waiting_;
    if (stopping_) return;
    if (ready < 0) {
      if (wait_errno != EINTR) {
        LOG_ERROR("epoll_wait failed: %s", strerror(wait_errno));
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        lock.lock();
      }
      continue;
    }
    if (ready == 0) {
      // Idle for a whole period: the last waiting thread stays, the others end.
      if (threads_.size() > 1 && Clock::now() - last_work >= options_.idle_exit) {
        auto it = threads_.find(self);
        if (it != threads_.end()) {
          exited_.push_back(std::move(it->second));
          threads_.erase(it);
        }
        return;
      }
      continue;
    }
    last_work = Clock::now();
    if (event.data.u64 == kStopEvent) return;
    GrowLocked();
    if (event.data.u64 == kTimerEvent) {
      RunTimers(lock);
    } else {
      RunWatch(lock, event.data.u64);
    }
  }
}

void Reactor::RunWatch(std::unique_lock<std::mutex> &lock, uint64_t id) {
  auto it = watches_.find(id);
  if (it == watches_.end() || it->second->removed) return;
  std::shared_ptr<Watched> watched = it->second;
  watched->running = true;
  lock.unlock();
  bool keep = false;
  t_watch = id;
  if (!RunGuarded("serving a connection", [&] { keep = watched->handler(); })) keep = false;
  t_watch = 0;
  lock.lock();
  watched->running = false;
  if (keep && !watched->removed && !stopping_) {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    event.data.u64 = id;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, watched->fd, &event) != 0) {
      LOG_WARN("cannot watch a connection again (%s): dropping it", strerror(errno));
      keep = false;
    }
  }
  std::shared_ptr<Watched> gone;
  if (!keep || watched->removed) {
    if (!watched->removed) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, watched->fd, nullptr);
    watched->removed = true;
    it = watches_.find(id);
    if (it != watches_.end() && it->second == watched) {
      gone = std::move(it->second);
      watches_.erase(it);
    }
  }
  finished_.notify_all();
  if (gone) {
    // The handler's captures (streams, sessions) are released outside the lock.
    lock.unlock();
    gone.reset();
    watched.reset();
    lock.lock();
  }
}

void Reactor::RunTimers(std::unique_lock<std::mutex> &lock) {
  uint64_t expirations = 0;
  ssize_t ignored = read(timer_fd_, &expirations, sizeof(expirations));
  (void)ignored;
  const Clock::time_point now = Clock::now();
  std::vector<std::pair<uint64_t, std::shared_ptr<Timer>>> due;
  while (!timer_queue_.empty() && timer_queue_.begin()->first <= now) {
    const uint64_t id = timer_queue_.begin()->second;
    timer_queue_.erase(timer_queue_.begin());
    auto it = timers_.find(id);
    if (it == timers_.end() || it->second->removed) continue;
    it->second->running = true;
    due.emplace_back(id, it->second);
  }
  // Re-armed before running them: another thread takes the next due timer
  // while these run.
  ArmTimerFdLocked();
  epoll_event event{};
  event.events = EPOLLIN | EPOLLONESHOT;
  event.data.u64 = kTimerEvent;
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, timer_fd_, &event);
  for (auto &[id, timer] : due) {
    lock.unlock();
    t_timer = id;
    RunGuarded("an engine timer", timer->fn);
    t_timer = 0;
    lock.lock();
    timer->running = false;
    if (timer->period.count() == 0) {
      timer->removed = true;  // one-shot: done
      auto it = timers_.find(id);
      if (it != timers_.end() && it->second == timer) timers_.erase(it);
    } else if (!timer->removed) {
      timer->due = std::max(timer->due + timer->period, Clock::now());
      timer_queue_.insert({timer->due, id});
    }
    finished_.notify_all();
  }
  if (!due.empty()) ArmTimerFdLocked();
  // What the timers that ended own (a one-shot's captures) goes outside the lock.
  lock.unlock();
  due.clear();
  lock.lock();
}

void Reactor::ArmTimerFdLocked() {
  if (timer_fd_ < 0) return;
  itimerspec spec{};
  if (!timer_queue_.empty()) {
    const auto wait = timer_queue_.begin()->first - Clock::now();
    const int64_t ns = std::max<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count(), 1);
    spec.it_value.tv_sec = ns / 1000000000;
    spec.it_value.tv_nsec = ns % 1000000000;
  }
  timerfd_settime(timer_fd_, 0, &spec, nullptr);
}

}  // namespace llmdd
