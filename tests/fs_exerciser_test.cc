// Correct as a filesystem in every mode: the random exerciser
// (tests/fs_exerciser.h) against a real mount — without a source (FUSE
// passthrough and cached), --store DIR (and across its remount), a region
// from a page server with --prefetch off and with the pull racing the
// operations — with the daemon's status size and `lazyramctl hash` checked
// against the model too. Then the reproductions of the size and
// read-past-the-end bugs, as regression tests.
//
// Fixed seeds in CI. LAZYRAM_EXERCISER_SEED and LAZYRAM_EXERCISER_OPS
// override them (tools/fs-exerciser runs longer with a random seed).
// Everything that touches the mount runs in a forked child.
#include "tests/fs_exerciser.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  uint64_t out;
  return v != nullptr && absl::SimpleAtoi(v, &out) ? out : fallback;
}

// Operations per mode in CI: a few thousand, some seconds each.
uint64_t Ops() { return EnvOr("LAZYRAM_EXERCISER_OPS", 4000); }
uint64_t Seed(uint64_t fixed) { return EnvOr("LAZYRAM_EXERCISER_SEED", fixed); }

bool CanDropCaches() { return access("/proc/sys/vm/drop_caches", W_OK) == 0; }

// The daemon's view of region `name` against the model: the status size
// and `lazyramctl hash`. `hash_always` false: the hash (which makes every
// page local) only at the end of the run.
std::function<std::string(const std::vector<uint8_t>&, bool)> DaemonCheck(const MountProcess& mount,
                                                                          const std::string& name,
                                                                          bool hash_always) {
  return [&mount, name, hash_always](const std::vector<uint8_t>& model, bool final) -> std::string {
    absl::StatusOr<json> region = mount.RegionStatus(name);
    if (!region.ok()) return absl::StrCat("status: ", region.status().message());
    const uint64_t size = region->at("size").get<uint64_t>();
    if (size != model.size()) return absl::StrCat("status size ", size, ", want ", model.size());
    if (!final && !hash_always) return "";
    RunResult hash = mount.Ctl({"hash", name});
    if (hash.exit_code != 0) return absl::StrCat("hash failed: ", hash.err);
    const std::string want = Sha256Hex(model);
    if (hash.out.substr(0, 64) != want) {
      return absl::StrCat("hash ", hash.out.substr(0, 64), ", want ", want);
    }
    return "";
  };
}

struct Mode {
  std::string label;
  bool source = false;  // a region from a page server (fixed size)
  // Its size past whole pages: such a region never goes passthrough.
  uint64_t source_tail = 0;
  uint64_t image_mib = 4;
  bool dir_store = false;  // --store DIR instead of mem
  bool passthrough = true;
  bool prefetch = false;  // the pull races the operations
  bool remount = false;   // half the operations, a remount, the other half
  uint64_t seed = 1;
};

void Exercise(const Mode& mode) {
  TempDir dir;
  const uint64_t ops = Ops();
  const uint64_t seed = Seed(mode.seed);
  std::unique_ptr<PageServerProcess> server;
  std::vector<uint8_t> initial;
  if (mode.source) {
    initial = WriteImage(dir.Sub("img"), mode.image_mib * kMiB + 3 * kPage + mode.source_tail,
                         static_cast<uint32_t>(seed),
                         /*zero_every=*/2, /*hole_bytes=*/5 * kPage);
    auto s = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
    ASSERT_TRUE(s.ok()) << s.status();
    server = *std::move(s);
  }
  MountProcess::Options mo;
  if (server != nullptr) mo.source = server->url();
  if (mode.dir_store) {
    mo.store = dir.Sub("store");
    std::filesystem::create_directories(mo.store);
  }
  mo.passthrough = mode.passthrough;
  mo.prefetch = mode.prefetch;
  // The pull keeps one small fetch in flight for 20 ms after each fault:
  // it races the operations for longer.
  if (mode.prefetch) mo.extra_args = {"--pull-yield", "20"};
  const std::string name = mode.source ? "mem0" : "file";
  const int phases = mode.remount ? 2 : 1;
  const std::string model_path = dir.Sub("model");
  const absl::Time start = absl::Now();
  for (int phase = 0; phase < phases; ++phase) {
    auto mount = MountProcess::Start(dir, mo);
    ASSERT_TRUE(mount.ok()) << mount.status();
    if (mode.prefetch && phase == 0) {
      if (absl::StatusOr<json> r = (*mount)->RegionStatus(name); r.ok()) {
        std::fprintf(stderr, "[%s] at the start: %s of %s pages local\n", mode.label.c_str(),
                     r->value("pages_present", json(0)).dump().c_str(),
                     r->value("pages_total", json(0)).dump().c_str());
      }
    }
    ExerciserOptions o;
    o.path = (*mount)->File(name);
    o.label = absl::StrCat(mode.label, phases > 1 ? absl::StrCat(", phase ", phase + 1) : "");
    o.seed = seed + phase;
    o.ops = ops / phases;
    o.fixed_size = mode.source;
    // A region without a source goes passthrough at once (docs/store.md).
    o.mapped_tail_survives_write_growth = !mode.source && mode.passthrough && !mode.dir_store;
    o.create = !mode.source && phase == 0;
    if (phase == 0) {
      o.initial = initial;
    } else {
      bool ok;
      o.initial = LoadModel(model_path, &ok);
      ASSERT_TRUE(ok) << "the first phase saved no model";
    }
    o.save_model_to = model_path;
    o.drop_caches_every = CanDropCaches() ? 700 : 0;
    // A region from a page server stays lazy (and its pull races the
    // operations): nothing reads all of it before the end of the first
    // phase.
    const bool lazy = mode.source && phase == 0;
    o.verify_every = lazy ? 0 : 500;
    o.verify_at_start = !lazy;
    o.daemon_check = DaemonCheck(**mount, name, /*hash_always=*/!lazy);
    const MountProcess* m = mount->get();
    o.status_poke = [m]() -> std::string {
      absl::StatusOr<json> s = m->Status();
      return s.ok() ? "" : std::string(s.status().message());
    };
    EXPECT_EQ(RunInChild([&] { return RunExerciser(o); }, absl::Minutes(10)), 0)
        << "replay with LAZYRAM_EXERCISER_SEED=" << seed << " LAZYRAM_EXERCISER_OPS=" << ops
        << "\ndaemon log:\n"
        << (*mount)->log();
    // Which way the kernel reached the file (passthrough needs a
    // complete region; a page server's region turns so during the run).
    if (absl::StatusOr<json> r = (*mount)->RegionStatus(name); r.ok()) {
      std::fprintf(stderr, "[%s] passthrough opens %s, demand fetches %s\n", o.label.c_str(),
                   r->value("passthrough_opens", json(0)).dump().c_str(),
                   r->value("demand_fetches", json(0)).dump().c_str());
    }
    EXPECT_EQ((*mount)->Unmount(), 0) << (*mount)->log();
    if (::testing::Test::HasFailure()) return;
  }
  std::fprintf(stderr, "[%s] %llu operations in %s\n", mode.label.c_str(),
               static_cast<unsigned long long>(ops),
               absl::FormatDuration(absl::Now() - start).c_str());
}

TEST(FsExerciser, NoSourcePassthrough) {
  Exercise({.label = "no source, passthrough", .seed = 101});
}
TEST(FsExerciser, NoSourceCached) {
  Exercise({.label = "no source, --passthrough off", .passthrough = false, .seed = 202});
}
TEST(FsExerciser, NoSourceDirStore) {
  Exercise({.label = "no source, --store DIR", .dir_store = true, .seed = 303});
}
TEST(FsExerciser, NoSourceDirStoreAcrossRemount) {
  Exercise({.label = "no source, --store DIR, remount",
            .dir_store = true,
            .remount = true,
            .seed = 404});
}
TEST(FsExerciser, SourcePrefetchOff) {
  Exercise({.label = "page server, --prefetch off", .source = true, .seed = 505});
}
TEST(FsExerciser, SourceUnalignedSize) {
  Exercise({.label = "page server, size not page-aligned",
            .source = true,
            .source_tail = 1234,
            .prefetch = true,
            .seed = 555});
}
TEST(FsExerciser, SourcePullRacing) {
  Exercise({.label = "page server, pull racing",
            .source = true,
            .image_mib = 64,
            .prefetch = true,
            .seed = 606});
}
TEST(FsExerciser, SourceDirStoreAcrossRemount) {
  Exercise({.label = "page server, --store DIR, remount",
            .source = true,
            .dir_store = true,
            .prefetch = true,
            .remount = true,
            .seed = 707});
}

// --- The reproductions of the issue, on a mount without a source. ---

int Fail(const char* what) {
  std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
  return 1;
}
int WantSize(int fd, off_t want, const char* when) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Fail("fstat");
  if (st.st_size == want) return 0;
  std::fprintf(stderr, "%s: st_size %lld, want %lld\n", when, static_cast<long long>(st.st_size),
               static_cast<long long>(want));
  return 1;
}

class Repro : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto m = MountProcess::Start(dir_, {.passthrough = GetParam()});
    ASSERT_TRUE(m.ok()) << m.status();
    mount_ = *std::move(m);
    file_ = mount_->File("f");
  }
  uint64_t StatusSize() {
    absl::StatusOr<json> r = mount_->RegionStatus("f");
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->at("size").get<uint64_t>() : 0;
  }
  TempDir dir_;
  std::unique_ptr<MountProcess> mount_;
  std::string file_;
};

// 1. A write past the end that stays inside the last page grows the file.
TEST_P(Repro, WritePastTheEndInsideTheLastPage) {
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file_.c_str(), O_CREAT | O_RDWR, 0600);
              if (fd < 0) return Fail("create");
              if (ftruncate(fd, 100) != 0) return Fail("ftruncate");
              std::vector<uint8_t> buf(100, 0x5a);
              if (pwrite(fd, buf.data(), 100, 100) != 100) return Fail("pwrite");
              if (WantSize(fd, 200, "after the pwrite") != 0) return 1;
              close(fd);
              return 0;
            }),
            0);
  EXPECT_EQ(StatusSize(), 200u);
}

// 2. Growth by a write survives the kernel forgetting the inode.
TEST_P(Repro, GrowthSurvivesDropCaches) {
  if (!CanDropCaches()) GTEST_SKIP() << "cannot write /proc/sys/vm/drop_caches";
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file_.c_str(), O_CREAT | O_RDWR, 0600);
              if (fd < 0) return Fail("create");
              if (ftruncate(fd, 8192) != 0) return Fail("ftruncate");
              std::vector<uint8_t> buf(4096, 0x33);
              if (pwrite(fd, buf.data(), 4096, 8192) != 4096) return Fail("pwrite");
              close(fd);
              if (!DropCaches()) return Fail("drop_caches");
              struct stat st;
              if (stat(file_.c_str(), &st) != 0) return Fail("stat");
              if (st.st_size != 12288) {
                std::fprintf(stderr, "st_size %lld, want 12288\n",
                             static_cast<long long>(st.st_size));
                return 1;
              }
              return 0;
            }),
            0);
  EXPECT_EQ(StatusSize(), 12288u);
  // And it stays.
  ASSERT_TRUE(DropCaches());
  ASSERT_EQ(RunInChild([&] {
              struct stat st;
              if (stat(file_.c_str(), &st) != 0) return Fail("stat");
              return st.st_size == 12288 ? 0 : 1;
            }),
            0);
  EXPECT_EQ(StatusSize(), 12288u);
}

// 3. A read past the end stops at the end: no page padding, by read or
// through a mapping of the last page.
TEST_P(Repro, ReadStopsAtTheEnd) {
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file_.c_str(), O_CREAT | O_RDWR, 0600);
              if (fd < 0) return Fail("create");
              if (ftruncate(fd, 100) != 0) return Fail("ftruncate");
              std::vector<uint8_t> buf(4096, 0xEE);
              const ssize_t n = pread(fd, buf.data(), 4096, 0);
              if (n != 100) {
                std::fprintf(stderr, "pread returned %zd, want 100\n", n);
                return 1;
              }
              for (int i = 0; i < 100; ++i) {
                if (buf[i] != 0) return Fail("non-zero byte");
              }
              if (pread(fd, buf.data(), 4096, 100) != 0) return Fail("pread at the end");
              // Shrink within the page after a write: the cut bytes are gone.
              std::vector<uint8_t> ones(300, 1);
              if (pwrite(fd, ones.data(), 300, 0) != 300) return Fail("pwrite");
              if (ftruncate(fd, 50) != 0) return Fail("ftruncate down");
              if (pread(fd, buf.data(), 4096, 0) != 50) return Fail("pread after the cut");
              if (ftruncate(fd, 300) != 0) return Fail("ftruncate up");
              if (pread(fd, buf.data(), 4096, 0) != 300) return Fail("pread after the growth");
              for (int i = 50; i < 300; ++i) {
                if (buf[i] != 0) {
                  std::fprintf(stderr, "byte %d is 0x%02x after cut and growth\n", i, buf[i]);
                  return 1;
                }
              }
              close(fd);
              return 0;
            }),
            0);
  EXPECT_EQ(StatusSize(), 300u);
}

// ZERO_RANGE, with and without KEEP_SIZE; COLLAPSE/INSERT stay refused.
TEST_P(Repro, ZeroRange) {
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file_.c_str(), O_CREAT | O_RDWR, 0600);
              if (fd < 0) return Fail("create");
              std::vector<uint8_t> buf(3 * 4096, 0x77);
              if (pwrite(fd, buf.data(), buf.size(), 0) != 3 * 4096) return Fail("pwrite");
              if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 100, 5000) != 0) {
                return Fail("ZERO_RANGE|KEEP_SIZE");
              }
              if (WantSize(fd, 3 * 4096, "after ZERO_RANGE|KEEP_SIZE") != 0) return 1;
              if (fallocate(fd, FALLOC_FL_ZERO_RANGE, 3 * 4096 - 10, 110) != 0) {
                return Fail("ZERO_RANGE");
              }
              if (WantSize(fd, 3 * 4096 + 100, "after ZERO_RANGE") != 0) return 1;
              std::vector<uint8_t> got(buf.size() + 100);
              if (pread(fd, got.data(), got.size(), 0) != static_cast<ssize_t>(got.size())) {
                return Fail("pread");
              }
              for (size_t i = 0; i < got.size(); ++i) {
                const uint8_t want = (i >= 100 && i < 5100) || i >= 3 * 4096 - 10 ? 0 : 0x77;
                if (got[i] != want) {
                  std::fprintf(stderr, "byte %zu is 0x%02x, want 0x%02x\n", i, got[i], want);
                  return 1;
                }
              }
              if (fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4096) == 0 || errno != EOPNOTSUPP) {
                return Fail("COLLAPSE_RANGE should be EOPNOTSUPP");
              }
              close(fd);
              return 0;
            }),
            0);
}

INSTANTIATE_TEST_SUITE_P(Passthrough, Repro, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "PassthroughOn" : "PassthroughOff";
                         });

// 4. Laziness: a write of whole absent pages (64 KiB) plus a partial last
// page fetches only that last page.
TEST(ReproSource, WriteFetchesOnlyThePartialLastPage) {
  TempDir dir;
  WriteImage(dir.Sub("img"), 4 * kMiB, 9, /*zero_every=*/0);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string file = (*mount)->File("mem0");
  ASSERT_EQ(RunInChild([&] {
              int fd = open(file.c_str(), O_RDWR);
              if (fd < 0) return Fail("open");
              std::vector<uint8_t> buf(64 * 1024 + 100, 0x42);
              if (pwrite(fd, buf.data(), buf.size(), kMiB) != static_cast<ssize_t>(buf.size())) {
                return Fail("pwrite");
              }
              close(fd);
              return 0;
            }),
            0);
  absl::StatusOr<json> r = (*mount)->RegionStatus("mem0");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->at("bytes_fetched").get<uint64_t>(), kPage) << r->dump();
  EXPECT_EQ(r->at("pages_dirty").get<uint64_t>(), 17u) << r->dump();
}

}  // namespace
}  // namespace lazyram::testing

// A mount needs /dev/fuse and root (drop_caches, FUSE passthrough's
// backing files): without them the test cannot run, and says so (77:
// skipped, for meson).
int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    std::fprintf(stderr, "fs_exerciser: skipped: /dev/fuse is not usable (%s)\n",
                 std::strerror(errno));
    return 77;
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "fs_exerciser: skipped: needs root (mounts, drop_caches)\n");
    return 77;
  }
  return RUN_ALL_TESTS();
}
