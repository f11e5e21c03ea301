// Test environment for integration tests that run the real binaries: a
// temporary directory, page servers and mounts started as child processes,
// and cleanup that always unmounts and kills what the test started — by
// pid — even when an assertion failed or the daemon hung.
//
// Binaries come from the environment (meson sets them): LAZYRAMD and
// LAZYRAMCTL.
#ifndef LAZYRAM_TESTS_TEST_ENV_H_
#define LAZYRAM_TESTS_TEST_ENV_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace lazyram::testing {

// Paths of the binaries under test; aborts the test run if unset.
std::string LazyramdPath();
std::string LazyramctlPath();

// A fresh directory under /tmp, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Writes an image of `size` bytes from `seed`: random data, with every
// `zero_every`-th MiB all zero (written as zeros), and `hole_bytes` at the
// end left as a hole. Returns the content for comparison.
std::vector<uint8_t> WriteImage(const std::string& path, uint64_t size, uint32_t seed,
                                int zero_every = 4, uint64_t hole_bytes = 0);

// The output of a finished child process.
struct RunResult {
  int exit_code = -1;  // -1 if killed by a signal or timed out
  std::string out, err;
};
// Runs argv[0] with args, no stdin, capturing output; kills it after
// `timeout` (exit_code -1, err says "timed out").
RunResult Run(const std::vector<std::string>& argv, absl::Duration timeout = absl::Seconds(30));

// A `lazyramd serve` child. Stop (or the destructor) sends SIGTERM, then
// SIGKILL after 5 s, and reaps it.
class PageServerProcess {
 public:
  struct Options {
    uint16_t port = 0;                    // 0 picks a free one
    std::string host = "127.0.0.1";       // an IPv4 address to listen on
    std::vector<std::string> extra_args;  // e.g. {"--auth-key-file", PATH}
    std::string log_path;                 // the server's stderr goes here when set (see log())
  };
  // regions: NAME=PATH. port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<PageServerProcess>> Start(
      const std::vector<std::string>& regions, uint16_t port = 0);
  static absl::StatusOr<std::unique_ptr<PageServerProcess>> Start(
      const std::vector<std::string>& regions, const Options& options);
  ~PageServerProcess();
  uint16_t port() const { return port_; }
  std::string url() const { return "tcp://" + host_ + ":" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  // The server's stderr so far (with Options::log_path; empty otherwise).
  std::string log() const;
  // SIGKILL and reap: an abrupt loss of the source.
  void Kill();
  void Stop();

 private:
  static absl::StatusOr<std::unique_ptr<PageServerProcess>> StartOnce(
      const std::vector<std::string>& regions, const Options& options);
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  std::string host_;
  std::string log_path_;
};

// A mounted lazyramd. Started with --foreground as a child of the test (so
// its pid is known); ready once the mount shows in /proc/self/mountinfo and
// the control socket answers. Teardown: `lazyramctl unmount`; if that fails
// or hangs, umount -l, abort the FUSE connection through
// /sys/fs/fuse/connections, then SIGKILL — always reaping the child.
class MountProcess {
 public:
  struct Options {
    std::optional<std::string> source;  // tcp://...
    std::string store = "mem";
    bool prefetch = false;
    // --passthrough: complete regions open in FUSE passthrough mode.
    bool passthrough = true;
    std::vector<std::string> extra_args;
  };
  static absl::StatusOr<std::unique_ptr<MountProcess>> Start(const TempDir& dir,
                                                             const Options& options);
  ~MountProcess();

  const std::string& mountpoint() const { return mountpoint_; }
  const std::string& control() const { return control_; }
  std::string File(const std::string& region) const { return mountpoint_ + "/" + region; }
  pid_t pid() const { return pid_; }
  std::string log() const;  // the daemon's stderr so far

  // The control socket's status JSON (without "ok").
  absl::StatusOr<nlohmann::json> Status() const;
  // One region's entry of Status(); fails if absent.
  absl::StatusOr<nlohmann::json> RegionStatus(const std::string& name) const;
  // `lazyramctl ARGS...` with --control set.
  RunResult Ctl(const std::vector<std::string>& args,
                absl::Duration timeout = absl::Seconds(60)) const;
  // Unmount through the control socket and wait for the daemon to exit;
  // returns its exit code (-1 if it had to be killed).
  int Unmount();
  // Waits for the daemon to exit on its own (after a signal, say); returns
  // its exit code, or -1 if it had to be killed after `timeout`.
  int Wait(absl::Duration timeout = absl::Seconds(30));

 private:
  void ForceCleanup();
  pid_t pid_ = -1;
  std::string mountpoint_, control_, log_path_;
  bool mounted_ = false;
};

// True when `path` is a mount point according to /proc/self/mountinfo
// (never touches the mount itself).
bool IsMounted(const std::string& path);

// Runs `body` in a forked child process and returns its exit code (-1 if
// it died of a signal or exceeded `timeout`, in which case it is killed).
// The child must only use async-signal-safe-ish plain code: no gtest
// assertions; return 0 for success, anything else is a failure code.
int RunInChild(const std::function<int()>& body, absl::Duration timeout = absl::Seconds(60));

// A forked child running `body` alongside the test, for tests that need
// both sides at once; the same rules as RunInChild apply to `body`. The
// destructor kills and reaps a child that is still running.
class ChildProcess {
 public:
  static std::unique_ptr<ChildProcess> Start(const std::function<int()>& body);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  pid_t pid() const { return pid_; }
  // The child's exit code; -1 if it died of a signal or outlived `timeout`
  // (then it is killed).
  int Wait(absl::Duration timeout = absl::Seconds(60));

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
};

// Lock-step between the test and children forked after it: one byte at a
// time, down (test to child) and up (child to test). Every call is plain
// code, safe in a child. A receive gives up after `timeout` (false).
class StepPipe {
 public:
  StepPipe();
  ~StepPipe();
  StepPipe(const StepPipe&) = delete;
  StepPipe& operator=(const StepPipe&) = delete;
  bool SendDown(char c) const { return Send(down_[1], c); }
  bool ReceiveDown(char* c, absl::Duration timeout = absl::Seconds(60)) const {
    return Receive(down_[0], c, timeout);
  }
  bool SendUp(char c) const { return Send(up_[1], c); }
  bool ReceiveUp(char* c, absl::Duration timeout = absl::Seconds(60)) const {
    return Receive(up_[0], c, timeout);
  }

 private:
  static bool Send(int fd, char c);
  static bool Receive(int fd, char* c, absl::Duration timeout);
  int down_[2] = {-1, -1};
  int up_[2] = {-1, -1};
};

// sync(), then drops the clean page cache, dentries and inodes
// (echo 3 > /proc/sys/vm/drop_caches); false if that was refused.
bool DropCaches();

// umount -l of `path`, then aborts its FUSE connection so that anything
// stuck on it fails instead of hanging. For mounts a test did not start as
// a MountProcess (a background daemon); a no-op if `path` is not mounted.
void ForceUnmount(const std::string& path);

}  // namespace lazyram::testing

#endif  // LAZYRAM_TESTS_TEST_ENV_H_
