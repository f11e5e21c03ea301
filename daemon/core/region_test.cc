#include "daemon/core/region.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/core/fake_page_source.h"
#include "daemon/core/state_file.h"
#include "daemon/store/direct_file_store.h"
#include "daemon/store/fd_store.h"

namespace lazyram {
namespace {

using protocol::kPageSize;
using protocol::PageFlag;
using protocol::Priority;

constexpr uint32_t kRegionIndex = 3;

// Source bytes: every page distinct and non-zero, except the listed pages.
std::vector<uint8_t> MakeImage(uint64_t pages, std::vector<uint64_t> zero_pages = {}) {
  std::vector<uint8_t> image(pages * kPageSize);
  for (uint64_t i = 0; i < image.size(); ++i) {
    image[i] = static_cast<uint8_t>(1 + (i % 251) + (i / kPageSize) * 7);
    if (image[i] == 0) image[i] = 0x5A;
  }
  for (uint64_t p : zero_pages) {
    std::fill_n(image.begin() + static_cast<ptrdiff_t>(p * kPageSize), kPageSize, 0);
  }
  return image;
}

std::vector<uint8_t> Filled(size_t n, uint8_t value) { return std::vector<uint8_t>(n, value); }

std::vector<uint8_t> Slice(const std::vector<uint8_t>& v, uint64_t offset, uint64_t n) {
  return std::vector<uint8_t>(v.begin() + static_cast<ptrdiff_t>(offset),
                              v.begin() + static_cast<ptrdiff_t>(offset + n));
}

// Records the status a Done callback got, and whether it ran at all.
class DoneRecorder {
 public:
  Region::Done Callback() {
    return [this](absl::Status s) {
      {
        absl::MutexLock lock(&mu_);
        EXPECT_FALSE(status_.has_value()) << "done ran twice";
        status_ = std::move(s);
      }
      notification_.Notify();
    };
  }
  bool called() const { return notification_.HasBeenNotified(); }
  bool WaitFor(absl::Duration timeout) {
    return notification_.WaitForNotificationWithTimeout(timeout);
  }
  absl::Status status() const {
    absl::MutexLock lock(&mu_);
    return status_.value_or(absl::InternalError("done has not run"));
  }

 private:
  mutable absl::Mutex mu_;
  std::optional<absl::Status> status_ ABSL_GUARDED_BY(mu_);
  absl::Notification notification_;
};

class RegionTest : public testing::Test {
 protected:
  // A region of `pages` pages over `source_`, with a memory store.
  void MakeRegion(uint64_t pages, std::vector<uint64_t> zero_pages = {},
                  std::vector<protocol::ZeroExtent> zero_extents = {}) {
    source_ = std::make_unique<FakeSource>(MakeImage(pages, std::move(zero_pages)));
    Region::Options options;
    options.name = "ram";
    options.index = kRegionIndex;
    options.size = pages * kPageSize;
    options.source = source_.get();
    options.zero_extents = std::move(zero_extents);
    options.max_size = options.size;
    region_ = Create(std::move(options));
  }

  static std::unique_ptr<Region> Create(Region::Options options) {
    absl::StatusOr<std::unique_ptr<FdStore>> store =
        FdStore::CreateMemory(options.name, (options.size + kPageSize - 1) / kPageSize * kPageSize);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!store.ok()) return nullptr;
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create(std::move(options), *std::move(store));
    EXPECT_TRUE(region.ok()) << region.status();
    return region.ok() ? *std::move(region) : nullptr;
  }

  std::vector<uint8_t> Read(uint64_t offset, uint64_t n) {
    std::vector<uint8_t> out(n, 0xEE);
    absl::Status s = region_->store().Read(offset, out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }
  std::vector<uint8_t> ReadPage(uint64_t page) { return Read(page * kPageSize, kPageSize); }
  std::vector<uint8_t> ImagePage(uint64_t page) {
    return Slice(source_->image(), page * kPageSize, kPageSize);
  }

  // Runs an operation whose `done` must run inline; returns its status.
  template <typename Op>
  absl::Status Sync(Op op) {
    DoneRecorder r;
    op(r.Callback());
    EXPECT_TRUE(r.called()) << "expected done to run inline";
    return r.status();
  }
  absl::Status WriteNow(uint64_t offset, const std::vector<uint8_t>& data) {
    return Sync([&](Region::Done d) { region_->Write(offset, data, std::move(d)); });
  }

  std::unique_ptr<FakeSource> source_;
  std::unique_ptr<Region> region_;
};

TEST_F(RegionTest, EnsureLocalFetchesOnlyAbsentPages) {
  MakeRegion(16, {}, {{2, 2}});
  ASSERT_NE(region_, nullptr);
  ASSERT_TRUE(WriteNow(5 * kPageSize, Filled(kPageSize, 0x55)).ok());
  EXPECT_EQ(source_->fetches(), 0u);

  DoneRecorder r;
  region_->EnsureLocal(0, 8 * kPageSize, Priority::kDemand, r.Callback());
  // Pages 2-3 are known zero and 5 was written: three runs around them.
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].first_page, 0u);
  EXPECT_EQ(h[0].count, 2u);
  EXPECT_EQ(h[1].first_page, 4u);
  EXPECT_EQ(h[1].count, 1u);
  EXPECT_EQ(h[2].first_page, 6u);
  EXPECT_EQ(h[2].count, 2u);
  for (const PendingFetch& f : h) EXPECT_EQ(f.priority, Priority::kDemand);
  EXPECT_FALSE(region_->IsLocal(0, 8 * kPageSize));

  ASSERT_TRUE(source_->CompleteNext());
  ASSERT_TRUE(source_->CompleteNext());
  EXPECT_FALSE(r.called());
  EXPECT_TRUE(region_->IsLocal(0, 2 * kPageSize));
  ASSERT_TRUE(source_->CompleteNext());
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  EXPECT_TRUE(region_->IsLocal(0, 8 * kPageSize));
  EXPECT_FALSE(region_->IsLocal(8 * kPageSize, 1));

  for (uint64_t p : {0, 1, 4, 6, 7}) EXPECT_EQ(ReadPage(p), ImagePage(p)) << "page " << p;
  EXPECT_EQ(ReadPage(2), Filled(kPageSize, 0));
  EXPECT_EQ(ReadPage(3), Filled(kPageSize, 0));
  EXPECT_EQ(ReadPage(5), Filled(kPageSize, 0x55));
  EXPECT_EQ(source_->fetches(), 3u);

  // Local now: done runs inline and nothing is fetched.
  EXPECT_TRUE(Sync([&](Region::Done d) {
                region_->EnsureLocal(100, 7 * kPageSize, Priority::kDemand, std::move(d));
              }).ok());
  EXPECT_EQ(source_->fetches(), 3u);
}

TEST_F(RegionTest, UnalignedRangeCoversEveryTouchedPage) {
  MakeRegion(8);
  DoneRecorder r;
  region_->EnsureLocal(kPageSize - 1, 2, Priority::kDemand, r.Callback());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 0u);
  EXPECT_EQ(h[0].count, 2u);
  source_->CompleteAll();
  EXPECT_TRUE(r.called());
  EXPECT_EQ(region_->TakeFaultHint(), 2u);
  EXPECT_EQ(region_->TakeFaultHint(), UINT64_MAX);
}

TEST_F(RegionTest, LongRangesAreSplitIntoMaximalRequests) {
  const uint64_t pages = protocol::kMaxPagesPerRequest * 2 + 5;
  MakeRegion(pages);
  DoneRecorder r;
  region_->EnsureLocal(0, pages * kPageSize, Priority::kDemand, r.Callback());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].count, protocol::kMaxPagesPerRequest);
  EXPECT_EQ(h[1].first_page, protocol::kMaxPagesPerRequest);
  EXPECT_EQ(h[2].count, 5u);
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_EQ(Read(0, pages * kPageSize), source_->image());
}

TEST_F(RegionTest, CompletionFromAnotherThread) {
  MakeRegion(8);
  DoneRecorder r;
  region_->EnsureLocal(kPageSize, 3 * kPageSize, Priority::kDemand, r.Callback());
  std::thread completer([this] { source_->CompleteAll(); });
  EXPECT_TRUE(r.WaitFor(absl::Seconds(10)));
  completer.join();
  EXPECT_TRUE(r.status().ok()) << r.status();
  EXPECT_EQ(Read(kPageSize, 3 * kPageSize), Slice(source_->image(), kPageSize, 3 * kPageSize));
}

TEST_F(RegionTest, SourceAnsweringInsideFetch) {
  MakeRegion(8);
  source_->set_answer_inline(true);
  EXPECT_TRUE(Sync([&](Region::Done d) {
                region_->EnsureLocal(0, 2 * kPageSize, Priority::kDemand, std::move(d));
              }).ok());
  EXPECT_TRUE(WriteNow(2 * kPageSize + 7, Filled(9, 0x99)).ok());
  uint64_t cursor = 0;
  DoneRecorder pulled;
  ASSERT_TRUE(region_->PullNext(&cursor, 8, pulled.Callback()));
  EXPECT_TRUE(pulled.called());
  EXPECT_TRUE(Sync([&](Region::Done d) { region_->Punch(100, 3 * kPageSize, std::move(d)); }).ok());
  std::vector<uint8_t> expected = source_->image();
  std::fill_n(expected.begin() + 2 * kPageSize + 7, 9, 0x99);
  std::fill_n(expected.begin() + 100, 3 * kPageSize, 0);
  EXPECT_EQ(Read(0, 8 * kPageSize), expected);
  EXPECT_TRUE(region_->complete());
}

TEST_F(RegionTest, InflightPagesAreNotFetchedTwice) {
  MakeRegion(8);
  DoneRecorder first, second, third;
  region_->EnsureLocal(0, 4 * kPageSize, Priority::kDemand, first.Callback());
  EXPECT_EQ(source_->fetches(), 1u);
  region_->EnsureLocal(2 * kPageSize, 4 * kPageSize, Priority::kDemand, second.Callback());
  // Only pages 4-5 are new.
  std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[1].first_page, 4u);
  EXPECT_EQ(h[1].count, 2u);
  region_->EnsureLocal(kPageSize, kPageSize, Priority::kDemand, third.Callback());
  EXPECT_EQ(source_->fetches(), 2u);

  ASSERT_TRUE(source_->CompleteNext());  // pages 0-3
  EXPECT_TRUE(first.called());
  EXPECT_TRUE(third.called());
  EXPECT_FALSE(second.called());
  ASSERT_TRUE(source_->CompleteNext());  // pages 4-5
  EXPECT_TRUE(second.called());
  EXPECT_TRUE(first.status().ok());
  EXPECT_TRUE(second.status().ok());
  EXPECT_TRUE(third.status().ok());
  EXPECT_EQ(Read(0, 6 * kPageSize), Slice(source_->image(), 0, 6 * kPageSize));
  EXPECT_EQ(source_->fetches(), 2u);
}

TEST_F(RegionTest, ReadaheadIsFetchedButNotWaitedFor) {
  MakeRegion(8);
  DoneRecorder ahead;
  region_->EnsureLocal(2 * kPageSize, kPageSize, Priority::kDemand, ahead.Callback());
  ASSERT_EQ(source_->fetches(), 1u);  // page 2
  DoneRecorder r;
  region_->EnsureLocal(0, kPageSize, Priority::kDemand, r.Callback(), 3 * kPageSize);
  // Pages 0-1 and 3; page 2 is already on its way.
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[1].first_page, 0u);
  EXPECT_EQ(h[1].count, 2u);
  EXPECT_EQ(h[2].first_page, 3u);
  EXPECT_EQ(h[2].count, 1u);
  std::optional<PendingFetch> f = source_->Take(1);
  ASSERT_TRUE(f.has_value());
  source_->Deliver(*std::move(f));
  EXPECT_TRUE(r.called());  // pages 2 and 3 still in flight
  EXPECT_FALSE(ahead.called());
  source_->CompleteAll();
  EXPECT_TRUE(ahead.called());
  EXPECT_TRUE(region_->IsLocal(0, 4 * kPageSize));
}

TEST_F(RegionTest, PrefetchIsNotCountedAsAFault) {
  MakeRegion(4);
  DoneRecorder r;
  region_->Prefetch(kPageSize, 2 * kPageSize, r.Callback());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 1u);
  EXPECT_EQ(h[0].count, 2u);
  EXPECT_EQ(h[0].priority, Priority::kDemand);
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  EXPECT_EQ(Read(kPageSize, 2 * kPageSize), Slice(source_->image(), kPageSize, 2 * kPageSize));
  EXPECT_EQ(region_->Stats().demand_fetches, 0u);
  EXPECT_EQ(region_->TakeFaultHint(), UINT64_MAX);
}

TEST_F(RegionTest, ZeroExtentsAreLocalAndNeverFetched) {
  MakeRegion(10, {}, {{0, 3}, {7, 3}});
  ASSERT_NE(region_, nullptr);
  EXPECT_TRUE(region_->IsLocal(0, 3 * kPageSize));
  EXPECT_TRUE(region_->IsLocal(7 * kPageSize, 3 * kPageSize));
  EXPECT_FALSE(region_->IsLocal(2 * kPageSize, 2 * kPageSize));
  EXPECT_TRUE(Sync([&](Region::Done d) {
                region_->EnsureLocal(kPageSize, 2 * kPageSize, Priority::kDemand, std::move(d));
              }).ok());
  EXPECT_EQ(source_->fetches(), 0u);
  EXPECT_EQ(Read(0, 3 * kPageSize), Filled(3 * kPageSize, 0));
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_zero, 6u);
  EXPECT_EQ(s.pages_present, 0u);

  DoneRecorder r;
  region_->EnsureLocal(0, 10 * kPageSize, Priority::kDemand, r.Callback());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 3u);
  EXPECT_EQ(h[0].count, 4u);
  source_->CompleteAll();
  EXPECT_TRUE(r.called());
  EXPECT_TRUE(region_->complete());
}

TEST_F(RegionTest, ZeroExtentPastTheEndIsRejected) {
  FakeSource source(MakeImage(4));
  Region::Options options;
  options.name = "bad";
  options.size = 4 * kPageSize;
  options.source = &source;
  options.zero_extents = {{3, 2}};
  absl::StatusOr<std::unique_ptr<FdStore>> store = FdStore::CreateMemory("bad", options.size);
  ASSERT_TRUE(store.ok());
  absl::StatusOr<std::unique_ptr<Region>> region =
      Region::Create(std::move(options), *std::move(store));
  EXPECT_EQ(region.status().code(), absl::StatusCode::kInvalidArgument) << region.status();
}

TEST_F(RegionTest, LandedZeroFlagPagesBecomeZero) {
  MakeRegion(6, {1, 3, 4});
  DoneRecorder r;
  region_->EnsureLocal(0, 6 * kPageSize, Priority::kDemand, r.Callback());
  ASSERT_EQ(source_->CompleteAll(), 1);
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok());
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_zero, 3u);
  EXPECT_EQ(s.pages_present, 3u);
  EXPECT_EQ(s.bytes_fetched, 3 * kPageSize);  // zero pages carry no bytes
  EXPECT_TRUE(s.complete);
  EXPECT_EQ(Read(0, 6 * kPageSize), source_->image());
}

TEST_F(RegionTest, FullPageWriteOverInflightFetchWins) {
  MakeRegion(6);
  DoneRecorder r;
  region_->EnsureLocal(0, 4 * kPageSize, Priority::kDemand, r.Callback());
  ASSERT_EQ(source_->fetches(), 1u);

  // Pages 1-2 are written while their fetch is in flight: no fetch needed,
  // and the write completes at once.
  const std::vector<uint8_t> data = Filled(2 * kPageSize, 0xD1);
  ASSERT_TRUE(WriteNow(kPageSize, data).ok());
  EXPECT_EQ(source_->fetches(), 1u);
  EXPECT_FALSE(r.called());  // pages 0 and 3 are still awaited
  EXPECT_EQ(region_->Stats().pages_dirty, 2u);

  ASSERT_TRUE(source_->CompleteNext());
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok());
  // The late fetch must not overwrite the written pages.
  EXPECT_EQ(Read(kPageSize, 2 * kPageSize), data);
  EXPECT_EQ(ReadPage(0), ImagePage(0));
  EXPECT_EQ(ReadPage(3), ImagePage(3));
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_dirty, 2u);
  EXPECT_EQ(s.pages_present, 4u);
}

TEST_F(RegionTest, WriteWakesWaitersOfTheWrittenPage) {
  MakeRegion(4);
  DoneRecorder r;
  region_->EnsureLocal(kPageSize, kPageSize, Priority::kDemand, r.Callback());
  ASSERT_TRUE(WriteNow(kPageSize, Filled(kPageSize, 7)).ok());
  EXPECT_TRUE(r.called());  // the page is local: no need to wait for its fetch
  EXPECT_TRUE(r.status().ok());
  source_->CompleteAll();
  EXPECT_EQ(ReadPage(1), Filled(kPageSize, 7));
}

TEST_F(RegionTest, FullPageWriteOverPullWins) {
  MakeRegion(4);
  uint64_t cursor = 0;
  DoneRecorder pulled;
  ASSERT_TRUE(region_->PullNext(&cursor, 4, pulled.Callback()));
  ASSERT_TRUE(WriteNow(2 * kPageSize, Filled(kPageSize, 0xB2)).ok());
  source_->CompleteAll();
  ASSERT_TRUE(pulled.called());
  EXPECT_TRUE(pulled.status().ok());
  EXPECT_EQ(ReadPage(2), Filled(kPageSize, 0xB2));
  EXPECT_EQ(ReadPage(3), ImagePage(3));
}

TEST_F(RegionTest, PartialWriteFetchesThePageFirst) {
  MakeRegion(4);
  const std::vector<uint8_t> data = Filled(200, 0xC3);
  DoneRecorder r;
  region_->Write(kPageSize + 100, data, r.Callback());
  EXPECT_FALSE(r.called());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 1u);
  EXPECT_EQ(h[0].count, 1u);
  EXPECT_EQ(h[0].priority, Priority::kDemand);
  ASSERT_TRUE(source_->CompleteNext());
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();

  std::vector<uint8_t> expected = ImagePage(1);
  std::copy(data.begin(), data.end(), expected.begin() + 100);
  EXPECT_EQ(ReadPage(1), expected);
  EXPECT_EQ(region_->Stats().pages_dirty, 1u);

  // The page is local now: another partial write lands at once.
  ASSERT_TRUE(WriteNow(kPageSize + 1000, Filled(10, 0x11)).ok());
  std::fill_n(expected.begin() + 1000, 10, 0x11);
  EXPECT_EQ(ReadPage(1), expected);
  EXPECT_EQ(source_->fetches(), 1u);
}

TEST_F(RegionTest, WriteWithPartialEdgesMergesBothEnds) {
  MakeRegion(6);
  // Head in page 1, whole pages 2-3, tail in page 4.
  const uint64_t offset = 2 * kPageSize - 300;
  std::vector<uint8_t> data(2 * kPageSize + 300 + 500);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 31 + 5);
  DoneRecorder r;
  region_->Write(offset, data, r.Callback());
  EXPECT_FALSE(r.called());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  std::vector<uint8_t> expected = source_->image();
  std::copy(data.begin(), data.end(), expected.begin() + static_cast<ptrdiff_t>(offset));
  EXPECT_EQ(Read(kPageSize, 4 * kPageSize), Slice(expected, kPageSize, 4 * kPageSize));
  EXPECT_FALSE(source_->Fetched(0));
  EXPECT_FALSE(source_->Fetched(5));
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_dirty, 4u);
}

TEST_F(RegionTest, PartialWriteWithinOnePageOfTwo) {
  MakeRegion(4);
  // Straddles pages 2 and 3, neither fully.
  const std::vector<uint8_t> data = Filled(100, 0x77);
  DoneRecorder r;
  region_->Write(3 * kPageSize - 50, data, r.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  std::vector<uint8_t> expected = source_->image();
  std::fill_n(expected.begin() + 3 * kPageSize - 50, 100, 0x77);
  EXPECT_EQ(Read(2 * kPageSize, 2 * kPageSize), Slice(expected, 2 * kPageSize, 2 * kPageSize));
  EXPECT_FALSE(source_->Fetched(0));
  EXPECT_FALSE(source_->Fetched(1));
}

// Issue item 4: a write covering whole absent pages needs none of their
// old bytes; only a partly covered last (or first) page is fetched.
TEST_F(RegionTest, WriteOfWholeAbsentPagesFetchesOnlyThePartialEdge) {
  MakeRegion(32);
  const uint64_t offset = 4 * kPageSize;
  std::vector<uint8_t> data(64 * 1024 + 100);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 1);
  DoneRecorder r;
  region_->Write(offset, data, r.Callback());
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 20u);
  EXPECT_EQ(h[0].count, 1u);
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  std::vector<uint8_t> expected = source_->image();
  std::copy(data.begin(), data.end(), expected.begin() + static_cast<ptrdiff_t>(offset));
  EXPECT_EQ(Read(offset, 17 * kPageSize), Slice(expected, offset, 17 * kPageSize));
  EXPECT_EQ(region_->Stats().pages_dirty, 17u);
  EXPECT_EQ(region_->Stats().bytes_fetched, kPageSize);
}

TEST_F(RegionTest, WriteWithBothEdgesPartialFetchesJustTheEdges) {
  MakeRegion(32);
  const uint64_t offset = 2 * kPageSize + 10;
  const std::vector<uint8_t> data = Filled(10 * kPageSize, 0x5C);
  DoneRecorder r;
  region_->Write(offset, data, r.Callback());
  EXPECT_EQ(source_->fetches(), 2u);
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  EXPECT_TRUE(source_->Fetched(2));
  EXPECT_TRUE(source_->Fetched(12));
  for (uint64_t p = 3; p < 12; ++p) EXPECT_FALSE(source_->Fetched(p)) << p;
  std::vector<uint8_t> expected = source_->image();
  std::copy(data.begin(), data.end(), expected.begin() + static_cast<ptrdiff_t>(offset));
  EXPECT_EQ(Read(2 * kPageSize, 11 * kPageSize), Slice(expected, 2 * kPageSize, 11 * kPageSize));
}

TEST_F(RegionTest, WritePastTheEndOfASourcedRegionFails) {
  MakeRegion(2);
  absl::Status s = WriteNow(2 * kPageSize - 10, Filled(20, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_EQ(region_->size(), 2 * kPageSize);
  EXPECT_EQ(region_->Resize(4 * kPageSize).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(region_->Resize(2 * kPageSize).ok());
  EXPECT_EQ(source_->fetches(), 0u);
}

TEST_F(RegionTest, PunchWholePagesNeverFetchesThem) {
  MakeRegion(6);
  ASSERT_TRUE(
      Sync([&](Region::Done d) { region_->Punch(kPageSize, 3 * kPageSize, std::move(d)); }).ok());
  EXPECT_EQ(source_->fetches(), 0u);
  EXPECT_TRUE(region_->IsLocal(kPageSize, 3 * kPageSize));
  EXPECT_EQ(region_->Stats().pages_zero, 3u);

  DoneRecorder r;
  region_->EnsureLocal(0, 6 * kPageSize, Priority::kDemand, r.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  for (uint64_t p : {1, 2, 3}) EXPECT_FALSE(source_->Fetched(p)) << p;
  EXPECT_EQ(Read(kPageSize, 3 * kPageSize), Filled(3 * kPageSize, 0));
  EXPECT_EQ(ReadPage(0), ImagePage(0));
  EXPECT_EQ(ReadPage(4), ImagePage(4));
}

TEST_F(RegionTest, PunchOfLocalPagesZeroesThem) {
  MakeRegion(4);
  DoneRecorder r;
  region_->EnsureLocal(0, 4 * kPageSize, Priority::kDemand, r.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(WriteNow(3 * kPageSize, Filled(kPageSize, 9)).ok());
  ASSERT_TRUE(Sync([&](Region::Done d) {
                region_->Punch(2 * kPageSize, 2 * kPageSize, std::move(d));
              }).ok());
  EXPECT_EQ(Read(2 * kPageSize, 2 * kPageSize), Filled(2 * kPageSize, 0));
  EXPECT_EQ(Read(0, 2 * kPageSize), Slice(source_->image(), 0, 2 * kPageSize));
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_zero, 2u);
  EXPECT_EQ(s.pages_dirty, 0u);
  EXPECT_EQ(s.pages_present, 2u);
  EXPECT_TRUE(s.complete);
}

TEST_F(RegionTest, PunchWithPartialEdgesKeepsTheRestOfThosePages) {
  MakeRegion(5);
  // Zeroes the end of page 0, all of pages 1-2 and the start of page 3.
  const uint64_t offset = 100, length = 3 * kPageSize + 200 - offset;
  DoneRecorder r;
  region_->Punch(offset, length, r.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_TRUE(r.status().ok()) << r.status();
  std::vector<uint8_t> expected = source_->image();
  std::fill_n(expected.begin() + offset, length, 0);
  EXPECT_EQ(Read(0, 4 * kPageSize), Slice(expected, 0, 4 * kPageSize));
  // The edges had to be fetched to keep their other bytes; the middle not.
  EXPECT_TRUE(source_->Fetched(0));
  EXPECT_TRUE(source_->Fetched(3));
  EXPECT_FALSE(source_->Fetched(1));
  EXPECT_FALSE(source_->Fetched(2));
  EXPECT_FALSE(source_->Fetched(4));
  EXPECT_EQ(region_->Stats().pages_zero, 2u);
}

TEST_F(RegionTest, PunchInsideOnePage) {
  MakeRegion(3);
  DoneRecorder r;
  region_->Punch(kPageSize + 10, 20, r.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  std::vector<uint8_t> expected = ImagePage(1);
  std::fill_n(expected.begin() + 10, 20, 0);
  EXPECT_EQ(ReadPage(1), expected);
  EXPECT_FALSE(source_->Fetched(0));
  EXPECT_FALSE(source_->Fetched(2));
}

TEST_F(RegionTest, PunchOfInflightPageWinsOverItsFetch) {
  MakeRegion(3);
  DoneRecorder r;
  region_->EnsureLocal(0, 3 * kPageSize, Priority::kDemand, r.Callback());
  ASSERT_TRUE(
      Sync([&](Region::Done d) { region_->Punch(kPageSize, kPageSize, std::move(d)); }).ok());
  EXPECT_FALSE(r.called());
  source_->CompleteAll();
  ASSERT_TRUE(r.called());
  EXPECT_EQ(ReadPage(1), Filled(kPageSize, 0));
  EXPECT_EQ(ReadPage(2), ImagePage(2));
  EXPECT_EQ(region_->Stats().pages_zero, 1u);
}

TEST_F(RegionTest, PunchPastTheEndIsClipped) {
  MakeRegion(2);
  ASSERT_TRUE(
      Sync([&](Region::Done d) { region_->Punch(kPageSize, 10 * kPageSize, std::move(d)); }).ok());
  EXPECT_EQ(region_->Stats().pages_zero, 1u);
  EXPECT_TRUE(
      Sync([&](Region::Done d) { region_->Punch(5 * kPageSize, kPageSize, std::move(d)); }).ok());
  EXPECT_EQ(source_->fetches(), 0u);
}

TEST_F(RegionTest, StatsCountEveryKindOfPage) {
  MakeRegion(10, {2}, {{9, 1}});
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.name, "ram");
  EXPECT_EQ(s.size, 10 * kPageSize);
  EXPECT_EQ(s.pages_total, 10u);
  EXPECT_EQ(s.pages_present, 0u);
  EXPECT_EQ(s.pages_zero, 1u);
  EXPECT_EQ(s.bytes_fetched, 0u);
  EXPECT_EQ(s.demand_fetches, 0u);
  EXPECT_EQ(s.latency_max_us, 0u);
  EXPECT_FALSE(s.complete);

  DoneRecorder a, b;
  region_->EnsureLocal(0, 4 * kPageSize, Priority::kDemand, a.Callback());        // 0-3
  region_->EnsureLocal(6 * kPageSize, kPageSize, Priority::kBulk, b.Callback());  // 6
  source_->CompleteAll();
  ASSERT_TRUE(a.called() && b.called());
  ASSERT_TRUE(WriteNow(4 * kPageSize, Filled(kPageSize, 4)).ok());  // dirty, never fetched
  ASSERT_TRUE(WriteNow(kPageSize, Filled(kPageSize, 1)).ok());      // present -> dirty

  s = region_->Stats();
  EXPECT_EQ(s.pages_dirty, 2u);
  EXPECT_EQ(s.pages_present, 5u);  // 0, 1, 3, 4, 6: dirty ones included
  EXPECT_EQ(s.pages_zero, 2u);     // 2 (landed zero) and 9 (extent)
  EXPECT_EQ(s.bytes_fetched, 4 * kPageSize);
  EXPECT_EQ(s.demand_fetches, 1u);
  EXPECT_LE(s.latency_p50_us, s.latency_p99_us);
  EXPECT_LE(s.latency_p99_us, s.latency_max_us);
  EXPECT_FALSE(s.complete);
  EXPECT_FALSE(region_->complete());

  DoneRecorder c;
  region_->EnsureLocal(0, 10 * kPageSize, Priority::kDemand, c.Callback());
  source_->CompleteAll();
  ASSERT_TRUE(c.called());
  s = region_->Stats();
  EXPECT_EQ(s.pages_present + s.pages_zero, 10u);
  EXPECT_EQ(s.bytes_fetched, 7 * kPageSize);  // and pages 5, 7, 8
  EXPECT_EQ(s.demand_fetches, 3u);            // runs {5} and {7, 8}
  EXPECT_TRUE(s.complete);
  EXPECT_TRUE(region_->complete());
}

TEST_F(RegionTest, FailedFetchReportsErrorAndPagesStayAbsent) {
  MakeRegion(4);
  DoneRecorder a, b;
  region_->EnsureLocal(0, 2 * kPageSize, Priority::kDemand, a.Callback());
  region_->EnsureLocal(kPageSize, kPageSize, Priority::kDemand, b.Callback());
  ASSERT_EQ(source_->fetches(), 1u);
  std::optional<PendingFetch> f = source_->Take();
  ASSERT_TRUE(f.has_value());
  FakeSource::Fail(*std::move(f), absl::UnavailableError("page server gone"));
  ASSERT_TRUE(a.called());
  ASSERT_TRUE(b.called());
  EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
  EXPECT_EQ(b.status().code(), absl::StatusCode::kUnavailable) << b.status();
  EXPECT_FALSE(region_->IsLocal(0, 1));
  EXPECT_FALSE(region_->IsLocal(kPageSize, 1));
  EXPECT_EQ(region_->Stats().bytes_fetched, 0u);

  // A retry fetches the pages again.
  DoneRecorder retry;
  region_->EnsureLocal(0, 2 * kPageSize, Priority::kDemand, retry.Callback());
  EXPECT_EQ(source_->fetches(), 2u);
  source_->CompleteAll();
  ASSERT_TRUE(retry.called());
  EXPECT_TRUE(retry.status().ok()) << retry.status();
  EXPECT_EQ(Read(0, 2 * kPageSize), Slice(source_->image(), 0, 2 * kPageSize));
}

TEST_F(RegionTest, FailedFetchDoesNotUndoAWrite) {
  MakeRegion(3);
  DoneRecorder r;
  region_->EnsureLocal(0, 3 * kPageSize, Priority::kDemand, r.Callback());
  ASSERT_TRUE(WriteNow(kPageSize, Filled(kPageSize, 0x42)).ok());
  std::optional<PendingFetch> f = source_->Take();
  ASSERT_TRUE(f.has_value());
  FakeSource::Fail(*std::move(f), absl::DeadlineExceededError("timed out"));
  ASSERT_TRUE(r.called());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(region_->IsLocal(kPageSize, kPageSize));
  EXPECT_FALSE(region_->IsLocal(0, 1));
  EXPECT_FALSE(region_->IsLocal(2 * kPageSize, 1));
  EXPECT_EQ(ReadPage(1), Filled(kPageSize, 0x42));
}

TEST_F(RegionTest, FailedPartialWriteReportsTheError) {
  MakeRegion(2);
  DoneRecorder r;
  region_->Write(10, Filled(10, 1), r.Callback());
  std::optional<PendingFetch> f = source_->Take();
  ASSERT_TRUE(f.has_value());
  FakeSource::Fail(*std::move(f), absl::UnavailableError("gone"));
  ASSERT_TRUE(r.called());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(region_->Stats().pages_dirty, 0u);
  EXPECT_EQ(ReadPage(0), Filled(kPageSize, 0));
}

TEST_F(RegionTest, PullNextClaimsRunsOfAbsentPages) {
  MakeRegion(12);
  ASSERT_TRUE(WriteNow(2 * kPageSize, Filled(kPageSize, 2)).ok());  // local
  DoneRecorder demand;
  region_->EnsureLocal(5 * kPageSize, kPageSize, Priority::kDemand, demand.Callback());
  ASSERT_EQ(source_->fetches(), 1u);

  uint64_t cursor = 0;
  std::vector<std::unique_ptr<DoneRecorder>> pulls;
  auto pull = [&](uint32_t max_pages) {
    pulls.push_back(std::make_unique<DoneRecorder>());
    return region_->PullNext(&cursor, max_pages, pulls.back()->Callback());
  };
  ASSERT_TRUE(pull(8));  // 0-1: stops at the written page
  EXPECT_EQ(cursor, 2u);
  ASSERT_TRUE(pull(8));  // 3-4: stops at the in-flight page
  EXPECT_EQ(cursor, 5u);
  ASSERT_TRUE(pull(4));  // 6-9: capped at max_pages
  EXPECT_EQ(cursor, 10u);
  ASSERT_TRUE(pull(8));  // 10-11
  EXPECT_EQ(cursor, 12u);
  EXPECT_FALSE(pull(8));  // nothing absent, though fetches are in flight
  pulls.pop_back();

  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 5u);
  const std::pair<uint64_t, uint32_t> runs[] = {{0, 2}, {3, 2}, {6, 4}, {10, 2}};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(h[i + 1].first_page, runs[i].first) << i;
    EXPECT_EQ(h[i + 1].count, runs[i].second) << i;
    EXPECT_EQ(h[i + 1].priority, Priority::kBulk) << i;
  }
  for (const auto& p : pulls) EXPECT_FALSE(p->called());
  source_->CompleteAll();
  for (const auto& p : pulls) {
    ASSERT_TRUE(p->called());
    EXPECT_TRUE(p->status().ok()) << p->status();
  }
  EXPECT_TRUE(region_->complete());
  std::vector<uint8_t> expected = source_->image();
  std::fill_n(expected.begin() + 2 * kPageSize, kPageSize, 2);
  EXPECT_EQ(Read(0, 12 * kPageSize), expected);
  EXPECT_EQ(region_->Stats().demand_fetches, 1u);
  EXPECT_FALSE(pull(8));
}

TEST_F(RegionTest, PullNextWrapsAroundOnce) {
  MakeRegion(8);
  ASSERT_TRUE(Sync([&](Region::Done d) {
                region_->Punch(4 * kPageSize, 4 * kPageSize, std::move(d));
              }).ok());
  uint64_t cursor = 6;
  DoneRecorder r;
  ASSERT_TRUE(region_->PullNext(&cursor, 16, r.Callback()));
  EXPECT_EQ(cursor, 4u);
  const std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].first_page, 0u);
  EXPECT_EQ(h[0].count, 4u);
  source_->CompleteAll();
  EXPECT_TRUE(r.called());
  cursor = 100;  // past the end: starts over
  DoneRecorder unused;
  EXPECT_FALSE(region_->PullNext(&cursor, 16, unused.Callback()));
  EXPECT_FALSE(unused.called());
}

TEST_F(RegionTest, FailedPullLeavesPagesToPullAgain) {
  MakeRegion(4);
  uint64_t cursor = 0;
  DoneRecorder r;
  ASSERT_TRUE(region_->PullNext(&cursor, 4, r.Callback()));
  std::optional<PendingFetch> f = source_->Take();
  ASSERT_TRUE(f.has_value());
  FakeSource::Fail(*std::move(f), absl::UnavailableError("gone"));
  ASSERT_TRUE(r.called());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(region_->Stats().pages_present, 0u);
  cursor = 0;
  DoneRecorder again;
  ASSERT_TRUE(region_->PullNext(&cursor, 4, again.Callback()));
  source_->CompleteAll();
  ASSERT_TRUE(again.called());
  EXPECT_TRUE(again.status().ok());
  EXPECT_TRUE(region_->complete());
}

class DemandDuringPullTest : public RegionTest, public testing::WithParamInterface<bool> {};

TEST_P(DemandDuringPullTest, DemandReRequestsAndFirstLandingWins) {
  const bool demand_lands_first = GetParam();
  MakeRegion(4);
  uint64_t cursor = 0;
  DoneRecorder pulled;
  ASSERT_TRUE(region_->PullNext(&cursor, 4, pulled.Callback()));
  ASSERT_EQ(source_->fetches(), 1u);

  // A bulk-priority read of a page being pulled just waits for the pull.
  DoneRecorder bulk_reader;
  region_->EnsureLocal(0, kPageSize, Priority::kBulk, bulk_reader.Callback());
  EXPECT_EQ(source_->fetches(), 1u);

  // A demand read of one asks again, at demand priority.
  DoneRecorder reader;
  region_->EnsureLocal(kPageSize, kPageSize, Priority::kDemand, reader.Callback());
  std::vector<PendingFetch> h = source_->history();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[1].first_page, 1u);
  EXPECT_EQ(h[1].count, 1u);
  EXPECT_EQ(h[1].priority, Priority::kDemand);

  // The two copies carry different bytes, to tell which one landed.
  const std::vector<uint8_t> demand_bytes = Filled(kPageSize, 0xDD);
  const std::vector<uint8_t> bulk_bytes = Filled(4 * kPageSize, 0xBB);
  const std::vector<uint8_t> data1(1, static_cast<uint8_t>(PageFlag::kData));
  const std::vector<uint8_t> data4(4, static_cast<uint8_t>(PageFlag::kData));
  std::optional<PendingFetch> bulk = source_->Take(0);
  std::optional<PendingFetch> demand = source_->Take(0);
  ASSERT_TRUE(bulk.has_value() && demand.has_value());
  if (demand_lands_first) {
    FakeSource::DeliverBytes(*std::move(demand), data1, demand_bytes);
    EXPECT_TRUE(reader.called());
    EXPECT_FALSE(pulled.called());
    FakeSource::DeliverBytes(*std::move(bulk), data4, bulk_bytes);
  } else {
    FakeSource::DeliverBytes(*std::move(bulk), data4, bulk_bytes);
    EXPECT_TRUE(reader.called());  // the pull brought the page
    FakeSource::DeliverBytes(*std::move(demand), data1, demand_bytes);
  }
  ASSERT_TRUE(pulled.called());
  ASSERT_TRUE(bulk_reader.called());
  EXPECT_TRUE(reader.status().ok());
  EXPECT_EQ(ReadPage(1), demand_lands_first ? demand_bytes : Filled(kPageSize, 0xBB));
  for (uint64_t p : {0, 2, 3}) EXPECT_EQ(ReadPage(p), Filled(kPageSize, 0xBB)) << p;
  EXPECT_TRUE(region_->complete());
  EXPECT_EQ(region_->Stats().demand_fetches, 1u);
}

INSTANTIATE_TEST_SUITE_P(Order, DemandDuringPullTest, testing::Bool(),
                         [](const testing::TestParamInfo<bool>& info) {
                           return info.param ? "DemandFirst" : "BulkFirst";
                         });

class SourcelessRegionTest : public RegionTest {
 protected:
  void MakeSourceless(uint64_t size, uint64_t max_size) {
    Region::Options options;
    options.name = "file";
    options.size = size;
    options.max_size = max_size;
    region_ = Create(std::move(options));
  }
};

TEST_F(SourcelessRegionTest, StartsAllZero) {
  MakeSourceless(4 * kPageSize + 100, 64 * kPageSize);
  ASSERT_NE(region_, nullptr);
  EXPECT_FALSE(region_->has_source());
  EXPECT_TRUE(region_->complete());
  EXPECT_TRUE(region_->IsLocal(0, region_->size()));
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_total, 5u);
  EXPECT_EQ(s.pages_zero, 5u);
  EXPECT_TRUE(s.complete);
  EXPECT_TRUE(Sync([&](Region::Done d) {
                region_->EnsureLocal(0, 5 * kPageSize, Priority::kDemand, std::move(d));
              }).ok());
  EXPECT_EQ(Read(0, 5 * kPageSize), Filled(5 * kPageSize, 0));
  uint64_t cursor = 0;
  DoneRecorder unused;
  EXPECT_FALSE(region_->PullNext(&cursor, 8, unused.Callback()));
}

TEST_F(SourcelessRegionTest, PartialWritesNeedNoFetch) {
  MakeSourceless(4 * kPageSize, 64 * kPageSize);
  ASSERT_TRUE(WriteNow(kPageSize + 10, Filled(20, 3)).ok());
  std::vector<uint8_t> expected(kPageSize, 0);
  std::fill_n(expected.begin() + 10, 20, 3);
  EXPECT_EQ(ReadPage(1), expected);
  EXPECT_EQ(region_->Stats().pages_dirty, 1u);
  ASSERT_TRUE(Sync([&](Region::Done d) { region_->Punch(kPageSize + 15, 5, std::move(d)); }).ok());
  std::fill_n(expected.begin() + 15, 5, 0);
  EXPECT_EQ(ReadPage(1), expected);
}

TEST_F(SourcelessRegionTest, ResizeGrowsAndShrinks) {
  MakeSourceless(2 * kPageSize, 16 * kPageSize);
  ASSERT_TRUE(region_->Resize(10 * kPageSize).ok());
  EXPECT_EQ(region_->size(), 10 * kPageSize);
  EXPECT_EQ(region_->Stats().pages_total, 10u);
  EXPECT_EQ(region_->Stats().pages_zero, 10u);
  EXPECT_TRUE(region_->complete());
  EXPECT_GE(region_->store().Size(), 10 * kPageSize);
  EXPECT_EQ(Read(0, 10 * kPageSize), Filled(10 * kPageSize, 0));

  ASSERT_TRUE(region_->Resize(3 * kPageSize + 1).ok());
  EXPECT_EQ(region_->size(), 3 * kPageSize + 1);
  EXPECT_EQ(region_->Stats().pages_total, 4u);
  EXPECT_TRUE(region_->complete());

  EXPECT_EQ(region_->Resize(16 * kPageSize + 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(region_->size(), 3 * kPageSize + 1);
  ASSERT_TRUE(region_->Resize(16 * kPageSize).ok());
  ASSERT_TRUE(region_->Resize(0).ok());
  EXPECT_EQ(region_->size(), 0u);
  EXPECT_EQ(region_->Stats().pages_total, 0u);
  EXPECT_TRUE(region_->complete());
}

TEST_F(SourcelessRegionTest, WritePastTheEndGrows) {
  MakeSourceless(0, 16 * kPageSize);
  const std::vector<uint8_t> data = Filled(3000, 0x61);
  ASSERT_TRUE(WriteNow(2 * kPageSize + 500, data).ok());
  EXPECT_EQ(region_->size(), 2 * kPageSize + 3500);
  EXPECT_EQ(region_->Stats().pages_total, 3u);
  EXPECT_EQ(region_->Stats().pages_dirty, 1u);
  std::vector<uint8_t> expected(3 * kPageSize, 0);
  std::fill_n(expected.begin() + 2 * kPageSize + 500, 3000, 0x61);
  EXPECT_EQ(Read(0, 3 * kPageSize), expected);

  // Within the last page, past the size.
  ASSERT_TRUE(WriteNow(2 * kPageSize + 4000, Filled(50, 0x62)).ok());
  EXPECT_EQ(region_->size(), 2 * kPageSize + 4050);
  // Past the maximum fails and changes nothing.
  absl::Status s = WriteNow(16 * kPageSize - 10, Filled(20, 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_EQ(region_->size(), 2 * kPageSize + 4050);
}

// The store of a region without a source holds exactly its bytes: the
// kernel reads it up to its end under FUSE passthrough.
TEST_F(SourcelessRegionTest, StoreIsExactlyTheRegionSize) {
  MakeSourceless(0, 16 * kPageSize);
  ASSERT_TRUE(region_->Resize(100).ok());
  EXPECT_EQ(region_->store().Size(), 100u);
  struct stat st;
  ASSERT_EQ(fstat(region_->store().fd(), &st), 0);
  EXPECT_EQ(st.st_size, 100);
  ASSERT_TRUE(WriteNow(100, Filled(100, 9)).ok());
  EXPECT_EQ(region_->size(), 200u);
  ASSERT_EQ(fstat(region_->store().fd(), &st), 0);
  EXPECT_EQ(st.st_size, 200);
}

// After ShareStore, a write straight to the store past the end (as the
// kernel makes under passthrough) becomes the region's size — even one
// that stays inside the last page.
TEST_F(SourcelessRegionTest, SharedStoreGrowthIsAdopted) {
  MakeSourceless(0, 16 * kPageSize);
  ASSERT_TRUE(region_->Resize(100).ok());
  region_->ShareStore();
  const std::vector<uint8_t> data = Filled(100, 0x42);
  ASSERT_EQ(pwrite(region_->store().fd(), data.data(), data.size(), 100), 100);
  EXPECT_EQ(region_->size(), 200u);
  EXPECT_EQ(region_->Stats().size, 200u);
  ASSERT_EQ(pwrite(region_->store().fd(), data.data(), data.size(), 3 * kPageSize), 100);
  EXPECT_EQ(region_->size(), 3 * kPageSize + 100);
  EXPECT_EQ(region_->Stats().pages_total, 4u);
  // A truncation cuts what was appended too.
  ASSERT_TRUE(region_->Resize(150).ok());
  EXPECT_EQ(region_->size(), 150u);
  struct stat st;
  ASSERT_EQ(fstat(region_->store().fd(), &st), 0);
  EXPECT_EQ(st.st_size, 150);
}

// Adopting a shared store's growth never brings back a size a concurrent
// truncation cut: every look at the size races the truncations here.
TEST_F(SourcelessRegionTest, SharedStoreAdoptionDoesNotUndoTruncations) {
  MakeSourceless(0, 64 * kPageSize);
  region_->ShareStore();
  std::atomic<bool> stop{false};
  std::thread looker([&] {
    while (!stop.load()) (void)region_->size();
  });
  std::mt19937 rng(7);
  uint64_t last = 0;
  for (int i = 0; i < 3000; ++i) {
    last = rng() % (64 * kPageSize);
    ASSERT_TRUE(region_->Resize(last).ok());
    ASSERT_EQ(region_->size(), last) << "after resize " << i;
  }
  stop.store(true);
  looker.join();
  EXPECT_EQ(region_->size(), last);
  struct stat st;
  ASSERT_EQ(fstat(region_->store().fd(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), last);
}

TEST_F(SourcelessRegionTest, ShrinkThenGrowReadsZero) {
  MakeSourceless(4 * kPageSize, 16 * kPageSize);
  std::vector<uint8_t> data(4 * kPageSize);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i % 253 + 1);
  ASSERT_TRUE(WriteNow(0, data).ok());
  const uint64_t cut = kPageSize + 10;
  ASSERT_TRUE(region_->Resize(cut).ok());
  ASSERT_TRUE(region_->Resize(6 * kPageSize).ok());
  std::vector<uint8_t> expected(6 * kPageSize, 0);
  std::copy_n(data.begin(), cut, expected.begin());
  EXPECT_EQ(Read(0, 6 * kPageSize), expected);
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_dirty, 2u);  // pages 0 and 1 survived the cut
  EXPECT_EQ(s.pages_zero, 4u);

  // Growing by a write past the end also brings zeros, not old bytes.
  ASSERT_TRUE(region_->Resize(10).ok());
  ASSERT_TRUE(WriteNow(3 * kPageSize, Filled(10, 0x33)).ok());
  std::vector<uint8_t> grown = Read(0, 3 * kPageSize + 10);
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + 10, grown.begin()));
  EXPECT_TRUE(std::all_of(grown.begin() + 10, grown.begin() + 3 * kPageSize,
                          [](uint8_t b) { return b == 0; }));
}

// Readers, writers and punchers on random pages race the landing (or
// failure) of their fetches and of a background pull; in the end every page
// holds the source's bytes as changed by its writes and punches, in order.
TEST_F(RegionTest, ConcurrentStress) {
  constexpr uint64_t kPages = 1024;
  constexpr int kWorkers = 3;
  constexpr int kOpsPerWorker = 1000;
  MakeRegion(kPages, {7, 8, 50, 51, 52, 100}, {{50, 3}});
  ASSERT_NE(region_, nullptr);

  std::atomic<bool> inject_failures{true};
  std::atomic<bool> stop{false};
  std::atomic<bool> failed{false};
  std::thread completer([&] {
    std::mt19937 rng(1);
    // Answers in random order, to reorder landings against each other, and
    // fails one fetch in eight while the workers run.
    while (true) {
      const size_t n = source_->AwaitPending(absl::Milliseconds(1));
      if (n == 0) {
        if (stop.load()) break;
        continue;
      }
      // Leave the fetches in flight a little, for the workers to race.
      absl::SleepFor(absl::Microseconds(50));
      std::optional<PendingFetch> f = source_->Take(rng() % source_->pending());
      if (!f.has_value()) continue;
      if (inject_failures.load() && rng() % 8 == 0) {
        FakeSource::Fail(*std::move(f), absl::UnavailableError("injected"));
      } else {
        source_->Deliver(*std::move(f));
      }
    }
  });

  // Runs `op` until it succeeds, waiting for its `done` each time; false
  // (and the test failed) if it never does.
  auto run = [&](auto op) {
    for (int attempt = 0; attempt < 200; ++attempt) {
      absl::Notification done;
      absl::Status status;
      op([&](absl::Status s) {
        status = std::move(s);
        done.Notify();
      });
      if (!done.WaitForNotificationWithTimeout(absl::Seconds(20))) {
        ADD_FAILURE() << "an operation never completed";
        return false;
      }
      if (status.ok()) return true;
      if (status.code() != absl::StatusCode::kUnavailable) {
        ADD_FAILURE() << status;
        return false;
      }
    }
    ADD_FAILURE() << "an operation kept failing";
    return false;
  };

  std::atomic<int> pulls_in_flight{0};
  std::thread puller([&] {
    uint64_t cursor = 0;
    while (!stop.load()) {
      if (pulls_in_flight.load() >= 1) {
        absl::SleepFor(absl::Microseconds(200));
        continue;
      }
      pulls_in_flight.fetch_add(1);
      if (!region_->PullNext(&cursor, 4, [&](absl::Status) { pulls_in_flight.fetch_sub(1); })) {
        pulls_in_flight.fetch_sub(1);
        absl::SleepFor(absl::Microseconds(200));
      }
    }
  });

  // Worker w alone writes and punches pages p with p % kWorkers == w, so it
  // knows what they must hold; it reads any page.
  std::vector<std::vector<uint8_t>> expected(kWorkers, source_->image());
  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      std::mt19937 rng(100 + w);
      std::vector<uint8_t>& mine = expected[w];
      for (int op = 0; op < kOpsPerWorker && !failed.load(); ++op) {
        uint64_t page = rng() % kPages;
        const int kind = static_cast<int>(rng() % 4);
        if (kind == 0) {
          const uint64_t length = (1 + rng() % 3) * kPageSize;
          const Priority priority = rng() % 2 ? Priority::kDemand : Priority::kBulk;
          const uint64_t readahead = (rng() % 2) * 4 * kPageSize;
          if (!run([&](Region::Done d) {
                region_->EnsureLocal(page * kPageSize, length, priority, std::move(d), readahead);
              })) {
            failed = true;
          }
          continue;
        }
        // Mostly a page whose fetch is in flight, if this worker owns one.
        for (uint64_t p : source_->PendingPages()) {
          if (p % kWorkers == static_cast<uint64_t>(w) && rng() % 4 != 0) page = p;
        }
        page = page - page % kWorkers + static_cast<uint64_t>(w);
        if (page >= kPages) page -= kWorkers;
        uint64_t offset = page * kPageSize, length = kPageSize;
        if (rng() % 2 == 0) {  // part of the page only
          offset += rng() % kPageSize;
          length = 1 + rng() % (page * kPageSize + kPageSize - offset);
        }
        bool ok;
        if (kind == 3) {
          std::fill_n(mine.begin() + static_cast<ptrdiff_t>(offset), length, 0);
          ok = run([&](Region::Done d) { region_->Punch(offset, length, std::move(d)); });
        } else {
          std::vector<uint8_t> data(length);
          for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
          std::copy(data.begin(), data.end(), mine.begin() + static_cast<ptrdiff_t>(offset));
          ok = run([&](Region::Done d) { region_->Write(offset, data, std::move(d)); });
        }
        // A page this worker owns must read back as it left it, even if a
        // fetch of it lands later.
        std::vector<uint8_t> got(kPageSize);
        if (!ok || !region_->store().Read(page * kPageSize, got).ok() ||
            !std::equal(got.begin(), got.end(),
                        mine.begin() + static_cast<ptrdiff_t>(page * kPageSize))) {
          ADD_FAILURE() << "worker " << w << " op " << op << " page " << page
                        << " does not hold what was written";
          failed = true;
        }
      }
    });
  }
  for (std::thread& t : workers) t.join();

  // Make the rest local, with the completer still answering.
  inject_failures = false;
  EXPECT_TRUE(run([&](Region::Done d) {
    region_->EnsureLocal(0, kPages * kPageSize, Priority::kDemand, std::move(d));
  }));
  stop = true;
  puller.join();
  completer.join();
  while (source_->CompleteNext()) {
  }
  ASSERT_FALSE(failed.load());
  EXPECT_EQ(pulls_in_flight.load(), 0);
  EXPECT_TRUE(region_->complete());

  std::vector<uint8_t> final_bytes = Read(0, kPages * kPageSize);
  for (uint64_t p = 0; p < kPages; ++p) {
    const std::vector<uint8_t>& want = expected[p % kWorkers];
    ASSERT_TRUE(std::equal(final_bytes.begin() + static_cast<ptrdiff_t>(p * kPageSize),
                           final_bytes.begin() + static_cast<ptrdiff_t>((p + 1) * kPageSize),
                           want.begin() + static_cast<ptrdiff_t>(p * kPageSize)))
        << "page " << p;
  }
  RegionStats s = region_->Stats();
  EXPECT_EQ(s.pages_present + s.pages_zero, kPages);
  EXPECT_TRUE(s.complete);
}

// With a state file, what landed and what was written outlives the Region
// (as it outlives a killed daemon); a fetch still in flight does not.
TEST(RegionStateFileTest, LocalPagesSurviveTheRegion) {
  std::string dir = "/tmp/lazyram-region-state-XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  absl::Cleanup remove = [&] { std::filesystem::remove_all(dir); };
  absl::StatusOr<UniqueFd> lock = StateFile::LockStore(dir);
  ASSERT_TRUE(lock.ok()) << lock.status();
  constexpr uint64_t kPages = 64;
  const StateFile::Identity id{"ram", kPages * kPageSize, kPages, true, 77, kRegionIndex};
  auto open_region = [&](FakeSource* source, bool fresh) -> std::unique_ptr<Region> {
    absl::StatusOr<std::unique_ptr<StateFile>> state =
        fresh ? StateFile::Create(dir, id) : StateFile::Open(dir, "ram");
    EXPECT_TRUE(state.ok()) << state.status();
    absl::StatusOr<std::unique_ptr<DirectFileStore>> store =
        fresh ? DirectFileStore::Create(dir, "ram", id.size)
              : DirectFileStore::Open(dir, "ram", id.size);
    EXPECT_TRUE(store.ok()) << store.status();
    if (!state.ok() || !store.ok()) return nullptr;
    Region::Options options;
    options.name = "ram";
    options.index = kRegionIndex;
    options.size = id.size;
    options.source = source;
    options.max_size = id.size;
    options.state = *std::move(state);
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create(std::move(options), *std::move(store));
    EXPECT_TRUE(region.ok()) << region.status();
    return region.ok() ? *std::move(region) : nullptr;
  };
  const std::vector<uint8_t> written = Filled(kPageSize, 0xAB);
  {
    FakeSource source(MakeImage(kPages, {5}));
    std::unique_ptr<Region> region = open_region(&source, true);
    ASSERT_NE(region, nullptr);
    DoneRecorder fetched, wrote, in_flight;
    region->EnsureLocal(0, 10 * kPageSize, Priority::kDemand, fetched.Callback());
    source.CompleteAll();
    ASSERT_TRUE(fetched.WaitFor(absl::Seconds(10)));
    region->Write(20 * kPageSize, written, wrote.Callback());
    ASSERT_TRUE(wrote.WaitFor(absl::Seconds(10)));
    ASSERT_TRUE(wrote.status().ok()) << wrote.status();
    region->EnsureLocal(30 * kPageSize, kPageSize, Priority::kDemand, in_flight.Callback());
    ASSERT_EQ(source.pending(), 1u);
    // Gone without Close or a reply for page 30: as if killed.
    source.Take();
  }
  FakeSource source(MakeImage(kPages, {5}));
  std::unique_ptr<Region> region = open_region(&source, false);
  ASSERT_NE(region, nullptr);
  EXPECT_EQ(region->pages_restored(), 11u);
  EXPECT_TRUE(region->IsLocal(0, 10 * kPageSize));
  EXPECT_TRUE(region->IsLocal(20 * kPageSize, kPageSize));
  EXPECT_FALSE(region->IsLocal(30 * kPageSize, kPageSize));
  RegionStats stats = region->Stats();
  EXPECT_EQ(stats.pages_dirty, 1u);
  EXPECT_EQ(stats.pages_zero, 1u);  // page 5
  std::vector<uint8_t> got(kPageSize);
  ASSERT_TRUE(region->store().Read(20 * kPageSize, std::span(got)).ok());
  EXPECT_EQ(got, written);
  ASSERT_TRUE(region->store().Read(3 * kPageSize, std::span(got)).ok());
  EXPECT_EQ(got, Slice(source.image(), 3 * kPageSize, kPageSize));
  DoneRecorder again;
  region->EnsureLocal(0, 10 * kPageSize, Priority::kDemand, again.Callback());
  EXPECT_TRUE(again.called());
  EXPECT_EQ(source.fetches(), 0u);
  DoneRecorder refetch;
  region->EnsureLocal(30 * kPageSize, kPageSize, Priority::kDemand, refetch.Callback());
  EXPECT_TRUE(source.Fetched(30));
  source.CompleteAll();
  ASSERT_TRUE(refetch.WaitFor(absl::Seconds(10)));
  auto clean_on_disk = [&] {
    absl::StatusOr<std::unique_ptr<StateFile>> state = StateFile::Open(dir, "ram");
    EXPECT_TRUE(state.ok()) << state.status();
    return state.ok() && (*state)->was_clean();
  };
  EXPECT_FALSE(clean_on_disk());
  // A checkpoint with no change during it marks the file clean...
  ASSERT_TRUE(region->Sync().ok());
  EXPECT_TRUE(clean_on_disk());
  // ...a page becoming local marks it in use before its state is stored...
  DoneRecorder wrote_again;
  region->Write(40 * kPageSize, written, wrote_again.Callback());
  ASSERT_TRUE(wrote_again.WaitFor(absl::Seconds(10)));
  EXPECT_FALSE(clean_on_disk());
  // ...and a fetch in flight does not (its page reads as absent anyway).
  ASSERT_TRUE(region->Sync().ok());
  EXPECT_TRUE(clean_on_disk());
  DoneRecorder pending;
  region->EnsureLocal(50 * kPageSize, kPageSize, Priority::kDemand, pending.Callback());
  EXPECT_TRUE(clean_on_disk());
  source.CompleteAll();
  ASSERT_TRUE(pending.WaitFor(absl::Seconds(10)));
  EXPECT_FALSE(clean_on_disk());
  ASSERT_TRUE(region->Close().ok());
  region.reset();
  EXPECT_TRUE(clean_on_disk());
}

}  // namespace
}  // namespace lazyram
