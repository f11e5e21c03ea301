// CPU time a process and its descendants used (/proc/PID/stat), for the
// cases that report CPU-seconds per GiB: a daemon's warm helper and its
// threads count with it.
#ifndef LAZYRAM_TOOLS_BENCH_PROCESS_CPU_H_
#define LAZYRAM_TOOLS_BENCH_PROCESS_CPU_H_

#include <sys/types.h>

namespace lazyram::bench {

// User + system seconds of `pid` (all its threads, and its children it has
// reaped) plus those of its live descendants. Fails the case when `pid` is
// gone.
double ProcessTreeCpuSeconds(pid_t pid);

}  // namespace lazyram::bench

#endif  // LAZYRAM_TOOLS_BENCH_PROCESS_CPU_H_
