// FetchChannel's connection (fetch_channel_connection.h): dialing on a
// thread of its own with round-robin and backoff, coming up, failing and
// closing, and the send and recv on the channel's ring that carry frames.
#include "daemon/fetch/fetch_channel_connection.h"

#include <pthread.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/time/clock.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/log.h"
#include "daemon/fetch/fetch_channel.h"

namespace lazyram {

using fetch_channel_internal::kMaxBackoff;
using fetch_channel_internal::kMaxBulkRecv;
using fetch_channel_internal::kMinBackoff;
using fetch_channel_internal::kRecv;
using fetch_channel_internal::kSend;

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

}  // namespace lazyram
