// DirectFileStore: O_DIRECT page I/O, the bounce path for unaligned
// requests, holes, size and sync. The O_DIRECT tests need a disk
// filesystem (tmpfs has no O_DIRECT), so they run under /var/tmp and skip,
// saying why, where O_DIRECT is refused there too.
#include "daemon/store/direct_file_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lazyram {
namespace {

constexpr uint64_t kPage = 4096;

std::vector<uint8_t> Random(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng() | 1);  // never zero
  return v;
}

// `n` bytes of an aligned buffer, as the FUSE path hands them over.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n)
      : size(n),
        data(static_cast<uint8_t*>(std::aligned_alloc(kPage, (n + kPage - 1) / kPage * kPage))) {}
  ~AlignedBuffer() { std::free(data); }
  std::span<uint8_t> span() { return {data, size}; }
  size_t size;
  uint8_t* data;
};

class TempDir {
 public:
  explicit TempDir(const std::string& base) {
    std::string tmpl = absl::StrCat(base, "/direct_file_store_test.XXXXXX");
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class DirectFileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "cannot make a directory under /var/tmp";
    absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
        DirectFileStore::Create(dir_.path(), "mem0", kSize);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    if (!store_->direct()) {
      GTEST_SKIP() << "the filesystem of /var/tmp refuses O_DIRECT (tmpfs?): the O_DIRECT paths "
                      "cannot be tested here";
    }
  }

  std::vector<uint8_t> ReadBack(uint64_t offset, size_t n) {
    std::vector<uint8_t> out(n, 0xAA);
    absl::Status s = store_->Read(offset, out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }
  // What the file holds, read with buffered I/O past the store.
  std::vector<uint8_t> FileBytes(uint64_t offset, size_t n) {
    std::vector<uint8_t> out(n, 0xAA);
    FILE* f = std::fopen(absl::StrCat(dir_.path(), "/mem0").c_str(), "rb");
    EXPECT_NE(f, nullptr);
    if (f == nullptr) return out;
    std::fseek(f, static_cast<long>(offset), SEEK_SET);
    EXPECT_EQ(std::fread(out.data(), 1, n, f), n);
    std::fclose(f);
    return out;
  }

  static constexpr uint64_t kSize = 4 << 20;  // 1024 pages
  TempDir dir_{"/var/tmp"};
  std::unique_ptr<DirectFileStore> store_;
};

TEST_F(DirectFileStoreTest, CreatesASparseFileOfTheSizeThatReadsAsZero) {
  EXPECT_EQ(store_->Size(), kSize);
  EXPECT_EQ(std::filesystem::file_size(dir_.path() + "/mem0"), kSize);
  struct stat st;
  ASSERT_EQ(stat((dir_.path() + "/mem0").c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0);  // nothing allocated yet
  // Replies cannot use the fd: libfuse's splice path is not aligned.
  EXPECT_EQ(store_->fd(), -1);
  EXPECT_EQ(ReadBack(0, 3 * kPage), std::vector<uint8_t>(3 * kPage, 0));
}

TEST_F(DirectFileStoreTest, AlignedPagesRoundTrip) {
  AlignedBuffer in(64 * kPage);
  const std::vector<uint8_t> bytes = Random(in.size, 1);
  std::memcpy(in.data, bytes.data(), bytes.size());
  ASSERT_TRUE(store_->Write(16 * kPage, in.span()).ok());
  AlignedBuffer out(64 * kPage);
  std::memset(out.data, 0xAA, out.size);
  ASSERT_TRUE(store_->Read(16 * kPage, out.span()).ok());
  EXPECT_EQ(std::memcmp(out.data, bytes.data(), bytes.size()), 0);
  EXPECT_EQ(FileBytes(16 * kPage, bytes.size()), bytes);
  // The neighbours stay zero.
  EXPECT_EQ(ReadBack(15 * kPage, kPage), std::vector<uint8_t>(kPage, 0));
  EXPECT_EQ(ReadBack(80 * kPage, kPage), std::vector<uint8_t>(kPage, 0));
}

TEST_F(DirectFileStoreTest, UnalignedRequestsKeepTheRestOfTheirPages) {
  // The whole first 8 pages known, then unaligned writes over them.
  std::vector<uint8_t> want = Random(8 * kPage, 2);
  ASSERT_TRUE(store_->Write(0, want).ok());
  struct Case {
    uint64_t offset;
    size_t length;
  };
  // Inside one page; across a page boundary; aligned start, unaligned end;
  // unaligned start, aligned end; spanning several pages.
  for (const Case c : {Case{100, 50}, Case{kPage - 10, 30}, Case{2 * kPage, 1000},
                       Case{3 * kPage + 7, kPage - 7}, Case{4 * kPage + 1, 3 * kPage + 2}}) {
    const std::vector<uint8_t> data = Random(c.length, c.offset);
    ASSERT_TRUE(store_->Write(c.offset, data).ok()) << c.offset;
    std::memcpy(want.data() + c.offset, data.data(), data.size());
    EXPECT_EQ(ReadBack(c.offset, c.length), data) << c.offset;
  }
  EXPECT_EQ(ReadBack(0, want.size()), want);
  EXPECT_EQ(FileBytes(0, want.size()), want);
  // Unaligned reads of every shape, from a vector (not page-aligned memory).
  for (uint64_t offset : {uint64_t{1}, kPage - 1, uint64_t{5000}}) {
    for (size_t length : {size_t{1}, size_t{kPage}, size_t{3 * kPage + 17}}) {
      const std::vector<uint8_t> got = ReadBack(offset, length);
      EXPECT_EQ(got, std::vector<uint8_t>(want.begin() + offset, want.begin() + offset + length))
          << offset << "+" << length;
    }
  }
}

TEST_F(DirectFileStoreTest, AlignedOffsetFromUnalignedMemoryRoundTrips) {
  // The offset and length are whole pages but the buffer is not aligned:
  // O_DIRECT would refuse it, so it goes through the bounce buffer.
  std::vector<uint8_t> backing(2 * kPage + 1);
  std::span<uint8_t> unaligned(backing.data() + 1, 2 * kPage);
  if (reinterpret_cast<uintptr_t>(unaligned.data()) % kPage == 0) {
    unaligned = std::span<uint8_t>(backing.data(), 2 * kPage);
  }
  const std::vector<uint8_t> bytes = Random(2 * kPage, 3);
  std::memcpy(unaligned.data(), bytes.data(), bytes.size());
  ASSERT_TRUE(store_->Write(10 * kPage, unaligned).ok());
  std::memset(unaligned.data(), 0, unaligned.size());
  ASSERT_TRUE(store_->Read(10 * kPage, unaligned).ok());
  EXPECT_EQ(std::memcmp(unaligned.data(), bytes.data(), bytes.size()), 0);
}

TEST_F(DirectFileStoreTest, RequestsLargerThanTheBounceBufferRoundTrip) {
  // 3 MiB at an odd offset: several passes of the 1 MiB bounce buffer.
  const uint64_t offset = 3 * kPage + 123;
  const std::vector<uint8_t> bytes = Random(3 << 20, 4);
  ASSERT_TRUE(store_->Write(offset, bytes).ok());
  EXPECT_EQ(ReadBack(offset, bytes.size()), bytes);
  EXPECT_EQ(FileBytes(offset, bytes.size()), bytes);
  EXPECT_EQ(ReadBack(offset - 123, 123), std::vector<uint8_t>(123, 0));
}

TEST_F(DirectFileStoreTest, PunchedPagesReadAsZero) {
  const std::vector<uint8_t> bytes = Random(8 * kPage, 5);
  ASSERT_TRUE(store_->Write(0, bytes).ok());
  ASSERT_TRUE(store_->Punch(2 * kPage, 3 * kPage).ok());
  ASSERT_TRUE(store_->Punch(0, 0).ok());  // nothing
  std::vector<uint8_t> want = bytes;
  std::memset(want.data() + 2 * kPage, 0, 3 * kPage);
  EXPECT_EQ(ReadBack(0, want.size()), want);
  EXPECT_EQ(FileBytes(0, want.size()), want);
  EXPECT_EQ(store_->Size(), kSize);  // a punch keeps the size
}

TEST_F(DirectFileStoreTest, ResizeSetsTheSizeAndNewBytesReadAsZero) {
  const std::vector<uint8_t> bytes = Random(2 * kPage, 6);
  ASSERT_TRUE(store_->Write(kSize - 2 * kPage, bytes).ok());
  ASSERT_TRUE(store_->Resize(kSize - kPage).ok());
  EXPECT_EQ(store_->Size(), kSize - kPage);
  EXPECT_EQ(std::filesystem::file_size(dir_.path() + "/mem0"), kSize - kPage);
  ASSERT_TRUE(store_->Resize(kSize + 4 * kPage).ok());
  EXPECT_EQ(store_->Size(), kSize + 4 * kPage);
  // The page that was cut off comes back as zero, its neighbour kept.
  EXPECT_EQ(ReadBack(kSize - 2 * kPage, kPage),
            std::vector<uint8_t>(bytes.begin(), bytes.begin() + kPage));
  EXPECT_EQ(ReadBack(kSize - kPage, 5 * kPage), std::vector<uint8_t>(5 * kPage, 0));
}

// Store::Resize takes any size, and bytes up to it read back. A file that
// ends inside a page makes an O_DIRECT read of that page come back short.
TEST_F(DirectFileStoreTest, SizeInsideAPageReadsBackUpToTheEnd) {
  const std::vector<uint8_t> bytes = Random(2 * kPage, 8);
  ASSERT_TRUE(store_->Write(0, bytes).ok());
  ASSERT_TRUE(store_->Resize(kPage + 100).ok());
  EXPECT_EQ(store_->Size(), kPage + 100);
  std::vector<uint8_t> want(bytes.begin(), bytes.begin() + kPage + 100);
  EXPECT_EQ(ReadBack(0, kPage + 100), want);
  EXPECT_EQ(ReadBack(kPage, 100), std::vector<uint8_t>(want.begin() + kPage, want.end()));
  // An aligned buffer for the whole last page: the bytes, then zeros.
  AlignedBuffer out(kPage);
  std::memset(out.data, 0xAA, kPage);
  absl::Status s = store_->Read(kPage, out.span());
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(std::memcmp(out.data, bytes.data() + kPage, 100), 0);
  EXPECT_EQ(std::vector<uint8_t>(out.data + 100, out.data + kPage),
            std::vector<uint8_t>(kPage - 100, 0));
}

TEST_F(DirectFileStoreTest, SyncSucceedsAndOpenKeepsTheBytes) {
  const std::vector<uint8_t> bytes = Random(4 * kPage, 7);
  ASSERT_TRUE(store_->Write(100 * kPage, bytes).ok());
  ASSERT_TRUE(store_->Sync().ok());
  store_.reset();
  // Open keeps what is there (a resumed store)...
  absl::StatusOr<std::unique_ptr<DirectFileStore>> opened =
      DirectFileStore::Open(dir_.path(), "mem0", kSize);
  ASSERT_TRUE(opened.ok()) << opened.status();
  store_ = *std::move(opened);
  EXPECT_TRUE(store_->direct());
  EXPECT_EQ(ReadBack(100 * kPage, bytes.size()), bytes);
  store_.reset();
  // ...Create empties the file first.
  absl::StatusOr<std::unique_ptr<DirectFileStore>> created =
      DirectFileStore::Create(dir_.path(), "mem0", kSize);
  ASSERT_TRUE(created.ok()) << created.status();
  store_ = *std::move(created);
  EXPECT_EQ(ReadBack(100 * kPage, bytes.size()), std::vector<uint8_t>(bytes.size(), 0));
}

TEST_F(DirectFileStoreTest, ThreadsWritingDisjointUnalignedRangesDoNotMixUp) {
  // Each thread has its own bounce buffer; writers of different pages do
  // not need a lock.
  constexpr int kThreads = 4;
  constexpr size_t kEach = 16 * kPage;
  std::vector<std::vector<uint8_t>> data;
  for (int t = 0; t < kThreads; ++t) data.push_back(Random(kEach - 10, 100 + t));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        EXPECT_TRUE(store_->Write(t * kEach + 5, data[t]).ok());
        std::vector<uint8_t> got(data[t].size());
        EXPECT_TRUE(store_->Read(t * kEach + 5, got).ok());
        EXPECT_EQ(got, data[t]);
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

// Where a filesystem has no O_DIRECT (tmpfs), the store falls back to
// buffered I/O and says so by direct() and a real fd.
TEST(DirectFileStoreFallbackTest, TmpfsGetsBufferedIo) {
  struct statfs fs;
  constexpr long kTmpfsMagic = 0x01021994;
  if (statfs("/dev/shm", &fs) != 0 || fs.f_type != kTmpfsMagic) {
    GTEST_SKIP() << "no tmpfs at /dev/shm to try the buffered fallback on";
  }
  TempDir dir("/dev/shm");
  ASSERT_FALSE(dir.path().empty());
  absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
      DirectFileStore::Create(dir.path(), "mem0", 8 * kPage);
  ASSERT_TRUE(store.ok()) << store.status();
  if ((*store)->direct()) GTEST_SKIP() << "this kernel's tmpfs accepts O_DIRECT";
  EXPECT_GE((*store)->fd(), 0);
  const std::vector<uint8_t> bytes = Random(kPage + 3, 9);
  ASSERT_TRUE((*store)->Write(7, bytes).ok());
  std::vector<uint8_t> got(bytes.size());
  ASSERT_TRUE((*store)->Read(7, got).ok());
  EXPECT_EQ(got, bytes);
  ASSERT_TRUE((*store)->Punch(0, 8 * kPage).ok());
  ASSERT_TRUE((*store)->Read(7, got).ok());
  EXPECT_EQ(got, std::vector<uint8_t>(bytes.size(), 0));
}

}  // namespace
}  // namespace lazyram
