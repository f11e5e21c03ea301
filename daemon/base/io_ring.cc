#include "daemon/base/io_ring.h"

#include "daemon/base/errno_status.h"

namespace lazyram {

absl::StatusOr<std::unique_ptr<IoRing>> IoRing::Create(unsigned entries) {
  std::unique_ptr<IoRing> ring(new IoRing);
  io_uring_params params{};
  params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  params.cq_entries = entries * 2;
  int ret = io_uring_queue_init_params(entries, &ring->ring_, &params);
  if (ret < 0) {
    // Older kernels lack DEFER_TASKRUN; the ring still works without it.
    params = {};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = entries * 2;
    ret = io_uring_queue_init_params(entries, &ring->ring_, &params);
  }
  if (ret < 0) return ErrnoStatus(-ret, "io_uring_queue_init");
  return ring;
}

io_uring_sqe* IoRing::GetSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      io_uring_cqe* cqe;
      io_uring_wait_cqe(&ring_, &cqe);  // leave it queued; the loop reaps it
      sqe = io_uring_get_sqe(&ring_);
    }
  }
  return sqe;
}

}  // namespace lazyram
