#include "tests/test_env.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/control_client.h"
#include "fusefs/bdi_tuning.h"

namespace lazyram::testing {
namespace {

std::string EnvOrDie(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    std::fprintf(stderr, "%s is not set: run the tests through meson\n", name);
    std::abort();
  }
  return value;
}

// Waits up to `timeout` for `pid`; true if it was reaped (exit code in
// *code, -1 for a signal).
bool WaitFor(pid_t pid, absl::Duration timeout, int* code) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return true;
    }
    if (r < 0 && errno != EINTR) {
      *code = -1;
      return true;
    }
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

void KillAndReap(pid_t pid) {
  int code;
  kill(pid, SIGKILL);
  WaitFor(pid, absl::Seconds(10), &code);
}

// One line per thread of `pid`: its name, state and the kernel function it
// waits in, then its kernel stack when readable.
std::string ThreadReport(pid_t pid) {
  std::string report;
  std::error_code ignored;
  for (const auto& task :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/task"), ignored)) {
    auto slurp = [&](const char* file) {
      std::ifstream in(task.path() / file);
      std::stringstream ss;
      ss << in.rdbuf();
      std::string s = ss.str();
      while (!s.empty() && s.back() == '\n') s.pop_back();
      return s;
    };
    absl::StrAppend(&report, "  thread ", task.path().filename().string(), " ", slurp("comm"),
                    ": wchan ", slurp("wchan"), "\n");
    const std::string stack = slurp("stack");
    if (!stack.empty()) absl::StrAppend(&report, stack, "\n");
  }
  return report;
}

// fork + exec with stdin from /dev/null; out_fd/err_fd (if >= 0) become
// the child's stdout/stderr. `own_session`: the child gets a session of its
// own (and dies with this process): the page server stands for another
// host, so it must not share this process's autogroup, whose CPU share the
// scheduler divides among its members.
pid_t Spawn(const std::vector<std::string>& argv, int out_fd, int err_fd,
            bool own_session = false) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    if (own_session) {
      setsid();
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
    }
    int null_fd = open("/dev/null", O_RDONLY);
    dup2(null_fd, STDIN_FILENO);
    if (out_fd >= 0) dup2(out_fd, STDOUT_FILENO);
    if (err_fd >= 0) dup2(err_fd, STDERR_FILENO);
    execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  return pid;
}

using fusefs::MountDevice;

std::atomic<int> next_id{0};

}  // namespace

std::string LazyramdPath() { return EnvOrDie("LAZYRAMD"); }
std::string LazyramctlPath() { return EnvOrDie("LAZYRAMCTL"); }

TempDir::TempDir() {
  char tmpl[] = "/tmp/lazyram-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) std::abort();
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::vector<uint8_t> WriteImage(const std::string& path, uint64_t size, uint32_t seed,
                                int zero_every, uint64_t hole_bytes) {
  std::vector<uint8_t> data(size);
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i + 8 <= size; i += 8) {
    uint64_t v = rng();
    std::memcpy(&data[i], &v, 8);
  }
  for (uint64_t i = size / 8 * 8; i < size; ++i) data[i] = static_cast<uint8_t>(rng());
  const uint64_t mib = 1 << 20;
  if (zero_every > 0) {
    for (uint64_t m = 0; m * mib < size; m += static_cast<uint64_t>(zero_every)) {
      std::memset(&data[m * mib], 0, std::min(mib, size - m * mib));
    }
  }
  const uint64_t data_end = size - std::min(hole_bytes, size);
  std::memset(data.data() + data_end, 0, size - data_end);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) std::abort();
  // One write moves at most ~2 GiB: loop.
  for (uint64_t done = 0; done < data_end;) {
    ssize_t n = pwrite(fd, data.data() + done, data_end - done, static_cast<off_t>(done));
    if (n <= 0) std::abort();
    done += static_cast<uint64_t>(n);
  }
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
  close(fd);
  return data;
}

RunResult Run(const std::vector<std::string>& argv, absl::Duration timeout) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) std::abort();
  pid_t pid = Spawn(argv, out[1], err[1]);
  close(out[1]);
  close(err[1]);
  RunResult result;
  const absl::Time deadline = absl::Now() + timeout;
  bool out_open = true, err_open = true, timed_out = false;
  while (out_open || err_open) {
    pollfd fds[2] = {{out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0}};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) {
      timed_out = true;
      break;
    }
    if (poll(fds, 2, static_cast<int>(left)) < 0 && errno != EINTR) break;
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        (i == 0 ? out_open : err_open) = false;
      } else {
        (i == 0 ? result.out : result.err).append(buf, static_cast<size_t>(n));
      }
    }
  }
  close(out[0]);
  close(err[0]);
  if (timed_out || !WaitFor(pid, deadline - absl::Now(), &result.exit_code)) {
    KillAndReap(pid);
    result.exit_code = -1;
    result.err += "\n[timed out]";
  }
  return result;
}

absl::StatusOr<std::unique_ptr<PageServerProcess>> PageServerProcess::Start(
    const std::vector<std::string>& regions, uint16_t port) {
  Options options;
  options.port = port;
  return Start(regions, options);
}

absl::StatusOr<std::unique_ptr<PageServerProcess>> PageServerProcess::Start(
    const std::vector<std::string>& regions, const Options& options) {
  // A fixed port may be held for a moment by a client's reconnect attempt
  // (a TCP self-connect on loopback): retry a restart on the same port.
  absl::StatusOr<std::unique_ptr<PageServerProcess>> server = StartOnce(regions, options);
  for (int i = 0; i < 50 && options.port != 0 && !server.ok(); ++i) {
    absl::SleepFor(absl::Milliseconds(100));
    server = StartOnce(regions, options);
  }
  return server;
}

absl::StatusOr<std::unique_ptr<PageServerProcess>> PageServerProcess::StartOnce(
    const std::vector<std::string>& regions, const Options& options) {
  std::vector<std::string> argv = {LazyramdPath(), "serve", "--listen",
                                   absl::StrCat(options.host, ":", options.port)};
  for (const std::string& r : regions) {
    argv.push_back("--region");
    argv.push_back(r);
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe");
  auto server = std::unique_ptr<PageServerProcess>(new PageServerProcess);
  server->host_ = options.host;
  server->log_path_ = options.log_path;
  int log_fd = -1;
  if (!options.log_path.empty()) {
    log_fd = open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  }
  server->pid_ = Spawn(argv, out[1], log_fd, /*own_session=*/true);
  if (log_fd >= 0) close(log_fd);
  close(out[1]);
  std::string line;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (line.find('\n') == std::string::npos) {
    pollfd pfd{out[0], POLLIN, 0};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0 || poll(&pfd, 1, static_cast<int>(left)) <= 0) break;
    char buf[256];
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n <= 0) break;
    line.append(buf, static_cast<size_t>(n));
  }
  close(out[0]);  // the server prints nothing else on stdout
  const std::string prefix = absl::StrCat("listening on ", options.host, ":");
  uint32_t parsed = 0;
  if (line.rfind(prefix, 0) != 0 ||
      !absl::SimpleAtoi(line.substr(prefix.size(), line.find('\n') - prefix.size()), &parsed)) {
    return absl::InternalError(absl::StrCat("page server did not start; said: '", line, "'"));
  }
  server->port_ = static_cast<uint16_t>(parsed);
  return server;
}

PageServerProcess::~PageServerProcess() { Stop(); }

std::string PageServerProcess::log() const {
  if (log_path_.empty()) return "";
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void PageServerProcess::Kill() {
  if (pid_ < 0) return;
  KillAndReap(pid_);
  pid_ = -1;
}

void PageServerProcess::Stop() {
  if (pid_ < 0) return;
  kill(pid_, SIGTERM);
  int code;
  if (!WaitFor(pid_, absl::Seconds(5), &code)) KillAndReap(pid_);
  pid_ = -1;
}

bool IsMounted(const std::string& path) { return !MountDevice(path).empty(); }

void ForceUnmount(const std::string& path) {
  const std::string device = MountDevice(path);
  if (device.empty()) return;
  umount2(path.c_str(), MNT_DETACH);
  // A hung daemon leaves readers in D state; aborting the connection
  // fails their requests so everything can exit.
  const std::string minor = device.substr(device.find(':') + 1);
  std::ofstream(absl::StrCat("/sys/fs/fuse/connections/", minor, "/abort")) << "1";
}

absl::StatusOr<std::unique_ptr<MountProcess>> MountProcess::Start(const TempDir& dir,
                                                                  const Options& options) {
  auto m = std::unique_ptr<MountProcess>(new MountProcess);
  const int id = next_id++;
  m->mountpoint_ = dir.Sub(absl::StrCat("mnt", id));
  m->control_ = dir.Sub(absl::StrCat("ctl", id, ".sock"));
  m->log_path_ = dir.Sub(absl::StrCat("mount", id, ".log"));
  std::filesystem::create_directories(m->mountpoint_);
  std::vector<std::string> argv = {LazyramdPath(),  "mount",
                                   m->mountpoint_,  "--foreground",
                                   "--control",     m->control_,
                                   "--store",       options.store,
                                   "--prefetch",    options.prefetch ? "on" : "off",
                                   "--passthrough", options.passthrough ? "on" : "off"};
  if (options.source.has_value()) {
    argv.push_back("--source");
    argv.push_back(*options.source);
  }
  argv.insert(argv.end(), options.extra_args.begin(), options.extra_args.end());
  int log_fd = open(m->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  m->pid_ = Spawn(argv, log_fd, log_fd);
  close(log_fd);
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    int code;
    if (WaitFor(m->pid_, absl::ZeroDuration(), &code)) {
      m->pid_ = -1;
      return absl::InternalError(absl::StrCat("lazyramd mount exited with ", code, ": ", m->log()));
    }
    if (IsMounted(m->mountpoint_) && m->Status().ok()) {
      m->mounted_ = true;
      return m;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("mount did not become ready: ", m->log()));
}

MountProcess::~MountProcess() {
  if (pid_ < 0 && !IsMounted(mountpoint_)) return;
  if (pid_ >= 0) {
    RunResult r = Ctl({"unmount"}, absl::Seconds(10));
    int code;
    if (r.exit_code == 0 && WaitFor(pid_, absl::Seconds(10), &code)) {
      pid_ = -1;
      return;
    }
  }
  ForceCleanup();
}

void MountProcess::ForceCleanup() {
  ForceUnmount(mountpoint_);
  if (pid_ >= 0) {
    KillAndReap(pid_);
    pid_ = -1;
  }
}

std::string MountProcess::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<nlohmann::json> MountProcess::Status() const {
  absl::StatusOr<nlohmann::json> reply =
      client::ControlClient::Call(control_, {{"cmd", "status"}}, absl::Seconds(10));
  if (!reply.ok()) return reply.status();
  reply->erase("ok");
  return reply;
}

absl::StatusOr<nlohmann::json> MountProcess::RegionStatus(const std::string& name) const {
  absl::StatusOr<nlohmann::json> status = Status();
  if (!status.ok()) return status.status();
  for (const nlohmann::json& r : (*status)["regions"]) {
    if (r["name"] == name) return r;
  }
  return absl::NotFoundError(absl::StrCat("no region ", name, " in status"));
}

RunResult MountProcess::Ctl(const std::vector<std::string>& args, absl::Duration timeout) const {
  std::vector<std::string> argv = {LazyramctlPath(), "--control", control_};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, timeout);
}

int MountProcess::Wait(absl::Duration timeout) {
  if (pid_ < 0) return -1;
  int code = -1;
  if (!WaitFor(pid_, timeout, &code)) {
    ForceCleanup();
    return -1;
  }
  pid_ = -1;
  return code;
}

int MountProcess::Unmount() {
  if (pid_ < 0) return -1;
  RunResult r = Ctl({"unmount"}, absl::Seconds(30));
  int code = -1;
  if (r.exit_code != 0 || !WaitFor(pid_, absl::Seconds(30), &code)) {
    // What the daemon was doing, for whoever reads the failed test.
    std::fprintf(stderr, "unmount failed (lazyramctl: exit %d, %s)\n%s", r.exit_code, r.err.c_str(),
                 ThreadReport(pid_).c_str());
    // User-space stacks, when gdb is there.
    if (access("/usr/bin/gdb", X_OK) == 0) {
      RunResult bt = Run(
          {"/usr/bin/gdb", "-p", std::to_string(pid_), "-batch", "-ex", "thread apply all bt 12"},
          absl::Seconds(60));
      std::fprintf(stderr, "%s\n", bt.out.c_str());
    }
    // Its children too (the page pusher's helper).
    std::error_code ignored;
    for (const auto& proc : std::filesystem::directory_iterator("/proc", ignored)) {
      std::ifstream stat(proc.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const size_t close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::vector<std::string> fields = absl::StrSplit(line.substr(close + 2), ' ');
      int ppid = 0;
      if (fields.size() > 1 && absl::SimpleAtoi(fields[1], &ppid) && ppid == pid_) {
        int child = 0;
        if (absl::SimpleAtoi(proc.path().filename().string(), &child)) {
          std::fprintf(stderr, "child %d:\n%s", child, ThreadReport(child).c_str());
        }
      }
    }
    ForceCleanup();
    return -1;
  }
  pid_ = -1;
  return code;
}

int RunInChild(const std::function<int()>& body, absl::Duration timeout) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) _exit(body());
  int code = -1;
  if (!WaitFor(pid, timeout, &code)) {
    KillAndReap(pid);
    return -1;
  }
  return code;
}

std::unique_ptr<ChildProcess> ChildProcess::Start(const std::function<int()>& body) {
  std::fflush(nullptr);
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess);
  child->pid_ = fork();
  if (child->pid_ == 0) _exit(body());
  return child;
}

ChildProcess::~ChildProcess() {
  if (pid_ >= 0) KillAndReap(pid_);
}

int ChildProcess::Wait(absl::Duration timeout) {
  if (pid_ < 0) return -1;
  int code = -1;
  if (!WaitFor(pid_, timeout, &code)) {
    KillAndReap(pid_);
    code = -1;
  }
  pid_ = -1;
  return code;
}

StepPipe::StepPipe() {
  if (pipe2(down_, O_CLOEXEC) != 0 || pipe2(up_, O_CLOEXEC) != 0) std::abort();
}

StepPipe::~StepPipe() {
  for (int fd : {down_[0], down_[1], up_[0], up_[1]}) close(fd);
}

bool StepPipe::Send(int fd, char c) {
  ssize_t n;
  do {
    n = write(fd, &c, 1);
  } while (n < 0 && errno == EINTR);
  return n == 1;
}

bool StepPipe::Receive(int fd, char* c, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0) return false;
    const int r = poll(&pfd, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    ssize_t n = read(fd, c, 1);
    if (n < 0 && errno == EINTR) continue;
    return n == 1;
  }
}

bool DropCaches() {
  sync();
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, "3", 1) == 1;
  close(fd);
  return ok;
}

}  // namespace lazyram::testing
