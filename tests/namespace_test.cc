// The namespace follows the VM (docs/architecture.md, "Unlink and rename"):
// on any writable mount, with or without a source, files can be created,
// unlinked and renamed; an unlinked region's store is freed once the kernel
// forgets it; read-only mounts answer EROFS; with --store DIR creations,
// renames and deletions survive a remount and a SIGKILL. And memory goes
// back: a punched range frees the store at once (cached and passthrough),
// and passthrough page counts stay true.
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kMiB = 1 << 20;

std::vector<uint8_t> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Creates `path` (O_CREAT), sizes it as QEMU does (ftruncate) and writes
// `data` at 0.
void CreateWith(const std::string& path, const std::vector<uint8_t>& data) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(data.size())), 0) << std::strerror(errno);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()))
      << std::strerror(errno);
  close(fd);
}

std::vector<uint8_t> ReadAll(const std::string& path) {
  std::vector<uint8_t> out;
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  struct stat st;
  fstat(fd, &st);
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  close(fd);
  return out;
}

std::set<std::string> List(const std::string& dir) {
  std::set<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      names.insert(e->d_name);
    }
  }
  closedir(d);
  return names;
}

std::set<std::string> StatusNames(const MountProcess& m) {
  std::set<std::string> names;
  absl::StatusOr<json> s = m.Status();
  if (!s.ok()) return names;
  for (const json& r : (*s)["regions"]) names.insert(r["name"].get<std::string>());
  return names;
}

uint64_t Field(const json& j, const char* key) { return j.at(key).get<uint64_t>(); }

// Polls the status until `pred` holds (dropping caches now and then, which
// makes the kernel evict unused inodes and send FORGET); the last status.
json PollStatus(const MountProcess& m, const std::function<bool(const json&)>& pred,
                absl::Duration timeout = absl::Seconds(30)) {
  const absl::Time deadline = absl::Now() + timeout;
  json last;
  for (int i = 0;; ++i) {
    absl::StatusOr<json> s = m.Status();
    if (s.ok()) {
      last = *s;
      if (pred(last)) return last;
    }
    if (absl::Now() >= deadline) return last;
    if (i % 5 == 0) DropCaches();
    absl::SleepFor(absl::Milliseconds(50));
  }
}

std::unique_ptr<MountProcess> Mount(const TempDir& dir, MountProcess::Options o) {
  absl::StatusOr<std::unique_ptr<MountProcess>> m = MountProcess::Start(dir, o);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? *std::move(m) : nullptr;
}

void Kill(std::unique_ptr<MountProcess>& m) {
  const std::string mountpoint = m->mountpoint();
  ASSERT_EQ(kill(m->pid(), SIGKILL), 0);
  ForceUnmount(mountpoint);
  EXPECT_EQ(m->Wait(absl::Seconds(30)), -1);
  m.reset();
}

TEST(Namespace, CreateRenameUnlinkWithoutSource) {
  TempDir dir;
  auto m = Mount(dir, {});
  ASSERT_NE(m, nullptr);
  const std::vector<uint8_t> a = Random(kMiB, 1), c = Random(kMiB / 2, 2);
  CreateWith(m->File("a"), a);
  ASSERT_EQ(rename(m->File("a").c_str(), m->File("b").c_str()), 0) << std::strerror(errno);
  EXPECT_NE(access(m->File("a").c_str(), F_OK), 0);
  EXPECT_EQ(ReadAll(m->File("b")), a);
  EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"b"});
  EXPECT_EQ(StatusNames(*m), std::set<std::string>{"b"});

  CreateWith(m->File("c"), c);
  // RENAME_NOREPLACE onto an existing name.
  EXPECT_EQ(
      renameat2(AT_FDCWD, m->File("b").c_str(), AT_FDCWD, m->File("c").c_str(), RENAME_NOREPLACE),
      -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(
      renameat2(AT_FDCWD, m->File("b").c_str(), AT_FDCWD, m->File("c").c_str(), RENAME_EXCHANGE),
      -1);
  // A rename onto an existing name replaces it.
  ASSERT_EQ(rename(m->File("b").c_str(), m->File("c").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(ReadAll(m->File("c")), a);
  EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"c"});

  ASSERT_EQ(unlink(m->File("c").c_str()), 0) << std::strerror(errno);
  EXPECT_NE(access(m->File("c").c_str(), F_OK), 0);
  EXPECT_TRUE(List(m->mountpoint()).empty());
  EXPECT_EQ(unlink(m->File("c").c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
  // A new file of the old name starts empty.
  CreateWith(m->File("c"), {});
  EXPECT_TRUE(ReadAll(m->File("c")).empty());
  // Every store is freed once forgotten.
  ASSERT_EQ(unlink(m->File("c").c_str()), 0);
  json s = PollStatus(*m, [](const json& j) { return Field(j, "store_bytes") == 0; });
  EXPECT_EQ(Field(s, "store_bytes"), 0u) << s.dump();
  EXPECT_EQ(m->Unmount(), 0);
}

TEST(Namespace, CreateAndUnlinkWithSource) {
  TempDir dir;
  const std::vector<uint8_t> image = WriteImage(dir.Sub("img"), 4 * kMiB, 7);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto m = Mount(dir, {.source = (*server)->url()});
  ASSERT_NE(m, nullptr);
  const std::vector<uint8_t> local = Random(kMiB + 100, 3);
  CreateWith(m->File("local"), local);
  EXPECT_EQ(ReadAll(m->File("local")), local);
  EXPECT_EQ(ReadAll(m->File("mem0")), image);
  EXPECT_EQ(List(m->mountpoint()), (std::set<std::string>{"mem0", "local"}));
  ASSERT_EQ(rename(m->File("local").c_str(), m->File("hot").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(ReadAll(m->File("hot")), local);
  ASSERT_EQ(unlink(m->File("mem0").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"hot"});
  EXPECT_EQ(StatusNames(*m), std::set<std::string>{"hot"});
  ASSERT_EQ(unlink(m->File("hot").c_str()), 0) << std::strerror(errno);
  json s = PollStatus(*m, [](const json& j) { return Field(j, "store_bytes") == 0; });
  EXPECT_EQ(Field(s, "store_bytes"), 0u) << s.dump();
  EXPECT_EQ(m->Unmount(), 0);
}

// An unlinked source region is never pulled: the mount completes without it.
TEST(Namespace, UnlinkedSourceRegionIsNotPulled) {
  TempDir dir;
  WriteImage(dir.Sub("img0"), 4 * kMiB, 8);
  WriteImage(dir.Sub("img1"), 64 * kMiB, 9);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img0"), "mem1=" + dir.Sub("img1")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto m = Mount(dir, {.source = (*server)->url(), .prefetch = true});
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(unlink(m->File("mem1").c_str()), 0) << std::strerror(errno);
  json s = PollStatus(
      *m, [](const json& j) { return j.at("complete").get<bool>(); }, absl::Seconds(60));
  EXPECT_TRUE(s.at("complete").get<bool>()) << s.dump();
  EXPECT_EQ(m->Unmount(), 0);
}

TEST(Namespace, UnlinkWhileMappedKeepsContentUntilForgotten) {
  TempDir dir;
  auto m = Mount(dir, {});
  ASSERT_NE(m, nullptr);
  const std::vector<uint8_t> data = Random(8 * kMiB, 4);
  CreateWith(m->File("ram"), data);
  int fd = open(m->File("ram").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  void* p = mmap(nullptr, data.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  close(fd);
  ASSERT_EQ(unlink(m->File("ram").c_str()), 0) << std::strerror(errno);
  EXPECT_TRUE(List(m->mountpoint()).empty());
  // Still readable (and after dropping the page cache: from the store).
  DropCaches();
  EXPECT_EQ(std::memcmp(p, data.data(), data.size()), 0);
  absl::StatusOr<json> s = m->Status();
  ASSERT_TRUE(s.ok());
  EXPECT_GE(Field(*s, "store_bytes"), data.size()) << s->dump();
  EXPECT_EQ(Field(*s, "unlinked_regions"), 1u);
  ASSERT_EQ(munmap(p, data.size()), 0);
  json after = PollStatus(*m, [](const json& j) { return Field(j, "store_bytes") == 0; });
  EXPECT_EQ(Field(after, "store_bytes"), 0u) << after.dump();
  EXPECT_EQ(Field(after, "unlinked_regions"), 0u);
  EXPECT_EQ(m->Unmount(), 0);
}

TEST(Namespace, ReadOnlyMountAnswersErofs) {
  TempDir dir;
  WriteImage(dir.Sub("ram"), 2 * kMiB, 5);
  auto m = Mount(dir, {.source = "file://" + dir.Sub("ram"), .extra_args = {"--read-only"}});
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(open(m->File("new").c_str(), O_RDWR | O_CREAT, 0600), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(unlink(m->File("ram").c_str()), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(rename(m->File("ram").c_str(), m->File("x").c_str()), -1);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(m->Unmount(), 0);
}

TEST(Namespace, StoreDirKeepsNamespaceAcrossRemountAndKill) {
  TempDir dir;
  const std::string store = dir.Sub("store");
  ASSERT_EQ(mkdir(store.c_str(), 0700), 0);
  const std::vector<uint8_t> a = Random(kMiB, 11), b = Random(2 * kMiB, 12), d = Random(kMiB, 13);
  {
    auto m = Mount(dir, {.store = store});
    ASSERT_NE(m, nullptr);
    CreateWith(m->File("a"), a);
    CreateWith(m->File("b"), b);
    ASSERT_EQ(rename(m->File("a").c_str(), m->File("c").c_str()), 0) << std::strerror(errno);
    ASSERT_EQ(unlink(m->File("b").c_str()), 0) << std::strerror(errno);
    EXPECT_EQ(m->Unmount(), 0);
  }
  {
    auto m = Mount(dir, {.store = store});
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"c"});
    EXPECT_EQ(ReadAll(m->File("c")), a);
    CreateWith(m->File("d"), d);
    ASSERT_EQ(rename(m->File("d").c_str(), m->File("e").c_str()), 0) << std::strerror(errno);
    ASSERT_EQ(unlink(m->File("c").c_str()), 0) << std::strerror(errno);
    Kill(m);
  }
  {
    auto m = Mount(dir, {.store = store});
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"e"});
    EXPECT_EQ(ReadAll(m->File("e")), d);
    EXPECT_EQ(m->Unmount(), 0);
  }
  // Nothing of the deleted files is left in the store.
  EXPECT_EQ(List(store), (std::set<std::string>{"e", ".lazyram-state"}));
}

TEST(Namespace, StoreDirKeepsLocalRegionsOfASource) {
  TempDir dir;
  const std::string store = dir.Sub("store");
  ASSERT_EQ(mkdir(store.c_str(), 0700), 0);
  const std::vector<uint8_t> image = WriteImage(dir.Sub("img"), 4 * kMiB, 21);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::vector<uint8_t> local = Random(3 * kMiB, 22);
  {
    auto m = Mount(dir, {.source = (*server)->url(), .store = store});
    ASSERT_NE(m, nullptr);
    CreateWith(m->File("hotplug"), local);
    // The source's names keep their files.
    EXPECT_EQ(rename(m->File("hotplug").c_str(), m->File("mem0").c_str()), -1);
    Kill(m);
  }
  {
    auto m = Mount(dir, {.source = (*server)->url(), .store = store});
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(List(m->mountpoint()), (std::set<std::string>{"mem0", "hotplug"}));
    EXPECT_EQ(ReadAll(m->File("hotplug")), local);
    EXPECT_EQ(ReadAll(m->File("mem0")), image);
    ASSERT_EQ(unlink(m->File("hotplug").c_str()), 0) << std::strerror(errno);
    EXPECT_EQ(m->Unmount(), 0);
  }
  {
    auto m = Mount(dir, {.source = (*server)->url(), .store = store});
    ASSERT_NE(m, nullptr);
    EXPECT_EQ(List(m->mountpoint()), std::set<std::string>{"mem0"});
    EXPECT_EQ(m->Unmount(), 0);
  }
}

// Punching frees the store's memory or disk at once; `passthrough` says
// whether the file opens in FUSE passthrough mode (memory stores).
void PunchFrees(const std::string& store, bool passthrough) {
  TempDir dir;
  MountProcess::Options o{.passthrough = passthrough};
  if (store == "dir") {
    o.store = dir.Sub("store");
    ASSERT_EQ(mkdir(o.store.c_str(), 0700), 0);
  }
  auto m = Mount(dir, o);
  ASSERT_NE(m, nullptr);
  const std::vector<uint8_t> data = Random(4 * kMiB, 31);
  CreateWith(m->File("ram"), data);
  absl::StatusOr<json> r = m->RegionStatus("ram");
  ASSERT_TRUE(r.ok());
  if (passthrough && !r->at("passthrough").get<bool>()) {
    GTEST_SKIP() << "FUSE passthrough is not available here";
  }
  const uint64_t before = Field(*r, "store_bytes");
  EXPECT_GE(before, data.size());
  int fd = open(m->File("ram").c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2 * kMiB), 0)
      << std::strerror(errno);
  close(fd);
  r = m->RegionStatus("ram");
  ASSERT_TRUE(r.ok());
  EXPECT_LE(Field(*r, "store_bytes"), before - 2 * kMiB) << r->dump();
  std::vector<uint8_t> want = data;
  std::fill(want.begin(), want.begin() + 2 * kMiB, 0);
  EXPECT_EQ(ReadAll(m->File("ram")), want);
  EXPECT_EQ(m->Unmount(), 0);
}

TEST(Namespace, PunchFreesMemoryCached) { PunchFrees("mem", false); }
TEST(Namespace, PunchFreesMemoryPassthrough) { PunchFrees("mem", true); }
TEST(Namespace, PunchFreesDisk) { PunchFrees("dir", false); }

TEST(Namespace, PassthroughPageCountsAreTrue) {
  TempDir dir;
  auto m = Mount(dir, {});
  ASSERT_NE(m, nullptr);
  int fd = open(m->File("ram").c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 128 * kMiB), 0);
  absl::StatusOr<json> r = m->RegionStatus("ram");
  ASSERT_TRUE(r.ok());
  if (!r->at("passthrough").get<bool>()) {
    close(fd);
    GTEST_SKIP() << "FUSE passthrough is not available here";
  }
  const std::vector<uint8_t> data = Random(4 * kMiB, 41);
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  close(fd);
  r = m->RegionStatus("ram");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(Field(*r, "pages_total"), 32768u);
  EXPECT_EQ(Field(*r, "pages_present"), 1024u) << r->dump();
  EXPECT_EQ(Field(*r, "pages_dirty"), 1024u) << r->dump();
  EXPECT_EQ(Field(*r, "pages_zero"), 32768u - 1024u) << r->dump();
  EXPECT_EQ(m->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
