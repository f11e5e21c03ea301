#include "daemon/fetch/source_dialer.h"

#include <sys/socket.h>

#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/base/errno_status.h"

namespace lazyram {
namespace {

absl::Status ReadFull(int fd, uint8_t* out, size_t len, const NetAddress& address) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = recv(fd, out + done, len - done, 0);
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrCat("page server ", address.ToString(), " closed the connection"));
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return absl::UnavailableError(
            absl::StrCat("page server ", address.ToString(), " did not answer the handshake"));
      }
      return absl::UnavailableError(
          ErrnoStatus(errno, absl::StrCat("reading from ", address.ToString())).message());
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// One handshake frame: the header (bounded by kMaxHandshakeBody) and its body.
struct HandshakeFrame {
  protocol::FrameHeader header;
  std::vector<uint8_t> body;
};

absl::StatusOr<HandshakeFrame> ReadFrame(int fd, const NetAddress& address) {
  uint8_t header_bytes[protocol::kHeaderSize];
  if (absl::Status s = ReadFull(fd, header_bytes, sizeof header_bytes, address); !s.ok()) return s;
  absl::StatusOr<protocol::FrameHeader> header =
      protocol::DecodeHeader(header_bytes, protocol::kMaxHandshakeBody);
  if (!header.ok()) {
    return absl::Status(
        header.status().code(),
        absl::StrCat("bad handshake from ", address.ToString(), ": ", header.status().message()));
  }
  HandshakeFrame frame{*header, std::vector<uint8_t>(header->body_len)};
  if (absl::Status s = ReadFull(fd, frame.body.data(), frame.body.size(), address); !s.ok()) {
    return s;
  }
  return frame;
}

absl::Status SendAll(int fd, const std::string& bytes, const NetAddress& address) {
  if (send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(bytes.size())) {
    return absl::UnavailableError(
        ErrnoStatus(errno, absl::StrCat("sending handshake to ", address.ToString())).message());
  }
  return absl::OkStatus();
}

absl::Status RequiresAuthentication(const NetAddress& address) {
  return absl::UnauthenticatedError(
      absl::StrCat(address.ToString(), ": page server requires authentication (--auth-key-file)"));
}

// The status for an ERROR frame received during the handshake.
absl::Status HandshakeError(const HandshakeFrame& frame, const NetAddress& address) {
  absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(frame.body);
  if (!error.ok()) return error.status();
  switch (error->code) {
    case protocol::ErrorCode::kAuthRequired:
      return RequiresAuthentication(address);
    case protocol::ErrorCode::kAuthFailed:
      return absl::UnauthenticatedError(
          absl::StrCat("authentication failed: page server ", address.ToString(),
                       " rejected the key (its --auth-key-file holds another one)"));
    default:
      return protocol::ErrorToStatus(*error);
  }
}

absl::Status Unexpected(const HandshakeFrame& frame, absl::string_view wanted,
                        const NetAddress& address) {
  if (frame.header.type == protocol::FrameType::kError) return HandshakeError(frame, address);
  return absl::InvalidArgumentError(
      absl::StrCat("bad handshake from ", address.ToString(), ": expected ", wanted));
}

// CHALLENGE -> AUTH -> AUTH_OK; returns once the server has proved the key.
absl::Status Authenticate(int fd, const HandshakeFrame& challenge_frame, const AuthKey& key,
                          const NetAddress& address) {
  absl::StatusOr<protocol::Challenge> challenge = protocol::DecodeChallenge(challenge_frame.body);
  if (!challenge.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad handshake from ", address.ToString(), ": ",
                                                   challenge.status().message()));
  }
  absl::StatusOr<protocol::Nonce> client_nonce = RandomNonce();
  if (!client_nonce.ok()) return client_nonce.status();
  absl::StatusOr<protocol::Proof> proof =
      key.Prove(AuthKey::Role::kClient, challenge->server_nonce, *client_nonce);
  if (!proof.ok()) return proof.status();
  std::string auth;
  protocol::AppendAuth({*client_nonce, *proof}, &auth);
  if (absl::Status s = SendAll(fd, auth, address); !s.ok()) return s;

  absl::StatusOr<HandshakeFrame> frame = ReadFrame(fd, address);
  if (!frame.ok()) return frame.status();
  if (frame->header.type != protocol::FrameType::kAuthOk) {
    return Unexpected(*frame, "AUTH_OK", address);
  }
  absl::StatusOr<protocol::AuthOk> ok = protocol::DecodeAuthOk(frame->body);
  if (!ok.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad handshake from ", address.ToString(), ": ", ok.status().message()));
  }
  // Mutual: a server that merely accepted our proof has not shown it
  // holds the key; one that cannot is not trusted with the mount.
  if (!key.Verify(AuthKey::Role::kServer, challenge->server_nonce, *client_nonce, ok->proof)) {
    return absl::UnauthenticatedError(absl::StrCat("authentication failed: page server ",
                                                   address.ToString(), " did not prove the key"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DialedSource> DialSource(const NetAddress& address, absl::Duration timeout,
                                        const AuthKey* key, uint32_t hints) {
  absl::StatusOr<UniqueFd> fd = ConnectTcp(address, timeout);
  if (!fd.ok()) return fd.status();
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  std::string hello;
  protocol::AppendHello({.features = (key != nullptr ? protocol::kFeatureAuth : 0) | hints},
                        &hello);
  if (absl::Status s = SendAll(fd->get(), hello, address); !s.ok()) return s;
  absl::StatusOr<HandshakeFrame> frame = ReadFrame(fd->get(), address);
  if (!frame.ok()) return frame.status();
  if (frame->header.type == protocol::FrameType::kChallenge) {
    if (key == nullptr) return RequiresAuthentication(address);
    if (absl::Status s = Authenticate(fd->get(), *frame, *key, address); !s.ok()) return s;
    frame = ReadFrame(fd->get(), address);
    if (!frame.ok()) return frame.status();
  } else if (key != nullptr && frame->header.type == protocol::FrameType::kWelcome) {
    return absl::UnauthenticatedError(
        absl::StrCat("page server ", address.ToString(),
                     " does not authenticate (it runs without --auth-key-file); refusing it "
                     "because this side was given --auth-key-file"));
  }
  if (frame->header.type != protocol::FrameType::kWelcome) {
    return Unexpected(*frame, "WELCOME", address);
  }
  absl::StatusOr<protocol::Welcome> welcome = protocol::DecodeWelcome(frame->body);
  if (!welcome.ok()) {
    return absl::Status(
        welcome.status().code(),
        absl::StrCat("bad handshake from ", address.ToString(), ": ", welcome.status().message()));
  }
  timeval none{};
  setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
  setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
  return DialedSource{*std::move(fd), *std::move(welcome)};
}

std::string RegionTableChange(const protocol::Welcome& was, const protocol::Welcome& now) {
  if (was.regions.size() != now.regions.size()) {
    return absl::StrCat(now.regions.size(), " regions, was ", was.regions.size());
  }
  for (size_t i = 0; i < was.regions.size(); ++i) {
    const protocol::RegionInfo& a = was.regions[i];
    const protocol::RegionInfo& b = now.regions[i];
    if (a.name != b.name || a.size != b.size) {
      return absl::StrCat("region ", i, " is '", b.name, "' of ", b.size, " bytes, was '", a.name,
                          "' of ", a.size, " bytes");
    }
    // Cheap, and it catches a replica whose holes (pages the mount never
    // fetches) differ from the image the mount started with.
    if (a.zero_extents != b.zero_extents) {
      return absl::StrCat("region '", a.name, "' lists ", b.zero_extents.size(),
                          " zero extents that differ from the ", a.zero_extents.size(), " it had");
    }
  }
  return "";
}

}  // namespace lazyram
