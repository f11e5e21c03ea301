// Memory forensics without QEMU: file:// and qemu-stream:// sources (made
// by QemuStreamBuilder), --read-only (EROFS on every write path, the source
// never written), the views/ folder (physmem.raw with SEEK_HOLE/SEEK_DATA,
// LiME headers, the ELF core's headers, manifest.json), `lazyramctl hash`,
// and clear one-line errors for truncated and corrupt streams.
//
// Everything that touches a mount runs in a forked child (RunInChild),
// which prints what went wrong and returns non-zero.
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/qemu_stream_builder.h"
#include "tests/test_env.h"

namespace lazyram::testing {
namespace {

using nlohmann::json;

constexpr uint64_t kPage = 4096;
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;

int Fail(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", what.c_str(), std::strerror(errno));
  return 1;
}

// Child: `length` bytes of `path` at `offset` must equal `want`.
int ReadsAs(const std::string& path, uint64_t offset, const std::string& want) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return Fail("open " + path);
  std::string got(want.size(), '\0');
  size_t done = 0;
  while (done < got.size()) {
    ssize_t n = pread(fd, got.data() + done, got.size() - done, static_cast<off_t>(offset + done));
    if (n <= 0) return Fail(absl::StrCat("pread ", path, " at ", offset + done));
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (got != want) {
    std::fprintf(stderr, "%s at %llu: bytes differ\n", path.c_str(), (unsigned long long)offset);
    return 2;
  }
  return 0;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Sha256Of(const std::string& path) {
  RunResult r = Run({"/usr/bin/sha256sum", path});
  return r.out.substr(0, 64);
}

std::string Marker(uint64_t tag) {
  std::string page(kPage, '\0');
  for (size_t i = 0; i + 16 <= kPage; i += 16) {
    std::snprintf(&page[i], 16, "%015llx", static_cast<unsigned long long>(tag));
  }
  return page;
}

void ExpectOneErrorLine(const RunResult& r, const std::vector<std::string>& mentions) {
  EXPECT_NE(r.exit_code, 0) << "stderr: " << r.err;
  EXPECT_NE(r.exit_code, -1) << "timed out or crashed: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: '" << r.err << "'";
  for (const std::string& m : mentions) {
    EXPECT_TRUE(absl::StrContains(r.err, m)) << "stderr does not mention '" << m << "': " << r.err;
  }
}

TEST(Forensics, AFileSourceIsReadLazilyAndNeverWritten) {
  TempDir dir;
  const std::string ram = dir.Sub("guest.ram");
  const uint64_t size = 16 * kMiB + 5 * kPage;
  std::vector<uint8_t> image = WriteImage(ram, size, 11, /*zero_every=*/4, /*hole_bytes=*/kMiB);
  struct stat before;
  ASSERT_EQ(stat(ram.c_str(), &before), 0);
  auto mount = MountProcess::Start(dir, {.source = "file://" + ram, .extra_args = {"--read-only"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  auto status = (*mount)->Status();
  ASSERT_TRUE(status.ok());
  EXPECT_EQ((*status)["source"], "local");
  auto region = (*mount)->RegionStatus("guest.ram");
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ((*region)["size"], size);
  EXPECT_EQ((*region)["bytes_fetched"], 0);

  // One page read: one page fetched, nothing else (no background pull).
  const std::string file = (*mount)->File("guest.ram");
  const std::string page(reinterpret_cast<const char*>(image.data()) + 5 * kMiB + 3 * kPage, kPage);
  ASSERT_EQ(RunInChild([&] { return ReadsAs(file, 5 * kMiB + 3 * kPage, page); }), 0);
  region = (*mount)->RegionStatus("guest.ram");
  ASSERT_TRUE(region.ok());
  EXPECT_LE((*region)["bytes_fetched"].get<uint64_t>(), 32 * kPage);  // the kernel's readahead
  EXPECT_GT((*region)["bytes_fetched"].get<uint64_t>(), 0u);

  // All of it, through `lazyramctl hash` (with its progress bar).
  RunResult hash = (*mount)->Ctl({"hash", "guest.ram", "--progress"});
  ASSERT_EQ(hash.exit_code, 0) << hash.err;
  EXPECT_EQ(hash.out, Sha256Of(ram) + "  guest.ram\n");
  const std::string all(image.begin(), image.end());
  EXPECT_EQ(RunInChild([&] { return ReadsAs(file, 0, all); }), 0);
  region = (*mount)->RegionStatus("guest.ram");
  ASSERT_TRUE(region.ok());
  EXPECT_TRUE((*region)["complete"]);
  // Holes and zero MiBs are never stored as data.
  EXPECT_LE((*region)["pages_present"].get<uint64_t>() * kPage, size * 3 / 4);

  // The manifest names the source and the hash; without --machine there is
  // no layout and no memory view.
  const std::string manifest_path = (*mount)->mountpoint() + "/views/manifest.json";
  int code = RunInChild([&] {
    json m = json::parse(Slurp(manifest_path), nullptr, false);
    if (m.is_discarded()) return 1;
    if (m["source"] != "file://" + ram || m["read_only"] != true || !m["layout"].is_null())
      return 2;
    if (m["regions"][0]["sha256"] != Sha256Of(ram)) return 3;
    if (std::filesystem::exists((*mount)->mountpoint() + "/views/physmem.raw")) return 4;
    return 0;
  });
  EXPECT_EQ(code, 0);
  EXPECT_EQ((*mount)->Unmount(), 0);

  struct stat after;
  ASSERT_EQ(stat(ram.c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
  EXPECT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  EXPECT_EQ(Slurp(ram), all);
}

TEST(Forensics, ADirectoryIsOneRegionPerRegularFile) {
  TempDir dir;
  std::filesystem::create_directories(dir.Sub("ram/sub"));
  std::vector<uint8_t> a = WriteImage(dir.Sub("ram/mem0"), 2 * kMiB, 1);
  std::vector<uint8_t> b = WriteImage(dir.Sub("ram/pc.bios"), 256 * 1024, 2);
  auto mount = MountProcess::Start(dir, {.source = "file://" + dir.Sub("ram")});
  ASSERT_TRUE(mount.ok()) << mount.status();
  auto status = (*mount)->Status();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ((*status)["regions"].size(), 2u);
  EXPECT_EQ((*status)["regions"][0]["name"], "mem0");
  EXPECT_EQ((*status)["regions"][1]["name"], "pc.bios");
  const std::string want(b.begin(), b.end());
  EXPECT_EQ(RunInChild([&] { return ReadsAs((*mount)->File("pc.bios"), 0, want); }), 0);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// Child: every way of writing through `mnt` fails with EROFS.
int EveryWriteIsRefused(const std::string& mnt, const std::string& region) {
  const std::string file = mnt + "/" + region;
  std::vector<std::string> failures;
  auto expect_erofs = [&](const std::string& what, int rc) {
    if (rc == 0 || errno != EROFS) {
      failures.push_back(absl::StrCat(what, ": ", rc == 0 ? "succeeded" : std::strerror(errno)));
    }
  };
  auto open_rc = [](const std::string& path, int flags) {
    int fd = open(path.c_str(), flags, 0600);
    if (fd >= 0) close(fd);
    return fd >= 0 ? 0 : -1;
  };
  expect_erofs("open O_WRONLY", open_rc(file, O_WRONLY));
  expect_erofs("open O_RDWR", open_rc(file, O_RDWR));
  expect_erofs("open O_TRUNC", open_rc(file, O_RDONLY | O_TRUNC));
  expect_erofs("create", open_rc(mnt + "/new", O_WRONLY | O_CREAT));
  expect_erofs("truncate", truncate(file.c_str(), 0));
  expect_erofs("chmod", chmod(file.c_str(), 0644));
  expect_erofs("utimes", utimensat(AT_FDCWD, file.c_str(), nullptr, 0));
  expect_erofs("mknod", mknod((mnt + "/node").c_str(), S_IFREG | 0600, 0));
  expect_erofs("mkdir", mkdir((mnt + "/dir").c_str(), 0700));
  expect_erofs("unlink", unlink(file.c_str()));
  expect_erofs("rmdir", rmdir((mnt + "/views").c_str()));
  expect_erofs("rename", rename(file.c_str(), (mnt + "/renamed").c_str()));
  expect_erofs("symlink", symlink("x", (mnt + "/link").c_str()));
  expect_erofs("link", link(file.c_str(), (mnt + "/hard").c_str()));
  expect_erofs("setxattr", setxattr(file.c_str(), "user.x", "1", 1, 0));
  expect_erofs("open a view for writing", open_rc(mnt + "/views/manifest.json", O_WRONLY));
  expect_erofs("create in views/", open_rc(mnt + "/views/new", O_WRONLY | O_CREAT));
  for (const std::string& f : failures) std::fprintf(stderr, "not EROFS: %s\n", f.c_str());
  return failures.empty() ? 0 : 1;
}

TEST(Forensics, EveryWritePathFailsWithErofs) {
  TempDir dir;
  const std::string ram = dir.Sub("mem0");
  std::vector<uint8_t> image = WriteImage(ram, 4 * kMiB, 5);
  const std::string sha = Sha256Of(ram);
  auto mount = MountProcess::Start(dir, {.source = "file://" + ram, .extra_args = {"--read-only"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  EXPECT_EQ(RunInChild([&] { return EveryWriteIsRefused((*mount)->mountpoint(), "mem0"); }), 0);
  EXPECT_EQ((*mount)->Unmount(), 0);
  EXPECT_EQ(Sha256Of(ram), sha);
}

TEST(Forensics, ViewsAreReadOnlyOnAWritableMountToo) {
  TempDir dir;
  // A RAM-backing mount (no source) with a layout: views/ follows the
  // region QEMU would create, and refuses writes by itself.
  auto mount = MountProcess::Start(dir, {.extra_args = {"--machine", "q35"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string mnt = (*mount)->mountpoint();
  int code = RunInChild([&] {
    int fd = open((mnt + "/mem0").c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return Fail("create mem0");
    if (ftruncate(fd, 64 * kMiB) != 0) return Fail("ftruncate");
    const std::string page = Marker(42);
    if (pwrite(fd, page.data(), kPage, 5 * kMiB) != kPage) return Fail("pwrite");
    close(fd);
    if (ReadsAs(mnt + "/views/physmem.raw", 5 * kMiB, page) != 0) return 2;
    for (const char* v : {"physmem.raw", "vmcore.elf", "manifest.json"}) {
      errno = 0;
      int w = open((mnt + "/views/" + v).c_str(), O_WRONLY);
      if (w >= 0 || errno != EROFS) return Fail(absl::StrCat("open views/", v, " for writing"));
    }
    if (open((mnt + "/views/x").c_str(), O_WRONLY | O_CREAT, 0600) >= 0 || errno != EROFS) {
      return Fail("create in views/");
    }
    return 0;
  });
  EXPECT_EQ(code, 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

// A sparse 4 GiB RAM file with marker pages either side of each boundary
// the layouts care about.
class FourGigabyteViews : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ram_ = dir_.Sub("mem0");
    int fd = open(ram_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(4 * kGiB)), 0);
    for (uint64_t off : marks_) {
      ASSERT_EQ(pwrite(fd, Marker(off).data(), kPage, static_cast<off_t>(off)), kPage);
    }
    close(fd);
  }
  TempDir dir_;
  std::string ram_;
  const std::vector<uint64_t> marks_ = {0,        2 * kGiB - kPage, 2 * kGiB, 3 * kGiB - kPage,
                                        3 * kGiB, 4 * kGiB - kPage};
};

TEST_P(FourGigabyteViews, MatchTheX86Layout) {
  const std::string machine = GetParam();
  const uint64_t below = machine == "pc" ? 3 * kGiB : 2 * kGiB;
  auto mount = MountProcess::Start(
      dir_, {.source = "file://" + ram_, .extra_args = {"--read-only", "--machine", machine}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string views = (*mount)->mountpoint() + "/views/";
  int code = RunInChild([&] {
    struct stat st;
    if (stat((views + "physmem.raw").c_str(), &st) != 0) return Fail("stat physmem.raw");
    if (static_cast<uint64_t>(st.st_size) != 4 * kGiB + (4 * kGiB - below)) return 10;
    // Each marker at its guest-physical address.
    for (uint64_t off : marks_) {
      const uint64_t gpa = off < below ? off : off - below + 4 * kGiB;
      if (ReadsAs(views + "physmem.raw", gpa, Marker(off)) != 0) return 11;
    }
    if (ReadsAs(views + "physmem.raw", below, std::string(kPage, '\0')) != 0) return 12;
    // SEEK_DATA / SEEK_HOLE: RAM is data, [below, 4 GiB) the one hole.
    int fd = open((views + "physmem.raw").c_str(), O_RDONLY);
    if (lseek(fd, 0, SEEK_HOLE) != static_cast<off_t>(below)) return 13;
    if (lseek(fd, static_cast<off_t>(below), SEEK_DATA) != static_cast<off_t>(4 * kGiB)) return 14;
    if (lseek(fd, static_cast<off_t>(below + 7), SEEK_HOLE) != static_cast<off_t>(below + 7))
      return 15;
    if (lseek(fd, static_cast<off_t>(4 * kGiB + 1), SEEK_HOLE) != st.st_size) return 16;
    if (lseek(fd, st.st_size, SEEK_DATA) != -1 || errno != ENXIO) return 17;
    close(fd);
    // LiME: a header per range, inclusive end, then the bytes.
    struct {
      uint32_t magic, version;
      uint64_t start, end;
      uint8_t reserved[8];
    } h[2];
    fd = open((views + "physmem.lime").c_str(), O_RDONLY);
    if (pread(fd, &h[0], 32, 0) != 32 ||
        pread(fd, &h[1], 32, static_cast<off_t>(32 + below)) != 32) {
      return Fail("pread lime");
    }
    close(fd);
    if (h[0].magic != 0x4C694D45 || h[0].version != 1 || h[0].start != 0 || h[0].end != below - 1) {
      return 18;
    }
    if (h[1].magic != 0x4C694D45 || h[1].start != 4 * kGiB || h[1].end != 8 * kGiB - below - 1) {
      return 19;
    }
    if (ReadsAs(views + "physmem.lime", 64 + below, Marker(below)) != 0) return 20;
    // The ELF core: PT_NOTE, then a PT_LOAD per range with its bytes.
    fd = open((views + "vmcore.elf").c_str(), O_RDONLY);
    Elf64_Ehdr eh;
    Elf64_Phdr ph[3];
    if (pread(fd, &eh, sizeof eh, 0) != sizeof eh || eh.e_type != ET_CORE || eh.e_phnum != 3)
      return 21;
    if (pread(fd, ph, sizeof ph, static_cast<off_t>(eh.e_phoff)) != sizeof ph) return 22;
    close(fd);
    if (ph[0].p_type != PT_NOTE || ph[1].p_type != PT_LOAD || ph[2].p_type != PT_LOAD) return 23;
    if (ph[1].p_paddr != 0 || ph[1].p_filesz != below || ph[2].p_paddr != 4 * kGiB ||
        ph[2].p_filesz != 4 * kGiB - below) {
      return 24;
    }
    if (ReadsAs(views + "vmcore.elf", ph[2].p_offset, Marker(below)) != 0) return 25;
    if (ReadsAs(views + "vmcore.elf", ph[1].p_offset + below - kPage, Marker(below - kPage)) != 0) {
      return 26;
    }
    json m = json::parse(Slurp(views + "manifest.json"), nullptr, false);
    if (m["machine"] != machine || m["layout"]["ram_region"] != "mem0" ||
        m["layout"]["ranges"].size() != 2 || m["views"].size() != 3) {
      std::fprintf(stderr, "manifest: %s\n", m.dump().c_str());
      return 27;
    }
    return 0;
  });
  EXPECT_EQ(code, 0) << (*mount)->log();
  // Only what was read was fetched: a few pages of a 4 GiB file.
  auto region = (*mount)->RegionStatus("mem0");
  ASSERT_TRUE(region.ok());
  EXPECT_LT((*region)["bytes_fetched"].get<uint64_t>(), 64 * kMiB);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

INSTANTIATE_TEST_SUITE_P(Machines, FourGigabyteViews, ::testing::Values("pc", "q35"));

std::string PageOf(char c) { return std::string(kPage, c); }

// pc.ram of 64 pages in three passes (later copies win), a BIOS block and
// a block whose name has slashes; the machine is q35.
QemuStreamBuilder ThreePassStream() {
  QemuStreamBuilder b;
  b.Header("pc-q35-7.2")
      .RamStart(
          {{"pc.ram", 64 * kPage}, {"pc.bios", 4 * kPage}, {"/rom@etc/acpi/tables", 2 * kPage}});
  b.RamPart();
  for (uint64_t p = 0; p < 64; p += 2) b.Page("pc.ram", p * kPage, PageOf('a' + p % 20));
  b.Page("pc.bios", 3 * kPage, PageOf('B')).Page("/rom@etc/acpi/tables", kPage, PageOf('T'));
  b.Eos().RamPart().Page("pc.ram", 10 * kPage, PageOf('X')).Zero("pc.ram", 12 * kPage).Eos();
  b.RamPart(true).Page("pc.ram", 63 * kPage, PageOf('Z')).Eos();
  b.Device("timer", std::string(24, '\x07')).Device("cpu", "state", 4).End();
  return b;
}

TEST(Forensics, AQemuStreamIsIndexedAndServedByBlock) {
  TempDir dir;
  const std::string stream = dir.Sub("vm.state");
  std::ofstream(stream, std::ios::binary) << ThreePassStream().bytes();
  std::string ram(64 * kPage, '\0');
  for (uint64_t p = 0; p < 64; p += 2) std::memset(&ram[p * kPage], 'a' + p % 20, kPage);
  std::memset(&ram[10 * kPage], 'X', kPage);
  std::memset(&ram[12 * kPage], 0, kPage);
  std::memset(&ram[63 * kPage], 'Z', kPage);
  auto mount = MountProcess::Start(
      dir, {.source = "qemu-stream://" + stream, .extra_args = {"--read-only"}});
  ASSERT_TRUE(mount.ok()) << mount.status();
  auto status = (*mount)->Status();
  ASSERT_TRUE(status.ok());
  ASSERT_EQ((*status)["regions"].size(), 3u);
  EXPECT_EQ((*status)["regions"][2]["name"], "%2From@etc%2Facpi%2Ftables");
  const std::string mnt = (*mount)->mountpoint();
  int code = RunInChild([&] {
    if (ReadsAs(mnt + "/pc.ram", 0, ram) != 0) return 1;
    if (ReadsAs(mnt + "/pc.bios", 0, PageOf('\0') + PageOf('\0') + PageOf('\0') + PageOf('B'))) {
      return 2;
    }
    if (ReadsAs(mnt + "/%2From@etc%2Facpi%2Ftables", kPage, PageOf('T')) != 0) return 3;
    // The layout comes from the stream: q35, all 256 KiB below 4 GiB.
    if (ReadsAs(mnt + "/views/physmem.raw", 0, ram) != 0) return 4;
    json m = json::parse(Slurp(mnt + "/views/manifest.json"), nullptr, false);
    if (m["machine"] != "q35" || m["qemu_machine"] != "pc-q35-7.2" ||
        m["layout"]["ram_region"] != "pc.ram") {
      std::fprintf(stderr, "manifest: %s\n", m.dump().c_str());
      return 5;
    }
    return 0;
  });
  EXPECT_EQ(code, 0) << (*mount)->log();
  EXPECT_EQ((*mount)->Unmount(), 0);
}

TEST(Forensics, ATruncatedOrCorruptStreamIsAOneLineError) {
  TempDir dir;
  std::filesystem::create_directories(dir.Sub("mnt"));
  const std::string full = ThreePassStream().bytes();
  struct Case {
    std::string name, bytes, mention;
  };
  std::string corrupt = full;
  corrupt[corrupt.find("timer") - 10] = '\x09';  // the type of the first device section
  std::vector<Case> cases = {
      {"cut in RAM", full.substr(0, full.size() / 2), "truncated"},
      {"cut in device state", full.substr(0, full.find("cpu") + 2), "truncated"},
      {"bad magic", "QEVX" + full.substr(4), "not a QEMU migration stream"},
      {"corrupt", corrupt, "corrupt at byte"},
      {"empty", "", "not a QEMU migration stream"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string stream = dir.Sub("bad.state");
    std::ofstream(stream, std::ios::binary | std::ios::trunc) << c.bytes;
    for (bool foreground : {false, true}) {
      std::vector<std::string> argv = {
          LazyramdPath(),      "mount",    dir.Sub("mnt"),           "--control",
          dir.Sub("ctl.sock"), "--source", "qemu-stream://" + stream};
      if (foreground) argv.push_back("--foreground");
      RunResult r = lazyram::testing::Run(argv);
      ExpectOneErrorLine(r, {c.mention, stream});
      EXPECT_FALSE(IsMounted(dir.Sub("mnt")));
      ForceUnmount(dir.Sub("mnt"));
    }
  }
  ExpectOneErrorLine(lazyram::testing::Run({LazyramdPath(), "mount", dir.Sub("mnt"), "--source",
                                            "qemu-stream://" + dir.Sub("missing")}),
                     {dir.Sub("missing")});
  ExpectOneErrorLine(lazyram::testing::Run({LazyramdPath(), "mount", dir.Sub("mnt"), "--source",
                                            "file://" + dir.Sub("missing")}),
                     {dir.Sub("missing")});
  ExpectOneErrorLine(
      lazyram::testing::Run({LazyramdPath(), "mount", dir.Sub("mnt"), "--machine", "isapc"}),
      {"isapc"});
}

TEST(Forensics, APageServerMountWithoutForensicFlagsHasNoViews) {
  TempDir dir;
  WriteImage(dir.Sub("img"), kMiB, 3);
  auto server = PageServerProcess::Start({"mem0=" + dir.Sub("img")});
  ASSERT_TRUE(server.ok()) << server.status();
  auto mount = MountProcess::Start(dir, {.source = (*server)->url()});
  ASSERT_TRUE(mount.ok()) << mount.status();
  const std::string mnt = (*mount)->mountpoint();
  EXPECT_EQ(RunInChild([&] {
              std::vector<std::string> names;
              for (const auto& e : std::filesystem::directory_iterator(mnt)) {
                names.push_back(e.path().filename());
              }
              return names == std::vector<std::string>{"mem0"} ? 0 : 1;
            }),
            0);
  EXPECT_EQ((*mount)->Unmount(), 0);
}

}  // namespace
}  // namespace lazyram::testing
