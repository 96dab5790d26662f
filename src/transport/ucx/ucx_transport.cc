#include "transport/ucx/ucx_transport.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#include <dirent.h>
#include <strings.h>
#include <poll.h>

#include <ucs/debug/log_def.h>

#include "common/hmac.h"
#include "common/log.h"
#include "engine/memory_registry.h"
#include "engine/transfer_request.h"

namespace llmdd {
namespace {

using Clock = Deadline::Clock;

// Active message ids of the key protocol (both ends run this file).
constexpr unsigned kAmKeyRequest = 0x4c44;  // "LD"
constexpr unsigned kAmKeyReply = 0x4c45;

// Key request: requester -> owner, sent with UCP_AM_SEND_FLAG_REPLY.
struct KeyRequestMsg {
  uint64_t token;
  uint64_t addr;
  uint64_t len;
  uint32_t rights;  // kAccessRead or kAccessWrite
  uint32_t reserved;
  // The owner's capability, from its transport advertisement (which travels
  // only in a handshake, after authentication where a secret is set): anyone
  // else who reaches the owner's worker gets no key.
  char capability[kUcxCapabilityBytes];
};
// Key reply: owner -> requester, followed by rkey_len bytes of packed rkey.
struct KeyReplyHead {
  uint64_t token;
  uint32_t status;    // adxl::Status
  uint32_t lease_ms;
  uint64_t addr;      // the registered region holding the range
  uint64_t len;
  uint32_t access;
  uint32_t rkey_len;
};

// kUcxDirectCancelGraceMs, unless a test changed it.
std::atomic<int> direct_cancel_grace_ms{kUcxDirectCancelGraceMs};

bool Covers(uintptr_t addr, uint64_t len, uintptr_t at, uint64_t n) {
  return at >= addr && n <= len && at - addr <= len - n;
}

void ReleaseOwned(void *request, ucs_status_t status, void *user_data) {
  (void)status;
  delete static_cast<std::string *>(user_data);
  ucp_request_free(request);
}

// Sends `msg` as the data of active message `id`; the buffer lives until UCX is done with it.
ucs_status_t SendOwned(ucp_ep_h ep, unsigned id, std::string msg, uint32_t flags) {
  auto *owned = new std::string(std::move(msg));
  ucp_request_param_t param;
  memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = ReleaseOwned;
  param.user_data = owned;
  param.flags = flags;
  ucs_status_ptr_t sent = ucp_am_send_nbx(ep, id, nullptr, 0, owned->data(), owned->size(), &param);
  if (sent == nullptr) {
    delete owned;
    return UCS_OK;
  }
  if (UCS_PTR_IS_ERR(sent)) {
    delete owned;
    return UCS_PTR_STATUS(sent);
  }
  return UCS_OK;  // ReleaseOwned frees it
}

// Set while this thread makes an endpoint: when no transport fits, UCX logs
// an ERROR; it goes to our debug log, and our own error names the fix.
thread_local bool probing_peer_errors = false;

// UCX's own log lines (those UCX_LOG_LEVEL lets through, WARN by default)
// go to our log, on stderr, never to UCX's default stdout: a program's stdout
// is its own (the test suites' peer programs speak a protocol on it, which a
// "UCX ERROR tcp_ep ... recv failed" line from a peer going away broke).
// UCX errors about one peer are warnings of ours: the transfer concerned
// reports its own status.
ucs_log_func_rc_t RouteUcxLog(const char *file, unsigned line, const char *function, ucs_log_level_t level,
                              const ucs_log_component_config_t *comp_conf, const char *message, va_list ap) {
  (void)function;
  (void)comp_conf;
  char text[512];
  vsnprintf(text, sizeof(text), message, ap);
  const char *slash = file != nullptr ? strrchr(file, '/') : nullptr;
  const char *base = slash != nullptr ? slash + 1 : file != nullptr ? file : "?";
  if (probing_peer_errors || level > UCS_LOG_LEVEL_WARN) {
    LOG_DEBUG("ucx %s:%u: %s", base, line, text);
  } else {
    LOG_WARN("ucx %s:%u: %s", base, line, text);
  }
  return UCS_LOG_FUNC_RC_STOP;
}

}  // namespace

// One UCX worker of an engine (the first also owns the engine's UCP
// context, which the others share), with its progress thread, staging and
// the registrations it serves (the others' are mirrors of the first's),
// shared by the transport and the links' endpoints on it.
class UcxCore {
 public:
  struct Served {
    uintptr_t addr;
    uint64_t len;
    uint32_t access;
    ucp_mem_h memh;
    std::string rkey;
    Clock::time_point leased_until{};
    bool retired = false;  // being deregistered: no key is granted any more
    int direct_users = 0;  // slices of direct rounds using it as their local memory
    bool abandoned = false;  // DeregisterMemory gave up waiting: unmapped once direct_users reaches 0
    bool mirror = false;  // on a worker sharing the first one's context: its memh is that one's (never unmapped here)
  };
  // Which batches move directly from and to registered local memory
  // (ucx_transport.h): by the endpoint's lanes (the default), never, or also
  // over emulated lanes (tests and measurement only). LLMDD_UCX_DIRECT.
  enum class Direct { kByLanes, kNever, kAny };
  struct Pending {
    bool done = false;
    KeyReplyHead head{};
    std::string rkey;
  };

  // The first worker of an engine makes the UCP context (shared by `workers`
  // workers: UCP_PARAM_FIELD_MT_WORKERS_SHARED when more than one); the
  // others pass it as `first` and make only their worker on its context.
  static std::shared_ptr<UcxCore> Create(std::string *error, size_t workers = 1,
                                         std::shared_ptr<UcxCore> first = nullptr);
  ~UcxCore();

  // Maps `region` with `prot` and packs its key; null with *error when UCX cannot.
  Served *Map(const TransportRegion &region, unsigned prot, std::string *error);
  // A worker sharing the first one's context serves `of` (that worker's
  // registration) too: the same memh and key, unmapped only by that worker.
  void Mirror(const Served &of);
  // Deregistration, first step: the registration matching `region` grants
  // no key and takes no direct round from now on; *leased_until: when the
  // last lease granted for it runs out. Null when there is none.
  // `memh`, when set: the entry with that memory handle (a mirror of the first worker's entry).
  Served *Retire(const TransportRegion &region, Clock::time_point *leased_until, ucp_mem_h memh = nullptr);
  // Second step, once the leases ran out: waits (bounded) for this engine's
  // direct rounds using it as local memory, then unmaps it.
  // False when it gave up (kUcxDirectDrainMs): the region stays mapped until UCX let go of it.
  bool DrainAndUnmap(Served *target, const TransportRegion &region, Clock::time_point give_up);

  // Under mutex: the registration (not being deregistered) holding all of
  // [addr, addr + len), checking `hint` first; null when none does.
  Served *FindLocalLocked(uintptr_t addr, uint64_t len, Served *hint) const {
    if (hint != nullptr && !hint->retired && Covers(hint->addr, hint->len, addr, len)) return hint;
    // The registration starting last at or before addr (KV caches register
    // many regions, one per layer or tensor: a batch must not scan them per
    // descriptor); overlapping registrations fall back to a scan.
    auto next = by_addr.upper_bound(addr);
    if (next != by_addr.begin()) {
      Served *before = std::prev(next)->second;
      if (Covers(before->addr, before->len, addr, len)) return before;
    }
    for (const auto &entry : served) {
      if (!entry->retired && Covers(entry->addr, entry->len, addr, len)) return entry.get();
    }
    return nullptr;
  }

  // Under mutex: whether [addr, addr + len) lies in registrations (not being
  // deregistered), one or several adjacent ones.
  bool LocalCoveredLocked(uintptr_t addr, uint64_t len) const {
    Served *region = nullptr;
    while (len > 0) {
      region = FindLocalLocked(addr, 1, region);
      if (region == nullptr) return false;
      const uint64_t n = std::min<uint64_t>(len, region->addr + region->len - addr);
      addr += n;
      len -= n;
    }
    return true;
  }

  // Under mutex: progresses until the worker has nothing more to do (bounded).
  unsigned ProgressLocked() {
    unsigned total = 0;
    for (int i = 0; i < 64; ++i) {
      const unsigned n = ucp_worker_progress(worker);
      if (n == 0) break;
      total += n;
    }
    return total;
  }
  // Under mutex: waits (progressing) for `request` to end, at most until `until`.
  // Returns its status (UCS_INPROGRESS when it did not end; it is still owned by the caller).
  ucs_status_t WaitLocked(std::unique_lock<std::mutex> &lock, void *request, Clock::time_point until);

  std::mutex mutex;  // every call on the worker; the state below
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  std::string address;
  // Random, per engine: key requests must carry it (KeyRequestMsg).
  std::string capability;
  std::vector<std::unique_ptr<Served>> served;
  std::multimap<uintptr_t, Served *> by_addr;  // `served` not being deregistered, by start address
  std::map<uint64_t, Pending> pending;
  uint64_t next_token = 1;
  std::atomic<uint64_t> granted{0};
  bool context_shareable = false;  // the first worker's context may serve workers on other threads
  Direct direct = Direct::kByLanes;
  std::atomic<uint64_t> direct_rounds{0}, staged_rounds{0};  // rounds posted each way (tests)
  // Direct rounds that ended (timeout, cancel, failure) before UCX completed
  // all their requests: the caller's memory stays in use (direct_users held)
  // until UCX completed every one; UCX touches a buffer until then, never
  // after. Reaped by the progress thread and by DeregisterMemory.
  struct Lingering {
    std::vector<void *> requests;
    std::vector<Served *> users;  // one entry per direct slice
  };
  std::vector<Lingering> lingering;
  std::atomic<uint64_t> lingered{0};  // rounds that ever lingered (tests)
  // Under mutex: frees the lingering requests UCX completed; a round whose
  // requests all completed lets go of its local memory.
  void ReapLingeringLocked() {
    for (size_t i = 0; i < lingering.size();) {
      bool all_done = true;
      for (void *&r : lingering[i].requests) {
        if (r != nullptr && ucp_request_check_status(r) != UCS_INPROGRESS) {
          ucp_request_free(r);
          r = nullptr;
        }
        all_done = all_done && r == nullptr;
      }
      if (!all_done) {
        ++i;
        continue;
      }
      std::vector<Served *> users = std::move(lingering[i].users);
      lingering.erase(lingering.begin() + static_cast<std::ptrdiff_t>(i));
      for (Served *user : users) {
        if (--user->direct_users == 0 && user->abandoned) ForgetLocked(user);
      }
    }
  }
  // Under mutex: unmaps a registration no direct round uses and drops it.
  void ForgetLocked(Served *region) {
    for (auto it = served.begin(); it != served.end(); ++it) {
      if (it->get() != region) continue;
      if (!region->mirror) ucp_mem_unmap(context, region->memh);
      served.erase(it);
      return;
    }
  }
  // The worker's event fd (UCP_FEATURE_WAKEUP), or -1 when UCX gave none:
  // the progress thread then sleeps in steps instead (ProgressLoop).
  int efd = -1;
  std::atomic<uint64_t> progress_rounds{0};  // rounds of the progress loop (tests)

  // Staging chunks (ucx_transport.h): a free chunk, waiting until `deadline`
  // (or a Cancel) when kUcxStageChunks are in use; null with *why when none
  // can be had.
  std::unique_ptr<uint8_t[]> AcquireStage(Deadline deadline, const TransferRequest *request, adxl::Status *status,
                                          std::string *why);
  // Back to the pool: its round ended and no UCX operation holds it.
  void ReleaseStage(std::unique_ptr<uint8_t[]> chunk);
  // Kept, never reused, until the core goes: a UCX operation may still write
  // or read it (its round did not complete).
  void RetireStage(std::unique_ptr<uint8_t[]> chunk);

 private:
  void ProgressLoop();
  static ucs_status_t OnKeyRequest(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                   const ucp_am_recv_param_t *param);
  static ucs_status_t OnKeyReply(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                 const ucp_am_recv_param_t *param);
  std::shared_ptr<UcxCore> first_;  // a worker on another's context: that worker (it owns the context)
  std::thread progress_;
  std::atomic<bool> stop_{false};
  std::mutex stage_mutex_;  // the staging state below (never held with `mutex`)
  std::condition_variable stage_freed_;
  std::vector<std::unique_ptr<uint8_t[]>> stage_free_;
  size_t stage_in_use_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> stage_retired_;  // freed after the worker is destroyed
  // Chunks retired on all the engine's workers (kUcxStageRetiredMax is per
  // engine: past it every worker refuses, not some).
  std::shared_ptr<std::atomic<size_t>> retired_in_engine_ = std::make_shared<std::atomic<size_t>>(0);
};

std::unique_ptr<uint8_t[]> UcxCore::AcquireStage(Deadline deadline, const TransferRequest *request,
                                                 adxl::Status *status, std::string *why) {
  std::unique_lock<std::mutex> lock(stage_mutex_);
  for (;;) {
    if (retired_in_engine_->load() >= kUcxStageRetiredMax) {
      *status = adxl::FAILED;
      *why = "UCX: " + std::to_string(retired_in_engine_->load()) +
             " staging chunks are held by transfers that did not complete (timeouts, cancels); the UCX "
             "transport refuses further transfers: restart the engine (docs/UCX.md)";
      return nullptr;
    }
    if (!stage_free_.empty()) {
      std::unique_ptr<uint8_t[]> chunk = std::move(stage_free_.back());
      stage_free_.pop_back();
      ++stage_in_use_;
      return chunk;
    }
    if (stage_in_use_ < kUcxStageChunks) {
      std::unique_ptr<uint8_t[]> chunk(new (std::nothrow) uint8_t[kUcxStageBytes]);
      if (chunk == nullptr) {
        *status = adxl::RESOURCE_EXHAUSTED;
        *why = "UCX: cannot allocate a staging chunk (out of memory)";
        return nullptr;
      }
      ++stage_in_use_;
      return chunk;
    }
    if (request != nullptr && request->CancelRequested()) {
      *status = TransferRequest::kCanceledStatus;
      *why = "canceled";
      return nullptr;
    }
    if (deadline.Expired()) {
      *status = adxl::TIMEOUT;
      *why = "UCX: every staging chunk stayed in use until the deadline";
      return nullptr;
    }
    // Short slices: a Cancel is seen within a millisecond.
    stage_freed_.wait_until(lock, std::min(deadline.At(), Clock::now() + std::chrono::milliseconds(1)));
  }
}

void UcxCore::ReleaseStage(std::unique_ptr<uint8_t[]> chunk) {
  {
    std::lock_guard<std::mutex> lock(stage_mutex_);
    --stage_in_use_;
    stage_free_.push_back(std::move(chunk));
  }
  stage_freed_.notify_one();
}

void UcxCore::RetireStage(std::unique_ptr<uint8_t[]> chunk) {
  {
    std::lock_guard<std::mutex> lock(stage_mutex_);
    --stage_in_use_;
    stage_retired_.push_back(std::move(chunk));
    const size_t retired = retired_in_engine_->fetch_add(1) + 1;
    LOG_WARN("UCX: a staging chunk is retired (a transfer ended before its UCX operations did; %zu retired in "
             "the engine, at most %zu)", retired, kUcxStageRetiredMax);
  }
  stage_freed_.notify_one();
}

std::shared_ptr<UcxCore> UcxCore::Create(std::string *error, size_t workers, std::shared_ptr<UcxCore> first) {
  static std::once_flag quiet;
  std::call_once(quiet, [] { ucs_log_push_handler(&RouteUcxLog); });
  auto core = std::make_shared<UcxCore>();
  if (const char *direct = std::getenv("LLMDD_UCX_DIRECT")) {
    static std::atomic<bool> said{false};  // once per process, not per engine
    const bool say = !said.exchange(true);
    if (strcmp(direct, "never") == 0) {
      core->direct = Direct::kNever;
      if (say) LOG_INFO("ucx: LLMDD_UCX_DIRECT=never: every batch goes through staging");
    } else if (strcmp(direct, "any") == 0) {
      core->direct = Direct::kAny;
      if (say) {
        LOG_WARN("ucx: LLMDD_UCX_DIRECT=any: batches move directly over emulated RMA too (for tests and "
                 "measurement; docs/UCX.md)");
      }
    } else if (direct[0] != '\0' && strcmp(direct, "lanes") != 0 && say) {
      LOG_WARN("ucx: LLMDD_UCX_DIRECT='%s' is not lanes, never or any: ignored", direct);
    }
  }
  ucs_status_t status = UCS_OK;
  if (first != nullptr) {
    core->direct = first->direct;
    core->context = first->context;
    core->retired_in_engine_ = first->retired_in_engine_;
    core->first_ = std::move(first);  // the context's owner outlives this worker
  } else {
    ucp_config_t *config = nullptr;
    status = ucp_config_read(nullptr, nullptr, &config);
    if (status != UCS_OK) {
      *error = std::string("ucp_config_read: ") + ucs_status_string(status);
      return nullptr;
    }
    ucp_params_t params;
    memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    // WAKEUP: the progress thread sleeps on the worker's event fd while idle.
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    // Workers on other threads map, unpack and register through the context.
    params.mt_workers_shared = workers > 1 ? 1 : 0;
    status = ucp_init(&params, config, &core->context);
    ucp_config_release(config);
    if (status != UCS_OK) {
      core->context = nullptr;
      *error = std::string("ucp_init: ") + ucs_status_string(status);
      return nullptr;
    }
    // A UCX built without thread support (--enable-mt) accepts the flag but
    // does not lock the context: then the engine runs one worker.
    ucp_context_attr_t attr;
    memset(&attr, 0, sizeof(attr));
    attr.field_mask = UCP_ATTR_FIELD_THREAD_MODE;
    core->context_shareable =
        ucp_context_query(core->context, &attr) == UCS_OK && attr.thread_mode == UCS_THREAD_MODE_MULTI;
  }
  ucp_worker_params_t worker_params;
  memset(&worker_params, 0, sizeof(worker_params));
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // our mutex serializes every call
  status = ucp_worker_create(core->context, &worker_params, &core->worker);
  if (status != UCS_OK) {
    core->worker = nullptr;
    *error = std::string("ucp_worker_create: ") + ucs_status_string(status);
    return nullptr;
  }
  ucp_address_t *address = nullptr;
  size_t address_len = 0;
  status = ucp_worker_get_address(core->worker, &address, &address_len);
  if (status != UCS_OK) {
    *error = std::string("ucp_worker_get_address: ") + ucs_status_string(status);
    return nullptr;
  }
  core->address.assign(reinterpret_cast<const char *>(address), address_len);
  ucp_worker_release_address(core->worker, address);
  core->capability = RandomBytes(kUcxCapabilityBytes);
  if (core->capability.size() != kUcxCapabilityBytes) {
    *error = "cannot draw the UCX key capability (no random bytes)";
    return nullptr;
  }
  status = ucp_worker_get_efd(core->worker, &core->efd);
  if (status != UCS_OK) {
    core->efd = -1;
    LOG_INFO("ucx: no worker event fd (%s): the serving side polls with back-off", ucs_status_string(status));
  }
  const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {{kAmKeyRequest, &UcxCore::OnKeyRequest},
                                                                  {kAmKeyReply, &UcxCore::OnKeyReply}};
  for (const auto &h : handlers) {
    ucp_am_handler_param_t handler;
    memset(&handler, 0, sizeof(handler));
    handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    handler.id = h.first;
    handler.cb = h.second;
    handler.arg = core.get();
    status = ucp_worker_set_am_recv_handler(core->worker, &handler);
    if (status != UCS_OK) {
      *error = std::string("ucp_worker_set_am_recv_handler: ") + ucs_status_string(status);
      return nullptr;
    }
  }
  try {
    core->progress_ = std::thread([raw = core.get()] { raw->ProgressLoop(); });
  } catch (const std::exception &e) {
    *error = std::string("cannot start the UCX progress thread: ") + e.what();
    return nullptr;
  }
  return core;
}

UcxCore::~UcxCore() {
  stop_.store(true);
  // Wakes the progress thread from its poll of the event fd (safe from any thread).
  if (worker != nullptr && efd >= 0) ucp_worker_signal(worker);
  if (progress_.joinable()) progress_.join();
  for (Lingering &round : lingering) {
    for (void *r : round.requests) {
      if (r != nullptr) ucp_request_free(r);  // released with the worker below
    }
  }
  lingering.clear();
  // The worker first: its operations end with it, then the registrations
  // they may have used go.
  if (worker != nullptr) ucp_worker_destroy(worker);
  by_addr.clear();
  for (auto &region : served) {
    if (region->memh != nullptr && !region->mirror) ucp_mem_unmap(context, region->memh);
  }
  served.clear();
  if (context != nullptr && first_ == nullptr) ucp_cleanup(context);
  // The staging chunks (retired ones included) go with the members, after
  // the worker: no UCX operation can touch them any more.
}

// Serves the peers: UCX over TCP (and other transports without hardware RMA)
// completes a peer's GET and PUT only when this worker progresses (it sends a
// GET's reply, and a reply larger than the socket takes at once goes on only
// as the socket drains), and key requests are answered here. Spins briefly
// (yielding) after work; then sleeps on the worker's event fd, which UCX
// signals when a message arrives or a socket it waits on can move again: the
// serving side wakes as soon as there is work and costs nothing while idle.
// Without an event fd it sleeps in growing steps up to 1 ms: a reply stalled
// on a full socket then waits up to a step (measured in docs/PERFORMANCE.md,
// "UCX transport against UCX itself").
void UcxCore::ProgressLoop() {
  int idle = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    progress_rounds.fetch_add(1, std::memory_order_relaxed);
    unsigned done;
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = ProgressLocked();
      if (!lingering.empty()) ReapLingeringLocked();
    }
    if (done > 0) {
      idle = 0;
      continue;
    }
    ++idle;
    if (idle < kUcxProgressSpinRounds) {
      std::this_thread::yield();
      continue;
    }
    if (efd < 0) {
      const int step = std::min(idle - kUcxProgressSpinRounds + 1, 50);  // 20 µs steps, 1 ms at most
      std::this_thread::sleep_for(std::chrono::microseconds(20 * step));
      continue;
    }
    ucs_status_t armed;
    {
      std::lock_guard<std::mutex> lock(mutex);
      armed = ucp_worker_arm(worker);
    }
    if (armed == UCS_ERR_BUSY) continue;  // events came meanwhile: progress them
    if (armed != UCS_OK) {
      // Not expected; progress on without sleeping on the fd, at a bounded rate.
      LOG_DEBUG("ucx: ucp_worker_arm: %s", ucs_status_string(armed));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    // Bounded: the destructor's ucp_worker_signal ends it at once; the bound
    // only limits how long a lost wake-up could delay the next progress.
    pollfd fd{efd, POLLIN, 0};
    // Woken by an event: progress, and spin a little for the rest of the
    // work. A timeout (nothing happened): progress once and sleep again.
    if (poll(&fd, 1, kUcxProgressPollMs) > 0) idle = 0;
  }
}

ucs_status_t UcxCore::WaitLocked(std::unique_lock<std::mutex> &lock, void *request, Clock::time_point until) {
  (void)lock;
  for (;;) {
    const ucs_status_t status = ucp_request_check_status(request);
    if (status != UCS_INPROGRESS) return status;
    if (Clock::now() >= until) return UCS_INPROGRESS;
    if (ProgressLocked() == 0) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
  }
}

ucs_status_t UcxCore::OnKeyRequest(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                   const ucp_am_recv_param_t *param) {
  (void)header;
  (void)header_length;
  auto *core = static_cast<UcxCore *>(arg);
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || length != sizeof(KeyRequestMsg) ||
      (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0 || param->reply_ep == nullptr) {
    LOG_WARN("ucx: ignored a malformed key request (%zu bytes)", length);
    return UCS_OK;
  }
  KeyRequestMsg req;
  memcpy(&req, data, sizeof(req));
  KeyReplyHead head;
  memset(&head, 0, sizeof(head));
  head.token = req.token;
  head.status = adxl::PARAM_INVALID;
  Served *found = nullptr;
  const bool entitled = ConstantTimeEqual(std::string(req.capability, sizeof(req.capability)), core->capability);
  if (!entitled) {
    head.status = adxl::FAILED;
    static std::atomic<uint64_t> refused{0};
    const uint64_t n = refused.fetch_add(1, std::memory_order_relaxed);
    if (n % 1000 == 0) {  // the first, then one line per 1000: a flood is one party's doing
      LOG_WARN("ucx: refused a key request without this engine's capability (a UCX peer that did not complete a "
               "handshake with this engine; %" PRIu64 " so far)", n + 1);
    }
  } else if ((req.rights == kAccessRead || req.rights == kAccessWrite) && req.len > 0) {
    // The region holding the range's first byte (the one reaching furthest):
    // a range across adjacent registrations asks again from where it ends.
    for (auto &region : core->served) {
      if (region->retired || (region->access & req.rights) != req.rights) continue;
      if (!Covers(region->addr, region->len, static_cast<uintptr_t>(req.addr), 1)) continue;
      if (found == nullptr || region->addr + region->len > found->addr + found->len) found = region.get();
    }
  }
  if (found != nullptr) {
    auto &lease = found->leased_until;
    lease = std::max(lease, Clock::now() + std::chrono::milliseconds(kUcxKeyLeaseMs));
  }
  std::string reply(sizeof(head), '\0');
  if (found != nullptr) {
    head.status = adxl::SUCCESS;
    head.lease_ms = kUcxKeyLeaseMs;
    head.addr = found->addr;
    head.len = found->len;
    head.access = found->access;
    head.rkey_len = static_cast<uint32_t>(found->rkey.size());
    reply += found->rkey;
    core->granted.fetch_add(1, std::memory_order_relaxed);
  } else {
    LOG_DEBUG("ucx: no key for [0x%" PRIx64 ", +%" PRIu64 ") (%s): not registered so", req.addr, req.len,
              req.rights == kAccessWrite ? "remote writes" : "remote reads");
  }
  memcpy(&reply[0], &head, sizeof(head));
  const ucs_status_t sent = SendOwned(param->reply_ep, kAmKeyReply, std::move(reply), 0);
  if (sent != UCS_OK) LOG_WARN("ucx: cannot answer a key request: %s", ucs_status_string(sent));
  return UCS_OK;
}

ucs_status_t UcxCore::OnKeyReply(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                 const ucp_am_recv_param_t *param) {
  (void)header;
  (void)header_length;
  auto *core = static_cast<UcxCore *>(arg);
  KeyReplyHead head;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0 || length < sizeof(head)) {
    LOG_WARN("ucx: ignored a malformed key reply (%zu bytes)", length);
    return UCS_OK;
  }
  memcpy(&head, data, sizeof(head));
  if (head.rkey_len != length - sizeof(head) || head.rkey_len > kUcxMaxRkeyBytes) {
    LOG_WARN("ucx: ignored a key reply whose key length %u does not match its %zu bytes", head.rkey_len, length);
    return UCS_OK;
  }
  auto it = core->pending.find(head.token);
  if (it == core->pending.end()) return UCS_OK;  // its requester gave up (deadline)
  it->second.head = head;
  it->second.rkey.assign(static_cast<const char *>(data) + sizeof(head), head.rkey_len);
  it->second.done = true;
  return UCS_OK;
}

// ---------------------------------------------------------------------------

const TransportCaps &UcxTransport::CapsFor(bool chosen_under_auto, size_t workers) {
  // Static: links point at their caps and may outlive the transport.
  static const std::vector<TransportCaps> table = [] {
    std::vector<TransportCaps> t;
    for (int chosen = 0; chosen < 2; ++chosen) {
      for (size_t w = 1; w <= kUcxMaxWorkers; ++w) {
        TransportCaps c;
        c.name = "ucx";
        c.read = true;
        c.write = true;
        c.same_host_only = false;
        c.memory_kinds = MemoryKindBit(MemoryKind::kHost);
        c.prompt_cancel = true;
        // Forced: a part per worker at once (UcxWorkerLinks); more would queue
        // on a worker. Under auto a transfer stays whole (1): a range the peer
        // exports no UCX key for must be declined whole to TCP, which a part
        // cannot be (TransferBatch::part); concurrent transfers still spread
        // over the workers.
        c.max_parallel = chosen == 1 ? 1 : w;
        c.chosen_where_it_pays = chosen == 1;
        t.push_back(c);
      }
    }
    return t;
  }();
  workers = std::max<size_t>(1, std::min(workers, kUcxMaxWorkers));
  return table[(chosen_under_auto ? kUcxMaxWorkers : 0) + workers - 1];
}

const TransportCaps &UcxTransport::StaticCaps() { return CapsFor(false, 1); }

const TransportCaps &UcxTransport::ChosenCaps() { return CapsFor(true, 1); }

bool UcxTransport::HostHasRdmaDevice() {
  DIR *dir = opendir("/sys/class/infiniband");
  if (dir == nullptr) return false;
  bool found = false;
  while (dirent *entry = readdir(dir)) {
    if (entry->d_name[0] != '.') {
      found = true;
      break;
    }
  }
  closedir(dir);
  return found;
}

namespace {

// The lanes of ucp_ep_print_info's text that GET and PUT use, as
// fn(transport, device). UCX 1.13 lists the lanes ("lane[2]:  4:cma/memory.0
// md[3] -> md[3]/cma/sysdev[255] rma_bw#0"), then the protocols of the RMA
// lanes ("get[2]: 0..<bcopy>..(inf)", "put[2]: ..."): those are the lanes
// ucp_get_nbx / ucp_put_nbx take. A text without such lines (other UCX
// versions) names them by role instead (rma#N, rma_bw#N). Returns whether
// the text had get/put lines.
template <typename Fn>
bool ForEachRmaLane(const std::string &ep_info, Fn fn) {
  struct Lane {
    std::string tl, device;
    bool rma_role = false;
  };
  std::map<int, Lane> lanes;
  std::vector<int> rma;  // lane indexes of get[N] / put[N] lines, in order, once each
  size_t at = 0;
  while (at < ep_info.size()) {
    size_t nl = ep_info.find('\n', at);
    if (nl == std::string::npos) nl = ep_info.size();
    const std::string line = ep_info.substr(at, nl - at);
    at = nl + 1;
    for (const char *proto : {"get[", "put["}) {
      const size_t p = line.find(proto);
      if (p == std::string::npos || line.find("]:", p) == std::string::npos) continue;
      if (p > 0 && line[p - 1] != ' ' && line[p - 1] != '#' && line[p - 1] != '\t') continue;
      const int index = atoi(line.c_str() + p + 4);
      if (std::find(rma.begin(), rma.end(), index) == rma.end()) rma.push_back(index);
    }
    const size_t lane = line.find("lane[");
    const size_t colon = lane == std::string::npos ? lane : line.find("]:", lane);
    if (colon == std::string::npos) continue;
    std::vector<std::string> tokens;
    for (size_t i = colon + 2; i < line.size();) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      size_t j = i;
      while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
      if (j > i) tokens.push_back(line.substr(i, j - i));
      i = j;
    }
    if (tokens.empty()) continue;
    // The first token is "<resource index>:<transport>/<device>".
    const std::string &resource = tokens[0];
    const size_t from = resource.find(':'), to = resource.find('/');
    if (from == std::string::npos || to == std::string::npos || to <= from) continue;
    Lane &entry = lanes[atoi(line.c_str() + lane + 5)];
    entry.tl = resource.substr(from + 1, to - from - 1);
    entry.device = resource.substr(to + 1);
    for (const std::string &t : tokens) {
      entry.rma_role = entry.rma_role || t.compare(0, 4, "rma#") == 0 || t.compare(0, 7, "rma_bw#") == 0;
    }
  }
  if (!rma.empty()) {
    bool resolved = true;
    for (int index : rma) {
      auto found = lanes.find(index);
      if (found != lanes.end()) {
        fn(found->second.tl, found->second.device);
      } else {
        resolved = false;  // a lane the text names but does not list: not understood
      }
    }
    return resolved;
  }
  for (const auto &entry : lanes) {
    if (entry.second.rma_role) fn(entry.second.tl, entry.second.device);
  }
  return false;
}

}  // namespace

bool UcxLanesHaveHardwareRma(const std::string &ep_info, std::string *rma_transports) {
  // Transports that move RMA in software or within one host.
  static const char *const kNotHardware[] = {"tcp",      "self",     "cma",       "knem",     "xpmem",
                                             "posix",    "sysv",     "cuda_copy", "cuda_ipc", "rocm_copy",
                                             "rocm_ipc", "gdr_copy", "ze_copy",   "ze_ipc"};
  bool hardware = false;
  rma_transports->clear();
  ForEachRmaLane(ep_info, [&](const std::string &tl, const std::string &device) {
    if (!rma_transports->empty()) *rma_transports += ",";
    *rma_transports += tl + "/" + device;
    bool software = false;
    for (const char *name : kNotHardware) software = software || tl == name;
    // Soft-RoCE and soft-iWARP: verbs in the kernel, not faster than its TCP.
    software = software || device.compare(0, 3, "rxe") == 0 || device.compare(0, 3, "siw") == 0;
    hardware = hardware || !software;
  });
  if (rma_transports->empty()) *rma_transports = "none";
  return hardware;
}

bool UcxRmaLanesAreDirect(const std::string &ep_info) {
  // GET and PUT move our registrations' bytes by the NIC only over verbs
  // (rc, dc: the NIC reads and writes through the registration). Elsewhere
  // UCX may complete a GET by copying its reply into the buffer by address
  // when it comes, at whatever time the target answers: over tcp, over an
  // endpoint without RMA lanes (active messages), and over posix / sysv
  // lanes too, which reach only memory UCX itself allocated in shared
  // memory: for user memory mapped with ucp_mem_map the rkey does not
  // resolve to them and UCX emulates GET and PUT with active messages. Only
  // the lanes GET and PUT use count (get[N] / put[N] lines); text without
  // them (another UCX's format) is not known: false.
  // UCX_PROTO_ENABLE=y (UCX 1.13-1.15): RMA runs on the new protocols,
  // whose lanes the get/put lines do not describe.
  if (const char *proto = std::getenv("UCX_PROTO_ENABLE")) {
    if (strcasecmp(proto, "y") == 0 || strcasecmp(proto, "yes") == 0 || strcasecmp(proto, "on") == 0 ||
        strcmp(proto, "1") == 0)
      return false;
  }
  bool any = false, other = false;
  const bool exact = ForEachRmaLane(ep_info, [&](const std::string &tl, const std::string &) {
    any = true;
    other = other || (tl.compare(0, 3, "rc_") != 0 && tl.compare(0, 3, "dc_") != 0);
  });
  return exact && any && !other;
}

std::string UcxAdvertisement(const std::vector<UcxWorkerAd> &workers) {
  if (workers.size() == 1) return std::string(kUcxAdMagic, kUcxAdMagicBytes) + workers[0].capability + workers[0].address;
  std::string ad(kUcxAdMagicMulti, kUcxAdMagicBytes);
  ad.push_back(static_cast<char>(workers.size()));
  for (const UcxWorkerAd &w : workers) {
    ad += w.capability;
    ad.push_back(static_cast<char>(w.address.size() & 0xff));
    ad.push_back(static_cast<char>(w.address.size() >> 8));
    ad += w.address;
  }
  return ad;
}

bool ParseUcxAdvertisement(const std::string &metadata, std::vector<UcxWorkerAd> *workers) {
  if (metadata.size() < kUcxAdMagicBytes) return false;
  if (metadata.compare(0, kUcxAdMagicBytes, kUcxAdMagic) == 0) {
    constexpr size_t head = kUcxAdMagicBytes + kUcxCapabilityBytes;
    if (metadata.size() <= head) return false;
    workers->assign(1, UcxWorkerAd{metadata.substr(kUcxAdMagicBytes, kUcxCapabilityBytes), metadata.substr(head)});
    return true;
  }
  if (metadata.compare(0, kUcxAdMagicBytes, kUcxAdMagicMulti) != 0 || metadata.size() < kUcxAdMagicBytes + 1) {
    return false;
  }
  const size_t count = static_cast<uint8_t>(metadata[kUcxAdMagicBytes]);
  if (count == 0 || count > kUcxMaxWorkers) return false;
  std::vector<UcxWorkerAd> parsed;
  size_t at = kUcxAdMagicBytes + 1;
  for (size_t i = 0; i < count; ++i) {
    if (metadata.size() - at < kUcxCapabilityBytes + 2) return false;
    UcxWorkerAd w;
    w.capability = metadata.substr(at, kUcxCapabilityBytes);
    at += kUcxCapabilityBytes;
    const size_t len = static_cast<uint8_t>(metadata[at]) | (static_cast<size_t>(static_cast<uint8_t>(metadata[at + 1])) << 8);
    at += 2;
    if (len == 0 || metadata.size() - at < len) return false;
    w.address = metadata.substr(at, len);
    at += len;
    parsed.push_back(std::move(w));
  }
  if (at != metadata.size()) return false;  // trailing bytes: not ours
  *workers = std::move(parsed);
  return true;
}

std::shared_ptr<UcxTransport> UcxTransport::Create(Mode mode, std::string *error, size_t workers) {
  workers = std::max<size_t>(1, std::min(workers, kUcxMaxWorkers));
  std::vector<std::shared_ptr<UcxCore>> cores;
  std::vector<UcxWorkerAd> ads;
  for (size_t i = 0; i < workers; ++i) {
    if (i == 1 && !cores[0]->context_shareable) {
      LOG_WARN("ucx: this UCX does not lock a context shared by workers (built without thread support): running "
               "1 worker, not %zu", workers);
      break;
    }
    std::string why;
    auto core = UcxCore::Create(&why, workers, cores.empty() ? nullptr : cores[0]);
    if (core == nullptr) {
      if (cores.empty()) {
        *error = why;
        return nullptr;
      }
      LOG_WARN("ucx: worker %zu of %zu did not start (%s): running %zu", i + 1, workers, why.c_str(), cores.size());
      break;
    }
    ads.push_back(UcxWorkerAd{core->capability, core->address});
    if (UcxAdvertisement(ads).size() > 1024) {  // wire::kMaxTransportMetadata
      ads.pop_back();
      if (cores.empty()) {
        *error = "the UCX worker address is " + std::to_string(core->address.size()) +
                 " bytes, over the handshake's 1024 with the capability (narrow UCX_TLS)";
        return nullptr;
      }
      LOG_WARN("ucx: the addresses of %zu workers do not fit the handshake's 1024 bytes: running %zu (narrow "
               "UCX_TLS for more)", i + 1, cores.size());
      break;
    }
    cores.push_back(std::move(core));
  }
  LOG_INFO("ucx: transport ready (UCX %s, %zu worker(s), worker address %zu bytes)", ucp_get_version_string(),
           cores.size(), cores[0]->address.size());
  return std::shared_ptr<UcxTransport>(new UcxTransport(std::move(cores), mode));
}

UcxTransport::~UcxTransport() = default;

// The capability, then the worker address, per worker (docs/PROTOCOL.md, "ucx").
std::string UcxTransport::LocalMetadata() const {
  std::vector<UcxWorkerAd> ads;
  for (const auto &core : cores_) ads.push_back(UcxWorkerAd{core->capability, core->address});
  return UcxAdvertisement(ads);
}

namespace {
// A test counter of the core, summed over the engine's workers.
uint64_t SumOver(const std::vector<std::shared_ptr<UcxCore>> &cores, std::atomic<uint64_t> UcxCore::*counter) {
  uint64_t n = 0;
  for (const auto &core : cores) n += ((*core).*counter).load();
  return n;
}
}  // namespace

uint64_t UcxTransport::KeysGranted() const { return SumOver(cores_, &UcxCore::granted); }

uint64_t UcxTransport::DirectRounds() const { return SumOver(cores_, &UcxCore::direct_rounds); }

uint64_t UcxTransport::StagedRounds() const { return SumOver(cores_, &UcxCore::staged_rounds); }

uint64_t UcxTransport::KeysGrantedOnWorker(size_t i) const {
  return i < cores_.size() ? cores_[i]->granted.load() : 0;
}

uint64_t UcxTransport::RoundsOnWorker(size_t i) const {
  return i < cores_.size() ? cores_[i]->direct_rounds.load() + cores_[i]->staged_rounds.load() : 0;
}

uint64_t UcxTransport::LingeredRounds() const { return SumOver(cores_, &UcxCore::lingered); }

void UcxTransport::SetDirectCancelGraceForTests(int ms) { direct_cancel_grace_ms.store(ms); }

size_t UcxTransport::LingeringNow() const {
  size_t n = 0;
  for (const auto &core : cores_) {
    std::lock_guard<std::mutex> lock(core->mutex);
    n += core->lingering.size();
  }
  return n;
}

uint64_t UcxTransport::ProgressRounds() const { return SumOver(cores_, &UcxCore::progress_rounds); }

bool UcxTransport::SleepsOnEventFd() const {
  for (const auto &core : cores_) {
    if (core->efd < 0) return false;
  }
  return true;
}

UcxCore::Served *UcxCore::Map(const TransportRegion &region, unsigned prot, std::string *error) {
  ucp_mem_map_params_t params;
  memset(&params, 0, sizeof(params));
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT;
  params.address = reinterpret_cast<void *>(region.addr);
  params.length = region.len;
  params.prot = prot;
  std::lock_guard<std::mutex> lock(mutex);
  ucp_mem_h memh = nullptr;
  ucs_status_t status = ucp_mem_map(context, &params, &memh);
  if (status != UCS_OK) {
    *error = std::string("ucp_mem_map: ") + ucs_status_string(status);
    return nullptr;
  }
  void *packed = nullptr;
  size_t packed_len = 0;
  status = ucp_rkey_pack(context, memh, &packed, &packed_len);
  if (status != UCS_OK || packed_len > kUcxMaxRkeyBytes) {
    if (status == UCS_OK) ucp_rkey_buffer_release(packed);
    ucp_mem_unmap(context, memh);
    *error = status != UCS_OK ? std::string("ucp_rkey_pack: ") + ucs_status_string(status)
                              : "the packed rkey is " + std::to_string(packed_len) + " bytes";
    return nullptr;
  }
  auto entry = std::make_unique<Served>();
  entry->addr = region.addr;
  entry->len = region.len;
  entry->access = region.access;
  entry->memh = memh;
  entry->rkey.assign(static_cast<const char *>(packed), packed_len);
  ucp_rkey_buffer_release(packed);
  Served *mapped = entry.get();
  by_addr.emplace(entry->addr, mapped);
  served.push_back(std::move(entry));
  return mapped;
}

void UcxCore::Mirror(const Served &of) {
  auto entry = std::make_unique<Served>();
  entry->addr = of.addr;
  entry->len = of.len;
  entry->access = of.access;
  entry->memh = of.memh;
  entry->rkey = of.rkey;
  entry->mirror = true;
  std::lock_guard<std::mutex> lock(mutex);
  by_addr.emplace(entry->addr, entry.get());
  served.push_back(std::move(entry));
}

UcxCore::Served *UcxCore::Retire(const TransportRegion &region, Clock::time_point *leased_until, ucp_mem_h memh) {
  std::lock_guard<std::mutex> lock(mutex);
  for (auto &entry : served) {
    if (entry->retired || entry->addr != region.addr || entry->len != region.len || entry->access != region.access ||
        (memh != nullptr && entry->memh != memh)) {
      continue;
    }
    entry->retired = true;  // no key from now on, no direct round on it
    for (auto it = by_addr.lower_bound(entry->addr); it != by_addr.end() && it->first == entry->addr; ++it) {
      if (it->second == entry.get()) {
        by_addr.erase(it);
        break;
      }
    }
    *leased_until = entry->leased_until;
    return entry.get();
  }
  return nullptr;
}

bool UcxCore::DrainAndUnmap(Served *target, const TransportRegion &region, Clock::time_point give_up) {
  // This engine's direct rounds using the region as local memory: none
  // starts now it is retired; those in flight end by their deadlines, and
  // UCX completes the requests of those that ended early (a forced close
  // cancels them) as the worker progresses. Bounded: a UCX that never
  // completes them leaves the region mapped (and says so).
  std::unique_lock<std::mutex> lock(mutex);
  while (target->direct_users > 0) {
    ProgressLocked();
    ReapLingeringLocked();
    if (target->direct_users == 0) break;
    if (Clock::now() >= give_up) {
      target->abandoned = true;  // unmapped when UCX let go of it (ReapLingeringLocked)
      LOG_ERROR("ucx: DeregisterMem of [0x%" PRIxPTR ", +%" PRIu64 "): UCX operations of %d direct slice(s) on it "
                "did not end within %d ms; the region stays mapped until they do (UCX may still write it)",
                region.addr, region.len, target->direct_users, kUcxDirectDrainMs);
      return false;
    }
    lock.unlock();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    lock.lock();
  }
  ForgetLocked(target);
  return true;
}

adxl::Status UcxTransport::RegisterMemory(const TransportRegion &region, std::string *remote_key, std::string *error) {
  remote_key->clear();  // keys travel by key request, under a lease (ucx_transport.h)
  if (region.len == 0 || region.kind != MemoryKind::kHost) return adxl::SUCCESS;  // nothing UCX reaches
  // What the peer may do is what is exported: hardware that checks rkeys
  // (InfiniBand, RoCE) refuses the other direction (docs/UCX.md, "Access rights").
  unsigned prot = UCP_MEM_MAP_PROT_LOCAL_READ | UCP_MEM_MAP_PROT_LOCAL_WRITE;
  if (region.access & kAccessRead) prot |= UCP_MEM_MAP_PROT_REMOTE_READ;
  if (region.access & kAccessWrite) prot |= UCP_MEM_MAP_PROT_REMOTE_WRITE;
  // Mapped once, on the context the workers share; every worker serves it.
  // Under registry_mutex_, so that no deregistration of a like region
  // retires (and frees) the first worker's entry before the others mirror it.
  {
    std::lock_guard<std::mutex> registry(registry_mutex_);
    if (UcxCore::Served *mapped = cores_[0]->Map(region, prot, error)) {
      for (size_t i = 1; i < cores_.size(); ++i) cores_[i]->Mirror(*mapped);
      return adxl::SUCCESS;
    }
  }
  // The region cannot be exported (*error says why): forced, the
  // registration fails; under auto UCX is an offer, the region is only not
  // exported over it, and peers' UCX links decline it to TCP / the same-host path.
  if (mode_ != Mode::kForced) {
    LOG_WARN("ucx: cannot export [0x%" PRIxPTR ", +%" PRIu64 ") (%s): peers reach it over the other paths",
             region.addr, region.len, error->c_str());
    error->clear();
    return adxl::SUCCESS;
  }
  LOG_ERROR("ucx: cannot export [0x%" PRIxPTR ", +%" PRIu64 "): %s", region.addr, region.len, error->c_str());
  return adxl::FAILED;
}

void UcxTransport::DeregisterMemory(const TransportRegion &region) {
  // Every worker stops granting the region's key first, so that the leases
  // are waited out once, not once per worker.
  // The others retire the mirrors of the first worker's entry (by its memh:
  // like registrations of one range are distinct mappings).
  std::vector<UcxCore::Served *> targets(cores_.size(), nullptr);
  Clock::time_point until{};
  {
    std::lock_guard<std::mutex> registry(registry_mutex_);
    targets[0] = cores_[0]->Retire(region, &until);
    if (targets[0] == nullptr) return;  // not registered (or not exported) here
    for (size_t i = 1; i < cores_.size(); ++i) {
      Clock::time_point leased{};
      targets[i] = cores_[i]->Retire(region, &leased, targets[0]->memh);
      until = std::max(until, leased);
    }
  }
  // Requesters start I/O only under a lease they hold: wait the granted ones out.
  if (Clock::now() < until) std::this_thread::sleep_until(until);
  // The other workers' direct rounds first: the first worker unmaps. One
  // bound for all of them (kUcxDirectDrainMs).
  const auto give_up = Clock::now() + std::chrono::milliseconds(kUcxDirectDrainMs);
  bool let_go = true;
  for (size_t i = cores_.size(); i-- > 1;) {
    if (targets[i] != nullptr) let_go = cores_[i]->DrainAndUnmap(targets[i], region, give_up) && let_go;
  }
  if (let_go) {
    cores_[0]->DrainAndUnmap(targets[0], region, give_up);
  } else {
    // Another worker's operations may still use the memory: it stays mapped
    // (retired, no key) until the engine's UCX goes.
    LOG_ERROR("ucx: [0x%" PRIxPTR ", +%" PRIu64 ") stays mapped until the engine finalizes (see above)", region.addr,
              region.len);
  }
}

std::shared_ptr<TransportLink> UcxTransport::Connect(const TransportPeer &peer, Deadline deadline,
                                                     std::string *error) {
  // Making an endpoint does not wait for the peer; under auto the core's
  // mutex is waited for at most until `deadline`.
  if (peer.metadata.empty()) {
    *error = "peer " + peer.peer_name + " did not advertise ucx";
    return nullptr;
  }
  std::vector<UcxWorkerAd> remote;
  if (!ParseUcxAdvertisement(peer.metadata, &remote)) {
    *error = "peer " + peer.peer_name +
             " advertised ucx in a format this engine does not read (an engine from before the UCX key capability, "
             "or a malformed advertisement): no UCX link";
    LOG_WARN("ucx: %s", error->c_str());
    return nullptr;
  }
  // Local worker i reaches the peer's worker i (in turn when it has fewer).
  std::vector<std::shared_ptr<UcxLink>> links;
  for (size_t i = 0; i < cores_.size(); ++i) {
    const UcxWorkerAd &to = remote[i % remote.size()];
    links.push_back(std::make_shared<UcxLink>(cores_[i], peer.peer_name, to.address, to.capability, &Caps()));
  }
  std::shared_ptr<TransportLink> link =
      links.size() == 1 ? std::shared_ptr<TransportLink>(links[0])
                        : std::make_shared<UcxWorkerLinks>(links, &Caps());
  if (mode_ != Mode::kWhereItPays) return link;  // the endpoints are made on the first batch
  std::string lanes;
  // Every worker reaches the peer through the same devices: the first one's lanes tell.
  if (!links[0]->ReachesWithHardwareRma(deadline, &lanes, error)) {
    if (error->empty()) {
      *error = "UCX reaches it without hardware RMA (RMA lanes: " + lanes +
               "): left to TCP and the same-host path (llmdd.Transport=ucx forces UCX)";
    }
    return nullptr;
  }
  LOG_INFO("ucx: %s is reached with hardware RMA (%s): transfers the same-host path does not take go over ucx",
           peer.peer_name.c_str(), lanes.c_str());
  return link;
}

UcxWorkerLinks::UcxWorkerLinks(std::vector<std::shared_ptr<UcxLink>> links, const TransportCaps *caps)
    : links_(std::move(links)), busy_(new std::atomic<int>[links_.size()]()), caps_(caps) {}

bool UcxWorkerLinks::Usable() const {
  for (const auto &link : links_) {
    if (!link->Usable()) return false;
  }
  return true;
}

TransportResult UcxWorkerLinks::Submit(const TransferBatch &batch) {
  const size_t n = links_.size();
  const size_t first = next_.fetch_add(1, std::memory_order_relaxed) % n;
  size_t pick = first;
  int fewest = busy_[first].load();
  for (size_t k = 1; k < n && fewest > 0; ++k) {
    const size_t i = (first + k) % n;
    const int busy = busy_[i].load();
    if (busy < fewest) {
      fewest = busy;
      pick = i;
    }
  }
  struct Busy {
    std::atomic<int> &count;
    explicit Busy(std::atomic<int> &c) : count(c) { count.fetch_add(1); }
    ~Busy() { count.fetch_sub(1); }
  } busy(busy_[pick]);
  return links_[pick]->Submit(batch);
}

void UcxWorkerLinks::Shutdown() {
  for (const auto &link : links_) link->Shutdown();
}

// ---------------------------------------------------------------------------

UcxLink::UcxLink(std::shared_ptr<UcxCore> core, std::string peer_name, std::string address, std::string capability,
                 const TransportCaps *caps)
    : core_(std::move(core)),
      caps_(caps),
      peer_name_(std::move(peer_name)),
      address_(std::move(address)),
      capability_(std::move(capability)) {}

bool UcxLink::ReachesWithHardwareRma(Deadline deadline, std::string *lanes, std::string *error) {
  // The core's mutex may be held for a while (a large ucp_mem_map pins
  // memory): wait for it no longer than the deadline.
  std::unique_lock<std::mutex> lock(core_->mutex, std::defer_lock);
  while (!lock.try_lock()) {
    if (deadline.Expired()) {
      *error = "the UCX worker stayed busy until the deadline";
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (EndpointLocked(error) == nullptr) return false;
  return UcxLanesHaveHardwareRma(ep_info_, lanes);
}

bool UcxLink::MayGoDirect() const { return direct_known_.load(std::memory_order_relaxed) != 2; }

UcxLink::~UcxLink() {
  std::lock_guard<std::mutex> lock(core_->mutex);
  CloseEndpointLocked(true);
}

void UcxLink::Shutdown() {
  shut_down_.store(true);
  std::lock_guard<std::mutex> lock(core_->mutex);
  CloseEndpointLocked(true);
}

void UcxLink::OnEndpointError(void *arg, ucp_ep_h ep, ucs_status_t status) {
  auto *link = static_cast<UcxLink *>(arg);  // under the core's mutex (called from progress)
  if (ep != link->ep_) return;
  link->ep_failed_ = true;
  link->ep_error_ = std::string("UCX endpoint to ") + link->peer_name_ + " failed: " + ucs_status_string(status);
  LOG_WARN("%s", link->ep_error_.c_str());
}

ucp_ep_h UcxLink::EndpointLocked(std::string *error) {
  if (ep_ != nullptr && ep_failed_) CloseEndpointLocked(true);
  if (ep_ != nullptr) return ep_;
  ucp_ep_params_t params;
  memset(&params, 0, sizeof(params));
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                      UCP_EP_PARAM_FIELD_ERR_HANDLER;
  params.address = reinterpret_cast<const ucp_address_t *>(address_.data());
  params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  params.err_handler.cb = &UcxLink::OnEndpointError;
  params.err_handler.arg = this;
  // UCX logs why no transport fits on stdout; the reason goes to our log instead.
  probing_peer_errors = true;
  const ucs_status_t status = ucp_ep_create(core_->worker, &params, &ep_);
  probing_peer_errors = false;
  if (status == UCS_ERR_UNREACHABLE) {
    // UCX 1.13's shared-memory transports posix and sysv cannot report a dead
    // peer, so with UCP_ERR_HANDLING_MODE_PEER they are never selected. We do
    // not fall back to no error handling: then a timed-out or canceled batch
    // could not be force-closed, and a late reply could land in the caller's
    // buffer after we returned. cma (data) with tcp (control) works.
    ep_ = nullptr;
    *error = "cannot reach " + peer_name_ +
             " over UCX: no transport in UCX_TLS reports a dead peer (UCP_ERR_HANDLING_MODE_PEER); "
             "on one host use UCX_TLS=cma,tcp or sm,tcp (docs/UCX.md)";
    if (caps_->chosen_where_it_pays) {
      LOG_DEBUG("ucx: %s", error->c_str());  // under auto: the other paths reach it
    } else {
      LOG_ERROR("ucx: %s", error->c_str());
    }
    return nullptr;
  }
  if (status != UCS_OK) {
    ep_ = nullptr;
    *error = "cannot reach " + peer_name_ + " over UCX: ucp_ep_create: " + ucs_status_string(status);
    return nullptr;
  }
  ep_failed_ = false;
  ep_error_.clear();
  ++ep_generation_;
  // Which transports UCX chose for it: whether batches may move directly
  // (and, under auto, whether the peer is worth a link: ReachesWithHardwareRma).
  ep_info_.clear();
  char *text = nullptr;
  size_t len = 0;
  if (FILE *f = open_memstream(&text, &len)) {
    ucp_ep_print_info(ep_, f);
    fclose(f);
    ep_info_.assign(text, len);
    free(text);
  }
  ep_direct_ = core_->direct == UcxCore::Direct::kAny ||
               (core_->direct == UcxCore::Direct::kByLanes && UcxRmaLanesAreDirect(ep_info_));
  direct_known_.store(ep_direct_ ? 1 : 2, std::memory_order_relaxed);
  if (ep_generation_ == 1) {  // once per link, not for each endpoint a timeout replaced
    std::string lanes;
    UcxLanesHaveHardwareRma(ep_info_, &lanes);
    const char *how = ep_direct_ ? "from and to registered local memory move directly (no staging)"
                                 : "go through staging";
    if (caps_->chosen_where_it_pays) {  // under auto Connect says at info level whether the peer gets a link
      LOG_DEBUG("ucx: endpoint to %s, RMA lanes %s: batches %s", peer_name_.c_str(), lanes.c_str(), how);
    } else {
      LOG_INFO("ucx: endpoint to %s, RMA lanes %s: batches %s", peer_name_.c_str(), lanes.c_str(), how);
    }
  }
  return ep_;
}

void UcxLink::CloseEndpointLocked(bool force) {
  if (ep_ == nullptr) return;
  ucp_ep_h ep = ep_;
  ep_ = nullptr;
  ep_direct_ = false;
  ucp_request_param_t param;
  memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void *closing = ucp_ep_close_nbx(ep, &param);
  if (closing != nullptr && !UCS_PTR_IS_ERR(closing)) {
    // A forced close ends locally: every operation on the endpoint is canceled.
    const auto until = Clock::now() + std::chrono::milliseconds(500);
    while (ucp_request_check_status(closing) == UCS_INPROGRESS && Clock::now() < until) core_->ProgressLocked();
    if (ucp_request_check_status(closing) == UCS_INPROGRESS)
      LOG_WARN("ucx: closing the endpoint to %s did not end within 500 ms", peer_name_.c_str());
    ucp_request_free(closing);
  }
  for (RemoteKey &key : keys_) ucp_rkey_destroy(key.rkey);
  keys_.clear();
  for (ucp_rkey_h key : retired_) ucp_rkey_destroy(key);
  retired_.clear();
}

UcxLink::RemoteKey *UcxLink::FindKeyLocked(uintptr_t remote, uint64_t len, uint32_t rights) {
  const auto usable_until = Clock::now() + std::chrono::milliseconds(kUcxKeyLeaseMarginMs);
  RemoteKey *best = nullptr;
  for (RemoteKey &key : keys_) {
    if (key.ep_generation == ep_generation_ && (key.access & rights) == rights && key.expiry > usable_until &&
        Covers(key.addr, key.len, remote, len) && (best == nullptr || key.addr + key.len > best->addr + best->len))
      best = &key;
  }
  return best;
}

bool UcxLink::KeyStandsLocked(ucp_rkey_h rkey, uintptr_t remote, uint64_t len, uint32_t rights) const {
  // The key KeyFor chose (not whichever covering key reaches furthest: with
  // overlapping registrations another may cover a later slice too).
  const auto usable_until = Clock::now() + std::chrono::milliseconds(kUcxKeyLeaseMarginMs);
  for (const RemoteKey &key : keys_) {
    if (key.rkey == rkey) {
      return key.ep_generation == ep_generation_ && (key.access & rights) == rights && key.expiry > usable_until &&
             Covers(key.addr, key.len, remote, len);
    }
  }
  return false;
}

adxl::Status UcxLink::KeyFor(uintptr_t remote, uint64_t len, uint32_t rights, Deadline deadline,
                             const TransferRequest *request, ucp_rkey_h *rkey, uint64_t *covered, std::string *error) {
  std::unique_lock<std::mutex> lock(core_->mutex);
  auto take = [&](const RemoteKey &key) {
    *rkey = key.rkey;
    *covered = std::min<uint64_t>(len, key.addr + key.len - remote);
    return adxl::SUCCESS;
  };
  if (RemoteKey *key = FindKeyLocked(remote, 1, rights)) return take(*key);
  ucp_ep_h ep = EndpointLocked(error);
  if (ep == nullptr) return adxl::FAILED;
  const uint64_t generation = ep_generation_;
  const uint64_t token = core_->next_token++;
  core_->pending[token];
  KeyRequestMsg req;
  memset(&req, 0, sizeof(req));
  req.token = token;
  req.addr = remote;
  req.len = len;
  req.rights = rights;
  memcpy(req.capability, capability_.data(), sizeof(req.capability));
  const auto asked = Clock::now();
  ucs_status_t status =
      SendOwned(ep, kAmKeyRequest, std::string(reinterpret_cast<const char *>(&req), sizeof(req)), UCP_AM_SEND_FLAG_REPLY);
  if (status != UCS_OK) {
    core_->pending.erase(token);
    *error = std::string("cannot ask ") + peer_name_ + " for a UCX key: " + ucs_status_string(status);
    return adxl::FAILED;
  }
  for (;;) {
    auto it = core_->pending.find(token);
    if (it->second.done) break;
    if (ep_ == nullptr || ep_generation_ != generation || ep_failed_) {
      core_->pending.erase(it);
      *error = ep_error_.empty() ? "the UCX endpoint to " + peer_name_ + " was closed" : ep_error_;
      return adxl::FAILED;
    }
    if (deadline.Expired()) {
      core_->pending.erase(it);
      *error = "no UCX key from " + peer_name_ + " before the deadline";
      return adxl::TIMEOUT;
    }
    if ((request != nullptr && request->CancelRequested()) || shut_down_.load()) {
      core_->pending.erase(it);
      *error = shut_down_.load() ? "the UCX link to " + peer_name_ + " is shut down" : "canceled";
      return shut_down_.load() ? adxl::FAILED : TransferRequest::kCanceledStatus;
    }
    if (core_->ProgressLocked() == 0) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
  }
  auto it = core_->pending.find(token);
  const KeyReplyHead head = it->second.head;
  const std::string packed = std::move(it->second.rkey);
  core_->pending.erase(it);
  if (head.status != adxl::SUCCESS && head.status != adxl::PARAM_INVALID) {
    *error = peer_name_ + " refused to give this engine UCX keys (it does not know this engine's handshake: a "
             "restarted peer, or an older version)";
    return adxl::FAILED;
  }
  if (head.status != adxl::SUCCESS) {
    *error = "range [0x" + [&] {
      char buf[32];
      snprintf(buf, sizeof(buf), "%" PRIxPTR, remote);
      return std::string(buf);
    }() + ", +" + std::to_string(len) + ") is not registered on " + peer_name_ +
             (rights == kAccessWrite ? " for remote writes" : " for remote reads");
    return static_cast<adxl::Status>(head.status) == adxl::PARAM_INVALID ? adxl::PARAM_INVALID : adxl::FAILED;
  }
  if (!Covers(static_cast<uintptr_t>(head.addr), head.len, remote, 1) || (head.access & rights) != rights ||
      head.lease_ms == 0 || head.lease_ms > 60000) {
    *error = "the UCX key from " + peer_name_ + " does not cover the range asked for";
    LOG_WARN("ucx: %s", error->c_str());
    return adxl::FAILED;
  }
  if (ep_ == nullptr || ep_generation_ != generation) {
    *error = "the UCX endpoint to " + peer_name_ + " was closed";
    return adxl::FAILED;
  }
  // The same region granted again (a renewal): keep its rkey, extend the lease.
  const auto expiry = asked + std::chrono::milliseconds(head.lease_ms);  // counted from before we asked
  for (RemoteKey &key : keys_) {
    if (key.ep_generation == generation && key.addr == head.addr && key.len == head.len && key.access == head.access) {
      key.expiry = std::max(key.expiry, expiry);
      return take(key);
    }
  }
  ucp_rkey_h unpacked = nullptr;
  status = ucp_ep_rkey_unpack(ep_, packed.data(), &unpacked);
  if (status != UCS_OK) {
    *error = std::string("cannot unpack the UCX key from ") + peer_name_ + ": " + ucs_status_string(status);
    LOG_WARN("ucx: %s", error->c_str());
    return adxl::FAILED;
  }
  if (keys_.size() >= kUcxMaxCachedKeys) {
    // Bounded: the oldest lease goes (its rkey is destroyed with the endpoint's
    // keys only when no batch could use it: here, by closing gracefully later).
    auto oldest = std::min_element(keys_.begin(), keys_.end(),
                                   [](const RemoteKey &a, const RemoteKey &b) { return a.expiry < b.expiry; });
    oldest->expiry = Clock::time_point{};  // never used again; replaced below
    ucp_rkey_h stale = oldest->rkey;
    keys_.erase(oldest);
    retired_.push_back(stale);
  }
  RemoteKey key;
  key.addr = static_cast<uintptr_t>(head.addr);
  key.len = head.len;
  key.access = head.access;
  key.rkey = unpacked;
  key.expiry = expiry;
  key.ep_generation = generation;
  keys_.push_back(key);
  return take(keys_.back());
}

TransportResult UcxLink::Submit(const TransferBatch &batch) {
  TransportResult result;
  if (shut_down_.load()) {
    result.status = adxl::FAILED;
    result.error = "the UCX link to " + peer_name_ + " is shut down";
    return result;
  }
  if (batch.deadline.Expired()) {
    result.status = adxl::TIMEOUT;
    result.error = "the deadline passed before the UCX link started";
    return result;
  }
  if (batch.request != nullptr && !batch.request->BeginIo(nullptr)) {
    result.status = TransferRequest::kCanceledStatus;
    result.error = "canceled";
    return result;
  }
  struct EndIo {
    TransferRequest *request;
    ~EndIo() {
      if (request != nullptr) request->EndIo(nullptr);
    }
  } end_io{batch.request};
  // Directly, the whole batch at once, where the endpoint and the local
  // memory allow it (ucx_transport.h); otherwise in staged rounds.
  bool moved = false;  // a UCX operation was posted: a refusal after it is not declined
  bool not_direct = false;
  if (MayGoDirect()) {
    result = SubmitRound(batch.op, batch.segs, batch.count, batch.total_bytes, batch.deadline, batch.request, true,
                         &not_direct, &moved);
    if (!not_direct) return moved ? result : DeclineWhereNotOurs(batch, std::move(result));
  }
  // Rounds of at most one staging chunk, segments cut where needed.
  std::vector<Segment> round;
  uint64_t round_bytes = 0;
  for (size_t i = 0; i < batch.count; ++i) {
    Segment rest = batch.segs[i];
    while (rest.len > 0) {
      const uint64_t take = std::min<uint64_t>(rest.len, kUcxStageBytes - round_bytes);
      round.push_back({rest.local, rest.remote, take});
      round_bytes += take;
      rest.local += take;
      rest.remote += take;
      rest.len -= take;
      if (round_bytes == kUcxStageBytes) {
        result = SubmitRound(batch.op, round.data(), round.size(), round_bytes, batch.deadline, batch.request, false,
                             &not_direct, &moved);
        if (result.status != adxl::SUCCESS) return moved ? result : DeclineWhereNotOurs(batch, std::move(result));
        round.clear();
        round_bytes = 0;
      }
    }
  }
  if (!round.empty()) {
    result = SubmitRound(batch.op, round.data(), round.size(), round_bytes, batch.deadline, batch.request, false,
                         &not_direct, &moved);
  }
  return moved ? result : DeclineWhereNotOurs(batch, std::move(result));
}

TransportResult UcxLink::DeclineWhereNotOurs(const TransferBatch &batch, TransportResult result) const {
  // Under auto UCX is one path among others: a range the peer exports no UCX
  // key for (not registered so, or its ucp_mem_map failed) goes to the next
  // path, whose serving side checks it and answers for it (PARAM_INVALID with
  // the peer's log line). Only while nothing moved (Submit): a declined batch
  // moved no byte.
  if (caps_->chosen_where_it_pays && result.status == adxl::PARAM_INVALID && !batch.part) {
    LOG_DEBUG("ucx: declined a batch to %s (%s): offered to the next path", peer_name_.c_str(), result.error.c_str());
    result.status = adxl::SUCCESS;
    result.declined = true;
  }
  return result;
}

namespace {

// Copies bytes [from, from + len) of a staging chunk, laid out as `segs` back
// to back, to (to_caller) or from the caller's memory of those segments.
// `hint` (optional) is the index of the segment holding `from` or an earlier
// one, and `hint_at` its offset in the chunk; both advance (the copies of a
// round go front to back).
void CopyStaged(uint8_t *chunk, const Segment *segs, size_t count, uint64_t from, uint64_t len, bool to_caller,
                size_t *hint, uint64_t *hint_at) {
  size_t i = hint != nullptr ? *hint : 0;
  uint64_t at = hint_at != nullptr ? *hint_at : 0;
  while (i < count && at + segs[i].len <= from) at += segs[i++].len;
  if (hint != nullptr) {
    *hint = i;
    *hint_at = at;
  }
  for (; len > 0 && i < count; at += segs[i++].len) {
    const uint64_t off = from - at;  // within segment i
    const uint64_t n = std::min<uint64_t>(len, segs[i].len - off);
    auto *caller = reinterpret_cast<uint8_t *>(segs[i].local) + off;
    if (to_caller) {
      std::memcpy(caller, chunk + from, n);
    } else {
      std::memcpy(chunk + from, caller, n);
    }
    from += n;
    len -= n;
  }
}

}  // namespace

TransportResult UcxLink::SubmitRound(adxl::TransferOp op, const Segment *segs, size_t count, uint64_t bytes,
                                     Deadline deadline, TransferRequest *request, bool direct, bool *not_direct,
                                     bool *posted_any) {
  TransportResult result;
  *not_direct = false;
  std::unique_ptr<uint8_t[]> stage;
  if (!direct) {
    stage = core_->AcquireStage(deadline, request, &result.status, &result.error);
    if (stage == nullptr) return result;
  }
  result.status = adxl::SUCCESS;
  // A staging chunk goes back to the pool, or is retired when a UCX
  // operation on it may not have ended (posted, then not completed).
  bool posted = false;
  struct StageGuard {
    UcxCore *core;
    std::unique_ptr<uint8_t[]> *stage;
    bool *posted;
    ~StageGuard() {
      if (*stage == nullptr) return;
      if (*posted) {
        core->RetireStage(std::move(*stage));
      } else {
        core->ReleaseStage(std::move(*stage));
      }
    }
  } guard{core_.get(), &stage, &posted};
  if (direct) {
    // Cheap refusals first, before asking for keys: an endpoint known not
    // to be direct, local memory outside this engine's registrations.
    std::lock_guard<std::mutex> lock(core_->mutex);
    bool fits = ep_ == nullptr || ep_direct_;
    for (size_t k = 0; k < count && fits; ++k) fits = core_->LocalCoveredLocked(segs[k].local, segs[k].len);
    if (!fits) {
      *not_direct = true;
      return result;
    }
  }
  const uint32_t rights = op == adxl::READ ? kAccessRead : kAccessWrite;
  // Each segment as pieces within one remote registration each (a segment
  // may run across adjacent ones), with the key of that registration; a
  // staged READ's pieces cut in slices of at most kUcxSliceBytes. Each slice
  // is one UCX operation; staged offsets run through the chunk in segment
  // order.
  struct Slice {
    uint64_t staged;  // offset in the chunk (staged) or in the batch (direct)
    uintptr_t local;  // the caller's address (direct)
    uintptr_t remote;
    uint64_t len;
    ucp_rkey_h rkey;
    UcxCore::Served *local_region;  // direct: the registration holding `local`
  };
  std::vector<Slice> slices;
  slices.reserve(count);
  // Each READ slice's request, and each direct WRITE slice's, kept until it
  // completed (null: completed when posted).
  std::vector<void *> requests;
  auto free_requests = [&] {
    for (void *r : requests) {
      if (r != nullptr) ucp_request_free(r);  // one still in progress is released when it ends
    }
    requests.clear();
  };
  // Staged WRITE: the caller's bytes into the chunk first. Copying them in
  // slices while earlier ones are sent was measured slower (each put of a
  // slice costs more than the copy it hides: docs/PERFORMANCE.md).
  if (op == adxl::WRITE && !direct) CopyStaged(stage.get(), segs, count, 0, bytes, false, nullptr, nullptr);
  for (int attempt = 0;; ++attempt) {
    // Keys first (asking the peer where needed), then post under the mutex,
    // checking the keys still stand.
    slices.clear();
    uint64_t at = 0;
    for (size_t k = 0; k < count; ++k) {
      const Segment &s = segs[k];
      for (uint64_t off = 0; off < s.len;) {
        ucp_rkey_h rkey = nullptr;
        uint64_t covered = 0;
        result.status = KeyFor(s.remote + off, s.len - off, rights, deadline, request, &rkey, &covered, &result.error);
        if (result.status != adxl::SUCCESS) return result;
        for (uint64_t done = 0; done < covered;) {
          const uint64_t n =
              op == adxl::READ && !direct ? std::min<uint64_t>(covered - done, kUcxSliceBytes) : covered - done;
          slices.push_back({at + off + done, s.local + off + done, s.remote + off + done, n, rkey, nullptr});
          done += n;
        }
        off += covered;
      }
      at += s.len;
    }
    std::unique_lock<std::mutex> lock(core_->mutex);
    bool stale = ep_ == nullptr || ep_failed_;
    for (size_t i = 0; i < slices.size() && !stale; ++i) {
      stale = !KeyStandsLocked(slices[i].rkey, slices[i].remote, slices[i].len, rights);
    }
    if (stale) {
      if (attempt < 3) continue;
      result.status = adxl::FAILED;
      result.error = ep_error_.empty() ? "UCX keys to " + peer_name_ + " kept changing" : ep_error_;
      return result;
    }
    if (direct) {
      // The endpoint moves data itself, and each local range lies in
      // registrations of this engine (a slice is cut where it runs from one
      // into the next: each operation carries one memory handle); else
      // nothing was posted and the caller stages.
      bool fits = ep_direct_;
      std::vector<Slice> cut;
      cut.reserve(slices.size());
      UcxCore::Served *region = nullptr;
      for (size_t i = 0; i < slices.size() && fits; ++i) {
        Slice rest = slices[i];
        while (fits) {
          region = core_->FindLocalLocked(rest.local, 1, region);
          fits = region != nullptr;
          if (!fits) break;
          Slice piece = rest;
          piece.len = std::min<uint64_t>(rest.len, region->addr + region->len - rest.local);
          piece.local_region = region;
          cut.push_back(piece);
          if (piece.len == rest.len) break;
          rest.staged += piece.len;
          rest.local += piece.len;
          rest.remote += piece.len;
          rest.len -= piece.len;
        }
      }
      if (!fits) {
        *not_direct = true;
        return result;
      }
      slices.swap(cut);
      // DeregisterMemory waits for these before it unmaps.
      for (const Slice &s : slices) ++s.local_region->direct_users;
    }
    ++(direct ? core_->direct_rounds : core_->staged_rounds);
    requests.reserve(slices.size());  // no allocation between a post and its bookkeeping
    ++in_flight_;
    const uint64_t generation = ep_generation_;
    ucp_request_param_t param;
    memset(&param, 0, sizeof(param));
    ucs_status_t failed = UCS_OK;
    posted = true;  // from here a UCX operation may hold the chunk
    *posted_any = true;
    // A staged READ's copies to the caller overlap the transfer: each run of
    // completed slices (kUcxSliceBytes or more) is copied out, with the mutex
    // let go, while the later ones arrive.
    size_t hint = 0;
    uint64_t hint_at = 0;
    for (size_t i = 0; i < slices.size() && failed == UCS_OK; ++i) {
      if (i > 0 && i % kUcxPostGroup == 0) {
        // Let the serving side and other batches at the worker between
        // groups; another batch's timeout may have closed the endpoint
        // meanwhile (then this round ends as canceled: closed_by_other).
        lock.unlock();
        lock.lock();
        if (ep_ == nullptr || ep_generation_ != generation) {
          failed = UCS_ERR_CANCELED;
          break;
        }
      }
      const Slice &s = slices[i];
      void *local = direct ? reinterpret_cast<void *>(s.local) : stage.get() + s.staged;
      if (direct) {
        param.op_attr_mask = UCP_OP_ATTR_FIELD_MEMH;
        param.memh = s.local_region->memh;
      }
      if (op == adxl::WRITE) {
        void *put = ucp_put_nbx(ep_, local, s.len, s.remote, s.rkey, &param);
        if (UCS_PTR_IS_ERR(put)) {
          failed = UCS_PTR_STATUS(put);
        } else if (direct) {
          requests.push_back(put);  // it may read the caller's memory until it completed
        } else if (put != nullptr) {
          ucp_request_free(put);  // the flush below says when it is done
        }
      } else {
        void *get = ucp_get_nbx(ep_, local, s.len, s.remote, s.rkey, &param);
        if (UCS_PTR_IS_ERR(get)) {
          failed = UCS_PTR_STATUS(get);
        } else {
          requests.push_back(get);
        }
      }
    }
    void *flush = nullptr;
    if (failed == UCS_OK && op == adxl::WRITE) {
      ucp_request_param_t flush_param;
      memset(&flush_param, 0, sizeof(flush_param));
      flush = ucp_ep_flush_nbx(ep_, &flush_param);
      if (UCS_PTR_IS_ERR(flush)) {
        failed = UCS_PTR_STATUS(flush);
        flush = nullptr;
      }
    }
    ucs_status_t status = failed;
    bool canceled = false;
    size_t next = 0;  // READ: slices ended (and, staged, copied out) so far
    // One wait: progress until the flush (WRITE) or every GET (READ) ended,
    // copying staged READ slices out as they complete.
    auto finished = [&]() -> bool {
      if (op == adxl::WRITE) {
        status = ucp_request_check_status(flush);
        return status != UCS_INPROGRESS;
      }
      for (;;) {
        size_t end = next;
        for (; end < requests.size(); ++end) {
          if (requests[end] == nullptr) continue;
          const ucs_status_t s = ucp_request_check_status(requests[end]);
          if (s == UCS_INPROGRESS) break;
          ucp_request_free(requests[end]);
          requests[end] = nullptr;
          if (s != UCS_OK) {
            status = s;
            return true;
          }
        }
        if (direct) {
          next = end;
          status = next == requests.size() ? UCS_OK : UCS_INPROGRESS;
          return status == UCS_OK;
        }
        const uint64_t from = slices[next].staged;
        const uint64_t upto = end == next ? from : slices[end - 1].staged + slices[end - 1].len;
        if (end < requests.size() && upto - from < kUcxSliceBytes) {
          status = UCS_INPROGRESS;
          return false;  // wait for a longer run, or the rest
        }
        lock.unlock();
        CopyStaged(stage.get(), segs, count, from, upto - from, true, &hint, &hint_at);
        lock.lock();
        next = end;
        if (next == requests.size()) {
          status = UCS_OK;
          return true;
        }
      }
    };
    if (failed == UCS_OK && (flush != nullptr || op == adxl::READ)) {
      while (!finished()) {
        if (deadline.Expired()) break;
        if (request != nullptr && request->CancelRequested()) {
          canceled = true;
          break;
        }
        if (core_->ProgressLocked() == 0) {
          lock.unlock();
          std::this_thread::yield();
          lock.lock();
        }
      }
    }
    // Another batch's timeout or cancel closed the endpoint under us: our
    // operations were canceled with it; with time left, the round runs again
    // on a new endpoint (staged: through a new chunk, as a late reply may
    // still land in this one).
    const bool closed_by_other = status != UCS_OK && status != UCS_INPROGRESS && !canceled &&
                                 (ep_ == nullptr || ep_generation_ != generation) && !ep_failed_;
    if (status != UCS_OK && ep_ != nullptr && ep_generation_ == generation) {
      // Timeout, cancel or failure: end the endpoint at once.
      CloseEndpointLocked(true);
    }
    if (direct && status != UCS_OK) {
      // The request is done only once nothing can write its buffers any
      // more (docs/API.md, "How a request ends"): requests UCX has not
      // completed may still land a reply in the caller's memory. The forced
      // close cancels them, and they complete as the worker progresses:
      // wait for that, within kUcxDirectCancelGraceMs. Any left after it
      // keep the memory in use (UcxCore::lingering; DeregisterMemory waits
      // for them) and are logged: the guarantee then rests on the caller
      // keeping the registration.
      UcxCore::Lingering left;
      if (flush != nullptr) {
        requests.push_back(flush);
        flush = nullptr;
      }
      const int grace_ms = direct_cancel_grace_ms.load(std::memory_order_relaxed);
      const auto grace = Clock::now() + std::chrono::milliseconds(grace_ms);
      for (;;) {
        bool pending = false;
        for (void *&r : requests) {
          if (r == nullptr) continue;
          if (ucp_request_check_status(r) == UCS_INPROGRESS) {
            pending = true;
          } else {
            ucp_request_free(r);
            r = nullptr;
          }
        }
        if (!pending || Clock::now() >= grace) break;
        if (core_->ProgressLocked() == 0) {
          lock.unlock();
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          lock.lock();
        }
      }
      for (void *&r : requests) {
        if (r != nullptr) left.requests.push_back(r);
        r = nullptr;
      }
      if (!left.requests.empty()) {
        for (const Slice &s : slices) left.users.push_back(s.local_region);
        core_->lingering.push_back(std::move(left));
        core_->lingered.fetch_add(1, std::memory_order_relaxed);
        LOG_WARN("ucx: %zu operation(s) of a direct transfer to %s did not end within %d ms of its cancel: its local "
                 "memory may still be written until they do (DeregisterMem waits for them)",
                 core_->lingering.back().requests.size(), peer_name_.c_str(), grace_ms);
      } else {
        for (const Slice &s : slices) --s.local_region->direct_users;
      }
    } else if (direct) {
      for (const Slice &s : slices) --s.local_region->direct_users;  // every request completed
    }
    if (flush != nullptr) ucp_request_free(flush);
    free_requests();
    --in_flight_;
    if (in_flight_ == 0) {
      for (ucp_rkey_h stale_key : retired_) ucp_rkey_destroy(stale_key);
      retired_.clear();
    }
    if (status == UCS_OK) {
      posted = false;  // every operation on the chunk ended (and a READ's bytes were copied out)
      return result;
    }
    if (closed_by_other && !shut_down_.load() && !deadline.Expired() && attempt < 3) {
      lock.unlock();
      if (direct) continue;  // a new endpoint may not be direct: checked again
      core_->RetireStage(std::move(stage));
      posted = false;
      stage = core_->AcquireStage(deadline, request, &result.status, &result.error);
      if (stage == nullptr) return result;
      result.status = adxl::SUCCESS;
      if (op == adxl::WRITE) CopyStaged(stage.get(), segs, count, 0, bytes, false, nullptr, nullptr);
      continue;
    }
    if (canceled) {
      result.status = TransferRequest::kCanceledStatus;
      result.error = "canceled";
    } else if (status == UCS_INPROGRESS || (closed_by_other && deadline.Expired())) {
      result.status = adxl::TIMEOUT;
      result.error = "UCX transfer to " + peer_name_ + " did not complete before the deadline";
    } else if (ep_failed_ && !ep_error_.empty()) {
      result.status = adxl::FAILED;
      result.error = ep_error_;
    } else {
      result.status = adxl::FAILED;
      result.error = std::string("UCX transfer to ") + peer_name_ + " failed: " + ucs_status_string(status);
    }
    return result;  // the guard retires a staging chunk
  }
}

}  // namespace llmdd
