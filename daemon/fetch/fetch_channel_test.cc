// FetchChannel's direct send: a demand request sent from the caller's
// thread when the demand connection's sending side is free, queued for the
// I/O thread when another thread holds it. Driven through a Fetcher against
// a real PageServer on 127.0.0.1, with Fetcher::Options::after_direct_send
// holding a direct sender between its send and giving the sending side back.
#include "daemon/fetch/fetch_channel.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "daemon/fetch/fetched_pages_check.h"
#include "daemon/fetch/fetcher.h"
#include "daemon/server/page_server.h"
#include "gtest/gtest.h"

namespace lazyram {
namespace {

using protocol::kPageSize;
using protocol::Priority;

// Generous, for a loaded machine: nothing waits this long when the code is
// right, and a request that was never sent waits forever.
constexpr absl::Duration kWait = absl::Seconds(30);

class FetchChannelTest : public ::testing::Test {
 protected:
  struct Result {
    absl::Notification done;
    std::atomic<int> errors{0};
  };

  void SetUp() override {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = absl::StrCat(base != nullptr ? base : "/tmp", "/fetch_channel_test.XXXXXX");
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    // Random pages, every seventh one zero (elided on the wire).
    image_.assign(kPages * kPageSize, 0);
    std::mt19937_64 rng(5);
    for (uint64_t p = 0; p < kPages; ++p) {
      if (p % 7 == 0) continue;
      for (size_t i = 0; i < kPageSize; i += 8) {
        const uint64_t v = rng();
        std::memcpy(&image_[p * kPageSize + i], &v, 8);
      }
    }
    const std::string path = dir_ + "/img";
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
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
    fetcher_.reset();
    if (server_ != nullptr) {
      server_->Stop();
      server_thread_.join();
    }
    std::filesystem::remove_all(dir_);
  }

  // Connects with `hook` as after_direct_send (every direct send counted).
  void Connect(std::function<void()> hook = nullptr) {
    absl::StatusOr<std::unique_ptr<Fetcher>> fetcher =
        Fetcher::Connect({.addresses = {server_->address()}, .after_direct_send = [this, hook] {
                            direct_sends_.fetch_add(1);
                            if (hook) hook();
                          }});
    ASSERT_TRUE(fetcher.ok()) << fetcher.status();
    fetcher_ = *std::move(fetcher);
  }

  // Fetches on demand and checks every page against the image.
  void FetchAndCheck(uint64_t first, uint32_t count, Result* result) {
    fetcher_->Fetch(0, first, count, Priority::kDemand,
                    [this, first, count, result](absl::StatusOr<FetchedPages> pages) {
                      result->errors += testing::CountMismatches(pages, image_, first, count);
                      result->done.Notify();
                    });
  }

  // Waits until the replies owed reach `bytes` (requests charged when they
  // are sent directly, or when the I/O thread puts them out).
  bool WaitInflight(uint64_t bytes) {
    const absl::Time deadline = absl::Now() + kWait;
    while (fetcher_->stats().memory_inflight != bytes) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(1));
    }
    return true;
  }

  static constexpr uint64_t kPages = 2048;  // 8 MiB
  std::string dir_;
  std::vector<uint8_t> image_;
  std::unique_ptr<PageServer> server_;
  std::thread server_thread_;
  std::unique_ptr<Fetcher> fetcher_;
  std::atomic<int> direct_sends_{0};
};

// Many threads each with several demand fetches outstanding at once, while
// some direct senders dawdle between their send and giving the sending side
// back (as a preempted thread would): requests sent directly and requests
// queued behind them interleave on one connection; every one must be
// answered with the server's bytes.
TEST_F(FetchChannelTest, BurstsOfDemandFetchesFromManyThreadsAllCompleteWithTheRightBytes) {
  std::atomic<int> calls{0};
  Connect([&] {
    const int n = calls.fetch_add(1);
    if (n % 5 == 0) {
      absl::SleepFor(absl::Microseconds(200));
    } else if (n % 5 == 1) {
      std::this_thread::yield();
    }
  });
  ASSERT_NE(fetcher_, nullptr);
  // One fetch on an idle connection is always sent directly.
  Result warm;
  FetchAndCheck(1, 1, &warm);
  ASSERT_TRUE(warm.done.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(warm.errors, 0);
  EXPECT_EQ(direct_sends_.load(), 1);

  constexpr int kThreads = 8, kBursts = 60, kBurst = 6;
  std::atomic<int> errors{0}, lost{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int b = 0; b < kBursts; ++b) {
        std::vector<std::unique_ptr<Result>> burst;
        for (int i = 0; i < kBurst; ++i) {
          const uint32_t count = i % 3 == 0 ? 8 : 1;
          burst.push_back(std::make_unique<Result>());
          FetchAndCheck(rng() % (kPages - count), count, burst.back().get());
        }
        for (auto& r : burst) {
          if (!r->done.WaitForNotificationWithTimeout(kWait)) {
            ++lost;
            // Late callbacks may still come: leave them their Results.
            for (auto& leaked : burst) leaked.release();
            return;
          }
          errors += r->errors;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(lost, 0) << "demand fetches never answered";
  EXPECT_EQ(errors, 0);
  EXPECT_GT(direct_sends_.load(), 1);
  EXPECT_EQ(fetcher_->stats().checksum_errors, 0u);
  EXPECT_EQ(fetcher_->stats().memory_inflight, 0u);
  EXPECT_EQ(server_->demand_connections(), 1);
}

// Regression for cd46cb0 ("frames queued during a direct send are sent
// after it"): while one thread holds the sending side after its direct
// send, requests from other threads are queued and put out by the I/O
// thread, which cannot send them then. They are not sent before the direct
// sender gives the sending side back, and they are sent then — even though
// the direct sender's own reply was handled meanwhile, so nothing else is
// left to wake the I/O thread.
TEST_F(FetchChannelTest, EveryRequestQueuedDuringADirectSendIsSentAfterIt) {
  constexpr int kThreads = 4, kEach = 4, kQueued = kThreads * kEach;
  absl::Notification in_send, release;
  std::atomic<int> calls{0};
  Result first;
  std::vector<std::unique_ptr<Result>> queued;
  for (int i = 0; i < kQueued; ++i) queued.push_back(std::make_unique<Result>());
  // Also when an assertion fails: the fetcher stops (failing what is
  // pending: no callback comes later) before what its hook and its
  // callbacks use goes.
  absl::Cleanup stop = [&] { fetcher_.reset(); };
  Connect([&] {
    if (calls.fetch_add(1) == 0) {
      in_send.Notify();
      release.WaitForNotification();
    }
  });
  ASSERT_NE(fetcher_, nullptr);
  std::thread sender([&] { FetchAndCheck(3, 1, &first); });
  absl::Cleanup join = [&] {
    release.Notify();
    sender.join();
  };
  ASSERT_TRUE(in_send.WaitForNotificationWithTimeout(kWait));
  // The direct send went out: its reply comes back while the sender still
  // holds the sending side.
  ASSERT_TRUE(first.done.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(first.errors, 0);

  // Queued from several threads at once.
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int k = t * kEach + i;
        FetchAndCheck(10 + 17 * k, 1 + k % 4, queued[k].get());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  // The I/O thread has taken every one of them onto the connection...
  uint64_t owed = 0;
  for (int k = 0; k < kQueued; ++k) owed += FetchChannel::ReplyCost(1 + k % 4);
  ASSERT_TRUE(WaitInflight(owed)) << fetcher_->stats().memory_inflight << " of " << owed;
  // ...and none of them went out: none is sent directly, and the sending
  // side is the paused thread's.
  EXPECT_EQ(direct_sends_.load(), 1);
  for (int k = 0; k < kQueued; ++k) EXPECT_FALSE(queued[k]->done.HasBeenNotified()) << k;

  std::move(join).Invoke();
  for (int k = 0; k < kQueued; ++k) {
    ASSERT_TRUE(queued[k]->done.WaitForNotificationWithTimeout(kWait))
        << "queued request " << k << " was never sent";
    EXPECT_EQ(queued[k]->errors, 0) << k;
  }
  EXPECT_TRUE(WaitInflight(0));

  // Then the connection is idle again and a request goes out directly once
  // more (the I/O thread's send may still be finishing: a few tries).
  bool direct_again = false;
  for (int i = 0; i < 100 && !direct_again; ++i) {
    const int before = direct_sends_.load();
    Result again;
    FetchAndCheck(500 + i, 1, &again);
    if (!again.done.WaitForNotificationWithTimeout(kWait)) {
      fetcher_.reset();  // before `again` goes
      FAIL() << "a fetch on an idle connection was never answered";
    }
    EXPECT_EQ(again.errors, 0);
    direct_again = direct_sends_.load() > before;
    if (!direct_again) absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_TRUE(direct_again);
}

}  // namespace
}  // namespace lazyram
