#include "daemon/source_dialer.h"

#include <sys/socket.h>

#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/errno_status.h"

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

}  // namespace

absl::StatusOr<DialedSource> DialSource(const NetAddress& address, absl::Duration timeout) {
  absl::StatusOr<UniqueFd> fd = ConnectTcp(address, timeout);
  if (!fd.ok()) return fd.status();
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd->get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd->get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  std::string hello;
  protocol::AppendHello(protocol::Hello{}, &hello);
  if (send(fd->get(), hello.data(), hello.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(hello.size())) {
    return absl::UnavailableError(
        ErrnoStatus(errno, absl::StrCat("sending handshake to ", address.ToString())).message());
  }
  uint8_t header_bytes[protocol::kHeaderSize];
  if (absl::Status s = ReadFull(fd->get(), header_bytes, sizeof header_bytes, address); !s.ok()) {
    return s;
  }
  absl::StatusOr<protocol::FrameHeader> header =
      protocol::DecodeHeader(header_bytes, protocol::kMaxHandshakeBody);
  if (!header.ok()) {
    return absl::Status(
        header.status().code(),
        absl::StrCat("bad handshake from ", address.ToString(), ": ", header.status().message()));
  }
  std::vector<uint8_t> body(header->body_len);
  if (absl::Status s = ReadFull(fd->get(), body.data(), body.size(), address); !s.ok()) return s;
  if (header->type == protocol::FrameType::kError) {
    absl::StatusOr<protocol::ErrorReply> error = protocol::DecodeError(body);
    if (!error.ok()) return error.status();
    return protocol::ErrorToStatus(*error);
  }
  if (header->type != protocol::FrameType::kWelcome) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad handshake from ", address.ToString(), ": expected WELCOME"));
  }
  absl::StatusOr<protocol::Welcome> welcome = protocol::DecodeWelcome(body);
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
