#include "daemon/core/puller.h"

#include <pthread.h>

#include "daemon/base/log.h"

namespace lazyram {

Puller::Puller(std::vector<Region*> regions, Options options,
               absl::AnyInvocable<void()> on_complete)
    : regions_(std::move(regions)), options_(options), on_complete_(std::move(on_complete)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "lazyram-pull");
    Run();
  });
}

void Puller::Stop() {
  absl::MutexLock lock(&mu_);
  stop_ = true;
}

Puller::~Puller() {
  Stop();
  thread_.join();
}

void Puller::OnPulled(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  --inflight_;
  if (!status.ok() && !absl::IsCancelled(status)) {
    LogWarning("background pull: %s", status.message());
    failed_ = true;
  }
}

bool Puller::RecentFault() const {
  const absl::Time now = absl::Now();
  for (Region* region : regions_) {
    if (now - region->last_fault() < options_.fault_quiet) return true;
  }
  return false;
}

void Puller::Run() {
  std::vector<uint64_t> cursors(regions_.size(), 0);
  size_t next_region = 0;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto can_go = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || inflight_ < options_.max_inflight;
      };
      mu_.Await(absl::Condition(&can_go));
      // While the consumer is faulting on absent pages, one request in
      // flight (see the header).
      while (!stop_ && inflight_ >= 1 && RecentFault()) {
        mu_.AwaitWithTimeout(absl::Condition(&stop_),
                             std::min(options_.fault_quiet / 2, absl::Milliseconds(50)));
      }
      if (stop_) break;
      if (failed_) {
        // A source that refuses reads is not hammered: wait a little.
        failed_ = false;
        mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Seconds(1));
        if (stop_) break;
      }
      ++inflight_;  // reserved for the claim below
    }
    bool claimed = false;
    for (size_t i = 0; i < regions_.size() && !claimed; ++i) {
      const size_t r = (next_region + i) % regions_.size();
      Region* region = regions_[r];
      if (uint64_t hint = region->TakeFaultHint(); hint != UINT64_MAX) cursors[r] = hint;
      // Smaller runs while the consumer faults: less to land at once.
      const uint32_t pages =
          RecentFault() ? std::min(options_.pages_per_request, options_.pages_while_faulting)
                        : options_.pages_per_request;
      claimed = region->PullNext(&cursors[r], pages, [this](absl::Status s) { OnPulled(s); });
      if (claimed) next_region = r;  // stay on this region: sequential runs
    }
    if (claimed) continue;
    absl::MutexLock lock(&mu_);
    --inflight_;
    // Nothing absent: wait for the pulls in flight, then check completeness
    // (a demand fetch may still be landing).
    auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || inflight_ == 0; };
    mu_.Await(absl::Condition(&drained));
    if (stop_) break;
    bool all_complete = true;
    // An unlinked region is never pulled again: it does not hold the end up.
    for (Region* region : regions_) {
      all_complete = all_complete && (region->unlinked() || region->complete());
    }
    if (all_complete) {
      mu_.Unlock();
      on_complete_();
      mu_.Lock();
      break;
    }
    mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Milliseconds(20));
    if (stop_) break;
  }
  absl::MutexLock lock(&mu_);
  auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return inflight_ == 0; };
  mu_.Await(absl::Condition(&drained));
}

}  // namespace lazyram
