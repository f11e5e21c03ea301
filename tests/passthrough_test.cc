// FUSE passthrough (fusefs/passthrough_policy.h): a region whose every page
// is local opens with the kernel mapping its memfd store directly. What a
// consumer sees must not change: every byte is the source's or its own
// write, in every mode and across the switch from cached to passthrough;
// the daemon's readers (hash, punch) see passthrough writes; and
// `--passthrough off` never uses it. The status JSON says which mode a
// region is in ("passthrough", "open_files").
//
// Everything that touches the mount runs in a forked child.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/fault_helpers.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;

uint64_t Field(const json& j, const char* key) { return j.at(key).get<uint64_t>(); }

// Polls mem0's status entry until `pred` holds; the last entry either way.
json PollRegion(const MountProcess& mount, const std::function<bool(const json&)>& pred,
                absl::Duration timeout = absl::Seconds(60)) {
  const absl::Time deadline = absl::Now() + timeout;
  json region;
  for (;;) {
    absl::StatusOr<json> r = mount.RegionStatus("mem0");
    if (r.ok()) {
      region = *r;
      if (pred(region)) return region;
    }
    if (absl::Now() >= deadline) return region;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// No file of mem0 open any more: every RELEASE has reached the daemon.
json WaitClosed(const MountProcess& mount) {
  return PollRegion(mount, [](const json& r) {
    return Field(r.at("open_files"), "cached") == 0 &&
           Field(r.at("open_files"), "passthrough") == 0;
  });
}

// `lazyramctl hash mem0` against SHA-256 of `want` (written to a file in
// `dir` and hashed by sha256sum).
void ExpectHash(const MountProcess& mount, const TempDir& dir, const std::vector<uint8_t>& want) {
  const std::string path = dir.Sub("expected");
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(want.data(), 1, want.size(), f), want.size());
    std::fclose(f);
  }
  RunResult sum = Run({"/usr/bin/sha256sum", path});
  ASSERT_EQ(sum.exit_code, 0) << sum.err;
  RunResult hash = mount.Ctl({"hash", "mem0"});
  ASSERT_EQ(hash.exit_code, 0) << hash.err;
  EXPECT_EQ(hash.out.substr(0, 64), sum.out.substr(0, 64));
}

// --- Child side: plain code that reports a failure on stderr. ---

int Fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}

int Same(const uint8_t* got, const uint8_t* want, uint64_t n, const char* what) {
  if (std::memcmp(got, want, n) == 0) return 0;
  uint64_t i = 0;
  while (got[i] == want[i]) ++i;
  std::fprintf(stderr, "%s: first difference at byte %llu: got 0x%02x, want 0x%02x\n", what,
               static_cast<unsigned long long>(i), got[i], want[i]);
  return 1;
}

// Reads all of `path` with pread(2), and again through a fresh shared
// mapping, and compares both with `want` (size included); the exit codes of
// tests/fault_helpers.h.
int CheckFile(const std::string& path, const std::vector<uint8_t>& want) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Fail("stat");
  if (static_cast<uint64_t>(st.st_size) != want.size()) {
    std::fprintf(stderr, "size %lld, want %zu\n", static_cast<long long>(st.st_size), want.size());
    return 1;
  }
  if (const int rc = PreadAndCompare(path, 0, want.size(), want); rc != 0) return rc;
  return MapAndCompare(path, want);
}

// The stores the tests make in page `page`: into a mapping in a child,
// and into the expected bytes in the test.
void Stamp(uint8_t* bytes, uint64_t page, uint8_t value) {
  for (uint64_t i = 0; i < 64; ++i) bytes[page * kPage + i * 61] = static_cast<uint8_t>(value + i);
}

// --- Tests ---

// A region without a source (QEMU's mem-path on an empty mount) is
// complete from its creation: every open is passthrough, and what is
// written through mappings and pwrite is what read, a second open, the
// daemon's hash and a punched hole show.
TEST(PassthroughTest, RegionWithoutSource) {
  TempDir dir;
  auto mount = MountProcess::Start(dir, {});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");
  constexpr uint64_t kSize = 8 * kMiB;
  std::vector<uint8_t> want(kSize, 0);
  for (uint64_t page = 0; page < kSize / kPage; page += 3) {
    Stamp(want.data(), page, static_cast<uint8_t>(page));
  }
  const std::vector<uint8_t> tail(5000, 0xab);
  std::copy(tail.begin(), tail.end(), want.begin() + 3 * kMiB + 100);

  int rc = RunInChild([&] {
    int fd = open(file.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return Fail("create");
    if (ftruncate(fd, kSize) != 0) return Fail("ftruncate");
    void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("mmap");
    auto* map = static_cast<uint8_t*>(p);
    for (uint64_t page = 0; page < kSize / kPage; page += 3) {
      Stamp(map, page, static_cast<uint8_t>(page));
    }
    if (pwrite(fd, tail.data(), tail.size(), 3 * kMiB + 100) != static_cast<ssize_t>(tail.size())) {
      return Fail("pwrite");
    }
    // The mapping and read(2) see each other's writes at once.
    if (Same(map + 3 * kMiB + 100, tail.data(), tail.size(), "pwrite via mapping") != 0) return 2;
    uint8_t b;
    if (pread(fd, &b, 1, 6 * kPage + 61) != 1 || b != static_cast<uint8_t>(6 + 1)) return 3;
    munmap(p, kSize);
    close(fd);
    return CheckFile(file, want);
  });
  ASSERT_EQ(rc, 0);

  json region = WaitClosed(**mount);
  EXPECT_TRUE(region.at("passthrough").get<bool>()) << region.dump();
  EXPECT_GE(Field(region, "passthrough_opens"), 2u);
  EXPECT_EQ(Field(region, "size"), kSize);
  absl::StatusOr<json> status = (*mount)->Status();
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(status->at("passthrough").at("negotiated").get<bool>()) << status->dump();
  ExpectHash(**mount, dir, want);

  // A hole punched through a passthrough file reaches the daemon, which
  // punches the memfd: a mapping made before sees it. A partly covered
  // page is zeroed in place.
  const uint64_t hole = 2 * kMiB - 100, hole_len = 64 * kPage + 200;
  std::fill(want.begin() + hole, want.begin() + hole + hole_len, 0);
  rc = RunInChild([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    void* p = mmap(nullptr, kSize, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("mmap");
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, hole, hole_len) != 0) {
      return Fail("punch");
    }
    if (Same(static_cast<uint8_t*>(p), want.data(), kSize, "mapping after punch") != 0) return 2;
    munmap(p, kSize);
    close(fd);
    return CheckFile(file, want);
  });
  ASSERT_EQ(rc, 0);
  ExpectHash(**mount, dir, want);

  // A write past the end grows the file; the daemon takes the memfd's size.
  rc = RunInChild([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    if (pwrite(fd, "end", 3, kSize + 10) != 3) return Fail("pwrite past the end");
    close(fd);
    struct stat st;
    if (stat(file.c_str(), &st) != 0) return Fail("stat");
    return static_cast<uint64_t>(st.st_size) == kSize + 13 ? 0 : 4;
  });
  ASSERT_EQ(rc, 0);
  want.resize(kSize + 13, 0);
  std::memcpy(want.data() + kSize + 10, "end", 3);
  region = WaitClosed(**mount);
  EXPECT_EQ(Field(region, "size"), kSize + 13);
  ExpectHash(**mount, dir, want);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// A region from a page server goes passthrough once the pull made every
// page local: then a mapping holds exactly the image, writes through it
// are what the daemon hashes, and its size stays fixed.
TEST(PassthroughTest, PulledRegionOpensInPassthrough) {
  TempDir dir;
  constexpr uint64_t kSize = 12 * kMiB;
  std::vector<uint8_t> want = WriteImage(dir.Sub("img"), kSize, 21, /*zero_every=*/3);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url(), .prefetch = true});
  ASSERT_TRUE(mount.ok()) << mount.status();
  RunResult wait = (*mount)->Ctl({"wait", "--timeout", "120"}, absl::Seconds(150));
  ASSERT_EQ(wait.exit_code, 0) << wait.err;
  // The page pusher's helper may still hold the file open (cached) for
  // the last pulled pages; it lets go once idle.
  json region = WaitClosed(**mount);
  ASSERT_TRUE(region.at("complete").get<bool>());

  const std::string file = (*mount)->File("mem0");
  const std::vector<uint8_t> image = want;
  for (uint64_t page = 1; page < kSize / kPage; page += 7) {
    Stamp(want.data(), page, static_cast<uint8_t>(page));
  }
  int rc = RunInChild([&] {
    if (CheckFile(file, image) != 0) return 1;
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("mmap");
    for (uint64_t page = 1; page < kSize / kPage; page += 7) {
      Stamp(static_cast<uint8_t*>(p), page, static_cast<uint8_t>(page));
    }
    munmap(p, kSize);
    // The size is the source's: a write past the end fails, as in cached
    // mode (the memfd is sealed).
    if (pwrite(fd, "x", 1, kSize) == 1) return 5;
    struct stat st;
    if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != kSize) return 6;
    close(fd);
    return CheckFile(file, want);
  });
  ASSERT_EQ(rc, 0);
  region = WaitClosed(**mount);
  EXPECT_TRUE(region.at("passthrough").get<bool>()) << region.dump();
  EXPECT_GE(Field(region, "passthrough_opens"), 3u);
  EXPECT_EQ(Field(region, "size"), kSize);
  ExpectHash(**mount, dir, want);

  // A data page punched becomes a hole in the memfd: the FALLOCATE went
  // through the daemon (page 261 is in MiB 1, random data). In passthrough
  // mode the page counts are the memfd's allocated pages (Region::Stats);
  // the mapping reads above allocated every page, the punch frees at
  // least the punched one (the kernel may also drop zero-filled pages of
  // a huge folio it splits for it).
  const uint64_t zero_before = Field(region, "pages_zero");
  constexpr uint64_t kPunched = 261;
  std::fill(want.begin() + kPunched * kPage, want.begin() + (kPunched + 1) * kPage, 0);
  rc = RunInChild([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, kPunched * kPage, kPage) != 0) {
      return Fail("punch");
    }
    close(fd);
    return 0;
  });
  ASSERT_EQ(rc, 0);
  region = WaitClosed(**mount);
  EXPECT_GE(Field(region, "pages_zero"), zero_before + 1);
  ASSERT_EQ(RunInChild([&] { return CheckFile(file, want); }), 0);
  ExpectHash(**mount, dir, want);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// A file opened (cached) before the region was complete and still open
// when it completes: later opens stay cached — the kernel allows no mix —
// and see everything written through either; once every file is closed,
// the next open is passthrough and sees every byte written in cached mode.
TEST(PassthroughTest, CachedOpenHeldAcrossCompletion) {
  TempDir dir;
  constexpr uint64_t kSize = 8 * kMiB;
  std::vector<uint8_t> want = WriteImage(dir.Sub("img"), kSize, 22, /*zero_every=*/4);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  // No pull: completion comes from `lazyramctl prefetch`, when the test
  // says.
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");

  // The early opener maps the file (cached: the region is not complete),
  // reads a little and writes page 3; later it checks that it sees the
  // second opener's page 9, and writes page 11.
  const std::vector<uint8_t> image = want;
  Stamp(want.data(), 3, 0x30);
  StepPipe steps;
  auto early = ChildProcess::Start([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("early open");
    void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("early mmap");
    auto* map = static_cast<uint8_t*>(p);
    if (Same(map, image.data(), 16 * kPage, "early read") != 0) return 2;
    Stamp(map, 3, 0x30);
    if (!steps.SendUp('a')) return 3;
    char c;
    if (!steps.ReceiveDown(&c)) return 4;
    // The second (cached) opener's write shows here: one page cache.
    if (map[9 * kPage] != 0x90) return 5;
    Stamp(map, 11, 0x50);
    if (msync(p, kSize, MS_SYNC) != 0) return Fail("msync");
    munmap(p, kSize);
    close(fd);
    return 0;
  });
  char c;
  ASSERT_TRUE(steps.ReceiveUp(&c));
  json region =
      PollRegion(**mount, [](const json& r) { return Field(r.at("open_files"), "cached") == 1; });
  EXPECT_FALSE(region.at("passthrough").get<bool>()) << region.dump();

  RunResult prefetch = (*mount)->Ctl({"prefetch", "mem0"});
  ASSERT_EQ(prefetch.exit_code, 0) << prefetch.err;
  region = PollRegion(**mount, [](const json& r) { return r.at("complete").get<bool>(); });
  ASSERT_TRUE(region.at("complete").get<bool>());

  // Complete, but a cached open is outstanding: this open is cached too,
  // and shares the early opener's page cache.
  want[9 * kPage] = 0x90;
  int rc = RunInChild([&] {
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("second open");
    void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("second mmap");
    auto* map = static_cast<uint8_t*>(p);
    if (Same(map + 3 * kPage, want.data() + 3 * kPage, kPage, "early write") != 0) return 2;
    map[9 * kPage] = 0x90;
    if (msync(p, kSize, MS_SYNC) != 0) return Fail("msync");
    munmap(p, kSize);
    close(fd);
    return 0;
  });
  ASSERT_EQ(rc, 0);
  region =
      PollRegion(**mount, [](const json& r) { return Field(r.at("open_files"), "cached") == 1; });
  EXPECT_FALSE(region.at("passthrough").get<bool>()) << region.dump();
  EXPECT_EQ(Field(region, "passthrough_opens"), 0u);

  ASSERT_TRUE(steps.SendDown('b'));
  ASSERT_EQ(early->Wait(), 0);
  Stamp(want.data(), 11, 0x50);
  region = WaitClosed(**mount);
  EXPECT_FALSE(region.at("passthrough").get<bool>());

  // Every cached open is closed: this one goes passthrough, and reads the
  // store, which holds what both cached writers wrote.
  rc = RunInChild([&] {
    if (CheckFile(file, want) != 0) return 1;
    int fd = open(file.c_str(), O_RDWR);
    if (fd < 0) return Fail("open");
    const uint8_t v = 0x77;
    if (pwrite(fd, &v, 1, 9 * kPage) != 1) return Fail("pwrite");
    close(fd);
    return 0;
  });
  ASSERT_EQ(rc, 0);
  want[9 * kPage] = 0x77;
  region = WaitClosed(**mount);
  EXPECT_TRUE(region.at("passthrough").get<bool>()) << region.dump();
  EXPECT_GE(Field(region, "passthrough_opens"), 2u);
  // The page cache the cached opens filled is never read again: a fresh
  // mapping and read(2) see the passthrough write, not the cached 0x90.
  rc = RunInChild([&] { return CheckFile(file, want); });
  ASSERT_EQ(rc, 0);
  ExpectHash(**mount, dir, want);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// A read-only mount (forensics) may go passthrough too; every write is
// still refused with EROFS, and the mapping cannot be made writable.
TEST(PassthroughTest, ReadOnlyMountStaysReadOnly) {
  TempDir dir;
  constexpr uint64_t kSize = 4 * kMiB;
  const std::vector<uint8_t> want = WriteImage(dir.Sub("ram"), kSize, 23);
  auto mount = MountProcess::Start(
      dir, {.source = "file://" + dir.Sub("ram"), .prefetch = true, .extra_args = {"--read-only"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  RunResult wait = (*mount)->Ctl({"wait", "--timeout", "120"}, absl::Seconds(150));
  ASSERT_EQ(wait.exit_code, 0) << wait.err;
  const std::string file = (*mount)->mountpoint() + "/ram";
  int rc = RunInChild([&] {
    if (CheckFile(file, want) != 0) return 1;
    errno = 0;
    if (open(file.c_str(), O_RDWR) >= 0 || errno != EROFS) return 2;
    if (truncate(file.c_str(), 0) == 0 || errno != EROFS) return 3;
    int fd = open(file.c_str(), O_RDONLY);
    if (fd < 0) return Fail("open");
    if (mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED) return 4;
    if (pwrite(fd, "x", 1, 0) == 1) return 5;
    close(fd);
    return CheckFile(file, want);
  });
  ASSERT_EQ(rc, 0);
  absl::StatusOr<json> region = (*mount)->RegionStatus("ram");
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_TRUE(region->at("passthrough").get<bool>()) << region->dump();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// --passthrough off: every open is cached, writes arrive as FUSE WRITEs
// (the page map marks them dirty), and the status says it is off.
TEST(PassthroughTest, OffNeverUsesIt) {
  TempDir dir;
  auto mount = MountProcess::Start(dir, {.passthrough = false});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");
  constexpr uint64_t kSize = 4 * kMiB;
  std::vector<uint8_t> want(kSize, 0);
  for (uint64_t page = 0; page < kSize / kPage; page += 5) {
    Stamp(want.data(), page, static_cast<uint8_t>(page));
  }
  int rc = RunInChild([&] {
    int fd = open(file.c_str(), O_CREAT | O_RDWR, 0600);
    if (fd < 0) return Fail("create");
    if (ftruncate(fd, kSize) != 0) return Fail("ftruncate");
    void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return Fail("mmap");
    for (uint64_t page = 0; page < kSize / kPage; page += 5) {
      Stamp(static_cast<uint8_t*>(p), page, static_cast<uint8_t>(page));
    }
    if (msync(p, kSize, MS_SYNC) != 0) return Fail("msync");
    munmap(p, kSize);
    close(fd);
    return CheckFile(file, want);
  });
  ASSERT_EQ(rc, 0);
  json region = WaitClosed(**mount);
  EXPECT_FALSE(region.at("passthrough").get<bool>());
  EXPECT_EQ(Field(region, "passthrough_opens"), 0u);
  EXPECT_GT(Field(region, "pages_dirty"), 0u);
  absl::StatusOr<json> status = (*mount)->Status();
  ASSERT_TRUE(status.ok());
  EXPECT_FALSE(status->at("passthrough").at("enabled").get<bool>()) << status->dump();
  ExpectHash(**mount, dir, want);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
