// ServerLoop: one serving thread of `lazyramd serve`, owning an io_uring
// for its connections' recv, send and file reads.
//
// A server has two: the main loop accepts, runs every handshake and serves
// bulk connections; the demand loop serves only connections whose HELLO
// said they carry demand reads (protocol::kFeatureDemandChannel), which
// the main loop hands over once their handshake is done. A faulting guest's
// READ then never waits while the main loop reads and sends megabytes of
// background pull (the same split as the fetcher's channels).
//
// Every operation's user_data points at an Op, which says what completed
// and for whom. Threading: Run on the thread that owns the loop; Stop and
// Adopt from any thread.
#ifndef LAZYRAM_DAEMON_SERVER_SERVER_LOOP_H_
#define LAZYRAM_DAEMON_SERVER_SERVER_LOOP_H_

#include <atomic>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/event_fd.h"
#include "daemon/base/io_ring.h"
#include "daemon/base/log_limiter.h"
#include "daemon/base/unique_fd.h"
#include "daemon/protocol/protocol.h"
#include "daemon/server/page_server.h"

namespace lazyram {

// What every loop of one server reads. Owned by the PageServer; outlives
// its loops.
struct ServeContext {
  const PageServer::Options* options = nullptr;
  const protocol::Welcome* welcome = nullptr;
  const std::vector<UniqueFd>* files = nullptr;  // index = region index
  int listen_fd = -1;
  // Connections the demand loop serves: they count against
  // max_connections like the main loop's own.
  std::atomic<int> handed_off{0};
};

class ServerLoop {
 public:
  enum class Role { kMain, kDemand };
  struct Connection;  // server_loop_connection.h

  // `demand`, for the main loop only: where demand connections go (null:
  // the main loop serves them itself). `wake` is signalled by Stop and Adopt.
  ServerLoop(Role role, ServeContext* context, ServerLoop* demand, EventFd wake);
  ServerLoop(const ServerLoop&) = delete;
  ServerLoop& operator=(const ServerLoop&) = delete;
  ~ServerLoop();

  // Serves until Stop. Creates the ring on the calling thread.
  absl::Status Run();
  void Stop();

 private:
  enum class Kind { kWake, kAccept, kRecv, kSend, kRead, kTick };
  struct Op {
    Kind kind;
    Connection* conn = nullptr;
  };
  struct Frame;   // server_loop_connection.h
  struct ReadOp;  // server_loop_connection.h

  // The loop and the connections' transport (server_loop.cc).
  void Submit(Op* op, io_uring_sqe* sqe) { io_uring_sqe_set_data(sqe, op); }
  void ArmAccept();
  void ArmWake();
  void ArmTick();
  void OnWake();
  void OnAccept(int res);
  void OnTick();
  void OnRecv(Connection* c, int res);
  void OnSend(Connection* c, int res);
  void Reply(Connection* c, Frame frame);
  // Arms what the connection needs next; hands a ready demand connection
  // over to the demand loop once nothing of it is in flight here. `c` may
  // belong to another loop when it returns.
  void Pump(Connection* c);
  void Close(Connection* c, absl::string_view why);
  void MaybeFree(Connection* c);
  // Takes connections `from` hands over: the node moves, so every Op that
  // points into it stays valid.
  void Adopt(std::list<Connection>* from, std::list<Connection>::iterator it);

  // A connection's conversation (server_loop_session.cc).
  void OnHello(Connection* c, const protocol::FrameHeader& header, std::span<const uint8_t> body);
  void OnAuth(Connection* c, const protocol::FrameHeader& header, std::span<const uint8_t> body);
  // The handshake is done: the connection may READ.
  void Ready(Connection* c, std::string reply);
  // Queues an ERROR after which the connection is closed.
  void FatalError(Connection* c, uint64_t tag, protocol::ErrorCode code, absl::string_view message);
  void Parse(Connection* c);
  void StartRead(Connection* c, uint64_t tag, const protocol::ReadRequest& request);
  void OnRead(ReadOp* read, int res);
  void Reply(Connection* c, absl::string_view frame_bytes);

  const Role role_;
  ServeContext* const context_;
  ServerLoop* const demand_;
  EventFd wake_;
  std::string welcome_frame_;
  Op wake_op_{Kind::kWake};
  Op accept_op_{Kind::kAccept};
  Op tick_op_{Kind::kTick};
  __kernel_timespec tick_ts_{};
  LogLimiter refused_log_{absl::Seconds(10)}, timeout_log_{absl::Seconds(10)},
      no_auth_log_{absl::Seconds(10)}, auth_failed_log_{absl::Seconds(10)};

  absl::Mutex inbox_mu_;
  std::list<Connection> inbox_ ABSL_GUARDED_BY(inbox_mu_);  // adopted, not yet served
  bool stop_ ABSL_GUARDED_BY(inbox_mu_) = false;

  std::list<Connection> conns_;
  // Last: destroyed first, cancelling what is in flight before the
  // connections and buffers it points into go.
  std::unique_ptr<IoRing> ring_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_SERVER_SERVER_LOOP_H_
