// Region: how pages arrive — waits on absent pages (EnsureLocal, Prefetch),
// fetches and their landing under the stripe locks, the waiters they wake,
// and the background pull's claims (PullNext).
#include <algorithm>
#include <utility>

#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/core/region.h"
#include "daemon/core/region_internal.h"

namespace lazyram {

using protocol::kMaxPagesPerRequest;
using protocol::kPageSize;
using protocol::Priority;
using region_internal::PagesFor;

void Region::EnsureLocal(uint64_t offset, uint64_t length, Priority priority, Done done,
                         uint64_t readahead) {
  MakeLocal(offset, length, priority, /*fault=*/priority == Priority::kDemand, std::move(done),
            readahead);
}

void Region::Prefetch(uint64_t offset, uint64_t length, Done done) {
  MakeLocal(offset, length, Priority::kDemand, /*fault=*/false, std::move(done), 0);
}

void Region::MakeLocal(uint64_t offset, uint64_t length, Priority priority, bool fault, Done done,
                       uint64_t readahead) {
  if (IsLocal(offset, length) && readahead == 0) {
    done(absl::OkStatus());
    return;
  }
  const uint64_t pages = map_.size();
  const uint64_t first = offset / kPageSize;
  const uint64_t end = std::min(PagesFor(offset + length), pages);
  const uint64_t ahead_end = std::min(PagesFor(offset + length + readahead), pages);

  auto* waiter = new Waiter;
  waiter->done = std::move(done);
  std::vector<Run> runs;
  auto claim = [&](uint64_t p) {
    if (!runs.empty() && runs.back().first + runs.back().count == p &&
        runs.back().count < kMaxPagesPerRequest) {
      ++runs.back().count;
    } else {
      runs.push_back({p, 1});
    }
  };
  {
    absl::MutexLock lock(&waiters_mu_);
    for (uint64_t p = first; p < ahead_end; ++p) {
      const PageState s = map_.Get(p);
      if (lazyram::IsLocal(s)) continue;
      if (s == PageState::kAbsent) {
        map_.Transition(p, PageState::kAbsent, PageState::kFetching);
        claim(p);
      } else if (s == PageState::kPulling && priority == Priority::kDemand && p < end) {
        // A bulk transfer may sit behind a megabyte of others: ask again on
        // the demand path; whichever copy lands first wins.
        map_.Transition(p, PageState::kPulling, PageState::kFetching);
        claim(p);
      }
      if (p < end) {
        waiters_[p].push_back(waiter);
        waiter->remaining.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }
  if (!runs.empty() && fault) {
    fault_hint_.store(runs.back().first + runs.back().count, std::memory_order_relaxed);
    last_fault_ns_.store(absl::GetCurrentTimeNanos(), std::memory_order_relaxed);
  }
  // Every awaited page is registered: drop the caller's hold before the
  // fetches start, so that the thread landing the last page answers at
  // once instead of leaving that to this one (which may not get a CPU
  // again for a while after its send). `waiter` may be gone after this.
  Release({waiter}, absl::OkStatus());
  for (const Run& run : runs) StartFetch(run, priority, fault);
}

void Region::StartFetch(Run run, Priority priority, bool fault) {
  if (fault) demand_fetches_.fetch_add(1, std::memory_order_relaxed);
  const absl::Time started = absl::Now();
  source_->Fetch(index_, run.first, run.count, priority,
                 [this, run, fault, started](absl::StatusOr<FetchedPages> pages) {
                   Land(run, std::move(pages), PageState::kFetching, fault, started);
                 });
}

void Region::Land(Run run, absl::StatusOr<FetchedPages> pages, PageState claimed, bool fault,
                  absl::Time started) {
  absl::Status error = pages.status();
  const uint64_t end = run.first + run.count;
  if (error.ok()) bytes_fetched_.fetch_add(pages->payload.size(), std::memory_order_relaxed);
  // A chunk at a time: the stripe locks are held for one chunk's store
  // write, not a megabyte's, so a demand fetch landing in the same stripe
  // waits microseconds behind the pull, not a millisecond.
  std::vector<std::pair<uint64_t, PageState>> changes;
  size_t data_index = 0;  // of the next data page in the payload
  for (uint64_t chunk = run.first; chunk < end; chunk += kLandChunk) {
    const uint64_t chunk_end = std::min(end, chunk + kLandChunk);
    changes.clear();
    LockStripes(chunk, chunk_end);
    if (error.ok()) error = WriteLanded(*pages, chunk, chunk_end, &data_index, &changes);
    if (!error.ok()) {
      // The pages become absent again so a later read retries them — but
      // only those still waiting on this fetch: a failed pull leaves alone
      // a page that a demand fetch asked for again meanwhile. Chunks
      // already published keep their (written) pages.
      changes.clear();
      for (uint64_t p = chunk; p < chunk_end; ++p) {
        if (map_.Get(p) == claimed) changes.emplace_back(p, PageState::kAbsent);
      }
    }
    std::vector<Waiter*> woken = Publish(changes);
    UnlockStripes(chunk, chunk_end);
    Release(std::move(woken), error);
  }
  if (fault && error.ok()) {
    demand_latency_.Record(static_cast<uint64_t>(absl::ToInt64Microseconds(absl::Now() - started)));
  }
  if (claimed == PageState::kPulling && error.ok()) {
    absl::MutexLock lock(&listener_mu_);
    if (pull_listener_) pull_listener_(run.first, run.count);
  }
}

absl::Status Region::WriteLanded(const FetchedPages& pages, uint64_t first, uint64_t end,
                                 size_t* data_index,
                                 std::vector<std::pair<uint64_t, PageState>>* changes) {
  // Each stretch of consecutive data pages that still want their bytes
  // goes to the store in one write; pages written or punched meanwhile are
  // skipped.
  uint64_t stretch_first = 0;
  size_t stretch_len = 0, stretch_data = 0;
  auto flush = [&]() -> absl::Status {
    if (stretch_len == 0) return absl::OkStatus();
    const size_t len = std::exchange(stretch_len, 0);
    return store_->Write(stretch_first * kPageSize,
                         pages.payload.subspan(stretch_data * kPageSize, len * kPageSize));
  };
  for (uint64_t p = first; p < end; ++p) {
    const bool is_data =
        pages.flags[p - pages.first_page] == static_cast<uint8_t>(protocol::PageFlag::kData);
    const PageState s = map_.Get(p);
    const bool wanted = s == PageState::kFetching || s == PageState::kPulling;
    if (wanted && is_data) {
      if (stretch_len == 0) {
        stretch_first = p;
        stretch_data = *data_index;
      }
      ++stretch_len;
      changes->emplace_back(p, PageState::kPresent);
    } else {
      if (absl::Status s = flush(); !s.ok()) return s;
      if (wanted) changes->emplace_back(p, PageState::kZero);
    }
    if (is_data) ++*data_index;
  }
  return flush();
}

void Region::SetPullListener(PullListener listener) {
  absl::MutexLock lock(&listener_mu_);
  pull_listener_ = std::move(listener);
}

std::vector<Region::Waiter*> Region::Publish(
    std::span<const std::pair<uint64_t, PageState>> changes) {
  std::vector<Waiter*> woken;
  absl::MutexLock lock(&waiters_mu_);
  if (std::any_of(changes.begin(), changes.end(),
                  [](const auto& c) { return lazyram::IsLocal(c.second); })) {
    BeforeLocalChange();
  }
  for (const auto& [page, state] : changes) {
    const PageState was = map_.Get(page);
    if (lazyram::IsLocal(was) && state == PageState::kAbsent) continue;
    map_.Set(page, state);
    auto it = waiters_.find(page);
    if (it == waiters_.end()) continue;
    woken.insert(woken.end(), it->second.begin(), it->second.end());
    waiters_.erase(it);
  }
  return woken;
}

void Region::Release(std::vector<Waiter*> waiters, const absl::Status& status) {
  for (Waiter* w : waiters) {
    if (!status.ok()) {
      absl::MutexLock lock(&w->mu);
      if (w->status.ok()) w->status = status;
    }
    if (w->remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) continue;
    absl::Status result;
    {
      absl::MutexLock lock(&w->mu);
      result = w->status;
    }
    Done done = std::move(w->done);
    delete w;
    done(std::move(result));
  }
}

bool Region::PullNext(uint64_t* cursor, uint32_t max_pages, Done done) {
  // An unlinked region is not pulled: only a file still open on it may
  // still fetch what it reads.
  if (unlinked()) return false;
  const uint64_t pages = map_.size();
  if (pages == 0 || map_.Count(PageState::kAbsent) == 0) return false;
  uint64_t start = *cursor < pages ? *cursor : 0;
  uint64_t p = map_.FindNext(start, PageState::kAbsent);
  if (p == pages && start != 0) p = map_.FindNext(0, PageState::kAbsent);
  if (p == pages) return false;
  Run run{p, 0};
  {
    absl::MutexLock lock(&waiters_mu_);
    while (run.count < max_pages && p < pages &&
           map_.Transition(p, PageState::kAbsent, PageState::kPulling)) {
      ++run.count;
      ++p;
    }
  }
  *cursor = p;
  if (run.count == 0) {  // a demand fetch took the page first
    done(absl::OkStatus());
    return true;
  }
  const absl::Time started = absl::Now();
  source_->Fetch(
      index_, run.first, run.count, Priority::kBulk,
      [this, run, started, done = std::move(done)](absl::StatusOr<FetchedPages> pages) mutable {
        absl::Status status = pages.status();
        Land(run, std::move(pages), PageState::kPulling, /*fault=*/false, started);
        done(std::move(status));
      });
  return true;
}

}  // namespace lazyram
