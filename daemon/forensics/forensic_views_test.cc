#include "daemon/forensics/forensic_views.h"

#include <elf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "absl/synchronization/notification.h"
#include "daemon/core/region.h"
#include "daemon/engine/engine.h"
#include "daemon/local/file_source.h"
#include "daemon/local/local_page_source.h"
#include "daemon/store/fd_store.h"

namespace lazyram {
namespace {

constexpr uint64_t kPage = 4096;
constexpr uint64_t kGiB = uint64_t{1} << 30;

// A 4 GiB sparse RAM file with a marker page at each of `marks` offsets,
// served through a real LocalPageSource into a Region.
class ForensicViewsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazyram-views-XXXXXX";
    dir_ = mkdtemp(tmpl);
    const std::string file = dir_ + "/mem0";
    int fd = open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(4 * kGiB)), 0);
    for (uint64_t off : marks_) {
      const std::string page = Marker(off);
      ASSERT_EQ(pwrite(fd, page.data(), kPage, static_cast<off_t>(off)), kPage);
    }
    close(fd);
    auto files = FileSource::Open(file);
    ASSERT_TRUE(files.ok()) << files.status();
    auto source = LocalPageSource::Start(*std::move(files));
    ASSERT_TRUE(source.ok());
    source_ = *std::move(source);
    const protocol::RegionInfo& info = source_->locator().regions()[0];
    auto store = FdStore::CreateMemory("mem0", info.page_count() * kPage);
    ASSERT_TRUE(store.ok());
    auto region = Region::Create(
        {"mem0", 0, info.size, source_.get(), info.zero_extents, info.size}, *std::move(store));
    ASSERT_TRUE(region.ok());
    ram_ = *std::move(region);
  }
  void TearDown() override {
    if (source_ != nullptr) source_->Shutdown();
    std::filesystem::remove_all(dir_);
  }

  static std::string Marker(uint64_t off) {
    std::string page(kPage, '\0');
    for (size_t i = 0; i < kPage; i += 16)
      std::snprintf(&page[i], 16, "%014llx", (unsigned long long)off);
    return page;
  }

  static std::string Read(const MemoryView& view, uint64_t offset, uint64_t length) {
    absl::Notification done;
    absl::StatusOr<std::vector<uint8_t>> got;
    view.Read(offset, length, [&](absl::StatusOr<std::vector<uint8_t>> b) {
      got = std::move(b);
      done.Notify();
    });
    done.WaitForNotification();
    EXPECT_TRUE(got.ok()) << got.status();
    if (!got.ok()) return "";
    return std::string(got->begin(), got->end());
  }

  std::string dir_;
  const std::vector<uint64_t> marks_ = {0, 0xa0000, 3 * kGiB - kPage, 3 * kGiB, 4 * kGiB - kPage};
  std::unique_ptr<LocalPageSource> source_;
  std::unique_ptr<Region> ram_;
};

TEST_F(ForensicViewsTest, PhysmemRawPutsTheHighRamAboveFourGigabytes) {
  const GuestLayout layout = GuestLayout::ForX86(MachineType::kPc, 4 * kGiB);
  auto raw = ForensicViews::BuildPhysmemRaw(layout, ram_.get());
  ASSERT_EQ(raw->size(), 5 * kGiB);
  EXPECT_EQ(Read(*raw, 0, kPage), Marker(0));
  EXPECT_EQ(Read(*raw, 0xa0000, kPage), Marker(0xa0000));
  // Across the start of the hole: RAM then zeros, in one read.
  EXPECT_EQ(Read(*raw, 3 * kGiB - kPage, 2 * kPage),
            Marker(3 * kGiB - kPage) + std::string(kPage, '\0'));
  EXPECT_EQ(Read(*raw, 4 * kGiB, kPage), Marker(3 * kGiB));
  EXPECT_EQ(Read(*raw, 5 * kGiB - kPage, 2 * kPage), Marker(4 * kGiB - kPage));  // clipped at EOF
  EXPECT_EQ(Read(*raw, 5 * kGiB, kPage), "");
  // Unaligned, crossing pages.
  EXPECT_EQ(Read(*raw, 4 * kGiB - 10, 20), std::string(10, '\0') + Marker(3 * kGiB).substr(0, 10));

  EXPECT_EQ(raw->SeekData(0), 0u);
  EXPECT_EQ(raw->SeekHole(0), 3 * kGiB);
  EXPECT_EQ(raw->SeekData(3 * kGiB), 4 * kGiB);
  EXPECT_EQ(raw->SeekHole(3 * kGiB + 5), 3 * kGiB + 5);
  EXPECT_EQ(raw->SeekHole(4 * kGiB), 5 * kGiB);
  // Only the pages read were fetched; the rest of the file is untouched.
  EXPECT_LE(ram_->Stats().bytes_fetched, 8 * kPage);
}

TEST_F(ForensicViewsTest, LimeHasAHeaderPerRange) {
  const GuestLayout layout = GuestLayout::ForX86(MachineType::kQ35, 4 * kGiB);
  auto lime = ForensicViews::BuildLime(layout, ram_.get());
  ASSERT_EQ(lime->size(), 4 * kGiB + 2 * ForensicViews::kLimeHeaderSize);
  struct {
    uint32_t magic, version;
    uint64_t start, end;
    uint8_t reserved[8];
  } h;
  static_assert(sizeof h == ForensicViews::kLimeHeaderSize);
  std::string bytes = Read(*lime, 0, sizeof h);
  std::memcpy(&h, bytes.data(), sizeof h);
  EXPECT_EQ(h.magic, 0x4C694D45u);
  EXPECT_EQ(h.version, 1u);
  EXPECT_EQ(h.start, 0u);
  EXPECT_EQ(h.end, 2 * kGiB - 1);
  const uint64_t second = sizeof h + 2 * kGiB;
  bytes = Read(*lime, second, sizeof h);
  std::memcpy(&h, bytes.data(), sizeof h);
  EXPECT_EQ(h.start, 4 * kGiB);
  EXPECT_EQ(h.end, 6 * kGiB - 1);
  EXPECT_EQ(Read(*lime, sizeof h, kPage), Marker(0));
  EXPECT_EQ(Read(*lime, second + sizeof h + kGiB, kPage), Marker(3 * kGiB));
  EXPECT_EQ(lime->SeekHole(0), lime->size());
}

TEST_F(ForensicViewsTest, VmcoreIsAnElfCoreWithOneLoadPerRange) {
  const GuestLayout layout = GuestLayout::ForX86(MachineType::kPc, 4 * kGiB);
  auto elf = ForensicViews::BuildElf(layout, ram_.get(), "{\"machine\":\"pc\"}");
  const std::string head = Read(*elf, 0, kPage);
  Elf64_Ehdr eh;
  std::memcpy(&eh, head.data(), sizeof eh);
  EXPECT_EQ(std::memcmp(eh.e_ident, ELFMAG, SELFMAG), 0);
  EXPECT_EQ(eh.e_ident[EI_CLASS], ELFCLASS64);
  EXPECT_EQ(eh.e_type, ET_CORE);
  EXPECT_EQ(eh.e_machine, EM_X86_64);
  ASSERT_EQ(eh.e_phnum, 3);
  Elf64_Phdr ph[3];
  std::memcpy(ph, head.data() + eh.e_phoff, sizeof ph);
  EXPECT_EQ(ph[0].p_type, PT_NOTE);
  Elf64_Nhdr nh;
  std::memcpy(&nh, head.data() + ph[0].p_offset, sizeof nh);
  EXPECT_EQ(std::string(head.data() + ph[0].p_offset + sizeof nh), "LAZYRAM");
  EXPECT_EQ(nh.n_type, ForensicViews::kNoteType);
  const uint64_t want[2][2] = {{0, 3 * kGiB}, {4 * kGiB, kGiB}};
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(ph[i].p_type, PT_LOAD);
    EXPECT_EQ(ph[i].p_paddr, want[i - 1][0]);
    EXPECT_EQ(ph[i].p_filesz, want[i - 1][1]);
    EXPECT_EQ(ph[i].p_memsz, want[i - 1][1]);
    EXPECT_EQ(ph[i].p_offset % kPage, 0u);
  }
  EXPECT_EQ(ph[2].p_offset, ph[1].p_offset + 3 * kGiB);
  EXPECT_EQ(elf->size(), ph[2].p_offset + kGiB);
  EXPECT_EQ(Read(*elf, ph[1].p_offset + 0xa0000, kPage), Marker(0xa0000));
  EXPECT_EQ(Read(*elf, ph[2].p_offset, kPage), Marker(3 * kGiB));
  EXPECT_EQ(Read(*elf, ph[2].p_offset + kGiB - kPage, kPage), Marker(4 * kGiB - kPage));
}

// Like the control socket's replies (control_request_test.cc, found by
// tests/fuzz/control_fuzzer), the manifest names regions whose names need
// not be UTF-8; serializing it must not throw.
TEST(ForensicManifestTest, ARegionNameThatIsNotUtf8IsReplaced) {
  // --machine gives a writable mount views/ too (a read-only one refuses
  // to create regions).
  Engine::Options options;
  options.machine = MachineType::kPc;
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_TRUE((*engine)->CreateRegion("odd\xff").ok());
  ASSERT_NE((*engine)->views(), nullptr);
  const nlohmann::json manifest =
      nlohmann::json::parse((*engine)->views()->ManifestJson(), nullptr, false);
  ASSERT_TRUE(manifest.is_object());
  EXPECT_EQ(manifest["regions"][0]["name"], "odd\xef\xbf\xbd");
}

}  // namespace
}  // namespace lazyram
