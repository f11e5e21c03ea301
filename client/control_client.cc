#include "client/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lazyram::client {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// The client's one place where errno becomes a Status. `hint` tells the
// user what to check, since a bare strerror rarely says which side is wrong.
absl::Status ErrnoToStatus(int err, absl::string_view context, absl::string_view hint = {}) {
  std::string message = absl::StrCat(context, ": ", std::strerror(err));
  if (!hint.empty()) absl::StrAppend(&message, " (", hint, ")");
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case EPIPE:
    case ENOTCONN:
    case EAGAIN:
    case ETIMEDOUT:
      return absl::UnavailableError(message);
    case EINVAL:
    case ENAMETOOLONG:
    case EPROTOTYPE:
      return absl::InvalidArgumentError(message);
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOBUFS:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Bounds one Call. Built on the monotonic clock so a wall-clock jump
// neither fires nor postpones a timeout.
class Deadline {
 public:
  explicit Deadline(absl::Duration timeout) : timeout_(timeout), start_(Clock::now()) {}

  // Milliseconds left, rounded up, in poll()'s convention (-1: no limit).
  int PollTimeoutMs() const {
    if (timeout_ == absl::InfiniteDuration()) return -1;
    absl::Duration left = timeout_ - absl::FromChrono(Clock::now() - start_);
    if (left <= absl::ZeroDuration()) return 0;
    return static_cast<int>(
        std::min<int64_t>(absl::ToInt64Milliseconds(left + absl::Microseconds(999)), 1 << 30));
  }

  absl::Duration timeout() const { return timeout_; }

 private:
  absl::Duration timeout_;
  Clock::time_point start_;
};

// Blocks until `fd` is ready for `events` or the deadline passes.
absl::Status WaitReady(int fd, short events, const Deadline& deadline,
                       absl::string_view socket_path) {
  for (;;) {
    pollfd pfd = {.fd = fd, .events = events, .revents = 0};
    int ready = ::poll(&pfd, 1, deadline.PollTimeoutMs());
    if (ready > 0) return absl::OkStatus();
    if (ready == 0) {
      return absl::DeadlineExceededError(absl::StrCat("lazyramd at ", socket_path,
                                                      " did not answer within ",
                                                      absl::FormatDuration(deadline.timeout())));
    }
    if (errno != EINTR) return ErrnoToStatus(errno, "poll on control socket");
  }
}

absl::Status Connect(int fd, absl::string_view socket_path) {
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty()) return absl::InvalidArgumentError("control socket path is empty");
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "control socket path is longer than ", sizeof(addr.sun_path) - 1, " bytes: ", socket_path));
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  // A non-blocking Unix-socket connect never goes EINPROGRESS or EINTR: it
  // succeeds, or fails at once (EAGAIN when the accept backlog is full).
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    absl::string_view hint;
    if (err == ENOENT || err == ECONNREFUSED) hint = "is lazyramd running?";
    if (err == EAGAIN) hint = "lazyramd is not accepting connections; retry";
    return ErrnoToStatus(err, absl::StrCat("cannot connect to control socket ", socket_path), hint);
  }
  return absl::OkStatus();
}

absl::Status SendAll(int fd, absl::string_view data, const Deadline& deadline,
                     absl::string_view socket_path) {
  while (!data.empty()) {
    // MSG_NOSIGNAL: a daemon that hangs up must become EPIPE, not kill us.
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<size_t>(n));
    } else if (errno == EAGAIN) {
      if (absl::Status s = WaitReady(fd, POLLOUT, deadline, socket_path); !s.ok()) return s;
    } else if (errno != EINTR) {
      return ErrnoToStatus(errno, "lost connection to lazyramd while sending the request");
    }
  }
  return absl::OkStatus();
}

struct ReplyLine {
  std::string text;  // without the '\n'
  bool terminated;   // false: the daemon closed before sending '\n'
};

// Reads until the first '\n' or until the daemon closes.
absl::StatusOr<ReplyLine> ReadReplyLine(int fd, const Deadline& deadline,
                                        absl::string_view socket_path) {
  std::string reply;
  char buf[16 * 1024];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      size_t scanned = reply.size();
      reply.append(buf, static_cast<size_t>(n));
      if (size_t nl = reply.find('\n', scanned); nl != std::string::npos) {
        reply.resize(nl);
        return ReplyLine{std::move(reply), true};
      }
      if (reply.size() > ControlClient::kMaxReplyBytes) {
        return absl::InternalError(absl::StrCat("malformed reply from daemon: longer than ",
                                                ControlClient::kMaxReplyBytes, " bytes"));
      }
    } else if (n == 0) {
      if (reply.empty()) {
        return absl::UnavailableError(
            "lazyramd closed the control connection without replying (did it exit?)");
      }
      return ReplyLine{std::move(reply), false};
    } else if (errno == EAGAIN) {
      if (absl::Status s = WaitReady(fd, POLLIN, deadline, socket_path); !s.ok()) return s;
    } else if (errno != EINTR) {
      return ErrnoToStatus(errno, "lost connection to lazyramd while reading the reply");
    }
  }
}

// The inverse of absl::StatusCodeToString, which is what the daemon sends.
absl::StatusCode CodeFromName(absl::string_view name) {
  for (int i = 1; i <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++i) {
    auto code = static_cast<absl::StatusCode>(i);
    if (absl::StatusCodeToString(code) == name) return code;
  }
  return absl::StatusCode::kUnknown;
}

// An unterminated reply that still parses is accepted: the newline carries
// no information once the daemon has closed.
absl::StatusOr<json> ParseReply(const ReplyLine& reply_line) {
  absl::string_view line = reply_line.text;
  json reply = json::parse(reply_line.text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded()) {
    if (!reply_line.terminated) {
      return absl::UnavailableError("lazyramd closed the control connection in mid-reply");
    }
    constexpr size_t kQuoteLimit = 80;
    return absl::InternalError(absl::StrCat("malformed reply from daemon: not JSON: \"",
                                            absl::CHexEscape(line.substr(0, kQuoteLimit)),
                                            line.size() > kQuoteLimit ? "...\"" : "\""));
  }
  if (!reply.is_object()) {
    return absl::InternalError("malformed reply from daemon: not a JSON object");
  }
  auto ok = reply.find("ok");
  if (ok == reply.end() || !ok->is_boolean()) {
    return absl::InternalError("malformed reply from daemon: no boolean \"ok\"");
  }
  if (ok->get<bool>()) return reply;

  auto code = reply.find("code");
  auto error = reply.find("error");
  if (code == reply.end() || !code->is_string()) {
    return absl::InternalError("malformed reply from daemon: \"ok\":false without a \"code\"");
  }
  const std::string& code_name = code->get_ref<const std::string&>();
  std::string message = (error != reply.end() && error->is_string())
                            ? error->get<std::string>()
                            : absl::StrCat("lazyramd reported ", code_name, " without a message");
  absl::StatusCode status_code = CodeFromName(code_name);
  if (status_code == absl::StatusCode::kUnknown && code_name != "UNKNOWN") {
    // Keep a code this client does not know visible instead of dropping it.
    absl::StrAppend(&message, " [daemon code ", code_name, "]");
  }
  return absl::Status(status_code, message);
}

absl::StatusOr<json> CallOnce(absl::string_view socket_path, const json& request,
                              absl::Duration timeout) {
  const std::string line = request.dump() + "\n";
  if (line.size() > ControlClient::kMaxRequestBytes) {
    return absl::InvalidArgumentError(absl::StrCat("control request is ", line.size(),
                                                   " bytes; the daemon accepts at most ",
                                                   ControlClient::kMaxRequestBytes));
  }
  const Deadline deadline(timeout);

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoToStatus(errno, "cannot create a Unix socket");
  absl::Cleanup close_fd = [fd] { ::close(fd); };

  if (absl::Status s = Connect(fd, socket_path); !s.ok()) return s;
  // No shutdown(SHUT_WR) after the request: a daemon may take EOF on a
  // long prefetch as the client giving up.
  absl::Status sent = SendAll(fd, line, deadline, socket_path);
  if (!sent.ok() && !absl::IsUnavailable(sent)) return sent;

  absl::StatusOr<ReplyLine> reply = ReadReplyLine(fd, deadline, socket_path);
  if (!sent.ok()) {
    // A daemon that rejects a request may answer and hang up before reading
    // all of it; its answer says more than our EPIPE.
    return reply.ok() && reply->terminated ? ParseReply(*reply) : sent;
  }
  if (!reply.ok()) return reply.status();
  return ParseReply(*reply);
}

}  // namespace

absl::StatusOr<json> ControlClient::Call(std::string_view socket_path, const json& request,
                                         absl::Duration timeout) {
  // nlohmann/json reports bad input (e.g. invalid UTF-8 in a request
  // string) by throwing; nothing past this boundary expects exceptions.
  try {
    return CallOnce(absl::string_view(socket_path.data(), socket_path.size()), request, timeout);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot encode control request: ", e.what()));
  }
}

}  // namespace lazyram::client
