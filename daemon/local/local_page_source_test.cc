#include "daemon/local/local_page_source.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "daemon/core/region.h"
#include "daemon/local/file_source.h"
#include "daemon/local/qemu_stream_index.h"
#include "daemon/store/fd_store.h"
#include "tests/qemu_stream_builder.h"

namespace lazyram {
namespace {

constexpr uint64_t kPage = 4096;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/lazyram-local-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, const std::string& bytes, uint64_t size) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(size)), 0);
  close(fd);
}

// Regions over `source`'s locator, as the engine builds them.
std::vector<std::unique_ptr<Region>> MakeRegions(LocalPageSource* source) {
  std::vector<std::unique_ptr<Region>> out;
  const auto& infos = source->locator().regions();
  for (size_t i = 0; i < infos.size(); ++i) {
    auto store = FdStore::CreateMemory(infos[i].name, infos[i].page_count() * kPage);
    EXPECT_TRUE(store.ok());
    auto region = Region::Create({infos[i].name, static_cast<uint32_t>(i), infos[i].size, source,
                                  infos[i].zero_extents, infos[i].size},
                                 *std::move(store));
    EXPECT_TRUE(region.ok()) << region.status();
    out.push_back(*std::move(region));
  }
  return out;
}

absl::Status EnsureLocal(Region* r, uint64_t offset, uint64_t length) {
  absl::Notification done;
  absl::Status status;
  r->EnsureLocal(offset, length, protocol::Priority::kDemand, [&](absl::Status s) {
    status = s;
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

std::string ReadAll(Region* r) {
  EXPECT_TRUE(EnsureLocal(r, 0, r->size()).ok());
  std::string out(r->size(), '\0');
  EXPECT_TRUE(
      r->store().Read(0, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size())).ok());
  return out;
}

TEST(LocalPageSource, ReadsARawFileWithHolesAndAPartialLastPage) {
  TempDir dir;
  std::string bytes(3 * kPage + 100, '\0');
  std::mt19937 rng(7);
  for (size_t i = kPage; i < bytes.size(); ++i) bytes[i] = static_cast<char>(rng());
  std::memset(bytes.data() + 2 * kPage, 0, kPage);  // written zeros: detected
  const uint64_t size = 64 * kPage + 100;           // the rest: a hole
  WriteFile(dir.Sub("mem0"), bytes, size);
  bytes.resize(size, '\0');
  auto files = FileSource::Open(dir.Sub("mem0"));
  ASSERT_TRUE(files.ok()) << files.status();
  auto source = LocalPageSource::Start(*std::move(files));
  ASSERT_TRUE(source.ok()) << source.status();
  auto regions = MakeRegions(source->get());
  ASSERT_EQ(regions.size(), 1u);
  EXPECT_EQ(regions[0]->name(), "mem0");
  EXPECT_EQ(regions[0]->size(), size);
  EXPECT_EQ(ReadAll(regions[0].get()), bytes);
  const RegionStats stats = regions[0]->Stats();
  EXPECT_TRUE(stats.complete);
  EXPECT_EQ(stats.pages_present, 2u);  // pages 1 and 3 (with its 100 bytes)
  EXPECT_EQ(stats.bytes_fetched, 2 * kPage);
}

TEST(LocalPageSource, ADirectoryIsOneRegionPerNonEmptyFile) {
  TempDir dir;
  WriteFile(dir.Sub("b"), "bee", 2 * kPage);
  WriteFile(dir.Sub("a"), "ant", kPage);
  WriteFile(dir.Sub("empty"), "", 0);
  std::filesystem::create_directory(dir.Sub("sub"));
  auto files = FileSource::Open(dir.path());
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ((*files)->regions().size(), 2u);
  EXPECT_EQ((*files)->regions()[0].name, "a");
  EXPECT_EQ((*files)->regions()[1].name, "b");
  EXPECT_FALSE(FileSource::Open(dir.Sub("empty")).ok());
  EXPECT_FALSE(FileSource::Open(dir.Sub("missing")).ok());
  EXPECT_FALSE(FileSource::Open(dir.Sub("sub")).ok());
}

TEST(LocalPageSource, AFileThatShrankFailsTheFetch) {
  TempDir dir;
  WriteFile(dir.Sub("mem0"), std::string(8 * kPage, 'x'), 8 * kPage);
  auto files = FileSource::Open(dir.Sub("mem0"));
  ASSERT_TRUE(files.ok());
  auto source = LocalPageSource::Start(*std::move(files));
  ASSERT_TRUE(source.ok());
  auto regions = MakeRegions(source->get());
  ASSERT_EQ(truncate(dir.Sub("mem0").c_str(), 2 * kPage), 0);
  const absl::Status s = EnsureLocal(regions[0].get(), 4 * kPage, kPage);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
  EXPECT_TRUE(EnsureLocal(regions[0].get(), 0, kPage).ok());
}

TEST(LocalPageSource, ServesAStreamsPagesAndManyConcurrentFetches) {
  TempDir dir;
  testing::QemuStreamBuilder b;
  const uint64_t pages = 300;
  b.Header().RamStart({{"pc.ram", pages * kPage}, {"pc.bios", 2 * kPage}});
  std::string expected(pages * kPage, '\0');
  b.RamPart();
  for (uint64_t p = 0; p < pages; ++p) {
    if (p % 3 == 0) continue;
    std::string page(kPage, static_cast<char>('A' + p % 26));
    std::memcpy(page.data(), &p, sizeof p);
    b.Page("pc.ram", p * kPage, page);
    if (p % 5 == 0) b.Page("pc.bios", kPage, std::string(kPage, 'q'));
    std::memcpy(expected.data() + p * kPage, page.data(), kPage);
  }
  b.Eos().RamPart(true).Zero("pc.ram", 7 * kPage, 0xee).Eos().End();
  std::memset(expected.data() + 7 * kPage, 0xee, kPage);
  WriteFile(dir.Sub("stream"), b.bytes(), b.bytes().size());
  auto index = QemuStreamIndex::Open(dir.Sub("stream"));
  ASSERT_TRUE(index.ok()) << index.status();
  auto source = LocalPageSource::Start(*std::move(index));
  ASSERT_TRUE(source.ok());
  auto regions = MakeRegions(source->get());
  ASSERT_EQ(regions.size(), 2u);
  // Many small reads at once: every one answered once, with the right bytes.
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      for (uint64_t p = t; p < pages; p += 4)
        EXPECT_TRUE(EnsureLocal(regions[0].get(), p * kPage, 1).ok());
    });
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(ReadAll(regions[0].get()), expected);
  EXPECT_EQ(ReadAll(regions[1].get()), std::string(kPage, '\0') + std::string(kPage, 'q'));
}

TEST(LocalPageSource, FetchesAfterShutdownFail) {
  TempDir dir;
  WriteFile(dir.Sub("mem0"), "x", kPage);
  auto files = FileSource::Open(dir.Sub("mem0"));
  ASSERT_TRUE(files.ok());
  auto source = LocalPageSource::Start(*std::move(files));
  ASSERT_TRUE(source.ok());
  (*source)->Shutdown();
  absl::Status status;
  (*source)->Fetch(0, 0, 1, protocol::Priority::kDemand,
                   [&](absl::StatusOr<FetchedPages> p) { status = p.status(); });
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
}

}  // namespace
}  // namespace lazyram
