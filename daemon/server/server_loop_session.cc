// ServerLoop's side of the conversation with one client: the handshake
// (HELLO, then CHALLENGE/AUTH when the server has a key, then WELCOME),
// parsing READs under the per-connection cap, reading their pages from the
// region files on the ring and queueing the replies. Sending them is
// server_loop.cc's (Pump).
#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/server/server_loop.h"
#include "daemon/server/server_loop_connection.h"

namespace lazyram {

using protocol::FrameType;
using protocol::kPageSize;
using server_loop_internal::Phase;

namespace {

// Client frames are small (AUTH is the largest); anything bigger is hostile.
constexpr uint32_t kMaxClientBody = 64;
static_assert(kMaxClientBody >= protocol::kNonceSize + protocol::kProofSize);

}  // namespace

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

}  // namespace lazyram
