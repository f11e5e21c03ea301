#include "daemon/store/fd_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lazyram {
namespace {

constexpr uint64_t kPage = 4096;

std::vector<uint8_t> Pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 13 + (i >> 8));
  return v;
}

std::vector<uint8_t> ReadBytes(Store& store, uint64_t offset, size_t n) {
  std::vector<uint8_t> out(n, 0xAA);  // not zero, so a missed fill shows
  absl::Status s = store.Read(offset, out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

bool AllZero(const std::vector<uint8_t>& v) {
  for (uint8_t b : v) {
    if (b != 0) return false;
  }
  return true;
}

// A fresh directory under TMPDIR, removed with everything in it at the end.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/fd_store_test.XXXXXX");
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

enum class Kind { kMemory, kFile };

class FdStoreTest : public testing::TestWithParam<Kind> {
 protected:
  std::unique_ptr<FdStore> Make(uint64_t size) {
    absl::StatusOr<std::unique_ptr<FdStore>> store =
        GetParam() == Kind::kMemory ? FdStore::CreateMemory("test", size)
                                    : FdStore::CreateFile(dir_.path(), "region", size);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  TempDir dir_;
};

TEST_P(FdStoreTest, WriteReadRoundTrip) {
  ASSERT_FALSE(dir_.path().empty());
  std::unique_ptr<FdStore> store = Make(16 * kPage);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Size(), 16 * kPage);
  EXPECT_GE(store->fd(), 0);
  const std::vector<uint8_t> data = Pattern(3 * kPage + 123, 7);
  ASSERT_TRUE(store->Write(kPage + 55, data).ok());
  EXPECT_EQ(ReadBytes(*store, kPage + 55, data.size()), data);
  // A read that straddles the written range sees zeros around it.
  std::vector<uint8_t> around = ReadBytes(*store, kPage, data.size() + 100);
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(around.begin(), around.begin() + 55)));
  EXPECT_TRUE(std::equal(data.begin(), data.end(), around.begin() + 55));
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(around.begin() + 55 + data.size(), around.end())));
}

TEST_P(FdStoreTest, UnwrittenBytesReadZero) {
  std::unique_ptr<FdStore> store = Make(8 * kPage);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(AllZero(ReadBytes(*store, 0, 8 * kPage)));
  EXPECT_TRUE(AllZero(ReadBytes(*store, 3 * kPage + 17, 100)));
}

TEST_P(FdStoreTest, PunchMakesRangeReadZero) {
  std::unique_ptr<FdStore> store = Make(8 * kPage);
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> data = Pattern(8 * kPage, 1);
  ASSERT_TRUE(store->Write(0, data).ok());
  ASSERT_TRUE(store->Punch(2 * kPage, 3 * kPage).ok());
  std::vector<uint8_t> all = ReadBytes(*store, 0, 8 * kPage);
  for (uint64_t i = 0; i < 8 * kPage; ++i) {
    const bool punched = i >= 2 * kPage && i < 5 * kPage;
    ASSERT_EQ(all[i], punched ? 0 : data[i]) << "byte " << i;
  }
  // An unaligned punch zeroes exactly its bytes.
  ASSERT_TRUE(store->Punch(6 * kPage + 10, 20).ok());
  all = ReadBytes(*store, 6 * kPage, kPage);
  for (uint64_t i = 0; i < kPage; ++i) {
    const bool punched = i >= 10 && i < 30;
    ASSERT_EQ(all[i], punched ? 0 : data[6 * kPage + i]) << "byte " << i;
  }
  EXPECT_TRUE(store->Punch(0, 0).ok());
  EXPECT_EQ(store->Size(), 8 * kPage);  // punching keeps the size
}

TEST_P(FdStoreTest, ResizeGrowsWithZeros) {
  std::unique_ptr<FdStore> store = Make(2 * kPage);
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> data = Pattern(2 * kPage, 9);
  ASSERT_TRUE(store->Write(0, data).ok());
  ASSERT_TRUE(store->Resize(6 * kPage).ok());
  EXPECT_EQ(store->Size(), 6 * kPage);
  EXPECT_EQ(ReadBytes(*store, 0, 2 * kPage), data);
  EXPECT_TRUE(AllZero(ReadBytes(*store, 2 * kPage, 4 * kPage)));

  // Shrinking drops the bytes; growing again brings zeros, not old data.
  ASSERT_TRUE(store->Resize(kPage + 1).ok());
  EXPECT_EQ(store->Size(), kPage + 1);
  ASSERT_TRUE(store->Resize(2 * kPage).ok());
  std::vector<uint8_t> page1 = ReadBytes(*store, kPage, kPage);
  EXPECT_EQ(page1[0], data[kPage]);
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(page1.begin() + 1, page1.end())));
}

TEST_P(FdStoreTest, ReadPastTheEndReadsZero) {
  std::unique_ptr<FdStore> store = Make(kPage);
  ASSERT_NE(store, nullptr);
  const std::vector<uint8_t> data = Pattern(kPage, 3);
  ASSERT_TRUE(store->Write(0, data).ok());
  std::vector<uint8_t> straddle = ReadBytes(*store, kPage - 10, 100);
  EXPECT_TRUE(std::equal(data.end() - 10, data.end(), straddle.begin()));
  EXPECT_TRUE(AllZero(std::vector<uint8_t>(straddle.begin() + 10, straddle.end())));
  EXPECT_TRUE(AllZero(ReadBytes(*store, 10 * kPage, kPage)));
}

TEST_P(FdStoreTest, EmptyStore) {
  std::unique_ptr<FdStore> store = Make(0);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Size(), 0u);
  EXPECT_TRUE(AllZero(ReadBytes(*store, 0, 64)));
  ASSERT_TRUE(store->Resize(kPage).ok());
  const std::vector<uint8_t> data = Pattern(kPage, 5);
  ASSERT_TRUE(store->Write(0, data).ok());
  EXPECT_EQ(ReadBytes(*store, 0, kPage), data);
}

INSTANTIATE_TEST_SUITE_P(Kinds, FdStoreTest, testing::Values(Kind::kMemory, Kind::kFile),
                         [](const testing::TestParamInfo<Kind>& info) {
                           return info.param == Kind::kMemory ? "Memory" : "File";
                         });

TEST(FdStoreFileTest, CreateFileTruncatesStaleContent) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  {
    absl::StatusOr<std::unique_ptr<FdStore>> old = FdStore::CreateFile(dir.path(), "r", 4 * kPage);
    ASSERT_TRUE(old.ok()) << old.status();
    ASSERT_TRUE((*old)->Write(0, Pattern(4 * kPage, 11)).ok());
  }
  absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateFile(dir.path(), "r", 2 * kPage);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Size(), 2 * kPage);
  EXPECT_TRUE(AllZero(ReadBytes(**store, 0, 4 * kPage)));
  struct stat st;
  ASSERT_EQ(stat((dir.path() + "/r").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), 2 * kPage);
  // Sparse: nothing was written, so nothing is allocated.
  EXPECT_EQ(st.st_blocks, 0);
}

TEST(FdStoreFileTest, FileHoldsTheStoresBytes) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateFile(dir.path(), "r", kPage);
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<uint8_t> data = Pattern(kPage, 2);
  ASSERT_TRUE((*store)->Write(0, data).ok());
  std::vector<uint8_t> via_fd(kPage);
  ASSERT_EQ(pread((*store)->fd(), via_fd.data(), kPage, 0), static_cast<ssize_t>(kPage));
  EXPECT_EQ(via_fd, data);
}

TEST(FdStoreFileTest, MissingDirectoryIsAnError) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string missing = dir.path() + "/no/such/dir";
  absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateFile(missing, "r", kPage);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound) << store.status();
  EXPECT_NE(store.status().message().find(missing), absl::string_view::npos) << store.status();
}

// store_bytes in status: a memfd holds what was written and gives a
// punched range back at once.
TEST(FdStoreMemoryTest, AllocatedBytesFollowWritesAndPunches) {
  absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateMemory("alloc", 64 * kPage);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->AllocatedBytes(), 0u);
  ASSERT_TRUE((*store)->Write(0, Pattern(16 * kPage, 3)).ok());
  EXPECT_EQ((*store)->AllocatedBytes(), 16 * kPage);
  ASSERT_TRUE((*store)->Punch(4 * kPage, 8 * kPage).ok());
  EXPECT_EQ((*store)->AllocatedBytes(), 8 * kPage);
  ASSERT_TRUE((*store)->Punch(0, 64 * kPage).ok());
  EXPECT_EQ((*store)->AllocatedBytes(), 0u);
}

}  // namespace
}  // namespace lazyram
