#include "daemon/fetcher.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/errno_status.h"
#include "daemon/io_ring.h"
#include "daemon/log.h"

namespace lazyram {

using protocol::FrameType;
using protocol::Priority;

absl::string_view SourceStateName(SourceState state) {
  switch (state) {
    case SourceState::kConnected:
      return "connected";
    case SourceState::kReconnecting:
      return "reconnecting";
    case SourceState::kDetached:
      return "detached";
  }
  return "unknown";
}

namespace {

// user_data of a completion: operation in the low byte, connection above.
enum Op : uint64_t { kWake = 1, kRecv = 2, kSend = 3 };
constexpr uint64_t Tag(Op op, size_t conn) { return (static_cast<uint64_t>(conn) << 8) | op; }

// Room for several maximal frames, so one recv can carry many replies.
constexpr size_t kRecvBuffer = 4 * (protocol::kHeaderSize + protocol::kMaxFrameBody);
// The most a reply to a READ of `count` pages can take.
uint64_t ReplyCost(uint32_t count) { return protocol::PagesFrameCapacity(count); }
constexpr absl::Duration kMinBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
// With replicas to fail over to, a connection that owes replies and has
// received nothing for this long counts as failed: a server that went
// silent (host gone, link cut) never closes its connections itself. With
// one source there is nowhere better to go, so it is waited for.
constexpr absl::Duration kStallTimeout = absl::Seconds(10);

}  // namespace

// Everything the I/O thread owns. Created on that thread (the ring is
// SINGLE_ISSUER) and destroyed there. Member order is cleanup order: the
// ring goes first, so no operation can still point into a connection.
class Fetcher::Loop {
 public:
  struct Connection {
    bool demand = false;
    size_t replica = 0;  // while up or closing
    UniqueFd fd;
    bool up = false;
    bool closing = false;  // shut down; waiting for its operations to finish
    std::string out;       // frames not yet handed to the kernel
    std::string sending;   // the frames of the send in flight
    size_t sent = 0;
    bool send_inflight = false;
    // Last time bytes arrived, or the first request went out on an idle
    // connection: for kStallTimeout.
    absl::Time last_progress = absl::InfinitePast();
    std::vector<uint8_t> in;
    size_t in_start = 0;  // bytes before this are parsed
    size_t in_len = 0;    // bytes received
    bool recv_inflight = false;
    absl::flat_hash_map<uint64_t, Request> outstanding;
    absl::Time retry_at = absl::InfinitePast();
    absl::Duration backoff = kMinBackoff;
    size_t round_failures = 0;  // failed dials since the last backoff
    // A dial runs on a thread of its own, so that a server that does not
    // answer holds up no other connection; the loop takes its result.
    bool dialing = false;
    std::thread dial_thread;
    bool warned = false;
    std::string last_retry_error;  // logged once per distinct reason
    // A bad reply closes the connection; the next one waits this long,
    // which doubles with every bad reply and resets with a good one, so a
    // server that keeps lying is not redialed in a tight loop.
    bool rejected = false;
    absl::Duration reject_backoff = kMinBackoff;
  };

  Loop(Fetcher* fetcher, std::unique_ptr<IoRing> ring, DialedSource first)
      : fetcher_(fetcher), conns_(1 + fetcher->options_.bulk_connections), ring_(std::move(ring)) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].demand = i == 0;
      conns_[i].in.resize(kRecvBuffer);
    }
    const uint64_t buffers = conns_.size() * kRecvBuffer;
    room_ = fetcher->options_.max_memory > buffers ? fetcher->options_.max_memory - buffers : 0;
    Up(conns_[0], std::move(first.fd), fetcher_->replicas_.current());
  }

  void Run();

 private:
  void ArmWake();
  void Distribute();
  void Pump(size_t index);
  void Reconnect(size_t index);
  // Takes the results of finished dials.
  void FinishDials();
  void OnDialed(size_t index, size_t replica, absl::StatusOr<DialedSource> dialed);
  void Up(Connection& c, UniqueFd fd, size_t replica);
  // Fails the demand fetches whose deadline passed; returns the next
  // deadline still ahead.
  absl::Time ExpireDemand();
  // Fails connections stalled for kStallTimeout when there are replicas;
  // returns when the next one would be.
  absl::Time FailStalled();
  void Charge(uint64_t bytes);
  void Refund(uint64_t bytes);

  void Fail(size_t index, const absl::Status& why);
  // The server sent what the protocol forbids: logged as an error (a bug
  // on the other end, not an outage), then handled like a lost connection.
  void Reject(size_t index, const absl::Status& why);
  void MaybeFinishClose(size_t index);
  void OnRecv(size_t index, int res);
  void OnSend(size_t index, int res);
  // An error means the frame breaks the protocol: drop the connection.
  absl::Status HandleFrame(Connection& c, const protocol::FrameHeader& header,
                           std::span<const uint8_t> body);
  void FailAll(const absl::Status& status);

  Fetcher* const fetcher_;
  std::vector<Connection> conns_;
  std::unique_ptr<IoRing> ring_;
  uint64_t wake_value_ = 0;
  uint64_t next_tag_ = 1;
  bool detached_ = false;
  uint64_t room_ = 0;      // for replies owed: max_memory less the buffers
  uint64_t inflight_ = 0;  // ReplyCost of every outstanding request

  struct DialResult {
    size_t conn;
    size_t replica;
    absl::StatusOr<DialedSource> dialed;
  };
  absl::Mutex dial_mu_;
  std::vector<DialResult> dial_results_ ABSL_GUARDED_BY(dial_mu_);
};

void Fetcher::Loop::Up(Connection& c, UniqueFd fd, size_t replica) {
  c.fd = std::move(fd);
  c.replica = replica;
  c.round_failures = 0;
  fetcher_->replicas_.ConnectionUp(replica);
  fetcher_->failing_fast_.store(false, std::memory_order_relaxed);
  c.up = true;
  c.closing = false;
  c.in_start = 0;
  c.in_len = 0;
  c.backoff = kMinBackoff;
  if (c.warned)
    LogInfo("page server %s: connection restored", fetcher_->replicas_.address(replica).ToString());
  c.warned = false;
  c.last_retry_error.clear();
  fetcher_->connections_up_.fetch_add(1, std::memory_order_relaxed);
}

void Fetcher::Loop::ArmWake() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_read(sqe, fetcher_->wake_fd_.get(), &wake_value_, sizeof wake_value_, 0);
  io_uring_sqe_set_data64(sqe, Tag(kWake, 0));
}

void Fetcher::Loop::Run() {
  ArmWake();
  bool stopping = false;
  while (!stopping) {
    bool detach = false;
    {
      absl::MutexLock lock(&fetcher_->mu_);
      stopping = fetcher_->stopping_;
      detach = fetcher_->detached_ && !detached_;
    }
    if (detach) {
      detached_ = true;
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (conns_[i].up) Fail(i, absl::OkStatus());
      }
    }
    if (stopping) break;
    FinishDials();
    if (!detached_) {
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (!conns_[i].up && !conns_[i].closing && !conns_[i].dialing &&
            absl::Now() >= conns_[i].retry_at) {
          Reconnect(i);
        }
      }
    }
    absl::Time wake_at = std::min(ExpireDemand(), FailStalled());
    Distribute();
    for (size_t i = 0; i < conns_.size(); ++i) Pump(i);

    if (!detached_) {
      for (const Connection& c : conns_) {
        if (!c.up && !c.closing && !c.dialing) wake_at = std::min(wake_at, c.retry_at);
      }
    }
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
      const uint64_t data = io_uring_cqe_get_data64(cqe);
      const size_t index = data >> 8;
      switch (static_cast<Op>(data & 0xff)) {
        case kWake:
          ArmWake();
          break;
        case kRecv:
          OnRecv(index, cqe->res);
          break;
        case kSend:
          OnSend(index, cqe->res);
          break;
      }
    }
    io_uring_cq_advance(ring_->get(), seen);
  }
  for (size_t i = 0; i < conns_.size(); ++i) {
    if (conns_[i].up) Fail(i, absl::OkStatus());
    // A dial ends within its timeouts; what it opened closes with it.
    if (conns_[i].dial_thread.joinable()) conns_[i].dial_thread.join();
  }
  FailAll(absl::CancelledError("lazyramd is shutting down"));
}

void Fetcher::Loop::Reconnect(size_t index) {
  Connection& c = conns_[index];
  c.dialing = true;
  c.dial_thread = std::thread([this, index] {
    pthread_setname_np(pthread_self(), "lazyram-dial");
    size_t replica = 0;
    absl::StatusOr<DialedSource> dialed =
        fetcher_->replicas_.DialCurrent(fetcher_->options_.connect_timeout, &replica);
    {
      absl::MutexLock lock(&dial_mu_);
      dial_results_.push_back({index, replica, std::move(dialed)});
    }
    fetcher_->Wake();
  });
}

void Fetcher::Loop::FinishDials() {
  std::vector<DialResult> results;
  {
    absl::MutexLock lock(&dial_mu_);
    results.swap(dial_results_);
  }
  for (DialResult& r : results) {
    Connection& c = conns_[r.conn];
    c.dial_thread.join();
    c.dialing = false;
    OnDialed(r.conn, r.replica, std::move(r.dialed));
  }
}

void Fetcher::Loop::OnDialed(size_t index, size_t replica, absl::StatusOr<DialedSource> dialed) {
  Connection& c = conns_[index];
  if (detached_) return;  // every page is local: the new connection closes
  absl::Status status = dialed.status();
  if (status.ok()) {
    Up(c, std::move(dialed->fd), replica);
    return;
  }
  // Once per reason, not once per outage: a server that comes back with
  // the wrong regions must be reported even after "connection refused".
  if (status.message() != c.last_retry_error) {
    LogWarning("%s connection: %s; retrying", c.demand ? "demand" : "bulk", status.message());
    c.last_retry_error = std::string(status.message());
    c.warned = true;
  }
  // Round robin: the next replica is tried at once, and the backoff grows
  // once every replica has failed (at once with a single source).
  if (++c.round_failures < fetcher_->replicas_.size()) {
    c.retry_at = absl::Now();
    return;
  }
  c.round_failures = 0;
  c.retry_at = absl::Now() + c.backoff;
  c.backoff = std::min(c.backoff * 2, kMaxBackoff);
}

absl::Time Fetcher::Loop::ExpireDemand() {
  if (fetcher_->options_.fetch_timeout == absl::InfiniteDuration()) return absl::InfiniteFuture();
  const absl::Time now = absl::Now();
  absl::Time next = absl::InfiniteFuture();
  std::vector<FetchCallback> expired;
  {
    absl::MutexLock lock(&fetcher_->mu_);
    auto& queue = fetcher_->demand_queue_;
    for (auto it = queue.begin(); it != queue.end();) {
      if (it->deadline <= now) {
        expired.push_back(std::move(it->done));
        it = queue.erase(it);
      } else {
        next = std::min(next, it->deadline);
        ++it;
      }
    }
  }
  // Sent ones stay outstanding, so that their late reply is recognised
  // (and dropped) rather than taken for a protocol error.
  for (auto& [tag, request] : conns_[0].outstanding) {
    if (request.expired) continue;
    if (request.deadline <= now) {
      request.expired = true;
      expired.push_back(std::move(request.done));
    } else {
      next = std::min(next, request.deadline);
    }
  }
  if (expired.empty()) return next;
  fetcher_->fetch_timeouts_.fetch_add(expired.size(), std::memory_order_relaxed);
  fetcher_->failing_fast_.store(true, std::memory_order_relaxed);
  LogWarning("%d demand fetch(es) not answered within --fetch-timeout %s: failed", expired.size(),
             absl::FormatDuration(fetcher_->options_.fetch_timeout));
  const absl::Status error =
      absl::UnavailableError(absl::StrCat("the page server did not answer within --fetch-timeout ",
                                          absl::FormatDuration(fetcher_->options_.fetch_timeout)));
  for (FetchCallback& done : expired) done(error);
  return next;
}

absl::Time Fetcher::Loop::FailStalled() {
  absl::Time next = absl::InfiniteFuture();
  if (fetcher_->replicas_.size() < 2) return next;
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < conns_.size(); ++i) {
    Connection& c = conns_[i];
    if (!c.up || c.outstanding.empty()) continue;
    if (now - c.last_progress >= kStallTimeout) {
      Fail(i, absl::UnavailableError(
                  absl::StrCat("no reply for ", absl::FormatDuration(kStallTimeout))));
    } else {
      next = std::min(next, c.last_progress + kStallTimeout);
    }
  }
  return next;
}

void Fetcher::Loop::Charge(uint64_t bytes) {
  inflight_ += bytes;
  fetcher_->memory_inflight_.store(inflight_, std::memory_order_relaxed);
  if (inflight_ > fetcher_->memory_peak_.load(std::memory_order_relaxed)) {
    fetcher_->memory_peak_.store(inflight_, std::memory_order_relaxed);
  }
}

void Fetcher::Loop::Refund(uint64_t bytes) {
  inflight_ -= bytes;
  fetcher_->memory_inflight_.store(inflight_, std::memory_order_relaxed);
}

void Fetcher::Loop::Distribute() {
  absl::MutexLock lock(&fetcher_->mu_);
  auto send = [this](Connection& c, Request r) {
    const uint64_t tag = next_tag_++;
    protocol::AppendRead(tag, {r.region, r.count, r.first_page, r.priority}, &c.out);
    Charge(ReplyCost(r.count));
    if (c.outstanding.empty()) c.last_progress = absl::Now();
    c.outstanding.emplace(tag, std::move(r));
  };
  // A request that does not fit waits for replies to land; one alone in
  // flight is always let through, so a tiny cap still makes progress.
  auto fits = [this](Request& r, uint64_t limit) {
    if (inflight_ == 0 || inflight_ + ReplyCost(r.count) <= limit) return true;
    if (!r.waited) {
      r.waited = true;
      fetcher_->memory_waits_.fetch_add(1, std::memory_order_relaxed);
    }
    return false;
  };
  auto& demand = fetcher_->demand_queue_;
  while (conns_[0].up && !demand.empty() && fits(demand.front(), room_)) {
    send(conns_[0], std::move(demand.front()));
    demand.pop_front();
  }
  // Bulk leaves a quarter of the room to demand fetches.
  auto& bulk = fetcher_->bulk_queue_;
  while (!bulk.empty() && fits(bulk.front(), room_ - room_ / 4)) {
    Connection* best = nullptr;
    for (size_t i = 1; i < conns_.size(); ++i) {
      Connection& c = conns_[i];
      if (c.up && (best == nullptr || c.outstanding.size() < best->outstanding.size())) best = &c;
    }
    if (best == nullptr) break;
    send(*best, std::move(bulk.front()));
    bulk.pop_front();
  }
}

void Fetcher::Loop::Pump(size_t index) {
  Connection& c = conns_[index];
  if (!c.up) return;
  if (!c.send_inflight && !c.out.empty()) {
    std::swap(c.out, c.sending);
    c.out.clear();
    c.sent = 0;
    c.send_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, c.fd.get(), c.sending.data(), c.sending.size(), MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Tag(kSend, index));
  }
  if (!c.recv_inflight) {
    c.recv_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_recv(sqe, c.fd.get(), c.in.data() + c.in_len, c.in.size() - c.in_len, 0);
    io_uring_sqe_set_data64(sqe, Tag(kRecv, index));
  }
}

void Fetcher::Loop::Fail(size_t index, const absl::Status& why) {
  Connection& c = conns_[index];
  if (!c.up) return;
  if (!why.ok()) {
    LogWarning("%s connection to %s lost: %s", c.demand ? "demand" : "bulk",
               fetcher_->replicas_.address(c.replica).ToString(), why.message());
    c.warned = true;
  }
  c.up = false;
  c.closing = true;
  fetcher_->connections_up_.fetch_sub(1, std::memory_order_relaxed);
  fetcher_->replicas_.ConnectionDown(c.replica, /*failed=*/!why.ok() || c.rejected);
  // Wake the recv and send in flight; the fd closes once they are done.
  shutdown(c.fd.get(), SHUT_RDWR);
  {
    // Requests are idempotent reads: send them again once reconnected.
    absl::MutexLock lock(&fetcher_->mu_);
    auto& queue = c.demand ? fetcher_->demand_queue_ : fetcher_->bulk_queue_;
    for (auto& [tag, request] : c.outstanding) {
      Refund(ReplyCost(request.count));
      if (!request.expired) queue.push_front(std::move(request));
    }
  }
  c.outstanding.clear();
  c.out.clear();
  MaybeFinishClose(index);
}

void Fetcher::Loop::Reject(size_t index, const absl::Status& why) {
  Connection& c = conns_[index];
  if (!c.up) return;
  LogError("%s connection to %s: bad reply from the page server: %s; reconnecting",
           c.demand ? "demand" : "bulk", fetcher_->replicas_.address(c.replica).ToString(),
           why.message());
  c.warned = true;
  c.rejected = true;
  Fail(index, absl::OkStatus());
}

void Fetcher::Loop::MaybeFinishClose(size_t index) {
  Connection& c = conns_[index];
  if (!c.closing || c.recv_inflight || c.send_inflight) return;
  c.fd.reset();
  c.closing = false;
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

void Fetcher::Loop::OnSend(size_t index, int res) {
  Connection& c = conns_[index];
  c.send_inflight = false;
  if (c.closing) return MaybeFinishClose(index);
  if (res <= 0) return Fail(index, ErrnoStatus(res == 0 ? EPIPE : -res, "send"));
  c.sent += static_cast<size_t>(res);
  if (c.sent < c.sending.size()) {
    c.send_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_send(sqe, c.fd.get(), c.sending.data() + c.sent, c.sending.size() - c.sent,
                       MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, Tag(kSend, index));
    return;
  }
  c.sending.clear();
}

void Fetcher::Loop::OnRecv(size_t index, int res) {
  Connection& c = conns_[index];
  c.recv_inflight = false;
  if (c.closing) return MaybeFinishClose(index);
  if (res == 0) return Fail(index, absl::UnavailableError("page server closed the connection"));
  if (res < 0) return Fail(index, ErrnoStatus(-res, "recv"));
  c.in_len += static_cast<size_t>(res);
  c.last_progress = absl::Now();
  fetcher_->failing_fast_.store(false, std::memory_order_relaxed);
  size_t pos = c.in_start;
  while (c.in_len - pos >= protocol::kHeaderSize) {
    absl::StatusOr<protocol::FrameHeader> header = protocol::DecodeHeader(
        std::span(c.in.data() + pos, protocol::kHeaderSize), protocol::kMaxFrameBody);
    if (!header.ok()) return Reject(index, header.status());
    const size_t frame = protocol::kHeaderSize + header->body_len;
    if (c.in_len - pos < frame) break;
    absl::Status s = HandleFrame(
        c, *header, std::span(c.in.data() + pos + protocol::kHeaderSize, header->body_len));
    if (!s.ok()) return Reject(index, s);
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

absl::Status Fetcher::Loop::HandleFrame(Connection& c, const protocol::FrameHeader& header,
                                        std::span<const uint8_t> body) {
  auto it = c.outstanding.find(header.tag);
  if (it == c.outstanding.end()) {
    return absl::InvalidArgumentError(absl::StrCat("reply with unknown tag ", header.tag));
  }
  if (header.type == FrameType::kError) {
    absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(body);
    if (!error.ok()) return error.status();
    Request request = std::move(it->second);
    c.outstanding.erase(it);
    Refund(ReplyCost(request.count));
    if (request.expired) return absl::OkStatus();
    if (error->code == protocol::ErrorCode::kBusy) {
      absl::MutexLock lock(&fetcher_->mu_);
      (c.demand ? fetcher_->demand_queue_ : fetcher_->bulk_queue_).push_back(std::move(request));
      return absl::OkStatus();
    }
    LogError("page server refused a read of region %u pages %u+%u: %s", request.region,
             request.first_page, request.count, error->message);
    request.done(protocol::ErrorToStatus(*error));
    return absl::OkStatus();
  }
  if (header.type != FrameType::kPages) {
    return absl::InvalidArgumentError("unexpected frame type from the page server");
  }
  absl::StatusOr<protocol::PagesView> pages = protocol::DecodePages(body);
  if (!pages.ok()) {
    if (absl::IsDataLoss(pages.status())) {
      fetcher_->checksum_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    return pages.status();
  }
  const Request& request = it->second;
  if (pages->region != request.region || pages->first_page != request.first_page ||
      pages->count != request.count) {
    return absl::InvalidArgumentError("reply does not match its request");
  }
  Request done = std::move(it->second);
  c.outstanding.erase(it);
  Refund(ReplyCost(done.count));
  if (done.expired) return absl::OkStatus();  // its waiters were told already
  done.done(FetchedPages{pages->first_page, pages->count, pages->flags, pages->payload});
  return absl::OkStatus();
}

void Fetcher::Loop::FailAll(const absl::Status& status) {
  std::deque<Request> demand, bulk;
  {
    absl::MutexLock lock(&fetcher_->mu_);
    std::swap(demand, fetcher_->demand_queue_);
    std::swap(bulk, fetcher_->bulk_queue_);
  }
  for (Request& r : demand) r.done(status);
  for (Request& r : bulk) r.done(status);
}

// --- Fetcher ---------------------------------------------------------------

Fetcher::Fetcher(Options options)
    : options_(std::move(options)), replicas_(options_.addresses, options_.auth_key) {}

uint64_t Fetcher::MinMemory(int bulk_connections) {
  // The buffers, and one maximal request on each connection.
  return static_cast<uint64_t>(1 + bulk_connections) *
         (kRecvBuffer + ReplyCost(protocol::kMaxPagesPerRequest));
}

absl::StatusOr<std::unique_ptr<Fetcher>> Fetcher::Connect(Options options) {
  if (options.addresses.empty()) return absl::InvalidArgumentError("no page server to fetch from");
  std::unique_ptr<Fetcher> fetcher(new Fetcher(std::move(options)));
  absl::StatusOr<DialedSource> first =
      fetcher->replicas_.DialAtStart(fetcher->options_.connect_timeout);
  if (!first.ok()) return first.status();
  fetcher->wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!fetcher->wake_fd_.valid()) return ErrnoStatus(errno, "eventfd");
  // The ring must be created on the thread that will own it.
  absl::Notification ready;
  absl::Status ring_status;
  Fetcher* self = fetcher.get();
  fetcher->thread_ = std::thread([self, &ready, &ring_status, first = *std::move(first)]() mutable {
    pthread_setname_np(pthread_self(), "lazyram-fetch");
    absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(256);
    if (!ring.ok()) {
      ring_status = ring.status();
      ready.Notify();
      return;
    }
    self->loop_ = std::make_unique<Loop>(self, *std::move(ring), std::move(first));
    ready.Notify();
    self->loop_->Run();
    self->loop_.reset();
  });
  ready.WaitForNotification();
  if (!ring_status.ok()) {
    fetcher->thread_.join();
    return ring_status;
  }
  return fetcher;
}

void Fetcher::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  Wake();
  if (thread_.joinable()) thread_.join();
}

Fetcher::~Fetcher() { Shutdown(); }

void Fetcher::Wake() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_.get(), &one, sizeof one);
}

void Fetcher::Fetch(uint32_t region, uint64_t first_page, uint32_t count, Priority priority,
                    FetchCallback done) {
  // The outage that timed a fetch out goes on: fail at once rather than
  // make every read wait the timeout again.
  if (priority == Priority::kDemand && failing_fast_.load(std::memory_order_relaxed)) {
    fetch_timeouts_.fetch_add(1, std::memory_order_relaxed);
    done(absl::UnavailableError(
        absl::StrCat("the page server did not answer within --fetch-timeout ",
                     absl::FormatDuration(options_.fetch_timeout), " and has not answered since")));
    return;
  }
  bool refused = false;
  bool was_empty = false;
  {
    absl::MutexLock lock(&mu_);
    refused = detached_ || stopping_;
    if (!refused) {
      std::deque<Request>& queue = priority == Priority::kDemand ? demand_queue_ : bulk_queue_;
      was_empty = queue.empty();
      Request request{region, first_page, count, priority, std::move(done)};
      if (priority == Priority::kDemand && options_.fetch_timeout != absl::InfiniteDuration()) {
        request.deadline = absl::Now() + options_.fetch_timeout;
      }
      queue.push_back(std::move(request));
    }
  }
  if (refused) {
    done(absl::FailedPreconditionError("the page source is detached"));
    return;
  }
  // A queue that already held requests has a wake-up pending (or waits for
  // its connection to come back): one eventfd write per batch, not per fault.
  if (was_empty) Wake();
}

void Fetcher::Detach() {
  {
    absl::MutexLock lock(&mu_);
    detached_ = true;
  }
  Wake();
}

SourceState Fetcher::state() const {
  {
    absl::MutexLock lock(&mu_);
    if (detached_) return SourceState::kDetached;
  }
  return connections_up_.load(std::memory_order_relaxed) == 1 + options_.bulk_connections
             ? SourceState::kConnected
             : SourceState::kReconnecting;
}

Fetcher::Stats Fetcher::stats() const {
  Stats s;
  s.checksum_errors = checksum_errors_.load(std::memory_order_relaxed);
  s.fetch_timeouts = fetch_timeouts_.load(std::memory_order_relaxed);
  s.memory_cap = options_.max_memory;
  s.memory_buffers = (1 + static_cast<uint64_t>(options_.bulk_connections)) * kRecvBuffer;
  s.memory_inflight = memory_inflight_.load(std::memory_order_relaxed);
  s.memory_peak = s.memory_buffers + memory_peak_.load(std::memory_order_relaxed);
  s.memory_waits = memory_waits_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace lazyram
