// RegionSet: the regions of one mount, as the layers above the core see
// them (fusefs/ maps inodes onto them, forensics/ lays them out, control/
// reports them). The Engine implements it; tests may fake it.
//
// Thread-safety: every method may be called from any thread. A Region
// pointer stays valid while the RegionSet lives (unlinked regions are
// retired, never destroyed).
#ifndef LAZYRAM_DAEMON_CORE_REGION_SET_H_
#define LAZYRAM_DAEMON_CORE_REGION_SET_H_

#include <cstddef>
#include <optional>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/core/region.h"

namespace lazyram {

class RegionSet {
 public:
  virtual ~RegionSet() = default;

  virtual size_t region_count() const = 0;
  virtual Region* region(size_t index) const = 0;  // null when out of range
  // A region that has the name `name` (never an unlinked one).
  virtual std::optional<size_t> FindRegion(absl::string_view name) const = 0;
  // A new, empty region without a source pages (a local region; on a mount
  // with a source too); returns its index. An existing name returns that
  // region's index.
  virtual absl::StatusOr<size_t> CreateRegion(absl::string_view name) = 0;

  // The namespace (docs/architecture.md, "Unlink and rename"). Indexes are
  // slots that never move: an unlinked region keeps its slot (region(i)
  // still returns it, for files open on it) until ReleaseRegion.
  //
  // Takes the name away at once; returns the region's index.
  virtual absl::StatusOr<size_t> UnlinkRegion(absl::string_view name) = 0;
  // Renames `from` to `to`. A region named `to` is unlinked (its index is
  // returned), unless `noreplace`, which fails with kAlreadyExists.
  virtual absl::StatusOr<std::optional<size_t>> RenameRegion(absl::string_view from,
                                                             absl::string_view to,
                                                             bool noreplace) = 0;
  // The kernel has forgotten unlinked region `index`: frees its store.
  virtual void ReleaseRegion(size_t index) = 0;

  // The mount refuses every write (forensics).
  virtual bool read_only() const = 0;
  // Every region's store is a memfd (--store mem).
  virtual bool memory_store() const = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_REGION_SET_H_
