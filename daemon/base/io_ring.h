// IoRing: an owned io_uring. One owner thread submits and reaps (the ring is
// created SINGLE_ISSUER | DEFER_TASKRUN, so no other thread may touch it,
// and it must be created on that thread).
// Move-only; destroying it tears the ring down.
#ifndef LAZYRAM_DAEMON_BASE_IO_RING_H_
#define LAZYRAM_DAEMON_BASE_IO_RING_H_

#include <liburing.h>

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace lazyram {

class IoRing {
 public:
  // `entries` submission slots; completions get twice as many.
  static absl::StatusOr<std::unique_ptr<IoRing>> Create(unsigned entries);
  IoRing(const IoRing&) = delete;
  IoRing& operator=(const IoRing&) = delete;
  ~IoRing() { io_uring_queue_exit(&ring_); }

  io_uring* get() { return &ring_; }

  // A free submission entry, submitting queued ones first if the queue is
  // full. Never null: a full ring after a submit means the kernel is behind,
  // and waiting for one completion makes room.
  io_uring_sqe* GetSqe();

 private:
  IoRing() = default;
  io_uring ring_{};
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_IO_RING_H_
