// Sync points: named places in the code where a test can pause a thread to
// force one interleaving of concurrent calls (the way LevelDB and RocksDB test
// lock orders). Without a test callback installed a sync point costs one
// relaxed atomic load.
#pragma once

#include <atomic>

namespace llmdd {

using SyncPointCallback = void (*)(const char *name);

namespace internal {
inline std::atomic<SyncPointCallback> g_sync_point_callback{nullptr};
}  // namespace internal

// Tests only: `callback` runs on the thread that reaches each sync point (null removes it).
inline void SetSyncPointCallback(SyncPointCallback callback) {
  internal::g_sync_point_callback.store(callback, std::memory_order_release);
}

inline void SyncPoint(const char *name) {
  if (SyncPointCallback callback = internal::g_sync_point_callback.load(std::memory_order_relaxed)) callback(name);
}

}  // namespace llmdd
