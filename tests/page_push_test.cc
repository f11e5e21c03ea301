// Pages the background pull fetched are pushed into the kernel's page cache
// (fusefs/page_pusher.h): what a consumer then sees must still be exactly
// the image plus its own writes — a push must never overwrite a page the
// consumer was given or wrote — and `--push off` turns it off.
//
// Everything that touches the mount runs in a forked child.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;

struct Served {
  TempDir dir;
  std::vector<uint8_t> image;
  std::unique_ptr<PageServerProcess> server;
};

void Serve(Served* s, uint64_t size) {
  s->image = WriteImage(s->dir.Sub("img"), size, 5, /*zero_every=*/6, /*hole_bytes=*/kMiB);
  auto server = PageServerProcess::Start({"mem0=" + s->dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  s->server = *std::move(server);
}

// Polls the status until the pull is complete and the pusher idle.
absl::StatusOr<json> WaitPulledAndPushed(const MountProcess& mount) {
  RunResult wait = mount.Ctl({"wait", "--timeout", "120"}, absl::Seconds(150));
  if (wait.exit_code != 0) return absl::DeadlineExceededError("wait: " + wait.err);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  for (;;) {
    absl::StatusOr<json> status = mount.Status();
    if (!status.ok()) return status.status();
    if (status->at("push").at("pending_runs").get<uint64_t>() == 0) return status;
    if (absl::Now() > deadline) return absl::DeadlineExceededError(status->dump());
    absl::SleepFor(absl::Milliseconds(20));
  }
}

int Report(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

// First page at which a and b differ in [0, n), or -1.
int64_t FirstDifference(const uint8_t* a, const uint8_t* b, uint64_t n) {
  for (uint64_t off = 0; off < n; off += kPage) {
    const uint64_t len = std::min(kPage, n - off);
    if (std::memcmp(a + off, b + off, len) != 0) return static_cast<int64_t>(off / kPage);
  }
  return -1;
}

int CompareByPread(const std::string& path, const std::vector<uint8_t>& want) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return Report("open");
  std::vector<uint8_t> got(want.size());
  uint64_t done = 0;
  while (done < got.size()) {
    ssize_t n = pread(fd, got.data() + done, got.size() - done, static_cast<off_t>(done));
    if (n <= 0) return Report("pread");
    done += static_cast<uint64_t>(n);
  }
  close(fd);
  if (int64_t p = FirstDifference(got.data(), want.data(), want.size()); p >= 0) {
    std::fprintf(stderr, "pread content differs at page %lld\n", static_cast<long long>(p));
    return 1;
  }
  return 0;
}

TEST(PagePush, PulledPagesArePushedAndReadBackExactly) {
  Served s;
  const uint64_t size = 24 * kMiB + 5000;  // a partial last page
  ASSERT_NO_FATAL_FAILURE(Serve(&s, size));
  auto mount = MountProcess::Start(s.dir, {.source = s.server->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");

  // As QEMU does: the file is open and mapped while the pull runs, so the
  // kernel knows its inode and the pushes land.
  StepPipe steps;
  auto child = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return Report("open");
    void* p = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Report("mmap");
    char c;
    if (!steps.SendUp('m') || !steps.ReceiveDown(&c)) return 2;
    // The pulled pages are in the page cache before anyone touched them.
    // (Zero pages are served on demand, not pushed.) Reads the residency
    // only: nothing is faulted in.
    std::vector<unsigned char> resident((size + kPage - 1) / kPage);
    if (mincore(p, size, resident.data()) != 0) return Report("mincore");
    uint64_t cached = 0, data = 0;
    for (uint64_t i = 0; i < resident.size(); ++i) {
      const uint64_t off = i * kPage, n = std::min(kPage, size - off);
      const bool zero = std::all_of(s.image.begin() + off, s.image.begin() + off + n,
                                    [](uint8_t b) { return b == 0; });
      if (zero) continue;
      ++data;
      cached += resident[i] & 1;
    }
    if (cached * 10 < data * 9) {
      std::fprintf(stderr, "only %llu of %llu data pages are in the page cache\n",
                   static_cast<unsigned long long>(cached), static_cast<unsigned long long>(data));
      return 4;
    }
    if (int64_t d = FirstDifference(static_cast<uint8_t*>(p), s.image.data(), size); d >= 0) {
      std::fprintf(stderr, "mapped content differs at page %lld\n", static_cast<long long>(d));
      return 3;
    }
    return 0;
  });
  char c;
  ASSERT_TRUE(steps.ReceiveUp(&c)) << "the child did not map the file";
  absl::StatusOr<json> status = WaitPulledAndPushed(**mount);
  ASSERT_TRUE(status.ok()) << status.status() << (*mount)->log();
  const json& push = status->at("push");
  EXPECT_TRUE(push.at("enabled").get<bool>());
  const json& region = status->at("regions").at(0);
  EXPECT_GE(push.at("pages_pushed").get<uint64_t>(), region.at("pages_present").get<uint64_t>())
      << status->dump();
  EXPECT_LE(push.at("pages_pushed").get<uint64_t>(), region.at("pages_total").get<uint64_t>())
      << status->dump();
  ASSERT_TRUE(steps.SendDown('c'));
  EXPECT_EQ(child->Wait(), 0) << (*mount)->log();

  // And again from the daemon's store once the kernel dropped the pages.
  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild([&] { return CompareByPread(file, s.image); }), 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// Writers dirty every page once, in random order, through a shared
// mapping; every write must survive: in the mapping right away, and in the
// daemon's store after the kernel dropped its pages. With a push that
// overwrote pages the consumer already had (notify_store), writes racing
// the pushes during the pull were lost. `open_after_pull`: the writers
// start once the pull and its pushes are over.
void WritersRaceThePushes(uint64_t size, bool open_after_pull) {
  Served s;
  ASSERT_NO_FATAL_FAILURE(Serve(&s, size));
  auto mount = MountProcess::Start(s.dir, {.source = s.server->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  if (open_after_pull) {
    RunResult wait = (*mount)->Ctl({"wait", "--timeout", "120"}, absl::Seconds(150));
    ASSERT_EQ(wait.exit_code, 0) << wait.err;
  }
  const std::string file = (*mount)->File("mem0");
  const std::string expected_path = s.dir.Sub("expected");
  const uint64_t pages = size / kPage;

  StepPipe steps;
  auto child = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Report("open");
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return Report("mmap");
    uint8_t* map = static_cast<uint8_t*>(m);
    std::vector<uint8_t> expected = s.image;
    std::atomic<bool> stop{false};
    constexpr int kWriters = 3;
    std::vector<std::thread> writers;
    for (int t = 0; t < kWriters; ++t) {
      // Writer t owns the pages p with p % kWriters == t and writes each
      // once, in random order: a write the push overwrote stays lost.
      writers.emplace_back([&, t] {
        std::vector<uint64_t> owned;
        for (uint64_t p = t; p < pages; p += kWriters) owned.push_back(p);
        std::mt19937_64 rng(t + 1);
        std::shuffle(owned.begin(), owned.end(), rng);
        for (uint64_t page : owned) {
          if (stop.load(std::memory_order_relaxed)) break;
          const uint64_t off = page * kPage + (rng() % (kPage / 64)) * 64;
          uint8_t bytes[64];
          for (int i = 0; i < 64; ++i) bytes[i] = static_cast<uint8_t>(page * 31 + i + t + 1);
          std::memcpy(map + off, bytes, sizeof bytes);
          std::memcpy(expected.data() + off, bytes, sizeof bytes);
        }
      });
    }
    char c;
    if (!steps.SendUp('w') || !steps.ReceiveDown(&c)) return 2;  // until pulled and pushed
    stop = true;
    for (std::thread& w : writers) w.join();
    if (int64_t d = FirstDifference(map, expected.data(), size); d >= 0) {
      std::fprintf(stderr, "a write was lost: mapped page %lld\n", static_cast<long long>(d));
      return 3;
    }
    if (msync(map, size, MS_SYNC) != 0) return Report("msync");
    munmap(map, size);
    close(fd);
    FILE* out = std::fopen(expected_path.c_str(), "wb");
    if (out == nullptr || std::fwrite(expected.data(), 1, size, out) != size) return 4;
    std::fclose(out);
    return 0;
  });
  char c;
  ASSERT_TRUE(steps.ReceiveUp(&c)) << "the writers did not start";
  absl::StatusOr<json> status = WaitPulledAndPushed(**mount);
  // Let the writers run a little past the pull too.
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_TRUE(steps.SendDown('s'));
  EXPECT_EQ(child->Wait(absl::Seconds(120)), 0) << (*mount)->log();
  ASSERT_TRUE(status.ok()) << status.status() << (*mount)->log();
  std::printf("pages pushed %llu\n",
              static_cast<unsigned long long>(status->at("push").at("pages_pushed")));

  ASSERT_TRUE(DropCaches());
  std::vector<uint8_t> expected(size);
  FILE* in = std::fopen(expected_path.c_str(), "rb");
  ASSERT_NE(in, nullptr);
  ASSERT_EQ(std::fread(expected.data(), 1, size, in), size);
  std::fclose(in);
  EXPECT_EQ(RunInChild([&] { return CompareByPread(file, expected); }), 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

TEST(PagePush, WritesDuringThePullAreKept) { WritersRaceThePushes(64 * kMiB, false); }

TEST(PagePush, WritesAfterThePushesAreKept) { WritersRaceThePushes(64 * kMiB, true); }

TEST(PagePush, PushOffPushesNothing) {
  Served s;
  const uint64_t size = 8 * kMiB;
  ASSERT_NO_FATAL_FAILURE(Serve(&s, size));
  auto mount = MountProcess::Start(
      s.dir, {.source = s.server->url(), .prefetch = true, .extra_args = {"--push", "off"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");
  RunResult wait = (*mount)->Ctl({"wait", "--timeout", "60"}, absl::Seconds(90));
  ASSERT_EQ(wait.exit_code, 0) << wait.err;
  absl::StatusOr<json> status = (*mount)->Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->at("push"), (json{{"enabled", false}})) << status->dump();
  EXPECT_EQ(RunInChild([&] { return CompareByPread(file, s.image); }), 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
