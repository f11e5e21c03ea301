// Internal to daemon/server/: what a ServerLoop keeps per connection and
// per file read in flight, shared by the files that implement ServerLoop:
//   server_loop.cc          the ring, accept, the tick, send/recv, close
//   server_loop_session.cc  a connection's conversation: handshake, READs
// Each lives in one loop's list (or, handed over, in the demand loop's
// inbox) and is touched only by the thread running that loop; see
// ServerLoop::Adopt for the hand-over.
#ifndef LAZYRAM_DAEMON_SERVER_SERVER_LOOP_CONNECTION_H_
#define LAZYRAM_DAEMON_SERVER_SERVER_LOOP_CONNECTION_H_

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "daemon/base/unique_fd.h"
#include "daemon/protocol/protocol.h"
#include "daemon/server/server_loop.h"

namespace lazyram {
namespace server_loop_internal {

inline constexpr size_t kRecvBuffer = 64 * 1024;

// Where a connection is in its life. Only kReady connections may READ.
enum class Phase {
  kHello,    // waiting for HELLO
  kAuth,     // CHALLENGE sent, waiting for AUTH
  kReady,    // WELCOME sent
  kRefused,  // over --max-connections: ERROR BUSY, then closed
};

}  // namespace server_loop_internal

// A frame queued for sending. Page replies are built in place: the file is
// read straight into the frame's payload.
struct ServerLoop::Frame {
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;
};

struct ServerLoop::ReadOp {
  Op op{Kind::kRead};
  uint64_t tag = 0;
  protocol::ReadRequest request;
  Frame frame;        // PagesFrameCapacity(count) bytes
  uint8_t* pages;     // the payload area inside `frame`
  size_t length = 0;  // bytes of the file wanted (the rest is padding)
  size_t done = 0;
};

struct ServerLoop::Connection {
  Op recv_op{Kind::kRecv};
  Op send_op{Kind::kSend};
  UniqueFd fd;
  std::string peer;  // HOST:PORT, for log lines
  server_loop_internal::Phase phase = server_loop_internal::Phase::kHello;
  absl::Time deadline;  // for the handshake (or, refused, for hanging up)
  protocol::Nonce server_nonce{};
  bool demand = false;            // HELLO asked for kFeatureDemandChannel
  bool handoff = false;           // ready; moves to the demand loop when idle here
  bool close_after_send = false;  // a fatal ERROR is queued
  bool write_shut = false;        // refused: the ERROR is out, FIN sent
  bool closing = false;
  bool dead = false;  // nothing in flight; freed at the end of the batch
  bool recv_inflight = false;
  bool send_inflight = false;
  int reads_inflight = 0;
  std::vector<uint8_t> in = std::vector<uint8_t>(server_loop_internal::kRecvBuffer);
  size_t in_len = 0;
  std::deque<Frame> out;  // the send in flight covers a prefix of these
  size_t out_sent = 0;    // bytes of out.front() already sent
  std::vector<iovec> iov;
  msghdr msg{};
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_SERVER_SERVER_LOOP_CONNECTION_H_
