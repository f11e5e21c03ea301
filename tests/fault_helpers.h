// Helpers the fault tests (source_faults, failover) share: child-safe
// content checks, local-page counts, and a throttle that holds page servers
// back without changing what they serve.
#ifndef LAZYRAM_TESTS_FAULT_HELPERS_H_
#define LAZYRAM_TESTS_FAULT_HELPERS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tests/test_env.h"

namespace lazyram::testing {

// Pages the mount has locally (fetched, written or known zero); 0 when the
// status cannot be read.
uint64_t LocalPages(const MountProcess& mount, const std::string& region);

// True while `child` runs. Reaps a child that has exited, so its Wait()
// then returns -1: call this only where an exit is already a failure.
bool StillRunning(const ChildProcess& child);

// Child-side checks (no gtest): the exit codes a failing reader returns.
enum ReadFailure : int { kOpen = 10, kReadError = 11, kShortRead = 12, kMismatch = 13, kMap = 14 };

// pread()s [offset, offset + length) of `path` and compares it with
// `expected` at the same offset. A read inside the file never comes back
// short.
int PreadAndCompare(const std::string& path, uint64_t offset, uint64_t length,
                    const std::vector<uint8_t>& expected);
// Maps `path` and compares every byte with `expected`: a missing page
// would be a SIGBUS (the child dies, -1).
int MapAndCompare(const std::string& path, const std::vector<uint8_t>& expected);

// Lets the processes added run `run` out of every `period` (SIGCONT /
// SIGSTOP), so a full pull lasts long enough to be interrupted.
class Throttle {
 public:
  Throttle(absl::Duration run, absl::Duration period);
  // Lets every process run again.
  ~Throttle();
  // Stops `pid` at once; it runs again in the next slot.
  void Add(pid_t pid);
  void Remove(pid_t pid);
  void Clear();

 private:
  void Loop();
  void Signal(int sig);

  const absl::Duration run_, period_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::set<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace lazyram::testing

#endif  // LAZYRAM_TESTS_FAULT_HELPERS_H_
