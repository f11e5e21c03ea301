#include "daemon/control/status_sections.h"

namespace lazyram {

void StatusSections::SetSection(std::string key, Section section) {
  absl::MutexLock lock(&mu_);
  std::erase_if(sections_, [&](const auto& s) { return s.first == key; });
  if (section) sections_.emplace_back(std::move(key), std::move(section));
}

void StatusSections::SetRegionHook(RegionHook hook) {
  absl::MutexLock lock(&mu_);
  region_hook_ = std::move(hook);
}

void StatusSections::FillRegions(nlohmann::json* regions) const {
  absl::MutexLock lock(&mu_);
  if (!region_hook_) return;
  for (size_t i = 0; i < regions->size(); ++i) region_hook_(i, &(*regions)[i]);
}

void StatusSections::RefreshRegion(size_t index) const {
  absl::MutexLock lock(&mu_);
  nlohmann::json ignored;
  if (region_hook_) region_hook_(index, &ignored);
}

void StatusSections::FillSections(nlohmann::json* out) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [key, section] : sections_) (*out)[key] = section();
}

}  // namespace lazyram
