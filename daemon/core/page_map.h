// PageMap: the state of every 4 KiB page of one region, one byte per page.
//
// The bytes live in an anonymous MAP_NORESERVE mapping sized for the
// region's capacity, or in a shared mapping of a state file (--store DIR,
// see StateFile); a page whose state is the map's `base` state is stored as
// 0, so an untouched 1 TiB map costs address space, not memory (nor disk:
// the state file stays sparse).
// Counters per state are kept exact under concurrent transitions.
//
// Thread-safety: every method may be called from any thread. Transitions are
// single-byte compare-and-swap; callers that must order a transition with a
// store write (see Region) hold their own lock around both.
#ifndef LAZYRAM_DAEMON_CORE_PAGE_MAP_H_
#define LAZYRAM_DAEMON_CORE_PAGE_MAP_H_

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"

namespace lazyram {

enum class PageState : uint8_t {
  kAbsent = 0,  // not local; must be fetched before it is read
  kFetching,    // a demand fetch is in flight
  kPulling,     // a background (bulk) fetch is in flight
  kPresent,     // local, as fetched
  kDirty,       // local, written by the consumer; never overwritten by a fetch
  kZero,        // all zero (known from the source, or punched); never fetched
};
inline constexpr int kNumPageStates = 6;

// True for states whose bytes can be served from the store.
constexpr bool IsLocal(PageState s) {
  return s == PageState::kPresent || s == PageState::kDirty || s == PageState::kZero;
}

class PageMap {
 public:
  // A map of `pages` pages, all in state `base`, able to grow to
  // `capacity_pages` (>= pages) without moving.
  static absl::StatusOr<PageMap> Create(uint64_t pages, uint64_t capacity_pages, PageState base);
  // The same, with the bytes in `fd` at `offset` (page-aligned), mapped
  // MAP_SHARED: every transition is a store into the file's page cache, so
  // it outlives the process. The file must hold at least capacity bytes
  // past `offset`. The map starts with every page counted in `base`
  // whatever the file holds; call Recover for pages that may not be.
  static absl::StatusOr<PageMap> CreateInFile(int fd, uint64_t offset, uint64_t pages,
                                              uint64_t capacity_pages, PageState base);

  PageMap(PageMap&& other) noexcept;
  PageMap& operator=(PageMap&& other) noexcept;
  PageMap(const PageMap&) = delete;
  PageMap& operator=(const PageMap&) = delete;
  ~PageMap();

  uint64_t size() const { return size_.load(std::memory_order_acquire); }
  uint64_t capacity() const { return capacity_; }

  PageState Get(uint64_t page) const {
    return Decode(states_[page].load(std::memory_order_acquire));
  }

  // Moves `page` from `from` to `to`; false (and no change) if it was not
  // in `from`.
  bool Transition(uint64_t page, PageState from, PageState to);
  // Sets `page` to `to` whatever it was; returns the previous state.
  PageState Set(uint64_t page, PageState to);

  // Sets [first, first+count), all still in the base state, to `to`:
  // one memset, for building a map. Not safe against concurrent use.
  void InitRange(uint64_t first, uint64_t count, PageState to);

  // For a map loaded from a file: counts the pages of [first, first+count)
  // (< size()) in whatever state the file holds, and returns the ones left
  // kFetching or kPulling by a daemon that died to kAbsent. Not safe
  // against concurrent use.
  void Recover(uint64_t first, uint64_t count);

  // Grows or shrinks the map. New pages start in the base state; pages cut
  // off are reset to it. Callers serialise Resize against transitions of
  // the pages it cuts off.
  absl::Status Resize(uint64_t pages);

  // Number of pages currently in `state`.
  uint64_t Count(PageState state) const {
    return counts_[static_cast<int>(state)].load(std::memory_order_relaxed);
  }
  // Pages whose bytes are local (present, dirty or zero).
  uint64_t LocalCount() const {
    return Count(PageState::kPresent) + Count(PageState::kDirty) + Count(PageState::kZero);
  }

  // First page >= `from` and < size() in state `state`, or size() if none.
  uint64_t FindNext(uint64_t from, PageState state) const;

 private:
  PageMap(std::atomic<uint8_t>* states, uint64_t pages, uint64_t capacity, PageState base,
          bool anonymous);
  // For an anonymous map: the first entry at or after `p` (a multiple of the
  // OS page size) whose memory page has been touched, or `end`.
  uint64_t SkipUntouched(uint64_t p, uint64_t end) const;

  uint8_t Encode(PageState s) const {
    return s == base_ ? 0 : static_cast<uint8_t>(static_cast<uint8_t>(s) + 1);
  }
  PageState Decode(uint8_t raw) const { return raw == 0 ? base_ : static_cast<PageState>(raw - 1); }

  std::atomic<uint8_t>* states_ = nullptr;  // mmap'd, capacity_ bytes
  std::atomic<uint64_t> size_{0};
  uint64_t capacity_ = 0;
  PageState base_ = PageState::kAbsent;
  // Anonymous memory: an untouched page of states_ holds only base_ (zero
  // bytes). Reading it is not free on every kernel: some map a fresh page
  // instead of the shared zero page (docs/kernel-facts.md, "Memory"), so
  // FindNext asks mincore() first instead of reading a terabyte map into
  // memory.
  bool anonymous_ = false;
  std::atomic<uint64_t> counts_[kNumPageStates] = {};
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_PAGE_MAP_H_
