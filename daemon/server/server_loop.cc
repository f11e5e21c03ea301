#include "daemon/server/server_loop.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/base/net_address.h"
#include "daemon/base/thread_priority.h"
#include "daemon/protocol/auth_key.h"

namespace lazyram {

using protocol::FrameType;
using protocol::kPageSize;

namespace {

// Client frames are small (AUTH is the largest); anything bigger is hostile.
constexpr uint32_t kMaxClientBody = 64;
static_assert(kMaxClientBody >= protocol::kNonceSize + protocol::kProofSize);
constexpr size_t kRecvBuffer = 64 * 1024;
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

// Where a connection is in its life. Only kReady connections may READ.
enum class Phase {
  kHello,    // waiting for HELLO
  kAuth,     // CHALLENGE sent, waiting for AUTH
  kReady,    // WELCOME sent
  kRefused,  // over --max-connections: ERROR BUSY, then closed
};

}  // namespace

// A frame queued for sending. Page replies are built in place: the file is
// read straight into the frame's payload.
struct ServerLoop::Frame {
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;
};

struct ServerLoop::ReadOp {
  Op op{Kind::kRead};
  uint64_t tag = 0;
  protocol::ReadRequest request;
  Frame frame;        // PagesFrameCapacity(count) bytes
  uint8_t* pages;     // the payload area inside `frame`
  size_t length = 0;  // bytes of the file wanted (the rest is padding)
  size_t done = 0;
};

struct ServerLoop::Connection {
  Op recv_op{Kind::kRecv};
  Op send_op{Kind::kSend};
  UniqueFd fd;
  std::string peer;  // HOST:PORT, for log lines
  Phase phase = Phase::kHello;
  absl::Time deadline;  // for the handshake (or, refused, for hanging up)
  protocol::Nonce server_nonce{};
  bool demand = false;            // HELLO asked for kFeatureDemandChannel
  bool handoff = false;           // ready; moves to the demand loop when idle here
  bool close_after_send = false;  // a fatal ERROR is queued
  bool write_shut = false;        // refused: the ERROR is out, FIN sent
  bool closing = false;
  bool dead = false;  // nothing in flight; freed at the end of the batch
  bool recv_inflight = false;
  bool send_inflight = false;
  int reads_inflight = 0;
  std::vector<uint8_t> in = std::vector<uint8_t>(kRecvBuffer);
  size_t in_len = 0;
  std::deque<Frame> out;  // the send in flight covers a prefix of these
  size_t out_sent = 0;    // bytes of out.front() already sent
  std::vector<iovec> iov;
  msghdr msg{};
};

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

void ServerLoop::FatalError(Connection* c, uint64_t tag, protocol::ErrorCode code,
                            absl::string_view message) {
  std::string reply;
  protocol::AppendError(tag, {code, std::string(message)}, &reply);
  Reply(c, reply);
  c->close_after_send = true;
}

void ServerLoop::OnHello(Connection* c, const protocol::FrameHeader& header,
                         std::span<const uint8_t> body) {
  absl::StatusOr<protocol::Hello> hello = header.type == FrameType::kHello
                                              ? protocol::DecodeHello(body)
                                              : absl::InvalidArgumentError("expected HELLO");
  if (!hello.ok()) {
    const auto code = absl::IsFailedPrecondition(hello.status()) ? protocol::ErrorCode::kBadVersion
                                                                 : protocol::ErrorCode::kBadRequest;
    return FatalError(c, header.tag, code, hello.status().message());
  }
  c->demand = (hello->features & protocol::kFeatureDemandChannel) != 0;
  if (context_->options->auth_key == nullptr) return Ready(c, welcome_frame_);
  if ((hello->features & protocol::kFeatureAuth) == 0) {
    uint64_t more = 0;
    if (no_auth_log_.Allow(&more)) {
      LogWarning("refusing client %s: it did not authenticate (no --auth-key-file?)%s", c->peer,
                 LogLimiter::Suppressed(more));
    }
    return FatalError(c, header.tag, protocol::ErrorCode::kAuthRequired,
                      "this page server requires authentication (--auth-key-file)");
  }
  absl::StatusOr<protocol::Nonce> nonce = RandomNonce();
  if (!nonce.ok()) return Close(c, nonce.status().message());
  c->server_nonce = *nonce;
  c->phase = Phase::kAuth;
  std::string challenge;
  protocol::AppendChallenge({c->server_nonce}, &challenge);
  Reply(c, challenge);
}

void ServerLoop::OnAuth(Connection* c, const protocol::FrameHeader& header,
                        std::span<const uint8_t> body) {
  absl::StatusOr<protocol::AuthRequest> auth = header.type == FrameType::kAuth
                                                   ? protocol::DecodeAuth(body)
                                                   : absl::InvalidArgumentError("expected AUTH");
  if (!auth.ok()) {
    return FatalError(c, header.tag, protocol::ErrorCode::kBadRequest, auth.status().message());
  }
  const AuthKey& key = *context_->options->auth_key;
  // A client nonce equal to ours would make the transcript symmetric; no
  // honest client sends one.
  if (auth->client_nonce == c->server_nonce ||
      !key.Verify(AuthKey::Role::kClient, c->server_nonce, auth->client_nonce, auth->proof)) {
    uint64_t more = 0;
    if (auth_failed_log_.Allow(&more)) {
      LogWarning("authentication failed for client %s: it does not hold this server's key%s",
                 c->peer, LogLimiter::Suppressed(more));
    }
    return FatalError(c, header.tag, protocol::ErrorCode::kAuthFailed, "authentication failed");
  }
  absl::StatusOr<protocol::Proof> proof =
      key.Prove(AuthKey::Role::kServer, c->server_nonce, auth->client_nonce);
  if (!proof.ok()) return Close(c, proof.status().message());
  std::string reply;
  protocol::AppendAuthOk({*proof}, &reply);
  reply += welcome_frame_;
  Ready(c, std::move(reply));
}

void ServerLoop::Ready(Connection* c, std::string reply) {
  c->phase = Phase::kReady;
  c->handoff = c->demand && demand_ != nullptr;
  Reply(c, reply);
}

void ServerLoop::Parse(Connection* c) {
  size_t pos = 0;
  // Replies queued for sending count against the cap too: a client that
  // sends READs but never reads the replies must not make them pile up.
  while (!c->closing && !c->close_after_send && !c->handoff &&
         c->in_len - pos >= protocol::kHeaderSize &&
         c->reads_inflight + static_cast<int>(c->out.size()) <
             context_->options->max_reads_per_connection) {
    absl::StatusOr<protocol::FrameHeader> header = protocol::DecodeHeader(
        std::span(c->in.data() + pos, protocol::kHeaderSize), kMaxClientBody);
    if (!header.ok()) return Close(c, header.status().message());
    const size_t frame = protocol::kHeaderSize + header->body_len;
    if (c->in_len - pos < frame) break;
    std::span<const uint8_t> body(c->in.data() + pos + protocol::kHeaderSize, header->body_len);
    pos += frame;
    if (c->phase == Phase::kHello) {
      OnHello(c, *header, body);
      continue;
    }
    if (c->phase == Phase::kAuth) {
      OnAuth(c, *header, body);
      continue;
    }
    std::string reply;
    absl::StatusOr<protocol::ReadRequest> request =
        header->type == FrameType::kRead ? protocol::DecodeRead(body)
                                         : absl::InvalidArgumentError("expected READ");
    const auto& regions = context_->welcome->regions;
    if (!request.ok()) {
      // The header was sound, so the stream is still in sync: answer and go on.
      const auto code = absl::IsOutOfRange(request.status()) ? protocol::ErrorCode::kOutOfRange
                                                             : protocol::ErrorCode::kBadRequest;
      protocol::AppendError(header->tag, {code, std::string(request.status().message())}, &reply);
    } else if (request->region >= regions.size()) {
      protocol::AppendError(header->tag, {protocol::ErrorCode::kNoSuchRegion, "no such region"},
                            &reply);
    } else if (request->first_page >= regions[request->region].page_count() ||
               request->count > regions[request->region].page_count() - request->first_page) {
      protocol::AppendError(
          header->tag, {protocol::ErrorCode::kOutOfRange, "pages past the region's end"}, &reply);
    } else {
      StartRead(c, header->tag, *request);
      continue;
    }
    Reply(c, reply);
  }
  std::memmove(c->in.data(), c->in.data() + pos, c->in_len - pos);
  c->in_len -= pos;
}

void ServerLoop::StartRead(Connection* c, uint64_t tag, const protocol::ReadRequest& request) {
  const uint64_t size = context_->welcome->regions[request.region].size;
  auto* read = new ReadOp;
  read->op.conn = c;
  read->tag = tag;
  read->request = request;
  const uint64_t offset = request.first_page * kPageSize;
  const size_t total = size_t{request.count} * kPageSize;
  read->length = std::min<uint64_t>(total, size - offset);
  read->frame.size = protocol::PagesFrameCapacity(request.count);
  read->frame.bytes.reset(new uint8_t[read->frame.size]);
  read->pages = read->frame.bytes.get() + protocol::PagesPayloadOffset(request.count);
  std::memset(read->pages + read->length, 0, total - read->length);
  ++c->reads_inflight;
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_read(sqe, (*context_->files)[request.region].get(), read->pages,
                     static_cast<unsigned>(read->length), offset);
  Submit(&read->op, sqe);
}

void ServerLoop::OnRead(ReadOp* read, int res) {
  Connection* c = read->op.conn;
  std::unique_ptr<ReadOp> owned(read);
  if (res > 0 && read->done + static_cast<size_t>(res) < read->length && !c->closing) {
    read->done += static_cast<size_t>(res);  // short read: ask for the rest
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_read(sqe, (*context_->files)[read->request.region].get(),
                       read->pages + read->done, static_cast<unsigned>(read->length - read->done),
                       read->request.first_page * kPageSize + read->done);
    Submit(&owned.release()->op, sqe);
    return;
  }
  --c->reads_inflight;
  if (c->closing) return MaybeFree(c);
  if (res < 0) {
    LogError("reading region %s: %s", context_->welcome->regions[read->request.region].name,
             std::strerror(-res));
    std::string reply;
    protocol::AppendError(read->tag, {protocol::ErrorCode::kIoError, std::strerror(-res)}, &reply);
    Reply(c, reply);
  } else {
    if (res == 0) {
      // The file shrank under us: the missing tail reads as zero.
      std::memset(read->pages + read->done, 0, read->length - read->done);
    }
    read->frame.size = protocol::SealPages(read->tag, read->request.region,
                                           read->request.first_page, read->request.count,
                                           std::span(read->frame.bytes.get(), read->frame.size));
    Reply(c, std::move(read->frame));
  }
  Parse(c);  // requests held back by the in-flight cap
  Pump(c);
}

void ServerLoop::Reply(Connection* c, absl::string_view frame_bytes) {
  Frame frame{std::make_unique<uint8_t[]>(frame_bytes.size()), frame_bytes.size()};
  std::memcpy(frame.bytes.get(), frame_bytes.data(), frame_bytes.size());
  Reply(c, std::move(frame));
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
