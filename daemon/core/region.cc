#include "daemon/core/region.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"

namespace lazyram {

using protocol::kMaxPagesPerRequest;
using protocol::kPageSize;
using protocol::Priority;

// One pending EnsureLocal: `remaining` counts the pages still awaited plus
// one held by the caller while it registers, so `done` cannot run early.
struct Region::Waiter {
  std::atomic<int64_t> remaining{1};
  absl::Mutex mu;
  absl::Status status ABSL_GUARDED_BY(mu);
  Done done;
};

namespace {

uint64_t PagesFor(uint64_t bytes) { return (bytes + kPageSize - 1) / kPageSize; }

// Pages of [0, pages) that hold data in `fd` (SEEK_DATA/SEEK_HOLE; a page
// partly allocated counts).
uint64_t AllocatedPages(int fd, uint64_t pages) {
  const off_t end = static_cast<off_t>(pages * kPageSize);
  uint64_t count = 0;
  off_t pos = 0;
  while (pos < end) {
    const off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0 || data >= end) break;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    count += PagesFor(static_cast<uint64_t>(hole)) - static_cast<uint64_t>(data) / kPageSize;
    pos = hole;
  }
  return std::min(count, pages);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Region>> Region::Create(Options options,
                                                       std::unique_ptr<Store> store) {
  const uint64_t pages = PagesFor(options.size);
  const bool sourced = options.source != nullptr;
  uint64_t capacity = sourced ? pages : PagesFor(std::max(options.max_size, options.size));
  StateFile* state = options.state.get();
  if (state != nullptr) {
    // The file's room is fixed when it is created.
    if (state->identity().capacity_pages < pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("state file of region ", options.name, " is too small"));
    }
    capacity = state->identity().capacity_pages;
    options.max_size = std::min(options.max_size, capacity * kPageSize);
  }
  if (state != nullptr && state->restored()) {
    absl::StatusOr<PageMap> map = state->MapPages(pages, state->base());
    if (!map.ok()) return map.status();
    state->Recover(&*map);
    if (absl::Status s = state->Commit(state->base()); !s.ok()) return s;
    auto region =
        std::unique_ptr<Region>(new Region(std::move(options), std::move(store), *std::move(map)));
    region->pages_restored_ = region->map_.LocalCount();
    return region;
  }
  absl::StatusOr<PageMap> map = NewMap(options, pages, capacity);
  if (!map.ok()) return map.status();
  return std::unique_ptr<Region>(new Region(std::move(options), std::move(store), *std::move(map)));
}

absl::StatusOr<PageMap> Region::NewMap(const Options& options, uint64_t pages, uint64_t capacity) {
  const bool sourced = options.source != nullptr;
  uint64_t zero_pages = 0;
  uint64_t next = 0;  // extents must be sorted and disjoint
  for (const protocol::ZeroExtent& e : options.zero_extents) {
    if (e.first_page < next || e.first_page >= pages || e.page_count > pages - e.first_page) {
      return absl::InvalidArgumentError(absl::StrCat("bad zero extent for region ", options.name));
    }
    zero_pages += e.page_count;
    next = e.first_page + e.page_count;
  }
  // The base state costs nothing, the others a byte each: a mostly sparse
  // image (a 1 TiB region that is almost all holes) takes zero as its base
  // and marks only its data ranges absent.
  const bool zero_base = !sourced || zero_pages > pages / 2;
  const PageState base = zero_base ? PageState::kZero : PageState::kAbsent;
  absl::StatusOr<PageMap> map = options.state != nullptr ? options.state->MapPages(pages, base)
                                                         : PageMap::Create(pages, capacity, base);
  if (!map.ok()) return map.status();
  if (sourced) {
    uint64_t at = 0;
    for (const protocol::ZeroExtent& e : options.zero_extents) {
      if (zero_base) {
        map->InitRange(at, e.first_page - at, PageState::kAbsent);
      } else {
        map->InitRange(e.first_page, e.page_count, PageState::kZero);
      }
      at = e.first_page + e.page_count;
    }
    if (zero_base) map->InitRange(at, pages - at, PageState::kAbsent);
  }
  // Named only once complete: a daemon killed before this leaves no state
  // file, and the next one starts afresh.
  if (options.state != nullptr) {
    if (absl::Status s = options.state->Commit(base); !s.ok()) return s;
  }
  return map;
}

Region::Region(Options options, std::unique_ptr<Store> store, PageMap map)
    : name_(std::move(options.name)),
      index_(options.index),
      source_(options.source),
      max_size_(options.max_size),
      size_(options.size),
      store_(std::move(store)),
      state_(std::move(options.state)),
      map_(std::move(map)) {}

std::string Region::name() const {
  absl::MutexLock lock(&name_mu_);
  return name_;
}

void Region::set_name(std::string name) {
  absl::MutexLock lock(&name_mu_);
  name_ = std::move(name);
}

void Region::Retire() {
  if (retired_.exchange(true, std::memory_order_acq_rel)) return;
  unlinked_.store(true, std::memory_order_release);
  // No file is open and no mapping is left (the kernel forgot the inode):
  // nothing reads these bytes again. Punching frees a memfd's memory and a
  // (by now unlinked) sparse file's disk at once.
  const uint64_t bytes = std::max(store_->Size(), PagesFor(size()) * kPageSize);
  if (bytes == 0) return;
  if (absl::Status s = store_->Punch(0, bytes); !s.ok()) {
    LogWarning("freeing the store of unlinked region %s: %s", name(), s.message());
  }
}

uint64_t Region::size() const {
  // A Region is never a const object: the const is for callers that only
  // look; adopting the store's growth is how the size is looked at.
  if (store_shared_.load(std::memory_order_acquire)) const_cast<Region*>(this)->AdoptStoreGrowth();
  return size_.load(std::memory_order_acquire);
}

void Region::ShareStore() {
  if (has_source() || store_->fd() < 0) return;
  store_shared_.store(true, std::memory_order_release);
}

void Region::AdoptStoreGrowth() {
  auto file_size = [this]() -> uint64_t {
    struct stat st;
    return fstat(store_->fd(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  };
  if (file_size() <= size_.load(std::memory_order_acquire)) return;
  absl::MutexLock lock(&resize_mu_);
  // Looked at again under the lock: a truncation that held it may have cut
  // the file since (its old size must not come back).
  const uint64_t grown = file_size();
  // The store holds exactly the region's bytes: anything past the size is
  // a write the kernel made past the end.
  if (grown <= size_.load(std::memory_order_acquire)) return;
  if (grown > max_size_) {
    LogWarning("region %s grew to %d bytes through passthrough, past its maximum of %d", name(),
               grown, max_size_);
    return;
  }
  if (absl::Status s = map_.Resize(PagesFor(grown)); !s.ok()) {
    LogWarning("region %s grew to %d bytes through passthrough: %s", name(), grown, s.message());
    return;
  }
  // Records the size (no bytes change: the file is that long already).
  if (absl::Status s = store_->Resize(grown); !s.ok()) {
    LogWarning("region %s: %s", name(), s.message());
  }
  size_.store(grown, std::memory_order_release);
}

bool Region::IsLocal(uint64_t offset, uint64_t length) const {
  if (length == 0) return true;
  const uint64_t end = std::min<uint64_t>(PagesFor(offset + length), map_.size());
  for (uint64_t p = offset / kPageSize; p < end; ++p) {
    if (!lazyram::IsLocal(map_.Get(p))) return false;
  }
  return true;
}

bool Region::complete() const { return map_.LocalCount() == map_.size(); }

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

void Region::LockStripes(uint64_t first_page, uint64_t end_page) {
  const uint64_t a = first_page >> kStripeShift, b = (end_page - 1) >> kStripeShift;
  // Sorted, duplicate-free stripe indexes, so every caller locks in one order.
  std::array<bool, kStripes> want{};
  for (uint64_t s = a; s <= b && s - a < kStripes; ++s) want[s % kStripes] = true;
  for (int i = 0; i < kStripes; ++i) {
    if (want[i]) stripes_[i].Lock();
  }
}

void Region::UnlockStripes(uint64_t first_page, uint64_t end_page) {
  const uint64_t a = first_page >> kStripeShift, b = (end_page - 1) >> kStripeShift;
  std::array<bool, kStripes> want{};
  for (uint64_t s = a; s <= b && s - a < kStripes; ++s) want[s % kStripes] = true;
  for (int i = kStripes - 1; i >= 0; --i) {
    if (want[i]) stripes_[i].Unlock();
  }
}

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

void Region::BeforeLocalChange() {
  ++local_changes_;
  if (!marked_clean_) return;
  // The state byte about to be stored may reach the disk at any time: the
  // file must say "in use" on the disk first. Once per idle period.
  marked_clean_ = false;
  if (absl::Status s = state_->MarkInUse(); !s.ok()) {
    LogError("region %s: %s; a power loss now could go unnoticed", name(), s.message());
  }
}

absl::Status Region::Sync() {
  if (state_ == nullptr) return absl::OkStatus();
  uint64_t before;
  {
    absl::MutexLock lock(&waiters_mu_);
    before = local_changes_;
  }
  // Data before states: a state synced as local must find its bytes synced.
  if (absl::Status s = store_->Sync(); !s.ok()) return s;
  if (absl::Status s = state_->Sync(); !s.ok()) return s;
  // Every page local on the disk now has its bytes on the disk, unless one
  // became local during the syncs. If none did, the file may say clean: the
  // next change marks it in use before its state byte is stored.
  absl::MutexLock lock(&waiters_mu_);
  if (local_changes_ != before || marked_clean_) return absl::OkStatus();
  if (absl::Status s = state_->MarkClean(); !s.ok()) return s;
  marked_clean_ = true;
  return absl::OkStatus();
}

absl::Status Region::Close() {
  if (state_ == nullptr) return absl::OkStatus();
  if (absl::Status s = Sync(); !s.ok()) return s;
  absl::MutexLock lock(&waiters_mu_);
  if (marked_clean_) return absl::OkStatus();
  if (absl::Status s = state_->MarkClean(); !s.ok()) return s;
  marked_clean_ = true;
  return absl::OkStatus();
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

RegionStats Region::Stats() const {
  RegionStats s;
  s.name = name();
  s.size = size();
  s.pages_total = map_.size();
  s.pages_dirty = map_.Count(PageState::kDirty);
  s.pages_present = map_.Count(PageState::kPresent) + s.pages_dirty;
  s.pages_zero = map_.Count(PageState::kZero);
  s.store_bytes = store_->AllocatedBytes();
  if (passthrough_.load(std::memory_order_acquire) && store_->fd() >= 0) {
    // The kernel writes the store without the daemon: its allocated pages
    // are the ones holding bytes, the rest read zero.
    const uint64_t data = AllocatedPages(store_->fd(), s.pages_total);
    s.pages_present = data;
    s.pages_zero = s.pages_total - data;
    // Every byte of a region without a source was written by its consumer.
    s.pages_dirty = has_source() ? std::min(s.pages_dirty, data) : data;
  }
  s.bytes_fetched = bytes_fetched_.load(std::memory_order_relaxed);
  s.demand_fetches = demand_fetches_.load(std::memory_order_relaxed);
  s.latency_p50_us = demand_latency_.Percentile(0.50);
  s.latency_p99_us = demand_latency_.Percentile(0.99);
  s.latency_max_us = demand_latency_.Max();
  s.complete = s.pages_present + s.pages_zero == s.pages_total;
  return s;
}

}  // namespace lazyram
