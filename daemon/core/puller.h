// Puller: the background policy that makes every region complete. One
// thread ("lazyram-pull") claims runs of absent pages — after the most recent
// demand fault first, then in a sweep — and keeps a bounded number of bulk
// fetches in flight. When every page of every region is local it calls
// `on_complete` once (the engine then detaches the source) and stops.
//
// It yields to faults: while a consumer faulted on absent pages within the
// last `fault_quiet`, at most one bulk fetch of at most
// `pages_while_faulting` pages is in flight. Landing pulled pages
// (checksum, store write) and serving them takes CPU on both hosts; on a
// small machine that is the CPU a fault waits for.
//
// Thread-safety: constructed and destroyed by one owner; the destructor
// stops the thread and waits for the pulls in flight.
#ifndef LAZYRAM_DAEMON_CORE_PULLER_H_
#define LAZYRAM_DAEMON_CORE_PULLER_H_

#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/core/region.h"

namespace lazyram {

class Puller {
 public:
  struct Options {
    int max_inflight = 8;  // bulk requests in flight
    uint32_t pages_per_request = protocol::kMaxPagesPerRequest;
    absl::Duration fault_quiet = absl::Milliseconds(5);
    uint32_t pages_while_faulting = 64;
  };

  Puller(std::vector<Region*> regions, Options options, absl::AnyInvocable<void()> on_complete);
  Puller(const Puller&) = delete;
  Puller& operator=(const Puller&) = delete;
  // Stops claiming new pulls; those in flight finish (or are failed by the
  // source). The destructor waits for them.
  void Stop();
  ~Puller();

 private:
  void Run();
  // A demand fault fetched pages within the last fault_quiet.
  bool RecentFault() const;
  void OnPulled(const absl::Status& status);

  const std::vector<Region*> regions_;
  const Options options_;
  absl::AnyInvocable<void()> on_complete_;

  absl::Mutex mu_;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;  // last pull failed: back off
  std::thread thread_;                        // last: started after everything it uses
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_PULLER_H_
