// RegionSet: the regions of one mount, as the layers above the core see
// them (fusefs/ maps inodes onto them, forensics/ lays them out, control/
// reports them). The Engine implements it; tests may fake it.
//
// Thread-safety: every method may be called from any thread. A Region
// pointer stays valid while the RegionSet lives.
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
  virtual std::optional<size_t> FindRegion(absl::string_view name) const = 0;
  // A new, empty region without a source; returns its index.
  virtual absl::StatusOr<size_t> CreateRegion(absl::string_view name) = 0;

  // The mount refuses every write (forensics).
  virtual bool read_only() const = 0;
  // Every region's store is a memfd (--store mem).
  virtual bool memory_store() const = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_REGION_SET_H_
