// AsyncConnects: HIXL's asynchronous connection management (ConnectAsync,
// DisconnectAsync, GetAsyncConnectStatus) over the engine's Connect and
// Disconnect.
//
// A task (connect or disconnect one remote, with a timeout) is queued and run
// on a WorkerPool of at most `threads` threads (started while tasks wait,
// ended when idle), never a thread per call. The tasks of one remote run one
// at a time, in submission order (a remote has at most one job in the pool:
// it runs that remote's first task, then goes to the back of the pool's
// queue if the remote has more, so other remotes get their turn); tasks of
// different remotes run concurrently. At most `queue_capacity` tasks wait
// (submitted, not started) in all; one more is refused with
// RESOURCE_EXHAUSTED.
//
// Status of a remote: that of its latest task. Pending while it waits
// (CONNECT_PENDING / DISCONNECT_PENDING), CONNECTING / DISCONNECTING while
// it runs, then its outcome: CONNECTED (the connect succeeded, or the remote
// was connected already), CONNECT_FAILED (any other connect failure),
// NOT_CONNECT (after a disconnect, whatever its status). A remote with no
// task, or whose latest outcome is NOT_CONNECT, is NOT_CONNECT and is not
// listed by Statuses().
//
// Thread-safe. Lock order: mutex_, then the pool's own mutex (a job is
// submitted under mutex_); the runner is called with no lock held.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "adxl/adxl_types.h"
#include "engine/engine_config.h"
#include "engine/worker_pool.h"
#include "hixl/hixl_types.h"

namespace llmdd {

class AsyncConnects {
 public:
  // Runs one task: connect (true) or disconnect `remote` within timeout_ms;
  // returns the engine's status.
  using Runner = std::function<adxl::Status(const std::string &remote, bool connect, int32_t timeout_ms)>;

  // GlobalResourceConfig connect_pool.* (engine_config.h reads it).
  using Config = ConnectPoolConfig;

  explicit AsyncConnects(Runner runner);
  ~AsyncConnects();  // Stop()
  AsyncConnects(const AsyncConnects &) = delete;
  AsyncConnects &operator=(const AsyncConnects &) = delete;

  // Starts accepting tasks (again after Stop). SUCCESS when already started.
  adxl::Status Start(const Config &config);
  // Stops accepting tasks, drops the waiting ones and waits for the running
  // ones (each bounded by its timeout); every status is forgotten.
  void Stop();

  // Queues a task. SUCCESS; FAILED when not started; RESOURCE_EXHAUSTED when
  // queue_capacity tasks wait already or no thread can run it.
  adxl::Status Submit(const std::string &remote, bool connect, int32_t timeout_ms);

  hixl::AsyncConnectStatus Status(const std::string &remote) const;
  // Every remote whose status is not NOT_CONNECT.
  std::map<std::string, hixl::AsyncConnectStatus> Statuses() const;
  // Tasks waiting (submitted, not started), all remotes together.
  size_t Waiting() const;

 private:
  struct Task {
    bool connect = true;
    int32_t timeout_ms = 0;
  };
  struct Remote {
    std::deque<Task> waiting;
    bool scheduled = false;  // a job for this remote is in the pool (queued or running)
    bool running = false;
    bool running_connect = false;
    hixl::AsyncConnectStatus outcome = hixl::AsyncConnectStatus::NOT_CONNECT;
  };
  static hixl::AsyncConnectStatus StatusOf(const Remote &remote);
  // The pool's job for one remote: runs its first task, then requeues itself
  // if more wait.
  void RunNext(const std::string &remote);

  const Runner runner_;
  mutable std::mutex mutex_;
  bool started_ = false;
  Config config_;
  std::unique_ptr<WorkerPool> pool_;  // taken out under mutex_ by Stop
  std::map<std::string, Remote> remotes_;
  size_t waiting_ = 0;
};

}  // namespace llmdd
