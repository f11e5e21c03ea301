// What a consumer of the mounted files sees: every byte equals the source
// unless the consumer wrote it; pages arrive only when read; zero pages
// never cross the wire; writes survive drop_caches, later fetches and the
// background pull; punched ranges read as zero and are never fetched; and
// without a source the mount is a plain RAM-backing filesystem.
//
// Everything that touches the mount runs in a forked child (RunInChild or
// ChildProcess), which returns an exit code and prints what went wrong.
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;
// The readahead the daemon may add to a READ (issue: at most 256 KiB).
constexpr uint64_t kMaxReadahead = 256 * 1024;

uint64_t Field(const json& region, const char* key) { return region.at(key).get<uint64_t>(); }

// Polls the status until `pred` holds for it; false after `timeout`.
bool PollStatus(const MountProcess& mount, const std::function<bool(const json&)>& pred,
                absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::StatusOr<json> status = mount.Status();
    if (status.ok() && pred(*status)) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// Whole pages of `image` that are all zero.
uint64_t CountZeroPages(const std::vector<uint8_t>& image) {
  uint64_t zero = 0;
  for (uint64_t off = 0; off < image.size(); off += kPage) {
    const uint64_t n = std::min<uint64_t>(kPage, image.size() - off);
    const uint8_t* p = image.data() + off;
    if (std::all_of(p, p + n, [](uint8_t b) { return b == 0; })) ++zero;
  }
  return zero;
}

// --- Child side: plain code that reports a failure on stderr. ---

// 0 if got[0, n) equals want[0, n); otherwise prints the first difference.
int Same(const uint8_t* got, const uint8_t* want, uint64_t n, uint64_t base, const char* what) {
  if (std::memcmp(got, want, n) == 0) return 0;
  uint64_t i = 0;
  while (got[i] == want[i]) ++i;
  std::fprintf(stderr, "%s: first difference at byte %llu (page %llu): got 0x%02x, want 0x%02x\n",
               what, static_cast<unsigned long long>(base + i),
               static_cast<unsigned long long>((base + i) / kPage), got[i], want[i]);
  return 1;
}

int Fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

// Maps all of `path` MAP_SHARED (read-write if `writable`); null on failure.
uint8_t* MapFile(const std::string& path, uint64_t size, bool writable, int* fd_out = nullptr) {
  int fd = open(path.c_str(), writable ? O_RDWR : O_RDONLY);
  if (fd < 0) {
    Fail("open");
    return nullptr;
  }
  void* p = mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    Fail("mmap");
    close(fd);
    return nullptr;
  }
  if (fd_out != nullptr) {
    *fd_out = fd;
  } else {
    close(fd);  // the mapping keeps the file open
  }
  return static_cast<uint8_t*>(p);
}

// Checks `path` against `want` through a fresh shared mapping: the exact
// size, every byte, and nothing past the end.
int CompareFile(const std::string& path, const std::vector<uint8_t>& want) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return Fail("open");
  struct stat st;
  if (fstat(fd, &st) != 0) return Fail("fstat");
  if (static_cast<uint64_t>(st.st_size) != want.size()) {
    std::fprintf(stderr, "size %lld, want %zu\n", static_cast<long long>(st.st_size), want.size());
    return 1;
  }
  void* p = mmap(nullptr, want.size(), PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Fail("mmap");
  int rc = Same(static_cast<const uint8_t*>(p), want.data(), want.size(), 0, "mapped content");
  munmap(p, want.size());
  // read() stops exactly at the end of the file.
  char tail[2 * kPage];
  const uint64_t from = want.size() - std::min<uint64_t>(want.size(), 10);
  ssize_t n = pread(fd, tail, sizeof tail, static_cast<off_t>(from));
  if (n != static_cast<ssize_t>(want.size() - from)) {
    std::fprintf(stderr, "pread at %llu returned %zd, want %llu\n",
                 static_cast<unsigned long long>(from), n,
                 static_cast<unsigned long long>(want.size() - from));
    rc = 1;
  }
  close(fd);
  return rc;
}

// One write a child makes: `bytes` at `offset`, through the shared mapping
// or through pwrite().
struct Patch {
  uint64_t offset;
  std::vector<uint8_t> bytes;
  bool via_mmap;
};

Patch MakePatch(uint64_t offset, uint64_t length, uint8_t seed, bool via_mmap) {
  Patch p{offset, std::vector<uint8_t>(length), via_mmap};
  for (uint64_t i = 0; i < length; ++i) p.bytes[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
  // Never all zero, so it cannot pass for a zero page.
  p.bytes[0] |= 1;
  return p;
}

std::vector<uint8_t> Apply(std::vector<uint8_t> content, const std::vector<Patch>& patches) {
  for (const Patch& p : patches) {
    std::copy(p.bytes.begin(), p.bytes.end(), content.begin() + static_cast<ptrdiff_t>(p.offset));
  }
  return content;
}

// Child: applies `patches` to `path` in order, then msyncs.
int WritePatches(const std::string& path, uint64_t size, const std::vector<Patch>& patches) {
  int fd = -1;
  uint8_t* map = MapFile(path, size, /*writable=*/true, &fd);
  if (map == nullptr) return 1;
  for (const Patch& p : patches) {
    if (p.via_mmap) {
      std::memcpy(map + p.offset, p.bytes.data(), p.bytes.size());
    } else if (pwrite(fd, p.bytes.data(), p.bytes.size(), static_cast<off_t>(p.offset)) !=
               static_cast<ssize_t>(p.bytes.size())) {
      return Fail("pwrite");
    }
  }
  if (msync(map, size, MS_SYNC) != 0) return Fail("msync");
  munmap(map, size);
  close(fd);
  return 0;
}

// Distinct pages the patches touch.
uint64_t PagesTouched(const std::vector<Patch>& patches) {
  std::set<uint64_t> pages;
  for (const Patch& p : patches) {
    for (uint64_t q = p.offset / kPage; q <= (p.offset + p.bytes.size() - 1) / kPage; ++q) {
      pages.insert(q);
    }
  }
  return pages.size();
}

// Writes of every kind into a 16 MiB image whose MiB 0, 4, 8 and 12 are
// zero: whole and partial pages, through the mapping and through pwrite,
// on absent, zero and page-crossing ranges.
std::vector<Patch> WriteMix() {
  return {
      MakePatch(300 * kPage, kPage, 11, /*via_mmap=*/true),         // whole absent page
      MakePatch(301 * kPage + 77, 100, 22, /*via_mmap=*/true),      // part of an absent page
      MakePatch(700 * kPage + 1234, 100, 33, /*via_mmap=*/false),   // partial pwrite
      MakePatch(900 * kPage + 3000, 5000, 44, /*via_mmap=*/false),  // crosses two pages
      MakePatch(1500 * kPage, kPage, 55, /*via_mmap=*/false),       // whole, never fetched
      MakePatch(1034 * kPage, kPage, 66, /*via_mmap=*/true),        // a zero page
      MakePatch(2053 * kPage + 17, 33, 77, /*via_mmap=*/false),     // part of a zero page
      MakePatch(4000 * kPage, 16 * kPage, 88, /*via_mmap=*/false),  // far from the start
      MakePatch(4090 * kPage + 4000, 2000, 99, /*via_mmap=*/true),  // crosses, near the end
  };
}

struct Fixture {
  TempDir dir;
  std::vector<uint8_t> image;
  std::unique_ptr<PageServerProcess> server;
  std::unique_ptr<MountProcess> mount;
};

// Serves an image as mem0 and mounts it.
void ServeAndMount(Fixture* f, uint64_t size, int zero_every, uint64_t hole_bytes,
                   MountProcess::Options options) {
  f->image = WriteImage(f->dir.Sub("img"), size, 7, zero_every, hole_bytes);
  auto server = PageServerProcess::Start({"mem0=" + f->dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  f->server = *std::move(server);
  options.source = f->server->url();
  auto mount = MountProcess::Start(f->dir, options);
  ASSERT_TRUE(mount.ok()) << mount.status();
  f->mount = *std::move(mount);
}

// `wait` returns 0, then the status says complete with the source detached.
void ExpectPulledAndDetached(const MountProcess& mount) {
  RunResult wait = mount.Ctl({"wait", "--timeout", "60"}, absl::Seconds(90));
  EXPECT_EQ(wait.exit_code, 0) << wait.err;
  EXPECT_TRUE(PollStatus(mount,
                         [](const json& s) {
                           return s.at("source") == "detached" &&
                                  s.at("regions").at(0).at("complete") == true;
                         }))
      << mount.Status().value_or(json()).dump() << "\n"
      << mount.log();
}

// --- 1. Content, byte for byte ---

TEST(ReadWrite, ContentMatchesWithPrefetchOffAndAPartialLastPage) {
  Fixture f;
  // Not a multiple of the page size: the last page is partial, and a hole
  // at the end covers it.
  const uint64_t size = 8 * kMiB + 5000;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 3, 64 * 1024 + 100, {.prefetch = false}));
  auto before = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(Field(*before, "size"), size);
  EXPECT_EQ(Field(*before, "pages_total"), (size + kPage - 1) / kPage);

  const std::string file = f.mount->File("mem0");
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }), 0) << f.mount->log();
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->at("complete").get<bool>()) << after->dump();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, ContentMatchesWithPrefetchOnAndStaysAfterDetach) {
  Fixture f;
  const uint64_t size = 16 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 4, kMiB, {.prefetch = true}));
  ExpectPulledAndDetached(*f.mount);
  // The source is not needed any more.
  f.server->Stop();
  ASSERT_TRUE(DropCaches());
  const std::string file = f.mount->File("mem0");
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }), 0) << f.mount->log();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, ContentMatchesWithADiskStore) {
  Fixture f;
  const std::string store = f.dir.Sub("store");
  std::filesystem::create_directories(store);
  const uint64_t size = 12 * kMiB + 3 * 1024;
  ASSERT_NO_FATAL_FAILURE(
      ServeAndMount(&f, size, 2, 256 * 1024, {.store = store, .prefetch = false}));
  const std::string file = f.mount->File("mem0");
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }), 0) << f.mount->log();
  EXPECT_FALSE(std::filesystem::is_empty(store)) << "nothing was stored under " << store;
  auto fetched = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(fetched.ok()) << fetched.status();

  // Pages dropped by the kernel come back from the store, not the source.
  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }), 0) << f.mount->log();
  auto again = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Field(*again, "bytes_fetched"), Field(*fetched, "bytes_fetched"));
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 2. Laziness ---

TEST(ReadWrite, MmapFetchesNothingAndOneRandomTouchFetchesLittle) {
  Fixture f;
  const uint64_t size = 32 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 0, 0, {.prefetch = false}));
  const std::string file = f.mount->File("mem0");
  const uint64_t touched = 5000 * kPage + 123;

  StepPipe steps;
  auto child = ChildProcess::Start([&] {
    uint8_t* map = MapFile(file, size, /*writable=*/true);
    if (map == nullptr) return 1;
    if (madvise(map, size, MADV_RANDOM) != 0) return Fail("madvise");
    char c;
    if (!steps.SendUp('m') || !steps.ReceiveDown(&c)) return 2;
    if (map[touched] != f.image[touched]) return 3;
    return steps.SendUp('t') ? 0 : 4;
  });
  char c;
  ASSERT_TRUE(steps.ReceiveUp(&c)) << "the child did not map the file";
  auto mapped = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(Field(*mapped, "bytes_fetched"), 0u) << mapped->dump();
  EXPECT_EQ(Field(*mapped, "demand_fetches"), 0u) << mapped->dump();

  ASSERT_TRUE(steps.SendDown('g'));
  ASSERT_TRUE(steps.ReceiveUp(&c)) << "the child did not touch the page";
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GT(Field(*after, "bytes_fetched"), 0u);
  EXPECT_LE(Field(*after, "bytes_fetched"), kMaxReadahead + kPage) << after->dump();
  EXPECT_GT(Field(*after, "demand_fetches"), 0u) << after->dump();
  EXPECT_EQ(child->Wait(), 0);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, PreadFetchesAtMostItsLengthPlusReadahead) {
  Fixture f;
  const uint64_t size = 32 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 0, 0, {.prefetch = false}));
  const std::string file = f.mount->File("mem0");
  constexpr uint64_t kLength = 64 * 1024;
  const uint64_t offset = 13 * kMiB + 5 * kPage;
  EXPECT_EQ(RunInChild([&] {
              int fd = open(file.c_str(), O_RDONLY);
              if (fd < 0) return Fail("open");
              std::vector<uint8_t> buf(kLength);
              if (pread(fd, buf.data(), kLength, static_cast<off_t>(offset)) !=
                  static_cast<ssize_t>(kLength)) {
                return Fail("pread");
              }
              return Same(buf.data(), f.image.data() + offset, kLength, offset, "pread");
            }),
            0);
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(Field(*after, "bytes_fetched"), kLength);
  EXPECT_LE(Field(*after, "bytes_fetched"), kLength + kMaxReadahead) << after->dump();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 3. Zero pages ---

void ExpectOnlyDataPagesFetched(const json& region, const std::vector<uint8_t>& image) {
  const uint64_t pages = (image.size() + kPage - 1) / kPage;
  const uint64_t zero = CountZeroPages(image);
  EXPECT_TRUE(region.at("complete").get<bool>()) << region.dump();
  EXPECT_EQ(Field(region, "bytes_fetched"), (pages - zero) * kPage) << region.dump();
  EXPECT_EQ(Field(region, "pages_zero"), zero) << region.dump();
  EXPECT_EQ(Field(region, "pages_present"), pages - zero) << region.dump();
}

TEST(ReadWrite, ZeroPagesAreNeverSentOnDemand) {
  Fixture f;
  // Zero MiBs written as zeros (known from reply flags) plus a hole at the
  // end (known from the handshake).
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 16 * kMiB, 4, kMiB, {.prefetch = false}));
  auto before = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(Field(*before, "bytes_fetched"), 0u);
  const std::string file = f.mount->File("mem0");
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }), 0) << f.mount->log();
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  ExpectOnlyDataPagesFetched(*after, f.image);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, ZeroPagesAreNeverSentByThePuller) {
  Fixture f;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, 16 * kMiB, 3, 2 * kMiB, {.prefetch = true}));
  ExpectPulledAndDetached(*f.mount);
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  ExpectOnlyDataPagesFetched(*after, f.image);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 4. Writes ---

TEST(ReadWrite, WritesSurviveDropCachesAndLaterFetches) {
  Fixture f;
  const uint64_t size = 16 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 4, 0, {.prefetch = false}));
  const std::string file = f.mount->File("mem0");
  const std::vector<Patch> patches = WriteMix();
  const std::vector<uint8_t> expected = Apply(f.image, patches);

  // Page 1500, written whole first, becomes dirty without being fetched.
  const std::vector<Patch> first = {MakePatch(1500 * kPage, kPage, 55, /*via_mmap=*/false)};
  ASSERT_EQ(RunInChild([&] { return WritePatches(file, size, first); }), 0) << f.mount->log();
  auto early = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(early.ok()) << early.status();
  EXPECT_EQ(Field(*early, "bytes_fetched"), 0u) << early->dump();
  EXPECT_EQ(Field(*early, "pages_dirty"), 1u) << early->dump();

  ASSERT_EQ(RunInChild([&] { return WritePatches(file, size, patches); }), 0) << f.mount->log();
  auto written = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_GE(Field(*written, "pages_dirty"), PagesTouched(patches)) << written->dump();
  EXPECT_FALSE(written->at("complete").get<bool>());

  ASSERT_TRUE(DropCaches());
  // Fetch page 1500's neighbours, then everything: it keeps the written
  // bytes.
  RunResult near =
      f.mount->Ctl({"prefetch", "mem0", std::to_string(1490 * kPage), std::to_string(20 * kPage)});
  EXPECT_EQ(near.exit_code, 0) << near.err;
  RunResult all = f.mount->Ctl({"prefetch", "mem0"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  ASSERT_TRUE(DropCaches());

  EXPECT_EQ(RunInChild([&] { return CompareFile(file, expected); }), 0) << f.mount->log();
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->at("complete").get<bool>()) << after->dump();
  EXPECT_GE(Field(*after, "pages_dirty"), PagesTouched(patches)) << after->dump();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, WritesSurviveTheBackgroundPullWithADiskStore) {
  Fixture f;
  const uint64_t size = 16 * kMiB;
  const std::string store = f.dir.Sub("store");
  std::filesystem::create_directories(store);
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 4, 0, {.store = store, .prefetch = true}));
  const std::string file = f.mount->File("mem0");
  const std::vector<Patch> patches = WriteMix();
  const std::vector<uint8_t> expected = Apply(f.image, patches);

  // Written while the puller runs: most of these pages are still absent.
  ASSERT_EQ(RunInChild([&] { return WritePatches(file, size, patches); }), 0) << f.mount->log();
  ExpectPulledAndDetached(*f.mount);
  ASSERT_TRUE(DropCaches());
  f.server->Stop();
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, expected); }), 0) << f.mount->log();
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_GE(Field(*after, "pages_dirty"), PagesTouched(patches)) << after->dump();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 5. Sharing and concurrency ---

TEST(ReadWrite, TwoProcessesSeeEachOthersWrites) {
  Fixture f;
  const uint64_t size = 16 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 4, 0, {.prefetch = false}));
  const std::string file = f.mount->File("mem0");
  // A page the reader has faulted in, one nobody has read, a zero page.
  const std::vector<Patch> patches = {MakePatch(100 * kPage, kPage, 1, true),
                                      MakePatch(3000 * kPage + 512, 1024, 2, true),
                                      MakePatch(1030 * kPage, kPage, 3, true)};
  const std::vector<uint8_t> expected = Apply(f.image, patches);

  StepPipe reader_steps, writer_steps;
  auto reader = ChildProcess::Start([&] {
    volatile uint8_t* map = MapFile(file, size, /*writable=*/true);
    if (map == nullptr) return 1;
    if (map[100 * kPage] != f.image[100 * kPage]) return 2;
    if (!reader_steps.SendUp('r')) return 3;
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    for (const Patch& p : patches) {
      for (;;) {
        bool same = true;
        for (uint64_t i = 0; i < p.bytes.size() && same; ++i) {
          same = map[p.offset + i] == p.bytes[i];
        }
        if (same) break;
        if (absl::Now() > deadline) {
          std::fprintf(stderr, "reader: never saw the write at %llu\n",
                       static_cast<unsigned long long>(p.offset));
          return 4;
        }
        absl::SleepFor(absl::Milliseconds(5));
      }
    }
    return 0;
  });
  char c;
  ASSERT_TRUE(reader_steps.ReceiveUp(&c)) << "the reader did not map the file";
  auto writer = ChildProcess::Start([&] {
    uint8_t* map = MapFile(file, size, /*writable=*/true);
    if (map == nullptr) return 1;
    for (const Patch& p : patches) std::memcpy(map + p.offset, p.bytes.data(), p.bytes.size());
    // Keep the mapping until the reader is done: both are live at once.
    char c;
    if (!writer_steps.ReceiveDown(&c)) return 2;
    if (msync(map, size, MS_SYNC) != 0) return Fail("msync");
    return 0;
  });
  EXPECT_EQ(reader->Wait(), 0) << f.mount->log();
  ASSERT_TRUE(writer_steps.SendDown('q'));
  EXPECT_EQ(writer->Wait(), 0) << f.mount->log();

  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, expected); }), 0) << f.mount->log();
  EXPECT_EQ(f.mount->Unmount(), 0);
}

TEST(ReadWrite, ConcurrentReadersWhileThePullerRuns) {
  Fixture f;
  const uint64_t size = 64 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 5, 2 * kMiB, {.prefetch = true}));
  const std::string file = f.mount->File("mem0");
  const uint64_t pages = size / kPage;

  // Mapped readers, each with a few threads touching random pages.
  auto mapped_reader = [&](uint32_t seed) {
    const uint8_t* map = MapFile(file, size, /*writable=*/false);
    if (map == nullptr) return 1;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (uint32_t t = 0; t < 3; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937 rng(seed * 16 + t);
        for (int i = 0; i < 400; ++i) {
          const uint64_t off = rng() % pages * kPage;
          if (Same(map + off, f.image.data() + off, kPage, off, "mapped reader") != 0) {
            ++failures;
          }
        }
      });
    }
    for (std::thread& t : threads) t.join();
    return failures.load() == 0 ? 0 : 5;
  };
  // pread of random, unaligned ranges.
  auto pread_reader = [&](uint32_t seed) {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return Fail("open");
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> buf(300 * 1024);
    for (int i = 0; i < 300; ++i) {
      const uint64_t len = 1 + rng() % buf.size();
      const uint64_t off = rng() % (size - len);
      if (pread(fd, buf.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len)) {
        return Fail("pread");
      }
      if (Same(buf.data(), f.image.data() + off, len, off, "pread reader") != 0) return 6;
    }
    return 0;
  };
  std::vector<std::unique_ptr<ChildProcess>> children;
  for (uint32_t i = 0; i < 3; ++i) {
    children.push_back(ChildProcess::Start([&, i] { return mapped_reader(i + 1); }));
  }
  children.push_back(ChildProcess::Start([&] { return pread_reader(99); }));
  for (size_t i = 0; i < children.size(); ++i) {
    EXPECT_EQ(children[i]->Wait(absl::Seconds(180)), 0) << "reader " << i << "\n" << f.mount->log();
  }
  ExpectPulledAndDetached(*f.mount);
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, f.image); }, absl::Seconds(120)), 0);
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 6. Punch hole ---

TEST(ReadWrite, PunchedRangesReadZeroAndAreNeverFetched) {
  Fixture f;
  const uint64_t size = 16 * kMiB;
  ASSERT_NO_FATAL_FAILURE(ServeAndMount(&f, size, 0, 0, {.prefetch = false}));
  const std::string file = f.mount->File("mem0");
  struct Range {
    uint64_t offset, length;
  };
  // Page-aligned, and with partial pages at both edges.
  const std::vector<Range> holes = {{4 * kMiB, kMiB}, {8 * kMiB + 1000, 300 * 1024 + 123}};
  std::vector<uint8_t> expected = f.image;
  uint64_t whole_pages = 0;
  for (const Range& r : holes) {
    std::fill_n(expected.begin() + static_cast<ptrdiff_t>(r.offset), r.length, 0);
    whole_pages += (r.offset + r.length) / kPage - (r.offset + kPage - 1) / kPage;
  }

  ASSERT_EQ(RunInChild([&] {
              int fd = open(file.c_str(), O_RDWR);
              if (fd < 0) return Fail("open");
              for (const Range& r : holes) {
                if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                              static_cast<off_t>(r.offset), static_cast<off_t>(r.length)) != 0) {
                  return Fail("fallocate");
                }
              }
              struct stat st;
              if (fstat(fd, &st) != 0) return Fail("fstat");
              return static_cast<uint64_t>(st.st_size) == size ? 0 : 2;
            }),
            0)
      << f.mount->log();
  auto punched = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(punched.ok()) << punched.status();
  // Only the two partial edge pages needed their source bytes.
  EXPECT_LE(Field(*punched, "bytes_fetched"), 2 * kPage) << punched->dump();
  EXPECT_GE(Field(*punched, "pages_zero"), whole_pages) << punched->dump();

  // Reads exactly the punched ranges (no readahead past them) and the rest
  // of their edge pages.
  auto read_holes = [&] {
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return Fail("open");
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM) != 0) return Fail("posix_fadvise");
    for (const Range& r : holes) {
      const uint64_t begin = r.offset / kPage * kPage;
      const uint64_t end = (r.offset + r.length + kPage - 1) / kPage * kPage;
      std::vector<uint8_t> buf(end - begin);
      if (pread(fd, buf.data(), buf.size(), static_cast<off_t>(begin)) !=
          static_cast<ssize_t>(buf.size())) {
        return Fail("pread");
      }
      if (Same(buf.data(), expected.data() + begin, buf.size(), begin, "punched range") != 0) {
        return 3;
      }
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != size) return 4;
    return 0;
  };
  EXPECT_EQ(RunInChild(read_holes), 0);
  auto read = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(Field(*read, "bytes_fetched"), Field(*punched, "bytes_fetched")) << read->dump();

  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild(read_holes), 0);
  RunResult all = f.mount->Ctl({"prefetch", "mem0"});
  EXPECT_EQ(all.exit_code, 0) << all.err;
  ASSERT_TRUE(DropCaches());
  EXPECT_EQ(RunInChild([&] { return CompareFile(file, expected); }), 0) << f.mount->log();
  auto after = f.mount->RegionStatus("mem0");
  ASSERT_TRUE(after.ok()) << after.status();
  // Every page crossed the wire once, except the punched whole pages.
  EXPECT_EQ(Field(*after, "bytes_fetched"), size - whole_pages * kPage) << after->dump();
  EXPECT_TRUE(after->at("complete").get<bool>());
  EXPECT_EQ(f.mount->Unmount(), 0);
}

// --- 7. No source: a RAM-backing filesystem, the way QEMU uses a mem-path ---

// Child: creates `path` O_CREAT|O_EXCL, sizes it, checks it reads zero,
// writes `patches` through a shared mapping and msyncs.
int CreateAndWrite(const std::string& path, uint64_t size, const std::vector<Patch>& patches) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return Fail("open O_CREAT|O_EXCL");
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) return Fail("ftruncate");
  struct stat st;
  if (fstat(fd, &st) != 0) return Fail("fstat");
  if (static_cast<uint64_t>(st.st_size) != size) return 2;
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return Fail("mmap");
  uint8_t* map = static_cast<uint8_t*>(p);
  if (!std::all_of(map, map + size, [](uint8_t b) { return b == 0; })) return 3;
  for (const Patch& patch : patches) {
    std::memcpy(map + patch.offset, patch.bytes.data(), patch.bytes.size());
  }
  if (msync(map, size, MS_SYNC) != 0) return Fail("msync");
  munmap(map, size);
  close(fd);
  // QEMU creates with O_EXCL: a second creation must fail.
  if (open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600) >= 0 || errno != EEXIST) return 4;
  return 0;
}

// With `passthrough` (the default) the files open in FUSE passthrough mode
// and writes go to the store without the daemon; without it they arrive as
// FUSE WRITEs and mark their pages dirty. The content is the same.
void RamBackingFilesystem(bool passthrough) {
  TempDir dir;
  auto mount = MountProcess::Start(dir, {.passthrough = passthrough});
  ASSERT_TRUE(mount.ok()) << mount.status();
  auto empty = (*mount)->Status();
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->at("source"), "none");
  EXPECT_TRUE(empty->at("regions").empty()) << empty->dump();

  const uint64_t size = 64 * kMiB;
  const std::string ram0 = (*mount)->File("ram0");
  const std::vector<Patch> patches = {
      MakePatch(0, kPage, 1, true), MakePatch(1000 * kPage + 100, 3000, 2, true),
      MakePatch(size / 2 - 10, 20, 3, true), MakePatch(size - kPage, kPage, 4, true)};
  ASSERT_EQ(RunInChild([&] { return CreateAndWrite(ram0, size, patches); }), 0) << (*mount)->log();
  auto status = (*mount)->Status();
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->at("source"), "none");
  auto region = (*mount)->RegionStatus("ram0");
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ(Field(*region, "size"), size);
  EXPECT_EQ(region->at("passthrough").get<bool>(), passthrough) << region->dump();
  if (!passthrough) {
    EXPECT_GE(Field(*region, "pages_dirty"), PagesTouched(patches)) << region->dump();
  }

  // The pages come back from the daemon's store once the kernel drops them.
  ASSERT_TRUE(DropCaches());
  const std::vector<uint8_t> expected = Apply(std::vector<uint8_t>(size, 0), patches);
  EXPECT_EQ(RunInChild([&] { return CompareFile(ram0, expected); }), 0) << (*mount)->log();

  const std::string ram1 = (*mount)->File("ram1");
  ASSERT_EQ(RunInChild([&] {
              return CreateAndWrite(ram1, 4 * kMiB, {MakePatch(kMiB + 7, 100, 5, true)});
            }),
            0)
      << (*mount)->log();
  EXPECT_EQ(RunInChild([&] {
              DIR* d = opendir((*mount)->mountpoint().c_str());
              if (d == nullptr) return Fail("opendir");
              std::set<std::string> names;
              while (dirent* e = readdir(d)) names.insert(e->d_name);
              closedir(d);
              return names == std::set<std::string>{".", "..", "ram0", "ram1"} ? 0 : 2;
            }),
            0);
  auto both = (*mount)->Status();
  ASSERT_TRUE(both.ok()) << both.status();
  ASSERT_EQ(both->at("regions").size(), 2u) << both->dump();
  // The first file is untouched by the second.
  EXPECT_EQ(RunInChild([&] { return CompareFile(ram0, expected); }), 0);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

TEST(ReadWrite, NoSourceIsARamBackingFilesystem) { RamBackingFilesystem(/*passthrough=*/true); }

TEST(ReadWrite, NoSourceIsARamBackingFilesystemInCachedMode) {
  RamBackingFilesystem(/*passthrough=*/false);
}

}  // namespace
}  // namespace lazyram::testing
