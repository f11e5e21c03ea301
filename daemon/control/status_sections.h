// StatusSections: what layers above the engine add to the status reply —
// top-level keys (fusefs's "push" and "passthrough") and a hook that fills
// in each region's entry (fusefs's passthrough state and size). The layer
// that registers a section removes it before it goes away.
//
// Thread-safety: all methods may be called from any thread; sections and
// the hook run under mu_, so they must not call back into this object.
#ifndef LAZYRAM_DAEMON_CONTROL_STATUS_SECTIONS_H_
#define LAZYRAM_DAEMON_CONTROL_STATUS_SECTIONS_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"

namespace lazyram {

class StatusSections {
 public:
  using Section = absl::AnyInvocable<nlohmann::json() const>;
  // Called with the region's index and its status entry.
  using RegionHook = absl::AnyInvocable<void(size_t index, nlohmann::json* region) const>;

  // Adds (or, with a null `section`, removes) top-level key `key`.
  void SetSection(std::string key, Section section);
  // Sets (or, with a null `hook`, clears) the per-region hook.
  void SetRegionHook(RegionHook hook);

  // Runs the hook on each entry of `regions` (a JSON array, in region order).
  void FillRegions(nlohmann::json* regions) const;
  // Runs the hook for one region; its entry is thrown away. The hook also
  // brings the region's size up to date (a write through FUSE passthrough
  // may have grown it), which is why a hash run asks for it.
  void RefreshRegion(size_t index) const;
  // Adds every section to `out`.
  void FillSections(nlohmann::json* out) const;

 private:
  mutable absl::Mutex mu_;  // a leaf: nothing else is locked under it by this class
  std::vector<std::pair<std::string, Section>> sections_ ABSL_GUARDED_BY(mu_);
  RegionHook region_hook_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CONTROL_STATUS_SECTIONS_H_
