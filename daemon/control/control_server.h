// ControlServer: the daemon's control socket (a Unix stream socket, mode
// 0600, peers of other users refused). A client sends one JSON object and a
// newline; the handler's JSON reply goes back with a newline; the
// connection closes. docs/control.md has the requests.
//
// Threads: one acceptor ("lazyram-ctl") plus one short-lived thread per
// client, at most kMaxClients at once, so a slow `prefetch` or `unmount`
// never blocks `status`. The destructor stops accepting, waits for the
// client threads and removes the socket file.
#ifndef LAZYRAM_DAEMON_CONTROL_CONTROL_SERVER_H_
#define LAZYRAM_DAEMON_CONTROL_CONTROL_SERVER_H_

#include <atomic>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/base/event_fd.h"
#include "daemon/base/unique_fd.h"
#include "daemon/control/control_request.h"

namespace lazyram {

class ControlHandler {
 public:
  virtual ~ControlHandler() = default;
  // Answers one request. May block (prefetch waits for its pages). Runs on
  // a client thread; several may run at once.
  virtual nlohmann::json Handle(const nlohmann::json& request) = 0;
};

class ControlServer {
 public:
  static constexpr int kMaxClients = 16;
  static constexpr size_t kMaxRequest = kMaxControlRequest;

  // Binds `path` (creating its directory, mode 0700, if missing). A stale
  // socket left by a dead daemon is replaced; a live one is an error.
  static absl::StatusOr<std::unique_ptr<ControlServer>> Start(std::string path,
                                                              ControlHandler* handler);
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;
  ~ControlServer();

  const std::string& path() const { return path_; }

 private:
  ControlServer(std::string path, UniqueFd listen_fd, EventFd wake, ControlHandler* handler);
  void AcceptLoop();
  void Serve(UniqueFd client);

  const std::string path_;
  UniqueFd listen_fd_;
  EventFd wake_;
  ControlHandler* const handler_;

  struct Client {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::list<Client> clients_;  // touched by the acceptor, then the destructor
  std::thread acceptor_;       // last: joined in the destructor before the rest goes
};

// Reply helpers for handlers: {"ok":true, ...fields} and
// {"ok":false,"code":"NOT_FOUND","error":"..."}.
nlohmann::json OkReply(nlohmann::json fields = nlohmann::json::object());
nlohmann::json ErrorReply(const absl::Status& status);

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CONTROL_CONTROL_SERVER_H_
