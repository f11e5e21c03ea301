// lazyramctl against a running lazyramd: status (text and the JSON
// contract), prefetch of a range, wait, unmount (clean and busy), the
// background start-up contract, SIGTERM, and a mount private to its user.
//
// Everything that touches the mount runs in a forked child (RunInChild or
// ChildProcess), which returns an exit code and prints what went wrong.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/control_client.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;

uint64_t Field(const json& region, const char* key) { return region.at(key).get<uint64_t>(); }

uint64_t LocalPages(const json& region) {
  return Field(region, "pages_present") + Field(region, "pages_zero");
}

size_t Lines(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

int Fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

// Child: reads [offset, offset+length) of `path` and compares it.
int ReadsBack(const std::string& path, const std::vector<uint8_t>& image, uint64_t offset,
              uint64_t length) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return Fail("open");
  std::vector<uint8_t> buf(length);
  if (pread(fd, buf.data(), length, static_cast<off_t>(offset)) != static_cast<ssize_t>(length)) {
    return Fail("pread");
  }
  close(fd);
  if (std::memcmp(buf.data(), image.data() + offset, length) != 0) {
    std::fprintf(stderr, "%s: bytes at %llu differ from the image\n", path.c_str(),
                 static_cast<unsigned long long>(offset));
    return 2;
  }
  return 0;
}

struct Fixture {
  TempDir dir;
  std::vector<uint8_t> image;
  std::unique_ptr<PageServerProcess> server;
  std::unique_ptr<MountProcess> mount;
};

// Serves an image as mem0 (plus `extra` regions) and mounts it.
void ServeAndMount(Fixture* f, uint64_t size, bool prefetch, std::vector<std::string> extra = {}) {
  f->image = WriteImage(f->dir.Sub("img"), size, 3, /*zero_every=*/0);
  extra.insert(extra.begin(), "mem0=" + f->dir.Sub("img"));
  auto server = PageServerProcess::Start(extra);
  ASSERT_TRUE(server.ok()) << server.status();
  f->server = *std::move(server);
  auto mount = MountProcess::Start(f->dir, {.source = f->server->url(), .prefetch = prefetch});
  ASSERT_TRUE(mount.ok()) << mount.status();
  f->mount = *std::move(mount);
}

// --- 1. status ---

// The keys the issue promises in every region entry, with their JSON type.
void ExpectRegionContract(const json& r) {
  ASSERT_TRUE(r.is_object()) << r.dump();
  ASSERT_TRUE(r.contains("name") && r.at("name").is_string()) << r.dump();
  for (const char* key : {"size", "pages_total", "pages_present", "pages_dirty", "pages_zero",
                          "bytes_fetched", "demand_fetches"}) {
    ASSERT_TRUE(r.contains(key)) << "no \"" << key << "\" in " << r.dump();
    EXPECT_TRUE(r.at(key).is_number_unsigned()) << key << " in " << r.dump();
  }
  ASSERT_TRUE(r.contains("fetch_latency_us") && r.at("fetch_latency_us").is_object()) << r.dump();
  for (const char* key : {"p50", "p99", "max"}) {
    ASSERT_TRUE(r.at("fetch_latency_us").contains(key)) << key << " in " << r.dump();
    EXPECT_TRUE(r.at("fetch_latency_us").at(key).is_number_unsigned()) << r.dump();
  }
  ASSERT_TRUE(r.contains("complete") && r.at("complete").is_boolean()) << r.dump();
}

TEST(ControlCommands, StatusPrintsEveryRegionAsTextAndAsJson) {
  Fixture f;
  const uint64_t size = 8 * kMiB + 100;
  WriteImage(f.dir.Sub("img2"), 4 * kMiB, 9);
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, false, {"pc.ram=" + f.dir.Sub("img2")}));

  RunResult text = f.mount->Ctl({"status"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_TRUE(absl::StrContains(text.out, "mem0")) << text.out;
  EXPECT_TRUE(absl::StrContains(text.out, "pc.ram")) << text.out;

  RunResult js = f.mount->Ctl({"status", "--json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const json status = json::parse(js.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(status.is_object()) << js.out;
  ASSERT_TRUE(status.contains("source") && status.at("source").is_string()) << js.out;
  const std::set<std::string> states = {"connected", "reconnecting", "detached", "none"};
  EXPECT_TRUE(states.count(status.at("source").get<std::string>())) << js.out;
  EXPECT_EQ(status.at("source"), "connected") << js.out;
  ASSERT_TRUE(status.contains("regions") && status.at("regions").is_array()) << js.out;
  ASSERT_EQ(status.at("regions").size(), 2u) << js.out;
  for (const json& r : status.at("regions")) ASSERT_NO_FATAL_FAILURE(ExpectRegionContract(r));

  const json& mem0 = status.at("regions").at(0).at("name") == "mem0" ? status.at("regions").at(0)
                                                                     : status.at("regions").at(1);
  EXPECT_EQ(mem0.at("name"), "mem0");
  EXPECT_EQ(Field(mem0, "size"), size);
  EXPECT_EQ(Field(mem0, "pages_total"), (size + kPage - 1) / kPage);
  EXPECT_EQ(Field(mem0, "pages_present"), 0u);
  EXPECT_EQ(Field(mem0, "pages_dirty"), 0u);
  EXPECT_EQ(Field(mem0, "bytes_fetched"), 0u);
  EXPECT_EQ(Field(mem0, "demand_fetches"), 0u);
  EXPECT_FALSE(mem0.at("complete").get<bool>());

  // A read shows up in the counters, and in the latency figures.
  const std::string file = f.mount->File("mem0");
  ASSERT_EQ(RunInChild([&] { return ReadsBack(file, f.image, 2 * kMiB, 64 * 1024); }), 0);
  auto read = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_GT(Field(*read, "pages_present"), 0u);
  EXPECT_GT(Field(*read, "bytes_fetched"), 0u);
  EXPECT_GT(Field(*read, "demand_fetches"), 0u);
  EXPECT_GE(Field(read->at("fetch_latency_us"), "max"), Field(read->at("fetch_latency_us"), "p50"));
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 2. prefetch ---

TEST(ControlCommands, PrefetchMakesExactlyTheRangeLocal) {
  Fixture f;
  const uint64_t size = 32 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, false));
  auto before = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(LocalPages(*before), 0u);

  // 128 aligned pages.
  const uint64_t offset = 4 * kMiB + 2 * kPage, length = 512 * 1024;
  RunResult r = f.mount->Ctl({"prefetch", "mem0", std::to_string(offset), std::to_string(length)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  // The range itself, plus at most the daemon's readahead (256 KiB).
  EXPECT_GE(LocalPages(*after), length / kPage) << after->dump();
  EXPECT_LE(LocalPages(*after), length / kPage + 64) << after->dump();
  EXPECT_FALSE(after->at("complete").get<bool>());

  // An unaligned range covers the two pages it touches; size suffixes work.
  RunResult small = f.mount->Ctl({"prefetch", "mem0", "10MiB", "5000"});
  ASSERT_EQ(small.exit_code, 0) << small.err;
  auto small_after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(small_after.ok()) << small_after.status();
  EXPECT_GE(LocalPages(*small_after), LocalPages(*after) + 2);
  EXPECT_LE(LocalPages(*small_after), LocalPages(*after) + 2 + 64);

  // The range reads back from the store, fetching nothing more.
  const std::string file = f.mount->File("mem0");
  EXPECT_EQ(RunInChild([&] {
              int fd = open(file.c_str(), O_RDONLY);
              if (fd < 0) return Fail("open");
              if (posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM) != 0) return Fail("fadvise");
              close(fd);
              return ReadsBack(file, f.image, offset, length);
            }),
            0);
  // The last page of the region is a valid range.
  RunResult last =
      f.mount->Ctl({"prefetch", "mem0", std::to_string(size - kPage), std::to_string(kPage)});
  EXPECT_EQ(last.exit_code, 0) << last.err;
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ControlCommands, PrefetchRejectsAnUnknownRegionAndABadRange) {
  Fixture f;
  const uint64_t size = 4 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, false));
  auto expect_one_line_error = [](const RunResult& r, const std::string& what) {
    EXPECT_NE(r.exit_code, 0) << what;
    EXPECT_NE(r.exit_code, -1) << what << ": " << r.err;
    EXPECT_EQ(Lines(r.err), 1u) << what << ": " << r.err;
    EXPECT_TRUE(absl::StartsWith(r.err, "lazyramctl: ")) << what << ": " << r.err;
  };

  RunResult unknown = f.mount->Ctl({"prefetch", "nosuch"});
  expect_one_line_error(unknown, "unknown region");
  EXPECT_TRUE(absl::StrContains(unknown.err, "nosuch")) << unknown.err;

  expect_one_line_error(
      f.mount->Ctl({"prefetch", "mem0", std::to_string(size), std::to_string(kPage)}),
      "range starting at the end");
  expect_one_line_error(f.mount->Ctl({"prefetch", "mem0", "0", std::to_string(size + 1)}),
                        "range one byte too long");
  expect_one_line_error(f.mount->Ctl({"prefetch", "mem0", "1TiB", "4096"}), "far past the end");
  expect_one_line_error(f.mount->Ctl({"prefetch", "mem0", "-4096", "4096"}), "negative offset");

  // Nothing was fetched by the failed requests, and the mount still works.
  auto status = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(Field(*status, "bytes_fetched"), 0u);
  EXPECT_EQ(RunInChild([&] { return ReadsBack(f.mount->File("mem0"), f.image, 0, kPage); }), 0);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// Found by tests/fuzz/control_fuzzer: a region whose name is not UTF-8 —
// here a file a consumer creates in a RAM-backing mount — made the JSON
// serializer throw while answering `status`, and the daemon died. Now the
// bad bytes read as U+FFFD and the daemon keeps serving.
TEST(ControlCommands, StatusSurvivesARegionNameThatIsNotUtf8) {
  TempDir dir;
  auto mount = MountProcess::Start(dir, {});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("odd\xff");
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file.c_str(), O_RDWR | O_CREAT, 0600);
              if (fd < 0) return Fail("create");
              const std::string page(kPage, 'x');
              if (pwrite(fd, page.data(), page.size(), 0) != static_cast<ssize_t>(kPage)) {
                return Fail("pwrite");
              }
              return close(fd) == 0 ? 0 : Fail("close");
            }),
            0);
  RunResult text = (*mount)->Ctl({"status", "--json"});
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_TRUE(absl::StrContains(text.out, "odd\xef\xbf\xbd")) << text.out;
  auto status = (*mount)->Status();  // still serving
  ASSERT_TRUE(status.ok()) << status.status() << "\n" << (*mount)->log();
  EXPECT_EQ(status->at("regions").size(), 1u);
  EXPECT_EQ(kill((*mount)->pid(), 0), 0);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// --- 3. wait ---

TEST(ControlCommands, WaitTimesOutOnAnIncompleteMount) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 8 * kMiB, false));
  RunResult r = f.mount->Ctl({"wait", "--timeout", "0.5"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "timed out")) << r.err;
  EXPECT_EQ(Lines(r.err), 1u) << r.err;
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ControlCommands, WaitWithProgressReturnsOnceThePullIsComplete) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 32 * kMiB, true));
  RunResult r = f.mount->Ctl({"wait", "--progress", "--timeout", "120"}, absl::Seconds(150));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // At least one drawing of the bar: a percentage and a rate.
  EXPECT_TRUE(absl::StrContains(r.err, "%")) << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "/s")) << r.err;
  auto status = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(status->at("complete").get<bool>()) << status->dump();
  // Once complete, wait returns at once, without --timeout.
  EXPECT_EQ(f.mount->Ctl({"wait"}).exit_code, 0);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 4. unmount ---

TEST(ControlCommands, UnmountExitsTheDaemonCleanly) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 4 * kMiB, false));
  const std::string mountpoint = f.mount->mountpoint();
  ASSERT_EQ(RunInChild([&] { return ReadsBack(f.mount->File("mem0"), f.image, 0, kMiB); }), 0);
  EXPECT_EQ(f.mount->Unmount(), 0) << f.mount->log();
  EXPECT_FALSE(IsMounted(mountpoint));
}

TEST(ControlCommands, UnmountOfABusyMountFailsAndKeepsServing) {
  Fixture f;
  const uint64_t size = 8 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, false));
  const std::string file = f.mount->File("mem0");
  StepPipe steps;
  auto holder = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("mmap");
    close(fd);
    volatile uint8_t* map = static_cast<uint8_t*>(p);
    if (map[kMiB] != f.image[kMiB]) return 2;
    char c;
    if (!steps.SendUp('m') || !steps.ReceiveDown(&c, absl::Seconds(120))) return 3;
    // Still intact after the refused unmount.
    if (map[kMiB] != f.image[kMiB] || map[5 * kMiB + 7] != f.image[5 * kMiB + 7]) return 4;
    munmap(p, size);
    return 0;
  });
  char c;
  ASSERT_TRUE(steps.ReceiveUp(&c)) << "the child did not map the file";

  RunResult busy = f.mount->Ctl({"unmount"});
  EXPECT_NE(busy.exit_code, 0);
  EXPECT_NE(busy.exit_code, -1) << busy.err;
  EXPECT_TRUE(absl::StrContains(busy.err, "busy")) << busy.err;
  EXPECT_EQ(Lines(busy.err), 1u) << busy.err;
  EXPECT_TRUE(IsMounted(f.mount->mountpoint()));
  EXPECT_TRUE(f.mount->Status().ok());
  EXPECT_EQ(RunInChild([&] { return ReadsBack(file, f.image, 3 * kMiB, 64 * 1024); }), 0);

  ASSERT_TRUE(steps.SendDown('q'));
  EXPECT_EQ(holder->Wait(), 0);
  const std::string mountpoint = f.mount->mountpoint();
  EXPECT_EQ(f.mount->Unmount(), 0) << f.mount->log();
  EXPECT_FALSE(IsMounted(mountpoint));
}

// --- 5. Background start-up and signals ---

// A daemon started without --foreground. The test makes itself the
// subreaper so that the daemon, orphaned by `lazyramd mount`, becomes its
// child: it can then be reaped and its exit code checked. The destructor
// unmounts, or kills that pid and detaches the mount.
class BackgroundDaemon {
 public:
  BackgroundDaemon(std::string mountpoint, std::string control)
      : mountpoint_(std::move(mountpoint)), control_(std::move(control)) {
    prctl(PR_SET_CHILD_SUBREAPER, 1);
  }
  ~BackgroundDaemon() {
    if (pid_ > 0 || IsMounted(mountpoint_)) {
      RunResult r = Run({LazyramctlPath(), "--control", control_, "unmount"}, absl::Seconds(10));
      const bool exited = r.exit_code == 0 && pid_ > 0 && WaitExit(absl::Seconds(10)) != -2;
      if (!exited) {
        if (pid_ > 0) kill(pid_, SIGKILL);
        ForceUnmount(mountpoint_);
        if (pid_ > 0) WaitExit(absl::Seconds(10));
      }
    }
    prctl(PR_SET_CHILD_SUBREAPER, 0);
  }
  void set_pid(pid_t pid) { pid_ = pid; }
  // The daemon's exit code once it exits (-1 for a signal); -2 if it is
  // still running after `timeout`.
  int WaitExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (pid_ > 0) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      if (r < 0 && errno == ECHILD) {  // not our child after all: gone or elsewhere
        pid_ = -1;
        return -1;
      }
      if (absl::Now() >= deadline) return -2;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }

 private:
  const std::string mountpoint_, control_;
  pid_t pid_ = -1;
};

TEST(ControlCommands, BackgroundMountIsUsableWhenTheCommandReturns) {
  TempDir dir;
  const uint64_t size = 8 * kMiB;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), size, 5);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string mnt = dir.Sub("mnt"), control = dir.Sub("ctl.sock"), log = dir.Sub("log");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  BackgroundDaemon daemon(mnt, control);

  RunResult r = lazyram::testing::Run({LazyramdPath(), "mount", mnt, "--source", (*server)->url(),
                                       "--control", control, "--log", log, "--prefetch", "off"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  // Usable at once: no polling before this read.
  EXPECT_EQ(RunInChild([&] { return ReadsBack(mnt + "/mem0", image, size - kMiB, kMiB); }), 0);
  EXPECT_TRUE(IsMounted(mnt));

  absl::StatusOr<json> status =
      client::ControlClient::Call(control, {{"cmd", "status"}}, absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_TRUE(status->contains("pid") && status->at("pid").is_number_integer()) << status->dump();
  const pid_t pid = status->at("pid").get<pid_t>();
  ASSERT_GT(pid, 1);
  daemon.set_pid(pid);
  EXPECT_NE(pid, getpid());

  RunResult unmount = lazyram::testing::Run({LazyramctlPath(), "--control", control, "unmount"});
  EXPECT_EQ(unmount.exit_code, 0) << unmount.err;
  EXPECT_EQ(daemon.WaitExit(absl::Seconds(30)), 0);
  EXPECT_FALSE(IsMounted(mnt));
  std::ifstream log_file(log);
  EXPECT_TRUE(log_file.good()) << "no log at " << log;
}

TEST(ControlCommands, SigtermUnmountsAForegroundDaemonCleanly) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 4 * kMiB, false));
  ASSERT_EQ(RunInChild([&] { return ReadsBack(f.mount->File("mem0"), f.image, 0, kMiB); }), 0);
  const std::string mountpoint = f.mount->mountpoint(), control = f.mount->control();
  ASSERT_EQ(kill(f.mount->pid(), SIGTERM), 0);
  EXPECT_EQ(f.mount->Wait(), 0) << f.mount->log();
  EXPECT_FALSE(IsMounted(mountpoint));
  // The daemon removed its control socket on the way out.
  struct stat st;
  EXPECT_NE(lstat(control.c_str(), &st), 0) << control << " is left behind";
}

// --- 6. Privacy ---

TEST(ControlCommands, FilesAndControlSocketArePrivateToTheUser) {
  Fixture f;
  const uint64_t size = 4 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, false));
  struct stat st;
  ASSERT_EQ(stat(f.mount->File("mem0").c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, getuid());
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
  ASSERT_EQ(lstat(f.mount->control().c_str(), &st), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  // Another user reaches neither: the mount has no allow_other and the
  // socket's mode refuses the connection. The directories on the way are
  // opened up so that only those two stand in the way (the mount's root
  // directory itself is 0755).
  ASSERT_EQ(chmod(f.dir.path().c_str(), 0755), 0);
  const std::string file = f.mount->File("mem0"), control = f.mount->control();
  EXPECT_EQ(
      RunInChild([&] {
        const uid_t nobody = 65534;
        if (setgroups(0, nullptr) != 0 || setresgid(nobody, nobody, nobody) != 0 ||
            setresuid(nobody, nobody, nobody) != 0) {
          return Fail("dropping to nobody");
        }
        int fd = open(file.c_str(), O_RDONLY);
        if (fd >= 0 || errno != EACCES) {
          std::fprintf(stderr, "another user could open %s (%s)\n", file.c_str(),
                       fd >= 0 ? "opened" : std::strerror(errno));
          return 2;
        }
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", control.c_str());
        if (connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 || errno != EACCES) {
          std::fprintf(stderr, "another user could connect to %s\n", control.c_str());
          return 3;
        }
        return 0;
      }),
      0);
  // Still fine for the owner.
  EXPECT_EQ(RunInChild([&] { return ReadsBack(file, f.image, kMiB, kPage); }), 0);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
