#include "daemon/fetch/fetch_channel.h"

#include <pthread.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/log.h"
#include "daemon/base/thread_priority.h"

namespace lazyram {

using protocol::FrameType;

namespace {

// user_data of a completion: what completed.
enum Op : uint64_t { kWake = 1, kRecv = 2, kSend = 3 };

constexpr absl::Duration kMinBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
// With replicas to fail over to, a connection that owes replies and has
// received nothing for this long counts as failed: a server that went
// silent (host gone, link cut) never closes its connections itself. With
// one source there is nowhere better to go, so it is waited for.
constexpr absl::Duration kStallTimeout = absl::Seconds(10);
// Bytes per recv on a bulk connection. The copy runs inline in
// io_uring_enter, where this kernel (preempt=none) does not switch to a
// woken thread: a recv of megabytes would hold a CPU that the demand thread
// needs at once.
constexpr size_t kMaxBulkRecv = 256 * 1024;

}  // namespace

struct FetchChannel::Connection {
  // --- guarded by the channel's mu_ ---
  bool up = false;
  bool closing = false;  // shut down; waiting for its operations to finish
  bool send_inflight = false;
  std::string out;  // frames not yet handed to the kernel
  absl::flat_hash_map<uint64_t, FetchRequest> outstanding;
  // Last time bytes arrived, or the first request went out on an idle
  // connection: for kStallTimeout.
  absl::Time last_progress = absl::InfinitePast();
  UniqueFd fd;  // replaced only by the I/O thread, under mu_

  // --- the I/O thread's alone ---
  size_t replica = 0;   // while up or closing
  std::string sending;  // the frames of the send in flight
  size_t sent = 0;
  std::vector<uint8_t> in;
  size_t in_start = 0;  // bytes before this are parsed
  size_t in_len = 0;    // bytes received
  bool recv_inflight = false;
  absl::Time retry_at = absl::InfinitePast();
  absl::Duration backoff = kMinBackoff;
  size_t round_failures = 0;  // failed dials since the last backoff
  bool dialing = false;
  std::thread dial_thread;
  bool warned = false;
  std::string last_retry_error;  // logged once per distinct reason
  // A bad reply closes the connection; the next one waits this long, which
  // doubles with every bad reply and resets with a good one, so a server
  // that keeps lying is not redialed in a tight loop.
  bool rejected = false;
  absl::Duration reject_backoff = kMinBackoff;
};

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

void FetchChannel::Up(UniqueFd fd, size_t replica) {
  Connection& c = *conn_;
  c.replica = replica;
  c.round_failures = 0;
  shared_->replicas->ConnectionUp(replica);
  shared_->failing_fast.store(false, std::memory_order_relaxed);
  {
    absl::MutexLock lock(&mu_);
    c.fd = std::move(fd);
    c.up = true;
    c.closing = false;
  }
  c.in_start = 0;
  c.in_len = 0;
  c.backoff = kMinBackoff;
  if (c.warned) {
    LogInfo("page server %s: connection restored", shared_->replicas->address(replica).ToString());
  }
  c.warned = false;
  c.last_retry_error.clear();
  shared_->connections_up.fetch_add(1, std::memory_order_relaxed);
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

void FetchChannel::Reconnect() {
  Connection& c = *conn_;
  c.dialing = true;
  c.dial_thread = std::thread([this] {
    pthread_setname_np(pthread_self(), "lazyram-dial");
    size_t replica = 0;
    absl::StatusOr<DialedSource> dialed = shared_->replicas->DialCurrent(
        shared_->connect_timeout, &replica,
        kind_ == Kind::kDemand ? protocol::kFeatureDemandChannel : 0);
    {
      absl::MutexLock lock(&dial_mu_);
      dial_results_.push_back({replica, std::move(dialed)});
    }
    Wake();
  });
}

void FetchChannel::FinishDials() {
  std::vector<DialResult> results;
  {
    absl::MutexLock lock(&dial_mu_);
    results.swap(dial_results_);
  }
  for (DialResult& r : results) {
    conn_->dial_thread.join();
    conn_->dialing = false;
    OnDialed(r.replica, std::move(r.dialed));
  }
}

void FetchChannel::OnDialed(size_t replica, absl::StatusOr<DialedSource> dialed) {
  Connection& c = *conn_;
  {
    absl::MutexLock lock(&mu_);
    if (detached_) return;  // every page is local: the new connection closes
  }
  absl::Status status = dialed.status();
  if (status.ok()) {
    Up(std::move(dialed->fd), replica);
    return;
  }
  // Once per reason, not once per outage: a server that comes back with
  // the wrong regions must be reported even after "connection refused".
  if (status.message() != c.last_retry_error) {
    LogWarning("%s connection: %s; retrying", name(), status.message());
    c.last_retry_error = std::string(status.message());
    c.warned = true;
  }
  // Round robin: the next replica is tried at once, and the backoff grows
  // once every replica has failed (at once with a single source).
  if (++c.round_failures < shared_->replicas->size()) {
    c.retry_at = absl::Now();
    return;
  }
  c.round_failures = 0;
  c.retry_at = absl::Now() + c.backoff;
  c.backoff = std::min(c.backoff * 2, kMaxBackoff);
}

absl::Time FetchChannel::ExpireDemand() {
  if (kind_ != Kind::kDemand || shared_->fetch_timeout == absl::InfiniteDuration()) {
    return absl::InfiniteFuture();
  }
  const absl::Time now = absl::Now();
  absl::Time next = absl::InfiniteFuture();
  std::vector<FetchCallback> expired;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (it->deadline <= now) {
        expired.push_back(std::move(it->done));
        it = queue_.erase(it);
      } else {
        next = std::min(next, it->deadline);
        ++it;
      }
    }
    // Sent ones stay outstanding, so that their late reply is recognised
    // (and dropped) rather than taken for a protocol error.
    for (auto& [tag, request] : conn_->outstanding) {
      if (request.expired) continue;
      if (request.deadline <= now) {
        request.expired = true;
        expired.push_back(std::move(request.done));
      } else {
        next = std::min(next, request.deadline);
      }
    }
  }
  if (expired.empty()) return next;
  shared_->fetch_timeouts.fetch_add(expired.size(), std::memory_order_relaxed);
  shared_->failing_fast.store(true, std::memory_order_relaxed);
  LogWarning("%d demand fetch(es) not answered within --fetch-timeout %s: failed", expired.size(),
             absl::FormatDuration(shared_->fetch_timeout));
  const absl::Status error =
      absl::UnavailableError(absl::StrCat("the page server did not answer within --fetch-timeout ",
                                          absl::FormatDuration(shared_->fetch_timeout)));
  for (FetchCallback& done : expired) done(error);
  return next;
}

absl::Time FetchChannel::FailStalled() {
  absl::Time next = absl::InfiniteFuture();
  if (shared_->replicas->size() < 2) return next;
  absl::Time progress;
  {
    absl::MutexLock lock(&mu_);
    if (!conn_->up || conn_->outstanding.empty()) return next;
    progress = conn_->last_progress;
  }
  if (absl::Now() - progress < kStallTimeout) return progress + kStallTimeout;
  Fail(absl::UnavailableError(absl::StrCat("no reply for ", absl::FormatDuration(kStallTimeout))));
  return next;
}

void FetchChannel::Charge(uint64_t bytes) {
  my_inflight_.fetch_add(bytes, std::memory_order_relaxed);
  const uint64_t now = shared_->inflight.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  uint64_t peak = shared_->peak.load(std::memory_order_relaxed);
  while (now > peak && !shared_->peak.compare_exchange_weak(peak, now)) {
  }
}

void FetchChannel::Refund(uint64_t bytes) {
  my_inflight_.fetch_sub(bytes, std::memory_order_relaxed);
  shared_->inflight.fetch_sub(bytes, std::memory_order_relaxed);
}

bool FetchChannel::Fits(FetchRequest& request, uint64_t limit) {
  // A request that does not fit waits for replies to land; one alone in
  // flight on its channel is always let through, so a tiny cap still makes
  // progress and bulk transfers never starve demand fetches.
  const uint64_t inflight = shared_->inflight.load(std::memory_order_relaxed);
  if (my_inflight_.load(std::memory_order_relaxed) == 0 ||
      inflight + ReplyCost(request.count) <= limit) {
    return true;
  }
  if (!request.waited) {
    request.waited = true;
    shared_->waits.fetch_add(1, std::memory_order_relaxed);
  }
  return false;
}

void FetchChannel::Distribute() {
  absl::MutexLock lock(&mu_);
  // Bulk leaves a quarter of the room to demand fetches.
  const uint64_t limit = kind_ == Kind::kDemand ? shared_->room : shared_->room - shared_->room / 4;
  Connection& c = *conn_;
  while (c.up && !queue_.empty() && Fits(queue_.front(), limit)) {
    FetchRequest r = std::move(queue_.front());
    queue_.pop_front();
    const uint64_t tag = next_tag_++;
    protocol::AppendRead(tag, {r.region, r.count, r.first_page, r.priority}, &c.out);
    Charge(ReplyCost(r.count));
    if (c.outstanding.empty()) c.last_progress = absl::Now();
    c.outstanding.emplace(tag, std::move(r));
  }
}

void FetchChannel::Pump() {
  Connection& c = *conn_;
  bool send = false;
  {
    absl::MutexLock lock(&mu_);
    if (!c.up) return;
    if (!c.send_inflight && !c.out.empty()) {
      std::swap(c.out, c.sending);
      c.out.clear();
      c.sent = 0;
      c.send_inflight = true;
      send = true;
    }
  }
  if (send) {
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, c.fd.get(), c.sending.data(), c.sending.size(), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, kSend);
  }
  if (!c.recv_inflight) {
    c.recv_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    size_t room = c.in.size() - c.in_len;
    if (kind_ == Kind::kBulk) room = std::min(room, kMaxBulkRecv);
    io_uring_prep_recv(sqe, c.fd.get(), c.in.data() + c.in_len, room, 0);
    io_uring_sqe_set_data64(sqe, kRecv);
  }
}

void FetchChannel::Fail(const absl::Status& why) {
  Connection& c = *conn_;
  {
    absl::MutexLock lock(&mu_);
    if (!c.up) return;
    c.up = false;
    c.closing = true;
    // Requests are idempotent reads: send them again once reconnected.
    for (auto& [tag, request] : c.outstanding) {
      Refund(ReplyCost(request.count));
      if (!request.expired) queue_.push_front(std::move(request));
    }
    c.outstanding.clear();
    c.out.clear();
  }
  if (!why.ok()) {
    LogWarning("%s connection to %s lost: %s", name(),
               shared_->replicas->address(c.replica).ToString(), why.message());
    c.warned = true;
  }
  shared_->connections_up.fetch_sub(1, std::memory_order_relaxed);
  shared_->replicas->ConnectionDown(c.replica, /*failed=*/!why.ok() || c.rejected);
  // Wake the recv and send in flight; the fd closes once they are done.
  shutdown(c.fd.get(), SHUT_RDWR);
  MaybeFinishClose();
}

void FetchChannel::Reject(const absl::Status& why) {
  Connection& c = *conn_;
  LogError("%s connection to %s: bad reply from the page server: %s; reconnecting", name(),
           shared_->replicas->address(c.replica).ToString(), why.message());
  c.warned = true;
  c.rejected = true;
  Fail(absl::OkStatus());
}

void FetchChannel::MaybeFinishClose() {
  Connection& c = *conn_;
  {
    absl::MutexLock lock(&mu_);
    if (!c.closing || c.recv_inflight || c.send_inflight) return;
    c.fd.reset();
    c.closing = false;
  }
  c.sending.clear();
  c.in_start = 0;
  c.in_len = 0;
  if (c.rejected) {
    c.rejected = false;
    c.retry_at = absl::Now() + c.reject_backoff;
    c.reject_backoff = std::min(c.reject_backoff * 2, kMaxBackoff);
  } else {
    c.retry_at = absl::Now();  // the first retry is immediate, then backoff
  }
}

void FetchChannel::OnSend(int res) {
  Connection& c = *conn_;
  bool closing;
  {
    absl::MutexLock lock(&mu_);
    closing = c.closing;
    if (closing || res <= 0) c.send_inflight = false;
  }
  if (closing) return MaybeFinishClose();
  if (res <= 0) return Fail(ErrnoStatus(res == 0 ? EPIPE : -res, "send"));
  c.sent += static_cast<size_t>(res);
  if (c.sent < c.sending.size()) {
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, c.fd.get(), c.sending.data() + c.sent, c.sending.size() - c.sent,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, kSend);
    return;
  }
  c.sending.clear();
  absl::MutexLock lock(&mu_);
  c.send_inflight = false;
}

void FetchChannel::OnRecv(int res) {
  Connection& c = *conn_;
  c.recv_inflight = false;
  bool closing;
  {
    absl::MutexLock lock(&mu_);
    closing = c.closing;
  }
  if (closing) return MaybeFinishClose();
  if (res == 0) return Fail(absl::UnavailableError("page server closed the connection"));
  if (res < 0) return Fail(ErrnoStatus(-res, "recv"));
  c.in_len += static_cast<size_t>(res);
  {
    absl::MutexLock lock(&mu_);
    c.last_progress = absl::Now();
  }
  shared_->failing_fast.store(false, std::memory_order_relaxed);
  size_t pos = c.in_start;
  while (c.in_len - pos >= protocol::kHeaderSize) {
    absl::StatusOr<protocol::FrameHeader> header = protocol::DecodeHeader(
        std::span(c.in.data() + pos, protocol::kHeaderSize), protocol::kMaxFrameBody);
    if (!header.ok()) return Reject(header.status());
    const size_t frame = protocol::kHeaderSize + header->body_len;
    if (c.in_len - pos < frame) break;
    absl::Status s = HandleFrame(
        *header, std::span(c.in.data() + pos + protocol::kHeaderSize, header->body_len));
    if (!s.ok()) return Reject(s);
    c.reject_backoff = kMinBackoff;
    pos += frame;
  }
  c.in_start = pos;
  // Move the unparsed tail to the front only when the room left could not
  // hold a whole frame: most frames are then parsed where they landed.
  if (c.in.size() - c.in_len < protocol::kHeaderSize + protocol::kMaxFrameBody) {
    std::memmove(c.in.data(), c.in.data() + pos, c.in_len - pos);
    c.in_len -= pos;
    c.in_start = 0;
  }
}

absl::Status FetchChannel::HandleFrame(const protocol::FrameHeader& header,
                                       std::span<const uint8_t> body) {
  Connection& c = *conn_;
  if (header.type != FrameType::kError && header.type != FrameType::kPages) {
    return absl::InvalidArgumentError("unexpected frame type from the page server");
  }
  // Checked before the request is taken: a bad frame leaves it outstanding,
  // to be sent again on the next connection.
  absl::StatusOr<protocol::ErrorReply> error;
  absl::StatusOr<protocol::PagesView> pages;
  if (header.type == FrameType::kError) {
    error = protocol::DecodeError(body);
    if (!error.ok()) return error.status();
  } else {
    pages = protocol::DecodePages(body);
    if (!pages.ok()) {
      if (absl::IsDataLoss(pages.status())) {
        shared_->checksum_errors.fetch_add(1, std::memory_order_relaxed);
      }
      return pages.status();
    }
  }
  FetchRequest request;
  {
    absl::MutexLock lock(&mu_);
    auto it = c.outstanding.find(header.tag);
    if (it == c.outstanding.end()) {
      return absl::InvalidArgumentError(absl::StrCat("reply with unknown tag ", header.tag));
    }
    if (pages.ok() &&
        (pages->region != it->second.region || pages->first_page != it->second.first_page ||
         pages->count != it->second.count)) {
      return absl::InvalidArgumentError("reply does not match its request");
    }
    request = std::move(it->second);
    c.outstanding.erase(it);
    Refund(ReplyCost(request.count));
    if (request.expired) return absl::OkStatus();  // its waiters were told already
    if (error.ok() && error->code == protocol::ErrorCode::kBusy) {
      queue_.push_back(std::move(request));
      return absl::OkStatus();
    }
  }
  if (error.ok()) {
    LogError("page server refused a read of region %u pages %u+%u: %s", request.region,
             request.first_page, request.count, error->message);
    request.done(protocol::ErrorToStatus(*error));
    return absl::OkStatus();
  }
  request.done(FetchedPages{pages->first_page, pages->count, pages->flags, pages->payload});
  return absl::OkStatus();
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
