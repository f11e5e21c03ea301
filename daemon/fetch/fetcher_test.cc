#include "daemon/fetch/fetcher.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "daemon/fetch/fetched_pages_check.h"
#include "daemon/server/page_server.h"
#include "gtest/gtest.h"

namespace lazyram {
namespace {

using protocol::kPageSize;
using protocol::Priority;

constexpr absl::Duration kWait = absl::Seconds(30);

class FetcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lazyram-fetcher-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // Random pages, every fifth one zero (elided on the wire).
    image_.resize(kPages * kPageSize);
    std::mt19937_64 rng(7);
    for (uint64_t p = 0; p < kPages; ++p) {
      if (p % 5 == 0) continue;
      for (size_t i = 0; i < kPageSize; i += 8) {
        const uint64_t v = rng();
        std::memcpy(&image_[p * kPageSize + i], &v, 8);
      }
    }
    const std::string path = dir_ + "/img";
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, image_.data(), image_.size()), static_cast<ssize_t>(image_.size()));
    close(fd);
    PageServer::Options options;
    options.listen = *NetAddress::Parse("127.0.0.1:0", /*allow_port_zero=*/true);
    options.regions.push_back({"mem0", path});
    absl::StatusOr<std::unique_ptr<PageServer>> server = PageServer::Create(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    server_thread_ = std::thread([this] { (void)server_->Run(); });
  }
  void TearDown() override {
    server_->Stop();
    server_thread_.join();
    std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<Fetcher> Connect() {
    absl::StatusOr<std::unique_ptr<Fetcher>> fetcher =
        Fetcher::Connect({.addresses = {server_->address()}});
    EXPECT_TRUE(fetcher.ok()) << fetcher.status();
    return fetcher.ok() ? *std::move(fetcher) : nullptr;
  }

  // Fetches and checks every page against the image; returns the error
  // count (0 when every byte matched).
  struct Result {
    absl::Notification done;
    std::atomic<int> errors{0};
  };
  void FetchAndCheck(Fetcher& fetcher, uint64_t first, uint32_t count, Priority priority,
                     Result* result) {
    fetcher.Fetch(0, first, count, priority,
                  [this, first, count, result](absl::StatusOr<FetchedPages> pages) {
                    result->errors += testing::CountMismatches(pages, image_, first, count);
                    result->done.Notify();
                  });
  }

  static constexpr uint64_t kPages = 4096;  // 16 MiB
  std::string dir_;
  std::vector<uint8_t> image_;
  std::unique_ptr<PageServer> server_;
  std::thread server_thread_;
};

TEST_F(FetcherTest, DemandAndBulkFetchesFromManyThreadsReturnTheServersBytes) {
  std::unique_ptr<Fetcher> fetcher = Connect();
  ASSERT_NE(fetcher, nullptr);
  // Bulk runs of 256 pages over the whole image, while eight threads fetch
  // single pages and 16-page runs on demand: sent straight from each thread
  // when the connection's sending side is free, queued for the I/O thread
  // when another holds it — a fetch lost between the two (never sent, or
  // its reply never taken) fails the test after kWait.
  std::vector<std::unique_ptr<Result>> bulk;
  for (uint64_t first = 0; first < kPages; first += 256) {
    bulk.push_back(std::make_unique<Result>());
    FetchAndCheck(*fetcher, first, 256, Priority::kBulk, bulk.back().get());
  }
  std::vector<std::thread> threads;
  std::atomic<int> demand_errors{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 500; ++i) {
        const uint32_t count = i % 4 == 0 ? 16 : 1;
        const uint64_t first = rng() % (kPages - count);
        Result result;
        FetchAndCheck(*fetcher, first, count, Priority::kDemand, &result);
        if (!result.done.WaitForNotificationWithTimeout(kWait)) {
          ++demand_errors;
          return;
        }
        demand_errors += result.errors;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(demand_errors, 0);
  for (auto& r : bulk) {
    ASSERT_TRUE(r->done.WaitForNotificationWithTimeout(kWait));
    EXPECT_EQ(r->errors, 0);
  }
  EXPECT_EQ(fetcher->stats().checksum_errors, 0u);
  // The demand connection said so in its HELLO and is served by the
  // server's demand loop; the bulk ones stayed on the main loop.
  EXPECT_EQ(server_->demand_connections(), 1);
  EXPECT_EQ(fetcher->state(), SourceState::kConnected);
}

// A request queued while another thread holds the demand connection's
// sending side goes out once that thread gives it back — even when the
// reply to that thread's own request has been handled meanwhile, so that
// nothing else is left to wake the I/O thread (a fault used to hang so).
TEST_F(FetcherTest, RequestQueuedDuringADirectSendIsSentAfterIt) {
  absl::Notification in_send, release;
  std::atomic<int> calls{0};
  absl::StatusOr<std::unique_ptr<Fetcher>> connected =
      Fetcher::Connect({.addresses = {server_->address()}, .after_direct_send = [&] {
                          if (calls++ == 0) {
                            in_send.Notify();
                            release.WaitForNotification();
                          }
                        }});
  ASSERT_TRUE(connected.ok()) << connected.status();
  Fetcher& fetcher = **connected;
  Result first, second;
  std::thread sender([&] { FetchAndCheck(fetcher, 3, 1, Priority::kDemand, &first); });
  ASSERT_TRUE(in_send.WaitForNotificationWithTimeout(kWait));
  // The first request is on the wire and its thread still holds the
  // sending side: the second is queued, and put out by the I/O thread
  // (charged) after the first's reply was handled (refunded).
  ASSERT_TRUE(first.done.WaitForNotificationWithTimeout(kWait));
  FetchAndCheck(fetcher, 7, 1, Priority::kDemand, &second);
  const uint64_t one = FetchChannel::ReplyCost(1);
  const absl::Time deadline = absl::Now() + kWait;
  while (fetcher.stats().memory_inflight < one && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(fetcher.stats().memory_inflight, one);
  release.Notify();
  sender.join();
  ASSERT_TRUE(second.done.WaitForNotificationWithTimeout(absl::Seconds(10)))
      << "the queued request was never sent";
  EXPECT_EQ(first.errors + second.errors, 0);
}

TEST_F(FetcherTest, FetchesAfterDetachOrShutdownAreRefused) {
  std::unique_ptr<Fetcher> fetcher = Connect();
  ASSERT_NE(fetcher, nullptr);
  Result first;
  FetchAndCheck(*fetcher, 10, 1, Priority::kDemand, &first);
  ASSERT_TRUE(first.done.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(first.errors, 0);

  fetcher->Detach();
  EXPECT_EQ(fetcher->state(), SourceState::kDetached);
  for (Priority priority : {Priority::kDemand, Priority::kBulk}) {
    absl::Notification done;
    absl::Status status;
    fetcher->Fetch(0, 1, 1, priority, [&](absl::StatusOr<FetchedPages> pages) {
      status = pages.status();
      done.Notify();
    });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(kWait));
    EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  }
  fetcher->Shutdown();
  absl::Notification done;
  absl::Status status;
  fetcher->Fetch(0, 1, 1, Priority::kDemand, [&](absl::StatusOr<FetchedPages> pages) {
    status = pages.status();
    done.Notify();
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kWait));
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
}

}  // namespace
}  // namespace lazyram
