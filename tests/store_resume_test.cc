// A --store DIR outlives its daemon (docs/store.md): after a SIGKILL a new
// mount of the same store resumes — pages already fetched are not fetched
// again, writes that reached the daemon are kept, everything else is
// fetched again — SIGTERM and `lazyramctl unmount` leave it clean, and a
// store that belongs to another source, or that was left unclean by another
// boot, is refused with one line.
//
// Everything that touches the mount runs in a forked child (RunInChild),
// which returns an exit code and prints what went wrong.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kImageSize = 24 * kMiB;

uint64_t Field(const json& region, const char* key) { return region.at(key).get<uint64_t>(); }

// --- Child side: plain code that reports a failure on stderr. ---

int Fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

// 0 if `path`'s bytes [offset, offset + want.size()) equal `want`.
int CompareRange(const std::string& path, uint64_t offset, const uint8_t* want, uint64_t n) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return Fail("open");
  std::vector<uint8_t> got(n);
  uint64_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, got.data() + done, n - done, static_cast<off_t>(offset + done));
    if (r <= 0) {
      close(fd);
      return Fail("pread");
    }
    done += static_cast<uint64_t>(r);
  }
  close(fd);
  if (std::memcmp(got.data(), want, n) == 0) return 0;
  uint64_t i = 0;
  while (got[i] == want[i]) ++i;
  std::fprintf(stderr, "first difference at byte %llu: got 0x%02x, want 0x%02x\n",
               static_cast<unsigned long long>(offset + i), got[i], want[i]);
  return 1;
}

int CompareAll(const std::string& path, const std::vector<uint8_t>& want) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Fail("stat");
  if (static_cast<uint64_t>(st.st_size) != want.size()) {
    std::fprintf(stderr, "size %lld, want %zu\n", static_cast<long long>(st.st_size), want.size());
    return 1;
  }
  return CompareRange(path, 0, want.data(), want.size());
}

// A write of `bytes` at `offset`, through the shared mapping or pwrite.
struct Patch {
  uint64_t offset;
  std::vector<uint8_t> bytes;
  bool via_mmap;
};

Patch MakePatch(uint64_t offset, uint64_t length, uint8_t seed, bool via_mmap) {
  Patch p{offset, std::vector<uint8_t>(length), via_mmap};
  for (uint64_t i = 0; i < length; ++i) p.bytes[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 9));
  p.bytes[0] |= 1;  // never all zero
  return p;
}

std::vector<uint8_t> Apply(std::vector<uint8_t> content, const std::vector<Patch>& patches) {
  for (const Patch& p : patches) {
    if (content.size() < p.offset + p.bytes.size()) content.resize(p.offset + p.bytes.size());
    std::copy(p.bytes.begin(), p.bytes.end(), content.begin() + static_cast<ptrdiff_t>(p.offset));
  }
  return content;
}

// Child: applies `patches` to `path` (of `size` bytes), then makes them
// reach the daemon (fsync, msync) unless `sync` is false: then the mapped
// ones stay dirty in the page cache when the child exits.
int WritePatches(const std::string& path, uint64_t size, const std::vector<Patch>& patches,
                 bool sync = true) {
  int fd = open(path.c_str(), O_RDWR);
  if (fd < 0) return Fail("open");
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return Fail("mmap");
  auto* map = static_cast<uint8_t*>(m);
  for (const Patch& p : patches) {
    if (p.via_mmap) {
      std::memcpy(map + p.offset, p.bytes.data(), p.bytes.size());
    } else if (pwrite(fd, p.bytes.data(), p.bytes.size(), static_cast<off_t>(p.offset)) !=
               static_cast<ssize_t>(p.bytes.size())) {
      return Fail("pwrite");
    }
  }
  if (sync) {
    if (msync(map, size, MS_SYNC) != 0) return Fail("msync");
    if (fsync(fd) != 0) return Fail("fsync");
  }
  munmap(map, size);
  close(fd);
  return 0;
}

// --- Test side ---

class StoreResume : public ::testing::Test {
 protected:
  void SetUp() override {
    image_path_ = dir_.Sub("image");
    image_ = WriteImage(image_path_, kImageSize, /*seed=*/42, /*zero_every=*/4);
    absl::StatusOr<std::unique_ptr<PageServerProcess>> server =
        PageServerProcess::Start({"mem0=" + image_path_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    store_ = dir_.Sub("store");
    std::filesystem::create_directories(store_);
  }

  // Without checkpoints unless asked: a store is then marked clean only
  // by a clean shutdown, whatever the timing.
  std::unique_ptr<MountProcess> Mount(bool prefetch = false, bool with_source = true,
                                      std::string checkpoint_interval = "0") {
    MountProcess::Options o;
    if (with_source) o.source = server_->url();
    o.store = store_;
    o.prefetch = prefetch;
    o.extra_args = {"--checkpoint-interval", checkpoint_interval};
    absl::StatusOr<std::unique_ptr<MountProcess>> m = MountProcess::Start(dir_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }

  // SIGKILL of the daemon by pid; the dead mount is detached and aborted.
  static void Kill(std::unique_ptr<MountProcess>& m) {
    ASSERT_NE(m, nullptr);
    const std::string mountpoint = m->mountpoint();
    ASSERT_EQ(kill(m->pid(), SIGKILL), 0);
    // Detach and abort the dead mount, as a user cleaning up would.
    ForceUnmount(mountpoint);
    EXPECT_EQ(m->Wait(absl::Seconds(30)), -1);  // died of the signal
    EXPECT_FALSE(IsMounted(mountpoint));
    m.reset();
  }

  json Region(const MountProcess& m) {
    absl::StatusOr<json> r = m.RegionStatus("mem0");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : json::object();
  }

  // The clean byte of a state file's header (docs/store.md).
  int CleanFlag(const std::string& region) const {
    int fd = open((store_ + "/.lazyram-state/" + region + ".state").c_str(), O_RDONLY);
    if (fd < 0) return -1;
    uint8_t b = 0xff;
    ssize_t n = pread(fd, &b, 1, 45);
    close(fd);
    return n == 1 ? b : -1;
  }

  // `lazyramd mount` in the background on this store; it must fail with
  // exactly one line on stderr, which is returned.
  std::string MountMustFail(const std::vector<std::string>& source_args) {
    const std::string mnt = dir_.Sub("refused");
    std::filesystem::create_directories(mnt);
    std::vector<std::string> argv = {LazyramdPath(),
                                     "mount",
                                     mnt,
                                     "--store",
                                     store_,
                                     "--control",
                                     dir_.Sub("refused.sock"),
                                     "--log",
                                     dir_.Sub("refused.log")};
    argv.insert(argv.end(), source_args.begin(), source_args.end());
    RunResult r = testing::Run(argv);
    EXPECT_NE(r.exit_code, 0) << r.err;
    EXPECT_FALSE(IsMounted(mnt));
    ForceUnmount(mnt);  // in case it mounted after all
    std::vector<std::string> lines = absl::StrSplit(r.err, '\n', absl::SkipEmpty());
    EXPECT_EQ(lines.size(), 1u) << r.err;
    return r.err;
  }

  TempDir dir_;
  std::string image_path_, store_;
  std::vector<uint8_t> image_;
  std::unique_ptr<PageServerProcess> server_;
};

TEST_F(StoreResume, PrefetchedPagesAreNotFetchedAgainAfterSigkill) {
  constexpr uint64_t kOff = 2 * kMiB, kLen = 6 * kMiB;
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  RunResult r = a->Ctl({"prefetch", "mem0", std::to_string(kOff), std::to_string(kLen)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const uint64_t fetched = Field(Region(*a), "bytes_fetched");
  EXPECT_GT(fetched, 0u);
  Kill(a);

  auto b = Mount();
  ASSERT_NE(b, nullptr);
  json s = Region(*b);
  EXPECT_GE(Field(s, "pages_restored"), kLen / kPage);
  EXPECT_EQ(Field(s, "bytes_fetched"), 0u);
  const std::string file = b->File("mem0");
  // Short of the end by more than the kernel's readahead, which would
  // fetch what follows.
  ASSERT_EQ(RunInChild([&] { return CompareRange(file, kOff, image_.data() + kOff, kLen - kMiB); }),
            0);
  s = Region(*b);
  EXPECT_EQ(Field(s, "bytes_fetched"), 0u) << "prefetched pages were fetched again";
  EXPECT_EQ(Field(s, "demand_fetches"), 0u);
  // The rest comes from the source, and every byte verifies.
  ASSERT_EQ(RunInChild([&] { return CompareAll(file, image_); }), 0);
  s = Region(*b);
  EXPECT_GT(Field(s, "bytes_fetched"), 0u);
  EXPECT_LE(Field(s, "bytes_fetched"), kImageSize - kLen);
  EXPECT_EQ(b->Unmount(), 0) << b->log();
}

TEST_F(StoreResume, WritesThatReachedTheDaemonSurviveSigkill) {
  const std::vector<Patch> patches = {
      MakePatch(100 * kPage + 123, 3 * kPage, 1, /*via_mmap=*/false),  // partial, absent pages
      MakePatch(1100 * kPage, 2 * kPage, 2, /*via_mmap=*/true),        // whole pages (a zero MiB)
      MakePatch(3000 * kPage + 4000, 200, 3, /*via_mmap=*/true),       // crosses a page
      MakePatch(kImageSize - 100, 100, 4, /*via_mmap=*/false),         // the last page
  };
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  const std::string file_a = a->File("mem0");
  ASSERT_EQ(RunInChild([&] { return WritePatches(file_a, kImageSize, patches); }), 0);
  EXPECT_GE(Field(Region(*a), "pages_dirty"), 6u);
  Kill(a);

  auto b = Mount();
  ASSERT_NE(b, nullptr);
  EXPECT_GE(Field(Region(*b), "pages_dirty"), 6u);
  const std::vector<uint8_t> want = Apply(image_, patches);
  const std::string file_b = b->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file_b, want); }), 0);
  // Kill again after everything is local: nothing is lost either.
  Kill(b);
  auto c = Mount();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(Field(Region(*c), "pages_restored"), kImageSize / kPage);
  const std::string file_c = c->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file_c, want); }), 0);
  EXPECT_EQ(Field(Region(*c), "bytes_fetched"), 0u);
  EXPECT_EQ(c->Unmount(), 0) << c->log();
}

// SIGTERM: the kernel writes the dirty mapped pages back during the
// unmount, then the store is synced and marked clean, then exit 0.
TEST_F(StoreResume, SigtermWritesBackAndLeavesTheStoreClean) {
  constexpr uint64_t kLen = 4 * kMiB;
  const std::vector<Patch> patches = {
      MakePatch(10 * kPage, 5 * kPage, 7, /*via_mmap=*/true),
      MakePatch(2000 * kPage + 10, 3000, 8, /*via_mmap=*/true),
  };
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->Ctl({"prefetch", "mem0", "0", std::to_string(kLen)}).exit_code, 0);
  EXPECT_EQ(CleanFlag("mem0"), 0);  // in use
  const std::string file_a = a->File("mem0");
  // No msync: the pages stay dirty in the page cache until the unmount.
  ASSERT_EQ(RunInChild([&] { return WritePatches(file_a, kImageSize, patches, false); }), 0);
  ASSERT_EQ(kill(a->pid(), SIGTERM), 0);
  EXPECT_EQ(a->Wait(absl::Seconds(60)), 0) << a->log();
  EXPECT_TRUE(absl::StrContains(a->log(), "marked clean")) << a->log();
  EXPECT_EQ(CleanFlag("mem0"), 1);
  a.reset();

  auto b = Mount();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(CleanFlag("mem0"), 0);  // in use again
  const std::vector<uint8_t> want = Apply(image_, patches);
  const std::string file_b = b->File("mem0");
  // Local before: read without a single fetch.
  ASSERT_EQ(RunInChild([&] { return CompareRange(file_b, 0, want.data(), kLen); }), 0);
  EXPECT_EQ(Field(Region(*b), "bytes_fetched"), 0u);
  ASSERT_EQ(RunInChild([&] { return CompareAll(file_b, want); }), 0);
  EXPECT_EQ(b->Unmount(), 0) << b->log();
  EXPECT_EQ(CleanFlag("mem0"), 1);
}

// SIGTERM while a consumer still has the file mapped with dirty pages: the
// daemon detaches the mount and serves until the consumer is gone; the
// kernel writes the pages back when the last user leaves, and only then is
// the store marked clean.
TEST_F(StoreResume, SigtermWhileMappedWritesBackWhenTheLastUserLeaves) {
  const std::vector<Patch> patches = {
      MakePatch(40 * kPage, 8 * kPage, 31, /*via_mmap=*/true),
      MakePatch(4000 * kPage + 99, 500, 32, /*via_mmap=*/true),
  };
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  const std::string file = a->File("mem0");
  StepPipe step;
  auto consumer = ChildProcess::Start([&]() -> int {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    void* m = mmap(nullptr, kImageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return Fail("mmap");
    close(fd);
    for (const Patch& p : patches) {
      std::memcpy(static_cast<uint8_t*>(m) + p.offset, p.bytes.data(), p.bytes.size());
    }
    step.SendUp('w');
    char c;
    if (!step.ReceiveDown(&c)) return 2;
    return 0;  // exits with the pages still dirty and mapped: no msync
  });
  char c;
  ASSERT_TRUE(step.ReceiveUp(&c));
  ASSERT_EQ(kill(a->pid(), SIGTERM), 0);
  // Detached, not gone: it serves its last user.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(CleanFlag("mem0"), 0);
  ASSERT_TRUE(step.SendDown('x'));
  EXPECT_EQ(consumer->Wait(), 0);
  EXPECT_EQ(a->Wait(absl::Seconds(60)), 0) << a->log();
  EXPECT_EQ(CleanFlag("mem0"), 1);
  a.reset();

  auto b = Mount();
  ASSERT_NE(b, nullptr);
  EXPECT_GE(Field(Region(*b), "pages_dirty"), 9u);
  const std::vector<uint8_t> want = Apply(image_, patches);
  const std::string file_b = b->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file_b, want); }), 0);
  EXPECT_EQ(b->Unmount(), 0) << b->log();
}

// Kill and remount several times during a background pull of a larger
// image (with a write in between): each restart keeps what the previous
// one had made local, and the final content verifies.
TEST_F(StoreResume, KillRemountLoopDuringPull) {
  constexpr uint64_t kBig = 160 * kMiB;
  const std::string big_path = dir_.Sub("big");
  const std::vector<uint8_t> big = WriteImage(big_path, kBig, /*seed=*/5, /*zero_every=*/8);
  auto server = PageServerProcess::Start({"mem0=" + big_path});
  ASSERT_TRUE(server.ok()) << server.status();
  const Patch patch = MakePatch(30000 * kPage + 17, 2 * kPage, 9, /*via_mmap=*/false);
  auto mount = [&] {
    MountProcess::Options o;
    o.source = (*server)->url();
    o.store = store_;
    o.prefetch = true;
    // With the page pusher (the default) warming the page cache through the
    // mount while the daemon is killed: its helper process must not keep
    // the dead daemon from exiting (fusefs/warm_helper.h).
    absl::StatusOr<std::unique_ptr<MountProcess>> m = MountProcess::Start(dir_, o);
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  };
  auto local = [&](const MountProcess& m) {
    json r = Region(m);
    return Field(r, "pages_present") + Field(r, "pages_zero");
  };
  uint64_t local_before = 0;
  int killed_mid_pull = 0;
  for (int round = 0; round < 5; ++round) {
    auto m = mount();
    ASSERT_NE(m, nullptr);
    const uint64_t restored = Field(Region(*m), "pages_restored");
    EXPECT_GE(restored, local_before) << "round " << round;
    if (round == 1) {
      const std::string file = m->File("mem0");
      ASSERT_EQ(RunInChild([&] { return WritePatches(file, kBig, {patch}); }), 0);
    }
    // Let the pull bring in a few more MiB, then cut it short.
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (local(*m) < restored + 1024 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(2));
    }
    local_before = local(*m);
    if (local_before < kBig / kPage) ++killed_mid_pull;
    Kill(m);
  }
  EXPECT_GE(killed_mid_pull, 1);
  std::printf("killed %d times during the pull\n", killed_mid_pull);
  auto m = mount();
  ASSERT_NE(m, nullptr);
  EXPECT_GE(Field(Region(*m), "pages_restored"), local_before);
  ASSERT_EQ(m->Ctl({"wait", "--timeout", "120"}).exit_code, 0);
  const std::vector<uint8_t> want = Apply(big, {patch});
  const std::string file = m->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file, want); }), 0);
  EXPECT_EQ(m->Unmount(), 0) << m->log();
}

// A 1 TiB sparse region: its state file stays sparse, and a mount that
// resumes it after a SIGKILL is ready about as fast as a fresh one.
TEST_F(StoreResume, HugeSparseRegionResumesQuickly) {
  constexpr uint64_t kHuge = uint64_t{1} << 40, kDataAt = uint64_t{300} << 30;
  const std::string huge_path = dir_.Sub("huge");
  std::vector<uint8_t> data(4 * kMiB);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + (i >> 12) + 1);
  {
    int fd = open(huge_path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(kHuge)), 0);
    ASSERT_EQ(pwrite(fd, data.data(), data.size(), static_cast<off_t>(kDataAt)),
              static_cast<ssize_t>(data.size()));
    close(fd);
  }
  auto server = PageServerProcess::Start({"huge=" + huge_path});
  ASSERT_TRUE(server.ok()) << server.status();
  MountProcess::Options o;
  o.source = (*server)->url();
  o.store = store_;
  absl::Time start = absl::Now();
  absl::StatusOr<std::unique_ptr<MountProcess>> a = MountProcess::Start(dir_, o);
  ASSERT_TRUE(a.ok()) << a.status();
  const absl::Duration fresh = absl::Now() - start;
  RunResult r = (*a)->Ctl({"prefetch", "huge", std::to_string(kDataAt), std::to_string(kMiB)});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  Kill(*a);

  start = absl::Now();
  absl::StatusOr<std::unique_ptr<MountProcess>> b = MountProcess::Start(dir_, o);
  ASSERT_TRUE(b.ok()) << b.status();
  const absl::Duration resumed = absl::Now() - start;
  std::printf("1 TiB region ready: fresh %s, resumed %s\n", absl::FormatDuration(fresh).c_str(),
              absl::FormatDuration(resumed).c_str());
  EXPECT_LT(resumed, absl::Seconds(5));  // about 20 ms on an idle machine
  absl::StatusOr<json> s = (*b)->RegionStatus("huge");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Field(*s, "pages_present"), kMiB / kPage);
  EXPECT_EQ(Field(*s, "bytes_fetched"), 0u);
  const std::string file = (*b)->File("huge");
  ASSERT_EQ(RunInChild([&] { return CompareRange(file, kDataAt, data.data(), kMiB / 2); }), 0);
  ASSERT_EQ(RunInChild([&] {
              return CompareRange(file, kDataAt + kMiB, data.data() + kMiB, data.size() - kMiB);
            }),
            0);
  s = (*b)->RegionStatus("huge");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_LE(Field(*s, "bytes_fetched"), data.size() - kMiB);
  struct stat st;
  ASSERT_EQ(stat((store_ + "/.lazyram-state/huge.state").c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 4 * kMiB);
  EXPECT_EQ((*b)->Unmount(), 0);
}

TEST_F(StoreResume, StoreOfAnotherSourceIsRefused) {
  {
    auto a = Mount();
    ASSERT_NE(a, nullptr);
    ASSERT_EQ(a->Ctl({"prefetch", "mem0", "0", "65536"}).exit_code, 0);
    ASSERT_EQ(a->Unmount(), 0);
  }
  // A different size.
  const std::string other = dir_.Sub("other");
  WriteImage(other, kImageSize / 2, /*seed=*/7);
  auto smaller = PageServerProcess::Start({"mem0=" + other});
  ASSERT_TRUE(smaller.ok()) << smaller.status();
  EXPECT_TRUE(absl::StrContains(MountMustFail({"--source", (*smaller)->url()}),
                                "belongs to another source"));
  // Another region name.
  auto renamed = PageServerProcess::Start({"pc.ram=" + image_path_});
  ASSERT_TRUE(renamed.ok()) << renamed.status();
  EXPECT_TRUE(absl::StrContains(MountMustFail({"--source", (*renamed)->url()}),
                                "which this source does not have"));
  // Two regions: one more than the store knows of.
  auto two = PageServerProcess::Start({"mem0=" + image_path_, "mem1=" + other});
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_TRUE(
      absl::StrContains(MountMustFail({"--source", (*two)->url()}), "belongs to another source"));
  // No source at all.
  EXPECT_TRUE(absl::StrContains(MountMustFail({}), "was filled from a page source"));
  // The store itself is untouched: the right source still resumes it.
  auto b = Mount();
  ASSERT_NE(b, nullptr);
  EXPECT_GE(Field(Region(*b), "pages_restored"), 16u);
  const std::string file = b->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file, image_); }), 0);
  EXPECT_EQ(b->Unmount(), 0);
}

TEST_F(StoreResume, StoreInUseIsRefused) {
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(absl::StrContains(MountMustFail({"--source", server_->url()}),
                                "is in use by another lazyramd (pid " + std::to_string(a->pid())));
  EXPECT_EQ(a->Unmount(), 0);
}

// A store left unclean by another boot (a power loss) may hold page states
// whose bytes never reached the disk: refused, saying what to do. One shut
// down cleanly before the reboot is trusted.
TEST_F(StoreResume, StoreOfAnotherBootIsTrustedOnlyIfClean) {
  auto set_boot = [&](const char* boot) {
    int fd = open((store_ + "/.lazyram-state/mem0.state").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, boot, std::strlen(boot) + 1, 48),
              static_cast<ssize_t>(std::strlen(boot) + 1));
    close(fd);
  };
  const char kOtherBoot[] = "00000000-0000-0000-0000-000000000000";
  auto a = Mount();
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->Ctl({"prefetch", "mem0", "0", "65536"}).exit_code, 0);
  ASSERT_EQ(a->Unmount(), 0);
  set_boot(kOtherBoot);
  auto b = Mount();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Field(Region(*b), "pages_restored"), 16u);
  Kill(b);
  set_boot(kOtherBoot);
  const std::string err = MountMustFail({"--source", server_->url()});
  EXPECT_TRUE(absl::StrContains(err, "not shut down cleanly before the machine restarted")) << err;
  EXPECT_TRUE(absl::StrContains(err, "empty the directory")) << err;
}

// A checkpoint during which no page became local marks the store clean
// while it runs, so a power loss then (here: a SIGKILL and another boot id)
// leaves it trusted, with what was written before that checkpoint.
TEST_F(StoreResume, IdleCheckpointMakesTheStoreTrustedAfterAPowerLoss) {
  auto a = Mount(false, true, /*checkpoint_interval=*/"0.2");
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->Ctl({"prefetch", "mem0", "0", std::to_string(2 * kMiB)}).exit_code, 0);
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (CleanFlag("mem0") != 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(CleanFlag("mem0"), 1) << "no idle checkpoint marked the store clean";
  const Patch patch = MakePatch(3 * kMiB + 5, 100, 41, /*via_mmap=*/false);
  const std::string file = a->File("mem0");
  ASSERT_EQ(RunInChild([&] { return WritePatches(file, kImageSize, {patch}); }), 0);
  // (That the write marked it in use first, before the next checkpoint
  // marked it clean again, is checked without timing in region_test.)
  while (CleanFlag("mem0") != 1 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(CleanFlag("mem0"), 1);
  Kill(a);
  const char other_boot[] = "00000000-0000-0000-0000-000000000000";
  int fd = open((store_ + "/.lazyram-state/mem0.state").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, other_boot, sizeof other_boot, 48), static_cast<ssize_t>(sizeof other_boot));
  close(fd);
  auto b = Mount();
  ASSERT_NE(b, nullptr) << "an idle, checkpointed store was refused";
  EXPECT_GE(Field(Region(*b), "pages_restored"), 2 * kMiB / kPage);
  const std::string file_b = b->File("mem0");
  ASSERT_EQ(RunInChild([&] { return CompareAll(file_b, Apply(image_, {patch})); }), 0);
  EXPECT_EQ(b->Unmount(), 0);
}

// Without a source: the files, their sizes and their bytes come back after
// an unmount and after a SIGKILL.
TEST_F(StoreResume, FilesOfAMountWithoutSourceComeBack) {
  constexpr uint64_t kSize = 3 * kMiB + 100;
  const std::vector<Patch> first = {
      MakePatch(0, 10000, 21, /*via_mmap=*/false),
      MakePatch(kMiB + 5, 2 * kPage, 22, /*via_mmap=*/true),
      MakePatch(kSize - 50, 50, 23, /*via_mmap=*/true),
  };
  std::vector<uint8_t> want_ram(kSize, 0), want_small;
  want_ram = Apply(want_ram, first);
  {
    auto a = Mount(false, /*with_source=*/false);
    ASSERT_NE(a, nullptr);
    const std::string ram = a->File("ram"), small = a->File("small");
    ASSERT_EQ(RunInChild([&] {
                int fd = open(ram.c_str(), O_RDWR | O_CREAT, 0600);
                if (fd < 0 || ftruncate(fd, kSize) != 0) return Fail("create ram");
                close(fd);
                fd = open(small.c_str(), O_RDWR | O_CREAT, 0600);
                if (fd < 0 || write(fd, "hello", 5) != 5 || fsync(fd) != 0) {
                  return Fail("create small");
                }
                close(fd);
                return WritePatches(ram, kSize, first);
              }),
              0);
    ASSERT_EQ(a->Unmount(), 0) << a->log();
  }
  want_small = {'h', 'e', 'l', 'l', 'o'};
  const Patch second = MakePatch(2 * kMiB, 3 * kPage, 24, /*via_mmap=*/true);
  {
    auto b = Mount(false, /*with_source=*/false);
    ASSERT_NE(b, nullptr);
    const std::string ram = b->File("ram"), small = b->File("small");
    ASSERT_EQ(RunInChild([&] { return CompareAll(ram, want_ram); }), 0);
    ASSERT_EQ(RunInChild([&] { return CompareAll(small, want_small); }), 0);
    ASSERT_EQ(RunInChild([&] { return WritePatches(ram, kSize, {second}); }), 0);
    Kill(b);
  }
  want_ram = Apply(want_ram, {second});
  auto c = Mount(false, /*with_source=*/false);
  ASSERT_NE(c, nullptr);
  const std::string ram = c->File("ram"), small = c->File("small");
  ASSERT_EQ(RunInChild([&] { return CompareAll(ram, want_ram); }), 0);
  ASSERT_EQ(RunInChild([&] { return CompareAll(small, want_small); }), 0);
  // Such a store refuses a source.
  c.reset();
  EXPECT_TRUE(absl::StrContains(MountMustFail({"--source", server_->url()}),
                                "holds the files of a mount without a source"));
}

}  // namespace
}  // namespace lazyram::testing
