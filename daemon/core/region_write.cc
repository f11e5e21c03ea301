// Region: the consumer's changes — writes (fetching only partly covered
// edge pages), punches and zero ranges, and resizes of a region without a
// source.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"
#include "daemon/core/region.h"
#include "daemon/core/region_internal.h"

namespace lazyram {

using protocol::kMaxPagesPerRequest;
using protocol::kPageSize;
using protocol::Priority;
using region_internal::PagesFor;

absl::Status Region::GrowFor(uint64_t end) {
  if (end <= size()) return absl::OkStatus();
  if (has_source()) {
    return absl::OutOfRangeError(
        absl::StrCat("region ", name(), " has a fixed size of ", size(), " bytes"));
  }
  return Resize(end);
}

absl::Status Region::Resize(uint64_t new_size) {
  if (has_source()) {
    if (new_size == size()) return absl::OkStatus();
    return absl::PermissionDeniedError(
        absl::StrCat("region ", name(), " comes from a source; its size is fixed"));
  }
  if (new_size > max_size_) {
    return absl::OutOfRangeError(
        absl::StrCat("size ", new_size, " exceeds the maximum of ", max_size_, " bytes"));
  }
  // A truncation must also cut what a passthrough write appended.
  if (store_shared_.load(std::memory_order_acquire)) AdoptStoreGrowth();
  absl::MutexLock lock(&resize_mu_);
  const uint64_t old_size = size_.load(std::memory_order_acquire);
  if (new_size == old_size) return absl::OkStatus();
  if (state_ != nullptr) {
    absl::MutexLock waiters_lock(&waiters_mu_);
    BeforeLocalChange();
  }
  const uint64_t pages = PagesFor(new_size);
  if (new_size < old_size) {
    // Bytes cut off must read as zero if the region grows again.
    size_.store(new_size, std::memory_order_release);
    if (absl::Status s = store_->Punch(new_size, PagesFor(old_size) * kPageSize - new_size);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = map_.Resize(pages); !s.ok()) return s;
    if (absl::Status s = store_->Resize(new_size); !s.ok()) return s;
    return state_ != nullptr ? state_->SetSize(new_size) : absl::OkStatus();
  }
  if (absl::Status s = store_->Resize(new_size); !s.ok()) return s;
  // The old last page's bytes past the old end read zero now (those past
  // the new end too): a store through a mapping past the end may have left
  // bytes there (a memfd keeps them), and POSIX says they are not the
  // file's.
  if (const uint64_t tail_end = PagesFor(old_size) * kPageSize; tail_end > old_size) {
    if (absl::Status s = store_->Punch(old_size, tail_end - old_size); !s.ok()) return s;
  }
  if (absl::Status s = map_.Resize(pages); !s.ok()) return s;
  size_.store(new_size, std::memory_order_release);
  return state_ != nullptr ? state_->SetSize(new_size) : absl::OkStatus();
}

void Region::Write(uint64_t offset, std::span<const uint8_t> data, Done done) {
  if (data.empty()) {
    done(absl::OkStatus());
    return;
  }
  if (absl::Status s = GrowFor(offset + data.size()); !s.ok()) {
    done(std::move(s));
    return;
  }
  const uint64_t end = offset + data.size();
  const bool head_partial = offset % kPageSize != 0;
  const bool tail_partial = end % kPageSize != 0 && end < size();
  const bool edges_local =
      (!head_partial || IsLocal(offset, 1)) && (!tail_partial || IsLocal(end - 1, 1));
  if (edges_local) {
    WriteLocal(offset, data, std::move(done));
    return;
  }
  // The rest of a partly written page must hold the source's bytes: fetch
  // those edge pages first (pages the write covers whole are not fetched:
  // WriteLocal marks them dirty, and a fetch landing later skips them),
  // then write a copy of `data` (the caller's buffer does not outlive this
  // call).
  auto copy = std::make_shared<std::vector<uint8_t>>(data.begin(), data.end());
  EnsureEdgesLocal(offset / kPageSize, head_partial, (end - 1) / kPageSize, tail_partial,
                   [this, offset, copy, done = std::move(done)](absl::Status s) mutable {
                     if (!s.ok()) {
                       done(std::move(s));
                       return;
                     }
                     WriteLocal(offset, *copy, std::move(done));
                   });
}

void Region::EnsureEdgesLocal(uint64_t first_page, bool need_first, uint64_t last_page,
                              bool need_last, Done done) {
  if (need_first && need_last && last_page <= first_page + 1) {
    // One page, or two adjacent ones: one fetch.
    return EnsureLocal(first_page * kPageSize, (last_page - first_page + 1) * kPageSize,
                       Priority::kDemand, std::move(done));
  }
  if (!need_first || !need_last) {
    const uint64_t page = need_first ? first_page : last_page;
    return EnsureLocal(page * kPageSize, kPageSize, Priority::kDemand, std::move(done));
  }
  struct Join {
    std::atomic<int> left{2};
    absl::Mutex mu;
    absl::Status status ABSL_GUARDED_BY(mu);
    Done done;
  };
  auto join = std::make_shared<Join>();
  join->done = std::move(done);
  auto one = [join](absl::Status s) {
    if (!s.ok()) {
      absl::MutexLock lock(&join->mu);
      if (join->status.ok()) join->status = std::move(s);
    }
    if (join->left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    absl::Status result;
    {
      absl::MutexLock lock(&join->mu);
      result = join->status;
    }
    join->done(std::move(result));
  };
  EnsureLocal(first_page * kPageSize, kPageSize, Priority::kDemand, one);
  EnsureLocal(last_page * kPageSize, kPageSize, Priority::kDemand, one);
}

void Region::WriteLocal(uint64_t offset, std::span<const uint8_t> data, Done done) {
  const uint64_t first = offset / kPageSize;
  const uint64_t end = PagesFor(offset + data.size());
  std::vector<std::pair<uint64_t, PageState>> changes;
  changes.reserve(end - first);
  for (uint64_t p = first; p < end; ++p) changes.emplace_back(p, PageState::kDirty);
  LockStripes(first, end);
  absl::Status s = store_->Write(offset, data);
  std::vector<Waiter*> woken;
  if (s.ok()) woken = Publish(changes);
  UnlockStripes(first, end);
  Release(std::move(woken), absl::OkStatus());
  done(std::move(s));
}

void Region::Punch(uint64_t offset, uint64_t length, Done done) {
  const uint64_t end = std::min(offset + length, size());
  if (offset >= end) {
    done(absl::OkStatus());
    return;
  }
  const uint64_t full_first = PagesFor(offset) * kPageSize;
  const uint64_t full_end = end == size() ? PagesFor(end) * kPageSize : end / kPageSize * kPageSize;
  if (full_first >= full_end) {
    // Inside one page: zero the bytes in place like any other write.
    auto zeros = std::make_shared<std::vector<uint8_t>>(end - offset, 0);
    Write(offset, *zeros,
          [zeros, done = std::move(done)](absl::Status s) mutable { done(std::move(s)); });
    return;
  }
  // Zero the partial head and tail pages by writing, then the whole pages.
  auto head = std::make_shared<std::vector<uint8_t>>(full_first - offset, 0);
  auto tail = std::make_shared<std::vector<uint8_t>>(end > full_end ? end - full_end : 0, 0);
  Write(offset, *head,
        [this, head, tail, full_first, full_end, done = std::move(done)](absl::Status s) mutable {
          if (!s.ok()) {
            done(std::move(s));
            return;
          }
          Write(full_end, *tail,
                [this, tail, full_first, full_end, done = std::move(done)](absl::Status s) mutable {
                  if (!s.ok()) {
                    done(std::move(s));
                    return;
                  }
                  PunchLocal(full_first, full_end - full_first, std::move(done));
                });
        });
}

void Region::PunchLocal(uint64_t offset, uint64_t length, Done done) {
  const uint64_t first = offset / kPageSize;
  const uint64_t end = PagesFor(offset + length);
  // One stripe at a time, so punching a huge range holds no lock for long
  // and needs no list of every page in it.
  constexpr uint64_t kChunk = uint64_t{1} << kStripeShift;
  std::vector<std::pair<uint64_t, PageState>> changes;
  for (uint64_t a = first; a < end;) {
    const uint64_t b = std::min(end, (a / kChunk + 1) * kChunk);
    changes.clear();
    for (uint64_t p = a; p < b; ++p) changes.emplace_back(p, PageState::kZero);
    LockStripes(a, b);
    absl::Status s = store_->Punch(a * kPageSize, (b - a) * kPageSize);
    std::vector<Waiter*> woken;
    if (s.ok()) woken = Publish(changes);
    UnlockStripes(a, b);
    Release(std::move(woken), absl::OkStatus());
    if (!s.ok()) return done(std::move(s));
    a = b;
  }
  done(absl::OkStatus());
}

}  // namespace lazyram
