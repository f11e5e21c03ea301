#include "tests/fault_helpers.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/time/clock.h"

namespace lazyram::testing {

uint64_t LocalPages(const MountProcess& mount, const std::string& region) {
  absl::StatusOr<nlohmann::json> r = mount.RegionStatus(region);
  if (!r.ok()) return 0;
  return (*r)["pages_present"].get<uint64_t>() + (*r)["pages_zero"].get<uint64_t>();
}

bool StillRunning(const ChildProcess& child) {
  int status = 0;
  return waitpid(child.pid(), &status, WNOHANG) == 0;
}

int PreadAndCompare(const std::string& path, uint64_t offset, uint64_t length,
                    const std::vector<uint8_t>& expected) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return kOpen;
  std::vector<uint8_t> buf(256 << 10);
  for (uint64_t at = offset; at < offset + length;) {
    const size_t want = std::min<uint64_t>(buf.size(), offset + length - at);
    ssize_t n = pread(fd, buf.data(), want, static_cast<off_t>(at));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return kReadError;
    if (static_cast<size_t>(n) != want) return kShortRead;
    if (std::memcmp(buf.data(), expected.data() + at, want) != 0) return kMismatch;
    at += want;
  }
  close(fd);
  return 0;
}

int MapAndCompare(const std::string& path, const std::vector<uint8_t>& expected) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return kOpen;
  void* p = mmap(nullptr, expected.size(), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return kMap;
  const bool same = std::memcmp(p, expected.data(), expected.size()) == 0;
  munmap(p, expected.size());
  close(fd);
  return same ? 0 : kMismatch;
}

Throttle::Throttle(absl::Duration run, absl::Duration period) : run_(run), period_(period) {
  thread_ = std::thread([this] { Loop(); });
}

Throttle::~Throttle() {
  Clear();
  stop_.store(true);
  thread_.join();
}

void Throttle::Add(pid_t pid) {
  absl::MutexLock lock(&mu_);
  pids_.insert(pid);
  kill(pid, SIGSTOP);
}

void Throttle::Remove(pid_t pid) {
  absl::MutexLock lock(&mu_);
  if (pids_.erase(pid) > 0) kill(pid, SIGCONT);
}

void Throttle::Clear() {
  absl::MutexLock lock(&mu_);
  for (pid_t pid : pids_) kill(pid, SIGCONT);
  pids_.clear();
}

void Throttle::Loop() {
  while (!stop_.load()) {
    Signal(SIGCONT);
    absl::SleepFor(run_);
    Signal(SIGSTOP);
    absl::SleepFor(period_ - run_);
  }
}

void Throttle::Signal(int sig) {
  absl::MutexLock lock(&mu_);
  for (pid_t pid : pids_) kill(pid, sig);
}

}  // namespace lazyram::testing
