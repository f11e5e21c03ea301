#include "daemon/core/page_map.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/base/errno_status.h"

namespace lazyram {

namespace {
constexpr uint64_t kOsPage = 4096;  // the granule of mincore() on x86_64
}  // namespace

static_assert(sizeof(std::atomic<uint8_t>) == 1 && std::atomic<uint8_t>::is_always_lock_free);

absl::StatusOr<PageMap> PageMap::Create(uint64_t pages, uint64_t capacity_pages, PageState base) {
  if (capacity_pages < pages) capacity_pages = pages;
  // mmap refuses a zero length; one byte of capacity keeps the code uniform.
  const uint64_t bytes = capacity_pages == 0 ? 1 : capacity_pages;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat("page map for ", pages, " pages"));
  }
  return PageMap(static_cast<std::atomic<uint8_t>*>(p), pages, capacity_pages, base,
                 /*anonymous=*/true);
}

absl::StatusOr<PageMap> PageMap::CreateInFile(int fd, uint64_t offset, uint64_t pages,
                                              uint64_t capacity_pages, PageState base) {
  if (capacity_pages < pages) capacity_pages = pages;
  const uint64_t bytes = capacity_pages == 0 ? 1 : capacity_pages;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd,
                 static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    return ErrnoStatus(errno, absl::StrCat("mapping the page states of ", pages, " pages"));
  }
  return PageMap(static_cast<std::atomic<uint8_t>*>(p), pages, capacity_pages, base,
                 /*anonymous=*/false);
}

PageMap::PageMap(std::atomic<uint8_t>* states, uint64_t pages, uint64_t capacity, PageState base,
                 bool anonymous)
    : states_(states), size_(pages), capacity_(capacity), base_(base), anonymous_(anonymous) {
  counts_[static_cast<int>(base)].store(pages, std::memory_order_relaxed);
}

PageMap::PageMap(PageMap&& other) noexcept { *this = std::move(other); }

PageMap& PageMap::operator=(PageMap&& other) noexcept {
  if (this == &other) return *this;
  if (states_ != nullptr) munmap(states_, capacity_ == 0 ? 1 : capacity_);
  states_ = std::exchange(other.states_, nullptr);
  size_.store(other.size_.load());
  capacity_ = std::exchange(other.capacity_, 0);
  base_ = other.base_;
  anonymous_ = other.anonymous_;
  for (int i = 0; i < kNumPageStates; ++i) counts_[i].store(other.counts_[i].exchange(0));
  return *this;
}

PageMap::~PageMap() {
  if (states_ != nullptr) munmap(states_, capacity_ == 0 ? 1 : capacity_);
}

bool PageMap::Transition(uint64_t page, PageState from, PageState to) {
  uint8_t expected = Encode(from);
  if (!states_[page].compare_exchange_strong(expected, Encode(to), std::memory_order_acq_rel)) {
    return false;
  }
  if (from != to) {
    counts_[static_cast<int>(from)].fetch_sub(1, std::memory_order_relaxed);
    counts_[static_cast<int>(to)].fetch_add(1, std::memory_order_relaxed);
  }
  return true;
}

PageState PageMap::Set(uint64_t page, PageState to) {
  PageState from = Decode(states_[page].exchange(Encode(to), std::memory_order_acq_rel));
  if (from != to) {
    counts_[static_cast<int>(from)].fetch_sub(1, std::memory_order_relaxed);
    counts_[static_cast<int>(to)].fetch_add(1, std::memory_order_relaxed);
  }
  return from;
}

void PageMap::InitRange(uint64_t first, uint64_t count, PageState to) {
  if (count == 0 || to == base_) return;
  std::memset(reinterpret_cast<uint8_t*>(states_) + first, Encode(to), count);
  counts_[static_cast<int>(base_)].fetch_sub(count, std::memory_order_relaxed);
  counts_[static_cast<int>(to)].fetch_add(count, std::memory_order_relaxed);
}

void PageMap::Recover(uint64_t first, uint64_t count) {
  const uint8_t absent = Encode(PageState::kAbsent);
  const uint8_t fetching = Encode(PageState::kFetching);
  const uint8_t pulling = Encode(PageState::kPulling);
  uint64_t found[kNumPageStates + 1] = {};
  auto* bytes = reinterpret_cast<uint8_t*>(states_);
  uint64_t p = first;
  const uint64_t end = first + count;
  using Word = uint64_t __attribute__((may_alias));
  for (; p < end;) {
    // Most of a loaded map is the base state (0): skip it a word at a time.
    if ((p & 7) == 0 && p + 8 <= end && *reinterpret_cast<const Word*>(bytes + p) == 0) {
      p += 8;
      continue;
    }
    uint8_t raw = bytes[p];
    if (raw != 0) {
      if (raw == fetching || raw == pulling) {
        raw = absent;
        bytes[p] = raw;
      }
      if (raw != 0) {
        // A byte no state encodes (a damaged file) counts as absent: it
        // will be fetched again, never served as local.
        if (raw > kNumPageStates) {
          raw = absent;
          bytes[p] = raw;
        }
        if (raw != 0) ++found[raw - 1];
      }
    }
    ++p;
  }
  for (int s = 0; s < kNumPageStates; ++s) {
    if (found[s] == 0) continue;
    counts_[static_cast<int>(base_)].fetch_sub(found[s], std::memory_order_relaxed);
    counts_[s].fetch_add(found[s], std::memory_order_relaxed);
  }
}

absl::Status PageMap::Resize(uint64_t pages) {
  if (pages > capacity_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot grow to ", pages, " pages: capacity is ", capacity_));
  }
  const uint64_t old = size();
  for (uint64_t p = pages; p < old; ++p) Set(p, base_);
  const int base = static_cast<int>(base_);
  if (pages > old) {
    counts_[base].fetch_add(pages - old, std::memory_order_relaxed);
  } else {
    counts_[base].fetch_sub(old - pages, std::memory_order_relaxed);
  }
  size_.store(pages, std::memory_order_release);
  return absl::OkStatus();
}

uint64_t PageMap::SkipUntouched(uint64_t p, uint64_t end) const {
  // One mincore() call answers for 256 pages of states (1M entries).
  constexpr uint64_t kBatch = 256;
  unsigned char resident[kBatch];
  while (p < end) {
    const uint64_t pages = std::min<uint64_t>(kBatch, (end - p + kOsPage - 1) / kOsPage);
    if (mincore(const_cast<std::atomic<uint8_t>*>(states_ + p), pages * kOsPage, resident) != 0) {
      return p;  // cannot tell: read it
    }
    for (uint64_t i = 0; i < pages; ++i) {
      if (resident[i] & 1) return p + i * kOsPage;
    }
    p += pages * kOsPage;
  }
  return end;
}

uint64_t PageMap::FindNext(uint64_t from, PageState state) const {
  const uint64_t n = size();
  // Also keeps `p + 8` below from wrapping for a `from` near UINT64_MAX.
  if (from >= n) return n;
  const uint8_t want = Encode(state);
  // Other threads transition pages during the scan, so every load is a
  // (relaxed) atomic one; a plain read would be a data race.
  auto byte_at = [this](uint64_t p) { return states_[p].load(std::memory_order_relaxed); };
  // Scan eight pages at a time where a word of eight non-matching bytes can
  // be skipped; a full sweep of a 1 TiB map stays in the tens of ms. The
  // mapping is page-aligned, so the words are aligned.
  using Word = uint64_t __attribute__((may_alias));
  uint64_t p = from;
  const uint64_t broadcast = 0x0101010101010101ULL * want;
  while (p < n && (p & 7) != 0) {
    if (byte_at(p) == want) return p;
    ++p;
  }
  for (; p + 8 <= n; p += 8) {
    if (anonymous_ && want != 0 && p % kOsPage == 0) {
      p = SkipUntouched(p, n);
      if (p + 8 > n) break;
    }
    const uint64_t word =
        __atomic_load_n(reinterpret_cast<const Word*>(states_ + p), __ATOMIC_RELAXED);
    uint64_t x = word ^ broadcast;  // a zero byte marks a match
    if (((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) != 0) break;
  }
  for (; p < n; ++p) {
    if (byte_at(p) == want) return p;
  }
  return n;
}

}  // namespace lazyram
