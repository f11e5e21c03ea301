// FakeSource: a PageSource for unit tests whose fetches wait until the
// test answers them (or are answered at once). Test-only, header-only.
#ifndef LAZYRAM_DAEMON_CORE_FAKE_PAGE_SOURCE_H_
#define LAZYRAM_DAEMON_CORE_FAKE_PAGE_SOURCE_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/core/page_source.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

// A fetch the region asked for, to be answered by the test.
struct PendingFetch {
  uint32_t region = 0;
  uint64_t first_page = 0;
  uint32_t count = 0;
  protocol::Priority priority = protocol::Priority::kDemand;
  FetchCallback done;
};

// A PageSource whose fetches wait until the test answers them. The source's
// bytes are `image`; a page that is all zero there is sent as a zero flag,
// as the page server does.
class FakeSource : public PageSource {
 public:
  // `region_index`: the only region index the test expects fetches for.
  explicit FakeSource(std::vector<uint8_t> image, uint32_t region_index = 3)
      : image_(std::move(image)), region_index_(region_index) {}

  void Fetch(uint32_t region, uint64_t first_page, uint32_t count, protocol::Priority priority,
             FetchCallback done) override {
    EXPECT_EQ(region, region_index_);
    EXPECT_GE(count, 1u);
    EXPECT_LE(count, protocol::kMaxPagesPerRequest);
    EXPECT_LE((first_page + count) * protocol::kPageSize, image_.size() + protocol::kPageSize - 1);
    PendingFetch f{region, first_page, count, priority, std::move(done)};
    {
      absl::MutexLock lock(&mu_);
      history_.push_back({region, first_page, count, priority, nullptr});
      if (!answer_inline_) {
        pending_.push_back(std::move(f));
        return;
      }
    }
    Deliver(std::move(f));
  }

  // Whether Fetch answers at once, on the caller's thread.
  void set_answer_inline(bool answer_inline) {
    absl::MutexLock lock(&mu_);
    answer_inline_ = answer_inline;
  }

  // Every Fetch so far (without callbacks), oldest first.
  std::vector<PendingFetch> history() const {
    absl::MutexLock lock(&mu_);
    std::vector<PendingFetch> out;
    for (const PendingFetch& f : history_) {
      out.push_back({f.region, f.first_page, f.count, f.priority, nullptr});
    }
    return out;
  }
  size_t fetches() const {
    absl::MutexLock lock(&mu_);
    return history_.size();
  }
  size_t pending() const {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  // Waits up to `timeout` for a fetch to be pending; returns how many are.
  size_t AwaitPending(absl::Duration timeout) const {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(
        absl::Condition(
            +[](const std::deque<PendingFetch>* p) { return !p->empty(); }, &pending_),
        timeout);
    return pending_.size();
  }
  // The pages of the pending fetches.
  std::vector<uint64_t> PendingPages() const {
    absl::MutexLock lock(&mu_);
    std::vector<uint64_t> pages;
    for (const PendingFetch& f : pending_) {
      for (uint64_t p = f.first_page; p < f.first_page + f.count; ++p) pages.push_back(p);
    }
    return pages;
  }
  // Whether any fetch so far covered `page`.
  bool Fetched(uint64_t page) const {
    absl::MutexLock lock(&mu_);
    return std::any_of(history_.begin(), history_.end(), [page](const PendingFetch& f) {
      return page >= f.first_page && page < f.first_page + f.count;
    });
  }

  // Removes and returns pending fetch `i` (oldest first), if there is one.
  std::optional<PendingFetch> Take(size_t i = 0) {
    absl::MutexLock lock(&mu_);
    if (i >= pending_.size()) return std::nullopt;
    PendingFetch f = std::move(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<ptrdiff_t>(i));
    return f;
  }

  // Answers `f` from the image. Runs the region's landing on this thread.
  void Deliver(PendingFetch f) const {
    std::vector<uint8_t> flags, payload;
    for (uint64_t p = f.first_page; p < f.first_page + f.count; ++p) {
      auto page = image_.begin() + static_cast<ptrdiff_t>(p * protocol::kPageSize);
      auto page_end = image_.begin() + static_cast<ptrdiff_t>(std::min<uint64_t>(
                                           (p + 1) * protocol::kPageSize, image_.size()));
      if (std::all_of(page, page_end, [](uint8_t b) { return b == 0; })) {
        flags.push_back(static_cast<uint8_t>(protocol::PageFlag::kZero));
      } else {
        flags.push_back(static_cast<uint8_t>(protocol::PageFlag::kData));
        payload.insert(payload.end(), page, page_end);
        payload.resize(payload.size() + (p + 1) * protocol::kPageSize -
                       static_cast<uint64_t>(page_end - image_.begin()));
      }
    }
    DeliverBytes(std::move(f), flags, payload);
  }

  // Answers `f` with exactly these flags and payload.
  static void DeliverBytes(PendingFetch f, std::span<const uint8_t> flags,
                           std::span<const uint8_t> payload) {
    FetchedPages pages{f.first_page, f.count, flags, payload};
    f.done(pages);
  }

  static void Fail(PendingFetch f, absl::Status status) { f.done(std::move(status)); }

  // Answers the oldest pending fetch from the image; false if none.
  bool CompleteNext() {
    std::optional<PendingFetch> f = Take();
    if (!f.has_value()) return false;
    Deliver(*std::move(f));
    return true;
  }
  // Answers fetches until none is pending (answers may cause new fetches).
  int CompleteAll() {
    int n = 0;
    while (CompleteNext()) ++n;
    return n;
  }

  const std::vector<uint8_t>& image() const { return image_; }

 private:
  const std::vector<uint8_t> image_;
  const uint32_t region_index_;
  mutable absl::Mutex mu_;
  std::vector<PendingFetch> history_ ABSL_GUARDED_BY(mu_);
  std::deque<PendingFetch> pending_ ABSL_GUARDED_BY(mu_);
  bool answer_inline_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_FAKE_PAGE_SOURCE_H_
