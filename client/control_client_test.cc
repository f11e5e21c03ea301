#include "client/control_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace lazyram::client {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

void WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return;  // the client gave up; nothing to check here
    done += static_cast<size_t>(n);
  }
}

// A private directory for socket files, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string templ = "/tmp/lazyramctl_test.XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) std::abort();
    path_ = templ;
  }
  ~TempDir() {
    std::string cmd = "rm -rf '" + path_ + "'";
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "cannot remove %s\n", path_.c_str());
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Listens on a Unix socket and serves exactly one connection on its own
// thread: reads the request line, then hands the connection to `reply`.
class FakeDaemon {
 public:
  using Reply = std::function<void(int fd)>;

  // With `read_request` false the daemon replies without reading anything.
  explicit FakeDaemon(Reply reply, bool read_request = true)
      : path_(dir_.File("control.sock")), read_request_(read_request) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = {};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
        ::listen(listen_fd_, 1) != 0) {
      std::abort();
    }
    thread_ = std::thread([this, reply = std::move(reply)] { Serve(reply); });
  }
  ~FakeDaemon() {
    Join();
    ::close(listen_fd_);
  }

  const std::string& path() const { return path_; }

  // The request line as received, without its '\n'. Waits for the server.
  const std::string& request() {
    Join();
    return request_;
  }

 private:
  void Serve(const Reply& reply) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    char c;
    while (read_request_ && ::recv(fd, &c, 1, 0) == 1 && c != '\n') request_.push_back(c);
    reply(fd);
    ::close(fd);
  }

  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  TempDir dir_;
  std::string path_;
  const bool read_request_;
  int listen_fd_ = -1;
  std::string request_;
  std::thread thread_;  // last: started after, and joined before, the rest is torn down
};

FakeDaemon::Reply Send(std::string text) {
  return [text = std::move(text)](int fd) { WriteAll(fd, text); };
}

TEST(ControlClientTest, ReturnsOkReplyAndSendsOneLine) {
  FakeDaemon daemon(Send(R"({"ok":true,"source":"connected","extra":[1,2]})"
                         "\n"));
  absl::StatusOr<json> reply = ControlClient::Call(daemon.path(), {{"cmd", "status"}});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ((*reply)["source"], "connected");
  EXPECT_EQ((*reply)["ok"], true);
  EXPECT_EQ(daemon.request(), R"({"cmd":"status"})");
}

TEST(ControlClientTest, ErrorReplyKeepsCodeAndMessage) {
  const std::pair<const char*, absl::StatusCode> kCases[] = {
      {"INVALID_ARGUMENT", absl::StatusCode::kInvalidArgument},
      {"NOT_FOUND", absl::StatusCode::kNotFound},
      {"OUT_OF_RANGE", absl::StatusCode::kOutOfRange},
      {"UNAVAILABLE", absl::StatusCode::kUnavailable},
      {"FAILED_PRECONDITION", absl::StatusCode::kFailedPrecondition},
      {"INTERNAL", absl::StatusCode::kInternal},
      {"DATA_LOSS", absl::StatusCode::kDataLoss},
  };
  for (const auto& [name, code] : kCases) {
    json error = {{"ok", false}, {"code", name}, {"error", "no region named \"rom\""}};
    FakeDaemon daemon(Send(error.dump() + "\n"));
    absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "prefetch"}}).status();
    EXPECT_EQ(status.code(), code) << name;
    EXPECT_EQ(std::string(status.message()), "no region named \"rom\"") << name;
  }
}

TEST(ControlClientTest, UnknownErrorCodeIsKeptInMessage) {
  FakeDaemon daemon(Send(R"({"ok":false,"code":"SPLINES_UNRETICULATED","error":"oops"})"
                         "\n"));
  absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "status"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnknown);
  EXPECT_THAT(std::string(status.message()), HasSubstr("oops"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("SPLINES_UNRETICULATED"));
}

TEST(ControlClientTest, ErrorWithoutMessageNamesTheCode) {
  FakeDaemon daemon(Send(R"({"ok":false,"code":"NOT_FOUND"})"
                         "\n"));
  absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "status"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("NOT_FOUND"));
}

TEST(ControlClientTest, MalformedRepliesAreInternal) {
  const char* kReplies[] = {
      "this is not json\n",
      R"([1,2,3])"
      "\n",
      R"({"source":"none"})"
      "\n",
      R"({"ok":"yes"})"
      "\n",
      R"({"ok":false,"error":"x"})"
      "\n",
  };
  for (const char* text : kReplies) {
    FakeDaemon daemon(Send(text));
    absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "status"}}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << text;
    EXPECT_THAT(std::string(status.message()), HasSubstr("malformed reply from daemon")) << text;
  }
}

TEST(ControlClientTest, CloseWithoutReplyIsUnavailable) {
  FakeDaemon daemon([](int) {});
  absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "unmount"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("closed the control connection without replying"));
}

TEST(ControlClientTest, CloseMidReplyIsUnavailable) {
  FakeDaemon daemon(Send(R"({"ok":tr)"));
  absl::Status status = ControlClient::Call(daemon.path(), {{"cmd", "status"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()), HasSubstr("mid-reply"));
}

TEST(ControlClientTest, AcceptsCompleteReplyWithoutNewline) {
  FakeDaemon daemon(Send(R"({"ok":true})"));
  EXPECT_TRUE(ControlClient::Call(daemon.path(), {{"cmd", "status"}}).ok());
}

TEST(ControlClientTest, ReplyBeforeRequestIsReadStillCounts) {
  FakeDaemon daemon(Send(R"({"ok":false,"code":"INVALID_ARGUMENT","error":"too long"})"
                         "\n"),
                    /*read_request=*/false);
  absl::Status status =
      ControlClient::Call(daemon.path(), {{"cmd", "prefetch"}, {"region", std::string(60000, 'r')}})
          .status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(std::string(status.message()), "too long");
}

TEST(ControlClientTest, ReassemblesReplySentInPieces) {
  FakeDaemon daemon([](int fd) {
    for (const char* piece : {R"({"ok":tr)", R"(ue,"n":4)", "2}\n"}) {
      WriteAll(fd, piece);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  absl::StatusOr<json> reply = ControlClient::Call(daemon.path(), {{"cmd", "status"}});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ((*reply)["n"], 42);
}

TEST(ControlClientTest, LargeRequestAndReplyGoThroughWhole) {
  const std::string name(60 * 1024, 'r');
  const std::string big(2 << 20, 'x');
  FakeDaemon daemon(Send(json({{"ok", true}, {"blob", big}}).dump() + "\n"));
  absl::StatusOr<json> reply =
      ControlClient::Call(daemon.path(), {{"cmd", "prefetch"}, {"region", name}});
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ((*reply)["blob"], big);
  EXPECT_EQ(daemon.request(), json({{"cmd", "prefetch"}, {"region", name}}).dump());
}

TEST(ControlClientTest, SilentDaemonTimesOut) {
  absl::Notification release;
  FakeDaemon daemon([&release](int) { release.WaitForNotification(); });
  auto start = std::chrono::steady_clock::now();
  absl::Status status =
      ControlClient::Call(daemon.path(), {{"cmd", "status"}}, absl::Milliseconds(100)).status();
  auto took = std::chrono::steady_clock::now() - start;
  release.Notify();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(status.message()), HasSubstr("did not answer within 100ms"));
  EXPECT_GE(took, std::chrono::milliseconds(90));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST(ControlClientTest, MissingSocketSaysSo) {
  TempDir dir;
  const std::string path = dir.File("absent.sock");
  absl::Status status = ControlClient::Call(path, {{"cmd", "status"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(status.message()),
            "cannot connect to control socket " + path +
                ": No such file or directory (is lazyramd running?)");
}

TEST(ControlClientTest, StaleSocketIsUnavailable) {
  TempDir dir;
  const std::string path = dir.File("stale.sock");
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);  // the file stays behind, as after a crashed daemon

  absl::Status status = ControlClient::Call(path, {{"cmd", "status"}}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(status.message()),
              HasSubstr("Connection refused (is lazyramd running?)"));
}

TEST(ControlClientTest, RejectsBadPaths) {
  EXPECT_EQ(ControlClient::Call("", {{"cmd", "status"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status status = ControlClient::Call("/tmp/" + std::string(200, 'a'), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("longer than 107 bytes"));
}

TEST(ControlClientTest, RejectsOversizedRequestBeforeConnecting) {
  json request = {{"cmd", "prefetch"},
                  {"region", std::string(ControlClient::kMaxRequestBytes, 'r')}};
  absl::Status status = ControlClient::Call("/nonexistent/control.sock", request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("at most 65536"));
}

TEST(ControlClientTest, RejectsUnencodableRequest) {
  json request = {{"cmd", "prefetch"}, {"region", std::string("\xff\xfe")}};
  absl::Status status = ControlClient::Call("/nonexistent/control.sock", request).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("cannot encode control request"));
}

}  // namespace
}  // namespace lazyram::client
