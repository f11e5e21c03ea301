// RegionHasher: SHA-256 of whole regions (`lazyramctl hash NAME`), computed
// on a thread per region ("lazyram-hash") that reads the region through
// Region::Prefetch (fetching what is absent) and the store, a window at a
// time. Results are kept for the manifest view; hashing again replaces them.
//
// Thread-safety: every method may be called from any thread. The regions
// must outlive the hasher, or Cancel must have returned first.
#ifndef LAZYRAM_DAEMON_CORE_REGION_HASHER_H_
#define LAZYRAM_DAEMON_CORE_REGION_HASHER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/region.h"

namespace lazyram {

class RegionHasher {
 public:
  struct Progress {
    bool running = false;
    uint64_t bytes_done = 0;
    uint64_t bytes_total = 0;
    std::string sha256;   // lowercase hex, once finished
    absl::Status status;  // a failed run's error
  };

  RegionHasher() = default;
  RegionHasher(const RegionHasher&) = delete;
  RegionHasher& operator=(const RegionHasher&) = delete;
  ~RegionHasher() { Cancel(); }

  // Starts hashing `region` unless a run for it is under way.
  void Start(Region* region);
  // The latest run for the region named `name`; nullopt if none ever ran.
  std::optional<Progress> Get(const std::string& name) const;
  // Waits until no run for `name` is under way and returns the latest.
  std::optional<Progress> Wait(const std::string& name) const;
  // Stops every run (they end with kCancelled) and joins the threads.
  // Later Starts do nothing.
  void Cancel();

 private:
  struct Job {
    Progress progress;  // guarded by mu_
    std::atomic<uint64_t> bytes_done{0};
    std::thread thread;
  };
  void Run(Region* region, Job* job);
  Progress Snapshot(const Job& job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> stop_{false};
  absl::flat_hash_map<std::string, std::unique_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_REGION_HASHER_H_
