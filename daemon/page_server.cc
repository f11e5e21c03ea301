#include "daemon/page_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <list>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "daemon/errno_status.h"
#include "daemon/io_ring.h"
#include "daemon/log.h"
#include "daemon/log_limiter.h"

namespace lazyram {

using protocol::FrameType;
using protocol::kPageSize;

absl::Status ValidateRegionName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("region name is empty");
  if (name.size() > protocol::kMaxRegionName) {
    return absl::InvalidArgumentError(absl::StrCat("region name '", name, "' is too long"));
  }
  if (name == "." || name == ".." || name.find('/') != absl::string_view::npos ||
      name.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad region name '", name, "': it must be a file name (no '/')"));
  }
  return absl::OkStatus();
}

namespace {

// Client frames are small (AUTH is the largest); anything bigger is hostile.
constexpr uint32_t kMaxClientBody = 64;
static_assert(kMaxClientBody >= protocol::kNonceSize + protocol::kProofSize);
constexpr size_t kRecvBuffer = 64 * 1024;
constexpr size_t kMaxIov = 64;  // frames per sendmsg
// A refused connection (over --max-connections) is given this long to read
// its ERROR and hang up before it is closed; closing with its HELLO still
// unread would reset the connection and could lose the ERROR.
constexpr absl::Duration kRefusedLinger = absl::Seconds(2);
// How often one kind of warning about misbehaving peers may be logged.
constexpr absl::Duration kPeerLogInterval = absl::Seconds(10);

// Page-aligned holes of `fd`, as zero extents, appended to `out` while the
// overall budget lasts.
void FindHoles(int fd, uint64_t size, std::vector<protocol::ZeroExtent>* out, size_t* budget) {
  off_t pos = 0;
  while (static_cast<uint64_t>(pos) < size && *budget > 0) {
    off_t hole = lseek(fd, pos, SEEK_HOLE);
    if (hole < 0 || static_cast<uint64_t>(hole) >= size) break;
    off_t data = lseek(fd, hole, SEEK_DATA);
    const uint64_t end = data < 0 ? size : static_cast<uint64_t>(data);
    const uint64_t first = (static_cast<uint64_t>(hole) + kPageSize - 1) / kPageSize;
    // A hole that runs to the end of the file covers the partial last page.
    const uint64_t last = end >= size ? (size + kPageSize - 1) / kPageSize : end / kPageSize;
    if (last > first) {
      out->push_back({first, last - first});
      --*budget;
    }
    if (data < 0) break;
    pos = data;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PageServer>> PageServer::Create(Options options) {
  if (options.regions.empty()) {
    return absl::InvalidArgumentError("no region to serve: give at least one --region NAME=PATH");
  }
  if (options.max_connections < 1 || options.max_reads_per_connection < 1 ||
      options.handshake_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "connection limits, in-flight limits and the handshake timeout must be positive");
  }
  if (options.auth_key == nullptr && !options.insecure) {
    absl::StatusOr<bool> loopback = IsLoopback(options.listen);
    if (!loopback.ok()) return loopback.status();
    if (!*loopback) {
      return absl::FailedPreconditionError(absl::StrCat(
          "refusing to serve ", options.listen.ToString(),
          " without authentication: it is not a loopback address, so anyone who can reach it "
          "could read the guest's memory; give --auth-key-file FILE (or --insecure)"));
    }
  }
  std::unique_ptr<PageServer> server(new PageServer);
  absl::flat_hash_set<std::string> names;
  size_t budget = protocol::kMaxZeroExtents;
  for (const RegionSpec& spec : options.regions) {
    if (absl::Status s = ValidateRegionName(spec.name); !s.ok()) return s;
    if (!names.insert(spec.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("region name '", spec.name, "' is used twice"));
    }
    UniqueFd fd(open(spec.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return ErrnoStatus(errno, absl::StrCat("cannot open image ", spec.path));
    struct stat st;
    if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", spec.path));
    if (!S_ISREG(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", spec.path, " is not a regular file"));
    }
    if (st.st_size == 0) {
      return absl::InvalidArgumentError(absl::StrCat("image ", spec.path, " is empty"));
    }
    protocol::RegionInfo info{spec.name, static_cast<uint64_t>(st.st_size), {}};
    FindHoles(fd.get(), info.size, &info.zero_extents, &budget);
    server->welcome_.regions.push_back(std::move(info));
    server->files_.push_back(std::move(fd));
  }
  absl::StatusOr<UniqueFd> listen_fd = ListenTcp(options.listen, &server->bound_);
  if (!listen_fd.ok()) return listen_fd.status();
  server->listen_fd_ = *std::move(listen_fd);
  server->wake_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!server->wake_fd_.valid()) return ErrnoStatus(errno, "eventfd");
  server->options_ = std::move(options);
  return server;
}

PageServer::~PageServer() = default;

void PageServer::Stop() {
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = write(wake_fd_.get(), &one, sizeof one);
}

// The serving thread's state. Every operation's user_data points at an Op,
// which says what completed and for whom.
class PageServer::Loop {
 public:
  enum class Kind { kWake, kAccept, kRecv, kSend, kRead, kTick };
  // Where a connection is in its life. Only kReady connections may READ.
  enum class Phase {
    kHello,    // waiting for HELLO
    kAuth,     // CHALLENGE sent, waiting for AUTH
    kReady,    // WELCOME sent
    kRefused,  // over --max-connections: ERROR BUSY, then closed
  };
  struct Connection;
  struct Op {
    Kind kind;
    Connection* conn = nullptr;
  };
  // A frame queued for sending. Page replies are built in place: the file
  // is read straight into the frame's payload.
  struct Frame {
    std::unique_ptr<uint8_t[]> bytes;
    size_t size = 0;
  };
  struct ReadOp {
    Op op{Kind::kRead};
    uint64_t tag = 0;
    protocol::ReadRequest request;
    Frame frame;        // PagesFrameCapacity(count) bytes
    uint8_t* pages;     // the payload area inside `frame`
    size_t length = 0;  // bytes of the file wanted (the rest is padding)
    size_t done = 0;
  };
  struct Connection {
    Op recv_op{Kind::kRecv};
    Op send_op{Kind::kSend};
    UniqueFd fd;
    std::string peer;  // HOST:PORT, for log lines
    Phase phase = Phase::kHello;
    absl::Time deadline;  // for the handshake (or, refused, for hanging up)
    protocol::Nonce server_nonce{};
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

  Loop(PageServer* server, std::unique_ptr<IoRing> ring) : server_(server), ring_(std::move(ring)) {
    protocol::Welcome welcome = server->welcome_;
    welcome.features = server->options_.auth_key != nullptr ? protocol::kFeatureAuth : 0;
    protocol::AppendWelcome(welcome, &welcome_frame_);
    // Deadlines are checked on a tick: fine enough for timeouts of seconds,
    // and one timer for the whole loop, not one per connection.
    const absl::Duration tick = std::clamp(server->options_.handshake_timeout / 4,
                                           absl::Milliseconds(10), absl::Seconds(1));
    tick_ts_.tv_sec = absl::ToInt64Seconds(tick);
    tick_ts_.tv_nsec = absl::ToInt64Nanoseconds(tick - absl::Seconds(tick_ts_.tv_sec));
  }
  ~Loop() {
    ring_.reset();  // cancels what is in flight before the buffers go
  }

  void Run();

 private:
  void Submit(Op* op, io_uring_sqe* sqe) { io_uring_sqe_set_data(sqe, op); }
  void ArmAccept();
  void ArmWake();
  void ArmTick();
  void OnAccept(int res);
  void OnTick();
  void OnHello(Connection* c, const protocol::FrameHeader& header, std::span<const uint8_t> body);
  void OnAuth(Connection* c, const protocol::FrameHeader& header, std::span<const uint8_t> body);
  // Queues an ERROR after which the connection is closed.
  void FatalError(Connection* c, uint64_t tag, protocol::ErrorCode code, absl::string_view message);
  void OnRecv(Connection* c, int res);
  void OnSend(Connection* c, int res);
  void OnRead(ReadOp* read, int res);
  void Parse(Connection* c);
  void StartRead(Connection* c, uint64_t tag, const protocol::ReadRequest& request);
  void Reply(Connection* c, absl::string_view frame_bytes);
  void Reply(Connection* c, Frame frame) { c->out.push_back(std::move(frame)); }
  void Pump(Connection* c);
  void Close(Connection* c, absl::string_view why);
  void MaybeFree(Connection* c);

  PageServer* const server_;
  std::list<Connection> conns_;
  std::string welcome_frame_;
  Op wake_op_{Kind::kWake};
  Op accept_op_{Kind::kAccept};
  Op tick_op_{Kind::kTick};
  __kernel_timespec tick_ts_{};
  uint64_t wake_value_ = 0;
  LogLimiter refused_log_{kPeerLogInterval}, timeout_log_{kPeerLogInterval},
      no_auth_log_{kPeerLogInterval}, auth_failed_log_{kPeerLogInterval};
  std::unique_ptr<IoRing> ring_;
};

absl::Status PageServer::Run() {
  absl::StatusOr<std::unique_ptr<IoRing>> ring = IoRing::Create(256);
  if (!ring.ok()) return ring.status();
  Loop loop(this, *std::move(ring));
  loop.Run();
  return absl::OkStatus();
}

void PageServer::Loop::ArmAccept() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_accept(sqe, server_->listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
  Submit(&accept_op_, sqe);
}

void PageServer::Loop::ArmWake() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_read(sqe, server_->wake_fd_.get(), &wake_value_, sizeof wake_value_, 0);
  Submit(&wake_op_, sqe);
}

void PageServer::Loop::ArmTick() {
  io_uring_sqe* sqe = ring_->GetSqe();
  io_uring_prep_timeout(sqe, &tick_ts_, 0, 0);
  Submit(&tick_op_, sqe);
}

void PageServer::Loop::Run() {
  ArmAccept();
  ArmWake();
  ArmTick();
  bool stop = false;
  while (!stop) {
    io_uring_submit_and_wait(ring_->get(), 1);
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring_->get(), head, cqe) {
      ++seen;
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      switch (op->kind) {
        case Kind::kWake:
          stop = true;
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
    conns_.remove_if([](const Connection& c) { return c.dead; });
  }
}

void PageServer::Loop::OnAccept(int res) {
  ArmAccept();
  if (res < 0) {
    LogWarning("accept: %s", std::strerror(-res));
    return;
  }
  UniqueFd fd(res);
  const Options& options = server_->options_;
  int serving = 0, refused = 0;  // closing ones count: they still hold their fd
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

void PageServer::Loop::OnTick() {
  ArmTick();
  const absl::Time now = absl::Now();
  for (Connection& c : conns_) {
    if (c.closing || c.phase == Phase::kReady || now < c.deadline) continue;
    if (c.phase != Phase::kRefused) {
      uint64_t more = 0;
      if (timeout_log_.Allow(&more)) {
        LogWarning("dropping client %s: no handshake within %s (--handshake-timeout)%s", c.peer,
                   absl::FormatDuration(server_->options_.handshake_timeout),
                   LogLimiter::Suppressed(more));
      }
    }
    Close(&c, "");
  }
}

void PageServer::Loop::Pump(Connection* c) {
  if (c->closing) return;
  if (!c->send_inflight && !c->out.empty()) {
    // One sendmsg over the queued frames: no copy into a send buffer.
    c->iov.clear();
    size_t skip = c->out_sent;
    for (Frame& f : c->out) {
      if (c->iov.size() == kMaxIov) break;
      c->iov.push_back({f.bytes.get() + skip, f.size - skip});
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

void PageServer::Loop::OnRecv(Connection* c, int res) {
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

void PageServer::Loop::FatalError(Connection* c, uint64_t tag, protocol::ErrorCode code,
                                  absl::string_view message) {
  std::string reply;
  protocol::AppendError(tag, {code, std::string(message)}, &reply);
  Reply(c, reply);
  c->close_after_send = true;
}

void PageServer::Loop::OnHello(Connection* c, const protocol::FrameHeader& header,
                               std::span<const uint8_t> body) {
  absl::StatusOr<protocol::Hello> hello = header.type == FrameType::kHello
                                              ? protocol::DecodeHello(body)
                                              : absl::InvalidArgumentError("expected HELLO");
  if (!hello.ok()) {
    const auto code = absl::IsFailedPrecondition(hello.status()) ? protocol::ErrorCode::kBadVersion
                                                                 : protocol::ErrorCode::kBadRequest;
    return FatalError(c, header.tag, code, hello.status().message());
  }
  if (server_->options_.auth_key == nullptr) {
    c->phase = Phase::kReady;
    return Reply(c, welcome_frame_);
  }
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

void PageServer::Loop::OnAuth(Connection* c, const protocol::FrameHeader& header,
                              std::span<const uint8_t> body) {
  absl::StatusOr<protocol::AuthRequest> auth = header.type == FrameType::kAuth
                                                   ? protocol::DecodeAuth(body)
                                                   : absl::InvalidArgumentError("expected AUTH");
  if (!auth.ok()) {
    return FatalError(c, header.tag, protocol::ErrorCode::kBadRequest, auth.status().message());
  }
  const AuthKey& key = *server_->options_.auth_key;
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
  c->phase = Phase::kReady;
  Reply(c, reply);
}

void PageServer::Loop::Parse(Connection* c) {
  size_t pos = 0;
  // Replies queued for sending count against the cap too: a client that
  // sends READs but never reads the replies must not make them pile up.
  while (!c->closing && !c->close_after_send && c->in_len - pos >= protocol::kHeaderSize &&
         c->reads_inflight + static_cast<int>(c->out.size()) <
             server_->options_.max_reads_per_connection) {
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
    const auto& regions = server_->welcome_.regions;
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

void PageServer::Loop::StartRead(Connection* c, uint64_t tag,
                                 const protocol::ReadRequest& request) {
  const uint64_t size = server_->welcome_.regions[request.region].size;
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
  io_uring_prep_read(sqe, server_->files_[request.region].get(), read->pages,
                     static_cast<unsigned>(read->length), offset);
  Submit(&read->op, sqe);
}

void PageServer::Loop::OnRead(ReadOp* read, int res) {
  Connection* c = read->op.conn;
  std::unique_ptr<ReadOp> owned(read);
  if (res > 0 && read->done + static_cast<size_t>(res) < read->length && !c->closing) {
    read->done += static_cast<size_t>(res);  // short read: ask for the rest
    io_uring_sqe* sqe = ring_->GetSqe();
    io_uring_prep_read(sqe, server_->files_[read->request.region].get(), read->pages + read->done,
                       static_cast<unsigned>(read->length - read->done),
                       read->request.first_page * kPageSize + read->done);
    Submit(&owned.release()->op, sqe);
    return;
  }
  --c->reads_inflight;
  if (c->closing) return MaybeFree(c);
  if (res < 0) {
    LogError("reading region %s: %s", server_->welcome_.regions[read->request.region].name,
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

void PageServer::Loop::Reply(Connection* c, absl::string_view frame_bytes) {
  Frame frame{std::make_unique<uint8_t[]>(frame_bytes.size()), frame_bytes.size()};
  std::memcpy(frame.bytes.get(), frame_bytes.data(), frame_bytes.size());
  Reply(c, std::move(frame));
}

void PageServer::Loop::OnSend(Connection* c, int res) {
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

void PageServer::Loop::Close(Connection* c, absl::string_view why) {
  if (!why.empty()) LogWarning("closing a client connection: %s", why);
  c->closing = true;
  shutdown(c->fd.get(), SHUT_RDWR);
  MaybeFree(c);
}

void PageServer::Loop::MaybeFree(Connection* c) {
  if (c->recv_inflight || c->send_inflight || c->reads_inflight > 0) {
    shutdown(c->fd.get(), SHUT_RDWR);
    return;
  }
  // Freed after the current batch of completions, which may still use it.
  c->dead = true;
}

}  // namespace lazyram
