// Bad input never crashes or hangs a command: it fails with a non-zero exit
// and exactly one error line that names what was wrong, and leaves nothing
// mounted or running. Also: --help documents every flag, and `serve`
// announces its real port and exits 0 on SIGTERM and SIGINT.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/protocol/protocol.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

// Every bad-input command must be done long before this; a hang fails.
constexpr absl::Duration kCommandTimeout = absl::Seconds(60);

// A port on 127.0.0.1 with nothing listening: bound once, then released.
uint16_t ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::abort();
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// Pids of running processes (other than this one) whose command line
// contains `needle`.
std::vector<pid_t> ProcessesMentioning(const std::string& needle) {
  std::vector<pid_t> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (!std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = std::stoi(name);
    if (pid == getpid()) continue;
    std::ifstream in(entry.path() / "cmdline");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string cmdline = ss.str();
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    // A zombie's command line is empty, so only live processes match.
    if (absl::StrContains(cmdline, needle)) found.push_back(pid);
  }
  return found;
}

// The contract for every bad input: a non-zero exit within the timeout and
// one non-empty stderr line that mentions each of `mentions`.
void ExpectOneErrorLine(const RunResult& r, const std::vector<std::string>& mentions) {
  EXPECT_NE(r.exit_code, -1) << "timed out or crashed; stderr: " << r.err;
  EXPECT_NE(r.exit_code, 0) << "stderr: " << r.err;
  ASSERT_FALSE(r.err.empty()) << "no error message";
  EXPECT_EQ(r.err.back(), '\n') << "stderr: '" << r.err << "'";
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: '" << r.err << "'";
  EXPECT_GT(r.err.find('\n'), 0u) << "the error line is empty";
  for (const std::string& m : mentions) {
    EXPECT_TRUE(absl::StrContains(r.err, m)) << "stderr does not mention '" << m << "': " << r.err;
  }
}

class BadInputTest : public ::testing::Test {
 protected:
  BadInputTest() {
    WriteImage(image_, 1 << 20, 7);
    std::filesystem::create_directories(mountpoint_);
  }

  RunResult Lazyramd(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {LazyramdPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return lazyram::testing::Run(argv, kCommandTimeout);
  }
  RunResult Lazyramctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {LazyramctlPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return lazyram::testing::Run(argv, kCommandTimeout);
  }
  // `serve` with one good region on any port, then `extra`.
  RunResult Serve(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"serve", "--listen", "127.0.0.1:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Lazyramd(args);
  }
  // `mount` of `mountpoint` with the control socket under the temporary
  // directory, then `extra`; afterwards nothing may be mounted there and no
  // daemon for it may be left running.
  RunResult Mount(const std::string& mountpoint, const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"mount", mountpoint, "--control", control_};
    args.insert(args.end(), extra.begin(), extra.end());
    RunResult r = Lazyramd(args);
    EXPECT_FALSE(IsMounted(mountpoint)) << mountpoint << " was left mounted";
    ForceUnmount(mountpoint);
    // A background daemon that failed may need a moment to exit.
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (!ProcessesMentioning(control_).empty() && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::vector<pid_t> left = ProcessesMentioning(control_);
    EXPECT_TRUE(left.empty()) << "a daemon was left running, pid " << left.front();
    for (pid_t pid : left) kill(pid, SIGKILL);
    return r;
  }

  // Key files that must be refused, and what the error must say.
  std::vector<std::pair<std::string, std::string>> BadKeyFiles() {
    auto write = [this](const std::string& name, const std::string& content, mode_t mode) {
      const std::string path = dir_.Sub(name);
      std::ofstream(path) << content;
      chmod(path.c_str(), mode);
      return path;
    };
    const std::string missing = dir_.Sub("no-such-key");
    return {{missing, "No such file"},
            {write("open-key", "0123456789abcdef0123456789\n", 0644), "chmod 600"},
            {write("short-key", "short\n", 0600), "at least 16"},
            {write("empty-key", "", 0600), "empty"}};
  }

  TempDir dir_;
  const std::string image_ = dir_.Sub("image");
  const std::string mountpoint_ = dir_.Sub("mnt");
  const std::string control_ = dir_.Sub("ctl.sock");
};

// --- lazyramd: the command line ---------------------------------------------

TEST_F(BadInputTest, NoSubcommand) { ExpectOneErrorLine(Lazyramd({}), {"subcommand"}); }

TEST_F(BadInputTest, UnknownSubcommand) {
  ExpectOneErrorLine(Lazyramd({"frobnicate"}), {"frobnicate"});
}

TEST_F(BadInputTest, UnknownFlagForServe) {
  ExpectOneErrorLine(Serve({"--region", "mem0=" + image_, "--frobnicate"}), {"--frobnicate"});
}

TEST_F(BadInputTest, UnknownFlagForMount) {
  ExpectOneErrorLine(Mount(mountpoint_, {"--frobnicate"}), {"--frobnicate"});
}

TEST_F(BadInputTest, ServeWithoutListen) {
  ExpectOneErrorLine(Lazyramd({"serve", "--region", "mem0=" + image_}), {"--listen"});
}

TEST_F(BadInputTest, ServeWithoutRegion) { ExpectOneErrorLine(Serve({}), {"--region"}); }

TEST_F(BadInputTest, BadListenAddress) {
  for (const std::string listen : {"nohost", "127.0.0.1:99999", "127.0.0.1:abc"}) {
    SCOPED_TRACE(listen);
    ExpectOneErrorLine(Lazyramd({"serve", "--listen", listen, "--region", "mem0=" + image_}),
                       {listen});
  }
}

// --- lazyramd serve: images and region names -------------------------------

TEST_F(BadInputTest, MissingImage) {
  const std::string missing = dir_.Sub("no-such-image");
  ExpectOneErrorLine(Serve({"--region", "mem0=" + missing}), {missing});
}

TEST_F(BadInputTest, ImageIsADirectory) {
  const std::string directory = dir_.Sub("a-directory");
  std::filesystem::create_directories(directory);
  ExpectOneErrorLine(Serve({"--region", "mem0=" + directory}), {directory});
}

TEST_F(BadInputTest, EmptyImage) {
  const std::string empty = dir_.Sub("empty-image");
  std::ofstream(empty).flush();
  ExpectOneErrorLine(Serve({"--region", "mem0=" + empty}), {empty});
}

TEST_F(BadInputTest, EmptyRegionName) {
  ExpectOneErrorLine(Serve({"--region", "=" + image_}), {"region", "empty"});
}

TEST_F(BadInputTest, RegionNameWithSlash) {
  ExpectOneErrorLine(Serve({"--region", "a/b=" + image_}), {"a/b"});
}

TEST_F(BadInputTest, DuplicatedRegionName) {
  const std::string other = dir_.Sub("image2");
  WriteImage(other, 1 << 20, 8);
  ExpectOneErrorLine(Serve({"--region", "dupname=" + image_, "--region", "dupname=" + other}),
                     {"dupname"});
}

TEST_F(BadInputTest, RegionWithoutEquals) {
  ExpectOneErrorLine(Serve({"--region", "noequals"}), {"noequals"});
}

// --- lazyramd serve: authentication, listen policy, limits -----------------

TEST_F(BadInputTest, ServeKeyFileProblems) {
  for (const auto& [key, mention] : BadKeyFiles()) {
    SCOPED_TRACE(key);
    ExpectOneErrorLine(Serve({"--region", "mem0=" + image_, "--auth-key-file", key}),
                       {key, mention});
  }
}

TEST_F(BadInputTest, ServeOnANonLoopbackAddressWithoutKey) {
  ExpectOneErrorLine(Lazyramd({"serve", "--listen", "0.0.0.0:0", "--region", "mem0=" + image_}),
                     {"0.0.0.0", "--auth-key-file", "--insecure"});
}

TEST_F(BadInputTest, ServeBadLimits) {
  const std::vector<std::vector<std::string>> cases = {
      {"--max-connections", "0"}, {"--max-connections", "many"}, {"--max-inflight", "0"},
      {"--max-inflight", "-3"},   {"--handshake-timeout", "0"},  {"--handshake-timeout", "soon"},
  };
  for (const std::vector<std::string>& flag : cases) {
    SCOPED_TRACE(flag[0] + " " + flag[1]);
    ExpectOneErrorLine(Serve({"--region", "mem0=" + image_, flag[0], flag[1]}), {flag[0]});
  }
}

// --- lazyramd mount ----------------------------------------------------------

TEST_F(BadInputTest, MountpointDoesNotExist) {
  const std::string missing = dir_.Sub("no-such-dir");
  ExpectOneErrorLine(Mount(missing, {}), {missing});
}

TEST_F(BadInputTest, MountpointIsARegularFile) { ExpectOneErrorLine(Mount(image_, {}), {image_}); }

TEST_F(BadInputTest, MalformedSource) {
  // What the message must name: the part of the URL that is wrong.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"http://127.0.0.1:1", "http://127.0.0.1:1"},
      {"tcp://127.0.0.1", "127.0.0.1"},
      {"tcp://:80", ":80"},
      {"tcp://127.0.0.1:0", "127.0.0.1:0"},
      {"tcp://127.0.0.1:70000", "70000"},
  };
  for (const auto& [source, mention] : cases) {
    SCOPED_TRACE(source);
    ExpectOneErrorLine(Mount(mountpoint_, {"--source", source}), {mention});
    ExpectOneErrorLine(Mount(mountpoint_, {"--source", source, "--foreground"}), {mention});
  }
}

TEST_F(BadInputTest, UnreachableSourceInTheForeground) {
  const std::string address = absl::StrCat("127.0.0.1:", ClosedPort());
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + address, "--foreground"}),
                     {address});
}

TEST_F(BadInputTest, UnreachableSourceInTheBackground) {
  const std::string address = absl::StrCat("127.0.0.1:", ClosedPort());
  ExpectOneErrorLine(
      Mount(mountpoint_, {"--source", "tcp://" + address, "--log", dir_.Sub("daemon.log")}),
      {address});
}

// Something listens at --source but does not speak the page protocol.
// `answer` gets each accepted connection after the client's HELLO has
// been read; connections are handled one at a time.
class NotAPageServer {
 public:
  explicit NotAPageServer(std::function<void(int fd, const std::atomic<bool>& stop)> answer)
      : answer_(std::move(answer)) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        listen(listen_fd_, 16) != 0 ||
        getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      std::abort();
    }
    address_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
    thread_ = std::thread([this] { Loop(); });
  }
  ~NotAPageServer() {
    stop_.store(true);
    thread_.join();
    close(listen_fd_);
  }
  const std::string& address() const { return address_; }

 private:
  void Loop() {
    while (!stop_.load()) {
      pollfd pfd{listen_fd_, POLLIN, 0};
      if (poll(&pfd, 1, 50) <= 0) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      char hello[2 * 16];  // header + HELLO body
      size_t got = 0;
      while (got < sizeof hello && !stop_.load()) {
        pfd = {fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0) continue;
        ssize_t n = recv(fd, hello + got, sizeof hello - got, 0);
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      answer_(fd, stop_);
      close(fd);
    }
  }

  std::function<void(int, const std::atomic<bool>&)> answer_;
  int listen_fd_ = -1;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: started once the members above exist
};

void SendAll(int fd, const std::string& bytes) {
  [[maybe_unused]] ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

TEST_F(BadInputTest, SourceAnswersGarbage) {
  NotAPageServer http([](int fd, const std::atomic<bool>&) {
    SendAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
  });
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + http.address()}), {http.address()});
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + http.address(), "--foreground"}),
                     {http.address()});
}

TEST_F(BadInputTest, SourceSendsAnOversizedWelcome) {
  NotAPageServer huge([](int fd, const std::atomic<bool>&) {
    uint8_t header[protocol::kHeaderSize];
    protocol::EncodeHeader({protocol::kMaxHandshakeBody + 1, protocol::FrameType::kWelcome, 0, 0},
                           header);
    SendAll(fd, std::string(reinterpret_cast<const char*>(header), sizeof header));
    SendAll(fd, std::string(64 << 10, '\0'));
  });
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + huge.address()}),
                     {huge.address(), "limit"});
}

TEST_F(BadInputTest, SourceNeverAnswers) {
  // Holds the connection open and says nothing, until the test ends.
  NotAPageServer silent([](int, const std::atomic<bool>& stop) {
    while (!stop.load()) absl::SleepFor(absl::Milliseconds(20));
  });
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + silent.address()}),
                     {silent.address()});
}

TEST_F(BadInputTest, MountKeyFileProblems) {
  const std::string address = absl::StrCat("127.0.0.1:", ClosedPort());
  for (const auto& [key, mention] : BadKeyFiles()) {
    SCOPED_TRACE(key);
    // The key is checked before the source is dialled.
    ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + address, "--auth-key-file", key}),
                       {key, mention});
    ExpectOneErrorLine(Mount(mountpoint_, {"--source", "tcp://" + address, "--auth-key-file", key,
                                           "--foreground"}),
                       {key, mention});
  }
}

TEST_F(BadInputTest, MountKeyWithoutAPageServer) {
  const std::string key = dir_.Sub("key");
  std::ofstream(key) << "0123456789abcdef0123456789\n";
  chmod(key.c_str(), 0600);
  ExpectOneErrorLine(Mount(mountpoint_, {"--auth-key-file", key}), {"--auth-key-file", "tcp://"});
  ExpectOneErrorLine(Mount(mountpoint_, {"--source", "file://" + image_, "--auth-key-file", key}),
                     {"--auth-key-file", "tcp://"});
}

TEST_F(BadInputTest, MissingStoreDirectory) {
  const std::string missing = dir_.Sub("no-such-store");
  ExpectOneErrorLine(Mount(mountpoint_, {"--store", missing}), {missing});
  ExpectOneErrorLine(Mount(mountpoint_, {"--store", missing, "--foreground"}), {missing});
}

TEST_F(BadInputTest, BadPrefetchValue) {
  ExpectOneErrorLine(Mount(mountpoint_, {"--prefetch", "maybe"}), {"maybe"});
}

TEST_F(BadInputTest, BadPullYield) {
  ExpectOneErrorLine(Mount(mountpoint_, {"--pull-yield", "-1"}), {"--pull-yield"});
  ExpectOneErrorLine(Mount(mountpoint_, {"--pull-yield", "soon"}), {"--pull-yield"});
}

// --- lazyramctl --------------------------------------------------------------

TEST_F(BadInputTest, CtlWithoutControl) {
  ExpectOneErrorLine(Lazyramctl({"status"}), {"--control"});
}

TEST_F(BadInputTest, CtlControlSocketDoesNotExist) {
  const std::string missing = dir_.Sub("no-such.sock");
  const std::vector<std::vector<std::string>> commands = {{"status"},
                                                          {"status", "--json"},
                                                          {"wait", "--timeout", "5"},
                                                          {"prefetch", "mem0"},
                                                          {"unmount"}};
  for (const std::vector<std::string>& command : commands) {
    SCOPED_TRACE(command.front());
    std::vector<std::string> args = {"--control", missing};
    args.insert(args.end(), command.begin(), command.end());
    ExpectOneErrorLine(Lazyramctl(args), {missing});
  }
}

TEST_F(BadInputTest, CtlUnknownSubcommand) {
  ExpectOneErrorLine(Lazyramctl({"--control", control_, "frobnicate"}), {"frobnicate"});
}

TEST_F(BadInputTest, CtlPrefetchOffsetWithoutLength) {
  ExpectOneErrorLine(Lazyramctl({"--control", control_, "prefetch", "mem0", "4096"}), {"LENGTH"});
}

// --- Help --------------------------------------------------------------------

void ExpectHelp(const RunResult& r, const std::vector<std::string>& mentions) {
  EXPECT_EQ(r.exit_code, 0) << r.err;
  for (const std::string& m : mentions) {
    EXPECT_TRUE(absl::StrContains(r.out, m)) << "help does not mention " << m << ":\n" << r.out;
  }
}

TEST_F(BadInputTest, HelpDocumentsEveryFlag) {
  ExpectHelp(Lazyramd({"--help"}), {"serve", "mount"});
  ExpectHelp(Lazyramd({"serve", "--help"}),
             {"--listen", "--region", "--auth-key-file", "--insecure", "--max-connections",
              "--max-inflight", "--handshake-timeout"});
  ExpectHelp(Lazyramd({"mount", "--help"}), {"MOUNTPOINT", "--source", "--store", "--control",
                                             "--prefetch", "--foreground", "--auth-key-file"});
  ExpectHelp(Lazyramctl({"--help"}), {"--control", "status", "wait", "prefetch", "unmount"});
  ExpectHelp(Lazyramctl({"status", "--help"}), {"--json"});
  ExpectHelp(Lazyramctl({"wait", "--help"}), {"--timeout", "--progress"});
  ExpectHelp(Lazyramctl({"prefetch", "--help"}), {"NAME", "OFFSET", "LENGTH"});
}

// --- serve: the announcement and the signals -------------------------------

// A `lazyramd serve` child whose stdout the test reads.
class ServeChild {
 public:
  explicit ServeChild(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {LazyramdPath(), "serve"};
    argv.insert(argv.end(), args.begin(), args.end());
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) std::abort();
    std::vector<char*> c_argv;
    for (std::string& a : argv) c_argv.push_back(a.data());
    c_argv.push_back(nullptr);
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      int null_fd = open("/dev/null", O_RDWR);
      dup2(null_fd, STDIN_FILENO);
      dup2(null_fd, STDERR_FILENO);  // its log lines are not under test here
      execv(c_argv[0], c_argv.data());
      _exit(127);
    }
    close(out[1]);
    out_fd_ = out[0];
  }
  ~ServeChild() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_fd_);
  }

  // Reads stdout until `done` says it has enough, EOF, or `timeout`.
  std::string ReadUntil(const std::function<bool(const std::string&)>& done,
                        absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!done(out_)) {
      const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
      pollfd pfd{out_fd_, POLLIN, 0};
      if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) <= 0) break;
      char buf[256];
      ssize_t n = read(out_fd_, buf, sizeof buf);
      if (n <= 0) break;
      out_.append(buf, static_cast<size_t>(n));
    }
    return out_;
  }

  // Sends `sig` and waits for the exit; the exit code, or -1 for a signal
  // or a timeout.
  int SignalAndWait(int sig, absl::Duration timeout) {
    kill(pid_, sig);
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string out_;
};

bool CanConnect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}

TEST_F(BadInputTest, ServeAnnouncesItsPortAndExitsCleanlyOnSignals) {
  for (int sig : {SIGTERM, SIGINT}) {
    SCOPED_TRACE(strsignal(sig));
    ServeChild serve({"--listen", "127.0.0.1:0", "--region", "mem0=" + image_});
    const std::string first = serve.ReadUntil(
        [](const std::string& s) { return s.find('\n') != std::string::npos; }, absl::Seconds(30));
    std::smatch match;
    ASSERT_TRUE(std::regex_match(first, match, std::regex("listening on 127\\.0\\.0\\.1:(\\d+)\n")))
        << "stdout: '" << first << "'";
    const int port = std::stoi(match[1]);
    EXPECT_GT(port, 0);
    EXPECT_LT(port, 65536);
    EXPECT_TRUE(CanConnect(static_cast<uint16_t>(port)));
    EXPECT_EQ(serve.SignalAndWait(sig, absl::Seconds(30)), 0);
    // Nothing else on stdout, ever.
    EXPECT_EQ(serve.ReadUntil([](const std::string&) { return false; }, absl::Seconds(10)), first);
  }
}

}  // namespace
}  // namespace lazyram::testing
