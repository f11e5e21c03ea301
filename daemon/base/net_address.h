// NetAddress: a parsed HOST:PORT (IPv4, IPv6 in brackets, or a name) and
// the socket helpers both ends use: resolve, listen, connect with timeout.
#ifndef LAZYRAM_DAEMON_BASE_NET_ADDRESS_H_
#define LAZYRAM_DAEMON_BASE_NET_ADDRESS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "daemon/base/unique_fd.h"

namespace lazyram {

struct NetAddress {
  std::string host;
  uint16_t port = 0;

  // "127.0.0.1:7000", "[::1]:7000", "host.example:7000". Port 0 is allowed
  // only where `allow_port_zero` (listening).
  static absl::StatusOr<NetAddress> Parse(absl::string_view text, bool allow_port_zero);
  // "tcp://HOST:PORT".
  static absl::StatusOr<NetAddress> ParseUrl(absl::string_view url);
  std::string ToString() const;
};

// True when every address `address.host` resolves to (as ListenTcp would
// resolve it) is a loopback address: 127.0.0.0/8, ::1, or an IPv4-mapped
// 127.x. A wildcard (0.0.0.0, ::) is not loopback.
absl::StatusOr<bool> IsLoopback(const NetAddress& address);

// "HOST:PORT" of the peer of a connected socket, for log lines; "?" if
// unknown.
std::string PeerAddress(int fd);

// A listening TCP socket bound to `address`; `*bound` gets the real address
// (the port chosen by the kernel for port 0).
absl::StatusOr<UniqueFd> ListenTcp(const NetAddress& address, NetAddress* bound);
// A connected, blocking TCP socket with TCP_NODELAY, or kUnavailable.
absl::StatusOr<UniqueFd> ConnectTcp(const NetAddress& address, absl::Duration timeout);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_BASE_NET_ADDRESS_H_
