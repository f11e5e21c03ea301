// `lazyramd mount`: validate, optionally detach into the background, build
// the engine, start the control socket, mount, and serve until unmounted.
//
// Start-up contract: without --foreground the command returns 0 only once
// the files can be opened, or prints one error line and returns non-zero.
// The child reports over a pipe: "OK" or the error message.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "daemon/base/log.h"
#include "daemon/cmd/commands.h"
#include "daemon/engine/engine.h"
#include "daemon/fetch/source_url.h"
#include "fusefs/filesystem.h"

namespace lazyram {
namespace {

// Where start-up reports its outcome: the parent's pipe in the background,
// stderr in the foreground.
class StartupReport {
 public:
  explicit StartupReport(int fd) : fd_(fd) {}
  void Ready() { Send("OK"); }
  void Failed(absl::string_view message) {
    if (fd_ < 0) {
      PrintError(message);
      return;
    }
    Send(message);
  }

 private:
  void Send(absl::string_view text) {
    if (fd_ < 0) return;
    [[maybe_unused]] ssize_t n = write(fd_, text.data(), text.size());
    close(fd_);
    fd_ = -1;
  }
  int fd_;
};

int Serve(const MountOptions& options, const std::string& control_path, StartupReport report) {
  // The kernel may need this daemon to write pages back to reclaim memory:
  // it must not itself be throttled by that reclaim. Set before any thread
  // exists, so every thread inherits it; a failure (no CAP_SYS_RESOURCE) is
  // logged only once start-up succeeded, so that a failed start-up prints
  // nothing but its one error line.
  const int io_flusher_errno = prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0 ? errno : 0;
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);  // internal: tells the signal thread to exit
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Engine::Options engine_options;
  if (options.auth_key_file.has_value()) {
    absl::StatusOr<std::shared_ptr<const AuthKey>> key = AuthKey::LoadFile(*options.auth_key_file);
    if (!key.ok()) {
      report.Failed(key.status().message());
      return 1;
    }
    engine_options.fetch.auth_key = *std::move(key);
  }
  if (options.source.has_value()) {
    absl::StatusOr<SourceUrl> source = SourceUrl::Parse(*options.source);
    if (!source.ok()) {
      report.Failed(source.status().message());
      return 1;
    }
    if (source->is_local()) {
      engine_options.local_source = *source;
    } else {
      engine_options.fetch.addresses.push_back(source->address);
    }
    for (const std::string& replica : options.replicas) {
      engine_options.fetch.addresses.push_back(SourceUrl::Parse(replica)->address);  // checked
    }
  }
  if (options.fetch_timeout.has_value()) {
    engine_options.fetch.fetch_timeout = absl::Seconds(*options.fetch_timeout);
  }
  engine_options.fetch.max_memory = options.max_fetch_memory_mib << 20;
  if (options.store != "mem") engine_options.store_dir = options.store;
  // Local sources are read where they lie: nothing is pulled unless asked.
  engine_options.prefetch = options.prefetch_given || !engine_options.local_source.has_value()
                                ? options.prefetch == "on"
                                : false;
  engine_options.read_only = options.read_only;
  engine_options.checkpoint_interval = absl::Seconds(options.checkpoint_interval);
  engine_options.pull.fault_quiet = absl::Milliseconds(options.pull_yield_ms);
  if (options.machine.has_value()) {
    engine_options.machine = *GuestLayout::ParseMachine(*options.machine);  // checked by main.cc
  }

  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(engine_options);
  if (!engine.ok()) {
    report.Failed(engine.status().message());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<ControlServer>> control =
      ControlServer::Start(control_path, (*engine)->control());
  if (!control.ok()) {
    report.Failed(control.status().message());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<fusefs::Filesystem>> fs =
      fusefs::Filesystem::Mount({.regions = engine->get(),
                                 .views = (*engine)->views(),
                                 .status = (*engine)->status_sections()},
                                {.mountpoint = options.mountpoint,
                                 .allow_other = options.allow_other,
                                 .read_only = options.read_only,
                                 .push = options.push == "on",
                                 .passthrough = options.passthrough == "on"});
  if (!fs.ok()) {
    report.Failed(fs.status().message());
    return 1;
  }
  fusefs::Filesystem* filesystem = fs->get();
  // `lazyramctl unmount` is answered once the store is durable and marked
  // clean (or that failed), so that its caller may mount the same store next.
  struct Closed {
    absl::Notification done;
    absl::Status status;
  };
  auto closed = std::make_shared<Closed>();
  (*engine)->control()->SetUnmountHandler([filesystem, closed] {
    if (absl::Status s = filesystem->Unmount(/*lazy=*/false); !s.ok()) return s;
    // The session ends when the kernel lets go of the filesystem. A copy of
    // the mount in another mount namespace (one unshared while this was
    // mounted, with private propagation) keeps it — and its users — alive:
    // say so rather than wait in silence.
    if (!closed->done.WaitForNotificationWithTimeout(absl::Seconds(10))) {
      LogWarning(
          "unmounted here, but the filesystem is still mounted in another mount namespace; "
          "serving it until that goes");
      closed->done.WaitForNotification();
    }
    return closed->status;
  });

  std::atomic<bool> finished{false};
  std::thread signal_thread([filesystem, signals, &finished] {
    pthread_setname_np(pthread_self(), "lazyram-signal");
    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (finished.load()) return;
      LogInfo("signal %d: unmounting", sig);
      // Busy: detach instead, and keep serving until the last user leaves,
      // so nothing the consumer wrote is lost.
      absl::Status s = filesystem->Unmount(/*lazy=*/false);
      if (absl::IsFailedPrecondition(s)) s = filesystem->Unmount(/*lazy=*/true);
      if (!s.ok()) LogError("%s", s.message());
    }
  });

  (*engine)->StartPull();
  LogInfo("mounted %s%s at %s", options.source.value_or("an empty filesystem"),
          options.replicas.empty()
              ? ""
              : absl::StrCat(" (replicas: ", absl::StrJoin(options.replicas, ", "), ")"),
          options.mountpoint);
  report.Ready();
  if (io_flusher_errno != 0) LogWarning("PR_SET_IO_FLUSHER: %s", std::strerror(io_flusher_errno));
  absl::Status status = filesystem->Run();
  LogInfo("unmounted %s", options.mountpoint);

  finished.store(true);
  pthread_kill(signal_thread.native_handle(), SIGUSR1);
  signal_thread.join();
  (*engine)->Shutdown();
  // Every WRITE the unmount flushed has been answered (the FUSE loop has
  // ended): now make the store durable and mark it clean.
  closed->status = (*engine)->CloseStore();
  if (!closed->status.ok()) {
    LogError("store not marked clean: %s", closed->status.message());
    if (status.ok()) status = closed->status;
  }
  closed->done.Notify();
  control->reset();
  fs->reset();
  engine->reset();
  if (!status.ok()) {
    LogError("%s", status.message());
    return 1;
  }
  return 0;
}

// Several --source values must all be page servers, each named once.
absl::Status CheckReplicas(const MountOptions& options) {
  if (options.replicas.empty()) return absl::OkStatus();
  std::vector<std::string> seen;
  for (size_t i = 0; i <= options.replicas.size(); ++i) {
    const std::string& text = i == 0 ? *options.source : options.replicas[i - 1];
    absl::StatusOr<SourceUrl> url = SourceUrl::Parse(text);
    if (!url.ok()) return url.status();
    if (url->is_local()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--source ", text,
                       ": only tcp:// page servers can be replicas; give a "
                       "file:// or qemu-stream:// source alone"));
    }
    const std::string canonical = url->ToString();
    if (std::find(seen.begin(), seen.end(), canonical) != seen.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--source ", text, " is given twice"));
    }
    seen.push_back(canonical);
  }
  return absl::OkStatus();
}

}  // namespace

int RunMount(const MountOptions& options) {
  struct stat st;
  if (stat(options.mountpoint.c_str(), &st) != 0) {
    PrintError(absl::StrCat("mount point ", options.mountpoint, " does not exist"));
    return 1;
  }
  if (!S_ISDIR(st.st_mode)) {
    PrintError(absl::StrCat("mount point ", options.mountpoint, " is not a directory"));
    return 1;
  }
  if (options.source.has_value()) {
    if (absl::StatusOr<SourceUrl> s = SourceUrl::Parse(*options.source); !s.ok()) {
      PrintError(s.status().message());
      return 1;
    }
  }
  if (options.auth_key_file.has_value() &&
      (!options.source.has_value() || SourceUrl::Parse(*options.source)->is_local())) {
    PrintError("--auth-key-file is for a page server: it needs --source tcp://HOST:PORT");
    return 1;
  }
  if (absl::Status s = CheckReplicas(options); !s.ok()) {
    PrintError(s.message());
    return 1;
  }
  if (options.fetch_timeout.has_value() &&
      (!options.source.has_value() || SourceUrl::Parse(*options.source)->is_local())) {
    PrintError("--fetch-timeout needs a tcp:// --source (a page server)");
    return 1;
  }
  const uint64_t min_mib =
      (Fetcher::MinMemory(Fetcher::Options{}.bulk_connections) + (1 << 20) - 1) >> 20;
  if (options.max_fetch_memory_mib < min_mib ||
      options.max_fetch_memory_mib > (uint64_t{1} << 30)) {
    PrintError(absl::StrCat("--max-fetch-memory ", options.max_fetch_memory_mib,
                            " MiB: must be between ", min_mib, " and ", uint64_t{1} << 30));
    return 1;
  }
  if (options.store != "mem" && (stat(options.store.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
    PrintError(absl::StrCat("store directory ", options.store, " does not exist"));
    return 1;
  }
  // The daemon may outlive the caller's working directory: make every path
  // absolute before anything uses it.
  MountOptions opts = options;
  const std::filesystem::path mountpoint =
      std::filesystem::absolute(options.mountpoint).lexically_normal();
  std::string name = mountpoint.filename();
  if (name.empty()) name = mountpoint.parent_path().filename();
  const std::string control_path = std::filesystem::absolute(options.control.value_or(
      absl::StrCat("/run/lazyram/", name.empty() ? "root" : name, ".sock")));
  if (opts.store != "mem") opts.store = std::filesystem::absolute(opts.store);
  if (opts.source.has_value()) {
    SourceUrl url = *SourceUrl::Parse(*opts.source);  // checked above
    if (url.is_local()) {
      url.path = std::filesystem::absolute(url.path).lexically_normal();
      opts.source = url.ToString();
    }
  }

  if (options.foreground) return Serve(opts, control_path, StartupReport(-1));

  const std::string log_path = std::filesystem::absolute(
      options.log.value_or(std::filesystem::path(control_path).replace_extension(".log").string()));
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    PrintError(absl::StrCat("pipe: ", std::strerror(errno)));
    return 1;
  }
  // Fork before any thread exists: the child becomes the daemon.
  pid_t pid = fork();
  if (pid < 0) {
    PrintError(absl::StrCat("fork: ", std::strerror(errno)));
    return 1;
  }
  if (pid == 0) {
    close(pipe_fds[0]);
    setsid();
    std::error_code ignored;  // a failure shows as the open below failing
    std::filesystem::create_directories(std::filesystem::path(log_path).parent_path(), ignored);
    int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    // Keep no pipe of the caller open: a caller reading our output must see
    // it end when the parent exits.
    dup2(null_fd, STDIN_FILENO);
    dup2(null_fd, STDOUT_FILENO);
    dup2(log_fd >= 0 ? log_fd : null_fd, STDERR_FILENO);
    _exit(Serve(opts, control_path, StartupReport(pipe_fds[1])));
  }
  close(pipe_fds[1]);
  std::string message;
  char buf[512];
  ssize_t n;
  while ((n = read(pipe_fds[0], buf, sizeof buf)) > 0) message.append(buf, static_cast<size_t>(n));
  close(pipe_fds[0]);
  if (message == "OK") return 0;
  if (message.empty()) {
    message = absl::StrCat("the daemon exited during start-up; see ", log_path);
  }
  PrintError(message);
  return 1;
}

}  // namespace lazyram
