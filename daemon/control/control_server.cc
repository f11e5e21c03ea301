#include "daemon/control/control_server.h"

#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/log.h"
#include "daemon/control/control_request.h"

namespace lazyram {

nlohmann::json OkReply(nlohmann::json fields) {
  fields["ok"] = true;
  return fields;
}

nlohmann::json ErrorReply(const absl::Status& status) {
  return {{"ok", false},
          {"code", absl::StatusCodeToString(status.code())},
          {"error", std::string(status.message())}};
}

namespace {

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("control socket path is too long: ", path));
  }
  std::copy(path.begin(), path.end(), addr.sun_path);
  return addr;
}

bool SocketIsLive(const sockaddr_un& addr) {
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  return fd.valid() &&
         connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ControlServer>> ControlServer::Start(std::string path,
                                                                    ControlHandler* handler) {
  absl::StatusOr<sockaddr_un> addr = UnixAddress(path);
  if (!addr.ok()) return addr.status();
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (!dir.empty() && mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, absl::StrCat("creating control socket directory ", dir.string()));
  }
  if (SocketIsLive(*addr)) {
    return absl::AlreadyExistsError(
        absl::StrCat("control socket ", path, " is in use by another lazyramd"));
  }
  unlink(path.c_str());
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "socket");
  // Created 0600 from the start: no window where another user could connect.
  mode_t old_mask = umask(0177);
  int rc = bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr);
  int bind_errno = errno;
  umask(old_mask);
  if (rc != 0) return ErrnoStatus(bind_errno, absl::StrCat("binding control socket ", path));
  if (listen(fd.get(), 16) != 0) return ErrnoStatus(errno, "listen on control socket");
  absl::StatusOr<EventFd> wake = EventFd::Create();
  if (!wake.ok()) return wake.status();
  std::unique_ptr<ControlServer> server(
      new ControlServer(std::move(path), std::move(fd), *std::move(wake), handler));
  server->acceptor_ = std::thread([s = server.get()] {
    pthread_setname_np(pthread_self(), "lazyram-ctl");
    s->AcceptLoop();
  });
  return server;
}

ControlServer::ControlServer(std::string path, UniqueFd listen_fd, EventFd wake,
                             ControlHandler* handler)
    : path_(std::move(path)),
      listen_fd_(std::move(listen_fd)),
      wake_(std::move(wake)),
      handler_(handler) {}

ControlServer::~ControlServer() {
  wake_.Signal();
  if (acceptor_.joinable()) acceptor_.join();
  for (Client& c : clients_) c.thread.join();
  unlink(path_.c_str());
}

void ControlServer::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_.fd(), POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LogError("control socket: poll: %s", std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    UniqueFd client(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid()) continue;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(client.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != getuid() && cred.uid != 0)) {
      LogWarning("control socket: refused a client of uid %u", cred.uid);
      continue;
    }
    clients_.remove_if([](Client& c) {
      if (!c.finished->load()) return false;
      c.thread.join();
      return true;
    });
    if (clients_.size() >= kMaxClients) {
      LogWarning("control socket: too many clients; refusing one");
      continue;
    }
    auto finished = std::make_shared<std::atomic<bool>>(false);
    std::thread thread([this, finished, client = std::move(client)]() mutable {
      pthread_setname_np(pthread_self(), "lazyram-ctl-req");
      Serve(std::move(client));
      finished->store(true);
    });
    clients_.push_back({std::move(thread), std::move(finished)});
  }
}

void ControlServer::Serve(UniqueFd client) {
  timeval tv{5, 0};  // a client that does not send its request soon is dropped
  setsockopt(client.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string request;
  char buf[4096];
  while (request.find('\n') == std::string::npos) {
    ssize_t n = read(client.get(), buf, sizeof buf);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      if (request.empty()) return;
      break;
    }
    request.append(buf, static_cast<size_t>(n));
    if (request.size() > kMaxRequest) break;
  }
  const std::string out = AnswerControlRequest(request, handler_);
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = send(client.get(), out.data() + done, out.size() - done, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return;
    }
    done += static_cast<size_t>(n);
  }
}

}  // namespace lazyram
