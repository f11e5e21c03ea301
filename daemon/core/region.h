// Region: one guest RAMBlock — its size, page map and store, and the rules
// that move pages between states (docs/architecture.md#page-states).
//
// The rules this class enforces:
//   * a page is read from the store only once its state is local;
//   * a fetch that lands never overwrites a dirty or zero page;
//   * every waiter on a page is woken once its state becomes local (or its
//     fetch fails), exactly once.
//
// Thread-safety: all public methods may be called from any thread. Fetch
// completions arrive on the source's thread. `done` callbacks run either
// inline (when nothing had to be waited for) or on the thread that made the
// pages local; they must not block.
#ifndef LAZYRAM_DAEMON_CORE_REGION_H_
#define LAZYRAM_DAEMON_CORE_REGION_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/base/latency_histogram.h"
#include "daemon/core/page_map.h"
#include "daemon/core/page_source.h"
#include "daemon/core/state_file.h"
#include "daemon/core/store.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

struct RegionStats {
  std::string name;
  uint64_t size = 0;
  uint64_t pages_total = 0;
  uint64_t pages_present = 0;  // local bytes: fetched or written (dirty included)
  uint64_t pages_dirty = 0;
  uint64_t pages_zero = 0;
  uint64_t store_bytes = 0;  // memory or disk the store holds (Store::AllocatedBytes)
  uint64_t bytes_fetched = 0;
  uint64_t demand_fetches = 0;
  uint64_t latency_p50_us = 0;
  uint64_t latency_p99_us = 0;
  uint64_t latency_max_us = 0;
  bool complete = false;
};

class Region {
 public:
  using Done = absl::AnyInvocable<void(absl::Status)>;

  struct Options {
    std::string name;
    uint32_t index = 0;  // the region's index in the source's table
    uint64_t size = 0;
    // Null for a region without a source: every page starts zero and the
    // region may be resized up to `max_size`.
    PageSource* source = nullptr;
    std::vector<protocol::ZeroExtent> zero_extents;  // known zero at start
    uint64_t max_size = 0;
    // --store DIR: the page states live in this file (and survive the
    // daemon). A restored file brings its states; zero_extents are then
    // not used.
    std::unique_ptr<StateFile> state;
  };

  static absl::StatusOr<std::unique_ptr<Region>> Create(Options options,
                                                        std::unique_ptr<Store> store);
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;

  // The region's current name (a rename within the mount changes it).
  std::string name() const;
  void set_name(std::string name);
  StateFile* state_file() { return state_.get(); }
  // The region's size: the one answer every path asks (attributes, reads,
  // writes, status, hash, views). After ShareStore it first takes over any
  // growth of the store's file.
  uint64_t size() const;
  bool has_source() const { return source_ != nullptr; }
  Store& store() { return *store_; }

  PageState page_state(uint64_t page) const { return map_.Get(page); }

  // True when every page of [offset, offset+length) is local.
  bool IsLocal(uint64_t offset, uint64_t length) const;

  // Makes [offset, offset+length) local, fetching absent pages at
  // `priority`, then calls `done`. `readahead` extra bytes past the range
  // are fetched along with it but not waited for.
  void EnsureLocal(uint64_t offset, uint64_t length, protocol::Priority priority, Done done,
                   uint64_t readahead = 0);

  // Like EnsureLocal at demand priority, for `lazyramctl prefetch`: not
  // counted as consumer faults in the statistics.
  void Prefetch(uint64_t offset, uint64_t length, Done done);

  // Writes `data` at `offset` and marks the pages dirty. A page only partly
  // covered is made local first (so the rest of it holds source bytes);
  // then `data` is copied and `done` runs later. Writes past the end grow
  // a region without a source and fail with kOutOfRange on one with.
  void Write(uint64_t offset, std::span<const uint8_t> data, Done done);

  // Makes [offset, offset+length) read as zero; its pages are never
  // fetched again. Partly covered pages are zeroed in place.
  void Punch(uint64_t offset, uint64_t length, Done done);

  // Sets the size of a region without a source (QEMU's ftruncate). The
  // store of a region without a source holds exactly `size` bytes (the
  // kernel reads it directly under FUSE passthrough, up to its end).
  absl::Status Resize(uint64_t size);

  // FUSE passthrough: from now on the kernel writes the store's descriptor
  // itself, so a write past the end grows the store's file without the
  // region seeing it. size() then adopts the file's size whenever it has
  // grown. Only for a region without a source (the store of one with a
  // source is sealed against size changes).
  void ShareStore();

  // Background pull: claims the next run of absent pages at or after
  // `*cursor` (wrapping once), at most `max_pages`, marks them pulling and
  // fetches them at bulk priority; `done` runs when they landed (perhaps
  // inline). Returns false, without calling `done`, when no absent page is
  // left. `*cursor` moves past the run.
  bool PullNext(uint64_t* cursor, uint32_t max_pages, Done done);
  // Page after the most recent demand fault, for the puller to start near;
  // UINT64_MAX if none since the last call.
  uint64_t TakeFaultHint() { return fault_hint_.exchange(UINT64_MAX); }
  // When the last demand fault that had to fetch started (InfinitePast:
  // none yet).
  absl::Time last_fault() const {
    const int64_t ns = last_fault_ns_.load(std::memory_order_relaxed);
    return ns == 0 ? absl::InfinitePast() : absl::FromUnixNanos(ns);
  }

  bool complete() const;
  RegionStats Stats() const;

  // The namespace (docs/architecture.md, "Unlink and rename"): an unlinked
  // region has no name in the mount any more, but files still open on it
  // read and write it as before (POSIX), demand fetches included; only the
  // background pull skips it (PullNext returns false) and the pusher.
  void MarkUnlinked() { unlinked_.store(true, std::memory_order_release); }
  bool unlinked() const { return unlinked_.load(std::memory_order_acquire); }
  // Once the kernel has forgotten an unlinked region (no open file, no
  // mapping, no lookup left): its store's memory or disk is freed (the
  // whole store punched). The object stays (pointers held by the puller,
  // pusher or hasher stay valid); nothing reads it any more. Idempotent.
  void Retire();
  bool retired() const { return retired_.load(std::memory_order_acquire); }
  // FUSE passthrough: the kernel reads and writes the store itself, so the
  // page map no longer sees writes; Stats then derives the page counts
  // from the store's allocated ranges (SEEK_DATA/SEEK_HOLE).
  void MarkPassthrough() { passthrough_.store(true, std::memory_order_release); }

  // With a state file: makes the store's bytes, then the page states,
  // durable (a checkpoint); if no page became local meanwhile, also marks
  // the state file clean, so that it is trusted after a power loss — until
  // the next page becomes local, which first marks it in use again
  // (durably, once). Without a state file: nothing to do.
  absl::Status Sync();
  // Sync, then durably marks the state file clean. Only once nothing
  // changes the region any more (after unmount and Engine::Shutdown).
  absl::Status Close();
  // Pages whose states came from a state file as local at start.
  uint64_t pages_restored() const { return pages_restored_; }
  // Called with each run of pages a background pull made present (not
  // demand fetches: a READ is waiting on those), after they became local,
  // on the thread that landed them; must not block. Null clears it.
  using PullListener = absl::AnyInvocable<void(uint64_t first_page, uint32_t count)>;
  void SetPullListener(PullListener listener);

 private:
  struct Waiter;
  struct Run {
    uint64_t first;
    uint32_t count;
  };
  static constexpr int kStripes = 64;
  static constexpr int kStripeShift = 9;  // pages per stripe = 2 MiB
  // Pages landed under one hold of the stripe locks.
  static constexpr uint64_t kLandChunk = 64;

  Region(Options options, std::unique_ptr<Store> store, PageMap map);
  // The map of a new region: its base state chosen, zero extents marked.
  static absl::StatusOr<PageMap> NewMap(const Options& options, uint64_t pages, uint64_t capacity);

  // `fault`: a consumer waits; counted in demand_fetches and the latency
  // histogram, and remembered as the puller's hint.
  void MakeLocal(uint64_t offset, uint64_t length, protocol::Priority priority, bool fault,
                 Done done, uint64_t readahead);
  void StartFetch(Run run, protocol::Priority priority, bool fault);
  // `claimed`: the state this fetch put its pages in (kFetching or
  // kPulling); on failure only pages still in it return to absent.
  void Land(Run run, absl::StatusOr<FetchedPages> pages, PageState claimed, bool fault,
            absl::Time started);
  // Under the stripe locks of [first, end): writes the pages of `pages` in
  // that range that still want their bytes (fetching or pulling) and lists
  // the state each wanted page takes. `*data_index` is the payload index of
  // the next data page; it moves past the range (unless a write fails).
  absl::Status WriteLanded(const FetchedPages& pages, uint64_t first, uint64_t end,
                           size_t* data_index,
                           std::vector<std::pair<uint64_t, PageState>>* changes);
  // Sets each listed page to its new state and returns its waiters, to be
  // released once the caller has dropped the stripe locks it holds.
  std::vector<Waiter*> Publish(std::span<const std::pair<uint64_t, PageState>> changes);
  // Counts one awaited page off each waiter (recording a failure) and runs
  // the ones that reach zero.
  static void Release(std::vector<Waiter*> waiters, const absl::Status& status);
  // Before a page becomes local: counts the change and, if the state file
  // is marked clean, marks it in use first (durably).
  void BeforeLocalChange() ABSL_EXCLUSIVE_LOCKS_REQUIRED(waiters_mu_);
  void WriteLocal(uint64_t offset, std::span<const uint8_t> data, Done done);
  void PunchLocal(uint64_t offset, uint64_t length, Done done);
  absl::Status GrowFor(uint64_t end);
  // With a shared store: takes over the store file's size if it grew.
  void AdoptStoreGrowth();
  // Calls `done` once [offset, offset+1) and [last, last+1) are local (each
  // only when `need_*`): the partly covered edge pages of a write.
  void EnsureEdgesLocal(uint64_t first_page, bool need_first, uint64_t last_page, bool need_last,
                        Done done);
  void LockStripes(uint64_t first_page, uint64_t end_page);
  void UnlockStripes(uint64_t first_page, uint64_t end_page);

  mutable absl::Mutex name_mu_;
  std::string name_ ABSL_GUARDED_BY(name_mu_);
  const uint32_t index_;
  PageSource* const source_;
  const uint64_t max_size_;
  std::atomic<uint64_t> size_;
  std::atomic<bool> store_shared_{false};
  std::atomic<bool> unlinked_{false};
  std::atomic<bool> retired_{false};
  std::atomic<bool> passthrough_{false};
  std::unique_ptr<Store> store_;
  std::unique_ptr<StateFile> state_;  // null without --store DIR
  PageMap map_;                       // in state_'s file when there is one
  uint64_t pages_restored_ = 0;

  // Lock order: resize_mu_ -> stripes_ (ascending) -> waiters_mu_.
  // A stripe lock orders a store write with the state change it makes, so
  // a landing fetch cannot overwrite a concurrent WRITE of the same page.
  absl::Mutex resize_mu_;
  std::array<absl::Mutex, kStripes> stripes_;
  // Guards every transition out of a non-local state and the waiter lists.
  mutable absl::Mutex waiters_mu_;
  absl::flat_hash_map<uint64_t, std::vector<Waiter*>> waiters_ ABSL_GUARDED_BY(waiters_mu_);
  // Changes that made pages local (or resized), and whether the state file
  // is marked clean since the last of them (see Sync).
  uint64_t local_changes_ ABSL_GUARDED_BY(waiters_mu_) = 0;
  bool marked_clean_ ABSL_GUARDED_BY(waiters_mu_) = false;

  absl::Mutex listener_mu_;
  PullListener pull_listener_ ABSL_GUARDED_BY(listener_mu_);

  std::atomic<uint64_t> fault_hint_{UINT64_MAX};
  std::atomic<int64_t> last_fault_ns_{0};
  std::atomic<uint64_t> bytes_fetched_{0};
  std::atomic<uint64_t> demand_fetches_{0};
  LatencyHistogram demand_latency_;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_REGION_H_
