#include "daemon/server/server_loop.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/base/net_address.h"
#include "daemon/base/thread_priority.h"
#include "daemon/server/server_loop_connection.h"

namespace lazyram {

using server_loop_internal::Phase;

namespace {

constexpr size_t kMaxIov = 64;  // frames per sendmsg
// Bytes per sendmsg. The copy into the socket runs inline in
// io_uring_enter, where this kernel (preempt=none) does not switch to a
// woken thread: a bulk send of megabytes would hold a CPU that the demand
// loop, or the client's demand thread on this host, needs at once.
constexpr size_t kMaxSendBytes = 256 * 1024;
// A refused connection (over --max-connections) is given this long to read
// its ERROR and hang up before it is closed; closing with its HELLO still
// unread would reset the connection and could lose the ERROR.
constexpr absl::Duration kRefusedLinger = absl::Seconds(2);

}  // namespace

ServerLoop::ServerLoop(Role role, ServeContext* context, ServerLoop* demand, EventFd wake)
    : role_(role), context_(context), demand_(demand), wake_(std::move(wake)) {
  protocol::Welcome welcome = *context->welcome;
  welcome.features = context->options->auth_key != nullptr ? protocol::kFeatureAuth : 0;
  protocol::AppendWelcome(welcome, &welcome_frame_);
  // Deadlines are checked on a tick: fine enough for timeouts of seconds,
  // and one timer for the whole loop, not one per connection.
  const absl::Duration tick =
      std::clamp(context->options->handshake_timeout / 4, absl::Milliseconds(10), absl::Seconds(1));
  tick_ts_.tv_sec = absl::ToInt64Seconds(tick);
  tick_ts_.tv_nsec = absl::ToInt64Nanoseconds(tick - absl::Seconds(tick_ts_.tv_sec));
}

ServerLoop::~ServerLoop() {
  ring_.reset();  // cancels what is in flight before the buffers go
}

void ServerLoop::Stop() {
  {
    absl::MutexLock lock(&inbox_mu_);
    stop_ = true;
  }
  wake_.Signal();
}

void ServerLoop::Reply(Connection* c, Frame frame) { c->out.push_back(std::move(frame)); }

void ServerLoop::ArmAccept() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_accept(sqe, context_->listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  Submit(&accept_op_, sqe);
}

void ServerLoop::ArmWake() {
  io_uring_sqe* sqe = ring_->GetSqe();
  wake_.PrepareRead(sqe);
  Submit(&wake_op_, sqe);
}

void ServerLoop::ArmTick() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  Submit(&tick_op_, sqe);
}

absl::Status ServerLoop::Run() {
  absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(256);
  if (!ring.ok()) return ring.status();
  ring_ = *std::move(ring);
  // Bulk transfers give way to the demand loop (and to whatever else this
  // host runs) whenever both want a CPU; a demand READ is served as soon
  // as it arrives.
  if (absl::Status s = role_ == Role::kMain ? MakeThreadBackground() : MakeThreadLatencySensitive();
      !s.ok()) {
    LogWarning("serving thread keeps the default priority: %s", s.message());
  }
  if (role_ == Role::kMain) {
    ArmAccept();
    ArmTick();
  }
  ArmWake();
  for (;;) {
    {
      absl::MutexLock lock(&inbox_mu_);
      if (stop_) break;
    }
    io_uring_submit_and_wait(ring_->get(), 1);
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring_->get(), head, cqe) {
      ++seen;
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      switch (op->kind) {
        case Kind::kWake:
          OnWake();
          break;
        case Kind::kAccept:
          OnAccept(cqe->res);
          break;
        case Kind::kRecv:
          OnRecv(op->conn, cqe->res);
          break;
        case Kind::kSend:
          OnSend(op->conn, cqe->res);
          break;
        case Kind::kRead:
          OnRead(reinterpret_cast<ReadOp*>(op), cqe->res);
          break;
        case Kind::kTick:
          OnTick();
          break;
      }
    }
    io_uring_cq_advance(ring_->get(), seen);
    const size_t before = conns_.size();
    conns_.remove_if([](const Connection& c) { return c.dead; });
    if (role_ == Role::kDemand)
      context_->handed_off.fetch_sub(static_cast<int>(before - conns_.size()));
  }
  return absl::OkStatus();
}

void ServerLoop::OnWake() {
  ArmWake();
  std::list<Connection> adopted;
  {
    absl::MutexLock lock(&inbox_mu_);
    adopted.splice(adopted.end(), inbox_);
  }
  while (!adopted.empty()) {
    Connection* c = &adopted.front();
    conns_.splice(conns_.end(), adopted, adopted.begin());
    // Frames that came with the handshake are parsed here.
    Parse(c);
    Pump(c);
  }
}

void ServerLoop::Adopt(std::list<Connection>* from, std::list<Connection>::iterator it) {
  context_->handed_off.fetch_add(1);
  {
    absl::MutexLock lock(&inbox_mu_);
    inbox_.splice(inbox_.end(), *from, it);
  }
  wake_.Signal();
}

void ServerLoop::OnAccept(int res) {
  ArmAccept();
  if (res < 0) {
    LogWarning("accept: %s", std::strerror(-res));
    return;
  }
  UniqueFd fd(res);
  const PageServer::Options& options = *context_->options;
  // Closing ones count: they still hold their fd.
  int serving = context_->handed_off.load(), refused = 0;
  for (const Connection& c : conns_) ++(c.phase == Phase::kRefused ? refused : serving);
  const bool over = serving >= options.max_connections;
  // Refused connections linger briefly; past a second cap they get nothing.
  if (over && refused >= options.max_connections) return;
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Connection& c = conns_.emplace_back();
  c.recv_op.conn = &c;
  c.send_op.conn = &c;
  c.fd = std::move(fd);
  c.peer = PeerAddress(c.fd.get());
  c.deadline = absl::Now() + options.handshake_timeout;
  if (over) {
    uint64_t more = 0;
    if (refused_log_.Allow(&more)) {
      LogWarning("refusing client %s: too many connections (--max-connections %d)%s", c.peer,
                 options.max_connections, LogLimiter::Suppressed(more));
    }
    c.phase = Phase::kRefused;
    c.deadline = absl::Now() + std::min(options.handshake_timeout, kRefusedLinger);
    std::string reply;
    protocol::AppendError(
        0, {protocol::ErrorCode::kBusy, absl::StrCat("too many connections (", serving, ")")},
        &reply);
    Reply(&c, reply);
  }
  Pump(&c);
}

void ServerLoop::OnTick() {
  ArmTick();
  const absl::Time now = absl::Now();
  for (Connection& c : conns_) {
    if (c.closing || c.phase == Phase::kReady || now < c.deadline) continue;
    if (c.phase != Phase::kRefused) {
      uint64_t more = 0;
      if (timeout_log_.Allow(&more)) {
        LogWarning("dropping client %s: no handshake within %s (--handshake-timeout)%s", c.peer,
                   absl::FormatDuration(context_->options->handshake_timeout),
                   LogLimiter::Suppressed(more));
      }
    }
    Close(&c, "");
  }
}

void ServerLoop::Pump(Connection* c) {
  if (c->closing) return;
  if (c->handoff) {
    // Sends and reads finish here first; then the connection, with its
    // unsent WELCOME and any frames after it, moves to the demand loop.
    if (c->recv_inflight || c->send_inflight || c->reads_inflight > 0) return;
    c->handoff = false;
    auto it =
        std::find_if(conns_.begin(), conns_.end(), [c](const Connection& x) { return &x == c; });
    return demand_->Adopt(&conns_, it);
  }
  if (!c->send_inflight && !c->out.empty()) {
    // One sendmsg over the queued frames: no copy into a send buffer.
    c->iov.clear();
    size_t skip = c->out_sent, bytes = 0;
    for (Frame& f : c->out) {
      if (c->iov.size() == kMaxIov || bytes == kMaxSendBytes) break;
      const size_t n = std::min(f.size - skip, kMaxSendBytes - bytes);
      c->iov.push_back({f.bytes.get() + skip, n});
      bytes += n;
      skip = 0;
    }
    c->msg = {};
    c->msg.msg_iov = c->iov.data();
    c->msg.msg_iovlen = c->iov.size();
    c->send_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_sendmsg(sqe, c->fd.get(), &c->msg, MSG_NOSIGNAL);
    Submit(&c->send_op, sqe);
  }
  if (!c->recv_inflight && c->in_len < c->in.size()) {
    c->recv_inflight = true;
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_recv(sqe, c->fd.get(), c->in.data() + c->in_len, c->in.size() - c->in_len, 0);
    Submit(&c->recv_op, sqe);
  }
}

void ServerLoop::OnRecv(Connection* c, int res) {
  c->recv_inflight = false;
  if (c->closing) return MaybeFree(c);
  if (res <= 0) return Close(c, res == 0 ? "" : std::strerror(-res));
  c->in_len += static_cast<size_t>(res);
  if (c->phase == Phase::kRefused) {
    c->in_len = 0;  // drained until the peer hangs up or the linger ends
  } else {
    Parse(c);
  }
  Pump(c);
}

void ServerLoop::OnSend(Connection* c, int res) {
  c->send_inflight = false;
  if (c->closing) return MaybeFree(c);
  if (res <= 0) return Close(c, res == 0 ? "send failed" : std::strerror(-res));
  for (size_t sent = static_cast<size_t>(res); sent > 0;) {
    const size_t left = c->out.front().size - c->out_sent;
    if (sent < left) {
      c->out_sent += sent;
      break;
    }
    sent -= left;
    c->out.pop_front();
    c->out_sent = 0;
  }
  if (c->close_after_send && c->out.empty()) return Close(c, "");
  if (c->phase == Phase::kRefused && c->out.empty() && !c->write_shut) {
    // The ERROR is out: FIN, and keep reading until the peer hangs up.
    shutdown(c->fd.get(), SHUT_WR);
    c->write_shut = true;
  }
  if (c->phase != Phase::kRefused) Parse(c);  // requests held back by the cap
  Pump(c);
}

void ServerLoop::Close(Connection* c, absl::string_view why) {
  if (!why.empty()) LogWarning("closing a client connection: %s", why);
  c->closing = true;
  shutdown(c->fd.get(), SHUT_RDWR);
  MaybeFree(c);
}

void ServerLoop::MaybeFree(Connection* c) {
  if (c->recv_inflight || c->send_inflight || c->reads_inflight > 0) {
    shutdown(c->fd.get(), SHUT_RDWR);
    return;
  }
  // Freed after the current batch of completions, which may still use it.
  c->dead = true;
}

}  // namespace lazyram
