#include "engine/call_cancel.h"

#include "engine/transfer_request.h"

namespace {
thread_local llmdd_ext::CallCanceler::Impl *t_current = nullptr;
constexpr const char *kCanceledWhy = "canceled by its caller (llmdd_ext::CallCanceler)";
}  // namespace

llmdd_ext::CallCanceler::Impl *llmdd_ext::CallCanceler::Impl::Current() { return t_current; }

void llmdd_ext::CallCanceler::Impl::SetCurrent(Impl *impl) { t_current = impl; }

void llmdd_ext::CallCanceler::Impl::Enter(llmdd::TransferRequest *request) {
  std::lock_guard lock(mutex);
  running = request;
  // Canceled before the transfer started: it ends at once, moving nothing
  // (RunRequest sees CancelRequested before any I/O).
  if (canceled) request->Cancel(kCanceledWhy);
}

void llmdd_ext::CallCanceler::Impl::Leave(llmdd::TransferRequest *request) {
  std::lock_guard lock(mutex);
  if (running == request) running = nullptr;
  left.notify_all();
}

void llmdd_ext::CallCanceler::Impl::Cancel() {
  std::unique_lock lock(mutex);
  canceled = true;
  if (running == nullptr) return;
  // Under our lock: Leave (before the request's stack frame goes) cannot run
  // until Cancel has returned from the request's lock.
  running->Cancel(kCanceledWhy);
  // No deadline of ours: a canceled request ends as soon as the I/O it had
  // under way returns after its lanes were shut down (TransferRequest), and
  // only then may the caller reuse the buffers.
  left.wait(lock, [this] { return running == nullptr; });
}

bool llmdd_ext::CallCanceler::Impl::Canceled() const {
  std::lock_guard lock(mutex);
  return canceled;
}

namespace llmdd_ext {

// A constructor has no status to return: out of memory is std::bad_alloc, as
// for any allocation of the caller's.
CallCanceler::CallCanceler() : impl_(new Impl) {}

CallCanceler::~CallCanceler() {
  if (Impl::Current() == impl_) Impl::SetCurrent(nullptr);
  delete impl_;
}

void CallCanceler::Bind() { Impl::SetCurrent(impl_); }
void CallCanceler::Unbind() { Impl::SetCurrent(nullptr); }
void CallCanceler::Cancel() { impl_->Cancel(); }
bool CallCanceler::Canceled() const { return impl_->Canceled(); }

}  // namespace llmdd_ext
