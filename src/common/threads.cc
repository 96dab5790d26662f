#include "common/threads.h"

#include <sched.h>

#include <exception>
#include <new>
#include <system_error>

#include "common/log.h"
#include "transport/fault_injection.h"

namespace llmdd {

size_t UsableCores() {
  static const size_t cores = [] {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      const int n = CPU_COUNT(&set);
      if (n > 0) return static_cast<size_t>(n);
    }
    const unsigned n = std::thread::hardware_concurrency();  // 0: unknown
    return n > 0 ? static_cast<size_t>(n) : size_t{1};
  }();
  return cores;
}

bool RunGuarded(const char *name, const std::function<void()> &body) {
  bool out_of_memory = false;
  return RunGuardedClassified(name, body, &out_of_memory);
}

bool RunGuardedClassified(const char *name, const std::function<void()> &body, bool *out_of_memory) {
  *out_of_memory = false;
  try {
    body();
    return true;
  } catch (const std::bad_alloc &) {
    *out_of_memory = true;
    LOG_ERROR("%s: out of memory (RESOURCE_EXHAUSTED); this task ended, the engine keeps running", name);
  } catch (const std::exception &e) {
    LOG_ERROR("%s: unexpected exception (%s); this task ended, the engine keeps running", name, e.what());
  } catch (...) {
    LOG_ERROR("%s: unexpected exception; this task ended, the engine keeps running", name);
  }
  return false;
}

bool StartThread(const char *name, std::function<void()> body, std::thread *out) {
  if (InjectThreadStartFailure()) {
    LOG_ERROR("cannot start a thread for %s: fault injection (RESOURCE_EXHAUSTED)", name);
    return false;
  }
  try {
    *out = std::thread([name, body = std::move(body)] { RunGuarded(name, body); });
    return true;
  } catch (const std::system_error &e) {
    LOG_ERROR("cannot start a thread for %s: %s (RESOURCE_EXHAUSTED)", name, e.what());
  } catch (const std::bad_alloc &) {
    LOG_ERROR("cannot start a thread for %s: out of memory (RESOURCE_EXHAUSTED)", name);
  }
  return false;
}

void JoinExited(std::unique_lock<std::mutex> &lock, std::vector<std::thread> *exited) {
  while (!exited->empty()) {
    std::vector<std::thread> joining;
    joining.swap(*exited);
    lock.unlock();
    for (auto &thread : joining) thread.join();
    lock.lock();
  }
}

}  // namespace llmdd
