// Internal to Region's implementation, which is split by what moves pages:
//   region.cc        creation, name and size, durability (Sync/Close), stats
//   region_fetch.cc  pages arriving: demand and prefetch waits, fetches
//                    landing, the background pull's claims
//   region_write.cc  the consumer's changes: writes, punches, resizes
// Nothing outside daemon/core/region*.cc includes this header.
#ifndef LAZYRAM_DAEMON_CORE_REGION_INTERNAL_H_
#define LAZYRAM_DAEMON_CORE_REGION_INTERNAL_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/region.h"
#include "daemon/protocol/protocol.h"

namespace lazyram {

// One pending EnsureLocal: `remaining` counts the pages still awaited plus
// one held by the caller while it registers, so `done` cannot run early.
struct Region::Waiter {
  std::atomic<int64_t> remaining{1};
  absl::Mutex mu;
  absl::Status status ABSL_GUARDED_BY(mu);
  Done done;
};

namespace region_internal {

inline uint64_t PagesFor(uint64_t bytes) {
  return (bytes + protocol::kPageSize - 1) / protocol::kPageSize;
}

}  // namespace region_internal
}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_REGION_INTERNAL_H_
