// The state behind llmdd_ext::CallCanceler (include/llmdd/extensions.h): the
// synchronous transfer a bound thread is running, and whether its canceler
// was canceled. Engine::RunHere registers each synchronous transfer with the
// canceler bound to the calling thread (Enter/Leave); Cancel cancels the one
// registered and waits until its runner let go of it.
//
// Lock order: the canceler's mutex, then a request's lock (Cancel calls
// TransferRequest::Cancel under it); nothing takes it under another lock.
#pragma once

#include <condition_variable>
#include <mutex>

#include "llmdd/extensions.h"

namespace llmdd {
class TransferRequest;
}

struct llmdd_ext::CallCanceler::Impl {
  // The canceler bound to this thread, null when none.
  static Impl *Current();
  static void SetCurrent(Impl *impl);

  // `request` (admitted, armed) runs now on the bound thread; canceled at once
  // when Cancel came first. Leave follows once its runner let go of it.
  void Enter(llmdd::TransferRequest *request);
  void Leave(llmdd::TransferRequest *request);
  void Cancel();
  bool Canceled() const;

  mutable std::mutex mutex;
  std::condition_variable left;  // running became null
  bool canceled = false;
  llmdd::TransferRequest *running = nullptr;
};
