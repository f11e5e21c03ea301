// StoreDir: a --store DIR (docs/store.md) while a daemon uses it: the lock
// that keeps other daemons out, and the rules that decide, per region,
// whether its state file and data file are resumed, refused or created.
//
// Lifetime: held by the Engine from start-up until the store is closed.
// Thread-safety: Attach may be called from any thread once CheckSource (or
// SourcelessRegions) has run; the rest is for start-up and shutdown.
#ifndef LAZYRAM_DAEMON_STORE_STORE_DIR_H_
#define LAZYRAM_DAEMON_STORE_STORE_DIR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/base/unique_fd.h"
#include "daemon/core/region.h"
#include "daemon/core/store.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

class StoreDir {
 public:
  // Locks `dir` (which must exist) for this process; kFailedPrecondition
  // when another daemon holds it.
  static absl::StatusOr<std::unique_ptr<StoreDir>> Open(std::string dir);

  const std::string& path() const { return dir_; }

  // A mount with a source: refuses the store when it holds a region the
  // source's `table` does not have (or is a source-less mount's). Per-region
  // checks follow in Attach.
  absl::Status CheckSource(const std::vector<protocol::RegionInfo>& table);
  // A mount without a source: the regions the store holds, in the order
  // they were created, each with its state file (Region::Options::state)
  // and `max_size`. Refuses a store that was filled from a source.
  absl::StatusOr<std::vector<Region::Options>> SourcelessRegions(uint64_t max_size);
  // The regions a consumer created in the mount (no source pages): all of
  // a store's without a source; with one (after CheckSource), those created
  // in a mount of the same source (state files with has_source 0 and the
  // source's id). In creation order, each with its state file.
  absl::StatusOr<std::vector<Region::Options>> LocalRegions(uint64_t max_size);

  // Unlink of region `name`: its state file goes, then its data file.
  // Files still open (the Region's) keep their content until closed.
  absl::Status Remove(absl::string_view name);
  // Rename of a region created in the mount, whose state file is `state`;
  // the target name's files are gone already (Remove).
  absl::Status Rename(StateFile* state, absl::string_view from, absl::string_view to);

  // The data file of region `ro` and, in `ro->state`, its state file:
  // resumed when there is a usable one that belongs to the same source (or
  // already set by SourcelessRegions), refused with a one-line reason when
  // it belongs to another or was left unclean by another boot, else both
  // created empty.
  absl::StatusOr<std::unique_ptr<Store>> Attach(Region::Options* ro);

  // Lets the next daemon in (after the store was closed).
  void Unlock() { lock_.reset(); }

 private:
  StoreDir(std::string dir, UniqueFd lock) : dir_(std::move(dir)), lock_(std::move(lock)) {}
  absl::StatusOr<std::vector<std::string>> StateNames() const;

  const std::string dir_;
  UniqueFd lock_;
  uint64_t source_id_ = 0;  // SourceId of the source's table; 0 without a source
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_STORE_STORE_DIR_H_
