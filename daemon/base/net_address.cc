#include "daemon/base/net_address.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "daemon/base/errno_status.h"

namespace lazyram {
namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

absl::StatusOr<AddrInfoPtr> Resolve(const NetAddress& address, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* result = nullptr;
  std::string port = absl::StrCat(address.port);
  int rc = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve '", address.host, "': ", gai_strerror(rc)));
  }
  return AddrInfoPtr(result);
}

std::string SockaddrHost(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(ss).sin6_addr, buf, sizeof buf);
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(ss).sin_addr, buf, sizeof buf);
  }
  return buf;
}

bool IsLoopbackSockaddr(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr);
    return (ip >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const in6_addr& ip = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&ip)) return true;
    return IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace

absl::StatusOr<bool> IsLoopback(const NetAddress& address) {
  absl::StatusOr<AddrInfoPtr> ai = Resolve(address, /*passive=*/true);
  if (!ai.ok()) return ai.status();
  for (addrinfo* a = ai->get(); a != nullptr; a = a->ai_next) {
    if (!IsLoopbackSockaddr(a->ai_addr)) return false;
  }
  return true;
}

absl::StatusOr<NetAddress> NetAddress::Parse(absl::string_view text, bool allow_port_zero) {
  NetAddress out;
  absl::string_view port;
  if (absl::StartsWith(text, "[")) {
    size_t close = text.find(']');
    if (close == absl::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", text, "': expected [IPV6]:PORT"));
    }
    out.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == absl::string_view::npos || text.find(':') != colon) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", text, "': expected HOST:PORT"));
    }
    out.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
  }
  uint32_t p = 0;
  if (out.host.empty() || !absl::SimpleAtoi(port, &p) || p > 65535 ||
      (p == 0 && !allow_port_zero)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad address '", text, "': expected HOST:PORT with a port in 1..65535"));
  }
  out.port = static_cast<uint16_t>(p);
  return out;
}

absl::StatusOr<NetAddress> NetAddress::ParseUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "tcp://";
  if (!absl::StartsWith(url, kScheme)) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad source '", url, "': expected tcp://HOST:PORT"));
  }
  return Parse(url.substr(kScheme.size()), /*allow_port_zero=*/false);
}

std::string NetAddress::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

std::string PeerAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 ||
      (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)) {
    return "?";
  }
  NetAddress peer;
  peer.host = SockaddrHost(ss);
  peer.port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                                             : reinterpret_cast<sockaddr_in&>(ss).sin_port);
  return peer.ToString();
}

absl::StatusOr<UniqueFd> ListenTcp(const NetAddress& address, NetAddress* bound) {
  absl::StatusOr<AddrInfoPtr> ai = Resolve(address, /*passive=*/true);
  if (!ai.ok()) return ai.status();
  absl::Status last = absl::UnavailableError("no address to listen on");
  for (addrinfo* a = ai->get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd(socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus(errno, "socket");
      continue;
    }
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
      last = ErrnoStatus(errno, absl::StrCat("cannot listen on ", address.ToString()));
      continue;
    }
    if (listen(fd.get(), 128) != 0) {
      last = ErrnoStatus(errno, absl::StrCat("listen on ", address.ToString()));
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&ss), &len);
    bound->host = SockaddrHost(ss);
    bound->port = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                                                 : reinterpret_cast<sockaddr_in&>(ss).sin_port);
    return fd;
  }
  return last;
}

absl::StatusOr<UniqueFd> ConnectTcp(const NetAddress& address, absl::Duration timeout) {
  absl::StatusOr<AddrInfoPtr> ai = Resolve(address, /*passive=*/false);
  if (!ai.ok()) return ai.status();
  absl::Status last = absl::UnavailableError("no address to connect to");
  for (addrinfo* a = ai->get(); a != nullptr; a = a->ai_next) {
    UniqueFd fd(
        socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    if (!fd.valid()) {
      last = ErrnoStatus(errno, "socket");
      continue;
    }
    int rc = connect(fd.get(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd pfd{fd.get(), POLLOUT, 0};
      rc = poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
      if (rc == 0) {
        last = absl::UnavailableError(
            absl::StrCat("cannot connect to ", address.ToString(), ": timed out"));
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) {
      last = ErrnoStatus(errno, absl::StrCat("cannot connect to ", address.ToString()));
      if (!absl::IsUnavailable(last)) last = absl::UnavailableError(last.message());
      continue;
    }
    int flags = fcntl(fd.get(), F_GETFL);
    fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
    int one = 1;
    setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
  }
  return last;
}

}  // namespace lazyram
