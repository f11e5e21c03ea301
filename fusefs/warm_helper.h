// WarmHelper: a child process that asks the kernel to read ranges of files
// in this daemon's own mount (readahead(2)), for the PagePusher.
//
// Why a process, not a thread: a request the daemon makes of its own mount
// (the LOOKUP and OPEN of an open(), the FLUSH of a close()) can only be
// answered by the daemon. A thread of the daemon waiting on one when the
// daemon is SIGKILLed never gets its answer, and the dying daemon cannot
// finish exiting — so it never closes /dev/fuse, which is what would abort
// the connection. The helper shares no descriptor with the daemon (it holds
// none of /dev/fuse), dies with the thread that spawned it
// (PR_SET_PDEATHSIG), and a stuck helper is freed as soon as the daemon's
// exit aborts the connection.
//
// The child runs only async-signal-safe system calls (it is forked from a
// multi-threaded process): read, write, open, close, readahead, _exit.
//
// Thread-compatible: one thread (the pusher's) uses a WarmHelper, and that
// thread must outlive it.
#ifndef LAZYRAM_FUSEFS_WARM_HELPER_H_
#define LAZYRAM_FUSEFS_WARM_HELPER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/base/unique_fd.h"

namespace lazyram::fusefs {

class WarmHelper {
 public:
  static absl::StatusOr<std::unique_ptr<WarmHelper>> Spawn();
  WarmHelper(const WarmHelper&) = delete;
  WarmHelper& operator=(const WarmHelper&) = delete;
  // Kills the child and reaps it.
  ~WarmHelper();

  // Queues a readahead of [offset, offset+length) of `path` (absolute); it
  // may block while the child is busy (backpressure).
  absl::Status Warm(const std::string& path, uint64_t offset, uint64_t length);
  // Returns once the child holds no descriptor into the mount.
  absl::Status CloseFiles();

  pid_t pid() const { return pid_; }

 private:
  WarmHelper(pid_t pid, UniqueFd commands, UniqueFd acks)
      : pid_(pid), commands_(std::move(commands)), acks_(std::move(acks)) {}
  absl::Status Send(uint32_t kind, const std::string& path, uint64_t offset, uint64_t length);

  pid_t pid_;
  UniqueFd commands_;  // to the child
  UniqueFd acks_;      // from the child: one byte per CloseFiles
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_WARM_HELPER_H_
