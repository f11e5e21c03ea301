// Source failure handling beyond a restart: --fetch-timeout turns a long
// outage into EIO, replicas of one image take over from each other, a
// replica with another image is refused, the fetcher's memory for replies
// in flight stays under --max-fetch-memory, and a page server behind a
// network link that is cut (link down, then 100% loss) is waited for.
// Each test prints how many kills or cuts it survived and how many bytes
// it verified.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <set>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fault_helpers.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kPage = 4096;

// --- Helpers -----------------------------------------------------------------

std::string WaitForSource(const MountProcess& mount, const std::string& state,
                          absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  std::string last;
  for (;;) {
    absl::StatusOr<nlohmann::json> status = mount.Status();
    if (status.ok()) last = (*status)["source"].get<std::string>();
    if (last == state || absl::Now() >= deadline) return last;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// Waits until the mount has more than `pages` pages local (or all of
// `total`); returns the count last seen.
uint64_t WaitForLocalPast(const MountProcess& mount, uint64_t pages, uint64_t total,
                          absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  uint64_t local = LocalPages(mount, "mem0");
  while (local <= pages && local < total && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
    local = LocalPages(mount, "mem0");
  }
  return local;
}

size_t CountOccurrences(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Both whole-file checks; returns the bytes verified (0 on a failure,
// which the EXPECTs report).
uint64_t VerifyAll(const std::string& file, const std::vector<uint8_t>& image) {
  const int pread_code =
      RunInChild([&] { return PreadAndCompare(file, 0, image.size(), image); }, absl::Minutes(5));
  const int map_code = RunInChild([&] { return MapAndCompare(file, image); }, absl::Minutes(5));
  EXPECT_EQ(pread_code, 0);
  EXPECT_EQ(map_code, 0);
  return pread_code == 0 && map_code == 0 ? 2 * image.size() : 0;
}

// Child-safe: one pread of a page that is not local. Exit code 0 when it
// returned the right bytes, 100 + errno when it failed no sooner than
// `not_before`, 99 when it failed sooner.
int PreadExpectingError(const std::string& path, uint64_t offset,
                        const std::vector<uint8_t>& expected, absl::Duration not_before) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return kOpen;
  std::vector<uint8_t> buf(kPage);
  const absl::Time start = absl::Now();
  ssize_t n = pread(fd, buf.data(), buf.size(), static_cast<off_t>(offset));
  const int error = errno;
  const absl::Duration took = absl::Now() - start;
  close(fd);
  if (n < 0) return took >= not_before ? 100 + error : 99;
  if (static_cast<size_t>(n) != buf.size()) return kShortRead;
  return std::memcmp(buf.data(), expected.data() + offset, buf.size()) == 0 ? 0 : kMismatch;
}

void Report(const std::string& test, int survived, const std::string& what, uint64_t bytes) {
  std::printf("[%s] survived %d %s; verified %llu bytes\n", test.c_str(), survived, what.c_str(),
              static_cast<unsigned long long>(bytes));
  std::fflush(stdout);
}

// --- --fetch-timeout -----------------------------------------------------------

TEST(FetchTimeout, ReadFailsWithEioAfterTheTimeoutThenSucceedsOnceTheSourceIsBack) {
  constexpr uint64_t kSize = 16 * kMiB;
  constexpr int kTimeoutSeconds = 2;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 41);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  auto server = PageServerProcess::Start(regions);
  ASSERT_TRUE(server.ok()) << server.status();
  const uint16_t port = (*server)->port();
  auto mount =
      MountProcess::Start(dir, {.source = (*server)->url(),
                                .extra_args = {"--fetch-timeout", absl::StrCat(kTimeoutSeconds)}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  ASSERT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kMiB, image); }), 0);

  int outages = 0;
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    (*server)->Kill();
    ++outages;
    ASSERT_EQ(WaitForSource(m, "reconnecting"), "reconnecting") << m.log();

    // Pages of a data MiB that nobody has read.
    const uint64_t offset = (5 + 4 * static_cast<uint64_t>(round)) * kMiB + 3 * kPage;
    const absl::Time read_start = absl::Now();
    EXPECT_EQ(RunInChild([&] {
                return PreadExpectingError(file, offset, image, absl::Seconds(kTimeoutSeconds));
              }),
              100 + EIO)
        << "expected EIO, no sooner than the timeout\n"
        << m.log();
    std::printf("[FetchTimeout] EIO after %.2f s (timeout %d s)\n",
                absl::ToDoubleSeconds(absl::Now() - read_start), kTimeoutSeconds);
    // While the outage goes on, further reads fail without waiting again.
    const absl::Time again_start = absl::Now();
    EXPECT_EQ(RunInChild([&] {
                return PreadExpectingError(file, offset + 2 * kMiB, image, absl::ZeroDuration());
              }),
              100 + EIO);
    std::printf("[FetchTimeout] the next read in the same outage: EIO after %.2f s\n",
                absl::ToDoubleSeconds(absl::Now() - again_start));
    // A mapped page that cannot be fetched is a SIGBUS: what the flag asks for.
    EXPECT_EQ(RunInChild([&] {
                int fd = open(file.c_str(), O_RDONLY);
                auto* p = static_cast<volatile const uint8_t*>(
                    mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0));
                return p[offset + kMiB / 2] == 0x5a ? 1 : 2;
              }),
              -1)
        << "touching an unreachable mapped page did not kill the toucher";
    RunResult prefetch = m.Ctl({"prefetch", "mem0", absl::StrCat(offset + kMiB / 4), "4096"});
    EXPECT_NE(prefetch.exit_code, 0);
    EXPECT_TRUE(absl::StrContains(prefetch.err, "fetch-timeout")) << prefetch.err;

    server = PageServerProcess::Start(regions, port);
    ASSERT_TRUE(server.ok()) << server.status();
    EXPECT_EQ(WaitForSource(m, "connected"), "connected") << m.log();
    EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, offset, kMiB, image); }), 0) << m.log();
  }
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_GE((*status)["fetch_timeouts"].get<uint64_t>(), 6u);  // 4 reads + 2 prefetches
  const uint64_t verified = VerifyAll(file, image);
  Report("FetchTimeout", outages, "outages", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// --- Replicas ------------------------------------------------------------------

TEST(Replicas, PullAndReadsSurviveKillingTheReplicaInUse) {
  constexpr uint64_t kSize = 128 * kMiB;
  constexpr int kKills = 8;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 42);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  std::unique_ptr<PageServerProcess> servers[2];
  uint16_t ports[2];
  Throttle throttle(absl::Milliseconds(2), absl::Milliseconds(250));
  for (int i = 0; i < 2; ++i) {
    auto s = PageServerProcess::Start(regions);
    ASSERT_TRUE(s.ok()) << s.status();
    servers[i] = *std::move(s);
    ports[i] = servers[i]->port();
    throttle.Add(servers[i]->pid());
  }
  const std::string urls[2] = {servers[0]->url(), servers[1]->url()};
  auto mount =
      MountProcess::Start(dir, {.source = urls[0],
                                .prefetch = true,
                                // Few replies in flight: a server thawed for a moment sends little.
                                .extra_args = {"--source", urls[1], "--max-fetch-memory", "16"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  const uint64_t total = kSize / kPage;
  {
    auto status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    ASSERT_EQ((*status)["sources"].size(), 2u) << *status;
    EXPECT_EQ((*status)["current_source"], urls[0]) << *status;
    EXPECT_NE((*status)["sources"][1]["state"], "refused") << *status;
  }

  // A consumer that maps the file and touches it all over while replicas
  // die under it: a failed fetch would be a SIGBUS, a wrong one a mismatch.
  auto consumer = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return static_cast<int>(kOpen);
    auto* p = static_cast<const uint8_t*>(mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0));
    if (p == MAP_FAILED) return static_cast<int>(kMap);
    std::mt19937_64 rng(7);
    for (int i = 0; i < 64; ++i) {
      const uint64_t at = rng() % total * kPage;
      if (std::memcmp(p + at, image.data() + at, kPage) != 0) return static_cast<int>(kMismatch);
    }
    return std::memcmp(p, image.data(), kSize) == 0 ? 0 : static_cast<int>(kMismatch);
  });

  int kills = 0;
  uint64_t verified = 0;
  uint64_t local = LocalPages(m, "mem0");
  for (int cycle = 0; cycle < kKills; ++cycle) {
    SCOPED_TRACE(absl::StrCat("kill ", cycle));
    local = WaitForLocalPast(m, local + 256, total);
    auto status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    const int victim = (*status)["current_source"] == urls[0] ? 0 : 1;
    ASSERT_EQ((*status)["current_source"], urls[victim]) << *status;
    // Freeze the victim, so the pull cannot finish between this check and
    // the kill.
    throttle.Remove(servers[victim]->pid());
    kill(servers[victim]->pid(), SIGSTOP);
    local = LocalPages(m, "mem0");
    ASSERT_LT(local, total) << "the pull finished before kill " << cycle
                            << "; the throttle did not hold it back";
    servers[victim]->Kill();
    ++kills;

    // With the victim still down: a demand read completes, and the pull
    // goes on, both served by the other replica.
    // Downwards from the end: behind where each read sent the puller.
    const uint64_t offset = (120 - 9 * static_cast<uint64_t>(cycle)) * kMiB + 4321;
    static_assert(120 * kMiB + 4321 + kMiB + 99 <= kSize && 9 * (kKills - 1) < 120);
    const absl::Time read_start = absl::Now();
    EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, offset, kMiB + 99, image); },
                         absl::Seconds(120)),
              0)
        << m.log();
    verified += kMiB + 99;
    std::printf(
        "[Replicas] kill %d at %llu of %llu pages local: a 1 MiB read took %.2f s on the other "
        "replica\n",
        cycle, static_cast<unsigned long long>(local), static_cast<unsigned long long>(total),
        absl::ToDoubleSeconds(absl::Now() - read_start));
    const uint64_t after = WaitForLocalPast(m, local + 128, total);
    EXPECT_TRUE(after > local + 128 || after == total) << "no progress without the victim";
    status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_EQ((*status)["current_source"], urls[1 - victim]) << *status;

    auto restarted = PageServerProcess::Start(regions, ports[victim]);
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    servers[victim] = *std::move(restarted);
    throttle.Add(servers[victim]->pid());
  }
  throttle.Clear();

  RunResult wait = m.Ctl({"wait", "--timeout", "180"}, absl::Seconds(240));
  EXPECT_EQ(wait.exit_code, 0) << wait.err << m.log();
  EXPECT_EQ(consumer->Wait(absl::Seconds(120)), 0) << m.log();
  verified += kSize;
  EXPECT_EQ(WaitForSource(m, "detached"), "detached") << m.log();
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_GE((*status)["failovers"].get<uint64_t>(), static_cast<uint64_t>(kKills)) << *status;
  verified += VerifyAll(file, image);
  Report("Replicas", kills, "kills of the replica in use", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(Replicas, ReplicaWithAnotherImageIsRefused) {
  constexpr uint64_t kSize = 8 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 43);
  WriteImage(dir.Sub("bigger"), 2 * kSize, 44);
  // Same name and size; its last MiB is a hole, so its zero extents differ.
  WriteImage(dir.Sub("holey"), kSize, 43, 4, kMiB);
  auto a = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  auto b = PageServerProcess::Start({"mem0=" + dir.Sub("bigger")});
  auto c = PageServerProcess::Start({"mem0=" + dir.Sub("holey")});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const uint16_t port = (*a)->port();
  auto mount = MountProcess::Start(
      dir,
      {.source = (*a)->url(), .extra_args = {"--source", (*b)->url(), "--source", (*c)->url()}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");

  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ((*status)["current_source"], (*a)->url());
  EXPECT_EQ((*status)["sources"][1]["state"], "refused") << *status;
  EXPECT_EQ((*status)["sources"][2]["state"], "refused") << *status;
  EXPECT_TRUE(absl::StrContains(m.log(), absl::StrCat((*b)->url(), " refused"))) << m.log();
  EXPECT_TRUE(absl::StrContains(m.log(), "zero extents")) << m.log();
  const uint64_t refusals_before = (*status)["sources"][1]["refusals"].get<uint64_t>() +
                                   (*status)["sources"][2]["refusals"].get<uint64_t>();

  (*a)->Kill();
  auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, kMiB, 3 * kMiB, image); });
  absl::SleepFor(absl::Seconds(3));
  EXPECT_TRUE(StillRunning(*reader)) << "a read finished against a replica with another image";
  status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ((*status)["source"], "reconnecting");
  EXPECT_GT((*status)["sources"][1]["refusals"].get<uint64_t>() +
                (*status)["sources"][2]["refusals"].get<uint64_t>(),
            refusals_before)
      << "the other replicas were not tried (and refused) while the first was down\n"
      << *status;

  a = PageServerProcess::Start({"mem0=" + dir.Sub("img")}, port);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(reader->Wait(absl::Seconds(60)), 0) << m.log();
  const uint64_t verified = 3 * kMiB + VerifyAll(file, image);
  Report("ReplicaRefused", 1, "kills", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(Replicas, MountStartsOnTheFirstReplicaThatAnswers) {
  constexpr uint64_t kSize = 8 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 49);
  auto b = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(b.ok()) << b.status();
  // Nothing listens on port 1 of 127.0.0.1.
  auto mount = MountProcess::Start(
      dir, {.source = "tcp://127.0.0.1:1", .extra_args = {"--source", (*b)->url()}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ((*status)["current_source"], (*b)->url()) << *status;
  EXPECT_EQ((*status)["sources"][0]["state"], "down") << *status;
  EXPECT_EQ((*status)["sources"][1]["state"], "up") << *status;
  EXPECT_EQ((*status)["source"], "connected") << *status;
  const uint64_t verified = VerifyAll(m.File("mem0"), image);
  Report("FirstAnswering", 0, "kills", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// A replica that goes silent (stopped, not dead: its connections stay
// open) is left once it has owed replies for a while.
TEST(Replicas, SilentReplicaIsLeftForTheNextOne) {
  constexpr uint64_t kSize = 16 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 48);
  const std::vector<std::string> regions = {"mem0=" + dir.Sub("img")};
  auto a = PageServerProcess::Start(regions);
  auto b = PageServerProcess::Start(regions);
  ASSERT_TRUE(a.ok() && b.ok());
  auto mount =
      MountProcess::Start(dir, {.source = (*a)->url(), .extra_args = {"--source", (*b)->url()}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  ASSERT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kMiB, image); }), 0);

  kill((*a)->pid(), SIGSTOP);
  const absl::Time read_start = absl::Now();
  EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, 5 * kMiB + 999, kMiB, image); },
                       absl::Seconds(120)),
            0)
      << m.log();
  std::printf("[SilentReplica] a read with the replica in use stopped took %.2f s\n",
              absl::ToDoubleSeconds(absl::Now() - read_start));
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ((*status)["current_source"], (*b)->url()) << *status;
  EXPECT_GE((*status)["failovers"].get<uint64_t>(), 1u) << *status;
  EXPECT_TRUE(absl::StrContains(m.log(), "no reply for")) << m.log();
  kill((*a)->pid(), SIGCONT);
  const uint64_t verified = kMiB + VerifyAll(file, image);
  Report("SilentReplica", 1, "silent replicas", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

TEST(Replicas, BadReplicaListsAreRefusedWithOneLine) {
  TempDir dir;
  const std::string mnt = dir.Sub("mnt");
  std::filesystem::create_directories(mnt);
  WriteImage(dir.Sub("img"), kMiB, 45);
  auto mount = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {LazyramdPath(), "mount",     mnt,
                                     "--foreground", "--control", dir.Sub("ctl.sock")};
    argv.insert(argv.end(), args.begin(), args.end());
    return ::lazyram::testing::Run(argv);
  };
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"--source", "tcp://127.0.0.1:1", "--source", "file://" + dir.Sub("img")}, "replicas"},
      {{"--source", "file://" + dir.Sub("img"), "--source", "tcp://127.0.0.1:1"}, "replicas"},
      {{"--source", "tcp://127.0.0.1:1", "--source", "tcp://127.0.0.1:1"}, "given twice"},
      {{"--source", "tcp://127.0.0.1:1", "--source", "tcp://127.0.0.1:2"}, "no replica answered"},
      {{"--source", "tcp://127.0.0.1:1", "--max-fetch-memory", "1"}, "--max-fetch-memory"},
      {{"--source", "tcp://127.0.0.1:1", "--fetch-timeout", "0"}, "--fetch-timeout"},
      {{"--source", "file://" + dir.Sub("img"), "--fetch-timeout", "5"}, "needs a tcp://"},
      {{"--fetch-timeout", "5"}, "needs a tcp://"},
  };
  // One URL per --source, so a mount point after it is still the mount
  // point (as before replicas existed).
  RunResult r = ::lazyram::testing::Run({LazyramdPath(), "mount", "--source", "tcp://127.0.0.1:1",
                                         mnt, "--foreground", "--control", dir.Sub("ctl.sock")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(r.err, "cannot connect to 127.0.0.1:1")) << r.err;
  for (const Case& c : cases) {
    SCOPED_TRACE(absl::StrJoin(c.args, " "));
    RunResult r = mount(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(CountOccurrences(r.err, "\n"), 1u) << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, c.says)) << r.err;
    EXPECT_FALSE(IsMounted(mnt));
  }
}

// --- --max-fetch-memory --------------------------------------------------------

TEST(FetchMemory, CapHoldsBulkBackAndLetsDemandThrough) {
  constexpr uint64_t kSize = 32 * kMiB;
  TempDir dir;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 46);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  // A slow server: replies trickle, so requests pile up in the daemon.
  Throttle throttle(absl::Milliseconds(2), absl::Milliseconds(300));
  throttle.Add((*server)->pid());
  auto mount = MountProcess::Start(
      dir,
      {.source = (*server)->url(), .prefetch = true, .extra_args = {"--max-fetch-memory", "16"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  const uint64_t cap = 16 * kMiB;

  // Demand reads get through while the pull is held at the cap.
  auto reader = ChildProcess::Start([&] { return PreadAndCompare(file, 20 * kMiB, kMiB, image); });
  uint64_t most = 0, waits = 0;
  const absl::Time until = absl::Now() + absl::Seconds(4);
  while (absl::Now() < until) {
    auto status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    const nlohmann::json& mem = (*status)["fetch_memory"];
    ASSERT_EQ(mem["cap"].get<uint64_t>(), cap) << *status;
    most = std::max(most, mem["buffers"].get<uint64_t>() + mem["in_flight"].get<uint64_t>());
    waits = mem["waits"].get<uint64_t>();
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_LE(most, cap);
  EXPECT_GT(waits, 0u) << "no request ever waited: the cap did not bind";
  EXPECT_EQ(reader->Wait(absl::Seconds(120)), 0) << m.log();

  throttle.Clear();
  RunResult wait = m.Ctl({"wait", "--timeout", "120"}, absl::Seconds(180));
  EXPECT_EQ(wait.exit_code, 0) << wait.err << m.log();
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_LE((*status)["fetch_memory"]["peak"].get<uint64_t>(), cap) << *status;
  const uint64_t verified = kMiB + VerifyAll(file, image);
  Report("FetchMemory", 0, "kills", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// --- Network cut --------------------------------------------------------------

std::string FindTool(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) {
    const std::string path = absl::StrCat(dir, "/", name);
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return "";
}

// A network namespace joined to this one by a veth pair on a random /30 of
// 10.0.0.0/8. The destructor deletes the pair and the namespace, whatever
// happened; kill what runs inside first.
class NetnsLink {
 public:
  // Null with `*why` set when it could not be made; `*not_permitted` when
  // `ip netns add` itself was refused (the test then skips).
  static std::unique_ptr<NetnsLink> Create(std::string* why, bool* not_permitted) {
    auto link = std::unique_ptr<NetnsLink>(new NetnsLink);
    *not_permitted = false;
    link->ip_ = FindTool("ip");
    link->tc_ = FindTool("tc");
    if (link->ip_.empty()) {
      *why = "no ip(8) binary";
      *not_permitted = true;
      return nullptr;
    }
    std::random_device random;
    const uint32_t r = random();
    const std::string id = absl::StrCat(getpid() % 100000, "x", r % 4096);
    link->ns_ = absl::StrCat("lazyram-cut-", id);
    link->host_dev_ = absl::StrCat("lzh", id);
    link->ns_dev_ = absl::StrCat("lzp", id);
    const std::string base = absl::StrCat("10.", 100 + (r >> 12) % 150, ".", (r >> 20) % 256, ".");
    const uint32_t quad = 4 * (random() % 64);
    link->host_ip_ = absl::StrCat(base, quad + 1);
    link->ns_ip_ = absl::StrCat(base, quad + 2);

    RunResult add = Run({link->ip_, "netns", "add", link->ns_});
    if (add.exit_code != 0) {
      *why = absl::StrCat("ip netns add is not permitted here: ", add.err);
      *not_permitted = true;
      return nullptr;
    }
    link->ns_made_ = true;
    const std::vector<std::vector<std::string>> steps = {
        {"link", "add", link->host_dev_, "type", "veth", "peer", "name", link->ns_dev_},
        {"link", "set", link->ns_dev_, "netns", link->ns_},
        {"addr", "add", link->host_ip_ + "/30", "dev", link->host_dev_},
        {"link", "set", link->host_dev_, "up"},
        {"netns", "exec", link->ns_, link->ip_, "addr", "add", link->ns_ip_ + "/30", "dev",
         link->ns_dev_},
        {"netns", "exec", link->ns_, link->ip_, "link", "set", link->ns_dev_, "up"},
        {"netns", "exec", link->ns_, link->ip_, "link", "set", "lo", "up"},
    };
    for (const std::vector<std::string>& step : steps) {
      std::vector<std::string> argv = {link->ip_};
      argv.insert(argv.end(), step.begin(), step.end());
      RunResult r = Run(argv);
      if (r.exit_code != 0) {
        *why = absl::StrCat("ip ", absl::StrJoin(step, " "), ": ", r.err);
        return nullptr;  // the destructor undoes what was made
      }
      if (step[0] == "link" && step[1] == "add") link->link_made_ = true;
    }
    return link;
  }

  ~NetnsLink() {
    std::string ignored;
    if (loss_on_) Loss(false, loss_by_netem_, &ignored);   // a host route outlives the link
    if (link_made_) Run({ip_, "link", "del", host_dev_});  // deletes the peer too
    if (ns_made_) Run({ip_, "netns", "del", ns_});
  }

  const std::string& ip() const { return ip_; }
  const std::string& ns() const { return ns_; }
  const std::string& ns_ip() const { return ns_ip_; }

  bool SetLinkUp(bool up) {
    return Run({ip_, "link", "set", host_dev_, up ? "up" : "down"}).exit_code == 0;
  }
  // 100% loss both ways while the link stays up: netem on both ends, or,
  // where the kernel has no netem (this one has none), blackhole routes to
  // the other end on both sides, which drop every packet just as silently.
  // `*how` says which was used.
  bool SetTotalLoss(bool on, std::string* how) {
    if (on) loss_by_netem_ = Loss(true, /*netem=*/true, how);
    if (on && loss_by_netem_) return true;
    std::string netem_error = *how;
    if (Loss(on, loss_by_netem_, how)) {
      if (on) *how = absl::StrCat("blackhole routes (netem: ", netem_error, ")");
      return true;
    }
    return false;
  }

 private:
  NetnsLink() = default;
  bool Loss(bool on, bool netem, std::string* why) {
    std::vector<std::vector<std::string>> steps;
    const std::string verb = on ? "add" : "del";
    if (netem) {
      if (tc_.empty()) {
        *why = "no tc(8) binary";
        return false;
      }
      std::vector<std::string> tail = {"root"};
      if (on) tail = {"root", "netem", "loss", "100%"};
      steps.push_back({tc_, "qdisc", verb, "dev", host_dev_});
      steps.push_back({ip_, "netns", "exec", ns_, tc_, "qdisc", verb, "dev", ns_dev_});
      for (auto& step : steps) step.insert(step.end(), tail.begin(), tail.end());
    } else {
      steps.push_back({ip_, "route", verb, "blackhole", ns_ip_ + "/32"});
      steps.push_back(
          {ip_, "netns", "exec", ns_, ip_, "route", verb, "blackhole", host_ip_ + "/32"});
    }
    for (const auto& argv : steps) {
      RunResult r = Run(argv);
      if (r.exit_code != 0) {
        *why =
            absl::StrCat(absl::StrJoin(argv, " "), ": ", absl::StripTrailingAsciiWhitespace(r.err));
        return false;
      }
      loss_on_ = on;
    }
    *why = netem ? "netem loss 100%" : "blackhole routes";
    return true;
  }

  std::string ip_, tc_, ns_, host_dev_, ns_dev_, host_ip_, ns_ip_;
  bool ns_made_ = false, link_made_ = false;
  bool loss_by_netem_ = false;
  bool loss_on_ = false;  // some of the loss is in place
};

// `lazyramd serve` inside the namespace, listening on its veth address.
// The destructor kills it (SIGKILL, by pid) and reaps it.
class NetnsServer {
 public:
  static absl::StatusOr<std::unique_ptr<NetnsServer>> Start(const NetnsLink& link,
                                                            const std::string& region) {
    // A non-loopback --listen needs a key or --insecure (tests/security_test.cc
    // covers the key; here the link is the subject).
    const std::vector<std::string> argv = {
        LazyramdPath(), "serve", "--listen",  absl::StrCat(link.ns_ip(), ":0"),
        "--region",     region,  "--insecure"};
    // Only the network namespace is entered (setns), not `ip netns exec`,
    // which also unshares a mount namespace: with this host's private mount
    // propagation that copy would keep every FUSE mount that other tests
    // have up alive after they unmount it, and their daemons would wait for
    // the copy to go (seen: an unmount timing out in security_test).
    const std::string netns_path = absl::StrCat("/run/netns/", link.ns());
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return absl::InternalError("pipe");
    std::fflush(nullptr);
    auto server = std::unique_ptr<NetnsServer>(new NetnsServer);
    server->pid_ = fork();
    if (server->pid_ == 0) {
      const int ns = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0 || setns(ns, CLONE_NEWNET) != 0) _exit(126);
      dup2(out[1], STDOUT_FILENO);
      execv(args[0], args.data());
      _exit(127);
    }
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
    close(out[0]);
    const std::string prefix = absl::StrCat("listening on ", link.ns_ip(), ":");
    uint32_t port = 0;
    if (line.rfind(prefix, 0) != 0 ||
        !absl::SimpleAtoi(line.substr(prefix.size(), line.find('\n') - prefix.size()), &port)) {
      return absl::InternalError(absl::StrCat("page server in ", link.ns(), " said '", line, "'"));
    }
    server->url_ = absl::StrCat("tcp://", link.ns_ip(), ":", port);
    return server;
  }
  ~NetnsServer() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status;
    waitpid(pid_, &status, 0);
  }
  pid_t pid() const { return pid_; }
  const std::string& url() const { return url_; }

 private:
  NetnsServer() = default;
  pid_t pid_ = -1;
  std::string url_;
};

TEST(NetworkCut, PullAndReadsWaitThroughLinkDownAndTotalLoss) {
  constexpr uint64_t kSize = 128 * kMiB;
  TempDir dir;
  std::string why;
  bool not_permitted = false;
  std::unique_ptr<NetnsLink> link = NetnsLink::Create(&why, &not_permitted);
  if (link == nullptr && not_permitted) GTEST_SKIP() << why;
  ASSERT_NE(link, nullptr) << why;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 47);
  auto server = NetnsServer::Start(*link, "mem0=" + dir.Sub("img"));
  ASSERT_TRUE(server.ok()) << server.status();
  Throttle throttle(absl::Milliseconds(2), absl::Milliseconds(400));
  throttle.Add((*server)->pid());
  auto mount = MountProcess::Start(dir, {.source = (*server)->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  const uint64_t total = kSize / kPage;

  struct Cut {
    std::string name;
    std::function<bool(bool cut, std::string* why)> apply;
    uint64_t read_at;
  };
  const std::vector<Cut> cuts = {
      {"link down", [&](bool cut, std::string*) { return link->SetLinkUp(!cut); },
       100 * kMiB + 1234},
      {"100% loss", [&](bool cut, std::string* w) { return link->SetTotalLoss(cut, w); },
       75 * kMiB + 4321},
  };
  int survived = 0;
  uint64_t verified = 0;
  uint64_t local = LocalPages(m, "mem0");
  for (const Cut& cut : cuts) {
    SCOPED_TRACE(cut.name);
    local = WaitForLocalPast(m, local + 256, total);
    ASSERT_LT(local, total) << "the pull finished before the cut";
    std::string how;
    ASSERT_TRUE(cut.apply(true, &how)) << how;
    std::printf("[NetworkCut] %s: %s\n", cut.name.c_str(),
                how.empty() ? "ip link set down" : how.c_str());
    absl::SleepFor(absl::Seconds(1));  // what was already on its way lands
    const uint64_t during = LocalPages(m, "mem0");
    auto reader =
        ChildProcess::Start([&] { return PreadAndCompare(file, cut.read_at, kMiB / 2, image); });
    absl::SleepFor(absl::Seconds(3));
    EXPECT_TRUE(StillRunning(*reader)) << "a read finished while the link was cut";
    EXPECT_EQ(LocalPages(m, "mem0"), during) << "pages arrived over a cut link";
    auto status = m.Status();
    ASSERT_TRUE(status.ok()) << status.status();
    EXPECT_FALSE((*status)["complete"].get<bool>());

    ASSERT_TRUE(cut.apply(false, &how)) << how;
    ++survived;
    EXPECT_EQ(reader->Wait(absl::Seconds(180)), 0) << m.log();
    verified += kMiB / 2;
    local = LocalPages(m, "mem0");
  }
  throttle.Clear();
  RunResult wait = m.Ctl({"wait", "--timeout", "180"}, absl::Seconds(240));
  EXPECT_EQ(wait.exit_code, 0) << wait.err << m.log();
  EXPECT_EQ(WaitForSource(m, "detached"), "detached") << m.log();
  verified += VerifyAll(file, image);
  Report("NetworkCut", survived, "cuts", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

// The link to the replica in use is cut: its connections stay open but
// silent, so the daemon leaves it for the next replica after the stall
// timeout and reads complete while the link is still down.
TEST(NetworkCut, CutLinkFailsOverToAnotherReplica) {
  constexpr uint64_t kSize = 16 * kMiB;
  TempDir dir;
  std::string why;
  bool not_permitted = false;
  std::unique_ptr<NetnsLink> link = NetnsLink::Create(&why, &not_permitted);
  if (link == nullptr && not_permitted) GTEST_SKIP() << why;
  ASSERT_NE(link, nullptr) << why;
  std::vector<uint8_t> image = WriteImage(dir.Sub("img"), kSize, 50);
  auto far = NetnsServer::Start(*link, "mem0=" + dir.Sub("img"));
  ASSERT_TRUE(far.ok()) << far.status();
  auto near = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(near.ok()) << near.status();
  auto mount = MountProcess::Start(
      dir, {.source = (*far)->url(), .extra_args = {"--source", (*near)->url()}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  MountProcess& m = **mount;
  const std::string file = m.File("mem0");
  ASSERT_EQ(RunInChild([&] { return PreadAndCompare(file, 0, kMiB, image); }), 0);

  ASSERT_TRUE(link->SetLinkUp(false));
  const absl::Time start = absl::Now();
  EXPECT_EQ(RunInChild([&] { return PreadAndCompare(file, 9 * kMiB + 77, kMiB, image); },
                       absl::Seconds(120)),
            0)
      << m.log();
  std::printf("[NetworkCut] with the link to the replica in use down, a read took %.2f s\n",
              absl::ToDoubleSeconds(absl::Now() - start));
  auto status = m.Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ((*status)["current_source"], (*near)->url()) << *status;
  ASSERT_TRUE(link->SetLinkUp(true));
  const uint64_t verified = kMiB + VerifyAll(file, image);
  Report("NetworkCutFailover", 1, "cuts", verified);
  EXPECT_EQ(m.Unmount(), 0) << m.log();
}

}  // namespace
}  // namespace lazyram::testing
