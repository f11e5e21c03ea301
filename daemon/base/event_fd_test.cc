#include "daemon/base/event_fd.h"

#include <gtest/gtest.h>
#include <poll.h>

#include <memory>
#include <thread>
#include <utility>

#include "daemon/base/io_ring.h"

namespace lazyram {
namespace {

TEST(EventFdTest, DrainCountsSignalsAndResets) {
  absl::StatusOr<EventFd> wake = EventFd::Create();
  ASSERT_TRUE(wake.ok()) << wake.status();
  EXPECT_GE(wake->fd(), 0);
  EXPECT_EQ(wake->Drain().value_or(99), 0u);  // nothing pending: does not block
  wake->Signal();
  wake->Signal();
  EXPECT_EQ(wake->Drain().value_or(99), 2u);
  EXPECT_EQ(wake->Drain().value_or(99), 0u);
}

TEST(EventFdTest, SignalWakesAPollFromAnotherThread) {
  absl::StatusOr<EventFd> wake = EventFd::Create();
  ASSERT_TRUE(wake.ok()) << wake.status();
  std::thread signaller([&wake] { wake->Signal(); });
  pollfd pfd{wake->fd(), POLLIN, 0};
  EXPECT_EQ(poll(&pfd, 1, 10000), 1);
  signaller.join();
  EXPECT_EQ(wake->Drain().value_or(99), 1u);
}

TEST(EventFdTest, PreparedReadCompletesOnSignal) {
  absl::StatusOr<EventFd> wake = EventFd::Create();
  ASSERT_TRUE(wake.ok()) << wake.status();
  absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(8);
  ASSERT_TRUE(ring.ok()) << ring.status();
  io_uring* r = (*ring)->get();

  wake->PrepareRead((*ring)->GetSqe());
  io_uring_submit(r);
  io_uring_cqe* cqe = nullptr;
  EXPECT_EQ(io_uring_peek_cqe(r, &cqe), -EAGAIN);  // blocking eventfd: waits for a Signal

  wake->Signal();
  ASSERT_EQ(io_uring_wait_cqe(r, &cqe), 0);
  EXPECT_EQ(cqe->res, static_cast<int>(sizeof(uint64_t)));
  io_uring_cqe_seen(r, cqe);
  EXPECT_EQ(wake->Drain().value_or(99), 0u);  // the ring's read took the count
}

TEST(EventFdTest, MovesKeepTheFd) {
  absl::StatusOr<EventFd> wake = EventFd::Create();
  ASSERT_TRUE(wake.ok()) << wake.status();
  const int fd = wake->fd();
  EventFd moved = *std::move(wake);
  EXPECT_EQ(moved.fd(), fd);
  moved.Signal();
  EXPECT_EQ(moved.Drain().value_or(99), 1u);
  EXPECT_LT(EventFd().fd(), 0);
}

}  // namespace
}  // namespace lazyram
