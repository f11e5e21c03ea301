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
constexpr size_t kRecvBuffer = 8 * (protocol::kHeaderSize + protocol::kMaxFrameBody);
constexpr absl::Duration kMinBackoff = absl::Milliseconds(50);
constexpr absl::Duration kMaxBackoff = absl::Seconds(2);

}  // namespace

// Everything the I/O thread owns. Created on that thread (the ring is
// SINGLE_ISSUER) and destroyed there. Member order is cleanup order: the
// ring goes first, so no operation can still point into a connection.
class Fetcher::Loop {
 public:
  struct Connection {
    bool demand = false;
    UniqueFd fd;
    bool up = false;
    bool closing = false;  // shut down; waiting for its operations to finish
    std::string out;       // frames not yet handed to the kernel
    std::string sending;   // the frames of the send in flight
    size_t sent = 0;
    bool send_inflight = false;
    std::vector<uint8_t> in;
    size_t in_start = 0;  // bytes before this are parsed
    size_t in_len = 0;    // bytes received
    bool recv_inflight = false;
    absl::flat_hash_map<uint64_t, Request> outstanding;
    absl::Time retry_at = absl::InfinitePast();
    absl::Duration backoff = kMinBackoff;
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
    Up(conns_[0], std::move(first.fd));
  }

  void Run();

 private:
  void ArmWake();
  void Distribute();
  void Pump(size_t index);
  void Reconnect(size_t index);
  void Up(Connection& c, UniqueFd fd);
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
};

void Fetcher::Loop::Up(Connection& c, UniqueFd fd) {
  c.fd = std::move(fd);
  c.up = true;
  c.closing = false;
  c.in_start = 0;
  c.in_len = 0;
  c.backoff = kMinBackoff;
  if (c.warned)
    LogInfo("page server %s: connection restored", fetcher_->options_.address.ToString());
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
    if (!detached_) {
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (!conns_[i].up && !conns_[i].closing && absl::Now() >= conns_[i].retry_at) {
          Reconnect(i);
        }
      }
    }
    Distribute();
    for (size_t i = 0; i < conns_.size(); ++i) Pump(i);

    absl::Time next_retry = absl::InfiniteFuture();
    if (!detached_) {
      for (const Connection& c : conns_) {
        if (!c.up && !c.closing) next_retry = std::min(next_retry, c.retry_at);
      }
    }
    io_uring_cqe* cqe = nullptr;
    if (next_retry == absl::InfiniteFuture()) {
      io_uring_submit_and_wait(ring_->get(), 1);
    } else {
      const int64_t ns = std::max<int64_t>(0, absl::ToInt64Nanoseconds(next_retry - absl::Now()));
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
  }
  FailAll(absl::CancelledError("lazyramd is shutting down"));
}

void Fetcher::Loop::Reconnect(size_t index) {
  Connection& c = conns_[index];
  absl::StatusOr<DialedSource> dialed =
      DialSource(fetcher_->options_.address, fetcher_->options_.connect_timeout,
                 fetcher_->options_.auth_key.get());
  absl::Status status = dialed.status();
  if (status.ok()) {
    if (std::string change = RegionTableChange(fetcher_->welcome_, dialed->welcome);
        !change.empty()) {
      status = absl::FailedPreconditionError(absl::StrCat(
          "the page server now serves different regions than at mount time (", change, ")"));
    }
  }
  if (status.ok()) {
    Up(c, std::move(dialed->fd));
    return;
  }
  // Once per reason, not once per outage: a server that comes back with
  // the wrong regions must be reported even after "connection refused".
  if (status.message() != c.last_retry_error) {
    LogWarning("%s connection: %s; retrying", c.demand ? "demand" : "bulk", status.message());
    c.last_retry_error = std::string(status.message());
    c.warned = true;
  }
  c.retry_at = absl::Now() + c.backoff;
  c.backoff = std::min(c.backoff * 2, kMaxBackoff);
}

void Fetcher::Loop::Distribute() {
  absl::MutexLock lock(&fetcher_->mu_);
  auto send = [this](Connection& c, Request r) {
    const uint64_t tag = next_tag_++;
    protocol::AppendRead(tag, {r.region, r.count, r.first_page, r.priority}, &c.out);
    c.outstanding.emplace(tag, std::move(r));
  };
  if (conns_[0].up) {
    for (Request& r : fetcher_->demand_queue_) send(conns_[0], std::move(r));
    fetcher_->demand_queue_.clear();
  }
  while (!fetcher_->bulk_queue_.empty()) {
    Connection* best = nullptr;
    for (size_t i = 1; i < conns_.size(); ++i) {
      Connection& c = conns_[i];
      if (c.up && (best == nullptr || c.outstanding.size() < best->outstanding.size())) best = &c;
    }
    if (best == nullptr) break;
    send(*best, std::move(fetcher_->bulk_queue_.front()));
    fetcher_->bulk_queue_.pop_front();
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
               fetcher_->options_.address.ToString(), why.message());
    c.warned = true;
  }
  c.up = false;
  c.closing = true;
  fetcher_->connections_up_.fetch_sub(1, std::memory_order_relaxed);
  // Wake the recv and send in flight; the fd closes once they are done.
  shutdown(c.fd.get(), SHUT_RDWR);
  {
    // Requests are idempotent reads: send them again once reconnected.
    absl::MutexLock lock(&fetcher_->mu_);
    auto& queue = c.demand ? fetcher_->demand_queue_ : fetcher_->bulk_queue_;
    for (auto& [tag, request] : c.outstanding) queue.push_front(std::move(request));
  }
  c.outstanding.clear();
  c.out.clear();
  MaybeFinishClose(index);
}

void Fetcher::Loop::Reject(size_t index, const absl::Status& why) {
  Connection& c = conns_[index];
  if (!c.up) return;
  LogError("%s connection to %s: bad reply from the page server: %s; reconnecting",
           c.demand ? "demand" : "bulk", fetcher_->options_.address.ToString(), why.message());
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

Fetcher::Fetcher(Options options, protocol::Welcome welcome)
    : options_(std::move(options)), welcome_(std::move(welcome)) {}

absl::StatusOr<std::unique_ptr<Fetcher>> Fetcher::Start(Options options, DialedSource first) {
  std::unique_ptr<Fetcher> fetcher(new Fetcher(std::move(options), first.welcome));
  fetcher->wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!fetcher->wake_fd_.valid()) return ErrnoStatus(errno, "eventfd");
  // The ring must be created on the thread that will own it.
  absl::Notification ready;
  absl::Status ring_status;
  Fetcher* self = fetcher.get();
  fetcher->thread_ = std::thread([self, &ready, &ring_status, first = std::move(first)]() mutable {
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
  bool refused = false;
  bool was_empty = false;
  {
    absl::MutexLock lock(&mu_);
    refused = detached_ || stopping_;
    if (!refused) {
      std::deque<Request>& queue = priority == Priority::kDemand ? demand_queue_ : bulk_queue_;
      was_empty = queue.empty();
      queue.push_back({region, first_page, count, priority, std::move(done)});
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

}  // namespace lazyram
