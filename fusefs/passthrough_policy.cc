#include "fusefs/passthrough_policy.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/base/log.h"

namespace lazyram::fusefs {
namespace {

constexpr uint64_t kPageSize = protocol::kPageSize;

}  // namespace

bool PassthroughPolicy::Eligible(Region& region) const {
  // The kernel reads the memfd up to its end. The store of a region without
  // a source is exactly the region's size; one with a source is rounded up
  // to a page (fetched pages land whole), so only a page-multiple size
  // reads right there.
  return channel_ != nullptr && channel_->negotiated() && region.store().fd() >= 0 &&
         (!region.has_source() || region.size() % kPageSize == 0) && region.complete();
}

bool PassthroughPolicy::usable() const { return channel_ != nullptr && failure_.empty(); }

PassthroughPolicy::Grant PassthroughPolicy::Open(size_t index) {
  Region* region = regions_->region(index);
  // A complete region stays complete, so this may be looked at unlocked.
  const bool eligible = Eligible(*region);
  absl::MutexLock lock(&mu_);
  State& state = states_[index];
  bool passthrough = false;
  if (usable()) {
    if (state.backing_id > 0) {
      passthrough = true;
    } else if (eligible && state.open_cached == 0) {
      passthrough = GoPassthrough(*region, &state);
    }
  }
  if (!passthrough) {
    ++state.open_cached;
    return {};
  }
  ++state.open_passthrough;
  ++state.passthrough_opens;
  return {true, state.backing_id};
}

bool PassthroughPolicy::GoPassthrough(Region& region, State* state) {
  absl::StatusOr<int32_t> id = channel_->OpenBacking(region.store().fd());
  if (!id.ok()) {
    failure_ = absl::StrCat("cannot register a backing file: ", id.status().message());
    LogWarning("FUSE passthrough is off for this mount, files open in cached mode: %s", failure_);
    return false;
  }
  state->backing_id = *id;
  region.MarkPassthrough();
  // The kernel now writes the memfd itself: a region without a source
  // takes over the growth of a write past its end from the memfd; one from
  // a source must keep its size there too, as Region::Write keeps it in
  // cached mode.
  if (!region.has_source()) region.ShareStore();
  if (region.has_source() &&
      fcntl(region.store().fd(), F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) != 0) {
    LogWarning("region %s: cannot seal the store's size (%s); a write past its end would grow it",
               region.name(), std::strerror(errno));
  }
  LogInfo("region %s is complete: its files open in FUSE passthrough mode from now on",
          region.name());
  return true;
}

void PassthroughPolicy::Release(size_t index, bool passthrough) {
  absl::MutexLock lock(&mu_);
  State& state = states_[index];
  uint64_t& open = passthrough ? state.open_passthrough : state.open_cached;
  if (open > 0) --open;
}

void PassthroughPolicy::GrantFailed(size_t index) {
  absl::MutexLock lock(&mu_);
  if (!failure_.empty()) return;
  failure_ = absl::StrCat("the OPEN reply for region index ", index,
                          " could not be marked for passthrough (unexpected libfuse layout)");
  LogError("FUSE passthrough is off for this mount: %s", failure_);
}

bool PassthroughPolicy::WouldPassthrough(size_t index) const {
  Region* region = regions_->region(index);
  const bool eligible = region != nullptr && Eligible(*region);
  absl::MutexLock lock(&mu_);
  if (!usable()) return false;
  auto it = states_.find(index);
  if (it == states_.end()) return eligible;
  return it->second.backing_id > 0 || (eligible && it->second.open_cached == 0);
}

void PassthroughPolicy::AddRegionStatus(size_t index, nlohmann::json* region) {
  absl::MutexLock lock(&mu_);
  State state;
  if (auto it = states_.find(index); it != states_.end()) state = it->second;
  (*region)["passthrough"] = state.backing_id > 0 && usable();
  (*region)["passthrough_opens"] = state.passthrough_opens;
  (*region)["open_files"] = {{"cached", state.open_cached},
                             {"passthrough", state.open_passthrough}};
}

nlohmann::json PassthroughPolicy::StatusJson() const {
  nlohmann::json out = {{"enabled", channel_ != nullptr},
                        {"negotiated", channel_ != nullptr && channel_->negotiated()}};
  absl::MutexLock lock(&mu_);
  if (!failure_.empty()) {
    out["error"] = failure_;
  } else if (channel_ != nullptr && !channel_->refusal().empty()) {
    out["error"] = channel_->refusal();
  }
  return out;
}

void PassthroughPolicy::CloseBackings() {
  absl::MutexLock lock(&mu_);
  for (auto& [index, state] : states_) {
    if (state.backing_id <= 0) continue;
    // Files still open on it keep it alive in the kernel.
    if (absl::Status s = channel_->CloseBacking(state.backing_id); !s.ok()) {
      LogWarning("releasing the backing file of region index %d: %s", index, s.message());
    }
  }
}

}  // namespace lazyram::fusefs
