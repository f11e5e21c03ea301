// Internal to daemon/fetch/: FetchChannel's connection — its state, and
// the limits its dialing, backoff and receiving follow — shared by the
// files that implement FetchChannel:
//   fetch_channel.cc             lifecycle, submission and the I/O loop
//   fetch_channel_connection.cc  dialing, up/fail/close, send and recv
//   fetch_channel_requests.cc    requests owed: budget, deadlines, replies
// Owned by its FetchChannel (conn_) for the channel's whole life; which
// fields are guarded by the channel's mu_ and which belong to the I/O
// thread alone is marked below.
#ifndef LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_CONNECTION_H_
#define LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_CONNECTION_H_

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "daemon/base/unique_fd.h"
#include "daemon/fetch/fetch_channel.h"

namespace lazyram {
namespace fetch_channel_internal {

// user_data of a completion: what completed.
enum Op : uint64_t { kWake = 1, kRecv = 2, kSend = 3 };

inline constexpr absl::Duration kMinBackoff = absl::Milliseconds(50);
inline constexpr absl::Duration kMaxBackoff = absl::Seconds(2);
// With replicas to fail over to, a connection that owes replies and has
// received nothing for this long counts as failed: a server that went
// silent (host gone, link cut) never closes its connections itself. With
// one source there is nowhere better to go, so it is waited for.
inline constexpr absl::Duration kStallTimeout = absl::Seconds(10);
// Bytes per recv on a bulk connection. The copy runs inline in
// io_uring_enter, where this kernel (preempt=none) does not switch to a
// woken thread: a recv of megabytes would hold a CPU that the demand thread
// needs at once.
inline constexpr size_t kMaxBulkRecv = 256 * 1024;

}  // namespace fetch_channel_internal

struct FetchChannel::Connection {
  // --- guarded by the channel's mu_ ---
  bool up = false;
  bool closing = false;  // shut down; waiting for its operations to finish
  bool send_inflight = false;
  std::string out;  // frames not yet handed to the kernel
  absl::flat_hash_map<uint64_t, FetchRequest> outstanding;
  // Last time bytes arrived, or the first request went out on an idle
  // connection: for kStallTimeout.
  absl::Time last_progress = absl::InfinitePast();
  UniqueFd fd;  // replaced only by the I/O thread, under mu_

  // --- the I/O thread's alone ---
  size_t replica = 0;   // while up or closing
  std::string sending;  // the frames of the send in flight
  size_t sent = 0;
  std::vector<uint8_t> in;
  size_t in_start = 0;  // bytes before this are parsed
  size_t in_len = 0;    // bytes received
  bool recv_inflight = false;
  absl::Time retry_at = absl::InfinitePast();
  absl::Duration backoff = fetch_channel_internal::kMinBackoff;
  size_t round_failures = 0;  // failed dials since the last backoff
  bool dialing = false;
  std::thread dial_thread;
  bool warned = false;
  std::string last_retry_error;  // logged once per distinct reason
  // A bad reply closes the connection; the next one waits this long, which
  // doubles with every bad reply and resets with a good one, so a server
  // that keeps lying is not redialed in a tight loop.
  bool rejected = false;
  absl::Duration reject_backoff = fetch_channel_internal::kMinBackoff;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_FETCH_FETCH_CHANNEL_CONNECTION_H_
