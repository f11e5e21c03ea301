// Dial: connect to a page server and run the handshake, blocking, with a
// timeout. Used at mount time (to learn the region table) and by the
// Fetcher to (re)open each of its connections.
#ifndef LAZYRAM_DAEMON_SOURCE_DIALER_H_
#define LAZYRAM_DAEMON_SOURCE_DIALER_H_

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/net_address.h"
#include "daemon/protocol.h"
#include "daemon/unique_fd.h"

namespace lazyram {

struct DialedSource {
  UniqueFd fd;  // blocking, TCP_NODELAY, handshake done
  protocol::Welcome welcome;
};

// kUnavailable when the server cannot be reached or drops the connection;
// kInvalidArgument / kFailedPrecondition / kDataLoss when it answers with
// something that is not a valid WELCOME.
absl::StatusOr<DialedSource> DialSource(const NetAddress& address, absl::Duration timeout);

// True when `b` describes the same regions (names and sizes, in order) as
// `a`: a reconnect must find the image it started with.
bool SameRegions(const protocol::Welcome& a, const protocol::Welcome& b);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_SOURCE_DIALER_H_
