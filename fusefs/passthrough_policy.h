// PassthroughPolicy: decides, for each OPEN or CREATE of a region file,
// whether it opens in FUSE passthrough mode — the kernel reads, writes and
// maps the region's memfd store itself, with no daemon round trip — or in
// cached mode (every page through the daemon), and keeps the per-region
// counts that decision rests on.
//
// The rules (docs/performance.md, "FUSE passthrough"):
//   * Passthrough needs a complete region (every page local: the store then
//     holds every byte). Passthrough reads follow the memfd's size: the
//     memfd of a region without a source is exactly the region's size; that
//     of a region from a source is rounded up to a page, so such a region
//     must have a size that is a multiple of 4 KiB.
//   * The kernel refuses passthrough and cached opens of one inode at once
//     (fs/fuse/iomode.c, ETXTBSY/EIO). So a region goes passthrough only
//     with no cached open outstanding (counted from OPEN to RELEASE; the
//     kernel counts its own down before it sends RELEASE), and once it has
//     gone passthrough every later open is passthrough, whatever else
//     happens: its earlier page cache is never read again (a passthrough
//     open drops it, and mappings go to the memfd).
//   * The memfd is registered as a backing file once per region
//     (FUSE_DEV_IOC_BACKING_OPEN, CAP_SYS_ADMIN) and released at unmount.
//     If that fails, one line is logged and the mount stays cached.
//
// What passthrough changes for the daemon: writes reach the memfd without
// it, so the page map never marks them dirty; every reader of a region
// reads the store, which stays authoritative for every page. A region from
// a source keeps its fixed size: its memfd is sealed against growing and
// shrinking. A region without one may grow by a write past its end: the
// policy shares its store (Region::ShareStore), and Region::size() — which
// every path asks — adopts the memfd's size.
//
// Thread-safety: every method may be called from any thread. Lock order:
// mu_ before a Region's locks; mu_ is never held while calling the RegionSet.
#ifndef LAZYRAM_FUSEFS_PASSTHROUGH_POLICY_H_
#define LAZYRAM_FUSEFS_PASSTHROUGH_POLICY_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/region_set.h"
#include "fusefs/passthrough_channel.h"
#include "nlohmann/json.hpp"

namespace lazyram::fusefs {

class PassthroughPolicy {
 public:
  // `channel` null: passthrough is off (--passthrough off, or a store that
  // is not a memfd) and every open is cached. Both must outlive the policy.
  PassthroughPolicy(RegionSet* regions, PassthroughChannel* channel)
      : regions_(regions), channel_(channel) {}
  PassthroughPolicy(const PassthroughPolicy&) = delete;
  PassthroughPolicy& operator=(const PassthroughPolicy&) = delete;

  struct Grant {
    bool passthrough = false;
    int32_t backing_id = 0;  // with passthrough
  };
  // An OPEN or CREATE of region `index`: its mode, counted as outstanding
  // until Release.
  Grant Open(size_t index);
  void Release(size_t index, bool passthrough);
  // The reply of a passthrough grant could not be patched and went out as
  // a cached open: passthrough stays off for the rest of the mount.
  void GrantFailed(size_t index);

  // Whether an open of region `index` now would be passthrough (the page
  // pusher skips such regions: nothing will read their page cache).
  bool WouldPassthrough(size_t index) const;

  // Adds "passthrough", "passthrough_opens" and "open_files" to a region's
  // status entry.
  void AddRegionStatus(size_t index, nlohmann::json* region);
  // The top-level "passthrough" status section.
  nlohmann::json StatusJson() const;

  // Releases every backing id (before the session goes).
  void CloseBackings();

 private:
  struct State {
    uint64_t open_cached = 0;  // outstanding cached-mode opens
    uint64_t open_passthrough = 0;
    uint64_t passthrough_opens = 0;  // granted, ever
    int32_t backing_id = 0;          // > 0 once the region went passthrough
  };
  // Whether `region` may go passthrough, as far as the region itself goes.
  bool Eligible(Region& region) const;
  // Registers the region's memfd; false (and passthrough off for the
  // mount) on failure.
  bool GoPassthrough(Region& region, State* state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool usable() const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  RegionSet* const regions_;
  PassthroughChannel* const channel_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<size_t, State> states_ ABSL_GUARDED_BY(mu_);
  // Why passthrough stopped for this mount (a backing file could not be
  // registered, or a reply could not be patched); empty while it works.
  std::string failure_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazyram::fusefs

#endif  // LAZYRAM_FUSEFS_PASSTHROUGH_POLICY_H_
