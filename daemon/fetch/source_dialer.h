// Dial: connect to a page server and run the handshake, blocking, with a
// timeout. Used at mount time (to learn the region table) and by the
// Fetcher to (re)open each of its connections.
#ifndef LAZYRAM_DAEMON_FETCH_SOURCE_DIALER_H_
#define LAZYRAM_DAEMON_FETCH_SOURCE_DIALER_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/base/net_address.h"
#include "daemon/base/unique_fd.h"
#include "daemon/protocol/auth_key.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

struct DialedSource {
  UniqueFd fd;  // blocking, TCP_NODELAY, handshake done
  protocol::Welcome welcome;
};

// kUnavailable when the server cannot be reached or drops the connection;
// kInvalidArgument / kFailedPrecondition / kDataLoss when it answers with
// something that is not a valid WELCOME.
//
// With `key`, the handshake authenticates both ways (docs/protocol.md) and
// a server that does not prove the key, or does not ask for it, is refused
// with kUnauthenticated. Without `key`, a server that requires one gives
// kUnauthenticated "page server requires authentication (--auth-key-file)".
// `hints` are further HELLO feature bits (protocol::kFeatureDemandChannel).
absl::StatusOr<DialedSource> DialSource(const NetAddress& address, absl::Duration timeout,
                                        const AuthKey* key = nullptr, uint32_t hints = 0);

// What differs between the region table a mount started with (`was`) and
// the one a server now sends (`now`), for a log line; empty when both list
// the same names, sizes and zero extents in the same order. A reconnect must find the
// image it started with.
std::string RegionTableChange(const protocol::Welcome& was, const protocol::Welcome& now);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_SOURCE_DIALER_H_
