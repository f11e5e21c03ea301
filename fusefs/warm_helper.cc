#include "fusefs/warm_helper.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"
#include "daemon/base/thread_priority.h"

namespace lazyram::fusefs {
namespace {

enum Kind : uint32_t { kWarm = 1, kClose = 2 };

// One command, fixed size: the child parses nothing.
struct Command {
  uint32_t kind;
  uint32_t path_len;  // bytes of `path` used, NUL included
  uint64_t offset;
  uint64_t length;
  char path[4096];
};

// The kernel clamps one readahead call to the mount's readahead window
// (128 KiB unless raised).
constexpr uint64_t kChunk = 128 * 1024;

bool ReadFull(int fd, void* out, size_t len) {
  auto* p = static_cast<char*>(out);
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

bool WriteFull(int fd, const void* data, size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<size_t>(n);
  }
  return true;
}

// The child: commands on fd 0, acks on fd 1. Async-signal-safe calls only.
[[noreturn]] void ChildMain() {
  static Command c;  // static: no large stack frame, no allocation
  static char open_path[sizeof c.path];
  int fd = -1;
  while (ReadFull(0, &c, sizeof c)) {
    if (c.kind == kClose) {
      if (fd >= 0) close(fd);
      fd = -1;
      open_path[0] = '\0';
      if (!WriteFull(1, "k", 1)) break;
      continue;
    }
    if (c.kind != kWarm || c.path_len == 0 || c.path_len > sizeof c.path) break;
    c.path[c.path_len - 1] = '\0';
    if (fd < 0 || std::strcmp(open_path, c.path) != 0) {
      if (fd >= 0) close(fd);
      fd = open(c.path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        open_path[0] = '\0';
        continue;  // not mounted any more, or gone: nothing to warm
      }
      std::memcpy(open_path, c.path, c.path_len);
    }
    // At most two chunks of READs queued at a time: readahead returns at
    // once, and the kernel serves FUSE requests in order, so an unbounded
    // push would put a megabyte of them ahead of every fault. Reading one
    // byte of the previous chunk waits for its READs (the page stays
    // locked until its READ is answered).
    uint64_t previous_end = 0;
    for (uint64_t at = c.offset; at < c.offset + c.length; at += kChunk) {
      const uint64_t n = c.length - (at - c.offset) < kChunk ? c.length - (at - c.offset) : kChunk;
      if (readahead(fd, static_cast<off64_t>(at), n) != 0) break;
      char byte;
      if (previous_end != 0 && pread(fd, &byte, 1, static_cast<off_t>(previous_end - 1)) < 0) {
        break;
      }
      previous_end = at + n;
    }
  }
  _exit(0);
}

}  // namespace

absl::StatusOr<std::unique_ptr<WarmHelper>> WarmHelper::Spawn() {
  int commands[2], acks[2];
  if (pipe2(commands, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe");
  if (pipe2(acks, O_CLOEXEC) != 0) {
    const int e = errno;
    close(commands[0]);
    close(commands[1]);
    return ErrnoStatus(e, "pipe");
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int e = errno;
    for (int fd : {commands[0], commands[1], acks[0], acks[1]}) close(fd);
    return ErrnoStatus(e, "fork");
  }
  if (pid == 0) {
    // Dies with the spawning thread; and if the daemon is already gone,
    // there is nothing to do.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    prctl(PR_SET_NAME, "lazyram-warm");
    // Warming is background work: faults come first.
    setpriority(PRIO_PROCESS, 0, kBackgroundNice);
    if (dup2(commands[0], 0) < 0 || dup2(acks[1], 1) < 0) _exit(1);
    // Nothing else of the daemon's: above all not its /dev/fuse descriptor.
    syscall(SYS_close_range, 3U, ~0U, 0U);
    ChildMain();
  }
  close(commands[0]);
  close(acks[1]);
  return std::unique_ptr<WarmHelper>(new WarmHelper(pid, UniqueFd(commands[1]), UniqueFd(acks[0])));
}

WarmHelper::~WarmHelper() {
  commands_.reset();
  kill(pid_, SIGKILL);
  int status;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

absl::Status WarmHelper::Send(uint32_t kind, const std::string& path, uint64_t offset,
                              uint64_t length) {
  static thread_local Command c;
  if (path.size() + 1 > sizeof c.path) return absl::InvalidArgumentError("path too long");
  std::memset(&c, 0, offsetof(Command, path));
  c.kind = kind;
  c.path_len = static_cast<uint32_t>(path.size() + 1);
  c.offset = offset;
  c.length = length;
  std::memcpy(c.path, path.c_str(), path.size() + 1);
  if (!WriteFull(commands_.get(), &c, sizeof c)) {
    return absl::UnavailableError(absl::StrCat("the warm helper (pid ", pid_, ") is gone"));
  }
  return absl::OkStatus();
}

absl::Status WarmHelper::Warm(const std::string& path, uint64_t offset, uint64_t length) {
  return Send(kWarm, path, offset, length);
}

absl::Status WarmHelper::CloseFiles() {
  if (absl::Status s = Send(kClose, "", 0, 0); !s.ok()) return s;
  char ack;
  if (!ReadFull(acks_.get(), &ack, 1)) {
    return absl::UnavailableError(absl::StrCat("the warm helper (pid ", pid_, ") is gone"));
  }
  return absl::OkStatus();
}

}  // namespace lazyram::fusefs
