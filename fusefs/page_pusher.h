// PagePusher: gets the pages the background pull fetched into the kernel's
// page cache before the consumer touches them, so that a first touch of a
// pulled page is a page-cache hit instead of a FUSE READ.
//
// How: for each run the puller lands, readahead(2) on a descriptor of the
// region's own file in the mount, made by a helper process
// (fusefs/warm_helper.h: why not a thread of the daemon). The kernel creates only the pages it does
// not hold yet and READs them from this daemon (served from the store, no
// network); everything else — a page the consumer holds, dirtied or is
// faulting in — is left to the kernel's own locking, as for any reader.
//
// Why not fuse_lowlevel_notify_store: it overwrites whatever the page cache
// holds. A page first READ by the consumer while a push of it is in flight
// gets overwritten after the consumer was given it; tests/page_push_test.cc
// lost a guest write that way (1 run in 8) even with "never served" marks
// set at READ arrival. docs/performance.md has the details.
//
// The daemon never touches its own mount: the helper does, holding
// descriptors only while there are runs to warm; Pause() has it close them
// before an unmount. readahead never waits for the READs it starts (async
// reads), only for free background slots, which the FUSE workers free.
//
// Threading: one thread ("lazyram-push"); public methods are thread-safe.
#ifndef LAZYRAM_FUSEFS_PAGE_PUSHER_H_
#define LAZYRAM_FUSEFS_PAGE_PUSHER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/region_set.h"
#include "fusefs/warm_helper.h"
#include "nlohmann/json.hpp"

namespace lazyram::fusefs {

class PagePusher {
 public:
  // Says whether a region's file would open in FUSE passthrough mode now:
  // its page cache is then never read, and its runs are not warmed.
  using SkipRegion = absl::AnyInvocable<bool(size_t index) const>;

  // Listens to the pulls of every region of `regions` that has a source;
  // `mountpoint` is where those regions are files. `skip` may be null.
  PagePusher(RegionSet* regions, std::string mountpoint, SkipRegion skip = nullptr);
  PagePusher(const PagePusher&) = delete;
  PagePusher& operator=(const PagePusher&) = delete;
  // Stops listening and warming; waits for the readahead in progress.
  ~PagePusher();

  // Has the helper close every descriptor into the mount and holds the
  // pushes until Resume: an unmount must not find them open.
  void Pause();
  void Resume();

  // {"enabled": true, "pages_pushed": pages handed to readahead,
  //  "pending_runs": runs not yet handed over (0: idle)}
  nlohmann::json StatusJson() const;

  // The helper process's pid (0 before it is spawned): its READs are the
  // push, which the FUSE layer serves at a lower priority than faults.
  pid_t helper_pid() const { return helper_pid_.load(std::memory_order_relaxed); }

 private:
  struct Run {
    size_t index;
    uint64_t first;
    uint64_t count;
  };
  void Enqueue(Run run);
  void Loop();
  void Warm(const Run& run);
  void CloseFiles();

  RegionSet* const regions_;
  const std::string mountpoint_;
  const SkipRegion skip_;
  std::vector<size_t> listened_;        // indices of the regions we listen to
  std::unique_ptr<WarmHelper> helper_;  // spawned by, and used only on, the loop thread

  mutable absl::Mutex mu_;
  std::deque<Run> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool paused_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;  // the loop is warming a run

  std::atomic<uint64_t> pushed_{0};
  std::atomic<pid_t> helper_pid_{0};
  bool helper_failed_logged_ = false;  // loop thread only
  std::thread thread_;
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_PAGE_PUSHER_H_
