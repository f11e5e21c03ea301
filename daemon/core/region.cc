#include "daemon/core/region.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/base/log.h"
#include "daemon/core/region_internal.h"

namespace lazyram {

using protocol::kMaxPagesPerRequest;
using protocol::kPageSize;
using protocol::Priority;
using region_internal::PagesFor;

namespace {

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
