#include "daemon/base/thread_priority.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "daemon/base/errno_status.h"

namespace lazyram {
namespace {

// struct sched_attr of sched_setattr(2); glibc 2.36 has no wrapper, and
// <linux/sched/types.h> clashes with <sched.h>.
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
};

// The kernel's minimum slice.
constexpr uint64_t kShortSliceNs = 100'000;

}  // namespace

namespace {

// Sets the calling thread's nice and a SCHED_OTHER slice of `slice_ns`.
absl::Status SetNiceAndSlice(int nice, uint64_t slice_ns) {
  SchedAttr attr{};
  attr.size = sizeof attr;
  attr.sched_policy = SCHED_OTHER;
  attr.sched_nice = nice;
  // Linux 6.12+: the slice of a SCHED_OTHER thread (0.1 .. 100 ms).
  attr.sched_runtime = slice_ns;
  if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0) return ErrnoStatus(errno, "sched_setattr");
  return absl::OkStatus();
}

}  // namespace

absl::Status MakeThreadLatencySensitive() {
  errno = 0;
  const int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  if (errno != 0) return ErrnoStatus(errno, "getpriority");
  return SetNiceAndSlice(nice, kShortSliceNs);
}

absl::Status MakeThreadBackground() { return SetNiceAndSlice(kBackgroundNice, kShortSliceNs); }

ScopedBackground::ScopedBackground(bool enable) {
  if (!enable) return;
  errno = 0;
  nice_before_ = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  lowered_ =
      errno == 0 && setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kBackgroundNice) == 0;
}

ScopedBackground::~ScopedBackground() {
  if (lowered_) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice_before_);
}

}  // namespace lazyram
