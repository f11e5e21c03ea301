#include "fusefs/page_pusher.h"

#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"

namespace lazyram::fusefs {
namespace {

constexpr uint64_t kPageSize = protocol::kPageSize;

}  // namespace

PagePusher::PagePusher(RegionSet* regions, std::string mountpoint, SkipRegion skip)
    : regions_(regions), mountpoint_(std::move(mountpoint)), skip_(std::move(skip)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "lazyram-push");
    Loop();
  });
  for (size_t i = 0; i < regions->region_count(); ++i) {
    Region* region = regions->region(i);
    if (!region->has_source()) continue;
    listened_.push_back(i);
    region->SetPullListener([this, i](uint64_t first, uint32_t count) {
      Enqueue({i, first, count});
    });
  }
}

PagePusher::~PagePusher() {
  for (size_t i : listened_) regions_->region(i)->SetPullListener(nullptr);
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void PagePusher::Pause() {
  absl::MutexLock lock(&mu_);
  paused_ = true;
  // The loop closes its descriptors whenever it is idle; wait for that.
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !busy_; };
  mu_.Await(absl::Condition(&idle));
}

void PagePusher::Resume() {
  absl::MutexLock lock(&mu_);
  paused_ = false;
}

void PagePusher::Enqueue(Run run) {
  absl::MutexLock lock(&mu_);
  // Runs usually arrive in order: extend the last one instead of queueing.
  if (!queue_.empty()) {
    Run& last = queue_.back();
    if (last.index == run.index && last.first + last.count == run.first) {
      last.count += run.count;
      return;
    }
  }
  queue_.push_back(run);
}

void PagePusher::Loop() {
  for (;;) {
    Run run;
    {
      absl::MutexLock lock(&mu_);
      if (stop_ || paused_ || queue_.empty()) {
        // Hold no descriptor into the mount while there is nothing to do
        // (closing sends FLUSH and RELEASE: not under the lock).
        mu_.Unlock();
        CloseFiles();
        mu_.Lock();
      }
      busy_ = false;  // from here Pause may return: no descriptor is open
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
        return stop_ || (!paused_ && !queue_.empty());
      };
      mu_.Await(absl::Condition(&ready));
      if (stop_) break;
      run = queue_.front();
      queue_.pop_front();
      busy_ = true;
    }
    Warm(run);
  }
  helper_.reset();  // on this thread: the helper dies with it anyway
}

void PagePusher::Warm(const Run& run) {
  Region* region = regions_->region(run.index);
  // An unlinked region has no name to open in the mount (and whatever
  // has it open reads it through its own file).
  if (region->unlinked()) return;
  const uint64_t offset = run.first * kPageSize;
  const uint64_t end = std::min(region->size(), (run.first + run.count) * kPageSize);
  if (offset >= end) return;
  // Also keeps the helper's own open from being the one that takes a
  // complete region passthrough (and warming a cache no one reads).
  if (skip_ && skip_(run.index)) return;
  if (helper_ == nullptr) {
    absl::StatusOr<std::unique_ptr<WarmHelper>> helper = WarmHelper::Spawn();
    if (!helper.ok()) {
      if (!helper_failed_logged_) LogWarning("page pusher: %s", helper.status().message());
      helper_failed_logged_ = true;
      return;
    }
    helper_ = *std::move(helper);
    helper_pid_.store(helper_->pid(), std::memory_order_relaxed);
  }
  absl::Status s =
      helper_->Warm(absl::StrCat(mountpoint_, "/", region->name()), offset, end - offset);
  if (!s.ok()) {
    if (!helper_failed_logged_) LogWarning("page pusher: %s", s.message());
    helper_failed_logged_ = true;
    helper_.reset();  // a new one next time
    return;
  }
  pushed_.fetch_add((end - offset + kPageSize - 1) / kPageSize, std::memory_order_relaxed);
}

void PagePusher::CloseFiles() {
  if (helper_ != nullptr && !helper_->CloseFiles().ok()) helper_.reset();
}

nlohmann::json PagePusher::StatusJson() const {
  absl::MutexLock lock(&mu_);
  return {{"enabled", true},
          {"pages_pushed", pushed_.load(std::memory_order_relaxed)},
          {"pending_runs", queue_.size() + (busy_ ? 1 : 0)}};
}

}  // namespace lazyram::fusefs
