#include "daemon/core/state_file.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace lazyram {
namespace {

using ::testing::HasSubstr;

class StateFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = "/tmp/lazyram-state-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    absl::StatusOr<UniqueFd> lock = StateFile::LockStore(dir_);
    ASSERT_TRUE(lock.ok()) << lock.status();
    lock_ = *std::move(lock);
  }
  void TearDown() override {
    lock_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string StatePath(const std::string& name) const {
    return dir_ + "/.lazyram-state/" + name + ".state";
  }
  // Overwrites header bytes, as another boot or a damaged disk would.
  void Patch(const std::string& name, off_t offset, const void* bytes, size_t n) const {
    int fd = open(StatePath(name).c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, bytes, n, offset), static_cast<ssize_t>(n));
    close(fd);
  }
  static StateFile::Identity Id(uint64_t size = 100 * 4096 + 7) {
    return {"mem0", size, (size + 4095) / 4096, true, 0x1234, 2};
  }

  std::string dir_;
  UniqueFd lock_;
};

TEST_F(StateFileTest, StatesSurviveAndInFlightPagesReturnToAbsent) {
  {
    absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, Id());
    ASSERT_TRUE(file.ok()) << file.status();
    EXPECT_FALSE((*file)->restored());
    absl::StatusOr<PageMap> map = (*file)->MapPages(101, PageState::kAbsent);
    ASSERT_TRUE(map.ok()) << map.status();
    ASSERT_TRUE((*file)->Commit(PageState::kAbsent).ok());
    map->Set(0, PageState::kPresent);
    map->Set(50, PageState::kDirty);
    map->Set(51, PageState::kFetching);
    map->Set(100, PageState::kZero);
  }  // as if killed: never synced, never marked clean
  absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->restored());
  EXPECT_FALSE((*file)->was_clean());
  EXPECT_EQ((*file)->boot_id(), StateFile::CurrentBootId());
  EXPECT_TRUE((*file)->CheckUsable(dir_).ok());  // same boot: a killed daemon
  const StateFile::Identity& id = (*file)->identity();
  EXPECT_EQ(id.size, Id().size);
  EXPECT_EQ(id.capacity_pages, 101u);
  EXPECT_TRUE(id.has_source);
  EXPECT_EQ(id.source_id, 0x1234u);
  EXPECT_EQ(id.index, 2u);
  EXPECT_EQ((*file)->base(), PageState::kAbsent);
  absl::StatusOr<PageMap> map = (*file)->MapPages(101, (*file)->base());
  ASSERT_TRUE(map.ok()) << map.status();
  (*file)->Recover(&*map);
  EXPECT_EQ(map->Get(0), PageState::kPresent);
  EXPECT_EQ(map->Get(50), PageState::kDirty);
  EXPECT_EQ(map->Get(51), PageState::kAbsent);
  EXPECT_EQ(map->Get(100), PageState::kZero);
  EXPECT_EQ(map->Count(PageState::kAbsent), 98u);
  EXPECT_EQ(map->LocalCount(), 3u);
}

TEST_F(StateFileTest, UncommittedFileDoesNotExist) {
  absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, Id());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(absl::IsNotFound(StateFile::Open(dir_, "mem0").status()));
}

TEST_F(StateFileTest, CleanMarkAndSizeAreKept) {
  {
    StateFile::Identity id = Id();
    id.has_source = false;
    id.capacity_pages = 1000;
    absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, id);
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_TRUE((*file)->MapPages(101, PageState::kZero).ok());
    ASSERT_TRUE((*file)->Commit(PageState::kZero).ok());
    ASSERT_TRUE((*file)->SetSize(500 * 4096).ok());
    ASSERT_TRUE((*file)->Sync().ok());
    ASSERT_TRUE((*file)->MarkClean().ok());
  }
  absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->was_clean());
  EXPECT_EQ((*file)->identity().size, 500u * 4096);
  EXPECT_EQ((*file)->identity().capacity_pages, 1000u);
  EXPECT_FALSE((*file)->identity().has_source);
  EXPECT_EQ((*file)->base(), PageState::kZero);
  // Taking it into use marks it unclean again, durably.
  ASSERT_TRUE((*file)->Commit((*file)->base()).ok());
  file = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_FALSE((*file)->was_clean());
}

TEST_F(StateFileTest, UncleanFileOfAnotherBootIsRefused) {
  {
    absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, Id());
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_TRUE((*file)->MapPages(101, PageState::kAbsent).ok());
    ASSERT_TRUE((*file)->Commit(PageState::kAbsent).ok());
  }
  const char other_boot[] = "00000000-0000-0000-0000-000000000000";
  Patch("mem0", 48, other_boot, sizeof other_boot);
  absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::Status usable = (*file)->CheckUsable(dir_);
  EXPECT_EQ(usable.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(usable.message()), HasSubstr("not shut down cleanly"));
  EXPECT_THAT(std::string(usable.message()), HasSubstr("empty the directory"));
  // Clean when that boot ended: trusted.
  const uint8_t clean = 1;
  Patch("mem0", 45, &clean, 1);
  file = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->CheckUsable(dir_).ok());
}

TEST_F(StateFileTest, DamagedHeadersAreDataLoss) {
  {
    absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, Id());
    ASSERT_TRUE(file.ok()) << file.status();
    ASSERT_TRUE((*file)->MapPages(101, PageState::kAbsent).ok());
    ASSERT_TRUE((*file)->Commit(PageState::kAbsent).ok());
  }
  const uint8_t bad_base = 9;
  Patch("mem0", 44, &bad_base, 1);
  EXPECT_EQ(StateFile::Open(dir_, "mem0").status().code(), absl::StatusCode::kDataLoss);
  Patch("mem0", 0, "NOTSTATE", 8);
  absl::Status s = StateFile::Open(dir_, "mem0").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), HasSubstr("bad magic"));
  ASSERT_EQ(truncate(StatePath("mem0").c_str(), 10), 0);
  EXPECT_EQ(StateFile::Open(dir_, "mem0").status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(StateFileTest, SecondLockOfTheStoreIsRefused) {
  absl::StatusOr<UniqueFd> again = StateFile::LockStore(dir_);
  ASSERT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.status().message()),
              HasSubstr("in use by another lazyramd (pid " + std::to_string(getpid()) + ")"));
  lock_.reset();
  EXPECT_TRUE(StateFile::LockStore(dir_).ok());
}

// A 1 TiB region's state file costs (almost) no disk and maps at once.
TEST_F(StateFileTest, HugeRegionStaysSparse) {
  StateFile::Identity id = Id(uint64_t{1} << 40);
  absl::StatusOr<std::unique_ptr<StateFile>> file = StateFile::Create(dir_, id);
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<PageMap> map = (*file)->MapPages(id.capacity_pages, PageState::kAbsent);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_TRUE((*file)->Commit(PageState::kAbsent).ok());
  map->Set(12345678, PageState::kPresent);
  struct stat st;
  ASSERT_EQ(stat(StatePath("mem0").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 4096 + (uint64_t{1} << 28));
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{1} << 20);
  absl::StatusOr<std::unique_ptr<StateFile>> again = StateFile::Open(dir_, "mem0");
  ASSERT_TRUE(again.ok()) << again.status();
  absl::StatusOr<PageMap> restored = (*again)->MapPages(id.capacity_pages, (*again)->base());
  ASSERT_TRUE(restored.ok()) << restored.status();
  (*again)->Recover(&*restored);
  EXPECT_EQ(restored->Count(PageState::kPresent), 1u);
  EXPECT_EQ(restored->Get(12345678), PageState::kPresent);
}

TEST(SourceIdTest, StableAndSensitiveToTheTable) {
  std::vector<protocol::RegionInfo> a = {{"mem0", 1 << 20, {}}, {"pc.ram", 4096, {{0, 1}}}};
  std::vector<protocol::RegionInfo> b = a;
  EXPECT_EQ(SourceId(a), SourceId(b));
  EXPECT_NE(SourceId(a), 0u);
  b[0].size += 4096;
  EXPECT_NE(SourceId(a), SourceId(b));
  b = a;
  b[1].name = "pc.raw";
  EXPECT_NE(SourceId(a), SourceId(b));
  b = a;
  b[1].zero_extents.clear();
  EXPECT_NE(SourceId(a), SourceId(b));
}

}  // namespace
}  // namespace lazyram
