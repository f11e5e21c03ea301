#include "daemon/fetch/fetch_channel.h"

#include <pthread.h>
#include <sys/socket.h>

#include <utility>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/base/thread_priority.h"
#include "daemon/fetch/fetch_channel_connection.h"

namespace lazyram {

using fetch_channel_internal::kRecv;
using fetch_channel_internal::kSend;
using fetch_channel_internal::kWake;
using fetch_channel_internal::Op;

FetchChannel::FetchChannel(Kind kind, FetchShared* shared)
    : kind_(kind), shared_(shared), conn_(std::make_unique<Connection>()) {
  conn_->in.resize(kRecvBuffer);
}

absl::StatusOr<std::unique_ptr<FetchChannel>> FetchChannel::Start(
    Kind kind, FetchShared* shared, std::optional<DialedSource> first) {
  std::unique_ptr<FetchChannel> channel(new FetchChannel(kind, shared));
  absl::StatusOr<EventFd> wake = EventFd::Create();
  if (!wake.ok()) return wake.status();
  channel->wake_ = *std::move(wake);
  if (first.has_value()) {
    channel->Up(std::move(first->fd), shared->replicas->current());
  }
  // The ring must be created on the thread that owns it.
  absl::Notification ready;
  absl::Status ring_status;
  FetchChannel* self = channel.get();
  channel->thread_ = std::thread([self, &ready, &ring_status] {
    pthread_setname_np(pthread_self(),
                       self->kind_ == Kind::kDemand ? "lazyram-demand" : "lazyram-fetch");
    // The pull gives way to faults, and to the guest, whenever both want a
    // CPU; a fault's reply is handled as soon as it arrives.
    absl::Status priority =
        self->kind_ == Kind::kBulk ? MakeThreadBackground() : MakeThreadLatencySensitive();
    if (!priority.ok()) {
      LogWarning("%s fetch thread keeps the default priority: %s", self->name(),
                 priority.message());
    }
    absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(256);
    if (!ring.ok()) {
      ring_status = ring.status();
      ready.Notify();
      return;
    }
    self->ring_ = *std::move(ring);
    ready.Notify();
    self->Run();
    self->ring_.reset();
  });
  ready.WaitForNotification();
  if (!ring_status.ok()) {
    channel->thread_.join();
    return ring_status;
  }
  return channel;
}

void FetchChannel::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
}

FetchChannel::~FetchChannel() { Stop(); }

void FetchChannel::Wake() { wake_.Signal(); }

std::optional<FetchRequest> FetchChannel::Submit(FetchRequest request) {
  std::string frame;
  int fd = -1;
  {
    absl::MutexLock lock(&mu_);
    if (detached_ || stopping_) return request;
    Connection& c = *conn_;
    if (kind_ != Kind::kDemand || !queue_.empty() || !c.up || c.send_inflight || !c.out.empty() ||
        !Fits(request, shared_->room)) {
      Enqueue(std::move(request));
      return std::nullopt;
    }
    // Sent from this thread: the request is owed from now on, and the
    // sending side is claimed (as by a send in flight on the ring) until
    // the send returns, without holding the lock across the syscall.
    const uint64_t tag = next_tag_++;
    protocol::AppendRead(tag, {request.region, request.count, request.first_page, request.priority},
                         &frame);
    Charge(ReplyCost(request.count));
    // The I/O thread sleeps without a timer while nothing is owed; a
    // deadline (the fetch timeout, or the stall check with replicas) needs
    // it awake to set one.
    if (c.outstanding.empty()) {
      c.last_progress = absl::Now();
      if (shared_->fetch_timeout != absl::InfiniteDuration() || shared_->replicas->size() > 1) {
        WakeLocked();
      }
    }
    c.outstanding.emplace(tag, std::move(request));
    c.send_inflight = true;
    fd = c.fd.get();
  }
  // The I/O thread has a recv armed (or arms it before it next sleeps);
  // only the reply needs it.
  const ssize_t n = send(fd, frame.data(), frame.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (shared_->after_direct_send) shared_->after_direct_send();
  absl::MutexLock lock(&mu_);
  Connection& c = *conn_;
  c.send_inflight = false;
  if (!c.up || c.closing) {
    // Failed meanwhile: the request went back to the queue with the rest.
    WakeLocked();
    return std::nullopt;
  }
  if (n < static_cast<ssize_t>(frame.size())) {
    // EAGAIN, a short send or a broken connection: the I/O thread sends
    // the rest ahead of what was queued since (or finds out it failed).
    c.out.insert(0, frame, n > 0 ? static_cast<size_t>(n) : 0);
  }
  // Frames the I/O thread put out meanwhile did not go while this thread
  // held the sending side: it must send them now.
  if (!c.out.empty()) WakeLocked();
  return std::nullopt;
}

void FetchChannel::Enqueue(FetchRequest request) {
  queue_.push_back(std::move(request));
  WakeLocked();
}

void FetchChannel::WakeLocked() {
  // One eventfd write per batch: a wake-up is pending until the I/O thread
  // next looks at the queue.
  if (wake_pending_) return;
  wake_pending_ = true;
  Wake();
}

void FetchChannel::Detach() {
  {
    absl::MutexLock lock(&mu_);
    detached_ = true;
  }
  Wake();
}

void FetchChannel::ArmWake() {
  io_uring_sqe* sqe = ring_->GetSqe();
  wake_.PrepareRead(sqe);
  io_uring_sqe_set_data64(sqe, kWake);
}

void FetchChannel::Run() {
  ArmWake();
  bool detached = false;
  for (;;) {
    bool stopping = false, detach = false;
    {
      absl::MutexLock lock(&mu_);
      stopping = stopping_;
      detach = detached_ && !detached;
      wake_pending_ = false;
    }
    if (stopping) break;
    if (detach) {
      detached = true;
      Fail(absl::OkStatus());
    }
    FinishDials();
    // A close that waited for a direct send (Submit) to return.
    MaybeFinishClose();
    absl::Time wake_at = absl::InfiniteFuture();
    Connection& c = *conn_;
    bool up;
    {
      absl::MutexLock lock(&mu_);
      up = c.up;
    }
    if (!detached && !up && !c.closing && !c.dialing) {
      if (absl::Now() >= c.retry_at) {
        Reconnect();
      } else {
        wake_at = c.retry_at;
      }
    }
    wake_at = std::min({wake_at, ExpireDemand(), FailStalled()});
    Distribute();
    Pump();

    io_uring_cqe* cqe = nullptr;
    if (wake_at == absl::InfiniteFuture()) {
      io_uring_submit_and_wait(ring_->get(), 1);
    } else {
      const int64_t ns = std::max<int64_t>(0, absl::ToInt64Nanoseconds(wake_at - absl::Now()));
      __kernel_timespec ts{ns / 1000000000, ns % 1000000000};
      io_uring_submit_and_wait_timeout(ring_->get(), &cqe, 1, &ts, nullptr);
    }
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring_->get(), head, cqe) {
      ++seen;
      switch (static_cast<Op>(io_uring_cqe_get_data64(cqe))) {
        case kWake:
          ArmWake();
          break;
        case kRecv:
          OnRecv(cqe->res);
          break;
        case kSend:
          OnSend(cqe->res);
          break;
      }
    }
    io_uring_cq_advance(ring_->get(), seen);
  }
  Fail(absl::OkStatus());
  // A dial ends within its timeouts; what it opened closes with it.
  if (conn_->dial_thread.joinable()) conn_->dial_thread.join();
  FailAll(absl::CancelledError("lazyramd is shutting down"));
}

void FetchChannel::FailAll(const absl::Status& status) {
  std::deque<FetchRequest> queue;
  {
    absl::MutexLock lock(&mu_);
    std::swap(queue, queue_);
  }
  for (FetchRequest& r : queue) r.done(status);
}

}  // namespace lazyram
