// Threads that never let an exception escape, and whose creation failure is a
// status for the caller instead of std::terminate.
//
// Every thread of the library is started through StartThread: an exception
// escaping a thread's body (std::bad_alloc under a memory limit, say) is
// logged and ends that thread only; a thread that cannot be created (the
// process is at its thread, task or address-space limit) is refused with a
// log line naming RESOURCE_EXHAUSTED, and the caller degrades (refuses that
// connection, runs the work inline, fails the call with a status).
#pragma once

#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace llmdd {

// Runs `body` on a new thread stored in *out. False when no thread could be
// created (logged with `name`); *out is then left empty.
bool StartThread(const char *name, std::function<void()> body, std::thread *out);

// Runs `body`, turning an escaping exception into a log line and `false`.
bool RunGuarded(const char *name, const std::function<void()> &body);

// Joins the threads in *exited (threads of an elastic pool that ended on
// their own and put themselves there under `lock`), with `lock` released
// while joining and held again on return; repeats while more arrive.
void JoinExited(std::unique_lock<std::mutex> &lock, std::vector<std::thread> *exited);

// The cores this process may run on: its CPU affinity mask
// (sched_getaffinity), else std::thread::hardware_concurrency(); at least 1.
// Read once (a later change of affinity is not followed).
size_t UsableCores();

// RunGuarded that also tells whether the exception was std::bad_alloc.
bool RunGuardedClassified(const char *name, const std::function<void()> &body, bool *out_of_memory);

// For public calls: returns call(), or `out_of_memory` / `failed` (logged
// with `name`) when it throws, so no exception crosses the library's ABI.
template <typename Status, typename Call>
Status CallGuarded(const char *name, Status out_of_memory, Status failed, Call &&call) {
  Status status = failed;
  bool oom = false;
  const bool ok = RunGuardedClassified(name, [&] { status = call(); }, &oom);
  if (ok) return status;
  return oom ? out_of_memory : failed;
}

}  // namespace llmdd
