// Scheduling hints for the calling thread, so that the threads a faulting
// guest waits on get a CPU before background work does.
//
// On Linux 6.12+ (EEVDF), a runnable thread with a shorter slice may preempt
// one with a longer slice at wakeup, and a cgroup or autogroup inherits the
// shortest slice of its runnable threads — so a short slice works across
// processes, where nice values (autogroups: one group per session) do not.
// Older kernels ignore the slice (it is then only a hint).
//
// Thread-safety: each call affects only the calling thread.
#ifndef LAZYRAM_DAEMON_BASE_THREAD_PRIORITY_H_
#define LAZYRAM_DAEMON_BASE_THREAD_PRIORITY_H_

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace lazyram {

// The nice value of background work: the pull, on both hosts, and the push.
inline constexpr int kBackgroundNice = 10;

// For a thread on the fault path: a short EEVDF slice (the kernel's
// minimum, 100 µs), nice unchanged.
absl::Status MakeThreadLatencySensitive();

// For a thread doing background work: nice kBackgroundNice, and the same
// short slice (it gives the CPU back sooner).
absl::Status MakeThreadBackground();

// While it lives, the calling thread runs at nice kBackgroundNice (when
// `enable`); then at its nice from before. For a thread that serves
// background work now and then. Best effort: a failure leaves the nice as
// it was.
class ScopedBackground {
 public:
  explicit ScopedBackground(bool enable);
  ~ScopedBackground();
  ScopedBackground(const ScopedBackground&) = delete;
  ScopedBackground& operator=(const ScopedBackground&) = delete;

 private:
  bool lowered_ = false;
  int nice_before_ = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_THREAD_PRIORITY_H_
