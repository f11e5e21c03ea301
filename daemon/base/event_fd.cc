#include "daemon/base/event_fd.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "daemon/base/errno_status.h"

namespace lazyram {

absl::StatusOr<EventFd> EventFd::Create() {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus(errno, "eventfd");
  return EventFd(std::move(fd));
}

void EventFd::Signal() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(fd_.get(), &one, sizeof one);
}

absl::StatusOr<uint64_t> EventFd::Drain() {
  // The fd blocks (see the header), so read only what poll says is there;
  // only the waiting thread reads, so nothing takes it in between.
  pollfd pfd{fd_.get(), POLLIN, 0};
  int ready;
  do {
    ready = poll(&pfd, 1, 0);
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return ErrnoStatus(errno, "poll on eventfd");
  if (ready == 0) return 0;
  uint64_t value = 0;
  if (read(fd_.get(), &value, sizeof value) != sizeof value) {
    return ErrnoStatus(errno, "reading eventfd");
  }
  return value;
}

void EventFd::PrepareRead(io_uring_sqe* sqe) {
  io_uring_prep_read(sqe, fd_.get(), &read_value_, sizeof read_value_, 0);
}

}  // namespace lazyram
