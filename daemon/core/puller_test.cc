#include "daemon/core/puller.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/core/fake_page_source.h"
#include "daemon/store/fd_store.h"

namespace lazyram {
namespace {

using protocol::kPageSize;

constexpr uint64_t kPages = 4096;
constexpr absl::Duration kWait = absl::Seconds(20);

class PullerTest : public ::testing::Test {
 protected:
  PullerTest() : source_(Image(), /*region_index=*/0) {}

  static std::vector<uint8_t> Image() {
    std::vector<uint8_t> image(kPages * kPageSize);
    for (size_t i = 0; i < image.size(); i += 512) image[i] = static_cast<uint8_t>(1 + i / 4096);
    return image;
  }

  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FdStore>> store =
        FdStore::CreateMemory("pull", kPages * kPageSize);
    ASSERT_TRUE(store.ok()) << store.status();
    absl::StatusOr<std::unique_ptr<Region>> region =
        Region::Create({.name = "mem0", .index = 0, .size = kPages * kPageSize, .source = &source_},
                       *std::move(store));
    ASSERT_TRUE(region.ok()) << region.status();
    region_ = *std::move(region);
  }

  // Waits until `n` fetches are pending, or `kWait`.
  bool AwaitPending(size_t n) {
    const absl::Time deadline = absl::Now() + kWait;
    while (source_.pending() < n && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(1));
    return source_.pending() >= n;
  }

  FakeSource source_;
  std::unique_ptr<Region> region_;
};

TEST_F(PullerTest, PullsEveryPageOnceAndReportsCompletionOnce) {
  source_.set_answer_inline(true);
  absl::Notification complete;
  int completions = 0;
  {
    Puller puller({region_.get()}, {}, [&] {
      ++completions;
      complete.Notify();
    });
    ASSERT_TRUE(complete.WaitForNotificationWithTimeout(kWait));
  }
  EXPECT_EQ(completions, 1);
  EXPECT_TRUE(region_->complete());
  std::vector<int> times(kPages);
  for (const PendingFetch& f : source_.history()) {
    EXPECT_EQ(f.priority, protocol::Priority::kBulk);
    for (uint64_t p = f.first_page; p < f.first_page + f.count; ++p) ++times[p];
  }
  for (uint64_t p = 0; p < kPages; ++p) ASSERT_EQ(times[p], 1) << "page " << p;
}

TEST_F(PullerTest, KeepsOneSmallFetchInFlightWhileTheConsumerFaults) {
  Puller::Options options;
  options.max_inflight = 8;
  options.fault_quiet = absl::Hours(1);  // every fault stays recent in this test
  options.pages_while_faulting = 16;
  Puller puller({region_.get()}, options, [] {});
  ASSERT_TRUE(AwaitPending(8));  // full speed: 8 runs of 256 pages
  for (const PendingFetch& f : source_.history()) EXPECT_EQ(f.count, 256u);

  // A consumer faults on a page the pull has not reached.
  absl::Notification faulted;
  region_->EnsureLocal((kPages - 1) * kPageSize, 1, protocol::Priority::kDemand,
                       [&](absl::Status s) {
                         EXPECT_TRUE(s.ok()) << s;
                         faulted.Notify();
                       });
  // Answer everything; from then on the pull runs one small fetch at a
  // time.
  const size_t before = source_.history().size();
  for (int round = 0; round < 20; ++round) {
    ASSERT_TRUE(AwaitPending(1));
    absl::SleepFor(absl::Milliseconds(2));  // room for a wrongly issued second fetch
    // Round 0 still has the full-speed fetches and the demand fetch.
    if (round > 0) {
      EXPECT_EQ(source_.pending(), 1u) << "round " << round;
    }
    source_.CompleteAll();
  }
  ASSERT_TRUE(faulted.WaitForNotificationWithTimeout(kWait));
  std::vector<PendingFetch> history = source_.history();
  for (size_t i = before + 1; i < history.size(); ++i) {
    if (history[i].priority == protocol::Priority::kBulk) {
      EXPECT_LE(history[i].count, 16u);
    }
  }
}

}  // namespace
}  // namespace lazyram
