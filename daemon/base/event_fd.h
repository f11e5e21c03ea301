// EventFd: an owned eventfd, the daemon's way to wake a thread that sleeps
// in io_uring or poll — any thread Signals, the one waiting thread reads
// the counter (through the ring with PrepareRead, or with Drain).
//
// The eventfd is blocking (no EFD_NONBLOCK): a read on the ring then waits
// for a Signal instead of completing at once with EAGAIN.
//
// Move-only; closes the fd on destruction. Signal may be called from any
// thread; PrepareRead and Drain belong to the one waiting thread. An
// EventFd must not be moved or destroyed while a read prepared by
// PrepareRead is in flight: the kernel writes into it.
#ifndef LAZYRAM_DAEMON_BASE_EVENT_FD_H_
#define LAZYRAM_DAEMON_BASE_EVENT_FD_H_

#include <liburing.h>

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "daemon/base/unique_fd.h"

namespace lazyram {

class EventFd {
 public:
  static absl::StatusOr<EventFd> Create();
  EventFd() = default;  // no fd: only to be assigned a created one
  EventFd(EventFd&&) = default;
  EventFd& operator=(EventFd&&) = default;

  // Adds one to the counter, waking the waiter. Cannot fail on a valid
  // eventfd short of 2^64 - 2 unread signals, so nothing is reported.
  void Signal();
  // Reads and resets the counter without blocking: the signals since the
  // last read, 0 if there were none.
  absl::StatusOr<uint64_t> Drain();
  // Prepares `sqe` to read the counter into a buffer of this EventFd (the
  // caller sets the sqe's user_data). The read completes on the next
  // Signal, or at once if one is pending; re-arm it after each completion.
  void PrepareRead(io_uring_sqe* sqe);

  int fd() const { return fd_.get(); }

 private:
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}

  UniqueFd fd_;
  uint64_t read_value_ = 0;  // PrepareRead's target
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_EVENT_FD_H_
