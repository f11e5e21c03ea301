// StoreDir: the lock on a --store DIR and the per-region rules (create,
// resume, refuse), on real directories with Regions on top.
#include "daemon/store/store_dir.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "daemon/core/fake_page_source.h"
#include "daemon/core/region.h"
#include "daemon/core/state_file.h"

namespace lazyram {
namespace {

using protocol::kPageSize;
using ::testing::HasSubstr;

constexpr uint64_t kSize = 10 * kPageSize + 5;  // a partial last page
constexpr uint64_t kPages = 11;

class StoreDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/store_dir_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::vector<protocol::RegionInfo> Table(uint64_t size = kSize,
                                                 std::vector<protocol::ZeroExtent> zeros = {}) {
    return {{"mem0", size, std::move(zeros)}};
  }

  std::unique_ptr<StoreDir> OpenDir() {
    absl::StatusOr<std::unique_ptr<StoreDir>> dir = StoreDir::Open(dir_);
    EXPECT_TRUE(dir.ok()) << dir.status();
    return dir.ok() ? *std::move(dir) : nullptr;
  }

  // Attaches and creates the Region (which names a new state file).
  std::unique_ptr<Region> MakeRegion(StoreDir& dir, Region::Options ro) {
    absl::StatusOr<std::unique_ptr<Store>> store = dir.Attach(&ro);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create(std::move(ro), *std::move(store));
    EXPECT_TRUE(region.ok()) << region.status();
    return region.ok() ? *std::move(region) : nullptr;
  }

  static absl::Status WritePage(Region& region, uint64_t page, uint8_t fill) {
    const std::vector<uint8_t> bytes(kPageSize, fill);
    absl::Notification done;
    absl::Status status;
    region.Write(page * kPageSize, bytes, [&](absl::Status s) {
      status = s;
      done.Notify();
    });
    if (!done.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      return absl::DeadlineExceededError("write never completed");
    }
    return status;
  }

  std::string dir_;
  FakeSource source_{std::vector<uint8_t>(kPages * kPageSize, 0x5a), /*region_index=*/0};
};

TEST_F(StoreDirTest, SecondOpenOfALockedDirectoryFailsUntilUnlock) {
  std::unique_ptr<StoreDir> first = OpenDir();
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->path(), dir_);
  absl::StatusOr<std::unique_ptr<StoreDir>> second = StoreDir::Open(dir_);
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  first->Unlock();
  absl::StatusOr<std::unique_ptr<StoreDir>> third = StoreDir::Open(dir_);
  ASSERT_TRUE(third.ok()) << third.status();
  // Destroying the holder lets the next one in too.
  third->reset();
  EXPECT_TRUE(StoreDir::Open(dir_).ok());
}

TEST_F(StoreDirTest, OpenOfAMissingDirectoryFails) {
  EXPECT_FALSE(StoreDir::Open(dir_ + "/none").ok());
}

TEST_F(StoreDirTest, AttachCreatesARegionsFilesAndLaterResumesThem) {
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    ASSERT_TRUE(dir->CheckSource(Table()).ok());
    Region::Options ro{.name = "mem0", .index = 0, .size = kSize, .source = &source_};
    absl::StatusOr<std::unique_ptr<Store>> store = dir->Attach(&ro);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_NE(ro.state, nullptr);
    EXPECT_FALSE(ro.state->restored());
    EXPECT_EQ(ro.state->identity().size, kSize);
    EXPECT_EQ(ro.state->identity().capacity_pages, kPages);
    EXPECT_TRUE(ro.state->identity().has_source);
    // The data file, whole pages, empty.
    EXPECT_EQ((*store)->Size(), kPages * kPageSize);
    EXPECT_EQ(std::filesystem::file_size(dir_ + "/mem0"), kPages * kPageSize);
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create(std::move(ro), *std::move(store));
    ASSERT_TRUE(region.ok()) << region.status();
    ASSERT_TRUE(WritePage(**region, 2, 0xc3).ok());
    ASSERT_TRUE((*region)->Close().ok());
    EXPECT_TRUE(
        std::filesystem::exists(absl::StrCat(dir_, "/", StateFile::kDirName, "/mem0.state")));
    region->reset();
    dir->Unlock();
  }
  // The next daemon, same source: both files resumed.
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  ASSERT_TRUE(dir->CheckSource(Table()).ok());
  Region::Options ro{.name = "mem0", .index = 0, .size = kSize, .source = &source_};
  absl::StatusOr<std::unique_ptr<Store>> store = dir->Attach(&ro);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_NE(ro.state, nullptr);
  EXPECT_TRUE(ro.state->restored());
  std::vector<uint8_t> got(kPageSize);
  ASSERT_TRUE((*store)->Read(2 * kPageSize, std::span(got)).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(kPageSize, 0xc3));
  absl::StatusOr<std::unique_ptr<Region>> region = Region::Create(std::move(ro), *std::move(store));
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_EQ((*region)->pages_restored(), 1u);
  EXPECT_TRUE((*region)->IsLocal(2 * kPageSize, kPageSize));
  EXPECT_FALSE((*region)->IsLocal(3 * kPageSize, kPageSize));
  EXPECT_EQ(source_.fetches(), 0u);
}

TEST_F(StoreDirTest, ResumeWithoutTheDataFileIsRefused) {
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    ASSERT_TRUE(dir->CheckSource(Table()).ok());
    std::unique_ptr<Region> region =
        MakeRegion(*dir, {.name = "mem0", .index = 0, .size = kSize, .source = &source_});
    ASSERT_NE(region, nullptr);
    ASSERT_TRUE(region->Close().ok());
  }
  ASSERT_TRUE(std::filesystem::remove(dir_ + "/mem0"));
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  ASSERT_TRUE(dir->CheckSource(Table()).ok());
  Region::Options ro{.name = "mem0", .index = 0, .size = kSize, .source = &source_};
  absl::StatusOr<std::unique_ptr<Store>> store = dir->Attach(&ro);
  EXPECT_TRUE(absl::IsFailedPrecondition(store.status())) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr("not its data file"));
}

TEST_F(StoreDirTest, RegionNamedLikeTheStateFolderIsRefused) {
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  Region::Options ro{.name = StateFile::kDirName, .index = 0, .size = kSize};
  EXPECT_TRUE(absl::IsInvalidArgument(dir->Attach(&ro).status()));
}

TEST_F(StoreDirTest, StoreOfAnotherSourceIsRefused) {
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    ASSERT_TRUE(dir->CheckSource(Table()).ok());
    std::unique_ptr<Region> region =
        MakeRegion(*dir, {.name = "mem0", .index = 0, .size = kSize, .source = &source_});
    ASSERT_NE(region, nullptr);
    ASSERT_TRUE(region->Close().ok());
  }
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  // A source without the store's region.
  absl::Status other = dir->CheckSource({{"other", kSize, {}}});
  EXPECT_TRUE(absl::IsFailedPrecondition(other)) << other;
  EXPECT_THAT(other.message(), HasSubstr("'mem0'"));
  // Same name, another size: the table passes, the region does not.
  ASSERT_TRUE(dir->CheckSource(Table(kSize + kPageSize)).ok());
  Region::Options bigger{.name = "mem0", .index = 0, .size = kSize + kPageSize, .source = &source_};
  absl::Status attach = dir->Attach(&bigger).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(attach)) << attach;
  EXPECT_THAT(attach.message(), HasSubstr("belongs to another source"));
  // Same name and size, other zero extents: another source's table.
  ASSERT_TRUE(dir->CheckSource(Table(kSize, {{0, 1}})).ok());
  Region::Options zeros{.name = "mem0", .index = 0, .size = kSize, .source = &source_};
  attach = dir->Attach(&zeros).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(attach)) << attach;
  EXPECT_THAT(attach.message(), HasSubstr("belongs to another source"));
  // Nor may a mount without a source use it.
  absl::StatusOr<std::vector<Region::Options>> sourceless = dir->SourcelessRegions(kSize);
  EXPECT_TRUE(absl::IsFailedPrecondition(sourceless.status())) << sourceless.status();
  // The right table still gets it back.
  ASSERT_TRUE(dir->CheckSource(Table()).ok());
  Region::Options same{.name = "mem0", .index = 0, .size = kSize, .source = &source_};
  absl::StatusOr<std::unique_ptr<Store>> store = dir->Attach(&same);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE(same.state->restored());
}

TEST_F(StoreDirTest, SourcelessRegionsListsWhatWasCreatedInOrder) {
  constexpr uint64_t kMax = 64 * kPageSize;
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    absl::StatusOr<std::vector<Region::Options>> none = dir->SourcelessRegions(kMax);
    ASSERT_TRUE(none.ok()) << none.status();
    EXPECT_TRUE(none->empty());
    // Created in an order that is not the names' order.
    std::unique_ptr<Region> b =
        MakeRegion(*dir, {.name = "zeta", .index = 0, .size = 3 * kPageSize, .max_size = kMax});
    std::unique_ptr<Region> a =
        MakeRegion(*dir, {.name = "alpha", .index = 1, .size = kPageSize, .max_size = kMax});
    ASSERT_NE(b, nullptr);
    ASSERT_NE(a, nullptr);
    ASSERT_TRUE(WritePage(*b, 1, 0x11).ok());
    // Writes past the end grow a region without a source.
    ASSERT_TRUE(WritePage(*a, 4, 0x22).ok());
    EXPECT_EQ(a->size(), 5 * kPageSize);
    ASSERT_TRUE(b->Close().ok());
    ASSERT_TRUE(a->Close().ok());
  }
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  // A source may not use a store a mount without one filled.
  absl::Status with_source = dir->CheckSource({{"zeta", 3 * kPageSize, {}}});
  EXPECT_TRUE(absl::IsFailedPrecondition(with_source)) << with_source;
  EXPECT_THAT(with_source.message(), HasSubstr("without a source"));

  absl::StatusOr<std::vector<Region::Options>> regions = dir->SourcelessRegions(kMax);
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 2u);
  EXPECT_EQ((*regions)[0].name, "zeta");
  EXPECT_EQ((*regions)[0].index, 0u);
  EXPECT_EQ((*regions)[0].size, 3 * kPageSize);
  EXPECT_EQ((*regions)[1].name, "alpha");
  EXPECT_EQ((*regions)[1].index, 1u);
  EXPECT_EQ((*regions)[1].size, 5 * kPageSize);
  for (Region::Options& ro : *regions) {
    EXPECT_EQ(ro.max_size, kMax);
    EXPECT_EQ(ro.source, nullptr);
    ASSERT_NE(ro.state, nullptr);
    EXPECT_TRUE(ro.state->restored());
  }
  std::unique_ptr<Region> alpha = MakeRegion(*dir, std::move((*regions)[1]));
  ASSERT_NE(alpha, nullptr);
  EXPECT_TRUE(alpha->IsLocal(4 * kPageSize, kPageSize));
  std::vector<uint8_t> got(kPageSize);
  ASSERT_TRUE(alpha->store().Read(4 * kPageSize, std::span(got)).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(kPageSize, 0x22));
}

// Unlink and rename (docs/store.md, "Unlink and rename"): every step a
// kill can interrupt leaves a store that restores the old or the new state.
TEST_F(StoreDirTest, RemoveAndRenameOfRegionsWithoutASource) {
  constexpr uint64_t kMax = 64 * kPageSize;
  const std::string state_dir = absl::StrCat(dir_, "/", StateFile::kDirName);
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    std::unique_ptr<Region> a =
        MakeRegion(*dir, {.name = "a", .index = 0, .size = 0, .max_size = kMax});
    std::unique_ptr<Region> b =
        MakeRegion(*dir, {.name = "b", .index = 1, .size = 0, .max_size = kMax});
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    ASSERT_TRUE(a->Resize(2 * kPageSize).ok());
    ASSERT_TRUE(WritePage(*a, 1, 0x11).ok());
    ASSERT_TRUE(b->Resize(kPageSize).ok());
    ASSERT_TRUE(dir->Remove("b").ok());
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/b"));
    EXPECT_FALSE(std::filesystem::exists(state_dir + "/b.state"));
    ASSERT_TRUE(dir->Rename(a->state_file(), "a", "c").ok());
    a->set_name("c");
    EXPECT_FALSE(std::filesystem::exists(dir_ + "/a"));
    EXPECT_TRUE(std::filesystem::exists(dir_ + "/c"));
    // The open region keeps working on its renamed files.
    ASSERT_TRUE(WritePage(*a, 0, 0x22).ok());
    ASSERT_TRUE(a->Close().ok());
    ASSERT_TRUE(b->Close().ok());
  }
  // A kill between a rename's steps: the data's second name exists, the
  // state file still has the old name (a data file without a state file
  // is ignored) — and a new region of that name must not truncate it.
  ASSERT_EQ(link((dir_ + "/c").c_str(), (dir_ + "/d").c_str()), 0);
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  absl::StatusOr<std::vector<Region::Options>> regions = dir->SourcelessRegions(kMax);
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 1u);
  EXPECT_EQ((*regions)[0].name, "c");
  std::unique_ptr<Region> c = MakeRegion(*dir, std::move((*regions)[0]));
  ASSERT_NE(c, nullptr);
  std::unique_ptr<Region> d =
      MakeRegion(*dir, {.name = "d", .index = 1, .size = 0, .max_size = kMax});
  ASSERT_NE(d, nullptr);
  std::vector<uint8_t> got(kPageSize);
  ASSERT_TRUE(c->store().Read(kPageSize, std::span(got)).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(kPageSize, 0x11));
  ASSERT_TRUE(c->store().Read(0, std::span(got)).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(kPageSize, 0x22));
  ASSERT_TRUE(c->Close().ok());
  ASSERT_TRUE(d->Close().ok());
}

TEST_F(StoreDirTest, LocalRegionsOfAMountWithASource) {
  constexpr uint64_t kMax = 64 * kPageSize;
  {
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    ASSERT_TRUE(dir->CheckSource(Table()).ok());
    std::unique_ptr<Region> local =
        MakeRegion(*dir, {.name = "hot", .index = 1, .size = 0, .max_size = kMax});
    ASSERT_NE(local, nullptr);
    EXPECT_FALSE(local->state_file()->identity().has_source);
    EXPECT_NE(local->state_file()->identity().source_id, 0u);
    ASSERT_TRUE(local->Close().ok());
  }
  {
    // The same source takes it back as a local region.
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    ASSERT_TRUE(dir->CheckSource(Table()).ok());
    absl::StatusOr<std::vector<Region::Options>> regions = dir->LocalRegions(kMax);
    ASSERT_TRUE(regions.ok()) << regions.status();
    ASSERT_EQ(regions->size(), 1u);
    EXPECT_EQ((*regions)[0].name, "hot");
  }
  {
    // Another source, or none, refuses it.
    std::unique_ptr<StoreDir> dir = OpenDir();
    ASSERT_NE(dir, nullptr);
    absl::Status other = dir->CheckSource(Table(2 * kSize));
    EXPECT_TRUE(absl::IsFailedPrecondition(other)) << other;
  }
  std::unique_ptr<StoreDir> dir = OpenDir();
  ASSERT_NE(dir, nullptr);
  EXPECT_FALSE(dir->SourcelessRegions(kMax).ok());
}

}  // namespace
}  // namespace lazyram
