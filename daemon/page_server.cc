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

#include <cerrno>
#include <cstring>
#include <deque>
#include <list>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/errno_status.h"
#include "daemon/io_ring.h"
#include "daemon/log.h"

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

// Client frames are small; anything bigger is hostile.
constexpr uint32_t kMaxClientBody = 64;
constexpr size_t kRecvBuffer = 64 * 1024;
constexpr size_t kMaxIov = 64;  // frames per sendmsg

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
  enum class Kind { kWake, kAccept, kRecv, kSend, kRead };
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
    bool greeted = false;
    bool close_after_send = false;  // a fatal ERROR is queued
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
    protocol::AppendWelcome(server->welcome_, &welcome_frame_);
  }
  ~Loop() {
    ring_.reset();  // cancels what is in flight before the buffers go
  }

  void Run();

 private:
  void Submit(Op* op, io_uring_sqe* sqe) { io_uring_sqe_set_data(sqe, op); }
  void ArmAccept();
  void ArmWake();
  void OnAccept(int res);
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
  uint64_t wake_value_ = 0;
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

void PageServer::Loop::Run() {
  ArmAccept();
  ArmWake();
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
  if (static_cast<int>(conns_.size()) >= server_->options_.max_connections) {
    LogWarning("refusing a connection: %zu clients already connected", conns_.size());
    return;
  }
  int one = 1;
  setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  Connection& c = conns_.emplace_back();
  c.recv_op.conn = &c;
  c.send_op.conn = &c;
  c.fd = std::move(fd);
  Pump(&c);
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
  Parse(c);
  Pump(c);
}

void PageServer::Loop::Parse(Connection* c) {
  size_t pos = 0;
  while (!c->closing && !c->close_after_send && c->in_len - pos >= protocol::kHeaderSize &&
         c->reads_inflight < server_->options_.max_reads_per_connection) {
    absl::StatusOr<protocol::FrameHeader> header = protocol::DecodeHeader(
        std::span(c->in.data() + pos, protocol::kHeaderSize), kMaxClientBody);
    if (!header.ok()) return Close(c, header.status().message());
    const size_t frame = protocol::kHeaderSize + header->body_len;
    if (c->in_len - pos < frame) break;
    std::span<const uint8_t> body(c->in.data() + pos + protocol::kHeaderSize, header->body_len);
    pos += frame;
    std::string reply;
    if (!c->greeted) {
      absl::StatusOr<protocol::Hello> hello = header->type == FrameType::kHello
                                                  ? protocol::DecodeHello(body)
                                                  : absl::InvalidArgumentError("expected HELLO");
      if (!hello.ok()) {
        const auto code = absl::IsFailedPrecondition(hello.status())
                              ? protocol::ErrorCode::kBadVersion
                              : protocol::ErrorCode::kBadRequest;
        protocol::AppendError(header->tag, {code, std::string(hello.status().message())}, &reply);
        Reply(c, reply);
        c->close_after_send = true;
        break;
      }
      c->greeted = true;
      Reply(c, welcome_frame_);
      continue;
    }
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
